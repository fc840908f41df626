//! The flow checkpoint decoders the backplane feeds: `FlowCheckpoint::
//! from_bytes`, then `apply_delta` on a decoded base.
//!
//! Input: a big-endian `u16` length, a checkpoint of that length (or what
//! is left), then a delta.
//!
//! No panic; whatever decodes is valid and re-encodes to the same bytes
//! (canonical but for bytes the decoder ignores: the `snd_fin` slot of a
//! TCP checkpoint without a FIN, and a server name or ALPN block flagged
//! absent); an applied delta gives a valid checkpoint of the same flow at a
//! later commit, which round-trips and which the encoder's own delta from
//! the base gives again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_flow::{FlowCheckpoint, apply_delta, encode_delta};
use relay_tcp::CHECKPOINT_LEN;

/// Where the front and back TCP checkpoints start: after `RFLW`, the
/// version, the flow id (12 bytes), the commit number (12 bytes) and each
/// one's `u32` length (always `CHECKPOINT_LEN`).
const FRONT: usize = 5 + 12 + 12 + 4;
const BACK: usize = FRONT + CHECKPOINT_LEN + 4;
/// In a TCP checkpoint: the `snd_fin` slot, the flags and the FIN flag.
const SND_FIN: usize = 50;
const FLAGS: usize = 66;
const FLAG_FIN: u8 = 8;

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let n = usize::from(u16::from_be_bytes(*len)).min(rest.len());
    let (base_bytes, delta) = rest.split_at(n);
    let Ok(base) = FlowCheckpoint::from_bytes(base_bytes) else {
        return;
    };
    decoded(&base, base_bytes);
    if let Ok(new) = apply_delta(&base, delta) {
        applied(&base, &new);
    }
});

fn valid(c: &FlowCheckpoint, what: &str) {
    if let Err(e) = c
        .validate()
        .and(c.front.validate().map_err(Into::into))
        .and(c.back.validate().map_err(Into::into))
    {
        panic!("{what} an invalid checkpoint: {e}");
    }
}

fn round_trip(c: &FlowCheckpoint) -> Vec<u8> {
    let bytes = c.to_bytes();
    match FlowCheckpoint::from_bytes(&bytes) {
        Ok(again) => assert_eq!(&again, c, "does not decode to itself"),
        Err(e) => panic!("its encoding does not decode: {e}"),
    }
    bytes
}

/// `c` was decoded from `bytes`.
fn decoded(c: &FlowCheckpoint, bytes: &[u8]) {
    valid(c, "decoded");
    let again = round_trip(c);
    let mut canonical = bytes.to_vec();
    for at in [FRONT, BACK] {
        if canonical[at + FLAGS] & FLAG_FIN == 0 {
            canonical[at + SND_FIN..at + SND_FIN + 4].fill(0);
        }
    }
    let m = &c.meta;
    if m.server_name.is_some() && m.alpn.is_some() {
        assert_eq!(again, canonical, "does not re-encode");
    } else {
        // An absent name or ALPN may have come with bytes: the same up to
        // them (the meta starts with the service and the backend, 8 bytes).
        let meta = 8
            + 4
            + m.server_name.as_ref().map_or(0, String::len)
            + 1
            + 4
            + m.alpn.as_ref().map_or(0, Vec::len)
            + 2;
        let upto = again.len() - meta + 8;
        assert_eq!(again[..upto], canonical[..upto], "does not re-encode");
    }
}

/// `new` came from a delta applied to `base`.
fn applied(base: &FlowCheckpoint, new: &FlowCheckpoint) {
    valid(new, "a delta gave");
    assert_eq!(new.id, base.id);
    assert!(new.commit > base.commit, "a delta went back");
    assert_eq!(new.meta, base.meta);
    round_trip(new);
    let delta = encode_delta(new, base).expect("a delta from its base");
    match apply_delta(base, &delta) {
        Ok(again) => assert_eq!(&again, new, "the encoder's delta gives another"),
        Err(e) => panic!("the encoder's delta does not apply: {e}"),
    }
}
