//! The decisions of the replication protocol, with no I/O: what the source
//! does with the state the replica reports, and what the replica does with
//! the header of a cycle it is offered. The daemon and the simulation
//! (`tests/simulation.rs`) call these same functions.
//!
//! ```text
//! source: pending (cycle, point), base      replica: latest point, partial
//!   ── what do you hold? ──────────────────▶
//!   ◀───────────────── latest, partial (cycle, point, resume) ──
//!   source_step:
//!     latest == point        → Acknowledged (its answer was lost)
//!     latest != base         → Diverged
//!     otherwise              → Send { resume: the partial's, if it is
//!                                     this very cycle and point }
//!   ── header (cycle, base, point, resume), runs…, end ──▶
//!                                           replica_step:
//!                                             base != latest  → refuse
//!                                             partial is this cycle,
//!                                               resume == held
//!                                               and is some   → Continue
//!                                             no resume       → Fresh
//!                                               (discard the heads first
//!                                               if there is a partial)
//!                                             otherwise       → refuse
//! ```
//!
//! A replica may hold several connections of a group at once (an old one
//! the source gave up on is still draining its buffered bytes). The newest
//! accepted header wins: a [`Fence`] per group hands each accepted header a
//! [`Ticket`], and a receiver writes, checkpoints and commits only while its
//! ticket is the latest, so a stuck receiver of an old cycle cannot write
//! into the heads of a newer one, nor record progress that a newer one
//! discarded.
//!
//! Invariants: the source resumes only the replica's partial of this very
//! cycle and point; the replica continues a cycle only where it durably
//! stopped (the header must repeat its resume point exactly), writes a
//! fresh cycle only over heads that hold nothing but its latest point, and
//! writes only through the latest accepted header. A partial cycle without
//! a resume point is never continued but taken afresh, discarding the heads
//! again: the replica records a fresh cycle before it discards the heads,
//! so a crash between the two leaves exactly that record, and the next
//! attempt must not trust those heads. Together with the decoder's checks
//! this keeps what the replica applied a prefix of one cycle on top of the
//! point both sides hold.
//!
//! Must not: do I/O or read a clock; the caller reads the records and
//! carries out the step (the replica's in the same catalog transaction that
//! read them, and under its group's fence).

use crate::stream::{CycleHeader, CycleId, ResumePoint, SnapshotId};

/// One cycle as both sides name it: the source's cycle number and the
/// snapshot (the source's id) it makes into a point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CycleRef {
    pub cycle: CycleId,
    pub point: SnapshotId,
}

/// A cycle the replica is receiving, and how far it durably got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partial {
    pub cycle: CycleRef,
    /// The resume point of the last checkpoint (none: nothing durable yet).
    pub resume: Option<ResumePoint>,
}

/// What the replica holds of a group, as it reports it to the source and as
/// it decides on a header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaRecord {
    /// The source's snapshot id of the latest recovery point.
    pub latest: Option<SnapshotId>,
    pub partial: Option<Partial>,
}

/// What the source does with its pending cycle, given the replica's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceStep {
    /// The replica already made the cycle's point; its answer was lost.
    /// Record the acknowledgement and send nothing.
    Acknowledged,
    /// The replica's latest point is not the source's base: sending would
    /// build on the wrong point. Refuse (a resync is needed).
    Diverged {
        latest: Option<SnapshotId>,
        base: Option<SnapshotId>,
    },
    /// Send the cycle, from `resume` (none: from its start).
    Send { resume: Option<ResumePoint> },
}

/// The source's decision for its pending `cycle` on top of `base` (none:
/// the initial copy), given what the replica reported.
pub fn source_step(
    cycle: CycleRef,
    base: Option<SnapshotId>,
    replica: &ReplicaRecord,
) -> SourceStep {
    if replica.latest == Some(cycle.point) {
        return SourceStep::Acknowledged;
    }
    if replica.latest != base {
        return SourceStep::Diverged {
            latest: replica.latest,
            base,
        };
    }
    let resume = replica
        .partial
        .filter(|p| p.cycle == cycle)
        .and_then(|p| p.resume);
    SourceStep::Send { resume }
}

/// What the replica does with a header it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaStep {
    /// A cycle the replica holds nothing durable of: record it as the
    /// partial cycle before writing any block. With `discard`, the heads may
    /// hold blocks beyond the latest point (of an abandoned cycle, or of this
    /// one before a crash that may also have cut a discard short): rebase
    /// them on the latest point before writing.
    Fresh { discard: bool },
    /// The partial cycle goes on from `from`, where it durably stopped.
    Continue { from: ResumePoint },
}

