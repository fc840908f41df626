//! The connection: one TCP control block and its state machine.

use core::fmt;
use core::time::Duration;

use relay_wire::{SeqNumber, TcpFlags, TcpOptions, TcpRepr, TcpTimestamp};

use crate::cc::Congestion;
use crate::config::{Config, ReleaseMode};
use crate::error::Error;
use crate::isn::IsnSecret;
use crate::ranges::{MAX_OOO_RANGES, MAX_SACK_RANGES, RangeSet};
use crate::ring::Ring;
use crate::rtt::RttEstimator;
use crate::time::Instant;
use crate::tuple::FourTuple;

/// RFC 9293 (3.3.2) connection states. LISTEN belongs to the
/// [`Listener`](crate::Listener), not to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// No connection (never opened, reset, timed out or fully closed).
    Closed,
    /// Active open: our SYN is out, waiting for the SYN-ACK.
    SynSent,
    /// Passive (or simultaneous) open: SYN received, our SYN-ACK is out.
    SynReceived,
    /// Data flows both ways.
    Established,
    /// We closed (FIN sent), the peer has not acknowledged it yet.
    FinWait1,
    /// Our FIN is acknowledged; waiting for the peer's FIN.
    FinWait2,
    /// The peer closed; we may still send.
    CloseWait,
    /// Both closed at once; waiting for the ACK of our FIN.
    Closing,
    /// The peer closed first, then we did; waiting for the ACK of our FIN.
    LastAck,
    /// Both FINs acknowledged; lingering 2 MSL for stray segments.
    TimeWait,
}

impl State {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            State::Closed => 0,
            State::SynSent => 1,
            State::SynReceived => 2,
            State::Established => 3,
            State::FinWait1 => 4,
            State::FinWait2 => 5,
            State::CloseWait => 6,
            State::Closing => 7,
            State::LastAck => 8,
            State::TimeWait => 9,
        }
    }

    pub(crate) fn from_u8(v: u8) -> Option<State> {
        Some(match v {
            0 => State::Closed,
            1 => State::SynSent,
            2 => State::SynReceived,
            3 => State::Established,
            4 => State::FinWait1,
            5 => State::FinWait2,
            6 => State::CloseWait,
            7 => State::Closing,
            8 => State::LastAck,
            9 => State::TimeWait,
            _ => return None,
        })
    }

    /// Whether the handshake is complete and the connection not yet closed.
    pub fn is_synchronized(self) -> bool {
        !matches!(self, State::Closed | State::SynSent | State::SynReceived)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            State::Closed => "CLOSED",
            State::SynSent => "SYN-SENT",
            State::SynReceived => "SYN-RECEIVED",
            State::Established => "ESTABLISHED",
            State::FinWait1 => "FIN-WAIT-1",
            State::FinWait2 => "FIN-WAIT-2",
            State::CloseWait => "CLOSE-WAIT",
            State::Closing => "CLOSING",
            State::LastAck => "LAST-ACK",
            State::TimeWait => "TIME-WAIT",
        };
        f.write_str(s)
    }
}

/// What happened to a connection, for the application. Each is reported
/// once per occurrence by [`Connection::poll_event`], in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// The handshake completed.
    Connected,
    /// New in-order bytes were delivered: read them.
    Readable,
    /// `snd_una` advanced: send buffer space was freed (and the send side
    /// state changed, worth a checkpoint delta).
    Acked,
    /// The peer's FIN was delivered after all its data.
    PeerClosed,
    /// The peer reset the connection.
    Reset,
    /// Retransmissions or keepalives went unanswered; the connection is closed.
    TimedOut,
    /// The connection reached CLOSED; it may be dropped.
    Closed,
}

const EVENT_ORDER: [Event; 7] = [
    Event::Connected,
    Event::Readable,
    Event::Acked,
    Event::PeerClosed,
    Event::Reset,
    Event::TimedOut,
    Event::Closed,
];

fn event_bit(e: Event) -> u8 {
    match e {
        Event::Connected => 1,
        Event::Readable => 2,
        Event::Acked => 4,
        Event::PeerClosed => 8,
        Event::Reset => 16,
        Event::TimedOut => 32,
        Event::Closed => 64,
    }
}

/// Counters of one connection: what came in, what went out, and every
/// segment answered or dropped by a rule. Plain data for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Segments handed to `handle_segment`.
    pub segments_in: u64,
    /// Segments returned by `poll_transmit`.
    pub segments_out: u64,
    /// New in-order payload bytes delivered.
    pub bytes_in: u64,
    /// Payload bytes sent, retransmissions included.
    pub bytes_out: u64,
    /// Segments sent again (fast retransmit, recovery, timeout, after import).
    pub retransmits: u64,
    /// Retransmission timeouts that fired.
    pub timeouts: u64,
    /// Entries into fast recovery.
    pub recoveries: u64,
    /// Peer: segments outside the receive window (answered with an ACK).
    pub unacceptable: u64,
    /// Peer: segments dropped by PAWS (RFC 7323 (5)).
    pub paws_drops: u64,
    /// Peer: ACKs for data we never sent (RFC 5961 (5)).
    pub acks_of_unsent: u64,
    /// Peer: ACKs too old to be plausible (RFC 5961 (5)).
    pub acks_too_old: u64,
    /// Challenge ACKs sent (RFC 5961).
    pub challenge_acks: u64,
    /// Peer: RSTs received, valid or not.
    pub rst_in: u64,
    /// Peer: SACK blocks ignored as out of range or malformed.
    pub sack_blocks_invalid: u64,
    /// Peer: window updates that moved the right edge back (RFC 9293 (3.8.6.2.2)).
    pub window_shrinks_seen: u64,
    /// Out-of-order segments dropped because the reassembly bound was hit.
    pub ooo_dropped: u64,
    /// Segments with our or the peer's port wrong for this connection.
    pub misdirected: u64,
    /// Zero-window probes sent.
    pub window_probes: u64,
    /// Keepalive probes sent.
    pub keepalives: u64,
}

/// Loss recovery phase of the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// No loss being repaired.
    Open,
    /// RFC 6675 / RFC 6582 fast recovery until `recovery_point` is acked.
    Fast,
    /// After a retransmission timeout (or an import): resending from
    /// `snd_una` (go-back-N, skipping SACKed ranges) until `recovery_point`.
    Loss,
}

/// RFC 6675 DupThresh.
const DUPTHRESH: usize = 3;
/// RFC 9293 (3.7.1): MSS assumed when the peer sends none.
const DEFAULT_PEER_MSS: u16 = 536;
/// Smallest MSS we accept from a peer (a hostile MSS of 1 would make us
/// send one-byte segments). Linux clamps to 48 + options.
const MIN_PEER_MSS: u16 = 88;

fn span(a: SeqNumber, b: SeqNumber) -> usize {
    usize::try_from((b - a).max(0)).unwrap_or(0)
}

/// One TCP connection, sans-IO.
///
/// # Calling order
///
/// The engine never blocks, reads a clock or touches a socket. The caller
/// owns the loop and, for each connection:
///
/// 1. hands in every segment of this 4-tuple with
///    [`handle_segment(now, &repr)`](Self::handle_segment);
/// 2. calls [`handle_timeout(now)`](Self::handle_timeout) once `now` has
///    reached [`poll_timeout()`](Self::poll_timeout);
/// 3. moves bytes with [`send`](Self::send), [`recv`](Self::recv) /
///    [`readable`](Self::readable) + [`consume`](Self::consume), and
///    [`release_to`](Self::release_to) (the release point);
/// 4. after any of the above, drains
///    [`poll_transmit(now, &mut buf)`](Self::poll_transmit) until it returns
///    `None`, emitting each segment to the peer;
/// 5. drains [`poll_event()`](Self::poll_event);
/// 6. re-reads [`poll_timeout()`](Self::poll_timeout) to arm its timer.
///
/// Received in-order bytes are delivered at once, but the cumulative ACK
/// sent never passes the *release point*; bytes beyond it are SACKed. The
/// advertised window's right edge is `min(read point, release point) +
/// recv_buffer` and never moves back.
///
/// Sequence variables follow RFC 9293 (3.3.1); `snd_max` is the highest
/// sequence number sent (`snd_nxt` moves back on a timeout), `rcv_rel` is
/// the release point.
pub struct Connection {
    pub(crate) cfg: Config,
    pub(crate) tuple: FourTuple,
    pub(crate) state: State,

