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

fn snapshots(d: &Daemon, group: &str) -> Vec<String> {
    d.json(&["snapshot", "list", group])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

fn status(d: &Daemon, group: &str) -> Value {
    d.json(&["replication", "status", group])[0].clone()
}

/// Makes group `group` on `a` with one volume `GROUP-disk` of `size` in
/// slot `slot`, exported under the volume's name; returns its NBD URI.
fn group_with_disk(a: &Daemon, group: &str, size: &str, slot: &str) -> String {
    let v = format!("{group}-disk");
    a.ferry(&["volume", "create", &v, "--size", size]).ok();
    a.ferry(&["group", "create", group, "--slot", &format!("{slot}={v}")])
        .ok();
    a.ferry(&["export", "add", &v, "--volume", &v]).ok();
    format!("nbd://{}/{v}", a.nbd)
}

/// `ferry replication enable GROUP --partner site-b` with `more` flags.
fn enable(a: &Daemon, group: &str, more: &[&str]) {
    let mut args = vec!["replication", "enable", group, "--partner", "site-b"];
    args.extend(more);
    a.ferry(&args).ok();
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
    // both sides keep the same points (the last 4 by default)
    assert_eq!(snapshots(&a, "vm1"), ["repl-1", "repl-2"]);
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

    // enabled again: no common point, but the replica's latest point is
    // compared region by region (1 MiB) and only what differs travels
    let before = m["bytes_changed"].as_u64().unwrap();
    qemu_io(&sys, &["write -P 0x66 20M 1M"]);
    a.ferry(&[
        "replication",
        "enable",
        "vm1",
        "--partner",
        "site-b",
        "--interval",
        "1h",
    ])
    .ok();
    wait_for("the resync's point", || points(&b, "vm1").len() == 4);
    wait_for("its acknowledgement", || {
        status(&a, "vm1")["last_point"].is_string()
    });
    let p4 = status(&a, "vm1")["last_point"].as_str().unwrap().to_owned();
    // numbering goes on where it stopped, so the names stay the same on
    // both sides (B still holds repl-1 to repl-3)
    assert_eq!(p4, "repl-4");
    let b4 = points(&b, "vm1").last().unwrap().clone();
    assert_eq!(b4, p4);
    for slot in ["system", "data"] {
        let ua = export_point(&a, "vm1", &p4, slot);
        let ub = export_point(&b, "vm1", &b4, slot);
        let (ok, text) = run("qemu-img", &["compare", "-f", "raw", "-F", "raw", &ua, &ub]);
        assert!(ok, "{slot} differs after the resync:\n{text}");
    }
    let m = a.json(&["replication", "measure", "vm1"]);
    assert_eq!(
        m["bytes_changed"].as_u64().unwrap() - before,
        1 << 20,
        "{m}"
    );
    assert!(
        a.log_text().contains("resync: 1 of 96 regions differ"),
        "no resync in the log"
    );
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
    // 48 MiB at 4 MB/s (the partner's cap; the group's own is higher),
    // uncompressed: about 12 s on the wire
    refused(
        &a,
        &["partner", "limit", "site-b", "--bandwidth=-1"],
        "--bandwidth",
    );
    let lim = a.json(&["partner", "limit", "site-b", "--bandwidth", "4MB"]);
    assert_eq!(lim["bandwidth"], 4_000_000, "{lim}");
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
        "40MB",
    ])
    .ok();
    let sent = |d: &Daemon| {
        status(d, "vm2")["stats"]["bytes_sent"]
            .as_u64()
            .unwrap_or(0)
    };
    let pending = |d: &Daemon| {
        status(d, "vm2")["stats"]["pending_bytes"]
            .as_u64()
            .unwrap_or(0)
    };
    wait_for("4 MiB on the wire", || sent(&a) > 4 << 20);
    let early = pending(&a);
    assert!(early > 0 && early < 48 << 20, "pending {early}");
    // past the replica's first checkpoint (16 MiB) and then some
    wait_for("20 MiB on the wire", || sent(&a) > 20 << 20);
    let later = pending(&a);
    assert!(
        later + (12 << 20) <= early,
        "pending bytes count down as the cycle sends: {early} then {later}"
    );
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

