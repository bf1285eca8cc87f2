//! libnbd's tools (nbdinfo, nbdcopy) and its Python binding (Debian's
//! python, as nbdsh uses it) against ferryd.

mod common;

use common::served::{MIB, Served, qemu_io, run, run_raw};

#[test]
fn nbdinfo_lists_maps_and_describes() {
    let f = Served::new(8 * MIB);
    f.export_snapshot("frozen", "s1");
    let list = run("nbdinfo", &["--list", &format!("nbd://{}", f.nbd())]);
    assert!(
        list.contains("export=\"disk\"") || list.contains("disk"),
        "{list}"
    );
    assert!(list.contains("frozen"), "{list}");

    // zeroes with unmap leave a hole; without it (NO_HOLE) they are data
    qemu_io(
        &f.uri("disk"),
        &["write -P 0x41 1M 1M", "write -z -u 2M 1M", "write -z 7M 1M"],
    );
    let map = run("nbdinfo", &["--map", &f.uri("disk")]);
    // "offset length type description" lines: a hole, data, then holes
    let rows: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let row_at = |off: u64| rows.iter().find(|r| r[0] == off.to_string()).cloned();
    let first = row_at(0).expect("a row at 0");
    assert_eq!(first[1], MIB.to_string(), "{map}");
    assert!(
        first[3].contains("hole") && first[3].contains("zero"),
        "{map}"
    );
    let data = row_at(MIB).expect("a row at 1M");
    assert_eq!((data[1], data[2]), (MIB.to_string().as_str(), "0"), "{map}");
    let rest = row_at(2 * MIB).expect("a row at 2M");
    assert_eq!(
        rest[1],
        (5 * MIB).to_string(),
        "zeroed and untouched merge: {map}"
    );
    assert!(rest[3].contains("hole"), "{map}");
    let allocated = row_at(7 * MIB).expect("a row at 7M");
    assert_eq!(
        (allocated[1], allocated[2]),
        (MIB.to_string().as_str(), "0"),
        "{map}"
    );

    let json = run("nbdinfo", &["--json", &f.uri("disk")]);
    assert!(
        json.contains(&format!("\"export-size\": {}", 8 * MIB)),
        "{json}"
    );
    assert!(json.contains("\"can_multi_conn\": true"), "{json}");
    assert!(json.contains("\"is_read_only\": false"), "{json}");
    assert!(json.contains("\"block_size_preferred\": 4096"), "{json}");
    let ro = run("nbdinfo", &["--json", &f.uri("frozen")]);
    assert!(ro.contains("\"is_read_only\": true"), "{ro}");
}

#[test]
fn nbdcopy_both_ways() {
    let f = Served::new(32 * MIB);
    let dir = f.work();
    let src = dir.join("src.img");
    let src_s = src.to_str().unwrap();
    run("qemu-img", &["create", "-f", "raw", src_s, "32M"]);
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x71 0 3M",
            "-c",
            "write -P 0x72 17M 5M",
            "-c",
            "write -P 0x73 31M 1M",
            src_s,
        ],
    );
    let uri = f.uri("disk");
    for (i, opts) in [
        vec![],
        vec!["--no-extents"],
        vec!["-C", "1"],
        vec!["--no-extents", "-C", "1"],
    ]
    .into_iter()
    .enumerate()
    {
        // scribble first, so each copy in has something to overwrite
        qemu_io(&uri, &["write -P 0xee 0 32M"]);
        let mut args = opts.clone();
        args.extend([src_s, uri.as_str()]);
        run("nbdcopy", &args);
        run(
            "qemu-img",
            &["compare", "-f", "raw", "-F", "raw", src_s, &uri],
        );
        let out = dir.join(format!("out{i}.img"));
        let out_s = out.to_str().unwrap().to_owned();
        let mut args = opts.clone();
        args.extend([uri.as_str(), out_s.as_str()]);
        run("nbdcopy", &args);
        assert_eq!(
            std::fs::read(&src).unwrap(),
            std::fs::read(&out).unwrap(),
            "nbdcopy {opts:?} out"
        );
    }
}

