//! One relayed connection and the commit rule (`docs/flow-design.md`).

use std::collections::VecDeque;
use std::time::Duration;

use relay_tcp::{
    Config as TcpConfig, Connection, Event, FourTuple, Instant, IsnSecret, SeqNumber, State,
    TcpRepr,
};
use relay_tls::{
    AlertDescription, Deframed, HandshakeDriver, HandshakeInfo, HandshakeStatus, ReadStatus,
    RecordLayer, RecordState, TrafficState, UnixTime, deframe, plan_records,
};

use crate::checkpoint::{FlowCheckpoint, FlowMeta, MAX_DOWN_PARTIAL, MAX_PARTIAL, PlannedBatch};
use crate::error::FlowError;
use crate::outbox::{CommitNo, FlowId};

/// Largest TLS plaintext record.
const MAX_RECORD: usize = 1 << 14;
/// Bytes a record adds at most around its plaintext (header, explicit
/// nonce, tag, inner content type).
const RECORD_OVERHEAD: usize = 5 + 8 + 16 + 1;
/// Room kept in the front send buffer for control records of a batch.
const CONTROL_ROOM: usize = 128;

/// Settings of every flow of a relay.
#[derive(Debug, Clone)]
pub struct FlowConfig {
    /// Client side TCP (the relay is the server). Its release mode must be
    /// `ReleaseMode::Manual`: the flow moves the release point.
    pub front: TcpConfig,
    /// Backend side TCP (the relay is the client), same release mode.
    pub back: TcpConfig,
    /// Most backend plaintext planned, sealed and committed together.
    pub max_batch: usize,
    /// Largest plaintext per record (at most 2^14).
    pub max_record: usize,
    /// A client that has not finished its handshake by then is closed.
    pub handshake_timeout: Duration,
    /// A flow still closing this long after its close began (a FIN or a
    /// failure on either side) is aborted: both peers get a RST. Whatever
    /// a peer does or fails to do, every close ends.
    pub close_timeout: Duration,
    /// Client ciphertext of a record still being received that is released
    /// (carried in the commit) once it reaches this size.
    pub partial_release: usize,
    /// Seal backend data in whole records only, except when the caller
    /// calls [`Flow::flush`] (once per receive batch): fewer, fuller
    /// records when the backend streams. Off: seal what arrived at once.
    pub coalesce: bool,
    /// Build a [`FlowCheckpoint`] for each commit. A relay without peers
    /// (its outbox acknowledges at once and keeps nothing) turns it off and
    /// takes commit numbers from [`Flow::poll_commit_no`] instead: the rule
    /// and its bookkeeping stay the same, only the copy nobody reads goes.
    pub checkpoints: bool,
}

impl Default for FlowConfig {
    fn default() -> Self {
        let tcp = TcpConfig {
            release: relay_tcp::ReleaseMode::Manual,
            send_buffer: 256 * 1024,
            recv_buffer: 256 * 1024,
            ..TcpConfig::default()
        };
        FlowConfig {
            front: tcp.clone(),
            back: tcp,
            max_batch: 64 * 1024,
            max_record: MAX_RECORD,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(60),
            partial_release: 8 * 1024,
            coalesce: false,
            checkpoints: true,
        }
    }
}

/// Where a flow stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TCP handshake or TLS handshake with the client.
    Handshake,
    /// TLS is up; the backend connection is being opened.
    Connecting,
    /// Data flows (replicated once the full checkpoint is acknowledged).
    Open,
    /// Both sides are closing.
    Closing,
    /// Done: drop the flow.
    Closed,
}

impl Phase {
    /// Lower-case name for operators.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Handshake => "handshake",
            Phase::Connecting => "connecting",
            Phase::Open => "open",
            Phase::Closing => "closing",
            Phase::Closed => "closed",
        }
    }
}

/// Why a flow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// Both sides closed in order.
    Normal,
    /// The client reset its connection.
    ClientReset,
    /// The client stopped answering.
    ClientTimeout,
    /// The TLS handshake failed.
    HandshakeFailed,
    /// The client did not finish its handshake in time.
    HandshakeTimeout,
    /// The client broke the record protocol (garbage, forged records).
    TlsViolation,
    /// The client sent a fatal alert.
    ClientAlert,
    /// No healthy backend, or none could be reached.
    NoBackend,
    /// The backend refused the connection.
    BackendRefused,
    /// The backend reset the connection.
    BackendReset,
    /// The backend stopped answering.
    BackendTimeout,
    /// The operator or the relay aborted the flow.
    Aborted,
    /// The close did not finish within the close timeout.
    CloseTimeout,
}

impl CloseReason {
    /// Label value for metrics.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::ClientReset => "client_reset",
            CloseReason::ClientTimeout => "client_timeout",
            CloseReason::HandshakeFailed => "handshake_failed",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::TlsViolation => "tls_violation",
            CloseReason::ClientAlert => "client_alert",
            CloseReason::NoBackend => "no_backend",
            CloseReason::BackendRefused => "backend_refused",
            CloseReason::BackendReset => "backend_reset",
            CloseReason::CloseTimeout => "close_timeout",
            CloseReason::BackendTimeout => "backend_timeout",
            CloseReason::Aborted => "aborted",
        }
    }

    /// Every reason, for pre-registering metrics.
    pub const ALL: [CloseReason; 13] = [
        CloseReason::Normal,
        CloseReason::ClientReset,
        CloseReason::ClientTimeout,
        CloseReason::HandshakeFailed,
        CloseReason::HandshakeTimeout,
        CloseReason::TlsViolation,
        CloseReason::ClientAlert,
        CloseReason::NoBackend,
        CloseReason::BackendRefused,
        CloseReason::BackendReset,
        CloseReason::BackendTimeout,
        CloseReason::Aborted,
        CloseReason::CloseTimeout,
    ];
}

/// What the caller must do for a flow; drained with [`Flow::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowEvent {
    /// Handshake input is waiting: run [`Flow::take_handshake`] (off the
    /// packet loop) and hand the result to [`Flow::handshake_done`].
    HandshakeReady,
    /// The TLS handshake completed: pick a backend and call
    /// [`Flow::connect_backend`] (or [`Flow::refuse`]).
    NeedBackend(HandshakeInfo),
    /// The full checkpoint was committed: the flow can now be adopted.
    Replicated,
    /// The flow ended; drop it after draining its transmissions.
    Closed(CloseReason),
}

/// A handshake step to run off the packet loop.
#[derive(Debug)]
pub struct HandshakeJob {
    driver: HandshakeDriver,
    input: Vec<u8>,
}

/// What a handshake step produced.
#[derive(Debug)]
pub struct HandshakeDone {
    output: Vec<u8>,
    outcome: HandshakeOutcome,
    input_len: usize,
}

#[derive(Debug)]
enum HandshakeOutcome {
    InProgress(Box<HandshakeDriver>),
    Complete(relay_tls::Established),
    Failed(relay_tls::Error),
}

impl HandshakeDone {
    /// Whether the step failed (for metrics), and why.
    pub fn error(&self) -> Option<&relay_tls::Error> {
        match &self.outcome {
            HandshakeOutcome::Failed(e) => Some(e),
            _ => None,
        }
    }
}

impl HandshakeJob {
    /// Runs the step: rustls' work (key exchange, signatures) happens here.
    pub fn run(mut self, now: UnixTime) -> HandshakeDone {
        let input_len = self.input.len();
        let status = self.driver.handle_input(now, &self.input);
        let mut output = Vec::new();
        while self.driver.wants_transmit() {
            if self.driver.poll_transmit(&mut output) == 0 {
                break;
            }
        }
        let outcome = match status {
            Ok(HandshakeStatus::InProgress) => HandshakeOutcome::InProgress(Box::new(self.driver)),
            Ok(HandshakeStatus::Complete) => match self.driver.into_established() {
                Ok(est) => HandshakeOutcome::Complete(est),
                Err(e) => HandshakeOutcome::Failed(e),
            },
            Err(e) => HandshakeOutcome::Failed(e),
        };
        HandshakeDone {
            output,
            outcome,
            input_len,
        }
    }
}

/// Counters of one flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Plaintext bytes from the client handed to the backend engine.
    pub bytes_up: u64,
    /// Plaintext bytes from the backend sealed for the client.
    pub bytes_down: u64,
    /// Records opened.
    pub records_up: u64,
    /// Records sealed (control records included).
    pub records_down: u64,
    /// Commits made.
    pub commits: u64,
}

/// One opened client record whose plaintext the backend has not
/// acknowledged yet.
#[derive(Debug)]
struct Pending {
    client_end: u64,
    plain_end: u64,
    read_after: RecordState,
    close_notify: bool,
}

/// A planned batch on this relay: its plan, and its ciphertext until the
/// front engine has taken it.
#[derive(Debug)]
struct Batch {
    plan: PlannedBatch,
    client_end: u64,
    cipher: Vec<u8>,
    sent: usize,
    /// Every byte has gone to the front engine.
    done: bool,
    /// The commit that carries the plan has been acknowledged: the records
    /// may go out.
    released: bool,
    /// The commit that carries the plan, once made.
    commit: Option<CommitNo>,
}

