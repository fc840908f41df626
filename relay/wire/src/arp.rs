//! ARP (RFC 826), for Ethernet hardware and IPv4 protocol addresses only.

use core::net::Ipv4Addr;

use crate::error::{Layer, WireError};
use crate::ethernet::EthernetAddress;
use crate::field;

/// Length of an Ethernet/IPv4 ARP packet.
pub const ARP_PACKET_LEN: usize = 28;

/// Fixed part before the variable-length addresses.
const ARP_FIXED_LEN: usize = 8;

const HTYPE_ETHERNET: u16 = 1;
const PTYPE_IPV4: u16 = 0x0800;

mod off {
    pub const HTYPE: usize = 0;
    pub const PTYPE: usize = 2;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: usize = 6;
    pub const SHA: usize = 8;
}

/// The ARP operation. Unknown values are kept (RARP, InARP...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArpOperation {
    /// 1.
    Request,
    /// 2.
    Reply,
    /// Any other value.
    Unknown(u16),
}

impl From<u16> for ArpOperation {
    fn from(value: u16) -> Self {
        match value {
            1 => ArpOperation::Request,
            2 => ArpOperation::Reply,
            other => ArpOperation::Unknown(other),
        }
    }
}

impl From<ArpOperation> for u16 {
    fn from(value: ArpOperation) -> Self {
        match value {
            ArpOperation::Request => 1,
            ArpOperation::Reply => 2,
            ArpOperation::Unknown(other) => other,
        }
    }
}

