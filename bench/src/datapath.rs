//! Frames per second through the AF_XDP device, beside the kernel's own
//! figure, on the same veth pair.
//!
//! A namespace holds a veth pair `gen` <-> `dut`. The generator is an AF_XDP
//! socket on `gen` sending one prebuilt frame as fast as it can; the device
//! under test is `dut`:
//!
//! - AF_XDP receive: steer program on `dut`, frames to VIP:443, counted by the
//!   worker's socket.
//! - kernel receive: no XDP program, UDP frames to `dut`'s address, counted by
//!   a kernel UDP socket.
//! - AF_XDP send: an AF_XDP socket on `dut` sends, counted by completions.
//! - kernel send: a kernel UDP socket on `dut` sends to `gen`.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use relay_common::{ServiceKey, ServiceValue, SteerConfig, Verdict};
use relay_datapath::netns::NetnsGuard;
use relay_datapath::{AfXdpConfig, AfXdpDevice, AttachMode, Device, SteerProgram};
use relay_lab::{Netns, unique_prefix};
use relay_wire::{
    EtherType, EthernetAddress, EthernetRepr, IpProtocol, Ipv4Repr, SeqNumber, TcpFlags, TcpFrame,
    TcpOptions, TcpRepr,
};

const GEN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
const DUT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 100);
/// A host "behind" `gen` that has no address in the namespace: the kernel
/// drops packets whose source is one of its own addresses, and sends to its
/// own addresses through loopback, so the kernel figures use this one.
const FAR_ADDR: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 50);
const UDP_PORT: u16 = 9000;
/// Frame sizes measured (without FCS): minimum Ethernet and full MTU.
const SIZES: [usize; 2] = [60, 1514];

/// One measured rate.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    /// Frames per second.
    pub fps: f64,
    /// Bits per second of frame bytes.
    pub bps: f64,
}

impl Rate {
    fn new(frames: u64, frame_len: usize, elapsed: Duration) -> Rate {
        let secs = elapsed.as_secs_f64().max(1e-9);
        Rate {
            fps: frames as f64 / secs,
            bps: frames as f64 * frame_len as f64 * 8.0 / secs,
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>6.3} Mpps {:>6.2} Gbit/s",
            self.fps / 1e6,
            self.bps / 1e9
        )
    }
}

