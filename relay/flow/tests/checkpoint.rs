//! `FlowCheckpoint::from_bytes` on what a peer relay could send: truncated,
//! flipped, garbage. It never panics, and every error names the field.
//! The checkpoints come from a real flow (the failover simulation's
//! standby stored them).

mod common;

use common::{KIB, Params, Rng, Sim};
use relay_flow::{
    CommitNo, FLOW_CHECKPOINT_VERSION, FLOW_DELTA_VERSION, FlowCheckpoint, FlowError, FlowId,
    MAX_DOWN_PARTIAL, apply_delta, encode_delta,
};

/// Encodings a standby stored during a short simulated transfer: some with
/// planned batches, some with a partial record.
fn samples() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for seed in [11, 12, 13] {
        let mut p = Params::random(seed, (256 * KIB) as u64, false);
        p.flow.partial_release = 100;
        let report = Sim::new(p).run().unwrap_or_else(|e| panic!("{e}"));
        out.extend(report.samples);
    }
    assert!(!out.is_empty(), "the simulation stored no checkpoint");
    out
}

/// The richest sample: the most batches, then the longest partial.
fn rich(samples: &[Vec<u8>]) -> Vec<u8> {
    samples
        .iter()
        .max_by_key(|b| {
            let ck = FlowCheckpoint::from_bytes(b).unwrap();
            (ck.batches.len().min(4), ck.partial.len().min(1), b.len())
        })
        .unwrap()
        .clone()
}

#[track_caller]
fn check_error(r: Result<FlowCheckpoint, FlowError>, what: &str) -> Option<&'static str> {
    match r {
        Ok(_) => None,
        Err(FlowError::Checkpoint(field)) => {
            assert!(!field.is_empty(), "{what}: error without a field");
            let msg = FlowError::Checkpoint(field).to_string();
            assert!(msg.contains(field), "{what}: {msg}");
            Some(field)
        }
        Err(e) => panic!("{what}: not a checkpoint error: {e}"),
    }
}

#[test]
fn real_checkpoints_round_trip() {
    let samples = samples();
    let mut with_batches = 0;
    let mut with_partial = 0;
    let mut with_tail = 0;
    for b in &samples {
        let ck = FlowCheckpoint::from_bytes(b).unwrap();
        assert_eq!(&ck.to_bytes(), b);
        ck.validate().unwrap();
        with_batches += usize::from(!ck.batches.is_empty());
        with_partial += usize::from(!ck.partial.is_empty());
        with_tail += usize::from(!ck.hs_tail.is_empty());
    }
    eprintln!(
        "{} checkpoints, {with_batches} with batches, {with_partial} with a partial record, \
         {with_tail} with a handshake tail",
        samples.len()
    );
    assert!(with_batches > 0, "no sample carries planned batches");
    // The first commit does not wait for the client to acknowledge the
    // session tickets (a client with its request sent would only do so
    // after its delayed-ACK timer): it carries them for an adopter.
    assert!(with_tail > 0, "no first commit before the tickets' ACK");
}

#[test]
fn truncated_at_every_length() {
    let b = rich(&samples());
    for n in 0..b.len() {
        let field = check_error(FlowCheckpoint::from_bytes(&b[..n]), &format!("len {n}"));
        assert!(field.is_some(), "a {n}-byte prefix decoded");
    }
    // One byte too many.
    let mut long = b.clone();
    long.push(0);
    assert_eq!(
        check_error(FlowCheckpoint::from_bytes(&long), "trailing"),
        Some("trailing bytes")
    );
}

