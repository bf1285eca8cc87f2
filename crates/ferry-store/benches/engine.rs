//! The engine's speed, measured against its goals in one run (see `bench/README.md`).
//!
//! 1. Snapshot and clone time of a 1 GiB volume and of a 1 TiB sparse volume
//!    holding the same 1 GiB of data (goal: 1 TiB / 1 GiB under 2×).
//! 2. Diff time between two snapshots of a 64 GiB volume with 1 % of its
//!    blocks changed, randomly spread (the diff must find exactly those).
//! 3. 4 KiB random read and write IOPS through a `VolumeHandle` against plain
//!    `pread`/`pwrite` on a file of the same size in the same directory, with
//!    0 and with 32 snapshots in the volume's chain (goal: engine / plain ≥ 0.8×).
//!
//! Run it with `bash bench/engine.sh` (or `cargo bench -p ferry-store --bench
//! engine`). `FERRY_BENCH_QUICK=1` shrinks every size for a smoke run;
//! `FERRY_BENCH_PARTS=1,3` runs only those parts; `FERRY_BENCH_THREADS=n`
//! sets part 3's threads (default 2);
//! `FERRY_BENCH_WORK` names an existing directory to work in (the script's),
//! else one is made under `${FERRY_BENCH_DIR:-/tmp/ferry-bench}` and removed.

use std::error::Error;
use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_store::layer::journal;
use ferry_store::{BLOCK_SIZE, DiffEnd, RoaringBitmap, SnapshotKind, Store, Target, VolumeHandle};

type Res<T> = std::result::Result<T, Box<dyn Error>>;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;
const BLOCK: usize = BLOCK_SIZE as usize;
/// Part 3's layered volume assigns blocks to layers in runs of this many.
const LAYER_RUN: u64 = 16;
/// Sequential reads and part 1's fills use this size.
const CHUNK: u64 = MIB;

struct Config {
    quick: bool,
    /// Data written into both volumes of part 1, and the small volume's size.
    data: u64,
    /// The large sparse volume of part 1.
    big: u64,
    /// Snapshots (and clones) timed per volume in part 1; diffs timed in part 2.
    reps: usize,
    /// The volume of part 2.
    diff_size: u64,
    /// The volume and the plain file of part 3.
    rw_size: u64,
    /// Snapshots in the chain of part 3's layered volume.
    layers: usize,
    threads: usize,
    /// 4 KiB operations per thread per measurement.
    ops: usize,
    /// Read measurements of each kind, alternating plain and engine; medians reported.
    rounds: usize,
    /// Write measurements of each kind (each is followed by a flush, which takes longer).
    write_rounds: usize,
}

