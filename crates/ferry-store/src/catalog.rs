//! The catalog: volumes, groups, layers, snapshots and exports, kept in redb.
//!
//! The whole catalog is loaded into memory at open ([`CatalogState`]); every
//! change is a list of [`Change`]s written in one redb transaction and applied
//! to memory only after it committed. Records are JSON values under `u64`
//! keys, one table per kind. redb runs on the engine's [`Storage`] through
//! [`RedbFile`], so crash and fault tests cover the catalog too. A table a
//! catalog lacks (one written before that kind of record existed, like
//! `exports`, `partners`, `replications`) is created empty at open.
//!
//! The site's own record (its name) is one row of `site` under the key
//! `"self"`; partners and pairing tokens are rows like the other objects.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{Result, StoreError};
use crate::storage::{Storage, StorageFile};
use crate::types::{ExportId, GroupId, LayerId, SnapshotId, SnapshotKind, VolumeId};

/// The catalog file's name in the store's directory.
pub const CATALOG_FILE: &str = "catalog.redb";
/// Bumped on any incompatible change of the records below.
pub const CATALOG_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const VOLUMES: TableDefinition<u64, &[u8]> = TableDefinition::new("volumes");
const GROUPS: TableDefinition<u64, &[u8]> = TableDefinition::new("groups");
const LAYERS: TableDefinition<u64, &[u8]> = TableDefinition::new("layers");
const SNAPSHOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshots");
const EXPORTS: TableDefinition<u64, &[u8]> = TableDefinition::new("exports");
const SITE: TableDefinition<&str, &[u8]> = TableDefinition::new("site");
const PARTNERS: TableDefinition<u64, &[u8]> = TableDefinition::new("partners");
const PAIR_TOKENS: TableDefinition<u64, &[u8]> = TableDefinition::new("pair_tokens");
const REPLICATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("replications");
/// The key of the site's own record in `site`.
const SITE_SELF: &str = "self";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct VolumeRec {
    pub id: VolumeId,
    pub name: String,
    pub size: u64,
    pub head: LayerId,
    pub created: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct GroupRec {
    pub id: GroupId,
    pub name: String,
    pub slots: BTreeMap<String, VolumeId>,
    pub tags: BTreeMap<String, String>,
    pub created: u64,
    /// Commands that freeze and thaw the group's application around an
    /// application-consistent snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<crate::store::GroupHooks>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct LayerRec {
    pub id: LayerId,
    pub parent: Option<LayerId>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OwnerId {
    Group(GroupId),
    Volume(VolumeId),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct MemberRec {
    pub volume: VolumeId,
    pub layer: LayerId,
    pub size: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct SnapshotRec {
    pub id: SnapshotId,
    pub name: String,
    pub owner: OwnerId,
    pub created: u64,
    pub kind: SnapshotKind,
    /// Slot name (empty for a lone volume's snapshot) to the member.
    pub members: BTreeMap<String, MemberRec>,
}

/// What an export serves, by id, so that it follows its object whatever
/// names change.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ExportSource {
    /// A live volume, read-write.
    Volume(VolumeId),
    /// One member of a snapshot, read-only; `slot` is `""` for a lone
    /// volume's snapshot.
    Snapshot { id: SnapshotId, slot: String },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct ExportRec {
    pub id: ExportId,
    pub name: String,
    pub source: ExportSource,
    pub created: u64,
}

/// This site's identity as kept in the catalog.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct SiteRec {
    pub name: String,
}

/// A paired remote site.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct PartnerRec {
    pub id: u64,
    pub name: String,
    /// Its CA certificate, PEM: what its client and server certificates
    /// must chain to.
    pub ca_pem: String,
    /// SHA-256 of its CA certificate's DER, colon-separated hex.
    pub ca_fingerprint: String,
    /// Its partner listener, `HOST:PORT`.
    pub address: String,
    pub paired: u64,
    /// Bytes per second at most, for all replication to it together.
    #[serde(default)]
    pub bandwidth: Option<u64>,
}

/// A pairing token this site handed out: only the hash of its secret.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct PairTokenRec {
    pub id: u64,
    /// BLAKE3 of the secret, hex.
    pub secret_hash: String,
    pub created: u64,
    /// Nanoseconds since the Unix epoch after which it is refused.
    pub expires: u64,
}

/// A group's replication: as the source (this site sends its snapshots)
/// or as the replica (this site receives them into recovery points).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct ReplicationRec {
    pub id: u64,
    pub group: GroupId,
    /// The partner's name here.
    pub partner: String,
    pub role: ReplicationRole,
    pub settings: crate::store::ReplicationSettings,
    pub paused: bool,
    pub created: u64,
    /// Source: the next cycle's number. Replica: unused.
    pub next_cycle: u64,
    /// Source: the snapshot the partner acknowledged last (the next cycle's
    /// base). Replica: the latest recovery point.
    pub base: Option<SnapshotId>,
    /// Source: the cycle being sent, and its snapshot.
    pub pending: Option<PendingCycle>,
    /// Replica: the cycle being received, and how far it durably got.
    pub partial: Option<crate::store::PartialCycle>,
    /// Replica: each recovery point's snapshot id at the source.
    #[serde(default)]
    pub source_ids: BTreeMap<SnapshotId, u64>,
    /// Replica: when the source took each recovery point.
    #[serde(default)]
    pub source_created: BTreeMap<SnapshotId, u64>,
    /// Source: the acknowledged points it keeps (the replica keeps the same
    /// ones), so a failover to an older point can be reversed by a delta.
    #[serde(default)]
    pub points: Vec<SnapshotId>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ReplicationRole {
    Source,
    Replica,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct PendingCycle {
    pub cycle: u64,
    pub snapshot: SnapshotId,
}

/// One change of a catalog transaction.
#[derive(Debug)]
pub(crate) enum Change {
    PutVolume(VolumeRec),
    DelVolume(VolumeId),
    PutGroup(GroupRec),
    DelGroup(GroupId),
    PutLayer(LayerRec),
    DelLayer(LayerId),
    PutSnapshot(SnapshotRec),
    DelSnapshot(SnapshotId),
    PutExport(ExportRec),
    DelExport(ExportId),
    PutSite(SiteRec),
    PutPartner(PartnerRec),
    DelPartner(u64),
    PutPairToken(PairTokenRec),
    DelPairToken(u64),
    PutReplication(ReplicationRec),
    DelReplication(u64),
}

/// The catalog as loaded in memory.
#[derive(Debug, Default)]
pub(crate) struct CatalogState {
    pub next_id: u64,
    pub volumes: BTreeMap<VolumeId, VolumeRec>,
    pub groups: BTreeMap<GroupId, GroupRec>,
    pub layers: BTreeMap<LayerId, LayerRec>,
    pub snapshots: BTreeMap<SnapshotId, SnapshotRec>,
    pub exports: BTreeMap<ExportId, ExportRec>,
    pub site: Option<SiteRec>,
    pub partners: BTreeMap<u64, PartnerRec>,
    pub pair_tokens: BTreeMap<u64, PairTokenRec>,
    pub replications: BTreeMap<u64, ReplicationRec>,
}

impl CatalogState {
    fn apply(&mut self, change: Change) {
        match change {
            Change::PutVolume(r) => {
                self.volumes.insert(r.id, r);
            }
            Change::DelVolume(id) => {
                self.volumes.remove(&id);
            }
            Change::PutGroup(r) => {
                self.groups.insert(r.id, r);
            }
            Change::DelGroup(id) => {
                self.groups.remove(&id);
            }
            Change::PutLayer(r) => {
                self.layers.insert(r.id, r);
            }
            Change::DelLayer(id) => {
                self.layers.remove(&id);
            }
            Change::PutSnapshot(r) => {
                self.snapshots.insert(r.id, r);
            }
            Change::DelSnapshot(id) => {
                self.snapshots.remove(&id);
            }
            Change::PutExport(r) => {
                self.exports.insert(r.id, r);
            }
            Change::DelExport(id) => {
                self.exports.remove(&id);
            }
            Change::PutSite(r) => self.site = Some(r),
            Change::PutPartner(r) => {
                self.partners.insert(r.id, r);
            }
            Change::DelPartner(id) => {
                self.partners.remove(&id);
            }
            Change::PutPairToken(r) => {
                self.pair_tokens.insert(r.id, r);
            }
            Change::DelPairToken(id) => {
                self.pair_tokens.remove(&id);
            }
            Change::PutReplication(r) => {
                self.replications.insert(r.id, r);
            }
            Change::DelReplication(id) => {
                self.replications.remove(&id);
            }
        }
    }

    pub fn volume_by_name(&self, name: &str) -> Option<&VolumeRec> {
        self.volumes.values().find(|v| v.name == name)
    }

    pub fn group_by_name(&self, name: &str) -> Option<&GroupRec> {
        self.groups.values().find(|g| g.name == name)
    }

    pub fn group_of(&self, volume: VolumeId) -> Option<(&GroupRec, &str)> {
        self.groups.values().find_map(|g| {
            g.slots
                .iter()
                .find(|(_, v)| **v == volume)
                .map(|(slot, _)| (g, slot.as_str()))
        })
    }

    pub fn snapshots_of(&self, owner: OwnerId) -> impl Iterator<Item = &SnapshotRec> {
        self.snapshots.values().filter(move |s| s.owner == owner)
    }

    pub fn snapshot_by_name(&self, owner: OwnerId, name: &str) -> Option<&SnapshotRec> {
        self.snapshots_of(owner).find(|s| s.name == name)
    }

    pub fn export_by_name(&self, name: &str) -> Option<&ExportRec> {
        self.exports.values().find(|e| e.name == name)
    }

    /// Removals of the exports that serve a volume or a snapshot being
    /// deleted, for the same transaction.
    pub fn exports_of(&self, source: impl Fn(&ExportSource) -> bool) -> Vec<Change> {
        self.exports
            .values()
            .filter(|e| source(&e.source))
            .map(|e| Change::DelExport(e.id))
            .collect()
    }

    /// The layer ids from `top` down to the bottom of its chain.
    pub fn lineage(&self, top: LayerId) -> Vec<LayerId> {
        let mut out = vec![top];
        let mut cur = top;
        while let Some(parent) = self.layers.get(&cur).and_then(|l| l.parent) {
            out.push(parent);
            cur = parent;
        }
        out
    }
}

/// The catalog database and its in-memory copy.
#[derive(Debug)]
pub(crate) struct Catalog {
    db: redb::Database,
    pub state: CatalogState,
    /// Set by a commit that removed or replaced an export; taken by whoever
    /// tells the export listeners once the catalog lock is released.
    exports_changed: bool,
}

fn decode<T: DeserializeOwned>(table: &'static str, key: u64, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what: format!("catalog record {table}/{key}"),
        detail: e.to_string(),
    })
}

