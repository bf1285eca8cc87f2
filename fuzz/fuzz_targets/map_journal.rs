//! A layer's allocation-map journal read from disk: any bytes must decode to
//! an error or a map, never panic, and what decodes must re-encode to bytes
//! that decode to the same map.
#![no_main]

use ferry_store::layer::journal::{self, AllocMap};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(decoded) = journal::decode(data) else {
        return;
    };
    assert!(decoded.valid_len <= data.len());
    assert!(decoded.map.zeroed.is_subset(&decoded.map.present));
    let mut again = journal::encode_header(decoded.layer).to_vec();
    again.extend(journal::encode_record(1, &decoded.map.as_delta()));
    let redecoded = journal::decode(&again).expect("our own encoding decodes");
    assert_eq!(redecoded.map, decoded.map);
    let _: AllocMap = redecoded.map;
});
