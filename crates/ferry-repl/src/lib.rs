//! ferry-repl: the replication stream format.
//!
//! - [`stream`]: one replication cycle of one group, primary to replica, as
//!   bytes: the types, an encoder that appends records to a `Vec<u8>`, and an
//!   incremental decoder fed byte slices as they arrive.
//!
//! It owns the format and nothing else: no I/O, no store, no clock. The
//! sender and receiver that move these bytes over the network and into the
//! engine are built on top of it. The decoder never sizes an allocation from
//! the wire beyond the format's limits and never panics on input; it has a
//! cargo-fuzz target (`fuzz/fuzz_targets/repl_stream.rs`).

pub mod stream;
