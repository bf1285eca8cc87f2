//! The HTTP client: server, token and trust resolution, requests, and API
//! errors turned into messages and exit codes.
//!
//! TLS is rustls with the ring provider (installed here; reqwest is built
//! without a provider of its own). Trust for an `https://` server: the CA
//! given by `--ca`, `FERRY_CA` or the context's `ca`, and nothing else; or,
//! without one, the system's roots plus the site CA of the data directory the
//! token file is in (`./ferry-data/tls/ca.pem` for the default token file),
//! when there is one. A certificate that is not trusted is exit code 6 with a
//! message naming `--ca`.

use anyhow::{Result, anyhow, bail};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::fmt;
use std::path::{Path, PathBuf};

/// The token file used when none is given: the one `ferryd` writes at first
/// start in its default data directory.
const DEFAULT_TOKEN_FILE: &str = "ferry-data/admin.token";

/// A failed call, with the exit code it maps to.
#[derive(Debug)]
pub enum Failure {
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    Unreachable(String),
    /// A dry run answered with its plan, already printed: nothing changed.
    DryRun,
}

impl Failure {
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Api { status, .. } => match *status {
                StatusCode::NOT_FOUND => 3,
                StatusCode::CONFLICT => 4,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => 5,
                _ => 1,
            },
            Failure::Unreachable(_) => 6,
            Failure::DryRun => 0,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Api { code, message, .. } => write!(f, "{message} ({code})"),
            Failure::Unreachable(m) => f.write_str(m),
            Failure::DryRun => f.write_str("dry run: nothing changed"),
        }
    }
}

impl std::error::Error for Failure {}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    /// Mutations ask for a plan (`?dry_run=true`) and print it instead.
    dry_run: Option<crate::Format>,
}

impl Client {
    /// `ca`: the only CA to trust for an `https://` server; without it, the
    /// system's roots and the site CA next to the token file.
    pub fn new(
        server: Option<&str>,
        token: Option<&str>,
        token_file: Option<&str>,
        ca: Option<&str>,
    ) -> Result<Client> {
        let base = server
            .unwrap_or("http://127.0.0.1:7410")
            .trim_end_matches('/')
            .to_owned();
        let (token, token_from) = match (token, token_file) {
            (Some(t), _) => (Some(t.trim().to_owned()), None),
            (None, Some(f)) => (
                Some(
                    std::fs::read_to_string(f)
                        .map_err(|e| anyhow!("reading the token file {f}: {e}"))?
                        .trim()
                        .to_owned(),
                ),
                Some(PathBuf::from(f)),
            ),
            (None, None) => match std::fs::read_to_string(DEFAULT_TOKEN_FILE) {
                Ok(t) => (
                    Some(t.trim().to_owned()),
                    Some(PathBuf::from(DEFAULT_TOKEN_FILE)),
                ),
                Err(_) => (None, None),
            },
        };
        let trust = if !base.starts_with("https://") {
            Trust::System
        } else if let Some(ca) = ca {
            Trust::Only(PathBuf::from(ca))
        } else {
            match token_from.and_then(|f| site_ca_beside(&f)) {
                Some(ca) => Trust::SystemAnd(ca),
                None => Trust::System,
            }
        };
        Ok(Client {
            http: http_client(&trust)?,
            base,
            token,
            dry_run: None,
        })
    }

    /// Makes every mutation a dry run whose plan is printed in `out`'s format.
    pub fn dry_run(&mut self, out: crate::Format) {
        self.dry_run = Some(out);
    }

    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let dry = self.dry_run.filter(|_| method != Method::GET);
        let url = match dry {
            Some(_) if path.contains('?') => format!("{}{path}&dry_run=true", self.base),
            Some(_) => format!("{}{path}?dry_run=true", self.base),
            None => format!("{}{path}", self.base),
        };
        let mut req = self.http.request(method, url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Failure::Unreachable(unreachable(&self.base, &e)))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| {
            Failure::Unreachable(format!("reading the answer of {}: {e}", self.base))
        })?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            if let Some(out) = dry {
                print_plan(out, &value)?;
                return Err(Failure::DryRun.into());
            }
            return Ok(value);
        }
        let err = &value["error"];
        Err(Failure::Api {
            status,
            code: err["code"].as_str().unwrap_or("error").to_owned(),
            message: err["message"]
                .as_str()
                .map_or_else(|| format!("the server answered {status}"), str::to_owned),
        }
        .into())
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value> {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value> {
        self.call(Method::DELETE, path, None).await
    }
}

