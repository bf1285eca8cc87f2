//! The source: volumes the workload writes, snapshots as copies, and the
//! sender loop of `ferryd::replication` (`Replicator::cycle`,
//! `send_cycle`) with the store's `begin_cycle` and `finish_cycle`.
//!
//! Durable: the volumes, the snapshots, the base and the pending cycle
//! (a crash keeps them). Volatile: the attempt in flight and the figures
//! the retry back-off uses (a crash loses them; the restarted daemon tries
//! at once).

use std::collections::BTreeMap;
use std::rc::Rc;

use ferry_repl::cycle::{BlockSource, CycleSender};
use ferry_repl::protocol::{self, CycleRef, SourceStep};
use ferry_repl::stream::{CycleHeader, CycleId, Point, SnapshotId, Volume};
use roaring::RoaringBitmap;

use super::replica::PartialRec;
use super::{BS, Block, Bug, Ev, GROUP, INTERVAL, Ms, STALL, Vols, World, zero};

pub struct Snap {
    pub name: String,
    pub vols: Vols,
    /// Per slot and block, the write that last changed it (0: never written).
    pub gens: Rc<Vec<Vec<u64>>>,
}

pub enum Attempt {
    Idle,
    Querying {
        req: u64,
        cycle: u64,
        snap: u64,
    },
    Sending {
        conn: u64,
        cycle: u64,
        snap: u64,
        sender: Box<CycleSender>,
    },
    Awaiting {
        conn: u64,
        cycle: u64,
        snap: u64,
    },
}

pub struct Source {
    pub live: Vec<Vec<Block>>,
    pub gens: Vec<Vec<u64>>,
    writes: u64,
    pub snaps: BTreeMap<u64, Snap>,
    pub base: Option<u64>,
    /// (cycle, snapshot id)
    pub pending: Option<(u64, u64)>,
    next_cycle: u64,
    pub next_snap: u64,
    pub up: bool,
    pub attempt: Attempt,
    /// Bumped at every change of the attempt: timers of older steps are void.
    step: u64,
    failures: u32,
    last_attempt: Option<Ms>,
    /// A fault: the restarted source finds its pending snapshot gone.
    pub lose_pending: bool,
}

impl Source {
    pub fn new(sizes: &[u64]) -> Source {
        Source {
            live: sizes.iter().map(|b| vec![zero(); *b as usize]).collect(),
            gens: sizes.iter().map(|b| vec![0; *b as usize]).collect(),
            writes: 0,
            snaps: BTreeMap::new(),
            base: None,
            pending: None,
            next_cycle: 1,
            next_snap: 1,
            up: true,
            attempt: Attempt::Idle,
            step: 0,
            failures: 0,
            last_attempt: None,
            lose_pending: false,
        }
    }

    /// The connection the attempt sends on.
    pub fn conn(&self) -> Option<u64> {
        match &self.attempt {
            Attempt::Sending { conn, .. } | Attempt::Awaiting { conn, .. } => Some(*conn),
            _ => None,
        }
    }
}

/// Reads a snapshot for the sender.
struct SnapSource<'a>(&'a [Vec<Block>]);

impl BlockSource for SnapSource<'_> {
    fn read(&mut self, slot: usize, first: u64, buf: &mut [u8]) -> Result<(), String> {
        let v = self.0.get(slot).ok_or("no such slot")?;
        for (i, out) in buf.chunks_mut(BS).enumerate() {
            let b = v.get(first as usize + i).ok_or("beyond the volume")?;
            out.copy_from_slice(b);
        }
        Ok(())
    }
}

