//! Replication between sites: the sender that runs each source group's
//! cycles, and the partner routes that receive them into recovery points.
//!
//! ```text
//! source                                        replica (partner listener)
//!   every interval, per group:
//!   begin_cycle: snapshot repl-N  ───────────▶
//!   GET  /partner/v1/replication/{group}   ──▶  latest point, partial cycle
//!   POST /partner/v1/replication/{group}/stream
//!        header, runs…, end (ferry-repl)   ──▶  runs into the heads,
//!                                               checkpoint every 16 MiB,
//!                                               end verified → recovery point
//!   finish_cycle: repl-N is the new base  ◀──  200 {point}
//! ```
//!
//! Invariants: the store's records are the truth; this module keeps only
//! figures in memory. A cycle interrupted anywhere resumes: the source's
//! pending snapshot stays until acknowledged, the replica records how far it
//! durably got (after flushing) and a resumed stream starts there. If the
//! acknowledgement is lost, the next attempt finds the point already at the
//! replica and only records it. The decisions on both ends are
//! `ferry_repl::protocol`'s. Of a group's connections at the replica, only
//! the one whose header was accepted last writes, checkpoints or commits
//! (the group's fence): an old one still draining its bytes cannot write an
//! old cycle into newer heads, nor record progress a newer one discarded.
//!
//! Must not: make a recovery point visible before the end record verified;
//! block the runtime on the store (store calls run on blocking threads).

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_api::site::ReplicationStats;
use ferry_api::{ApiError, ApiResult};
use ferry_repl::cycle::{
    BlockSource, CycleReceiver, CycleSender, ReceiveError, Received, ReplicaSink, resume_from_text,
    resume_to_text,
};
use ferry_repl::protocol::{self, Refusal, ReplicaStep, SourceStep};
use ferry_repl::stream::{self as rs, Compression, CycleHeader};
use ferry_store::{
    PartialCycle, RecoveryPoint, ReplicaCycle, ReplicaStart, ReplicationSettings, SnapshotKind,
    SnapshotReader, Store, StoreError, Target, VolumeHandle,
};
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::partner::{Link, PartnerState, caller, error_chain};
use crate::serve::PeerCertificates;

/// Blocks applied between two checkpoints at the replica (16 MiB).
const CHECKPOINT_BLOCKS: u64 = 4096;
/// A call to a partner that moves no byte for this long has failed.
const STALL: Duration = Duration::from_secs(60);
/// The header naming a point's kind (`crash` or `app`).
const KIND_HEADER: &str = "ferry-point-kind";
/// The header carrying the replication settings (JSON) to the replica.
const SETTINGS_HEADER: &str = "ferry-replication-settings";

/// What the replica answers to `GET /partner/v1/replication/{group}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReplicaStateReply {
    /// The group exists here as a replica.
    pub exists: bool,
    /// The source's snapshot id of the latest recovery point.
    pub last_point: Option<u64>,
    pub partial: Option<PartialCycle>,
}

/// Per replica group, the fence that lets only the connection whose header
/// was accepted last write, checkpoint or commit (`protocol::Fence`).
pub(crate) type Fences = Arc<Mutex<HashMap<String, Arc<Mutex<protocol::Fence>>>>>;

impl PartnerState {
    fn fence(&self, group: &str) -> Arc<Mutex<protocol::Fence>> {
        self.fences
            .lock()
            .entry(group.to_owned())
            .or_default()
            .clone()
    }
}

fn store_error(e: StoreError) -> ApiError {
    ApiError::from(e)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("a blocking task failed: {e}")))?
}

// ----- the replica's routes -----

pub(crate) async fn replica_state(
    State(st): State<PartnerState>,
    peer: Option<Extension<PeerCertificates>>,
    Path(group): Path<String>,
) -> Response {
    let partner = match caller(&st, peer) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let store = st.app.store().clone();
    let got = blocking(move || store.replica_state(&group, &partner).map_err(store_error)).await;
    match got {
        Ok(None) => Json(ReplicaStateReply::default()).into_response(),
        Ok(Some((last_point, partial))) => Json(ReplicaStateReply {
            exists: true,
            last_point,
            partial,
        })
        .into_response(),
        Err(e) => e.into_response(),
    }
}