/// Why the replica refuses a header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the cycle is based on {} but the latest recovery point here is {}",
        point_text(.base, "nothing (an initial copy)"),
        point_text(.latest, "none")
    )]
    BaseMismatch {
        base: Option<SnapshotId>,
        latest: Option<SnapshotId>,
    },
    #[error("cycle {} resumes at {stated:?} but this replica holds {held:?}", .cycle.0)]
    ResumeMismatch {
        cycle: CycleId,
        stated: Box<Option<ResumePoint>>,
        held: Box<Option<ResumePoint>>,
    },
}

fn point_text(p: &Option<SnapshotId>, none: &str) -> String {
    p.map_or_else(|| none.to_owned(), |s| format!("point {}", s.0))
}

/// The replica's decision on `header`, given its record.
pub fn replica_step(header: &CycleHeader, record: &ReplicaRecord) -> Result<ReplicaStep, Refusal> {
    if record.latest != header.base {
        return Err(Refusal::BaseMismatch {
            base: header.base,
            latest: record.latest,
        });
    }
    let this = CycleRef {
        cycle: header.cycle,
        point: header.point.snapshot,
    };
    let held = match record.partial {
        Some(p) if p.cycle == this => p.resume,
        _ => None,
    };
    match (header.resume, held) {
        // From its first run: whatever a partial cycle wrote (this one's,
        // when a sender lost track or a seed is applied again) is dropped
        // and written anew.
        (None, _) => {
            return Ok(ReplicaStep::Fresh {
                discard: record.partial.is_some(),
            });
        }
        (Some(stated), Some(held)) if stated == held => {
            return Ok(ReplicaStep::Continue { from: held });
        }
        _ => {}
    }
    Err(Refusal::ResumeMismatch {
        cycle: header.cycle,
        stated: Box::new(header.resume),
        held: Box::new(held),
    })
}

/// Which receiver of a group may act: the one that took the latest header.
/// The replica keeps one per group in memory (a restart ends every receiver
/// with it) and holds it locked while it accepts a header and while a
/// receiver writes, checkpoints or commits, so nothing of a superseded
/// receiver lands after a newer one began.
#[derive(Debug, Default)]
pub struct Fence {
    latest: u64,
}

/// A receiver's right to act on its group, from [`Fence::admit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket(u64);

/// A newer connection took over the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a newer connection took over this group's cycle")]
pub struct Superseded;

impl Fence {
    /// A header was accepted: its receiver may write, older ones no more.
    pub fn admit(&mut self) -> Ticket {
        self.latest += 1;
        Ticket(self.latest)
    }

