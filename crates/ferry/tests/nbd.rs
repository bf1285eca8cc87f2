//! NBD through the real daemon: exports made with the CLI, served to qemu and
//! libnbd clients, kept across restarts, TLS with the site certificate, and
//! a flush on one connection covering the writes of another.

mod common;

use std::path::Path;
use std::process::Command;

use common::Daemon;
use ferry_nbd::client::RawClient;
use ferry_nbd::proto::{CMD_READ, EPERM};

fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .env(
            "PATH",
            format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default()),
        )
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e} (scripts/test.sh installs it)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn ok(program: &str, args: &[&str]) -> String {
    let (success, text) = run(program, args);
    assert!(success, "{program} {args:?} failed:\n{text}");
    for bad in ["failed", "mismatch"] {
        assert!(
            !text.contains(bad),
            "{program} {args:?} said {bad:?}:\n{text}"
        );
    }
    text
}

fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    let mut args = vec!["-f", "raw"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(uri);
    ok("qemu-io", &args)
}

fn setup(d: &Daemon) {
    d.ferry(&["volume", "create", "vm1-system", "--size", "64M"])
        .ok();
    d.ferry(&["group", "create", "vm1", "--slot", "system=vm1-system"])
        .ok();
    d.ferry(&["export", "add", "vm1-system", "--volume", "vm1-system"])
        .ok();
}

#[test]
fn exports_serve_survive_restarts_and_disconnect_when_removed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut d = Daemon::start(&data);
    setup(&d);
    let live = |d: &Daemon| format!("nbd://{}/vm1-system", d.nbd);
    let frozen = |d: &Daemon| format!("nbd://{}/vm1-monday", d.nbd);
    qemu_io(
        &live(&d),
        &["write -P 0x61 0 1M", "write -P 0x62 8M 1M", "flush"],
    );
    d.ferry(&["snapshot", "create", "vm1", "--name", "monday"])
        .ok();
    d.ferry(&[
        "export",
        "add",
        "vm1-monday",
        "--snapshot",
        "vm1@monday",
        "--slot",
        "system",
    ])
    .ok();
    qemu_io(&live(&d), &["write -P 0x63 0 1M", "write -P 0x64 32M 64k"]);

    // the snapshot export is the snapshot, read-only
    ok(
        "qemu-io",
        &["-r", "-f", "raw", "-c", "read -P 0x61 0 1M", &frozen(&d)],
    );
    let list = ok("nbdinfo", &["--list", &format!("nbd://{}", d.nbd)]);
    assert!(
        list.contains("vm1-system") && list.contains("vm1-monday"),
        "{list}"
    );

    // blocks changed since the snapshot, as a metadata context
    let map = ok("nbdinfo", &["--map=ferry:changed-since:monday", &live(&d)]);
    let rows: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let changed: Vec<(u64, u64)> = rows
        .iter()
        .filter(|r| r.get(2) == Some(&"1"))
        .map(|r| (r[0].parse().unwrap(), r[1].parse().unwrap()))
        .collect();
    assert_eq!(changed, vec![(0, 1 << 20), (32 << 20, 64 << 10)], "{map}");

    // a clean restart keeps exports and data
    let (status, _) = d.terminate();
    assert!(status.success());
    let mut d = Daemon::start(&data);
    qemu_io(&live(&d), &["read -P 0x63 0 1M", "read -P 0x62 8M 1M"]);
    ok(
        "qemu-io",
        &["-r", "-f", "raw", "-c", "read -P 0x61 0 1M", &frozen(&d)],
    );

    // writes to the snapshot export are refused with EPERM, the connection goes on
    let mut c = RawClient::connect(d.nbd.as_str(), "vm1-monday");
    let (err, _) = c.call(ferry_nbd::proto::CMD_WRITE, 0, 0, 4096, &[0u8; 4096]);
    assert_eq!(err, EPERM);
    assert_eq!(c.call(CMD_READ, 0, 0, 4096, &[]).0, 0);

    // removing the export disconnects its client; the other export stays
    let mut other = RawClient::connect(d.nbd.as_str(), "vm1-system");
    d.ferry(&["export", "remove", "vm1-monday"]).ok();
    assert!(
        c.reply_or_eof(),
        "the removed export's client was not disconnected"
    );
    assert_eq!(other.call(CMD_READ, 0, 0, 4096, &[]).0, 0);
    let (found, text) = run("nbdinfo", &[&frozen(&d)]);
    assert!(!found, "a removed export still answers: {text}");

    // deleting the volume removes its export and disconnects its client
    d.ferry(&["group", "slot-remove", "vm1", "system"]).ok();
    d.ferry(&["volume", "delete", "vm1-system"]).ok();
    assert!(
        other.reply_or_eof(),
        "the deleted volume's client was not disconnected"
    );
    let exports = d.json(&["export", "list"]);
    assert_eq!(exports.as_array().map(Vec::len), Some(0), "{exports}");
    let (status, _) = d.terminate();
    assert!(status.success());
}

