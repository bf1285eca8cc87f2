//! The incremental decoder: push bytes as they arrive, take events.
//!
//! ```text
//!   Preamble ──magic, version──▶ Header ──header──▶ Runs ──end──▶ Done
//!                                                    │  ▲
//!                                                    └──┘ run
//! ```
//!
//! Every transition goes through [`Decoder::next_event`]. An event is
//! yielded only once its record arrived whole and passed every check, so
//! a receiver that applies events as they come never applies a half or a
//! corrupt record; it makes the point visible only after [`Event::End`].
//! The first error poisons the decoder: later calls repeat it. The decoder
//! buffers at most one record beyond what the caller pushed and refuses a
//! record larger than the format allows before waiting for its body.

use super::error::{At, Part, RecordKind, StreamError};
use super::types::{
    BlockIndex, Compression, CycleHeader, Digest, End, Position, ResumePoint, Run, RunContent,
};
use super::wire::{
    self, BLOCK_SIZE, E_BLOCKS, E_CHAIN, E_LEN, E_RUNS, FORMAT_VERSION, FRAME_BODY_LEN, FRAME_CRC,
    FRAME_KIND, FRAME_LEN, FRAME_RESERVED, KIND_END, KIND_HEADER, KIND_RUN, MAGIC, MAX_HEADER_BODY,
    MAX_RUN_BLOCKS, MAX_RUN_BODY, PREAMBLE_LEN, R_HEAD_LEN, RUN_DATA, RUN_ZEROS, RunHead,
};

/// What a stream yields, in order: one header, runs, one end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Header(CycleHeader),
    /// A run, range-checked; data decompressed and digest-verified.
    Run(Run),
    /// Every run arrived, in order, intact: the point may be made visible.
    End(End),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Preamble,
    Header,
    Runs,
    Done,
}

/// Progress through the runs: what the end record must match, and what a
/// resume point records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Progress {
    pub runs: u64,
    pub blocks: u64,
    pub chain: Digest,
    pub next: Position,
}

impl Progress {
    pub(crate) fn start(resume: Option<ResumePoint>) -> Progress {
        match resume {
            None => Progress {
                runs: 0,
                blocks: 0,
                chain: [0; 32],
                next: Position::START,
            },
            Some(r) => Progress {
                runs: r.runs,
                blocks: r.blocks,
                chain: r.chain,
                next: r.next,
            },
        }
    }

    pub(crate) fn resume_point(&self) -> Option<ResumePoint> {
        (self.runs > 0).then_some(ResumePoint {
            runs: self.runs,
            blocks: self.blocks,
            chain: self.chain,
            next: self.next,
        })
    }
}