pub(crate) async fn replica_stream(
    State(st): State<PartnerState>,
    peer: Option<Extension<PeerCertificates>>,
    Path(group): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let partner = match caller(&st, peer) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let kind = match headers.get(KIND_HEADER).and_then(|v| v.to_str().ok()) {
        Some("app") => SnapshotKind::App,
        _ => SnapshotKind::Crash,
    };
    let settings: ReplicationSettings = headers
        .get(SETTINGS_HEADER)
        .and_then(|v| serde_json::from_slice(v.as_bytes()).ok())
        .unwrap_or_default();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, String>>(8);
    let store = st.app.store().clone();
    let who = partner.clone();
    let fence = st.fence(&group);
    let worker = tokio::task::spawn_blocking(move || {
        receive(&store, &who, &group, kind, settings, &fence, rx)
    });
    let mut frames = body.into_data_stream();
    while let Some(item) = frames.next().await {
        let item = item.map_err(|e| format!("the stream broke off: {e}"));
        let end = item.is_err();
        if tx.send(item).await.is_err() || end {
            break;
        }
    }
    drop(tx);
    match worker.await {
        Ok(Ok(point)) => Json(point).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => ApiError::internal(format!("the receiver failed: {e}")).into_response(),
    }
}

/// Writes runs into the replica group's volumes, while its receiver is the
/// group's latest (the fence is held across each write).
struct VolumeSink<'a> {
    volumes: &'a [VolumeHandle],
    fence: &'a Mutex<protocol::Fence>,
    ticket: protocol::Ticket,
}

impl ReplicaSink for VolumeSink<'_> {
    fn write(&mut self, slot: usize, first: u64, data: &[u8]) -> Result<(), String> {
        let v = self.volumes.get(slot).ok_or("no such slot")?;
        let fence = self.fence.lock();
        fence.check(self.ticket).map_err(|e| e.to_string())?;
        v.write(data, first * rs::BLOCK_SIZE as u64, false)
            .map_err(|e| e.to_string())
    }

    fn zero(&mut self, slot: usize, first: u64, blocks: u64) -> Result<(), String> {
        let v = self.volumes.get(slot).ok_or("no such slot")?;
        let fence = self.fence.lock();
        fence.check(self.ticket).map_err(|e| e.to_string())?;
        let bs = rs::BLOCK_SIZE as u64;
        v.write_zeroes(first * bs, blocks * bs, false)
            .map_err(|e| e.to_string())
    }
}

/// Nothing to write to yet (the header comes before any run).
struct NoSink;

impl ReplicaSink for NoSink {
    fn write(&mut self, _: usize, _: u64, _: &[u8]) -> Result<(), String> {
        Err("a run before the header".into())
    }

    fn zero(&mut self, _: usize, _: u64, _: u64) -> Result<(), String> {
        Err("a run before the header".into())
    }
}

fn stream_error(e: ReceiveError) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_stream",
        format!("the replication stream was refused: {e}"),
    )
}

/// The protocol's record of a partial cycle as the store keeps it.
fn partial_of(p: &PartialCycle) -> protocol::Partial {
    protocol::Partial {
        cycle: protocol::CycleRef {
            cycle: rs::CycleId(p.cycle),
            point: rs::SnapshotId(p.source_point),
        },
        resume: p.resume.as_deref().and_then(resume_from_text),
    }
}

/// How the replica takes the cycle of header `h`: the protocol's decision on
/// its record, inside the store's transaction.
fn replica_start(
    h: &CycleHeader,
    latest: Option<u64>,
    partial: Option<&PartialCycle>,
) -> Result<ReplicaStart, ApiError> {
    let record = protocol::ReplicaRecord {
        latest: latest.map(rs::SnapshotId),
        partial: partial.map(partial_of),
    };
    match protocol::replica_step(h, &record) {
        Ok(ReplicaStep::Fresh { discard }) => Ok(ReplicaStart::Fresh { discard }),
        Ok(ReplicaStep::Continue { .. }) => Ok(ReplicaStart::Continue),
        Err(r @ Refusal::BaseMismatch { .. }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            r.to_string(),
        )),
        Err(r @ Refusal::ResumeMismatch { .. }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "resume_mismatch",
            r.to_string(),
        )),
    }
}

