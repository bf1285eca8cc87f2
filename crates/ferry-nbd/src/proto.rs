//! The NBD wire format: constants, and decoders and encoders of every message
//! ferry reads or writes. No I/O here: decoders take bytes and say what they
//! mean (or why they are malformed), encoders append bytes to a buffer.
//!
//! Names and values follow doc/proto.md of the NetworkBlockDevice/nbd
//! repository; only the fixed newstyle handshake is spoken.

use std::fmt;

/// `NBDMAGIC`, first 8 bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle magic, and the magic of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Magic of every option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// handshake flags (server) and client flags
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// transmission flags
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const FLAG_SEND_DF: u16 = 1 << 7;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const FLAG_SEND_CACHE: u16 = 1 << 10;
pub const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;

// options
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

// option replies
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
const REP_ERR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERR | 1;
pub const REP_ERR_POLICY: u32 = REP_ERR | 2;
pub const REP_ERR_INVALID: u32 = REP_ERR | 3;
pub const REP_ERR_PLATFORM: u32 = REP_ERR | 4;
pub const REP_ERR_TLS_REQD: u32 = REP_ERR | 5;
pub const REP_ERR_UNKNOWN: u32 = REP_ERR | 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_ERR | 7;
pub const REP_ERR_TOO_BIG: u32 = REP_ERR | 9;

// information types
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// commands
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

// command flags
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

// structured reply flags and types
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;

// errors
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

// base:allocation status flags
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;
/// Status flag of ferry's changed-blocks context: the extent changed.
pub const STATE_CHANGED: u32 = 1 << 0;

/// Length of the server's greeting: NBDMAGIC, IHAVEOPT, handshake flags.
pub const GREETING_LEN: usize = 18;
/// Length of an option header: IHAVEOPT, option, data length.
pub const OPTION_HEADER_LEN: usize = 16;
/// Length of a request header.
pub const REQUEST_LEN: usize = 28;
/// Length of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Length of a structured reply chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;
/// Longest string the protocol allows (names, queries, messages).
pub const MAX_STRING: usize = 4096;

/// The server's greeting, sent first on every connection.
pub fn greeting() -> [u8; GREETING_LEN] {
    let mut b = [0u8; GREETING_LEN];
    b[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    b
}

/// Something outside bytes got wrong; the connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("client flags {0:#x} name a flag the server did not offer")]
    ClientFlags(u32),
    #[error("bad magic {found:#x} in {what}")]
    Magic { what: &'static str, found: u64 },
}

/// Decodes the client's 32-bit flags; unknown flags end the connection.
pub fn decode_client_flags(b: [u8; 4]) -> Result<u32, WireError> {
    let flags = u32::from_be_bytes(b);
    if flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(WireError::ClientFlags(flags));
    }
    Ok(flags)
}

/// An option header: which option, how many data bytes follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len: u32,
}

pub fn decode_option_header(b: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, WireError> {
    let magic = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
    if magic != IHAVEOPT {
        return Err(WireError::Magic {
            what: "option header",
            found: magic,
        });
    }
    Ok(OptionHeader {
        option: u32::from_be_bytes(b[8..12].try_into().expect("4 bytes")),
        len: u32::from_be_bytes(b[12..16].try_into().expect("4 bytes")),
    })
}

/// A client option with its data decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    ExportName(String),
    Abort,
    List,
    StartTls,
    /// `OPT_INFO` (`go: false`) or `OPT_GO`.
    Info {
        go: bool,
        name: String,
        requests: Vec<u16>,
    },
    StructuredReply,
    /// `OPT_LIST_META_CONTEXT` (`set: false`) or `OPT_SET_META_CONTEXT`.
    MetaContext {
        set: bool,
        export: String,
        queries: Vec<String>,
    },
    Unknown(u32),
}

/// Why an option's data could not be decoded: answered with
/// `NBD_REP_ERR_INVALID` and the message, and negotiation goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadOption(pub String);

