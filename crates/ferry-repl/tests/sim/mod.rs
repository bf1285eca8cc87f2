//! A deterministic simulation of one group's replication: a source that
//! writes, snapshots and sends cycles, a replica that applies them into
//! heads and seals recovery points, and a network between them, all in
//! virtual time driven by one seeded random generator.
//!
//! The two ends run the real sans-I/O code (`CycleSender`, `CycleReceiver`,
//! `protocol::source_step`, `protocol::replica_step`); around it, the models
//! of the daemon's loops and the store's transactions follow
//! `crates/ferryd/src/replication.rs` and
//! `crates/ferry-store/src/store/replication.rs` step for step:
//!
//! ```text
//! source (source.rs)            network (net.rs)          replica (replica.rs)
//!   durable: volumes, snapshots,  control messages:         durable: points, partial
//!     base, pending cycle           lost, duplicated,         cycle, flushed heads
//!   volatile: the attempt           delayed (reordered)     volatile: unflushed
//!   tick → begin cycle ─ query ──▶                            writes, connections,
//!        ◀── state ─────────────────────────────────────     decoders
//!   source_step → send chunks ─▶  one ordered byte stream ─▶ replica_step, apply,
//!        ◀── ack / refusal ─────  per connection; a break     checkpoint every N
//!   finish (base = point)          loses the rest             blocks and on a break,
//!                                                             seal on a verified end
//! ```
//!
//! Faults, at random until `QUIET_AT`: connection resets, partitions,
//! crashes of either side (the replica's possibly in the middle of a disk
//! step, keeping a random part of its unflushed writes), a failed write at
//! the replica, stalls of the replica's disk or of one receiving thread (so
//! an old connection keeps applying after a new one began), a source that
//! lost its pending snapshot, and a slot synced back to the base between
//! cycles (so a later cycle need not rewrite what an abandoned one wrote).
//! After every event the invariants are checked (`World::check`); after
//! `QUIET_AT` the faults stop and within `BOUND` (plus the time to send the
//! whole group three times) a cycle begun after it must be a point.

mod net;
mod replica;
mod rng;
mod source;

use std::collections::BinaryHeap;
use std::fmt;
use std::rc::Rc;

use ferry_repl::stream::{BLOCK_SIZE, Compression};

pub use rng::Rng;

/// Virtual milliseconds.
pub type Ms = u64;

/// Between two cycles.
pub const INTERVAL: Ms = 20_000;
/// A call that gets no answer for this long has failed.
pub const STALL: Ms = 10_000;
/// Faults and writes stop.
pub const QUIET_AT: Ms = 300_000;
/// After `QUIET_AT`, by when a cycle begun after it must be a point (plus
/// the time to send the whole group three times at the seed's bandwidth).
pub const BOUND: Ms = 6 * INTERVAL;
/// The group's name on both sides.
pub const GROUP: &str = "vm";

const BS: usize = BLOCK_SIZE;

/// A deliberate bug in the models, to show the simulation catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    None,
    /// The replica records its resume point before flushing the heads.
    CheckpointBeforeFlush,
    /// The replica keeps an abandoned cycle's blocks in the heads.
    KeepAbandonedHeads,
    /// The replica makes a point of what arrived when a stream breaks.
    PointFromBrokenStream,
    /// The source takes a timed-out answer for an acknowledgement.
    AckOnTimeout,
    /// The replica lets every connection write, not only the latest.
    NoFence,
}

/// One seed's world: sizes, rates and the network's manners.
#[derive(Clone, Debug)]
pub struct Config {
    /// Blocks per slot at the start.
    pub sizes: Vec<u64>,
    pub compression: Compression,
    /// The replica checkpoints after this many blocks.
    pub checkpoint_blocks: u64,
    /// Percent of control messages lost, duplicated.
    pub loss: u64,
    pub dup: u64,
    /// Extra delay of a control message, up to (reorders them).
    pub jitter: Ms,
    /// Stream bandwidth.
    pub bytes_per_ms: u64,
    /// Between two faults, between two bursts of writes.
    pub fault_gap: (Ms, Ms),
    pub write_gap: (Ms, Ms),
    pub bug: Bug,
}

