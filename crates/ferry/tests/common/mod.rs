//! Runs the real `ferryd` and the real `ferry` for end-to-end tests.
//!
//! No sleeps anywhere: a daemon is ready when it prints its "API listening"
//! line, stopped when its stdout closes and it is reaped. Every wait has a
//! deadline so that a hung daemon fails the test instead of hanging it.
//!
//! A daemon may run in a network namespace ([`netns`]): then it and every
//! client the helper runs for it (`ferry`, [`Daemon::client`] for qemu-img
//! and the like) go through `ip netns exec NS`, which execs, so the child's
//! pid is the program's own. The test process stays in its namespace.

#![allow(dead_code)]

pub mod netns;
pub mod served;

use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long any one wait on a daemon may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);

pub fn ferry_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

pub fn ferryd_bin() -> PathBuf {
    workspace_bin("ferryd")
}

/// The `ferry-faultproxy` binary (crates/ferry-faultproxy).
pub fn faultproxy_bin() -> PathBuf {
    workspace_bin("ferry-faultproxy")
}

/// A binary of another workspace crate, next to `ferry`'s.
fn workspace_bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_ferry")).with_file_name(name);
    if !p.exists() {
        panic!(
            "{} is missing; build it first: cargo build --workspace --bins",
            p.display()
        );
    }
    p
}

