//! Engine benchmark: one core, in memory, no loss.
//!
//! Two connections are wired back to back; every segment one emits is handed
//! straight to the other (`engine` rows), or emitted to bytes with checksums
//! and parsed again first (`engine+wire` rows). Prints segments/s and MB/s
//! of payload, then checkpoint and delta sizes and their cost.
//!
//! `cargo bench --bench engine` (release profile). `RELAY_TCP_BENCH_MIB`
//! sets the transfer size (default 512 MiB).

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant as WallClock};

use relay_tcp::{
    Checkpoint, Config, Connection, FourTuple, Instant, IsnSecret, Listener, ReleaseMode,
};
use relay_wire::{TcpPacket, TcpRepr};

const A: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 40000);
const B: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 443);

fn config(release: ReleaseMode) -> Config {
    Config {
        release,
        send_buffer: 4 << 20,
        recv_buffer: 4 << 20,
        ..Config::default()
    }
}

/// Hands a segment to `to`, optionally through the wire format.
fn deliver(
    to: &mut Connection,
    now: Instant,
    r: &TcpRepr<'_>,
    wire: bool,
    frame: &mut Vec<u8>,
    src: SocketAddrV4,
    dst: SocketAddrV4,
) {
    if wire {
        frame.clear();
        frame.resize(r.buffer_len(), 0);
        let mut p = TcpPacket::new_unchecked(&mut frame[..]);
        r.emit(&mut p, *src.ip(), *dst.ip());
        let p = TcpPacket::new_checked(&frame[..]).expect("emitted packet");
        let parsed = TcpRepr::parse(&p, *src.ip(), *dst.ip(), true).expect("valid packet");
        to.handle_segment(now, &parsed);
    } else {
        to.handle_segment(now, r);
    }
}

fn pair(now: Instant, release: ReleaseMode) -> (Connection, Connection) {
    let secret = IsnSecret::new([5; 16]);
    let mut a =
        Connection::connect(config(release), FourTuple::new(A, B), &secret, now).expect("config");
    let mut l = Listener::new(config(release), B, secret.clone(), 4).expect("config");
    let mut buf = vec![0u8; 65536];
    let syn = a.poll_transmit(now, &mut buf).expect("SYN");
    l.handle_segment(now, FourTuple::new(B, A), &syn);
    let (_, synack) = l.poll_transmit(now, &mut buf).expect("SYN-ACK");
    a.handle_segment(now, &synack);
    let ack = a.poll_transmit(now, &mut buf).expect("ACK");
    l.handle_segment(now, FourTuple::new(B, A), &ack);
    let (_, b) = l.accept().expect("established");
    (a, b)
}

struct Result {
    data_segments: u64,
    acks: u64,
    bytes: u64,
    elapsed: Duration,
}

/// Moves `total` bytes from a to b.
fn transfer(total: u64, wire: bool) -> Result {
    let mut now = Instant::from_secs(1);
    let (mut a, mut b) = pair(now, ReleaseMode::OnDelivery);
    let chunk = vec![0x5a_u8; 256 * 1024];
    let mut sink = vec![0u8; 256 * 1024];
    let mut buf = vec![0u8; 65536];
    let mut buf_b = vec![0u8; 65536];
    let mut frame = Vec::with_capacity(2048);
    let mut sent = 0u64;
    let mut received = 0u64;
    let mut data_segments = 0u64;
    let mut acks = 0u64;
    let started = WallClock::now();
    while received < total {
        if sent < total {
            let n = (total - sent).min(chunk.len() as u64) as usize;
            sent += a.send(&chunk[..n]) as u64;
        }
        // Every segment is delivered at once and the receiver answers
        // right away, so ACKs flow as on a real link (one per two segments).
        while let Some(r) = a.poll_transmit(now, &mut buf) {
            data_segments += 1;
            deliver(&mut b, now, &r, wire, &mut frame, A, B);
            while let Some(r) = b.poll_transmit(now, &mut buf_b) {
                acks += 1;
                deliver(&mut a, now, &r, wire, &mut frame, B, A);
            }
            loop {
                let n = b.recv(&mut sink);
                if n == 0 {
                    break;
                }
                received += n as u64;
            }
        }
        while let Some(r) = b.poll_transmit(now, &mut buf_b) {
            acks += 1;
            deliver(&mut a, now, &r, wire, &mut frame, B, A);
        }
        now += Duration::from_micros(50);
        if a.poll_timeout().is_some_and(|t| t <= now) {
            a.handle_timeout(now);
        }
        if b.poll_timeout().is_some_and(|t| t <= now) {
            b.handle_timeout(now);
        }
    }
    black_box(&sink);
    Result {
        data_segments,
        acks,
        bytes: received,
        elapsed: started.elapsed(),
    }
}

