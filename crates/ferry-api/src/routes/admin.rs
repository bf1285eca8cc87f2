//! Users, tokens and the audit log.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Plan, blocking, plan};
use crate::audit::{Record, Verdict};
use crate::auth::{AuthError, Grant, Principal, Role, TokenInfo, User};
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::{AppState, error::ApiResult};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
    name: String,
    role: Role,
    /// Tags as `key=value`; a user with role `user` sees groups holding any of them.
    #[serde(default)]
    #[schema(schema_with = crate::body::grants_schema)]
    grants: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct NewToken {
    #[serde(flatten)]
    info: TokenInfo,
    /// The secret, shown this once.
    token: String,
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        match e {
            AuthError::UserExists(_) => {
                ApiError::new(StatusCode::CONFLICT, "already_exists", e.to_string()).field("name")
            }
            AuthError::NoUser(_) => ApiError::not_found(e.to_string()).field("user"),
            AuthError::NoToken(_) => ApiError::not_found(e.to_string()).field("id"),
            AuthError::LastAdmin(_) => {
                ApiError::new(StatusCode::CONFLICT, "last_admin", e.to_string()).field("name")
            }
            AuthError::Io(_) => ApiError::internal(e.to_string()),
        }
    }
}

fn io(e: std::io::Error) -> ApiError {
    ApiError::internal(format!("reading the audit log: {e}"))
}

pub async fn audit_list(State(st): State<AppState>) -> ApiResult<Json<Vec<Record>>> {
    blocking(move || st.audit().list().map(Json).map_err(io)).await
}

pub async fn audit_verify(State(st): State<AppState>) -> ApiResult<Json<Verdict>> {
    blocking(move || st.audit().verify().map(Json).map_err(io)).await
}

pub async fn user_list(State(st): State<AppState>) -> ApiResult<Json<Vec<User>>> {
    Ok(Json(st.auth().list_users()))
}

pub async fn user_create(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<CreateUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    ferry_store::validate_name("user", &req.name)?;
    let grants = parse_grants(&req.grants)?;
    blocking(move || {
        let user = st.auth().create_user(User {
            name: req.name,
            role: req.role,
            grants,
        })?;
        Ok((StatusCode::CREATED, Json(user)))
    })
    .await
}

/// Nobody deletes the user they are signed in as (so nobody locks
/// themselves out by mistake; another admin can).
fn not_yourself(who: &Principal, name: &str) -> ApiResult<()> {
    if who.user == name {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "self",
            format!("you are signed in as {name:?} and cannot delete yourself"),
        )
        .field("name"));
    }
    Ok(())
}

pub async fn user_delete(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    not_yourself(&who, &name)?;
    blocking(move || {
        st.auth().delete_user(&name)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

pub async fn token_create(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<NewToken>)> {
    blocking(move || {
        let (info, token) = st.auth().create_token(&name)?;
        Ok((StatusCode::CREATED, Json(NewToken { info, token })))
    })
    .await
}

pub async fn token_list(State(st): State<AppState>) -> ApiResult<Json<Vec<TokenInfo>>> {
    Ok(Json(st.auth().list_tokens()))
}

pub async fn token_delete(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    blocking(move || {
        st.auth().delete_token(&id)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// Grants as `key=value` strings, checked.
fn parse_grants(list: &[String]) -> ApiResult<Vec<Grant>> {
    let mut grants = Vec::new();
    for g in list {
        let Some((key, value)) = g.split_once('=') else {
            return Err(
                ApiError::bad_request(format!("grant {g:?} must look like key=value"))
                    .field("grants"),
            );
        };
        ferry_store::validate_name("tag key", key)
            .map_err(|e| ApiError::from(e).field("grants"))?;
        if !ferry_store::tag_value_ok(value) {
            return Err(ApiError::bad_request(format!(
                "grant {g:?}: a tag value must be at most 255 characters without control characters"
            ))
            .field("grants"));
        }
        grants.push(Grant {
            key: key.to_owned(),
            value: value.to_owned(),
        });
    }
    Ok(grants)
}

// ----- dry runs: check against the current state, change nothing -----

pub async fn plan_user_create(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<CreateUser>,
) -> ApiResult<Json<Plan>> {
    ferry_store::validate_name("user", &req.name)?;
    parse_grants(&req.grants)?;
    if st.auth().list_users().iter().any(|u| u.name == req.name) {
        return Err(AuthError::UserExists(req.name).into());
    }
    let role = serde_json::to_value(req.role)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut change = format!("create user {} with role {role}", req.name);
    if !req.grants.is_empty() {
        change.push_str(&format!(
            ", seeing groups tagged {}",
            req.grants.join(" or ")
        ));
    }
    Ok(plan("user.create", vec![change]))
}

pub async fn plan_user_delete(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<Json<Plan>> {
    not_yourself(&who, &name)?;
    let users = st.auth().list_users();
    let user = users
        .iter()
        .find(|u| u.name == name)
        .ok_or_else(|| AuthError::NoUser(name.clone()))?;
    let admins = users.iter().filter(|u| u.role == Role::Admin).count();
    if user.role == Role::Admin && admins == 1 {
        return Err(AuthError::LastAdmin(name).into());
    }
    let tokens = st
        .auth()
        .list_tokens()
        .iter()
        .filter(|t| t.user == name)
        .count();
    Ok(plan(
        "user.delete",
        vec![format!(
            "delete user {name} and revoke its {tokens} token(s)"
        )],
    ))
}

pub async fn plan_token_create(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Plan>> {
    if !st.auth().list_users().iter().any(|u| u.name == name) {
        return Err(AuthError::NoUser(name).into());
    }
    Ok(plan(
        "token.create",
        vec![format!("make a new token for user {name}")],
    ))
}

pub async fn plan_token_delete(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Plan>> {
    let t = st
        .auth()
        .list_tokens()
        .into_iter()
        .find(|t| t.id == id)
        .ok_or_else(|| AuthError::NoToken(id.clone()))?;
    Ok(plan(
        "token.delete",
        vec![format!("revoke token {id} of user {}", t.user)],
    ))
}
