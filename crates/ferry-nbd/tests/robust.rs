//! Requests and handshakes no well-behaved client sends, clients that vanish,
//! and many connections: each costs at most its own connection, never data.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use common::{Fixture, RawClient};
use ferry_nbd::ServerConfig;
use ferry_nbd::proto::*;
use ferry_store::storage::{Mapping, MemStorage, Storage, StorageFile};
use parking_lot::{Condvar, Mutex};

const MIB: u64 = 1 << 20;

fn fill(f: &Fixture, byte: u8, offset: u64, len: usize) {
    f.store
        .volume("disk")
        .unwrap()
        .write(&vec![byte; len], offset, false)
        .unwrap();
}

fn read_back(f: &Fixture, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    f.store
        .volume("disk")
        .unwrap()
        .read(&mut buf, offset)
        .unwrap();
    buf
}

#[test]
fn bad_requests_get_errors_and_the_connection_goes_on() {
    let f = Fixture::new(MIB);
    fill(&f, 0x42, 0, 8192);
    let mut c = RawClient::connect(f.addr, "disk");
    assert_eq!(c.call(99, 0, 0, 0, &[]).0, EINVAL, "unknown command");
    assert_eq!(
        c.call(CMD_READ, 1 << 9, 0, 512, &[]).0,
        EINVAL,
        "unknown flag"
    );
    assert_eq!(
        c.call(CMD_READ, CMD_FLAG_DF, 0, 512, &[]).0,
        EINVAL,
        "DF without structured replies"
    );
    assert_eq!(
        c.call(CMD_BLOCK_STATUS, 0, 0, 512, &[]).0,
        EINVAL,
        "no context negotiated"
    );
    // a refused write's payload is skipped, not taken for the next request
    let payload = vec![0x99u8; 4096];
    assert_eq!(c.call(CMD_WRITE, 0, MIB - 1024, 4096, &payload).0, ENOSPC);
    assert_eq!(c.call(CMD_WRITE, 1 << 12, 0, 4096, &payload).0, EINVAL);
    let (err, data) = c.call(CMD_READ, 0, 0, 8192, &[]);
    assert_eq!(err, 0);
    assert!(data.iter().all(|&b| b == 0x42));
    c.disconnect();
    assert!(read_back(&f, 0, 8192).iter().all(|&b| b == 0x42));
}

/// Takes `n` replies, each a success for a cookie not answered before,
/// and hands each cookie and its data to `check`.
fn successes(c: &mut RawClient, n: usize, check: impl Fn(u64, &[u8])) {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..n {
        let (cookie, err, data) = c.reply().unwrap();
        assert_eq!(err, 0, "cookie {cookie}");
        assert!(seen.insert(cookie), "cookie {cookie} answered twice");
        check(cookie, &data);
    }
}

#[test]
fn many_requests_in_flight_each_answered_once() {
    let f = Fixture::new(8 * MIB);
    for i in 0..64u64 {
        fill(&f, i as u8, i * 65536, 65536);
    }
    let mut c = RawClient::connect(f.addr, "disk");
    // pipelined: 64 reads and 64 writes without waiting
    for i in 0..64u64 {
        c.send(CMD_READ, 0, 1000 + i, i * 65536, 65536, &[]);
        c.send(
            CMD_WRITE,
            0,
            2000 + i,
            4 * MIB + i * 4096,
            4096,
            &[0xa0 | (i as u8 & 0xf); 4096],
        );
    }
    successes(&mut c, 128, |cookie, data| {
        if cookie < 2000 {
            let i = cookie - 1000;
            assert!(
                data.iter().all(|&b| b == i as u8),
                "read {i} got another block's data"
            );
        }
    });
    c.disconnect();
    for i in 0..64u64 {
        assert!(
            read_back(&f, 4 * MIB + i * 4096, 4096)
                .iter()
                .all(|&b| b == 0xa0 | (i as u8 & 0xf))
        );
    }
}

