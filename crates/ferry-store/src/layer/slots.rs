//! Where a layer keeps each block's data: a map from block to *slot*, the
//! 4 KiB place `slot * 4096` in the layer's data file.
//!
//! A layer's data file is packed: a block written for the first time takes
//! the next free slot, so blocks written one after another sit side by side
//! whatever their place in the volume.
//!
//! The map is cut in chunks of 64 Ki blocks (256 MiB of volume). A chunk
//! holds extents in a B-tree while it has few (a sequential fill is one
//! extent), and a slot per block once it has many (random 4 KiB writes: one
//! extent each, ~23 bytes in the B-tree against 4 in the array). Extents never
//! cross a chunk's end; [`SlotMap::iter`] yields each chunk's mapping as the
//! longest extents it can, so two maps with the same mapping iterate alike.
//!
//! This module does no I/O.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

/// `len` blocks from `block` held in the slots from `slot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub block: u32,
    pub slot: u32,
    pub len: u32,
}

impl Extent {
    fn block_end(&self) -> u64 {
        u64::from(self.block) + u64::from(self.len)
    }
}

const CHUNK_BITS: u32 = 16;
const CHUNK_BLOCKS: u64 = 1 << CHUNK_BITS;
/// A chunk with more extents than this switches to a slot per block
/// (lowered by tests through [`set_dense_from_for_tests`]).
const DENSE_FROM: usize = 8192;
static DENSE_AT: AtomicUsize = AtomicUsize::new(DENSE_FROM);

/// Makes chunks of every slot map in this process turn dense past `n`
/// extents, so tests with small volumes take the dense paths.
#[doc(hidden)]
pub fn set_dense_from_for_tests(n: usize) {
    DENSE_AT.store(n.max(1), Ordering::Relaxed);
}
/// Longest run [`SlotMap::run_at`] reports from a dense chunk (callers
/// ask again for the rest).
const DENSE_RUN_CAP: u32 = 1024;

#[derive(Clone, Debug)]
enum Chunk {
    /// Extents keyed by first block (absolute), within the chunk.
    Runs(BTreeMap<u32, (u32, u32)>),
    /// The slot of every block of the chunk; `has` marks the mapped ones.
    Dense {
        slot: Box<[u32]>,
        has: Box<[u64]>,
        mapped: u32,
    },
}

/// Block → slot.
#[derive(Clone, Debug, Default)]
pub struct SlotMap {
    chunks: BTreeMap<u32, Chunk>,
}

impl PartialEq for SlotMap {
    /// The same mapping, whatever the representation.
    fn eq(&self, other: &SlotMap) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for SlotMap {}

fn chunk_of(block: u64) -> u32 {
    (block >> CHUNK_BITS) as u32
}

fn chunk_start(c: u32) -> u64 {
    u64::from(c) << CHUNK_BITS
}

/// Cuts `block..block+len` at chunk ends: `(chunk, first, len)` pieces.
fn pieces(block: u32, len: u32) -> impl Iterator<Item = (u32, u32, u32)> {
    let end = u64::from(block) + u64::from(len);
    let mut at = u64::from(block);
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let c = chunk_of(at);
        let to = end.min(chunk_start(c) + CHUNK_BLOCKS);
        let piece = (c, at as u32, (to - at) as u32);
        at = to;
        Some(piece)
    })
}

impl Chunk {
    fn is_empty(&self) -> bool {
        match self {
            Chunk::Runs(r) => r.is_empty(),
            Chunk::Dense { mapped, .. } => *mapped == 0,
        }
    }

    fn run_at(&self, block: u32) -> Option<(u32, u32)> {
        match self {
            Chunk::Runs(r) => runs_run_at(r, block),
            Chunk::Dense { slot, has, .. } => {
                let off = (u64::from(block) % CHUNK_BLOCKS) as usize;
                if !bit(has, off) {
                    return None;
                }
                let s = slot[off];
                let mut n = 1u32;
                while (off + n as usize) < CHUNK_BLOCKS as usize
                    && n < DENSE_RUN_CAP
                    && bit(has, off + n as usize)
                    && s.checked_add(n) == Some(slot[off + n as usize])
                {
                    n += 1;
                }
                Some((s, n))
            }
        }
    }

