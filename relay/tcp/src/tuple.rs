//! Connection identity and demultiplexing.

use core::net::{Ipv4Addr, SocketAddrV4};

use relay_wire::{SeqNumber, TcpFlags, TcpFrame, TcpOptions, TcpRepr};

/// A connection's 4-tuple, seen from this side: `local` is our address and
/// port, `remote` the peer's. `Ord` so that it can key a `BTreeMap` (the
/// crate avoids `HashMap`'s randomly seeded hasher).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FourTuple {
    /// Our address and port.
    pub local: SocketAddrV4,
    /// The peer's address and port.
    pub remote: SocketAddrV4,
}

impl FourTuple {
    /// A tuple from our and the peer's socket addresses.
    pub const fn new(local: SocketAddrV4, remote: SocketAddrV4) -> FourTuple {
        FourTuple { local, remote }
    }

    /// The tuple of a segment received from `src` to `dst`: the key to look
    /// the connection up with.
    pub fn incoming(src: Ipv4Addr, dst: Ipv4Addr, segment: &TcpRepr<'_>) -> FourTuple {
        FourTuple {
            local: SocketAddrV4::new(dst, segment.dst_port),
            remote: SocketAddrV4::new(src, segment.src_port),
        }
    }

    /// The tuple of a received frame (what a frame loop looks connections
    /// up with, after [`TcpFrame::parse`]).
    pub fn of_frame(frame: &TcpFrame<'_>) -> FourTuple {
        FourTuple::incoming(frame.ip.src_addr, frame.ip.dst_addr, &frame.tcp)
    }

    /// Source and destination IPv4 addresses for a segment we send.
    pub fn outgoing_addrs(&self) -> (Ipv4Addr, Ipv4Addr) {
        (*self.local.ip(), *self.remote.ip())
    }
}

/// The RST that RFC 9293 (3.10.7.1) says to send in answer to `segment` when
/// no connection exists for it (CLOSED state), or `None` when the segment is
/// itself a RST. Ports are swapped; the caller sends it back to the source.
pub fn reset_reply(segment: &TcpRepr<'_>) -> Option<TcpRepr<'static>> {
    if segment.flags.rst() {
        return None;
    }
    let (seq_number, ack_number, flags) = if segment.flags.ack() {
        (segment.ack_number, SeqNumber(0), TcpFlags::RST)
    } else {
        (
            SeqNumber(0),
            segment.seq_number + segment.segment_len(),
            TcpFlags::RST | TcpFlags::ACK,
        )
    };
    Some(TcpRepr {
        src_port: segment.dst_port,
        dst_port: segment.src_port,
        seq_number,
        ack_number,
        flags,
        window_len: 0,
        options: TcpOptions::default(),
        payload: &[],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(flags: TcpFlags, payload: &[u8]) -> TcpRepr<'_> {
        TcpRepr {
            src_port: 40000,
            dst_port: 443,
            seq_number: SeqNumber(1000),
            ack_number: SeqNumber(5000),
            flags,
            window_len: 100,
            options: TcpOptions::default(),
            payload,
        }
    }

    #[test]
    fn incoming_tuple_is_from_our_side() {
        let s = seg(TcpFlags::SYN, &[]);
        let t = FourTuple::incoming(Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 1), &s);
        assert_eq!(t.local, SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 443));
        assert_eq!(
            t.remote,
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 40000)
        );
        assert_eq!(
            t.outgoing_addrs(),
            (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2))
        );
    }

    #[test]
    fn reset_reply_follows_rfc9293() {
        // With ACK: <SEQ=SEG.ACK><CTL=RST>.
        let r = reset_reply(&seg(TcpFlags::ACK, b"abc")).unwrap();
        assert_eq!((r.seq_number, r.flags), (SeqNumber(5000), TcpFlags::RST));
        assert_eq!((r.src_port, r.dst_port), (443, 40000));
        // Without ACK: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>.
        let r = reset_reply(&seg(TcpFlags::SYN, b"ab")).unwrap();
        assert_eq!(r.seq_number, SeqNumber(0));
        assert_eq!(r.ack_number, SeqNumber(1003));
        assert_eq!(r.flags, TcpFlags::RST | TcpFlags::ACK);
        // Never answer a RST.
        assert!(reset_reply(&seg(TcpFlags::RST, &[])).is_none());
    }
}
