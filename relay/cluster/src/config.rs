//! What a backplane needs to know: who we are, where we listen, who our
//! peers are, which files hold the cluster PKI, and the timing and limits.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use relay_replication::{MAX_NAME_LEN, PeerConfig, RelayId, StreamId};
use rustls_pki_types::ServerName;

use crate::error::Error;

/// A peer relay on the backplane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// Its relay id (what its hello must claim).
    pub id: RelayId,
    /// Its name: the identity its certificate must carry as a DNS
    /// subjectAltName (checked both ways: when we dial it and when it
    /// dials us).
    pub name: String,
    /// Its backplane address: we dial it there, and a connection that
    /// claims to be this peer must come from this IP.
    pub addr: SocketAddr,
    /// Its address for front-path heartbeats (UDP on the front network):
    /// membership's second path. `None`: backplane heartbeats only.
    pub front: Option<SocketAddr>,
}

/// Configuration of one relay's backplane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackplaneConfig {
    /// This relay's id.
    pub id: RelayId,
    /// This relay's name; our certificate must carry it as a DNS
    /// subjectAltName (checked at start).
    pub name: String,
    /// Our backplane address. Outbound connections are bound to its IP
    /// (unless unspecified), so that peers see us come from it.
    pub listen: SocketAddr,
    /// The other relays.
    pub peers: Vec<PeerSpec>,
    /// Our address for front-path heartbeats (UDP on the front network,
    /// authenticated with a key both ends derive from their backplane TLS
    /// session). `None`: no second path, and a lost backplane reads as
    /// a dead peer.
    pub front: Option<SocketAddr>,
    /// The cluster CA certificate(s), PEM: the only trust anchors for
    /// backplane connections, both ways.
    pub ca: PathBuf,
    /// Our certificate chain, leaf first, PEM. The leaf needs the
    /// extended key usages serverAuth and clientAuth (we are both).
    pub cert_chain: PathBuf,
    /// Our private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Heartbeat interval and miss count.
    pub heartbeat: PeerConfig,
    /// Most flows held in standby per peer (see
    /// [`StandbyConfig::max_flows`](relay_replication::StandbyConfig)).
    pub standby_max_flows: usize,
    /// Time allowed for TCP connect, TLS handshake and hellos.
    pub handshake_timeout: Duration,
    /// First delay before dialing again after a failure or a drop.
    pub reconnect_min: Duration,
    /// Longest delay between dial attempts (the backoff doubles up to it).
    pub reconnect_max: Duration,
    /// Worker batches queued per peer before [`Error::QueueFull`] (which
    /// resets the connection). The outboxes bound their backlog already
    /// (each batch holds at least one of an outbox's `max_messages`); set
    /// this at or above the sum of the workers' `max_messages` and it
    /// never triggers before the outboxes overflow by their own rule.
    pub max_queued_batches: usize,
    /// Acks and resync requests waiting in one worker's event queue
    /// before the connection that produces them is dropped (a worker that
    /// stopped reading, or a peer flooding us).
    pub max_worker_events: usize,
    /// Our boot epoch, announced in every hello (a peer drops our old
    /// flows when it changes). `None`: derived from the wall clock at
    /// start, which differs across restarts.
    pub boot_epoch: Option<u32>,
}

impl BackplaneConfig {
    /// A configuration with no peers and the default timing and limits.
    pub fn new(
        id: RelayId,
        name: impl Into<String>,
        listen: SocketAddr,
        ca: impl Into<PathBuf>,
        cert_chain: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        BackplaneConfig {
            id,
            name: name.into(),
            listen,
            peers: Vec::new(),
            front: None,
            ca: ca.into(),
            cert_chain: cert_chain.into(),
            key: key.into(),
            heartbeat: PeerConfig::default(),
            standby_max_flows: 1 << 20,
            handshake_timeout: Duration::from_secs(3),
            reconnect_min: Duration::from_millis(20),
            reconnect_max: Duration::from_secs(1),
            max_queued_batches: 1 << 16,
            max_worker_events: 1 << 16,
            boot_epoch: None,
        }
    }

    /// Adds a peer.
    pub fn peer(mut self, id: RelayId, name: impl Into<String>, addr: SocketAddr) -> Self {
        self.peers.push(PeerSpec {
            id,
            name: name.into(),
            addr,
            front: None,
        });
        self
    }

