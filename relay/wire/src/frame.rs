//! Whole frames, as the datapath receives and sends them.

use crate::arp::{ARP_PACKET_LEN, ArpPacket, ArpRepr};
use crate::error::{Layer, WireError};
use crate::ethernet::{ETHERNET_HEADER_LEN, EtherType, EthernetFrame, EthernetRepr};
use crate::field;
use crate::ipv4::{IPV4_HEADER_LEN, IpProtocol, Ipv4Packet, Ipv4Repr};
use crate::tcp::{TcpPacket, TcpRepr};

/// Length of an Ethernet frame carrying an ARP packet, before padding.
pub const ARP_FRAME_LEN: usize = ETHERNET_HEADER_LEN + ARP_PACKET_LEN;

/// The shortest Ethernet frame on the wire, without the FCS. Receivers see
/// shorter datagrams padded up to it; emit functions here do not pad, as NICs
/// and TAP devices do that themselves.
pub const ETHERNET_MIN_FRAME_LEN: usize = 60;

/// An Ethernet frame carrying an unfragmented IPv4 datagram carrying TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpFrame<'a> {
    /// Ethernet header; `ethertype` is IPv4 after parse and forced to it on
    /// emit.
    pub eth: EthernetRepr,
    /// IPv4 header; `protocol` and `payload_len` are forced to match the TCP
    /// segment on emit.
    pub ip: Ipv4Repr,
    /// The segment; its payload borrows from the frame.
    pub tcp: TcpRepr<'a>,
}