impl Config {
    fn from_env() -> Config {
        let quick = std::env::var("FERRY_BENCH_QUICK").is_ok_and(|v| v == "1");
        // Part 3's threads: the reference machine has two cores.
        let threads = std::env::var("FERRY_BENCH_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(2);
        if quick {
            Config {
                quick,
                data: 64 * MIB,
                big: TIB,
                reps: 5,
                diff_size: 4 * GIB,
                rw_size: 128 * MIB,
                layers: 32,
                threads,
                ops: 20_000,
                rounds: 3,
                write_rounds: 3,
            }
        } else {
            Config {
                quick,
                data: GIB,
                big: TIB,
                reps: 15,
                diff_size: 64 * GIB,
                rw_size: 2 * GIB,
                layers: 32,
                threads,
                ops: 200_000,
                rounds: 5,
                write_rounds: 3,
            }
        }
    }

    /// Bytes the run writes to disk at most (with some slack).
    fn disk_needed(&self) -> u64 {
        let part1 = 2 * self.data + 64 * MIB;
        let part2 = self.diff_size / 100 + 16 * MIB;
        // Plain file, two volumes, and the layered volume's head after the writes.
        let part3 = 4 * self.rw_size;
        part1 + part2 + part3 + 256 * MIB
    }
}

/// SplitMix64: small, fast, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// The content every fill gives block `block`, so engine and plain can be compared.
fn pattern(block: u64, out: &mut [u8]) {
    out.fill((block % 251) as u8 + 1);
    out[..8].copy_from_slice(&block.to_le_bytes());
}

/// Writes `len` bytes of pattern from offset 0, `chunk` bytes at a time.
fn fill_seq(len: u64, chunk: u64, mut write: impl FnMut(&[u8], u64) -> Res<()>) -> Res<()> {
    let mut buf = vec![0u8; chunk as usize];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(chunk) as usize;
        for (i, b) in buf[..n].chunks_mut(BLOCK).enumerate() {
            pattern(off / BLOCK_SIZE + i as u64, b);
        }
        write(&buf[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

/// Reads `len` bytes from offset 0 in `CHUNK`s (to warm the page cache).
fn read_seq(len: u64, mut read: impl FnMut(&mut [u8], u64) -> Res<()>) -> Res<()> {
    let mut buf = vec![0u8; CHUNK as usize];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(CHUNK) as usize;
        read(&mut buf[..n], off)?;
        black_box(&buf);
        off += n as u64;
    }
    Ok(())
}

fn median_dur(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn fmt_dur(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

fn fmt_size(bytes: u64) -> String {
    if bytes >= TIB && bytes.is_multiple_of(TIB) {
        format!("{} TiB", bytes / TIB)
    } else if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

fn fmt_iops(v: f64) -> String {
    format!("{:.0}k", v / 1e3)
}

/// Prints rows as a table, the first row being the header.
fn table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (i, row) in rows.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if c == 0 {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str("   ");
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            }
        }
        println!("  {}", line.trim_end());
        if i == 0 {
            let total = widths.iter().sum::<usize>() + 3 * cols.saturating_sub(1);
            println!("  {}", "-".repeat(total));
        }
    }
}

fn verdict(ok: bool) -> String {
    if ok { "ok" } else { "MISSED" }.to_string()
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|s| s.to_string()).collect()
}

/// Runs a setup step and says how long it took.
fn step<T>(label: &str, f: impl FnOnce() -> Res<T>) -> Res<T> {
    let (out, d) = timed(f)?;
    println!("  setup: {label}: {}", fmt_dur(d));
    Ok(out)
}

fn timed<T>(f: impl FnOnce() -> Res<T>) -> Res<(T, Duration)> {
    let t = Instant::now();
    let out = f()?;
    Ok((out, t.elapsed()))
}

fn ensure_free(dir: &Path, needed: u64) -> Res<()> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: statvfs fills the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let free = st.f_bavail * st.f_frsize;
    println!(
        "work dir {} ({} free, this run needs about {})",
        dir.display(),
        fmt_size(free / MIB * MIB),
        fmt_size(needed.div_ceil(MIB) * MIB)
    );
    if free < needed {
        return Err(format!(
            "too little free disk in {}: {} MiB free, {} MiB needed",
            dir.display(),
            free / MIB,
            needed / MIB
        )
        .into());
    }
    Ok(())
}

// ----- part 1: snapshot and clone time against volume size -----

fn part1(cfg: &Config, dir: &Path) -> Res<()> {
    println!();
    println!(
        "== 1. snapshot and clone time: {} volume vs {} sparse volume, {} written into each",
        fmt_size(cfg.data),
        fmt_size(cfg.big),
        fmt_size(cfg.data)
    );
    let store = Store::open(dir)?;
    let vols = [("small", cfg.data), ("big", cfg.big)];
    for (name, size) in vols {
        store.create_volume(name, size)?;
        let h = store.volume(name)?;
        let ((), fill) = timed(|| {
            fill_seq(cfg.data, CHUNK, |b, off| Ok(h.write(b, off, false)?))?;
            Ok(h.flush()?)
        })?;
        println!(
            "  filled {name} ({}): {} written sequentially in 1 MiB writes + flush in {}",
            fmt_size(size),
            fmt_size(cfg.data),
            fmt_dur(fill)
        );
    }
    // Snapshots alternate between the two volumes so that noise hits both alike.
    // Before each, 1 MiB is written to the head and flushed (untimed), so each
    // snapshot seals a layer holding data; the first seals the whole fill.
    let mut snap: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut syncs = Vec::new();
    let probe = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("sync-probe"))?;
    let mut buf = vec![0u8; MIB as usize];
    for i in 0..cfg.reps {
        for (k, (name, _)) in vols.iter().enumerate() {
            let h = store.volume(name)?;
            if i > 0 {
                let off = (i as u64 * MIB) % cfg.data;
                for (j, b) in buf.chunks_mut(BLOCK).enumerate() {
                    pattern(off / BLOCK_SIZE + j as u64 + 7, b);
                }
                h.write(&buf, off, false)?;
                h.flush()?;
            }
            let (_, d) = timed(|| {
                Ok(store.create_snapshot(
                    Target::Volume(name),
                    &format!("s{i}"),
                    SnapshotKind::Crash,
                )?)
            })?;
            snap[k].push(d);
        }
        // For scale, the disk's own sync latency, measured in the same loop.
        probe.write_all_at(&buf[..BLOCK], (i * BLOCK) as u64)?;
        let ((), d) = timed(|| Ok(probe.sync_data()?))?;
        syncs.push(d);
    }
    let mut clone: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for i in 0..cfg.reps {
        for (k, (name, _)) in vols.iter().enumerate() {
            let new = format!("{name}-clone{i}");
            let (_, d) =
                timed(|| Ok(store.clone_volume(Target::Volume(name), "s0", None, &new)?))?;
            clone[k].push(d);
        }
    }
    // A clone reads the snapshot's data.
    let mut check = vec![0u8; BLOCK];
    let mut want = vec![0u8; BLOCK];
    let last = cfg.data / BLOCK_SIZE - 1;
    store
        .volume("big-clone0")?
        .read(&mut check, last * BLOCK_SIZE)?;
    pattern(last, &mut want);
    if check != want {
        return Err("a clone of the 1 TiB volume does not read its snapshot's data".into());
    }

