//! A deterministic failover simulation of one relayed flow, in virtual time.
//!
//! ```text
//!   client (relay-tcp + rustls)  <-C2R/R2C->  relay A  <-R2S/S2R->  backend (relay-tcp)
//!                                               |  commits / acks (delayed, in order)
//!                                               v
//!                                            relay B  (then B -> C after a second kill)
//! ```
//!
//! Every segment is emitted to bytes with relay-wire (checksums included)
//! and parsed again on delivery. Each of the four links has its own delay,
//! rate, loss and reordering, drawn from the seed. The replication channel
//! carries each commit encoded (`FlowCheckpoint::to_bytes`), the standby
//! decodes and stores it (in order), acknowledges, and the acknowledgement
//! travels back before the primary gets `handle_commit_ack`.
//!
//! At seeded moments (a fraction of the transfer, or the close) the active
//! relay vanishes with its unacknowledged commits; after a seeded down time
//! the standby adopts the flow from the last checkpoint it stored and takes
//! over the addresses. Segments the dead relay had in flight are dropped or
//! still delivered (both happen in a real network).
//!
//! The client and the backend send seeded byte patterns (full duplex or
//! request/response), verify every byte they receive at its offset, hash
//! both streams, and close in a seeded order. A run fails (returns `Err`
//! with a diagnostic) on a RST anywhere, a TLS error or alert at the
//! client, a wrong byte, a truncated stream, a flow that does not end
//! `Closed(Normal)`, or no progress before a virtual deadline.
//!
//! With `Params::watch_rule` (the default) the commit rule is also watched
//! directly: every segment the relay sends must acknowledge nothing, and
//! carry no record, past what the standby holds at that moment. A run that
//! fails says which check saw it first ([`Check`]): the monitor's failure
//! is [`Check::CommitRule`].
//!
//! `Params::broken_rule` is the mutation that shows the monitor works,
//! applied here and not in relay-flow: the relay's outbox acknowledges
//! each commit as soon as the flow makes it, before the standby holds it,
//! so the flow releases bytes (and sends records) too early.
//!
//! Flow ids and commit numbers are watched too: the flow keeps its
//! [`FlowId`] across adoptions, each checkpoint carries the commit number
//! it was made for, and every commit of an adopter sorts after every
//! commit the dead relays made.
//!
//! Runs are deterministic for a given build, except that rustls' ECDSA
//! signatures vary in length by a byte or two (the ECDSA seeds' segment
//! boundaries move slightly from run to run). `SIM_TRACE=1` prints the
//! segments after the first kill (`SIM_TRACE_ALL=1`: from the start).

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use relay_flow::{
    CloseReason, CommitNo, Flow, FlowCheckpoint, FlowConfig, FlowError, FlowEvent, FlowId,
    FlowMeta, Outbox, Phase,
};
use relay_tcp::{
    Config as TcpConfig, Connection, Event, FourTuple, Instant, IsnSecret, Listener, ReleaseMode,
    State, TcpRepr,
};
use relay_tls::{Suite, TlsServerConfig, UnixTime, Version};
use relay_wire::TcpPacket;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use sha2::{Digest, Sha256};

pub const KIB: usize = 1 << 10;
pub const MIB: usize = 1 << 20;

pub const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 40000);
pub const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100), 443);
pub const RELAY_BACK: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 100), 50000);
pub const BACKEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 1), 8080);
/// The simulated flow's id (relay A's worker 3; a counter past 32 bits).
pub const FLOW: FlowId = FlowId {
    relay: 1,
    worker: 3,
    counter: (1 << 33) + 5,
};

/// The check that stopped a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The commit-rule monitor (`Params::watch_rule`): a segment the relay
    /// sent, or what the client or the backend had acknowledged or
    /// received, went past what the standby held at that moment.
    CommitRule,
    /// Bytes that never arrive: no progress for `stall_limit`, nothing left
    /// to happen, or the virtual time or step limit.
    Stalled,
    /// Any other check: a reset, a TLS error or alert, a wrong, missing or
    /// extra byte, a flow that did not close normally, an encoding that
    /// does not round-trip, commit numbers out of order.
    Other,
}

/// Why a run failed: the check that saw it first, and a diagnostic.
#[derive(Clone, Debug)]
pub struct Failure {
    pub check: Check,
    /// When the run stopped, a byte stream (either way) had not been
    /// delivered in full.
    pub incomplete: bool,
    pub diagnostic: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:?}] {}", self.check, self.diagnostic)
    }
}

/// xoshiro256** seeded through SplitMix64.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            splitmix(x)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Uniform in [lo, hi].
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

/// The byte stream of one direction: a function of the offset, so that a
/// receiver can check every byte where it lands.
fn fill_pattern(seed: u64, off: u64, out: &mut [u8]) {
    let mut i = 0;
    while i < out.len() {
        let pos = off + i as u64;
        let w = splitmix(seed ^ (pos / 8).wrapping_mul(0x2545_f491_4f6c_dd1d)).to_le_bytes();
        let k = (pos % 8) as usize;
        let n = (8 - k).min(out.len() - i);
        out[i..i + n].copy_from_slice(&w[k..k + n]);
        i += n;
    }
}

/// One direction's byte stream ([`fill_pattern`] with its seed).
#[derive(Clone, Copy, Debug)]
pub struct Pattern(u64);

impl Pattern {
    /// The `len` bytes at stream offset `off`.
    pub fn bytes(self, off: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        fill_pattern(self.0, off, &mut out);
        out
    }
}

// ----------------------------------------------------------------------
// Parameters.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Both ends send everything at once.
    Duplex,
    /// `rounds` requests of `N / rounds` bytes, each answered by `M / rounds`.
    RequestResponse { rounds: u64 },
}

/// Who closes when. Both ends always close; `*_waits` makes that end wait
/// for the other's close first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseOrder {
    pub client_waits: bool,
    pub backend_waits: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct LinkParams {
    pub delay: Duration,
    pub rate: u64,
    pub loss: f64,
    pub reorder: f64,
}

/// When a kill fires.
#[derive(Clone, Copy, Debug)]
pub enum Trigger {
    /// Once this fraction of all bytes (both ways) has been received.
    Progress(f64),
    /// Once the flow is closing (a close_notify or FIN has been seen).
    Closing,
    /// Once the standby holds a checkpoint of an adopter that carries
    /// backend plaintext acknowledged early (`down_partial`): the next
    /// adopter must go on from it.
    Replaying,
}

#[derive(Clone, Debug)]
pub struct Params {
    pub seed: u64,
    pub suite: Suite,
    pub server_name: &'static str,
    /// Client -> backend bytes.
    pub up: u64,
    /// Backend -> client bytes.
    pub down: u64,
    pub workload: Workload,
    pub close: CloseOrder,
    /// C2R, R2C, R2S, S2R.
    pub links: [LinkParams; 4],
    /// One-way backplane delay, min and max (FIFO).
    pub repl_delay: (Duration, Duration),
    pub kills: Vec<Trigger>,
    /// How long the addresses are nobody's after a kill.
    pub down_time: Duration,
    /// Segments the dead relay had in flight still arrive.
    pub keep_stale: bool,
    pub flow: FlowConfig,
    pub time_limit: Duration,
    /// Fail if nothing moves for this long.
    pub stall_limit: Duration,
    /// Watch the commit rule directly (every segment the relay sends, and
    /// what the ends hold, against what the standby holds). Off, only the
    /// end-to-end outcome (bytes, resets, alerts, progress) is judged.
    pub watch_rule: bool,
    /// The mutation: the relay's outbox acknowledges every commit at once,
    /// before the standby holds it (the commit rule broken on purpose).
    pub broken_rule: bool,
    /// After each kill, the backend resends what it had sent as a Linux
    /// backend in retransmission-timeout recovery does when the relay's
    /// SACK blocks tell it nothing (Linux ignores a block that starts at
    /// the cumulative ACK): only the segment at its `snd_una`, the next
    /// one once the cumulative ACK moves, until everything it had sent
    /// before the kill is acknowledged ([`Recovering`]). A relay that
    /// acknowledges nothing until a record is whole then gets one segment
    /// per retransmission timeout.
    pub linux_recovery: bool,
    /// Keep every client-bound byte the client's TCP delivers, in stream
    /// order (`Report::client_stream`): the reference an adopter's records
    /// must match byte for byte.
    pub record_client_stream: bool,
}