/// The incremental decoder of one stream.
pub struct Decoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    pos: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    state: State,
    record: u64,
    expect_resume: Option<Option<ResumePoint>>,
    volume_blocks: Vec<u64>,
    compression: Compression,
    progress: Progress,
    failed: Option<StreamError>,
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// A decoder that takes whatever resume point the header states (the
    /// caller may compare [`CycleHeader::resume`] itself).
    pub fn new() -> Decoder {
        Decoder {
            buf: Vec::new(),
            pos: 0,
            base: 0,
            state: State::Preamble,
            record: 0,
            expect_resume: None,
            volume_blocks: Vec::new(),
            compression: Compression::None,
            progress: Progress::start(None),
            failed: None,
            decompressor: None,
        }
    }

    /// A decoder for a receiver that stopped at `resume` (`None`: it has no
    /// run of this cycle): the header must state exactly that.
    pub fn resuming(resume: Option<ResumePoint>) -> Decoder {
        Decoder {
            expect_resume: Some(resume),
            ..Decoder::new()
        }
    }

    /// Bytes as they arrive, in any chunking.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.base += self.pos as u64;
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Where the receiver is: the resume point after the runs yielded so far
    /// (`None` before the first run of a fresh cycle).
    pub fn resume_point(&self) -> Option<ResumePoint> {
        self.progress.resume_point()
    }

    /// The next event, `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<Event>, StreamError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.step();
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    /// The input has ended: `Ok` only if the end record was taken and
    /// nothing follows it. Call after `next_event` returned `Ok(None)`.
    pub fn finish(&self) -> Result<(), StreamError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let avail = (self.buf.len() - self.pos) as u64;
        let offset = self.base + self.pos as u64;
        let truncated = |part, need| StreamError::Truncated {
            offset,
            record: self.record,
            part,
            have: avail,
            need,
        };
        match self.state {
            State::Done if avail == 0 => Ok(()),
            State::Done => Err(StreamError::TrailingBytes {
                offset,
                count: avail,
            }),
            State::Preamble => Err(truncated(Part::Preamble, PREAMBLE_LEN as u64)),
            State::Header | State::Runs if avail < FRAME_LEN as u64 => {
                Err(truncated(Part::Frame, FRAME_LEN as u64))
            }
            State::Header | State::Runs => {
                let len = wire::u32_at(&self.buf[self.pos..], FRAME_BODY_LEN);
                Err(StreamError::Truncated {
                    offset,
                    record: self.record,
                    part: Part::Body,
                    have: avail - FRAME_LEN as u64,
                    need: u64::from(len),
                })
            }
        }
    }

    fn step(&mut self) -> Result<Option<Event>, StreamError> {
        let avail = &self.buf[self.pos..];
        let offset = self.base + self.pos as u64;
        match self.state {
            State::Preamble => {
                let n = avail.len().min(MAGIC.len());
                if avail[..n] != MAGIC[..n] {
                    return Err(StreamError::BadMagic {
                        found: avail[..n].to_vec(),
                    });
                }
                if avail.len() < PREAMBLE_LEN {
                    return Ok(None);
                }
                let version = u16::from_le_bytes([avail[8], avail[9]]);
                if version != FORMAT_VERSION {
                    return Err(StreamError::UnsupportedVersion {
                        found: version,
                        supported: FORMAT_VERSION,
                    });
                }
                let flags = u16::from_le_bytes([avail[10], avail[11]]);
                if flags != 0 {
                    return Err(StreamError::UnknownFlags { found: flags });
                }
                self.pos += PREAMBLE_LEN;
                self.state = State::Header;
                self.step()
            }
            State::Done => {
                if avail.is_empty() {
                    Ok(None)
                } else {
                    Err(StreamError::TrailingBytes {
                        offset,
                        count: avail.len() as u64,
                    })
                }
            }
            State::Header | State::Runs => {
                if avail.len() < FRAME_LEN {
                    return Ok(None);
                }
                let mut at = At {
                    record: self.record,
                    kind: None,
                    offset,
                };
                let kind = match avail[FRAME_KIND] {
                    KIND_HEADER => RecordKind::Header,
                    KIND_RUN => RecordKind::Run,
                    KIND_END => RecordKind::End,
                    found => return Err(StreamError::UnknownRecordKind { at, found }),
                };
                at.kind = Some(kind);
                let expected = match (self.state, kind) {
                    (State::Header, RecordKind::Header) => None,
                    (State::Header, _) => Some("the header"),
                    (_, RecordKind::Header) => Some("a run or the end"),
                    _ => None,
                };
                if let Some(expected) = expected {
                    return Err(StreamError::UnexpectedRecord {
                        at,
                        found: kind,
                        expected,
                    });
                }
                if avail[FRAME_RESERVED..FRAME_BODY_LEN] != [0, 0, 0] {
                    return Err(StreamError::InvalidValue {
                        at,
                        field: "frame reserved",
                    });
                }
                let len = wire::u32_at(avail, FRAME_BODY_LEN) as usize;
                let max = match kind {
                    RecordKind::Header => MAX_HEADER_BODY,
                    RecordKind::Run => MAX_RUN_BODY,
                    RecordKind::End => E_LEN,
                };
                if len > max {
                    return Err(StreamError::RecordTooLarge {
                        at,
                        len: len as u64,
                        max: max as u64,
                    });
                }
                if avail.len() < FRAME_LEN + len {
                    return Ok(None);
                }
                let frame = &avail[..FRAME_LEN];
                let body = &avail[FRAME_LEN..FRAME_LEN + len];
                let stored = wire::u32_at(frame, FRAME_CRC);
                let computed = wire::frame_crc(frame, body);
                if stored != computed {
                    return Err(StreamError::CrcMismatch {
                        at,
                        stored,
                        computed,
                    });
                }
                let start = self.pos + FRAME_LEN;
                let buf = std::mem::take(&mut self.buf);
                let body = &buf[start..start + len];
                let event = match kind {
                    RecordKind::Header => self.header(body, at),
                    RecordKind::Run => self.run(body, at),
                    RecordKind::End => self.end(body, at),
                };
                self.buf = buf;
                let event = event?;
                self.pos += FRAME_LEN + len;
                self.record += 1;
                Ok(Some(event))
            }
        }
    }

    fn header(&mut self, body: &[u8], at: At) -> Result<Event, StreamError> {
        let header = wire::parse_header_body(body, at)?;
        if let Some(expected) = self.expect_resume
            && expected != header.resume
        {
            return Err(StreamError::ResumeMismatch {
                at,
                expected: Box::new(expected),
                found: Box::new(header.resume),
            });
        }
        self.volume_blocks = header.volumes.iter().map(|v| v.blocks()).collect();
        self.compression = header.compression;
        self.progress = Progress::start(header.resume);
        self.state = State::Runs;
        Ok(Event::Header(header))
    }

    fn run(&mut self, body: &[u8], at: At) -> Result<Event, StreamError> {
        if body.len() < R_HEAD_LEN {
            return Err(StreamError::Malformed {
                at,
                field: "run head",
            });
        }
        let head = RunHead::parse(body);
        let payload = &body[R_HEAD_LEN..];
        check_run(
            &head,
            payload.len(),
            &self.volume_blocks,
            self.compression,
            &self.progress,
            at,
        )?;
        let content = if head.kind == RUN_ZEROS {
            RunContent::Zeros(head.count)
        } else {
            let expected = head.count as usize * BLOCK_SIZE;
            let data = match wire::compression_from(head.compression) {
                Some(Compression::Zstd) => {
                    let mut out = Vec::with_capacity(expected);
                    let z = match self.decompressor.as_mut() {
                        Some(z) => z,
                        None => self
                            .decompressor
                            .insert(zstd::bulk::Decompressor::new().map_err(|e| {
                                StreamError::Decompress {
                                    at,
                                    expected,
                                    detail: e.to_string(),
                                }
                            })?),
                    };
                    match z.decompress_to_buffer(payload, &mut out) {
                        Ok(n) if n == expected => out,
                        Ok(n) => {
                            return Err(StreamError::Decompress {
                                at,
                                expected,
                                detail: format!("{n} bytes"),
                            });
                        }
                        Err(e) => {
                            return Err(StreamError::Decompress {
                                at,
                                expected,
                                detail: e.to_string(),
                            });
                        }
                    }
                }
                _ => payload.to_vec(),
            };
            if *blake3::hash(&data).as_bytes() != head.digest {
                return Err(StreamError::DigestMismatch {
                    at,
                    slot: head.slot,
                    first: head.first,
                    count: head.count,
                });
            }
            RunContent::Data(data)
        };
        self.progress = advance(&self.progress, &head);
        Ok(Event::Run(Run {
            slot: head.slot,
            first: head.first,
            content,
        }))
    }

    fn end(&mut self, body: &[u8], at: At) -> Result<Event, StreamError> {
        if body.len() != E_LEN {
            return Err(StreamError::Malformed {
                at,
                field: "end body",
            });
        }
        let end = End {
            runs: wire::u64_at(body, E_RUNS),
            blocks: wire::u64_at(body, E_BLOCKS),
            chain: wire::digest_at(body, E_CHAIN),
        };
        check_end(&end, &self.progress, at)?;
        self.state = State::Done;
        Ok(Event::End(end))
    }
}