    let first = |v: &[Duration]| v[0];
    let mut rows = vec![row(&[
        "",
        &fmt_size(cfg.data),
        &fmt_size(cfg.big),
        "ratio big/small",
        "goal",
        "",
    ])];
    for (label, v) in [("snapshot, median", &snap), ("clone, median", &clone)] {
        let (a, b) = (median_dur(v[0].clone()), median_dur(v[1].clone()));
        let r = b.as_secs_f64() / a.as_secs_f64();
        rows.push(vec![
            format!("{label} of {}", cfg.reps),
            fmt_dur(a),
            fmt_dur(b),
            format!("{r:.2}×"),
            "< 2×".into(),
            verdict(r < 2.0),
        ]);
    }
    let (a, b) = (first(&snap[0]), first(&snap[1]));
    rows.push(vec![
        format!("first snapshot (seals the {} fill)", fmt_size(cfg.data)),
        fmt_dur(a),
        fmt_dur(b),
        format!("{:.2}×", b.as_secs_f64() / a.as_secs_f64()),
        String::new(),
        String::new(),
    ]);
    for (label, v) in [("snapshot", &snap), ("clone", &clone)] {
        let range = |v: &Vec<Duration>| {
            let min = v.iter().min().copied().unwrap_or_default();
            let max = v.iter().max().copied().unwrap_or_default();
            format!("{}–{}", fmt_dur(min), fmt_dur(max))
        };
        rows.push(vec![
            format!("{label}, min–max"),
            range(&v[0]),
            range(&v[1]),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }
    table(&rows);
    let sync = median_dur(syncs.clone());
    println!(
        "  for scale: 4 KiB pwrite + fdatasync of a file in the same directory: median {} ({}–{}); a snapshot's median is {:.1} of those",
        fmt_dur(sync),
        fmt_dur(*syncs.iter().min().expect("reps")),
        fmt_dur(*syncs.iter().max().expect("reps")),
        median_dur(snap[0].clone()).as_secs_f64() / sync.as_secs_f64()
    );
    Ok(())
}

// ----- part 2: diff time -----

fn part2(cfg: &Config, dir: &Path) -> Res<()> {
    let blocks = cfg.diff_size / BLOCK_SIZE;
    let changed = blocks / 100;
    println!();
    println!(
        "== 2. diff of 1 % changed blocks on a {} volume ({changed} of {blocks} blocks, randomly spread)",
        fmt_size(cfg.diff_size)
    );
    let store = Store::open(dir)?;
    step("volume created + snapshot \"before\"", || {
        store.create_volume("d", cfg.diff_size)?;
        Ok(store.create_snapshot(Target::Volume("d"), "before", SnapshotKind::Crash)?)
    })?;
    let mut rng = Rng(0xd1ff);
    let mut want = RoaringBitmap::new();
    while want.len() < changed {
        want.insert(rng.below(blocks) as u32);
    }
    let h = store.volume("d")?;
    let mut buf = vec![0u8; BLOCK];
    let ((), wrote) = timed(|| {
        for b in &want {
            pattern(u64::from(b), &mut buf);
            h.write(&buf, u64::from(b) * BLOCK_SIZE, false)?;
        }
        Ok(h.flush()?)
    })?;
    println!(
        "  wrote {changed} random 4 KiB blocks (ascending order) + flush in {}",
        fmt_dur(wrote)
    );
    step("snapshot \"after\"", || {
        Ok(store.create_snapshot(Target::Volume("d"), "after", SnapshotKind::Crash)?)
    })?;
    let mut times = Vec::new();
    let mut found = 0;
    for _ in 0..cfg.reps {
        let (diff, d) =
            timed(|| Ok(store.diff(Target::Volume("d"), "before", DiffEnd::Snapshot("after"))?))?;
        times.push(d);
        let mut all = RoaringBitmap::new();
        for set in diff.values() {
            all |= set;
        }
        if all != want {
            return Err(format!(
                "the diff found {} blocks, not the {} changed ones",
                all.len(),
                want.len()
            )
            .into());
        }
        found = all.len();
    }
    let med = median_dur(times.clone());
    let rows = vec![
        row(&[
            "",
            "median",
            "min",
            "max",
            "blocks changed",
            "blocks found",
            "",
        ]),
        vec![
            format!("diff before→after, {} runs", cfg.reps),
            fmt_dur(med),
            fmt_dur(*times.iter().min().expect("runs")),
            fmt_dur(*times.iter().max().expect("runs")),
            changed.to_string(),
            found.to_string(),
            verdict(found == changed),
        ],
    ];
    table(&rows);
    Ok(())
}

// ----- part 3: random 4 KiB IOPS, engine vs plain -----

/// What part 3 measures: the plain file or a volume.
enum Dev<'a> {
    Plain(&'a File),
    Vol(&'a VolumeHandle),
    /// A plain file that only ever takes writes (nothing to warm).
    Fresh(&'a File),
    /// The layered volume's own layer files, read raw: block `b` at slot
    /// `slot[b]` of `files[owner[b]]`.
    Layers(&'a [File], &'a [u8], &'a [u32]),
    /// A file that takes every write at its end, into space reserved ahead
    /// (`fallocate(KEEP_SIZE)`), whatever the offset asked: how a packed
    /// layer takes blocks it never held. The counter is the next offset.
    Append(&'a File, &'a AtomicU64, u64),
}

impl Dev<'_> {
    fn read(&self, buf: &mut [u8], off: u64) {
        match self {
            Dev::Plain(f) | Dev::Fresh(f) => f.read_exact_at(buf, off).expect("plain read"),
            Dev::Vol(v) => v.read(buf, off).expect("engine read"),
            Dev::Layers(files, owner, slot) => {
                let b = (off / BLOCK_SIZE) as usize;
                files[usize::from(owner[b])]
                    .read_exact_at(buf, u64::from(slot[b]) * BLOCK_SIZE)
                    .expect("raw layer read")
            }
            Dev::Append(..) => unreachable!("the append peer only takes writes"),
        }
    }

    fn write(&self, buf: &[u8], off: u64) {
        match self {
            Dev::Plain(f) | Dev::Fresh(f) => f.write_all_at(buf, off).expect("plain write"),
            Dev::Vol(v) => v.write(buf, off, false).expect("engine write"),
            Dev::Layers(..) => unreachable!("raw layers are only read"),
            Dev::Append(f, next, _) => {
                let at = next.fetch_add(buf.len() as u64, Ordering::Relaxed);
                f.write_all_at(buf, at).expect("append write")
            }
        }
    }

    /// Reads everything once, sequentially.
    fn warm(&self, size: u64) -> Res<()> {
        match self {
            Dev::Plain(f) => read_seq(size, |b, off| Ok(f.read_exact_at(b, off)?)),
            Dev::Vol(v) => read_seq(size, |b, off| Ok(v.read(b, off)?)),
            // Reading holes would fill the page cache with zeros the engine
            // never reads; the layered volume's warm-up reads these pages.
            Dev::Fresh(_) | Dev::Layers(..) => Ok(()),
            Dev::Append(f, next, reserve) => {
                // Start each measurement on an empty file with its space reserved.
                f.set_len(0)?;
                next.store(0, Ordering::Relaxed);
                fallocate(f, libc::FALLOC_FL_KEEP_SIZE, *reserve)
            }
        }
    }

    fn sync(&self) -> Res<()> {
        match self {
            Dev::Plain(f) | Dev::Fresh(f) | Dev::Append(f, ..) => Ok(f.sync_data()?),
            Dev::Vol(v) => Ok(v.flush()?),
            Dev::Layers(..) => Ok(()),
        }
    }
}

/// Runs `ops[t]` on thread `t` for every thread at once; returns operations per second.
fn iops(ops: &[Vec<u64>], op: impl Fn(&mut [u8], u64) + Sync) -> f64 {
    let barrier = Barrier::new(ops.len() + 1);
    let mut start = Instant::now();
    std::thread::scope(|s| {
        for (t, offsets) in ops.iter().enumerate() {
            let (barrier, op) = (&barrier, &op);
            s.spawn(move || {
                let mut buf = vec![0u8; BLOCK];
                pattern(t as u64, &mut buf);
                barrier.wait();
                for &off in offsets {
                    op(&mut buf, off);
                }
                black_box(&buf);
            });
        }
        barrier.wait();
        start = Instant::now();
    });
    let secs = start.elapsed().as_secs_f64();
    ops.iter().map(Vec::len).sum::<usize>() as f64 / secs
}

/// Random block offsets for each thread, the same for engine and plain.
fn offsets(cfg: &Config, seed: u64) -> Vec<Vec<u64>> {
    let blocks = cfg.rw_size / BLOCK_SIZE;
    (0..cfg.threads)
        .map(|t| {
            let mut rng = Rng(seed * 1000 + t as u64);
            (0..cfg.ops)
                .map(|_| rng.below(blocks) * BLOCK_SIZE)
                .collect()
        })
        .collect()
}

fn part3(cfg: &Config, dir: &Path) -> Res<()> {
    let blocks = cfg.rw_size / BLOCK_SIZE;
    println!();
    println!(
        "== 3. 4 KiB random I/O, engine (VolumeHandle) vs plain pread/pwrite on a {} file in the same directory",
        fmt_size(cfg.rw_size)
    );
    println!(
        "  {} threads, {} ops per thread per measurement; {} read and {} write rounds, each alternating plain / 0 snapshots / {} snapshots / peer; medians; page cache warm, no fsync in the loop",
        cfg.threads, cfg.ops, cfg.rounds, cfg.write_rounds, cfg.layers
    );
    let store = Store::open(dir)?;
    let plain_path = dir.join("plain.img");
    let plain: File = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&plain_path)?;
    plain.set_len(cfg.rw_size)?;
    // Every file here is filled with 4 KiB writes, like the layered volume's
    // layers: the page cache then holds 4 KiB folios everywhere. A file filled
    // with large writes gets large folios, and 4 KiB overwrites into those
    // cost the kernel several times more (see bench/README.md).
    step("plain file: 4 KiB sequential fill + fdatasync", || {
        fill_seq(cfg.rw_size, BLOCK_SIZE, |b, off| {
            Ok(plain.write_all_at(b, off)?)
        })?;
        Ok(plain.sync_data()?)
    })?;

    // Volume "flat": filled sequentially, no snapshots (one layer).
    store.create_volume("flat", cfg.rw_size)?;
    let flat = store.volume("flat")?;
    step("volume \"flat\": 4 KiB sequential fill + flush", || {
        fill_seq(cfg.rw_size, BLOCK_SIZE, |b, off| {
            Ok(flat.write(b, off, false)?)
        })?;
        Ok(flat.flush()?)
    })?;

    // Volume "layered": every 64 KiB run of blocks is written once, into a
    // layer picked at random; after each of the `layers` rounds of writes a
    // snapshot seals the head. The live head is empty, so a read resolves
    // through the head and, on average, half the sealed layers. (Runs rather
    // than single blocks: the engine resolves per block either way, and each
    // scattered 4 KiB extent costs a discard when the files are deleted.)
    store.create_volume("layered", cfg.rw_size)?;
    let layered = store.volume("layered")?;
    let mut rng = Rng(0x1a7e);
    let run_owner: Vec<u8> = (0..blocks / LAYER_RUN)
        .map(|_| rng.below(cfg.layers as u64) as u8)
        .collect();
    let owner: Vec<u8> = (0..blocks)
        .map(|b| run_owner[(b / LAYER_RUN) as usize])
        .collect();
    let mut buf = vec![0u8; BLOCK];
    let mut run = vec![0u8; LAYER_RUN as usize * BLOCK];
    // The data file of the head each round writes into, for the raw peer.
    let mut layer_files: Vec<Option<PathBuf>> = Vec::new();
    step(
        "volume \"layered\": 32 × (write 1/32 of the 64 KiB runs + snapshot)",
        || {
            for l in 0..cfg.layers {
                layer_files.push(newest_layer_file(dir));
                for (r, _) in run_owner
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| usize::from(**o) == l)
                {
                    let first = r as u64 * LAYER_RUN;
                    for (i, b) in run.chunks_mut(BLOCK).enumerate() {
                        pattern(first + i as u64, b);
                    }
                    layered.write(&run, first * BLOCK_SIZE, false)?;
                }
                layered.flush()?;
                store.create_snapshot(
                    Target::Volume("layered"),
                    &format!("l{l}"),
                    SnapshotKind::Crash,
                )?;
            }
            Ok(())
        },
    )?;
    println!(
        "  \"{} snapshots\": each 64 KiB run of blocks written once, into one of {} layers picked at random (1/{} of the volume per layer), a snapshot after each; the live head is empty",
        cfg.layers, cfg.layers, cfg.layers
    );

    step("page cache warmed: each file/volume read once", || {
        for d in [Dev::Plain(&plain), Dev::Vol(&flat), Dev::Vol(&layered)] {
            d.warm(cfg.rw_size)?;
        }
        Ok(())
    })?;

    // All three read the same content.
    let mut rng = Rng(0xc4ec);
    let (mut a, mut e, mut f) = (vec![0u8; BLOCK], vec![0u8; BLOCK], vec![0u8; BLOCK]);
    for _ in 0..2000 {
        let b = rng.below(blocks);
        plain.read_exact_at(&mut a, b * BLOCK_SIZE)?;
        flat.read(&mut e, b * BLOCK_SIZE)?;
        layered.read(&mut f, b * BLOCK_SIZE)?;
        pattern(b, &mut buf);
        if a != buf || e != buf || f != buf {
            return Err(format!("block {b} reads differently from engine and plain").into());
        }
    }

    // Peers without engine code, to tell the engine's cost from the cost of
    // its layout: the layered volume's layer files read raw (pread of each
    // block's slot in the file that holds it, per docs/format.md); writes at
    // the end of a file into reserved space, as a packed head takes new
    // blocks; and, for comparison, writes into a sparse file's holes, as a
    // head addressed like the volume took them.
    let raw = raw_layers(&layer_files, &owner, blocks);
    let slot_of = raw.as_ref().map(|(_, s)| s.clone()).unwrap_or_default();
    if let Err(e) = &raw {
        println!("  (raw layer peer skipped: {e})");
    }
    let raw = raw.ok().map(|(files, _)| files);
    let fresh: File = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("sparse.img"))?;
    fresh.set_len(cfg.rw_size)?;
    // The packed layout's new blocks without the engine: each write at the
    // end of a file, into space reserved ahead.
    let appended: File = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("append.img"))?;
    let append_at = AtomicU64::new(0);
    let append_reserve = cfg.threads as u64 * cfg.ops as u64 * BLOCK_SIZE;

