//! `relay run`: the relay itself. Loads the XDP steer program on both
//! interfaces, opens the AF_XDP sockets, starts the control socket, the
//! admin endpoint and the backend health checks, then runs the worker on
//! this thread until a signal asks it to stop.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use anyhow::{Context, bail};
use relay_cluster::BackplaneHandle;
use relay_common::{ServiceKey, ServiceValue, SteerConfig};
use relay_control::backends::BackendPool;
use relay_control::config::{Config, XdpMode};
use relay_control::metrics::{Counter, Registry};
use relay_datapath::{AfXdpConfig, AfXdpDevice, AttachMode, SteerProgram};
use relay_flow::FlowConfig;
use relay_tls::{LocalSessionStore, TlsServerConfig};
use relay_worker::{
    DeviceMetrics, RelayMetrics, ReplicationFigures, ServiceRuntime, Shared, Worker, WorkerConfig,
};

use crate::admin::AdminServer;
use crate::control::{
    BackendLine, ControlHandler, ControlServer, FlowLine, PeersReply, RelayState, ReloadReply,
    StatusReply,
};
use crate::pair::PairCommand;
use crate::peers::ClusterMetrics;

/// Sessions kept for resumption (TLS 1.2 IDs and TLS 1.3 stateful tickets).
const SESSION_CACHE: usize = 64 * 1024;

