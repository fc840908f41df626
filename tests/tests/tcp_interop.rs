//! relay-tcp against the Linux kernel's TCP, through the real datapath.
//!
//! In the lab, relay-a runs the engine over AF_XDP (steer program attached):
//! passively, a kernel client in the client namespace connects to VIP:443;
//! actively, the engine connects from the back-side address to a kernel
//! server in the backend namespace. Each exchange moves 100 MiB each way at
//! once, hashed at both ends, optionally over a link that loses and
//! reorders frames (both directions, seeded; the lab kernel has no netem),
//! and optionally moves the connection to a fresh engine instance through
//! a serialized checkpoint half way.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::time::Duration;

use relay_datapath::impair::{Impaired, Impairment};
use relay_datapath::netns::{self, NetnsGuard};
use relay_datapath::{AfXdpConfig, AfXdpDevice, AttachMode, neighbour};
use relay_lab::tcp_host::TcpHost;
use relay_lab::{Lab, Node, addr, unique_prefix};
use relay_tcp::{Checkpoint, Config, Connection, Event, FourTuple, IsnSecret, Listener, State};
use sha2::{Digest, Sha256};

const TRANSFER: usize = 100 << 20;
const SEED_TO_ENGINE: u64 = 0x5eed_0001;
const SEED_FROM_ENGINE: u64 = 0x5eed_0002;
const BACKEND_PORT: u16 = 9000;
const LOCAL_BACK_PORT: u16 = 40001;

/// Byte `i` of the stream `seed`, addressable anywhere (re-supply after import).
fn pattern_at(seed: u64, offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| {
            let mut z = seed ^ ((i / 8) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> ((i % 8) * 8)) as u8
        })
        .collect()
}