impl Params {
    /// Everything drawn from the seed; `bytes` bounds each direction.
    pub fn random(seed: u64, max_bytes: u64, kills: bool) -> Params {
        let mut rng = Rng::new(seed ^ 0x5eed_f10f);
        let suite = rng.pick(&Suite::ALL);
        let server_name = match suite.needs_ecdsa() {
            Some(true) => "ecdsa.test",
            Some(false) => "rsa.test",
            None => rng.pick(&["ecdsa.test", "rsa.test", "localhost"]),
        };
        let min = (max_bytes / 8).max(1);
        let mut up = rng.range(min, max_bytes);
        let mut down = rng.range(min, max_bytes);
        let workload = if rng.chance(0.35) {
            let rounds = rng.range(2, 12);
            up = up / rounds * rounds;
            down = down / rounds * rounds;
            Workload::RequestResponse { rounds }
        } else {
            Workload::Duplex
        };
        let close = match rng.below(3) {
            0 => CloseOrder {
                client_waits: false,
                backend_waits: false,
            },
            1 => CloseOrder {
                client_waits: true,
                backend_waits: false,
            },
            _ => CloseOrder {
                client_waits: false,
                backend_waits: true,
            },
        };
        let max_loss = rng.pick(&[0.0, 0.005, 0.01, 0.02, 0.05]);
        let link = |rng: &mut Rng| LinkParams {
            delay: Duration::from_micros(rng.range(500, 10_000)),
            rate: rng.pick(&[10_000_000, 50_000_000, 200_000_000]),
            loss: max_loss * rng.unit(),
            reorder: rng.pick(&[0.0, 0.01, 0.03, 0.05]),
        };
        let links = [
            link(&mut rng),
            link(&mut rng),
            link(&mut rng),
            link(&mut rng),
        ];
        let lo = rng.range(100, 2000);
        let repl_delay = (
            Duration::from_micros(lo),
            Duration::from_micros(lo + rng.range(0, 3000)),
        );
        let mut kill_list = Vec::new();
        if kills {
            let n = if rng.chance(0.3) { 2 } else { 1 };
            let mut at = 0.0;
            for _ in 0..n {
                if rng.chance(0.15) {
                    kill_list.push(Trigger::Closing);
                    break;
                }
                at += (1.0 - at) * rng.unit() * 0.9;
                kill_list.push(Trigger::Progress(at));
            }
        }
        let flow = FlowConfig {
            max_record: rng.pick(&[16384, 16384, 4096, 1400]),
            max_batch: rng.pick(&[64 * KIB, 64 * KIB, 16 * KIB, 3000]),
            partial_release: rng.pick(&[8 * KIB, 8 * KIB, 1024, 100]),
            ..FlowConfig::default()
        };
        Params {
            seed,
            suite,
            server_name,
            up,
            down,
            workload,
            close,
            links,
            repl_delay,
            kills: kill_list,
            down_time: Duration::from_micros(rng.range(0, 60_000)),
            keep_stale: rng.chance(0.5),
            flow,
            time_limit: Duration::from_secs(600),
            stall_limit: Duration::from_secs(120),
            watch_rule: true,
            broken_rule: false,
            linux_recovery: false,
            record_client_stream: false,
        }
    }
}

// ----------------------------------------------------------------------
// TLS setup (the test PKI of relay-tls).

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tls/tests/data")
        .join(name)
}

pub fn server_config() -> TlsServerConfig {
    TlsServerConfig::builder()
        .certificate_pem_files(
            fixture("ecdsa.pem"),
            fixture("ecdsa.key"),
            &["localhost", "ecdsa.test", "*.wild.test"],
        )
        .unwrap()
        .certificate_pem_files(
            fixture("rsa.pem"),
            fixture("rsa.key"),
            &["localhost", "rsa.test"],
        )
        .unwrap()
        .build()
        .unwrap()
}

pub fn client_config(suite: Suite) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(fixture("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![suite.rustls()];
    let versions: &[&'static rustls::SupportedProtocolVersion] = match suite.version() {
        Version::Tls13 => &[&rustls::version::TLS13],
        Version::Tls12 => &[&rustls::version::TLS12],
    };
    let cfg = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(cfg)
}

fn handshake_time() -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(1_764_547_200))
}

// ----------------------------------------------------------------------
// The ends.

/// One direction's sender bookkeeping.
#[derive(Debug)]
struct Tx {
    seed: u64,
    total: u64,
    sent: u64,
    hash: Sha256,
}

impl Tx {
    fn chunk(&self, max: u64, buf: &mut [u8]) -> usize {
        let n = (max.min(self.total) - self.sent.min(max)).min(buf.len() as u64) as usize;
        fill_pattern(self.seed, self.sent, &mut buf[..n]);
        n
    }
    fn took(&mut self, bytes: &[u8]) {
        self.hash.update(bytes);
        self.sent += bytes.len() as u64;
    }
    fn done(&self) -> bool {
        self.sent == self.total
    }
}

/// One direction's receiver: checks each byte at its offset.
#[derive(Debug)]
struct Rx {
    seed: u64,
    total: u64,
    got: u64,
    hash: Sha256,
    error: Option<String>,
    scratch: Vec<u8>,
}

impl Rx {
    fn new(seed: u64, total: u64) -> Rx {
        Rx {
            seed,
            total,
            got: 0,
            hash: Sha256::new(),
            error: None,
            scratch: Vec::new(),
        }
    }
    fn take(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if self.got + data.len() as u64 > self.total && self.error.is_none() {
            self.error = Some(format!(
                "{} bytes past the end of a {}-byte stream",
                self.got + data.len() as u64 - self.total,
                self.total
            ));
        }
        self.scratch.resize(data.len(), 0);
        fill_pattern(self.seed, self.got, &mut self.scratch);
        if self.scratch[..] != data[..]
            && self.error.is_none()
            && let Some(i) = self.scratch.iter().zip(data).position(|(a, b)| a != b)
        {
            // Where do the wrong bytes come from? (a shifted stream)
            let at = self.got + i as u64;
            let probe = &data[i..(i + 32).min(data.len())];
            let mut buf = vec![0u8; probe.len()];
            let mut found = None;
            for o in at.saturating_sub(1 << 20)..at + (1 << 20) {
                fill_pattern(self.seed, o, &mut buf);
                if buf == probe {
                    found = Some(o);
                    break;
                }
            }
            self.error = Some(format!(
                "wrong byte at offset {at} (chunk of {} from {}); the bytes there belong at {found:?}",
                data.len(),
                self.got
            ));
        }
        self.hash.update(data);
        self.got += data.len() as u64;
    }
}

struct ClientEnd {
    tcp: Connection,
    tls: ClientConnection,
    tls_out: Vec<u8>,
    tx: Tx,
    rx: Rx,
    close_notify_sent: bool,
    fin_sent: bool,
    got_close_notify: bool,
    peer_fin: bool,
    eof_signalled: bool,
    error: Option<String>,
    /// Client-bound stream bytes in order, from offset 0 (`None`: not kept).
    stream: Option<Vec<u8>>,
}

struct BackendEnd {
    listener: Listener,
    tcp: Option<Connection>,
    tx: Tx,
    rx: Rx,
    fin_sent: bool,
    peer_fin: bool,
    error: Option<String>,
}

/// Allowance of each end in a request/response exchange.
fn allowance(w: Workload, is_client: bool, total: u64, received: u64, peer_total: u64) -> u64 {
    match w {
        Workload::Duplex => total,
        Workload::RequestResponse { rounds } => {
            let mine = total / rounds;
            let theirs = (peer_total / rounds).max(1);
            let done = received / theirs;
            if is_client {
                (mine * (done + 1)).min(total)
            } else {
                (mine * done).min(total)
            }
        }
    }
}

impl ClientEnd {
    fn step(&mut self, w: Workload, close_waits: bool) -> bool {
        if self.error.is_some() {
            // rustls must not be driven after it failed.
            return false;
        }
        let mut moved = false;
        while let Some(e) = self.tcp.poll_event() {
            match e {
                Event::Reset => self.fail("client TCP got a reset".into()),
                Event::TimedOut => self.fail("client TCP timed out".into()),
                Event::PeerClosed => {
                    self.peer_fin = true;
                    moved = true;
                }
                _ => {}
            }
        }
        if !self.tcp.state().is_synchronized() && self.tcp.state() != State::Closed {
            // SYN-SENT: queue the ClientHello for later.
            self.pull_tls();
            return moved;
        }
        // Receive.
        loop {
            let (a, _) = self.tcp.readable();
            if a.is_empty() {
                break;
            }
            let mut rd = a;
            let n = match self.tls.read_tls(&mut rd) {
                Ok(n) => n,
                Err(e) => {
                    self.fail(format!("client read_tls: {e}"));
                    return moved;
                }
            };
            if let Some(s) = self.stream.as_mut() {
                s.extend_from_slice(&a[..n]);
            }
            self.tcp.consume(n);
            moved = true;
            if !self.process() || n == 0 {
                break;
            }
        }
        if self.peer_fin && self.tcp.readable().0.is_empty() && !self.eof_signalled {
            self.eof_signalled = true;
            let _ = self.tls.read_tls(&mut &[][..]);
            self.process();
            moved = true;
        }
        // Send.
        let allowed = allowance(w, true, self.tx.total, self.rx.got, self.rx.total);
        let mut chunk = vec![0u8; 16 * KIB];
        while !self.close_notify_sent && self.tls_out.len() < 64 * KIB && self.tx.sent < allowed {
            let n = self.tx.chunk(allowed, &mut chunk);
            let took = match self.tls.writer().write(&chunk[..n]) {
                Ok(t) => t,
                Err(e) => {
                    self.fail(format!("client write: {e}"));
                    return moved;
                }
            };
            if took == 0 {
                break;
            }
            self.tx.took(&chunk[..took]);
            self.pull_tls();
            moved = true;
        }
        let closing_ok = !close_waits || (self.got_close_notify && self.peer_fin);
        if !self.close_notify_sent && self.tx.done() && !self.tls.is_handshaking() && closing_ok {
            self.tls.send_close_notify();
            self.close_notify_sent = true;
            moved = true;
        }
        self.pull_tls();
        if !self.tls_out.is_empty() && self.tcp.state().is_synchronized() {
            let n = self.tcp.send(&self.tls_out);
            if n > 0 {
                self.tls_out.drain(..n);
                moved = true;
            }
        }
        if self.close_notify_sent && self.tls_out.is_empty() && !self.fin_sent {
            self.tcp.close();
            self.fin_sent = true;
            moved = true;
        }
        moved
    }

