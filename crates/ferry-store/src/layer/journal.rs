//! The allocation-map journal of a layer: its byte format, encoder and decoder.
//!
//! A layer's `.map` file is a 32-byte header followed by records, each adding
//! blocks to the layer's allocation map: blocks that now hold data (and in
//! which slot of the data file), blocks that now read as zeros. Appending a
//! record and syncing it is how a flush publishes the blocks whose data was
//! synced just before. A record torn by a crash fails its checksum and ends
//! the journal there; it was never acknowledged. The layout is in
//! `docs/format.md`.
//!
//! Format 2 is current. Format 1 (a data file addressed like the volume, so a
//! record carried only a bitmap of data blocks) still decodes: its blocks map
//! to the slot of the same number, and opening such a layer rewrites its map
//! as format 2.
//!
//! This module does no I/O: it turns bytes into maps and back, so it can be
//! fuzzed (`fuzz/fuzz_targets/map_journal.rs`).

use roaring::RoaringBitmap;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::slots::{Extent, SlotMap};
use crate::types::LayerId;

/// First bytes of every map file.
pub const MAP_MAGIC: [u8; 8] = *b"FERRYMAP";
/// The map format this code writes.
pub const MAP_VERSION: u32 = 2;
/// The first map format: slots addressed like the volume. Read, never written.
pub const MAP_VERSION_1: u32 = 1;
/// Size of the file header.
pub const HEADER_LEN: usize = 32;
/// First bytes of every record.
pub const RECORD_MAGIC: u32 = 0x4452_4352; // "RCRD" little-endian
/// Size of a record's fixed part.
pub const RECORD_HEADER_LEN: usize = 24;
/// Largest part a record may carry (a full 16 TiB map with run containers
/// is far smaller; this bounds allocation on corrupt input).
pub const MAX_PART_BYTES: usize = 1 << 30;
/// Bytes of one extent in a format-2 record: block, slot, length.
pub const EXTENT_LEN: usize = 12;
/// Most extents one record carries (48 MiB); a larger change is written as
/// several records. (A full 16 TiB zero bitmap serializes to 512 MiB, under
/// [`MAX_PART_BYTES`].)
pub const MAX_RECORD_EXTENTS: usize = 1 << 22;

const H_MAGIC: usize = 0;
const H_VERSION: usize = H_MAGIC + 8;
const H_BLOCK_SIZE: usize = H_VERSION + 4;
const H_LAYER: usize = H_BLOCK_SIZE + 4;
const H_RESERVED: usize = H_LAYER + 8;
const H_CRC: usize = H_RESERVED + 4;
const _: () = assert!(H_CRC + 4 == HEADER_LEN);

const R_MAGIC: usize = 0;
const R_SEQ: usize = R_MAGIC + 4;
const R_DATA_LEN: usize = R_SEQ + 8;
const R_ZERO_LEN: usize = R_DATA_LEN + 4;
const R_CRC: usize = R_ZERO_LEN + 4;
const _: () = assert!(R_CRC + 4 == RECORD_HEADER_LEN);

/// Blocks whose state changed: now holding data in the given slots, or now
/// known to be zero. The two are disjoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MapDelta {
    pub data: SlotMap,
    pub zero: RoaringBitmap,
}

impl MapDelta {
    pub fn is_empty(&self) -> bool {
        self.data.is_empty() && self.zero.is_empty()
    }

    /// Records that `e`'s blocks now hold data (later calls win).
    pub fn add_data(&mut self, e: Extent) {
        self.data.insert(e);
        self.zero.remove_range(e.block..=e.block + (e.len - 1));
    }

    /// Records that `blocks` now read as zeros (later calls win).
    pub fn add_zero(&mut self, first: u32, len: u32) {
        self.data.remove(first, len);
        self.zero.insert_range(first..=first + (len - 1));
    }
}

/// A layer's allocation map: which blocks it defines, which of those are
/// zeros, and where the others' data sits.
///
/// Invariant: the blocks of `slots` are exactly `present - zeroed`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AllocMap {
    /// Blocks this layer defines (data or zero).
    pub present: RoaringBitmap,
    /// The subset of `present` known to read as zeros.
    pub zeroed: RoaringBitmap,
    /// The slot of every data block.
    pub slots: SlotMap,
}

