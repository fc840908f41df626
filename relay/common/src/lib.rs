//! The contract between the XDP steer program (`relay-ebpf`) and userspace.
//!
//! Every map key and value the two sides exchange is defined here, once, as a
//! `#[repr(C)]` type without padding; the size assertions below make a layout
//! change a compile error on both sides instead of a silent misread.
//!
//! Byte order: addresses and ports are kept exactly as they appear on the wire
//! (network byte order), so the kernel program compares them with the packet's
//! bytes without swapping. Use the constructors, not the fields, from userspace.
#![no_std]
#![forbid(unsafe_code)]

/// Name of the XDP program inside the object file.
pub const PROGRAM_NAME: &str = "relay_steer";

/// Map names inside the object file.
pub mod map_name {
    /// `XSKMAP`: rx queue index -> AF_XDP socket of the worker serving that queue.
    pub const XSKS: &str = "XSKS";
    /// `HASH`: [`ServiceKey`](super::ServiceKey) -> [`ServiceValue`](super::ServiceValue).
    pub const SERVICES: &str = "SERVICES";
    /// `ARRAY` with one [`SteerConfig`](super::SteerConfig) at index 0.
    pub const CONFIG: &str = "CONFIG";
    /// `PERCPU_ARRAY` of `u64`, indexed by [`Verdict`](super::Verdict).
    pub const VERDICTS: &str = "VERDICTS";
    /// `HASH`: [`AddrKey`](super::AddrKey) -> `u32`
    /// ([`ADDR_OWNED`](super::ADDR_OWNED) or [`ADDR_STANDBY`](super::ADDR_STANDBY)):
    /// the relay's addresses (VIPs and the back-side address). ARP requests
    /// for them are answered only while this relay owns them and a worker
    /// lives.
    pub const ADDRS: &str = "ADDRS";
}

/// Capacity of the XSKMAP: the highest rx queue index a worker can serve, plus one.
pub const MAX_QUEUES: u32 = 64;
/// Capacity of the services map: (VIP, port) pairs steered on the front side.
pub const MAX_SERVICES: u32 = 256;
/// Capacity of the addresses map: every VIP once, plus the back-side address.
pub const MAX_ADDRS: u32 = MAX_SERVICES + 1;

/// [`map_name::ADDRS`] value: this relay serves the address.
pub const ADDR_OWNED: u32 = 1;
/// [`map_name::ADDRS`] value: a peer relay serves the address; this box
/// must not answer for it (even if its kernel has it configured).
pub const ADDR_STANDBY: u32 = 0;

/// One of the relay's own IPv4 addresses, as it appears on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrKey {
    /// IPv4 address, network byte order (the packet's four bytes read as a native u32).
    pub addr: u32,
}

impl AddrKey {
    /// The key of `octets`.
    pub const fn new(octets: [u8; 4]) -> Self {
        Self {
            addr: u32::from_ne_bytes(octets),
        }
    }
}

/// A front-side service: a VIP and a TCP port, as they appear on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// IPv4 address, network byte order (the packet's four bytes read as a native u32).
    pub addr: u32,
    /// TCP port, network byte order.
    pub port: u16,
    /// Always zero: the hash map compares all bytes of the key.
    pub pad: u16,
}

impl ServiceKey {
    /// A key for `octets:port`.
    pub const fn new(octets: [u8; 4], port: u16) -> Self {
        Self {
            addr: u32::from_ne_bytes(octets),
            port: port.to_be(),
            pad: 0,
        }
    }
}

/// What userspace stores for a service. Only presence matters today; the
/// service index lets counters and workers name the service without a lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceValue {
    /// Index of the service in the relay's configuration.
    pub service_index: u32,
}

/// Global steering settings, one entry at index 0 of [`map_name::CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SteerConfig {
    /// The relay's back-side IPv4 address (network byte order); 0 = no back side.
    pub back_addr: u32,
    /// First local port of back-side connections (host byte order).
    pub back_port_first: u16,
    /// Last local port of back-side connections, inclusive (host byte order).
    pub back_port_last: u16,
    /// Non-zero while userspace workers run. Cleared on shutdown so steered
    /// traffic is dropped instead of reaching the kernel stack, which would
    /// answer it with resets.
    pub workers_alive: u32,
    /// Always zero.
    pub pad: u32,
}

