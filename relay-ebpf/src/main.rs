//! The XDP steer program.
//!
//! Steers IPv4 TCP packets addressed to a configured service (VIP, port) or to
//! the relay's back-side address and port range into the AF_XDP socket bound
//! to the packet's rx queue; passes everything else (ARP, management, the
//! backplane) to the kernel. Steered traffic without a live worker is dropped:
//! the kernel has no socket for it and would answer with a reset. While no
//! worker lives, ARP requests for the relay's own addresses are dropped too:
//! the program outlives a dead relay process, and the box must stop claiming
//! addresses that a peer takes over.
//!
//! The maps are the API; their layout lives once in `relay-common`. Every
//! verdict increments its per-CPU counter.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray, XskMap},
    programs::XdpContext,
};
use relay_common::{
    ADDR_OWNED, AddrKey, MAX_ADDRS, MAX_QUEUES, MAX_SERVICES, ServiceKey, ServiceValue, SteerConfig,
    VERDICT_COUNT, Verdict,
};

#[map(name = "XSKS")]
static XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);

#[map(name = "SERVICES")]
static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(MAX_SERVICES, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<SteerConfig> = Array::with_max_entries(1, 0);

#[map(name = "VERDICTS")]
static VERDICTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(VERDICT_COUNT, 0);

#[map(name = "ADDRS")]
static ADDRS: HashMap<AddrKey, u32> = HashMap::with_max_entries(MAX_ADDRS, 0);

const ETH_HEADER_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
/// Ethernet/IPv4 ARP: htype, ptype, hlen, plen, op, sha, spa, tha, tpa.
const ARP_LEN: usize = 28;
const ARP_OP_REQUEST: u16 = 1;
const IPV4_MIN_HEADER_LEN: usize = 20;
const TCP_MIN_HEADER_LEN: usize = 20;
const IPPROTO_TCP: u8 = 6;
/// More-fragments flag and fragment offset bits of the IPv4 flags/offset word.
const IPV4_FRAGMENT_MASK: u16 = 0x3fff;

#[xdp]
pub fn relay_steer(ctx: XdpContext) -> u32 {
    let verdict = classify(&ctx);
    count(verdict);
    match verdict {
        Verdict::Redirect => xdp_action::XDP_REDIRECT,
        Verdict::DropNoWorker
        | Verdict::DropMalformed
        | Verdict::DropFragment
        | Verdict::DropArpNoWorker
        | Verdict::DropArpStandby
        | Verdict::DropStandby => xdp_action::XDP_DROP,
        Verdict::PassNotIpv4 | Verdict::PassNotTcp | Verdict::PassNotSteered | Verdict::PassRunt => {
            xdp_action::XDP_PASS
        }
    }
}

#[inline(always)]
fn count(verdict: Verdict) {
    if let Some(counter) = VERDICTS.get_ptr_mut(verdict.index()) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}

/// Bounds-checked pointer to `len` bytes at `offset`: the verifier needs the
/// comparison against `data_end` in front of every packet access.
#[inline(always)]
fn bytes_at(ctx: &XdpContext, offset: usize, len: usize) -> Option<*const u8> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + len > end {
        return None;
    }
    Some((start + offset) as *const u8)
}

#[inline(always)]
fn read_u8(ptr: *const u8, at: usize) -> u8 {
    // SAFETY: callers only pass offsets inside a range checked by `bytes_at`.
    unsafe { *ptr.add(at) }
}

#[inline(always)]
fn read_be16(ptr: *const u8, at: usize) -> u16 {
    u16::from_be_bytes([read_u8(ptr, at), read_u8(ptr, at + 1)])
}

/// Wire-order u16 (the packet's bytes as a native integer), matching ServiceKey.
#[inline(always)]
fn read_ne16(ptr: *const u8, at: usize) -> u16 {
    u16::from_ne_bytes([read_u8(ptr, at), read_u8(ptr, at + 1)])
}

#[inline(always)]
fn read_ne32(ptr: *const u8, at: usize) -> u32 {
    u32::from_ne_bytes([
        read_u8(ptr, at),
        read_u8(ptr, at + 1),
        read_u8(ptr, at + 2),
        read_u8(ptr, at + 3),
    ])
}

