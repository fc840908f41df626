//! IPv4 header, checksum verification off so the fuzzer gets past it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_wire::{Ipv4Packet, Ipv4Repr};

fuzz_target!(|data: &[u8]| {
    let view = Ipv4Packet::new_unchecked(data);
    let strict = Ipv4Repr::parse(&view);
    let Ok(repr) = Ipv4Repr::parse_with(&view, false) else {
        assert!(strict.is_err());
        return;
    };
    assert_eq!(strict.is_ok(), view.verify_checksum());
    let mut out = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Ipv4Packet::new_unchecked(&mut out[..]));
    assert_eq!(
        Ipv4Repr::parse(&Ipv4Packet::new_unchecked(&out[..])),
        Ok(repr)
    );
});
