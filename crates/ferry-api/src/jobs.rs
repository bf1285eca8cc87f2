//! The jobs registry: long operations (a deleted snapshot's space reclaim, a
//! sync; later replication) run as jobs that can be listed, watched and
//! cancelled, and that survive a stop of `ferryd` as done or failed.
//!
//! A job's request is checked and its atomic part committed before the job
//! exists (a snapshot deletion commits the catalog change first); the job is
//! what follows. Records are kept in `DATA/jobs.json`, rewritten atomically
//! (temporary file, fsync, rename, directory fsync) on every change of state
//! — never on a progress tick: live progress is read from the engine's
//! [`Progress`] counters. On open, a job a crash or a stop left queued or
//! running is settled: `done` when what it did is found applied, otherwise
//! `failed` with a message saying it was interrupted.
//!
//! Each job runs on its own thread, since engine work is synchronous. A
//! running job stops only at the engine's checkpoints, where the store is
//! correct.
//!
//! What it must not do: decide who may see a job (the routes do, from the
//! groups a job names), or apply anything half: it leaves that to the
//! engine's transactions.
//!
//! Test-only: when the daemon is started with `FERRY_TEST_JOB_PAUSE=FILE`
//! (see [`Jobs::set_test_pause`]), a job waits at each checkpoint while FILE
//! exists and the job's done count is at least the number FILE holds (0 when
//! empty), so end-to-end tests can catch a job in the middle without sleeping.

use ferry_store::{GcOutcome, Progress, SnapshotId, Store, SyncReport, Target};
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Finished jobs kept in the registry; older ones are forgotten.
const KEEP_FINISHED: usize = 1000;

/// A job's id, shown as `job-N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);

impl utoipa::PartialSchema for JobId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^job-[0-9]+$"))
            .examples([serde_json::json!("job-3")])
            .into()
    }
}

impl utoipa::ToSchema for JobId {}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job-{}", self.0)
    }
}

impl std::str::FromStr for JobId {
    type Err = ();

    /// `job-N` (or just `N`).
    fn from_str(s: &str) -> Result<JobId, ()> {
        let n = s.strip_prefix("job-").unwrap_or(s);
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(());
        }
        n.parse().map(JobId).map_err(|_| ())
    }
}

impl Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<JobId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|()| serde::de::Error::custom(format!("{s:?} is not a job id (job-N)")))
    }
}

/// What a job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum JobKind {
    /// Gives back the space of a deleted snapshot (merges its layers).
    #[serde(rename = "snapshot.delete")]
    SnapshotDelete,
    /// Replaces slots of a group by clones of a snapshot.
    #[serde(rename = "sync")]
    Sync,
}

/// A job's state. Every change goes through [`transition`]:
///
/// ```text
///   queued ──► running ──► done
///     │           ├──────► failed
///     │           └──────► cancelled
///     ├──► cancelled   (cancelled before it ran)
///     └──► done/failed (settled at open after a stop)
/// ```
///
/// A job a stop left `running` is settled at open to `done` or `failed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn finished(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Failed | JobState::Cancelled
        )
    }
}

/// How far a job got: `done` of `total` `unit`s (blocks for a reclaim; the
/// total is re-estimated as the work is planned).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobProgress {
    pub done: u64,
    pub total: u64,
    pub unit: String,
}

/// What a job was asked to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum JobParams {
    SnapshotDelete {
        group: String,
        snapshot: String,
        /// The deleted snapshot's id, to tell at open whether it is gone.
        snapshot_id: SnapshotId,
    },
    Sync {
        /// `GROUP@SNAPSHOT`
        source: String,
        target: String,
        slots: Vec<String>,
    },
}

impl JobParams {
    pub fn kind(&self) -> JobKind {
        match self {
            JobParams::SnapshotDelete { .. } => JobKind::SnapshotDelete,
            JobParams::Sync { .. } => JobKind::Sync,
        }
    }

