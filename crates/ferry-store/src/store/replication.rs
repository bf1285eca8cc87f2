//! Replication records and the catalog transactions of a cycle, on both
//! sides: the source takes a snapshot per cycle and remembers the one its
//! partner acknowledged last; the replica writes a cycle into its group's
//! heads (the staging layers) and makes the recovery point visible in the
//! same catalog transaction that records it.
//!
//! Invariants:
//! - source: a cycle's snapshot and the record naming it as pending are one
//!   transaction; the partner's acknowledgement moves it to `base` and
//!   deletes the old base in one transaction. So the base is always a
//!   snapshot the replica holds as a recovery point.
//! - replica: a partial cycle is recorded before any of its blocks is
//!   written, so heads holding blocks of another cycle are always known and
//!   discarded (rebased on the last recovery point) before a new cycle
//!   starts. The caller's decision takes a partial cycle without a resume
//!   point afresh, discarding again: a crash between recording a cycle and
//!   discarding the heads is healed by the next attempt. A recovery point
//!   is sealed from the heads only after the whole cycle arrived and
//!   verified (the caller's duty: it calls [`Store::replica_commit`] after
//!   the stream's end record checked).
//!
//! Must not: speak the stream format or the network (ferry-repl and the
//! daemon do); interpret a resume point (it is kept as the caller's text).

use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::{DiffEnd, SnapshotInfo, Store, Target, now, snapshot_info};
use crate::catalog::{
    Change, GroupRec, OwnerId, PendingCycle, ReplicationRec, ReplicationRole, SnapshotRec,
};
use crate::error::{Result, StoreError};
use crate::types::{SnapshotId, SnapshotKind};
use crate::volume::VolumeHandle;

/// The tag a replica group carries: the partner it replicates from.
pub const REPLICA_TAG: &str = "ferry.replica-of";

/// How a group is replicated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicationSettings {
    /// Seconds between cycles.
    pub interval_secs: u64,
    /// Hourly recovery points kept besides the latest.
    pub keep_hourly: u32,
    /// Every N-th point application-consistent (0: never).
    pub app_every: u32,
    /// zstd on the wire.
    pub compression: bool,
    /// Bytes per second at most (none: no cap).
    pub bandwidth: Option<u64>,
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        ReplicationSettings {
            interval_secs: 300,
            keep_hourly: 24,
            app_every: 0,
            compression: true,
            bandwidth: None,
        }
    }
}

/// A cycle the replica is receiving, and how far it durably got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PartialCycle {
    pub cycle: u64,
    /// The source's snapshot id of the point the cycle makes.
    pub source_point: u64,
    /// The caller's resume point (none: nothing durable yet).
    pub resume: Option<String>,
}

/// A replication as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicationInfo {
    pub group: String,
    pub partner: String,
    /// `source` (this site sends) or `replica` (this site receives).
    pub role: String,
    pub settings: ReplicationSettings,
    pub paused: bool,
    /// Nanoseconds since the Unix epoch.
    pub created: u64,
    /// Source: the last acknowledged snapshot. Replica: the latest recovery point.
    pub last_point: Option<String>,
    /// When that point was taken at the source, nanoseconds since the Unix epoch.
    pub last_point_created: Option<u64>,
    /// Source: the cycle being sent.
    pub pending_cycle: Option<u64>,
    /// Replica: the cycle being received.
    pub partial: Option<PartialCycle>,
}

/// What a source cycle sends.
#[derive(Clone, Debug)]
pub struct CycleStart {
    pub cycle: u64,
    pub partner: String,
    pub settings: ReplicationSettings,
    /// The acknowledged point the replica holds; none for the initial copy.
    pub base: Option<SnapshotInfo>,
    /// The cycle's snapshot.
    pub point: SnapshotInfo,
    /// Per slot, the blocks to send.
    pub changed: BTreeMap<String, RoaringBitmap>,
    /// The cycle was started before (its snapshot existed): resume it.
    pub resumed: bool,
}

/// A recovery point on the replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecoveryPoint {
    pub name: String,
    /// When the source took it, nanoseconds since the Unix epoch.
    pub created: u64,
    /// When it became visible here.
    pub received: u64,
    /// `crash` or `app`.
    pub kind: SnapshotKind,
    /// The snapshot's id at the source.
    pub source_id: u64,
}

