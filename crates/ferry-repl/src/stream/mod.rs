//! The replication stream: one cycle of one group, as a sequence of records.
//!
//! ```text
//! preamble  "FERRYRPL" magic, u16 version, u16 flags (0)
//! header    group, cycle id, base and new point, volumes, compression, resume
//! run*      slot, first block, block count, kind, compression, payload, digest
//! end       run count, total blocks, chain digest over every run
//! ```
//!
//! Every record is framed: kind, body length, CRC32C over frame and body,
//! so a truncated or corrupted stream is detected and named before anything
//! in it is used. A data run also carries the blake3 digest of its
//! uncompressed blocks, and the end record a chain digest over all runs in
//! order, so a receiver knows it got every run, in order, intact. The byte
//! layout is in `docs/format.md`, "Replication stream".
//!
//! Invariants the decoder enforces (and the encoder refuses to break):
//! runs lie inside their volume; runs are in ascending (slot, block) order
//! and never overlap; a data run holds at most [`MAX_RUN_BLOCKS`] blocks;
//! the end's totals and chain match the runs seen. This module does no I/O.

mod decode;
mod encode;
mod error;
mod types;
mod wire;

pub use decode::{Decoder, Event};
pub use encode::Encoder;
pub use error::{At, EncodeError, Part, RecordKind, StreamError};
pub use types::{
    BlockIndex, Compression, CycleHeader, CycleId, Digest, End, Point, Position, ResumePoint, Run,
    RunContent, SlotIndex, SnapshotId, Volume,
};
pub use wire::{
    BLOCK_SIZE, FORMAT_VERSION, FRAME_LEN, MAGIC, MAX_HEADER_BODY, MAX_NAME_LEN, MAX_RUN_BLOCKS,
    MAX_RUN_BYTES, MAX_VOLUMES, PREAMBLE_LEN,
};
