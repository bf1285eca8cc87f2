//! The replication stream: round trips in every chunking, truncation, bit
//! flips, named errors, resumption, golden bytes.

mod common;

use common::*;
use ferry_repl::stream::{
    BLOCK_SIZE, BlockIndex, Compression, Decoder, Encoder, Event, MAX_RUN_BLOCKS, Part, Position,
    RecordKind, RunContent, SlotIndex, StreamError,
};
use proptest::prelude::*;

fn both() -> [Compression; 2] {
    [Compression::None, Compression::Zstd]
}

#[test]
fn round_trip_several_volumes_data_and_zero_runs_both_compressions() {
    for c in both() {
        let h = header(c, None);
        let (bytes, _) = encode(&h, &runs());
        let (events, r) = decode(&bytes);
        r.unwrap();
        assert_eq!(events, expected(&h, &runs()));
    }
    // zstd shrinks the compressible runs; the noise run stays raw.
    let (plain, _) = encode(&header(Compression::None, None), &runs());
    let (packed, _) = encode(&header(Compression::Zstd, None), &runs());
    assert!(
        packed.len() < plain.len() / 2,
        "{} vs {}",
        packed.len(),
        plain.len()
    );
}

#[test]
fn every_split_point_and_one_byte_feeding() {
    for c in both() {
        let h = header(c, None);
        let want = expected(&h, &runs());
        let (bytes, _) = encode(&h, &runs());
        let (events, r) = decode_chunked(Decoder::new(), &bytes, &[1]);
        r.unwrap();
        assert_eq!(events, want);
        for cut in 0..=bytes.len() {
            let mut d = Decoder::new();
            let mut events = Vec::new();
            d.push(&bytes[..cut]);
            drain(&mut d, &mut events).unwrap();
            d.push(&bytes[cut..]);
            drain(&mut d, &mut events).unwrap();
            d.finish().unwrap();
            assert_eq!(events, want, "split at {cut}");
        }
    }
}

#[test]
fn every_truncation_needs_more_bytes_and_finish_names_it() {
    for c in both() {
        let h = header(c, None);
        let want = expected(&h, &runs());
        let (bytes, ends) = encode(&h, &runs());
        for cut in 0..bytes.len() {
            let mut d = Decoder::new();
            let mut events = Vec::new();
            d.push(&bytes[..cut]);
            drain(&mut d, &mut events).unwrap();
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(events, want[..whole], "cut at {cut}");
            match d.finish() {
                Err(StreamError::Truncated {
                    offset,
                    record,
                    part,
                    have,
                    need,
                }) => {
                    assert!(have < need, "cut at {cut}");
                    assert_eq!(record, whole as u64);
                    if cut < 12 {
                        assert_eq!(part, Part::Preamble);
                    } else {
                        assert_eq!(
                            offset as usize,
                            if whole == 0 { 12 } else { ends[whole - 1] }
                        );
                    }
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }
}

#[test]
fn every_single_bit_flip_is_detected() {
    // A small stream so that every bit can be tried.
    let small = vec![
        run(0, 1, RunContent::Data(data(1, 2))),
        run(1, 0, RunContent::Zeros(2)),
        run(3, 3, RunContent::Data(data(1, 7))),
    ];
    for c in both() {
        let h = header(c, None);
        let want = expected(&h, &small);
        let (bytes, _) = encode(&h, &small);
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let (events, r) = decode(&b);
            assert!(r.is_err(), "flip of bit {bit} went unnoticed");
            assert_eq!(
                events,
                want[..events.len()],
                "flip of bit {bit} yielded a wrong event"
            );
        }
    }
}

#[test]
fn golden_header_bytes() {
    let mut out = Vec::new();
    Encoder::new(3)
        .header(&header(Compression::Zstd, None), &mut out)
        .unwrap();
    let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, GOLDEN_HEADER);
}

/// Preamble; header frame; fixed fields; group, point name, volumes.
const GOLDEN_HEADER: &str = concat!(
    "464552525952504c01000000",
    "01000000a70000008e0b5029",
    "07000000000000000129000000000000002a00000000000000803bb16a00000000010000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000004000000",
    "0200646206007265706c2d37040064617461000001000000000003006c6f6700800000000000000500656d707479000000000000000004007461696c0040000000000000",
);

#[test]
fn golden_run_and_end_bytes() {
    let h = header(Compression::None, None);
    let mut out = Vec::new();
    let mut e = Encoder::new(3);
    e.header(&h, &mut out).unwrap();
    let start = out.len();
    e.run(&run(1, 2, RunContent::Zeros(3)), &mut out).unwrap();
    e.end(&mut out).unwrap();
    let hex: String = out[start..].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, GOLDEN_RUN_END);
}