/// Drops every file of the fixture's store from the page cache (after
/// writing it back), so that the next reads have to come from the device.
fn evict(f: &Fixture) {
    use std::os::unix::io::AsRawFd;
    f.store.volume("disk").unwrap().flush().unwrap();
    let mut dirs = vec![f.dir.path().to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
                continue;
            }
            let file = std::fs::File::open(&p).unwrap();
            file.sync_all().unwrap();
            // SAFETY: advice on a file descriptor we own.
            let rc =
                unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            assert_eq!(rc, 0);
        }
    }
}

/// Reads the reader thread cannot answer from memory go to a helper (or,
/// with one worker, are read in place); pipelined with writes, each is
/// answered once with its own bytes.
#[test]
fn reads_that_must_wait_for_the_device_are_answered_right() {
    for workers in [4, 1] {
        let f = Fixture::with_config(
            8 * MIB,
            ferry_nbd::ServerConfig {
                workers,
                ..Default::default()
            },
        );
        for i in 0..64u64 {
            fill(&f, i as u8 + 1, i * 65536, 65536);
        }
        evict(&f);
        let mut probe = vec![0u8; 4096];
        assert!(
            !f.store
                .volume("disk")
                .unwrap()
                .try_read(&mut probe, 40 * 65536)
                .unwrap(),
            "the precondition: the data is no longer in memory"
        );
        // Large reads are sent from mappings only when in memory: these are
        // read the usual way, by helpers in parallel.
        assert!(
            f.store
                .volume("disk")
                .unwrap()
                .plan_mapped(2 * MIB, 256 << 10)
                .unwrap()
                .is_none(),
            "a large read of bytes not in memory is not sent from the mappings"
        );
        let mut c = RawClient::connect(f.addr, "disk");
        for i in 0..64u64 {
            // Blocks in a scattered order, 4 KiB each, then a write.
            let b = (i * 37) % 64;
            c.send(CMD_READ, 0, 1000 + b, b * 65536 + 8192, 4096, &[]);
            c.send(
                CMD_WRITE,
                0,
                2000 + i,
                4 * MIB + i * 4096,
                4096,
                &[0xc0; 4096],
            );
        }
        // And four large reads of 256 KiB (4 of the 64 KiB regions each).
        for k in 0..4u64 {
            c.send(CMD_READ, 0, 3000 + k, k * (256 << 10), 256 << 10, &[]);
        }
        successes(&mut c, 132, |cookie, data| {
            if cookie < 2000 {
                let b = cookie - 1000;
                assert!(
                    data.len() == 4096 && data.iter().all(|&x| x == b as u8 + 1),
                    "workers {workers}: read of block {b} got other bytes"
                );
            } else if cookie >= 3000 {
                let k = cookie - 3000;
                assert_eq!(data.len(), 256 << 10);
                for (j, region) in data.chunks(65536).enumerate() {
                    let i = k * 4 + j as u64;
                    assert!(
                        region.iter().all(|&x| x == i as u8 + 1),
                        "workers {workers}: large read {k}, region {i}"
                    );
                }
            }
        });
        c.disconnect();
        assert!(read_back(&f, 4 * MIB, 64 * 4096).iter().all(|&x| x == 0xc0));
    }
}

