//! An adopter replaying its predecessor's plan acknowledges the backend's
//! segments one at a time (`FlowCheckpoint::down_partial`).
//!
//! A Linux backend in retransmission-timeout recovery resends the segment
//! at its `snd_una` and sends the next one only once the cumulative ACK
//! moves past it (it ignores a SACK block that starts at the cumulative
//! ACK). An adopter that acknowledged nothing until a planned record was
//! whole would wait one backed-off timeout per segment.
//!
//! Relay A runs in the failover simulation until the standby holds
//! planned records the client has not acknowledged; A then lives on to the
//! end of the transfer, and what the client received from it is the
//! reference. Relay B adopts A's checkpoint and gets backend segments by
//! hand, as such a backend sends them; relay C adopts B's checkpoint.
//! Whatever an adopter sends the client must be A's bytes, byte for byte.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    BACKEND, CLIENT, Hand, KIB, Params, Pattern, RELAY_BACK, Sent, Sim, VIP, peer_segment,
};
use relay_flow::{Flow, FlowCheckpoint, FlowConfig};
use relay_tcp::{Instant, SeqNumber};

/// Linux's lower bound on the retransmission timeout: an ACK later than
/// this after the segment costs the backend a timeout.
const RTO_MIN: Duration = Duration::from_millis(200);

fn seq_at(base: SeqNumber, off: u64) -> SeqNumber {
    SeqNumber(base.0.wrapping_add(off as u32))
}

/// The offset of `seq` in a stream whose byte 0 is at `base`, given an
/// offset `near` it less than 2^31 away.
fn offset(base: SeqNumber, near: u64, seq: SeqNumber) -> u64 {
    (near as i64 + i64::from(seq - seq_at(base, near))) as u64
}

/// The highest ACK the adopter sent the backend, as an offset of the
/// backend's stream.
fn acked(sent: &[Sent], ck: &FlowCheckpoint) -> Option<u64> {
    sent.iter()
        .filter_map(|s| s.ack)
        .map(|a| offset(ck.back.irs + 1, ck.down_plain_off, a))
        .max()
}

/// Where the adopted plan ends in the backend's stream.
fn plan_end(ck: &FlowCheckpoint) -> u64 {
    ck.down_plain_off + ck.batches.iter().map(|b| b.plaintext_len()).sum::<u64>()
}

/// A checkpoint worth adopting here: records planned and committed that
/// the client has not acknowledged, none closing the stream, the first
/// spanning several segments.
fn planned(ck: &FlowCheckpoint) -> bool {
    ck.down_partial.is_empty()
        && ck.hs_tail.is_empty()
        && !ck.batches.is_empty()
        && ck.batches.iter().all(|b| !b.close)
        && ck.batches[0].sizes.first().is_some_and(|&s| s >= 4 * 1448)
}

/// What relay A left when it "died", and what it did living on.
struct Snapshot {
    ck: FlowCheckpoint,
    cfg: FlowConfig,
    now: Instant,
    elapsed: Duration,
    /// The backend's cumulative ACK (of the client's bytes) then.
    backend_ack: SeqNumber,
    backend: Pattern,
    /// Everything A sent the client.
    reference: Vec<u8>,
}

fn snapshot() -> Snapshot {
    for seed in 300..340 {
        let mut p = Params::random(seed, (512 * KIB) as u64, false);
        p.record_client_stream = true;
        // Records of several segments, planned several to a batch.
        p.flow.max_record = 16384;
        p.flow.max_batch = 64 * KIB;
        let cfg = p.flow.clone();
        let mut sim = Sim::new(p);
        let found = sim
            .run_until(|s| s.backend_tcp().is_some() && s.stored().is_some_and(|s| planned(&s.ck)))
            .unwrap_or_else(|f| panic!("{f}"));
        let (true, Some(stored), Some(backend)) = (found, sim.stored(), sim.backend_tcp()) else {
            continue;
        };
        let ck = stored.ck.clone();
        let now = sim.now;
        let elapsed = now.saturating_duration_since(stored.created);
        let backend_ack = backend.rcv_nxt();
        let pattern = sim.backend_stream();
        let report = sim.run().unwrap_or_else(|f| panic!("{f}"));
        return Snapshot {
            ck,
            cfg,
            now,
            elapsed,
            backend_ack,
            backend: pattern,
            reference: report.client_stream,
        };
    }
    panic!("no seed planned records the client had not acknowledged");
}

impl Snapshot {
    fn adopt(&self, ck: &FlowCheckpoint, now: Instant, elapsed: Duration) -> Hand {
        let flow = Flow::adopt(self.cfg.clone(), ck, now, elapsed)
            .unwrap_or_else(|e| panic!("adopt commit {}: {e}", ck.commit));
        Hand::new(flow, self.backend)
    }

