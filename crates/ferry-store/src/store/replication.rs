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
    /// The last points kept whatever their hour (the latest among them).
    #[serde(default = "default_keep_last")]
    pub keep_last: u32,
    /// Every N-th point application-consistent (0: never).
    pub app_every: u32,
    /// zstd on the wire.
    pub compression: bool,
    /// Bytes per second at most (none: no cap).
    pub bandwidth: Option<u64>,
    /// The initial copy starts no earlier (nanoseconds since the Unix epoch).
    #[serde(default)]
    pub start_at: Option<u64>,
}

fn default_keep_last() -> u32 {
    4
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        ReplicationSettings {
            interval_secs: 300,
            keep_hourly: 24,
            keep_last: default_keep_last(),
            app_every: 0,
            compression: true,
            bandwidth: None,
            start_at: None,
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
    /// Source: the number the next new cycle takes.
    pub next_cycle: u64,
    /// Replica: the cycle being received.
    pub partial: Option<PartialCycle>,
    /// When an unplanned failover promoted this group here (nanoseconds
    /// since the Unix epoch), until its replication resumes (a reverse
    /// resumes it) or ends.
    #[serde(default)]
    pub failed_over: Option<u64>,
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

/// The tag in which a group keeps its next cycle number while it is not
/// replicated (after `disable` at the source), so numbering goes on where
/// it stopped when replication is enabled again: the replica still holds
/// the points named so far.
pub const NEXT_CYCLE_TAG: &str = "ferry.next-cycle";

/// The lowest cycle number whose point name (`repl-N`) no snapshot of the
/// group has used: above every `repl-N` it holds and its tag's number.
/// Points keep their numbers across disable and enable and when the
/// direction turns around, so the two sides' names do not collide.
fn next_point_number(state: &crate::catalog::CatalogState, g: &GroupRec) -> u64 {
    let held = state
        .snapshots_of(OwnerId::Group(g.id))
        .filter_map(|s| s.name.strip_prefix("repl-")?.parse::<u64>().ok())
        .max()
        .map_or(1, |n| n.saturating_add(1));
    let tagged = g
        .tags
        .get(NEXT_CYCLE_TAG)
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1);
    held.max(tagged)
}

/// `name`, or `name-2`, `name-3`, … : the first no snapshot of the group has.
fn free_name(state: &crate::catalog::CatalogState, g: crate::types::GroupId, name: &str) -> String {
    let mut out = name.to_owned();
    let mut n = 1;
    while state.snapshot_by_name(OwnerId::Group(g), &out).is_some() {
        n += 1;
        out = format!("{name}-{n}");
    }
    out
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
        next_cycle: r.next_cycle,
        partial: r.partial.clone(),
        failed_over: state
            .groups
            .get(&r.group)
            .and_then(|g| g.tags.get(FAILED_OVER_TAG))
            .and_then(|t| t.parse().ok()),
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

    /// `group`, which must be a replica group, and its replication.
    fn replica_group(
        &self,
        state: &crate::catalog::CatalogState,
        group: &str,
    ) -> Result<(GroupRec, ReplicationRec)> {
        let g = self.group_rec(state, group)?;
        let r = Self::replication_of(state, &g)
            .filter(|r| r.role == ReplicationRole::Replica)
            .ok_or_else(|| StoreError::not_found("replica group", group))?;
        Ok((g, r))
    }

    /// Starts replicating `group` to `partner`; the first cycle is the
    /// initial copy. With `paused` no cycle starts until it is resumed.
    pub fn enable_replication(
        &self,
        group: &str,
        partner: &str,
        settings: ReplicationSettings,
        paused: bool,
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
            paused,
            created: now(),
            next_cycle: 1,
            base: None,
            pending: None,
            partial: None,
            source_ids: BTreeMap::new(),
            source_created: BTreeMap::new(),
            points: Vec::new(),
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
        let mut changes = vec![Change::PutReplication(r.clone())];
        if !paused && g.tags.contains_key(FAILED_OVER_TAG) {
            // running again: no longer only failed over
            let mut g2 = g.clone();
            g2.tags.remove(FAILED_OVER_TAG);
            changes.push(Change::PutGroup(g2));
        }
        cat.commit(changes)?;
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
            let mut g2 = g.clone();
            g2.tags.remove(FAILED_OVER_TAG);
            let next = r.next_cycle.max(next_point_number(&cat.state, &g));
            g2.tags.insert(NEXT_CYCLE_TAG.into(), next.to_string());
            if r.role == ReplicationRole::Source {
                let mut ids: Vec<SnapshotId> = r.points.clone();
                ids.extend(r.base);
                ids.extend(r.pending.as_ref().map(|p| p.snapshot));
                ids.sort();
                ids.dedup();
                for id in &ids {
                    if cat.state.snapshots.contains_key(id) {
                        changes.extend(cat.state.exports_of(|s| {
                        matches!(s, crate::catalog::ExportSource::Snapshot { id: e, .. } if e == id)
                    }));
                        changes.push(Change::DelSnapshot(*id));
                    }
                }
            } else {
                g2.tags.remove(REPLICA_TAG);
            }
            changes.push(Change::PutGroup(g2));
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
                    let cycle = rec.next_cycle.max(next_point_number(&cat.state, &g));
                    let name = free_name(&cat.state, g.id, &format!("repl-{cycle}"));
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
    /// the old base and the points retention lets go are deleted, in one
    /// transaction. Their space comes back at the caller's next
    /// [`Store::collect_garbage`], which need not hold up the next cycle.
    pub fn finish_cycle(&self, group: &str, cycle: u64) -> Result<()> {
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
            && !rec.points.contains(&old)
        {
            rec.points.push(old);
        }
        rec.points.push(p.snapshot);
        let dated: Vec<(SnapshotId, u64)> = rec
            .points
            .iter()
            .filter_map(|id| cat.state.snapshots.get(id).map(|s| (*id, s.created)))
            .collect();
        let keep = retained(&dated, &rec.settings, now());
        for id in rec.points.iter().filter(|id| !keep.contains(id)) {
            if cat.state.snapshots.contains_key(id) {
                changes.extend(cat.state.exports_of(
                    |s| matches!(s, crate::catalog::ExportSource::Snapshot { id: e, .. } if e == id),
                ));
                changes.push(Change::DelSnapshot(*id));
            }
        }
        rec.points.retain(|id| keep.contains(id));
        rec.base = Some(p.snapshot);
        rec.pending = None;
        changes.push(Change::PutReplication(rec));
        cat.commit(changes)
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
            points: Vec::new(),
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
    /// transaction that records it. The points it lets go are deleted in
    /// the same transaction; their space comes back at the caller's next
    /// [`Store::collect_garbage`].
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
        let pname = free_name(&cat.state, g.id, name);
        let members = g.slots.clone();
        let cat_snapshots: std::collections::BTreeSet<SnapshotId> =
            cat.state.snapshots.keys().copied().collect();
        let cat_exports: Vec<(crate::types::ExportId, SnapshotId)> = cat
            .state
            .exports
            .values()
            .filter_map(|e| match &e.source {
                crate::catalog::ExportSource::Snapshot { id, .. } => Some((e.id, *id)),
                _ => None,
            })
            .collect();
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
                // Numbering goes on from here should this side take over.
                r.next_cycle = r.next_cycle.max(cycle.saturating_add(1));
                r.source_ids.insert(s.id, p.source_point);
                r.partial = None;
                r.source_created.insert(s.id, source_created);
                // The same rule as the source's, on the source's times.
                let dated: Vec<(SnapshotId, u64)> =
                    r.source_created.iter().map(|(id, c)| (*id, *c)).collect();
                let keep = retained(&dated, &r.settings, now());
                let mut c = Vec::new();
                for id in dated
                    .iter()
                    .map(|(id, _)| *id)
                    .filter(|id| !keep.contains(id))
                {
                    if cat_snapshots.contains(&id) {
                        c.extend(
                            cat_exports
                                .iter()
                                .filter(|(_, sid)| *sid == id)
                                .map(|(e, _)| Change::DelExport(*e)),
                        );
                        c.push(Change::DelSnapshot(id));
                    }
                    r.source_ids.remove(&id);
                    r.source_created.remove(&id);
                }
                c.push(Change::PutReplication(r));
                c
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
        let (g, r) = self.replica_group(&cat.state, group)?;
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

/// The points to keep of `points` (id, creation time, ns): the latest, the
/// last `keep_last`, and the newest of each of the last `keep_hourly` hours
/// before `now`.
pub(crate) fn retained(
    points: &[(SnapshotId, u64)],
    s: &ReplicationSettings,
    now: u64,
) -> std::collections::BTreeSet<SnapshotId> {
    let keep_hourly = s.keep_hourly;
    let mut by_age: Vec<(u64, SnapshotId)> = points.iter().map(|(i, c)| (*c, *i)).collect();
    by_age.sort_unstable_by(|a, b| b.cmp(a));
    const HOUR: u64 = 3_600_000_000_000;
    let mut keep = std::collections::BTreeSet::new();
    let mut newest: BTreeMap<u64, (u64, SnapshotId)> = BTreeMap::new();
    let mut latest: Option<(u64, SnapshotId)> = None;
    for &(id, created) in points {
        if latest.is_none_or(|l| (created, id) > l) {
            latest = Some((created, id));
        }
        let age = now.saturating_sub(created) / HOUR;
        if age < u64::from(keep_hourly) {
            let bucket = created / HOUR;
            let e = newest.entry(bucket).or_insert((created, id));
            if (created, id) > *e {
                *e = (created, id);
            }
        }
    }
    keep.extend(latest.map(|l| l.1));
    keep.extend(newest.values().map(|v| v.1));
    keep.extend(by_age.iter().take(s.keep_last as usize).map(|v| v.1));
    keep
}

/// The tag of a group that takes no client writes (a planned failover).
pub const FROZEN_TAG: &str = "ferry.frozen";
/// The tag of a group promoted by a failover, until its replication runs
/// again: when, nanoseconds since the Unix epoch.
pub const FAILED_OVER_TAG: &str = "ferry.failed-over";

/// Whether clients may not write a group's volumes: a replica (only
/// replication writes it) or a frozen group.
pub(crate) fn writes_refused(g: &GroupRec) -> bool {
    g.tags.contains_key(REPLICA_TAG) || g.tags.contains_key(FROZEN_TAG)
}

/// What a promotion made of a replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Promotion {
    pub group: String,
    /// The recovery point the group now runs from.
    pub point: String,
    /// That point's snapshot id here.
    pub point_id: u64,
    /// Its snapshot id at the old primary (the common point for a reverse).
    pub source_id: u64,
}

/// What turning a group into a replica kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Demotion {
    pub group: String,
    /// The common point the group now stands on.
    pub common: String,
    /// The snapshot keeping what the group held beyond the common point
    /// (none when it held nothing more).
    pub kept: Option<String>,
}

impl Store {
    /// Freezes a group (no client writes; exports turn read-only and their
    /// clients are disconnected) or thaws it.
    pub fn set_group_frozen(&self, group: &str, why: Option<&str>) -> Result<()> {
        let mut cat = self.catalog();
        let mut g = self.group_rec(&cat.state, group)?;
        match why {
            Some(w) => g.tags.insert(FROZEN_TAG.into(), w.into()),
            None => g.tags.remove(FROZEN_TAG),
        };
        // The guard tells the export listeners when it is dropped.
        cat.commit(vec![Change::PutGroup(g)])
    }

    /// Failover: the replica group runs from recovery point `point` (the
    /// latest when none) and takes writes. Whatever its heads held beyond
    /// the latest point (a cycle being received) is dropped. The
    /// replication turns around, paused: this site is now the source of
    /// the partner, from that point, once the partner agrees (a reverse).
    pub fn promote_replica(&self, group: &str, point: Option<&str>) -> Result<Promotion> {
        let out = {
            let mut cat = self.catalog();
            let (g, r) = self.replica_group(&cat.state, group)?;
            let snap = match point {
                Some(name) => cat
                    .state
                    .snapshot_by_name(OwnerId::Group(g.id), name)
                    .filter(|s| r.source_ids.contains_key(&s.id))
                    .cloned()
                    .ok_or_else(|| {
                        StoreError::not_found("recovery point", format!("{group}@{name}"))
                    })?,
                None => r
                    .base
                    .and_then(|b| cat.state.snapshots.get(&b).cloned())
                    .ok_or_else(|| {
                        StoreError::Conflict(format!(
                            "group {group} has no recovery point yet: nothing to fail over to"
                        ))
                    })?,
            };
            let source_id = r.source_ids[&snap.id];
            let name = format!("failover-discard-{}", cat.state.next_id);
            let members = g.slots.clone();
            let rebase = snap.members.clone();
            let mut g2 = g.clone();
            g2.tags.remove(REPLICA_TAG);
            g2.tags.remove(FROZEN_TAG);
            g2.tags.insert(FAILED_OVER_TAG.into(), now().to_string());
            let mut r2 = r.clone();
            r2.role = ReplicationRole::Source;
            r2.paused = true;
            r2.base = Some(snap.id);
            r2.pending = None;
            r2.partial = None;
            r2.next_cycle = r2.next_cycle.max(1);
            r2.points = vec![snap.id];
            self.seal(
                &mut cat,
                OwnerId::Group(g.id),
                &name,
                SnapshotKind::Crash,
                &members,
                &rebase,
                |s| {
                    vec![
                        Change::DelSnapshot(s.id),
                        Change::PutReplication(r2),
                        Change::PutGroup(g2),
                    ]
                },
            )?;
            Promotion {
                group: group.to_owned(),
                point: snap.name.clone(),
                point_id: snap.id.0,
                source_id,
            }
        };
        self.collect_garbage()?;
        Ok(out)
    }

    /// Reverse, at the old primary: the group becomes a replica of
    /// `partner` standing on its snapshot `common` (id here), which the
    /// partner knows as `partner_id`. What the group held beyond `common`
    /// is kept as a snapshot `kept-before-reverse-N` first (nothing is
    /// kept when it held nothing more).
    pub fn demote_to_replica(
        &self,
        group: &str,
        partner: &str,
        common: u64,
        partner_id: u64,
    ) -> Result<Demotion> {
        let common_name = {
            let cat = self.catalog();
            let g = self.group_rec(&cat.state, group)?;
            let r = Self::replication_of(&cat.state, &g)
                .filter(|r| r.role == ReplicationRole::Source && r.partner == partner)
                .ok_or_else(|| {
                    StoreError::not_found("replication to partner", format!("{group} → {partner}"))
                })?;
            let id = SnapshotId(common);
            let held = r.base == Some(id)
                || r.points.contains(&id)
                || r.pending.as_ref().is_some_and(|p| p.snapshot == id);
            match cat.state.snapshots.get(&id) {
                Some(s) if held => s.name.clone(),
                _ => {
                    return Err(StoreError::Conflict(format!(
                        "group {group} no longer holds the common point {common}: a full copy (resync) is needed"
                    )));
                }
            }
        };
        let changed = self
            .diff(Target::Group(group), &common_name, DiffEnd::Live)?
            .values()
            .any(|s| !s.is_empty());
        let out = {
            let mut cat = self.catalog();
            let g = self.group_rec(&cat.state, group)?;
            let r = Self::replication_of(&cat.state, &g).ok_or_else(|| not_replicated(group))?;
            let snap = cat.state.snapshots[&SnapshotId(common)].clone();
            let mut kept = format!("kept-before-reverse-{}", cat.state.next_id);
            if !changed {
                kept = format!("reverse-discard-{}", cat.state.next_id);
            }
            let members = g.slots.clone();
            let rebase = snap.members.clone();
            let mut g2 = g.clone();
            g2.tags.remove(FROZEN_TAG);
            g2.tags.remove(FAILED_OVER_TAG);
            g2.tags.insert(REPLICA_TAG.into(), partner.into());
            let mut r2 = r.clone();
            r2.role = ReplicationRole::Replica;
            r2.paused = false;
            r2.base = Some(snap.id);
            r2.pending = None;
            r2.partial = None;
            r2.source_ids = BTreeMap::from([(snap.id, partner_id)]);
            r2.source_created = BTreeMap::from([(snap.id, snap.created)]);
            r2.points = Vec::new();
            // The old base or pending snapshot that is not the common one.
            let stale: Vec<SnapshotId> = r
                .base
                .iter()
                .chain(r.pending.as_ref().map(|p| &p.snapshot))
                .filter(|id| **id != snap.id && cat.state.snapshots.contains_key(id))
                .copied()
                .collect();
            self.seal(
                &mut cat,
                OwnerId::Group(g.id),
                &kept,
                SnapshotKind::Crash,
                &members,
                &rebase,
                |s| {
                    let mut c = vec![Change::PutReplication(r2), Change::PutGroup(g2)];
                    if !changed {
                        c.push(Change::DelSnapshot(s.id));
                    }
                    c.extend(stale.into_iter().map(Change::DelSnapshot));
                    c
                },
            )?;
            Demotion {
                group: group.to_owned(),
                common: snap.name.clone(),
                kept: changed.then_some(kept),
            }
        };
        self.collect_garbage()?;
        Ok(out)
    }

    /// Failover test: a throw-away group `GROUP-test` cloned from recovery
    /// point `point` (the latest when none); replication goes on.
    pub fn failover_test(&self, group: &str, point: Option<&str>) -> Result<super::GroupInfo> {
        let name = {
            let cat = self.catalog();
            let (g, r) = self.replica_group(&cat.state, group)?;
            match point {
                Some(p) => {
                    let s = cat
                        .state
                        .snapshot_by_name(OwnerId::Group(g.id), p)
                        .filter(|s| r.source_ids.contains_key(&s.id))
                        .ok_or_else(|| {
                            StoreError::not_found("recovery point", format!("{group}@{p}"))
                        })?;
                    s.name.clone()
                }
                None => r
                    .base
                    .and_then(|b| cat.state.snapshots.get(&b))
                    .map(|s| s.name.clone())
                    .ok_or_else(|| {
                        StoreError::Conflict(format!("group {group} has no recovery point yet"))
                    })?,
            }
        };
        // Marked as this replica's test, in the clone's own transaction,
        // so that its cleanup (an operator's task) removes only what a
        // failover test made.
        let mark = BTreeMap::from([(FAILOVER_TEST_TAG.to_owned(), group.to_owned())]);
        self.clone_group_tagged(group, &name, &failover_test_group(group), mark)
    }

    /// Removes a failover test's group, its volumes and their exports: only
    /// a group [`failover_test`](Self::failover_test) made of this replica
    /// group (any other group of that name is "not found" here).
    pub fn failover_test_cleanup(&self, group: &str) -> Result<()> {
        let test = failover_test_group(group);
        {
            let cat = self.catalog();
            self.replica_group(&cat.state, group)?;
            cat.state
                .group_by_name(&test)
                .filter(|t| t.tags.get(FAILOVER_TEST_TAG).map(String::as_str) == Some(group))
                .ok_or_else(|| StoreError::not_found("failover test of", group))?;
        }
        let g = self.group(&test)?;
        let vols: Vec<String> = g.slots.values().cloned().collect();
        for e in self.list_exports() {
            if e.volume.as_ref().is_some_and(|v| vols.contains(v)) {
                self.remove_export(&e.name)?;
            }
        }
        self.delete_group(&test)?;
        for v in vols {
            self.delete_volume(&v)?;
        }
        Ok(())
    }
}

/// On a failover test's group: the replica group it was made of.
pub const FAILOVER_TEST_TAG: &str = "ferry.failover-test-of";

/// The name of a failover test's group.
pub fn failover_test_group(group: &str) -> String {
    format!("{group}-test")
}

impl Store {
    /// For a reverse at a promoted group: the partner, the point it runs
    /// from (id here) and that point's id at the partner.
    pub fn reverse_plan(&self, group: &str) -> Result<(String, u64, u64)> {
        let cat = self.catalog();
        let g = self.group_rec(&cat.state, group)?;
        let r = Self::replication_of(&cat.state, &g)
            .filter(|r| r.role == ReplicationRole::Source)
            .ok_or_else(|| {
                StoreError::Conflict(format!(
                    "group {group} is not a promoted replica or a source here"
                ))
            })?;
        let base = r.base.ok_or_else(|| {
            StoreError::Conflict(format!(
                "group {group} has no common point with its partner"
            ))
        })?;
        let at_partner = r.source_ids.get(&base).copied().ok_or_else(|| {
            StoreError::Conflict(format!(
                "group {group} was not failed over here: its partner is its replica already"
            ))
        })?;
        Ok((r.partner.clone(), base.0, at_partner))
    }

    /// The recovery point of `group` whose id at the source is `source_id`.
    pub fn recovery_point_by_source(&self, group: &str, source_id: u64) -> Result<String> {
        self.recovery_points(group)?
            .into_iter()
            .find(|p| p.source_id == source_id)
            .map(|p| p.name)
            .ok_or_else(|| {
                StoreError::not_found("recovery point", format!("{group} (source id {source_id})"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000_000_000;
    const MIN: u64 = HOUR / 60;

    fn kept(points: &[(u64, u64)], keep_hourly: u32, keep_last: u32, now: u64) -> Vec<u64> {
        let points: Vec<(SnapshotId, u64)> = points
            .iter()
            .map(|&(id, at)| (SnapshotId(id), at))
            .collect();
        let s = ReplicationSettings {
            keep_hourly,
            keep_last,
            ..ReplicationSettings::default()
        };
        retained(&points, &s, now)
            .into_iter()
            .map(|id| id.0)
            .collect()
    }

    #[test]
    fn retention_keeps_the_latest_the_last_few_and_the_newest_of_each_recent_hour() {
        let now = 100 * HOUR;
        // A point every 20 minutes for five hours: ids 1 (oldest) to 15.
        let points: Vec<(u64, u64)> = (1..=15)
            .map(|i| (i, now - (15 - i) * 20 * MIN - MIN))
            .collect();
        // Nothing asked for: the latest only.
        assert_eq!(kept(&points, 0, 0, now), [15]);
        // The last three, whatever their hour.
        assert_eq!(kept(&points, 0, 3, now), [13, 14, 15]);
        // The newest of each hour (by the clock) among the last two hours'
        // worth of points: hours 99 and 98 hold 13-15 and 10-12.
        assert_eq!(kept(&points, 2, 0, now), [12, 15]);
        // Both rules together, and the latest among them.
        assert_eq!(kept(&points, 2, 4, now), [12, 13, 14, 15]);
        // Asking for more than there is keeps everything.
        assert_eq!(kept(&points, 100, 100, now), (1..=15).collect::<Vec<_>>());
        // Order does not matter; a point from the future still counts as latest.
        let mut shuffled = points.clone();
        shuffled.reverse();
        shuffled.push((16, now + HOUR));
        assert_eq!(kept(&shuffled, 0, 0, now), [16]);
        assert_eq!(kept(&[], 3, 3, now), Vec::<u64>::new());
    }
}
