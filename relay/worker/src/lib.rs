//! relay-worker: the packet loop. One worker serves one rx queue of the
//! front and back interfaces: it demultiplexes frames to flows, runs their
//! timers, commits their state and sends what they emit. No async runtime:
//! one thread, batches from the devices, `poll(2)` when idle. TLS handshakes
//! run on a helper thread so that one slow handshake never stalls the data
//! of other flows.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod metrics;
pub mod replicate;

use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use relay_control::backends::BackendPool;
use relay_datapath::{Device, DeviceError};
use relay_flow::{
    CloseReason, Flow, FlowCheckpoint, FlowConfig, FlowEvent, FlowId, FlowMeta, FlowStats,
    HandshakeDone, HandshakeJob, LocalCommit, Outbox, RelayId,
};
use relay_tcp::{FourTuple, Instant, IsnSecret, Listener, TcpRepr};
use relay_tls::TlsServerConfig;
use relay_wire::{EtherType, EthernetAddress, EthernetRepr, IpProtocol, Ipv4Repr, TcpFrame};

pub use metrics::{DeviceMetrics, RelayMetrics};
pub use replicate::{
    Commits, Replication, ReplicationFigures, ReplicationSnapshot, protection_name,
};

/// What the control plane asks of a worker about a dead peer's flows.
#[derive(Debug)]
pub enum AdoptCommand {
    /// Carry these flows on here.
    Adopt(Vec<Adoption>),
    /// The adopted flows' addresses now point here: ask every adopted
    /// flow's client and backend to retransmit at once.
    Nudge,
    /// A handoff begins: stop serving every flow, not a segment in or out,
    /// so that the peer carries each on from its last commit (which, by
    /// the commit rule, covers everything sent). The worker sets
    /// [`Shared::frozen`] once it has stopped.
    Freeze,
    /// The handoff failed: serve the frozen flows again.
    Thaw,
    /// The peer carries the frozen flows now: drop them without a word to
    /// their clients or backends.
    DropFrozen,
}

/// A flow a peer relay committed to us, to carry on here (its relay died or
/// handed it over), with the link-layer addresses of its two peers.
#[derive(Debug)]
pub struct Adoption {
    /// The last state the old relay committed.
    pub checkpoint: FlowCheckpoint,
    /// How long the old relay may have run after that commit.
    pub elapsed: Duration,
    /// The client's MAC (as this relay's kernel resolved it).
    pub client_mac: [u8; 6],
    /// The backend's MAC.
    pub backend_mac: [u8; 6],
}

/// Client MACs remembered at most (a flood of spoofed sources resets it).
const MAX_FRONT_MACS: usize = 65536;

/// Most frames taken from each rx ring per loop.
const RX_BATCH: usize = 256;

/// Adopted flows nudged at once: each may answer with its whole window
/// (128 KiB plus a few segments, about 95 frames), and a wave must fit the
/// rx ring (16 384 frames, `socket_config` in relay-app) with room to spare.
const NUDGE_WAVE: usize = 100;

/// Least time between two waves: an empty ring right after a wave only
/// means its answers are still on the way.
const NUDGE_WAVE_GAP: Duration = Duration::from_millis(5);

/// Why a worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A device failed.
    #[error("device: {0}")]
    Device(#[from] DeviceError),
    /// The handshake thread could not start.
    #[error("starting the handshake thread: {0}")]
    Thread(std::io::Error),
    /// The settings cannot work.
    #[error("worker settings: {0}")]
    Config(String),
}

/// A service as the worker sees it.
#[derive(Debug, Clone)]
pub struct ServiceRuntime {
    /// Name (logs).
    pub name: String,
    /// VIP and port clients connect to.
    pub addr: SocketAddrV4,
}

/// One line of `relay flows`.
#[derive(Debug, Clone)]
pub struct FlowSnapshot {
    /// Flow id: this worker's counter (the cluster-wide id is the relay,
    /// the worker and this).
    pub id: u64,
    /// Client address.
    pub client: SocketAddrV4,
    /// Backend, once chosen.
    pub backend: Option<SocketAddrV4>,
    /// Phase name.
    pub state: &'static str,
    /// Plaintext bytes client -> backend.
    pub bytes_up: u64,
    /// Plaintext bytes backend -> client.
    pub bytes_down: u64,
    /// Age.
    pub age: Duration,
    /// Version and suite.
    pub tls: String,
}

/// State shared between the workers and the control plane.
#[derive(Debug)]
pub struct Shared {
    /// Series.
    pub metrics: RelayMetrics,
    /// TLS configuration per service (replaced by `relay reload`).
    pub tls: RwLock<Vec<Arc<TlsServerConfig>>>,
    /// Backend pool per service.
    pub pools: Vec<Mutex<BackendPool>>,
    /// No new flows: `relay drain`.
    pub draining: AtomicBool,
    /// Stop: drain, then exit.
    pub shutdown: AtomicBool,
    /// Flow listing, refreshed by the workers twice a second.
    pub flows: Mutex<Vec<FlowSnapshot>>,
    /// Global flow limit.
    pub max_flows: usize,
    /// Per worker (by `worker_index`): its replication figures, published
    /// once per loop for `relay peers` and the metrics.
    pub replication: Vec<ReplicationFigures>,
    /// Set by the worker once an [`AdoptCommand::Freeze`] took effect;
    /// cleared by `Thaw` and `DropFrozen`.
    pub frozen: AtomicBool,
}