/// libnbd writes on one connection, flushes on another, then ferryd is
/// killed: the flush covered the first connection's write.
const MULTI_CONN_PY: &str = r#"
import sys, nbd
uri = sys.argv[1]
a, b = nbd.NBD(), nbd.NBD()
a.connect_uri(uri)
b.connect_uri(uri)
assert a.can_multi_conn()
a.pwrite(b"\x7e" * 65536, 1 << 20)
b.flush()
print("flushed", flush=True)
"#;

#[test]
fn a_flush_on_one_connection_covers_writes_of_another_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = Daemon::start(&data);
    setup(&d);
    let script = dir.path().join("multi.py");
    std::fs::write(&script, MULTI_CONN_PY).unwrap();
    let uri = format!("nbd://{}/vm1-system", d.nbd);
    let out = ok("/usr/bin/python3", &[script.to_str().unwrap(), &uri]);
    assert!(out.contains("flushed"));
    drop(d); // SIGKILL: no clean stop, no final flush
    let d = Daemon::start(&data);
    qemu_io(
        &format!("nbd://{}/vm1-system", d.nbd),
        &["read -P 0x7e 1M 64k"],
    );
}

/// qemu's and libnbd's TLS client settings want the CA as `ca-cert.pem`.
fn client_tls_dir(d: &Daemon, dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(d.ca(), dir.join("ca-cert.pem")).unwrap();
    dir.to_str().unwrap().to_owned()
}

#[test]
fn tls_with_the_site_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = Daemon::start_with(&data, &["--nbd-tls", "require"]);
    assert!(
        d.said("ferryd: NBD listening")
            .unwrap()
            .contains("TLS required")
    );
    setup(&d);
    let certs = client_tls_dir(&d, &dir.path().join("pki"));
    let (host, port) = d.nbd.rsplit_once(':').unwrap();

    // qemu with tls-creds-x509: write and read back over TLS
    let object = format!("tls-creds-x509,id=tls0,dir={certs},endpoint=client");
    let image = format!("driver=nbd,host={host},port={port},export=vm1-system,tls-creds=tls0");
    ok(
        "qemu-io",
        &[
            "--object",
            &object,
            "--image-opts",
            &image,
            "-c",
            "write -P 0x5c 0 2M",
            "-c",
            "read -P 0x5c 0 2M",
        ],
    );
    let info = ok(
        "qemu-img",
        &["info", "--object", &object, "--image-opts", &image],
    );
    assert!(info.contains("67108864"), "{info}");

    // nbdinfo over TLS, checking the certificate against the site CA
    let tls_uri = format!("nbds://{}/vm1-system?tls-certificates={certs}", d.nbd);
    let json = ok("nbdinfo", &["--json", &tls_uri]);
    assert!(json.contains("\"export-size\": 67108864"), "{json}");

    // a client that does not upgrade is refused
    let (plain_ok, text) = run("nbdinfo", &[&format!("nbd://{}/vm1-system", d.nbd)]);
    assert!(!plain_ok, "a plain client got in: {text}");
    assert!(text.to_lowercase().contains("tls"), "{text}");
    // one that trusts another CA is refused too
    let stranger = dir.path().join("stranger");
    let other = tempfile::tempdir().unwrap();
    let d2 = Daemon::start(&other.path().join("data"));
    let wrong = client_tls_dir(&d2, &stranger);
    let (wrong_ok, text) = run(
        "nbdinfo",
        &[&format!(
            "nbds://{}/vm1-system?tls-certificates={wrong}",
            d.nbd
        )],
    );
    assert!(
        !wrong_ok,
        "a client trusting another site's CA got in: {text}"
    );
}

