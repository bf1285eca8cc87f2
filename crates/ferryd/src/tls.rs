//! The API's TLS material in `DATA/tls/`: a site CA made at first start and a
//! server certificate issued by it.
//!
//! ```text
//! DATA/tls/ca.pem       the site CA certificate: what clients trust (`ferry --ca`)
//! DATA/tls/ca.key       its private key, mode 0600
//! DATA/tls/server.pem   the API's certificate followed by the CA certificate
//! DATA/tls/server.key   its private key, mode 0600
//! DATA/tls/client.pem   the site's client certificate for talking to partners,
//!                       followed by the CA certificate
//! DATA/tls/client.key   its private key, mode 0600
//! ```
//!
//! Invariants: the CA is made once and then only read, so a client that
//! trusts `ca.pem` keeps trusting the site across restarts, new names and
//! renewals. The server certificate is reused while it chains to the CA,
//! matches its key, names every wanted name (localhost, 127.0.0.1, ::1, the
//! hostname, `--tls-name`s) and stays valid for [`RENEW_BEFORE_DAYS`] more
//! days; otherwise it is issued anew from the CA, and the new one must pass
//! the same check before it is used. The client certificate follows the same
//! rule (reused while it chains to the CA and stays valid), with a client
//! check instead of names. Keys are written before the
//! certificates that name them, each file atomically.
//!
//! Must not: replace a CA whose certificate exists (clients trust it), or
//! serve anything; the accept loop lives in `serve.rs`.

use anyhow::{Context, Result, anyhow, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The CA's subject. Certificates issued later name it as their issuer, so it
/// is part of the on-disk format: changing it orphans existing server
/// certificates (they are then issued anew, which the self-check confirms).
const CA_COMMON_NAME: &str = "ferry site CA";
const ORGANIZATION: &str = "ferry";
const CA_VALID_DAYS: i64 = 20 * 365;
const SERVER_VALID_DAYS: i64 = 10 * 365;
/// A server certificate that expires within this many days is issued anew at start.
pub const RENEW_BEFORE_DAYS: u64 = 30;

/// The TLS identity the API serves.
pub struct Identity {
    pub ca_path: PathBuf,
    pub ca_fingerprint: String,
    pub cert_path: PathBuf,
    pub cert_fingerprint: String,
    /// The names the certificate is valid for.
    pub names: Vec<String>,
    pub config: Arc<rustls::ServerConfig>,
    /// Why the server certificate was issued at this start; `None` when reused.
    pub issued: Option<String>,
    pub ca_created: bool,
}

/// The ring provider: the only one in the tree.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The names every API certificate carries, then `extra` (deduplicated,
/// order kept).
pub fn wanted_names(extra: &[String]) -> Result<Vec<String>> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    match hostname() {
        Some(h) => names.push(h),
        None => {
            tracing::warn!("the machine has no usable hostname; not putting one in the certificate")
        }
    }
    for n in extra {
        let n = n.trim();
        check_name(n)?;
        names.push(n.to_owned());
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.to_ascii_lowercase()));
    Ok(names)
}

/// A `--tls-name` must be an IP address or a DNS name.
fn check_name(n: &str) -> Result<()> {
    if n.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if ServerName::try_from(n).is_err() || n.contains('*') {
        bail!("--tls-name {n:?} is neither an IP address nor a DNS name");
    }
    Ok(())
}

/// The machine's hostname, when it is one a client could ask for.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..end]).ok()?.trim().to_owned();
    // A name a client could not ask for (empty, "(none)", underscores...) is left out.
    (name != "localhost"
        && ServerName::try_from(name.as_str()).is_ok()
        && name.parse::<IpAddr>().is_err())
    .then_some(name)
}

