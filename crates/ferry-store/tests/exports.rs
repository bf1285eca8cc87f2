//! Exports in the catalog: creation and its checks, listing, removal,
//! persistence, the cascades from deleted volumes and snapshots, the change
//! listener, and the disks they open.

use ferry_store::storage::MemStorage;
use ferry_store::{
    ExportDisk, ExportKind, ExportSpec, SnapshotKind, Store, StoreError, Target, VolumeHandle,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

const MIB: u64 = 1 << 20;

fn mem_store() -> (Arc<MemStorage>, Store) {
    let storage = MemStorage::new();
    let store = Store::open_storage(storage.clone()).unwrap();
    (storage, store)
}

fn vol(volume: &str) -> ExportSpec<'_> {
    ExportSpec::Volume { volume }
}

fn group_snap<'a>(group: &'a str, snapshot: &'a str, slot: Option<&'a str>) -> ExportSpec<'a> {
    ExportSpec::Snapshot {
        target: Target::Group(group),
        snapshot,
        slot,
    }
}

fn names(store: &Store) -> Vec<String> {
    store.list_exports().into_iter().map(|e| e.name).collect()
}

/// Counts the calls of a listener registered on `store`.
fn counter(store: &Store) -> Arc<AtomicUsize> {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    store.on_exports_changed(Box::new(move || {
        n2.fetch_add(1, Ordering::SeqCst);
    }));
    n
}

fn read(disk: &ExportDisk, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    disk.read(&mut buf, off).unwrap();
    buf
}

fn write(v: &VolumeHandle, byte: u8, off: u64) {
    v.write(&[byte; 4096], off, false).unwrap();
}

/// A group `web` with slots `data` (web-data, 1 MiB) and `log` (web-log,
/// 2 MiB), a lone volume `solo` with a snapshot `s0`, and a snapshot
/// `web@monday`.
fn fixture(store: &Store) {
    store.create_volume("web-data", MIB).unwrap();
    store.create_volume("web-log", 2 * MIB).unwrap();
    store.create_volume("solo", 3 * MIB).unwrap();
    store
        .create_group("web", &[("data", "web-data"), ("log", "web-log")])
        .unwrap();
    store
        .create_snapshot(Target::Volume("solo"), "s0", SnapshotKind::Crash)
        .unwrap();
    store
        .create_snapshot(Target::Group("web"), "monday", SnapshotKind::Crash)
        .unwrap();
}

#[test]
fn create_list_show_remove() {
    let (_s, store) = mem_store();
    fixture(&store);
    assert!(store.list_exports().is_empty());

    let e = store.create_export("web-disk", vol("web-data")).unwrap();
    assert_eq!(e.name, "web-disk");
    assert_eq!(e.kind, ExportKind::Volume);
    assert!(!e.read_only, "a volume export is read-write");
    assert_eq!(e.size, MIB);
    assert_eq!(e.volume.as_deref(), Some("web-data"));
    assert_eq!((e.group, e.snapshot, e.slot), (None, None, None));
    assert!(e.created > 0);

    let e = store
        .create_export("web-log-mon", group_snap("web", "monday", Some("log")))
        .unwrap();
    assert_eq!(e.kind, ExportKind::Snapshot);
    assert!(e.read_only, "a snapshot export is read-only");
    assert_eq!(e.size, 2 * MIB);
    assert_eq!(e.group.as_deref(), Some("web"));
    assert_eq!(e.snapshot.as_deref(), Some("monday"));
    assert_eq!(e.slot.as_deref(), Some("log"));
    assert_eq!(e.volume.as_deref(), Some("web-log"), "the copy's volume");

    let e = store
        .create_export(
            "solo-s0",
            ExportSpec::Snapshot {
                target: Target::Volume("solo"),
                snapshot: "s0",
                slot: None,
            },
        )
        .unwrap();
    assert!(e.read_only);
    assert_eq!(e.size, 3 * MIB);
    assert_eq!(e.volume.as_deref(), Some("solo"));
    assert_eq!(e.snapshot.as_deref(), Some("s0"));
    assert_eq!((e.group, e.slot), (None, None));

    // the same volume may have two names
    store.create_export("web-disk-2", vol("web-data")).unwrap();
    assert_eq!(
        names(&store),
        ["solo-s0", "web-disk", "web-disk-2", "web-log-mon"]
    );
    assert_eq!(
        store.export("web-log-mon").unwrap(),
        e_named(&store, "web-log-mon")
    );

    store.remove_export("web-disk").unwrap();
    assert_eq!(names(&store), ["solo-s0", "web-disk-2", "web-log-mon"]);
    assert!(matches!(
        store.export("web-disk"),
        Err(StoreError::NotFound { kind: "export", .. })
    ));
    // removing an export leaves its volume and snapshot alone
    assert!(store.volume("web-data").is_ok());
    store.remove_export("web-log-mon").unwrap();
    assert!(store.snapshot(Target::Group("web"), "monday").is_ok());
    // the name is free again
    store.create_export("web-disk", vol("web-log")).unwrap();
    assert_eq!(store.export("web-disk").unwrap().size, 2 * MIB);
}

