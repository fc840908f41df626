//! Ethernet II framing (IEEE 802.3 with an EtherType; no VLAN tags).

use core::fmt;

use crate::error::{Layer, WireError};
use crate::field;

/// Length of an Ethernet II header: destination, source, EtherType.
pub const ETHERNET_HEADER_LEN: usize = 14;

mod off {
    pub const DST: usize = 0;
    pub const SRC: usize = 6;
    pub const ETHERTYPE: usize = 12;
}

/// A 48-bit MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EthernetAddress(pub [u8; 6]);

impl EthernetAddress {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: EthernetAddress = EthernetAddress([0xff; 6]);
    /// `00:00:00:00:00:00`, the "unknown" target of an ARP request.
    pub const UNSPECIFIED: EthernetAddress = EthernetAddress([0; 6]);

    /// The address from the first six bytes of `bytes`, if there are six.
    pub fn from_bytes(bytes: &[u8]) -> Option<EthernetAddress> {
        bytes
            .get(..6)
            .and_then(|b| <[u8; 6]>::try_from(b).ok())
            .map(EthernetAddress)
    }

    /// The six octets.
    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    /// Whether this is the broadcast address.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Whether the group bit is set (multicast or broadcast).
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// Whether this is a unicast address (group bit clear).
    pub const fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }
}

impl fmt::Display for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// The EtherType field. Unknown values are kept, so that they can be counted
/// or passed on, rather than failing the parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EtherType {
    /// 0x0800.
    Ipv4,
    /// 0x0806.
    Arp,
    /// 0x86dd.
    Ipv6,
    /// Any other value (including 802.1Q tags, 0x8100).
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(value: u16) -> Self {
        match value {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x86dd => EtherType::Ipv6,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(value: EtherType) -> Self {
        match value {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Unknown(other) => other,
        }
    }
}

impl fmt::Display for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EtherType::Ipv4 => f.write_str("IPv4"),
            EtherType::Arp => f.write_str("ARP"),
            EtherType::Ipv6 => f.write_str("IPv6"),
            EtherType::Unknown(v) => write!(f, "0x{v:04x}"),
        }
    }
}

