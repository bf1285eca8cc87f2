//! ferry-nbd: the NBD protocol for ferry.
//!
//! - [`proto`]: the wire format, decoders and encoders, no I/O;
//! - [`handshake`]: option haggling as a state machine, no I/O;
//! - [`command`]: requests checked against what was agreed, no I/O;
//! - [`server`]: the TCP/Unix/TLS server that runs requests against the
//!   engine ([`disk`]).
//!
//! It owns the protocol and nothing else: which exports exist is the
//! daemon's business (it implements [`server::Exports`] over the catalog),
//! and data lives in the engine. Decoders never trust a length from the
//! wire to size an allocation beyond the protocol's limits; each has a
//! cargo-fuzz target in `fuzz/`.

#[cfg(feature = "server")]
pub mod client;
pub mod command;
#[cfg(feature = "server")]
pub mod disk;
pub mod handshake;
pub mod proto;
#[cfg(feature = "server")]
pub mod server;

#[cfg(feature = "server")]
pub use disk::Disk;
pub use handshake::{Catalog, ExportMeta, TlsMode};
#[cfg(feature = "server")]
pub use server::{Exports, Server, ServerConfig};
