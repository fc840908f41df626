//! IPv4 (RFC 791), without fragments and without emitting options.

use core::fmt;
use core::net::Ipv4Addr;

use crate::checksum;
use crate::error::{Layer, WireError};
use crate::field;

/// Length of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;

mod off {
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// The IP protocol number. Unknown values are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpProtocol {
    /// 1.
    Icmp,
    /// 6.
    Tcp,
    /// 17.
    Udp,
    /// Any other value.
    Unknown(u8),
}

impl From<u8> for IpProtocol {
    fn from(value: u8) -> Self {
        match value {
            1 => IpProtocol::Icmp,
            6 => IpProtocol::Tcp,
            17 => IpProtocol::Udp,
            other => IpProtocol::Unknown(other),
        }
    }
}

impl From<IpProtocol> for u8 {
    fn from(value: IpProtocol) -> Self {
        match value {
            IpProtocol::Icmp => 1,
            IpProtocol::Tcp => 6,
            IpProtocol::Udp => 17,
            IpProtocol::Unknown(other) => other,
        }
    }
}

impl fmt::Display for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpProtocol::Icmp => f.write_str("ICMP"),
            IpProtocol::Tcp => f.write_str("TCP"),
            IpProtocol::Udp => f.write_str("UDP"),
            IpProtocol::Unknown(v) => write!(f, "{v}"),
        }
    }
}

