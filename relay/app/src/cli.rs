//! The command line (clap) and the human output of the client commands.
//!
//! ```text
//! relay run --config FILE [--check]
//! relay status [--json]
//! relay flows [--json]
//! relay peers [--json]
//! relay drain
//! relay reload
//! ```
//!
//! Every command takes `--control PATH`. The client commands default to
//! [`DEFAULT_CONTROL_SOCKET`], which is also the configuration's default;
//! `run` uses the configuration's `control_socket` unless `--control` is
//! given.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use relay_control::config::{Config, DEFAULT_CONTROL_SOCKET, XdpMode};

use crate::control::{FlowLine, PeersReply, ReloadReply, StatusReply};

/// The `relay` command line.
#[derive(Debug, Parser)]
#[command(
    name = "relay",
    version,
    about = "A TLS relay appliance: run it, and ask the running relay how it does"
)]
pub struct Cli {
    /// The running relay's control socket [default: /run/relay/relay.sock;
    /// for `run`, the configuration's control_socket].
    #[arg(long, global = true, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the relay, or with --check only validate its configuration.
    Run {
        /// The configuration file (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Validate the configuration (certificate files included), print a
        /// summary and exit: 0 if it is good, 1 naming the bad field if not.
        #[arg(long)]
        check: bool,
    },
    /// Show the running relay's state, counters and backends.
    Status {
        /// Print the relay's JSON reply as it is.
        #[arg(long)]
        json: bool,
    },
    /// List the running relay's flows.
    Flows {
        /// Print the relay's JSON reply as it is.
        #[arg(long)]
        json: bool,
    },
    /// Show the relay pair: each peer's state, RTT, backplane traffic,
    /// the flows held for it, and how well it protects ours.
    Peers {
        /// Print the relay's JSON reply as it is.
        #[arg(long)]
        json: bool,
    },
    /// Take no new flows; the current ones run to their end.
    Drain,
    /// Planned move: hand every flow and address to the peer relay
    /// (maintenance, failback), without waiting for flows to end.
    Handoff,
    /// Serve every address now, with the peer's flows (e.g. from a
    /// keepalived notify script): the live peer is asked to hand off; a
    /// dead one's flows are adopted from the standby store.
    Takeover,
    /// Re-read certificates and backends from the configuration file.
    Reload,
}

impl Cli {
    /// The socket the client commands talk to: `--control`, or the default.
    pub fn control_socket(&self) -> PathBuf {
        self.control
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET))
    }
}

/// `1536` -> `"1.5 KiB"`; below 1 KiB in bytes (`"512 B"`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Seconds as the two largest units: `"45s"`, `"5m03s"`, `"2h05m"`, `"3d04h"`.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if secs < 60 {
        format!("{s}s")
    } else if secs < 3600 {
        format!("{m}m{s:02}s")
    } else if secs < 86_400 {
        format!("{h}h{m:02}m")
    } else {
        format!("{d}d{h:02}h")
    }
}