fn encode<T: Serialize>(rec: &T) -> Vec<u8> {
    serde_json::to_vec(rec).expect("catalog records always serialize")
}

impl Catalog {
    pub fn open(storage: &Arc<dyn Storage>) -> Result<Catalog> {
        let file = storage
            .open_file(CATALOG_FILE, true)
            .map_err(|e| StoreError::io("opening", CATALOG_FILE, e))?;
        let db = redb::Builder::new()
            .create_with_backend(RedbFile(file))
            .map_err(|e| StoreError::catalog("opening the catalog", e))?;
        let mut catalog = Catalog {
            db,
            state: CatalogState::default(),
            exports_changed: false,
        };
        catalog.load()?;
        Ok(catalog)
    }

    fn load(&mut self) -> Result<()> {
        let err = |e: redb::Error| StoreError::catalog("loading the catalog", e);
        {
            let tx = self.db.begin_write().map_err(|e| err(e.into()))?;
            {
                let mut meta = tx.open_table(META).map_err(|e| err(e.into()))?;
                let version = meta
                    .get("version")
                    .map_err(|e| err(e.into()))?
                    .map(|v| v.value());
                match version {
                    None => {
                        meta.insert("version", CATALOG_VERSION)
                            .map_err(|e| err(e.into()))?;
                        meta.insert("next_id", 1).map_err(|e| err(e.into()))?;
                    }
                    Some(CATALOG_VERSION) => {}
                    Some(v) => {
                        return Err(StoreError::Corrupt {
                            what: "catalog".into(),
                            detail: format!(
                                "version {v} is not supported (this ferry reads {CATALOG_VERSION})"
                            ),
                        });
                    }
                }
                for t in [
                    VOLUMES,
                    GROUPS,
                    LAYERS,
                    SNAPSHOTS,
                    EXPORTS,
                    PARTNERS,
                    PAIR_TOKENS,
                    REPLICATIONS,
                ] {
                    tx.open_table(t).map_err(|e| err(e.into()))?;
                }
                tx.open_table(SITE).map_err(|e| err(e.into()))?;
            }
            tx.commit().map_err(|e| err(e.into()))?;
        }
        let tx = self.db.begin_read().map_err(|e| err(e.into()))?;
        let meta = tx.open_table(META).map_err(|e| err(e.into()))?;
        self.state.next_id = meta
            .get("next_id")
            .map_err(|e| err(e.into()))?
            .map(|v| v.value())
            .unwrap_or(1);
        macro_rules! load_table {
            ($def:expr, $name:literal, $field:ident, $id:ident) => {{
                let table = tx.open_table($def).map_err(|e| err(e.into()))?;
                for row in table.iter().map_err(|e| err(e.into()))? {
                    let (k, v) = row.map_err(|e| err(e.into()))?;
                    let rec = decode($name, k.value(), v.value())?;
                    self.state.$field.insert($id(k.value()), rec);
                }
            }};
        }
        load_table!(VOLUMES, "volumes", volumes, VolumeId);
        load_table!(GROUPS, "groups", groups, GroupId);
        load_table!(LAYERS, "layers", layers, LayerId);
        load_table!(SNAPSHOTS, "snapshots", snapshots, SnapshotId);
        load_table!(EXPORTS, "exports", exports, ExportId);
        let plain = |k: u64| k;
        load_table!(PARTNERS, "partners", partners, plain);
        load_table!(PAIR_TOKENS, "pair_tokens", pair_tokens, plain);
        load_table!(REPLICATIONS, "replications", replications, plain);
        let site = tx.open_table(SITE).map_err(|e| err(e.into()))?;
        if let Some(v) = site.get(SITE_SELF).map_err(|e| err(e.into()))? {
            self.state.site = Some(decode("site", 0, v.value())?);
        }
        Ok(())
    }