impl World {
    /// The workload: a burst of writes, sometimes a volume grows.
    pub fn write(&mut self) {
        if !self.faults {
            return;
        }
        if self.src.up {
            let n = self.rng.range(1, 8);
            for _ in 0..n {
                let slot = self.rng.range(0, self.src.live.len() as u64 - 1) as usize;
                if self.rng.percent(1)
                    && let Some(base) = self.src.base.map(|b| &self.src.snaps[&b])
                {
                    // A sync of the slot back to the base: its blocks and
                    // their write history are the base's again (blocks past
                    // the base's end read zeros), so the next diff leaves
                    // them out.
                    let (vols, gens) = (base.vols.clone(), base.gens.clone());
                    self.log(|| format!("source: slot {slot} synced back to the base"));
                    let live = &mut self.src.live[slot];
                    let g = &mut self.src.gens[slot];
                    for b in 0..live.len() {
                        live[b] = vols
                            .get(slot)
                            .and_then(|v| v.get(b))
                            .cloned()
                            .unwrap_or_else(zero);
                        g[b] = gens.get(slot).and_then(|v| v.get(b)).copied().unwrap_or(0);
                    }
                    continue;
                }
                if self.rng.percent(3) {
                    let more = self.rng.range(1, 16) as usize;
                    self.log(|| format!("source: slot {slot} grows by {more} blocks"));
                    let v = &mut self.src.live[slot];
                    v.resize(v.len() + more, zero());
                    let g = &mut self.src.gens[slot];
                    g.resize(g.len() + more, 0);
                    continue;
                }
                let blocks = self.src.gens[slot].len() as u64;
                let b = self.rng.range(0, blocks - 1) as usize;
                let mut data = vec![0u8; BS];
                match self.rng.range(0, 3) {
                    0 => {}
                    1 => {
                        let x = self.rng.u64() as u8;
                        for (i, d) in data.iter_mut().enumerate() {
                            *d = x ^ (i / 64) as u8;
                        }
                    }
                    _ => self.rng.fill(&mut data),
                }
                self.src.writes += 1;
                self.src.gens[slot][b] = self.src.writes;
                self.src.live[slot][b] = Rc::from(data);
            }
        }
        let (lo, hi) = self.cfg.write_gap;
        let t = self.now + self.rng.range(lo, hi);
        self.at(t, Ev::Write);
    }

    /// When the next attempt is due: an interval after the last one began,
    /// sooner after failures (2 s, 4 s, … up to the interval).
    fn due(&self) -> Ms {
        let Some(last) = self.src.last_attempt else {
            return self.now;
        };
        let wait = if self.src.failures > 0 {
            (1_000 * 2u64.pow(self.src.failures.min(16))).min(INTERVAL)
        } else {
            INTERVAL
        };
        last + wait
    }

    fn schedule_tick(&mut self) {
        let t = self.due();
        self.at(t, Ev::Tick);
    }

    pub fn tick(&mut self) -> Result<(), String> {
        if !self.src.up || !matches!(self.src.attempt, Attempt::Idle) || self.now < self.due() {
            return Ok(());
        }
        self.src.last_attempt = Some(self.now);
        let (cycle, snap) = self.begin_cycle();
        let req = self.id();
        self.src.step += 1;
        self.src.attempt = Attempt::Querying { req, cycle, snap };
        self.log(|| {
            format!("source: cycle {cycle} (snapshot {snap}), asking the replica (req {req})")
        });
        self.send_msg(Ev::Query { req });
        let step = self.src.step;
        self.at(self.now + STALL, Ev::Timeout { step });
        Ok(())
    }

    /// The store's `begin_cycle`: the pending cycle if its snapshot is
    /// still there, else a new snapshot recorded as pending.
    fn begin_cycle(&mut self) -> (u64, u64) {
        if let Some((cycle, snap)) = self.src.pending
            && self.src.snaps.contains_key(&snap)
        {
            return (cycle, snap);
        }
        let cycle = self.src.next_cycle;
        self.src.next_cycle += 1;
        let id = self.src.next_snap;
        self.src.next_snap += 1;
        let name = format!("repl-{cycle}");
        let vols: Vols = Rc::new(self.src.live.clone());
        self.taken.insert(id, (name.clone(), vols.clone()));
        self.src.snaps.insert(
            id,
            Snap {
                name,
                vols,
                gens: Rc::new(self.src.gens.clone()),
            },
        );
        self.src.pending = Some((cycle, id));
        self.stats.cycles += 1;
        (cycle, id)
    }

