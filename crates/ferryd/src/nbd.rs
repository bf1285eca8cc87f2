//! The NBD server's view of the catalog's exports ([`ferry_nbd::Exports`]
//! over [`ferry_store::Store`]), and its start and stop.
//!
//! Exports live in the catalog (made by `ferry export add`, so they survive
//! restarts); the server looks one up when a client names it. When the
//! catalog reports a change (an export removed, or its volume or snapshot
//! deleted), clients of exports that are gone are disconnected.

use std::sync::Arc;

use ferry_nbd::handshake::{Catalog, ExportMeta};
use ferry_nbd::{Disk, Exports};
use ferry_store::{DiffEnd, ExportDisk, ExportInfo, ExportKind, RoaringBitmap, Store, Target};

pub struct CatalogExports {
    pub store: Store,
}

fn meta(e: &ExportInfo) -> ExportMeta {
    let description = match e.kind {
        ExportKind::Volume => format!("volume {}", e.volume.as_deref().unwrap_or("?")),
        ExportKind::Snapshot => match (&e.group, &e.slot) {
            (Some(g), Some(s)) => format!(
                "snapshot {g}@{} slot {s} (read-only)",
                e.snapshot.as_deref().unwrap_or("?")
            ),
            _ => format!(
                "snapshot {}@{} (read-only)",
                e.volume.as_deref().unwrap_or("?"),
                e.snapshot.as_deref().unwrap_or("?")
            ),
        },
    };
    ExportMeta {
        id: e.id.0,
        name: e.name.clone(),
        description,
        size: e.size,
        read_only: e.read_only,
    }
}

/// Whose snapshots an export's data is compared with: a group (and the
/// export's slot in it) or a lone volume.
enum Owner {
    Group(String, String),
    Volume(String),
}

impl Owner {
    fn target(&self) -> Target<'_> {
        match self {
            Owner::Group(g, _) => Target::Group(g),
            Owner::Volume(v) => Target::Volume(v),
        }
    }

    /// The slot a diff reports the export's blocks under.
    fn slot(&self) -> &str {
        match self {
            Owner::Group(_, s) => s,
            Owner::Volume(_) => "",
        }
    }
}

impl CatalogExports {
    fn owner(&self, e: &ExportInfo) -> Option<Owner> {
        match e.kind {
            ExportKind::Snapshot => match (&e.group, &e.slot) {
                (Some(g), Some(s)) => Some(Owner::Group(g.clone(), s.clone())),
                _ => Some(Owner::Volume(e.volume.clone()?)),
            },
            ExportKind::Volume => {
                let v = self
                    .store
                    .list_volumes()
                    .into_iter()
                    .find(|v| Some(&v.name) == e.volume.as_ref())?;
                match (v.group, v.slot) {
                    (Some(g), Some(s)) => Some(Owner::Group(g, s)),
                    _ => Some(Owner::Volume(v.name)),
                }
            }
        }
    }
}

impl Catalog for CatalogExports {
    fn list(&self) -> Vec<ExportMeta> {
        self.store.list_exports().iter().map(meta).collect()
    }

    fn lookup(&self, name: &str) -> Option<ExportMeta> {
        self.store.export(name).ok().map(|e| meta(&e))
    }

    fn snapshots(&self, name: &str) -> Vec<String> {
        let Ok(e) = self.store.export(name) else {
            return Vec::new();
        };
        let Some(owner) = self.owner(&e) else {
            return Vec::new();
        };
        self.store
            .list_snapshots(owner.target())
            .map(|l| l.into_iter().map(|s| s.name).collect())
            .unwrap_or_default()
    }
}

impl Exports for CatalogExports {
    fn open(&self, name: &str) -> Result<Disk, String> {
        match self.store.open_export(name) {
            Ok((_, ExportDisk::Volume(v))) => Ok(Disk::Volume(v)),
            Ok((_, ExportDisk::Snapshot(s))) => Ok(Disk::Snapshot(s)),
            Err(e) => Err(e.to_string()),
        }
    }

    fn changed_since(&self, name: &str, snapshot: &str) -> Result<RoaringBitmap, String> {
        let e = self.store.export(name).map_err(|e| e.to_string())?;
        let owner = self
            .owner(&e)
            .ok_or_else(|| format!("export {name:?} has no snapshots to compare with"))?;
        let to = match e.kind {
            ExportKind::Volume => DiffEnd::Live,
            ExportKind::Snapshot => DiffEnd::Snapshot(e.snapshot.as_deref().unwrap_or_default()),
        };
        let mut diff = self
            .store
            .diff(owner.target(), snapshot, to)
            .map_err(|e| e.to_string())?;
        Ok(diff.remove(owner.slot()).unwrap_or_default())
    }
}

/// Starts the NBD server on `addr` (and `unix`, if given); returns the server
/// and the address bound.
pub fn start(
    store: &Store,
    addr: std::net::SocketAddr,
    unix: Option<&std::path::Path>,
    config: ferry_nbd::ServerConfig,
) -> anyhow::Result<(ferry_nbd::Server, std::net::SocketAddr)> {
    use anyhow::Context;
    let exports = Arc::new(CatalogExports {
        store: store.clone(),
    });
    let server = ferry_nbd::Server::new(exports, config, tokio::runtime::Handle::current());
    let bound = server
        .listen_tcp(addr)
        .with_context(|| format!("NBD: listening on {addr}"))?;
    if let Some(path) = unix {
        server
            .listen_unix(path)
            .with_context(|| format!("NBD: listening on {}", path.display()))?;
    }
    // The store's listener only wakes a task: it must not hold the store.
    let changed = Arc::new(tokio::sync::Notify::new());
    let wake = changed.clone();
    store.on_exports_changed(Box::new(move || wake.notify_one()));
    let s = server.clone();
    tokio::spawn(async move {
        loop {
            changed.notified().await;
            let s = s.clone();
            let _ = tokio::task::spawn_blocking(move || s.exports_changed()).await;
        }
    });
    Ok((server, bound))
}