#[test]
fn every_byte_flipped() {
    let b = rich(&samples());
    let mut rejected = 0;
    for i in 0..b.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut x = b.clone();
            x[i] ^= mask;
            let r = FlowCheckpoint::from_bytes(&x);
            if let Ok(ck) = &r {
                // Accepted (a key, an IV, partial bytes, an offset): it must
                // then encode to something that decodes to the same thing
                // (the TCP part may normalise bits it does not use).
                let again = FlowCheckpoint::from_bytes(&ck.to_bytes());
                assert!(
                    again.as_ref().is_ok_and(|a| a == ck),
                    "byte {i} mask {mask:#x}: accepted but does not round-trip"
                );
            }
            if check_error(r, &format!("byte {i} mask {mask:#x}")).is_some() {
                rejected += 1;
            }
        }
    }
    assert!(rejected > 0);
    // The header is checked first.
    let mut x = b.clone();
    x[0] ^= 1;
    assert_eq!(
        check_error(FlowCheckpoint::from_bytes(&x), "magic"),
        Some("magic")
    );
    let mut x = b.clone();
    x[4] = FLOW_CHECKPOINT_VERSION + 1;
    assert_eq!(
        check_error(FlowCheckpoint::from_bytes(&x), "version"),
        Some("version")
    );
}

#[test]
fn garbage() {
    let b = rich(&samples());
    let mut rng = Rng::new(0x6a7b);
    for round in 0..2000 {
        let n = rng.below(b.len() as u64 * 2) as usize;
        let mut x: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
        if round % 2 == 0 && n >= 5 {
            // Past the header, into the fields.
            x[..5].copy_from_slice(&b[..5]);
        }
        if round % 4 == 1 && n > 40 {
            // A real prefix, then garbage.
            let k = rng.below(n.min(b.len()) as u64) as usize;
            x[..k].copy_from_slice(&b[..k]);
        }
        let field = check_error(FlowCheckpoint::from_bytes(&x), &format!("round {round}"));
        assert!(field.is_some(), "round {round}: garbage decoded");
    }
    // Huge length prefixes must not allocate or panic (past the header,
    // the flow id and the commit number).
    let mut x = b[..5 + 12 + 12].to_vec();
    x.extend_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        check_error(FlowCheckpoint::from_bytes(&x), "huge block"),
        Some("front")
    );
}

/// Deltas rebuild every stored checkpoint in a real run (the standby checks
/// each one) and are much smaller than the full encoding; prints the sizes.
#[test]
fn deltas_rebuild_checkpoints_and_are_small() {
    let mut full = Vec::new();
    let mut deltas = Vec::new();
    for seed in [21, 22, 23] {
        let p = Params::random(seed, (512 * KIB) as u64, false);
        let report = Sim::new(p).run().unwrap_or_else(|e| panic!("{e}"));
        full.extend(report.samples.iter().map(Vec::len));
        deltas.extend(report.delta_sizes);
    }
    assert!(
        deltas.len() > 10,
        "too few deltas checked: {}",
        deltas.len()
    );
    full.sort_unstable();
    deltas.sort_unstable();
    let median = |v: &[usize]| v[v.len() / 2];
    let p99 = |v: &[usize]| v[(v.len() * 99 / 100).min(v.len() - 1)];
    eprintln!(
        "flow checkpoint: full {} B median ({}..{}); delta {} B median, p99 {} B, over {} deltas",
        median(&full),
        full[0],
        full[full.len() - 1],
        median(&deltas),
        p99(&deltas),
        deltas.len()
    );
    assert!(median(&deltas) * 4 < median(&full));
}

#[test]
fn ids_and_commit_numbers_round_trip() {
    let mut ck = FlowCheckpoint::from_bytes(&rich(&samples())).unwrap();
    assert_eq!(ck.id, common::FLOW);
    ck.id = FlowId {
        relay: u16::MAX,
        worker: 0xfffe,
        counter: u64::MAX,
    };
    ck.commit = CommitNo::new(u32::MAX, u64::MAX);
    let b = ck.to_bytes();
    // Right after the header, as the replication protocol writes them.
    assert_eq!(
        &b[5..29],
        &[[0xff; 3].as_slice(), &[0xfe], &[0xff; 20]].concat()[..]
    );
    assert_eq!(FlowCheckpoint::from_bytes(&b).unwrap(), ck);
}

