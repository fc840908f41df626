//! Starting a backplane, and the handle the app (control plane) keeps.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Receiver;
use relay_replication::{
    Adopted, CheckpointCodec, Envelope, FlowId, Message, Peer, PeerState, RelayId, Rtt, Standby,
    StandbyConfig, StandbyStats,
};
use tokio::sync::{Notify, watch};

use crate::config::BackplaneConfig;
use crate::counters::{AtomicCounters, Counters};
use crate::error::Error;
use crate::front::BeatPath;
use crate::shared::{Clock, PeerSlot, Shared, SlotState, StandbyStore, Wake};
use crate::tls::Tls;
use crate::worker::{PeerQueue, Waker, WorkerPort, WorkerTx};

/// What the app hears from the backplane (besides
/// [`BackplaneHandle::peers`], which is always up to date).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackplaneEvent {
    /// A connection to `peer` passed every check and is live.
    Connected {
        /// The peer.
        peer: RelayId,
        /// Whether we dialed it.
        outbound: bool,
    },
    /// The live connection to `peer` ended.
    Disconnected {
        /// The peer.
        peer: RelayId,
        /// Why.
        reason: DisconnectReason,
    },
    /// Membership: `peer` is up.
    PeerUp(RelayId),
    /// Membership: `peer` is alive (heard on the front network) but the
    /// backplane to it is lost. Its flows are not adopted; ours commit
    /// locally until it reconnects.
    BackplaneLost(RelayId),
    /// Membership: `peer` is down; its flows may be adopted
    /// ([`BackplaneHandle::take_all`]).
    PeerDown(RelayId),
    /// A control message for the cluster logic: takeover, handoff,
    /// handoff done.
    Control {
        /// The peer that sent it.
        peer: RelayId,
        /// The message.
        message: Message,
    },
}

/// Why a live connection ended, and on whose side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisconnectReason {
    /// Peer: it closed the connection.
    Closed,
    /// Network: a socket or TLS error.
    Io,
    /// Peer or network: nothing received for twice the dead interval (at
    /// least 3 s).
    Idle,
    /// Peer or network: a write did not complete for twice the dead
    /// interval (the peer does not read).
    Stalled,
    /// Peer: it sent bytes the deframer refuses (counted in
    /// `rejected_malformed`).
    Malformed,
    /// Peer: it broke the protocol (counted in `protocol_errors`).
    Protocol,
    /// Peer: membership declared it down (no heartbeat on either path).
    PeerDown,
    /// Network: no heartbeat on the backplane while the front network
    /// still hears the peer.
    BackplaneLost,
    /// Neither side: another connection to the same peer won the
    /// tie-break.
    Replaced,
    /// Caller: a worker batch was lost (queue full) or unusable, or a
    /// worker asked for it ([`WorkerPort::reset_connection`]): the streams
    /// restart whole on a new connection.
    StreamReset,
    /// Caller: a worker stopped reading its events.
    WorkerBacklog,
    /// Caller: a worker's replication queue is full (the peer applies
    /// commits too slowly): our flows commit locally a few heartbeat
    /// intervals later, until a new connection re-seeds them.
    PeerTooSlow,
    /// Caller: [`BackplaneHandle::disconnect`].
    Requested,
    /// Caller: [`BackplaneHandle::shutdown`].
    Shutdown,
}