impl AllocMap {
    /// Applies a record: later records win.
    pub fn apply(&mut self, delta: &MapDelta) {
        for e in delta.data.iter() {
            let range = e.block..=e.block + (e.len - 1);
            self.slots.insert(e);
            self.present.insert_range(range.clone());
            self.zeroed.remove_range(range);
        }
        if !delta.zero.is_empty() && delta.zero.len() <= self.slots.extents() as u64 {
            // Few zeros: unmap each run of them.
            for (first, len) in runs(delta.zero.iter()) {
                self.slots.remove(first, len);
            }
        } else if !delta.zero.is_empty() {
            // Many zeros (a large trim): look only at the extents they hit.
            let hit: Vec<Extent> = self
                .slots
                .iter()
                .filter(|e| {
                    delta
                        .zero
                        .range_cardinality(e.block..=e.block + (e.len - 1))
                        > 0
                })
                .collect();
            for e in hit {
                for (first, len) in runs(delta.zero.range(e.block..=e.block + (e.len - 1))) {
                    self.slots.remove(first, len);
                }
            }
        }
        self.present |= &delta.zero;
        self.zeroed |= &delta.zero;
    }

    /// The whole map as one record (for compaction).
    pub fn as_delta(&self) -> MapDelta {
        MapDelta {
            data: self.slots.clone(),
            zero: self.zeroed.clone(),
        }
    }
}

/// Ascending block numbers as runs `(first, len)` of consecutive blocks.
pub fn runs(blocks: impl Iterator<Item = u32>) -> impl Iterator<Item = (u32, u32)> {
    let mut blocks = blocks.peekable();
    std::iter::from_fn(move || {
        let first = blocks.next()?;
        let mut len = 1u32;
        while blocks.peek() == Some(&(first.wrapping_add(len))) && len < u32::MAX {
            blocks.next();
            len += 1;
        }
        Some((first, len))
    })
}

/// What a map file decodes to.
#[derive(Debug)]
pub struct DecodedMap {
    pub layer: LayerId,
    /// The file's format: [`MAP_VERSION`] or [`MAP_VERSION_1`].
    pub version: u32,
    pub map: AllocMap,
    /// Bytes of valid header and records; anything after is a torn tail.
    pub valid_len: usize,
    /// Sequence number of the last valid record (0 when none).
    pub last_seq: u64,
}

/// Why a map file cannot be used at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("file is shorter than its header")]
    Short,
    #[error("bad magic")]
    Magic,
    #[error("unsupported version {0}")]
    Version(u32),
    #[error("unsupported block size {0}")]
    BlockSize(u32),
    #[error("header checksum mismatch")]
    Checksum,
    #[error("the record at byte {at} claims a part larger than any record ferry writes")]
    Oversized { at: usize },
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// The header of a new map file.
pub fn encode_header(layer: LayerId) -> [u8; HEADER_LEN] {
    encode_header_version(layer, MAP_VERSION)
}

