//! The replica: the partner routes of `ferryd::replication` (`receive`,
//! the state query) with the store's `replica_begin`, `discard_heads`,
//! `replica_checkpoint` and `replica_commit`, step for step.
//!
//! Durable: the recovery points (immutable copies), the partial cycle and
//! its resume point (as the catalog's text), the heads' flushed blocks.
//! Volatile: unflushed writes (a crash keeps a random part of them), the
//! connections and their decoders. Every disk or catalog step goes through
//! [`Replica::step`], where an armed crash strikes.

use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use ferry_repl::cycle::{CycleReceiver, Received, ReplicaSink, resume_from_text, resume_to_text};
use ferry_repl::protocol::{self, CycleRef, Fence, ReplicaRecord, ReplicaStep, Ticket};
use ferry_repl::stream::{CycleHeader, CycleId, SnapshotId};

use super::{BS, Block, Bug, Ev, GROUP, Ms, Vols, World, zero};

/// The catalog's partial cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialRec {
    pub cycle: u64,
    pub source_point: u64,
    pub resume: Option<String>,
}

impl PartialRec {
    /// As the daemon reads it (`partial_of`): a resume text that does not
    /// parse is no resume point.
    pub fn to_protocol(&self) -> protocol::Partial {
        protocol::Partial {
            cycle: CycleRef {
                cycle: CycleId(self.cycle),
                point: SnapshotId(self.source_point),
            },
            resume: self.resume.as_deref().and_then(resume_from_text),
        }
    }
}

pub struct RecPoint {
    pub name: String,
    pub source_id: u64,
    pub vols: Vols,
}

enum Item {
    Data(Vec<u8>),
    Broken,
}

/// One connection's `receive`.
pub struct Conn {
    rcv: CycleReceiver,
    inbox: VecDeque<Item>,
    /// The accepted header, and the right to write it took.
    cycle: Option<(CycleHeader, Ticket)>,
    /// A `Work` event is queued.
    scheduled: bool,
    /// This connection's thread is stuck until then.
    stuck_until: Ms,
}

#[derive(Default)]
pub struct Replica {
    /// The replica group exists.
    exists: bool,
    pub points: Vec<RecPoint>,
    pub partial: Option<PartialRec>,
    /// The heads' flushed blocks.
    heads: Vec<Vec<Block>>,
    unflushed: BTreeMap<(usize, u64), Block>,
    pub up: bool,
    pub conns: BTreeMap<u64, Conn>,
    /// Disk steps wait until then.
    pub stall_until: Ms,
    /// An armed crash: strikes at this many disk steps from now.
    pub crash_in: Option<u32>,
    /// An armed write error: the write this many writes from now fails
    /// (the daemon goes on; the connection ends with an error).
    pub fail_write_in: Option<u32>,
    crashed: bool,
    /// Which connection may write (in memory: a crash ends them all).
    fence: Fence,
    /// Writes by connections whose cycle is not the partial one.
    stale_writes: u64,
}

/// Why a connection's work stops.
enum Stop {
    Crash,
    /// The answer the connection gets.
    Refuse(String),
}

enum Next {
    /// More to do, after the disk time of what was done.
    Again,
    /// Waiting for bytes.
    Wait,
    /// The connection is over.
    Done,
}

impl Replica {
    pub fn new() -> Replica {
        Replica {
            up: true,
            ..Replica::default()
        }
    }

    /// One disk or catalog step; an armed crash strikes here.
    fn step(&mut self) -> Result<(), Stop> {
        if self.crashed {
            return Err(Stop::Crash);
        }
        match self.crash_in {
            Some(0) => {
                self.crashed = true;
                Err(Stop::Crash)
            }
            Some(n) => {
                self.crash_in = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn flush(&mut self) -> Result<(), Stop> {
        self.step()?;
        for ((slot, block), data) in std::mem::take(&mut self.unflushed) {
            self.heads[slot][block as usize] = data;
        }
        Ok(())
    }

    fn record(&self) -> ReplicaRecord {
        ReplicaRecord {
            latest: self.points.last().map(|p| SnapshotId(p.source_id)),
            partial: self.partial.as_ref().map(PartialRec::to_protocol),
        }
    }
}

/// Writes runs into the heads, unflushed, while the connection's ticket is
/// the latest (`VolumeSink`).
struct Heads<'a> {
    rep: &'a mut Replica,
    cycle: u64,
    ticket: Ticket,
    fenced: bool,
}

impl Heads<'_> {
    fn put(
        &mut self,
        slot: usize,
        first: u64,
        blocks: u64,
        data: Option<&[u8]>,
    ) -> Result<(), String> {
        if self.fenced {
            self.rep
                .fence
                .check(self.ticket)
                .map_err(|e| e.to_string())?;
        }
        self.rep.step().map_err(|_| "crashed")?;
        match self.rep.fail_write_in {
            Some(0) => {
                self.rep.fail_write_in = None;
                return Err("no space left on device".into());
            }
            Some(n) => self.rep.fail_write_in = Some(n - 1),
            None => {}
        }
        let size = self.rep.heads.get(slot).ok_or("no such slot")?.len() as u64;
        if first + blocks > size {
            return Err("beyond the volume".into());
        }
        if self.rep.partial.as_ref().map(|p| p.cycle) != Some(self.cycle) {
            self.rep.stale_writes += 1;
        }
        for i in 0..blocks {
            let block = match data {
                Some(d) => Rc::from(&d[i as usize * BS..(i as usize + 1) * BS]),
                None => zero(),
            };
            self.rep.unflushed.insert((slot, first + i), block);
        }
        Ok(())
    }
}

impl ReplicaSink for Heads<'_> {
    fn write(&mut self, slot: usize, first: u64, data: &[u8]) -> Result<(), String> {
        self.put(slot, first, (data.len() / BS) as u64, Some(data))
    }

