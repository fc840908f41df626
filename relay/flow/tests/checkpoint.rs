//! `FlowCheckpoint::from_bytes` on what a peer relay could send: truncated,
//! flipped, garbage. It never panics, and every error names the field.
//! The checkpoints come from a real flow (the failover simulation's
//! standby stored them).

mod common;

use common::{KIB, Params, Rng, Sim};
use relay_flow::{FLOW_CHECKPOINT_VERSION, FlowCheckpoint, FlowError};

/// Encodings a standby stored during a short simulated transfer: some with
/// planned batches, some with a partial record.
fn samples() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for seed in [11, 12, 13] {
        let mut p = Params::random(seed, (256 * KIB) as u64, false);
        p.flow.partial_release = 100;
        // (Built with the rule broken, the monitor would stop the run; no
        // relay dies here, so the checkpoints are still real ones.)
        p.watch_rule = !cfg!(feature = "broken-commit-rule");
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
    for b in &samples {
        let ck = FlowCheckpoint::from_bytes(b).unwrap();
        assert_eq!(&ck.to_bytes(), b);
        ck.validate().unwrap();
        with_batches += usize::from(!ck.batches.is_empty());
        with_partial += usize::from(!ck.partial.is_empty());
    }
    eprintln!(
        "{} checkpoints, {with_batches} with batches, {with_partial} with a partial record",
        samples.len()
    );
    assert!(with_batches > 0, "no sample carries planned batches");
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
    // Huge length prefixes must not allocate or panic.
    let mut x = b[..5 + 8].to_vec();
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
        let mut p = Params::random(seed, (512 * KIB) as u64, false);
        p.watch_rule = !cfg!(feature = "broken-commit-rule");
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
