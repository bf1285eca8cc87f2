//! Byte layout: constants, offsets, and the mapping of records to bytes.
//!
//! All integers are little-endian. Offsets are `const` arithmetic so the
//! layout in `docs/format.md` and this file cannot disagree silently (the
//! golden-byte tests pin both). Nothing here allocates from a wire length
//! beyond the limits below.

use super::error::{At, StreamError};
use super::types::{
    BlockIndex, Compression, CycleHeader, CycleId, Digest, End, Point, Position, ResumePoint,
    SlotIndex, SnapshotId, Volume,
};

/// Block size: runs count 4 KiB blocks.
pub const BLOCK_SIZE: usize = 4096;
/// The stream's first eight bytes.
pub const MAGIC: [u8; 8] = *b"FERRYRPL";
/// The format this crate writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Magic, version, flags.
pub const PREAMBLE_LEN: usize = 8 + 2 + 2;

/// Record frame: kind u8, 3 reserved zero bytes, body length u32, CRC32C u32
/// over the frame's first 8 bytes and the body.
pub const FRAME_LEN: usize = 12;
pub(crate) const FRAME_KIND: usize = 0;
pub(crate) const FRAME_RESERVED: usize = 1;
pub(crate) const FRAME_BODY_LEN: usize = 4;
pub(crate) const FRAME_CRC: usize = 8;

pub(crate) const KIND_HEADER: u8 = 1;
pub(crate) const KIND_RUN: u8 = 2;
pub(crate) const KIND_END: u8 = 3;

/// Most blocks in a data run: 8 MiB uncompressed.
pub const MAX_RUN_BLOCKS: u32 = 2048;
/// Most payload bytes in a run (compressed payloads are kept only when smaller).
pub const MAX_RUN_BYTES: usize = MAX_RUN_BLOCKS as usize * BLOCK_SIZE;
/// Most bytes in a header body.
pub const MAX_HEADER_BODY: usize = 1 << 20;
/// Most volumes in a group's cycle.
pub const MAX_VOLUMES: usize = 4096;
/// Most bytes in a name (group, point, slot).
pub const MAX_NAME_LEN: usize = 255;

// Header body: fixed part, then group name, point name, volumes.
pub(crate) const H_CYCLE: usize = 0;
pub(crate) const H_BASE_PRESENT: usize = H_CYCLE + 8;
pub(crate) const H_BASE: usize = H_BASE_PRESENT + 1;
pub(crate) const H_POINT: usize = H_BASE + 8;
pub(crate) const H_CREATED: usize = H_POINT + 8;
pub(crate) const H_COMPRESSION: usize = H_CREATED + 8;
pub(crate) const H_RESUME_PRESENT: usize = H_COMPRESSION + 1;
pub(crate) const H_RESUME_RUNS: usize = H_RESUME_PRESENT + 1;
pub(crate) const H_RESUME_BLOCKS: usize = H_RESUME_RUNS + 8;
pub(crate) const H_RESUME_SLOT: usize = H_RESUME_BLOCKS + 8;
pub(crate) const H_RESUME_BLOCK: usize = H_RESUME_SLOT + 4;
pub(crate) const H_RESUME_CHAIN: usize = H_RESUME_BLOCK + 8;
pub(crate) const H_VOLUME_COUNT: usize = H_RESUME_CHAIN + 32;
pub(crate) const H_FIXED_LEN: usize = H_VOLUME_COUNT + 4;

// Run body: fixed head, then the payload.
pub(crate) const R_SLOT: usize = 0;
pub(crate) const R_FIRST: usize = R_SLOT + 4;
pub(crate) const R_COUNT: usize = R_FIRST + 8;
pub(crate) const R_KIND: usize = R_COUNT + 4;
pub(crate) const R_COMPRESSION: usize = R_KIND + 1;
pub(crate) const R_RESERVED: usize = R_COMPRESSION + 1;
pub(crate) const R_PAYLOAD_LEN: usize = R_RESERVED + 2;
pub(crate) const R_DIGEST: usize = R_PAYLOAD_LEN + 4;
pub(crate) const R_HEAD_LEN: usize = R_DIGEST + 32;
pub(crate) const MAX_RUN_BODY: usize = R_HEAD_LEN + MAX_RUN_BYTES;

