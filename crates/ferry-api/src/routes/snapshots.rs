//! Snapshots of groups, diffs, clones and sync.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use ferry_store::{BLOCK_SIZE, DiffEnd, GroupInfo, SnapshotInfo, SnapshotKind, Target};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

use super::blocking;
use super::groups::visible;
use crate::auth::Principal;
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::jobs::{Job, JobParams};
use crate::{AppState, error::ApiResult};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
    name: String,
    #[serde(default)]
    kind: SnapshotKind,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneRequest {
    /// The new group's name.
    #[serde(rename = "as")]
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
    new_group: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    /// `GROUP@SNAPSHOT`
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}@[a-z0-9][a-z0-9._-]{0,62}$")]
    source: String,
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
    target: String,
    #[schema(schema_with = crate::body::slot_list_schema)]
    slots: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    from: String,
    /// A snapshot name, or `live` (the default) for the volumes as they are.
    #[serde(default)]
    to: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SlotDiff {
    blocks: u64,
    bytes: u64,
}

#[derive(Serialize, ToSchema)]
pub struct DiffSummary {
    from: String,
    to: String,
    slots: BTreeMap<String, SlotDiff>,
}

pub async fn list(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(group): Path<String>,
) -> ApiResult<Json<Vec<SnapshotInfo>>> {
    blocking(move || {
        visible(st.store(), &who, &group)?;
        Ok(Json(st.store().list_snapshots(Target::Group(&group))?))
    })
    .await
}

pub async fn create(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<CreateSnapshot>,
) -> ApiResult<(StatusCode, Json<SnapshotInfo>)> {
    blocking(move || {
        visible(st.store(), &who, &group)?;
        let s = st
            .store()
            .create_snapshot(Target::Group(&group), &req.name, req.kind)?;
        Ok((StatusCode::CREATED, Json(s)))
    })
    .await
}

pub async fn get(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((group, snap)): Path<(String, String)>,
) -> ApiResult<Json<SnapshotInfo>> {
    blocking(move || {
        visible(st.store(), &who, &group)?;
        Ok(Json(st.store().snapshot(Target::Group(&group), &snap)?))
    })
    .await
}

/// Deletes the snapshot in one catalog transaction, then gives its space
/// back in a job: 202 with the job.
pub async fn delete(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((group, snap)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    blocking(move || {
        visible(st.store(), &who, &group)?;
        let gone = st
            .store()
            .delete_snapshot_record(Target::Group(&group), &snap)?;
        let params = JobParams::SnapshotDelete {
            group,
            snapshot: snap,
            snapshot_id: gone.id,
        };
        let job = st
            .jobs()
            .start(&who.user, params, st.store().clone())
            .map_err(|e| {
                ApiError::internal(format!(
                    "the snapshot is deleted, but recording the job that gives its space back failed ({e}); \
                     the space is given back when ferryd starts again"
                ))
            })?;
        Ok((StatusCode::ACCEPTED, Json(job)))
    })
    .await
}

pub async fn diff(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(group): Path<String>,
    q: Result<Query<DiffQuery>, QueryRejection>,
) -> ApiResult<Json<DiffSummary>> {
    // axum's own rejection is plain text; the API answers errors in JSON
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    blocking(move || {
        visible(st.store(), &who, &group)?;
        let to = q.to.clone().unwrap_or_else(|| "live".to_owned());
        let end = if to == "live" {
            DiffEnd::Live
        } else {
            DiffEnd::Snapshot(&to)
        };
        let sets = st.store().diff(Target::Group(&group), &q.from, end)?;
        let slots = sets
            .into_iter()
            .map(|(slot, set)| {
                (
                    slot,
                    SlotDiff {
                        blocks: set.len(),
                        bytes: set.len() * BLOCK_SIZE,
                    },
                )
            })
            .collect();
        Ok(Json(DiffSummary {
            from: q.from,
            to,
            slots,
        }))
    })
    .await
}

pub async fn clone(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((group, snap)): Path<(String, String)>,
    JsonBody(req): JsonBody<CloneRequest>,
) -> ApiResult<(StatusCode, Json<GroupInfo>)> {
    blocking(move || {
        visible(st.store(), &who, &group)?;
        let g = st.store().clone_group(&group, &snap, &req.new_group)?;
        Ok((StatusCode::CREATED, Json(g)))
    })
    .await
}

/// Splits `GROUP@SNAPSHOT`.
pub(crate) fn split_ref<'a>(field: &str, s: &'a str) -> ApiResult<(&'a str, &'a str)> {
    match s.split_once('@') {
        Some((g, n)) if !g.is_empty() && !n.is_empty() => Ok((g, n)),
        _ => Err(ApiError::bad_request(format!(
            "{field} must look like GROUP@SNAPSHOT, not {s:?}"
        ))
        .field(field)),
    }
}

