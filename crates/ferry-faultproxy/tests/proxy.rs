//! The proxy as a library, over real TCP sockets on 127.0.0.1: bytes pass
//! intact, and each fault does what the crate documentation says. Lower
//! bounds on elapsed time are asserted where the proxy causes them; upper
//! bounds only where they are many times what the proxy needs (a 2-core
//! machine may be busy).

mod common;

use common::*;
use ferry_faultproxy::{ByteSize, FaultProxy, Faults, Rate};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

fn start(target: SocketAddr, faults: Faults) -> FaultProxy {
    FaultProxy::start("127.0.0.1:0".parse().unwrap(), target, faults).unwrap()
}

fn connect(proxy: &FaultProxy) -> TcpStream {
    let s = TcpStream::connect(proxy.local_addr()).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

/// A connection through the proxy to a listener the test holds: the
/// client end and the server end.
fn pair(proxy: &FaultProxy, target: &TcpListener) -> (TcpStream, TcpStream) {
    let client = connect(proxy);
    let (server, _) = target.accept().unwrap();
    server.set_read_timeout(Some(DEADLINE)).unwrap();
    (client, server)
}

/// Sends `len` bytes of pattern `seed` through the echo server and checks
/// what comes back, then that the end of stream comes back too.
fn echo_round(mut stream: TcpStream, seed: u64, len: usize) {
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        send_pattern(&mut writer, seed, 0, len).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    recv_pattern(&mut stream, seed, 0, len);
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{} bytes after the end", rest.len());
    sender.join().unwrap();
}

fn is_reset(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)
}

#[test]
fn bytes_pass_unchanged_both_ways() {
    let proxy = start(echo_server(), Faults::default());
    echo_round(connect(&proxy), 1, MIB + 17);
    wait_until("the stats to count every byte and the close", || {
        let s = proxy.stats();
        s.bytes_to_target == (MIB + 17) as u64
            && s.bytes_to_client == (MIB + 17) as u64
            && s.connections_open == 0
    });
    let s = proxy.stats();
    assert_eq!((s.connections_accepted, s.resets_injected), (1, 0));
}

