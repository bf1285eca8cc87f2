//! Fast block resolution through the sealed part of a chain.
//!
//! Resolving a block means asking each layer, newest first, whether it
//! defines the block. With dozens of sealed layers that is dozens of map
//! lookups (and lock-word cache-line traffic) per read. A [`Resolver`] answers
//! for all sealed layers at once: per 64 Ki-block container of the volume it
//! records either that no sealed layer has a block there, that exactly one
//! layer does (then only that layer is asked), or a dense byte per block
//! naming the layer that defines it and whether it is zeros — with, while
//! the resolver's memory stays under [`SLOT_BUDGET`], the slot of each data
//! block, so a read asks no layer at all.
//!
//! Invariant: a resolver is valid while its chain is unchanged. Sealed layers
//! change only by merges. A merge copies a parent's blocks into its child
//! without changing what any block reads (or any slot a block already has).
//! An absorb goes the other way: a small sealed child's blocks into its
//! parent, whose snapshot was deleted; it may overwrite the parent's own
//! copy of a block in place, but only where the child defines the block,
//! so every chain through the child still reads the child's (and a resolver
//! names the child there). Either way a resolver built before or during the
//! copy stays correct until the commit changes the chain — and every chain
//! change drops the resolver. A reader still holding the deleted snapshot
//! itself (its export open as it is deleted) would see an absorbed block's
//! new bytes, so there is no absorb while one does (`Layer::hold_reader`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::layer::journal::AllocMap;
use crate::layer::{BlockState, Layer};

/// Blocks per container: the high 16 bits of a block index pick one.
const CONTAINER_BITS: u32 = 16;
const CONTAINER_BLOCKS: usize = 1 << CONTAINER_BITS;
/// Marks a block that reads as zeros in a dense container entry.
const ZERO_BIT: u8 = 0x80;
/// A dense entry stores the layer index + 1 in 7 bits.
const MAX_LAYERS: usize = 127;
/// Below this many sealed layers, asking each one is as fast.
const MIN_SEALED: usize = 2;
/// Most bytes all resolvers together spend on slots (4 per block of a
/// dense container); past it, reads ask the layer for the slot.
pub(crate) const SLOT_BUDGET: usize = 256 << 20;
/// Bytes of slots held by live resolvers.
static SLOT_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Takes `n` bytes of the slot budget, if that many are left.
fn take_slot_bytes(n: usize) -> bool {
    SLOT_BYTES
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
            (used + n <= SLOT_BUDGET).then_some(used + n)
        })
        .is_ok()
}

#[derive(Debug)]
enum Slot {
    Empty,
    One(usize),
    Dense {
        tags: Box<[u8]>,
        slots: Option<Box<[u32]>>,
    },
}

/// Which sealed layer defines each block, for `layers[first..]` of one chain.
#[derive(Debug)]
pub(crate) struct Resolver {
    first: usize,
    slots: Vec<Slot>,
    /// Bytes of the slot budget this resolver holds.
    slot_bytes: usize,
}

impl Drop for Resolver {
    fn drop(&mut self) {
        SLOT_BYTES.fetch_sub(self.slot_bytes, Ordering::Relaxed);
    }
}

