//! The control socket: JSON lines over a Unix stream socket.
//!
//! The CLI writes one request a line, the relay answers each with one line:
//!
//! ```text
//! -> {"cmd":"status"}
//! <- {"ok":true,"status":{"version":"0.1.0","uptime_secs":12,...}}
//! -> {"cmd":"flows"}
//! <- {"ok":true,"flows":[{"id":1,"client":"10.200.1.2:51234",...}]}
//! -> {"cmd":"peers"}
//! <- {"ok":true,"cluster":{"clustered":true,"relay":"relay-a","relay_id":1,"peers":[...]}}
//! -> {"cmd":"drain"}
//! <- {"ok":true,"message":"draining: 12 flows left, no new flows"}
//! -> {"cmd":"reload"}
//! <- {"ok":true,"reload":{"certificates":2,"backends":3,"message":"..."}}
//! -> {"cmd":"frobnicate"}
//! <- {"ok":false,"error":"invalid request: unknown variant `frobnicate`, ..."}
//! ```
//!
//! A bad line (invalid JSON, unknown command, longer than
//! [`MAX_REQUEST_LINE`]) gets an `"ok":false` reply and the connection
//! carries on. Replies ignore fields they do not know, so that a CLI reads a
//! newer relay's status.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use std::{fmt, net::SocketAddr};

use serde::{Deserialize, Serialize};

use crate::Error;

/// Longest request line the server reads (without its newline).
pub const MAX_REQUEST_LINE: usize = 64 * 1024;
/// Longest reply line the client reads: a flow list of a full relay
/// (100 000 flows at ~250 bytes) fits with room to spare.
pub const MAX_REPLY_LINE: usize = 256 * 1024 * 1024;
/// Client connections served at once; more are answered with an error and
/// closed.
pub const MAX_CONNECTIONS: usize = 64;
/// A client connection that sends nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a write to a client may block (a client that does not read).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`ControlClient`] waits for a reply unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A request from the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// Counters, state and backends: [`StatusReply`].
    Status,
    /// One [`FlowLine`] per flow.
    Flows,
    /// The relay pair: [`PeersReply`].
    Peers,
    /// Accept no new flows; let the current ones finish.
    Drain,
    /// Re-read the configuration file: certificates and backends.
    Reload,
    /// Move every flow and address to the peer relay.
    Handoff,
    /// Serve every address, with the peer's flows.
    Takeover,
}

impl Request {
    /// The command's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Flows => "flows",
            Request::Peers => "peers",
            Request::Drain => "drain",
            Request::Reload => "reload",
            Request::Handoff => "handoff",
            Request::Takeover => "takeover",
        }
    }
}

/// Whether the relay takes new flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayState {
    /// Takes new flows.
    Running,
    /// Refuses new flows; the current ones run to their end.
    Draining,
}

impl fmt::Display for RelayState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RelayState::Running => "running",
            RelayState::Draining => "draining",
        })
    }
}

/// The answer to `status`. Counters count since the relay started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The relay's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Seconds since the relay started.
    pub uptime_secs: u64,
    /// Running or draining.
    pub state: RelayState,
    /// Flows open now.
    pub flows_active: u64,
    /// `limits.max_flows`.
    pub flows_limit: u64,
    /// Flows opened since start.
    pub flows_opened: u64,
    /// Full TLS handshakes completed.
    pub handshakes_full: u64,
    /// Resumed TLS handshakes completed.
    pub handshakes_resumed: u64,
    /// Handshakes that failed (alert, timeout, bad ClientHello).
    pub handshakes_failed: u64,
    /// Plaintext bytes relayed client -> backend.
    pub bytes_up: u64,
    /// Plaintext bytes relayed backend -> client.
    pub bytes_down: u64,
    /// Worker threads (one per rx queue).
    pub workers: u32,
    /// Every backend of every service.
    pub backends: Vec<BackendLine>,
    /// How the steer program is attached: "driver", "skb", or "none".
    pub xdp_mode: String,
}

/// One backend in [`StatusReply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendLine {
    /// The service it belongs to.
    pub service: String,
    /// Its address.
    pub addr: SocketAddr,
    /// "up" or "down" (`relay_control::backends::Health::name`).
    pub health: String,
    /// Flows relayed to it now.
    pub active_flows: u64,
}

/// One flow in the answer to `flows`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowLine {
    /// The relay's id of the flow.
    pub id: u64,
    /// The client's address and port.
    pub client: SocketAddr,
    /// The backend, once chosen (`null` during the handshake).
    pub backend: Option<SocketAddr>,
    /// The flow's state, e.g. "handshake", "established", "closing".
    pub state: String,
    /// Plaintext bytes client -> backend.
    pub bytes_up: u64,
    /// Plaintext bytes backend -> client.
    pub bytes_down: u64,
    /// Seconds since the client's SYN.
    pub age_secs: u64,
    /// Version and cipher suite, e.g. "TLS1.3 AES_128_GCM_SHA256" (empty
    /// during the handshake).
    pub tls: String,
}

