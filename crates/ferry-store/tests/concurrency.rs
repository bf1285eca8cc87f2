//! Many callers at once: writers sharing blocks (each owning different 512-byte
//! sectors of them, so every write is a partial block racing with others on
//! the same block), writers of whole blocks and zeroes, while another thread
//! takes snapshots and deletes older ones (merging layers into the live head).
//! At the end every sector must hold what its owner last wrote.

use ferry_store::{SnapshotKind, Store, Target};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const BLOCKS: u64 = 256;
const SIZE: u64 = BLOCKS * 4096;
const SECTOR: u64 = 512;
const THREADS: u64 = 4;
const OPS: usize = 6000;
/// Blocks whose sectors are shared between threads: few, so writers collide.
const SHARED_BLOCKS: u64 = 4;

fn next(x: &mut u64) -> u64 {
    *x = x
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *x >> 33
}

#[test]
fn concurrent_partial_and_whole_writes_with_snapshots_and_merges() {
    // In memory, so snapshots are quick and often empty the head: partial
    // writes then take the read-modify-write path and collide.
    let storage = ferry_store::storage::MemStorage::new();
    let store = Store::open_storage(storage.clone()).unwrap();
    store.create_volume("v", SIZE).unwrap();
    let done = Arc::new(AtomicBool::new(false));

    let snapshotter = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !done.load(Ordering::Relaxed) {
                n += 1;
                store
                    .create_snapshot(Target::Volume("v"), &format!("s{n}"), SnapshotKind::Crash)
                    .unwrap();
                if n > 2 {
                    store
                        .delete_snapshot(Target::Volume("v"), &format!("s{}", n - 2))
                        .unwrap();
                }
            }
            n
        })
    };

    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let v = store.volume("v").unwrap();
            std::thread::spawn(move || {
                // Sectors of the first SHARED_BLOCKS belong to thread (sector % THREADS);
                // whole blocks of the second half to thread (block % THREADS).
                let mut model = vec![0u8; SIZE as usize];
                let mut rng = t + 1;
                for i in 0..OPS {
                    let fill = (i as u8).wrapping_mul(7).wrapping_add(t as u8 * 50 + 1);
                    if next(&mut rng).is_multiple_of(2) {
                        let sectors = SHARED_BLOCKS * 4096 / SECTOR / THREADS;
                        let s = (next(&mut rng) % sectors) * THREADS + t;
                        let off = s * SECTOR;
                        let data = vec![fill; SECTOR as usize];
                        v.write(&data, off, false).unwrap();
                        model[off as usize..(off + SECTOR) as usize].copy_from_slice(&data);
                    } else {
                        let blocks = BLOCKS / 2 / THREADS;
                        let b = BLOCKS / 2 + (next(&mut rng) % blocks) * THREADS + t;
                        let off = b * 4096;
                        let r = off as usize..(off + 4096) as usize;
                        if next(&mut rng).is_multiple_of(5) {
                            v.write_zeroes(off, 4096, false).unwrap();
                            model[r].fill(0);
                        } else {
                            let data = vec![fill; 4096];
                            v.write(&data, off, false).unwrap();
                            model[r].copy_from_slice(&data);
                        }
                    }
                    if i % 500 == 0 {
                        v.flush().unwrap();
                    }
                }
                model
            })
        })
        .collect();
    let models: Vec<Vec<u8>> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    done.store(true, Ordering::Relaxed);
    let snapshots = snapshotter.join().unwrap();
    assert!(snapshots >= 1);

    let check = |store: &Store| {
        let mut got = vec![0u8; SIZE as usize];
        store.volume("v").unwrap().read(&mut got, 0).unwrap();
        for s in 0..SIZE / SECTOR {
            let off = (s * SECTOR) as usize;
            let owner = if s * SECTOR < SHARED_BLOCKS * 4096 {
                s % THREADS
            } else {
                (s * SECTOR / 4096) % THREADS
            };
            if s * SECTOR >= SHARED_BLOCKS * 4096 && s * SECTOR < SIZE / 2 {
                assert!(got[off..off + SECTOR as usize].iter().all(|b| *b == 0));
                continue;
            }
            assert_eq!(
                &got[off..off + SECTOR as usize],
                &models[owner as usize][off..off + SECTOR as usize],
                "sector {s} (owner thread {owner}) after {snapshots} snapshots"
            );
        }
    };
    check(&store);
    store.flush_all().unwrap();
    drop(store);
    let store = Store::open_storage(storage).unwrap();
    check(&store);
}

#[test]
fn a_store_is_opened_by_one_process_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let _store = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("locked"), "{err}");
}