/// The upstream point a commit moves the release point to.
#[derive(Debug, Clone)]
struct UpPoint {
    client_off: u64,
    plain_off: u64,
    read: RecordState,
    close_notify: bool,
    partial: Vec<u8>,
    fin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DownPoint {
    client_off: u64,
    plain_off: u64,
    /// Backend plaintext acknowledged up to here although not yet part of
    /// a record the client acknowledged (see
    /// [`FlowCheckpoint::down_partial`]); never behind `plain_off` once
    /// set, and never moves back.
    partial_end: u64,
    fin: bool,
}

impl DownPoint {
    /// Where the back engine's release point goes (before the FIN).
    fn released(&self) -> u64 {
        self.plain_off.max(self.partial_end)
    }
}

#[derive(Debug)]
struct InFlight {
    no: CommitNo,
    up: UpPoint,
    down: DownPoint,
    /// This commit carries our FIN to the backend: it may go once acked.
    close_back: bool,
    at: Instant,
}

/// A sequence-space position tracked as a 64-bit stream offset.
#[derive(Debug, Clone, Copy)]
struct Tracker {
    seq: SeqNumber,
    off: u64,
}

impl Tracker {
    fn new(seq: SeqNumber, off: u64) -> Self {
        Tracker { seq, off }
    }
    fn update(&mut self, seq: SeqNumber) -> u64 {
        let d = seq - self.seq;
        if d > 0 {
            self.off += d as u64;
            self.seq = seq;
        }
        self.off
    }
}

/// Segments of window an adopter offers past what the old relay did.
const ADOPT_EXTRA_SEGMENTS: usize = 4;

fn seq_at(base: SeqNumber, off: u64) -> SeqNumber {
    SeqNumber(base.0.wrapping_add(off as u32))
}

/// One client connection relayed to one backend connection.
///
/// # Calling order
///
/// Per flow, the caller (a worker loop or a simulation):
/// 1. hands in segments with [`handle_front`](Self::handle_front) /
///    [`handle_back`](Self::handle_back) and timeouts with
///    [`handle_timeout`](Self::handle_timeout) once `now` reaches
///    [`poll_timeout`](Self::poll_timeout);
/// 2. drains [`poll_event`](Self::poll_event): runs handshake jobs
///    ([`take_handshake`](Self::take_handshake) then
///    [`handshake_done`](Self::handshake_done)), connects the backend
///    ([`connect_backend`](Self::connect_backend));
/// 3. drains [`poll_commit`](Self::poll_commit) into the outbox and hands
///    the outbox's acknowledgements to
///    [`handle_commit_ack`](Self::handle_commit_ack);
/// 4. drains [`poll_front_transmit`](Self::poll_front_transmit) and
///    [`poll_back_transmit`](Self::poll_back_transmit) until `None`.
///
/// Release points move only in `handle_commit_ack`; planned records are
/// handed to the front engine only there too.
pub struct Flow {
    id: FlowId,
    cfg: FlowConfig,
    phase: Phase,
    opened: Instant,
    front: Connection,
    back: Option<Connection>,
    meta: Option<FlowMeta>,
    info: Option<HandshakeInfo>,
    close_reason: Option<CloseReason>,
    closed_reported: bool,
    events: VecDeque<FlowEvent>,
    stats: FlowStats,

    // Handshake.
    hs: Option<HandshakeDriver>,
    hs_input: Vec<u8>,
    hs_ready_sent: bool,
    hs_deadline: Option<Instant>,
    /// When a close that began and stopped moving is given up (see
    /// `FlowConfig::close_timeout`), and where both engines stood when it
    /// was set: any byte or FIN moving since pushes it back.
    close_deadline: Option<Instant>,
    close_progress: [u32; 4],
    hs_out: Vec<u8>,
    /// The last handshake step's output (TLS 1.3 session tickets, the
    /// TLS 1.2 server Finished), which starts at client-bound offset
    /// `hs_tail_off`: the first commit does not wait for the client to
    /// acknowledge it (a client that has sent its request acknowledges
    /// only after its delayed-ACK timer); a checkpoint carries what is
    /// unacknowledged of it, for an adopter to send again.
    hs_tail: Vec<u8>,
    hs_tail_off: u64,
    /// Client stream bytes consumed from the front engine.
    front_rx_off: u64,

    records: Option<RecordLayer>,

    // Upstream.
    up_in: Vec<u8>,
    up_in_start: usize,
    /// Client stream offset of `up_in[up_in_start]`.
    up_in_off: u64,
    up_pending: VecDeque<Pending>,
    up_plain: Vec<u8>,
    up_plain_start: usize,
    up_plain_total: u64,
    up_eof: bool,
    front_fin: bool,
    back_close_sent: bool,
    /// The client is done and its bytes are with the backend engine: our
    /// FIN to the backend is owed, and goes in a commit before it is sent.
    back_close_wanted: bool,
    /// The commit carrying that FIN, once made.
    back_close_commit: Option<CommitNo>,
    /// That commit is acknowledged: the FIN may go.
    back_close_allowed: bool,
    back_una: Option<Tracker>,
    up_base: Option<UpPoint>,

    // Downstream.
    /// Backend plaintext offset of the next byte to read (from
    /// `down_prefix`, then from the back engine).
    down_read_off: u64,
    /// Backend plaintext an adopted checkpoint carried past its down point
    /// (`down_partial`): the back engine acknowledged it already, so it
    /// comes before anything the engine holds.
    down_prefix: VecDeque<u8>,
    /// While an adopter replays (and until the client acknowledges what
    /// it replayed), the plaintext read since `down_held_off`: a checkpoint
    /// carries the part of it the back engine acknowledged early.
    down_holding: bool,
    down_held: VecDeque<u8>,
    down_held_off: u64,
    client_next: u64,
    batches: VecDeque<Batch>,
    front_una: Tracker,
    back_eof: bool,
    close_planned: bool,
    front_close_sent: bool,
    /// The close batch went to the front engine; the FIN follows once
    /// allowed (see `push_front`).
    front_close_owed: bool,
    fail_alert: Option<AlertDescription>,
    down_base: Option<DownPoint>,
    /// [`Flow::flush`] is running: seal partial records too.
    flush_now: bool,
    /// Batches from a checkpoint to seal again before planning anew.
    replay: VecDeque<PlannedBatch>,
    /// The traffic state to continue with after the replay.
    replay_end: Option<TrafficState>,

    // Commits.
    replicated: bool,
    /// The number the next commit takes: epoch 0 on the relay that opened
    /// the flow, one more than the checkpoint's on an adopter.
    next_commit: CommitNo,
    planned_uncommitted: bool,
    in_flight: VecDeque<InFlight>,
    commits_out: VecDeque<(CommitNo, FlowCheckpoint)>,
    commit_nos: VecDeque<CommitNo>,
    /// The engines' last exports while they could still be exported: a
    /// commit made after an engine closed (our FIN and the peer's both
    /// acknowledged) starts from these.
    front_ck: Option<relay_tcp::Checkpoint>,
    back_ck: Option<relay_tcp::Checkpoint>,
    /// Carried on from a checkpoint (see `clamp_ack`).
    adopted: bool,
    /// While replaying: the end of the adopted plan in the client stream.
    replay_front_end: Option<SeqNumber>,
}

impl core::fmt::Debug for Flow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Flow")
            .field("id", &self.id)
            .field("phase", &self.phase)
            .field("front", &self.front.state())
            .field("back", &self.back.as_ref().map(Connection::state))
            .finish_non_exhaustive()
    }
}

impl Flow {
    /// A flow from a client's SYN: the front engine answers with a SYN-ACK;
    /// the TLS handshake starts once the client sends its hello.
    pub fn accept(
        id: FlowId,
        cfg: FlowConfig,
        tuple: FourTuple,
        syn: &TcpRepr<'_>,
        secret: &IsnSecret,
        tls: &relay_tls::TlsServerConfig,
        now: Instant,
    ) -> Result<Flow, FlowError> {
        let front = Connection::accept(cfg.front.clone(), tuple, syn, secret, now)?;
        let driver = HandshakeDriver::new(tls)?;
        let deadline = now.micros + cfg.handshake_timeout.as_micros() as u64;
        let mut flow = Flow::blank(id, cfg, front, now);
        flow.hs = Some(driver);
        flow.hs_deadline = Some(Instant::from_micros(deadline));
        Ok(flow)
    }

    /// A flow from a client connection a [`relay_tcp::Listener`] has
    /// completed (the half-open state stays bounded in the listener, so a
    /// SYN flood costs no TLS state).
    pub fn from_accepted(
        id: FlowId,
        cfg: FlowConfig,
        front: Connection,
        tls: &relay_tls::TlsServerConfig,
        now: Instant,
    ) -> Result<Flow, FlowError> {
        let driver = HandshakeDriver::new(tls)?;
        let deadline = now.micros + cfg.handshake_timeout.as_micros() as u64;
        let mut flow = Flow::blank(id, cfg, front, now);
        flow.hs = Some(driver);
        flow.hs_deadline = Some(Instant::from_micros(deadline));
        // The handshake's last ACK may have carried the ClientHello.
        flow.progress(now);
        Ok(flow)
    }

    fn blank(id: FlowId, cfg: FlowConfig, front: Connection, now: Instant) -> Flow {
        let front_una = Tracker::new(front.iss() + 1, 0);
        Flow {
            id,
            cfg,
            phase: Phase::Handshake,
            opened: now,
            front,
            back: None,
            meta: None,
            info: None,
            close_reason: None,
            closed_reported: false,
            events: VecDeque::new(),
            stats: FlowStats::default(),
            hs: None,
            hs_input: Vec::new(),
            hs_ready_sent: false,
            hs_deadline: None,
            close_deadline: None,
            close_progress: [0; 4],
            hs_out: Vec::new(),
            hs_tail: Vec::new(),
            hs_tail_off: 0,
            front_rx_off: 0,
            records: None,
            up_in: Vec::new(),
            up_in_start: 0,
            up_in_off: 0,
            up_pending: VecDeque::new(),
            up_plain: Vec::new(),
            up_plain_start: 0,
            up_plain_total: 0,
            up_eof: false,
            front_fin: false,
            back_close_sent: false,
            back_close_wanted: false,
            back_close_commit: None,
            back_close_allowed: false,
            back_una: None,
            up_base: None,
            down_read_off: 0,
            down_prefix: VecDeque::new(),
            down_holding: false,
            down_held: VecDeque::new(),
            down_held_off: 0,
            client_next: 0,
            batches: VecDeque::new(),
            front_una,
            back_eof: false,
            close_planned: false,
            front_close_sent: false,
            front_close_owed: false,
            fail_alert: None,
            down_base: None,
            flush_now: false,
            replay: VecDeque::new(),
            replay_end: None,
            replicated: false,
            next_commit: CommitNo::new(0, 1),
            planned_uncommitted: false,
            in_flight: VecDeque::new(),
            commits_out: VecDeque::new(),
            commit_nos: VecDeque::new(),
            front_ck: None,
            back_ck: None,
            adopted: false,
            replay_front_end: None,
        }
    }

