//! Helpers for the proxy's tests: an echo server, a sink server, a byte
//! pattern that finds any lost, altered or reordered byte, and a bounded
//! wait for a condition.
#![allow(dead_code)] // each test binary uses a part

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long any wait for something that must happen may take.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * 1024;

/// Byte `pos` of the stream numbered `seed`: a hash of both, so a byte
/// lost, duplicated or moved shows at the next byte checked.
pub fn pattern_fill(seed: u64, offset: usize, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let pos = (offset + i) as u64;
        let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (pos / 8).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 31)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 29;
        *b = (z >> (8 * (pos % 8))) as u8;
    }
}

/// Checks that `buf` is the pattern `seed` from `offset`; names the first
/// wrong byte.
pub fn pattern_check(seed: u64, offset: usize, buf: &[u8]) -> Result<(), String> {
    let mut want = vec![0u8; buf.len()];
    pattern_fill(seed, offset, &mut want);
    match buf.iter().zip(&want).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => Err(format!(
            "stream {seed}: byte {} is {:#04x}, expected {:#04x}",
            offset + i,
            buf[i],
            want[i]
        )),
    }
}

/// Writes `len` bytes of pattern `seed` from `offset`.
pub fn send_pattern(
    stream: &mut TcpStream,
    seed: u64,
    offset: usize,
    len: usize,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * KIB];
    let mut sent = 0;
    while sent < len {
        let n = (len - sent).min(buf.len());
        pattern_fill(seed, offset + sent, &mut buf[..n]);
        stream.write_all(&buf[..n])?;
        sent += n;
    }
    Ok(())
}

/// Reads exactly `len` bytes and checks them against pattern `seed` from `offset`.
pub fn recv_pattern(stream: &mut TcpStream, seed: u64, offset: usize, len: usize) {
    let mut buf = vec![0u8; 64 * KIB];
    let mut got = 0;
    while got < len {
        let n = (len - got).min(buf.len());
        stream
            .read_exact(&mut buf[..n])
            .unwrap_or_else(|e| panic!("reading byte {} of {len}: {e}", offset + got));
        pattern_check(seed, offset + got, &buf[..n]).unwrap();
        got += n;
    }
}

/// A loopback listener on a free port.
pub fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

/// An echo server: every connection gets back what it sends, and an end
/// of stream when it ends its own.
pub fn echo_server() -> SocketAddr {
    let l = listener();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(mut stream) = stream else { return };
            thread::spawn(move || {
                let mut buf = vec![0u8; 64 * KIB];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) => {
                            let _ = stream.shutdown(Shutdown::Write);
                            return;
                        }
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
            });
        }
    });
    addr
}

/// What a sink connection received.
#[derive(Debug)]
pub struct Sunk {
    pub bytes: usize,
    /// The stream was pattern `seed` (the first 8 bytes, little-endian, are the seed).
    pub pattern_ok: Result<(), String>,
    /// How the stream ended: `Ok` for an end of stream, else the error kind.
    pub end: Result<(), ErrorKind>,
    /// When the last byte, or the end, arrived.
    pub at: Instant,
}

/// A sink: reads each connection to its end, checks the pattern named by
/// the connection's first 8 bytes, and reports on the channel.
pub fn sink_server() -> (SocketAddr, mpsc::Receiver<Sunk>) {
    let l = listener();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(mut stream) = stream else { return };
            let tx = tx.clone();
            thread::spawn(move || {
                let mut buf = vec![0u8; 64 * KIB];
                let mut bytes = 0usize;
                let mut seed = None;
                let mut head = Vec::new();
                let mut pattern_ok = Ok(());
                let end = loop {
                    match stream.read(&mut buf) {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            let data = &buf[..n];
                            if seed.is_none() {
                                head.extend_from_slice(data);
                                if head.len() >= 8 {
                                    let s = u64::from_le_bytes(head[..8].try_into().unwrap());
                                    seed = Some(s);
                                    if pattern_ok.is_ok() {
                                        pattern_ok = pattern_check(s, 8, &head[8..]);
                                    }
                                }
                            } else if pattern_ok.is_ok() {
                                pattern_ok = pattern_check(seed.unwrap_or(0), bytes, data);
                            }
                            bytes += n;
                        }
                        Err(e) => break Err(e.kind()),
                    }
                };
                let _ = tx.send(Sunk {
                    bytes,
                    pattern_ok,
                    end,
                    at: Instant::now(),
                });
            });
        }
    });
    (addr, rx)
}

/// Sends a sink stream: the seed, then `len - 8` bytes of its pattern
/// (from offset 8). Returns the first write error, if any.
pub fn send_to_sink(stream: &mut TcpStream, seed: u64, len: usize) -> io::Result<()> {
    stream.write_all(&seed.to_le_bytes())?;
    send_pattern(stream, seed, 8, len - 8)
}

/// Waits until `cond` holds, panicking with `what` after [`DEADLINE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Receives from `rx` within [`DEADLINE`].
pub fn recv<T>(rx: &mpsc::Receiver<T>, what: &str) -> T {
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
}

/// Whether anything arrives on `stream` within `patience` (it must be
/// nothing: the caller asserts that a partition holds).
pub fn arrives_within(stream: &mut TcpStream, patience: Duration) -> bool {
    stream.set_read_timeout(Some(patience)).unwrap();
    let mut b = [0u8; 1];
    let arrived = match stream.peek(&mut b) {
        Ok(_) => true,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(e) => panic!("peek: {e}"),
    };
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    arrived
}