fn mac_of(ns: &Netns, ifname: &str) -> Result<EthernetAddress> {
    let out = relay_lab::run(
        "ip",
        &[
            "netns",
            "exec",
            ns.name(),
            "cat",
            &format!("/sys/class/net/{ifname}/address"),
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut mac = [0u8; 6];
    for (slot, part) in mac.iter_mut().zip(text.trim().split(':')) {
        *slot = u8::from_str_radix(part, 16).with_context(|| format!("MAC {text:?}"))?;
    }
    Ok(EthernetAddress(mac))
}

fn tcp_frame(src: EthernetAddress, dst: EthernetAddress, len: usize) -> Result<Vec<u8>> {
    let header = 14 + 20 + 20;
    let payload = vec![0x5a; len.saturating_sub(header)];
    let frame = TcpFrame {
        eth: EthernetRepr {
            src_addr: src,
            dst_addr: dst,
            ethertype: EtherType::Ipv4,
        },
        ip: Ipv4Repr {
            src_addr: GEN_ADDR,
            dst_addr: VIP,
            protocol: IpProtocol::Tcp,
            payload_len: 0,
            hop_limit: 64,
            ident: 0,
            dont_fragment: true,
        },
        tcp: TcpRepr {
            src_port: 40000,
            dst_port: 443,
            seq_number: SeqNumber(1),
            ack_number: SeqNumber(1),
            flags: TcpFlags::ACK,
            window_len: 1000,
            options: TcpOptions::default(),
            payload: &payload,
        },
    };
    let mut buf = vec![0u8; frame.frame_len()];
    let n = frame.emit(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// A UDP datagram to the kernel of `dut`, UDP checksum 0 (none, allowed in IPv4).
fn udp_frame(src: EthernetAddress, dst: EthernetAddress, len: usize) -> Result<Vec<u8>> {
    let udp_len = len - 14 - 20;
    let ip = Ipv4Repr {
        src_addr: FAR_ADDR,
        dst_addr: DUT_ADDR,
        protocol: IpProtocol::Udp,
        payload_len: udp_len,
        hop_limit: 64,
        ident: 0,
        dont_fragment: true,
    };
    let mut buf = vec![0u8; len];
    EthernetRepr {
        src_addr: src,
        dst_addr: dst,
        ethertype: EtherType::Ipv4,
    }
    .emit(&mut relay_wire::EthernetFrame::new_unchecked(&mut buf[..]));
    ip.emit(&mut relay_wire::Ipv4Packet::new_unchecked(&mut buf[14..]));
    let udp = &mut buf[34..];
    udp[0..2].copy_from_slice(&5555u16.to_be_bytes());
    udp[2..4].copy_from_slice(&UDP_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    Ok(buf)
}

/// Sends `frame` from an AF_XDP socket on `gen` until `stop`; returns frames sent.
fn generate(frame: Vec<u8>, stop: Arc<AtomicBool>) -> Result<u64> {
    let mut config = AfXdpConfig::new("gen", 0);
    config.frame_count = 8192;
    config.ring_size = 2048;
    let mut device = AfXdpDevice::open(&config)?;
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..64 {
            if !device.send(&frame)? {
                break;
            }
            sent += 1;
        }
        device.flush()?;
    }
    device.flush()?;
    Ok(sent)
}

fn measure_afxdp_rx(
    frame_len: usize,
    duration: Duration,
    gen_mac: EthernetAddress,
    dut_mac: EthernetAddress,
) -> Result<Rate> {
    let mut steer = SteerProgram::load()?;
    steer.set_services(&[(
        ServiceKey::new(VIP.octets(), 443),
        ServiceValue { service_index: 0 },
    )])?;
    steer.set_config(SteerConfig::new([0; 4], 0, 0, true))?;
    steer.attach("dut", AttachMode::Driver)?;
    let mut dut = AfXdpDevice::open(&AfXdpConfig::new("dut", 0))?;
    steer.register_socket(0, &dut.socket_fd())?;

    let stop = Arc::new(AtomicBool::new(false));
    let frame = tcp_frame(gen_mac, dut_mac, frame_len)?;
    let generator = {
        let stop = stop.clone();
        std::thread::spawn(move || generate(frame, stop))
    };
    // Warm up, then count for `duration`.
    let mut received = 0u64;
    let warm = Instant::now() + Duration::from_millis(300);
    while Instant::now() < warm {
        dut.receive(256, &mut |_| {})?;
    }
    let started = Instant::now();
    while started.elapsed() < duration {
        received += dut.receive(256, &mut |_| {})? as u64;
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let generated = generator
        .join()
        .map_err(|_| anyhow::anyhow!("generator panicked"))??;
    let verdicts = steer.verdicts()?;
    anyhow::ensure!(
        verdicts.get(Verdict::Redirect) > 0,
        "nothing was redirected"
    );
    let _ = generated;
    Ok(Rate::new(received, frame_len, elapsed))
}

fn measure_kernel_rx(
    frame_len: usize,
    duration: Duration,
    gen_mac: EthernetAddress,
    dut_mac: EthernetAddress,
) -> Result<Rate> {
    let socket = UdpSocket::bind(SocketAddr::from((DUT_ADDR, UDP_PORT)))?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let frame = udp_frame(gen_mac, dut_mac, frame_len)?;
    let generator = {
        let stop = stop.clone();
        std::thread::spawn(move || generate(frame, stop))
    };
    let mut buf = vec![0u8; 2048];
    let warm = Instant::now() + Duration::from_millis(300);
    while Instant::now() < warm {
        let _ = socket.recv(&mut buf);
    }
    let started = Instant::now();
    let mut received = 0u64;
    while started.elapsed() < duration {
        if socket.recv(&mut buf).is_ok() {
            received += 1;
        }
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    generator
        .join()
        .map_err(|_| anyhow::anyhow!("generator panicked"))??;
    Ok(Rate::new(received, frame_len, elapsed))
}

fn measure_afxdp_tx(
    frame_len: usize,
    duration: Duration,
    gen_mac: EthernetAddress,
    dut_mac: EthernetAddress,
) -> Result<Rate> {
    let mut config = AfXdpConfig::new("dut", 0);
    config.frame_count = 8192;
    let mut dut = AfXdpDevice::open(&config)?;
    let frame = tcp_frame(dut_mac, gen_mac, frame_len)?;
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < duration {
        for _ in 0..64 {
            if !dut.send(&frame)? {
                break;
            }
            sent += 1;
        }
        dut.flush()?;
    }
    dut.flush()?;
    Ok(Rate::new(sent, frame_len, started.elapsed()))
}

fn measure_kernel_tx(frame_len: usize, duration: Duration) -> Result<Rate> {
    let socket = UdpSocket::bind(SocketAddr::from((DUT_ADDR, 0)))?;
    socket.set_nonblocking(true)?;
    let payload = vec![0x5a; frame_len - 14 - 20 - 8];
    let target = SocketAddr::from((FAR_ADDR, UDP_PORT));
    let started = Instant::now();
    let sent = AtomicU64::new(0);
    let mut last_error = None;
    while started.elapsed() < duration {
        for _ in 0..64 {
            match socket.send_to(&payload, target) {
                Ok(_) => {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => last_error = Some(e),
            }
        }
    }
    if sent.load(Ordering::Relaxed) == 0 {
        anyhow::bail!("no datagram sent: {last_error:?}");
    }
    Ok(Rate::new(
        sent.load(Ordering::Relaxed),
        frame_len,
        started.elapsed(),
    ))
}

/// Runs every measurement for `duration` each and prints a table.
pub fn run(duration: Duration) -> Result<()> {
    let ns = Netns::with_veth(&unique_prefix("bench"), "gen", "dut")
        .context("namespace (run as root)")?;
    ns.ip(&["addr", "add", &format!("{GEN_ADDR}/24"), "dev", "gen"])?;
    ns.ip(&["addr", "add", &format!("{DUT_ADDR}/24"), "dev", "dut"])?;
    let _enter = NetnsGuard::enter(ns.name())?;
    let gen_mac = mac_of(&ns, "gen")?;
    let dut_mac = mac_of(&ns, "dut")?;
    // The kernel send figure goes to FAR_ADDR through the veth: a static
    // neighbour entry spares ARP (nobody would answer it).
    // Both veth ends sit in one subnet, so pin the route to `dut` as well.
    ns.ip(&["route", "replace", &format!("{FAR_ADDR}/32"), "dev", "dut"])?;
    ns.ip(&[
        "neigh",
        "replace",
        &FAR_ADDR.to_string(),
        "lladdr",
        &gen_mac.to_string(),
        "dev",
        "dut",
    ])?;

    println!(
        "datapath benchmark: veth pair in a namespace, copy-mode AF_XDP, one queue, {:.1} s per figure",
        duration.as_secs_f64()
    );
    println!(
        "(generator: an AF_XDP socket on the peer veth; the machine has {} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "{:<28} {:>30} {:>30}",
        "", "60-byte frames", "1514-byte frames"
    );
    type Measure<'a> = Box<dyn Fn(usize) -> Result<Rate> + 'a>;
    let rows: Vec<(&str, Measure)> = vec![
        (
            "AF_XDP receive (steered)",
            Box::new(|len| measure_afxdp_rx(len, duration, gen_mac, dut_mac)),
        ),
        (
            "kernel receive (UDP socket)",
            Box::new(|len| measure_kernel_rx(len, duration, gen_mac, dut_mac)),
        ),
        (
            "kernel send (UDP socket)",
            Box::new(|len| measure_kernel_tx(len, duration)),
        ),
        (
            "AF_XDP send",
            Box::new(|len| measure_afxdp_tx(len, duration, gen_mac, dut_mac)),
        ),
    ];
    for (name, measure) in rows {
        let mut cells = Vec::new();
        for len in SIZES {
            cells.push(match measure(len) {
                Ok(rate) => rate.to_string(),
                Err(e) => format!("error: {e}"),
            });
        }
        println!("{name:<28} {:>30} {:>30}", cells[0], cells[1]);
    }
    Ok(())
}