/// Runs the relay described by `config` (read from `path`, already
/// validated) until SIGTERM or SIGINT, then drains.
pub fn run(config: Config, path: &Path) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    if config.front.queues.len() != 1 || config.back.queues.len() != 1 {
        bail!(
            "this version serves one rx queue per interface: set front.queues and back.queues to one queue each"
        );
    }
    let front_q = config.front.queues[0];
    let back_q = config.back.queues[0];
    let sessions = LocalSessionStore::new(SESSION_CACHE);
    let tls = build_tls(&config, &sessions)?;
    let pools: Vec<Mutex<BackendPool>> = config
        .services
        .iter()
        .map(|s| Mutex::new(BackendPool::new(&s.backends, s.balance, &s.health_check)))
        .collect();
    let registry = Arc::new(Registry::new());
    let metrics = RelayMetrics::new(registry.clone());
    let shared = Arc::new(Shared {
        metrics,
        tls: RwLock::new(tls),
        pools,
        draining: AtomicBool::new(false),
        shutdown: AtomicBool::new(false),
        flows: Mutex::new(Vec::new()),
        max_flows: config.limits.max_flows as usize,
        // One worker (one rx queue per interface, checked above).
        replication: vec![ReplicationFigures::default()],
        frozen: AtomicBool::new(false),
    });
    // The backplane starts once the worker exists (below); the admin
    // endpoint and the control socket, up before it, find it here.
    let backplane: Arc<OnceLock<BackplaneHandle>> = Arc::new(OnceLock::new());
    let pair: Arc<OnceLock<crossbeam_channel::Sender<PairCommand>>> = Arc::new(OnceLock::new());
    let cluster_metrics = config.cluster.as_ref().map(|c| {
        let names: Vec<String> = c.peers.iter().map(|p| p.name.clone()).collect();
        ClusterMetrics::new(registry.clone(), &names)
    });

    let mode = match config.front.xdp_mode {
        XdpMode::Driver => AttachMode::Driver,
        XdpMode::Skb => AttachMode::Skb,
    };
    let services: Vec<(ServiceKey, ServiceValue)> = config
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                ServiceKey::new(s.vip.octets(), s.port),
                ServiceValue {
                    service_index: i as u32,
                },
            )
        })
        .collect();
    let steer_config = SteerConfig::new(
        config.back.address.octets(),
        config.back.ports.first,
        config.back.ports.last,
        false,
    );
    // The relay's own addresses: while no worker lives, the box answers no
    // ARP request for them.
    let addresses = crate::cluster::Addresses::at_start(&config);
    let own_addrs = addresses.all.clone();
    // One program instance per interface: each has its own socket map, and
    // both interfaces use queue numbers from 0. Attached so that they stay
    // when this process dies (replacing what an earlier relay left): a dead
    // relay's box then drops its flows' segments instead of resetting them.
    let mut steer_front = SteerProgram::load().context("loading the XDP steer program")?;
    steer_front.set_services(&services)?;
    steer_front.set_addresses(&own_addrs)?;
    steer_front.set_config(steer_config)?;
    steer_front
        .attach_persistent(&config.front.interface, mode)
        .with_context(|| format!("attaching to {}", config.front.interface))?;
    let mut steer_back = SteerProgram::load().context("loading the XDP steer program")?;
    steer_back.set_services(&services)?;
    steer_back.set_addresses(&own_addrs)?;
    steer_back.set_config(steer_config)?;
    steer_back
        .attach_persistent(&config.back.interface, mode)
        .with_context(|| format!("attaching to {}", config.back.interface))?;

    let front =
        AfXdpDevice::open(&socket_config(&config.front.interface, front_q)).with_context(|| {
            format!(
                "AF_XDP socket on {} queue {front_q}",
                config.front.interface
            )
        })?;
    let back = AfXdpDevice::open(&socket_config(&config.back.interface, back_q))
        .with_context(|| format!("AF_XDP socket on {} queue {back_q}", config.back.interface))?;
    steer_front.register_socket(front_q, &front.socket_fd())?;
    steer_back.register_socket(back_q, &back.socket_fd())?;
    steer_front.set_workers_alive(true)?;
    steer_back.set_workers_alive(true)?;

    let front_mac = interface_mac(&config.front.interface)?;
    let back_mac = interface_mac(&config.back.interface)?;
    let mut neighbours = HashMap::new();
    for s in &config.services {
        for b in &s.backends {
            match relay_datapath::neighbour::resolve(*b.ip(), Duration::from_secs(1)) {
                Ok(mac) => {
                    neighbours.insert(*b.ip(), mac);
                }
                Err(e) => tracing::warn!(backend = %b, error = %e, "backend MAC not resolved yet"),
            }
        }
    }

    let steer = Arc::new(Mutex::new((steer_front, steer_back)));
    let verdicts = VerdictSeries::new(&registry, &config.front.interface, &config.back.interface);
    let mut admin = AdminServer::bind(config.admin_addr)
        .with_context(|| format!("admin endpoint on {}", config.admin_addr))?;
    {
        let registry = registry.clone();
        let steer = steer.clone();
        let shared = shared.clone();
        let shared2 = shared.clone();
        let backplane = backplane.clone();
        admin.spawn(
            move || {
                if let Ok(s) = steer.lock() {
                    verdicts.update(&s.0, &s.1);
                }
                update_backend_gauges(&registry, &shared);
                if let (Some(m), Some(h)) = (&cluster_metrics, backplane.get()) {
                    m.refresh(h, &shared.replication);
                }
                registry.render()
            },
            move || shared2.draining.load(Ordering::Relaxed),
        )?;
    }
    tracing::info!(addr = %admin.local_addr(), "admin endpoint (/metrics, /healthz)");

    let handler = Arc::new(Handler {
        shared: shared.clone(),
        config: Mutex::new(config.clone()),
        path: path.to_path_buf(),
        sessions: sessions.clone(),
        started,
        xdp_mode: format!("{:?}", config.front.xdp_mode).to_lowercase(),
        name: config.name.clone(),
        relay_id: config.cluster.as_ref().map(|c| c.relay_id),
        backplane: backplane.clone(),
        pair: pair.clone(),
    });
    let mut control = ControlServer::bind(&config.control_socket)
        .with_context(|| format!("control socket {}", config.control_socket.display()))?;
    control.serve(handler)?;
    tracing::info!(path = %config.control_socket.display(), "control socket");

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    {
        let shared = shared.clone();
        let stop = stop.clone();
        let checks = config.services.clone();
        std::thread::Builder::new()
            .name("relay-health".into())
            .spawn(move || health_checks(&shared, &checks, &stop))?;
    }
    {
        let shared = shared.clone();
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("relay-signals".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                tracing::info!("stopping: no new flows, waiting for open ones");
                shared.draining.store(true, Ordering::Relaxed);
                shared.shutdown.store(true, Ordering::Relaxed);
            })?;
    }

    let mut isn_secret = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut isn_secret))
        .context("reading /dev/urandom for the ISN secret")?;
    let mut flow = FlowConfig {
        handshake_timeout: Duration::from_millis(config.limits.handshake_timeout_ms),
        close_timeout: Duration::from_millis(config.limits.close_timeout_ms),
        coalesce: true,
        // A relay alone acknowledges its commits at once and keeps them
        // nowhere: only a relay with a peer builds checkpoints.
        checkpoints: config.cluster.is_some(),
        ..FlowConfig::default()
    };
    flow.front.mss = 1460;
    flow.back.mss = 1460;
    // What the peers may have in flight towards us, per flow: every flow's
    // burst lands in the same rx ring (see `socket_config`).
    let window = 128 * 1024;
    flow.front.recv_buffer = window;
    flow.back.recv_buffer = window;
    let worker_cfg = WorkerConfig {
        relay_id: config.cluster.as_ref().map_or(0, |c| c.relay_id),
        worker_index: 0,
        services: config
            .services
            .iter()
            .map(|s| ServiceRuntime {
                name: s.name.clone(),
                addr: SocketAddrV4::new(s.vip, s.port),
            })
            .collect(),
        front_mac,
        back_mac,
        back_addr: config.back.address,
        back_ports: (config.back.ports.first, config.back.ports.last),
        flow,
        isn_secret,
        shutdown_grace: Duration::from_secs(10),
        max_flow_memory: config.limits.max_flow_memory as usize,
        max_half_open: config.limits.max_half_open.max(1) as usize,
    };
    let front_fd = front.socket_fd();
    let back_fd = back.socket_fd();
    let front_dev = DeviceMetrics::new(&registry, &config.front.interface, front_q);
    let back_dev = DeviceMetrics::new(&registry, &config.back.interface, back_q);
    let mut worker = Worker::new(
        worker_cfg,
        Box::new(front),
        front_fd,
        front_dev,
        Box::new(back),
        back_fd,
        back_dev,
        neighbours,
        shared.clone(),
    )?;
    let cluster = crate::cluster::start(
        &config,
        &mut worker,
        crate::cluster::Takeover {
            steer: steer.clone(),
            addresses,
            front: (config.front.interface.clone(), front_mac),
            back: (config.back.interface.clone(), back_mac),
            shared: shared.clone(),
        },
    )?;
    if let Some(c) = &cluster {
        let _ = backplane.set(c.handle.clone());
        let _ = pair.set(c.commands.clone());
    }
    tracing::info!(
        name = %config.name,
        services = config.services.len(),
        "relay running"
    );
    let result = worker.run();
    drop(cluster);
    stop.store(true, Ordering::Relaxed);
    // The programs stay attached with the workers marked dead: a stopped
    // relay's box keeps quiet about the relay's flows and addresses, as a
    // dead one does (`ip link set dev IF xdp off` removes them for good).
    if let Ok(mut s) = steer.lock() {
        let _ = s.0.set_workers_alive(false);
        let _ = s.1.set_workers_alive(false);
    }
    admin.shutdown();
    drop(control);
    result?;
    tracing::info!("relay stopped");
    Ok(())
}

