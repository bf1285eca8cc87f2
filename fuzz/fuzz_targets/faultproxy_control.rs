//! Control-port lines from outside (`ferry-faultproxy --control`): any
//! bytes parse to a command or an error, never a panic; a parsed command
//! prints as a line that parses back to the same command. The unit parsers
//! under it hold their ranges and round-trip the same way.
#![no_main]

use ferry_faultproxy::control::{Command, MAX_LINE};
use ferry_faultproxy::units::{self, MAX_DELAY};
use ferry_faultproxy::{ByteSize, Rate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(command) = Command::parse_bytes(data) {
        let line = command.to_string();
        assert!(line.len() <= MAX_LINE, "{line:?}");
        assert_eq!(Command::parse_bytes(line.as_bytes()), Ok(command));
    }
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = units::parse_duration(s) {
        assert!(d <= MAX_DELAY);
        assert_eq!(units::parse_duration(&units::fmt_duration(d)), Ok(d));
    }
    if let Ok(size) = units::parse_size(s) {
        assert!(size.bytes() > 0 && size.bytes() <= ByteSize::MAX);
        assert_eq!(units::parse_size(&size.to_string()), Ok(size));
    }
    if let Ok(rate) = units::parse_rate(s) {
        let bits = rate.bits_per_sec();
        assert!((Rate::MIN_BITS_PER_SEC..=Rate::MAX_BITS_PER_SEC).contains(&bits));
        assert_eq!(units::parse_rate(&rate.to_string()), Ok(rate));
    }
});
