//! Crash consistency with real processes: SIGKILL at a random moment, then
//! reopen and check every block against the durability contract.
//!
//! The test binary runs itself again as a child ([`crash_child`], a no-op
//! unless `FERRY_CRASH_CHILD=<dir>:<seed>` is set; this works the same under
//! `cargo test` and `cargo nextest`). The child opens a store on a real
//! directory, makes a group of two volumes and drives a seeded workload:
//! writer threads do whole-block, partial-block, zeroing and trimming writes
//! (some FUA), reads checked against their own model, and flushes; a
//! snapshot thread takes group and volume snapshots, and a deleting thread
//! deletes older ones, so merges (into sealed layers and into the live
//! heads) run under the writes and under snapshot creation.
//!
//! Every thread reports each event on stdout, one whole line per `write`:
//! an operation's line after it was acknowledged, a flush's or snapshot's
//! start line before it starts. A writer reports an operation before it
//! issues the next, so at most one operation per writer is unreported. The
//! parent regenerates the writers' plans from the seed and SIGKILLs the
//! child at a seeded point: after reading a number of acknowledged
//! operations, or right after reading that the n-th snapshot creation or
//! deletion started. (The child runs a few dozen operations ahead of the
//! parent's reading; the point picks a moment, the report says what was
//! done.) The parent then reads what is left in the pipe, reopens the store
//! and checks:
//!
//! - every block of both volumes reads the state after some prefix of its
//!   writer's operations: not older than its last durable state (the last
//!   write acknowledged before the start of a flush or snapshot that
//!   completed, or an acknowledged FUA write), not newer than the one
//!   operation that may have been in flight;
//! - every snapshot whose creation was reported and whose deletion was not
//!   exists and reads, for each writer, the state at one cut of its
//!   operations that lies inside the creation call; a snapshot whose
//!   deletion was reported is gone; no unknown snapshot appears;
//! - the reopened store takes writes, flushes, snapshots and deletions (the
//!   merges then run on the recovered layers) and keeps them across another
//!   reopen.
//!
//! Blocks are split between writers in chunks, so each block has one
//! ordered history. Every 512-byte sector written carries (volume, sector,
//! writer, operation, seed) and a checksum, so a failure says what a block
//! holds instead of "bytes differ".
//!
//! `FERRY_CRASH_ROUNDS` sets the number of rounds (default 50), each with a
//! new seed; `FERRY_CRASH_SEED=<seed>` runs that one seed, as a failure
//! prints; `FERRY_CRASH_DIR` puts the stores somewhere else than tmpfs (see
//! [`base_dir`]). A failed round keeps its store directory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_store::{BLOCK_SIZE, SnapshotKind, Store, StoreError, Target, VolumeHandle};

const CHILD_ENV: &str = "FERRY_CRASH_CHILD";
const CHILD_TEST: &str = "crash_child";
/// Starts every report line; anything else on the child's stdout is the test harness.
const MARK: &str = "@@ferry-crash ";

const GROUP: &str = "g";
const SLOTS: [&str; 2] = ["a", "b"];
const VOLUMES: [&str; 2] = ["va", "vb"];
const VOL_BLOCKS: u64 = 4096;
const VOL_BYTES: u64 = VOL_BLOCKS * BLOCK_SIZE;
const BLOCK: usize = BLOCK_SIZE as usize;
const SECTOR: usize = 512;
const SECTORS_PER_BLOCK: u64 = BLOCK_SIZE / SECTOR as u64;
const SECTOR_MAGIC: [u8; 4] = *b"FCRS";

const WRITERS: usize = 2;
/// Blocks are dealt to writers in chunks of this many.
const CHUNK: u64 = 16;
/// The first chunks of each writer take most of its operations, so blocks
/// are overwritten, partially rewritten and shared with snapshots.
const HOT_CHUNKS: u64 = 4;
const OPS_PER_WRITER: usize = 4000;
/// The writer operations (of all writers) between two snapshot operations.
const PACE: (u64, u64) = (15, 90);
/// How many writer operations may run during one snapshot operation.
const SLACK: (u64, u64) = (5, 150);
const MAX_LIVE_SNAPSHOTS: usize = 4;
/// A child silent for this long is hung.
const LINE_TIMEOUT: Duration = Duration::from_secs(60);
/// The writer id of the writes made after the crash.
const POST_WRITER: usize = WRITERS;

// ----- seeded randomness and block contents -----

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(mix(seed))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// Fills `buf` (whole sectors at byte `off` of volume `vol`) with what
/// operation `op` of `writer` writes there.
fn fill(seed: u64, vol: usize, writer: usize, op: usize, off: u64, buf: &mut [u8]) {
    for (k, s) in buf.chunks_exact_mut(SECTOR).enumerate() {
        let sector = off / SECTOR as u64 + k as u64;
        s[0..4].copy_from_slice(&SECTOR_MAGIC);
        s[4..8].copy_from_slice(&(vol as u32).to_le_bytes());
        s[8..16].copy_from_slice(&sector.to_le_bytes());
        s[16..20].copy_from_slice(&(writer as u32).to_le_bytes());
        s[20..24].copy_from_slice(&(op as u32).to_le_bytes());
        s[24..32].copy_from_slice(&seed.to_le_bytes());
        let mut x =
            seed ^ mix(sector ^ (op as u64) << 24 ^ (writer as u64) << 48 ^ (vol as u64) << 56);
        for c in s[32..SECTOR - 4].chunks_mut(8) {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            c.copy_from_slice(&mix(x).to_le_bytes()[..c.len()]);
        }
        let crc = crc32fast::hash(&s[..SECTOR - 4]);
        s[SECTOR - 4..].copy_from_slice(&crc.to_le_bytes());
    }
}

