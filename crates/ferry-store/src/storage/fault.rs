//! [`Storage`] that fails after a number of operations, for crash tests.
//!
//! Every mutating operation (write, sync, punch, set_len, rename, remove)
//! counts down a shared budget. When it reaches zero the storage trips: in
//! [`FaultMode::Fail`] that operation and every later one fails with `EIO`;
//! in [`FaultMode::Cut`] the tripping write lands only its first half before
//! failing, as a torn write would. Reads keep working.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use super::{Storage, StorageFile};

/// How the storage misbehaves once its budget is spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    /// The operation fails and so does every later one.
    Fail,
    /// A tripping write lands half of its bytes, then everything fails.
    Cut,
}

/// Wraps a storage with a budget of mutating operations.
#[derive(Debug)]
pub struct FaultStorage {
    inner: Arc<dyn Storage>,
    state: Arc<FaultState>,
}

#[derive(Debug)]
struct FaultState {
    budget: AtomicI64,
    tripped: AtomicBool,
    mode: FaultMode,
}

impl FaultState {
    /// Spends one operation; `Ok(true)` when this is the tripping one.
    fn spend(&self) -> io::Result<bool> {
        if self.tripped.load(Ordering::SeqCst) {
            return Err(injected());
        }
        if self.budget.fetch_sub(1, Ordering::SeqCst) <= 0 {
            self.tripped.store(true, Ordering::SeqCst);
            return Ok(true);
        }
        Ok(false)
    }
}

fn injected() -> io::Error {
    io::Error::other("injected fault")
}

impl FaultStorage {
    /// Lets `budget` mutating operations through, then misbehaves as `mode` says.
    pub fn new(inner: Arc<dyn Storage>, budget: u64, mode: FaultMode) -> Arc<FaultStorage> {
        Arc::new(FaultStorage {
            inner,
            state: Arc::new(FaultState {
                budget: AtomicI64::new(budget.min(i64::MAX as u64) as i64),
                tripped: AtomicBool::new(false),
                mode,
            }),
        })
    }

    /// Whether the fault has happened.
    pub fn tripped(&self) -> bool {
        self.state.tripped.load(Ordering::SeqCst)
    }

    fn gate(&self) -> io::Result<()> {
        if self.state.spend()? {
            return Err(injected());
        }
        Ok(())
    }
}

impl Storage for FaultStorage {
    fn open_file(&self, name: &str, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let inner = self.inner.open_file(name, create)?;
        Ok(Arc::new(FaultFile {
            inner,
            state: self.state.clone(),
        }))
    }

    fn remove_file(&self, name: &str) -> io::Result<()> {
        self.gate()?;
        self.inner.remove_file(name)
    }

    fn rename_file(&self, from: &str, to: &str) -> io::Result<()> {
        self.gate()?;
        self.inner.rename_file(from, to)
    }

    fn list_dir(&self, dir: &str) -> io::Result<Vec<String>> {
        self.inner.list_dir(dir)
    }
}

#[derive(Debug)]
struct FaultFile {
    inner: Arc<dyn StorageFile>,
    state: Arc<FaultState>,
}

impl FaultFile {
    fn gate(&self) -> io::Result<()> {
        if self.state.spend()? {
            return Err(injected());
        }
        Ok(())
    }
}

impl StorageFile for FaultFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }

    fn try_read_vectored_at(&self, bufs: &mut [&mut [u8]], offset: u64) -> io::Result<bool> {
        self.inner.try_read_vectored_at(bufs, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.state.spend()? {
            if self.state.mode == FaultMode::Cut {
                let _ = self.inner.write_at(&buf[..buf.len() / 2], offset);
            }
            return Err(injected());
        }
        self.inner.write_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.gate()?;
        self.inner.sync_data()
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.gate()?;
        self.inner.punch_hole(offset, len)
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.gate()?;
        self.inner.set_len(len)
    }

    fn preallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.gate()?;
        self.inner.preallocate(offset, len)
    }
}