/// Deep rings: AF_XDP has no backpressure towards the senders, so a burst
/// from many flows at once must fit in the rx ring or be lost (and cost a
/// retransmission timeout). 2 KiB frames hold a 1500-byte MTU.
fn socket_config(interface: &str, queue: u32) -> AfXdpConfig {
    AfXdpConfig {
        frame_count: 32768,
        frame_size: 2048,
        ring_size: 16384,
        ..AfXdpConfig::new(interface, queue)
    }
}

fn build_tls(
    config: &Config,
    sessions: &Arc<LocalSessionStore>,
) -> anyhow::Result<Vec<Arc<TlsServerConfig>>> {
    let mut out = Vec::with_capacity(config.services.len());
    for (i, s) in config.services.iter().enumerate() {
        let mut b = TlsServerConfig::builder();
        for c in &s.certificates {
            let names: Vec<&str> = c.server_names.iter().map(String::as_str).collect();
            b = b
                .certificate_pem_files(&c.cert, &c.key, &names)
                .with_context(|| {
                    format!(
                        "service[{i}] ({}): certificate {}",
                        s.name,
                        c.cert.display()
                    )
                })?;
        }
        let tls = b
            .alpn_protocols(s.alpn.iter().map(|p| p.as_bytes().to_vec()).collect())
            .session_store(sessions.clone())
            .build()
            .with_context(|| format!("service[{i}] ({}): TLS configuration", s.name))?;
        out.push(Arc::new(tls));
    }
    Ok(out)
}

fn interface_mac(name: &str) -> anyhow::Result<[u8; 6]> {
    let path = PathBuf::from(format!("/sys/class/net/{name}/address"));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("no interface {name:?} here ({})", path.display()))?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.trim().split(':').collect();
    if parts.len() != 6 {
        bail!("{}: not a MAC address: {text:?}", path.display());
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16)
            .with_context(|| format!("{}: not a MAC address: {text:?}", path.display()))?;
    }
    Ok(mac)
}

