//! Model-based property test: random sequences of engine operations, checked
//! against a plain in-memory model.
//!
//! The model keeps every live volume and every snapshot as a byte vector, and
//! the ancestry of layers as a tree of model ids (a seal starts a new head over
//! the sealed one, a clone a new head over a snapshot's, a sync over the source
//! snapshot's), which is exactly what decides whether a diff is defined.
//! Operations: full-block and byte-granular writes (across block boundaries
//! too), write_zeroes, trim, flushes, group and volume snapshots, group and
//! volume clones, sync, snapshot and volume deletion (which merges layers),
//! grow, clean close and reopen, and a crash right after `flush_all` (when the
//! model is still exact). Reads, snapshot reads and diffs are compared with
//! the model; refused requests must be refused with the right error and change
//! nothing.
//!
//! Written data comes from a per-write sequence number, not from the strategy,
//! so cases stay small and shrink fast. `PROPTEST_CASES` sets the case count;
//! failures are saved to `proptest-regressions/model.txt` and replayed first.

use ferry_store::storage::MemStorage;
use ferry_store::{DiffEnd, SnapshotKind, Store, StoreError, Target, VolumeHandle};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{FileFailurePersistence, TestCaseError};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Display;
use std::sync::Arc;

const BS: usize = 4096;
/// Volumes never grow past this many blocks, to keep cases fast.
const MAX_BLOCKS: usize = 96;
/// The slots of the first group, and so of every clone of it.
const SLOTS: [&str; 2] = ["a", "b"];

type TestResult<T = ()> = Result<T, TestCaseError>;

/// A block chosen independently of the volume's size: half the time one of
/// the first few, so that writes, zeroes and snapshots often meet.
#[derive(Clone, Copy, Debug)]
enum Block {
    Hot(u8),
    Any(Index),
}

impl Block {
    fn resolve(&self, blocks: usize) -> usize {
        match self {
            Block::Hot(b) => usize::from(*b) % blocks,
            Block::Any(i) => i.index(blocks),
        }
    }
}

fn block() -> impl Strategy<Value = Block> {
    prop_oneof![
        (0..6u8).prop_map(Block::Hot),
        any::<Index>().prop_map(Block::Any)
    ]
}

/// A byte range chosen independently of the volume's size, resolved against it.
#[derive(Clone, Copy, Debug)]
struct Span {
    block: Block,
    within: u16,
    len: u32,
}

impl Span {
    /// Offset and length, clamped into a volume of `size` bytes (never empty).
    fn resolve(&self, size: usize) -> (usize, usize) {
        let off = (self.block.resolve(size / BS) * BS + usize::from(self.within)).min(size - 1);
        (off, (self.len as usize).min(size - off))
    }
}

fn span() -> impl Strategy<Value = Span> {
    let within = prop_oneof![
        Just(0u16),
        Just(1),
        Just(4095),
        Just(4096 - 511),
        0..4096u16
    ];
    // The large ones reach the engine's relocation of writes over
    // scattered slots (16 blocks and up).
    let len = prop_oneof![
        6 => Just(1u32),
        6 => Just(511),
        6 => Just(4096),
        6 => Just(8192),
        6 => 1..=3 * 4096u32,
        2 => Just(16 * 4096u32),
        2 => 16 * 4096..=90 * 4096u32,
    ];
    (block(), within, len).prop_map(|(block, within, len)| Span { block, within, len })
}