impl fmt::Display for BadOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A cursor over option data that refuses to read past its end.
struct Cursor<'a> {
    data: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BadOption> {
        if self.data.len() < n {
            return Err(BadOption(format!(
                "{}: data ends {} bytes early",
                self.what,
                n - self.data.len()
            )));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, BadOption> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }

    fn u32(&mut self) -> Result<u32, BadOption> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }

    /// A string of `len` bytes: UTF-8, at most [`MAX_STRING`].
    fn string(&mut self, len: u32, field: &str) -> Result<String, BadOption> {
        if len as usize > MAX_STRING {
            return Err(BadOption(format!(
                "{}: {field} is {len} bytes, more than {MAX_STRING}",
                self.what
            )));
        }
        let bytes = self.take(len as usize)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| BadOption(format!("{}: {field} is not UTF-8", self.what)))
    }

    fn end(&self) -> Result<(), BadOption> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(BadOption(format!(
                "{}: {} unexpected bytes after the data",
                self.what,
                self.data.len()
            )))
        }
    }
}

/// Decodes an option's data. Options that take no data refuse any.
pub fn decode_option(option: u32, data: &[u8]) -> Result<ClientOption, BadOption> {
    let none = |what: &'static str, opt: ClientOption| Cursor { data, what }.end().map(|()| opt);
    match option {
        OPT_EXPORT_NAME => {
            let mut c = Cursor {
                data,
                what: "NBD_OPT_EXPORT_NAME",
            };
            c.string(data.len() as u32, "export name")
                .map(ClientOption::ExportName)
        }
        // The spec asks servers to ignore data sent with ABORT.
        OPT_ABORT => Ok(ClientOption::Abort),
        OPT_LIST => none("NBD_OPT_LIST", ClientOption::List),
        OPT_STARTTLS => none("NBD_OPT_STARTTLS", ClientOption::StartTls),
        OPT_STRUCTURED_REPLY => none("NBD_OPT_STRUCTURED_REPLY", ClientOption::StructuredReply),
        OPT_INFO | OPT_GO => {
            let go = option == OPT_GO;
            let mut c = Cursor {
                data,
                what: if go { "NBD_OPT_GO" } else { "NBD_OPT_INFO" },
            };
            let len = c.u32()?;
            let name = c.string(len, "export name")?;
            let n = c.u16()?;
            let mut requests = Vec::with_capacity(usize::from(n).min(16));
            for _ in 0..n {
                requests.push(c.u16()?);
            }
            c.end()?;
            Ok(ClientOption::Info { go, name, requests })
        }
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
            let set = option == OPT_SET_META_CONTEXT;
            let mut c = Cursor {
                data,
                what: if set {
                    "NBD_OPT_SET_META_CONTEXT"
                } else {
                    "NBD_OPT_LIST_META_CONTEXT"
                },
            };
            let len = c.u32()?;
            let export = c.string(len, "export name")?;
            let n = c.u32()?;
            let mut queries = Vec::new();
            for _ in 0..n {
                let len = c.u32()?;
                queries.push(c.string(len, "query")?);
            }
            c.end()?;
            Ok(ClientOption::MetaContext {
                set,
                export,
                queries,
            })
        }
        other => Ok(ClientOption::Unknown(other)),
    }
}