    let mut read_devs = vec![Dev::Plain(&plain), Dev::Vol(&flat), Dev::Vol(&layered)];
    if let Some(files) = &raw {
        read_devs.push(Dev::Layers(files, &owner, &slot_of));
    }
    let write_devs = [
        Dev::Plain(&plain),
        Dev::Vol(&flat),
        Dev::Vol(&layered),
        Dev::Fresh(&fresh),
        Dev::Append(&appended, &append_at, append_reserve),
    ];
    // reads[k] and writes[k] hold the IOPS of read_devs[k] and write_devs[k].
    // Each measurement re-reads its file first: this machine pages out page
    // cache left idle for about a minute (DAMON), so "warm" must be recent.
    let mut reads: Vec<Vec<f64>> = vec![Vec::new(); read_devs.len()];
    let mut writes: Vec<Vec<f64>> = vec![Vec::new(); write_devs.len()];
    step("read measurements", || {
        for round in 0..cfg.rounds {
            let offs = offsets(cfg, 2 * round as u64 + 1);
            for (k, d) in read_devs.iter().enumerate() {
                d.warm(cfg.rw_size)?;
                reads[k].push(iops(&offs, |b, off| d.read(b, off)));
            }
        }
        Ok(())
    })?;
    step(
        "write measurements (each followed by an untimed flush)",
        || {
            for round in 0..cfg.write_rounds {
                // New offsets each round: in the layered volume part of the writes
                // go to blocks its head does not hold yet (copy-on-write allocation).
                let offs = offsets(cfg, 2 * round as u64 + 2);
                for (k, d) in write_devs.iter().enumerate() {
                    d.warm(cfg.rw_size)?;
                    writes[k].push(iops(&offs, |b, off| d.write(b, off)));
                    d.sync()?;
                }
            }
            Ok(())
        },
    )?;

