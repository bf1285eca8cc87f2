//! Where a layer keeps each block's data: a map from block to *slot*, the
//! 4 KiB place `slot * 4096` in the layer's data file, held as extents.
//!
//! A layer's data file is packed: a block written for the first time takes
//! the next free slot, so blocks written one after another sit side by side
//! whatever their place in the volume. Extents keep sequential writes to one
//! map entry; random writes cost one entry per run.
//!
//! This module does no I/O.

use std::collections::BTreeMap;

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

/// Block → slot, as non-overlapping extents keyed by their first block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotMap {
    runs: BTreeMap<u32, (u32, u32)>,
}

impl SlotMap {
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Number of extents (not blocks).
    pub fn extents(&self) -> usize {
        self.runs.len()
    }

    /// Every extent, by block.
    pub fn iter(&self) -> impl Iterator<Item = Extent> + '_ {
        self.runs
            .iter()
            .map(|(&block, &(slot, len))| Extent { block, slot, len })
    }

    /// The extents starting at `block` or later, by block.
    pub fn iter_from(&self, block: u32) -> impl Iterator<Item = Extent> + '_ {
        self.runs
            .range(block..)
            .map(|(&block, &(slot, len))| Extent { block, slot, len })
    }

    /// The slot holding `block`, and how many blocks from it on sit in the
    /// slots that follow (at least 1).
    pub fn run_at(&self, block: u32) -> Option<(u32, u32)> {
        let (&start, &(slot, len)) = self.runs.range(..=block).next_back()?;
        let off = block - start;
        (off < len).then(|| (slot + off, len - off))
    }

    /// The slot holding `block`.
    pub fn get(&self, block: u32) -> Option<u32> {
        self.run_at(block).map(|(slot, _)| slot)
    }

    /// Forgets the mappings of `len` blocks from `block`; returns them.
    pub fn remove(&mut self, block: u32, len: u32) -> Vec<Extent> {
        let end = u64::from(block) + u64::from(len);
        let mut removed = Vec::new();
        if len == 0 {
            return removed;
        }
        // An extent starting before `block` that reaches into the range.
        if let Some((&start, &(slot, n))) = self.runs.range(..block).next_back() {
            let e = Extent {
                block: start,
                slot,
                len: n,
            };
            if e.block_end() > u64::from(block) {
                let head = block - start;
                self.runs.insert(start, (slot, head));
                let cut_end = e.block_end().min(end);
                removed.push(Extent {
                    block,
                    slot: slot + head,
                    len: (cut_end - u64::from(block)) as u32,
                });
                if e.block_end() > end {
                    let skip = (end - u64::from(start)) as u32;
                    self.runs.insert(end as u32, (slot + skip, n - skip));
                }
            }
        }
        // Extents starting inside the range.
        let inside: Vec<u32> = self
            .runs
            .range(block..)
            .take_while(|(s, _)| u64::from(**s) < end)
            .map(|(s, _)| *s)
            .collect();
        for start in inside {
            let (slot, n) = self.runs.remove(&start).expect("listed just now");
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
                self.runs
                    .insert(end as u32, (slot + keep_from, n - keep_from));
            } else {
                removed.push(e);
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
        if e.len == 0 {
            return Vec::new();
        }
        // The extent starting last at or before the new one's last block:
        // when it ends before the new one starts, nothing is replaced (the
        // common case, one lookup) and it is the one to join.
        let last = e.block + (e.len - 1);
        let replaced = match self.runs.range(..=last).next_back() {
            Some((&s, &(_, n))) if u64::from(s) + u64::from(n) > u64::from(e.block) => {
                self.remove(e.block, e.len)
            }
            _ => Vec::new(),
        };
        let (mut block, mut slot, mut len) = (e.block, e.slot, e.len);
        // Join the extent before, when both blocks and slots continue it.
        if let Some((&pb, &(ps, pl))) = self.runs.range(..block).next_back()
            && u64::from(pb) + u64::from(pl) == u64::from(block)
            && u64::from(ps) + u64::from(pl) == u64::from(slot)
            && u64::from(pl) + u64::from(len) <= u64::from(u32::MAX)
        {
            block = pb;
            slot = ps;
            len += pl;
        }
        // And the one after.
        let end = u64::from(block) + u64::from(len);
        if end < 1 << 32
            && let Some(&(ns, nl)) = self.runs.get(&(end as u32))
            && u64::from(slot) + u64::from(len) == u64::from(ns)
            && u64::from(len) + u64::from(nl) <= u64::from(u32::MAX)
        {
            self.runs.remove(&(end as u32));
            len += nl;
        }
        self.runs.insert(block, (slot, len));
        replaced
    }

    /// One past the highest slot in use (0 when empty).
    pub fn slot_end(&self) -> u64 {
        self.runs
            .values()
            .map(|&(slot, len)| u64::from(slot) + u64::from(len))
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
                let joinable = p.block_end() == u64::from(e.block)
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
