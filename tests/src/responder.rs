//! A minimal TCP echo responder on a frame device: enough TCP to show that a
//! kernel client accepts segments built in userspace with relay-wire, and
//! that the relay's own kernel never sees the flow. It is a demonstration of
//! the datapath, not the relay's TCP engine: no retransmission, no windows,
//! no options beyond MSS.

use std::collections::HashMap;
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
}

#[derive(Debug)]
struct Conn {
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
        let mut replies: Vec<Vec<u8>> = Vec::new();
        let n = device.receive(64, &mut |frame| {
            self.stats.frames_in += 1;
            match TcpFrame::parse(frame) {
                Ok(parsed) => self.handle(&parsed, &mut replies),
                Err(_) => self.stats.malformed += 1,
            }
        })?;
        for reply in &replies {
            while !device.send(reply)? {
                device.flush()?;
            }
            self.stats.segments_out += 1;
        }
        device.flush()?;
        Ok(n)
    }

    fn handle(&mut self, frame: &TcpFrame<'_>, replies: &mut Vec<Vec<u8>>) {
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
            replies.push(self.segment(
                frame,
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
        if tcp.flags.contains(TcpFlags::ACK) {
            let right = tcp.ack_number + usize::from(tcp.window_len);
            if right > conn.snd_wnd_right {
                conn.snd_wnd_right = right;
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
            let segment = self.segment(
                frame,
                snd_nxt,
                rcv_nxt,
                window,
                TcpFlags::ACK | TcpFlags::PSH,
                TcpOptions::default(),
                echo,
            );
            replies.push(segment);
            self.stats.echoed_bytes += echo.len() as u64;
        }
        let conn = match self.conns.get_mut(&key) {
            Some(c) => c,
            None => return,
        };
        conn.snd_nxt += echo.len();
        if fin && !conn.fin_sent {
            conn.fin_sent = true;
            let (seq, ack) = (conn.snd_nxt, conn.rcv_nxt);
            conn.snd_nxt += 1;
            replies.push(self.segment(
                frame,
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
        if (echo.is_empty() && !tcp.payload.is_empty()) || window_update {
            // Out of order, a retransmission, or room again after a small
            // window: say where we are.
            replies.push(self.segment(
                frame,
                snd_nxt,
                rcv_nxt,
                window,
                TcpFlags::ACK,
                TcpOptions::default(),
                &[],
            ));
        }
    }

    /// A reply to `to`, addresses and ports swapped.
    #[allow(clippy::too_many_arguments)]
    fn segment(
        &self,
        to: &TcpFrame<'_>,
        seq: SeqNumber,
        ack: SeqNumber,
        window: u16,
        flags: TcpFlags,
        options: TcpOptions,
        payload: &[u8],
    ) -> Vec<u8> {
        let reply = TcpFrame {
            eth: EthernetRepr {
                src_addr: to.eth.dst_addr,
                dst_addr: to.eth.src_addr,
                ethertype: to.eth.ethertype,
            },
            ip: relay_wire::Ipv4Repr {
                src_addr: to.ip.dst_addr,
                dst_addr: to.ip.src_addr,
                protocol: to.ip.protocol,
                payload_len: 0,
                hop_limit: 64,
                ident: 0,
                dont_fragment: true,
            },
            tcp: TcpRepr {
                src_port: to.tcp.dst_port,
                dst_port: to.tcp.src_port,
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
}