#[derive(Clone, Debug)]
enum Op {
    /// Whole blocks.
    Write {
        vol: Index,
        block: Block,
        blocks: u8,
        fua: bool,
    },
    /// Whole blocks zeroed (`trim` when `trim`).
    ZeroBlocks {
        vol: Index,
        block: Block,
        blocks: u8,
        trim: bool,
    },
    /// Any bytes.
    WriteAt {
        vol: Index,
        span: Span,
        fua: bool,
    },
    Zeroes {
        vol: Index,
        span: Span,
        fua: bool,
    },
    Trim {
        vol: Index,
        span: Span,
        fua: bool,
    },
    Flush {
        vol: Index,
    },
    FlushAll,
    SnapGroup {
        group: Index,
        app: bool,
    },
    SnapVolume {
        vol: Index,
    },
    CloneGroup {
        snap: Index,
    },
    CloneVolume {
        snap: Index,
        slot: Index,
    },
    Sync {
        snap: Index,
        target: Index,
        slots: u8,
    },
    DeleteSnapshot {
        snap: Index,
    },
    DeleteVolume {
        vol: Index,
    },
    Grow {
        vol: Index,
        blocks: u8,
    },
    /// `flush_all`, drop the store, open it again.
    Reopen,
    /// `flush_all`, drop the store, lose unsynced writes, open it again.
    Crash {
        seed: u64,
    },
    Read {
        vol: Index,
        span: Span,
    },
    ReadSnapshot {
        snap: Index,
    },
    /// From a snapshot to a later one of the same owner (any order), or to live.
    Diff {
        from: Index,
        to: Option<Index>,
    },
    /// A refused request: it must fail the right way and change nothing.
    Misuse {
        vol: Index,
        snap: Index,
        kind: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let i = any::<Index>;
    prop_oneof![
        6 => (i(), block(), 1..=8u8, any::<bool>())
            .prop_map(|(vol, block, blocks, fua)| Op::Write { vol, block, blocks, fua }),
        3 => (i(), block(), 1..=4u8, any::<bool>())
            .prop_map(|(vol, block, blocks, trim)| Op::ZeroBlocks { vol, block, blocks, trim }),
        5 => (i(), span(), any::<bool>()).prop_map(|(vol, span, fua)| Op::WriteAt { vol, span, fua }),
        2 => (i(), span(), any::<bool>()).prop_map(|(vol, span, fua)| Op::Zeroes { vol, span, fua }),
        2 => (i(), span(), any::<bool>()).prop_map(|(vol, span, fua)| Op::Trim { vol, span, fua }),
        2 => i().prop_map(|vol| Op::Flush { vol }),
        1 => Just(Op::FlushAll),
        4 => (i(), any::<bool>()).prop_map(|(group, app)| Op::SnapGroup { group, app }),
        3 => i().prop_map(|vol| Op::SnapVolume { vol }),
        1 => i().prop_map(|snap| Op::CloneGroup { snap }),
        1 => (i(), i()).prop_map(|(snap, slot)| Op::CloneVolume { snap, slot }),
        1 => (i(), i(), 1..=3u8).prop_map(|(snap, target, slots)| Op::Sync { snap, target, slots }),
        5 => i().prop_map(|snap| Op::DeleteSnapshot { snap }),
        1 => i().prop_map(|vol| Op::DeleteVolume { vol }),
        1 => (i(), 0..=8u8).prop_map(|(vol, blocks)| Op::Grow { vol, blocks }),
        1 => Just(Op::Reopen),
        1 => any::<u64>().prop_map(|seed| Op::Crash { seed }),
        2 => (i(), span()).prop_map(|(vol, span)| Op::Read { vol, span }),
        2 => i().prop_map(|snap| Op::ReadSnapshot { snap }),
        2 => (i(), proptest::option::of(i())).prop_map(|(from, to)| Op::Diff { from, to }),
        1 => (i(), i(), 0..8u8).prop_map(|(vol, snap, kind)| Op::Misuse { vol, snap, kind }),
    ]
}

/// `len` bytes that only write number `seq` produces.
fn data(seq: u64, len: usize) -> Vec<u8> {
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Fails with a short description of where two byte strings differ.
fn same(what: impl Display, got: &[u8], want: &[u8]) -> TestResult {
    if got.len() != want.len() {
        return Err(TestCaseError::fail(format!(
            "{what}: read {} bytes, model has {}",
            got.len(),
            want.len()
        )));
    }
    if got == want {
        return Ok(());
    }
    if let Some(first) = got.iter().zip(want).position(|(a, b)| a != b) {
        let blocks: Vec<usize> = got
            .chunks(BS)
            .zip(want.chunks(BS))
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, _)| i)
            .collect();
        return Err(TestCaseError::fail(format!(
            "{what}: first difference at byte {first} (block {}); differing blocks {blocks:?}",
            first / BS
        )));
    }
    Ok(())
}

trait OrFail<T> {
    fn or_fail(self, what: impl Display) -> TestResult<T>;
}

