//! Backplanes on 127.0.0.1 with real sockets and real mutual TLS: two
//! relays replicating, reconnecting, losing each other; intruders and a
//! garbling peer refused and counted. Every wait is a condition with a
//! deadline.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use relay_cluster::{BackplaneEvent, DisconnectReason, Error, PeerState, WorkerEvent};
use relay_replication::{
    CommitNo, Committed, Encoding, FlowId, Kind, Message, Outbox, OutboxConfig, Payload,
};

/// Relay ids and names of the pair.
const A: u16 = 1;
const B: u16 = 2;
const A_NAME: &str = "relay-a.lab";
const B_NAME: &str = "relay-b.lab";

struct Pair {
    pki: Pki,
    a: Relay,
    b: Relay,
}

/// Starts A (with `a_workers` workers) and B (one worker), peers of each
/// other, and waits until both see the other up over one connection (the
/// same on both sides: outbound on one, inbound on the other).
fn pair(a_workers: usize, tweak: impl Fn(&mut relay_cluster::BackplaneConfig)) -> Pair {
    init_tracing();
    let pki = Pki::generate();
    let (la, lb) = (bind(), bind());
    let (aa, ba) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let mut ca = config(&pki, A, A_NAME, aa, &[(B, B_NAME, ba)]);
    let mut cb = config(&pki, B, B_NAME, ba, &[(A, A_NAME, aa)]);
    tweak(&mut ca);
    tweak(&mut cb);
    let a = start(ca, la, a_workers);
    let b = start(cb, lb, 1);
    wait_until("both peers up, on one connection", DEADLINE, || {
        one_connection(&a, &b)
    });
    Pair { pki, a, b }
}

/// Whether A and B share one live connection (outbound on one side,
/// inbound on the other) and see each other up.
fn one_connection(a: &Relay, b: &Relay) -> bool {
    let (pa, pb) = (a.bp.handle.peer(B).unwrap(), b.bp.handle.peer(A).unwrap());
    pa.state == PeerState::Up
        && pb.state == PeerState::Up
        && pa.connected
        && pb.connected
        && pa.outbound != pb.outbound
}

/// Takes every event queued so far; the last `PeerReset` is the live
/// connection's (`pair` waited for it). Under load a first connection may
/// have been replaced while the pair settled.
#[track_caller]
fn settle(port: &mut relay_cluster::WorkerPort) {
    let mut reset = false;
    while let Some(e) = port.try_recv() {
        reset |= e == WorkerEvent::PeerReset(B);
    }
    assert!(reset, "the worker heard of the connection");
}

fn flow(counter: u64) -> FlowId {
    FlowId {
        relay: A,
        worker: 0,
        counter,
    }
}