    /// What the job acts on, for people: `GROUP@SNAPSHOT` or the sync's target.
    pub fn target(&self) -> String {
        match self {
            JobParams::SnapshotDelete {
                group, snapshot, ..
            } => format!("{group}@{snapshot}"),
            JobParams::Sync { target, .. } => target.clone(),
        }
    }

    /// Every group the job touches; a scoped user sees the job only when
    /// they see all of them.
    pub fn groups(&self) -> Vec<&str> {
        match self {
            JobParams::SnapshotDelete { group, .. } => vec![group],
            JobParams::Sync { source, target, .. } => {
                let src = source.split_once('@').map_or(source.as_str(), |(g, _)| g);
                vec![src, target]
            }
        }
    }

    fn unit(&self) -> &'static str {
        match self {
            JobParams::SnapshotDelete { .. } => "blocks",
            JobParams::Sync { .. } => "steps",
        }
    }
}

/// What a finished job produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum JobResult {
    Sync(SyncReport),
    Reclaim(ReclaimReport),
}

/// What a snapshot's space reclaim did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReclaimReport {
    /// Blocks copied by merges.
    pub blocks_merged: u64,
    /// Set when the reclaim was finished by the store's garbage collection
    /// at open, after a stop.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub finished_at_open: bool,
}

/// One job, as the API shows and `jobs.json` keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Job {
    pub id: JobId,
    pub kind: JobKind,
    pub target: String,
    pub state: JobState,
    pub progress: JobProgress,
    /// The user who started it.
    pub actor: String,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    #[serde(default)]
    pub started_ms: Option<u64>,
    #[serde(default)]
    pub finished_ms: Option<u64>,
    /// Why it failed or what a cancellation left.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub result: Option<JobResult>,
    pub params: JobParams,
}

/// Why a job could not be cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("job {0} does not exist")]
    NotFound(JobId),
    #[error("job {id} has already finished: it is {state:?}")]
    Finished { id: JobId, state: JobState },
}