/// One peer as `relay peers` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStatus {
    /// Its relay id.
    pub id: RelayId,
    /// Its configured name.
    pub name: String,
    /// Its configured backplane address.
    pub addr: SocketAddr,
    /// Membership.
    pub state: PeerState,
    /// Whether a connection is live.
    pub connected: bool,
    /// Whether the live connection is the one we dialed.
    pub outbound: bool,
    /// When the live connection was established.
    pub connected_since: Option<std::time::Instant>,
    /// Heartbeat round-trip time.
    pub rtt: Option<Rtt>,
    /// Connections established so far.
    pub connections: u64,
    /// Plaintext bytes sent to it (all connections).
    pub bytes_sent: u64,
    /// Plaintext bytes received from it (all connections).
    pub bytes_received: u64,
    /// Flows held in standby for it.
    pub flows_held: usize,
    /// Checkpoint bytes held in standby for it.
    pub standby_bytes: usize,
    /// When the last checkpoint or delta from it was applied.
    pub last_commit: Option<std::time::Instant>,
    /// The boot epoch of its last hello.
    pub boot_epoch: Option<u32>,
    /// The worker streams its last hello announced.
    pub workers: Option<u16>,
}

/// A started backplane: the handle for the app, one port per worker, and
/// the app's event queue.
#[derive(Debug)]
pub struct Backplane {
    /// The control plane's handle.
    pub handle: BackplaneHandle,
    /// One per worker, in worker order (hand each to its worker thread).
    pub workers: Vec<WorkerPort>,
    /// Connection and membership events, and control messages.
    pub events: Receiver<BackplaneEvent>,
}

impl Backplane {
    /// Binds `cfg.listen` and starts the backplane thread. One worker
    /// stream per waker (`wakers[i]` is called when something is queued
    /// for worker `i`). Standby stores rebuild checkpoints with clones of
    /// `codec`.
    pub fn start<C>(cfg: BackplaneConfig, codec: C, wakers: Vec<Waker>) -> Result<Backplane, Error>
    where
        C: CheckpointCodec + Clone + Send + 'static,
    {
        cfg.validate()?;
        let listener = std::net::TcpListener::bind(cfg.listen).map_err(|source| Error::Bind {
            addr: cfg.listen,
            source,
        })?;
        Self::start_on(listener, cfg, codec, wakers)
    }

    /// As [`start`](Self::start), on a socket the caller bound (its
    /// address is used as ours; `cfg.listen` only for the IP outbound
    /// connections are bound to).
    pub fn start_on<C>(
        listener: std::net::TcpListener,
        cfg: BackplaneConfig,
        codec: C,
        wakers: Vec<Waker>,
    ) -> Result<Backplane, Error>
    where
        C: CheckpointCodec + Clone + Send + 'static,
    {
        cfg.validate()?;
        let workers = BackplaneConfig::validate_workers(wakers.len())?;
        let tls = Tls::load(&cfg)?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: cfg.listen,
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| Error::Bind {
                addr: local_addr,
                source,
            })?;
        let udp = |addr: SocketAddr| -> Result<std::net::UdpSocket, Error> {
            let bind_err = |source| Error::Bind { addr, source };
            let socket = std::net::UdpSocket::bind(addr).map_err(bind_err)?;
            socket.set_nonblocking(true).map_err(bind_err)?;
            Ok(socket)
        };
        let front = cfg.front.map(udp).transpose()?;
        // Beside the TCP listener, on the same address and port.
        let beats = udp(local_addr)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;

