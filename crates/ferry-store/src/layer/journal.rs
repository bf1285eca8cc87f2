//! The allocation-map journal of a layer: its byte format, encoder and decoder.
//!
//! A layer's `.map` file is a 32-byte header followed by records, each adding
//! blocks to the layer's allocation map. Appending a record and syncing it is
//! how a flush publishes the blocks whose data was synced just before. A
//! record torn by a crash fails its checksum and ends the journal there; it
//! was never acknowledged. The layout is in `docs/format.md`.
//!
//! This module does no I/O: it turns bytes into maps and back, so it can be
//! fuzzed (`fuzz/fuzz_targets/map_journal.rs`).

use roaring::RoaringBitmap;

use crate::types::LayerId;

/// First bytes of every map file.
pub const MAP_MAGIC: [u8; 8] = *b"FERRYMAP";
/// The map format's version.
pub const MAP_VERSION: u32 = 1;
/// Size of the file header.
pub const HEADER_LEN: usize = 32;
/// First bytes of every record.
pub const RECORD_MAGIC: u32 = 0x4452_4352; // "RCRD" little-endian
/// Size of a record's fixed part.
pub const RECORD_HEADER_LEN: usize = 24;
/// Largest bitmap a record may carry (a full 16 TiB map with run containers
/// is far smaller; this bounds allocation on corrupt input).
pub const MAX_BITMAP_BYTES: usize = 1 << 30;

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

/// Blocks whose state changed: now holding data, or now known to be zero.
/// The two sets are disjoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MapDelta {
    pub data: RoaringBitmap,
    pub zero: RoaringBitmap,
}

impl MapDelta {
    pub fn is_empty(&self) -> bool {
        self.data.is_empty() && self.zero.is_empty()
    }
}

/// A layer's allocation map: which blocks it defines, and which of those are zeros.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AllocMap {
    /// Blocks this layer defines (data or zero).
    pub present: RoaringBitmap,
    /// The subset of `present` known to read as zeros.
    pub zeroed: RoaringBitmap,
}

impl AllocMap {
    /// Applies a record: later records win.
    pub fn apply(&mut self, delta: &MapDelta) {
        self.present |= &delta.data;
        self.present |= &delta.zero;
        self.zeroed -= &delta.data;
        self.zeroed |= &delta.zero;
    }

    /// The whole map as one record (for compaction).
    pub fn as_delta(&self) -> MapDelta {
        MapDelta {
            data: &self.present - &self.zeroed,
            zero: self.zeroed.clone(),
        }
    }
}

/// What a map file decodes to.
#[derive(Debug)]
pub struct DecodedMap {
    pub layer: LayerId,
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
    let mut h = [0u8; HEADER_LEN];
    h[H_MAGIC..H_VERSION].copy_from_slice(&MAP_MAGIC);
    h[H_VERSION..H_BLOCK_SIZE].copy_from_slice(&MAP_VERSION.to_le_bytes());
    h[H_BLOCK_SIZE..H_LAYER].copy_from_slice(&(crate::BLOCK_SIZE as u32).to_le_bytes());
    h[H_LAYER..H_RESERVED].copy_from_slice(&layer.0.to_le_bytes());
    let crc = crc32fast::hash(&h[..H_CRC]);
    h[H_CRC..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// One record carrying `delta`, numbered `seq`.
pub fn encode_record(seq: u64, delta: &MapDelta) -> Vec<u8> {
    let data_len = delta.data.serialized_size();
    let zero_len = delta.zero.serialized_size();
    let mut out = vec![0u8; RECORD_HEADER_LEN];
    out.reserve(data_len + zero_len);
    delta
        .data
        .serialize_into(&mut out)
        .expect("writing to a Vec cannot fail");
    delta
        .zero
        .serialize_into(&mut out)
        .expect("writing to a Vec cannot fail");
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
    if version != MAP_VERSION {
        return Err(HeaderError::Version(version));
    }
    let block_size = le_u32(h, H_BLOCK_SIZE);
    if u64::from(block_size) != crate::BLOCK_SIZE {
        return Err(HeaderError::BlockSize(block_size));
    }
    let mut out = DecodedMap {
        layer: LayerId(le_u64(h, H_LAYER)),
        map: AllocMap::default(),
        valid_len: HEADER_LEN,
        last_seq: 0,
    };
    let mut pos = HEADER_LEN;
    while let Some((seq, delta, len)) = decode_record(&bytes[pos..]) {
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

/// One record from the front of `bytes`: its number, contents and length.
fn decode_record(bytes: &[u8]) -> Option<(u64, MapDelta, usize)> {
    if bytes.len() < RECORD_HEADER_LEN || le_u32(bytes, R_MAGIC) != RECORD_MAGIC {
        return None;
    }
    let data_len = le_u32(bytes, R_DATA_LEN) as usize;
    let zero_len = le_u32(bytes, R_ZERO_LEN) as usize;
    if data_len > MAX_BITMAP_BYTES || zero_len > MAX_BITMAP_BYTES {
        return None;
    }
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
    let data = RoaringBitmap::deserialize_from(data_bytes).ok()?;
    let zero = RoaringBitmap::deserialize_from(zero_bytes).ok()?;
    if data.serialized_size() != data_len || zero.serialized_size() != zero_len {
        return None;
    }
    Some((le_u64(bytes, R_SEQ), MapDelta { data, zero }, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut file = encode_header(LayerId(7)).to_vec();
        let mut d1 = MapDelta::default();
        d1.data.insert_range(0..10);
        d1.zero.insert(20);
        file.extend(encode_record(1, &d1));
        let mut d2 = MapDelta::default();
        d2.zero.insert_range(5..7);
        d2.data.insert(20);
        file.extend(encode_record(2, &d2));
        file
    }

    #[test]
    fn golden_header() {
        // Compatibility-critical: a change here breaks every existing store.
        let h = encode_header(LayerId(0x0102));
        assert_eq!(&h[..8], b"FERRYMAP");
        assert_eq!(&h[8..16], &[1, 0, 0, 0, 0, 0x10, 0, 0]);
        assert_eq!(&h[16..24], &[2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&h[24..28], &[0, 0, 0, 0]);
        assert_eq!(
            u32::from_le_bytes(h[28..32].try_into().unwrap()),
            crc32fast::hash(&h[..28])
        );
    }

    #[test]
    fn round_trip_and_later_records_win() {
        let file = sample();
        let d = decode(&file).unwrap();
        assert_eq!(d.layer, LayerId(7));
        assert_eq!(d.valid_len, file.len());
        assert_eq!(d.last_seq, 2);
        assert_eq!(d.map.present.len(), 11);
        assert_eq!(d.map.zeroed.iter().collect::<Vec<_>>(), vec![5, 6]);
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
            let d = decode(&bad).unwrap();
            assert!(d.valid_len < file.len(), "flip at {flip} went unnoticed");
        }
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
    }
}