/// How the replica takes a cycle it is offered, as the caller decided from
/// its record ([`Store::replica_begin`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaStart {
    /// Record the cycle as the partial one before any block of it is
    /// written; with `discard`, first drop what the heads hold beyond the
    /// latest point (an abandoned partial cycle's blocks).
    Fresh { discard: bool },
    /// The partial cycle (this one) goes on where it durably stopped.
    Continue,
}

/// The replica's side of a cycle being received.
#[derive(Debug)]
pub struct ReplicaCycle {
    pub group: String,
    /// The group's volumes in the order of the slots given.
    pub volumes: Vec<VolumeHandle>,
    /// Where a resumed cycle continues (the caller's text).
    pub resume: Option<String>,
}

fn not_replicated(group: &str) -> StoreError {
    StoreError::not_found("replication", group)
}

fn info(state: &crate::catalog::CatalogState, r: &ReplicationRec) -> ReplicationInfo {
    let group = state
        .groups
        .get(&r.group)
        .map_or_else(String::new, |g| g.name.clone());
    let last = r.base.and_then(|id| state.snapshots.get(&id));
    ReplicationInfo {
        group,
        partner: r.partner.clone(),
        role: match r.role {
            ReplicationRole::Source => "source".into(),
            ReplicationRole::Replica => "replica".into(),
        },
        settings: r.settings.clone(),
        paused: r.paused,
        created: r.created,
        last_point: last.map(|s| s.name.clone()),
        last_point_created: last.map(|s| s.created),
        pending_cycle: r.pending.as_ref().map(|p| p.cycle),
        partial: r.partial.clone(),
    }
}

impl Store {
    fn replication_of(
        state: &crate::catalog::CatalogState,
        group: &GroupRec,
    ) -> Option<ReplicationRec> {
        state
            .replications
            .values()
            .find(|r| r.group == group.id)
            .cloned()
    }

    /// Starts replicating `group` to `partner`; the first cycle is the
    /// initial copy.
    pub fn enable_replication(
        &self,
        group: &str,
        partner: &str,
        settings: ReplicationSettings,
    ) -> Result<ReplicationInfo> {
        if settings.interval_secs == 0 {
            return Err(StoreError::Invalid(
                "the replication interval must be at least one second",
            ));
        }
        let mut cat = self.catalog();
        let g = self.group_rec(&cat.state, group)?;
        if !cat.state.partners.values().any(|p| p.name == partner) {
            return Err(StoreError::not_found("partner", partner));
        }
        if let Some(r) = Self::replication_of(&cat.state, &g) {
            return Err(StoreError::InUse {
                kind: "group",
                name: group.to_owned(),
                reason: format!(
                    "it is already replicated ({} of partner {:?}); disable that first",
                    if r.role == ReplicationRole::Source {
                        "source"
                    } else {
                        "replica"
                    },
                    r.partner
                ),
            });
        }
        let rec = ReplicationRec {
            id: cat.alloc_id(),
            group: g.id,
            partner: partner.to_owned(),
            role: ReplicationRole::Source,
            settings,
            paused: false,
            created: now(),
            next_cycle: 1,
            base: None,
            pending: None,
            partial: None,
            source_ids: BTreeMap::new(),
            source_created: BTreeMap::new(),
        };
        cat.commit(vec![Change::PutReplication(rec.clone())])?;
        Ok(info(&cat.state, &rec))
    }

    pub fn list_replications(&self) -> Vec<ReplicationInfo> {
        let cat = self.catalog();
        let mut out: Vec<_> = cat
            .state
            .replications
            .values()
            .map(|r| info(&cat.state, r))
            .collect();
        out.sort_by(|a, b| a.group.cmp(&b.group));
        out
    }

    pub fn replication(&self, group: &str) -> Result<ReplicationInfo> {
        let cat = self.catalog();
        let g = self.group_rec(&cat.state, group)?;
        let r = Self::replication_of(&cat.state, &g).ok_or_else(|| not_replicated(group))?;
        Ok(info(&cat.state, &r))
    }

