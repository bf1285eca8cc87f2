//! End to end: the real `ferryd` driven through the real `ferry`, each test
//! with its own data directory and port.
//!
//! Build the daemon first: `cargo build --workspace --bins`.

mod common;

use common::{Daemon, names, poke};
use serde_json::{Value, json};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

/// Everything the store and the user file hold, as the CLI lists it.
fn inventory(d: &Daemon) -> Value {
    let groups = d.json(&["group", "list"]);
    let snapshots: Vec<Value> = names(&groups)
        .iter()
        .map(|g| json!({ g.as_str(): d.json(&["snapshot", "list", g]) }))
        .collect();
    json!({
        "volumes": d.json(&["volume", "list"]),
        "groups": groups,
        "snapshots": snapshots,
        "users": d.json(&["user", "list"]),
    })
}

#[test]
fn state_survives_sigterm_and_restart() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let mut d = Daemon::start(&data);
    assert!(
        d.startup
            .iter()
            .any(|l| l.contains("created the admin token")),
        "first start announces the admin token: {:?}",
        d.startup
    );
    d.ferry(&["volume", "create", "vm1-data", "--size", "2G"])
        .ok();
    d.ferry(&["volume", "create", "vm1-log", "--size", "512M"])
        .ok();
    d.ferry(&["volume", "create", "spare", "--size", "4096"])
        .ok();
    d.ferry(&[
        "group",
        "create",
        "vm1",
        "--slot",
        "data=vm1-data",
        "--slot",
        "log=vm1-log",
        "--tag",
        "team=web",
    ])
    .ok();
    d.ferry(&["snapshot", "create", "vm1", "--name", "monday"])
        .ok();
    d.ferry(&[
        "snapshot", "create", "vm1", "--name", "tuesday", "--kind", "app",
    ])
    .ok();
    d.ferry(&["clone", "vm1@monday", "--as", "vm1-test"]).ok();
    d.ferry(&["user", "create", "olga", "--role", "operator"])
        .ok();
    let before = inventory(&d);
    assert_eq!(
        names(&before["volumes"]),
        [
            "spare",
            "vm1-data",
            "vm1-log",
            "vm1-test-data",
            "vm1-test-log"
        ]
    );
    assert_eq!(names(&before["groups"]), ["vm1", "vm1-test"]);
    assert_eq!(names(&before["snapshots"][0]["vm1"]), ["monday", "tuesday"]);
    assert_eq!(names(&before["users"]), ["admin", "olga"]);
    let sizes: std::collections::BTreeMap<&str, u64> = before["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v["size"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        sizes.into_values().collect::<Vec<_>>(),
        [4096, 2 << 30, 512 << 20, 2 << 30, 512 << 20],
        "sizes in bytes, in name order"
    );

    let (status, said) = d.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "ferryd exits 0 on SIGTERM; log:\n{}",
        d.log_text()
    );
    assert!(
        said.iter().any(|l| l == "ferryd: stopped cleanly"),
        "ferryd said it stopped cleanly: {said:?}"
    );
    // nobody listens there now
    d.ferry(&["volume", "list"]).code(6);
    drop(d);

    let d = Daemon::start(&data);
    assert!(
        !d.startup
            .iter()
            .any(|l| l.contains("created the admin token")),
        "a restart keeps the admin token: {:?}",
        d.startup
    );
    let after = inventory(&d);
    assert_eq!(before, after, "everything listed before SIGTERM is back");
    let snap = d.json(&["snapshot", "show", "vm1@tuesday"]);
    assert_eq!(snap["kind"], "app");
    assert_eq!(snap["members"]["data"]["volume"], "vm1-data");

    // the audit chain continues across the restart
    d.ferry(&["volume", "delete", "spare"]).ok();
    let records = d.json(&["audit", "list"]);
    let seqs: Vec<u64> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=9).collect::<Vec<u64>>());
    assert_eq!(records[8]["action"], "volume.delete");
    d.ferry(&["audit", "verify"]).ok().says("9 records");
}