fn report(label: &str, r: &Result) {
    let secs = r.elapsed.as_secs_f64();
    let segments = r.data_segments + r.acks;
    println!(
        "{label:<14} {:>10.0} segments/s  {:>8.1} MB/s  ({} data segments + {} ACKs, {} MiB in {:.2} s)",
        segments as f64 / secs,
        r.bytes as f64 / 1e6 / secs,
        r.data_segments,
        r.acks,
        r.bytes >> 20,
        secs
    );
}

fn checkpoints() {
    let mut now = Instant::from_secs(1);
    let (mut a, mut b) = pair(now, ReleaseMode::Manual);
    let mut buf = vec![0u8; 65536];
    let chunk = vec![1u8; 64 * 1024];
    let mut base = b.export_checkpoint().expect("established");
    let full = base.to_bytes().len();
    let mut deltas = Vec::new();
    let mut sink = vec![0u8; 65536];
    // A few rounds of traffic, one delta per round, as the relay would.
    for _ in 0..200 {
        a.send(&chunk);
        b.send(&chunk[..4096]);
        while let Some(r) = a.poll_transmit(now, &mut buf) {
            b.handle_segment(now, &r);
        }
        while b.recv(&mut sink) > 0 {}
        b.release_to(b.rcv_nxt()).expect("release");
        let next = b.export_checkpoint().expect("export");
        let d = next.delta_from(&base);
        deltas.push(d.len());
        base = next;
        while let Some(r) = b.poll_transmit(now, &mut buf) {
            a.handle_segment(now, &r);
        }
        while a.recv(&mut sink) > 0 {}
        a.release_to(a.rcv_nxt()).expect("release");
        while let Some(r) = a.poll_transmit(now, &mut buf) {
            b.handle_segment(now, &r);
        }
        now += Duration::from_millis(1);
    }
    deltas.sort_unstable();
    let mean = deltas.iter().sum::<usize>() as f64 / deltas.len() as f64;
    println!(
        "checkpoint     {full} bytes (full, version {})",
        relay_tcp::CHECKPOINT_VERSION
    );
    println!(
        "delta          min {} / median {} / max {} / mean {:.1} bytes per round",
        deltas[0],
        deltas[deltas.len() / 2],
        deltas[deltas.len() - 1],
        mean
    );
    // Cost of export + encode, delta, decode + import.
    let n = 200_000;
    let t = WallClock::now();
    for _ in 0..n {
        black_box(
            black_box(&b)
                .export_checkpoint()
                .expect("export")
                .to_bytes(),
        );
    }
    let export_ns = t.elapsed().as_nanos() as f64 / f64::from(n);
    let prev = b.export_checkpoint().expect("export");
    let t = WallClock::now();
    for _ in 0..n {
        black_box(black_box(&b).export_delta(&prev).expect("delta"));
    }
    let delta_ns = t.elapsed().as_nanos() as f64 / f64::from(n);
    let bytes = prev.to_bytes();
    let cfg = config(ReleaseMode::Manual);
    let m = 200_000;
    let t = WallClock::now();
    for _ in 0..m {
        let ck = Checkpoint::from_bytes(black_box(&bytes)).expect("decode");
        black_box(Connection::import(cfg.clone(), &ck, now, Duration::ZERO).expect("import"));
    }
    let import_ns = t.elapsed().as_nanos() as f64 / f64::from(m);
    println!(
        "cost           export+encode {export_ns:.0} ns, delta {delta_ns:.0} ns, decode+import {import_ns:.0} ns (buffers are allocated on first use)"
    );
}

fn main() {
    // `cargo test --benches` runs this with `--bench`-less args; keep it short then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let mib: u64 = std::env::var("RELAY_TCP_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 8 } else { 512 });
    let total = mib << 20;
    report("engine", &transfer(total, false));
    report("engine+wire", &transfer(total, true));
    checkpoints();
}