    fn pull_tls(&mut self) {
        while self.tls.wants_write() {
            if self.tls.write_tls(&mut self.tls_out).is_err() {
                break;
            }
        }
    }

    /// Processes what rustls has read; false on an error.
    fn process(&mut self) -> bool {
        if self.error.is_some() {
            return false;
        }
        // rustls 0.23 can trip its own assertion (a second fatal alert) on
        // some decrypt errors: that is a TLS failure too.
        let tls = &mut self.tls;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tls.process_new_packets().map(|_| ())
        }));
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.fail(format!("client TLS error: {e}"));
                return false;
            }
            Err(_) => {
                self.fail("client TLS error: rustls panicked (bad record)".into());
                return false;
            }
        }
        let mut buf = [0u8; 16 * KIB];
        loop {
            match self.tls.reader().read(&mut buf) {
                Ok(0) => {
                    self.got_close_notify = true;
                    break;
                }
                Ok(n) => self.rx.take(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.fail(format!("client TLS read: {e} (truncated stream?)"));
                    return false;
                }
            }
        }
        true
    }

    fn fail(&mut self, msg: String) {
        if self.error.is_none() {
            self.error = Some(msg);
        }
    }

    fn done(&self) -> bool {
        self.tx.done()
            && self.rx.got == self.rx.total
            && self.got_close_notify
            && self.peer_fin
            && self.fin_sent
            && matches!(self.tcp.state(), State::Closed | State::TimeWait)
    }
}

impl BackendEnd {
    fn step(&mut self, w: Workload, close_waits: bool) -> bool {
        let mut moved = false;
        let Some(tcp) = self.tcp.as_mut() else {
            return false;
        };
        while let Some(e) = tcp.poll_event() {
            match e {
                Event::Reset => {
                    self.error
                        .get_or_insert_with(|| "backend TCP got a reset".into());
                }
                Event::TimedOut => {
                    self.error
                        .get_or_insert_with(|| "backend TCP timed out".into());
                }
                Event::PeerClosed => {
                    self.peer_fin = true;
                    moved = true;
                }
                _ => {}
            }
        }
        if !tcp.state().is_synchronized() {
            return moved;
        }
        loop {
            let (a, b) = tcp.readable();
            let n = a.len() + b.len();
            if n == 0 {
                break;
            }
            self.rx.take(a);
            self.rx.take(b);
            tcp.consume(n);
            moved = true;
        }
        if self.peer_fin && self.rx.got < self.rx.total {
            self.error.get_or_insert_with(|| {
                format!(
                    "backend saw EOF after {} of {} bytes",
                    self.rx.got, self.rx.total
                )
            });
        }
        let allowed = allowance(w, false, self.tx.total, self.rx.got, self.rx.total);
        let mut chunk = vec![0u8; 16 * KIB];
        while !self.fin_sent && self.tx.sent < allowed {
            let room = tcp.send_capacity();
            if room == 0 {
                break;
            }
            let n = self.tx.chunk(allowed, &mut chunk[..room.min(16 * KIB)]);
            let took = tcp.send(&chunk[..n]);
            if took == 0 {
                break;
            }
            self.tx.took(&chunk[..took]);
            moved = true;
        }
        if !self.fin_sent && self.tx.done() && (!close_waits || self.peer_fin) {
            tcp.close();
            self.fin_sent = true;
            moved = true;
        }
        moved
    }

    fn done(&self) -> bool {
        self.tx.done()
            && self.rx.got == self.rx.total
            && self.peer_fin
            && self.fin_sent
            && self
                .tcp
                .as_ref()
                .is_some_and(|c| matches!(c.state(), State::Closed | State::TimeWait))
    }
}

// ----------------------------------------------------------------------
// The replication channel.

struct InTransit {
    at: Instant,
    no: CommitNo,
    bytes: Vec<u8>,
    created: Instant,
}

/// The active relay's outbox: commits travel to the standby, which decodes,
/// stores and acknowledges them; acknowledgements travel back.
pub struct Channel {
    now: Instant,
    delay: (Duration, Duration),
    rng: Rng,
    to_standby: VecDeque<InTransit>,
    to_primary: VecDeque<(Instant, FlowId, CommitNo)>,
    acks: VecDeque<(FlowId, CommitNo)>,
    pub commits: u64,
    pub bytes: u64,
    pub max_size: usize,
    /// The highest commit number made through this channel.
    pub highest: Option<CommitNo>,
    /// The mutation (`Params::broken_rule`): acknowledge at once.
    ack_at_once: bool,
}

impl Channel {
    fn new(delay: (Duration, Duration), seed: u64, ack_at_once: bool) -> Channel {
        Channel {
            now: Instant::from_secs(0),
            delay,
            rng: Rng::new(seed),
            to_standby: VecDeque::new(),
            to_primary: VecDeque::new(),
            acks: VecDeque::new(),
            commits: 0,
            bytes: 0,
            max_size: 0,
            highest: None,
            ack_at_once,
        }
    }

    fn delay(&mut self) -> Duration {
        let (lo, hi) = (
            self.delay.0.as_micros() as u64,
            self.delay.1.as_micros() as u64,
        );
        Duration::from_micros(self.rng.range(lo, hi))
    }

    fn next_time(&self) -> Option<Instant> {
        let a = self.to_standby.front().map(|t| t.at);
        let b = self.to_primary.front().map(|t| t.0);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Outbox for Channel {
    fn commit(&mut self, id: FlowId, no: CommitNo, checkpoint: &FlowCheckpoint) {
        let bytes = checkpoint.to_bytes();
        self.commits += 1;
        self.highest = self.highest.max(Some(no));
        if self.ack_at_once {
            // The broken rule: released before anyone else holds it.
            self.acks.push_back((id, no));
        }
        self.bytes += bytes.len() as u64;
        self.max_size = self.max_size.max(bytes.len());
        // FIFO: never earlier than the previous commit.
        let mut at = self.now + self.delay();
        if let Some(last) = self.to_standby.back() {
            at = at.max(last.at);
        }
        self.to_standby.push_back(InTransit {
            at,
            no,
            bytes,
            created: self.now,
        });
    }

    fn poll_ack(&mut self) -> Option<(FlowId, CommitNo)> {
        self.acks.pop_front()
    }

    fn forget(&mut self, id: FlowId) {
        self.acks.retain(|(f, _)| *f != id);
    }
}

/// What the standby holds: the last commit it stored (and acknowledged).
pub struct Stored {
    pub no: CommitNo,
    pub bytes: Vec<u8>,
    pub ck: FlowCheckpoint,
    /// When the primary made it (bounds how long the primary ran after it).
    pub created: Instant,
}

// ----------------------------------------------------------------------
// The network.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    C2R = 0,
    R2C = 1,
    R2S = 2,
    S2R = 3,
}

impl Link {
    fn addrs(self) -> (SocketAddrV4, SocketAddrV4) {
        match self {
            Link::C2R => (CLIENT, VIP),
            Link::R2C => (VIP, CLIENT),
            Link::R2S => (RELAY_BACK, BACKEND),
            Link::S2R => (BACKEND, RELAY_BACK),
        }
    }
}

struct Packet {
    link: Link,
    bytes: Vec<u8>,
}

fn to_bytes(r: &TcpRepr<'_>, link: Link) -> Vec<u8> {
    let (src, dst) = link.addrs();
    let mut out = vec![0u8; r.buffer_len()];
    let mut packet = TcpPacket::new_unchecked(&mut out[..]);
    r.emit(&mut packet, *src.ip(), *dst.ip());
    out
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub segments: u64,
    pub dropped: u64,
    pub kills: u32,
    pub commits: u64,
    pub commit_bytes: u64,
    pub max_checkpoint: usize,
    pub virtual_time: Duration,
    pub steps: u64,
    /// Encodings of a few checkpoints the standby stored (for decoder tests).
    pub samples: Vec<Vec<u8>>,
    /// Size of each delta (from the previously stored checkpoint) the
    /// standby checked: what the backplane would carry after the first.
    pub delta_sizes: Vec<usize>,
    /// Checkpoints the standby stored that carry `down_partial`.
    pub partial_commits: u64,
    /// Of those, the ones whose delta from the stored checkpoint before
    /// only added to it (same down point, one more segment).
    pub partial_grown: u64,
    /// Adoptions from a checkpoint that carries `down_partial`.
    pub partial_adoptions: u32,
    /// The client-bound stream (`Params::record_client_stream`).
    pub client_stream: Vec<u8>,
    /// Segments a backend in recovery (`Params::linux_recovery`) sent
    /// because the cumulative ACK moved.
    pub recovery_sent: u64,
    /// Data segments of the backend's engine held back in recovery (the
    /// Linux sender would not have sent them).
    pub recovery_held: u64,
    /// For each adoption while the client had more to receive, how long
    /// after it the client got its next new byte (a later adoption before
    /// that replaces it).
    pub gaps: Vec<Duration>,
}

pub struct Sim {
    pub p: Params,
    pub now: Instant,
    start: Instant,
    rng: Rng,
    packets: BTreeMap<(Instant, u64), Packet>,
    order: u64,
    busy: [Instant; 4],
    client: ClientEnd,
    backend: BackendEnd,
    tls: TlsServerConfig,
    relay_secret: IsnSecret,
    /// The active relay's flow (None before the client's SYN, or while down).
    flow: Option<Flow>,
    /// Index of the active relay (0 = A, 1 = B, ...).
    active: usize,
    /// The addresses belong to nobody until then (after a kill).
    adopt_at: Option<Instant>,
    chan: Channel,
    store: Option<Stored>,
    flow_closed: Option<CloseReason>,
    replicated: bool,
    kill_at: Option<Instant>,
    next_kill: usize,
    /// The highest commit number any killed relay made: every commit of
    /// the active relay must sort after it.
    dead_highest: Option<CommitNo>,
    failure: Option<(Check, String)>,
    last_progress: (u64, Instant),
    /// The last adoption and what the client had received by then, until
    /// it receives more.
    gap_from: Option<(Instant, u64)>,
    /// The backend's recovery after a kill (`Params::linux_recovery`).
    recovering: Option<Recovering>,
    pub report: Report,
    log: VecDeque<String>,
}

impl Sim {
    pub fn new(p: Params) -> Sim {
        let mut rng = Rng::new(p.seed);
        let now = Instant::from_secs(1000);
        let mut secret =
            || IsnSecret::new(rng.next_u64().to_le_bytes().repeat(2).try_into().unwrap());
        let client_secret = secret();
        let backend_secret = secret();
        let relay_secret = secret();
        let tcp_cfg = TcpConfig {
            release: ReleaseMode::OnDelivery,
            ..TcpConfig::default()
        };
        let tcp = Connection::connect(
            tcp_cfg.clone(),
            FourTuple::new(CLIENT, VIP),
            &client_secret,
            now,
        )
        .unwrap();
        let tls = ClientConnection::new(
            client_config(p.suite),
            ServerName::try_from(p.server_name.to_owned()).unwrap(),
        )
        .unwrap();
        let up_seed = rng.next_u64();
        let down_seed = rng.next_u64();
        let client = ClientEnd {
            tcp,
            tls,
            tls_out: Vec::new(),
            tx: Tx {
                seed: up_seed,
                total: p.up,
                sent: 0,
                hash: Sha256::new(),
            },
            rx: Rx::new(down_seed, p.down),
            close_notify_sent: false,
            fin_sent: false,
            got_close_notify: false,
            peer_fin: false,
            eof_signalled: false,
            error: None,
            stream: p.record_client_stream.then(Vec::new),
        };
        let backend = BackendEnd {
            listener: Listener::new(tcp_cfg, BACKEND, backend_secret, 16).unwrap(),
            tcp: None,
            tx: Tx {
                seed: down_seed,
                total: p.down,
                sent: 0,
                hash: Sha256::new(),
            },
            rx: Rx::new(up_seed, p.up),
            fin_sent: false,
            peer_fin: false,
            error: None,
        };
        let chan = Channel::new(p.repl_delay, rng.next_u64(), p.broken_rule);
        Sim {
            now,
            start: now,
            rng,
            packets: BTreeMap::new(),
            order: 0,
            busy: [now; 4],
            client,
            backend,
            tls: server_config(),
            relay_secret,
            flow: None,
            active: 0,
            adopt_at: None,
            chan,
            store: None,
            flow_closed: None,
            replicated: false,
            kill_at: None,
            next_kill: 0,
            dead_highest: None,
            failure: None,
            last_progress: (0, now),
            gap_from: None,
            recovering: None,
            report: Report::default(),
            log: VecDeque::new(),
            p,
        }
    }