    /// Asks both peers to retransmit at once: an ACK with SACK information
    /// on each side. An adopter calls it again once the flow's addresses
    /// point at it (the nudges of [`adopt`](Self::adopt) may have gone to
    /// a neighbour cache that still named the dead relay).
    pub fn nudge(&mut self) {
        self.front.nudge();
        if let Some(back) = self.back.as_mut() {
            back.nudge();
        }
    }

    /// Carries on a flow from the last checkpoint its relay committed to
    /// us. Both engines start with an ACK (with SACK information) that makes
    /// the client and the backend retransmit at once; `elapsed` bounds how
    /// long the old relay may have run after the checkpoint.
    ///
    /// The flow keeps its id and commits in the epoch after the
    /// checkpoint's (`CommitNo { epoch: ck.commit.epoch + 1, n: 1 }` on):
    /// whatever the old owner committed after the checkpoint (in its epoch,
    /// any `n`), the adopter's commits sort after it, and a later adopter's
    /// (adopting from one of ours) after ours.
    pub fn adopt(
        cfg: FlowConfig,
        ck: &FlowCheckpoint,
        now: Instant,
        elapsed: Duration,
    ) -> Result<Flow, FlowError> {
        ck.validate()?;
        // Only a lying peer sends the last epoch.
        let epoch = ck
            .commit
            .epoch
            .checked_add(1)
            .ok_or(FlowError::Checkpoint("commit epoch"))?;
        // A few segments more window than the old relay offered: a sender
        // limited by our window (the usual case, since we hold ACKs until
        // commits) answers the nudge with new segments, and our SACK of
        // them shows it at once that everything before was lost, instead
        // of it waiting for its retransmission timeout. (A SACK block
        // starting at the cumulative ACK, all a nudge could carry else, is
        // ignored by Linux.)
        let wider = |c: &relay_tcp::Config| {
            let mut c = c.clone();
            let most = if c.window_scaling {
                relay_tcp::MAX_RECV_BUFFER
            } else {
                65535
            };
            c.recv_buffer = (c.recv_buffer + ADOPT_EXTRA_SEGMENTS * usize::from(c.mss))
                .min(most)
                .max(c.recv_buffer);
            c
        };
        let mut front = Connection::import(wider(&cfg.front), &ck.front, now, elapsed)?;
        let mut back = Connection::import(wider(&cfg.back), &ck.back, now, elapsed)?;
        front.nudge();
        back.nudge();
        // The layer starts with the first batch's write state (or the
        // final one): replayed batches are sealed exactly as before.
        let first = ck
            .batches
            .first()
            .map_or(&ck.traffic, |b| &b.state_before)
            .clone();
        let traffic = merge_traffic(&ck.traffic, &first);
        let layer = RecordLayer::new(traffic)?;
        let mut flow = Flow::blank(ck.id, cfg, front, now);
        // An unacknowledged handshake tail goes out again first.
        let tail_off = ck.down_client_off - ck.hs_tail.len() as u64;
        flow.front_una = Tracker::new(ck.front.snd_una, tail_off);
        flow.hs_out = ck.hs_tail.clone();
        flow.hs_tail = ck.hs_tail.clone();
        flow.hs_tail_off = tail_off;
        flow.back_una = Some(Tracker::new(ck.back.snd_una, ck.up_plain_off));
        flow.phase = Phase::Open;
        flow.back = Some(back);
        flow.meta = Some(ck.meta.clone());
        // What the old relay negotiated: the listing shows it, and a reset
        // of an adopted flow is no failed handshake.
        flow.info = Some(HandshakeInfo {
            version: ck.traffic.version,
            suite: ck.traffic.suite,
            server_name: ck.meta.server_name.clone(),
            alpn: ck.meta.alpn.clone(),
            resumed: ck.meta.resumed,
        });
        flow.records = Some(layer);
        flow.front_rx_off = ck.up_client_off;
        flow.up_in = ck.partial.clone();
        flow.up_in_off = ck.up_client_off - ck.partial.len() as u64;
        flow.up_plain_total = ck.up_plain_off;
        flow.up_eof = ck.traffic.received_close_notify;
        flow.front_fin = matches!(
            ck.front.state,
            State::CloseWait | State::Closing | State::LastAck | State::TimeWait
        );
        flow.back_close_sent = ck.back.snd_fin.is_some();
        flow.back_close_wanted = flow.back_close_sent;
        flow.back_close_allowed = flow.back_close_sent;
        flow.up_base = Some(UpPoint {
            client_off: ck.up_client_off,
            plain_off: ck.up_plain_off,
            read: ck.traffic.read.clone(),
            close_notify: ck.traffic.received_close_notify,
            partial: ck.partial.clone(),
            fin: flow.front_fin,
        });
        flow.back_eof = matches!(
            ck.back.state,
            State::CloseWait | State::Closing | State::LastAck | State::TimeWait
        );
        flow.down_read_off = ck.down_plain_off;
        flow.down_prefix = ck.down_partial.iter().copied().collect();
        flow.down_holding = !ck.batches.is_empty() || !ck.down_partial.is_empty();
        flow.down_held_off = ck.down_plain_off;
        flow.client_next = ck.down_client_off;
        flow.down_base = Some(DownPoint {
            client_off: ck.down_client_off,
            plain_off: ck.down_plain_off,
            partial_end: ck.down_plain_off + ck.down_partial.len() as u64,
            fin: flow.back_eof && ck.batches.is_empty(),
        });
        flow.close_planned = ck.batches.iter().any(|b| b.close) || ck.traffic.sent_close_notify;
        flow.front_close_sent = ck.front.snd_fin.is_some();
        // A close batch the client acknowledged before our FIN could go
        // is no longer carried: the FIN is still owed.
        flow.front_close_owed = !flow.front_close_sent
            && ck.traffic.sent_close_notify
            && !ck.batches.iter().any(|b| b.close);
        flow.replay = ck.batches.iter().cloned().collect();
        // Without batches the layer starts with the final write state
        // already (and nothing would ever take `replay_end`).
        flow.replay_end = (!ck.batches.is_empty()).then(|| ck.traffic.clone());
        flow.replicated = true;
        flow.adopted = true;
        // An engine that closes before the first export (the peer's last
        // ACK of a close already on its way) still has a state to commit.
        flow.front_ck = Some(ck.front.clone());
        flow.back_ck = Some(ck.back.clone());
        // The exporter raised `snd_max` to the end of its plan (see
        // `checkpoint`); its FIN, if it may have sent it, is `snd_fin`.
        flow.replay_front_end =
            (!ck.batches.is_empty()).then(|| ck.front.snd_fin.unwrap_or(ck.front.snd_max));
        flow.hs_deadline = None;
        flow.next_commit = CommitNo::new(epoch, 1);
        tracing::debug!(id = %ck.id, commit = %ck.commit, epoch = flow.next_commit.epoch, batches = ck.batches.len(), "flow adopted");
        Ok(flow)
    }

    // ------------------------------------------------------------------
    // Accessors.

    /// The flow's identity.
    pub fn id(&self) -> FlowId {
        self.id
    }

    /// Where the flow stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The client connection's 4-tuple (seen from the relay).
    pub fn front_tuple(&self) -> FourTuple {
        self.front.tuple()
    }

    /// The backend connection's 4-tuple, once connecting.
    pub fn back_tuple(&self) -> Option<FourTuple> {
        self.back.as_ref().map(Connection::tuple)
    }

    /// The client engine (for counters).
    pub fn front(&self) -> &Connection {
        &self.front
    }

    /// The backend engine (for counters).
    pub fn back(&self) -> Option<&Connection> {
        self.back.as_ref()
    }

    /// What the handshake negotiated.
    pub fn handshake_info(&self) -> Option<&HandshakeInfo> {
        self.info.as_ref()
    }

    /// Service and backend, once chosen.
    pub fn meta(&self) -> Option<&FlowMeta> {
        self.meta.as_ref()
    }

    /// When the flow was opened (in the caller's clock).
    pub fn opened(&self) -> Instant {
        self.opened
    }

    /// Counters.
    pub fn stats(&self) -> FlowStats {
        self.stats
    }

