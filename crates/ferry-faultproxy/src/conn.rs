//! One proxied connection: the onward connect (held while partitioned) and
//! two directions, each a reader and a writer joined by a delay line.
//!
//! ```text
//!  client ──read──▶ [delay line] ──tokens, budget, gate──write──▶ target
//!  client ◀──write── gate, budget, tokens── [delay line] ◀──read── target
//! ```
//!
//! Everything of one connection runs in one task (both directions are
//! futures joined together), so a reset drops every future first and then
//! closes both sockets with `SO_LINGER` 0: each peer gets an RST and no FIN
//! before it. The reset budget is shared by the two writers through plain
//! atomics; since they are in one task, `Budget::reserve` is never entered
//! twice at once.
//!
//! The delay line is a queue of chunks, each stamped when read with the
//! instant it may leave (read time + delay + jitter, never before the chunk
//! ahead of it). The reader keeps reading while chunks wait, up to
//! [`MAX_IN_FLIGHT`] bytes per direction, so a delay adds latency without
//! capping throughput below `MAX_IN_FLIGHT / delay` (160 MiB/s at 50 ms).
//!
//! The partition gate is checked by the reader before each read and by the
//! writer just before each write, so data read before the cut is held in
//! the line, and data sent during it stays in the senders' socket buffers.
//! A write already under way when the cut comes finishes (at most one
//! chunk).

use crate::bucket::TokenBucket;
use crate::proxy::{Control, Shared};
use parking_lot::Mutex;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::sync::{Semaphore, SemaphorePermit, mpsc, watch};
use tokio::time::Instant;

/// The largest read, and so the largest chunk in a delay line.
pub(crate) const CHUNK: usize = 64 * 1024;
/// Bytes read from one side and not yet written to the other, per direction
/// of a connection.
pub(crate) const MAX_IN_FLIGHT: usize = 8 << 20;
/// How long a reset after `reset_every` bytes waits for the last bytes to
/// reach the peer's kernel (an RST discards what is still unsent).
const DRAIN_PATIENCE: Duration = Duration::from_millis(500);

/// A direction of a connection; indexes the shared counters and buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    ToTarget = 0,
    ToClient = 1,
}

/// How a connection ends other than by both directions closing cleanly.
#[derive(Debug)]
enum End {
    /// `reset_every` bytes crossed: reset both peers.
    ResetEvery,
    /// `reset_all`: reset both peers.
    ResetAll,
    /// A peer failed (reset, broken pipe): pass the failure on as a reset.
    Peer(io::Error),
}

/// A connection task, before it has connected onward.
pub(crate) struct Conn {
    pub(crate) id: u64,
    pub(crate) target: SocketAddr,
    pub(crate) shared: Arc<Shared>,
    pub(crate) control: watch::Receiver<Control>,
    /// The reset epoch at accept time.
    pub(crate) epoch: u64,
}

struct Chunk<'a> {
    data: Vec<u8>,
    due: Instant,
    /// Holds `data.len()` bytes of the direction's in-flight allowance.
    _permit: SemaphorePermit<'a>,
}