/// `program` run in network namespace `netns` (`ip netns exec`), or as is.
pub fn command_in(netns: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.arg("netns").arg("exec").arg(ns).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A running ferryd; killed (and reaped) when dropped.
pub struct Daemon {
    child: Child,
    lines: Receiver<String>,
    /// `http://127.0.0.1:PORT`, or `https://...` when it serves HTTPS
    pub url: String,
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// Where NBD clients connect: `HOST:PORT`.
    pub nbd: String,
    /// The partner listener, `HOST:PORT` (empty when ferryd did not start one).
    pub partner: String,
    pub data: PathBuf,
    /// The admin token from `DATA/admin.token`.
    pub admin: String,
    /// What ferryd printed on stdout up to and including "API listening".
    pub startup: Vec<String>,
    /// The network namespace it runs in (None: the test's own).
    pub netns: Option<String>,
    log: PathBuf,
}

impl Daemon {
    /// Starts ferryd on a free port with its store in `data` and waits until
    /// it listens. Its stderr goes to `DATA.log` next to the data directory.
    pub fn start(data: &Path) -> Daemon {
        Daemon::spawn(data, &[], &[], None)
    }

    /// Like [`Daemon::start`] with more flags; `--api`, `--nbd` and
    /// `--partner-listen` are `127.0.0.1:0` unless `args` give them.
    pub fn start_with(data: &Path, args: &[&str]) -> Daemon {
        Daemon::spawn(data, args, &[], None)
    }

    /// [`Daemon::start`] with extra environment variables for ferryd.
    pub fn start_with_env(data: &Path, env: &[(&str, &Path)]) -> Daemon {
        Daemon::spawn(data, &[], env, None)
    }

    /// [`Daemon::start_with`] in network namespace `netns`; the `ferry`
    /// commands and [`Daemon::client`]s of the result run there too.
    /// [`Daemon::http`] does not (it connects from the test's namespace).
    pub fn start_in(netns: &str, data: &Path, args: &[&str]) -> Daemon {
        Daemon::spawn(data, args, &[], Some(netns))
    }

    fn spawn(data: &Path, args: &[&str], env: &[(&str, &Path)], netns: Option<&str>) -> Daemon {
        let log = data.with_extension("log");
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("opening the daemon log");
        let mut command = command_in(netns, ferryd_bin());
        if !args.contains(&"--api") {
            command.arg("--api").arg("127.0.0.1:0");
        }
        if !args.contains(&"--nbd") {
            command.arg("--nbd").arg("127.0.0.1:0");
        }
        if !args.contains(&"--partner-listen") {
            command.arg("--partner-listen").arg("127.0.0.1:0");
        }
        let mut child = command
            .arg("--data")
            .arg(data)
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("FERRY_TEST_JOB_PAUSE")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("starting ferryd");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut d = Daemon {
            child,
            lines,
            url: String::new(),
            addr: String::new(),
            nbd: String::new(),
            partner: String::new(),
            data: data.to_path_buf(),
            admin: String::new(),
            startup: Vec::new(),
            netns: netns.map(str::to_owned),
            log,
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            let line = match d
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => line,
                Err(e) => panic!(
                    "ferryd did not say it listens ({e:?}); it said {:?}; its log:\n{}",
                    d.startup,
                    d.log_text()
                ),
            };
            d.startup.push(line.clone());
            if let Some(rest) = line.strip_prefix("ferryd: NBD listening on nbd://") {
                d.nbd = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
            }
            if let Some(rest) = line.strip_prefix("ferryd: partner listener on https://") {
                d.partner = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
            }
            if let Some(url) = line.strip_prefix("ferryd: API listening on ") {
                d.url = url.trim().to_owned();
                d.addr = d
                    .url
                    .strip_prefix("http://")
                    .or_else(|| d.url.strip_prefix("https://"))
                    .expect("an http:// or https:// URL")
                    .to_owned();
                break;
            }
        }
        d.admin = std::fs::read_to_string(data.join("admin.token"))
            .expect("ferryd wrote DATA/admin.token")
            .trim()
            .to_owned();
        assert!(d.admin.starts_with("ferry_"), "admin token {:?}", d.admin);
        d
    }

    /// The site CA ferryd made: what a client trusts for its HTTPS.
    pub fn ca(&self) -> PathBuf {
        self.data.join("tls").join("ca.pem")
    }

    /// The startup line that starts with `prefix`, if ferryd printed one.
    pub fn said(&self, prefix: &str) -> Option<&str> {
        self.startup
            .iter()
            .find(|l| l.starts_with(prefix))
            .map(String::as_str)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What ferryd wrote on stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for ferryd to exit. Returns its exit status
    /// and every stdout line it printed after it started listening.
    pub fn terminate(&mut self) -> (ExitStatus, Vec<String>) {
        self.sigterm();
        self.wait_exit(Vec::new())
    }

    /// SIGKILL (a crash), then reaps it; returns how it ended.
    pub fn kill(&mut self) -> ExitStatus {
        self.child.kill().expect("sending SIGKILL to ferryd");
        self.child.wait().expect("reaping ferryd")
    }

    /// Sends SIGTERM and returns at once.
    pub fn sigterm(&self) {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -TERM {}", self.pid()))
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits for a stdout line starting with `prefix`; returns the lines up
    /// to and including it.
    pub fn wait_line(&mut self, prefix: &str) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        let mut said = Vec::new();
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    let done = line.starts_with(prefix);
                    said.push(line);
                    if done {
                        return said;
                    }
                }
                Err(e) => panic!(
                    "ferryd did not say {prefix:?} ({e:?}); it said {said:?}; log:\n{}",
                    self.log_text()
                ),
            }
        }
    }

    /// Waits for ferryd to exit (after a SIGTERM); `said` are lines already
    /// read since. Returns its exit status and every line it printed.
    pub fn wait_exit(&mut self, mut said: Vec<String>) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => said.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "ferryd did not stop within {PATIENCE:?} of SIGTERM; it said {said:?}; log:\n{}",
                    self.log_text()
                ),
            }
        }
        // stdout closed: the process is exiting; reap it.
        let status = self.child.wait().expect("waiting for ferryd");
        (status, said)
    }

    /// `ferry` as admin with `--server` and `--token`, not yet run.
    pub fn command_as_admin(&self) -> Command {
        let mut c = self.command();
        c.arg("--server")
            .arg(&self.url)
            .arg("--token")
            .arg(&self.admin);
        c
    }

    /// `program` as a client of this daemon: in its network namespace, if
    /// it runs in one. Not yet run.
    pub fn client(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(self.netns.as_deref(), program)
    }

    /// A `ferry` command with none of the runner's FERRY_* settings, run
    /// beside the data directory (in the daemon's network namespace).
    pub fn command(&self) -> Command {
        let mut c = self.client(ferry_bin());
        c.env_remove("FERRY_SERVER")
            .env_remove("FERRY_TOKEN")
            .env_remove("FERRY_TOKEN_FILE")
            .env_remove("FERRY_CA")
            .stdin(Stdio::null());
        if let Some(dir) = self.data.parent() {
            // no ./ferry-data there, so the CLI never falls back to a token file
            c.current_dir(dir);
            // and no context of the person running the tests applies
            c.env("FERRY_CONFIG", dir.join("no-such-ferry-config.toml"));
        }
        c
    }

    /// `ferry --server URL --token TOKEN ARGS...`
    pub fn ferry_as(&self, token: &str, args: &[&str]) -> Out {
        let mut c = self.command();
        c.arg("--server")
            .arg(&self.url)
            .arg("--token")
            .arg(token)
            .args(args);
        Out::run(c, args)
    }

    /// `ferry ARGS...` as admin.
    pub fn ferry(&self, args: &[&str]) -> Out {
        self.ferry_as(&self.admin, args)
    }

    /// `ferry ARGS...` as admin, with the server and the token file given by
    /// `FERRY_SERVER` and `FERRY_TOKEN_FILE` (so ARGS are exactly what a
    /// person types).
    pub fn ferry_env(&self, args: &[&str]) -> Out {
        let mut c = self.command();
        c.env("FERRY_SERVER", &self.url)
            .env("FERRY_TOKEN_FILE", self.data.join("admin.token"))
            .args(args);
        Out::run(c, args)
    }

    /// `ferry -o json ARGS...` as admin; must succeed; the parsed output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        self.ferry(&all).ok().json()
    }

    /// One raw HTTP/1.1 request; see [`http`].
    pub fn http(&self, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Reply {
        assert!(
            self.netns.is_none(),
            "Daemon::http connects from the test's network namespace, not {:?}",
            self.netns
        );
        http(&self.addr, method, path, token, body)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // std does not signal a child it has already reaped
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one `ferry` run did.
#[derive(Debug)]
pub struct Out {
    pub args: Vec<String>,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn run(mut c: Command, args: &[&str]) -> Out {
        let out = c.output().expect("running ferry");
        Out {
            args: args.iter().map(|s| s.to_string()).collect(),
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts the exit code.
    #[track_caller]
    pub fn code(self, want: i32) -> Out {
        assert_eq!(
            self.code,
            want,
            "`ferry {}` exited {} (wanted {want})\nstdout: {}\nstderr: {}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    pub fn ok(self) -> Out {
        self.code(0)
    }

    /// Asserts stdout holds `needle`.
    #[track_caller]
    pub fn says(self, needle: &str) -> Out {
        assert!(
            self.stdout.contains(needle),
            "`ferry {}` did not print {needle:?}:\n{}",
            self.args.join(" "),
            self.stdout
        );
        self
    }

    /// Asserts stderr holds `needle`.
    #[track_caller]
    pub fn complains(self, needle: &str) -> Out {
        assert!(
            self.stderr.contains(needle),
            "`ferry {}` did not say {needle:?} on stderr:\n{}",
            self.args.join(" "),
            self.stderr
        );
        self
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "`ferry {}` printed no JSON ({e}):\n{}",
                self.args.join(" "),
                self.stdout
            )
        })
    }
}

/// A raw HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Reply {
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} with a body that is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends one HTTP/1.1 request over a plain TCP connection (no HTTP client
/// library, so that any bytes at all can be sent) and reads the answer to
/// the end. The body is written from another thread: a server that answers
/// early (413) must not deadlock us.
pub fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).expect("connecting to ferryd");
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("setting a read timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    let mut writer = stream.try_clone().expect("cloning the stream");
    let sender = std::thread::spawn(move || {
        // the server may close early (a body that is too large): not an error here
        let _ = writer.write_all(&request);
        let _ = writer.flush();
    });
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // a reset after the answer arrived (unread request bytes) ends it too
            Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the answer to {method} {path}: {e}"),
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    sender.join().expect("the sender thread");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no HTTP head in the answer to {method} {path}: {:?}",
                String::from_utf8_lossy(&raw)
            )
        });
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Reply { status, head, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let len = usize::from_str_radix(
            String::from_utf8_lossy(&b[..nl])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .expect("a chunk length");
        if len == 0 {
            break;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + len]);
        b = &b[nl + 2 + len + 2..];
    }
    out
}

/// Replaces one byte of a file in place (no truncation, so a daemon holding
/// the file open for appending keeps appending after it).
pub fn poke(path: &Path, offset: u64, byte: u8) {
    use std::io::{Seek, SeekFrom};
    let mut f: File = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("opening the file to edit");
    f.seek(SeekFrom::Start(offset)).expect("seeking");
    f.write_all(&[byte]).expect("writing the byte");
    f.sync_all().expect("syncing");
}

/// The `name` fields of a JSON list, sorted.
pub fn names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|x| x["name"].as_str().expect("a name").to_owned())
        .collect();
    v.sort();
    v
}
