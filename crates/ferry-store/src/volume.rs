//! A volume's live state and its data path: reads resolve each block through
//! the chain of layers, writes go to the head.
//!
//! The chain is `layers[0]` (the head, which takes writes) followed by sealed
//! layers, newest first. A block reads from the first layer that defines it,
//! zeros if none does. Whole-block writes go straight into the head file; a
//! partial block is read, merged and written whole under a per-block lock.
//!
//! Every I/O holds the volume's state lock for reading; snapshots, merges,
//! grow and sync take it for writing, which is the write barrier: in-flight
//! I/O finishes, new I/O waits.

use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::sync::{Arc, OnceLock};

use crate::error::{Result, StoreError};
use crate::layer::{BlockState, Layer, ReaderHold, slot_byte};
use crate::resolve::Resolver;
use crate::storage::Mapping;
use crate::types::{BLOCK, BLOCK_SIZE, VolumeId};

const STRIPES: usize = 64;
static ZEROS: [u8; BLOCK] = [0; BLOCK];

#[derive(Debug)]
pub(crate) struct VolumeState {
    pub size: u64,
    /// `layers[0]` is the head; the rest are sealed, newest first.
    layers: Vec<Arc<Layer>>,
    /// Resolution through `layers[1..]`, built on first use after a chain change.
    resolver: OnceLock<Option<Resolver>>,
    pub deleted: bool,
    /// How many times the state was taken for writing ([`Volume::barrier`]):
    /// slots change hands and the chain changes only then, so a read
    /// planned under a read guard holds while this is unchanged.
    barriers: u64,
}

impl VolumeState {
    pub fn layers(&self) -> &[Arc<Layer>] {
        &self.layers
    }

    pub fn head(&self) -> &Arc<Layer> {
        &self.layers[0]
    }

    /// Replaces the chain (snapshot, sync).
    pub fn set_layers(&mut self, layers: Vec<Arc<Layer>>) {
        self.layers = layers;
        self.resolver = OnceLock::new();
    }

    /// Takes a merged-away layer out of the chain.
    pub fn remove_layer(&mut self, id: crate::LayerId) {
        if self.layers.iter().any(|l| l.id == id) {
            self.layers.retain(|l| l.id != id);
            self.resolver = OnceLock::new();
        }
    }

    fn resolver(&self) -> Option<&Resolver> {
        self.resolver
            .get_or_init(|| Resolver::build(&self.layers, 1, self.size))
            .as_ref()
    }

    fn read(&self, buf: &mut [u8], offset: u64, wait: Wait) -> std::io::Result<bool> {
        read_chain(&self.layers, self.resolver(), buf, offset, wait)
    }

    fn plan_mapped(&self, offset: u64, len: u64) -> Option<MappedPlan> {
        plan_mapped_chain(&self.layers, self.resolver(), offset, len)
    }
}

#[derive(Debug)]
pub(crate) struct Volume {
    pub id: VolumeId,
    pub name: String,
    /// Written only through [`barrier`](Self::barrier), which counts.
    state: RwLock<VolumeState>,
    stripes: Box<[Mutex<()>]>,
}

impl Volume {
    pub fn new(id: VolumeId, name: String, size: u64, layers: Vec<Arc<Layer>>) -> Volume {
        Volume {
            id,
            name,
            state: RwLock::new(VolumeState {
                size,
                layers,
                resolver: OnceLock::new(),
                deleted: false,
                barriers: 0,
            }),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    /// Takes the state for writing: waits for all I/O in flight and holds
    /// off new I/O until dropped. The only way to change the chain or let
    /// slots take new blocks; counted, so that planned reads know.
    pub fn barrier(&self) -> RwLockWriteGuard<'_, VolumeState> {
        let mut st = self.state.write();
        st.barriers += 1;
        st
    }

    /// Takes the state for reading, without the checks of I/O.
    pub fn read_state(&self) -> RwLockReadGuard<'_, VolumeState> {
        self.state.read()
    }

