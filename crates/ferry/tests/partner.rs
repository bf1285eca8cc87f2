//! Sites and partners end to end: real `ferryd`s on loopback with their own
//! data directories and site CAs, paired with a one-time token, calling each
//! other over mutual TLS; raw rustls clients with a site's client
//! certificate against another site's partner listener.
//!
//! Build the daemon first: `cargo build --workspace --bins`.

mod common;

use common::Daemon;
use ferry_store::partner_token::PartnerToken;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// `GET path` on a partner listener at `addr` trusting only `ca`, with the
/// client certificate in `tls_dir` (`client.pem`, `client.key`). Err when
/// the handshake or the exchange fails; Ok(the whole HTTP answer).
fn mtls_get(addr: &str, ca: &Path, tls_dir: &Path, path: &str) -> Result<String, String> {
    request(addr, ca, Some(tls_dir), "GET", path, "")
}

/// One HTTP/1.1 request over TLS, with a client certificate or none.
fn request(
    addr: &str,
    ca: &Path,
    tls_dir: Option<&Path>,
    method: &str,
    path: &str,
    body: &str,
) -> Result<String, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match tls_dir {
        Some(dir) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(dir.join("client.pem"))
                    .unwrap()
                    .map(|c| c.unwrap())
                    .collect();
            let key = PrivateKeyDer::from_pem_file(dir.join("client.key")).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let host = addr.rsplit_once(':').unwrap().0;
    let name = ServerName::try_from(host.to_owned()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    Ok(answer)
}

fn hello(from: &Daemon, to: &Daemon) -> Result<String, String> {
    mtls_get(
        &to.partner,
        &to.ca(),
        &from.data.join("tls"),
        "/partner/v1/hello",
    )
}

fn names(d: &Daemon) -> Vec<String> {
    d.json(&["partner", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

fn token(d: &Daemon, ttl: &str) -> String {
    let out = d.ferry(&["partner", "token", "--ttl", ttl]).ok();
    let t = out.stdout.trim().to_owned();
    assert!(t.starts_with("ferrypair1-"), "{t:?}");
    t
}

#[test]
fn two_sites_pair_with_a_token_and_call_each_other_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (da, db, dc) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let mut a = Daemon::start(&da);
    let mut b = Daemon::start(&db);
    let c = Daemon::start(&dc);
    assert!(!a.partner.is_empty(), "{:?}", a.startup);
    // a site has a valid name from the start; init renames it before pairing
    let first = a.json(&["site", "show"]);
    assert!(!first["name"].as_str().unwrap().is_empty());
    a.ferry(&["site", "init", "--name", "site-a"]).ok();
    b.ferry(&["site", "init", "--name", "site-b"]).ok();
    c.ferry(&["site", "init", "--name", "site-c"]).ok();
    let site_a = a.json(&["site", "show"]);
    assert_eq!(site_a["name"], "site-a");
    assert_eq!(site_a["partner_address"], a.partner.as_str());
    let a_fp = site_a["ca_fingerprint"].as_str().unwrap().to_owned();
    assert_eq!(a_fp.len(), 32 * 3 - 1);
    a.ferry(&["site", "init", "--name", "Bad Name"])
        .code(1)
        .complains("site");

    // nobody is paired: hello is refused, even the pairing site's
    assert!(hello(&b, &a).is_err());

    // a token names A's address and CA; B pairs with it
    let t = token(&a, "15m");
    let decoded = PartnerToken::decode(&t).unwrap();
    assert_eq!(decoded.address, a.partner);
    a.ferry(&["partner", "pair", &t])
        .code(1)
        .complains("itself");
    let paired = b.json(&["partner", "pair", &t]);
    // the secret is in no log, audit record or file of either site but the
    // token as printed (A keeps only its hash)
    let secret: String = decoded.secret.iter().map(|x| format!("{x:02x}")).collect();
    for d in [&a, &b] {
        assert!(!d.log_text().contains(&secret), "a log holds the secret");
        let audit = std::fs::read_to_string(d.data.join("audit.log")).unwrap();
        assert!(!audit.contains(&secret) && !audit.contains(&t));
    }
    assert_eq!(paired["name"], "site-a");
    assert_eq!(paired["ca_fingerprint"], a_fp.as_str());
    assert_eq!(names(&a), ["site-b"]);
    assert_eq!(names(&b), ["site-a"]);
    let on_a = a.json(&["partner", "show", "site-b"]);
    assert_eq!(on_a["address"], b.partner.as_str());
    a.ferry(&["partner", "list"]).ok().says("site-b");

    // mutual TLS both ways, with each site's own client certificate
    let ab = hello(&b, &a).expect("B's client certificate is accepted by A");
    assert!(ab.starts_with("HTTP/1.1 200"), "{ab}");
    assert!(
        ab.contains(r#""partner":"site-b""#) && ab.contains(r#""site":"site-a""#),
        "{ab}"
    );
    let ba = hello(&a, &b).expect("A's client certificate is accepted by B");
    assert!(ba.contains(r#""partner":"site-a""#), "{ba}");
    // and through the daemons
    let via = b.json(&["partner", "hello", "site-a"]);
    assert_eq!(via["partner"], "site-b");
    assert_eq!(via["site"], "site-a");
    assert_eq!(a.json(&["partner", "hello", "site-b"])["partner"], "site-a");

    // an unpaired site's client certificate is refused at the handshake
    assert!(hello(&c, &a).is_err());

    // the token was used: refused the second time, nothing recorded
    c.ferry(&["partner", "pair", &t])
        .code(5)
        .complains("not known");
    // an expired token (a ttl of 0 is expired once issued)
    let expired = token(&a, "0s");
    c.ferry(&["partner", "pair", &expired])
        .code(5)
        .complains("expired");
    // a wrong secret with the right address and CA
    let mut wrong = PartnerToken::decode(&token(&a, "15m")).unwrap();
    wrong.secret[0] ^= 1;
    c.ferry(&["partner", "pair", &wrong.encode()])
        .code(5)
        .complains("not known");
    // a token naming another CA: C will not talk to A (pinned), nothing is sent
    let mut pinned = PartnerToken::decode(&token(&a, "15m")).unwrap();
    pinned.ca_fingerprint[0] ^= 1;
    c.ferry(&["partner", "pair", &pinned.encode()])
        .code(1)
        .complains("fingerprint");
    // malformed pairing requests straight to A's listener (no client
    // certificate needed there): named, and nothing recorded
    let pair =
        |body: &str| request(&a.partner, &a.ca(), None, "POST", "/partner/v1/pair", body).unwrap();
    let r = pair("{not json");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let c_ca = std::fs::read_to_string(c.ca()).unwrap();
    let body = |secret: &str, ca: &str, address: &str| {
        serde_json::json!({"secret": secret, "name": "site-c", "ca_pem": ca, "address": address})
            .to_string()
    };
    let r = pair(&body("00", &c_ca, &c.partner));
    assert!(r.starts_with("HTTP/1.1 400") && r.contains("secret"), "{r}");
    let r = pair(&body(&"ab".repeat(32), "not a certificate", &c.partner));
    assert!(r.starts_with("HTTP/1.1 400") && r.contains("ca_pem"), "{r}");
    let r = pair(&body(&"ab".repeat(32), &c_ca, "nowhere"));
    assert!(
        r.starts_with("HTTP/1.1 400") && r.contains("address"),
        "{r}"
    );
    let r = pair(&body(&"ab".repeat(32), &c_ca, &c.partner));
    assert!(
        r.starts_with("HTTP/1.1 403") && r.contains("not known"),
        "{r}"
    );
    // without a client certificate, hello is refused
    let r = request(&a.partner, &a.ca(), None, "GET", "/partner/v1/hello", "").unwrap();
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    assert_eq!(names(&a), ["site-b"]);
    // a mistyped token is caught before anything is asked
    c.ferry(&["partner", "pair", "ferrypair1-00"])
        .code(1)
        .complains("bytes long");
    assert_eq!(names(&a), ["site-b"]);
    assert!(names(&c).is_empty());
    // a name already used here
    let t2 = token(&c, "15m");
    a.ferry(&["partner", "pair", &t2, "--name-as", "site-b"])
        .code(4)
        .complains("already exists");
    assert_eq!(names(&a), ["site-b"]);
    assert!(names(&c).is_empty());
    // renaming is refused while partners know the name
    a.ferry(&["site", "init", "--name", "site-z"])
        .code(4)
        .complains("unpair");

    // both survive a restart (on the same partner ports)
    let (pa, pb) = (a.partner.clone(), b.partner.clone());
    assert!(a.terminate().0.success());
    assert!(b.terminate().0.success());
    let a = Daemon::start_with(&da, &["--partner-listen", &pa]);
    let b = Daemon::start_with(&db, &["--partner-listen", &pb]);
    assert_eq!(names(&a), ["site-b"]);
    assert_eq!(names(&b), ["site-a"]);
    assert_eq!(a.json(&["site", "show"])["name"], "site-a");
    assert_eq!(b.json(&["partner", "hello", "site-a"])["partner"], "site-b");
    assert!(hello(&b, &a).unwrap().contains(r#""partner":"site-b""#));

    // A moves (another port) and tells B at its start; B records the new
    // address once it reached A there
    let mut a = a;
    assert!(a.terminate().0.success());
    let a = Daemon::start(&da);
    assert_ne!(a.partner, pa);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while b.json(&["partner", "show", "site-a"])["address"] != a.partner.as_str() {
        assert!(
            std::time::Instant::now() < deadline,
            "B never learned A's new address"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(b.json(&["partner", "hello", "site-a"])["partner"], "site-b");
    let audit = std::fs::read_to_string(b.data.join("audit.log")).unwrap();
    assert!(audit.contains("partner.moved"), "{audit}");
    // by hand: `partner address`, checked by calling the partner there
    b.ferry(&["partner", "address", "site-a", "127.0.0.1:1", "--no-check"])
        .ok();
    assert_eq!(
        b.json(&["partner", "show", "site-a"])["address"],
        "127.0.0.1:1"
    );
    b.ferry(&["partner", "hello", "site-a"])
        .code(1)
        .complains("127.0.0.1:1");
    b.ferry(&["partner", "address", "site-a", "nowhere"])
        .code(1)
        .complains("HOST:PORT");
    b.ferry(&["partner", "address", "site-a", "127.0.0.1:2"])
        .code(1)
        .complains("nothing changed");
    // another site's listener there: its CA is not A's
    b.ferry(&["partner", "address", "site-a", &c.partner])
        .code(1)
        .complains("nothing changed");
    assert_eq!(
        b.json(&["partner", "show", "site-a"])["address"],
        "127.0.0.1:1"
    );
    let moved = b.json(&["partner", "address", "site-a", &a.partner]);
    assert_eq!(moved["address"], a.partner.as_str());
    assert_eq!(b.json(&["partner", "hello", "site-a"])["partner"], "site-b");
    // a partner cannot give a bad address for itself, nor move another
    let b_tls = b.data.join("tls");
    let post = |body: &str| {
        request(
            &a.partner,
            &a.ca(),
            Some(&b_tls),
            "POST",
            "/partner/v1/address",
            body,
        )
        .unwrap()
    };
    let r = post(r#"{"address":"no port"}"#);
    assert!(
        r.starts_with("HTTP/1.1 400") && r.contains("HOST:PORT"),
        "{r}"
    );
    let r = post(r#"{"address":"127.0.0.1:1","name":"site-c"}"#);
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = post(r#"{"address":"127.0.0.1:1"}"#);
    assert!(
        r.starts_with("HTTP/1.1 502") && r.contains("address_unverified"),
        "an address where B is not was recorded: {r}"
    );
    // what stopped A reaching there is A's to know, not the caller's
    assert!(!r.to_lowercase().contains("refused"), "{r}");
    assert_eq!(
        a.json(&["partner", "show", "site-b"])["address"],
        pb.as_str()
    );

    // a pairing whose other site's name is taken here: the other site is
    // told to forget this one again, and a second try with --name-as works
    c.ferry(&["site", "init", "--name", "site-a"]).ok();
    let tc = token(&c, "15m");
    b.ferry(&["partner", "pair", &tc])
        .code(4)
        .complains("site-a was told to forget this site again");
    assert!(names(&c).is_empty());
    assert_eq!(names(&b), ["site-a"]);
    let tc = token(&c, "15m");
    b.ferry(&["partner", "pair", &tc, "--name-as", "site-c"])
        .ok();
    assert_eq!(names(&c), ["site-b"]);

    // unpairing tells the partner, which forgets this site too: from the
    // next handshake neither accepts the other
    a.ferry(&["partner", "unpair", "site-b"])
        .ok()
        .says("site-b forgot this site too");
    assert!(names(&a).is_empty());
    assert_eq!(names(&b), ["site-c"]);
    assert!(hello(&b, &a).is_err());
    assert!(hello(&a, &b).is_err());
    b.ferry(&["partner", "hello", "site-a"])
        .code(3)
        .complains("site-a");
    let audit = std::fs::read_to_string(b.data.join("audit.log")).unwrap();
    assert!(
        audit.contains("partner.unpaired_by_partner") && audit.contains("site:site-a"),
        "{audit}"
    );
    // a partner that cannot be reached is forgotten here all the same, and
    // the admin is told that it still lists this site
    drop(c);
    let out = b.ferry(&["partner", "unpair", "site-c"]).ok();
    assert!(
        out.stdout.contains("unpaired site-c here"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("site-c was not told"), "{}", out.stderr);
    assert!(names(&b).is_empty());
}

/// Makes operator `olga` and scoped user `uma` (granted `t=v`); their tokens.
fn operator_and_user(d: &Daemon) -> (String, String) {
    d.ferry(&["user", "create", "olga", "--role", "operator"])
        .ok();
    d.ferry(&["user", "create", "uma", "--role", "user", "--grant", "t=v"])
        .ok();
    let token_of = |user: &str| {
        d.json(&["token", "create", user])["token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    (token_of("olga"), token_of("uma"))
}

#[test]
fn only_admins_name_the_site_and_pair_operators_look_users_see_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("a"));
    let (olga, uma) = operator_and_user(&d);
    d.ferry_as(&olga, &["site", "show"]).ok();
    d.ferry_as(&olga, &["partner", "list"]).ok();
    d.ferry_as(&olga, &["partner", "token"]).code(5);
    d.ferry_as(&olga, &["site", "init", "--name", "x"]).code(5);
    d.ferry_as(&olga, &["partner", "unpair", "x"]).code(5);
    d.ferry_as(&uma, &["site", "show"]).code(5);
    d.ferry_as(&uma, &["partner", "list"]).code(5);
    // the denials are audited, with no token in them
    let audit = d.json(&["audit", "list"]);
    let denied: Vec<_> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "denied")
        .map(|r| r["action"].as_str().unwrap().to_owned())
        .collect();
    for action in ["partner.token", "site.set", "partner.unpair"] {
        assert!(denied.iter().any(|a| a == action), "{action}: {denied:?}");
    }
    // a dry run of a token changes nothing and hands out nothing
    let plan = d.json(&["--dry-run", "partner", "token"]);
    assert_eq!(plan["action"], "partner.token");
    assert!(plan.get("token").is_none());
}

/// Replication's privileges: operators look, run the disaster-recovery
/// drill (a failover test) and hold or hurry cycles; what replicates where,
/// reversing and failing over are an admin's; scoped users see none of it.
/// A group that does not exist tells them apart: a role that may gets 404
/// (exit 3) from the handler, one that may not gets 403 (exit 5) first.
#[test]
fn operators_drill_and_hold_replications_admins_configure_and_fail_over() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("a"));
    let (olga, uma) = operator_and_user(&d);
    let operator_may: &[&[&str]] = &[
        &["replication", "status", "nosuch"],
        &["recovery-point", "list", "nosuch"],
        &["failover", "test", "nosuch"],
        &["failover", "test", "nosuch", "--cleanup"],
        &["replication", "pause", "nosuch"],
        &["replication", "resume", "nosuch"],
        &["replication", "run", "nosuch"],
    ];
    let admin_only: &[&[&str]] = &[
        &["replication", "enable", "nosuch", "--partner", "x"],
        &["replication", "disable", "nosuch"],
        &["replication", "reverse", "nosuch"],
        &[
            "replication",
            "seed",
            "export",
            "nosuch",
            "--file",
            "/tmp/ferry-no-such-seed",
        ],
        &[
            "replication",
            "seed",
            "import",
            "nosuch",
            "--file",
            "/tmp/ferry-no-such-seed",
            "--partner",
            "x",
        ],
        &["failover", "planned", "nosuch"],
        &["failover", "unplanned", "nosuch"],
    ];
    d.ferry_as(&olga, &["replication", "status"]).ok();
    for args in operator_may {
        d.ferry_as(&olga, args).code(3);
        d.ferry_as(&uma, args).code(5);
    }
    for args in admin_only {
        d.ferry_as(&olga, args).code(5);
        d.ferry_as(&uma, args).code(5);
        d.ferry(args).code(3);
    }
    d.ferry_as(&uma, &["replication", "status"]).code(5);
    // A group that is only named like a failover test's is not one: the
    // cleanup, an operator's, answers 404 and leaves it (and its volume).
    for (v, g) in [("x-disk", "x"), ("x-test-system", "x-test")] {
        d.ferry(&["volume", "create", v, "--size", "1M"]).ok();
        d.ferry(&["group", "create", g, "--slot", &format!("system={v}")])
            .ok();
    }
    d.ferry_as(&olga, &["failover", "test", "x", "--cleanup"])
        .code(3);
    d.ferry(&["failover", "test", "x", "--cleanup"]).code(3);
    d.ferry(&["group", "show", "x-test"]).ok();
    d.ferry(&["volume", "show", "x-test-system"]).ok();
    let audit = d.json(&["audit", "list"]);
    let denied: Vec<_> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == 403 && r["actor"] == "olga")
        .map(|r| r["action"].as_str().unwrap().to_owned())
        .collect();
    for action in [
        "replication.enable",
        "replication.disable",
        "replication.reverse",
        "replication.seed_export",
        "replication.seed_import",
        "failover.planned",
        "failover.unplanned",
    ] {
        assert!(denied.iter().any(|a| a == action), "{action}: {denied:?}");
    }
    assert!(
        !denied.iter().any(|a| a.starts_with("failover.test")),
        "{denied:?}"
    );
}

/// `ferryd ARGS...` that must refuse to start: its exit code and stderr.
fn ferryd_refuses(data: &Path, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(common::ferryd_bin())
        .arg("--data")
        .arg(data)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn partner_advertise_is_the_address_tokens_and_pairing_requests_carry() {
    let dir = tempfile::tempdir().unwrap();
    // the flag: what a token tells partners, whatever the listener is bound to
    let a = Daemon::start_with(
        &dir.path().join("a"),
        &["--partner-advertise", "site-a.example:7000"],
    );
    assert_ne!(a.partner, "site-a.example:7000");
    assert!(
        a.said("ferryd: partner listener on ")
            .is_some_and(|l| l.ends_with(", advertised as site-a.example:7000)")),
        "{:?}",
        a.startup
    );
    assert_eq!(
        a.json(&["site", "show"])["partner_address"],
        "site-a.example:7000"
    );
    let t = token(&a, "15m");
    assert_eq!(
        PartnerToken::decode(&t).unwrap().address,
        "site-a.example:7000"
    );
    // the config key: what a pairing request tells the site paired with
    let c = Daemon::start(&dir.path().join("c"));
    let config = dir.path().join("b.toml");
    std::fs::write(&config, "partner_advertise = \"[::1]:7421\"\n").unwrap();
    let b = Daemon::start_with(
        &dir.path().join("b"),
        &["--config", config.to_str().unwrap()],
    );
    b.ferry(&["site", "init", "--name", "site-b"]).ok();
    b.ferry(&["partner", "pair", &token(&c, "15m")]).ok();
    let on_c = c.json(&["partner", "show", "site-b"]);
    assert_eq!(on_c["address"], "[::1]:7421", "{on_c}");

    // junk is refused at start, like any bad flag or config value
    for junk in ["no-port", "::1:7411", "host:0", "host:65536", "a/b:1", ""] {
        let (code, err) = ferryd_refuses(&dir.path().join("never"), &["--partner-advertise", junk]);
        assert_eq!(code, 2, "--partner-advertise {junk:?}: {err}");
        assert!(
            err.contains("--partner-advertise") && err.contains("is not HOST:PORT"),
            "{junk:?}: {err}"
        );
    }
    std::fs::write(&config, "partner_advertise = \"no-port\"\n").unwrap();
    let (code, err) = ferryd_refuses(
        &dir.path().join("never"),
        &["--config", config.to_str().unwrap()],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("config key partner_advertise") && err.contains("is not HOST:PORT"),
        "{err}"
    );
    assert!(!dir.path().join("never").exists());
    // and --help says what it is
    let help = std::process::Command::new(common::ferryd_bin())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--partner-advertise <HOST:PORT>"), "{help}");
}
