//! A real file system on a ferry volume: qemu-storage-daemon (an NBD client)
//! puts the export on a FUSE file, mkfs.ext4 formats it, fuse2fs mounts it,
//! files are written; then a group snapshot and a clone, the clone exported
//! and mounted the same way, and every file checked.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::served::{MIB, Served, qemu_io, run};

/// qemu-storage-daemon serving an NBD export as a FUSE file; stopped (and
/// flushed) on drop.
struct FuseDisk {
    child: Child,
    file: PathBuf,
}

impl FuseDisk {
    fn start(f: &Served, export: &str, size: u64, file: &Path, writable: bool) -> FuseDisk {
        std::fs::write(file, b"").unwrap();
        let qmp = file.with_extension("qmp");
        let child = Command::new("qemu-storage-daemon")
            .args([
                "--blockdev",
                &format!(
                    "driver=nbd,node-name=n0,server.type=inet,server.host={},server.port={},export={export}",
                    f.host(),
                    f.port()
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
        for _ in 0..200 {
            if std::fs::metadata(file).map(|m| m.len()).unwrap_or(0) == size {
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
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let _ = Command::new("umount").arg(&self.file).status();
    }
}

/// fuse2fs mounting an image file, in the foreground; unmounted on drop,
/// and only then gone: it writes the file system's last metadata (the
/// superblock) after the unmount, so the disk under it may stop only once
/// fuse2fs has exited.
struct Mount {
    dir: PathBuf,
    child: Child,
}

impl Mount {
    fn new(image: &Path, dir: &Path, read_only: bool) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        // As the kernel lists it in /proc/self/mounts (no symlinks).
        let dir = &dir.canonicalize().unwrap();
        let log = dir.with_extension("fuse2fs.log");
        let mut args = vec![image.to_str().unwrap(), dir.to_str().unwrap(), "-f"];
        if read_only {
            args.extend(["-o", "ro"]);
        }
        let mut child = Command::new("fuse2fs")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("fuse2fs is installed");
        for _ in 0..400 {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "fuse2fs {args:?} exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if mounted(dir) {
                return Mount {
                    dir: dir.to_owned(),
                    child,
                };
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("fuse2fs did not mount {}", dir.display());
    }

    fn unmount(self) {}
}

/// Whether a file system is mounted at `dir` (as /proc/self/mounts says).
fn mounted(dir: &Path) -> bool {
    let dir = dir.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(dir))
}

impl Drop for Mount {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.dir).status().unwrap();
        if !unmounted.success() {
            let _ = self.child.kill();
        }
        let ended = self.child.wait().unwrap();
        assert!(unmounted.success(), "umount {}", self.dir.display());
        assert!(
            ended.success(),
            "fuse2fs on {} ended with {ended}",
            self.dir.display()
        );
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
    let f = Served::new(128 * MIB);
    let work = f.work();
    let image = work.join("disk.img");
    {
        let disk = FuseDisk::start(&f, "disk", 128 * MIB, &image, true);
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
    // a group snapshot and a clone of it, exported, all with the CLI
    let d = &f.daemon;
    d.ferry(&["snapshot", "create", "vm", "--name", "s1"]).ok();
    d.ferry(&["clone", "vm@s1", "--as", "vm-test"]).ok();
    d.ferry(&["export", "add", "test", "--volume", "vm-test-system"])
        .ok();
    // the source keeps changing; the clone must not see it
    qemu_io(&f.uri("disk"), &["write -P 0xff 0 4M", "flush"]);

    let clone_image = work.join("clone.img");
    let disk = FuseDisk::start(&f, "test", 128 * MIB, &clone_image, true);
    let m = Mount::new(&disk.file, &work.join("mnt-clone"), false);
    for (name, data) in files() {
        let got = std::fs::read(m.dir.join(&name)).unwrap();
        assert!(got == data, "{name} differs in the clone");
    }
    m.unmount();
    drop(disk);
}