/// A header of the given format (format 1 only for tests of old stores).
pub fn encode_header_version(layer: LayerId, version: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[H_MAGIC..H_VERSION].copy_from_slice(&MAP_MAGIC);
    h[H_VERSION..H_BLOCK_SIZE].copy_from_slice(&version.to_le_bytes());
    h[H_BLOCK_SIZE..H_LAYER].copy_from_slice(&(crate::BLOCK_SIZE as u32).to_le_bytes());
    h[H_LAYER..H_RESERVED].copy_from_slice(&layer.0.to_le_bytes());
    let crc = crc32fast::hash(&h[..H_CRC]);
    h[H_CRC..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The extents per record layers write: [`MAX_RECORD_EXTENTS`], lowered by
/// tests through [`set_record_extents_for_tests`].
static RECORD_EXTENTS: AtomicUsize = AtomicUsize::new(MAX_RECORD_EXTENTS);

/// Makes every layer of this process split its map records after `n`
/// extents, so tests with small volumes take the many-record paths.
#[doc(hidden)]
pub fn set_record_extents_for_tests(n: usize) {
    RECORD_EXTENTS.store(n.clamp(1, MAX_RECORD_EXTENTS), Ordering::Relaxed);
}

/// Format-2 records carrying `delta`, numbered from `first_seq`: one, or
/// several when it holds more than [`MAX_RECORD_EXTENTS`] extents (the zero
/// bitmap goes in the last). Returns the bytes and the number of records.
/// Replaying a prefix of them (a torn append) leaves a consistent map: each
/// block reads its old or its new state.
pub fn encode_records(first_seq: u64, delta: &MapDelta) -> (Vec<u8>, u64) {
    encode_records_by(first_seq, delta, RECORD_EXTENTS.load(Ordering::Relaxed))
}

/// [`encode_records`] with at most `max_extents` extents per record.
pub fn encode_records_by(first_seq: u64, delta: &MapDelta, max_extents: usize) -> (Vec<u8>, u64) {
    let max_extents = max_extents.max(1);
    let mut out = Vec::new();
    let mut seq = first_seq;
    let mut extents = delta.data.iter().peekable();
    loop {
        let mut body = vec![0u8; RECORD_HEADER_LEN];
        let mut n = 0;
        while n < max_extents
            && let Some(e) = extents.next()
        {
            body.extend_from_slice(&e.block.to_le_bytes());
            body.extend_from_slice(&e.slot.to_le_bytes());
            body.extend_from_slice(&e.len.to_le_bytes());
            n += 1;
        }
        let data_len = n * EXTENT_LEN;
        let last = extents.peek().is_none();
        let zero_len = if last {
            let len = delta.zero.serialized_size();
            delta
                .zero
                .serialize_into(&mut body)
                .expect("writing to a Vec cannot fail");
            len
        } else {
            RoaringBitmap::new()
                .serialize_into(&mut body)
                .expect("writing to a Vec cannot fail");
            RoaringBitmap::new().serialized_size()
        };
        assert!(data_len <= MAX_PART_BYTES && zero_len <= MAX_PART_BYTES);
        out.extend(seal_record(body, seq, data_len, zero_len));
        seq += 1;
        if last {
            return (out, seq - first_seq);
        }
    }
}

/// One format-2 record carrying `delta` (which must fit one), numbered `seq`.
pub fn encode_record(seq: u64, delta: &MapDelta) -> Vec<u8> {
    let (bytes, records) = encode_records_by(seq, delta, MAX_RECORD_EXTENTS);
    assert_eq!(records, 1, "a delta too large for one record");
    bytes
}

/// A format-1 record: data blocks as a bitmap (their slots are their numbers).
/// Only for tests of old stores.
pub fn encode_record_v1(seq: u64, data: &RoaringBitmap, zero: &RoaringBitmap) -> Vec<u8> {
    let data_len = data.serialized_size();
    let zero_len = zero.serialized_size();
    let mut out = vec![0u8; RECORD_HEADER_LEN];
    data.serialize_into(&mut out)
        .expect("writing to a Vec cannot fail");
    zero.serialize_into(&mut out)
        .expect("writing to a Vec cannot fail");
    seal_record(out, seq, data_len, zero_len)
}

/// A record with the given raw parts and a correct checksum, whatever the
/// parts hold: for fuzzing the decoder past its checksums.
pub fn encode_raw_record(seq: u64, data: &[u8], zero: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; RECORD_HEADER_LEN];
    out.extend_from_slice(data);
    out.extend_from_slice(zero);
    seal_record(out, seq, data.len(), zero.len())
}

fn seal_record(mut out: Vec<u8>, seq: u64, data_len: usize, zero_len: usize) -> Vec<u8> {
    out[R_MAGIC..R_SEQ].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    out[R_SEQ..R_DATA_LEN].copy_from_slice(&seq.to_le_bytes());
    out[R_DATA_LEN..R_ZERO_LEN].copy_from_slice(&(data_len as u32).to_le_bytes());
    out[R_ZERO_LEN..R_CRC].copy_from_slice(&(zero_len as u32).to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&out[..R_CRC]);
    hasher.update(&out[RECORD_HEADER_LEN..]);
    let crc = hasher.finalize();
    out[R_CRC..RECORD_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a whole map file. A bad header is an error; a bad record ends the
/// journal (it is the torn tail of an interrupted append).
pub fn decode(bytes: &[u8]) -> Result<DecodedMap, HeaderError> {
    if bytes.len() < HEADER_LEN {
        return Err(HeaderError::Short);
    }
    let h = &bytes[..HEADER_LEN];
    if h[H_MAGIC..H_VERSION] != MAP_MAGIC {
        return Err(HeaderError::Magic);
    }
    if crc32fast::hash(&h[..H_CRC]) != le_u32(h, H_CRC) {
        return Err(HeaderError::Checksum);
    }
    let version = le_u32(h, H_VERSION);
    if version != MAP_VERSION && version != MAP_VERSION_1 {
        return Err(HeaderError::Version(version));
    }
    let block_size = le_u32(h, H_BLOCK_SIZE);
    if u64::from(block_size) != crate::BLOCK_SIZE {
        return Err(HeaderError::BlockSize(block_size));
    }
    let mut out = DecodedMap {
        layer: LayerId(le_u64(h, H_LAYER)),
        version,
        map: AllocMap::default(),
        valid_len: HEADER_LEN,
        last_seq: 0,
    };
    let mut pos = HEADER_LEN;
    while let Some((seq, delta, len)) =
        decode_record(&bytes[pos..], version).map_err(|()| HeaderError::Oversized { at: pos })?
    {
        if seq <= out.last_seq {
            break; // records are numbered upwards; anything else is stale
        }
        out.map.apply(&delta);
        out.last_seq = seq;
        pos += len;
        out.valid_len = pos;
    }
    Ok(out)
}

/// One record from the front of `bytes`: its number, contents and length;
/// `None` at the end of the journal (nothing more, or a torn record); an
/// error for a record that claims a part no writer makes (corruption, not a
/// torn append: dropping it and what follows would lose flushed blocks).
#[allow(clippy::type_complexity)]
fn decode_record(bytes: &[u8], version: u32) -> Result<Option<(u64, MapDelta, usize)>, ()> {
    if bytes.len() < RECORD_HEADER_LEN || le_u32(bytes, R_MAGIC) != RECORD_MAGIC {
        return Ok(None);
    }
    let data_len = le_u32(bytes, R_DATA_LEN) as usize;
    let zero_len = le_u32(bytes, R_ZERO_LEN) as usize;
    if data_len > MAX_PART_BYTES || zero_len > MAX_PART_BYTES {
        return Err(());
    }
    Ok(decode_record_parts(bytes, version, data_len, zero_len))
}

fn decode_record_parts(
    bytes: &[u8],
    version: u32,
    data_len: usize,
    zero_len: usize,
) -> Option<(u64, MapDelta, usize)> {
    let total = RECORD_HEADER_LEN + data_len + zero_len;
    if bytes.len() < total {
        return None;
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[..R_CRC]);
    hasher.update(&bytes[RECORD_HEADER_LEN..total]);
    if hasher.finalize() != le_u32(bytes, R_CRC) {
        return None;
    }
    let data_bytes = &bytes[RECORD_HEADER_LEN..RECORD_HEADER_LEN + data_len];
    let zero_bytes = &bytes[RECORD_HEADER_LEN + data_len..total];
    let zero = RoaringBitmap::deserialize_from(zero_bytes).ok()?;
    if zero.serialized_size() != zero_len {
        return None;
    }
    let data = if version == MAP_VERSION_1 {
        let blocks = RoaringBitmap::deserialize_from(data_bytes).ok()?;
        if blocks.serialized_size() != data_len {
            return None;
        }
        let mut data = SlotMap::default();
        for (block, len) in runs(blocks.iter()) {
            data.insert(Extent {
                block,
                slot: block,
                len,
            });
        }
        data
    } else {
        decode_extents(data_bytes)?
    };
    let delta = MapDelta { data, zero };
    if delta.data.iter().any(|e| {
        delta
            .zero
            .range_cardinality(e.block..=e.block + (e.len - 1))
            > 0
    }) {
        return None; // the two parts of a record are disjoint
    }
    Some((le_u64(bytes, R_SEQ), delta, total))
}

/// A format-2 record's extents: in ascending block order, not overlapping,
/// each non-empty and within the 32-bit block and slot spaces.
fn decode_extents(bytes: &[u8]) -> Option<SlotMap> {
    if !bytes.len().is_multiple_of(EXTENT_LEN) {
        return None;
    }
    let mut data = SlotMap::default();
    let mut next_free = 0u64;
    for chunk in bytes.chunks_exact(EXTENT_LEN) {
        let e = Extent {
            block: le_u32(chunk, 0),
            slot: le_u32(chunk, 4),
            len: le_u32(chunk, 8),
        };
        let block_end = u64::from(e.block) + u64::from(e.len);
        if e.len == 0
            || u64::from(e.block) < next_free
            || block_end > 1 << 32
            || u64::from(e.slot) + u64::from(e.len) > 1 << 32
        {
            return None;
        }
        next_free = block_end;
        data.insert(e);
    }
    Some(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(block: u32, slot: u32, len: u32) -> Extent {
        Extent { block, slot, len }
    }

    fn sample() -> Vec<u8> {
        let mut file = encode_header(LayerId(7)).to_vec();
        let mut d1 = MapDelta::default();
        d1.add_data(ext(0, 0, 10));
        d1.add_zero(20, 1);
        file.extend(encode_record(1, &d1));
        let mut d2 = MapDelta::default();
        d2.add_zero(5, 2);
        d2.add_data(ext(20, 10, 1));
        file.extend(encode_record(2, &d2));
        file
    }

    #[test]
    fn golden_header() {
        // Compatibility-critical: a change here breaks every existing store.
        let h = encode_header(LayerId(0x0102));
        assert_eq!(&h[..8], b"FERRYMAP");
        assert_eq!(&h[8..16], &[2, 0, 0, 0, 0, 0x10, 0, 0]);
        assert_eq!(&h[16..24], &[2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&h[24..28], &[0, 0, 0, 0]);
        assert_eq!(
            u32::from_le_bytes(h[28..32].try_into().unwrap()),
            crc32fast::hash(&h[..28])
        );
    }

    #[test]
    fn golden_record() {
        let mut d = MapDelta::default();
        d.add_data(ext(3, 9, 2));
        let r = encode_record(5, &d);
        assert_eq!(&r[..4], &RECORD_MAGIC.to_le_bytes());
        assert_eq!(&r[4..12], &5u64.to_le_bytes());
        assert_eq!(&r[12..16], &12u32.to_le_bytes());
        assert_eq!(&r[24..36], &[3, 0, 0, 0, 9, 0, 0, 0, 2, 0, 0, 0]);
    }

    #[test]
    fn round_trip_and_later_records_win() {
        let file = sample();
        let d = decode(&file).unwrap();
        assert_eq!(d.layer, LayerId(7));
        assert_eq!(d.version, MAP_VERSION);
        assert_eq!(d.valid_len, file.len());
        assert_eq!(d.last_seq, 2);
        assert_eq!(d.map.present.len(), 11);
        assert_eq!(d.map.zeroed.iter().collect::<Vec<_>>(), vec![5, 6]);
        assert_eq!(d.map.slots.get(4), Some(4));
        assert_eq!(d.map.slots.get(5), None);
        assert_eq!(d.map.slots.get(7), Some(7));
        assert_eq!(d.map.slots.get(20), Some(10));
        let again = decode(
            &[
                encode_header(LayerId(7)).to_vec(),
                encode_record(1, &d.map.as_delta()),
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(again.map, d.map);
    }

    #[test]
    fn format_1_maps_blocks_to_their_own_slots() {
        let mut file = encode_header_version(LayerId(3), MAP_VERSION_1).to_vec();
        let (mut data, mut zero) = (RoaringBitmap::new(), RoaringBitmap::new());
        data.insert_range(100..110);
        data.insert(7);
        zero.insert(50);
        file.extend(encode_record_v1(1, &data, &zero));
        let d = decode(&file).unwrap();
        assert_eq!(d.version, MAP_VERSION_1);
        assert_eq!(d.valid_len, file.len());
        assert_eq!(d.map.slots.get(105), Some(105));
        assert_eq!(d.map.slots.get(7), Some(7));
        assert_eq!(d.map.slots.get(50), None);
        assert!(d.map.zeroed.contains(50));
    }

    #[test]
    fn every_truncation_is_a_valid_prefix() {
        let file = sample();
        let first_end = decode(&file[..file.len() - 1]).unwrap().valid_len;
        for cut in HEADER_LEN..file.len() {
            let d = decode(&file[..cut]).unwrap();
            assert!(d.valid_len <= cut);
            assert!(d.valid_len == HEADER_LEN || d.valid_len == first_end);
        }
        for flip in HEADER_LEN..file.len() {
            let mut bad = file.clone();
            bad[flip] ^= 0x40;
            // Ends the journal early, or (a length past any record ferry
            // writes) refuses the file; never goes unnoticed.
            match decode(&bad) {
                Ok(d) => assert!(d.valid_len < file.len(), "flip at {flip} went unnoticed"),
                Err(e) => assert!(matches!(e, HeaderError::Oversized { .. }), "{e}"),
            }
        }
    }

    #[test]
    fn malformed_extents_end_the_journal() {
        let header = encode_header(LayerId(1)).to_vec();
        let raw = |extents: &[[u32; 3]], zero: &RoaringBitmap| {
            let mut out = vec![0u8; RECORD_HEADER_LEN];
            for e in extents {
                for x in e {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
            let data_len = extents.len() * EXTENT_LEN;
            zero.serialize_into(&mut out).unwrap();
            [
                header.clone(),
                seal_record(out, 1, data_len, zero.serialized_size()),
            ]
            .concat()
        };
        let none = RoaringBitmap::new();
        let mut five = RoaringBitmap::new();
        five.insert(5);
        for (what, file) in [
            ("empty extent", raw(&[[1, 1, 0]], &none)),
            ("past the block space", raw(&[[u32::MAX, 1, 2]], &none)),
            ("past the slot space", raw(&[[1, u32::MAX, 2]], &none)),
            ("overlapping", raw(&[[1, 1, 5], [3, 10, 1]], &none)),
            ("descending", raw(&[[10, 1, 1], [3, 10, 1]], &none)),
            ("data and zero at once", raw(&[[4, 0, 2]], &five)),
        ] {
            let d = decode(&file).unwrap();
            assert_eq!(d.valid_len, HEADER_LEN, "{what}");
        }
        assert_eq!(decode(&raw(&[[6, 1, 5]], &five)).unwrap().last_seq, 1);
    }

    #[test]
    fn a_large_delta_is_several_records_and_every_prefix_is_consistent() {
        let mut d = MapDelta::default();
        for i in 0..10 {
            d.add_data(ext(i * 3, 100 + i, 1));
        }
        d.add_zero(1, 1);
        let (records, count) = encode_records_by(5, &d, 3);
        assert_eq!(count, 4);
        let mut file = encode_header(LayerId(2)).to_vec();
        file.extend(&records);
        let full = decode(&file).unwrap();
        assert_eq!(full.last_seq, 8);
        assert_eq!(full.map.slots, d.data);
        assert!(full.map.zeroed.contains(1));
        // A torn append keeps whole records only: each block old or new.
        for cut in HEADER_LEN..file.len() {
            let p = decode(&file[..cut]).unwrap();
            for e in p.map.slots.iter() {
                assert_eq!(d.data.get(e.block), Some(e.slot));
            }
        }
    }

    #[test]
    fn a_record_claiming_an_oversized_part_is_corruption() {
        let mut file = sample();
        let good_end = file.len();
        let mut bad = encode_raw_record(3, &[], &[]);
        bad[12..16].copy_from_slice(&(MAX_PART_BYTES as u32 + 1).to_le_bytes());
        file.extend(bad);
        assert_eq!(
            decode(&file).unwrap_err(),
            HeaderError::Oversized { at: good_end }
        );
    }

    #[test]
    fn bad_headers_are_refused() {
        let file = sample();
        assert_eq!(decode(&file[..10]).unwrap_err(), HeaderError::Short);
        let mut bad = file.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad).unwrap_err(), HeaderError::Magic);
        let mut bad = file.clone();
        bad[20] ^= 1;
        assert_eq!(decode(&bad).unwrap_err(), HeaderError::Checksum);
        let bad = encode_header_version(LayerId(1), 3);
        assert_eq!(decode(&bad).unwrap_err(), HeaderError::Version(3));
    }
}