    // Send sequence space. Invariant: snd_una <= snd_nxt <= snd_max.
    pub(crate) iss: SeqNumber,
    pub(crate) snd_una: SeqNumber,
    pub(crate) snd_nxt: SeqNumber,
    pub(crate) snd_max: SeqNumber,
    /// Peer's window in bytes (scaled), relative to `snd_wl2`.
    pub(crate) snd_wnd: u32,
    pub(crate) snd_wl1: SeqNumber,
    pub(crate) snd_wl2: SeqNumber,
    pub(crate) max_snd_wnd: u32,
    /// Bytes from `snd_una` (after the SYN) that the application queued.
    pub(crate) tx: Ring,
    /// Sequence number of our FIN once the application closed: the end of
    /// the bytes it may queue. After an import, the application re-supplies
    /// bytes up to here before the FIN goes out again.
    pub(crate) snd_fin: Option<SeqNumber>,
    /// Our SYN is not acknowledged yet (it occupies `snd_una`).
    syn_unacked: bool,
    /// Made by `import`: the exporter may have sent past `snd_max`.
    pub(crate) imported: bool,

    // Receive sequence space. Invariant: rcv_rel <= rcv_nxt <= rcv_adv
    // (rcv_nxt may pass rcv_adv only by a FIN).
    pub(crate) irs: SeqNumber,
    /// Next in-order sequence number expected; all before it is delivered.
    pub(crate) rcv_nxt: SeqNumber,
    /// Release point: the cumulative ACK we send. `rcv_rel <= rcv_nxt`.
    pub(crate) rcv_rel: SeqNumber,
    /// Right edge of the window advertised so far; never moves back.
    pub(crate) rcv_adv: SeqNumber,
    /// Sequence number of the first byte in `rx` (the read point).
    pub(crate) rx_read: SeqNumber,
    pub(crate) rx: Ring,
    pub(crate) ooo: RangeSet,
    ooo_last: Option<(SeqNumber, SeqNumber)>,
    /// Sequence number of the peer's FIN, once seen (maybe out of order).
    pub(crate) rcv_fin: Option<SeqNumber>,

    // Negotiated options.
    pub(crate) snd_ws: u8,
    pub(crate) rcv_ws: u8,
    /// Largest payload we send with a bare header (peer MSS, capped by ours).
    pub(crate) smss: u16,
    pub(crate) ws_ok: bool,
    pub(crate) sack_ok: bool,
    pub(crate) ts_ok: bool,
    pub(crate) ts_offset: u32,
    pub(crate) ts_recent: u32,
    pub(crate) ts_last: u32,
    last_ack_sent: SeqNumber,
    /// Sequence number and TSval of the first segment that arrived in
    /// order past `last_ack_sent` since the last ACK (R3 leaves it out):
    /// `ts_recent` takes its TSval once an ACK covers it. Without this, a
    /// release point that lags `rcv_nxt` for long freezes `ts_recent`, and
    /// the peer's RTT samples (hence its RTO) grow without bound.
    ts_held: Option<(SeqNumber, u32)>,

    // Reliability and congestion.
    pub(crate) rtt: RttEstimator,
    timed: Option<(SeqNumber, Instant)>,
    pub(crate) cc: Congestion,
    pub(crate) sacked: RangeSet,
    pub(crate) recovery: Recovery,
    pub(crate) recovery_point: SeqNumber,
    pub(crate) high_rxt: SeqNumber,
    /// The first retransmission of a fast recovery is still to be sent.
    rxt_first: bool,
    dupacks: u32,

    // Timers.
    rto_at: Option<Instant>,
    delack_at: Option<Instant>,
    persist_at: Option<Instant>,
    persist_backoff: u32,
    keepalive_at: Option<Instant>,
    keepalive_sent: u32,
    keepalive_probe_at: Instant,
    timewait_at: Option<Instant>,
    retries: u32,

    // Output requests.
    ack_now: bool,
    segs_unacked: u32,
    probe_out: bool,
    rst_out: Option<TcpRepr<'static>>,
    challenge_window: Instant,
    challenge_count: u32,

    events: u8,
    /// The latest instant handed in, for the application calls that take none.
    last_now: Instant,
    /// The last time a segment arrived (keepalive idle time).
    last_recv: Instant,
    pub(crate) stats: Stats,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("tuple", &self.tuple)
            .field("state", &self.state)
            .field("snd_una", &self.snd_una)
            .field("snd_nxt", &self.snd_nxt)
            .field("snd_max", &self.snd_max)
            .field("snd_wnd", &self.snd_wnd)
            .field("rcv_nxt", &self.rcv_nxt)
            .field("rcv_rel", &self.rcv_rel)
            .field("rcv_adv", &self.rcv_adv)
            .field("cwnd", &self.cc.cwnd)
            .field("recovery", &self.recovery)
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub(crate) fn blank(
        cfg: Config,
        tuple: FourTuple,
        iss: SeqNumber,
        ts_offset: u32,
        now: Instant,
    ) -> Connection {
        let rcv_ws = cfg.window_shift();
        let iw = cfg.initial_window.saturating_mul(u32::from(cfg.mss));
        let rx_cap = cfg.recv_buffer + (1usize << rcv_ws);
        Connection {
            tuple,
            state: State::Closed,
            iss,
            snd_una: iss,
            snd_nxt: iss,
            snd_max: iss,
            snd_wnd: 0,
            snd_wl1: SeqNumber(0),
            snd_wl2: iss,
            max_snd_wnd: 0,
            tx: Ring::new(cfg.send_buffer),
            snd_fin: None,
            syn_unacked: true,
            imported: false,
            irs: SeqNumber(0),
            rcv_nxt: SeqNumber(0),
            rcv_rel: SeqNumber(0),
            rcv_adv: SeqNumber(0),
            rx_read: SeqNumber(0),
            rx: Ring::new(rx_cap),
            ooo: RangeSet::new(MAX_OOO_RANGES),
            ooo_last: None,
            rcv_fin: None,
            snd_ws: 0,
            rcv_ws,
            smss: cfg.mss,
            ws_ok: false,
            sack_ok: false,
            ts_ok: false,
            ts_offset,
            ts_recent: 0,
            ts_last: 0,
            last_ack_sent: SeqNumber(0),
            ts_held: None,
            rtt: RttEstimator::new(cfg.rto_initial, cfg.rto_min, cfg.rto_max),
            timed: None,
            cc: Congestion::new(cfg.congestion, iw),
            sacked: RangeSet::new(MAX_SACK_RANGES),
            recovery: Recovery::Open,
            recovery_point: iss,
            high_rxt: iss,
            rxt_first: false,
            dupacks: 0,
            rto_at: None,
            delack_at: None,
            persist_at: None,
            persist_backoff: 0,
            keepalive_at: None,
            keepalive_sent: 0,
            keepalive_probe_at: now,
            timewait_at: None,
            retries: 0,
            ack_now: false,
            segs_unacked: 0,
            probe_out: false,
            rst_out: None,
            challenge_window: now,
            challenge_count: 0,
            events: 0,
            last_now: now,
            last_recv: now,
            stats: Stats::default(),
            cfg,
        }
    }

    /// Active open: a connection in SYN-SENT whose SYN the next
    /// [`poll_transmit`](Self::poll_transmit) returns. The ISN and the
    /// timestamp offset come from `secret` (RFC 6528).
    pub fn connect(
        cfg: Config,
        tuple: FourTuple,
        secret: &IsnSecret,
        now: Instant,
    ) -> Result<Connection, Error> {
        cfg.validate()?;
        let iss = secret.isn(&tuple, now);
        let mut c = Connection::blank(cfg, tuple, iss, secret.ts_offset(&tuple), now);
        c.state = State::SynSent;
        tracing::debug!(?tuple, "connect");
        Ok(c)
    }

    /// Passive open from a SYN received on a listening port: a connection in
    /// SYN-RECEIVED whose SYN-ACK the next `poll_transmit` returns. Usually
    /// called by the [`Listener`](crate::Listener). Data on the SYN is not
    /// accepted (the peer sends it again).
    pub fn accept(
        cfg: Config,
        tuple: FourTuple,
        syn: &TcpRepr<'_>,
        secret: &IsnSecret,
        now: Instant,
    ) -> Result<Connection, Error> {
        cfg.validate()?;
        if !syn.flags.syn()
            || syn
                .flags
                .intersects(TcpFlags::ACK | TcpFlags::RST | TcpFlags::FIN)
        {
            return Err(Error::NotASyn);
        }
        let iss = secret.isn(&tuple, now);
        let mut c = Connection::blank(cfg, tuple, iss, secret.ts_offset(&tuple), now);
        c.state = State::SynReceived;
        c.on_peer_syn(syn);
        c.snd_wnd = u32::from(syn.window_len);
        c.max_snd_wnd = c.snd_wnd;
        c.snd_wl1 = syn.seq_number;
        c.snd_wl2 = iss;
        tracing::debug!(?tuple, "accept");
        Ok(c)
    }

