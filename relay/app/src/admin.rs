//! The admin HTTP endpoint: `GET /metrics` for Prometheus and
//! `GET /healthz` for load balancers and probes.
//!
//! A deliberately small HTTP/1.1 server on std's `TcpListener`: one
//! request a connection (`Connection: close`), a request head of at most
//! [`MAX_REQUEST_HEAD`] bytes read within [`READ_TIMEOUT`], no request
//! bodies. It serves the relay's operators, not the internet.
//!
//! | request | answer |
//! |---------|--------|
//! | `GET /metrics` | 200, `text/plain; version=0.0.4`, the rendered registry |
//! | `GET /healthz` | 200 `ok`, or 503 `draining` while the relay drains |
//! | `HEAD` of either | the same, without the body (RFC 9110 9.3.2) |
//! | another path | 404 |
//! | another method | 405 with `Allow: GET, HEAD` |
//! | a malformed request line or header | 400 |
//! | a head over 8 KiB | 431 |

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::Error;

/// Largest request head (request line and headers) read.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// A client must send its request head within this time.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing the answer may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more get a 503 at once.
pub const MAX_CONNECTIONS: usize = 16;
/// The content type of the Prometheus text format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type MetricsFn = dyn Fn() -> String + Send + Sync;
type DrainingFn = dyn Fn() -> bool + Send + Sync;

/// What the endpoints read, shared by the connection threads.
struct Routes {
    metrics: Box<MetricsFn>,
    draining: Box<DrainingFn>,
}

