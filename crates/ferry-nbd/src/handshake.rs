//! Option haggling as a state machine with no I/O: the server feeds it each
//! option the client sends and writes out the bytes it answers, then does
//! what the returned [`Step`] says (go on, start TLS, enter transmission,
//! close).
//!
//! It knows exports only through [`Catalog`], so it can be driven byte for
//! byte by tests and fuzzers.

use crate::proto::*;

/// Largest request payload (and read reply) the server takes: 32 MiB.
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Preferred block size: the engine's block.
pub const PREFERRED_BLOCK: u32 = 4096;
/// Option data longer than this is refused with `NBD_REP_ERR_TOO_BIG`.
pub const MAX_OPTION_DATA: u32 = 1 << 20;

/// The namespace of ferry's own metadata contexts.
pub const FERRY_NS: &str = "ferry:";
/// The context reporting blocks changed since a snapshot: `ferry:changed-since:SNAP`.
pub const CHANGED_SINCE: &str = "ferry:changed-since:";
pub const BASE_ALLOCATION: &str = "base:allocation";

/// What the server knows of one export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportMeta {
    /// Tells this export from a later one of the same name.
    pub id: u64,
    pub name: String,
    pub description: String,
    pub size: u64,
    pub read_only: bool,
}

/// The exports, as the handshake sees them.
pub trait Catalog {
    fn list(&self) -> Vec<ExportMeta>;
    fn lookup(&self, name: &str) -> Option<ExportMeta>;
    /// Snapshots a `ferry:changed-since:` context may name for this export.
    fn snapshots(&self, export: &str) -> Vec<String>;
}

/// Whether clients must, may or cannot use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// No TLS: STARTTLS is refused by policy.
    Off,
    /// TLS for clients that ask for it.
    #[default]
    Allow,
    /// Every client must upgrade before anything else.
    Require,
}

/// A metadata context a client selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaContext {
    /// `base:allocation`: holes and zeros.
    Allocation,
    /// `ferry:changed-since:SNAP`: blocks written since snapshot SNAP.
    ChangedSince(String),
}

impl MetaContext {
    pub fn name(&self) -> String {
        match self {
            MetaContext::Allocation => BASE_ALLOCATION.to_owned(),
            MetaContext::ChangedSince(s) => format!("{CHANGED_SINCE}{s}"),
        }
    }
}

/// What was agreed for the transmission phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    pub export: ExportMeta,
    pub flags: u16,
    pub structured: bool,
    /// Selected contexts with the ids the client knows them by.
    pub contexts: Vec<(u32, MetaContext)>,
}

/// What the server does after writing the answer to an option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Wait for the next option.
    Continue,
    /// Upgrade the connection to TLS, then wait for the next option.
    StartTls,
    /// Enter transmission.
    Transmit(Agreement),
    /// Close the connection.
    Close,
}

/// One connection's negotiation state.
#[derive(Debug)]
pub struct Negotiation {
    tls_mode: TlsMode,
    tls_active: bool,
    no_zeroes: bool,
    structured: bool,
    /// The export the selected contexts belong to, and the contexts.
    contexts: Option<(String, Vec<(u32, MetaContext)>)>,
}

impl Negotiation {
    pub fn new(tls_mode: TlsMode, client_flags: u32) -> Negotiation {
        Negotiation {
            tls_mode,
            tls_active: false,
            no_zeroes: client_flags & FLAG_C_NO_ZEROES != 0,
            structured: false,
            contexts: None,
        }
    }

    /// The answer to option data longer than [`MAX_OPTION_DATA`] (which the
    /// server skipped).
    pub fn too_big(&mut self, option: u32, out: &mut Vec<u8>) -> Step {
        if option == OPT_EXPORT_NAME {
            return Step::Close;
        }
        put_option_error(
            out,
            option,
            REP_ERR_TOO_BIG,
            &format!("option data longer than {MAX_OPTION_DATA} bytes"),
        );
        Step::Continue
    }

