//! The relay's Prometheus series, registered once per relay (no global
//! registry: two relays in one process keep separate figures).

use std::sync::Arc;

use relay_control::metrics::{Counter, Gauge, Histogram, LATENCY_BUCKETS, Registry};
use relay_flow::CloseReason;

/// Handles on every series the workers move.
#[derive(Debug, Clone)]
pub struct RelayMetrics {
    /// The registry the admin endpoint renders.
    pub registry: Arc<Registry>,
    /// Flows open now.
    pub flows_active: Gauge,
    /// Flows accepted since start.
    pub flows_opened: Counter,
    /// Flows carried on from a peer relay's checkpoint.
    pub flows_adopted: Counter,
    /// Flows handed off to a peer relay (`relay handoff`).
    pub flows_handed_off: Counter,
    /// Failovers completed: a dead peer's flows adopted and its addresses
    /// taken over.
    pub failovers: Counter,
    /// Time from the peer declared down to its addresses announced here.
    pub failover_seconds: Histogram,
    /// Commits that were not replicated (no peer reachable, or its queue
    /// full): the flow went on unprotected.
    pub commits_unprotected: Counter,
    /// New flows refused (flow limit, draining).
    pub flows_refused_limit: Counter,
    /// New flows refused while draining.
    pub flows_refused_draining: Counter,
    closed: Vec<(CloseReason, Counter)>,
    /// Full handshakes completed.
    pub handshakes_full: Counter,
    /// Resumed handshakes completed.
    pub handshakes_resumed: Counter,
    /// Handshakes failed: rustls refused the client.
    pub handshakes_failed_tls: Counter,
    /// Handshakes failed: the client did not finish in time.
    pub handshakes_failed_timeout: Counter,
    /// Handshakes failed: the client closed or reset first.
    pub handshakes_failed_client_gone: Counter,
    /// Plaintext client -> backend.
    pub bytes_up: Counter,
    /// Plaintext backend -> client.
    pub bytes_down: Counter,
    /// Records opened.
    pub records_up: Counter,
    /// Records sealed.
    pub records_down: Counter,
    /// TCP segments retransmitted, client side.
    pub retransmits_front: Counter,
    /// TCP segments retransmitted, backend side.
    pub retransmits_back: Counter,
    /// Commits made.
    pub commits: Counter,
    /// Time from commit to acknowledgement.
    pub commit_latency: Histogram,
    /// Frames that did not parse as Ethernet/IPv4/TCP.
    pub frames_malformed: Counter,
    /// Half-open connections pushed out by new SYNs (table full: a flood).
    pub half_open_evicted: Counter,
    /// Client connections in SYN-RECEIVED now.
    pub half_open: Gauge,
    /// Resets sent to segments of no flow.
    pub resets_sent: Counter,
}

/// Device ring counters of one socket, as series.
#[derive(Debug, Clone)]
pub struct DeviceMetrics {
    /// Frames received.
    pub rx_frames: Counter,
    /// Bytes received.
    pub rx_bytes: Counter,
    /// Frames sent.
    pub tx_frames: Counter,
    /// Bytes sent.
    pub tx_bytes: Counter,
    /// Times the tx ring was full.
    pub tx_backpressure: Counter,
    /// Wakeups of the kernel for tx.
    pub kicks: Counter,
    /// Frames the kernel dropped for want of rx ring room.
    pub rx_dropped: Counter,
}

impl DeviceMetrics {
    /// The series of the socket on `interface`, queue `queue`.
    pub fn new(registry: &Registry, interface: &str, queue: u32) -> Self {
        let q = queue.to_string();
        let l = [("interface", interface), ("queue", q.as_str())];
        let c = |name: &str, help: &str| registry.counter(name, help, &l);
        DeviceMetrics {
            rx_frames: c(
                "relay_device_rx_frames_total",
                "Frames received by the AF_XDP socket.",
            ),
            rx_bytes: c(
                "relay_device_rx_bytes_total",
                "Bytes received by the AF_XDP socket.",
            ),
            tx_frames: c(
                "relay_device_tx_frames_total",
                "Frames sent by the AF_XDP socket.",
            ),
            tx_bytes: c(
                "relay_device_tx_bytes_total",
                "Bytes sent by the AF_XDP socket.",
            ),
            tx_backpressure: c(
                "relay_device_tx_ring_full_total",
                "Times a frame waited for room in the tx ring.",
            ),
            kicks: c(
                "relay_device_tx_kicks_total",
                "Wakeups of the kernel to send.",
            ),
            rx_dropped: c(
                "relay_device_rx_dropped_total",
                "Frames the kernel dropped for want of rx ring room.",
            ),
        }
    }