/// Batches whose plaintext runs past 2^64 bytes (a lying peer: the offsets
/// are u64 byte counts) are refused, named, by the decoder and by a delta;
/// the check summing them does not overflow.
#[test]
fn batch_offsets_past_u64_are_refused() {
    let base = FlowCheckpoint::from_bytes(&rich(&samples())).unwrap();
    assert!(!base.batches.is_empty());
    let mut ck = base.clone();
    ck.batches.truncate(1);
    // The batch ends one byte past u64::MAX.
    ck.down_plain_off = u64::MAX - ck.batches[0].plaintext_len() + 1;
    ck.batches[0].plain_off = ck.down_plain_off;
    let e = ck.validate().expect_err("offsets past u64 validated");
    assert!(matches!(e, FlowError::Checkpoint(_)), "{e}");
    assert_eq!(
        check_error(
            FlowCheckpoint::from_bytes(&ck.to_bytes()),
            "offsets past u64"
        ),
        Some("batch offsets past 2^64")
    );
    ck.commit = CommitNo::new(base.commit.epoch, base.commit.n + 1);
    let delta = encode_delta(&ck, &base).expect("a delta");
    match apply_delta(&base, &delta) {
        Err(FlowError::Checkpoint(what)) => assert_eq!(what, "batch offsets past 2^64"),
        other => panic!("a delta to offsets past u64: {other:?}"),
    }
}

