use super::*;
use crate::envelope::Deframer;

const PEER: RelayId = 1;
const LOCAL: RelayId = 2;

/// A toy codec: a delta is a suffix to append; `bad` does not apply.
fn append(base: &[u8], delta: &[u8]) -> Result<Vec<u8>, String> {
    if delta == b"bad" {
        return Err("garbled".into());
    }
    Ok([base, delta].concat())
}

type Codec = fn(&[u8], &[u8]) -> Result<Vec<u8>, String>;

fn standby() -> Standby<Codec> {
    let mut s = Standby::new(PEER, append as Codec, StandbyConfig::new(LOCAL));
    s.handle_hello(&hello(1)).unwrap();
    s
}

fn hello(boot_epoch: u32) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        relay: PEER,
        name: "a".into(),
        workers: 2,
        boot_epoch,
    }
}

fn flow(counter: u64) -> FlowId {
    FlowId {
        relay: PEER,
        worker: 0,
        counter,
    }
}

fn c(n: u64) -> CommitNo {
    CommitNo::new(0, n)
}

fn env(worker: u16, seq: u64, message: Message) -> Envelope {
    Envelope {
        stream: StreamId::new(PEER, worker),
        seq,
        message,
    }
}

fn full(f: FlowId, commit: CommitNo, bytes: &[u8]) -> Message {
    Message::FullCheckpoint {
        flow: f,
        commit,
        bytes: bytes.to_vec(),
    }
}

fn delta(f: FlowId, base: CommitNo, commit: CommitNo, bytes: &[u8]) -> Message {
    Message::Delta {
        flow: f,
        base,
        commit,
        bytes: bytes.to_vec(),
    }
}

/// What one `poll_transmit` sends, decoded.
#[track_caller]
fn transmit<C: CheckpointCodec>(s: &mut Standby<C>) -> Vec<Envelope> {
    let mut out = Vec::new();
    s.poll_transmit(&mut out);
    let mut d = Deframer::new();
    d.push(&out);
    std::iter::from_fn(|| d.pop().unwrap()).collect()
}

fn ack(worker: u16, seq: u64) -> Envelope {
    Envelope::control(
        LOCAL,
        Message::Ack {
            stream: StreamId::new(PEER, worker),
            seq,
        },
    )
}

fn resync(worker: u16, seq: u64, f: FlowId) -> Envelope {
    Envelope::control(
        LOCAL,
        Message::ResyncRequest {
            stream: StreamId::new(PEER, worker),
            seq,
            flow: f,
        },
    )
}

fn rejected<C: CheckpointCodec>(s: &Standby<C>, why: Rejection) -> u64 {
    s.stats().rejected.get(&why).copied().unwrap_or(0)
}

#[test]
fn applies_in_order_and_acks_once_per_stream() {
    let mut s = standby();
    s.handle(env(0, 1, full(flow(1), c(1), b"ab"))).unwrap();
    s.handle(env(0, 2, delta(flow(1), c(1), c(2), b"c")))
        .unwrap();
    s.handle(env(1, 1, full(flow(2), c(5), b"x"))).unwrap();
    s.handle(env(0, 3, full(flow(3), c(1), b"y"))).unwrap();
    assert_eq!(s.get(flow(1)), Some((c(2), &b"abc"[..])));
    assert_eq!(s.len(), 3);
    assert_eq!(transmit(&mut s), [ack(0, 3), ack(1, 1)]);
    assert!(transmit(&mut s).is_empty(), "nothing new to ack");
    // Duplicates are ignored (and not acked again).
    s.handle(env(0, 2, delta(flow(1), c(1), c(2), b"c")))
        .unwrap();
    assert_eq!(s.stats().duplicates, 1);
    assert!(transmit(&mut s).is_empty());
    assert_eq!(s.get(flow(1)), Some((c(2), &b"abc"[..])));
}

