//! Hostile input through every parser: random buffers, mutated real frames
//! and random representations. Nothing may panic, and whatever parses must
//! survive emit → parse unchanged.

use core::net::Ipv4Addr;

use relay_wire::{
    ArpPacket, ArpRepr, EtherType, EthernetAddress, EthernetFrame, EthernetRepr, IpProtocol,
    Ipv4Packet, Ipv4Repr, SeqNumber, TcpFlags, TcpFrame, TcpOptions, TcpPacket, TcpRepr,
    TcpTimestamp, emit_arp, parse_arp,
};

/// splitmix64: small, deterministic, good enough to spread bytes around.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn u8(&mut self) -> u8 {
        self.next_u64() as u8
    }

    fn u16(&mut self) -> u16 {
        self.next_u64() as u16
    }

    fn u32(&mut self) -> u32 {
        self.next_u64() as u32
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.u8()).collect()
    }

    fn bytes_upto(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max);
        self.bytes(len)
    }
}

const SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const DST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// Counts how deep the checks got, so the test can assert it was not all
/// rejected at the first byte.
#[derive(Default, Debug)]
struct Reached {
    ethernet: usize,
    arp: usize,
    ipv4: usize,
    tcp: usize,
    tcp_frame: usize,
    arp_frame: usize,
}

fn check_all(buf: &[u8], reached: &mut Reached) {
    if let Ok(repr) = EthernetRepr::parse(&EthernetFrame::new_unchecked(buf)) {
        reached.ethernet += 1;
        let mut out = vec![0u8; repr.buffer_len()];
        repr.emit(&mut EthernetFrame::new_unchecked(&mut out[..]));
        assert_eq!(
            EthernetRepr::parse(&EthernetFrame::new_unchecked(&out[..])),
            Ok(repr)
        );
    }

    if let Ok(repr) = ArpRepr::parse(&ArpPacket::new_unchecked(buf)) {
        reached.arp += 1;
        let mut out = vec![0u8; repr.buffer_len()];
        repr.emit(&mut ArpPacket::new_unchecked(&mut out[..]));
        assert_eq!(
            ArpRepr::parse(&ArpPacket::new_unchecked(&out[..])),
            Ok(repr)
        );
    }

    let ip_view = Ipv4Packet::new_unchecked(buf);
    let checked = Ipv4Repr::parse(&ip_view);
    if let Ok(repr) = Ipv4Repr::parse_with(&ip_view, false) {
        reached.ipv4 += 1;
        assert_eq!(checked.is_ok(), ip_view.verify_checksum());
        let mut out = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut out[..]));
        assert_eq!(
            Ipv4Repr::parse(&Ipv4Packet::new_unchecked(&out[..])),
            Ok(repr)
        );
    } else {
        assert!(checked.is_err());
    }

    let tcp_view = TcpPacket::new_unchecked(buf);
    let checked = TcpRepr::parse(&tcp_view, SRC, DST, true);
    if let Ok(repr) = TcpRepr::parse(&tcp_view, SRC, DST, false) {
        reached.tcp += 1;
        assert_eq!(checked.is_ok(), tcp_view.verify_checksum(SRC, DST));
        let mut out = vec![0u8; repr.buffer_len()];
        repr.emit(&mut TcpPacket::new_unchecked(&mut out[..]), SRC, DST);
        let back = TcpPacket::new_checked(&out[..]).unwrap();
        assert_eq!(back.header_len(), repr.header_len());
        assert_eq!(TcpRepr::parse(&back, SRC, DST, true), Ok(repr));
    } else {
        assert!(checked.is_err());
    }

    let checked = TcpFrame::parse(buf);
    if let Ok(frame) = TcpFrame::parse_with(buf, false) {
        reached.tcp_frame += 1;
        let mut out = vec![0u8; frame.frame_len()];
        assert_eq!(frame.emit(&mut out), Ok(out.len()));
        // The IPv4 payload length is recomputed from the segment, whose
        // options may have been normalised (unknown ones dropped).
        let expected = TcpFrame {
            ip: Ipv4Repr {
                payload_len: frame.tcp.buffer_len(),
                ..frame.ip
            },
            ..frame
        };
        assert_eq!(TcpFrame::parse(&out), Ok(expected));
        if let Ok(strict) = checked {
            assert_eq!(strict, frame);
        }
    } else {
        assert!(checked.is_err());
    }

    if let Ok((eth, arp)) = parse_arp(buf) {
        reached.arp_frame += 1;
        let mut out = [0u8; 42];
        assert_eq!(emit_arp(&eth, &arp, &mut out), Ok(42));
        assert_eq!(parse_arp(&out), Ok((eth, arp)));
    }

    if let Ok(opts) = TcpOptions::parse(buf.get(..40).unwrap_or(buf)) {
        let mut out = [0u8; 40];
        let n = opts.emit(&mut out);
        assert_eq!(n, opts.emitted_len());
        assert_eq!(
            TcpOptions::parse(&out[..n]),
            Ok(opts),
            "options must fit after parse"
        );
    }
}