impl SteerConfig {
    /// Settings for a back side at `octets` with local ports `first..=last`.
    pub const fn new(octets: [u8; 4], first: u16, last: u16, workers_alive: bool) -> Self {
        Self {
            back_addr: u32::from_ne_bytes(octets),
            back_port_first: first,
            back_port_last: last,
            workers_alive: workers_alive as u32,
            pad: 0,
        }
    }
}

/// Every decision the steer program takes, each with its own per-CPU counter.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Steered into the AF_XDP socket of the packet's rx queue.
    Redirect = 0,
    /// Steered traffic, but no live worker socket on this queue (or workers
    /// are marked dead): dropped, because the kernel would reset the flow.
    DropNoWorker = 1,
    /// IPv4 or TCP header truncated or inconsistent: dropped (the kernel would
    /// discard it too, and it might be aimed at a steered flow).
    DropMalformed = 2,
    /// A fragment of a TCP datagram: dropped. TCP peers set DF; the relay does
    /// not reassemble, and the kernel must not see pieces of steered flows.
    DropFragment = 3,
    /// Not IPv4 (ARP, IPv6, LLDP...): passed to the kernel.
    PassNotIpv4 = 4,
    /// IPv4 but not TCP (ICMP, UDP...): passed to the kernel.
    PassNotTcp = 5,
    /// TCP to an address or port the relay does not steer: passed.
    PassNotSteered = 6,
    /// Shorter than an Ethernet header: passed, the kernel discards it.
    PassRunt = 7,
    /// An ARP request for one of the relay's addresses while no worker
    /// lives (the process died, the box stays up): dropped, so that the box
    /// stops claiming the address and a peer that takes it over gets the
    /// traffic.
    DropArpNoWorker = 8,
    /// An ARP request for an address that a peer relay serves (this relay
    /// stands by for it): dropped, so that only the owner answers.
    DropArpStandby = 9,
    /// Steered TCP to an address that a peer relay serves (this relay
    /// stands by for it): dropped. Frames for the owner reach a standby
    /// when a switch floods them (the owner's port just went down); its
    /// worker has no flow for them yet and would answer with a reset,
    /// killing a connection this relay is about to adopt.
    DropStandby = 10,
}

/// Number of [`Verdict`] variants: the length of the verdict counter array.
pub const VERDICT_COUNT: u32 = 11;

impl Verdict {
    /// All verdicts in counter-index order.
    pub const ALL: [Verdict; VERDICT_COUNT as usize] = [
        Verdict::Redirect,
        Verdict::DropNoWorker,
        Verdict::DropMalformed,
        Verdict::DropFragment,
        Verdict::PassNotIpv4,
        Verdict::PassNotTcp,
        Verdict::PassNotSteered,
        Verdict::PassRunt,
        Verdict::DropArpNoWorker,
        Verdict::DropArpStandby,
        Verdict::DropStandby,
    ];

    /// Stable lower-case name, used as a metric label.
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Redirect => "redirect",
            Verdict::DropNoWorker => "drop_no_worker",
            Verdict::DropMalformed => "drop_malformed",
            Verdict::DropFragment => "drop_fragment",
            Verdict::PassNotIpv4 => "pass_not_ipv4",
            Verdict::PassNotTcp => "pass_not_tcp",
            Verdict::PassNotSteered => "pass_not_steered",
            Verdict::PassRunt => "pass_runt",
            Verdict::DropArpNoWorker => "drop_arp_no_worker",
            Verdict::DropArpStandby => "drop_arp_standby",
            Verdict::DropStandby => "drop_standby",
        }
    }

    /// The counter index of this verdict.
    pub const fn index(self) -> u32 {
        self as u32
    }
}

// Layout is the contract: a change here must be a deliberate change on both sides.
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 8);
const _: () = assert!(core::mem::align_of::<ServiceKey>() == 4);
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 4);
const _: () = assert!(core::mem::size_of::<SteerConfig>() == 16);
const _: () = assert!(core::mem::size_of::<AddrKey>() == 4);
const _: () = assert!(Verdict::ALL.len() == VERDICT_COUNT as usize);
const _: () = assert!(Verdict::DropStandby as u32 == VERDICT_COUNT - 1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_key_holds_wire_bytes() {
        let key = ServiceKey::new([10, 200, 1, 100], 443);
        assert_eq!(key.addr.to_ne_bytes(), [10, 200, 1, 100]);
        assert_eq!(key.port.to_ne_bytes(), [0x01, 0xbb]);
    }

    #[test]
    fn verdict_indices_match_order() {
        for (i, v) in Verdict::ALL.iter().enumerate() {
            assert_eq!(v.index() as usize, i);
        }
    }
}