    /// The backend's segment of its stream `[off, off + len)`.
    fn to_relay(&self, hand: &mut Hand, now: Instant, off: u64, len: usize) {
        let bytes = self.backend.bytes(off, len);
        let seq = seq_at(self.ck.back.irs + 1, off);
        let seg = peer_segment(BACKEND, RELAY_BACK, seq, self.backend_ack, &bytes);
        hand.flow.handle_back(now, &seg);
    }
}

/// Lets everything at `now` happen, the client acknowledging at once
/// every byte the adopter sends it.
fn settle(hand: &mut Hand, now: Instant) {
    while hand.pump(now) {
        let top = hand
            .front_out
            .iter()
            .filter(|s| !s.payload.is_empty())
            .map(|s| s.seq + s.payload.len())
            .reduce(|a, b| if b > a { b } else { a });
        if let Some(top) = top {
            let ack = peer_segment(CLIENT, VIP, hand.flow.front().rcv_nxt(), top, &[]);
            hand.flow.handle_front(now, &ack);
        }
    }
}

/// Plays a Linux backend in retransmission-timeout recovery, its standby
/// acknowledging each commit at once: the backend's stream from `from` to
/// `to`, a segment at a time, the next once the cumulative ACK has moved
/// past the last. Returns how long each ACK took; panics if one would
/// have cost the backend a retransmission timeout.
fn recover(
    snap: &Snapshot,
    hand: &mut Hand,
    now: &mut Instant,
    from: u64,
    to: u64,
) -> Vec<Duration> {
    hand.standby.ack_at_once = true;
    let ck = &snap.ck;
    let mss = hand
        .flow
        .back()
        .map_or(1448, relay_tcp::Connection::effective_mss) as u64;
    let mut waits = Vec::new();
    let mut next = from;
    while next < to {
        let len = mss.min(to - next);
        *now += Duration::from_millis(1);
        let sent_at = *now;
        snap.to_relay(hand, *now, next, len as usize);
        settle(hand, *now);
        // Only the adopter's own timers move it on from here (a bounded
        // number of them: one that never clears must not hang the test).
        for _ in 0..64 {
            if acked(&hand.back_out, ck) >= Some(next + len) {
                break;
            }
            let Some(t) = hand.flow.poll_timeout() else {
                break;
            };
            if t.saturating_duration_since(sent_at) >= RTO_MIN {
                break;
            }
            *now = t.max(*now);
            hand.flow.handle_timeout(*now);
            settle(hand, *now);
        }
        let got = acked(&hand.back_out, ck).unwrap_or(0);
        assert_eq!(
            got,
            next + len,
            "the backend's segment {next}..{} (of a plan ending at {to}) is not acknowledged \
             within {RTO_MIN:?}: the ACK is at {got}, and a backend in recovery sends nothing \
             more before its retransmission timeout",
            next + len
        );
        waits.push(now.saturating_duration_since(sent_at));
        next = got;
    }
    waits
}

/// Every client-bound payload in `sent` is the reference's bytes at its
/// offset. Returns the ranges covered.
fn check_front(
    sent: &[Sent],
    ck: &FlowCheckpoint,
    reference: &[u8],
    who: &str,
) -> BTreeMap<u64, u64> {
    let mut covered = BTreeMap::new();
    for s in sent.iter().filter(|s| !s.payload.is_empty()) {
        let off = offset(ck.front.iss + 1, ck.down_client_off, s.seq);
        let end = off + s.payload.len() as u64;
        assert!(
            end as usize <= reference.len(),
            "{who} sent the client bytes up to {end}, past the {} the old relay sent",
            reference.len()
        );
        let theirs = &reference[off as usize..end as usize];
        if let Some(i) = (0..theirs.len()).find(|&i| s.payload[i] != theirs[i]) {
            panic!(
                "{who} sent the client a byte at offset {} that is not the old relay's \
                 (in its segment {off}..{end})",
                off + i as u64
            );
        }
        let e = covered.entry(off).or_insert(end);
        *e = (*e).max(end);
    }
    covered
}

/// Whether `covered` has every byte of `[from, to)`.
fn covers(covered: &BTreeMap<u64, u64>, from: u64, to: u64) -> bool {
    let mut at = from;
    for (&s, &e) in covered {
        if s <= at && e > at {
            at = e;
        }
    }
    at >= to
}

