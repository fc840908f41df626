//! The backplane decoders on hostile input: the deframer fed in
//! fuzzer-chosen chunks, each message body decoder, and a standby store fed
//! whatever decodes.
//!
//! No panic; every decoded body and envelope re-encodes to the same bytes
//! (the encodings are canonical); a failed header stays failed; the
//! standby stays within its capacity.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_replication::{
    Deframer, Envelope, Error, HEADER_LEN, Kind, Message, Standby, StandbyConfig,
};

/// The toy delta codec: a delta is a suffix to append.
fn append(base: &[u8], delta: &[u8]) -> Result<Vec<u8>, String> {
    if delta.first() == Some(&0xff) {
        return Err("refused".into());
    }
    Ok([base, delta].concat())
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };

    // 1. A message body on its own, as kind `first`.
    if let Ok(m) = Message::decode(Kind::from_u8(first), rest) {
        let mut again = Vec::new();
        m.write_body(&mut relay_codec::Writer::new(&mut again));
        assert_eq!(again, rest, "{:?} does not re-encode", m.kind());
    }

    // 2. The stream, in chunks of 1..=16 bytes chosen by `first`.
    let chunk = usize::from(first % 16) + 1;
    let mut d = Deframer::new();
    let mut standby = Standby::new(
        1,
        append as fn(&[u8], &[u8]) -> Result<Vec<u8>, String>,
        StandbyConfig {
            local_relay: 2,
            max_flows: 64,
        },
    );
    let mut fed = 0usize;
    let mut out = Vec::new();
    for piece in rest.chunks(chunk) {
        d.push(piece);
        fed += piece.len();
        // At most one envelope per header's worth of input.
        for _ in 0..=fed / HEADER_LEN {
            match d.pop() {
                Ok(None) => break,
                Ok(Some(env)) => {
                    let mut bytes = Vec::new();
                    env.encode(&mut bytes).expect("decoded bodies fit");
                    let mut again = Deframer::new();
                    again.push(&bytes);
                    assert_eq!(again.pop(), Ok(Some(env.clone())));
                    feed(&mut standby, env);
                    out.clear();
                    standby.poll_transmit(&mut out);
                }
                Err(
                    e @ (Error::BadMagic { .. }
                    | Error::EnvelopeVersion { .. }
                    | Error::BodyTooLong { .. }
                    | Error::Sequencing { .. }),
                ) => {
                    assert_eq!(d.pop(), Err(e), "a bad header stays failed");
                    return;
                }
                Err(_) => {}
            }
        }
    }
    assert!(standby.len() <= 64);
});

fn feed(standby: &mut Standby<fn(&[u8], &[u8]) -> Result<Vec<u8>, String>>, env: Envelope) {
    // Errors are the peer's: the relay would disconnect; here we go on.
    match &env.message {
        Message::Hello(h) => {
            let _ = standby.handle_hello(h);
        }
        m if m.kind().is_stream() => {
            let _ = standby.handle(env);
        }
        _ => {}
    }
}