pub(crate) const RUN_DATA: u8 = 0;
pub(crate) const RUN_ZEROS: u8 = 1;

// End body.
pub(crate) const E_RUNS: usize = 0;
pub(crate) const E_BLOCKS: usize = E_RUNS + 8;
pub(crate) const E_CHAIN: usize = E_BLOCKS + 8;
pub(crate) const E_LEN: usize = E_CHAIN + 32;

pub(crate) fn compression_code(c: Compression) -> u8 {
    match c {
        Compression::None => 0,
        Compression::Zstd => 1,
    }
}

pub(crate) fn compression_from(code: u8) -> Option<Compression> {
    match code {
        0 => Some(Compression::None),
        1 => Some(Compression::Zstd),
        _ => None,
    }
}

pub(crate) fn preamble() -> [u8; PREAMBLE_LEN] {
    let mut p = [0u8; PREAMBLE_LEN];
    p[..8].copy_from_slice(&MAGIC);
    p[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    p
}

/// The CRC32C a frame carries: over its first 8 bytes, then the body.
pub(crate) fn frame_crc(head: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&head[..FRAME_CRC]), body)
}

/// Appends a frame: the body is written by `body`, then length and CRC are
/// filled in.
pub(crate) fn append_frame(out: &mut Vec<u8>, kind: u8, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_LEN]);
    out[start + FRAME_KIND] = kind;
    body(out);
    let len = out.len() - start - FRAME_LEN;
    // Callers keep bodies within the limits, all far below u32::MAX.
    let len32 = u32::try_from(len).unwrap_or(u32::MAX);
    out[start + FRAME_BODY_LEN..start + FRAME_CRC].copy_from_slice(&len32.to_le_bytes());
    let crc = frame_crc(&out[start..start + FRAME_LEN], &out[start + FRAME_LEN..]);
    out[start + FRAME_CRC..start + FRAME_LEN].copy_from_slice(&crc.to_le_bytes());
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&name.as_bytes()[..usize::from(len)]);
}

/// The header body. The caller has checked the header (`check_header`).
pub(crate) fn put_header_body(out: &mut Vec<u8>, h: &CycleHeader) {
    let mut fixed = [0u8; H_FIXED_LEN];
    fixed[H_CYCLE..H_CYCLE + 8].copy_from_slice(&h.cycle.0.to_le_bytes());
    if let Some(base) = h.base {
        fixed[H_BASE_PRESENT] = 1;
        fixed[H_BASE..H_BASE + 8].copy_from_slice(&base.0.to_le_bytes());
    }
    fixed[H_POINT..H_POINT + 8].copy_from_slice(&h.point.snapshot.0.to_le_bytes());
    fixed[H_CREATED..H_CREATED + 8].copy_from_slice(&h.point.created.to_le_bytes());
    fixed[H_COMPRESSION] = compression_code(h.compression);
    if let Some(r) = h.resume {
        fixed[H_RESUME_PRESENT] = 1;
        fixed[H_RESUME_RUNS..H_RESUME_RUNS + 8].copy_from_slice(&r.runs.to_le_bytes());
        fixed[H_RESUME_BLOCKS..H_RESUME_BLOCKS + 8].copy_from_slice(&r.blocks.to_le_bytes());
        fixed[H_RESUME_SLOT..H_RESUME_SLOT + 4].copy_from_slice(&r.next.slot.0.to_le_bytes());
        fixed[H_RESUME_BLOCK..H_RESUME_BLOCK + 8].copy_from_slice(&r.next.block.0.to_le_bytes());
        fixed[H_RESUME_CHAIN..H_RESUME_CHAIN + 32].copy_from_slice(&r.chain);
    }
    let count = u32::try_from(h.volumes.len()).unwrap_or(u32::MAX);
    fixed[H_VOLUME_COUNT..H_VOLUME_COUNT + 4].copy_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&fixed);
    put_name(out, &h.group);
    put_name(out, &h.point.name);
    for v in &h.volumes {
        put_name(out, &v.slot);
        out.extend_from_slice(&v.size.to_le_bytes());
    }
}

