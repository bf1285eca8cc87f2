//! The control port's language: one command per line, one answer line per
//! command. This module parses a line from outside ([`Command::parse_bytes`],
//! no I/O, fuzzed by `fuzz/fuzz_targets/faultproxy_control.rs`) and, with
//! the `proxy` feature, applies a command to a proxy and words the answer
//! ([`execute`]). The TCP listener around it lives in the binary.
//!
//! ```text
//! partition on | partition off   cut or heal the link
//! delay DURATION                 one-way delay per direction (0 for none)
//! jitter DURATION                extra random delay per chunk (0 for none)
//! rate RATE | rate off           cap per direction, shared by connections
//! reset-every SIZE | reset-every off
//! reset-now                      reset every live connection
//! stats                          counters and the faults in force
//! help                           the list of commands
//! ```
//!
//! Answers: `ok`, `ok KEY=VALUE ...` (for `stats` and `help`), or `error
//! MESSAGE`. Verbs and `on`/`off` are case-insensitive; words are separated
//! by any whitespace; a line is at most [`MAX_LINE`] bytes of UTF-8. Every
//! [`Command`] prints (`Display`) as a line that parses back to itself.

use crate::units::{self, ByteSize, Rate, UnitError, fmt_duration};
use std::fmt;
use std::time::Duration;

/// The longest command line accepted, in bytes, without its line ending.
pub const MAX_LINE: usize = 256;

/// One line of the control port, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Partition(bool),
    Delay(Duration),
    Jitter(Duration),
    Rate(Option<Rate>),
    ResetEvery(Option<ByteSize>),
    ResetNow,
    Stats,
    Help,
}

/// Why a control line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("empty command; try help")]
    Empty,
    #[error("line longer than {max} bytes", max = MAX_LINE)]
    TooLong,
    #[error("line is not UTF-8")]
    NotUtf8,
    #[error("unknown command {verb:?}; try help")]
    UnknownCommand { verb: String },
    #[error("{verb} needs {expected}")]
    MissingArgument {
        verb: &'static str,
        expected: &'static str,
    },
    #[error("{verb} takes one argument, got {extra:?} too")]
    ExtraArgument { verb: &'static str, extra: String },
    #[error("partition takes on or off, not {got:?}")]
    NotOnOff { got: String },
    #[error(transparent)]
    Value(#[from] UnitError),
}

/// The commands, for `help`.
pub const HELP: &str = "commands: partition on|off, delay DURATION, jitter DURATION, rate RATE|off, \
                        reset-every SIZE|off, reset-now, stats, help";

impl Command {
    /// Parses one line as read from the socket: at most [`MAX_LINE`] bytes
    /// of UTF-8, a trailing `\n` or `\r\n` allowed.
    pub fn parse_bytes(line: &[u8]) -> Result<Command, ControlError> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > MAX_LINE {
            return Err(ControlError::TooLong);
        }
        let line = std::str::from_utf8(line).map_err(|_| ControlError::NotUtf8)?;
        Command::parse(line)
    }

    /// Parses one line of text (no length limit; see [`Command::parse_bytes`]).
    pub fn parse(line: &str) -> Result<Command, ControlError> {
        let mut words = line.split_whitespace();
        let Some(verb) = words.next() else {
            return Err(ControlError::Empty);
        };
        let arg = words.next();
        let verb = match verb.to_ascii_lowercase().as_str() {
            "partition" => "partition",
            "delay" => "delay",
            "jitter" => "jitter",
            "rate" => "rate",
            "reset-every" => "reset-every",
            "reset-now" => "reset-now",
            "stats" => "stats",
            "help" => "help",
            _ => {
                return Err(ControlError::UnknownCommand {
                    verb: verb.to_owned(),
                });
            }
        };
        if let Some(extra) = words.next() {
            return Err(ControlError::ExtraArgument {
                verb,
                extra: extra.to_owned(),
            });
        }
        let needs = |expected| arg.ok_or(ControlError::MissingArgument { verb, expected });
        let is_off = |s: &str| s.eq_ignore_ascii_case("off");
        Ok(match verb {
            "partition" => {
                let a = needs("on or off")?;
                if a.eq_ignore_ascii_case("on") {
                    Command::Partition(true)
                } else if is_off(a) {
                    Command::Partition(false)
                } else {
                    return Err(ControlError::NotOnOff { got: a.to_owned() });
                }
            }
            "delay" => Command::Delay(parse_delay(needs(units::Kind::Duration.forms())?)?),
            "jitter" => Command::Jitter(parse_delay(needs(units::Kind::Duration.forms())?)?),
            "rate" => {
                let a = needs("a rate (e.g. 10mbit) or off")?;
                Command::Rate(if is_off(a) {
                    None
                } else {
                    Some(units::parse_rate(a)?)
                })
            }
            "reset-every" => {
                let a = needs("a size (e.g. 4M) or off")?;
                Command::ResetEvery(if is_off(a) {
                    None
                } else {
                    Some(units::parse_size(a)?)
                })
            }
            no_arg => {
                if let Some(a) = arg {
                    return Err(ControlError::ExtraArgument {
                        verb,
                        extra: a.to_owned(),
                    });
                }
                match no_arg {
                    "reset-now" => Command::ResetNow,
                    "stats" => Command::Stats,
                    _ => Command::Help,
                }
            }
        })
    }
}