/// Takes the port's events until an ack releases `want`; feeds every ack
/// to the outbox. Panics on a reset or a disconnection in between.
#[track_caller]
fn await_release(
    port: &mut relay_cluster::WorkerPort,
    outbox: &mut Outbox,
    want: (FlowId, CommitNo),
) {
    let mut released = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while !released.contains(&want) {
        while let Some(e) = port.try_recv() {
            match e {
                WorkerEvent::Ack { peer, seq } => {
                    assert_eq!(peer, B);
                    released.extend(outbox.handle_ack(seq).unwrap());
                }
                WorkerEvent::PeerUp(_) => {}
                other => panic!("unexpected {other:?} while waiting for an ack"),
            }
        }
        assert!(Instant::now() < deadline, "no ack released {want:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn pair_connects_replicates_and_acks_reach_the_right_worker() {
    let Pair {
        pki: _pki,
        mut a,
        b,
    } = pair(2, |_| {});

    // Worker 1 replicates; worker 0 must hear of the connection but get
    // no ack of worker 1's stream.
    let mut port = a.bp.workers.remove(1);
    let mut other = a.bp.workers.remove(0);
    settle(&mut port);
    let mut outbox = Outbox::new(port.stream(), OutboxConfig::default()).unwrap();
    outbox.peer_reset();

    let f = FlowId {
        relay: A,
        worker: 1,
        counter: 7,
    };
    assert_eq!(outbox.encoding_for(f), Encoding::Full);
    let c1 = CommitNo::new(0, 1);
    assert_eq!(
        outbox.commit(f, c1, Payload::Full(b"state-1")).unwrap(),
        Committed::Queued
    );
    let Encoding::Delta { base } = outbox.encoding_for(f) else {
        panic!("a delta from the full checkpoint");
    };
    let c2 = CommitNo::new(0, 2);
    outbox
        .commit(
            f,
            c2,
            Payload::Delta {
                base,
                bytes: b"+d2",
            },
        )
        .unwrap();
    let mut batch = Vec::new();
    outbox.poll_transmit(&mut batch);
    let wakes_before = a.wakes[1].load(Ordering::SeqCst);
    port.send(B, batch).unwrap();

    await_release(&mut port, &mut outbox, (f, c2));
    assert!(
        a.wakes[1].load(Ordering::SeqCst) > wakes_before,
        "the worker's waker was called"
    );
    while let Some(e) = other.try_recv() {
        assert!(
            !matches!(e, WorkerEvent::Ack { .. } | WorkerEvent::Resync { .. }),
            "worker 0 got {e:?}"
        );
    }

    // B's standby holds the flow as of the delta.
    let st = b.bp.handle.peer(A).unwrap();
    assert_eq!(st.flows_held, 1);
    assert_eq!(st.standby_bytes, b"state-1+d2".len());
    assert!(st.last_commit.is_some());
    assert_eq!(st.workers, Some(2));
    let adopted = b.bp.handle.take_all(A).unwrap();
    assert_eq!(adopted.len(), 1);
    assert_eq!((adopted[0].flow, adopted[0].commit), (f, c2));
    assert_eq!(adopted[0].bytes, b"state-1+d2");

    let (ca, cb) = (a.bp.handle.counters(), b.bp.handle.counters());
    assert!(ca.messages_out.get(Kind::FullCheckpoint) >= 1);
    assert!(ca.messages_out.get(Kind::Hello) >= 1);
    assert!(cb.messages_in.get(Kind::Delta) >= 1);
    assert!(cb.messages_out.get(Kind::Ack) >= 1);
    assert!(ca.messages_in.get(Kind::Heartbeat) >= 1);
    for c in [&ca, &cb] {
        assert_eq!(c.rejected_unauthorised, 0);
        assert_eq!(c.rejected_malformed, 0);
        assert_eq!(c.protocol_errors, 0);
        assert_eq!(c.bad_batches, 0);
    }
    let status = a.bp.handle.peers();
    assert_eq!(status.len(), 1);
    assert!(status[0].bytes_sent > 0 && status[0].bytes_received > 0);

    // A's app saw the connection and the peer come up.
    let events: Vec<BackplaneEvent> = a.bp.events.try_iter().collect();
    assert!(events.contains(&BackplaneEvent::PeerUp(B)), "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, BackplaneEvent::Connected { peer: B, .. })),
        "{events:?}"
    );
    a.bp.handle.shutdown();
    b.bp.handle.shutdown();
}

#[test]
fn a_dropped_connection_reconnects_and_reseeds() {
    let Pair {
        pki: _pki,
        mut a,
        b,
    } = pair(1, |_| {});
    let mut port = a.bp.workers.remove(0);
    settle(&mut port);
    let mut outbox = Outbox::new(port.stream(), OutboxConfig::default()).unwrap();
    outbox.peer_reset();

    let f = flow(1);
    let (c1, c2, c3) = (
        CommitNo::new(0, 1),
        CommitNo::new(0, 2),
        CommitNo::new(0, 3),
    );
    outbox.commit(f, c1, Payload::Full(b"s1")).unwrap();
    outbox
        .commit(
            f,
            c2,
            Payload::Delta {
                base: c1,
                bytes: b"+2",
            },
        )
        .unwrap();
    let mut batch = Vec::new();
    outbox.poll_transmit(&mut batch);
    port.send(B, batch).unwrap();
    await_release(&mut port, &mut outbox, (f, c2));

    let reconnects = a.bp.handle.counters().reconnects + b.bp.handle.counters().reconnects;
    a.bp.handle.disconnect(B).unwrap();
    next_event(
        &mut port,
        "Disconnected",
        |_| {},
        |e| *e == WorkerEvent::Disconnected(B),
    );

    // Until the worker takes the new PeerReset, what it sends belongs to
    // the old connection: dropped, not misnumbered on the new one.
    let mut stale = Vec::new();
    outbox
        .commit(
            f,
            CommitNo::new(0, 3),
            Payload::Delta {
                base: c2,
                bytes: b"+3",
            },
        )
        .unwrap();
    outbox.poll_transmit(&mut stale);
    assert!(matches!(port.send(B, stale), Err(Error::NotConnected(B))));

    wait_until("reconnected", DEADLINE, || one_connection(&a, &b));
    settle(&mut port);
    outbox.peer_reset();
    // The re-seed: the flow's latest checkpoint in full, then a delta.
    let mut reseeded = 0;
    while let Some(g) = outbox.poll_needs_full() {
        assert_eq!(g, f);
        outbox.commit(f, c3, Payload::Full(b"s1+2+3")).unwrap();
        reseeded += 1;
    }
    assert_eq!(reseeded, 1);
    let c4 = CommitNo::new(0, 4);
    outbox
        .commit(
            f,
            c4,
            Payload::Delta {
                base: c3,
                bytes: b"+4",
            },
        )
        .unwrap();
    let mut batch = Vec::new();
    outbox.poll_transmit(&mut batch);
    port.send(B, batch).unwrap();
    await_release(&mut port, &mut outbox, (f, c4));

    let adopted = b.bp.handle.take(A, &[f]).unwrap();
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0].commit, c4);
    assert_eq!(adopted[0].bytes, b"s1+2+3+4");
    let (ca, cb) = (a.bp.handle.counters(), b.bp.handle.counters());
    assert!(ca.reconnects + cb.reconnects > reconnects);
    assert!(ca.stale_batches >= 1);
    assert_eq!(ca.protocol_errors + cb.protocol_errors, 0);
    let events: Vec<BackplaneEvent> = a.bp.events.try_iter().collect();
    assert!(
        events.contains(&BackplaneEvent::Disconnected {
            peer: B,
            reason: DisconnectReason::Requested
        }),
        "{events:?}"
    );
}

