//! The relay pair at run time: the backplane (relay-cluster), this relay's
//! replication stream, and failover: when membership declares the peer
//! dead, this relay adopts the flows the peer committed to it, takes over
//! the peer's addresses (VIPs and the back-side address) and announces them
//! with gratuitous ARP on both sides.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use anyhow::{Context, bail};
use relay_cluster::{Backplane, BackplaneConfig, BackplaneHandle};
use relay_control::config::Config;
use relay_datapath::SteerProgram;
use relay_flow::{FlowCheckpoint, apply_delta};
use relay_replication::{Outbox, OutboxConfig, PeerConfig, RelayId};
use relay_worker::{AdoptCommand, Replication, Shared, Worker};

use crate::pair::{Pair, PairCommand};

/// Which of the relay's addresses it serves now, and which it stands by for.
#[derive(Debug, Clone)]
pub struct Addresses {
    /// (address, served here) for the steer programs' ADDRS maps.
    pub all: Vec<(Ipv4Addr, bool)>,
}

impl Addresses {
    /// At start: a relay alone serves every VIP and the back-side address;
    /// a relay of a pair serves none yet (the pair settles it). A pair
    /// shares one back-side address, served with any VIP.
    pub fn at_start(config: &Config) -> Addresses {
        // A relay of a pair serves nothing until it knows what its peer
        // serves (see `pair`): it may be coming back after a failover.
        let clustered = config.cluster.is_some();
        let mine = |owner: &str| !clustered && (owner.is_empty() || owner == config.name);
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
    /// `relay handoff` and `relay takeover` go here.
    pub commands: crossbeam_channel::Sender<PairCommand>,
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

/// The standby rebuilds a peer's full checkpoint from each delta with the
/// flow layer's own codec.
fn rebuild(base: &[u8], delta: &[u8]) -> Result<Vec<u8>, String> {
    let base = FlowCheckpoint::from_stored_bytes(base).map_err(|e| e.to_string())?;
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
    let own_vips: Vec<Ipv4Addr> = config
        .services
        .iter()
        .filter(|s| s.owner.is_empty() || s.owner == config.name)
        .map(|s| s.vip)
        .collect();
    let (commands, command_rx) = crossbeam_channel::unbounded();
    let pair = Pair::new(
        handle.clone(),
        (peer_id, peer.name.clone()),
        adopt_tx,
        waker,
        takeover,
        own_vips,
        config.back.address,
    );
    {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("relay-pair".into())
            .spawn(move || pair.run(events, command_rx, stop))
            .context("starting the pair thread")?;
    }
    tracing::info!(
        relay_id = c.relay_id,
        listen = %c.listen,
        peer = %peer.name,
        "backplane up: replicating to the peer"
    );
    Ok(Some(ClusterRuntime {
        handle,
        commands,
        stop,
    }))
}
