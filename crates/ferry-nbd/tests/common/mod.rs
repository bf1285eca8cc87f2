//! A real NBD server over a real store, in the test's own process, for the
//! checks that reach inside or drive the protocol by hand: storage that
//! loses what was not synced (`libnbd.rs`), or that holds reads at a gate,
//! malformed handshakes and requests, clients vanishing (`robust.rs`), and
//! descriptors and threads across many connections (`leaks.rs`). Exports
//! are a plain map here (the daemon's come from the catalog). The interop
//! suites, real clients against the real daemon, are
//! crates/ferry/tests/nbd_*.rs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use ferry_nbd::handshake::{Catalog, ExportMeta};
use ferry_nbd::{Disk, Exports, Server, ServerConfig};
use ferry_store::storage::Storage;
use ferry_store::{DiffEnd, RoaringBitmap, SnapshotKind, Store, Target};
use parking_lot::Mutex;

#[derive(Clone, Debug)]
pub enum Source {
    Volume(String),
    Snapshot { volume: String, snapshot: String },
}

pub struct MapExports {
    pub store: Arc<Store>,
    pub map: Mutex<BTreeMap<String, Source>>,
}

impl Catalog for MapExports {
    fn list(&self) -> Vec<ExportMeta> {
        let names: Vec<String> = self.map.lock().keys().cloned().collect();
        names.iter().filter_map(|n| self.lookup(n)).collect()
    }

    fn lookup(&self, name: &str) -> Option<ExportMeta> {
        let src = self.map.lock().get(name).cloned()?;
        let (size, read_only, description) = match &src {
            Source::Volume(v) => (
                self.store.volume(v).ok()?.size(),
                false,
                format!("volume {v}"),
            ),
            Source::Snapshot { volume, snapshot } => (
                self.store
                    .open_snapshot(Target::Volume(volume), snapshot, None)
                    .ok()?
                    .size(),
                true,
                format!("snapshot {volume}@{snapshot}"),
            ),
        };
        Some(ExportMeta {
            id: 0,
            name: name.to_owned(),
            description,
            size,
            read_only,
        })
    }

    fn snapshots(&self, name: &str) -> Vec<String> {
        let Some(src) = self.map.lock().get(name).cloned() else {
            return vec![];
        };
        let volume = match src {
            Source::Volume(v) | Source::Snapshot { volume: v, .. } => v,
        };
        self.store
            .list_snapshots(Target::Volume(&volume))
            .map(|l| l.into_iter().map(|s| s.name).collect())
            .unwrap_or_default()
    }
}

impl Exports for MapExports {
    fn open(&self, name: &str) -> Result<Disk, String> {
        let src = self.map.lock().get(name).cloned().ok_or("no such export")?;
        match src {
            Source::Volume(v) => self.store.volume(&v).map(Disk::Volume),
            Source::Snapshot { volume, snapshot } => self
                .store
                .open_snapshot(Target::Volume(&volume), &snapshot, None)
                .map(Disk::Snapshot),
        }
        .map_err(|e| e.to_string())
    }

    fn changed_since(&self, name: &str, snapshot: &str) -> Result<RoaringBitmap, String> {
        let src = self.map.lock().get(name).cloned().ok_or("no such export")?;
        let (volume, to) = match &src {
            Source::Volume(v) => (v.clone(), DiffEnd::Live),
            Source::Snapshot { volume, snapshot } => (volume.clone(), DiffEnd::Snapshot(snapshot)),
        };
        let mut d = self
            .store
            .diff(Target::Volume(&volume), snapshot, to)
            .map_err(|e| e.to_string())?;
        Ok(d.remove("").unwrap_or_default())
    }
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub store: Arc<Store>,
    pub exports: Arc<MapExports>,
    pub server: Server,
    pub addr: SocketAddr,
    pub rt: tokio::runtime::Runtime,
}

impl Fixture {
    /// A server with a read-write export `disk` of `size` bytes.
    pub fn new(size: u64) -> Fixture {
        Self::with_config(size, ServerConfig::default())
    }

    pub fn with_config(size: u64, config: ServerConfig) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        Self::with_store(dir, store, size, config)
    }

    /// A server over a store on `storage` (which outlives the fixture).
    pub fn with_storage(size: u64, config: ServerConfig, storage: Arc<dyn Storage>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        Self::with_store(dir, Store::open_storage(storage).unwrap(), size, config)
    }

    fn with_store(
        dir: tempfile::TempDir,
        store: Store,
        size: u64,
        config: ServerConfig,
    ) -> Fixture {
        let store = Arc::new(store);
        store.create_volume("disk", size).unwrap();
        let exports = Arc::new(MapExports {
            store: store.clone(),
            map: Mutex::new(BTreeMap::from([(
                "disk".into(),
                Source::Volume("disk".into()),
            )])),
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = Server::new(exports.clone(), config, rt.handle().clone());
        let addr = server.listen_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        Fixture {
            dir,
            store,
            exports,
            server,
            addr,
            rt,
        }
    }

    pub fn uri(&self, export: &str) -> String {
        format!("nbd://{}/{export}", self.addr)
    }

    /// Exports a snapshot of volume `disk` as `name`, read-only.
    pub fn export_snapshot(&self, name: &str, snapshot: &str) {
        self.store
            .create_snapshot(Target::Volume("disk"), snapshot, SnapshotKind::Crash)
            .unwrap();
        self.exports.map.lock().insert(
            name.into(),
            Source::Snapshot {
                volume: "disk".into(),
                snapshot: snapshot.into(),
            },
        );
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.server.stop();
    }
}

/// Runs `script` in nbdsh (Debian's python with libnbd's binding), its
/// arguments in `ARGS`; it must succeed and print "ok".
pub fn nbdsh(script: &str, args: &[&str], what: &str) {
    let code = format!("ARGS = {args:?}\n{script}");
    let out = Command::new("nbdsh")
        .args(["-c", &code])
        .env(
            "PATH",
            format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default()),
        )
        .output()
        .unwrap_or_else(|e| panic!("running nbdsh: {e} (scripts/test.sh installs it)"));
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "{what}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[allow(unused_imports)]
pub use ferry_nbd::client::RawClient;
