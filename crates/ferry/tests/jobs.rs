//! Jobs end to end: the real ferryd driven through the real ferry. A big
//! snapshot deletion is a job that `ferry job list` shows and that ends
//! done; a job can be cancelled; SIGTERM in the middle of a job stops ferryd
//! cleanly and the next start settles the job, the store consistent.
//!
//! To catch a job in the middle without sleeping, ferryd is started with the
//! test-only `FERRY_TEST_JOB_PAUSE=FILE`: a job waits at its safe points
//! while FILE exists and it has done at least the number of blocks FILE
//! holds. The data is written (and checked) with the engine directly while
//! no ferryd runs, since the API has no data path.
//!
//! Build the daemon first: `cargo build --workspace --bins`.

mod common;

use common::{Daemon, names};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BLOCK: usize = 4096;
/// The volume's blocks: 16 chunks of a merge.
const BLOCKS: usize = 4096;
/// Blocks the live volume rewrote after the snapshot `big`.
const REWRITTEN: usize = 100;
/// Where the pause file stops a job: after two merge chunks.
const PAUSE_AT: u64 = 512;

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8) ^ (i / BLOCK) as u8)
        .collect()
}

/// Makes, with the engine and no daemon, group `g` (slot `data` = volume
/// `v`, 16 MiB) whose snapshot `big` holds every block and whose live
/// volume then rewrote the first 100 blocks. Returns the live content.
/// A prepared store in `dir/data` (returning what its live volume holds)
/// served by a ferryd whose jobs wait at [`PAUSE_AT`] blocks while the
/// returned pause file exists.
fn paused_daemon(dir: &Path) -> (PathBuf, Vec<u8>, PathBuf, Daemon) {
    let data = dir.join("data");
    let live = prepare(&data);
    let pause = dir.join("pause");
    std::fs::write(&pause, PAUSE_AT.to_string()).unwrap();
    let d = Daemon::start_with_env(&data, &[("FERRY_TEST_JOB_PAUSE", &pause)]);
    (data, live, pause, d)
}

fn prepare(data: &Path) -> Vec<u8> {
    let store = ferry_store::Store::open(data).unwrap();
    store.create_volume("v", (BLOCKS * BLOCK) as u64).unwrap();
    store.create_group("g", &[("data", "v")]).unwrap();
    let v = store.volume("v").unwrap();
    let mut live = pattern(1, BLOCKS * BLOCK);
    v.write(&live, 0, false).unwrap();
    store
        .create_snapshot(
            ferry_store::Target::Group("g"),
            "big",
            ferry_store::SnapshotKind::Crash,
        )
        .unwrap();
    let head = pattern(2, REWRITTEN * BLOCK);
    v.write(&head, 0, false).unwrap();
    live[..head.len()].copy_from_slice(&head);
    store.flush_all().unwrap();
    live
}

/// The live volume `v`, read with the engine (no daemon may run).
fn live_bytes(data: &Path) -> Vec<u8> {
    let store = ferry_store::Store::open(data).unwrap();
    let v = store.volume("v").unwrap();
    let mut buf = vec![0u8; BLOCKS * BLOCK];
    v.read(&mut buf, 0).unwrap();
    buf
}

