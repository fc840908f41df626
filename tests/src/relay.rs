//! The `relay` binary (package `relay-app`) run inside a lab: a
//! configuration builder, a process guard that starts `relay run` in the
//! relay-a namespace and stops it on drop, and the operator's views of it
//! (`relay status|flows|peers|drain|reload --json`, `/metrics`, its log).
//!
//! The binary is another package's, so Cargo does not build it for
//! `cargo test -p relay-lab` (no `CARGO_BIN_EXE_relay`). [`relay_binary`]
//! takes `$RELAY_BIN`, else `target/<profile>/relay` next to the test.
//! `cargo xtask test` builds it (`cargo test --workspace` builds the bins of
//! every package with integration tests, relay-app's included); by hand:
//!
//! ```text
//! cargo build -p relay-app --bin relay && cargo test -p relay-lab --test relay_lab
//! ```

use std::fmt::Write as _;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::{Lab, LabError, Node, addr, run, wait_for};

/// How long [`RelayProcess::start`] waits for the control socket to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long drop waits after SIGTERM before SIGKILL (the relay's own
/// shutdown grace is 10 s).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The lab relay's admin endpoint (relay-a's own front address).
pub const ADMIN_ADDR: SocketAddrV4 = SocketAddrV4::new(addr::RELAY_A_FRONT, 9100);

/// The port relays of a lab pair listen on for each other (backplane).
pub const BACKPLANE_PORT: u16 = 7000;

/// Where the `relay` binary is: `$RELAY_BIN`, else `relay` in the target
/// directory of the running test. Warns on stderr when the binary is older
/// than a source file of the relay's crates (a forgotten rebuild).
pub fn relay_binary() -> Result<PathBuf, LabError> {
    let path = match std::env::var_os("RELAY_BIN") {
        Some(p) => PathBuf::from(p),
        None => crate::peers::sibling_binary("relay").ok_or_else(|| LabError::Failed {
            cmd: "locate the relay binary".into(),
            status: "not found".into(),
            stderr:
                "no `relay` next to the test binary: run `cargo build -p relay-app --bin relay` \
                     first (or set RELAY_BIN)"
                    .into(),
        })?,
    };
    warn_if_stale(&path);
    Ok(path)
}

fn warn_if_stale(bin: &Path) {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return;
    };
    let relay_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../relay");
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    let mut stack = vec![relay_dir];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path
                    .file_name()
                    .is_some_and(|n| n != "fuzz" && n != "target")
                {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs")
                && path.components().any(|c| c.as_os_str() == "src")
                && let Ok(t) = entry.metadata().and_then(|m| m.modified())
                && newest.as_ref().is_none_or(|(n, _)| t > *n)
            {
                newest = Some((t, path));
            }
        }
    }
    if let Some((t, path)) = newest
        && t > built
    {
        eprintln!(
            "warning: {} is older than {}: rebuild it (`cargo build -p relay-app --bin relay`)",
            bin.display(),
            path.display()
        );
    }
}

/// One certificate of a service.
#[derive(Clone, Debug)]
pub struct CertificateSpec {
    /// Chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// SNI names it answers.
    pub server_names: Vec<String>,
}

/// One `[[service]]`.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    /// Its name (metrics, logs).
    pub name: String,
    /// The VIP.
    pub vip: Ipv4Addr,
    /// The port on the VIP.
    pub port: u16,
    /// ALPN protocols offered (empty: the key is left out).
    pub alpn: Vec<String>,
    /// Backends.
    pub backends: Vec<SocketAddrV4>,
    /// Certificates, the first is the default.
    pub certificates: Vec<CertificateSpec>,
    /// `owner`: the relay that serves the VIP (empty: the one configured).
    pub owner: String,
}

/// `[cluster]`: this relay's place in a relay pair.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// `relay_id`.
    pub relay_id: u16,
    /// `listen` (the backplane address and port).
    pub listen: SocketAddr,
    /// `ca`, `cert`, `key`.
    pub ca: PathBuf,
    /// This relay's chain.
    pub cert: PathBuf,
    /// This relay's key.
    pub key: PathBuf,
    /// `heartbeat_interval_ms`, `heartbeat_misses` (relay defaults if `None`).
    pub heartbeat: Option<(u64, u32)>,
    /// `[[cluster.peer]]`: name, relay id, backplane address.
    pub peers: Vec<(String, u16, SocketAddr)>,
    /// `front` (ours) and every peer's `front`: membership's second path.
    pub front: Option<(SocketAddr, SocketAddr)>,
}