/// `qemu-io -r`: reads of a read-only export.
fn qemu_io_ro(uri: &str, cmds: &[&str]) {
    let mut args = vec!["-r", "-f", "raw"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(uri);
    let (ok, text) = run("qemu-io", &args);
    assert!(ok && !text.contains("failed"), "qemu-io {args:?}:\n{text}");
}

/// `qemu-io` that must fail (a write to a read-only export).
fn qemu_io_refused(uri: &str, cmd: &str) {
    let (ok, text) = run("qemu-io", &["-f", "raw", "-c", cmd, uri]);
    assert!(
        !ok || text.contains("failed") || text.contains("ermission"),
        "{cmd} on {uri} was accepted:\n{text}"
    );
}

#[test]
fn failover_drills_test_unplanned_to_an_older_point_reverse_then_planned() {
    let dir = tempfile::tempdir().unwrap();
    let a = Daemon::start(&dir.path().join("a"));
    let b = Daemon::start(&dir.path().join("b"));
    pair(&a, &b);
    a.ferry(&["volume", "create", "vm3-disk", "--size", "32M"])
        .ok();
    a.ferry(&["group", "create", "vm3", "--slot", "disk=vm3-disk"])
        .ok();
    a.ferry(&["export", "add", "vm3-disk", "--volume", "vm3-disk"])
        .ok();
    let a_disk = format!("nbd://{}/vm3-disk", a.nbd);
    let b_disk = format!("nbd://{}/vm3-disk", b.nbd);
    qemu_io(&a_disk, &["write -P 0x01 0 4M"]);
    a.ferry(&[
        "replication",
        "enable",
        "vm3",
        "--partner",
        "site-b",
        "--interval",
        "1h",
    ])
    .ok();
    // One cycle from `src` to `dst`, run now; returns the point's name at
    // each site (they differ when `dst` already holds a snapshot of that
    // name, from when the direction was the other way).
    let cycle = |src: &Daemon, dst: &Daemon| {
        let before = status(src, "vm3")["last_point_created"].as_u64();
        src.ferry(&["replication", "run", "vm3"]).ok();
        wait_for("the acknowledgement", || {
            let s = status(src, "vm3");
            s["pending_cycle"].is_null() && s["last_point_created"].as_u64() > before
        });
        let s = status(src, "vm3");
        let created = s["last_point_created"].as_u64().unwrap();
        let at_dst = dst.json(&["recovery-point", "list", "vm3"]);
        let dname = at_dst
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["created"].as_u64() == Some(created))
            .unwrap_or_else(|| panic!("{at_dst} lacks the point of {s}"))["name"]
            .as_str()
            .unwrap()
            .to_owned();
        (s["last_point"].as_str().unwrap().to_owned(), dname)
    };
    let same_as = |src: &Daemon, sname: &str, dst: &Daemon, dname: &str| {
        let us = export_point(src, "vm3", sname, "disk");
        let ud = export_point(dst, "vm3", dname, "disk");
        let (ok, text) = run("qemu-img", &["compare", "-f", "raw", "-F", "raw", &us, &ud]);
        assert!(ok, "{sname} and {dname} differ:\n{text}");
    };
    wait_for("the initial copy", || points(&b, "vm3").len() == 1);
    wait_for("its acknowledgement", || {
        status(&a, "vm3")["last_point"] == "repl-1"
    });

    // a replica's volumes take no client writes
    b.ferry(&["export", "add", "vm3-disk", "--volume", "vm3-disk"])
        .ok();
    qemu_io_refused(&b_disk, "write -P 0x09 0 4k");

    // test failover while the primary writes and cycles go on: fio writes
    // the disk's upper half at A all along
    let mut writer = Command::new("fio")
        .args([
            "--name=primary",
            "--ioengine=nbd",
            &format!("--uri={a_disk}"),
            "--rw=randwrite",
            "--bs=64k",
            "--offset=16M",
            "--size=16M",
            "--time_based",
            "--runtime=120",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("running fio (scripts/test.sh installs it)");
    refused(&b, &["failover", "test", "vm3", "--point", "nope"], "nope");
    let t = b.json(&["failover", "test", "vm3", "--point", "repl-1"]);
    assert_eq!(t["exports"], serde_json::json!(["vm3-test-disk"]), "{t}");
    let test_disk = format!("nbd://{}/vm3-test-disk", b.nbd);
    qemu_io(&test_disk, &["write -P 0x0f 0 64k"]);
    qemu_io(&a_disk, &["write -P 0x02 4M 1M"]);
    let p2 = cycle(&a, &b);
    assert_eq!(p2, ("repl-2".to_owned(), "repl-2".to_owned()));
    assert!(
        writer.try_wait().unwrap().is_none(),
        "fio stopped before the cycle ended"
    );
    same(&a, &b, "vm3", "repl-2", "disk");
    // the test copy kept its own writes and its point's data
    qemu_io(
        &test_disk,
        &[
            "read -P 0x0f 0 64k",
            "read -P 0x01 64k 64k",
            "read -P 0 4M 4k",
        ],
    );
    b.ferry(&["failover", "test", "vm3", "--cleanup"]).ok();
    refused(&b, &["group", "show", "vm3-test"], "vm3-test");
    assert!(
        writer.try_wait().unwrap().is_none(),
        "fio stopped before the cleanup"
    );
    writer.kill().unwrap();
    writer.wait().unwrap();

    // a third point, then late writes at the primary that never replicate
    qemu_io(&a_disk, &["write -P 0x03 5M 1M"]);
    assert_eq!(cycle(&a, &b).1, "repl-3");
    a.ferry(&["replication", "pause", "vm3"]).ok();
    qemu_io(&a_disk, &["write -P 0x04 6M 1M", "flush"]);
    // the primary is gone
    let mut a = a;
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&a.kill()),
        Some(9)
    );

    // unplanned failover to the older repl-2: B runs from it and takes writes
    refused(
        &b,
        &["failover", "unplanned", "vm3", "--point", "nope"],
        "nope",
    );
    assert_eq!(status(&b, "vm3")["state"], "replica");
    let u = b.json(&["failover", "unplanned", "vm3", "--point", "repl-2"]);
    assert_eq!(u["point"], "repl-2", "{u}");
    let s = status(&b, "vm3");
    assert_eq!(s["state"], "failed over", "{s}");
    assert!(s["failed_over"].as_u64().is_some(), "{s}");
    qemu_io(
        &b_disk,
        &[
            "read -P 0x02 4M 1M",
            "read -P 0 5M 1M",
            "write -P 0x05 7M 1M",
        ],
    );

    // the old primary comes back (on other ports: it tells B where)
    let a = Daemon::start(&dir.path().join("a"));
    let a_disk = format!("nbd://{}/vm3-disk", a.nbd);
    wait_for("B to learn A's new address", || {
        b.json(&["partner", "show", "site-a"])["address"] == a.partner.as_str()
    });
    // reverse: A keeps its late writes as a snapshot and becomes B's replica
    let d = b.json(&["replication", "reverse", "vm3"]);
    let s = status(&b, "vm3");
    assert_ne!(s["state"], "failed over", "{s}");
    assert!(s["failed_over"].is_null(), "{s}");
    assert_eq!(d["common"], "repl-2", "{d}");
    let kept = d["kept"]
        .as_str()
        .expect("A wrote after the common point")
        .to_owned();
    let kept_uri = export_point(&a, "vm3", &kept, "disk");
    qemu_io_ro(&kept_uri, &["read -P 0x03 5M 1M", "read -P 0x04 6M 1M"]);
    assert_eq!(status(&a, "vm3")["role"], "replica");
    qemu_io_refused(&a_disk, "write -P 0x09 0 4k");
    // B's next cycle ships only what changed since repl-2
    let before = status(&b, "vm3")["stats"]["bytes_changed"]
        .as_u64()
        .unwrap_or(0);
    let (bs, ad) = cycle(&b, &a);
    assert_eq!(bs, ad, "a point has one name on both sides");
    same_as(&b, &bs, &a, &ad);
    let changed = status(&b, "vm3")["stats"]["bytes_changed"]
        .as_u64()
        .unwrap()
        - before;
    assert!(
        changed <= 2 << 20,
        "the reverse cycle shipped {changed} bytes"
    );
    qemu_io_ro(&a_disk, &["read -P 0x05 7M 1M", "read -P 0 6M 1M"]);

    // planned failover back to A: nothing acknowledged at B is lost
    qemu_io(&b_disk, &["write -P 0x06 8M 1M"]);
    let r = b.json(&["failover", "planned", "vm3"]);
    assert_eq!(r["partner"], "site-a", "{r}");
    assert_eq!(r["demotion"]["kept"], Value::Null, "{r}");
    qemu_io(
        &a_disk,
        &[
            "read -P 0x06 8M 1M",
            "read -P 0x05 7M 1M",
            "write -P 0x07 9M 1M",
        ],
    );
    assert_eq!(status(&b, "vm3")["role"], "replica");
    qemu_io_refused(&b_disk, "write -P 0x09 0 4k");
    // and replication runs from A again
    let (asn, bd) = cycle(&a, &b);
    assert_eq!(asn, bd, "a point has one name on both sides");
    same_as(&a, &asn, &b, &bd);
}