/// Asks `ferry job show` until `ok` holds, at most 30 s.
fn poll(d: &Daemon, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let job = d.json(&["job", "show", id]);
        if ok(&job) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never got {what}: {job}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn at_pause(j: &Value) -> bool {
    j["progress"]["done"].as_u64() >= Some(PAUSE_AT)
}

fn finished(j: &Value) -> bool {
    matches!(j["state"].as_str(), Some("done" | "failed" | "cancelled"))
}

/// Starts `ferry snapshot delete GROUP@SNAP --no-wait`; the job's id.
fn delete_no_wait(d: &Daemon, snapshot: &str) -> String {
    let out = d.ferry(&["snapshot", "delete", snapshot, "--no-wait"]).ok();
    let id = out.stdout.trim().to_owned();
    assert!(
        id.strip_prefix("job-")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        "--no-wait prints the job id: {:?}",
        out.stdout
    );
    id
}

fn snapshot_only(d: &Daemon) -> u64 {
    let space = d.json(&["space"]);
    space.as_array().unwrap()[0]["snapshot_only"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_big_snapshot_deletion_is_a_job_listed_until_done() {
    let dir = tempdir();
    let (data, live, pause, mut d) = paused_daemon(dir.path());

    let id = delete_no_wait(&d, "g@big");
    // the deletion itself is done at once; the job gives the space back
    assert!(names(&d.json(&["snapshot", "list", "g"])).is_empty());
    let mid = poll(&d, &id, "to the pause", at_pause);
    assert_eq!(mid["state"], "running", "{mid}");
    assert_eq!(mid["kind"], "snapshot.delete");
    assert_eq!(mid["target"], "g@big");
    assert_eq!(mid["actor"], "admin");
    assert_eq!(mid["progress"]["done"], PAUSE_AT, "it waits at the pause");
    assert_eq!(mid["progress"]["total"], (BLOCKS - REWRITTEN) as u64);
    assert_eq!(mid["progress"]["unit"], "blocks");
    assert!(mid["finished_ms"].is_null());

    // `ferry job list`, exactly as a person types it
    let list = d.ferry_env(&["job", "list"]).ok();
    let row = list
        .stdout
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("job list shows {id}:\n{}", list.stdout));
    for word in [
        "snapshot.delete",
        "g@big",
        "running",
        "512/3996 blocks",
        "admin",
    ] {
        assert!(row.contains(word), "{word:?} missing in {row:?}");
    }
    assert!(
        list.stdout.trim_start().starts_with("ID"),
        "{}",
        list.stdout
    );
    let listed = d.json(&["job", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());

    std::fs::remove_file(&pause).unwrap();
    let done = poll(&d, &id, "finished", finished);
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["progress"]["done"], (BLOCKS - REWRITTEN) as u64);
    assert_eq!(done["progress"]["total"], (BLOCKS - REWRITTEN) as u64);
    assert_eq!(done["result"]["blocks_merged"], (BLOCKS - REWRITTEN) as u64);
    assert!(done["finished_ms"].as_u64() >= done["started_ms"].as_u64());
    assert!(done["error"].is_null());
    assert_eq!(snapshot_only(&d), 0, "the snapshot's space is given back");
    d.ferry(&["job", "show", &id])
        .ok()
        .says("done")
        .says("3996/3996 blocks");

    // without --no-wait the CLI waits for the job; no bar when stdout is not a terminal
    d.ferry(&["snapshot", "create", "g", "--name", "s2"]).ok();
    let out = d.ferry(&["snapshot", "delete", "g@s2"]).ok();
    assert_eq!(out.stdout, "deleted snapshot g@s2\n");
    d.ferry(&["snapshot", "create", "g", "--name", "s3"]).ok();
    let j = d.json(&["snapshot", "delete", "g@s3"]);
    assert_eq!(j["ok"], true);
    assert_eq!(j["job"]["state"], "done");
    assert_eq!(j["job"]["target"], "g@s3");
    assert_eq!(d.json(&["job", "list"]).as_array().unwrap().len(), 3);
    // the jobs' requests are on record
    let audit = d.json(&["audit", "list"]);
    let deletes = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "snapshot.delete" && r["status"] == 202)
        .count();
    assert_eq!(deletes, 3);
    d.ferry(&["audit", "verify"]).ok();

    let (status, _) = d.terminate();
    assert!(status.success(), "{status:?}");
    assert_eq!(live_bytes(&data), live);
}

#[test]
fn a_job_can_be_cancelled_and_its_space_comes_back_later() {
    let dir = tempdir();
    let (data, live, pause, mut d) = paused_daemon(dir.path());

    let id = delete_no_wait(&d, "g@big");
    poll(&d, &id, "to the pause", at_pause);
    d.ferry(&["job", "cancel", &id])
        .ok()
        .says(&format!("cancelled job {id}"));
    let j = d.json(&["job", "show", &id]);
    assert_eq!(j["state"], "cancelled", "{j}");
    assert_eq!(j["progress"]["done"], PAUSE_AT);
    assert!(
        j["error"].as_str().unwrap().contains("snapshot is deleted"),
        "{j}"
    );
    // what the merge copied is in the live head; the rest still in the snapshot's layer
    assert_eq!(
        snapshot_only(&d),
        (REWRITTEN as u64 + PAUSE_AT) * BLOCK as u64
    );
    assert!(names(&d.json(&["snapshot", "list", "g"])).is_empty());

    // a finished job cannot be cancelled; unknown ones do not exist
    let again = d.ferry(&["job", "cancel", &id]).code(4);
    assert!(
        again.stderr.contains("already finished"),
        "{}",
        again.stderr
    );
    d.ferry(&["job", "cancel", "job-999"]).code(3);
    d.ferry(&["job", "show", "nope"]).code(3);

    // the next deletion's job gives back what the cancelled one left
    std::fs::remove_file(&pause).unwrap();
    d.ferry(&["snapshot", "create", "g", "--name", "s2"]).ok();
    d.ferry(&["snapshot", "delete", "g@s2"])
        .ok()
        .says("deleted snapshot g@s2");
    assert_eq!(snapshot_only(&d), 0);
    let jobs = d.json(&["job", "list"]);
    let states: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["cancelled", "done"]);

    let (status, _) = d.terminate();
    assert!(status.success(), "{status:?}");
    assert_eq!(live_bytes(&data), live);
}

