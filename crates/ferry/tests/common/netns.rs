//! Two network namespaces joined by a veth pair: two sites on one machine
//! with a real link between them, for tests that need the sites apart (a
//! proxy in one path, nothing else reaching around it).
//!
//! Each namespace has its loopback up and one end of the veth,
//! `10.231.X.1/24` in `a`, `10.231.X.2/24` in `b`. Names carry the test
//! process's pid and a counter (`ferry-PID-N-a`), so runs side by side never
//! meet; dropping the pair deletes both namespaces, and the veth with them,
//! also when the test panics. Namespaces left by a run that was killed
//! (whose pid is gone) are deleted by the next one.
//!
//! Needs root and `ip` (iproute2). When a namespace cannot be made the test
//! fails and says why: it never passes without having run.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// What every namespace made here is called first.
const PREFIX: &str = "ferry-";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Two namespaces and the veth between them; deleted when dropped.
pub struct NetnsPair {
    /// The first namespace's name.
    pub a: String,
    /// The second namespace's name.
    pub b: String,
    /// `a`'s end of the link, an IPv4 address.
    pub addr_a: String,
    /// `b`'s end of the link.
    pub addr_b: String,
    /// The veth end made in the root namespace before it moves to `a`.
    veth_a: String,
}

impl NetnsPair {
    /// Makes the namespaces and the link, or panics saying what failed.
    pub fn create() -> NetnsPair {
        remove_stale();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // an interface name has at most 15 bytes: "fv" + pid (<= 7) + "x" + n + "a"
        let veth_a = format!("fv{pid}x{n}a");
        let veth_b = format!("fv{pid}x{n}b");
        assert!(veth_a.len() <= 15, "interface name {veth_a} is too long");
        let subnet = format!("10.231.{}", (pid + n) % 254 + 1);
        // made before the first step, so a failure part way removes what was made
        let pair = NetnsPair {
            a: format!("{PREFIX}{pid}-{n}-a"),
            b: format!("{PREFIX}{pid}-{n}-b"),
            addr_a: format!("{subnet}.1"),
            addr_b: format!("{subnet}.2"),
            veth_a: veth_a.clone(),
        };
        ip(&["netns", "add", &pair.a]);
        ip(&["netns", "add", &pair.b]);
        ip(&[
            "link", "add", &veth_a, "type", "veth", "peer", "name", &veth_b,
        ]);
        for (ns, dev, addr) in [
            (&pair.a, &veth_a, &pair.addr_a),
            (&pair.b, &veth_b, &pair.addr_b),
        ] {
            ip(&["link", "set", dev, "netns", ns]);
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Processes still inside keep a namespace alive until they exit; the
        // name goes now. The veth goes with its namespace; the root-namespace
        // delete is for a failure before it moved.
        for ns in [&self.a, &self.b] {
            let _ = quiet_ip(&["netns", "delete", ns]);
        }
        let _ = quiet_ip(&["link", "delete", &self.veth_a]);
    }
}

/// Runs `ip ARGS`; panics with what it said when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!(
            "cannot run `ip` ({e}): this test needs iproute2 (scripts/test.sh installs it) and root"
        )
    });
    assert!(
        out.status.success(),
        "`ip {}` failed: {}\nthis test needs network namespaces and veth links: run it as root (CAP_SYS_ADMIN, CAP_NET_ADMIN) on a kernel with them",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

fn quiet_ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Deletes namespaces this helper made in runs whose process is gone (a
/// killed test does not drop its pair).
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = quiet_ip(&["netns", "delete", name]);
        }
    }
}