/// The answer to `peers`: this relay's place in its cluster and one
/// [`PeerLine`] per configured peer (none for a relay without `[cluster]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeersReply {
    /// Whether the relay has a `[cluster]` section. Without one the peer
    /// list is empty and every commit is local.
    pub clustered: bool,
    /// This relay's `name`.
    pub relay: String,
    /// This relay's `cluster.relay_id` (`null` without `[cluster]`).
    #[serde(default)]
    pub relay_id: Option<u16>,
    /// The configured peers, in configuration order.
    pub peers: Vec<PeerLine>,
}

/// One peer in [`PeersReply`]: how the backplane to it stands, what we
/// hold for it, and how our flows are protected by it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerLine {
    /// Its `name` (its certificate carries it).
    pub name: String,
    /// Its `relay_id`.
    pub relay_id: u16,
    /// Its configured backplane address.
    pub address: SocketAddr,
    /// Membership: "connecting", "up", "suspect" or "down".
    pub state: String,
    /// Whether a backplane connection to it is live.
    pub connected: bool,
    /// Smoothed heartbeat round-trip time in microseconds, while connected
    /// and once measured.
    #[serde(default)]
    pub rtt_us: Option<u64>,
    /// Seconds the live connection has lasted (`null` when none is live).
    #[serde(default)]
    pub connected_secs: Option<u64>,
    /// Connections established to it since start (more than one: it
    /// reconnected).
    pub connections: u64,
    /// Backplane bytes sent to it (plaintext, every connection).
    pub bytes_sent: u64,
    /// Backplane bytes received from it.
    pub bytes_received: u64,
    /// Its flows we hold in standby (what a failover would adopt).
    pub flows_held: u64,
    /// Checkpoint bytes of those flows.
    pub standby_bytes: u64,
    /// Our flows whose latest commit it holds or will (in flight).
    pub flows_protected: u64,
    /// Our flows whose latest state it lacks (re-seeding, or committed
    /// locally while it was unreachable or too slow).
    pub flows_unprotected: u64,
    /// Replication bytes sent or queued for it and not yet acknowledged.
    pub backlog_bytes: u64,
    /// Replication messages sent or queued for it and not yet acknowledged.
    pub backlog_messages: u64,
    /// Our workers' replication to it: "protected", "reseeding",
    /// "unprotected_peer_down" or "unprotected_queue_full" (the worst
    /// worker's); `null` if no worker replicates to it.
    #[serde(default)]
    pub protection: Option<String>,
}

/// The answer to `reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReply {
    /// Certificates loaded, over all services.
    pub certificates: u64,
    /// Backends configured, over all services.
    pub backends: u64,
    /// What changed, for the operator.
    pub message: String,
}

/// A reply: `{"ok":true, <one payload>}` or `{"ok":false,"error":...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WireResponse", into = "WireResponse")]
pub enum Response {
    /// `{"ok":true,"status":{...}}`
    Status(StatusReply),
    /// `{"ok":true,"flows":[...]}`
    Flows(Vec<FlowLine>),
    /// `{"ok":true,"cluster":{...}}` (the answer to `peers`).
    Peers(PeersReply),
    /// `{"ok":true,"message":"..."}` (the answer to `drain`).
    Message(String),
    /// `{"ok":true,"reload":{...}}`
    Reload(ReloadReply),
    /// `{"ok":false,"error":"..."}`
    Error(String),
}

/// The reply as it is on the wire; [`Response`] is what it may hold.
#[derive(Debug, Default, Serialize, Deserialize)]
struct WireResponse {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<StatusReply>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    flows: Option<Vec<FlowLine>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster: Option<PeersReply>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reload: Option<ReloadReply>,
}

impl From<Response> for WireResponse {
    fn from(r: Response) -> Self {
        let ok = WireResponse {
            ok: true,
            ..WireResponse::default()
        };
        match r {
            Response::Status(s) => WireResponse {
                status: Some(s),
                ..ok
            },
            Response::Flows(f) => WireResponse {
                flows: Some(f),
                ..ok
            },
            Response::Peers(p) => WireResponse {
                cluster: Some(p),
                ..ok
            },
            Response::Message(m) => WireResponse {
                message: Some(m),
                ..ok
            },
            Response::Reload(r) => WireResponse {
                reload: Some(r),
                ..ok
            },
            Response::Error(e) => WireResponse {
                error: Some(e),
                ..WireResponse::default()
            },
        }
    }
}

impl TryFrom<WireResponse> for Response {
    type Error = String;