impl Conn {
    pub(crate) async fn run(self, mut client: TcpStream) {
        let _open = OpenGuard::new(&self.shared);
        // Small messages must not wait for Nagle: the proxy adds only the delay asked for.
        let _ = client.set_nodelay(true);
        let mut reset_watch = self.control.clone();
        let connect = async {
            let mut gate = self.control.clone();
            unpartitioned(&mut gate).await;
            TcpStream::connect(self.target).await
        };
        let server = tokio::select! {
            biased;
            _ = reset_requested(&mut reset_watch, self.epoch) => {
                self.count_reset("reset-now before the onward connection");
                abort(client);
                return;
            }
            r = connect => r,
        };
        let mut server = match server {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "cannot connect to the target; resetting the client");
                abort(client);
                return;
            }
        };
        let _ = server.set_nodelay(true);
        tracing::debug!("connected");
        let end = {
            let (client_read, client_write) = client.split();
            let (server_read, server_write) = server.split();
            let budget = Budget::default();
            let up = self.direction(Dir::ToTarget, client_read, server_write, &budget);
            let down = self.direction(Dir::ToClient, server_read, client_write, &budget);
            tokio::select! {
                biased;
                _ = reset_requested(&mut reset_watch, self.epoch) => Some(End::ResetAll),
                r = async { tokio::try_join!(up, down) } => r.err(),
            }
        };
        match &end {
            None => tracing::debug!("closed by both peers"),
            Some(End::ResetEvery) => self.count_reset("reset-every reached"),
            Some(End::ResetAll) => self.count_reset("reset-now"),
            Some(End::Peer(e)) => tracing::debug!(error = %e, "a peer failed; resetting both"),
        }
        if end.is_some() {
            abort(client);
            abort(server);
        }
    }

    fn count_reset(&self, why: &str) {
        self.shared.resets.fetch_add(1, Ordering::Relaxed);
        tracing::info!(why, "resetting the connection");
    }

    /// One direction: the reader and writer joined. Ends `Ok` when the
    /// source closed and everything read was written and the end passed on.
    async fn direction(
        &self,
        dir: Dir,
        src: ReadHalf<'_>,
        dst: WriteHalf<'_>,
        budget: &Budget,
    ) -> Result<(), End> {
        let in_flight = Semaphore::new(MAX_IN_FLIGHT);
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = self.read_side(dir, src, tx, &in_flight);
        let writer = self.write_side(dir, dst, rx, budget);
        tokio::try_join!(reader, writer).map(|_| ())
    }

    async fn read_side<'a>(
        &self,
        dir: Dir,
        mut src: ReadHalf<'_>,
        tx: mpsc::UnboundedSender<Chunk<'a>>,
        in_flight: &'a Semaphore,
    ) -> Result<(), End> {
        let mut control = self.control.clone();
        let mut jitter = Jitter::new(self.id, dir);
        let mut buf = vec![0u8; CHUNK];
        let mut last_due = Instant::now();
        loop {
            // The semaphore is never closed; Err cannot happen.
            let Ok(mut permit) = in_flight.acquire_many(CHUNK as u32).await else {
                return Ok(());
            };
            unpartitioned(&mut control).await;
            let n = src.read(&mut buf).await.map_err(End::Peer)?;
            if n == 0 {
                return Ok(()); // dropping `tx` tells the writer to finish
            }
            let (delay, max_jitter) = {
                let c = control.borrow();
                (c.faults.delay(), c.faults.jitter())
            };
            let due = (Instant::now() + delay + jitter.sample(max_jitter)).max(last_due);
            last_due = due;
            // Keep n bytes of the allowance with the chunk, give back the rest.
            let Some(held) = permit.split(n) else {
                return Ok(()); // n <= CHUNK: cannot happen
            };
            drop(permit);
            if tx
                .send(Chunk {
                    data: buf[..n].to_vec(),
                    due,
                    _permit: held,
                })
                .is_err()
            {
                // The writer is gone; it ended with the error that ends this direction.
                return Ok(());
            }
        }
    }

    async fn write_side(
        &self,
        dir: Dir,
        mut dst: WriteHalf<'_>,
        mut rx: mpsc::UnboundedReceiver<Chunk<'_>>,
        budget: &Budget,
    ) -> Result<(), End> {
        let mut control = self.control.clone();
        let bucket = &self.shared.buckets[dir as usize];
        while let Some(chunk) = rx.recv().await {
            tokio::time::sleep_until(chunk.due).await;
            let mut rest = &chunk.data[..];
            while !rest.is_empty() {
                let granted = tokens(bucket, rest.len(), &mut control).await;
                let limit = control.borrow().faults.reset_every.map(|s| s.bytes());
                let (n, last) = match budget.reserve(granted, limit) {
                    Grant::Bytes { n, last } => (n, last),
                    Grant::Exhausted => return Err(End::ResetEvery),
                    // The other direction writes the last bytes and then resets.
                    Grant::Closing => std::future::pending().await,
                };
                unpartitioned(&mut control).await;
                dst.write_all(&rest[..n]).await.map_err(End::Peer)?;
                self.shared.forwarded[dir as usize].fetch_add(n as u64, Ordering::Relaxed);
                rest = &rest[n..];
                if last {
                    wait_delivered(dst.as_ref()).await;
                    return Err(End::ResetEvery);
                }
            }
        }
        unpartitioned(&mut control).await;
        dst.shutdown().await.map_err(End::Peer)?;
        Ok(())
    }
}

/// Waits for a grant of up to `want` bytes from the direction's bucket,
/// retrying at once when the faults change (a new rate, or none).
async fn tokens(
    bucket: &Mutex<TokenBucket>,
    want: usize,
    control: &mut watch::Receiver<Control>,
) -> usize {
    loop {
        let grant = bucket.lock().take(want as u64, std::time::Instant::now());
        match grant {
            Ok(n) => return n as usize,
            Err(wait) => {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = changed(control) => {}
                }
            }
        }
    }
}

/// Bytes that have crossed a connection, both directions together.
#[derive(Debug, Default)]
struct Budget {
    crossed: AtomicU64,
    /// Set once a writer took the last bytes before the reset.
    closing: AtomicBool,
}

#[derive(Debug, PartialEq, Eq)]
enum Grant {
    /// Write `n` bytes; when `last`, then reset.
    Bytes { n: usize, last: bool },
    /// The limit is already reached (it was lowered): reset now.
    Exhausted,
    /// The other writer is writing the last bytes: write nothing more.
    Closing,
}

