//! The OpenAPI document: built from the route table, served at
//! `/v1/openapi.json` without a token, and committed as `docs/openapi.json`.
//! When the API changes, regenerate the committed copy with
//! `FERRY_BLESS=1 cargo test -p ferry-api --test openapi`.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use ferry_api::{AppState, AuditLog, Auth, openapi, routes};
use std::path::PathBuf;
use tower::ServiceExt;

fn committed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[test]
fn committed_document_matches_the_code() {
    let now = openapi::document_json();
    let path = committed();
    if std::env::var_os("FERRY_BLESS").is_some() {
        std::fs::write(&path, &now).unwrap();
    }
    let before = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        before == now,
        "docs/openapi.json is out of date with the route table; regenerate it with \
         `FERRY_BLESS=1 cargo test -p ferry-api --test openapi` and commit it"
    );
}

#[test]
fn every_route_is_one_documented_operation() {
    let doc: serde_json::Value = serde_json::from_str(&openapi::document_json()).unwrap();
    let table = routes::table();
    let mut ops = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ops += 1;
            let id = op["operationId"].as_str().unwrap();
            let r = table
                .iter()
                .find(|r| r.action == id)
                .unwrap_or_else(|| panic!("operation {id} is not in the route table"));
            assert_eq!(r.path, path, "{id}");
            assert_eq!(r.method.as_str().to_lowercase(), *method, "{id}");
            assert_eq!(op["x-ferry-privilege"], r.privilege.as_str(), "{id}");
            assert!(
                op["responses"]["4XX"].is_object(),
                "{id} documents no errors"
            );
            if !matches!(r.method.as_str(), "GET" | "HEAD") {
                assert!(r.plan.is_some(), "mutation {id} has no dry run");
                assert!(
                    op["parameters"]
                        .as_array()
                        .is_some_and(|ps| ps.iter().any(|p| p["name"] == "dry_run")),
                    "{id} does not document dry_run"
                );
            }
            let ok = &op["responses"][r.reply.unwrap().0.as_str()];
            assert!(ok.is_object(), "{id} documents no success reply");
            // every `{param}` of the path is a documented parameter
            for seg in path.split('/').filter(|s| s.starts_with('{')) {
                let name = seg.trim_matches(|c| c == '{' || c == '}');
                assert!(
                    op["parameters"].as_array().is_some_and(|ps| ps
                        .iter()
                        .any(|p| p["name"] == name && p["in"] == "path")),
                    "{id} does not document path parameter {name}"
                );
            }
        }
    }
    assert_eq!(ops, table.len(), "operations vs routes");
    // every reference resolves
    let text = doc.to_string();
    for piece in text.split("\"#/components/schemas/").skip(1) {
        let name = piece.split('"').next().unwrap();
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling reference to {name}"
        );
    }
}

#[tokio::test]
async fn served_without_a_token_and_equal_to_the_committed_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = ferry_store::Store::open(dir.path().join("store")).unwrap();
    let auth = Auth::open(dir.path().join("auth.json")).unwrap();
    let audit = AuditLog::open(dir.path().join("audit.log")).unwrap();
    let app = ferry_api::router(AppState::new(store, auth, audit));
    let resp = app
        .oneshot(
            Request::get(ferry_api::OPENAPI_PATH)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(body.to_vec()).unwrap(),
        std::fs::read_to_string(committed()).unwrap()
    );
}
