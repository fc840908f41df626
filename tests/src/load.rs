//! The lab's TLS load client (the `lab-load` binary), with rustls and ring.
//!
//! Opens `connections` TLS connections at once, one thread each (small
//! stacks): every connection first completes its handshake, then all wait at
//! a start line until every one of them is open (or has failed), so they are
//! really all held at once; then each does one `GET /bytes/N` (or with
//! `upload` a `POST /upload` of N pattern bytes) and checks the SHA-256 of
//! what came back against [`crate::peers::pattern_sha256`]. Every socket has
//! read and write timeouts and the start line a deadline: a run always ends.

use std::fmt;
use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use sha2::{Digest, Sha256};

use crate::backend::hex;
use crate::http;
use crate::peers::{CHUNK, body_stream, pattern_sha256};

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Where to connect (the VIP, `10.200.1.100:443` in the lab).
    pub connect: SocketAddr,
    /// The server name sent and verified (`relay.lab`).
    pub sni: String,
    /// PEM file of the certificates to trust (the test CA).
    pub ca: PathBuf,
    /// Connections held open at once.
    pub connections: usize,
    /// Body bytes per connection.
    pub bytes: u64,
    /// Upload `bytes` instead of downloading them.
    pub upload: bool,
    /// Timeout of every connect, read and write.
    pub timeout: Duration,
}

/// Why a run could not start (a connection's own failure is a [`Failure`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The CA file could not be read or parsed (operator input).
    #[error("CA file {path}: {reason}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The server name is not a valid DNS name or IP address (operator input).
    #[error("invalid server name {0:?}")]
    Sni(String),
    /// rustls refused the client configuration (internal).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The step at which a connection failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Its thread could not be started (local limits).
    Spawn,
    /// TCP connect.
    Connect,
    /// The TLS handshake.
    Handshake,
    /// Sending the request (and upload body).
    Request,
    /// Reading the response head or body.
    Response,
    /// The body's hash or length is not the expected one.
    Verify,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Spawn => "spawn",
            Stage::Connect => "connect",
            Stage::Handshake => "handshake",
            Stage::Request => "request",
            Stage::Response => "response",
            Stage::Verify => "verify",
        })
    }
}

/// One connection that did not complete.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The connection's index (0-based).
    pub conn: usize,
    /// Where it failed.
    pub stage: Stage,
    /// Why.
    pub reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "failed conn={} stage={} reason={}",
            self.conn, self.stage, self.reason
        )
    }
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// Connections attempted.
    pub connections: usize,
    /// Connections whose body checked out.
    pub ok: usize,
    /// The others, by connection index.
    pub failures: Vec<Failure>,
    /// Body bytes moved and verified (sum over the good connections).
    pub bytes: u64,
    /// Connections open (handshake done) together at the start line.
    pub held: usize,
    /// From the first connect to the start line's release.
    pub handshakes: Duration,
    /// From the start line's release to the last connection's end.
    pub transfer: Duration,
}

impl LoadReport {
    /// Megabytes (10^6) per second of the transfer phase.
    pub fn mb_per_sec(&self) -> f64 {
        let secs = self.transfer.as_secs_f64();
        if secs > 0.0 {
            self.bytes as f64 / secs / 1e6
        } else {
            0.0
        }
    }

    /// `connections=N ok=N failed=N bytes=N secs=S MB/s=R`
    pub fn summary(&self) -> String {
        format!(
            "connections={} ok={} failed={} bytes={} secs={:.3} MB/s={:.1}",
            self.connections,
            self.ok,
            self.failures.len(),
            self.bytes,
            self.transfer.as_secs_f64(),
            self.mb_per_sec()
        )
    }
}