#[test]
fn a_seed_file_carries_the_initial_copy_and_the_network_sends_only_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let a = Daemon::start(&dir.path().join("a"));
    let b = Daemon::start(&dir.path().join("b"));
    pair(&a, &b);
    a.ferry(&["volume", "create", "vm4-disk", "--size", "64M"])
        .ok();
    a.ferry(&["group", "create", "vm4", "--slot", "disk=vm4-disk"])
        .ok();
    a.ferry(&["export", "add", "vm4-disk", "--volume", "vm4-disk"])
        .ok();
    let disk = format!("nbd://{}/vm4-disk", a.nbd);
    qemu_io(&disk, &["write -P 0x41 0 16M", "write -P 0x42 32M 8M"]);
    a.ferry(&[
        "replication",
        "enable",
        "vm4",
        "--partner",
        "site-b",
        "--interval",
        "1h",
        "--compression",
        "off",
        "--paused",
    ])
    .ok();
    assert_eq!(status(&a, "vm4")["state"], "paused");
    let seed = dir.path().join("vm4.seed");
    let seed_s = seed.to_str().unwrap();
    // a relative path is made absolute by the CLI; junk is refused
    refused(
        &a,
        &["replication", "seed", "export", "vm4", "--file", "/"],
        "/",
    );
    let s = a.json(&["replication", "seed", "export", "vm4", "--file", seed_s]);
    assert_eq!(s["point"], "repl-1", "{s}");
    assert_eq!(s["changed_bytes"], 24 << 20, "{s}");
    assert_eq!(
        std::fs::metadata(&seed).unwrap().len(),
        s["bytes"].as_u64().unwrap()
    );
    // never over an existing file
    refused(
        &a,
        &["replication", "seed", "export", "vm4", "--file", seed_s],
        "exist",
    );

    // a truncated seed is refused and makes no point
    let cut = dir.path().join("vm4.cut");
    let whole = std::fs::read(&seed).unwrap();
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    refused(
        &b,
        &[
            "replication",
            "seed",
            "import",
            "vm4",
            "--partner",
            "site-a",
            "--file",
            cut.to_str().unwrap(),
        ],
        "end record",
    );
    assert!(points(&b, "vm4").is_empty());
    refused(
        &b,
        &[
            "replication",
            "seed",
            "import",
            "vm4",
            "--partner",
            "nobody",
            "--file",
            seed_s,
        ],
        "partner",
    );
    // the whole seed makes the first point (resuming what the cut one left)
    let p = b.json(&[
        "replication",
        "seed",
        "import",
        "vm4",
        "--partner",
        "site-a",
        "--file",
        seed_s,
    ]);
    assert_eq!(p["name"], "repl-1", "{p}");
    assert_eq!(points(&b, "vm4"), ["repl-1"]);
    same(&a, &b, "vm4", "repl-1", "disk");

    // resumed: the source finds the point there and sends nothing of it
    a.ferry(&["replication", "resume", "vm4"]).ok();
    wait_for("the seed's acknowledgement", || {
        status(&a, "vm4")["last_point"] == "repl-1"
    });
    let s1 = status(&a, "vm4");
    assert_eq!(s1["stats"]["bytes_changed"], 0, "{s1}");
    // then a 1 MiB change travels as usual
    qemu_io(&disk, &["write -P 0x43 8M 1M"]);
    a.ferry(&["replication", "run", "vm4"]).ok();
    wait_for("the next point", || points(&b, "vm4").len() == 2);
    wait_for("its acknowledgement", || {
        status(&a, "vm4")["last_point"] == "repl-2"
    });
    same(&a, &b, "vm4", "repl-2", "disk");
    assert_eq!(status(&a, "vm4")["stats"]["bytes_changed"], 1 << 20);

    // an initial copy scheduled for later waits, even when asked to run
    a.ferry(&["volume", "create", "vm5-disk", "--size", "4M"])
        .ok();
    a.ferry(&["group", "create", "vm5", "--slot", "disk=vm5-disk"])
        .ok();
    refused(
        &a,
        &[
            "replication",
            "enable",
            "vm5",
            "--partner",
            "site-b",
            "--start-at",
            "25:00",
        ],
        "--start-at",
    );
    a.ferry(&[
        "replication",
        "enable",
        "vm5",
        "--partner",
        "site-b",
        "--start-at",
        "+1h",
    ])
    .ok();
    a.ferry(&["replication", "run", "vm5"]).ok();
    let s5 = status(&a, "vm5");
    assert_eq!(s5["state"], "scheduled", "{s5}");
    assert!(s5["settings"]["start_at"].as_u64().is_some(), "{s5}");
    // and starts by itself once its time comes, not before
    group_with_disk(&a, "vm7", "4M", "disk");
    enable(&a, "vm7", &["--interval", "1h", "--start-at", "+3s"]);
    let s7 = status(&a, "vm7");
    assert_eq!(s7["state"], "scheduled", "{s7}");
    let start_at = s7["settings"]["start_at"].as_u64().unwrap();
    wait_for("vm7's initial copy", || {
        status(&a, "vm7")["last_point"].is_string()
    });
    let s7 = status(&a, "vm7");
    assert!(
        s7["last_point_created"].as_u64().unwrap() >= start_at,
        "the copy began before --start-at: {s7}"
    );
    same(&a, &b, "vm7", "repl-1", "disk");
}

