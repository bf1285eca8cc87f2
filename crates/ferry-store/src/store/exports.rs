//! Exports: NBD export names bound to a volume (read-write) or to one volume
//! of a snapshot (read-only), kept in the catalog.
//!
//! An export names its object by id (a volume id, or a snapshot id and a
//! slot), so it follows the object whatever happens to names. It never
//! outlives its object: deleting a volume or a snapshot removes its exports
//! in the same catalog transaction. Listeners registered with
//! [`Store::on_exports_changed`] are told, outside the catalog lock, after
//! every commit that removed or replaced an export, so that a server can
//! disconnect the clients of an export that is gone.
//!
//! What it must not do: speak NBD, or hold a volume open on its own (a disk
//! is opened only by [`Store::open_export`], for the caller to keep).

use parking_lot::RwLock;
use std::sync::Arc;

use super::{Store, Target, now};
use crate::catalog::{CatalogState, Change, ExportRec, ExportSource, OwnerId};
use crate::error::{Result, StoreError};
use crate::types::{ExportId, validate_name};
use crate::volume::{SnapshotReader, VolumeHandle};

/// What a new export serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportSpec<'a> {
    /// A live volume, read-write.
    Volume { volume: &'a str },
    /// One volume of a snapshot, read-only: `slot` names it in a group's
    /// snapshot (required there) and is `None` for a lone volume's snapshot.
    Snapshot {
        target: Target<'a>,
        snapshot: &'a str,
        slot: Option<&'a str>,
    },
}

/// Whether an export serves a live volume or a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ExportKind {
    /// A live volume, read-write.
    Volume,
    /// One volume of a snapshot, read-only.
    Snapshot,
}

/// An export as listed.
///
/// A volume export sets `volume`. A snapshot export sets `snapshot`, and
/// `group` and `slot` when it is a group's snapshot (`GROUP@SNAPSHOT`, slot
/// `SLOT`), or only `volume` when it is a lone volume's snapshot
/// (`VOLUME@SNAPSHOT`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExportInfo {
    pub id: ExportId,
    /// The NBD export name.
    pub name: String,
    pub kind: ExportKind,
    /// True for a snapshot export, and for a volume of a replica group or a
    /// frozen one (a planned failover): clients may only read.
    pub read_only: bool,
    /// Bytes the export shows: the volume's size now, or the snapshot's copy's.
    pub size: u64,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created: u64,
    /// A volume export: its volume. A snapshot export: the volume the copy
    /// was taken from (its id when that volume has been deleted since); for
    /// a lone volume's snapshot, the volume that owns the snapshot.
    pub volume: Option<String>,
    /// A group snapshot's export: the group.
    pub group: Option<String>,
    /// A snapshot export: the snapshot's name.
    pub snapshot: Option<String>,
    /// A group snapshot's export: the slot.
    pub slot: Option<String>,
}

/// An export's disk, opened for serving.
#[derive(Clone, Debug)]
pub enum ExportDisk {
    Volume(VolumeHandle),
    Snapshot(SnapshotReader),
}

impl ExportDisk {
    /// The disk's size in bytes now.
    pub fn size(&self) -> u64 {
        match self {
            ExportDisk::Volume(v) => v.size(),
            ExportDisk::Snapshot(s) => s.size(),
        }
    }

    /// Reads `buf.len()` bytes at any byte `offset`.
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match self {
            ExportDisk::Volume(v) => v.read(buf, offset),
            ExportDisk::Snapshot(s) => s.read(buf, offset),
        }
    }
}

type Listener = Arc<dyn Fn() + Send + Sync>;

/// The callbacks of [`Store::on_exports_changed`].
#[derive(Default)]
pub(super) struct Listeners(RwLock<Vec<Listener>>);

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Listeners({})", self.0.read().len())
    }
}

