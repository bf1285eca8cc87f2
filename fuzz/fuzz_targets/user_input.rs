//! Names and sizes typed by users: any string is accepted or refused with an
//! error, never a panic, and an accepted size is a whole number of blocks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(size) = ferry_store::parse_size(s) {
        assert!(size > 0 && size <= ferry_store::MAX_VOLUME_SIZE);
        assert_eq!(size % ferry_store::BLOCK_SIZE, 0);
    }
    if ferry_store::validate_name("volume", s).is_ok() {
        assert!(!s.contains('/') && !s.is_empty() && s.len() <= 63);
    }
});
