//! Replication over a bad link, end to end (issue 5, "How it is shown",
//! point 1): ferryd A and ferryd B each in its own network namespace,
//! joined by a veth. B's partner listener is on B's loopback only; in front
//! of it, on B's veth address, runs the project's fault proxy
//! (`ferry-faultproxy`), and B advertises the proxy (`--partner-advertise`),
//! so every byte of A's cycles crosses the proxy and nothing reaches around
//! it. Cycles run every 3 s with zstd while the test applies, in turn, each
//! after writing new data at A (patterns, zeros, random bytes):
//!
//! 1. a 50 ms delay each way (kept on from here),
//! 2. a 10 Mbit/s cap (kept on from here),
//! 3. a reset of every connection after 2 MiB (lifted after the phase): a
//!    6 MiB change gets through only if each attempt resumes where the
//!    replica stopped, which A's log must show,
//! 4. a 30 s partition cut while a cycle's data flows,
//! 5. SIGKILL of B while a cycle's data flows (A must notice), restart on
//!    the same data directory and port,
//! 6. SIGKILL of A while it still has part of a cycle to send; once the
//!    link has delivered what it held, restart: A must resume the cycle
//!    where the replica stopped.
//!
//! TCP buffers in both namespaces are capped at 1 MiB, as a link's are
//! (Linux grows them to tens of MiB on a fast path, and then a sender hands
//! a whole cycle to the kernel long before it crosses the proxy).
//!
//! Checked all along, by listing B's recovery points every 250 ms (also
//! during the faults):
//! - B's list only grows, by whole points: each list starts with the one
//!   before, and each newly seen point is compared at once, block for
//!   block (the blake3 digest of every MiB of every slot, both read over
//!   NBD in their own namespaces), with A's snapshot of the same name (A
//!   keeps every point: `--keep-last 1000`);
//! - B never lists a point A has not taken;
//! - after each phase a point taken after its writes appears at B within a
//!   bound (replication resumes).
//!
//! Needs root, network namespaces, `ip` (iproute2), qemu-io and nbdcopy:
//! without them it fails and says why, it never skips. Build the binaries
//! first: `cargo build --workspace --bins`.

mod common;

use common::netns::NetnsPair;
use common::{Daemon, command_in, faultproxy_bin};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const GROUP: &str = "vm";
/// The group's slots: (slot, volume, size).
const SLOTS: [(&str, &str, &str); 2] = [("system", "vm-system", "32M"), ("data", "vm-data", "16M")];
/// Every listener in a namespace has its fixed port: the namespaces are
/// the test's alone.
const API: &str = "127.0.0.1:7410";
const NBD: &str = "127.0.0.1:10809";
const PARTNER_PORT: u16 = 7411;
/// The proxy's control port, on B's loopback.
const CONTROL: &str = "127.0.0.1:7599";
/// How long a point may take to appear at B after a phase's writes, or
/// after its fault is lifted.
const RESUME_WITHIN: Duration = Duration::from_secs(60);
/// How long any other wait may take.
const PATIENCE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(250);
const MIB: u64 = 1 << 20;

/// `ferry-faultproxy` in a namespace, driven through its control port.
struct Proxy {
    child: Child,
    netns: String,
    log: PathBuf,
}

impl Proxy {
    fn start(netns: &str, listen: &str, target: &str, log: &Path) -> Proxy {
        let stderr = File::create(log).expect("creating the proxy's log");
        let mut child = command_in(Some(netns), faultproxy_bin())
            .args(["--listen", listen, "--target", target, "--control", CONTROL])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("starting ferry-faultproxy");
        // it prints one line once it listens, or exits
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("reading the proxy's start line");
        assert!(
            line.starts_with(&format!(
                "listen={listen} target={target} control={CONTROL}"
            )),
            "ferry-faultproxy said {line:?}; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        Proxy {
            child,
            netns: netns.to_owned(),
            log: log.to_path_buf(),
        }
    }