    fn zero(&mut self, slot: usize, first: u64, blocks: u64) -> Result<(), String> {
        self.put(slot, first, blocks, None)
    }
}

/// Nothing to write to before the header (`NoSink`).
struct NoSink;

impl ReplicaSink for NoSink {
    fn write(&mut self, _: usize, _: u64, _: &[u8]) -> Result<(), String> {
        Err("a run before the header".into())
    }

    fn zero(&mut self, _: usize, _: u64, _: u64) -> Result<(), String> {
        Err("a run before the header".into())
    }
}

impl World {
    pub fn on_query(&mut self, req: u64) {
        if !self.rep.up {
            return;
        }
        let latest = self.rep.points.last().map(|p| p.source_id);
        let partial = self.rep.partial.clone();
        self.send_msg(Ev::State {
            req,
            latest,
            partial,
        });
    }

    pub fn on_piece(&mut self, conn: u64, bytes: Vec<u8>) {
        if !self.rep.up {
            return;
        }
        let c = self.rep.conns.entry(conn).or_insert_with(|| Conn {
            rcv: CycleReceiver::new(),
            inbox: VecDeque::new(),
            cycle: None,
            scheduled: false,
            stuck_until: 0,
        });
        c.inbox.push_back(Item::Data(bytes));
        self.wake(conn);
    }

    /// A fault: one connection's receiving thread gets stuck (the others
    /// go on).
    pub fn stall_a_receiver(&mut self) {
        let ids: Vec<u64> = self.rep.conns.keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        let conn = *self.rng.pick(&ids);
        let d = self.rng.range(1_000, 90_000);
        self.stats.stalls += 1;
        self.log(|| format!("FAULT the receiver of conn {conn} is stuck for {d} ms"));
        if let Some(c) = self.rep.conns.get_mut(&conn) {
            c.stuck_until = self.now + d;
        }
    }

    pub fn on_broken(&mut self, conn: u64) {
        if let Some(c) = self.rep.conns.get_mut(&conn) {
            c.inbox.push_back(Item::Broken);
            self.wake(conn);
        }
    }

    fn wake(&mut self, conn: u64) {
        let Some(c) = self.rep.conns.get_mut(&conn) else {
            return;
        };
        if !c.scheduled {
            c.scheduled = true;
            let t = (self.now + 1).max(self.rep.stall_until);
            self.at(t, Ev::Work { conn });
        }
    }

    /// One turn of a connection's `receive` loop.
    pub fn work(&mut self, conn: u64) -> Result<(), String> {
        if !self.rep.up {
            return Ok(());
        }
        let Some(stuck) = self.rep.conns.get(&conn).map(|c| c.stuck_until) else {
            return Ok(());
        };
        let until = self.rep.stall_until.max(stuck);
        if self.now < until {
            self.at(until, Ev::Work { conn });
            return Ok(());
        }
        let Some(mut c) = self.rep.conns.remove(&conn) else {
            return Ok(());
        };
        c.scheduled = false;
        let before = c.rcv.bytes_applied;
        let stale = self.rep.stale_writes;
        let next = self.receive(conn, &mut c);
        let stale = self.rep.stale_writes - stale;
        if stale > 0 {
            self.stats.stale_writes += stale;
            self.log(|| {
                format!(
                    "replica: conn {conn} wrote {stale} runs of a cycle that is not the partial one"
                )
            });
        }
        match next {
            Ok(Next::Again) => {
                let blocks = (c.rcv.bytes_applied - before) / BS as u64;
                c.scheduled = true;
                let t = self.now + 1 + blocks / 16;
                self.at(t, Ev::Work { conn });
                self.rep.conns.insert(conn, c);
            }
            Ok(Next::Wait) => {
                self.rep.conns.insert(conn, c);
            }
            Ok(Next::Done) => {}
            Err(Stop::Crash) => {
                self.stats.torn_crashes += 1;
                self.replica_crash();
            }
            Err(Stop::Refuse(why)) => {
                self.stats.refusals += 1;
                self.log(|| format!("replica: conn {conn} refused: {why}"));
                self.send_msg(Ev::Refused { conn, why });
            }
        }
        Ok(())
    }