    /// Pauses or resumes a replication (either side's record).
    pub fn set_replication_paused(&self, group: &str, paused: bool) -> Result<ReplicationInfo> {
        let mut cat = self.catalog();
        let g = self.group_rec(&cat.state, group)?;
        let mut r = Self::replication_of(&cat.state, &g).ok_or_else(|| not_replicated(group))?;
        r.paused = paused;
        cat.commit(vec![Change::PutReplication(r.clone())])?;
        Ok(info(&cat.state, &r))
    }

    /// Ends a replication. At the source the snapshots it kept for cycles
    /// are deleted; at a replica the recovery points stay, as snapshots of
    /// a group that is no longer a replica.
    pub fn disable_replication(&self, group: &str) -> Result<ReplicationInfo> {
        let out = {
            let mut cat = self.catalog();
            let g = self.group_rec(&cat.state, group)?;
            let r = Self::replication_of(&cat.state, &g).ok_or_else(|| not_replicated(group))?;
            let out = info(&cat.state, &r);
            let mut changes = vec![Change::DelReplication(r.id)];
            if r.role == ReplicationRole::Source {
                for id in r.base.iter().chain(r.pending.as_ref().map(|p| &p.snapshot)) {
                    if cat.state.snapshots.contains_key(id) {
                        changes.extend(cat.state.exports_of(|s| {
                        matches!(s, crate::catalog::ExportSource::Snapshot { id: e, .. } if e == id)
                    }));
                        changes.push(Change::DelSnapshot(*id));
                    }
                }
            } else {
                let mut g2 = g.clone();
                g2.tags.remove(REPLICA_TAG);
                changes.push(Change::PutGroup(g2));
            }
            cat.commit(changes)?;
            out
        };
        self.collect_garbage()?;
        Ok(out)
    }

    /// Whether a snapshot is kept by a replication (refused for deletion).
    pub(crate) fn replication_holds(state: &crate::catalog::CatalogState, id: SnapshotId) -> bool {
        state
            .replications
            .values()
            .any(|r| r.base == Some(id) || r.pending.as_ref().is_some_and(|p| p.snapshot == id))
    }

    // ----- the source -----

    /// Starts the next cycle of `group` (a new snapshot of kind `kind`), or
    /// returns the cycle already pending, to resume it.
    pub fn begin_cycle(&self, group: &str, kind: SnapshotKind) -> Result<CycleStart> {
        let (rec, point, resumed) = {
            let mut cat = self.catalog();
            let g = self.group_rec(&cat.state, group)?;
            let rec = Self::replication_of(&cat.state, &g)
                .filter(|r| r.role == ReplicationRole::Source)
                .ok_or_else(|| not_replicated(group))?;
            let pending = rec
                .pending
                .as_ref()
                .and_then(|p| cat.state.snapshots.get(&p.snapshot).cloned());
            match pending {
                Some(s) => (rec, s, true),
                None => {
                    let cycle = rec.next_cycle;
                    let mut name = format!("repl-{cycle}");
                    let mut n = 1;
                    while cat
                        .state
                        .snapshot_by_name(OwnerId::Group(g.id), &name)
                        .is_some()
                    {
                        n += 1;
                        name = format!("repl-{cycle}-{n}");
                    }
                    let mut next = rec.clone();
                    let members = g.slots.clone();
                    let snap = self.seal(
                        &mut cat,
                        OwnerId::Group(g.id),
                        &name,
                        kind,
                        &members,
                        &BTreeMap::new(),
                        |s| {
                            next.pending = Some(PendingCycle {
                                cycle,
                                snapshot: s.id,
                            });
                            next.next_cycle = cycle + 1;
                            vec![Change::PutReplication(next)]
                        },
                    )?;
                    let rec = Self::replication_of(&cat.state, &g).expect("just written");
                    (rec, snap, false)
                }
            }
        };
        let (base, point_info) = {
            let cat = self.catalog();
            (
                rec.base
                    .and_then(|id| cat.state.snapshots.get(&id))
                    .map(|s| snapshot_info(&cat.state, s)),
                snapshot_info(&cat.state, &point),
            )
        };
        let changed = match &base {
            Some(b) => match self.diff(
                Target::Group(group),
                &b.name,
                DiffEnd::Snapshot(&point.name),
            ) {
                Ok(d) => d,
                // A slot was rebased (a sync) since the base: send it whole.
                Err(StoreError::NotAncestor { .. }) => self.defined_blocks(&point)?,
                Err(e) => return Err(e),
            },
            None => self.defined_blocks(&point)?,
        };
        Ok(CycleStart {
            cycle: rec.pending.as_ref().map_or(0, |p| p.cycle),
            partner: rec.partner.clone(),
            settings: rec.settings.clone(),
            base,
            point: point_info,
            changed,
            resumed,
        })
    }