    /// Whether the receiver holding `ticket` may still write, checkpoint or
    /// commit.
    pub fn check(&self, ticket: Ticket) -> Result<(), Superseded> {
        if ticket.0 == self.latest {
            Ok(())
        } else {
            Err(Superseded)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{BlockIndex, Compression, Point, Position, SlotIndex};

    fn rp(runs: u64) -> ResumePoint {
        ResumePoint {
            runs,
            blocks: runs * 2,
            chain: [runs as u8; 32],
            next: Position {
                slot: SlotIndex(0),
                block: BlockIndex(runs * 2),
            },
        }
    }

    fn cref(cycle: u64, point: u64) -> CycleRef {
        CycleRef {
            cycle: CycleId(cycle),
            point: SnapshotId(point),
        }
    }

    fn header(base: Option<u64>, cycle: u64, point: u64, resume: Option<u64>) -> CycleHeader {
        CycleHeader {
            group: "g".into(),
            cycle: CycleId(cycle),
            base: base.map(SnapshotId),
            point: Point {
                snapshot: SnapshotId(point),
                name: format!("repl-{cycle}"),
                created: 0,
            },
            volumes: vec![],
            compression: Compression::None,
            resume: resume.map(rp),
        }
    }

    fn record(latest: Option<u64>, partial: Option<(u64, u64, Option<u64>)>) -> ReplicaRecord {
        ReplicaRecord {
            latest: latest.map(SnapshotId),
            partial: partial.map(|(c, p, r)| Partial {
                cycle: cref(c, p),
                resume: r.map(rp),
            }),
        }
    }

    #[test]
    fn the_source_records_a_lost_answer_refuses_a_diverged_replica_and_resumes_only_its_cycle() {
        let base = Some(SnapshotId(10));
        let c = cref(4, 20);
        assert_eq!(
            source_step(c, base, &record(Some(20), None)),
            SourceStep::Acknowledged
        );
        assert_eq!(
            source_step(c, base, &record(Some(7), None)),
            SourceStep::Diverged {
                latest: Some(SnapshotId(7)),
                base
            }
        );
        assert_eq!(
            source_step(c, None, &record(Some(10), None)),
            SourceStep::Diverged {
                latest: base,
                base: None
            }
        );
        assert_eq!(
            source_step(c, base, &record(Some(10), Some((4, 20, Some(3))))),
            SourceStep::Send {
                resume: Some(rp(3))
            }
        );
        // another cycle's partial, or this cycle number for another point
        for other in [(3, 19, Some(3)), (4, 21, Some(3))] {
            assert_eq!(
                source_step(c, base, &record(Some(10), Some(other))),
                SourceStep::Send { resume: None }
            );
        }
        assert_eq!(
            source_step(c, None, &record(None, Some((4, 20, None)))),
            SourceStep::Send { resume: None }
        );
    }

    #[test]
    fn the_replica_refuses_another_base_and_a_resume_it_does_not_hold() {
        let r = record(Some(10), Some((4, 20, Some(3))));
        assert_eq!(
            replica_step(&header(Some(9), 4, 20, Some(3)), &r),
            Err(Refusal::BaseMismatch {
                base: Some(SnapshotId(9)),
                latest: Some(SnapshotId(10))
            })
        );
        assert_eq!(
            replica_step(&header(Some(10), 4, 20, Some(3)), &r),
            Ok(ReplicaStep::Continue { from: rp(3) })
        );
        for stated in [Some(2), Some(4)] {
            assert_eq!(
                replica_step(&header(Some(10), 4, 20, stated), &r),
                Err(Refusal::ResumeMismatch {
                    cycle: CycleId(4),
                    stated: Box::new(stated.map(rp)),
                    held: Box::new(Some(rp(3)))
                })
            );
        }
        // the same cycle from its start: taken fresh, its partial dropped
        assert_eq!(
            replica_step(&header(Some(10), 4, 20, None), &r),
            Ok(ReplicaStep::Fresh { discard: true })
        );
        // a resume of a cycle it holds nothing of
        assert_eq!(
            replica_step(&header(Some(10), 5, 21, Some(3)), &r),
            Err(Refusal::ResumeMismatch {
                cycle: CycleId(5),
                stated: Box::new(Some(rp(3))),
                held: Box::new(None)
            })
        );
    }

    #[test]
    fn only_the_latest_admitted_receiver_writes() {
        let mut fence = Fence::default();
        let old = fence.admit();
        assert_eq!(fence.check(old), Ok(()));
        let new = fence.admit();
        assert_eq!(fence.check(old), Err(Superseded));
        assert_eq!(fence.check(new), Ok(()));
    }

    #[test]
    fn the_replica_takes_a_fresh_cycle_discarding_an_abandoned_one() {
        assert_eq!(
            replica_step(&header(None, 1, 5, None), &record(None, None)),
            Ok(ReplicaStep::Fresh { discard: false })
        );
        assert_eq!(
            replica_step(
                &header(Some(10), 5, 21, None),
                &record(Some(10), Some((4, 20, Some(3))))
            ),
            Ok(ReplicaStep::Fresh { discard: true })
        );
        // the same cycle number for another point is another cycle
        assert_eq!(
            replica_step(
                &header(Some(10), 4, 22, None),
                &record(Some(10), Some((4, 20, None)))
            ),
            Ok(ReplicaStep::Fresh { discard: true })
        );
        // this cycle, nothing durable yet: taken afresh, the heads discarded
        // again (a crash may have cut the first discard short)
        assert_eq!(
            replica_step(
                &header(Some(10), 4, 20, None),
                &record(Some(10), Some((4, 20, None)))
            ),
            Ok(ReplicaStep::Fresh { discard: true })
        );
        assert_eq!(
            Refusal::BaseMismatch {
                base: Some(SnapshotId(9)),
                latest: None
            }
            .to_string(),
            "the cycle is based on point 9 but the latest recovery point here is none"
        );
    }
}