    fn receive(&mut self, conn: u64, c: &mut Conn) -> Result<Next, Stop> {
        let budget = self.cfg.checkpoint_blocks;
        loop {
            let polled = match &c.cycle {
                None => c.rcv.poll(&mut NoSink, budget),
                Some((h, ticket)) => c.rcv.poll(
                    &mut Heads {
                        cycle: h.cycle.0,
                        ticket: *ticket,
                        fenced: self.cfg.bug != Bug::NoFence,
                        rep: &mut self.rep,
                    },
                    budget,
                ),
            };
            match polled {
                Err(e) => {
                    if self.rep.crashed {
                        return Err(Stop::Crash);
                    }
                    self.checkpoint(c)?;
                    return Err(Stop::Refuse(format!("the stream was refused: {e}")));
                }
                Ok(Received::Header(h)) => {
                    if h.group != GROUP {
                        return Err(Stop::Refuse(format!("the stream is for group {}", h.group)));
                    }
                    self.begin(&h)?;
                    self.log(|| {
                        format!(
                            "replica: conn {conn} takes cycle {} (resume {:?})",
                            h.cycle.0,
                            h.resume.map(|r| r.runs)
                        )
                    });
                    c.rcv.accept_header();
                    c.cycle = Some((h, self.rep.fence.admit()));
                    return Ok(Next::Again);
                }
                Ok(Received::Applied { since_checkpoint }) => {
                    if since_checkpoint >= budget {
                        self.checkpoint(c)?;
                    }
                    return Ok(Next::Again);
                }
                Ok(Received::NeedMore) => match c.inbox.pop_front() {
                    Some(Item::Data(b)) => c.rcv.push(&b),
                    Some(Item::Broken) => {
                        self.log(|| format!("replica: conn {conn} broke off"));
                        if self.cfg.bug == Bug::PointFromBrokenStream && c.cycle.is_some() {
                            self.commit(c)?;
                            return Ok(Next::Done);
                        }
                        self.checkpoint(c)?;
                        return Ok(Next::Done);
                    }
                    None => return Ok(Next::Wait),
                },
                Ok(Received::End(_)) => {
                    let point = self.commit(c)?;
                    self.send_msg(Ev::Ack { conn, point });
                    return Ok(Next::Done);
                }
            }
        }
    }

    /// `replica_begin` with `protocol::replica_step` deciding inside it.
    fn begin(&mut self, h: &CycleHeader) -> Result<(), Stop> {
        let bug = self.cfg.bug;
        let decide = |record: &ReplicaRecord| {
            protocol::replica_step(h, record).map_err(|r| Stop::Refuse(r.to_string()))
        };
        if !self.rep.exists {
            decide(&ReplicaRecord::default())?;
            self.rep.step()?;
            self.rep.exists = true;
            self.rep.heads = h
                .volumes
                .iter()
                .map(|v| vec![zero(); (v.size / BS as u64) as usize])
                .collect();
        }
        let cycle = h.cycle.0;
        let source_point = h.point.snapshot.0;
        match decide(&self.rep.record())? {
            ReplicaStep::Continue { .. } => match &self.rep.partial {
                Some(p) if p.cycle == cycle && p.source_point == source_point => {}
                _ => {
                    return Err(Stop::Refuse(format!(
                        "cycle {cycle} is not the one being received"
                    )));
                }
            },
            ReplicaStep::Fresh { discard } => {
                self.rep.step()?;
                self.rep.partial = Some(PartialRec {
                    cycle,
                    source_point,
                    resume: None,
                });
                if discard && bug != Bug::KeepAbandonedHeads {
                    self.discard()?;
                }
            }
        }
        for (slot, v) in h.volumes.iter().enumerate() {
            let size = (v.size / BS as u64) as usize;
            if self.rep.heads.get(slot).is_none_or(|h| h.len() < size) {
                self.rep.step()?;
                if slot >= self.rep.heads.len() {
                    self.rep.heads.push(Vec::new());
                }
                self.rep.heads[slot].resize(size, zero());
            }
        }
        Ok(())
    }

