//! The `ferry-faultproxy` binary as another process drives it: flags, the
//! start line, the control port, bad input, and a clean stop on SIGTERM.

mod common;

use common::*;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ferry-faultproxy");

/// A running proxy process; killed if the test ends without stopping it.
struct Proxy {
    child: Child,
    listen: SocketAddr,
    control: SocketAddr,
}

impl Proxy {
    fn spawn(target: SocketAddr, flags: &[&str]) -> Proxy {
        let mut child = Command::new(BIN)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--target",
                &target.to_string(),
                "--control",
                "127.0.0.1:0",
            ])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let field = |key: &str| -> SocketAddr {
            let value = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {line:?}"));
            value.parse().unwrap()
        };
        let (listen, control) = (field("listen="), field("control="));
        assert_eq!(field("target="), target);
        Proxy {
            child,
            listen,
            control,
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.listen).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s
    }

    /// Sends SIGTERM and checks the process exits 0.
    fn stop(mut self) {
        // SAFETY: kill(2) with a pid we spawned and have not reaped.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) },
            0
        );
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "{status}");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A control connection: one line out, one line back.
struct Control(BufReader<TcpStream>);

impl Control {
    fn open(addr: SocketAddr) -> Control {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        Control(BufReader::new(s))
    }

    fn ask(&mut self, line: &str) -> String {
        self.0
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        let mut answer = String::new();
        self.0.read_line(&mut answer).unwrap();
        assert!(answer.ends_with('\n'), "{answer:?}");
        answer.trim_end().to_owned()
    }

    /// The value of `key=` in the `stats` answer.
    fn stat(&mut self, key: &str) -> String {
        let answer = self.ask("stats");
        let prefix = format!("{key}=");
        answer
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {key} in {answer:?}"))
            .to_owned()
    }
}

fn round_trip(s: &mut TcpStream, byte: u8) -> Duration {
    let t = Instant::now();
    s.write_all(&[byte]).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    assert_eq!(b[0], byte);
    t.elapsed()
}

#[test]
fn binary_forwards_and_obeys_the_control_port() {
    let proxy = Proxy::spawn(echo_server(), &[]);
    let mut ctl = Control::open(proxy.control);
    assert_eq!(ctl.stat("accepted"), "0");
    let mut s = proxy.connect();
    round_trip(&mut s, 1);

    assert_eq!(ctl.ask("delay 50ms"), "ok");
    assert_eq!(ctl.stat("delay"), "50ms");
    let rtt = round_trip(&mut s, 2);
    assert!(
        rtt >= Duration::from_millis(100),
        "round trip {rtt:?} with a 50 ms delay each way"
    );
    assert_eq!(ctl.ask("delay 0"), "ok");

    assert_eq!(ctl.ask("partition on"), "ok");
    assert_eq!(ctl.stat("partition"), "on");
    s.write_all(b"held").unwrap();
    assert!(
        !arrives_within(&mut s, Duration::from_millis(300)),
        "an echo crossed the partition"
    );
    assert_eq!(ctl.ask("partition off"), "ok");
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"held");

    assert_eq!(ctl.ask("rate 10mbit"), "ok");
    assert_eq!(ctl.stat("rate"), "10mbit");
    assert_eq!(ctl.ask("rate off"), "ok");
    assert_eq!(ctl.ask("reset-every 4M"), "ok");
    assert_eq!(ctl.stat("reset_every"), "4M");
    assert_eq!(ctl.ask("reset-every off"), "ok");

    assert_eq!(ctl.ask("reset-now"), "ok");
    let mut b = [0u8; 1];
    assert_eq!(
        s.read(&mut b).map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionReset)
    );
    assert_eq!(ctl.stat("resets"), "1");
    assert_eq!(ctl.stat("accepted"), "1");
    assert_eq!(ctl.stat("to_target"), "6");
    // A second control connection at the same time sees the same proxy.
    assert_eq!(Control::open(proxy.control).stat("resets"), "1");
    drop(ctl);
    proxy.stop();
}