    /// A fresh id for any object; ids are never reused once committed.
    pub fn alloc_id(&mut self) -> u64 {
        let id = self.state.next_id;
        self.state.next_id += 1;
        id
    }

    /// Writes `changes` in one transaction, then applies them in memory.
    pub fn commit(&mut self, changes: Vec<Change>) -> Result<()> {
        let err = |e: redb::Error| StoreError::catalog("committing a catalog change", e);
        let tx = self.db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| err(e.into()))?;
            meta.insert("next_id", self.state.next_id)
                .map_err(|e| err(e.into()))?;
            let mut volumes = tx.open_table(VOLUMES).map_err(|e| err(e.into()))?;
            let mut groups = tx.open_table(GROUPS).map_err(|e| err(e.into()))?;
            let mut layers = tx.open_table(LAYERS).map_err(|e| err(e.into()))?;
            let mut snapshots = tx.open_table(SNAPSHOTS).map_err(|e| err(e.into()))?;
            let mut exports = tx.open_table(EXPORTS).map_err(|e| err(e.into()))?;
            let mut site = tx.open_table(SITE).map_err(|e| err(e.into()))?;
            let mut partners = tx.open_table(PARTNERS).map_err(|e| err(e.into()))?;
            let mut pair_tokens = tx.open_table(PAIR_TOKENS).map_err(|e| err(e.into()))?;
            let mut replications = tx.open_table(REPLICATIONS).map_err(|e| err(e.into()))?;
            for change in &changes {
                let r = match change {
                    Change::PutVolume(r) => volumes.insert(r.id.0, encode(r).as_slice()).map(drop),
                    Change::DelVolume(id) => volumes.remove(id.0).map(drop),
                    Change::PutGroup(r) => groups.insert(r.id.0, encode(r).as_slice()).map(drop),
                    Change::DelGroup(id) => groups.remove(id.0).map(drop),
                    Change::PutLayer(r) => layers.insert(r.id.0, encode(r).as_slice()).map(drop),
                    Change::DelLayer(id) => layers.remove(id.0).map(drop),
                    Change::PutSnapshot(r) => {
                        snapshots.insert(r.id.0, encode(r).as_slice()).map(drop)
                    }
                    Change::DelSnapshot(id) => snapshots.remove(id.0).map(drop),
                    Change::PutExport(r) => exports.insert(r.id.0, encode(r).as_slice()).map(drop),
                    Change::DelExport(id) => exports.remove(id.0).map(drop),
                    Change::PutSite(r) => site.insert(SITE_SELF, encode(r).as_slice()).map(drop),
                    Change::PutPartner(r) => partners.insert(r.id, encode(r).as_slice()).map(drop),
                    Change::DelPartner(id) => partners.remove(*id).map(drop),
                    Change::PutPairToken(r) => {
                        pair_tokens.insert(r.id, encode(r).as_slice()).map(drop)
                    }
                    Change::DelPairToken(id) => pair_tokens.remove(*id).map(drop),
                    Change::PutReplication(r) => {
                        replications.insert(r.id, encode(r).as_slice()).map(drop)
                    }
                    Change::DelReplication(id) => replications.remove(*id).map(drop),
                };
                r.map_err(|e| err(e.into()))?;
            }
        }
        tx.commit().map_err(|e| err(e.into()))?;
        for change in changes {
            self.exports_changed |= match &change {
                Change::DelExport(id) => self.state.exports.contains_key(id),
                Change::PutExport(r) => self.state.exports.contains_key(&r.id),
                // A group turned replica or frozen: its volumes' exports
                // turn read-only.
                Change::PutGroup(r) => self
                    .state
                    .groups
                    .get(&r.id)
                    .is_some_and(|old| old.tags != r.tags),
                _ => false,
            };
            self.state.apply(change);
        }
        Ok(())
    }

    /// Whether a commit since the last call removed or replaced an export.
    pub fn take_exports_changed(&mut self) -> bool {
        std::mem::take(&mut self.exports_changed)
    }
}

/// redb's storage backend on one of our [`StorageFile`]s.
#[derive(Debug)]
pub(crate) struct RedbFile(pub Arc<dyn StorageFile>);

impl redb::StorageBackend for RedbFile {
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let len = self.0.len()?;
        if offset + out.len() as u64 > len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end of the catalog",
            ));
        }
        self.0.read_at(out, offset)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write_at(data, offset)
    }
}