/// Settings of one worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This relay's number in the cluster: the first part of the id of
    /// every flow it opens (0 until the configuration names relays).
    pub relay_id: RelayId,
    /// This worker's number on the relay (0 with one rx queue): the second
    /// part of its flows' ids; the third is the worker's counter.
    pub worker_index: u16,
    /// Services by index (the configuration's order).
    pub services: Vec<ServiceRuntime>,
    /// MAC of the front interface.
    pub front_mac: [u8; 6],
    /// MAC of the back interface.
    pub back_mac: [u8; 6],
    /// Address relayed connections leave from.
    pub back_addr: Ipv4Addr,
    /// Their local ports (inclusive).
    pub back_ports: (u16, u16),
    /// Flow settings.
    pub flow: FlowConfig,
    /// ISN secret (RFC 6528).
    pub isn_secret: [u8; 16],
    /// How long to wait for flows to finish on shutdown.
    pub shutdown_grace: Duration,
    /// Largest buffer a flow may hold outside its engines.
    pub max_flow_memory: usize,
    /// Connections in SYN-RECEIVED per service; more SYNs are dropped.
    pub max_half_open: usize,
}

struct Slot {
    flow: Flow,
    service: usize,
    client_mac: EthernetAddress,
    backend: Option<(usize, SocketAddrV4)>,
    back_port: Option<u16>,
    armed: Option<Instant>,
    reported: FlowStats,
    retx: (u64, u64),
    hs_error: bool,
    hs_in_flight: bool,
}

