//! The state the backplane thread and the handle share: per peer a slot
//! (standby store, membership, the live connection), the worker queues,
//! the app's event queue, the counters. Every protocol decision is made
//! here, under the slot's lock, by the sans-IO types of relay-replication;
//! the tasks in `transport` only move bytes and time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::Sender;
use relay_replication::{
    Adopted, CheckpointCodec, Deframer, Envelope, FlowId, Hello, Instant, Message,
    PROTOCOL_VERSION, Peer, PeerEvent, RelayId, Standby, StandbyStats, StreamId,
};
use tokio::sync::{Notify, watch};

use crate::config::{BackplaneConfig, PeerSpec};
use crate::counters::{AtomicCounters, bump, walk};
use crate::front::{BeatError, BeatKeys, BeatPath, claimed_sender};
use crate::handle::{BackplaneEvent, DisconnectReason};
use crate::worker::{PeerQueue, Tagged, WorkerEvent, WorkerTx};

/// Events the app has not read beyond which new ones are dropped (and
/// counted): the app may poll `peers()` instead of reading events, and
/// a peer must not make us buffer without bound.
pub(crate) const MAX_APP_EVENTS: usize = 4096;

/// The standby store of one peer, with the codec type erased so that the
/// handle is not generic.
pub(crate) trait StandbyStore: Send {
    fn handle_hello(&mut self, hello: &Hello) -> Result<(), relay_replication::Error>;
    fn disconnected(&mut self);
    fn handle(&mut self, env: Envelope) -> Result<(), relay_replication::Error>;
    fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize;
    fn take_all(&mut self) -> Vec<Adopted>;
    fn take(&mut self, flows: &[FlowId]) -> Vec<Adopted>;
    fn len(&self) -> usize;
    fn bytes(&self) -> usize;
    fn stats(&self) -> StandbyStats;
}

impl<C: CheckpointCodec + Send> StandbyStore for Standby<C> {
    fn handle_hello(&mut self, hello: &Hello) -> Result<(), relay_replication::Error> {
        Standby::handle_hello(self, hello)
    }
    fn disconnected(&mut self) {
        Standby::disconnected(self)
    }
    fn handle(&mut self, env: Envelope) -> Result<(), relay_replication::Error> {
        Standby::handle(self, env)
    }
    fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize {
        Standby::poll_transmit(self, out)
    }
    fn take_all(&mut self) -> Vec<Adopted> {
        Standby::take_all(self)
    }
    fn take(&mut self, flows: &[FlowId]) -> Vec<Adopted> {
        Standby::take(self, flows)
    }
    fn len(&self) -> usize {
        Standby::len(self)
    }
    fn bytes(&self) -> usize {
        // O(flows held): only the control plane asks, rarely.
        self.flows()
            .filter_map(|f| self.get(f).map(|(_, b)| b.len()))
            .sum()
    }
    fn stats(&self) -> StandbyStats {
        Standby::stats(self).clone()
    }
}

/// The clock handed to the sans-IO types: microseconds since start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    origin: std::time::Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            origin: std::time::Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> Instant {
        let us = self.origin.elapsed().as_micros();
        Instant::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
    }

    pub(crate) fn deadline(&self, at: Instant) -> tokio::time::Instant {
        let at = self
            .origin
            .checked_add(Duration::from_micros(at.micros()))
            // Far future: a year is as good as never here.
            .unwrap_or_else(|| std::time::Instant::now() + Duration::from_secs(365 * 86_400));
        tokio::time::Instant::from_std(at)
    }
}

/// The live connection of a peer.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) generation: u64,
    pub(crate) outbound: bool,
    pub(crate) since: std::time::Instant,
    /// Control envelopes (heartbeats, acks, resync requests) waiting for
    /// the writer; it sends them before the worker batches.
    pub(crate) control: Vec<u8>,
    /// Set once, with the reason, to make the connection's tasks stop.
    pub(crate) close: watch::Sender<Option<DisconnectReason>>,
    /// Highest ack handed to each worker on this connection: acks are
    /// cumulative, so an older or repeated one is not worth a wake-up.
    pub(crate) acked: Vec<u64>,
}

