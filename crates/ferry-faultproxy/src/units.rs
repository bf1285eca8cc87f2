//! Units typed by people on the command line and the control port:
//! durations (`50ms`), byte sizes (`4M`) and bit rates (`10mbit`).
//!
//! Owns parsing and canonical printing of the three, nothing else (no I/O).
//! Invariants: every parsed value is exact (no floating point: `1.5s` is
//! 1,500,000 µs, and a value finer than the unit's grain is refused, not
//! rounded); every value printed by [`fmt_duration`], [`ByteSize`]'s and
//! [`Rate`]'s `Display` parses back to the same value. Sizes are in powers
//! of 1024, as everywhere in ferry; rates are in bits per second in powers
//! of 1000, as in `tc`.

use std::fmt;
use std::num::NonZeroU64;
use std::time::Duration;

/// The longest delay or jitter accepted: a minute is already far beyond any
/// real link.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// A bit rate, in whole bits per second, from [`Rate::MIN_BITS_PER_SEC`] to
/// [`Rate::MAX_BITS_PER_SEC`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(NonZeroU64);

impl Rate {
    /// One byte a second: the slowest rate that still moves whole bytes.
    pub const MIN_BITS_PER_SEC: u64 = 8;
    /// 100 gbit: faster than anything this proxy can forward.
    pub const MAX_BITS_PER_SEC: u64 = 100_000_000_000;

    /// The rate of `bits` bits per second, or `None` outside the accepted range.
    pub fn from_bits_per_sec(bits: u64) -> Option<Rate> {
        if (Self::MIN_BITS_PER_SEC..=Self::MAX_BITS_PER_SEC).contains(&bits) {
            NonZeroU64::new(bits).map(Rate)
        } else {
            None
        }
    }

    /// Bits per second.
    pub fn bits_per_sec(self) -> u64 {
        self.0.get()
    }

    /// Bytes per second (a fraction when the bits are not a multiple of 8).
    pub fn bytes_per_sec(self) -> f64 {
        self.0.get() as f64 / 8.0
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.bits_per_sec();
        let (n, unit) = largest_unit(
            bits,
            &[
                (1_000_000_000, "gbit"),
                (1_000_000, "mbit"),
                (1_000, "kbit"),
                (1, "bit"),
            ],
        );
        write!(f, "{n}{unit}")
    }
}

/// A positive number of bytes, at most [`ByteSize::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(NonZeroU64);

impl ByteSize {
    /// 1 PiB: more than any test moves, small enough that no sum overflows.
    pub const MAX: u64 = 1 << 50;

    /// `bytes` as a size, or `None` for 0 or more than [`ByteSize::MAX`].
    pub fn new(bytes: u64) -> Option<ByteSize> {
        if bytes <= Self::MAX {
            NonZeroU64::new(bytes).map(ByteSize)
        } else {
            None
        }
    }

    /// The number of bytes.
    pub fn bytes(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (n, unit) = largest_unit(
            self.bytes(),
            &[
                (1 << 40, "T"),
                (1 << 30, "G"),
                (1 << 20, "M"),
                (1 << 10, "K"),
                (1, ""),
            ],
        );
        write!(f, "{n}{unit}")
    }
}

/// Which kind of value failed to parse; its `Display` lists the accepted forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Duration,
    Size,
    Rate,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Duration => "duration",
            Kind::Size => "size",
            Kind::Rate => "rate",
        }
    }

    /// The accepted forms, for error messages and help text.
    pub fn forms(self) -> &'static str {
        match self {
            Kind::Duration => {
                "a number with us, ms or s (e.g. 50ms, 1.5s, 250us), or 0; at most 60s"
            }
            Kind::Size => {
                "a whole number of bytes, optionally with K, M, G or T (powers of 1024; e.g. 4M, 512K, 1G)"
            }
            Kind::Rate => {
                "a number of bits per second with bit, kbit, mbit or gbit (powers of 1000; e.g. 10mbit, 500kbit, 1.5gbit), at least 8bit"
            }
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A value typed by a person that is not one of the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {input:?}: {reason}; expected {forms}", forms = kind.forms())]
pub struct UnitError {
    pub kind: Kind,
    pub input: String,
    pub reason: &'static str,
}

/// Parses a duration: `50ms`, `1.5s`, `250us`, `0`; at most [`MAX_DELAY`],
/// whole microseconds.
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    let bad = |reason| UnitError {
        kind: Kind::Duration,
        input: input.to_owned(),
        reason,
    };
    let (number, unit) = split_number(input.trim()).map_err(bad)?;
    let micros_per_unit: u64 = match unit.to_ascii_lowercase().as_str() {
        "us" | "µs" => 1,
        "ms" => 1_000,
        "s" => 1_000_000,
        "" if number.is_zero() => 1,
        "" => return Err(bad("has no unit")),
        _ => return Err(bad("has an unknown unit")),
    };
    let micros = number
        .scale(micros_per_unit, MAX_DELAY.as_micros() as u64)
        .map_err(|e| {
            bad(match e {
                ScaleError::TooFine => "is finer than a microsecond",
                ScaleError::TooLarge => "is longer than 60s",
            })
        })?;
    Ok(Duration::from_micros(micros))
}

