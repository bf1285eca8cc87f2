//! A layer's allocation-map journal read from disk: any bytes must decode to
//! an error or a map, never panic; what decodes must keep the map's
//! invariants and re-encode to bytes that decode to the same map.
//!
//! The input is tried twice: as a whole map file, and as the parts of
//! records that get a valid header and valid checksums around them (so the
//! extent and bitmap decoding behind the checksums is reached too).
#![no_main]

use ferry_store::RoaringBitmap;
use ferry_store::layer::journal::{self, AllocMap, MAP_VERSION, MAP_VERSION_1};
use ferry_store::layer::slots::SlotMap;
use ferry_store::LayerId;
use libfuzzer_sys::fuzz_target;

fn check(bytes: &[u8]) {
    let Ok(decoded) = journal::decode(bytes) else {
        return;
    };
    assert!(decoded.valid_len <= bytes.len());
    let map: &AllocMap = &decoded.map;
    assert!(map.zeroed.is_subset(&map.present));
    // The blocks with a slot are exactly the data blocks.
    let mut with_slot = RoaringBitmap::new();
    for e in map.slots.iter() {
        assert!(e.len > 0);
        with_slot.insert_range(e.block..=e.block + (e.len - 1));
    }
    assert_eq!(with_slot, &map.present - &map.zeroed);
    let mut again = journal::encode_header(decoded.layer).to_vec();
    again.extend(journal::encode_record(1, &map.as_delta()));
    let redecoded = journal::decode(&again).expect("our own encoding decodes");
    assert_eq!(redecoded.map.present, map.present);
    assert_eq!(redecoded.map.zeroed, map.zeroed);
    // The same mapping (extents may be cut differently).
    assert_eq!(canonical(&redecoded.map.slots), canonical(&map.slots));
}

/// A slot map rebuilt extent by extent in block order: one shape per mapping.
fn canonical(m: &SlotMap) -> SlotMap {
    let mut c = SlotMap::default();
    for e in m.iter() {
        c.insert(e);
    }
    c
}

/// `[version byte] ([data_len u8] [zero_len u8] data zero)*` as a map file.
fn structured(data: &[u8]) -> Option<Vec<u8>> {
    let (&v, mut rest) = data.split_first()?;
    let version = if v & 1 == 0 { MAP_VERSION } else { MAP_VERSION_1 };
    let mut file = journal::encode_header_version(LayerId(1), version).to_vec();
    let mut seq = 1;
    while let [d, z, tail @ ..] = rest {
        let (d, z) = (usize::from(*d), usize::from(*z));
        if tail.len() < d + z {
            break;
        }
        file.extend(journal::encode_raw_record(seq, &tail[..d], &tail[d..d + z]));
        rest = &tail[d + z..];
        seq += 1;
    }
    Some(file)
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(file) = structured(data) {
        check(&file);
    }
});