/// The real frames the unit tests use, as seeds for mutation.
fn seeds() -> Vec<Vec<u8>> {
    let syn = random_frame(&mut Rng(1), false);
    let mut data = random_frame(&mut Rng(2), true);
    data.resize(data.len().max(60), 0);
    let mut arp = vec![0u8; 60];
    let eth = EthernetRepr {
        src_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EtherType::Arp,
    };
    emit_arp(&eth, &ArpRepr::gratuitous(eth.src_addr, SRC), &mut arp).unwrap();
    vec![syn, data, arp]
}

fn random_options(rng: &mut Rng) -> TcpOptions {
    let mut o = TcpOptions {
        mss: rng.chance(2).then(|| rng.u16()),
        window_scale: rng.chance(2).then(|| rng.u8()),
        sack_permitted: rng.chance(2),
        timestamp: rng.chance(2).then(|| TcpTimestamp {
            tsval: rng.u32(),
            tsecr: rng.u32(),
        }),
        ..TcpOptions::default()
    };
    for slot in o.sack_blocks.iter_mut().take(rng.below(5)) {
        *slot = Some((SeqNumber(rng.u32()), SeqNumber(rng.u32())));
    }
    o
}

fn random_tcp_frame<'a>(rng: &mut Rng, payload: &'a [u8]) -> TcpFrame<'a> {
    TcpFrame {
        eth: EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, rng.u8()]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 1, rng.u8()]),
            ethertype: EtherType::Ipv4,
        },
        ip: Ipv4Repr {
            src_addr: Ipv4Addr::from(rng.u32()),
            dst_addr: Ipv4Addr::from(rng.u32()),
            protocol: IpProtocol::Tcp,
            payload_len: 0,
            hop_limit: rng.u8(),
            ident: rng.u16(),
            dont_fragment: rng.chance(2),
        },
        tcp: TcpRepr {
            src_port: rng.u16().max(1),
            dst_port: rng.u16().max(1),
            seq_number: SeqNumber(rng.u32()),
            ack_number: SeqNumber(rng.u32()),
            flags: TcpFlags(rng.u8()),
            window_len: rng.u16(),
            options: random_options(rng),
            payload,
        },
    }
}

fn random_frame(rng: &mut Rng, with_payload: bool) -> Vec<u8> {
    let payload = if with_payload {
        rng.bytes_upto(64)
    } else {
        Vec::new()
    };
    let frame = random_tcp_frame(rng, &payload);
    let mut out = vec![0u8; frame.frame_len()];
    frame.emit(&mut out).unwrap();
    out
}

/// Recomputes the IPv4 and TCP checksums of a mutated frame, where the
/// lengths allow, so that mutations reach the TCP option parser.
fn fix_checksums(buf: &mut [u8]) {
    let Some(ip_bytes) = buf.get_mut(14..) else {
        return;
    };
    let mut ip = Ipv4Packet::new_unchecked(&mut *ip_bytes);
    if ip.check_len().is_err() {
        return;
    }
    ip.fill_checksum();
    let (src, dst, hl, tl) = (
        ip.src_addr(),
        ip.dst_addr(),
        ip.header_len(),
        ip.total_len(),
    );
    if let Some(seg) = ip_bytes.get_mut(hl..usize::from(tl)) {
        TcpPacket::new_unchecked(seg).fill_checksum(src, dst);
    }
}