/// The one place a job changes state. Refuses (and logs) an edge the
/// diagram does not have.
fn transition(job: &mut Job, to: JobState) -> bool {
    use JobState as S;
    let ok = matches!(
        (job.state, to),
        (S::Queued, S::Running | S::Cancelled | S::Done | S::Failed)
            | (S::Running, S::Done | S::Failed | S::Cancelled)
    );
    if !ok {
        tracing::error!(job = %job.id, from = ?job.state, ?to, "refused a job transition");
        return false;
    }
    let now = now_ms();
    if to == S::Running {
        job.started_ms = Some(now);
    }
    if to.finished() {
        job.finished_ms = Some(now);
    }
    job.state = to;
    true
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct JobsFile {
    next: u64,
    jobs: Vec<Job>,
}

#[derive(Debug, Default)]
struct Registry {
    next: u64,
    jobs: BTreeMap<JobId, Job>,
    /// Progress of jobs whose thread is still going.
    live: HashMap<JobId, Progress>,
}

impl Registry {
    /// A copy of a job with its live progress.
    fn view(&self, job: &Job) -> Job {
        let mut j = job.clone();
        if let Some(p) = self.live.get(&job.id) {
            j.progress.done = p.done();
            j.progress.total = p.total();
        }
        j
    }
}

/// The jobs of one daemon. Cheap to clone; clones share the registry.
#[derive(Clone, Debug)]
pub struct Jobs {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// `None`: kept in memory only (tests).
    path: Option<PathBuf>,
    reg: Mutex<Registry>,
    idle: Condvar,
    stopping: AtomicBool,
    test_pause: Mutex<Option<PathBuf>>,
}

impl Jobs {
    /// A registry that is never written to disk.
    pub fn in_memory() -> Jobs {
        Jobs::from_registry(None, Registry::default())
    }

    fn from_registry(path: Option<PathBuf>, reg: Registry) -> Jobs {
        Jobs {
            shared: Arc::new(Shared {
                path,
                reg: Mutex::new(reg),
                idle: Condvar::new(),
                stopping: AtomicBool::new(false),
                test_pause: Mutex::new(None),
            }),
        }
    }

    /// Opens the registry kept in `path` (empty when missing) and settles
    /// the jobs a stop left queued or running, against the opened `store`
    /// (which has finished any interrupted garbage collection).
    pub fn open(path: impl AsRef<Path>, store: &Store) -> io::Result<Jobs> {
        let path = path.as_ref().to_path_buf();
        let file: JobsFile = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => JobsFile::default(),
            Err(e) => return Err(e),
        };
        let mut reg = Registry {
            next: file.next,
            jobs: file.jobs.into_iter().map(|j| (j.id, j)).collect(),
            live: HashMap::new(),
        };
        let mut settled = 0;
        let claimed: Vec<String> = reg
            .jobs
            .values()
            .filter_map(|j| match &j.result {
                Some(JobResult::Sync(r)) => Some(r.undo_snapshot.clone()),
                _ => None,
            })
            .collect();
        for job in reg.jobs.values_mut() {
            if !job.state.finished() {
                settle(job, store, &claimed);
                tracing::info!(job = %job.id, state = ?job.state, "settled a job left unfinished by a stop");
                settled += 1;
            }
        }
        let jobs = Jobs::from_registry(Some(path), reg);
        if settled > 0 {
            jobs.save(&jobs.shared.reg.lock())?;
        }
        Ok(jobs)
    }

    /// Test-only: jobs wait at checkpoints while `file` exists and their
    /// done count is at least the number it holds. See the module doc.
    pub fn set_test_pause(&self, file: Option<PathBuf>) {
        *self.shared.test_pause.lock() = file;
    }

    fn save(&self, reg: &Registry) -> io::Result<()> {
        let Some(path) = &self.shared.path else {
            return Ok(());
        };
        let file = JobsFile {
            next: reg.next,
            jobs: reg.jobs.values().map(|j| reg.view(j)).collect(),
        };
        crate::auth::write_private(path, &serde_json::to_vec_pretty(&file).expect("serializes"))
    }

    /// Saves, logging a failure: the job goes on; its record on disk is
    /// older, and a restart settles it from the store.
    fn save_logged(&self, reg: &Registry) {
        if let Err(e) = self.save(reg) {
            tracing::error!(error = %e, "writing the jobs file failed");
        }
    }

    /// Every job, oldest first, with live progress.
    pub fn list(&self) -> Vec<Job> {
        let reg = self.shared.reg.lock();
        reg.jobs.values().map(|j| reg.view(j)).collect()
    }

    pub fn get(&self, id: JobId) -> Option<Job> {
        let reg = self.shared.reg.lock();
        reg.jobs.get(&id).map(|j| reg.view(j))
    }

    /// Records a new job and starts it on its own thread. Its atomic part
    /// must already be committed (or checked, for a sync). While the daemon
    /// stops, the job is only recorded, queued, and settled at the next open.
    pub fn start(&self, actor: &str, params: JobParams, store: Store) -> io::Result<Job> {
        let progress = Progress::new();
        let job = {
            let mut reg = self.shared.reg.lock();
            reg.next += 1;
            let id = JobId(reg.next);
            let job = Job {
                id,
                kind: params.kind(),
                target: params.target(),
                state: JobState::Queued,
                progress: JobProgress {
                    done: 0,
                    total: 0,
                    unit: params.unit().to_owned(),
                },
                actor: actor.to_owned(),
                created_ms: now_ms(),
                started_ms: None,
                finished_ms: None,
                error: None,
                result: None,
                params,
            };
            reg.jobs.insert(id, job.clone());
            forget_old(&mut reg);
            if let Err(e) = self.save(&reg) {
                reg.jobs.remove(&id);
                return Err(e);
            }
            if self.shared.stopping.load(Ordering::Acquire) {
                return Ok(job);
            }
            reg.live.insert(id, progress.clone());
            job
        };
        let progress = match self.shared.test_pause.lock().clone() {
            Some(file) => progress.with_hook(pause_hook(file)),
            None => progress,
        };
        let jobs = self.clone();
        let id = job.id;
        let spawned = std::thread::Builder::new()
            .name(format!("{id}"))
            .spawn(move || {
                let outcome = jobs.work(id, &progress, store);
                jobs.complete(id, outcome);
            });
        if let Err(e) = spawned {
            let mut reg = self.shared.reg.lock();
            reg.live.remove(&id);
            if let Some(j) = reg.jobs.get_mut(&id)
                && transition(j, JobState::Failed)
            {
                j.error = Some(format!("starting the job's thread failed: {e}"));
            }
            self.save_logged(&reg);
            return Err(e);
        }
        Ok(job)
    }

    /// The job's work, on its thread: queued → running, then the engine
    /// call. Takes the store so that it is released before the job is seen
    /// finished.
    fn work(&self, id: JobId, progress: &Progress, store: Store) -> Outcome {
        let params = {
            let mut reg = self.shared.reg.lock();
            let Some(job) = reg.jobs.get_mut(&id) else {
                return Outcome::Failed("the job's record vanished".into());
            };
            if progress.is_cancelled() {
                return Outcome::Stopped("cancelled before it started; nothing was done".into());
            }
            let params = job.params.clone();
            transition(job, JobState::Running);
            self.save_logged(&reg);
            params
        };
        let span =
            tracing::info_span!("job", %id, kind = ?params.kind(), target = %params.target());
        let _span = span.enter();
        tracing::info!("job started");
        match &params {
            JobParams::SnapshotDelete { .. } => match store.collect_garbage_with(progress) {
                Ok(GcOutcome::Finished) => Outcome::Done(Some(JobResult::Reclaim(ReclaimReport {
                    blocks_merged: progress.done(),
                    finished_at_open: false,
                }))),
                Ok(GcOutcome::Cancelled) => Outcome::Stopped(
                    "cancelled: the snapshot is deleted; the rest of its space is given back \
                     by the next snapshot deletion or when ferryd starts again"
                        .into(),
                ),
                Err(e) => Outcome::Failed(e.to_string()),
            },
            JobParams::Sync {
                source,
                target,
                slots,
            } => {
                progress.set_total(1);
                if progress.checkpoint() {
                    return Outcome::Stopped(
                        "cancelled before the sync ran; nothing was changed".into(),
                    );
                }
                let (group, snap) = source.split_once('@').unwrap_or((source, ""));
                let slots: Vec<&str> = slots.iter().map(String::as_str).collect();
                match store.sync(group, snap, target, &slots) {
                    Ok(r) => {
                        progress.add_done(1);
                        Outcome::Done(Some(JobResult::Sync(r)))
                    }
                    Err(e) => Outcome::Failed(e.to_string()),
                }
            }
        }
    }

    /// Records how the job's work ended.
    fn complete(&self, id: JobId, outcome: Outcome) {
        let mut reg = self.shared.reg.lock();
        let view = reg.jobs.get(&id).map(|j| reg.view(j));
        if let Some(job) = reg.jobs.get_mut(&id) {
            if let Some(v) = view {
                job.progress = v.progress;
            }
            match outcome {
                Outcome::Done(result) => {
                    transition(job, JobState::Done);
                    job.result = result;
                }
                Outcome::Failed(error) => {
                    tracing::warn!(job = %id, %error, "job failed");
                    transition(job, JobState::Failed);
                    job.error = Some(error);
                }
                // Stopped by a shutdown: left as it is, for the next open to settle.
                Outcome::Stopped(_) if self.shared.stopping.load(Ordering::Acquire) => {}
                Outcome::Stopped(why) => {
                    transition(job, JobState::Cancelled);
                    job.error = Some(why);
                }
            }
            tracing::info!(job = %id, state = ?job.state, "job ended");
        }
        self.finish(&mut reg, id);
    }

    /// Saves and forgets the job's live progress; wakes a waiting shutdown.
    fn finish(&self, reg: &mut Registry, id: JobId) {
        self.save_logged(reg);
        reg.live.remove(&id);
        self.shared.idle.notify_all();
    }

    /// Asks a queued or running job to stop at its next safe point.
    pub fn cancel(&self, id: JobId) -> Result<Job, CancelError> {
        let reg = self.shared.reg.lock();
        let job = reg.jobs.get(&id).ok_or(CancelError::NotFound(id))?;
        if job.state.finished() {
            return Err(CancelError::Finished {
                id,
                state: job.state,
            });
        }
        if let Some(p) = reg.live.get(&id) {
            p.cancel();
        }
        Ok(reg.view(job))
    }

    /// Starts stopping: running jobs are asked to stop at a safe point and
    /// stay recorded as running (the next open settles them); new jobs are
    /// only recorded.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        let reg = self.shared.reg.lock();
        for p in reg.live.values() {
            p.cancel();
        }
    }

    /// Waits until no job thread is running, at most `limit`; returns how
    /// many still are.
    pub fn wait_idle(&self, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        let mut reg = self.shared.reg.lock();
        while !reg.live.is_empty() {
            if self.shared.idle.wait_until(&mut reg, deadline).timed_out() {
                break;
            }
        }
        reg.live.len()
    }
}

