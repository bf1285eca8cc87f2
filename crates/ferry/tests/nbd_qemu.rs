//! qemu's NBD client (qemu-io, qemu-img) against ferryd.

mod common;

use common::served::{MIB, Served, qemu_io, qemu_io_ro, run, run_raw};

#[test]
fn qemu_io_patterns_verify() {
    let f = Served::new(64 * MIB);
    let uri = f.uri("disk");
    qemu_io(
        &uri,
        &[
            "write -P 0xab 0 64k",
            "read -P 0xab 0 64k",
            // unaligned: 511 bytes at 4097
            "write -P 0xcd 4097 511",
            "read -P 0xcd 4097 511",
            "read -P 0xab 0 4097",
            "read -P 0xab 4608 60928",
            // write zeroes, without and with unmap
            "write -z 8k 8k",
            "read -P 0 8k 8k",
            "write -z -u 16k 16k",
            "read -P 0 16k 16k",
            "discard 40k 8k",
            "read -P 0 40k 8k",
            "read -P 0xab 48k 16k",
            // FUA, then flush
            "write -f -P 0x11 1M 4k",
            "flush",
            "read -P 0x11 1M 4k",
            // a batch in flight at once
            "aio_write -P 0x21 2M 4k",
            "aio_write -P 0x22 3M 64k",
            "aio_write -P 0x23 4M 1k",
            "aio_write -P 0x24 5M 1M",
            "aio_flush",
            "read -P 0x21 2M 4k",
            "read -P 0x22 3M 64k",
            "read -P 0x23 4M 1k",
            "read -P 0x24 5M 1M",
            // 32 MiB requests, the largest the server takes
            "write -P 0x5a 16M 32M",
            "read -P 0x5a 16M 32M",
        ],
    );
    // a second connection sees them
    qemu_io(&uri, &["read -P 0x24 5M 1M", "read -P 0 40k 8k"]);
    // The bytes are in the engine's files, not only in what the server said.
    let (_store, v, _dir) = f.stop_and_open();
    let mut buf = vec![0u8; 4608];
    v.read(&mut buf, 0).unwrap();
    assert!(buf[..4097].iter().all(|&b| b == 0xab));
    assert!(buf[4097..].iter().all(|&b| b == 0xcd));
    let mut big = vec![0u8; (32 * MIB) as usize];
    v.read(&mut big, 16 * MIB).unwrap();
    assert!(big.iter().all(|&b| b == 0x5a));
}

#[test]
fn qemu_img_convert_compare_and_map() {
    let f = Served::new(16 * MIB);
    let dir = f.work();
    let src = dir.join("src.img");
    let src_s = src.to_str().unwrap();
    run("qemu-img", &["create", "-f", "raw", src_s, "16M"]);
    // data at 0-1M and 8-9M; everything else a hole
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x61 0 1M",
            "-c",
            "write -P 0x62 8M 1M",
            src_s,
        ],
    );
    let uri = f.uri("disk");
    run(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", src_s, &uri],
    );
    run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", src_s, &uri],
    );

    // The map sees the zero areas as zero and not data.
    let map = run("qemu-img", &["map", "--output=json", "-f", "raw", &uri]);
    let entries: Vec<&str> = map.lines().filter(|l| l.contains("\"start\"")).collect();
    let data_at = |start: u64| {
        entries
            .iter()
            .any(|e| e.contains(&format!("\"start\": {start},")) && e.contains("\"data\": true"))
    };
    assert!(data_at(0), "{map}");
    assert!(data_at(8 * MIB), "{map}");
    assert!(
        entries
            .iter()
            .any(|e| e.contains(&format!("\"start\": {},", MIB))
                && e.contains("\"zero\": true")
                && e.contains("\"data\": false")),
        "the hole after the first MiB is not reported as zero: {map}"
    );

    // Out again, byte for byte.
    let out = dir.join("out.img");
    let out_s = out.to_str().unwrap();
    run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &uri, out_s],
    );
    assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&out).unwrap());
}

#[test]
fn snapshot_export_is_read_only_and_frozen() {
    let f = Served::new(4 * MIB);
    let uri = f.uri("disk");
    qemu_io(&uri, &["write -P 0x31 0 1M"]);
    f.export_snapshot("frozen", "s1");
    qemu_io(&uri, &["write -P 0x32 0 1M"]);
    let snap = f.uri("frozen");
    qemu_io_ro(&snap, &["read -P 0x31 0 1M"]);
    let out = run_raw("qemu-io", &["-f", "raw", "-c", "write -P 0x33 0 4k", &snap]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && (text.contains("read-only") || text.contains("Permission denied")),
        "writing to a snapshot export was not refused: {text}"
    );
    qemu_io_ro(&snap, &["read -P 0x31 0 1M"]);
    qemu_io(&uri, &["read -P 0x32 0 1M"]);
}
