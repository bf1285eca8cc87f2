//! A layer: one packed data file of 4 KiB slots, plus its allocation map
//! (which blocks it defines, which of those are zeros, and in which slot
//! each data block sits).
//!
//! The first write of a block takes the next free slot, so a new head's
//! writes append to its file, into space reserved ahead with
//! `fallocate(KEEP_SIZE)`; an overwrite of a block the layer holds goes to
//! its slot in place, unless it is part of a large write over blocks held
//! in scattered slots, which moves to one run of new slots (`scattered`).
//! (A file addressed like the volume would make every first write of a
//! block after a snapshot fill a hole at a random place, which costs the
//! kernel 2–3× an overwrite, and spread a chain's cached pages thinly over
//! many sparse files; `bench/README.md` has the figures.)
//!
//! Invariants:
//! - a block is mapped only after its data was written to its slot;
//! - the map's journal records a block only after the data file was synced,
//!   so after a crash every block the journal names holds the data written
//!   for it (the durability contract's "data before allocation record");
//! - no two blocks share a slot;
//! - a slot unmapped in memory (its block zeroed, or given a newer slot by
//!   a racing writer or a relocating large write) is reused only after a
//!   journal record that no longer names it is durable *and* the owner has
//!   passed a barrier with no I/O in flight ([`Layer::reuse_retired`]), so
//!   no write aimed at the old mapping can land in it once it holds another
//!   block.
//!
//! Layers know nothing of volumes, chains or the catalog.

pub mod journal;
pub mod slots;

use parking_lot::{Mutex, RwLock};
use roaring::RoaringBitmap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::storage::{Storage, StorageFile};
use crate::types::{BLOCK_SIZE, LayerId};
use journal::{AllocMap, HEADER_LEN, MAP_VERSION, MapDelta};
use slots::Extent;

/// Compact the journal once it is this much larger than its last compaction.
const COMPACT_SLACK: u64 = 1 << 20;
/// Space reserved ahead of a layer's last slot: an eighth of what it holds,
/// at least 1 MiB and at most 64 MiB, in slots.
const PREALLOC_MIN: u64 = 256;
const PREALLOC_MAX: u64 = 16384;
/// Slots are numbered in 32 bits: a layer holds at most 16 TiB.
const SLOT_LIMIT: u64 = 1 << 32;

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
    /// Blocks changed since the journal was last written.
    touched: RoaringBitmap,
    /// Slots unmapped since the journal was last written (it may name them):
    /// their blocks were zeroed, so a reader that looked one up before may
    /// read zeros from it once punched.
    freed: RoaringBitmap,
    /// Likewise, but their blocks took a newer slot (racing writers): never
    /// punched, since a reader that looked one up must still read data.
    replaced: RoaringBitmap,
    /// Slots the durable journal no longer names, waiting for a barrier.
    retired: RoaringBitmap,
    /// Slots free for new blocks now.
    free: RoaringBitmap,
    /// The first slot never handed out.
    next_slot: u64,
    /// Slots below this have space reserved in the file.
    reserved_end: u64,
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
    /// Snapshot readers whose chain starts at this layer
    /// ([`Layer::hold_reader`]).
    readers: AtomicUsize,
}

/// A reader's hold on the top layer of its chain ([`Layer::hold_reader`]);
/// a clone holds again.
#[derive(Debug)]
pub(crate) struct ReaderHold(Arc<Layer>);

impl Clone for ReaderHold {
    fn clone(&self) -> ReaderHold {
        self.0.hold_reader()
    }
}