/// SHA-256 of a certificate's DER, as colon-separated upper-case hex (the
/// form `openssl x509 -fingerprint -sha256` prints).
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Loads (or at first start makes) the CA and the server certificate in
/// `dir`, issuing the server certificate anew when it does not pass the check.
pub fn load_or_create(dir: &Path, names: &[String]) -> Result<Identity> {
    create_private_dir(dir)?;
    let ca_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key");
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server.key");
    let provider = provider();

    let ca_created = !ca_path.exists();
    if ca_created {
        create_ca(&ca_path, &ca_key_path)?;
    }
    let ca_der = CertificateDer::from_pem_file(&ca_path)
        .with_context(|| format!("reading the site CA certificate {}", ca_path.display()))?;
    let verifier = verifier(&ca_der, &provider)?;

    let mut issued = None;
    let mut loaded = load_server(&cert_path, &key_path, &provider)
        .and_then(|(chain, config)| check(&verifier, &chain, names).map(|()| (chain, config)));
    if let Err(why) = &loaded {
        let why = format!("{why:#}");
        let ca_key = std::fs::read_to_string(&ca_key_path).with_context(|| {
            format!(
                "reading the site CA key {} (the CA certificate exists; restore the key, or move both away to make a new site CA that clients must trust anew)",
                ca_key_path.display()
            )
        })?;
        let ca_key = KeyPair::from_pem(&ca_key)
            .with_context(|| format!("parsing the site CA key {}", ca_key_path.display()))?;
        issue_server(&ca_key, &ca_path, &cert_path, &key_path, names)?;
        loaded = load_server(&cert_path, &key_path, &provider)
            .and_then(|(chain, config)| check(&verifier, &chain, names).map(|()| (chain, config)));
        issued = Some(why);
    }
    let (chain, config) =
        loaded.context("checking the newly issued server certificate against the site CA")?;
    Ok(Identity {
        ca_fingerprint: fingerprint(&ca_der),
        ca_path,
        cert_fingerprint: fingerprint(&chain[0]),
        cert_path,
        names: names.to_vec(),
        config: Arc::new(config),
        issued,
        ca_created,
    })
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, ORGANIZATION);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // a day of slack for a client whose clock is behind
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
}

fn create_ca(ca_path: &Path, ca_key_path: &Path) -> Result<()> {
    let key = KeyPair::generate().context("generating the site CA key")?;
    let mut params = ca_params();
    validity(&mut params, CA_VALID_DAYS);
    let cert = params
        .self_signed(&key)
        .context("making the site CA certificate")?;
    write_file(ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(ca_path, cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

fn issue_server(
    ca_key: &KeyPair,
    ca_path: &Path,
    cert_path: &Path,
    key_path: &Path,
    names: &[String],
) -> Result<()> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().map_or("ferryd", String::as_str),
    );
    dn.push(DnType::OrganizationName, ORGANIZATION);
    params.distinguished_name = dn;
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|e| anyhow!("the name {n:?} cannot go into a certificate: {e}")),
        })
        .collect::<Result<_>>()?;
    let ca_pem = std::fs::read_to_string(ca_path)
        .with_context(|| format!("reading {}", ca_path.display()))?;
    issue_leaf(
        params,
        ExtendedKeyUsagePurpose::ServerAuth,
        "server",
        ca_key,
        &ca_pem,
        cert_path,
        key_path,
    )
}

/// Signs `params` (a leaf for `usage`) with a new key and the site CA, then
/// writes the key (0600) before the certificate followed by the CA's.
fn issue_leaf(
    mut params: CertificateParams,
    usage: ExtendedKeyUsagePurpose,
    what: &str,
    ca_key: &KeyPair,
    ca_pem: &str,
    cert_path: &Path,
    key_path: &Path,
) -> Result<()> {
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, SERVER_VALID_DAYS);
    let key = KeyPair::generate().with_context(|| format!("generating the {what} key"))?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let cert = params
        .signed_by(&key, &issuer)
        .with_context(|| format!("issuing the {what} certificate"))?;
    write_file(key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(
        cert_path,
        format!("{}{ca_pem}", cert.pem()).as_bytes(),
        0o644,
    )?;
    Ok(())
}