    /// Handles one option: appends the answer to `out`.
    pub fn handle(
        &mut self,
        catalog: &dyn Catalog,
        option: u32,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Step {
        let parsed = match decode_option(option, data) {
            Ok(p) => p,
            Err(e) if option == OPT_EXPORT_NAME => {
                tracing::debug!("NBD_OPT_EXPORT_NAME refused: {e}");
                return Step::Close;
            }
            Err(e) => {
                put_option_error(out, option, REP_ERR_INVALID, &e.0);
                return Step::Continue;
            }
        };
        let tls_missing = self.tls_mode == TlsMode::Require && !self.tls_active;
        match parsed {
            ClientOption::Abort => {
                put_option_reply(out, option, REP_ACK, &[]);
                Step::Close
            }
            ClientOption::StartTls => self.start_tls(out),
            ClientOption::ExportName(_) if tls_missing => Step::Close,
            _ if tls_missing => {
                put_option_error(
                    out,
                    option,
                    REP_ERR_TLS_REQD,
                    "this server requires TLS: send NBD_OPT_STARTTLS first",
                );
                Step::Continue
            }
            ClientOption::ExportName(name) => match catalog.lookup(&name) {
                Some(export) => {
                    let agreement = self.agree(export, &name);
                    put_export_name_reply(
                        out,
                        agreement.export.size,
                        agreement.flags,
                        self.no_zeroes,
                    );
                    Step::Transmit(agreement)
                }
                None => Step::Close,
            },
            ClientOption::List => {
                for e in catalog.list() {
                    put_server_entry(out, &e.name, &e.description);
                }
                put_option_reply(out, option, REP_ACK, &[]);
                Step::Continue
            }
            ClientOption::Info { go, name, requests } => {
                let Some(export) = catalog.lookup(&name) else {
                    put_option_error(
                        out,
                        option,
                        REP_ERR_UNKNOWN,
                        &format!("no export named {name:?}"),
                    );
                    return Step::Continue;
                };
                let agreement = self.agree(export, &name);
                put_info_export(out, option, agreement.export.size, agreement.flags);
                if requests.contains(&INFO_NAME) {
                    put_info_string(out, option, INFO_NAME, &agreement.export.name);
                }
                if requests.contains(&INFO_DESCRIPTION) && !agreement.export.description.is_empty()
                {
                    put_info_string(out, option, INFO_DESCRIPTION, &agreement.export.description);
                }
                put_info_block_size(out, option, 1, PREFERRED_BLOCK, MAX_PAYLOAD);
                put_option_reply(out, option, REP_ACK, &[]);
                if go {
                    Step::Transmit(agreement)
                } else {
                    Step::Continue
                }
            }
            ClientOption::StructuredReply => {
                if self.structured {
                    put_option_error(
                        out,
                        option,
                        REP_ERR_INVALID,
                        "structured replies are already on",
                    );
                } else {
                    self.structured = true;
                    put_option_reply(out, option, REP_ACK, &[]);
                }
                Step::Continue
            }
            ClientOption::MetaContext {
                set,
                export,
                queries,
            } => {
                self.meta_context(catalog, option, set, &export, &queries, out);
                Step::Continue
            }
            ClientOption::Unknown(o) => {
                put_option_error(
                    out,
                    o,
                    REP_ERR_UNSUP,
                    &format!("option {o} is not supported"),
                );
                Step::Continue
            }
        }
    }

    fn start_tls(&mut self, out: &mut Vec<u8>) -> Step {
        if self.tls_mode == TlsMode::Off {
            put_option_error(
                out,
                OPT_STARTTLS,
                REP_ERR_POLICY,
                "TLS is not enabled on this server",
            );
            return Step::Continue;
        }
        if self.tls_active {
            put_option_error(out, OPT_STARTTLS, REP_ERR_INVALID, "TLS is already on");
            return Step::Continue;
        }
        put_option_reply(out, OPT_STARTTLS, REP_ACK, &[]);
        // Nothing negotiated in the clear survives the upgrade.
        self.tls_active = true;
        self.structured = false;
        self.contexts = None;
        Step::StartTls
    }

    /// Flags and contexts for `export`, as the client asked for it by `name`.
    fn agree(&self, export: ExportMeta, name: &str) -> Agreement {
        let mut flags = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_CAN_MULTI_CONN | FLAG_SEND_CACHE;
        if export.read_only {
            flags |= FLAG_READ_ONLY;
        } else {
            flags |= FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
        }
        if self.structured {
            flags |= FLAG_SEND_DF;
        }
        let contexts = match &self.contexts {
            Some((for_export, list)) if for_export == name && self.structured => list.clone(),
            _ => Vec::new(),
        };
        Agreement {
            export,
            flags,
            structured: self.structured,
            contexts,
        }
    }

    fn meta_context(
        &mut self,
        catalog: &dyn Catalog,
        option: u32,
        set: bool,
        export: &str,
        queries: &[String],
        out: &mut Vec<u8>,
    ) {
        if set {
            // Setting replaces what was set, even when it fails.
            self.contexts = None;
        }
        if !self.structured {
            put_option_error(
                out,
                option,
                REP_ERR_INVALID,
                "negotiate NBD_OPT_STRUCTURED_REPLY before metadata contexts",
            );
            return;
        }
        if catalog.lookup(export).is_none() {
            put_option_error(
                out,
                option,
                REP_ERR_UNKNOWN,
                &format!("no export named {export:?}"),
            );
            return;
        }
        let snapshots = catalog.snapshots(export);
        let mut found: Vec<MetaContext> = Vec::new();
        let mut add = |c: MetaContext| {
            if !found.contains(&c) {
                found.push(c);
            }
        };
        let all_changed = |add: &mut dyn FnMut(MetaContext)| {
            for s in &snapshots {
                add(MetaContext::ChangedSince(s.clone()));
            }
        };
        if queries.is_empty() && !set {
            add(MetaContext::Allocation);
            all_changed(&mut add);
        }
        for q in queries {
            match q.as_str() {
                BASE_ALLOCATION => add(MetaContext::Allocation),
                "base:" if !set => add(MetaContext::Allocation),
                FERRY_NS | CHANGED_SINCE if !set => all_changed(&mut add),
                q => {
                    if let Some(snap) = q.strip_prefix(CHANGED_SINCE)
                        && snapshots.iter().any(|s| s == snap)
                    {
                        add(MetaContext::ChangedSince(snap.to_owned()));
                    }
                    // Unknown namespaces and names are ignored, as the spec asks.
                }
            }
        }
        let mut selected = Vec::new();
        for (i, c) in found.into_iter().enumerate() {
            let id = if set { i as u32 + 1 } else { 0 };
            put_meta_context(out, option, id, &c.name());
            selected.push((id, c));
        }
        put_option_reply(out, option, REP_ACK, &[]);
        if set {
            self.contexts = Some((export.to_owned(), selected));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl Catalog for Fixed {
        fn list(&self) -> Vec<ExportMeta> {
            vec![self.lookup("disk").unwrap()]
        }
        fn lookup(&self, name: &str) -> Option<ExportMeta> {
            (name == "disk").then(|| ExportMeta {
                id: 1,
                name: "disk".into(),
                description: "volume vm1-system".into(),
                size: 1 << 20,
                read_only: false,
            })
        }
        fn snapshots(&self, _: &str) -> Vec<String> {
            vec!["monday".into()]
        }
    }

    fn go(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }

    fn meta(export: &str, queries: &[&str]) -> Vec<u8> {
        let mut d = (export.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(export.as_bytes());
        d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q.as_bytes());
        }
        d
    }

    /// Reply types in `out`, in order.
    fn replies(out: &[u8]) -> Vec<u32> {
        let mut types = Vec::new();
        let mut rest = out;
        while !rest.is_empty() {
            assert_eq!(&rest[..8], &REPLY_MAGIC.to_be_bytes());
            types.push(u32::from_be_bytes(rest[12..16].try_into().unwrap()));
            let len = u32::from_be_bytes(rest[16..20].try_into().unwrap()) as usize;
            rest = &rest[20 + len..];
        }
        types
    }

    #[test]
    fn go_with_contexts_agrees_on_them() {
        let mut n = Negotiation::new(TlsMode::Allow, FLAG_C_FIXED_NEWSTYLE);
        let mut out = Vec::new();
        // contexts before structured replies are refused
        n.handle(
            &Fixed,
            OPT_SET_META_CONTEXT,
            &meta("disk", &[BASE_ALLOCATION]),
            &mut out,
        );
        assert_eq!(replies(&out), [REP_ERR_INVALID]);
        out.clear();
        assert_eq!(
            n.handle(&Fixed, OPT_STRUCTURED_REPLY, &[], &mut out),
            Step::Continue
        );
        n.handle(
            &Fixed,
            OPT_SET_META_CONTEXT,
            &meta(
                "disk",
                &[
                    BASE_ALLOCATION,
                    "ferry:changed-since:monday",
                    "ferry:changed-since:nope",
                    "x-other:thing",
                ],
            ),
            &mut out,
        );
        assert_eq!(
            replies(&out),
            [REP_ACK, REP_META_CONTEXT, REP_META_CONTEXT, REP_ACK]
        );
        out.clear();
        let step = n.handle(&Fixed, OPT_GO, &go("disk", &[INFO_BLOCK_SIZE]), &mut out);
        assert_eq!(replies(&out), [REP_INFO, REP_INFO, REP_ACK]);
        let Step::Transmit(a) = step else {
            panic!("{step:?}")
        };
        assert!(a.structured);
        assert_eq!(
            a.contexts,
            vec![
                (1, MetaContext::Allocation),
                (2, MetaContext::ChangedSince("monday".into()))
            ]
        );
        assert_eq!(a.flags & FLAG_READ_ONLY, 0);
    }

    #[test]
    fn unknown_export_and_option_keep_negotiating() {
        let mut n = Negotiation::new(TlsMode::Allow, 0);
        let mut out = Vec::new();
        assert_eq!(
            n.handle(&Fixed, OPT_GO, &go("nope", &[]), &mut out),
            Step::Continue
        );
        assert_eq!(n.handle(&Fixed, 77, &[1, 2, 3], &mut out), Step::Continue);
        assert_eq!(n.handle(&Fixed, OPT_LIST, &[], &mut out), Step::Continue);
        assert_eq!(
            replies(&out),
            [REP_ERR_UNKNOWN, REP_ERR_UNSUP, REP_SERVER, REP_ACK]
        );
        // an unknown name with EXPORT_NAME can only close
        assert_eq!(
            n.handle(&Fixed, OPT_EXPORT_NAME, b"nope", &mut out),
            Step::Close
        );
        let mut out = Vec::new();
        let step = n.handle(&Fixed, OPT_EXPORT_NAME, b"disk", &mut out);
        assert!(matches!(step, Step::Transmit(_)));
        assert_eq!(out.len(), 8 + 2 + 124);
    }

    #[test]
    fn required_tls_refuses_everything_before_the_upgrade() {
        let mut n = Negotiation::new(TlsMode::Require, 0);
        let mut out = Vec::new();
        n.handle(&Fixed, OPT_LIST, &[], &mut out);
        n.handle(&Fixed, OPT_GO, &go("disk", &[]), &mut out);
        assert_eq!(replies(&out), [REP_ERR_TLS_REQD, REP_ERR_TLS_REQD]);
        assert_eq!(
            n.handle(&Fixed, OPT_EXPORT_NAME, b"disk", &mut out),
            Step::Close
        );
        let mut out = Vec::new();
        assert_eq!(
            n.handle(&Fixed, OPT_STARTTLS, &[], &mut out),
            Step::StartTls
        );
        assert_eq!(
            n.handle(&Fixed, OPT_STARTTLS, &[], &mut out),
            Step::Continue
        );
        assert_eq!(replies(&out), [REP_ACK, REP_ERR_INVALID]);
        let mut out = Vec::new();
        assert!(matches!(
            n.handle(&Fixed, OPT_GO, &go("disk", &[]), &mut out),
            Step::Transmit(_)
        ));
        let mut off = Negotiation::new(TlsMode::Off, 0);
        let mut out = Vec::new();
        assert_eq!(
            off.handle(&Fixed, OPT_STARTTLS, &[], &mut out),
            Step::Continue
        );
        assert_eq!(replies(&out), [REP_ERR_POLICY]);
    }

    #[test]
    fn list_meta_context_lists_everything_for_no_query() {
        let mut n = Negotiation::new(TlsMode::Allow, 0);
        let mut out = Vec::new();
        n.handle(&Fixed, OPT_STRUCTURED_REPLY, &[], &mut out);
        out.clear();
        n.handle(&Fixed, OPT_LIST_META_CONTEXT, &meta("disk", &[]), &mut out);
        assert_eq!(replies(&out), [REP_META_CONTEXT, REP_META_CONTEXT, REP_ACK]);
        // listing does not select
        let mut out = Vec::new();
        let Step::Transmit(a) = n.handle(&Fixed, OPT_GO, &go("disk", &[]), &mut out) else {
            panic!()
        };
        assert!(a.contexts.is_empty());
    }
}
