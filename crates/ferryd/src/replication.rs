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
use ferry_api::site::{PlannedFailover, ReplicationStats, SeedExport};
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

use crate::partner::{Link, PartnerState, caller, error_chain, partner_json};
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

/// The fence of `group`.
fn fence_of(fences: &Fences, group: &str) -> Arc<Mutex<protocol::Fence>> {
    fences.lock().entry(group.to_owned()).or_default().clone()
}

/// Garbage collection off the cycles' path. A cycle that deletes old points
/// (the source after the answer, the replica after its commit) asks for a
/// collection here and is done: merging a deleted point's layer costs the
/// change since it, which at a steady 20 MB/s into a large group took longer
/// than a 30 s interval, and the next cycle waited for it. One task runs the
/// collections one after another; asks during a run make one more run.
#[derive(Clone, Debug)]
pub(crate) struct Collector {
    wake: Arc<tokio::sync::Notify>,
}

impl Collector {
    /// Starts the collecting task (on the current runtime).
    pub(crate) fn start(store: Store) -> Collector {
        let wake = Arc::new(tokio::sync::Notify::new());
        let asked = wake.clone();
        tokio::spawn(async move {
            loop {
                asked.notified().await;
                let store = store.clone();
                match tokio::task::spawn_blocking(move || store.collect_garbage()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(
                        error = %e,
                        "collecting deleted recovery points' space failed; the next cycle or a restart tries again"
                    ),
                    Err(e) => tracing::warn!(error = %e, "the garbage collection task failed"),
                }
            }
        });
        Collector { wake }
    }

    /// Asks for a collection soon.
    pub(crate) fn ask(&self) {
        self.wake.notify_one();
    }
}

impl PartnerState {
    fn fence(&self, group: &str) -> Arc<Mutex<protocol::Fence>> {
        fence_of(&self.fences, group)
    }
}

fn store_error(e: StoreError) -> ApiError {
    ApiError::from(e)
}

pub(crate) async fn blocking<T: Send + 'static>(
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
    let collector = st.collector.clone();
    let worker = tokio::task::spawn_blocking(move || {
        let point = receive(&store, &who, &group, kind, settings, &fence, rx);
        if point.is_ok() {
            collector.ask(); // the points the new one retired
        }
        point
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
    /// Bytes of changed blocks the running cycle has still to send.
    left: Option<Arc<std::sync::atomic::AtomicU64>>,
}

/// A bandwidth cap shared by every cycle to one partner: each chunk takes
/// its turn on a virtual wire of the cap's rate and goes when it would have
/// crossed it, so no burst ever runs ahead of the cap (as the per-group
/// pacing does).
struct Pacer {
    state: Mutex<(u64, Instant)>,
}

impl Pacer {
    /// How long to wait before sending `bytes`. A chunk starts on the
    /// wire when the one before it left it, if that was less than a
    /// chunk's time ago (the time spent reading and compressing it
    /// overlaps the wait), else now: an idle wire gives no credit.
    fn wait(&self, bytes: u64) -> Duration {
        let mut st = self.state.lock();
        let (rate, free) = *st;
        let now = Instant::now();
        let takes = Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64);
        let start = if free + takes >= now { free } else { now };
        let done = start + takes;
        st.1 = done;
        done.saturating_duration_since(now)
    }
}