    /// Removes the mappings of `first..first+len` (inside this chunk).
    fn remove(&mut self, first: u32, len: u32, removed: &mut Vec<Extent>) {
        match self {
            Chunk::Runs(r) => runs_remove(r, first, len, removed),
            Chunk::Dense { slot, has, mapped } => {
                let lo = chunk_start(chunk_of(u64::from(first)));
                for b in u64::from(first)..u64::from(first) + u64::from(len) {
                    let off = (b - lo) as usize;
                    if bit(has, off) {
                        clear_bit(has, off);
                        *mapped -= 1;
                        push_joined(
                            removed,
                            Extent {
                                block: b as u32,
                                slot: slot[off],
                                len: 1,
                            },
                        );
                    }
                }
            }
        }
    }

    /// Maps `e` (inside this chunk); the replaced mappings go to `replaced`.
    fn insert(&mut self, e: Extent, replaced: &mut Vec<Extent>) {
        match self {
            Chunk::Runs(r) => {
                runs_insert(r, e, replaced);
                if r.len() > DENSE_AT.load(Ordering::Relaxed) {
                    *self = Chunk::dense_from(r);
                }
            }
            Chunk::Dense { slot, has, mapped } => {
                let lo = chunk_start(chunk_of(u64::from(e.block)));
                for i in 0..e.len {
                    let off = (u64::from(e.block + i) - lo) as usize;
                    if bit(has, off) {
                        push_joined(
                            replaced,
                            Extent {
                                block: e.block + i,
                                slot: slot[off],
                                len: 1,
                            },
                        );
                    } else {
                        set_bit(has, off);
                        *mapped += 1;
                    }
                    slot[off] = e.slot + i;
                }
            }
        }
    }

    fn dense_from(r: &BTreeMap<u32, (u32, u32)>) -> Chunk {
        let mut slot = vec![0u32; CHUNK_BLOCKS as usize].into_boxed_slice();
        let mut has = vec![0u64; CHUNK_BLOCKS as usize / 64].into_boxed_slice();
        let mut mapped = 0;
        for (&b, &(s, n)) in r {
            let lo = chunk_start(chunk_of(u64::from(b)));
            for i in 0..n {
                let off = (u64::from(b + i) - lo) as usize;
                slot[off] = s + i;
                set_bit(&mut has, off);
                mapped += 1;
            }
        }
        Chunk::Dense { slot, has, mapped }
    }

    /// The chunk's mapping as the longest extents, by block.
    fn extents(&self, c: u32, out: &mut Vec<Extent>) {
        match self {
            Chunk::Runs(r) => {
                for (&block, &(slot, len)) in r {
                    push_joined(out, Extent { block, slot, len });
                }
            }
            Chunk::Dense { slot, has, .. } => {
                let lo = chunk_start(c);
                for (w, &word) in has.iter().enumerate() {
                    let mut bits = word;
                    while bits != 0 {
                        let off = w * 64 + bits.trailing_zeros() as usize;
                        bits &= bits - 1;
                        push_joined(
                            out,
                            Extent {
                                block: (lo + off as u64) as u32,
                                slot: slot[off],
                                len: 1,
                            },
                        );
                    }
                }
            }
        }
    }

    /// The first mapped block at or after `block` in this chunk.
    fn next_mapped(&self, block: u32) -> Option<u32> {
        match self {
            Chunk::Runs(r) => {
                if runs_run_at(r, block).is_some() {
                    return Some(block);
                }
                r.range(block..).next().map(|(&b, _)| b)
            }
            Chunk::Dense { has, .. } => {
                let lo = chunk_start(chunk_of(u64::from(block)));
                let mut off = (u64::from(block) - lo) as usize;
                while off < CHUNK_BLOCKS as usize {
                    let word = has[off / 64] >> (off % 64);
                    if word != 0 {
                        return Some((lo + (off + word.trailing_zeros() as usize) as u64) as u32);
                    }
                    off = (off / 64 + 1) * 64;
                }
                None
            }
        }
    }
}

fn bit(has: &[u64], off: usize) -> bool {
    has[off / 64] & (1 << (off % 64)) != 0
}

fn set_bit(has: &mut [u64], off: usize) {
    has[off / 64] |= 1 << (off % 64);
}

fn clear_bit(has: &mut [u64], off: usize) {
    has[off / 64] &= !(1 << (off % 64));
}

/// Appends `e`, joining it to the last extent when blocks and slots continue
/// it (and the length still fits).
fn push_joined(out: &mut Vec<Extent>, e: Extent) {
    if let Some(last) = out.last_mut()
        && last.block_end() == u64::from(e.block)
        && u64::from(last.slot) + u64::from(last.len) == u64::from(e.slot)
        && u64::from(last.len) + u64::from(e.len) <= u64::from(u32::MAX)
    {
        last.len += e.len;
        return;
    }
    out.push(e);
}