/// Large reads are sent from the page cache without waiting while the
/// volume is held; what a full socket does not take at once is read again
/// and sent after. A client that reads nothing until it has asked for 53 MiB
/// (far more than the socket buffers hold) gets every reply whole, in its
/// place, from a chain of two layers with a trimmed hole, on the live volume
/// and on a snapshot export.
#[test]
fn large_reads_that_fill_the_socket_are_sent_whole() {
    const SIZE: u64 = 64 * MIB;
    // Each block says which block it is, so one sent in another's place shows.
    let block = |b: u64, round: u8| -> Vec<u8> {
        let mut v = vec![round ^ (b as u8); 4096];
        v[..8].copy_from_slice(&b.to_le_bytes());
        v
    };
    for workers in [4, 1] {
        let f = Fixture::with_config(
            SIZE,
            ferry_nbd::ServerConfig {
                workers,
                ..Default::default()
            },
        );
        let v = f.store.volume("disk").unwrap();
        let mut want = vec![0u8; SIZE as usize];
        let put = |want: &mut Vec<u8>, b: u64, round: u8| {
            let bytes = block(b, round);
            v.write(&bytes, b * 4096, false).unwrap();
            want[(b * 4096) as usize..][..4096].copy_from_slice(&bytes);
        };
        for b in 0..SIZE / 4096 {
            put(&mut want, b, 1);
        }
        f.export_snapshot("snap", "s1");
        let old = want.clone();
        // Every fifth block again, in a scattered order: the head's slots.
        for i in 0..SIZE / 4096 {
            let b = (i * 7919) % (SIZE / 4096);
            if b.is_multiple_of(5) {
                put(&mut want, b, 2);
            }
        }
        v.trim(10 * MIB, MIB + 8192, false).unwrap();
        want[(10 * MIB) as usize..][..(MIB + 8192) as usize].fill(0);
        for (export, want) in [("disk", &want), ("snap", &old)] {
            let mut c = RawClient::connect(f.addr, export);
            let reads = [
                (1, 1000, 32 * MIB),
                (2, 40 * MIB + 3, 20 * MIB),
                (3, 9 * MIB, MIB),
            ];
            for &(cookie, offset, len) in &reads {
                c.send(CMD_READ, 0, cookie, offset, len as u32, &[]);
            }
            successes(&mut c, reads.len(), |cookie, data| {
                let (_, offset, len) = reads[cookie as usize - 1];
                assert!(
                    data == &want[offset as usize..][..len as usize],
                    "workers {workers}, {export}: read {cookie} ({len} at {offset})"
                );
            });
            c.disconnect();
        }
    }
}

#[test]
fn malformed_handshakes_cost_only_their_connection() {
    let f = Fixture::new(MIB);
    fill(&f, 0x17, 0, 4096);
    let greet = |s: &mut std::net::TcpStream| {
        let mut g = [0u8; GREETING_LEN];
        s.read_exact(&mut g).unwrap();
    };
    // unknown client flags: the server closes
    let mut s = std::net::TcpStream::connect(f.addr).unwrap();
    greet(&mut s);
    s.write_all(&0xffu32.to_be_bytes()).unwrap();
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap_or(0), 0);
    // a wrong option magic: the server closes
    let mut s = std::net::TcpStream::connect(f.addr).unwrap();
    greet(&mut s);
    s.write_all(&1u32.to_be_bytes()).unwrap();
    s.write_all(&[0x55; 16]).unwrap();
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap_or(0), 0);
    // an option cut short, then gone
    let mut s = std::net::TcpStream::connect(f.addr).unwrap();
    greet(&mut s);
    s.write_all(&1u32.to_be_bytes()).unwrap();
    let mut opt = IHAVEOPT.to_be_bytes().to_vec();
    opt.extend_from_slice(&OPT_GO.to_be_bytes());
    opt.extend_from_slice(&100u32.to_be_bytes());
    opt.extend_from_slice(&[0; 10]);
    s.write_all(&opt).unwrap();
    drop(s);
    // a huge option length is refused with TOO_BIG after skipping it
    let mut s = std::net::TcpStream::connect(f.addr).unwrap();
    greet(&mut s);
    s.write_all(&1u32.to_be_bytes()).unwrap();
    let big = (2 << 20) as u32;
    let mut opt = IHAVEOPT.to_be_bytes().to_vec();
    opt.extend_from_slice(&OPT_LIST.to_be_bytes());
    opt.extend_from_slice(&big.to_be_bytes());
    s.write_all(&opt).unwrap();
    s.write_all(&vec![0u8; big as usize]).unwrap();
    let mut h = [0u8; 20];
    s.read_exact(&mut h).unwrap();
    assert_eq!(
        u32::from_be_bytes(h[12..16].try_into().unwrap()),
        REP_ERR_TOO_BIG
    );
    drop(s);
    // a bad request magic in transmission: that connection ends
    let mut c = RawClient::connect(f.addr, "disk");
    c.sock.write_all(&[0xde; REQUEST_LEN]).unwrap();
    let mut rest = Vec::new();
    assert_eq!(c.sock.read_to_end(&mut rest).unwrap_or(0), 0);
    // and the server is fine
    let mut c = RawClient::connect(f.addr, "disk");
    let (err, data) = c.call(CMD_READ, 0, 0, 4096, &[]);
    assert_eq!(err, 0);
    assert!(data.iter().all(|&b| b == 0x17));
    c.disconnect();
    f.server.wait_idle();
}