enum Outcome {
    Done(Option<JobResult>),
    Failed(String),
    /// Stopped at a checkpoint: cancelled by a user, or by a shutdown.
    Stopped(String),
}

/// Forgets the oldest finished jobs beyond [`KEEP_FINISHED`].
fn forget_old(reg: &mut Registry) {
    let finished: Vec<JobId> = reg
        .jobs
        .values()
        .filter(|j| j.state.finished())
        .map(|j| j.id)
        .collect();
    if finished.len() > KEEP_FINISHED {
        for id in &finished[..finished.len() - KEEP_FINISHED] {
            reg.jobs.remove(id);
        }
    }
}

/// Settles a job found queued or running at open. `claimed` are the undo
/// snapshots other sync jobs already account for.
fn settle(job: &mut Job, store: &Store, claimed: &[String]) {
    let interrupted = "interrupted: ferryd stopped before the job finished";
    match job.params.clone() {
        JobParams::SnapshotDelete { snapshot_id, .. } if !store.snapshot_exists(snapshot_id) => {
            // The deletion committed before the job existed, and opening the
            // store ran garbage collection to the end.
            transition(job, JobState::Done);
            job.progress.done = job.progress.total.max(job.progress.done);
            job.progress.total = job.progress.done;
            job.result = Some(JobResult::Reclaim(ReclaimReport {
                blocks_merged: job.progress.done,
                finished_at_open: true,
            }));
        }
        JobParams::SnapshotDelete { .. } => {
            transition(job, JobState::Failed);
            job.error = Some(format!("{interrupted}; the snapshot was not deleted"));
        }
        JobParams::Sync { target, slots, .. } => {
            // A sync is one transaction; when it committed, the target has
            // an undo snapshot made after the job started that no other job
            // accounts for.
            let since_ns = job.started_ms.map(|ms| u128::from(ms) * 1_000_000);
            let undo = since_ns.and_then(|since| {
                store
                    .list_snapshots(Target::Group(&target))
                    .ok()?
                    .into_iter()
                    .find(|s| {
                        s.name.starts_with("undo-sync-")
                            && u128::from(s.created) >= since
                            && !claimed.contains(&s.name)
                    })
            });
            match undo {
                Some(s) => {
                    transition(job, JobState::Done);
                    job.progress.done = 1;
                    job.progress.total = 1;
                    job.result = Some(JobResult::Sync(SyncReport {
                        undo_snapshot: s.name,
                        slots,
                    }));
                }
                None => {
                    transition(job, JobState::Failed);
                    job.error = Some(format!("{interrupted}; the sync was not applied"));
                }
            }
        }
    }
}

