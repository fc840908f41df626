use core::net::Ipv4Addr;
use core::time::Duration;

use super::*;
use crate::ids::{CommitNo, FlowId};
use crate::message::{Echo, Heartbeat, Hello, Takeover};
use crate::test_rng::Rng;
use relay_tcp::Instant;

fn flow(counter: u64) -> FlowId {
    FlowId {
        relay: 1,
        worker: 2,
        counter,
    }
}

/// One envelope of every kind, hand-built.
fn every_message() -> Vec<Envelope> {
    let ctl = |m| Envelope::control(1, m);
    let data = |seq, m| Envelope {
        stream: StreamId::new(1, 2),
        seq,
        message: m,
    };
    vec![
        ctl(Message::Hello(Hello {
            version: 1,
            relay: 1,
            name: "relay-a".into(),
            workers: 4,
            boot_epoch: 7,
        })),
        data(
            1,
            Message::FullCheckpoint {
                flow: flow(1),
                commit: CommitNo::new(0, 1),
                bytes: b"full checkpoint bytes".to_vec(),
            },
        ),
        data(
            2,
            Message::Delta {
                flow: flow(1),
                base: CommitNo::new(0, 1),
                commit: CommitNo::new(0, 2),
                bytes: vec![1, 2, 3],
            },
        ),
        // An empty checkpoint body is framed like any other.
        data(
            3,
            Message::FullCheckpoint {
                flow: flow(2),
                commit: CommitNo::new(3, 0),
                bytes: Vec::new(),
            },
        ),
        ctl(Message::Ack {
            stream: StreamId::new(2, 0),
            seq: 99,
        }),
        data(
            4,
            Message::Forget {
                flow: flow(1),
                commit: CommitNo::new(0, 2),
            },
        ),
        ctl(Message::ResyncRequest {
            stream: StreamId::new(2, 1),
            seq: 12,
            flow: flow(5),
        }),
        ctl(Message::Heartbeat(Heartbeat {
            seq: 3,
            sent_at: Instant::from_micros(1_000_123),
            echo: None,
        })),
        ctl(Message::Heartbeat(Heartbeat {
            seq: 4,
            sent_at: Instant::from_micros(2_000_000),
            echo: Some(Echo {
                seq: 9,
                sent_at: Instant::from_micros(1_999_000),
                delay: Duration::from_micros(150),
            }),
        })),
        ctl(Message::Takeover(Takeover {
            epoch: 2,
            from: 2,
            services: vec![0, 3],
            vips: vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)],
        })),
        ctl(Message::Handoff {
            to: 2,
            flows: vec![flow(7), flow(8)],
        }),
        ctl(Message::HandoffDone),
    ]
}

fn encode_all(envs: &[Envelope]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in envs {
        e.encode(&mut out).unwrap();
    }
    out
}

/// Reads everything the deframer has; panics on an error.
fn drain(d: &mut Deframer, into: &mut Vec<Envelope>) {
    while let Some(e) = d.pop().unwrap() {
        into.push(e);
    }
}

#[test]
fn every_message_round_trips() {
    for env in every_message() {
        let mut bytes = Vec::new();
        env.encode(&mut bytes).unwrap();
        let mut d = Deframer::new();
        d.push(&bytes);
        let got = d.pop().unwrap().expect("one whole envelope");
        assert_eq!(got, env);
        assert_eq!(d.pop(), Ok(None));
        assert_eq!(d.buffered(), 0);
        // Encodings are canonical: decoding and encoding gives the same bytes.
        let mut again = Vec::new();
        got.encode(&mut again).unwrap();
        assert_eq!(again, bytes, "{:?}", env.message.kind());
    }
}

#[test]
fn header_layout_is_exact() {
    let env = Envelope::control(
        0x0102,
        Message::Ack {
            stream: StreamId::new(3, 4),
            seq: 5,
        },
    );
    let mut bytes = Vec::new();
    env.encode(&mut bytes).unwrap();
    #[rustfmt::skip]
    let want = [
        b'R', b'B', 1, 4,           // magic, version, kind = ack
        0x01, 0x02, 0xff, 0xff,     // stream: relay 0x0102, control
        0, 0, 0, 0, 0, 0, 0, 0,     // seq 0
        0, 0, 0, 12,                // body length
        0, 3, 0, 4,                 // acked stream
        0, 0, 0, 0, 0, 0, 0, 5,     // acked seq
    ];
    assert_eq!(bytes, want);
    assert_eq!(HEADER_LEN, 20);
}