/// What one sector holds, in words.
fn describe_sector(seed: u64, vol: usize, sector: u64, s: &[u8]) -> String {
    if s.iter().all(|&b| b == 0) {
        return "zeros".into();
    }
    let u32_at = |at: usize| u32::from_le_bytes(s[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap());
    if s[0..4] != SECTOR_MAGIC || crc32fast::hash(&s[..SECTOR - 4]) != u32_at(SECTOR - 4) {
        return "garbage".into();
    }
    let mut d = format!("writer {} op {}", u32_at(16), u32_at(20));
    if u32_at(4) as usize != vol || u64_at(8) != sector {
        let _ = write!(d, " of volume {} sector {}", u32_at(4), u64_at(8));
    }
    if u64_at(24) != seed {
        let _ = write!(d, " of seed {:#x}", u64_at(24));
    }
    d
}

/// What one block holds, sector runs in words.
fn describe_block(seed: u64, vol: usize, block: u64, data: &[u8]) -> String {
    let descs: Vec<String> = data
        .chunks_exact(SECTOR)
        .enumerate()
        .map(|(k, s)| describe_sector(seed, vol, block * SECTORS_PER_BLOCK + k as u64, s))
        .collect();
    let mut out = String::new();
    let mut start = 0;
    for k in 1..=descs.len() {
        if k == descs.len() || descs[k] != descs[start] {
            let sep = if out.is_empty() { "" } else { ", " };
            let _ = write!(out, "{sep}sectors {start}-{}: {}", k - 1, descs[start]);
            start = k;
        }
    }
    out
}

// ----- the writers' plans -----

#[derive(Clone, Copy, Debug)]
enum Op {
    Write {
        vol: usize,
        off: u64,
        len: u64,
        fua: bool,
    },
    Zero {
        vol: usize,
        off: u64,
        len: u64,
        fua: bool,
        trim: bool,
    },
    /// One volume, or both (`None`) one after the other.
    Flush {
        vol: Option<usize>,
    },
    Read {
        vol: usize,
        off: u64,
        len: u64,
    },
}

impl Op {
    /// The bytes a data-changing operation changes.
    fn extent(&self) -> Option<(usize, u64, u64)> {
        match *self {
            Op::Write { vol, off, len, .. } | Op::Zero { vol, off, len, .. } => {
                Some((vol, off, len))
            }
            Op::Flush { .. } | Op::Read { .. } => None,
        }
    }

    fn fua(&self) -> bool {
        matches!(
            self,
            Op::Write { fua: true, .. } | Op::Zero { fua: true, .. }
        )
    }
}

fn flushed(vol: Option<usize>) -> std::ops::Range<usize> {
    match vol {
        Some(v) => v..v + 1,
        None => 0..VOLUMES.len(),
    }
}

/// The writer that owns a block.
fn owner(block: u64) -> usize {
    ((block / CHUNK) % WRITERS as u64) as usize
}

/// `1..=max.min(room)` whole blocks from block `first`.
fn blocks(rng: &mut Rng, first: u64, room: u64, max: u64) -> (u64, u64) {
    let n = 1 + rng.below(max.min(room));
    (first * BLOCK_SIZE, n * BLOCK_SIZE)
}

/// A run of sectors inside `1..=max.min(room)` blocks from block `first`.
fn sectors(rng: &mut Rng, first: u64, room: u64, max: u64) -> (u64, u64) {
    let n = 1 + rng.below(max.min(room));
    let total = n * SECTORS_PER_BLOCK;
    let a = rng.below(total);
    let b = a + 1 + rng.below(total - a);
    (
        first * BLOCK_SIZE + a * SECTOR as u64,
        (b - a) * SECTOR as u64,
    )
}

/// Writer `writer`'s operations, a function of the seed alone.
fn plan(seed: u64, writer: usize) -> Vec<Op> {
    let mut rng = Rng::new(seed ^ (writer as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let chunks: Vec<u64> = (0..VOL_BLOCKS / CHUNK)
        .filter(|&c| owner(c * CHUNK) == writer)
        .collect();
    (0..OPS_PER_WRITER)
        .map(|_| {
            let vol = rng.below(VOLUMES.len() as u64) as usize;
            let chunk = if rng.percent(60) {
                chunks[rng.below(HOT_CHUNKS) as usize]
            } else {
                chunks[rng.below(chunks.len() as u64) as usize]
            };
            let first = chunk * CHUNK + rng.below(CHUNK);
            let room = (chunk + 1) * CHUNK - first;
            let roll = rng.below(100);
            match roll {
                // A whole chunk at once: large enough for the engine to
                // move it into one run of new slots when its blocks sit in
                // scattered ones.
                0..4 => Op::Write {
                    vol,
                    off: chunk * CHUNK * BLOCK_SIZE,
                    len: CHUNK * BLOCK_SIZE,
                    fua: rng.percent(8),
                },
                4..40 => {
                    let (off, len) = blocks(&mut rng, first, room, 8);
                    let fua = rng.percent(8);
                    Op::Write { vol, off, len, fua }
                }
                40..62 => {
                    let (off, len) = sectors(&mut rng, first, room, 3);
                    let fua = rng.percent(8);
                    Op::Write { vol, off, len, fua }
                }
                62..76 => {
                    let (off, len) = if rng.percent(50) {
                        blocks(&mut rng, first, room, 8)
                    } else {
                        sectors(&mut rng, first, room, 8)
                    };
                    let fua = rng.percent(5);
                    let trim = roll >= 70;
                    Op::Zero {
                        vol,
                        off,
                        len,
                        fua,
                        trim,
                    }
                }
                76..84 => Op::Flush {
                    vol: match rng.below(3) {
                        0 => None,
                        v => Some(v as usize - 1),
                    },
                },
                _ => {
                    let (off, len) = sectors(&mut rng, first, room, 8);
                    Op::Read { vol, off, len }
                }
            }
        })
        .collect()
}

// ----- the child -----

/// Reports one event to the parent: one `write` of a whole line, so the
/// parent gets it whole or not at all, and it is in the pipe before the
/// thread goes on.
fn emit(line: std::fmt::Arguments<'_>) {
    let text = format!("{MARK}{line}\n");
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .expect("reporting to the parent");
}

fn child_fail(what: std::fmt::Arguments<'_>) -> ! {
    emit(format_args!("X {what}"));
    std::process::exit(3)
}

trait OrFail<T> {
    fn or_fail(self, what: std::fmt::Arguments<'_>) -> T;
}

impl<T> OrFail<T> for Result<T, StoreError> {
    fn or_fail(self, what: std::fmt::Arguments<'_>) -> T {
        self.unwrap_or_else(|e| child_fail(format_args!("{what}: {e}")))
    }
}

/// Pacing between the writers and the snapshot thread, by counting
/// operations (no sleeps): the snapshot thread starts its next operation
/// after some writer operations, and the writers go at most some operations
/// past that point while it runs, so snapshots and merges overlap writes
/// however fast or slow the file system is.
#[derive(Default)]
struct Progress {
    state: Mutex<Pace>,
    cv: Condvar,
}

#[derive(Default)]
struct Pace {
    /// Writer operations acknowledged, all writers together.
    ops: u64,
    writers_done: usize,
    /// Writers wait before starting an operation while `ops` is this high.
    allowed: u64,
}

impl Progress {
    fn update(&self, f: impl FnOnce(&mut Pace)) {
        f(&mut self.state.lock().unwrap());
        self.cv.notify_all();
    }

    fn ops(&self) -> u64 {
        self.state.lock().unwrap().ops
    }

    /// Waits until the writers may start another operation.
    fn writer_may_go(&self) {
        let mut st = self.state.lock().unwrap();
        while st.ops >= st.allowed {
            st = self.cv.wait(st).unwrap();
        }
    }

    /// Waits until the writers did `ops` operations in all; false once they all finished.
    fn wait_for(&self, ops: u64) -> bool {
        let mut st = self.state.lock().unwrap();
        while st.ops < ops && st.writers_done < WRITERS {
            st = self.cv.wait(st).unwrap();
        }
        st.writers_done < WRITERS
    }
}

/// The child's side: a no-op unless the parent started this process.
#[test]
fn crash_child() {
    let Ok(arg) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (dir, seed) = arg.rsplit_once(':').expect("FERRY_CRASH_CHILD is DIR:SEED");
    let seed = parse_seed(seed).expect("FERRY_CRASH_CHILD has a numeric seed");
    // The harness may have printed "test crash_child ... " without a newline.
    println!();
    // Small map records, so a kill can tear a change written as many.
    ferry_store::layer::journal::set_record_extents_for_tests(8);
    ferry_store::layer::slots::set_dense_from_for_tests(16);
    run_child(Path::new(dir), seed);
}

fn run_child(dir: &Path, seed: u64) {
    let store = Store::open(dir).or_fail(format_args!("opening the store"));
    for name in VOLUMES {
        store
            .create_volume(name, VOL_BYTES)
            .or_fail(format_args!("creating volume {name}"));
    }
    let slots: Vec<(&str, &str)> = SLOTS.iter().copied().zip(VOLUMES).collect();
    store
        .create_group(GROUP, &slots)
        .or_fail(format_args!("creating group {GROUP}"));
    emit(format_args!("R"));
    let progress = Progress::default();
    std::thread::scope(|s| {
        for writer in 0..WRITERS {
            let (store, progress) = (&store, &progress);
            s.spawn(move || {
                run_writer(store, seed, writer, progress);
                progress.update(|p| p.writers_done += 1);
            });
        }
        // Deletions (and the merges they run) overlap snapshot creation too;
        // one may wait while another runs.
        let (deletions, queue) = mpsc::sync_channel::<(Owner, String)>(1);
        let store_ref = &store;
        s.spawn(move || {
            for (owner, name) in queue {
                emit(format_args!("DB {} {name}", owner.code()));
                store_ref
                    .delete_snapshot(owner.target(), &name)
                    .or_fail(format_args!("deleting snapshot {name}"));
                emit(format_args!("DA {} {name}", owner.code()));
            }
        });
        run_snapshots(&store, seed, &progress, &deletions);
    });
    emit(format_args!("E"));
}

fn run_writer(store: &Store, seed: u64, writer: usize, progress: &Progress) {
    let handles: Vec<VolumeHandle> = VOLUMES
        .iter()
        .map(|n| store.volume(n).or_fail(format_args!("opening volume {n}")))
        .collect();
    // What this writer's blocks hold, to check its reads.
    let mut model = vec![vec![0u8; VOL_BYTES as usize]; VOLUMES.len()];
    let mut buf = Vec::new();
    for (i, op) in plan(seed, writer).into_iter().enumerate() {
        progress.writer_may_go();
        let what = format_args!("writer {writer} op {i} {op:?}");
        match op {
            Op::Write { vol, off, len, fua } => {
                let range = off as usize..(off + len) as usize;
                buf.resize(len as usize, 0);
                fill(seed, vol, writer, i, off, &mut buf);
                handles[vol].write(&buf, off, fua).or_fail(what);
                model[vol][range].copy_from_slice(&buf);
            }
            Op::Zero {
                vol,
                off,
                len,
                fua,
                trim,
            } => {
                if trim {
                    handles[vol].trim(off, len, fua).or_fail(what);
                } else {
                    handles[vol].write_zeroes(off, len, fua).or_fail(what);
                }
                model[vol][off as usize..(off + len) as usize].fill(0);
            }
            Op::Flush { vol } => {
                emit(format_args!("B {writer} {i}"));
                for v in flushed(vol) {
                    handles[v].flush().or_fail(what);
                }
            }
            Op::Read { vol, off, len } => {
                let range = off as usize..(off + len) as usize;
                buf.resize(len as usize, 0);
                handles[vol].read(&mut buf, off).or_fail(what);
                if buf != model[vol][range.clone()] {
                    let at = (0..buf.len())
                        .step_by(SECTOR)
                        .find(|&k| buf[k..k + SECTOR] != model[vol][range.start + k..][..SECTOR])
                        .expect("a sector differs");
                    let sector = (off as usize + at) as u64 / SECTOR as u64;
                    child_fail(format_args!(
                        "{what}: sector {sector} of {} reads {}, expected {}",
                        VOLUMES[vol],
                        describe_sector(seed, vol, sector, &buf[at..at + SECTOR]),
                        describe_sector(
                            seed,
                            vol,
                            sector,
                            &model[vol][range.start + at..][..SECTOR]
                        ),
                    ));
                }
            }
        }
        emit(format_args!("A {writer} {i}"));
        progress.update(|p| p.ops += 1);
    }
}

/// Takes group and volume snapshots and has older ones deleted, paced by the writers.
fn run_snapshots(
    store: &Store,
    seed: u64,
    progress: &Progress,
    deletions: &mpsc::SyncSender<(Owner, String)>,
) {
    let mut rng = Rng::new(seed ^ 0x5A17_C0DE);
    let mut live: Vec<(Owner, String)> = Vec::new();
    for n in 0.. {
        let start = progress.ops() + PACE.0 + rng.below(PACE.1 - PACE.0);
        let slack = SLACK.0 + rng.below(SLACK.1 - SLACK.0);
        progress.update(|p| p.allowed = start + slack);
        if !progress.wait_for(start) {
            return;
        }
        let delete = !live.is_empty() && (live.len() >= MAX_LIVE_SNAPSHOTS || rng.percent(40));
        if delete {
            // The newest merges into the live heads, the others into sealed layers.
            let at = match rng.below(3) {
                0 => live.len() - 1,
                1 => 0,
                _ => rng.below(live.len() as u64) as usize,
            };
            deletions
                .send(live.remove(at))
                .expect("the deleting thread runs until the end");
        } else {
            let owner = if rng.percent(75) {
                Owner::Group
            } else {
                Owner::Volume(rng.below(VOLUMES.len() as u64) as usize)
            };
            let name = format!("s{n}");
            emit(format_args!("SB {} {name}", owner.code()));
            store
                .create_snapshot(owner.target(), &name, SnapshotKind::Crash)
                .or_fail(format_args!("creating snapshot {name}"));
            emit(format_args!("SA {} {name}", owner.code()));
            live.push((owner, name));
        }
    }
}

/// What a snapshot is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Owner {
    Group,
    Volume(usize),
}

impl Owner {
    fn code(self) -> String {
        match self {
            Owner::Group => "g".into(),
            Owner::Volume(v) => v.to_string(),
        }
    }

    fn parse(s: &str) -> Option<Owner> {
        match s {
            "g" => Some(Owner::Group),
            _ => s
                .parse()
                .ok()
                .filter(|&v| v < VOLUMES.len())
                .map(Owner::Volume),
        }
    }

    fn target(self) -> Target<'static> {
        match self {
            Owner::Group => Target::Group(GROUP),
            Owner::Volume(v) => Target::Volume(VOLUMES[v]),
        }
    }

    fn volumes(self) -> std::ops::Range<usize> {
        match self {
            Owner::Group => 0..VOLUMES.len(),
            Owner::Volume(v) => v..v + 1,
        }
    }

    /// The snapshot's reader argument for volume `v`.
    fn slot(self, v: usize) -> Option<&'static str> {
        match self {
            Owner::Group => Some(SLOTS[v]),
            Owner::Volume(_) => None,
        }
    }
}

// ----- the parent: what the child reported -----

/// For each writer, an operation index; -1 before the first.
type Cut = [i64; WRITERS];

#[derive(Debug)]
struct SnapEvents {
    owner: Owner,
    /// The last operation of each writer acknowledged before creation started.
    lo: Cut,
    /// The same when creation returned, if it was reported.
    done: Option<Cut>,
    delete_started: bool,
    deleted: bool,
}

/// Everything the parent learned from the child's lines.
struct Report<'a> {
    plans: &'a [Vec<Op>],
    ready: bool,
    ended: bool,
    failure: Option<String>,
    /// The last acknowledged operation of each writer.
    last: Cut,
    /// Per volume: every operation of each writer up to here is durable.
    durable: [Cut; 2],
    /// Writer's last acknowledged operations when a flush started, by (writer, op).
    flushing: BTreeMap<(usize, i64), Cut>,
    snaps: BTreeMap<String, SnapEvents>,
    acks: u64,
    /// `acks` when the parent sent SIGKILL.
    killed_at: Option<u64>,
    flushes: u64,
    deletions: u64,
}