    let spread = |num: &[f64], den: &[f64]| {
        let r: Vec<f64> = num.iter().zip(den).map(|(n, d)| n / d).collect();
        let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = r.iter().copied().fold(0.0, f64::max);
        format!("{lo:.2}–{hi:.2}×")
    };
    let mut rows = vec![row(&[
        "",
        "plain IOPS",
        "engine IOPS",
        "engine/plain",
        "per-round ratio min–max",
        "goal",
        "",
    ])];
    for (label, m) in [("random read", &reads), ("random write", &writes)] {
        let p = median_f64(m[0].clone());
        for (k, snaps) in ["0", "32"].iter().enumerate() {
            let e = median_f64(m[k + 1].clone());
            let r = e / p;
            rows.push(vec![
                format!("{label}, {snaps} snapshots"),
                fmt_iops(p),
                fmt_iops(e),
                format!("{r:.2}×"),
                spread(&m[k + 1], &m[0]),
                "≥ 0.8×".into(),
                verdict(r >= 0.8),
            ]);
        }
    }
    table(&rows);

    println!();
    println!("  the layouts without the engine: the same operations by plain pread/pwrite");
    let mut rows = vec![row(&[
        "",
        "peer IOPS",
        "peer/plain",
        "engine(32)/peer",
        "per-round engine/peer",
    ])];
    let mut peer_row = |label: &str, m: &[Vec<f64>], k: usize| {
        let (p, e, x) = (
            median_f64(m[0].clone()),
            median_f64(m[2].clone()),
            median_f64(m[k].clone()),
        );
        rows.push(vec![
            label.to_string(),
            fmt_iops(x),
            format!("{:.2}×", x / p),
            format!("{:.2}×", e / x),
            spread(&m[2], &m[k]),
        ]);
    };
    if raw.is_some() {
        peer_row("random read: pread from the 32 layer files, raw", &reads, 3);
    }
    peer_row(
        "random write: pwrite into a sparse file's holes (a head addressed like the volume: ferry's layout before 2026-11-30)",
        &writes,
        3,
    );
    peer_row(
        "write: pwrite at the end of a file into space reserved ahead (how a packed head takes new blocks)",
        &writes,
        4,
    );
    table(&rows);
    Ok(())
}

