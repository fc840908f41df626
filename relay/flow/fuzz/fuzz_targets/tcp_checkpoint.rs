//! The TCP checkpoint decoders the backplane feeds (inside flow checkpoints
//! and their deltas): `Checkpoint::from_bytes`, then on a decoded base a
//! standalone delta (`Checkpoint::apply`) and bare delta fields
//! (`Checkpoint::apply_delta_fields`).
//!
//! Input: a checkpoint (the first `CHECKPOINT_LEN` bytes), then a delta.
//!
//! No panic; whatever decodes is valid and re-encodes to the same bytes
//! (canonical but for the `snd_fin` slot, which the decoder ignores and the
//! encoder zeroes when the FIN flag is clear); an applied delta gives a
//! valid checkpoint, which round-trips and which the encoder's own delta
//! from the base gives again.
#![no_main]

use core::ops::Range;

use libfuzzer_sys::fuzz_target;
use relay_codec::{Reader, Writer};
use relay_tcp::{CHECKPOINT_LEN, Checkpoint, Delta, Error};

/// Where the encoding keeps `snd_fin` and the flags (`FIELDS` in
/// relay/tcp/src/checkpoint.rs: a 5-byte header, then the fields in order).
const SND_FIN: Range<usize> = 50..54;
const FLAGS: usize = 66;
const FLAG_FIN: u8 = 8;

fuzz_target!(|data: &[u8]| {
    let (base_bytes, delta) = data.split_at(data.len().min(CHECKPOINT_LEN));
    if !delta.is_empty() {
        assert!(
            Checkpoint::from_bytes(data).is_err(),
            "trailing bytes decoded"
        );
    }
    let Ok(base) = Checkpoint::from_bytes(base_bytes) else {
        return;
    };
    decoded(&base, base_bytes);

    // 1. A standalone delta as received: a wrong base tag is refused.
    let tag = base.tag();
    match base.apply(&Delta::from_bytes(delta.to_vec())) {
        Ok(new) => applied(&base, &new),
        Err(Error::DeltaBase { expected, got }) => {
            assert_eq!(expected, tag);
            assert_ne!(got, tag);
        }
        Err(_) => {}
    }

    // 2. The same with the base's tag, which the fuzzer cannot guess.
    if delta.len() >= 7 {
        let mut d = delta.to_vec();
        d[3..7].copy_from_slice(&tag.to_be_bytes());
        if let Ok(new) = base.apply(&Delta::from_bytes(d)) {
            applied(&base, &new);
        }
    }

    // 3. Bare fields (as the flow delta embeds them): read exactly the
    //    fields, no further.
    let mut r = Reader::new(delta);
    if let Ok(new) = base.apply_delta_fields(&mut r) {
        applied(&base, &new);
        let used = delta.len() - r.remaining();
        let mut again = Reader::new(&delta[..used]);
        assert_eq!(base.apply_delta_fields(&mut again).as_ref(), Ok(&new));
        assert!(again.is_empty());
    }
});

/// `c` was decoded from `bytes`.
fn decoded(c: &Checkpoint, bytes: &[u8]) {
    assert_eq!(c.validate(), Ok(()), "decoded an invalid checkpoint");
    let again = c.to_bytes();
    let mut canonical = bytes.to_vec();
    if canonical[FLAGS] & FLAG_FIN == 0 {
        canonical[SND_FIN].fill(0);
    }
    assert_eq!(again, canonical, "does not re-encode");
    assert_eq!(Checkpoint::from_bytes(&again).as_ref(), Ok(c));
}

/// `new` came from a delta applied to `base`.
fn applied(base: &Checkpoint, new: &Checkpoint) {
    assert_eq!(new.validate(), Ok(()), "a delta gave an invalid checkpoint");
    assert_eq!(Checkpoint::from_bytes(&new.to_bytes()).as_ref(), Ok(new));
    // The encoder's deltas say it again, standalone and bare.
    assert_eq!(base.apply(&new.delta_from(base)).as_ref(), Ok(new));
    let mut fields = Vec::new();
    new.write_delta_fields(base, &mut Writer::new(&mut fields));
    let mut r = Reader::new(&fields);
    assert_eq!(base.apply_delta_fields(&mut r).as_ref(), Ok(new));
    assert!(r.is_empty());
}
