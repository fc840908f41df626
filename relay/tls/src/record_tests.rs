//! Record layer unit tests: RFC 8448 vectors, round trips for every suite,
//! KeyUpdate, determinism, export/import and hostile input.

use super::*;
use crate::test_util::hex;

/// RFC 8448 section 3, the 50 bytes of application data both sides send.
fn rfc8448_payload() -> Vec<u8> {
    (0u8..50).collect()
}

/// RFC 8448 section 3: {client} send application_data record (seq 0).
const RFC8448_CLIENT_RECORD: &str = "17030300 43a23f7054b62c94d0affafe8228ba55cbefacea42f914aa66bcab3f2b9819a8a5b46b395bd54a9a20441e2b62974e1f5a6292a2977014bd1e3deae63aeebb21694915e4";
/// RFC 8448 section 3: {server} send application_data record (seq 1, after
/// the NewSessionTicket at seq 0).
const RFC8448_SERVER_RECORD: &str = "17030300 432e937e11ef4ac740e538ad36005fc4a46932fc3225d05f82aa1b36e30efaf97d90e6dffc602dcb501a59a8fcc49c4bf2e5f0a21c0047c2abf332540dd032e167c2955d";
const RFC8448_CLIENT_SECRET: &str =
    "9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5";
const RFC8448_SERVER_SECRET: &str =
    "a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643";

fn rfc8448_server() -> RecordLayer {
    let suite = Suite::Tls13Aes128GcmSha256;
    let read = RecordState::from_tls13_secret(suite, &hex(RFC8448_CLIENT_SECRET), 0).unwrap();
    let write = RecordState::from_tls13_secret(suite, &hex(RFC8448_SERVER_SECRET), 1).unwrap();
    RecordLayer::new(TrafficState::new(read, write).unwrap()).unwrap()
}

#[test]
fn rfc8448_server_application_record_is_byte_exact() {
    let mut server = rfc8448_server();
    assert_eq!(
        server.traffic_state().write.key.to_vec(),
        hex("9f02283b6c9c07efc26bb9f2ac92e356")
    );
    assert_eq!(
        server.traffic_state().write.iv.to_vec(),
        hex("cf782b88dd83549aadf1e984")
    );
    let mut out = Vec::new();
    let done = server.seal(&rfc8448_payload(), &[50], &mut out).unwrap();
    assert_eq!(
        done,
        SealOutcome {
            records: 1,
            bytes: 72
        }
    );
    assert_eq!(out, hex(RFC8448_SERVER_RECORD));
    assert_eq!(server.traffic_state().write.seq, 2);
}

#[test]
fn rfc8448_client_application_record_opens() {
    let mut server = rfc8448_server();
    let rec = hex(RFC8448_CLIENT_RECORD);
    let mut pt = Vec::new();
    let r = server.read(&rec, &mut pt);
    assert_eq!(r.consumed, 72);
    assert_eq!(r.records, 1);
    assert_eq!(r.status, ReadStatus::NeedMore { needed: 5 });
    assert_eq!(pt, rfc8448_payload());
    assert_eq!(server.traffic_state().read.seq, 1);
    // The same record again is a replay under the next sequence number.
    let r = server.read(&rec, &mut pt);
    assert_eq!(r.status, ReadStatus::Violation(Violation::BadRecordMac));
    assert_eq!(pt.len(), 50, "no garbage appended");
}

// ---- helpers ------------------------------------------------------------

fn dir_state(suite: Suite, fill: u8, seq: u64) -> RecordState {
    match suite.version() {
        Version::Tls13 => {
            RecordState::from_tls13_secret(suite, &vec![fill; suite.hash_len()], seq).unwrap()
        }
        Version::Tls12 => RecordState {
            suite,
            secret: std::sync::Arc::from([]),
            key: vec![fill; suite.aead().key_len()].into(),
            iv: [fill.wrapping_mul(3); IV_LEN],
            seq,
        },
    }
}

