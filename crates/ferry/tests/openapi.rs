//! The command tree against the API: every operation of the committed OpenAPI
//! document (docs/openapi.json) has a `ferry` command, and every command calls
//! an operation or works locally.

mod common;

use std::collections::BTreeSet;

#[test]
fn every_api_operation_has_a_command() {
    let out = std::process::Command::new(common::ferry_bin())
        .arg("__operations")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let cli: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/openapi.json"
        ))
        .unwrap(),
    )
    .unwrap();

    let api: BTreeSet<String> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .map(|op| op["operationId"].as_str().unwrap().to_owned())
        .collect();
    let mapped = cli["operations"].as_object().unwrap();
    let called: BTreeSet<String> = mapped
        .values()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let missing: Vec<_> = api.difference(&called).collect();
    assert!(
        missing.is_empty(),
        "API operations without a command: {missing:?}"
    );
    let unknown: Vec<_> = called.difference(&api).collect();
    assert!(
        unknown.is_empty(),
        "commands calling no such operation: {unknown:?}"
    );

    let leaves: BTreeSet<String> = cli["leaves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let local: BTreeSet<String> = cli["local"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    for c in mapped.keys().chain(local.iter()) {
        // `noun verb --flag`: the command with a flag that calls another operation
        let leaf = c.split(" --").next().unwrap();
        assert!(leaves.contains(leaf), "{c:?} is declared but is no command");
    }
    for leaf in &leaves {
        assert!(
            mapped.contains_key(leaf) || local.contains(leaf),
            "command {leaf:?} neither calls the API nor is local"
        );
    }
}