#[test]
fn audit_chain_catches_one_edited_byte_and_records_denials() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let d = Daemon::start(&data);
    for v in ["a1", "a2", "a3"] {
        d.ferry(&["volume", "create", v, "--size", "1G"]).ok();
    }
    d.ferry(&["group", "create", "g", "--slot", "data=a1"]).ok();
    d.ferry(&["snapshot", "create", "g", "--name", "s1"]).ok();
    d.ferry(&["volume", "create", "a1", "--size", "1G"]).code(4); // failed, still recorded
    d.ferry(&["audit", "verify"])
        .ok()
        .says("6 records, chain intact");

    // a bad token: refused, and recorded as a denial by nobody in particular
    let bad = d.ferry_as(
        "ferry_0000000000000000000000000000000000000000000000000000000000000000",
        &["volume", "create", "intruder", "--size", "1G"],
    );
    let bad = bad.code(5);
    assert!(bad.stderr.contains("token"), "{}", bad.stderr);
    d.ferry_as("", &["group", "delete", "g"]).code(5);
    let records = d.json(&["audit", "list"]);
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 8);
    let intruder = records
        .iter()
        .find(|r| r["object"] == "/v1/volumes/intruder")
        .expect("the denied request is in the audit log");
    assert_eq!(intruder["outcome"], "denied");
    assert_eq!(intruder["actor"], "anonymous");
    assert_eq!(intruder["action"], "volume.create");
    assert_eq!(intruder["status"], 401);
    assert_eq!(records[7]["action"], "group.delete");
    assert_eq!(records[7]["outcome"], "denied");
    assert_eq!(records[5]["outcome"], "failed");
    assert_eq!(records[5]["status"], 409);
    assert!(
        !names(&d.json(&["volume", "list"])).contains(&"intruder".to_owned()),
        "a denied create creates nothing"
    );
    assert_eq!(names(&d.json(&["group", "list"])), ["g"]);
    d.ferry(&["audit", "verify"])
        .ok()
        .says("8 records, chain intact");

    // edit one byte of record 3 while the daemon runs
    let log = data.join("audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8);
    let needle = "\"object\":\"/v1/volumes/a3\"";
    let at = lines[2]
        .find(needle)
        .unwrap_or_else(|| panic!("record 3 is the creation of a3: {}", lines[2]));
    let line_start: usize = lines[..2].iter().map(|l| l.len() + 1).sum();
    let offset = line_start + at + needle.len() - 3; // the 'a' of "a3"
    assert_eq!(text.as_bytes()[offset], b'a');
    poke(&log, offset as u64, b'b');
    assert_eq!(
        std::fs::read(&log).unwrap().len(),
        text.len(),
        "one byte replaced, none added"
    );

    let broken = d.ferry(&["audit", "verify"]).code(7);
    assert!(
        broken.stdout.contains("line 3") && broken.stdout.contains("record 3"),
        "the verdict names line and record 3: {}",
        broken.stdout
    );
    let v = d.ferry(&["-o", "json", "audit", "verify"]).code(7).json();
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_bad_line"], 3);
    assert_eq!(v["first_bad_seq"], 3);
    assert!(v["problem"].as_str().unwrap().contains("modified"), "{v}");
    assert_eq!(v["records"], 2, "two good records precede it");

    // the daemon keeps recording; the break stays where it is
    d.ferry(&["volume", "create", "a4", "--size", "1G"]).ok();
    let v = d.ferry(&["-o", "json", "audit", "verify"]).code(7).json();
    assert_eq!(v["first_bad_line"], 3);
    let listed = d.json(&["audit", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 9);
    assert_eq!(listed[2]["object"], "/v1/volumes/b3", "the edit is visible");
}

#[test]
fn roles_and_tag_scoping() {
    let dir = tempdir();
    let d = Daemon::start(&dir.path().join("data"));
    for v in ["web-data", "db-data"] {
        d.ferry(&["volume", "create", v, "--size", "1G"]).ok();
    }
    d.ferry(&[
        "group",
        "create",
        "web",
        "--slot",
        "data=web-data",
        "--tag",
        "team=web",
    ])
    .ok();
    d.ferry(&[
        "group",
        "create",
        "db",
        "--slot",
        "data=db-data",
        "--tag",
        "team=db",
    ])
    .ok();
    d.ferry(&["snapshot", "create", "db", "--name", "base"])
        .ok();

    let alice = d.json(&[
        "user", "create", "alice", "--role", "user", "--grant", "team=web",
    ]);
    assert_eq!(alice["role"], "user");
    let t = d.json(&["token", "create", "alice"]);
    let alice = t["token"].as_str().expect("a token").to_owned();
    assert!(alice.starts_with("ferry_"));
    assert_eq!(t["user"], "alice");

    // a scoped user sees only the groups of their grants
    let seen = d
        .ferry_as(&alice, &["-o", "json", "group", "list"])
        .ok()
        .json();
    assert_eq!(names(&seen), ["web"]);
    d.ferry_as(&alice, &["group", "show", "web"]).ok();
    let hidden = d.ferry_as(&alice, &["group", "show", "db"]).code(3);
    assert!(
        hidden.stderr.contains("does not exist"),
        "{}",
        hidden.stderr
    );
    d.ferry_as(&alice, &["snapshot", "list", "db"]).code(3);
    d.ferry_as(&alice, &["snapshot", "create", "db", "--name", "sneaky"])
        .code(3);
    d.ferry_as(&alice, &["snapshot", "create", "web", "--name", "s1"])
        .ok();
    let mine = d
        .ferry_as(&alice, &["-o", "json", "snapshot", "list", "web"])
        .ok()
        .json();
    assert_eq!(names(&mine), ["s1"]);
    let refused = d
        .ferry_as(&alice, &["volume", "create", "x", "--size", "1G"])
        .code(5);
    assert!(refused.stderr.contains("role"), "{}", refused.stderr);
    d.ferry_as(&alice, &["volume", "list"]).code(5);
    d.ferry_as(&alice, &["clone", "web@s1", "--as", "web2"])
        .code(5);
    d.ferry_as(&alice, &["snapshot", "delete", "web@s1"])
        .code(5);
    d.ferry_as(&alice, &["audit", "list"]).code(5);
    d.ferry_as(&alice, &["user", "create", "mallory", "--role", "admin"])
        .code(5);

    // an operator runs snapshots, clones and syncs everywhere, configures nothing
    d.ferry(&["user", "create", "olga", "--role", "operator"])
        .ok();
    let olga = d.json(&["token", "create", "olga"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    d.ferry_as(&olga, &["snapshot", "create", "db", "--name", "o1"])
        .ok();
    d.ferry_as(&olga, &["clone", "db@o1", "--as", "db-copy"])
        .ok()
        .says("db-copy");
    d.ferry_as(
        &olga,
        &["sync", "db@base", "--to", "db-copy", "--slots", "data"],
    )
    .ok()
    .says("undo-sync-");
    d.ferry_as(&olga, &["volume", "list"]).ok();
    d.ferry_as(&olga, &["audit", "verify"]).ok();
    d.ferry_as(&olga, &["volume", "create", "y", "--size", "1G"])
        .code(5);
    d.ferry_as(&olga, &["group", "create", "z"]).code(5);
    d.ferry_as(&olga, &["user", "create", "eve", "--role", "admin"])
        .code(5);
    d.ferry_as(&olga, &["token", "create", "olga"]).code(5);

    // nothing refused happened, and every refusal is on record
    let vols = names(&d.json(&["volume", "list"]));
    assert!(!vols.contains(&"x".to_owned()) && !vols.contains(&"y".to_owned()));
    assert_eq!(names(&d.json(&["group", "list"])), ["db", "db-copy", "web"]);
    assert_eq!(
        names(&d.json(&["user", "list"])),
        ["admin", "alice", "olga"]
    );
    assert_eq!(names(&d.json(&["snapshot", "list", "db"])), ["base", "o1"]);
    let audit = d.json(&["audit", "list"]);
    let denied = |actor: &str, action: &str| {
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["actor"] == actor && r["action"] == action && r["outcome"] == "denied")
    };
    assert!(denied("alice", "volume.create"));
    assert!(denied("alice", "snapshot.create"), "the hidden group");
    assert!(denied("olga", "volume.create"));
    assert!(denied("olga", "user.create"));
    d.ferry(&["audit", "verify"]).ok();
}

#[test]
fn bad_input_is_refused_by_name_and_changes_nothing() {
    let dir = tempdir();
    let d = Daemon::start(&dir.path().join("data"));
    d.ferry(&["volume", "create", "v1", "--size", "1G"]).ok();
    d.ferry(&["volume", "create", "v2", "--size", "1G"]).ok();
    d.ferry(&["group", "create", "g", "--slot", "data=v1"]).ok();
    d.ferry(&["group", "create", "other", "--slot", "data=v2"])
        .ok();
    d.ferry(&["snapshot", "create", "g", "--name", "s1"]).ok();
    let before = inventory(&d);

    let long = "a".repeat(64);
    // (args, exit code, what stderr must name)
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["volume", "create", "a/b", "--size", "1G"], 1, "name"),
        (vec!["volume", "create", "Upper", "--size", "1G"], 1, "name"),
        (
            vec!["volume", "create", long.as_str(), "--size", "1G"],
            1,
            "63 characters",
        ),
        (vec!["volume", "create", "", "--size", "1G"], 1, "name"),
        (vec!["volume", "create", "n", "--size", "-1"], 1, "size"),
        (vec!["volume", "create", "n", "--size", "0"], 1, "size"),
        (
            vec!["volume", "create", "n", "--size", "1.5G"],
            1,
            "size \"1.5G\": it has an unknown unit",
        ),
        (vec!["volume", "create", "n", "--size", "17T"], 1, "16 TiB"),
        (vec!["volume", "create", "n", "--size", "abc"], 1, "size"),
        (vec!["volume", "create", "n", "--size", "1000"], 1, "size"),
        (
            vec!["volume", "create", "n", "--size", "99999999999999999999999"],
            1,
            "size",
        ),
        (
            vec!["volume", "create", "v1", "--size", "1G"],
            4,
            "already exists",
        ),
        (vec!["volume", "grow", "v1", "--size", "512M"], 1, "shrink"),
        (vec!["volume", "grow", "nope", "--size", "2G"], 3, "volume"),
        (vec!["volume", "delete", "v1"], 4, "in use"),
        (vec!["volume", "delete", "nope"], 3, "volume"),
        // names that would address another endpoint if sent unescaped
        (vec!["volume", "delete", "../groups/other"], 3, "volume"),
        (vec!["volume", "show", "v1?x=1"], 3, "volume"),
        (vec!["group", "delete", "other#frag"], 3, "group"),
        (vec!["group", "show", ".."], 1, "name"),
        (
            vec!["group", "create", "g", "--slot", "data=v2"],
            4,
            "already exists",
        ),
        (vec!["group", "create", "g/x"], 1, "name"),
        (vec!["group", "create", "G"], 1, "name"),
        (
            vec!["group", "create", "n", "--slot", "data=nope"],
            3,
            "volume",
        ),
        (
            vec!["group", "create", "n", "--slot", "data=v2"],
            4,
            "in use",
        ),
        (
            vec!["group", "create", "n", "--slot", "data"],
            1,
            "SLOT=VOLUME",
        ),
        (vec!["group", "create", "n", "--slot", "Bad=v2"], 1, "slot"),
        (vec!["group", "create", "n", "--tag", "Bad=x"], 1, "tag"),
        (
            vec!["snapshot", "create", "nope", "--name", "s"],
            3,
            "group",
        ),
        (
            vec!["snapshot", "create", "g", "--name", "s1"],
            4,
            "already exists",
        ),
        (vec!["snapshot", "create", "g", "--name", "Bad"], 1, "name"),
        (vec!["snapshot", "create", "g", "--name", "a/b"], 1, "name"),
        (
            vec!["snapshot", "create", "g", "--name", "x", "--kind", "warm"],
            1,
            "warm",
        ),
        (vec!["snapshot", "list", "nope"], 3, "group"),
        (vec!["snapshot", "show", "g@nope"], 3, "snapshot"),
        (vec!["snapshot", "delete", "g@nope"], 3, "snapshot"),
        (vec!["snapshot", "delete", "g@"], 1, "GROUP@SNAPSHOT"),
        (vec!["snapshot", "delete", "@s1"], 1, "GROUP@SNAPSHOT"),
        (vec!["snapshot", "delete", "g"], 1, "GROUP@SNAPSHOT"),
        (vec!["snapshot", "diff", "g@s1", "g@nope"], 3, "snapshot"),
        (
            vec!["snapshot", "diff", "g@s1", "other@s1"],
            1,
            "same group",
        ),
        (vec!["snapshot", "diff", "g@", "g@s1"], 1, "GROUP@SNAPSHOT"),
        (vec!["clone", "g@", "--as", "n"], 1, "GROUP@SNAPSHOT"),
        (vec!["clone", "g@nope", "--as", "n"], 3, "snapshot"),
        (vec!["clone", "nope@s1", "--as", "n"], 3, "group"),
        (vec!["clone", "g@s1", "--as", "other"], 4, "already exists"),
        (vec!["clone", "g@s1", "--as", "Bad/x"], 1, "name"),
        (
            vec!["sync", "g@s1", "--to", "other", "--slots", "nope"],
            3,
            "slot",
        ),
        (
            vec!["sync", "g@s1", "--to", "nope", "--slots", "data"],
            3,
            "group",
        ),
        (
            vec!["sync", "g@nope", "--to", "other", "--slots", "data"],
            3,
            "snapshot",
        ),
        (
            vec!["sync", "g", "--to", "other", "--slots", "data"],
            1,
            "GROUP@SNAPSHOT",
        ),
        (vec!["user", "create", "Bad", "--role", "user"], 1, "name"),
        (vec!["user", "create", "u", "--role", "god"], 1, "god"),
        (
            vec!["user", "create", "u", "--role", "user", "--grant", "nokey"],
            1,
            "grant",
        ),
        (
            vec!["user", "create", "admin", "--role", "user"],
            4,
            "already exists",
        ),
        (vec!["token", "create", "nobody"], 3, "user"),
        (vec!["token", "delete", "nope"], 3, "token"),
    ];
    for (args, code, needle) in &cases {
        let out = d.ferry(args).code(*code);
        assert!(
            out.stderr.to_lowercase().contains(&needle.to_lowercase()),
            "`ferry {}` did not name {needle:?}: {}",
            args.join(" "),
            out.stderr
        );
        assert!(
            !out.stderr.contains("(internal)") && !out.stderr.contains("(storage)"),
            "`ferry {}` hit a server error: {}",
            args.join(" "),
            out.stderr
        );
    }

    // raw requests with broken bodies; every one a 4xx with a JSON error
    let mut big = br#"{"name":"big","size":"1G","pad":""#.to_vec();
    big.resize(2 << 20, b'x');
    big.extend_from_slice(br#""}"#);
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", br#"{"name":"t1","size":"1G""#.to_vec()),
        ("cut short", br#"{"name":"t2","#.to_vec()),
        ("empty", Vec::new()),
        ("not json", b"name=t3&size=1G".to_vec()),
        (
            "not utf-8",
            b"{\"name\":\"t4\xff\xfe\",\"size\":\"1G\"}".to_vec(),
        ),
        ("null", b"null".to_vec()),
        ("a list", br#"["t5", "1G"]"#.to_vec()),
        ("name a number", br#"{"name":5,"size":"1G"}"#.to_vec()),
        ("size a bool", br#"{"name":"t6","size":true}"#.to_vec()),
        ("size a fraction", br#"{"name":"t7","size":1.5}"#.to_vec()),
        ("size negative", br#"{"name":"a","size":-1}"#.to_vec()),
        (
            "size too big",
            br#"{"name":"t8","size":18446744073709551615}"#.to_vec(),
        ),
        ("size missing", br#"{"name":"t9"}"#.to_vec()),
        (
            "unknown field",
            br#"{"name":"t10","size":"1G","color":"red"}"#.to_vec(),
        ),
        ("duplicate", br#"{"name":"v1","size":"1G"}"#.to_vec()),
        ("2 MiB", big),
    ];
    for (what, body) in &bodies {
        let r = d.http("POST", "/v1/volumes", Some(&d.admin), body);
        assert!(
            (400..500).contains(&r.status),
            "{what}: status {} ({})",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        let e = r.json();
        assert!(
            e["error"]["code"].as_str().is_some_and(|c| !c.is_empty())
                && e["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
            "{what}: {e}"
        );
    }
    let named = |body: &[u8]| d.http("POST", "/v1/volumes", Some(&d.admin), body).json();
    assert_eq!(
        named(br#"{"name":"a","size":-1}"#)["error"]["field"],
        "size"
    );
    assert_eq!(
        named(br#"{"name":"t","size":"1G","color":"red"}"#)["error"]["field"],
        "color"
    );
    assert_eq!(
        named(br#"{"name":5,"size":"1G"}"#)["error"]["field"],
        "name"
    );
    assert!(
        named(br#"{"name":"t","#)["error"].get("field").is_none(),
        "a body that breaks off names no field"
    );
    let r = d.http("POST", "/v1/volumes", Some(&d.admin), &bodies[15].1);
    assert_eq!(r.status, 413);
    // the guard answers before the body's shape matters
    let r = d.http("POST", "/v1/volumes", None, br#"{"name":"t","size":"1G"}"#);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "unauthorized");
    // other malformed requests: a method a path does not take, a missing
    // query, an unknown endpoint
    for (method, path, status) in [
        ("PATCH", "/v1/volumes", 405),
        ("DELETE", "/v1/space", 405),
        ("PUT", "/v1/audit/verify", 405),
        ("GET", "/v1/groups/g/diff", 400),
        ("GET", "/v1/groups/g/diff?from=s1&bogus=1", 400),
        ("GET", "/v1/nothing", 404),
        ("GET", "/v1/volumes/a%2Fb", 404),
    ] {
        let r = d.http(method, path, Some(&d.admin), b"");
        assert_eq!(
            r.status,
            status,
            "{method} {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.json()["error"]["message"].is_string(), "{method} {path}");
    }
    let head = d.http("HEAD", "/v1/volumes", Some(&d.admin), b"");
    assert_eq!(
        head.status, 200,
        "HEAD is GET without a body: {}",
        head.head
    );

    // nothing changed, the log is intact, and nothing was a server error
    assert_eq!(before, inventory(&d), "bad input changed nothing");
    d.ferry(&["audit", "verify"]).ok().says("chain intact");
    let audit = d.json(&["audit", "list"]);
    let audit = audit.as_array().unwrap();
    assert!(audit.len() > cases.len(), "the refusals are on record");
    for r in audit {
        assert!(
            r["status"].as_u64().unwrap() < 500,
            "a request got a server error: {r}"
        );
        if r["seq"].as_u64().unwrap() > 5 {
            assert_ne!(r["outcome"], "allowed", "a bad request went through: {r}");
        }
    }
}

#[test]
fn sync_with_a_mappings_file_syncs_every_target() {
    let dir = tempdir();
    let d = Daemon::start(&dir.path().join("data"));
    d.ferry(&["volume", "create", "src-data", "--size", "1G"])
        .ok();
    d.ferry(&["volume", "create", "src-log", "--size", "64M"])
        .ok();
    d.ferry(&[
        "group",
        "create",
        "src",
        "--slot",
        "data=src-data",
        "--slot",
        "log=src-log",
    ])
    .ok();
    d.ferry(&["snapshot", "create", "src", "--name", "golden"])
        .ok();
    d.ferry(&["clone", "src@golden", "--as", "t1"]).ok();
    d.ferry(&["clone", "src@golden", "--as", "t2"]).ok();
    d.ferry(&["clone", "src@golden", "--as", "bystander"]).ok();
    for t in ["t1", "t2", "bystander"] {
        assert_eq!(
            names(&d.json(&["snapshot", "list", t])),
            Vec::<String>::new()
        );
    }

    let file = dir.path().join("mappings.json");
    std::fs::write(
        &file,
        serde_json::to_vec_pretty(&json!([
            {"source": "src@golden", "target": "t1", "slots": ["data", "log"]},
            {"source": "src@golden", "target": "t2", "slots": ["log"]},
        ]))
        .unwrap(),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let results = d.json(&["sync", "--mappings", file]);
    let results = results.as_array().expect("one result per mapping");
    assert_eq!(results.len(), 2);
    let mut undo = Vec::new();
    for (r, (target, slots)) in results
        .iter()
        .zip([("t1", json!(["data", "log"])), ("t2", json!(["log"]))])
    {
        assert_eq!(r["target"], target);
        assert_eq!(r["source"], "src@golden");
        assert_eq!(r["result"]["slots"], slots);
        let u = r["result"]["undo_snapshot"].as_str().unwrap().to_owned();
        assert!(u.starts_with("undo-sync-"), "{u}");
        undo.push(u);
    }
    assert_eq!(
        names(&d.json(&["snapshot", "list", "t1"])),
        [undo[0].clone()]
    );
    assert_eq!(
        names(&d.json(&["snapshot", "list", "t2"])),
        [undo[1].clone()]
    );
    assert!(names(&d.json(&["snapshot", "list", "bystander"])).is_empty());
    assert_eq!(names(&d.json(&["snapshot", "list", "src"])), ["golden"]);
    // the undo snapshot holds the target's slots as they were
    let u1 = d.json(&["snapshot", "show", &format!("t1@{}", undo[0])]);
    assert_eq!(u1["members"]["data"]["volume"], "t1-data");
    assert_eq!(u1["members"]["log"]["volume"], "t1-log");
    // the undo snapshot is a real snapshot of the target: syncing from it rolls back
    d.ferry(&[
        "sync",
        &format!("t1@{}", undo[0]),
        "--to",
        "t1",
        "--slots",
        "data",
    ])
    .ok()
    .says("undo snapshot: undo-sync-");
    assert_eq!(
        d.json(&["snapshot", "list", "t1"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // the targets keep their own volumes in the slots
    let t1 = d.json(&["group", "show", "t1"]);
    assert_eq!(t1["slots"], json!({"data": "t1-data", "log": "t1-log"}));

    // the table form says one line per mapping, and a second run keeps both undos
    let out = d.ferry(&["sync", "--mappings", file]).ok();
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("synced "))
        .collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert!(lines[0].contains("into t1 (slots data,log); undo snapshot: undo-sync-"));
    assert!(lines[1].contains("into t2 (slots log); undo snapshot: undo-sync-"));
    assert_eq!(
        d.json(&["snapshot", "list", "t1"])
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        d.json(&["snapshot", "list", "t2"])
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // a mappings file that is not a list, or names what does not exist
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"source": "src@golden"}"#).unwrap();
    let out = d
        .ferry(&["sync", "--mappings", bad.to_str().unwrap()])
        .code(1);
    assert!(out.stderr.contains("list"), "{}", out.stderr);
    std::fs::write(&bad, "[{").unwrap();
    let out = d
        .ferry(&["sync", "--mappings", bad.to_str().unwrap()])
        .code(1);
    assert!(out.stderr.contains("parsing"), "{}", out.stderr);
    std::fs::write(
        &bad,
        r#"[{"source": "src@golden", "target": "nope", "slots": ["data"]}]"#,
    )
    .unwrap();
    d.ferry(&["sync", "--mappings", bad.to_str().unwrap()])
        .code(3);
    let missing = dir.path().join("missing.json");
    let out = d
        .ferry(&["sync", "--mappings", missing.to_str().unwrap()])
        .code(1);
    assert!(out.stderr.contains("reading"), "{}", out.stderr);
    d.ferry(&["audit", "verify"]).ok();
}

#[test]
fn the_commands_of_the_issue_work_as_written() {
    let dir = tempdir();
    let d = Daemon::start(&dir.path().join("data"));
    let f = |args: &str| {
        let args: Vec<&str> = args.split_whitespace().collect();
        d.ferry_env(&args).ok()
    };
    f("volume create web1-data --size 10G")
        .says("web1-data")
        .says("10G");
    f("volume create web1-log --size 1G");
    let list = f("volume list");
    assert!(
        list.stdout
            .lines()
            .any(|l| l.contains("web1-data") && l.contains("10G"))
    );
    assert!(
        list.stdout
            .lines()
            .any(|l| l.contains("web1-log") && l.contains("1G"))
    );
    f("group create web1 --slot data=web1-data --slot log=web1-log")
        .says("data=web1-data,log=web1-log");
    f("snapshot create web1 --name monday")
        .says("monday")
        .says("data,log");
    f("snapshot create web1 --name tuesday");
    let snaps = f("snapshot list web1");
    assert!(snaps.stdout.contains("monday") && snaps.stdout.contains("tuesday"));
    let diff = f("snapshot diff web1@monday web1@tuesday").says("CHANGED BLOCKS");
    assert!(
        diff.stdout
            .lines()
            .any(|l| l.trim_start().starts_with("data")),
        "{}",
        diff.stdout
    );
    f("clone web1@monday --as web1-test").says("web1-test");
    f("sync web1@tuesday --to web1-test --slots log,data")
        .says("synced web1@tuesday into web1-test (slots data,log); undo snapshot: undo-sync-");
    f("snapshot list web1-test").says("undo-sync-");
    f("snapshot delete web1@monday").says("deleted snapshot web1@monday");
    let snaps = f("snapshot list web1");
    assert!(!snaps.stdout.contains("monday") && snaps.stdout.contains("tuesday"));
    let space = f("space").says("ALLOCATED");
    for v in ["web1-data", "web1-log", "web1-test-data", "web1-test-log"] {
        assert!(
            space.stdout.contains(v),
            "space lists {v}: {}",
            space.stdout
        );
    }
    f("audit verify").says("chain intact");
    let audit = f("audit list");
    for action in [
        "volume.create",
        "group.create",
        "snapshot.create",
        "clone.create",
        "sync.run",
        "snapshot.delete",
    ] {
        assert!(audit.stdout.contains(action), "audit lists {action}");
    }
}

/// `--dry-run` on every mutation: the server checks it against the current
/// state and says what would change, and nothing changes; a dry run that
/// would fail fails the same way.
#[test]
fn dry_runs_check_and_change_nothing() {
    let dir = tempdir();
    let d = Daemon::start(&dir.path().join("data"));
    let f = |args: &str| {
        let args: Vec<&str> = args.split_whitespace().collect();
        d.ferry(&args)
    };
    f("volume create a-data --size 1G").ok();
    f("volume create a-log --size 1G").ok();
    f("volume create spare --size 1G").ok();
    f("group create a --slot data=a-data --slot log=a-log").ok();
    f("group create b").ok();
    f("snapshot create a --name s1").ok();
    f("clone a@s1 --as t").ok();
    f("user create helpdesk --role operator").ok();
    let token = d.json(&["token", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let state = || {
        [
            "volume list",
            "group list",
            "snapshot list a",
            "snapshot list t",
            "user list",
            "token list",
            "job list",
            "space",
        ]
        .map(|c| {
            let args: Vec<&str> = c.split_whitespace().collect();
            d.json(&args)
        })
    };
    let before = state();

    let token_delete = format!("token delete {token} --dry-run");
    for (cmd, says) in [
        (
            "volume create new --size 2G --dry-run",
            "create volume new of 2147483648 bytes",
        ),
        (
            "volume grow spare --size 2G --dry-run",
            "grow volume spare from 1073741824 to 2147483648",
        ),
        ("volume delete spare --dry-run", "delete volume spare"),
        (
            "group create c --slot x=spare --dry-run",
            "put volume spare in slot x",
        ),
        ("group delete b --dry-run", "delete group b"),
        (
            "group tag a env=prod --dry-run",
            "tags of group a: (none) → env=prod",
        ),
        (
            "group slot-set b x spare --dry-run",
            "put volume spare in slot x of group b",
        ),
        (
            "group slot-remove a log --dry-run",
            "take slot log (volume a-log, which stays) out of group a",
        ),
        (
            "snapshot create a --name s2 --dry-run",
            "snapshot group a (slots data, log) as a@s2",
        ),
        ("snapshot delete a@s1 --dry-run", "delete snapshot a@s1"),
        (
            "clone a@s1 --as u --dry-run",
            "slot data: new volume u-data",
        ),
        (
            "sync a@s1 --to t --slots data --dry-run",
            "take an undo snapshot of group t",
        ),
        (
            "user create dev --role user --dry-run",
            "create user dev with role user",
        ),
        ("user delete helpdesk --dry-run", "delete user helpdesk"),
        (
            "token create helpdesk --dry-run",
            "make a new token for user helpdesk",
        ),
        (token_delete.as_str(), "revoke token"),
    ] {
        f(cmd).ok().says("dry run").says(says);
    }
    // the JSON form is the plan itself
    let plan = d.json(&["volume", "create", "new", "--size", "2G", "--dry-run"]);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["action"], "volume.create");
    // what would fail fails the same way, with the same exit codes
    f("volume create a-data --size 1G --dry-run").code(4);
    f("volume grow spare --size 512M --dry-run").code(1);
    f("volume delete a-data --dry-run").code(4);
    f("snapshot delete a@nope --dry-run").code(3);
    f("clone a@s1 --as t --dry-run").code(4);
    f("sync a@s1 --to t --slots nope --dry-run").code(3);
    f("user delete admin --dry-run").code(4);
    f("volume create Bad/Name --size 1G --dry-run").code(1);

    assert_eq!(state(), before, "a dry run changed something");
    // and each dry run is in the audit log as one
    let audit = d.json(&["audit", "list"]);
    let dry = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "dry_run")
        .count();
    assert_eq!(dry, 17);
}

/// Exports: add, list, show, remove; every refusal by name; dry runs;
/// scoping; a restart keeps them; deleting the volume or the snapshot
/// removes them.
#[test]
fn exports_are_kept_checked_and_follow_their_objects() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let mut d = Daemon::start(&data);
    let run = |d: &Daemon, args: &str| {
        let args: Vec<&str> = args.split_whitespace().collect();
        d.ferry(&args)
    };
    run(&d, "volume create web-data --size 1G").ok();
    run(&d, "volume create web-log --size 64M").ok();
    run(&d, "volume create spare --size 4096").ok();
    run(
        &d,
        "group create web --slot data=web-data --slot log=web-log --tag team=web",
    )
    .ok();
    run(&d, "snapshot create web --name monday").ok();

    run(&d, "export add live --volume spare")
        .ok()
        .says("live")
        .says("read_only  false");
    run(&d, "export add mon-data --snapshot web@monday --slot data")
        .ok()
        .says("read_only  true");
    let e = d.json(&["export", "add", "web-log", "--volume", "web-log"]);
    assert_eq!(e["kind"], "volume");
    assert_eq!(e["size"], 64 << 20);
    let list = d.json(&["export", "list"]);
    assert_eq!(names(&list), ["live", "mon-data", "web-log"]);
    let mon = &list[1];
    assert_eq!(mon["kind"], "snapshot");
    assert_eq!(mon["read_only"], true);
    assert_eq!(mon["group"], "web");
    assert_eq!(mon["snapshot"], "monday");
    assert_eq!(mon["slot"], "data");
    assert_eq!(mon["volume"], "web-data");
    assert_eq!(mon["size"], 1 << 30);
    let table = run(&d, "export list").ok().says("READ_ONLY");
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.contains("mon-data") && l.contains("1G") && l.contains("monday")),
        "{}",
        table.stdout
    );
    run(&d, "export show mon-data")
        .ok()
        .says("slot       data")
        .says("created");
    assert_eq!(d.json(&["export", "show", "mon-data"]), *mon);

    // every refusal names what is wrong and changes nothing
    let before = d.json(&["export", "list"]);
    for (args, code, needle) in [
        ("export add a/b --volume spare", 1, "invalid export name"),
        ("export add Big --volume spare", 1, "invalid export name"),
        (
            "export add x --volume nope",
            3,
            "volume \"nope\" does not exist",
        ),
        (
            "export add x --volume spare --snapshot web@monday",
            2,
            "cannot be used with",
        ),
        ("export add x", 2, "required"),
        (
            "export add x --volume spare --slot data",
            1,
            "slot goes with snapshot",
        ),
        (
            "export add x --snapshot web@monday",
            1,
            "name one of its slots (data, log)",
        ),
        (
            "export add x --snapshot web@monday --slot nope",
            3,
            "slot \"nope in snapshot web@monday\"",
        ),
        (
            "export add x --snapshot web@nope --slot data",
            3,
            "snapshot \"web@nope\"",
        ),
        (
            "export add x --snapshot nope@monday --slot data",
            3,
            "no group or volume \"nope\"",
        ),
        (
            "export add x --snapshot web --slot data",
            1,
            "GROUP@SNAPSHOT",
        ),
        ("export add live --volume web-data", 4, "already exists"),
        ("export show nope", 3, "export \"nope\""),
        ("export remove nope", 3, "export \"nope\""),
        (
            "export add x --volume spare --dry-run --snapshot web@monday",
            2,
            "cannot be used with",
        ),
        ("export add x --snapshot web@monday --dry-run", 1, "slots"),
    ] {
        let out = run(&d, args).code(code);
        assert!(
            out.stderr.contains(needle),
            "`ferry {args}` did not say {needle:?}: {}",
            out.stderr
        );
    }
    // a raw body with both, or neither, names the field
    let both = d.http(
        "POST",
        "/v1/exports",
        Some(&d.admin),
        br#"{"name":"x","volume":"spare","snapshot":"web@monday"}"#,
    );
    assert_eq!(both.status, 400);
    assert_eq!(both.json()["error"]["field"], "snapshot");
    let neither = d.http("POST", "/v1/exports", Some(&d.admin), br#"{"name":"x"}"#);
    assert_eq!(neither.status, 400);
    assert_eq!(neither.json()["error"]["field"], "volume");

    // dry runs say what would happen and change nothing
    run(&d, "export add dry --volume spare --dry-run")
        .ok()
        .says("dry run")
        .says("export volume spare (4096 bytes), read-write as NBD export dry");
    run(
        &d,
        "export add dry --snapshot web@monday --slot log --dry-run",
    )
    .ok()
    .says("export slot log of snapshot web@monday, read-only as NBD export dry");
    run(&d, "export remove mon-data --dry-run")
        .ok()
        .says("remove NBD export mon-data of slot data of snapshot web@monday");
    assert_eq!(
        d.json(&["export", "list"]),
        before,
        "refusals and dry runs changed nothing"
    );

    // a scoped user sees the exports of its groups only, and changes none
    run(&d, "user create alice --role user --grant team=web").ok();
    let alice = d.json(&["token", "create", "alice"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let seen = d
        .ferry_as(&alice, &["-o", "json", "export", "list"])
        .ok()
        .json();
    assert_eq!(
        names(&seen),
        ["mon-data", "web-log"],
        "not the lone volume's"
    );
    d.ferry_as(&alice, &["export", "show", "mon-data"]).ok();
    d.ferry_as(&alice, &["export", "show", "live"]).code(3);
    d.ferry_as(&alice, &["export", "add", "mine", "--volume", "web-data"])
        .code(5);
    d.ferry_as(&alice, &["export", "remove", "mon-data"])
        .code(5);
    run(&d, "group tag web team=db").ok();
    let seen = d
        .ferry_as(&alice, &["-o", "json", "export", "list"])
        .ok()
        .json();
    assert!(
        names(&seen).is_empty(),
        "the grant no longer matches: {seen}"
    );

    // a restart keeps them
    let before = d.json(&["export", "list"]);
    let (status, _) = d.terminate();
    assert_eq!(status.code(), Some(0));
    drop(d);
    let d = Daemon::start(&data);
    assert_eq!(d.json(&["export", "list"]), before);

    // removal, and the cascades
    run(&d, "export remove web-log")
        .ok()
        .says("removed export web-log");
    run(&d, "volume delete spare").ok();
    assert_eq!(names(&d.json(&["export", "list"])), ["mon-data"]);
    run(&d, "export show live").code(3);
    run(&d, "snapshot delete web@monday").ok();
    assert!(names(&d.json(&["export", "list"])).is_empty());
    // the volumes and group are untouched by the export removals
    assert_eq!(names(&d.json(&["volume", "list"])), ["web-data", "web-log"]);
    let audit = d.json(&["audit", "list"]);
    for action in ["export.create", "export.delete"] {
        assert!(
            audit
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["action"] == action),
            "audit lists {action}"
        );
    }
    run(&d, "audit verify").ok().says("chain intact");
}