/// A server layer and a peer ("client") layer with mirrored states.
fn pair(suite: Suite) -> (RecordLayer, RecordLayer) {
    let c2s = dir_state(suite, 1, 0);
    let s2c = dir_state(suite, 2, 0);
    let server = RecordLayer::new(TrafficState::new(c2s.clone(), s2c.clone()).unwrap()).unwrap();
    let client = RecordLayer::new(TrafficState::new(s2c, c2s).unwrap()).unwrap();
    (server, client)
}

/// Reads everything, asserting the read ends cleanly; returns the plaintext.
#[track_caller]
fn read_all(layer: &mut RecordLayer, wire: &[u8]) -> (Vec<u8>, ReadOutcome) {
    let mut pt = Vec::new();
    let r = layer.read(wire, &mut pt);
    assert_eq!(r.consumed, wire.len(), "{r:?}");
    assert_eq!(r.status, ReadStatus::NeedMore { needed: 5 }, "{r:?}");
    (pt, r)
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A TLS 1.3 record sealed by hand: `inner` is content || type || padding.
fn raw13(state: &RecordState, inner: &[u8]) -> Vec<u8> {
    let key = ring_key(state).unwrap();
    let len = (inner.len() + TAG_LEN) as u16;
    let header = [23, 3, 3, (len >> 8) as u8, len as u8];
    let mut body = inner.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce(&state.iv, state.seq)),
        Aad::from(header),
        &mut body,
    )
    .unwrap();
    let mut rec = header.to_vec();
    rec.extend_from_slice(&body);
    rec
}

/// A TLS 1.2 record sealed by hand with a chosen explicit nonce (GCM).
fn raw12(state: &RecordState, typ: u8, data: &[u8], explicit: [u8; 8]) -> Vec<u8> {
    let key = ring_key(state).unwrap();
    let gcm = state.suite.aead() != Aead::Chacha20Poly1305;
    let n = if gcm {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&state.iv[..4]);
        n[4..].copy_from_slice(&explicit);
        n
    } else {
        nonce(&state.iv, state.seq)
    };
    let mut body = data.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(n),
        Aad::from(tls12_aad(state.seq, typ, data.len())),
        &mut body,
    )
    .unwrap();
    let mut payload = if gcm { explicit.to_vec() } else { Vec::new() };
    payload.extend_from_slice(&body);
    let len = payload.len() as u16;
    let mut rec = vec![typ, 3, 3, (len >> 8) as u8, len as u8];
    rec.extend_from_slice(&payload);
    rec
}

// ---- round trips ----------------------------------------------------------

#[test]
fn every_suite_round_trips_both_directions() {
    for suite in Suite::ALL {
        let (mut server, mut client) = pair(suite);
        for size in [1usize, 100, 1400, MAX_PLAINTEXT] {
            let msg = data(size * 2 + 3);
            let mut plan = plan_records(msg.len(), size);
            plan.reverse();
            let mut wire = Vec::new();
            let done = server.seal(&msg, &plan, &mut wire).unwrap();
            assert_eq!(done.records, plan.len());
            assert_eq!(
                done.bytes,
                plan.iter()
                    .map(|&n| record_wire_len(suite, n))
                    .sum::<usize>()
            );
            let (pt, r) = read_all(&mut client, &wire);
            assert_eq!(pt, msg, "{suite} {size}");
            assert_eq!(r.records, plan.len());

            let mut wire = Vec::new();
            let _ = client.seal_all(&msg, &mut wire).unwrap();
            let (pt, _) = read_all(&mut server, &wire);
            assert_eq!(pt, msg);
        }
    }
}

#[test]
fn byte_at_a_time_input_is_incomplete_then_whole() {
    for suite in [
        Suite::Tls13Chacha20Poly1305Sha256,
        Suite::Tls12EcdheRsaAes256GcmSha384,
    ] {
        let (mut server, mut client) = pair(suite);
        let mut wire = Vec::new();
        let _ = client.seal(&data(300), &[100, 200], &mut wire).unwrap();
        let mut buf = Vec::new();
        let mut pt = Vec::new();
        for &b in &wire {
            buf.push(b);
            let r = server.read(&buf, &mut pt);
            assert!(matches!(r.status, ReadStatus::NeedMore { .. }), "{r:?}");
            buf.drain(..r.consumed);
        }
        assert!(buf.is_empty());
        assert_eq!(pt, data(300));
    }
}

