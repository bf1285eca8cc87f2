//! What an export serves: a live volume (read-write) or one volume of a
//! snapshot (read-only), behind one interface, with the engine's errors
//! turned into the protocol's.

use ferry_store::{Allocation, MappedRead, SnapshotReader, StoreError, VolumeHandle};

use crate::proto::{EINVAL, EIO, ENOSPC, EPERM, ESHUTDOWN};

/// The storage behind one export.
#[derive(Clone, Debug)]
pub enum Disk {
    Volume(VolumeHandle),
    Snapshot(SnapshotReader),
}

/// An engine error as the client sees it.
#[derive(Debug)]
pub struct DiskError {
    pub error: u32,
    pub message: String,
    /// The export's storage is gone (volume deleted): the connection ends.
    pub gone: bool,
}

impl From<StoreError> for DiskError {
    fn from(e: StoreError) -> DiskError {
        let error = match &e {
            StoreError::OutOfRange { .. } => EINVAL,
            StoreError::Deleted { .. } => ESHUTDOWN,
            StoreError::Io { source, .. } => match source.raw_os_error() {
                Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => ENOSPC,
                _ => EIO,
            },
            _ => EIO,
        };
        DiskError {
            error,
            message: e.to_string(),
            gone: matches!(e, StoreError::Deleted { .. }),
        }
    }
}

/// Zeros for `NO_HOLE` writes of zeros.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

fn read_only() -> DiskError {
    DiskError {
        error: EPERM,
        message: "the export is read-only".into(),
        gone: false,
    }
}

impl Disk {
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        match self {
            Disk::Volume(v) => v.read(buf, offset)?,
            Disk::Snapshot(s) => s.read(buf, offset)?,
        }
        Ok(())
    }

    /// Reads like [`read`](Self::read) if nothing has to come from the
    /// device; `Ok(false)` otherwise, at once.
    pub fn try_read(&self, buf: &mut [u8], offset: u64) -> Result<bool, DiskError> {
        Ok(match self {
            Disk::Volume(v) => v.try_read(buf, offset)?,
            Disk::Snapshot(s) => s.try_read(buf, offset)?,
        })
    }

    /// Plans a read of `offset..offset+len` to be sent from the page cache
    /// without a copy first (see [`MappedRead`]); `Ok(None)` where the
    /// storage has no mappings or the bytes are not all in memory.
    pub fn plan_mapped(&self, offset: u64, len: u64) -> Result<Option<MappedRead>, DiskError> {
        Ok(match self {
            Disk::Volume(v) => v.plan_mapped(offset, len)?,
            Disk::Snapshot(s) => s.plan_mapped(offset, len)?,
        })
    }

    fn volume(&self) -> Result<&VolumeHandle, DiskError> {
        match self {
            Disk::Volume(v) => Ok(v),
            Disk::Snapshot(_) => Err(read_only()),
        }
    }

    pub fn write(&self, buf: &[u8], offset: u64, fua: bool) -> Result<(), DiskError> {
        Ok(self.volume()?.write(buf, offset, fua)?)
    }

    /// Zeros `len` bytes; with `allocate` they are written as data (no hole).
    pub fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        allocate: bool,
    ) -> Result<(), DiskError> {
        let v = self.volume()?;
        if !allocate {
            return Ok(v.write_zeroes(offset, len, fua)?);
        }
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = (end - pos).min(ZEROS.len() as u64);
            v.write(&ZEROS[..n as usize], pos, false)?;
            pos += n;
        }
        if fua {
            v.flush()?;
        }
        Ok(())
    }

    pub fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), DiskError> {
        Ok(self.volume()?.trim(offset, len, fua)?)
    }

    pub fn flush(&self) -> Result<(), DiskError> {
        match self {
            Disk::Volume(v) => Ok(v.flush()?),
            Disk::Snapshot(_) => Ok(()),
        }
    }

    pub fn allocation(&self, offset: u64, len: u64) -> Result<Vec<(u64, Allocation)>, DiskError> {
        Ok(match self {
            Disk::Volume(v) => v.allocation(offset, len)?,
            Disk::Snapshot(s) => s.allocation(offset, len)?,
        })
    }
}