fn runs_run_at(runs: &BTreeMap<u32, (u32, u32)>, block: u32) -> Option<(u32, u32)> {
    let (&start, &(slot, len)) = runs.range(..=block).next_back()?;
    let off = block - start;
    (off < len).then(|| (slot + off, len - off))
}

fn runs_remove(
    runs: &mut BTreeMap<u32, (u32, u32)>,
    block: u32,
    len: u32,
    removed: &mut Vec<Extent>,
) {
    let end = u64::from(block) + u64::from(len);
    // An extent starting before `block` that reaches into the range.
    if let Some((&start, &(slot, n))) = runs.range(..block).next_back() {
        let e = Extent {
            block: start,
            slot,
            len: n,
        };
        if e.block_end() > u64::from(block) {
            let head = block - start;
            runs.insert(start, (slot, head));
            let cut_end = e.block_end().min(end);
            removed.push(Extent {
                block,
                slot: slot + head,
                len: (cut_end - u64::from(block)) as u32,
            });
            if e.block_end() > end {
                let skip = (end - u64::from(start)) as u32;
                runs.insert(end as u32, (slot + skip, n - skip));
            }
        }
    }
    // Extents starting inside the range.
    let inside: Vec<u32> = runs
        .range(block..)
        .take_while(|(s, _)| u64::from(**s) < end)
        .map(|(s, _)| *s)
        .collect();
    for start in inside {
        let (slot, n) = runs.remove(&start).expect("listed just now");
        let e = Extent {
            block: start,
            slot,
            len: n,
        };
        if e.block_end() > end {
            let keep_from = (end - u64::from(start)) as u32;
            removed.push(Extent {
                block: start,
                slot,
                len: keep_from,
            });
            runs.insert(end as u32, (slot + keep_from, n - keep_from));
        } else {
            removed.push(e);
        }
    }
}

fn runs_insert(runs: &mut BTreeMap<u32, (u32, u32)>, e: Extent, replaced: &mut Vec<Extent>) {
    // The extent starting last at or before the new one's last block: when
    // it ends before the new one starts, nothing is replaced (the common
    // case, one lookup).
    let last = e.block + (e.len - 1);
    if let Some((&s, &(_, n))) = runs.range(..=last).next_back()
        && u64::from(s) + u64::from(n) > u64::from(e.block)
    {
        runs_remove(runs, e.block, e.len, replaced);
    }
    let (mut block, mut slot, mut len) = (e.block, e.slot, e.len);
    let chunk_end = chunk_start(chunk_of(u64::from(block))) + CHUNK_BLOCKS;
    // Join the extent before, when both blocks and slots continue it.
    if let Some((&pb, &(ps, pl))) = runs.range(..block).next_back()
        && u64::from(pb) + u64::from(pl) == u64::from(block)
        && u64::from(ps) + u64::from(pl) == u64::from(slot)
    {
        block = pb;
        slot = ps;
        len += pl;
    }
    // And the one after (within the chunk).
    let end = u64::from(block) + u64::from(len);
    if end < chunk_end
        && let Some(&(ns, nl)) = runs.get(&(end as u32))
        && u64::from(slot) + u64::from(len) == u64::from(ns)
    {
        runs.remove(&(end as u32));
        len += nl;
    }
    runs.insert(block, (slot, len));
}

impl SlotMap {
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Number of extents [`iter`](Self::iter) yields.
    pub fn extents(&self) -> usize {
        self.iter().count()
    }