#[test]
fn tls12_gcm_explicit_nonce_is_iv_xor_seq_and_any_nonce_opens() {
    let suite = Suite::Tls12EcdheEcdsaAes128GcmSha256;
    let (mut server, _) = pair(suite);
    let w = server.traffic_state().write.clone();
    let mut wire = Vec::new();
    let _ = server.seal(b"x", &[1], &mut wire).unwrap();
    assert_eq!(wire[5..13], nonce(&w.iv, 0)[4..]);
    // The receiver takes whatever explicit nonce the sender chose (RFC 5288 3).
    let r = server.traffic_state().read.clone();
    let rec = raw12(&r, 23, b"hello", [9, 8, 7, 6, 5, 4, 3, 2]);
    let (pt, _) = read_all(&mut server, &rec);
    assert_eq!(pt, b"hello");
}

#[test]
fn tls13_padding_is_stripped() {
    let (mut server, _) = pair(Suite::Tls13Aes256GcmSha384);
    let st = server.traffic_state().read.clone();
    let mut inner = b"padded".to_vec();
    inner.push(23);
    inner.extend_from_slice(&[0; 300]);
    let (pt, _) = read_all(&mut server, &raw13(&st, &inner));
    assert_eq!(pt, b"padded");
}

#[test]
fn empty_application_data_records_are_fine() {
    let (mut server, _) = pair(Suite::Tls13Aes128GcmSha256);
    let st = server.traffic_state().read.clone();
    let (pt, r) = read_all(&mut server, &raw13(&st, &[23]));
    assert!(pt.is_empty());
    assert_eq!(r.records, 1);
}

// ---- KeyUpdate ------------------------------------------------------------

#[test]
fn key_update_initiated_by_either_side() {
    for suite in Suite::ALL
        .into_iter()
        .filter(|s| s.version() == Version::Tls13)
    {
        let (mut server, mut client) = pair(suite);
        let first_secret = server.traffic_state().write.secret.clone();

        // Server updates its write keys without asking the client.
        server.initiate_key_update(false).unwrap();
        let mut wire = Vec::new();
        let _ = server
            .seal(b"after server update", &[19], &mut wire)
            .unwrap();
        assert_ne!(server.traffic_state().write.secret, first_secret);
        assert_eq!(server.traffic_state().write.seq, 1);
        let (pt, r) = read_all(&mut client, &wire);
        assert_eq!(pt, b"after server update");
        assert_eq!(r.key_updates, 1);
        assert!(!client.wants_transmit());

        // Client asks for an update: the server answers before its next data.
        client.initiate_key_update(true).unwrap();
        let mut wire = Vec::new();
        let _ = client.seal(b"ping", &[4], &mut wire).unwrap();
        let (pt, r) = read_all(&mut server, &wire);
        assert_eq!((pt.as_slice(), r.key_updates), (&b"ping"[..], 1));
        assert!(server.wants_transmit());
        assert_eq!(
            server.traffic_state().pending,
            vec![Control::KeyUpdate {
                update_requested: false
            }]
        );
        let mut wire = Vec::new();
        let done = server.seal(b"pong", &[4], &mut wire).unwrap();
        assert_eq!(done.records, 2, "KeyUpdate answer, then data");
        let (pt, r) = read_all(&mut client, &wire);
        assert_eq!((pt.as_slice(), r.key_updates), (&b"pong"[..], 1));
        assert!(
            !client.wants_transmit(),
            "update_not_requested needs no answer"
        );

        // Server asks the client: the client answers.
        server.initiate_key_update(true).unwrap();
        let mut wire = Vec::new();
        let _ = server.poll_transmit(&mut wire).unwrap();
        let _ = read_all(&mut client, &wire);
        assert!(client.wants_transmit());
        let mut wire = Vec::new();
        let _ = client.poll_transmit(&mut wire).unwrap();
        let (_, r) = read_all(&mut server, &wire);
        assert_eq!(r.key_updates, 1);
        assert!(!server.wants_transmit());
        assert_eq!(server.traffic_state().read, client.traffic_state().write);
        assert_eq!(server.traffic_state().write, client.traffic_state().read);
    }
}

