//! NBD exports: names bound to a volume (read-write) or to one volume of a
//! snapshot (read-only). Serving them is the NBD server's; these routes keep
//! the catalog records.
//!
//! A scoped user sees an export only when the group it belongs to carries a
//! granted tag: a volume export belongs to the group its volume is a slot of,
//! a snapshot export to the group of the snapshot; a lone volume and its
//! snapshots belong to no group and are never seen by scoped users.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use ferry_store::{ExportInfo, ExportSpec, Store, StoreError, Target};
use serde::Deserialize;
use utoipa::ToSchema;

use super::groups::visible;
use super::snapshots::split_ref;
use super::volumes::volume_info;
use super::{Plan, blocking, plan};
use crate::auth::Principal;
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::{AppState, error::ApiResult};

/// A new export: `volume`, or `snapshot` (with `slot` for a group's
/// snapshot), exactly one of them.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateExport {
    /// The NBD export name.
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
    name: String,
    /// Export this volume, read-write.
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
    volume: Option<String>,
    /// Export a snapshot, read-only: `GROUP@SNAPSHOT` (with `slot`), or
    /// `VOLUME@SNAPSHOT` for a lone volume's snapshot (without `slot`). The
    /// part before `@` names a group when there is a group of that name,
    /// else a volume.
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}@[a-z0-9][a-z0-9._-]{0,62}$")]
    snapshot: Option<String>,
    /// The slot of a group's snapshot to export.
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
    slot: Option<String>,
}

/// The group an export belongs to, for scoping: its volume's group, or its
/// snapshot's group; `None` for a lone volume and its snapshots.
fn group_of(store: &Store, e: &ExportInfo) -> Option<String> {
    match (&e.snapshot, &e.volume) {
        (Some(_), _) => e.group.clone(),
        (None, Some(v)) => volume_info(store, v).ok().and_then(|v| v.group),
        (None, None) => None,
    }
}

/// Whether the principal may see the export.
fn sees(store: &Store, who: &Principal, e: &ExportInfo) -> bool {
    !who.role.scoped()
        || group_of(store, e)
            .and_then(|g| store.group(&g).ok())
            .is_some_and(|g| who.sees(&g.tags))
}

/// The export, if it exists and the principal may see it (else 404, so a
/// scoped user learns nothing of exports outside their grants).
fn visible_export(store: &Store, who: &Principal, name: &str) -> ApiResult<ExportInfo> {
    let e = store.export(name)?;
    if !sees(store, who, &e) {
        return Err(StoreError::not_found("export", name).into());
    }
    Ok(e)
}

/// Checks the body's fields and what they name (existence, scoping of a
/// group), and says what the export would serve, as words for a plan.
fn resolve<'a>(
    store: &Store,
    who: &Principal,
    req: &'a CreateExport,
) -> ApiResult<(ExportSpec<'a>, String)> {
    ferry_store::validate_name("export", &req.name)?;
    match (&req.volume, &req.snapshot) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "give volume or snapshot, not both: an export serves one of them",
        )
        .field("snapshot")),
        (None, None) => Err(ApiError::bad_request(
            "give volume (a read-write export) or snapshot (a read-only export of one of its volumes)",
        )
        .field("volume")),
        (Some(volume), None) => {
            if req.slot.is_some() {
                return Err(ApiError::bad_request(
                    "slot goes with snapshot; a volume export takes none",
                )
                .field("slot"));
            }
            let v = volume_info(store, volume)?;
            let seen = match &v.group {
                Some(g) => visible(store, who, g).is_ok(),
                None => !who.role.scoped(),
            };
            if !seen {
                return Err(StoreError::not_found("volume", volume).into());
            }
            Ok((
                ExportSpec::Volume { volume },
                format!("volume {volume} ({} bytes), read-write", v.size),
            ))
        }
        (None, Some(reference)) => {
            let (owner, snapshot) = split_ref("snapshot", reference)?;
            let target = if store.group(owner).is_ok() {
                visible(store, who, owner)?;
                Target::Group(owner)
            } else if volume_info(store, owner).is_ok() && !who.role.scoped() {
                Target::Volume(owner)
            } else {
                return Err(ApiError::not_found(format!(
                    "snapshot {reference:?}: there is no group or volume {owner:?}"
                ))
                .field("snapshot"));
            };
            let slot = req.slot.as_deref();
            let words = match slot {
                Some(slot) => format!("slot {slot} of snapshot {reference}, read-only"),
                None => format!("snapshot {reference}, read-only"),
            };
            Ok((
                ExportSpec::Snapshot {
                    target,
                    snapshot,
                    slot,
                },
                words,
            ))
        }
    }
}

/// What an existing export serves, in words.
fn serves(e: &ExportInfo) -> String {
    let v = e.volume.as_deref().unwrap_or("?");
    match (&e.snapshot, &e.group, &e.slot) {
        (Some(s), Some(g), Some(slot)) => format!("slot {slot} of snapshot {g}@{s}"),
        (Some(s), _, _) => format!("snapshot {v}@{s}"),
        (None, _, _) => format!("volume {v}"),
    }
}

pub async fn list(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Vec<ExportInfo>>> {
    blocking(move || {
        let store = st.store();
        Ok(Json(
            store
                .list_exports()
                .into_iter()
                .filter(|e| sees(store, &who, e))
                .collect(),
        ))
    })
    .await
}

pub async fn create(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    JsonBody(req): JsonBody<CreateExport>,
) -> ApiResult<(StatusCode, Json<ExportInfo>)> {
    blocking(move || {
        let (spec, _) = resolve(st.store(), &who, &req)?;
        let e = st.store().create_export(&req.name, spec)?;
        Ok((StatusCode::CREATED, Json(e)))
    })
    .await
}

pub async fn get(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<Json<ExportInfo>> {
    blocking(move || visible_export(st.store(), &who, &name).map(Json)).await
}

pub async fn delete(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    blocking(move || {
        visible_export(st.store(), &who, &name)?;
        st.store().remove_export(&name)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

// ----- dry runs: check against the current state, change nothing -----

pub async fn plan_create(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    JsonBody(req): JsonBody<CreateExport>,
) -> ApiResult<Json<Plan>> {
    blocking(move || {
        let (spec, words) = resolve(st.store(), &who, &req)?;
        st.store().check_export(&req.name, spec)?;
        Ok(plan(
            "export.create",
            vec![format!("export {words} as NBD export {}", req.name)],
        ))
    })
    .await
}

pub async fn plan_delete(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<Json<Plan>> {
    blocking(move || {
        let e = visible_export(st.store(), &who, &name)?;
        let what = if e.snapshot.is_some() {
            "snapshot"
        } else {
            "volume"
        };
        Ok(plan(
            "export.delete",
            vec![format!(
                "remove NBD export {name} of {} (the {what} stays); its clients lose it",
                serves(&e)
            )],
        ))
    })
    .await
}