/// XDP verdict counters as series, per interface.
struct VerdictSeries {
    front: Vec<(&'static str, Counter)>,
    back: Vec<(&'static str, Counter)>,
}

impl VerdictSeries {
    fn new(registry: &Registry, front: &str, back: &str) -> Self {
        let names = relay_datapath::steer::VerdictCounts::default()
            .named()
            .map(|(n, _)| n)
            .collect::<Vec<_>>();
        let series = |iface: &str| {
            names
                .iter()
                .map(|&n| {
                    (
                        n,
                        registry.counter(
                            "relay_xdp_verdicts_total",
                            "Packets by steer program verdict.",
                            &[("interface", iface), ("verdict", n)],
                        ),
                    )
                })
                .collect()
        };
        VerdictSeries {
            front: series(front),
            back: series(back),
        }
    }

    fn update(&self, front: &SteerProgram, back: &SteerProgram) {
        for (prog, series) in [(front, &self.front), (back, &self.back)] {
            if let Ok(v) = prog.verdicts() {
                for (name, count) in v.named() {
                    if let Some((_, c)) = series.iter().find(|(n, _)| *n == name) {
                        c.set_total(count);
                    }
                }
            }
        }
    }
}

fn update_backend_gauges(registry: &Registry, shared: &Shared) {
    for (i, pool) in shared.pools.iter().enumerate() {
        let Ok(pool) = pool.lock() else { continue };
        let service = i.to_string();
        for st in pool.status() {
            let addr = st.addr.to_string();
            let labels = [("service", service.as_str()), ("backend", addr.as_str())];
            registry
                .gauge(
                    "relay_backend_up",
                    "1 when the backend takes new flows.",
                    &labels,
                )
                .set(i64::from(st.health == relay_control::backends::Health::Up));
            registry
                .gauge(
                    "relay_backend_flows",
                    "Flows relayed to the backend now.",
                    &labels,
                )
                .set(i64::from(st.active_flows));
        }
    }
}

fn health_checks(shared: &Shared, services: &[relay_control::config::Service], stop: &AtomicBool) {
    let interval = services
        .iter()
        .map(|s| s.health_check.interval_ms)
        .min()
        .unwrap_or(1000)
        .max(100);
    while !stop.load(Ordering::Relaxed) {
        for (i, s) in services.iter().enumerate() {
            let timeout = Duration::from_millis(s.health_check.timeout_ms.max(10));
            let addrs: Vec<(usize, SocketAddrV4)> = match shared.pools[i].lock() {
                Ok(p) => p.addrs().collect(),
                Err(_) => continue,
            };
            for (index, addr) in addrs {
                let ok = TcpStream::connect_timeout(&SocketAddr::V4(addr), timeout).is_ok();
                if let Ok(mut p) = shared.pools[i].lock()
                    && let Some(h) = p.report_check(index, ok)
                {
                    tracing::info!(service = %s.name, backend = %addr, health = h.name(), "backend health changed");
                }
            }
        }
        let mut slept = 0;
        while slept < interval && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            slept += 50;
        }
    }
}

/// Answers the control socket from the shared state.
struct Handler {
    shared: Arc<Shared>,
    config: Mutex<Config>,
    path: PathBuf,
    sessions: Arc<LocalSessionStore>,
    started: std::time::Instant,
    xdp_mode: String,
    /// This relay's name and `cluster.relay_id`, as it started.
    name: String,
    relay_id: Option<u16>,
    /// The backplane, once started.
    backplane: Arc<OnceLock<BackplaneHandle>>,
    /// The pair thread's commands, once started.
    pair: Arc<OnceLock<crossbeam_channel::Sender<PairCommand>>>,
}

impl Handler {
    fn pair_command(
        &self,
        make: fn(crossbeam_channel::Sender<Result<String, String>>) -> PairCommand,
    ) -> Result<String, String> {
        let Some(tx) = self.pair.get() else {
            return Err(
                "this relay has no peer (no [cluster] section), or it is still starting".into(),
            );
        };
        let (reply, answer) = crossbeam_channel::bounded(1);
        tx.send(make(reply))
            .map_err(|_| "the pair thread is gone".to_string())?;
        // Within the CLI's timeout: the pair gives up a handoff after 3 s.
        answer
            .recv_timeout(Duration::from_millis(4500))
            .map_err(|_| "no answer from the pair thread in time; see the log".to_string())?
    }
}

impl ControlHandler for Handler {
    fn status(&self) -> StatusReply {
        let m = &self.shared.metrics;
        let names: Vec<String> = match self.config.lock() {
            Ok(c) => c.services.iter().map(|s| s.name.clone()).collect(),
            Err(_) => Vec::new(),
        };
        let mut backends = Vec::new();
        for (i, pool) in self.shared.pools.iter().enumerate() {
            let Ok(pool) = pool.lock() else { continue };
            for st in pool.status() {
                backends.push(BackendLine {
                    service: names.get(i).cloned().unwrap_or_default(),
                    addr: SocketAddr::V4(st.addr),
                    health: st.health.name().to_string(),
                    active_flows: u64::from(st.active_flows),
                });
            }
        }
        StatusReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            state: if self.shared.draining.load(Ordering::Relaxed) {
                RelayState::Draining
            } else {
                RelayState::Running
            },
            flows_active: m.flows_active.get().max(0) as u64,
            flows_limit: self.shared.max_flows as u64,
            flows_opened: m.flows_opened.get(),
            handshakes_full: m.handshakes_full.get(),
            handshakes_resumed: m.handshakes_resumed.get(),
            handshakes_failed: m.handshakes_failed_tls.get()
                + m.handshakes_failed_timeout.get()
                + m.handshakes_failed_client_gone.get(),
            bytes_up: m.bytes_up.get(),
            bytes_down: m.bytes_down.get(),
            workers: 1,
            backends,
            xdp_mode: self.xdp_mode.clone(),
        }
    }

