//! Replication streams: any bytes in any chunking decode to events or a
//! named error, never a panic; a cycle that decodes whole re-encodes to a
//! stream that decodes to the same events. Half the inputs are built by the
//! encoder from the input and then (mostly) corrupted at one input-chosen
//! byte, so that the checks past the CRCs are reached too. A whole cycle is also cut
//! after an input-chosen run and resumed there: the resumed stream decodes
//! (`Decoder::resuming`) to the runs after the cut and the same end, and a
//! receiver that stopped elsewhere refuses it.
#![no_main]

use ferry_repl::stream::{
    BLOCK_SIZE, BlockIndex, Compression, CycleHeader, CycleId, Decoder, Encoder, Event, Point,
    ResumePoint, Run, RunContent, SlotIndex, SnapshotId, Volume,
};
use libfuzzer_sys::fuzz_target;

/// Decodes `bytes` fed in chunks whose sizes cycle through `chunks`.
fn decode(bytes: &[u8], chunks: &[u8]) -> (Vec<Event>, bool) {
    decode_with(Decoder::new(), bytes, chunks)
}

fn decode_with(mut d: Decoder, bytes: &[u8], chunks: &[u8]) -> (Vec<Event>, bool) {
    let mut events = Vec::new();
    let mut rest = bytes;
    let mut i = 0;
    loop {
        loop {
            match d.next_event() {
                Ok(Some(e)) => events.push(e),
                Ok(None) => break,
                Err(_) => return (events, false),
            }
        }
        if rest.is_empty() {
            return (events, d.finish().is_ok());
        }
        let n = usize::from(chunks.get(i % chunks.len().max(1)).copied().unwrap_or(255))
            .clamp(1, rest.len());
        i += 1;
        d.push(&rest[..n]);
        rest = &rest[n..];
    }
}

/// A stream built from the input: small volumes, runs laid out in order.
fn build(data: &[u8]) -> Vec<u8> {
    let zstd = data.first().is_some_and(|b| b & 1 == 1);
    let header = CycleHeader {
        group: "g".into(),
        cycle: CycleId(1),
        base: None,
        point: Point {
            snapshot: SnapshotId(2),
            name: "p".into(),
            created: 3,
        },
        volumes: vec![
            Volume {
                slot: "a".into(),
                size: 8 * BLOCK_SIZE as u64,
            },
            Volume {
                slot: "b".into(),
                size: 4 * BLOCK_SIZE as u64,
            },
        ],
        compression: if zstd {
            Compression::Zstd
        } else {
            Compression::None
        },
        resume: None,
    };
    let mut out = Vec::new();
    let mut e = Encoder::new(1);
    if e.header(&header, &mut out).is_err() {
        return out;
    }
    let (mut slot, mut next) = (0u32, 0u64);
    for w in data.get(1..).unwrap_or(&[]).chunks(2).take(8) {
        let gap = u64::from(w[0] & 3);
        let len = u64::from((w[0] >> 2) & 3) + 1;
        let fill = w.get(1).copied().unwrap_or(0);
        if w[0] & 0x80 != 0 {
            slot += 1;
            next = 0;
        }
        let first = next + gap;
        let content = if w[0] & 0x40 != 0 {
            RunContent::Zeros(len as u32)
        } else {
            RunContent::Data(
                (0..len as usize * BLOCK_SIZE)
                    .map(|i| fill ^ (i as u8 & w[0]))
                    .collect(),
            )
        };
        let run = Run {
            slot: SlotIndex(slot),
            first: BlockIndex(first),
            content,
        };
        if e.run(&run, &mut out).is_ok() {
            next = first + len;
        }
    }
    let _ = e.end(&mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let (chunks, data) = data.split_at(data.len().min(usize::from(mode & 7)));
    let bytes = if mode & 0x80 != 0 {
        let mut b = build(data);
        // with 0x40, left whole (to reach the resume checks)
        if let Some(&at) = data.last()
            && !b.is_empty()
            && mode & 0x40 == 0
        {
            let i = usize::from(at) * 37 % b.len();
            b[i] ^= data.first().copied().unwrap_or(1) | 1;
        }
        b
    } else {
        data.to_vec()
    };
    let (events, complete) = decode(&bytes, chunks);
    if !complete {
        return;
    }
    // A whole cycle: re-encode it and decode that the same.
    let mut out = Vec::new();
    let mut e = Encoder::new(1);
    for ev in &events {
        match ev {
            Event::Header(h) => e.header(h, &mut out).expect("a decoded header re-encodes"),
            Event::Run(r) => e.run(r, &mut out).expect("a decoded run re-encodes"),
            Event::End(end) => assert_eq!(e.end(&mut out).expect("the end re-encodes"), *end),
        }
    }
    let (again, ok) = decode(&out, &[]);
    assert!(ok, "the re-encoded stream decodes");
    assert_eq!(again, events);
    resume(&events, usize::from(mode >> 3), chunks);
});

/// Cuts the whole cycle `events` after run `cut` (modulo the runs) and
/// checks the resumed stream.
fn resume(events: &[Event], cut: usize, chunks: &[u8]) {
    let (Some(Event::Header(h)), Some(Event::End(end))) = (events.first(), events.last()) else {
        panic!("a whole cycle is a header, runs and an end");
    };
    let runs: Vec<&Run> = events
        .iter()
        .filter_map(|e| match e {
            Event::Run(r) => Some(r),
            _ => None,
        })
        .collect();
    if runs.is_empty() || h.resume.is_some() {
        return;
    }
    let cut = cut % runs.len() + 1;
    // what a receiver that applied the first `cut` runs reports
    let mut first = Encoder::new(1);
    let mut sink = Vec::new();
    first.header(h, &mut sink).expect("the header encodes");
    for r in &runs[..cut] {
        first.run(r, &mut sink).expect("a run encodes");
    }
    let at: ResumePoint = first.resume_point().expect("runs were written");
    let mut h2 = h.clone();
    h2.resume = Some(at.clone());
    let mut resumed = Vec::new();
    let mut e = Encoder::new(1);
    e.header(&h2, &mut resumed).expect("a resumed header encodes");
    for r in &runs[cut..] {
        e.run(r, &mut resumed).expect("a run after the cut encodes");
    }
    assert_eq!(e.end(&mut resumed).expect("the end encodes"), *end);
    let (got, ok) = decode_with(Decoder::resuming(Some(at.clone())), &resumed, chunks);
    assert!(ok, "the resumed stream decodes");
    let mut want = vec![Event::Header(h2)];
    want.extend(runs[cut..].iter().map(|r| Event::Run((*r).clone())));
    want.push(Event::End(end.clone()));
    assert_eq!(got, want);
    // a receiver that has nothing, or stopped one run earlier, refuses it
    assert!(!decode_with(Decoder::resuming(None), &resumed, chunks).1);
    if cut > 1 {
        let mut earlier = Encoder::new(1);
        earlier.header(h, &mut sink).expect("the header encodes");
        for r in &runs[..cut - 1] {
            earlier.run(r, &mut sink).expect("a run encodes");
        }
        let before = earlier.resume_point();
        assert!(!decode_with(Decoder::resuming(before), &resumed, chunks).1);
    }
}