    /// Records the peer's SYN: IRS and the options negotiation.
    fn on_peer_syn(&mut self, syn: &TcpRepr<'_>) {
        self.irs = syn.seq_number;
        self.rcv_nxt = self.irs + 1;
        self.rcv_rel = self.rcv_nxt;
        self.rx_read = self.rcv_nxt;
        self.last_ack_sent = self.rcv_nxt;
        let o = &syn.options;
        if self.cfg.window_scaling && o.window_scale.is_some() {
            // RFC 7323 (2.3): a shift above 14 is used as 14.
            self.snd_ws = o.window_scale.unwrap_or(0).min(14);
            self.rcv_ws = self.cfg.window_shift();
            self.ws_ok = true;
        } else {
            self.ws_ok = false;
            self.snd_ws = 0;
            self.rcv_ws = 0;
        }
        self.sack_ok = self.cfg.sack && o.sack_permitted;
        self.ts_ok = self.cfg.timestamps && o.timestamp.is_some();
        if let Some(ts) = o.timestamp {
            self.ts_recent = ts.tsval;
        }
        let peer_mss = o.mss.unwrap_or(DEFAULT_PEER_MSS).max(MIN_PEER_MSS);
        self.smss = peer_mss.min(self.cfg.mss);
        self.rcv_adv = self.rcv_nxt + self.cfg.recv_buffer.min(65535);
        self.rx = Ring::new(self.cfg.recv_buffer + (1usize << self.rcv_ws));
    }

    // ------------------------------------------------------------------
    // Accessors.

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The 4-tuple this connection was made for.
    pub fn tuple(&self) -> FourTuple {
        self.tuple
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Oldest unacknowledged sequence number: the application's send buffer
    /// starts here.
    pub fn snd_una(&self) -> SeqNumber {
        self.snd_una
    }

    /// Highest sequence number sent so far, plus one.
    pub fn snd_max(&self) -> SeqNumber {
        self.snd_max
    }

    /// Our initial sequence number.
    pub fn iss(&self) -> SeqNumber {
        self.iss
    }

    /// The peer's initial sequence number (valid once its SYN was seen).
    pub fn irs(&self) -> SeqNumber {
        self.irs
    }

    /// End of the delivered in-order bytes (after the FIN, once delivered).
    pub fn rcv_nxt(&self) -> SeqNumber {
        self.rcv_nxt
    }

    /// The release point: the highest cumulative ACK we may send.
    pub fn release_point(&self) -> SeqNumber {
        self.rcv_rel
    }

    /// The read point: sequence number of the first byte not yet read.
    pub fn read_point(&self) -> SeqNumber {
        self.rx_read
    }

    /// Right edge of the window advertised to the peer so far.
    pub fn rcv_adv(&self) -> SeqNumber {
        self.rcv_adv
    }

    /// Congestion window in bytes.
    pub fn cwnd(&self) -> u32 {
        self.cc.cwnd
    }

    /// Smoothed RTT, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.rtt.srtt()
    }

    /// Payload size of a full segment with our usual options.
    pub fn effective_mss(&self) -> usize {
        usize::from(self.smss)
            .saturating_sub(if self.ts_ok { 12 } else { 0 })
            .max(1)
    }

    /// Bytes queued and not yet acknowledged.
    pub fn send_queue(&self) -> usize {
        self.tx.len()
    }

    /// Free space in the send buffer.
    pub fn send_capacity(&self) -> usize {
        match (self.can_send(), self.snd_fin) {
            (false, _) => 0,
            (true, None) => self.tx.free(),
            (true, Some(fin)) => self.tx.free().min(span(self.data_end(), fin)),
        }
    }

    fn can_send(&self) -> bool {
        match self.snd_fin {
            None => matches!(
                self.state,
                State::SynSent | State::SynReceived | State::Established | State::CloseWait
            ),
            // After an import the bytes up to the FIN are handed back.
            Some(fin) => self.state != State::Closed && self.data_end() < fin,
        }
    }

    // ------------------------------------------------------------------
    // Application side.

    /// Queues bytes to send; returns how many fit in the send buffer.
    /// Nothing is taken after [`close`](Self::close) or once closed.
    pub fn send(&mut self, data: &[u8]) -> usize {
        if !self.can_send() {
            return 0;
        }
        let data = match self.snd_fin {
            Some(fin) => &data[..data.len().min(span(self.data_end(), fin))],
            None => data,
        };
        self.tx.push(data)
    }

    /// Copies delivered bytes into `out`, advancing the read point.
    pub fn recv(&mut self, out: &mut [u8]) -> usize {
        let n = self.rx.read_at(0, out);
        self.consume(n);
        n
    }

    /// Delivered, unread bytes, without copying (two slices, in order).
    pub fn readable(&self) -> (&[u8], &[u8]) {
        self.rx.as_slices()
    }

    /// Marks `n` delivered bytes as read (after [`readable`](Self::readable)).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.rx.len());
        if n == 0 {
            return;
        }
        self.rx.consume(n);
        self.rx_read += n;
        self.maybe_window_update();
    }

    /// Moves the release point to `upto`, which must lie between the
    /// current release point and [`rcv_nxt`](Self::rcv_nxt) (the FIN counts
    /// one, as in sequence space: releasing past it acknowledges it).
    pub fn release_to(&mut self, upto: SeqNumber) -> Result<(), Error> {
        if upto < self.rcv_rel || upto > self.rcv_nxt || !self.state_has_receive_space() {
            return Err(Error::ReleaseOutOfRange {
                requested: upto,
                current: self.rcv_rel,
                delivered: self.rcv_nxt,
            });
        }
        if upto == self.rcv_rel {
            return Ok(());
        }
        let before = self.rcv_rel;
        self.rcv_rel = upto;
        let mss2 = 2 * usize::from(self.cfg.mss);
        let fin_released = self.rcv_fin.is_some_and(|f| upto > f);
        if span(self.last_ack_sent, upto) >= mss2 || fin_released || self.cfg.delayed_ack.is_none()
        {
            self.ack_now = true;
        } else if self.delack_at.is_none() && span(before, upto) > 0 {
            self.arm_delack_from_release();
        }
        self.maybe_window_update();
        Ok(())
    }

    /// Moves the release point `n` sequence numbers forward.
    pub fn release(&mut self, n: usize) -> Result<(), Error> {
        self.release_to(self.rcv_rel + n)
    }

    fn state_has_receive_space(&self) -> bool {
        self.state != State::Closed && self.state != State::SynSent
    }

    fn arm_delack_from_release(&mut self) {
        match self.cfg.delayed_ack {
            // The application calls carry no time: the deadline counts from
            // the last instant the engine was given.
            Some(d) => self.delack_at = Some(self.last_now + d),
            None => self.ack_now = true,
        }
    }

    /// Closes our sending side: a FIN follows the queued bytes (RFC 9293
    /// (3.10.4)). In SYN-SENT the connection just closes; in SYN-RECEIVED
    /// the FIN follows the handshake.
    pub fn close(&mut self) {
        match self.state {
            State::SynSent => self.enter_closed(),
            State::SynReceived => {
                // RFC 9293 (3.10.4): the FIN goes out once established; the
                // state moves to FIN-WAIT-1 then.
                self.snd_fin = Some(self.data_end());
            }
            State::Established => {
                self.snd_fin = Some(self.data_end());
                self.state = State::FinWait1;
            }
            State::CloseWait => {
                self.snd_fin = Some(self.data_end());
                self.state = State::LastAck;
            }
            _ => {}
        }
    }

    /// Aborts: sends a RST (when synchronized) and closes (RFC 9293 (3.10.5)).
    pub fn abort(&mut self) {
        if matches!(
            self.state,
            State::SynReceived
                | State::Established
                | State::FinWait1
                | State::FinWait2
                | State::CloseWait
        ) {
            self.rst_out = Some(TcpRepr {
                src_port: self.tuple.local.port(),
                dst_port: self.tuple.remote.port(),
                seq_number: self.snd_max,
                ack_number: SeqNumber(0),
                flags: TcpFlags::RST,
                window_len: 0,
                options: TcpOptions::default(),
                payload: &[],
            });
        }
        self.enter_closed();
    }

    /// Asks for an immediate ACK (with SACK information): after an import,
    /// this nudges the peer to retransmit at once (DESIGN.md section 5).
    pub fn nudge(&mut self) {
        if self.state.is_synchronized() {
            self.ack_now = true;
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        for e in EVENT_ORDER {
            let bit = event_bit(e);
            if self.events & bit != 0 {
                self.events &= !bit;
                return Some(e);
            }
        }
        None
    }

    fn event(&mut self, e: Event) {
        self.events |= event_bit(e);
    }

    fn enter_closed(&mut self) {
        if self.state != State::Closed {
            tracing::debug!(tuple = ?self.tuple, from = %self.state, "closed");
            self.state = State::Closed;
            self.event(Event::Closed);
        }
        self.rto_at = None;
        self.delack_at = None;
        self.persist_at = None;
        self.keepalive_at = None;
        self.timewait_at = None;
        self.ack_now = false;
        self.probe_out = false;
    }

    pub(crate) fn mark_syn_acked(&mut self) {
        self.syn_unacked = false;
    }

    pub(crate) fn set_last_ack_sent(&mut self, ack: SeqNumber) {
        self.last_ack_sent = ack;
    }

    pub(crate) fn arm_rto(&mut self, now: Instant) {
        self.rto_at = Some(now + self.rtt.rto());
    }

    pub(crate) fn arm_time_wait(&mut self, now: Instant) {
        self.timewait_at = Some(now + self.cfg.time_wait);
    }

    fn enter_time_wait(&mut self, now: Instant) {
        self.state = State::TimeWait;
        self.rto_at = None;
        self.persist_at = None;
        self.keepalive_at = None;
        self.timewait_at = Some(now + self.cfg.time_wait);
    }
}

