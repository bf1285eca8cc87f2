//! ferry's storage engine.
//!
//! It owns volumes (virtual disks of 4 KiB blocks), groups (the disks of one
//! VM as named slots), snapshots of a group at one instant, clones of
//! snapshots, sync (production slots into a test group), diffs between
//! snapshots, space accounting, and exports (the NBD names of volumes and
//! snapshots, as catalog records; serving them is `ferry-nbd`'s). It is synchronous and thread-safe; async
//! lives at the network edges, in other crates.
//!
//! A volume is a chain of layers ([`layer`]): the head takes writes, sealed
//! layers below it are immutable. A snapshot seals the heads of a group under
//! a short write barrier; a clone is a new head over a sealed layer; a diff is
//! the union of the allocation maps between two layers; deleting a snapshot
//! merges its layer into its only child. The catalog of objects is one redb
//! database ([`catalog`]); every multi-object change is one transaction.
//!
//! What it must not do: speak any network protocol, know about users or
//! roles, or read data to compute a diff.
//!
//! The durability contract: a write is durable once a later flush completed
//! (or at once with FUA); after a crash at any moment every block reads its
//! last durable content or a newer acknowledged write. Data reaches stable
//! storage before the allocation record that points at it.

pub mod catalog;
pub mod error;
pub mod layer;
pub mod partner_token;
pub mod progress;
mod resolve;
pub mod storage;
mod store;
mod types;
mod volume;

pub use error::{Result, StoreError};
pub use progress::Progress;
pub use roaring::RoaringBitmap;
pub use store::{
    CycleStart, Demotion, DiffEnd, ExportDisk, ExportInfo, ExportKind, ExportSpec, FROZEN_TAG,
    GcOutcome, GroupHooks, GroupInfo, MemberInfo, NewPartner, PairingRefusal, PartialCycle,
    PartnerInfo, Promotion, REPLICA_TAG, RecoveryPoint, ReplicaCycle, ReplicaStart,
    ReplicationInfo, ReplicationSettings, SnapshotInfo, SpaceInfo, Store, SyncReport, Target,
    VolumeInfo, failover_test_group,
};
pub use types::{
    BLOCK_SIZE, ExportId, GroupId, LayerId, MAX_VOLUME_SIZE, SnapshotId, SnapshotKind, VolumeId,
    parse_size, tag_value_ok, validate_name, validate_tag,
};
pub use volume::{Allocation, MappedRead, SnapshotReader, VolumeHandle};
