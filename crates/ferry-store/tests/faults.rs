//! Fault injection: a deterministic workload on a `FaultStorage` that fails
//! (or tears a write) after `n` mutating operations, for every `n` until the
//! workload runs through, in both fault modes; then a crash that loses a
//! random subset of unsynced writes, and a reopen without faults.
//!
//! The test tracks, for every block, the contents a crash may leave: the last
//! one made durable (by a flush, a FUA write or a snapshot, which flushes)
//! plus every write attempted since. Written blocks carry their volume, block
//! index and write number, so a block holding another block's data, or data
//! from before its last durable write, fails. Snapshots whose creation
//! returned `Ok` must survive and read exactly as they were; ones whose
//! deletion returned `Ok` must be gone; an operation that failed may have
//! happened or not, but not half (a clone or sync reads all old or all new).
//!
//! The workload merges deleted snapshots into a sealed layer and into a live
//! head; the test checks that faults landed inside both merges.

use ferry_store::storage::{FaultMode, FaultStorage, MemStorage, Storage, StorageFile};
use ferry_store::{SnapshotKind, Store, StoreError, Target};
use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const BS: usize = 4096;
const BLOCKS: usize = 16;
/// Every volume the workload may create, in tag order.
const VOLUMES: [&str; 6] = ["g-a", "g-b", "solo", "c-a", "c-b", "solo2"];

/// A `Storage` that counts writes to layer data files: a delete step that
/// wrote one was inside a merge's copy (nothing else writes data files there).
#[derive(Debug)]
struct Probe {
    inner: Arc<dyn Storage>,
    data_writes: Arc<AtomicU64>,
}

#[derive(Debug)]
struct ProbeFile {
    inner: Arc<dyn StorageFile>,
    data: bool,
    data_writes: Arc<AtomicU64>,
}

impl Storage for Probe {
    fn open_file(&self, name: &str, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(ProbeFile {
            inner: self.inner.open_file(name, create)?,
            data: name.starts_with("layers/") && name.ends_with(".data"),
            data_writes: self.data_writes.clone(),
        }))
    }

    fn remove_file(&self, name: &str) -> io::Result<()> {
        self.inner.remove_file(name)
    }

    fn rename_file(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename_file(from, to)
    }

    fn list_dir(&self, dir: &str) -> io::Result<Vec<String>> {
        self.inner.list_dir(dir)
    }
}

