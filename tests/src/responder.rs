//! A minimal TCP echo responder on a frame device: enough TCP to show that a
//! kernel client accepts segments built in userspace with relay-wire, and
//! that the relay's own kernel never sees the flow. It is a demonstration of
//! the datapath, not the relay's TCP engine: go-back-N retransmission (on a
//! timer and on three duplicate ACKs), no options beyond MSS.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use relay_datapath::{Device, DeviceError};
use relay_wire::{EthernetRepr, SeqNumber, TcpFlags, TcpFrame, TcpOptions, TcpRepr};

/// What the responder saw and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponderStats {
    /// Frames received from the device.
    pub frames_in: u64,
    /// Frames that did not parse as Ethernet/IPv4/TCP with good checksums.
    pub malformed: u64,
    /// Connections opened (SYN answered).
    pub opened: u64,
    /// Connections closed by the client's FIN.
    pub closed: u64,
    /// Payload bytes echoed.
    pub echoed_bytes: u64,
    /// Segments sent (SYN-ACK, ACK, data, FIN).
    pub segments_out: u64,
    /// Times the unacknowledged echo was sent again.
    pub retransmissions: u64,
}

/// Where replies to one client go: the addressing of its frames, swapped.
#[derive(Clone, Copy, Debug)]
struct Route {
    eth: EthernetRepr,
    ip: relay_wire::Ipv4Repr,
    src_port: u16,
    dst_port: u16,
}

impl Route {
    fn reply_to(frame: &TcpFrame<'_>) -> Route {
        Route {
            eth: EthernetRepr {
                src_addr: frame.eth.dst_addr,
                dst_addr: frame.eth.src_addr,
                ethertype: frame.eth.ethertype,
            },
            ip: relay_wire::Ipv4Repr {
                src_addr: frame.ip.dst_addr,
                dst_addr: frame.ip.src_addr,
                protocol: frame.ip.protocol,
                payload_len: 0,
                hop_limit: 64,
                ident: 0,
                dont_fragment: true,
            },
            src_port: frame.tcp.dst_port,
            dst_port: frame.tcp.src_port,
        }
    }
}

#[derive(Debug)]
struct Conn {
    route: Route,
    /// Oldest byte (or FIN) the client has not acknowledged.
    snd_una: SeqNumber,
    /// The echo from `snd_una` on, kept until acknowledged: a segment the
    /// client never got (a full queue on a busy machine drops one now and
    /// then) is sent again instead of stalling the exchange for good.
    unacked: VecDeque<u8>,
    /// When the client last acknowledged something new, or we last sent
    /// everything again.
    progress_at: Instant,
    dupacks: u32,
    snd_nxt: SeqNumber,
    rcv_nxt: SeqNumber,
    /// Right edge of the client's receive window (no window scaling offered).
    snd_wnd_right: SeqNumber,
    /// The window we last advertised: a small one needs an update when the
    /// client's acknowledgements make room again.
    adv_window: u16,
    fin_sent: bool,
}

/// Echoes TCP payload back to whoever connects to `(addr, port)`.
#[derive(Debug)]
pub struct EchoResponder {
    addr: Ipv4Addr,
    port: u16,
    conns: HashMap<(Ipv4Addr, u16), Conn>,
    /// Counters.
    pub stats: ResponderStats,
}

/// Largest payload echoed in one segment; the SYN-ACK advertises it as MSS.
const ECHO_MSS: u16 = 1460;

/// Unacknowledged echo is sent again after this long without progress.
const RETRANSMIT_AFTER: Duration = Duration::from_millis(200);

impl EchoResponder {
    /// A responder for `addr:port`.
    pub fn new(addr: Ipv4Addr, port: u16) -> Self {
        EchoResponder {
            addr,
            port,
            conns: HashMap::new(),
            stats: ResponderStats::default(),
        }
    }

    /// Open connections.
    pub fn open_connections(&self) -> usize {
        self.conns.len()
    }