/// One worker: the flows of one rx queue.
pub struct Worker {
    cfg: WorkerConfig,
    front: Box<dyn Device>,
    back: Box<dyn Device>,
    fds: [RawFd; 2],
    front_dev: DeviceMetrics,
    back_dev: DeviceMetrics,
    shared: Arc<Shared>,
    secret: IsnSecret,
    epoch: std::time::Instant,
    flows: HashMap<u64, Slot>,
    by_front: HashMap<FourTuple, u64>,
    by_back: HashMap<FourTuple, u64>,
    timers: BinaryHeap<std::cmp::Reverse<(Instant, u64)>>,
    ports: HashSet<u16>,
    next_port: u16,
    next_id: u64,
    neighbours: HashMap<Ipv4Addr, EthernetAddress>,
    /// Client MACs learnt from their frames (for the listeners' replies).
    front_macs: HashMap<Ipv4Addr, EthernetAddress>,
    /// One per service: the bounded half-open table.
    listeners: Vec<Listener>,
    outbox: Commits,
    /// Every flow's local key by its cluster-wide id (adopted flows keep
    /// the id their first relay gave them).
    keys: HashMap<FlowId, u64>,
    adopt_rx: Option<mpsc::Receiver<AdoptCommand>>,
    /// Flows adopted and not nudged since the addresses moved.
    adopted_unnudged: Vec<u64>,
    /// Adopted flows whose nudge waits for room in the rx rings (see
    /// [`Worker::nudge_wave`]).
    nudge_queue: VecDeque<u64>,
    /// When the last wave was nudged.
    nudged_at: Instant,
    /// Handing off: no flow is served (see [`AdoptCommand::Freeze`]).
    frozen: bool,
    wake_tx: Arc<UnixStream>,
    hs_tx: mpsc::Sender<(u64, HandshakeJob)>,
    hs_rx: mpsc::Receiver<(u64, HandshakeDone)>,
    hs_wake: UnixStream,
    scratch: Vec<u8>,
    arena: Vec<u8>,
    spans: Vec<(bool, usize, usize)>,
    dirty: Vec<u64>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("flows", &self.flows.len())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker over `front` and `back` (whose pollable descriptors are
    /// `front_fd`, `back_fd`). Starts its handshake thread.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: WorkerConfig,
        front: Box<dyn Device>,
        front_fd: RawFd,
        front_dev: DeviceMetrics,
        back: Box<dyn Device>,
        back_fd: RawFd,
        back_dev: DeviceMetrics,
        neighbours: HashMap<Ipv4Addr, [u8; 6]>,
        shared: Arc<Shared>,
    ) -> Result<Worker, WorkerError> {
        let (job_tx, job_rx) = mpsc::channel::<(u64, HandshakeJob)>();
        let (done_tx, done_rx) = mpsc::channel::<(u64, HandshakeDone)>();
        let (wake_rx, mut wake_tx) = UnixStream::pair().map_err(WorkerError::Thread)?;
        wake_rx.set_nonblocking(true).map_err(WorkerError::Thread)?;
        // Whoever wakes the worker never blocks on it: a full buffer
        // already means "wake up".
        wake_tx.set_nonblocking(true).map_err(WorkerError::Thread)?;
        let wake_for_others = Arc::new(wake_tx.try_clone().map_err(WorkerError::Thread)?);
        std::thread::Builder::new()
            .name("relay-handshakes".into())
            .spawn(move || {
                while let Ok((id, job)) = job_rx.recv() {
                    let done = job.run(relay_tls::UnixTime::now());
                    if done_tx.send((id, done)).is_err() {
                        return;
                    }
                    // A full socket buffer already means "wake up".
                    let _ = wake_tx.write(&[1]);
                }
            })
            .map_err(WorkerError::Thread)?;
        let next_port = cfg.back_ports.0;
        let secret = IsnSecret::new(cfg.isn_secret);
        let mut listeners = Vec::with_capacity(cfg.services.len());
        for s in &cfg.services {
            listeners.push(
                Listener::new(
                    cfg.flow.front.clone(),
                    s.addr,
                    secret.clone(),
                    cfg.max_half_open,
                )
                .map_err(|e| WorkerError::Config(e.to_string()))?,
            );
        }
        Ok(Worker {
            cfg,
            front,
            back,
            fds: [front_fd, back_fd],
            front_dev,
            back_dev,
            shared,
            secret,
            epoch: std::time::Instant::now(),
            flows: HashMap::new(),
            by_front: HashMap::new(),
            by_back: HashMap::new(),
            timers: BinaryHeap::new(),
            ports: HashSet::new(),
            next_port,
            next_id: 1,
            neighbours: neighbours
                .into_iter()
                .map(|(a, m)| (a, EthernetAddress(m)))
                .collect(),
            front_macs: HashMap::new(),
            listeners,
            outbox: Commits::Local(LocalCommit::new()),
            keys: HashMap::new(),
            adopt_rx: None,
            adopted_unnudged: Vec::new(),
            nudge_queue: VecDeque::new(),
            nudged_at: Instant::from_micros(0),
            frozen: false,
            wake_tx: wake_for_others,
            hs_tx: job_tx,
            hs_rx: done_rx,
            hs_wake: wake_rx,
            scratch: vec![0u8; 65536],
            arena: Vec::with_capacity(64 * 4096),
            spans: Vec::with_capacity(128),
            dirty: Vec::new(),
        })
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as u64)
    }

    /// Something another thread calls to wake this worker from its poll
    /// (the backplane, when it queued acknowledgements for it).
    pub fn waker(&self) -> Arc<dyn Fn() + Send + Sync> {
        let tx = self.wake_tx.clone();
        Arc::new(move || {
            let _ = (&*tx).write(&[1]);
        })
    }

    /// Replicates this worker's flows to a peer from now on (flows commit
    /// full checkpoints and deltas, released when the peer acknowledges).
    pub fn attach_replication(&mut self, link: Replication) {
        self.outbox = Commits::cluster(link);
    }

    /// Flows sent on `rx` (with a [`waker`](Self::waker) call) are adopted.
    pub fn accept_adoptions(&mut self, rx: mpsc::Receiver<AdoptCommand>) {
        self.adopt_rx = Some(rx);
    }

    /// Runs until shutdown is requested and the flows are done (or the
    /// grace period is over).
    pub fn run(&mut self) -> Result<(), WorkerError> {
        let mut last_report = self.now();
        let mut shutdown_at: Option<Instant> = None;
        loop {
            let now = self.now();
            if self.shared.shutdown.load(Ordering::Relaxed) {
                let at = *shutdown_at.get_or_insert(now);
                let grace = self.cfg.shutdown_grace.as_micros() as u64;
                if self.flows.is_empty() {
                    break;
                }
                if now.micros > at.micros + grace {
                    tracing::warn!(
                        flows = self.flows.len(),
                        "grace period over: aborting flows"
                    );
                    let ids: Vec<u64> = self.flows.keys().copied().collect();
                    for id in ids {
                        if let Some(slot) = self.flows.get_mut(&id) {
                            slot.flow.abort(now);
                        }
                        self.service(now, id)?;
                    }
                    self.front.flush()?;
                    self.back.flush()?;
                    break;
                }
            }
            let adopted = self.adoptions(now);
            if self.frozen {
                // Handing off: what arrives is the peer's to answer.
                let got = self.discard()?;
                self.outbox.pump();
                self.publish_replication();
                if got == 0 && !adopted {
                    self.wait(now)?;
                }
                continue;
            }
            let got = self.receive(now)?;
            self.nudge_wave(now, got);
            let hs = self.handshake_results(now);
            let replicated = self.replication(now);
            self.run_timers(now);
            for i in 0..self.listeners.len() {
                if self.listeners[i].poll_timeout().is_some_and(|t| t <= now) {
                    self.listeners[i].handle_timeout(now);
                    self.listener_io(now, i)?;
                }
            }
            // Flows that took segments seal what is left of their batch.
            let mut touched: Vec<u64> = self.dirty.clone();
            touched.sort_unstable();
            touched.dedup();
            self.service_dirty(now)?;
            for id in touched {
                if let Some(slot) = self.flows.get_mut(&id) {
                    slot.flow.flush(now);
                    self.dirty.push(id);
                }
            }
            self.service_dirty(now)?;
            // One backplane write per loop, with every commit of the loop.
            self.outbox.pump();
            self.publish_replication();
            self.front.flush()?;
            self.back.flush()?;
            if now.micros.saturating_sub(last_report.micros) >= 500_000 {
                last_report = now;
                self.report(now);
            }
            if got == 0 && !hs && !adopted && !replicated {
                self.wait(now)?;
            }
        }
        self.report(self.now());
        Ok(())
    }

    /// Nudges the next wave of adopted flows once the rx rings have drained
    /// (this loop took less than a full batch) and the last wave's answers
    /// had time to arrive ([`NUDGE_WAVE_GAP`]).
    ///
    /// A nudge makes the sender retransmit its whole window at once. A
    /// thousand backends nudged together sent about 90 000 frames into one
    /// ring of 16 384 in the lab, and every frame dropped cost its flow a
    /// retransmission timeout: waves of [`NUDGE_WAVE`] flows fit.
    fn nudge_wave(&mut self, now: Instant, received: usize) {
        if self.nudge_queue.is_empty()
            || received >= RX_BATCH
            || now.micros < self.nudged_at.micros + NUDGE_WAVE_GAP.as_micros() as u64
        {
            return;
        }
        self.nudged_at = now;
        for _ in 0..NUDGE_WAVE {
            let Some(key) = self.nudge_queue.pop_front() else {
                break;
            };
            if let Some(slot) = self.flows.get_mut(&key) {
                slot.flow.nudge();
                self.dirty.push(key);
            }
        }
    }

    /// Takes and drops what the rings hold (a frozen worker).
    fn discard(&mut self) -> Result<usize, WorkerError> {
        let n = self.front.receive(256, &mut |_: &[u8]| {})?;
        let m = self.back.receive(256, &mut |_: &[u8]| {})?;
        Ok(n + m)
    }

    fn receive(&mut self, now: Instant) -> Result<usize, WorkerError> {
        self.arena.clear();
        self.spans.clear();
        let (arena, spans) = (&mut self.arena, &mut self.spans);
        let n = self.front.receive(RX_BATCH, &mut |f: &[u8]| {
            spans.push((true, arena.len(), f.len()));
            arena.extend_from_slice(f);
        })?;
        let m = self.back.receive(RX_BATCH, &mut |f: &[u8]| {
            spans.push((false, arena.len(), f.len()));
            arena.extend_from_slice(f);
        })?;
        let spans = std::mem::take(&mut self.spans);
        let arena = std::mem::take(&mut self.arena);
        for &(front, at, len) in &spans {
            self.handle_frame(now, front, &arena[at..at + len])?;
        }
        self.spans = spans;
        self.arena = arena;
        Ok(n + m)
    }

    fn handle_frame(&mut self, now: Instant, front: bool, frame: &[u8]) -> Result<(), WorkerError> {
        let Ok(p) = TcpFrame::parse(frame) else {
            self.shared.metrics.frames_malformed.inc();
            return Ok(());
        };
        let tuple = FourTuple::incoming(p.ip.src_addr, p.ip.dst_addr, &p.tcp);
        if front {
            if let Some(&id) = self.by_front.get(&tuple) {
                if let Some(slot) = self.flows.get_mut(&id) {
                    tracing::trace!(id, flags = ?p.tcp.flags, seq = p.tcp.seq_number.0, len = p.tcp.payload.len(), phase = ?slot.flow.phase(), "front segment");
                    slot.client_mac = p.eth.src_addr;
                    slot.flow.handle_front(now, &p.tcp);
                    self.dirty.push(id);
                }
                return Ok(());
            }
            let syn = p.tcp.flags.syn() && !p.tcp.flags.ack() && !p.tcp.flags.rst();
            let service = self.cfg.services.iter().position(|s| s.addr == tuple.local);
            let Some(service) = service else {
                return self.reset(true, p.eth.src_addr, tuple, &p.tcp);
            };
            if syn {
                let m = &self.shared.metrics;
                if self.shared.draining.load(Ordering::Relaxed)
                    || self.shared.shutdown.load(Ordering::Relaxed)
                {
                    m.flows_refused_draining.inc();
                    return self.reset(true, p.eth.src_addr, tuple, &p.tcp);
                }
                if self.flows.len() >= self.shared.max_flows {
                    m.flows_refused_limit.inc();
                    return self.reset(true, p.eth.src_addr, tuple, &p.tcp);
                }
            }
            if self.front_macs.len() >= MAX_FRONT_MACS {
                // A flood of spoofed sources: forget them all rather than grow.
                self.front_macs.clear();
            }
            self.front_macs.insert(p.ip.src_addr, p.eth.src_addr);
            if let Some(listener) = self.listeners.get_mut(service) {
                listener.handle_segment(now, tuple, &p.tcp);
            }
            self.listener_io(now, service)
        } else {
            self.neighbours.insert(p.ip.src_addr, p.eth.src_addr);
            if let Some(&id) = self.by_back.get(&tuple) {
                if let Some(slot) = self.flows.get_mut(&id) {
                    slot.flow.handle_back(now, &p.tcp);
                    self.dirty.push(id);
                }
                return Ok(());
            }
            self.reset(false, p.eth.src_addr, tuple, &p.tcp)
        }
    }

    fn reset(
        &mut self,
        front: bool,
        mac: EthernetAddress,
        tuple: FourTuple,
        seg: &TcpRepr<'_>,
    ) -> Result<(), WorkerError> {
        if let Some(rst) = relay_tcp::reset_reply(seg) {
            self.shared.metrics.resets_sent.inc();
            self.emit(front, mac, tuple, &rst)?;
        }
        Ok(())
    }

    /// Sends what a listener has to send and turns its completed
    /// connections into flows.
    fn listener_io(&mut self, now: Instant, service: usize) -> Result<(), WorkerError> {
        let Some(listener) = self.listeners.get_mut(service) else {
            return Ok(());
        };
        let mut out = Vec::new();
        while let Some((tuple, seg)) = listener.poll_transmit(now, &mut self.scratch) {
            let mut buf = vec![0u8; seg.payload.len()];
            buf.copy_from_slice(seg.payload);
            out.push((
                tuple,
                TcpRepr {
                    payload: &[],
                    ..seg
                },
                buf,
            ));
        }
        let mut accepted = Vec::new();
        while let Some((tuple, conn)) = listener.accept() {
            accepted.push((tuple, conn));
        }
        for (tuple, seg, payload) in out {
            let seg = TcpRepr {
                payload: &payload,
                ..seg
            };
            if let Some(mac) = self.front_macs.get(tuple.remote.ip()).copied() {
                self.emit(true, mac, tuple, &seg)?;
            }
        }
        for (tuple, conn) in accepted {
            self.accept(now, service, tuple, conn)?;
        }
        Ok(())
    }

    fn accept(
        &mut self,
        now: Instant,
        service: usize,
        tuple: FourTuple,
        mut conn: relay_tcp::Connection,
    ) -> Result<(), WorkerError> {
        let mac = self
            .front_macs
            .get(tuple.remote.ip())
            .copied()
            .unwrap_or(EthernetAddress([0xff; 6]));
        let tls = {
            let guard = match self.shared.tls.read() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            guard.get(service).cloned()
        };
        let refuse = self.flows.len() >= self.shared.max_flows
            || self.shared.draining.load(Ordering::Relaxed)
            || tls.is_none();
        let flow = match tls {
            Some(tls) if !refuse => {
                let id = flow_id(&self.cfg, self.next_id);
                self.keys.insert(id, self.next_id);
                Flow::from_accepted(id, self.cfg.flow.clone(), conn, &tls, now)
                    .map_err(|e| e.to_string())
            }
            _ => {
                conn.abort();
                while let Some(seg) = conn.poll_transmit(now, &mut self.scratch) {
                    send_segment(
                        self.front.as_mut(),
                        EthernetAddress(self.cfg.front_mac),
                        mac,
                        tuple,
                        &seg,
                    )?;
                }
                self.shared.metrics.flows_refused_limit.inc();
                return Ok(());
            }
        };
        let flow = match flow {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a flow");
                return Ok(());
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let m = &self.shared.metrics;
        m.flows_opened.inc();
        m.flows_active.add(1);
        self.by_front.insert(tuple, id);
        self.flows.insert(
            id,
            Slot {
                flow,
                service,
                client_mac: mac,
                backend: None,
                back_port: None,
                armed: None,
                reported: FlowStats::default(),
                retx: (0, 0),
                hs_error: false,
                hs_in_flight: false,
            },
        );
        self.dirty.push(id);
        Ok(())
    }

    /// Backplane events and acknowledgements; flows whose commits were
    /// acknowledged are serviced (they release bytes). Returns whether
    /// anything came.
    fn replication(&mut self, now: Instant) -> bool {
        let report = self.outbox.pump();
        self.shared
            .metrics
            .commits_unprotected
            .add(self.outbox.take_unprotected());
        let (acks, _) = self.route_acks(now, None);
        report.events > 0 || acks > 0
    }

    /// Hands every acknowledged commit to its flow and marks the flows for
    /// service, except `current` (being serviced): returns how many acks
    /// came and whether one was for `current`.
    fn route_acks(&mut self, now: Instant, current: Option<u64>) -> (usize, bool) {
        let (mut n, mut for_current) = (0, false);
        while let Some((fid, no)) = self.outbox.poll_ack() {
            n += 1;
            let Some(&key) = self.keys.get(&fid) else {
                continue;
            };
            if let Some(s) = self.flows.get_mut(&key) {
                if let Some(lat) = s.flow.handle_commit_ack(now, no) {
                    self.shared
                        .metrics
                        .commit_latency
                        .observe(lat.as_secs_f64());
                }
                if Some(key) == current {
                    for_current = true;
                } else {
                    self.dirty.push(key);
                }
            }
        }
        (n, for_current)
    }

    /// Hands this loop's replication figures to the control plane.
    fn publish_replication(&self) {
        if let Some(s) = self.outbox.snapshot()
            && let Some(f) = self
                .shared
                .replication
                .get(usize::from(self.cfg.worker_index))
        {
            f.publish(&s);
        }
    }

    /// Flows handed over by the control plane (a dead peer's).
    fn adoptions(&mut self, now: Instant) -> bool {
        let mut commands = Vec::new();
        if let Some(rx) = &self.adopt_rx {
            while let Ok(c) = rx.try_recv() {
                commands.push(c);
            }
        }
        let any = !commands.is_empty();
        for c in commands {
            match c {
                AdoptCommand::Adopt(batch) => {
                    for a in batch {
                        self.adopt(now, a);
                    }
                }
                AdoptCommand::Nudge => {
                    let keys = std::mem::take(&mut self.adopted_unnudged);
                    self.nudge_queue.extend(keys);
                }
                AdoptCommand::Freeze => {
                    self.frozen = true;
                    self.shared.frozen.store(true, Ordering::Release);
                    tracing::info!(flows = self.flows.len(), "handoff: flows frozen");
                }
                AdoptCommand::Thaw => {
                    self.frozen = false;
                    self.shared.frozen.store(false, Ordering::Release);
                    self.dirty.extend(self.flows.keys().copied());
                    tracing::info!(
                        flows = self.flows.len(),
                        "handoff undone: serving the flows again"
                    );
                }
                AdoptCommand::DropFrozen => {
                    let ids: Vec<u64> = self.flows.keys().copied().collect();
                    for id in &ids {
                        self.detach(*id);
                    }
                    self.shared.metrics.flows_handed_off.add(ids.len() as u64);
                    self.dirty.clear();
                    self.adopted_unnudged.clear();
                    self.nudge_queue.clear();
                    self.frozen = false;
                    self.shared.frozen.store(false, Ordering::Release);
                    tracing::info!(
                        flows = ids.len(),
                        "handoff done: the peer carries the flows"
                    );
                }
            }
        }
        any
    }

    fn adopt(&mut self, now: Instant, a: Adoption) {
        let flow = match Flow::adopt(self.cfg.flow.clone(), &a.checkpoint, now, a.elapsed) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(flow = ?a.checkpoint.id, error = %e, "cannot adopt a flow");
                return;
            }
        };
        let fid = flow.id();
        if self.keys.contains_key(&fid) {
            tracing::warn!(flow = ?fid, "adopting a flow this worker already has: ignored");
            return;
        }
        let front = flow.front_tuple();
        let back = flow.back_tuple();
        let service = self
            .cfg
            .services
            .iter()
            .position(|s| s.addr == front.local)
            .unwrap_or(0);
        let key = self.next_id;
        self.next_id += 1;
        self.keys.insert(fid, key);
        self.by_front.insert(front, key);
        let mut back_port = None;
        if let Some(t) = back {
            self.by_back.insert(t, key);
            self.neighbours
                .insert(*t.remote.ip(), EthernetAddress(a.backend_mac));
            if t.local.ip() == &self.cfg.back_addr && self.ports.insert(t.local.port()) {
                back_port = Some(t.local.port());
            }
        }
        // Counted with its backend, as a flow opened here would be.
        let backend = a.checkpoint.meta.backend;
        let backend = self
            .shared
            .pools
            .get(service)
            .and_then(|p| match p.lock() {
                Ok(mut g) => g.adopt(backend),
                Err(poisoned) => poisoned.into_inner().adopt(backend),
            })
            .map(|p| (p.index, p.addr));
        let m = &self.shared.metrics;
        m.flows_adopted.inc();
        m.flows_active.add(1);
        self.flows.insert(
            key,
            Slot {
                flow,
                service,
                client_mac: EthernetAddress(a.client_mac),
                backend,
                back_port,
                armed: None,
                reported: FlowStats::default(),
                retx: (0, 0),
                hs_error: false,
                hs_in_flight: false,
            },
        );
        tracing::debug!(flow = ?fid, key, "adopted");
        self.adopted_unnudged.push(key);
        self.dirty.push(key);
    }

    fn handshake_results(&mut self, now: Instant) -> bool {
        let mut buf = [0u8; 64];
        while matches!(self.hs_wake.read(&mut buf), Ok(n) if n > 0) {}
        let mut any = false;
        while let Ok((id, done)) = self.hs_rx.try_recv() {
            any = true;
            if let Some(slot) = self.flows.get_mut(&id) {
                slot.hs_in_flight = false;
                if done.error().is_some() {
                    slot.hs_error = true;
                }
                slot.flow.handshake_done(now, done);
                self.dirty.push(id);
            }
        }
        any
    }

    fn run_timers(&mut self, now: Instant) {
        while let Some(std::cmp::Reverse((t, id))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            if let Some(slot) = self.flows.get_mut(&id)
                && slot.armed == Some(t)
            {
                slot.armed = None;
                slot.flow.handle_timeout(now);
                self.dirty.push(id);
            }
        }
    }

    fn service_dirty(&mut self, now: Instant) -> Result<(), WorkerError> {
        while !self.dirty.is_empty() {
            let mut dirty = std::mem::take(&mut self.dirty);
            dirty.sort_unstable();
            dirty.dedup();
            for id in dirty {
                self.service(now, id)?;
            }
        }
        Ok(())
    }

    /// Everything a flow wants after its input: events, commits, segments.
    fn service(&mut self, now: Instant, id: u64) -> Result<(), WorkerError> {
        loop {
            let Some(slot) = self.flows.get_mut(&id) else {
                return Ok(());
            };
            let mut again = false;
            while let Some(event) = slot.flow.poll_event() {
                match event {
                    FlowEvent::HandshakeReady => {
                        if !slot.hs_in_flight
                            && let Some(job) = slot.flow.take_handshake()
                        {
                            slot.hs_in_flight = true;
                            if self.hs_tx.send((id, job)).is_err() {
                                tracing::error!("the handshake thread is gone");
                            }
                        }
                    }
                    FlowEvent::NeedBackend(info) => {
                        let m = &self.shared.metrics;
                        if info.resumed {
                            m.handshakes_resumed.inc();
                        } else {
                            m.handshakes_full.inc();
                        }
                        self.connect_backend(now, id)?;
                        again = true;
                        break;
                    }
                    FlowEvent::Replicated => {}
                    FlowEvent::Closed(reason) => {
                        self.transmit(now, id)?;
                        self.remove(id, reason);
                        return Ok(());
                    }
                }
            }
            if again {
                continue;
            }
            let Some(slot) = self.flows.get_mut(&id) else {
                return Ok(());
            };
            while let Some((no, ck)) = slot.flow.poll_commit() {
                self.shared.metrics.commits.inc();
                let fid = slot.flow.id();
                self.outbox.commit(fid, no, &ck);
            }
            while let Some(no) = slot.flow.poll_commit_no() {
                self.shared.metrics.commits.inc();
                let fid = slot.flow.id();
                self.outbox.commit_no(fid, no);
            }
            let (_, acked) = self.route_acks(now, Some(id));
            self.transmit(now, id)?;
            if acked {
                continue;
            }
            if let Some(slot) = self.flows.get_mut(&id) {
                if slot.flow.buffered() > self.cfg.max_flow_memory {
                    tracing::warn!(
                        id,
                        buffered = slot.flow.buffered(),
                        "flow over its memory bound: aborting"
                    );
                    slot.flow.abort(now);
                    continue;
                }
                let t = slot.flow.poll_timeout();
                if t != slot.armed {
                    slot.armed = t;
                    if let Some(t) = t {
                        self.timers.push(std::cmp::Reverse((t, id)));
                    }
                }
            }
            return Ok(());
        }
    }

    fn connect_backend(&mut self, now: Instant, id: u64) -> Result<(), WorkerError> {
        let Some(slot) = self.flows.get_mut(&id) else {
            return Ok(());
        };
        let pick = self
            .shared
            .pools
            .get(slot.service)
            .and_then(|p| match p.lock() {
                Ok(mut g) => g.pick(),
                Err(poisoned) => poisoned.into_inner().pick(),
            });
        let Some(pick) = pick else {
            tracing::info!(id, "no healthy backend: refusing the flow");
            slot.flow.refuse(now);
            return Ok(());
        };
        slot.backend = Some((pick.index, pick.addr));
        let Some(port) = alloc_port(&mut self.ports, &mut self.next_port, self.cfg.back_ports)
        else {
            tracing::warn!(id, "back-side ports exhausted: refusing the flow");
            slot.flow.refuse(now);
            return Ok(());
        };
        slot.back_port = Some(port);
        let tuple = FourTuple {
            local: SocketAddrV4::new(self.cfg.back_addr, port),
            remote: pick.addr,
        };
        if !self.neighbours.contains_key(pick.addr.ip())
            && let Ok(mac) =
                relay_datapath::neighbour::resolve(*pick.addr.ip(), Duration::from_millis(500))
        {
            self.neighbours
                .insert(*pick.addr.ip(), EthernetAddress(mac));
        }
        let info = slot.flow.handshake_info().cloned();
        let meta = FlowMeta {
            service: slot.service as u16,
            backend: pick.addr,
            server_name: info.as_ref().and_then(|i| i.server_name.clone()),
            alpn: info.as_ref().and_then(|i| i.alpn.clone()),
            resumed: info.as_ref().is_some_and(|i| i.resumed),
        };
        match slot.flow.connect_backend(now, tuple, &self.secret, meta) {
            Ok(()) => {
                self.by_back.insert(tuple, id);
            }
            Err(e) => {
                tracing::warn!(id, error = %e, "connecting the backend failed");
                slot.flow.refuse(now);
            }
        }
        Ok(())
    }

    fn transmit(&mut self, now: Instant, id: u64) -> Result<(), WorkerError> {
        let Some(slot) = self.flows.get_mut(&id) else {
            return Ok(());
        };
        let src_front = EthernetAddress(self.cfg.front_mac);
        let src_back = EthernetAddress(self.cfg.back_mac);
        let front_tuple = slot.flow.front_tuple();
        while let Some(seg) = slot.flow.poll_front_transmit(now, &mut self.scratch) {
            send_segment(
                self.front.as_mut(),
                src_front,
                slot.client_mac,
                front_tuple,
                &seg,
            )?;
        }
        if let Some(back_tuple) = slot.flow.back_tuple() {
            let mac = self.neighbours.get(back_tuple.remote.ip()).copied();
            while let Some(seg) = slot.flow.poll_back_transmit(now, &mut self.scratch) {
                if let Some(mac) = mac {
                    send_segment(self.back.as_mut(), src_back, mac, back_tuple, &seg)?;
                }
            }
        }
        Ok(())
    }

    fn emit(
        &mut self,
        front: bool,
        mac: EthernetAddress,
        tuple: FourTuple,
        seg: &TcpRepr<'_>,
    ) -> Result<(), WorkerError> {
        if front {
            let src = EthernetAddress(self.cfg.front_mac);
            send_segment(self.front.as_mut(), src, mac, tuple, seg)
        } else {
            let src = EthernetAddress(self.cfg.back_mac);
            send_segment(self.back.as_mut(), src, mac, tuple, seg)
        }
    }

    fn remove(&mut self, id: u64, reason: CloseReason) {
        let Some(slot) = self.detach(id) else {
            return;
        };
        let m = &self.shared.metrics;
        report_flow(m, &slot, slot.flow.stats());
        if let Some(c) = m.closed(reason) {
            c.inc();
        }
        let in_handshake = slot.flow.handshake_info().is_none();
        match reason {
            CloseReason::HandshakeTimeout => m.handshakes_failed_timeout.inc(),
            CloseReason::HandshakeFailed if slot.hs_error => m.handshakes_failed_tls.inc(),
            CloseReason::HandshakeFailed => m.handshakes_failed_client_gone.inc(),
            CloseReason::ClientReset | CloseReason::ClientTimeout if in_handshake => {
                m.handshakes_failed_client_gone.inc()
            }
            _ => {}
        }
        tracing::debug!(id, reason = reason.label(), "flow closed");
    }

    /// Takes a flow out of every table (and its backend's count, and the
    /// replication stream) without a segment: [`remove`](Self::remove)
    /// after a close, or a flow the peer carries on.
    fn detach(&mut self, id: u64) -> Option<Slot> {
        let slot = self.flows.remove(&id)?;
        let fid = slot.flow.id();
        self.outbox.forget(fid);
        self.keys.remove(&fid);
        self.by_front.remove(&slot.flow.front_tuple());
        if let Some(t) = slot.flow.back_tuple() {
            self.by_back.remove(&t);
        }
        if let Some(port) = slot.back_port {
            self.ports.remove(&port);
        }
        if let Some((index, _)) = slot.backend
            && let Some(pool) = self.shared.pools.get(slot.service)
        {
            match pool.lock() {
                Ok(mut g) => g.flow_closed(index),
                Err(poisoned) => poisoned.into_inner().flow_closed(index),
            }
        }
        self.shared.metrics.flows_active.add(-1);
        Some(slot)
    }

    /// Moves counters and refreshes the flow listing.
    fn report(&mut self, now: Instant) {
        let m = &self.shared.metrics;
        let mut lines = Vec::with_capacity(self.flows.len());
        for (&id, slot) in self.flows.iter_mut() {
            let stats = slot.flow.stats();
            report_flow(m, slot, stats);
            slot.reported = stats;
            let rf = slot.flow.front().stats().retransmits;
            let rb = slot.flow.back().map_or(0, |b| b.stats().retransmits);
            m.retransmits_front.add(rf - slot.retx.0.min(rf));
            m.retransmits_back.add(rb - slot.retx.1.min(rb));
            slot.retx = (rf, rb);
            let tls = slot
                .flow
                .handshake_info()
                .map(|i| {
                    format!(
                        "{:?} {:?}{}",
                        i.version,
                        i.suite,
                        if i.resumed { " resumed" } else { "" }
                    )
                })
                .unwrap_or_default();
            lines.push(FlowSnapshot {
                id,
                client: slot.flow.front_tuple().remote,
                backend: slot.backend.map(|b| b.1),
                state: slot.flow.phase().name(),
                bytes_up: stats.bytes_up,
                bytes_down: stats.bytes_down,
                age: now.saturating_duration_since(slot.flow.opened()),
                tls,
            });
        }
        lines.sort_by_key(|l| l.id);
        if let Ok(mut g) = self.shared.flows.lock() {
            *g = lines;
        }
        let evicted: u64 = self
            .listeners
            .iter()
            .map(|l| l.stats().half_open_evicted)
            .sum();
        self.shared.metrics.half_open_evicted.set_total(evicted);
        let half_open: usize = self.listeners.iter().map(Listener::half_open).sum();
        self.shared.metrics.half_open.set(half_open as i64);
        self.front_dev.update(&self.front.stats());
        self.back_dev.update(&self.back.stats());
    }

    fn wait(&mut self, now: Instant) -> Result<(), WorkerError> {
        let next = self
            .timers
            .peek()
            .map(|r| r.0.0)
            .into_iter()
            .chain(self.listeners.iter().filter_map(Listener::poll_timeout))
            .min();
        let mut timeout = Duration::from_millis(100);
        if let Some(t) = next {
            timeout = timeout.min(t.saturating_duration_since(now));
        }
        if !self.nudge_queue.is_empty() {
            timeout = timeout.min(NUDGE_WAVE_GAP);
        }
        if timeout.is_zero() {
            return Ok(());
        }
        let mut fds = [
            libc::pollfd {
                fd: self.fds[0],
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.fds[1],
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.hs_wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let millis = timeout.as_millis().clamp(1, 100) as i32;
        // SAFETY: `fds` is a live array of three initialised pollfd structs
        // and its length is passed with it; poll(2) writes only `revents`.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(WorkerError::Device(DeviceError::Syscall {
                    call: "poll".into(),
                    source: err,
                }));
            }
        }
        Ok(())
    }
}