impl StorageFile for ProbeFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.data {
            self.data_writes.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.write_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.punch_hole(offset, len)
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Owner {
    Group(&'static str),
    Volume(&'static str),
}

impl Owner {
    fn target(self) -> Target<'static> {
        match self {
            Owner::Group(n) => Target::Group(n),
            Owner::Volume(n) => Target::Volume(n),
        }
    }

    fn slot(self, slot: &str) -> Option<&str> {
        match self {
            Owner::Group(_) => Some(slot),
            Owner::Volume(_) => None,
        }
    }
}

/// One engine call of the workload.
#[derive(Clone, Copy, Debug)]
enum Action {
    Write {
        vol: &'static str,
        off: usize,
        len: usize,
        fua: bool,
    },
    Zeroes {
        vol: &'static str,
        off: usize,
        len: usize,
        trim: bool,
    },
    Flush(&'static str),
    FlushAll,
    Snapshot(Owner, &'static str),
    DeleteSnapshot(Owner, &'static str),
    CloneGroup {
        group: &'static str,
        snap: &'static str,
        new: &'static str,
    },
    CloneVolume {
        owner: Owner,
        snap: &'static str,
        slot: &'static str,
        new: &'static str,
    },
    Sync {
        source: &'static str,
        snap: &'static str,
        target: &'static str,
        slots: &'static [&'static str],
    },
    Grow(&'static str, usize),
    DeleteVolume(&'static str),
}

/// Deleting `s2` merges its layers into `s3`'s (sealed); deleting `s3` then
/// merges into the live heads of `g`.
const MERGE_INTO_SEALED: &str = "s2";
const MERGE_INTO_HEAD: &str = "s3";

fn workload() -> Vec<Action> {
    use Action::*;
    let g = Owner::Group("g");
    let w = |vol, off, len| Write {
        vol,
        off,
        len,
        fua: false,
    };
    vec![
        w("g-a", 0, 8 * BS),
        w("g-b", 0, 4 * BS),
        w("solo", 0, 4 * BS),
        w("g-a", 4097, 511),
        w("g-a", 2 * BS - 6, 10),
        Flush("g-a"),
        w("g-b", 6 * BS, 2 * BS),
        Snapshot(g, "s1"),
        w("g-a", 2 * BS, 4 * BS),
        Zeroes {
            vol: "g-a",
            off: 7 * BS,
            len: BS,
            trim: false,
        },
        Zeroes {
            vol: "g-b",
            off: BS,
            len: BS,
            trim: true,
        },
        w("g-a", 9 * BS + 100, 3 * BS),
        Write {
            vol: "g-b",
            off: 5 * BS,
            len: BS,
            fua: true,
        },
        Snapshot(Owner::Volume("solo"), "v1"),
        w("solo", 2 * BS + 1, 2 * BS),
        Snapshot(g, MERGE_INTO_SEALED),
        w("g-a", 0, 3 * BS),
        w("g-a", 10 * BS, 2 * BS),
        Zeroes {
            vol: "g-a",
            off: 3 * BS,
            len: BS,
            trim: false,
        },
        w("g-b", 8 * BS, BS),
        Snapshot(g, MERGE_INTO_HEAD),
        w("g-a", 4 * BS, 2 * BS),
        w("g-b", 2 * BS + 3000, 2000),
        DeleteSnapshot(g, MERGE_INTO_SEALED),
        w("g-a", 5 * BS, BS),
        DeleteSnapshot(g, MERGE_INTO_HEAD),
        CloneGroup {
            group: "g",
            snap: "s1",
            new: "c",
        },
        w("c-a", BS, 2 * BS),
        CloneVolume {
            owner: Owner::Volume("solo"),
            snap: "v1",
            slot: "",
            new: "solo2",
        },
        w("solo2", 0, BS),
        Sync {
            source: "g",
            snap: "s1",
            target: "c",
            slots: &["a"],
        },
        Grow("solo", 4),
        w("solo", 17 * BS, BS),
        FlushAll,
        w("g-a", 11 * BS - 7, 20),
        w("c-b", 3 * BS, BS),
        DeleteVolume("solo2"),
        DeleteSnapshot(Owner::Volume("solo"), "v1"),
        DeleteSnapshot(g, "s1"),
        w("g-b", 0, BS),
        Flush("g-b"),
        w("g-a", 12 * BS, 4 * BS),
        Write {
            vol: "c-a",
            off: 14 * BS,
            len: BS,
            fua: true,
        },
    ]
}

/// Block `block` of volume `vol` as written by write number `seq`: a header
/// naming all three, then bytes derived from them.
fn image(vol: &str, block: usize, seq: u64) -> Vec<u8> {
    let tag = VOLUMES
        .iter()
        .position(|v| *v == vol)
        .expect("a known volume") as u32;
    let mut out = Vec::with_capacity(BS);
    out.extend_from_slice(b"FERRYBLK");
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&(block as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    let mut x = (seq << 32 | u64::from(tag) << 24 | block as u64) | 1;
    while out.len() < BS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(BS);
    out
}

/// What a block's bytes say they are, for failure messages.
fn describe(block: &[u8]) -> String {
    if block.iter().all(|&b| b == 0) {
        return "zeros".into();
    }
    if block.starts_with(b"FERRYBLK") {
        let tag = u32::from_le_bytes(block[8..12].try_into().expect("4 bytes")) as usize;
        let idx = u32::from_le_bytes(block[12..16].try_into().expect("4 bytes"));
        let seq = u64::from_le_bytes(block[16..24].try_into().expect("8 bytes"));
        let vol = VOLUMES.get(tag).copied().unwrap_or("?");
        return format!("block {idx} of {vol} from write {seq}");
    }
    "unrecognised bytes".into()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Presence {
    Yes,
    /// Its creation or deletion failed: it may exist or not.
    Maybe,
    /// Its deletion returned `Ok`.
    Gone,
}

#[derive(Debug)]
struct TVol {
    presence: Presence,
    /// Sizes in blocks it may have.
    sizes: Vec<usize>,
    /// The content before any crash.
    current: Vec<Vec<u8>>,
    /// Per block, what a crash may leave: the durable content and every
    /// write attempted since.
    allowed: Vec<Vec<Vec<u8>>>,
    /// Per block, a write that failed in `Cut` mode: a prefix of it over an
    /// allowed content is allowed too.
    torn: Vec<Option<Vec<u8>>>,
    /// Whole content it may have instead (a clone or sync that failed).
    alternative: Option<Vec<Vec<u8>>>,
}

impl TVol {
    fn new(presence: Presence, content: Vec<Vec<u8>>) -> TVol {
        TVol {
            presence,
            sizes: vec![content.len()],
            allowed: content.iter().map(|b| vec![b.clone()]).collect(),
            torn: vec![None; content.len()],
            current: content,
            alternative: None,
        }
    }

    fn durable(&mut self) {
        for (a, c) in self.allowed.iter_mut().zip(&self.current) {
            *a = vec![c.clone()];
        }
    }

    fn block_ok(&self, b: usize, got: &[u8]) -> bool {
        if self.allowed[b].iter().any(|a| a == got) {
            return true;
        }
        let Some(new) = &self.torn[b] else {
            return false;
        };
        // A torn write: got == new[..k] ++ old[k..] for some k and allowed old.
        let prefix = got.iter().zip(new).take_while(|(a, b)| a == b).count();
        self.allowed[b].iter().any(|old| {
            let suffix = got
                .iter()
                .zip(old)
                .rev()
                .take_while(|(a, b)| a == b)
                .count();
            BS - suffix <= prefix
        })
    }
}

#[derive(Debug)]
struct TSnap {
    presence: Presence,
    members: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug)]
struct Tracker {
    mode: FaultMode,
    vols: BTreeMap<&'static str, TVol>,
    groups: BTreeMap<&'static str, (Presence, BTreeMap<String, String>)>,
    snaps: BTreeMap<(Owner, String), TSnap>,
    /// The undo snapshot of a failed sync, whose name is unknown.
    lost_undo: Option<(Owner, BTreeMap<String, Vec<u8>>)>,
}

impl Tracker {
    fn new(mode: FaultMode) -> Tracker {
        let empty = || vec![vec![0u8; BS]; BLOCKS];
        let mut vols = BTreeMap::new();
        for v in ["g-a", "g-b", "solo"] {
            vols.insert(v, TVol::new(Presence::Yes, empty()));
        }
        let slots = BTreeMap::from([("a".into(), "g-a".into()), ("b".into(), "g-b".into())]);
        Tracker {
            mode,
            vols,
            groups: BTreeMap::from([("g", (Presence::Yes, slots))]),
            snaps: BTreeMap::new(),
            lost_undo: None,
        }
    }

    fn members(&self, owner: Owner) -> BTreeMap<String, String> {
        match owner {
            Owner::Group(g) => self.groups[g].1.clone(),
            Owner::Volume(v) => BTreeMap::from([(String::new(), v.to_owned())]),
        }
    }

    fn vol(&mut self, name: &str) -> &mut TVol {
        self.vols.get_mut(name).expect("a tracked volume")
    }

    /// A write of `fill` (bytes, or zeros when `None`) at `off`: its effect on
    /// the blocks it touches, whether it succeeded or not.
    fn wrote(
        &mut self,
        vol: &str,
        off: usize,
        len: usize,
        fill: Option<&[u8]>,
        fua: bool,
        ok: bool,
    ) {
        let cut = self.mode == FaultMode::Cut;
        let v = self.vol(vol);
        for b in off / BS..(off + len).div_ceil(BS) {
            let (from, to) = (off.max(b * BS), (off + len).min((b + 1) * BS));
            let mut new = v.current[b].clone();
            match fill {
                Some(bytes) => {
                    new[from - b * BS..to - b * BS].copy_from_slice(&bytes[from - off..to - off])
                }
                None => new[from - b * BS..to - b * BS].fill(0),
            }
            if ok && fua {
                v.allowed[b] = vec![new.clone()];
            } else {
                v.allowed[b].push(new.clone());
            }
            if !ok && cut {
                v.torn[b] = Some(new.clone());
            }
            v.current[b] = new;
        }
    }

    /// Runs one action on the store and records what it may have done.
    fn run(&mut self, store: &Store, seq: u64, action: Action) -> Result<(), StoreError> {
        match action {
            Action::Write { vol, off, len, fua } => {
                let bytes: Vec<u8> = (off / BS..(off + len).div_ceil(BS))
                    .flat_map(|b| image(vol, b, seq))
                    .skip(off % BS)
                    .take(len)
                    .collect();
                let r = store.volume(vol)?.write(&bytes, off as u64, fua);
                self.wrote(vol, off, len, Some(&bytes), fua, r.is_ok());
                r
            }
            Action::Zeroes {
                vol,
                off,
                len,
                trim,
            } => {
                let h = store.volume(vol)?;
                let r = if trim {
                    h.trim(off as u64, len as u64, false)
                } else {
                    h.write_zeroes(off as u64, len as u64, false)
                };
                self.wrote(vol, off, len, None, false, r.is_ok());
                r
            }
            Action::Flush(vol) => {
                let r = store.volume(vol)?.flush();
                if r.is_ok() {
                    self.vol(vol).durable();
                }
                r
            }
            Action::FlushAll => {
                let r = store.flush_all();
                if r.is_ok() {
                    for v in self.vols.values_mut() {
                        v.durable();
                    }
                }
                r
            }
            Action::Snapshot(owner, name) => {
                let r = store
                    .create_snapshot(owner.target(), name, SnapshotKind::Crash)
                    .map(drop);
                let members = self.members(owner);
                let mut contents = BTreeMap::new();
                for (slot, v) in &members {
                    let v = self.vol(v);
                    contents.insert(slot.clone(), v.current.concat());
                    if r.is_ok() {
                        v.durable();
                    }
                }
                self.snaps.insert(
                    (owner, name.to_owned()),
                    TSnap {
                        presence: if r.is_ok() {
                            Presence::Yes
                        } else {
                            Presence::Maybe
                        },
                        members: contents,
                    },
                );
                r
            }
            Action::DeleteSnapshot(owner, name) => {
                let r = store.delete_snapshot(owner.target(), name);
                let s = self
                    .snaps
                    .get_mut(&(owner, name.to_owned()))
                    .expect("a tracked snapshot");
                s.presence = if r.is_ok() {
                    Presence::Gone
                } else {
                    Presence::Maybe
                };
                r
            }
            Action::CloneGroup { group, snap, new } => {
                let r = store.clone_group(group, snap, new).map(drop);
                let presence = if r.is_ok() {
                    Presence::Yes
                } else {
                    Presence::Maybe
                };
                let members = self.snaps[&(Owner::Group(group), snap.to_owned())]
                    .members
                    .clone();
                let mut slots = BTreeMap::new();
                for (slot, content) in members {
                    let vname = VOLUMES
                        .into_iter()
                        .find(|v| *v == format!("{new}-{slot}"))
                        .expect("a known clone name");
                    let blocks = content.chunks(BS).map(<[u8]>::to_vec).collect();
                    self.vols.insert(vname, TVol::new(presence, blocks));
                    slots.insert(slot, vname.to_owned());
                }
                self.groups.insert(new, (presence, slots));
                r
            }
            Action::CloneVolume {
                owner,
                snap,
                slot,
                new,
            } => {
                let r = store
                    .clone_volume(owner.target(), snap, owner.slot(slot), new)
                    .map(drop);
                let content = &self.snaps[&(owner, snap.to_owned())].members[slot];
                let blocks = content.chunks(BS).map(<[u8]>::to_vec).collect();
                let presence = if r.is_ok() {
                    Presence::Yes
                } else {
                    Presence::Maybe
                };
                self.vols.insert(new, TVol::new(presence, blocks));
                r
            }
            Action::Sync {
                source,
                snap,
                target,
                slots,
            } => {
                let r = store.sync(source, snap, target, slots);
                let owner = Owner::Group(target);
                let members = self.members(owner);
                let undo: BTreeMap<String, Vec<u8>> = members
                    .iter()
                    .map(|(slot, v)| (slot.clone(), self.vols[v.as_str()].current.concat()))
                    .collect();
                let source_snap = &self.snaps[&(Owner::Group(source), snap.to_owned())];
                let new: BTreeMap<String, Vec<Vec<u8>>> = slots
                    .iter()
                    .map(|s| {
                        let blocks = source_snap.members[*s]
                            .chunks(BS)
                            .map(<[u8]>::to_vec)
                            .collect();
                        (s.to_string(), blocks)
                    })
                    .collect();
                match &r {
                    Ok(report) => {
                        for v in members.values() {
                            self.vol(v).durable();
                        }
                        for (slot, blocks) in new {
                            let v = self.vol(&members[&slot]);
                            *v = TVol::new(Presence::Yes, blocks);
                        }
                        self.snaps.insert(
                            (owner, report.undo_snapshot.clone()),
                            TSnap {
                                presence: Presence::Yes,
                                members: undo,
                            },
                        );
                    }
                    Err(_) => {
                        for (slot, blocks) in new {
                            self.vol(&members[&slot]).alternative = Some(blocks);
                        }
                        self.lost_undo = Some((owner, undo));
                    }
                }
                r.map(drop)
            }
            Action::Grow(vol, blocks) => {
                let v = self.vol(vol);
                let old = v.current.len();
                let new = old + blocks;
                let r = store.grow_volume(vol, (new * BS) as u64).map(drop);
                v.current.resize(new, vec![0; BS]);
                v.allowed.resize(new, vec![vec![0; BS]]);
                v.torn.resize(new, None);
                v.sizes = if r.is_ok() { vec![new] } else { vec![old, new] };
                r
            }
            Action::DeleteVolume(vol) => {
                let r = store.delete_volume(vol);
                self.vol(vol).presence = if r.is_ok() {
                    Presence::Gone
                } else {
                    Presence::Maybe
                };
                r
            }
        }
    }

    /// Checks a store reopened after the crash against what may have survived.
    fn verify(&self, store: &Store, ctx: &str) {
        let listed: BTreeMap<String, u64> = store
            .list_volumes()
            .into_iter()
            .map(|v| (v.name, v.size))
            .collect();
        for (name, v) in &self.vols {
            match v.presence {
                Presence::Yes => assert!(listed.contains_key(*name), "{ctx}: volume {name} lost"),
                Presence::Gone => {
                    assert!(
                        !listed.contains_key(*name),
                        "{ctx}: deleted volume {name} is back"
                    )
                }
                Presence::Maybe => {}
            }
        }
        for (name, size) in &listed {
            let v = self
                .vols
                .get(name.as_str())
                .unwrap_or_else(|| panic!("{ctx}: unknown volume {name}"));
            let blocks = *size as usize / BS;
            assert!(
                v.sizes.contains(&blocks),
                "{ctx}: volume {name} has {blocks} blocks, expected one of {:?}",
                v.sizes
            );
            let mut buf = vec![0u8; blocks * BS];
            store
                .volume(name)
                .and_then(|h| h.read(&mut buf, 0))
                .unwrap_or_else(|e| panic!("{ctx}: reading {name}: {e}"));
            if let Some(alt) = &v.alternative
                && alt.concat() == buf
            {
                continue;
            }
            for (b, got) in buf.chunks(BS).enumerate() {
                assert!(
                    v.block_ok(b, got),
                    "{ctx}: volume {name} block {b} holds {}; allowed: {:?}{}",
                    describe(got),
                    v.allowed[b].iter().map(|a| describe(a)).collect::<Vec<_>>(),
                    match &v.torn[b] {
                        Some(t) => format!(" or a torn {}", describe(t)),
                        None => String::new(),
                    }
                );
            }
        }
        let groups: BTreeMap<String, BTreeMap<String, String>> = store
            .list_groups()
            .into_iter()
            .map(|g| (g.name, g.slots))
            .collect();
        for (name, (presence, slots)) in &self.groups {
            match (presence, groups.get(*name)) {
                (Presence::Yes, None) => panic!("{ctx}: group {name} lost"),
                (_, Some(got)) => assert_eq!(got, slots, "{ctx}: slots of group {name}"),
                _ => {}
            }
        }
        for name in groups.keys() {
            assert!(
                self.groups.contains_key(name.as_str()),
                "{ctx}: unknown group {name}"
            );
        }
        for ((owner, name), s) in &self.snaps {
            if s.presence == Presence::Yes {
                let r = store.snapshot(owner.target(), name);
                assert!(r.is_ok(), "{ctx}: snapshot {owner:?}@{name} lost: {r:?}");
            }
        }
        let owners = groups
            .keys()
            .filter_map(|g| {
                self.groups
                    .get_key_value(g.as_str())
                    .map(|(k, _)| Owner::Group(k))
            })
            .chain(listed.keys().filter_map(|v| {
                self.vols
                    .get_key_value(v.as_str())
                    .map(|(k, _)| Owner::Volume(k))
            }));
        for owner in owners {
            let snaps = store
                .list_snapshots(owner.target())
                .unwrap_or_else(|e| panic!("{ctx}: listing snapshots of {owner:?}: {e}"));
            for info in snaps {
                let members = match self.snaps.get(&(owner, info.name.clone())) {
                    Some(s) => {
                        assert_ne!(
                            s.presence,
                            Presence::Gone,
                            "{ctx}: deleted snapshot {owner:?}@{} is back",
                            info.name
                        );
                        &s.members
                    }
                    None => match &self.lost_undo {
                        Some((o, members))
                            if *o == owner && info.name.starts_with("undo-sync-") =>
                        {
                            members
                        }
                        _ => panic!("{ctx}: unknown snapshot {owner:?}@{}", info.name),
                    },
                };
                for (slot, want) in members {
                    let r = store
                        .open_snapshot(owner.target(), &info.name, owner.slot(slot))
                        .unwrap_or_else(|e| {
                            panic!("{ctx}: opening {owner:?}@{} {slot}: {e}", info.name)
                        });
                    assert_eq!(
                        r.size() as usize,
                        want.len(),
                        "{ctx}: size of {}",
                        info.name
                    );
                    let mut buf = vec![0u8; want.len()];
                    r.read(&mut buf, 0)
                        .unwrap_or_else(|e| panic!("{ctx}: reading {}: {e}", info.name));
                    if let Some(b) = (0..want.len() / BS)
                        .find(|b| buf[b * BS..(b + 1) * BS] != want[b * BS..(b + 1) * BS])
                    {
                        panic!(
                            "{ctx}: snapshot {owner:?}@{} slot {slot:?} block {b} holds {}, was {}",
                            info.name,
                            describe(&buf[b * BS..(b + 1) * BS]),
                            describe(&want[b * BS..(b + 1) * BS])
                        );
                    }
                }
            }
        }
    }
}

/// A store holding the workload's starting point, durably.
fn setup() -> Arc<MemStorage> {
    let mem = MemStorage::new();
    let store = Store::open_storage(mem.clone()).expect("opening a new store");
    for v in ["g-a", "g-b", "solo"] {
        store
            .create_volume(v, (BLOCKS * BS) as u64)
            .expect("creating a volume");
    }
    store
        .create_group("g", &[("a", "g-a"), ("b", "g-b")])
        .expect("creating the group");
    store.flush_all().expect("flushing");
    mem
}

/// Where the first error of one run happened.
#[derive(Debug)]
struct Outcome {
    /// Index of the failing action, `None` when the store did not open or
    /// when nothing failed.
    failed_at: Option<usize>,
    /// Whether the workload ran through without an error.
    completed: bool,
    /// Whether the failing action had written a layer data file before failing.
    wrote_data: bool,
}

fn run(budget: u64, mode: FaultMode) -> Outcome {
    let ctx = format!("{mode:?} after {budget} operations");
    let mem = setup();
    let fault = FaultStorage::new(mem.clone(), budget, mode);
    let data_writes = Arc::new(AtomicU64::new(0));
    let probe = Arc::new(Probe {
        inner: fault.clone(),
        data_writes: data_writes.clone(),
    });
    let mut tracker = Tracker::new(mode);
    let mut outcome = Outcome {
        failed_at: None,
        completed: false,
        wrote_data: false,
    };
    match Store::open_storage(probe) {
        Err(e) => assert!(fault.tripped(), "{ctx}: open failed without a fault: {e}"),
        Ok(store) => {
            outcome.completed = true;
            for (i, action) in workload().into_iter().enumerate() {
                let before = data_writes.load(Ordering::SeqCst);
                if let Err(e) = tracker.run(&store, i as u64 + 1, action) {
                    assert!(
                        fault.tripped(),
                        "{ctx}: action {i} {action:?} failed without a fault: {e}"
                    );
                    assert!(
                        matches!(
                            e,
                            StoreError::Io { .. }
                                | StoreError::Catalog { .. }
                                | StoreError::Failed { .. }
                        ),
                        "{ctx}: action {i} {action:?} failed with a non-I/O error: {e}"
                    );
                    outcome.failed_at = Some(i);
                    outcome.completed = false;
                    outcome.wrote_data = data_writes.load(Ordering::SeqCst) > before;
                    break;
                }
            }
        }
    }
    mem.crash(budget.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ mode as u64);
    let store = Store::open_storage(mem.clone())
        .unwrap_or_else(|e| panic!("{ctx}: reopening after the crash: {e}"));
    tracker.verify(&store, &ctx);
    keeps_working(&store, &mem, &ctx);
    outcome
}

/// After the crash and reopen the store takes writes, flushes, snapshots and
/// deletions, and they survive another crash.
fn keeps_working(store: &Store, mem: &Arc<MemStorage>, ctx: &str) {
    let vols: Vec<String> = store.list_volumes().into_iter().map(|v| v.name).collect();
    let block = image("solo", 0, u64::MAX);
    for v in &vols {
        let h = store.volume(v).expect("a listed volume");
        h.write(&block, BS as u64, false)
            .unwrap_or_else(|e| panic!("{ctx}: writing {v} after reopen: {e}"));
        h.write(&block[..100], 3 * BS as u64 - 50, false)
            .unwrap_or_else(|e| panic!("{ctx}: writing {v} after reopen: {e}"));
    }
    store
        .create_snapshot(Target::Group("g"), "after", SnapshotKind::Crash)
        .unwrap_or_else(|e| panic!("{ctx}: snapshot after reopen: {e}"));
    store
        .delete_snapshot(Target::Group("g"), "after")
        .unwrap_or_else(|e| panic!("{ctx}: deleting a snapshot after reopen: {e}"));
    store
        .flush_all()
        .unwrap_or_else(|e| panic!("{ctx}: flush after reopen: {e}"));
    let before: BTreeMap<&String, Vec<u8>> = vols
        .iter()
        .map(|v| {
            let h = store.volume(v).expect("a listed volume");
            let mut buf = vec![0u8; h.size() as usize];
            h.read(&mut buf, 0).expect("reading");
            assert_eq!(&buf[BS..2 * BS], &block[..], "{ctx}: {v} after a write");
            (v, buf)
        })
        .collect();
    mem.crash(7);
    let store = Store::open_storage(mem.clone())
        .unwrap_or_else(|e| panic!("{ctx}: reopening after a second crash: {e}"));
    for (v, want) in before {
        let h = store.volume(v).expect("a volume that was flushed");
        let mut buf = vec![0u8; h.size() as usize];
        h.read(&mut buf, 0).expect("reading");
        assert!(
            buf == want,
            "{ctx}: {v} changed across a crash after flush_all"
        );
    }
}

fn sweep(mode: FaultMode) {
    let actions = workload();
    let index_of = |name: &str| {
        actions
            .iter()
            .position(|a| matches!(a, Action::DeleteSnapshot(_, n) if *n == name))
            .expect("the workload deletes it")
    };
    let (into_sealed, into_head) = (index_of(MERGE_INTO_SEALED), index_of(MERGE_INTO_HEAD));
    let mut hits: BTreeMap<Option<usize>, usize> = BTreeMap::new();
    let (mut merge_sealed, mut merge_head) = (0, 0);
    let mut budget = 0;
    loop {
        let o = run(budget, mode);
        if o.completed {
            break;
        }
        *hits.entry(o.failed_at).or_default() += 1;
        if o.wrote_data && o.failed_at == Some(into_sealed) {
            merge_sealed += 1;
        }
        if o.wrote_data && o.failed_at == Some(into_head) {
            merge_head += 1;
        }
        budget += 1;
        assert!(budget < 100_000, "the workload never runs through");
    }
    eprintln!(
        "{mode:?}: {budget} budgets, merge faults {merge_sealed}/{merge_head}, hits {hits:?}"
    );
    // Every action that touches storage failed for some budget. Zeroing
    // whole blocks only changes the head's map in memory (the space comes
    // back at the next flush), so it has nothing to fail.
    for (i, a) in actions.iter().enumerate() {
        if matches!(a, Action::Zeroes { off, len, .. } if off % BS == 0 && len % BS == 0) {
            assert!(
                !hits.contains_key(&Some(i)),
                "{mode:?}: action {i} {a:?} failed"
            );
            continue;
        }
        assert!(
            hits.contains_key(&Some(i)),
            "{mode:?}: no budget made action {i} {a:?} fail (hits {hits:?})"
        );
    }
    assert!(hits.contains_key(&None), "{mode:?}: opening never failed");
    assert!(
        merge_sealed > 0 && merge_head > 0,
        "{mode:?}: faults inside the merge into a sealed layer: {merge_sealed}, into a live head: {merge_head}"
    );
}

#[test]
fn crash_after_fail_at_every_operation() {
    sweep(FaultMode::Fail);
}

#[test]
fn crash_after_torn_write_at_every_operation() {
    sweep(FaultMode::Cut);
}