#[test]
fn application_consistent_points_run_the_group_hooks_and_fall_back_to_crash() {
    let dir = tempfile::tempdir().unwrap();
    let a = Daemon::start(&dir.path().join("a"));
    let b = Daemon::start(&dir.path().join("b"));
    pair(&a, &b);
    a.ferry(&["volume", "create", "vm6-disk", "--size", "4M"])
        .ok();
    a.ferry(&["group", "create", "vm6", "--slot", "disk=vm6-disk"])
        .ok();
    let log = dir.path().join("hooks.log");
    let log_s = log.to_str().unwrap();
    let pre = format!("echo pre-$FERRY_GROUP >> {log_s}");
    let post = format!("echo post-$FERRY_GROUP >> {log_s}");
    refused(
        &a,
        &[
            "group",
            "hooks",
            "vm6",
            "--pre",
            &pre,
            "--post",
            &post,
            "--timeout",
            "0",
        ],
        "timeout",
    );
    a.ferry(&["group", "hooks", "vm6", "--pre", &pre, "--post", &post])
        .ok();
    assert_eq!(
        a.json(&["group", "show", "vm6"])["hooks"]["timeout_secs"],
        30
    );
    // ferry's own tags cannot be set by hand
    refused(&a, &["group", "tag", "vm6", "ferry.frozen=yes"], "ferry.");
    a.ferry(&[
        "replication",
        "enable",
        "vm6",
        "--partner",
        "site-b",
        "--interval",
        "1h",
        "--app-every",
        "1",
    ])
    .ok();
    wait_for("the first point", || points(&b, "vm6").len() == 1);
    let kinds = |d: &Daemon| -> Vec<String> {
        d.json(&["recovery-point", "list", "vm6"])
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(kinds(&b), ["app"]);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "pre-vm6\npost-vm6\n"
    );
    wait_for("its acknowledgement", || {
        status(&a, "vm6")["last_point"] == "repl-1"
    });
    assert_eq!(status(&a, "vm6")["stats"]["last_consistency"], "app");

    // a failing freeze: the point is crash-consistent, says so, and the
    // thaw still runs
    a.ferry(&["group", "hooks", "vm6", "--pre", "exit 3", "--post", &post])
        .ok();
    a.ferry(&["replication", "run", "vm6"]).ok();
    wait_for("the second point", || points(&b, "vm6").len() == 2);
    assert_eq!(kinds(&b), ["app", "crash"]);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "pre-vm6\npost-vm6\npost-vm6\n"
    );
    wait_for("its acknowledgement", || {
        status(&a, "vm6")["last_point"] == "repl-2"
    });
    let note = status(&a, "vm6")["stats"]["last_consistency"].clone();
    assert!(
        note.as_str()
            .unwrap()
            .starts_with("crash: the pre hook failed"),
        "{note}"
    );

    // --app-every 2: every second point runs the hooks, the others do not
    group_with_disk(&a, "vm9", "4M", "disk");
    let log9 = dir.path().join("hooks9.log");
    let log9_s = log9.to_str().unwrap();
    a.ferry(&[
        "group",
        "hooks",
        "vm9",
        "--pre",
        &format!("echo pre >> {log9_s}"),
        "--post",
        &format!("echo post >> {log9_s}"),
    ])
    .ok();
    enable(&a, "vm9", &["--interval", "1h", "--app-every", "2"]);
    for n in 1..=4 {
        if n > 1 {
            a.ferry(&["replication", "run", "vm9"]).ok();
        }
        wait_for(&format!("vm9's point {n}"), || {
            status(&a, "vm9")["last_point"] == format!("repl-{n}").as_str()
        });
    }
    let kinds9: Vec<String> = b
        .json(&["recovery-point", "list", "vm9"])
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds9, ["crash", "app", "crash", "app"]);
    assert_eq!(
        std::fs::read_to_string(&log9).unwrap(),
        "pre\npost\npre\npost\n"
    );
}

