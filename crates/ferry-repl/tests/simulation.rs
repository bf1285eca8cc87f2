//! Replication under a deterministic simulation: the real sender, receiver
//! and protocol decisions between a modelled source and replica, over a
//! network that loses, duplicates and reorders messages, resets and
//! partitions, with either side crashing (see `sim/mod.rs`).
//!
//! Checked after every event: every visible recovery point is block for
//! block the source snapshot it names, points appear in order and never
//! vanish, and the source's base is a point the replica holds. After the
//! faults stop, a cycle begun later must become a point equal to the
//! source at rest.
//!
//! `FERRY_SIM_SEEDS=N` runs seeds 0..N (500 by default);
//! `FERRY_SIM_SEED=S` replays one seed and prints its whole trace when it
//! fails (`FERRY_SIM_TRACE=1` prints it when it passes too, with
//! `--no-capture`).

mod sim;

use sim::{Bug, Failure};

fn env(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}")),
    )
}

fn report(f: &Failure, tail: usize) -> String {
    let skip = f.trace.len().saturating_sub(tail);
    let mut out = format!(
        "seed {} failed at {}.{:03} s (virtual): {}\nreplay with FERRY_SIM_SEED={}\n{:?}\n",
        f.seed,
        f.at / 1000,
        f.at % 1000,
        f.what,
        f.seed,
        f.config
    );
    if skip > 0 {
        out += &format!("… {skip} earlier events (the replay prints them all)\n");
    }
    for line in &f.trace[skip..] {
        out += line;
        out += "\n";
    }
    out
}

#[test]
fn replication_resumes_and_every_point_is_its_snapshot_under_faults() {
    if let Some(seed) = env("FERRY_SIM_SEED") {
        match sim::run(seed, Bug::None, true) {
            Ok((stats, trace)) => {
                if env("FERRY_SIM_TRACE") == Some(1) {
                    for line in trace {
                        eprintln!("{line}");
                    }
                    eprintln!("seed {seed} passed: {stats}");
                }
            }
            Err(f) => panic!("{}", report(&f, usize::MAX)),
        }
        return;
    }
    let seeds = env("FERRY_SIM_SEEDS").unwrap_or(500);
    let mut total = sim::Stats::default();
    for seed in 0..seeds {
        match sim::run(seed, Bug::None, false) {
            Ok((s, _)) => total.add(&s),
            Err(_) => {
                // The same seed again, keeping the trace this time.
                let f = sim::run(seed, Bug::None, true).expect_err("a seed replays the same");
                panic!("{}", report(&f, 300));
            }
        }
    }
    eprintln!("{total}");
    // the seeds did meet every fault, and the paths they force were taken
    if seeds >= 100 {
        for (what, n) in [
            ("resets", total.resets),
            ("partitions", total.partitions),
            ("source crashes", total.source_crashes),
            ("replica crashes", total.replica_crashes),
            ("crashes inside a disk step", total.torn_crashes),
            ("write errors", total.write_errors),
            ("lost control messages", total.lost_msgs),
            ("duplicated control messages", total.dup_msgs),
            ("resumed sends", total.resumed),
            ("lost answers recorded", total.lost_acks),
            ("points", total.points),
        ] {
            assert!(n > 0, "no {what} in {seeds} seeds: {total}");
        }
    }
}

/// Runs seeds with `bug` until one fails; panics if none does.
fn caught(bug: Bug, seeds: u64) -> Box<Failure> {
    for seed in 0..seeds {
        if let Err(f) = sim::run(seed, bug, false) {
            eprintln!("{bug:?}: seed {seed}: {}", f.what);
            return f;
        }
    }
    panic!("none of {seeds} seeds caught {bug:?}");
}

#[test]
fn the_simulation_catches_a_resume_point_recorded_before_the_flush() {
    caught(Bug::CheckpointBeforeFlush, 300);
}

#[test]
fn the_simulation_catches_a_point_made_of_a_broken_stream() {
    caught(Bug::PointFromBrokenStream, 50);
}

#[test]
fn the_simulation_catches_a_timeout_taken_for_an_acknowledgement() {
    caught(Bug::AckOnTimeout, 50);
}

#[test]
fn the_simulation_catches_an_abandoned_cycle_left_in_the_heads() {
    caught(Bug::KeepAbandonedHeads, 300);
}

#[test]
fn the_simulation_catches_a_superseded_receiver_that_still_writes() {
    caught(Bug::NoFence, 300);
}

#[test]
fn a_seed_replays_the_same() {
    let a = sim::run(7, Bug::None, true);
    let b = sim::run(7, Bug::None, true);
    let trace = |r: Result<(sim::Stats, Vec<String>), Box<Failure>>| match r {
        Ok((_, t)) => t,
        Err(f) => f.trace,
    };
    let (a, b) = (trace(a), trace(b));
    assert!(a.len() > 100);
    assert_eq!(a, b);
}