    /// Runs until `done` says so or `timeout` passes.
    pub fn run(
        &mut self,
        device: &mut dyn Device,
        timeout: Duration,
        mut done: impl FnMut(&ResponderStats) -> bool,
    ) -> Result<ResponderStats, DeviceError> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && !done(&self.stats) {
            self.poll(device)?;
            device.wait_readable(Duration::from_millis(5))?;
        }
        Ok(self.stats)
    }

    /// Processes one batch of received frames and flushes the answers.
    pub fn poll(&mut self, device: &mut dyn Device) -> Result<usize, DeviceError> {
        self.poll_at(device, Instant::now())
    }

    /// [`poll`](Self::poll) with the clock read by the caller.
    pub fn poll_at(&mut self, device: &mut dyn Device, now: Instant) -> Result<usize, DeviceError> {
        let mut replies: Vec<Vec<u8>> = Vec::new();
        let n = device.receive(64, &mut |frame| {
            self.stats.frames_in += 1;
            match TcpFrame::parse(frame) {
                Ok(parsed) => self.handle(&parsed, now, &mut replies),
                Err(_) => self.stats.malformed += 1,
            }
        })?;
        let stalled: Vec<(Ipv4Addr, u16)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.snd_una != c.snd_nxt && now >= c.progress_at + RETRANSMIT_AFTER)
            .map(|(k, _)| *k)
            .collect();
        for key in stalled {
            self.retransmit(key, now, &mut replies);
        }
        for reply in &replies {
            while !device.send(reply)? {
                device.flush()?;
            }
            self.stats.segments_out += 1;
        }
        device.flush()?;
        Ok(n)
    }

    fn handle(&mut self, frame: &TcpFrame<'_>, now: Instant, replies: &mut Vec<Vec<u8>>) {
        let tcp = &frame.tcp;
        if frame.ip.dst_addr != self.addr || tcp.dst_port != self.port {
            return;
        }
        let key = (frame.ip.src_addr, tcp.src_port);
        if tcp.flags.contains(TcpFlags::RST) {
            self.conns.remove(&key);
            return;
        }
        if tcp.flags.contains(TcpFlags::SYN) {
            // A fixed-per-peer ISN is fine for a demonstration responder.
            let isn = SeqNumber(0x1000_0000 ^ u32::from(tcp.src_port) << 8);
            let rcv_nxt = tcp.seq_number + 1;
            let options = TcpOptions {
                mss: Some(ECHO_MSS),
                ..TcpOptions::default()
            };
            let route = Route::reply_to(frame);
            replies.push(segment(
                &route,
                isn,
                rcv_nxt,
                u16::MAX,
                TcpFlags::SYN | TcpFlags::ACK,
                options,
                &[],
            ));
            // The client's SYN again (our SYN-ACK was slow or lost) is the
            // same connection: answered again, not opened again.
            if self.conns.get(&key).is_some_and(|c| c.rcv_nxt == rcv_nxt) {
                return;
            }
            let conn = Conn {
                route,
                snd_una: isn + 1,
                unacked: VecDeque::new(),
                progress_at: now,
                dupacks: 0,
                snd_nxt: isn + 1,
                rcv_nxt,
                snd_wnd_right: isn + 1 + usize::from(tcp.window_len),
                adv_window: u16::MAX,
                fin_sent: false,
            };
            self.conns.insert(key, conn);
            self.stats.opened += 1;
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let mut go_back = false;
        if tcp.flags.contains(TcpFlags::ACK) {
            let right = tcp.ack_number + usize::from(tcp.window_len);
            if right > conn.snd_wnd_right {
                conn.snd_wnd_right = right;
            }
            let advanced = tcp.ack_number - conn.snd_una;
            let outstanding = conn.snd_nxt - conn.snd_una;
            if advanced > 0 && advanced <= outstanding {
                let data = (advanced as usize).min(conn.unacked.len());
                conn.unacked.drain(..data);
                conn.snd_una = tcp.ack_number;
                conn.progress_at = now;
                conn.dupacks = 0;
            } else if advanced == 0 && outstanding > 0 && tcp.payload.is_empty() {
                // The client got something past a hole (RFC 5681's
                // duplicate ACK): send everything from the hole again once.
                conn.dupacks += 1;
                go_back = conn.dupacks == 3;
            }
        }
        let mut echo: &[u8] = &[];
        let mut fin = false;
        // Accept (and so acknowledge) only what can be echoed inside the
        // client's window: no retransmission here, so nothing may be sent
        // that the client would have to discard. Refused data comes again.
        let fits = conn.snd_nxt + tcp.payload.len() <= conn.snd_wnd_right;
        if tcp.seq_number == conn.rcv_nxt && fits {
            conn.rcv_nxt += tcp.payload.len();
            echo = tcp.payload;
            if tcp.flags.contains(TcpFlags::FIN) {
                conn.rcv_nxt += 1;
                fin = true;
            }
        }
        let (snd_nxt, rcv_nxt) = (conn.snd_nxt, conn.rcv_nxt);
        // Offer only as much as the client can take back: what it sends is
        // echoed, so our receive window is the room left in its window.
        let room = (conn.snd_wnd_right - (snd_nxt + echo.len())).clamp(0, i32::from(u16::MAX));
        let window = room as u16;
        let window_update = echo.is_empty()
            && tcp.payload.is_empty()
            && conn.adv_window < 2 * ECHO_MSS
            && window >= 2 * ECHO_MSS;
        conn.adv_window = window;
        if !echo.is_empty() {
            replies.push(segment(
                &conn.route,
                snd_nxt,
                rcv_nxt,
                window,
                TcpFlags::ACK | TcpFlags::PSH,
                TcpOptions::default(),
                echo,
            ));
            self.stats.echoed_bytes += echo.len() as u64;
        }
        if conn.snd_una == conn.snd_nxt {
            conn.progress_at = now;
        }
        conn.unacked.extend(echo);
        conn.snd_nxt += echo.len();
        if fin && !conn.fin_sent {
            conn.fin_sent = true;
            let (seq, ack) = (conn.snd_nxt, conn.rcv_nxt);
            conn.snd_nxt += 1;
            replies.push(segment(
                &conn.route,
                seq,
                ack,
                window,
                TcpFlags::FIN | TcpFlags::ACK,
                TcpOptions::default(),
                &[],
            ));
            self.stats.closed += 1;
            return;
        }
        if conn.fin_sent && tcp.flags.contains(TcpFlags::ACK) && tcp.ack_number == conn.snd_nxt {
            self.conns.remove(&key);
            return;
        }
        if go_back {
            self.retransmit(key, now, replies);
            return;
        }
        if (echo.is_empty() && !tcp.payload.is_empty()) || window_update {
            // Out of order, a retransmission, or room again after a small
            // window: say where we are.
            replies.push(segment(
                &conn.route,
                snd_nxt,
                rcv_nxt,
                window,
                TcpFlags::ACK,
                TcpOptions::default(),
                &[],
            ));
        }
    }

    /// Sends everything unacknowledged again (and the FIN, if sent),
    /// within the window it was first sent in.
    fn retransmit(&mut self, key: (Ipv4Addr, u16), now: Instant, replies: &mut Vec<Vec<u8>>) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        conn.progress_at = now;
        conn.dupacks = 0;
        self.stats.retransmissions += 1;
        let (data, _) = conn.unacked.as_slices();
        let mut seq = conn.snd_una;
        let bytes: Vec<u8> = if data.len() == conn.unacked.len() {
            data.to_vec()
        } else {
            conn.unacked.iter().copied().collect()
        };
        for chunk in bytes.chunks(usize::from(ECHO_MSS)) {
            replies.push(segment(
                &conn.route,
                seq,
                conn.rcv_nxt,
                conn.adv_window,
                TcpFlags::ACK | TcpFlags::PSH,
                TcpOptions::default(),
                chunk,
            ));
            seq += chunk.len();
        }
        if conn.fin_sent && seq != conn.snd_nxt {
            replies.push(segment(
                &conn.route,
                seq,
                conn.rcv_nxt,
                conn.adv_window,
                TcpFlags::FIN | TcpFlags::ACK,
                TcpOptions::default(),
                &[],
            ));
        }
    }
}