impl Budget {
    /// Takes up to `want` bytes of the budget under `limit` (`None`: no
    /// limit, bytes are only counted).
    fn reserve(&self, want: usize, limit: Option<u64>) -> Grant {
        if self.closing.load(Ordering::Relaxed) {
            return Grant::Closing;
        }
        let done = self.crossed.load(Ordering::Relaxed);
        let Some(limit) = limit else {
            self.crossed.store(done + want as u64, Ordering::Relaxed);
            return Grant::Bytes {
                n: want,
                last: false,
            };
        };
        if done >= limit {
            self.closing.store(true, Ordering::Relaxed);
            return Grant::Exhausted;
        }
        let n = (limit - done).min(want as u64);
        let last = done + n >= limit;
        self.crossed.store(done + n, Ordering::Relaxed);
        self.closing.store(last, Ordering::Relaxed);
        Grant::Bytes {
            n: n as usize,
            last,
        }
    }
}

/// Counts a connection as open while it lives.
struct OpenGuard<'a>(&'a Shared);

impl<'a> OpenGuard<'a> {
    fn new(shared: &'a Shared) -> OpenGuard<'a> {
        shared.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(shared)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Closes with RST: `SO_LINGER` 0, then close.
fn abort(stream: TcpStream) {
    if let Err(e) = stream.set_zero_linger() {
        tracing::debug!(error = %e, "cannot set SO_LINGER 0; the close may not reset");
    }
    drop(stream);
}

/// Returns once the link is not cut (never, if the proxy is stopping).
async fn unpartitioned(control: &mut watch::Receiver<Control>) {
    let live = control.wait_for(|c| !c.partitioned).await.is_ok();
    if !live {
        std::future::pending::<()>().await;
    }
}

/// Returns once `reset_all` was called after the connection was accepted.
async fn reset_requested(control: &mut watch::Receiver<Control>, epoch: u64) {
    let live = control.wait_for(|c| c.reset_epoch != epoch).await.is_ok();
    if !live {
        std::future::pending::<()>().await;
    }
}

/// Returns on the next change of the control state.
async fn changed(control: &mut watch::Receiver<Control>) {
    if control.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Waits until the kernel has no unacknowledged bytes for `stream` (on
/// loopback: the peer's kernel holds them), for at most [`DRAIN_PATIENCE`].
async fn wait_delivered(stream: &TcpStream) {
    let deadline = Instant::now() + DRAIN_PATIENCE;
    while unacknowledged(stream) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[cfg(target_os = "linux")]
fn unacknowledged(stream: &TcpStream) -> usize {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ for TCP) writes one int through the
    // pointer, which points at `n`; the descriptor is open while `stream` is.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if rc == 0 {
        usize::try_from(n).unwrap_or(0)
    } else {
        0
    }
}

#[cfg(not(target_os = "linux"))]
fn unacknowledged(_: &TcpStream) -> usize {
    0
}

/// Per-chunk random extra delay (SplitMix64; not for anything but jitter).
struct Jitter(u64);

impl Jitter {
    fn new(id: u64, dir: Dir) -> Jitter {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter(clock ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ dir as u64)
    }

    /// Uniform in `[0, max]`, to the nanosecond.
    fn sample(&mut self, max: Duration) -> Duration {
        if max.is_zero() {
            return Duration::ZERO;
        }
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let span = u64::try_from(max.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        Duration::from_nanos(z % span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_grants_exactly_the_limit_then_closes() {
        let b = Budget::default();
        assert_eq!(
            b.reserve(600, Some(1000)),
            Grant::Bytes {
                n: 600,
                last: false
            }
        );
        assert_eq!(
            b.reserve(600, Some(1000)),
            Grant::Bytes { n: 400, last: true }
        );
        // The other direction must not write past the limit.
        assert_eq!(b.reserve(10, Some(1000)), Grant::Closing);
    }

    #[test]
    fn budget_counts_without_a_limit_and_a_lowered_limit_resets() {
        let b = Budget::default();
        assert_eq!(
            b.reserve(5000, None),
            Grant::Bytes {
                n: 5000,
                last: false
            }
        );
        assert_eq!(b.reserve(1, Some(4096)), Grant::Exhausted);
        assert_eq!(b.reserve(1, Some(4096)), Grant::Closing);
    }

    #[test]
    fn jitter_stays_in_range() {
        let mut j = Jitter::new(7, Dir::ToClient);
        let max = Duration::from_millis(3);
        assert!((0..1000).all(|_| j.sample(max) <= max));
        assert_eq!(j.sample(Duration::ZERO), Duration::ZERO);
    }
}
