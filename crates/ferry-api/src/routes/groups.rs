//! Groups: slots and tags. Scoped users see only groups whose tags they hold.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use ferry_store::{GroupInfo, Store, StoreError};
use serde::Deserialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

use super::{Plan, blocking, plan};
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

// ----- dry runs: check against the current state, change nothing -----

/// The volume, if it exists and is in no group.
fn free_volume(store: &Store, volume: &str) -> ApiResult<()> {
    let v = super::volumes::volume_info(store, volume)?;
    if let (Some(g), Some(slot)) = (v.group, v.slot) {
        return Err(StoreError::InUse {
            kind: "volume",
            name: volume.to_owned(),
            reason: format!("it is already slot {slot:?} of group {g:?}"),
        }
        .into());
    }
    Ok(())
}

fn check_tags(tags: &BTreeMap<String, String>) -> ApiResult<()> {
    for (k, v) in tags {
        ferry_store::validate_tag(k, v)?;
    }
    Ok(())
}

fn show_tags(tags: &BTreeMap<String, String>) -> String {
    if tags.is_empty() {
        return "(none)".into();
    }
    tags.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn plan_create(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<CreateGroup>,
) -> ApiResult<Json<Plan>> {
    blocking(move || {
        let store = st.store();
        ferry_store::validate_name("group", &req.name)?;
        if store.group(&req.name).is_ok() {
            return Err(StoreError::exists("group", &req.name).into());
        }
        let mut changes = vec![format!("create group {}", req.name)];
        let mut seen = std::collections::BTreeSet::new();
        for (slot, volume) in &req.slots {
            ferry_store::validate_name("slot", slot)?;
            free_volume(store, volume)?;
            if !seen.insert(volume) {
                return Err(StoreError::InUse {
                    kind: "volume",
                    name: volume.clone(),
                    reason: "it is named for two slots".into(),
                }
                .into());
            }
            changes.push(format!("put volume {volume} in slot {slot}"));
        }
        check_tags(&req.tags)?;
        if !req.tags.is_empty() {
            changes.push(format!("tag it {}", show_tags(&req.tags)));
        }
        Ok(plan("group.create", changes))
    })
    .await
}

pub async fn plan_delete(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Plan>> {
    blocking(move || {
        let g = st.store().group(&name)?;
        let snaps = st
            .store()
            .list_snapshots(ferry_store::Target::Group(&name))?
            .len();
        if snaps > 0 {
            return Err(StoreError::InUse {
                kind: "group",
                name,
                reason: format!("it has {snaps} snapshot(s); delete them first"),
            }
            .into());
        }
        let vols: Vec<String> = g.slots.values().cloned().collect();
        Ok(plan(
            "group.delete",
            vec![format!(
                "delete group {name}; its volumes stay: {}",
                if vols.is_empty() {
                    "(none)".into()
                } else {
                    vols.join(", ")
                }
            )],
        ))
    })
    .await
}

pub async fn plan_set_tags(
    State(st): State<AppState>,
    Path(name): Path<String>,
    JsonBody(Tags(tags)): JsonBody<Tags>,
) -> ApiResult<Json<Plan>> {
    blocking(move || {
        check_tags(&tags)?;
        let g = st.store().group(&name)?;
        Ok(plan(
            "group.set_tags",
            vec![format!(
                "tags of group {name}: {} → {}",
                show_tags(&g.tags),
                show_tags(&tags)
            )],
        ))
    })
    .await
}

pub async fn plan_set_slot(
    State(st): State<AppState>,
    Path((name, slot)): Path<(String, String)>,
    JsonBody(req): JsonBody<SetSlot>,
) -> ApiResult<Json<Plan>> {
    blocking(move || {
        ferry_store::validate_name("slot", &slot)?;
        let g = st.store().group(&name)?;
        if g.slots.contains_key(&slot) {
            return Err(StoreError::exists("slot", &slot).into());
        }
        free_volume(st.store(), &req.volume)?;
        Ok(plan(
            "group.set_slot",
            vec![format!(
                "put volume {} in slot {slot} of group {name}",
                req.volume
            )],
        ))
    })
    .await
}

pub async fn plan_remove_slot(
    State(st): State<AppState>,
    Path((name, slot)): Path<(String, String)>,
) -> ApiResult<Json<Plan>> {
    blocking(move || {
        let g = st.store().group(&name)?;
        let volume = g
            .slots
            .get(&slot)
            .ok_or_else(|| StoreError::not_found("slot", &slot))?;
        Ok(plan(
            "group.remove_slot",
            vec![format!(
                "take slot {slot} (volume {volume}, which stays) out of group {name}"
            )],
        ))
    })
    .await
}

/// A group's hooks, or none to clear them.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetHooks {
    /// Shell command that freezes the application (run by the daemon, as
    /// itself, with `FERRY_GROUP` set); null clears both hooks.
    #[schema(min_length = 1, max_length = 4096)]
    pre: Option<String>,
    /// Shell command that thaws it; always run once `pre` was started.
    #[schema(min_length = 1, max_length = 4096)]
    post: Option<String>,
    /// Seconds each may take (default 30, at most 3600).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3600)]
    timeout_seconds: Option<u64>,
}

fn hooks_of(req: SetHooks) -> ApiResult<Option<ferry_store::GroupHooks>> {
    match (req.pre, req.post) {
        (None, None) => Ok(None),
        (Some(pre), Some(post)) => {
            let h = ferry_store::GroupHooks {
                pre,
                post,
                timeout_secs: req.timeout_seconds.unwrap_or(30),
            };
            h.check()?;
            Ok(Some(h))
        }
        _ => Err(crate::error::ApiError::bad_request(
            "give both pre and post, or neither to clear the hooks",
        )
        .field("post")),
    }
}

pub async fn set_hooks(
    State(st): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<SetHooks>,
) -> ApiResult<Json<GroupInfo>> {
    let hooks = hooks_of(req)?;
    blocking(move || Ok(Json(st.store().set_group_hooks(&name, hooks)?))).await
}

pub async fn plan_set_hooks(
    State(st): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<SetHooks>,
) -> ApiResult<Json<Plan>> {
    let hooks = hooks_of(req)?;
    blocking(move || {
        st.store().group(&name)?;
        Ok(plan(
            "group.set_hooks",
            vec![match &hooks {
                Some(h) => format!(
                    "group {name}: freeze with {:?}, thaw with {:?}, {} s each at most",
                    h.pre, h.post, h.timeout_secs
                ),
                None => format!("group {name}: no hooks"),
            }],
        ))
    })
    .await
}
