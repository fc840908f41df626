//! Ethernet → IPv4 → TCP as the datapath parses it, checksums off.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_wire::{Ipv4Repr, TcpFrame};

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = TcpFrame::parse_with(data, false) else {
        assert!(TcpFrame::parse(data).is_err());
        return;
    };
    if let Ok(strict) = TcpFrame::parse(data) {
        assert_eq!(strict, frame);
    }
    let mut out = vec![0u8; frame.frame_len()];
    assert_eq!(frame.emit(&mut out), Ok(out.len()));
    // The IPv4 payload length is recomputed from the re-emitted segment,
    // whose options may have been normalised.
    let expected = TcpFrame {
        ip: Ipv4Repr {
            payload_len: frame.tcp.buffer_len(),
            ..frame.ip
        },
        ..frame
    };
    assert_eq!(TcpFrame::parse(&out), Ok(expected));
});