    /// Every block a snapshot's volumes define, per slot.
    fn defined_blocks(&self, snap: &SnapshotRec) -> Result<BTreeMap<String, RoaringBitmap>> {
        let lineages: Vec<(String, Vec<crate::types::LayerId>)> = {
            let cat = self.catalog();
            snap.members
                .iter()
                .map(|(slot, m)| (slot.clone(), cat.state.lineage(m.layer)))
                .collect()
        };
        let mut out = BTreeMap::new();
        for (slot, lineage) in lineages {
            let mut set = RoaringBitmap::new();
            for id in lineage {
                self.layer(id)?.with_map(|m| set |= &m.present);
            }
            out.insert(slot, set);
        }
        Ok(out)
    }

    /// The partner acknowledged `cycle`: its snapshot becomes the base and
    /// the old base is deleted, in one transaction.
    pub fn finish_cycle(&self, group: &str, cycle: u64) -> Result<()> {
        {
            let mut cat = self.catalog();
            let g = self.group_rec(&cat.state, group)?;
            let mut rec = Self::replication_of(&cat.state, &g)
                .filter(|r| r.role == ReplicationRole::Source)
                .ok_or_else(|| not_replicated(group))?;
            let Some(p) = rec.pending.clone().filter(|p| p.cycle == cycle) else {
                return Err(StoreError::Conflict(format!(
                    "cycle {cycle} of group {group} is not the pending one"
                )));
            };
            let mut changes = Vec::new();
            if let Some(old) = rec.base
                && old != p.snapshot
                && cat.state.snapshots.contains_key(&old)
            {
                changes.extend(cat.state.exports_of(
                    |s| matches!(s, crate::catalog::ExportSource::Snapshot { id, .. } if *id == old),
                ));
                changes.push(Change::DelSnapshot(old));
            }
            rec.base = Some(p.snapshot);
            rec.pending = None;
            changes.push(Change::PutReplication(rec));
            cat.commit(changes)?;
        }
        self.collect_garbage()
    }

    // ----- the replica -----

    /// The replica's state of `group`: the source id of its latest recovery
    /// point, and the cycle being received. `None` when there is no such
    /// group here yet.
    pub fn replica_state(
        &self,
        group: &str,
        partner: &str,
    ) -> Result<Option<(Option<u64>, Option<PartialCycle>)>> {
        let cat = self.catalog();
        let Some(g) = cat.state.group_by_name(group) else {
            return Ok(None);
        };
        let r = self.replica_rec(&cat.state, g, partner)?;
        let last = r.base.and_then(|b| r.source_ids.get(&b).copied());
        Ok(Some((last, r.partial)))
    }

    fn replica_rec(
        &self,
        state: &crate::catalog::CatalogState,
        g: &GroupRec,
        partner: &str,
    ) -> Result<ReplicationRec> {
        match Self::replication_of(state, g) {
            Some(r) if r.role == ReplicationRole::Replica && r.partner == partner => Ok(r),
            Some(r) if r.role == ReplicationRole::Replica => Err(StoreError::InUse {
                kind: "group",
                name: g.name.clone(),
                reason: format!("it is a replica of partner {:?}", r.partner),
            }),
            _ => Err(StoreError::InUse {
                kind: "group",
                name: g.name.clone(),
                reason: "a group of that name exists here and is not a replica".into(),
            }),
        }
    }

