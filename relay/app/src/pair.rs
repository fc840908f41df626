//! Who serves what in a relay pair, and the moves between the two: a
//! failover when the peer dies, a handoff when an operator moves every
//! flow to the peer (`relay handoff`), a takeover when an operator or a
//! keepalived notify script asks this relay to serve (`relay takeover`),
//! and the announcements that keep a relay that starts (or comes back)
//! from taking addresses its peer serves.
//!
//! One thread runs it, on the backplane's events and the operator's
//! commands. The backplane messages it uses:
//!
//! - `Takeover { from: X, vips }`, sent by each relay to the other on every
//!   new connection: "of yours, X, I serve `vips`" (often none). A relay
//!   that starts serves nothing until its peer has said this, or is known
//!   dead (never came up within the dead interval).
//! - `Handoff { to: X }`: "X takes every flow and address". Sent by the
//!   relay that hands off (X is the peer), after it stopped serving; or by
//!   X itself as a request (`relay takeover` while the peer lives).
//! - `HandoffDone`: X installed the flows and announced the addresses; the
//!   sender drops its frozen flows.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use crossbeam_channel::{Receiver, Sender};
use relay_cluster::{BackplaneEvent, BackplaneHandle, PeerState};
use relay_datapath::{garp, neighbour, netlink};
use relay_flow::FlowCheckpoint;
use relay_replication::{Message, RelayId, Takeover as Announce};
use relay_worker::{AdoptCommand, Adoption};

use crate::cluster::Takeover;

/// How long the dead relay may have kept sending after a flow's last
/// checkpoint reached us: the adopter's TCP timestamps start that far
/// ahead, so that none is below one the old relay sent (the client would
/// drop it, RFC 7323 PAWS). A flow may be idle for long after its last
/// commit, so this is generous; a timestamp clock that jumps forward costs
/// nothing.
const OLD_OWNER_RAN_AT_MOST: Duration = Duration::from_secs(600);

/// How long a handing-off relay waits for the peer's `HandoffDone` before
/// it serves its flows again.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the worker gets to take a command (freeze, adopt).
const WORKER_TIMEOUT: Duration = Duration::from_secs(2);

/// An operator's request, with where the answer goes.
#[derive(Debug)]
pub enum PairCommand {
    /// `relay handoff`: move every flow and address to the peer.
    Handoff(Sender<Result<String, String>>),
    /// `relay takeover`: serve every address, with the peer's flows.
    Takeover(Sender<Result<String, String>>),
}

/// A handoff this relay started, waiting for the peer's `HandoffDone`.
struct Pending {
    reply: Option<Sender<Result<String, String>>>,
    released: Vec<Ipv4Addr>,
    flows: usize,
    started: Instant,
}

/// The pair as this relay sees it.
#[allow(missing_debug_implementations)]
pub struct Pair {
    handle: BackplaneHandle,
    peer: RelayId,
    peer_name: String,
    adopt_tx: mpsc::Sender<AdoptCommand>,
    waker: Arc<dyn Fn() + Send + Sync>,
    t: Takeover,
    /// The VIPs of the services this relay owns by configuration.
    own_vips: Vec<Ipv4Addr>,
    /// The shared back-side address: served with any VIP.
    back_addr: Ipv4Addr,
    /// The peer came up at least once (a peer never up has nothing to
    /// take over).
    was_up: bool,
    /// This relay decided what it serves since it started.
    settled: bool,
    handing_off: Option<Pending>,
    /// A `relay takeover` waiting for the peer's handoff.
    taking_over: Option<(Sender<Result<String, String>>, Instant)>,
}