#[inline(always)]
fn classify(ctx: &XdpContext) -> Verdict {
    let Some(eth) = bytes_at(ctx, 0, ETH_HEADER_LEN) else {
        return Verdict::PassRunt;
    };
    let ethertype = read_be16(eth, 12);
    if ethertype == ETHERTYPE_ARP {
        return classify_arp(ctx);
    }
    if ethertype != ETHERTYPE_IPV4 {
        return Verdict::PassNotIpv4;
    }
    let Some(ip) = bytes_at(ctx, ETH_HEADER_LEN, IPV4_MIN_HEADER_LEN) else {
        return Verdict::DropMalformed;
    };
    let version_ihl = read_u8(ip, 0);
    let ip_header_len = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || ip_header_len < IPV4_MIN_HEADER_LEN {
        return Verdict::DropMalformed;
    }
    if read_u8(ip, 9) != IPPROTO_TCP {
        return Verdict::PassNotTcp;
    }
    if read_be16(ip, 6) & IPV4_FRAGMENT_MASK != 0 {
        return Verdict::DropFragment;
    }
    let dst_addr = read_ne32(ip, 16);
    // Only the ports are needed to decide; the rest of the TCP header is the
    // worker's to validate, but a header that cannot be complete is no flow.
    let tcp_offset = ETH_HEADER_LEN + ip_header_len;
    let Some(tcp) = bytes_at(ctx, tcp_offset, TCP_MIN_HEADER_LEN) else {
        return Verdict::DropMalformed;
    };
    let dst_port = read_ne16(tcp, 2);

    if !is_steered(dst_addr, dst_port) {
        return Verdict::PassNotSteered;
    }
    if standing_by(dst_addr) {
        return Verdict::DropStandby;
    }
    if !workers_alive() {
        return Verdict::DropNoWorker;
    }
    let queue = rx_queue(ctx);
    // With flags 0 a missing socket makes the helper return XDP_ABORTED, which
    // we turn into a counted drop rather than a tracepoint-only abort.
    match XSKS.redirect(queue, 0) {
        Ok(_) => Verdict::Redirect,
        Err(_) => Verdict::DropNoWorker,
    }
}

#[inline(always)]
fn rx_queue(ctx: &XdpContext) -> u32 {
    // SAFETY: `ctx.ctx` is the kernel-provided xdp_md, valid for the whole call.
    unsafe { (*ctx.ctx).rx_queue_index }
}

#[inline(always)]
fn workers_alive() -> bool {
    CONFIG.get(0).map(|c| c.workers_alive != 0).unwrap_or(false)
}

/// ARP requests for the relay's addresses are answered by the box's kernel
/// only while a worker serves this queue. A socket leaves the XSKMAP when
/// its process dies, however it dies: the kernel keeps this promise even
/// for a SIGKILLed relay.
#[inline(always)]
fn classify_arp(ctx: &XdpContext) -> Verdict {
    let Some(arp) = bytes_at(ctx, ETH_HEADER_LEN, ARP_LEN) else {
        return Verdict::PassNotIpv4;
    };
    if read_be16(arp, 6) != ARP_OP_REQUEST {
        return Verdict::PassNotIpv4;
    }
    let key = AddrKey {
        addr: read_ne32(arp, 24),
    };
    // SAFETY: the value is copied out at once; hash map values stay valid
    // for the duration of the program run (RCU).
    let Some(owned) = (unsafe { ADDRS.get(&key) }).copied() else {
        return Verdict::PassNotIpv4;
    };
    if owned != ADDR_OWNED {
        return Verdict::DropArpStandby;
    }
    if workers_alive() && XSKS.get(rx_queue(ctx)).is_some() {
        Verdict::PassNotIpv4
    } else {
        Verdict::DropArpNoWorker
    }
}

/// An address listed in `ADDRS` that a peer serves now. An address not
/// listed (a relay alone) is served here.
#[inline(always)]
fn standing_by(addr: u32) -> bool {
    // SAFETY: the value is copied out at once; hash map values stay valid
    // for the duration of the program run (RCU).
    matches!(unsafe { ADDRS.get(&AddrKey { addr }) }, Some(&v) if v != ADDR_OWNED)
}

#[inline(always)]
fn is_steered(dst_addr: u32, dst_port: u16) -> bool {
    let key = ServiceKey {
        addr: dst_addr,
        port: dst_port,
        pad: 0,
    };
    // SAFETY: the value is only read, and hash map values stay valid for the
    // duration of the program run (RCU).
    if unsafe { SERVICES.get(&key) }.is_some() {
        return true;
    }
    match CONFIG.get(0) {
        Some(config) if config.back_addr != 0 && config.back_addr == dst_addr => {
            let port = u16::from_be(dst_port);
            port >= config.back_port_first && port <= config.back_port_last
        }
        _ => false,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
