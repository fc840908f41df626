//! The lab's real peers on 127.0.0.1, without namespaces: `lab-backend`
//! answered by a plain std HTTP client, and `lab-load` through a small
//! rustls terminator (this file) in front of `lab-backend`, byte-exact.

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use relay_lab::echo::PatternStream;
use relay_lab::http::{self, Response};
use relay_lab::peers::{BackendServer, body_stream, pattern_sha256};
use relay_lab::pki::{KeyKind, SERVER_NAME, TestPki};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};
use sha2::{Digest, Sha256};

const TIMEOUT: Duration = Duration::from_secs(30);

fn backend(extra: &[&str]) -> BackendServer {
    BackendServer::spawn(
        Path::new(env!("CARGO_BIN_EXE_lab-backend")),
        "127.0.0.1:0",
        extra,
    )
    .unwrap()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads one response; returns it with the body's length and SHA-256
/// (and the body itself when small).
fn read_answer(reader: &mut BufReader<TcpStream>) -> (Response, u64, String, Vec<u8>) {
    let response = http::read_response(reader).unwrap();
    let len = response.headers.content_length().unwrap().unwrap();
    let mut hasher = Sha256::new();
    let mut small = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    http::read_body(reader, len, &mut buf, |chunk| {
        hasher.update(chunk);
        if small.len() < 4096 {
            small.extend_from_slice(chunk);
        }
    })
    .unwrap();
    (response, len, hex(&hasher.finalize()), small)
}

#[test]
fn pattern_is_a_stream() {
    let whole = body_stream().take_vec(100_003);
    let mut parts = Vec::new();
    let mut stream = body_stream();
    for len in [0, 1, 7, 8, 9, 65_536, 34_442] {
        parts.extend_from_slice(&stream.take_vec(len));
    }
    assert_eq!(parts, whole);
    assert_eq!(pattern_sha256(100_003), hex(&Sha256::digest(&whole)));
    assert_eq!(pattern_sha256(0), hex(&Sha256::digest(b"")));
    assert_ne!(
        PatternStream::new(1).take_vec(64),
        PatternStream::new(2).take_vec(64)
    );
}

#[test]
fn bytes_health_and_404_on_one_keep_alive_connection() {
    let server = backend(&[]);
    let stream = connect(server.addr());
    let mut out = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    for n in [0u64, 1, 65_535, 65_536, 3_000_001] {
        write!(out, "GET /bytes/{n} HTTP/1.1\r\nHost: lab\r\n\r\n").unwrap();
        let (response, len, sha, _) = read_answer(&mut reader);
        assert_eq!(response.status, 200);
        assert_eq!(len, n);
        assert_eq!(sha, pattern_sha256(n), "body of /bytes/{n}");
    }
    // Pipelined: three requests in one write, three answers in order.
    out.write_all(
        b"GET /health HTTP/1.1\r\n\r\nGET /nothing HTTP/1.1\r\n\r\nGET /upload HTTP/1.1\r\n\r\n",
    )
    .unwrap();
    let (health, _, _, body) = read_answer(&mut reader);
    assert_eq!((health.status, body.as_slice()), (200, &b"ok\n"[..]));
    assert_eq!(read_answer(&mut reader).0.status, 404);
    assert_eq!(read_answer(&mut reader).0.status, 405);
    // Connection: close is honoured: the answer, then EOF.
    out.write_all(b"GET /bytes/10 HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (response, _, _, _) = read_answer(&mut reader);
    assert_eq!(response.headers.get("connection"), Some("close"));
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn upload_answers_hash_and_length() {
    let server = backend(&[]);
    let stream = connect(server.addr());
    let mut out = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    for (method, n) in [("POST", 1_000_003u64), ("PUT", 0), ("POST", 64 * 1024)] {
        write!(
            out,
            "{method} /upload HTTP/1.1\r\nContent-Length: {n}\r\n\r\n"
        )
        .unwrap();
        let mut pattern = body_stream();
        let mut left = n as usize;
        while left > 0 {
            let chunk = pattern.take_vec(left.min(10_000));
            out.write_all(&chunk).unwrap();
            left -= chunk.len();
        }
        let (response, _, _, body) = read_answer(&mut reader);
        assert_eq!(response.status, 200);
        assert_eq!(
            String::from_utf8(body).unwrap(),
            format!("{} {n}\n", pattern_sha256(n))
        );
    }
}

#[test]
fn malformed_request_is_400_and_close() {
    let server = backend(&[]);
    for bad in [
        &b"HELLO\r\n\r\n"[..],
        b"GET /x HTTP/1.1\r\nno colon here\r\n\r\n",
        b"POST /upload HTTP/1.1\r\nContent-Length: ten\r\n\r\n",
    ] {
        let mut stream = connect(server.addr());
        stream.write_all(bad).unwrap();
        let mut answer = Vec::new();
        // The server closes after its answer: read_to_end returns.
        stream.read_to_end(&mut answer).unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 400 "),
            "{:?} -> {answer:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn reset_after_cuts_the_body_with_an_rst() {
    let server = backend(&["--reset-after", "100000"]);
    let mut stream = connect(server.addr());
    stream
        .write_all(b"GET /bytes/1000000 HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    let error = loop {
        match stream.read(&mut buf) {
            Ok(0) => panic!("clean EOF after {} bytes, expected a reset", got.len()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
    // What did arrive is the head and a prefix of the pattern, at most N bytes.
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap();
    let body = &got[head_end..];
    assert!(body.len() <= 100_000, "{} body bytes", body.len());
    assert_eq!(body, &body_stream().take_vec(body.len())[..]);
    // The backend itself lives on.
    let mut again = BufReader::new(connect(server.addr()));
    again
        .get_mut()
        .write_all(b"GET /health HTTP/1.1\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut again).0.status, 200);
}

#[test]
fn backend_that_cannot_bind_is_reported() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let err = BackendServer::spawn(
        Path::new(env!("CARGO_BIN_EXE_lab-backend")),
        &taken.local_addr().unwrap().to_string(),
        &[],
    )
    .unwrap_err();
    assert!(err.to_string().contains("cannot listen"), "{err}");
}

/// A TLS terminator in front of a plain backend: one thread accepting, two
/// per connection (client to backend, backend to client) sharing the rustls
/// connection under a lock. Stops accepting on drop.
struct Terminator {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Terminator {
    fn start(pki: &TestPki, backend: SocketAddr) -> Terminator {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.cert_chain)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&pki.key).unwrap();
        let config = Arc::new(
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let config = config.clone();
                    std::thread::spawn(move || {
                        let _ = Self::relay(client, backend, config);
                    });
                }
            })
        };
        Terminator {
            addr,
            stop,
            acceptor: Some(acceptor),
        }
    }

    fn relay(client: TcpStream, backend: SocketAddr, config: Arc<ServerConfig>) -> io::Result<()> {
        client.set_read_timeout(Some(TIMEOUT))?;
        client.set_write_timeout(Some(TIMEOUT))?;
        let mut back = connect(backend);
        let tls = Arc::new(Mutex::new(
            ServerConnection::new(config).map_err(io::Error::other)?,
        ));
        let down = {
            let tls = tls.clone();
            let mut back = back.try_clone()?;
            let mut client = client.try_clone()?;
            std::thread::spawn(move || -> io::Result<()> {
                let result = Self::downstream(&tls, &mut back, &mut client);
                // A dying backend: the client sees the connection end too.
                if result.is_err() {
                    let _ = client.shutdown(Shutdown::Both);
                }
                result
            })
        };
        // Client to backend: decrypt and forward; handshake replies go out here.
        let mut client_in = client;
        let mut buf = vec![0; 64 * 1024];
        let mut plain = Vec::new();
        loop {
            let n = client_in.read(&mut buf)?;
            let mut data = &buf[..n];
            let closed = {
                let mut tls = tls.lock().unwrap();
                let mut peer_closed = false;
                loop {
                    if !data.is_empty() {
                        tls.read_tls(&mut data)?;
                    }
                    let io = tls.process_new_packets().map_err(io::Error::other)?;
                    let mut chunk = vec![0; io.plaintext_bytes_to_read()];
                    tls.reader().read_exact(&mut chunk)?;
                    plain.extend_from_slice(&chunk);
                    peer_closed |= io.peer_has_closed();
                    if data.is_empty() {
                        break;
                    }
                }
                while tls.wants_write() {
                    tls.write_tls(&mut client_in)?;
                }
                n == 0 || peer_closed
            };
            back.write_all(&plain)?;
            plain.clear();
            if closed {
                back.shutdown(Shutdown::Write)?;
                break;
            }
        }
        down.join().unwrap()
    }

    /// Backend to client: encrypt and send; close_notify at the backend's EOF.
    fn downstream(
        tls: &Mutex<ServerConnection>,
        back: &mut TcpStream,
        client: &mut TcpStream,
    ) -> io::Result<()> {
        let mut buf = vec![0; 64 * 1024];
        loop {
            let n = back.read(&mut buf)?;
            let mut tls = tls.lock().unwrap();
            if n == 0 {
                tls.send_close_notify();
            }
            let mut data = &buf[..n];
            loop {
                let taken = tls.writer().write(data)?;
                data = &data[taken..];
                while tls.wants_write() {
                    tls.write_tls(client)?;
                }
                if data.is_empty() {
                    break;
                }
            }
            if n == 0 {
                return client.shutdown(Shutdown::Write);
            }
        }
    }
}

impl Drop for Terminator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the acceptor, which then sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(30));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Runs lab-load; returns (exit success, stdout lines).
fn lab_load(ca: &Path, addr: SocketAddr, args: &[&str]) -> (bool, Vec<String>) {
    let out = Command::new(env!("CARGO_BIN_EXE_lab-load"))
        .args(["--connect", &addr.to_string(), "--ca"])
        .arg(ca)
        .args(["--timeout", "30"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (
        out.status.success(),
        stdout.lines().map(str::to_string).collect(),
    )
}

fn summary_field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        .to_string()
}

fn check_load(kind: KeyKind, upload: bool, connections: usize) {
    const BYTES: u64 = 1 << 20;
    let pki = TestPki::generate(kind).unwrap();
    let server = backend(&[]);
    let terminator = Terminator::start(&pki, server.addr());
    let mut args = vec![
        "--sni".to_string(),
        SERVER_NAME.to_string(),
        "--connections".to_string(),
        connections.to_string(),
        "--bytes".to_string(),
        BYTES.to_string(),
    ];
    if upload {
        args.push("--upload".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (success, lines) = lab_load(&pki.ca, terminator.addr, &args);
    let summary = lines.last().unwrap();
    assert!(success, "{lines:?}");
    assert_eq!(lines.len(), 1, "only the summary line: {lines:?}");
    assert_eq!(
        summary_field(summary, "connections"),
        connections.to_string()
    );
    assert_eq!(summary_field(summary, "ok"), connections.to_string());
    assert_eq!(summary_field(summary, "failed"), "0");
    assert_eq!(
        summary_field(summary, "bytes"),
        (connections as u64 * BYTES).to_string()
    );
    let rate: f64 = summary_field(summary, "MB/s").parse().unwrap();
    assert!(rate > 0.0);
}

#[test]
fn lab_load_downloads_through_tls_ecdsa() {
    check_load(KeyKind::EcdsaP256, false, 50);
}

#[test]
fn lab_load_uploads_through_tls_rsa() {
    check_load(KeyKind::Rsa2048, true, 50);
}

/// The lab's figure: 1000 connections held at once (about 4000 threads
/// with the terminator and the backend on this host).
#[test]
#[ignore = "heavy: 1000 connections and 1 GiB through a debug-build terminator"]
fn lab_load_holds_1000_connections() {
    check_load(KeyKind::EcdsaP256, false, 1000);
}

#[test]
fn lab_load_reports_each_failure() {
    let pki = TestPki::generate(KeyKind::EcdsaP256).unwrap();
    let server = backend(&[]);
    let terminator = Terminator::start(&pki, server.addr());
    // The certificate is not for this name: every handshake fails.
    let (success, lines) = lab_load(
        &pki.ca,
        terminator.addr,
        &["--sni", "other.lab", "--connections", "3", "--bytes", "10"],
    );
    assert!(!success);
    assert_eq!(lines.len(), 4, "{lines:?}");
    for (i, line) in lines[..3].iter().enumerate() {
        assert!(
            line.starts_with(&format!("failed conn={i} stage=handshake reason=")),
            "{line}"
        );
    }
    assert!(lines[3].starts_with("connections=3 ok=0 failed=3 bytes=0 "));
    // And a dying backend is a failed body, not a hang.
    let dying = backend(&["--reset-after", "5000"]);
    let terminator = Terminator::start(&pki, dying.addr());
    let (success, lines) = lab_load(
        &pki.ca,
        terminator.addr,
        &[
            "--sni",
            SERVER_NAME,
            "--connections",
            "2",
            "--bytes",
            "100000",
        ],
    );
    assert!(!success);
    assert!(
        lines[0].starts_with("failed conn=0 stage=response"),
        "{lines:?}"
    );
    assert!(
        lines[2].starts_with("connections=2 ok=0 failed=2 "),
        "{lines:?}"
    );
}
