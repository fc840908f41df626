//! relay-flow: one relayed connection (front TCP engine + TLS + back TCP
//! engine) under the ACK-after-replication rule of DESIGN.md section 3.
//!
//! The crate is sans-IO like the engines it joins: segments, time and
//! handshake results come from the caller; segments, commits and events go
//! back. `docs/flow-design.md` gives the bookkeeping this code follows.
//!
//! - [`Flow`]: the state machine; its calling order is written on it.
//! - [`Outbox`]: where commits go; [`LocalCommit`] acknowledges at once
//!   (a relay without peers), the cluster's outbox after a peer has them.
//! - [`FlowCheckpoint`]: what an adopter needs ([`Flow::adopt`]), as of
//!   one [`CommitNo`] of one [`FlowId`] (both the replication crate's);
//!   [`encode_delta`] / [`apply_delta`]: the commits after the first, each
//!   naming its base by commit number.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod checkpoint;
mod delta;
mod error;
mod flow;
mod outbox;

pub use checkpoint::{
    FLOW_CHECKPOINT_VERSION, FlowCheckpoint, FlowMeta, MAX_BATCHES, MAX_DOWN_PARTIAL, MAX_PARTIAL,
    PlannedBatch,
};
pub use delta::{FLOW_DELTA_VERSION, apply_delta, encode_delta};
pub use error::FlowError;
pub use flow::{
    CloseReason, Flow, FlowConfig, FlowEvent, FlowStats, HandshakeDone, HandshakeJob, Phase,
};
pub use outbox::{CommitNo, FlowId, LocalCommit, Outbox, RelayId};