/// The test-only pause of [`Jobs::set_test_pause`].
fn pause_hook(file: PathBuf) -> ferry_store::progress::CheckpointHook {
    Arc::new(move |p: &Progress| {
        while !p.is_cancelled() {
            let Ok(text) = std::fs::read_to_string(&file) else {
                return;
            };
            if p.done() < text.trim().parse().unwrap_or(0) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_store::SnapshotKind;

    fn store_with_snapshot(dir: &Path) -> Store {
        let store = Store::open(dir.join("store")).unwrap();
        store.create_volume("v", 8 << 20).unwrap();
        store.create_group("g", &[("data", "v")]).unwrap();
        store
            .volume("v")
            .unwrap()
            .write(&vec![7u8; 8 << 20], 0, false)
            .unwrap();
        store
            .create_snapshot(Target::Group("g"), "s", SnapshotKind::Crash)
            .unwrap();
        store
            .volume("v")
            .unwrap()
            .write(&[9u8; 4096], 0, false)
            .unwrap();
        store
    }

    fn wait_finished(jobs: &Jobs, id: JobId) -> Job {
        assert_eq!(jobs.wait_idle(Duration::from_secs(30)), 0);
        let j = jobs.get(id).unwrap();
        assert!(j.state.finished(), "{j:?}");
        j
    }

    #[test]
    fn ids_parse_and_print() {
        assert_eq!("job-12".parse::<JobId>(), Ok(JobId(12)));
        assert_eq!("12".parse::<JobId>(), Ok(JobId(12)));
        for bad in ["", "job-", "job-x", "x", "-1", "job-+1"] {
            assert!(bad.parse::<JobId>().is_err(), "{bad}");
        }
        assert_eq!(JobId(3).to_string(), "job-3");
        assert_eq!(serde_json::to_string(&JobId(3)).unwrap(), "\"job-3\"");
    }

    #[test]
    fn transitions_follow_the_diagram() {
        let mut j = Job {
            id: JobId(1),
            kind: JobKind::Sync,
            target: "t".into(),
            state: JobState::Queued,
            progress: JobProgress {
                done: 0,
                total: 0,
                unit: "steps".into(),
            },
            actor: "a".into(),
            created_ms: 0,
            started_ms: None,
            finished_ms: None,
            error: None,
            result: None,
            params: JobParams::Sync {
                source: "g@s".into(),
                target: "t".into(),
                slots: vec![],
            },
        };
        assert!(transition(&mut j, JobState::Running));
        assert!(j.started_ms.is_some());
        assert!(!transition(&mut j, JobState::Queued));
        assert!(transition(&mut j, JobState::Done));
        assert!(j.finished_ms.is_some());
        for to in [
            JobState::Running,
            JobState::Failed,
            JobState::Cancelled,
            JobState::Done,
        ] {
            assert!(!transition(&mut j, to), "done → {to:?}");
        }
    }

    #[test]
    fn a_reclaim_runs_to_done_and_is_kept_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_snapshot(dir.path());
        let path = dir.path().join("jobs.json");
        let jobs = Jobs::open(&path, &store).unwrap();
        let info = store
            .delete_snapshot_record(Target::Group("g"), "s")
            .unwrap();
        let params = JobParams::SnapshotDelete {
            group: "g".into(),
            snapshot: "s".into(),
            snapshot_id: info.id,
        };
        let job = jobs.start("admin", params, store.clone()).unwrap();
        assert_eq!(job.state, JobState::Queued);
        assert_eq!(job.target, "g@s");
        let j = wait_finished(&jobs, job.id);
        assert_eq!(j.state, JobState::Done, "{j:?}");
        assert_eq!(j.progress.done, 2047);
        assert_eq!(j.progress.total, 2047);
        assert!(j.finished_ms >= j.started_ms);
        let again = Jobs::open(&path, &store).unwrap();
        assert_eq!(again.get(job.id), Some(j));
        assert!(
            jobs.cancel(job.id).is_err(),
            "a finished job cannot be cancelled"
        );
    }

    #[test]
    fn a_paused_reclaim_can_be_cancelled_and_a_stop_leaves_it_for_open() {
        let dir = tempfile::tempdir().unwrap();
        let pause = dir.path().join("pause");
        std::fs::write(&pause, "512").unwrap();
        let store = store_with_snapshot(dir.path());
        let path = dir.path().join("jobs.json");
        let jobs = Jobs::open(&path, &store).unwrap();
        jobs.set_test_pause(Some(pause.clone()));
        let info = store
            .delete_snapshot_record(Target::Group("g"), "s")
            .unwrap();
        let params = JobParams::SnapshotDelete {
            group: "g".into(),
            snapshot: "s".into(),
            snapshot_id: info.id,
        };
        // cancelled by a user: cancelled, at the pause point
        let job = jobs.start("admin", params.clone(), store.clone()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while jobs.get(job.id).unwrap().progress.done < 512 {
            assert!(Instant::now() < deadline, "the job never got to 512 blocks");
            std::thread::yield_now();
        }
        let seen = jobs.get(job.id).unwrap();
        assert_eq!(seen.state, JobState::Running);
        assert_eq!(seen.progress.done, 512, "the job waits at the pause");
        jobs.cancel(job.id).unwrap();
        let j = wait_finished(&jobs, job.id);
        assert_eq!(j.state, JobState::Cancelled);
        assert_eq!(j.progress.done, 512);
        assert!(j.error.as_deref().unwrap().contains("cancelled"));

        // stopped by a shutdown: still running on disk, done after open
        let job = jobs.start("admin", params, store.clone()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while jobs.get(job.id).unwrap().state != JobState::Running {
            assert!(Instant::now() < deadline);
            std::thread::yield_now();
        }
        jobs.stop();
        assert_eq!(jobs.wait_idle(Duration::from_secs(30)), 0);
        let on_disk: JobsFile = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let rec = on_disk.jobs.iter().find(|j| j.id == job.id).unwrap();
        assert_eq!(rec.state, JobState::Running);
        drop(jobs);
        drop(store);
        let store = Store::open(dir.path().join("store")).unwrap();
        let jobs = Jobs::open(&path, &store).unwrap();
        let j = jobs.get(job.id).unwrap();
        assert_eq!(j.state, JobState::Done, "{j:?}");
        assert!(matches!(
            j.result,
            Some(JobResult::Reclaim(ReclaimReport {
                finished_at_open: true,
                ..
            }))
        ));
        assert!(
            jobs.list()
                .iter()
                .all(|j| j.state.finished() && j.finished_ms.is_some())
        );
    }

    #[test]
    fn interrupted_syncs_settle_by_what_the_store_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_snapshot(dir.path());
        store.clone_group("g", "s", "t").unwrap();
        let path = dir.path().join("jobs.json");
        let params = JobParams::Sync {
            source: "g@s".into(),
            target: "t".into(),
            slots: vec!["data".into()],
        };
        let mut job = Job {
            id: JobId(1),
            kind: JobKind::Sync,
            target: "t".into(),
            state: JobState::Queued,
            progress: JobProgress {
                done: 0,
                total: 1,
                unit: "steps".into(),
            },
            actor: "admin".into(),
            created_ms: now_ms(),
            started_ms: None,
            finished_ms: None,
            error: None,
            result: None,
            params,
        };
        // one that never ran, one that ran but did not commit, one that committed
        let queued = job.clone();
        transition(&mut job, JobState::Running);
        let running = Job {
            id: JobId(2),
            ..job.clone()
        };
        let applied = Job {
            id: JobId(3),
            ..job
        };
        std::fs::write(
            &path,
            serde_json::to_vec(&JobsFile {
                next: 2,
                jobs: vec![queued, running],
            })
            .unwrap(),
        )
        .unwrap();
        let jobs = Jobs::open(&path, &store).unwrap();
        for j in jobs.list() {
            assert_eq!(j.state, JobState::Failed, "{j:?}");
            assert!(j.error.unwrap().contains("interrupted"));
        }
        let report = store.sync("g", "s", "t", &["data"]).unwrap();
        std::fs::write(
            &path,
            serde_json::to_vec(&JobsFile {
                next: 3,
                jobs: vec![applied],
            })
            .unwrap(),
        )
        .unwrap();
        let jobs = Jobs::open(&path, &store).unwrap();
        let j = jobs.get(JobId(3)).unwrap();
        assert_eq!(j.state, JobState::Done);
        assert_eq!(j.result, Some(JobResult::Sync(report)));
    }
}