#[test]
fn byte_by_byte_and_random_chunks() {
    let envs = every_message();
    let bytes = encode_all(&envs);
    // One byte at a time: incomplete until the last byte of each envelope.
    let mut d = Deframer::new();
    let mut got = Vec::new();
    for b in &bytes {
        d.push(core::slice::from_ref(b));
        drain(&mut d, &mut got);
    }
    assert_eq!(got, envs);
    // Random chunkings.
    let mut rng = Rng::new(42);
    for _ in 0..500 {
        let mut d = Deframer::new();
        let mut got = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let n = (rng.below(40) as usize + 1).min(bytes.len() - at);
            d.push(&bytes[at..at + n]);
            at += n;
            drain(&mut d, &mut got);
        }
        assert_eq!(got, envs);
        assert_eq!(d.buffered(), 0);
    }
}

#[test]
fn incomplete_is_not_malformed() {
    let bytes = encode_all(&every_message());
    let mut d = Deframer::new();
    // Every proper prefix of the first envelope is incomplete.
    let first = HEADER_LEN + 2 + 2 + 1 + 7 + 2 + 4;
    for n in 0..first {
        let mut d = Deframer::new();
        d.push(&bytes[..n]);
        assert_eq!(d.pop(), Ok(None), "prefix {n}");
    }
    d.push(&bytes[..first]);
    assert!(matches!(d.pop(), Ok(Some(_))));
}