    /// Per slot, the blocks that differ between the base and `snap` (the
    /// store's diff; every block ever written for the initial copy).
    fn changed(&self, snap: u64) -> Vec<RoaringBitmap> {
        let point = &self.src.snaps[&snap].gens;
        let base = self.src.base.map(|b| &self.src.snaps[&b].gens);
        point
            .iter()
            .enumerate()
            .map(|(slot, gens)| {
                let old = base.and_then(|b| b.get(slot));
                gens.iter()
                    .enumerate()
                    .filter(|(b, g)| match old.and_then(|o| o.get(*b)) {
                        Some(o) => o != *g,
                        None => **g != 0,
                    })
                    .map(|(b, _)| b as u32)
                    .collect()
            })
            .collect()
    }

    pub fn on_state(
        &mut self,
        req: u64,
        latest: Option<u64>,
        partial: Option<PartialRec>,
    ) -> Result<(), String> {
        let Attempt::Querying {
            req: r,
            cycle,
            snap,
        } = self.src.attempt
        else {
            return Ok(());
        };
        if r != req || !self.src.up {
            return Ok(());
        }
        let record = protocol::ReplicaRecord {
            latest: latest.map(SnapshotId),
            partial: partial.as_ref().map(PartialRec::to_protocol),
        };
        let this = CycleRef {
            cycle: CycleId(cycle),
            point: SnapshotId(snap),
        };
        let step = protocol::source_step(this, self.src.base.map(SnapshotId), &record);
        self.log(|| format!("source: {step:?}"));
        match step {
            SourceStep::Acknowledged => {
                self.stats.lost_acks += 1;
                self.finish(cycle, snap);
                Ok(())
            }
            SourceStep::Diverged { latest, base } => Err(format!(
                "the replica diverged (latest point {latest:?}, base {base:?}): \
                 replication would never resume"
            )),
            SourceStep::Send { resume } => {
                if resume.is_some() {
                    self.stats.resumed += 1;
                }
                let s = &self.src.snaps[&snap];
                let header = CycleHeader {
                    group: GROUP.into(),
                    cycle: CycleId(cycle),
                    base: self.src.base.map(SnapshotId),
                    point: Point {
                        snapshot: SnapshotId(snap),
                        name: s.name.clone(),
                        created: 0,
                    },
                    volumes: s
                        .vols
                        .iter()
                        .enumerate()
                        .map(|(i, v)| Volume {
                            slot: format!("s{i}"),
                            size: (v.len() * BS) as u64,
                        })
                        .collect(),
                    compression: self.cfg.compression,
                    resume,
                };
                let sender = Box::new(CycleSender::new(header, self.changed(snap), 1));
                let conn = self.open_conn();
                self.src.step += 1;
                self.src.attempt = Attempt::Sending {
                    conn,
                    cycle,
                    snap,
                    sender,
                };
                self.log(|| format!("source: sending on conn {conn}"));
                self.at(self.now, Ev::Produce { conn });
                Ok(())
            }
        }
    }

    /// The sender's producer: the next chunk, cut into pieces as the
    /// network carries it, paced to the bandwidth.
    pub fn produce(&mut self, conn: u64) -> Result<(), String> {
        let snap = match &self.src.attempt {
            Attempt::Sending { conn: c, snap, .. } if *c == conn => *snap,
            _ => return Ok(()),
        };
        let vols = self.src.snaps[&snap].vols.clone();
        let Attempt::Sending { sender, cycle, .. } = &mut self.src.attempt else {
            unreachable!()
        };
        let cycle = *cycle;
        let mut out = Vec::new();
        let more = sender
            .next_chunk(&mut SnapSource(&vols), &mut out)
            .map_err(|e| format!("the sender failed: {e}"))?;
        if !more {
            self.src.step += 1;
            self.src.attempt = Attempt::Awaiting { conn, cycle, snap };
            self.log(|| format!("source: conn {conn} sent everything, awaiting the answer"));
            let step = self.src.step;
            self.at(self.now + STALL, Ev::Timeout { step });
            return Ok(());
        }
        let len = out.len();
        let mut cuts: Vec<usize> = (0..self.rng.range(0, 3))
            .map(|_| self.rng.range(1, len.max(2) as u64 - 1) as usize)
            .filter(|c| *c < len)
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        cuts.push(len);
        let mut from = 0;
        for to in cuts {
            let piece = out[from..to].to_vec();
            from = to;
            if !self.send_piece(conn, piece) {
                self.fail(format!("conn {conn} is gone"));
                return Ok(());
            }
        }
        let t = self.now + (len as u64 / self.cfg.bytes_per_ms).max(1);
        self.at(t, Ev::Produce { conn });
        Ok(())
    }