// ----------------------------------------------------------------------
// Input: RFC 9293 (3.10.7), with RFC 5961, RFC 7323, RFC 2018.

impl Connection {
    /// Processes one segment of this connection's 4-tuple (RFC 9293
    /// (3.10.7) "SEGMENT ARRIVES"). Never fails: a bad segment is answered
    /// (ACK, challenge ACK, RST) or dropped, and counted in [`Stats`].
    pub fn handle_segment(&mut self, now: Instant, seg: &TcpRepr<'_>) {
        self.last_now = self.last_now.max(now);
        self.stats.segments_in += 1;
        if seg.src_port != self.tuple.remote.port() || seg.dst_port != self.tuple.local.port() {
            self.stats.misdirected += 1;
            return;
        }
        match self.state {
            State::Closed => {
                self.rst_out = crate::tuple::reset_reply(seg);
                return;
            }
            State::SynSent => {
                self.on_segment_syn_sent(now, seg);
                return;
            }
            _ => {}
        }
        if seg.flags.rst() {
            self.stats.rst_in += 1;
        }

        // RFC 7323 (5.3) R1: PAWS. RSTs are exempt (RFC 7323 (5.2)).
        if self.ts_ok
            && !seg.flags.rst()
            && let Some(ts) = seg.options.timestamp
            && (ts.tsval.wrapping_sub(self.ts_recent) as i32) < 0
        {
            self.stats.paws_drops += 1;
            self.ack_now = true;
            return;
        }

        if self.state == State::SynReceived
            && seg.flags.syn()
            && !seg.flags.intersects(TcpFlags::ACK | TcpFlags::RST)
            && seg.seq_number == self.irs
        {
            // Our SYN-ACK was lost: the peer sent its SYN again. Answer with
            // the SYN-ACK (as Linux does), not with a bare ACK.
            self.snd_nxt = self.iss;
            return;
        }

        // RFC 9293 (3.10.7.4) first: sequence number acceptability.
        if !self.acceptable(seg) {
            if seg.flags.rst() {
                // The peer knows our RCV.NXT only from the ACKs we sent,
                // which stop at the release point: a peer that has closed
                // answers our segments with a RST carrying exactly that
                // (RFC 9293 (3.10.7.1)). Judged from rcv_nxt, which runs
                // ahead over unreleased bytes, it would be dropped and the
                // flow would wait for a peer that is gone.
                if seg.seq_number == self.rcv_rel || seg.seq_number == self.last_ack_sent {
                    self.on_rst(now, seg);
                }
                // RFC 5961 (3.2): any other out-of-window RST is dropped
                // silently.
                return;
            }
            self.stats.unacceptable += 1;
            self.ack_now = true;
            if self.state == State::TimeWait && seg.flags.fin() {
                // RFC 9293 (3.10.7.4) eighth: a retransmitted FIN restarts
                // the 2 MSL timeout.
                self.timewait_at = Some(now + self.cfg.time_wait);
            }
            return;
        }
        self.last_recv = now;
        self.keepalive_sent = 0;
        if self.cfg.keepalive.is_some() && self.state.is_synchronized() {
            self.schedule_keepalive();
        }

        // Second: RST (RFC 5961 (3.2)).
        if seg.flags.rst() {
            self.on_rst(now, seg);
            return;
        }

        // RFC 7323 (5.3) R3: remember the timestamp to echo.
        if self.ts_ok
            && let Some(ts) = seg.options.timestamp
        {
            if seg.seq_number <= self.last_ack_sent {
                self.ts_recent = ts.tsval;
            } else if seg.seq_number <= self.rcv_nxt && self.ts_held.is_none() {
                // In order, but past the ACK sent last (the release point
                // lags what arrived): echoed once an ACK covers it. The
                // segments it then stands for were sent after it, so the
                // peer's RTT samples stay on the safe (long) side.
                self.ts_held = Some((seg.seq_number, ts.tsval));
            }
        }

        // Fourth: SYN (RFC 5961 (4)).
        if seg.flags.syn() {
            self.challenge_ack(now);
            return;
        }

        // Fifth: ACK.
        if !seg.flags.ack() {
            return;
        }
        if self.state == State::SynReceived {
            if seg.ack_number > self.snd_una && seg.ack_number <= self.snd_max {
                self.state = State::Established;
                if self.snd_fin.is_some() {
                    self.state = State::FinWait1;
                }
                self.event(Event::Connected);
                tracing::debug!(tuple = ?self.tuple, "established (passive)");
                self.schedule_keepalive();
                self.snd_wl1 = seg.seq_number;
                self.snd_wl2 = seg.ack_number;
                self.snd_wnd = u32::from(seg.window_len) << self.snd_ws;
                self.max_snd_wnd = self.snd_wnd;
            } else {
                self.rst_out = crate::tuple::reset_reply(seg);
                return;
            }
        }
        // RFC 5961 (5.2): ACK acceptability.
        if seg.ack_number > self.snd_max {
            if self.imported && seg.ack_number <= self.data_end() {
                // The exporter sent these bytes after its last checkpoint;
                // the application handed them back identical, so the ACK
                // is for data this connection did send.
                self.snd_max = seg.ack_number;
                self.recovery_point = self.recovery_point.max(self.snd_max);
            } else {
                self.stats.acks_of_unsent += 1;
                self.challenge_ack(now);
                return;
            }
        }
        if seg.ack_number < self.snd_una - self.max_snd_wnd as usize {
            self.stats.acks_too_old += 1;
            self.ack_now = true;
            return;
        }
        self.process_ack(now, seg);
        if self.state == State::Closed {
            return;
        }

        // Seventh: segment text.
        let mut fin_ok = seg.flags.fin();
        if !seg.payload.is_empty() {
            if matches!(
                self.state,
                State::Established | State::FinWait1 | State::FinWait2
            ) {
                fin_ok &= self.process_data(now, seg.seq_number, seg.payload);
            } else {
                // The peer already closed: data past its FIN is a violation.
                fin_ok = false;
            }
        }

        // Eighth: FIN.
        if fin_ok {
            let fin_seq = seg.seq_number + seg.payload.len();
            self.on_fin(now, fin_seq);
        }
    }

    /// RFC 9293 (3.10.7.4): the four acceptability cases, with the window
    /// being what we advertised. Like Linux, a segment starting exactly at
    /// RCV.NXT is acceptable even with a zero window (its data is then
    /// trimmed, its FIN or ACK still processed).
    fn acceptable(&self, seg: &TcpRepr<'_>) -> bool {
        let wnd = span(self.rcv_nxt, self.rcv_adv);
        let seq = seg.seq_number;
        let len = seg.segment_len();
        if seq == self.rcv_nxt {
            return true;
        }
        let in_window = |s: SeqNumber| s >= self.rcv_nxt && s < self.rcv_nxt + wnd;
        match (len, wnd) {
            (0, 0) => false,
            (0, _) => in_window(seq),
            (_, 0) => false,
            (_, _) => in_window(seq) || in_window(seq + (len - 1)),
        }
    }