impl Drop for ReaderHold {
    fn drop(&mut self) {
        self.0.readers.fetch_sub(1, Ordering::SeqCst);
    }
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

/// Where slot `slot` starts in a layer's data file.
pub(crate) fn slot_byte(slot: u32) -> u64 {
    u64::from(slot) * BLOCK_SIZE
}

/// A piece of a planned write: blocks from `block`, in place at `slot` or
/// (when `None`) in new slots.
struct Piece {
    block: u32,
    len: u32,
    slot: Option<u32>,
}

/// Writes of at least this many blocks (64 KiB) over blocks held in
/// scattered slots are relocated (see [`scattered`]).
const RELOCATE_MIN: u32 = 16;
/// Held runs shorter than this on average (16 KiB) count as scattered.
const RELOCATE_RUN: u32 = 4;

/// Whether a write of `count` blocks planned as `pieces` should go to one
/// run of new slots instead of in place: it is large, and the blocks this
/// layer already holds sit in short runs of slots (random first writes put
/// them so), which would cost one system call per run now and on every
/// later read. Written anew they sit in one run, so the next large
/// reads and writes of the range are one call each. The old slots are
/// replaced, as when a racing writer maps a block first: reusable only
/// after the next persist and the write barrier, and not punched, since
/// new blocks take them.
fn scattered(pieces: &[Piece], count: u32) -> bool {
    if count < RELOCATE_MIN {
        return false;
    }
    let (runs, blocks) = pieces
        .iter()
        .filter(|p| p.slot.is_some())
        .fold((0u32, 0u32), |(r, b), p| (r + 1, b + p.len));
    runs >= 2 && blocks < runs * RELOCATE_RUN
}

impl Layer {
    /// Creates the files of a new, empty layer, durably.
    pub fn create(storage: &Arc<dyn Storage>, id: LayerId) -> io::Result<Layer> {
        let data = storage.open_file(&data_name(id), true)?;
        data.set_len(0)?; // a stale file of an uncommitted layer may hold bytes
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
            readers: AtomicUsize::new(0),
        })
    }

    /// Opens an existing layer, dropping a torn journal tail and whatever
    /// the data file holds past the last slot the journal names (writes
    /// never flushed, space reserved ahead).
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
        let mut used = RoaringBitmap::new();
        for e in decoded.map.slots.iter() {
            let range = e.slot..=e.slot + (e.len - 1);
            if used.range_cardinality(range.clone()) > 0 {
                return Err(corrupt(format!(
                    "map of {id} gives a slot of block {} to another block too",
                    e.block
                )));
            }
            used.insert_range(range);
        }
        let next_slot = used.max().map_or(0, |s| u64::from(s) + 1);
        let mut free = RoaringBitmap::new();
        if next_slot > 0 {
            free.insert_range(0..=(next_slot - 1) as u32);
            free -= &used;
        }
        data.set_len(next_slot * BLOCK_SIZE)?;
        let layer = Layer {
            id,
            storage: storage.clone(),
            data,
            map: RwLock::new(LayerMap {
                alloc: decoded.map,
                free,
                next_slot,
                reserved_end: next_slot,
                ..LayerMap::default()
            }),
            journal: Mutex::new(Journal {
                file: mapfile,
                end: decoded.valid_len as u64,
                seq: decoded.last_seq,
                compacted_len: decoded.valid_len as u64,
            }),
            failed: AtomicBool::new(false),
            readers: AtomicUsize::new(0),
        };
        if decoded.version != MAP_VERSION {
            tracing::info!(layer = %id, from = decoded.version, to = MAP_VERSION, "rewriting a layer map in the current format");
            layer.compact()?;
        }
        Ok(layer)
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

    /// The state of `block` and, for data, its slot and how many blocks
    /// from it on sit in the slots that follow.
    #[cfg(test)]
    pub fn lookup(&self, block: u32) -> (BlockState, Option<(u32, u32)>) {
        let (st, slot, run) = self.lookup_run(block, u32::MAX);
        (st, slot.map(|s| (s, run)))
    }

    /// How block `block` reads from this layer, and for how many blocks
    /// from it on (at least 1, at most `max`) that holds: a run of data in
    /// consecutive slots, or blocks this layer does not define. Zeroed
    /// blocks are answered one at a time.
    pub fn lookup_run(&self, block: u32, max: u32) -> (BlockState, Option<u32>, u32) {
        let m = self.map.read();
        match state_in(&m.alloc, block) {
            BlockState::Data => match m.alloc.slots.run_at(block) {
                Some((slot, n)) => (BlockState::Data, Some(slot), n.clamp(1, max.max(1))),
                None => (BlockState::Data, None, 1),
            },
            BlockState::Absent => {
                let end = block.saturating_add(max);
                let n = m
                    .alloc
                    .present
                    .range(block..end)
                    .next()
                    .map_or(max, |b| b - block);
                (BlockState::Absent, None, n.max(1))
            }
            st => (st, None, 1),
        }
    }

    /// The slot of data block `block` and the length of its run of slots.
    pub fn run_at(&self, block: u32) -> Option<(u32, u32)> {
        self.map.read().alloc.slots.run_at(block)
    }

    /// Calls `f` with the allocation map held for reading.
    pub fn with_map<T>(&self, f: impl FnOnce(&AllocMap) -> T) -> T {
        f(&self.map.read().alloc)
    }

    /// Reads `buf.len()` bytes at volume byte `offset`, from blocks this
    /// layer holds as data; a block it does not (zeroed by a racing trim)
    /// reads as zeros.
    pub fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let block = (pos / BLOCK_SIZE) as u32;
            let run = self.run_at(block);
            let blocks = run.map_or(1, |(_, n)| u64::from(n));
            let to = end.min((u64::from(block) + blocks) * BLOCK_SIZE);
            let out = &mut buf[(pos - offset) as usize..(to - offset) as usize];
            match run {
                Some((slot, _)) => self.data.read_at(out, slot_byte(slot) + pos % BLOCK_SIZE)?,
                None => out.fill(0),
            }
            pos = to;
        }
        Ok(())
    }

    /// Reads the data file from byte `at` (within a run of slots
    /// [`lookup_run`](Self::lookup_run) found; see [`slot_byte`]).
    pub fn read_file(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        self.data.read_at(buf, at)
    }

    /// Like [`read_file`](Self::read_file), into several buffers in turn.
    pub fn read_file_vectored(&self, bufs: &mut [&mut [u8]], at: u64) -> io::Result<()> {
        self.data.read_vectored_at(bufs, at)
    }

    /// A snapshot reader starts its chain here, until the hold is dropped.
    /// Counted so that garbage collection, once the snapshot is deleted,
    /// does not copy the child's blocks into this layer (an absorb) while
    /// the reader may still read the blocks they would overwrite.
    pub fn hold_reader(self: &Arc<Layer>) -> ReaderHold {
        self.readers.fetch_add(1, Ordering::SeqCst);
        ReaderHold(self.clone())
    }

    /// Snapshot readers whose chain starts here.
    pub fn readers(&self) -> usize {
        self.readers.load(Ordering::SeqCst)
    }

    /// A mapping of at least the data file's first `len` bytes, if the
    /// storage has one (see [`StorageFile::mapping`]).
    pub fn mapping(&self, len: u64) -> Option<Arc<crate::storage::Mapping>> {
        self.data.mapping(len)
    }

    /// Like [`read_file_vectored`](Self::read_file_vectored) without device
    /// I/O: `false` when some byte is not in memory.
    pub fn try_read_file_vectored(&self, bufs: &mut [&mut [u8]], at: u64) -> io::Result<bool> {
        self.data.try_read_vectored_at(bufs, at)
    }

    /// Writes whole blocks from `first`: in place where this layer holds the
    /// block as data, into new slots elsewhere, which are mapped once their
    /// data is written.
    pub fn write_blocks(&self, first: u32, buf: &[u8]) -> io::Result<()> {
        self.check()?;
        debug_assert!((buf.len() as u64).is_multiple_of(BLOCK_SIZE) && !buf.is_empty());
        let count = (buf.len() as u64 / BLOCK_SIZE) as u32;
        let mut pieces = self.plan(first, count);
        let relocate = scattered(&pieces, count);
        if relocate {
            // All of it into one run of new slots; the old ones are replaced.
            pieces = vec![Piece {
                block: first,
                len: count,
                slot: None,
            }];
        }
        // Give the new pieces their slots.
        let mut placed: Vec<(Extent, &[u8])> = Vec::with_capacity(pieces.len());
        let bytes = |block: u32, len: u32| {
            let at = (u64::from(block - first) * BLOCK_SIZE) as usize;
            &buf[at..at + (u64::from(len) * BLOCK_SIZE) as usize]
        };
        let mut fresh = Vec::new();
        if pieces.iter().any(|p| p.slot.is_none()) {
            let mut m = self.map.write();
            for p in pieces.iter().filter(|p| p.slot.is_none()) {
                let mut block = p.block;
                let runs = if relocate && m.next_slot + u64::from(p.len) <= SLOT_LIMIT {
                    Ok(vec![self.append(&mut m, p.len)])
                } else {
                    self.alloc(&mut m, p.len)
                };
                match runs {
                    Ok(runs) => {
                        for (slot, len) in runs {
                            fresh.push(Extent { block, slot, len });
                            block += len;
                        }
                    }
                    Err(e) => {
                        // Give back what earlier pieces took.
                        for f in &fresh {
                            m.free.insert_range(f.slot..=f.slot + (f.len - 1));
                        }
                        return Err(e);
                    }
                }
            }
        }
        for p in &pieces {
            if let Some(slot) = p.slot {
                placed.push((
                    Extent {
                        block: p.block,
                        slot,
                        len: p.len,
                    },
                    bytes(p.block, p.len),
                ));
            }
        }
        for e in &fresh {
            placed.push((*e, bytes(e.block, e.len)));
        }
        // Pieces whose slots follow each other go in one vectored write,
        // in whatever order the request holds them.
        placed.sort_unstable_by_key(|(e, _)| e.slot);
        let mut rest = &placed[..];
        while let Some((first, _)) = rest.first() {
            let mut next = u64::from(first.slot);
            let n = rest
                .iter()
                .take_while(|(e, _)| {
                    let joins = u64::from(e.slot) == next;
                    next += u64::from(e.len);
                    joins
                })
                .count();
            let written = match &rest[..n] {
                [(e, b)] => self.data.write_at(b, slot_byte(e.slot)),
                these => {
                    let bufs: Vec<&[u8]> = these.iter().map(|(_, b)| *b).collect();
                    self.data.write_vectored_at(&bufs, slot_byte(first.slot))
                }
            };
            if let Err(e) = written {
                return self.fail(e);
            }
            rest = &rest[n..];
        }
        if !fresh.is_empty() {
            let mut m = self.map.write();
            for e in fresh {
                let range = e.block..=e.block + (e.len - 1);
                for old in m.alloc.slots.insert(e) {
                    // A racing writer mapped the block first; ours wins.
                    m.replaced.insert_range(old.slot..=old.slot + (old.len - 1));
                }
                m.alloc.present.insert_range(range.clone());
                m.alloc.zeroed.remove_range(range.clone());
                m.touched.insert_range(range);
            }
        }
        Ok(())
    }

    /// Splits `count` blocks from `first` into runs held here in consecutive
    /// slots, and runs not held as data here.
    fn plan(&self, first: u32, count: u32) -> Vec<Piece> {
        let m = self.map.read();
        let mut pieces = Vec::new();
        let end = u64::from(first) + u64::from(count);
        let mut block = u64::from(first);
        while block < end {
            let b = block as u32;
            let left = (end - block) as u32;
            match m.alloc.slots.run_at(b) {
                Some((slot, n)) => {
                    let len = n.min(left);
                    pieces.push(Piece {
                        block: b,
                        len,
                        slot: Some(slot),
                    });
                    block += u64::from(len);
                }
                None => {
                    // Up to the next block held as data.
                    let next = if left == 1 {
                        end
                    } else {
                        m.alloc
                            .slots
                            .next_mapped(b)
                            .map_or(end, |n| u64::from(n).min(end))
                    };
                    let len = (next.max(block + 1) - block).min(u64::from(left)) as u32;
                    match pieces.last_mut() {
                        Some(p) if p.slot.is_none() => p.len += len,
                        _ => pieces.push(Piece {
                            block: b,
                            len,
                            slot: None,
                        }),
                    }
                    block += u64::from(len);
                }
            }
        }
        pieces
    }

    /// Hands out `n` slots: free ones first, then new ones at the end of the
    /// file, reserving space ahead. Returns runs `(slot, len)`.
    fn alloc(&self, m: &mut LayerMap, n: u32) -> io::Result<Vec<(u32, u32)>> {
        // Enough slots first, so a refusal hands out nothing.
        if u64::from(n) > m.free.len() + (SLOT_LIMIT - m.next_slot) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("{} has no free slot left", self.id),
            ));
        }
        let mut out = Vec::new();
        let mut need = n;
        while need > 0
            && let Some(s) = m.free.min()
        {
            let mut len = 1u32;
            while len < need && s.checked_add(len).is_some_and(|x| m.free.contains(x)) {
                len += 1;
            }
            m.free.remove_range(s..=s + (len - 1));
            out.push((s, len));
            need -= len;
        }
        if need > 0 {
            out.push(self.append(m, need));
        }
        Ok(out)
    }

    /// Hands out `n` new slots at the end of the file, in one run `(slot,
    /// n)`, reserving space ahead. The caller checked that they fit under
    /// `SLOT_LIMIT`.
    fn append(&self, m: &mut LayerMap, n: u32) -> (u32, u32) {
        let s = m.next_slot;
        m.next_slot += u64::from(n);
        if m.next_slot > m.reserved_end {
            let ahead = (m.next_slot / 8).clamp(PREALLOC_MIN, PREALLOC_MAX);
            let to = (m.next_slot + ahead).min(SLOT_LIMIT);
            // Advisory: without the reservation writes still work, slower.
            if let Err(e) = self.data.preallocate(
                m.reserved_end * BLOCK_SIZE,
                (to - m.reserved_end) * BLOCK_SIZE,
            ) {
                tracing::debug!(layer = %self.id, error = %e, "reserving space ahead failed");
            }
            m.reserved_end = to;
        }
        (s as u32, n)
    }

    /// Writes `bytes` at byte `at` of block `block` in place, when this layer
    /// holds the block as data; returns false (writing nothing) otherwise.
    pub fn write_in_block(&self, block: u32, at: u64, bytes: &[u8]) -> io::Result<bool> {
        self.check()?;
        let Some(slot) = self.map.read().alloc.slots.get(block) else {
            return Ok(false);
        };
        match self.data.write_at(bytes, slot_byte(slot) + at) {
            Ok(()) => Ok(true),
            Err(e) => self.fail(e),
        }
    }

    /// Records that `len` blocks from `first` now read as zeros here; their
    /// slots' space comes back at the next [`persist`](Self::persist).
    pub fn zero_blocks(&self, first: u32, len: u32) {
        if len == 0 {
            return;
        }
        let mut m = self.map.write();
        for old in m.alloc.slots.remove(first, len) {
            m.freed.insert_range(old.slot..=old.slot + (old.len - 1));
        }
        let range = first..=first + (len - 1);
        m.alloc.present.insert_range(range.clone());
        m.alloc.zeroed.insert_range(range.clone());
        m.touched.insert_range(range);
    }

    /// Lets slots retired by earlier persists take new blocks. Call only
    /// with no I/O on this layer in flight (under the owner's barrier).
    pub fn reuse_retired(&self) {
        let mut m = self.map.write();
        let retired = std::mem::take(&mut m.retired);
        m.free |= retired;
    }

    /// Whether slots wait for [`reuse_retired`](Self::reuse_retired).
    pub fn has_retired(&self) -> bool {
        !self.map.read().retired.is_empty()
    }

    /// Gives back the space reserved past the last slot (a layer that stops
    /// taking writes).
    pub fn release_reserve(&self) -> io::Result<()> {
        self.check()?;
        let mut m = self.map.write();
        if m.reserved_end > m.next_slot {
            if let Err(e) = self.data.set_len(m.next_slot * BLOCK_SIZE) {
                return self.fail(e);
            }
            m.reserved_end = m.next_slot;
        }
        Ok(())
    }

    /// Makes every write completed so far durable: sync the data, then
    /// append the map changes to the journal and sync it; then give back
    /// the space of slots the journal no longer names.
    pub fn persist(&self) -> io::Result<()> {
        let mut j = self.journal.lock();
        self.check()?;
        // Every block mapped now had its data written before it was mapped,
        // so the sync below covers whatever this delta names.
        let (delta, freed, replaced) = {
            let mut m = self.map.write();
            let touched = std::mem::take(&mut m.touched);
            (
                delta_of(&m.alloc, &touched),
                std::mem::take(&mut m.freed),
                std::mem::take(&mut m.replaced),
            )
        };
        if let Err(e) = self.data.sync_data() {
            return self.fail(e);
        }
        if !delta.is_empty() {
            let (records, count) = journal::encode_records(j.seq + 1, &delta);
            if let Err(e) = j
                .file
                .write_at(&records, j.end)
                .and_then(|_| j.file.sync_data())
            {
                return self.fail(e);
            }
            j.seq += count;
            j.end += records.len() as u64;
        }
        self.retire(freed, replaced);
        if j.end > 2 * j.compacted_len + COMPACT_SLACK {
            self.compact_locked(&mut j)?;
        }
        Ok(())
    }

    /// Punches the slots of zeroed blocks no durable record names, and
    /// queues them and the `replaced` ones for reuse.
    fn retire(&self, freed: RoaringBitmap, replaced: RoaringBitmap) {
        if freed.is_empty() && replaced.is_empty() {
            return;
        }
        for (slot, len) in journal::runs(freed.iter()) {
            if let Err(e) = self
                .data
                .punch_hole(slot_byte(slot), u64::from(len) * BLOCK_SIZE)
            {
                // The slot is reused all the same; only its space waits.
                tracing::debug!(layer = %self.id, error = %e, "punching freed slots failed");
            }
        }
        let mut m = self.map.write();
        m.retired |= freed;
        m.retired |= replaced;
    }

    /// Persists, then rewrites the journal as one record.
    pub fn compact(&self) -> io::Result<()> {
        let mut j = self.journal.lock();
        self.check()?;
        self.compact_locked(&mut j)
    }

    fn compact_locked(&self, j: &mut Journal) -> io::Result<()> {
        let (full, freed, replaced) = {
            let mut m = self.map.write();
            m.touched = RoaringBitmap::new();
            (
                m.alloc.as_delta(),
                std::mem::take(&mut m.freed),
                std::mem::take(&mut m.replaced),
            )
        };
        let result = (|| {
            self.data.sync_data()?;
            let tmp = map_tmp_name(self.id);
            let file = self.storage.open_file(&tmp, true)?;
            file.set_len(0)?;
            let mut bytes = journal::encode_header(self.id).to_vec();
            let (records, count) = journal::encode_records(j.seq + 1, &full);
            bytes.extend(records);
            file.write_at(&bytes, 0)?;
            file.sync_data()?;
            self.storage.rename_file(&tmp, &map_name(self.id))?;
            Ok::<_, io::Error>((file, bytes.len() as u64, count))
        })();
        match result {
            Ok((file, len, count)) => {
                j.file = file;
                j.seq += count;
                j.end = len;
                j.compacted_len = len;
                self.retire(freed, replaced);
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

/// The record that brings a journal up to date with `alloc` for `touched`
/// blocks: each one's current slot, or zero.
fn delta_of(alloc: &AllocMap, touched: &RoaringBitmap) -> MapDelta {
    let mut delta = MapDelta {
        zero: touched & &alloc.zeroed,
        ..MapDelta::default()
    };
    // Only data blocks are walked one by one: a huge trim costs bitmap
    // operations, not a step per block.
    let data = touched - &alloc.zeroed;
    for (first, len) in journal::runs(data.iter()) {
        let end = u64::from(first) + u64::from(len);
        let mut b = u64::from(first);
        while b < end {
            match alloc.slots.run_at(b as u32) {
                Some((slot, n)) => {
                    let take = u64::from(n).min(end - b);
                    delta.data.insert(Extent {
                        block: b as u32,
                        slot,
                        len: take as u32,
                    });
                    b += take;
                }
                // Zeros: on to the next block holding data.
                None => {
                    b = alloc
                        .slots
                        .next_mapped(b as u32)
                        .map_or(end, |n| u64::from(n).clamp(b + 1, end));
                }
            }
        }
    }
    delta
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn block_bytes(b: u32, seed: u8) -> Vec<u8> {
        vec![(b as u8).wrapping_mul(7).wrapping_add(seed); BLOCK_SIZE as usize]
    }

    fn read_block(l: &Layer, b: u32) -> Vec<u8> {
        let (state, run) = l.lookup(b);
        assert_eq!(state, BlockState::Data, "block {b}");
        let mut out = vec![0u8; BLOCK_SIZE as usize];
        l.read_file(&mut out, slot_byte(run.unwrap().0)).unwrap();
        out
    }

    #[test]
    fn large_writes_over_scattered_slots_move_into_one_run_and_small_ones_stay() {
        let storage: Arc<dyn Storage> = MemStorage::new();
        let l = Layer::create(&storage, LayerId(1)).unwrap();
        // 512 blocks written one by one in a shuffled order: scattered slots.
        for i in 0..512u32 {
            let b = (i * 389) % 512;
            l.write_blocks(b, &block_bytes(b, 1)).unwrap();
        }
        let slots_before: Vec<u32> = (0..512).map(|b| l.lookup(b).1.unwrap().0).collect();
        assert!(
            l.lookup(100).1.unwrap().1 < RELOCATE_RUN,
            "scattered to begin with"
        );
        // A small write over them stays in place.
        let small: Vec<u8> = (200..210u32).flat_map(|b| block_bytes(b, 2)).collect();
        l.write_blocks(200, &small).unwrap();
        for b in 200..210 {
            assert_eq!(l.lookup(b).1.unwrap().0, slots_before[b as usize]);
        }
        // A large one (1 MiB) moves into one run of slots after the others.
        let big: Vec<u8> = (64..320u32).flat_map(|b| block_bytes(b, 3)).collect();
        l.write_blocks(64, &big).unwrap();
        let (state, run) = l.lookup(64);
        assert_eq!(state, BlockState::Data);
        let (slot, len) = run.unwrap();
        assert!(
            len >= 256 && slot >= 512,
            "one new run: slot {slot}, {len} blocks"
        );
        // Every block reads what was last written to it.
        for b in 0..512u32 {
            let seed = match b {
                64..320 => 3,
                _ => 1,
            };
            assert_eq!(read_block(&l, b), block_bytes(b, seed), "block {b}");
        }
        // Written again, it stays where it now is: the run is not scattered.
        l.write_blocks(64, &big).unwrap();
        assert_eq!(l.lookup(64).1.unwrap().0, slot);
        // A large write over scattered blocks and half of that run moves
        // too; the rest of the run stays mapped where it was.
        let front: Vec<u8> = (0..128u32).flat_map(|b| block_bytes(b, 3)).collect();
        l.write_blocks(0, &front).unwrap();
        let (moved, n) = l.lookup(0).1.unwrap();
        assert!(n >= 128 && moved >= slot + 256, "slot {moved}, {n} blocks");
        assert_eq!(l.lookup(128).1.unwrap().0, slot + 64);
        // The replaced slots come back for new blocks after a persist and
        // the barrier, not before.
        let free_before = l.map.read().free.len();
        l.write_blocks(600, &block_bytes(600, 4)).unwrap();
        assert!(
            l.lookup(600).1.unwrap().0 >= moved + 128,
            "nothing reused yet"
        );
        assert_eq!(l.map.read().free.len(), free_before);
        l.persist().unwrap();
        l.reuse_retired();
        l.write_blocks(601, &block_bytes(601, 5)).unwrap();
        let reused = l.lookup(601).1.unwrap().0;
        assert!(
            slots_before[..320].contains(&reused),
            "slot {reused} is one the large writes gave back"
        );
        assert_eq!(read_block(&l, 601), block_bytes(601, 5));
        for b in 0..512u32 {
            let seed = match b {
                0..320 => 3,
                _ => 1,
            };
            assert_eq!(
                read_block(&l, b),
                block_bytes(b, seed),
                "block {b} at the end"
            );
        }
    }
}