/// Heartbeat interval of [`quiet_pair`].
const QUIET_INTERVAL: Duration = Duration::from_millis(20);

/// A pair with 20 ms heartbeats that does not dial again for 30 s once
/// its connection ends (no re-seed while a test looks).
fn quiet_pair() -> Pair {
    pair(1, |c| {
        c.heartbeat.interval = QUIET_INTERVAL;
        c.heartbeat.misses = 5;
        c.reconnect_min = Duration::from_secs(30);
        c.reconnect_max = Duration::from_secs(30);
    })
}

#[test]
fn flows_of_a_peer_heard_alive_after_its_connection_ended_are_not_adopted() {
    let Pair {
        pki: _pki,
        mut a,
        b,
    } = quiet_pair();
    let mut port = a.bp.workers.remove(0);
    settle(&mut port);
    let mut outbox = Outbox::new(port.stream(), OutboxConfig::default()).unwrap();
    outbox.peer_reset();
    let f = flow(1);
    let c1 = CommitNo::new(0, 1);
    outbox.commit(f, c1, Payload::Full(b"s1")).unwrap();
    let mut batch = Vec::new();
    outbox.poll_transmit(&mut batch);
    port.send(B, batch).unwrap();
    await_release(&mut port, &mut outbox, (f, c1));
    assert_eq!(b.bp.handle.peer(A).unwrap().flows_held, 1);

    // A ends the connection and lives on: its datagram heartbeats over the
    // backplane link go on, and three intervals after the end its workers
    // may commit f without B.
    a.bp.handle.disconnect(B).unwrap();
    wait_until("B sees the connection gone", DEADLINE, || {
        !b.bp.handle.peer(A).unwrap().connected
    });
    let beats = b.bp.handle.counters().backplane_beats_heard;
    wait_until("B hears A beat on after the end", DEADLINE, || {
        b.bp.handle.counters().backplane_beats_heard >= beats + 4
    });
    assert!(b.bp.handle.take(A, &[f]).unwrap().is_empty());
    assert!(b.bp.handle.take_all(A).unwrap().is_empty());
    assert_eq!(b.bp.handle.counters().stale_flows_dropped, 1);
    assert_eq!(b.bp.handle.peer(A).unwrap().flows_held, 0);
}

