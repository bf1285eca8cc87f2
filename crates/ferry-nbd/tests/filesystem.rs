//! A real file system on a ferry volume: qemu-storage-daemon (an NBD client)
//! puts the export on a FUSE file, mkfs.ext4 formats it, fuse2fs mounts it,
//! files are written; then a group snapshot and a clone, the clone exported
//! and mounted the same way, and every file checked.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{Fixture, Source, run};
use ferry_nbd::Catalog;
use ferry_store::{SnapshotKind, Target};

const MIB: u64 = 1 << 20;

/// qemu-storage-daemon serving an NBD export as a FUSE file; stopped (and
/// flushed) on drop.
struct FuseDisk {
    child: Child,
    file: PathBuf,
}

impl FuseDisk {
    fn start(f: &Fixture, export: &str, file: &Path, writable: bool) -> FuseDisk {
        std::fs::write(file, b"").unwrap();
        let qmp = file.with_extension("qmp");
        let child = Command::new("qemu-storage-daemon")
            .args([
                "--blockdev",
                &format!(
                    "driver=nbd,node-name=n0,server.type=inet,server.host={},server.port={},export={export}",
                    f.addr.ip(),
                    f.addr.port()
                ),
                "--export",
                &format!(
                    "type=fuse,id=e0,node-name=n0,mountpoint={},writable={}",
                    file.display(),
                    if writable { "on" } else { "off" }
                ),
                "--chardev",
                &format!("socket,id=qmp0,path={},server=on,wait=off", qmp.display()),
                "--monitor",
                "chardev=qmp0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-storage-daemon (qemu-utils) is installed");
        let disk = FuseDisk {
            child,
            file: file.to_owned(),
        };
        // The export is ready once the file is a FUSE mount (its size is the volume's).
        let want = f.exports.lookup(export).expect("export exists").size;
        for _ in 0..200 {
            if std::fs::metadata(file).map(|m| m.len()).unwrap_or(0) == want {
                return disk;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "qemu-storage-daemon did not put {export} on {}",
            file.display()
        );
    }
}

impl Drop for FuseDisk {
    fn drop(&mut self) {
        // SIGTERM: qemu-storage-daemon flushes and unmounts on it
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = Command::new("umount").arg(&self.file).status();
    }
}

/// fuse2fs mounting an image file; unmounted on drop.
struct Mount {
    dir: PathBuf,
}

impl Mount {
    fn new(image: &Path, dir: &Path, read_only: bool) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        let mut args = vec![image.to_str().unwrap(), dir.to_str().unwrap()];
        if read_only {
            args.extend(["-o", "ro"]);
        }
        run("fuse2fs", &args);
        Mount {
            dir: dir.to_owned(),
        }
    }

    fn unmount(self) {}
}

impl Drop for Mount {
    fn drop(&mut self) {
        let status = Command::new("umount").arg(&self.dir).status().unwrap();
        assert!(status.success(), "umount {}", self.dir.display());
    }
}

fn files() -> Vec<(String, Vec<u8>)> {
    let mut rng = 0x1234_5678u64;
    (0..24)
        .map(|i| {
            let len = 1000 + (i * 37_111) % 700_000;
            let data = (0..len)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng as u8
                })
                .collect();
            (format!("dir{}/file{i}.bin", i % 3), data)
        })
        .collect()
}

#[test]
fn ext4_on_a_volume_then_on_its_clone() {
    let f = Fixture::new(128 * MIB);
    let work = f.dir.path();
    let image = work.join("disk.img");
    {
        let disk = FuseDisk::start(&f, "disk", &image, true);
        run("mkfs.ext4", &["-q", "-F", disk.file.to_str().unwrap()]);
        let m = Mount::new(&disk.file, &work.join("mnt"), false);
        for (name, data) in files() {
            let p = m.dir.join(&name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, &data).unwrap();
        }
        run("sync", &[]);
        m.unmount();
    }
    // a group snapshot and a clone of it, exported
    f.store.create_group("vm1", &[("system", "disk")]).unwrap();
    f.store
        .create_snapshot(Target::Group("vm1"), "s1", SnapshotKind::Crash)
        .unwrap();
    f.store.clone_group("vm1", "s1", "vm1-test").unwrap();
    f.exports
        .map
        .lock()
        .insert("test".into(), Source::Volume("vm1-test-system".into()));
    // the source keeps changing; the clone must not see it
    f.store
        .volume("disk")
        .unwrap()
        .write(&vec![0xffu8; 4 * MIB as usize], 0, true)
        .unwrap();

    let clone_image = work.join("clone.img");
    let disk = FuseDisk::start(&f, "test", &clone_image, true);
    let m = Mount::new(&disk.file, &work.join("mnt-clone"), false);
    for (name, data) in files() {
        let got = std::fs::read(m.dir.join(&name)).unwrap();
        assert!(got == data, "{name} differs in the clone");
    }
    m.unmount();
    drop(disk);
}