    /// Every mapping as extents by block, each as long as it can be within
    /// its chunk.
    pub fn iter(&self) -> impl Iterator<Item = Extent> + '_ {
        self.chunks.iter().flat_map(|(&c, chunk)| {
            let mut out = Vec::new();
            chunk.extents(c, &mut out);
            out
        })
    }

    /// The extents of `lo..hi` (clipped to it), by block.
    pub fn extents_in(&self, lo: u64, hi: u64) -> Vec<Extent> {
        let mut out = Vec::new();
        if lo >= hi {
            return out;
        }
        for (&c, chunk) in self.chunks.range(chunk_of(lo)..=chunk_of(hi - 1)) {
            let mut all = Vec::new();
            chunk.extents(c, &mut all);
            for e in all {
                let from = u64::from(e.block).max(lo);
                let to = e.block_end().min(hi);
                if from < to {
                    out.push(Extent {
                        block: from as u32,
                        slot: e.slot + (from - u64::from(e.block)) as u32,
                        len: (to - from) as u32,
                    });
                }
            }
        }
        out
    }

    /// The first mapped block at or after `block`.
    pub fn next_mapped(&self, block: u32) -> Option<u32> {
        let mut from = block;
        for (&c, chunk) in self.chunks.range(chunk_of(u64::from(block))..) {
            let start = from.max(chunk_start(c) as u32);
            if let Some(b) = chunk.next_mapped(start) {
                return Some(b);
            }
            from = start;
        }
        None
    }

    /// The slot holding `block`, and how many blocks from it on sit in the
    /// slots that follow (at least 1; a run may be reported in parts).
    pub fn run_at(&self, block: u32) -> Option<(u32, u32)> {
        self.chunks.get(&chunk_of(u64::from(block)))?.run_at(block)
    }

    /// The slot holding `block`.
    pub fn get(&self, block: u32) -> Option<u32> {
        self.run_at(block).map(|(slot, _)| slot)
    }

    /// Forgets the mappings of `len` blocks from `block`; returns them.
    pub fn remove(&mut self, block: u32, len: u32) -> Vec<Extent> {
        let mut removed = Vec::new();
        for (c, first, n) in pieces(block, len) {
            if let Some(chunk) = self.chunks.get_mut(&c) {
                chunk.remove(first, n, &mut removed);
                if chunk.is_empty() {
                    self.chunks.remove(&c);
                }
            }
        }
        removed
    }

    /// Maps `e.len` blocks from `e.block` to the slots from `e.slot`,
    /// replacing what they mapped to; returns the replaced mappings.
    ///
    /// # Panics
    /// When the extent runs past block or slot 2³² − 1.
    pub fn insert(&mut self, e: Extent) -> Vec<Extent> {
        assert!(
            e.block_end() <= 1 << 32 && u64::from(e.slot) + u64::from(e.len) <= 1 << 32,
            "extent {e:?} out of range"
        );
        let mut replaced = Vec::new();
        for (c, first, n) in pieces(e.block, e.len) {
            let piece = Extent {
                block: first,
                slot: e.slot + (first - e.block),
                len: n,
            };
            self.chunks
                .entry(c)
                .or_insert_with(|| Chunk::Runs(BTreeMap::new()))
                .insert(piece, &mut replaced);
        }
        replaced
    }

    /// One past the highest slot in use (0 when empty).
    pub fn slot_end(&self) -> u64 {
        self.iter()
            .map(|e| u64::from(e.slot) + u64::from(e.len))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap as Model;

    fn ext(block: u32, slot: u32, len: u32) -> Extent {
        Extent { block, slot, len }
    }

    fn flat(m: &SlotMap) -> Model<u32, u32> {
        m.iter()
            .flat_map(|e| (0..e.len).map(move |i| (e.block + i, e.slot + i)))
            .collect()
    }

    fn check_shape(m: &SlotMap) {
        let mut prev: Option<Extent> = None;
        for e in m.iter() {
            assert!(e.len > 0);
            if let Some(p) = prev {
                assert!(p.block_end() <= u64::from(e.block), "{p:?} overlaps {e:?}");
                // Extents end at chunk boundaries.
                let joinable = p.block_end() == u64::from(e.block)
                    && u64::from(e.block) % CHUNK_BLOCKS != 0
                    && u64::from(p.slot) + u64::from(p.len) == u64::from(e.slot);
                assert!(!joinable, "{p:?} and {e:?} should be one extent");
            }
            prev = Some(e);
        }
    }

    #[test]
    fn sequential_writes_are_one_extent() {
        let mut m = SlotMap::default();
        for b in 0..100 {
            assert!(m.insert(ext(b, b + 7, 1)).is_empty());
        }
        assert_eq!(m.extents(), 1);
        assert_eq!(m.run_at(10), Some((17, 90)));
        assert_eq!(m.get(100), None);
        assert_eq!(m.slot_end(), 107);
    }

    #[test]
    fn remove_and_replace_split_extents() {
        let mut m = SlotMap::default();
        m.insert(ext(10, 0, 10));
        assert_eq!(m.remove(12, 3), vec![ext(12, 2, 3)]);
        assert_eq!(m.get(11), Some(1));
        assert_eq!(m.get(12), None);
        assert_eq!(m.get(15), Some(5));
        assert_eq!(m.insert(ext(8, 50, 4)), vec![ext(10, 0, 2)]);
        assert_eq!(m.get(9), Some(51));
        assert_eq!(m.get(10), Some(52));
        check_shape(&m);
    }

    #[test]
    fn edges_of_the_block_space() {
        let mut m = SlotMap::default();
        m.insert(ext(u32::MAX - 3, 0, 4));
        assert_eq!(m.get(u32::MAX), Some(3));
        assert_eq!(m.remove(u32::MAX - 1, 2), vec![ext(u32::MAX - 1, 2, 2)]);
        assert_eq!(m.get(u32::MAX - 2), Some(1));
    }

    /// Enough scattered blocks around a chunk boundary that chunks turn
    /// dense; every query agrees with a per-block model throughout.
    #[test]
    fn dense_chunks_agree_with_the_model() {
        // Other tests may run meanwhile: the representation changes, not
        // what any query answers.
        set_dense_from_for_tests(512);
        let mut rng = 11u64;
        let mut next = move |n: u64| {
            rng = crate::storage::splitmix_for_tests(rng);
            rng % n
        };
        let (mut m, mut model) = (SlotMap::default(), Model::new());
        let base = CHUNK_BLOCKS as u32 - 12_000;
        let span = 24_000u64;
        let mut slot = 0u32;
        for round in 0..40_000u32 {
            let block = base + next(span) as u32;
            if next(8) == 0 {
                let len = 1 + next(300) as u32;
                m.remove(block, len);
                for b in block..block + len {
                    model.remove(&b);
                }
            } else {
                let len = 1 + next(3) as u32;
                m.insert(ext(block, slot, len));
                for i in 0..len {
                    model.insert(block + i, slot + i);
                }
                slot += len + next(2) as u32;
            }
            if round % 5000 == 4999 {
                check_shape(&m);
                assert_eq!(flat(&m), model);
                for _ in 0..2000 {
                    let b = base + next(span + 10) as u32;
                    match m.run_at(b) {
                        Some((s, n)) => {
                            for k in 0..n {
                                assert_eq!(model.get(&(b + k)), Some(&(s + k)), "run at {b}");
                            }
                        }
                        None => assert_eq!(model.get(&b), None),
                    }
                    let want = model.range(b..).next().map(|(k, _)| *k);
                    assert_eq!(m.next_mapped(b), want, "next mapped from {b}");
                }
                let (lo, hi) = (u64::from(base) + 100, u64::from(base) + 5000);
                let got: Model<u32, u32> = m
                    .extents_in(lo, hi)
                    .iter()
                    .flat_map(|e| (0..e.len).map(move |i| (e.block + i, e.slot + i)))
                    .collect();
                let want: Model<u32, u32> = model
                    .range(lo as u32..hi as u32)
                    .map(|(k, v)| (*k, *v))
                    .collect();
                assert_eq!(got, want);
            }
        }
        assert!(
            m.chunks.values().any(|c| matches!(c, Chunk::Dense { .. })),
            "no chunk turned dense"
        );
        // Equality is by mapping: the same mapping built in one piece.
        let mut again = SlotMap::default();
        for (b, s) in &model {
            again.insert(ext(*b, *s, 1));
        }
        assert_eq!(again, m);
    }

    #[test]
    fn agrees_with_a_per_block_model() {
        let mut rng = 7u64;
        let mut next = move |n: u32| {
            rng = crate::storage::splitmix_for_tests(rng);
            (rng % u64::from(n)) as u32
        };
        for _ in 0..50 {
            let (mut m, mut model) = (SlotMap::default(), Model::new());
            let mut slot = 0u32;
            for _ in 0..300 {
                let block = next(200);
                let len = 1 + next(12);
                if next(3) == 0 {
                    let got = m.remove(block, len);
                    let mut want = Vec::new();
                    for b in block..block + len {
                        if let Some(s) = model.remove(&b) {
                            want.push((b, s));
                        }
                    }
                    let got: Vec<_> = got
                        .iter()
                        .flat_map(|e| (0..e.len).map(move |i| (e.block + i, e.slot + i)))
                        .collect();
                    assert_eq!(got, want);
                } else {
                    // Sometimes continue the last slots, to exercise joins.
                    let s = if next(2) == 0 { slot } else { slot + next(3) };
                    m.insert(ext(block, s, len));
                    for i in 0..len {
                        model.insert(block + i, s + i);
                    }
                    slot = s + len;
                }
                check_shape(&m);
                assert_eq!(flat(&m), model);
            }
        }
    }
}
