//! ferry-repl: the replication stream format.
//!
//! - [`stream`]: one replication cycle of one group, primary to replica, as
//!   bytes: the types, an encoder that appends records to a `Vec<u8>`, and an
//!   incremental decoder fed byte slices as they arrive.
//!
//! - [`cycle`]: the two ends of one cycle, still without I/O: a sender that
//!   turns changed blocks into stream bytes through a block source, and a
//!   receiver that applies verified runs to a sink and says when the
//!   cycle is complete.
//!
//! - [`protocol`]: the decisions around a cycle, as pure functions: what the
//!   source does with the state the replica reports (record a lost
//!   acknowledgement, refuse a diverged replica, send, resuming only the
//!   replica's partial of this very cycle), and what the replica does with a
//!   header (refuse another base or a resume point it does not hold, take a
//!   fresh cycle after discarding an abandoned one, or continue), and the
//!   fence that lets only a group's latest connection write. The daemon and
//!   the deterministic simulation (`tests/simulation.rs`, seeded, virtual
//!   time, loss, duplication, reordering, resets, partitions, crashes) run
//!   this same code.
//!
//! It owns the format and the cycle logic and nothing else: no I/O, no
//! store, no clock. The daemon moves the bytes over the network and into
//! the engine. The decoder never sizes an allocation from
//! the wire beyond the format's limits and never panics on input; it has a
//! cargo-fuzz target (`fuzz/fuzz_targets/repl_stream.rs`).

pub mod cycle;
pub mod protocol;
pub mod stream;