/// The sender: one task that starts due cycles, and the figures they leave.
pub struct Replicator {
    store: Store,
    link: Arc<Link>,
    figures: Mutex<HashMap<String, GroupFigures>>,
    wake: tokio::sync::Notify,
    now: Mutex<Vec<String>>,
    pacers: Mutex<HashMap<String, Arc<Pacer>>>,
    /// The replica groups' fences, shared with the partner listener.
    fences: Fences,
    collector: Collector,
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
    pub fn new(
        store: Store,
        link: Arc<Link>,
        fences: Fences,
        collector: Collector,
    ) -> Arc<Replicator> {
        Arc::new(Replicator {
            store,
            link,
            figures: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            now: Mutex::new(Vec::new()),
            pacers: Mutex::new(HashMap::new()),
            fences,
            collector,
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
        if let Some(left) = &g.left {
            out.pending_bytes = left.load(std::sync::atomic::Ordering::Relaxed);
        }
        Some(out)
    }

    /// The pacer of partner `p`'s cap (none when it has no cap).
    fn partner_pacer(&self, p: &ferry_store::PartnerInfo) -> Option<Arc<Pacer>> {
        let mut all = self.pacers.lock();
        let Some(rate) = p.bandwidth else {
            all.remove(&p.name);
            return None;
        };
        let pacer = all.entry(p.name.clone()).or_insert_with(|| {
            Arc::new(Pacer {
                state: Mutex::new((rate, Instant::now())),
            })
        });
        pacer.state.lock().0 = rate;
        Some(pacer.clone())
    }

    pub fn trigger(&self, group: &str) {
        self.now.lock().push(group.to_owned());
        self.wake.notify_one();
    }

    /// Runs due cycles until the process ends: at most `parallel` at once,
    /// of which at most `initial` initial copies (or resyncs of a group
    /// with no point yet). A due cycle without a free slot is `queued` in
    /// its figures until it gets one.
    pub async fn run(self: Arc<Self>, parallel: usize, initial: usize) {
        let running: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
        let slots = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
        let initial_slots = Arc::new(tokio::sync::Semaphore::new(initial.max(1)));
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
                if r.role != "source" || r.paused {
                    continue;
                }
                if running.lock().contains(&r.group) {
                    // Asked while a cycle runs: one more once it ends.
                    if asked.contains(&r.group) {
                        self.now.lock().push(r.group.clone());
                    }
                    continue;
                }
                let not_yet =
                    r.last_point.is_none() && r.settings.start_at.is_some_and(|t| nanos() < t);
                if not_yet || !(asked.contains(&r.group) || self.due(&r)) {
                    continue;
                }
                running.lock().insert(r.group.clone());
                let me = self.clone();
                let running = running.clone();
                let slots = slots.clone();
                let initial_slots = initial_slots.clone();
                tokio::spawn(async move {
                    me.set_queued(&r.group, true);
                    let _first = if r.last_point.is_none() {
                        initial_slots.acquire_owned().await.ok()
                    } else {
                        None
                    };
                    let _permit = slots.acquire_owned().await;
                    me.set_queued(&r.group, false);
                    me.scheduled_cycle(&r.group).await;
                    running.lock().remove(&r.group);
                });
            }
        }
    }

    /// A cycle the scheduler found due, once it has its slot: the
    /// replication is read again, as waiting for the slot may have taken
    /// long, and nothing is sent if it was paused (a planned failover
    /// pauses it first), disabled or turned around meanwhile. It counts as
    /// running from before that read, so a failover waiting for quiet
    /// waits for it.
    async fn scheduled_cycle(&self, group: &str) {
        let set_running = |on: bool| {
            self.figures
                .lock()
                .entry(group.to_owned())
                .or_default()
                .stats
                .running = on;
        };
        set_running(true);
        let store = self.store.clone();
        let g = group.to_owned();
        match tokio::task::spawn_blocking(move || store.replication(&g)).await {
            Ok(Ok(now)) if now.role == "source" && !now.paused => self.cycle(&now).await,
            _ => set_running(false),
        }
    }