#[test]
fn key_update_is_refused_in_tls12() {
    let (mut server, _) = pair(Suite::Tls12EcdheRsaAes128GcmSha256);
    assert!(matches!(
        server.initiate_key_update(false),
        Err(Error::Usage(_))
    ));
    let st = server.traffic_state().read.clone();
    let rec = raw12(&st, 22, &[24, 0, 0, 1, 0], [0; 8]);
    let mut pt = Vec::new();
    let r = server.read(&rec, &mut pt);
    assert_eq!(r.status, ReadStatus::Violation(Violation::KeyUpdateInTls12));
}

#[test]
fn automatic_key_update_near_the_gcm_limit() {
    let suite = Suite::Tls13Aes128GcmSha256;
    let c2s = dir_state(suite, 1, 0);
    let s2c = dir_state(suite, 2, AUTO_KEY_UPDATE_SEQ);
    let mut server =
        RecordLayer::new(TrafficState::new(c2s.clone(), s2c.clone()).unwrap()).unwrap();
    let mut client = RecordLayer::new(TrafficState::new(s2c, c2s).unwrap()).unwrap();
    let mut wire = Vec::new();
    let done = server.seal(b"abc", &[3], &mut wire).unwrap();
    assert_eq!(done.records, 2);
    assert_eq!(server.traffic_state().write.seq, 1);
    let (pt, r) = read_all(&mut client, &wire);
    assert_eq!((pt.as_slice(), r.key_updates), (&b"abc"[..], 1));
}

// ---- determinism, export/import -------------------------------------------

#[test]
fn same_state_plaintext_and_plan_give_identical_bytes() {
    for suite in Suite::ALL {
        let (mut server, _) = pair(suite);
        let mut warmup = Vec::new();
        let _ = server.seal(&data(5000), &[5000], &mut warmup).unwrap();
        if suite.version() == Version::Tls13 {
            server.initiate_key_update(true).unwrap();
        }
        let snapshot = server.export();
        let msg = data(40_000);
        let plan = [1400, 16384, 7, 16384, 40_000 - 1400 - 16384 - 7 - 16384];
        let mut a = Vec::new();
        let _ = server.seal(&msg, &plan, &mut a).unwrap();
        let mut again = RecordLayer::new(TrafficState::import(&snapshot).unwrap()).unwrap();
        let mut b = Vec::new();
        let _ = again.seal(&msg, &plan, &mut b).unwrap();
        assert_eq!(a, b, "{suite}");
        assert_eq!(server.traffic_state(), again.traffic_state());
        // A different plan gives different bytes (and the same plaintext).
        let mut third = RecordLayer::new(TrafficState::import(&snapshot).unwrap()).unwrap();
        let mut c = Vec::new();
        let _ = third.seal_all(&msg, &mut c).unwrap();
        assert_ne!(a, c);
    }
}