    /// Prepares the replica group for `cycle`, which makes the source's
    /// point `source_point`. `decide` says how to take it from the record
    /// (the source id of the latest recovery point, the partial cycle); it
    /// runs inside the transaction that carries its step out (the daemon
    /// passes `ferry_repl::protocol::replica_step`), and before the group is
    /// created at the first cycle, with an empty record. Discards the heads
    /// of an abandoned cycle; grows volumes the source grew.
    #[allow(clippy::too_many_arguments)]
    pub fn replica_begin<E: From<StoreError>>(
        &self,
        partner: &str,
        group: &str,
        cycle: u64,
        source_point: u64,
        slots: &[(String, u64)],
        settings: ReplicationSettings,
        decide: impl Fn(Option<u64>, Option<&PartialCycle>) -> std::result::Result<ReplicaStart, E>,
    ) -> std::result::Result<ReplicaCycle, E> {
        let exists = self.catalog().state.group_by_name(group).cloned();
        let g = match exists {
            Some(g) => g,
            None => {
                decide(None, None)?;
                self.create_replica_group(partner, group, slots, settings.clone())?
            }
        };
        let mut discard = false;
        let resume = {
            let mut cat = self.catalog();
            let mut r = self.replica_rec(&cat.state, &g, partner)?;
            let last = r.base.and_then(|b| r.source_ids.get(&b).copied());
            match (decide(last, r.partial.as_ref())?, &r.partial) {
                (ReplicaStart::Continue, Some(p))
                    if p.cycle == cycle && p.source_point == source_point =>
                {
                    p.resume.clone()
                }
                (ReplicaStart::Continue, _) => {
                    return Err(StoreError::Conflict(format!(
                        "cycle {cycle} of group {group} is not the one being received"
                    ))
                    .into());
                }
                (ReplicaStart::Fresh { discard: d }, _) => {
                    discard = d;
                    r.partial = Some(PartialCycle {
                        cycle,
                        source_point,
                        resume: None,
                    });
                    r.settings = settings;
                    cat.commit(vec![Change::PutReplication(r)])?;
                    None
                }
            }
        };
        if discard {
            self.discard_heads(group)?;
        }
        let mut volumes = Vec::new();
        for (slot, size) in slots {
            let vid = {
                let cat = self.catalog();
                let g = self.group_rec(&cat.state, group)?;
                g.slots.get(slot).copied()
            };
            let name = match vid {
                Some(id) => self.vol(id)?.name.clone(),
                None => {
                    let name = format!("{group}-{slot}");
                    self.create_volume(&name, *size)?;
                    self.set_slot(group, slot, &name)?;
                    name
                }
            };
            let v = self.volume(&name)?;
            if v.size() < *size {
                self.grow_volume(&name, *size)?;
            }
            volumes.push(self.volume(&name)?);
        }
        Ok(ReplicaCycle {
            group: group.to_owned(),
            volumes,
            resume,
        })
    }

    fn create_replica_group(
        &self,
        partner: &str,
        group: &str,
        slots: &[(String, u64)],
        settings: ReplicationSettings,
    ) -> Result<GroupRec> {
        let mut made = Vec::new();
        for (slot, size) in slots {
            let name = format!("{group}-{slot}");
            self.create_volume(&name, *size)?;
            made.push((slot.as_str(), name));
        }
        let pairs: Vec<(&str, &str)> = made.iter().map(|(s, n)| (*s, n.as_str())).collect();
        self.create_group(group, &pairs)?;
        let mut cat = self.catalog();
        let mut g = self.group_rec(&cat.state, group)?;
        g.tags.insert(REPLICA_TAG.into(), partner.into());
        let rec = ReplicationRec {
            id: cat.alloc_id(),
            group: g.id,
            partner: partner.to_owned(),
            role: ReplicationRole::Replica,
            settings,
            paused: false,
            created: now(),
            next_cycle: 0,
            base: None,
            pending: None,
            partial: None,
            source_ids: BTreeMap::new(),
            source_created: BTreeMap::new(),
        };
        cat.commit(vec![
            Change::PutGroup(g.clone()),
            Change::PutReplication(rec),
        ])?;
        Ok(g)
    }