#[test]
fn random_buffers() {
    let mut rng = Rng(0x5eed);
    let mut reached = Reached::default();
    for _ in 0..40_000 {
        let len = rng.below(130);
        let mut buf = rng.bytes(len);
        // Bias some buffers toward plausible headers so that the deeper
        // layers see input at all.
        match rng.below(4) {
            0 => {
                if let Some(b) = buf.get_mut(0) {
                    *b = 0x45;
                }
            }
            1 => {
                if let Some(b) = buf.get_mut(12) {
                    *b = 0x50 | (*b & 0xaf);
                }
            }
            _ => {}
        }
        check_all(&buf, &mut reached);
    }
    assert!(reached.ethernet > 30_000, "{reached:?}");
    assert!(reached.tcp > 1_000, "{reached:?}");
}

#[test]
fn mutated_real_frames() {
    let mut rng = Rng(0xf00d);
    let seeds = seeds();
    for seed in &seeds {
        check_all(seed, &mut Reached::default());
    }
    let mut reached = Reached::default();
    for i in 0..60_000 {
        let mut buf = seeds[i % seeds.len()].clone();
        for _ in 0..=rng.below(4) {
            let at = rng.below(buf.len());
            buf[at] = match rng.below(4) {
                0 => rng.u8(),
                1 => buf[at] ^ (1 << rng.below(8)),
                2 => [0, 1, 2, 0xff][rng.below(4)],
                _ => buf[at].wrapping_add(1),
            };
        }
        match rng.below(8) {
            0 => buf.truncate(rng.below(buf.len() + 1)),
            1 => buf.extend(rng.bytes_upto(20)),
            _ => {}
        }
        if rng.chance(2) {
            fix_checksums(&mut buf);
        }
        check_all(&buf, &mut reached);
    }
    assert!(reached.tcp_frame > 10_000, "{reached:?}");
    assert!(reached.arp_frame > 3_000, "{reached:?}");
}

#[test]
fn random_option_bytes() {
    let mut rng = Rng(0x0b7);
    let kinds = [0u8, 1, 2, 3, 4, 5, 8, 30, 34];
    let mut parsed = 0;
    for _ in 0..50_000 {
        // Mostly well-formed options with the odd bad length.
        let mut bytes = Vec::new();
        while bytes.len() < 40 && !rng.chance(8) {
            let kind = kinds[rng.below(kinds.len())];
            bytes.push(kind);
            if kind > 1 {
                let len = match kind {
                    2 => 4,
                    3 => 3,
                    4 => 2,
                    5 => 2 + 8 * rng.below(5),
                    8 => 10,
                    _ => 2 + rng.below(6),
                };
                let len = if rng.chance(10) { rng.below(12) } else { len };
                bytes.push(len as u8);
                bytes.extend(rng.bytes(len.saturating_sub(2)));
            }
        }
        bytes.truncate(40);
        if let Ok(opts) = TcpOptions::parse(&bytes) {
            parsed += 1;
            let mut out = [0u8; 40];
            let n = opts.emit(&mut out);
            assert_eq!(TcpOptions::parse(&out[..n]), Ok(opts), "from {bytes:?}");
        }
    }
    assert!(parsed > 20_000, "{parsed}");
}

#[test]
fn random_reprs_round_trip() {
    let mut rng = Rng(0xabc);
    for _ in 0..20_000 {
        let payload = rng.bytes_upto(200);
        let frame = random_tcp_frame(&mut rng, &payload);
        let mut out = vec![0u8; frame.frame_len() + rng.below(8)];
        let n = frame.emit(&mut out).unwrap();
        assert_eq!(n, frame.frame_len());
        let back = TcpFrame::parse(&out[..n]).unwrap();
        // Only SACK blocks may be dropped, from the end, when they don't fit.
        let kept = back.tcp.options.sack_block_count();
        let mut expected = frame;
        expected.ip.payload_len = frame.tcp.buffer_len();
        for slot in expected.tcp.options.sack_blocks.iter_mut().skip(kept) {
            *slot = None;
        }
        assert_eq!(back, expected);
        assert_eq!(back.tcp.header_len(), frame.tcp.header_len());
        // Ethernet padding does not change anything.
        let mut padded = out[..n].to_vec();
        padded.resize(n.max(60) + rng.below(4), 0);
        assert_eq!(TcpFrame::parse(&padded), Ok(back));
    }
}

#[test]
fn every_truncation_of_random_frames_fails() {
    let mut rng = Rng(0x7777);
    for _ in 0..300 {
        let buf = random_frame(&mut rng, true);
        for len in 0..buf.len() {
            assert!(TcpFrame::parse(&buf[..len]).is_err());
            assert!(TcpFrame::parse_with(&buf[..len], false).is_err());
        }
    }
}
