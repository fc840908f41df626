//! The frame devices on a real veth pair: AF_PACKET both ways, and AF_XDP
//! transmit received by AF_PACKET, byte-exact.

use std::time::Duration;

use relay_datapath::netns::NetnsGuard;
use relay_datapath::{AfPacketDevice, AfXdpConfig, AfXdpDevice, Device};
use relay_lab::{Netns, echo::pattern, unique_prefix, wait_for};

/// A frame addressed from `src` (locally administered MACs), ethertype
/// 0x88b5 (IEEE local experimental), so no stack on the way acts on it.
fn test_frame(seed: u64, len: usize) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 0xbb, 0x02, 0, 0, 0, 0, 0xaa, 0x88, 0xb5];
    frame.extend(pattern(len - frame.len(), seed));
    frame
}

/// Receives frames on `device` until `count` arrived (ignoring strangers such
/// as IPv6 router solicitations), with a deadline.
fn receive_ours(device: &mut dyn Device, count: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    wait_for(
        Duration::from_secs(10),
        "frames on the receiving end",
        || {
            device
                .receive(64, &mut |f| {
                    if f.len() > 14 && f[12..14] == [0x88, 0xb5] {
                        got.push(f.to_vec());
                    }
                })
                .expect("receive");
            if got.len() >= count {
                Some(())
            } else {
                let _ = device.wait_readable(Duration::from_millis(20));
                None
            }
        },
    )
    .expect("all frames arrive");
    got
}

#[test]
fn af_packet_frames_cross_a_veth_byte_exact() {
    let ns = Netns::with_veth(&unique_prefix("pkt"), "pa", "pb").expect("namespace (run as root)");
    let _enter = NetnsGuard::enter(ns.name()).expect("enter");
    let mut a = AfPacketDevice::open("pa").expect("AF_PACKET on pa");
    let mut b = AfPacketDevice::open("pb").expect("AF_PACKET on pb");
    let sent: Vec<Vec<u8>> = (0..50)
        .map(|i| test_frame(i, 60 + (i as usize * 29) % 1400))
        .collect();
    for frame in &sent {
        assert!(a.send(frame).expect("send"));
    }
    a.flush().expect("flush");
    assert_eq!(receive_ours(&mut b, sent.len()), sent);
    assert_eq!(a.stats().tx_frames, sent.len() as u64);
    // The sender does not see its own frames (PACKET_IGNORE_OUTGOING).
    let mut echoed = 0;
    a.receive(64, &mut |f| {
        echoed += usize::from(f.len() > 14 && f[12..14] == [0x88, 0xb5])
    })
    .expect("receive");
    assert_eq!(echoed, 0);
}

#[test]
fn af_xdp_transmit_reaches_the_peer_byte_exact() {
    let ns = Netns::with_veth(&unique_prefix("xtx"), "xa", "xb").expect("namespace (run as root)");
    let _enter = NetnsGuard::enter(ns.name()).expect("enter");
    let mut config = AfXdpConfig::new("xa", 0);
    config.frame_count = 256;
    config.ring_size = 64;
    let mut tx = AfXdpDevice::open(&config).expect("AF_XDP on xa");
    let mut rx = AfPacketDevice::open("xb").expect("AF_PACKET on xb");
    // More frames than transmit buffers: exercises completion reclaim.
    let sent: Vec<Vec<u8>> = (0..400)
        .map(|i| test_frame(i, 60 + (i as usize * 37) % 1454))
        .collect();
    let mut got = Vec::new();
    for chunk in sent.chunks(100) {
        for frame in chunk {
            while !tx.send(frame).expect("send") {
                tx.flush().expect("flush");
            }
        }
        tx.flush().expect("flush");
        got.extend(receive_ours(&mut rx, chunk.len()));
    }
    assert_eq!(got, sent);
    let stats = tx.stats();
    assert_eq!(stats.tx_frames, sent.len() as u64);
    assert!(stats.kicks > 0);
    assert_eq!(stats.invalid_descs, 0);
}

#[test]
fn bad_device_settings_are_errors_not_panics() {
    let ns = Netns::with_veth(&unique_prefix("cfg"), "ca", "cb").expect("namespace (run as root)");
    let _enter = NetnsGuard::enter(ns.name()).expect("enter");
    assert!(AfPacketDevice::open("no-such-if").is_err());
    assert!(AfXdpDevice::open(&AfXdpConfig::new("no-such-if", 0)).is_err());
    let mut odd = AfXdpConfig::new("ca", 0);
    odd.frame_count = 1000;
    assert!(AfXdpDevice::open(&odd).is_err());
    let mut big_ring = AfXdpConfig::new("ca", 0);
    big_ring.ring_size = big_ring.frame_count;
    assert!(AfXdpDevice::open(&big_ring).is_err());
    // veth has one rx queue: queue 5 does not exist.
    assert!(AfXdpDevice::open(&AfXdpConfig::new("ca", 5)).is_err());
}

#[test]
fn neighbour_resolution_asks_the_kernel() {
    use relay_lab::{Lab, Node, addr};
    use std::net::Ipv4Addr;
    let lab = Lab::up(&unique_prefix("arp")).expect("lab up (run as root)");
    let client_mac = lab.mac(Node::Client, "eth0").expect("client MAC");
    let _enter = NetnsGuard::enter(&lab.ns(Node::RelayA)).expect("enter relay-a");
    let mac = relay_datapath::neighbour::resolve(addr::CLIENT, Duration::from_secs(30))
        .expect("resolve the client");
    assert_eq!(mac, client_mac);
    let nobody = Ipv4Addr::new(10, 200, 1, 77);
    assert!(
        relay_datapath::neighbour::resolve(nobody, Duration::from_millis(600)).is_err(),
        "nobody owns {nobody}"
    );
}