    fn set_queued(&self, group: &str, queued: bool) {
        let mut f = self.figures.lock();
        f.entry(group.to_owned()).or_default().stats.queued = queued;
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
        g.stats.resyncing = false;
        g.stats.last_finished = Some(nanos());
        let began = *g.cycle_began.get_or_insert(started);
        match &outcome {
            Ok(_) => {
                g.stats.pending_bytes = 0;
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
        let began = Instant::now();
        let app_due = r.pending_cycle.is_none()
            && r.settings.app_every > 0
            && r.next_cycle.is_multiple_of(u64::from(r.settings.app_every));
        let start = if app_due {
            self.begin_app_cycle(&r.group).await?
        } else {
            let store = self.store.clone();
            let group = r.group.clone();
            blocking(move || {
                store
                    .begin_cycle(&group, SnapshotKind::Crash)
                    .map_err(store_error)
            })
            .await?
        };
        let snapshot_secs = began.elapsed().as_secs_f64();
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
            let sent = tokio::time::timeout(STALL, http.get(&base_url).send())
                .await
                .map_err(|_| failed("asking for the replica's state timed out".into()))?;
            partner_json(
                sent,
                &format!("replicating {} to {}", r.group, partner.name),
            )
            .await?
        };
        let point_id = start.point.id.0;
        let mut start = start;
        let mut base_id = start.base.as_ref().map(|b| b.id.0);
        let record = protocol::ReplicaRecord {
            latest: state.last_point.map(rs::SnapshotId),
            partial: state.partial.as_ref().map(partial_of),
        };
        let this = protocol::CycleRef {
            cycle: rs::CycleId(start.cycle),
            point: rs::SnapshotId(point_id),
        };
        let (mut resume, diverged) =
            match protocol::source_step(this, base_id.map(rs::SnapshotId), &record) {
                SourceStep::Acknowledged => {
                    // The replica made the point; its answer was lost.
                    self.finish(&r.group, start.cycle).await?;
                    return Ok((0, 0));
                }
                SourceStep::Diverged { .. } => (None, true),
                SourceStep::Send { resume } => (resume, false),
            };
        let changed_blocks: u64 = start.changed.values().map(|c| c.len()).sum();
        let total_blocks: u64 = start
            .point
            .members
            .values()
            .map(|m| m.size / rs::BLOCK_SIZE as u64)
            .sum();
        let too_big = base_id.is_some() && changed_blocks * 2 > total_blocks;
        if diverged || too_big {
            // Resync: the replica's latest point, whatever it is, is the
            // base; only the regions whose digests differ travel. The plan
            // is the same at every attempt (both sides' points stay), so
            // an interrupted resync resumes like any cycle.
            let (changed, differ, regions) =
                self.resync_plan(&r.group, &partner.name, &start).await?;
            tracing::info!(
                group = %r.group,
                differ,
                regions,
                "resync: {differ} of {regions} regions differ from the replica's latest point"
            );
            start.changed = changed;
            base_id = state.last_point;
            resume = state
                .partial
                .as_ref()
                .filter(|p| p.cycle == start.cycle && p.source_point == point_id)
                .and_then(|p| p.resume.as_deref())
                .and_then(resume_from_text);
            let mut f = self.figures.lock();
            f.entry(r.group.clone()).or_default().stats.resyncing = true;
        }
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
        let (mut sender, readers) = self.cycle_sender(&r.group, &start, base_id, resume).await?;
        // What is left to send, counting down as the stream goes.
        let left = Arc::new(std::sync::atomic::AtomicU64::new(
            sender.blocks_left() * rs::BLOCK_SIZE as u64,
        ));
        let left2 = left.clone();
        {
            let mut f = self.figures.lock();
            let g = f.entry(r.group.clone()).or_default();
            g.left = Some(left.clone());
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
        let rate = start.settings.bandwidth;
        let pacer = self.partner_pacer(&partner);
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
                left2.store(
                    sender.blocks_left() * rs::BLOCK_SIZE as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                if let Some(p) = &pacer {
                    std::thread::sleep(p.wait(out.len() as u64));
                }
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
            g.left = None;
            g.stats.pending_bytes = left.load(std::sync::atomic::Ordering::Relaxed);
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
        tracing::info!(
            group = %r.group,
            partner = %partner.name,
            point = %point.name,
            bytes = sent,
            snapshot_secs = format!("{snapshot_secs:.2}"),
            acknowledged_secs = format!("{:.2}", began.elapsed().as_secs_f64()),
            "cycle acknowledged"
        );
        let finishing = Instant::now();
        self.finish(&r.group, start.cycle).await?;
        if finishing.elapsed() > Duration::from_secs(1) {
            tracing::info!(
                group = %r.group,
                secs = format!("{:.2}", finishing.elapsed().as_secs_f64()),
                "recording the acknowledgement was slow"
            );
        }
        Ok((sent, covered))
    }

    /// The encoder of `start`'s stream (from `resume`, if given) and the
    /// readers of its snapshot's volumes.
    async fn cycle_sender(
        &self,
        group: &str,
        start: &ferry_store::CycleStart,
        base_id: Option<u64>,
        resume: Option<rs::ResumePoint>,
    ) -> ApiResult<(CycleSender, Vec<SnapshotReader>)> {
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
            group: group.to_owned(),
            cycle: rs::CycleId(start.cycle),
            base: base_id.map(rs::SnapshotId),
            point: rs::Point {
                snapshot: rs::SnapshotId(start.point.id.0),
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
            let group = group.to_owned();
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
        Ok((CycleSender::new(header, changed, 3), readers))
    }

    async fn finish(&self, group: &str, cycle: u64) -> ApiResult<()> {
        let store = self.store.clone();
        let group = group.to_owned();
        blocking(move || store.finish_cycle(&group, cycle).map_err(store_error)).await?;
        self.collector.ask(); // the old base and the points retention let go
        Ok(())
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

// ----- failover and reverse -----

/// `POST /partner/v1/replication/{group}/promote`: the source asks its
/// replica to take over from the point the source names (planned failover).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteBody {
    /// The point's snapshot id at the source.
    pub source_point: u64,
}

/// `POST /partner/v1/replication/{group}/demote`: the new primary asks the
/// old one to become its replica from their common point (a reverse).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoteBody {
    /// The common point's snapshot id at the site asked (the old primary).
    pub common: u64,
    /// The same point's snapshot id at the caller.
    pub caller_point: u64,
}

/// The replication of `group` here, which must be a replica of `partner`.
fn replica_of(
    store: &Store,
    group: &str,
    partner: &str,
) -> Result<ferry_store::ReplicationInfo, ApiError> {
    let r = store.replication(group).map_err(store_error)?;
    if r.role != "replica" || r.partner != partner {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_a_replica",
            format!("group {group:?} is not a replica of {partner:?} here"),
        ));
    }
    Ok(r)
}

/// A partner call's common part: who calls (mutual TLS), its JSON body
/// (`usage` when unreadable), then `f` on a blocking thread, answered as JSON.
async fn partner_call<B, T>(
    st: &PartnerState,
    peer: Option<Extension<PeerCertificates>>,
    body: Result<Json<B>, axum::extract::rejection::JsonRejection>,
    usage: &'static str,
    f: impl FnOnce(Store, String, B) -> Result<T, ApiError> + Send + 'static,
) -> Response
where
    B: Send + 'static,
    T: Serialize + Send + 'static,
{
    let partner = match caller(st, peer) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let Ok(Json(body)) = body else {
        return ApiError::bad_request(usage).into_response();
    };
    let store = st.app.store().clone();
    match blocking(move || f(store, partner, body)).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

pub(crate) async fn replica_promote(
    State(st): State<PartnerState>,
    peer: Option<Extension<PeerCertificates>>,
    Path(group): Path<String>,
    body: Result<Json<PromoteBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let usage = "the body must be {\"source_point\": ID}";
    partner_call(&st, peer, body, usage, move |store, partner, body: PromoteBody| {
        replica_of(&store, &group, &partner)?;
        let name = store
            .recovery_point_by_source(&group, body.source_point)
            .map_err(store_error)?;
        let p = store
            .promote_replica(&group, Some(&name))
            .map_err(store_error)?;
        // Planned: the old primary turns replica right after this answer,
        // so cycles may go back at once.
        store
            .set_replication_paused(&group, false)
            .map_err(store_error)?;
        tracing::info!(group, partner, point = %p.point, "promoted by the primary (planned failover)");
        Ok(p)
    })
    .await
}

pub(crate) async fn replica_demote(
    State(st): State<PartnerState>,
    peer: Option<Extension<PeerCertificates>>,
    Path(group): Path<String>,
    body: Result<Json<DemoteBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let usage = "the body must be {\"common\": ID, \"caller_point\": ID}";
    partner_call(
        &st,
        peer,
        body,
        usage,
        move |store, partner, body: DemoteBody| {
            let d = store
                .demote_to_replica(&group, &partner, body.common, body.caller_point)
                .map_err(store_error)?;
            tracing::info!(group, partner, kept = ?d.kept, "now a replica (reverse)");
            Ok(d)
        },
    )
    .await
}

impl Replicator {
    async fn partner_post<T: serde::de::DeserializeOwned>(
        &self,
        partner: &str,
        path: String,
        body: serde_json::Value,
    ) -> ApiResult<T> {
        let store = self.store.clone();
        let name = partner.to_owned();
        let p = blocking(move || {
            store
                .list_partners()
                .into_iter()
                .find(|p| p.name == name)
                .ok_or_else(|| store_error(StoreError::not_found("partner", name)))
        })
        .await?;
        let http = self.link.partner_client(&p, Some(STALL))?;
        let sent = http
            .post(format!("https://{}{path}", p.address))
            .json(&body)
            .send()
            .await;
        partner_json(
            sent,
            &format!("calling partner {} at {}", p.name, p.address),
        )
        .await
    }

    /// Waits until no cycle of `group` is being sent (at most `patience`).
    async fn quiet(&self, group: &str, patience: Duration) -> ApiResult<()> {
        let until = Instant::now() + patience;
        while self.stats(group).is_some_and(|s| s.running) {
            if Instant::now() > until {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "busy",
                    format!("a cycle of group {group} is still running"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Planned failover, at the source: stop writes, ship the last changes,
    /// have the replica take over from that point, turn this group into its
    /// replica. On a failure before the replica took over, writes resume
    /// here and nothing changed.
    pub async fn planned(&self, group: &str) -> ApiResult<PlannedFailover> {
        let store = self.store.clone();
        let g = group.to_owned();
        let info = blocking(move || store.replication(&g).map_err(store_error)).await?;
        if info.role != "source" {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_source",
                format!("group {group:?} is not replicated from this site"),
            ));
        }
        let was_paused = info.paused;
        let store = self.store.clone();
        let g = group.to_owned();
        blocking(move || {
            store
                .set_replication_paused(&g, true)
                .map_err(store_error)?;
            Ok(())
        })
        .await?;
        self.quiet(group, Duration::from_secs(600)).await?;
        let store = self.store.clone();
        let g = group.to_owned();
        let frozen_at = nanos();
        blocking(move || {
            store
                .set_group_frozen(&g, Some("planned failover"))
                .map_err(store_error)
        })
        .await?;
        let shipped = self.final_cycles(group, frozen_at).await;
        let point = match shipped {
            Ok(p) => p,
            Err(e) => {
                let store = self.store.clone();
                let g = group.to_owned();
                let _ = blocking(move || {
                    store.set_group_frozen(&g, None).map_err(store_error)?;
                    store
                        .set_replication_paused(&g, was_paused)
                        .map_err(store_error)?;
                    Ok(())
                })
                .await;
                return Err(e);
            }
        };
        let promoted: ferry_store::Promotion = match self
            .partner_post(
                &info.partner,
                format!("/partner/v1/replication/{group}/promote"),
                serde_json::json!({ "source_point": point.id.0 }),
            )
            .await
        {
            Ok(p) => p,
            Err(e) => {
                // The replica may or may not have taken over: stay frozen,
                // so nobody writes on both sides; the admin decides.
                return Err(ApiError::new(
                    e.status,
                    "failover_unfinished",
                    format!(
                        "the last changes reached {} (point {}) but it did not confirm taking over: {}; group {group} stays frozen here",
                        info.partner, point.name, e.message
                    ),
                ));
            }
        };
        let store = self.store.clone();
        let g = group.to_owned();
        let partner = info.partner.clone();
        let common = point.id.0;
        let demotion = blocking(move || {
            store
                .demote_to_replica(&g, &partner, common, promoted.point_id)
                .map_err(store_error)
        })
        .await?;
        tracing::info!(group, partner = %info.partner, point = %point.name, "planned failover done: now the replica");
        Ok(PlannedFailover {
            group: group.to_owned(),
            partner: info.partner,
            point: point.name,
            demotion,
        })
    }

    /// Sends cycles until the acknowledged base was taken after
    /// `frozen_at`; returns that snapshot.
    async fn final_cycles(
        &self,
        group: &str,
        frozen_at: u64,
    ) -> ApiResult<ferry_store::SnapshotInfo> {
        let mut last_error = None;
        for _ in 0..5 {
            let store = self.store.clone();
            let g = group.to_owned();
            let info = blocking(move || store.replication(&g).map_err(store_error)).await?;
            if info.pending_cycle.is_none()
                && info.last_point_created.is_some_and(|c| c >= frozen_at)
                && let Some(name) = info.last_point.clone()
            {
                let store = self.store.clone();
                let g = group.to_owned();
                return blocking(move || {
                    store
                        .snapshot(Target::Group(&g), &name)
                        .map_err(store_error)
                })
                .await;
            }
            self.cycle(&info).await;
            if let Some(e) = self.stats(group).and_then(|s| s.last_error) {
                last_error = Some(e);
            }
        }
        Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "failover_failed",
            format!(
                "the last changes of group {group} could not be shipped: {}",
                last_error.unwrap_or_else(|| "no cycle succeeded".into())
            ),
        ))
    }

    /// Reverse, at a promoted group: the old primary becomes its replica
    /// from their common point, keeping what it wrote after that point as
    /// a snapshot; then cycles go to it.
    pub async fn reverse(&self, group: &str) -> ApiResult<ferry_store::Demotion> {
        let store = self.store.clone();
        let g = group.to_owned();
        let (partner, base, at_partner) =
            blocking(move || store.reverse_plan(&g).map_err(store_error)).await?;
        let d: ferry_store::Demotion = self
            .partner_post(
                &partner,
                format!("/partner/v1/replication/{group}/demote"),
                serde_json::json!({ "common": at_partner, "caller_point": base }),
            )
            .await?;
        let store = self.store.clone();
        let g = group.to_owned();
        blocking(move || {
            store
                .set_replication_paused(&g, false)
                .map_err(store_error)
                .map(drop)
        })
        .await?;
        self.trigger(group);
        Ok(d)
    }
}

// ----- seeds: the initial copy carried by hand -----

impl Replicator {
    /// Writes the initial copy of `group` (its pending first cycle) as a
    /// replication stream into the new file `path`. The replica applies it
    /// with [`Replicator::seed_import`]; the next contact then finds the
    /// point there and only records it, sending nothing more.
    pub async fn seed_export(&self, group: &str, path: &std::path::Path) -> ApiResult<SeedExport> {
        let store = self.store.clone();
        let g = group.to_owned();
        let info = blocking(move || store.replication(&g).map_err(store_error)).await?;
        if info.role != "source" {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_source",
                format!("group {group:?} is not replicated from this site"),
            ));
        }
        if info.last_point.is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "group {group:?} already has its initial copy at the partner ({}): a seed is only for the first cycle",
                    info.last_point.unwrap_or_default()
                ),
            ));
        }
        self.quiet(group, Duration::from_secs(60)).await?;
        let store = self.store.clone();
        let g = group.to_owned();
        let start = blocking(move || {
            store
                .begin_cycle(&g, SnapshotKind::Crash)
                .map_err(store_error)
        })
        .await?;
        let (mut sender, readers) = self.cycle_sender(group, &start, None, None).await?;
        let path = path.to_owned();
        let point = start.point.name.clone();
        let file_name = path.display().to_string();
        let (bytes, changed) = blocking(move || {
            use std::io::Write;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| {
                    ApiError::bad_request(format!("cannot create {}: {e}", path.display()))
                        .field("file")
                })?;
            let mut w = std::io::BufWriter::with_capacity(4 << 20, file);
            let mut src = Readers(readers);
            let mut out = Vec::with_capacity(1 << 20);
            let mut bytes = 0u64;
            let write_err =
                |e: std::io::Error| ApiError::internal(format!("writing {}: {e}", path.display()));
            loop {
                out.clear();
                match sender.next_chunk(&mut src, &mut out) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => return Err(ApiError::internal(e.to_string())),
                }
                w.write_all(&out).map_err(write_err)?;
                bytes += out.len() as u64;
            }
            let file = w.into_inner().map_err(|e| write_err(e.into_error()))?;
            file.sync_all().map_err(write_err)?;
            Ok((bytes, sender.covered_bytes))
        })
        .await?;
        tracing::info!(group, file = %file_name, bytes, "seed written");
        Ok(SeedExport {
            group: group.to_owned(),
            file: file_name,
            point,
            bytes,
            changed_bytes: changed,
        })
    }

    /// Applies the seed file `path`, made by `partner`, to replica `group`
    /// (created here as for a first cycle over the network).
    pub async fn seed_import(
        &self,
        group: &str,
        partner: &str,
        path: &std::path::Path,
    ) -> ApiResult<RecoveryPoint> {
        let store = self.store.clone();
        let name = partner.to_owned();
        blocking(move || {
            store
                .list_partners()
                .into_iter()
                .find(|p| p.name == name)
                .map(drop)
                .ok_or_else(|| store_error(StoreError::not_found("partner", name)))
        })
        .await?;
        let file = std::fs::File::open(path).map_err(|e| {
            ApiError::bad_request(format!("cannot open {}: {e}", path.display())).field("file")
        })?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, String>>(4);
        let shown = path.display().to_string();
        let reader = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut file = file;
            loop {
                let mut buf = vec![0u8; 1 << 20];
                match file.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.blocking_send(Ok(bytes::Bytes::from(buf))).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(format!("reading {shown}: {e}")));
                        return;
                    }
                }
            }
        });
        let store = self.store.clone();
        let (g, p) = (group.to_owned(), partner.to_owned());
        let fence = fence_of(&self.fences, group);
        let point = blocking(move || {
            receive(
                &store,
                &p,
                &g,
                SnapshotKind::Crash,
                ReplicationSettings::default(),
                &fence,
                rx,
            )
        })
        .await;
        let _ = reader.await;
        let point = point?;
        tracing::info!(group, partner, point = %point.name, "seed applied");
        Ok(point)
    }
}

