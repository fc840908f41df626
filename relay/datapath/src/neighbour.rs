//! Neighbour (ARP) resolution through the kernel.
//!
//! The steer program passes ARP to the kernel, so the relay's own addresses
//! keep answering ARP and the kernel's neighbour table stays the single
//! source of MAC addresses. To reach a new next hop, the worker asks the
//! kernel to resolve it (a datagram to the discard port makes the kernel
//! send an ARP request) and reads the answer from the table.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use crate::DeviceError;

/// ARP table of the calling thread's network namespace.
const ARP_TABLE: &str = "/proc/thread-self/net/arp";
/// ATF_COM: the entry is complete (resolved).
const ATF_COM: u32 = 0x02;

/// Looks `addr` up in the kernel's ARP table (complete entries only).
pub fn lookup(addr: Ipv4Addr) -> Result<Option<[u8; 6]>, DeviceError> {
    let table = std::fs::read_to_string(ARP_TABLE).map_err(|source| DeviceError::Syscall {
        call: format!("read {ARP_TABLE}"),
        source,
    })?;
    Ok(parse_arp_table(&table, addr))
}

/// Resolves `addr` to a MAC address, asking the kernel to ARP for it, within `timeout`.
pub fn resolve(addr: Ipv4Addr, timeout: Duration) -> Result<[u8; 6], DeviceError> {
    if let Some(mac) = lookup(addr)? {
        return Ok(mac);
    }
    let deadline = Instant::now() + timeout;
    let mut next_probe = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_probe {
            probe(addr)?;
            next_probe = now + Duration::from_millis(200);
        }
        std::thread::sleep(Duration::from_millis(5));
        if let Some(mac) = lookup(addr)? {
            return Ok(mac);
        }
        if Instant::now() >= deadline {
            return Err(DeviceError::Syscall {
                call: format!("ARP resolution of {addr}"),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "no ARP reply"),
            });
        }
    }
}

/// One empty datagram to the discard port: enough for the kernel to ARP.
fn probe(addr: Ipv4Addr) -> Result<(), DeviceError> {
    let socket =
        UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).map_err(|source| {
            DeviceError::Syscall {
                call: "bind UDP socket for ARP probe".into(),
                source,
            }
        })?;
    // Unreachable is an answer too (ICMP), not an error worth reporting here.
    let _ = socket.send_to(&[], SocketAddrV4::new(addr, 9));
    Ok(())
}

fn parse_arp_table(table: &str, addr: Ipv4Addr) -> Option<[u8; 6]> {
    // IP address  HW type  Flags  HW address  Mask  Device
    table.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace();
        let ip: Ipv4Addr = fields.next()?.parse().ok()?;
        let _hw_type = fields.next()?;
        let flags = u32::from_str_radix(fields.next()?.trim_start_matches("0x"), 16).ok()?;
        let mac_text = fields.next()?;
        if ip != addr || flags & ATF_COM == 0 {
            return None;
        }
        let mut mac = [0u8; 6];
        let mut parts = mac_text.split(':');
        for slot in &mut mac {
            *slot = u8::from_str_radix(parts.next()?, 16).ok()?;
        }
        Some(mac)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "IP address       HW type     Flags       HW address            Mask     Device\n\
        10.200.1.10      0x1         0x2         1a:35:7d:a4:95:ea     *        front\n\
        10.200.1.11      0x1         0x0         00:00:00:00:00:00     *        front\n";

    #[test]
    fn finds_complete_entries_only() {
        assert_eq!(
            parse_arp_table(TABLE, Ipv4Addr::new(10, 200, 1, 10)),
            Some([0x1a, 0x35, 0x7d, 0xa4, 0x95, 0xea])
        );
        assert_eq!(parse_arp_table(TABLE, Ipv4Addr::new(10, 200, 1, 11)), None);
        assert_eq!(parse_arp_table(TABLE, Ipv4Addr::new(10, 200, 1, 12)), None);
        assert_eq!(
            parse_arp_table("garbage\n1 2\n", Ipv4Addr::new(1, 2, 3, 4)),
            None
        );
    }
}