impl Config {
    fn draw(rng: &mut Rng, bug: Bug) -> Config {
        let slots = rng.range(1, 3);
        Config {
            sizes: (0..slots).map(|_| rng.range(4, 64)).collect(),
            compression: *rng.pick(&[Compression::None, Compression::Zstd]),
            checkpoint_blocks: rng.range(2, 48),
            loss: rng.range(0, 25),
            dup: rng.range(0, 15),
            jitter: rng.range(0, 400),
            bytes_per_ms: rng.range(20, 500),
            fault_gap: *rng.pick(&[(500, 5_000), (2_000, 15_000), (5_000, 40_000)]),
            write_gap: *rng.pick(&[(100, 1_000), (500, 4_000)]),
            bug,
        }
    }
}

/// What happens, at a virtual time.
#[derive(Clone, Debug)]
pub enum Ev {
    /// The source's replicator looks whether a cycle is due.
    Tick,
    /// The workload writes at the source.
    Write,
    Fault,
    /// Faults and writes stop.
    Quiet,
    /// The end of the run: every cycle must be done.
    Check,
    SourceUp,
    ReplicaUp,
    /// Source → replica: what do you hold?
    Query {
        req: u64,
    },
    /// Replica → source: the answer.
    State {
        req: u64,
        latest: Option<u64>,
        partial: Option<replica::PartialRec>,
    },
    /// Replica → source, on the stream's connection: the point is made.
    Ack {
        conn: u64,
        point: u64,
    },
    /// Replica → source, on the stream's connection: refused.
    Refused {
        conn: u64,
        why: String,
    },
    /// Stream bytes arriving at the replica.
    Piece {
        conn: u64,
        bytes: Vec<u8>,
    },
    /// The replica learns that a connection is gone.
    Broken {
        conn: u64,
    },
    /// The source writes the next chunk of its stream.
    Produce {
        conn: u64,
    },
    /// The replica works on a connection's bytes.
    Work {
        conn: u64,
    },
    /// The source's timer for attempt step `step`.
    Timeout {
        step: u64,
    },
}

struct Queued {
    at: Ms,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    /// Earliest first (the heap is a max-heap), then in order of scheduling.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// A block's bytes, shared by the volumes, snapshots and points holding it
/// (a snapshot copies pointers, not blocks).
pub type Block = Rc<[u8]>;

/// A group's volumes at one moment: per slot, its blocks.
pub type Vols = Rc<Vec<Vec<Block>>>;

thread_local! {
    static ZERO: Block = Rc::from(vec![0u8; BS]);
}

/// A block of zeros.
pub fn zero() -> Block {
    ZERO.with(Rc::clone)
}

/// What a seed did, summed over seeds for the report.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub seeds: u64,
    pub events: u64,
    pub cycles: u64,
    pub points: u64,
    pub resumed: u64,
    pub lost_acks: u64,
    pub refusals: u64,
    pub checkpoints: u64,
    pub discards: u64,
    pub stale_writes: u64,
    pub resets: u64,
    pub partitions: u64,
    pub source_crashes: u64,
    pub replica_crashes: u64,
    pub torn_crashes: u64,
    pub write_errors: u64,
    pub stalls: u64,
    pub lost_pending: u64,
    pub lost_msgs: u64,
    pub dup_msgs: u64,
    pub virtual_ms: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.seeds += o.seeds;
        self.events += o.events;
        self.cycles += o.cycles;
        self.points += o.points;
        self.resumed += o.resumed;
        self.lost_acks += o.lost_acks;
        self.refusals += o.refusals;
        self.checkpoints += o.checkpoints;
        self.discards += o.discards;
        self.stale_writes += o.stale_writes;
        self.resets += o.resets;
        self.partitions += o.partitions;
        self.source_crashes += o.source_crashes;
        self.replica_crashes += o.replica_crashes;
        self.torn_crashes += o.torn_crashes;
        self.write_errors += o.write_errors;
        self.stalls += o.stalls;
        self.lost_pending += o.lost_pending;
        self.lost_msgs += o.lost_msgs;
        self.dup_msgs += o.dup_msgs;
        self.virtual_ms += o.virtual_ms;
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} seeds, {} events, {} virtual s: {} cycles begun, {} points made, \
             {} sends resumed, {} lost answers recorded, {} refusals, {} checkpoints, \
             {} discards, {} runs written outside the partial cycle; faults: {} resets, \
             {} partitions, {} source crashes, {} replica crashes ({} inside a disk step), \
             {} write errors, {} replica stalls, {} lost pending snapshots, \
             {} control messages lost, {} duplicated",
            self.seeds,
            self.events,
            self.virtual_ms / 1000,
            self.cycles,
            self.points,
            self.resumed,
            self.lost_acks,
            self.refusals,
            self.checkpoints,
            self.discards,
            self.stale_writes,
            self.resets,
            self.partitions,
            self.source_crashes,
            self.replica_crashes,
            self.torn_crashes,
            self.write_errors,
            self.stalls,
            self.lost_pending,
            self.lost_msgs,
            self.dup_msgs,
        )
    }
}