impl Resolver {
    /// Builds the resolver for `layers[first..]`, or `None` when the sealed
    /// part is too short to gain anything (or too long for a byte per block).
    pub fn build(layers: &[Arc<Layer>], first: usize, size: u64) -> Option<Resolver> {
        let sealed = layers.len().checked_sub(first)?;
        if !(MIN_SEALED..=MAX_LAYERS).contains(&sealed) {
            return None;
        }
        let blocks = size.div_ceil(crate::BLOCK_SIZE);
        let containers = blocks.div_ceil(CONTAINER_BLOCKS as u64) as usize;
        let mut holders: Vec<Vec<usize>> = vec![Vec::new(); containers];
        for (i, layer) in layers.iter().enumerate().skip(first) {
            layer.with_map(|m| {
                if m.present.is_empty() {
                    return;
                }
                for (c, h) in holders.iter_mut().enumerate() {
                    if m.present.range_cardinality(container_range(c)) > 0 {
                        h.push(i);
                    }
                }
            });
        }
        let mut slot_bytes = 0;
        let slots = holders
            .into_iter()
            .enumerate()
            .map(|(c, h)| match h.as_slice() {
                [] => Slot::Empty,
                [only] => Slot::One(*only),
                _ => {
                    let mut tags = vec![0u8; CONTAINER_BLOCKS].into_boxed_slice();
                    let bytes = CONTAINER_BLOCKS * 4;
                    let mut slots = take_slot_bytes(bytes).then(|| {
                        slot_bytes += bytes;
                        vec![0u32; CONTAINER_BLOCKS].into_boxed_slice()
                    });
                    // Oldest first, so newer layers overwrite.
                    let lo = (c << CONTAINER_BITS) as u32;
                    for &i in h.iter().rev() {
                        let tag = (i - first + 1) as u8;
                        layers[i].with_map(|m| {
                            for b in m.present.range(container_range(c)) {
                                tags[(b - lo) as usize] = tag;
                            }
                            for b in m.zeroed.range(container_range(c)) {
                                tags[(b - lo) as usize] = tag | ZERO_BIT;
                            }
                            if let Some(slots) = slots.as_mut() {
                                fill_slots(m, c, slots);
                            }
                        });
                    }
                    Slot::Dense { tags, slots }
                }
            })
            .collect();
        Some(Resolver {
            first,
            slots,
            slot_bytes,
        })
    }

    /// Index of the first layer this resolver covers.
    pub fn first(&self) -> usize {
        self.first
    }

    /// Which sealed layer block `block` comes from, in what form (the
    /// slot, if this resolver holds it), and for how many blocks from it on
    /// (at least 1, at most `max`) that holds: the same layer and form, and
    /// for data consecutive slots. `None` past the end of the volume.
    pub fn lookup_run(
        &self,
        layers: &[Arc<Layer>],
        block: u32,
        max: u32,
    ) -> Option<(usize, BlockState, Option<u32>, u32)> {
        let at = block as usize & (CONTAINER_BLOCKS - 1);
        // Runs end at the container's end.
        let max = (max.max(1) as usize).min(CONTAINER_BLOCKS - at) as u32;
        let absent = |n| (layers.len(), BlockState::Absent, None, n);
        Some(match self.slots.get((block >> CONTAINER_BITS) as usize)? {
            Slot::Empty => absent(max),
            Slot::One(i) => match layers[*i].lookup_run(block, max) {
                (BlockState::Absent, _, n) => absent(n),
                (st, slot, n) => (*i, st, slot, n),
            },
            Slot::Dense { tags, slots } => {
                let tag = tags[at];
                let same = tags[at..at + max as usize]
                    .iter()
                    .take_while(|&&t| t == tag)
                    .count();
                let layer = self.first + (tag & !ZERO_BIT) as usize;
                match (tag, slots) {
                    (0, _) => absent(same as u32),
                    (t, _) if t & ZERO_BIT != 0 => (layer - 1, BlockState::Zero, None, same as u32),
                    (_, Some(slots)) => {
                        let first = slots[at];
                        let n = slots[at..at + same]
                            .iter()
                            .enumerate()
                            .take_while(|&(k, &s)| first.checked_add(k as u32) == Some(s))
                            .count();
                        (layer - 1, BlockState::Data, Some(first), n as u32)
                    }
                    (_, None) => (layer - 1, BlockState::Data, None, same as u32),
                }
            }
        })
    }

    /// Which sealed layer block `block` comes from and in what form (with
    /// its slot, if this resolver holds it).
    #[cfg(test)]
    pub fn lookup(
        &self,
        layers: &[Arc<Layer>],
        block: u32,
    ) -> Option<(usize, BlockState, Option<u32>)> {
        self.lookup_run(layers, block, 1)
            .map(|(layer, st, slot, _)| (layer, st, slot))
    }
}