    pub fn on_ack(&mut self, conn: u64, point: u64) {
        match self.src.attempt {
            Attempt::Sending {
                conn: c,
                cycle,
                snap,
                ..
            }
            | Attempt::Awaiting {
                conn: c,
                cycle,
                snap,
            } if c == conn && snap == point && self.src.up => {
                self.log(|| format!("source: cycle {cycle} acknowledged"));
                self.finish(cycle, snap);
            }
            _ => {}
        }
    }

    pub fn on_refused(&mut self, conn: u64, why: String) {
        if self.src.up && self.src.conn() == Some(conn) {
            self.fail(format!("refused: {why}"));
        }
    }

    pub fn timeout(&mut self, step: u64) {
        if step != self.src.step || matches!(self.src.attempt, Attempt::Idle) {
            return;
        }
        if self.cfg.bug == Bug::AckOnTimeout
            && let Attempt::Awaiting { cycle, snap, .. } = self.src.attempt
        {
            self.finish(cycle, snap);
            return;
        }
        self.fail("timed out".into());
    }

    /// The store's `finish_cycle`: the point is the base, the old base goes.
    fn finish(&mut self, cycle: u64, snap: u64) {
        if self.src.pending != Some((cycle, snap)) {
            return;
        }
        if let Some(old) = self.src.base.filter(|b| *b != snap) {
            self.src.snaps.remove(&old);
        }
        self.src.base = Some(snap);
        self.src.pending = None;
        self.src.step += 1;
        self.src.attempt = Attempt::Idle;
        self.src.failures = 0;
        self.schedule_tick();
    }

    fn fail(&mut self, why: String) {
        self.log(|| format!("source: the attempt failed: {why}"));
        if let Some(conn) = self.src.conn() {
            let after = self.rng.range(0, 2_000);
            self.break_conn(conn, after);
        }
        self.src.step += 1;
        self.src.attempt = Attempt::Idle;
        self.src.failures += 1;
        self.schedule_tick();
    }

    /// A crash: the attempt is gone, its connection too (the replica hears
    /// of it when the host is back or a keepalive fires).
    pub fn source_crash(&mut self, lose_pending: bool) {
        if !self.src.up {
            return;
        }
        self.stats.source_crashes += 1;
        self.log(|| {
            format!(
                "FAULT source crashes{}",
                if lose_pending {
                    " (and will find its pending snapshot gone)"
                } else {
                    ""
                }
            )
        });
        if let Some(conn) = self.src.conn() {
            let after = self.rng.range(0, STALL);
            self.break_conn(conn, after);
        }
        self.src.up = false;
        self.src.step += 1;
        self.src.attempt = Attempt::Idle;
        self.src.lose_pending = lose_pending;
        let t = self.now + self.rng.range(500, 20_000);
        self.at(t, Ev::SourceUp);
    }

    pub fn source_up(&mut self) {
        self.src.up = true;
        self.src.failures = 0;
        self.src.last_attempt = None;
        if std::mem::take(&mut self.src.lose_pending)
            && let Some((_, snap)) = self.src.pending
            && self.faults
            // Only when the replica cannot hold, nor still make, that point:
            // else the source's base is behind the replica's latest point,
            // a divergence the protocol refuses by design (a resync).
            && !self.rep.points.iter().any(|p| p.source_id == snap)
            && self.rep.conns.is_empty()
        {
            self.stats.lost_pending += 1;
            self.log(|| format!("source: up, its pending snapshot {snap} is gone"));
            self.src.snaps.remove(&snap);
        } else {
            self.log(|| "source: up".into());
        }
        self.at(self.now, Ev::Tick);
    }
}
