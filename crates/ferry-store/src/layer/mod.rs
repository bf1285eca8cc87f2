//! A layer: one sparse data file addressed like the volume, plus its
//! allocation map (which blocks it defines, which of those are zeros).
//!
//! Invariants:
//! - a block enters the map only after its data was written to the file;
//! - the map's journal records a block only after the data file was synced,
//!   so after a crash every block the journal names holds the data written
//!   for it (the durability contract's "data before allocation record");
//! - blocks never leave a map: a layer only grows until it is deleted.
//!
//! Layers know nothing of volumes, chains or the catalog.

pub mod journal;

use parking_lot::{Mutex, RwLock};
use roaring::RoaringBitmap;
use std::io;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::storage::{Storage, StorageFile};
use crate::types::LayerId;
use journal::{AllocMap, HEADER_LEN, MapDelta};

/// Compact the journal once it is this much larger than its last compaction.
const COMPACT_SLACK: u64 = 1 << 20;

/// What a layer says about one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlockState {
    /// Not defined here: look further down the chain.
    Absent,
    /// Defined here; the data file holds it.
    Data,
    /// Defined here as zeros.
    Zero,
}

#[derive(Debug, Default)]
struct LayerMap {
    alloc: AllocMap,
    /// Changes not yet in the journal.
    dirty: MapDelta,
}

#[derive(Debug)]
struct Journal {
    file: Arc<dyn StorageFile>,
    end: u64,
    seq: u64,
    compacted_len: u64,
}

/// One layer, shared by every volume and snapshot whose chain holds it.
#[derive(Debug)]
pub(crate) struct Layer {
    pub id: LayerId,
    storage: Arc<dyn Storage>,
    data: Arc<dyn StorageFile>,
    map: RwLock<LayerMap>,
    journal: Mutex<Journal>,
    failed: AtomicBool,
}

pub(crate) fn data_name(id: LayerId) -> String {
    format!("layers/{:016x}.data", id.0)
}

pub(crate) fn map_name(id: LayerId) -> String {
    format!("layers/{:016x}.map", id.0)
}

fn map_tmp_name(id: LayerId) -> String {
    format!("layers/{:016x}.map.tmp", id.0)
}

/// The layer id a file in `layers/` belongs to, if the name is one of ours.
pub(crate) fn id_of_file(name: &str) -> Option<LayerId> {
    let stem = name.split('.').next()?;
    if stem.len() != 16 {
        return None;
    }
    u64::from_str_radix(stem, 16).ok().map(LayerId)
}