    /// `discard_heads`: rebase the heads on the latest point in one
    /// transaction, or, with no point yet, write zeros over them (unflushed).
    fn discard(&mut self) -> Result<(), Stop> {
        self.stats.discards += 1;
        self.log(|| "replica: discarding an abandoned cycle's blocks".into());
        match self.rep.points.last() {
            Some(p) => {
                let vols = p.vols.clone();
                self.rep.step()?;
                self.rep.heads = vols.to_vec();
                self.rep.unflushed.clear();
            }
            None => {
                for slot in 0..self.rep.heads.len() {
                    self.rep.step()?;
                    for block in 0..self.rep.heads[slot].len() as u64 {
                        self.rep.unflushed.insert((slot, block), zero());
                    }
                }
            }
        }
        Ok(())
    }

    /// `replica_checkpoint`: flush the heads, then record how far the cycle
    /// got (if it is still the partial one).
    fn checkpoint(&mut self, c: &mut Conn) -> Result<(), Stop> {
        let (Some((h, ticket)), Some(rp)) = (&c.cycle, c.rcv.resume_point()) else {
            return Ok(());
        };
        if self.cfg.bug != Bug::NoFence && self.rep.fence.check(*ticket).is_err() {
            // superseded: records nothing
            return Ok(());
        }
        let cycle = h.cycle.0;
        let record = |rep: &mut Replica| {
            rep.step()?;
            match &mut rep.partial {
                Some(p) if p.cycle == cycle => {
                    p.resume = Some(resume_to_text(&rp));
                    Ok(())
                }
                _ => Err(Stop::Refuse(format!(
                    "cycle {cycle} is not the one being received"
                ))),
            }
        };
        if self.cfg.bug == Bug::CheckpointBeforeFlush {
            record(&mut self.rep)?;
            self.rep.flush()?;
        } else {
            self.rep.flush()?;
            record(&mut self.rep)?;
        }
        self.stats.checkpoints += 1;
        self.log(|| format!("replica: checkpoint of cycle {cycle} at run {}", rp.runs));
        c.rcv.checkpointed();
        Ok(())
    }

    /// `replica_commit`: flush, then seal the heads into the point in the
    /// transaction that records it. Returns the source's snapshot id.
    fn commit(&mut self, c: &Conn) -> Result<u64, Stop> {
        let Some((h, ticket)) = &c.cycle else {
            return Err(Stop::Refuse("an end record before the header".into()));
        };
        if self.cfg.bug != Bug::NoFence {
            self.rep
                .fence
                .check(*ticket)
                .map_err(|e| Stop::Refuse(e.to_string()))?;
        }
        let cycle = h.cycle.0;
        self.rep.flush()?;
        self.rep.step()?;
        let Some(p) = self.rep.partial.take_if(|p| p.cycle == cycle) else {
            return Err(Stop::Refuse(format!(
                "cycle {cycle} is not the one being received"
            )));
        };
        self.rep.points.push(RecPoint {
            name: h.point.name.clone(),
            source_id: p.source_point,
            vols: Rc::new(self.rep.heads.clone()),
        });
        self.stats.points += 1;
        self.log(|| {
            format!(
                "replica: point {} made (snapshot {})",
                h.point.name, p.source_point
            )
        });
        Ok(p.source_point)
    }

    /// A crash: connections and decoders are gone, a random part of the
    /// unflushed writes reached the disk, the rest is lost.
    pub fn replica_crash(&mut self) {
        if !self.rep.up {
            return;
        }
        self.stats.replica_crashes += 1;
        let unflushed = std::mem::take(&mut self.rep.unflushed);
        let mut kept = 0;
        for ((slot, block), data) in unflushed {
            if self.rng.percent(50) {
                kept += 1;
                self.rep.heads[slot][block as usize] = data;
            }
        }
        self.log(|| format!("FAULT replica crashes ({kept} unflushed blocks reached the disk)"));
        // Every connection to it dies with it.
        self.rep.conns.clear();
        let open: Vec<u64> = self
            .net
            .conns
            .iter()
            .filter(|(_, c)| !c.broken)
            .map(|(id, _)| *id)
            .collect();
        for conn in open {
            self.break_conn(conn, 0);
        }
        self.rep.up = false;
        self.rep.crashed = false;
        self.rep.crash_in = None;
        self.rep.fail_write_in = None;
        self.rep.stall_until = 0;
        let t = self.now + self.rng.range(500, 20_000);
        self.at(t, Ev::ReplicaUp);
    }
}
