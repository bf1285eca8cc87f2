//! Replication: enabling, pausing, resuming and disabling a group's
//! replication to a partner, its status and health, and a replica's
//! recovery points. The cycles themselves run in the daemon
//! ([`crate::site::SiteLink`] gives their figures).
//!
//! Health, from the latest recovery point's age (the lag) and the cycles
//! of the last hour: `normal`; `warning` when the lag passes two intervals
//! (plus the last cycle's length) or 20 % of the last hour's cycles missed;
//! `critical` when the lag passes six intervals. It is computed at every
//! call, so it clears itself once cycles succeed again.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use ferry_store::{RecoveryPoint, ReplicationInfo, ReplicationSettings, validate_name};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Plan, blocking, plan};
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::site::ReplicationStats;
use crate::{AppState, error::ApiResult};

/// Shortest interval accepted.
pub const MIN_INTERVAL_SECS: u64 = 1;
/// Longest interval accepted (a day).
pub const MAX_INTERVAL_SECS: u64 = 86_400;

/// A request to replicate a group.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnableReplication {
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
    group: String,
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
    partner: String,
    /// Seconds between cycles (default 300).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86400)]
    interval_seconds: Option<u64>,
    /// Hourly recovery points kept besides the latest (default 24).
    #[serde(default)]
    #[schema(maximum = 8760)]
    keep_hourly: Option<u32>,
    /// Every N-th point application-consistent (default 0: never).
    #[serde(default)]
    #[schema(maximum = 1000000)]
    app_every: Option<u32>,
    /// `zstd` (default) or `off`.
    #[serde(default)]
    compression: Option<String>,
    /// Bytes per second at most (default: no cap).
    #[serde(default)]
    #[schema(minimum = 1)]
    bandwidth_bytes_per_second: Option<u64>,
}

/// A replication with its figures and health.
#[derive(Serialize, ToSchema)]
pub struct ReplicationStatus {
    #[serde(flatten)]
    info: ReplicationInfo,
    /// initial copy, replicating, idle, paused, failing, replica.
    state: String,
    /// normal, warning or critical (a replica: normal).
    health: String,
    /// Why the health is not normal.
    health_reasons: Vec<String>,
    /// Seconds since the latest recovery point was taken at the source.
    lag_seconds: Option<f64>,
    /// Changed bytes per byte on the wire.
    compression_ratio: f64,
    /// The sender's figures (the source only; none before its first cycle).
    stats: Option<ReplicationStats>,
}

/// A recovery point as listed.
pub type RecoveryPointInfo = RecoveryPoint;