impl ServiceSpec {
    /// The lab's service: `web` on VIP:443, `http/1.1`, the lab backend on
    /// port 8080, one certificate for `relay.lab`.
    pub fn lab(cert: &Path, key: &Path) -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            vip: addr::VIP,
            port: addr::VIP_PORT,
            alpn: vec!["http/1.1".into()],
            backends: vec![SocketAddrV4::new(addr::BACKEND, 8080)],
            certificates: vec![CertificateSpec {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                server_names: vec![crate::pki::SERVER_NAME.into()],
            }],
            owner: String::new(),
        }
    }
}

/// A relay configuration file, written by [`RelayConfig::to_toml`]. The
/// control socket is not part of it: [`RelayProcess`] puts one in its
/// temporary folder.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// `name`.
    pub name: String,
    /// `admin_addr`.
    pub admin_addr: SocketAddr,
    /// `front.interface`.
    pub front_interface: String,
    /// `front.xdp_mode` (`driver` or `skb`).
    pub xdp_mode: String,
    /// `back.interface`.
    pub back_interface: String,
    /// `back.address`.
    pub back_address: Ipv4Addr,
    /// `back.ports`, e.g. `40000-49999`.
    pub back_ports: String,
    /// `limits.max_flows` (relay default when `None`).
    pub max_flows: Option<u32>,
    /// `limits.max_flow_memory`.
    pub max_flow_memory: Option<u32>,
    /// `limits.handshake_timeout_ms`.
    pub handshake_timeout_ms: Option<u64>,
    /// `limits.close_timeout_ms`.
    pub close_timeout_ms: Option<u64>,
    /// `limits.max_half_open` (front connections not yet established).
    pub max_half_open: Option<u32>,
    /// The services.
    pub services: Vec<ServiceSpec>,
    /// `[cluster]`, for a relay of a pair.
    pub cluster: Option<ClusterSpec>,
}

impl RelayConfig {
    /// relay-a of the lab serving [`ServiceSpec::lab`] with `cert`/`key`.
    pub fn lab(cert: &Path, key: &Path) -> RelayConfig {
        RelayConfig {
            name: "relay-a".into(),
            admin_addr: SocketAddr::V4(ADMIN_ADDR),
            front_interface: "front".into(),
            xdp_mode: "driver".into(),
            back_interface: "back".into(),
            back_address: addr::BACK_SHARED,
            back_ports: format!("{}-{}", addr::BACK_PORT_FIRST, addr::BACK_PORT_LAST),
            max_flows: None,
            max_flow_memory: None,
            handshake_timeout_ms: None,
            close_timeout_ms: None,
            max_half_open: None,
            services: vec![ServiceSpec::lab(cert, key)],
            cluster: None,
        }
    }

    /// relay-a or relay-b of a lab relay pair: relay-a serves the lab's
    /// service and relay-b stands by for it; both hold certificates from
    /// `pki`'s CA for their names, and each lists the other as its peer.
    pub fn pair_member(
        pki: &crate::pki::TestPki,
        node: crate::Node,
    ) -> Result<RelayConfig, LabError> {
        let (me, peer, my_bp, peer_bp, id, peer_id, admin) = match node {
            crate::Node::RelayB => (
                "relay-b",
                "relay-a",
                addr::BACKPLANE_B,
                addr::BACKPLANE_A,
                2,
                1,
                SocketAddrV4::new(addr::RELAY_B_FRONT, ADMIN_ADDR.port()),
            ),
            _ => (
                "relay-a",
                "relay-b",
                addr::BACKPLANE_A,
                addr::BACKPLANE_B,
                1,
                2,
                ADMIN_ADDR,
            ),
        };
        let peer_front = match node {
            crate::Node::RelayB => addr::RELAY_A_FRONT,
            _ => addr::RELAY_B_FRONT,
        };
        let (cert, key) = pki.issue_relay(me)?;
        let mut service = ServiceSpec::lab(&pki.cert_chain, &pki.key);
        service.owner = "relay-a".into();
        Ok(RelayConfig {
            name: me.into(),
            admin_addr: SocketAddr::V4(admin),
            services: vec![service],
            cluster: Some(ClusterSpec {
                relay_id: id,
                listen: SocketAddr::V4(SocketAddrV4::new(my_bp, BACKPLANE_PORT)),
                ca: pki.ca.clone(),
                cert,
                key,
                // 50 ms x 8: the lab's two cores carry the client, the
                // backend and both relays; a heartbeat late by a loaded
                // scheduler must not read as a dead peer (a split brain).
                heartbeat: Some((50, 8)),
                peers: vec![(
                    peer.into(),
                    peer_id,
                    SocketAddr::V4(SocketAddrV4::new(peer_bp, BACKPLANE_PORT)),
                )],
                // Each relay's own front address (not the VIP it may take).
                front: Some((
                    SocketAddr::V4(SocketAddrV4::new(*admin.ip(), BACKPLANE_PORT)),
                    SocketAddr::V4(SocketAddrV4::new(peer_front, BACKPLANE_PORT)),
                )),
            }),
            ..RelayConfig::lab(&pki.cert_chain, &pki.key)
        })
    }