    fn note(&mut self, s: String) {
        if self.log.len() >= 40 {
            self.log.pop_front();
        }
        self.log
            .push_back(format!("{:?}: {s}", self.now - self.start));
    }

    fn fail(&mut self, msg: String) {
        self.fail_as(Check::Other, msg);
    }

    fn fail_as(&mut self, check: Check, msg: String) {
        if self.failure.is_none() {
            self.failure = Some((check, msg));
        }
    }

    fn failed(&self, check: Check, what: &str) -> Failure {
        Failure {
            check,
            incomplete: self.client.rx.got < self.client.rx.total
                || self.backend.rx.got < self.backend.rx.total,
            diagnostic: self.diagnostic(what),
        }
    }

    /// Runs to the end; `Err` says which check failed, with a diagnostic.
    pub fn run(mut self) -> Result<Report, Failure> {
        while !self.step()? {}
        self.report.virtual_time = self.now - self.start;
        self.report.commits += self.chan.commits;
        self.report.commit_bytes += self.chan.bytes;
        self.report.max_checkpoint = self.report.max_checkpoint.max(self.chan.max_size);
        if let Some(s) = self.client.stream.take() {
            self.report.client_stream = s;
        }
        self.final_checks()?;
        Ok(self.report)
    }

    /// Runs until `stop` holds (checked before every step): `Ok(true)`, or
    /// `Ok(false)` if the transfer ended first. [`run`](Self::run) goes on
    /// from there.
    pub fn run_until(&mut self, mut stop: impl FnMut(&Sim) -> bool) -> Result<bool, Failure> {
        loop {
            if stop(self) {
                return Ok(true);
            }
            if self.step()? {
                return Ok(false);
            }
        }
    }

    /// One instant: everyone acts, the checks run, then the clock moves to
    /// the next event. `Ok(true)` once the transfer is done.
    fn step(&mut self) -> Result<bool, Failure> {
        self.report.steps += 1;
        self.settle();
        self.check_rule();
        self.collect_errors();
        if let Some((check, f)) = self.failure.take() {
            return Err(self.failed(check, &f));
        }
        if self.done() {
            return Ok(true);
        }
        if let Some((at, got)) = self.gap_from
            && self.client.rx.got > got
        {
            self.gap_from = None;
            self.report.gaps.push(self.now - at);
        }
        let progress = self.client.rx.got + self.backend.rx.got;
        if progress != self.last_progress.0 {
            self.last_progress = (progress, self.now);
        }
        if self.now.saturating_duration_since(self.last_progress.1) > self.p.stall_limit {
            return Err(self.failed(Check::Stalled, "no progress (stalled)"));
        }
        let Some(next) = self.next_time() else {
            return Err(self.failed(Check::Stalled, "nothing left to happen (deadlock)"));
        };
        if next > self.start + self.p.time_limit {
            return Err(self.failed(Check::Stalled, "virtual time limit"));
        }
        if self.report.steps > 20_000_000 {
            return Err(self.failed(Check::Stalled, "step limit"));
        }
        self.now = next.max(self.now);
        self.deliver();
        self.replication();
        self.timeouts();
        self.kills();
        Ok(false)
    }

    /// What the standby holds now.
    pub fn stored(&self) -> Option<&Stored> {
        self.store.as_ref()
    }

    /// The backend's connection, once accepted.
    pub fn backend_tcp(&self) -> Option<&Connection> {
        self.backend.tcp.as_ref()
    }

    /// The backend's byte stream (what it sends the client).
    pub fn backend_stream(&self) -> Pattern {
        Pattern(self.backend.tx.seed)
    }

    fn done(&self) -> bool {
        self.client.done() && self.backend.done() && self.flow_closed.is_some()
    }

    fn final_checks(&self) -> Result<(), Failure> {
        let c = &self.client;
        let b = &self.backend;
        if c.tx.hash.clone().finalize() != b.rx.hash.clone().finalize() {
            return Err(self.failed(Check::Other, "client -> backend hash differs"));
        }
        if b.tx.hash.clone().finalize() != c.rx.hash.clone().finalize() {
            return Err(self.failed(Check::Other, "backend -> client hash differs"));
        }
        if self.flow_closed != Some(CloseReason::Normal) {
            return Err(self.failed(Check::Other, "flow did not end Closed(Normal)"));
        }
        // A kill that never fired is fine (the flow ended first); the
        // per-seed line shows how many did.
        Ok(())
    }

    /// The commit rule, watched from the outside at every step: nothing
    /// the client or the backend has had acknowledged, and no record the
    /// client has received, lies past what the standby holds (it would be
    /// lost if the relay died now).
    fn check_rule(&mut self) {
        if !self.p.watch_rule {
            return;
        }
        let Some(s) = &self.store else { return };
        let ck = &s.ck;
        let mut broken = None;
        if self.client.tcp.snd_una() > ck.front.rcv_rel {
            broken = Some(format!(
                "the client had bytes acknowledged up to {:?}, the standby's commit {:?} releases only to {:?}",
                self.client.tcp.snd_una(),
                s.no,
                ck.front.rcv_rel
            ));
        }
        if let Some(b) = &self.backend.tcp
            && b.snd_una() > ck.back.rcv_rel
        {
            broken = Some(format!(
                "the backend had bytes acknowledged up to {:?}, the standby's commit {:?} releases only to {:?}",
                b.snd_una(),
                s.no,
                ck.back.rcv_rel
            ));
        }
        if self.client.tcp.rcv_nxt() > ck.front.snd_max {
            broken = Some(format!(
                "the client received up to {:?}, past the records planned in the standby's commit {:?} ({:?})",
                self.client.tcp.rcv_nxt(),
                s.no,
                ck.front.snd_max
            ));
        }
        if let Some(b) = broken {
            self.fail_as(Check::CommitRule, format!("commit rule broken: {b}"));
        }
    }