/// B gets one segment, shorter than the first planned record, and
/// acknowledges it as soon as its standby holds it; C, adopting B's
/// checkpoint, gets the rest of the plan from B's new release point.
#[test]
fn adopter_acknowledges_backend_segments_one_by_one() {
    let snap = snapshot();
    let ck = &snap.ck;
    let down = ck.down_plain_off;
    assert_eq!(
        ck.back.rcv_rel,
        seq_at(ck.back.irs + 1, down),
        "the checkpoint's back release point is not its down point"
    );
    let first_record = u64::from(ck.batches[0].sizes[0]);
    let mut now = snap.now;

    let mut b = snap.adopt(ck, now, snap.elapsed);
    b.pump(now);
    assert_eq!(
        acked(&b.back_out, ck),
        Some(down),
        "the adopter's first ACK to the backend is not at the down point"
    );

    // What a backend in recovery resends first.
    let mss = b
        .flow
        .back()
        .map_or(1448, relay_tcp::Connection::effective_mss) as u64;
    let seg_len = mss.min(first_record - 1);
    now += Duration::from_millis(1);
    snap.to_relay(&mut b, now, down, seg_len as usize);
    b.back_out.clear();
    b.pump(now);
    assert!(
        acked(&b.back_out, ck).is_none_or(|a| a <= down),
        "the adopter acknowledged the backend's segment before its standby held it"
    );
    assert_eq!(
        b.standby.unacked(),
        1,
        "no commit to acknowledge the segment"
    );
    let ck2 = b.standby.last().cloned().unwrap_or_else(|| unreachable!());
    assert_eq!(ck2.commit.epoch, ck.commit.epoch + 1);
    assert_eq!(ck2.down_plain_off, down, "the down point moved");
    assert_eq!(
        ck2.down_partial,
        snap.backend.bytes(down, seg_len as usize),
        "the commit does not carry the segment's plaintext"
    );
    assert_eq!(ck2.back.rcv_rel, seq_at(ck.back.irs + 1, down + seg_len));
    assert_eq!(ck2.batches, ck.batches, "the plan changed");

    b.back_out.clear();
    b.standby.acknowledge();
    b.pump(now);
    assert_eq!(
        acked(&b.back_out, ck),
        Some(down + seg_len),
        "once its standby holds the commit, the adopter's ACK does not cover exactly the \
         backend's segment"
    );
    assert!(
        b.front_out.iter().all(|s| s.payload.is_empty()),
        "a record went to the client with part of its plaintext"
    );

    // B dies; C goes on from B's checkpoint, the backend resending from
    // where B's ACK left it.
    now += Duration::from_millis(1);
    let mut c = snap.adopt(&ck2, now, Duration::from_millis(1));
    c.pump(now);
    assert_eq!(acked(&c.back_out, &ck2), Some(down + seg_len));
    let end = plan_end(&ck2);
    let waits = recover(&snap, &mut c, &mut now, down + seg_len, end);
    assert!(waits.len() > 1, "the rest of the plan fit one segment");
    assert!(
        waits.iter().all(Duration::is_zero),
        "an ACK waited for a timer although the client acknowledged each record: {waits:?}"
    );

    // C sent the client the whole plan, and A's very bytes.
    let plan_client_end = offset(ck2.front.iss + 1, ck2.down_client_off, ck2.front.snd_max);
    let covered = check_front(&c.front_out, &ck2, &snap.reference, "the second adopter");
    assert!(
        covers(&covered, ck2.down_client_off, plan_client_end),
        "the second adopter did not send the plan {}..{plan_client_end}: {covered:?}",
        ck2.down_client_off
    );
    assert!(
        c.standby
            .stored
            .iter()
            .any(|k| k.down_partial.len() as u64 > seg_len),
        "the second adopter never carried more than the first adopter's segment"
    );
    let last = c.standby.last().unwrap_or_else(|| unreachable!());
    assert_eq!(
        last.down_plain_off, end,
        "the down point is not at the plan's end"
    );
    assert!(
        last.down_partial.is_empty(),
        "plaintext still carried at the end"
    );
    assert!(last.batches.is_empty(), "batches still carried at the end");
}

/// The client got every planned record from A and acknowledges them all
/// to B before B has sealed any: B sends none again, but needs each
/// record's plaintext to move its down point, and the backend sends it a
/// segment per ACK.
#[test]
fn adopter_whose_client_has_the_records() {
    let snap = snapshot();
    let ck = &snap.ck;
    let mut now = snap.now;
    let mut b = snap.adopt(ck, now, snap.elapsed);
    b.pump(now);
    let ack = peer_segment(CLIENT, VIP, b.flow.front().rcv_nxt(), ck.front.snd_max, &[]);
    b.flow.handle_front(now, &ack);
    b.pump(now);
    let end = plan_end(ck);
    let waits = recover(&snap, &mut b, &mut now, ck.down_plain_off, end);
    assert!(
        b.front_out.iter().all(|s| s.payload.is_empty()),
        "records went again to a client that acknowledged them"
    );
    // No ACK waits for a timer: the plaintext carried early covers the
    // segments of a record still arriving, and the one that completes a
    // record moves the down point in the same commit.
    assert!(
        waits.iter().all(Duration::is_zero),
        "an ACK waited for a timer: {waits:?}"
    );
    let done = b.standby.last().unwrap_or_else(|| unreachable!());
    assert_eq!(done.down_plain_off, end);
    assert_eq!(
        done.down_client_off,
        offset(ck.front.iss + 1, ck.down_client_off, ck.front.snd_max)
    );
    assert!(done.batches.is_empty() && done.down_partial.is_empty());
    assert!(
        b.standby.stored.iter().any(|k| !k.down_partial.is_empty()),
        "no checkpoint carried plaintext acknowledged early"
    );
}
