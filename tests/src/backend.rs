//! The lab's origin server (the `lab-backend` binary): HTTP/1.1 over plain
//! TCP, one thread per connection, keep-alive.
//!
//! | route | answer |
//! |-------|--------|
//! | `GET /bytes/<N>` | N bytes of [`crate::peers::body_stream`], `Content-Length: N` |
//! | `POST` or `PUT /upload` | reads the body, answers `<sha256 hex> <length>\n` |
//! | `GET /health` | `ok\n` |
//! | anything else | 404 (405 for a known path with another method) |
//! | malformed request | 400 and close |
//!
//! With `reset_after`, every response body is cut after that many bytes and
//! the connection is closed with `SO_LINGER` 0, which sends an RST: a dying
//! backend.
//!
//! [`serve_echo`] is the other mode (`lab-backend --echo`): no HTTP, every
//! connection gets back exactly the bytes it sends, and its FIN once the
//! client's came; for interactive clients (`openssl s_client`) through the
//! relay.

use std::io::{self, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::http::{self, HttpError, Request};
use crate::peers::{CHUNK, body_stream};

/// How the backend behaves.
#[derive(Clone, Debug)]
pub struct BackendConfig {
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Cut every response body after this many bytes with an RST.
    pub reset_after: Option<u64>,
    /// A connection idle (or stalled) this long is closed.
    pub idle_timeout: Duration,
    /// Log every request on stderr.
    pub log_requests: bool,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            max_connections: 4096,
            reset_after: None,
            idle_timeout: Duration::from_secs(60),
            log_requests: false,
        }
    }
}

/// Stack of each connection thread: the handler keeps its buffers on the heap.
const CONNECTION_STACK: usize = 256 * 1024;

/// Serves `listener` until accepting fails for good. Each connection gets a
/// thread; per-connection errors are the client's and only logged.
pub fn serve(listener: TcpListener, config: BackendConfig) -> io::Result<()> {
    let config = Arc::new(config);
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            // A client that gave up before accept, or a passing fd shortage:
            // the listener itself is still fine.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                ) || e.raw_os_error() == Some(24) =>
            {
                eprintln!("lab-backend: accept: {e}");
                continue;
            }
            Err(e) => return Err(e),
        };
        if active.fetch_add(1, Ordering::AcqRel) >= config.max_connections {
            active.fetch_sub(1, Ordering::AcqRel);
            refuse(stream);
            continue;
        }
        let slot = Slot(active.clone());
        let config = config.clone();
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || {
                let _slot = slot;
                let peer = stream
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                if let Err(e) = handle(stream, &config)
                    && config.log_requests
                {
                    eprintln!("lab-backend: {peer}: {e}");
                }
            });
        if let Err(e) = spawned {
            // The closure (and with it the stream and the slot) is dropped.
            eprintln!("lab-backend: cannot start a connection thread: {e}");
        }
    }
}

/// Serves `listener` as a TCP echo server until accepting fails for good:
/// each connection (a thread) gets back what it sends, as it arrives, and a
/// FIN after the client's. A connection idle for `idle_timeout` is closed.
pub fn serve_echo(listener: TcpListener, idle_timeout: Duration) -> io::Result<()> {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                ) || e.raw_os_error() == Some(24) =>
            {
                eprintln!("lab-backend: accept: {e}");
                continue;
            }
            Err(e) => return Err(e),
        };
        let spawned = std::thread::Builder::new()
            .name("echo".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || {
                let _ = echo(stream, idle_timeout);
            });
        if let Err(e) = spawned {
            eprintln!("lab-backend: cannot start a connection thread: {e}");
        }
    }
}

fn echo(mut stream: TcpStream, idle_timeout: Duration) -> io::Result<()> {
    use std::io::Read;
    stream.set_read_timeout(Some(idle_timeout))?;
    stream.set_write_timeout(Some(idle_timeout))?;
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return stream.shutdown(Shutdown::Write);
        }
        stream.write_all(&buf[..n])?;
    }
}

/// Releases a connection slot when the connection's thread ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn refuse(mut stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = stream.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Http(#[from] HttpError),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

fn write_head(out: &mut impl Write, status: &str, length: u64, keep_alive: bool) -> io::Result<()> {
    let connection = if keep_alive {
        ""
    } else {
        "Connection: close\r\n"
    };
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Length: {length}\r\nContent-Type: application/octet-stream\r\n{connection}\r\n"
    )
}