/// The admin endpoint. [`AdminServer::bind`] takes the address,
/// [`AdminServer::spawn`] serves on an accept thread (and a short-lived
/// thread per connection), [`AdminServer::shutdown`] or drop stops it.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    listener: Option<TcpListener>,
    stopping: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port; see [`AdminServer::local_addr`]).
    pub fn bind(addr: SocketAddr) -> Result<AdminServer, Error> {
        let listener = TcpListener::bind(addr).map_err(Error::io(format!(
            "binding the admin endpoint to {addr} (admin_addr)"
        )))?;
        let local_addr = listener
            .local_addr()
            .map_err(Error::io("reading the admin endpoint's address"))?;
        Ok(AdminServer {
            local_addr,
            listener: Some(listener),
            stopping: Arc::default(),
            accept: None,
        })
    }

    /// The address bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts serving: `metrics` renders the body of `/metrics` (e.g.
    /// `relay_control::Registry::render`), `draining` turns `/healthz` to 503.
    pub fn spawn(
        &mut self,
        metrics: impl Fn() -> String + Send + Sync + 'static,
        draining: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Result<(), Error> {
        let listener = self.listener.take().ok_or(Error::AlreadyServing("admin"))?;
        let routes = Arc::new(Routes {
            metrics: Box::new(metrics),
            draining: Box::new(draining),
        });
        let stopping = Arc::clone(&self.stopping);
        let thread = thread::Builder::new()
            .name("relay-admin".into())
            .spawn(move || accept_loop(&listener, &stopping, &routes))
            .map_err(Error::io("starting the admin endpoint's thread"))?;
        self.accept = Some(thread);
        Ok(())
    }

    /// Stops accepting and waits for the accept thread; the port is free
    /// when this returns. Connections being answered finish on their own.
    pub fn shutdown(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.listener = None;
        if let Some(thread) = self.accept.take() {
            // Wake the blocking accept with a connection of our own.
            let wake = SocketAddr::new(reachable(self.local_addr.ip()), self.local_addr.port());
            match TcpStream::connect_timeout(&wake, Duration::from_secs(1)) {
                Ok(_) => {
                    let _ = thread.join();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin endpoint: could not wake the accept thread")
                }
            }
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// An address that reaches a listener bound to `ip`: the loopback for a
/// wildcard bind.
fn reachable(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

fn accept_loop(listener: &TcpListener, stopping: &AtomicBool, routes: &Arc<Routes>) {
    let live = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin endpoint: accept failed");
                // Out of descriptors or memory: back off rather than spin.
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if live.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            live.fetch_sub(1, Ordering::SeqCst);
            let busy = Reply::text(503, "Service Unavailable", "too many admin connections\n");
            let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
            let _ = finish(stream, &busy, false);
            continue;
        }
        let routes = Arc::clone(routes);
        let thread_live = Arc::clone(&live);
        let spawned = thread::Builder::new()
            .name("relay-admin-conn".into())
            .spawn(move || {
                if let Err(e) = serve_connection(stream, &routes) {
                    tracing::debug!(error = %e, "admin connection");
                }
                thread_live.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            live.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(error = %e, "admin endpoint: no thread for a connection");
        }
    }
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    /// Extra header lines, each without CRLF.
    headers: Vec<&'static str>,
    body: String,
}

impl Reply {
    fn text(status: u16, reason: &'static str, body: impl Into<String>) -> Reply {
        Reply {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// The bytes on the wire; `head_only` for HEAD leaves out the body but
    /// keeps its length (RFC 9110 9.3.2).
    fn encode(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        for h in &self.headers {
            out.push_str(h);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if !head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// What reading a request head gave.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// The head, up to and including the blank line.
    Complete(Vec<u8>),
    /// Over [`MAX_REQUEST_HEAD`] bytes without the blank line.
    TooLarge,
    /// The client closed before the blank line (`true` if it sent anything).
    Closed(bool),
}

/// Reads until the blank line that ends the head (CRLF CRLF, or LF LF from
/// lenient clients, RFC 9112 2.2).
fn read_head(stream: &mut impl Read) -> io::Result<Head> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Ok(Head::Complete(head));
        }
        if head.len() > MAX_REQUEST_HEAD {
            return Ok(Head::TooLarge);
        }
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(Head::Closed(!head.is_empty()));
        }
        head.extend_from_slice(&chunk[..n]);
    }
}

/// Length of the head including its terminating blank line, if complete
/// and within the limit.
fn head_end(buf: &[u8]) -> Option<usize> {
    let window = &buf[..buf.len().min(MAX_REQUEST_HEAD)];
    let crlf = window
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = window.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether `s` is an HTTP token (RFC 9110 5.6.2).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Answers a complete request head. Returns the reply and whether it is
/// for a HEAD request.
fn route(head: &[u8], routes: &Routes) -> (Reply, bool) {
    let bad = |why: &str| (Reply::text(400, "Bad Request", format!("{why}\n")), false);
    let Ok(text) = std::str::from_utf8(head) else {
        return bad("request head is not UTF-8");
    };
    let mut lines = text.lines();
    let request_line = lines.next().unwrap_or_default();
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return bad("malformed request line");
    };
    if !is_token(method) || !target.starts_with('/') {
        return bad("malformed request line");
    }
    match version {
        "HTTP/1.1" | "HTTP/1.0" => {}
        v if v.starts_with("HTTP/") => {
            return (
                Reply::text(505, "HTTP Version Not Supported", "HTTP/1.x only\n"),
                false,
            );
        }
        _ => return bad("malformed request line"),
    }
    for line in lines.take_while(|l| !l.is_empty()) {
        // RFC 9112 5: a field line is name ":" value; no space before the colon.
        match line.split_once(':') {
            Some((name, _)) if is_token(name) => {}
            _ => return bad("malformed header field"),
        }
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            let mut reply = Reply::text(405, "Method Not Allowed", "only GET and HEAD\n");
            reply.headers.push("Allow: GET, HEAD");
            return (reply, false);
        }
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let reply = match path {
        "/metrics" => Reply {
            content_type: METRICS_CONTENT_TYPE,
            ..Reply::text(200, "OK", (routes.metrics)())
        },
        "/healthz" if (routes.draining)() => Reply::text(503, "Service Unavailable", "draining\n"),
        "/healthz" => Reply::text(200, "OK", "ok\n"),
        _ => Reply::text(404, "Not Found", "not found\n"),
    };
    (reply, head_only)
}

fn serve_connection(mut stream: TcpStream, routes: &Routes) -> io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let (reply, head_only) = match read_head(&mut stream) {
        Ok(Head::Complete(head)) => route(&head, routes),
        Ok(Head::TooLarge) => (
            Reply::text(
                431,
                "Request Header Fields Too Large",
                format!("request head over {MAX_REQUEST_HEAD} bytes\n"),
            ),
            false,
        ),
        Ok(Head::Closed(false)) => return Ok(()),
        Ok(Head::Closed(true)) => (
            Reply::text(400, "Bad Request", "incomplete request\n"),
            false,
        ),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            (
                Reply::text(
                    408,
                    "Request Timeout",
                    "request head not received in time\n",
                ),
                false,
            )
        }
        Err(e) => return Err(e),
    };
    finish(stream, &reply, head_only)
}

/// Sends `reply`, then closes gracefully: shut the write side and read what
/// the client still sends (briefly), so that unread request bytes do not
/// turn the close into a reset that destroys the reply in flight.
fn finish(mut stream: TcpStream, reply: &Reply, head_only: bool) -> io::Result<()> {
    stream.write_all(&reply.encode(head_only))?;
    stream.flush()?;
    stream.shutdown(Shutdown::Write)?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    while drained < 64 * 1024 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn serving(draining: Arc<AtomicBool>) -> AdminServer {
        let mut server = AdminServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let registry = relay_control::Registry::new();
        registry
            .counter("relay_flows_opened_total", "Flows opened.", &[])
            .add(3);
        server
            .spawn(
                move || registry.render(),
                move || draining.load(Ordering::SeqCst),
            )
            .unwrap();
        server
    }

    /// Sends `request` as is and returns (status, head, body).
    fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request).unwrap();
        let _ = s.shutdown(Shutdown::Write);
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        (status, head.to_string(), body.to_string())
    }

    fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        exchange(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: relay\r\nUser-Agent: test\r\n\r\n").as_bytes(),
        )
    }

    #[test]
    fn metrics_are_served_in_the_text_format() {
        let server = serving(Arc::default());
        let (status, head, body) = get(server.local_addr(), "/metrics");
        assert_eq!(status, 200, "{head}");
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(head.contains("Connection: close"), "{head}");
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        assert!(
            body.contains("# TYPE relay_flows_opened_total counter"),
            "{body}"
        );
        assert!(body.contains("relay_flows_opened_total 3"), "{body}");
        // A query string does not matter; HEAD gives the head only.
        assert_eq!(get(server.local_addr(), "/metrics?x=1").0, 200);
        let (status, head, body) = exchange(server.local_addr(), b"HEAD /metrics HTTP/1.0\r\n\r\n");
        assert_eq!(status, 200);
        assert!(!head.contains("Content-Length: 0"), "{head}");
        assert_eq!(body, "");
    }

    #[test]
    fn healthz_follows_the_draining_flag() {
        let draining = Arc::new(AtomicBool::new(false));
        let server = serving(Arc::clone(&draining));
        let (status, _, body) = get(server.local_addr(), "/healthz");
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        draining.store(true, Ordering::SeqCst);
        let (status, _, body) = get(server.local_addr(), "/healthz");
        assert_eq!((status, body.as_str()), (503, "draining\n"));
    }

    #[test]
    fn errors_have_their_status() {
        let server = serving(Arc::default());
        let addr = server.local_addr();
        assert_eq!(get(addr, "/").0, 404);
        assert_eq!(get(addr, "/metricsz").0, 404);
        let (status, head, _) =
            exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(status, 405);
        assert!(head.contains("Allow: GET, HEAD"), "{head}");
        for bad in [
            &b"hello\r\n\r\n"[..],
            b"GET /metrics\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"GET /metrics FTP/1.0\r\n\r\n",
            b"G(T /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\n",
        ] {
            assert_eq!(
                exchange(addr, bad).0,
                400,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(exchange(addr, b"GET /metrics HTTP/2.0\r\n\r\n").0, 505);
        // Bare LF line ends are accepted.
        assert_eq!(exchange(addr, b"GET /healthz HTTP/1.1\nHost: x\n\n").0, 200);
    }

    #[test]
    fn an_oversized_head_is_refused() {
        let server = serving(Arc::default());
        let addr = server.local_addr();
        let big = format!(
            "GET /metrics HTTP/1.1\r\nX-Filler: {}\r\n\r\n",
            "a".repeat(MAX_REQUEST_HEAD)
        );
        assert_eq!(exchange(addr, big.as_bytes()).0, 431);
        // Just under the limit is fine.
        let fits = format!(
            "GET /metrics HTTP/1.1\r\nX-Filler: {}\r\n\r\n",
            "a".repeat(MAX_REQUEST_HEAD - 60)
        );
        assert_eq!(exchange(addr, fits.as_bytes()).0, 200);
    }

    #[test]
    fn a_client_that_says_nothing_is_dropped_quietly() {
        let server = serving(Arc::default());
        let mut s = TcpStream::connect(server.local_addr()).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).unwrap();
        assert!(answer.is_empty());
    }

    #[test]
    fn shutdown_frees_the_port() {
        let mut server = serving(Arc::default());
        let addr = server.local_addr();
        assert_eq!(get(addr, "/healthz").0, 200);
        let started = Instant::now();
        server.shutdown();
        assert!(started.elapsed() < Duration::from_secs(5));
        let err = TcpStream::connect(addr).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        // Idempotent, and drop after shutdown is fine.
        server.shutdown();
    }

    #[test]
    fn spawn_twice_is_an_error() {
        let mut server = serving(Arc::default());
        assert!(matches!(
            server.spawn(String::new, || false),
            Err(Error::AlreadyServing("admin"))
        ));
    }

    #[test]
    fn head_end_finds_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
