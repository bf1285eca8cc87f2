//! The engine's error type: one enum, structured fields, sources kept.

use std::io;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid {kind} name {name:?}: it {reason}")]
    InvalidName {
        kind: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error("invalid size {input:?}: it {reason}")]
    InvalidSize { input: String, reason: &'static str },
    #[error("{kind} {name:?} does not exist")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("{kind} {name:?} is in use: {reason}")]
    InUse {
        kind: &'static str,
        name: String,
        reason: String,
    },
    /// A snapshot export's slot does not fit the snapshot: a group's
    /// snapshot needs one, a lone volume's takes none.
    #[error("snapshot {snapshot:?} {reason}")]
    Slot { snapshot: String, reason: String },
    #[error("pairing refused: {0}")]
    Pairing(#[from] crate::store::PairingRefusal),
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    #[error("range {offset}+{len} is outside the volume of {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("volume {name:?} cannot shrink from {current} to {requested} bytes")]
    Shrink {
        name: String,
        current: u64,
        requested: u64,
    },
    /// A request that does not fit the state it meets (a replication
    /// cycle on another base, an acknowledgement of another cycle).
    #[error("{0}")]
    Conflict(String),
    #[error("snapshot {older:?} is not an ancestor of {newer:?}")]
    NotAncestor { older: String, newer: String },
    #[error(
        "volume {name:?} has failed after an I/O error and refuses I/O until the store is reopened"
    )]
    Failed { name: String },
    #[error("volume {name:?} was deleted")]
    Deleted { name: String },
    #[error("the store is locked by another process ({path})")]
    Locked { path: String },
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("I/O error while {op} {object}")]
    Io {
        op: &'static str,
        object: String,
        #[source]
        source: io::Error,
    },
    #[error("catalog error while {op}")]
    Catalog {
        op: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    pub(crate) fn io(op: &'static str, object: impl std::fmt::Display, source: io::Error) -> Self {
        StoreError::Io {
            op,
            object: object.to_string(),
            source,
        }
    }

    pub(crate) fn catalog(
        op: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Catalog {
            op,
            source: Box::new(source),
        }
    }

    pub fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        StoreError::NotFound {
            kind,
            name: name.into(),
        }
    }

    pub fn exists(kind: &'static str, name: impl Into<String>) -> Self {
        StoreError::AlreadyExists {
            kind,
            name: name.into(),
        }
    }
}

/// The engine's result type.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
