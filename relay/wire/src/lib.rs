//! Wire formats of the relay's datapath: Ethernet II, ARP (Ethernet/IPv4),
//! IPv4 and TCP.
//!
//! Every frame the relay handles comes from the network, so every parser here
//! treats its input as hostile: no `unsafe`, no panics, no out-of-bounds
//! indexing, whatever the bytes. A bad packet becomes a [`WireError`] that the
//! caller counts and drops.
//!
//! # Views and representations
//!
//! Each protocol has two layers, in the style of smoltcp:
//!
//! - a zero-copy **view** (`EthernetFrame`, `ArpPacket`, `Ipv4Packet`,
//!   `TcpPacket`) over any `T: AsRef<[u8]>`. `new_checked` verifies that the
//!   buffer is long enough for the header and the lengths it declares;
//!   `new_unchecked` does not. Getters read fields in place, setters (when
//!   `T: AsMut<[u8]>`) write them. Getters and setters never panic: on a view
//!   whose length was not checked, a field past the end reads as zero and a
//!   write to it is dropped, so a missing `check_len` is a wrong answer, not a
//!   crash of the worker.
//! - a validated **representation** (`EthernetRepr`, `ArpRepr`, `Ipv4Repr`,
//!   `TcpRepr`) with `parse(&view)`, which applies the protocol's rules
//!   (versions, lengths, checksums, option syntax), and `emit(&mut view)`,
//!   which writes a canonical header and its checksum into a buffer of
//!   `buffer_len()` bytes.
//!
//! [`TcpFrame`] and [`parse_arp`]/[`emit_arp`] chain the layers for whole
//! frames, which is what the datapath uses.
//!
//! # Not supported
//!
//! - IPv6 (its EtherType is recognised, so it can be counted, but not parsed)
//!   and 802.1Q VLAN tags (the EtherType reads as `Unknown(0x8100)`).
//! - IPv4 fragments: the relay does not reassemble, a fragment is
//!   [`WireError::Fragment`].
//! - IPv4 options are skipped when parsing (the header length is honoured) and
//!   never emitted: [`Ipv4Repr::emit`] writes a 20-byte header.
//! - DSCP/ECN bits of IPv4 are not carried by [`Ipv4Repr`] and are emitted as 0.
//! - TCP urgent data: the URG flag is kept, the urgent pointer is ignored on
//!   parse and emitted as 0.
//! - TCP options other than MSS, window scale, SACK-permitted, SACK and
//!   timestamps are skipped on parse and not emitted.

#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable
    )
)]

mod arp;
pub mod checksum;
mod error;
mod ethernet;
mod field;
mod frame;
mod ipv4;
mod tcp;

pub use arp::{ARP_PACKET_LEN, ArpOperation, ArpPacket, ArpRepr};
pub use error::{Layer, WireError};
pub use ethernet::{ETHERNET_HEADER_LEN, EtherType, EthernetAddress, EthernetFrame, EthernetRepr};
pub use frame::{ARP_FRAME_LEN, ETHERNET_MIN_FRAME_LEN, TcpFrame, emit_arp, parse_arp};
pub use ipv4::{IPV4_HEADER_LEN, IpProtocol, Ipv4Packet, Ipv4Repr};
pub use tcp::{
    SeqNumber, TCP_HEADER_LEN, TCP_MAX_HEADER_LEN, TCP_MAX_OPTIONS_LEN, TcpFlags, TcpOptions,
    TcpPacket, TcpRepr, TcpTimestamp,
};

/// Convenience alias for results of this crate.
pub type Result<T> = core::result::Result<T, WireError>;