impl<'a> TcpFrame<'a> {
    /// Parses Ethernet → IPv4 → TCP with both checksums verified. Trailing
    /// Ethernet padding is ignored. Another EtherType or IP protocol is
    /// [`WireError::Unsupported`].
    pub fn parse(frame: &'a [u8]) -> Result<TcpFrame<'a>, WireError> {
        Self::parse_with(frame, true)
    }

    /// Like [`parse`](Self::parse), with checksum verification optional (for
    /// fuzzing, or a NIC that verified them).
    pub fn parse_with(frame: &'a [u8], verify_checksums: bool) -> Result<TcpFrame<'a>, WireError> {
        let eth_view = EthernetFrame::new_checked(frame)?;
        let eth = EthernetRepr::parse(&eth_view)?;
        if eth.ethertype != EtherType::Ipv4 {
            return Err(WireError::Unsupported {
                layer: Layer::Ethernet,
                reason: "EtherType is not IPv4",
            });
        }
        let ip_bytes = field::slice(frame, ETHERNET_HEADER_LEN, frame.len());
        let ip_view = Ipv4Packet::new_unchecked(ip_bytes);
        let ip = Ipv4Repr::parse_with(&ip_view, verify_checksums)?;
        if ip.protocol != IpProtocol::Tcp {
            return Err(WireError::Unsupported {
                layer: Layer::Ipv4,
                reason: "protocol is not TCP",
            });
        }
        // Borrow the segment from `frame`, not from the view, so that the
        // payload lives for 'a.
        let start = ETHERNET_HEADER_LEN + ip_view.header_len();
        let segment = field::slice(frame, start, start + ip.payload_len);
        let tcp_view = TcpPacket::new_unchecked(segment);
        let tcp = TcpRepr::parse(&tcp_view, ip.src_addr, ip.dst_addr, verify_checksums)?;
        Ok(TcpFrame { eth, ip, tcp })
    }

    /// Bytes [`emit`](Self::emit) writes: Ethernet, a 20-byte IPv4 header and
    /// the segment (no padding).
    pub fn frame_len(&self) -> usize {
        ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + self.tcp.buffer_len()
    }

    /// Writes the frame at the start of `buf` with both checksums and returns
    /// its length. The IPv4 protocol, payload length and the EtherType are
    /// taken from the layers below, whatever `self` says.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let len = self.frame_len();
        let ip_len = len - ETHERNET_HEADER_LEN;
        if ip_len > usize::from(u16::MAX) {
            return Err(WireError::TooLong {
                layer: Layer::Ipv4,
                len: ip_len,
            });
        }
        let Some(out) = buf.get_mut(..len) else {
            return Err(WireError::BufferTooSmall {
                needed: len,
                got: buf.len(),
            });
        };
        let (eth_bytes, ip_bytes) = out.split_at_mut(ETHERNET_HEADER_LEN);
        let eth = EthernetRepr {
            ethertype: EtherType::Ipv4,
            ..self.eth
        };
        eth.emit(&mut EthernetFrame::new_unchecked(eth_bytes));
        let (ip_header, segment) = ip_bytes.split_at_mut(IPV4_HEADER_LEN);
        let ip = Ipv4Repr {
            protocol: IpProtocol::Tcp,
            payload_len: segment.len(),
            ..self.ip
        };
        ip.emit(&mut Ipv4Packet::new_unchecked(ip_header));
        self.tcp.emit(
            &mut TcpPacket::new_unchecked(segment),
            ip.src_addr,
            ip.dst_addr,
        );
        Ok(len)
    }
}

/// Parses an Ethernet frame carrying ARP (padding ignored).
pub fn parse_arp(frame: &[u8]) -> Result<(EthernetRepr, ArpRepr), WireError> {
    let eth_view = EthernetFrame::new_checked(frame)?;
    let eth = EthernetRepr::parse(&eth_view)?;
    if eth.ethertype != EtherType::Arp {
        return Err(WireError::Unsupported {
            layer: Layer::Ethernet,
            reason: "EtherType is not ARP",
        });
    }
    let arp = ArpRepr::parse(&ArpPacket::new_unchecked(eth_view.payload()))?;
    Ok((eth, arp))
}

/// Writes an ARP frame (42 bytes, [`ARP_FRAME_LEN`]) at the start of `buf`
/// and returns its length; the EtherType is forced to ARP. For a reply,
/// `eth.dst_addr` is the requester; for a gratuitous ARP, broadcast.
pub fn emit_arp(eth: &EthernetRepr, arp: &ArpRepr, buf: &mut [u8]) -> Result<usize, WireError> {
    let Some(out) = buf.get_mut(..ARP_FRAME_LEN) else {
        return Err(WireError::BufferTooSmall {
            needed: ARP_FRAME_LEN,
            got: buf.len(),
        });
    };
    let (eth_bytes, arp_bytes) = out.split_at_mut(ETHERNET_HEADER_LEN);
    let eth = EthernetRepr {
        ethertype: EtherType::Arp,
        ..*eth
    };
    eth.emit(&mut EthernetFrame::new_unchecked(eth_bytes));
    arp.emit(&mut ArpPacket::new_unchecked(arp_bytes));
    Ok(ARP_FRAME_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arp::ArpOperation;
    use crate::ethernet::EthernetAddress;
    use crate::tcp::{SeqNumber, TcpFlags, TcpOptions, TcpTimestamp};
    use core::net::Ipv4Addr;

    const CLIENT_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
    const RELAY_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);
    const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const RELAY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    /// A Linux client's SYN to the VIP, as captured: 74 bytes.
    pub(crate) const SYN_FRAME: [u8; 74] = [
        // Ethernet: to the relay, from the client, IPv4.
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00,
        // IPv4: 60 bytes, ident 0x8f3a, DF, TTL 64, TCP, checksum 0x977f.
        0x45, 0x00, 0x00, 0x3c, 0x8f, 0x3a, 0x40, 0x00, 0x40, 0x06, 0x97, 0x7f, //
        10, 0, 0, 1, 10, 0, 0, 2, //
        // TCP: 54321 -> 443, seq 0x1a2b3c4d, SYN, window 64240, checksum 0x2a66.
        0xd4, 0x31, 0x01, 0xbb, 0x1a, 0x2b, 0x3c, 0x4d, 0x00, 0x00, 0x00, 0x00, //
        0xa0, 0x02, 0xfa, 0xf0, 0x2a, 0x66, 0x00, 0x00, //
        // MSS 1460, SACK-permitted, TS 123456/0, NOP, WS 7.
        0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x00, 0x01, 0xe2, 0x40, //
        0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07,
    ];

    /// A bare ACK from the relay, 54 bytes, padded to the 60-byte minimum.
    const PADDED_ACK_FRAME: [u8; 60] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x08, 0x00,
        // IPv4: 40 bytes, ident 0, DF, TTL 64, TCP, checksum 0x26ce.
        0x45, 0x00, 0x00, 0x28, 0x00, 0x00, 0x40, 0x00, 0x40, 0x06, 0x26, 0xce, //
        10, 0, 0, 2, 10, 0, 0, 1, //
        // TCP: 443 -> 54321, seq 0x55667788, ack 0x1a2b3c4e, ACK, window 509.
        0x01, 0xbb, 0xd4, 0x31, 0x55, 0x66, 0x77, 0x88, 0x1a, 0x2b, 0x3c, 0x4e, //
        0x50, 0x10, 0x01, 0xfd, 0xa0, 0x80, 0x00, 0x00, //
        // Ethernet padding.
        0, 0, 0, 0, 0, 0,
    ];

