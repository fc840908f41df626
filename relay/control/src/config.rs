//! The relay's configuration: one TOML file.
//!
//! Unknown fields are errors (a typo must not silently fall back to a
//! default). [`Config::parse`] reports syntax and type errors with the line;
//! [`Config::validate`] checks what types cannot (ranges, duplicates,
//! references) and names the offending field, e.g. `service[1].backends`.
//!
//! ```toml
//! name = "relay-a"
//! admin_addr = "127.0.0.1:9100"
//!
//! [front]
//! interface = "front"
//!
//! [back]
//! interface = "back"
//! address = "10.200.2.100"
//! ports = "40000-49999"
//!
//! [[service]]
//! name = "web"
//! vip = "10.200.1.100"
//! backends = ["10.200.2.10:8080"]
//! [[service.certificate]]
//! cert = "/etc/relay/web.crt"
//! key = "/etc/relay/web.key"
//! ```

use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// Where the control socket lives unless the configuration says otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/relay/relay.sock";

/// What is wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or a value of the wrong type, or an unknown field.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// A value that parses but cannot work.
    #[error("{path}: {field}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Dotted path of the field, e.g. `service[0].backends`.
        field: String,
        /// What is wrong and what would be right.
        reason: String,
    },
}

/// The whole configuration of one relay.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This relay's name: in logs, metrics and (later) to its peers.
    pub name: String,
    /// Unix socket the CLI talks to.
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// Address of the admin HTTP endpoint (`/metrics`).
    pub admin_addr: SocketAddr,
    /// Capacity limits.
    #[serde(default)]
    pub limits: Limits,
    /// The client-facing interface.
    pub front: Front,
    /// The backend-facing interface.
    pub back: Back,
    /// The relay pair (or larger cluster): backplane, peers, identities.
    /// Without it the relay runs alone and commits locally.
    #[serde(default)]
    pub cluster: Option<Cluster>,
    /// The services this relay terminates TLS for (at least one).
    #[serde(rename = "service", default)]
    pub services: Vec<Service>,
}

/// Capacity limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Flows across all workers; new flows beyond it are refused (RST).
    pub max_flows: u32,
    /// Buffer bytes one flow may hold (both directions together).
    pub max_flow_memory: u32,
    /// A client that has not finished its handshake by then is dropped.
    pub handshake_timeout_ms: u64,
    /// A flow whose close (a FIN or a failure on either side) has not
    /// finished by then is aborted with a RST to both peers, so that no
    /// client can keep a closing flow, and its memory, forever.
    pub close_timeout_ms: u64,
    /// Client connections in SYN-RECEIVED per service; a SYN beyond it
    /// pushes out the oldest (a SYN flood then costs a bounded table, and a
    /// real client whose ACK comes back within this many SYNs still gets in).
    pub max_half_open: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_flows: 100_000,
            max_flow_memory: 1 << 20,
            handshake_timeout_ms: 10_000,
            close_timeout_ms: 60_000,
            max_half_open: 16_384,
        }
    }
}

/// How the steer program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum XdpMode {
    /// Native XDP in the driver.
    #[default]
    Driver,
    /// Generic XDP (any interface, slower).
    Skb,
}

/// The client-facing interface.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Front {
    /// Interface name.
    pub interface: String,
    /// Rx queues served, one worker each.
    #[serde(default = "default_queues")]
    pub queues: Vec<u32>,
    /// XDP attach mode.
    #[serde(default)]
    pub xdp_mode: XdpMode,
}

/// The backend-facing interface.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Back {
    /// Interface name.
    pub interface: String,
    /// Address relayed connections leave from.
    pub address: Ipv4Addr,
    /// Local ports of relayed connections, e.g. `"40000-49999"`.
    pub ports: PortRange,
    /// Rx queues served, one worker each.
    #[serde(default = "default_queues")]
    pub queues: Vec<u32>,
}

/// An inclusive port range written `"first-last"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port, inclusive.
    pub last: u16,
}

impl PortRange {
    /// Number of ports in the range.
    pub fn len(&self) -> u32 {
        u32::from(self.last).saturating_sub(u32::from(self.first)) + 1
    }

