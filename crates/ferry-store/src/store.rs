//! The store: the catalog plus every open volume and layer, and the
//! operations that change them (volumes, groups, snapshots, clones, sync,
//! diffs, space, exports in `exports`, sites and partners in `partners`) and the garbage collection that
//! deletes and merges layers.
//!
//! Locks, always taken in this order: `gc` → `catalog` → volume states
//! (ascending id) → layer maps. Data I/O takes only a volume's state for
//! reading, then layer maps.

use parking_lot::{Mutex, MutexGuard, RwLock};
use roaring::RoaringBitmap;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use crate::catalog::{
    Catalog, Change, ExportSource, GroupRec, LayerRec, MemberRec, OwnerId, SnapshotRec, VolumeRec,
};
use crate::error::{Result, StoreError};
use crate::layer::{self, BlockState, Layer};
use crate::progress::Progress;
use crate::storage::{FsStorage, Storage};
use crate::types::{
    BLOCK, BLOCK_SIZE, GroupId, LayerId, SnapshotId, SnapshotKind, VolumeId, check_size,
    now_unix_nanos, validate_name, validate_tag,
};
use crate::volume::{SnapshotReader, Volume, VolumeHandle};

mod exports;
mod partners;
mod replication;

pub use exports::{ExportDisk, ExportInfo, ExportKind, ExportSpec};
// GroupHooks is defined here, beside GroupInfo.
pub use partners::{NewPartner, PairingRefusal, PartnerInfo};
pub use replication::{
    CycleStart, Demotion, FROZEN_TAG, PartialCycle, Promotion, REPLICA_TAG, RecoveryPoint,
    ReplicaCycle, ReplicaStart, ReplicationInfo, ReplicationSettings, failover_test_group,
};

/// Blocks a merge copies under one hold of the write barrier.
const MERGE_CHUNK: usize = 256;

/// What a snapshot, clone or diff refers to: a group, or a volume on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    Group(&'a str),
    Volume(&'a str),
}

impl Target<'_> {
    fn name(&self) -> &str {
        match self {
            Target::Group(n) | Target::Volume(n) => n,
        }
    }
}

/// The newer end of a diff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiffEnd<'a> {
    Snapshot(&'a str),
    /// The volumes as they are now.
    Live,
}

/// A volume as listed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VolumeInfo {
    pub id: VolumeId,
    pub name: String,
    pub size: u64,
    /// The group holding the volume, if any.
    pub group: Option<String>,
    /// The volume's slot in that group.
    pub slot: Option<String>,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created: u64,
}

/// A group as listed: slots map to volume names.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupInfo {
    pub id: GroupId,
    pub name: String,
    pub slots: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    pub created: u64,
    /// The freeze and thaw commands of application-consistent snapshots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hooks: Option<GroupHooks>,
}

/// A group's hooks: shell commands the daemon runs (as itself, with
/// `FERRY_GROUP` set) before and after an application-consistent snapshot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupHooks {
    /// Freezes the application; a failure or a timeout makes the snapshot
    /// crash-consistent instead (and says so).
    pub pre: String,
    /// Thaws it; always run once `pre` was started.
    pub post: String,
    /// Seconds each command may take.
    pub timeout_secs: u64,
}

impl GroupHooks {
    /// Refuses an empty or overlong command (over 4096 bytes, or with a
    /// NUL) and a timeout outside 1..=3600 seconds.
    pub fn check(&self) -> Result<()> {
        for c in [&self.pre, &self.post] {
            if c.trim().is_empty() || c.len() > 4096 || c.contains('\0') {
                return Err(StoreError::Invalid(
                    "a hook is a non-empty shell command of at most 4096 bytes",
                ));
            }
        }
        if !(1..=3600).contains(&self.timeout_secs) {
            return Err(StoreError::Invalid(
                "a hook's timeout is between 1 and 3600 seconds",
            ));
        }
        Ok(())
    }
}

/// One volume of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberInfo {
    /// The volume the member was taken from (its name at the time it is listed,
    /// or its id when it has been deleted since).
    pub volume: String,
    pub size: u64,
}

/// A snapshot as listed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SnapshotInfo {
    pub id: SnapshotId,
    pub name: String,
    /// `group` or `volume`.
    pub owner_kind: &'static str,
    pub owner: String,
    pub created: u64,
    pub kind: SnapshotKind,
    /// Slot to member; a lone volume's snapshot has one member under `""`.
    pub members: BTreeMap<String, MemberInfo>,
}

/// Space used by one volume.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SpaceInfo {
    pub volume: String,
    /// The volume's size.
    pub logical: u64,
    /// Bytes of data the live volume reads from storage (zeros and holes excluded).
    pub allocated: u64,
    /// Bytes of data held in the volume's snapshot layers that the live volume
    /// no longer shows: what deleting its snapshots would give back (less what
    /// clones share).
    pub snapshot_only: u64,
}

/// What a sync did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SyncReport {
    /// The snapshot of the target taken first, to undo the sync.
    pub undo_snapshot: String,
    pub slots: Vec<String>,
}

/// The storage engine. Cheap to clone; every method is safe to call from many threads.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    storage: Arc<dyn Storage>,
    gc: Mutex<()>,
    catalog: Mutex<Catalog>,
    volumes: RwLock<HashMap<VolumeId, Arc<Volume>>>,
    layers: RwLock<HashMap<LayerId, Arc<Layer>>>,
    export_listeners: exports::Listeners,
    _lock: Option<std::fs::File>,
}

/// The catalog, locked. When it is released after a commit that removed or
/// replaced an export (by any path: an explicit removal or a cascade), it
/// calls the export listeners, outside the lock.
struct CatalogGuard<'a> {
    guard: Option<MutexGuard<'a, Catalog>>,
    listeners: &'a exports::Listeners,
}

impl std::ops::Deref for CatalogGuard<'_> {
    type Target = Catalog;
    fn deref(&self) -> &Catalog {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for CatalogGuard<'_> {
    fn deref_mut(&mut self) -> &mut Catalog {
        self.guard.as_mut().expect("held until dropped")
    }
}

impl Drop for CatalogGuard<'_> {
    fn drop(&mut self) {
        if let Some(mut guard) = self.guard.take() {
            let changed = guard.take_exports_changed();
            drop(guard);
            if changed {
                self.listeners.notify();
            }
        }
    }
}

/// How a garbage collection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcOutcome {
    /// Nothing is left to delete or merge.
    Finished,
    /// Stopped at a checkpoint because the progress was cancelled; the store
    /// is correct and the next collection (or open) does the rest.
    Cancelled,
}

/// Plan of one garbage-collection step.
enum GcStep {
    Delete(LayerId),
    Merge { from: LayerId, into: LayerId },
}

fn io_err(
    op: &'static str,
    object: impl std::fmt::Display,
) -> impl FnOnce(std::io::Error) -> StoreError {
    move |e| StoreError::io(op, object, e)
}