/// Bytes the files under `dir` take on disk (allocated blocks, not sizes).
fn disk_usage(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            total += disk_usage(&entry.path());
        } else {
            total += meta.blocks() * 512;
        }
    }
    total
}

/// Retention: each cycle rewrites the same 8 MiB, so every recovery point
/// holds 8 MiB of its own. With `--keep-last 2 --keep-hourly 0` both sites
/// keep only the last two points (equal to their sources), and the space of
/// the others comes back: six distinct points would need at least 48 MiB.
#[test]
fn retention_keeps_the_last_points_and_gives_the_others_space_back() {
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    let a = Daemon::start(&da);
    let b = Daemon::start(&db);
    pair(&a, &b);
    let uri = group_with_disk(&a, "r", "64M", "disk");
    qemu_io(&uri, &["write -P 0x01 0 8M"]);
    enable(
        &a,
        "r",
        &[
            "--interval",
            "1h",
            "--keep-last",
            "2",
            "--keep-hourly",
            "0",
            "--compression",
            "off",
        ],
    );
    for i in 1..=6u32 {
        if i > 1 {
            qemu_io(&uri, &[&format!("write -P {i:#04x} 0 8M")]);
            a.ferry(&["replication", "run", "r"]).ok();
        }
        let name = format!("repl-{i}");
        wait_for(&format!("{name} acknowledged"), || {
            status(&a, "r")["last_point"] == name.as_str()
        });
    }
    assert_eq!(points(&b, "r"), ["repl-5", "repl-6"]);
    assert_eq!(snapshots(&a, "r"), ["repl-5", "repl-6"]);
    same(&a, &b, "r", "repl-5", "disk");
    same(&a, &b, "r", "repl-6", "disk");
    // The collector runs after each cycle, in the background.
    let mut usage = (0, 0);
    let held = || {
        let u = (disk_usage(&da), disk_usage(&db));
        (u.0 < 30 * MIB && u.1 < 30 * MIB, u)
    };
    wait_for("the let-go points' space to come back", || {
        let (ok, u) = held();
        usage = u;
        ok
    });
    eprintln!(
        "on disk after 6 points of 8 MiB, 2 kept: source {} KiB, replica {} KiB",
        usage.0 >> 10,
        usage.1 >> 10
    );
}