    /// Sends one control command (from inside the namespace, with bash
    /// alone, as docs/faultproxy.md shows); the answer must be `ok ...`.
    fn control(&self, command: &str) -> String {
        let (host, port) = CONTROL.rsplit_once(':').unwrap();
        let out = command_in(Some(&self.netns), "bash")
            .args([
                "-c",
                r#"exec 3<>"/dev/tcp/$1/$2" && printf '%s\n' "$3" >&3 && IFS= read -r answer <&3 && printf '%s\n' "$answer""#,
                "control",
                host,
                port,
                command,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("running bash for the proxy's control port");
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success() && answer.starts_with("ok"),
            "proxy control {command:?} answered {answer:?} ({}); its log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        answer
    }

    /// `stats`: the counters and the faults in force.
    fn stats(&self) -> BTreeMap<String, String> {
        self.control("stats")
            .split_whitespace()
            .skip(1)
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn count(&self, key: &str) -> u64 {
        let stats = self.stats();
        stats
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no counter {key} in the proxy's stats {stats:?}"))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The two sites, the proxy between them, and what the test saw of B's
/// recovery points.
struct Sites {
    a: Daemon,
    b: Daemon,
    proxy: Proxy,
    a_args: Vec<String>,
    b_args: Vec<String>,
    dir: PathBuf,
    /// B's recovery points as last listed, oldest first.
    seen: Vec<String>,
    /// Points found equal to their source snapshot.
    verified: BTreeSet<String>,
    /// Random files written so far (each phase writes fresh bytes).
    random_files: u32,
    /// Last: dropped after the processes that run in it.
    net: NetnsPair,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

impl Sites {
    fn start(dir: &Path) -> Sites {
        let net = NetnsPair::create();
        for ns in [&net.a, &net.b] {
            cap_tcp_buffers(ns);
        }
        let b_partner = format!("127.0.0.1:{PARTNER_PORT}");
        let via_proxy = format!("{}:{PARTNER_PORT}", net.addr_b);
        let a_args = strings(&[
            "--api",
            API,
            "--nbd",
            NBD,
            "--partner-listen",
            &format!("{}:{PARTNER_PORT}", net.addr_a),
        ]);
        let b_args = strings(&[
            "--api",
            API,
            "--nbd",
            NBD,
            "--partner-listen",
            &b_partner,
            "--partner-advertise",
            &via_proxy,
        ]);
        let proxy = Proxy::start(&net.b, &via_proxy, &b_partner, &dir.join("proxy.log"));
        let a = Daemon::start_in(&net.a, &dir.join("a"), &strs(&a_args));
        let b = Daemon::start_in(&net.b, &dir.join("b"), &strs(&b_args));
        let said = b.said("ferryd: partner listener on ").unwrap_or_default();
        assert!(
            said.contains(&format!("advertised as {via_proxy}")),
            "{:?}",
            b.startup
        );
        Sites {
            a,
            b,
            proxy,
            a_args,
            b_args,
            dir: dir.to_path_buf(),
            seen: Vec::new(),
            verified: BTreeSet::new(),
            random_files: 0,
            net,
        }
    }

    fn restart_a(&mut self) {
        let args = self.a_args.clone();
        self.a = Daemon::start_in(&self.net.a, &self.dir.join("a"), &strs(&args));
    }

    fn restart_b(&mut self) {
        let args = self.b_args.clone();
        self.b = Daemon::start_in(&self.net.b, &self.dir.join("b"), &strs(&args));
    }

    /// A file of `len` fresh random bytes (incompressible) for `write -s`.
    fn random(&mut self, len: u64) -> String {
        self.random_files += 1;
        let path = self.dir.join(format!("random-{}", self.random_files));
        let mut bytes = Vec::new();
        File::open("/dev/urandom")
            .and_then(|f| f.take(len).read_to_end(&mut bytes))
            .expect("reading /dev/urandom");
        assert_eq!(bytes.len() as u64, len);
        std::fs::write(&path, bytes).expect("writing a random file");
        path.to_str().unwrap().to_owned()
    }

    /// qemu-io commands on volume `volume` through A's NBD export of it.
    fn write(&self, volume: &str, cmds: &[String]) {
        let mut c = self.a.client("qemu-io");
        c.args(["-f", "raw"]);
        for cmd in cmds {
            c.args(["-c", cmd]);
        }
        c.arg(format!("nbd://{}/{volume}", self.a.nbd));
        let out = c
            .stdin(Stdio::null())
            .output()
            .expect("running qemu-io (scripts/test.sh installs it)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !text.contains("failed"),
            "qemu-io {cmds:?} on {volume}:\n{text}"
        );
    }

    /// The names of A's snapshots of the group: the points it has taken.
    fn taken(&self) -> BTreeSet<String> {
        self.a
            .json(&["snapshot", "list", GROUP])
            .as_array()
            .expect("a list of snapshots")
            .iter()
            .map(|s| s["name"].as_str().expect("a name").to_owned())
            .collect()
    }

    /// B's recovery points, oldest first (none before the first cycle made
    /// the replica group).
    fn points(&self) -> Vec<String> {
        let out = self
            .b
            .ferry(&["-o", "json", "recovery-point", "list", GROUP]);
        if out.code != 0 && self.seen.is_empty() {
            return Vec::new();
        }
        out.ok()
            .json()
            .as_array()
            .expect("a list of points")
            .iter()
            .map(|p| p["name"].as_str().expect("a name").to_owned())
            .collect()
    }

    fn status_a(&self) -> Value {
        self.a.json(&["replication", "status", GROUP])[0].clone()
    }

    /// Lists B's points; checks that the list only grew, that A took every
    /// point listed, and compares each new one with its source.
    fn poll(&mut self) {
        let now = self.points();
        assert!(
            now.starts_with(&self.seen),
            "B's recovery points went from {:?} to {now:?}: a point vanished or was inserted",
            self.seen
        );
        if now.len() == self.seen.len() {
            return;
        }
        let taken = self.taken();
        if let Some(p) = now.iter().find(|p| !taken.contains(*p)) {
            panic!("B lists {p}, a point A has not taken (A has {taken:?})");
        }
        for p in &now[self.seen.len()..] {
            let t = Instant::now();
            self.compare(p);
            eprintln!(
                "  {p} at B equals A's snapshot (compared in {:.1}s)",
                t.elapsed().as_secs_f64()
            );
            self.verified.insert(p.clone());
        }
        self.seen = now;
    }

    /// Polls until a point not in `before` is listed; returns it and how
    /// long that took.
    fn point_after(&mut self, before: &BTreeSet<String>, what: &str) -> (String, Duration) {
        let start = Instant::now();
        loop {
            self.poll();
            if let Some(p) = self.seen.iter().find(|p| !before.contains(*p)) {
                return (p.clone(), start.elapsed());
            }
            if start.elapsed() > RESUME_WITHIN {
                panic!(
                    "no recovery point {what} within {RESUME_WITHIN:?}: B has {:?}; A's status {}; proxy {:?}; A's log:\n{}\nB's log:\n{}",
                    self.seen,
                    self.status_a(),
                    self.proxy.stats(),
                    tail(&self.a.log_text()),
                    tail(&self.b.log_text())
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Polls for `d`.
    fn watch(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.poll();
            std::thread::sleep(POLL.min(end.saturating_duration_since(Instant::now())));
        }
    }

    /// Polls until the proxy has passed `bytes` more to B than `from`: a
    /// cycle's data is flowing. No point after `before` may be there yet
    /// (the cycle is still under way).
    fn flowing(&mut self, from: u64, bytes: u64, before: &BTreeSet<String>) {
        let start = Instant::now();
        while self.proxy.count("to_target") < from + bytes {
            assert!(
                start.elapsed() < PATIENCE,
                "no cycle data crossed the proxy: {:?}; A's status {}",
                self.proxy.stats(),
                self.status_a()
            );
            self.poll();
            std::thread::sleep(POLL);
        }
        self.poll();
        assert!(
            self.seen.iter().all(|p| before.contains(p)),
            "the cycle finished before the fault could hit it: B has {:?}",
            self.seen
        );
    }

    /// Every slot of `point` at B equals A's snapshot of that name: the
    /// blake3 digest of every MiB, both read over NBD.
    fn compare(&self, point: &str) {
        for (slot, _, _) in SLOTS {
            let name = format!("cmp-{point}-{slot}");
            let snapshot = format!("{GROUP}@{point}");
            for d in [&self.a, &self.b] {
                d.ferry(&[
                    "export",
                    "add",
                    &name,
                    "--snapshot",
                    &snapshot,
                    "--slot",
                    slot,
                ])
                .ok();
            }
            let (at_a, at_b) = (digests(&self.a, &name), digests(&self.b, &name));
            for d in [&self.a, &self.b] {
                d.ferry(&["export", "remove", &name]).ok();
            }
            assert_eq!(
                at_a.len(),
                at_b.len(),
                "{snapshot} slot {slot}: {} MiB at A, {} MiB at B",
                at_a.len(),
                at_b.len()
            );
            if let Some(i) = (0..at_a.len()).find(|&i| at_a[i] != at_b[i]) {
                panic!(
                    "{snapshot} slot {slot} differs between A's snapshot and B's recovery point, first at MiB {i}"
                );
            }
        }
    }
}

/// Caps the TCP buffers of namespace `netns` at 1 MiB, as a link's are,
/// not the tens of MiB Linux grows them to on a fast path: then what a
/// sender has in flight is about the proxy's own queue (8 MiB), and a
/// sender killed mid-cycle still has some of the cycle to send.
fn cap_tcp_buffers(netns: &str) {
    for (knob, value) in [
        ("tcp_rmem", "4096 131072 1048576"),
        ("tcp_wmem", "4096 16384 1048576"),
    ] {
        let out = command_in(Some(netns), "sh")
            .args(["-c", &format!("echo '{value}' > /proc/sys/net/ipv4/{knob}")])
            .output()
            .expect("running sh");
        assert!(
            out.status.success(),
            "setting {knob} in {netns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The blake3 digest of every MiB of `export` on `d`, read with nbdcopy in
/// `d`'s namespace.
fn digests(d: &Daemon, export: &str) -> Vec<blake3::Hash> {
    let uri = format!("nbd://{}/{export}", d.nbd);
    let out = d
        .client("nbdcopy")
        .args([uri.as_str(), "-"])
        .stdin(Stdio::null())
        .output()
        .expect("running nbdcopy (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "nbdcopy {uri} -: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.stdout.is_empty(), "nbdcopy read nothing of {uri}");
    out.stdout.chunks(MIB as usize).map(blake3::hash).collect()
}

/// The last lines of a log, for a failure message.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn log_count(d: &Daemon, needle: &str) -> usize {
    d.log_text().matches(needle).count()
}

#[test]
fn replication_resumes_over_delay_a_rate_cap_resets_a_partition_and_kills_with_every_point_equal() {
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut s = Sites::start(dir.path());
    let phase = |name: &str, t: Instant| {
        eprintln!(
            "phase {name}: {:.1}s (test at {:.1}s)",
            t.elapsed().as_secs_f64(),
            began.elapsed().as_secs_f64()
        );
    };

    // pairing: A at its veth address; B tells A to reach it via the proxy
    let t = Instant::now();
    s.a.ferry(&["site", "init", "--name", "site-a"]).ok();
    s.b.ferry(&["site", "init", "--name", "site-b"]).ok();
    let token =
        s.a.ferry(&["partner", "token"])
            .ok()
            .stdout
            .trim()
            .to_owned();
    s.b.ferry(&["partner", "pair", &token]).ok();
    let via_proxy = format!("{}:{PARTNER_PORT}", s.net.addr_b);
    assert_eq!(
        s.a.json(&["partner", "show", "site-b"])["address"],
        via_proxy.as_str()
    );
    let accepted = s.proxy.count("accepted");
    s.a.ferry(&["partner", "hello", "site-b"]).ok();
    assert!(
        s.proxy.count("accepted") > accepted,
        "A's hello did not go through the proxy"
    );

    // the group: patterns, zeros, random bytes and untouched space
    for (_, volume, size) in SLOTS {
        s.a.ferry(&["volume", "create", volume, "--size", size])
            .ok();
        s.a.ferry(&["export", "add", volume, "--volume", volume])
            .ok();
    }
    let slots: Vec<String> = SLOTS
        .iter()
        .map(|(slot, volume, _)| format!("{slot}={volume}"))
        .collect();
    s.a.ferry(&[
        "group", "create", GROUP, "--slot", &slots[0], "--slot", &slots[1],
    ])
    .ok();
    let r = s.random(6 * MIB);
    s.write(
        "vm-system",
        &[
            "write -P 0x11 0 6M".into(),
            format!("write -s {r} 6M 6M"),
            "write -z 12M 2M".into(),
            "write -P 0x12 28M 4M".into(),
        ],
    );
    let r = s.random(4 * MIB);
    s.write(
        "vm-data",
        &[
            format!("write -s {r} 0 4M"),
            "write -P 0x21 8M 4M".into(),
            "write -z 12M 1M".into(),
        ],
    );
    s.a.ferry(&[
        "replication",
        "enable",
        GROUP,
        "--partner",
        "site-b",
        "--interval",
        "3s",
        "--keep-last",
        "1000",
        "--compression",
        "zstd",
    ])
    .ok();
    let (p, _) = s.point_after(&BTreeSet::new(), "from the initial copy");
    assert_eq!(p, "repl-1");
    phase("setup and initial copy, no faults", t);

    // 1. a 50 ms delay each way: a call's round trips take at least 100 ms
    let t = Instant::now();
    s.proxy.control("delay 50ms");
    let hello = Instant::now();
    s.a.ferry(&["partner", "hello", "site-b"]).ok();
    assert!(
        hello.elapsed() >= Duration::from_millis(100),
        "a hello through a 50 ms delay took {:?}",
        hello.elapsed()
    );
    let r = s.random(2 * MIB);
    s.write(
        "vm-system",
        &[
            "write -P 0x13 14M 1M".into(),
            format!("write -s {r} 15M 2M"),
        ],
    );
    let before = s.taken();
    s.point_after(&before, "with a 50 ms delay");
    phase("50 ms delay", t);

    // 2. a 10 Mbit/s cap: 4 MiB of random bytes cross it
    let t = Instant::now();
    s.proxy.control("rate 10mbit");
    let r = s.random(4 * MIB);
    s.write("vm-data", &[format!("write -s {r} 0 4M")]);
    let sent = s.proxy.count("to_target");
    let before = s.taken();
    s.point_after(&before, "under a 10 Mbit/s cap");
    let crossed = s.proxy.count("to_target") - sent;
    // (less a margin for what may have crossed before the count was read)
    assert!(
        crossed >= 4 * MIB - MIB / 4,
        "only {crossed} bytes crossed the proxy for 4 MiB of random data"
    );
    phase("10 Mbit/s cap (and the delay)", t);

    // 3. every connection reset after 2 MiB: a 6 MiB change gets through
    // only by resuming where the replica stopped
    let t = Instant::now();
    s.proxy.control("reset-every 2M");
    let resets = s.proxy.count("resets");
    let resumed = log_count(&s.a, "where the replica stopped");
    let r = s.random(6 * MIB);
    s.write("vm-system", &[format!("write -s {r} 18M 6M")]);
    let before = s.taken();
    s.point_after(&before, "with resets every 2 MiB");
    let resets = s.proxy.count("resets") - resets;
    assert!(resets >= 2, "{resets} resets for 6 MiB at one every 2 MiB");
    assert!(
        log_count(&s.a, "where the replica stopped") > resumed,
        "no cycle resumed after a reset; A's log:\n{}",
        tail(&s.a.log_text())
    );
    s.proxy.control("reset-every off");
    phase("resets every 2 MiB", t);

    // 4. a 30 s partition, cut while a cycle's data flows
    let t = Instant::now();
    let r = s.random(4 * MIB);
    s.write("vm-data", &[format!("write -s {r} 4M 4M")]);
    let before = s.taken();
    let sent = s.proxy.count("to_target");
    s.flowing(sent, MIB / 2, &before);
    s.proxy.control("partition on");
    s.watch(Duration::from_secs(30));
    s.proxy.control("partition off");
    let (_, after) = s.point_after(&before, "after a 30 s partition");
    eprintln!("  a point {:.1}s after the partition", after.as_secs_f64());
    phase("30 s partition", t);

    // 5. SIGKILL of B while a cycle's data flows; A notices, B restarts
    let t = Instant::now();
    let r = s.random(8 * MIB);
    s.write("vm-system", &[format!("write -s {r} 0 8M")]);
    let before = s.taken();
    let sent = s.proxy.count("to_target");
    s.flowing(sent, 2 * MIB, &before);
    let failed = s.status_a()["stats"]["cycles_failed"].as_u64().unwrap();
    let status = s.b.kill();
    assert_eq!(status.signal(), Some(9), "B ended {status:?}");
    let down = Instant::now();
    while s.status_a()["stats"]["cycles_failed"].as_u64().unwrap() <= failed {
        assert!(
            down.elapsed() < PATIENCE,
            "A did not notice B was gone: {}",
            s.status_a()
        );
        std::thread::sleep(POLL);
    }
    s.restart_b();
    let (_, after) = s.point_after(&before, "after B was killed and restarted");
    eprintln!("  a point {:.1}s after B restarted", after.as_secs_f64());
    phase("SIGKILL of B mid-cycle", t);

    // 6. SIGKILL of A while it still has the cycle's data to send; A stays
    // down until the link has delivered what it held and B has seen the
    // stream break off (and recorded how far it got); restarted, A resumes
    // the cycle there
    let t = Instant::now();
    let handed = s.status_a()["stats"]["bytes_sent"].as_u64().unwrap();
    // (some 16 MiB are in flight: A's queue, the buffers, the proxy's queue)
    let change = 24 * MIB;
    let r = s.random(change);
    s.write("vm-system", &[format!("write -s {r} 8M 24M")]);
    let before = s.taken();
    let sent = s.proxy.count("to_target");
    s.flowing(sent, 2 * MIB, &before);
    let resumed = log_count(&s.a, "where the replica stopped");
    let handed = s.status_a()["stats"]["bytes_sent"].as_u64().unwrap() - handed;
    let status = s.a.kill();
    assert_eq!(status.signal(), Some(9), "A ended {status:?}");
    assert!(
        handed < change,
        "A had sent its whole cycle ({handed} bytes) before it was killed"
    );
    let down = Instant::now();
    while s.proxy.count("open") > 0 {
        assert!(
            down.elapsed() < PATIENCE,
            "the link still holds A's stream: {:?}",
            s.proxy.stats()
        );
        std::thread::sleep(POLL);
    }
    s.restart_a();
    let (_, after) = s.point_after(&before, "after A was killed and restarted");
    assert!(
        log_count(&s.a, "where the replica stopped") > resumed,
        "A did not resume the cycle where the replica stopped; A's log:\n{}",
        tail(&s.a.log_text())
    );
    eprintln!(
        "  killed after sending {:.1} of {} MiB; a point {:.1}s after the restart",
        handed as f64 / MIB as f64,
        change / MIB,
        after.as_secs_f64()
    );
    phase("SIGKILL of A mid-cycle", t);

    // every point B ever listed was compared; A still has all of them
    s.poll();
    let listed: BTreeSet<String> = s.seen.iter().cloned().collect();
    assert_eq!(listed, s.verified);
    assert!(s.seen.len() >= 7, "{:?}", s.seen);
    assert!(listed.is_subset(&s.taken()));
    eprintln!(
        "{} recovery points, each equal to its source; {:.1}s in all; proxy {:?}",
        s.seen.len(),
        began.elapsed().as_secs_f64(),
        s.proxy.stats()
    );
}