/// A seed that broke an invariant.
#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    pub at: Ms,
    pub what: String,
    pub config: Config,
    /// The events up to the failure (empty unless traced).
    pub trace: Vec<String>,
}

pub struct World {
    pub cfg: Config,
    pub rng: Rng,
    pub now: Ms,
    seq: u64,
    queue: BinaryHeap<Queued>,
    trace: Option<Vec<String>>,
    /// Faults and writes go on (until `QUIET_AT`).
    pub faults: bool,
    pub src: source::Source,
    pub rep: replica::Replica,
    pub net: net::Net,
    /// Every snapshot the source ever took, by id, with its name (the source
    /// deletes old ones).
    pub taken: std::collections::BTreeMap<u64, (String, Vols)>,
    /// Points already compared with their snapshots.
    verified: usize,
    /// The first snapshot id taken after `QUIET_AT`.
    quiet_snap: u64,
    next_id: u64,
    pub stats: Stats,
}

/// Runs one seed; `trace` keeps the event trace (returned with the
/// figures, or in the failure).
pub fn run(seed: u64, bug: Bug, trace: bool) -> Result<(Stats, Vec<String>), Box<Failure>> {
    let mut rng = Rng::new(seed);
    let cfg = Config::draw(&mut rng, bug);
    let mut w = World {
        src: source::Source::new(&cfg.sizes),
        rep: replica::Replica::new(),
        net: net::Net::default(),
        cfg,
        rng,
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        trace: trace.then(Vec::new),
        faults: true,
        taken: Default::default(),
        verified: 0,
        quiet_snap: 0,
        next_id: 1,
        stats: Stats {
            seeds: 1,
            ..Stats::default()
        },
    };
    let cfg = w.cfg.clone();
    w.log(|| format!("seed {seed}: {cfg:?}"));
    w.at(0, Ev::Tick);
    let t = w.rng.range(cfg.write_gap.0, cfg.write_gap.1);
    w.at(t, Ev::Write);
    let t = w.rng.range(cfg.fault_gap.0, cfg.fault_gap.1);
    w.at(t, Ev::Fault);
    w.at(QUIET_AT, Ev::Quiet);
    while let Some(q) = w.queue.pop() {
        w.now = q.at;
        w.stats.events += 1;
        let end = matches!(q.ev, Ev::Check);
        if let Err(what) = w.handle(q.ev).and_then(|()| w.check()) {
            w.log(|| format!("FAILED: {what}"));
            return Err(Box::new(Failure {
                seed,
                at: w.now,
                what,
                config: w.cfg.clone(),
                trace: w.trace.take().unwrap_or_default(),
            }));
        }
        if end {
            w.stats.virtual_ms = w.now;
            return Ok((w.stats, w.trace.unwrap_or_default()));
        }
    }
    unreachable!("the check event ends every run")
}