fn load_server(
    cert_path: &Path,
    key_path: &Path,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<(Vec<CertificateDer<'static>>, rustls::ServerConfig)> {
    if !cert_path.exists() {
        bail!("there is no server certificate yet");
    }
    let chain = CertificateDer::pem_file_iter(cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading {}", cert_path.display()))?;
    if chain.is_empty() {
        bail!("{} holds no certificate", cert_path.display());
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .with_context(|| format!("reading {}", key_path.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key)
        .with_context(|| {
            format!(
                "pairing {} with {}",
                cert_path.display(),
                key_path.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((chain, config))
}

fn verifier(
    ca: &CertificateDer<'static>,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca.clone())
        .context("using the site CA certificate as a trust anchor")?;
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("building the certificate check")
}

/// What a client trusting only the site CA would check, for every name, as
/// of [`RENEW_BEFORE_DAYS`] from now.
fn check(
    verifier: &WebPkiServerVerifier,
    chain: &[CertificateDer<'static>],
    names: &[String],
) -> Result<()> {
    let later = UnixTime::since_unix_epoch(Duration::from_secs(
        UnixTime::now().as_secs() + RENEW_BEFORE_DAYS * 86_400,
    ));
    for name in names {
        let server_name = ServerName::try_from(name.as_str())
            .map_err(|e| anyhow!("{name:?} is not a server name: {e}"))?
            .to_owned();
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &server_name, &[], later)
            .map_err(|e| {
                anyhow!(
                    "the server certificate does not pass for {name} within {RENEW_BEFORE_DAYS} days: {e}"
                )
            })?;
    }
    Ok(())
}

/// The site's TLS material for its partner listener and its calls to
/// partners: the CA, the server certificate (the API's) and a client
/// certificate issued by the CA.
pub struct PartnerMaterial {
    pub ca_pem: String,
    pub ca_fingerprint: String,
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key: PrivateKeyDer<'static>,
    pub client_chain: Vec<CertificateDer<'static>>,
    pub client_key: PrivateKeyDer<'static>,
    /// Why the client certificate was issued at this start; `None` when reused.
    pub issued: Option<String>,
}

/// Loads the partner material from `dir` after [`load_or_create`] made the
/// CA and server certificate, issuing the client certificate when it is
/// missing or does not pass the check.
pub fn partner_material(dir: &Path) -> Result<PartnerMaterial> {
    let ca_path = dir.join("ca.pem");
    let ca_pem = std::fs::read_to_string(&ca_path)
        .with_context(|| format!("reading the site CA certificate {}", ca_path.display()))?;
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .with_context(|| format!("parsing {}", ca_path.display()))?;
    let provider = provider();
    let (server_chain, server_key) = read_pair(&dir.join("server.pem"), &dir.join("server.key"))?;
    let cert_path = dir.join("client.pem");
    let key_path = dir.join("client.key");
    let check_client = |chain: &[CertificateDer<'static>]| -> Result<()> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der.clone())?;
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()?;
        let later = UnixTime::since_unix_epoch(Duration::from_secs(
            UnixTime::now().as_secs() + RENEW_BEFORE_DAYS * 86_400,
        ));
        v.verify_client_cert(&chain[0], &chain[1..], later)
            .map_err(|e| {
                anyhow!("the client certificate does not pass within {RENEW_BEFORE_DAYS} days: {e}")
            })?;
        Ok(())
    };
    let mut issued = None;
    let mut loaded = read_pair(&cert_path, &key_path)
        .and_then(|(chain, key)| check_client(&chain).map(|()| (chain, key)));
    if let Err(why) = &loaded {
        issued = Some(format!("{why:#}"));
        let ca_key_path = dir.join("ca.key");
        let ca_key = std::fs::read_to_string(&ca_key_path)
            .with_context(|| format!("reading the site CA key {}", ca_key_path.display()))?;
        let ca_key = KeyPair::from_pem(&ca_key)
            .with_context(|| format!("parsing the site CA key {}", ca_key_path.display()))?;
        issue_client(&ca_key, &ca_pem, &cert_path, &key_path)?;
        loaded = read_pair(&cert_path, &key_path)
            .and_then(|(chain, key)| check_client(&chain).map(|()| (chain, key)));
    }
    let (client_chain, client_key) =
        loaded.context("checking the newly issued client certificate against the site CA")?;
    Ok(PartnerMaterial {
        ca_fingerprint: fingerprint(&ca_der),
        ca_pem,
        server_chain,
        server_key,
        client_chain,
        client_key,
        issued,
    })
}

fn read_pair(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    if !cert_path.exists() {
        bail!("there is no {} yet", cert_path.display());
    }
    let chain = CertificateDer::pem_file_iter(cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading {}", cert_path.display()))?;
    if chain.is_empty() {
        bail!("{} holds no certificate", cert_path.display());
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .with_context(|| format!("reading {}", key_path.display()))?;
    Ok((chain, key))
}

fn issue_client(ca_key: &KeyPair, ca_pem: &str, cert_path: &Path, key_path: &Path) -> Result<()> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "ferry site client");
    dn.push(DnType::OrganizationName, ORGANIZATION);
    params.distinguished_name = dn;
    issue_leaf(
        params,
        ExtendedKeyUsagePurpose::ClientAuth,
        "client",
        ca_key,
        ca_pem,
        cert_path,
        key_path,
    )
}

/// Writes a file atomically with the given mode (see
/// [`ferry_api::auth::write_atomic`]).
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    ferry_api::auth::write_atomic(path, bytes, mode)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(extra: &[&str]) -> Vec<String> {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        wanted_names(&extra).unwrap()
    }

    #[test]
    fn first_start_creates_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let a = load_or_create(&tls, &names(&[])).unwrap();
        assert!(a.ca_created && a.issued.is_some());
        let mode = |p: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(tls.join(p)).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode("ca.key"), 0o600);
        assert_eq!(mode("server.key"), 0o600);
        let b = load_or_create(&tls, &names(&[])).unwrap();
        assert!(!b.ca_created && b.issued.is_none(), "{:?}", b.issued);
        assert_eq!(a.cert_fingerprint, b.cert_fingerprint);
        assert_eq!(a.ca_fingerprint, b.ca_fingerprint);
    }

    #[test]
    fn a_new_name_reissues_from_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let a = load_or_create(&tls, &names(&[])).unwrap();
        let b = load_or_create(&tls, &names(&["storage.example.org", "192.0.2.7"])).unwrap();
        let why = b.issued.expect("a new name makes a new certificate");
        assert!(why.contains("storage.example.org"), "{why}");
        assert_ne!(a.cert_fingerprint, b.cert_fingerprint);
        assert_eq!(a.ca_fingerprint, b.ca_fingerprint);
    }

    #[test]
    fn a_damaged_server_certificate_is_replaced_but_a_lost_ca_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let a = load_or_create(&tls, &names(&[])).unwrap();
        std::fs::write(tls.join("server.key"), "garbage").unwrap();
        let b = load_or_create(&tls, &names(&[])).unwrap();
        assert!(b.issued.is_some());
        assert_eq!(a.ca_fingerprint, b.ca_fingerprint);
        std::fs::remove_file(tls.join("ca.key")).unwrap();
        std::fs::remove_file(tls.join("server.pem")).unwrap();
        let err = load_or_create(&tls, &names(&[])).err().expect("no CA key");
        assert!(format!("{err:#}").contains("ca.key"), "{err:#}");
    }

    #[test]
    fn the_client_certificate_is_made_once_and_chains_to_the_ca() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let id = load_or_create(&tls, &names(&[])).unwrap();
        let a = partner_material(&tls).unwrap();
        assert!(a.issued.is_some());
        assert_eq!(a.ca_fingerprint, id.ca_fingerprint);
        let mode = std::fs::metadata(tls.join("client.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = partner_material(&tls).unwrap();
        assert!(b.issued.is_none(), "{:?}", b.issued);
        assert_eq!(a.client_chain[0], b.client_chain[0]);
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(wanted_names(&["has space".into()]).is_err());
        assert!(wanted_names(&["*.wild".into()]).is_err());
        assert!(wanted_names(&["ok.example".into(), "10.0.0.1".into()]).is_ok());
    }

    #[test]
    fn fingerprint_is_colon_hex() {
        let f = fingerprint(b"abc");
        assert_eq!(
            f,
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }
}