fn settings(req: &EnableReplication) -> ApiResult<ReplicationSettings> {
    let d = ReplicationSettings::default();
    let interval_secs = req.interval_seconds.unwrap_or(d.interval_secs);
    if !(MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(&interval_secs) {
        return Err(ApiError::bad_request(format!(
            "interval_seconds must be between {MIN_INTERVAL_SECS} and {MAX_INTERVAL_SECS}, not {interval_secs}"
        ))
        .field("interval_seconds"));
    }
    let compression = match req.compression.as_deref() {
        None | Some("zstd") => true,
        Some("off") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "compression must be zstd or off, not {other:?}"
            ))
            .field("compression"));
        }
    };
    if req.bandwidth_bytes_per_second == Some(0) {
        return Err(
            ApiError::bad_request("bandwidth_bytes_per_second must be at least 1")
                .field("bandwidth_bytes_per_second"),
        );
    }
    let keep_hourly = req.keep_hourly.unwrap_or(d.keep_hourly);
    if keep_hourly > 8760 {
        return Err(
            ApiError::bad_request("keep_hourly must be at most 8760 (a year)").field("keep_hourly"),
        );
    }
    Ok(ReplicationSettings {
        interval_secs,
        keep_hourly,
        app_every: req.app_every.unwrap_or(d.app_every),
        compression,
        bandwidth: req.bandwidth_bytes_per_second,
    })
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn status(st: &AppState, info: ReplicationInfo) -> ReplicationStatus {
    let stats = st
        .site_link()
        .and_then(|l| l.replication_stats(&info.group));
    let lag_seconds = info
        .last_point_created
        .map(|c| now_nanos().saturating_sub(c) as f64 / 1e9);
    let interval = info.settings.interval_secs as f64;
    let mut reasons = Vec::new();
    let mut health = "normal";
    let state = if info.role == "replica" {
        if info.paused { "paused" } else { "replica" }.to_owned()
    } else if info.paused {
        "paused".into()
    } else {
        match &stats {
            Some(s) if s.running && s.initial_copy => "initial copy".into(),
            Some(s) if s.running => "replicating".into(),
            Some(s) if s.last_error.is_some() => "failing".into(),
            _ if info.last_point.is_none() => "initial copy".into(),
            _ => "idle".into(),
        }
    };
    if info.role == "source" && !info.paused {
        let slack = stats.as_ref().map_or(0.0, |s| s.last_cycle_seconds);
        match lag_seconds {
            Some(lag) if lag > 6.0 * interval + slack => {
                health = "critical";
                reasons.push(format!(
                    "the latest recovery point is {lag:.0} s old (interval {interval:.0} s)"
                ));
            }
            Some(lag) if lag > 2.0 * interval + slack => {
                health = "warning";
                reasons.push(format!(
                    "the latest recovery point is {lag:.0} s old (interval {interval:.0} s)"
                ));
            }
            _ => {}
        }
        if let Some(s) = &stats {
            if s.cycles_due_last_hour > 0
                && s.cycles_missed_last_hour * 5 >= s.cycles_due_last_hour
                && s.cycles_missed_last_hour > 0
            {
                if health == "normal" {
                    health = "warning";
                }
                reasons.push(format!(
                    "{} of the last hour's {} cycles failed",
                    s.cycles_missed_last_hour, s.cycles_due_last_hour
                ));
            }
            if let Some(e) = &s.last_error {
                reasons.push(format!("the last cycle failed: {e}"));
            }
        }
    }
    ReplicationStatus {
        compression_ratio: stats.as_ref().map_or(1.0, |s| s.compression_ratio()),
        info,
        state,
        health: health.into(),
        health_reasons: reasons,
        lag_seconds,
        stats,
    }
}

pub async fn enable(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<EnableReplication>,
) -> ApiResult<(StatusCode, Json<ReplicationStatus>)> {
    let s = settings(&req)?;
    let st2 = st.clone();
    let info = blocking(move || {
        Ok(st2
            .store()
            .enable_replication(&req.group, &req.partner, s)?)
    })
    .await?;
    if let Some(l) = st.site_link() {
        l.replicate_now(&info.group);
    }
    Ok((StatusCode::CREATED, Json(status(&st, info))))
}

pub async fn plan_enable(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<EnableReplication>,
) -> ApiResult<Json<Plan>> {
    let s = settings(&req)?;
    validate_name("group", &req.group)?;
    validate_name("partner", &req.partner)?;
    blocking(move || {
        st.store().group(&req.group)?;
        if !st
            .store()
            .list_partners()
            .iter()
            .any(|p| p.name == req.partner)
        {
            return Err(ferry_store::StoreError::not_found("partner", req.partner.clone()).into());
        }
        if st.store().replication(&req.group).is_ok() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "in_use",
                format!("group {:?} is already replicated", req.group),
            ));
        }
        Ok(plan(
            "replication.enable",
            vec![format!(
                "replicate group {} to partner {} every {} s, starting with an initial copy",
                req.group, req.partner, s.interval_secs
            )],
        ))
    })
    .await
}

pub async fn list(State(st): State<AppState>) -> ApiResult<Json<Vec<ReplicationStatus>>> {
    let st2 = st.clone();
    let all = blocking(move || Ok(st2.store().list_replications())).await?;
    Ok(Json(all.into_iter().map(|i| status(&st, i)).collect()))
}

