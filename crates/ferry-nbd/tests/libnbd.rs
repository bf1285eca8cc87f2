//! A FUA write survives a power cut with no flush: libnbd's Python binding
//! (Debian's python, as nbdsh uses it) against ferry's server over an
//! in-memory store that can lose what was not synced. The other libnbd
//! checks run against ferryd (crates/ferry/tests/nbd_libnbd.rs).

mod common;

use common::{Fixture, nbdsh};
use ferry_nbd::ServerConfig;
use ferry_store::Store;
use ferry_store::storage::MemStorage;

const MIB: u64 = 1 << 20;

/// Sixteen 64 KiB writes, the even ones with FUA, then a disconnect with no
/// flush.
const FUA_PY: &str = r#"
import sys, nbd
sys.argv = ARGS
h = nbd.NBD()
h.connect_uri(sys.argv[1])
assert h.can_fua()
for i in range(16):
    flags = nbd.CMD_FLAG_FUA if i % 2 == 0 else 0
    h.pwrite(bytes([0x10 + i]) * 65536, i * 65536, flags)
h.shutdown()
print("ok")
"#;

/// A write acknowledged with FUA is on stable storage by itself: after a
/// power cut (the in-memory storage throws away a random part of what was
/// not synced) with no flush ever sent, every FUA write reads back, and the
/// others read back, block by block, old or new. Across the seeds some plain
/// write is lost, or the cut would not be testing anything.
#[test]
fn fua_writes_survive_a_power_cut_without_a_flush() {
    let mut plain_lost = 0;
    for seed in 1..=8u64 {
        let mem = MemStorage::new();
        {
            let f = Fixture::with_storage(MIB, ServerConfig::default(), mem.clone());
            nbdsh(FUA_PY, &["fua", &f.uri("disk")], "FUA writes");
            f.server.wait_idle();
        }
        mem.crash(seed);
        let store = Store::open_storage(mem).unwrap();
        let vol = store.volume("disk").unwrap();
        for i in 0..16u64 {
            let mut buf = vec![0u8; 65536];
            vol.read(&mut buf, i * 65536).unwrap();
            let want = 0x10 + i as u8;
            if i % 2 == 0 {
                assert!(
                    buf.iter().all(|&b| b == want),
                    "seed {seed}: FUA write {i} lost after the power cut"
                );
            } else {
                // Unflushed: each block is old or new, never anything else.
                for block in buf.chunks(4096) {
                    assert!(
                        block.iter().all(|&b| b == want) || block.iter().all(|&b| b == 0),
                        "seed {seed}: plain write {i} came back with bytes never written"
                    );
                }
                plain_lost += usize::from(buf.contains(&0));
            }
        }
    }
    assert!(plain_lost > 0, "no unflushed write was ever lost");
}
