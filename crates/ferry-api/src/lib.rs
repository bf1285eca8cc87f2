//! ferry's HTTP API: JSON under `/v1/`, bearer tokens, roles, and an audit
//! record for every mutating request.
//!
//! Every endpoint is declared once in [`routes::table`] with the privilege it
//! needs next to its handler; [`router`] builds the axum router from that
//! table and wraps every route in [`guard`], which authenticates, authorizes,
//! and appends the audit record — allowed or denied. Handlers call the
//! synchronous engine on the blocking pool; long operations run as
//! [`jobs`] on threads of their own.
//!
//! What it must not do: touch disks other than through `ferry-store`, or
//! answer a 5xx for bad input.

pub mod audit;
pub mod auth;
mod body;
pub mod error;
pub mod jobs;
pub mod openapi;
pub mod routes;
pub mod site;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::Arc;

pub use audit::AuditLog;
pub use auth::{Auth, Principal, Privilege, Role};
pub use error::{ApiError, ApiResult};
pub use jobs::Jobs;
pub use routes::RouteInfo;

/// Where the OpenAPI document is served (without a token).
pub const OPENAPI_PATH: &str = "/v1/openapi.json";

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: ferry_store::Store,
    auth: Auth,
    audit: AuditLog,
    jobs: Jobs,
    routes: HashMap<(Method, &'static str), RouteInfo>,
    site: std::sync::OnceLock<Arc<dyn site::SiteLink>>,
}

impl AppState {
    /// State whose jobs are kept in memory only.
    pub fn new(store: ferry_store::Store, auth: Auth, audit: AuditLog) -> AppState {
        AppState::with_jobs(store, auth, audit, Jobs::in_memory())
    }

    pub fn with_jobs(
        store: ferry_store::Store,
        auth: Auth,
        audit: AuditLog,
        jobs: Jobs,
    ) -> AppState {
        let routes = routes::table()
            .into_iter()
            .map(|r| ((r.method.clone(), r.path), r))
            .collect();
        AppState {
            inner: Arc::new(Inner {
                store,
                auth,
                audit,
                jobs,
                routes,
                site: std::sync::OnceLock::new(),
            }),
        }
    }

    pub fn store(&self) -> &ferry_store::Store {
        &self.inner.store
    }

    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    pub fn audit(&self) -> &AuditLog {
        &self.inner.audit
    }

    pub fn jobs(&self) -> &Jobs {
        &self.inner.jobs
    }

    /// Connects the daemon's side of sites and partners; once only (a
    /// second call is ignored and returns false).
    pub fn set_site_link(&self, link: Arc<dyn site::SiteLink>) -> bool {
        self.inner.site.set(link).is_ok()
    }

