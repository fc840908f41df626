//! Gratuitous ARP: how a relay that takes an address over tells the
//! segment (the switch's forwarding table, the clients' and the backends'
//! neighbour caches) that the address now lives behind its MAC.

use std::net::Ipv4Addr;

use crate::{AfPacketDevice, Device, DeviceError};

/// The frame announcing `addr` at `mac`: an ARP request (`reply` false) or
/// reply for `addr` from `addr`, broadcast, padded to the Ethernet minimum.
/// Linux updates an existing neighbour entry from either; some stacks only
/// from one, so [`announce`] sends both.
pub fn garp_frame(mac: [u8; 6], addr: Ipv4Addr, reply: bool) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    // Ethernet/IPv4 ARP: htype 1, ptype 0x0800, hlen 6, plen 4, op.
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, if reply { 2 } else { 1 }]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&addr.octets());
    let target_mac = if reply { [0xff; 6] } else { [0; 6] };
    f[32..38].copy_from_slice(&target_mac);
    f[38..42].copy_from_slice(&addr.octets());
    f
}

/// Broadcasts a gratuitous ARP request and reply for each of `addrs` on
/// `ifname` (whose MAC is `mac`), through a packet socket: the XDP program
/// sees only what the interface receives, not this.
pub fn announce(ifname: &str, mac: [u8; 6], addrs: &[Ipv4Addr]) -> Result<(), DeviceError> {
    let mut dev = AfPacketDevice::open(ifname)?;
    for addr in addrs {
        for reply in [false, true] {
            let frame = garp_frame(mac, *addr, reply);
            while !dev.send(&frame)? {
                dev.flush()?;
            }
        }
    }
    dev.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announces_the_address_from_itself() {
        let mac = [2, 0, 0, 0, 0, 0xb];
        let f = garp_frame(mac, Ipv4Addr::new(10, 200, 1, 100), false);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[10, 200, 1, 100]);
        assert_eq!(&f[38..42], &[10, 200, 1, 100]);
        let r = garp_frame(mac, Ipv4Addr::new(10, 200, 1, 100), true);
        assert_eq!(&r[20..22], &[0, 2]);
    }
}
