//! The encoder: appends a cycle's records to a `Vec<u8>`.
//!
//! It keeps what the end record needs (run count, blocks, chain digest)
//! and checks each record with the decoder's own checks, so it cannot
//! write a stream the decoder refuses. Zstd payloads are kept only when
//! smaller than the raw blocks; otherwise the run goes uncompressed.

use super::decode::{Progress, advance, check_end, check_run};
use super::error::{At, EncodeError, RecordKind};
use super::types::{Compression, CycleHeader, End, ResumePoint, Run, RunContent};
use super::wire::{
    self, BLOCK_SIZE, KIND_END, KIND_HEADER, KIND_RUN, MAX_HEADER_BODY, RUN_DATA, RUN_ZEROS,
    RunHead,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Header,
    Runs,
    Done,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Header => "nothing",
            State::Runs => "the header",
            State::Done => "the end",
        }
    }
}

/// Encodes one cycle: [`header`](Encoder::header), any number of
/// [`run`](Encoder::run)s in (slot, block) order, [`end`](Encoder::end).
pub struct Encoder {
    state: State,
    level: i32,
    compression: Compression,
    volume_blocks: Vec<u64>,
    progress: Progress,
    offset: u64,
    record: u64,
    scratch: Vec<u8>,
    compressor: Option<zstd::bulk::Compressor<'static>>,
}

impl Encoder {
    /// `zstd_level` is used when the header asks for zstd (3 is zstd's default).
    pub fn new(zstd_level: i32) -> Encoder {
        Encoder {
            state: State::Header,
            level: zstd_level,
            compression: Compression::None,
            volume_blocks: Vec::new(),
            progress: Progress::start(None),
            offset: 0,
            record: 0,
            scratch: Vec::new(),
            compressor: None,
        }
    }

    /// The resume point after the runs written so far.
    pub fn resume_point(&self) -> Option<ResumePoint> {
        self.progress.resume_point()
    }

    fn at(&self, kind: RecordKind) -> At {
        At {
            record: self.record,
            kind: Some(kind),
            offset: self.offset,
        }
    }

    fn turn(&self, want: State, what: &'static str) -> Result<(), EncodeError> {
        if self.state != want {
            return Err(EncodeError::OutOfTurn {
                what,
                state: self.state.name(),
            });
        }
        Ok(())
    }

    fn wrote(&mut self, out: &[u8], start: usize) {
        self.offset += (out.len() - start) as u64;
        self.record += 1;
    }

    /// Appends the preamble and the header. A header with a resume point
    /// continues the count, blocks and chain from it.
    pub fn header(&mut self, h: &CycleHeader, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.turn(State::Header, "header")?;
        let at = At {
            record: 0,
            kind: Some(RecordKind::Header),
            offset: wire::PREAMBLE_LEN as u64,
        };
        wire::check_header(h, at).map_err(EncodeError::Invalid)?;
        let mut body = Vec::new();
        wire::put_header_body(&mut body, h);
        if body.len() > MAX_HEADER_BODY {
            return Err(EncodeError::Invalid(
                super::error::StreamError::RecordTooLarge {
                    at,
                    len: body.len() as u64,
                    max: MAX_HEADER_BODY as u64,
                },
            ));
        }
        out.extend_from_slice(&wire::preamble());
        self.offset = wire::PREAMBLE_LEN as u64;
        let start = out.len();
        wire::append_frame(out, KIND_HEADER, |o| o.extend_from_slice(&body));
        self.wrote(out, start);
        self.compression = h.compression;
        self.volume_blocks = h.volumes.iter().map(|v| v.blocks()).collect();
        self.progress = Progress::start(h.resume);
        self.state = State::Runs;
        Ok(())
    }

    /// Appends a run; data is compressed when the header asked for zstd and
    /// it helps.
    pub fn run(&mut self, run: &Run, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.turn(State::Runs, "run")?;
        let at = self.at(RecordKind::Run);
        let (head, payload): (RunHead, &[u8]) = match &run.content {
            RunContent::Zeros(n) => (
                RunHead {
                    slot: run.slot,
                    first: run.first,
                    count: *n,
                    kind: RUN_ZEROS,
                    compression: wire::compression_code(Compression::None),
                    reserved: 0,
                    payload_len: 0,
                    digest: [0; 32],
                },
                &[],
            ),
            RunContent::Data(data) => {
                if data.is_empty() || data.len() % BLOCK_SIZE != 0 {
                    return Err(EncodeError::NotWholeBlocks { len: data.len() });
                }
                let count = u32::try_from(data.len() / BLOCK_SIZE).unwrap_or(u32::MAX);
                let mut used = Compression::None;
                if self.compression == Compression::Zstd && count <= wire::MAX_RUN_BLOCKS {
                    if self.compressor.is_none() {
                        self.compressor = Some(
                            zstd::bulk::Compressor::new(self.level)
                                .map_err(EncodeError::Compress)?,
                        );
                    }
                    self.scratch.clear();
                    self.scratch
                        .reserve(zstd::zstd_safe::compress_bound(data.len()));
                    if let Some(z) = self.compressor.as_mut() {
                        z.compress_to_buffer(data, &mut self.scratch)
                            .map_err(EncodeError::Compress)?;
                    }
                    if self.scratch.len() < data.len() {
                        used = Compression::Zstd;
                    }
                }
                let payload: &[u8] = match used {
                    Compression::Zstd => &self.scratch,
                    Compression::None => data,
                };
                (
                    RunHead {
                        slot: run.slot,
                        first: run.first,
                        count,
                        kind: RUN_DATA,
                        compression: wire::compression_code(used),
                        reserved: 0,
                        payload_len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
                        digest: *blake3::hash(data).as_bytes(),
                    },
                    payload,
                )
            }
        };
        check_run(
            &head,
            payload.len(),
            &self.volume_blocks,
            self.compression,
            &self.progress,
            at,
        )
        .map_err(EncodeError::Invalid)?;
        let start = out.len();
        wire::append_frame(out, KIND_RUN, |o| {
            head.put(o);
            o.extend_from_slice(payload);
        });
        self.progress = advance(&self.progress, &head);
        self.wrote(out, start);
        Ok(())
    }

    /// Appends the end record; the stream is complete.
    pub fn end(&mut self, out: &mut Vec<u8>) -> Result<End, EncodeError> {
        self.turn(State::Runs, "end")?;
        let end = End {
            runs: self.progress.runs,
            blocks: self.progress.blocks,
            chain: self.progress.chain,
        };
        check_end(&end, &self.progress, self.at(RecordKind::End)).map_err(EncodeError::Invalid)?;
        let start = out.len();
        wire::append_frame(out, KIND_END, |o| wire::put_end_body(o, &end));
        self.wrote(out, start);
        self.state = State::Done;
        Ok(end)
    }
}
