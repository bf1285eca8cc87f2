//! Volumes and space.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use ferry_store::{SpaceInfo, VolumeInfo};
use serde::Deserialize;
use utoipa::ToSchema;

use super::{Plan, blocking, plan};
use crate::body::{JsonBody, size};
use crate::{AppState, error::ApiResult};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
    name: String,
    /// Bytes, or a string like `"10G"`; a multiple of 4 KiB, at most 16 TiB less 4 KiB.
    #[schema(schema_with = crate::body::size_schema)]
    size: serde_json::Value,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrowVolume {
    /// The new size: bytes, or a string like `"20G"`; never smaller.
    #[schema(schema_with = crate::body::size_schema)]
    size: serde_json::Value,
}

pub async fn list(State(st): State<AppState>) -> ApiResult<Json<Vec<VolumeInfo>>> {
    blocking(move || Ok(Json(st.store().list_volumes()))).await
}

pub async fn create(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<CreateVolume>,
) -> ApiResult<(StatusCode, Json<VolumeInfo>)> {
    ferry_store::validate_name("volume", &req.name)?;
    let bytes = size(&req.size)?;
    blocking(move || {
        Ok((
            StatusCode::CREATED,
            Json(st.store().create_volume(&req.name, bytes)?),
        ))
    })
    .await
}

pub async fn get(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<VolumeInfo>> {
    blocking(move || volume_info(st.store(), &name).map(Json)).await
}

pub async fn grow(
    State(st): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<GrowVolume>,
) -> ApiResult<Json<VolumeInfo>> {
    let bytes = size(&req.size)?;
    blocking(move || Ok(Json(st.store().grow_volume(&name, bytes)?))).await
}

pub async fn delete(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    blocking(move || {
        st.store().delete_volume(&name)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

pub async fn space(State(st): State<AppState>) -> ApiResult<Json<Vec<SpaceInfo>>> {
    blocking(move || Ok(Json(st.store().space()))).await
}

// ----- dry runs: check against the current state, change nothing -----

/// The volume named, or not_found.
pub(crate) fn volume_info(store: &ferry_store::Store, name: &str) -> ApiResult<VolumeInfo> {
    store
        .list_volumes()
        .into_iter()
        .find(|v| v.name == name)
        .ok_or_else(|| ferry_store::StoreError::not_found("volume", name).into())
}

pub async fn plan_create(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<CreateVolume>,
) -> ApiResult<Json<Plan>> {
    ferry_store::validate_name("volume", &req.name)?;
    let bytes = size(&req.size)?;
    blocking(move || {
        if volume_info(st.store(), &req.name).is_ok() {
            return Err(ferry_store::StoreError::exists("volume", &req.name).into());
        }
        Ok(plan(
            "volume.create",
            vec![format!("create volume {} of {bytes} bytes", req.name)],
        ))
    })
    .await
}

pub async fn plan_grow(
    State(st): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<GrowVolume>,
) -> ApiResult<Json<Plan>> {
    let bytes = size(&req.size)?;
    blocking(move || {
        let v = volume_info(st.store(), &name)?;
        if bytes < v.size {
            return Err(ferry_store::StoreError::Shrink {
                name,
                current: v.size,
                requested: bytes,
            }
            .into());
        }
        let change = if bytes == v.size {
            format!("nothing: volume {name} is already {bytes} bytes")
        } else {
            format!("grow volume {name} from {} to {bytes} bytes", v.size)
        };
        Ok(plan("volume.grow", vec![change]))
    })
    .await
}

pub async fn plan_delete(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Plan>> {
    blocking(move || {
        let v = volume_info(st.store(), &name)?;
        if let (Some(g), Some(slot)) = (&v.group, &v.slot) {
            return Err(ferry_store::StoreError::InUse {
                kind: "volume",
                name,
                reason: format!(
                    "it is slot {slot:?} of group {g:?}; remove it from the group first"
                ),
            }
            .into());
        }
        let own = st
            .store()
            .list_snapshots(ferry_store::Target::Volume(&name))?
            .len();
        if own > 0 {
            return Err(ferry_store::StoreError::InUse {
                kind: "volume",
                name,
                reason: format!("it has {own} snapshot(s); delete them first"),
            }
            .into());
        }
        Ok(plan(
            "volume.delete",
            vec![format!(
                "delete volume {name} ({} bytes) and its data",
                v.size
            )],
        ))
    })
    .await
}