/// What the slot lock protects.
pub(crate) struct SlotState {
    pub(crate) standby: Box<dyn StandbyStore>,
    pub(crate) peer: Peer,
    pub(crate) live: Option<Live>,
    pub(crate) next_generation: u64,
    pub(crate) connections: u64,
    pub(crate) hello: Option<Hello>,
    pub(crate) last_commit: Option<std::time::Instant>,
    pub(crate) bytes_sent: u64,
    pub(crate) bytes_received: u64,
    /// The datagram heartbeat keys of the latest connection (kept after
    /// it ends: that is when the datagram paths matter).
    pub(crate) beat_keys: Option<BeatKeys>,
    /// When the last connection ended; `None` while one is live.
    pub(crate) lost_at: Option<Instant>,
    /// Our workers are to commit locally from this time on (and the
    /// connection generation they knew): see [`Shared::local_delay`].
    pub(crate) local_pending: Option<(Instant, u64)>,
}

impl std::fmt::Debug for SlotState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotState")
            .field("state", &self.peer.state())
            .field("live", &self.live)
            .field("flows_held", &self.standby.len())
            .finish_non_exhaustive()
    }
}

/// One configured peer.
#[derive(Debug)]
pub(crate) struct PeerSlot {
    pub(crate) spec: PeerSpec,
    pub(crate) queue: Arc<PeerQueue>,
    pub(crate) state: Mutex<SlotState>,
    /// Wakes the membership task (its deadline may have moved earlier).
    pub(crate) membership_wake: Notify,
    /// Generation of the live connection, 0 when none: the dialer waits
    /// on it.
    pub(crate) live_watch: watch::Sender<u64>,
}

impl PeerSlot {
    pub(crate) fn lock(&self) -> MutexGuard<'_, SlotState> {
        // A panic under the lock is a bug; the state it left is still the
        // best there is, and the backplane must keep serving the others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Wake-ups owed once a slot lock is released.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    workers: Vec<u16>,
    pub(crate) writer: bool,
    pub(crate) membership: bool,
}

/// Everything shared.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) id: RelayId,
    pub(crate) name: String,
    pub(crate) workers: u16,
    pub(crate) boot_epoch: u32,
    pub(crate) cfg: BackplaneConfig,
    pub(crate) clock: Clock,
    pub(crate) counters: Arc<AtomicCounters>,
    pub(crate) slots: Vec<Arc<PeerSlot>>,
    pub(crate) worker_tx: Vec<WorkerTx>,
    pub(crate) app: Sender<BackplaneEvent>,
    /// Set at shutdown: workers' sends fail from then on.
    pub(crate) closed: Arc<AtomicBool>,
}

impl Shared {
    pub(crate) fn slot(&self, peer: RelayId) -> Option<&Arc<PeerSlot>> {
        self.slots.iter().find(|s| s.spec.id == peer)
    }