/// Rows (a header is just the first row) in columns two spaces apart; columns
/// marked in `right` are right-aligned. No trailing blanks.
fn table(rows: &[Vec<String>], right: &[bool]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let width = widths[c];
            if right.get(c).copied().unwrap_or(false) {
                let _ = write!(line, "{cell:>width$}");
            } else {
                let _ = write!(line, "{cell:<width$}");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `relay status`: the relay's figures, then one line a backend.
pub fn format_status(s: &StatusReply) -> String {
    let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let summary = vec![
        vec!["state".into(), s.state.to_string()],
        vec!["uptime".into(), human_duration(s.uptime_secs)],
        vec!["version".into(), s.version.clone()],
        vec![
            "workers".into(),
            format!("{} (XDP {})", s.workers, s.xdp_mode),
        ],
        vec![
            "flows".into(),
            format!(
                "{} active / {} limit, {} opened",
                s.flows_active, s.flows_limit, s.flows_opened
            ),
        ],
        vec![
            "handshakes".into(),
            format!(
                "{} full, {} resumed, {} failed",
                s.handshakes_full, s.handshakes_resumed, s.handshakes_failed
            ),
        ],
        vec![
            "bytes".into(),
            format!(
                "{} up, {} down",
                human_bytes(s.bytes_up),
                human_bytes(s.bytes_down)
            ),
        ],
        vec![
            "backends".into(),
            format!(
                "{}, {} up",
                plural(s.backends.len() as u64, "backend", "backends"),
                s.backends.iter().filter(|b| b.health == "up").count()
            ),
        ],
    ];
    let mut out = table(&summary, &[]);
    if !s.backends.is_empty() {
        out.push('\n');
        let mut rows = vec![vec![
            "SERVICE".to_string(),
            "BACKEND".into(),
            "HEALTH".into(),
            "FLOWS".into(),
        ]];
        rows.extend(s.backends.iter().map(|b| {
            vec![
                b.service.clone(),
                b.addr.to_string(),
                b.health.clone(),
                b.active_flows.to_string(),
            ]
        }));
        out.push_str(&table(&rows, &[false, false, false, true]));
    }
    out
}

/// `relay flows`: a header, one line a flow, and the count.
pub fn format_flows(flows: &[FlowLine]) -> String {
    if flows.is_empty() {
        return "no flows\n".into();
    }
    let mut rows = vec![vec![
        "ID".to_string(),
        "CLIENT -> BACKEND".into(),
        "STATE".into(),
        "UP".into(),
        "DOWN".into(),
        "AGE".into(),
        "TLS".into(),
    ]];
    rows.extend(flows.iter().map(|f| {
        let backend = f.backend.map_or_else(|| "-".to_string(), |b| b.to_string());
        vec![
            f.id.to_string(),
            format!("{} -> {backend}", f.client),
            f.state.clone(),
            human_bytes(f.bytes_up),
            human_bytes(f.bytes_down),
            human_duration(f.age_secs),
            if f.tls.is_empty() {
                "-".into()
            } else {
                f.tls.clone()
            },
        ]
    }));
    let mut out = table(&rows, &[true, false, false, true, true, true, false]);
    let n = flows.len();
    let _ = writeln!(out, "{n} flow{}", if n == 1 { "" } else { "s" });
    out
}

/// A round-trip time in microseconds as milliseconds: `"0.18 ms"`,
/// `"2.35 ms"`, `"42 ms"`.
pub fn human_rtt(us: u64) -> String {
    let ms = us as f64 / 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// What a peer line's `protection` means, for a person.
fn protection_words(p: &str) -> &str {
    match p {
        "protected" => "protected",
        "reseeding" => "re-seeding (sending full checkpoints after a reconnection)",
        "unprotected_peer_down" => "unprotected: the peer is unreachable, commits are local",
        "unprotected_queue_full" => {
            "unprotected: the peer or the backplane is too slow (queue full), commits are local"
        }
        other => other,
    }
}

/// `relay peers`: who this relay is, then one line a peer; a relay
/// without `[cluster]` says it has none.
pub fn format_peers(r: &PeersReply) -> String {
    if !r.clustered {
        return format!(
            "{} has no [cluster] section: no peers (every commit is local)\n",
            r.relay
        );
    }
    let n = r.peers.len();
    let mut out = format!(
        "{}{}: {n} peer{}\n",
        r.relay,
        r.relay_id
            .map_or_else(String::new, |id| format!(" (relay {id})")),
        if n == 1 { "" } else { "s" }
    );
    if n == 0 {
        return out;
    }
    out.push('\n');
    let mut rows = vec![vec![
        "PEER".to_string(),
        "ID".into(),
        "STATE".into(),
        "RTT".into(),
        "CONNECTED".into(),
        "SENT".into(),
        "RECEIVED".into(),
        "HELD".into(),
        "PROTECTED".into(),
        "UNPROTECTED".into(),
        "BACKLOG".into(),
    ]];
    rows.extend(r.peers.iter().map(|p| {
        vec![
            p.name.clone(),
            p.relay_id.to_string(),
            p.state.clone(),
            p.rtt_us.map_or_else(|| "-".into(), human_rtt),
            p.connected_secs.map_or_else(|| "-".into(), human_duration),
            human_bytes(p.bytes_sent),
            human_bytes(p.bytes_received),
            p.flows_held.to_string(),
            p.flows_protected.to_string(),
            p.flows_unprotected.to_string(),
            format!(
                "{} / {} msg{}",
                human_bytes(p.backlog_bytes),
                p.backlog_messages,
                if p.backlog_messages == 1 { "" } else { "s" }
            ),
        ]
    }));
    let right = [
        false, true, false, true, true, true, true, true, true, true, true,
    ];
    out.push_str(&table(&rows, &right));
    for p in &r.peers {
        if let Some(prot) = p.protection.as_deref().filter(|&x| x != "protected") {
            let _ = writeln!(out, "{}: replication {}", p.name, protection_words(prot));
        }
    }
    out
}

/// `relay reload`: what was loaded and what changed.
pub fn format_reload(r: &ReloadReply) -> String {
    let mut out = format!(
        "reloaded: {} certificate{}, {} backend{}\n",
        r.certificates,
        if r.certificates == 1 { "" } else { "s" },
        r.backends,
        if r.backends == 1 { "" } else { "s" },
    );
    if !r.message.is_empty() {
        out.push_str(r.message.trim_end());
        out.push('\n');
    }
    out
}

/// One line saying what a configuration sets up, for `run --check`.
pub fn config_summary(c: &Config) -> String {
    let xdp = match c.front.xdp_mode {
        XdpMode::Driver => "driver",
        XdpMode::Skb => "skb",
    };
    let services: Vec<String> = c
        .services
        .iter()
        .map(|s| {
            format!(
                "{} on {}:{} ({} backend{}, {} certificate{})",
                s.name,
                s.vip,
                s.port,
                s.backends.len(),
                if s.backends.len() == 1 { "" } else { "s" },
                s.certificates.len(),
                if s.certificates.len() == 1 { "" } else { "s" },
            )
        })
        .collect();
    format!(
        "relay {:?}: {} service{} [{}]; front {} queues {:?} XDP {xdp}; back {} from {} ports {}; max {} flows; admin http://{}; control {}",
        c.name,
        c.services.len(),
        if c.services.len() == 1 { "" } else { "s" },
        services.join(", "),
        c.front.interface,
        c.front.queues,
        c.back.interface,
        c.back.address,
        c.back.ports,
        c.limits.max_flows,
        c.admin_addr,
        c.control_socket.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{BackendLine, PeerLine, RelayState};
    use clap::CommandFactory;
    use std::path::Path;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("relay").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn commands_parse() {
        let cli = parse(&["run", "--config", "/etc/relay.toml", "--check"]);
        assert_eq!(
            cli.command,
            Command::Run {
                config: "/etc/relay.toml".into(),
                check: true
            }
        );
        assert_eq!(cli.control, None);
        assert_eq!(cli.control_socket(), PathBuf::from(DEFAULT_CONTROL_SOCKET));
        let cli = parse(&["status", "--json", "--control", "/tmp/r.sock"]);
        assert_eq!(cli.command, Command::Status { json: true });
        assert_eq!(cli.control_socket(), PathBuf::from("/tmp/r.sock"));
        let cli = parse(&["--control", "/tmp/r.sock", "flows"]);
        assert_eq!(cli.command, Command::Flows { json: false });
        assert_eq!(cli.control.as_deref(), Some(Path::new("/tmp/r.sock")));
        assert_eq!(parse(&["drain"]).command, Command::Drain);
        assert_eq!(parse(&["peers"]).command, Command::Peers { json: false });
        assert_eq!(
            parse(&["peers", "--json"]).command,
            Command::Peers { json: true }
        );
        assert_eq!(parse(&["reload"]).command, Command::Reload);
        for bad in [
            &["run"][..],
            &["status", "--yaml"],
            &["drain", "now"],
            &[],
            &["stop"],
        ] {
            let args = std::iter::once("relay").chain(bad.iter().copied());
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bytes_and_durations_are_human() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
        assert_eq!(human_bytes(3 << 40), "3.0 TiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(61), "1m01s");
        assert_eq!(human_duration(3725), "1h02m");
        assert_eq!(human_duration(86_400 + 4 * 3600 + 59), "1d04h");
    }

    fn status() -> StatusReply {
        StatusReply {
            version: "0.1.0".into(),
            uptime_secs: 3725,
            state: RelayState::Draining,
            flows_active: 2,
            flows_limit: 100_000,
            flows_opened: 40,
            handshakes_full: 30,
            handshakes_resumed: 9,
            handshakes_failed: 1,
            bytes_up: 1536,
            bytes_down: 5 << 20,
            workers: 2,
            backends: vec![
                BackendLine {
                    service: "web".into(),
                    addr: "10.200.2.10:8080".parse().unwrap(),
                    health: "up".into(),
                    active_flows: 2,
                },
                BackendLine {
                    service: "api".into(),
                    addr: "10.200.2.11:80".parse().unwrap(),
                    health: "down".into(),
                    active_flows: 0,
                },
            ],
            xdp_mode: "skb".into(),
        }
    }

    #[test]
    fn status_is_an_aligned_table() {
        let text = format_status(&status());
        let expected = "\
state       draining
uptime      1h02m
version     0.1.0
workers     2 (XDP skb)
flows       2 active / 100000 limit, 40 opened
handshakes  30 full, 9 resumed, 1 failed
bytes       1.5 KiB up, 5.0 MiB down
backends    2 backends, 1 up

SERVICE  BACKEND           HEALTH  FLOWS
web      10.200.2.10:8080  up          2
api      10.200.2.11:80    down        0
";
        assert_eq!(text, expected, "\n{text}");
        let mut none = status();
        none.backends.clear();
        let text = format_status(&none);
        assert!(text.ends_with("backends    0 backends, 0 up\n"), "{text}");
        assert!(!text.contains("SERVICE"), "{text}");
    }

    #[test]
    fn flows_are_one_line_each() {
        let flows = [
            FlowLine {
                id: 7,
                client: "10.200.1.2:51234".parse().unwrap(),
                backend: Some("10.200.2.10:8080".parse().unwrap()),
                state: "established".into(),
                bytes_up: 100,
                bytes_down: 2048,
                age_secs: 61,
                tls: "TLS1.3 AES_128_GCM_SHA256".into(),
            },
            FlowLine {
                id: 12,
                client: "10.200.1.3:40000".parse().unwrap(),
                backend: None,
                state: "handshake".into(),
                bytes_up: 0,
                bytes_down: 0,
                age_secs: 1,
                tls: String::new(),
            },
        ];
        let text = format_flows(&flows);
        let expected = "\
ID  CLIENT -> BACKEND                     STATE           UP     DOWN    AGE  TLS
 7  10.200.1.2:51234 -> 10.200.2.10:8080  established  100 B  2.0 KiB  1m01s  TLS1.3 AES_128_GCM_SHA256
12  10.200.1.3:40000 -> -                 handshake      0 B      0 B     1s  -
2 flows
";
        assert_eq!(text, expected, "\n{text}");
        assert!(format_flows(&flows[..1]).ends_with("\n1 flow\n"));
        assert_eq!(format_flows(&[]), "no flows\n");
    }

    #[test]
    fn reload_says_what_it_loaded() {
        let r = ReloadReply {
            certificates: 1,
            backends: 3,
            message: "backend 10.200.2.12:8080 added\n".into(),
        };
        assert_eq!(
            format_reload(&r),
            "reloaded: 1 certificate, 3 backends\nbackend 10.200.2.12:8080 added\n"
        );
        let r = ReloadReply {
            message: String::new(),
            ..r
        };
        assert_eq!(format_reload(&r), "reloaded: 1 certificate, 3 backends\n");
    }

    fn peer_line() -> PeerLine {
        PeerLine {
            name: "relay-b".into(),
            relay_id: 2,
            address: "10.200.9.2:7000".parse().unwrap(),
            state: "up".into(),
            connected: true,
            rtt_us: Some(180),
            connected_secs: Some(65),
            connections: 1,
            bytes_sent: 5 << 20,
            bytes_received: 1536,
            flows_held: 0,
            standby_bytes: 0,
            flows_protected: 12,
            flows_unprotected: 0,
            backlog_bytes: 512,
            backlog_messages: 2,
            protection: Some("protected".into()),
        }
    }

    #[test]
    fn peers_are_one_line_each() {
        let reply = PeersReply {
            clustered: true,
            relay: "relay-a".into(),
            relay_id: Some(1),
            peers: vec![
                peer_line(),
                PeerLine {
                    name: "relay-c".into(),
                    relay_id: 3,
                    state: "down".into(),
                    connected: false,
                    rtt_us: None,
                    connected_secs: None,
                    bytes_sent: 0,
                    bytes_received: 0,
                    flows_held: 140,
                    flows_protected: 0,
                    flows_unprotected: 12,
                    backlog_bytes: 0,
                    backlog_messages: 1,
                    protection: Some("unprotected_peer_down".into()),
                    ..peer_line()
                },
            ],
        };
        let text = format_peers(&reply);
        let expected = "\
relay-a (relay 1): 2 peers

PEER     ID  STATE      RTT  CONNECTED     SENT  RECEIVED  HELD  PROTECTED  UNPROTECTED         BACKLOG
relay-b   2  up     0.18 ms      1m05s  5.0 MiB   1.5 KiB     0         12            0  512 B / 2 msgs
relay-c   3  down         -          -      0 B       0 B   140          0           12     0 B / 1 msg
relay-c: replication unprotected: the peer is unreachable, commits are local
";
        assert_eq!(text, expected, "\n{text}");
        let alone = PeersReply {
            clustered: false,
            relay_id: None,
            peers: vec![],
            ..reply
        };
        assert_eq!(
            format_peers(&alone),
            "relay-a has no [cluster] section: no peers (every commit is local)\n"
        );
        assert_eq!(human_rtt(180), "0.18 ms");
        assert_eq!(human_rtt(2345), "2.35 ms");
        assert_eq!(human_rtt(42_400), "42 ms");
    }

    #[test]
    fn the_config_summary_names_what_runs() {
        let text = r#"
name = "relay-a"
admin_addr = "127.0.0.1:9100"
[front]
interface = "front"
xdp_mode = "skb"
[back]
interface = "back"
address = "10.200.2.100"
ports = "40000-49999"
[[service]]
name = "web"
vip = "10.200.1.100"
backends = ["10.200.2.10:8080", "10.200.2.11:8080"]
[[service.certificate]]
cert = "web.crt"
key = "web.key"
"#;
        let c = Config::parse(text, Path::new("relay.toml")).unwrap();
        assert_eq!(
            config_summary(&c),
            "relay \"relay-a\": 1 service [web on 10.200.1.100:443 (2 backends, 1 certificate)]; \
             front front queues [0] XDP skb; back back from 10.200.2.100 ports 40000-49999; \
             max 100000 flows; admin http://127.0.0.1:9100; control /run/relay/relay.sock"
        );
    }
}