/// A segment along `route`.
fn segment(
    route: &Route,
    seq: SeqNumber,
    ack: SeqNumber,
    window: u16,
    flags: TcpFlags,
    options: TcpOptions,
    payload: &[u8],
) -> Vec<u8> {
    let reply = TcpFrame {
        eth: route.eth,
        ip: route.ip,
        tcp: TcpRepr {
            src_port: route.src_port,
            dst_port: route.dst_port,
            seq_number: seq,
            ack_number: ack,
            flags,
            window_len: window,
            options,
            payload,
        },
    };
    let mut buf = vec![0u8; reply.frame_len()];
    match reply.emit(&mut buf) {
        Ok(len) => buf.truncate(len),
        Err(_) => buf.clear(),
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_datapath::MemoryDevice;
    use relay_wire::{EtherType, EthernetAddress, IpProtocol, Ipv4Repr};

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const CLIENT_ISN: SeqNumber = SeqNumber(5000);

    /// The client's side of the link: frames to the responder, and what
    /// came back, parsed.
    struct Client {
        link: MemoryDevice,
    }

    impl Client {
        fn send(&mut self, seq: SeqNumber, ack: SeqNumber, flags: TcpFlags, payload: &[u8]) {
            let to_server = Route {
                eth: EthernetRepr {
                    src_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
                    dst_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
                    ethertype: EtherType::Ipv4,
                },
                ip: Ipv4Repr {
                    src_addr: CLIENT,
                    dst_addr: SERVER,
                    protocol: IpProtocol::Tcp,
                    payload_len: 0,
                    hop_limit: 64,
                    ident: 0,
                    dont_fragment: true,
                },
                src_port: 40000,
                dst_port: 443,
            };
            let frame = segment(
                &to_server,
                seq,
                ack,
                u16::MAX,
                flags,
                TcpOptions::default(),
                payload,
            );
            assert!(self.link.send(&frame).expect("send"));
        }

        /// `(seq, flags, payload)` of every segment the responder sent.
        fn received(&mut self) -> Vec<(SeqNumber, TcpFlags, Vec<u8>)> {
            let mut out = Vec::new();
            self.link
                .receive(1024, &mut |frame| {
                    let f = TcpFrame::parse(frame).expect("a well-formed reply");
                    out.push((f.tcp.seq_number, f.tcp.flags, f.tcp.payload.to_vec()));
                })
                .expect("receive");
            out
        }
    }

    fn connected() -> (EchoResponder, MemoryDevice, Client, SeqNumber, Instant) {
        let (server_end, client_end) = MemoryDevice::pair(1024);
        let mut responder = EchoResponder::new(SERVER, 443);
        let mut client = Client { link: client_end };
        let mut server = server_end;
        let t0 = Instant::now();
        client.send(CLIENT_ISN, SeqNumber(0), TcpFlags::SYN, &[]);
        responder.poll_at(&mut server, t0).expect("poll");
        let synack = client.received();
        assert_eq!(synack.len(), 1);
        let server_isn = synack[0].0;
        client.send(CLIENT_ISN + 1, server_isn + 1, TcpFlags::ACK, &[]);
        responder.poll_at(&mut server, t0).expect("poll");
        assert!(client.received().is_empty());
        (responder, server, client, server_isn + 1, t0)
    }

    #[test]
    fn a_lost_echo_is_sent_again_after_three_duplicate_acks() {
        let (mut responder, mut server, mut client, first, t0) = connected();
        let (a, b) = (vec![b'a'; 1000], vec![b'b'; 700]);
        client.send(CLIENT_ISN + 1, first, TcpFlags::ACK, &a);
        client.send(CLIENT_ISN + 1001, first, TcpFlags::ACK, &b);
        responder.poll_at(&mut server, t0).expect("poll");
        let echoes = client.received();
        assert_eq!(echoes.len(), 2, "{echoes:?}");
        // The first echo is lost; the second arrives past the hole, and the
        // client says so three times.
        for _ in 0..3 {
            client.send(CLIENT_ISN + 1701, first, TcpFlags::ACK, &[]);
        }
        responder.poll_at(&mut server, t0).expect("poll");
        let again = client.received();
        // Everything from the hole, in order, in segments of at most MSS.
        let mut expect_seq = first;
        let mut resent = Vec::new();
        for (seq, _, payload) in again.iter().filter(|s| !s.2.is_empty()) {
            assert_eq!(*seq, expect_seq);
            assert!(payload.len() <= usize::from(ECHO_MSS));
            expect_seq += payload.len();
            resent.extend_from_slice(payload);
        }
        assert!(
            resent == [a, b].concat(),
            "{} bytes sent again",
            resent.len()
        );
        assert_eq!(responder.stats.retransmissions, 1);
    }

    #[test]
    fn unacknowledged_echo_and_fin_are_sent_again_when_the_timer_fires() {
        let (mut responder, mut server, mut client, first, t0) = connected();
        let a = vec![b'x'; 300];
        client.send(CLIENT_ISN + 1, first, TcpFlags::ACK | TcpFlags::FIN, &a);
        responder.poll_at(&mut server, t0).expect("poll");
        assert_eq!(client.received().len(), 2, "echo and FIN");
        // Nothing acknowledged: not yet...
        responder
            .poll_at(&mut server, t0 + RETRANSMIT_AFTER / 2)
            .expect("poll");
        assert!(client.received().is_empty());
        // ...then the echo and the FIN again.
        responder
            .poll_at(&mut server, t0 + RETRANSMIT_AFTER)
            .expect("poll");
        let again = client.received();
        assert_eq!(again.len(), 2, "{again:?}");
        assert_eq!((again[0].0, &again[0].2), (first, &a));
        assert!(again[1].1.contains(TcpFlags::FIN));
        assert_eq!(again[1].0, first + 300);
        // Once all is acknowledged the connection is gone and the timer
        // sends nothing more.
        client.send(CLIENT_ISN + 302, first + 301, TcpFlags::ACK, &[]);
        responder
            .poll_at(&mut server, t0 + RETRANSMIT_AFTER * 3)
            .expect("poll");
        assert!(client.received().is_empty());
        assert_eq!(responder.open_connections(), 0);
    }
}