impl Pair {
    /// A pair that serves nothing yet (see the module doc).
    pub fn new(
        handle: BackplaneHandle,
        peer: (RelayId, String),
        adopt_tx: mpsc::Sender<AdoptCommand>,
        waker: Arc<dyn Fn() + Send + Sync>,
        t: Takeover,
        own_vips: Vec<Ipv4Addr>,
        back_addr: Ipv4Addr,
    ) -> Pair {
        Pair {
            handle,
            peer: peer.0,
            peer_name: peer.1,
            adopt_tx,
            waker,
            t,
            own_vips,
            back_addr,
            was_up: false,
            settled: false,
            handing_off: None,
            taking_over: None,
        }
    }

    /// Runs until `stop`.
    pub fn run(
        mut self,
        events: Receiver<BackplaneEvent>,
        commands: Receiver<PairCommand>,
        stop: Arc<AtomicBool>,
    ) {
        while !stop.load(Ordering::Relaxed) {
            crossbeam_channel::select! {
                recv(events) -> e => match e {
                    Ok(e) => self.on_event(e),
                    Err(_) => break,
                },
                recv(commands) -> c => {
                    if let Ok(c) = c {
                        self.on_command(c);
                    }
                }
                default(Duration::from_millis(100)) => {}
            }
            self.on_tick();
        }
    }

    fn served(&self) -> Vec<Ipv4Addr> {
        self.t
            .addresses
            .all
            .iter()
            .filter(|(_, s)| *s)
            .map(|(a, _)| *a)
            .collect()
    }

    fn on_event(&mut self, event: BackplaneEvent) {
        match event {
            BackplaneEvent::PeerDown(_) if !self.was_up => {
                tracing::info!(peer = %self.peer_name, "peer not up yet");
                self.settle(&[]);
            }
            BackplaneEvent::PeerDown(_) => {
                self.was_up = false;
                self.settle(&[]);
                let down_at = Instant::now();
                if let Some(p) = self.handing_off.take() {
                    // It died before confirming: nobody carries the flows
                    // unless we do.
                    self.undo_handoff(p, "the peer died during the handoff");
                }
                match self.adopt_and_serve("failover") {
                    Ok(_) => {
                        let m = &self.t.shared.metrics;
                        m.failovers.inc();
                        m.failover_seconds.observe(down_at.elapsed().as_secs_f64());
                    }
                    Err(e) => {
                        tracing::error!(peer = %self.peer_name, error = %e, "failover failed")
                    }
                }
            }
            BackplaneEvent::PeerUp(_) => {
                self.was_up = true;
                tracing::info!(peer = %self.peer_name, "peer up");
            }
            BackplaneEvent::Connected { peer, outbound } => {
                tracing::info!(peer, outbound, "backplane connected");
                self.announce();
            }
            BackplaneEvent::Disconnected { peer, reason } => {
                tracing::info!(peer, ?reason, "backplane disconnected");
            }
            BackplaneEvent::BackplaneLost(peer) => {
                tracing::info!(peer, "peer alive without a backplane: nothing taken over");
            }
            BackplaneEvent::Control { message, .. } => self.on_control(message),
        }
    }

    /// Tells the peer which of its addresses we serve.
    fn announce(&self) {
        let mine: Vec<Ipv4Addr> = self.served();
        let theirs = self
            .t
            .addresses
            .all
            .iter()
            .map(|(a, _)| *a)
            .filter(|a| !self.own_vips.contains(a) && *a != self.back_addr && mine.contains(a))
            .collect();
        let message = Message::Takeover(Announce {
            epoch: 0,
            from: self.peer,
            services: Vec::new(),
            vips: theirs,
        });
        if let Err(e) = self.handle.send_control(self.peer, message) {
            tracing::warn!(error = %e, "cannot tell the peer what we serve");
        }
    }