pub(crate) fn put_end_body(out: &mut Vec<u8>, e: &End) {
    out.extend_from_slice(&e.runs.to_le_bytes());
    out.extend_from_slice(&e.blocks.to_le_bytes());
    out.extend_from_slice(&e.chain);
}

/// The fixed head of a run body.
pub(crate) struct RunHead {
    pub slot: SlotIndex,
    pub first: BlockIndex,
    pub count: u32,
    pub kind: u8,
    pub compression: u8,
    pub reserved: u16,
    pub payload_len: u32,
    pub digest: Digest,
}

impl RunHead {
    pub fn put(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; R_HEAD_LEN];
        b[R_SLOT..R_SLOT + 4].copy_from_slice(&self.slot.0.to_le_bytes());
        b[R_FIRST..R_FIRST + 8].copy_from_slice(&self.first.0.to_le_bytes());
        b[R_COUNT..R_COUNT + 4].copy_from_slice(&self.count.to_le_bytes());
        b[R_KIND] = self.kind;
        b[R_COMPRESSION] = self.compression;
        b[R_RESERVED..R_RESERVED + 2].copy_from_slice(&self.reserved.to_le_bytes());
        b[R_PAYLOAD_LEN..R_PAYLOAD_LEN + 4].copy_from_slice(&self.payload_len.to_le_bytes());
        b[R_DIGEST..R_DIGEST + 32].copy_from_slice(&self.digest);
        out.extend_from_slice(&b);
    }

    /// `body` is at least `R_HEAD_LEN` long (the caller checks).
    pub fn parse(body: &[u8]) -> RunHead {
        RunHead {
            slot: SlotIndex(u32_at(body, R_SLOT)),
            first: BlockIndex(u64_at(body, R_FIRST)),
            count: u32_at(body, R_COUNT),
            kind: body[R_KIND],
            compression: body[R_COMPRESSION],
            reserved: u16::from_le_bytes([body[R_RESERVED], body[R_RESERVED + 1]]),
            payload_len: u32_at(body, R_PAYLOAD_LEN),
            digest: digest_at(body, R_DIGEST),
        }
    }
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

pub(crate) fn digest_at(b: &[u8], at: usize) -> Digest {
    let mut a = [0u8; 32];
    a.copy_from_slice(&b[at..at + 32]);
    a
}

/// The chain digest after one more run: covers the run's place, size, kind
/// and data digest, so a missing, repeated or reordered run changes it.
pub(crate) fn chain_link(
    chain: &Digest,
    slot: SlotIndex,
    first: BlockIndex,
    count: u32,
    kind: u8,
    digest: &Digest,
) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(chain);
    h.update(&slot.0.to_le_bytes());
    h.update(&first.0.to_le_bytes());
    h.update(&count.to_le_bytes());
    h.update(&[kind]);
    h.update(digest);
    *h.finalize().as_bytes()
}