/// The checks a run's head passes before its payload is looked at (by
/// decoder and encoder).
pub(crate) fn check_run(
    head: &RunHead,
    payload_len: usize,
    volume_blocks: &[u64],
    compression: Compression,
    progress: &Progress,
    at: At,
) -> Result<(), StreamError> {
    let invalid = |field: &'static str| StreamError::InvalidValue { at, field };
    if head.reserved != 0 {
        return Err(invalid("run reserved"));
    }
    if head.payload_len as usize != payload_len {
        return Err(StreamError::Malformed {
            at,
            field: "payload length",
        });
    }
    let Some(&blocks) = volume_blocks.get(head.slot.0 as usize) else {
        return Err(StreamError::SlotOutOfRange {
            at,
            slot: head.slot,
            volumes: volume_blocks.len(),
        });
    };
    if head.count == 0 {
        return Err(invalid("block count"));
    }
    if head
        .first
        .0
        .checked_add(u64::from(head.count))
        .is_none_or(|e| e > blocks)
    {
        return Err(StreamError::RunOutOfRange {
            at,
            slot: head.slot,
            first: head.first,
            count: head.count,
            volume_blocks: blocks,
        });
    }
    let pos = Position {
        slot: head.slot,
        block: head.first,
    };
    if pos < progress.next {
        return Err(StreamError::RunOutOfOrder {
            at,
            slot: head.slot,
            first: head.first,
            after: progress.next,
        });
    }
    let c = wire::compression_from(head.compression).ok_or(invalid("run compression"))?;
    match head.kind {
        RUN_ZEROS => {
            if c != Compression::None {
                return Err(invalid("run compression"));
            }
            if payload_len != 0 {
                return Err(invalid("payload length"));
            }
            if head.digest != [0; 32] {
                return Err(invalid("digest"));
            }
        }
        RUN_DATA => {
            if head.count > MAX_RUN_BLOCKS {
                return Err(StreamError::RunTooLarge {
                    at,
                    count: head.count,
                    max: MAX_RUN_BLOCKS,
                });
            }
            let raw = head.count as usize * BLOCK_SIZE;
            match c {
                Compression::None if payload_len != raw => {
                    return Err(invalid("payload length"));
                }
                Compression::Zstd if compression != Compression::Zstd => {
                    return Err(StreamError::CompressionNotInUse { at });
                }
                // Compressed payloads are kept only when smaller.
                Compression::Zstd if payload_len == 0 || payload_len >= raw => {
                    return Err(invalid("payload length"));
                }
                _ => {}
            }
        }
        _ => return Err(invalid("run kind")),
    }
    Ok(())
}

pub(crate) fn advance(p: &Progress, head: &RunHead) -> Progress {
    Progress {
        runs: p.runs.saturating_add(1),
        blocks: p.blocks.saturating_add(u64::from(head.count)),
        chain: wire::chain_link(
            &p.chain,
            head.slot,
            head.first,
            head.count,
            head.kind,
            &head.digest,
        ),
        next: Position {
            slot: head.slot,
            block: BlockIndex(head.first.0 + u64::from(head.count)),
        },
    }
}

pub(crate) fn check_end(end: &End, p: &Progress, at: At) -> Result<(), StreamError> {
    if end.runs != p.runs {
        return Err(StreamError::EndCountMismatch {
            at,
            field: "runs",
            stated: end.runs,
            counted: p.runs,
        });
    }
    if end.blocks != p.blocks {
        return Err(StreamError::EndCountMismatch {
            at,
            field: "blocks",
            stated: end.blocks,
            counted: p.blocks,
        });
    }
    if end.chain != p.chain {
        return Err(StreamError::EndChainMismatch {
            at,
            stated: end.chain,
            counted: p.chain,
        });
    }
    Ok(())
}
