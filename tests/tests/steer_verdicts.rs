//! BPF_PROG_TEST_RUN tests of the XDP steer program on crafted frames.
//!
//! Each test loads the program, binds a real AF_XDP socket on a veth in a
//! throw-away namespace (the XSKMAP only accepts live sockets) and runs the
//! program on frames built here, checking the action and the verdict counters.

use std::net::Ipv4Addr;
use std::time::Duration;

use relay_common::Verdict;
use relay_datapath::netns::NetnsGuard;
use relay_datapath::steer::{VerdictCounts, xdp_action};
use relay_datapath::{AfXdpConfig, AfXdpDevice, SteerProgram};
use relay_lab::{Netns, addr, unique_prefix};
use relay_wire::{
    EtherType, EthernetAddress, EthernetRepr, IpProtocol, Ipv4Repr, SeqNumber, TcpFlags, TcpFrame,
    TcpOptions, TcpRepr,
};

struct Fixture {
    device: Option<AfXdpDevice>,
    steer: SteerProgram,
    _enter: NetnsGuard,
    _ns: Netns,
}

impl Fixture {
    fn new() -> Fixture {
        let ns = Netns::with_veth(&unique_prefix("steer"), "xa", "xb")
            .expect("namespace with veth (run as root)");
        let enter = NetnsGuard::enter(ns.name()).expect("enter namespace");
        let mut steer = relay_lab::lab_steer_program().expect("load steer program");
        let mut config = AfXdpConfig::new("xa", 0);
        config.frame_count = 256;
        config.ring_size = 64;
        let device = AfXdpDevice::open(&config).expect("AF_XDP socket on xa queue 0");
        steer
            .register_socket(0, &device.socket_fd())
            .expect("register socket");
        Fixture {
            device: Some(device),
            steer,
            _enter: enter,
            _ns: ns,
        }
    }

    /// Runs `frame` and returns (action, counter deltas).
    fn run(&self, frame: &[u8]) -> (u32, VerdictCounts) {
        let before = self.steer.verdicts().expect("counters");
        let action = self.steer.test_run(frame).expect("BPF_PROG_TEST_RUN");
        let after = self.steer.verdicts().expect("counters");
        (action, after.since(&before))
    }

    #[track_caller]
    fn expect(&self, frame: &[u8], action: u32, verdict: Verdict) {
        let (got, delta) = self.run(frame);
        assert_eq!(got, action, "action for {verdict:?} frame");
        for v in Verdict::ALL {
            let want = u64::from(v == verdict);
            assert_eq!(
                delta.get(v),
                want,
                "counter {v:?} after a {verdict:?} frame"
            );
        }
    }
}

fn tcp_to(dst: Ipv4Addr, dst_port: u16, flags: TcpFlags, payload: &[u8]) -> Vec<u8> {
    let mut options = TcpOptions::default();
    if flags.contains(TcpFlags::SYN) {
        options.mss = Some(1460);
    }
    let frame = TcpFrame {
        eth: EthernetRepr {
            src_addr: EthernetAddress([0x02, 0, 0, 0, 0, 0x0a]),
            dst_addr: EthernetAddress([0x02, 0, 0, 0, 0, 0x02]),
            ethertype: EtherType::Ipv4,
        },
        ip: Ipv4Repr {
            src_addr: addr::CLIENT,
            dst_addr: dst,
            protocol: IpProtocol::Tcp,
            payload_len: 0,
            hop_limit: 64,
            ident: 7,
            dont_fragment: true,
        },
        tcp: TcpRepr {
            src_port: 51000,
            dst_port,
            seq_number: SeqNumber(1000),
            ack_number: SeqNumber(0),
            flags,
            window_len: 64240,
            options,
            payload,
        },
    };
    let mut buf = vec![0u8; frame.frame_len()];
    let len = frame.emit(&mut buf).expect("emit test frame");
    buf.truncate(len);
    buf
}

fn syn_to(dst: Ipv4Addr, port: u16) -> Vec<u8> {
    tcp_to(dst, port, TcpFlags::SYN, &[])
}

/// Offset of the IPv4 header in our frames.
const IP: usize = 14;