    /// Our hello, encoded.
    pub(crate) fn hello_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // A hello body is under 100 bytes: it always fits.
        let _ = Envelope::control(
            self.id,
            Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                relay: self.id,
                name: self.name.clone(),
                workers: self.workers,
                boot_epoch: self.boot_epoch,
            }),
        )
        .encode(&mut out);
        out
    }

    /// Whether our connection in direction `outbound` wins the tie-break
    /// against `peer`: the lower relay id's outbound connection.
    pub(crate) fn preferred(&self, peer: RelayId, outbound: bool) -> bool {
        outbound == (self.id < peer)
    }

    /// Whether a new connection in direction `outbound` would lose the
    /// tie-break against the live one (checked before our hello, so that
    /// a duplicate costs the peer nothing).
    pub(crate) fn would_lose(&self, slot: &PeerSlot, outbound: bool) -> bool {
        let st = slot.lock();
        st.live.as_ref().is_some_and(|l| {
            self.preferred(slot.spec.id, l.outbound) && !self.preferred(slot.spec.id, outbound)
        })
    }

    /// Makes an authenticated connection (hellos exchanged) the peer's
    /// live one, or refuses it (tie-break, or its hello). Returns its
    /// generation and the receiver of its close signal.
    pub(crate) fn install(
        &self,
        slot: &PeerSlot,
        hello: Hello,
        outbound: bool,
        beat_keys: Option<BeatKeys>,
    ) -> Option<(u64, watch::Receiver<Option<DisconnectReason>>)> {
        let peer = slot.spec.id;
        let mut wake = Wake::default();
        let installed = (|| {
            let mut st = slot.lock();
            if self.closed.load(Ordering::Acquire) {
                // Shutting down: a connection that finished its hellos
                // meanwhile is not started.
                return None;
            }
            if let Some(live) = &st.live {
                if self.preferred(peer, live.outbound) && !self.preferred(peer, outbound) {
                    bump(&self.counters.duplicates_closed);
                    tracing::debug!(peer, outbound, "backplane: duplicate connection closed");
                    return None;
                }
                // This one wins: it is the preferred direction, or it is
                // newer in the same direction (the old one is most likely
                // half-open: the peer dialed again because it lost it).
                bump(&self.counters.duplicates_closed);
                self.end_live(slot, &mut st, DisconnectReason::Replaced, &mut wake);
            }
            // Flows the peer may have committed without us since the last
            // connection ended are re-seeded on this one; until then the
            // old copies must not be adopted.
            self.drop_if_stale(slot, &mut st);
            if let Err(e) = st.standby.handle_hello(&hello) {
                self.violation(peer, &e);
                return None;
            }
            st.lost_at = None;
            // Our workers never went local: they re-seed on this one.
            st.local_pending = None;
            if hello.name != slot.spec.name {
                tracing::warn!(
                    peer,
                    configured = %slot.spec.name,
                    announced = %hello.name,
                    "backplane: peer announces another name than configured"
                );
            }
            let generation = st.next_generation;
            st.next_generation += 1;
            let (close, close_rx) = watch::channel(None);
            st.live = Some(Live {
                generation,
                outbound,
                since: std::time::Instant::now(),
                control: Vec::new(),
                close,
                acked: vec![0; usize::from(self.workers)],
            });
            st.connections += 1;
            if st.connections > 1 {
                bump(&self.counters.reconnects);
            }
            bump(&self.counters.connections_established);
            tracing::info!(
                peer,
                outbound,
                generation,
                workers = hello.workers,
                boot_epoch = hello.boot_epoch,
                "backplane connection up"
            );
            st.hello = Some(hello);
            if beat_keys.is_some() {
                st.beat_keys = beat_keys;
            }
            slot.queue.reset.store(false, Ordering::Release);
            slot.queue.too_slow.store(false, Ordering::Release);
            slot.queue.live.store(generation, Ordering::Release);
            slot.live_watch.send_replace(generation);
            // Workers learn of the connection before anything of theirs
            // can travel on it (their sends carry this generation).
            self.to_all_workers(generation, WorkerEvent::PeerReset(peer), &mut wake);
            self.app_event(BackplaneEvent::Connected { peer, outbound });
            Some((generation, close_rx))
        })();
        self.finish(slot, wake);
        installed
    }

    /// Asks the connection `generation` of `slot` to close (its tasks see
    /// the signal and end; the first reason given is kept).
    pub(crate) fn close(&self, slot: &PeerSlot, generation: u64, reason: DisconnectReason) {
        let st = slot.lock();
        if let Some(live) = st.live.as_ref().filter(|l| l.generation == generation) {
            set_reason(&live.close, reason);
        }
    }

    /// The connection's tasks ended: forget it if it is still the live one.
    pub(crate) fn uninstall(&self, slot: &PeerSlot, generation: u64) {
        let mut wake = Wake::default();
        {
            let mut st = slot.lock();
            if st.live.as_ref().is_some_and(|l| l.generation == generation) {
                self.end_live(slot, &mut st, DisconnectReason::Closed, &mut wake);
            }
        }
        self.finish(slot, wake);
    }

    /// Ends the live connection: standby and workers learn it is gone.
    fn end_live(
        &self,
        slot: &PeerSlot,
        st: &mut SlotState,
        reason: DisconnectReason,
        wake: &mut Wake,
    ) {
        let Some(live) = st.live.take() else {
            return;
        };
        st.lost_at = Some(self.clock.now());
        set_reason(&live.close, reason);
        let reason = (*live.close.borrow()).unwrap_or(reason);
        let peer = slot.spec.id;
        slot.queue.live.store(0, Ordering::Release);
        slot.live_watch.send_replace(0);
        // Batches still queued were encoded for this connection.
        for _ in slot.queue.rx.try_iter() {
            bump(&self.counters.stale_batches);
        }
        st.standby.disconnected();
        bump(&self.counters.disconnects);
        tracing::info!(
            peer,
            generation = live.generation,
            ?reason,
            lived_ms = live.since.elapsed().as_millis() as u64,
            "backplane connection down"
        );
        self.to_all_workers(live.generation, WorkerEvent::Disconnected(peer), wake);
        if reason == DisconnectReason::PeerTooSlow {
            self.go_local_later(st, live.generation, wake);
        }
        self.app_event(BackplaneEvent::Disconnected { peer, reason });
    }

    /// Reads every complete envelope the deframer holds and applies it;
    /// then queues the standby's acks and resync requests (one write for
    /// the whole read). `Err`: the connection must close.
    pub(crate) fn process(
        &self,
        slot: &PeerSlot,
        generation: u64,
        deframer: &mut Deframer,
        received: usize,
    ) -> Result<(), DisconnectReason> {
        let mut wake = Wake::default();
        let r = (|| {
            let mut st = slot.lock();
            if st.live.as_ref().map(|l| l.generation) != Some(generation) {
                return Err(DisconnectReason::Replaced);
            }
            st.bytes_received += received as u64;
            let r = self.dispatch_all(slot, &mut st, deframer, &mut wake);
            let SlotState { standby, live, .. } = &mut *st;
            if let (Ok(()), Some(live)) = (&r, live.as_mut())
                && standby.poll_transmit(&mut live.control) > 0
            {
                wake.writer = true;
            }
            r
        })();
        self.finish(slot, wake);
        r
    }

    fn dispatch_all(
        &self,
        slot: &PeerSlot,
        st: &mut SlotState,
        deframer: &mut Deframer,
        wake: &mut Wake,
    ) -> Result<(), DisconnectReason> {
        loop {
            match deframer.pop() {
                Ok(None) => return Ok(()),
                Ok(Some(env)) => {
                    self.counters.message_in(env.message.kind());
                    self.dispatch(slot, st, env, wake)?;
                }
                Err(e) => {
                    bump(&self.counters.rejected_malformed);
                    tracing::warn!(peer = slot.spec.id, error = %e, "backplane: malformed input; closing");
                    return Err(DisconnectReason::Malformed);
                }
            }
        }
    }

    fn dispatch(
        &self,
        slot: &PeerSlot,
        st: &mut SlotState,
        env: Envelope,
        wake: &mut Wake,
    ) -> Result<(), DisconnectReason> {
        let peer = slot.spec.id;
        let kind = env.message.kind();
        if kind.is_stream() {
            st.standby
                .handle(env)
                .map_err(|e| self.violation(peer, &e))?;
            if !matches!(kind, relay_replication::Kind::Forget) {
                st.last_commit = Some(std::time::Instant::now());
            }
            return Ok(());
        }
        if env.stream.relay != peer {
            return Err(self.violation(
                peer,
                &relay_replication::Error::WrongRelay {
                    expected: peer,
                    got: env.stream.relay,
                },
            ));
        }
        let generation = st.live.as_ref().map_or(0, |l| l.generation);
        match env.message {
            Message::Ack { stream, seq } => {
                let w = self.our_worker(peer, stream)?;
                if let Some(live) = st.live.as_mut()
                    && seq > live.acked[usize::from(w)]
                {
                    live.acked[usize::from(w)] = seq;
                    self.to_worker(w, generation, WorkerEvent::Ack { peer, seq }, wake)?;
                }
            }
            Message::ResyncRequest { stream, seq, flow } => {
                let w = self.our_worker(peer, stream)?;
                self.to_worker(w, generation, WorkerEvent::Resync { peer, seq, flow }, wake)?;
            }
            Message::Heartbeat(hb) => {
                st.peer.handle_heartbeat(self.clock.now(), &hb);
                self.drain_membership(slot, st, wake);
                wake.membership = true;
            }
            Message::Hello(_) => {
                return Err(self.violation(
                    peer,
                    &relay_replication::Error::Unexpected(relay_replication::Kind::Hello),
                ));
            }
            m @ (Message::Takeover(_) | Message::Handoff { .. } | Message::HandoffDone) => {
                self.app_event(BackplaneEvent::Control { peer, message: m });
            }
            // Stream kinds went to the standby above.
            Message::FullCheckpoint { .. } | Message::Delta { .. } | Message::Forget { .. } => {}
        }
        Ok(())
    }

    /// The worker an ack or resync request from `peer` is for: it must
    /// name one of our worker streams.
    fn our_worker(&self, peer: RelayId, stream: StreamId) -> Result<u16, DisconnectReason> {
        if stream.relay != self.id {
            return Err(self.violation(
                peer,
                &relay_replication::Error::WrongRelay {
                    expected: self.id,
                    got: stream.relay,
                },
            ));
        }
        if stream.worker >= self.workers {
            return Err(self.violation(
                peer,
                &relay_replication::Error::StreamOutOfRange {
                    stream,
                    workers: self.workers,
                },
            ));
        }
        Ok(stream.worker)
    }

    /// Counts and logs a peer's protocol violation.
    pub(crate) fn violation(
        &self,
        peer: RelayId,
        e: &relay_replication::Error,
    ) -> DisconnectReason {
        bump(&self.counters.protocol_errors);
        tracing::warn!(peer, error = %e, "backplane: protocol violation; closing");
        DisconnectReason::Protocol
    }

    /// A datagram arrived on a heartbeat port from `from`: a beat of a
    /// peer, or something refused and counted.
    pub(crate) fn beat_datagram(
        &self,
        path: BeatPath,
        datagram: &[u8],
        from: std::net::SocketAddr,
    ) {
        let checked = claimed_sender(datagram).and_then(|relay| {
            let slot = self
                .slots
                .iter()
                .find(|s| {
                    let addr = match path {
                        BeatPath::Front => s.spec.front,
                        BeatPath::Backplane => Some(s.spec.addr),
                    };
                    s.spec.id == relay && addr.is_some_and(|a| a.ip() == from.ip())
                })
                .ok_or(BeatError::Stranger(relay))?;
            let mut st = slot.lock();
            st.beat_keys
                .as_mut()
                .ok_or(BeatError::NoKey(relay))?
                .path(path)
                .open(datagram, relay)?;
            Ok((slot.clone(), st))
        });
        match checked {
            Ok((slot, mut st)) => {
                let now = self.clock.now();
                let mut wake = Wake::default();
                match path {
                    BeatPath::Front => {
                        bump(&self.counters.front_heard);
                        st.peer.handle_front_heard(now);
                    }
                    BeatPath::Backplane => {
                        bump(&self.counters.backplane_beats_heard);
                        st.peer.handle_backplane_beat(now);
                    }
                }
                self.drain_membership(&slot, &mut st, &mut wake);
                drop(st);
                wake.membership = true;
                self.finish(&slot, wake);
            }
            Err(e) => {
                bump(&self.counters.front_refused);
                tracing::debug!(%from, ?path, error = %e, "heartbeat datagram refused");
            }
        }
    }

    /// Acts on the membership events: heartbeats to send, up and down.
    pub(crate) fn drain_membership(&self, slot: &PeerSlot, st: &mut SlotState, wake: &mut Wake) {
        let peer = slot.spec.id;
        while let Some(ev) = st.peer.poll_event() {
            match ev {
                PeerEvent::SendHeartbeat(hb) => {
                    if let Some(live) = st.live.as_mut() {
                        let _ = Envelope::control(self.id, Message::Heartbeat(hb))
                            .encode(&mut live.control);
                        wake.writer = true;
                    }
                }
                PeerEvent::PeerUp => {
                    tracing::info!(peer, "backplane: peer up");
                    let g = st.live.as_ref().map_or(0, |l| l.generation);
                    self.to_all_workers(g, WorkerEvent::PeerUp(peer), wake);
                    self.app_event(BackplaneEvent::PeerUp(peer));
                }
                PeerEvent::BackplaneLost => {
                    tracing::warn!(
                        peer,
                        "backplane lost, the peer is alive (heard on the front network): \
                         flows commit locally, nothing is taken over"
                    );
                    bump(&self.counters.backplane_lost);
                    let g = st.live.as_ref().map_or(0, |l| l.generation);
                    // As for a dead peer, the workers stop waiting for its
                    // acknowledgements; a new connection re-seeds them.
                    if let Some(live) = st.live.as_ref() {
                        set_reason(&live.close, DisconnectReason::BackplaneLost);
                    }
                    self.go_local_later(st, g, wake);
                    self.app_event(BackplaneEvent::BackplaneLost(peer));
                }
                PeerEvent::PeerDown => {
                    tracing::warn!(peer, "backplane: peer down");
                    let g = st.live.as_ref().map_or(0, |l| l.generation);
                    // The workers are told the peer is down, and commit
                    // locally from now on; only a fresh connection (its
                    // PeerReset) re-seeds them. So the connection goes too,
                    // however young: a peer that is alive after all comes
                    // back through a new hello instead of staying
                    // unprotected on the old connection for good.
                    if let Some(live) = st.live.as_ref() {
                        set_reason(&live.close, DisconnectReason::PeerDown);
                    }
                    self.go_local_later(st, g, wake);
                    self.app_event(BackplaneEvent::PeerDown(peer));
                }
            }
        }
    }

    /// How long after the connection ended our workers wait before they
    /// commit locally. The peer must be able to tell that we may have: it
    /// drops our flows instead of adopting them when it heard us alive
    /// more than one heartbeat interval after the connection ended
    /// ([`Shared::may_have_gone_local`]). Our last heartbeat before a local
    /// commit is at most one interval old, so three intervals leave one to
    /// spare: a relay that dies before its workers go local is adopted
    /// from checkpoints that are still the latest; one that lives on
    /// after they did is heard well after the connection ended.
    pub(crate) fn local_delay(&self) -> Duration {
        self.cfg.heartbeat.interval * 3
    }

    /// The peer is down, or out of reach over the backplane: our workers
    /// commit locally once [`local_delay`](Self::local_delay) has passed
    /// since the connection ended (it is being closed now if still live).
    fn go_local_later(&self, st: &mut SlotState, generation: u64, wake: &mut Wake) {
        let now = self.clock.now();
        let since = if st.live.is_some() {
            now
        } else {
            st.lost_at.unwrap_or(now)
        };
        let at = since + self.local_delay();
        if st.local_pending.is_none() {
            st.local_pending = Some((at, generation));
        }
        wake.membership = true;
    }

    /// Tells the workers to commit locally if the delay is over.
    pub(crate) fn release_local(&self, slot: &PeerSlot, st: &mut SlotState, wake: &mut Wake) {
        let Some((at, generation)) = st.local_pending else {
            return;
        };
        if self.clock.now() < at {
            return;
        }
        st.local_pending = None;
        tracing::info!(peer = slot.spec.id, "flows commit locally from now on");
        self.to_all_workers(generation, WorkerEvent::PeerDown(slot.spec.id), wake);
    }

    /// Whether the peer may have committed its flows without us since our
    /// last connection ended: we heard it alive well after that (see
    /// [`local_delay`](Self::local_delay)). A peer that died is last
    /// heard about when its connection ends (its kernel closes it), or
    /// the connection never ended on our side (its box went down).
    pub(crate) fn may_have_gone_local(&self, st: &SlotState) -> bool {
        let Some(lost) = st.lost_at else {
            return false;
        };
        st.peer
            .heard()
            .is_some_and(|h| h > lost + self.cfg.heartbeat.interval)
    }

    /// Drops the peer's flows from the standby store if their copies may
    /// be older than what the peer committed on its own.
    pub(crate) fn drop_if_stale(&self, slot: &PeerSlot, st: &mut SlotState) {
        if !self.may_have_gone_local(st) || st.standby.len() == 0 {
            return;
        }
        let dropped = st.standby.take_all().len();
        tracing::warn!(
            peer = slot.spec.id,
            flows = dropped,
            "the peer was alive after our connection ended and may have committed without us: \
             its flows are not adopted (it re-seeds them on the next connection)"
        );
        self.counters
            .stale_flows_dropped
            .fetch_add(dropped as u64, Ordering::Relaxed);
    }

    /// Takes what the writer of connection `generation` must send: the
    /// control envelopes, then the worker batches of this connection.
    /// `Err`: the connection must close.
    pub(crate) fn collect(
        &self,
        slot: &PeerSlot,
        generation: u64,
    ) -> Result<Vec<u8>, DisconnectReason> {
        let mut st = slot.lock();
        let SlotState {
            live, bytes_sent, ..
        } = &mut *st;
        let Some(live) = live.as_mut().filter(|l| l.generation == generation) else {
            return Err(DisconnectReason::Replaced);
        };
        if slot.queue.reset.swap(false, Ordering::AcqRel) {
            return Err(DisconnectReason::StreamReset);
        }
        if slot.queue.too_slow.swap(false, Ordering::AcqRel) {
            return Err(DisconnectReason::PeerTooSlow);
        }
        let mut buf = std::mem::take(&mut live.control);
        for batch in slot.queue.rx.try_iter() {
            if batch.generation != generation {
                bump(&self.counters.stale_batches);
                continue;
            }
            // A batch is the worker's own stream messages, whole: anything
            // else would corrupt another stream or the framing at the peer.
            let mut own = true;
            let framed = walk(&batch.bytes, |kind, relay, worker| {
                own &= kind.is_stream() && relay == self.id && worker == batch.worker;
            });
            if framed.is_err() || !own {
                bump(&self.counters.bad_batches);
                tracing::error!(
                    peer = slot.spec.id,
                    worker = batch.worker,
                    len = batch.bytes.len(),
                    "backplane: worker batch is not whole envelopes of its own stream; resetting"
                );
                return Err(DisconnectReason::StreamReset);
            }
            if buf.is_empty() {
                buf = batch.bytes;
            } else {
                buf.extend_from_slice(&batch.bytes);
            }
        }
        *bytes_sent += buf.len() as u64;
        self.counters
            .bytes_out
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.counters.messages_out(&buf);
        Ok(buf)
    }

    /// Queues an event for worker `w`. `Err` if the worker has stopped
    /// reading (its queue is at the limit): the connection must close.
    fn to_worker(
        &self,
        w: u16,
        generation: u64,
        event: WorkerEvent,
        wake: &mut Wake,
    ) -> Result<(), DisconnectReason> {
        let Some(tx) = self.worker_tx.get(usize::from(w)) else {
            return Ok(());
        };
        if tx.tx.len() >= self.cfg.max_worker_events {
            tracing::warn!(
                worker = w,
                "backplane: worker event queue full; closing the connection"
            );
            return Err(DisconnectReason::WorkerBacklog);
        }
        let _ = tx.tx.send(Tagged { generation, event });
        if !wake.workers.contains(&w) {
            wake.workers.push(w);
        }
        Ok(())
    }

    /// Connection and membership events go to every worker whatever its
    /// queue holds: they are rare, and losing one would leave an outbox
    /// in the wrong state.
    fn to_all_workers(&self, generation: u64, event: WorkerEvent, wake: &mut Wake) {
        for (w, tx) in self.worker_tx.iter().enumerate() {
            let _ = tx.tx.send(Tagged {
                generation,
                event: event.clone(),
            });
            let w = w as u16;
            if !wake.workers.contains(&w) {
                wake.workers.push(w);
            }
        }
    }

    pub(crate) fn app_event(&self, event: BackplaneEvent) {
        if self.app.len() >= MAX_APP_EVENTS {
            bump(&self.counters.events_dropped);
            return;
        }
        let _ = self.app.send(event);
    }

    /// Delivers the wake-ups owed, outside the lock.
    pub(crate) fn finish(&self, slot: &PeerSlot, wake: Wake) {
        for w in wake.workers {
            if let Some(tx) = self.worker_tx.get(usize::from(w)) {
                (tx.waker)();
            }
        }
        if wake.writer {
            slot.queue.writer_wake.notify_one();
        }
        if wake.membership {
            slot.membership_wake.notify_one();
        }
    }
}

/// Sets the close reason unless one is set already.
fn set_reason(close: &watch::Sender<Option<DisconnectReason>>, reason: DisconnectReason) {
    close.send_if_modified(|r| {
        if r.is_none() {
            *r = Some(reason);
            true
        } else {
            false
        }
    });
}