/// Run frame; zero run head (slot 1, block 2, 3 blocks); end frame; end body.
const GOLDEN_RUN_END: &str = concat!(
    "020000003800000036b83520",
    "0100000002000000000000000300000001000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "0300000030000000a4f37e19",
    "0100000000000000030000000000000084113a34fb46dacce9a7e85f00cd65614981915e2fd77a2d28559f62e9f2b4b9",
);

fn first_error(bytes: &[u8]) -> StreamError {
    match decode(bytes) {
        (_, Err(e)) => e,
        (_, Ok(())) => panic!("stream accepted"),
    }
}

/// The stream of `runs()` with record `index` (0 = header) edited by `f`
/// and its CRC fixed, so only the later checks can catch it.
fn forged(index: usize, f: impl FnOnce(&mut Vec<u8>, usize)) -> Vec<u8> {
    let (mut bytes, _) = encode(&header(Compression::Zstd, None), &runs());
    let (at, _) = frames(&bytes)[index];
    f(&mut bytes, at);
    reframe(&mut bytes, at);
    bytes
}

#[test]
fn errors_name_the_problem() {
    let (good, _) = encode(&header(Compression::Zstd, None), &runs());

    let mut b = good.clone();
    b[0] = b'X';
    assert!(matches!(first_error(&b), StreamError::BadMagic { .. }));

    let mut b = good.clone();
    b[8] = 2;
    assert_eq!(
        first_error(&b),
        StreamError::UnsupportedVersion {
            found: 2,
            supported: 1
        }
    );

    // A run that claims 4 GiB is refused from its frame alone.
    let (at, _) = frames(&good)[1];
    let mut d = Decoder::new();
    d.push(&good[..at]);
    let mut frame = good[at..at + 12].to_vec();
    frame[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    d.push(&frame);
    let mut ev = Vec::new();
    match drain(&mut d, &mut ev) {
        Err(StreamError::RecordTooLarge { at: a, .. }) => {
            assert_eq!((a.record, a.kind), (1, Some(RecordKind::Run)));
        }
        other => panic!("{other:?}"),
    }

    let mut b = good.clone();
    let (at, _) = frames(&good)[3];
    b[at + 12 + 60] ^= 1;
    match first_error(&b) {
        StreamError::CrcMismatch { at: a, .. } => assert_eq!(a.record, 3),
        e => panic!("{e:?}"),
    }

    // Digest: the uncompressed run 3 (noise) with one payload byte changed.
    let b = forged(3, |b, at| b[at + 12 + 56 + 5] ^= 1);
    assert!(
        matches!(first_error(&b), StreamError::DigestMismatch { .. }),
        "{:?}",
        first_error(&b)
    );

    // Out of the volume's range: slot 3 has 4 blocks, the run 1+3; move it to 2.
    let b = forged(6, |b, at| b[at + 12 + 4] = 2);
    assert!(matches!(
        first_error(&b),
        StreamError::RunOutOfRange {
            volume_blocks: 4,
            ..
        }
    ));

    let b = forged(6, |b, at| b[at + 12] = 9);
    assert!(matches!(
        first_error(&b),
        StreamError::SlotOutOfRange { volumes: 4, .. }
    ));

    // Overlap: the zero run of slot 0 starts inside the first run.
    let b = forged(2, |b, at| b[at + 12 + 4] = 1);
    match first_error(&b) {
        StreamError::RunOutOfOrder { after, .. } => {
            assert_eq!(
                after,
                Position {
                    slot: SlotIndex(0),
                    block: BlockIndex(2)
                }
            );
        }
        e => panic!("{e:?}"),
    }

    // A data run of more than 8 MiB.
    let b = forged(1, |b, at| {
        b[at + 12 + 12..at + 12 + 16].copy_from_slice(&(MAX_RUN_BLOCKS + 1).to_le_bytes())
    });
    assert!(matches!(
        first_error(&b),
        StreamError::RunTooLarge { .. } | StreamError::RunOutOfRange { .. }
    ));

    let n = frames(&good).len() - 1;
    let b = forged(n, |b, at| b[at + 12] ^= 1);
    assert!(matches!(
        first_error(&b),
        StreamError::EndCountMismatch { field: "runs", .. }
    ));
    let b = forged(n, |b, at| b[at + 12 + 8] ^= 1);
    assert!(matches!(
        first_error(&b),
        StreamError::EndCountMismatch {
            field: "blocks",
            ..
        }
    ));
    let b = forged(n, |b, at| b[at + 12 + 20] ^= 1);
    assert!(matches!(
        first_error(&b),
        StreamError::EndChainMismatch { .. }
    ));

    let mut b = good.clone();
    b.push(0);
    assert_eq!(
        first_error(&b),
        StreamError::TrailingBytes {
            offset: good.len() as u64,
            count: 1
        }
    );

    // A header twice, a run before the header.
    let mut b = good.clone();
    let (h_at, h_len) = frames(&good)[0];
    b.splice(
        h_at + 12 + h_len..h_at + 12 + h_len,
        good[h_at..h_at + 12 + h_len].to_vec(),
    );
    assert!(matches!(
        first_error(&b),
        StreamError::UnexpectedRecord {
            found: RecordKind::Header,
            ..
        }
    ));
}

#[test]
fn run_order_is_checked_between_runs_not_only_against_the_first() {
    // Dropping a run keeps order; swapping two changes it; the chain then
    // catches a dropped one at the end.
    let (good, _) = encode(&header(Compression::None, None), &runs());
    let f = frames(&good);
    let (a, alen) = f[2];
    let mut dropped = good.clone();
    dropped.drain(a..a + 12 + alen);
    assert!(matches!(
        first_error(&dropped),
        StreamError::EndCountMismatch { field: "runs", .. }
    ));
    let (b, blen) = f[3];
    let mut swapped = good[..a].to_vec();
    swapped.extend_from_slice(&good[b..b + 12 + blen]);
    swapped.extend_from_slice(&good[a..a + 12 + alen]);
    swapped.extend_from_slice(&good[b + 12 + blen..]);
    assert!(matches!(
        first_error(&swapped),
        StreamError::RunOutOfOrder { .. }
    ));
}

#[test]
fn decompression_is_bounded_by_the_block_count() {
    // A zstd payload of 64 KiB of zeros in a run that declares one block.
    let (mut bytes, _) = encode(&header(Compression::Zstd, None), &runs());
    let (at, len) = frames(&bytes)[1];
    let bomb = zstd::bulk::compress(&vec![0u8; 16 * BLOCK_SIZE], 3).unwrap();
    let digest = *blake3::hash(&vec![0u8; BLOCK_SIZE]).as_bytes();
    let mut body = bytes[at + 12..at + 12 + 56].to_vec();
    body[12..16].copy_from_slice(&1u32.to_le_bytes());
    body[17] = 1;
    body[20..24].copy_from_slice(&(bomb.len() as u32).to_le_bytes());
    body[24..56].copy_from_slice(&digest);
    body.extend_from_slice(&bomb);
    let mut frame = bytes[at..at + 12].to_vec();
    frame[4..8].copy_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    bytes.splice(at..at + 12 + len, frame);
    reframe(&mut bytes, at);
    assert!(
        matches!(
            first_error(&bytes),
            StreamError::Decompress { expected: 4096, .. }
        ),
        "{:?}",
        first_error(&bytes)
    );
}

#[test]
fn zstd_payload_refused_when_the_header_says_none() {
    let (z, _) = encode(&header(Compression::Zstd, None), &runs());
    let mut b = z.clone();
    // The header's compression byte is at body offset 33.
    let (at, _) = frames(&z)[0];
    b[at + 12 + 33] = 0;
    reframe(&mut b, at);
    assert!(matches!(
        first_error(&b),
        StreamError::CompressionNotInUse { .. }
    ));
}

#[test]
fn an_interrupted_cycle_resumes_where_the_receiver_stopped() {
    for c in both() {
        let all = runs();
        let (full, _) = encode(&header(c, None), &all);
        let full_end = match decode(&full).0.pop() {
            Some(Event::End(e)) => e,
            other => panic!("{other:?}"),
        };
        for n in 1..all.len() {
            // The receiver applied n runs, then the connection dropped.
            let mut d = Decoder::resuming(None);
            let mut events = Vec::new();
            let (_, ends) = encode(&header(c, None), &all);
            d.push(&full[..ends[n] + 5]);
            drain(&mut d, &mut events).unwrap();
            assert_eq!(events.len(), n + 1);
            let stopped = d.resume_point();
            assert_eq!(stopped.map(|p| p.runs), Some(n as u64));

            let h = header(c, stopped);
            let (resumed, _) = encode(&h, &all[n..]);
            let (events, r) = decode_chunked(Decoder::resuming(stopped), &resumed, &[7]);
            r.unwrap();
            assert_eq!(
                events.last(),
                Some(&Event::End(full_end)),
                "resume after {n}"
            );

            // The wrong place is refused, by the header or by the runs.
            let (_, r) = decode_chunked(Decoder::resuming(None), &resumed, &[]);
            assert!(matches!(r, Err(StreamError::ResumeMismatch { .. })));
            let mut e = Encoder::new(3);
            let mut out = Vec::new();
            e.header(&h, &mut out).unwrap();
            assert!(e.run(&all[n - 1], &mut out).is_err(), "run {} again", n - 1);
        }
    }
}

#[test]
fn the_encoder_refuses_what_the_decoder_would() {
    let mut out = Vec::new();
    let mut e = Encoder::new(3);
    assert!(e.run(&run(0, 0, RunContent::Zeros(1)), &mut out).is_err());
    e.header(&header(Compression::None, None), &mut out)
        .unwrap();
    e.run(&run(0, 4, RunContent::Zeros(1)), &mut out).unwrap();
    assert!(e.run(&run(0, 3, RunContent::Zeros(1)), &mut out).is_err());
    assert!(e.run(&run(3, 3, RunContent::Zeros(2)), &mut out).is_err());
    assert!(
        e.run(&run(3, 0, RunContent::Data(vec![1; 100])), &mut out)
            .is_err()
    );
    assert!(e.run(&run(2, 0, RunContent::Zeros(1)), &mut out).is_err());
}

/// Runs laid out over the sample header's volumes from generated gaps,
/// lengths and kinds.
fn layout(spec: &[(u8, u8, u8, u64)]) -> Vec<ferry_repl::stream::Run> {
    let blocks = [16u64, 8, 0, 4];
    let mut out = Vec::new();
    let (mut slot, mut next) = (0usize, 0u64);
    for &(gap, len, kind, seed) in spec {
        let mut first = next + u64::from(gap);
        let mut len = u64::from(len.max(1));
        while slot < blocks.len() && first + len > blocks[slot] {
            slot += 1;
            first = 0;
            len = len.min(4);
        }
        if slot >= blocks.len() || first + len > blocks[slot] {
            break;
        }
        let content = if kind % 3 == 0 {
            RunContent::Zeros(len as u32)
        } else {
            RunContent::Data(data(len as usize, seed))
        };
        out.push(run(slot as u32, first, content));
        next = first + len;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_layout_round_trips_in_any_chunking(
        spec in prop::collection::vec((0u8..3, 1u8..5, any::<u8>(), any::<u64>()), 0..10),
        chunks in prop::collection::vec(1usize..5000, 1..8),
        zstd in any::<bool>(),
    ) {
        let h = header(if zstd { Compression::Zstd } else { Compression::None }, None);
        let runs = layout(&spec);
        let (bytes, _) = encode(&h, &runs);
        let (events, r) = decode_chunked(Decoder::new(), &bytes, &chunks);
        prop_assert_eq!(r, Ok(()));
        prop_assert_eq!(events, expected(&h, &runs));
    }

    #[test]
    fn any_corruption_is_refused_or_harmless(
        spec in prop::collection::vec((0u8..3, 1u8..5, any::<u8>(), any::<u64>()), 0..6),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
    ) {
        let h = header(Compression::Zstd, None);
        let runs = layout(&spec);
        let (mut bytes, _) = encode(&h, &runs);
        for (i, x) in edits {
            let i = i.index(bytes.len());
            bytes[i] ^= x;
        }
        let want = expected(&h, &runs);
        let (events, r) = decode(&bytes);
        prop_assert!(r.is_err());
        prop_assert_eq!(&events[..], &want[..events.len()]);
    }
}
