use super::*;
use crate::envelope::{Deframer, Envelope};
use crate::message::Message;

const STREAM: StreamId = StreamId::new(1, 0);

fn flow(counter: u64) -> FlowId {
    FlowId {
        relay: 1,
        worker: 0,
        counter,
    }
}

fn c(n: u64) -> CommitNo {
    CommitNo::new(0, n)
}

fn connected() -> Outbox {
    let mut o = Outbox::new(STREAM, OutboxConfig::default()).unwrap();
    o.peer_reset();
    o
}

/// What one `poll_transmit` sends, decoded.
#[track_caller]
fn transmit(o: &mut Outbox) -> Vec<Envelope> {
    let mut out = Vec::new();
    o.poll_transmit(&mut out);
    let mut d = Deframer::new();
    d.push(&out);
    let mut envs = Vec::new();
    while let Some(e) = d.pop().unwrap() {
        envs.push(e);
    }
    assert_eq!(d.buffered(), 0);
    envs
}

fn events(o: &mut Outbox) -> Vec<Protection> {
    std::iter::from_fn(|| o.poll_event())
        .map(|OutboxEvent::Protection(p)| p)
        .collect()
}

#[test]
fn commits_go_out_in_one_batch_and_acks_release_them() {
    let mut o = connected();
    assert_eq!(o.protection(), Protection::Protected);
    assert_eq!(o.encoding_for(flow(1)), Encoding::Full);
    assert_eq!(
        o.commit(flow(1), c(1), Payload::Full(b"f1@1")),
        Ok(Committed::Queued)
    );
    assert_eq!(o.encoding_for(flow(1)), Encoding::Delta { base: c(1) });
    let delta = Payload::Delta {
        base: c(1),
        bytes: b"+2",
    };
    assert_eq!(o.commit(flow(1), c(2), delta), Ok(Committed::Queued));
    assert_eq!(
        o.commit(flow(2), c(1), Payload::Full(b"f2@1")),
        Ok(Committed::Queued)
    );

    let envs = transmit(&mut o);
    assert_eq!(envs.len(), 3, "one buffer for the whole loop");
    assert_eq!(
        envs.iter().map(|e| (e.stream, e.seq)).collect::<Vec<_>>(),
        [(STREAM, 1), (STREAM, 2), (STREAM, 3)]
    );
    assert_eq!(
        envs[1].message,
        Message::Delta {
            flow: flow(1),
            base: c(1),
            commit: c(2),
            bytes: b"+2".to_vec()
        }
    );
    assert!(transmit(&mut o).is_empty(), "sent once");

    // Cumulative acks release, per flow, the highest commit covered.
    assert_eq!(o.handle_ack(2), Ok(vec![(flow(1), c(2))]));
    assert_eq!(o.handle_ack(2), Ok(vec![]), "duplicate ack");
    assert_eq!(o.handle_ack(1), Ok(vec![]), "old ack");
    assert_eq!(o.handle_ack(3), Ok(vec![(flow(2), c(1))]));
    assert_eq!(o.backlog_bytes(), 0);
    // The peer cannot ack what was never sent.
    assert_eq!(o.handle_ack(4), Err(Error::NeverSent { seq: 4, sent: 3 }));
    assert_eq!(o.stats().acked_commits, 2);
}

#[test]
fn an_ack_for_a_queued_but_unsent_message_is_refused() {
    let mut o = connected();
    o.commit(flow(1), c(1), Payload::Full(b"x")).unwrap();
    assert_eq!(o.handle_ack(1), Err(Error::NeverSent { seq: 1, sent: 0 }));
}