impl<'a> Report<'a> {
    fn new(plans: &'a [Vec<Op>]) -> Report<'a> {
        Report {
            plans,
            ready: false,
            ended: false,
            failure: None,
            last: [-1; WRITERS],
            durable: [[-1; WRITERS]; 2],
            flushing: BTreeMap::new(),
            snaps: BTreeMap::new(),
            acks: 0,
            killed_at: None,
            flushes: 0,
            deletions: 0,
        }
    }

    fn make_durable(&mut self, vols: std::ops::Range<usize>, upto: Cut) {
        for v in vols {
            for (d, u) in self.durable[v].iter_mut().zip(upto) {
                *d = (*d).max(u);
            }
        }
    }

    /// The next operation of `writer` it may report.
    fn op(&self, writer: &str, op: &str) -> Result<(usize, i64), String> {
        let w: usize = writer
            .parse()
            .map_err(|_| format!("bad writer {writer:?}"))?;
        let i: i64 = op.parse().map_err(|_| format!("bad op {op:?}"))?;
        if w >= WRITERS || i != self.last[w] + 1 || i as usize >= self.plans[w].len() {
            return Err(format!("writer {writer} op {op} out of order"));
        }
        Ok((w, i))
    }

    fn take(&mut self, line: &str) -> Result<(), String> {
        let bad = || format!("unexpected report line {line:?}");
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["R"] => self.ready = true,
            ["E"] => self.ended = true,
            ["X", ..] => self.failure = Some(line[2..].to_owned()),
            ["B", w, i] => {
                let key = self.op(w, i)?;
                self.flushing.insert(key, self.last);
            }
            ["A", w, i] => {
                let (w, i) = self.op(w, i)?;
                self.last[w] = i;
                self.acks += 1;
                if let Op::Flush { vol } = self.plans[w][i as usize] {
                    let upto = self.flushing.remove(&(w, i)).ok_or_else(bad)?;
                    self.make_durable(flushed(vol), upto);
                    self.flushes += 1;
                }
            }
            ["SB", owner, name] => {
                let owner = Owner::parse(owner).ok_or_else(bad)?;
                let ev = SnapEvents {
                    owner,
                    lo: self.last,
                    done: None,
                    delete_started: false,
                    deleted: false,
                };
                if self.snaps.insert((*name).to_owned(), ev).is_some() {
                    return Err(bad());
                }
            }
            ["SA", _, name] => {
                let last = self.last;
                let ev = self.snaps.get_mut(*name).ok_or_else(bad)?;
                ev.done = Some(last);
                let (vols, lo) = (ev.owner.volumes(), ev.lo);
                self.make_durable(vols, lo);
            }
            ["DB", _, name] => self.snaps.get_mut(*name).ok_or_else(bad)?.delete_started = true,
            ["DA", _, name] => {
                self.snaps.get_mut(*name).ok_or_else(bad)?.deleted = true;
                self.deletions += 1;
            }
            _ => return Err(bad()),
        }
        Ok(())
    }

