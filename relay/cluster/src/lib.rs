//! relay-cluster: the backplane transport, the tokio side of
//! relay-replication.
//!
//! Relays of a cluster talk over one mutually authenticated TLS 1.3
//! connection per pair (the cluster CA signs every relay's certificate; a
//! peer is accepted only if its certificate names a configured peer at
//! the address it comes from, and its hello claims that peer). On it:
//! the workers' replication streams (each worker runs its own
//! [`Outbox`](relay_replication::Outbox) and hands ready batches to a
//! [`WorkerPort`]), the acks and resync requests of the standby stores
//! kept here for each peer, and heartbeats for membership.
//!
//! Everything runs on one thread with a current-thread tokio runtime, so
//! the workers stay tokio-free: they talk to it through crossbeam queues
//! and a waker of their choosing. The protocol decisions are the sans-IO
//! types of relay-replication ([`Standby`](relay_replication::Standby),
//! [`Peer`](relay_replication::Peer), the
//! [`Deframer`](relay_replication::Deframer)); this crate moves bytes,
//! keeps time and enforces who may connect.
//!
//! Start with [`Backplane::start`]; see `README.md` for the threads, the
//! queues and the connection lifecycle.

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod config;
mod counters;
mod error;
mod front;
mod handle;
mod shared;
mod sockopt;
mod tls;
mod transport;
mod worker;

pub use config::{BackplaneConfig, PeerSpec};
pub use counters::{Counters, KindCounts};
pub use error::Error;
pub use handle::{Backplane, BackplaneEvent, BackplaneHandle, DisconnectReason, PeerStatus};
pub use relay_replication::{Adopted, PeerState, Rtt, StandbyStats};
pub use worker::{Waker, WorkerEvent, WorkerPort};

/// Convenience alias for results of this crate.
pub type Result<T> = core::result::Result<T, Error>;
