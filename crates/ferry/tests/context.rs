//! Named contexts switch the CLI between sites; completions print.

mod common;

use common::{Daemon, ferry_bin};
use std::process::Command;

fn ferry(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(ferry_bin())
        .env_remove("FERRY_SERVER")
        .env_remove("FERRY_TOKEN")
        .env_remove("FERRY_TOKEN_FILE")
        .env("FERRY_CONFIG", config)
        .current_dir(config.parent().unwrap())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn contexts_pick_the_site() {
    let dir = tempfile::tempdir().unwrap();
    let a = Daemon::start(&dir.path().join("a"));
    let b = Daemon::start(&dir.path().join("b"));
    a.ferry(&["volume", "create", "on-a", "--size", "1G"]).ok();
    b.ferry(&["volume", "create", "on-b", "--size", "1G"]).ok();
    let config = dir.path().join("config.toml");
    let token_a = a.data.join("admin.token");
    let token_b = b.data.join("admin.token");
    for (name, d, t) in [("prod", &a, &token_a), ("dr", &b, &token_b)] {
        let out = ferry(
            &config,
            &[
                "context",
                "add",
                name,
                "--server",
                &d.url,
                "--token-file",
                t.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // No context chosen yet: the default server is not ours.
    assert!(!ferry(&config, &["volume", "list"]).status.success());
    // --dry-run says what it would do and leaves the config file alone
    let saved = std::fs::read(&config).unwrap();
    for args in [
        &["context", "use", "dr", "--dry-run"][..],
        &["context", "remove", "prod", "--dry-run"],
        &[
            "context",
            "add",
            "x",
            "--server",
            "http://127.0.0.1:1",
            "--dry-run",
        ],
    ] {
        let out = ferry(&config, args);
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("dry run"),
            "{args:?}"
        );
    }
    assert_eq!(
        std::fs::read(&config).unwrap(),
        saved,
        "a dry run changed the config"
    );
    assert!(ferry(&config, &["context", "use", "dr"]).status.success());
    let list = String::from_utf8(ferry(&config, &["volume", "list"]).stdout).unwrap();
    assert!(list.contains("on-b") && !list.contains("on-a"), "{list}");
    assert!(ferry(&config, &["context", "use", "prod"]).status.success());
    let list = String::from_utf8(ferry(&config, &["volume", "list"]).stdout).unwrap();
    assert!(list.contains("on-a") && !list.contains("on-b"), "{list}");
    // A flag still wins over the context.
    let out = ferry(
        &config,
        &[
            "--server",
            &b.url,
            "--token-file",
            token_b.to_str().unwrap(),
            "volume",
            "list",
        ],
    );
    assert!(String::from_utf8(out.stdout).unwrap().contains("on-b"));
    let listed =
        String::from_utf8(ferry(&config, &["-o", "json", "context", "list"]).stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "prod" && c["current"] == true)
    );
    assert!(
        !ferry(&config, &["context", "use", "nowhere"])
            .status
            .success()
    );
    assert!(
        !ferry(&config, &["context", "add", "x", "--server", "not-a-url"])
            .status
            .success()
    );
    assert!(
        ferry(&config, &["context", "remove", "prod"])
            .status
            .success()
    );
    assert!(
        !ferry(&config, &["volume", "list"]).status.success(),
        "the removed context is no longer current"
    );
}

#[test]
fn completions_print_for_each_shell() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    for shell in ["bash", "zsh", "fish"] {
        let out = ferry(&config, &["completions", shell]);
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("snapshot") && text.contains("volume"),
            "{shell}"
        );
    }
}