    /// Copies a device's counters in.
    pub fn update(&self, s: &relay_datapath::DeviceStats) {
        self.rx_frames.set_total(s.rx_frames);
        self.rx_bytes.set_total(s.rx_bytes);
        self.tx_frames.set_total(s.tx_frames);
        self.tx_bytes.set_total(s.tx_bytes);
        self.tx_backpressure.set_total(s.tx_backpressure);
        self.kicks.set_total(s.kicks);
        self.rx_dropped.set_total(s.rx_dropped);
    }
}

impl RelayMetrics {
    /// Registers every series in `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        let r = &registry;
        let closed = CloseReason::ALL
            .iter()
            .map(|&reason| {
                (
                    reason,
                    r.counter(
                        "relay_flows_closed_total",
                        "Flows ended, by reason.",
                        &[("reason", reason.label())],
                    ),
                )
            })
            .collect();
        let failed = |reason: &str| {
            r.counter(
                "relay_handshakes_failed_total",
                "TLS handshakes that failed, by reason.",
                &[("reason", reason)],
            )
        };
        let dir = |name: &str, help: &str, d: &str| r.counter(name, help, &[("direction", d)]);
        RelayMetrics {
            flows_active: r.gauge("relay_flows_active", "Flows open now.", &[]),
            flows_opened: r.counter("relay_flows_opened_total", "Flows accepted.", &[]),
            flows_adopted: r.counter(
                "relay_flows_adopted_total",
                "Flows carried on from a peer relay's checkpoint.",
                &[],
            ),
            flows_handed_off: r.counter(
                "relay_flows_handed_off_total",
                "Flows a peer relay carries on after a planned handoff (relay handoff).",
                &[],
            ),
            failovers: r.counter(
                "relay_failovers_total",
                "Failovers completed: a dead peer's flows adopted and its addresses taken over.",
                &[],
            ),
            failover_seconds: r.histogram(
                "relay_failover_seconds",
                "Time from a peer declared down to its addresses announced by this relay.",
                &[],
                &[0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0],
            ),
            commits_unprotected: r.counter(
                "relay_commits_unprotected_total",
                "Commits not replicated to a peer (none reachable, or its queue full).",
                &[],
            ),
            flows_refused_limit: r.counter(
                "relay_flows_refused_total",
                "New flows refused with a reset.",
                &[("reason", "flow_limit")],
            ),
            flows_refused_draining: r.counter(
                "relay_flows_refused_total",
                "New flows refused with a reset.",
                &[("reason", "draining")],
            ),
            closed,
            handshakes_full: r.counter(
                "relay_handshakes_total",
                "TLS handshakes completed.",
                &[("kind", "full")],
            ),
            handshakes_resumed: r.counter(
                "relay_handshakes_total",
                "TLS handshakes completed.",
                &[("kind", "resumed")],
            ),
            handshakes_failed_tls: failed("tls_error"),
            handshakes_failed_timeout: failed("timeout"),
            handshakes_failed_client_gone: failed("client_gone"),
            bytes_up: dir("relay_bytes_total", "Plaintext bytes relayed.", "up"),
            bytes_down: dir("relay_bytes_total", "Plaintext bytes relayed.", "down"),
            records_up: dir(
                "relay_records_total",
                "TLS records opened (up) and sealed (down).",
                "up",
            ),
            records_down: dir(
                "relay_records_total",
                "TLS records opened (up) and sealed (down).",
                "down",
            ),
            retransmits_front: r.counter(
                "relay_tcp_retransmits_total",
                "TCP segments sent again.",
                &[("side", "front")],
            ),
            retransmits_back: r.counter(
                "relay_tcp_retransmits_total",
                "TCP segments sent again.",
                &[("side", "back")],
            ),
            commits: r.counter("relay_commits_total", "Flow state commits.", &[]),
            commit_latency: r.histogram(
                "relay_commit_latency_seconds",
                "Time from a commit to its acknowledgement.",
                &[],
                // Decades hid what matters: a backplane commit takes a few
                // hundred microseconds, a local one under ten.
                LATENCY_BUCKETS,
            ),
            frames_malformed: r.counter(
                "relay_frames_malformed_total",
                "Steered frames that did not parse as Ethernet/IPv4/TCP.",
                &[],
            ),
            half_open_evicted: r.counter(
                "relay_half_open_evicted_total",
                "Half-open connections pushed out by new SYNs while the table was full (SYN flood).",
                &[],
            ),
            half_open: r.gauge(
                "relay_half_open",
                "Client connections in SYN-RECEIVED.",
                &[],
            ),
            resets_sent: r.counter(
                "relay_tcp_resets_sent_total",
                "Resets sent to segments of no flow.",
                &[],
            ),
            registry,
        }
    }

    /// The counter of flows closed for `reason`.
    pub fn closed(&self, reason: CloseReason) -> Option<&Counter> {
        self.closed
            .iter()
            .find(|(r, _)| *r == reason)
            .map(|(_, c)| c)
    }
}