    /// Sets `limits.max_flows`.
    pub fn max_flows(mut self, n: u32) -> Self {
        self.max_flows = Some(n);
        self
    }

    /// Sets `limits.handshake_timeout_ms`.
    pub fn handshake_timeout_ms(mut self, ms: u64) -> Self {
        self.handshake_timeout_ms = Some(ms);
        self
    }

    /// Sets `limits.close_timeout_ms`.
    pub fn close_timeout_ms(mut self, ms: u64) -> Self {
        self.close_timeout_ms = Some(ms);
        self
    }

    /// Sets `limits.max_half_open`.
    pub fn max_half_open(mut self, n: u32) -> Self {
        self.max_half_open = Some(n);
        self
    }

    /// Sets `limits.max_flow_memory`.
    pub fn max_flow_memory(mut self, bytes: u32) -> Self {
        self.max_flow_memory = Some(bytes);
        self
    }

    /// Adds a service.
    pub fn service(mut self, service: ServiceSpec) -> Self {
        self.services.push(service);
        self
    }

    /// The TOML text, with `control_socket` set to `control`.
    pub fn to_toml(&self, control: &Path) -> String {
        let q = |s: &str| format!("{s:?}");
        let list = |items: &[String]| {
            let quoted: Vec<String> = items.iter().map(|s| q(s)).collect();
            format!("[{}]", quoted.join(", "))
        };
        let mut t = String::new();
        let _ = writeln!(t, "name = {}", q(&self.name));
        let _ = writeln!(t, "admin_addr = \"{}\"", self.admin_addr);
        let _ = writeln!(t, "control_socket = {}", q(&control.to_string_lossy()));
        if self.max_flows.is_some()
            || self.max_flow_memory.is_some()
            || self.handshake_timeout_ms.is_some()
            || self.close_timeout_ms.is_some()
            || self.max_half_open.is_some()
        {
            t.push_str("\n[limits]\n");
            if let Some(n) = self.max_flows {
                let _ = writeln!(t, "max_flows = {n}");
            }
            if let Some(n) = self.max_flow_memory {
                let _ = writeln!(t, "max_flow_memory = {n}");
            }
            if let Some(n) = self.handshake_timeout_ms {
                let _ = writeln!(t, "handshake_timeout_ms = {n}");
            }
            if let Some(n) = self.close_timeout_ms {
                let _ = writeln!(t, "close_timeout_ms = {n}");
            }
            if let Some(n) = self.max_half_open {
                let _ = writeln!(t, "max_half_open = {n}");
            }
        }
        let _ = write!(
            t,
            "\n[front]\ninterface = {}\nxdp_mode = {}\n",
            q(&self.front_interface),
            q(&self.xdp_mode)
        );
        let _ = write!(
            t,
            "\n[back]\ninterface = {}\naddress = \"{}\"\nports = {}\n",
            q(&self.back_interface),
            self.back_address,
            q(&self.back_ports)
        );
        for s in &self.services {
            let backends: Vec<String> = s.backends.iter().map(ToString::to_string).collect();
            let _ = write!(
                t,
                "\n[[service]]\nname = {}\nvip = \"{}\"\nport = {}\nbackends = {}\n",
                q(&s.name),
                s.vip,
                s.port,
                list(&backends)
            );
            if !s.alpn.is_empty() {
                let _ = writeln!(t, "alpn = {}", list(&s.alpn));
            }
            if !s.owner.is_empty() {
                let _ = writeln!(t, "owner = {}", q(&s.owner));
            }
            for c in &s.certificates {
                let _ = write!(
                    t,
                    "[[service.certificate]]\ncert = {}\nkey = {}\nserver_names = {}\n",
                    q(&c.cert.to_string_lossy()),
                    q(&c.key.to_string_lossy()),
                    list(&c.server_names)
                );
            }
        }
        if let Some(c) = &self.cluster {
            let _ = write!(
                t,
                "\n[cluster]\nrelay_id = {}\nlisten = \"{}\"\nca = {}\ncert = {}\nkey = {}\n",
                c.relay_id,
                c.listen,
                q(&c.ca.to_string_lossy()),
                q(&c.cert.to_string_lossy()),
                q(&c.key.to_string_lossy())
            );
            if let Some((interval, misses)) = c.heartbeat {
                let _ = write!(
                    t,
                    "heartbeat_interval_ms = {interval}\nheartbeat_misses = {misses}\n"
                );
            }
            if let Some((ours, _)) = c.front {
                let _ = writeln!(t, "front = \"{ours}\"");
            }
            for (name, id, address) in &c.peers {
                let _ = write!(
                    t,
                    "\n[[cluster.peer]]\nname = {}\nrelay_id = {id}\naddress = \"{address}\"\n",
                    q(name)
                );
                if let Some((_, theirs)) = c.front {
                    let _ = writeln!(t, "front = \"{theirs}\"");
                }
            }
        }
        t
    }
}

