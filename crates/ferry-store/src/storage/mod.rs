//! Where the engine's bytes live: a small file-system trait.
//!
//! The engine never calls `std::fs` directly; it goes through [`Storage`] so
//! that tests can run it on [`MemStorage`] (which can simulate a crash that
//! loses unsynced writes) wrapped in [`FaultStorage`] (which fails or cuts
//! writes after N operations). The catalog (redb) runs on the same files.
//!
//! Names are relative paths such as `catalog.redb` or `layers/0000000000000005.data`.

mod fault;
mod fs;
mod map;
mod mem;

pub use fault::{FaultMode, FaultStorage};
pub use fs::FsStorage;
pub use map::Mapping;
pub use mem::MemStorage;
#[cfg(test)]
pub(crate) use mem::splitmix as splitmix_for_tests;

use std::fmt::Debug;
use std::io;
use std::sync::Arc;

/// A directory of files.
pub trait Storage: Send + Sync + Debug + 'static {
    /// Opens a file, creating it empty when `create` is set and it is missing.
    fn open_file(&self, name: &str, create: bool) -> io::Result<Arc<dyn StorageFile>>;
    /// Removes a file; a missing file is not an error.
    fn remove_file(&self, name: &str) -> io::Result<()>;
    /// Atomically and durably replaces `to` by `from`.
    fn rename_file(&self, from: &str, to: &str) -> io::Result<()>;
    /// Names of the files in a directory, relative to it.
    fn list_dir(&self, dir: &str) -> io::Result<Vec<String>>;
}

/// One file: positioned reads and writes, like `pread`/`pwrite`.
#[allow(clippy::len_without_is_empty)]
pub trait StorageFile: Send + Sync + Debug + 'static {
    /// Fills `buf` from `offset`; bytes past the end of the file read as zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`, growing the file when needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Fills `bufs` in turn from the bytes that follow `offset` (`preadv`):
    /// one call for pieces of a request that sit side by side in the file
    /// but not in the request. Past the end reads as zeros.
    fn read_vectored_at(&self, bufs: &mut [&mut [u8]], offset: u64) -> io::Result<()> {
        let mut at = offset;
        for b in bufs.iter_mut() {
            self.read_at(b, at)?;
            at += b.len() as u64;
        }
        Ok(())
    }
    /// Like [`read_vectored_at`](Self::read_vectored_at), but only when it
    /// needs no device I/O (`preadv2` with `RWF_NOWAIT`): `Ok(false)` when
    /// some byte is not in memory, and then what `bufs` hold is unspecified.
    /// A caller on a latency-sensitive thread tries this first and hands the
    /// read to a thread that may wait only on `Ok(false)`. The default says
    /// `Ok(false)` always, which is correct for any file.
    fn try_read_vectored_at(&self, bufs: &mut [&mut [u8]], offset: u64) -> io::Result<bool> {
        let _ = (bufs, offset);
        Ok(false)
    }
    /// A read-only shared mapping of at least the file's first `len` bytes,
    /// for handing bytes in the page cache to the kernel (a socket send)
    /// without first copying them into a buffer; see [`Mapping`] for its
    /// rules. `None` where the file has none (the default), and callers
    /// then read with [`read_vectored_at`](Self::read_vectored_at).
    fn mapping(&self, len: u64) -> Option<Arc<Mapping>> {
        let _ = len;
        None
    }
    /// Writes `bufs` in turn from `offset` on (`pwritev`).
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let mut at = offset;
        for b in bufs {
            self.write_at(b, at)?;
            at += b.len() as u64;
        }
        Ok(())
    }
    /// Makes every completed write durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Deallocates a range, which then reads as zeros. The file keeps its length.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()>;
    /// The file's length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Sets the file's length; new bytes read as zeros.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves space for `offset..offset+len` without changing the length
    /// or what reads return (`fallocate(FALLOC_FL_KEEP_SIZE)`); advisory.
    /// Shrinking the file with [`set_len`](Self::set_len), even to its
    /// current length, gives back what lies past the end.
    fn preallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
}