    fn collect_errors(&mut self) {
        for e in [
            self.client.error.clone(),
            self.client
                .rx
                .error
                .clone()
                .map(|e| format!("backend -> client: {e}")),
            self.backend.error.clone(),
            self.backend
                .rx
                .error
                .clone()
                .map(|e| format!("client -> backend: {e}")),
        ]
        .into_iter()
        .flatten()
        {
            self.fail(e);
        }
        if let Some(r) = self.flow_closed
            && r != CloseReason::Normal
        {
            self.fail(format!("flow closed: {r:?}"));
        }
    }

    pub fn diagnostic(&self, what: &str) -> String {
        let c = &self.client;
        let b = &self.backend;
        let flow = self.flow.as_ref().map(|f| {
            format!(
                "{f:?} reason {:?} phase {:?} stats {:?} front una {:?} rel {:?} rcv_nxt {:?} back {:?}",
                f.close_reason(),
                f.phase(),
                f.stats(),
                f.front().snd_una(),
                f.front().release_point(),
                f.front().rcv_nxt(),
                f.back().map(|b| (b.state(), b.snd_una(), b.release_point(), b.rcv_nxt())),
            ) + &format!(
                "\n    front stats {:?}\n    back stats {:?}",
                f.front().stats(),
                f.back().map(|b| b.stats())
            )
        });
        format!(
            "seed {} FAILED: {what}\n  at {:?} (virtual), relay #{} (adopt_at {:?}), kills {} of {:?}\n  params: suite {:?} sni {} up {} down {} {:?} {:?} down_time {:?} keep_stale {} repl {:?}\n  links {:?}\n  flow cfg: max_record {} max_batch {} partial_release {}\n  client: tcp {:?} una {:?} rcv_nxt {:?} sent {} recv {}/{} close_notify sent {} got {} peer_fin {} fin_sent {} tls_out {} hs {}\n  backend: tcp {:?} sent {} recv {}/{} peer_fin {} fin_sent {}\n  flow: {:?} closed {:?} replicated {}\n  standby holds commit {:?}\n  log:\n    {}",
            self.p.seed,
            self.now - self.start,
            self.active,
            self.adopt_at,
            self.report.kills,
            self.p.kills,
            self.p.suite,
            self.p.server_name,
            self.p.up,
            self.p.down,
            self.p.workload,
            self.p.close,
            self.p.down_time,
            self.p.keep_stale,
            self.p.repl_delay,
            self.p.links,
            self.p.flow.max_record,
            self.p.flow.max_batch,
            self.p.flow.partial_release,
            c.tcp.state(),
            c.tcp.snd_una(),
            c.tcp.rcv_nxt(),
            c.tx.sent,
            c.rx.got,
            c.rx.total,
            c.close_notify_sent,
            c.got_close_notify,
            c.peer_fin,
            c.fin_sent,
            c.tls_out.len(),
            c.tls.is_handshaking(),
            b.tcp
                .as_ref()
                .map(|t| (t.state(), t.snd_una(), t.rcv_nxt())),
            b.tx.sent,
            b.rx.got,
            b.rx.total,
            b.peer_fin,
            b.fin_sent,
            flow,
            self.flow_closed,
            self.replicated,
            self.store.as_ref().map(|s| s.no),
            self.log.iter().cloned().collect::<Vec<_>>().join("\n    "),
        )
    }

    /// Lets every party act until nothing more happens at this instant.
    fn settle(&mut self) {
        let mut buf = vec![0u8; 65536];
        for _ in 0..64 {
            let mut any = false;
            any |= self.client.step(self.p.workload, self.p.close.client_waits);
            any |= self
                .backend
                .step(self.p.workload, self.p.close.backend_waits);
            any |= self.service_relay(&mut buf);
            any |= self.flush(&mut buf);
            if !any {
                break;
            }
        }
    }

    fn relay_up(&self) -> bool {
        self.adopt_at.is_none()
    }

    fn service_relay(&mut self, buf: &mut [u8]) -> bool {
        if !self.relay_up() {
            return false;
        }
        let now = self.now;
        let mut any = false;
        let mut notes = Vec::new();
        let Some(flow) = self.flow.as_mut() else {
            return false;
        };
        for _ in 0..64 {
            let mut more = false;
            while let Some(e) = flow.poll_event() {
                more = true;
                match e {
                    FlowEvent::HandshakeReady => {
                        if let Some(job) = flow.take_handshake() {
                            let done = job.run(handshake_time());
                            if let Some(e) = done.error() {
                                notes.push(format!("handshake error {e}"));
                            }
                            flow.handshake_done(now, done);
                        }
                    }
                    FlowEvent::NeedBackend(info) => {
                        notes.push(format!(
                            "handshake done: {:?} {:?}",
                            info.version, info.suite
                        ));
                        let meta = FlowMeta {
                            service: 0,
                            backend: BACKEND,
                            server_name: info.server_name.clone(),
                            alpn: info.alpn.clone(),
                            resumed: info.resumed,
                        };
                        if let Err(e) = flow.connect_backend(
                            now,
                            FourTuple::new(RELAY_BACK, BACKEND),
                            &self.relay_secret,
                            meta,
                        ) {
                            self.failure.get_or_insert_with(|| {
                                (Check::Other, format!("connect_backend: {e}"))
                            });
                        }
                    }
                    FlowEvent::Replicated => {
                        self.replicated = true;
                        notes.push("replicated".into());
                    }
                    FlowEvent::Closed(r) => {
                        notes.push(format!("flow closed {r:?}"));
                        self.flow_closed = Some(r);
                    }
                }
            }
            self.chan.now = now;
            while let Some((no, ck)) = flow.poll_commit() {
                more = true;
                // The encoding round-trips exactly.
                let back = FlowCheckpoint::from_bytes(&ck.to_bytes());
                match back {
                    Ok(b) if b == ck => {}
                    Ok(_) => {
                        self.failure.get_or_insert_with(|| {
                            (Check::Other, format!("commit {no} does not round-trip"))
                        });
                    }
                    Err(e) => {
                        let front = relay_tcp::Checkpoint::from_bytes(&ck.front.to_bytes()).err();
                        let back = relay_tcp::Checkpoint::from_bytes(&ck.back.to_bytes()).err();
                        self.failure.get_or_insert_with(|| {
                            (Check::Other, format!(
                                "commit {no} does not decode: {e} (front: {front:?} {:?}; back: {back:?} {:?})",
                                ck.front, ck.back
                            ))
                        });
                    }
                }
                // Named as made: this flow, this commit; after every commit
                // of the relays that died before this one.
                let misnamed = if ck.id != FLOW || flow.id() != FLOW {
                    Some(format!(
                        "commit {no} names flow {} (flow {}), not {FLOW}",
                        ck.id,
                        flow.id()
                    ))
                } else if ck.commit != no {
                    Some(format!(
                        "commit {no} carries the checkpoint of commit {}",
                        ck.commit
                    ))
                } else if let Some(d) = self.dead_highest.filter(|&d| no <= d) {
                    Some(format!(
                        "relay #{}'s commit {no} does not sort after the dead relays' commit {d}",
                        self.active
                    ))
                } else {
                    None
                };
                if let Some(m) = misnamed {
                    self.failure.get_or_insert((Check::Other, m));
                }
                self.chan.commit(flow.id(), no, &ck);
            }
            // The checkpoint failed (the flow logs it and goes on
            // unprotected): nothing could adopt the flow from here, and
            // this outbox never acknowledges the commit.
            if let Some(no) = flow.poll_commit_no() {
                self.failure.get_or_insert_with(|| {
                    (
                        Check::Other,
                        format!("commit {no} came without its checkpoint (the checkpoint failed)"),
                    )
                });
            }
            while let Some((_, no)) = self.chan.poll_ack() {
                more = true;
                flow.handle_commit_ack(now, no);
            }
            while let Some(r) = flow.poll_front_transmit(now, buf) {
                more = true;
                if let Some(e) = rule_on_the_wire(self.store.as_ref(), Link::R2C, &r)
                    && self.p.watch_rule
                {
                    self.failure.get_or_insert((Check::CommitRule, e));
                }
                let bytes = to_bytes(&r, Link::R2C);
                send(
                    &mut self.packets,
                    &mut self.order,
                    &mut self.busy,
                    &mut self.rng,
                    &self.p,
                    &mut self.report,
                    now,
                    Link::R2C,
                    bytes,
                );
            }
            while let Some(r) = flow.poll_back_transmit(now, buf) {
                more = true;
                if let Some(e) = rule_on_the_wire(self.store.as_ref(), Link::R2S, &r)
                    && self.p.watch_rule
                {
                    self.failure.get_or_insert((Check::CommitRule, e));
                }
                let bytes = to_bytes(&r, Link::R2S);
                send(
                    &mut self.packets,
                    &mut self.order,
                    &mut self.busy,
                    &mut self.rng,
                    &self.p,
                    &mut self.report,
                    now,
                    Link::R2S,
                    bytes,
                );
            }
            any |= more;
            if !more {
                break;
            }
        }
        for n in notes {
            self.note(n);
        }
        any
    }