/// A write cut short by the client's end changes nothing: a small one (run
/// by the reader) and a large one (handed to a helper).
#[test]
fn a_client_vanishing_mid_write_changes_nothing() {
    let f = Fixture::new(4 * MIB);
    for (len, sent) in [(65536u32, 10_000usize), (MIB as u32, 700_000)] {
        fill(&f, 0x33, 0, len as usize);
        let mut c = RawClient::connect(f.addr, "disk");
        let req = Request {
            flags: 0,
            command: CMD_WRITE,
            cookie: 9,
            offset: 0,
            len,
        };
        c.sock.write_all(&encode_request(&req)).unwrap();
        c.sock.write_all(&vec![0xcc; sent]).unwrap();
        drop(c);
        f.server.wait_idle();
        assert!(
            read_back(&f, 0, len as usize).iter().all(|&b| b == 0x33),
            "{len} bytes cut after {sent}"
        );
        let mut c = RawClient::connect(f.addr, "disk");
        assert_eq!(c.call(CMD_READ, 0, 0, 4096, &[]).0, 0);
        c.disconnect();
    }
}

/// Large writes whose payload arrives at once or trickles in (100 bytes per
/// segment) land whole, pipelined with small and unaligned writes.
#[test]
fn large_writes_land_whole_also_when_they_trickle_in() {
    let f = Fixture::new(16 * MIB);
    let mut c = RawClient::connect(f.addr, "disk");
    c.sock.set_nodelay(true).unwrap();
    let writes: [(u64, u64, u32, usize); 5] = [
        // cookie, offset, length, bytes per write(2) of the payload
        (1, 0, MIB as u32, MIB as usize),
        (2, 2 * MIB, MIB as u32, 100),
        (3, 4 * MIB + 512, 300_000, 65536),
        (4, 6 * MIB, 512 << 10, 4096),
        (5, 8 * MIB, 4096, 4096),
    ];
    for &(cookie, offset, len, piece) in &writes {
        let payload = vec![cookie as u8 * 17; len as usize];
        let req = Request {
            flags: 0,
            command: CMD_WRITE,
            cookie,
            offset,
            len,
        };
        c.sock.write_all(&encode_request(&req)).unwrap();
        for chunk in payload.chunks(piece) {
            c.sock.write_all(chunk).unwrap();
        }
    }
    successes(&mut c, writes.len(), |_, _| {});
    c.disconnect();
    for &(cookie, offset, len, _) in &writes {
        let got = read_back(&f, offset, len as usize);
        assert!(
            got.iter().all(|&b| b == cookie as u8 * 17),
            "write {cookie} ({len} at {offset})"
        );
    }
    assert!(
        read_back(&f, MIB, MIB as usize).iter().all(|&b| b == 0),
        "between"
    );
}

