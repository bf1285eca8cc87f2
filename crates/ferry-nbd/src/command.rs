//! What a request asks, checked against what was agreed: every request is
//! either a [`Command`] the server can run or a [`Refusal`] carrying the
//! protocol's error code. No I/O.

use crate::handshake::{Agreement, MAX_PAYLOAD};
use crate::proto::*;

/// A checked request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Disconnect,
    Flush,
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Cache {
        offset: u64,
        len: u32,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
        fast: bool,
    },
    BlockStatus {
        offset: u64,
        len: u32,
        req_one: bool,
    },
}

/// Why a request is refused; the connection goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub error: u32,
    pub message: String,
}

fn refuse<T>(error: u32, message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        error,
        message: message.into(),
    })
}

/// Checks `req` against the agreement. A refused `NBD_CMD_WRITE` still has
/// its payload on the wire: the caller reads (or skips) `req.len` bytes.
pub fn check(req: &Request, a: &Agreement) -> Result<Command, Refusal> {
    let allowed = match req.command {
        CMD_READ => CMD_FLAG_DF,
        CMD_WRITE_ZEROES => CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
        CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
        CMD_WRITE | CMD_DISC | CMD_FLUSH | CMD_TRIM | CMD_CACHE => 0,
        other => return refuse(EINVAL, format!("unknown command {other}")),
    } | CMD_FLAG_FUA; // existing clients set FUA on any command; the spec tolerates it
    if req.flags & !allowed != 0 {
        return refuse(
            EINVAL,
            format!(
                "flags {:#x} are not valid for command {}",
                req.flags & !allowed,
                req.command
            ),
        );
    }
    if req.flags & CMD_FLAG_DF != 0 && !a.structured {
        return refuse(EINVAL, "NBD_CMD_FLAG_DF needs structured replies");
    }
    let (offset, len) = (req.offset, req.len);
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let writes = matches!(req.command, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && a.export.read_only {
        return refuse(EPERM, format!("export {:?} is read-only", a.export.name));
    }
    let in_range = offset
        .checked_add(u64::from(len))
        .is_some_and(|end| end <= a.export.size);
    let range = |error: u32| {
        refuse(
            error,
            format!(
                "{len} bytes at offset {offset} lie beyond the end of the export ({} bytes)",
                a.export.size
            ),
        )
    };
    match req.command {
        CMD_DISC => Ok(Command::Disconnect),
        CMD_FLUSH => Ok(Command::Flush),
        CMD_READ | CMD_WRITE if len > MAX_PAYLOAD => refuse(
            EINVAL,
            format!("{len} bytes is more than the largest request, {MAX_PAYLOAD}"),
        ),
        CMD_WRITE | CMD_WRITE_ZEROES if !in_range => range(ENOSPC),
        _ if !in_range => range(EINVAL),
        CMD_READ => Ok(Command::Read { offset, len }),
        CMD_WRITE => Ok(Command::Write { offset, len, fua }),
        CMD_TRIM => Ok(Command::Trim { offset, len, fua }),
        CMD_CACHE => Ok(Command::Cache { offset, len }),
        CMD_WRITE_ZEROES => {
            let no_hole = req.flags & CMD_FLAG_NO_HOLE != 0;
            let fast = req.flags & CMD_FLAG_FAST_ZERO != 0;
            if fast && no_hole {
                // Zeros that must be allocated are written as data: no faster than a write.
                return refuse(
                    ENOTSUP,
                    "allocated zeros are written as data, which is not fast",
                );
            }
            Ok(Command::WriteZeroes {
                offset,
                len,
                fua,
                no_hole,
                fast,
            })
        }
        CMD_BLOCK_STATUS => {
            if a.contexts.is_empty() {
                return refuse(EINVAL, "no metadata context was negotiated");
            }
            if len == 0 {
                return refuse(EINVAL, "a block status request needs a length");
            }
            Ok(Command::BlockStatus {
                offset,
                len,
                req_one: req.flags & CMD_FLAG_REQ_ONE != 0,
            })
        }
        _ => unreachable!("commands filtered above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{ExportMeta, MetaContext};

    fn agreement(read_only: bool, structured: bool) -> Agreement {
        Agreement {
            export: ExportMeta {
                id: 1,
                name: "disk".into(),
                description: String::new(),
                size: 1 << 20,
                read_only,
            },
            flags: 0,
            structured,
            contexts: if structured {
                vec![(1, MetaContext::Allocation)]
            } else {
                vec![]
            },
        }
    }

    fn req(command: u16, flags: u16, offset: u64, len: u32) -> Request {
        Request {
            flags,
            command,
            cookie: 7,
            offset,
            len,
        }
    }

    fn err(r: Result<Command, Refusal>) -> u32 {
        r.expect_err("refused").error
    }

    #[test]
    fn errors_follow_the_spec() {
        let rw = agreement(false, true);
        let ro = agreement(true, false);
        let size = 1u64 << 20;
        assert_eq!(err(check(&req(CMD_WRITE, 0, size, 1), &rw)), ENOSPC);
        assert_eq!(
            err(check(&req(CMD_WRITE_ZEROES, 0, u64::MAX, 1), &rw)),
            ENOSPC
        );
        assert_eq!(err(check(&req(CMD_READ, 0, size - 1, 2), &rw)), EINVAL);
        assert_eq!(err(check(&req(CMD_TRIM, 0, size, 1), &rw)), EINVAL);
        assert_eq!(
            err(check(&req(CMD_READ, 0, 0, MAX_PAYLOAD + 1), &rw)),
            EINVAL
        );
        assert_eq!(err(check(&req(CMD_WRITE, 0, 0, 1), &ro)), EPERM);
        assert_eq!(err(check(&req(CMD_TRIM, 0, 0, 1), &ro)), EPERM);
        assert_eq!(err(check(&req(42, 0, 0, 0), &rw)), EINVAL);
        assert_eq!(
            err(check(&req(CMD_WRITE, CMD_FLAG_REQ_ONE, 0, 1), &rw)),
            EINVAL
        );
        assert_eq!(err(check(&req(CMD_READ, CMD_FLAG_DF, 0, 1), &ro)), EINVAL);
        assert_eq!(err(check(&req(CMD_BLOCK_STATUS, 0, 0, 4096), &ro)), EINVAL);
        assert_eq!(err(check(&req(CMD_BLOCK_STATUS, 0, 0, 0), &rw)), EINVAL);
        assert_eq!(
            err(check(
                &req(
                    CMD_WRITE_ZEROES,
                    CMD_FLAG_FAST_ZERO | CMD_FLAG_NO_HOLE,
                    0,
                    1
                ),
                &rw
            )),
            ENOTSUP
        );
        assert_eq!(
            check(&req(CMD_WRITE, CMD_FLAG_FUA, size - 511, 511), &rw),
            Ok(Command::Write {
                offset: size - 511,
                len: 511,
                fua: true
            })
        );
        assert_eq!(
            check(&req(CMD_READ, CMD_FLAG_FUA, 0, 0), &ro),
            Ok(Command::Read { offset: 0, len: 0 })
        );
        assert_eq!(check(&req(CMD_FLUSH, 0, 0, 0), &ro), Ok(Command::Flush));
        assert_eq!(
            check(&req(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 0, 4096), &rw),
            Ok(Command::BlockStatus {
                offset: 0,
                len: 4096,
                req_one: true
            })
        );
    }
}
