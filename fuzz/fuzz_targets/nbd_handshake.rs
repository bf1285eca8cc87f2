//! The NBD handshake from the server's side: any bytes a client sends are
//! decoded and answered (or the connection closed), never a panic, and
//! every answer is a well-formed option reply.
#![no_main]

use ferry_nbd::handshake::{Catalog, ExportMeta, Negotiation, Step, TlsMode, MAX_OPTION_DATA};
use ferry_nbd::proto::*;
use libfuzzer_sys::fuzz_target;

struct Fixed;

impl Catalog for Fixed {
    fn list(&self) -> Vec<ExportMeta> {
        ["disk", "frozen"].iter().filter_map(|n| self.lookup(n)).collect()
    }
    fn lookup(&self, name: &str) -> Option<ExportMeta> {
        matches!(name, "disk" | "frozen").then(|| ExportMeta {
            id: 1,
            name: name.into(),
            description: format!("export {name}"),
            size: 1 << 30,
            read_only: name == "frozen",
        })
    }
    fn snapshots(&self, _: &str) -> Vec<String> {
        vec!["monday".into()]
    }
}

/// Checks `out` is a sequence of option replies to `option`.
fn well_formed(out: &[u8], option: u32) {
    let mut rest = out;
    while !rest.is_empty() {
        assert!(rest.len() >= 20, "short reply");
        assert_eq!(u64::from_be_bytes(rest[..8].try_into().unwrap()), REPLY_MAGIC);
        let echoed = u32::from_be_bytes(rest[8..12].try_into().unwrap());
        assert_eq!(echoed, option);
        let len = u32::from_be_bytes(rest[16..20].try_into().unwrap()) as usize;
        assert!(rest.len() >= 20 + len, "reply length past the end");
        rest = &rest[20 + len..];
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let mode = match data[0] % 3 {
        0 => TlsMode::Off,
        1 => TlsMode::Allow,
        _ => TlsMode::Require,
    };
    let Ok(flags) = decode_client_flags(data[1..5].try_into().unwrap()) else {
        return;
    };
    let mut n = Negotiation::new(mode, flags);
    let mut rest = &data[5..];
    let mut out = Vec::new();
    while rest.len() >= OPTION_HEADER_LEN {
        let Ok(h) = decode_option_header(rest[..OPTION_HEADER_LEN].try_into().unwrap()) else {
            return;
        };
        rest = &rest[OPTION_HEADER_LEN..];
        out.clear();
        let step = if h.len > MAX_OPTION_DATA {
            n.too_big(h.option, &mut out)
        } else {
            let take = (h.len as usize).min(rest.len());
            let (opt, tail) = rest.split_at(take);
            rest = tail;
            n.handle(&Fixed, h.option, opt, &mut out)
        };
        match step {
            Step::Transmit(a) if h.option == OPT_EXPORT_NAME => {
                assert!(out.len() == 10 || out.len() == 134);
                assert!(a.contexts.is_empty() || a.structured);
                return;
            }
            Step::Transmit(a) => {
                well_formed(&out, h.option);
                assert!(Fixed.lookup(&a.export.name).is_some());
                assert!(a.contexts.is_empty() || a.structured);
                return;
            }
            Step::Close => return,
            Step::Continue | Step::StartTls => well_formed(&out, h.option),
        }
    }
});