    fn on_rst(&mut self, _now: Instant, seg: &TcpRepr<'_>) {
        // RFC 5961 (3.2): exactly RCV.NXT resets. The peer may also answer a
        // challenge ACK with our ACK number, which is the release point.
        if seg.seq_number == self.rcv_nxt
            || seg.seq_number == self.rcv_rel
            || seg.seq_number == self.last_ack_sent
        {
            tracing::debug!(tuple = ?self.tuple, state = %self.state, "reset by peer");
            self.event(Event::Reset);
            self.enter_closed();
        } else {
            self.challenge_ack(self.last_now);
        }
    }

    /// RFC 5961 (7): challenge ACKs, rate limited per connection.
    fn challenge_ack(&mut self, now: Instant) {
        if now.saturating_duration_since(self.challenge_window) >= Duration::from_secs(1) {
            self.challenge_window = now;
            self.challenge_count = 0;
        }
        if self.challenge_count < self.cfg.challenge_ack_limit {
            self.challenge_count += 1;
            self.stats.challenge_acks += 1;
            self.ack_now = true;
        }
    }

    fn on_segment_syn_sent(&mut self, now: Instant, seg: &TcpRepr<'_>) {
        let f = seg.flags;
        // RFC 9293 (3.10.7.3) first: the ACK.
        if f.ack() && (seg.ack_number <= self.iss || seg.ack_number > self.snd_max) {
            if !f.rst() {
                self.rst_out = crate::tuple::reset_reply(seg);
            }
            return;
        }
        // Second: RST, only with an acceptable ACK (RFC 5961 (3.2) leaves
        // SYN-SENT to RFC 793).
        if f.rst() {
            self.stats.rst_in += 1;
            if f.ack() {
                self.event(Event::Reset);
                self.enter_closed();
            }
            return;
        }
        if !f.syn() {
            return;
        }
        self.on_peer_syn(seg);
        if f.ack() {
            self.snd_una = seg.ack_number;
            self.syn_unacked = false;
            self.snd_nxt = self.snd_nxt.max(self.snd_una);
            // RFC 7323 (2.2): the window of a SYN is never scaled.
            self.snd_wnd = u32::from(seg.window_len);
            self.max_snd_wnd = self.snd_wnd;
            self.snd_wl1 = seg.seq_number;
            self.snd_wl2 = seg.ack_number;
            self.rto_at = None;
            self.retries = 0;
            self.take_rtt_sample(now, seg);
            self.state = if self.snd_fin.is_some() {
                State::FinWait1
            } else {
                State::Established
            };
            self.event(Event::Connected);
            self.ack_now = true;
            tracing::debug!(tuple = ?self.tuple, "established (active)");
            self.last_recv = now;
            self.schedule_keepalive();
        } else {
            // Simultaneous open (RFC 9293 (3.5)): answer with a SYN-ACK.
            self.state = State::SynReceived;
            self.snd_nxt = self.iss;
            self.snd_wnd = u32::from(seg.window_len);
            self.max_snd_wnd = self.snd_wnd;
            self.snd_wl1 = seg.seq_number;
            self.snd_wl2 = self.iss;
        }
    }

    fn ts_now(&self, now: Instant) -> u32 {
        (now.millis() as u32).wrapping_add(self.ts_offset)
    }

    /// The timestamp clock at the latest instant handed in: no TSval sent
    /// so far is above it.
    pub(crate) fn ts_clock_now(&self) -> u32 {
        self.ts_now(self.last_now)
    }

    fn take_rtt_sample(&mut self, now: Instant, seg: &TcpRepr<'_>) {
        if self.ts_ok
            && let Some(ts) = seg.options.timestamp
            && ts.tsecr != 0
        {
            let ms = self.ts_now(now).wrapping_sub(ts.tsecr);
            // RFC 7323 (4.1): with timestamps, retransmissions still give
            // valid samples; a negative or absurd echo is ignored.
            if ms < (1 << 30) {
                self.rtt.sample(Duration::from_millis(u64::from(ms)));
                self.timed = None;
                return;
            }
        }
        if let Some((end, sent)) = self.timed
            && seg.ack_number >= end
        {
            // Karn: `timed` is cleared whenever we retransmit.
            self.rtt.sample(now.saturating_duration_since(sent));
            self.timed = None;
        }
    }

    pub(crate) fn data_end(&self) -> SeqNumber {
        self.snd_una + self.tx.len() + usize::from(self.syn_unacked)
    }

    /// Our FIN's sequence number, once all bytes before it are queued.
    fn fin_seq(&self) -> Option<SeqNumber> {
        self.snd_fin
            .filter(|&f| self.data_end() == f || self.snd_una > f)
    }

    /// RFC 9293 (3.10.7.4) fifth, ESTABLISHED and later, plus SACK (RFC
    /// 2018), loss detection (RFC 6675, RFC 6582), RTT (RFC 6298) and
    /// congestion control.
    fn process_ack(&mut self, now: Instant, seg: &TcpRepr<'_>) {
        let ack = seg.ack_number;
        let sacked_before = self.sacked.total();
        if self.sack_ok {
            self.take_sack_blocks(&seg.options, ack);
        }
        let new_sack = self.sacked.total() != sacked_before;
        let window = u32::from(seg.window_len) << self.snd_ws;
        let window_changed =
            seg.ack_number + window as usize != self.snd_wl2 + self.snd_wnd as usize;

        if ack > self.snd_una {
            let acked = span(self.snd_una, ack);
            let syn_acked = usize::from(self.syn_unacked);
            self.syn_unacked = false;
            let data_acked = acked.saturating_sub(syn_acked).min(self.tx.len());
            self.tx.consume(data_acked);
            self.snd_una = ack;
            self.sacked.remove_below(ack);
            if self.snd_nxt < ack {
                self.snd_nxt = ack;
            }
            if self.high_rxt < ack {
                self.high_rxt = ack;
            }
            self.take_rtt_sample(now, seg);
            self.retries = 0;
            self.persist_backoff = 0;
            self.rto_at = if self.snd_una == self.snd_max {
                None
            } else {
                Some(now + self.rtt.rto())
            };
            self.dupacks = 0;
            if acked > syn_acked {
                self.event(Event::Acked);
            }
            match self.recovery {
                Recovery::Fast => {
                    if ack >= self.recovery_point {
                        self.recovery = Recovery::Open;
                        self.cc.on_recovery_exit();
                    }
                }
                Recovery::Loss => {
                    self.cc
                        .on_ack(now, data_acked, self.smss.into(), self.rtt.srtt());
                    if ack >= self.recovery_point {
                        self.recovery = Recovery::Open;
                    }
                }
                Recovery::Open => {
                    self.cc
                        .on_ack(now, data_acked, self.smss.into(), self.rtt.srtt());
                    // Keep the mark near snd_una: sequence comparisons only
                    // hold within 2^31, and a long connection wraps.
                    self.recovery_point = self.recovery_point.max(self.snd_una);
                }
            }
        } else if ack == self.snd_una
            && seg.payload.is_empty()
            && !seg.flags.fin()
            && !window_changed
            && self.snd_max != self.snd_una
        {
            // RFC 5681 (2) duplicate ACK.
            self.dupacks = self.dupacks.saturating_add(1);
        }

        // RFC 9293 (3.10.7.4): window update, only from newer segments.
        if ack >= self.snd_una
            && (self.snd_wl1 < seg.seq_number
                || (self.snd_wl1 == seg.seq_number && self.snd_wl2 <= ack))
        {
            let old_edge = self.snd_wl2 + self.snd_wnd as usize;
            let new_edge = ack + window as usize;
            if new_edge < old_edge {
                self.stats.window_shrinks_seen += 1;
            }
            self.snd_wnd = window;
            self.snd_wl1 = seg.seq_number;
            self.snd_wl2 = ack;
            self.max_snd_wnd = self.max_snd_wnd.max(window);
            if window > 0 {
                self.persist_at = None;
                self.persist_backoff = 0;
            }
        }

        // Loss detection.
        if self.recovery == Recovery::Open && self.snd_una != self.snd_max {
            let enter = if self.sack_ok {
                (new_sack || self.dupacks > 0) && self.first_lost().is_some()
            } else {
                self.dupacks as usize >= DUPTHRESH
            };
            if enter && self.snd_una >= self.recovery_point {
                self.enter_recovery();
            }
        }

        // Our FIN acknowledged?
        if let Some(fin) = self.fin_seq()
            && self.snd_una > fin
        {
            match self.state {
                State::FinWait1 => self.state = State::FinWait2,
                State::Closing => self.enter_time_wait(now),
                State::LastAck => self.enter_closed(),
                _ => {}
            }
        }
    }