impl<T> OrFail<T> for ferry_store::Result<T> {
    fn or_fail(self, what: impl Display) -> TestResult<T> {
        self.map_err(|e| TestCaseError::fail(format!("{what}: {e}")))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Owner {
    Group(String),
    Volume(String),
}

impl Owner {
    fn target(&self) -> Target<'_> {
        match self {
            Owner::Group(n) => Target::Group(n),
            Owner::Volume(n) => Target::Volume(n),
        }
    }
}

#[derive(Debug)]
struct MVol {
    data: Vec<u8>,
    /// Model id of the head layer.
    head: u64,
}

#[derive(Clone, Debug)]
struct Member {
    layer: u64,
    data: Vec<u8>,
}

#[derive(Debug)]
struct MSnap {
    owner: Owner,
    name: String,
    members: BTreeMap<String, Member>,
}

impl MSnap {
    /// The `slot` argument the engine wants for a member of this snapshot.
    fn slot<'a>(&self, slot: &'a str) -> Option<&'a str> {
        match self.owner {
            Owner::Group(_) => Some(slot),
            Owner::Volume(_) => None,
        }
    }
}

struct Harness {
    mem: Arc<MemStorage>,
    store: Option<Store>,
    vols: BTreeMap<String, MVol>,
    /// Group name to slot to volume name.
    groups: BTreeMap<String, BTreeMap<String, String>>,
    /// In creation order.
    snaps: Vec<MSnap>,
    /// Model layer id to its parent.
    parents: HashMap<u64, Option<u64>>,
    next_layer: u64,
    /// Number of the next write, which its data derives from.
    seq: u64,
    /// Counter for names of new snapshots, groups and volumes.
    names: u32,
}

impl Harness {
    fn new(sizes: [usize; 3]) -> TestResult<Harness> {
        let mem = MemStorage::new();
        let store = Store::open_storage(mem.clone()).or_fail("opening a new store")?;
        let mut h = Harness {
            mem,
            store: Some(store),
            vols: BTreeMap::new(),
            groups: BTreeMap::new(),
            snaps: Vec::new(),
            parents: HashMap::new(),
            next_layer: 0,
            seq: 1,
            names: 0,
        };
        for (name, blocks) in ["g-a", "g-b", "solo"].into_iter().zip(sizes) {
            h.store()
                .create_volume(name, (blocks * BS) as u64)
                .or_fail(format_args!("creating {name}"))?;
            let head = h.new_layer(None);
            h.vols.insert(
                name.to_owned(),
                MVol {
                    data: vec![0; blocks * BS],
                    head,
                },
            );
        }
        h.store()
            .create_group("g", &[("a", "g-a"), ("b", "g-b")])
            .or_fail("creating group g")?;
        h.groups.insert(
            "g".into(),
            BTreeMap::from([("a".into(), "g-a".into()), ("b".into(), "g-b".into())]),
        );
        Ok(h)
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("the store is open")
    }

    fn new_layer(&mut self, parent: Option<u64>) -> u64 {
        self.next_layer += 1;
        self.parents.insert(self.next_layer, parent);
        self.next_layer
    }

    fn lineage(&self, top: u64) -> Vec<u64> {
        let mut out = vec![top];
        while let Some(Some(p)) = self.parents.get(out.last().expect("not empty")) {
            out.push(*p);
        }
        out
    }

    fn name(&mut self, prefix: &str) -> String {
        self.names += 1;
        format!("{prefix}{}", self.names)
    }

    fn pick_vol(&self, i: &Index) -> String {
        let names: Vec<_> = self.vols.keys().collect();
        names[i.index(names.len())].clone()
    }

    fn handle(&self, name: &str) -> TestResult<VolumeHandle> {
        self.store()
            .volume(name)
            .or_fail(format_args!("opening volume {name}"))
    }

    /// Drops the store (after flushing everything), optionally loses every
    /// unsynced write, and opens the store again.
    fn reopen(&mut self, crash: Option<u64>) -> TestResult {
        self.store()
            .flush_all()
            .or_fail("flush_all before closing")?;
        self.store = None;
        if let Some(seed) = crash {
            self.mem.crash(seed);
        }
        self.store = Some(Store::open_storage(self.mem.clone()).or_fail("reopening the store")?);
        self.verify_all()
    }

    fn read_volume(&self, name: &str) -> TestResult<Vec<u8>> {
        let h = self.handle(name)?;
        let mut buf = vec![0u8; h.size() as usize];
        h.read(&mut buf, 0)
            .or_fail(format_args!("reading volume {name}"))?;
        Ok(buf)
    }

    fn check_volume(&self, name: &str) -> TestResult {
        same(
            format_args!("volume {name}"),
            &self.read_volume(name)?,
            &self.vols[name].data,
        )
    }

