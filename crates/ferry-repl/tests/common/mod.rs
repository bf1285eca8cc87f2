//! Building and decoding sample cycles for the stream tests.
#![allow(dead_code)]

use ferry_repl::stream::{
    BLOCK_SIZE, BlockIndex, Compression, CycleHeader, CycleId, Decoder, Encoder, Event, Point,
    ResumePoint, Run, RunContent, SlotIndex, SnapshotId, StreamError, Volume,
};

pub fn header(compression: Compression, resume: Option<ResumePoint>) -> CycleHeader {
    CycleHeader {
        group: "db".into(),
        cycle: CycleId(7),
        base: Some(SnapshotId(41)),
        point: Point {
            snapshot: SnapshotId(42),
            name: "repl-7".into(),
            created: 1_790_000_000,
        },
        volumes: vec![
            Volume {
                slot: "data".into(),
                size: 16 * BLOCK_SIZE as u64,
            },
            Volume {
                slot: "log".into(),
                size: 8 * BLOCK_SIZE as u64,
            },
            Volume {
                slot: "empty".into(),
                size: 0,
            },
            Volume {
                slot: "tail".into(),
                size: 4 * BLOCK_SIZE as u64,
            },
        ],
        compression,
        resume,
    }
}

/// Bytes for `blocks` blocks: compressible when `seed` is even, noise when odd.
pub fn data(blocks: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; blocks * BLOCK_SIZE];
    if seed.is_multiple_of(2) {
        for (i, b) in v.iter_mut().enumerate() {
            *b = (i / 64) as u8 ^ seed as u8;
        }
    } else {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for b in v.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    v
}

pub fn run(slot: u32, first: u64, content: RunContent) -> Run {
    Run {
        slot: SlotIndex(slot),
        first: BlockIndex(first),
        content,
    }
}

/// Data and zero runs over several volumes, compressible and not.
pub fn runs() -> Vec<Run> {
    vec![
        run(0, 0, RunContent::Data(data(2, 2))),
        run(0, 2, RunContent::Zeros(3)),
        run(0, 9, RunContent::Data(data(1, 3))),
        run(0, 10, RunContent::Data(data(6, 4))),
        run(1, 0, RunContent::Zeros(8)),
        run(3, 1, RunContent::Data(data(3, 5))),
    ]
}

/// The stream, and the byte offset where each record ends (preamble and
/// header first).
pub fn encode(h: &CycleHeader, runs: &[Run]) -> (Vec<u8>, Vec<usize>) {
    let mut out = Vec::new();
    let mut ends = Vec::new();
    let mut e = Encoder::new(3);
    e.header(h, &mut out).unwrap();
    ends.push(out.len());
    for r in runs {
        e.run(r, &mut out).unwrap();
        ends.push(out.len());
    }
    e.end(&mut out).unwrap();
    ends.push(out.len());
    (out, ends)
}

/// The events a stream of `h` and `runs` must decode to.
pub fn expected(h: &CycleHeader, runs: &[Run]) -> Vec<Event> {
    let mut e = Encoder::new(3);
    let mut out = Vec::new();
    e.header(h, &mut out).unwrap();
    for r in runs {
        e.run(r, &mut out).unwrap();
    }
    let end = e.end(&mut out).unwrap();
    let mut v = vec![Event::Header(h.clone())];
    v.extend(runs.iter().cloned().map(Event::Run));
    v.push(Event::End(end));
    v
}

pub fn drain(d: &mut Decoder, events: &mut Vec<Event>) -> Result<(), StreamError> {
    while let Some(e) = d.next_event()? {
        events.push(e);
    }
    Ok(())
}

/// Decodes `bytes` pushed in the given chunk sizes (cycled), then finishes.
pub fn decode_chunked(
    mut d: Decoder,
    bytes: &[u8],
    chunks: &[usize],
) -> (Vec<Event>, Result<(), StreamError>) {
    let mut events = Vec::new();
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let n = chunks
            .get(i % chunks.len().max(1))
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        i += 1;
        d.push(&rest[..n]);
        rest = &rest[n..];
        if let Err(e) = drain(&mut d, &mut events) {
            return (events, Err(e));
        }
    }
    let r = drain(&mut d, &mut events).and_then(|()| d.finish());
    (events, r)
}

pub fn decode(bytes: &[u8]) -> (Vec<Event>, Result<(), StreamError>) {
    decode_chunked(Decoder::new(), bytes, &[])
}

/// Frames after the preamble: (offset, body length).
pub fn frames(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    let mut at = 12;
    while at + 12 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        v.push((at, len));
        at += 12 + len;
    }
    v
}

/// Recomputes the CRC of the frame at `at` after a test edited it.
pub fn reframe(bytes: &mut [u8], at: usize) {
    let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&bytes[at..at + 8]),
        &bytes[at + 12..at + 12 + len],
    );
    bytes[at + 8..at + 12].copy_from_slice(&crc.to_le_bytes());
}