/// Checks the sync at once (bad input is a 4xx here, not a failed job),
/// then runs it as a job: 202 with the job; its result is the `SyncReport`.
pub async fn sync(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    JsonBody(req): JsonBody<SyncRequest>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    blocking(move || {
        let (group, snap) = split_ref("source", &req.source)?;
        visible(st.store(), &who, group)?;
        visible(st.store(), &who, &req.target)?;
        let slots: Vec<&str> = req.slots.iter().map(String::as_str).collect();
        st.store().check_sync(group, snap, &req.target, &slots)?;
        let params = JobParams::Sync {
            source: req.source,
            target: req.target,
            slots: req.slots,
        };
        let job = st
            .jobs()
            .start(&who.user, params, st.store().clone())
            .map_err(|e| ApiError::internal(format!("recording the sync job failed: {e}")))?;
        Ok((StatusCode::ACCEPTED, Json(job)))
    })
    .await
}

// ----- dry runs: check against the current state, change nothing -----

pub async fn plan_create(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<CreateSnapshot>,
) -> ApiResult<Json<super::Plan>> {
    blocking(move || {
        let g = visible(st.store(), &who, &group)?;
        ferry_store::validate_name("snapshot", &req.name)?;
        if st
            .store()
            .snapshot(Target::Group(&group), &req.name)
            .is_ok()
        {
            return Err(ferry_store::StoreError::exists(
                "snapshot",
                format!("{group}@{}", req.name),
            )
            .into());
        }
        let slots: Vec<&str> = g.slots.keys().map(String::as_str).collect();
        Ok(super::plan(
            "snapshot.create",
            vec![format!(
                "snapshot group {group} (slots {}) as {group}@{} ({})",
                slots.join(", "),
                req.name,
                req.kind
            )],
        ))
    })
    .await
}

pub async fn plan_delete(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((group, snap)): Path<(String, String)>,
) -> ApiResult<Json<super::Plan>> {
    blocking(move || {
        visible(st.store(), &who, &group)?;
        st.store().snapshot(Target::Group(&group), &snap)?;
        Ok(super::plan(
            "snapshot.delete",
            vec![
                format!("delete snapshot {group}@{snap}"),
                "start a job that gives its space back".to_owned(),
            ],
        ))
    })
    .await
}

pub async fn plan_clone(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((group, snap)): Path<(String, String)>,
    JsonBody(req): JsonBody<CloneRequest>,
) -> ApiResult<Json<super::Plan>> {
    blocking(move || {
        visible(st.store(), &who, &group)?;
        ferry_store::validate_name("group", &req.new_group)?;
        let s = st.store().snapshot(Target::Group(&group), &snap)?;
        if st.store().group(&req.new_group).is_ok() {
            return Err(ferry_store::StoreError::exists("group", &req.new_group).into());
        }
        let volumes = st.store().list_volumes();
        let mut changes = vec![format!("create group {}", req.new_group)];
        for slot in s.members.keys() {
            let vname = format!("{}-{slot}", req.new_group);
            ferry_store::validate_name("volume", &vname)?;
            if volumes.iter().any(|v| v.name == vname) {
                return Err(ferry_store::StoreError::exists("volume", vname).into());
            }
            changes.push(format!(
                "slot {slot}: new volume {vname}, a clone of {group}@{snap} sharing its blocks"
            ));
        }
        Ok(super::plan("clone.create", changes))
    })
    .await
}

pub async fn plan_sync(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    JsonBody(req): JsonBody<SyncRequest>,
) -> ApiResult<Json<super::Plan>> {
    blocking(move || {
        let (group, snap) = split_ref("source", &req.source)?;
        visible(st.store(), &who, group)?;
        let target = visible(st.store(), &who, &req.target)?;
        let slots: Vec<&str> = req.slots.iter().map(String::as_str).collect();
        st.store().check_sync(group, snap, &req.target, &slots)?;
        let mut changes = vec![format!("take an undo snapshot of group {}", req.target)];
        for slot in &req.slots {
            let now = target.slots.get(slot).map_or("(empty)", String::as_str);
            changes.push(format!(
                "slot {slot} of {}: replace {now} by a clone of {}'s {slot}",
                req.target, req.source
            ));
        }
        for (slot, volume) in &target.slots {
            if !req.slots.contains(slot) {
                changes.push(format!("slot {slot} ({volume}) stays as it is"));
            }
        }
        Ok(super::plan("sync.run", changes))
    })
    .await
}