// ----- resync by region digests -----

/// What `POST /partner/v1/replication/{group}/digests` asks.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestsBody {
    /// Blocks per region.
    pub region_blocks: u32,
}

/// The replica's digests of its latest recovery point, per slot: blake3 of
/// each region, hex.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DigestsReply {
    /// The point's snapshot id at the source.
    pub point: Option<u64>,
    pub slots: std::collections::BTreeMap<String, Vec<String>>,
}

/// Blocks per region for a volume of `blocks` blocks: 1 MiB, or more so
/// that no volume has over 65,536 regions.
fn region_blocks(blocks: u64) -> u32 {
    let mut r: u64 = 256;
    while blocks.div_ceil(r) > 65_536 {
        r *= 2;
    }
    r as u32
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// blake3 of every `region`-block region of a snapshot's volume.
fn region_digests(reader: &SnapshotReader, region: u32) -> Result<Vec<String>, StoreError> {
    let size = reader.size();
    let step = u64::from(region) * rs::BLOCK_SIZE as u64;
    let mut buf = vec![0u8; step as usize];
    let mut out = Vec::with_capacity(size.div_ceil(step) as usize);
    let mut at = 0;
    while at < size {
        let n = step.min(size - at) as usize;
        reader.read(&mut buf[..n], at)?;
        out.push(hex(blake3::hash(&buf[..n]).as_bytes()));
        at += n as u64;
    }
    Ok(out)
}

pub(crate) async fn replica_digests(
    State(st): State<PartnerState>,
    peer: Option<Extension<PeerCertificates>>,
    Path(group): Path<String>,
    body: Result<Json<DigestsBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let usage = "the body must be {\"region_blocks\": N}";
    partner_call(
        &st,
        peer,
        body,
        usage,
        move |store, partner, body: DigestsBody| {
            let region = body.region_blocks;
            if region == 0 || !region.is_power_of_two() {
                return Err(ApiError::bad_request(
                    "region_blocks must be a power of two",
                ));
            }
            let r = replica_of(&store, &group, &partner)?;
            let Some(last) = r.last_point else {
                return Ok(DigestsReply::default());
            };
            let info = store
                .snapshot(Target::Group(&group), &last)
                .map_err(store_error)?;
            let mut slots = std::collections::BTreeMap::new();
            for slot in info.members.keys() {
                let reader = store
                    .open_snapshot(Target::Group(&group), &last, Some(slot))
                    .map_err(store_error)?;
                slots.insert(
                    slot.clone(),
                    region_digests(&reader, region).map_err(store_error)?,
                );
            }
            let source = store
                .recovery_points(&group)
                .map_err(store_error)?
                .into_iter()
                .find(|p| p.name == last)
                .map(|p| p.source_id);
            Ok(DigestsReply {
                point: source,
                slots,
            })
        },
    )
    .await
}

impl Replicator {
    /// The blocks a resync sends: per slot, every block of the regions
    /// whose digests differ from the replica's latest point (all of a slot
    /// it lacks). Returns them, the differing regions and all regions.
    async fn resync_plan(
        &self,
        group: &str,
        partner: &str,
        start: &ferry_store::CycleStart,
    ) -> ApiResult<(
        std::collections::BTreeMap<String, ferry_store::RoaringBitmap>,
        u64,
        u64,
    )> {
        let max_blocks = start
            .point
            .members
            .values()
            .map(|m| m.size / rs::BLOCK_SIZE as u64)
            .max()
            .unwrap_or(0);
        let region = region_blocks(max_blocks);
        let theirs: DigestsReply = self
            .partner_post(
                partner,
                format!("/partner/v1/replication/{group}/digests"),
                serde_json::json!({ "region_blocks": region }),
            )
            .await?;
        let store = self.store.clone();
        let g = group.to_owned();
        let name = start.point.name.clone();
        let members: Vec<(String, u64)> = start
            .point
            .members
            .iter()
            .map(|(s, m)| (s.clone(), m.size))
            .collect();
        blocking(move || {
            let mut out = std::collections::BTreeMap::new();
            let (mut differ, mut regions) = (0u64, 0u64);
            for (slot, size) in members {
                let reader = store
                    .open_snapshot(Target::Group(&g), &name, Some(&slot))
                    .map_err(store_error)?;
                let ours = region_digests(&reader, region).map_err(store_error)?;
                let other = theirs.slots.get(&slot);
                let blocks = size / rs::BLOCK_SIZE as u64;
                let mut set = ferry_store::RoaringBitmap::new();
                for (i, d) in ours.iter().enumerate() {
                    regions += 1;
                    if other.and_then(|o| o.get(i)) != Some(d) {
                        differ += 1;
                        let first = i as u64 * u64::from(region);
                        let end = (first + u64::from(region)).min(blocks);
                        set.insert_range(first as u32..end as u32);
                    }
                }
                out.insert(slot, set);
            }
            Ok((out, differ, regions))
        })
        .await
    }
}

// ----- application-consistent points -----

/// Runs `cmd` with `sh -c`, `FERRY_GROUP` and `FERRY_HOOK` set; an error
/// says why it failed (exit status, timeout, not started).
fn run_hook(group: &str, phase: &str, cmd: &str, timeout: Duration) -> Result<(), String> {
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("FERRY_GROUP", group)
        .env("FERRY_HOOK", phase)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("the {phase} hook did not start: {e}"))?;
    let until = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(format!("the {phase} hook failed ({st})")),
            Ok(None) if Instant::now() >= until => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the {phase} hook took longer than {} s",
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for the {phase} hook: {e}")),
        }
    }
}