    fn try_from(w: WireResponse) -> Result<Self, String> {
        match w {
            WireResponse {
                ok: false,
                error: Some(e),
                ..
            } => Ok(Response::Error(e)),
            WireResponse { ok: false, .. } => Err("\"ok\":false without \"error\"".into()),
            WireResponse {
                ok: true,
                error: None,
                status,
                flows,
                cluster,
                message,
                reload,
            } => match (status, flows, cluster, message, reload) {
                (Some(s), None, None, None, None) => Ok(Response::Status(s)),
                (None, Some(f), None, None, None) => Ok(Response::Flows(f)),
                (None, None, Some(p), None, None) => Ok(Response::Peers(p)),
                (None, None, None, Some(m), None) => Ok(Response::Message(m)),
                (None, None, None, None, Some(r)) => Ok(Response::Reload(r)),
                _ => Err(
                    "\"ok\":true needs exactly one of \"status\", \"flows\", \"cluster\", \"message\", \"reload\""
                        .into(),
                ),
            },
            WireResponse { ok: true, .. } => Err("\"ok\":true with an \"error\"".into()),
        }
    }
}

impl Response {
    /// One line of JSON, without the newline.
    pub fn to_line(&self) -> String {
        // A `Response` is strings, numbers and addresses: serializing it
        // cannot fail; should it ever, the client still gets a valid line.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(
                "{{\"ok\":false,\"error\":{}}}",
                serde_json::Value::String(format!("internal error: {e}"))
            )
        })
    }
}

/// What the relay does for each request. Called on the control threads,
/// concurrently when several clients are connected.
pub trait ControlHandler {
    /// The relay's state and counters.
    fn status(&self) -> StatusReply;
    /// The open flows.
    fn flows(&self) -> Vec<FlowLine>;
    /// The relay pair; `Err` says why it cannot be told now (the
    /// backplane is still starting).
    fn peers(&self) -> Result<PeersReply, String>;
    /// Stops taking new flows; `Ok` says what happens next, `Err` why not.
    fn drain(&self) -> Result<String, String>;
    /// Re-reads the configuration; `Err` names what is wrong (the relay
    /// keeps the configuration it has).
    fn reload(&self) -> Result<ReloadReply, String>;
    /// Moves every flow and address to the peer; `Ok` says what moved.
    fn handoff(&self) -> Result<String, String> {
        Err("this relay has no peer".into())
    }
    /// Serves every address with the peer's flows; `Ok` says what moved.
    fn takeover(&self) -> Result<String, String> {
        Err("this relay has no peer".into())
    }
}

/// Answers one request line (without its newline). A handler that panics
/// yields an error reply; the control thread carries on.
pub fn dispatch(handler: &dyn ControlHandler, line: &[u8]) -> Response {
    let request: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => return Response::Error(format!("invalid request: {e}")),
    };
    let answer = panic::catch_unwind(AssertUnwindSafe(|| match request {
        Request::Status => Response::Status(handler.status()),
        Request::Flows => Response::Flows(handler.flows()),
        Request::Peers => handler
            .peers()
            .map_or_else(Response::Error, Response::Peers),
        Request::Drain => handler
            .drain()
            .map_or_else(Response::Error, Response::Message),
        Request::Reload => handler
            .reload()
            .map_or_else(Response::Error, Response::Reload),
        Request::Handoff => handler
            .handoff()
            .map_or_else(Response::Error, Response::Message),
        Request::Takeover => handler
            .takeover()
            .map_or_else(Response::Error, Response::Message),
    }));
    answer.unwrap_or_else(|_| {
        tracing::error!(cmd = request.name(), "control handler panicked");
        Response::Error(format!(
            "internal error: the relay failed answering {:?}",
            request.name()
        ))
    })
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A line (in the buffer, without `\n` or `\r\n`).
    Complete,
    /// A line longer than the limit, read and thrown away.
    TooLong,
    /// The peer closed the connection between lines.
    Eof,
}

