//! Ethernet header: parse, and when it parses, emit and parse again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_wire::{EthernetFrame, EthernetRepr};

fuzz_target!(|data: &[u8]| {
    let Ok(repr) = EthernetRepr::parse(&EthernetFrame::new_unchecked(data)) else {
        return;
    };
    let mut out = vec![0u8; repr.buffer_len()];
    repr.emit(&mut EthernetFrame::new_unchecked(&mut out[..]));
    assert_eq!(
        EthernetRepr::parse(&EthernetFrame::new_unchecked(&out[..])),
        Ok(repr)
    );
});