#[test]
fn unix_socket_serves_the_same_exports() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sock = dir.path().join("nbd.sock");
    // TLS required on TCP does not apply to the local socket
    let d = Daemon::start_with(
        &data,
        &["--nbd-unix", sock.to_str().unwrap(), "--nbd-tls", "require"],
    );
    assert!(
        d.said("ferryd: NBD listening")
            .unwrap()
            .contains("nbd+unix")
    );
    setup(&d);
    let uri = format!("nbd+unix:///vm1-system?socket={}", sock.display());
    qemu_io(&uri, &["write -P 0x3d 4k 8k", "read -P 0x3d 4k 8k"]);
    let (plain_ok, _) = run("nbdinfo", &[&format!("nbd://{}/vm1-system", d.nbd)]);
    assert!(!plain_ok, "plain TCP got in although TLS is required");
    let json = ok("nbdinfo", &["--json", &uri]);
    assert!(json.contains("\"export-size\": 67108864"), "{json}");
}

#[test]
fn sigterm_with_nbd_clients_connected_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut d = Daemon::start(&data);
    setup(&d);
    // one client in transmission with a write acknowledged, one mid-handshake
    let mut c = RawClient::connect(d.nbd.as_str(), "vm1-system");
    let (err, _) = c.call(ferry_nbd::proto::CMD_WRITE, 0, 8192, 4096, &[0x4b; 4096]);
    assert_eq!(err, 0);
    let idle = std::net::TcpStream::connect(d.nbd.as_str()).unwrap();
    let (status, said) = d.terminate();
    assert!(status.success(), "ferryd did not stop cleanly: {said:?}");
    assert!(
        said.iter().any(|l| l.contains("stopped cleanly")),
        "{said:?}"
    );
    assert!(c.reply_or_eof(), "the client was not disconnected");
    drop(idle);
    // the acknowledged write was flushed by the clean stop
    let d = Daemon::start(&data);
    qemu_io(
        &format!("nbd://{}/vm1-system", d.nbd),
        &["read -P 0x4b 8k 4k"],
    );
}

/// Entries of a directory of /proc.
fn entries(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Waits until ferryd has no NBD connection thread left (they are named
/// `nbd-conn-N`), which is when every connection's end has been handled.
fn wait_no_connections(pid: u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let open = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.starts_with("nbd-conn"))
            .count();
        if open == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{open} NBD connection threads still there a minute after the clients left"
        );
        std::thread::yield_now();
    }
}

/// A thousand connections to the daemon — most read and disconnect, some
/// vanish without a disconnect, some leave mid-handshake — leave no file
/// descriptor, thread or memory behind in ferryd.
#[test]
fn a_thousand_connections_to_ferryd_leak_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = Daemon::start(&data);
    setup(&d);
    let pid = d.pid();
    let cycle = |n: usize| {
        for i in 0..n {
            if i % 10 == 9 {
                // gone after the greeting
                let mut s = std::net::TcpStream::connect(d.nbd.as_str()).unwrap();
                let mut greeting = [0u8; 18];
                std::io::Read::read_exact(&mut s, &mut greeting).unwrap();
                continue;
            }
            let mut c = RawClient::connect(d.nbd.as_str(), "vm1-system");
            assert_eq!(c.call(CMD_READ, 0, 0, 4096, &[]).0, 0);
            if i % 4 == 3 {
                drop(c); // no NBD_CMD_DISC
            } else {
                c.disconnect();
            }
        }
        wait_no_connections(pid);
    };
    cycle(50);
    let fd_dir = format!("/proc/{pid}/fd");
    let task_dir = format!("/proc/{pid}/task");
    let (fds, threads, rss) = (entries(&fd_dir), entries(&task_dir), rss_kib(pid));
    cycle(1000);
    assert_eq!(entries(&fd_dir), fds, "file descriptors leaked");
    let now = entries(&task_dir);
    assert!(
        now <= threads + 2,
        "threads leaked: {threads} before, {now} after"
    );
    let grown = rss_kib(pid).saturating_sub(rss);
    assert!(
        grown < 16 * 1024,
        "ferryd's RSS grew by {grown} KiB over 1000 connections"
    );
}