impl Replicator {
    /// A new cycle whose point should be application-consistent: the
    /// group's pre hook (freeze), the snapshot, then the post hook (thaw),
    /// always. Without hooks, or when the pre hook fails or times out, the
    /// point is crash-consistent, and the figures say why.
    async fn begin_app_cycle(&self, group: &str) -> ApiResult<ferry_store::CycleStart> {
        let store = self.store.clone();
        let g = group.to_owned();
        let (start, note) = blocking(move || {
            let hooks = store.group(&g).map_err(store_error)?.hooks;
            let Some(h) = hooks else {
                let s = store
                    .begin_cycle(&g, SnapshotKind::Crash)
                    .map_err(store_error)?;
                return Ok((s, "crash: the group has no hooks".to_owned()));
            };
            let t = Duration::from_secs(h.timeout_secs);
            let frozen = run_hook(&g, "pre", &h.pre, t);
            let kind = if frozen.is_ok() {
                SnapshotKind::App
            } else {
                SnapshotKind::Crash
            };
            let taken = store.begin_cycle(&g, kind).map_err(store_error);
            // Thaw whatever happened.
            let thawed = run_hook(&g, "post", &h.post, t);
            let s = taken?;
            let note = match (frozen, thawed) {
                (Ok(()), Ok(())) => "app".to_owned(),
                (Ok(()), Err(e)) => format!("app; but {e}"),
                (Err(e), _) => format!("crash: {e}"),
            };
            Ok((s, note))
        })
        .await?;
        if note != "app" {
            tracing::warn!(
                group,
                "application-consistent point not taken as such: {note}"
            );
        }
        self.figures
            .lock()
            .entry(group.to_owned())
            .or_default()
            .stats
            .last_consistency = Some(note);
        Ok(start)
    }
}