impl Listeners {
    /// Calls every listener; none of the store's locks is held, and a
    /// listener may call the store (or register another listener).
    pub(super) fn notify(&self) {
        let all: Vec<Listener> = self.0.read().clone();
        for f in all {
            f();
        }
    }
}

fn export_info(state: &CatalogState, rec: &ExportRec) -> ExportInfo {
    let volume_name = |id| {
        state
            .volumes
            .get(&id)
            .map_or_else(|| id.to_string(), |v| v.name.clone())
    };
    let mut info = ExportInfo {
        id: rec.id,
        name: rec.name.clone(),
        kind: ExportKind::Volume,
        read_only: false,
        size: 0,
        created: rec.created,
        volume: None,
        group: None,
        snapshot: None,
        slot: None,
    };
    match &rec.source {
        ExportSource::Volume(id) => {
            info.volume = Some(volume_name(*id));
            info.size = state.volumes.get(id).map_or(0, |v| v.size);
            // Only replication writes a replica's volumes; a frozen group
            // (a planned failover) takes no writes at all.
            if let Some((g, _)) = state.group_of(*id) {
                info.read_only = super::replication::writes_refused(g);
            }
        }
        ExportSource::Snapshot { id, slot } => {
            info.kind = ExportKind::Snapshot;
            info.read_only = true;
            // The snapshot is there: deleting it removes this export first.
            if let Some(s) = state.snapshots.get(id) {
                info.snapshot = Some(s.name.clone());
                let member = s.members.get(slot);
                info.size = member.map_or(0, |m| m.size);
                match s.owner {
                    OwnerId::Group(g) => {
                        info.group = Some(
                            state
                                .groups
                                .get(&g)
                                .map_or_else(|| g.to_string(), |r| r.name.clone()),
                        );
                        info.slot = Some(slot.clone());
                        info.volume = member.map(|m| volume_name(m.volume));
                    }
                    OwnerId::Volume(v) => info.volume = Some(volume_name(v)),
                }
            } else {
                info.snapshot = Some(id.to_string());
            }
        }
    }
    info
}

impl Store {
    /// What `spec` names, as the export's source; every error names what is
    /// missing or wrong.
    fn export_source(&self, state: &CatalogState, spec: ExportSpec<'_>) -> Result<ExportSource> {
        match spec {
            ExportSpec::Volume { volume } => state
                .volume_by_name(volume)
                .map(|v| ExportSource::Volume(v.id))
                .ok_or_else(|| StoreError::not_found("volume", volume)),
            ExportSpec::Snapshot {
                target,
                snapshot,
                slot,
            } => {
                let rec = self.snapshot_rec(state, target, snapshot)?;
                let reference = format!("{}@{snapshot}", target.name());
                let slot = match (target, slot) {
                    (Target::Group(_), Some(slot)) if rec.members.contains_key(slot) => slot,
                    (Target::Group(_), Some(slot)) => {
                        return Err(StoreError::not_found(
                            "slot",
                            format!("{slot} in snapshot {reference}"),
                        ));
                    }
                    (Target::Group(_), None) => {
                        let slots: Vec<&str> = rec.members.keys().map(String::as_str).collect();
                        return Err(StoreError::Slot {
                            snapshot: reference,
                            reason: if slots.is_empty() {
                                "has no slots: there is nothing to export".into()
                            } else {
                                format!(
                                    "is a group's snapshot: name one of its slots ({})",
                                    slots.join(", ")
                                )
                            },
                        });
                    }
                    // a lone volume's snapshot keeps its one copy under ""
                    (Target::Volume(_), None) => "",
                    (Target::Volume(_), Some(_)) => {
                        return Err(StoreError::Slot {
                            snapshot: reference,
                            reason: "is a lone volume's snapshot, which has no slots: name none"
                                .into(),
                        });
                    }
                };
                Ok(ExportSource::Snapshot {
                    id: rec.id,
                    slot: slot.to_owned(),
                })
            }
        }
    }

