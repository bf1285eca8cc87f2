//! End to end over HTTPS: the real `ferryd` with its own site CA, the real
//! `ferry` trusting it (or not), raw TCP and TLS clients that misbehave.
//!
//! Build the daemon first: `cargo build --workspace --bins`.

mod common;

use common::{Daemon, Out, http};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// The SHA-256 fingerprint in a startup line such as
/// `ferryd: site CA PATH SHA-256 AB:CD:... (...)`.
fn fingerprint_in(line: &str) -> String {
    let f = line
        .split("SHA-256 ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no fingerprint in {line:?}"))
        .to_owned();
    assert_eq!(f.len(), 32 * 3 - 1, "a SHA-256 fingerprint: {f}");
    f
}

/// A TLS client trusting only `ca`, talking HTTP/1.1 by hand.
fn tls_stream(addr: &str, ca: &Path) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("reading the CA") {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("adding the CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = addr.rsplit_once(':').unwrap().0;
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr).expect("connecting to ferryd");
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// Reads an HTTP/1.1 answer sent with `Connection: close` to its end.
fn read_answer(s: &mut impl Read) -> (u16, String) {
    let mut raw = Vec::new();
    // A peer that closes without close_notify ends the answer too.
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    (status, text)
}

#[test]
fn the_cli_trusts_the_site_ca_and_nothing_else() {
    let dir = tempdir();
    let mut d = Daemon::start_with(&dir.path().join("data"), &["--tls"]);
    assert!(d.url.starts_with("https://127.0.0.1:"), "{}", d.url);
    let ca_line = d
        .said("ferryd: site CA ")
        .expect("the CA is announced")
        .to_owned();
    assert!(ca_line.contains(path(&d.ca())), "{ca_line}");
    fingerprint_in(&ca_line);
    let cert_line = d
        .said("ferryd: TLS certificate ")
        .expect("the certificate is announced")
        .to_owned();
    fingerprint_in(&cert_line);
    for name in ["localhost", "127.0.0.1", "::1"] {
        assert!(cert_line.contains(name), "{name} in {cert_line}");
    }
    for key in ["ca.key", "server.key"] {
        let mode = std::fs::metadata(d.data.join("tls").join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }

    let ca = d.ca();
    let ca = path(&ca);
    d.ferry(&["--ca", ca, "volume", "create", "over-tls", "--size", "1G"])
        .ok();
    let list = d.ferry(&["--ca", ca, "-o", "json", "volume", "list"]).ok();
    assert_eq!(common::names(&list.json()), ["over-tls"]);

    // Without the CA: the system's roots do not know this site.
    d.ferry(&["volume", "list"])
        .code(6)
        .complains("certificate")
        .complains("--ca");
    // Another site's CA is no better.
    let other = Daemon::start_with(&dir.path().join("other"), &["--tls"]);
    d.ferry(&["--ca", path(&other.ca()), "volume", "list"])
        .code(6)
        .complains("not trusted");
    // A file that is no certificate is said to be one.
    d.ferry(&["--ca", path(&d.data.join("admin.token")), "volume", "list"])
        .code(1)
        .complains("admin.token");

    // FERRY_CA does what --ca does.
    let mut c = d.command();
    c.env("FERRY_CA", ca)
        .args(["--server", &d.url, "--token", &d.admin, "volume", "list"]);
    Out::run(c, &["volume", "list"]).ok().says("over-tls");
    // A token file in a data directory brings that site's CA along.
    d.ferry_env(&["volume", "list"]).ok().says("over-tls");

    // A context remembers the CA.
    let config = dir.path().join("ferry.toml");
    let token = d.data.join("admin.token");
    let context = |args: &[&str]| {
        let mut c = d.command();
        c.env("FERRY_CONFIG", &config).args(args);
        Out::run(c, args)
    };
    context(&[
        "context",
        "add",
        "site",
        "--server",
        &d.url,
        "--token-file",
        path(&token),
        "--ca",
        ca,
    ])
    .ok();
    context(&["context", "use", "site"]).ok();
    context(&["volume", "list"]).ok().says("over-tls");
    let listed = context(&["-o", "json", "context", "list"]).ok().json();
    assert_eq!(
        listed[0]["ca"].as_str(),
        Some(path(&std::fs::canonicalize(d.ca()).unwrap())),
        "{listed}"
    );

    // http:// to the HTTPS port: the answer says what to use instead.
    let http_url = d.url.replacen("https://", "http://", 1);
    let mut c = d.command();
    c.args(["--server", &http_url, "--token", &d.admin, "volume", "list"]);
    Out::run(c, &["volume", "list"])
        .code(1)
        .complains("serves HTTPS")
        .complains(&d.url);

    let (status, said) = d.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        said.iter().any(|l| l == "ferryd: stopped cleanly"),
        "{said:?}"
    );
}

#[test]
fn https_to_a_plain_port_says_so() {
    let dir = tempdir();
    let d = Daemon::start(&dir.path().join("data"));
    assert!(
        d.url.starts_with("http://"),
        "loopback stays plain HTTP: {}",
        d.url
    );
    let https_url = d.url.replacen("http://", "https://", 1);
    let mut c = d.command();
    c.args([
        "--server", &https_url, "--token", &d.admin, "volume", "list",
    ]);
    Out::run(c, &["volume", "list"])
        .code(6)
        .complains("does not speak TLS")
        .complains("http://");
}

#[test]
fn bad_clients_do_not_hurt_the_https_server() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let mut d = Daemon::start_with(&data, &["--tls"]);
    let ca = d.ca();

    // A client that connects and says nothing holds only its own connection.
    let silent = TcpStream::connect(&d.addr).unwrap();
    // Plain HTTP to the HTTPS port: a plain 400 naming the https:// URL.
    let reply = d.http("GET", "/v1/volumes", Some(&d.admin), b"");
    assert_eq!(reply.status, 400, "{reply:?}");
    let body = reply.json();
    assert_eq!(body["error"]["code"], "https_required", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains(&d.url),
        "{body}"
    );
    // A TLS record header followed by junk: a failed handshake.
    let mut junk = TcpStream::connect(&d.addr).unwrap();
    junk.write_all(b"\x16\x03\x01\x00\x08not a hello at all")
        .unwrap();
    let mut rest = Vec::new();
    let _ = junk.read_to_end(&mut rest);
    // A connection closed at once.
    drop(TcpStream::connect(&d.addr).unwrap());
    // A TLS client that does not trust the site gives up mid-handshake.
    let other = Daemon::start_with(&dir.path().join("other"), &["--tls"]);
    let mut distrustful = tls_stream(&d.addr, &other.ca());
    let err = distrustful
        .write_all(b"GET /v1/volumes HTTP/1.1\r\n\r\n")
        .expect_err("the other site's CA does not vouch for this one");
    assert!(err.to_string().contains("certificate"), "{err}");
    drop(distrustful);

    // The server still answers over HTTPS.
    d.ferry(&[
        "--ca",
        path(&ca),
        "volume",
        "create",
        "still-up",
        "--size",
        "1M",
    ])
    .ok();
    let log = d.log_text();
    assert!(log.contains("TLS handshake failed"), "{log}");
    assert!(log.contains("plain HTTP"), "{log}");

    // An in-flight HTTPS request finishes after SIGTERM. `Expect:
    // 100-continue` makes the server say when the handler reads the body:
    // from then on the request is under way; signal, wait until ferryd says
    // it is stopping, then send the body.
    let mut s = tls_stream(&d.addr, &ca);
    let body = br#"{"name":"late","size":"1M"}"#;
    write!(
        s,
        "POST /v1/volumes HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        d.addr,
        d.admin,
        body.len()
    )
    .unwrap();
    s.flush().unwrap();
    let mut interim = Vec::new();
    let mut byte = [0u8; 1];
    while !interim.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("reading the interim answer");
        interim.push(byte[0]);
    }
    let interim = String::from_utf8_lossy(&interim);
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    d.sigterm();
    let said = d.wait_line("ferryd: stopping");
    s.write_all(body).unwrap();
    s.flush().unwrap();
    let (status, answer) = read_answer(&mut s);
    assert_eq!(status, 201, "{answer}");
    drop(silent);
    let (status, said) = d.wait_exit(said);
    assert!(status.success(), "{status:?}");
    assert!(
        said.iter().any(|l| l == "ferryd: stopped cleanly"),
        "{said:?}"
    );
    let d = Daemon::start_with(&data, &["--tls"]);
    d.ferry(&["--ca", path(&ca), "volume", "show", "late"]).ok();
}

