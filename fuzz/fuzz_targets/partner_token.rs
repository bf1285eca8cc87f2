//! Pairing tokens pasted by users (`ferry partner pair TOKEN`): any string
//! decodes to a token or an error, never a panic, and a decoded token
//! encodes back to a string that decodes to the same token.
#![no_main]

use ferry_store::partner_token::{PartnerToken, address_ok};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = PartnerToken::decode(s) {
        assert!(address_ok(&t.address));
        assert_eq!(PartnerToken::decode(&t.encode()).as_ref(), Ok(&t));
    }
});