fn now() -> u64 {
    u64::try_from(now_unix_nanos()).unwrap_or(u64::MAX)
}

impl Store {
    /// Opens (creating when missing) the store in directory `dir`, locking it
    /// against other processes.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        let dir = dir.as_ref();
        let storage = FsStorage::new(dir).map_err(io_err("creating", dir.display()))?;
        let lock_path = dir.join("LOCK");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("opening", lock_path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe {
            libc::flock(
                std::os::unix::io::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        } != 0
        {
            return Err(StoreError::Locked {
                path: lock_path.display().to_string(),
            });
        }
        Self::open_inner(Arc::new(storage), Some(lock))
    }

    /// Opens a store on any [`Storage`] (tests use the in-memory and fault-injecting ones).
    pub fn open_storage(storage: Arc<dyn Storage>) -> Result<Store> {
        Self::open_inner(storage, None)
    }

    fn open_inner(storage: Arc<dyn Storage>, lock: Option<std::fs::File>) -> Result<Store> {
        let catalog = Catalog::open(&storage)?;
        let mut layers = HashMap::new();
        for id in catalog.state.layers.keys() {
            let layer = Layer::open(&storage, *id).map_err(io_err("opening", id))?;
            layers.insert(*id, Arc::new(layer));
        }
        // Files of layers the catalog does not know are left over from an
        // operation that did not commit, or a deletion that did.
        let files = storage
            .list_dir("layers")
            .map_err(io_err("listing", "layers"))?;
        for name in files {
            let known =
                layer::id_of_file(&name).is_some_and(|id| catalog.state.layers.contains_key(&id));
            if !known || name.ends_with(".tmp") {
                storage
                    .remove_file(&format!("layers/{name}"))
                    .map_err(io_err("removing", &name))?;
            }
        }
        let mut volumes = HashMap::new();
        for rec in catalog.state.volumes.values() {
            let chain = catalog
                .state
                .lineage(rec.head)
                .iter()
                .map(|id| {
                    layers.get(id).cloned().ok_or_else(|| StoreError::Corrupt {
                        what: format!("volume {:?}", rec.name),
                        detail: format!("its chain names the missing {id}"),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            volumes.insert(
                rec.id,
                Arc::new(Volume::new(rec.id, rec.name.clone(), rec.size, chain)),
            );
        }
        let store = Store {
            inner: Arc::new(Inner {
                storage,
                gc: Mutex::new(()),
                catalog: Mutex::new(catalog),
                volumes: RwLock::new(volumes),
                layers: RwLock::new(layers),
                export_listeners: exports::Listeners::default(),
                _lock: lock,
            }),
        };
        store.collect_garbage()?;
        Ok(store)
    }

    /// Locks the catalog; see [`CatalogGuard`].
    fn catalog(&self) -> CatalogGuard<'_> {
        CatalogGuard {
            guard: Some(self.inner.catalog.lock()),
            listeners: &self.inner.export_listeners,
        }
    }

    /// Flushes every volume; call before a clean shutdown.
    pub fn flush_all(&self) -> Result<()> {
        let volumes: Vec<_> = self.inner.volumes.read().values().cloned().collect();
        for v in volumes {
            v.flush()?;
        }
        Ok(())
    }

    // ----- volumes -----

    /// Creates an empty volume of `size` bytes (a multiple of 4 KiB, up to 16 TiB less 4 KiB).
    pub fn create_volume(&self, name: &str, size: u64) -> Result<VolumeInfo> {
        validate_name("volume", name)?;
        check_size(size).map_err(|reason| StoreError::InvalidSize {
            input: size.to_string(),
            reason,
        })?;
        let mut cat = self.catalog();
        if cat.state.volume_by_name(name).is_some() {
            return Err(StoreError::exists("volume", name));
        }
        let id = VolumeId(cat.alloc_id());
        let head = LayerId(cat.alloc_id());
        let layer = self.create_layer(head)?;
        let rec = VolumeRec {
            id,
            name: name.to_owned(),
            size,
            head,
            created: now(),
        };
        let result = cat.commit(vec![
            Change::PutLayer(LayerRec {
                id: head,
                parent: None,
            }),
            Change::PutVolume(rec.clone()),
        ]);
        self.finish_layers(result, &[layer])?;
        self.inner.volumes.write().insert(
            id,
            Arc::new(Volume::new(
                id,
                name.to_owned(),
                size,
                vec![self.layer(head)?],
            )),
        );
        Ok(self.volume_info(&cat.state, &rec))
    }

    /// Makes a volume larger; its new space reads as zeros.
    pub fn grow_volume(&self, name: &str, size: u64) -> Result<VolumeInfo> {
        check_size(size).map_err(|reason| StoreError::InvalidSize {
            input: size.to_string(),
            reason,
        })?;
        let mut cat = self.catalog();
        let mut rec = cat
            .state
            .volume_by_name(name)
            .cloned()
            .ok_or_else(|| StoreError::not_found("volume", name))?;
        if size < rec.size {
            return Err(StoreError::Shrink {
                name: name.to_owned(),
                current: rec.size,
                requested: size,
            });
        }
        let vol = self.vol(rec.id)?;
        let mut st = vol.barrier();
        rec.size = size;
        cat.commit(vec![Change::PutVolume(rec.clone())])?;
        st.size = size;
        drop(st);
        Ok(self.volume_info(&cat.state, &rec))
    }

    /// Deletes a volume and, in the same transaction, its exports. Refused
    /// while it is in a group or has snapshots of its own; snapshots of a
    /// group it was in keep their copy.
    pub fn delete_volume(&self, name: &str) -> Result<()> {
        {
            let mut cat = self.catalog();
            let rec = cat
                .state
                .volume_by_name(name)
                .cloned()
                .ok_or_else(|| StoreError::not_found("volume", name))?;
            if let Some((g, slot)) = cat.state.group_of(rec.id) {
                return Err(StoreError::InUse {
                    kind: "volume",
                    name: name.to_owned(),
                    reason: format!(
                        "it is slot {slot:?} of group {:?}; remove it from the group first",
                        g.name
                    ),
                });
            }
            let own = cat.state.snapshots_of(OwnerId::Volume(rec.id)).count();
            if own > 0 {
                return Err(StoreError::InUse {
                    kind: "volume",
                    name: name.to_owned(),
                    reason: format!("it has {own} snapshot(s); delete them first"),
                });
            }
            let vol = self.vol(rec.id)?;
            let mut st = vol.barrier();
            let mut changes = cat.state.exports_of(|s| *s == ExportSource::Volume(rec.id));
            changes.push(Change::DelVolume(rec.id));
            cat.commit(changes)?;
            st.deleted = true;
            drop(st);
            self.inner.volumes.write().remove(&rec.id);
        }
        self.collect_garbage()
    }

    /// Every volume, by name.
    pub fn list_volumes(&self) -> Vec<VolumeInfo> {
        let cat = self.catalog();
        let mut out: Vec<_> = cat
            .state
            .volumes
            .values()
            .map(|r| self.volume_info(&cat.state, r))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// A handle for I/O on a volume.
    pub fn volume(&self, name: &str) -> Result<VolumeHandle> {
        let cat = self.catalog();
        let rec = cat
            .state
            .volume_by_name(name)
            .ok_or_else(|| StoreError::not_found("volume", name))?;
        self.volume_handle(rec.id)
    }

    fn volume_handle(&self, id: VolumeId) -> Result<VolumeHandle> {
        Ok(VolumeHandle { vol: self.vol(id)? })
    }

    fn volume_info(&self, state: &crate::catalog::CatalogState, r: &VolumeRec) -> VolumeInfo {
        let (group, slot) = state
            .group_of(r.id)
            .map(|(g, slot)| (g.name.clone(), slot.to_owned()))
            .unzip();
        VolumeInfo {
            id: r.id,
            name: r.name.clone(),
            size: r.size,
            group,
            slot,
            created: r.created,
        }
    }

    // ----- groups -----

    /// Creates a group of volumes as named slots.
    pub fn create_group(&self, name: &str, slots: &[(&str, &str)]) -> Result<GroupInfo> {
        validate_name("group", name)?;
        let mut cat = self.catalog();
        if cat.state.group_by_name(name).is_some() {
            return Err(StoreError::exists("group", name));
        }
        let mut map = BTreeMap::new();
        for (slot, volume) in slots {
            validate_name("slot", slot)?;
            let vid = self.free_volume(&cat.state, volume)?;
            if map.values().any(|v| *v == vid) {
                return Err(StoreError::InUse {
                    kind: "volume",
                    name: volume.to_string(),
                    reason: "it is named for two slots".into(),
                });
            }
            if map.insert(slot.to_string(), vid).is_some() {
                return Err(StoreError::exists("slot", *slot));
            }
        }
        let rec = GroupRec {
            id: GroupId(cat.alloc_id()),
            name: name.to_owned(),
            slots: map,
            tags: BTreeMap::new(),
            created: now(),
            hooks: None,
        };
        cat.commit(vec![Change::PutGroup(rec.clone())])?;
        Ok(group_info(&cat.state, &rec))
    }

    fn free_volume(&self, state: &crate::catalog::CatalogState, volume: &str) -> Result<VolumeId> {
        let v = state
            .volume_by_name(volume)
            .ok_or_else(|| StoreError::not_found("volume", volume))?;
        if let Some((g, slot)) = state.group_of(v.id) {
            return Err(StoreError::InUse {
                kind: "volume",
                name: volume.to_owned(),
                reason: format!("it is already slot {slot:?} of group {:?}", g.name),
            });
        }
        Ok(v.id)
    }

    /// Puts a volume (not in any group) into a slot of a group.
    pub fn set_slot(&self, group: &str, slot: &str, volume: &str) -> Result<GroupInfo> {
        validate_name("slot", slot)?;
        let mut cat = self.catalog();
        let mut rec = self.group_rec(&cat.state, group)?;
        if rec.slots.contains_key(slot) {
            return Err(StoreError::exists("slot", slot));
        }
        let vid = self.free_volume(&cat.state, volume)?;
        rec.slots.insert(slot.to_owned(), vid);
        cat.commit(vec![Change::PutGroup(rec.clone())])?;
        Ok(group_info(&cat.state, &rec))
    }

    /// Takes a slot out of a group; its volume stays, outside any group.
    pub fn remove_slot(&self, group: &str, slot: &str) -> Result<GroupInfo> {
        let mut cat = self.catalog();
        let mut rec = self.group_rec(&cat.state, group)?;
        if rec.slots.remove(slot).is_none() {
            return Err(StoreError::not_found("slot", slot));
        }
        cat.commit(vec![Change::PutGroup(rec.clone())])?;
        Ok(group_info(&cat.state, &rec))
    }

    /// Replaces a group's tags.
    pub fn set_tags(&self, group: &str, tags: BTreeMap<String, String>) -> Result<GroupInfo> {
        for (k, v) in &tags {
            validate_tag(k, v)?;
            if k.starts_with("ferry.") {
                return Err(StoreError::Invalid(
                    "tags starting with \"ferry.\" are ferry's own (replica, frozen, failed over, failover test)",
                ));
            }
        }
        let mut cat = self.catalog();
        let mut rec = self.group_rec(&cat.state, group)?;
        // ferry's own tags stay whatever the caller sends.
        let own: Vec<(String, String)> = rec
            .tags
            .iter()
            .filter(|(k, _)| k.starts_with("ferry."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        rec.tags = tags;
        rec.tags.extend(own);
        cat.commit(vec![Change::PutGroup(rec.clone())])?;
        Ok(group_info(&cat.state, &rec))
    }

    /// Sets (or clears) a group's freeze and thaw hooks.
    pub fn set_group_hooks(&self, group: &str, hooks: Option<GroupHooks>) -> Result<GroupInfo> {
        if let Some(h) = &hooks {
            h.check()?;
        }
        let mut cat = self.catalog();
        let mut rec = self.group_rec(&cat.state, group)?;
        rec.hooks = hooks;
        cat.commit(vec![Change::PutGroup(rec.clone())])?;
        Ok(group_info(&cat.state, &rec))
    }

    /// Deletes a group; its volumes stay. Refused while it has snapshots.
    pub fn delete_group(&self, name: &str) -> Result<()> {
        let mut cat = self.catalog();
        let rec = self.group_rec(&cat.state, name)?;
        if cat.state.replications.values().any(|r| r.group == rec.id) {
            return Err(StoreError::InUse {
                kind: "group",
                name: name.to_owned(),
                reason: "it is replicated; disable replication first".into(),
            });
        }
        let snaps = cat.state.snapshots_of(OwnerId::Group(rec.id)).count();
        if snaps > 0 {
            return Err(StoreError::InUse {
                kind: "group",
                name: name.to_owned(),
                reason: format!("it has {snaps} snapshot(s); delete them first"),
            });
        }
        cat.commit(vec![Change::DelGroup(rec.id)])
    }

    pub fn list_groups(&self) -> Vec<GroupInfo> {
        let cat = self.catalog();
        let mut out: Vec<_> = cat
            .state
            .groups
            .values()
            .map(|g| group_info(&cat.state, g))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn group(&self, name: &str) -> Result<GroupInfo> {
        let cat = self.catalog();
        Ok(group_info(&cat.state, &self.group_rec(&cat.state, name)?))
    }

    fn group_rec(&self, state: &crate::catalog::CatalogState, name: &str) -> Result<GroupRec> {
        state
            .group_by_name(name)
            .cloned()
            .ok_or_else(|| StoreError::not_found("group", name))
    }

    // ----- snapshots -----

    fn owner(&self, state: &crate::catalog::CatalogState, target: Target<'_>) -> Result<OwnerId> {
        match target {
            Target::Group(n) => state
                .group_by_name(n)
                .map(|g| OwnerId::Group(g.id))
                .ok_or_else(|| StoreError::not_found("group", n)),
            Target::Volume(n) => state
                .volume_by_name(n)
                .map(|v| OwnerId::Volume(v.id))
                .ok_or_else(|| StoreError::not_found("volume", n)),
        }
    }

    /// Slot name to volume id of what a target holds now.
    fn current_members(
        &self,
        state: &crate::catalog::CatalogState,
        owner: OwnerId,
    ) -> BTreeMap<String, VolumeId> {
        match owner {
            OwnerId::Group(g) => state.groups[&g].slots.clone(),
            OwnerId::Volume(v) => BTreeMap::from([(String::new(), v)]),
        }
    }

    /// Takes a snapshot of every volume of a group (or of one volume) at one
    /// instant. Its cost does not depend on the volumes' sizes.
    pub fn create_snapshot(
        &self,
        target: Target<'_>,
        name: &str,
        kind: SnapshotKind,
    ) -> Result<SnapshotInfo> {
        validate_name("snapshot", name)?;
        let mut cat = self.catalog();
        let owner = self.owner(&cat.state, target)?;
        if cat.state.snapshot_by_name(owner, name).is_some() {
            return Err(StoreError::exists(
                "snapshot",
                format!("{}@{name}", target.name()),
            ));
        }
        let members = self.current_members(&cat.state, owner);
        let rec = self.seal(
            &mut cat,
            owner,
            name,
            kind,
            &members,
            &BTreeMap::new(),
            |_| Vec::new(),
        )?;
        Ok(snapshot_info(&cat.state, &rec))
    }

    /// Seals the heads of `members` into a new snapshot and starts new heads:
    /// on the sealed layer, or for slots in `rebase` on the given layer (sync).
    /// `also` adds changes, given the new snapshot, to the same transaction.
    #[allow(clippy::too_many_arguments)]
    fn seal(
        &self,
        cat: &mut Catalog,
        owner: OwnerId,
        name: &str,
        kind: SnapshotKind,
        members: &BTreeMap<String, VolumeId>,
        rebase: &BTreeMap<String, MemberRec>,
        also: impl FnOnce(&SnapshotRec) -> Vec<Change>,
    ) -> Result<SnapshotRec> {
        let mut vols: Vec<(String, Arc<Volume>)> = members
            .iter()
            .map(|(slot, id)| Ok((slot.clone(), self.vol(*id)?)))
            .collect::<Result<_>>()?;
        vols.sort_by_key(|(_, v)| v.id);
        // Flush before the barrier, so that only the last instant's writes
        // are flushed while I/O waits.
        for (_, v) in &vols {
            v.flush()?;
        }
        let mut new_heads = Vec::new();
        let mut plan = Vec::new();
        for (slot, v) in &vols {
            let id = LayerId(cat.alloc_id());
            let size = match rebase.get(slot) {
                Some(m) => m.size,
                None => v.read_state().size,
            };
            new_heads.push(
                self.create_layer(id)
                    .inspect_err(|_| self.drop_layers(&new_heads))?,
            );
            plan.push((slot, v, id, size));
        }
        let snapshot = SnapshotRec {
            id: SnapshotId(cat.alloc_id()),
            name: name.to_owned(),
            owner,
            created: now(),
            kind,
            members: BTreeMap::new(),
        };
        // The barrier: in-flight I/O finishes, new I/O waits.
        let mut guards: Vec<_> = vols.iter().map(|(_, v)| v.barrier()).collect();
        let mut snapshot = snapshot;
        let mut changes = Vec::new();
        for ((slot, v, new_id, size), st) in plan.iter().zip(guards.iter()) {
            let old = st.head().clone();
            if let Err(e) = old.persist() {
                self.drop_layers(&new_heads);
                return Err(StoreError::io(
                    "flushing",
                    format!("volume {:?}", v.name),
                    e,
                ));
            }
            snapshot.members.insert(
                (*slot).clone(),
                MemberRec {
                    volume: v.id,
                    layer: old.id,
                    size: st.size,
                },
            );
            let parent = rebase.get(*slot).map_or(old.id, |m| m.layer);
            changes.push(Change::PutLayer(LayerRec {
                id: *new_id,
                parent: Some(parent),
            }));
            let mut vrec = cat.state.volumes[&v.id].clone();
            vrec.head = *new_id;
            vrec.size = *size;
            changes.push(Change::PutVolume(vrec));
        }
        changes.push(Change::PutSnapshot(snapshot.clone()));
        changes.extend(also(&snapshot));
        let result = cat.commit(changes);
        self.finish_layers(result, &new_heads)?;
        for ((slot, _, new_id, size), st) in plan.iter().zip(guards.iter_mut()) {
            let head = self.layer(*new_id)?;
            let below = match rebase.get(*slot) {
                Some(m) => self.chain(&cat.state, m.layer)?,
                None => st.layers().to_vec(),
            };
            st.set_layers(std::iter::once(head).chain(below).collect());
            st.size = *size;
        }
        drop(guards);
        // Sealed layers never take client writes again; a compact map opens fast.
        // The snapshot is committed; a failed compaction only leaves a longer
        // journal (and a failed layer, which the next flush reports).
        for m in snapshot.members.values() {
            if let Ok(l) = self.layer(m.layer)
                && let Err(e) = l.release_reserve().and_then(|()| l.compact())
            {
                tracing::warn!(layer = %m.layer, error = %e, "compacting a sealed layer's map failed");
            }
        }
        Ok(snapshot)
    }

    pub fn list_snapshots(&self, target: Target<'_>) -> Result<Vec<SnapshotInfo>> {
        let cat = self.catalog();
        let owner = self.owner(&cat.state, target)?;
        let mut out: Vec<_> = cat
            .state
            .snapshots_of(owner)
            .map(|s| snapshot_info(&cat.state, s))
            .collect();
        out.sort_by_key(|s| (s.created, s.id));
        Ok(out)
    }

    pub fn snapshot(&self, target: Target<'_>, name: &str) -> Result<SnapshotInfo> {
        let cat = self.catalog();
        let rec = self.snapshot_rec(&cat.state, target, name)?;
        Ok(snapshot_info(&cat.state, &rec))
    }

    fn snapshot_rec(
        &self,
        state: &crate::catalog::CatalogState,
        target: Target<'_>,
        name: &str,
    ) -> Result<SnapshotRec> {
        let owner = self.owner(state, target)?;
        state
            .snapshot_by_name(owner, name)
            .cloned()
            .ok_or_else(|| StoreError::not_found("snapshot", format!("{}@{name}", target.name())))
    }

    /// Deletes a snapshot. Its layers are merged into their children (or
    /// deleted) while reads and writes go on; a crash at any point resumes at
    /// the next open.
    pub fn delete_snapshot(&self, target: Target<'_>, name: &str) -> Result<()> {
        self.delete_snapshot_record(target, name)?;
        self.collect_garbage()
    }

    /// The first, atomic half of [`Store::delete_snapshot`]: removes the
    /// snapshot and its exports from the catalog in one transaction and
    /// returns what it was.
    /// Once this returns the snapshot is gone for every reader; its space is
    /// given back by the next [`Store::collect_garbage_with`] (or open).
    pub fn delete_snapshot_record(&self, target: Target<'_>, name: &str) -> Result<SnapshotInfo> {
        let mut cat = self.catalog();
        let rec = self.snapshot_rec(&cat.state, target, name)?;
        if Self::replication_holds(&cat.state, rec.id) {
            return Err(StoreError::InUse {
                kind: "snapshot",
                name: format!("{}@{name}", target.name()),
                reason:
                    "replication keeps it as the base of the next cycle; disable replication first"
                        .into(),
            });
        }
        let info = snapshot_info(&cat.state, &rec);
        let mut changes = cat
            .state
            .exports_of(|s| matches!(s, ExportSource::Snapshot { id, .. } if *id == rec.id));
        changes.push(Change::DelSnapshot(rec.id));
        cat.commit(changes)?;
        Ok(info)
    }

    /// Whether a snapshot with this id still exists.
    pub fn snapshot_exists(&self, id: SnapshotId) -> bool {
        self.catalog().state.snapshots.contains_key(&id)
    }

    /// Reads one volume of a snapshot.
    pub fn open_snapshot(
        &self,
        target: Target<'_>,
        name: &str,
        slot: Option<&str>,
    ) -> Result<SnapshotReader> {
        let cat = self.catalog();
        let rec = self.snapshot_rec(&cat.state, target, name)?;
        let member = pick_member(&rec, target, slot)?;
        self.snapshot_reader(&cat.state, member)
    }

    fn snapshot_reader(
        &self,
        state: &crate::catalog::CatalogState,
        member: &MemberRec,
    ) -> Result<SnapshotReader> {
        Ok(SnapshotReader::new(
            self.chain(state, member.layer)?,
            member.size,
        ))
    }

    // ----- clones and sync -----

    /// Clones a group snapshot into a new group whose volumes are named
    /// `NEWGROUP-SLOT`. Costs the same for any volume size.
    pub fn clone_group(&self, group: &str, snapshot: &str, new_group: &str) -> Result<GroupInfo> {
        self.clone_group_tagged(group, snapshot, new_group, BTreeMap::new())
    }

    /// [`clone_group`](Self::clone_group), the new group carrying `tags`.
    pub(crate) fn clone_group_tagged(
        &self,
        group: &str,
        snapshot: &str,
        new_group: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<GroupInfo> {
        validate_name("group", new_group)?;
        let mut cat = self.catalog();
        let rec = self.snapshot_rec(&cat.state, Target::Group(group), snapshot)?;
        if cat.state.group_by_name(new_group).is_some() {
            return Err(StoreError::exists("group", new_group));
        }
        let mut names = Vec::new();
        for slot in rec.members.keys() {
            let vname = format!("{new_group}-{slot}");
            validate_name("volume", &vname)?;
            if cat.state.volume_by_name(&vname).is_some() {
                return Err(StoreError::exists("volume", vname));
            }
            names.push((slot.clone(), vname));
        }
        let mut created = Vec::new();
        let mut changes = Vec::new();
        let mut slots = BTreeMap::new();
        let mut new_vols = Vec::new();
        for (slot, vname) in names {
            let m = &rec.members[&slot];
            let (vrec, layer) = match self.plan_clone(&mut cat, m, &vname) {
                Ok(x) => x,
                Err(e) => {
                    self.drop_layers(&created);
                    return Err(e);
                }
            };
            created.push(layer);
            slots.insert(slot, vrec.id);
            changes.push(Change::PutLayer(LayerRec {
                id: vrec.head,
                parent: Some(m.layer),
            }));
            new_vols.push((vrec.clone(), m.layer));
            changes.push(Change::PutVolume(vrec));
        }
        let grec = GroupRec {
            id: GroupId(cat.alloc_id()),
            name: new_group.to_owned(),
            slots,
            tags,
            created: now(),
            hooks: None,
        };
        changes.push(Change::PutGroup(grec.clone()));
        let result = cat.commit(changes);
        self.finish_layers(result, &created)?;
        for (vrec, _) in new_vols {
            self.open_volume(&cat.state, &vrec)?;
        }
        Ok(group_info(&cat.state, &grec))
    }

    /// Clones one volume of a snapshot into a new volume outside any group.
    pub fn clone_volume(
        &self,
        target: Target<'_>,
        snapshot: &str,
        slot: Option<&str>,
        new_volume: &str,
    ) -> Result<VolumeInfo> {
        validate_name("volume", new_volume)?;
        let mut cat = self.catalog();
        let rec = self.snapshot_rec(&cat.state, target, snapshot)?;
        let m = pick_member(&rec, target, slot)?.clone();
        if cat.state.volume_by_name(new_volume).is_some() {
            return Err(StoreError::exists("volume", new_volume));
        }
        let (vrec, layer) = self.plan_clone(&mut cat, &m, new_volume)?;
        let result = cat.commit(vec![
            Change::PutLayer(LayerRec {
                id: vrec.head,
                parent: Some(m.layer),
            }),
            Change::PutVolume(vrec.clone()),
        ]);
        self.finish_layers(result, &[layer])?;
        self.open_volume(&cat.state, &vrec)?;
        Ok(self.volume_info(&cat.state, &vrec))
    }

    fn plan_clone(
        &self,
        cat: &mut Catalog,
        m: &MemberRec,
        name: &str,
    ) -> Result<(VolumeRec, LayerId)> {
        let id = VolumeId(cat.alloc_id());
        let head = LayerId(cat.alloc_id());
        self.create_layer(head)?;
        Ok((
            VolumeRec {
                id,
                name: name.to_owned(),
                size: m.size,
                head,
                created: now(),
            },
            head,
        ))
    }

    fn open_volume(&self, state: &crate::catalog::CatalogState, rec: &VolumeRec) -> Result<()> {
        let chain = self.chain(state, rec.head)?;
        self.inner.volumes.write().insert(
            rec.id,
            Arc::new(Volume::new(rec.id, rec.name.clone(), rec.size, chain)),
        );
        Ok(())
    }

    /// Checks that [`Store::sync`] with these arguments would be accepted
    /// now, without changing anything (so a caller can refuse bad input at
    /// once and run the sync itself later).
    pub fn check_sync(
        &self,
        source_group: &str,
        snapshot: &str,
        target: &str,
        slots: &[&str],
    ) -> Result<()> {
        let cat = self.catalog();
        self.plan_sync(&cat.state, source_group, snapshot, target, slots)
            .map(|_| ())
    }

    /// The target group and, per slot to replace, the source member.
    fn plan_sync(
        &self,
        state: &crate::catalog::CatalogState,
        source_group: &str,
        snapshot: &str,
        target: &str,
        slots: &[&str],
    ) -> Result<(GroupRec, BTreeMap<String, MemberRec>)> {
        if slots.is_empty() {
            return Err(StoreError::Invalid("a sync needs at least one slot"));
        }
        let src = self.snapshot_rec(state, Target::Group(source_group), snapshot)?;
        let trec = self.group_rec(state, target)?;
        // A source snapshot of the target itself is allowed: it rolls slots back.
        let mut rebase = BTreeMap::new();
        for slot in slots {
            let m = src.members.get(*slot).ok_or_else(|| {
                StoreError::not_found(
                    "slot",
                    format!("{slot} in snapshot {source_group}@{snapshot}"),
                )
            })?;
            if !trec.slots.contains_key(*slot) {
                return Err(StoreError::not_found(
                    "slot",
                    format!("{slot} in group {target}"),
                ));
            }
            rebase.insert(slot.to_string(), m.clone());
        }
        Ok((trec, rebase))
    }

    /// Replaces `slots` of group `target` by clones of the source snapshot's
    /// slots, leaving its other slots as they are. The target's state just
    /// before is kept as an undo snapshot, taken at the same instant.
    pub fn sync(
        &self,
        source_group: &str,
        snapshot: &str,
        target: &str,
        slots: &[&str],
    ) -> Result<SyncReport> {
        let mut cat = self.catalog();
        let (trec, rebase) = self.plan_sync(&cat.state, source_group, snapshot, target, slots)?;
        let base = format!("undo-sync-{}", now() / 1_000_000_000);
        let mut undo = base.clone();
        let mut n = 1;
        while cat
            .state
            .snapshot_by_name(OwnerId::Group(trec.id), &undo)
            .is_some()
        {
            n += 1;
            undo = format!("{base}-{n}");
        }
        let members = trec.slots.clone();
        self.seal(
            &mut cat,
            OwnerId::Group(trec.id),
            &undo,
            SnapshotKind::Crash,
            &members,
            &rebase,
            |_| Vec::new(),
        )?;
        Ok(SyncReport {
            undo_snapshot: undo,
            slots: rebase.into_keys().collect(),
        })
    }

    // ----- diffs and space -----

    /// Blocks changed between snapshot `from` and `to` (a later snapshot of
    /// the same group or volume, or the live volumes), per slot, computed
    /// from allocation maps alone. A slot missing in `from` reports every
    /// block its newer side defines.
    pub fn diff(
        &self,
        target: Target<'_>,
        from: &str,
        to: DiffEnd<'_>,
    ) -> Result<BTreeMap<String, RoaringBitmap>> {
        let cat = self.catalog();
        let old = self.snapshot_rec(&cat.state, target, from)?;
        let new_tops: BTreeMap<String, LayerId> = match to {
            DiffEnd::Snapshot(name) => self
                .snapshot_rec(&cat.state, target, name)?
                .members
                .into_iter()
                .map(|(slot, m)| (slot, m.layer))
                .collect(),
            DiffEnd::Live => {
                let owner = self.owner(&cat.state, target)?;
                self.current_members(&cat.state, owner)
                    .into_iter()
                    .filter_map(|(slot, v)| cat.state.volumes.get(&v).map(|r| (slot, r.head)))
                    .collect()
            }
        };
        let mut out = BTreeMap::new();
        for (slot, top) in new_tops {
            let lineage = cat.state.lineage(top);
            let stop = old.members.get(&slot).map(|m| m.layer);
            let upto = match stop {
                Some(stop) => lineage.iter().position(|l| *l == stop).ok_or_else(|| {
                    StoreError::NotAncestor {
                        older: format!("{}@{from}", target.name()),
                        newer: match to {
                            DiffEnd::Snapshot(n) => format!("{}@{n}", target.name()),
                            DiffEnd::Live => format!("{} (live), slot {slot:?}", target.name()),
                        },
                    }
                })?,
                None => lineage.len(),
            };
            let mut set = RoaringBitmap::new();
            for id in &lineage[..upto] {
                self.layer(*id)?.with_map(|m| set |= &m.present);
            }
            out.insert(slot, set);
        }
        Ok(out)
    }

    /// Space of every volume, by name.
    pub fn space(&self) -> Vec<SpaceInfo> {
        let volumes: Vec<_> = self.inner.volumes.read().values().cloned().collect();
        let mut out: Vec<_> = volumes
            .iter()
            .map(|v| {
                let st = v.read_state();
                let mut covered = RoaringBitmap::new();
                let (mut allocated, mut hidden) = (0u64, 0u64);
                for (i, layer) in st.layers().iter().enumerate() {
                    layer.with_map(|m| {
                        let data = &m.present - &m.zeroed;
                        let shown = &data - &covered;
                        allocated += shown.len();
                        if i > 0 {
                            hidden += data.intersection_len(&covered);
                        }
                        covered |= &m.present;
                    });
                }
                SpaceInfo {
                    volume: v.name.clone(),
                    logical: st.size,
                    allocated: allocated * BLOCK_SIZE,
                    snapshot_only: hidden * BLOCK_SIZE,
                }
            })
            .collect();
        out.sort_by(|a, b| a.volume.cmp(&b.volume));
        out
    }

    // ----- layers and garbage collection -----

    fn create_layer(&self, id: LayerId) -> Result<LayerId> {
        let layer = Layer::create(&self.inner.storage, id).map_err(|e| {
            let _ = Layer::remove_files(&self.inner.storage, id);
            StoreError::io("creating", id, e)
        })?;
        self.inner.layers.write().insert(id, Arc::new(layer));
        Ok(id)
    }

    /// After a commit: on failure, forget and remove the layers made for it.
    fn finish_layers(&self, result: Result<()>, created: &[LayerId]) -> Result<()> {
        if result.is_err() {
            self.drop_layers(created);
        }
        result
    }

    fn drop_layers(&self, created: &[LayerId]) {
        for id in created {
            self.inner.layers.write().remove(id);
            let _ = Layer::remove_files(&self.inner.storage, *id);
        }
    }

    fn layer(&self, id: LayerId) -> Result<Arc<Layer>> {
        self.inner
            .layers
            .read()
            .get(&id)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt {
                what: "layer registry".into(),
                detail: format!("{id} is not open"),
            })
    }

    fn vol(&self, id: VolumeId) -> Result<Arc<Volume>> {
        self.inner
            .volumes
            .read()
            .get(&id)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt {
                what: "volume registry".into(),
                detail: format!("{id} is not open"),
            })
    }

    fn chain(&self, state: &crate::catalog::CatalogState, top: LayerId) -> Result<Vec<Arc<Layer>>> {
        state
            .lineage(top)
            .into_iter()
            .map(|id| self.layer(id))
            .collect()
    }

    /// Deletes layers nothing needs and merges layers only one child needs,
    /// until neither is left. Runs after deletions and at open; idempotent.
    pub fn collect_garbage(&self) -> Result<()> {
        self.collect_garbage_with(&Progress::new()).map(|_| ())
    }

    /// [`Store::collect_garbage`], reporting blocks merged into `progress`
    /// (`total` is what is done plus what is left, re-estimated before every
    /// step) and stopping at the next checkpoint once it is cancelled:
    /// between steps, and between merge chunks. A stopped merge leaves the
    /// blocks it copied in the child, which the parent showed anyway; the
    /// next collection skips them.
    pub fn collect_garbage_with(&self, progress: &Progress) -> Result<GcOutcome> {
        let _gc = self.inner.gc.lock();
        loop {
            let step = {
                let cat = self.catalog();
                let left = self.gc_estimate(&cat.state)?;
                progress.set_total(progress.done() + left);
                plan_gc(&cat.state)
            };
            let Some(step) = step else {
                return Ok(GcOutcome::Finished);
            };
            if progress.checkpoint() {
                return Ok(GcOutcome::Cancelled);
            }
            match step {
                GcStep::Delete(id) => {
                    self.inner
                        .catalog
                        .lock()
                        .commit(vec![Change::DelLayer(id)])?;
                    self.inner.layers.write().remove(&id);
                    Layer::remove_files(&self.inner.storage, id).map_err(io_err("removing", id))?;
                }
                GcStep::Merge { from, into } => {
                    let done = if self.absorbs(from, into)? {
                        self.absorb(from, into, progress)?
                    } else {
                        self.merge(from, into, progress)?
                    };
                    if !done {
                        return Ok(GcOutcome::Cancelled);
                    }
                }
            }
        }
    }

    /// Blocks the merges garbage collection can plan now would copy.
    fn gc_estimate(&self, state: &crate::catalog::CatalogState) -> Result<u64> {
        let mut left = 0;
        for (from, into) in gc_merges(state) {
            let (src, dst) = (self.layer(from)?, self.layer(into)?);
            left += if self.absorbs(from, into)? {
                dst.with_map(|d| d.present.len())
            } else {
                src.with_map(|s| {
                    dst.with_map(|d| s.present.len() - s.present.intersection_len(&d.present))
                })
            };
        }
        Ok(left)
    }

    /// Whether the merge of `from` into its only child `into` goes the
    /// other way: the child's blocks into `from`, which then takes the
    /// child's place. Only for a sealed child (no volume's head: nothing
    /// writes it) that holds fewer blocks than `from` — a snapshot taken
    /// after a large one, as replication's points are — so the copy costs
    /// the small side; and only when no snapshot reader (an export of the
    /// deleted snapshot, still open) reads `from` as its top.
    fn absorbs(&self, from: LayerId, into: LayerId) -> Result<bool> {
        let head = self
            .inner
            .volumes
            .read()
            .values()
            .any(|v| v.read_state().head().id == into);
        if head {
            return Ok(false);
        }
        let (src, dst) = (self.layer(from)?, self.layer(into)?);
        // A reader of the deleted snapshot still reads `from` as it is:
        // the child's blocks must not be copied over it.
        if src.readers() > 0 {
            return Ok(false);
        }
        Ok(dst.with_map(|d| d.present.len()) < src.with_map(|s| s.present.len()))
    }

    /// Copies every block of the sealed layer `child` into its parent
    /// `parent` (nothing else reads `parent`: its snapshot was deleted and
    /// `child` hides those blocks from every chain through it), then
    /// `parent` takes `child`'s place in one catalog transaction. A crash
    /// before it changes nothing seen; the next collection starts over.
    /// Returns false when `progress` was cancelled at a chunk boundary.
    fn absorb(&self, parent: LayerId, child: LayerId, progress: &Progress) -> Result<bool> {
        let (dst, src) = (self.layer(parent)?, self.layer(child)?);
        let todo = src.with_map(|m| m.present.clone());
        let mut buf = vec![0u8; MERGE_CHUNK * BLOCK];
        let mut iter = todo.iter().peekable();
        while iter.peek().is_some() {
            if progress.checkpoint() {
                dst.persist().map_err(io_err("merging into", parent))?;
                return Ok(false);
            }
            let chunk: Vec<u32> = iter.by_ref().take(MERGE_CHUNK).collect();
            copy_blocks(&src, &dst, &chunk, false, &mut buf)?;
            progress.add_done(chunk.len() as u64);
        }
        dst.persist().map_err(io_err("merging into", parent))?;
        dst.release_reserve()
            .map_err(io_err("merging into", parent))?;
        {
            let mut cat = self.catalog();
            let still = cat
                .state
                .layers
                .get(&child)
                .is_some_and(|l| l.parent == Some(parent));
            let head = cat.state.volumes.values().any(|v| v.head == child);
            if !still || head {
                return Err(StoreError::Corrupt {
                    what: format!("merge of {child} into {parent}"),
                    detail: "the child changed during the merge".into(),
                });
            }
            let mut changes: Vec<Change> = cat
                .state
                .layers
                .values()
                .filter(|l| l.parent == Some(child))
                .map(|l| {
                    Change::PutLayer(LayerRec {
                        id: l.id,
                        parent: Some(parent),
                    })
                })
                .collect();
            for snap in cat.state.snapshots.values() {
                if snap.members.values().any(|m| m.layer == child) {
                    let mut s2 = snap.clone();
                    for m in s2.members.values_mut() {
                        if m.layer == child {
                            m.layer = parent;
                        }
                    }
                    changes.push(Change::PutSnapshot(s2));
                }
            }
            changes.push(Change::DelLayer(child));
            cat.commit(changes)?;
            let volumes: Vec<_> = self.inner.volumes.read().values().cloned().collect();
            for v in volumes {
                v.barrier().remove_layer(child);
            }
        }
        self.inner.layers.write().remove(&child);
        Layer::remove_files(&self.inner.storage, child).map_err(io_err("removing", child))?;
        dst.compact().map_err(io_err("compacting", parent))?;
        Ok(true)
    }

    /// Merges layer `from` into its only child `into`: copies every block of
    /// `from` that `into` does not define, then `into` takes `from`'s place.
    /// The copy holds `into`'s volume barrier a chunk at a time, so I/O goes
    /// on. Until the catalog commit, the chain still holds `from`, and every
    /// block copied is one `from` already showed: a crash changes nothing seen.
    /// Returns false when `progress` was cancelled at a chunk boundary (the
    /// blocks copied so far are persisted; `from` stays in the chain).
    fn merge(&self, from: LayerId, into: LayerId, progress: &Progress) -> Result<bool> {
        let (src, dst) = (self.layer(from)?, self.layer(into)?);
        let todo = src.with_map(|s| dst.with_map(|d| &s.present - &d.present));
        let mut buf = vec![0u8; MERGE_CHUNK * BLOCK];
        let mut iter = todo.iter().peekable();
        while iter.peek().is_some() {
            // No lock is held here: stopping leaves a correct store.
            if progress.checkpoint() {
                dst.persist().map_err(io_err("merging into", into))?;
                return Ok(false);
            }
            let chunk: Vec<u32> = iter.by_ref().take(MERGE_CHUNK).collect();
            let owner = self
                .inner
                .volumes
                .read()
                .values()
                .find(|v| v.read_state().head().id == into)
                .cloned();
            let barrier = owner.as_ref().map(|v| v.barrier());
            copy_blocks(&src, &dst, &chunk, true, &mut buf)?;
            drop(barrier);
            progress.add_done(chunk.len() as u64);
        }
        dst.persist().map_err(io_err("merging into", into))?;
        let into_is_head = self
            .inner
            .volumes
            .read()
            .values()
            .any(|v| v.read_state().head().id == into);
        if !into_is_head {
            // A sealed layer takes no more writes after this merge.
            dst.release_reserve()
                .map_err(io_err("merging into", into))?;
        }
        {
            let mut cat = self.catalog();
            let parent = cat.state.layers.get(&from).and_then(|l| l.parent);
            let still = cat
                .state
                .layers
                .get(&into)
                .is_some_and(|l| l.parent == Some(from));
            if !still {
                return Err(StoreError::Corrupt {
                    what: format!("merge of {from} into {into}"),
                    detail: "the child changed during the merge".into(),
                });
            }
            cat.commit(vec![
                Change::PutLayer(LayerRec { id: into, parent }),
                Change::DelLayer(from),
            ])?;
            let volumes: Vec<_> = self.inner.volumes.read().values().cloned().collect();
            for v in volumes {
                v.barrier().remove_layer(from);
            }
        }
        self.inner.layers.write().remove(&from);
        Layer::remove_files(&self.inner.storage, from).map_err(io_err("removing", from))?;
        dst.compact().map_err(io_err("compacting", into))?;
        Ok(true)
    }
}

/// Layers nothing needs (no head, no snapshot member), each with its
/// children: what garbage collection works on.
fn gc_candidates(state: &crate::catalog::CatalogState) -> Vec<(LayerId, Vec<LayerId>)> {
    let mut needed: BTreeSet<LayerId> = state.volumes.values().map(|v| v.head).collect();
    for s in state.snapshots.values() {
        needed.extend(s.members.values().map(|m| m.layer));
    }
    let mut children: BTreeMap<LayerId, Vec<LayerId>> = BTreeMap::new();
    for l in state.layers.values() {
        if let Some(p) = l.parent {
            children.entry(p).or_default().push(l.id);
        }
    }
    state
        .layers
        .keys()
        .filter(|id| !needed.contains(id))
        .map(|id| (*id, children.remove(id).unwrap_or_default()))
        .collect()
}

/// Every merge garbage collection could plan now: a layer nothing needs
/// into its only child.
/// Copies `blocks` (ascending) of `src` into `dst`, consecutive blocks of
/// one kind at once: data as data, zeros as zeros. With `only_absent`, a
/// block `dst` defines already is left as it is (a merge into the child);
/// without, `dst`'s is replaced (the child absorbed into its parent).
fn copy_blocks(
    src: &Layer,
    dst: &Layer,
    blocks: &[u32],
    only_absent: bool,
    buf: &mut [u8],
) -> Result<()> {
    let wanted = |b: u32| !only_absent || dst.state(b) == BlockState::Absent;
    let mut i = 0;
    while i < blocks.len() {
        let b = blocks[i];
        if !wanted(b) {
            i += 1;
            continue;
        }
        let kind = src.state(b);
        let mut j = i + 1;
        while j < blocks.len()
            && blocks[j] == blocks[j - 1] + 1
            && src.state(blocks[j]) == kind
            && wanted(blocks[j])
        {
            j += 1;
        }
        let len = (j - i) as u32;
        match kind {
            BlockState::Zero => dst.zero_blocks(b, len),
            BlockState::Absent => {}
            BlockState::Data => {
                let n = (j - i) * BLOCK;
                src.read(&mut buf[..n], u64::from(b) * BLOCK_SIZE)
                    .map_err(io_err("merging", src.id))?;
                dst.write_blocks(b, &buf[..n])
                    .map_err(io_err("merging into", dst.id))?;
            }
        }
        i = j;
    }
    Ok(())
}

fn gc_merges(state: &crate::catalog::CatalogState) -> Vec<(LayerId, LayerId)> {
    gc_candidates(state)
        .into_iter()
        .filter_map(|(id, children)| match children.as_slice() {
            [only] => Some((id, *only)),
            _ => None,
        })
        .collect()
}

/// The next garbage-collection step, if any.
fn plan_gc(state: &crate::catalog::CatalogState) -> Option<GcStep> {
    gc_candidates(state)
        .into_iter()
        .find_map(|(id, children)| match children.as_slice() {
            [] => Some(GcStep::Delete(id)),
            [only] => Some(GcStep::Merge {
                from: id,
                into: *only,
            }),
            _ => None,
        })
}

fn pick_member<'a>(
    rec: &'a SnapshotRec,
    target: Target<'_>,
    slot: Option<&str>,
) -> Result<&'a MemberRec> {
    match (target, slot) {
        (Target::Volume(_), _) | (Target::Group(_), None) if rec.members.len() == 1 => {
            Ok(rec.members.values().next().expect("one member"))
        }
        (Target::Group(_), Some(slot)) => rec.members.get(slot).ok_or_else(|| {
            StoreError::not_found(
                "slot",
                format!("{slot} in snapshot {}@{}", target.name(), rec.name),
            )
        }),
        _ => Err(StoreError::Invalid(
            "the snapshot has several slots; name one",
        )),
    }
}

fn group_info(state: &crate::catalog::CatalogState, g: &GroupRec) -> GroupInfo {
    GroupInfo {
        id: g.id,
        name: g.name.clone(),
        slots: g
            .slots
            .iter()
            .map(|(slot, v)| {
                let name = state
                    .volumes
                    .get(v)
                    .map_or_else(|| v.to_string(), |r| r.name.clone());
                (slot.clone(), name)
            })
            .collect(),
        tags: g.tags.clone(),
        created: g.created,
        hooks: g.hooks.clone(),
    }
}

fn snapshot_info(state: &crate::catalog::CatalogState, s: &SnapshotRec) -> SnapshotInfo {
    let (owner_kind, owner) = match s.owner {
        OwnerId::Group(g) => (
            "group",
            state
                .groups
                .get(&g)
                .map_or_else(|| g.to_string(), |r| r.name.clone()),
        ),
        OwnerId::Volume(v) => (
            "volume",
            state
                .volumes
                .get(&v)
                .map_or_else(|| v.to_string(), |r| r.name.clone()),
        ),
    };
    SnapshotInfo {
        id: s.id,
        name: s.name.clone(),
        owner_kind,
        owner,
        created: s.created,
        kind: s.kind,
        members: s
            .members
            .iter()
            .map(|(slot, m)| {
                let volume = state
                    .volumes
                    .get(&m.volume)
                    .map_or_else(|| m.volume.to_string(), |r| r.name.clone());
                (
                    slot.clone(),
                    MemberInfo {
                        volume,
                        size: m.size,
                    },
                )
            })
            .collect(),
    }
}
