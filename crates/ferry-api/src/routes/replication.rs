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
    /// The last points kept whatever their hour (default 4).
    #[serde(default)]
    #[schema(maximum = 1000)]
    keep_last: Option<u32>,
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
    /// Start paused: no cycle until resumed (to seed the initial copy by hand).
    #[serde(default)]
    paused: bool,
    /// The initial copy starts no earlier: seconds since the Unix epoch.
    #[serde(default)]
    start_at_unix_seconds: Option<u64>,
}

/// A replication with its figures and health.
#[derive(Serialize, ToSchema)]
pub struct ReplicationStatus {
    #[serde(flatten)]
    info: ReplicationInfo,
    /// initial copy, scheduled, replicating, queued (due, waiting for one of
    /// the site's cycle slots), idle, paused, failing, resyncing, replica,
    /// failed over (promoted by an unplanned failover, until a reverse or
    /// resume).
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
    let keep_last = req.keep_last.unwrap_or(d.keep_last);
    if keep_last > 1000 {
        return Err(ApiError::bad_request("keep_last must be at most 1000").field("keep_last"));
    }
    let start_at = match req.start_at_unix_seconds {
        None => None,
        Some(t) if t <= 253_402_300_799 => Some(t * 1_000_000_000),
        Some(_) => {
            return Err(ApiError::bad_request(
                "start_at_unix_seconds must be before the year 10000",
            )
            .field("start_at_unix_seconds"));
        }
    };
    Ok(ReplicationSettings {
        start_at,
        interval_secs,
        keep_hourly,
        keep_last,
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

/// A running source's health and why: the latest point older than two
/// intervals (plus the last cycle's length) is a warning, older than six
/// critical; a fifth or more of the last hour's due cycles missed is a
/// warning, which clears itself as later cycles succeed.
fn health(
    interval: f64,
    lag_seconds: Option<f64>,
    stats: Option<&ReplicationStats>,
) -> (&'static str, Vec<String>) {
    let mut reasons = Vec::new();
    let mut health = "normal";
    let slack = stats.map_or(0.0, |s| s.last_cycle_seconds);
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
    if let Some(s) = stats {
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
    (health, reasons)
}

fn status(st: &AppState, info: ReplicationInfo) -> ReplicationStatus {
    let stats = st
        .site_link()
        .and_then(|l| l.replication_stats(&info.group));
    let lag_seconds = info
        .last_point_created
        .map(|c| now_nanos().saturating_sub(c) as f64 / 1e9);
    let interval = info.settings.interval_secs as f64;
    let state = if info.role == "replica" {
        if info.paused { "paused" } else { "replica" }.to_owned()
    } else if info.paused && info.failed_over.is_some() {
        "failed over".into()
    } else if info.paused {
        "paused".into()
    } else {
        match &stats {
            Some(s) if s.running && s.resyncing => "resyncing".into(),
            Some(s) if s.running && s.initial_copy => "initial copy".into(),
            _ if info.last_point.is_none()
                && info.settings.start_at.is_some_and(|t| t > now_nanos()) =>
            {
                "scheduled".into()
            }
            Some(s) if s.running => "replicating".into(),
            Some(s) if s.queued => "queued".into(),
            Some(s) if s.last_error.is_some() => "failing".into(),
            _ if info.last_point.is_none() => "initial copy".into(),
            _ => "idle".into(),
        }
    };
    let (health, reasons) = if info.role == "source" && !info.paused {
        health(interval, lag_seconds, stats.as_ref())
    } else {
        ("normal", Vec::new())
    };
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
    let paused = req.paused;
    // Paused from its first moment: a scheduler tick between enabling and
    // pausing would start the initial copy.
    let info = blocking(move || {
        Ok(st2
            .store()
            .enable_replication(&req.group, &req.partner, s, paused)?)
    })
    .await?;
    if !paused && let Some(l) = st.site_link() {
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

// ----- failover -----

/// Which recovery point to use (the latest when none).
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct PointChoice {
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
    point: Option<String>,
}

/// A failover test's group and its exports.
#[derive(Serialize, ToSchema)]
pub struct FailoverTest {
    group: ferry_store::GroupInfo,
    /// NBD export names, read-write, one per slot.
    exports: Vec<String>,
}

fn link(st: &AppState) -> ApiResult<std::sync::Arc<dyn crate::site::SiteLink>> {
    st.site_link().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_site_link",
            "this daemon does not talk to partners (no usable TLS material)",
        )
    })
}

fn check_point(p: &PointChoice) -> ApiResult<()> {
    if let Some(n) = &p.point {
        validate_name("snapshot", n).map_err(|e| ApiError::from(e).field("point"))?;
    }
    Ok(())
}

pub async fn failover_test(
    State(st): State<AppState>,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<PointChoice>,
) -> ApiResult<(StatusCode, Json<FailoverTest>)> {
    check_point(&req)?;
    blocking(move || {
        let store = st.store();
        let g = store.failover_test(&group, req.point.as_deref())?;
        let mut exports = Vec::new();
        for v in g.slots.values() {
            store.create_export(v, ferry_store::ExportSpec::Volume { volume: v })?;
            exports.push(v.clone());
        }
        Ok((
            StatusCode::CREATED,
            Json(FailoverTest { group: g, exports }),
        ))
    })
    .await
}

pub async fn plan_failover_test(
    State(st): State<AppState>,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<PointChoice>,
) -> ApiResult<Json<Plan>> {
    check_point(&req)?;
    blocking(move || {
        let points = st.store().recovery_points(&group)?;
        let point = match &req.point {
            Some(p) => points.iter().find(|x| &x.name == p).ok_or_else(|| {
                ferry_store::StoreError::not_found("recovery point", format!("{group}@{p}"))
            })?,
            None => points.last().ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!("group {group} has no recovery point yet"),
                )
            })?,
        };
        let test = ferry_store::failover_test_group(&group);
        if st.store().group(&test).is_ok() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "already_exists",
                format!("a failover test of {group} is running ({test}); clean it up first"),
            ));
        }
        Ok(plan(
            "failover.test",
            vec![format!(
                "clone {group}@{} into group {test} and export its volumes read-write; replication goes on",
                point.name
            )],
        ))
    })
    .await
}