#[test]
fn a_too_slow_peer_loses_the_connection_and_local_commits_wait_for_the_fence() {
    let Pair {
        pki: _pki,
        mut a,
        b,
    } = quiet_pair();
    let mut port = a.bp.workers.remove(0);
    settle(&mut port);
    let asked = Instant::now();
    port.peer_too_slow(B).unwrap();
    next_event(
        &mut port,
        "Disconnected",
        |_| {},
        |e| *e == WorkerEvent::Disconnected(B),
    );
    next_event(
        &mut port,
        "PeerDown (commit locally)",
        |_| {},
        |e| *e == WorkerEvent::PeerDown(B),
    );
    // Not before three intervals: the peer must be able to tell that our
    // flows may have moved on without it.
    assert!(
        asked.elapsed() >= QUIET_INTERVAL * 3,
        "{:?}",
        asked.elapsed()
    );
    // B still hears A: it is not declared down, nothing is taken over.
    assert_eq!(b.bp.handle.peer(A).unwrap().state, PeerState::Up);
    let events: Vec<BackplaneEvent> = a.bp.events.try_iter().collect();
    assert!(
        events.contains(&BackplaneEvent::Disconnected {
            peer: B,
            reason: DisconnectReason::PeerTooSlow
        }),
        "{events:?}"
    );
    assert!(!events.contains(&BackplaneEvent::PeerDown(B)), "{events:?}");
}

#[test]
fn peer_is_down_within_the_heartbeat_deadline_when_it_stops() {
    let interval = Duration::from_millis(20);
    let misses = 5;
    let Pair {
        pki: _pki,
        mut a,
        b,
    } = pair(1, |c| {
        c.heartbeat.interval = interval;
        c.heartbeat.misses = misses;
    });
    let mut port = a.bp.workers.remove(0);
    b.bp.handle.shutdown();
    let stopped = Instant::now();
    // Down within interval * misses after the last heartbeat (which came
    // before the shutdown), plus slack for a loaded machine.
    let slack = Duration::from_secs(1);
    wait_until("A declares B down", interval * misses + slack, || {
        a.bp.handle.peer(B).unwrap().state == PeerState::Down
    });
    tracing::info!(after = ?stopped.elapsed(), "peer down");
    next_event(
        &mut port,
        "PeerDown",
        |_| {},
        |e| *e == WorkerEvent::PeerDown(B),
    );
    assert!(!a.bp.handle.peer(B).unwrap().connected);
    assert!(
        a.bp.events
            .try_iter()
            .any(|e| e == BackplaneEvent::PeerDown(B))
    );
    // The worker can no longer send to B.
    assert!(matches!(port.send(B, vec![1]), Err(Error::NotConnected(B))));
}

#[test]
fn intruders_get_nothing_and_are_counted() {
    init_tracing();
    let pki = Pki::generate();
    let la = bind();
    let aa = la.local_addr().unwrap();
    // B is configured on another loopback address than the one the
    // clients below come from; C's address is right but nobody has its
    // certificate.
    let b_addr: std::net::SocketAddr = format!("127.0.0.2:{}", closed_addr().port())
        .parse()
        .unwrap();
    let c_addr = closed_addr();
    let cfg = config(
        &pki,
        A,
        A_NAME,
        aa,
        &[(B, B_NAME, b_addr), (3, "relay-c.lab", c_addr)],
    );
    let a = start(cfg, la, 1);

    let attempts = [
        // A peer's name, from a CA that is not the cluster's.
        ("another CA", pki.rogue("relay-c.lab"), 3, "relay-c.lab"),
        // The cluster's CA, a name no peer has.
        ("unknown name", pki.relay("intruder.lab"), 3, "relay-c.lab"),
        // A real peer certificate, from an address that is not the peer's.
        ("wrong address", pki.relay(B_NAME), B, B_NAME),
    ];
    for (i, (what, id, claim, claim_name)) in attempts.iter().enumerate() {
        let mut c = Client::connect(aa, A_NAME, &pki.ca, id);
        let _ = c.send(&hello_bytes(*claim, claim_name));
        let got = c.read_to_close();
        assert!(got.is_empty(), "{what}: received {} bytes", got.len());
        wait_until(&format!("{what} counted"), DEADLINE, || {
            a.bp.handle.counters().rejected_unauthorised > i as u64
        });
    }
    let counters = a.bp.handle.counters();
    assert_eq!(counters.rejected_unauthorised, 3);
    assert_eq!(counters.connections_established, 0);
    assert_eq!(
        counters.messages_out.total(),
        0,
        "nothing was sent to anyone"
    );
    for p in a.bp.handle.peers() {
        assert!(!p.connected && p.connections == 0);
    }
}