/// The replica's side of one connection: decode, apply, checkpoint, and
/// on a verified end make the recovery point. `fence` is the group's: the
/// connection writes, checkpoints and commits only until a newer one's
/// header is accepted.
fn receive(
    store: &Store,
    partner: &str,
    group: &str,
    kind: SnapshotKind,
    settings: ReplicationSettings,
    fence: &Mutex<protocol::Fence>,
    mut rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, String>>,
) -> Result<RecoveryPoint, ApiError> {
    let mut rcv = CycleReceiver::new();
    let mut cycle: Option<(ReplicaCycle, CycleHeader, protocol::Ticket)> = None;
    let checkpoint =
        |rcv: &mut CycleReceiver, cycle: &Option<(ReplicaCycle, CycleHeader, protocol::Ticket)>| {
            if let (Some((c, h, ticket)), Some(rp)) = (cycle, rcv.resume_point()) {
                // A superseded connection records nothing: a newer one may have
                // discarded what it wrote.
                let f = fence.lock();
                if f.check(*ticket).is_ok() {
                    store
                        .replica_checkpoint(c, h.cycle.0, resume_to_text(&rp))
                        .map_err(store_error)?;
                    rcv.checkpointed();
                }
            }
            Ok::<(), ApiError>(())
        };
    loop {
        let polled = match &cycle {
            None => rcv.poll(&mut NoSink, CHECKPOINT_BLOCKS),
            Some((c, _, ticket)) => rcv.poll(
                &mut VolumeSink {
                    volumes: &c.volumes,
                    fence,
                    ticket: *ticket,
                },
                CHECKPOINT_BLOCKS,
            ),
        };
        match polled {
            Err(e) => {
                checkpoint(&mut rcv, &cycle)?;
                return Err(stream_error(e));
            }
            Ok(Received::Header(h)) => {
                if h.group != group {
                    return Err(ApiError::bad_request(format!(
                        "the stream is for group {:?}, not {group:?}",
                        h.group
                    )));
                }
                let slots: Vec<(String, u64)> =
                    h.volumes.iter().map(|v| (v.slot.clone(), v.size)).collect();
                // Held until the ticket is taken: no older receiver writes
                // between the decision and the takeover.
                let mut f = fence.lock();
                let c = store.replica_begin(
                    partner,
                    group,
                    h.cycle.0,
                    h.point.snapshot.0,
                    &slots,
                    settings.clone(),
                    |latest, partial| replica_start(&h, latest, partial),
                )?;
                let ticket = f.admit();
                drop(f);
                rcv.accept_header();
                cycle = Some((c, h, ticket));
            }
            Ok(Received::Applied { since_checkpoint }) => {
                if since_checkpoint >= CHECKPOINT_BLOCKS {
                    checkpoint(&mut rcv, &cycle)?;
                }
            }
            Ok(Received::NeedMore) => match rx.blocking_recv() {
                Some(Ok(b)) => rcv.push(&b),
                Some(Err(why)) => {
                    checkpoint(&mut rcv, &cycle)?;
                    return Err(ApiError::bad_request(why));
                }
                None => {
                    checkpoint(&mut rcv, &cycle)?;
                    return Err(ApiError::bad_request(
                        "the replication stream ended before its end record",
                    ));
                }
            },
            Ok(Received::End(_)) => {
                let Some((c, h, ticket)) = &cycle else {
                    return Err(ApiError::bad_request("an end record before the header"));
                };
                let f = fence.lock();
                f.check(*ticket).map_err(|e| {
                    ApiError::new(StatusCode::CONFLICT, "superseded", e.to_string())
                })?;
                let point = store
                    .replica_commit(c, h.cycle.0, &h.point.name, kind, h.point.created)
                    .map_err(store_error)?;
                drop(f);
                tracing::info!(
                    group,
                    partner,
                    point = %point.name,
                    "recovery point made"
                );
                return Ok(point);
            }
        }
    }
}

// ----- the sender -----