    fn check_snapshot(&self, s: &MSnap) -> TestResult {
        for (slot, m) in &s.members {
            let r = self
                .store()
                .open_snapshot(s.owner.target(), &s.name, s.slot(slot))
                .or_fail(format_args!(
                    "opening snapshot {:?}@{} {slot}",
                    s.owner, s.name
                ))?;
            prop_assert_eq!(r.size() as usize, m.data.len());
            let mut buf = vec![0u8; m.data.len()];
            r.read(&mut buf, 0)
                .or_fail(format_args!("reading snapshot {}", s.name))?;
            same(
                format_args!("snapshot {:?}@{} slot {slot:?}", s.owner, s.name),
                &buf,
                &m.data,
            )?;
        }
        Ok(())
    }

    /// The catalog as listed matches the model.
    fn check_catalog(&self) -> TestResult {
        let store = self.store();
        let listed: Vec<(String, u64)> = store
            .list_volumes()
            .into_iter()
            .map(|v| (v.name, v.size))
            .collect();
        let model: Vec<(String, u64)> = self
            .vols
            .iter()
            .map(|(n, v)| (n.clone(), v.data.len() as u64))
            .collect();
        prop_assert_eq!(listed, model);
        let groups: BTreeMap<_, _> = store
            .list_groups()
            .into_iter()
            .map(|g| (g.name, g.slots))
            .collect();
        prop_assert_eq!(&groups, &self.groups);
        let owners = self
            .groups
            .keys()
            .map(|g| Owner::Group(g.clone()))
            .chain(self.vols.keys().map(|v| Owner::Volume(v.clone())));
        for owner in owners {
            let listed: BTreeSet<String> = store
                .list_snapshots(owner.target())
                .or_fail(format_args!("listing snapshots of {owner:?}"))?
                .into_iter()
                .map(|s| s.name)
                .collect();
            let model: BTreeSet<String> = self
                .snaps
                .iter()
                .filter(|s| s.owner == owner)
                .map(|s| s.name.clone())
                .collect();
            prop_assert_eq!(listed, model, "snapshots of {:?}", owner);
        }
        Ok(())
    }

    fn verify_all(&self) -> TestResult {
        self.check_catalog()?;
        for name in self.vols.keys() {
            self.check_volume(name)?;
        }
        for s in &self.snaps {
            self.check_snapshot(s)?;
        }
        Ok(())
    }

    /// Seals the heads of `members` (slot to volume) into a snapshot record
    /// and starts new heads; `rebase` gives slots a new base (sync).
    fn seal(
        &mut self,
        owner: Owner,
        name: String,
        members: &BTreeMap<String, String>,
        rebase: &BTreeMap<String, Member>,
    ) {
        let mut snap = MSnap {
            owner,
            name,
            members: BTreeMap::new(),
        };
        for (slot, vname) in members {
            let v = &self.vols[vname];
            snap.members.insert(
                slot.clone(),
                Member {
                    layer: v.head,
                    data: v.data.clone(),
                },
            );
            let (parent, data) = match rebase.get(slot) {
                Some(m) => (m.layer, m.data.clone()),
                None => (v.head, v.data.clone()),
            };
            let head = self.new_layer(Some(parent));
            let v = self.vols.get_mut(vname).expect("member exists");
            v.head = head;
            v.data = data;
        }
        self.snaps.push(snap);
    }

    fn members_of(&self, owner: &Owner) -> BTreeMap<String, String> {
        match owner {
            Owner::Group(g) => self.groups[g].clone(),
            Owner::Volume(v) => BTreeMap::from([(String::new(), v.clone())]),
        }
    }

