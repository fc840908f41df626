//! TCP segment and options, checksum verification off so the fuzzer gets to
//! the option parser.
#![no_main]

use core::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use relay_wire::{TcpPacket, TcpRepr};

const SRC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const DST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

fuzz_target!(|data: &[u8]| {
    let view = TcpPacket::new_unchecked(data);
    let Ok(repr) = TcpRepr::parse(&view, SRC, DST, false) else {
        return;
    };
    let mut out = vec![0u8; repr.buffer_len()];
    repr.emit(&mut TcpPacket::new_unchecked(&mut out[..]), SRC, DST);
    let back = TcpPacket::new_checked(&out[..]).expect("emitted header fits");
    assert_eq!(back.header_len(), repr.header_len());
    assert_eq!(TcpRepr::parse(&back, SRC, DST, true), Ok(repr));
});
