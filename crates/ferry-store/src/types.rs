//! Identifiers, units and the validation of names and sizes.
//!
//! Every id is a newtype so that a layer id can never be passed where a volume
//! id is wanted. Names and sizes coming from users are checked here, once, and
//! the error names what is wrong with them.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::error::StoreError;

/// The engine's block size: allocation, copy-on-write and diffs work in 4 KiB units.
pub const BLOCK_SIZE: u64 = 4096;
/// `BLOCK_SIZE` as a `usize`, for buffers.
pub const BLOCK: usize = BLOCK_SIZE as usize;
/// The largest volume: 2^32 - 1 blocks of 4 KiB (16 TiB less 4 KiB), so a
/// block index fits in a `u32`, and a layer file fits ext4's largest file
/// (whose last 4 KiB block is out of reach: exactly 16 TiB fails with EFBIG).
pub const MAX_VOLUME_SIZE: u64 = ((1 << 32) - 1) * BLOCK_SIZE;
/// Longest name of a volume, group, snapshot, slot or export.
pub const MAX_NAME_LEN: usize = 63;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

id_type!(
    /// A volume: one virtual disk.
    VolumeId,
    "vol-"
);
id_type!(
    /// A group: the volumes of one VM as named slots.
    GroupId,
    "grp-"
);
id_type!(
    /// A layer: a sparse data file plus its allocation map.
    LayerId,
    "layer-"
);
id_type!(
    /// A snapshot of a group or of a lone volume.
    SnapshotId,
    "snap-"
);
id_type!(
    /// An NBD export: a name bound to a volume or to one volume of a snapshot.
    ExportId,
    "export-"
);

/// Whether a snapshot was taken with the application's help.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum SnapshotKind {
    /// Crash-consistent: every volume of the group at one instant.
    #[default]
    Crash,
    /// Application-consistent: taken between the group's freeze and thaw hooks.
    App,
}

impl fmt::Display for SnapshotKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SnapshotKind::Crash => "crash",
            SnapshotKind::App => "app",
        })
    }
}

/// Checks a name of a volume, group, snapshot, slot, export or tag key against
/// `[a-z0-9][a-z0-9._-]{0,62}`.
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), StoreError> {
    let reason = if name.is_empty() {
        Some("is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("is longer than 63 characters")
    } else if !name.as_bytes()[0].is_ascii_lowercase() && !name.as_bytes()[0].is_ascii_digit() {
        Some("must start with a lowercase letter or a digit")
    } else if !name
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'))
    {
        Some("may hold only lowercase letters, digits, '.', '_' and '-'")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(StoreError::InvalidName {
            kind,
            name: name.to_owned(),
            reason,
        }),
    }
}

/// Whether a tag value is acceptable: at most 255 characters, none of them
/// a control character.
pub fn tag_value_ok(value: &str) -> bool {
    value.chars().count() <= 255 && !value.chars().any(char::is_control)
}

/// Checks one `key=value` tag of a group.
pub fn validate_tag(key: &str, value: &str) -> Result<(), StoreError> {
    validate_name("tag key", key)?;
    if !tag_value_ok(value) {
        return Err(StoreError::Invalid(
            "a tag value must be at most 255 characters without control characters",
        ));
    }
    Ok(())
}

/// Parses a size such as `10G`, `512M`, `1T`, `4096`, `1GiB` (binary units)
/// and checks it is a whole number of blocks between 4 KiB and 16 TiB less 4 KiB.
pub fn parse_size(input: &str) -> Result<u64, StoreError> {
    let bad = |reason: &'static str| StoreError::InvalidSize {
        input: input.to_owned(),
        reason,
    };
    let s = input.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad(
            "must start with a whole number, e.g. 10G, 512M, 1T or 4096",
        ));
    }
    let number: u64 = s[..digits]
        .parse()
        .map_err(|_| bad("number is too large"))?;
    let shift = match s[digits..].to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(bad(
                "has an unknown unit; use K, M, G or T (powers of 1024) or plain bytes",
            ));
        }
    };
    let bytes = number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| bad("is larger than the largest volume, 16 TiB less 4 KiB"))?;
    check_size(bytes).map_err(bad)?;
    Ok(bytes)
}

/// Checks that a size in bytes is usable for a volume.
pub(crate) fn check_size(bytes: u64) -> Result<(), &'static str> {
    if bytes == 0 {
        Err("must be larger than 0")
    } else if bytes > MAX_VOLUME_SIZE {
        Err("is larger than the largest volume, 16 TiB less 4 KiB")
    } else if !bytes.is_multiple_of(BLOCK_SIZE) {
        Err("must be a multiple of 4096 bytes")
    } else {
        Ok(())
    }
}

/// Seconds and nanoseconds since the Unix epoch, for creation times.
pub(crate) fn now_unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        assert_eq!(
            parse_size(&MAX_VOLUME_SIZE.to_string()).unwrap(),
            (16 << 40) - 4096
        );
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        for bad in [
            "0",
            "-1",
            "",
            "G",
            "17T",
            "16T",
            "1000",
            "1.5G",
            "10X",
            "99999999999999999999999",
        ] {
            let err = parse_size(bad).unwrap_err();
            assert!(
                matches!(err, StoreError::InvalidSize { .. }),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains("size"), "{err}");
        }
    }

    #[test]
    fn names_validate() {
        for good in ["a", "db-1", "vm1.data", "0_x", &"a".repeat(63)] {
            validate_name("volume", good).unwrap();
        }
        for bad in [
            "",
            "A",
            "-a",
            ".a",
            "a/b",
            "a b",
            "é",
            &"a".repeat(64),
            "../x",
        ] {
            let err = validate_name("volume", bad).unwrap_err();
            assert!(err.to_string().contains("volume name"), "{err}");
        }
    }
}
