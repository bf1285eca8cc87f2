//! [`Storage`] in memory, able to simulate a crash.
//!
//! Each file keeps its durable bytes and the writes made since its last
//! `sync_data`. [`MemStorage::crash`] throws away a random subset of those
//! unsynced writes (seeded, so a failure replays), as a power cut would.
//! Directory operations (create, rename, remove) are durable at once, as the
//! real implementation syncs the directory after each.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use super::{Storage, StorageFile};

/// An in-memory directory of files.
#[derive(Debug, Default)]
pub struct MemStorage {
    files: Mutex<BTreeMap<String, Arc<MemFile>>>,
}

#[derive(Debug, Default)]
struct MemFile {
    state: Mutex<MemFileState>,
}

#[derive(Debug, Default)]
struct MemFileState {
    current: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
}

#[derive(Debug)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
    Punch { offset: u64, len: u64 },
}

fn apply(bytes: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write { offset, data } => {
            let end = *offset as usize + data.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[*offset as usize..end].copy_from_slice(data);
        }
        Pending::SetLen(len) => bytes.resize(*len as usize, 0),
        Pending::Punch { offset, len } => {
            let start = (*offset as usize).min(bytes.len());
            let end = (*offset as usize + *len as usize).min(bytes.len());
            bytes[start..end].fill(0);
        }
    }
}

impl MemStorage {
    /// An empty directory.
    pub fn new() -> Arc<MemStorage> {
        Arc::new(MemStorage::default())
    }

    /// Simulates a power cut: every file keeps its synced bytes plus a random
    /// subset (chosen by `seed`) of the writes made since, applied in order.
    /// Handles opened before the crash must not be used afterwards.
    pub fn crash(&self, seed: u64) {
        let mut rng = seed ^ 0x9e37_79b9_7f4a_7c15;
        let files = self.files.lock();
        for file in files.values() {
            let mut st = file.state.lock();
            let mut bytes = std::mem::take(&mut st.durable);
            for op in std::mem::take(&mut st.pending) {
                rng = splitmix(rng);
                if rng & 1 == 0 {
                    apply(&mut bytes, &op);
                }
            }
            st.current = bytes.clone();
            st.durable = bytes;
        }
    }

    /// Total bytes held (current view), for tests that check space.
    pub fn bytes_held(&self) -> u64 {
        self.files
            .lock()
            .values()
            .map(|f| f.state.lock().current.len() as u64)
            .sum()
    }
}

pub(crate) fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Storage for MemStorage {
    fn open_file(&self, name: &str, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let mut files = self.files.lock();
        match files.get(name) {
            Some(f) => Ok(f.clone()),
            None if create => {
                let f = Arc::new(MemFile::default());
                files.insert(name.to_owned(), f.clone());
                Ok(f)
            }
            None => Err(io::Error::new(io::ErrorKind::NotFound, name.to_owned())),
        }
    }

    fn remove_file(&self, name: &str) -> io::Result<()> {
        self.files.lock().remove(name);
        Ok(())
    }

    fn rename_file(&self, from: &str, to: &str) -> io::Result<()> {
        let mut files = self.files.lock();
        let f = files
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, from.to_owned()))?;
        files.insert(to.to_owned(), f);
        Ok(())
    }

    fn list_dir(&self, dir: &str) -> io::Result<Vec<String>> {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        Ok(self
            .files
            .lock()
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(str::to_owned)
            .collect())
    }
}

impl StorageFile for MemFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let st = self.state.lock();
        let start = (offset as usize).min(st.current.len());
        let end = (offset as usize + buf.len()).min(st.current.len());
        let n = end - start;
        buf[..n].copy_from_slice(&st.current[start..end]);
        buf[n..].fill(0);
        Ok(())
    }

    /// Memory never waits: the read always happens.
    fn try_read_vectored_at(&self, bufs: &mut [&mut [u8]], offset: u64) -> io::Result<bool> {
        self.read_vectored_at(bufs, offset).map(|()| true)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let op = Pending::Write {
            offset,
            data: buf.to_vec(),
        };
        let mut st = self.state.lock();
        apply(&mut st.current, &op);
        st.pending.push(op);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut st = self.state.lock();
        st.durable = st.current.clone();
        st.pending.clear();
        Ok(())
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let op = Pending::Punch { offset, len };
        let mut st = self.state.lock();
        apply(&mut st.current, &op);
        st.pending.push(op);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.state.lock().current.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let op = Pending::SetLen(len);
        let mut st = self.state.lock();
        apply(&mut st.current, &op);
        st.pending.push(op);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_synced_bytes() {
        let s = MemStorage::new();
        let f = s.open_file("a", true).unwrap();
        f.write_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        for seed in 0..32 {
            f.write_at(b"HELLO", 0).unwrap();
            s.crash(seed);
            let f = s.open_file("a", false).unwrap();
            let mut buf = [0u8; 5];
            f.read_at(&mut buf, 0).unwrap();
            assert!(&buf == b"hello" || &buf == b"HELLO");
            f.write_at(b"hello", 0).unwrap();
            f.sync_data().unwrap();
        }
    }
}
