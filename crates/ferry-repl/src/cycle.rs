//! One cycle's two ends, with no I/O: [`CycleSender`] turns the changed
//! blocks of a snapshot into stream bytes, a run at a time, reading blocks
//! through a [`BlockSource`]; [`CycleReceiver`] takes stream bytes as they
//! arrive and applies runs to a [`ReplicaSink`], telling its caller when a
//! checkpoint is due and when the cycle is complete.
//!
//! Invariants: the sender emits runs in (slot, block) order, each within
//! one contiguous range of changed blocks and at most [`RUN_BLOCKS`] long,
//! starting at the resume point's position when resuming. The receiver
//! applies a run only once the decoder verified it, and reports
//! [`Received::End`] only after the end record matched every run; what it
//! applied is always a prefix of the cycle, described by
//! [`CycleReceiver::resume_point`], which never counts a run the sink
//! failed to write (after such a failure the receiver stays failed).
//!
//! Must not: touch sockets, files, the store or a clock.

use roaring::RoaringBitmap;

use crate::stream::{
    BlockIndex, CycleHeader, Decoder, EncodeError, Encoder, End, Event, Position, ResumePoint, Run,
    RunContent, SlotIndex, StreamError,
};

/// Blocks per run the sender makes (1 MiB): small enough to resume
/// finely and keep memory low, large enough to amortise framing.
pub const RUN_BLOCKS: u32 = 256;

/// Where the sender reads blocks.
pub trait BlockSource {
    /// Fills `buf` (a whole number of blocks) from block `first` of the
    /// volume at `slot` in the header's list.
    fn read(&mut self, slot: usize, first: u64, buf: &mut [u8]) -> Result<(), String>;
}

/// Where the receiver writes blocks.
pub trait ReplicaSink {
    fn write(&mut self, slot: usize, first: u64, data: &[u8]) -> Result<(), String>;
    fn zero(&mut self, slot: usize, first: u64, blocks: u64) -> Result<(), String>;
}

/// Why a sender stopped.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("reading blocks: {0}")]
    Source(String),
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// Encodes one cycle, a run per call of [`CycleSender::next_chunk`].
pub struct CycleSender {
    header: Option<CycleHeader>,
    encoder: Encoder,
    /// Per slot, the blocks still to send.
    changed: Vec<RoaringBitmap>,
    slot: usize,
    buf: Vec<u8>,
    done: bool,
    /// Data bytes covered by runs so far (uncompressed, zeros included).
    pub covered_bytes: u64,
}

impl CycleSender {
    /// `changed[i]` is the set of blocks to send of the header's volume `i`.
    /// With `header.resume` set, blocks before its position are skipped.
    pub fn new(header: CycleHeader, mut changed: Vec<RoaringBitmap>, zstd_level: i32) -> Self {
        changed.resize(header.volumes.len(), RoaringBitmap::new());
        let mut slot = 0;
        if let Some(r) = &header.resume {
            slot = r.next.slot.0 as usize;
            for c in changed.iter_mut().take(slot) {
                c.clear();
            }
            if let Some(c) = changed.get_mut(slot) {
                let below = u32::try_from(r.next.block.0).unwrap_or(u32::MAX);
                c.remove_range(..below);
            }
        }
        CycleSender {
            header: Some(header),
            encoder: Encoder::new(zstd_level),
            changed,
            slot,
            buf: Vec::new(),
            done: false,
            covered_bytes: 0,
        }
    }

    /// Blocks still to send.
    pub fn blocks_left(&self) -> u64 {
        self.changed.iter().map(|c| c.len()).sum()
    }

    /// Appends the next piece of the stream to `out` (the header, a run, or
    /// the end record); returns false once the end record was written.
    pub fn next_chunk(
        &mut self,
        src: &mut dyn BlockSource,
        out: &mut Vec<u8>,
    ) -> Result<bool, SendError> {
        if self.done {
            return Ok(false);
        }
        if let Some(h) = self.header.take() {
            self.encoder.header(&h, out)?;
            return Ok(true);
        }
        while self.slot < self.changed.len() {
            let set = &mut self.changed[self.slot];
            let Some(first) = set.min() else {
                self.slot += 1;
                continue;
            };
            let mut n = 1u32;
            while n < RUN_BLOCKS && first.checked_add(n).is_some_and(|b| set.contains(b)) {
                n += 1;
            }
            set.remove_range(first..first + n);
            let bytes = n as usize * crate::stream::BLOCK_SIZE;
            self.buf.resize(bytes, 0);
            src.read(self.slot, u64::from(first), &mut self.buf)
                .map_err(SendError::Source)?;
            let content = if self.buf.iter().all(|b| *b == 0) {
                RunContent::Zeros(n)
            } else {
                RunContent::Data(std::mem::take(&mut self.buf))
            };
            let run = Run {
                slot: SlotIndex(self.slot as u32),
                first: BlockIndex(u64::from(first)),
                content,
            };
            self.encoder.run(&run, out)?;
            if let RunContent::Data(d) = run.content {
                self.buf = d;
            }
            self.covered_bytes += bytes as u64;
            return Ok(true);
        }
        self.encoder.end(out)?;
        self.done = true;
        Ok(true)
    }
}