    /// Takes the state for I/O on `offset..offset+len`, checking the volume is usable.
    fn begin(&self, offset: u64, len: u64) -> Result<RwLockReadGuard<'_, VolumeState>> {
        let st = self.state.read();
        if st.deleted {
            return Err(StoreError::Deleted {
                name: self.name.clone(),
            });
        }
        if st.head().failed() {
            return Err(StoreError::Failed {
                name: self.name.clone(),
            });
        }
        match offset.checked_add(len) {
            Some(end) if end <= st.size => Ok(st),
            _ => Err(StoreError::OutOfRange {
                offset,
                len,
                size: st.size,
            }),
        }
    }

    fn io_err(&self, op: &'static str, e: std::io::Error) -> StoreError {
        StoreError::io(op, format!("volume {:?}", self.name), e)
    }

    pub fn flush(&self) -> Result<()> {
        let st = self.begin(0, 0)?;
        let head = st.head().clone();
        head.persist().map_err(|e| self.io_err("flushing", e))?;
        if head.has_retired() {
            // Slots freed by trims may take new blocks once no I/O that
            // looked them up is in flight: the write barrier, briefly.
            drop(st);
            let st = self.barrier();
            if Arc::ptr_eq(st.head(), &head) {
                head.reuse_retired();
            }
        }
        Ok(())
    }
}

/// Where a block comes from: the layer's index in the chain (the chain's
/// length when none defines it), in what form, and for data the slot, when
/// the lookup found it on the way.
#[derive(Clone, Copy, Debug)]
struct Source {
    layer: usize,
    state: BlockState,
    slot: Option<u32>,
    /// How many blocks from this one on come the same way (at least 1):
    /// from the same layer in the same form, and for data from the slots
    /// that follow.
    run: u32,
}

impl Source {
    /// Whether `next`, the source of the block `k` blocks on, continues this
    /// one: same layer and form, and for data the slot `k` slots on.
    fn continued_by(&self, next: &Source, k: u32) -> bool {
        self.layer == next.layer
            && self.state == next.state
            && match (self.state, self.slot, next.slot) {
                (BlockState::Data, Some(a), Some(b)) => a.checked_add(k) == Some(b),
                (BlockState::Data, _, _) => false,
                _ => true,
            }
    }
}

/// Which layer a block comes from, in what form, and for how many blocks
/// from it on (at most `max`) that holds: the layers above the resolver's
/// are asked one by one, the rest through the resolver. A layer's run counts
/// only as far as every layer above it leaves the blocks undefined.
fn resolve(layers: &[Arc<Layer>], resolver: Option<&Resolver>, block: u32, max: u32) -> Source {
    let scan_to = resolver.map_or(layers.len(), Resolver::first);
    let mut limit = max.max(1);
    let scan = |from: usize, to: usize, limit: &mut u32| {
        for (i, layer) in layers[from..to].iter().enumerate() {
            match layer.lookup_run(block, *limit) {
                (BlockState::Absent, _, n) => *limit = (*limit).min(n),
                (state, slot, run) => {
                    return Some(Source {
                        layer: from + i,
                        state,
                        slot,
                        run: run.min(*limit),
                    });
                }
            }
        }
        None
    };
    if let Some(found) = scan(0, scan_to, &mut limit) {
        return found;
    }
    if let Some((layer, state, slot, run)) =
        resolver.and_then(|r| r.lookup_run(layers, block, limit))
    {
        let (slot, run) = match (state, slot) {
            (BlockState::Data, None) => match layers[layer].run_at(block) {
                Some((s, n)) => (Some(s), run.min(n)),
                None => (None, 1),
            },
            _ => (slot, run),
        };
        return Source {
            layer,
            state,
            slot,
            run: run.clamp(1, limit),
        };
    }
    scan(scan_to, layers.len(), &mut limit).unwrap_or(Source {
        layer: layers.len(),
        state: BlockState::Absent,
        slot: None,
        run: limit,
    })
}

/// A piece of a read through a chain, in the request's order.
#[derive(Clone, Copy, Debug)]
enum Piece {
    /// `len` bytes from byte `at` of `layers[layer]`'s data file.
    Data { layer: usize, at: u64, len: usize },
    /// `len` bytes of zeros.
    Zero(usize),
}