/// Parses a byte size: `4M`, `512K`, `1G`, `4096` (powers of 1024; a
/// trailing `B` or `iB` is allowed).
pub fn parse_size(input: &str) -> Result<ByteSize, UnitError> {
    let bad = |reason| UnitError {
        kind: Kind::Size,
        input: input.to_owned(),
        reason,
    };
    let (number, unit) = split_number(input.trim()).map_err(bad)?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad("has an unknown unit")),
    };
    if number.frac_digits != 0 {
        return Err(bad("is not a whole number"));
    }
    let bytes = number
        .scale(1 << shift, ByteSize::MAX)
        .map_err(|_| bad("is larger than 1P"))?;
    ByteSize::new(bytes).ok_or_else(|| bad("must be larger than 0"))
}

/// Parses a bit rate: `10mbit`, `500kbit`, `1.5gbit`, `64000bit`.
pub fn parse_rate(input: &str) -> Result<Rate, UnitError> {
    let bad = |reason| UnitError {
        kind: Kind::Rate,
        input: input.to_owned(),
        reason,
    };
    let (number, unit) = split_number(input.trim()).map_err(bad)?;
    let bits_per_unit: u64 = match unit.to_ascii_lowercase().as_str() {
        "bit" => 1,
        "kbit" => 1_000,
        "mbit" => 1_000_000,
        "gbit" => 1_000_000_000,
        "" => return Err(bad("has no unit")),
        _ => return Err(bad("has an unknown unit")),
    };
    let bits = number
        .scale(bits_per_unit, Rate::MAX_BITS_PER_SEC)
        .map_err(|e| {
            bad(match e {
                ScaleError::TooFine => "is not a whole number of bits per second",
                ScaleError::TooLarge => "is faster than 100gbit",
            })
        })?;
    Rate::from_bits_per_sec(bits).ok_or_else(|| bad("is slower than 8bit"))
}

/// Prints a duration in the largest of s, ms and us that holds it exactly
/// (`0` for zero); sub-microsecond parts are dropped.
pub fn fmt_duration(d: Duration) -> String {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    if micros == 0 {
        return "0".to_owned();
    }
    let (n, unit) = largest_unit(micros, &[(1_000_000, "s"), (1_000, "ms"), (1, "us")]);
    format!("{n}{unit}")
}