    /// Why the flow ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close_reason
    }

    /// Whether a full checkpoint has been committed (the flow is adoptable).
    pub fn is_replicated(&self) -> bool {
        self.replicated
    }

    /// Bytes this flow holds outside its engines (buffers of the flow layer).
    pub fn buffered(&self) -> usize {
        self.hs_input.len()
            + self.hs_out.len()
            + (self.up_in.len() - self.up_in_start)
            + (self.up_plain.len() - self.up_plain_start)
            + self
                .batches
                .iter()
                .map(|b| b.cipher.len() - b.sent)
                .sum::<usize>()
    }

    // ------------------------------------------------------------------
    // Input.

    /// A segment from the client.
    pub fn handle_front(&mut self, now: Instant, seg: &TcpRepr<'_>) {
        let seg = if self.adopted {
            clamp_ack(&self.front, seg)
        } else {
            *seg
        };
        let (seg, held) = ack_of_held_bytes(&self.front, &seg);
        self.front.handle_segment(now, &seg);
        if held {
            // Answer as for a duplicate: an ACK with SACK blocks tells the
            // peer what we hold, so that it sends what is missing.
            self.front.nudge();
        }
        self.progress(now);
    }

    /// A segment from the backend.
    pub fn handle_back(&mut self, now: Instant, seg: &TcpRepr<'_>) {
        if let Some(back) = self.back.as_mut() {
            let seg = if self.adopted {
                clamp_ack(back, seg)
            } else {
                *seg
            };
            let (seg, held) = ack_of_held_bytes(back, &seg);
            back.handle_segment(now, &seg);
            if held {
                back.nudge();
            }
        }
        self.progress(now);
    }

    /// Seals what the backend sent even if it does not fill a record (with
    /// [`FlowConfig::coalesce`], call it after each batch of segments).
    pub fn flush(&mut self, now: Instant) {
        self.flush_now = true;
        self.progress(now);
        self.flush_now = false;
    }

    /// The earliest instant [`handle_timeout`](Self::handle_timeout) must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.front.poll_timeout();
        for c in [
            self.back.as_ref().and_then(Connection::poll_timeout),
            self.hs_deadline,
            self.close_deadline,
        ]
        .into_iter()
        .flatten()
        {
            t = Some(t.map_or(c, |t| t.min(c)));
        }
        t
    }

    /// Runs the timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.front.poll_timeout().is_some_and(|t| t <= now) {
            self.front.handle_timeout(now);
        }
        if let Some(back) = self.back.as_mut()
            && back.poll_timeout().is_some_and(|t| t <= now)
        {
            back.handle_timeout(now);
        }
        if self.hs_deadline.is_some_and(|t| t <= now) {
            self.hs_deadline = None;
            tracing::debug!(id = %self.id, "handshake timed out");
            self.front.abort();
            self.end(CloseReason::HandshakeTimeout);
        }
        if self.close_deadline.is_some_and(|t| t <= now) && self.phase != Phase::Closed {
            self.close_deadline = None;
            tracing::debug!(id = %self.id, phase = self.phase.name(), "close timed out");
            self.end(CloseReason::CloseTimeout);
            self.front.abort();
            if let Some(back) = self.back.as_mut() {
                back.abort();
            }
        }
        self.progress(now);
    }

    /// The next thing the caller must do.
    pub fn poll_event(&mut self) -> Option<FlowEvent> {
        self.events.pop_front()
    }

    /// The pending handshake step, if one is ready (after
    /// [`FlowEvent::HandshakeReady`]).
    pub fn take_handshake(&mut self) -> Option<HandshakeJob> {
        if self.hs_input.is_empty() {
            return None;
        }
        let driver = self.hs.take()?;
        self.hs_ready_sent = false;
        Some(HandshakeJob {
            driver,
            input: std::mem::take(&mut self.hs_input),
        })
    }

    /// The result of a handshake step.
    pub fn handshake_done(&mut self, now: Instant, done: HandshakeDone) {
        if self.close_reason.is_some() {
            return;
        }
        self.hs_out.extend_from_slice(&done.output);
        if matches!(done.outcome, HandshakeOutcome::Complete(_)) {
            self.hs_tail = done.output.clone();
            self.hs_tail_off = self.client_next;
        }
        self.client_next += done.output.len() as u64;
        let consumed_end = self.front_rx_off - self.hs_input.len() as u64;
        match done.outcome {
            HandshakeOutcome::InProgress(driver) => {
                self.hs = Some(*driver);
                // Mid-handshake flows are not replicated: release at once.
                let _ = self
                    .front
                    .release_to(seq_at(self.front.irs() + 1, consumed_end));
            }
            HandshakeOutcome::Complete(est) => {
                let leftover = est.leftover.len() as u64;
                let hs_end = consumed_end.saturating_sub(leftover);
                let _ = self.front.release_to(seq_at(self.front.irs() + 1, hs_end));
                self.hs_deadline = None;
                match RecordLayer::new(est.traffic) {
                    Ok(layer) => {
                        // The full checkpoint starts here: every record after
                        // the client's Finished is still unreleased.
                        self.up_base = Some(UpPoint {
                            client_off: hs_end,
                            plain_off: 0,
                            read: layer.traffic_state().read.clone(),
                            close_notify: false,
                            partial: Vec::new(),
                            fin: false,
                        });
                        self.records = Some(layer);
                    }
                    Err(e) => {
                        tracing::debug!(id = %self.id, error = %e, "record layer refused the handshake's state");
                        self.front.abort();
                        self.end(CloseReason::HandshakeFailed);
                        self.progress(now);
                        return;
                    }
                }
                // Bytes that came while the step ran follow the leftover.
                let mut input = est.leftover;
                input.append(&mut self.hs_input);
                self.up_in = input;
                self.up_in_start = 0;
                self.up_in_off = hs_end;
                self.phase = Phase::Connecting;
                self.events
                    .push_back(FlowEvent::NeedBackend(est.info.clone()));
                self.info = Some(est.info);
            }
            HandshakeOutcome::Failed(e) => {
                tracing::debug!(id = %self.id, error = %e, input = done.input_len, "handshake failed");
                self.hs_input.clear();
                // The output holds rustls' alert: queue it before the FIN.
                self.push_front();
                self.front.close();
                self.end(CloseReason::HandshakeFailed);
            }
        }
        self.progress(now);
    }

    /// Opens the backend connection (after [`FlowEvent::NeedBackend`]).
    pub fn connect_backend(
        &mut self,
        now: Instant,
        tuple: FourTuple,
        secret: &IsnSecret,
        meta: FlowMeta,
    ) -> Result<(), FlowError> {
        if self.back.is_some() || self.records.is_none() {
            return Err(FlowError::Usage(
                "connect_backend before the handshake completed",
            ));
        }
        let back = Connection::connect(self.cfg.back.clone(), tuple, secret, now)?;
        self.back_una = Some(Tracker::new(back.iss() + 1, 0));
        self.back = Some(back);
        self.meta = Some(meta);
        self.progress(now);
        Ok(())
    }

    /// No backend for this flow: the client gets an `internal_error` alert
    /// and a close.
    pub fn refuse(&mut self, now: Instant) {
        self.fail_downstream(AlertDescription::InternalError, CloseReason::NoBackend);
        self.progress(now);
    }

    /// Aborts both connections (operator action or relay shutdown).
    pub fn abort(&mut self, now: Instant) {
        self.front.abort();
        if let Some(back) = self.back.as_mut() {
            back.abort();
        }
        self.end(CloseReason::Aborted);
        self.progress(now);
    }

    /// The next commit to hand to the outbox.
    pub fn poll_commit(&mut self) -> Option<(CommitNo, FlowCheckpoint)> {
        self.commits_out.pop_front()
    }

    /// The next commit, without its checkpoint (with
    /// `FlowConfig::checkpoints` off).
    pub fn poll_commit_no(&mut self) -> Option<CommitNo> {
        self.commit_nos.pop_front()
    }

    /// The outbox acknowledged commit `no` (and every earlier one). Returns
    /// the commit's latency.
    pub fn handle_commit_ack(&mut self, now: Instant, no: CommitNo) -> Option<Duration> {
        let mut latency = None;
        while self.in_flight.front().is_some_and(|c| c.no <= no) {
            let Some(c) = self.in_flight.pop_front() else {
                break;
            };
            latency = Some(now.saturating_duration_since(c.at));
            self.apply_commit(&c);
        }
        self.progress(now);
        latency
    }

    /// The next segment for the client.
    pub fn poll_front_transmit<'b>(
        &mut self,
        now: Instant,
        buf: &'b mut [u8],
    ) -> Option<TcpRepr<'b>> {
        self.front.poll_transmit(now, buf)
    }

    /// The next segment for the backend.
    pub fn poll_back_transmit<'b>(
        &mut self,
        now: Instant,
        buf: &'b mut [u8],
    ) -> Option<TcpRepr<'b>> {
        self.back.as_mut()?.poll_transmit(now, buf)
    }

    // ------------------------------------------------------------------
    // The machinery.

    fn end(&mut self, reason: CloseReason) {
        if self.close_reason.is_none() {
            self.close_reason = Some(reason);
        }
    }

    fn fail_downstream(&mut self, alert: AlertDescription, reason: CloseReason) {
        self.end(reason);
        if self.fail_alert.is_none() && !self.close_planned {
            self.fail_alert = Some(alert);
        }
    }

    fn progress(&mut self, now: Instant) {
        self.engine_events();
        match self.phase {
            Phase::Handshake => self.pump_handshake(),
            Phase::Closed => return,
            _ => {}
        }
        self.push_front();
        if self.records.is_some() {
            self.pump_upstream();
            self.pump_downstream();
            // Before the commit decision: a replayed batch sealed just now
            // is released already, and the client may have acknowledged
            // all of it (it had the bytes from the old relay), which moves
            // the down point in this very commit.
            self.push_front();
            self.maybe_commit(now);
            self.pump_upstream();
        }
        self.engine_events();
        if !self.replicated && self.close_reason.is_some() {
            // Nothing will adopt a dying flow: acknowledge what is left so
            // both closes complete.
            let _ = self.front.release_to(self.front.rcv_nxt());
            if let Some(back) = self.back.as_mut() {
                let _ = back.release_to(back.rcv_nxt());
            }
        }
        if self.replicated {
            // Keep the last exportable state of each engine (see
            // `export_or_last`).
            if let Ok(c) = self.front.export_checkpoint() {
                self.front_ck = Some(c);
            }
            if let Some(Ok(c)) = self.back.as_ref().map(Connection::export_checkpoint) {
                self.back_ck = Some(c);
            }
        }
        self.check_done();
        if self.phase != Phase::Closed
            && (self.phase == Phase::Closing || self.close_reason.is_some())
        {
            // An idle timer, like HAProxy's `timeout client-fin`: a
            // half-closed flow that still moves bytes (a slow download
            // after the client's FIN) lives on.
            let at = self.close_point();
            if self.close_deadline.is_none() || at != self.close_progress {
                self.close_progress = at;
                self.close_deadline = Some(now + self.cfg.close_timeout);
            }
        }
    }

    /// Where both engines stand in sequence space, both ways.
    fn close_point(&self) -> [u32; 4] {
        let front = [self.front.snd_una().0, self.front.rcv_nxt().0];
        let back = self
            .back
            .as_ref()
            .map_or([0, 0], |b| [b.snd_una().0, b.rcv_nxt().0]);
        [front[0], front[1], back[0], back[1]]
    }

    fn engine_events(&mut self) {
        while let Some(e) = self.front.poll_event() {
            match e {
                Event::Acked => {
                    self.front_una.update(self.front.snd_una());
                }
                Event::PeerClosed => self.front_fin = true,
                Event::Reset => {
                    // A client that sent close_notify and then reset (its
                    // socket was closed with our close_notify unread) ended
                    // in order.
                    self.end(if self.up_eof {
                        CloseReason::Normal
                    } else {
                        CloseReason::ClientReset
                    });
                    if let Some(back) = self.back.as_mut() {
                        back.abort();
                    }
                }
                Event::TimedOut => {
                    self.end(CloseReason::ClientTimeout);
                    if let Some(back) = self.back.as_mut() {
                        back.abort();
                    }
                }
                Event::Connected | Event::Readable | Event::Closed => {}
            }
        }
        let mut back_failed = None;
        if let Some(back) = self.back.as_mut() {
            while let Some(e) = back.poll_event() {
                match e {
                    Event::Connected => {
                        if self.phase == Phase::Connecting {
                            self.phase = Phase::Open;
                        }
                    }
                    Event::Acked => {
                        if let Some(t) = self.back_una.as_mut() {
                            t.update(back.snd_una());
                        }
                    }
                    Event::PeerClosed => self.back_eof = true,
                    Event::Reset => {
                        back_failed = Some(if self.phase == Phase::Connecting {
                            CloseReason::BackendRefused
                        } else {
                            CloseReason::BackendReset
                        });
                    }
                    Event::TimedOut => back_failed = Some(CloseReason::BackendTimeout),
                    Event::Readable | Event::Closed => {}
                }
            }
        }
        if let Some(reason) = back_failed
            && self.close_reason.is_none()
        {
            tracing::debug!(id = %self.id, reason = reason.label(), "backend failed");
            self.fail_downstream(AlertDescription::InternalError, reason);
        }
    }

    fn pump_handshake(&mut self) {
        let (a, b) = self.front.readable();
        let n = a.len() + b.len();
        if n > 0 {
            self.hs_input.extend_from_slice(a);
            self.hs_input.extend_from_slice(b);
            self.front.consume(n);
            self.front_rx_off += n as u64;
        }
        if self.front_fin
            && self.hs.is_some()
            && self.hs_input.is_empty()
            && self.close_reason.is_none()
        {
            // The client closed, and what it sent before its FIN did not
            // finish the handshake: it gave up. (A client may send its
            // Finished, a request and its FIN in one burst: that input is
            // handshaken first.)
            self.front.close();
            self.end(CloseReason::HandshakeFailed);
        }
        if !self.hs_input.is_empty()
            && self.hs.is_some()
            && !self.hs_ready_sent
            && self.close_reason.is_none()
        {
            self.hs_ready_sent = true;
            self.events.push_back(FlowEvent::HandshakeReady);
        }
    }

    fn push_front(&mut self) {
        if !self.hs_out.is_empty() {
            // While handshake output waits, it ends the stream planned so
            // far. After an adoption the client may have acknowledged the
            // tail the old relay sent: skip what it has.
            let end = self.front_una.update(self.front.snd_una()) + self.front.send_queue() as u64;
            let start = self.client_next - self.hs_out.len() as u64;
            if start < end {
                let skip = ((end - start) as usize).min(self.hs_out.len());
                self.hs_out.drain(..skip);
            }
            let n = self.front.send(&self.hs_out);
            self.hs_out.drain(..n);
            if !self.hs_out.is_empty() {
                return;
            }
        }
        for b in self.batches.iter_mut().filter(|b| !b.done) {
            if !b.released {
                return;
            }
            // After an adoption the client may acknowledge bytes the old
            // relay sent before we hand them back (the engine's stream then
            // starts past them): skip what it already has.
            let end = self.front_una.update(self.front.snd_una()) + self.front.send_queue() as u64;
            let pos = b.plan.client_off + b.sent as u64;
            if pos < end {
                b.sent = (end - b.plan.client_off).min(b.cipher.len() as u64) as usize;
            }
            let n = self.front.send(&b.cipher[b.sent..]);
            b.sent += n;
            if b.sent < b.cipher.len() {
                return;
            }
            b.cipher = Vec::new();
            b.sent = 0;
            b.done = true;
            if b.plan.close {
                self.front_close_owed = true;
            }
        }
        // Our FIN waits while the client's FIN is in but not released: the
        // engine would go LAST-ACK -> CLOSED on the ACK of our FIN with the
        // client's bytes and FIN still unacknowledged (and answer their
        // retransmission with a RST).
        if self.front_close_owed
            && !self.front_close_sent
            && (self.close_reason.is_some() || !fin_unreleased(&self.front, self.front_fin))
        {
            self.front_close_sent = true;
            self.front.close();
        }
    }

    fn pump_upstream(&mut self) {
        let Some(mut layer) = self.records.take() else {
            return;
        };
        self.pump_upstream_with(&mut layer);
        self.records = Some(layer);
    }

    fn pump_upstream_with(&mut self, layer: &mut RecordLayer) {
        // Client bytes into the reassembly buffer (the release point stays).
        let (a, b) = self.front.readable();
        let n = a.len() + b.len();
        if n > 0 {
            if self.up_in_start > 0 && self.up_in_start * 2 >= self.up_in.len() {
                self.up_in.drain(..self.up_in_start);
                self.up_in_start = 0;
            }
            self.up_in.extend_from_slice(a);
            self.up_in.extend_from_slice(b);
            self.front.consume(n);
            self.front_rx_off += n as u64;
        }
        loop {
            // Plaintext into the backend engine.
            if let Some(back) = self.back.as_mut()
                && self.up_plain_start < self.up_plain.len()
            {
                // As in `push_front`: after an adoption, skip plaintext the
                // backend acknowledged before we could hand it back.
                if let Some(t) = self.back_una.as_mut() {
                    let end = t.update(back.snd_una()) + back.send_queue() as u64;
                    let left = self.up_plain.len() - self.up_plain_start;
                    let next = self.up_plain_total - left as u64;
                    if next < end {
                        self.up_plain_start += (end - next).min(left as u64) as usize;
                    }
                }
                let n = back.send(&self.up_plain[self.up_plain_start..]);
                self.up_plain_start += n;
                self.stats.bytes_up += n as u64;
                if self.up_plain_start == self.up_plain.len() {
                    self.up_plain.clear();
                    self.up_plain_start = 0;
                }
            }
            if self.up_plain.len() - self.up_plain_start >= MAX_RECORD
                || self.up_eof
                || layer.is_failed()
                || self.close_reason.is_some()
            {
                break;
            }
            let rest = &self.up_in[self.up_in_start..];
            if rest.is_empty() {
                break;
            }
            let take = match deframe(rest, layer.version()) {
                Ok(Deframed::Record(h)) => relay_tls::deframe::RECORD_HEADER_LEN + h.len,
                Ok(Deframed::Incomplete { .. }) => break,
                Err(_) => rest.len(),
            };
            let out = layer.read(&rest[..take], &mut self.up_plain);
            self.up_in_start += out.consumed;
            self.up_in_off += out.consumed as u64;
            self.up_plain_total += out.plaintext as u64;
            self.stats.records_up += out.records as u64;
            if out.records > 0 {
                self.up_pending.push_back(Pending {
                    client_end: self.up_in_off,
                    plain_end: self.up_plain_total,
                    read_after: layer.traffic_state().read.clone(),
                    close_notify: out.status == ReadStatus::CloseNotify,
                });
            }
            match out.status {
                ReadStatus::NeedMore { .. } => {
                    if out.consumed == 0 {
                        break;
                    }
                }
                ReadStatus::CloseNotify => {
                    self.up_eof = true;
                }
                ReadStatus::Violation(v) => {
                    tracing::debug!(id = %self.id, violation = ?v, "client broke the record protocol");
                    self.end(CloseReason::TlsViolation);
                    if let Some(back) = self.back.as_mut() {
                        back.abort();
                    }
                    // The layer queued the fatal alert: a close batch seals it.
                    self.fail_alert = self.fail_alert.or(Some(v.alert()));
                    break;
                }
                ReadStatus::PeerAlert(desc) => {
                    tracing::debug!(id = %self.id, alert = ?desc, "client sent a fatal alert");
                    self.end(CloseReason::ClientAlert);
                    self.front.close();
                    self.front_close_sent = true;
                    if let Some(back) = self.back.as_mut() {
                        back.abort();
                    }
                    break;
                }
                ReadStatus::Dead => break,
            }
        }
        // A FIN without close_notify: the client is done (truncation).
        if self.front_fin && !self.up_eof && self.close_reason.is_none() {
            let rest = &self.up_in[self.up_in_start..];
            let complete = matches!(deframe(rest, layer.version()), Ok(Deframed::Record(_)));
            if !complete {
                self.up_eof = true;
            }
        }
        if self.up_eof
            && !self.back_close_sent
            && self.up_plain_start == self.up_plain.len()
            && let Some(back) = self.back.as_mut()
            // Not before the backend connection is up: `close` in SYN-SENT
            // abandons the connection (with the client's bytes queued).
            && back.state() != State::SynSent
            // As for the front (`push_front`): not while the backend's FIN
            // is in but not released.
            && (self.close_reason.is_some() || !fin_unreleased(back, self.back_eof))
        {
            // A replicated flow commits the FIN first: an adopter that does
            // not know of it would close differently (LAST-ACK instead of
            // CLOSING) from what the backend saw.
            if !self.replicated || self.close_reason.is_some() || self.back_close_allowed {
                back.close();
                self.back_close_sent = true;
            } else {
                self.back_close_wanted = true;
            }
        }
    }

    fn pump_downstream(&mut self) {
        let Some(mut layer) = self.records.take() else {
            return;
        };
        self.pump_downstream_with(&mut layer);
        self.records = Some(layer);
    }

    fn pump_downstream_with(&mut self, layer: &mut RecordLayer) {
        // An adopted flow whose checkpoint carries the close batch has
        // `close_planned` set already: the replay still has to run.
        if self.close_planned && self.replay.is_empty() {
            return;
        }
        let failing = self.fail_alert.is_some();
        if !failing && (!self.replicated || self.close_reason.is_some()) {
            return;
        }
        loop {
            let pending_cipher: usize = self.batches.iter().map(|b| b.cipher.len() - b.sent).sum();
            let room = self
                .front
                .send_capacity()
                .saturating_sub(pending_cipher + self.hs_out.len() + CONTROL_ROOM);
            if failing {
                if let Some(alert) = self.fail_alert
                    && !layer.is_failed()
                {
                    layer.send_alert(alert);
                }
                let state_before = layer.traffic_state().clone();
                let mut cipher = Vec::new();
                let _ = layer.poll_transmit(&mut cipher);
                self.plan_batch(state_before, Vec::new(), cipher, true, true);
                self.close_planned = true;
                return;
            }
            // Batches from a checkpoint come first, sealed exactly as planned.
            if let Some(plan) = self.replay.front() {
                if self.back.is_none() {
                    return;
                }
                // Seal the records whose plaintext is all here; the rest of
                // the batch waits, as a batch of its own (same records, same
                // bytes). Waiting for the whole batch could wait forever: the
                // backend fills a hole past the first record only once some
                // of it is acknowledged, which needs the records sent.
                let avail = self.down_avail();
                let mut whole = 0;
                let mut len = 0;
                for &s in &plan.sizes {
                    if len + usize::from(s) > avail {
                        break;
                    }
                    len += usize::from(s);
                    whole += 1;
                }
                if whole == 0 && !plan.sizes.is_empty() {
                    return;
                }
                let plain = self.down_take(len);
                let Some(mut plan) = self.replay.pop_front() else {
                    return;
                };
                let rest_sizes = plan.sizes.split_off(whole);
                let rest_close = plan.close && !rest_sizes.is_empty();
                if rest_close {
                    plan.close = false;
                }
                let traffic = merge_traffic(layer.traffic_state(), &plan.state_before);
                let Ok(mut fresh) = RecordLayer::new(traffic) else {
                    self.fail_downstream(AlertDescription::InternalError, CloseReason::Aborted);
                    return;
                };
                let sizes: Vec<usize> = plan.sizes.iter().map(|&s| usize::from(s)).collect();
                let mut cipher = Vec::new();
                let sealed = if sizes.is_empty() {
                    fresh.poll_transmit(&mut cipher)
                } else {
                    fresh.seal(&plain, &sizes, &mut cipher)
                };
                if plan.close {
                    fresh.close();
                    let _ = fresh.poll_transmit(&mut cipher);
                    self.close_planned = true;
                }
                *layer = fresh;
                if let Ok(s) = sealed {
                    self.stats.records_down += s.records as u64;
                }
                self.stats.bytes_down += len as u64;
                let client_end = plan.client_off + cipher.len() as u64;
                self.client_next = client_end;
                if !rest_sizes.is_empty() {
                    self.replay.push_front(PlannedBatch {
                        state_before: layer.traffic_state().clone(),
                        client_off: client_end,
                        plain_off: plan.plain_off + len as u64,
                        sizes: rest_sizes,
                        close: rest_close,
                    });
                }
                let close = plan.close;
                self.batches.push_back(Batch {
                    plan,
                    client_end,
                    cipher,
                    sent: 0,
                    done: false,
                    released: true,
                    commit: None,
                });
                if self.replay.is_empty()
                    && let Some(end) = self.replay_end.take()
                    && let Ok(l) = RecordLayer::new(merge_traffic(layer.traffic_state(), &end))
                {
                    *layer = l;
                }
                if close {
                    return;
                }
                continue;
            }
            if self.back.is_none() {
                return;
            }
            let avail = self.down_avail();
            let close_now = self.back_eof && avail == 0;
            if avail == 0 && !layer.wants_transmit() && !close_now {
                return;
            }
            if self.cfg.coalesce
                && !self.flush_now
                && avail < self.cfg.max_record
                && !close_now
                && !layer.wants_transmit()
            {
                return;
            }
            let records_fit = room / (MAX_RECORD + RECORD_OVERHEAD) + 1;
            let fit = room.saturating_sub(records_fit * RECORD_OVERHEAD);
            let n = avail.min(self.cfg.max_batch).min(fit);
            if n == 0 && avail > 0 {
                return;
            }
            let plain = self.down_take(n);
            let sizes = plan_records(n, self.cfg.max_record);
            let state_before = layer.traffic_state().clone();
            let mut cipher = Vec::new();
            let sealed = if n == 0 {
                layer.poll_transmit(&mut cipher)
            } else {
                layer.seal(&plain, &sizes, &mut cipher)
            };
            match sealed {
                Ok(s) => self.stats.records_down += s.records as u64,
                Err(e) => {
                    tracing::debug!(id = %self.id, error = %e, "sealing failed");
                    self.fail_downstream(AlertDescription::InternalError, CloseReason::Aborted);
                    return;
                }
            }
            let close = close_now;
            if close {
                layer.close();
                let _ = layer.poll_transmit(&mut cipher);
                self.close_planned = true;
            }
            self.stats.bytes_down += n as u64;
            let sizes = sizes.into_iter().map(|s| s as u16).collect();
            self.plan_batch(state_before, sizes, cipher, close, false);
            if close {
                return;
            }
        }
    }

    fn plan_batch(
        &mut self,
        state_before: TrafficState,
        sizes: Vec<u16>,
        cipher: Vec<u8>,
        close: bool,
        failing: bool,
    ) {
        let client_off = self.client_next;
        let plain_off = self.down_read_off - sizes.iter().map(|&s| u64::from(s)).sum::<u64>();
        let client_end = client_off + cipher.len() as u64;
        self.client_next = client_end;
        // Before the flow is replicated nothing can adopt it, and a failing
        // flow is not worth adopting: no commit.
        let released = !self.replicated || failing;
        self.batches.push_back(Batch {
            plan: PlannedBatch {
                state_before,
                client_off,
                plain_off,
                sizes,
                close,
            },
            client_end,
            cipher,
            sent: 0,
            done: false,
            released,
            commit: None,
        });
        if !released {
            self.planned_uncommitted = true;
        }
    }

    /// The upstream point every byte before which the backend holds.
    fn up_candidate(&self) -> Option<UpPoint> {
        let back = self.back.as_ref()?;
        let acked = self.back_una.map_or(0, |t| t.off).min(self.up_plain_total);
        let mut cand: Option<&Pending> = None;
        let mut all = true;
        for p in &self.up_pending {
            if p.plain_end <= acked {
                cand = Some(p);
            } else {
                all = false;
                break;
            }
        }
        let base = self.up_base.as_ref()?;
        // The base may end inside a record (a released partial record):
        // until a record ending at or after it is acknowledged, the point
        // stays there, partial bytes included (without them the release
        // point would be mid-record with nothing to complete the record,
        // and an adopter would deframe from the middle of it).
        let mut point = match cand {
            Some(p) if p.client_end >= base.client_off => UpPoint {
                client_off: p.client_end,
                plain_off: p.plain_end,
                read: p.read_after.clone(),
                close_notify: p.close_notify || base.close_notify,
                partial: Vec::new(),
                fin: false,
            },
            _ => base.clone(),
        };
        if all && self.up_plain_start == self.up_plain.len() {
            let rest = &self.up_in[self.up_in_start..];
            // At most one segment's worth is held back: a client whose
            // window collapsed (after a timeout, or a move to another relay)
            // sends one segment per timeout from its `snd_una`, and when the
            // SACK blocks are taken by out-of-order ranges it never learns
            // that later in-order bytes arrived: with a higher threshold the
            // record would never complete and nothing would be acknowledged.
            // (Half a segment: segments carrying SACK blocks have less room.)
            let threshold = self
                .cfg
                .partial_release
                .min(self.front.effective_mss() / 2)
                .max(1);
            let partial_ok = rest.len() <= MAX_PARTIAL
                && (rest.len() >= threshold
                    || base.partial.len() >= rest.len() && !rest.is_empty())
                && !self.up_eof;
            if partial_ok {
                point.partial = rest.to_vec();
                point.client_off = self.up_in_off + rest.len() as u64;
            }
            // The client's FIN is released once the backend has ours.
            let back_fin_acked = self.back_close_sent
                && matches!(
                    back.state(),
                    State::FinWait2 | State::TimeWait | State::Closed
                );
            if self.front_fin && rest.is_empty() && back_fin_acked {
                point.fin = true;
            }
        }
        Some(point)
    }

    fn down_candidate(&self) -> Option<DownPoint> {
        let base = self.down_base?;
        let acked = self.front_una.off;
        let mut point = base;
        for b in &self.batches {
            if !b.done || b.client_end > acked {
                break;
            }
            point.client_off = b.client_end;
            point.plain_off = b.plan.plain_off + b.plan.plaintext_len();
            if b.plan.close && self.back_eof {
                point.fin = true;
            }
        }
        // A replaying adopter acknowledges the backend's segments as they
        // come (a backend in retransmission-timeout recovery sends the next
        // segment only when one is acknowledged), carrying their plaintext
        // in the checkpoint until the client has the records.
        if !self.replay.is_empty() && self.down_holding && self.down_held_off <= point.plain_off {
            let readable_end = self.down_read_off + self.down_avail() as u64;
            let end = readable_end.min(point.plain_off + MAX_DOWN_PARTIAL as u64);
            point.partial_end = point.partial_end.max(end);
        }
        Some(point)
    }

    /// Backend plaintext ready to read: the adopted prefix, then the back
    /// engine's bytes.
    fn down_avail(&self) -> usize {
        let engine = self.back.as_ref().map_or(0, |b| {
            let (a, b) = b.readable();
            a.len() + b.len()
        });
        self.down_prefix.len() + engine
    }

    /// Reads `n` bytes of backend plaintext (at most [`down_avail`]),
    /// keeping them while an adopter may acknowledge them early.
    fn down_take(&mut self, n: usize) -> Vec<u8> {
        let mut plain = Vec::with_capacity(n);
        let from_prefix = n.min(self.down_prefix.len());
        plain.extend(self.down_prefix.drain(..from_prefix));
        if let Some(back) = self.back.as_mut() {
            let want = n - plain.len();
            let (a, b) = back.readable();
            let first = want.min(a.len());
            plain.extend_from_slice(&a[..first]);
            let second = (want - first).min(b.len());
            plain.extend_from_slice(&b[..second]);
            back.consume(first + second);
        }
        if self.down_holding {
            self.down_held.extend(plain.iter().copied());
        }
        self.down_read_off += plain.len() as u64;
        plain
    }

    /// Backend plaintext `[from, to)`, from what was kept and what is
    /// still to read; `None` if some of it is neither.
    fn down_bytes(&self, from: u64, to: u64) -> Option<Vec<u8>> {
        if from >= to {
            return Some(Vec::new());
        }
        if from < self.down_held_off {
            return None;
        }
        let held_end = self.down_held_off + self.down_held.len() as u64;
        if held_end != self.down_read_off && to > held_end {
            return None;
        }
        let mut out = Vec::with_capacity((to - from) as usize);
        let skip = (from - self.down_held_off) as usize;
        let take = (to.min(held_end).saturating_sub(from)) as usize;
        out.extend(self.down_held.iter().skip(skip).take(take));
        let mut rest = (to - from) as usize - out.len();
        // Past what was read: the prefix, then the engine.
        let mut skip_unread = from.saturating_sub(self.down_read_off) as usize;
        let engine = self.back.as_ref().map(Connection::readable);
        let (a, b) = engine.unwrap_or((&[], &[]));
        let (p1, p2) = self.down_prefix.as_slices();
        for part in [p1, p2, a, b] {
            if rest == 0 {
                break;
            }
            let s = skip_unread.min(part.len());
            skip_unread -= s;
            let t = rest.min(part.len() - s);
            out.extend_from_slice(&part[s..s + t]);
            rest -= t;
        }
        (rest == 0).then_some(out)
    }

    fn maybe_commit(&mut self, now: Instant) {
        if !self.replicated {
            // (Closing too: a backend that answers and closes at once moves
            // the phase on before the client acknowledged our handshake
            // output; the flow must still become replicated to go on.)
            let ready = matches!(self.phase, Phase::Open | Phase::Closing)
                && self.close_reason.is_none()
                && self.hs_out.is_empty()
                && self.front_una.off >= self.hs_tail_off.min(self.client_next)
                && self.hs_tail_off + self.hs_tail.len() as u64 == self.client_next
                && self.batches.is_empty()
                && self.up_base.is_some()
                && self
                    .back
                    .as_ref()
                    .is_some_and(|b| b.state().is_synchronized() && b.state() != State::Closed);
            if !ready {
                return;
            }
            self.down_base = Some(DownPoint {
                client_off: self.client_next,
                plain_off: 0,
                partial_end: 0,
                fin: false,
            });
            self.replicated = true;
            self.events.push_back(FlowEvent::Replicated);
            self.commit(now, true);
            return;
        }
        if self.close_reason.is_some() && self.fail_alert.is_none() {
            return;
        }
        let (Some(up), Some(down)) = (self.up_candidate(), self.down_candidate()) else {
            return;
        };
        let Some(up_base) = self.up_base.as_ref() else {
            return;
        };
        let Some(down_base) = self.down_base else {
            return;
        };
        let up_moved = up.client_off > up_base.client_off || (up.fin && !up_base.fin);
        let down_moved = down.client_off > down_base.client_off
            || down.partial_end > down_base.partial_end
            || (down.fin && !down_base.fin);
        let close_back = self.back_close_wanted && self.back_close_commit.is_none();
        if up_moved || down_moved || self.planned_uncommitted || close_back {
            self.up_base = Some(up);
            self.down_base = Some(down);
            self.commit(now, false);
            self.trim_down_held(down);
        }
    }

    /// Drops kept plaintext no later checkpoint needs (before the down
    /// point just committed); stops keeping once nothing is replayed or
    /// acknowledged early any more.
    fn trim_down_held(&mut self, down: DownPoint) {
        if down.plain_off > self.down_held_off {
            let n = ((down.plain_off - self.down_held_off) as usize).min(self.down_held.len());
            self.down_held.drain(..n);
            self.down_held_off += n as u64;
        }
        if self.down_holding && self.replay.is_empty() && down.partial_end <= down.plain_off {
            self.down_holding = false;
            self.down_held.clear();
        }
    }

    fn commit(&mut self, now: Instant, full: bool) {
        let (Some(up), Some(down)) = (self.up_base.clone(), self.down_base) else {
            return;
        };
        let no = self.next_commit;
        self.next_commit = no.next();
        for b in self
            .batches
            .iter_mut()
            .filter(|b| !b.released && b.commit.is_none())
        {
            b.commit = Some(no);
        }
        self.planned_uncommitted = false;
        let close_back = self.back_close_wanted && self.back_close_commit.is_none();
        if close_back {
            self.back_close_commit = Some(no);
        }
        let built = if self.cfg.checkpoints {
            self.checkpoint(no, &up, &down).map(Some)
        } else {
            Ok(None)
        };
        match built {
            Ok(None) => {
                self.commit_nos.push_back(no);
                self.stats.commits += 1;
            }
            Ok(Some(ck)) => {
                self.commits_out.push_back((no, ck));
                self.stats.commits += 1;
            }
            Err(e) => {
                // Still a commit: one that never completes would hold
                // every byte behind it forever. Without a checkpoint the
                // peer cannot adopt the flow; it goes on unprotected.
                tracing::warn!(id = %self.id, error = %e, full, "checkpoint failed; flow not adoptable");
                self.commit_nos.push_back(no);
                self.stats.commits += 1;
            }
        }
        let c = InFlight {
            no,
            up,
            down,
            close_back,
            at: now,
        };
        self.in_flight.push_back(c);
    }

    fn checkpoint(
        &self,
        commit: CommitNo,
        up: &UpPoint,
        down: &DownPoint,
    ) -> Result<FlowCheckpoint, FlowError> {
        let back = self.back.as_ref().ok_or(FlowError::Usage("no backend"))?;
        let layer = self
            .records
            .as_ref()
            .ok_or(FlowError::Usage("no record layer"))?;
        let meta = self
            .meta
            .clone()
            .ok_or(FlowError::Usage("no backend chosen"))?;
        let mut front = export_or_last(&self.front, self.front_ck.as_ref())?;
        // Once this commit is acknowledged, this relay may send every batch
        // planned so far (and then its FIN): the client may have all of it
        // when an adopter takes over. The adopter's engine must know it
        // sent that much, or it drops the client's segments whole as ACKs
        // of unsent data, and the client drops its pure ACKs (whose
        // sequence number, `snd_max`, would lie behind what the client
        // received).
        // (While an adopter still replays, `client_next` is not the end of
        // the plan: the checkpoint it adopted gave that end.)
        let planned_end = if self.replay.is_empty() {
            Some(seq_at(self.front.iss() + 1, self.client_next))
        } else {
            self.replay_front_end
        };
        if let Some(planned_end) = planned_end {
            let fin_may_go =
                self.close_planned && self.fail_alert.is_none() && (!self.front_fin || up.fin);
            if fin_may_go && front.snd_fin.is_none() {
                front.snd_fin = Some(planned_end);
            }
            let top = front.snd_fin.map_or(planned_end, |f| f + 1);
            if top > front.snd_max {
                front.snd_max = top;
            }
        }
        let fin = u64::from(up.fin);
        set_receive(
            &mut front,
            seq_at(self.front.irs() + 1, up.client_off + fin),
            up.fin,
        );
        let hs_tail = self.hs_unacked(down.client_off);
        rewind_send(
            &mut front,
            seq_at(self.front.iss() + 1, down.client_off - hs_tail.len() as u64),
        );
        let mut back_ck = export_or_last(back, self.back_ck.as_ref())?;
        if self.back_close_commit.is_some() && back_ck.snd_fin.is_none() {
            // Committed FIN not sent yet: the adopter sends it after the
            // client's bytes it hands back.
            let fin = seq_at(back.iss() + 1, self.up_plain_total);
            back_ck.snd_fin = Some(fin);
            if fin + 1 > back_ck.snd_max {
                back_ck.snd_max = fin + 1;
            }
        }
        let down_partial = self
            .down_bytes(down.plain_off, down.released())
            .ok_or(FlowError::Usage("early-acknowledged plaintext not kept"))?;
        let fin = u64::from(down.fin);
        set_receive(
            &mut back_ck,
            seq_at(back.irs() + 1, down.released() + fin),
            down.fin,
        );
        let back_una = if up.fin {
            back_ck.snd_una
        } else {
            seq_at(back.iss() + 1, up.plain_off)
        };
        rewind_send(&mut back_ck, back_una);
        // An adopter that has not replayed every batch yet carries the rest
        // of the plan on, and the write state after it.
        let mut traffic = match &self.replay_end {
            Some(end) => merge_traffic(layer.traffic_state(), end),
            None => layer.traffic_state().clone(),
        };
        traffic.read = up.read.clone();
        traffic.received_close_notify = up.close_notify;
        let batches = self
            .batches
            .iter()
            // A close batch stays while its FIN is not committed, unless
            // the client has it all: an adopter learns of that close from
            // the write state (`sent_close_notify`), and a batch behind
            // the down point would make the checkpoint invalid.
            .filter(|b| {
                b.client_end > down.client_off
                    || (b.plan.close && !down.fin && b.plan.client_off >= down.client_off)
            })
            .map(|b| b.plan.clone())
            .chain(self.replay.iter().cloned())
            .collect();
        let ck = FlowCheckpoint {
            id: self.id,
            commit,
            front,
            back: back_ck,
            traffic,
            partial: up.partial.clone(),
            hs_tail,
            down_partial,
            up_client_off: up.client_off,
            up_plain_off: up.plain_off,
            down_client_off: down.client_off,
            down_plain_off: down.plain_off,
            batches,
            meta,
        };
        ck.validate()?;
        Ok(ck)
    }

    fn apply_commit(&mut self, c: &InFlight) {
        if c.close_back {
            // `pump_upstream` sends it once the engine may.
            self.back_close_allowed = true;
        }
        let fin = u64::from(c.up.fin);
        let before = self.front.release_point();
        let _ = self
            .front
            .release_to(seq_at(self.front.irs() + 1, c.up.client_off + fin));
        // Caught up with everything received: the sender may be waiting for
        // this ACK (Nagle, the end of a request); the release already cost
        // it a round trip, so do not add a delayed-ACK timeout to it.
        if self.front.release_point() != before
            && self.front.release_point() == self.front.rcv_nxt()
        {
            self.front.nudge();
        }
        while self
            .up_pending
            .front()
            .is_some_and(|p| p.client_end <= c.up.client_off)
        {
            self.up_pending.pop_front();
        }
        if let Some(back) = self.back.as_mut() {
            let fin = u64::from(c.down.fin);
            let before = back.release_point();
            let _ = back.release_to(seq_at(back.irs() + 1, c.down.released() + fin));
            if back.release_point() != before && back.release_point() == back.rcv_nxt() {
                back.nudge();
            }
        }
        while self
            .batches
            .front()
            .is_some_and(|b| b.done && b.client_end <= c.down.client_off)
        {
            self.batches.pop_front();
        }
        for b in self.batches.iter_mut() {
            if !b.released && b.commit.is_some_and(|n| n <= c.no) {
                b.released = true;
            }
        }
    }

    fn check_done(&mut self) {
        // TIME-WAIT counts as done only once the peer's FIN is released
        // (acknowledged): until then the peer keeps resending it and the
        // flow still owes the commit that releases it.
        let front_done = engine_done(&self.front);
        let back_done = self.back.as_ref().is_none_or(engine_done);
        if self.close_reason.is_some() && self.front.state() == State::Closed {
            // The client is gone: nothing is left to deliver to it.
            if let Some(back) = self.back.as_mut()
                && !matches!(back.state(), State::Closed | State::TimeWait)
            {
                back.abort();
            }
        }
        let back_done = back_done || self.back.as_ref().is_some_and(engine_done);
        if front_done && back_done && self.phase != Phase::Closed {
            self.phase = Phase::Closed;
            let reason = self.close_reason.unwrap_or(CloseReason::Normal);
            self.close_reason = Some(reason);
            if !self.closed_reported {
                self.closed_reported = true;
                self.events.push_back(FlowEvent::Closed(reason));
            }
        } else if self.phase == Phase::Open
            && (self.front_close_sent || self.back_close_sent || self.front_fin || self.back_eof)
        {
            self.phase = Phase::Closing;
        }
    }
}

