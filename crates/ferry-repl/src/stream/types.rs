//! The values a stream carries, checked and ready to use.
//!
//! Ids and indexes are newtypes so a slot index is never taken for a block
//! index. These types hold no bytes of the wire; `wire` maps them.

use super::wire::BLOCK_SIZE;

/// A snapshot id as both sites' catalogs know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotId(pub u64);

/// The primary's number for a cycle of a group; a resumed cycle keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CycleId(pub u64);

/// Index of a volume in the header's volume list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotIndex(pub u32);

/// Index of a 4 KiB block within a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockIndex(pub u64);

/// A blake3 digest.
pub type Digest = [u8; 32];

/// How payloads are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Zstd,
}

/// A snapshot both sides hold or will hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Point {
    pub snapshot: SnapshotId,
    pub name: String,
    /// Creation time at the source, nanoseconds since the Unix epoch (as its
    /// catalog keeps it).
    pub created: u64,
}

/// One volume (slot) of the group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// The slot name in the group.
    pub slot: String,
    /// Size in bytes, a multiple of [`BLOCK_SIZE`].
    pub size: u64,
}

impl Volume {
    pub fn blocks(&self) -> u64 {
        self.size / BLOCK_SIZE as u64
    }
}

/// A place in the cycle: the first block not yet covered by a run.
/// Runs are ordered by (slot, block).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub slot: SlotIndex,
    pub block: BlockIndex,
}

impl Position {
    pub const START: Position = Position {
        slot: SlotIndex(0),
        block: BlockIndex(0),
    };
}

/// Where an interrupted cycle resumes: after `runs` acknowledged runs.
///
/// The receiver keeps the same four values as it applies runs; a resumed
/// stream is accepted only if its header repeats them exactly
/// ([`super::Decoder::resuming`]), so it continues where the receiver
/// stopped, and the end record still covers the whole cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResumePoint {
    /// Runs acknowledged before the interruption (≥ 1).
    pub runs: u64,
    /// Blocks those runs covered.
    pub blocks: u64,
    /// The chain digest after those runs.
    pub chain: Digest,
    /// The end of the last acknowledged run: the next run starts at or after it.
    pub next: Position,
}

/// The cycle header: what the runs that follow are about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CycleHeader {
    pub group: String,
    pub cycle: CycleId,
    /// The point both sides hold; `None` for an initial copy.
    pub base: Option<SnapshotId>,
    /// The point this cycle makes.
    pub point: Point,
    pub volumes: Vec<Volume>,
    /// The compression in use; each run says whether it used it.
    pub compression: Compression,
    /// `None` for a fresh cycle.
    pub resume: Option<ResumePoint>,
}

/// What a run carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunContent {
    /// The blocks' bytes, uncompressed, a whole number of blocks.
    Data(Vec<u8>),
    /// This many blocks of zeros; no payload.
    Zeros(u32),
}

/// A run of blocks of one volume, as decoded (data decompressed and
/// digest-verified) or as given to the encoder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub slot: SlotIndex,
    pub first: BlockIndex,
    pub content: RunContent,
}

impl Run {
    /// Number of blocks covered (data length / 4096 for data runs).
    pub fn blocks(&self) -> u64 {
        match &self.content {
            RunContent::Data(d) => (d.len() / BLOCK_SIZE) as u64,
            RunContent::Zeros(n) => u64::from(*n),
        }
    }
}

/// The end record: the cycle is complete when its values match the runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct End {
    /// Runs in the whole cycle (those before a resume included).
    pub runs: u64,
    /// Blocks covered by all runs.
    pub blocks: u64,
    /// The chain digest after the last run.
    pub chain: Digest,
}