    fn flush(&mut self, buf: &mut [u8]) -> bool {
        let now = self.now;
        let mut any = false;
        while let Some(r) = self.client.tcp.poll_transmit(now, buf) {
            let bytes = to_bytes(&r, Link::C2R);
            any = true;
            self.emit(Link::C2R, bytes);
        }
        loop {
            let out = match self.backend.tcp.as_mut() {
                Some(c) => {
                    let una = c.snd_una();
                    let Some(r) = c.poll_transmit(now, buf) else {
                        break;
                    };
                    match self.recovering.as_mut() {
                        Some(rec) => {
                            let shaped = rec.shape(una, &r);
                            if shaped.is_none_or(|s| s.payload.len() < r.payload.len()) {
                                self.report.recovery_held += 1;
                            }
                            shaped.map(|r| to_bytes(&r, Link::S2R))
                        }
                        None => Some(to_bytes(&r, Link::S2R)),
                    }
                }
                None => match self.backend.listener.poll_transmit(now, buf) {
                    Some((_, r)) => Some(to_bytes(&r, Link::S2R)),
                    None => break,
                },
            };
            any = true;
            if let Some(bytes) = out {
                self.emit(Link::S2R, bytes);
            }
        }
        if let Some(bytes) = self.recovery_segment() {
            self.report.recovery_sent += 1;
            any = true;
            self.emit(Link::S2R, bytes);
        }
        any
    }

    /// The segment a backend in recovery sends once the cumulative ACK
    /// has moved: the next one from its new `snd_una`.
    fn recovery_segment(&mut self) -> Option<Vec<u8>> {
        let c = self.backend.tcp.as_ref()?;
        let rec = self.recovering.as_mut()?;
        let una = c.snd_una();
        if una >= rec.until {
            self.recovering = None;
            return None;
        }
        if rec.sent_at == Some(una) || una >= c.snd_max() {
            return None;
        }
        rec.sent_at = Some(una);
        let off = (una - (c.iss() + 1)) as u32 as u64;
        let sent_end = (c.snd_max() - (c.iss() + 1)) as u32 as u64;
        let data_end = sent_end.min(self.backend.tx.sent);
        let len = (data_end.saturating_sub(off) as usize).min(c.effective_mss());
        // (The FIN only once the engine has sent it: `snd_max` counts it.)
        let fin = sent_end > self.backend.tx.sent && off + len as u64 == self.backend.tx.sent;
        let payload = Pattern(self.backend.tx.seed).bytes(off, len);
        let mut flags = relay_tcp::TcpFlags::ACK;
        if fin {
            flags |= relay_tcp::TcpFlags::FIN;
        }
        let (window_len, timestamp) = rec.last;
        let r = TcpRepr {
            src_port: BACKEND.port(),
            dst_port: RELAY_BACK.port(),
            seq_number: una,
            ack_number: c.rcv_nxt(),
            flags,
            window_len,
            options: relay_tcp::TcpOptions {
                timestamp,
                ..relay_tcp::TcpOptions::default()
            },
            payload: &payload,
        };
        Some(to_bytes(&r, Link::S2R))
    }

    fn emit(&mut self, link: Link, bytes: Vec<u8>) {
        send(
            &mut self.packets,
            &mut self.order,
            &mut self.busy,
            &mut self.rng,
            &self.p,
            &mut self.report,
            self.now,
            link,
            bytes,
        );
    }

    fn next_time(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut add = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        add(self.packets.keys().next().map(|k| k.0));
        add(self.chan.next_time());
        add(self.client.tcp.poll_timeout());
        add(self.backend.tcp.as_ref().and_then(Connection::poll_timeout));
        add(self.backend.listener.poll_timeout());
        if self.relay_up() {
            add(self.flow.as_ref().and_then(Flow::poll_timeout));
        }
        add(self.adopt_at);
        add(self.kill_at);
        t
    }

    fn deliver(&mut self) {
        while let Some(entry) = self.packets.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let pkt = entry.remove();
            let (src, dst) = pkt.link.addrs();
            let packet = match TcpPacket::new_checked(&pkt.bytes[..]) {
                Ok(p) => p,
                Err(e) => {
                    self.fail(format!("bad packet on {:?}: {e}", pkt.link));
                    return;
                }
            };
            let repr = match TcpRepr::parse(&packet, *src.ip(), *dst.ip(), true) {
                Ok(r) => r,
                Err(e) => {
                    self.fail(format!("unparsable segment on {:?}: {e}", pkt.link));
                    return;
                }
            };
            if (self.report.kills > 0 || std::env::var_os("SIM_TRACE_ALL").is_some())
                && std::env::var_os("SIM_TRACE").is_some()
            {
                eprintln!(
                    "TRACE {:?} {:?} {repr} | relay {:?}",
                    self.now - self.start,
                    pkt.link,
                    self.flow
                        .as_ref()
                        .map(|f| (f.front().state(), f.back().map(|b| b.state())))
                );
            }
            if repr.flags.rst() {
                self.fail(format!("RST on {:?}: {repr}", pkt.link));
                return;
            }
            let now = self.now;
            match pkt.link {
                Link::R2C => self.client.tcp.handle_segment(now, &repr),
                Link::R2S => match self.backend.tcp.as_mut() {
                    Some(c) => c.handle_segment(now, &repr),
                    None => {
                        let tuple = FourTuple::incoming(*src.ip(), *dst.ip(), &repr);
                        self.backend.listener.handle_segment(now, tuple, &repr);
                        if let Some((_, conn)) = self.backend.listener.accept() {
                            self.backend.tcp = Some(conn);
                        }
                    }
                },
                Link::C2R => {
                    if !self.relay_up() {
                        continue;
                    }
                    match self.flow.as_mut() {
                        // A stale duplicate for a connection that has closed:
                        // the relay has forgotten it (no reset).
                        Some(f) if stale(f.front(), &repr) => {}
                        Some(f) => f.handle_front(now, &repr),
                        None if self.active == 0 && repr.flags.syn() && !repr.flags.ack() => {
                            let tuple = FourTuple::incoming(*src.ip(), *dst.ip(), &repr);
                            match Flow::accept(
                                FLOW,
                                self.p.flow.clone(),
                                tuple,
                                &repr,
                                &self.relay_secret,
                                &self.tls,
                                now,
                            ) {
                                Ok(f) => self.flow = Some(f),
                                Err(e) => self.fail(format!("Flow::accept: {e}")),
                            }
                        }
                        None => {}
                    }
                }
                Link::S2R => {
                    if !self.relay_up() {
                        continue;
                    }
                    if let Some(f) = self.flow.as_mut()
                        && !f.back().is_some_and(|b| stale(b, &repr))
                    {
                        f.handle_back(now, &repr);
                    }
                }
            }
        }
    }

    fn replication(&mut self) {
        let now = self.now;
        while self.chan.to_standby.front().is_some_and(|t| t.at <= now) {
            let Some(t) = self.chan.to_standby.pop_front() else {
                break;
            };
            let ck = match FlowCheckpoint::from_bytes(&t.bytes) {
                Ok(ck) => ck,
                Err(e) => {
                    self.fail(format!("standby cannot decode commit {}: {e}", t.no));
                    return;
                }
            };
            if ck.commit != t.no {
                self.fail(format!(
                    "commit {} carries the checkpoint of commit {}",
                    t.no, ck.commit
                ));
                return;
            }
            if let Some(s) = &self.store
                && s.no >= t.no
            {
                self.fail(format!("commit {} stored after {}", t.no, s.no));
                return;
            }
            // The delta from the last stored checkpoint must rebuild this one.
            if let Some(s) = &self.store
                && s.ck.id == ck.id
                && let Some(delta) = relay_flow::encode_delta(&ck, &s.ck)
            {
                // Named by its base's commit: it applies to nothing else.
                match relay_flow::apply_delta(&ck, &delta) {
                    Err(FlowError::DeltaBase { base, held }) if base == s.no && held == t.no => {}
                    other => {
                        let other = other.map(|c| c.commit);
                        self.fail(format!(
                            "delta from commit {} applied to commit {}: {other:?}, not a DeltaBase error naming both",
                            s.no, t.no
                        ));
                        return;
                    }
                }
                match relay_flow::apply_delta(&s.ck, &delta) {
                    Ok(rebuilt) if rebuilt == ck => {
                        self.report.delta_sizes.push(delta.len());
                        if ck.down_partial.len() > s.ck.down_partial.len()
                            && !s.ck.down_partial.is_empty()
                            && ck.down_plain_off == s.ck.down_plain_off
                            && ck.down_partial.starts_with(&s.ck.down_partial)
                        {
                            self.report.partial_grown += 1;
                        }
                    }
                    Ok(_) => {
                        self.fail(format!(
                            "delta for commit {} rebuilds another checkpoint",
                            t.no
                        ));
                        return;
                    }
                    Err(e) => {
                        self.fail(format!("delta for commit {} does not apply: {e}", t.no));
                        return;
                    }
                }
            }
            if !ck.down_partial.is_empty() {
                self.report.partial_commits += 1;
            }
            if let Err(e) = check_down_partial(&ck, Pattern(self.backend.tx.seed)) {
                self.fail(format!("commit {}: {e}", t.no));
                return;
            }
            if self.report.samples.len() < 64
                && (t.no.n % 7 == 1 || !ck.batches.is_empty() || !ck.partial.is_empty())
            {
                self.report.samples.push(t.bytes.clone());
            }
            let ck_id = ck.id;
            self.store = Some(Stored {
                no: t.no,
                bytes: t.bytes,
                ck,
                created: t.created,
            });
            let d = self.chan.delay();
            let mut at = now + d;
            if let Some(last) = self.chan.to_primary.back() {
                at = at.max(last.0);
            }
            self.chan.to_primary.push_back((at, ck_id, t.no));
        }
        while self.chan.to_primary.front().is_some_and(|t| t.0 <= now) {
            let Some((_, id, no)) = self.chan.to_primary.pop_front() else {
                break;
            };
            self.chan.acks.push_back((id, no));
        }
    }

