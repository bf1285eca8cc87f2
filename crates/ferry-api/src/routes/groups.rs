//! Groups: slots and tags. Scoped users see only groups whose tags they hold.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use ferry_store::{GroupInfo, Store, StoreError};
use serde::Deserialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

use super::blocking;
use crate::auth::Principal;
use crate::body::JsonBody;
use crate::{AppState, error::ApiResult};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
    name: String,
    /// Slot name to volume name.
    #[serde(default)]
    #[schema(schema_with = crate::body::slots_schema)]
    slots: BTreeMap<String, String>,
    #[serde(default)]
    #[schema(schema_with = crate::body::tags_schema)]
    tags: BTreeMap<String, String>,
}

/// A group's tags: `key` to `value`.
#[derive(Deserialize)]
#[serde(transparent)]
pub struct Tags(BTreeMap<String, String>);

impl utoipa::PartialSchema for Tags {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::body::tags_schema().into()
    }
}

impl ToSchema for Tags {}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSlot {
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
    volume: String,
}

/// The group, if it exists and the principal may see it (else 404, so a
/// scoped user learns nothing of groups outside their grants).
pub(crate) fn visible(store: &Store, who: &Principal, name: &str) -> ApiResult<GroupInfo> {
    let g = store.group(name)?;
    if !who.sees(&g.tags) {
        return Err(StoreError::NotFound {
            kind: "group",
            name: name.to_owned(),
        }
        .into());
    }
    Ok(g)
}

pub async fn list(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Vec<GroupInfo>>> {
    blocking(move || {
        Ok(Json(
            st.store()
                .list_groups()
                .into_iter()
                .filter(|g| who.sees(&g.tags))
                .collect(),
        ))
    })
    .await
}

pub async fn create(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<CreateGroup>,
) -> ApiResult<(StatusCode, Json<GroupInfo>)> {
    blocking(move || {
        let slots: Vec<(&str, &str)> = req
            .slots
            .iter()
            .map(|(s, v)| (s.as_str(), v.as_str()))
            .collect();
        st.store().create_group(&req.name, &slots)?;
        let g = if req.tags.is_empty() {
            st.store().group(&req.name)?
        } else {
            st.store().set_tags(&req.name, req.tags).inspect_err(|_| {
                let _ = st.store().delete_group(&req.name);
            })?
        };
        Ok((StatusCode::CREATED, Json(g)))
    })
    .await
}

pub async fn get(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<Json<GroupInfo>> {
    blocking(move || Ok(Json(visible(st.store(), &who, &name)?))).await
}

pub async fn delete(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    blocking(move || {
        st.store().delete_group(&name)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

pub async fn set_tags(
    State(st): State<AppState>,
    Path(name): Path<String>,
    JsonBody(Tags(tags)): JsonBody<Tags>,
) -> ApiResult<Json<GroupInfo>> {
    blocking(move || Ok(Json(st.store().set_tags(&name, tags)?))).await
}

pub async fn set_slot(
    State(st): State<AppState>,
    Path((name, slot)): Path<(String, String)>,
    JsonBody(req): JsonBody<SetSlot>,
) -> ApiResult<Json<GroupInfo>> {
    blocking(move || Ok(Json(st.store().set_slot(&name, &slot, &req.volume)?))).await
}

pub async fn remove_slot(
    State(st): State<AppState>,
    Path((name, slot)): Path<(String, String)>,
) -> ApiResult<Json<GroupInfo>> {
    blocking(move || Ok(Json(st.store().remove_slot(&name, &slot)?))).await
}