#[test]
fn caller_mistakes_are_internal_errors() {
    let mut o = connected();
    let d = |base, bytes| Payload::Delta { base, bytes };
    // A delta for a flow the peer has never seen.
    assert_eq!(
        o.commit(flow(1), c(1), d(c(0), b"x")),
        Err(Error::DeltaBase {
            flow: flow(1),
            base: c(0),
            held: None
        })
    );
    o.commit(flow(1), c(1), Payload::Full(b"x")).unwrap();
    // From another base than the latest.
    assert_eq!(
        o.commit(flow(1), c(3), d(c(2), b"x")),
        Err(Error::DeltaBase {
            flow: flow(1),
            base: c(2),
            held: Some(c(1))
        })
    );
    // Going back, or repeating without a full checkpoint.
    assert!(matches!(
        o.commit(flow(1), c(0), Payload::Full(b"x")),
        Err(Error::CommitBackwards { .. })
    ));
    assert!(matches!(
        o.commit(flow(1), c(1), d(c(1), b"x")),
        Err(Error::CommitBackwards { .. })
    ));
    // A full checkpoint may repeat the latest commit (a re-seed).
    assert_eq!(
        o.commit(flow(1), c(1), Payload::Full(b"x")),
        Ok(Committed::Queued)
    );
    // Too large for an envelope.
    let big = vec![0; MAX_BODY_LEN];
    assert!(matches!(
        o.commit(flow(1), c(2), Payload::Full(&big)),
        Err(Error::TooLarge { .. })
    ));
    // An outbox on the control stream makes no sense.
    assert!(Outbox::new(StreamId::control(1), OutboxConfig::default()).is_err());
}

#[test]
fn without_a_peer_commits_are_local_and_flows_reseed_on_connection() {
    let mut o = Outbox::new(STREAM, OutboxConfig::default()).unwrap();
    assert_eq!(
        o.protection(),
        Protection::Unprotected(UnprotectedReason::PeerDown)
    );
    assert_eq!(o.encoding_for(flow(1)), Encoding::LocalOnly);
    assert_eq!(
        o.commit(flow(1), c(1), Payload::LocalOnly),
        Ok(Committed::Local)
    );
    // Bytes given anyway are not sent.
    assert_eq!(
        o.commit(flow(1), c(2), Payload::Full(b"x")),
        Ok(Committed::Local)
    );
    assert!(transmit(&mut o).is_empty());
    assert_eq!(o.poll_needs_full(), None, "no connection");
    assert_eq!(o.stats().unprotected_commits, 2);

    o.peer_reset();
    assert_eq!(o.protection(), Protection::Reseeding);
    assert_eq!(o.encoding_for(flow(1)), Encoding::Full);
    assert_eq!(o.poll_needs_full(), Some(flow(1)));
    assert_eq!(o.poll_needs_full(), None, "asked once");
    o.commit(flow(1), c(2), Payload::Full(b"f1@2")).unwrap();
    assert_eq!(o.protection(), Protection::Protected);
    let envs = transmit(&mut o);
    assert_eq!(envs.len(), 1);
    assert_eq!(envs[0].seq, 1);
    // Already released locally: the peer's ack adds nothing to release.
    assert_eq!(o.handle_ack(1), Ok(vec![]));
    assert_eq!(
        events(&mut o),
        [Protection::Reseeding, Protection::Protected]
    );
}