/// Cuts `offset..offset+len` of a chain (bounds already checked) into runs
/// that come from one layer's consecutive slots, or are zeros, in order.
fn plan_chain(
    layers: &[Arc<Layer>],
    resolver: Option<&Resolver>,
    offset: u64,
    len: u64,
    mut emit: impl FnMut(Piece),
) {
    let end = offset + len;
    let end_block = end.div_ceil(BLOCK_SIZE);
    // Blocks from `b` to the end of the request.
    let left = |b: u64| (end_block - b).min(u64::from(u32::MAX)) as u32;
    let mut pos = offset;
    // The source of the block a run stopped at, resolved already.
    let mut pending: Option<Source> = None;
    while pos < end {
        let block = pos / BLOCK_SIZE;
        let source = pending
            .take()
            .unwrap_or_else(|| resolve(layers, resolver, block as u32, left(block)));
        let mut next = block + u64::from(source.run.max(1));
        // Runs that carry on where this one stopped (a data run split
        // between resolver containers, or absent above and below) join it.
        while next < end_block {
            let more = resolve(layers, resolver, next as u32, left(next));
            if !source.continued_by(&more, (next - block) as u32) {
                pending = Some(more);
                break;
            }
            next += u64::from(more.run.max(1));
        }
        let run_end = end.min(next * BLOCK_SIZE);
        let len = (run_end - pos) as usize;
        emit(match (source.state, source.slot) {
            (BlockState::Data, Some(slot)) => Piece::Data {
                layer: source.layer,
                at: slot_byte(slot) + pos % BLOCK_SIZE,
                len,
            },
            // Zeros, nothing, or data zeroed by a racing trim.
            _ => Piece::Zero(len),
        });
        pos = run_end;
    }
}

/// Reads `buf.len()` bytes at `offset` through a chain (bounds already checked).
///
/// Runs whose slots sit side by side in a layer's file, in whatever order
/// the request holds them (blocks first written by racing writers take
/// slots in the order they arrived), are read by one vectored read.
fn read_chain(
    layers: &[Arc<Layer>],
    resolver: Option<&Resolver>,
    buf: &mut [u8],
    offset: u64,
    wait: Wait,
) -> std::io::Result<bool> {
    // (layer, byte in its data file, where the bytes go): the first data
    // run apart, so a request of one run (most small ones) allocates nothing
    let mut first: Option<(usize, u64, &mut [u8])> = None;
    let mut runs: Vec<(usize, u64, &mut [u8])> = Vec::new();
    let len = buf.len() as u64;
    let mut rest = buf;
    plan_chain(layers, resolver, offset, len, |piece| {
        let n = match piece {
            Piece::Data { len, .. } | Piece::Zero(len) => len,
        };
        let (out, tail) = std::mem::take(&mut rest).split_at_mut(n);
        rest = tail;
        match piece {
            Piece::Data { layer, at, .. } => match first {
                None => first = Some((layer, at, out)),
                Some(_) => runs.push((layer, at, out)),
            },
            Piece::Zero(_) => out.fill(0),
        }
    });
    let Some((layer, at, out)) = first else {
        return Ok(true);
    };
    if runs.is_empty() {
        return match wait {
            Wait::Yes => layers[layer].read_file(out, at).map(|()| true),
            Wait::No => layers[layer].try_read_file_vectored(&mut [out], at),
        };
    }
    runs.push((layer, at, out));
    runs.sort_unstable_by_key(|&(layer, at, _)| (layer, at));
    let mut rest = &mut runs[..];
    while let Some(&(layer, at, _)) = rest.first() {
        let mut next_at = at;
        let n = rest
            .iter()
            .take_while(|(l, a, out)| {
                let joins = *l == layer && *a == next_at;
                next_at += out.len() as u64;
                joins
            })
            .count();
        let (these, tail) = std::mem::take(&mut rest).split_at_mut(n);
        rest = tail;
        let mut bufs: Vec<&mut [u8]> = these.iter_mut().map(|(_, _, out)| &mut **out).collect();
        match wait {
            Wait::Yes => layers[layer].read_file_vectored(&mut bufs, at)?,
            Wait::No => {
                if !layers[layer].try_read_file_vectored(&mut bufs, at)? {
                    return Ok(false);
                }
            }
        }
    }
    Ok(true)
}

