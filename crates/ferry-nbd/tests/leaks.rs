//! Connections come and go without leaving anything behind. Alone in its
//! test binary, so no other test's descriptors or threads are counted.

mod common;

use common::{Fixture, RawClient};
use ferry_nbd::proto::CMD_READ;

const MIB: u64 = 1 << 20;

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_thousand_connections_leak_nothing() {
    let f = Fixture::new(MIB);
    let cycle = |n: usize| {
        for _ in 0..n {
            let mut c = RawClient::connect(f.addr, "disk");
            assert_eq!(c.call(CMD_READ, 0, 0, 4096, &[]).0, 0);
            c.disconnect();
        }
        f.server.wait_idle();
    };
    cycle(50);
    let (fds, threads, rss) = (count("/proc/self/fd"), count("/proc/self/task"), rss_kib());
    cycle(1000);
    assert_eq!(count("/proc/self/fd"), fds, "file descriptors leaked");
    // A connection's thread leaves the registry just before it exits, so one
    // may still be on its way out; a leak would leave a thousand.
    let now = count("/proc/self/task");
    assert!(
        now <= threads + 2,
        "threads leaked: {threads} before, {now} after"
    );
    let grown = rss_kib().saturating_sub(rss);
    assert!(
        grown < 16 * 1024,
        "RSS grew by {grown} KiB over 1000 connections"
    );
}