pub async fn failover_test_cleanup(
    State(st): State<AppState>,
    Path(group): Path<String>,
) -> ApiResult<StatusCode> {
    blocking(move || {
        st.store().failover_test_cleanup(&group)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

pub async fn plan_failover_test_cleanup(
    State(st): State<AppState>,
    Path(group): Path<String>,
) -> ApiResult<Json<Plan>> {
    blocking(move || {
        let test = ferry_store::failover_test_group(&group);
        let g = st.store().group(&test)?;
        Ok(plan(
            "failover.test_cleanup",
            vec![format!(
                "delete group {test}, its volumes {} and their exports",
                g.slots.values().cloned().collect::<Vec<_>>().join(", ")
            )],
        ))
    })
    .await
}

pub async fn failover_unplanned(
    State(st): State<AppState>,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<PointChoice>,
) -> ApiResult<Json<ferry_store::Promotion>> {
    check_point(&req)?;
    blocking(move || {
        Ok(Json(
            st.store().promote_replica(&group, req.point.as_deref())?,
        ))
    })
    .await
}

pub async fn plan_failover_unplanned(
    State(st): State<AppState>,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<PointChoice>,
) -> ApiResult<Json<Plan>> {
    check_point(&req)?;
    blocking(move || {
        let r = st.store().replication(&group)?;
        if r.role != "replica" {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_a_replica",
                format!("group {group:?} is not a replica here"),
            ));
        }
        let point = req
            .point
            .clone()
            .or(r.last_point.clone())
            .unwrap_or_else(|| "(none yet)".into());
        Ok(plan(
            "failover.unplanned",
            vec![
                format!("run group {group} from recovery point {point} and take writes"),
                "drop whatever arrived of a cycle after it".into(),
                format!(
                    "stop receiving from {}; `ferry replication reverse {group}` sends back to it later",
                    r.partner
                ),
            ],
        ))
    })
    .await
}

pub async fn failover_planned(
    State(st): State<AppState>,
    Path(group): Path<String>,
) -> ApiResult<Json<crate::site::PlannedFailover>> {
    validate_name("group", &group)?;
    let l = link(&st)?;
    Ok(Json(l.failover_planned(&group).await?))
}

pub async fn plan_failover_planned(
    State(st): State<AppState>,
    Path(group): Path<String>,
) -> ApiResult<Json<Plan>> {
    blocking(move || {
        let r = st.store().replication(&group)?;
        if r.role != "source" {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_source",
                format!("group {group:?} is not replicated from this site"),
            ));
        }
        Ok(plan(
            "failover.planned",
            vec![
                format!("stop writes to group {group} (its exports turn read-only)"),
                format!("ship the last changes to {}", r.partner),
                format!(
                    "{} runs group {group} from that point and replicates it back here",
                    r.partner
                ),
                format!("group {group} here becomes its replica"),
            ],
        ))
    })
    .await
}

pub async fn reverse(
    State(st): State<AppState>,
    Path(group): Path<String>,
) -> ApiResult<Json<ferry_store::Demotion>> {
    validate_name("group", &group)?;
    let l = link(&st)?;
    Ok(Json(l.reverse(&group).await?))
}

pub async fn plan_reverse(
    State(st): State<AppState>,
    Path(group): Path<String>,
) -> ApiResult<Json<Plan>> {
    blocking(move || {
        let (partner, _, _) = st.store().reverse_plan(&group)?;
        Ok(plan(
            "replication.reverse",
            vec![
                format!("{partner} keeps what it wrote to {group} after the common point as a snapshot"),
                format!("{partner} becomes the replica of {group}; cycles send only blocks changed since that point"),
            ],
        ))
    })
    .await
}

// ----- seeds -----

/// A seed file on the daemon's machine.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeedExportRequest {
    /// An absolute path on the daemon's machine; the file must not exist.
    #[schema(max_length = 4096)]
    file: String,
}

