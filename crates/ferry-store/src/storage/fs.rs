//! [`Storage`] on a real directory: `pread`, `pwrite`, `fdatasync`, `fallocate`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Mapping, Storage, StorageFile};

/// Files under one directory of the host file system.
#[derive(Debug)]
pub struct FsStorage {
    root: PathBuf,
}

impl FsStorage {
    /// Uses `root` (created when missing) as the store's directory.
    pub fn new(root: impl AsRef<Path>) -> io::Result<FsStorage> {
        let root = root.as_ref().to_path_buf();
        std::fs::create_dir_all(&root)?;
        Ok(FsStorage { root })
    }

    /// The directory this storage lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Storage for FsStorage {
    fn open_file(&self, name: &str, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let path = self.path(name);
        if create && let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(&path)?;
        if create
            && !existed
            && let Some(parent) = path.parent()
        {
            sync_dir(parent)?;
        }
        Ok(Arc::new(FsFile {
            file,
            nowait_unsupported: AtomicBool::new(false),
            mapping: parking_lot::Mutex::new(None),
            map_failed: AtomicBool::new(false),
        }))
    }

    fn remove_file(&self, name: &str) -> io::Result<()> {
        match std::fs::remove_file(self.path(name)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn rename_file(&self, from: &str, to: &str) -> io::Result<()> {
        let to = self.path(to);
        std::fs::rename(self.path(from), &to)?;
        match to.parent() {
            Some(parent) => sync_dir(parent),
            None => Ok(()),
        }
    }

    fn list_dir(&self, dir: &str) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        let entries = match std::fs::read_dir(self.path(dir)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
            other => other?,
        };
        for entry in entries {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }
}

#[derive(Debug)]
struct FsFile {
    file: File,
    /// The file system refused `RWF_NOWAIT`: stop asking.
    nowait_unsupported: AtomicBool,
    /// The newest mapping of the file, made on first use.
    mapping: parking_lot::Mutex<Option<Arc<Mapping>>>,
    /// Mapping failed once: stop trying.
    map_failed: AtomicBool,
}

impl StorageFile for FsFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn read_vectored_at(&self, bufs: &mut [&mut [u8]], offset: u64) -> io::Result<()> {
        let parts: Vec<(*mut u8, usize)> =
            bufs.iter_mut().map(|b| (b.as_mut_ptr(), b.len())).collect();
        // SAFETY: the pointers come from `bufs`, distinct buffers borrowed
        // mutably for the whole call.
        if let Some(end) = unsafe { self.vectored(&parts, offset, false) }? {
            // End of file: the rest reads as zeros.
            for (k, b) in bufs.iter_mut().enumerate().skip(end.index) {
                b[if k == end.index { end.skip } else { 0 }..].fill(0);
            }
        }
        Ok(())
    }

    fn try_read_vectored_at(&self, bufs: &mut [&mut [u8]], offset: u64) -> io::Result<bool> {
        // A short or refused transfer hands the whole read to the caller's
        // waiting path, which also handles the end of the file.
        if self.nowait_unsupported.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let mut at = offset;
        for batch in bufs.chunks_mut(IOV_BATCH) {
            let Ok(off) = libc::off_t::try_from(at) else {
                return Ok(false);
            };
            let mut iov = [EMPTY_IOV; IOV_BATCH];
            let mut total = 0usize;
            for (slot, b) in iov.iter_mut().zip(batch.iter_mut()) {
                *slot = libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                };
                total += b.len();
            }
            // SAFETY: the iovecs point into `bufs`, distinct buffers borrowed
            // mutably for the whole call.
            let moved = unsafe {
                libc::preadv2(
                    self.file.as_raw_fd(),
                    iov.as_ptr(),
                    batch.len() as libc::c_int,
                    off,
                    libc::RWF_NOWAIT,
                )
            };
            if moved < 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EAGAIN | libc::EINTR) => Ok(false),
                    Some(libc::EOPNOTSUPP | libc::EINVAL) => {
                        self.nowait_unsupported.store(true, Ordering::Relaxed);
                        Ok(false)
                    }
                    _ => Err(e),
                };
            }
            if moved as usize != total {
                return Ok(false);
            }
            at += total as u64;
        }
        Ok(true)
    }

    fn mapping(&self, len: u64) -> Option<Arc<Mapping>> {
        if self.map_failed.load(Ordering::Relaxed) {
            return None;
        }
        let mut current = self.mapping.lock();
        if let Some(m) = &*current
            && m.len() >= len
        {
            return Some(m.clone());
        }
        // A longer one: readers of the old one keep it until they are done.
        match Mapping::new(self.file.as_raw_fd(), len, current.as_deref()) {
            Ok(m) => {
                let m = Arc::new(m);
                *current = Some(m.clone());
                Some(m)
            }
            Err(e) => {
                tracing::warn!(error = %e, "mapping a data file failed; reads copy instead");
                self.map_failed.store(true, Ordering::Relaxed);
                None
            }
        }
    }

    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let parts: Vec<(*mut u8, usize)> = bufs
            .iter()
            .map(|b| (b.as_ptr().cast_mut(), b.len()))
            .collect();
        // SAFETY: the pointers come from `bufs`, borrowed for the whole
        // call; pwritev only reads them.
        unsafe { self.vectored(&parts, offset, true) }.map(|_| ())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let Err(err) = self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) else {
            return Ok(());
        };
        if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
            // The file system cannot punch; write zeros instead so the range
            // still reads as zeros (callers rely only on that).
            let zeros = vec![0u8; 1 << 20];
            let mut pos = offset;
            while pos < offset + len {
                let n = (offset + len - pos).min(zeros.len() as u64) as usize;
                self.file.write_all_at(&zeros[..n], pos)?;
                pos += n as u64;
            }
            return Ok(());
        }
        Err(err)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn preallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.fallocate(libc::FALLOC_FL_KEEP_SIZE, offset, len)
    }
}