/// The data file of the newest layer in a store directory (the head just
/// created): layer files are `layers/<16 hex digits>.data` (docs/format.md)
/// and layer ids only grow.
fn newest_layer_file(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir.join("layers"))
        .ok()?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let id = u64::from_str_radix(name.strip_suffix(".data")?, 16).ok()?;
            Some((id, name))
        })
        .max()
        .map(|(_, name)| dir.join("layers").join(name))
}

/// Opens the layer files for the raw peer, with the slot of every block
/// from the layers' map journals (docs/format.md), and checks they hold what
/// the volume shows.
fn raw_layers(paths: &[Option<PathBuf>], owner: &[u8], blocks: u64) -> Res<(Vec<File>, Vec<u32>)> {
    let mut files = Vec::new();
    let mut maps = Vec::new();
    for p in paths {
        let p = p.as_ref().ok_or("no layer file found")?;
        files.push(File::open(p)?);
        let bytes = std::fs::read(p.with_extension("map"))?;
        let decoded = journal::decode(&bytes).map_err(|e| format!("{}: {e}", p.display()))?;
        maps.push(decoded.map.slots);
    }
    let mut slot = vec![0u32; blocks as usize];
    for (b, s) in slot.iter_mut().enumerate() {
        *s = maps[usize::from(owner[b])]
            .get(b as u32)
            .ok_or_else(|| format!("block {b} has no slot in its layer"))?;
    }
    let mut rng = Rng(0x5a3);
    let (mut got, mut want) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
    for _ in 0..2000 {
        let b = rng.below(blocks) as usize;
        files[usize::from(owner[b])].read_exact_at(&mut got, u64::from(slot[b]) * BLOCK_SIZE)?;
        pattern(b as u64, &mut want);
        if got != want {
            return Err(format!("block {b} is not where the layer files were expected").into());
        }
    }
    Ok((files, slot))
}