/// A zero-copy view of an Ethernet II frame.
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` without checking its length.
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// Checks that the buffer holds a whole header.
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < ETHERNET_HEADER_LEN {
            return Err(WireError::truncated(
                Layer::Ethernet,
                ETHERNET_HEADER_LEN,
                len,
            ));
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Header length (always 14: no VLAN tags).
    pub const fn header_len(&self) -> usize {
        ETHERNET_HEADER_LEN
    }

    /// Destination MAC address.
    pub fn dst_addr(&self) -> EthernetAddress {
        EthernetAddress(field::read_array(self.buffer.as_ref(), off::DST))
    }

    /// Source MAC address.
    pub fn src_addr(&self) -> EthernetAddress {
        EthernetAddress(field::read_array(self.buffer.as_ref(), off::SRC))
    }

    /// EtherType.
    pub fn ethertype(&self) -> EtherType {
        EtherType::from(field::read_u16(self.buffer.as_ref(), off::ETHERTYPE))
    }

    /// Everything after the header, including any padding up to the 60-byte
    /// minimum frame: the next layer's own length field says where it ends.
    pub fn payload(&self) -> &[u8] {
        let buf = self.buffer.as_ref();
        field::slice(buf, ETHERNET_HEADER_LEN, buf.len())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination MAC address.
    pub fn set_dst_addr(&mut self, value: EthernetAddress) {
        field::write_bytes(self.buffer.as_mut(), off::DST, &value.0);
    }

    /// Sets the source MAC address.
    pub fn set_src_addr(&mut self, value: EthernetAddress) {
        field::write_bytes(self.buffer.as_mut(), off::SRC, &value.0);
    }

    /// Sets the EtherType.
    pub fn set_ethertype(&mut self, value: EtherType) {
        field::write_u16(self.buffer.as_mut(), off::ETHERTYPE, value.into());
    }

    /// Mutable payload (everything after the header).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let buf = self.buffer.as_mut();
        let len = buf.len();
        field::slice_mut(buf, ETHERNET_HEADER_LEN, len)
    }
}

/// A parsed Ethernet II header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EthernetRepr {
    /// Source MAC address.
    pub src_addr: EthernetAddress,
    /// Destination MAC address.
    pub dst_addr: EthernetAddress,
    /// EtherType, possibly unknown.
    pub ethertype: EtherType,
}

impl EthernetRepr {
    /// Parses the header. Any EtherType is accepted.
    pub fn parse<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> Result<Self, WireError> {
        frame.check_len()?;
        Ok(EthernetRepr {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            ethertype: frame.ethertype(),
        })
    }

    /// Header length: 14.
    pub const fn header_len(&self) -> usize {
        ETHERNET_HEADER_LEN
    }

    /// Bytes [`emit`](Self::emit) writes: the header only, 14.
    pub const fn buffer_len(&self) -> usize {
        ETHERNET_HEADER_LEN
    }

    /// Writes the header; the payload is left untouched.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut EthernetFrame<T>) {
        frame.set_dst_addr(self.dst_addr);
        frame.set_src_addr(self.src_addr);
        frame.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: [u8; 18] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, // dst
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // src
        0x08, 0x00, // IPv4
        0xaa, 0xbb, 0xcc, 0xdd,
    ];

    #[test]
    fn getters() {
        let f = EthernetFrame::new_checked(&FRAME[..]).unwrap();
        assert_eq!(f.dst_addr(), EthernetAddress([2, 0, 0, 0, 0, 2]));
        assert_eq!(f.src_addr(), EthernetAddress([2, 0, 0, 0, 0, 1]));
        assert_eq!(f.ethertype(), EtherType::Ipv4);
        assert_eq!(f.header_len(), 14);
        assert_eq!(f.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(f.into_inner().len(), 18);
    }

    #[test]
    fn round_trip() {
        let f = EthernetFrame::new_checked(&FRAME[..]).unwrap();
        let repr = EthernetRepr::parse(&f).unwrap();
        let mut out = [0u8; 18];
        out[14..].copy_from_slice(&FRAME[14..]);
        let mut view = EthernetFrame::new_unchecked(&mut out[..]);
        repr.emit(&mut view);
        assert_eq!(view.payload_mut().len(), 4);
        assert_eq!(repr.buffer_len(), 14);
        assert_eq!(repr.header_len(), 14);
        assert_eq!(out, FRAME);
    }

    #[test]
    fn truncated() {
        for len in 0..ETHERNET_HEADER_LEN {
            let err = EthernetFrame::new_checked(&FRAME[..len]).unwrap_err();
            assert_eq!(err, WireError::truncated(Layer::Ethernet, 14, len));
            assert!(EthernetRepr::parse(&EthernetFrame::new_unchecked(&FRAME[..len])).is_err());
        }
        let f = EthernetFrame::new_checked(&FRAME[..14]).unwrap();
        assert!(f.payload().is_empty());
    }

    #[test]
    fn unchecked_short_view_does_not_panic() {
        let mut short = [0x11u8; 3];
        let mut f = EthernetFrame::new_unchecked(&mut short[..]);
        assert_eq!(f.ethertype(), EtherType::Unknown(0));
        assert_eq!(f.src_addr(), EthernetAddress::UNSPECIFIED);
        assert!(f.payload().is_empty());
        f.set_src_addr(EthernetAddress::BROADCAST);
        assert!(f.payload_mut().is_empty());
    }

    #[test]
    fn ethertypes_keep_unknown_values() {
        for v in [0x0800u16, 0x0806, 0x86dd, 0x8100, 0x0000, 0xffff] {
            assert_eq!(u16::from(EtherType::from(v)), v);
        }
        assert_eq!(EtherType::from(0x8100), EtherType::Unknown(0x8100));
        assert_eq!(EtherType::Unknown(0x8100).to_string(), "0x8100");
        assert_eq!(EtherType::Arp.to_string(), "ARP");
    }

    #[test]
    fn address_helpers() {
        let a = EthernetAddress([0x02, 0x1b, 0x21, 0xaa, 0x0f, 0xff]);
        assert_eq!(a.to_string(), "02:1b:21:aa:0f:ff");
        assert_eq!(EthernetAddress::BROADCAST.to_string(), "ff:ff:ff:ff:ff:ff");
        assert!(EthernetAddress::BROADCAST.is_broadcast());
        assert!(EthernetAddress::BROADCAST.is_multicast());
        assert!(a.is_unicast());
        assert!(!a.is_broadcast());
        assert_eq!(
            EthernetAddress::from_bytes(&[1, 2, 3, 4, 5, 6, 7]),
            Some(EthernetAddress([1, 2, 3, 4, 5, 6]))
        );
        assert_eq!(EthernetAddress::from_bytes(&[1, 2, 3]), None);
        assert_eq!(a.as_bytes(), &a.0);
    }
}