/// A seed file to apply, and the partner that made it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeedImportRequest {
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
    partner: String,
    /// An absolute path on the daemon's machine.
    #[schema(max_length = 4096)]
    file: String,
}

fn seed_path(file: &str) -> ApiResult<std::path::PathBuf> {
    let p = std::path::Path::new(file);
    if file.is_empty() || file.len() > 4096 || file.contains('\0') || !p.is_absolute() {
        return Err(ApiError::bad_request(format!(
            "file must be an absolute path on the daemon's machine, not {file:?}"
        ))
        .field("file"));
    }
    Ok(p.to_owned())
}

pub async fn seed_export(
    State(st): State<AppState>,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<SeedExportRequest>,
) -> ApiResult<(StatusCode, Json<crate::site::SeedExport>)> {
    validate_name("group", &group)?;
    let path = seed_path(&req.file)?;
    let l = link(&st)?;
    Ok((
        StatusCode::CREATED,
        Json(l.seed_export(&group, &path).await?),
    ))
}

pub async fn plan_seed_export(
    State(st): State<AppState>,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<SeedExportRequest>,
) -> ApiResult<Json<Plan>> {
    let path = seed_path(&req.file)?;
    blocking(move || {
        let r = st.store().replication(&group)?;
        if r.role != "source" || r.last_point.is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "group {group:?} has no initial copy to seed (not a source, or copied already)"
                ),
            ));
        }
        if path.exists() {
            return Err(ApiError::bad_request(format!("{} exists", path.display())).field("file"));
        }
        Ok(plan(
            "replication.seed_export",
            vec![format!(
                "write the initial copy of {group} (for {}) into {}",
                r.partner,
                path.display()
            )],
        ))
    })
    .await
}

pub async fn seed_import(
    State(st): State<AppState>,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<SeedImportRequest>,
) -> ApiResult<(StatusCode, Json<RecoveryPoint>)> {
    validate_name("group", &group)?;
    validate_name("partner", &req.partner)?;
    let path = seed_path(&req.file)?;
    let l = link(&st)?;
    Ok((
        StatusCode::CREATED,
        Json(l.seed_import(&group, &req.partner, &path).await?),
    ))
}

pub async fn plan_seed_import(
    State(st): State<AppState>,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<SeedImportRequest>,
) -> ApiResult<Json<Plan>> {
    validate_name("group", &group)?;
    validate_name("partner", &req.partner)?;
    let path = seed_path(&req.file)?;
    blocking(move || {
        if !st
            .store()
            .list_partners()
            .iter()
            .any(|p| p.name == req.partner)
        {
            return Err(ferry_store::StoreError::not_found("partner", req.partner.clone()).into());
        }
        if !path.is_file() {
            return Err(
                ApiError::bad_request(format!("{} is not a file", path.display())).field("file"),
            );
        }
        Ok(plan(
            "replication.seed_import",
            vec![format!(
                "apply the seed {} from {} to replica group {group} as its first recovery point",
                path.display(),
                req.partner
            )],
        ))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(due: u64, missed: u64, last_cycle_seconds: f64) -> ReplicationStats {
        ReplicationStats {
            cycles_due_last_hour: due,
            cycles_missed_last_hour: missed,
            last_cycle_seconds,
            ..ReplicationStats::default()
        }
    }

    #[test]
    fn lag_past_two_intervals_warns_past_six_is_critical() {
        let s = stats(10, 0, 5.0);
        assert_eq!(health(30.0, None, Some(&s)).0, "normal");
        assert_eq!(health(30.0, Some(65.0), Some(&s)).0, "normal");
        let (h, why) = health(30.0, Some(66.0), Some(&s));
        assert_eq!(h, "warning");
        assert!(why[0].contains("66 s old (interval 30 s)"), "{why:?}");
        assert_eq!(health(30.0, Some(185.0), Some(&s)).0, "warning");
        assert_eq!(health(30.0, Some(186.0), Some(&s)).0, "critical");
        // before any cycle ran, no slack
        assert_eq!(health(30.0, Some(61.0), None).0, "warning");
    }

    #[test]
    fn a_fifth_of_the_hours_cycles_missed_warns_and_clears_as_cycles_succeed() {
        let (h, why) = health(30.0, Some(1.0), Some(&stats(10, 2, 1.0)));
        assert_eq!(h, "warning");
        assert_eq!(why, ["2 of the last hour's 10 cycles failed"]);
        // later cycles succeed: the same two misses are under a fifth
        let (h, why) = health(30.0, Some(1.0), Some(&stats(11, 2, 1.0)));
        assert_eq!((h, why.len()), ("normal", 0));
        assert_eq!(health(30.0, Some(1.0), Some(&stats(0, 0, 0.0))).0, "normal");
        // a warning does not hide a critical lag
        assert_eq!(
            health(30.0, Some(500.0), Some(&stats(10, 5, 1.0))).0,
            "critical"
        );
        let mut failing = stats(4, 1, 1.0);
        failing.last_error = Some("partner unreachable".into());
        let (h, why) = health(30.0, Some(1.0), Some(&failing));
        assert_eq!(h, "warning");
        assert_eq!(why[1], "the last cycle failed: partner unreachable");
    }
}