#[test]
fn service_and_back_side_packets_are_redirected() {
    let f = Fixture::new();
    f.expect(
        &syn_to(addr::VIP, addr::VIP_PORT),
        xdp_action::REDIRECT,
        Verdict::Redirect,
    );
    f.expect(
        &tcp_to(
            addr::VIP,
            addr::VIP_PORT,
            TcpFlags::ACK | TcpFlags::PSH,
            b"hello",
        ),
        xdp_action::REDIRECT,
        Verdict::Redirect,
    );
    f.expect(
        &syn_to(addr::BACK_SHARED, addr::BACK_PORT_FIRST),
        xdp_action::REDIRECT,
        Verdict::Redirect,
    );
    f.expect(
        &syn_to(addr::BACK_SHARED, addr::BACK_PORT_LAST),
        xdp_action::REDIRECT,
        Verdict::Redirect,
    );
}

#[test]
fn everything_else_passes_to_the_kernel() {
    let f = Fixture::new();
    // ARP request for the VIP.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x0a, 0x08, 0x06]);
    arp.extend_from_slice(&[
        0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 0x0a, 10, 200, 1, 10, 0, 0, 0, 0, 0, 0, 10, 200, 1,
        100,
    ]);
    arp.resize(60, 0);
    f.expect(&arp, xdp_action::PASS, Verdict::PassNotIpv4);
    // IPv6 ethertype.
    let mut v6 = syn_to(addr::VIP, addr::VIP_PORT);
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    f.expect(&v6, xdp_action::PASS, Verdict::PassNotIpv4);
    // UDP to VIP:443 (protocol byte changed; the program does not check sums).
    let mut udp = syn_to(addr::VIP, addr::VIP_PORT);
    udp[IP + 9] = 17;
    f.expect(&udp, xdp_action::PASS, Verdict::PassNotTcp);
    // Other ports of the VIP, other addresses, back side outside the range.
    f.expect(
        &syn_to(addr::VIP, 80),
        xdp_action::PASS,
        Verdict::PassNotSteered,
    );
    f.expect(
        &syn_to(addr::RELAY_A_FRONT, 22),
        xdp_action::PASS,
        Verdict::PassNotSteered,
    );
    f.expect(
        &syn_to(addr::RELAY_A_FRONT, addr::VIP_PORT),
        xdp_action::PASS,
        Verdict::PassNotSteered,
    );
    f.expect(
        &syn_to(addr::BACK_SHARED, addr::BACK_PORT_FIRST - 1),
        xdp_action::PASS,
        Verdict::PassNotSteered,
    );
    f.expect(
        &syn_to(addr::BACK_SHARED, addr::BACK_PORT_LAST + 1),
        xdp_action::PASS,
        Verdict::PassNotSteered,
    );
    f.expect(
        &syn_to(addr::BACKPLANE_B, 7000),
        xdp_action::PASS,
        Verdict::PassNotSteered,
    );
}

#[test]
fn steered_packets_without_a_live_worker_are_dropped() {
    let mut f = Fixture::new();
    let syn = syn_to(addr::VIP, addr::VIP_PORT);
    f.steer.set_workers_alive(false).expect("mark dead");
    f.expect(&syn, xdp_action::DROP, Verdict::DropNoWorker);
    f.expect(
        &syn_to(addr::BACK_SHARED, 45000),
        xdp_action::DROP,
        Verdict::DropNoWorker,
    );
    // Traffic that is not steered is unaffected.
    f.expect(
        &syn_to(addr::VIP, 80),
        xdp_action::PASS,
        Verdict::PassNotSteered,
    );
    f.steer.set_workers_alive(true).expect("mark alive");
    f.expect(&syn, xdp_action::REDIRECT, Verdict::Redirect);
    // A worker that died: its socket closes and leaves the XSKMAP. The
    // kernel removes the map entry when the socket is released, which may
    // come after close() returns; until then a redirect lands on a socket
    // that is going away and is dropped there. What the program promises
    // is that steered traffic never reaches the kernel stack, at any
    // moment, and that it counts a DropNoWorker once the entry is gone.
    drop(f.device.take());
    let settled = relay_lab::wait_for(
        Duration::from_secs(30),
        "the closed socket to leave the XSKMAP",
        || {
            let (action, delta) = f.run(&syn);
            assert_ne!(
                action,
                xdp_action::PASS,
                "a steered frame reached the kernel while the socket closed"
            );
            (action == xdp_action::DROP).then_some(delta)
        },
    )
    .expect("the XSKMAP entry goes with the socket");
    for v in Verdict::ALL {
        let want = u64::from(v == Verdict::DropNoWorker);
        assert_eq!(settled.get(v), want, "counter {v:?} after the socket left");
    }
    // And it stays gone.
    f.expect(&syn, xdp_action::DROP, Verdict::DropNoWorker);
}

