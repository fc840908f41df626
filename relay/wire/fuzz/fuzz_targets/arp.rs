//! ARP: the packet alone and inside an Ethernet frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_wire::{ArpPacket, ArpRepr, emit_arp, parse_arp};

fuzz_target!(|data: &[u8]| {
    if let Ok(repr) = ArpRepr::parse(&ArpPacket::new_unchecked(data)) {
        let mut out = vec![0u8; repr.buffer_len()];
        repr.emit(&mut ArpPacket::new_unchecked(&mut out[..]));
        assert_eq!(
            ArpRepr::parse(&ArpPacket::new_unchecked(&out[..])),
            Ok(repr)
        );
    }
    if let Ok((eth, arp)) = parse_arp(data) {
        let mut out = [0u8; relay_wire::ARP_FRAME_LEN];
        assert_eq!(emit_arp(&eth, &arp, &mut out), Ok(out.len()));
        assert_eq!(parse_arp(&out), Ok((eth, arp)));
    }
});
