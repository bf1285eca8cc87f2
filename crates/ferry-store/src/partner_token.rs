//! The pairing token's text form: what `ferry partner token` prints on one
//! site and `ferry partner pair` takes on the other.
//!
//! ```text
//! ferrypair1-<hex of the bytes below, lowercase>
//!
//! offset  size  field
//! 0       1     version (1)
//! 1       32    SHA-256 of the issuing site's CA certificate (DER)
//! 33      32    secret (random; the issuing site keeps only its hash)
//! 65      1     n: length of the address
//! 66      n     the issuing site's partner address, `HOST:PORT`, ASCII
//! 66+n    4     CRC-32 (IEEE) of bytes 0..66+n, little-endian
//! ```
//!
//! Decoding takes any string (surrounding whitespace is ignored) and either
//! returns a [`PartnerToken`] whose fields passed every check or says what is
//! wrong; it never panics. No I/O here.

use std::fmt;

/// What the text starts with.
pub const PREFIX: &str = "ferrypair1-";
/// The only version this code writes and reads.
pub const VERSION: u8 = 1;
const FINGERPRINT_AT: usize = 1;
const FINGERPRINT_LEN: usize = 32;
const SECRET_AT: usize = FINGERPRINT_AT + FINGERPRINT_LEN;
/// Bytes of the secret.
pub const SECRET_LEN: usize = 32;
const ADDRESS_LEN_AT: usize = SECRET_AT + SECRET_LEN;
const ADDRESS_AT: usize = ADDRESS_LEN_AT + 1;
const CRC_LEN: usize = 4;
/// The longest address a token carries.
pub const MAX_ADDRESS: usize = 255;
const MAX_BYTES: usize = ADDRESS_AT + MAX_ADDRESS + CRC_LEN;

/// A decoded (or to be encoded) pairing token.
#[derive(Clone, PartialEq, Eq)]
pub struct PartnerToken {
    /// SHA-256 of the issuing site's CA certificate.
    pub ca_fingerprint: [u8; FINGERPRINT_LEN],
    pub secret: [u8; SECRET_LEN],
    /// The issuing site's partner listener, `HOST:PORT`.
    pub address: String,
}

// The secret stays out of logs and panics.
impl fmt::Debug for PartnerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartnerToken")
            .field("ca_fingerprint", &fingerprint_text(&self.ca_fingerprint))
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// Why a token string is not a token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("a pairing token starts with {PREFIX:?}")]
    Prefix,
    #[error("a pairing token is hexadecimal after {PREFIX:?}")]
    NotHex,
    #[error("the pairing token is {0} bytes long, which no token is (it was cut or padded)")]
    Length(usize),
    #[error("the pairing token is version {0}; this ferry reads version {VERSION}")]
    Version(u8),
    #[error("the pairing token's checksum does not match (it was mistyped or cut)")]
    Checksum,
    #[error("the pairing token's address is not HOST:PORT")]
    Address,
}

