//! The cycle's two ends without I/O: a sender over in-memory volumes, a
//! receiver into others; a stream cut at any chunk resumes from the
//! receiver's resume point and the replica ends equal to the source.

use ferry_repl::cycle::{
    BlockSource, CycleReceiver, CycleSender, Received, ReplicaSink, resume_from_text,
    resume_to_text,
};
use ferry_repl::stream::{
    BLOCK_SIZE, BlockIndex, Compression, CycleHeader, CycleId, Point, ResumePoint, SnapshotId,
    Volume,
};
use proptest::prelude::*;
use roaring::RoaringBitmap;

struct Mem(Vec<Vec<u8>>);

impl BlockSource for Mem {
    fn read(&mut self, slot: usize, first: u64, buf: &mut [u8]) -> Result<(), String> {
        let at = first as usize * BLOCK_SIZE;
        buf.copy_from_slice(&self.0[slot][at..at + buf.len()]);
        Ok(())
    }
}

impl ReplicaSink for Mem {
    fn write(&mut self, slot: usize, first: u64, data: &[u8]) -> Result<(), String> {
        let at = first as usize * BLOCK_SIZE;
        self.0[slot][at..at + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn zero(&mut self, slot: usize, first: u64, blocks: u64) -> Result<(), String> {
        let at = first as usize * BLOCK_SIZE;
        self.0[slot][at..at + blocks as usize * BLOCK_SIZE].fill(0);
        Ok(())
    }
}

fn header(blocks: &[u64], compression: Compression, resume: Option<ResumePoint>) -> CycleHeader {
    CycleHeader {
        group: "vm".into(),
        cycle: CycleId(7),
        base: Some(SnapshotId(3)),
        point: Point {
            snapshot: SnapshotId(9),
            name: "repl-7".into(),
            created: 1,
        },
        volumes: blocks
            .iter()
            .enumerate()
            .map(|(i, b)| Volume {
                slot: format!("s{i}"),
                size: b * BLOCK_SIZE as u64,
            })
            .collect(),
        compression,
        resume,
    }
}

/// Sends the cycle, feeding the receiver; cuts the connection after `cut`
/// chunks (if given), then resumes from the receiver's point. Returns the
/// replica and how many blocks the resumed connection covered.
fn ship(
    src: &mut Mem,
    changed: &[RoaringBitmap],
    replica: &mut Mem,
    compression: Compression,
    cut: Option<usize>,
) -> u64 {
    let blocks: Vec<u64> = src
        .0
        .iter()
        .map(|v| (v.len() / BLOCK_SIZE) as u64)
        .collect();
    let mut resume = None;
    let mut resumed_blocks = 0;
    for attempt in 0..2 {
        let mut tx = CycleSender::new(header(&blocks, compression, resume), changed.to_vec(), 1);
        let mut rx = CycleReceiver::new();
        let mut chunks = 0;
        let mut out = Vec::new();
        loop {
            out.clear();
            let more = tx.next_chunk(src, &mut out).unwrap();
            if !more {
                break;
            }
            rx.push(&out);
            chunks += 1;
            loop {
                match rx.poll(replica, 64).unwrap() {
                    Received::Header(h) => {
                        assert_eq!(h.resume, resume);
                        rx.accept_header();
                    }
                    Received::Applied { .. } => {}
                    Received::NeedMore => break,
                    Received::End(end) => {
                        assert_eq!(end.blocks, changed.iter().map(|c| c.len()).sum::<u64>());
                        if attempt == 1 {
                            resumed_blocks = tx.covered_bytes / BLOCK_SIZE as u64;
                        }
                        return resumed_blocks;
                    }
                }
            }
            if attempt == 0 && cut == Some(chunks) {
                break;
            }
        }
        // the connection broke: the receiver's resume point, via its text form
        resume = rx
            .resume_point()
            .map(|r| resume_from_text(&resume_to_text(&r)).unwrap());
    }
    panic!("the resumed cycle did not end");
}

fn volumes(seed: u8, blocks: &[usize]) -> Mem {
    Mem(blocks
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (0..n * BLOCK_SIZE)
                .map(|j| {
                    let b = j / BLOCK_SIZE;
                    // some blocks all zeros, the rest patterned
                    if b % 5 == 3 {
                        0
                    } else {
                        (j as u8) ^ seed ^ (b as u8) ^ (i as u8)
                    }
                })
                .collect()
        })
        .collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn a_cut_anywhere_resumes_and_the_replica_equals_the_source(
        picks in proptest::collection::vec((0usize..2, 0u32..600), 1..200),
        cut in 1usize..40,
        zstd in any::<bool>(),
    ) {
        let sizes = [600usize, 300];
        let mut src = volumes(0x5a, &sizes);
        let mut replica = volumes(0x11, &sizes);
        let mut changed = vec![RoaringBitmap::new(), RoaringBitmap::new()];
        for (slot, b) in picks {
            let b = b % sizes[slot] as u32;
            changed[slot].insert(b);
        }
        // blocks not changed already agree (they came with the base)
        for (slot, v) in replica.0.iter_mut().enumerate() {
            for b in 0..sizes[slot] {
                if !changed[slot].contains(b as u32) {
                    let r = b * BLOCK_SIZE..(b + 1) * BLOCK_SIZE;
                    v[r.clone()].copy_from_slice(&src.0[slot][r]);
                }
            }
        }
        let compression = if zstd { Compression::Zstd } else { Compression::None };
        let resumed = ship(&mut src, &changed, &mut replica, compression, Some(cut));
        prop_assert!(replica.0 == src.0, "the replica differs from the source");
        let total: u64 = changed.iter().map(|c| c.len()).sum();
        prop_assert!(resumed <= total);
    }
}

#[test]
fn runs_are_contiguous_bounded_and_skip_what_a_resume_covered() {
    let mut src = volumes(1, &[1024]);
    let mut changed = RoaringBitmap::new();
    changed.insert_range(10..700); // 690 blocks: runs of 256, 256, 178
    changed.insert(900);
    let resume = ResumePoint {
        runs: 1,
        blocks: 256,
        chain: [0; 32],
        next: ferry_repl::stream::Position {
            slot: ferry_repl::stream::SlotIndex(0),
            block: BlockIndex(266),
        },
    };
    let mut tx = CycleSender::new(
        header(&[1024], Compression::None, Some(resume)),
        vec![changed],
        1,
    );
    assert_eq!(tx.blocks_left(), 690 - 256 + 1);
    let mut out = Vec::new();
    let mut chunks = 0;
    while tx.next_chunk(&mut src, &mut out).unwrap() {
        chunks += 1;
    }
    // header, runs 266..522, 522..700, 900, end
    assert_eq!(chunks, 5);
    assert_eq!(tx.covered_bytes, (256 + 178 + 1) * BLOCK_SIZE as u64);
}

/// Fails every write from the `fail_at`-th on.
struct Failing<'a> {
    inner: &'a mut Mem,
    writes: usize,
    fail_at: usize,
}