    fn on_control(&mut self, message: Message) {
        let me = self.handle.id();
        match message {
            Message::Takeover(a) if a.from == me => {
                let held: Vec<Ipv4Addr> = a.vips;
                if !held.is_empty() {
                    tracing::info!(peer = %self.peer_name, vips = ?held, "the peer serves addresses of ours: standing by for them");
                }
                self.settle(&held);
            }
            Message::Takeover(a) => {
                tracing::warn!(
                    from = a.from,
                    "a takeover announcement about another relay: ignored"
                );
            }
            Message::Handoff { to, .. } if to == me => {
                let reply = self.taking_over.take();
                let result = self.adopt_and_serve("handoff");
                match &result {
                    Ok(n) => {
                        if let Err(e) = self.handle.send_control(self.peer, Message::HandoffDone) {
                            tracing::error!(error = %e, "cannot confirm the handoff");
                        }
                        tracing::info!(flows = n, "handoff received: serving every address");
                    }
                    Err(e) => tracing::error!(error = %e, "handoff received but failed"),
                }
                if let Some((reply, started)) = reply {
                    let _ = reply.send(
                        result
                            .map(|n| {
                                format!(
                                    "took over from {}: {n} flows, every address, in {:.0} ms",
                                    self.peer_name,
                                    started.elapsed().as_secs_f64() * 1e3
                                )
                            })
                            .map_err(|e| e.to_string()),
                    );
                }
            }
            Message::Handoff { to, .. } if to == self.peer => {
                tracing::info!(peer = %self.peer_name, "the peer asks for our flows");
                self.start_handoff(None);
            }
            Message::Handoff { to, .. } => {
                tracing::warn!(to, "a handoff to an unknown relay: ignored");
            }
            Message::HandoffDone => match self.handing_off.take() {
                Some(p) => {
                    let _ = self.adopt_tx.send(AdoptCommand::DropFrozen);
                    (self.waker)();
                    let msg = format!(
                        "handed {} flows and {:?} to {} in {:.0} ms",
                        p.flows,
                        p.released,
                        self.peer_name,
                        p.started.elapsed().as_secs_f64() * 1e3
                    );
                    tracing::info!("{msg}");
                    if let Some(r) = p.reply {
                        let _ = r.send(Ok(msg));
                    }
                }
                None => tracing::warn!("a handoff confirmation for no handoff: ignored"),
            },
            other => tracing::warn!(kind = %other.kind(), "unexpected control message"),
        }
    }