/// Which certificates an `https://` server may present.
enum Trust {
    /// The system's roots (and no TLS at all for `http://`).
    System,
    /// The system's roots and a site CA found beside the token file.
    SystemAnd(PathBuf),
    /// Only this CA (`--ca`, `FERRY_CA`, the context's `ca`).
    Only(PathBuf),
}

/// `DIR/tls/ca.pem` when the token file is `DIR/admin.token`-like and that
/// CA exists: the token came from a data directory, so the site is that one.
fn site_ca_beside(token_file: &Path) -> Option<PathBuf> {
    let ca = token_file.parent()?.join("tls").join("ca.pem");
    ca.is_file().then_some(ca)
}

fn read_certs(path: &Path) -> Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path)
        .map_err(|e| anyhow!("reading the CA certificate {}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| anyhow!("parsing the CA certificate {}: {e}", path.display()))?;
    if certs.is_empty() {
        bail!(
            "{} holds no PEM certificate (give ferryd's DATA/tls/ca.pem)",
            path.display()
        );
    }
    Ok(certs)
}

fn http_client(trust: &Trust) -> Result<reqwest::Client> {
    // The one provider in the tree; an Err only means it is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = match trust {
        Trust::System => reqwest::Client::builder(),
        Trust::SystemAnd(ca) => reqwest::Client::builder().tls_certs_merge(read_certs(ca)?),
        Trust::Only(ca) => reqwest::Client::builder().tls_certs_only(read_certs(ca)?),
    };
    builder
        .build()
        .map_err(|e| anyhow!("setting up the HTTP client: {}", chain(&e)))
}

/// The message for a request that got no answer, with the fix when TLS is
/// the reason.
fn unreachable(base: &str, e: &reqwest::Error) -> String {
    let tls = rustls_error(e);
    match tls {
        // (a machine without system roots: rustls-platform-verifier's words)
        Some(t @ rustls::Error::General(m)) if m.contains("CA certificates") => format!(
            "cannot reach ferryd at {base}: no CA to check its TLS certificate with ({t}); \
             give the site's CA with --ca FILE (ferryd prints its path at start: DATA/tls/ca.pem), \
             FERRY_CA=FILE, or `ferry context add NAME --server URL --ca FILE`"
        ),
        Some(
            t @ (rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::UnsupportedNameType),
        ) => format!(
            "cannot reach ferryd at {base}: its TLS certificate is not trusted ({t}); \
             give the site's CA with --ca FILE (ferryd prints its path at start: DATA/tls/ca.pem), \
             FERRY_CA=FILE, or `ferry context add NAME --server URL --ca FILE`"
        ),
        Some(t @ rustls::Error::InvalidMessage(_)) => format!(
            "cannot reach ferryd at {base}: the server does not speak TLS there ({t}); \
             if it serves plain HTTP, use an http:// URL"
        ),
        _ => format!("cannot reach ferryd at {base}: {}", chain(e)),
    }
}

/// The rustls error among `e`'s causes. It travels inside (nested)
/// io::Errors, whose `source()` skips the error they wrap, so those are
/// opened with `get_ref()`.
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        cur = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// An error and its causes, one after another (reqwest's own message alone
/// is often just "error sending request").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

/// Prints a dry run's plan.
fn print_plan(out: crate::Format, plan: &Value) -> Result<()> {
    if out == crate::Format::Json {
        println!("{}", serde_json::to_string_pretty(plan)?);
        return Ok(());
    }
    println!("dry run, nothing changed; this would:");
    for change in plan["changes"].as_array().into_iter().flatten() {
        println!("  {}", change.as_str().unwrap_or("?"));
    }
    Ok(())
}

/// Whether an error is only the end of a dry run.
pub fn is_dry_run(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<Failure>(), Some(Failure::DryRun))
}