/// An engine's checkpoint; for an engine that has closed (every byte and
/// FIN both ways acknowledged, nothing more to send), its last export with
/// the final `snd_una`: a commit made after that (the other side's release
/// points moving) still needs this side's state, and the caller rewinds
/// `snd_una` to what the adopter can re-supply.
impl Flow {
    /// The end of the handshake tail the client has not acknowledged, when
    /// it ends at `down_off` (the committed down point): what an adopter
    /// must send again before the first batch.
    fn hs_unacked(&self, down_off: u64) -> Vec<u8> {
        let end = self.hs_tail_off + self.hs_tail.len() as u64;
        let acked = self.front_una.off;
        if end != down_off || acked >= end || acked < self.hs_tail_off {
            return Vec::new();
        }
        self.hs_tail[(acked - self.hs_tail_off) as usize..].to_vec()
    }
}

fn export_or_last(
    c: &Connection,
    last: Option<&relay_tcp::Checkpoint>,
) -> Result<relay_tcp::Checkpoint, FlowError> {
    match c.export_checkpoint() {
        Ok(ck) => Ok(ck),
        Err(e) => match last {
            Some(last) if c.state() == State::Closed && last.snd_fin.is_some() => {
                let mut ck = last.clone();
                ck.snd_una = c.snd_una();
                ck.snd_max = c.snd_max();
                Ok(ck)
            }
            _ => Err(e.into()),
        },
    }
}