fn expected_sha(seed: u64, total: usize) -> String {
    let mut h = Sha256::new();
    let mut at = 0;
    while at < total {
        let n = (total - at).min(1 << 20);
        h.update(pattern_at(seed, at, n));
        at += n;
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn engine_config() -> Config {
    Config {
        recv_buffer: 1 << 20,
        send_buffer: 1 << 20,
        ..Config::default()
    }
}

/// The kernel end: send `TRANSFER` bytes of `send_seed` while reading to
/// EOF; returns the SHA-256 of what it read.
fn kernel_exchange(stream: TcpStream) -> Result<(String, usize), String> {
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let sender = std::thread::spawn(move || -> Result<(), String> {
        let mut at = 0;
        while at < TRANSFER {
            let n = (TRANSFER - at).min(256 * 1024);
            writer
                .write_all(&pattern_at(SEED_TO_ENGINE, at, n))
                .map_err(|e| format!("kernel send at {at}: {e}"))?;
            at += n;
        }
        writer.shutdown(Shutdown::Write).map_err(|e| e.to_string())
    });
    let mut reader = stream;
    reader
        .set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| format!("kernel read after {total}: {e}"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n;
    }
    sender.join().map_err(|_| "sender panicked".to_string())??;
    Ok((hex(&h.finalize()), total))
}

/// The engine-side application: reads, hashes and releases everything at
/// once; sends `TRANSFER` bytes; closes when all is queued.
#[derive(Default)]
struct App {
    hasher: Sha256,
    received: usize,
    /// Stream offset of the next byte to queue.
    queued: usize,
    closed: bool,
    peer_closed: bool,
    failed: Option<Event>,
    migrated: bool,
}

impl App {
    fn drive(&mut self, conn: &mut Connection) {
        loop {
            let (a, b) = conn.readable();
            let n = a.len() + b.len();
            if n == 0 {
                break;
            }
            self.hasher.update(a);
            self.hasher.update(b);
            conn.consume(n);
            conn.release(n).expect("release what was read");
            self.received += n;
        }
        while let Some(event) = conn.poll_event() {
            match event {
                Event::PeerClosed => self.peer_closed = true,
                Event::Reset | Event::TimedOut => self.failed = Some(event),
                _ => {}
            }
        }
        while self.queued < TRANSFER {
            let n = (TRANSFER - self.queued)
                .min(64 * 1024)
                .min(conn.send_capacity());
            if n == 0 {
                break;
            }
            let accepted = conn.send(&pattern_at(SEED_FROM_ENGINE, self.queued, n));
            self.queued += accepted;
            if accepted < n {
                break;
            }
        }
        if self.queued == TRANSFER && !self.closed {
            conn.close();
            self.closed = true;
        }
    }

    fn done(&self, conn: Option<&Connection>) -> bool {
        self.received == TRANSFER
            && self.peer_closed
            && conn.is_none_or(|c| matches!(c.state(), State::TimeWait | State::Closed))
    }
}

/// Moves `tuple`'s connection to a fresh engine instance through the bytes
/// of a checkpoint, and re-supplies the unacknowledged stream.
fn migrate<D: relay_datapath::Device>(host: &mut TcpHost<D>, tuple: FourTuple, app: &mut App) {
    let conn = host.conns.remove(&tuple).expect("connection to migrate");
    let bytes = conn.export_checkpoint().expect("export").to_bytes();
    drop(conn);
    let ckpt = Checkpoint::from_bytes(&bytes).expect("checkpoint decodes");
    let imported = Connection::import(engine_config(), &ckpt, host.now(), Duration::from_millis(5))
        .expect("import");
    // The send stream starts at ISS + 1; re-supply from snd_una.
    app.queued = (ckpt.snd_una - (ckpt.iss + 1)) as usize;
    app.closed = false;
    app.migrated = true;
    host.insert(imported);
}

enum Side {
    /// Kernel client -> VIP:443, engine listens.
    Passive,
    /// Engine connects from the back-side address to a kernel server.
    Active,
}

fn run_exchange(side: Side, impairment: Option<Impairment>, migrate_half_way: bool) {
    let lab = Lab::up(&unique_prefix("tcp")).expect("lab up (run as root)");
    let (iface, kernel_node) = match side {
        Side::Passive => ("front", Node::Client),
        Side::Active => ("back", Node::Backend),
    };

    // The engine, in relay-a.
    let _enter = NetnsGuard::enter(&lab.ns(Node::RelayA)).expect("enter relay-a");
    let mut steer = relay_lab::lab_steer_program().expect("load steer program");
    steer.attach(iface, AttachMode::Driver).expect("attach");
    let device = AfXdpDevice::open(&AfXdpConfig::new(iface, 0)).expect("AF_XDP");
    steer
        .register_socket(0, &device.socket_fd())
        .expect("register");
    let device = Impaired::new(device, impairment.unwrap_or_default());
    let local_mac = lab.mac(Node::RelayA, iface).expect("MAC");
    let mut host = TcpHost::new(device, local_mac);
    let secret = IsnSecret::new([7; 16]);

    // The kernel end, in its own namespace, once the engine's side is up
    // (earlier SYNs would meet relay-a's kernel, which has the VIP).
    // The kernel side tells the engine side which port it connected from
    // (passive) or that it listens (active).
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<u16>();
    let kernel = match side {
        Side::Passive => netns::run_in(
            &lab.ns(kernel_node),
            move || -> Result<(String, usize), String> {
                let target = std::net::SocketAddr::from((addr::VIP, addr::VIP_PORT));
                // One connection attempt: the kernel retransmits its SYN
                // through lost frames; a second attempt would leave the
                // engine with a connection the client has abandoned.
                let stream = TcpStream::connect_timeout(&target, Duration::from_secs(60))
                    .map_err(|e| format!("connect to {target}: {e}"))?;
                let port = stream.local_addr().map_err(|e| e.to_string())?.port();
                let _ = ready_tx.send(port);
                kernel_exchange(stream)
            },
        ),
        Side::Active => netns::run_in(
            &lab.ns(kernel_node),
            move || -> Result<(String, usize), String> {
                let listener =
                    TcpListener::bind((addr::BACKEND, BACKEND_PORT)).map_err(|e| e.to_string())?;
                let _ = ready_tx.send(BACKEND_PORT);
                let (stream, _) = listener.accept().map_err(|e| e.to_string())?;
                kernel_exchange(stream)
            },
        ),
    }
    .expect("kernel thread");

    let tuple = match side {
        Side::Passive => {
            let local = SocketAddrV4::new(addr::VIP, addr::VIP_PORT);
            host.listen(
                local,
                Listener::new(engine_config(), local, secret, 64).expect("listener"),
            );
            None
        }
        Side::Active => {
            let mac =
                neighbour::resolve(addr::BACKEND, Duration::from_secs(30)).expect("backend MAC");
            host.add_neighbour(addr::BACKEND, mac);
            let tuple = FourTuple::new(
                SocketAddrV4::new(addr::BACK_SHARED, LOCAL_BACK_PORT),
                SocketAddrV4::new(addr::BACKEND, BACKEND_PORT),
            );
            // The kernel server must be listening before the SYN goes out.
            ready_rx
                .recv_timeout(Duration::from_secs(60))
                .expect("backend server listening");
            host.insert(
                Connection::connect(engine_config(), tuple, &secret, host.now()).expect("connect"),
            );
            Some(tuple)
        }
    };

    let mut app = App::default();
    let mut tuple = tuple;
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        host.poll().expect("poll");
        if tuple.is_none()
            && let Ok(port) = ready_rx.try_recv()
        {
            tuple = Some(FourTuple::new(
                SocketAddrV4::new(addr::VIP, addr::VIP_PORT),
                SocketAddrV4::new(addr::CLIENT, port),
            ));
        }
        if let Some(t) = tuple {
            if let Some(conn) = host.conns.get_mut(&t) {
                app.drive(conn);
            }
            if migrate_half_way && !app.migrated && app.received >= TRANSFER / 2 {
                migrate(&mut host, t, &mut app);
                if let Some(conn) = host.conns.get_mut(&t) {
                    app.drive(conn);
                }
            }
        }
        host.transmit().expect("transmit");
        assert!(
            app.failed.is_none(),
            "engine connection failed: {:?}",
            app.failed
        );
        if app.done(tuple.and_then(|t| host.conns.get(&t))) && kernel.is_finished() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "exchange did not finish: received {} queued {}",
            app.received,
            app.queued
        );
        host.wait(Duration::from_millis(2)).expect("wait");
    }

    let (kernel_sha, kernel_bytes) = kernel
        .join()
        .expect("kernel thread")
        .expect("kernel side")
        .expect("kernel exchange");
    assert_eq!(kernel_bytes, TRANSFER, "kernel received everything");
    assert_eq!(
        kernel_sha,
        expected_sha(SEED_FROM_ENGINE, TRANSFER),
        "engine -> kernel byte-exact"
    );
    assert_eq!(app.received, TRANSFER);
    assert_eq!(
        hex(&app.hasher.clone().finalize()),
        expected_sha(SEED_TO_ENGINE, TRANSFER),
        "kernel -> engine byte-exact"
    );
    assert_eq!(host.malformed, 0);
    if impairment.is_some() {
        let done = host.device().impair_stats;
        assert!(
            done.rx_dropped > 0 && done.tx_dropped > 0 && done.reordered > 0,
            "the link misbehaved: {done:?}"
        );
    }
    assert_eq!(app.migrated, migrate_half_way);
    // The relay's kernel never took part (no resets from it).
    let counters = lab.kernel_tcp_counters(Node::RelayA).expect("counters");
    let out_rsts = counters
        .iter()
        .find(|(n, _)| n == "OutRsts")
        .map_or(0, |(_, v)| *v);
    assert_eq!(out_rsts, 0, "relay-a's kernel sent resets");
}

#[test]
fn engine_accepts_a_kernel_client_100_mib_each_way() {
    run_exchange(Side::Passive, None, false);
}

#[test]
fn engine_connects_to_a_kernel_server_100_mib_each_way() {
    run_exchange(Side::Active, None, false);
}

#[test]
fn engine_and_kernel_client_over_a_lossy_reordering_link_with_a_checkpoint_move() {
    run_exchange(
        Side::Passive,
        Some(Impairment::symmetric(1.0, 2.0, 11)),
        true,
    );
}

#[test]
fn engine_and_kernel_server_over_a_lossy_reordering_link_with_a_checkpoint_move() {
    run_exchange(
        Side::Active,
        Some(Impairment::symmetric(1.0, 2.0, 12)),
        true,
    );
}
