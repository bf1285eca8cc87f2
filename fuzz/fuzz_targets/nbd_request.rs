//! NBD requests: any header decodes to a request or a bad-magic error, and
//! checking it against an agreement yields a command inside the export or a
//! refusal, never a panic.
#![no_main]

use ferry_nbd::command::{Command, check};
use ferry_nbd::handshake::{Agreement, ExportMeta, MAX_PAYLOAD, MetaContext};
use ferry_nbd::proto::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let size = u64::from_be_bytes(data[1..9].try_into().unwrap()) >> (data[0] % 64);
    let agreement = Agreement {
        export: ExportMeta {
            id: 1,
            name: "disk".into(),
            description: String::new(),
            size,
            read_only: data[0] & 0x40 != 0,
        },
        flags: 0,
        structured: data[0] & 0x80 != 0,
        contexts: if data[0] & 0x80 != 0 {
            vec![(1, MetaContext::Allocation)]
        } else {
            vec![]
        },
    };
    for chunk in data[9..].chunks_exact(REQUEST_LEN) {
        let Ok(req) = decode_request(chunk.try_into().unwrap()) else {
            continue;
        };
        assert_eq!(&encode_request(&req)[..], chunk);
        let within = |offset: u64, len: u32| offset + u64::from(len) <= size;
        match check(&req, &agreement) {
            Ok(Command::Read { offset, len }) => assert!(within(offset, len) && len <= MAX_PAYLOAD),
            Ok(Command::Write { offset, len, .. }) => {
                assert!(within(offset, len) && len <= MAX_PAYLOAD && !agreement.export.read_only)
            }
            Ok(Command::Trim { offset, len, .. } | Command::WriteZeroes { offset, len, .. }) => {
                assert!(within(offset, len) && !agreement.export.read_only)
            }
            Ok(Command::Cache { offset, len }) => assert!(within(offset, len)),
            Ok(Command::BlockStatus { offset, len, .. }) => {
                assert!(within(offset, len) && len > 0 && agreement.structured)
            }
            Ok(Command::Flush | Command::Disconnect) => {}
            Err(r) => assert!(r.error != 0),
        }
    }
});
