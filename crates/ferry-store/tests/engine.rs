//! Behaviour of the engine's operations, one scenario per test.

use ferry_store::storage::MemStorage;
use ferry_store::storage::Storage;
use ferry_store::{DiffEnd, GcOutcome, Progress, SnapshotKind, Store, StoreError, Target};
use std::collections::BTreeMap;
use std::sync::Arc;

const MIB: u64 = 1 << 20;

fn mem_store() -> (Arc<MemStorage>, Store) {
    let storage = MemStorage::new();
    let store = Store::open_storage(storage.clone()).unwrap();
    (storage, store)
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

fn read(store: &Store, vol: &str, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    store.volume(vol).unwrap().read(&mut buf, off).unwrap();
    buf
}

#[test]
fn volumes_create_list_grow_delete() {
    let (_s, store) = mem_store();
    store.create_volume("a", MIB).unwrap();
    store.create_volume("b", 2 * MIB).unwrap();
    assert!(matches!(
        store.create_volume("a", MIB),
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(matches!(
        store.create_volume("a/b", MIB),
        Err(StoreError::InvalidName { .. })
    ));
    assert!(matches!(
        store.create_volume("c", 0),
        Err(StoreError::InvalidSize { .. })
    ));
    assert!(matches!(
        store.create_volume("c", 1000),
        Err(StoreError::InvalidSize { .. })
    ));
    let names: Vec<_> = store.list_volumes().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["a", "b"]);
    let v = store.volume("a").unwrap();
    v.write(&pattern(1, 4096), MIB - 4096, false).unwrap();
    assert!(matches!(
        v.write(&[1], MIB, false),
        Err(StoreError::OutOfRange { .. })
    ));
    store.grow_volume("a", 2 * MIB).unwrap();
    v.write(&pattern(2, 10), MIB + 5, false).unwrap();
    assert_eq!(read(&store, "a", MIB + 5, 10), pattern(2, 10));
    assert_eq!(read(&store, "a", MIB, 5), vec![0; 5]);
    assert!(matches!(
        store.grow_volume("a", MIB),
        Err(StoreError::Shrink { .. })
    ));
    store.delete_volume("a").unwrap();
    assert!(matches!(
        v.read(&mut [0u8; 1], 0),
        Err(StoreError::Deleted { .. })
    ));
    assert_eq!(store.list_volumes().len(), 1);
}

#[test]
fn partial_writes_zeroes_and_reopen() {
    let (storage, store) = mem_store();
    store.create_volume("v", MIB).unwrap();
    let v = store.volume("v").unwrap();
    let mut model = vec![0u8; MIB as usize];
    let mut put = |v: &ferry_store::VolumeHandle, off: usize, data: Vec<u8>| {
        v.write(&data, off as u64, false).unwrap();
        model[off..off + data.len()].copy_from_slice(&data);
    };
    put(&v, 4097, pattern(3, 511));
    put(&v, 0, pattern(4, 3 * 4096 + 100));
    put(&v, 8000, pattern(5, 20000));
    v.write_zeroes(5000, 9000, false).unwrap();
    model[5000..14000].fill(0);
    v.trim(32768, 8192, false).unwrap();
    model[32768..40960].fill(0);
    assert_eq!(read(&store, "v", 0, MIB as usize), model);
    store
        .create_snapshot(Target::Volume("v"), "s1", SnapshotKind::Crash)
        .unwrap();
    v.write(&pattern(6, 100), 4090, true).unwrap();
    model[4090..4190].copy_from_slice(&pattern(6, 100));
    v.flush().unwrap();
    drop(v);
    drop(store);
    storage.crash(1);
    let store = Store::open_storage(storage).unwrap();
    assert_eq!(read(&store, "v", 0, MIB as usize), model);
}

#[test]
fn group_snapshot_clone_diff_and_delete() {
    let (_s, store) = mem_store();
    store.create_volume("db-log", MIB).unwrap();
    store.create_volume("db-data", 2 * MIB).unwrap();
    store
        .create_group("db", &[("log", "db-log"), ("data", "db-data")])
        .unwrap();
    let log = store.volume("db-log").unwrap();
    let data = store.volume("db-data").unwrap();
    log.write(&pattern(1, 8192), 0, false).unwrap();
    data.write(&pattern(2, 4096), 4096 * 10, false).unwrap();
    let s1 = store
        .create_snapshot(Target::Group("db"), "s1", SnapshotKind::Crash)
        .unwrap();
    assert_eq!(s1.members.len(), 2);
    data.write(&pattern(3, 4096), 4096 * 11, false).unwrap();
    data.write(&pattern(4, 4096), 4096 * 10, false).unwrap();
    store
        .create_snapshot(Target::Group("db"), "s2", SnapshotKind::App)
        .unwrap();
    let diff = store
        .diff(Target::Group("db"), "s1", DiffEnd::Snapshot("s2"))
        .unwrap();
    assert_eq!(diff["data"].iter().collect::<Vec<_>>(), vec![10, 11]);
    assert!(diff["log"].is_empty());
    log.write(&pattern(5, 1), 3 * 4096 + 7, false).unwrap();
    let live = store
        .diff(Target::Group("db"), "s2", DiffEnd::Live)
        .unwrap();
    assert_eq!(live["log"].iter().collect::<Vec<_>>(), vec![3]);
    assert!(
        store
            .diff(Target::Group("db"), "s2", DiffEnd::Snapshot("s1"))
            .is_err()
    );

    let g = store.clone_group("db", "s1", "test").unwrap();
    assert_eq!(g.slots["data"], "test-data");
    assert_eq!(read(&store, "test-data", 4096 * 10, 4096), pattern(2, 4096));
    assert_eq!(read(&store, "test-data", 4096 * 11, 4096), vec![0; 4096]);
    store
        .volume("test-data")
        .unwrap()
        .write(&pattern(9, 4096), 0, false)
        .unwrap();
    assert_eq!(read(&store, "db-data", 0, 4096), vec![0; 4096]);

    store.delete_snapshot(Target::Group("db"), "s1").unwrap();
    // the clone still holds s1's layers
    assert_eq!(read(&store, "test-data", 4096 * 10, 4096), pattern(2, 4096));
    store.delete_snapshot(Target::Group("db"), "s2").unwrap();
    assert_eq!(
        read(&store, "db-data", 4096 * 10, 8192),
        [pattern(4, 4096), pattern(3, 4096)].concat()
    );
    assert_eq!(read(&store, "db-log", 0, 8192), pattern(1, 8192));
}

#[test]
fn sync_replaces_chosen_slots_and_keeps_undo() {
    let (_s, store) = mem_store();
    for n in ["p-sys", "p-data", "t-sys", "t-data"] {
        store.create_volume(n, MIB).unwrap();
    }
    store
        .create_group("prod", &[("system", "p-sys"), ("data", "p-data")])
        .unwrap();
    store
        .create_group("test", &[("system", "t-sys"), ("data", "t-data")])
        .unwrap();
    store
        .volume("p-data")
        .unwrap()
        .write(&pattern(1, 4096), 0, false)
        .unwrap();
    store
        .volume("t-data")
        .unwrap()
        .write(&pattern(2, 4096), 0, false)
        .unwrap();
    store
        .volume("t-sys")
        .unwrap()
        .write(&pattern(3, 4096), 0, false)
        .unwrap();
    store
        .create_snapshot(Target::Group("prod"), "night", SnapshotKind::Crash)
        .unwrap();
    let report = store.sync("prod", "night", "test", &["data"]).unwrap();
    assert_eq!(read(&store, "t-data", 0, 4096), pattern(1, 4096));
    assert_eq!(read(&store, "t-sys", 0, 4096), pattern(3, 4096));
    let undo = store
        .open_snapshot(Target::Group("test"), &report.undo_snapshot, Some("data"))
        .unwrap();
    let mut buf = vec![0u8; 4096];
    undo.read(&mut buf, 0).unwrap();
    assert_eq!(buf, pattern(2, 4096));
    assert!(store.sync("prod", "night", "test", &["nope"]).is_err());
}

#[test]
fn tags_and_space() {
    let (_s, store) = mem_store();
    store.create_volume("v", MIB).unwrap();
    store.create_group("g", &[("data", "v")]).unwrap();
    store
        .set_tags("g", BTreeMap::from([("team".into(), "web".into())]))
        .unwrap();
    assert_eq!(store.group("g").unwrap().tags["team"], "web");
    let v = store.volume("v").unwrap();
    v.write(&pattern(1, 8192), 0, false).unwrap();
    store
        .create_snapshot(Target::Group("g"), "s", SnapshotKind::Crash)
        .unwrap();
    v.write(&pattern(2, 4096), 0, false).unwrap();
    let space = store.space();
    assert_eq!(space[0].logical, MIB);
    assert_eq!(space[0].allocated, 8192);
    assert_eq!(space[0].snapshot_only, 4096);
    assert!(matches!(
        store.delete_volume("v"),
        Err(StoreError::InUse { .. })
    ));
}

/// The largest volume keeps its last block on a real file system: ext4's
/// largest file is 16 TiB less 4 KiB, and exactly 16 TiB once failed with
/// EFBIG (found by schemathesis through the API).
#[test]
fn the_largest_volume_holds_its_last_block_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let max = ferry_store::MAX_VOLUME_SIZE;
    store.create_volume("big", max).unwrap();
    let last = max - 4096;
    let data = pattern(7, 4096);
    store
        .volume("big")
        .unwrap()
        .write(&data, last, false)
        .unwrap();
    store.volume("big").unwrap().flush().unwrap();
    assert_eq!(read(&store, "big", last, 4096), data);
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(read(&store, "big", last, 4096), data);
    assert!(matches!(
        store.create_volume("bigger", max + 4096),
        Err(StoreError::InvalidSize { .. })
    ));
}

fn snapshot_bytes(store: &Store, group: &str, snap: &str, len: usize) -> Vec<u8> {
    let r = store
        .open_snapshot(Target::Group(group), snap, Some("data"))
        .unwrap();
    let mut buf = vec![0u8; len];
    r.read(&mut buf, 0).unwrap();
    buf
}

fn layer_count(storage: &MemStorage) -> usize {
    storage
        .list_dir("layers")
        .unwrap()
        .iter()
        .filter(|n| n.ends_with(".map"))
        .count()
}

/// A snapshot deletion's reclaim stopped in the middle of a merge into the
/// live head: every block reads as before, and a later collection (or an
/// open) finishes it.
#[test]
fn a_cancelled_merge_leaves_every_block_and_a_later_collection_finishes() {
    const BLOCKS: usize = 2048;
    let (storage, store) = mem_store();
    store.create_volume("v", (BLOCKS * 4096) as u64).unwrap();
    store.create_group("g", &[("data", "v")]).unwrap();
    let v = store.volume("v").unwrap();
    let len = BLOCKS * 4096;
    // s0: every block 1; s1: every block but 0..100 rewritten as 2; live: 0..100 and 300..400 as 3
    let mut s0 = pattern(1, len);
    s0.iter_mut().step_by(4096).for_each(|b| *b = 0xa1);
    v.write(&s0, 0, false).unwrap();
    store
        .create_snapshot(Target::Group("g"), "s0", SnapshotKind::Crash)
        .unwrap();
    let mut s1 = s0.clone();
    s1[100 * 4096..].copy_from_slice(&pattern(2, len - 100 * 4096));
    v.write(&s1[100 * 4096..], 100 * 4096, false).unwrap();
    store
        .create_snapshot(Target::Group("g"), "s1", SnapshotKind::Crash)
        .unwrap();
    let mut live = s1.clone();
    for range in [0..100, 300..400] {
        let (a, b) = (range.start * 4096, range.end * 4096);
        live[a..b].copy_from_slice(&pattern(3, b - a));
        v.write(&live[a..b], a as u64, false).unwrap();
    }
    assert_eq!(layer_count(&storage), 3);

    let gone = store
        .delete_snapshot_record(Target::Group("g"), "s1")
        .unwrap();
    assert_eq!(gone.name, "s1");
    assert!(!store.snapshot_exists(gone.id));
    assert!(store.snapshot(Target::Group("g"), "s1").is_err());
    // cancel once two chunks (512 blocks) are merged
    let progress = Progress::new().with_hook(Arc::new(|p: &Progress| {
        if p.done() >= 512 {
            p.cancel();
        }
    }));
    assert_eq!(
        store.collect_garbage_with(&progress).unwrap(),
        GcOutcome::Cancelled
    );
    // the merge copies s1's blocks the live head does not hide
    assert_eq!(progress.total(), (BLOCKS - 100 - 100) as u64);
    assert_eq!(progress.done(), 512);
    assert_eq!(layer_count(&storage), 3, "s1's layer is still in the chain");
    assert_eq!(read(&store, "v", 0, len), live);
    assert_eq!(snapshot_bytes(&store, "g", "s0", len), s0);
    // I/O goes on between the two halves
    live[1000 * 4096..1001 * 4096].copy_from_slice(&pattern(4, 4096));
    v.write(&pattern(4, 4096), 1000 * 4096, false).unwrap();
    v.flush().unwrap();

    let rest = Progress::new();
    assert_eq!(
        store.collect_garbage_with(&rest).unwrap(),
        GcOutcome::Finished
    );
    assert_eq!(rest.done(), rest.total());
    assert_eq!(rest.done(), (BLOCKS - 200 - 512 - 1) as u64);
    assert_eq!(layer_count(&storage), 2, "s1's layer is merged away");
    assert_eq!(read(&store, "v", 0, len), live);
    assert_eq!(snapshot_bytes(&store, "g", "s0", len), s0);
    drop(v);
    drop(store);
    let store = Store::open_storage(storage.clone()).unwrap();
    assert_eq!(read(&store, "v", 0, len), live);
    assert_eq!(snapshot_bytes(&store, "g", "s0", len), s0);
    assert_eq!(layer_count(&storage), 2);
}

/// A reclaim cancelled before it copied anything is finished by the next open.
#[test]
fn a_cancelled_reclaim_resumes_at_open() {
    let (storage, store) = mem_store();
    store.create_volume("v", 4 * MIB).unwrap();
    store.create_group("g", &[("data", "v")]).unwrap();
    let v = store.volume("v").unwrap();
    let data = pattern(7, (4 * MIB) as usize);
    v.write(&data, 0, false).unwrap();
    store
        .create_snapshot(Target::Group("g"), "s", SnapshotKind::Crash)
        .unwrap();
    v.write(&pattern(8, 4096), 0, false).unwrap();
    v.flush().unwrap();
    store
        .delete_snapshot_record(Target::Group("g"), "s")
        .unwrap();
    let progress = Progress::new();
    progress.cancel();
    assert_eq!(
        store.collect_garbage_with(&progress).unwrap(),
        GcOutcome::Cancelled
    );
    assert_eq!(progress.done(), 0);
    assert_eq!(layer_count(&storage), 2);
    drop(v);
    drop(store);
    let store = Store::open_storage(storage.clone()).unwrap();
    assert_eq!(layer_count(&storage), 1);
    let mut want = data;
    want[..4096].copy_from_slice(&pattern(8, 4096));
    assert_eq!(read(&store, "v", 0, want.len()), want);
}

/// Rewrites every layer of a closed store in format 1 (data addressed like
/// the volume, maps of bitmaps), as ferry wrote them before packed layers.
fn downgrade_to_format_1(storage: &MemStorage) {
    use ferry_store::layer::journal;
    for name in storage.list_dir("layers").unwrap() {
        let Some(stem) = name.strip_suffix(".map") else {
            continue;
        };
        let map_name = format!("layers/{name}");
        let data_name = format!("layers/{stem}.data");
        let mapfile = storage.open_file(&map_name, false).unwrap();
        let mut bytes = vec![0u8; mapfile.len().unwrap() as usize];
        mapfile.read_at(&mut bytes, 0).unwrap();
        let decoded = journal::decode(&bytes).unwrap();
        assert_eq!(decoded.version, journal::MAP_VERSION);
        let data = storage.open_file(&data_name, false).unwrap();
        let mut blocks = Vec::new();
        for e in decoded.map.slots.iter() {
            for i in 0..e.len {
                let mut buf = vec![0u8; 4096];
                data.read_at(&mut buf, u64::from(e.slot + i) * 4096)
                    .unwrap();
                blocks.push((e.block + i, buf));
            }
        }
        data.set_len(0).unwrap();
        for (b, buf) in &blocks {
            data.write_at(buf, u64::from(*b) * 4096).unwrap();
        }
        data.sync_data().unwrap();
        let mut file =
            journal::encode_header_version(decoded.layer, journal::MAP_VERSION_1).to_vec();
        let data_blocks = &decoded.map.present - &decoded.map.zeroed;
        file.extend(journal::encode_record_v1(
            1,
            &data_blocks,
            &decoded.map.zeroed,
        ));
        mapfile.set_len(0).unwrap();
        mapfile.write_at(&file, 0).unwrap();
        mapfile.sync_data().unwrap();
    }
}

/// A store whose layers are in format 1 opens, reads the same, rewrites its
/// maps in format 2 and goes on taking writes, snapshots and deletions.
#[test]
fn a_format_1_store_opens_reads_and_moves_on() {
    let (storage, store) = mem_store();
    store.create_volume("v", MIB).unwrap();
    store.create_group("g", &[("data", "v")]).unwrap();
    let v = store.volume("v").unwrap();
    v.write(&pattern(1, 64 * 1024), 128 * 1024, false).unwrap();
    v.write(&pattern(2, 8192), 0, false).unwrap();
    v.write_zeroes(4096, 4096, false).unwrap();
    store
        .create_snapshot(Target::Group("g"), "s", SnapshotKind::Crash)
        .unwrap();
    v.write(&pattern(3, 3 * 4096), 130 * 1024, false).unwrap();
    store.flush_all().unwrap();
    let live = read(&store, "v", 0, MIB as usize);
    let snap = snapshot_bytes(&store, "g", "s", MIB as usize);
    drop((v, store));

    downgrade_to_format_1(&storage);
    let store = Store::open_storage(storage.clone()).unwrap();
    assert_eq!(read(&store, "v", 0, MIB as usize), live);
    assert_eq!(snapshot_bytes(&store, "g", "s", MIB as usize), snap);
    for name in storage.list_dir("layers").unwrap() {
        if name.ends_with(".map") {
            let f = storage.open_file(&format!("layers/{name}"), false).unwrap();
            let mut b = vec![0u8; f.len().unwrap() as usize];
            f.read_at(&mut b, 0).unwrap();
            let d = ferry_store::layer::journal::decode(&b).unwrap();
            assert_eq!(
                d.version,
                ferry_store::layer::journal::MAP_VERSION,
                "{name}"
            );
        }
    }
    // Writes after the conversion, a new snapshot, the old one deleted (a
    // merge of a converted layer into the live head), a reopen.
    let v = store.volume("v").unwrap();
    v.write(&pattern(4, 4096), 0, false).unwrap();
    v.write(&pattern(5, 4096), 900 * 1024, false).unwrap();
    let mut want = live.clone();
    want[..4096].copy_from_slice(&pattern(4, 4096));
    want[900 * 1024..904 * 1024].copy_from_slice(&pattern(5, 4096));
    store
        .create_snapshot(Target::Group("g"), "t", SnapshotKind::Crash)
        .unwrap();
    store.delete_snapshot(Target::Group("g"), "s").unwrap();
    store.flush_all().unwrap();
    assert_eq!(read(&store, "v", 0, MIB as usize), want);
    drop((v, store));
    let store = Store::open_storage(storage).unwrap();
    assert_eq!(read(&store, "v", 0, MIB as usize), want);
    assert_eq!(snapshot_bytes(&store, "g", "t", MIB as usize), want);
}

/// Volume `v` of `blocks` blocks in group `g`, all written (the bytes
/// returned first), snapshot `s0` of it, then `rewritten` blocks written
/// again: the bytes now are returned second.
fn large_snapshot_then_rewrite(
    store: &Store,
    blocks: usize,
    rewritten: std::ops::Range<usize>,
) -> (ferry_store::VolumeHandle, Vec<u8>, Vec<u8>) {
    store.create_volume("v", (blocks * 4096) as u64).unwrap();
    store.create_group("g", &[("data", "v")]).unwrap();
    let v = store.volume("v").unwrap();
    let s0 = pattern(1, blocks * 4096);
    v.write(&s0, 0, false).unwrap();
    store
        .create_snapshot(Target::Group("g"), "s0", SnapshotKind::Crash)
        .unwrap();
    let (from, to) = (rewritten.start * 4096, rewritten.end * 4096);
    let mut now = s0.clone();
    now[from..to].copy_from_slice(&pattern(2, to - from));
    v.write(&now[from..to], from as u64, false).unwrap();
    (v, s0, now)
}

/// Deleting a large snapshot whose only child is a small sealed snapshot
/// (replication's points) copies the small side: the child's blocks go
/// into the parent, which takes the child's place; every block reads as
/// before, across a reopen.
#[test]
fn deleting_a_large_snapshot_before_a_small_one_copies_only_the_small_one() {
    const BLOCKS: usize = 2048;
    let (storage, store) = mem_store();
    let len = BLOCKS * 4096;
    // s1: 100 blocks rewritten and 20 trimmed
    let (v, _s0, mut s1) = large_snapshot_then_rewrite(&store, BLOCKS, 500..600);
    v.write_zeroes(700 * 4096, 20 * 4096, false).unwrap();
    s1[700 * 4096..720 * 4096].fill(0);
    store
        .create_snapshot(Target::Group("g"), "s1", SnapshotKind::Crash)
        .unwrap();
    // a clone of s1 and live writes on top
    store
        .clone_volume(Target::Group("g"), "s1", Some("data"), "c")
        .unwrap();
    let mut live = s1.clone();
    live[0..4096].copy_from_slice(&pattern(3, 4096));
    v.write(&live[0..4096], 0, false).unwrap();
    v.flush().unwrap();
    assert_eq!(layer_count(&storage), 4);

    store
        .delete_snapshot_record(Target::Group("g"), "s0")
        .unwrap();
    let progress = Progress::new();
    assert_eq!(
        store.collect_garbage_with(&progress).unwrap(),
        GcOutcome::Finished
    );
    assert_eq!(progress.done(), 120, "only s1's blocks are copied");
    assert_eq!(layer_count(&storage), 3);
    assert_eq!(read(&store, "v", 0, len), live);
    assert_eq!(read(&store, "c", 0, len), s1);
    assert_eq!(snapshot_bytes(&store, "g", "s1", len), s1);
    drop(v);
    drop(store);
    let store = Store::open_storage(storage.clone()).unwrap();
    let got = read(&store, "v", 0, len);
    let bad: Vec<usize> = (0..BLOCKS)
        .filter(|b| got[b * 4096..(b + 1) * 4096] != live[b * 4096..(b + 1) * 4096])
        .collect();
    assert!(
        bad.is_empty(),
        "blocks differ after reopen: {:?}..",
        &bad[..bad.len().min(10)]
    );
    assert_eq!(read(&store, "c", 0, len), s1);
    assert_eq!(snapshot_bytes(&store, "g", "s1", len), s1);
    assert_eq!(layer_count(&storage), 3);
}

/// A snapshot still being read (its export's requests in flight as it is
/// deleted) keeps its bytes while its space is given back: the merge then
/// goes the usual way (its blocks into the child) instead of the child's
/// blocks into its layer, which would overwrite what the reader reads.
#[test]
fn a_deleted_snapshot_still_being_read_keeps_its_bytes_through_the_merge() {
    const BLOCKS: usize = 1024;
    let (_storage, store) = mem_store();
    let len = BLOCKS * 4096;
    // s1 (the small child): 50 blocks rewritten
    let (_v, s0, s1) = large_snapshot_then_rewrite(&store, BLOCKS, 100..150);
    store
        .create_snapshot(Target::Group("g"), "s1", SnapshotKind::Crash)
        .unwrap();
    let reader = store
        .open_snapshot(Target::Group("g"), "s0", Some("data"))
        .unwrap();
    store
        .delete_snapshot_record(Target::Group("g"), "s0")
        .unwrap();
    let progress = Progress::new();
    assert_eq!(
        store.collect_garbage_with(&progress).unwrap(),
        GcOutcome::Finished
    );
    assert_eq!(progress.done(), (BLOCKS - 50) as u64, "s0's blocks into s1");
    let mut got = vec![0u8; len];
    reader.read(&mut got, 0).unwrap();
    assert!(
        got == s0,
        "the reader of the deleted snapshot saw other bytes (blocks 100..150 are s1's?)"
    );
    assert_eq!(snapshot_bytes(&store, "g", "s1", len), s1);
    assert_eq!(read(&store, "v", 0, len), s1);
}

/// The bytes iovecs point at, gathered the way the NBD server uses them: by
/// a system call (`pwritev` into a memory file), never by dereferencing.
fn gather(iov: &[libc::iovec]) -> Vec<u8> {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    // SAFETY: a new file descriptor, owned by the `File` below.
    let fd = unsafe { libc::memfd_create(c"gather".as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just made and is owned by nothing else.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut at = 0;
    for batch in iov.chunks(512) {
        let want: usize = batch.iter().map(|v| v.iov_len).sum();
        // SAFETY: the iovecs are valid for reading during this call (the
        // caller's contract); the kernel copies from them.
        let n = unsafe { libc::pwritev(fd, batch.as_ptr(), batch.len() as i32, at) };
        assert_eq!(
            n,
            want as isize,
            "pwritev: {}",
            std::io::Error::last_os_error()
        );
        at += n as i64;
    }
    let mut out = Vec::new();
    file.read_to_end(&mut out).unwrap();
    out
}

/// A large read is planned (resolved, its pages found in memory) before the
/// NBD server waits for its socket, and sent after. Between the two, a trim
/// and a flush may give the read's slots to other blocks, or a snapshot may
/// change the chain: the plan must then not be sent (the server reads the
/// usual way), never send what the slots hold now.
#[test]
fn a_planned_mapped_read_is_not_sent_once_its_slots_may_have_changed_hands() {
    const KIB64: u64 = 64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.create_volume("v", 4 * MIB).unwrap();
    let v = store.volume("v").unwrap();
    let a = pattern(1, KIB64 as usize);
    let b = pattern(2, KIB64 as usize);
    v.write(&a, 0, false).unwrap();
    v.flush().unwrap();
    let plan = v.plan_mapped(0, KIB64).unwrap().expect("mapped");
    // Nothing changed: the plan is sent as made.
    assert!(plan.send(gather).unwrap().unwrap() == a);
    // The read's blocks are trimmed; the flush gives their slots back
    // (lowest first), and `b`, written elsewhere, takes them.
    v.trim(0, KIB64, false).unwrap();
    v.flush().unwrap();
    v.write(&b, 2 * MIB, false).unwrap();
    if let Some(got) = plan.send(gather).unwrap() {
        panic!(
            "the planned read was sent after its slots changed hands: {}",
            if got == b {
                "another block's bytes"
            } else {
                "not the trimmed zeros"
            }
        );
    }
    // A fresh plan sends what the blocks hold now.
    let plan = v.plan_mapped(0, 3 * MIB).unwrap().expect("mapped");
    let got = plan.send(gather).unwrap().unwrap();
    assert!(got[..KIB64 as usize].iter().all(|&x| x == 0), "trimmed");
    assert!(got[2 * MIB as usize..][..KIB64 as usize] == b);
    // A snapshot changes the chain: the plan is not sent either.
    store
        .create_snapshot(Target::Volume("v"), "s", SnapshotKind::Crash)
        .unwrap();
    assert!(
        plan.send(gather).unwrap().is_none(),
        "sent across a snapshot"
    );
    // A plan of a deleted volume is not sent.
    let plan = v.plan_mapped(0, KIB64).unwrap().expect("mapped");
    drop(v);
    store.delete_snapshot(Target::Volume("v"), "s").unwrap();
    store.delete_volume("v").unwrap();
    assert!(plan.send(gather).is_err(), "the volume is gone");
}

/// Blocks written one by one in a shuffled order sit in shuffled slots; a
/// large read or write over them (one vectored call per run of adjacent
/// slots, on real files) must still put every byte in its place, also when
/// the blocks come from two layers of a chain.
#[test]
fn large_requests_over_blocks_in_shuffled_slots_read_and_write_every_byte_in_place() {
    const BLOCKS: u64 = 1024;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.create_volume("v", BLOCKS * 4096).unwrap();
    store.create_group("g", &[("v", "v")]).unwrap();
    let v = store.volume("v").unwrap();
    let block = |b: u64, seed: u8| pattern(seed.wrapping_add(b as u8), 4096);
    let mut want = vec![0u8; (BLOCKS * 4096) as usize];
    let put = |want: &mut Vec<u8>, b: u64, seed: u8| {
        let bytes = block(b, seed);
        v.write(&bytes, b * 4096, false).unwrap();
        want[(b * 4096) as usize..((b + 1) * 4096) as usize].copy_from_slice(&bytes);
    };
    // 389 is odd, so i * 389 mod 1024 visits every block once.
    for i in 0..BLOCKS {
        put(&mut want, (i * 389) % BLOCKS, 1);
    }
    store
        .create_snapshot(Target::Group("g"), "s", SnapshotKind::Crash)
        .unwrap();
    // Every third block again, shuffled, into the new head.
    for i in 0..BLOCKS {
        let b = (i * 877) % BLOCKS;
        if b.is_multiple_of(3) {
            put(&mut want, b, 2);
        }
    }
    let check = |from: u64, len: u64, want: &[u8]| {
        let got = read(&store, "v", from, len as usize);
        assert!(
            got == want[from as usize..(from + len) as usize],
            "{len} bytes at {from} differ"
        );
    };
    check(0, BLOCKS * 4096, &want);
    check(100, 3 * MIB + 5, &want);
    check(4095, 2, &want);
    // One large unaligned write over shuffled slots of the head, then all again.
    let big = pattern(9, (2 * MIB + 1000) as usize);
    v.write(&big, MIB / 2 + 300, false).unwrap();
    want[(MIB / 2 + 300) as usize..(MIB / 2 + 300) as usize + big.len()].copy_from_slice(&big);
    check(0, BLOCKS * 4096, &want);
    // All of it was just written, so it is in memory: the read that never
    // waits for the device (an NBD reader's first try) gives the same bytes.
    for (from, len) in [
        (0, BLOCKS * 4096),
        (100, 3 * MIB + 5),
        (4095, 2),
        (8192, 4096),
    ] {
        let mut got = vec![0xA5u8; len as usize];
        assert!(
            v.try_read(&mut got, from).unwrap(),
            "{len} at {from} in memory"
        );
        assert!(
            got == want[from as usize..(from + len) as usize],
            "{len} at {from}"
        );
    }
    let snap = store
        .open_snapshot(Target::Group("g"), "s", Some("v"))
        .unwrap();
    let (mut plain, mut tried) = (vec![0u8; 2 * MIB as usize], vec![1u8; 2 * MIB as usize]);
    snap.read(&mut plain, 12345).unwrap();
    assert!(snap.try_read(&mut tried, 12345).unwrap());
    assert!(plain == tried, "a snapshot's try_read");
    // Reads handed to the kernel from mappings of the layers' files (the NBD
    // server's sends of large reads) show the same bytes, zeros included.
    v.trim(300 * 4096 + 4096, 40 * 4096, false).unwrap();
    want[300 * 4096 + 4096..340 * 4096 + 4096].fill(0);
    for (from, len) in [
        (0, BLOCKS * 4096),
        (100, 3 * MIB + 5),
        (4095, 2),
        (290 * 4096 + 7, 60 * 4096),
        (301 * 4096, 4096),
    ] {
        let got = v
            .plan_mapped(from, len)
            .unwrap()
            .expect("files on a file system are mapped")
            .send(gather)
            .unwrap()
            .expect("nothing changed since the plan");
        assert!(
            got == want[from as usize..(from + len) as usize],
            "mapped {len} at {from}"
        );
    }
    let plan = snap.plan_mapped(12345, 2 * MIB).unwrap().unwrap();
    assert!(
        plan.send(gather).unwrap().unwrap() == plain,
        "a snapshot's mapped read"
    );
    assert!(v.plan_mapped(BLOCKS * 4096 - 1, 2).is_err(), "past the end");
    store.volume("v").unwrap().flush().unwrap();
    drop(v);
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let got = read(&store, "v", 0, (BLOCKS * 4096) as usize);
    assert!(got == want, "after a reopen");
}