    fn run(&mut self, op: &Op) -> TestResult {
        match op {
            Op::Write {
                vol,
                block,
                blocks,
                fua,
            } => {
                let name = self.pick_vol(vol);
                let size = self.vols[&name].data.len();
                let off = block.resolve(size / BS) * BS;
                let len = (usize::from(*blocks) * BS).min(size - off);
                self.write(&name, off, len, *fua)
            }
            Op::ZeroBlocks {
                vol,
                block,
                blocks,
                trim,
            } => {
                let name = self.pick_vol(vol);
                let size = self.vols[&name].data.len();
                let off = block.resolve(size / BS) * BS;
                let len = (usize::from(*blocks) * BS).min(size - off);
                let h = self.handle(&name)?;
                let r = if *trim {
                    h.trim(off as u64, len as u64, false)
                } else {
                    h.write_zeroes(off as u64, len as u64, false)
                };
                r.or_fail(format_args!("zeroing {name} {off}+{len}"))?;
                self.vols.get_mut(&name).expect("picked").data[off..off + len].fill(0);
                Ok(())
            }
            Op::WriteAt { vol, span, fua } => {
                let name = self.pick_vol(vol);
                let (off, len) = span.resolve(self.vols[&name].data.len());
                self.write(&name, off, len, *fua)
            }
            Op::Zeroes { vol, span, fua } | Op::Trim { vol, span, fua } => {
                let name = self.pick_vol(vol);
                let (off, len) = span.resolve(self.vols[&name].data.len());
                let h = self.handle(&name)?;
                let r = if matches!(op, Op::Trim { .. }) {
                    h.trim(off as u64, len as u64, *fua)
                } else {
                    h.write_zeroes(off as u64, len as u64, *fua)
                };
                r.or_fail(format_args!("zeroing {name} {off}+{len}"))?;
                self.vols.get_mut(&name).expect("picked").data[off..off + len].fill(0);
                Ok(())
            }
            Op::Flush { vol } => {
                let name = self.pick_vol(vol);
                self.handle(&name)?
                    .flush()
                    .or_fail(format_args!("flushing {name}"))
            }
            Op::FlushAll => self.store().flush_all().or_fail("flush_all"),
            Op::SnapGroup { group, app } => {
                let groups: Vec<_> = self.groups.keys().cloned().collect();
                let g = groups[group.index(groups.len())].clone();
                let name = self.name("s");
                let kind = if *app {
                    SnapshotKind::App
                } else {
                    SnapshotKind::Crash
                };
                let info = self
                    .store()
                    .create_snapshot(Target::Group(&g), &name, kind)
                    .or_fail(format_args!("snapshot {g}@{name}"))?;
                prop_assert_eq!(info.kind, kind);
                let members = self.groups[&g].clone();
                prop_assert_eq!(
                    info.members.keys().collect::<Vec<_>>(),
                    members.keys().collect::<Vec<_>>()
                );
                self.seal(Owner::Group(g), name, &members, &BTreeMap::new());
                Ok(())
            }
            Op::SnapVolume { vol } => {
                let v = self.pick_vol(vol);
                let name = self.name("s");
                self.store()
                    .create_snapshot(Target::Volume(&v), &name, SnapshotKind::Crash)
                    .or_fail(format_args!("snapshot {v}@{name}"))?;
                let owner = Owner::Volume(v);
                let members = self.members_of(&owner);
                self.seal(owner, name, &members, &BTreeMap::new());
                Ok(())
            }
            Op::CloneGroup { snap } => {
                let groups: Vec<usize> = (0..self.snaps.len())
                    .filter(|&i| matches!(self.snaps[i].owner, Owner::Group(_)))
                    .collect();
                if groups.is_empty() {
                    return Ok(());
                }
                let s = groups[snap.index(groups.len())];
                let new = self.name("c");
                let Owner::Group(g) = &self.snaps[s].owner else {
                    unreachable!()
                };
                let info = self
                    .store()
                    .clone_group(g, &self.snaps[s].name, &new)
                    .or_fail(format_args!("cloning {g}@{}", self.snaps[s].name))?;
                let mut slots = BTreeMap::new();
                for (slot, m) in self.snaps[s].members.clone() {
                    let vname = format!("{new}-{slot}");
                    let head = self.new_layer(Some(m.layer));
                    self.vols.insert(vname.clone(), MVol { data: m.data, head });
                    slots.insert(slot, vname);
                }
                prop_assert_eq!(&info.slots, &slots);
                self.groups.insert(new, slots);
                Ok(())
            }
            Op::CloneVolume { snap, slot } => {
                if self.snaps.is_empty() {
                    return Ok(());
                }
                let new = self.name("v");
                let s = &self.snaps[snap.index(self.snaps.len())];
                let slots: Vec<_> = s.members.keys().cloned().collect();
                let slot = &slots[slot.index(slots.len())];
                let m = s.members[slot].clone();
                let info = self
                    .store()
                    .clone_volume(s.owner.target(), &s.name, s.slot(slot), &new)
                    .or_fail(format_args!("cloning {:?}@{} {slot}", s.owner, s.name))?;
                prop_assert_eq!(info.size as usize, m.data.len());
                prop_assert_eq!(info.group, None);
                let head = self.new_layer(Some(m.layer));
                self.vols.insert(new, MVol { data: m.data, head });
                Ok(())
            }
            Op::Sync {
                snap,
                target,
                slots,
            } => {
                let sources: Vec<usize> = (0..self.snaps.len())
                    .filter(|&i| matches!(self.snaps[i].owner, Owner::Group(_)))
                    .collect();
                if sources.is_empty() {
                    return Ok(());
                }
                let s = &self.snaps[sources[snap.index(sources.len())]];
                let Owner::Group(source) = &s.owner else {
                    unreachable!()
                };
                let groups: Vec<_> = self.groups.keys().cloned().collect();
                let t = groups[target.index(groups.len())].clone();
                let chosen: Vec<&str> = SLOTS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| slots & (1 << i) != 0)
                    .map(|(_, s)| *s)
                    .collect();
                let report = self
                    .store()
                    .sync(source, &s.name, &t, &chosen)
                    .or_fail(format_args!("sync {source}@{} into {t}", s.name))?;
                prop_assert_eq!(&report.slots, &chosen);
                let rebase: BTreeMap<String, Member> = chosen
                    .iter()
                    .map(|slot| (slot.to_string(), s.members[*slot].clone()))
                    .collect();
                let members = self.groups[&t].clone();
                self.seal(Owner::Group(t), report.undo_snapshot, &members, &rebase);
                Ok(())
            }
            Op::DeleteSnapshot { snap } => {
                if self.snaps.is_empty() {
                    return Ok(());
                }
                let s = self.snaps.remove(snap.index(self.snaps.len()));
                self.store()
                    .delete_snapshot(s.owner.target(), &s.name)
                    .or_fail(format_args!("deleting snapshot {:?}@{}", s.owner, s.name))?;
                let gone = self.store().open_snapshot(
                    s.owner.target(),
                    &s.name,
                    s.slot(s.members.keys().next().expect("a member")),
                );
                prop_assert!(
                    matches!(gone, Err(StoreError::NotFound { .. })),
                    "deleted snapshot still opens: {:?}",
                    gone.map(|r| r.size())
                );
                Ok(())
            }
            Op::DeleteVolume { vol } => {
                let name = self.pick_vol(vol);
                let h = self.handle(&name)?;
                let in_group = self.groups.values().any(|g| g.values().any(|v| *v == name));
                let owner = Owner::Volume(name.clone());
                let has_snaps = self.snaps.iter().any(|s| s.owner == owner);
                let r = self.store().delete_volume(&name);
                if in_group || has_snaps {
                    prop_assert!(
                        matches!(r, Err(StoreError::InUse { .. })),
                        "deleting {} (in a group or with snapshots): {:?}",
                        name,
                        r
                    );
                    return self.check_volume(&name);
                }
                r.or_fail(format_args!("deleting volume {name}"))?;
                self.vols.remove(&name);
                let r = h.read(&mut [0u8; 1], 0);
                prop_assert!(matches!(r, Err(StoreError::Deleted { .. })), "{:?}", r);
                let r = self.store().volume(&name).map(|h| h.size());
                prop_assert!(matches!(r, Err(StoreError::NotFound { .. })), "{:?}", r);
                Ok(())
            }
            Op::Grow { vol, blocks } => {
                let name = self.pick_vol(vol);
                let old = self.vols[&name].data.len();
                let new = (old + usize::from(*blocks) * BS)
                    .min(MAX_BLOCKS * BS)
                    .max(old);
                let info = self
                    .store()
                    .grow_volume(&name, new as u64)
                    .or_fail(format_args!("growing {name} to {new}"))?;
                prop_assert_eq!(info.size as usize, new);
                prop_assert_eq!(self.handle(&name)?.size() as usize, new);
                self.vols
                    .get_mut(&name)
                    .expect("picked")
                    .data
                    .resize(new, 0);
                Ok(())
            }
            Op::Reopen => self.reopen(None),
            Op::Crash { seed } => self.reopen(Some(*seed)),
            Op::Read { vol, span } => {
                let name = self.pick_vol(vol);
                let (off, len) = span.resolve(self.vols[&name].data.len());
                let mut buf = vec![0u8; len];
                self.handle(&name)?
                    .read(&mut buf, off as u64)
                    .or_fail(format_args!("reading {name} {off}+{len}"))?;
                same(
                    format_args!("volume {name} at {off}+{len}"),
                    &buf,
                    &self.vols[&name].data[off..off + len],
                )
            }
            Op::ReadSnapshot { snap } => {
                if self.snaps.is_empty() {
                    return Ok(());
                }
                self.check_snapshot(&self.snaps[snap.index(self.snaps.len())])
            }
            Op::Diff { from, to } => self.diff(from, to.as_ref()),
            Op::Misuse { vol, snap, kind } => self.misuse(vol, snap, *kind),
        }
    }

    fn write(&mut self, name: &str, off: usize, len: usize, fua: bool) -> TestResult {
        let bytes = data(self.seq, len);
        self.seq += 1;
        self.handle(name)?
            .write(&bytes, off as u64, fua)
            .or_fail(format_args!("writing {name} {off}+{len}"))?;
        self.vols.get_mut(name).expect("picked").data[off..off + len].copy_from_slice(&bytes);
        Ok(())
    }

    fn diff(&self, from: &Index, to: Option<&Index>) -> TestResult {
        if self.snaps.is_empty() {
            return Ok(());
        }
        let old = &self.snaps[from.index(self.snaps.len())];
        let same_owner: Vec<&MSnap> = self.snaps.iter().filter(|s| s.owner == old.owner).collect();
        // Slot to (model layer, contents) of the newer side.
        let (newer, end): (BTreeMap<String, (u64, &[u8])>, DiffEnd<'_>) = match to {
            Some(i) => {
                let s = same_owner[i.index(same_owner.len())];
                let m = s
                    .members
                    .iter()
                    .map(|(slot, m)| (slot.clone(), (m.layer, m.data.as_slice())))
                    .collect();
                (m, DiffEnd::Snapshot(&s.name))
            }
            None => {
                let m = self
                    .members_of(&old.owner)
                    .into_iter()
                    .map(|(slot, v)| {
                        let v = &self.vols[&v];
                        (slot, (v.head, v.data.as_slice()))
                    })
                    .collect();
                (m, DiffEnd::Live)
            }
        };
        let result = self.store().diff(old.owner.target(), &old.name, end);
        let defined = newer.iter().all(|(slot, (layer, _))| {
            old.members
                .get(slot)
                .is_none_or(|m| self.lineage(*layer).contains(&m.layer))
        });
        let what = format!("diff {:?}@{} to {end:?}", old.owner, old.name);
        if !defined {
            prop_assert!(
                matches!(result, Err(StoreError::NotAncestor { .. })),
                "{}: expected NotAncestor, got {:?}",
                what,
                result
            );
            return Ok(());
        }
        let got = result.or_fail(&what)?;
        prop_assert_eq!(
            got.keys().collect::<Vec<_>>(),
            newer.keys().collect::<Vec<_>>(),
            "{}",
            &what
        );
        for (slot, (_, new)) in &newer {
            let set = &got[slot];
            let blocks = (new.len() / BS) as u32;
            if let Some(max) = set.max() {
                prop_assert!(
                    max < blocks,
                    "{}: slot {:?} reports block {} of a {}-block volume",
                    &what,
                    slot,
                    max,
                    blocks
                );
            }
            let old_data = old.members.get(slot).map_or(&[][..], |m| m.data.as_slice());
            for b in 0..blocks {
                let range = b as usize * BS..(b as usize + 1) * BS;
                let changed = match old_data.get(range.clone()) {
                    Some(o) => o != &new[range],
                    None => new[range].iter().any(|&x| x != 0),
                };
                prop_assert!(
                    !changed || set.contains(b),
                    "{}: slot {:?} block {} changed but is not in the diff {:?}",
                    &what,
                    slot,
                    b,
                    set.iter().collect::<Vec<_>>()
                );
            }
        }
        Ok(())
    }

    /// Requests the engine must refuse; afterwards nothing may have changed.
    fn misuse(&self, vol: &Index, snap: &Index, kind: u8) -> TestResult {
        let name = self.pick_vol(vol);
        let h = self.handle(&name)?;
        let size = h.size();
        let snap = (!self.snaps.is_empty()).then(|| &self.snaps[snap.index(self.snaps.len())]);
        macro_rules! refused {
            ($r:expr, $pat:pat) => {{
                let r = $r;
                prop_assert!(
                    matches!(r, Err($pat)),
                    "{} should be refused with {}, got {:?}",
                    stringify!($r),
                    stringify!($pat),
                    r
                );
            }};
        }
        match kind {
            0 => {
                refused!(
                    h.write(&[7u8; 2], size - 1, false),
                    StoreError::OutOfRange { .. }
                );
                refused!(
                    h.write(&data(0, BS), size, true),
                    StoreError::OutOfRange { .. }
                );
                refused!(
                    h.write_zeroes(u64::MAX - 1, 4, false),
                    StoreError::OutOfRange { .. }
                );
                refused!(
                    h.trim(size - BS as u64, 2 * BS as u64, false),
                    StoreError::OutOfRange { .. }
                );
            }
            1 => {
                refused!(
                    h.read(&mut [0u8; 2], size - 1),
                    StoreError::OutOfRange { .. }
                );
                if let Some(s) = snap {
                    let (slot, m) = s.members.iter().next().expect("a member");
                    let r = self
                        .store()
                        .open_snapshot(s.owner.target(), &s.name, s.slot(slot))
                        .or_fail("opening a snapshot")?;
                    refused!(
                        r.read(&mut [0u8; 1], m.data.len() as u64),
                        StoreError::OutOfRange { .. }
                    );
                }
            }
            2 => {
                refused!(
                    self.store().grow_volume(&name, size - BS as u64),
                    StoreError::Shrink { .. } | StoreError::InvalidSize { .. }
                );
                refused!(
                    self.store().grow_volume(&name, size + 1),
                    StoreError::InvalidSize { .. }
                );
                refused!(
                    self.store().grow_volume("no-such", size),
                    StoreError::NotFound { .. }
                );
            }
            3 => {
                if let Some(s) = snap {
                    refused!(
                        self.store().create_snapshot(
                            s.owner.target(),
                            &s.name,
                            SnapshotKind::Crash
                        ),
                        StoreError::AlreadyExists { .. }
                    );
                }
                refused!(
                    self.store()
                        .delete_snapshot(Target::Volume(&name), "no-such"),
                    StoreError::NotFound { .. }
                );
                refused!(
                    self.store()
                        .create_snapshot(Target::Volume(&name), "Bad", SnapshotKind::Crash),
                    StoreError::InvalidName { .. }
                );
            }
            4 => {
                if let Some(s) = snap {
                    if let Owner::Group(g) = &s.owner {
                        refused!(
                            self.store().clone_group(g, &s.name, "g"),
                            StoreError::AlreadyExists { .. }
                        );
                        refused!(
                            self.store()
                                .clone_volume(s.owner.target(), &s.name, None, "fresh"),
                            StoreError::Invalid(_)
                        );
                    }
                    let slot = s.members.keys().next().expect("a member");
                    refused!(
                        self.store()
                            .clone_volume(s.owner.target(), &s.name, s.slot(slot), &name),
                        StoreError::AlreadyExists { .. }
                    );
                }
            }
            5 => {
                if let Some(s) = snap
                    && let Owner::Group(g) = &s.owner
                {
                    refused!(
                        self.store().sync(g, &s.name, "g", &[]),
                        StoreError::Invalid(_)
                    );
                    refused!(
                        self.store().sync(g, &s.name, "g", &["zz"]),
                        StoreError::NotFound { .. }
                    );
                    refused!(
                        self.store().sync(g, &s.name, "no-such", &["a"]),
                        StoreError::NotFound { .. }
                    );
                }
            }
            6 => {
                refused!(self.store().delete_volume("g-a"), StoreError::InUse { .. });
                refused!(
                    self.store().delete_volume("no-such"),
                    StoreError::NotFound { .. }
                );
                refused!(
                    self.store().create_volume(&name, 4 * BS as u64),
                    StoreError::AlreadyExists { .. }
                );
            }
            _ => {
                if let Some(s) = snap {
                    refused!(
                        self.store()
                            .diff(s.owner.target(), "no-such", DiffEnd::Live)
                            .map(|_| ()),
                        StoreError::NotFound { .. }
                    );
                    if let Owner::Group(g) = &s.owner {
                        refused!(
                            self.store()
                                .open_snapshot(Target::Group(g), &s.name, Some("zz"))
                                .map(|_| ()),
                            StoreError::NotFound { .. }
                        );
                    }
                }
            }
        }
        prop_assert_eq!(h.size(), size);
        self.check_catalog()?;
        self.check_volume(&name)
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/model.txt"
        )))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn engine_matches_model(
        sizes in [8..=64usize, 8..=64usize, 8..=32usize],
        ops in proptest::collection::vec(op(), 1..=40),
    ) {
        // Map records of at most 2 extents: persist, compaction and open
        // then write and replay many records per change.
        ferry_store::layer::journal::set_record_extents_for_tests(2);
        // Slot-map chunks past 3 extents hold a slot per block.
        ferry_store::layer::slots::set_dense_from_for_tests(3);
        let mut h = Harness::new(sizes)?;
        for (i, op) in ops.iter().enumerate() {
            h.run(op).map_err(|e| TestCaseError::fail(format!("op {i} {op:?}: {e}")))?;
        }
        h.verify_all()?;
    }
}