#[test]
fn a_garbling_peer_is_disconnected_and_counted() {
    init_tracing();
    let pki = Pki::generate();
    let (la, lb) = (bind(), bind());
    let (aa, ba) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let a = start(config(&pki, A, A_NAME, aa, &[(B, B_NAME, ba)]), la, 1);
    let b_id = pki.relay(B_NAME);

    // Garbage instead of a hello.
    let mut c = Client::connect(aa, A_NAME, &pki.ca, &b_id);
    c.send(b"GET / HTTP/1.1\r\nHost: relay-a.lab\r\n\r\n")
        .unwrap();
    assert!(c.read_to_close().is_empty());
    wait_until("garbage before the hello counted", DEADLINE, || {
        a.bp.handle.counters().rejected_malformed >= 1
    });

    // A valid hello (B's certificate, B's address), then garbage.
    let mut c = Client::connect(aa, A_NAME, &pki.ca, &b_id);
    c.send(&hello_bytes(B, B_NAME)).unwrap();
    let env = c.read_envelope();
    assert!(matches!(env.message, Message::Hello(ref h) if h.relay == A));
    wait_until("the impostor is B's live connection", DEADLINE, || {
        a.bp.handle.peer(B).unwrap().connected
    });
    c.send(b"RB\x01\x02 this claims to be an envelope but is not one at all")
        .unwrap();
    let _ = c.read_to_close();
    wait_until(
        "garbage after the hello counted and closed",
        DEADLINE,
        || {
            a.bp.handle.counters().rejected_malformed >= 2
                && !a.bp.handle.peer(B).unwrap().connected
        },
    );
    assert!(a.bp.events.try_iter().any(|e| e
        == BackplaneEvent::Disconnected {
            peer: B,
            reason: DisconnectReason::Malformed
        }));

    // A is unharmed: the real B connects and comes up.
    let b = start(config(&pki, B, B_NAME, ba, &[(A, A_NAME, aa)]), lb, 1);
    wait_until("the real B comes up", DEADLINE, || {
        a.bp.handle.peer(B).unwrap().state == PeerState::Up
            && b.bp.handle.peer(A).unwrap().state == PeerState::Up
    });
    assert_eq!(a.bp.handle.counters().protocol_errors, 0);
}

#[test]
fn tie_break_keeps_one_connection_per_pair() {
    init_tracing();
    let pki = Pki::generate();
    let (la, lb) = (bind(), bind());
    let (aa, ba) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    // B knows A's IP (inbound checks the IP only) but not a port it
    // listens on: only A dials, so the live connection is A's outbound.
    let a = start(config(&pki, A, A_NAME, aa, &[(B, B_NAME, ba)]), la, 1);
    let b = start(
        config(&pki, B, B_NAME, ba, &[(A, A_NAME, closed_addr())]),
        lb,
        1,
    );
    wait_until("A's outbound connection up", DEADLINE, || {
        let (pa, pb) = (a.bp.handle.peer(B).unwrap(), b.bp.handle.peer(A).unwrap());
        pa.state == PeerState::Up && pb.state == PeerState::Up && pa.outbound && !pb.outbound
    });
    let live = a.bp.handle.peer(B).unwrap().connected_since;

    // B dialing A as well loses to A's outbound: refused before A's hello.
    let mut dup = Client::connect(aa, A_NAME, &pki.ca, &pki.relay(B_NAME));
    dup.send(&hello_bytes(B, B_NAME)).unwrap();
    assert!(dup.read_to_close().is_empty());
    wait_until("the duplicate counted", DEADLINE, || {
        a.bp.handle.counters().duplicates_closed >= 1
    });
    let pa = a.bp.handle.peer(B).unwrap();
    assert_eq!((pa.connected_since, pa.connections), (live, 1));

    // A newer connection in the winning direction replaces the live one
    // (the old one is taken for half-open: A dialed again). Here it is an
    // impostor holding A's certificate; the real A then loses its
    // connection, dials again and takes its place back.
    let mut newer = Client::connect(ba, B_NAME, &pki.ca, &pki.relay(A_NAME));
    newer.send(&hello_bytes(A, A_NAME)).unwrap();
    assert!(matches!(newer.read_envelope().message, Message::Hello(ref h) if h.relay == B));
    let _ = newer.read_to_close();
    wait_until("A reconnected", DEADLINE, || {
        let (pa, pb) = (a.bp.handle.peer(B).unwrap(), b.bp.handle.peer(A).unwrap());
        pa.connections >= 2 && pa.connected && pb.connected && pa.outbound && !pb.outbound
    });
    assert!(b.bp.handle.counters().duplicates_closed >= 2);
    assert!(b.bp.handle.peer(A).unwrap().connections >= 3);
}