    /// The daemon's side of sites and partners, if connected.
    pub fn site_link(&self) -> Option<&Arc<dyn site::SiteLink>> {
        self.inner.site.get()
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let mut by_path: Vec<(&'static str, axum::routing::MethodRouter<AppState>)> = Vec::new();
    for route in routes::table() {
        match by_path.iter_mut().find(|(p, _)| *p == route.path) {
            Some((_, mr)) => *mr = std::mem::take(mr).merge(route.handler),
            None => by_path.push((route.path, route.handler)),
        }
    }
    let mut r = Router::new();
    for (path, mr) in by_path {
        r = r.route(path, mr);
    }
    let doc = openapi::document_json();
    r.route_layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        // The API's description is public, like any published document.
        .route(
            OPENAPI_PATH,
            axum::routing::get(move || async move {
                ([(header::CONTENT_TYPE, "application/json")], doc)
            }),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state)
}

/// Marks what a mutating request acted on, for its audit record.
#[derive(Clone, Debug)]
pub struct AuditObject(pub String);

/// Authenticates, authorizes and audits one request.
async fn guard(
    State(state): State<AppState>,
    matched: MatchedPath,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    // axum answers HEAD with the GET handler; any other method the table does
    // not declare for this path is the client's mistake, not a server error.
    let declared = if method == Method::HEAD {
        Method::GET
    } else {
        method.clone()
    };
    let Some(route) = state
        .inner
        .routes
        .get(&(declared, matched.as_str()))
        .cloned()
    else {
        return ApiError::new(
            axum::http::StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {}", matched.as_str()),
        )
        .into_response();
    };
    let mutating = !matches!(method, Method::GET | Method::HEAD);
    let principal = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| state.auth().authenticate(t.trim()));
    let path = req.uri().path().to_owned();
    let (req, object) = if mutating {
        match named_object(req, &path).await {
            Ok(x) => x,
            Err(resp) => return resp,
        }
    } else {
        (req, path.clone())
    };
    let record = |actor: &str, outcome: &str, status: u16| {
        if mutating
            && let Err(e) = state
                .audit()
                .append(actor, route.action, &object, outcome, status)
        {
            tracing::error!(error = %e, "appending to the audit log failed");
        }
    };
    let Some(principal) = principal else {
        let err = ApiError::unauthorized();
        record("anonymous", "denied", err.status.as_u16());
        return err.into_response();
    };
    if !principal.role.allows(route.privilege) {
        let err = ApiError::forbidden(route.action);
        record(&principal.user, "denied", err.status.as_u16());
        return err.into_response();
    }
    let actor = principal.user.clone();
    let dry_run = if mutating {
        match wants_dry_run(req.uri().query()) {
            Ok(d) => d,
            Err(err) => {
                // an unreadable dry_run must never run the change for real
                record(&actor, "failed", err.status.as_u16());
                return err.into_response();
            }
        }
    } else {
        false
    };
    let mut req = req;
    req.extensions_mut().insert(principal);
    let resp = if dry_run {
        // the route's plan answers instead of its handler: it checks and
        // describes, and changes nothing
        let Some(plan) = route.plan.clone() else {
            let err =
                ApiError::bad_request(format!("{} has no dry run", route.action)).field("dry_run");
            record(&actor, "failed", err.status.as_u16());
            return err.into_response();
        };
        use tower::ServiceExt;
        match plan.with_state(state.clone()).oneshot(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    } else {
        next.run(req).await
    };
    let status = resp.status();
    let outcome = if status.is_success() && dry_run {
        "dry_run"
    } else if status.is_success() {
        "allowed"
    } else if status == axum::http::StatusCode::FORBIDDEN
        || status == axum::http::StatusCode::NOT_FOUND
    {
        // scoped users get 404 for groups they may not see
        "denied"
    } else {
        "failed"
    };
    record(&actor, outcome, status.as_u16());
    resp
}

/// Whether the query asks for a dry run: `dry_run=true` (or `1`), once. Any
/// other value, or two of them, is refused rather than taken for "no".
fn wants_dry_run(query: Option<&str>) -> Result<bool, ApiError> {
    let mut answer = None;
    for kv in query.unwrap_or("").split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if k != "dry_run" {
            continue;
        }
        let this = match v {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "dry_run must be true or false, not {v:?}"
                ))
                .field("dry_run"));
            }
        };
        if answer.replace(this).is_some() {
            return Err(ApiError::bad_request("dry_run is given twice").field("dry_run"));
        }
    }
    Ok(answer.unwrap_or(false))
}

/// The object a mutating request names: its path, plus the `name` of a JSON
/// body when it has one. Buffers the body (at most [`MAX_BODY`]).
async fn named_object(req: Request, path: &str) -> Result<(Request, String), Response> {
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return Err(ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the request body is larger than {MAX_BODY} bytes"),
            )
            .into_response());
        }
    };
    let name = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_owned));
    let object = match name {
        Some(n) => format!("{}/{}", path.trim_end_matches('/'), n),
        None => path.to_owned(),
    };
    Ok((
        Request::from_parts(parts, axum::body::Body::from(bytes)),
        object,
    ))
}