/// `relay status --json`, the fields the tests read.
#[derive(Clone, Debug, Deserialize)]
pub struct Status {
    /// `running` or `draining`.
    pub state: String,
    /// Flows open now.
    pub flows_active: u64,
    /// Flow limit.
    pub flows_limit: u64,
    /// Flows opened since start.
    pub flows_opened: u64,
    /// Full handshakes.
    pub handshakes_full: u64,
    /// Resumed handshakes.
    pub handshakes_resumed: u64,
    /// Failed handshakes.
    pub handshakes_failed: u64,
    /// Plaintext bytes client -> backend.
    pub bytes_up: u64,
    /// Plaintext bytes backend -> client.
    pub bytes_down: u64,
    /// Backends and their health.
    pub backends: Vec<BackendStatus>,
}

/// One backend line of [`Status`].
#[derive(Clone, Debug, Deserialize)]
pub struct BackendStatus {
    /// The service's name.
    pub service: String,
    /// The backend.
    pub addr: SocketAddr,
    /// `up`, `down`, ...
    pub health: String,
    /// Flows to it now.
    pub active_flows: u64,
}

/// One flow of `relay flows --json`.
#[derive(Clone, Debug, Deserialize)]
pub struct Flow {
    /// Flow id.
    pub id: u64,
    /// The client's address.
    pub client: SocketAddr,
    /// The backend, once chosen.
    pub backend: Option<SocketAddr>,
    /// State name.
    pub state: String,
    /// Plaintext bytes up.
    pub bytes_up: u64,
    /// Plaintext bytes down.
    pub bytes_down: u64,
    /// Version and cipher suite, once known.
    #[serde(default)]
    pub tls: String,
}

/// `relay peers --json`: this relay's place in its cluster, and its peers.
#[derive(Clone, Debug, Deserialize)]
pub struct Peers {
    /// Whether the relay has a `[cluster]` section.
    pub clustered: bool,
    /// This relay's name.
    pub relay: String,
    /// Its `cluster.relay_id`.
    #[serde(default)]
    pub relay_id: Option<u16>,
    /// One per configured peer.
    pub peers: Vec<Peer>,
}

/// One peer of [`Peers`].
#[derive(Clone, Debug, Deserialize)]
pub struct Peer {
    /// Its name.
    pub name: String,
    /// Its relay id.
    pub relay_id: u16,
    /// `connecting`, `up`, `suspect`, `cut` or `down`.
    pub state: String,
    /// Whether a backplane connection is live.
    pub connected: bool,
    /// Smoothed heartbeat RTT in microseconds, once measured.
    #[serde(default)]
    pub rtt_us: Option<u64>,
    /// Seconds the live connection has lasted.
    #[serde(default)]
    pub connected_secs: Option<u64>,
    /// Backplane bytes sent to it.
    pub bytes_sent: u64,
    /// Backplane bytes received from it.
    pub bytes_received: u64,
    /// Its flows held here in standby.
    pub flows_held: u64,
    /// Our flows it protects.
    pub flows_protected: u64,
    /// Our flows it does not.
    pub flows_unprotected: u64,
    /// Replication bytes not yet acknowledged.
    pub backlog_bytes: u64,
    /// Replication messages not yet acknowledged.
    pub backlog_messages: u64,
    /// Our workers' replication to it (`protected`, `reseeding`, ...).
    #[serde(default)]
    pub protection: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Reply {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    status: Option<Status>,
    #[serde(default)]
    flows: Option<Vec<Flow>>,
    #[serde(default)]
    cluster: Option<Peers>,
}

/// A `/metrics` page in the Prometheus text format.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// The page as served.
    pub text: String,
}