/// Zeros for the zero runs of [`plan_mapped_chain`].
static ZERO_RUN: [u8; 1 << 16] = [0; 1 << 16];

/// The iovecs of a mapped read, the mappings they point into, and what
/// they show of each.
struct MappedPlan {
    iov: Vec<libc::iovec>,
    /// Per layer, the mapping of its file, if the read uses it.
    maps: Vec<Option<Arc<Mapping>>>,
    /// What the iovecs show, in order.
    pieces: Vec<Piece>,
}

impl MappedPlan {
    /// Whether every page the plan shows is in memory (`mincore`).
    fn in_memory(&self) -> bool {
        let mut scratch = Vec::new();
        self.pieces.iter().all(|piece| match *piece {
            Piece::Data { layer, at, len } => self.maps[layer]
                .as_ref()
                .is_some_and(|m| m.resident(at, len as u64, &mut scratch)),
            Piece::Zero(_) => true,
        })
    }
}

/// The bytes of `offset..offset+len` of a chain (bounds already checked) as
/// iovecs, in order: pointers into mappings of the layers' files, and
/// zeros. Only system calls may read them (see [`Mapping`]), and only while
/// the slots they show are still theirs. `None` when some layer's file has
/// no mapping or some of the bytes are not in memory (those are better read
/// with `preadv`, which reads ahead, on threads that read in parallel).
fn plan_mapped_chain(
    layers: &[Arc<Layer>],
    resolver: Option<&Resolver>,
    offset: u64,
    len: u64,
) -> Option<MappedPlan> {
    let mut pieces = Vec::new();
    // How far into each layer's file the pieces reach.
    let mut reach = vec![0u64; layers.len()];
    plan_chain(layers, resolver, offset, len, |piece| {
        if let Piece::Data { layer, at, len } = piece {
            reach[layer] = reach[layer].max(at + len as u64);
        }
        pieces.push(piece);
    });
    let maps = reach
        .iter()
        .zip(layers)
        .map(|(&end, layer)| match end {
            0 => Some(None),
            end => layer.mapping(end).map(Some),
        })
        .collect::<Option<Vec<_>>>()?;
    let mut iov = Vec::with_capacity(pieces.len());
    for &piece in &pieces {
        match piece {
            Piece::Data { layer, at, len } => {
                iov.push(libc::iovec {
                    iov_base: maps[layer]
                        .as_ref()?
                        .addr(at, len as u64)?
                        .cast_mut()
                        .cast(),
                    iov_len: len,
                });
            }
            Piece::Zero(mut len) => {
                while len > 0 {
                    let n = len.min(ZERO_RUN.len());
                    iov.push(libc::iovec {
                        iov_base: ZERO_RUN.as_ptr().cast_mut().cast(),
                        iov_len: n,
                    });
                    len -= n;
                }
            }
        }
    }
    let plan = MappedPlan { iov, maps, pieces };
    plan.in_memory().then_some(plan)
}

/// A large read planned ahead of its send: the bytes of a range as iovecs
/// into read-only mappings of the layers' files (and zeros), from
/// [`VolumeHandle::plan_mapped`] or [`SnapshotReader::plan_mapped`].
///
/// Planning takes the resolution and the check that the bytes are in
/// memory off the path where sends wait for each other (an NBD
/// connection's socket); [`send`](Self::send) only checks that the plan
/// still holds. Not `Send`: a plan is sent by the thread that made it.
pub struct MappedRead {
    /// A live volume and its barrier count when planned; `None` for a
    /// snapshot, whose sealed layers keep every block in its slot.
    live: Option<(Arc<Volume>, u64)>,
    offset: u64,
    len: u64,
    plan: MappedPlan,
}

impl std::fmt::Debug for MappedRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedRead")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("pieces", &self.plan.iov.len())
            .finish_non_exhaustive()
    }
}