/// Most an adopted engine's peer may acknowledge past what the engine knows
/// it sent (see `clamp_ack`): the old relay sent at most a send buffer of
/// planned records, or the plaintext of a receive window of client bytes.
const ADOPTED_ACK_SLACK: usize = 16 << 20;

/// A segment for an adopted engine with its ACK clamped to what the engine
/// has (sent or been handed back). The old relay sent bytes after the
/// checkpoint (records of batches it carries, plaintext of client records
/// opened after it) that the peer acknowledges before the adopter could
/// hand them back: the engine would drop such a segment whole as an ACK of
/// unsent data (RFC 5961 (5.2)), data included, and each side would wait
/// for the other's bytes to hand back its own. The peer repeats its
/// cumulative ACK on every segment, so nothing is lost by taking less now.
fn clamp_ack<'a>(c: &Connection, seg: &TcpRepr<'a>) -> TcpRepr<'a> {
    let mut s = *seg;
    if s.flags.ack() && c.state().is_synchronized() {
        let end = c.snd_una() + c.send_queue();
        let top = if end > c.snd_max() { end } else { c.snd_max() };
        if s.ack_number > top && s.ack_number <= top + ADOPTED_ACK_SLACK {
            s.ack_number = top;
        }
    }
    s
}

/// A segment that only repeats bytes (and FIN) the engine holds but has not
/// released, as a pure ACK at `rcv_nxt`. The peer resends them because
/// they are not acknowledged; the engine judges acceptability from its
/// `rcv_nxt` (past them) and would drop the segment whole as old data, ACK
/// field included. A peer that has nothing else to send (go-back-N after a
/// timeout) then never gets its ACK through: here the relay waits for the
/// ACK of its own bytes before it can commit, and the commit is what
/// releases the peer's bytes. Nothing is lost: the engine has the bytes.
fn ack_of_held_bytes<'a>(c: &Connection, seg: &TcpRepr<'a>) -> (TcpRepr<'a>, bool) {
    let mut s = *seg;
    if s.flags.ack()
        && !s.flags.syn()
        && !s.flags.rst()
        && s.segment_len() > 0
        && c.state().is_synchronized()
        && s.seq_number >= c.release_point()
        && s.seq_number + s.segment_len() <= c.rcv_nxt()
    {
        s.seq_number = c.rcv_nxt();
        s.payload = &[];
        s.flags = relay_tcp::TcpFlags::ACK;
        return (s, true);
    }
    (s, false)
}