/// Buffers per `preadv`/`pwritev` (the kernel takes up to 1024): a 1 MiB
/// request in 4 KiB pieces is one call.
const IOV_BATCH: usize = 256;
const EMPTY_IOV: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

/// How far a vectored transfer got: buffer `index`, `skip` bytes into it.
#[derive(Default)]
struct Cursor {
    index: usize,
    skip: usize,
}

impl Cursor {
    /// Points `iov` at what is left, from the cursor on; returns how many
    /// entries it filled. `bufs` yields every buffer's pointer and length.
    fn fill(
        &self,
        bufs: impl Iterator<Item = (*mut u8, usize)>,
        iov: &mut [libc::iovec; IOV_BATCH],
    ) -> usize {
        let mut n = 0;
        for (i, (ptr, len)) in bufs.enumerate().skip(self.index).take(IOV_BATCH) {
            let skip = if i == self.index { self.skip } else { 0 };
            // SAFETY: `skip <= len`, so the pointer stays inside the buffer.
            iov[n] = libc::iovec {
                iov_base: unsafe { ptr.add(skip) }.cast(),
                iov_len: len - skip,
            };
            n += 1;
        }
        n
    }

    /// Moves the cursor `n` bytes on through buffers of lengths `lens`.
    fn advance(&mut self, lens: impl Iterator<Item = usize>, mut n: usize) {
        for len in lens.skip(self.index) {
            let left = len - self.skip;
            if n < left {
                self.skip += n;
                return;
            }
            n -= left;
            self.index += 1;
            self.skip = 0;
        }
    }
}