#[test]
fn malformed_headers_fail_early_and_stay_failed() {
    // The first wrong byte is enough.
    let mut d = Deframer::new();
    d.push(b"G");
    assert!(matches!(d.pop(), Err(Error::BadMagic { .. })));
    assert!(
        matches!(d.pop(), Err(Error::BadMagic { .. })),
        "stays failed"
    );
    let mut d = Deframer::new();
    d.push(b"RB\x07");
    assert_eq!(d.pop(), Err(Error::EnvelopeVersion { got: 7 }));

    // A lying length is refused from the header alone.
    let mut h = Vec::new();
    Envelope::control(1, Message::HandoffDone)
        .encode(&mut h)
        .unwrap();
    h[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
    let mut d = Deframer::new();
    d.push(&h);
    assert_eq!(
        d.pop(),
        Err(Error::BodyTooLong {
            len: u32::MAX,
            max: MAX_BODY_LEN as u32
        })
    );

    // A checkpoint without a sequence number, a control message with one.
    let mut bad = Vec::new();
    encode_with(
        &mut bad,
        Kind::FullCheckpoint,
        StreamId::new(1, 0),
        0,
        |_| {},
    )
    .unwrap();
    let mut d = Deframer::new();
    d.push(&bad);
    assert!(matches!(d.pop(), Err(Error::Sequencing { seq: 0, .. })));
    let mut bad = Vec::new();
    encode_with(&mut bad, Kind::Ack, StreamId::control(1), 3, |_| {}).unwrap();
    let mut d = Deframer::new();
    d.push(&bad);
    assert!(matches!(
        d.pop(),
        Err(Error::Sequencing {
            kind: Kind::Ack,
            ..
        })
    ));
    // A checkpoint on the control stream.
    let mut bad = Vec::new();
    encode_with(&mut bad, Kind::Forget, StreamId::control(1), 3, |_| {}).unwrap();
    let mut d = Deframer::new();
    d.push(&bad);
    assert!(matches!(d.pop(), Err(Error::Sequencing { .. })));
}

#[test]
fn bad_bodies_name_the_field_and_keep_the_framing() {
    let mut bytes = Vec::new();
    // An unknown kind, framed.
    encode_with(
        &mut bytes,
        Kind::Unknown(200),
        StreamId::control(1),
        0,
        |w| w.u32(7),
    )
    .unwrap();
    // A hello whose name is not UTF-8.
    encode_with(&mut bytes, Kind::Hello, StreamId::control(1), 0, |w| {
        w.u16(1);
        w.u16(1);
        w.u8(2);
        w.bytes(&[0xff, 0xfe]);
        w.u16(1);
        w.u32(0);
    })
    .unwrap();
    // A forget cut short.
    encode_with(&mut bytes, Kind::Forget, StreamId::new(1, 0), 1, |w| {
        w.u16(1)
    })
    .unwrap();
    // A heartbeat with an echo flag of 2.
    encode_with(&mut bytes, Kind::Heartbeat, StreamId::control(1), 0, |w| {
        w.u64(1);
        w.u64(2);
        w.u8(2);
    })
    .unwrap();
    // A handoff claiming 2^32 - 1 flows.
    encode_with(&mut bytes, Kind::Handoff, StreamId::control(1), 0, |w| {
        w.u16(2);
        w.u32(u32::MAX);
    })
    .unwrap();
    // Trailing bytes after an ack.
    encode_with(&mut bytes, Kind::Ack, StreamId::control(1), 0, |w| {
        w.bytes(&[0; 13])
    })
    .unwrap();
    Envelope::control(1, Message::HandoffDone)
        .encode(&mut bytes)
        .unwrap();

    let mut d = Deframer::new();
    d.push(&bytes);
    assert_eq!(d.pop(), Err(Error::UnknownKind(200)));
    let what = |r: Result<Option<Envelope>, Error>| match r {
        Err(Error::Malformed { source, .. }) => source.what(),
        other => panic!("not malformed: {other:?}"),
    };
    assert_eq!(what(d.pop()), "name");
    assert_eq!(what(d.pop()), "flow worker");
    assert_eq!(what(d.pop()), "echo flag");
    assert_eq!(what(d.pop()), "flows");
    let e = d.pop().unwrap_err();
    assert_eq!(what(Err(e.clone())), "trailing bytes");
    assert!(e.to_string().contains("ack"), "{e}");
    // And the stream is still framed.
    assert_eq!(
        d.pop().unwrap().map(|e| e.message),
        Some(Message::HandoffDone)
    );
}

#[test]
fn every_truncated_body_is_malformed() {
    for env in every_message() {
        let mut full = Vec::new();
        env.message
            .write_body(&mut relay_codec::Writer::new(&mut full));
        let kind = env.message.kind();
        // Bodies that end in opaque bytes accept any length past their fields.
        let fixed = match &env.message {
            Message::FullCheckpoint { bytes, .. } | Message::Delta { bytes, .. } => {
                full.len() - bytes.len()
            }
            _ => full.len(),
        };
        for n in 0..fixed {
            assert!(
                matches!(
                    Message::decode(kind, &full[..n]),
                    Err(Error::Malformed { .. })
                ),
                "{kind} cut at {n}"
            );
        }
    }
}

#[test]
fn garbage_never_panics() {
    let valid = encode_all(&every_message());
    let mut rng = Rng::new(7);
    for round in 0..3000 {
        let mut bytes = if round % 2 == 0 {
            let n = rng.below(200) as usize;
            rng.bytes(n)
        } else {
            // A valid stream with a few bytes flipped.
            let mut v = valid.clone();
            for _ in 0..=rng.below(4) {
                let i = rng.below(v.len() as u64) as usize;
                v[i] ^= 1 << rng.below(8);
            }
            v
        };
        if round % 3 == 0 && bytes.len() >= 3 {
            // Get past the magic to reach the later checks.
            bytes[..3].copy_from_slice(b"RB\x01");
        }
        let mut d = Deframer::new();
        let mut at = 0;
        'feed: while at < bytes.len() {
            let n = (rng.below(64) as usize + 1).min(bytes.len() - at);
            d.push(&bytes[at..at + n]);
            at += n;
            // At most as many envelopes as headers fit, then incomplete or failed.
            for _ in 0..=bytes.len() / HEADER_LEN {
                match d.pop() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(Error::BadMagic { .. })
                    | Err(Error::EnvelopeVersion { .. })
                    | Err(Error::BodyTooLong { .. })
                    | Err(Error::Sequencing { .. }) => break 'feed,
                    Err(_) => {}
                }
            }
        }
    }
}

#[test]
fn too_large_bodies_are_refused_on_encode() {
    let env = Envelope {
        stream: StreamId::new(1, 0),
        seq: 1,
        message: Message::FullCheckpoint {
            flow: flow(1),
            commit: CommitNo::new(0, 1),
            bytes: vec![0; MAX_BODY_LEN],
        },
    };
    let mut out = vec![9];
    assert!(matches!(env.encode(&mut out), Err(Error::TooLarge { .. })));
    assert_eq!(out, [9], "nothing appended");
}