#[test]
fn export_import_after_records_and_key_updates_continues_the_stream() {
    for suite in Suite::ALL {
        let (mut server, mut client) = pair(suite);
        let tls13 = suite.version() == Version::Tls13;
        for i in 0..10 {
            let msg = data(100 + i);
            let mut wire = Vec::new();
            if tls13 && i % 3 == 0 {
                server.initiate_key_update(i % 2 == 0).unwrap();
            }
            let _ = server.seal_all(&msg, &mut wire).unwrap();
            let (pt, _) = read_all(&mut client, &wire);
            assert_eq!(pt, msg);
            let mut wire = Vec::new();
            let _ = client.poll_transmit(&mut wire).unwrap();
            let _ = client.seal_all(&msg, &mut wire).unwrap();
            let (pt, _) = read_all(&mut server, &wire);
            assert_eq!(pt, msg);
        }
        // Move the server: export, import elsewhere, carry on.
        let bytes = server.export();
        let before = server.traffic_state().clone();
        drop(server);
        let mut moved = RecordLayer::new(TrafficState::import(&bytes).unwrap()).unwrap();
        assert_eq!(moved.traffic_state(), &before);
        let mut wire = Vec::new();
        let _ = moved.seal_all(b"from the adopter", &mut wire).unwrap();
        let (pt, _) = read_all(&mut client, &wire);
        assert_eq!(pt, b"from the adopter");
        let mut wire = Vec::new();
        let _ = client.seal_all(b"to the adopter", &mut wire).unwrap();
        let (pt, _) = read_all(&mut moved, &wire);
        assert_eq!(pt, b"to the adopter");
    }
}

// ---- close and alerts -----------------------------------------------------

#[test]
fn close_notify_then_nothing() {
    for suite in [
        Suite::Tls13Aes128GcmSha256,
        Suite::Tls12EcdheRsaChacha20Poly1305Sha256,
    ] {
        let (mut server, mut client) = pair(suite);
        server.close();
        assert!(matches!(
            server.seal(b"x", &[1], &mut Vec::new()),
            Err(Error::Usage(_))
        ));
        let mut wire = Vec::new();
        let done = server.poll_transmit(&mut wire).unwrap();
        assert_eq!(done.records, 1);
        assert!(server.traffic_state().sent_close_notify);
        assert!(!server.wants_transmit());
        // Records after close_notify are ignored (RFC 8446 6.1): a valid one...
        let mut st = server.traffic_state().write.clone();
        st.seq -= 1;
        let mut extra =
            RecordLayer::new(TrafficState::new(dir_state(suite, 1, 0), st).unwrap()).unwrap();
        let _ = extra.seal(b"ignored", &[7], &mut Vec::new()).unwrap();
        let _ = extra.seal(b"ignored", &[7], &mut wire).unwrap();
        // ...and garbage.
        wire.extend_from_slice(b"garbage");
        let mut pt = Vec::new();
        let r = client.read(&wire, &mut pt);
        assert_eq!(r.status, ReadStatus::CloseNotify);
        assert_eq!((r.consumed, r.records), (wire.len(), 1));
        assert!(pt.is_empty());
        let more = b"\x17\x03\x03 more garbage after close";
        let r = client.read(more, &mut pt);
        assert_eq!(
            (r.status, r.consumed, r.plaintext),
            (ReadStatus::CloseNotify, more.len(), 0)
        );
        // The client may still send: a half-closed connection reads on.
        let mut wire = Vec::new();
        let _ = client.seal_all(b"late data", &mut wire).unwrap();
        assert_eq!(read_all(&mut server, &wire).0, b"late data");
    }
}

#[test]
fn client_alerts() {
    // Fatal alert: connection dead, nothing to send.
    let (mut server, _) = pair(Suite::Tls13Aes128GcmSha256);
    let st = server.traffic_state().read.clone();
    let mut pt = Vec::new();
    let r = server.read(&raw13(&st, &[2, 40, 21]), &mut pt);
    assert_eq!(
        r.status,
        ReadStatus::PeerAlert(AlertDescription::HandshakeFailure)
    );
    assert!(server.is_failed() && !server.wants_transmit());
    assert_eq!(
        server.read(&[23, 3, 3, 0, 0], &mut pt).status,
        ReadStatus::Dead
    );
    // user_canceled is a warning: ignored.
    let (mut server, _) = pair(Suite::Tls13Aes128GcmSha256);
    let st = server.traffic_state().read.clone();
    let _ = read_all(&mut server, &raw13(&st, &[1, 90, 21]));
    // TLS 1.2 warning alerts are ignored, fatal ones end the connection.
    let (mut server, _) = pair(Suite::Tls12EcdheEcdsaAes256GcmSha384);
    let mut st = server.traffic_state().read.clone();
    let mut wire = raw12(&st, 21, &[1, 100], [1; 8]);
    st.seq += 1;
    wire.extend(raw12(&st, 21, &[2, 51], [2; 8]));
    let r = server.read(&wire, &mut pt);
    assert_eq!(
        r.status,
        ReadStatus::PeerAlert(AlertDescription::DecryptError)
    );
    assert_eq!(r.records, 2);
}

