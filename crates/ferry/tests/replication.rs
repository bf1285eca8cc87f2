//! Replication end to end: two real `ferryd`s on loopback, paired, a group
//! replicated from A to B; every recovery point is compared block for block
//! with the source snapshot it came from by `qemu-img compare` over NBD.
//!
//! Build the daemon first: `cargo build --workspace --bins`.

mod common;

use common::Daemon;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e} (scripts/test.sh installs it)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn qemu_io(uri: &str, cmds: &[&str]) {
    let mut args = vec!["-f", "raw"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(uri);
    let (ok, text) = run("qemu-io", &args);
    assert!(ok && !text.contains("failed"), "qemu-io {args:?}:\n{text}");
}

/// Names both sites and pairs B with A's token.
fn pair(a: &Daemon, b: &Daemon) {
    a.ferry(&["site", "init", "--name", "site-a"]).ok();
    b.ferry(&["site", "init", "--name", "site-b"]).ok();
    let t = a.ferry(&["partner", "token"]).ok().stdout.trim().to_owned();
    b.ferry(&["partner", "pair", &t]).ok();
}

/// Waits (at most two minutes) until `f` holds; panics with `what` if not.
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn points(d: &Daemon, group: &str) -> Vec<String> {
    let out = d.ferry(&["-o", "json", "recovery-point", "list", group]);
    if out.code != 0 {
        return Vec::new();
    }
    out.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Exports `group@snap` slot `slot` on `d` and returns its NBD URI.
fn export_point(d: &Daemon, group: &str, snap: &str, slot: &str) -> String {
    let name = format!("x-{group}-{snap}-{slot}");
    d.ferry(&[
        "export",
        "add",
        &name,
        "--snapshot",
        &format!("{group}@{snap}"),
        "--slot",
        slot,
    ])
    .ok();
    format!("nbd://{}/{name}", d.nbd)
}

/// The recovery point on B equals the snapshot on A, block for block.
fn same(a: &Daemon, b: &Daemon, group: &str, snap: &str, slot: &str) {
    let ua = export_point(a, group, snap, slot);
    let ub = export_point(b, group, snap, slot);
    let (ok, text) = run("qemu-img", &["compare", "-f", "raw", "-F", "raw", &ua, &ub]);
    assert!(
        ok,
        "{group}@{snap} slot {slot} differs between sites:\n{text}"
    );
    assert!(text.contains("Images are identical"), "{text}");
}

/// `ferry ARGS` fails (any non-zero code) and says `needle` on stderr.
fn refused(d: &Daemon, args: &[&str], needle: &str) {
    let out = d.ferry(args);
    assert_ne!(out.code, 0, "{args:?} succeeded: {}", out.stdout);
    assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
}

fn status(d: &Daemon, group: &str) -> Value {
    d.json(&["replication", "status", group])[0].clone()
}

#[test]
fn cycles_ship_only_changes_into_recovery_points_equal_to_their_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let a = Daemon::start(&dir.path().join("a"));
    let b = Daemon::start(&dir.path().join("b"));
    pair(&a, &b);
    a.ferry(&["volume", "create", "vm1-system", "--size", "64M"])
        .ok();
    a.ferry(&["volume", "create", "vm1-data", "--size", "32M"])
        .ok();
    a.ferry(&[
        "group",
        "create",
        "vm1",
        "--slot",
        "system=vm1-system",
        "--slot",
        "data=vm1-data",
    ])
    .ok();
    for v in ["vm1-system", "vm1-data"] {
        a.ferry(&["export", "add", v, "--volume", v]).ok();
    }
    let sys = format!("nbd://{}/vm1-system", a.nbd);
    let data = format!("nbd://{}/vm1-data", a.nbd);
    // 8 MiB of data, a zeroed range and untouched space
    qemu_io(&sys, &["write -P 0x11 0 8M", "write -z 16M 1M"]);
    qemu_io(&data, &["write -P 0x22 4096 12k", "write -P 0x33 31M 1M"]);

    // bad input is refused with clear errors and records nothing
    refused(
        &a,
        &["replication", "enable", "vm1", "--partner", "nobody"],
        "partner",
    );
    refused(
        &a,
        &[
            "replication",
            "enable",
            "vm1",
            "--partner",
            "site-b",
            "--interval=-1",
        ],
        "--interval",
    );
    refused(
        &a,
        &[
            "replication",
            "enable",
            "vm1",
            "--partner",
            "site-b",
            "--bandwidth=-1",
        ],
        "--bandwidth",
    );
    refused(
        &a,
        &["replication", "enable", "no-such", "--partner", "site-b"],
        "group",
    );
    refused(
        &a,
        &["replication", "enable", "Bad/Name", "--partner", "site-b"],
        "group",
    );
    assert_eq!(a.json(&["replication", "status"]), serde_json::json!([]));

    // the first cycle starts at once: the initial copy
    a.ferry(&[
        "replication",
        "enable",
        "vm1",
        "--partner",
        "site-b",
        "--interval",
        "1h",
    ])
    .ok()
    .says("vm1");
    wait_for("the initial copy's recovery point", || {
        points(&b, "vm1").len() == 1
    });
    wait_for("the acknowledgement", || {
        status(&a, "vm1")["last_point"] == "repl-1"
    });
    let p1 = points(&b, "vm1")[0].clone();
    assert_eq!(p1, "repl-1");
    same(&a, &b, "vm1", "repl-1", "system");
    same(&a, &b, "vm1", "repl-1", "data");
    let s1 = status(&a, "vm1");
    assert_eq!(s1["health"], "normal", "{s1}");
    let sent1 = s1["stats"]["bytes_sent"].as_u64().unwrap();
    let changed1 = s1["stats"]["bytes_changed"].as_u64().unwrap();
    // only allocated blocks travel: 8 MiB + 1 MiB zeroed + 12 KiB + 1 MiB
    assert!(
        (10 * 1024 * 1024..=11 * 1024 * 1024).contains(&changed1),
        "{changed1}"
    );
    // zstd on a repeated pattern: far fewer bytes on the wire
    assert!(sent1 < changed1 / 4, "sent {sent1} for {changed1} changed");
    // the replica's group is there, as a replica
    let on_b = status(&b, "vm1");
    assert_eq!(on_b["role"], "replica");
    assert_eq!(on_b["last_point"], "repl-1");

    // a 1 MiB change: the next cycle ships about that
    qemu_io(&sys, &["write -P 0x44 40M 1M"]);
    a.ferry(&["replication", "run", "vm1"]).ok();
    wait_for("the second recovery point", || points(&b, "vm1").len() == 2);
    wait_for("the second acknowledgement", || {
        status(&a, "vm1")["last_point"] == "repl-2"
    });
    same(&a, &b, "vm1", "repl-2", "system");
    same(&a, &b, "vm1", "repl-2", "data");
    let s2 = status(&a, "vm1");
    let changed2 = s2["stats"]["bytes_changed"].as_u64().unwrap() - changed1;
    assert_eq!(changed2, 1024 * 1024, "{s2}");
    // the source keeps only the acknowledged base; the replica keeps both
    let snaps: Vec<String> = a
        .json(&["snapshot", "list", "vm1"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(snaps, ["repl-2"]);
    assert_eq!(points(&b, "vm1"), ["repl-1", "repl-2"]);
    // the base is kept: its deletion is refused, and so is the group's
    refused(&a, &["snapshot", "delete", "vm1@repl-2"], "replication");
    refused(&a, &["group", "delete", "vm1"], "replicated");

    // paused: no cycle starts, even when asked
    a.ferry(&["replication", "pause", "vm1"]).ok();
    assert_eq!(status(&a, "vm1")["state"], "paused");
    qemu_io(&sys, &["write -P 0x55 50M 4k"]);
    a.ferry(&["replication", "run", "vm1"]).ok();
    a.ferry(&["replication", "resume", "vm1"]).ok();
    wait_for("the third recovery point", || points(&b, "vm1").len() == 3);
    wait_for("the third acknowledgement", || {
        status(&a, "vm1")["last_point"] == "repl-3"
    });
    same(&a, &b, "vm1", "repl-3", "system");
    let m = a.json(&["replication", "measure", "vm1"]);
    assert_eq!(m["cycles_ok"], 3, "{m}");
    assert!(m["compression_ratio"].as_f64().unwrap() > 4.0, "{m}");

    // disabling at the source drops its cycle snapshot; B keeps its points
    a.ferry(&["replication", "disable", "vm1"]).ok();
    assert_eq!(a.json(&["snapshot", "list", "vm1"]), serde_json::json!([]));
    assert_eq!(points(&b, "vm1").len(), 3);
}

#[test]
fn a_cycle_cut_by_killing_the_replica_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let a = Daemon::start(&dir.path().join("a"));
    let db = dir.path().join("b");
    let b = Daemon::start(&db);
    pair(&a, &b);
    let b_partner = b.partner.clone();
    a.ferry(&["volume", "create", "vm2-disk", "--size", "64M"])
        .ok();
    a.ferry(&["group", "create", "vm2", "--slot", "disk=vm2-disk"])
        .ok();
    a.ferry(&["export", "add", "vm2-disk", "--volume", "vm2-disk"])
        .ok();
    let disk = format!("nbd://{}/vm2-disk", a.nbd);
    qemu_io(&disk, &["write -P 0x61 0 24M", "write -P 0x62 24M 24M"]);
    // 48 MiB at 4 MB/s, uncompressed: about 12 s on the wire
    a.ferry(&[
        "replication",
        "enable",
        "vm2",
        "--partner",
        "site-b",
        "--interval",
        "1h",
        "--compression",
        "off",
        "--bandwidth",
        "4MB",
    ])
    .ok();
    let sent = |d: &Daemon| {
        status(d, "vm2")["stats"]["bytes_sent"]
            .as_u64()
            .unwrap_or(0)
    };
    // past the replica's first checkpoint (16 MiB) and then some
    wait_for("20 MiB on the wire", || sent(&a) > 20 << 20);
    drop(b); // SIGKILL, mid-cycle
    assert!(points(&a, "vm2").is_empty());
    let b = Daemon::start_with(&db, &["--partner-listen", &b_partner]);
    wait_for("the recovery point after the restart", || {
        points(&b, "vm2").len() == 1
    });
    wait_for("the acknowledgement", || {
        status(&a, "vm2")["last_point"] == "repl-1"
    });
    same(&a, &b, "vm2", "repl-1", "disk");
    assert!(
        a.log_text()
            .contains("resuming cycle 1 where the replica stopped"),
        "the cycle started over instead of resuming"
    );
    // resumed, not restarted: less than the first attempt plus a full copy
    let s = status(&a, "vm2");
    let total = s["stats"]["bytes_sent"].as_u64().unwrap();
    assert!(total < (20 << 20) + (48 << 20), "{s}");
    assert!(s["stats"]["cycles_failed"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["health"], "normal", "{s}");
}