#[test]
fn a_gap_or_a_confused_peer_is_a_protocol_error() {
    let mut s = Standby::new(PEER, append as Codec, StandbyConfig::new(LOCAL));
    let m = || full(flow(1), c(1), b"a");
    assert_eq!(
        s.handle(env(0, 1, m())),
        Err(Error::NoHello(Kind::FullCheckpoint))
    );
    assert_eq!(
        s.handle_hello(&Hello {
            relay: 9,
            ..hello(1)
        }),
        Err(Error::WrongRelay {
            expected: PEER,
            got: 9
        })
    );
    assert!(matches!(
        s.handle_hello(&Hello {
            version: 99,
            ..hello(1)
        }),
        Err(Error::ProtocolVersion { theirs: 99, .. })
    ));
    s.handle_hello(&hello(1)).unwrap();
    s.handle(env(0, 1, m())).unwrap();
    assert_eq!(
        s.handle(env(0, 3, m())),
        Err(Error::Gap {
            stream: StreamId::new(PEER, 0),
            expected: 2,
            got: 3
        })
    );
    assert!(matches!(
        s.handle(env(2, 1, m())),
        Err(Error::StreamOutOfRange { workers: 2, .. })
    ));
    let mut other = env(0, 2, m());
    other.stream.relay = 7;
    assert!(matches!(
        s.handle(other),
        Err(Error::WrongRelay { got: 7, .. })
    ));
    assert_eq!(s.handle(ack(0, 1)), Err(Error::Unexpected(Kind::Ack)));
}

#[test]
fn a_missing_base_asks_for_one_resync_then_heals() {
    let mut s = standby();
    // A delta for a flow never seen.
    s.handle(env(0, 1, delta(flow(1), c(1), c(2), b"x")))
        .unwrap();
    assert_eq!(rejected(&s, Rejection::UnknownFlow), 1);
    assert_eq!(s.get(flow(1)), None);
    // The request goes before the ack that covers the dropped delta.
    assert_eq!(transmit(&mut s), [resync(0, 1, flow(1)), ack(0, 1)]);

    s.handle(env(0, 2, full(flow(1), c(2), b"ab"))).unwrap();
    // A delta from another base breaks the chain: one resync...
    s.handle(env(0, 3, delta(flow(1), c(1), c(3), b"x")))
        .unwrap();
    // ...and later deltas wait for the full checkpoint without asking again.
    s.handle(env(0, 4, delta(flow(1), c(3), c(4), b"y")))
        .unwrap();
    assert_eq!(rejected(&s, Rejection::BaseMismatch), 1);
    assert_eq!(rejected(&s, Rejection::AwaitingFull), 1);
    assert_eq!(s.get(flow(1)), Some((c(2), &b"ab"[..])), "untouched");
    assert_eq!(transmit(&mut s), [resync(0, 3, flow(1)), ack(0, 4)]);
    s.handle(env(0, 5, full(flow(1), c(4), b"abxy"))).unwrap();
    s.handle(env(0, 6, delta(flow(1), c(4), c(5), b"z")))
        .unwrap();
    assert_eq!(s.get(flow(1)), Some((c(5), &b"abxyz"[..])));
    assert_eq!(s.stats().resyncs_sent, 2);
}

#[test]
fn a_delta_that_does_not_apply_leaves_the_entry_alone() {
    let mut s = standby();
    s.handle(env(0, 1, full(flow(1), c(1), b"a"))).unwrap();
    s.handle(env(0, 2, delta(flow(1), c(1), c(2), b"bad")))
        .unwrap();
    assert_eq!(rejected(&s, Rejection::BadDelta), 1);
    assert_eq!(s.get(flow(1)), Some((c(1), &b"a"[..])));
    assert_eq!(transmit(&mut s), [resync(0, 2, flow(1)), ack(0, 2)]);
}

#[test]
fn commit_numbers_never_go_back() {
    let mut s = standby();
    s.handle(env(0, 1, full(flow(1), CommitNo::new(1, 5), b"new")))
        .unwrap();
    // An older full checkpoint (an earlier epoch, or a lower number).
    s.handle(env(0, 2, full(flow(1), CommitNo::new(0, 9), b"old")))
        .unwrap();
    s.handle(env(0, 3, full(flow(1), CommitNo::new(1, 4), b"old")))
        .unwrap();
    assert_eq!(rejected(&s, Rejection::CommitBackwards), 2);
    // A delta that does not move forward.
    s.handle(env(
        0,
        4,
        delta(flow(1), CommitNo::new(1, 5), CommitNo::new(1, 5), b"x"),
    ))
    .unwrap();
    assert_eq!(rejected(&s, Rejection::CommitBackwards), 3);
    assert_eq!(s.get(flow(1)), Some((CommitNo::new(1, 5), &b"new"[..])));
    // The same commit again is fine (a re-seed).
    s.handle(env(0, 5, full(flow(1), CommitNo::new(1, 5), b"new")))
        .unwrap();
    assert_eq!(s.stats().fulls, 2);
}