#[test]
fn removing_an_export_disconnects_its_clients() {
    let f = Fixture::new(MIB);
    f.export_snapshot("frozen", "s1");
    let mut keep = RawClient::connect(f.addr, "disk");
    let mut gone = RawClient::connect(f.addr, "frozen");
    assert_eq!(gone.call(CMD_READ, 0, 0, 4096, &[]).0, 0);
    f.exports.map.lock().remove("frozen");
    f.server.exports_changed();
    let mut rest = Vec::new();
    assert_eq!(
        gone.sock.read_to_end(&mut rest).unwrap_or(0),
        0,
        "the client of a removed export is disconnected"
    );
    assert_eq!(keep.call(CMD_READ, 0, 0, 4096, &[]).0, 0, "others stay");
    keep.disconnect();
}

/// Reads of at least this many bytes wait at a [`Gate`] while it is closed.
const GATED: usize = 256 << 10;

/// Where large reads wait while the test holds them: a device that answers
/// only when told to.
#[derive(Debug, Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    closed: bool,
    waiting: usize,
}

impl Gate {
    fn pass(&self, len: usize) {
        if len < GATED {
            return;
        }
        let mut st = self.state.lock();
        st.waiting += 1;
        self.changed.notify_all();
        while st.closed {
            self.changed.wait(&mut st);
        }
        st.waiting -= 1;
    }

    fn set_closed(&self, closed: bool) {
        self.state.lock().closed = closed;
        self.changed.notify_all();
    }

    /// Waits until a read is held at the gate (or panics after a minute).
    fn wait_for_a_read(&self) {
        let mut st = self.state.lock();
        while st.waiting == 0 {
            let timed_out = self
                .changed
                .wait_for(&mut st, Duration::from_secs(60))
                .timed_out();
            assert!(!timed_out, "no read reached the storage");
        }
    }
}

/// Opens the gate when dropped, so that a failing test leaves no thread
/// stuck behind it.
struct Opens<'a>(&'a Gate);

impl Drop for Opens<'_> {
    fn drop(&mut self) {
        self.0.set_closed(false);
    }
}

#[derive(Debug)]
struct GatedStorage {
    inner: Arc<dyn Storage>,
    gate: Arc<Gate>,
}

impl Storage for GatedStorage {
    fn open_file(&self, name: &str, create: bool) -> std::io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(GatedFile {
            inner: self.inner.open_file(name, create)?,
            gate: self.gate.clone(),
        }))
    }
    fn remove_file(&self, name: &str) -> std::io::Result<()> {
        self.inner.remove_file(name)
    }
    fn rename_file(&self, from: &str, to: &str) -> std::io::Result<()> {
        self.inner.rename_file(from, to)
    }
    fn list_dir(&self, dir: &str) -> std::io::Result<Vec<String>> {
        self.inner.list_dir(dir)
    }
}

#[derive(Debug)]
struct GatedFile {
    inner: Arc<dyn StorageFile>,
    gate: Arc<Gate>,
}

