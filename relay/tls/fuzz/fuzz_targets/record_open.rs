//! The record layer's read path on hostile input, two ways:
//! - raw bytes as received ciphertext (deframing, length and MAC checks);
//! - fuzzer-chosen inner plaintexts that the target seals correctly with the
//!   connection's keys, so the checks after decryption (content types,
//!   padding, alerts, handshake reassembly, KeyUpdate) see arbitrary content.
//!
//! Either way: no panic, `consumed` within the input, a dead connection
//! stays dead.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_tls::{ReadStatus, RecordLayer, RecordState, Suite, TrafficState, Version};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};

fn state(suite: Suite, fill: u8) -> RecordState {
    match suite.version() {
        Version::Tls13 => {
            RecordState::from_tls13_secret(suite, &vec![fill; suite.hash_len()], 0).unwrap()
        }
        Version::Tls12 => RecordState {
            suite,
            secret: std::sync::Arc::from([]),
            key: vec![fill; suite.aead().key_len()].into(),
            iv: [fill; 12],
            seq: 0,
        },
    }
}

fn nonce(iv: &[u8; 12], seq: u64) -> [u8; 12] {
    let mut n = *iv;
    for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
        *b ^= s;
    }
    n
}

/// Seals `content` as the client would: TLS 1.3 inner plaintext as given
/// (content || type || padding), TLS 1.2 with outer type `typ`.
fn seal(st: &RecordState, typ: u8, content: &[u8], seq: u64) -> Vec<u8> {
    let key = LessSafeKey::new(UnboundKey::new(st.suite.aead().ring(), &st.key).unwrap());
    let n = nonce(&st.iv, seq);
    let mut body = content.to_vec();
    match st.suite.version() {
        Version::Tls13 => {
            let len = (body.len() + 16) as u16;
            let header = [23, 3, 3, (len >> 8) as u8, len as u8];
            key.seal_in_place_append_tag(
                Nonce::assume_unique_for_key(n),
                Aad::from(header),
                &mut body,
            )
            .unwrap();
            let mut rec = header.to_vec();
            rec.extend_from_slice(&body);
            rec
        }
        Version::Tls12 => {
            let mut aad = [0u8; 13];
            aad[..8].copy_from_slice(&seq.to_be_bytes());
            aad[8] = typ;
            aad[9] = 3;
            aad[10] = 3;
            aad[11..].copy_from_slice(&(content.len() as u16).to_be_bytes());
            key.seal_in_place_append_tag(
                Nonce::assume_unique_for_key(n),
                Aad::from(aad),
                &mut body,
            )
            .unwrap();
            let gcm = st.suite.aead() != relay_tls::Aead::Chacha20Poly1305;
            let mut payload = if gcm { n[4..].to_vec() } else { Vec::new() };
            payload.extend_from_slice(&body);
            let len = payload.len() as u16;
            let mut rec = vec![typ, 3, 3, (len >> 8) as u8, len as u8];
            rec.extend_from_slice(&payload);
            rec
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let suite = Suite::ALL[usize::from(sel & 0x0f) % Suite::ALL.len()];
    let read = state(suite, 1);
    let write = state(suite, 2);
    let mut layer = RecordLayer::new(TrafficState::new(read.clone(), write).unwrap()).unwrap();

    let wire = if sel & 0x80 == 0 {
        rest.to_vec()
    } else {
        // Chunks: [len:u8][typ:u8][content...]; sealed with consecutive seqs.
        let mut wire = Vec::new();
        let mut i = 0;
        let mut seq = 0;
        while i + 2 <= rest.len() {
            let len = usize::from(rest[i]) * 8;
            let typ = 21 + rest[i + 1] % 3;
            let end = (i + 2 + len).min(rest.len());
            wire.extend(seal(&read, typ, &rest[i + 2..end], seq));
            seq += 1;
            i = end;
        }
        wire
    };

    // Feed in two pieces to exercise partial records.
    let split = usize::from(sel >> 4 & 0x07) * wire.len() / 8;
    let mut buf = wire[..split].to_vec();
    let mut plaintext = Vec::new();
    for more in [&wire[split..], &[][..]] {
        let r = layer.read(&buf, &mut plaintext);
        assert!(r.consumed <= buf.len());
        buf.drain(..r.consumed);
        buf.extend_from_slice(more);
        if matches!(
            r.status,
            ReadStatus::Violation(_) | ReadStatus::PeerAlert(_) | ReadStatus::Dead
        ) {
            assert!(layer.is_failed());
            assert_eq!(layer.read(&buf, &mut plaintext).status, ReadStatus::Dead);
            break;
        }
    }
    let mut out = Vec::new();
    let _ = layer.poll_transmit(&mut out);
    let _ = layer.seal_all(b"reply", &mut out);
    // Whatever happened, the state exports and imports.
    let exported = layer.export();
    let _ = TrafficState::import(&exported).unwrap();
});