    fn flows(&self) -> Vec<FlowLine> {
        let Ok(flows) = self.shared.flows.lock() else {
            return Vec::new();
        };
        flows
            .iter()
            .map(|f| FlowLine {
                id: f.id,
                client: SocketAddr::V4(f.client),
                backend: f.backend.map(SocketAddr::V4),
                state: f.state.to_string(),
                bytes_up: f.bytes_up,
                bytes_down: f.bytes_down,
                age_secs: f.age.as_secs(),
                tls: f.tls.clone(),
            })
            .collect()
    }

    fn peers(&self) -> Result<PeersReply, String> {
        crate::peers::reply(
            &self.name,
            self.relay_id,
            self.backplane.get(),
            &self.shared.replication,
        )
    }

    fn handoff(&self) -> Result<String, String> {
        self.pair_command(PairCommand::Handoff)
    }

    fn takeover(&self) -> Result<String, String> {
        self.pair_command(PairCommand::Takeover)
    }

    fn drain(&self) -> Result<String, String> {
        self.shared.draining.store(true, Ordering::Relaxed);
        let active = self.shared.metrics.flows_active.get();
        Ok(format!(
            "draining: new flows are refused, {active} open flows carry on"
        ))
    }

    fn reload(&self) -> Result<ReloadReply, String> {
        let new = Config::load(&self.path).map_err(|e| e.to_string())?;
        new.validate(&self.path, true).map_err(|e| e.to_string())?;
        let mut current = self
            .config
            .lock()
            .map_err(|_| "state poisoned".to_string())?;
        let same_services = new.services.len() == current.services.len()
            && new
                .services
                .iter()
                .zip(&current.services)
                .all(|(a, b)| a.vip == b.vip && a.port == b.port);
        if !same_services {
            return Err(
                "reload changes certificates and backends only; services (VIP, port) differ: restart the relay"
                    .into(),
            );
        }
        let tls = build_tls(&new, &self.sessions).map_err(|e| format!("{e:#}"))?;
        let certificates: usize = new.services.iter().map(|s| s.certificates.len()).sum();
        let mut backends = 0;
        for (pool, s) in self.shared.pools.iter().zip(&new.services) {
            if let Ok(mut p) = pool.lock() {
                p.reload(&s.backends, s.balance, &s.health_check);
            }
            backends += s.backends.len();
        }
        match self.shared.tls.write() {
            Ok(mut g) => *g = tls,
            Err(poisoned) => *poisoned.into_inner() = tls,
        }
        *current = new;
        tracing::info!(certificates, backends, "configuration reloaded");
        Ok(ReloadReply {
            certificates: certificates as u64,
            backends: backends as u64,
            message:
                "reloaded: new flows use the new certificates and backends; open flows carry on"
                    .into(),
        })
    }
}