/// What the receiver made of the bytes so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// The header arrived: the caller checks it and prepares the replica.
    Header(CycleHeader),
    /// Runs were applied; this many blocks since the last checkpoint.
    Applied { since_checkpoint: u64 },
    /// Nothing whole is buffered: push more bytes.
    NeedMore,
    /// The whole cycle arrived and verified.
    End(End),
}

/// Why a receiver stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("writing blocks: {0}")]
    Sink(String),
    #[error("the header was not accepted yet")]
    NoHeader,
}

/// Decodes one cycle and applies its runs.
pub struct CycleReceiver {
    decoder: Decoder,
    header_seen: bool,
    accepted: bool,
    /// Where what the sink took ends: the decoder's point, but not past a
    /// run the sink refused.
    applied: Option<ResumePoint>,
    /// The sink's error: the receiver stays failed.
    sink_failed: Option<String>,
    since_checkpoint: u64,
    /// Runs applied in this connection.
    pub runs_applied: u64,
    /// Payload bytes covered by the runs applied in this connection.
    pub bytes_applied: u64,
}

impl Default for CycleReceiver {
    fn default() -> Self {
        CycleReceiver::new()
    }
}

impl CycleReceiver {
    pub fn new() -> CycleReceiver {
        CycleReceiver {
            decoder: Decoder::new(),
            header_seen: false,
            accepted: false,
            applied: None,
            sink_failed: None,
            since_checkpoint: 0,
            runs_applied: 0,
            bytes_applied: 0,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.decoder.push(bytes);
    }

    /// The caller checked the header (and its resume point against its own).
    pub fn accept_header(&mut self) {
        self.accepted = true;
    }

    /// What the replica holds of this cycle: a prefix ending here. A run
    /// the sink failed to write is not in it.
    pub fn resume_point(&self) -> Option<ResumePoint> {
        self.applied
    }

    /// The caller made what was applied durable.
    pub fn checkpointed(&mut self) {
        self.since_checkpoint = 0;
    }

    /// Applies whatever whole records are buffered, up to `budget` blocks
    /// (so the caller can checkpoint in between).
    pub fn poll(
        &mut self,
        sink: &mut dyn ReplicaSink,
        budget: u64,
    ) -> Result<Received, ReceiveError> {
        if self.header_seen && !self.accepted {
            return Err(ReceiveError::NoHeader);
        }
        if let Some(e) = &self.sink_failed {
            return Err(ReceiveError::Sink(e.clone()));
        }
        let mut applied = false;
        loop {
            if applied && self.since_checkpoint >= budget {
                return Ok(Received::Applied {
                    since_checkpoint: self.since_checkpoint,
                });
            }
            match self.decoder.next_event()? {
                None => {
                    return Ok(if applied {
                        Received::Applied {
                            since_checkpoint: self.since_checkpoint,
                        }
                    } else {
                        Received::NeedMore
                    });
                }
                Some(Event::Header(h)) => {
                    self.header_seen = true;
                    self.applied = h.resume;
                    return Ok(Received::Header(h));
                }
                Some(Event::Run(run)) => {
                    let slot = run.slot.0 as usize;
                    let n = run.blocks();
                    let wrote = match &run.content {
                        RunContent::Data(d) => sink.write(slot, run.first.0, d),
                        RunContent::Zeros(_) => sink.zero(slot, run.first.0, n),
                    };
                    if let Err(e) = wrote {
                        self.sink_failed = Some(e.clone());
                        return Err(ReceiveError::Sink(e));
                    }
                    self.applied = self.decoder.resume_point();
                    self.since_checkpoint += n;
                    self.runs_applied += 1;
                    self.bytes_applied += n * crate::stream::BLOCK_SIZE as u64;
                    applied = true;
                }
                Some(Event::End(end)) => {
                    self.decoder.finish()?;
                    return Ok(Received::End(end));
                }
            }
        }
    }
}

/// A resume point as text, for a catalog or a JSON field:
/// `runs:blocks:slot:block:chain-hex`.
pub fn resume_to_text(r: &ResumePoint) -> String {
    let mut chain = String::with_capacity(64);
    for b in r.chain {
        chain.push_str(&format!("{b:02x}"));
    }
    format!(
        "{}:{}:{}:{}:{chain}",
        r.runs, r.blocks, r.next.slot.0, r.next.block.0
    )
}

/// Parses [`resume_to_text`]'s form.
pub fn resume_from_text(s: &str) -> Option<ResumePoint> {
    let mut it = s.split(':');
    let runs = it.next()?.parse().ok()?;
    let blocks = it.next()?.parse().ok()?;
    let slot = it.next()?.parse().ok()?;
    let block = it.next()?.parse().ok()?;
    let hex = it.next()?;
    if it.next().is_some() || hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut chain = [0u8; 32];
    for (i, c) in chain.iter_mut().enumerate() {
        *c = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(ResumePoint {
        runs,
        blocks,
        chain,
        next: Position {
            slot: SlotIndex(slot),
            block: BlockIndex(block),
        },
    })
}
