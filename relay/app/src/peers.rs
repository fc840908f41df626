//! The operator's view of a relay pair: `relay peers` and the cluster's
//! Prometheus series. Both are made from the same two sources, read when
//! asked: the backplane's [`BackplaneHandle::peers`] and
//! [`BackplaneHandle::counters`] (membership, RTT, bytes, standby, refused
//! connections), and the replication figures each worker publishes in
//! [`Shared::replication`](relay_worker::Shared) once per loop (protected
//! flows, backlog). Nothing here reaches into a worker or waits for the
//! backplane's runtime.

use std::sync::Arc;
use std::time::Instant;

use relay_cluster::{BackplaneHandle, Counters, PeerState, PeerStatus};
use relay_control::metrics::{Counter, FloatGauge, Gauge, Registry};
use relay_replication::{Protection, UnprotectedReason};
use relay_worker::{ReplicationFigures, ReplicationSnapshot, protection_name};

use crate::control::{PeerLine, PeersReply};

/// Every membership state, in the order the metrics list them.
pub const STATES: [PeerState; 5] = [
    PeerState::Connecting,
    PeerState::Up,
    PeerState::Suspect,
    PeerState::Cut,
    PeerState::Down,
];

/// The name of a membership state: "connecting", "up", "suspect",
/// "cut" (alive on the front network, backplane lost), "down".
pub fn state_name(s: PeerState) -> &'static str {
    match s {
        PeerState::Connecting => "connecting",
        PeerState::Up => "up",
        PeerState::Suspect => "suspect",
        PeerState::Cut => "cut",
        PeerState::Down => "down",
    }
}

/// How bad a protection is, to report the worst worker's.
fn severity(p: Protection) -> u8 {
    match p {
        Protection::Protected => 0,
        Protection::Reseeding => 1,
        Protection::Unprotected(UnprotectedReason::QueueFull) => 2,
        Protection::Unprotected(UnprotectedReason::PeerDown) => 3,
    }
}

/// Our workers' replication to one peer, summed over the workers that
/// replicate to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Towards {
    /// Flows whose latest commit the peer holds or will.
    pub flows_protected: u64,
    /// Flows whose latest state the peer lacks.
    pub flows_unprotected: u64,
    /// Unacknowledged replication bytes.
    pub backlog_bytes: u64,
    /// Unacknowledged replication messages.
    pub backlog_messages: u64,
    /// The worst worker's protection (`None`: no worker replicates to it).
    pub protection: Option<Protection>,
}

/// What the workers replicate to `peer`.
pub fn towards(peer: u16, workers: &[ReplicationSnapshot]) -> Towards {
    let mut t = Towards::default();
    for w in workers.iter().filter(|w| w.peer == peer) {
        t.flows_protected += w.flows_protected;
        t.flows_unprotected += w.flows_unprotected;
        t.backlog_bytes += w.backlog_bytes;
        t.backlog_messages += w.backlog_messages;
        if t.protection
            .is_none_or(|p| severity(w.protection) > severity(p))
        {
            t.protection = Some(w.protection);
        }
    }
    t
}

/// The workers' last published figures (workers that replicate to no one
/// are left out).
pub fn worker_snapshots(figures: &[ReplicationFigures]) -> Vec<ReplicationSnapshot> {
    figures
        .iter()
        .filter_map(ReplicationFigures::snapshot)
        .collect()
}

/// One [`PeerLine`] per peer, as of `now`.
pub fn peer_lines(
    peers: &[PeerStatus],
    workers: &[ReplicationSnapshot],
    now: Instant,
) -> Vec<PeerLine> {
    peers
        .iter()
        .map(|p| {
            let t = towards(p.id, workers);
            PeerLine {
                name: p.name.clone(),
                relay_id: p.id,
                address: p.addr,
                state: state_name(p.state).to_string(),
                connected: p.connected,
                // A stale estimate of a connection that is gone says nothing.
                rtt_us: p
                    .rtt
                    .filter(|_| p.connected)
                    .map(|r| u64::try_from(r.srtt.as_micros()).unwrap_or(u64::MAX)),
                connected_secs: p
                    .connected_since
                    .map(|since| now.saturating_duration_since(since).as_secs()),
                connections: p.connections,
                bytes_sent: p.bytes_sent,
                bytes_received: p.bytes_received,
                flows_held: p.flows_held as u64,
                standby_bytes: p.standby_bytes as u64,
                flows_protected: t.flows_protected,
                flows_unprotected: t.flows_unprotected,
                backlog_bytes: t.backlog_bytes,
                backlog_messages: t.backlog_messages,
                protection: t.protection.map(|p| protection_name(p).to_string()),
            }
        })
        .collect()
}