/// A zero-copy view of an ARP packet with any address lengths.
#[derive(Debug, Clone)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Wraps `buffer` without checking its length.
    pub const fn new_unchecked(buffer: T) -> Self {
        ArpPacket { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds the fixed part and the four addresses
    /// whose lengths it declares.
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < ARP_FIXED_LEN {
            return Err(WireError::truncated(Layer::Arp, ARP_FIXED_LEN, len));
        }
        let needed = self.packet_len();
        if len < needed {
            return Err(WireError::truncated(Layer::Arp, needed, len));
        }
        Ok(())
    }

    /// Length of the packet the header declares: 8 + 2 * (hlen + plen).
    pub fn packet_len(&self) -> usize {
        let h = usize::from(self.hardware_len());
        let p = usize::from(self.protocol_len());
        ARP_FIXED_LEN + 2 * (h + p)
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Hardware type (1 for Ethernet).
    pub fn hardware_type(&self) -> u16 {
        field::read_u16(self.buffer.as_ref(), off::HTYPE)
    }

    /// Protocol type (0x0800 for IPv4).
    pub fn protocol_type(&self) -> u16 {
        field::read_u16(self.buffer.as_ref(), off::PTYPE)
    }

    /// Hardware address length.
    pub fn hardware_len(&self) -> u8 {
        field::read_u8(self.buffer.as_ref(), off::HLEN)
    }

    /// Protocol address length.
    pub fn protocol_len(&self) -> u8 {
        field::read_u8(self.buffer.as_ref(), off::PLEN)
    }

    /// Operation.
    pub fn operation(&self) -> ArpOperation {
        ArpOperation::from(field::read_u16(self.buffer.as_ref(), off::OPER))
    }

    fn spa_offset(&self) -> usize {
        off::SHA + usize::from(self.hardware_len())
    }

    fn tha_offset(&self) -> usize {
        self.spa_offset() + usize::from(self.protocol_len())
    }

    fn tpa_offset(&self) -> usize {
        self.tha_offset() + usize::from(self.hardware_len())
    }

    fn addr(&self, at: usize, len: u8) -> &[u8] {
        field::slice(self.buffer.as_ref(), at, at + usize::from(len))
    }

    /// Sender hardware address bytes.
    pub fn source_hardware_addr(&self) -> &[u8] {
        self.addr(off::SHA, self.hardware_len())
    }

    /// Sender protocol address bytes.
    pub fn source_protocol_addr(&self) -> &[u8] {
        self.addr(self.spa_offset(), self.protocol_len())
    }

    /// Target hardware address bytes.
    pub fn target_hardware_addr(&self) -> &[u8] {
        self.addr(self.tha_offset(), self.hardware_len())
    }

    /// Target protocol address bytes.
    pub fn target_protocol_addr(&self) -> &[u8] {
        self.addr(self.tpa_offset(), self.protocol_len())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Sets the hardware type.
    pub fn set_hardware_type(&mut self, value: u16) {
        field::write_u16(self.buffer.as_mut(), off::HTYPE, value);
    }

    /// Sets the protocol type.
    pub fn set_protocol_type(&mut self, value: u16) {
        field::write_u16(self.buffer.as_mut(), off::PTYPE, value);
    }

    /// Sets the hardware address length; the address offsets move with it.
    pub fn set_hardware_len(&mut self, value: u8) {
        field::write_u8(self.buffer.as_mut(), off::HLEN, value);
    }

    /// Sets the protocol address length; the address offsets move with it.
    pub fn set_protocol_len(&mut self, value: u8) {
        field::write_u8(self.buffer.as_mut(), off::PLEN, value);
    }

    /// Sets the operation.
    pub fn set_operation(&mut self, value: ArpOperation) {
        field::write_u16(self.buffer.as_mut(), off::OPER, value.into());
    }

    /// Sets the sender hardware address (its length must be `hardware_len`).
    pub fn set_source_hardware_addr(&mut self, value: &[u8]) {
        if value.len() == usize::from(self.hardware_len()) {
            field::write_bytes(self.buffer.as_mut(), off::SHA, value);
        }
    }

    /// Sets the sender protocol address (its length must be `protocol_len`).
    pub fn set_source_protocol_addr(&mut self, value: &[u8]) {
        if value.len() == usize::from(self.protocol_len()) {
            let at = self.spa_offset();
            field::write_bytes(self.buffer.as_mut(), at, value);
        }
    }

    /// Sets the target hardware address (its length must be `hardware_len`).
    pub fn set_target_hardware_addr(&mut self, value: &[u8]) {
        if value.len() == usize::from(self.hardware_len()) {
            let at = self.tha_offset();
            field::write_bytes(self.buffer.as_mut(), at, value);
        }
    }

    /// Sets the target protocol address (its length must be `protocol_len`).
    pub fn set_target_protocol_addr(&mut self, value: &[u8]) {
        if value.len() == usize::from(self.protocol_len()) {
            let at = self.tpa_offset();
            field::write_bytes(self.buffer.as_mut(), at, value);
        }
    }
}

/// A parsed Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArpRepr {
    /// Request, reply, or an unknown operation kept as is.
    pub operation: ArpOperation,
    /// Sender MAC address.
    pub source_hardware_addr: EthernetAddress,
    /// Sender IPv4 address.
    pub source_protocol_addr: Ipv4Addr,
    /// Target MAC address (zero or ignored in a request).
    pub target_hardware_addr: EthernetAddress,
    /// Target IPv4 address.
    pub target_protocol_addr: Ipv4Addr,
}

impl ArpRepr {
    /// Parses an Ethernet/IPv4 ARP packet; other hardware or protocol types
    /// are [`WireError::Unsupported`].
    pub fn parse<T: AsRef<[u8]>>(packet: &ArpPacket<T>) -> Result<Self, WireError> {
        packet.check_len()?;
        if packet.hardware_type() != HTYPE_ETHERNET {
            return Err(WireError::Unsupported {
                layer: Layer::Arp,
                reason: "hardware type is not Ethernet",
            });
        }
        if packet.protocol_type() != PTYPE_IPV4 {
            return Err(WireError::Unsupported {
                layer: Layer::Arp,
                reason: "protocol type is not IPv4",
            });
        }
        if packet.hardware_len() != 6 || packet.protocol_len() != 4 {
            return Err(WireError::malformed(
                Layer::Arp,
                "address lengths do not match Ethernet/IPv4",
            ));
        }
        let ipv4 = |b: &[u8]| Ipv4Addr::from(field::read_array::<4>(b, 0));
        let mac = |b: &[u8]| EthernetAddress(field::read_array::<6>(b, 0));
        Ok(ArpRepr {
            operation: packet.operation(),
            source_hardware_addr: mac(packet.source_hardware_addr()),
            source_protocol_addr: ipv4(packet.source_protocol_addr()),
            target_hardware_addr: mac(packet.target_hardware_addr()),
            target_protocol_addr: ipv4(packet.target_protocol_addr()),
        })
    }

    /// Bytes [`emit`](Self::emit) writes: 28.
    pub const fn buffer_len(&self) -> usize {
        ARP_PACKET_LEN
    }

    /// Writes the packet into the first 28 bytes of `packet`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ArpPacket<T>) {
        packet.set_hardware_type(HTYPE_ETHERNET);
        packet.set_protocol_type(PTYPE_IPV4);
        packet.set_hardware_len(6);
        packet.set_protocol_len(4);
        packet.set_operation(self.operation);
        packet.set_source_hardware_addr(&self.source_hardware_addr.0);
        packet.set_source_protocol_addr(&self.source_protocol_addr.octets());
        packet.set_target_hardware_addr(&self.target_hardware_addr.0);
        packet.set_target_protocol_addr(&self.target_protocol_addr.octets());
    }

    /// The reply to this request from the host that owns `hardware_addr`
    /// (the caller checks that the target address is one of ours).
    pub fn reply(&self, hardware_addr: EthernetAddress) -> ArpRepr {
        ArpRepr {
            operation: ArpOperation::Reply,
            source_hardware_addr: hardware_addr,
            source_protocol_addr: self.target_protocol_addr,
            target_hardware_addr: self.source_hardware_addr,
            target_protocol_addr: self.source_protocol_addr,
        }
    }

    /// A gratuitous ARP announcing that `protocol_addr` is now at
    /// `hardware_addr`, as sent on a VIP takeover: a request whose sender and
    /// target protocol addresses are both the announced address (RFC 5227
    /// (2.3), "ARP Announcement"). Linux updates existing neighbour entries
    /// from it.
    pub fn gratuitous(hardware_addr: EthernetAddress, protocol_addr: Ipv4Addr) -> ArpRepr {
        ArpRepr {
            operation: ArpOperation::Request,
            source_hardware_addr: hardware_addr,
            source_protocol_addr: protocol_addr,
            target_hardware_addr: EthernetAddress::UNSPECIFIED,
            target_protocol_addr: protocol_addr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Who has 10.0.0.2? Tell 10.0.0.1 (from 02:00:00:00:00:01).
    pub(crate) const REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // fixed
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 10, 0, 0, 1, // sender
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 10, 0, 0, 2, // target
    ];

    /// 10.0.0.2 is at 02:00:00:00:00:02.
    pub(crate) const REPLY: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02, // fixed
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 10, 0, 0, 2, // sender
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 10, 0, 0, 1, // target
    ];

    #[test]
    fn request_getters() {
        let p = ArpPacket::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(p.hardware_type(), 1);
        assert_eq!(p.protocol_type(), 0x0800);
        assert_eq!(p.hardware_len(), 6);
        assert_eq!(p.protocol_len(), 4);
        assert_eq!(p.packet_len(), 28);
        assert_eq!(p.operation(), ArpOperation::Request);
        assert_eq!(p.source_hardware_addr(), &[2, 0, 0, 0, 0, 1]);
        assert_eq!(p.source_protocol_addr(), &[10, 0, 0, 1]);
        assert_eq!(p.target_hardware_addr(), &[0; 6]);
        assert_eq!(p.target_protocol_addr(), &[10, 0, 0, 2]);
        assert_eq!(p.into_inner().len(), 28);
    }

    #[test]
    fn request_and_reply_round_trip() {
        for bytes in [REQUEST, REPLY] {
            let repr = ArpRepr::parse(&ArpPacket::new_checked(&bytes[..]).unwrap()).unwrap();
            let mut out = [0u8; 28];
            repr.emit(&mut ArpPacket::new_unchecked(&mut out[..]));
            assert_eq!(out, bytes);
            assert_eq!(repr.buffer_len(), 28);
        }
    }

    #[test]
    fn reply_to_request() {
        let req = ArpRepr::parse(&ArpPacket::new_checked(&REQUEST[..]).unwrap()).unwrap();
        let reply = req.reply(EthernetAddress([2, 0, 0, 0, 0, 2]));
        let parsed = ArpRepr::parse(&ArpPacket::new_checked(&REPLY[..]).unwrap()).unwrap();
        assert_eq!(reply, parsed);
        assert_eq!(parsed.operation, ArpOperation::Reply);
    }

    #[test]
    fn gratuitous() {
        let mac = EthernetAddress([2, 0, 0, 0, 0, 9]);
        let ip = Ipv4Addr::new(192, 0, 2, 10);
        let g = ArpRepr::gratuitous(mac, ip);
        assert_eq!(g.operation, ArpOperation::Request);
        assert_eq!(g.source_protocol_addr, ip);
        assert_eq!(g.target_protocol_addr, ip);
        assert_eq!(g.source_hardware_addr, mac);
    }

    #[test]
    fn truncated_at_every_length() {
        for len in 0..REQUEST.len() {
            assert!(
                ArpPacket::new_checked(&REQUEST[..len]).is_err(),
                "len {len}"
            );
            let unchecked = ArpPacket::new_unchecked(&REQUEST[..len]);
            assert!(ArpRepr::parse(&unchecked).is_err(), "len {len}");
            // Getters on the short view must not panic.
            let _ = (unchecked.target_protocol_addr(), unchecked.operation());
        }
    }

    #[test]
    fn other_types_are_unsupported() {
        let mut b = REQUEST;
        b[1] = 6; // IEEE 802 hardware
        let err = ArpRepr::parse(&ArpPacket::new_unchecked(&b[..])).unwrap_err();
        assert!(matches!(
            err,
            WireError::Unsupported {
                layer: Layer::Arp,
                ..
            }
        ));
        let mut b = REQUEST;
        b[2] = 0x86;
        b[3] = 0xdd;
        let err = ArpRepr::parse(&ArpPacket::new_unchecked(&b[..])).unwrap_err();
        assert!(matches!(
            err,
            WireError::Unsupported {
                layer: Layer::Arp,
                ..
            }
        ));
        let mut b = REQUEST;
        b[5] = 3; // plen 3: packet is 26 bytes long, fits, but is not IPv4
        let err = ArpRepr::parse(&ArpPacket::new_unchecked(&b[..])).unwrap_err();
        assert!(matches!(
            err,
            WireError::Malformed {
                layer: Layer::Arp,
                ..
            }
        ));
        let mut b = REQUEST;
        b[4] = 255; // hlen 255 runs past the end
        let err = ArpRepr::parse(&ArpPacket::new_unchecked(&b[..])).unwrap_err();
        assert_eq!(err, WireError::truncated(Layer::Arp, 8 + 2 * 259, 28));
    }

    #[test]
    fn unknown_operation_is_kept() {
        let mut b = REQUEST;
        b[7] = 3; // RARP request
        let repr = ArpRepr::parse(&ArpPacket::new_unchecked(&b[..])).unwrap();
        assert_eq!(repr.operation, ArpOperation::Unknown(3));
        assert_eq!(u16::from(repr.operation), 3);
    }

    #[test]
    fn setters_refuse_wrong_lengths() {
        let mut b = REQUEST;
        let mut p = ArpPacket::new_unchecked(&mut b[..]);
        p.set_source_hardware_addr(&[1, 2, 3]);
        p.set_target_protocol_addr(&[1, 2, 3, 4, 5]);
        assert_eq!(b, REQUEST);
    }
}