    const ARP_REQUEST_FRAME: [u8; 60] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, //
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 10, 0, 0, 1, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 10, 0, 0, 2, //
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    const ARP_REPLY_FRAME: [u8; 42] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02, //
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 10, 0, 0, 2, //
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 10, 0, 0, 1,
    ];

    #[test]
    fn syn_frame() {
        let f = TcpFrame::parse(&SYN_FRAME).unwrap();
        assert_eq!(f.eth.src_addr, CLIENT_MAC);
        assert_eq!(f.eth.dst_addr, RELAY_MAC);
        assert_eq!(f.eth.ethertype, EtherType::Ipv4);
        assert_eq!(
            f.ip,
            Ipv4Repr {
                src_addr: CLIENT_IP,
                dst_addr: RELAY_IP,
                protocol: IpProtocol::Tcp,
                payload_len: 40,
                hop_limit: 64,
                ident: 0x8f3a,
                dont_fragment: true,
            }
        );
        assert_eq!(f.tcp.src_port, 54321);
        assert_eq!(f.tcp.dst_port, 443);
        assert_eq!(f.tcp.seq_number, SeqNumber(0x1a2b_3c4d));
        assert_eq!(f.tcp.flags, TcpFlags::SYN);
        assert_eq!(f.tcp.window_len, 64240);
        assert_eq!(
            f.tcp.options,
            TcpOptions {
                mss: Some(1460),
                window_scale: Some(7),
                sack_permitted: true,
                sack_blocks: [None; 4],
                timestamp: Some(TcpTimestamp {
                    tsval: 123_456,
                    tsecr: 0
                }),
            }
        );
        assert!(f.tcp.payload.is_empty());
        assert_eq!(f.frame_len(), 74);

        let mut out = [0u8; 100];
        assert_eq!(f.emit(&mut out), Ok(74));
        assert_eq!(&out[..74], &SYN_FRAME[..]);
    }

    #[test]
    fn padded_frame() {
        let f = TcpFrame::parse(&PADDED_ACK_FRAME).unwrap();
        assert_eq!(f.ip.payload_len, 20);
        assert!(f.tcp.payload.is_empty(), "padding is not data");
        assert_eq!(f.tcp.flags, TcpFlags::ACK);
        assert_eq!(f.tcp.ack_number, SeqNumber(0x1a2b_3c4e));
        assert_eq!(f.tcp.window_len, 509);
        assert_eq!(f.tcp.segment_len(), 0);
        assert_eq!(f.frame_len(), 54);
        let mut out = [0u8; 54];
        assert_eq!(f.emit(&mut out), Ok(54));
        assert_eq!(out, PADDED_ACK_FRAME[..54]);
        // Without padding the frame is just as valid.
        assert_eq!(TcpFrame::parse(&PADDED_ACK_FRAME[..54]).unwrap(), f);
    }

    #[test]
    fn truncated_at_every_length() {
        for len in 0..SYN_FRAME.len() {
            assert!(TcpFrame::parse(&SYN_FRAME[..len]).is_err(), "{len}");
            assert!(
                TcpFrame::parse_with(&SYN_FRAME[..len], false).is_err(),
                "{len}"
            );
        }
        for len in 0..54 {
            assert!(TcpFrame::parse(&PADDED_ACK_FRAME[..len]).is_err(), "{len}");
        }
    }

    #[test]
    fn emit_into_small_buffer() {
        let f = TcpFrame::parse(&SYN_FRAME).unwrap();
        let mut out = [0u8; 73];
        assert_eq!(
            f.emit(&mut out),
            Err(WireError::BufferTooSmall {
                needed: 74,
                got: 73
            })
        );
    }

    #[test]
    fn emit_forces_consistent_lengths() {
        let mut f = TcpFrame::parse(&SYN_FRAME).unwrap();
        f.ip.payload_len = 9999;
        f.ip.protocol = IpProtocol::Udp;
        f.eth.ethertype = EtherType::Arp;
        let payload = [0x42u8; 100];
        f.tcp.payload = &payload;
        let mut out = vec![0u8; 2000];
        let n = f.emit(&mut out).unwrap();
        assert_eq!(n, 174);
        let back = TcpFrame::parse(&out[..n]).unwrap();
        assert_eq!(back.ip.payload_len, 140);
        assert_eq!(back.tcp.payload, &payload[..]);
        assert_eq!(back.tcp.segment_len(), 101);
    }

    #[test]
    fn emit_refuses_oversize() {
        let mut f = TcpFrame::parse(&SYN_FRAME).unwrap();
        let payload = vec![0u8; 70_000];
        f.tcp.payload = &payload;
        let mut out = vec![0u8; 80_000];
        assert_eq!(
            f.emit(&mut out),
            Err(WireError::TooLong {
                layer: Layer::Ipv4,
                len: 70_060
            })
        );
    }

    #[test]
    fn bad_checksums() {
        let mut b = SYN_FRAME;
        b[24] ^= 0xff; // IPv4 checksum
        assert_eq!(
            TcpFrame::parse(&b),
            Err(WireError::BadChecksum { layer: Layer::Ipv4 })
        );
        let mut b = SYN_FRAME;
        b[73] = 8; // WS 8: the TCP checksum no longer matches
        assert_eq!(
            TcpFrame::parse(&b),
            Err(WireError::BadChecksum { layer: Layer::Tcp })
        );
        assert_eq!(
            TcpFrame::parse_with(&b, false)
                .unwrap()
                .tcp
                .options
                .window_scale,
            Some(8)
        );
    }

    #[test]
    fn not_tcp_or_not_ipv4() {
        let mut b = SYN_FRAME;
        b[12] = 0x86;
        b[13] = 0xdd;
        assert!(matches!(
            TcpFrame::parse(&b),
            Err(WireError::Unsupported {
                layer: Layer::Ethernet,
                ..
            })
        ));
        let mut b = SYN_FRAME;
        b[23] = 17; // UDP
        Ipv4Packet::new_unchecked(&mut b[14..]).fill_checksum();
        assert!(matches!(
            TcpFrame::parse(&b),
            Err(WireError::Unsupported {
                layer: Layer::Ipv4,
                ..
            })
        ));
        assert!(matches!(
            parse_arp(&SYN_FRAME),
            Err(WireError::Unsupported {
                layer: Layer::Ethernet,
                ..
            })
        ));
        assert!(matches!(
            TcpFrame::parse(&ARP_REQUEST_FRAME),
            Err(WireError::Unsupported {
                layer: Layer::Ethernet,
                ..
            })
        ));
    }

    #[test]
    fn fragment_frame() {
        let mut b = SYN_FRAME;
        b[20] |= 0x20; // MF
        Ipv4Packet::new_unchecked(&mut b[14..]).fill_checksum();
        assert_eq!(TcpFrame::parse(&b), Err(WireError::Fragment));
    }

    #[test]
    fn arp_request_and_reply_frames() {
        let (eth, req) = parse_arp(&ARP_REQUEST_FRAME).unwrap();
        assert!(eth.dst_addr.is_broadcast());
        assert_eq!(eth.src_addr, CLIENT_MAC);
        assert_eq!(req.operation, ArpOperation::Request);
        assert_eq!(req.source_protocol_addr, CLIENT_IP);
        assert_eq!(req.target_protocol_addr, RELAY_IP);

        let reply = req.reply(RELAY_MAC);
        let reply_eth = EthernetRepr {
            src_addr: RELAY_MAC,
            dst_addr: req.source_hardware_addr,
            ethertype: EtherType::Arp,
        };
        let mut out = [0u8; 64];
        assert_eq!(emit_arp(&reply_eth, &reply, &mut out), Ok(42));
        assert_eq!(out[..42], ARP_REPLY_FRAME);
        assert_eq!(parse_arp(&ARP_REPLY_FRAME).unwrap(), (reply_eth, reply));

        // Request round trip, padding dropped.
        let mut out = [0u8; 42];
        assert_eq!(emit_arp(&eth, &req, &mut out), Ok(42));
        assert_eq!(out, ARP_REQUEST_FRAME[..42]);
        assert_eq!(
            emit_arp(&eth, &req, &mut [0u8; 41]),
            Err(WireError::BufferTooSmall {
                needed: 42,
                got: 41
            })
        );
    }

    #[test]
    fn gratuitous_arp_frame() {
        let g = ArpRepr::gratuitous(RELAY_MAC, RELAY_IP);
        let eth = EthernetRepr {
            src_addr: RELAY_MAC,
            dst_addr: EthernetAddress::BROADCAST,
            ethertype: EtherType::Arp,
        };
        let mut out = [0u8; 42];
        emit_arp(&eth, &g, &mut out).unwrap();
        assert_eq!(parse_arp(&out).unwrap(), (eth, g));
    }

    #[test]
    fn arp_truncated_at_every_length() {
        for len in 0..ARP_FRAME_LEN {
            assert!(parse_arp(&ARP_REPLY_FRAME[..len]).is_err(), "{len}");
        }
    }
}