    /// Sets our front-path address and the last added peer's.
    pub fn front_path(mut self, ours: SocketAddr, peer: SocketAddr) -> Self {
        self.front = Some(ours);
        if let Some(p) = self.peers.last_mut() {
            p.front = Some(peer);
        }
        self
    }

    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field, why: &str| Error::Config {
            field,
            why: why.to_owned(),
        };
        check_name(&self.name).map_err(|why| bad("name", &why))?;
        self.heartbeat
            .validate()
            .map_err(|e| bad("heartbeat", &e.to_string()))?;
        if self.standby_max_flows == 0 {
            return Err(bad("standby_max_flows", "must be at least 1"));
        }
        if self.handshake_timeout.is_zero() {
            return Err(bad("handshake_timeout", "must be above zero"));
        }
        if self.reconnect_min.is_zero() {
            return Err(bad("reconnect_min", "must be above zero"));
        }
        if self.reconnect_max < self.reconnect_min {
            return Err(bad("reconnect_max", "must be at least reconnect_min"));
        }
        if self.max_queued_batches == 0 {
            return Err(bad("max_queued_batches", "must be at least 1"));
        }
        if self.max_worker_events == 0 {
            return Err(bad("max_worker_events", "must be at least 1"));
        }
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        for p in &self.peers {
            if p.id == self.id {
                return Err(bad("peers", &format!("peer {} has our own id", p.id)));
            }
            if !ids.insert(p.id) {
                return Err(bad("peers", &format!("relay id {} listed twice", p.id)));
            }
            check_name(&p.name).map_err(|why| bad("peers", &format!("peer {}: {why}", p.id)))?;
            if p.name == self.name || !names.insert(p.name.as_str()) {
                return Err(bad(
                    "peers",
                    &format!("name {:?} is not unique in the cluster", p.name),
                ));
            }
            if let Some(f) = p.front
                && (f.ip().is_unspecified() || f.port() == 0)
            {
                return Err(bad(
                    "peers",
                    &format!("peer {}: front address {f} is not reachable", p.id),
                ));
            }
            if p.front.is_some() != self.front.is_some() {
                return Err(bad(
                    "front",
                    &format!("the front path needs both our address and peer {}'s", p.id),
                ));
            }
            if p.addr.ip().is_unspecified() || p.addr.port() == 0 {
                return Err(bad(
                    "peers",
                    &format!("peer {}: address {} is not dialable", p.id, p.addr),
                ));
            }
        }
        Ok(())
    }

    /// Checks the worker count given at start (each worker is a stream;
    /// the last stream number is the control stream's).
    pub(crate) fn validate_workers(workers: usize) -> Result<u16, Error> {
        u16::try_from(workers)
            .ok()
            .filter(|&w| w < StreamId::CONTROL_WORKER)
            .ok_or_else(|| Error::Config {
                field: "wakers",
                why: format!(
                    "{workers} workers; at most {} streams",
                    StreamId::CONTROL_WORKER
                ),
            })
    }
}

/// A relay name is a DNS name (it is matched against certificate
/// subjectAltNames) that fits in a hello.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "name {name:?} must be 1 to {MAX_NAME_LEN} bytes long"
        ));
    }
    match ServerName::try_from(name) {
        Ok(ServerName::DnsName(_)) => Ok(()),
        _ => Err(format!("name {name:?} is not a DNS name")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BackplaneConfig {
        BackplaneConfig::new(
            1,
            "relay-a.lab",
            "127.0.0.1:7000".parse().unwrap(),
            "ca.pem",
            "a.pem",
            "a.key",
        )
        .peer(2, "relay-b.lab", "127.0.0.1:7001".parse().unwrap())
    }

    fn field(r: Result<(), Error>) -> &'static str {
        match r {
            Err(Error::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_validate() {
        cfg().validate().unwrap();
    }

    #[test]
    fn bad_fields_are_named() {
        let mut c = cfg();
        c.name = "not a name!".into();
        assert_eq!(field(c.validate()), "name");

        let c = cfg().peer(1, "relay-c.lab", "127.0.0.1:7002".parse().unwrap());
        assert_eq!(field(c.validate()), "peers");

        let c = cfg().peer(2, "relay-c.lab", "127.0.0.1:7002".parse().unwrap());
        assert_eq!(field(c.validate()), "peers");

        let c = cfg().peer(3, "relay-b.lab", "127.0.0.1:7002".parse().unwrap());
        assert_eq!(field(c.validate()), "peers");

        let c = cfg().peer(3, "relay-c.lab", "0.0.0.0:7002".parse().unwrap());
        assert_eq!(field(c.validate()), "peers");

        let mut c = cfg();
        c.heartbeat.misses = 1;
        assert_eq!(field(c.validate()), "heartbeat");

        let mut c = cfg();
        c.reconnect_max = Duration::from_millis(1);
        assert_eq!(field(c.validate()), "reconnect_max");
    }

    #[test]
    fn worker_count_leaves_the_control_stream() {
        assert_eq!(BackplaneConfig::validate_workers(4).unwrap(), 4);
        assert!(BackplaneConfig::validate_workers(0xffff).is_err());
        assert!(BackplaneConfig::validate_workers(1 << 20).is_err());
    }
}
