//! fio's nbd engine (libnbd underneath) against ferryd, with data verification.

mod common;

use common::served::{MIB, Served, run};

fn fio(f: &Served, args: &[&str]) -> String {
    let uri = format!("--uri={}", f.uri("disk"));
    // No verify state files left in the working directory.
    let mut all = vec![
        "--ioengine=nbd",
        uri.as_str(),
        "--output-format=normal",
        "--verify_state_save=0",
    ];
    all.extend_from_slice(args);
    let out = run("fio", &all);
    assert!(!out.contains("verify: bad"), "{out}");
    assert!(out.contains("err= 0"), "fio reported an error:\n{out}");
    if args.iter().any(|a| a.starts_with("--verify=")) {
        // the verify pass reads everything back
        assert!(out.contains("read: IOPS="), "no verify reads:\n{out}");
    }
    out
}

#[test]
fn fio_random_writes_verify_crc32c() {
    let f = Served::new(64 * MIB);
    fio(
        &f,
        &[
            "--name=randwrite",
            "--rw=randwrite",
            "--bs=4k",
            "--size=32M",
            "--iodepth=32",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
        ],
    );
}

#[test]
fn fio_mixed_block_sizes_verify_md5() {
    let f = Served::new(64 * MIB);
    fio(
        &f,
        &[
            "--name=mixed",
            "--rw=randwrite",
            "--bsrange=512-256k",
            "--size=48M",
            "--iodepth=16",
            "--verify=md5",
            "--do_verify=1",
            "--verify_fatal=1",
        ],
    );
}

#[test]
fn fio_random_trim_then_reads_zeros() {
    let f = Served::new(32 * MIB);
    // fill, then trim at random: trimmed blocks must read back as zeros
    fio(
        &f,
        &[
            "--name=fill",
            "--rw=write",
            "--bs=1M",
            "--size=32M",
            "--iodepth=4",
        ],
    );
    fio(
        &f,
        &[
            "--name=trim",
            "--rw=randtrim",
            "--bs=64k",
            "--size=32M",
            "--iodepth=8",
            "--number_ios=128",
        ],
    );
    // fio itself checked no errors; the store shows space came back
    let (_store, v, _dir) = f.stop_and_open();
    let runs = v.allocation(0, 32 * MIB).unwrap();
    let zero: u64 = runs
        .iter()
        .filter(|r| r.1 == ferry_store::Allocation::Zero)
        .map(|r| r.0)
        .sum();
    assert!(zero >= 64 * 1024, "no trimmed space: {runs:?}");
    // and every trimmed extent reads as zeros
    let mut pos = 0;
    for (len, kind) in runs {
        if kind == ferry_store::Allocation::Zero {
            let mut buf = vec![1u8; len as usize];
            v.read(&mut buf, pos).unwrap();
            assert!(buf.iter().all(|&b| b == 0));
        }
        pos += len;
    }
}

#[test]
fn fio_two_jobs_at_once_verify() {
    let f = Served::new(64 * MIB);
    fio(
        &f,
        &[
            "--name=a",
            "--rw=randwrite",
            "--bs=4k",
            "--offset=0",
            "--size=16M",
            "--iodepth=16",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--name=b",
            "--rw=randwrite",
            "--bs=64k",
            "--offset=32M",
            "--size=16M",
            "--iodepth=8",
            "--verify=md5",
            "--verify_fatal=1",
        ],
    );
}