impl MappedRead {
    /// Hands `f` the planned iovecs for a system call to copy out (a socket
    /// send). A live volume is held while `f` runs, so the slots the iovecs
    /// show stay theirs: `f` must not wait long (a send that would block
    /// should stop; read the rest with [`VolumeHandle::read`]). `Ok(None)`,
    /// with `f` not called, when the plan no longer holds: the volume passed
    /// a barrier since (a snapshot, slots given to new blocks); then read
    /// with [`VolumeHandle::read`]. The pages were in memory when planned; a
    /// caller that waited long since should read instead. Only system calls
    /// may read the iovecs' bytes (a device error fails the call with
    /// `EFAULT`).
    pub fn send<R>(&self, f: impl FnOnce(&[libc::iovec]) -> R) -> Result<Option<R>> {
        let Some((vol, barriers)) = &self.live else {
            return Ok(Some(f(&self.plan.iov)));
        };
        let st = vol.begin(self.offset, self.len)?;
        Ok((st.barriers == *barriers).then(|| f(&self.plan.iov)))
    }

    /// Whether the planned bytes are all still in memory (`mincore` again),
    /// for a caller that waited long since the plan.
    pub fn in_memory(&self) -> bool {
        self.plan.in_memory()
    }
}

/// Whether a read may wait for the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    Yes,
    /// Only bytes already in memory: [`read_chain`] answers `false` at the
    /// first run that would need device I/O.
    No,
}

/// How a run of bytes reads, as [`VolumeHandle::allocation`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// Held as data by some layer of the chain.
    Data,
    /// Reads as zeros and holds no space: never written, trimmed or zeroed.
    Zero,
}

/// Most blocks [`allocation`](VolumeHandle::allocation) resolves one by one
/// in a call: 1 Mi blocks (4 GiB). Runs no layer defines are skipped in bulk.
const MAX_ALLOCATION_BLOCKS: u64 = 1 << 20;

/// The allocation of `offset..offset+len` through a chain as runs
/// `(length, kind)`, adjacent runs of one kind merged. The runs may cover
/// less than `len` (at least one block) when the range is large and mixed.
fn allocation_chain(
    layers: &[Arc<Layer>],
    resolver: Option<&Resolver>,
    offset: u64,
    len: u64,
) -> Vec<(u64, Allocation)> {
    let end = offset + len;
    let mut out: Vec<(u64, Allocation)> = Vec::new();
    let mut push = |from: u64, to: u64, kind: Allocation| match out.last_mut() {
        Some((l, k)) if *k == kind => *l += to - from,
        _ => out.push((to - from, kind)),
    };
    let mut pos = offset;
    let mut resolved = 0u64;
    // Inside a run of data the next block is most likely data too: look for
    // the next defined block only after a block that reads as zeros.
    let mut in_data = false;
    while pos < end {
        let block = pos / BLOCK_SIZE;
        let last_block = (end - 1) / BLOCK_SIZE;
        // Skip blocks no layer defines, all at once.
        let next_defined = if in_data {
            block
        } else {
            layers
                .iter()
                .filter_map(|l| {
                    l.with_map(|m| m.present.range(block as u32..=last_block as u32).next())
                })
                .min()
                .map_or(last_block + 1, u64::from)
        };
        if next_defined > block {
            let to = end.min(next_defined * BLOCK_SIZE);
            push(pos, to, Allocation::Zero);
            pos = to;
            continue;
        }
        if resolved >= MAX_ALLOCATION_BLOCKS {
            break;
        }
        resolved += 1;
        let kind = match resolve(layers, resolver, block as u32, 1).state {
            BlockState::Data => Allocation::Data,
            _ => Allocation::Zero,
        };
        in_data = kind == Allocation::Data;
        let to = end.min((block + 1) * BLOCK_SIZE);
        push(pos, to, kind);
        pos = to;
    }
    out
}

/// What to put in a range: bytes, or zeros.
#[derive(Clone, Copy)]
enum Fill<'a> {
    Bytes(&'a [u8]),
    Zeros,
}

/// A handle for reading and writing one volume; cheap to clone, safe to share.
///
/// The durability contract: a write is durable once a [`flush`](Self::flush)
/// that started after it returned has completed, or at once when written with
/// `fua`. After a crash every block reads its last durable content or a newer
/// acknowledged write.
#[derive(Clone, Debug)]
pub struct VolumeHandle {
    pub(crate) vol: Arc<Volume>,
}

impl VolumeHandle {
    pub fn name(&self) -> &str {
        &self.vol.name
    }

