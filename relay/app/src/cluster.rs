//! The relay pair at run time: the backplane (relay-cluster), this relay's
//! replication stream, and failover: when membership declares the peer
//! dead, this relay adopts the flows the peer committed to it, takes over
//! the peer's addresses (VIPs and the back-side address) and announces them
//! with gratuitous ARP on both sides.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use relay_cluster::{Backplane, BackplaneConfig, BackplaneEvent, BackplaneHandle};
use relay_control::config::Config;
use relay_datapath::{SteerProgram, garp, neighbour, netlink};
use relay_flow::{FlowCheckpoint, apply_delta};
use relay_replication::{Outbox, OutboxConfig, PeerConfig, RelayId};
use relay_worker::{AdoptCommand, Adoption, Replication, Shared, Worker};

/// Which of the relay's addresses it serves now, and which it stands by for.
#[derive(Debug, Clone)]
pub struct Addresses {
    /// (address, served here) for the steer programs' ADDRS maps.
    pub all: Vec<(Ipv4Addr, bool)>,
}

impl Addresses {
    /// At start: a service's VIP is served here when the service names no
    /// owner or names this relay; the back-side address goes with them
    /// (a pair shares one back-side address).
    pub fn at_start(config: &Config) -> Addresses {
        let mine = |owner: &str| owner.is_empty() || owner == config.name;
        let mut all: Vec<(Ipv4Addr, bool)> = config
            .services
            .iter()
            .map(|s| (s.vip, mine(&s.owner)))
            .collect();
        let any_mine = config.services.iter().any(|s| mine(&s.owner));
        all.push((config.back.address, any_mine));
        all.sort();
        all.dedup_by_key(|(a, _)| *a);
        Addresses { all }
    }
}

/// What the failover thread needs of the rest of the relay.
#[allow(missing_debug_implementations)]
pub struct Takeover {
    /// The steer programs (front, back).
    pub steer: Arc<Mutex<(SteerProgram, SteerProgram)>>,
    /// The addresses and who serves them.
    pub addresses: Addresses,
    /// Interface names and MACs, for the addresses and announcements.
    pub front: (String, [u8; 6]),
    /// The back interface.
    pub back: (String, [u8; 6]),
    /// The relay's shared state (metrics).
    pub shared: Arc<Shared>,
}

/// The running backplane of a clustered relay.
pub struct ClusterRuntime {
    /// The backplane's handle (peers, counters, shutdown).
    pub handle: BackplaneHandle,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for ClusterRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRuntime").finish_non_exhaustive()
    }
}

impl Drop for ClusterRuntime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.shutdown();
    }
}

/// How long the dead relay may have kept sending after a flow's last
/// checkpoint reached us: the adopter's TCP timestamps start that far
/// ahead, so that none is below one the old relay sent (the client would
/// drop it, RFC 7323 PAWS). A flow may be idle for long after its last
/// commit, so this is generous; a timestamp clock that jumps forward costs
/// nothing.
const OLD_OWNER_RAN_AT_MOST: Duration = Duration::from_secs(600);

/// The standby rebuilds a peer's full checkpoint from each delta with the
/// flow layer's own codec.
fn rebuild(base: &[u8], delta: &[u8]) -> Result<Vec<u8>, String> {
    let base = FlowCheckpoint::from_bytes(base).map_err(|e| e.to_string())?;
    apply_delta(&base, delta)
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string())
}

