//! A layer's allocation-map journal read from disk: any bytes must decode to
//! an error or a map, never panic; what decodes must keep the map's
//! invariants and re-encode to bytes that decode to the same map.
#![no_main]

use ferry_store::RoaringBitmap;
use ferry_store::layer::journal::{self, AllocMap};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(decoded) = journal::decode(data) else {
        return;
    };
    assert!(decoded.valid_len <= data.len());
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
    assert_eq!(&redecoded.map, map);
});