impl StorageFile for GatedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.gate.pass(buf.len());
        self.inner.read_at(buf, offset)
    }
    fn read_vectored_at(&self, bufs: &mut [&mut [u8]], offset: u64) -> std::io::Result<()> {
        self.gate.pass(bufs.iter().map(|b| b.len()).sum());
        self.inner.read_vectored_at(bufs, offset)
    }
    fn try_read_vectored_at(&self, bufs: &mut [&mut [u8]], offset: u64) -> std::io::Result<bool> {
        if bufs.iter().map(|b| b.len()).sum::<usize>() >= GATED {
            return Ok(false);
        }
        self.inner.try_read_vectored_at(bufs, offset)
    }
    fn mapping(&self, _len: u64) -> Option<Arc<Mapping>> {
        None
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> std::io::Result<()> {
        self.inner.write_vectored_at(bufs, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.inner.sync_data()
    }
    fn punch_hole(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.punch_hole(offset, len)
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn preallocate(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.preallocate(offset, len)
    }
}

/// A server over a store whose large reads wait at the gate returned.
fn gated_fixture() -> (Fixture, Arc<Gate>) {
    let gate = Arc::new(Gate::default());
    let storage = Arc::new(GatedStorage {
        inner: MemStorage::new(),
        gate: gate.clone(),
    });
    let f = Fixture::with_storage(8 * MIB, ServerConfig::default(), storage);
    (f, gate)
}

/// A client whose reads fail after a minute rather than hang.
fn patient_client(f: &Fixture) -> RawClient {
    let c = RawClient::connect(f.addr, "disk");
    c.sock
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    c
}

/// Replies leave as requests finish, not in the order they came: a read
/// held on the device does not hold back the requests behind it, which are
/// answered (simple replies, as the kernel's client reads them) while it
/// waits; then it is answered with its own bytes.
#[test]
fn a_slow_read_does_not_hold_back_the_replies_behind_it() {
    let (f, gate) = gated_fixture();
    let big = 512 << 10;
    fill(&f, 0x11, 0, big);
    fill(&f, 0x22, 4 * MIB, 4096);
    gate.set_closed(true);
    let _opens = Opens(&gate);
    // A server that answered in order would wait here forever.
    let mut c = patient_client(&f);
    c.send(CMD_READ, 0, 1, 0, big as u32, &[]);
    gate.wait_for_a_read();
    c.send(CMD_READ, 0, 2, 4 * MIB, 4096, &[]);
    c.send(CMD_WRITE, 0, 3, 5 * MIB, 4096, &[0x33; 4096]);
    c.send(CMD_FLUSH, 0, 4, 0, 0, &[]);
    let mut behind = std::collections::BTreeMap::new();
    for _ in 0..3 {
        let (cookie, err, data) = c.reply().expect("replies behind the held read");
        assert_eq!(err, 0, "cookie {cookie}");
        behind.insert(cookie, data);
    }
    assert_eq!(
        behind.keys().copied().collect::<Vec<_>>(),
        [2, 3, 4],
        "the held read was answered before it was let go"
    );
    assert!(behind[&2].iter().all(|&b| b == 0x22), "read 2's bytes");
    gate.set_closed(false);
    let (cookie, err, data) = c.reply().unwrap();
    assert_eq!((cookie, err), (1, 0));
    assert!(data.len() == big && data.iter().all(|&b| b == 0x11));
    c.disconnect();
    assert!(read_back(&f, 5 * MIB, 4096).iter().all(|&b| b == 0x33));
}

/// A disconnect sent right behind a read that waits on the device: the
/// read is still answered, with its own bytes, before the server closes.
#[test]
fn a_disconnect_waits_for_the_requests_in_flight() {
    let (f, gate) = gated_fixture();
    let big = 512 << 10;
    fill(&f, 0x44, MIB, big);
    gate.set_closed(true);
    let _opens = Opens(&gate);
    let mut c = patient_client(&f);
    // one send: the server reads the disconnect while the read is held
    let mut both = Vec::new();
    for (cmd, cookie, offset, len) in [(CMD_READ, 1, MIB, big as u32), (CMD_DISC, 2, 0, 0)] {
        both.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        both.extend_from_slice(&0u16.to_be_bytes());
        both.extend_from_slice(&cmd.to_be_bytes());
        both.extend_from_slice(&(cookie as u64).to_be_bytes());
        both.extend_from_slice(&offset.to_be_bytes());
        both.extend_from_slice(&len.to_be_bytes());
    }
    c.sock.write_all(&both).unwrap();
    gate.wait_for_a_read();
    gate.set_closed(false);
    let mut head = [0u8; 16];
    c.sock.read_exact(&mut head).unwrap();
    assert_eq!(&head[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
    assert_eq!(&head[4..8], &0u32.to_be_bytes(), "the read failed");
    assert_eq!(&head[8..], &1u64.to_be_bytes());
    let mut data = vec![0u8; big];
    c.sock.read_exact(&mut data).unwrap();
    assert!(data.iter().all(|&b| b == 0x44));
    let mut rest = Vec::new();
    c.sock.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{} bytes after the last reply", rest.len());
    f.server.wait_idle();
}