/// Reads one line of at most `limit` bytes into `buf`. A longer line is
/// consumed to its end, so that the next call starts at the next line. A
/// last line without a newline counts as complete.
fn read_line(reader: &mut impl BufRead, limit: usize, buf: &mut Vec<u8>) -> io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    let mut seen_any = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(match (too_long, seen_any) {
                (true, _) => Line::TooLong,
                (false, true) => Line::Complete,
                (false, false) => Line::Eof,
            });
        }
        seen_any = true;
        let newline = available.iter().position(|&b| b == b'\n');
        let chunk = &available[..newline.unwrap_or(available.len())];
        if !too_long {
            if buf.len() + chunk.len() > limit {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        let used = newline.map_or(available.len(), |i| i + 1);
        reader.consume(used);
        if newline.is_some() {
            if too_long {
                return Ok(Line::TooLong);
            }
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(Line::Complete);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// State shared by the server, its accept thread and its connections.
#[derive(Debug, Default)]
struct Shared {
    stopping: AtomicBool,
    next_id: AtomicU64,
    /// Clones of the open client connections, shut down when the server is
    /// dropped so that their threads end.
    connections: Mutex<HashMap<u64, UnixStream>>,
}

/// The relay's end of the control socket.
///
/// [`ControlServer::bind`] takes the socket path, [`ControlServer::serve`]
/// answers on a thread of its own, one more thread per client. Dropping the
/// server stops the threads and removes the socket file.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    /// Device and inode of the socket file bound, so that drop removes only
    /// our own file, not one a later relay bound at the same path.
    identity: (u64, u64),
    listener: Option<UnixListener>,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Binds the control socket at `path`, creating its directory. A socket
    /// file left by a relay that died is replaced; one on which a relay
    /// answers is not ([`Error::AlreadyRunning`]), nor is a file that is not
    /// a socket ([`Error::NotASocket`]). The socket is the owner's only
    /// (mode 0600): whoever reaches it can drain the relay.
    pub fn bind(path: &Path) -> Result<ControlServer, Error> {
        let shown = path.display();
        match fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(Error::NotASocket {
                    path: path.to_path_buf(),
                });
            }
            Ok(_) => match UnixStream::connect(path) {
                Ok(_) => {
                    return Err(Error::AlreadyRunning {
                        path: path.to_path_buf(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %shown, "removing a stale control socket");
                    fs::remove_file(path).map_err(Error::io(format!(
                        "removing the stale control socket {shown}"
                    )))?;
                }
                Err(e) => {
                    return Err(Error::io(format!(
                        "checking whether a relay answers on {shown}"
                    ))(e));
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("looking at {shown}"))(e)),
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(Error::io(format!(
                "creating the control socket's directory {}",
                dir.display()
            )))?;
        }
        let listener = UnixListener::bind(path)
            .map_err(Error::io(format!("binding the control socket {shown}")))?;
        let meta = fs::metadata(path).and_then(|meta| {
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
            Ok(meta)
        });
        let meta = match meta {
            Ok(meta) => meta,
            Err(e) => {
                let _ = fs::remove_file(path);
                return Err(Error::io(format!("restricting {shown} to its owner"))(e));
            }
        };
        Ok(ControlServer {
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
            listener: Some(listener),
            shared: Arc::default(),
            accept: None,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts answering: an accept thread, and a thread per client
    /// connection that calls `handler` for each request line.
    pub fn serve(&mut self, handler: Arc<dyn ControlHandler + Send + Sync>) -> Result<(), Error> {
        let listener = self
            .listener
            .take()
            .ok_or(Error::AlreadyServing("control"))?;
        let shared = Arc::clone(&self.shared);
        let thread = thread::Builder::new()
            .name("relay-control".into())
            .spawn(move || accept_loop(&listener, &shared, &handler))
            .map_err(Error::io("starting the control socket thread"))?;
        self.accept = Some(thread);
        Ok(())
    }

    /// Client connections open now.
    pub fn connections(&self) -> usize {
        lock(&self.shared.connections).len()
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let ours = fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == self.identity);
        if let Some(thread) = self.accept.take() {
            // Wake the blocking accept with a connection of our own. If the
            // file is gone or is another relay's, nobody can reach our
            // listener: the thread is left to end with the process.
            if ours && UnixStream::connect(&self.path).is_ok() {
                let _ = thread.join();
            }
        }
        for (_, stream) in lock(&self.shared.connections).drain() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn accept_loop(
    listener: &UnixListener,
    shared: &Arc<Shared>,
    handler: &Arc<dyn ControlHandler + Send + Sync>,
) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed");
                // Out of descriptors or memory: back off rather than spin.
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if let Err(e) = admit(stream, shared, handler) {
            tracing::warn!(error = %e, "control socket: client not served");
        }
    }
}

/// Registers a new client connection and starts its thread.
fn admit(
    stream: UnixStream,
    shared: &Arc<Shared>,
    handler: &Arc<dyn ControlHandler + Send + Sync>,
) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    {
        let mut connections = lock(&shared.connections);
        if connections.len() >= MAX_CONNECTIONS {
            let busy = Response::Error(format!(
                "too many control connections (at most {MAX_CONNECTIONS})"
            ));
            return writeln!(&stream, "{}", busy.to_line());
        }
        connections.insert(id, stream.try_clone()?);
    }
    let thread_shared = Arc::clone(shared);
    let handler = Arc::clone(handler);
    let spawned = thread::Builder::new()
        .name(format!("relay-control-{id}"))
        .spawn(move || {
            serve_connection(&stream, &*handler);
            lock(&thread_shared.connections).remove(&id);
        });
    if let Err(e) = spawned {
        lock(&shared.connections).remove(&id);
        return Err(e);
    }
    Ok(())
}

/// Answers request lines until the client closes, goes idle, or the
/// server shuts the connection down.
fn serve_connection(stream: &UnixStream, handler: &dyn ControlHandler) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        let reply = match read_line(&mut reader, MAX_REQUEST_LINE, &mut line) {
            Ok(Line::Eof) => return,
            Ok(Line::TooLong) => Response::Error(format!(
                "invalid request: line longer than {MAX_REQUEST_LINE} bytes"
            )),
            Ok(Line::Complete) if line.trim_ascii().is_empty() => continue,
            Ok(Line::Complete) => dispatch(handler, &line),
            Err(e) => {
                tracing::debug!(error = %e, "control connection closed");
                return;
            }
        };
        if let Err(e) = writeln!(&*stream, "{}", reply.to_line()) {
            tracing::debug!(error = %e, "control connection: reply not sent");
            return;
        }
    }
}

/// Reads through a stream, failing with `TimedOut` once `until` has passed,
/// however the bytes trickle in.
struct Deadline<'a> {
    stream: &'a UnixStream,
    until: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        (&mut &*self.stream).read(buf)
    }
}

