//! The NBD interop suites' fixture: the real ferryd serving one read-write
//! export, `disk` (volume `disk`, slot `system` of group `vm`), made with
//! the real `ferry` CLI; and the client programs run the same way in every
//! suite.

use std::path::Path;
use std::process::{Command, Output};

use ferry_store::{Store, VolumeHandle};

use super::Daemon;

pub const MIB: u64 = 1 << 20;

/// ferryd with export `disk`; stopped when dropped.
pub struct Served {
    pub daemon: Daemon,
    /// A scratch directory for the test's files (the store is in `data/`).
    pub dir: tempfile::TempDir,
}

impl Served {
    /// ferryd serving a new volume of `size` bytes as export `disk`.
    pub fn new(size: u64) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let daemon = Daemon::start(&dir.path().join("data"));
        let size = size.to_string();
        daemon
            .ferry(&["volume", "create", "disk", "--size", &size])
            .ok();
        daemon
            .ferry(&["group", "create", "vm", "--slot", "system=disk"])
            .ok();
        daemon
            .ferry(&["export", "add", "disk", "--volume", "disk"])
            .ok();
        Served { daemon, dir }
    }

    /// `HOST:PORT` of the NBD listener.
    pub fn nbd(&self) -> &str {
        &self.daemon.nbd
    }

    pub fn host(&self) -> &str {
        self.nbd().rsplit_once(':').expect("HOST:PORT").0
    }

    pub fn port(&self) -> &str {
        self.nbd().rsplit_once(':').expect("HOST:PORT").1
    }

    pub fn uri(&self, export: &str) -> String {
        format!("nbd://{}/{export}", self.nbd())
    }

    pub fn work(&self) -> &Path {
        self.dir.path()
    }

    /// Takes snapshot `snapshot` of group `vm` and exports its `disk`
    /// (slot `system`) as `name`, read-only.
    pub fn export_snapshot(&self, name: &str, snapshot: &str) {
        self.daemon
            .ferry(&["snapshot", "create", "vm", "--name", snapshot])
            .ok();
        let at = format!("vm@{snapshot}");
        self.daemon
            .ferry(&["export", "add", name, "--snapshot", &at, "--slot", "system"])
            .ok();
    }

    /// Stops ferryd (SIGTERM) and opens its store: the bytes the clients
    /// wrote are checked in the engine's files, not in what the server
    /// said. Returns the store and volume `disk`.
    pub fn stop_and_open(mut self) -> (Store, VolumeHandle, tempfile::TempDir) {
        let (status, _) = self.daemon.terminate();
        assert!(status.success(), "ferryd exited with {status}");
        let store = Store::open(self.dir.path().join("data")).expect("opening ferryd's store");
        let volume = store.volume("disk").unwrap();
        (store, volume, self.dir)
    }
}

/// Runs a program; panics with its output unless it succeeds.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = run_raw(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a program (Debian's python first on the path, for nbdsh).
pub fn run_raw(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env(
            "PATH",
            format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default()),
        )
        .output()
        .unwrap_or_else(|e| {
            panic!("running {program}: {e} (is it installed? scripts/test.sh installs it)")
        })
}

/// qemu-io against an NBD URI: every command must succeed and verify.
pub fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    qemu_io_args(&["-f", "raw"], uri, cmds)
}

/// qemu-io opening the export read-only.
pub fn qemu_io_ro(uri: &str, cmds: &[&str]) -> String {
    qemu_io_args(&["-r", "-f", "raw"], uri, cmds)
}

fn qemu_io_args(opts: &[&str], uri: &str, cmds: &[&str]) -> String {
    let mut args = opts.to_vec();
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(uri);
    let out = run("qemu-io", &args);
    for bad in ["failed", "error", "Error", "mismatch"] {
        assert!(!out.contains(bad), "qemu-io {cmds:?} said {bad:?}:\n{out}");
    }
    out
}