/// Colon-separated upper-case hex, the form `openssl x509 -fingerprint` prints.
pub fn fingerprint_text(fp: &[u8]) -> String {
    fp.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Whether `a` is a plausible `HOST:PORT`: printable ASCII without spaces or
/// slashes, a non-empty host and a port number.
pub fn address_ok(a: &str) -> bool {
    let Some((host, port)) = a.rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && a.len() <= MAX_ADDRESS
        && port.parse::<u16>().is_ok_and(|p| p != 0)
        && a.bytes()
            .all(|c| c.is_ascii_graphic() && !matches!(c, b'/' | b'@' | b'?' | b'#'))
}

/// Checks an address a site is told to reach a partner at: [`address_ok`]
/// and, for an IPv6 address, brackets around it.
pub fn check_address(s: &str) -> Result<(), String> {
    let bracketed = |host: &str| host.starts_with('[') && host.ends_with(']');
    match s.rsplit_once(':') {
        Some((host, _)) if address_ok(s) && (!host.contains(':') || bracketed(host)) => Ok(()),
        _ => Err(format!(
            "{s:?} is not HOST:PORT (a host name or IP address, an IPv6 address in brackets, and a port from 1 to 65535)"
        )),
    }
}

impl PartnerToken {
    /// The text form. The address must pass [`address_ok`].
    pub fn encode(&self) -> String {
        debug_assert!(address_ok(&self.address));
        let mut b = Vec::with_capacity(MAX_BYTES);
        b.push(VERSION);
        b.extend_from_slice(&self.ca_fingerprint);
        b.extend_from_slice(&self.secret);
        let addr = &self.address.as_bytes()[..self.address.len().min(MAX_ADDRESS)];
        b.push(addr.len() as u8);
        b.extend_from_slice(addr);
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        let mut s = String::with_capacity(PREFIX.len() + 2 * b.len());
        s.push_str(PREFIX);
        for byte in b {
            s.push_str(&format!("{byte:02x}"));
        }
        s
    }

    /// Parses and checks a token's text form.
    pub fn decode(text: &str) -> Result<PartnerToken, TokenError> {
        let hex = text.trim().strip_prefix(PREFIX).ok_or(TokenError::Prefix)?;
        if hex.len() % 2 != 0 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(TokenError::NotHex);
        }
        if hex.len() > 2 * MAX_BYTES {
            return Err(TokenError::Length(hex.len() / 2));
        }
        let b: Vec<u8> = hex
            .as_bytes()
            .chunks(2)
            .map(|p| (nibble(p[0]) << 4) | nibble(p[1]))
            .collect();
        if b.len() < ADDRESS_AT + CRC_LEN {
            return Err(TokenError::Length(b.len()));
        }
        if b[0] != VERSION {
            return Err(TokenError::Version(b[0]));
        }
        let n = usize::from(b[ADDRESS_LEN_AT]);
        if b.len() != ADDRESS_AT + n + CRC_LEN {
            return Err(TokenError::Length(b.len()));
        }
        let body = &b[..ADDRESS_AT + n];
        let mut crc = [0u8; CRC_LEN];
        crc.copy_from_slice(&b[ADDRESS_AT + n..]);
        if crc32fast::hash(body) != u32::from_le_bytes(crc) {
            return Err(TokenError::Checksum);
        }
        let address =
            std::str::from_utf8(&b[ADDRESS_AT..ADDRESS_AT + n]).map_err(|_| TokenError::Address)?;
        if !address_ok(address) {
            return Err(TokenError::Address);
        }
        let mut ca_fingerprint = [0u8; FINGERPRINT_LEN];
        ca_fingerprint.copy_from_slice(&b[FINGERPRINT_AT..SECRET_AT]);
        let mut secret = [0u8; SECRET_LEN];
        secret.copy_from_slice(&b[SECRET_AT..ADDRESS_LEN_AT]);
        Ok(PartnerToken {
            ca_fingerprint,
            secret,
            address: address.to_owned(),
        })
    }
}

/// One hex digit's value; the caller checked it is one.
fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> PartnerToken {
        PartnerToken {
            ca_fingerprint: [0xAB; 32],
            secret: [7; 32],
            address: "127.0.0.1:7411".into(),
        }
    }

    #[test]
    fn round_trip_and_golden_bytes() {
        let t = token();
        let s = t.encode();
        assert_eq!(PartnerToken::decode(&format!("  {s}\n")).unwrap(), t);
        let golden = format!(
            "{PREFIX}01{}{}0e{}",
            "ab".repeat(32),
            "07".repeat(32),
            "3132372e302e302e313a37343131"
        );
        assert!(s.starts_with(&golden), "{s}");
        assert_eq!(s.len(), golden.len() + 8);
    }

    #[test]
    fn damage_is_named() {
        let s = token().encode();
        assert_eq!(PartnerToken::decode("x"), Err(TokenError::Prefix));
        assert_eq!(
            PartnerToken::decode(&format!("{PREFIX}zz")),
            Err(TokenError::NotHex)
        );
        assert!(matches!(
            PartnerToken::decode(&s[..s.len() - 2]),
            Err(TokenError::Length(_))
        ));
        let mut flipped = s.clone().into_bytes();
        let i = PREFIX.len() + 10;
        flipped[i] = if flipped[i] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            PartnerToken::decode(std::str::from_utf8(&flipped).unwrap()),
            Err(TokenError::Checksum)
        );
        let v2 = format!("{PREFIX}02{}", &s[PREFIX.len() + 2..]);
        assert_eq!(PartnerToken::decode(&v2), Err(TokenError::Version(2)));
        assert!(!format!("{:?}", token()).contains("0707"));
    }

    #[test]
    fn addresses() {
        assert!(address_ok("127.0.0.1:7411"));
        assert!(address_ok("[::1]:7411"));
        assert!(address_ok("site-a.example:1"));
        assert!(!address_ok("nohost"));
        assert!(!address_ok(":7411"));
        assert!(!address_ok("a:0"));
        assert!(!address_ok("a b:1"));
        assert!(!address_ok("http://a:1"));
    }
}