    /// Drops whatever the replica's heads hold beyond the latest recovery
    /// point (an abandoned cycle's blocks).
    fn discard_heads(&self, group: &str) -> Result<()> {
        {
            let mut cat = self.catalog();
            let g = self.group_rec(&cat.state, group)?;
            let r = Self::replication_of(&cat.state, &g).ok_or_else(|| not_replicated(group))?;
            match r.base.and_then(|b| cat.state.snapshots.get(&b).cloned()) {
                Some(base) => {
                    let name = format!("repl-discard-{}", cat.state.next_id);
                    let members = g.slots.clone();
                    let rebase = base.members.clone();
                    // Sealed and deleted in one transaction: the old heads
                    // are left to garbage collection.
                    self.seal(
                        &mut cat,
                        OwnerId::Group(g.id),
                        &name,
                        SnapshotKind::Crash,
                        &members,
                        &rebase,
                        |s| vec![Change::DelSnapshot(s.id)],
                    )?;
                }
                None => {
                    // No point yet: an initial copy restarts over zeros.
                    drop(cat);
                    for v in self.group(group)?.slots.values() {
                        let h = self.volume(v)?;
                        h.write_zeroes(0, h.size(), false)?;
                    }
                }
            }
        }
        self.collect_garbage()
    }

    /// Records how far the cycle being received durably got, after
    /// flushing the heads.
    pub fn replica_checkpoint(&self, c: &ReplicaCycle, cycle: u64, resume: String) -> Result<()> {
        for v in &c.volumes {
            v.flush()?;
        }
        let mut cat = self.catalog();
        let g = self.group_rec(&cat.state, &c.group)?;
        let mut r = Self::replication_of(&cat.state, &g).ok_or_else(|| not_replicated(&c.group))?;
        match &mut r.partial {
            Some(p) if p.cycle == cycle => p.resume = Some(resume),
            _ => {
                return Err(StoreError::Conflict(format!(
                    "cycle {cycle} of group {} is not the one being received",
                    c.group
                )));
            }
        }
        cat.commit(vec![Change::PutReplication(r)])
    }

    /// The whole cycle arrived and verified: seals the heads into the
    /// recovery point `name` (the source's snapshot name) in the
    /// transaction that records it.
    pub fn replica_commit(
        &self,
        c: &ReplicaCycle,
        cycle: u64,
        name: &str,
        kind: SnapshotKind,
        source_created: u64,
    ) -> Result<RecoveryPoint> {
        for v in &c.volumes {
            v.flush()?;
        }
        let mut cat = self.catalog();
        let g = self.group_rec(&cat.state, &c.group)?;
        let r = Self::replication_of(&cat.state, &g).ok_or_else(|| not_replicated(&c.group))?;
        let Some(p) = r.partial.clone().filter(|p| p.cycle == cycle) else {
            return Err(StoreError::Conflict(format!(
                "cycle {cycle} of group {} is not the one being received",
                c.group
            )));
        };
        let mut pname = name.to_owned();
        let mut n = 1;
        while cat
            .state
            .snapshot_by_name(OwnerId::Group(g.id), &pname)
            .is_some()
        {
            n += 1;
            pname = format!("{name}-{n}");
        }
        let members = g.slots.clone();
        let snap = self.seal(
            &mut cat,
            OwnerId::Group(g.id),
            &pname,
            kind,
            &members,
            &BTreeMap::new(),
            |s| {
                let mut r = r;
                r.base = Some(s.id);
                r.source_ids.insert(s.id, p.source_point);
                r.partial = None;
                r.source_created.insert(s.id, source_created);
                vec![Change::PutReplication(r)]
            },
        )?;
        Ok(RecoveryPoint {
            name: snap.name,
            created: source_created,
            received: snap.created,
            kind,
            source_id: p.source_point,
        })
    }

    /// The recovery points of a replica group, oldest first.
    pub fn recovery_points(&self, group: &str) -> Result<Vec<RecoveryPoint>> {
        let cat = self.catalog();
        let g = self.group_rec(&cat.state, group)?;
        let r = Self::replication_of(&cat.state, &g)
            .filter(|r| r.role == ReplicationRole::Replica)
            .ok_or_else(|| StoreError::not_found("replica group", group))?;
        let mut out: Vec<RecoveryPoint> = cat
            .state
            .snapshots_of(OwnerId::Group(g.id))
            .filter_map(|s| {
                r.source_ids.get(&s.id).map(|src| RecoveryPoint {
                    name: s.name.clone(),
                    created: r.source_created.get(&s.id).copied().unwrap_or(s.created),
                    received: s.created,
                    kind: s.kind,
                    source_id: *src,
                })
            })
            .collect();
        out.sort_by_key(|p| (p.received, p.source_id));
        Ok(out)
    }
}