        let clock = Clock::new();
        let counters = Arc::new(AtomicCounters::default());
        let closed = Arc::new(AtomicBool::new(false));
        let boot_epoch = cfg.boot_epoch.unwrap_or_else(wall_clock_epoch);
        let mut slots = Vec::with_capacity(cfg.peers.len());
        for spec in &cfg.peers {
            let standby: Box<dyn StandbyStore> = Box::new(Standby::new(
                spec.id,
                codec.clone(),
                StandbyConfig {
                    local_relay: cfg.id,
                    max_flows: cfg.standby_max_flows,
                },
            ));
            let peer =
                Peer::new(cfg.heartbeat.clone(), clock.now()).map_err(|e| Error::Config {
                    field: "heartbeat",
                    why: e.to_string(),
                })?;
            slots.push(Arc::new(PeerSlot {
                spec: spec.clone(),
                queue: Arc::new(PeerQueue::new(spec.id, cfg.max_queued_batches)),
                state: Mutex::new(SlotState {
                    standby,
                    peer,
                    live: None,
                    next_generation: 1,
                    connections: 0,
                    hello: None,
                    last_commit: None,
                    bytes_sent: 0,
                    bytes_received: 0,
                    beat_keys: None,
                    lost_at: None,
                    local_pending: None,
                }),
                membership_wake: Notify::new(),
                live_watch: watch::Sender::new(0),
            }));
        }
        let mut worker_tx = Vec::with_capacity(wakers.len());
        let mut ports = Vec::with_capacity(wakers.len());
        for (w, waker) in wakers.into_iter().enumerate() {
            let (tx, rx) = crossbeam_channel::unbounded();
            worker_tx.push(WorkerTx { tx, waker });
            ports.push(WorkerPort::new(
                w as u16,
                cfg.id,
                slots.iter().map(|s| s.queue.clone()).collect(),
                rx,
                counters.clone(),
                closed.clone(),
            ));
        }
        let (app, events) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            id: cfg.id,
            name: cfg.name.clone(),
            workers,
            boot_epoch,
            cfg,
            clock,
            counters,
            slots,
            worker_tx,
            app,
            closed,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name(format!("backplane-{}", shared.id))
            .spawn({
                let shared = shared.clone();
                move || {
                    runtime.block_on(crate::transport::run(
                        shared,
                        listener,
                        [(front, BeatPath::Front), (Some(beats), BeatPath::Backplane)],
                        tls,
                        shutdown_rx,
                    ))
                }
            })
            .map_err(Error::Runtime)?;
        tracing::info!(
            relay = shared.id,
            addr = %local_addr,
            peers = shared.slots.len(),
            workers,
            boot_epoch,
            "backplane started"
        );
        Ok(Backplane {
            handle: BackplaneHandle {
                inner: Arc::new(Inner {
                    shared,
                    local_addr,
                    shutdown,
                    thread: Mutex::new(Some(thread)),
                }),
            },
            workers: ports,
            events,
        })
    }
}

/// The boot epoch when none is configured: the wall clock in
/// milliseconds, truncated. Peers only compare epochs for equality, so
/// the wrap-around (every 49 days) does no harm; a restart within the
/// same millisecond is the only collision.
fn wall_clock_epoch() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u32)
}