    pub fn id(&self) -> VolumeId {
        self.vol.id
    }

    /// The volume's size in bytes.
    pub fn size(&self) -> u64 {
        self.vol.state.read().size
    }

    /// How `offset..offset+len` reads: runs of data and of zeros that hold
    /// no space, from allocation maps alone (see [`Allocation`]).
    pub fn allocation(&self, offset: u64, len: u64) -> Result<Vec<(u64, Allocation)>> {
        let st = self.vol.begin(offset, len)?;
        Ok(allocation_chain(&st.layers, st.resolver(), offset, len))
    }

    /// Reads `buf.len()` bytes at any byte `offset`.
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let st = self.vol.begin(offset, buf.len() as u64)?;
        st.read(buf, offset, Wait::Yes)
            .map(|_| ())
            .map_err(|e| self.vol.io_err("reading", e))
    }

    /// Reads like [`read`](Self::read) when every byte is already in memory
    /// (the page cache); otherwise says `false` at once, with `buf` holding
    /// anything, and the caller reads again with [`read`](Self::read) on a
    /// thread that may wait. An NBD connection's reader answers cached reads
    /// itself this way and hands only the rest to its helpers.
    pub fn try_read(&self, buf: &mut [u8], offset: u64) -> Result<bool> {
        let st = self.vol.begin(offset, buf.len() as u64)?;
        st.read(buf, offset, Wait::No)
            .map_err(|e| self.vol.io_err("reading", e))
    }

    /// Plans a read of `offset..offset+len` to be sent without copying
    /// the bytes first (see [`MappedRead`]). `Ok(None)` where the storage
    /// has no mappings or some of the bytes are not in memory: then read
    /// with [`read`](Self::read).
    pub fn plan_mapped(&self, offset: u64, len: u64) -> Result<Option<MappedRead>> {
        let st = self.vol.begin(offset, len)?;
        Ok(st.plan_mapped(offset, len).map(|plan| MappedRead {
            live: Some((self.vol.clone(), st.barriers)),
            offset,
            len,
            plan,
        }))
    }

    /// Writes `buf` at any byte `offset`; with `fua` it is durable on return.
    pub fn write(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        self.modify(offset, buf.len() as u64, Fill::Bytes(buf), fua)
    }

    /// Makes a range read as zeros, giving whole blocks' space back.
    pub fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        self.modify(offset, len, Fill::Zeros, fua)
    }

    /// Discards a range; it reads as zeros afterwards and its space comes back.
    pub fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        self.modify(offset, len, Fill::Zeros, fua)
    }

    /// Makes every write completed before this call durable.
    pub fn flush(&self) -> Result<()> {
        self.vol.flush()
    }

    fn modify(&self, offset: u64, len: u64, fill: Fill<'_>, fua: bool) -> Result<()> {
        let st = self.vol.begin(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let full_start = offset.next_multiple_of(BLOCK_SIZE);
        let full_end = end / BLOCK_SIZE * BLOCK_SIZE;
        let io = |e| self.vol.io_err("writing", e);
        let part = |from: u64, to: u64| match fill {
            Fill::Bytes(b) => Fill::Bytes(&b[(from - offset) as usize..(to - offset) as usize]),
            Fill::Zeros => Fill::Zeros,
        };
        if full_start < full_end {
            let blocks = (full_start / BLOCK_SIZE) as u32..=((full_end / BLOCK_SIZE) - 1) as u32;
            let head = &st.head();
            match part(full_start, full_end) {
                Fill::Bytes(b) => head.write_blocks(*blocks.start(), b).map_err(io)?,
                Fill::Zeros => {
                    head.zero_blocks(*blocks.start(), blocks.end() - blocks.start() + 1);
                }
            }
            if offset < full_start {
                self.write_partial(&st, offset, full_start - offset, part(offset, full_start))
                    .map_err(io)?;
            }
            if full_end < end {
                self.write_partial(&st, full_end, end - full_end, part(full_end, end))
                    .map_err(io)?;
            }
        } else {
            // No whole block: one or two partial blocks.
            let mut pos = offset;
            while pos < end {
                let to = end.min((pos / BLOCK_SIZE + 1) * BLOCK_SIZE);
                self.write_partial(&st, pos, to - pos, part(pos, to))
                    .map_err(io)?;
                pos = to;
            }
        }
        if fua {
            st.head()
                .persist()
                .map_err(|e| self.vol.io_err("flushing", e))?;
        }
        Ok(())
    }

    /// Writes part of one block (`offset..offset+len`): in place when the
    /// head holds the block, else read-modify-write of the whole block under
    /// the block's lock.
    fn write_partial(
        &self,
        st: &VolumeState,
        offset: u64,
        len: u64,
        fill: Fill<'_>,
    ) -> std::io::Result<()> {
        let block = (offset / BLOCK_SIZE) as u32;
        let head = &st.head();
        let bytes = match fill {
            Fill::Bytes(b) => b,
            Fill::Zeros => &ZEROS[..len as usize],
        };
        // In place when the head holds the block: no lock, since a racing
        // write or trim of the whole block may land before or after this.
        if head.write_in_block(block, offset % BLOCK_SIZE, bytes)? {
            return Ok(());
        }
        let _guard = self.vol.stripes[block as usize % STRIPES].lock();
        let start = u64::from(block) * BLOCK_SIZE;
        let mut buf = [0u8; BLOCK];
        st.read(&mut buf, start, Wait::Yes)?;
        let at = (offset - start) as usize;
        let range = &mut buf[at..at + len as usize];
        match fill {
            Fill::Bytes(b) => range.copy_from_slice(b),
            Fill::Zeros => range.fill(0),
        }
        head.write_blocks(block, &buf)
    }
}

