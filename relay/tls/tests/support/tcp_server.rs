//! A tiny TCP server for interop tests: the TEST wires a loopback socket to
//! the sans-IO handshake driver and record layer (the crate itself never
//! touches a socket). One thread per connection; every read has a timeout.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use relay_tls::{
    HandshakeDriver, HandshakeInfo, HandshakeStatus, ReadStatus, RecordLayer, TlsServerConfig,
    TrafficState,
};
use rustls::pki_types::UnixTime;

/// What the server does with application data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Echo every byte. A line `server-keyupdate` first makes the server
    /// start a KeyUpdate with update_requested; a line `server-move` makes it
    /// export its state and continue on an imported copy.
    Echo,
    /// Answer one HTTP/1.1 request with [`HTTP_BODY`], then close_notify.
    Http,
}

/// The body the HTTP mode serves.
pub const HTTP_BODY: &str = "hello from relay-tls\n";

/// What the server saw.
#[derive(Default, Debug)]
pub struct Stats {
    pub handshakes: Mutex<Vec<HandshakeInfo>>,
    pub errors: Mutex<Vec<String>>,
    pub key_updates_received: AtomicUsize,
    pub key_updates_sent: AtomicUsize,
    pub moves: AtomicUsize,
    pub close_notify_received: AtomicUsize,
    /// Connections whose serving thread has returned (with or without error).
    pub finished: AtomicUsize,
}

impl Stats {
    pub fn infos(&self) -> Vec<HandshakeInfo> {
        self.handshakes.lock().unwrap().clone()
    }
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// Waits until `n` connections have been served to the end, so that
    /// what their threads record after the client is gone (an error, a
    /// close_notify) is in before a test reads it.
    #[track_caller]
    pub fn wait_finished(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.finished.load(Ordering::SeqCst) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {n} connections finished; errors: {:?}",
                self.finished.load(Ordering::SeqCst),
                self.errors()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

pub struct TestServer {
    pub port: u16,
    pub stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start(cfg: TlsServerConfig, mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (stats.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (cfg, stats) = (cfg.clone(), s2.clone());
                std::thread::spawn(move || {
                    if let Err(e) = serve(conn, &cfg, mode, &stats) {
                        stats.errors.lock().unwrap().push(e);
                    }
                    stats.finished.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            port,
            stats,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    mut sock: TcpStream,
    cfg: &TlsServerConfig,
    mode: Mode,
    stats: &Stats,
) -> Result<(), String> {
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    sock.set_nodelay(true).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut driver = HandshakeDriver::new(cfg).map_err(|e| e.to_string())?;
    loop {
        let n = sock
            .read(&mut buf)
            .map_err(|e| format!("handshake read: {e}"))?;
        if n == 0 {
            return Err("EOF during handshake".into());
        }
        let status = driver.handle_input(UnixTime::now(), &buf[..n]);
        let mut out = Vec::new();
        driver.poll_transmit(&mut out);
        sock.write_all(&out)
            .map_err(|e| format!("handshake write: {e}"))?;
        match status {
            Err(e) => return Err(format!("handshake: {e}")),
            Ok(HandshakeStatus::Complete) => break,
            Ok(HandshakeStatus::InProgress) => {}
        }
    }
    let est = driver.into_established().map_err(|e| e.to_string())?;
    stats.handshakes.lock().unwrap().push(est.info.clone());
    let mut layer = RecordLayer::new(est.traffic).map_err(|e| e.to_string())?;
    let mut inbuf = est.leftover;
    let mut request = Vec::new();
    loop {
        let mut pt = Vec::new();
        let r = layer.read(&inbuf, &mut pt);
        inbuf.drain(..r.consumed);
        stats
            .key_updates_received
            .fetch_add(r.key_updates, Ordering::SeqCst);
        let mut out = Vec::new();
        let write_secret = layer.traffic_state().write.secret.clone();
        match mode {
            Mode::Echo => {
                if pt.windows(16).any(|w| w == b"server-keyupdate") {
                    layer.initiate_key_update(true).map_err(|e| e.to_string())?;
                }
                if pt.windows(11).any(|w| w == b"server-move") {
                    // Checkpoint and continue on an imported copy, as an adopting relay would.
                    let bytes = layer.export();
                    layer =
                        RecordLayer::new(TrafficState::import(&bytes).map_err(|e| e.to_string())?)
                            .map_err(|e| e.to_string())?;
                    stats.moves.fetch_add(1, Ordering::SeqCst);
                }
                if !pt.is_empty() && !layer.traffic_state().sent_close_notify {
                    let _ = layer.seal_all(&pt, &mut out).map_err(|e| e.to_string())?;
                }
            }
            Mode::Http => {
                request.extend_from_slice(&pt);
                if request.windows(4).any(|w| w == b"\r\n\r\n")
                    && !layer.traffic_state().sent_close_notify
                {
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{HTTP_BODY}",
                        HTTP_BODY.len()
                    );
                    // 1400-byte records, as the relay would plan them for one MSS.
                    let plan = relay_tls::plan_records(resp.len(), 1400);
                    let _ = layer
                        .seal(resp.as_bytes(), &plan, &mut out)
                        .map_err(|e| e.to_string())?;
                    layer.close();
                }
            }
        }
        if r.status == ReadStatus::CloseNotify {
            stats.close_notify_received.fetch_add(1, Ordering::SeqCst);
            layer.close();
        }
        if layer.wants_transmit() {
            let _ = layer.poll_transmit(&mut out).map_err(|e| e.to_string())?;
        }
        if layer.traffic_state().write.secret != write_secret {
            stats.key_updates_sent.fetch_add(1, Ordering::SeqCst);
        }
        if !out.is_empty() {
            sock.write_all(&out).map_err(|e| format!("write: {e}"))?;
        }
        match r.status {
            ReadStatus::NeedMore { .. } => {}
            ReadStatus::CloseNotify => {
                let _ = sock.shutdown(Shutdown::Write);
                return Ok(());
            }
            other => return Err(format!("record layer: {other:?}")),
        }
        if layer.traffic_state().sent_close_notify && mode == Mode::Http {
            // Half-close and drain what the client still sends (its
            // close_notify), so the kernel does not answer with a reset.
            let _ = sock.shutdown(Shutdown::Write);
        }
        let n = match sock.read(&mut buf) {
            Ok(n) => n,
            Err(e) if layer.traffic_state().sent_close_notify => {
                let _ = e;
                return Ok(());
            }
            Err(e) => return Err(format!("read: {e}")),
        };
        if n == 0 {
            return Ok(());
        }
        inbuf.extend_from_slice(&buf[..n]);
    }
}