fn corrupt(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Layer {
    /// Creates the files of a new, empty layer of `size` bytes, durably.
    pub fn create(storage: &Arc<dyn Storage>, id: LayerId, size: u64) -> io::Result<Layer> {
        let data = storage.open_file(&data_name(id), true)?;
        data.set_len(0)?; // a stale file of an uncommitted layer may hold bytes
        data.set_len(size)?;
        data.sync_data()?;
        let mapfile = storage.open_file(&map_name(id), true)?;
        mapfile.set_len(0)?;
        mapfile.write_at(&journal::encode_header(id), 0)?;
        mapfile.sync_data()?;
        Ok(Layer {
            id,
            storage: storage.clone(),
            data,
            map: RwLock::new(LayerMap::default()),
            journal: Mutex::new(Journal {
                file: mapfile,
                end: HEADER_LEN as u64,
                seq: 0,
                compacted_len: HEADER_LEN as u64,
            }),
            failed: AtomicBool::new(false),
        })
    }

    /// Opens an existing layer, dropping a torn journal tail.
    pub fn open(storage: &Arc<dyn Storage>, id: LayerId) -> io::Result<Layer> {
        let data = storage.open_file(&data_name(id), false)?;
        let mapfile = storage.open_file(&map_name(id), false)?;
        let len = mapfile.len()?;
        let mut bytes =
            vec![0u8; usize::try_from(len).map_err(|_| corrupt("map too large".into()))?];
        mapfile.read_at(&mut bytes, 0)?;
        let decoded = journal::decode(&bytes).map_err(|e| corrupt(format!("map of {id}: {e}")))?;
        if decoded.layer != id {
            return Err(corrupt(format!("map of {id} names {}", decoded.layer)));
        }
        if (decoded.valid_len as u64) < len {
            tracing::warn!(layer = %id, dropped = len - decoded.valid_len as u64, "dropping torn map journal tail");
            mapfile.set_len(decoded.valid_len as u64)?;
            mapfile.sync_data()?;
        }
        Ok(Layer {
            id,
            storage: storage.clone(),
            data,
            map: RwLock::new(LayerMap {
                alloc: decoded.map,
                dirty: MapDelta::default(),
            }),
            journal: Mutex::new(Journal {
                file: mapfile,
                end: decoded.valid_len as u64,
                seq: decoded.last_seq,
                compacted_len: decoded.valid_len as u64,
            }),
            failed: AtomicBool::new(false),
        })
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    fn fail<T>(&self, e: io::Error) -> io::Result<T> {
        self.failed.store(true, Ordering::Relaxed);
        Err(e)
    }

    fn check(&self) -> io::Result<()> {
        if self.failed() {
            return Err(io::Error::other(format!("{} failed earlier", self.id)));
        }
        Ok(())
    }

    pub fn state(&self, block: u32) -> BlockState {
        let m = self.map.read();
        state_in(&m.alloc, block)
    }

    /// Calls `f` with the allocation map held for reading.
    pub fn with_map<T>(&self, f: impl FnOnce(&AllocMap) -> T) -> T {
        f(&self.map.read().alloc)
    }

    /// Records that `blocks` now hold data written to the file.
    pub fn mark_data(&self, blocks: RangeInclusive<u32>) {
        {
            let m = self.map.read();
            if m.alloc.present.contains_range(blocks.clone())
                && m.alloc.zeroed.range_cardinality(blocks.clone()) == 0
            {
                return; // an overwrite in place: the map does not change
            }
        }
        let mut m = self.map.write();
        m.alloc.present.insert_range(blocks.clone());
        m.alloc.zeroed.remove_range(blocks.clone());
        m.dirty.data.insert_range(blocks.clone());
        m.dirty.zero.remove_range(blocks);
    }

    /// Records that `blocks` now read as zeros here.
    pub fn mark_zero(&self, blocks: RangeInclusive<u32>) {
        let mut m = self.map.write();
        m.alloc.present.insert_range(blocks.clone());
        m.alloc.zeroed.insert_range(blocks.clone());
        m.dirty.zero.insert_range(blocks.clone());
        m.dirty.data.remove_range(blocks);
    }

    /// Adds blocks copied in by a merge: `data` now in the file, `zero` zeros.
    pub fn mark_merged(&self, data: &RoaringBitmap, zero: &RoaringBitmap) {
        let mut m = self.map.write();
        let delta = MapDelta {
            data: data.clone(),
            zero: zero.clone(),
        };
        m.alloc.apply(&delta);
        m.dirty.data -= zero;
        m.dirty.zero -= data;
        m.dirty.data |= data;
        m.dirty.zero |= zero;
    }

    pub fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.data.read_at(buf, offset)
    }

    pub fn write(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check()?;
        match self.data.write_at(buf, offset) {
            Ok(()) => Ok(()),
            Err(e) => self.fail(e),
        }
    }

    /// Gives the space of a range back; the range must already be marked zero
    /// (or be absent), since its bytes are not read again.
    pub fn punch(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check()?;
        match self.data.punch_hole(offset, len) {
            Ok(()) => Ok(()),
            Err(e) => self.fail(e),
        }
    }

    pub fn set_len(&self, len: u64) -> io::Result<()> {
        self.check()?;
        match self.data.set_len(len) {
            Ok(()) => Ok(()),
            Err(e) => self.fail(e),
        }
    }

    /// Makes every write completed so far durable: sync the data, then
    /// append the map changes to the journal and sync it.
    pub fn persist(&self) -> io::Result<()> {
        let mut j = self.journal.lock();
        self.check()?;
        let delta = std::mem::take(&mut self.map.write().dirty);
        if let Err(e) = self.data.sync_data() {
            return self.fail(e);
        }
        if delta.is_empty() {
            return Ok(());
        }
        let record = journal::encode_record(j.seq + 1, &delta);
        if let Err(e) = j
            .file
            .write_at(&record, j.end)
            .and_then(|_| j.file.sync_data())
        {
            return self.fail(e);
        }
        j.seq += 1;
        j.end += record.len() as u64;
        if j.end > 2 * j.compacted_len + COMPACT_SLACK {
            self.compact_locked(&mut j)?;
        }
        Ok(())
    }

    /// Persists, then rewrites the journal as one record.
    pub fn compact(&self) -> io::Result<()> {
        let mut j = self.journal.lock();
        self.check()?;
        self.compact_locked(&mut j)
    }

    fn compact_locked(&self, j: &mut Journal) -> io::Result<()> {
        let full = {
            let mut m = self.map.write();
            m.dirty = MapDelta::default();
            m.alloc.as_delta()
        };
        let result = (|| {
            self.data.sync_data()?;
            let tmp = map_tmp_name(self.id);
            let file = self.storage.open_file(&tmp, true)?;
            file.set_len(0)?;
            let mut bytes = journal::encode_header(self.id).to_vec();
            bytes.extend(journal::encode_record(j.seq + 1, &full));
            file.write_at(&bytes, 0)?;
            file.sync_data()?;
            self.storage.rename_file(&tmp, &map_name(self.id))?;
            Ok::<_, io::Error>((file, bytes.len() as u64))
        })();
        match result {
            Ok((file, len)) => {
                j.file = file;
                j.seq += 1;
                j.end = len;
                j.compacted_len = len;
                Ok(())
            }
            Err(e) => self.fail(e),
        }
    }

    /// Removes the layer's files. The layer must be unreachable.
    pub fn remove_files(storage: &Arc<dyn Storage>, id: LayerId) -> io::Result<()> {
        storage.remove_file(&data_name(id))?;
        storage.remove_file(&map_name(id))?;
        storage.remove_file(&map_tmp_name(id))
    }
}

pub(crate) fn state_in(alloc: &AllocMap, block: u32) -> BlockState {
    if !alloc.present.contains(block) {
        BlockState::Absent
    } else if alloc.zeroed.contains(block) {
        BlockState::Zero
    } else {
        BlockState::Data
    }
}