/// A delta names its base and itself by commit number: it applies to the
/// checkpoint of its base commit only, and the error names both.
#[test]
fn deltas_are_named_by_commit_number() {
    let samples = samples();
    let base = FlowCheckpoint::from_bytes(&rich(&samples)).unwrap();
    let mut new = base.clone();
    new.commit = CommitNo::new(base.commit.epoch, base.commit.n + 3);
    new.up_client_off += 17;
    new.front.rcv_rel += 17;
    new.front.rcv_adv += 17;
    let delta = encode_delta(&new, &base).expect("a delta");
    assert_eq!(&delta[..5], &[b'R', b'F', b'L', b'D', FLOW_DELTA_VERSION]);
    assert_eq!(apply_delta(&base, &delta).unwrap(), new);

    // Applied to any other commit, even with the same contents.
    for held in [
        new.commit,
        CommitNo::new(base.commit.epoch + 1, base.commit.n),
        CommitNo::new(base.commit.epoch, base.commit.n.wrapping_sub(1)),
    ] {
        let mut other = base.clone();
        other.commit = held;
        let e = apply_delta(&other, &delta).expect_err("applied to another commit");
        match &e {
            FlowError::DeltaBase { base: b, held: h } => {
                assert_eq!((*b, *h), (base.commit, held));
            }
            e => panic!("applied to commit {held}: {e}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains(&base.commit.to_string()) && msg.contains(&held.to_string()),
            "{msg}"
        );
    }

    // No delta goes back, or stays: a commit after its base only.
    let mut same = new.clone();
    same.commit = base.commit;
    assert_eq!(encode_delta(&same, &base), None);
    same.commit = CommitNo::new(base.commit.epoch, base.commit.n.wrapping_sub(1));
    assert_eq!(encode_delta(&same, &base), None);
    // A delta that says so anyway (a lying peer) is refused, named.
    let mut lying = delta.clone();
    let base_len = varint_len(u64::from(base.commit.epoch)) + varint_len(base.commit.n);
    let at = 5 + base_len;
    let own_len = varint_len(u64::from(new.commit.epoch)) + varint_len(new.commit.n);
    let mut back = Vec::new();
    put_varint(&mut back, u64::from(base.commit.epoch));
    put_varint(&mut back, base.commit.n);
    lying.splice(at..at + own_len, back);
    match apply_delta(&base, &lying) {
        Err(FlowError::Checkpoint(what)) => assert!(what.contains("delta commit"), "{what}"),
        other => panic!("a delta to its own base: {other:?}"),
    }

    // Cut anywhere: an error naming the part, never a panic.
    for n in 0..delta.len() {
        assert!(
            apply_delta(&base, &delta[..n]).is_err(),
            "a {n}-byte prefix applied"
        );
    }
}

fn varint_len(v: u64) -> usize {
    let mut out = Vec::new();
    put_varint(&mut out, v);
    out.len()
}

fn put_varint(out: &mut Vec<u8>, v: u64) {
    relay_codec::Writer::new(out).varint(v);
}

/// Writes the seeds of the fuzz targets in `relay/flow/fuzz` from real
/// checkpoints and deltas; the files are committed (the flow seeds differ
/// from run to run: the TLS keys are random). Run it by hand after a
/// change to an encoding:
/// `cargo test -p relay-flow --test checkpoint -- --ignored write_fuzz_seeds`.
#[test]
#[ignore = "writes the fuzz corpus seeds"]
fn write_fuzz_seeds() {
    use relay_tcp::{Checkpoint, State};

    let dir = |target: &str| {
        let d = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let cks: Vec<FlowCheckpoint> = samples()
        .iter()
        .map(|b| FlowCheckpoint::from_bytes(b).unwrap())
        .collect();
    // Consecutive stored checkpoints of one run, as a standby sees them.
    let pairs: Vec<(&FlowCheckpoint, &FlowCheckpoint, Vec<u8>)> = cks
        .windows(2)
        .filter_map(|w| encode_delta(&w[1], &w[0]).map(|d| (&w[0], &w[1], d)))
        .collect();
    assert!(!pairs.is_empty(), "no delta between the samples");
    // The smallest pair that `f` accepts, another one each time if it can.
    let used = std::cell::RefCell::new(Vec::new());
    let smallest = |f: &dyn Fn(&FlowCheckpoint, &FlowCheckpoint) -> bool| {
        let by_size = |&i: &usize| pairs[i].0.to_bytes().len() + pairs[i].2.len();
        let ok = (0..pairs.len()).filter(|&i| f(pairs[i].0, pairs[i].1));
        let i = ok
            .clone()
            .filter(|i| !used.borrow().contains(i))
            .min_by_key(by_size)
            .or_else(|| ok.min_by_key(by_size))
            .unwrap_or(0);
        used.borrow_mut().push(i);
        &pairs[i]
    };

    // flow_checkpoint: a u16 length, a flow checkpoint, a flow delta.
    let flow = dir("flow_checkpoint");
    let flow_seed = |name: &str, base: &FlowCheckpoint, delta: &[u8]| {
        let b = base.to_bytes();
        let len = u16::try_from(b.len()).unwrap().to_be_bytes();
        std::fs::write(flow.join(name), [&len[..], &b, delta].concat()).unwrap();
    };
    let (b, _, d) = smallest(&|_, _| true);
    flow_seed("seed-first", b, d);
    // Batches acknowledged (dropped) and planned (added).
    let (b, _, d) = smallest(&|b, n| b.batches.len() >= 2 && n.batches != b.batches);
    flow_seed("seed-batches", b, d);
    // A partial record that grows.
    let (b, _, d) = smallest(&|b, n| {
        !b.partial.is_empty()
            && n.partial.len() > b.partial.len()
            && n.partial.starts_with(&b.partial)
    });
    flow_seed("seed-partial", b, d);

    // Offsets at the top of their range: a batch that ends at u64::MAX,
    // then acknowledged.
    let (b, _, _) = smallest(&|b, _| !b.batches.is_empty());
    let mut top = FlowCheckpoint::clone(b);
    top.batches.truncate(1);
    top.down_plain_off = u64::MAX - top.batches[0].plaintext_len();
    top.batches[0].plain_off = top.down_plain_off;
    top.validate().unwrap();
    let mut next = top.clone();
    next.commit = CommitNo::new(top.commit.epoch, top.commit.n + 1);
    next.batches.clear();
    next.down_plain_off = u64::MAX;
    flow_seed("seed-top", &top, &encode_delta(&next, &top).unwrap());

    // tcp_checkpoint: a TCP checkpoint, then a standalone delta or bare
    // delta fields.
    let tcp = dir("tcp_checkpoint");
    let (b, n, _) = smallest(&|b, n| n.front != b.front);
    let mut delta = n.front.delta_from(&b.front).as_bytes().to_vec();
    std::fs::write(
        tcp.join("seed-front-delta"),
        [b.front.to_bytes(), delta.clone()].concat(),
    )
    .unwrap();
    let (b, n, _) = smallest(&|b, n| n.back != b.back);
    delta.clear();
    n.back
        .write_delta_fields(&b.back, &mut relay_codec::Writer::new(&mut delta));
    std::fs::write(
        tcp.join("seed-back-fields"),
        [b.back.to_bytes(), delta].concat(),
    )
    .unwrap();
    // Our FIN sent: acknowledged or not.
    let base: &Checkpoint = &pairs[0].0.front;
    let mut fin = base.clone();
    fin.snd_fin = Some(fin.snd_max - 1);
    fin.state = if fin.snd_una == fin.snd_max {
        State::FinWait2
    } else {
        State::FinWait1
    };
    fin.validate().unwrap();
    std::fs::write(
        tcp.join("seed-fin-delta"),
        [base.to_bytes(), fin.delta_from(base).as_bytes().to_vec()].concat(),
    )
    .unwrap();
}

/// `ck` with `bytes` acknowledged early past its down point, as an adopter
/// replaying its predecessor's plan commits it: the back engine's release
/// point covers them.
fn with_down_partial(ck: &FlowCheckpoint, bytes: &[u8]) -> FlowCheckpoint {
    let mut ck = ck.clone();
    let grow = bytes.len() as i64 - ck.down_partial.len() as i64;
    ck.back.rcv_rel = relay_tcp::SeqNumber(ck.back.rcv_rel.0.wrapping_add(grow as u32));
    if ck.back.rcv_rel > ck.back.rcv_adv {
        ck.back.rcv_adv = ck.back.rcv_rel;
    }
    ck.down_partial = bytes.to_vec();
    ck
}

/// Backend plaintext that differs at every offset from its neighbours (a
/// shifted or truncated copy cannot pass for it).
fn plaintext(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// The next commit of the same flow (a delta needs one after its base).
fn next_commit(ck: &FlowCheckpoint, base: &FlowCheckpoint) -> FlowCheckpoint {
    let mut ck = ck.clone();
    ck.commit = CommitNo::new(base.commit.epoch, base.commit.n + 1);
    ck
}

#[test]
fn down_partial_round_trips_and_is_bounded() {
    let base = FlowCheckpoint::from_bytes(&rich(&samples())).unwrap();
    assert!(
        !base.batches.is_empty(),
        "an adopter carries down_partial only while it replays batches"
    );
    assert!(
        base.down_partial.is_empty(),
        "the first relay acknowledges nothing early"
    );
    for len in [1, 1448, 5000, MAX_DOWN_PARTIAL] {
        let ck = with_down_partial(&base, &plaintext(len as u64, len));
        ck.validate().unwrap();
        let b = ck.to_bytes();
        let back = FlowCheckpoint::from_bytes(&b).unwrap_or_else(|e| panic!("{len} bytes: {e}"));
        assert_eq!(back, ck, "{len} bytes");
        assert_eq!(
            back.to_bytes(),
            b,
            "{len} bytes: the encoding is not canonical"
        );
        // Carried in full: a length prefix and the bytes, nothing dropped.
        assert_eq!(
            b.len(),
            base.to_bytes().len() + len,
            "{len} bytes: the encoding does not carry them as they are"
        );
    }

    // One byte too many: refused by the decoder and by `validate`, named.
    let long = with_down_partial(&base, &plaintext(7, MAX_DOWN_PARTIAL + 1));
    assert_eq!(
        check_error(FlowCheckpoint::from_bytes(&long.to_bytes()), "too long"),
        Some("down_partial")
    );
    match long.validate() {
        Err(FlowError::Checkpoint(what)) => assert_eq!(what, "down_partial"),
        other => panic!("a down_partial past MAX_DOWN_PARTIAL validated: {other:?}"),
    }
    // Ending past 2^64 (a lying peer): refused, and the check does not
    // overflow.
    let mut top = with_down_partial(&base, &plaintext(8, 16));
    top.batches.clear();
    top.down_plain_off = u64::MAX - 7;
    match top.validate() {
        Err(FlowError::Checkpoint(what)) => assert_eq!(what, "down_partial"),
        other => panic!("a down_partial past 2^64 validated: {other:?}"),
    }
    assert_eq!(
        check_error(FlowCheckpoint::from_bytes(&top.to_bytes()), "past 2^64"),
        Some("down_partial")
    );
    top.down_plain_off = u64::MAX - 16;
    top.validate().unwrap();
}

#[test]
fn down_partial_deltas_rebuild_it() {
    let base = FlowCheckpoint::from_bytes(&rich(&samples())).unwrap();
    let held = plaintext(1, 5 * 1448);
    let base = with_down_partial(&base, &held);
    let rebuild = |new: &FlowCheckpoint, base: &FlowCheckpoint, what: &str| -> Vec<u8> {
        let delta = encode_delta(new, base).unwrap_or_else(|| panic!("{what}: no delta"));
        match apply_delta(base, &delta) {
            Ok(ck) => assert_eq!(&ck, new, "{what}: the delta rebuilds another checkpoint"),
            Err(e) => panic!("{what}: the delta does not apply: {e}"),
        }
        delta
    };

    // Unchanged: nothing of it travels.
    let same = next_commit(&base, &base);
    let d_same = rebuild(&same, &base, "unchanged");
    let d_none = rebuild(
        &next_commit(&with_down_partial(&base, &[]), &base),
        &with_down_partial(&base, &[]),
        "none on either side",
    );
    assert_eq!(d_same.len(), d_none.len(), "unchanged bytes travelled");
    assert!(
        d_same.len() < 64,
        "an unchanged commit is {} bytes",
        d_same.len()
    );

    // Grown by a segment at the same down point: only the segment travels.
    let segment = plaintext(2, 1448);
    let grown = next_commit(
        &with_down_partial(&base, &[held.as_slice(), &segment].concat()),
        &base,
    );
    let d_grown = rebuild(&grown, &base, "grown");
    // The same commit but for the bytes: the grown one may only add the
    // segment and its length.
    let d_release_only = rebuild(
        &FlowCheckpoint {
            down_partial: held.clone(),
            ..grown.clone()
        },
        &base,
        "release point only",
    );
    assert!(
        d_grown.len() <= d_release_only.len() + segment.len() + 3,
        "grown by {} bytes: a {}-byte delta, {} without them",
        segment.len(),
        d_grown.len(),
        d_release_only.len()
    );
    assert!(
        d_grown.len() < grown.down_partial.len(),
        "the whole held plaintext travelled ({} bytes of delta)",
        d_grown.len()
    );
    // Grown again from there: a chain of deltas rebuilds each step.
    let more = plaintext(3, 700);
    let grown2 = next_commit(
        &with_down_partial(&grown, &[grown.down_partial.as_slice(), &more].concat()),
        &grown,
    );
    let d_grown2 = rebuild(&grown2, &grown, "grown twice");
    assert!(d_grown2.len() <= d_release_only.len() + more.len() + 3);

    // First bytes (from none): whole, and exact.
    let empty = with_down_partial(&base, &[]);
    rebuild(&next_commit(&base, &empty), &empty, "from none");

    // Anything but growth at the same down point: whole, and exact.
    // The client acknowledged the first batch: the down point moves to the
    // next one, and what is held now starts there.
    let mut moved = next_commit(&with_down_partial(&base, &plaintext(6, 3000)), &base);
    let first = moved.batches.remove(0);
    moved.down_client_off = moved
        .batches
        .first()
        .map_or(first.client_off, |b| b.client_off);
    moved.down_plain_off = first.plain_off + first.plaintext_len();
    let d_moved = rebuild(&moved, &base, "down point moved");
    assert!(d_moved.len() >= moved.down_partial.len());
    // Grown by a suffix while the down point moved (the bytes now start
    // elsewhere in the stream, whatever the code chosen).
    let mut moved_grown = next_commit(
        &with_down_partial(&base, &[held.as_slice(), &segment].concat()),
        &base,
    );
    moved_grown.down_plain_off += 1;
    for b in &mut moved_grown.batches {
        b.plain_off += 1;
    }
    rebuild(&moved_grown, &base, "grown while the down point moved");
    let shrunk = next_commit(&with_down_partial(&base, &held[..1000]), &base);
    rebuild(&shrunk, &base, "shrunk");
    let mut changed_bytes = held.clone();
    changed_bytes[17] ^= 0x40;
    let changed = next_commit(&with_down_partial(&base, &changed_bytes), &base);
    rebuild(&changed, &base, "a byte changed");
    let mut changed_suffix = held.clone();
    changed_suffix.extend_from_slice(&segment);
    changed_suffix[3] ^= 1;
    let changed_grown = next_commit(&with_down_partial(&base, &changed_suffix), &base);
    rebuild(&changed_grown, &base, "grown, with a byte changed before");
    rebuild(
        &next_commit(&empty, &base),
        &base,
        "released to the client: none left",
    );

    // A delta that would grow it past the bound (a lying peer): refused.
    let near = with_down_partial(&base, &plaintext(4, MAX_DOWN_PARTIAL - 10));
    let over = next_commit(
        &with_down_partial(&near, &[near.down_partial.as_slice(), &[7; 11]].concat()),
        &near,
    );
    let delta = encode_delta(&over, &near).expect("a delta");
    match apply_delta(&near, &delta) {
        Err(FlowError::Checkpoint(what)) => assert_eq!(what, "down_partial"),
        other => panic!(
            "a delta past MAX_DOWN_PARTIAL: {:?}",
            other.map(|c| c.down_partial.len())
        ),
    }
    let whole_over = next_commit(
        &with_down_partial(&base, &plaintext(5, MAX_DOWN_PARTIAL + 1)),
        &base,
    );
    let delta = encode_delta(&whole_over, &base).expect("a delta");
    assert!(
        matches!(apply_delta(&base, &delta), Err(FlowError::Checkpoint(_))),
        "a whole down_partial past MAX_DOWN_PARTIAL applied"
    );
}

/// A standby decodes its stored copies without deriving every TLS 1.3 key
/// again; the adopter's decode still refuses a key that does not derive from
/// its secret.
#[test]
fn stored_copies_skip_only_the_key_derivation() {
    let samples = samples();
    for b in &samples {
        assert_eq!(
            FlowCheckpoint::from_stored_bytes(b).unwrap(),
            FlowCheckpoint::from_bytes(b).unwrap()
        );
    }
    let mut ck = samples
        .iter()
        .map(|b| FlowCheckpoint::from_bytes(b).unwrap())
        .find(|ck| ck.traffic.version == relay_tls::Version::Tls13)
        .expect("a TLS 1.3 sample");
    let mut key = ck.traffic.write.key.to_vec();
    key[0] ^= 1;
    ck.traffic.write.key = key.into();
    let tampered = ck.to_bytes();
    assert_eq!(
        check_error(FlowCheckpoint::from_bytes(&tampered), "tampered key"),
        Some("traffic")
    );
    assert_eq!(FlowCheckpoint::from_stored_bytes(&tampered).unwrap(), ck);
    for n in 0..tampered.len() {
        assert!(FlowCheckpoint::from_stored_bytes(&tampered[..n]).is_err());
    }
}
