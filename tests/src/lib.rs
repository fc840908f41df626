//! The lab: the topology of DESIGN.md section 6 built from network namespaces
//! on one machine, and the harness the end-to-end tests run in.
//!
//! ```text
//!   client ──eth0──┐            ┌──eth0── backend
//!                  │  switch    │
//!   relay-a ─front─┤ brfront    ├─back── relay-a
//!   relay-b ─front─┘    brback  └─back── relay-b
//!   relay-a ─bp0──────────────────bp0─ relay-b     (backplane, point to point)
//! ```
//!
//! Every namespace is named `<prefix>-<node>`, so parallel runs with distinct
//! prefixes never meet. Addresses live only inside these namespaces (see
//! `docs/lab.md`). [`Lab`] removes everything it made when dropped, also when
//! a test fails; [`Lab::down`] removes leftovers of a crashed run by prefix.
//!
//! The real peers of the end-to-end tests are binaries of this package:
//! `lab-backend` (HTTP/1.1 origin, [`backend`]) and `lab-load` (TLS load
//! client, [`load`]); [`peers`] starts them and [`pki`] makes their certificates.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::net::Ipv4Addr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod addr;
pub mod backend;
pub mod echo;
pub mod gap;
pub mod http;
pub mod load;
pub mod netns;
pub mod peers;
pub mod pki;
pub mod relay;
pub mod responder;
pub mod tcp_host;

pub use netns::Netns;

/// The steer program loaded with the lab's service (VIP:443) and back side
/// (shared back address, ports 40000-49999), workers marked alive, not yet
/// attached to any interface.
pub fn lab_steer_program() -> Result<relay_datapath::SteerProgram, relay_datapath::DeviceError> {
    use relay_common::{ServiceKey, ServiceValue, SteerConfig};
    let mut steer = relay_datapath::SteerProgram::load()?;
    steer.set_services(&[(
        ServiceKey::new(addr::VIP.octets(), addr::VIP_PORT),
        ServiceValue { service_index: 0 },
    )])?;
    steer.set_config(SteerConfig::new(
        addr::BACK_SHARED.octets(),
        addr::BACK_PORT_FIRST,
        addr::BACK_PORT_LAST,
        true,
    ))?;
    Ok(steer)
}

/// A machine of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    /// Runs the real TLS clients.
    Client,
    /// The first relay (owns the VIP and the back-side address at start).
    RelayA,
    /// The second relay.
    RelayB,
    /// Runs the real backend servers.
    Backend,
    /// Holds the front and back bridges.
    Switch,
}

impl Node {
    /// Every node, in creation order.
    pub const ALL: [Node; 5] = [
        Node::Switch,
        Node::Client,
        Node::RelayA,
        Node::RelayB,
        Node::Backend,
    ];

    /// The node's part of the namespace name.
    pub fn name(self) -> &'static str {
        match self {
            Node::Client => "client",
            Node::RelayA => "relay-a",
            Node::RelayB => "relay-b",
            Node::Backend => "backend",
            Node::Switch => "switch",
        }
    }
}

/// What went wrong while building or using the lab.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// A command could not be started (not installed?).
    #[error(
        "could not run `{cmd}`: {source} (is it installed? `cargo xtask setup` installs the lab's tools)"
    )]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A condition was not met before its deadline.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    /// The lab needs root (namespaces, veths, XDP).
    #[error("the lab needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF); run as root")]
    NotRoot,
    /// A bad prefix.
    #[error("invalid lab prefix {0:?}: use 1-20 characters of [a-z0-9]")]
    BadPrefix(String),
}