/// The peer's FIN has arrived (`peer_fin`) but the release point is not
/// past it yet.
fn fin_unreleased(c: &Connection, peer_fin: bool) -> bool {
    peer_fin && c.release_point() != c.rcv_nxt()
}

/// Whether an engine has nothing left to do for the flow: closed, or in
/// TIME-WAIT with the peer's FIN released.
fn engine_done(c: &Connection) -> bool {
    match c.state() {
        State::Closed => true,
        State::TimeWait => c.release_point() == c.rcv_nxt(),
        _ => false,
    }
}

/// The read half (and what was received) of `current` with the write half
/// (and what is owed) of `write`.
fn merge_traffic(current: &TrafficState, write: &TrafficState) -> TrafficState {
    TrafficState {
        version: current.version,
        suite: current.suite,
        read: current.read.clone(),
        write: write.write.clone(),
        received_close_notify: current.received_close_notify,
        sent_close_notify: write.sent_close_notify,
        failed: false,
        pending: write.pending.clone(),
    }
}

/// Sets the release point of a checkpoint (and whether the peer's FIN is
/// inside it).
fn set_receive(ck: &mut relay_tcp::Checkpoint, rel: SeqNumber, fin: bool) {
    ck.rcv_rel = rel;
    if rel > ck.rcv_adv {
        ck.rcv_adv = rel;
    }
    ck.state = checkpoint_state(ck.snd_fin.is_some(), fin_acked(ck), fin);
}

/// Moves a checkpoint's `snd_una` back to a record boundary the adopter
/// can re-supply bytes from (the peer acknowledges them again).
fn rewind_send(ck: &mut relay_tcp::Checkpoint, una: SeqNumber) {
    if una < ck.snd_una {
        ck.snd_una = una;
    }
    let peer_fin = matches!(
        ck.state,
        State::CloseWait | State::Closing | State::LastAck | State::TimeWait
    );
    ck.state = checkpoint_state(ck.snd_fin.is_some(), fin_acked(ck), peer_fin);
}

fn fin_acked(ck: &relay_tcp::Checkpoint) -> bool {
    ck.snd_fin.is_some_and(|f| ck.snd_una > f)
}

fn checkpoint_state(sent_fin: bool, acked: bool, peer_fin: bool) -> State {
    match (sent_fin, acked, peer_fin) {
        (false, _, false) => State::Established,
        (false, _, true) => State::CloseWait,
        (true, false, false) => State::FinWait1,
        (true, false, true) => State::LastAck,
        (true, true, false) => State::FinWait2,
        (true, true, true) => State::TimeWait,
    }
}