    /// The last operation each writer may have issued: its last reported one's successor.
    fn issued(&self) -> Cut {
        std::array::from_fn(|w| (self.last[w] + 1).min(self.plans[w].len() as i64 - 1))
    }
}

/// When the parent kills the child.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// After reading this many acknowledged writer operations.
    Acks(u64),
    /// Right after reading that the n-th snapshot creation started (or the last operation).
    Creation(u64),
    /// Right after reading that the n-th deletion started (or the last operation).
    Deletion(u64),
}

impl KillAt {
    fn due(self, report: &Report<'_>, total: u64) -> bool {
        let started = |f: fn(&SnapEvents) -> bool| report.snaps.values().filter(|s| f(s)).count();
        match self {
            KillAt::Acks(n) => report.acks >= n,
            KillAt::Creation(n) => report.acks >= total || started(|_| true) as u64 >= n,
            KillAt::Deletion(n) => {
                report.acks >= total || started(|s| s.delete_started) as u64 >= n
            }
        }
    }
}

/// Runs the child, killing it when `kill` says; returns what it reported up
/// to its death.
fn run_child_process<'a>(
    dir: &Path,
    seed: u64,
    plans: &'a [Vec<Op>],
    kill: KillAt,
) -> Result<Report<'a>, String> {
    let total: u64 = plans.iter().map(|p| p.len() as u64).sum();
    let exe = std::env::current_exe().map_err(|e| format!("finding the test binary: {e}"))?;
    let mut child = Command::new(exe)
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{}:{seed}", dir.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting the child: {e}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            // A line cut short by the kill has no newline: it is not trusted.
            match r.read_until(b'\n', &mut line) {
                Ok(_) if line.ends_with(b"\n") => {
                    let text = String::from_utf8_lossy(&line);
                    if let Some(at) = text.find(MARK)
                        && tx
                            .send(text[at + MARK.len()..].trim_end().to_owned())
                            .is_err()
                    {
                        return;
                    }
                }
                _ => return,
            }
        }
    });
    let mut report = Report::new(plans);
    let mut killed = false;
    let result = loop {
        match rx.recv_timeout(LINE_TIMEOUT) {
            Ok(line) => {
                if let Err(e) = report.take(&line) {
                    break Err(e);
                }
                if !killed && kill.due(&report, total) {
                    // SIGKILL; an error means it already exited.
                    let _ = child.kill();
                    killed = true;
                    report.killed_at = Some(report.acks);
                }
            }
            Err(RecvTimeoutError::Disconnected) => break Ok(()),
            Err(RecvTimeoutError::Timeout) => {
                break Err(format!(
                    "the child reported nothing for {LINE_TIMEOUT:?} (hung?) after {} operations",
                    report.acks
                ));
            }
        }
    };
    if result.is_err() {
        let _ = child.kill();
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the child: {e}"))?;
    let _ = reader.join();
    result?;
    if let Some(f) = &report.failure {
        return Err(format!("the child failed: {f}"));
    }
    if !report.ready || (!killed && !status.success()) || (!killed && !report.ended) {
        return Err(format!(
            "the child died on its own ({status}) after {} operations",
            report.acks
        ));
    }
    Ok(report)
}