#[test]
fn truncated_and_malformed_frames_are_counted() {
    let f = Fixture::new();
    let syn = syn_to(addr::VIP, addr::VIP_PORT);
    // Ethernet header only, claiming IPv4.
    f.expect(&syn[..IP], xdp_action::DROP, Verdict::DropMalformed);
    // IPv4 header cut short.
    f.expect(&syn[..IP + 10], xdp_action::DROP, Verdict::DropMalformed);
    // IPv4 header complete, TCP header cut short.
    f.expect(
        &syn[..IP + 20 + 10],
        xdp_action::DROP,
        Verdict::DropMalformed,
    );
    // IHL below 5.
    let mut bad_ihl = syn.clone();
    bad_ihl[IP] = 0x44;
    f.expect(&bad_ihl, xdp_action::DROP, Verdict::DropMalformed);
    // IHL pointing past the frame.
    let mut long_ihl = syn[..IP + 20 + 20].to_vec();
    long_ihl[IP] = 0x4f;
    f.expect(&long_ihl, xdp_action::DROP, Verdict::DropMalformed);
    // Version 6 inside an IPv4 ethertype.
    let mut bad_version = syn.clone();
    bad_version[IP] = 0x65;
    f.expect(&bad_version, xdp_action::DROP, Verdict::DropMalformed);
    // A TCP fragment (more-fragments set), and a later fragment.
    let mut frag = syn.clone();
    frag[IP + 6] = 0x20;
    f.expect(&frag, xdp_action::DROP, Verdict::DropFragment);
    let mut later = syn.clone();
    later[IP + 6] = 0x00;
    later[IP + 7] = 0x10;
    f.expect(&later, xdp_action::DROP, Verdict::DropFragment);
    // Shorter than an Ethernet header: the kernel's test runner refuses it
    // (EINVAL) before the program runs, so PassRunt is only reachable live.
    assert!(f.steer.test_run(&syn[..10]).is_err());
}

#[test]
fn garbage_frames_get_a_verdict_and_a_count_each() {
    let f = Fixture::new();
    let before = f.steer.verdicts().expect("counters");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let runs = 3000;
    for i in 0..runs {
        let len = 14 + (next() % 120) as usize;
        let mut frame: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Two thirds claim IPv4, half of those aimed at the VIP, to get deep.
        if i % 3 != 0 {
            frame[12] = 0x08;
            frame[13] = 0x00;
            if i % 2 == 0 && frame.len() >= IP + 20 {
                frame[IP] = 0x45;
                frame[IP + 9] = 6;
                frame[IP + 6] &= 0x40;
                frame[IP + 7] = 0;
                frame[IP + 16..IP + 20].copy_from_slice(&addr::VIP.octets());
            }
        }
        let action = f.steer.test_run(&frame).expect("test run");
        assert!(
            matches!(
                action,
                xdp_action::PASS | xdp_action::DROP | xdp_action::REDIRECT
            ),
            "frame {i} got action {action}: {frame:02x?}"
        );
    }
    let delta = f.steer.verdicts().expect("counters").since(&before);
    let total: u64 = delta.0.iter().sum();
    assert_eq!(total, runs, "every run counted exactly once: {delta:?}");
    assert!(
        delta.get(Verdict::DropMalformed) > 0 && delta.get(Verdict::PassNotIpv4) > 0,
        "{delta:?}"
    );
}

/// An ARP request (who-has `target`, from the client) or, with `reply`, an
/// ARP reply claiming `target`.
fn arp(target: Ipv4Addr, reply: bool) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x0a, 0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, if reply { 2 } else { 1 }]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x0a]);
    f.extend_from_slice(&addr::CLIENT.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f.resize(60, 0);
    f
}