    fn take_sack_blocks(&mut self, options: &TcpOptions, ack: SeqNumber) {
        for (left, right) in options.sack_blocks.iter().flatten().copied() {
            // RFC 2018 (3): blocks below the cumulative ACK are D-SACKs
            // (RFC 2883) and not used; blocks past what we sent, or
            // inverted, are invalid.
            if right <= ack {
                continue;
            }
            if right <= left
                || right > self.snd_max
                || left < self.snd_una - self.max_snd_wnd as usize
            {
                self.stats.sack_blocks_invalid += 1;
                continue;
            }
            let left = left.max(ack).max(self.snd_una);
            // A full scoreboard just ignores the block.
            let _ = self.sacked.insert(left, right);
        }
    }

    /// The lost boundary of RFC 6675 `IsLost`, for the current mode.
    fn lost_below(&self) -> Option<SeqNumber> {
        if self.sack_ok {
            self.sacked.lost_below(usize::from(self.smss), DUPTHRESH)
        } else if self.recovery == Recovery::Fast {
            // NewReno (RFC 6582): the first unacknowledged segment is lost.
            Some(self.snd_una + usize::from(self.smss))
        } else {
            None
        }
    }

    /// First unSACKed sequence number at or after `from`.
    fn skip_sacked(&self, mut from: SeqNumber) -> SeqNumber {
        while let Some((_, e)) = self.sacked.containing(from) {
            from = e;
        }
        from
    }

    /// The first lost, not yet retransmitted byte, if any (RFC 6675 NextSeg
    /// rule 1).
    fn first_lost(&self) -> Option<SeqNumber> {
        let lost = self.lost_below()?;
        let s = self.skip_sacked(self.high_rxt.max(self.snd_una));
        (s < lost && s < self.snd_max).then_some(s)
    }

    fn enter_recovery(&mut self) {
        let flight = u32::try_from(self.pipe()).unwrap_or(u32::MAX);
        self.recovery = Recovery::Fast;
        self.recovery_point = self.snd_max;
        self.high_rxt = self.snd_una;
        self.rxt_first = true;
        self.cc.on_loss(flight, u32::from(self.smss));
        self.timed = None;
        self.stats.recoveries += 1;
        tracing::trace!(tuple = ?self.tuple, cwnd = self.cc.cwnd, "fast recovery");
    }

    /// RFC 6675 (4) `SetPipe`, in bytes.
    pub(crate) fn pipe(&self) -> usize {
        match self.recovery {
            Recovery::Open => span(self.snd_una, self.snd_max).saturating_sub(self.sacked.total()),
            Recovery::Loss => span(self.snd_una, self.snd_nxt)
                .saturating_sub(self.sacked.bytes_in(self.snd_una, self.snd_nxt)),
            Recovery::Fast => {
                let lost = self
                    .lost_below()
                    .unwrap_or(self.snd_una)
                    .max(self.snd_una)
                    .min(self.snd_max);
                let not_lost = span(lost, self.snd_max) - self.sacked.bytes_in(lost, self.snd_max);
                let rxt_end = self.high_rxt.min(self.snd_max);
                let retransmitted = span(self.snd_una, rxt_end)
                    .saturating_sub(self.sacked.bytes_in(self.snd_una, rxt_end));
                let pipe = not_lost + retransmitted;
                if self.sack_ok {
                    pipe
                } else {
                    pipe.saturating_sub(self.dupacks as usize * usize::from(self.smss))
                }
            }
        }
    }

    /// Segment text (RFC 9293 (3.10.7.4) seventh). Returns whether all of
    /// the payload was taken (so that a FIN behind it can be).
    fn process_data(&mut self, now: Instant, seq: SeqNumber, payload: &[u8]) -> bool {
        let mut seq = seq;
        let mut data = payload;
        if seq < self.rcv_nxt {
            let skip = span(seq, self.rcv_nxt);
            if skip >= data.len() {
                self.ack_now = true;
                return true;
            }
            data = &data[skip..];
            seq = self.rcv_nxt;
        }
        // Trim to the advertised window and to the buffer.
        let edge = self.rcv_adv.min(self.rx_read + self.rx.capacity());
        let room = span(seq, edge);
        let complete = data.len() <= room;
        if !complete {
            data = &data[..room];
        }
        if data.is_empty() {
            self.ack_now = true;
            return complete;
        }
        let end = seq + data.len();
        let offset = span(self.rx_read, seq);
        if seq == self.rcv_nxt {
            self.rx.write_at(offset, data);
            let before = self.rcv_nxt;
            self.rcv_nxt = end;
            let mut filled_hole = false;
            while let Some((_, e)) = self.ooo.pop_if_starts_by(self.rcv_nxt) {
                filled_hole = true;
                self.rcv_nxt = self.rcv_nxt.max(e);
            }
            let delivered = span(before, self.rcv_nxt);
            self.rx.commit(delivered);
            self.stats.bytes_in += delivered as u64;
            self.event(Event::Readable);
            if self.cfg.release == ReleaseMode::OnDelivery {
                self.rcv_rel = self.rcv_nxt;
            }
            self.ooo_last = Some((seq, end));
            self.check_pending_fin(now);
            if filled_hole || !self.ooo.is_empty() {
                // RFC 5681 (4.2): ACK at once when a gap is (partly) filled.
                self.ack_now = true;
            } else {
                self.segs_unacked += 1;
                if self.segs_unacked >= 2 || self.cfg.delayed_ack.is_none() {
                    self.ack_now = true;
                } else if self.delack_at.is_none() {
                    self.delack_at = self.cfg.delayed_ack.map(|d| now + d);
                }
            }
        } else {
            // Out of order: keep it if the reassembly bound allows.
            if self.ooo.covers(seq, end) || self.ooo.insert(seq, end) {
                self.rx.write_at(offset, data);
                self.ooo_last = Some((seq, end));
            } else {
                self.stats.ooo_dropped += 1;
            }
            // RFC 5681 (4.2): an immediate duplicate ACK.
            self.ack_now = true;
        }
        complete
    }

    fn on_fin(&mut self, now: Instant, fin_seq: SeqNumber) {
        if fin_seq > self.rcv_nxt {
            // Out of order: remember where it is.
            self.rcv_fin = Some(fin_seq);
            self.ack_now = true;
            return;
        }
        if fin_seq < self.rcv_nxt {
            // A retransmitted FIN (we have it): ACK it again.
            self.ack_now = true;
            if self.state == State::TimeWait {
                self.timewait_at = Some(now + self.cfg.time_wait);
            }
            return;
        }
        self.accept_fin(now);
    }

    fn accept_fin(&mut self, now: Instant) {
        self.rcv_fin = Some(self.rcv_nxt);
        self.rcv_nxt += 1;
        if self.cfg.release == ReleaseMode::OnDelivery {
            self.rcv_rel = self.rcv_nxt;
        }
        self.ack_now = true;
        self.event(Event::PeerClosed);
        let our_fin_acked = self.fin_seq().is_some_and(|f| self.snd_una > f);
        match self.state {
            State::Established | State::SynReceived => self.state = State::CloseWait,
            State::FinWait1 if our_fin_acked => self.enter_time_wait(now),
            State::FinWait1 => self.state = State::Closing,
            State::FinWait2 => self.enter_time_wait(now),
            _ => {}
        }
    }

    /// Called when in-order delivery may have reached an out-of-order FIN.
    fn check_pending_fin(&mut self, now: Instant) {
        if let Some(f) = self.rcv_fin
            && f == self.rcv_nxt
            && matches!(
                self.state,
                State::Established | State::FinWait1 | State::FinWait2
            )
        {
            self.accept_fin(now);
        }
    }
}

// ----------------------------------------------------------------------
// Output.

/// A data segment the sender decided to send.
#[derive(Debug, Clone, Copy)]
struct Plan {
    seq: SeqNumber,
    len: usize,
    fin: bool,
    retransmit: bool,
}

