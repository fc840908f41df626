//! The crate's one error type. Each variant says whose side caused it:
//! the **configuration** (files, fields: the operator fixes it), the
//! **caller** (this relay's app or workers used the API wrongly or too
//! late), or **local** (the machine: a socket, a thread).
//!
//! What a peer does wrong is never returned to a caller: the connection
//! is closed, counted ([`Counters`](crate::Counters)), logged, and
//! reported as a [`DisconnectReason`](crate::DisconnectReason).

use std::io;
use std::path::PathBuf;

use relay_replication::RelayId;

/// What went wrong, and on whose side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Configuration: a field of [`BackplaneConfig`](crate::BackplaneConfig)
    /// is unusable (the field is named).
    #[error("invalid backplane configuration: {field}: {why}")]
    Config {
        /// The field, as spelled in the config struct.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// Configuration: a PEM file cannot be read, or holds no usable
    /// certificate or key.
    #[error("cannot load the {what} from {}: {why}", path.display())]
    Pem {
        /// Which file: "cluster CA", "certificate chain", "private key".
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Configuration: rustls refused the certificates or the key (a key
    /// that does not match the certificate, an unsupported algorithm, a
    /// CA it cannot use as a trust anchor).
    #[error("backplane TLS setup: {0}")]
    Tls(String),
    /// Local: the listen address cannot be bound (in use, not ours).
    #[error("cannot listen on the backplane address {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The socket error.
        source: io::Error,
    },
    /// Local: the backplane thread or its tokio runtime cannot start.
    #[error("cannot start the backplane thread: {0}")]
    Runtime(io::Error),
    /// Caller: a relay id that is not a configured peer.
    #[error("relay {0} is not a configured backplane peer")]
    UnknownPeer(RelayId),
    /// Caller (harmless): a worker batch for a connection that is gone,
    /// or before the worker saw [`WorkerEvent::PeerReset`](crate::WorkerEvent::PeerReset).
    /// The batch is dropped; the outbox re-seeds on the next connection.
    #[error("no current backplane connection to relay {0}; batch dropped")]
    NotConnected(RelayId),
    /// Caller: the queue of worker batches to a peer is full (the
    /// backplane is slower than the workers and the outboxes' limits
    /// together allow). The batch is dropped and the connection is reset,
    /// since its stream now has a hole; the outboxes re-seed.
    #[error("backplane queue to relay {0} is full; connection reset")]
    QueueFull(RelayId),
    /// Caller: the backplane was shut down.
    #[error("the backplane is shut down")]
    Shutdown,
}
