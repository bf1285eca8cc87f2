//! Walks the whole router: every endpoint is declared with a privilege, is
//! guarded (401 without a token, 403 for a role without the privilege), and
//! every mutating request leaves an audit record, allowed or denied.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use ferry_api::auth::User;
use ferry_api::{AppState, AuditLog, Auth, Privilege, Role, routes};
use std::collections::HashSet;
use tower::ServiceExt;

fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { "x" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

async fn call(app: &axum::Router, method: &Method, path: &str, token: Option<&str>) -> StatusCode {
    let mut req = Request::builder().method(method.clone()).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = if matches!(*method, Method::GET | Method::DELETE) {
        Body::empty()
    } else {
        req = req.header("content-type", "application/json");
        Body::from("{}")
    };
    app.clone()
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn every_endpoint_is_declared_guarded_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let store = ferry_store::Store::open(dir.path().join("store")).unwrap();
    let auth = Auth::open(dir.path().join("auth.json")).unwrap();
    auth.create_user(User {
        name: "u".into(),
        role: Role::User,
        grants: vec![],
    })
    .unwrap();
    let (_, user_token) = auth.create_token("u").unwrap();
    let audit = AuditLog::open(dir.path().join("audit.log")).unwrap();
    let state = AppState::new(store, auth, audit);
    let app = ferry_api::router(state.clone());

    let table = routes::table();
    assert!(table.len() >= 25);
    let mut seen = HashSet::new();
    let mut actions = HashSet::new();
    let mut mutating = 0;
    for r in &table {
        assert!(
            seen.insert((r.method.clone(), r.path)),
            "{} {} declared twice",
            r.method,
            r.path
        );
        assert!(actions.insert(r.action), "action {} used twice", r.action);
        assert!(r.path.starts_with("/v1/"), "{}", r.path);
        assert!(Privilege::ALL.contains(&r.privilege));
        let path = concrete(r.path);
        assert_eq!(
            call(&app, &r.method, &path, None).await,
            StatusCode::UNAUTHORIZED,
            "{} {} answers without a token",
            r.method,
            r.path
        );
        assert_eq!(
            call(&app, &r.method, &path, Some("ferry_wrong")).await,
            StatusCode::UNAUTHORIZED,
            "{} {} takes a wrong token",
            r.method,
            r.path
        );
        let as_user = call(&app, &r.method, &path, Some(&user_token)).await;
        if Role::User.allows(r.privilege) {
            assert_ne!(as_user, StatusCode::FORBIDDEN, "{} {}", r.method, r.path);
        } else {
            assert_eq!(
                as_user,
                StatusCode::FORBIDDEN,
                "{} {} lets a user through",
                r.method,
                r.path
            );
        }
        assert!(
            !as_user.is_server_error(),
            "{} {} answered {as_user}",
            r.method,
            r.path
        );
        if r.method != Method::GET {
            mutating += 1;
        }
    }
    // Every mutating call above (two unauthenticated, one as the user) was recorded.
    let records = state.audit().list().unwrap();
    assert_eq!(records.len(), mutating * 3);
    assert!(
        records
            .iter()
            .filter(|r| r.actor == "anonymous")
            .all(|r| r.outcome == "denied")
    );
    assert!(state.audit().verify().unwrap().ok);
    // Anything outside the table is not served.
    assert_eq!(
        call(&app, &Method::GET, "/v1/nothing", None).await,
        StatusCode::NOT_FOUND
    );
}