impl Metrics {
    /// The sum of every sample of `name` whose labels include all of
    /// `labels` (0 when there is none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(series, _)| {
                let (n, rest) = series.split_once('{').unwrap_or((series, ""));
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
            .sum()
    }
}

/// A running `relay run` inside relay-a of a lab. Drop sends SIGTERM (by
/// PID), waits up to [`STOP_TIMEOUT`], then SIGKILL; the temporary folder
/// (configuration, control socket, log) goes with it. While a test panics,
/// drop prints the log's tail.
#[derive(Debug)]
pub struct RelayProcess {
    child: Child,
    bin: PathBuf,
    dir: PathBuf,
    config_path: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    admin: SocketAddr,
    relay_ns: String,
}

impl RelayProcess {
    /// Writes `config`, starts the relay in relay-a of `lab` (RUST_LOG=info
    /// unless set) and waits until `relay status` answers.
    pub fn start(lab: &Lab, config: &RelayConfig) -> Result<RelayProcess, LabError> {
        Self::start_on(lab, Node::RelayA, config)
    }

    /// [`start`](Self::start) in `node` (relay-a or relay-b).
    pub fn start_on(lab: &Lab, node: Node, config: &RelayConfig) -> Result<RelayProcess, LabError> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let bin = relay_binary()?;
        let dir = std::env::temp_dir().join(format!(
            "relay-lab-{}-{}",
            lab.prefix(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let io = |what: String| move |source| LabError::Spawn { cmd: what, source };
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io(format!("mkdir {}", dir.display())))?;
        let config_path = dir.join("relay.toml");
        let socket = dir.join("relay.sock");
        let log = dir.join("relay.log");
        std::fs::write(&config_path, config.to_toml(&socket))
            .map_err(io(format!("write {}", config_path.display())))?;
        let log_file = File::create(&log).map_err(io(format!("create {}", log.display())))?;
        let log_err = log_file
            .try_clone()
            .map_err(io(format!("dup {}", log.display())))?;
        let ns = lab.ns(node);
        let cmd = format!(
            "ip netns exec {ns} {} run --config {}",
            bin.display(),
            config_path.display()
        );
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &ns])
            .arg(&bin)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err));
        command.env("NO_COLOR", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        // `ip netns exec` execs the program: the child's PID is the relay's.
        let child = command
            .spawn()
            .map_err(|source| LabError::Spawn { cmd, source })?;
        let mut relay = RelayProcess {
            child,
            bin,
            dir,
            config_path,
            socket,
            log,
            admin: config.admin_addr,
            relay_ns: ns.clone(),
        };
        let mut exited = None;
        let ready = wait_for(START_TIMEOUT, "the relay's control socket", || {
            if let Ok(Some(status)) = relay.child.try_wait() {
                exited = Some(status);
                return Some(false);
            }
            (relay.socket.exists() && relay.status().is_ok()).then_some(true)
        });
        match (ready, exited) {
            (Ok(true), _) => Ok(relay),
            (_, Some(status)) => Err(LabError::Failed {
                cmd: "relay run".into(),
                status: status.to_string(),
                stderr: relay.log_tail(40),
            }),
            (Err(e), _) => Err(LabError::Failed {
                cmd: "relay run".into(),
                status: e.to_string(),
                stderr: relay.log_tail(40),
            }),
            (Ok(false), None) => unreachable!("false only with an exit status"),
        }
    }

    /// The relay's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The configuration file (rewrite it, then [`RelayProcess::reload`]).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The control socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The temporary folder of this relay (configuration, socket, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `relay --control SOCKET args...` (on the host: the socket is a
    /// file) and returns its output, or an error with its stderr.
    pub fn cli(&self, args: &[&str]) -> Result<Output, LabError> {
        let bin = self.bin.to_string_lossy();
        let socket = self.socket.to_string_lossy();
        let mut full = vec!["--control", socket.as_ref()];
        full.extend_from_slice(args);
        run(&bin, &full)
    }

    fn json(&self, args: &[&str]) -> Result<Reply, LabError> {
        let out = self.cli(args)?;
        let text = String::from_utf8_lossy(&out.stdout);
        let reply: Reply = serde_json::from_str(text.trim()).map_err(|e| LabError::Failed {
            cmd: format!("relay {}", args.join(" ")),
            status: "unparsable reply".into(),
            stderr: format!("{e}: {text}"),
        })?;
        if !reply.ok {
            return Err(LabError::Failed {
                cmd: format!("relay {}", args.join(" ")),
                status: "refused".into(),
                stderr: reply.error.unwrap_or_default(),
            });
        }
        Ok(reply)
    }

    /// `relay status --json`.
    pub fn status(&self) -> Result<Status, LabError> {
        self.json(&["status", "--json"])?
            .status
            .ok_or_else(|| LabError::Failed {
                cmd: "relay status --json".into(),
                status: "no status in the reply".into(),
                stderr: String::new(),
            })
    }

    /// `relay flows --json`.
    pub fn flows(&self) -> Result<Vec<Flow>, LabError> {
        Ok(self.json(&["flows", "--json"])?.flows.unwrap_or_default())
    }

    /// `relay peers --json`.
    pub fn peers(&self) -> Result<Peers, LabError> {
        self.json(&["peers", "--json"])?
            .cluster
            .ok_or_else(|| LabError::Failed {
                cmd: "relay peers --json".into(),
                status: "no cluster in the reply".into(),
                stderr: String::new(),
            })
    }

    /// `relay drain`; returns what it printed.
    pub fn drain(&self) -> Result<String, LabError> {
        let out = self.cli(&["drain"])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `relay handoff`; returns what it printed (an error if it refused).
    pub fn handoff(&self) -> Result<String, LabError> {
        let out = self.cli(&["handoff"])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `relay takeover`; returns what it printed (an error if it refused).
    pub fn takeover(&self) -> Result<String, LabError> {
        let out = self.cli(&["takeover"])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `relay reload`; returns what it printed.
    pub fn reload(&self) -> Result<String, LabError> {
        let out = self.cli(&["reload"])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `GET /metrics` of the admin endpoint, from the relay's own node
    /// (`curl`): a scrape that never crosses the front link, which a test
    /// may be flooding.
    pub fn metrics(&self) -> Result<Metrics, LabError> {
        let url = format!("http://{}/metrics", self.admin);
        let out = run(
            "ip",
            &[
                "netns",
                "exec",
                &self.relay_ns,
                "curl",
                "-sS",
                "--fail",
                "--max-time",
                "30",
                &url,
            ],
        )?;
        Ok(Metrics {
            text: String::from_utf8_lossy(&out.stdout).into_owned(),
        })
    }

    /// The last `lines` lines of the relay's log (stdout and stderr).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGKILL (by PID) and reap: a process death, with nothing run on the
    /// way out.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, wait up to `timeout`, then SIGKILL. Returns whether it
    /// exited on its own after SIGTERM.
    pub fn stop(&mut self, timeout: Duration) -> bool {
        if !self.is_running() {
            return true;
        }
        let _ = run("kill", &["-TERM", &self.child.id().to_string()]);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.is_running() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let clean = self.stop(STOP_TIMEOUT);
        if std::thread::panicking() || !clean {
            eprintln!(
                "relay (pid {}) {}; its log's tail:\n{}",
                self.child.id(),
                if clean {
                    "stopped"
                } else {
                    "did not stop on SIGTERM"
                },
                self.log_tail(60)
            );
        }
        if let Some(keep) = std::env::var_os("RELAY_LAB_KEEP_LOGS") {
            // For a post-mortem of a long run: the whole log, not a tail.
            let name = self.dir.file_name().unwrap_or_default().to_owned();
            let to = std::path::PathBuf::from(keep)
                .join(name)
                .with_extension("log");
            let _ = std::fs::create_dir_all(to.parent().unwrap_or(std::path::Path::new("/tmp")));
            let _ = std::fs::copy(self.dir.join("relay.log"), &to);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