/// The answer to `relay peers` for the relay `name`: `relay_id` is its
/// `cluster.relay_id` (`None` without `[cluster]`: an empty list that says
/// so), `backplane` its running backplane (`None` while it starts).
pub fn reply(
    name: &str,
    relay_id: Option<u16>,
    backplane: Option<&BackplaneHandle>,
    figures: &[ReplicationFigures],
) -> Result<PeersReply, String> {
    let Some(relay_id) = relay_id else {
        return Ok(PeersReply {
            clustered: false,
            relay: name.to_string(),
            relay_id: None,
            peers: Vec::new(),
        });
    };
    let Some(handle) = backplane else {
        return Err("the backplane is still starting: ask again in a moment".into());
    };
    Ok(PeersReply {
        clustered: true,
        relay: name.to_string(),
        relay_id: Some(relay_id),
        peers: peer_lines(&handle.peers(), &worker_snapshots(figures), Instant::now()),
    })
}

/// Why the backplane refused or closed a connection, as the
/// `relay_backplane_connections_refused_total` label and its count.
pub fn refusals(c: &Counters) -> [(&'static str, u64); 4] {
    [
        ("unauthorised", c.rejected_unauthorised),
        ("malformed", c.rejected_malformed),
        ("protocol", c.protocol_errors),
        ("handshake_failed", c.rejected_handshake),
    ]
}

/// One peer's series.
#[derive(Debug, Clone)]
struct PeerSeries {
    name: String,
    up: Gauge,
    states: Vec<(PeerState, Gauge)>,
    rtt: FloatGauge,
    sent: Counter,
    received: Counter,
    standby: Gauge,
}

impl PeerSeries {
    fn new(registry: &Registry, name: &str) -> PeerSeries {
        let peer = [("peer", name)];
        let bytes = |direction: &str| {
            registry.counter(
                "relay_backplane_bytes_total",
                "Backplane bytes exchanged with a peer (plaintext, every connection).",
                &[("peer", name), ("direction", direction)],
            )
        };
        PeerSeries {
            name: name.to_string(),
            up: registry.gauge(
                "relay_peer_up",
                "1 while membership says the peer is up (its heartbeats arrive over the backplane).",
                &peer,
            ),
            states: STATES
                .iter()
                .map(|&s| {
                    (
                        s,
                        registry.gauge(
                            "relay_peer_state",
                            "1 for the peer's membership state, 0 for the others.",
                            &[("peer", name), ("state", state_name(s))],
                        ),
                    )
                })
                .collect(),
            rtt: registry.float_gauge(
                "relay_backplane_rtt_seconds",
                "Smoothed heartbeat round-trip time to the peer (NaN while not connected or not measured).",
                &peer,
            ),
            sent: bytes("sent"),
            received: bytes("received"),
            standby: registry.gauge(
                "relay_standby_flows",
                "The peer's flows held here in standby (what a failover adopts).",
                &peer,
            ),
        }
    }

    fn update(&self, p: &PeerStatus) {
        self.up.set(i64::from(p.state == PeerState::Up));
        for (s, g) in &self.states {
            g.set(i64::from(*s == p.state));
        }
        self.rtt.set(
            p.rtt
                .filter(|_| p.connected)
                .map_or(f64::NAN, |r| r.srtt.as_secs_f64()),
        );
        self.sent.set_total(p.bytes_sent);
        self.received.set_total(p.bytes_received);
        self.standby
            .set(i64::try_from(p.flows_held).unwrap_or(i64::MAX));
    }
}

/// The cluster's series in a relay's registry, declared at start (so that
/// a scrape before the backplane is up shows the configured peers) and
/// refreshed at scrape time by [`update`](Self::update).
#[derive(Debug, Clone)]
pub struct ClusterMetrics {
    registry: Arc<Registry>,
    peers: Vec<PeerSeries>,
    refused: Vec<(&'static str, Counter)>,
    front: [Counter; 3],
    backplane_lost: Counter,
    stale_dropped: Counter,
    backlog_bytes: Gauge,
    backlog_messages: Gauge,
    flows_unprotected: Gauge,
}

impl ClusterMetrics {
    /// Declares the series of a relay whose peers are `peer_names`.
    pub fn new(registry: Arc<Registry>, peer_names: &[String]) -> ClusterMetrics {
        let r = &registry;
        let peers = peer_names.iter().map(|n| PeerSeries::new(r, n)).collect();
        let refused = refusals(&Counters::default())
            .iter()
            .map(|&(reason, _)| {
                (
                    reason,
                    r.counter(
                        "relay_backplane_connections_refused_total",
                        "Backplane connections refused or closed: not a configured peer (unauthorised), garbage (malformed), a protocol violation, a failed TLS handshake.",
                        &[("reason", reason)],
                    ),
                )
            })
            .collect();
        let front = |outcome: &str| {
            r.counter(
                "relay_front_heartbeats_total",
                "Membership heartbeats over the front network (the second path): sent, heard from a peer, refused (not a beat, a stranger, a bad tag, a replay).",
                &[("outcome", outcome)],
            )
        };
        ClusterMetrics {
            peers,
            refused,
            front: [front("sent"), front("heard"), front("refused")],
            backplane_lost: r.counter(
                "relay_backplane_lost_total",
                "Times a peer was heard on the front network with its backplane lost (nothing taken over; flows committed locally).",
                &[],
            ),
            stale_dropped: r.counter(
                "relay_standby_stale_flows_dropped_total",
                "A peer's flows dropped from the standby store, not adopted: the peer was heard alive after the backplane connection ended, so it may have committed them without us (it re-seeds them on the next connection).",
                &[],
            ),
            backlog_bytes: r.gauge(
                "relay_replication_backlog_bytes",
                "Replication bytes sent or queued for the peer and not yet acknowledged.",
                &[],
            ),
            backlog_messages: r.gauge(
                "relay_replication_backlog_messages",
                "Replication messages sent or queued for the peer and not yet acknowledged.",
                &[],
            ),
            flows_unprotected: r.gauge(
                "relay_flows_unprotected",
                "Flows whose latest state no peer holds (re-seeding, or committed locally while the peer was unreachable or too slow).",
                &[],
            ),
            registry,
        }
    }

    /// Copies the backplane's and the workers' figures in.
    pub fn update(
        &self,
        peers: &[PeerStatus],
        counters: &Counters,
        workers: &[ReplicationSnapshot],
    ) {
        for p in peers {
            match self.peers.iter().find(|s| s.name == p.name) {
                Some(series) => series.update(p),
                // Not declared at start: the registry hands out the same
                // series on every call.
                None => PeerSeries::new(&self.registry, &p.name).update(p),
            }
        }
        for ((_, c), (_, n)) in self.refused.iter().zip(refusals(counters)) {
            c.set_total(n);
        }
        let front = [
            counters.front_sent,
            counters.front_heard,
            counters.front_refused,
        ];
        for (c, n) in self.front.iter().zip(front) {
            c.set_total(n);
        }
        self.backplane_lost.set_total(counters.backplane_lost);
        self.stale_dropped.set_total(counters.stale_flows_dropped);
        let sum = |f: fn(&ReplicationSnapshot) -> u64| -> i64 {
            i64::try_from(workers.iter().map(f).sum::<u64>()).unwrap_or(i64::MAX)
        };
        self.backlog_bytes.set(sum(|w| w.backlog_bytes));
        self.backlog_messages.set(sum(|w| w.backlog_messages));
        self.flows_unprotected.set(sum(|w| w.flows_unprotected));
    }

    /// [`update`](Self::update) from a running backplane and the workers'
    /// published figures.
    pub fn refresh(&self, handle: &BackplaneHandle, figures: &[ReplicationFigures]) {
        self.update(
            &handle.peers(),
            &handle.counters(),
            &worker_snapshots(figures),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_cluster::Rtt;
    use std::time::Duration;

    fn status(name: &str, id: u16, state: PeerState, connected: bool) -> PeerStatus {
        let now = Instant::now();
        PeerStatus {
            id,
            name: name.into(),
            addr: "10.200.9.2:7000".parse().unwrap(),
            state,
            connected,
            outbound: true,
            connected_since: connected.then(|| now - Duration::from_secs(65)),
            rtt: Some(Rtt {
                srtt: Duration::from_micros(250),
                rttvar: Duration::from_micros(100),
                latest: Duration::from_micros(240),
            }),
            connections: 2,
            bytes_sent: 4096,
            bytes_received: 1024,
            flows_held: 5,
            standby_bytes: 2000,
            last_commit: None,
            boot_epoch: Some(7),
            workers: Some(1),
        }
    }

    fn worker(peer: u16, protection: Protection) -> ReplicationSnapshot {
        ReplicationSnapshot {
            peer,
            flows_protected: 3,
            flows_unprotected: 1,
            backlog_bytes: 300,
            backlog_messages: 2,
            protection,
        }
    }

    #[test]
    fn lines_join_the_backplane_and_the_workers() {
        let workers = [
            worker(2, Protection::Protected),
            worker(2, Protection::Reseeding),
            worker(3, Protection::Protected),
        ];
        let peers = [
            status("relay-b", 2, PeerState::Up, true),
            status("relay-c", 4, PeerState::Down, false),
        ];
        let lines = peer_lines(&peers, &workers, Instant::now());
        let b = &lines[0];
        assert_eq!((b.name.as_str(), b.relay_id), ("relay-b", 2));
        assert_eq!(b.state, "up");
        assert_eq!(b.rtt_us, Some(250));
        assert!(b.connected_secs.is_some_and(|s| (65..=66).contains(&s)));
        assert_eq!((b.bytes_sent, b.bytes_received), (4096, 1024));
        assert_eq!((b.flows_held, b.standby_bytes), (5, 2000));
        // Two workers replicate to relay-b: summed, the worse protection.
        assert_eq!((b.flows_protected, b.flows_unprotected), (6, 2));
        assert_eq!((b.backlog_bytes, b.backlog_messages), (600, 4));
        assert_eq!(b.protection.as_deref(), Some("reseeding"));
        // relay-c: no connection, so no RTT; no worker replicates to it.
        let c = &lines[1];
        assert_eq!(c.state, "down");
        assert_eq!((c.rtt_us, c.connected_secs), (None, None));
        assert_eq!(
            (c.flows_protected, c.backlog_bytes, c.protection.as_deref()),
            (0, 0, None)
        );
    }

    #[test]
    fn the_worst_protection_wins() {
        let t = towards(
            2,
            &[
                worker(2, Protection::Unprotected(UnprotectedReason::QueueFull)),
                worker(2, Protection::Protected),
            ],
        );
        assert_eq!(
            t.protection,
            Some(Protection::Unprotected(UnprotectedReason::QueueFull))
        );
        assert_eq!(
            towards(9, &[worker(2, Protection::Protected)]),
            Towards::default()
        );
        assert_eq!(
            STATES.map(state_name),
            ["connecting", "up", "suspect", "cut", "down"]
        );
    }

    #[test]
    fn a_relay_without_cluster_says_so() {
        let r = reply("relay-a", None, None, &[]).unwrap();
        assert!(!r.clustered);
        assert!(r.peers.is_empty());
        assert_eq!(r.relay, "relay-a");
        // With [cluster] but no backplane yet: a refusal, not an empty list.
        assert!(reply("relay-a", Some(1), None, &[]).is_err());
    }

    #[test]
    fn metrics_follow_the_backplane_and_the_workers() {
        let registry = Arc::new(Registry::new());
        let m = ClusterMetrics::new(registry.clone(), &["relay-b".to_string()]);
        let text = registry.render();
        // Declared before anything is known: down-to-earth zeros.
        assert!(
            text.contains("relay_peer_up{peer=\"relay-b\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("relay_backplane_connections_refused_total{reason=\"unauthorised\"} 0\n"),
            "{text}"
        );
        let counters = Counters {
            rejected_unauthorised: 3,
            rejected_malformed: 1,
            ..Counters::default()
        };
        m.update(
            &[status("relay-b", 2, PeerState::Up, true)],
            &counters,
            &[worker(2, Protection::Reseeding)],
        );
        let text = registry.render();
        for line in [
            "relay_peer_up{peer=\"relay-b\"} 1\n",
            "relay_peer_state{peer=\"relay-b\",state=\"up\"} 1\n",
            "relay_peer_state{peer=\"relay-b\",state=\"down\"} 0\n",
            "relay_backplane_rtt_seconds{peer=\"relay-b\"} 0.00025\n",
            "relay_backplane_bytes_total{peer=\"relay-b\",direction=\"sent\"} 4096\n",
            "relay_backplane_bytes_total{peer=\"relay-b\",direction=\"received\"} 1024\n",
            "relay_standby_flows{peer=\"relay-b\"} 5\n",
            "relay_backplane_connections_refused_total{reason=\"unauthorised\"} 3\n",
            "relay_backplane_connections_refused_total{reason=\"malformed\"} 1\n",
            "relay_replication_backlog_bytes 300\n",
            "relay_replication_backlog_messages 2\n",
            "relay_flows_unprotected 1\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        // The peer goes down: up 0, its state moves, the RTT is unknown.
        m.update(
            &[status("relay-b", 2, PeerState::Down, false)],
            &counters,
            &[],
        );
        let text = registry.render();
        for line in [
            "relay_peer_up{peer=\"relay-b\"} 0\n",
            "relay_peer_state{peer=\"relay-b\",state=\"up\"} 0\n",
            "relay_peer_state{peer=\"relay-b\",state=\"down\"} 1\n",
            "relay_backplane_rtt_seconds{peer=\"relay-b\"} NaN\n",
            "relay_flows_unprotected 0\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        assert_eq!(text.matches("# TYPE relay_peer_up gauge").count(), 1);
    }
}