impl World {
    /// Schedules `ev` at `at` (never in the past).
    pub fn at(&mut self, at: Ms, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        });
    }

    pub fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn log(&mut self, f: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            t.push(format!(
                "{:>7}.{:03} {}",
                self.now / 1000,
                self.now % 1000,
                f()
            ));
        }
    }

    fn handle(&mut self, ev: Ev) -> Result<(), String> {
        if !self.arrives(&ev) {
            self.log(|| format!("lost on the way: {}", short(&ev)));
            return Ok(());
        }
        match ev {
            Ev::Tick => self.tick(),
            Ev::Write => {
                self.write();
                Ok(())
            }
            Ev::Fault => {
                self.fault();
                Ok(())
            }
            Ev::Quiet => {
                self.quiet();
                Ok(())
            }
            Ev::Check => self.progress(),
            Ev::SourceUp => {
                self.source_up();
                Ok(())
            }
            Ev::ReplicaUp => {
                self.log(|| "replica: up".into());
                self.rep.up = true;
                Ok(())
            }
            Ev::Query { req } => {
                self.on_query(req);
                Ok(())
            }
            Ev::State {
                req,
                latest,
                partial,
            } => self.on_state(req, latest, partial),
            Ev::Ack { conn, point } => {
                self.on_ack(conn, point);
                Ok(())
            }
            Ev::Refused { conn, why } => {
                self.on_refused(conn, why);
                Ok(())
            }
            Ev::Piece { conn, bytes } => {
                self.on_piece(conn, bytes);
                Ok(())
            }
            Ev::Broken { conn } => {
                self.on_broken(conn);
                Ok(())
            }
            Ev::Produce { conn } => self.produce(conn),
            Ev::Work { conn } => self.work(conn),
            Ev::Timeout { step } => {
                self.timeout(step);
                Ok(())
            }
        }
    }

    fn fault(&mut self) {
        if !self.faults {
            return;
        }
        match self.rng.range(0, 99) {
            0..=19 => self.reset_a_connection(),
            20..=31 => {
                let d = self.rng.range(1_000, 30_000);
                self.stats.partitions += 1;
                self.log(|| format!("FAULT partition for {d} ms"));
                self.net.partition_until = self.net.partition_until.max(self.now + d);
            }
            32..=46 => self.source_crash(false),
            47..=56 => self.replica_crash(),
            57..=61 => {
                let n = self.rng.range(0, 12) as u32;
                self.stats.write_errors += 1;
                self.log(|| format!("FAULT the replica's write {n} from now will fail"));
                self.rep.fail_write_in = Some(n);
            }
            62..=71 => {
                if self.rep.up && self.rep.crash_in.is_none() {
                    let n = self.rng.range(0, 12) as u32;
                    self.log(|| {
                        format!("FAULT the replica will crash at its disk step {n} from now")
                    });
                    self.rep.crash_in = Some(n);
                }
            }
            72..=80 => {
                let d = self.rng.range(1_000, 40_000);
                self.stats.stalls += 1;
                self.log(|| format!("FAULT the replica's disk stalls for {d} ms"));
                self.rep.stall_until = self.rep.stall_until.max(self.now + d);
            }
            81..=89 => self.stall_a_receiver(),
            _ => self.source_crash(true),
        }
        let (lo, hi) = self.cfg.fault_gap;
        let t = self.now + self.rng.range(lo, hi);
        self.at(t, Ev::Fault);
    }

    fn quiet(&mut self) {
        self.log(|| "QUIET: faults and writes stop".into());
        self.faults = false;
        self.net.partition_until = self.now;
        self.rep.stall_until = self.now;
        self.rep.crash_in = None;
        self.rep.fail_write_in = None;
        self.src.lose_pending = false;
        self.quiet_snap = self.src.next_snap;
        let bytes: usize = self.src.live.iter().map(|v| v.len() * BS).sum();
        let t = self.now + BOUND + 3 * bytes as Ms / self.cfg.bytes_per_ms;
        self.at(t, Ev::Check);
    }

    /// The invariants, after every event.
    fn check(&mut self) -> Result<(), String> {
        let points = &self.rep.points;
        if points.len() < self.verified {
            return Err(format!(
                "a recovery point disappeared: {} visible, {} before",
                points.len(),
                self.verified
            ));
        }
        for (i, p) in points.iter().enumerate().skip(self.verified) {
            let Some((name, snap)) = self.taken.get(&p.source_id) else {
                return Err(format!(
                    "recovery point {} names source snapshot {}, which was never taken",
                    p.name, p.source_id
                ));
            };
            if let Some(prev) = i.checked_sub(1).map(|j| &points[j])
                && prev.source_id >= p.source_id
            {
                return Err(format!(
                    "recovery point {} (snapshot {}) follows {} (snapshot {})",
                    p.name, p.source_id, prev.name, prev.source_id
                ));
            }
            if let Some(d) = first_difference(&p.vols, snap) {
                return Err(format!(
                    "recovery point {} is not block-for-block its source snapshot {}: {d}",
                    p.name, p.source_id
                ));
            }
            if p.name != *name {
                return Err(format!(
                    "recovery point {} names snapshot {} of another name",
                    p.name, p.source_id
                ));
            }
        }
        self.verified = points.len();
        if let Some(base) = self.src.base
            && !points.iter().any(|p| p.source_id == base)
        {
            return Err(format!(
                "the source's base is snapshot {base}, which is no recovery point at the replica"
            ));
        }
        Ok(())
    }

    /// At the end: a cycle begun after the faults stopped made a point, and
    /// the replica's latest point is the source as it is.
    fn progress(&mut self) -> Result<(), String> {
        let Some(last) = self.rep.points.last() else {
            return Err("replication never made a point".into());
        };
        if last.source_id < self.quiet_snap {
            return Err(format!(
                "replication did not resume: {} ms after the faults stopped, the latest point \
                 is snapshot {} (taken before them ending; the first after is {})",
                self.now - QUIET_AT,
                last.source_id,
                self.quiet_snap
            ));
        }
        if let Some(d) = first_difference(&last.vols, &self.src.live) {
            return Err(format!(
                "the latest point {} is not the source's volumes at rest: {d}",
                last.name
            ));
        }
        let name = last.name.clone();
        self.log(|| format!("CHECK ok: the latest point is {name}"));
        Ok(())
    }
}

/// Where two groups of volumes differ first.
fn first_difference(a: &[Vec<Block>], b: &[Vec<Block>]) -> Option<String> {
    if a.len() != b.len() {
        return Some(format!("{} volumes, not {}", a.len(), b.len()));
    }
    for (slot, (x, y)) in a.iter().zip(b).enumerate() {
        if x.len() != y.len() {
            return Some(format!(
                "slot {slot} has {} blocks, not {}",
                x.len(),
                y.len()
            ));
        }
        if let Some(block) = x
            .iter()
            .zip(y)
            .position(|(p, q)| !Rc::ptr_eq(p, q) && p != q)
        {
            return Some(format!("slot {slot} block {block} differs"));
        }
    }
    None
}

/// An event in a line, without its bytes.
fn short(ev: &Ev) -> String {
    match ev {
        Ev::Piece { conn, bytes } => format!("Piece {{ conn: {conn}, {} bytes }}", bytes.len()),
        Ev::State {
            req,
            latest,
            partial,
        } => format!("State {{ req: {req}, latest: {latest:?}, partial: {partial:?} }}"),
        other => format!("{other:?}"),
    }
}
