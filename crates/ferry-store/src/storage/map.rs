//! Read-only shared mappings of data files, for sends from the page cache.
//!
//! A read from a mapping copies nothing until the kernel copies the bytes
//! into the socket, where `pread` into a buffer and a send of the buffer
//! copy them twice. The rules that keep this safe:
//! - only the kernel touches the mapped bytes (a `sendmsg` given pointers
//!   into the mapping): no Rust reference to them is ever made, since
//!   other threads write the file meanwhile, and a page the kernel cannot
//!   read (a device error) then fails that call with `EFAULT` instead of
//!   raising `SIGBUS` in the process;
//! - the caller holds whatever keeps the slots it sends from being reused
//!   until the send has copied them (the volume's read guard), as it would
//!   for a `pread` — a read planned under an earlier guard is sent only if
//!   the volume passed no barrier since (`MappedRead::send`);
//! - a mapping outlives every pointer into it: callers hold its `Arc`.

use std::io;
use std::os::unix::io::RawFd;
use std::ptr::NonNull;

/// Mappings are made at least this long, and then doubled, so a growing
/// file is mapped again only a few times.
const MIN_MAP: u64 = 64 << 20;

/// `len` bytes of a file from its start, mapped read-only and shared; the
/// pages past the file's end are never touched.
#[derive(Debug)]
pub struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain address space; no Rust reference to its
// bytes is ever made, only raw pointers handed to system calls.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps at least `len` bytes of `fd`, more when the file is small
    /// (room to grow without mapping again).
    pub(crate) fn new(fd: RawFd, len: u64, previous: Option<&Mapping>) -> io::Result<Mapping> {
        let want = len
            .max(MIN_MAP)
            .max(previous.map_or(0, |m| m.len as u64 * 2))
            .next_multiple_of(MIN_MAP);
        let len =
            usize::try_from(want).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a new mapping chosen by the kernel, overlapping nothing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast()).ok_or_else(|| io::Error::from(io::ErrorKind::Other))?;
        Ok(Mapping { base, len })
    }

    /// Bytes mapped.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of byte `at` of the file, for a system call to read
    /// `len` bytes from; `None` when they are not all mapped.
    pub fn addr(&self, at: u64, len: u64) -> Option<*const u8> {
        let end = at.checked_add(len)?;
        if end > self.len as u64 {
            return None;
        }
        // SAFETY: `at` is within the mapping (checked above).
        Some(unsafe { self.base.as_ptr().add(at as usize) }.cast_const())
    }

    /// Whether every page of the file's bytes `at..at+len` is in memory
    /// (`mincore`), so that a send from them does not wait for the device:
    /// a read through a mapping faults pages in one by one, with less
    /// read-ahead than `pread`, and while the sender holds the socket.
    /// `scratch` is room the call reuses. False when unsure.
    pub fn resident(&self, at: u64, len: u64, scratch: &mut Vec<u8>) -> bool {
        // SAFETY: sysconf has no preconditions.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            p if p > 0 => p as u64,
            _ => return false,
        };
        let Some(end) = at.checked_add(len).filter(|&e| e <= self.len as u64) else {
            return false;
        };
        let start = at / page * page;
        let span = end.next_multiple_of(page) - start;
        scratch.clear();
        scratch.resize((span / page) as usize, 0);
        // SAFETY: the range lies within the mapping (checked above), page
        // aligned; `scratch` has a byte per page. mincore reads no bytes.
        let rc = unsafe {
            libc::mincore(
                self.base.as_ptr().add(start as usize).cast(),
                span as usize,
                scratch.as_mut_ptr(),
            )
        };
        rc == 0 && scratch.iter().all(|b| b & 1 == 1)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; every pointer
        // into it was used under an `Arc` to it, now gone.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
