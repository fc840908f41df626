//! The datapath demonstration: a kernel TCP client in the client namespace
//! talks to VIP:443; relay-a receives its frames in userspace through the XDP
//! steer program and AF_XDP and answers with frames built by relay-wire.
//! Used by `cargo xtask demo` (prints the report) and by the lab tests
//! (assert on it).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use relay_datapath::steer::VerdictCounts;
use relay_datapath::{
    AfXdpConfig, AfXdpDevice, AttachMode, Device, DeviceStats, SteerProgram, netns,
};
use sha2::{Digest, Sha256};

use crate::responder::{EchoResponder, ResponderStats};
use crate::{Lab, LabError, Node, addr};

/// Everything the exchange measured.
#[derive(Debug)]
pub struct EchoReport {
    /// Bytes the client sent.
    pub bytes: usize,
    /// SHA-256 of what the client sent.
    pub sent_sha256: String,
    /// SHA-256 of what the client received back.
    pub received_sha256: String,
    /// Bytes the client received.
    pub received_bytes: usize,
    /// From the client's connect to its last byte received.
    pub client_elapsed: Duration,
    /// What the userspace responder saw and did.
    pub responder: ResponderStats,
    /// XDP verdicts on relay-a's front interface during the exchange.
    pub verdicts: VerdictCounts,
    /// relay-a's AF_XDP socket counters.
    pub device: DeviceStats,
    /// relay-a's kernel TCP counters that changed during the exchange.
    pub relay_kernel_tcp_delta: Vec<(String, i64)>,
}

