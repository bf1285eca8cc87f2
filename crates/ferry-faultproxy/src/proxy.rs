//! The proxy handle ([`FaultProxy`]) and its accept loop.
//!
//! A proxy owns one thread running a single-threaded tokio runtime: the
//! accept loop and one task per connection (`conn.rs`). The handle talks to
//! them through a `watch` channel holding the [`Control`] state (faults,
//! partition, reset epoch) and reads counters they keep in atomics; every
//! method of the handle is non-blocking and may be called from any thread
//! or async context. `stop` (or drop) ends the accept loop and drops the
//! runtime, which closes every socket the proxy holds.

use crate::bucket::TokenBucket;
use crate::conn::{self, Dir};
use crate::faults::Faults;
use parking_lot::Mutex;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tracing::Instrument;

/// What a proxy has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes written to the target (client → target).
    pub bytes_to_target: u64,
    /// Bytes written to clients (target → client).
    pub bytes_to_client: u64,
    /// Client connections accepted.
    pub connections_accepted: u64,
    /// Client connections not yet closed.
    pub connections_open: u64,
    /// Connections reset by the proxy, by `reset_every` or `reset_all`
    /// (not those reset because a peer reset its side).
    pub resets_injected: u64,
}

/// The state every connection task watches.
#[derive(Debug, Clone, Default)]
pub(crate) struct Control {
    pub(crate) faults: Faults,
    pub(crate) partitioned: bool,
    /// Bumped by `reset_all`; a connection resets when it differs from the
    /// value it was accepted under.
    pub(crate) reset_epoch: u64,
}

/// Counters and rate buckets shared by the handle and the tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) forwarded: [AtomicU64; 2],
    pub(crate) accepted: AtomicU64,
    pub(crate) open: AtomicU64,
    pub(crate) resets: AtomicU64,
    /// One per direction, indexed by [`Dir`], shared by all connections.
    pub(crate) buckets: [Mutex<TokenBucket>; 2],
}

/// A running fault-injecting TCP proxy; see the crate documentation.
pub struct FaultProxy {
    local_addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    control: watch::Sender<Control>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on `listen` (port 0 picks a free port; see [`Self::local_addr`])
    /// and forwards every connection to `target`, injecting `faults`.
    /// Errors: the address cannot be bound, or the runtime or its thread
    /// cannot be created.
    pub fn start(listen: SocketAddr, target: SocketAddr, faults: Faults) -> io::Result<FaultProxy> {
        let listener = std::net::TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let now = Instant::now();
        let shared = Arc::new(Shared {
            forwarded: [AtomicU64::new(0), AtomicU64::new(0)],
            accepted: AtomicU64::new(0),
            open: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            buckets: [
                Mutex::new(TokenBucket::new(faults.rate, now)),
                Mutex::new(TokenBucket::new(faults.rate, now)),
            ],
        });
        let (control, control_rx) = watch::channel(Control {
            faults,
            ..Control::default()
        });
        let (stop, stop_rx) = oneshot::channel();
        let task_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("faultproxy {local_addr}"))
            .spawn(move || {
                let span = tracing::info_span!("faultproxy", listen = %local_addr, %target);
                runtime.block_on(
                    async move {
                        match TcpListener::from_std(listener) {
                            Ok(l) => accept_loop(l, target, task_shared, control_rx, stop_rx).await,
                            Err(e) => tracing::error!(error = %e, "cannot register the listener"),
                        }
                    }
                    .instrument(span),
                );
                // Dropping the runtime drops every connection task and its sockets.
                drop(runtime);
            })?;
        Ok(FaultProxy {
            local_addr,
            target,
            shared,
            control,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.control.borrow().faults.clone()
    }

    /// Replaces the faults, for live connections and new ones.
    pub fn set_faults(&self, faults: Faults) {
        self.update_faults(|f| *f = faults);
    }

    /// Changes the faults in place (atomically with respect to other
    /// changes), for live connections and new ones. `change` runs under the
    /// proxy's control lock: it must not call the proxy.
    pub fn update_faults(&self, change: impl FnOnce(&mut Faults)) {
        self.control.send_modify(|c| {
            change(&mut c.faults);
            // Inside the watch's lock, so a writer woken by this change
            // already finds the new rate in the bucket.
            let now = Instant::now();
            for bucket in &self.shared.buckets {
                bucket.lock().set_rate(c.faults.rate, now);
            }
        });
    }

    /// Cuts (`true`) or heals (`false`) the link.
    pub fn partition(&self, on: bool) {
        self.control
            .send_if_modified(|c| std::mem::replace(&mut c.partitioned, on) != on);
    }

    /// Whether the link is cut.
    pub fn is_partitioned(&self) -> bool {
        self.control.borrow().partitioned
    }

    /// Resets every connection accepted so far, at once (with RST, to both
    /// peers), including connections held by a partition.
    pub fn reset_all(&self) {
        self.control.send_modify(|c| c.reset_epoch += 1);
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            bytes_to_target: get(&self.shared.forwarded[Dir::ToTarget as usize]),
            bytes_to_client: get(&self.shared.forwarded[Dir::ToClient as usize]),
            connections_accepted: get(&self.shared.accepted),
            connections_open: get(&self.shared.open),
            resets_injected: get(&self.shared.resets),
        }
    }

    /// Stops listening and closes every connection (without a reset); waits
    /// for the proxy's thread to finish.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!(listen = %self.local_addr, "the proxy thread panicked");
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("listen", &self.local_addr)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    shared: Arc<Shared>,
    control: watch::Receiver<Control>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut next_id = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => r,
        };
        let (client, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(Duration::from_millis(10)) => continue,
                }
            }
        };
        next_id += 1;
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        // Taken now, so a reset_all after this accept resets this connection.
        let epoch = control.borrow().reset_epoch;
        let span = tracing::info_span!("conn", id = next_id, %peer);
        let task = conn::Conn {
            id: next_id,
            target,
            shared: shared.clone(),
            control: control.clone(),
            epoch,
        };
        tokio::spawn(task.run(client).instrument(span));
    }
}