#[test]
fn tls12_renegotiation_gets_a_no_renegotiation_warning() {
    let (mut server, mut client) = pair(Suite::Tls12EcdheRsaAes128GcmSha256);
    let st = server.traffic_state().read.clone();
    // A ClientHello split over two records.
    let hello = [1u8, 0, 0, 6, 3, 3, 0, 0, 0, 0];
    let mut wire = raw12(&st, 22, &hello[..3], [0; 8]);
    let mut st2 = st.clone();
    st2.seq += 1;
    wire.extend(raw12(&st2, 22, &hello[3..], [0; 8]));
    let _ = read_all(&mut server, &wire);
    assert_eq!(
        server.traffic_state().pending,
        vec![Control::Alert(AlertDescription::NoRenegotiation)]
    );
    let mut out = Vec::new();
    let _ = server.poll_transmit(&mut out).unwrap();
    // The client (our layer in the peer role) ignores the warning; data still flows.
    let _ = read_all(&mut client, &out);
    let mut out = Vec::new();
    let _ = server.seal_all(b"still here", &mut out).unwrap();
    assert_eq!(read_all(&mut client, &out).0, b"still here");
}

// ---- hostile input ----------------------------------------------------------

/// Feeds `wire` to a fresh server and returns the status and the alert sent.
fn violation_of(suite: Suite, make: impl Fn(&RecordState) -> Vec<u8>) -> (ReadStatus, Vec<u8>) {
    let (mut server, mut client) = pair(suite);
    let st = server.traffic_state().read.clone();
    let mut pt = Vec::new();
    let r = server.read(&make(&st), &mut pt);
    assert!(pt.is_empty());
    assert!(server.is_failed());
    let mut out = Vec::new();
    let _ = server.poll_transmit(&mut out).unwrap();
    // The alert opens on the client side as a fatal alert.
    let mut cpt = Vec::new();
    let cr = client.read(&out, &mut cpt);
    let alert = match cr.status {
        ReadStatus::PeerAlert(d) => vec![u8::from(d)],
        other => panic!("client saw {other:?}"),
    };
    assert!(server.seal(b"x", &[1], &mut Vec::new()).is_err());
    (r.status, alert)
}