/// A zero-copy view of an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps `buffer` without checking its length.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the header length is at least 20 and no more than the
    /// total length, and that the buffer holds the total length. A longer
    /// buffer is fine: Ethernet pads short frames to 60 bytes.
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < IPV4_HEADER_LEN {
            return Err(WireError::truncated(Layer::Ipv4, IPV4_HEADER_LEN, len));
        }
        let header_len = self.header_len();
        if header_len < IPV4_HEADER_LEN {
            return Err(WireError::malformed(Layer::Ipv4, "header length below 20"));
        }
        let total_len = usize::from(self.total_len());
        if total_len < header_len {
            return Err(WireError::malformed(
                Layer::Ipv4,
                "total length below header length",
            ));
        }
        if len < total_len {
            return Err(WireError::truncated(Layer::Ipv4, total_len, len));
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// IP version (4 for a valid packet).
    pub fn version(&self) -> u8 {
        field::read_u8(self.buffer.as_ref(), off::VER_IHL) >> 4
    }

    /// Internet header length in 32-bit words.
    pub fn ihl(&self) -> u8 {
        field::read_u8(self.buffer.as_ref(), off::VER_IHL) & 0x0f
    }

    /// Header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.ihl()) * 4
    }

    /// Differentiated services code point.
    pub fn dscp(&self) -> u8 {
        field::read_u8(self.buffer.as_ref(), off::DSCP_ECN) >> 2
    }

    /// Explicit congestion notification bits.
    pub fn ecn(&self) -> u8 {
        field::read_u8(self.buffer.as_ref(), off::DSCP_ECN) & 0x03
    }

    /// Total length of header and payload.
    pub fn total_len(&self) -> u16 {
        field::read_u16(self.buffer.as_ref(), off::LENGTH)
    }

    /// Identification.
    pub fn ident(&self) -> u16 {
        field::read_u16(self.buffer.as_ref(), off::IDENT)
    }

    fn flags_offset(&self) -> u16 {
        field::read_u16(self.buffer.as_ref(), off::FLG_OFF)
    }

    /// Don't-fragment flag.
    pub fn dont_frag(&self) -> bool {
        self.flags_offset() & FLAG_DF != 0
    }

    /// More-fragments flag.
    pub fn more_frags(&self) -> bool {
        self.flags_offset() & FLAG_MF != 0
    }

    /// Fragment offset in bytes (the field counts 8-byte units).
    pub fn frag_offset(&self) -> u16 {
        (self.flags_offset() & OFFSET_MASK) << 3
    }

    /// Time to live.
    pub fn hop_limit(&self) -> u8 {
        field::read_u8(self.buffer.as_ref(), off::TTL)
    }

    /// Protocol of the payload.
    pub fn protocol(&self) -> IpProtocol {
        IpProtocol::from(field::read_u8(self.buffer.as_ref(), off::PROTOCOL))
    }

    /// Header checksum as stored.
    pub fn checksum(&self) -> u16 {
        field::read_u16(self.buffer.as_ref(), off::CHECKSUM)
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(field::read_array::<4>(self.buffer.as_ref(), off::SRC))
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(field::read_array::<4>(self.buffer.as_ref(), off::DST))
    }

    /// Option bytes between the fixed header and the payload.
    pub fn options(&self) -> &[u8] {
        field::slice(self.buffer.as_ref(), IPV4_HEADER_LEN, self.header_len())
    }

    /// Whether the header checksum is correct.
    pub fn verify_checksum(&self) -> bool {
        let header = field::slice(self.buffer.as_ref(), 0, self.header_len());
        checksum::data(header) == 0xffff
    }

    /// The payload: from the end of the header to `total_len`, so Ethernet
    /// padding after the datagram is not part of it.
    pub fn payload(&self) -> &[u8] {
        let end = usize::from(self.total_len());
        field::slice(self.buffer.as_ref(), self.header_len(), end)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn buf(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    /// Sets the version nibble.
    pub fn set_version(&mut self, value: u8) {
        let b = field::read_u8(self.buffer.as_ref(), off::VER_IHL);
        field::write_u8(self.buf(), off::VER_IHL, (b & 0x0f) | (value << 4));
    }

    /// Sets the header length in bytes (rounded down to 32-bit words, at most
    /// 60).
    pub fn set_header_len(&mut self, value: usize) {
        let words = (value / 4).min(15) as u8;
        let b = field::read_u8(self.buffer.as_ref(), off::VER_IHL);
        field::write_u8(self.buf(), off::VER_IHL, (b & 0xf0) | words);
    }

    /// Sets the DSCP.
    pub fn set_dscp(&mut self, value: u8) {
        let b = field::read_u8(self.buffer.as_ref(), off::DSCP_ECN);
        field::write_u8(self.buf(), off::DSCP_ECN, (b & 0x03) | (value << 2));
    }

    /// Sets the ECN bits.
    pub fn set_ecn(&mut self, value: u8) {
        let b = field::read_u8(self.buffer.as_ref(), off::DSCP_ECN);
        field::write_u8(self.buf(), off::DSCP_ECN, (b & 0xfc) | (value & 0x03));
    }

    /// Sets the total length.
    pub fn set_total_len(&mut self, value: u16) {
        field::write_u16(self.buf(), off::LENGTH, value);
    }

    /// Sets the identification.
    pub fn set_ident(&mut self, value: u16) {
        field::write_u16(self.buf(), off::IDENT, value);
    }

    fn set_flags_offset(&mut self, value: u16) {
        field::write_u16(self.buf(), off::FLG_OFF, value);
    }

    /// Clears the flags and the fragment offset.
    pub fn clear_flags(&mut self) {
        let v = self.flags_offset() & OFFSET_MASK;
        self.set_flags_offset(v);
    }

    /// Sets or clears don't-fragment.
    pub fn set_dont_frag(&mut self, value: bool) {
        let v = self.flags_offset();
        self.set_flags_offset(if value { v | FLAG_DF } else { v & !FLAG_DF });
    }

    /// Sets or clears more-fragments.
    pub fn set_more_frags(&mut self, value: bool) {
        let v = self.flags_offset();
        self.set_flags_offset(if value { v | FLAG_MF } else { v & !FLAG_MF });
    }

    /// Sets the fragment offset in bytes (rounded down to 8-byte units).
    pub fn set_frag_offset(&mut self, value: u16) {
        let v = self.flags_offset();
        self.set_flags_offset((v & !OFFSET_MASK) | (value >> 3));
    }

    /// Sets the time to live.
    pub fn set_hop_limit(&mut self, value: u8) {
        field::write_u8(self.buf(), off::TTL, value);
    }

    /// Sets the protocol.
    pub fn set_protocol(&mut self, value: IpProtocol) {
        field::write_u8(self.buf(), off::PROTOCOL, value.into());
    }

    /// Sets the stored checksum.
    pub fn set_checksum(&mut self, value: u16) {
        field::write_u16(self.buf(), off::CHECKSUM, value);
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, value: Ipv4Addr) {
        field::write_bytes(self.buf(), off::SRC, &value.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, value: Ipv4Addr) {
        field::write_bytes(self.buf(), off::DST, &value.octets());
    }

    /// Computes and stores the header checksum (over `header_len` bytes).
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let header_len = self.header_len();
        let sum = checksum::data(field::slice(self.buffer.as_ref(), 0, header_len));
        self.set_checksum(!sum);
    }

    /// Mutable payload, up to `total_len`.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        let end = usize::from(self.total_len());
        field::slice_mut(self.buf(), start, end)
    }
}