#[test]
fn restart_reuses_the_certificate_and_new_names_keep_the_ca() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let mut d = Daemon::start_with(&data, &["--tls"]);
    assert!(
        d.said("ferryd: created the site CA").is_some(),
        "{:?}",
        d.startup
    );
    let ca = fingerprint_in(d.said("ferryd: site CA ").unwrap());
    let cert = fingerprint_in(d.said("ferryd: TLS certificate ").unwrap());
    assert!(d.terminate().0.success());

    let mut d = Daemon::start_with(&data, &["--tls"]);
    assert!(
        d.said("ferryd: created the site CA").is_none(),
        "{:?}",
        d.startup
    );
    assert_eq!(fingerprint_in(d.said("ferryd: site CA ").unwrap()), ca);
    assert_eq!(
        fingerprint_in(d.said("ferryd: TLS certificate ").unwrap()),
        cert,
        "a restart serves the same certificate"
    );
    assert!(d.terminate().0.success());

    // A new name (here from the config file) needs a new server certificate
    // from the same CA, so clients trusting the CA notice nothing.
    let config = dir.path().join("ferryd.toml");
    std::fs::write(
        &config,
        "tls = true\ntls_names = [\"storage.example.org\", \"192.0.2.10\"]\n",
    )
    .unwrap();
    let d = Daemon::start_with(&data, &["--config", path(&config)]);
    assert!(
        d.url.starts_with("https://"),
        "tls = true in the config: {}",
        d.url
    );
    let line = d.said("ferryd: TLS certificate ").unwrap();
    assert!(
        line.contains("storage.example.org") && line.contains("192.0.2.10"),
        "{line}"
    );
    assert_eq!(fingerprint_in(d.said("ferryd: site CA ").unwrap()), ca);
    assert_ne!(fingerprint_in(line), cert);
    d.ferry(&["--ca", path(&d.ca()), "volume", "list"]).ok();
}

#[test]
fn a_non_loopback_address_always_serves_https() {
    let dir = tempdir();
    let d = Daemon::start_with(&dir.path().join("data"), &["--api", "0.0.0.0:0"]);
    assert!(d.url.starts_with("https://0.0.0.0:"), "{}", d.url);
    let port = d.addr.rsplit_once(':').unwrap().1;
    let local = format!("127.0.0.1:{port}");
    // Plain HTTP gets nothing but the pointer to HTTPS.
    let reply = http(&local, "GET", "/v1/volumes", Some(&d.admin), b"");
    assert_eq!(reply.status, 400, "{reply:?}");
    let mut c = d.command();
    let server = format!("https://{local}");
    c.args([
        "--server",
        &server,
        "--token",
        &d.admin,
        "--ca",
        path(&d.ca()),
        "volume",
        "list",
    ]);
    Out::run(c, &["volume", "list"]).ok();
}