    /// The source of a new export `name`, if it would be accepted now.
    fn plan_export(
        &self,
        state: &CatalogState,
        name: &str,
        spec: ExportSpec<'_>,
    ) -> Result<ExportSource> {
        validate_name("export", name)?;
        if state.export_by_name(name).is_some() {
            return Err(StoreError::exists("export", name));
        }
        self.export_source(state, spec)
    }

    /// Checks that [`Store::create_export`] with these arguments would be
    /// accepted now, changing nothing.
    pub fn check_export(&self, name: &str, spec: ExportSpec<'_>) -> Result<()> {
        self.plan_export(&self.catalog().state, name, spec)
            .map(drop)
    }

    /// Binds the NBD export name `name` to a volume (read-write) or to one
    /// volume of a snapshot (read-only).
    pub fn create_export(&self, name: &str, spec: ExportSpec<'_>) -> Result<ExportInfo> {
        let mut cat = self.catalog();
        let source = self.plan_export(&cat.state, name, spec)?;
        let rec = ExportRec {
            id: ExportId(cat.alloc_id()),
            name: name.to_owned(),
            source,
            created: now(),
        };
        cat.commit(vec![Change::PutExport(rec.clone())])?;
        Ok(export_info(&cat.state, &rec))
    }

    /// Every export, by name.
    pub fn list_exports(&self) -> Vec<ExportInfo> {
        let cat = self.catalog();
        let mut out: Vec<_> = cat
            .state
            .exports
            .values()
            .map(|r| export_info(&cat.state, r))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn export_rec(&self, state: &CatalogState, name: &str) -> Result<ExportRec> {
        state
            .export_by_name(name)
            .cloned()
            .ok_or_else(|| StoreError::not_found("export", name))
    }

    pub fn export(&self, name: &str) -> Result<ExportInfo> {
        let cat = self.catalog();
        Ok(export_info(&cat.state, &self.export_rec(&cat.state, name)?))
    }

    /// Removes an export; its volume or snapshot stays.
    pub fn remove_export(&self, name: &str) -> Result<()> {
        let mut cat = self.catalog();
        let rec = self.export_rec(&cat.state, name)?;
        cat.commit(vec![Change::DelExport(rec.id)])
    }

    /// The export and its disk, opened for serving: a volume's handle, or a
    /// reader of the snapshot's copy. The disk stays usable after the export
    /// is removed (a volume handle fails once its volume is deleted); a
    /// server drops it when told by [`Store::on_exports_changed`].
    pub fn open_export(&self, name: &str) -> Result<(ExportInfo, ExportDisk)> {
        let cat = self.catalog();
        let rec = self.export_rec(&cat.state, name)?;
        let info = export_info(&cat.state, &rec);
        let disk = match &rec.source {
            ExportSource::Volume(id) => ExportDisk::Volume(self.volume_handle(*id)?),
            ExportSource::Snapshot { id, slot } => {
                let member = cat
                    .state
                    .snapshots
                    .get(id)
                    .and_then(|s| s.members.get(slot))
                    .ok_or_else(|| StoreError::Corrupt {
                        what: format!("export {name:?}"),
                        detail: format!("it names {id} slot {slot:?}, which is missing"),
                    })?;
                ExportDisk::Snapshot(self.snapshot_reader(&cat.state, member)?)
            }
        };
        Ok((info, disk))
    }

    /// Registers `f` to be called after every committed catalog transaction
    /// that removed or replaced an export — an explicit removal, or the
    /// deletion of its volume or snapshot. It is called on the thread that
    /// made the change, with none of the store's locks held; it should only
    /// note the change (and, say, wake a server that then looks at
    /// [`Store::list_exports`]). Listeners live as long as the store; one
    /// that holds a clone of the store keeps it (and its directory lock)
    /// alive, so send on a channel instead.
    pub fn on_exports_changed(&self, f: Box<dyn Fn() + Send + Sync>) {
        self.inner.export_listeners.0.write().push(Arc::from(f));
    }
}