#[derive(Default)]
struct GroupFigures {
    stats: ReplicationStats,
    /// (when, succeeded) for the last hour's cycles: a success per point
    /// made, a miss per interval in which attempts kept failing.
    history: VecDeque<(Instant, bool)>,
    /// When the first attempt of the cycle not yet made began.
    cycle_began: Option<Instant>,
    last_attempt: Option<Instant>,
    failures_in_a_row: u32,
    /// Bytes the running cycle put on the wire so far.
    live: Option<Arc<std::sync::atomic::AtomicU64>>,
}

/// The sender: one task that starts due cycles, and the figures they leave.
pub struct Replicator {
    store: Store,
    link: Arc<Link>,
    figures: Mutex<HashMap<String, GroupFigures>>,
    wake: tokio::sync::Notify,
    now: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Replicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicator").finish_non_exhaustive()
    }
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Replicator {
    pub fn new(store: Store, link: Arc<Link>) -> Arc<Replicator> {
        Arc::new(Replicator {
            store,
            link,
            figures: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            now: Mutex::new(Vec::new()),
        })
    }

    pub fn stats(&self, group: &str) -> Option<ReplicationStats> {
        let mut f = self.figures.lock();
        let g = f.get_mut(group)?;
        let hour = Duration::from_secs(3600);
        while g.history.front().is_some_and(|(t, _)| t.elapsed() > hour) {
            g.history.pop_front();
        }
        g.stats.cycles_due_last_hour = g.history.len() as u64;
        g.stats.cycles_missed_last_hour = g.history.iter().filter(|(_, ok)| !ok).count() as u64;
        let mut out = g.stats.clone();
        if let Some(live) = &g.live {
            out.bytes_sent += live.load(std::sync::atomic::Ordering::Relaxed);
        }
        Some(out)
    }

    pub fn trigger(&self, group: &str) {
        self.now.lock().push(group.to_owned());
        self.wake.notify_one();
    }

    /// Runs due cycles until the process ends; at most `parallel` at once.
    pub async fn run(self: Arc<Self>, parallel: usize) {
        let running: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
        let slots = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = self.wake.notified() => {}
            }
            let asked: Vec<String> = std::mem::take(&mut *self.now.lock());
            let store = self.store.clone();
            let Ok(list) = tokio::task::spawn_blocking(move || store.list_replications()).await
            else {
                continue;
            };
            for r in list {
                if r.role != "source" || r.paused || running.lock().contains(&r.group) {
                    continue;
                }
                if !(asked.contains(&r.group) || self.due(&r)) {
                    continue;
                }
                running.lock().insert(r.group.clone());
                let me = self.clone();
                let running = running.clone();
                let slots = slots.clone();
                tokio::spawn(async move {
                    let _permit = slots.acquire_owned().await;
                    me.cycle(&r).await;
                    running.lock().remove(&r.group);
                });
            }
        }
    }

    /// Whether a cycle of `r` should start now.
    fn due(&self, r: &ferry_store::ReplicationInfo) -> bool {
        let f = self.figures.lock();
        let Some(g) = f.get(&r.group) else {
            return true;
        };
        let Some(last) = g.last_attempt else {
            return true;
        };
        let interval = Duration::from_secs(r.settings.interval_secs);
        let wait = if g.failures_in_a_row > 0 {
            // Retry sooner than the interval, backing off to it.
            (Duration::from_secs(1) * 2u32.saturating_pow(g.failures_in_a_row.min(16)))
                .min(interval)
        } else {
            interval
        };
        last.elapsed() >= wait
    }

    async fn cycle(&self, r: &ferry_store::ReplicationInfo) {
        let started = Instant::now();
        {
            let mut f = self.figures.lock();
            let g = f.entry(r.group.clone()).or_default();
            g.last_attempt = Some(started);
            g.stats.running = true;
            g.stats.last_started = Some(nanos());
            g.stats.initial_copy = r.last_point.is_none();
        }
        let outcome = self.send_cycle(r).await;
        let mut f = self.figures.lock();
        let g = f.entry(r.group.clone()).or_default();
        g.stats.running = false;
        g.stats.pending_bytes = 0;
        g.stats.last_finished = Some(nanos());
        let began = *g.cycle_began.get_or_insert(started);
        match &outcome {
            Ok(_) => {
                g.history.push_back((began, true));
                g.cycle_began = None;
            }
            Err(_) if began.elapsed() >= Duration::from_secs(r.settings.interval_secs) => {
                // A whole interval without a point: one cycle missed.
                g.history.push_back((began, false));
                g.cycle_began = Some(Instant::now());
            }
            Err(_) => {}
        }
        match outcome {
            Ok((sent, changed)) => {
                let secs = started.elapsed().as_secs_f64();
                g.stats.cycles_ok += 1;
                g.stats.last_error = None;
                g.stats.last_cycle_seconds = secs;
                g.stats.last_throughput = if secs > 0.0 { sent as f64 / secs } else { 0.0 };
                g.failures_in_a_row = 0;
                let _ = changed;
            }
            Err(e) => {
                tracing::warn!(group = %r.group, partner = %r.partner, "replication cycle failed: {}", e.message);
                g.stats.cycles_failed += 1;
                g.stats.last_error = Some(e.message);
                g.failures_in_a_row += 1;
            }
        }
    }

    /// One cycle of `r`: returns (bytes on the wire, changed bytes).
    async fn send_cycle(&self, r: &ferry_store::ReplicationInfo) -> ApiResult<(u64, u64)> {
        let store = self.store.clone();
        let group = r.group.clone();
        let start = blocking(move || {
            store
                .begin_cycle(&group, SnapshotKind::Crash)
                .map_err(store_error)
        })
        .await?;
        let partner = {
            let store = self.store.clone();
            let name = start.partner.clone();
            blocking(move || {
                store
                    .list_partners()
                    .into_iter()
                    .find(|p| p.name == name)
                    .ok_or_else(|| store_error(StoreError::not_found("partner", name)))
            })
            .await?
        };
        let http = self.link.partner_client(&partner, None)?;
        let base_url = format!(
            "https://{}/partner/v1/replication/{}",
            partner.address, r.group
        );
        let failed = |what: String| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "partner_unreachable",
                format!("replicating {} to {}: {what}", r.group, partner.name),
            )
        };
        let state: ReplicaStateReply = {
            let resp = tokio::time::timeout(STALL, http.get(&base_url).send())
                .await
                .map_err(|_| failed("asking for the replica's state timed out".into()))?
                .map_err(|e| failed(e.to_string()))?;
            let status = resp.status();
            if !status.is_success() {
                let text = resp.text().await.unwrap_or_default();
                return Err(failed(format!("it answered {status}: {text}")));
            }
            resp.json().await.map_err(|e| failed(e.to_string()))?
        };
        let point_id = start.point.id.0;
        let base_id = start.base.as_ref().map(|b| b.id.0);
        let record = protocol::ReplicaRecord {
            latest: state.last_point.map(rs::SnapshotId),
            partial: state.partial.as_ref().map(partial_of),
        };
        let this = protocol::CycleRef {
            cycle: rs::CycleId(start.cycle),
            point: rs::SnapshotId(point_id),
        };
        let resume = match protocol::source_step(this, base_id.map(rs::SnapshotId), &record) {
            SourceStep::Acknowledged => {
                // The replica made the point; its answer was lost.
                self.finish(&r.group, start.cycle).await?;
                return Ok((0, 0));
            }
            SourceStep::Diverged { .. } => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "replica_diverged",
                    format!(
                        "the replica's latest point is {:?}, not this site's base {:?}: a resync is needed",
                        state.last_point, base_id
                    ),
                ));
            }
            SourceStep::Send { resume } => resume,
        };
        if let Some(rp) = &resume {
            tracing::info!(
                group = %r.group,
                cycle = start.cycle,
                runs = rp.runs,
                blocks = rp.blocks,
                "resuming cycle {} where the replica stopped",
                start.cycle
            );
        }
        let volumes: Vec<rs::Volume> = start
            .point
            .members
            .iter()
            .map(|(slot, m)| rs::Volume {
                slot: slot.clone(),
                size: m.size,
            })
            .collect();
        let changed: Vec<_> = start
            .point
            .members
            .keys()
            .map(|slot| start.changed.get(slot).cloned().unwrap_or_default())
            .collect();
        let header = CycleHeader {
            group: r.group.clone(),
            cycle: rs::CycleId(start.cycle),
            base: base_id.map(rs::SnapshotId),
            point: rs::Point {
                snapshot: rs::SnapshotId(point_id),
                name: start.point.name.clone(),
                created: start.point.created,
            },
            volumes,
            compression: if start.settings.compression {
                Compression::Zstd
            } else {
                Compression::None
            },
            resume,
        };
        let readers: Vec<SnapshotReader> = {
            let store = self.store.clone();
            let group = r.group.clone();
            let name = start.point.name.clone();
            let slots: Vec<String> = start.point.members.keys().cloned().collect();
            blocking(move || {
                slots
                    .iter()
                    .map(|s| {
                        store
                            .open_snapshot(Target::Group(&group), &name, Some(s))
                            .map_err(store_error)
                    })
                    .collect()
            })
            .await?
        };
        let mut sender = CycleSender::new(header, changed, 3);
        {
            let mut f = self.figures.lock();
            let g = f.entry(r.group.clone()).or_default();
            g.stats.pending_bytes = sender.blocks_left() * rs::BLOCK_SIZE as u64;
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
        let rate = start.settings.bandwidth;
        let wire = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let wire2 = wire.clone();
        self.figures.lock().entry(r.group.clone()).or_default().live = Some(wire.clone());
        let producer = tokio::task::spawn_blocking(move || {
            let mut src = Readers(readers);
            let began = Instant::now();
            let mut sent = 0u64;
            loop {
                let mut out = Vec::with_capacity(1 << 20);
                match sender.next_chunk(&mut src, &mut out) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                        return (sender.covered_bytes, false);
                    }
                }
                sent += out.len() as u64;
                wire2.fetch_add(out.len() as u64, std::sync::atomic::Ordering::Relaxed);
                if let Some(rate) = rate.filter(|r| *r > 0) {
                    // Pace: never ahead of `rate` since the cycle began.
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(began.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                if tx.blocking_send(Ok(bytes::Bytes::from(out))).is_err() {
                    return (sender.covered_bytes, false);
                }
            }
            (sender.covered_bytes, true)
        });
        let body =
            reqwest::Body::wrap_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let kind = match start.point.kind {
            SnapshotKind::App => "app",
            SnapshotKind::Crash => "crash",
        };
        let settings = serde_json::to_string(&start.settings).unwrap_or_default();
        let resp = http
            .post(format!("{base_url}/stream"))
            .header(KIND_HEADER, kind)
            .header(SETTINGS_HEADER, settings)
            .body(body)
            .send()
            .await;
        let (covered, _) = producer
            .await
            .map_err(|e| ApiError::internal(format!("the stream producer failed: {e}")))?;
        let sent = wire.load(std::sync::atomic::Ordering::Relaxed);
        {
            let mut f = self.figures.lock();
            let g = f.entry(r.group.clone()).or_default();
            g.live = None;
            g.stats.bytes_sent += sent;
            g.stats.bytes_changed += covered;
        }
        let resp = resp.map_err(|e| failed(error_chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(failed(format!("it answered {status}: {text}")));
        }
        let point: RecoveryPoint = resp.json().await.map_err(|e| failed(e.to_string()))?;
        tracing::info!(group = %r.group, partner = %partner.name, point = %point.name, bytes = sent, "cycle acknowledged");
        self.finish(&r.group, start.cycle).await?;
        Ok((sent, covered))
    }

    async fn finish(&self, group: &str, cycle: u64) -> ApiResult<()> {
        let store = self.store.clone();
        let group = group.to_owned();
        blocking(move || store.finish_cycle(&group, cycle).map_err(store_error)).await
    }
}

/// Reads a snapshot's volumes for the sender.
struct Readers(Vec<SnapshotReader>);

impl BlockSource for Readers {
    fn read(&mut self, slot: usize, first: u64, buf: &mut [u8]) -> Result<(), String> {
        let r = self.0.get(slot).ok_or("no such slot")?;
        r.read(buf, first * rs::BLOCK_SIZE as u64)
            .map_err(|e| e.to_string())
    }
}