#[test]
fn another_relays_flow_needs_an_adoption_epoch() {
    let mut s = standby();
    let theirs = FlowId {
        relay: 3,
        worker: 0,
        counter: 1,
    };
    s.handle(env(0, 1, full(theirs, c(1), b"x"))).unwrap();
    s.handle(env(0, 2, delta(theirs, c(1), c(2), b"x")))
        .unwrap();
    assert_eq!(rejected(&s, Rejection::ForeignFlow), 2);
    assert!(s.is_empty());
    // Adopted by the peer (epoch 1): the peer may replicate it.
    s.handle(env(0, 3, full(theirs, CommitNo::new(1, 0), b"x")))
        .unwrap();
    assert_eq!(s.len(), 1);
}

#[test]
fn forget_drops_only_what_is_not_newer() {
    let mut s = standby();
    s.handle(env(0, 1, full(flow(1), c(5), b"x"))).unwrap();
    s.handle(env(
        0,
        2,
        Message::Forget {
            flow: flow(1),
            commit: c(4),
        },
    ))
    .unwrap();
    assert_eq!(rejected(&s, Rejection::StaleForget), 1);
    assert_eq!(s.len(), 1);
    s.handle(env(
        0,
        3,
        Message::Forget {
            flow: flow(1),
            commit: c(5),
        },
    ))
    .unwrap();
    s.handle(env(
        0,
        4,
        Message::Forget {
            flow: flow(9),
            commit: c(1),
        },
    ))
    .unwrap();
    assert!(s.is_empty());
    assert_eq!(s.stats().forgets, 1);
}

#[test]
fn flows_are_handed_out_for_adoption() {
    let mut s = standby();
    for (seq, i) in (1..).zip([3, 1, 2]) {
        s.handle(env(0, seq, full(flow(i), c(i), &[i as u8])))
            .unwrap();
    }
    let some = s.take(&[flow(2), flow(7)]);
    assert_eq!(
        some,
        [Adopted {
            flow: flow(2),
            commit: c(2),
            bytes: vec![2]
        }]
    );
    let all = s.take_all();
    assert_eq!(
        all.iter().map(|a| a.flow).collect::<Vec<_>>(),
        [flow(1), flow(3)]
    );
    assert!(s.is_empty());
}

#[test]
fn a_reconnection_keeps_flows_a_restart_drops_them() {
    let mut s = standby();
    s.handle(env(0, 1, full(flow(1), c(1), b"x"))).unwrap();
    s.disconnected();
    assert!(matches!(
        s.handle(env(0, 2, full(flow(2), c(1), b"x"))),
        Err(Error::NoHello(_))
    ));
    // Same boot epoch: the same process reconnected; sequences restart.
    s.handle_hello(&hello(1)).unwrap();
    assert_eq!(s.len(), 1);
    s.handle(env(0, 1, full(flow(2), c(1), b"x"))).unwrap();
    assert_eq!(s.len(), 2);
    // A new boot epoch: the old flows died with the old process.
    s.handle_hello(&hello(2)).unwrap();
    assert!(s.is_empty());
    assert_eq!(s.stats().dropped_on_restart, 2);
}

#[test]
fn a_full_store_refuses_without_acknowledging() {
    let mut s = Standby::new(
        PEER,
        append as Codec,
        StandbyConfig {
            local_relay: LOCAL,
            max_flows: 1,
        },
    );
    s.handle_hello(&hello(1)).unwrap();
    s.handle(env(0, 1, full(flow(1), c(1), b"x"))).unwrap();
    assert_eq!(
        s.handle(env(0, 2, full(flow(2), c(1), b"x"))),
        Err(Error::StandbyFull { max: 1 })
    );
    // Updating a held flow is fine.
    s.handle(env(0, 2, full(flow(1), c(2), b"y"))).unwrap();
    assert_eq!(transmit(&mut s), [ack(0, 2)]);
}