/// Writes the slot of every data block of container `c` held by `m`.
fn fill_slots(m: &AllocMap, c: usize, slots: &mut [u32]) {
    let lo = (c << CONTAINER_BITS) as u64;
    for e in m.slots.extents_in(lo, lo + CONTAINER_BLOCKS as u64) {
        for i in 0..e.len {
            slots[(u64::from(e.block + i) - lo) as usize] = e.slot + i;
        }
    }
}

fn container_range(c: usize) -> std::ops::RangeInclusive<u32> {
    let lo = (c << CONTAINER_BITS) as u32;
    lo..=lo | (CONTAINER_BLOCKS as u32 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{MemStorage, Storage};
    use crate::types::LayerId;

    #[test]
    fn resolver_agrees_with_asking_each_layer() {
        let storage: Arc<dyn Storage> = MemStorage::new();
        let blocks: u32 = 3 * CONTAINER_BLOCKS as u32 + 100;
        let size = u64::from(blocks) * crate::BLOCK_SIZE;
        let mut rng = 42u64;
        let mut next = || {
            rng = crate::storage::splitmix_for_tests(rng);
            rng
        };
        let layers: Vec<Arc<Layer>> = (0..6)
            .map(|i| {
                let l = Layer::create(&storage, LayerId(i)).unwrap();
                for _ in 0..2000 {
                    // clustered in container 0 and 2 (mixed), container 1 only in layer 3
                    let c = [0u32, 2, 3][(next() % 3) as usize];
                    let c = if i == 3 && next() % 4 == 0 { 1 } else { c };
                    let b = (c << CONTAINER_BITS) + (next() % 200) as u32;
                    if b >= blocks {
                        continue;
                    }
                    // Some runs of blocks, in consecutive slots, crossing
                    // into the next container at times.
                    let n = match next() % 8 {
                        0 => 1 + (next() % 40) as u32,
                        _ => 1,
                    }
                    .min(blocks - b);
                    if next() % 5 == 0 {
                        l.zero_blocks(b, n);
                    } else {
                        let buf = vec![0u8; n as usize * crate::types::BLOCK];
                        l.write_blocks(b, &buf).unwrap();
                    }
                }
                Arc::new(l)
            })
            .collect();
        for first in 0..3 {
            let r = Resolver::build(&layers, first, size).unwrap();
            let slow = |b: u32| {
                layers[first..]
                    .iter()
                    .enumerate()
                    .find_map(|(i, l)| match l.lookup(b) {
                        (BlockState::Absent, _) => None,
                        (st, run) => Some((i + first, st, run.map(|(s, _)| s))),
                    })
                    .unwrap_or((layers.len(), BlockState::Absent, None))
            };
            let mut long_runs = 0;
            for b in 0..blocks {
                assert_eq!(
                    r.lookup(&layers, b),
                    Some(slow(b)),
                    "block {b} first {first}"
                );
                // Every block of a run comes the same way, the slots in turn
                // (checked where the layers hold blocks, and here and there).
                if (b as usize & (CONTAINER_BLOCKS - 1)) >= 260 && b % 97 != 0 {
                    continue;
                }
                for max in [1, 9, 300] {
                    let (layer, st, slot, n) = r.lookup_run(&layers, b, max).unwrap();
                    assert!((1..=max).contains(&n), "block {b} max {max} run {n}");
                    long_runs += usize::from(n > 8);
                    for k in 0..n {
                        let want = (layer, st, slot.map(|s| s + k));
                        assert_eq!(slow(b + k), want, "block {b}+{k} max {max} first {first}");
                    }
                }
            }
            assert!(long_runs > 100, "runs of many blocks: {long_runs}");
            assert_eq!(r.lookup(&layers, blocks + CONTAINER_BLOCKS as u32), None);
        }
        assert!(Resolver::build(&layers, 5, size).is_none());
    }
}