fn handle(stream: TcpStream, config: &BackendConfig) -> Result<(), ConnError> {
    stream.set_read_timeout(Some(config.idle_timeout))?;
    stream.set_write_timeout(Some(config.idle_timeout))?;
    stream.set_nodelay(true)?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(CHUNK, stream);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let request = match http::read_request(&mut reader) {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(()),
            Err(e @ (HttpError::Malformed(_) | HttpError::HeadTooLong)) => {
                let body = format!("{e}\n");
                write_head(&mut out, "400 Bad Request", body.len() as u64, false)?;
                out.write_all(body.as_bytes())?;
                let _ = out.shutdown(Shutdown::Write);
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        if config.log_requests {
            eprintln!("lab-backend: {} {}", request.method, request.target);
        }
        let body_len = match request.headers.content_length() {
            Ok(len) => len.unwrap_or(0),
            Err(e) => {
                let status = match e {
                    HttpError::Unsupported(_) => "501 Not Implemented",
                    _ => "400 Bad Request",
                };
                write_head(&mut out, status, 0, false)?;
                let _ = out.shutdown(Shutdown::Write);
                return Err(e.into());
            }
        };
        let keep_alive = request.keep_alive();
        let reset = respond(
            &request,
            body_len,
            keep_alive,
            &mut reader,
            &mut out,
            &mut buf,
            config,
        )?;
        if reset {
            // SO_LINGER 0: close() sends an RST and drops unsent data.
            socket2::SockRef::from(&out).set_linger(Some(Duration::ZERO))?;
            return Ok(());
        }
        if !keep_alive {
            out.flush()?;
            let _ = out.shutdown(Shutdown::Write);
            return Ok(());
        }
    }
}

/// Answers one request whose body (`body_len` bytes) is still unread.
/// Returns whether the connection must now be reset.
fn respond(
    request: &Request,
    body_len: u64,
    keep_alive: bool,
    reader: &mut BufReader<TcpStream>,
    out: &mut TcpStream,
    buf: &mut [u8],
    config: &BackendConfig,
) -> Result<bool, ConnError> {
    let method = request.method.as_str();
    let path = request.target.split('?').next().unwrap_or("");
    match (method, path) {
        ("POST" | "PUT", "/upload") => {
            let mut hasher = Sha256::new();
            http::read_body(reader, body_len, buf, |chunk| hasher.update(chunk))?;
            let body = format!("{} {body_len}\n", hex(&hasher.finalize()));
            write_head(out, "200 OK", body.len() as u64, keep_alive)?;
            Ok(send_limited(
                out,
                body.as_bytes(),
                &mut 0,
                config.reset_after,
            )?)
        }
        (_, "/upload") => simple(
            reader,
            body_len,
            out,
            buf,
            "405 Method Not Allowed",
            keep_alive,
        ),
        ("GET" | "HEAD", "/health") => {
            http::read_body(reader, body_len, buf, |_| {})?;
            write_head(out, "200 OK", 3, keep_alive)?;
            if method == "HEAD" {
                return Ok(false);
            }
            Ok(send_limited(out, b"ok\n", &mut 0, config.reset_after)?)
        }
        ("GET" | "HEAD", p) if p.starts_with("/bytes/") => {
            let Ok(n) = p["/bytes/".len()..].parse::<u64>() else {
                return simple(reader, body_len, out, buf, "404 Not Found", keep_alive);
            };
            http::read_body(reader, body_len, buf, |_| {})?;
            write_head(out, "200 OK", n, keep_alive)?;
            if method == "HEAD" {
                return Ok(false);
            }
            let mut pattern = body_stream();
            let mut left = n;
            let mut sent = 0;
            while left > 0 {
                let len = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                pattern.fill(&mut buf[..len]);
                if send_limited(out, &buf[..len], &mut sent, config.reset_after)? {
                    return Ok(true);
                }
                left -= len as u64;
            }
            Ok(false)
        }
        _ => simple(reader, body_len, out, buf, "404 Not Found", keep_alive),
    }
}

/// Drains the request body and answers `status` with an empty body.
fn simple(
    reader: &mut BufReader<TcpStream>,
    body_len: u64,
    out: &mut TcpStream,
    buf: &mut [u8],
    status: &str,
    keep_alive: bool,
) -> Result<bool, ConnError> {
    http::read_body(reader, body_len, buf, |_| {})?;
    write_head(out, status, 0, keep_alive)?;
    Ok(false)
}

/// Writes `data` as part of a response body of which `sent` bytes went out
/// already; with a `limit`, stops at it and returns true (reset now).
fn send_limited(
    out: &mut TcpStream,
    data: &[u8],
    sent: &mut u64,
    limit: Option<u64>,
) -> io::Result<bool> {
    let allowed = match limit {
        Some(limit) => usize::try_from(limit.saturating_sub(*sent))
            .unwrap_or(usize::MAX)
            .min(data.len()),
        None => data.len(),
    };
    out.write_all(&data[..allowed])?;
    *sent += allowed as u64;
    Ok(limit.is_some_and(|limit| *sent >= limit))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