#[test]
fn hostile_records_get_the_right_alert() {
    use Violation as V;
    let s13 = Suite::Tls13Aes128GcmSha256;
    let s12 = Suite::Tls12EcdheRsaAes128GcmSha256;
    type Make = Box<dyn Fn(&RecordState) -> Vec<u8>>;
    let cases: Vec<(&str, Suite, Make, Violation)> = vec![
        (
            "flipped tag bit",
            s13,
            Box::new(|st| {
                let mut r = raw13(st, b"hi\x17");
                let n = r.len();
                r[n - 1] ^= 1;
                r
            }),
            V::BadRecordMac,
        ),
        (
            "flipped header length byte",
            s13,
            Box::new(|st| {
                let mut r = raw13(st, b"hi\x17");
                r.push(0);
                r[4] += 1;
                r
            }),
            V::BadRecordMac,
        ),
        (
            "too short for a tag",
            s13,
            Box::new(|_| vec![23, 3, 3, 0, 15].into_iter().chain([0; 15]).collect()),
            V::BadRecordMac,
        ),
        (
            "tls12 too short for nonce+tag",
            s12,
            Box::new(|_| vec![23, 3, 3, 0, 23].into_iter().chain([0; 23]).collect()),
            V::BadRecordMac,
        ),
        (
            "oversized 1.3 record",
            s13,
            Box::new(|_| vec![23, 3, 3, 0x41, 0x01]),
            V::RecordOverflow(0x4101),
        ),
        (
            "oversized 1.2 record",
            s12,
            Box::new(|_| vec![23, 3, 3, 0x48, 0x01]),
            V::RecordOverflow(0x4801),
        ),
        (
            "plaintext over 2^14",
            s13,
            Box::new(|st| {
                let mut v = vec![1u8; MAX_PLAINTEXT + 1];
                v.push(23);
                raw13(st, &v)
            }),
            V::PlaintextOverflow(MAX_PLAINTEXT + 1),
        ),
        (
            "unknown outer type",
            s13,
            Box::new(|_| vec![24, 3, 3, 0, 1, 0]),
            V::UnexpectedContentType(24),
        ),
        (
            "1.3 plaintext handshake outer type",
            s13,
            Box::new(|_| vec![22, 3, 3, 0, 1, 0]),
            V::UnexpectedContentType(22),
        ),
        (
            "change_cipher_spec after handshake",
            s13,
            Box::new(|_| vec![20, 3, 3, 0, 1, 1]),
            V::UnexpectedContentType(20),
        ),
        (
            "1.2 change_cipher_spec",
            s12,
            Box::new(|_| vec![20, 3, 3, 0, 1, 1]),
            V::UnexpectedContentType(20),
        ),
        (
            "bad record version",
            s13,
            Box::new(|_| vec![23, 3, 1, 0, 1, 1]),
            V::BadRecordVersion(0x0301),
        ),
        (
            "inner type missing",
            s13,
            Box::new(|st| raw13(st, &[0, 0, 0])),
            V::MissingInnerContentType,
        ),
        (
            "inner type unknown",
            s13,
            Box::new(|st| raw13(st, &[1, 2, 99])),
            V::UnexpectedContentType(99),
        ),
        (
            "protected change_cipher_spec",
            s13,
            Box::new(|st| raw13(st, &[1, 20])),
            V::UnexpectedContentType(20),
        ),
        (
            "empty handshake",
            s13,
            Box::new(|st| raw13(st, &[22])),
            V::EmptyFragment,
        ),
        (
            "empty alert",
            s13,
            Box::new(|st| raw13(st, &[21])),
            V::EmptyFragment,
        ),
        (
            "three-byte alert",
            s13,
            Box::new(|st| raw13(st, &[1, 0, 0, 21])),
            V::BadAlert,
        ),
        (
            "NewSessionTicket from the client",
            s13,
            Box::new(|st| raw13(st, &[4, 0, 0, 1, 0, 22])),
            V::UnexpectedHandshake(4),
        ),
        (
            "Finished after the handshake",
            s13,
            Box::new(|st| raw13(st, &[20, 0, 0, 1, 0, 22])),
            V::UnexpectedHandshake(20),
        ),
        (
            "ClientHello in 1.3",
            s13,
            Box::new(|st| raw13(st, &[1, 0, 0, 1, 0, 22])),
            V::UnexpectedHandshake(1),
        ),
        (
            "KeyUpdate of length 2",
            s13,
            Box::new(|st| raw13(st, &[24, 0, 0, 2, 0, 0, 22])),
            V::BadKeyUpdate,
        ),
        (
            "KeyUpdate value 2",
            s13,
            Box::new(|st| raw13(st, &[24, 0, 0, 1, 2, 22])),
            V::BadKeyUpdate,
        ),
        (
            "KeyUpdate not ending its record",
            s13,
            Box::new(|st| raw13(st, &[24, 0, 0, 1, 0, 24, 22])),
            V::HandshakeSpansKeyChange,
        ),
        (
            "1.2 Finished after the handshake",
            s12,
            Box::new(|st| raw12(st, 22, &[20, 0, 0, 0], [0; 8])),
            V::UnexpectedHandshake(20),
        ),
        (
            "1.2 application data mid-handshake-message",
            s12,
            Box::new(|st| {
                let mut r = raw12(st, 22, &[1, 0], [0; 8]);
                let mut s = st.clone();
                s.seq += 1;
                r.extend(raw12(&s, 23, b"x", [0; 8]));
                r
            }),
            V::UnexpectedContentType(23),
        ),
        (
            "1.2 wrong type in AAD",
            s12,
            Box::new(|st| {
                let mut r = raw12(st, 23, b"abc", [0; 8]);
                r[0] = 21;
                r
            }),
            V::BadRecordMac,
        ),
    ];
    for (name, suite, make, want) in cases {
        let (status, alert) = violation_of(suite, make);
        assert_eq!(status, ReadStatus::Violation(want), "{name}");
        assert_eq!(alert, vec![u8::from(want.alert())], "{name}");
    }
}

