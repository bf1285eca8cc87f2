//! The API's one error type: a stable code, a message naming the offending
//! field, and the HTTP status. Bad input is always a 4xx.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferry_store::StoreError;
use serde::Serialize;

/// An error as the API returns it: `{"error": {"code", "message", "field"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

/// The body of every error reply.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail<'a> {
    /// Stable, for scripts: `bad_request`, `invalid_name`, `invalid_size`,
    /// `not_found`, `already_exists`, `in_use`, `unauthorized`, `forbidden`, ...
    code: &'a str,
    /// For people; names the offending field.
    message: &'a str,
    /// The request field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn with_message(mut self, message: impl Into<String>) -> ApiError {
        self.message = message.into();
        self
    }

    pub fn field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required (Authorization: Bearer TOKEN)",
        )
    }

    pub fn forbidden(action: &str) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("your role may not {action}"),
        )
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        use StatusCode as S;
        let message = e.to_string();
        let (status, code, field) = match &e {
            StoreError::InvalidName { kind, .. } => {
                (S::BAD_REQUEST, "invalid_name", Some(field_of(kind)))
            }
            StoreError::InvalidSize { .. } => {
                (S::BAD_REQUEST, "invalid_size", Some("size".to_owned()))
            }
            StoreError::NotFound { kind, .. } => (S::NOT_FOUND, "not_found", Some(field_of(kind))),
            StoreError::AlreadyExists { kind, .. } => {
                (S::CONFLICT, "already_exists", Some(field_of(kind)))
            }
            StoreError::InUse { .. } => (S::CONFLICT, "in_use", None),
            StoreError::Conflict(_) => (S::CONFLICT, "conflict", None),
            StoreError::Slot { .. } => (S::BAD_REQUEST, "invalid_slot", Some("slot".to_owned())),
            StoreError::Invalid(_) => (S::BAD_REQUEST, "invalid", None),
            StoreError::Pairing(_) => (S::FORBIDDEN, "pairing_refused", Some("token".to_owned())),
            StoreError::OutOfRange { .. } => (S::BAD_REQUEST, "out_of_range", None),
            StoreError::Shrink { .. } => (S::BAD_REQUEST, "cannot_shrink", Some("size".to_owned())),
            StoreError::NotAncestor { .. } => (S::BAD_REQUEST, "not_ancestor", None),
            StoreError::Deleted { .. } => (S::NOT_FOUND, "not_found", None),
            StoreError::Failed { .. } => (S::SERVICE_UNAVAILABLE, "volume_failed", None),
            StoreError::Locked { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Io { .. }
            | StoreError::Catalog { .. } => {
                tracing::error!(error = ?e, "storage error");
                (S::INTERNAL_SERVER_ERROR, "storage", None)
            }
        };
        ApiError {
            status,
            code,
            message,
            field,
        }
    }
}

fn field_of(kind: &str) -> String {
    match kind {
        "tag key" => "tags".to_owned(),
        other => other.to_owned(),
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