/// The largest unit (from a list, largest first, ending with 1) that divides
/// `value` exactly.
fn largest_unit(value: u64, units: &[(u64, &'static str)]) -> (u64, &'static str) {
    for &(size, name) in units {
        if value.is_multiple_of(size) {
            return (value / size, name);
        }
    }
    (value, "")
}

/// A decimal number as typed: the digits before and after the point.
#[derive(Debug, Clone, Copy)]
struct Decimal {
    int: u64,
    frac: u64,
    frac_digits: u32,
}

enum ScaleError {
    TooFine,
    TooLarge,
}

impl Decimal {
    fn is_zero(self) -> bool {
        self.int == 0 && self.frac == 0
    }

    /// `self × per_unit` as a whole number no larger than `max`.
    fn scale(self, per_unit: u64, max: u64) -> Result<u64, ScaleError> {
        let pow = 10u128.pow(self.frac_digits);
        let frac_scaled = u128::from(self.frac) * u128::from(per_unit);
        if !frac_scaled.is_multiple_of(pow) {
            return Err(ScaleError::TooFine);
        }
        let total = u128::from(self.int) * u128::from(per_unit) + frac_scaled / pow;
        u64::try_from(total)
            .ok()
            .filter(|&v| v <= max)
            .ok_or(ScaleError::TooLarge)
    }
}

/// Splits `12.5ms` into the number and the unit. Digits only: no sign, no
/// exponent, at most 18 digits on either side of the point.
fn split_number(s: &str) -> Result<(Decimal, &str), &'static str> {
    const MAX_DIGITS: usize = 18;
    let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
    if int_len == 0 {
        return Err("does not start with a number");
    }
    let (int_str, rest) = s.split_at(int_len);
    let (frac_str, unit) = match rest.strip_prefix('.') {
        Some(after) => {
            let frac_len = after.bytes().take_while(u8::is_ascii_digit).count();
            if frac_len == 0 {
                return Err("has no digits after the point");
            }
            after.split_at(frac_len)
        }
        None => ("", rest),
    };
    if int_str.len() > MAX_DIGITS || frac_str.len() > MAX_DIGITS {
        return Err("has too many digits");
    }
    let int = int_str.parse().map_err(|_| "has too many digits")?;
    let frac = if frac_str.is_empty() {
        0
    } else {
        frac_str.parse().map_err(|_| "has too many digits")?
    };
    let frac_digits = frac_str.len() as u32;
    Ok((
        Decimal {
            int,
            frac,
            frac_digits,
        },
        unit.trim_start(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_exactly() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 2 ms "), Ok(Duration::from_millis(2)));
        assert_eq!(parse_duration("60s"), Ok(MAX_DELAY));
        assert_eq!(parse_duration("0.001ms"), Ok(Duration::from_micros(1)));
        for bad in [
            "",
            "ms",
            "-1ms",
            "5",
            "61s",
            "0.0001ms",
            "1e3ms",
            "1.ms",
            "5 parsecs",
            "NaNs",
            "+5ms",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert_eq!(err.kind, Kind::Duration, "{bad:?}");
            assert!(err.to_string().contains("50ms"), "{err}");
        }
    }

    #[test]
    fn sizes_are_powers_of_1024() {
        assert_eq!(parse_size("4M").map(ByteSize::bytes), Ok(4 << 20));
        assert_eq!(parse_size("4MB").map(ByteSize::bytes), Ok(4 << 20));
        assert_eq!(parse_size("512KiB").map(ByteSize::bytes), Ok(512 << 10));
        assert_eq!(parse_size("4096").map(ByteSize::bytes), Ok(4096));
        assert_eq!(parse_size("1P").map(ByteSize::bytes).ok(), None);
        for bad in ["0", "-4M", "1.5M", "4X", "", "2000T"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rates_are_bits_in_powers_of_1000() {
        assert_eq!(parse_rate("10mbit").map(Rate::bits_per_sec), Ok(10_000_000));
        assert_eq!(
            parse_rate("1.5gbit").map(Rate::bits_per_sec),
            Ok(1_500_000_000)
        );
        assert_eq!(parse_rate("8bit").map(Rate::bits_per_sec), Ok(8));
        for bad in [
            "-1", "0mbit", "7bit", "10", "10mb", "0.5bit", "101gbit", "off",
        ] {
            let err = parse_rate(bad).unwrap_err();
            assert!(err.to_string().contains("10mbit"), "{err}");
        }
    }

    #[test]
    fn printing_round_trips() {
        for s in ["50ms", "1500ms", "1s", "7us", "0", "60s"] {
            let d = parse_duration(s).unwrap();
            assert_eq!(parse_duration(&fmt_duration(d)), Ok(d));
        }
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1500ms");
        let r = parse_rate("2.5mbit").unwrap();
        assert_eq!(r.to_string(), "2500kbit");
        assert_eq!(parse_rate(&r.to_string()), Ok(r));
        let s = parse_size("3072K").unwrap();
        assert_eq!(s.to_string(), "3M");
        assert_eq!(parse_size(&s.to_string()), Ok(s));
    }
}