    fn on_command(&mut self, command: PairCommand) {
        match command {
            PairCommand::Handoff(reply) => self.start_handoff(Some(reply)),
            PairCommand::Takeover(reply) => {
                let state = self.handle.peer(self.peer).map(|p| p.state);
                match state {
                    Ok(PeerState::Up) => {
                        let me = self.handle.id();
                        let ask = Message::Handoff {
                            to: me,
                            flows: Vec::new(),
                        };
                        match self.handle.send_control(self.peer, ask) {
                            Ok(()) => self.taking_over = Some((reply, Instant::now())),
                            Err(e) => {
                                let _ = reply.send(Err(format!("cannot ask the peer: {e}")));
                            }
                        }
                    }
                    Ok(PeerState::Down) | Ok(PeerState::Connecting) => {
                        let result = self.adopt_and_serve("takeover");
                        let _ = reply.send(
                            result
                                .map(|n| format!("serving every address, {n} flows adopted"))
                                .map_err(|e| e.to_string()),
                        );
                    }
                    Ok(s) => {
                        let _ = reply.send(Err(format!(
                            "{} is {} (alive, backplane in doubt): refusing to serve its addresses too; \
                             run `relay handoff` on it, or wait for the backplane",
                            self.peer_name,
                            crate::peers::state_name(s)
                        )));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
        }
    }

    fn on_tick(&mut self) {
        if self
            .handing_off
            .as_ref()
            .is_some_and(|p| p.started.elapsed() > HANDOFF_TIMEOUT)
            && let Some(p) = self.handing_off.take()
        {
            self.undo_handoff(p, "the peer did not confirm in time");
        }
        if let Some((_, started)) = &self.taking_over
            && started.elapsed() > HANDOFF_TIMEOUT
            && let Some((reply, _)) = self.taking_over.take()
        {
            let _ = reply.send(Err(format!(
                "{} did not hand its flows over within {} s",
                self.peer_name,
                HANDOFF_TIMEOUT.as_secs()
            )));
        }
    }

    /// Decides, once after start, what this relay serves: its own VIPs,
    /// but for those its peer says it serves.
    fn settle(&mut self, held_by_peer: &[Ipv4Addr]) {
        if self.settled {
            return;
        }
        self.settled = true;
        let mut take: Vec<Ipv4Addr> = self
            .own_vips
            .iter()
            .copied()
            .filter(|v| !held_by_peer.contains(v))
            .collect();
        if take.is_empty() {
            tracing::info!("serving no address: the peer serves ours, or we own none");
            return;
        }
        take.push(self.back_addr);
        match self.serve(&take) {
            Ok(()) => tracing::info!(addresses = ?take, "serving addresses"),
            Err(e) => tracing::error!(error = %e, "cannot serve our addresses"),
        }
    }

    /// Marks `addrs` served: steer maps, kernel addresses, gratuitous ARP.
    fn serve(&mut self, addrs: &[Ipv4Addr]) -> anyhow::Result<()> {
        self.mark(addrs, true)?;
        let (vips, back): (Vec<Ipv4Addr>, Vec<Ipv4Addr>) =
            addrs.iter().partition(|a| **a != self.back_addr);
        for vip in &vips {
            netlink::add_address(&self.t.front.0, *vip)?;
        }
        for b in &back {
            netlink::add_address(&self.t.back.0, *b)?;
        }
        garp::announce(&self.t.front.0, self.t.front.1, &vips)?;
        garp::announce(&self.t.back.0, self.t.back.1, &back)?;
        Ok(())
    }

    /// Marks `addrs` stood by for: the steer programs drop their traffic
    /// and their ARP, and the box's kernel stops claiming them.
    fn release(&mut self, addrs: &[Ipv4Addr]) -> anyhow::Result<()> {
        self.mark(addrs, false)?;
        for a in addrs {
            let ifname = if *a == self.back_addr {
                &self.t.back.0
            } else {
                &self.t.front.0
            };
            netlink::remove_address(ifname, *a)?;
        }
        Ok(())
    }

    fn mark(&mut self, addrs: &[Ipv4Addr], served: bool) -> anyhow::Result<()> {
        for (a, s) in self.t.addresses.all.iter_mut() {
            if addrs.contains(a) {
                *s = served;
            }
        }
        let mut steer = self
            .t
            .steer
            .lock()
            .map_err(|_| anyhow::anyhow!("steer programs poisoned"))?;
        steer.0.set_addresses(&self.t.addresses.all)?;
        steer.1.set_addresses(&self.t.addresses.all)?;
        Ok(())
    }

    /// Adopts every flow held for the peer, then serves every address
    /// (the ones the peer served included); the number of flows adopted.
    /// The addresses move only once the flows are installed: a segment
    /// for a flow not installed yet would be reset.
    fn adopt_and_serve(&mut self, why: &str) -> anyhow::Result<usize> {
        self.settled = true;
        let started = Instant::now();
        let taken = self
            .handle
            .take_all(self.peer)
            .with_context(|| format!("taking {}'s flows from the standby store", self.peer_name))?;
        let mut macs: HashMap<Ipv4Addr, [u8; 6]> = HashMap::new();
        let mut resolve = |ip: Ipv4Addr| -> [u8; 6] {
            *macs.entry(ip).or_insert_with(|| {
                neighbour::resolve(ip, Duration::from_millis(500)).unwrap_or([0xff; 6])
            })
        };
        let mut batch = Vec::with_capacity(taken.len());
        for a in taken {
            let checkpoint = match FlowCheckpoint::from_bytes(&a.bytes) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(flow = ?a.flow, error = %e, "a standby checkpoint does not decode");
                    continue;
                }
            };
            let client_mac = resolve(*checkpoint.front.tuple.remote.ip());
            let backend_mac = resolve(*checkpoint.back.tuple.remote.ip());
            batch.push(Adoption {
                checkpoint,
                elapsed: OLD_OWNER_RAN_AT_MOST,
                client_mac,
                backend_mac,
            });
        }
        let n = batch.len();
        let before = self.t.shared.metrics.flows_adopted.get();
        if self.adopt_tx.send(AdoptCommand::Adopt(batch)).is_err() {
            bail!("the worker is gone");
        }
        (self.waker)();
        let deadline = Instant::now() + WORKER_TIMEOUT;
        while self.t.shared.metrics.flows_adopted.get() < before + n as u64
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let adopted = Instant::now();
        let all: Vec<Ipv4Addr> = self.t.addresses.all.iter().map(|(a, _)| *a).collect();
        self.serve(&all)?;
        // The nudges sent at adoption may have gone to the old MAC: again,
        // now that the neighbour caches name ours.
        if self.adopt_tx.send(AdoptCommand::Nudge).is_ok() {
            (self.waker)();
        }
        tracing::info!(
            why,
            peer = %self.peer_name,
            flows = n,
            adopt_ms = (adopted - started).as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "took over the peer's flows and addresses"
        );
        Ok(n)
    }

    /// Stops serving everything and tells the peer to carry it on.
    fn start_handoff(&mut self, reply: Option<Sender<Result<String, String>>>) {
        let refuse = |reply: Option<Sender<Result<String, String>>>, why: String| {
            tracing::warn!("handoff refused: {why}");
            if let Some(r) = reply {
                let _ = r.send(Err(why));
            }
        };
        if self.handing_off.is_some() {
            return refuse(reply, "a handoff is under way".into());
        }
        match self.handle.peer(self.peer) {
            Ok(p) if p.state == PeerState::Up && p.connected => {}
            Ok(p) => {
                return refuse(
                    reply,
                    format!(
                        "{} is {}: nobody to hand the flows to",
                        self.peer_name,
                        crate::peers::state_name(p.state)
                    ),
                );
            }
            Err(e) => return refuse(reply, e.to_string()),
        }
        let started = Instant::now();
        let flows = usize::try_from(self.t.shared.metrics.flows_active.get().max(0)).unwrap_or(0);
        let _ = self.adopt_tx.send(AdoptCommand::Freeze);
        (self.waker)();
        let deadline = Instant::now() + WORKER_TIMEOUT;
        while !self.t.shared.frozen.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if !self.t.shared.frozen.load(Ordering::Acquire) {
            let _ = self.adopt_tx.send(AdoptCommand::Thaw);
            return refuse(reply, "the worker did not stop in time".into());
        }
        let released = self.served();
        if let Err(e) = self.release(&released) {
            let p = Pending {
                reply,
                released,
                flows,
                started,
            };
            return self.undo_handoff(p, &format!("cannot give the addresses up: {e}"));
        }
        let message = Message::Handoff {
            to: self.peer,
            flows: Vec::new(),
        };
        let pending = Pending {
            reply,
            released,
            flows,
            started,
        };
        if let Err(e) = self.handle.send_control(self.peer, message) {
            return self.undo_handoff(pending, &format!("cannot reach the peer: {e}"));
        }
        tracing::info!(flows, addresses = ?pending.released, "handing off to {}", self.peer_name);
        self.handing_off = Some(pending);
    }

    /// Serves again what a failed handoff had given up.
    fn undo_handoff(&mut self, p: Pending, why: &str) {
        tracing::error!("handoff failed: {why}; serving the flows again");
        let served = self.serve(&p.released);
        let _ = self.adopt_tx.send(AdoptCommand::Thaw);
        (self.waker)();
        if let Some(r) = p.reply {
            let _ = r.send(Err(match served {
                Ok(()) => format!("{why}; this relay serves its flows again"),
                Err(e) => format!("{why}; and serving again failed: {e}"),
            }));
        }
    }
}