/// A client configuration (ring provider, TLS 1.2 and 1.3) trusting the
/// certificates of the PEM file `ca`.
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, LoadError> {
    let ca_error = |reason: String| LoadError::Ca {
        path: ca.to_path_buf(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| ca_error(e.to_string()))? {
        let cert = cert.map_err(|e| ca_error(e.to_string()))?;
        roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ca_error("no certificate in it".into()));
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Stack of each connection thread: rustls' handshake in a debug build stays
/// well below it; buffers live on the heap.
const CONNECTION_STACK: usize = 512 * 1024;

/// Uploads up to this size are generated once and shared by all connections.
const SHARED_UPLOAD_MAX: u64 = 64 << 20;

/// The start line: every connection arrives (open or failed) and waits until
/// all have, or until the deadline.
#[derive(Debug)]
struct StartLine {
    state: Mutex<Arrivals>,
    all_in: Condvar,
    total: usize,
    deadline: Instant,
}

impl StartLine {
    fn arrive(&self, held: bool) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.count(held, self.total) {
            self.all_in.notify_all();
        }
        while state.arrived < self.total {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.all_in.wait_timeout(state, left) {
                Ok((next, _)) => state = next,
                Err(_) => return,
            }
        }
    }

    /// A connection that never started counts as arrived.
    fn arrive_without_waiting(&self) {
        if let Ok(mut state) = self.state.lock()
            && state.count(false, self.total)
        {
            self.all_in.notify_all();
        }
    }

    /// Waits until everyone arrived or the deadline; returns the held count
    /// and when the line was released.
    fn wait_all(&self) -> (usize, Instant) {
        let Ok(mut state) = self.state.lock() else {
            return (0, Instant::now());
        };
        while state.arrived < self.total {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.all_in.wait_timeout(state, left) {
                Ok((next, _)) => state = next,
                Err(_) => return (0, Instant::now()),
            }
        }
        (state.held, state.released.unwrap_or_else(Instant::now))
    }
}

/// Who reached the start line.
#[derive(Debug, Default)]
struct Arrivals {
    /// Connections that arrived, open or failed.
    arrived: usize,
    /// Of those, the ones open (handshake done).
    held: usize,
    /// When the last one arrived.
    released: Option<Instant>,
}

impl Arrivals {
    fn count(&mut self, held: bool, total: usize) -> bool {
        self.arrived += 1;
        self.held += usize::from(held);
        let all_in = self.arrived >= total;
        if all_in && self.released.is_none() {
            self.released = Some(Instant::now());
        }
        all_in
    }
}

/// What all connection threads share.
#[derive(Debug)]
struct Shared {
    config: LoadConfig,
    tls: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    start: StartLine,
    /// The expected body hash, computed while the handshakes run.
    expected: OnceLock<String>,
    /// The upload body when small enough to share.
    upload_body: Option<Vec<u8>>,
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Runs the load and reports; only setup problems are errors.
pub fn run(config: &LoadConfig) -> Result<LoadReport, LoadError> {
    let tls = client_config(&config.ca)?;
    let server_name =
        ServerName::try_from(config.sni.clone()).map_err(|_| LoadError::Sni(config.sni.clone()))?;
    let upload_body = (config.upload && config.bytes <= SHARED_UPLOAD_MAX)
        .then(|| body_stream().take_vec(config.bytes as usize));
    let started = Instant::now();
    let shared = Arc::new(Shared {
        config: config.clone(),
        tls,
        server_name,
        start: StartLine {
            state: Mutex::new(Arrivals::default()),
            all_in: Condvar::new(),
            total: config.connections,
            // Connect and handshake are each bounded by the socket timeouts.
            deadline: started + config.timeout * 3,
        },
        expected: OnceLock::new(),
        upload_body,
    });

    let mut failures = Vec::new();
    let mut threads = Vec::with_capacity(config.connections);
    for conn in 0..config.connections {
        let worker = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("conn{conn}"))
            .stack_size(CONNECTION_STACK)
            .spawn(move || connection(conn, &worker));
        match spawned {
            Ok(handle) => threads.push((conn, handle)),
            Err(e) => {
                shared.start.arrive_without_waiting();
                failures.push(Failure {
                    conn,
                    stage: Stage::Spawn,
                    reason: e.to_string(),
                });
            }
        }
    }
    let _ = shared.expected.set(pattern_sha256(config.bytes));
    let (held, released) = shared.start.wait_all();

    let mut ok = 0;
    let mut bytes = 0;
    for (conn, handle) in threads {
        match handle.join() {
            Ok(Ok(n)) => {
                ok += 1;
                bytes += n;
            }
            Ok(Err(failure)) => failures.push(failure),
            Err(_) => failures.push(Failure {
                conn,
                stage: Stage::Response,
                reason: "connection thread panicked".into(),
            }),
        }
    }
    failures.sort_by_key(|f| f.conn);
    Ok(LoadReport {
        connections: config.connections,
        ok,
        failures,
        bytes,
        held,
        handshakes: released - started,
        transfer: released.elapsed(),
    })
}

/// One connection: open, wait at the start line, transfer, verify.
/// Returns the verified body bytes.
fn connection(conn: usize, shared: &Shared) -> Result<u64, Failure> {
    let fail = |stage: Stage| {
        move |reason: String| Failure {
            conn,
            stage,
            reason,
        }
    };
    let opened = open(shared);
    shared.start.arrive(opened.is_ok());
    let mut tls = opened.map_err(|(stage, reason)| fail(stage)(reason))?;
    let config = &shared.config;
    let n = config.bytes;
    let body_hash = if config.upload {
        send_upload(&mut tls, shared).map_err(|e| fail(Stage::Request)(e.to_string()))?;
        let mut answer = Vec::new();
        read_response(&mut tls, |chunk| {
            answer.extend_from_slice(chunk);
            answer.len() <= 1024
        })
        .map_err(fail(Stage::Response))?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let expected_answer = format!("{} {n}\n", expected(shared));
        if answer != expected_answer {
            return Err(fail(Stage::Verify)(format!(
                "upload answer {answer:?}, expected {expected_answer:?}"
            )));
        }
        None
    } else {
        let request = format!(
            "GET /bytes/{n} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            config.sni
        );
        tls.write_all(request.as_bytes())
            .and_then(|()| tls.flush())
            .map_err(|e| fail(Stage::Request)(e.to_string()))?;
        let mut hasher = Sha256::new();
        let len = read_response(&mut tls, |chunk| {
            hasher.update(chunk);
            true
        })
        .map_err(fail(Stage::Response))?;
        if len != n {
            return Err(fail(Stage::Verify)(format!(
                "Content-Length {len}, expected {n}"
            )));
        }
        Some(hex(&hasher.finalize()))
    };
    if let Some(got) = body_hash {
        let want = expected(shared);
        if got != want {
            return Err(fail(Stage::Verify)(format!(
                "body sha256 {got}, expected {want}"
            )));
        }
    }
    // A polite end; the result is known already.
    tls.conn.send_close_notify();
    let _ = tls.flush();
    Ok(n)
}

fn expected(shared: &Shared) -> &str {
    shared.expected.wait()
}

/// TCP connect and TLS handshake, both under the timeout.
fn open(shared: &Shared) -> Result<Tls, (Stage, String)> {
    let config = &shared.config;
    let sock = TcpStream::connect_timeout(&config.connect, config.timeout)
        .map_err(|e| (Stage::Connect, format!("{}: {e}", config.connect)))?;
    let setup = |sock: &TcpStream| -> io::Result<()> {
        sock.set_read_timeout(Some(config.timeout))?;
        sock.set_write_timeout(Some(config.timeout))?;
        sock.set_nodelay(true)
    };
    setup(&sock).map_err(|e| (Stage::Connect, e.to_string()))?;
    let conn = ClientConnection::new(shared.tls.clone(), shared.server_name.clone())
        .map_err(|e| (Stage::Handshake, e.to_string()))?;
    let mut tls = StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| (Stage::Handshake, e.to_string()))?;
    }
    Ok(tls)
}