/// Appends an option reply.
pub fn put_option_reply(out: &mut Vec<u8>, option: u32, reply: u32, data: &[u8]) {
    out.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// Appends an error reply to an option, with a message for people.
pub fn put_option_error(out: &mut Vec<u8>, option: u32, reply: u32, message: &str) {
    let msg = truncate(message, MAX_STRING);
    put_option_reply(out, option, reply, msg.as_bytes());
}

/// Appends an `NBD_REP_SERVER` entry for `NBD_OPT_LIST`.
pub fn put_server_entry(out: &mut Vec<u8>, name: &str, description: &str) {
    let mut data = Vec::with_capacity(4 + name.len() + description.len());
    data.extend_from_slice(&(name.len() as u32).to_be_bytes());
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(truncate(description, MAX_STRING).as_bytes());
    put_option_reply(out, OPT_LIST, REP_SERVER, &data);
}

/// Appends `NBD_REP_INFO` with `NBD_INFO_EXPORT`.
pub fn put_info_export(out: &mut Vec<u8>, option: u32, size: u64, flags: u16) {
    let mut data = [0u8; 12];
    data[..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
    data[2..10].copy_from_slice(&size.to_be_bytes());
    data[10..].copy_from_slice(&flags.to_be_bytes());
    put_option_reply(out, option, REP_INFO, &data);
}

/// Appends `NBD_REP_INFO` with `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION`.
pub fn put_info_string(out: &mut Vec<u8>, option: u32, info: u16, text: &str) {
    let text = truncate(text, MAX_STRING);
    let mut data = Vec::with_capacity(2 + text.len());
    data.extend_from_slice(&info.to_be_bytes());
    data.extend_from_slice(text.as_bytes());
    put_option_reply(out, option, REP_INFO, &data);
}

/// Appends `NBD_REP_INFO` with `NBD_INFO_BLOCK_SIZE`.
pub fn put_info_block_size(out: &mut Vec<u8>, option: u32, min: u32, preferred: u32, max: u32) {
    let mut data = [0u8; 14];
    data[..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    data[2..6].copy_from_slice(&min.to_be_bytes());
    data[6..10].copy_from_slice(&preferred.to_be_bytes());
    data[10..].copy_from_slice(&max.to_be_bytes());
    put_option_reply(out, option, REP_INFO, &data);
}

/// Appends `NBD_REP_META_CONTEXT`.
pub fn put_meta_context(out: &mut Vec<u8>, option: u32, id: u32, name: &str) {
    let mut data = Vec::with_capacity(4 + name.len());
    data.extend_from_slice(&id.to_be_bytes());
    data.extend_from_slice(name.as_bytes());
    put_option_reply(out, option, REP_META_CONTEXT, &data);
}

/// The answer to `NBD_OPT_EXPORT_NAME`: size, flags and (unless the client
/// asked for none) 124 zero bytes.
pub fn put_export_name_reply(out: &mut Vec<u8>, size: u64, flags: u16, no_zeroes: bool) {
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
}

/// A request header as sent; what it asks is checked by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

/// Decodes a request header; a wrong magic means the stream is lost.
pub fn decode_request(b: &[u8; REQUEST_LEN]) -> Result<Request, WireError> {
    let magic = u32::from_be_bytes(b[..4].try_into().expect("4"));
    if magic != REQUEST_MAGIC {
        return Err(WireError::Magic {
            what: "request",
            found: u64::from(magic),
        });
    }
    Ok(Request {
        flags: u16::from_be_bytes(b[4..6].try_into().expect("2")),
        command: u16::from_be_bytes(b[6..8].try_into().expect("2")),
        cookie: u64::from_be_bytes(b[8..16].try_into().expect("8")),
        offset: u64::from_be_bytes(b[16..24].try_into().expect("8")),
        len: u32::from_be_bytes(b[24..28].try_into().expect("4")),
    })
}

/// Encodes a request header (the server never sends one; tests and fuzzers do).
pub fn encode_request(r: &Request) -> [u8; REQUEST_LEN] {
    let mut b = [0u8; REQUEST_LEN];
    b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&r.flags.to_be_bytes());
    b[6..8].copy_from_slice(&r.command.to_be_bytes());
    b[8..16].copy_from_slice(&r.cookie.to_be_bytes());
    b[16..24].copy_from_slice(&r.offset.to_be_bytes());
    b[24..28].copy_from_slice(&r.len.to_be_bytes());
    b
}

/// A simple reply header.
pub fn simple_reply(error: u32, cookie: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut b = [0u8; SIMPLE_REPLY_LEN];
    b[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// A structured reply chunk header; `len` counts the payload that follows.
pub fn chunk_header(flags: u16, kind: u16, cookie: u64, len: u32) -> [u8; CHUNK_HEADER_LEN] {
    let mut b = [0u8; CHUNK_HEADER_LEN];
    b[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..].copy_from_slice(&len.to_be_bytes());
    b
}

/// Appends a final `NBD_REPLY_TYPE_ERROR` chunk.
pub fn put_error_chunk(out: &mut Vec<u8>, cookie: u64, error: u32, message: &str) {
    let msg = truncate(message, MAX_STRING);
    out.extend_from_slice(&chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        6 + msg.len() as u32,
    ));
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg.as_bytes());
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }

    #[test]
    fn go_decodes_and_rejects_short_or_long_data() {
        let d = go_data("disk", &[INFO_BLOCK_SIZE, INFO_NAME]);
        assert_eq!(
            decode_option(OPT_GO, &d),
            Ok(ClientOption::Info {
                go: true,
                name: "disk".into(),
                requests: vec![INFO_BLOCK_SIZE, INFO_NAME]
            })
        );
        for cut in 0..d.len() {
            assert!(decode_option(OPT_GO, &d[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = d.clone();
        long.push(0);
        assert!(decode_option(OPT_INFO, &long).is_err());
        // a name length pointing past the end
        let mut lie = d;
        lie[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_option(OPT_GO, &lie).is_err());
    }

    #[test]
    fn meta_context_decodes_queries() {
        let mut d = 4u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"disk");
        d.extend_from_slice(&2u32.to_be_bytes());
        for q in ["base:allocation", "ferry:"] {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q.as_bytes());
        }
        assert_eq!(
            decode_option(OPT_SET_META_CONTEXT, &d),
            Ok(ClientOption::MetaContext {
                set: true,
                export: "disk".into(),
                queries: vec!["base:allocation".into(), "ferry:".into()]
            })
        );
        // a huge query count with no data is an error, not an allocation
        let mut big = 0u32.to_be_bytes().to_vec();
        big.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_option(OPT_LIST_META_CONTEXT, &big).is_err());
    }

    #[test]
    fn options_without_data_refuse_data() {
        assert_eq!(decode_option(OPT_LIST, &[]), Ok(ClientOption::List));
        assert!(decode_option(OPT_LIST, &[1]).is_err());
        assert!(decode_option(OPT_STARTTLS, &[1]).is_err());
        assert!(decode_option(OPT_STRUCTURED_REPLY, &[0, 0]).is_err());
        assert_eq!(decode_option(OPT_ABORT, &[1, 2]), Ok(ClientOption::Abort));
        assert_eq!(decode_option(99, &[1]), Ok(ClientOption::Unknown(99)));
        assert!(decode_option(OPT_EXPORT_NAME, &[0xff]).is_err());
    }

    #[test]
    fn request_round_trips_and_checks_magic() {
        let r = Request {
            flags: CMD_FLAG_FUA,
            command: CMD_WRITE,
            cookie: 0x0102_0304_0506_0708,
            offset: 4097,
            len: 511,
        };
        let b = encode_request(&r);
        assert_eq!(decode_request(&b), Ok(r));
        let mut bad = b;
        bad[0] ^= 1;
        assert!(decode_request(&bad).is_err());
    }

    #[test]
    fn client_flags_refuse_unknown_bits() {
        assert_eq!(decode_client_flags([0, 0, 0, 3]), Ok(3));
        assert!(decode_client_flags([0, 0, 0, 4]).is_err());
    }

    #[test]
    fn error_messages_are_capped_on_a_char_boundary() {
        let long = "é".repeat(MAX_STRING);
        let mut out = Vec::new();
        put_option_error(&mut out, OPT_GO, REP_ERR_UNKNOWN, &long);
        let len = u32::from_be_bytes(out[16..20].try_into().unwrap()) as usize;
        assert!(len <= MAX_STRING);
        assert!(std::str::from_utf8(&out[20..]).is_ok());
    }
}