/// A parsed IPv4 header of an unfragmented datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Repr {
    /// Source address.
    pub src_addr: Ipv4Addr,
    /// Destination address.
    pub dst_addr: Ipv4Addr,
    /// Protocol of the payload.
    pub protocol: IpProtocol,
    /// Payload length: `total_len - header_len` on parse; what
    /// [`emit`](Self::emit) writes into `total_len` (plus 20).
    pub payload_len: usize,
    /// Time to live.
    pub hop_limit: u8,
    /// Identification (only meaningful for fragmentation, which we never do;
    /// kept so a forwarded packet can keep it).
    pub ident: u16,
    /// Don't-fragment flag.
    pub dont_fragment: bool,
}

impl Ipv4Repr {
    /// Parses and validates a header, checksum included.
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) -> Result<Self, WireError> {
        Self::parse_with(packet, true)
    }

    /// Like [`parse`](Self::parse), with the checksum check optional (for
    /// fuzzing, or a NIC that verified it).
    pub fn parse_with<T: AsRef<[u8]>>(
        packet: &Ipv4Packet<T>,
        verify_checksum: bool,
    ) -> Result<Self, WireError> {
        // The version comes first: an IPv6 packet behind an IPv4 EtherType
        // should read as such, not as a length error.
        if packet.buffer.as_ref().is_empty() {
            return Err(WireError::truncated(Layer::Ipv4, IPV4_HEADER_LEN, 0));
        }
        if packet.version() != 4 {
            return Err(WireError::malformed(Layer::Ipv4, "version is not 4"));
        }
        packet.check_len()?;
        if verify_checksum && !packet.verify_checksum() {
            return Err(WireError::BadChecksum { layer: Layer::Ipv4 });
        }
        // RFC 791: a datagram is unfragmented iff MF is clear and the offset
        // is zero; anything else would need reassembly, which we do not do.
        if packet.more_frags() || packet.frag_offset() != 0 {
            return Err(WireError::Fragment);
        }
        Ok(Ipv4Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: usize::from(packet.total_len()).saturating_sub(packet.header_len()),
            hop_limit: packet.hop_limit(),
            ident: packet.ident(),
            dont_fragment: packet.dont_frag(),
        })
    }

    /// Header length [`emit`](Self::emit) writes: 20 (no options).
    pub const fn header_len(&self) -> usize {
        IPV4_HEADER_LEN
    }

    /// Header plus payload.
    pub const fn buffer_len(&self) -> usize {
        IPV4_HEADER_LEN + self.payload_len
    }

    /// Writes a 20-byte header with its checksum; the payload is left
    /// untouched. A `payload_len` over 65515 does not fit `total_len`, which
    /// then saturates at 65535: callers that can build such a thing go through
    /// [`TcpFrame::emit`](crate::TcpFrame::emit), which refuses it.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv4Packet<T>) {
        packet.set_version(4);
        packet.set_header_len(IPV4_HEADER_LEN);
        packet.set_dscp(0);
        packet.set_ecn(0);
        packet.set_total_len(u16::try_from(self.buffer_len()).unwrap_or(u16::MAX));
        packet.set_ident(self.ident);
        packet.set_flags_offset(if self.dont_fragment { FLAG_DF } else { 0 });
        packet.set_hop_limit(self.hop_limit);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10.0.0.1 -> 10.0.0.2, TCP, 4 payload bytes, ident 0x1c46, DF, TTL 64.
    const PACKET: [u8; 24] = [
        0x45, 0x00, 0x00, 0x18, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x0a, 0x98, 10, 0, 0, 1, 10, 0,
        0, 2, 0xde, 0xad, 0xbe, 0xef,
    ];

    fn repr() -> Ipv4Repr {
        Ipv4Repr {
            src_addr: Ipv4Addr::new(10, 0, 0, 1),
            dst_addr: Ipv4Addr::new(10, 0, 0, 2),
            protocol: IpProtocol::Tcp,
            payload_len: 4,
            hop_limit: 64,
            ident: 0x1c46,
            dont_fragment: true,
        }
    }

    fn with_checksum(mut bytes: Vec<u8>) -> Vec<u8> {
        Ipv4Packet::new_unchecked(&mut bytes[..]).fill_checksum();
        bytes
    }

    #[test]
    fn getters() {
        let p = Ipv4Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.ihl(), 5);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.dscp(), 0);
        assert_eq!(p.ecn(), 0);
        assert_eq!(p.total_len(), 24);
        assert_eq!(p.ident(), 0x1c46);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.protocol(), IpProtocol::Tcp);
        assert_eq!(p.checksum(), 0x0a98);
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 0, 0, 2));
        assert!(p.options().is_empty());
        assert!(p.verify_checksum());
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(p.into_inner().len(), 24);
    }

    #[test]
    fn parse_and_emit() {
        let parsed = Ipv4Repr::parse(&Ipv4Packet::new_checked(&PACKET[..]).unwrap()).unwrap();
        assert_eq!(parsed, repr());
        assert_eq!(parsed.header_len(), 20);
        assert_eq!(parsed.buffer_len(), 24);
        let mut out = [0u8; 24];
        out[20..].copy_from_slice(&PACKET[20..]);
        parsed.emit(&mut Ipv4Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, PACKET);
    }

    #[test]
    fn setters() {
        let mut b = [0u8; 28];
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        p.set_version(4);
        p.set_header_len(24);
        p.set_dscp(46);
        p.set_ecn(2);
        p.set_total_len(28);
        p.set_more_frags(true);
        p.set_frag_offset(1480);
        p.set_dont_frag(true);
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.dscp(), 46);
        assert_eq!(p.ecn(), 2);
        assert!(p.more_frags() && p.dont_frag());
        assert_eq!(p.frag_offset(), 1480);
        p.set_dont_frag(false);
        p.set_more_frags(false);
        assert!(!p.more_frags() && !p.dont_frag());
        assert_eq!(p.frag_offset(), 1480);
        p.set_more_frags(true);
        p.clear_flags();
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 1480);
        p.payload_mut().copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(p.options().len(), 4);
        assert_eq!(p.payload(), &[1, 2, 3, 4]);
    }

    #[test]
    fn options_are_skipped() {
        // ihl 6: a 4-byte option (NOP NOP NOP EOL) before the payload.
        let mut b = vec![
            0x46, 0x00, 0x00, 0x1a, 0x00, 0x01, 0x00, 0x00, 0x40, 0x06, 0, 0, 10, 0, 0, 1, 10, 0,
            0, 2, 1, 1, 1, 0, 0xaa, 0xbb,
        ];
        b = with_checksum(b);
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.options(), &[1, 1, 1, 0]);
        assert_eq!(p.payload(), &[0xaa, 0xbb]);
        let r = Ipv4Repr::parse(&p).unwrap();
        assert_eq!(r.payload_len, 2);
        assert!(!r.dont_fragment);
        assert_eq!(r.header_len(), 20);
    }

    #[test]
    fn padding_after_total_len_is_not_payload() {
        let mut b = PACKET.to_vec();
        b.extend_from_slice(&[0; 10]);
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(Ipv4Repr::parse(&p).unwrap().payload_len, 4);
    }

    #[test]
    fn truncated_at_every_length() {
        for len in 0..PACKET.len() {
            let err = Ipv4Repr::parse(&Ipv4Packet::new_unchecked(&PACKET[..len])).unwrap_err();
            assert!(
                matches!(
                    err,
                    WireError::Truncated {
                        layer: Layer::Ipv4,
                        ..
                    }
                ),
                "{len}: {err}"
            );
            assert!(Ipv4Packet::new_checked(&PACKET[..len]).is_err());
        }
    }

    #[test]
    fn total_len_beyond_buffer() {
        let mut b = PACKET.to_vec();
        b[3] = 0x30;
        let b = with_checksum(b);
        let err = Ipv4Repr::parse(&Ipv4Packet::new_unchecked(&b[..])).unwrap_err();
        assert_eq!(err, WireError::truncated(Layer::Ipv4, 0x30, 24));
    }

    #[test]
    fn total_len_below_header() {
        let mut b = PACKET.to_vec();
        b[3] = 19;
        let b = with_checksum(b);
        let err = Ipv4Repr::parse(&Ipv4Packet::new_unchecked(&b[..])).unwrap_err();
        assert!(matches!(
            err,
            WireError::Malformed {
                layer: Layer::Ipv4,
                ..
            }
        ));
    }

    #[test]
    fn ihl_below_five() {
        for ihl in 0..5u8 {
            let mut b = PACKET.to_vec();
            b[0] = 0x40 | ihl;
            let err = Ipv4Repr::parse(&Ipv4Packet::new_unchecked(&b[..])).unwrap_err();
            assert_eq!(
                err,
                WireError::malformed(Layer::Ipv4, "header length below 20")
            );
        }
    }

    #[test]
    fn ihl_past_total_len() {
        let mut b = PACKET.to_vec();
        b[0] = 0x4f; // 60-byte header in a 24-byte datagram
        let err = Ipv4Repr::parse(&Ipv4Packet::new_unchecked(&b[..])).unwrap_err();
        assert!(matches!(
            err,
            WireError::Malformed {
                layer: Layer::Ipv4,
                ..
            }
        ));
    }

    #[test]
    fn version_6() {
        let mut b = PACKET.to_vec();
        b[0] = 0x65;
        let b = with_checksum(b);
        let err = Ipv4Repr::parse(&Ipv4Packet::new_unchecked(&b[..])).unwrap_err();
        assert_eq!(err, WireError::malformed(Layer::Ipv4, "version is not 4"));
    }

    #[test]
    fn bad_checksum() {
        let mut b = PACKET.to_vec();
        b[11] ^= 1;
        let p = Ipv4Packet::new_unchecked(&b[..]);
        assert!(!p.verify_checksum());
        assert_eq!(
            Ipv4Repr::parse(&p).unwrap_err(),
            WireError::BadChecksum { layer: Layer::Ipv4 }
        );
        assert_eq!(Ipv4Repr::parse_with(&p, false).unwrap(), repr());
    }

    #[test]
    fn fragments() {
        // MF set, offset 0: the first fragment.
        let mut b = PACKET.to_vec();
        b[6] = 0x20;
        let b = with_checksum(b);
        assert_eq!(
            Ipv4Repr::parse(&Ipv4Packet::new_unchecked(&b[..])),
            Err(WireError::Fragment)
        );
        // MF clear, offset 185 (1480 bytes): the last fragment.
        let mut b = PACKET.to_vec();
        b[6] = 0x00;
        b[7] = 0xb9;
        let b = with_checksum(b);
        let p = Ipv4Packet::new_unchecked(&b[..]);
        assert_eq!(p.frag_offset(), 1480);
        assert_eq!(Ipv4Repr::parse(&p), Err(WireError::Fragment));
    }

    #[test]
    fn protocols_keep_unknown_values() {
        for v in 0..=255u8 {
            assert_eq!(u8::from(IpProtocol::from(v)), v);
        }
        assert_eq!(IpProtocol::from(47), IpProtocol::Unknown(47));
        assert_eq!(IpProtocol::Tcp.to_string(), "TCP");
        assert_eq!(IpProtocol::Unknown(47).to_string(), "47");
    }

    #[test]
    fn emit_saturates_oversize_total_len() {
        let mut r = repr();
        r.payload_len = 70_000;
        let mut b = [0u8; 20];
        r.emit(&mut Ipv4Packet::new_unchecked(&mut b[..]));
        assert_eq!(Ipv4Packet::new_unchecked(&b[..]).total_len(), u16::MAX);
    }
}
