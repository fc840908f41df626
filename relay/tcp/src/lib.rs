//! A sans-IO TCP engine for the relay (RFC 9293), with a *release point*
//! and portable *checkpoints*.
//!
//! Segments go in as [`relay_wire::TcpRepr`]s with an explicit [`Instant`];
//! segments come out of `poll_transmit`. The crate reads no clock, opens no
//! socket and draws no randomness: ISNs and timestamp offsets derive from a
//! caller-supplied [`IsnSecret`] (RFC 6528).
//!
//! - [`Connection`]: one connection, active ([`Connection::connect`]) or
//!   passive ([`Connection::accept`]); its calling order is written on it.
//! - [`Listener`]: LISTEN with a bounded half-open table.
//! - [`FourTuple`] and [`reset_reply`]: demultiplexing helpers for a frame
//!   loop.
//! - [`Checkpoint`] / [`Delta`]: export an established connection and carry
//!   it on elsewhere (`CHECKPOINT.md` lists the fields and why).
//!
//! # What it implements
//!
//! Three-way handshake both ways and simultaneous open; orderly close in
//! both orders, simultaneous close, TIME-WAIT; RFC 5961 RST/SYN/ACK checks
//! with rate-limited challenge ACKs; RFC 6298 RTO with Karn and backoff
//! (minimum 200 ms like Linux, see [`DEFAULT_RTO_MIN`]); SACK-based loss
//! recovery (RFC 6675) or NewReno (RFC 6582) without SACK; CUBIC (RFC 9438)
//! or NewReno congestion control; window scaling, timestamps and PAWS (RFC
//! 7323); SACK both ways (RFC 2018); out-of-order reassembly bounded to
//! [`MAX_OOO_RANGES`] ranges within the advertised window; zero-window
//! probes; keepalive; delayed ACKs.
//!
//! # Not implemented
//!
//! IPv6; urgent data (URG is ignored); TCP Fast Open (data on a SYN is not
//! accepted); ECN; D-SACK generation; RACK-TLP; pacing; SYN cookies (the
//! half-open table is bounded instead); path MTU discovery (MSS comes from
//! the caller); restart of the congestion window after idle (RFC 5681
//! (4.1)); the RFC 7323 (3.2) rule to drop non-RST segments without a
//! timestamp once negotiated (accepted, like Linux).

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod cc;
mod checkpoint;
mod config;
mod conn;
mod error;
mod isn;
mod listener;
mod ranges;
mod ring;
mod rtt;
mod time;
mod tuple;

pub use cc::CongestionAlgorithm;
pub use checkpoint::{CHECKPOINT_LEN, CHECKPOINT_VERSION, Checkpoint, Delta, IMPORT_TS_SLACK_MS};
pub use config::{Config, Keepalive, MAX_RECV_BUFFER, ReleaseMode};
pub use conn::{Connection, Event, State, Stats};
pub use error::Error;
pub use isn::{IsnSecret, siphash24};
pub use listener::{DEFAULT_MAX_HALF_OPEN, Listener, ListenerStats};
pub use ranges::{MAX_OOO_RANGES, MAX_SACK_RANGES};
pub use rtt::{DEFAULT_RTO_INITIAL, DEFAULT_RTO_MAX, DEFAULT_RTO_MIN};
pub use time::Instant;
pub use tuple::{FourTuple, reset_reply};

pub use relay_wire::{SeqNumber, TcpFlags, TcpOptions, TcpRepr, TcpTimestamp};

/// Convenience alias for results of this crate.
pub type Result<T> = core::result::Result<T, Error>;