impl ReplicaSink for Failing<'_> {
    fn write(&mut self, slot: usize, first: u64, data: &[u8]) -> Result<(), String> {
        self.writes += 1;
        if self.writes >= self.fail_at {
            return Err("disk full".into());
        }
        self.inner.write(slot, first, data)
    }

    fn zero(&mut self, slot: usize, first: u64, blocks: u64) -> Result<(), String> {
        self.writes += 1;
        if self.writes >= self.fail_at {
            return Err("disk full".into());
        }
        self.inner.zero(slot, first, blocks)
    }
}

#[test]
fn a_run_the_sink_refused_is_not_in_the_resume_point() {
    let sizes = [64usize];
    let mut src = volumes(3, &sizes);
    let mut changed = RoaringBitmap::new();
    for b in (0..64).step_by(3) {
        changed.insert(b); // 22 runs of one block
    }
    // the replica holds the base: the source but for the changed blocks
    let mut replica = Mem(src.0.clone());
    for b in &changed {
        replica.zero(0, u64::from(b), 1).unwrap();
    }
    let mut bytes = Vec::new();
    let mut tx = CycleSender::new(
        header(&[64], Compression::None, None),
        vec![changed.clone()],
        1,
    );
    while tx.next_chunk(&mut src, &mut bytes).unwrap() {}
    let mut rx = CycleReceiver::new();
    rx.push(&bytes);
    let mut sink = Failing {
        inner: &mut replica,
        writes: 0,
        fail_at: 5,
    };
    assert!(matches!(
        rx.poll(&mut sink, 1000).unwrap(),
        Received::Header(_)
    ));
    rx.accept_header();
    assert!(rx.poll(&mut sink, 1000).is_err());
    // four runs written; the fifth was refused and the receiver stays failed
    assert_eq!(rx.resume_point().map(|r| r.runs), Some(4));
    assert!(rx.poll(&mut sink, 1000).is_err());
    assert_eq!(rx.resume_point().map(|r| r.runs), Some(4));
    // resuming there leaves the replica equal to the source
    let resume = rx.resume_point();
    let mut tx = CycleSender::new(header(&[64], Compression::None, resume), vec![changed], 1);
    let mut bytes = Vec::new();
    while tx.next_chunk(&mut src, &mut bytes).unwrap() {}
    let mut rx = CycleReceiver::new();
    rx.push(&bytes);
    assert!(matches!(
        rx.poll(&mut replica, 1000).unwrap(),
        Received::Header(_)
    ));
    rx.accept_header();
    while !matches!(rx.poll(&mut replica, 1000).unwrap(), Received::End(_)) {}
    assert!(replica.0 == src.0);
}

#[test]
fn resume_text_round_trips_and_refuses_junk() {
    let r = ResumePoint {
        runs: 3,
        blocks: 700,
        chain: [0xab; 32],
        next: ferry_repl::stream::Position {
            slot: ferry_repl::stream::SlotIndex(2),
            block: BlockIndex(12345),
        },
    };
    assert_eq!(resume_from_text(&resume_to_text(&r)), Some(r));
    for junk in [
        "",
        "1:2:3:4",
        "1:2:3:4:zz",
        "a:2:3:4:00",
        &format!("{}:x", resume_to_text(&r)),
    ] {
        assert_eq!(resume_from_text(junk), None, "{junk:?}");
    }
}
