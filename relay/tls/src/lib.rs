//! relay-tls: rustls handshakes, a ring record layer, and TLS state that can
//! move between relays.
//!
//! The crate is sans-IO: it never touches a socket or reads a clock; bytes
//! and time come from the caller, outputs are returned.
//!
//! # Calling order
//!
//! 1. Build a [`TlsServerConfig`] once ([`TlsServerConfig::builder`]):
//!    certificates (PEM, ECDSA P-256 or RSA, chosen by SNI), ALPN, versions,
//!    suites, the session store and ticketer.
//! 2. Per connection, [`HandshakeDriver::new`]. Loop:
//!    [`HandshakeDriver::handle_input`] with the bytes the client sent (and
//!    the current time), then [`HandshakeDriver::poll_transmit`] and send what
//!    it gives, until `handle_input` reports [`HandshakeStatus::Complete`]
//!    (or an error: send the remaining output, it holds the alert, and close).
//! 3. Once complete and the output drained (the server's NewSessionTickets are
//!    in it), [`HandshakeDriver::into_established`] gives an [`Established`]:
//!    the [`TrafficState`] (version, suite, per-direction key, IV, sequence
//!    number and, for TLS 1.3, traffic secret), what was negotiated, and the
//!    bytes the client sent after its Finished (not yet read by anyone).
//! 4. [`RecordLayer::new`] with the traffic state. Feed it the leftover bytes
//!    and then everything the client sends via [`RecordLayer::read`]; seal
//!    outgoing data with [`RecordLayer::seal`] and a record-size plan; call
//!    [`RecordLayer::poll_transmit`] whenever [`RecordLayer::wants_transmit`]
//!    (KeyUpdate answers, alerts, close_notify).
//! 5. At any point between calls, [`RecordLayer::export`] gives a checkpoint
//!    of the state; [`TrafficState::import`] + [`RecordLayer::new`] on another
//!    relay continues the same connection.
//!
//! # Randomness and time
//!
//! Randomness is used only inside rustls and ring during the handshake
//! (ECDHE key shares, server random, session IDs and ticket nonces, through
//! ring's `SystemRandom`); the record layer is deterministic. Ticket and
//! session lifetimes are checked against the caller's time
//! ([`CallerClock`], set by [`HandshakeDriver::handle_input`]); rustls' own
//! ticketer rotates its keys on system time, which it reads itself (a cluster
//! ticketer with caller-driven rotation replaces it later).

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod config;
pub mod deframe;
mod error;
pub mod handshake;
mod keys;
pub mod record;
pub mod state;
mod suite;

pub use config::{CallerClock, LocalSessionStore, TlsServerConfig, TlsServerConfigBuilder};
pub use deframe::{Deframed, RecordHeader, deframe};
pub use error::{DecodeError, Error, Violation};
pub use handshake::{Established, HandshakeDriver, HandshakeInfo, HandshakeStatus};
pub use keys::IV_LEN;
pub use record::{
    ReadOutcome, ReadStatus, RecordLayer, SealOutcome, plan_records, record_wire_len,
};
pub use rustls::AlertDescription;
pub use rustls::pki_types::UnixTime;
pub use state::{Control, KeyCheck, RecordState, TrafficState};
pub use suite::{Aead, Suite, Version};

#[cfg(test)]
pub(crate) mod test_util {
    /// Decodes hex, ignoring whitespace.
    pub fn hex(s: &str) -> Vec<u8> {
        let s: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        s.chunks(2)
            .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap())
            .collect()
    }
}