/// Runs `script` in nbdsh (Debian's python with libnbd's binding), its
/// arguments in `ARGS`; it must succeed and print "ok".
fn nbdsh(script: &str, args: &[&str], what: &str) {
    let code = format!("ARGS = {args:?}\n{script}");
    let out = run_raw("nbdsh", &["-c", &code]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "{what}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// libnbd with strict mode off sends what it is told; the server answers
/// each bad request with the protocol's error and the connection goes on.
/// Run by nbdsh (Debian's python with libnbd's binding); the arguments come
/// in `ARGS`.
const ERRORS_PY: &str = r#"
import errno, sys, nbd
sys.argv = ARGS

uri, ro_uri, structured = sys.argv[1], sys.argv[2], sys.argv[3] == "1"

def connect(u):
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    h.set_strict_mode(0)
    h.connect_uri(u)
    assert h.get_structured_replies_negotiated() == structured
    return h

def expect(h, what, code, fn):
    try:
        fn()
    except nbd.Error as e:
        if e.errnum != code:
            raise SystemExit(f"{what}: errno {e.errnum} ({e}), wanted {code}")
    else:
        raise SystemExit(f"{what}: no error, wanted {code}")
    # the connection is still good
    assert h.pread(4096, 0) == b"\x5a" * 4096, what

h = connect(uri)
# what the server advertises for a read-write export (strict mode is off,
# so libnbd would send these commands whether or not they are advertised)
assert h.can_flush() and h.can_fua() and h.can_trim() and h.can_zero(), "flags"
assert h.can_fast_zero() and h.can_multi_conn() and h.can_cache(), "flags"
assert h.get_block_size(nbd.SIZE_MINIMUM) == 1, "no alignment is required"
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 << 20, "32 MiB requests"
size = h.get_size()
h.pwrite(b"\x5a" * 8192, 0)
expect(h, "read past the end", errno.EINVAL, lambda: h.pread(8192, size - 4096))
expect(h, "write past the end", errno.ENOSPC, lambda: h.pwrite(b"x" * 4096, size))
expect(h, "zero past the end", errno.ENOSPC, lambda: h.zero(4096, size - 1))
expect(h, "trim past the end", errno.EINVAL, lambda: h.trim(8192, size))
expect(h, "oversized read", errno.EINVAL, lambda: h.pread(64 << 20, 0))
expect(h, "oversized write", errno.EINVAL, lambda: h.pwrite(b"y" * (33 << 20), 0))
expect(h, "flag not for this command", errno.EINVAL, lambda: h.pread(4096, 0, flags=nbd.CMD_FLAG_REQ_ONE))
if structured:
    expect(h, "fast zero that cannot be fast", errno.ENOTSUP,
           lambda: h.zero(4096, 0, flags=nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE))
# a good fast zero and a flush still work
h.zero(4096, 8192, flags=nbd.CMD_FLAG_FAST_ZERO)
h.flush()
assert h.pread(4096, 8192) == bytes(4096)
h.shutdown()

r = connect(ro_uri)
assert r.is_read_only()
expect(r, "write to a read-only export", errno.EPERM, lambda: r.pwrite(b"z" * 4096, 0))
expect(r, "trim on a read-only export", errno.EPERM, lambda: r.trim(4096, 0))
expect(r, "zero on a read-only export", errno.EPERM, lambda: r.zero(4096, 0))
r.shutdown()
print("ok")
"#;

#[test]
fn libnbd_error_codes_keep_the_connection() {
    let f = Served::new(8 * MIB);
    qemu_io(&f.uri("disk"), &["write -P 0x5a 0 4k"]);
    f.export_snapshot("frozen", "s1");
    for structured in ["1", "0"] {
        nbdsh(
            ERRORS_PY,
            &["errors", &f.uri("disk"), &f.uri("frozen"), structured],
            &format!("structured={structured}"),
        );
    }
    // the data is as the good requests left it
    let mut buf = vec![0u8; 4096];
    let (_store, v, _dir) = f.stop_and_open();
    v.read(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 0x5a));
}

/// Options and commands the other checks do not send, through libnbd:
/// NBD_OPT_INFO and NBD_OPT_LIST in negotiation mode, NBD_OPT_ABORT,
/// NBD_CMD_CACHE, BLOCK_STATUS with REQ_ONE; and, over a plain socket, an
/// unknown option answered NBD_REP_ERR_UNSUP with negotiation going on.
const OPTIONS_PY: &str = r#"
import socket, struct, sys, nbd
sys.argv = ARGS
uri, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])

# negotiation mode: list, ask about an export, then give up (ABORT)
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(uri)
names = []
h.opt_list(lambda name, desc: names.append(name) or 0)
assert "disk" in names and "frozen" in names, names
h.set_export_name("disk")
h.opt_info()
assert h.get_size() == 8 << 20, h.get_size()
assert h.get_block_size(nbd.SIZE_PREFERRED) == 4096
h.opt_abort()
assert h.aio_is_closed(), "ABORT ends the session"

# LIST_META_CONTEXT: every context for no query, the snapshots' contexts
# for the ferry namespace
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(uri)
listed = []
h.opt_list_meta_context(lambda name: listed.append(name) or 0)
assert sorted(listed) == ["base:allocation", "ferry:changed-since:s1"], listed
listed.clear()
h.add_meta_context("ferry:")
h.opt_list_meta_context(lambda name: listed.append(name) or 0)
assert listed == ["ferry:changed-since:s1"], listed
h.opt_abort()

# the server goes on: CACHE, and BLOCK_STATUS with and without REQ_ONE
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)
assert h.can_cache()
h.pwrite(b"\x61" * 65536, 0)
h.cache(1 << 20, 0)
extents = []
def got(meta, offset, entries, err):
    extents.append(list(entries))
    return 0
