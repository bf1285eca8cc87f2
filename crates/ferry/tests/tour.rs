//! Runs the README's five-minute tour verbatim against a real ferryd.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The lines of the README code block that follows the `<!-- tour` marker.
fn tour_lines() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let after = readme
        .split("<!-- tour")
        .nth(1)
        .expect("README has a tour marker");
    let block = after
        .split("```")
        .nth(1)
        .expect("a code block follows the marker");
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn readme_tour_runs_verbatim() {
    let ferryd = bin_dir().join("ferryd");
    assert!(
        ferryd.exists(),
        "build it first: cargo build --workspace --bins"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(&ferryd)
        .args([
            "--api",
            "127.0.0.1:0",
            "--nbd",
            "127.0.0.1:0",
            "--partner-listen",
            "127.0.0.1:0",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _daemon = Daemon(child);
    let mut addr = None;
    let mut nbd = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(a) = line.strip_prefix("ferryd: NBD listening on nbd://") {
            nbd = a.split_whitespace().next().map(str::to_owned);
        }
        if let Some(a) = line.strip_prefix("ferryd: API listening on ") {
            addr = Some(a.to_owned());
            break;
        }
    }
    let addr = addr.expect("ferryd said where it listens");
    let nbd = nbd.expect("ferryd said where NBD listens");
    assert!(dir.path().join("ferry-data/admin.token").exists());

    let lines = tour_lines();
    assert!(lines.len() >= 10, "the tour has its commands");
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut outputs = Vec::new();
    for line in &lines {
        assert!(
            ["ferry ", "qemu-img ", "nbdinfo "]
                .iter()
                .any(|p| line.starts_with(p)),
            "tour lines are ferry, qemu-img or nbdinfo commands: {line}"
        );
        // the README uses the default NBD port; this ferryd took a free one
        let command = line.replace("127.0.0.1:10809", &nbd);
        let out = Command::new("bash")
            .args(["-c", &command])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("FERRY_SERVER", &addr)
            .env_remove("FERRY_TOKEN")
            .env_remove("FERRY_TOKEN_FILE")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "`{line}` failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push((line.clone(), stdout));
    }
    let said = |prefix: &str| {
        outputs
            .iter()
            .find(|(l, _)| l.starts_with(prefix))
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| panic!("the tour runs `{prefix}`"))
    };
    assert!(said("ferry volume list").contains("web1-data"));
    assert!(said("ferry group list").contains("web1-test"));
    assert!(said("ferry snapshot list web1-test").contains("undo-sync-"));
    assert!(said("ferry audit verify").contains("chain intact"));
    assert!(said("ferry audit list").contains("sync.run"));
    assert!(said("ferry export list").contains("web1-monday"));
    assert!(said("qemu-img info").contains("virtual size: 100 GiB"));
    assert!(said("nbdinfo --map").contains("hole,zero"));
}
