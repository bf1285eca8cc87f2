//! ferry-faultproxy: a TCP proxy that injects the faults of a bad link
//! between two ferry sites, for replication tests on machines without
//! `tc netem`. A library ([`FaultProxy`]) and a binary (`ferry-faultproxy`,
//! driven by flags and a line-based control port, [`control`]).
//!
//! Every client connection accepted on the listening address gets its own
//! connection to the target; bytes are forwarded both ways, and a clean end
//! (FIN) in one direction is passed on after the bytes before it, so
//! half-closed connections work. A peer's reset is passed on as a reset.
//!
//! # Faults, exactly
//!
//! - **Delay** (`delay`): a delay line per direction. Every chunk read from
//!   one side (up to 64 KiB, as it arrived) is written to the other no
//!   earlier than `delay` after it was read. Reading goes on while chunks
//!   wait (up to 8 MiB in flight per direction and connection), so this is
//!   a long wire, not stop-and-wait: a round trip takes at least twice the
//!   delay, and bulk throughput is not limited to a chunk per delay.
//! - **Jitter** (`jitter`): each chunk waits a further random time, uniform
//!   in `[0, jitter]`. Chunks never overtake each other: a chunk leaves no
//!   earlier than the chunk read before it.
//! - **Rate** (`rate`): a token bucket per direction, shared by all
//!   connections of the proxy, like a link's capacity. Its burst is 10 ms of
//!   the rate (at least 1,500 bytes), and it starts full; so the bytes
//!   written in one direction over any interval `t` are at most
//!   `burst + rate × t`. Connections sharing a direction are not scheduled
//!   fairly. A new rate applies at once to live connections.
//! - **Reset every N bytes** (`reset_every`): each connection counts the
//!   bytes written to either peer. When the count reaches N — exactly: the
//!   last write is cut short to land on N — the proxy waits (at most
//!   500 ms) until the peer's kernel has acknowledged those bytes, then
//!   closes both sockets with `SO_LINGER` 0. Both peers see a reset
//!   (`ECONNRESET`, or `EPIPE` on a later write) mid-stream, not an end of
//!   stream. The count starts when the connection is accepted; a new N
//!   applies to live connections' counts (one already past it is reset at
//!   its next write).
//! - **Partition** (`partition(true)`): a cut cable. On live connections
//!   nothing moves in either direction: the proxy stops reading and holds
//!   what it has read, so the data waits in the proxy and in the senders'
//!   socket buffers; nothing is dropped. New connections are accepted (the
//!   kernel completes the handshake of a listening socket anyway) but not
//!   connected onward: the client's connect succeeds, and its reads and
//!   writes then stall until its own timeouts fire, as on a cut link. When
//!   the partition ends, held connections connect onward and everything
//!   held moves on, in order. A write that had started when the cut came
//!   finishes (at most one chunk).
//! - **Reset now** ([`FaultProxy::reset_all`]): resets every connection
//!   accepted so far, with RST to both peers, including those held by a
//!   partition.
//!
//! Stopping the proxy (`stop`, or dropping it) closes its listener and all
//! its connections without a reset.
//!
//! # What it does not do
//!
//! It binds only the addresses it is given (the binary has no default
//! address). It does not drop, reorder or corrupt bytes inside a stream:
//! TCP would mask that, and ferry's own checksums are tested elsewhere.
//!
//! # Modules
//!
//! - [`units`]: durations, sizes and rates as typed by people (no I/O);
//! - [`faults`]: [`Faults`], the plain value of what to inject;
//! - [`control`]: the control port's command language (parser fuzzed);
//! - `bucket`, `conn`, `proxy`: the token bucket, a connection's task, the
//!   handle and accept loop (with the `proxy` feature, on by default).

#[cfg(feature = "proxy")]
mod bucket;
#[cfg(feature = "proxy")]
mod conn;
pub mod control;
pub mod faults;
#[cfg(feature = "proxy")]
mod proxy;
pub mod units;

pub use faults::Faults;
#[cfg(feature = "proxy")]
pub use proxy::{FaultProxy, Stats};
pub use units::{ByteSize, Rate};