h.block_status(1 << 20, 0, got)
assert len(extents[-1]) >= 4, f"data then a hole: {extents[-1]}"
h.block_status(1 << 20, 0, got, flags=nbd.CMD_FLAG_REQ_ONE)
one = extents[-1]
assert len(one) == 2 and one[0] == 65536 and one[1] & nbd.STATE_HOLE == 0, f"REQ_ONE: {one}"
assert h.pread(65536, 0) == b"\x61" * 65536
h.shutdown()

# an unknown option, by hand: NBD_REP_ERR_UNSUP, then LIST still answers
OPTS = 0x49484156454F5054
def recv(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        assert c, "connection closed"
        b += c
    return b
def greeted(client_flags):
    global s
    s = socket.create_connection((host, port))
    magic, ihave, flags = struct.unpack(">QQH", recv(18))
    assert ihave == OPTS, hex(ihave)
    s.sendall(struct.pack(">I", client_flags))
greeted(3)  # FIXED_NEWSTYLE | NO_ZEROES
def option(opt, data=b""):
    s.sendall(struct.pack(">QII", OPTS, opt, len(data)) + data)
def reply():
    m, opt, typ, n = struct.unpack(">QIII", recv(20))
    assert m == 0x3E889045565A9, hex(m)
    return opt, typ, recv(n)
option(0x4242, b"whatever")
opt, typ, _ = reply()
assert (opt, typ) == (0x4242, 0x80000001), (hex(opt), hex(typ))
option(3)  # LIST
seen = []
while True:
    opt, typ, data = reply()
    if typ == 1:  # ACK
        break
    assert typ == 2, hex(typ)  # SERVER
    seen.append(data[4:4 + struct.unpack(">I", data[:4])[0]].decode())
assert "disk" in seen, seen
option(2)  # ABORT
opt, typ, _ = reply()
assert typ == 1, hex(typ)
s.close()

# NBD_OPT_EXPORT_NAME (the old way in): size and flags, then 124 zero
# bytes unless the client said NO_ZEROES; then a read with a simple reply,
# and a disconnect, after which the server closes
for client_flags in (3, 1):
    greeted(client_flags)
    option(1, b"disk")  # EXPORT_NAME
    size, tflags = struct.unpack(">QH", recv(10))
    assert size == 8 << 20 and tflags & 1, (size, tflags)
    if not client_flags & 2:
        assert recv(124) == bytes(124)
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 7, 0, 4096))  # READ
    magic, err, cookie = struct.unpack(">IIQ", recv(16))
    assert (magic, err, cookie) == (0x67446698, 0, 7), (hex(magic), err, cookie)
    assert recv(4096) == b"\x61" * 4096
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 2, 8, 0, 0))  # DISC
    assert s.recv(1) == b"", "the server closes after a disconnect"
    s.close()
print("ok")
"#;

#[test]
fn info_list_abort_cache_req_one_and_unknown_options_through_libnbd() {
    let f = Served::new(8 * MIB);
    f.export_snapshot("frozen", "s1");
    nbdsh(
        OPTIONS_PY,
        &["options", &f.uri("disk"), f.host(), f.port()],
        "options",
    );
    // the write went through, the rest is a hole
    let mut buf = vec![0u8; 65536];
    let (_store, v, _dir) = f.stop_and_open();
    v.read(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 0x61));
}

/// Simple replies (what the kernel's client reads) with many requests in
/// flight: libnbd without structured replies queues 64 writes, then 64
/// reads (64 KiB each: the mapped path), and every read gets its own bytes.
const SIMPLE_PY: &str = r#"
import sys, nbd
sys.argv = ARGS
h = nbd.NBD()
h.set_request_structured_replies(False)
h.connect_uri(sys.argv[1])
assert not h.get_structured_replies_negotiated()
K = 65536
for i in range(64):
    h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray([i]) * K), (i + 16) * K)
while h.aio_in_flight() > 0:
    h.poll(-1)
reads = [nbd.Buffer(K) for _ in range(64)]
for i in range(64):
    h.aio_pread(reads[i], (i + 16) * K)
while h.aio_in_flight() > 0:
    h.poll(-1)
for i in range(64):
    assert reads[i].to_bytearray() == bytearray([i]) * K, f"read {i}"
h.flush()
h.shutdown()
print("ok")
"#;

#[test]
fn simple_replies_with_many_requests_in_flight() {
    let f = Served::new(8 * MIB);
    nbdsh(SIMPLE_PY, &["simple", &f.uri("disk")], "simple replies");
    let mut buf = vec![0u8; 65536];
    let (_store, vol, _dir) = f.stop_and_open();
    for i in 0..64u64 {
        vol.read(&mut buf, (i + 16) * 65536).unwrap();
        assert!(buf.iter().all(|&b| b == i as u8), "block {i} on disk");
    }
}