/// Runs `program args...` and returns its output, or an error with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<Output, LabError> {
    let cmd_line = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            cmd: cmd_line.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(LabError::Failed {
            cmd: cmd_line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// Polls `check` every 10 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, LabError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout(timeout, what.to_string()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// A veth link of the lab: `(node, ifname)` on one end, `(node, ifname)` on the other.
struct Link {
    a: (Node, &'static str),
    b: (Node, &'static str),
    /// Bridge in the switch that end `b` joins, if any.
    bridge: Option<&'static str>,
}

const LINKS: [Link; 7] = [
    Link {
        a: (Node::Client, "eth0"),
        b: (Node::Switch, "c-eth0"),
        bridge: Some("brfront"),
    },
    Link {
        a: (Node::RelayA, "front"),
        b: (Node::Switch, "a-front"),
        bridge: Some("brfront"),
    },
    Link {
        a: (Node::RelayB, "front"),
        b: (Node::Switch, "b-front"),
        bridge: Some("brfront"),
    },
    Link {
        a: (Node::RelayA, "back"),
        b: (Node::Switch, "a-back"),
        bridge: Some("brback"),
    },
    Link {
        a: (Node::RelayB, "back"),
        b: (Node::Switch, "b-back"),
        bridge: Some("brback"),
    },
    Link {
        a: (Node::Backend, "eth0"),
        b: (Node::Switch, "k-eth0"),
        bridge: Some("brback"),
    },
    Link {
        a: (Node::RelayA, "bp0"),
        b: (Node::RelayB, "bp0"),
        bridge: None,
    },
];

/// The addresses each node's interfaces get (prefix length in `addr`).
const ADDRESSES: [(Node, &str, Ipv4Addr, u8); 7] = [
    (Node::Client, "eth0", addr::CLIENT, 24),
    (Node::RelayA, "front", addr::RELAY_A_FRONT, 24),
    (Node::RelayB, "front", addr::RELAY_B_FRONT, 24),
    (Node::RelayA, "back", addr::RELAY_A_BACK, 24),
    (Node::RelayB, "back", addr::RELAY_B_BACK, 24),
    (Node::Backend, "eth0", addr::BACKEND, 24),
    (Node::RelayA, "bp0", addr::BACKPLANE_A, 30),
];

/// A running lab. Dropping it tears everything down unless [`Lab::keep`] was called.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    keep: bool,
}

impl Lab {
    /// Builds the whole topology under `prefix`, first removing leftovers of
    /// an earlier run with the same prefix. On error, removes what it made.
    pub fn up(prefix: &str) -> Result<Lab, LabError> {
        Self::check_prefix(prefix)?;
        if !is_root() {
            return Err(LabError::NotRoot);
        }
        Lab::down(prefix)?;
        let lab = Lab {
            prefix: prefix.to_string(),
            keep: false,
        };
        lab.build()?;
        Ok(lab)
    }

    fn check_prefix(prefix: &str) -> Result<(), LabError> {
        let ok = !prefix.is_empty()
            && prefix.len() <= 20
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if ok {
            Ok(())
        } else {
            Err(LabError::BadPrefix(prefix.to_string()))
        }
    }

    fn build(&self) -> Result<(), LabError> {
        for node in Node::ALL {
            run("ip", &["netns", "add", &self.ns(node)])?;
            self.ip(node, &["link", "set", "lo", "up"])?;
        }
        let switch = self.ns(Node::Switch);
        for bridge in ["brfront", "brback"] {
            run(
                "ip",
                &["-n", &switch, "link", "add", bridge, "type", "bridge"],
            )?;
            // No STP and no forwarding delay: the lab's ports forward at once.
            run(
                "ip",
                &[
                    "-n",
                    &switch,
                    "link",
                    "set",
                    bridge,
                    "type",
                    "bridge",
                    "stp_state",
                    "0",
                    "forward_delay",
                    "0",
                ],
            )?;
            run("ip", &["-n", &switch, "link", "set", bridge, "up"])?;
        }
        for link in &LINKS {
            let (a_node, a_if) = link.a;
            let (b_node, b_if) = link.b;
            let a_ns = self.ns(a_node);
            let b_ns = self.ns(b_node);
            run(
                "ip",
                &[
                    "-n", &a_ns, "link", "add", a_if, "type", "veth", "peer", "name", b_if,
                    "netns", &b_ns,
                ],
            )?;
            if let Some(bridge) = link.bridge {
                run("ip", &["-n", &b_ns, "link", "set", b_if, "master", bridge])?;
            }
            for (ns, ifname) in [(&a_ns, a_if), (&b_ns, b_if)] {
                // Frames must carry complete checksums: AF_XDP and AF_PACKET
                // receive them as sent, without the stack's offload fix-up.
                run(
                    "ip",
                    &["netns", "exec", ns, "ethtool", "-K", ifname, "tx", "off"],
                )?;
                run("ip", &["-n", ns, "link", "set", ifname, "up"])?;
            }
        }
        for (node, ifname, address, len) in ADDRESSES {
            self.ip(
                node,
                &["addr", "add", &format!("{address}/{len}"), "dev", ifname],
            )?;
        }
        self.ip(
            Node::RelayB,
            &[
                "addr",
                "add",
                &format!("{}/30", addr::BACKPLANE_B),
                "dev",
                "bp0",
            ],
        )?;
        // The VIP and the shared back-side address start on relay-a; failover
        // moves them (gratuitous ARP). The kernel only answers ARP for them:
        // TCP to VIP:443 and to the back-side ports is steered by XDP.
        self.ip(
            Node::RelayA,
            &["addr", "add", &format!("{}/32", addr::VIP), "dev", "front"],
        )?;
        self.ip(
            Node::RelayA,
            &[
                "addr",
                "add",
                &format!("{}/32", addr::BACK_SHARED),
                "dev",
                "back",
            ],
        )?;
        Ok(())
    }

    /// Removes every namespace of the lab `prefix` (and the processes the
    /// lab's tools started in them). Succeeds when there is nothing to remove.
    pub fn down(prefix: &str) -> Result<(), LabError> {
        Self::check_prefix(prefix)?;
        for ns in Self::namespaces(prefix)? {
            if let Ok(out) = run("ip", &["netns", "pids", &ns]) {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // Only processes living inside the lab's own namespace:
                        // servers and clients the lab tooling started there.
                        let _ = run("kill", &["-9", &pid.to_string()]);
                    }
                }
            }
            run("ip", &["netns", "del", &ns])?;
        }
        Ok(())
    }

    /// Names of the existing namespaces of lab `prefix`.
    pub fn namespaces(prefix: &str) -> Result<Vec<String>, LabError> {
        let out = run("ip", &["netns", "list"])?;
        let wanted: Vec<String> = Node::ALL
            .iter()
            .map(|n| format!("{prefix}-{}", n.name()))
            .collect();
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|name| wanted.iter().any(|w| w == name))
            .map(str::to_string)
            .collect())
    }

    /// A human-readable report of lab `prefix`: namespaces, links, addresses, XDP.
    pub fn status(prefix: &str) -> Result<String, LabError> {
        Self::check_prefix(prefix)?;
        let namespaces = Self::namespaces(prefix)?;
        if namespaces.is_empty() {
            return Ok(format!("lab {prefix:?}: down (no namespaces)\n"));
        }
        let mut report = format!(
            "lab {prefix:?}: {} of {} namespaces\n",
            namespaces.len(),
            Node::ALL.len()
        );
        for ns in &namespaces {
            report.push_str(&format!("== {ns}\n"));
            let out = run("ip", &["-n", ns, "-br", "addr", "show"])?;
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                report.push_str(&format!("   {line}\n"));
            }
            let links = run("ip", &["-n", ns, "link", "show"])?;
            for line in String::from_utf8_lossy(&links.stdout).lines() {
                if line.contains("prog/xdp") || line.contains(" xdp") {
                    report.push_str(&format!("   xdp: {}\n", line.trim()));
                }
            }
        }
        Ok(report)
    }

    /// The namespace name of `node`.
    pub fn ns(&self, node: Node) -> String {
        format!("{}-{}", self.prefix, node.name())
    }

    /// The lab's prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Leaves the lab standing when this value drops (for `cargo xtask lab up`).
    pub fn keep(mut self) {
        self.keep = true;
    }

    /// `ip -n <node> args...`
    pub fn ip(&self, node: Node, args: &[&str]) -> Result<Output, LabError> {
        let ns = self.ns(node);
        let mut full = vec!["-n", ns.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `program args...` inside `node` and waits for it.
    pub fn exec(&self, node: Node, program: &str, args: &[&str]) -> Result<Output, LabError> {
        let ns = self.ns(node);
        let mut full = vec!["netns", "exec", ns.as_str(), program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Starts `program args...` inside `node` with piped stdout/stderr.
    pub fn spawn(&self, node: Node, program: &str, args: &[&str]) -> Result<Child, LabError> {
        let ns = self.ns(node);
        Command::new("ip")
            .args(["netns", "exec", &ns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| LabError::Spawn {
                cmd: format!("ip netns exec {ns} {program} {}", args.join(" ")),
                source,
            })
    }

    /// Drops `percent` % of the frames `ifname` of `node` receives, at
    /// random: packet loss as the sender sees it (nothing tells it), as
    /// `tc qdisc ... netem loss` does on the other end's egress. The lab
    /// kernel has no netem (`CONFIG_NET_SCH_NETEM` is off), so this is a
    /// `clsact` qdisc with a classic BPF filter in direct-action mode: a
    /// random number mod 100, below `percent` is `TC_ACT_SHOT`, else
    /// `TC_ACT_OK`. [`Lab::remove_ingress_loss`] removes it (and so does the
    /// namespace's removal).
    pub fn add_ingress_loss(&self, node: Node, ifname: &str, percent: u32) -> Result<(), LabError> {
        // ld rand (SKF_AD_OFF + SKF_AD_RANDOM); A %= 100; A >= percent ? ret 0 : ret 2.
        let bytecode = format!(
            "5,32 0 0 {},148 0 0 100,53 1 0 {percent},6 0 0 2,6 0 0 0",
            0xffff_f000u32 + 56
        );
        self.exec(node, "tc", &["qdisc", "add", "dev", ifname, "clsact"])?;
        self.exec(
            node,
            "tc",
            &[
                "filter", "add", "dev", ifname, "ingress", "bpf", "da", "bytecode", &bytecode,
            ],
        )?;
        Ok(())
    }

    /// Removes what [`Lab::add_ingress_loss`] put on `ifname` of `node`.
    pub fn remove_ingress_loss(&self, node: Node, ifname: &str) -> Result<(), LabError> {
        self.exec(node, "tc", &["qdisc", "del", "dev", ifname, "clsact"])?;
        Ok(())
    }

    /// Frames `ifname` of `node` received and dropped under
    /// [`Lab::add_ingress_loss`]: `(packets, dropped)` of its `clsact` qdisc.
    pub fn ingress_loss_counters(&self, node: Node, ifname: &str) -> Result<(u64, u64), LabError> {
        let out = self.exec(node, "tc", &["-s", "qdisc", "show", "dev", ifname])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines().skip_while(|l| !l.starts_with("qdisc clsact"));
        let sent = lines.nth(1).unwrap_or("");
        // " Sent 145384 bytes 5006 pkt (dropped 519, overlimits 0 requeues 0)"
        let words: Vec<&str> = sent
            .split(|c: char| c.is_whitespace() || c == ',' || c == '(')
            .filter(|w| !w.is_empty())
            .collect();
        let after = |key: &str| -> Option<u64> {
            let i = words.iter().position(|w| *w == key)?;
            words.get(i + 1)?.parse().ok()
        };
        let packets = words
            .iter()
            .position(|w| *w == "pkt")
            .and_then(|i| words.get(i.checked_sub(1)?)?.parse().ok());
        match (packets, after("dropped")) {
            (Some(p), Some(d)) => Ok((p, d)),
            _ => Err(LabError::Failed {
                cmd: format!("tc -s qdisc show dev {ifname} in {}", node.name()),
                status: "no clsact counters".into(),
                stderr: text,
            }),
        }
    }

    /// The kernel's TCP counters (`/proc/net/snmp`, `Tcp:` line) inside `node`.
    pub fn kernel_tcp_counters(&self, node: Node) -> Result<Vec<(String, i64)>, LabError> {
        let out = self.exec(node, "cat", &["/proc/net/snmp"])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut tcp_lines = text.lines().filter(|l| l.starts_with("Tcp:"));
        let (Some(names), Some(values)) = (tcp_lines.next(), tcp_lines.next()) else {
            return Ok(Vec::new());
        };
        Ok(names
            .split_whitespace()
            .skip(1)
            .zip(values.split_whitespace().skip(1))
            .filter_map(|(n, v)| v.parse().ok().map(|v| (n.to_string(), v)))
            .collect())
    }

    /// The MAC address of `ifname` inside `node`.
    pub fn mac(&self, node: Node, ifname: &str) -> Result<[u8; 6], LabError> {
        let out = self.exec(node, "cat", &[&format!("/sys/class/net/{ifname}/address")])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut mac = [0u8; 6];
        let parts: Vec<&str> = text.trim().split(':').collect();
        if parts.len() != 6 {
            return Err(LabError::Failed {
                cmd: format!("read MAC of {ifname}"),
                status: "ok".into(),
                stderr: format!("unexpected address {text:?}"),
            });
        }
        for (slot, part) in mac.iter_mut().zip(parts) {
            *slot = u8::from_str_radix(part, 16).map_err(|_| LabError::Failed {
                cmd: format!("read MAC of {ifname}"),
                status: "ok".into(),
                stderr: format!("unexpected address {text:?}"),
            })?;
        }
        Ok(mac)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = Lab::down(&self.prefix) {
            tracing::error!(prefix = %self.prefix, error = %e, "lab teardown failed");
            eprintln!("lab teardown of {:?} failed: {e}", self.prefix);
        }
    }
}

/// A prefix unique to this process and call, for tests running in parallel.
pub fn unique_prefix(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tag: String = tag
        .chars()
        .filter(|c| c.is_ascii_lowercase())
        .take(6)
        .collect();
    format!("t{tag}{}x{n}", std::process::id())
}