/// The app's handle: status, counters, adoption, shutdown. Cheap to clone;
/// every method is synchronous and short (it takes one peer's lock).
/// The backplane shuts down when the last clone is dropped, or at
/// [`shutdown`](Self::shutdown).
#[derive(Debug, Clone)]
pub struct BackplaneHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Inner {
    fn shutdown(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shutdown.send_replace(true);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread
            && t.thread().id() != std::thread::current().id()
            && t.join().is_err()
        {
            tracing::error!(relay = self.shared.id, "backplane thread panicked");
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl BackplaneHandle {
    /// Our relay id.
    pub fn id(&self) -> RelayId {
        self.inner.shared.id
    }

    /// The address we listen on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The boot epoch our hellos announce.
    pub fn boot_epoch(&self) -> u32 {
        self.inner.shared.boot_epoch
    }

    /// Every configured peer's status, in configuration order.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.inner
            .shared
            .slots
            .iter()
            .map(|s| status(s, &s.lock()))
            .collect()
    }

    /// One peer's status.
    pub fn peer(&self, peer: RelayId) -> Result<PeerStatus, Error> {
        let s = self.slot(peer)?;
        Ok(status(s, &s.lock()))
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        self.inner.shared.counters.snapshot()
    }

    /// The standby store's counters for `peer` (refusals by reason, acks
    /// and resync requests sent).
    pub fn standby_stats(&self, peer: RelayId) -> Result<StandbyStats, Error> {
        Ok(self.slot(peer)?.lock().standby.stats())
    }

    /// Every flow held for `peer`, for adoption (the store is then empty).
    /// Nothing if the peer was heard alive after our last connection to it
    /// ended: it may have committed without us since, and an adopter of an
    /// older checkpoint would seal other bytes under the record sequence
    /// numbers the peer used (counted in `stale_flows_dropped`).
    pub fn take_all(&self, peer: RelayId) -> Result<Vec<Adopted>, Error> {
        let slot = self.slot(peer)?;
        let mut st = slot.lock();
        self.inner.shared.drop_if_stale(slot, &mut st);
        Ok(st.standby.take_all())
    }

    /// The listed flows held for `peer` (a handoff), in the order given.
    /// The same staleness rule as [`take_all`](Self::take_all) applies.
    pub fn take(&self, peer: RelayId, flows: &[FlowId]) -> Result<Vec<Adopted>, Error> {
        let slot = self.slot(peer)?;
        let mut st = slot.lock();
        self.inner.shared.drop_if_stale(slot, &mut st);
        Ok(st.standby.take(flows))
    }

    /// `peer` was heard over the front network (membership's second path:
    /// a cut backplane alone never makes it down).
    pub fn handle_front_heard(&self, peer: RelayId) -> Result<(), Error> {
        let shared = &self.inner.shared;
        let slot = self.slot(peer)?;
        let mut wake = Wake::default();
        {
            let mut st = slot.lock();
            st.peer.handle_front_heard(shared.clock.now());
            shared.drain_membership(slot, &mut st, &mut wake);
        }
        wake.membership = true;
        shared.finish(slot, wake);
        Ok(())
    }

    /// Sends a control message (takeover, handoff, handoff done) to
    /// `peer` on the live connection, ahead of the workers' batches not
    /// yet written. [`Error::NotConnected`] if none is live.
    pub fn send_control(&self, peer: RelayId, message: Message) -> Result<(), Error> {
        let shared = &self.inner.shared;
        let slot = self.slot(peer)?;
        {
            let mut st = slot.lock();
            let live = st.live.as_mut().ok_or(Error::NotConnected(peer))?;
            Envelope::control(shared.id, message)
                .encode(&mut live.control)
                .map_err(|e| Error::Config {
                    field: "control message",
                    why: e.to_string(),
                })?;
        }
        let mut wake = Wake::default();
        wake.writer = true;
        shared.finish(slot, wake);
        Ok(())
    }

    /// Closes the live connection to `peer` (it reconnects as after any
    /// drop). Nothing happens if none is live.
    pub fn disconnect(&self, peer: RelayId) -> Result<(), Error> {
        let slot = self.slot(peer)?;
        let generation = slot.lock().live.as_ref().map(|l| l.generation);
        if let Some(g) = generation {
            self.inner
                .shared
                .close(slot, g, DisconnectReason::Requested);
        }
        Ok(())
    }

    /// Closes every connection (cleanly, within half a second) and stops
    /// the backplane thread. Worker sends fail from then on; the standby
    /// stores stay readable ([`take_all`](Self::take_all)).
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    fn slot(&self, peer: RelayId) -> Result<&Arc<PeerSlot>, Error> {
        self.inner.shared.slot(peer).ok_or(Error::UnknownPeer(peer))
    }
}

fn status(slot: &PeerSlot, st: &SlotState) -> PeerStatus {
    PeerStatus {
        id: slot.spec.id,
        name: slot.spec.name.clone(),
        addr: slot.spec.addr,
        state: st.peer.state(),
        connected: st.live.is_some(),
        outbound: st.live.as_ref().is_some_and(|l| l.outbound),
        connected_since: st.live.as_ref().map(|l| l.since),
        rtt: st.peer.rtt(),
        connections: st.connections,
        bytes_sent: st.bytes_sent,
        bytes_received: st.bytes_received,
        flows_held: st.standby.len(),
        standby_bytes: st.standby.bytes(),
        last_commit: st.last_commit,
        boot_epoch: st.hello.as_ref().map(|h| h.boot_epoch),
        workers: st.hello.as_ref().map(|h| h.workers),
    }
}