#[test]
fn initial_copies_beyond_the_sites_limit_wait_queued_for_a_slot() {
    let dir = tempfile::tempdir().unwrap();
    // bad limits stop ferryd at start, with what is wrong
    for (args, needle) in [
        (&["--replication-cycles", "0"][..], "--replication-cycles"),
        (
            &["--replication-initial-copies", "300"][..],
            "--replication-initial-copies",
        ),
        (
            &[
                "--replication-cycles",
                "2",
                "--replication-initial-copies",
                "3",
            ][..],
            "cannot be more than replication_cycles (2)",
        ),
    ] {
        let out = Command::new(common::ferryd_bin())
            .arg("--data")
            .arg(dir.path().join("never"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(if needle.starts_with("--") { 2 } else { 1 }),
            "{args:?}: {err}"
        );
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let config = dir.path().join("ferryd.toml");
    std::fs::write(&config, "replication_initial_copies = 9\n").unwrap();
    let out = Command::new(common::ferryd_bin())
        .arg("--data")
        .arg(dir.path().join("never"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(
                "replication_initial_copies (9) cannot be more than replication_cycles (4)"
            ),
        "{err}"
    );
    assert!(!dir.path().join("never").exists());

    // one initial copy at a time: three groups of 3 MiB, each sent at 1 MB/s
    std::fs::write(&config, "replication_initial_copies = 1\n").unwrap();
    let a = Daemon::start_with(
        &dir.path().join("a"),
        &["--config", config.to_str().unwrap()],
    );
    let b = Daemon::start(&dir.path().join("b"));
    pair(&a, &b);
    for g in ["g1", "g2", "g3"] {
        qemu_io(
            &group_with_disk(&a, g, "8M", "system"),
            &["write -P 0x5a 0 3M"],
        );
    }
    for g in ["g1", "g2", "g3"] {
        enable(
            &a,
            g,
            &[
                "--interval",
                "1h",
                "--bandwidth",
                "1MB",
                "--compression",
                "off",
            ],
        );
    }
    // the first group seen queued is paused there: when its slot comes,
    // it must not run
    let mut most_at_once = 0;
    let mut paused: Option<String> = None;
    wait_for("the other initial copies", || {
        let all = a.json(&["replication", "status"]);
        let all = all.as_array().unwrap();
        let sending = all
            .iter()
            .filter(|s| s["stats"]["running"] == true && s["stats"]["initial_copy"] == true)
            .count();
        most_at_once = most_at_once.max(sending);
        if paused.is_none()
            && sending == 1
            && let Some(q) = all.iter().find(|s| s["state"] == "queued")
        {
            let g = q["group"].as_str().unwrap().to_owned();
            a.ferry(&["replication", "pause", &g]).ok();
            paused = Some(g);
        }
        all.iter()
            .filter(|s| Some(s["group"].as_str().unwrap()) != paused.as_deref())
            .all(|s| s["last_point"].is_string())
    });
    assert_eq!(most_at_once, 1, "two initial copies ran at once");
    let paused = paused.expect("no group was ever seen queued");
    wait_for("the paused group's slot", || {
        let s = status(&a, &paused);
        s["stats"]["queued"] == false && s["stats"]["running"] == false
    });
    let s = status(&a, &paused);
    assert!(s["last_point"].is_null(), "a paused group was sent: {s}");
    assert_eq!(s["state"], "paused", "{s}");
    assert_eq!(s["stats"]["cycles_ok"], 0, "{s}");
    a.ferry(&["replication", "resume", &paused]).ok();
    wait_for("its copy once resumed", || {
        status(&a, &paused)["last_point"].is_string()
    });
    for g in ["g1", "g2", "g3"] {
        same(&a, &b, g, "repl-1", "system");
    }
}

#[test]
fn a_partner_is_unpaired_only_once_no_group_replicates_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = Daemon::start(&dir.path().join("a"));
    let b = Daemon::start(&dir.path().join("b"));
    pair(&a, &b);
    group_with_disk(&a, "vm1", "4M", "system");
    enable(&a, "vm1", &["--interval", "1h"]);
    wait_for("the initial copy", || points(&b, "vm1").len() == 1);
    // refused at the source while vm1 replicates; its plan says so too
    a.ferry(&["partner", "unpair", "site-b"])
        .code(4)
        .complains("vm1 replicate with it");
    a.ferry(&["--dry-run", "partner", "unpair", "site-b"])
        .code(4)
        .complains("vm1 replicate with it");
    assert_eq!(status(&a, "vm1")["partner"], "site-b");
    // the source ends it; the replica still holds vm1 as a replica of A,
    // so it keeps A when A unpairs, and A's admin is told
    a.ferry(&["replication", "disable", "vm1"]).ok();
    let out = a.ferry(&["partner", "unpair", "site-b"]).ok();
    assert!(
        out.stdout.contains("unpaired site-b here"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("site-b was not told") && out.stderr.contains("vm1 replicate with it"),
        "{}",
        out.stderr
    );
    assert_eq!(
        b.json(&["partner", "list"])[0]["name"],
        "site-a",
        "the replica forgot its source"
    );
    // once the replica ends it too, it can unpair (A no longer answers it)
    b.ferry(&["replication", "disable", "vm1"]).ok();
    b.ferry(&["partner", "unpair", "site-a"])
        .ok()
        .says("unpaired site-a here");
    assert_eq!(b.json(&["partner", "list"]), serde_json::json!([]));
    // the recovery point stays, as a snapshot of a group no longer a replica
    assert!(snapshots(&b, "vm1").contains(&"repl-1".to_owned()));
}

#[test]
fn health_warns_while_cycles_are_missed_and_clears_itself_when_they_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let a = Daemon::start(&dir.path().join("a"));
    let mut b = Daemon::start(&dir.path().join("b"));
    pair(&a, &b);
    group_with_disk(&a, "vm5", "4M", "system");
    enable(&a, "vm5", &["--interval", "1s"]);
    wait_for("three good cycles", || {
        status(&a, "vm5")["stats"]["cycles_ok"].as_u64() >= Some(3)
    });
    let s = status(&a, "vm5");
    assert_eq!(s["health"], "normal", "{s}");
    // the replica goes away: cycles fail, whole intervals are missed
    let pb = b.partner.clone();
    assert!(b.terminate().0.success());
    let mut seen = Value::Null;
    wait_for("the missed-cycles warning", || {
        seen = status(&a, "vm5");
        seen["health"] != "normal"
            && seen["health_reasons"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r.as_str().unwrap().contains("of the last hour's"))
    });
    assert_eq!(seen["state"], "failing", "{seen}");
    assert!(
        seen["stats"]["cycles_missed_last_hour"].as_u64() >= Some(1),
        "{seen}"
    );
    // back: the warning clears itself once the misses are under a fifth of
    // the hour's cycles, with no one acknowledging anything
    let b = Daemon::start_with(&dir.path().join("b"), &["--partner-listen", &pb]);
    wait_for("health to be normal again", || {
        seen = status(&a, "vm5");
        seen["health"] == "normal"
    });
    assert_eq!(seen["health_reasons"], serde_json::json!([]), "{seen}");
    let missed = seen["stats"]["cycles_missed_last_hour"].as_u64().unwrap();
    let due = seen["stats"]["cycles_due_last_hour"].as_u64().unwrap();
    assert!(missed >= 1 && missed * 5 < due, "{seen}");
    assert!(seen["stats"]["last_error"].is_null(), "{seen}");
    same(
        &a,
        &b,
        "vm5",
        seen["last_point"].as_str().unwrap(),
        "system",
    );
}

#[test]
fn a_change_over_half_the_group_resyncs_by_digest_and_sends_only_what_differs() {
    let dir = tempfile::tempdir().unwrap();
    let a = Daemon::start(&dir.path().join("a"));
    let b = Daemon::start(&dir.path().join("b"));
    pair(&a, &b);
    let disk = group_with_disk(&a, "vm6", "8M", "system");
    qemu_io(&disk, &["write -P 0x11 0 8M"]);
    enable(&a, "vm6", &["--interval", "1h", "--compression", "off"]);
    wait_for("the initial copy", || {
        status(&a, "vm6")["last_point"] == "repl-1"
    });
    let before = a.json(&["replication", "measure", "vm6"])["bytes_changed"]
        .as_u64()
        .unwrap();
    assert!(!a.log_text().contains("resync"));
    // 7 MiB rewritten (more than half the group), 6 of them with the bytes
    // they held: a restore or a defragmentation does that
    qemu_io(&disk, &["write -P 0x11 0 6M", "write -P 0x22 6M 1M"]);
    a.ferry(&["replication", "run", "vm6"]).ok();
    wait_for("the second point", || {
        status(&a, "vm6")["last_point"] == "repl-2"
    });
    same(&a, &b, "vm6", "repl-2", "system");
    assert!(
        a.log_text().contains("resync: 1 of 8 regions differ"),
        "no resync in the log"
    );
    let m = a.json(&["replication", "measure", "vm6"]);
    assert_eq!(
        m["bytes_changed"].as_u64().unwrap() - before,
        1 << 20,
        "only the region that differs travels: {m}"
    );
}

#[test]
fn bandwidth_caps_hold_per_group_and_for_all_cycles_to_a_partner() {
    const RATE: f64 = 1_000_000.0;
    let dir = tempfile::tempdir().unwrap();
    let a = Daemon::start(&dir.path().join("a"));
    let b = Daemon::start(&dir.path().join("b"));
    pair(&a, &b);
    for g in ["c1", "c2", "c3"] {
        qemu_io(
            &group_with_disk(&a, g, "4M", "system"),
            &["write -P 0x5a 0 2M"],
        );
    }
    // one group capped at 1 MB/s: its cycle never runs ahead of the cap
    enable(
        &a,
        "c1",
        &[
            "--interval",
            "1h",
            "--bandwidth",
            "1MB",
            "--compression",
            "off",
        ],
    );
    wait_for("c1's initial copy", || {
        status(&a, "c1")["last_point"].is_string()
    });
    let s = status(&a, "c1");
    let rate = s["stats"]["last_throughput"].as_f64().unwrap();
    assert!(rate > 0.0 && rate <= RATE * 1.02, "{s}");
    // two groups under one 1 MB/s cap for the partner: together no faster
    a.ferry(&["partner", "limit", "site-b", "--bandwidth", "1MB"])
        .ok();
    let began = Instant::now();
    for g in ["c2", "c3"] {
        enable(&a, g, &["--interval", "1h", "--compression", "off"]);
    }
    wait_for("both initial copies", || {
        ["c2", "c3"]
            .iter()
            .all(|g| status(&a, g)["last_point"].is_string())
    });
    let secs = began.elapsed().as_secs_f64();
    let sent: u64 = ["c2", "c3"]
        .iter()
        .map(|g| status(&a, g)["stats"]["bytes_sent"].as_u64().unwrap())
        .sum();
    assert!(sent >= 4 << 20, "{sent}");
    assert!(
        sent as f64 / secs <= RATE * 1.02,
        "{sent} bytes in {secs:.2} s under a cap of 1 MB/s"
    );
    for g in ["c1", "c2", "c3"] {
        same(&a, &b, g, "repl-1", "system");
    }
}

#[test]
fn a_planned_failover_that_cannot_ship_thaws_the_primary_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = Daemon::start(&dir.path().join("a"));
    let mut b = Daemon::start(&dir.path().join("b"));
    pair(&a, &b);
    let disk = group_with_disk(&a, "vm8", "4M", "disk");
    qemu_io(&disk, &["write -P 0x01 0 1M"]);
    enable(&a, "vm8", &["--interval", "1h"]);
    wait_for("the initial copy", || {
        status(&a, "vm8")["last_point"] == "repl-1"
    });
    // the replica is gone: the last changes cannot be shipped
    let pb = b.partner.clone();
    assert!(b.terminate().0.success());
    qemu_io(&disk, &["write -P 0x02 1M 1M"]);
    refused(&a, &["failover", "planned", "vm8"], "could not be shipped");
    // writes go on at the primary, which is still the source, not paused
    qemu_io(&disk, &["write -P 0x03 2M 1M", "read -P 0x02 1M 1M"]);
    let s = status(&a, "vm8");
    assert_eq!(
        (s["role"].as_str(), s["paused"].as_bool()),
        (Some("source"), Some(false)),
        "{s}"
    );
    let g = a.json(&["group", "show", "vm8"]);
    assert!(
        g["tags"].is_object() && g["tags"].get("ferry.frozen").is_none(),
        "{g}"
    );
    // with the replica back, the planned failover ships everything
    let b = Daemon::start_with(&dir.path().join("b"), &["--partner-listen", &pb]);
    let r = a.json(&["failover", "planned", "vm8"]);
    assert_eq!(r["partner"], "site-b", "{r}");
    b.ferry(&["export", "add", "vm8-disk", "--volume", "vm8-disk"])
        .ok();
    qemu_io(
        &format!("nbd://{}/vm8-disk", b.nbd),
        &[
            "read -P 0x01 0 1M",
            "read -P 0x02 1M 1M",
            "read -P 0x03 2M 1M",
        ],
    );
}