impl Connection {
    /// The next segment to send, if any, with its payload copied into `buf`
    /// (which should hold at least one MSS; with an empty `buf` only
    /// control segments and ACKs come out). Call until `None` after every
    /// input. The caller adds the IP addresses from [`tuple`](Self::tuple).
    pub fn poll_transmit<'b>(&mut self, now: Instant, buf: &'b mut [u8]) -> Option<TcpRepr<'b>> {
        self.last_now = self.last_now.max(now);
        if let Some(rst) = self.rst_out.take() {
            self.stats.segments_out += 1;
            return Some(rst);
        }
        match self.state {
            State::Closed => None,
            State::SynSent | State::SynReceived => {
                if self.snd_nxt == self.iss {
                    Some(self.emit_syn(now))
                } else if self.ack_now && self.state == State::SynReceived {
                    self.ack_now = false;
                    Some(self.emit(now, buf, self.snd_max, 0, TcpFlags::ACK))
                } else {
                    None
                }
            }
            _ => {
                if let Some(plan) = self.next_plan(now, buf.len()) {
                    return Some(self.emit_plan(now, buf, plan));
                }
                if self.probe_out {
                    self.probe_out = false;
                    // A zero-window or keepalive probe: an old sequence
                    // number the peer must answer with an ACK (Linux style,
                    // no data byte beyond the window).
                    return Some(self.emit(now, buf, self.snd_una - 1, 0, TcpFlags::ACK));
                }
                if self.ack_now {
                    return Some(self.emit(now, buf, self.snd_max, 0, TcpFlags::ACK));
                }
                None
            }
        }
    }

    fn emit_syn(&mut self, now: Instant) -> TcpRepr<'static> {
        let synack = self.state == State::SynReceived;
        let ts = if synack {
            self.ts_ok
        } else {
            self.cfg.timestamps
        };
        let tsval = self.ts_now(now);
        let options = TcpOptions {
            mss: Some(self.cfg.mss),
            window_scale: if synack {
                self.ws_ok.then_some(self.rcv_ws)
            } else {
                self.cfg.window_scaling.then(|| self.cfg.window_shift())
            },
            sack_permitted: if synack { self.sack_ok } else { self.cfg.sack },
            sack_blocks: [None; 4],
            timestamp: ts.then_some(TcpTimestamp {
                tsval,
                tsecr: if synack { self.ts_recent } else { 0 },
            }),
        };
        if ts {
            self.ts_last = tsval;
        }
        let retransmit = self.snd_max != self.iss;
        if retransmit {
            self.stats.retransmits += 1;
            self.timed = None;
        } else {
            self.timed = Some((self.iss + 1, now));
        }
        self.snd_nxt = self.iss + 1;
        self.snd_max = self.snd_max.max(self.snd_nxt);
        if self.rto_at.is_none() {
            self.rto_at = Some(now + self.rtt.rto());
        }
        let (ack_number, flags) = if synack {
            self.last_ack_sent = self.rcv_nxt;
            self.ack_now = false;
            (self.rcv_nxt, TcpFlags::SYN | TcpFlags::ACK)
        } else {
            (SeqNumber(0), TcpFlags::SYN)
        };
        self.stats.segments_out += 1;
        TcpRepr {
            src_port: self.tuple.local.port(),
            dst_port: self.tuple.remote.port(),
            seq_number: self.iss,
            ack_number,
            flags,
            // RFC 7323 (2.2): the window of a SYN is never scaled.
            window_len: u16::try_from(self.cfg.recv_buffer.min(65535)).unwrap_or(u16::MAX),
            options,
            payload: &[],
        }
    }

    /// The SACK blocks to send (RFC 2018 (4)): the block holding the most
    /// recent segment first, then the others from the highest down. The
    /// delivered but unreleased range `[rcv_rel, rcv_nxt)` is one of them.
    fn sack_blocks(&self) -> [Option<(SeqNumber, SeqNumber)>; 4] {
        let mut out = [None; 4];
        if !self.sack_ok {
            return out;
        }
        let mut n = 0;
        let unreleased = (self.rcv_rel < self.rcv_nxt).then_some((self.rcv_rel, self.rcv_nxt));
        let recent = self.ooo_last.and_then(|(s, _)| {
            self.ooo
                .containing(s)
                .or_else(|| unreleased.filter(|&(a, b)| a <= s && s < b))
        });
        if let Some(b) = recent {
            out[0] = Some(b);
            n = 1;
        }
        // The held block (received in order, not released yet) comes right
        // after the most recent one: it is what the peer must not resend,
        // and with several holes it would otherwise never fit in the
        // option, leaving the peer to resend it forever.
        let others = unreleased.into_iter().chain(self.ooo.iter().rev());
        for b in others {
            if n >= out.len() {
                break;
            }
            if Some(b) != recent {
                out[n] = Some(b);
                n += 1;
            }
        }
        out
    }

    /// The window field and the ACK number to send, moving `rcv_adv`.
    fn window_for(&mut self, ack: SeqNumber) -> u16 {
        let base = self.rx_read.min(self.rcv_rel);
        let edge = (base + self.cfg.recv_buffer).max(self.rcv_adv);
        let win = span(ack, edge);
        let ws = self.rcv_ws;
        let mut field = win >> ws;
        if ack + (field << ws) < self.rcv_adv {
            // Round up rather than shrink the right edge (Linux does the same
            // in tcp_select_window).
            field += 1;
        }
        let field = field.min(65535);
        let advertised = ack + (field << ws);
        self.rcv_adv = self.rcv_adv.max(advertised);
        field as u16
    }

    fn options_for(&self, now: Instant) -> TcpOptions {
        TcpOptions {
            mss: None,
            window_scale: None,
            sack_permitted: false,
            sack_blocks: self.sack_blocks(),
            timestamp: self.ts_ok.then(|| TcpTimestamp {
                tsval: self.ts_now(now),
                tsecr: self.ts_recent,
            }),
        }
    }

    /// Largest payload with the options we are about to send (RFC 6691).
    fn max_payload(&self, options: &TcpOptions) -> usize {
        usize::from(self.smss)
            .saturating_sub(options.emitted_len())
            .max(1)
    }

    /// Builds a segment with `len` bytes from `seq` and the usual ACK,
    /// window and options.
    fn emit<'b>(
        &mut self,
        now: Instant,
        buf: &'b mut [u8],
        seq: SeqNumber,
        len: usize,
        flags: TcpFlags,
    ) -> TcpRepr<'b> {
        let options = self.options_for(now);
        let ack = self.rcv_rel;
        let window_len = self.window_for(ack);
        let payload: &'b [u8] = if len == 0 {
            &[]
        } else {
            let out = &mut buf[..len];
            let n = self.tx.read_at(span(self.snd_una, seq), out);
            &out[..n]
        };
        if let Some(ts) = options.timestamp {
            self.ts_last = ts.tsval;
        }
        self.last_ack_sent = ack;
        if let Some((seq, tsval)) = self.ts_held
            && seq <= ack
        {
            // From the next ACK on (this one covers older bytes too).
            if (tsval.wrapping_sub(self.ts_recent) as i32) > 0 {
                self.ts_recent = tsval;
            }
            self.ts_held = None;
        }
        self.ack_now = false;
        self.delack_at = None;
        self.segs_unacked = 0;
        self.stats.segments_out += 1;
        self.stats.bytes_out += payload.len() as u64;
        TcpRepr {
            src_port: self.tuple.local.port(),
            dst_port: self.tuple.remote.port(),
            seq_number: seq,
            ack_number: ack,
            flags,
            window_len,
            options,
            payload,
        }
    }

    fn emit_plan<'b>(&mut self, now: Instant, buf: &'b mut [u8], plan: Plan) -> TcpRepr<'b> {
        let mut flags = TcpFlags::ACK;
        if plan.fin {
            flags |= TcpFlags::FIN;
        }
        let end = plan.seq + plan.len;
        if plan.len > 0 && end == self.data_end() {
            flags |= TcpFlags::PSH;
        }
        let seg_end = end + usize::from(plan.fin);
        if plan.retransmit {
            self.stats.retransmits += 1;
            self.timed = None;
        } else if self.timed.is_none() && !self.ts_ok {
            self.timed = Some((seg_end, now));
        }
        if self.recovery == Recovery::Fast && plan.retransmit {
            self.high_rxt = self.high_rxt.max(seg_end);
            self.rxt_first = false;
        } else {
            self.snd_nxt = seg_end;
        }
        self.snd_max = self.snd_max.max(seg_end);
        if self.rto_at.is_none() {
            self.rto_at = Some(now + self.rtt.rto());
        }
        self.persist_at = None;
        self.emit(now, buf, plan.seq, plan.len, flags)
    }

    /// Chooses the next data or FIN segment: RFC 6675 NextSeg in fast
    /// recovery, go-back-N past SACKed ranges after a timeout, new data
    /// otherwise; within the congestion and peer windows, with sender SWS
    /// avoidance and (optionally) Nagle.
    fn next_plan(&mut self, now: Instant, buf_len: usize) -> Option<Plan> {
        if !matches!(
            self.state,
            State::Established
                | State::CloseWait
                | State::FinWait1
                | State::Closing
                | State::LastAck
        ) {
            return None;
        }
        if buf_len == 0 {
            return None;
        }
        let options = self.options_for(now);
        let max = self.max_payload(&options).min(buf_len);
        let pipe = self.pipe();
        let budget = (self.cc.cwnd as usize).saturating_sub(pipe);
        let data_end = self.data_end();
        let fin_seq = self.fin_seq();

        // Retransmissions first.
        let retx_from = match self.recovery {
            Recovery::Fast => self.first_lost(),
            Recovery::Loss | Recovery::Open => {
                let s = self.skip_sacked(self.snd_nxt.max(self.snd_una));
                if s != self.snd_nxt && self.recovery == Recovery::Loss {
                    self.snd_nxt = s;
                }
                (s < self.snd_max).then_some(s)
            }
        };
        if let Some(seq) = retx_from {
            let hole_end = self
                .sacked
                .next_after(seq)
                .map_or(self.snd_max, |(s, _)| s)
                .min(self.snd_max);
            let plan = self.plan_at(seq, hole_end, max, data_end, fin_seq, true)?;
            let space = plan.len + usize::from(plan.fin);
            // RFC 6675 (5) step 4.3: the first retransmission goes out
            // whatever the window.
            if space > budget && pipe > 0 && !(self.rxt_first && self.recovery == Recovery::Fast) {
                return None;
            }
            return Some(plan);
        }

        // New data.
        let seq = self.snd_max;
        let wnd_edge = self.snd_wl2 + self.snd_wnd as usize;
        let avail = span(seq, data_end);
        let fin_pending = fin_seq.is_some_and(|f| f >= seq);
        if avail == 0 && !fin_pending {
            return None;
        }
        let wnd_room = span(seq, wnd_edge);
        let plan = match self.plan_at(seq, wnd_edge.max(seq), max, data_end, fin_seq, false) {
            Some(p) => p,
            None => {
                // Window closed with data waiting: probe when nothing is in
                // flight (RFC 9293 (3.8.6.1)).
                self.arm_persist(now);
                return None;
            }
        };
        if plan.len < max && plan.len < avail && !plan.fin && wnd_room < avail {
            // Window-limited runt: RFC 9293 (3.8.6.2.1) sender SWS avoidance.
            let half = (self.max_snd_wnd / 2) as usize;
            if plan.len < half || half == 0 {
                self.arm_persist(now);
                return None;
            }
        }
        if !self.cfg.nodelay && plan.len < max && !plan.fin && self.snd_max != self.snd_una {
            // Nagle: one small segment in flight at a time.
            return None;
        }
        let space = plan.len + usize::from(plan.fin);
        if space > budget && pipe > 0 {
            return None;
        }
        Some(plan)
    }

    /// A segment from `seq`, at most `max` bytes, not past `limit` in
    /// sequence space; with the FIN if it fits.
    fn plan_at(
        &self,
        seq: SeqNumber,
        limit: SeqNumber,
        max: usize,
        data_end: SeqNumber,
        fin_seq: Option<SeqNumber>,
        retransmit: bool,
    ) -> Option<Plan> {
        let len = span(seq, data_end).min(span(seq, limit)).min(max);
        let end = seq + len;
        let fin = fin_seq.is_some_and(|f| f == end && (limit > f || (!retransmit && limit >= f)));
        if len == 0 && !fin {
            return None;
        }
        Some(Plan {
            seq,
            len,
            fin,
            retransmit: seq < self.snd_max,
        })
    }

    fn arm_persist(&mut self, now: Instant) {
        if self.snd_una == self.snd_max && self.persist_at.is_none() {
            let rto = self.rtt.base_rto();
            let backoff = rto
                .checked_mul(1u32 << self.persist_backoff.min(16))
                .unwrap_or(self.cfg.rto_max)
                .min(self.cfg.rto_max);
            self.persist_at = Some(now + backoff);
        }
    }

    /// Window update after the application read or released (RFC 9293
    /// (3.8.6.2.2) receiver SWS avoidance: only when the edge moves by at
    /// least min(buffer / 2, MSS)).
    fn maybe_window_update(&mut self) {
        if !self.state.is_synchronized() {
            return;
        }
        let base = self.rx_read.min(self.rcv_rel);
        let edge = base + self.cfg.recv_buffer;
        let threshold = (self.cfg.recv_buffer / 2).min(usize::from(self.cfg.mss));
        if edge > self.rcv_adv && span(self.rcv_adv, edge) >= threshold {
            // Urgent only if the peer may be stalled on a small window.
            let open = span(self.rcv_rel, self.rcv_adv);
            if open < self.cfg.recv_buffer / 2 {
                self.ack_now = true;
            }
        }
    }
}