    fn timeouts(&mut self) {
        let now = self.now;
        if self.client.tcp.poll_timeout().is_some_and(|t| t <= now) {
            self.client.tcp.handle_timeout(now);
        }
        if let Some(c) = self.backend.tcp.as_mut()
            && c.poll_timeout().is_some_and(|t| t <= now)
        {
            c.handle_timeout(now);
        }
        if self
            .backend
            .listener
            .poll_timeout()
            .is_some_and(|t| t <= now)
        {
            self.backend.listener.handle_timeout(now);
        }
        if self.relay_up()
            && let Some(f) = self.flow.as_mut()
            && f.poll_timeout().is_some_and(|t| t <= now)
        {
            f.handle_timeout(now);
        }
    }

    fn kills(&mut self) {
        let now = self.now;
        // Adoption after the down time.
        if self.adopt_at.is_some_and(|t| t <= now) {
            self.adopt_at = None;
            let Some(s) = self.store.take() else {
                self.fail("standby holds nothing to adopt".into());
                return;
            };
            // The standby decodes what it stored, as a real one would.
            let ck = match FlowCheckpoint::from_bytes(&s.bytes) {
                Ok(ck) => ck,
                Err(e) => {
                    self.fail(format!("adopt: stored checkpoint does not decode: {e}"));
                    return;
                }
            };
            let elapsed = now.saturating_duration_since(s.created);
            match Flow::adopt(self.p.flow.clone(), &ck, now, elapsed) {
                Ok(f) => {
                    self.flow = Some(f);
                    self.active += 1;
                    if !ck.down_partial.is_empty() {
                        self.report.partial_adoptions += 1;
                    }
                    self.gap_from = (self.client.rx.got < self.client.rx.total)
                        .then_some((now, self.client.rx.got));
                    let (back_una, back_max) = (
                        ck.back.snd_una - (ck.back.iss + 1),
                        ck.back.snd_max - (ck.back.iss + 1),
                    );
                    self.note(format!(
                        "relay #{} adopted from commit {:?} (batches {}, partial {}, down_partial {}): up client {} plain {} (back una {back_una} max {back_max}, backend has {}), down client {} plain {}, front {} back {}",
                        self.active,
                        s.no,
                        ck.batches.len(),
                        ck.partial.len(),
                        ck.down_partial.len(),
                        ck.up_client_off,
                        ck.up_plain_off,
                        self.backend.rx.got,
                        ck.down_client_off,
                        ck.down_plain_off,
                        ck.front.state,
                        ck.back.state,
                    ));
                }
                Err(e) => self.fail(format!("Flow::adopt: {e}")),
            }
            return;
        }
        // Is the next kill due?
        let Some(&trigger) = self.p.kills.get(self.next_kill) else {
            return;
        };
        if self.flow_closed.is_some() || self.flow.is_none() || !self.relay_up() {
            // Nothing left to kill: a kill still due would stop the clock.
            if self.flow_closed.is_some() {
                self.kill_at = None;
            }
            return;
        }
        if let Some(at) = self.kill_at {
            if at > now {
                return;
            }
            if self.store.is_none() {
                // Nothing replicated to the standby yet: wait for it.
                return;
            }
            self.kill_at = None;
            self.next_kill += 1;
            self.report.kills += 1;
            self.flow = None;
            self.report.commits += self.chan.commits;
            self.report.commit_bytes += self.chan.bytes;
            self.report.max_checkpoint = self.report.max_checkpoint.max(self.chan.max_size);
            self.dead_highest = self.dead_highest.max(self.chan.highest);
            let seed = self.rng.next_u64();
            self.chan = Channel::new(self.p.repl_delay, seed, self.p.broken_rule);
            if !self.p.keep_stale {
                self.packets
                    .retain(|_, p| !matches!(p.link, Link::R2C | Link::R2S));
            }
            self.adopt_at = Some(now + self.p.down_time);
            if self.p.linux_recovery
                && let Some(c) = &self.backend.tcp
            {
                self.recovering = Some(Recovering {
                    until: c.snd_max(),
                    // The engine's own timeout resends the first one.
                    sent_at: Some(c.snd_una()),
                    ack_sent: c.rcv_nxt(),
                    last: (u16::MAX, None),
                });
            }
            let held = self.store.as_ref().map(|s| s.no);
            self.note(format!(
                "relay #{} killed; standby holds {held:?}",
                self.active
            ));
            return;
        }
        let fire = match trigger {
            Trigger::Progress(f) => {
                let got = (self.client.rx.got + self.backend.rx.got) as f64;
                got >= f * (self.p.up + self.p.down) as f64
            }
            Trigger::Closing => self
                .flow
                .as_ref()
                .is_some_and(|f| f.phase() == Phase::Closing),
            Trigger::Replaying => {
                self.active > 0
                    && self
                        .store
                        .as_ref()
                        .is_some_and(|s| !s.ck.down_partial.is_empty())
            }
        };
        if fire && self.store.is_some() {
            // While an adopter replays, what it carries changes with each
            // backend segment: kill before it has moved on.
            let most = if matches!(trigger, Trigger::Replaying) {
                2_000
            } else {
                20_000
            };
            let jitter = Duration::from_micros(self.rng.below(most));
            self.kill_at = Some(now + jitter);
        }
    }
}

/// A backend in retransmission-timeout recovery, as Linux is when SACK
/// does not help it: of everything it had sent before the kill, only the
/// segment at its `snd_una` goes out, the next once the cumulative ACK
/// moves. The engine is left as it is (it believes it sent the rest,
/// which is then lost); its data segments past `snd_una` are dropped here
/// and [`Sim::recovery_segment`] sends the one the ACK asks for.
struct Recovering {
    /// Recovery ends once the backend has this acknowledged (all it had
    /// sent at the kill).
    until: relay_tcp::SeqNumber,
    /// The `snd_una` the last segment was sent for.
    sent_at: Option<relay_tcp::SeqNumber>,
    /// The highest ACK (of the client's bytes) passed on to the relay.
    ack_sent: relay_tcp::SeqNumber,
    /// Window and timestamps of the engine's last segment.
    last: (u16, Option<relay_tcp::TcpTimestamp>),
}

impl Recovering {
    /// What goes out of a segment the engine sent: all of it if it is the
    /// one at `snd_una` (a timeout resends it) or carries no data; else
    /// only its ACK, if that is news (the relay must still learn what the
    /// backend got from the client).
    fn shape<'a>(&mut self, una: relay_tcp::SeqNumber, r: &TcpRepr<'a>) -> Option<TcpRepr<'a>> {
        self.last = (r.window_len, r.options.timestamp);
        let ack_news = r.flags.ack() && r.ack_number > self.ack_sent;
        if ack_news {
            self.ack_sent = r.ack_number;
        }
        if r.payload.is_empty() && !r.flags.fin() {
            return Some(*r);
        }
        if r.seq_number == una {
            self.sent_at = Some(una);
            return Some(*r);
        }
        ack_news.then(|| TcpRepr {
            seq_number: r.seq_number + r.segment_len(),
            flags: relay_tcp::TcpFlags::ACK,
            payload: &[],
            ..*r
        })
    }
}

/// What a checkpoint says it acknowledged to the backend early is the
/// backend's stream at its down point, and exactly what the back engine's
/// release point covers past the down point (an adopter reads it before
/// the bytes the backend resends from that release point).
pub fn check_down_partial(ck: &FlowCheckpoint, backend: Pattern) -> Result<(), String> {
    let fin = u32::from(matches!(
        ck.back.state,
        State::CloseWait | State::Closing | State::LastAck | State::TimeWait
    ));
    let end = ck.down_plain_off + ck.down_partial.len() as u64;
    let rel = relay_tcp::SeqNumber((ck.back.irs.0).wrapping_add(1 + end as u32 + fin));
    if ck.back.rcv_rel != rel {
        return Err(format!(
            "the back release point {:?} is not the down point {} plus {} bytes held{} ({rel:?})",
            ck.back.rcv_rel,
            ck.down_plain_off,
            ck.down_partial.len(),
            if fin == 1 { " plus the FIN" } else { "" }
        ));
    }
    let want = backend.bytes(ck.down_plain_off, ck.down_partial.len());
    if let Some(i) = (0..want.len()).find(|&i| want[i] != ck.down_partial[i]) {
        return Err(format!(
            "down_partial differs from the backend's bytes at offset {}",
            ck.down_plain_off + i as u64
        ));
    }
    Ok(())
}