fn fallocate(f: &File, mode: libc::c_int, len: u64) -> Res<()> {
    use std::os::fd::AsRawFd;
    let len = i64::try_from(len)?;
    // SAFETY: a plain syscall on a file descriptor we own.
    if unsafe { libc::fallocate(f.as_raw_fd(), mode, 0, len) } != 0 {
        return Err(format!("fallocate: {}", std::io::Error::last_os_error()).into());
    }
    Ok(())
}

fn main() -> Res<()> {
    let cfg = Config::from_env();
    // FERRY_BENCH_PARTS=3 (or 1,3) runs only those parts, e.g. for profiling.
    let only = std::env::var("FERRY_BENCH_PARTS").unwrap_or_default();
    let (work, remove): (PathBuf, bool) = match std::env::var_os("FERRY_BENCH_WORK") {
        Some(w) => (PathBuf::from(w), false),
        None => {
            let base = std::env::var_os("FERRY_BENCH_DIR")
                .map_or_else(|| PathBuf::from("/tmp/ferry-bench"), PathBuf::from);
            (base.join(format!("engine-{}", std::process::id())), true)
        }
    };
    std::fs::create_dir_all(&work)?;
    let result = (|| {
        if cfg.quick {
            println!(
                "QUICK mode (FERRY_BENCH_QUICK=1): small sizes, figures are not the goals' sizes"
            );
        }
        ensure_free(&work, cfg.disk_needed())?;
        let t = Instant::now();
        // Each part has its own store in its own directory. None is removed
        // between parts: on a file system that discards freed blocks online,
        // freeing the scattered blocks of parts 2 and 3 takes minutes of
        // device I/O that would disturb the next part's figures.
        let parts: [fn(&Config, &Path) -> Res<()>; 3] = [part1, part2, part3];
        for (i, part) in parts.iter().enumerate() {
            let n = (i + 1).to_string();
            if !only.is_empty() && !only.split(',').any(|p| p.trim() == n) {
                continue;
            }
            let t = Instant::now();
            part(&cfg, &work.join(format!("part{n}")))?;
            println!("  (part {n} took {}, setup included)", fmt_dur(t.elapsed()));
        }
        println!();
        println!("measurements done in {}", fmt_dur(t.elapsed()));
        Ok(())
    })();
    // The caller that named the work directory removes it (bench/engine.sh
    // does so in the background: see bench/README.md).
    if remove {
        let t = Instant::now();
        let _ = std::fs::remove_dir_all(&work);
        println!(
            "work files removed in {} (freeing scattered blocks is slow where the file system discards online)",
            fmt_dur(t.elapsed())
        );
    }
    result
}