/// Errors of the exchange, with the side that failed.
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    /// Building or querying the lab failed.
    #[error("lab: {0}")]
    Lab(#[from] LabError),
    /// The relay side (XDP, AF_XDP) failed.
    #[error("relay-a datapath: {0}")]
    Datapath(#[from] relay_datapath::DeviceError),
    /// The kernel client failed.
    #[error("client: {0}")]
    Client(String),
    /// A thread died.
    #[error("{0} thread panicked")]
    Panicked(&'static str),
}

/// Deterministic test data (xorshift), so both ends can be checked.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// An endless deterministic byte stream, generated a word at a time so that
/// both ends of a multi-gigabyte transfer can produce or check it without
/// storing it: xorshift64* (Vigna 2014), each 64-bit output word emitted
/// little-endian. The same seed always gives the same bytes, and a shorter
/// stream is a prefix of a longer one.
#[derive(Clone, Debug)]
pub struct PatternStream {
    state: u64,
    /// The current word and how many of its bytes are already emitted.
    word: [u8; 8],
    used: usize,
}

impl PatternStream {
    /// The stream of `seed` (any value; zero is mapped to a non-zero state).
    pub fn new(seed: u64) -> PatternStream {
        let state = seed ^ 0x9e37_79b9_7f4a_7c15;
        PatternStream {
            state: if state == 0 { 1 } else { state },
            word: [0; 8],
            used: 8,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes()
    }

    /// Writes the next `buf.len()` bytes of the stream into `buf`.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let pending = (8 - self.used).min(buf.len());
        let (head, rest) = buf.split_at_mut(pending);
        head.copy_from_slice(&self.word[self.used..self.used + pending]);
        self.used += pending;
        let mut words = rest.chunks_exact_mut(8);
        for chunk in &mut words {
            chunk.copy_from_slice(&self.next_word());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            self.word = self.next_word();
            tail.copy_from_slice(&self.word[..tail.len()]);
            self.used = tail.len();
        }
    }

    /// The next `len` bytes of the stream.
    pub fn take_vec(&mut self, len: usize) -> Vec<u8> {
        let mut data = vec![0; len];
        self.fill(&mut data);
        data
    }
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct RelaySide {
    responder: ResponderStats,
    verdicts: VerdictCounts,
    device: DeviceStats,
}

/// Runs the exchange of `bytes` bytes in `lab` and reports.
pub fn run_echo_exchange(
    lab: &Lab,
    bytes: usize,
    timeout: Duration,
) -> Result<EchoReport, EchoError> {
    let kernel_before = lab.kernel_tcp_counters(Node::RelayA)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();

    let relay = {
        let stop = stop.clone();
        netns::run_in(
            &lab.ns(Node::RelayA),
            move || -> Result<RelaySide, relay_datapath::DeviceError> {
                let setup =
                    || -> Result<(SteerProgram, AfXdpDevice), relay_datapath::DeviceError> {
                        let mut steer = crate::lab_steer_program()?;
                        steer.attach("front", AttachMode::Driver)?;
                        let device = AfXdpDevice::open(&AfXdpConfig::new("front", 0))?;
                        steer.register_socket(0, &device.socket_fd())?;
                        Ok((steer, device))
                    };
                let (steer, mut device) = match setup() {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return Err(e);
                    }
                };
                let verdicts_before = steer.verdicts()?;
                let _ = ready_tx.send(Ok(()));
                let mut responder = EchoResponder::new(addr::VIP, addr::VIP_PORT);
                let stats =
                    responder.run(&mut device, timeout, |_| stop.load(Ordering::Relaxed))?;
                // Let the last ACK of the close arrive before counting.
                let _ = responder.poll(&mut device);
                Ok(RelaySide {
                    responder: stats,
                    verdicts: steer.verdicts()?.since(&verdicts_before),
                    device: device.stats(),
                })
            },
        )?
    };

    let ready = ready_rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| EchoError::Client("relay-a did not come up within 30 s".into()))?;
    if let Err(e) = ready {
        stop.store(true, Ordering::Relaxed);
        let _ = relay.join();
        return Err(EchoError::Client(format!("relay-a setup failed: {e}")));
    }

    let data = pattern(bytes, bytes as u64);
    let sent_sha256 = sha256_hex(&data);
    let client_started = std::time::Instant::now();
    let client = netns::run_in(&lab.ns(Node::Client), move || {
        client_exchange(data, timeout)
    })?;
    let client_result = client.join().map_err(|_| EchoError::Panicked("client"))?;
    let client_elapsed = client_started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let relay_side = relay
        .join()
        .map_err(|_| EchoError::Panicked("relay-a"))???;
    let received = client_result?.map_err(EchoError::Client)?;

    let kernel_after = lab.kernel_tcp_counters(Node::RelayA)?;
    let relay_kernel_tcp_delta = kernel_after
        .iter()
        .filter_map(|(name, after)| {
            let before = kernel_before
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| *v)
                .unwrap_or(0);
            // CurrEstab is a gauge; the rest are counters.
            (after != &before).then(|| (name.clone(), after - before))
        })
        .collect();

    Ok(EchoReport {
        bytes,
        sent_sha256,
        received_sha256: sha256_hex(&received),
        received_bytes: received.len(),
        client_elapsed,
        responder: relay_side.responder,
        verdicts: relay_side.verdicts,
        device: relay_side.device,
        relay_kernel_tcp_delta,
    })
}

/// The kernel client: connect, send everything while reading the echo,
/// half-close, read to EOF. Returns what came back.
fn client_exchange(data: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, String> {
    let target = SocketAddr::from((addr::VIP, addr::VIP_PORT));
    let stream = TcpStream::connect_timeout(&target, Duration::from_secs(30))
        .map_err(|e| format!("connect to {target}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let sender = std::thread::spawn(move || -> Result<(), String> {
        for chunk in data.chunks(16 * 1024) {
            writer.write_all(chunk).map_err(|e| format!("send: {e}"))?;
        }
        writer
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))
    });
    let mut received = Vec::new();
    let mut reader = stream;
    reader
        .read_to_end(&mut received)
        .map_err(|e| format!("receive after {} bytes: {e}", received.len()))?;
    sender
        .join()
        .map_err(|_| "sender thread panicked".to_string())??;
    Ok(received)
}