    /// Never true for a parsed range (first <= last); here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.last < self.first
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("expected \"first-last\", got {s:?}"))?;
        let first: u16 = a
            .trim()
            .parse()
            .map_err(|_| format!("bad first port {a:?}"))?;
        let last: u16 = b
            .trim()
            .parse()
            .map_err(|_| format!("bad last port {b:?}"))?;
        if first == 0 || first > last {
            return Err(format!("range {s:?} must satisfy 1 <= first <= last"));
        }
        Ok(PortRange { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How a service picks a backend for a new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// In turn.
    #[default]
    RoundRobin,
    /// The healthy backend with the fewest flows.
    LeastConnections,
}

/// One service: a VIP and port, its certificates and its backends.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Name, in metrics and logs.
    pub name: String,
    /// The address clients connect to.
    pub vip: Ipv4Addr,
    /// The port clients connect to.
    #[serde(default = "default_tls_port")]
    pub port: u16,
    /// Certificates, chosen by SNI; the first is the default.
    #[serde(rename = "certificate", default)]
    pub certificates: Vec<Certificate>,
    /// ALPN protocols offered, in preference order (empty: no ALPN).
    #[serde(default)]
    pub alpn: Vec<String>,
    /// Backend servers (plain TCP).
    pub backends: Vec<SocketAddrV4>,
    /// Backend choice.
    #[serde(default)]
    pub balance: Balance,
    /// Active TCP health checks of the backends.
    #[serde(default)]
    pub health_check: HealthCheck,
    /// The relay (by `name`) that serves this service's VIP while it lives;
    /// the others stand by for it. Empty: this relay.
    #[serde(default)]
    pub owner: String,
}

/// The backplane and the peers of a relay cluster.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// This relay's id in the cluster (1..=65534), unique among its peers:
    /// it names the relay's flows and replication streams.
    pub relay_id: u16,
    /// Address and port this relay listens on for its peers, on the
    /// backplane interface.
    pub listen: SocketAddr,
    /// The cluster CA (PEM): a peer's certificate must chain to it.
    pub ca: PathBuf,
    /// This relay's certificate chain (PEM), issued by the cluster CA for
    /// the DNS name equal to this relay's `name`.
    pub cert: PathBuf,
    /// This relay's private key (PEM).
    pub key: PathBuf,
    /// Time between heartbeats to each peer.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// Heartbeat intervals without a word from a peer (on every path)
    /// before it is declared dead and its flows adopted.
    #[serde(default = "default_heartbeat_misses")]
    pub heartbeat_misses: u32,
    /// This relay's own address and UDP port on the front network for
    /// membership's second path (heartbeats authenticated with a key from
    /// the backplane session). With it, a lost backplane alone never makes
    /// two relays serve one VIP; every peer then needs its `front` too.
    #[serde(default)]
    pub front: Option<SocketAddr>,
    /// The other relays.
    #[serde(rename = "peer", default)]
    pub peers: Vec<PeerRelay>,
}

/// Another relay of the cluster.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRelay {
    /// Its `name`, which its certificate must carry.
    pub name: String,
    /// Its `cluster.relay_id`.
    pub relay_id: u16,
    /// Its backplane address and port.
    pub address: SocketAddr,
    /// Its front-path address and UDP port (see `cluster.front`).
    #[serde(default)]
    pub front: Option<SocketAddr>,
}

fn default_heartbeat_interval_ms() -> u64 {
    20
}

fn default_heartbeat_misses() -> u32 {
    5
}

/// A certificate chain and its key, in PEM files.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// The chain, leaf first.
    pub cert: PathBuf,
    /// The private key (ECDSA P-256 or RSA).
    pub key: PathBuf,
    /// SNI names this certificate answers (empty: only as the default).
    #[serde(default)]
    pub server_names: Vec<String>,
}

/// Active TCP health checks.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    /// Time between checks of one backend.
    pub interval_ms: u64,
    /// A connect that takes longer failed.
    pub timeout_ms: u64,
    /// Consecutive successes before a down backend is up.
    pub rise: u32,
    /// Consecutive failures before an up backend is down.
    pub fall: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            interval_ms: 1000,
            timeout_ms: 500,
            rise: 2,
            fall: 3,
        }
    }
}