// ----- the parent: what the store may hold -----

/// The planned operations, indexed by the blocks they change.
struct History {
    seed: u64,
    plans: Vec<Vec<Op>>,
    /// Per volume and block: the operations of its writer that change it, in order.
    touch: Vec<Vec<Vec<u32>>>,
}

impl History {
    fn new(seed: u64) -> History {
        let plans: Vec<_> = (0..WRITERS).map(|w| plan(seed, w)).collect();
        let mut touch = vec![vec![Vec::new(); VOL_BLOCKS as usize]; VOLUMES.len()];
        for plan in &plans {
            for (i, op) in plan.iter().enumerate() {
                if let Some((vol, off, len)) = op.extent() {
                    for b in off / BLOCK_SIZE..=(off + len - 1) / BLOCK_SIZE {
                        touch[vol][b as usize].push(i as u32);
                    }
                }
            }
        }
        History { seed, plans, touch }
    }

    fn ops(&self, vol: usize, block: u64) -> &[u32] {
        &self.touch[vol][block as usize]
    }

    /// Applies operation `op` of the block's writer to the block's bytes.
    fn apply(&self, vol: usize, block: u64, op: u32, buf: &mut [u8]) {
        let w = owner(block);
        let planned = self.plans[w][op as usize];
        let (_, off, len) = planned.extent().expect("a data-changing op");
        let base = block * BLOCK_SIZE;
        let (start, end) = (off.max(base), (off + len).min(base + BLOCK_SIZE));
        let part = &mut buf[(start - base) as usize..(end - base) as usize];
        match planned {
            Op::Write { .. } => fill(self.seed, vol, w, op as usize, start, part),
            _ => part.fill(0),
        }
    }