/// A read-only view of one volume of a snapshot. While it lives, its top
/// layer is held ([`Layer::hold_reader`]): deleting the snapshot meanwhile
/// gives its space back without changing a byte the reader reads.
#[derive(Clone, Debug)]
pub struct SnapshotReader {
    layers: Vec<Arc<Layer>>,
    size: u64,
    resolver: Arc<OnceLock<Option<Resolver>>>,
    _hold: Option<ReaderHold>,
}

impl SnapshotReader {
    /// Called under the catalog lock, where the snapshot was found: a
    /// deletion commits after the hold, and garbage collection sees it.
    pub(crate) fn new(layers: Vec<Arc<Layer>>, size: u64) -> SnapshotReader {
        let _hold = layers.first().map(Layer::hold_reader);
        SnapshotReader {
            layers,
            size,
            resolver: Arc::default(),
            _hold,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    fn check(&self, offset: u64, len: u64) -> Result<Option<&Resolver>> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(self
                .resolver
                .get_or_init(|| Resolver::build(&self.layers, 0, self.size))
                .as_ref()),
            _ => Err(StoreError::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.read_chain(buf, offset, Wait::Yes).map(|_| ())
    }

    /// Reads like [`read`](Self::read) when no byte needs device I/O, and
    /// says `false` otherwise, without waiting (see
    /// [`VolumeHandle::try_read`]).
    pub fn try_read(&self, buf: &mut [u8], offset: u64) -> Result<bool> {
        self.read_chain(buf, offset, Wait::No)
    }

    /// Like [`VolumeHandle::plan_mapped`].
    pub fn plan_mapped(&self, offset: u64, len: u64) -> Result<Option<MappedRead>> {
        let resolver = self.check(offset, len)?;
        Ok(
            plan_mapped_chain(&self.layers, resolver, offset, len).map(|plan| MappedRead {
                live: None,
                offset,
                len,
                plan,
            }),
        )
    }

    fn read_chain(&self, buf: &mut [u8], offset: u64, wait: Wait) -> Result<bool> {
        let resolver = self.check(offset, buf.len() as u64)?;
        read_chain(&self.layers, resolver, buf, offset, wait)
            .map_err(|e| StoreError::io("reading", "snapshot", e))
    }

    /// How `offset..offset+len` reads, as [`VolumeHandle::allocation`].
    pub fn allocation(&self, offset: u64, len: u64) -> Result<Vec<(u64, Allocation)>> {
        let resolver = self.check(offset, len)?;
        Ok(allocation_chain(&self.layers, resolver, offset, len))
    }
}
