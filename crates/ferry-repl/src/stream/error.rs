//! What can be wrong with a stream, named: which record, which field.

use std::fmt;

use super::types::{BlockIndex, Digest, Position, ResumePoint, SlotIndex};

/// The kinds of record after the preamble.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    Header,
    Run,
    End,
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordKind::Header => "header",
            RecordKind::Run => "run",
            RecordKind::End => "end",
        })
    }
}

/// Where in the stream: the record's number (0 is the header), its kind
/// when known, and the byte offset where its frame starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct At {
    pub record: u64,
    pub kind: Option<RecordKind>,
    pub offset: u64,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Some(k) => write!(f, "{k} record {} at byte {}", self.record, self.offset),
            None => write!(f, "record {} at byte {}", self.record, self.offset),
        }
    }
}

/// Which part of the stream a truncation cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    Preamble,
    Frame,
    Body,
}

/// The problem with a stream; the decoder stops at the first and repeats it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("not a replication stream: bad magic {found:02x?}")]
    BadMagic { found: Vec<u8> },
    #[error("unsupported stream format version {found} (this build reads {supported})")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("unknown stream flags {found:#06x}")]
    UnknownFlags { found: u16 },
    #[error("{at}: unknown record kind {found}")]
    UnknownRecordKind { at: At, found: u8 },
    #[error("{at}: {found} record where {expected} was expected")]
    UnexpectedRecord {
        at: At,
        found: RecordKind,
        expected: &'static str,
    },
    #[error("{at}: body of {len} bytes is larger than the {max} allowed")]
    RecordTooLarge { at: At, len: u64, max: u64 },
    #[error("{at}: CRC32C mismatch (frame says {stored:#010x}, bytes give {computed:#010x})")]
    CrcMismatch { at: At, stored: u32, computed: u32 },
    #[error("{at}: malformed field {field}")]
    Malformed { at: At, field: &'static str },
    #[error("{at}: invalid value in field {field}")]
    InvalidValue { at: At, field: &'static str },
    #[error("{at}: header resumes at {found:?}, receiver stopped at {expected:?}")]
    ResumeMismatch {
        at: At,
        expected: Box<Option<ResumePoint>>,
        found: Box<Option<ResumePoint>>,
    },
    #[error("{at}: slot {} out of range ({volumes} volumes)", slot.0)]
    SlotOutOfRange {
        at: At,
        slot: SlotIndex,
        volumes: usize,
    },
    #[error("{at}: blocks {}+{count} outside slot {} of {volume_blocks} blocks", first.0, slot.0)]
    RunOutOfRange {
        at: At,
        slot: SlotIndex,
        first: BlockIndex,
        count: u32,
        volume_blocks: u64,
    },
    #[error("{at}: run at slot {} block {} starts before the end of the previous run ({after:?})", slot.0, first.0)]
    RunOutOfOrder {
        at: At,
        slot: SlotIndex,
        first: BlockIndex,
        after: Position,
    },
    #[error("{at}: data run of {count} blocks is larger than the {max} allowed")]
    RunTooLarge { at: At, count: u32, max: u32 },
    #[error("{at}: payload is zstd but the header says compression is off")]
    CompressionNotInUse { at: At },
    #[error("{at}: payload does not decompress to the run's {expected} bytes: {detail}")]
    Decompress {
        at: At,
        expected: usize,
        detail: String,
    },
    #[error("{at}: blake3 digest of slot {} blocks {}+{count} does not match", slot.0, first.0)]
    DigestMismatch {
        at: At,
        slot: SlotIndex,
        first: BlockIndex,
        count: u32,
    },
    #[error("{at}: end says {field} {stated}, the stream had {counted}")]
    EndCountMismatch {
        at: At,
        field: &'static str,
        stated: u64,
        counted: u64,
    },
    #[error("{at}: end chain digest does not match the runs received")]
    EndChainMismatch {
        at: At,
        stated: Digest,
        counted: Digest,
    },
    #[error("{count} bytes after the end record, at byte {offset}")]
    TrailingBytes { offset: u64, count: u64 },
    #[error(
        "stream truncated at byte {offset}: {part:?} of record {record} has {have} of {need} bytes"
    )]
    Truncated {
        offset: u64,
        record: u64,
        part: Part,
        have: u64,
        need: u64,
    },
}

/// What the encoder refuses to write.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("record would make an invalid stream")]
    Invalid(#[source] StreamError),
    #[error("{what} after {state}")]
    OutOfTurn {
        what: &'static str,
        state: &'static str,
    },
    #[error("data run of {len} bytes is not a whole number of 4 KiB blocks, or is empty")]
    NotWholeBlocks { len: usize },
    #[error("zstd compression failed")]
    Compress(#[source] std::io::Error),
}