    /// The block's bytes after its writer's operations up to `upto`.
    fn state(&self, vol: usize, block: u64, upto: i64) -> [u8; BLOCK] {
        let mut buf = [0u8; BLOCK];
        for &j in self.ops(vol, block) {
            if i64::from(j) > upto {
                break;
            }
            self.apply(vol, block, j, &mut buf);
        }
        buf
    }

    fn describe_op(&self, block: u64, op: u32) -> String {
        let planned = self.plans[owner(block)][op as usize];
        let (_, off, len) = planned.extent().expect("a data-changing op");
        let kind = match planned {
            Op::Write { fua: true, .. } => "write fua",
            Op::Write { .. } => "write",
            Op::Zero { trim: true, .. } => "trim",
            _ => "write_zeroes",
        };
        format!("op {op} ({kind} {off}+{len})")
    }

    /// The last acknowledged FUA operation on the block, or -1.
    fn fua_floor(&self, vol: usize, block: u64, acked: i64) -> i64 {
        let w = owner(block);
        self.ops(vol, block)
            .iter()
            .rev()
            .map(|&j| i64::from(j))
            .filter(|&j| j <= acked)
            .find(|&j| self.plans[w][j as usize].fua())
            .unwrap_or(-1)
    }

    /// Checks that a live block reads its state after some operation in `floor..=issued`.
    fn check_live(
        &self,
        vol: usize,
        block: u64,
        actual: &[u8],
        floor: i64,
        issued: i64,
    ) -> Result<(), String> {
        let ops = self.ops(vol, block);
        let k = ops.partition_point(|&j| i64::from(j) <= floor);
        let mut state = self.state(vol, block, floor);
        if state[..] == *actual {
            return Ok(());
        }
        let later: Vec<u32> = ops[k..]
            .iter()
            .copied()
            .take_while(|&j| i64::from(j) <= issued)
            .collect();
        for &j in &later {
            self.apply(vol, block, j, &mut state);
            if state[..] == *actual {
                return Ok(());
            }
        }
        let seed = self.seed;
        let mut msg = format!(
            "block {block} (writer {}) reads [{}]; its durable state is after op {floor} [{}]",
            owner(block),
            describe_block(seed, vol, block, actual),
            describe_block(seed, vol, block, &self.state(vol, block, floor)),
        );
        let history: Vec<String> = ops[..k]
            .iter()
            .rev()
            .take(3)
            .rev()
            .map(|&j| self.describe_op(block, j))
            .collect();
        let _ = write!(msg, "; durable history ends {}", history.join(", "));
        if later.is_empty() {
            let _ = write!(
                msg,
                "; no later op may have been issued (up to op {issued})"
            );
        }
        for &j in &later {
            let _ = write!(
                msg,
                "; or after {} [{}]",
                self.describe_op(block, j),
                describe_block(seed, vol, block, &self.state(vol, block, i64::from(j)))
            );
        }
        Err(msg)
    }