#[test]
fn sigterm_mid_job_exits_0_and_the_restart_settles_the_job() {
    let dir = tempdir();
    let (data, live, _pause, mut d) = paused_daemon(dir.path());
    let id = delete_no_wait(&d, "g@big");
    let mid = poll(&d, &id, "to the pause", at_pause);
    assert_eq!(mid["state"], "running");

    // the pause file is still there: only the stop gets the job out of it
    let (status, said) = d.terminate();
    assert!(status.success(), "ferryd exited {status:?}; said {said:?}");
    assert!(
        said.iter().any(|l| l.contains("stopped cleanly")),
        "{said:?}"
    );
    assert!(
        !said
            .iter()
            .any(|l| l.contains("did not reach a safe point")),
        "the paused job stops at once on SIGTERM: {said:?}"
    );
    // recorded as it was, for the next start to settle
    let file: Value =
        serde_json::from_slice(&std::fs::read(data.join("jobs.json")).unwrap()).unwrap();
    let rec = file["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == id.as_str())
        .expect("the job is in jobs.json");
    assert_eq!(rec["state"], "running", "{rec}");
    assert!(rec["progress"]["done"].as_u64() >= Some(PAUSE_AT));

    let d = Daemon::start(&data);
    let jobs = d.json(&["job", "list"]);
    let j = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == id.as_str())
        .expect("the job survives the restart");
    assert_eq!(j["state"], "done", "{j}");
    assert_eq!(j["result"]["finished_at_open"], true);
    assert!(j["finished_ms"].is_u64());
    assert!(
        jobs.as_array()
            .unwrap()
            .iter()
            .all(|j| j["state"] != "running" && j["state"] != "queued")
    );
    assert!(names(&d.json(&["snapshot", "list", "g"])).is_empty());
    assert_eq!(
        snapshot_only(&d),
        0,
        "the store finished the reclaim at open"
    );
    let mut d = d;
    let (status, _) = d.terminate();
    assert!(status.success());
    assert_eq!(live_bytes(&data), live);
}

#[test]
fn a_waiting_cli_draws_a_progress_bar_on_a_terminal() {
    let dir = tempdir();
    let (_data, _, pause, mut d) = paused_daemon(dir.path());
    // `script` gives the CLI a pseudo-terminal as stdout and logs what it drew
    let typescript = dir.path().join("typescript");
    let cmd = d.command_as_admin();
    let line = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_str().unwrap().to_owned())
        .chain(["snapshot", "delete", "g@big"].map(String::from))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = std::process::Command::new("script")
        .args(["-q", "-f", "-e", "-c", &line])
        .arg(&typescript)
        .current_dir(dir.path())
        .env("FERRY_CONFIG", dir.path().join("no-config.toml"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("running script");
    let deadline = Instant::now() + Duration::from_secs(30);
    let drawn = loop {
        let text = std::fs::read_to_string(&typescript).unwrap_or_default();
        if text.contains("512/3996") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no bar at the pause was drawn:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(drawn.contains("snapshot.delete g@big"), "{drawn}");
    assert!(
        !drawn.contains(" 0/0 "),
        "no bar before the total is known: {drawn}"
    );
    std::fs::remove_file(&pause).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let text = std::fs::read_to_string(&typescript).unwrap();
    assert!(text.contains("deleted snapshot g@big"), "{text}");
    let (status, _) = d.terminate();
    assert!(status.success());
}