#[test]
fn many_connections_at_once() {
    const CONNS: usize = 32;
    let proxy = start(echo_server(), Faults::default());
    let barrier = Arc::new(Barrier::new(CONNS));
    let threads: Vec<_> = (0..CONNS)
        .map(|i| {
            let stream = connect(&proxy);
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait(); // every connection is open before any sends
                echo_round(stream, 100 + i as u64, 256 * KIB + i);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(proxy.stats().connections_accepted, CONNS as u64);
    wait_until("every connection to close", || {
        proxy.stats().connections_open == 0
    });
}

#[test]
fn large_transfer_keeps_every_byte() {
    let proxy = start(echo_server(), Faults::default());
    echo_round(connect(&proxy), 7, 64 * MIB);
    wait_until("the stats to count 64 MiB each way", || {
        let s = proxy.stats();
        s.bytes_to_target == 64 * MIB as u64 && s.bytes_to_client == 64 * MIB as u64
    });
}

#[test]
fn delay_makes_a_round_trip_take_twice_the_delay_even_on_a_live_connection() {
    let delay = Duration::from_millis(50);
    let proxy = start(echo_server(), Faults::default());
    let mut s = connect(&proxy);
    let mut b = [0u8; 1];
    s.write_all(b"x").unwrap();
    s.read_exact(&mut b).unwrap(); // connected onward, no delay yet
    proxy.set_faults(Faults {
        delay,
        ..Faults::default()
    });
    for i in 0..5u8 {
        let t = Instant::now();
        s.write_all(&[i]).unwrap();
        s.read_exact(&mut b).unwrap();
        let rtt = t.elapsed();
        assert_eq!(b[0], i);
        assert!(
            rtt >= 2 * delay,
            "round trip {i} took {rtt:?}, less than twice the delay"
        );
    }
}

#[test]
fn delay_pipelines_a_bulk_transfer() {
    let delay = Duration::from_millis(50);
    let (sink, sunk) = sink_server();
    let proxy = start(
        sink,
        Faults {
            delay,
            ..Faults::default()
        },
    );
    let len = 32 * MIB;
    let t = Instant::now();
    let mut s = connect(&proxy);
    send_to_sink(&mut s, 3, len).unwrap();
    drop(s);
    let got = recv(&sunk, "the sink");
    let elapsed = got.at - t;
    assert_eq!((got.bytes, got.end), (len, Ok(())));
    got.pattern_ok.unwrap();
    assert!(elapsed >= delay, "{elapsed:?}");
    // Stop-and-wait would move at most one 64 KiB chunk per delay: 512 delays.
    let stop_and_wait = delay * (len / (64 * KIB)) as u32;
    assert!(
        elapsed < stop_and_wait / 4,
        "32 MiB took {elapsed:?}; stop-and-wait would take {stop_and_wait:?}"
    );
}

#[test]
fn jitter_keeps_the_order() {
    let faults = Faults {
        delay: Duration::from_millis(1),
        jitter: Duration::from_millis(20),
        ..Faults::default()
    };
    let proxy = start(echo_server(), faults);
    echo_round(connect(&proxy), 11, 4 * MIB);
}

/// The burst at `rate` bytes a second, as the crate documents it.
fn burst(bytes_per_sec: f64) -> f64 {
    (bytes_per_sec * 0.010).max(1500.0)
}

#[test]
fn rate_caps_the_throughput() {
    let rate = 40_000_000u64; // 5 MB/s
    let (sink, sunk) = sink_server();
    let proxy = start(
        sink,
        Faults {
            rate: Rate::from_bits_per_sec(rate),
            ..Faults::default()
        },
    );
    let len = 4 * MIB;
    let t = Instant::now();
    let mut s = connect(&proxy);
    send_to_sink(&mut s, 5, len).unwrap();
    drop(s);
    let got = recv(&sunk, "the sink");
    got.pattern_ok.unwrap();
    assert_eq!(got.bytes, len);
    let bytes_per_sec = rate as f64 / 8.0;
    let floor = (len as f64 - burst(bytes_per_sec)) / bytes_per_sec;
    let elapsed = (got.at - t).as_secs_f64();
    assert!(
        elapsed >= floor,
        "{len} bytes at {rate} bit/s took {elapsed:.3} s, less than {floor:.3} s"
    );
}

#[test]
fn rate_is_shared_by_the_connections_of_a_direction() {
    let rate = 40_000_000u64;
    let (sink, sunk) = sink_server();
    let proxy = start(
        sink,
        Faults {
            rate: Rate::from_bits_per_sec(rate),
            ..Faults::default()
        },
    );
    let len = 2 * MIB;
    let t = Instant::now();
    let senders: Vec<_> = (0..2)
        .map(|i| {
            let mut s = connect(&proxy);
            thread::spawn(move || send_to_sink(&mut s, 20 + i, len).unwrap())
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let (a, b) = (
        recv(&sunk, "the first sink"),
        recv(&sunk, "the second sink"),
    );
    for got in [&a, &b] {
        assert_eq!(got.bytes, len);
        assert!(got.pattern_ok.is_ok(), "{:?}", got.pattern_ok);
    }
    let bytes_per_sec = rate as f64 / 8.0;
    let floor = (2.0 * len as f64 - burst(bytes_per_sec)) / bytes_per_sec;
    let elapsed = (a.at.max(b.at) - t).as_secs_f64();
    assert!(
        elapsed >= floor,
        "2 × {len} bytes at {rate} bit/s took {elapsed:.3} s, less than {floor:.3} s"
    );
}

#[test]
fn a_new_rate_reaches_live_connections() {
    let (sink, sunk) = sink_server();
    let slow = Rate::from_bits_per_sec(8_000); // 1,000 bytes a second
    let proxy = start(
        sink,
        Faults {
            rate: slow,
            ..Faults::default()
        },
    );
    let len = 256 * KIB; // over four minutes at that rate
    let mut s = connect(&proxy);
    let sender = thread::spawn(move || send_to_sink(&mut s, 9, len).unwrap());
    wait_until("the first burst", || proxy.stats().bytes_to_target >= 1500);
    assert!(
        proxy.stats().bytes_to_target < 64 * KIB as u64,
        "the cap did not hold"
    );
    proxy.set_faults(Faults::default());
    sender.join().unwrap();
    let got = recv(&sunk, "the sink");
    assert_eq!(got.bytes, len);
    got.pattern_ok.unwrap();
}

#[test]
fn reset_every_resets_both_peers_after_n_bytes() {
    let n = MIB;
    let (sink, sunk) = sink_server();
    let proxy = start(
        sink,
        Faults {
            reset_every: ByteSize::new(n as u64),
            ..Faults::default()
        },
    );
    let mut s = connect(&proxy);
    // Write until the reset shows; far more than N plus every buffer on the way.
    let mut sent = 0;
    let client_err = loop {
        assert!(sent < 256 * MIB, "no reset after {sent} bytes");
        let r = if sent == 0 {
            send_to_sink(&mut s, 13, 64 * KIB)
        } else {
            send_pattern(&mut s, 13, sent, 64 * KIB)
        };
        match r {
            Ok(()) => sent += 64 * KIB,
            Err(e) => break e,
        }
    };
    assert!(
        is_reset(client_err.kind()),
        "the client saw {client_err:?}, not a reset"
    );
    let got = recv(&sunk, "the sink");
    assert_eq!(
        got.end,
        Err(ErrorKind::ConnectionReset),
        "the server must see a reset, not an end of stream"
    );
    got.pattern_ok.unwrap();
    assert!(
        got.bytes <= n && got.bytes >= n * 3 / 4,
        "the server got {} bytes before the reset, N is {n}",
        got.bytes
    );
    wait_until("the reset to be counted", || {
        proxy.stats().resets_injected == 1
    });
    assert_eq!(
        proxy.stats().bytes_to_target,
        n as u64,
        "the proxy forwards exactly N bytes"
    );
}

/// A receive buffer so small that most of what the proxy writes waits in
/// its own send buffer: an RST sent at once would discard it.
fn shrink_receive_buffer(l: &TcpListener) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4096;
    // SAFETY: setsockopt reads one int from the pointer, which points at `size`.
    let rc = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn reset_every_delivers_the_last_bytes_before_resetting() {
    let n = MIB;
    let target = listener();
    shrink_receive_buffer(&target);
    let proxy = start(
        target.local_addr().unwrap(),
        Faults {
            reset_every: ByteSize::new(n as u64),
            ..Faults::default()
        },
    );
    let (mut client, mut server) = pair(&proxy, &target);
    let sender = thread::spawn(move || {
        let mut sent = 0;
        while sent < 256 * MIB {
            if let Err(e) = send_pattern(&mut client, 8, sent, 64 * KIB) {
                return e.kind();
            }
            sent += 64 * KIB;
        }
        panic!("no reset after {sent} bytes");
    });
    let mut buf = vec![0u8; 64 * KIB];
    let mut got = 0;
    let end = loop {
        match server.read(&mut buf) {
            Ok(0) => panic!("an end of stream instead of a reset"),
            Ok(k) => {
                pattern_check(8, got, &buf[..k]).unwrap();
                got += k;
            }
            Err(e) => break e.kind(),
        }
    };
    assert_eq!(end, ErrorKind::ConnectionReset);
    assert_eq!(
        got, n,
        "the server must get exactly N bytes before the reset"
    );
    assert!(is_reset(sender.join().unwrap()));
}

#[test]
fn reset_every_counts_both_directions() {
    let n = 256 * KIB;
    let proxy = start(
        echo_server(),
        Faults {
            reset_every: ByteSize::new(n as u64),
            ..Faults::default()
        },
    );
    let mut s = connect(&proxy);
    send_pattern(&mut s, 4, 0, 100 * KIB).unwrap();
    recv_pattern(&mut s, 4, 0, 100 * KIB); // 200 KiB crossed: still alive
    // 100 KiB more up: N is reached on the way, counting what comes back too.
    let _ = send_pattern(&mut s, 4, 100 * KIB, 100 * KIB);
    let mut buf = vec![0u8; 64 * KIB];
    let mut back = 0;
    let err = loop {
        match s.read(&mut buf) {
            Ok(0) => panic!("an end of stream instead of a reset"),
            Ok(got) => {
                pattern_check(4, 100 * KIB + back, &buf[..got]).unwrap();
                back += got;
            }
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    wait_until("the reset to be counted", || {
        proxy.stats().resets_injected == 1
    });
    let st = proxy.stats();
    assert_eq!(st.bytes_to_target + st.bytes_to_client, n as u64, "{st:?}");
    assert!(st.bytes_to_target > 100 * KIB as u64, "{st:?}");
    assert_eq!(back as u64, st.bytes_to_client - 100 * KIB as u64, "{st:?}");
}

#[test]
fn reset_all_resets_every_live_connection() {
    let proxy = start(echo_server(), Faults::default());
    let mut conns: Vec<TcpStream> = (0..2).map(|_| connect(&proxy)).collect();
    for (i, s) in conns.iter_mut().enumerate() {
        send_pattern(s, i as u64, 0, 1000).unwrap();
        recv_pattern(s, i as u64, 0, 1000);
    }
    proxy.reset_all();
    for s in &mut conns {
        let mut b = [0u8; 16];
        let r = s.read(&mut b);
        assert_eq!(r.map_err(|e| e.kind()), Err(ErrorKind::ConnectionReset));
    }
    wait_until("both resets to be counted", || {
        proxy.stats().resets_injected == 2
    });
    // Later connections are not affected.
    echo_round(connect(&proxy), 3, 1000);
}

#[test]
fn partition_holds_data_both_ways_and_releases_it_in_order() {
    let target = listener();
    let proxy = start(target.local_addr().unwrap(), Faults::default());
    let (mut client, mut server) = pair(&proxy, &target);
    proxy.partition(true);
    // 64 KiB fits in the socket buffers: written before the check, at once.
    send_pattern(&mut client, 1, 0, 64 * KIB).unwrap();
    let mut more = client.try_clone().unwrap();
    let sender = thread::spawn(move || send_pattern(&mut more, 1, 64 * KIB, 4 * MIB).unwrap());
    send_pattern(&mut server, 2, 0, 4 * KIB).unwrap();
    assert!(
        !arrives_within(&mut server, Duration::from_millis(300)),
        "data crossed the partition to the target"
    );
    assert!(
        !arrives_within(&mut client, Duration::from_millis(300)),
        "data crossed the partition to the client"
    );
    let st = proxy.stats();
    assert_eq!((st.bytes_to_target, st.bytes_to_client), (0, 0));
    proxy.partition(false);
    recv_pattern(&mut server, 1, 0, 64 * KIB + 4 * MIB);
    recv_pattern(&mut client, 2, 0, 4 * KIB);
    sender.join().unwrap();
}

#[test]
fn partition_holds_new_connections_until_it_ends() {
    let target = listener();
    target.set_nonblocking(true).unwrap();
    let proxy = start(target.local_addr().unwrap(), Faults::default());
    proxy.partition(true);
    let mut client = connect(&proxy);
    client.write_all(b"hello").unwrap();
    wait_until("the proxy to accept the client", || {
        proxy.stats().connections_accepted == 1
    });
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        match target.accept() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(10)),
            other => panic!("the proxy connected onward during the partition: {other:?}"),
        }
    }
    proxy.partition(false);
    let mut server = None;
    wait_until("the onward connection", || match target.accept() {
        Ok((s, _)) => {
            server = Some(s);
            true
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    });
    let mut server = server.unwrap();
    server.set_nonblocking(false).unwrap();
    server.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut b = [0u8; 5];
    server.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello");
}

#[test]
fn reset_all_reaches_connections_held_by_a_partition() {
    let target = listener();
    let proxy = start(target.local_addr().unwrap(), Faults::default());
    proxy.partition(true);
    let mut client = connect(&proxy);
    wait_until("the proxy to accept the client", || {
        proxy.stats().connections_accepted == 1
    });
    proxy.reset_all();
    let mut b = [0u8; 1];
    assert_eq!(
        client.read(&mut b).map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionReset)
    );
    assert_eq!(proxy.stats().resets_injected, 1);
}

#[test]
fn stop_closes_the_listener_and_the_connections() {
    let proxy = start(echo_server(), Faults::default());
    let addr = proxy.local_addr();
    let mut s = connect(&proxy);
    send_pattern(&mut s, 0, 0, 100).unwrap();
    recv_pattern(&mut s, 0, 0, 100);
    proxy.stop();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => {}
        Ok(_) => panic!("data after stop"),
        Err(e) => assert!(is_reset(e.kind()), "{e:?}"),
    }
    assert_eq!(
        TcpStream::connect(addr).map_err(|e| e.kind()).err(),
        Some(ErrorKind::ConnectionRefused)
    );
}