impl FsFile {
    /// `pwritev` (`write`) or `preadv` of `parts` (pointer, length) from
    /// `offset` on, again after short transfers, until all are done;
    /// returns where a read met the end of the file, if it did.
    ///
    /// # Safety
    /// Every part must be valid for the transfer (writable for a read) and
    /// no two may overlap, for the whole call.
    unsafe fn vectored(
        &self,
        parts: &[(*mut u8, usize)],
        offset: u64,
        write: bool,
    ) -> io::Result<Option<Cursor>> {
        let end = offset + parts.iter().map(|(_, n)| *n as u64).sum::<u64>();
        let mut done = Cursor::default();
        let mut at = offset;
        while at < end {
            let mut iov = [EMPTY_IOV; IOV_BATCH];
            let n = done.fill(parts.iter().copied(), &mut iov) as libc::c_int;
            let off = libc::off_t::try_from(at)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            let fd = self.file.as_raw_fd();
            // SAFETY: the iovecs point into the parts, valid per the caller.
            let moved = unsafe {
                if write {
                    libc::pwritev(fd, iov.as_ptr(), n, off)
                } else {
                    libc::preadv(fd, iov.as_ptr(), n, off)
                }
            };
            match moved {
                0 if write => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                0 => return Ok(Some(done)),
                m if m > 0 => {
                    done.advance(parts.iter().map(|(_, len)| *len), m as usize);
                    at += m as u64;
                }
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(None)
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(length)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        // SAFETY: fallocate on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, length) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn vectored_reads_and_writes_match_plain_ones_across_batches_and_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::new(dir.path()).unwrap();
        let f = storage.open_file("f", true).unwrap();
        // More pieces than one system call takes, of uneven sizes, some empty.
        let sizes: Vec<usize> = (0..IOV_BATCH * 2 + 7).map(|i| (i * 37) % 300).collect();
        let pieces: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| pattern(n, i as u8))
            .collect();
        let bufs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        f.write_vectored_at(&bufs, 1000).unwrap();
        let all: Vec<u8> = pieces.concat();
        let mut plain = vec![0u8; all.len()];
        f.read_at(&mut plain, 1000).unwrap();
        assert_eq!(plain, all);
        assert_eq!(f.len().unwrap(), 1000 + all.len() as u64);

        // Read back in other cuts, running 5000 bytes past the end.
        let mut outs: Vec<Vec<u8>> = (0..IOV_BATCH + 50)
            .map(|i| vec![0xEE; 1 + (i * 53) % 200])
            .collect();
        let total: usize = outs.iter().map(Vec::len).sum();
        let from = 1000 + all.len() as u64 + 5000 - total as u64;
        let mut bufs: Vec<&mut [u8]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
        f.read_vectored_at(&mut bufs, from).unwrap();
        let got = outs.concat();
        let mut want = vec![0u8; total];
        f.read_at(&mut want, from).unwrap();
        assert_eq!(got, want);
        assert!(
            got[total - 5000..].iter().all(|&b| b == 0),
            "past the end reads as zeros"
        );
        assert_eq!(&got[..total - 5000], &all[all.len() - (total - 5000)..]);
    }

    #[test]
    fn a_read_that_would_wait_on_the_device_is_declined_without_waiting() {
        use std::os::unix::io::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let storage = FsStorage::new(dir.path()).unwrap();
        let f = storage.open_file("f", true).unwrap();
        let data = pattern(1 << 20, 7);
        f.write_at(&data, 0).unwrap();
        let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 8192]);
        // Just written: in memory, so it reads, in two pieces.
        assert!(f.try_read_vectored_at(&mut [&mut a, &mut b], 4096).unwrap());
        assert_eq!(
            [a.as_slice(), b.as_slice()].concat(),
            data[4096..4096 + 12288]
        );
        // Past the end is the waiting path's business.
        assert!(
            !f.try_read_vectored_at(&mut [&mut a], (1 << 20) - 100)
                .unwrap()
        );
        // Written back and dropped from the page cache: declined.
        f.sync_data().unwrap();
        let other = File::open(&path).unwrap();
        // SAFETY: advice on a file descriptor we own.
        let rc = unsafe { libc::posix_fadvise(other.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
        assert!(!f.try_read_vectored_at(&mut [&mut a], 65536).unwrap());
        // A waiting read brings it in; then it reads without waiting.
        f.read_at(&mut a, 65536).unwrap();
        assert!(f.try_read_vectored_at(&mut [&mut a], 65536).unwrap());
        assert_eq!(a, data[65536..65536 + 4096]);
        // More pieces than one call takes, all in memory.
        f.read_at(&mut vec![0u8; 1 << 20], 0).unwrap();
        let mut many: Vec<Vec<u8>> = (0..IOV_BATCH * 2 + 1).map(|_| vec![0u8; 16]).collect();
        let mut bufs: Vec<&mut [u8]> = many.iter_mut().map(Vec::as_mut_slice).collect();
        assert!(f.try_read_vectored_at(&mut bufs, 0).unwrap());
        assert_eq!(many.concat(), data[..(IOV_BATCH * 2 + 1) * 16]);
    }
}