    /// Checks that a snapshot reads, for each writer, one cut of its
    /// operations in `lo[w]..=hi[w]` on every block of every volume it holds.
    fn check_snapshot(&self, data: &[(usize, Vec<u8>)], lo: Cut, hi: Cut) -> Result<(), String> {
        for w in 0..WRITERS {
            let (lo, hi) = (lo[w], hi[w].max(lo[w]));
            let width = (hi - lo + 1) as usize;
            // Which cuts every block checked so far agrees with.
            let mut ok = vec![true; width];
            for (vol, bytes) in data {
                let vol = *vol;
                for block in (0..VOL_BLOCKS).filter(|&b| owner(b) == w) {
                    let actual = &bytes[(block * BLOCK_SIZE) as usize..][..BLOCK];
                    let ops = self.ops(vol, block);
                    let k = ops.partition_point(|&j| i64::from(j) <= lo);
                    let mut state = self.state(vol, block, lo);
                    let mut from = lo;
                    let mut same = state[..] == *actual;
                    for &j in ops[k..].iter().take_while(|&&j| i64::from(j) <= hi) {
                        let j = i64::from(j);
                        if !same {
                            ok[(from - lo) as usize..(j - lo) as usize].fill(false);
                        }
                        self.apply(vol, block, j as u32, &mut state);
                        same = state[..] == *actual;
                        from = j;
                    }
                    if !same {
                        ok[(from - lo) as usize..].fill(false);
                    }
                    if !ok.contains(&true) {
                        return Err(format!(
                            "{} block {block} (writer {w}) reads [{}], which no cut of \
                             writer {w}'s ops {lo}..={hi} agreeing with the blocks before it \
                             gives; at op {lo} it held [{}]",
                            VOLUMES[vol],
                            describe_block(self.seed, vol, block, actual),
                            describe_block(self.seed, vol, block, &self.state(vol, block, lo)),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

fn read_volume(store: &Store, vol: usize) -> Result<Vec<u8>, String> {
    let h = store
        .volume(VOLUMES[vol])
        .map_err(|e| format!("opening volume {}: {e}", VOLUMES[vol]))?;
    if h.size() != VOL_BYTES {
        return Err(format!("volume {} has size {}", VOLUMES[vol], h.size()));
    }
    let mut data = vec![0u8; VOL_BYTES as usize];
    h.read(&mut data, 0)
        .map_err(|e| format!("reading volume {}: {e}", VOLUMES[vol]))?;
    Ok(data)
}

/// Every snapshot the store lists, by name.
fn list_snapshots(store: &Store) -> Result<BTreeMap<String, Owner>, String> {
    let mut out = BTreeMap::new();
    let owners = std::iter::once(Owner::Group).chain((0..VOLUMES.len()).map(Owner::Volume));
    for owner in owners {
        let list = store
            .list_snapshots(owner.target())
            .map_err(|e| format!("listing snapshots of {owner:?}: {e}"))?;
        for s in list {
            if let Some(other) = out.insert(s.name.clone(), owner) {
                return Err(format!(
                    "snapshot {} listed for {other:?} and {owner:?}",
                    s.name
                ));
            }
        }
    }
    Ok(out)
}

fn read_snapshot(store: &Store, owner: Owner, name: &str) -> Result<Vec<(usize, Vec<u8>)>, String> {
    owner
        .volumes()
        .map(|v| {
            let r = store
                .open_snapshot(owner.target(), name, owner.slot(v))
                .map_err(|e| format!("opening snapshot {name} of {}: {e}", VOLUMES[v]))?;
            if r.size() != VOL_BYTES {
                return Err(format!(
                    "snapshot {name} of {} has size {}",
                    VOLUMES[v],
                    r.size()
                ));
            }
            let mut data = vec![0u8; VOL_BYTES as usize];
            r.read(&mut data, 0)
                .map_err(|e| format!("reading snapshot {name} of {}: {e}", VOLUMES[v]))?;
            Ok((v, data))
        })
        .collect()
}

/// Reopens the store after the crash and checks it against the report.
/// Returns the store and what its volumes read.
fn check_recovered(
    dir: &Path,
    hist: &History,
    report: &Report<'_>,
    stats: &mut Stats,
) -> Result<(Store, Vec<Vec<u8>>), String> {
    let store = Store::open(dir).map_err(|e| format!("reopening after the crash: {e}"))?;
    let group = store
        .group(GROUP)
        .map_err(|e| format!("finding group {GROUP}: {e}"))?;
    let expect: BTreeMap<String, String> = SLOTS
        .iter()
        .zip(VOLUMES)
        .map(|(s, v)| ((*s).to_owned(), v.to_owned()))
        .collect();
    if group.slots != expect {
        return Err(format!("group {GROUP} has slots {:?}", group.slots));
    }
    let issued = report.issued();
    let mut observed = Vec::new();
    for (vol, name) in VOLUMES.iter().enumerate() {
        let data = read_volume(&store, vol)?;
        for block in 0..VOL_BLOCKS {
            let w = owner(block);
            let floor = report.durable[vol][w].max(hist.fua_floor(vol, block, report.last[w]));
            let actual = &data[(block * BLOCK_SIZE) as usize..][..BLOCK];
            hist.check_live(vol, block, actual, floor, issued[w])
                .map_err(|e| format!("live volume {name}: {e}"))?;
        }
        observed.push(data);
    }
    let listed = list_snapshots(&store)?;
    for (name, owner) in &listed {
        match report.snaps.get(name) {
            Some(ev) if ev.owner == *owner => {}
            _ => return Err(format!("snapshot {name} of {owner:?} was never created")),
        }
    }
    for (name, ev) in &report.snaps {
        let present = listed.contains_key(name);
        if ev.deleted && present {
            return Err(format!(
                "snapshot {name} is listed after its deletion returned"
            ));
        }
        if ev.done.is_some() && !ev.delete_started && !present {
            return Err(format!("snapshot {name} is lost"));
        }
        if !present {
            continue;
        }
        let hi: Cut = match ev.done {
            Some(done) => std::array::from_fn(|w| (done[w] + 1).min(issued[w])),
            None => issued,
        };
        let data = read_snapshot(&store, ev.owner, name)?;
        hist.check_snapshot(&data, ev.lo, hi)
            .map_err(|e| format!("snapshot {name} of {:?}: {e}", ev.owner))?;
        stats.snapshots_checked += 1;
    }
    Ok((store, observed))
}

/// After the crash: the store takes writes, flushes, snapshots and
/// deletions, and keeps them across a reopen.
fn exercise_recovered(
    dir: &Path,
    seed: u64,
    store: Store,
    mut observed: Vec<Vec<u8>>,
) -> Result<(), String> {
    let mut rng = Rng::new(seed ^ 0xAF7E_5C0D);
    for (vol, model) in observed.iter_mut().enumerate() {
        let h = store
            .volume(VOLUMES[vol])
            .map_err(|e| format!("opening volume {}: {e}", VOLUMES[vol]))?;
        for op in 0..8 {
            let first = rng.below(VOL_BLOCKS);
            let room = VOL_BLOCKS - first;
            let (off, len) = if op % 2 == 0 {
                blocks(&mut rng, first, room, 4)
            } else {
                sectors(&mut rng, first, room, 2)
            };
            let mut buf = vec![0u8; len as usize];
            fill(seed, vol, POST_WRITER, op, off, &mut buf);
            h.write(&buf, off, false)
                .map_err(|e| format!("writing after the crash: {e}"))?;
            model[off as usize..(off + len) as usize].copy_from_slice(&buf);
        }
        h.flush()
            .map_err(|e| format!("flushing after the crash: {e}"))?;
    }
    let same = |store: &Store, observed: &[Vec<u8>], when: &str| -> Result<(), String> {
        for (vol, model) in observed.iter().enumerate() {
            if read_volume(store, vol)? != *model {
                return Err(format!("volume {} changed {when}", VOLUMES[vol]));
            }
        }
        Ok(())
    };
    same(&store, &observed, "when written after the crash")?;
    let post = Target::Group(GROUP);
    store
        .create_snapshot(post, "post", SnapshotKind::Crash)
        .map_err(|e| format!("snapshotting after the crash: {e}"))?;
    // Delete every snapshot, oldest first, then the new one: merges into
    // sealed layers and into the heads, on layers recovered from the crash.
    let mut names: Vec<(String, Owner)> = list_snapshots(&store)?.into_iter().collect();
    names.sort_by_key(|(n, _)| (n == "post", n[1..].parse::<u64>().unwrap_or(u64::MAX)));
    for (name, owner) in &names {
        store
            .delete_snapshot(owner.target(), name)
            .map_err(|e| format!("deleting snapshot {name} after the crash: {e}"))?;
    }
    same(&store, &observed, "by the deletion of every snapshot")?;
    drop(store);
    let store = Store::open(dir).map_err(|e| format!("reopening a second time: {e}"))?;
    same(&store, &observed, "across a clean reopen")?;
    let left = list_snapshots(&store)?;
    if !left.is_empty() {
        return Err(format!("snapshots {left:?} survived their deletion"));
    }
    Ok(())
}

#[derive(Default)]
struct Stats {
    rounds: u64,
    killed_mid_run: u64,
    acks: u64,
    flushes: u64,
    snapshots: u64,
    deletions: u64,
    snapshots_checked: u64,
    /// Acknowledged operations reported after the kill was sent.
    kill_lag: u64,
}

fn run_round(seed: u64, stats: &mut Stats) -> Result<(), String> {
    let hist = History::new(seed);
    let total: u64 = hist.plans.iter().map(|p| p.len() as u64).sum();
    let mut rng = Rng::new(seed ^ 0x0C0F_FEE5);
    // Mostly anywhere; sometimes early (few layers yet), at the very end, or
    // just as a snapshot is taken or deleted (during its merges).
    let kill = match rng.below(20) {
        0..2 => KillAt::Acks(1 + rng.below(50)),
        2 => KillAt::Acks(total),
        3..6 => KillAt::Creation(1 + rng.below(12)),
        6..9 => KillAt::Deletion(1 + rng.below(10)),
        _ => KillAt::Acks(1 + rng.below(total)),
    };
    let dir = tempfile::Builder::new()
        .prefix("ferry-crash-")
        .tempdir_in(base_dir())
        .map_err(|e| format!("making a directory: {e}"))?;
    let result = (|| {
        let report = run_child_process(dir.path(), seed, &hist.plans, kill)?;
        stats.rounds += 1;
        stats.killed_mid_run += u64::from(!report.ended);
        stats.acks += report.acks;
        stats.flushes += report.flushes;
        stats.snapshots += report.snaps.values().filter(|s| s.done.is_some()).count() as u64;
        stats.deletions += report.deletions;
        stats.kill_lag += report.killed_at.map_or(0, |k| report.acks - k);
        let (store, observed) =
            check_recovered(dir.path(), &hist, &report, stats).map_err(|e| {
                format!(
                    "after a kill ({kill:?}) at {} of {total} operations (writers at {:?}): {e}",
                    report.acks, report.last
                )
            })?;
        exercise_recovered(dir.path(), seed, store, observed)
    })();
    result.map_err(|e| format!("{e}\nthe store is kept in {}", dir.keep().display()))
}

/// Where the rounds' stores live: `FERRY_CRASH_DIR`, else tmpfs when there
/// is one, else the system's temporary directory. A SIGKILL keeps the page
/// cache, so what the file system makes durable plays no part here (the
/// power-loss tests run on `MemStorage`); a disk's syncs only slow the rounds
/// down, by seconds each on a shared disk mounted with `discard`.
fn base_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FERRY_CRASH_DIR") {
        return dir.into();
    }
    let shm = Path::new("/dev/shm");
    if tempfile::tempdir_in(shm).is_ok() {
        return shm.into();
    }
    std::env::temp_dir()
}

fn parse_seed(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The parent's side: rounds of run, kill, reopen, check.
#[test]
fn sigkill_at_any_moment_keeps_the_durability_contract() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let seeds: Vec<u64> = match std::env::var("FERRY_CRASH_SEED") {
        Ok(s) => vec![parse_seed(&s).expect("FERRY_CRASH_SEED is a number")],
        Err(_) => {
            let rounds = std::env::var("FERRY_CRASH_ROUNDS")
                .ok()
                .map(|s| s.parse::<u64>().expect("FERRY_CRASH_ROUNDS is a number"))
                .unwrap_or(50);
            let base = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            (0..rounds).map(|r| mix(base ^ mix(r))).collect()
        }
    };
    let started = Instant::now();
    let mut stats = Stats::default();
    for (round, &seed) in seeds.iter().enumerate() {
        if let Err(e) = run_round(seed, &mut stats) {
            panic!(
                "crash round {round} failed; replay with FERRY_CRASH_SEED={seed:#x} \
                 cargo test -p ferry-store --test crash\n{e}"
            );
        }
    }
    let s = &stats;
    eprintln!(
        "crash: {} rounds in {:.1?} in {} ({} killed mid-run, {:.1} ops on average past the \
         kill point): {} ops acknowledged, {} flushes, {} snapshots made, {} deleted, {} \
         checked after the crash",
        s.rounds,
        started.elapsed(),
        base_dir().display(),
        s.killed_mid_run,
        s.kill_lag as f64 / s.rounds.max(1) as f64,
        s.acks,
        s.flushes,
        s.snapshots,
        s.deletions,
        s.snapshots_checked,
    );
}