fn e_named(store: &Store, name: &str) -> ferry_store::ExportInfo {
    store
        .list_exports()
        .into_iter()
        .find(|e| e.name == name)
        .unwrap()
}

#[test]
fn every_bad_request_is_refused_by_name_and_changes_nothing() {
    let (_s, store) = mem_store();
    fixture(&store);
    store.create_export("taken", vol("web-data")).unwrap();
    let solo = |slot| ExportSpec::Snapshot {
        target: Target::Volume("solo"),
        snapshot: "s0",
        slot,
    };
    let cases: Vec<(&str, ExportSpec, &str)> = vec![
        ("a/b", vol("web-data"), "invalid export name \"a/b\""),
        ("", vol("web-data"), "invalid export name"),
        ("Web", vol("web-data"), "invalid export name"),
        ("taken", vol("web-log"), "export \"taken\" already exists"),
        ("n", vol("nope"), "volume \"nope\" does not exist"),
        (
            "n",
            group_snap("nope", "monday", Some("data")),
            "group \"nope\" does not exist",
        ),
        (
            "n",
            group_snap("web", "nope", Some("data")),
            "snapshot \"web@nope\" does not exist",
        ),
        (
            "n",
            group_snap("web", "monday", None),
            "snapshot \"web@monday\" is a group's snapshot: name one of its slots (data, log)",
        ),
        (
            "n",
            group_snap("web", "monday", Some("nope")),
            "slot \"nope in snapshot web@monday\" does not exist",
        ),
        (
            "n",
            solo(Some("data")),
            "snapshot \"solo@s0\" is a lone volume's snapshot, which has no slots",
        ),
        (
            "n",
            ExportSpec::Snapshot {
                target: Target::Volume("solo"),
                snapshot: "nope",
                slot: None,
            },
            "snapshot \"solo@nope\" does not exist",
        ),
    ];
    for (name, spec, says) in cases {
        let err = store.create_export(name, spec).unwrap_err();
        assert!(
            err.to_string().contains(says),
            "{name} {spec:?}: {err} (wanted {says:?})"
        );
        let checked = store.check_export(name, spec).unwrap_err();
        assert_eq!(checked.to_string(), err.to_string(), "check_export agrees");
    }
    assert!(matches!(
        store.create_export("n", group_snap("web", "monday", None)),
        Err(StoreError::Slot { .. })
    ));
    assert!(matches!(
        store.create_export("n", group_snap("web", "monday", Some("nope"))),
        Err(StoreError::NotFound { kind: "slot", .. })
    ));
    store.check_export("fine", solo(None)).unwrap();
    assert_eq!(names(&store), ["taken"], "nothing was created");
    for e in [
        store.remove_export("nope").unwrap_err(),
        store.export("nope").unwrap_err(),
        store.open_export("nope").unwrap_err(),
    ] {
        assert!(
            matches!(e, StoreError::NotFound { kind: "export", .. }),
            "{e}"
        );
    }
}

#[test]
fn exports_survive_reopen() {
    let (storage, store) = mem_store();
    fixture(&store);
    store.create_export("a", vol("web-data")).unwrap();
    store
        .create_export("b", group_snap("web", "monday", Some("data")))
        .unwrap();
    let before = store.list_exports();
    drop(store);
    let store = Store::open_storage(storage.clone()).unwrap();
    assert_eq!(store.list_exports(), before);
    store.remove_export("a").unwrap();
    drop(store);
    let store = Store::open_storage(storage).unwrap();
    assert_eq!(names(&store), ["b"]);
    // ids are never reused: a new export after reopen gets a fresh one
    let c = store.create_export("c", vol("web-data")).unwrap();
    assert!(before.iter().all(|e| e.id != c.id));
}

#[test]
fn a_catalog_without_the_exports_table_opens() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.create_volume("v", MIB).unwrap();
    store.create_export("e", vol("v")).unwrap();
    drop(store);
    // make it a catalog of before exports: no such table at all
    {
        let db = redb::Database::open(dir.path().join("catalog.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("exports");
        assert!(tx.delete_table(table).unwrap());
        tx.commit().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert!(store.list_exports().is_empty());
    assert_eq!(store.list_volumes().len(), 1);
    store.create_export("e", vol("v")).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(names(&store), ["e"]);
}

#[test]
fn deleting_a_volume_removes_its_exports_and_tells_the_listeners() {
    let (storage, store) = mem_store();
    fixture(&store);
    store.create_volume("spare", MIB).unwrap();
    let calls = counter(&store);
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    {
        // a listener may call the store: no lock is held when it runs
        let (store2, seen) = (store.clone(), seen.clone());
        store.on_exports_changed(Box::new(move || {
            let names: Vec<String> = store2.list_exports().into_iter().map(|e| e.name).collect();
            seen.lock().push(names);
        }));
    }
    store.create_export("spare-1", vol("spare")).unwrap();
    store.create_export("spare-2", vol("spare")).unwrap();
    store.create_export("other", vol("web-data")).unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "creating changes no export"
    );

    // refused deletions remove nothing and tell nobody
    assert!(store.delete_volume("web-data").is_err());
    assert_eq!(names(&store), ["other", "spare-1", "spare-2"]);
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    store.delete_volume("spare").unwrap();
    assert_eq!(names(&store), ["other"]);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one transaction, one call");
    assert_eq!(seen.lock().clone(), [vec!["other".to_owned()]]);

    // a volume without exports: its deletion tells nobody
    store.create_volume("plain", MIB).unwrap();
    store.delete_volume("plain").unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    store.remove_export("other").unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "an explicit removal too");
    drop(store);
    let store = Store::open_storage(storage).unwrap();
    assert!(store.list_exports().is_empty(), "the cascade was committed");
}