fn report_flow(m: &RelayMetrics, slot: &Slot, stats: FlowStats) {
    let r = slot.reported;
    m.bytes_up.add(stats.bytes_up.saturating_sub(r.bytes_up));
    m.bytes_down
        .add(stats.bytes_down.saturating_sub(r.bytes_down));
    m.records_up
        .add(stats.records_up.saturating_sub(r.records_up));
    m.records_down
        .add(stats.records_down.saturating_sub(r.records_down));
}

fn alloc_port(used: &mut HashSet<u16>, next: &mut u16, range: (u16, u16)) -> Option<u16> {
    let span = u32::from(range.1) - u32::from(range.0) + 1;
    for _ in 0..span {
        let p = *next;
        *next = if p >= range.1 { range.0 } else { p + 1 };
        if used.insert(p) {
            return Some(p);
        }
    }
    None
}

fn send_segment(
    device: &mut dyn Device,
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    tuple: FourTuple,
    seg: &TcpRepr<'_>,
) -> Result<(), WorkerError> {
    let frame = TcpFrame {
        eth: EthernetRepr {
            src_addr: src_mac,
            dst_addr: dst_mac,
            ethertype: EtherType::Ipv4,
        },
        ip: Ipv4Repr {
            src_addr: *tuple.local.ip(),
            dst_addr: *tuple.remote.ip(),
            protocol: IpProtocol::Tcp,
            payload_len: 0,
            hop_limit: 64,
            ident: 0,
            dont_fragment: true,
        },
        tcp: *seg,
    };
    for _ in 0..1000 {
        if device.transmit(&mut |buf| frame.emit(buf).unwrap_or(0))? {
            return Ok(());
        }
        device.flush()?;
    }
    // The ring stayed full: the engine retransmits the segment.
    Ok(())
}

