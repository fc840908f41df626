//! relay-replication: the backplane protocol between relays, sans IO.
//!
//! Checkpoints of each flow travel from the relay that serves it to a peer
//! that stands by for it (DESIGN.md sections 3 to 5): a full checkpoint
//! once, then deltas, each acknowledged by the peer before the flow
//! releases the bytes it covers (ACK after replication). This crate is the
//! protocol only: bytes in, bytes out, time passed in as
//! [`relay_tcp::Instant`]; no sockets, no clock, no randomness. The tokio
//! transport (mutually authenticated TLS) lives in the cluster crate.
//!
//! - [`Message`], [`Envelope`], [`Deframer`]: the wire format (the README
//!   lists every field).
//! - [`Outbox`]: the sender side, one per worker stream.
//! - [`Standby`]: the receiver side, one store per peer relay; it rebuilds
//!   checkpoints from deltas with the caller's [`CheckpointCodec`].
//! - [`Peer`]: membership by heartbeats plus a second path.
//!
//! See `README.md` for the calling order of a backplane connection.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod envelope;
mod error;
mod ids;
mod message;
mod outbox;
mod peer;
mod standby;
#[cfg(test)]
mod test_rng;

pub use envelope::{Deframer, ENVELOPE_VERSION, Envelope, HEADER_LEN, MAGIC, MAX_BODY_LEN};
pub use error::Error;
pub use ids::{CommitNo, FlowId, RelayId, StreamId};
pub use message::{
    Echo, Heartbeat, Hello, Kind, MAX_NAME_LEN, Message, PROTOCOL_VERSION, Takeover,
};
pub use outbox::{
    Committed, Encoding, Outbox, OutboxConfig, OutboxEvent, OutboxStats, Payload, Protection,
    UnprotectedReason,
};
pub use peer::{Peer, PeerConfig, PeerEvent, PeerState, Rtt};
pub use relay_tcp::Instant;
pub use standby::{Adopted, CheckpointCodec, Rejection, Standby, StandbyConfig, StandbyStats};

/// Convenience alias for results of this crate.
pub type Result<T> = core::result::Result<T, Error>;