/// A delay on the control port: a duration, or `off` for none.
fn parse_delay(s: &str) -> Result<Duration, UnitError> {
    if s.eq_ignore_ascii_case("off") {
        Ok(Duration::ZERO)
    } else {
        units::parse_duration(s)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let off = |f: &mut fmt::Formatter<'_>, v: Option<String>| {
            f.write_str(v.as_deref().unwrap_or("off"))
        };
        match self {
            Command::Partition(on) => write!(f, "partition {}", if *on { "on" } else { "off" }),
            Command::Delay(d) => write!(f, "delay {}", fmt_duration(*d)),
            Command::Jitter(d) => write!(f, "jitter {}", fmt_duration(*d)),
            Command::Rate(r) => {
                f.write_str("rate ")?;
                off(f, r.map(|r| r.to_string()))
            }
            Command::ResetEvery(s) => {
                f.write_str("reset-every ")?;
                off(f, s.map(|s| s.to_string()))
            }
            Command::ResetNow => f.write_str("reset-now"),
            Command::Stats => f.write_str("stats"),
            Command::Help => f.write_str("help"),
        }
    }
}

/// Parses one control line, applies it to `proxy` and returns the answer
/// line (without its `\n`).
#[cfg(feature = "proxy")]
pub fn execute(proxy: &crate::FaultProxy, line: &[u8]) -> String {
    let command = match Command::parse_bytes(line) {
        Ok(c) => c,
        Err(e) => return format!("error {e}"),
    };
    tracing::info!(%command, "control");
    match command {
        Command::Partition(on) => proxy.partition(on),
        Command::Delay(d) => proxy.update_faults(|f| f.delay = d),
        Command::Jitter(d) => proxy.update_faults(|f| f.jitter = d),
        Command::Rate(r) => proxy.update_faults(|f| f.rate = r),
        Command::ResetEvery(s) => proxy.update_faults(|f| f.reset_every = s),
        Command::ResetNow => proxy.reset_all(),
        Command::Stats => {
            let s = proxy.stats();
            let partitioned = if proxy.is_partitioned() { "on" } else { "off" };
            return format!(
                "ok accepted={} open={} to_target={} to_client={} resets={} partition={partitioned} {}",
                s.connections_accepted,
                s.connections_open,
                s.bytes_to_target,
                s.bytes_to_client,
                s.resets_injected,
                proxy.faults()
            );
        }
        Command::Help => return format!("ok {HELP}"),
    }
    "ok".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        let ms = Duration::from_millis;
        assert_eq!(Command::parse("partition on"), Ok(Command::Partition(true)));
        assert_eq!(
            Command::parse("  PARTITION   Off\t"),
            Ok(Command::Partition(false))
        );
        assert_eq!(Command::parse("delay 50ms"), Ok(Command::Delay(ms(50))));
        assert_eq!(
            Command::parse("delay off"),
            Ok(Command::Delay(Duration::ZERO))
        );
        assert_eq!(Command::parse("jitter 5ms"), Ok(Command::Jitter(ms(5))));
        assert_eq!(
            Command::parse("rate 10mbit"),
            Ok(Command::Rate(Rate::from_bits_per_sec(10_000_000)))
        );
        assert_eq!(Command::parse("rate off"), Ok(Command::Rate(None)));
        assert_eq!(
            Command::parse("reset-every 4M"),
            Ok(Command::ResetEvery(ByteSize::new(4 << 20)))
        );
        assert_eq!(
            Command::parse("reset-every off"),
            Ok(Command::ResetEvery(None))
        );
        assert_eq!(Command::parse("reset-now"), Ok(Command::ResetNow));
        assert_eq!(Command::parse("stats"), Ok(Command::Stats));
        assert_eq!(Command::parse_bytes(b"stats\r\n"), Ok(Command::Stats));
    }

    #[test]
    fn bad_lines_are_refused_with_a_reason() {
        assert_eq!(Command::parse(""), Err(ControlError::Empty));
        assert!(matches!(
            Command::parse("frobnicate"),
            Err(ControlError::UnknownCommand { .. })
        ));
        assert!(matches!(
            Command::parse("delay"),
            Err(ControlError::MissingArgument { verb: "delay", .. })
        ));
        assert!(matches!(
            Command::parse("stats now"),
            Err(ControlError::ExtraArgument { .. })
        ));
        assert!(matches!(
            Command::parse("rate 10mbit 5"),
            Err(ControlError::ExtraArgument { .. })
        ));
        assert!(matches!(
            Command::parse("partition maybe"),
            Err(ControlError::NotOnOff { .. })
        ));
        let err = Command::parse("rate -1").unwrap_err();
        assert!(err.to_string().contains("10mbit"), "{err}");
        assert_eq!(
            Command::parse_bytes(&[b'a'; MAX_LINE + 1]),
            Err(ControlError::TooLong)
        );
        assert_eq!(
            Command::parse_bytes(b"stats \xff"),
            Err(ControlError::NotUtf8)
        );
    }

    #[test]
    fn commands_print_as_lines_that_parse_back() {
        for line in [
            "partition on",
            "delay 1500ms",
            "jitter 0",
            "rate 2500kbit",
            "rate off",
            "reset-every 3M",
            "reset-now",
        ] {
            let c = Command::parse(line).unwrap();
            assert_eq!(c.to_string(), line);
            assert_eq!(Command::parse(&c.to_string()), Ok(c));
        }
    }
}