/// `POST /upload` with the N-byte pattern body.
fn send_upload(tls: &mut Tls, shared: &Shared) -> io::Result<()> {
    let config = &shared.config;
    let n = config.bytes;
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {}\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n",
        config.sni
    );
    tls.write_all(head.as_bytes())?;
    match &shared.upload_body {
        Some(body) => {
            for chunk in body.chunks(CHUNK) {
                tls.write_all(chunk)?;
            }
        }
        None => {
            let mut pattern = body_stream();
            let mut buf = vec![0u8; CHUNK];
            let mut left = n;
            while left > 0 {
                let len = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                pattern.fill(&mut buf[..len]);
                tls.write_all(&buf[..len])?;
                left -= len as u64;
            }
        }
    }
    tls.flush()
}

/// Reads a 200 response, passing its body to `sink` (which returns false to
/// give up: too much). Returns the body length.
fn read_response(tls: &mut Tls, mut sink: impl FnMut(&[u8]) -> bool) -> Result<u64, String> {
    let mut reader = BufReader::with_capacity(8 * 1024, tls);
    let response = http::read_response(&mut reader).map_err(|e| e.to_string())?;
    if response.status != 200 {
        return Err(format!("status {} {}", response.status, response.reason));
    }
    let len = response
        .headers
        .content_length()
        .map_err(|e| e.to_string())?
        .ok_or("response without Content-Length")?;
    let mut buf = vec![0u8; CHUNK];
    let mut too_much = false;
    let mut got = 0u64;
    http::read_body(&mut reader, len, &mut buf, |chunk| {
        got += chunk.len() as u64;
        too_much |= !sink(chunk);
    })
    .map_err(|e| format!("body after {got} of {len} bytes: {e}"))?;
    if too_much {
        return Err(format!("unexpected {len}-byte answer"));
    }
    Ok(len)
}