#[test]
fn truncated_records_wait_and_garbage_never_panics() {
    let (mut server, mut client) = pair(Suite::Tls13Chacha20Poly1305Sha256);
    let mut wire = Vec::new();
    let _ = client.seal_all(&data(1000), &mut wire).unwrap();
    for n in 0..wire.len() {
        let mut s = RecordLayer::new(server.traffic_state().clone()).unwrap();
        let r = s.read(&wire[..n], &mut Vec::new());
        assert!(
            matches!(r.status, ReadStatus::NeedMore { .. }) && r.consumed == 0,
            "{n}: {r:?}"
        );
    }
    // Every single-bit flip is detected somewhere, without a panic.
    for i in 0..wire.len() {
        for bit in [0x01u8, 0x80] {
            let mut w = wire.clone();
            w[i] ^= bit;
            let mut s = RecordLayer::new(server.traffic_state().clone()).unwrap();
            let mut pt = Vec::new();
            let r = s.read(&w, &mut pt);
            assert!(pt.is_empty(), "byte {i}");
            assert!(
                !matches!(r.status, ReadStatus::NeedMore { needed: 5 }) || r.consumed < w.len(),
                "byte {i}: {r:?}"
            );
        }
    }
    let r = server.read(&wire, &mut Vec::new());
    assert_eq!(r.status, ReadStatus::NeedMore { needed: 5 });
}

#[test]
fn bad_plans_are_rejected_without_side_effects() {
    let (mut server, _) = pair(Suite::Tls13Aes128GcmSha256);
    let before = server.traffic_state().clone();
    let mut out = Vec::new();
    assert!(server.seal(b"abc", &[2], &mut out).is_err());
    assert!(server.seal(b"abc", &[3, 0], &mut out).is_err());
    assert!(
        server
            .seal(&data(MAX_PLAINTEXT + 1), &[MAX_PLAINTEXT + 1], &mut out)
            .is_err()
    );
    assert!(out.is_empty());
    assert_eq!(server.traffic_state(), &before);
    assert_eq!(plan_records(0, 100), Vec::<usize>::new());
    assert_eq!(plan_records(250, 100), vec![100, 100, 50]);
    assert_eq!(plan_records(20_000, 0), vec![1; 20_000]);
    assert_eq!(
        plan_records(20_000, 1 << 20),
        vec![MAX_PLAINTEXT, 20_000 - MAX_PLAINTEXT]
    );
}

#[test]
fn tls12_gcm_stops_at_its_record_limit() {
    let suite = Suite::Tls12EcdheEcdsaAes256GcmSha384;
    let st = TrafficState::new(
        dir_state(suite, 1, 0),
        dir_state(suite, 2, TLS12_GCM_RECORD_LIMIT - 1),
    )
    .unwrap();
    let mut server = RecordLayer::new(st).unwrap();
    let mut out = Vec::new();
    assert!(server.seal(b"ab", &[1, 1], &mut out).is_err());
    let _ = server.seal(b"a", &[1], &mut out).unwrap();
    assert!(server.seal(b"a", &[1], &mut out).is_err());
    // close_notify still goes out.
    server.close();
    assert_eq!(server.poll_transmit(&mut out).unwrap().records, 1);
}