/// The commit rule on a segment the relay sends: its ACK releases nothing,
/// and it carries no record, past what the standby holds right now.
fn rule_on_the_wire(store: Option<&Stored>, link: Link, r: &TcpRepr<'_>) -> Option<String> {
    let s = store?;
    let (rel, what) = match link {
        Link::R2C => (s.ck.front.rcv_rel, "client"),
        _ => (s.ck.back.rcv_rel, "backend"),
    };
    if r.flags.ack() && r.ack_number > rel {
        return Some(format!(
            "commit rule broken: the relay acknowledged the {what} up to {:?}, the standby's commit {:?} releases only to {rel:?}",
            r.ack_number, s.no
        ));
    }
    let end = r.seq_number + r.segment_len();
    if link == Link::R2C && r.segment_len() > 0 && end > s.ck.front.snd_max {
        return Some(format!(
            "commit rule broken: the relay sent the client bytes up to {end:?}, past the records planned in the standby's commit {:?} ({:?})",
            s.no, s.ck.front.snd_max
        ));
    }
    None
}

/// A segment for a closed engine that carries nothing it has not had
/// (a duplicate delayed in the network).
fn stale(c: &Connection, seg: &TcpRepr<'_>) -> bool {
    c.state() == State::Closed && seg.seq_number + seg.segment_len() <= c.rcv_nxt()
}

#[allow(clippy::too_many_arguments)]
fn send(
    packets: &mut BTreeMap<(Instant, u64), Packet>,
    order: &mut u64,
    busy: &mut [Instant; 4],
    rng: &mut Rng,
    p: &Params,
    report: &mut Report,
    now: Instant,
    link: Link,
    bytes: Vec<u8>,
) {
    report.segments += 1;
    let lp = p.links[link as usize];
    let start = busy[link as usize].max(now);
    let queued = start.saturating_duration_since(now).as_secs_f64() * lp.rate as f64;
    if queued > 1024.0 * 1024.0 {
        report.dropped += 1;
        return;
    }
    let tx = Duration::from_secs_f64(bytes.len() as f64 / lp.rate as f64);
    busy[link as usize] = start + tx;
    if rng.chance(lp.loss) {
        report.dropped += 1;
        return;
    }
    let mut at = start + tx + lp.delay;
    if rng.chance(lp.reorder) {
        at += Duration::from_micros(rng.below(2 * lp.delay.as_micros() as u64 + 1));
    }
    *order += 1;
    packets.insert((at, *order), Packet { link, bytes });
}

/// Runs one seed and prints a line about it.
pub fn run_seed(p: Params) -> Result<Report, Failure> {
    let label = format!(
        "seed {} {:?} up {} down {} {:?} kills {:?}",
        p.seed, p.suite, p.up, p.down, p.workload, p.kills
    );
    let started = std::time::Instant::now();
    let r = Sim::new(p).run();
    match &r {
        Ok(rep) => eprintln!(
            "{label}: ok, {} kills ({} from a down_partial), {} segments ({} dropped), {} commits (max {} B, {} with a down_partial), virtual {:?}, wall {:?}",
            rep.kills,
            rep.partial_adoptions,
            rep.segments,
            rep.dropped,
            rep.commits,
            rep.max_checkpoint,
            rep.partial_commits,
            rep.virtual_time,
            started.elapsed()
        ),
        Err(f) => eprintln!(
            "{label}: FAILED ({:?}), wall {:?}",
            f.check,
            started.elapsed()
        ),
    }
    r
}

// ----------------------------------------------------------------------
// Driving a flow by hand (outside `Sim`), for tests that script what its
// peers send segment by segment.

/// A segment a flow sent, owned.
#[derive(Clone, Debug)]
pub struct Sent {
    pub seq: relay_tcp::SeqNumber,
    /// The ACK field, when the ACK flag is set.
    pub ack: Option<relay_tcp::SeqNumber>,
    pub payload: Vec<u8>,
}

impl Sent {
    fn of(r: &TcpRepr<'_>) -> Sent {
        Sent {
            seq: r.seq_number,
            ack: r.flags.ack().then_some(r.ack_number),
            payload: r.payload.to_vec(),
        }
    }
}

/// A standby that stores each commit as the simulation's does (encoded,
/// decoded, the delta from the previous one checked), and acknowledges
/// only when told: a test sees what the flow does before and after.
#[derive(Default)]
pub struct Standby {
    /// Every checkpoint stored, in commit order.
    pub stored: Vec<FlowCheckpoint>,
    unacked: VecDeque<(FlowId, CommitNo)>,
    acks: VecDeque<(FlowId, CommitNo)>,
    /// Acknowledge each commit as soon as it is stored.
    pub ack_at_once: bool,
    /// The backend's stream, to check what checkpoints carry of it
    /// ([`check_down_partial`]).
    pub backend: Option<Pattern>,
}

impl Standby {
    /// The last checkpoint stored.
    pub fn last(&self) -> Option<&FlowCheckpoint> {
        self.stored.last()
    }

    /// Acknowledges every commit stored so far.
    pub fn acknowledge(&mut self) {
        self.acks.append(&mut self.unacked);
    }

    /// Commits stored and not acknowledged yet.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }
}

impl Outbox for Standby {
    fn commit(&mut self, id: FlowId, no: CommitNo, checkpoint: &FlowCheckpoint) {
        let ck = FlowCheckpoint::from_bytes(&checkpoint.to_bytes())
            .unwrap_or_else(|e| panic!("commit {no} does not decode: {e}"));
        assert_eq!(&ck, checkpoint, "commit {no} does not round-trip");
        assert_eq!(
            ck.commit, no,
            "commit {no} carries another commit's checkpoint"
        );
        if let Some(prev) = self.stored.last() {
            assert!(prev.commit < no, "commit {no} after {}", prev.commit);
            if let Some(delta) = relay_flow::encode_delta(&ck, prev) {
                match relay_flow::apply_delta(prev, &delta) {
                    Ok(rebuilt) => {
                        assert_eq!(rebuilt, ck, "the delta to commit {no} rebuilds another")
                    }
                    Err(e) => panic!("the delta to commit {no} does not apply: {e}"),
                }
            }
        }
        if let Some(b) = self.backend
            && let Err(e) = check_down_partial(&ck, b)
        {
            panic!("commit {no}: {e}");
        }
        self.stored.push(ck);
        self.unacked.push_back((id, no));
        if self.ack_at_once {
            self.acknowledge();
        }
    }

    fn poll_ack(&mut self) -> Option<(FlowId, CommitNo)> {
        self.acks.pop_front()
    }

    fn forget(&mut self, id: FlowId) {
        self.acks.retain(|(f, _)| *f != id);
        self.unacked.retain(|(f, _)| *f != id);
    }
}

/// A flow run by hand: what it sent each way, and its standby.
pub struct Hand {
    pub flow: Flow,
    pub standby: Standby,
    pub front_out: Vec<Sent>,
    pub back_out: Vec<Sent>,
}

impl Hand {
    pub fn new(flow: Flow, backend: Pattern) -> Hand {
        Hand {
            flow,
            standby: Standby {
                backend: Some(backend),
                ..Standby::default()
            },
            front_out: Vec::new(),
            back_out: Vec::new(),
        }
    }

    /// The calling order of `Flow`, until nothing more happens at `now`:
    /// events, commits into the standby, its acknowledgements, then the
    /// segments both ways. Returns whether anything happened.
    pub fn pump(&mut self, now: Instant) -> bool {
        let mut buf = vec![0u8; 65536];
        let mut any = false;
        loop {
            let mut more = false;
            while let Some(e) = self.flow.poll_event() {
                more = true;
                if let FlowEvent::Closed(r) = e {
                    assert_eq!(r, CloseReason::Normal, "the flow closed: {r:?}");
                }
            }
            while let Some((no, ck)) = self.flow.poll_commit() {
                more = true;
                self.standby.commit(self.flow.id(), no, &ck);
            }
            if let Some(no) = self.flow.poll_commit_no() {
                panic!("commit {no} came without its checkpoint: the flow is no longer adoptable");
            }
            while let Some((_, no)) = self.standby.poll_ack() {
                more = true;
                self.flow.handle_commit_ack(now, no);
            }
            while let Some(r) = self.flow.poll_front_transmit(now, &mut buf) {
                more = true;
                self.front_out.push(Sent::of(&r));
            }
            while let Some(r) = self.flow.poll_back_transmit(now, &mut buf) {
                more = true;
                self.back_out.push(Sent::of(&r));
            }
            any |= more;
            if !more {
                return any;
            }
        }
    }
}

/// A bare segment from a peer: ACK (and PSH with data), no options (a
/// connection that negotiated timestamps accepts segments without).
pub fn peer_segment(
    from: SocketAddrV4,
    to: SocketAddrV4,
    seq: relay_tcp::SeqNumber,
    ack: relay_tcp::SeqNumber,
    payload: &[u8],
) -> TcpRepr<'_> {
    let mut flags = relay_tcp::TcpFlags::ACK;
    if !payload.is_empty() {
        flags |= relay_tcp::TcpFlags::PSH;
    }
    TcpRepr {
        src_port: from.port(),
        dst_port: to.port(),
        seq_number: seq,
        ack_number: ack,
        flags,
        window_len: u16::MAX,
        options: relay_tcp::TcpOptions::default(),
        payload,
    }
}