#[test]
fn deleting_a_snapshot_removes_its_exports_and_tells_the_listeners() {
    let (storage, store) = mem_store();
    fixture(&store);
    store
        .create_snapshot(Target::Group("web"), "tuesday", SnapshotKind::Crash)
        .unwrap();
    let calls = counter(&store);
    store
        .create_export("mon-data", group_snap("web", "monday", Some("data")))
        .unwrap();
    store
        .create_export("mon-log", group_snap("web", "monday", Some("log")))
        .unwrap();
    store
        .create_export("tue-data", group_snap("web", "tuesday", Some("data")))
        .unwrap();
    let solo = ExportSpec::Snapshot {
        target: Target::Volume("solo"),
        snapshot: "s0",
        slot: None,
    };
    store.create_export("solo-s0", solo).unwrap();
    store.create_export("live", vol("web-data")).unwrap();

    // the catalog half of a deletion (what the API's job path uses)
    store
        .delete_snapshot_record(Target::Group("web"), "monday")
        .unwrap();
    assert_eq!(names(&store), ["live", "solo-s0", "tue-data"]);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    store.collect_garbage().unwrap();
    // the whole deletion, of a lone volume's snapshot
    store.delete_snapshot(Target::Volume("solo"), "s0").unwrap();
    assert_eq!(names(&store), ["live", "tue-data"]);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // the group can go once its snapshots are gone; a volume export stays
    store
        .delete_snapshot(Target::Group("web"), "tuesday")
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    store.delete_group("web").unwrap();
    assert_eq!(names(&store), ["live"]);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    drop(store);
    let store = Store::open_storage(storage).unwrap();
    assert_eq!(names(&store), ["live"]);
}

#[test]
fn a_snapshot_export_reads_the_snapshot_while_the_volume_changes() {
    let (_s, store) = mem_store();
    store.create_volume("d", MIB).unwrap();
    store.create_group("g", &[("data", "d")]).unwrap();
    let v = store.volume("d").unwrap();
    write(&v, 1, 0);
    write(&v, 2, 8192);
    store
        .create_snapshot(Target::Group("g"), "s1", SnapshotKind::Crash)
        .unwrap();
    store
        .create_export("frozen", group_snap("g", "s1", Some("data")))
        .unwrap();
    store.create_export("live", vol("d")).unwrap();
    let (info, frozen) = store.open_export("frozen").unwrap();
    assert!(info.read_only);
    assert!(matches!(frozen, ExportDisk::Snapshot(_)));
    assert_eq!(frozen.size(), MIB);
    let (info, live) = store.open_export("live").unwrap();
    assert!(!info.read_only);
    let ExportDisk::Volume(live_handle) = &live else {
        panic!("a volume export opens the volume");
    };

    // writes through the live export reach the volume, not the snapshot
    write(live_handle, 3, 0);
    write(&v, 4, 4096);
    store.grow_volume("d", 2 * MIB).unwrap();
    assert_eq!(read(&live, 0, 4096), vec![3; 4096]);
    assert_eq!(read(&live, 4096, 4096), vec![4; 4096]);
    assert_eq!(live.size(), 2 * MIB);
    assert_eq!(store.export("live").unwrap().size, 2 * MIB);
    assert_eq!(read(&frozen, 0, 4096), vec![1; 4096]);
    assert_eq!(read(&frozen, 4096, 4096), vec![0; 4096]);
    assert_eq!(read(&frozen, 8192, 4096), vec![2; 4096]);
    assert_eq!(frozen.size(), MIB);
    assert_eq!(store.export("frozen").unwrap().size, MIB);

    // a later snapshot and a sync of the slot change nothing the old one shows
    store
        .create_snapshot(Target::Group("g"), "s2", SnapshotKind::Crash)
        .unwrap();
    store.sync("g", "s2", "g", &["data"]).unwrap();
    let (_, reopened) = store.open_export("frozen").unwrap();
    assert_eq!(read(&reopened, 0, 4096), vec![1; 4096]);
    assert_eq!(read(&reopened, 8192, 4096), vec![2; 4096]);
    // the volume export follows the volume (by id) through the sync
    let (_, live) = store.open_export("live").unwrap();
    assert_eq!(read(&live, 0, 4096), vec![3; 4096]);
}