#[test]
fn binary_applies_the_faults_given_as_flags() {
    let proxy = Proxy::spawn(
        echo_server(),
        &[
            "--delay",
            "50ms",
            "--jitter",
            "1ms",
            "--rate",
            "1.5gbit",
            "--reset-every",
            "512K",
        ],
    );
    let mut ctl = Control::open(proxy.control);
    let stats = ctl.ask("stats");
    assert!(
        stats.ends_with("delay=50ms jitter=1ms rate=1500mbit reset_every=512K"),
        "{stats}"
    );
    let mut s = proxy.connect();
    let rtt = round_trip(&mut s, 9);
    assert!(
        rtt >= Duration::from_millis(100),
        "round trip {rtt:?} with --delay 50ms"
    );
    proxy.stop();
}

#[test]
fn the_control_port_refuses_bad_lines_and_keeps_going() {
    let proxy = Proxy::spawn(echo_server(), &[]);
    let mut ctl = Control::open(proxy.control);
    let unknown = ctl.ask("frobnicate");
    assert!(
        unknown.starts_with("error unknown command \"frobnicate\""),
        "{unknown}"
    );
    let bad_rate = ctl.ask("rate -1");
    assert!(
        bad_rate.starts_with("error invalid rate \"-1\"") && bad_rate.contains("10mbit"),
        "{bad_rate}"
    );
    assert!(ctl.ask("delay").starts_with("error delay needs"));
    assert!(
        ctl.ask("partition sideways")
            .starts_with("error partition takes on or off")
    );
    assert!(ctl.ask("help").starts_with("ok commands: partition on|off"));
    assert_eq!(ctl.stat("rate"), "off", "a refused command changes nothing");
    // A line too long to be a command is refused and the connection closed.
    let long = "x".repeat(10_000);
    assert!(ctl.ask(&long).starts_with("error line longer than"));
    let mut rest = String::new();
    let closed = ctl.0.read_line(&mut rest);
    assert!(
        matches!(closed, Ok(0)) || closed.is_err(),
        "{closed:?} {rest:?}"
    );
    proxy.stop();
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn bad_flags_exit_2_naming_the_flag_and_the_forms() {
    let base = ["--listen", "127.0.0.1:0", "--target", "127.0.0.1:9"];
    let cases: &[(&[&str], &[&str])] = &[
        (&["--rate", "-1"], &["--rate", "-1", "10mbit", "kbit"]),
        (&["--rate=10mb"], &["--rate", "unknown unit", "10mbit"]),
        (&["--rate", "lots"], &["--rate", "neither a number nor off"]),
        (&["--delay", "5"], &["--delay", "no unit", "50ms"]),
        (&["--delay", "-5ms"], &["--delay", "50ms"]),
        (&["--delay", "2min"], &["--delay", "unknown unit"]),
        (&["--jitter", "61s"], &["--jitter", "longer than 60s"]),
        (
            &["--reset-every", "1.5M"],
            &["--reset-every", "whole number", "4M"],
        ),
        (&["--reset-every", "0"], &["--reset-every", "larger than 0"]),
        (&["--control", "localhost"], &["--control"]),
    ];
    for (flags, words) in cases {
        let out = run(&[&base[..], flags].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        for w in *words {
            assert!(stderr.contains(w), "{flags:?}: {w:?} not in {stderr}");
        }
    }
    let out = run(&["--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--target"));
}

#[test]
fn a_listen_address_in_use_fails_with_exit_1() {
    let taken = listener();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(&["--listen", &addr, "--target", "127.0.0.1:9"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("start the proxy on") && stderr.contains(&addr),
        "{stderr}"
    );
}

#[test]
fn help_explains_every_fault() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--delay",
        "--jitter",
        "--rate",
        "--reset-every",
        "--control",
        "partition",
        "long wire",
        "RST",
        "held, not dropped",
        "reset-now",
        "stats",
    ] {
        assert!(help.contains(word), "{word:?} not in --help:\n{help}");
    }
}