/// The cluster-wide id of this worker's flow number `counter`.
fn flow_id(cfg: &WorkerConfig, counter: u64) -> FlowId {
    FlowId {
        relay: cfg.relay_id,
        worker: cfg.worker_index,
        counter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_ids_carry_relay_and_worker() {
        let cfg = WorkerConfig {
            relay_id: 3,
            worker_index: 2,
            services: Vec::new(),
            front_mac: [0; 6],
            back_mac: [0; 6],
            back_addr: Ipv4Addr::UNSPECIFIED,
            back_ports: (1, 1),
            flow: FlowConfig::default(),
            isn_secret: [0; 16],
            shutdown_grace: Duration::ZERO,
            max_flow_memory: 0,
            max_half_open: 1,
        };
        let id = flow_id(&cfg, 7);
        assert_eq!(
            id,
            FlowId {
                relay: 3,
                worker: 2,
                counter: 7
            }
        );
        assert_eq!(id.to_string(), "3.2.7");
    }

    #[test]
    fn ports_cycle_and_skip_used() {
        let mut used = HashSet::new();
        let mut next = 10;
        assert_eq!(alloc_port(&mut used, &mut next, (10, 12)), Some(10));
        assert_eq!(alloc_port(&mut used, &mut next, (10, 12)), Some(11));
        assert_eq!(alloc_port(&mut used, &mut next, (10, 12)), Some(12));
        assert_eq!(alloc_port(&mut used, &mut next, (10, 12)), None);
        used.remove(&11);
        assert_eq!(alloc_port(&mut used, &mut next, (10, 12)), Some(11));
    }
}