/// The CLI's end of the control socket: one request, one reply, in turn.
#[derive(Debug)]
pub struct ControlClient {
    path: PathBuf,
    stream: UnixStream,
    timeout: Duration,
}

impl ControlClient {
    /// Connects to the relay at `path`; [`Error::NotRunning`] when nothing
    /// listens there.
    pub fn connect(path: &Path) -> Result<ControlClient, Error> {
        let stream = UnixStream::connect(path).map_err(|e| {
            let reason = match e.kind() {
                io::ErrorKind::NotFound => "not found",
                io::ErrorKind::ConnectionRefused => "connection refused",
                _ => {
                    return Error::io(format!(
                        "connecting to the control socket {}",
                        path.display()
                    ))(e);
                }
            };
            Error::NotRunning {
                path: path.to_path_buf(),
                reason: reason.into(),
            }
        })?;
        Ok(ControlClient {
            path: path.to_path_buf(),
            stream,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// How long a request may take, from sending to the end of the reply
    /// (default [`DEFAULT_TIMEOUT`]).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sends `request` and returns the reply line as the relay sent it
    /// (without the newline), for `--json`. After an error (a timeout in
    /// particular, whose reply may still arrive) connect anew rather than
    /// send another request on this client.
    pub fn request_raw(&mut self, request: &Request) -> Result<String, Error> {
        let until = Instant::now() + self.timeout;
        let timed_out = |e: io::Error, path: &Path, timeout: Duration, what: &str| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout {
                path: path.to_path_buf(),
                timeout,
            },
            _ => Error::io(format!("{what} the control socket {}", path.display()))(e),
        };
        let mut line = serde_json::to_vec(request).map_err(|e| Error::BadReply(e.to_string()))?;
        line.push(b'\n');
        self.stream
            .set_write_timeout(Some(self.timeout))
            .and_then(|()| (&self.stream).write_all(&line))
            .map_err(|e| timed_out(e, &self.path, self.timeout, "writing to"))?;
        let mut reader = BufReader::new(Deadline {
            stream: &self.stream,
            until,
        });
        let mut reply = Vec::new();
        match read_line(&mut reader, MAX_REPLY_LINE, &mut reply) {
            Ok(Line::Complete) => {}
            Ok(Line::TooLong) => {
                return Err(Error::BadReply(format!(
                    "reply longer than {MAX_REPLY_LINE} bytes"
                )));
            }
            Ok(Line::Eof) => {
                return Err(Error::BadReply(
                    "the relay closed the connection without answering".into(),
                ));
            }
            Err(e) => return Err(timed_out(e, &self.path, self.timeout, "reading from")),
        }
        String::from_utf8(reply).map_err(|_| Error::BadReply("reply is not UTF-8".into()))
    }

    /// Sends `request` and returns the relay's reply, `"ok":false` included.
    pub fn request(&mut self, request: &Request) -> Result<Response, Error> {
        let line = self.request_raw(request)?;
        parse_reply(&line)
    }

    /// `status`.
    pub fn status(&mut self) -> Result<StatusReply, Error> {
        match self.request(&Request::Status)? {
            Response::Status(s) => Ok(s),
            other => Err(unexpected(Request::Status, other)),
        }
    }

    /// `flows`.
    pub fn flows(&mut self) -> Result<Vec<FlowLine>, Error> {
        match self.request(&Request::Flows)? {
            Response::Flows(f) => Ok(f),
            other => Err(unexpected(Request::Flows, other)),
        }
    }

    /// `peers`.
    pub fn peers(&mut self) -> Result<PeersReply, Error> {
        match self.request(&Request::Peers)? {
            Response::Peers(p) => Ok(p),
            other => Err(unexpected(Request::Peers, other)),
        }
    }

    /// `drain`: what the relay says it does.
    pub fn drain(&mut self) -> Result<String, Error> {
        self.message(Request::Drain)
    }

    /// `handoff`: what moved to the peer.
    pub fn handoff(&mut self) -> Result<String, Error> {
        self.message(Request::Handoff)
    }

    /// `takeover`: what this relay serves now.
    pub fn takeover(&mut self) -> Result<String, Error> {
        self.message(Request::Takeover)
    }

    fn message(&mut self, request: Request) -> Result<String, Error> {
        match self.request(&request)? {
            Response::Message(m) => Ok(m),
            other => Err(unexpected(request, other)),
        }
    }

    /// `reload`.
    pub fn reload(&mut self) -> Result<ReloadReply, Error> {
        match self.request(&Request::Reload)? {
            Response::Reload(r) => Ok(r),
            other => Err(unexpected(Request::Reload, other)),
        }
    }
}

/// Parses a reply line.
pub fn parse_reply(line: &str) -> Result<Response, Error> {
    serde_json::from_str(line).map_err(|e| Error::BadReply(e.to_string()))
}

fn unexpected(request: Request, got: Response) -> Error {
    match got {
        Response::Error(e) => Error::Refused(e),
        other => Error::BadReply(format!(
            "{:?} answered with {}",
            request.name(),
            other.to_line()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A directory of its own under the system's temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("relay-app-{}-{name}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn status() -> StatusReply {
        StatusReply {
            version: "0.1.0".into(),
            uptime_secs: 3725,
            state: RelayState::Running,
            flows_active: 2,
            flows_limit: 100_000,
            flows_opened: 40,
            handshakes_full: 30,
            handshakes_resumed: 9,
            handshakes_failed: 1,
            bytes_up: 1234,
            bytes_down: 5_678_901,
            workers: 2,
            backends: vec![BackendLine {
                service: "web".into(),
                addr: "10.200.2.10:8080".parse().unwrap(),
                health: "up".into(),
                active_flows: 2,
            }],
            xdp_mode: "driver".into(),
        }
    }

    fn flow() -> FlowLine {
        FlowLine {
            id: 7,
            client: "10.200.1.2:51234".parse().unwrap(),
            backend: Some("10.200.2.10:8080".parse().unwrap()),
            state: "established".into(),
            bytes_up: 100,
            bytes_down: 2000,
            age_secs: 61,
            tls: "TLS1.3 AES_128_GCM_SHA256".into(),
        }
    }

    fn peers() -> PeersReply {
        PeersReply {
            clustered: true,
            relay: "relay-a".into(),
            relay_id: Some(1),
            peers: vec![PeerLine {
                name: "relay-b".into(),
                relay_id: 2,
                address: "10.200.9.2:7000".parse().unwrap(),
                state: "up".into(),
                connected: true,
                rtt_us: Some(180),
                connected_secs: Some(65),
                connections: 1,
                bytes_sent: 123_456,
                bytes_received: 7890,
                flows_held: 0,
                standby_bytes: 0,
                flows_protected: 3,
                flows_unprotected: 1,
                backlog_bytes: 512,
                backlog_messages: 2,
                protection: Some("reseeding".into()),
            }],
        }
    }

    fn reload() -> ReloadReply {
        ReloadReply {
            certificates: 2,
            backends: 3,
            message: "1 backend added".into(),
        }
    }

    /// Answers from fixed values; drain succeeds once.
    #[derive(Default)]
    struct Fake {
        drained: AtomicBool,
        panic_on_flows: bool,
    }

    impl ControlHandler for Fake {
        fn status(&self) -> StatusReply {
            let mut s = status();
            if self.drained.load(Ordering::SeqCst) {
                s.state = RelayState::Draining;
            }
            s
        }
        fn flows(&self) -> Vec<FlowLine> {
            assert!(!self.panic_on_flows, "flows handler blew up");
            vec![flow()]
        }
        fn peers(&self) -> Result<PeersReply, String> {
            Ok(peers())
        }
        fn drain(&self) -> Result<String, String> {
            if self.drained.swap(true, Ordering::SeqCst) {
                Err("already draining".into())
            } else {
                Ok("draining: 2 flows left".into())
            }
        }
        fn reload(&self) -> Result<ReloadReply, String> {
            Ok(reload())
        }
    }

    fn serving(dir: &TempDir, fake: Fake) -> ControlServer {
        let mut server = ControlServer::bind(&dir.join("control.sock")).unwrap();
        server.serve(Arc::new(fake)).unwrap();
        server
    }

    /// A raw connection for sending arbitrary bytes.
    fn raw(path: &Path) -> (UnixStream, BufReader<UnixStream>) {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        (s, r)
    }

    fn reply_to(s: &mut UnixStream, r: &mut BufReader<UnixStream>, bytes: &[u8]) -> Response {
        s.write_all(bytes).unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.ends_with('\n'), "{line:?}");
        parse_reply(&line).unwrap()
    }

    #[test]
    fn requests_are_one_cmd_field() {
        for (r, text) in [
            (Request::Status, r#"{"cmd":"status"}"#),
            (Request::Flows, r#"{"cmd":"flows"}"#),
            (Request::Peers, r#"{"cmd":"peers"}"#),
            (Request::Drain, r#"{"cmd":"drain"}"#),
            (Request::Handoff, r#"{"cmd":"handoff"}"#),
            (Request::Takeover, r#"{"cmd":"takeover"}"#),
            (Request::Reload, r#"{"cmd":"reload"}"#),
        ] {
            assert_eq!(serde_json::to_string(&r).unwrap(), text);
            assert_eq!(serde_json::from_str::<Request>(text).unwrap(), r);
            assert_eq!(format!("{{\"cmd\":\"{}\"}}", r.name()), text);
        }
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"stop"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"command":"status"}"#).is_err());
    }

    #[test]
    fn responses_round_trip() {
        for r in [
            Response::Status(status()),
            Response::Flows(vec![
                flow(),
                FlowLine {
                    backend: None,
                    ..flow()
                },
            ]),
            Response::Flows(vec![]),
            Response::Peers(peers()),
            Response::Peers(PeersReply {
                clustered: false,
                relay_id: None,
                peers: vec![],
                ..peers()
            }),
            Response::Message("draining".into()),
            Response::Reload(reload()),
            Response::Error("no".into()),
        ] {
            let line = r.to_line();
            assert!(!line.contains('\n'));
            assert_eq!(parse_reply(&line).unwrap(), r, "{line}");
        }
    }

    #[test]
    fn responses_have_the_documented_shape() {
        assert_eq!(
            Response::Error("bad".into()).to_line(),
            r#"{"ok":false,"error":"bad"}"#
        );
        assert_eq!(
            Response::Message("m".into()).to_line(),
            r#"{"ok":true,"message":"m"}"#
        );
        let v: serde_json::Value =
            serde_json::from_str(&Response::Status(status()).to_line()).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["status"]["state"], "running");
        assert_eq!(v["status"]["backends"][0]["addr"], "10.200.2.10:8080");
        let v: serde_json::Value =
            serde_json::from_str(&Response::Flows(vec![flow()]).to_line()).unwrap();
        assert_eq!(v["flows"][0]["client"], "10.200.1.2:51234");
        assert_eq!(v["flows"][0]["tls"], "TLS1.3 AES_128_GCM_SHA256");
        let v: serde_json::Value =
            serde_json::from_str(&Response::Peers(peers()).to_line()).unwrap();
        assert_eq!(v["cluster"]["clustered"], true);
        assert_eq!(v["cluster"]["peers"][0]["name"], "relay-b");
        assert_eq!(v["cluster"]["peers"][0]["state"], "up");
        assert_eq!(v["cluster"]["peers"][0]["rtt_us"], 180);
        assert_eq!(v["cluster"]["peers"][0]["address"], "10.200.9.2:7000");
    }

    #[test]
    fn malformed_replies_are_errors() {
        for line in [
            "",
            "{",
            r#"{"ok":true}"#,
            r#"{"ok":false}"#,
            r#"{"ok":true,"error":"x"}"#,
            r#"{"ok":true,"message":"a","reload":{"certificates":1,"backends":1,"message":""}}"#,
            r#"{"ok":true,"status":{"version":"x"}}"#,
        ] {
            assert!(
                matches!(parse_reply(line), Err(Error::BadReply(_))),
                "{line:?}"
            );
        }
        // A newer relay's extra fields are ignored.
        let line = r#"{"ok":true,"message":"m","extra":1}"#;
        assert_eq!(parse_reply(line).unwrap(), Response::Message("m".into()));
    }

    #[test]
    fn read_line_bounds_and_resynchronises() {
        let input = b"short\r\nthis one is too long\nok\nlast".to_vec();
        let mut r = BufReader::with_capacity(4, &input[..]);
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut r, 8, &mut buf).unwrap(), Line::Complete);
        assert_eq!(buf, b"short");
        assert_eq!(read_line(&mut r, 8, &mut buf).unwrap(), Line::TooLong);
        assert_eq!(read_line(&mut r, 8, &mut buf).unwrap(), Line::Complete);
        assert_eq!(buf, b"ok");
        assert_eq!(read_line(&mut r, 8, &mut buf).unwrap(), Line::Complete);
        assert_eq!(buf, b"last");
        assert_eq!(read_line(&mut r, 8, &mut buf).unwrap(), Line::Eof);
        // Exactly at the limit is fine.
        let mut r = BufReader::new(&b"12345678\n"[..]);
        assert_eq!(read_line(&mut r, 8, &mut buf).unwrap(), Line::Complete);
    }

    #[test]
    fn the_server_answers_each_request() {
        let dir = TempDir::new("answers");
        let server = serving(&dir, Fake::default());
        let mut client = ControlClient::connect(server.path()).unwrap();
        assert_eq!(client.status().unwrap(), status());
        assert_eq!(client.flows().unwrap(), vec![flow()]);
        assert_eq!(client.peers().unwrap(), peers());
        assert_eq!(client.reload().unwrap(), reload());
        assert_eq!(client.drain().unwrap(), "draining: 2 flows left");
        assert_eq!(client.status().unwrap().state, RelayState::Draining);
        match client.drain() {
            Err(Error::Refused(e)) => assert_eq!(e, "already draining"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let raw = client.request_raw(&Request::Flows).unwrap();
        assert_eq!(raw, Response::Flows(vec![flow()]).to_line());
        // A second client at the same time.
        let mut other = ControlClient::connect(server.path()).unwrap();
        assert_eq!(other.flows().unwrap().len(), 1);
        assert_eq!(client.flows().unwrap().len(), 1);
    }

    #[test]
    fn garbage_gets_an_error_and_the_connection_goes_on() {
        let dir = TempDir::new("garbage");
        let server = serving(&dir, Fake::default());
        let (mut s, mut r) = raw(server.path());
        let too_long = format!("{{\"cmd\":\"{}\"}}\n", "x".repeat(MAX_REQUEST_LINE + 10));
        let cases: [(&[u8], &str); 6] = [
            (b"hello\n", "invalid request"),
            (b"{\"cmd\":\"stop\"}\n", "unknown variant"),
            (b"[1,2]\n", "invalid request"),
            (b"\xff\xfe\n", "invalid request"),
            (b"{\"cmd\":\"status\"\n", "invalid request"),
            (too_long.as_bytes(), "longer than 65536 bytes"),
        ];
        for (bytes, expected) in cases {
            match reply_to(&mut s, &mut r, bytes) {
                Response::Error(e) => assert!(e.contains(expected), "{e:?} for {bytes:?}"),
                other => panic!("expected an error for {bytes:?}, got {other:?}"),
            }
        }
        // Blank lines are skipped; CRLF is accepted; the connection still works.
        assert_eq!(
            reply_to(&mut s, &mut r, b"\n\r\n{\"cmd\":\"status\"}\r\n"),
            Response::Status(status())
        );
    }

    #[test]
    fn a_panicking_handler_is_an_error_reply() {
        let dir = TempDir::new("panic");
        let server = serving(
            &dir,
            Fake {
                panic_on_flows: true,
                ..Fake::default()
            },
        );
        let mut client = ControlClient::connect(server.path()).unwrap();
        assert!(matches!(client.flows(), Err(Error::Refused(e)) if e.contains("internal error")));
        assert_eq!(client.status().unwrap(), status());
    }

    #[test]
    fn no_server_is_a_clear_error() {
        let dir = TempDir::new("none");
        let path = dir.join("control.sock");
        let err = ControlClient::connect(&path).unwrap_err();
        assert!(matches!(err, Error::NotRunning { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("no relay is running at {}: not found", path.display())
        );
        // A socket file nobody listens on (a relay that died).
        drop(UnixListener::bind(&path).unwrap());
        let err = ControlClient::connect(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "no relay is running at {}: connection refused",
                path.display()
            )
        );
    }

    #[test]
    fn bind_replaces_a_stale_socket_but_not_a_live_relay() {
        let dir = TempDir::new("stale");
        let path = dir.join("control.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let server = serving(&dir, Fake::default());
        assert_eq!(
            ControlClient::connect(&path).unwrap().status().unwrap(),
            status()
        );
        let err = ControlServer::bind(&path).unwrap_err();
        assert!(matches!(err, Error::AlreadyRunning { .. }), "{err:?}");
        assert!(err.to_string().contains("already running"), "{err}");
        // The live relay is unharmed.
        assert_eq!(
            ControlClient::connect(&path).unwrap().status().unwrap(),
            status()
        );
        drop(server);
        assert!(!path.exists(), "the socket file is removed on drop");
        assert!(matches!(
            ControlClient::connect(&path),
            Err(Error::NotRunning { .. })
        ));
    }

    #[test]
    fn bind_refuses_a_file_that_is_not_a_socket() {
        let dir = TempDir::new("file");
        let path = dir.join("control.sock");
        fs::write(&path, "precious").unwrap();
        let err = ControlServer::bind(&path).unwrap_err();
        assert!(matches!(err, Error::NotASocket { .. }), "{err:?}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
    }

    #[test]
    fn bind_creates_the_directory_and_restricts_the_socket() {
        let dir = TempDir::new("mkdir");
        let path = dir.join("run/relay/control.sock");
        let server = ControlServer::bind(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(server);
        assert!(!path.exists(), "removed on drop even when never served");
    }

    #[test]
    fn drop_closes_client_connections() {
        let dir = TempDir::new("drop");
        let server = serving(&dir, Fake::default());
        let mut client = ControlClient::connect(server.path()).unwrap();
        assert_eq!(client.status().unwrap(), status());
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.connections() != 1 {
            assert!(Instant::now() < deadline, "connection never registered");
            thread::yield_now();
        }
        drop(server);
        assert!(matches!(
            client.status(),
            Err(Error::BadReply(_) | Error::Io { .. })
        ));
    }

    #[test]
    fn serve_twice_is_an_error() {
        let dir = TempDir::new("twice");
        let mut server = serving(&dir, Fake::default());
        let err = server.serve(Arc::new(Fake::default())).unwrap_err();
        assert!(matches!(err, Error::AlreadyServing("control")));
    }

    #[test]
    fn a_silent_relay_times_out() {
        let dir = TempDir::new("silent");
        let path = dir.join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut client = ControlClient::connect(&path).unwrap();
        // Accepted (queued) but never answered.
        let _peer = listener.accept().unwrap();
        client.set_timeout(Duration::from_millis(200));
        let err = client.status().unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
        assert!(
            err.to_string().contains("did not answer within 200 ms"),
            "{err}"
        );
    }
}