#[test]
fn peer_down_releases_what_waited_and_reconnection_reseeds() {
    let mut o = connected();
    o.commit(flow(1), c(1), Payload::Full(b"a")).unwrap();
    o.commit(
        flow(1),
        c(2),
        Payload::Delta {
            base: c(1),
            bytes: b"b",
        },
    )
    .unwrap();
    o.commit(flow(2), c(1), Payload::Full(b"c")).unwrap();
    transmit(&mut o);
    assert_eq!(o.handle_ack(1), Ok(vec![(flow(1), c(1))]));
    events(&mut o);

    assert_eq!(o.peer_down(), vec![(flow(1), c(2)), (flow(2), c(1))]);
    assert_eq!(
        events(&mut o),
        [Protection::Unprotected(UnprotectedReason::PeerDown)]
    );
    assert_eq!(o.encoding_for(flow(1)), Encoding::LocalOnly);
    assert_eq!(
        o.commit(flow(1), c(3), Payload::LocalOnly),
        Ok(Committed::Local)
    );
    assert_eq!(o.backlog_bytes(), 0);

    o.peer_reset();
    let mut asked = vec![o.poll_needs_full(), o.poll_needs_full()];
    asked.sort();
    assert_eq!(asked, [Some(flow(1)), Some(flow(2))]);
    assert_eq!(o.poll_needs_full(), None);
    o.commit(flow(1), c(3), Payload::Full(b"a3")).unwrap();
    o.commit(flow(2), c(1), Payload::Full(b"c1")).unwrap();
    let envs = transmit(&mut o);
    assert_eq!(envs.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(o.handle_ack(2), Ok(vec![]), "all released before");
    assert_eq!(o.protection(), Protection::Protected);
}

#[test]
fn a_reconnection_acks_old_commits_through_the_full_checkpoint() {
    let mut o = connected();
    o.commit(flow(1), c(1), Payload::Full(b"a")).unwrap();
    o.commit(
        flow(1),
        c(2),
        Payload::Delta {
            base: c(1),
            bytes: b"b",
        },
    )
    .unwrap();
    transmit(&mut o);
    // The connection broke: the new standby may lack both. Nothing is
    // released until the full checkpoint is acknowledged.
    o.peer_reset();
    assert_eq!(o.encoding_for(flow(1)), Encoding::Full);
    assert_eq!(o.poll_needs_full(), Some(flow(1)));
    o.commit(flow(1), c(2), Payload::Full(b"ab")).unwrap();
    let envs = transmit(&mut o);
    assert_eq!((envs.len(), envs[0].seq), (1, 1), "sequence restarts");
    assert_eq!(o.handle_ack(1), Ok(vec![(flow(1), c(2))]));
}

#[test]
fn a_resync_request_voids_the_dropped_deltas_and_reseeds() {
    let mut o = connected();
    let delta = |base| Payload::Delta { base, bytes: b"d" };
    o.commit(flow(1), c(1), Payload::Full(b"a")).unwrap(); // seq 1
    o.commit(flow(1), c(2), delta(c(1))).unwrap(); // seq 2: dropped by the standby
    o.commit(flow(2), c(1), Payload::Full(b"z")).unwrap(); // seq 3
    o.commit(flow(1), c(3), delta(c(2))).unwrap(); // seq 4: dropped too
    transmit(&mut o);
    assert_eq!(o.handle_resync(2, flow(1)), Ok(()));
    assert_eq!(o.protection(), Protection::Reseeding);
    // The ack covers the dropped deltas: they release nothing.
    assert_eq!(o.handle_ack(4), Ok(vec![(flow(1), c(1)), (flow(2), c(1))]));
    assert_eq!(o.poll_needs_full(), Some(flow(1)));
    o.commit(flow(1), c(3), Payload::Full(b"abc")).unwrap(); // seq 5
    transmit(&mut o);
    assert_eq!(o.handle_ack(5), Ok(vec![(flow(1), c(3))]));
    assert_eq!(o.protection(), Protection::Protected);
    assert_eq!(
        o.handle_resync(9, flow(1)),
        Err(Error::NeverSent { seq: 9, sent: 5 })
    );
}

#[test]
fn a_resync_after_a_newer_full_checkpoint_is_stale() {
    let mut o = connected();
    o.commit(flow(1), c(1), Payload::Full(b"a")).unwrap(); // seq 1
    o.commit(
        flow(1),
        c(2),
        Payload::Delta {
            base: c(1),
            bytes: b"d",
        },
    )
    .unwrap(); // seq 2: dropped
    o.commit(flow(1), c(3), Payload::Full(b"abc")).unwrap(); // seq 3: the standby takes it
    transmit(&mut o);
    o.handle_resync(2, flow(1)).unwrap();
    assert_eq!(o.protection(), Protection::Protected, "no re-seed needed");
    assert_eq!(o.poll_needs_full(), None);
    assert_eq!(o.handle_ack(3), Ok(vec![(flow(1), c(3))]));
}

#[test]
fn a_full_queue_holds_commits_then_reseeds() {
    let cfg = OutboxConfig {
        max_messages: 4,
        ..OutboxConfig::default()
    };
    let mut o = Outbox::new(STREAM, cfg.clone()).unwrap();
    o.peer_reset();
    for i in 1..=4 {
        assert_eq!(
            o.commit(flow(i), c(1), Payload::Full(b"x")),
            Ok(Committed::Queued)
        );
    }
    events(&mut o);
    // The fifth does not fit: held, neither sent nor released (the peer's
    // older copies must not be adopted while we commit on our own).
    assert_eq!(
        o.commit(flow(5), c(1), Payload::Full(b"x")),
        Ok(Committed::Queued)
    );
    assert_eq!(
        o.protection(),
        Protection::Unprotected(UnprotectedReason::QueueFull)
    );
    assert_eq!(o.encoding_for(flow(1)), Encoding::LocalOnly);
    // Flow 1 commits again: held too; it now needs a full checkpoint.
    assert_eq!(
        o.commit(flow(1), c(2), Payload::LocalOnly),
        Ok(Committed::Queued)
    );
    assert_eq!(o.stats().overflows, 1);
    assert_eq!(o.stats().held_commits, 2);
    let mut four = Outbox::new(STREAM, cfg).unwrap();
    four.peer_reset();
    for i in 1..=4 {
        four.commit(flow(i), c(1), Payload::Full(b"x")).unwrap();
    }
    let (mut sent, mut expected) = (Vec::new(), Vec::new());
    four.poll_transmit(&mut expected);
    o.poll_transmit(&mut sent);
    assert_eq!(sent, expected, "only the four that fitted travel");
    // One ack leaves 3 of 4: still above half.
    assert_eq!(o.handle_ack(1).unwrap(), [(flow(1), c(1))]);
    assert!(matches!(o.protection(), Protection::Unprotected(_)));
    // Drained to half: connected again, re-seeding the held flows.
    let acked = o.handle_ack(2).unwrap();
    assert_eq!(acked, [(flow(2), c(1))]);
    assert_eq!(o.protection(), Protection::Reseeding);
    let mut asked = vec![o.poll_needs_full()];
    asked.extend([o.poll_needs_full(), o.poll_needs_full()]);
    asked.sort();
    assert_eq!(asked, [None, Some(flow(1)), Some(flow(5))]);
    o.commit(flow(5), c(1), Payload::Full(b"x")).unwrap();
    o.commit(flow(1), c(2), Payload::Full(b"x")).unwrap();
    assert_eq!(o.protection(), Protection::Protected);
    transmit(&mut o);
    // The held commits are released by their full checkpoints' acks.
    let acked = o.handle_ack(6).unwrap();
    assert_eq!(
        acked,
        [
            (flow(1), c(2)),
            (flow(3), c(1)),
            (flow(4), c(1)),
            (flow(5), c(1))
        ]
    );
    assert_eq!(
        events(&mut o),
        [
            Protection::Unprotected(UnprotectedReason::QueueFull),
            Protection::Reseeding,
            Protection::Protected
        ]
    );
}

#[test]
fn peer_down_releases_held_commits_locally() {
    let cfg = OutboxConfig {
        max_messages: 2,
        ..OutboxConfig::default()
    };
    let mut o = Outbox::new(STREAM, cfg).unwrap();
    o.peer_reset();
    o.commit(flow(1), c(1), Payload::Full(b"x")).unwrap();
    o.commit(flow(2), c(1), Payload::Full(b"x")).unwrap();
    transmit(&mut o);
    assert_eq!(
        o.commit(flow(3), c(1), Payload::Full(b"x")),
        Ok(Committed::Queued)
    );
    assert_eq!(
        o.commit(flow(1), c(2), Payload::LocalOnly),
        Ok(Committed::Queued)
    );
    assert_eq!(
        o.peer_down(),
        [(flow(1), c(2)), (flow(2), c(1)), (flow(3), c(1))]
    );
    assert_eq!(
        o.commit(flow(3), c(2), Payload::LocalOnly),
        Ok(Committed::Local)
    );
}

#[test]
fn the_byte_limit_counts_what_is_in_flight() {
    let cfg = OutboxConfig {
        max_bytes: HEADER_LEN + MAX_BODY_LEN,
        ..OutboxConfig::default()
    };
    let mut o = Outbox::new(STREAM, cfg).unwrap();
    o.peer_reset();
    let quarter = vec![7u8; MAX_BODY_LEN / 4];
    for i in 1..=2 {
        assert_eq!(
            o.commit(flow(i), c(1), Payload::Full(&quarter)),
            Ok(Committed::Queued)
        );
    }
    transmit(&mut o);
    // Sent but unacknowledged still counts.
    assert_eq!(
        o.commit(flow(3), c(1), Payload::Full(&quarter)),
        Ok(Committed::Queued)
    );
    assert_eq!(
        o.commit(flow(4), c(1), Payload::Full(&quarter)),
        Ok(Committed::Queued),
        "held: the queue is full"
    );
    assert_eq!(o.stats().held_commits, 1);
    // Re-seeding waits for room.
    o.handle_ack(1).unwrap();
    assert_eq!(o.poll_needs_full(), None, "still above half the bytes");
    transmit(&mut o);
    o.handle_ack(3).unwrap();
    assert_eq!(o.poll_needs_full(), Some(flow(4)));
    assert!(
        OutboxConfig {
            max_bytes: 1000,
            ..OutboxConfig::default()
        }
        .validate()
        .is_err()
    );
}

#[test]
fn forgets_reach_the_peer_even_after_an_outage() {
    let mut o = connected();
    o.commit(flow(1), c(1), Payload::Full(b"a")).unwrap();
    o.commit(flow(2), c(4), Payload::Full(b"b")).unwrap();
    o.forget(flow(1));
    let envs = transmit(&mut o);
    assert_eq!(
        envs[2].message,
        Message::Forget {
            flow: flow(1),
            commit: c(1)
        }
    );
    // Acks of a forgotten flow release nothing.
    assert_eq!(o.handle_ack(3), Ok(vec![(flow(2), c(4))]));

    o.peer_down();
    o.forget(flow(2));
    assert_eq!(o.flows(), 0);
    o.peer_reset();
    // The owed forget is queued at once.
    assert_eq!(o.protection(), Protection::Protected);
    let envs = transmit(&mut o);
    assert_eq!(
        envs.iter().map(|e| e.message.clone()).collect::<Vec<_>>(),
        [Message::Forget {
            flow: flow(2),
            commit: c(4)
        }]
    );
    // A forget lost with a connection is sent again on the next.
    o.peer_reset();
    assert_eq!(transmit(&mut o).len(), 1);
    o.handle_ack(1).unwrap();
    assert_eq!(o.protection(), Protection::Protected);
    assert_eq!(o.stats().forgets, 3);
}

#[test]
fn backlog_and_unprotected_flows_follow_the_link() {
    let mut o = connected();
    assert_eq!((o.backlog_bytes(), o.backlog_messages()), (0, 0));
    assert_eq!(o.flows_unprotected(), 0);
    o.commit(flow(1), c(1), Payload::Full(b"f1@1")).unwrap();
    o.commit(flow(2), c(1), Payload::Full(b"f2@1")).unwrap();
    // Queued counts as backlog before it is sent, and until it is acked.
    assert_eq!(o.backlog_messages(), 2);
    assert!(o.backlog_bytes() > 0);
    assert_eq!((o.flows(), o.flows_unprotected()), (2, 0));
    transmit(&mut o);
    assert_eq!(o.backlog_messages(), 2);
    o.handle_ack(1).unwrap();
    assert_eq!(o.backlog_messages(), 1);
    o.handle_ack(2).unwrap();
    assert_eq!((o.backlog_bytes(), o.backlog_messages()), (0, 0));
    // The peer goes away: every flow is unprotected, nothing is in flight.
    o.commit(
        flow(1),
        c(2),
        Payload::Delta {
            base: c(1),
            bytes: b"+2",
        },
    )
    .unwrap();
    let _ = o.peer_down();
    assert_eq!((o.flows(), o.flows_unprotected()), (2, 2));
    assert_eq!((o.backlog_bytes(), o.backlog_messages()), (0, 0));
    // Back: unprotected until each flow's full checkpoint is queued.
    o.peer_reset();
    assert_eq!(o.flows_unprotected(), 2);
    let asked = o.poll_needs_full().unwrap();
    let latest = if asked == flow(1) { c(2) } else { c(1) };
    o.commit(asked, latest, Payload::Full(b"again")).unwrap();
    assert_eq!(o.flows_unprotected(), 1);
    // An ended flow is no longer counted either way.
    let other = if asked == flow(1) { flow(2) } else { flow(1) };
    o.forget(other);
    assert_eq!((o.flows(), o.flows_unprotected()), (1, 0));
}