pub async fn get(
    State(st): State<AppState>,
    Path(group): Path<String>,
) -> ApiResult<Json<ReplicationStatus>> {
    let st2 = st.clone();
    let info = blocking(move || Ok(st2.store().replication(&group)?)).await?;
    Ok(Json(status(&st, info)))
}

async fn set_paused(
    st: AppState,
    group: String,
    paused: bool,
) -> ApiResult<Json<ReplicationStatus>> {
    let st2 = st.clone();
    let info = blocking(move || Ok(st2.store().set_replication_paused(&group, paused)?)).await?;
    if !paused && let Some(l) = st.site_link() {
        l.replicate_now(&info.group);
    }
    Ok(Json(status(&st, info)))
}

pub async fn pause(
    State(st): State<AppState>,
    Path(group): Path<String>,
) -> ApiResult<Json<ReplicationStatus>> {
    set_paused(st, group, true).await
}

pub async fn resume(
    State(st): State<AppState>,
    Path(group): Path<String>,
) -> ApiResult<Json<ReplicationStatus>> {
    set_paused(st, group, false).await
}

async fn plan_paused(st: AppState, group: String, paused: bool) -> ApiResult<Json<Plan>> {
    blocking(move || {
        let r = st.store().replication(&group)?;
        Ok(plan(
            if paused {
                "replication.pause"
            } else {
                "replication.resume"
            },
            vec![format!(
                "{} replication of group {} (partner {}, now {})",
                if paused { "pause" } else { "resume" },
                group,
                r.partner,
                if r.paused { "paused" } else { "running" }
            )],
        ))
    })
    .await
}

pub async fn plan_pause(
    State(st): State<AppState>,
    Path(group): Path<String>,
) -> ApiResult<Json<Plan>> {
    plan_paused(st, group, true).await
}

pub async fn plan_resume(
    State(st): State<AppState>,
    Path(group): Path<String>,
) -> ApiResult<Json<Plan>> {
    plan_paused(st, group, false).await
}

pub async fn run_now(
    State(st): State<AppState>,
    Path(group): Path<String>,
) -> ApiResult<Json<ReplicationStatus>> {
    let st2 = st.clone();
    let info = blocking(move || Ok(st2.store().replication(&group)?)).await?;
    if info.role != "source" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_source",
            format!(
                "group {:?} is a replica here; cycles start at its source",
                info.group
            ),
        ));
    }
    if let Some(l) = st.site_link() {
        l.replicate_now(&info.group);
    }
    Ok(Json(status(&st, info)))
}

pub async fn plan_run(
    State(st): State<AppState>,
    Path(group): Path<String>,
) -> ApiResult<Json<Plan>> {
    blocking(move || {
        let r = st.store().replication(&group)?;
        if r.role != "source" {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_source",
                format!("group {group:?} is a replica here; cycles start at its source"),
            ));
        }
        Ok(plan(
            "replication.run",
            vec![format!(
                "start a cycle of group {group} to partner {} now{}",
                r.partner,
                if r.paused {
                    " (it is paused: none will start)"
                } else {
                    ""
                }
            )],
        ))
    })
    .await
}

pub async fn disable(
    State(st): State<AppState>,
    Path(group): Path<String>,
) -> ApiResult<StatusCode> {
    blocking(move || {
        st.store().disable_replication(&group)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

pub async fn plan_disable(
    State(st): State<AppState>,
    Path(group): Path<String>,
) -> ApiResult<Json<Plan>> {
    blocking(move || {
        let r = st.store().replication(&group)?;
        let what = if r.role == "source" {
            "delete the snapshots kept for cycles"
        } else {
            "keep the recovery points as snapshots of an ordinary group"
        };
        Ok(plan(
            "replication.disable",
            vec![format!(
                "stop replicating group {group} ({} of partner {}); {what}",
                r.role, r.partner
            )],
        ))
    })
    .await
}

pub async fn recovery_points(
    State(st): State<AppState>,
    Path(group): Path<String>,
) -> ApiResult<Json<Vec<RecoveryPointInfo>>> {
    blocking(move || Ok(Json(st.store().recovery_points(&group)?))).await
}