#[test]
fn a_resync_request_reaches_its_worker_and_the_reseed_is_acked() {
    let Pair {
        pki: _pki,
        mut a,
        b,
    } = pair(1, |_| {});
    let mut port = a.bp.workers.remove(0);
    settle(&mut port);
    let mut outbox = Outbox::new(port.stream(), OutboxConfig::default()).unwrap();
    outbox.peer_reset();
    let f = flow(9);
    let (c1, c2) = (CommitNo::new(0, 1), CommitNo::new(0, 2));
    outbox.commit(f, c1, Payload::Full(b"s1")).unwrap();
    let mut batch = Vec::new();
    outbox.poll_transmit(&mut batch);
    port.send(B, batch).unwrap();
    await_release(&mut port, &mut outbox, (f, c1));

    // B loses the flow (a handoff took it): the next delta has no base.
    assert_eq!(b.bp.handle.take(A, &[f]).unwrap().len(), 1);
    outbox
        .commit(
            f,
            c2,
            Payload::Delta {
                base: c1,
                bytes: b"+2",
            },
        )
        .unwrap();
    let mut batch = Vec::new();
    outbox.poll_transmit(&mut batch);
    port.send(B, batch).unwrap();
    let resync = next_event(
        &mut port,
        "a resync request",
        |_| {},
        |e| matches!(e, WorkerEvent::Resync { .. }),
    );
    assert_eq!(
        resync,
        WorkerEvent::Resync {
            peer: B,
            seq: 2,
            flow: f
        }
    );
    outbox.handle_resync(2, f).unwrap();
    assert_eq!(outbox.poll_needs_full(), Some(f));
    outbox.commit(f, c2, Payload::Full(b"s1+2")).unwrap();
    let mut batch = Vec::new();
    outbox.poll_transmit(&mut batch);
    port.send(B, batch).unwrap();
    await_release(&mut port, &mut outbox, (f, c2));
    let held = b.bp.handle.take_all(A).unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(
        (held[0].commit, held[0].bytes.as_slice()),
        (c2, &b"s1+2"[..])
    );
    assert!(b.bp.handle.counters().messages_out.get(Kind::ResyncRequest) >= 1);
}

#[test]
fn worker_mistakes_reset_the_connection_and_nothing_else() {
    let Pair {
        pki: _pki,
        mut a,
        b,
    } = pair(1, |_| {});
    let mut port = a.bp.workers.remove(0);
    settle(&mut port);
    let _ = a.bp.events.try_iter().count();

    // Bytes that are not whole envelopes of the worker's stream never
    // reach the peer: the connection restarts instead.
    port.send(B, b"not an envelope".to_vec()).unwrap();
    next_event(
        &mut port,
        "Disconnected",
        |_| {},
        |e| *e == WorkerEvent::Disconnected(B),
    );
    wait_until("reconnected", DEADLINE, || one_connection(&a, &b));
    settle(&mut port);
    assert_eq!(a.bp.handle.counters().bad_batches, 1);

    // The worker's outbox found the peer inconsistent.
    port.reset_connection(B).unwrap();
    next_event(
        &mut port,
        "Disconnected",
        |_| {},
        |e| *e == WorkerEvent::Disconnected(B),
    );
    wait_until("reconnected", DEADLINE, || one_connection(&a, &b));
    settle(&mut port);
    // Both sides may redial: a duplicate may show up as `Replaced` too.
    let resets =
        a.bp.events
            .try_iter()
            .filter(|e| {
                *e == BackplaneEvent::Disconnected {
                    peer: B,
                    reason: DisconnectReason::StreamReset,
                }
            })
            .count();
    assert_eq!(resets, 2);
    assert_eq!(a.bp.handle.counters().protocol_errors, 1);
    assert_eq!(b.bp.handle.counters().rejected_malformed, 0);
    assert!(matches!(port.send(9, vec![1]), Err(Error::UnknownPeer(9))));
}