/// Starts the backplane, connects `worker` to it, and runs failover on a
/// thread of its own. `None` for a relay without `[cluster]`.
pub fn start(
    config: &Config,
    worker: &mut Worker,
    takeover: Takeover,
) -> anyhow::Result<Option<ClusterRuntime>> {
    let Some(c) = &config.cluster else {
        return Ok(None);
    };
    let mut bp = BackplaneConfig::new(
        c.relay_id,
        config.name.clone(),
        c.listen,
        &c.ca,
        &c.cert,
        &c.key,
    );
    for p in &c.peers {
        bp = bp.peer(p.relay_id, p.name.clone(), p.address);
        if let (Some(ours), Some(theirs)) = (c.front, p.front) {
            bp = bp.front_path(ours, theirs);
        }
    }
    if c.front.is_none() {
        tracing::warn!(
            "cluster.front is not set: a lost backplane will read as a dead peer, \
             and both relays would serve its addresses"
        );
    }
    bp.heartbeat = PeerConfig {
        interval: Duration::from_millis(c.heartbeat_interval_ms),
        misses: c.heartbeat_misses,
    };
    let Some(peer) = c.peers.first() else {
        bail!("cluster: no peer configured");
    };
    let peer_id: RelayId = peer.relay_id;
    let mut backplane = Backplane::start(bp, rebuild, vec![worker.waker()])
        .with_context(|| format!("starting the backplane on {}", c.listen))?;
    let Some(port) = backplane.workers.pop() else {
        bail!("the backplane gave no worker port");
    };
    let outbox =
        Outbox::new(port.stream(), OutboxConfig::default()).context("the replication outbox")?;
    worker.attach_replication(Replication {
        peer: peer_id,
        outbox,
        port,
    });
    let (adopt_tx, adopt_rx) = mpsc::channel::<AdoptCommand>();
    worker.accept_adoptions(adopt_rx);
    let waker = worker.waker();
    let handle = backplane.handle.clone();
    let events = backplane.events;
    let stop = Arc::new(AtomicBool::new(false));
    let peer_names: HashMap<RelayId, String> = c
        .peers
        .iter()
        .map(|p| (p.relay_id, p.name.clone()))
        .collect();
    let owners: Vec<(Ipv4Addr, String)> = config
        .services
        .iter()
        .map(|s| (s.vip, s.owner.clone()))
        .collect();
    let back_addr = config.back.address;
    {
        let handle = handle.clone();
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("relay-failover".into())
            .spawn(move || {
                let mut takeover = takeover;
                // Only a peer that was up can die: one that never came up
                // (it starts after us) has no flows and no addresses to take.
                let mut was_up = std::collections::HashSet::new();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(event) = events.recv_timeout(Duration::from_millis(200)) else {
                        continue;
                    };
                    match event {
                        BackplaneEvent::PeerDown(peer) if !was_up.remove(&peer) => {
                            tracing::info!(peer, "peer not up yet");
                        }
                        BackplaneEvent::PeerDown(peer) => {
                            // relay_failover_seconds: from PeerDown to the
                            // addresses announced (fail_over's total_ms).
                            let down_at = Instant::now();
                            let name = peer_names.get(&peer).cloned().unwrap_or_default();
                            let vips: Vec<Ipv4Addr> = owners
                                .iter()
                                .filter(|(_, o)| *o == name)
                                .map(|(v, _)| *v)
                                .collect();
                            match fail_over(
                                &handle,
                                peer,
                                &name,
                                &vips,
                                back_addr,
                                &adopt_tx,
                                &waker,
                                &mut takeover,
                            ) {
                                Ok(()) => {
                                    let m = &takeover.shared.metrics;
                                    m.failovers.inc();
                                    m.failover_seconds.observe(down_at.elapsed().as_secs_f64());
                                }
                                Err(e) => {
                                    tracing::error!(peer = %name, error = %e, "failover failed");
                                }
                            }
                        }
                        BackplaneEvent::PeerUp(peer) => {
                            was_up.insert(peer);
                            tracing::info!(peer, "peer up");
                        }
                        BackplaneEvent::Connected { peer, outbound } => {
                            tracing::info!(peer, outbound, "backplane connected");
                        }
                        BackplaneEvent::Disconnected { peer, reason } => {
                            tracing::info!(peer, ?reason, "backplane disconnected");
                        }
                        BackplaneEvent::BackplaneLost(peer) => {
                            // Logged by the backplane; the peer stays up as
                            // far as failover is concerned.
                            tracing::info!(
                                peer,
                                "peer alive without a backplane: nothing taken over"
                            );
                        }
                        BackplaneEvent::Control { .. } => {}
                    }
                }
            })
            .context("starting the failover thread")?;
    }
    tracing::info!(
        relay_id = c.relay_id,
        listen = %c.listen,
        peer = %peer.name,
        "backplane up: replicating to the peer"
    );
    Ok(Some(ClusterRuntime { handle, stop }))
}

/// The peer is dead: adopt its flows, then serve its addresses.
#[allow(clippy::too_many_arguments)]
fn fail_over(
    handle: &BackplaneHandle,
    peer: RelayId,
    name: &str,
    vips: &[Ipv4Addr],
    back_addr: Ipv4Addr,
    adopt_tx: &mpsc::Sender<AdoptCommand>,
    waker: &Arc<dyn Fn() + Send + Sync>,
    t: &mut Takeover,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let taken = handle
        .take_all(peer)
        .with_context(|| format!("taking {name}'s flows from the standby store"))?;
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
    let n = batch.len() as u64;
    let before = t.shared.metrics.flows_adopted.get();
    if adopt_tx.send(AdoptCommand::Adopt(batch)).is_err() {
        bail!("the worker is gone");
    }
    waker();
    // The addresses move only once the flows are installed: a segment that
    // reaches this relay for a flow it does not hold yet would be reset.
    let deadline = Instant::now() + Duration::from_secs(2);
    while t.shared.metrics.flows_adopted.get() < before + n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let adopted = Instant::now();
    for (addr, served) in t.addresses.all.iter_mut() {
        if vips.contains(addr) || *addr == back_addr {
            *served = true;
        }
    }
    if let Ok(mut s) = t.steer.lock() {
        s.0.set_addresses(&t.addresses.all)?;
        s.1.set_addresses(&t.addresses.all)?;
    }
    for vip in vips {
        netlink::add_address(&t.front.0, *vip)?;
    }
    netlink::add_address(&t.back.0, back_addr)?;
    garp::announce(&t.front.0, t.front.1, vips)?;
    garp::announce(&t.back.0, t.back.1, &[back_addr])?;
    // The nudges sent at adoption may have gone to the dead relay's MAC:
    // again, now that the neighbour caches name ours.
    if adopt_tx.send(AdoptCommand::Nudge).is_ok() {
        waker();
    }
    tracing::info!(
        peer = %name,
        flows = n,
        adopt_ms = (adopted - started).as_secs_f64() * 1e3,
        total_ms = started.elapsed().as_secs_f64() * 1e3,
        "took over the peer's flows and addresses"
    );
    Ok(())
}