fn default_control_socket() -> PathBuf {
    PathBuf::from(DEFAULT_CONTROL_SOCKET)
}

fn default_queues() -> Vec<u32> {
    vec![0]
}

fn default_tls_port() -> u16 {
    443
}

/// 1-based (line, column) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl Config {
    /// Reads and parses `path` (no validation).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses `text`; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let (line, column) = e
                .span()
                .map_or((0, 0), |span| line_column(text, span.start));
            let message = match field_at_line(text, line) {
                Some(field) if !e.message().contains(&field) => {
                    format!("{field}: {}", e.message())
                }
                _ => e.message().to_string(),
            };
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        })
    }

    /// Checks what parsing cannot: non-empty names, unique services,
    /// backends present, sane limits and timers. `check_files` also requires
    /// the certificate and key files to exist (for `relay run --check`).
    pub fn validate(&self, path: &Path, check_files: bool) -> Result<(), ConfigError> {
        let invalid = |field: String, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            reason,
        };
        if self.name.trim().is_empty() {
            return Err(invalid("name".into(), "must not be empty".into()));
        }
        if self.limits.max_flows == 0 {
            return Err(invalid(
                "limits.max_flows".into(),
                "must be at least 1".into(),
            ));
        }
        if self.limits.max_flow_memory < 64 * 1024 {
            return Err(invalid(
                "limits.max_flow_memory".into(),
                "must be at least 65536 bytes (a TLS record each way)".into(),
            ));
        }
        for (field, ms) in [
            (
                "limits.handshake_timeout_ms",
                self.limits.handshake_timeout_ms,
            ),
            ("limits.close_timeout_ms", self.limits.close_timeout_ms),
        ] {
            if ms == 0 {
                return Err(invalid(field.into(), "must be positive".into()));
            }
        }
        for (field, interface, queues) in [
            ("front", &self.front.interface, &self.front.queues),
            ("back", &self.back.interface, &self.back.queues),
        ] {
            if interface.is_empty() || interface.len() > 15 {
                return Err(invalid(
                    format!("{field}.interface"),
                    "must be 1 to 15 characters".into(),
                ));
            }
            let unique: HashSet<_> = queues.iter().collect();
            if queues.is_empty() || unique.len() != queues.len() {
                return Err(invalid(
                    format!("{field}.queues"),
                    "must list each queue once, at least one".into(),
                ));
            }
        }
        if self.services.is_empty() {
            return Err(invalid(
                "service".into(),
                "at least one [[service]] is required".into(),
            ));
        }
        let mut names = HashSet::new();
        let mut endpoints = HashSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let at = |f: &str| format!("service[{i}].{f}");
            if s.name.trim().is_empty() {
                return Err(invalid(at("name"), "must not be empty".into()));
            }
            if !names.insert(s.name.as_str()) {
                return Err(invalid(
                    at("name"),
                    format!("{:?} is used by an earlier service", s.name),
                ));
            }
            if !endpoints.insert((s.vip, s.port)) {
                return Err(invalid(
                    at("vip"),
                    format!("{}:{} is used by an earlier service", s.vip, s.port),
                ));
            }
            if s.port == 0 {
                return Err(invalid(at("port"), "must be 1-65535".into()));
            }
            if s.certificates.is_empty() {
                return Err(invalid(
                    at("certificate"),
                    "at least one [[service.certificate]] is required".into(),
                ));
            }
            if s.backends.is_empty() {
                return Err(invalid(
                    at("backends"),
                    "at least one backend is required".into(),
                ));
            }
            if let Some(b) = s.backends.iter().find(|b| b.port() == 0) {
                return Err(invalid(at("backends"), format!("{b} has port 0")));
            }
            let hc = &s.health_check;
            if hc.interval_ms == 0 || hc.timeout_ms == 0 || hc.timeout_ms > hc.interval_ms {
                return Err(invalid(
                    at("health_check"),
                    "interval_ms and timeout_ms must be positive and timeout_ms <= interval_ms"
                        .into(),
                ));
            }
            if hc.rise == 0 || hc.fall == 0 {
                return Err(invalid(
                    at("health_check"),
                    "rise and fall must be at least 1".into(),
                ));
            }
            if s.alpn.iter().any(|p| p.is_empty() || p.len() > 255) {
                return Err(invalid(
                    at("alpn"),
                    "protocol names are 1 to 255 bytes".into(),
                ));
            }
            if !s.owner.is_empty()
                && s.owner != self.name
                && !self
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.peers.iter().any(|p| p.name == s.owner))
            {
                return Err(invalid(
                    at("owner"),
                    format!("{:?} is neither this relay nor a [[cluster.peer]]", s.owner),
                ));
            }
            if check_files {
                for (j, c) in s.certificates.iter().enumerate() {
                    for (what, file) in [("cert", &c.cert), ("key", &c.key)] {
                        if !file.is_file() {
                            return Err(invalid(
                                format!("service[{i}].certificate[{j}].{what}"),
                                format!("{} is not a readable file", file.display()),
                            ));
                        }
                    }
                }
            }
        }
        if let Some(c) = &self.cluster {
            self.validate_cluster(c, check_files, &invalid)?;
        }
        Ok(())
    }

    fn validate_cluster(
        &self,
        c: &Cluster,
        check_files: bool,
        invalid: &dyn Fn(String, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let usable_id = |id: u16| id != 0 && id != u16::MAX;
        if !usable_id(c.relay_id) {
            return Err(invalid(
                "cluster.relay_id".into(),
                "must be 1 to 65534".into(),
            ));
        }
        if c.heartbeat_interval_ms == 0 {
            return Err(invalid(
                "cluster.heartbeat_interval_ms".into(),
                "must be positive".into(),
            ));
        }
        // One miss would declare a peer dead on a single late heartbeat.
        if c.heartbeat_misses < 2 {
            return Err(invalid(
                "cluster.heartbeat_misses".into(),
                "must be at least 2".into(),
            ));
        }
        if c.peers.is_empty() {
            return Err(invalid(
                "cluster.peer".into(),
                "a cluster needs at least one [[cluster.peer]]".into(),
            ));
        }
        let mut ids = HashSet::from([c.relay_id]);
        let mut names = HashSet::from([self.name.as_str()]);
        for (i, p) in c.peers.iter().enumerate() {
            if !usable_id(p.relay_id) || !ids.insert(p.relay_id) {
                return Err(invalid(
                    format!("cluster.peer[{i}].relay_id"),
                    format!(
                        "{} must be 1 to 65534 and differ from this relay's and every other peer's",
                        p.relay_id
                    ),
                ));
            }
            if p.front.is_some() != c.front.is_some() {
                return Err(invalid(
                    format!("cluster.peer[{i}].front"),
                    "set cluster.front and every peer's front, or none of them".into(),
                ));
            }
            if p.name.trim().is_empty() || !names.insert(p.name.as_str()) {
                return Err(invalid(
                    format!("cluster.peer[{i}].name"),
                    format!(
                        "{:?} must be non-empty and unique (this relay included)",
                        p.name
                    ),
                ));
            }
        }
        if check_files {
            for (what, file) in [("ca", &c.ca), ("cert", &c.cert), ("key", &c.key)] {
                if !file.is_file() {
                    return Err(invalid(
                        format!("cluster.{what}"),
                        format!("{} is not a readable file", file.display()),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The dotted name of the field set on 1-based `line` (e.g. `limits.max_flows`
/// or `service[0].port`), from the key on that line and the table headers
/// above it, so that a type error names the field as well as the line.
fn field_at_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let here = lines.get(line.checked_sub(1)?)?.trim();
    let key = here.split_once('=')?.0.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let mut arrays: Vec<(String, usize)> = Vec::new();
    let mut table = String::new();
    for l in &lines[..line - 1] {
        let l = l.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
            let name = name.trim().to_string();
            match arrays.iter_mut().find(|(n, _)| *n == name) {
                Some((_, count)) => *count += 1,
                None => arrays.push((name.clone(), 0)),
            }
            // Nested arrays restart when their parent moves on.
            let parent_prefix = format!("{name}.");
            arrays.retain(|(n, _)| !n.starts_with(&parent_prefix));
            table = name
                .split('.')
                .scan(String::new(), |path, part| {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(part);
                    Some((path.clone(), part.to_string()))
                })
                .map(
                    |(path, part)| match arrays.iter().find(|(n, _)| *n == path) {
                        Some((_, i)) => format!("{part}[{i}]"),
                        None => part,
                    },
                )
                .collect::<Vec<_>>()
                .join(".");
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            table = name.trim().to_string();
        }
    }
    Some(if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    })
}

#[cfg(test)]
mod tests {
    use super::field_at_line;

    #[test]
    fn type_errors_name_the_field() {
        let text = "name = \"a\"\n[limits]\nmax_flows = \"lots\"\n[[service]]\nport = 1\n[[service]]\nport = \"x\"\n[[service.certificate]]\ncert = 3\n";
        assert_eq!(field_at_line(text, 1).as_deref(), Some("name"));
        assert_eq!(field_at_line(text, 3).as_deref(), Some("limits.max_flows"));
        assert_eq!(field_at_line(text, 7).as_deref(), Some("service[1].port"));
        assert_eq!(
            field_at_line(text, 9).as_deref(),
            Some("service[1].certificate[0].cert")
        );
        assert_eq!(field_at_line(text, 2), None);
        assert_eq!(field_at_line(text, 99), None);
    }

    use super::*;

    const GOOD: &str = r#"
name = "relay-a"
admin_addr = "127.0.0.1:9100"

[front]
interface = "front"

[back]
interface = "back"
address = "10.200.2.100"
ports = "40000-49999"

[[service]]
name = "web"
vip = "10.200.1.100"
backends = ["10.200.2.10:8080", "10.200.2.11:8080"]
alpn = ["h2", "http/1.1"]
balance = "least-connections"

[[service.certificate]]
cert = "web.crt"
key = "web.key"
server_names = ["www.example.test"]
"#;

    fn path() -> &'static Path {
        Path::new("relay.toml")
    }

    #[test]
    fn a_good_file_parses_with_defaults() {
        let c = Config::parse(GOOD, path()).unwrap();
        c.validate(path(), false).unwrap();
        assert_eq!(c.services[0].port, 443);
        assert_eq!(c.services[0].balance, Balance::LeastConnections);
        assert_eq!(
            c.back.ports,
            PortRange {
                first: 40000,
                last: 49999
            }
        );
        assert_eq!(c.back.ports.len(), 10000);
        assert_eq!(c.front.queues, vec![0]);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
    }

    #[test]
    fn unknown_fields_name_the_line() {
        let text = GOOD.replace("backends =", "bakends =");
        match Config::parse(&text, path()) {
            Err(ConfigError::Parse { line, message, .. }) => {
                assert_eq!(line, 16, "{message}");
                assert!(message.contains("bakends"), "{message}");
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn bad_values_name_the_line() {
        let text = GOOD.replace("\"40000-49999\"", "\"50000-40000\"");
        let err = Config::parse(&text, path()).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { line: 11, .. }), "{err}");
        let text = GOOD.replace("10.200.1.100", "10.200.1.300");
        let err = Config::parse(&text, path()).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { line: 15, .. }), "{err}");
        assert!(err.to_string().starts_with("relay.toml:15:"), "{err}");
    }

    const CLUSTER: &str = r#"
[cluster]
relay_id = 1
listen = "10.200.3.1:7000"
ca = "cluster-ca.crt"
cert = "relay-a.crt"
key = "relay-a.key"

[[cluster.peer]]
name = "relay-b"
relay_id = 2
address = "10.200.3.2:7000"
"#;

    #[test]
    fn a_cluster_section_parses_and_is_checked() {
        let text = format!(
            "{}{CLUSTER}",
            GOOD.replace("balance =", "owner = \"relay-b\"\nbalance =")
        );
        let c = Config::parse(&text, path()).unwrap();
        c.validate(path(), false).unwrap();
        let cluster = c.cluster.as_ref().unwrap();
        assert_eq!(cluster.relay_id, 1);
        assert_eq!(cluster.heartbeat_interval_ms, 20);
        assert_eq!(cluster.heartbeat_misses, 5);
        assert_eq!(cluster.peers[0].name, "relay-b");
        assert_eq!(c.services[0].owner, "relay-b");
        let cases = [
            (
                text.replace("relay_id = 2", "relay_id = 1"),
                "cluster.peer[0].relay_id",
            ),
            (
                text.replace("owner = \"relay-b\"\n", "")
                    .replace("name = \"relay-b\"", "name = \"relay-a\""),
                "cluster.peer[0].name",
            ),
            (
                text.replace("relay_id = 1", "relay_id = 0"),
                "cluster.relay_id",
            ),
            (
                text.replace("owner = \"relay-b\"", "owner = \"relay-c\""),
                "service[0].owner",
            ),
            // The front path needs both ends.
            (
                text.replace(
                    "key = \"relay-a.key\"",
                    "key = \"relay-a.key\"\nfront = \"10.200.1.2:7000\"",
                ),
                "cluster.peer[0].front",
            ),
        ];
        let both = text
            .replace(
                "key = \"relay-a.key\"",
                "key = \"relay-a.key\"\nfront = \"10.200.1.2:7000\"",
            )
            .replace(
                "address = \"10.200.3.2:7000\"",
                "address = \"10.200.3.2:7000\"\nfront = \"10.200.1.3:7000\"",
            );
        let with_front = Config::parse(&both, path()).unwrap();
        with_front.validate(path(), false).unwrap();
        let cl = with_front.cluster.as_ref().unwrap();
        assert_eq!(
            (cl.front, cl.peers[0].front),
            (
                Some("10.200.1.2:7000".parse().unwrap()),
                Some("10.200.1.3:7000".parse().unwrap())
            )
        );
        for (text, field) in cases {
            let c = Config::parse(&text, path()).unwrap();
            match c.validate(path(), false) {
                Err(ConfigError::Invalid { field: got, .. }) => assert_eq!(got, field),
                other => panic!("expected {field} to be invalid, got {other:?}"),
            }
        }
        // A peer without a certificate on disk is caught by --check.
        match c.validate(path(), true) {
            Err(ConfigError::Invalid { .. }) => {}
            other => panic!("expected missing files, got {other:?}"),
        }
    }

    #[test]
    fn validation_names_the_field() {
        let cases = [
            (
                GOOD.replace(
                    "backends = [\"10.200.2.10:8080\", \"10.200.2.11:8080\"]",
                    "backends = []",
                ),
                "service[0].backends",
            ),
            (GOOD.replace("name = \"relay-a\"", "name = \"\""), "name"),
            (
                GOOD.replace(
                    "interface = \"front\"",
                    "interface = \"front\"\nqueues = [0, 0]",
                ),
                "front.queues",
            ),
            (
                format!(
                    "{GOOD}\n[[service]]\nname = \"web\"\nvip = \"10.200.1.101\"\nbackends = [\"10.200.2.10:1\"]\n[[service.certificate]]\ncert = \"a\"\nkey = \"b\"\n"
                ),
                "service[1].name",
            ),
            (
                format!(
                    "{GOOD}\n[[service]]\nname = \"two\"\nvip = \"10.200.1.100\"\nbackends = [\"10.200.2.10:1\"]\n[[service.certificate]]\ncert = \"a\"\nkey = \"b\"\n"
                ),
                "service[1].vip",
            ),
            (
                GOOD.replace(
                    "balance = \"least-connections\"",
                    "health_check = { interval_ms = 100, timeout_ms = 500 }",
                ),
                "service[0].health_check",
            ),
        ];
        for (text, field) in cases {
            let c = Config::parse(&text, path()).unwrap();
            match c.validate(path(), false) {
                Err(ConfigError::Invalid { field: got, .. }) => assert_eq!(got, field),
                other => panic!("expected {field} to be invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn check_files_requires_certificates_on_disk() {
        let c = Config::parse(GOOD, path()).unwrap();
        let err = c.validate(path(), true).unwrap_err();
        assert!(
            err.to_string().contains("service[0].certificate[0].cert"),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for text in [
            "",
            "[[[",
            "name = 1",
            "\u{0}",
            "name = \"x\"\nadmin_addr = \"nope\"",
        ] {
            assert!(Config::parse(text, path()).is_err(), "{text:?}");
        }
    }
}