// ----------------------------------------------------------------------
// Timers.

impl Connection {
    /// The earliest instant at which [`handle_timeout`](Self::handle_timeout)
    /// has work, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.rto_at,
            self.delack_at,
            self.persist_at,
            self.keepalive_at,
            self.timewait_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs the timers due at `now`: retransmission (RFC 6298 (5.4)-(5.7)),
    /// delayed ACK, zero-window probe, keepalive and TIME-WAIT.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        if self.timewait_at.is_some_and(|t| t <= now) {
            self.timewait_at = None;
            self.enter_closed();
            return;
        }
        if self.delack_at.is_some_and(|t| t <= now) {
            self.delack_at = None;
            self.ack_now = true;
        }
        if self.rto_at.is_some_and(|t| t <= now) {
            self.rto_at = None;
            self.on_rto(now);
            if self.state == State::Closed {
                return;
            }
        }
        if self.persist_at.is_some_and(|t| t <= now) {
            self.persist_at = None;
            if self.snd_una == self.snd_max {
                self.probe_out = true;
                self.stats.window_probes += 1;
                self.persist_backoff = self.persist_backoff.saturating_add(1);
                self.arm_persist(now);
            }
        }
        self.run_keepalive(now);
    }

    fn on_rto(&mut self, now: Instant) {
        self.stats.timeouts += 1;
        self.retries += 1;
        self.timed = None;
        self.rtt.on_timeout();
        match self.state {
            State::SynSent | State::SynReceived => {
                if self.retries > self.cfg.syn_retries {
                    self.event(Event::TimedOut);
                    self.enter_closed();
                    return;
                }
                self.snd_nxt = self.iss;
                return;
            }
            _ => {}
        }
        if self.snd_una == self.snd_max {
            return;
        }
        if self.retries > self.cfg.max_retries {
            tracing::debug!(tuple = ?self.tuple, "retransmissions exhausted");
            self.event(Event::TimedOut);
            self.enter_closed();
            return;
        }
        let flight = u32::try_from(span(self.snd_una, self.snd_max)).unwrap_or(u32::MAX);
        if self.retries == 1 {
            self.cc.on_rto(flight, u32::from(self.smss));
        } else {
            // RFC 5681 (3.1): ssthresh is not lowered again for repeated
            // timeouts of the same data.
            self.cc.cwnd = u32::from(self.smss);
        }
        // RFC 2018 (8): after a timeout, SACK information may have been
        // reneged; start over from snd_una.
        self.sacked.clear();
        self.recovery = Recovery::Loss;
        self.recovery_point = self.snd_max;
        self.snd_nxt = self.snd_una;
        self.high_rxt = self.snd_una;
        self.dupacks = 0;
        self.rto_at = Some(now + self.rtt.rto());
    }

    fn run_keepalive(&mut self, now: Instant) {
        let Some(k) = self.cfg.keepalive else {
            return;
        };
        if !matches!(
            self.state,
            State::Established | State::CloseWait | State::FinWait2
        ) {
            self.keepalive_at = None;
            return;
        }
        if self.keepalive_at.is_some_and(|t| t <= now) {
            if self.snd_una != self.snd_max {
                // Data in flight: the retransmission timer watches the peer.
                self.keepalive_at = Some(now + k.interval);
                return;
            }
            if self.keepalive_sent >= k.probes {
                tracing::debug!(tuple = ?self.tuple, "keepalive timed out");
                self.event(Event::TimedOut);
                self.enter_closed();
                return;
            }
            self.keepalive_sent += 1;
            self.keepalive_probe_at = now;
            self.stats.keepalives += 1;
            self.probe_out = true;
        }
        self.schedule_keepalive();
    }

    fn schedule_keepalive(&mut self) {
        if let Some(k) = self.cfg.keepalive {
            self.keepalive_at = Some(if self.keepalive_sent == 0 {
                self.last_recv + k.idle
            } else {
                self.keepalive_probe_at + k.interval
            });
        }
    }
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