/// Parses a header body (CRC already checked) into a header, then checks it.
pub(crate) fn parse_header_body(body: &[u8], at: At) -> Result<CycleHeader, StreamError> {
    let malformed = |field: &'static str| StreamError::Malformed { at, field };
    let invalid = |field: &'static str| StreamError::InvalidValue { at, field };
    if body.len() < H_FIXED_LEN {
        return Err(malformed("fixed fields"));
    }
    let base = match body[H_BASE_PRESENT] {
        0 if u64_at(body, H_BASE) == 0 => None,
        1 => Some(SnapshotId(u64_at(body, H_BASE))),
        _ => return Err(invalid("base")),
    };
    let compression = compression_from(body[H_COMPRESSION]).ok_or(invalid("compression"))?;
    let resume = match body[H_RESUME_PRESENT] {
        0 if body[H_RESUME_RUNS..H_VOLUME_COUNT].iter().all(|&b| b == 0) => None,
        1 => Some(ResumePoint {
            runs: u64_at(body, H_RESUME_RUNS),
            blocks: u64_at(body, H_RESUME_BLOCKS),
            next: Position {
                slot: SlotIndex(u32_at(body, H_RESUME_SLOT)),
                block: BlockIndex(u64_at(body, H_RESUME_BLOCK)),
            },
            chain: digest_at(body, H_RESUME_CHAIN),
        }),
        _ => return Err(invalid("resume")),
    };
    let count = u32_at(body, H_VOLUME_COUNT) as usize;
    if count == 0 || count > MAX_VOLUMES {
        return Err(invalid("volume count"));
    }
    let mut rest = &body[H_FIXED_LEN..];
    let group = take_name(&mut rest, at, "group")?;
    let point_name = take_name(&mut rest, at, "point name")?;
    let mut volumes = Vec::with_capacity(count);
    for _ in 0..count {
        let slot = take_name(&mut rest, at, "slot name")?;
        if rest.len() < 8 {
            return Err(malformed("volume size"));
        }
        let size = u64_at(rest, 0);
        rest = &rest[8..];
        volumes.push(Volume { slot, size });
    }
    if !rest.is_empty() {
        return Err(malformed("end of body"));
    }
    let header = CycleHeader {
        group,
        cycle: CycleId(u64_at(body, H_CYCLE)),
        base,
        point: Point {
            snapshot: SnapshotId(u64_at(body, H_POINT)),
            name: point_name,
            created: u64_at(body, H_CREATED),
        },
        volumes,
        compression,
        resume,
    };
    check_header(&header, at)?;
    Ok(header)
}

fn take_name(rest: &mut &[u8], at: At, field: &'static str) -> Result<String, StreamError> {
    if rest.len() < 2 {
        return Err(StreamError::Malformed { at, field });
    }
    let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
    if rest.len() < 2 + len {
        return Err(StreamError::Malformed { at, field });
    }
    let s = std::str::from_utf8(&rest[2..2 + len])
        .map_err(|_| StreamError::InvalidValue { at, field })?
        .to_owned();
    *rest = &rest[2 + len..];
    Ok(s)
}

fn check_name(name: &str, at: At, field: &'static str) -> Result<(), StreamError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(StreamError::InvalidValue { at, field });
    }
    Ok(())
}

/// The checks a header passes before it is used (by decoder and encoder).
pub(crate) fn check_header(h: &CycleHeader, at: At) -> Result<(), StreamError> {
    let invalid = |field: &'static str| StreamError::InvalidValue { at, field };
    check_name(&h.group, at, "group")?;
    check_name(&h.point.name, at, "point name")?;
    if h.volumes.is_empty() || h.volumes.len() > MAX_VOLUMES {
        return Err(invalid("volume count"));
    }
    for (i, v) in h.volumes.iter().enumerate() {
        check_name(&v.slot, at, "slot name")?;
        if v.size % BLOCK_SIZE as u64 != 0 {
            return Err(invalid("volume size"));
        }
        if h.volumes[..i].iter().any(|o| o.slot == v.slot) {
            return Err(invalid("slot name"));
        }
    }
    if let Some(r) = h.resume {
        let slot = usize::try_from(r.next.slot.0).unwrap_or(usize::MAX);
        let fits = h
            .volumes
            .get(slot)
            .is_some_and(|v| r.next.block.0 <= v.blocks());
        if r.runs == 0 || r.blocks < r.runs || !fits {
            return Err(invalid("resume"));
        }
    }
    Ok(())
}
