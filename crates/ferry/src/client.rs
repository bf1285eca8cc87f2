//! The HTTP client: server and token resolution, requests, and API errors
//! turned into messages and exit codes.

use anyhow::{Result, anyhow};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::fmt;

/// A failed call, with the exit code it maps to.
#[derive(Debug)]
pub enum Failure {
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    Unreachable(String),
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
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Api { code, message, .. } => write!(f, "{message} ({code})"),
            Failure::Unreachable(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Failure {}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(
        server: Option<&str>,
        token: Option<&str>,
        token_file: Option<&str>,
    ) -> Result<Client> {
        let base = server
            .unwrap_or("http://127.0.0.1:7410")
            .trim_end_matches('/')
            .to_owned();
        let token = match (token, token_file) {
            (Some(t), _) => Some(t.trim().to_owned()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| anyhow!("reading the token file {f}: {e}"))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => std::fs::read_to_string("ferry-data/admin.token")
                .ok()
                .map(|t| t.trim().to_owned()),
        };
        Ok(Client {
            http: reqwest::Client::new(),
            base,
            token,
        })
    }

    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            Failure::Unreachable(format!("cannot reach ferryd at {}: {e}", self.base))
        })?;
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