#[test]
fn arp_for_the_relays_addresses_goes_unanswered_without_a_live_worker() {
    let mut f = Fixture::new();
    f.steer
        .set_addresses(&[(addr::VIP, true), (addr::BACK_SHARED, true)])
        .expect("addresses");
    // A live worker: the box's kernel answers for the relay's addresses.
    f.expect(
        &arp(addr::VIP, false),
        xdp_action::PASS,
        Verdict::PassNotIpv4,
    );
    f.expect(
        &arp(addr::BACK_SHARED, false),
        xdp_action::PASS,
        Verdict::PassNotIpv4,
    );
    // Workers marked dead: requests for the relay's addresses are dropped,
    // everything else about ARP is not.
    f.steer.set_workers_alive(false).expect("mark dead");
    f.expect(
        &arp(addr::VIP, false),
        xdp_action::DROP,
        Verdict::DropArpNoWorker,
    );
    f.expect(
        &arp(addr::BACK_SHARED, false),
        xdp_action::DROP,
        Verdict::DropArpNoWorker,
    );
    f.expect(
        &arp(addr::RELAY_A_FRONT, false),
        xdp_action::PASS,
        Verdict::PassNotIpv4,
    );
    f.expect(
        &arp(addr::VIP, true),
        xdp_action::PASS,
        Verdict::PassNotIpv4,
    );
    // Alive again, then the worker's process dies: its socket leaves the
    // XSKMAP (asynchronously) and the requests go unanswered, with no
    // flag cleared by anyone.
    f.steer.set_workers_alive(true).expect("mark alive");
    f.expect(
        &arp(addr::VIP, false),
        xdp_action::PASS,
        Verdict::PassNotIpv4,
    );
    drop(f.device.take());
    let request = arp(addr::VIP, false);
    let settled = relay_lab::wait_for(
        Duration::from_secs(30),
        "the closed socket to leave the XSKMAP",
        || {
            let (action, delta) = f.run(&request);
            (action == xdp_action::DROP).then_some(delta)
        },
    )
    .expect("ARP dropped once the socket is gone");
    assert_eq!(settled.get(Verdict::DropArpNoWorker), 1, "{settled:?}");
}

#[test]
fn arp_for_an_address_a_peer_serves_goes_unanswered() {
    let mut f = Fixture::new();
    f.steer
        .set_addresses(&[(addr::VIP, false), (addr::BACK_SHARED, true)])
        .expect("addresses");
    f.expect(
        &arp(addr::VIP, false),
        xdp_action::DROP,
        Verdict::DropArpStandby,
    );
    f.expect(
        &arp(addr::BACK_SHARED, false),
        xdp_action::PASS,
        Verdict::PassNotIpv4,
    );
    // Taking the address over is one map write.
    f.steer
        .set_addresses(&[(addr::VIP, true), (addr::BACK_SHARED, true)])
        .expect("addresses");
    f.expect(
        &arp(addr::VIP, false),
        xdp_action::PASS,
        Verdict::PassNotIpv4,
    );
}

#[test]
fn tcp_for_an_address_a_peer_serves_is_dropped_until_taken_over() {
    let mut f = Fixture::new();
    f.steer
        .set_addresses(&[(addr::VIP, false), (addr::BACK_SHARED, false)])
        .expect("addresses");
    let data = tcp_to(
        addr::VIP,
        addr::VIP_PORT,
        TcpFlags::ACK | TcpFlags::PSH,
        b"mid-flow",
    );
    let back = tcp_to(addr::BACK_SHARED, addr::BACK_PORT_FIRST, TcpFlags::ACK, &[]);
    // Flooded to the standby while the owner's port is down: neither its
    // worker (no flow yet) nor its kernel (no socket) may answer.
    f.expect(&data, xdp_action::DROP, Verdict::DropStandby);
    f.expect(&back, xdp_action::DROP, Verdict::DropStandby);
    // A port the relay does not steer is the kernel's, standby or not.
    f.expect(
        &syn_to(addr::VIP, 22),
        xdp_action::PASS,
        Verdict::PassNotSteered,
    );
    f.steer
        .set_addresses(&[(addr::VIP, true), (addr::BACK_SHARED, true)])
        .expect("addresses");
    f.expect(&data, xdp_action::REDIRECT, Verdict::Redirect);
    f.expect(&back, xdp_action::REDIRECT, Verdict::Redirect);
}
