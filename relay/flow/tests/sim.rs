//! The failover simulation (`tests/common/mod.rs` describes the model):
//! a rustls client and a TCP backend exchange data both ways through relay
//! A, which replicates its commits to relay B; A is killed at random
//! moments and B (then C) adopts from what it acknowledged. Every transfer
//! must complete byte-exact, with no reset and no TLS alert.
//!
//! `RELAY_FLOW_SIM_SEEDS=a..b` runs other seeds; `RELAY_FLOW_SIM_ONE=seed`
//! replays one (with its diagnostic on failure).
//!
//! `broken_rule_is_caught` (ignored here; `cargo xtask test` runs it with
//! `--ignored`) breaks the commit rule on purpose, in the simulation's
//! outbox (see `Params::broken_rule`), and asserts that the commit-rule
//! monitor is what fails the runs.

mod common;

use common::{Check, Failure, MIB, Params, Report, Trigger, run_seed};

/// How the seeds are run.
#[derive(Clone, Copy)]
struct Mode {
    /// The commit-rule monitor is on.
    watch_rule: bool,
    /// The rule is broken on purpose (`Params::broken_rule`).
    broken_rule: bool,
    /// Stop at the first failure.
    stop_at_first: bool,
}

const NORMAL: Mode = Mode {
    watch_rule: true,
    broken_rule: false,
    stop_at_first: false,
};

/// Runs `seeds` on two threads; returns the failures.
fn run_many(seeds: Vec<u64>, max_bytes: u64, kills: bool, mode: Mode) -> Vec<Failure> {
    run_many_with(seeds, max_bytes, kills, mode, |_| {}).0
}

/// [`run_many`] with `tweak` applied to each seed's parameters; returns
/// the failures and the reports of the runs that passed.
fn run_many_with(
    seeds: Vec<u64>,
    max_bytes: u64,
    kills: bool,
    mode: Mode,
    tweak: fn(&mut Params),
) -> (Vec<Failure>, Vec<Report>) {
    let seeds = std::sync::Mutex::new(seeds.into_iter());
    let failures = std::sync::Mutex::new(Vec::new());
    let reports = std::sync::Mutex::new(Vec::new());
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    let Some(seed) = seeds.lock().unwrap().next() else {
                        return;
                    };
                    let mut p = Params::random(seed, max_bytes, kills);
                    p.watch_rule = mode.watch_rule;
                    p.broken_rule = mode.broken_rule;
                    tweak(&mut p);
                    match run_seed(p) {
                        Ok(r) => reports.lock().unwrap().push(r),
                        Err(e) => {
                            failures.lock().unwrap().push(e);
                            if mode.stop_at_first {
                                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                }
            });
        }
    });
    (
        failures.into_inner().unwrap(),
        reports.into_inner().unwrap(),
    )
}

fn seed_range(default: std::ops::Range<u64>) -> Vec<u64> {
    if let Ok(s) = std::env::var("RELAY_FLOW_SIM_SEEDS")
        && let Some((a, b)) = s.split_once("..")
    {
        return (a.parse().unwrap()..b.parse().unwrap()).collect();
    }
    default.collect()
}

fn assert_none(failures: Vec<Failure>) {
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("{f}\n");
        }
        panic!("{} seed(s) failed; first:\n{}", failures.len(), failures[0]);
    }
}

/// The seeds `adoption_across_seeds` runs.
const ADOPTION_SEEDS: std::ops::Range<u64> = 1..81;

#[test]
fn no_kill_baseline() {
    assert_none(run_many(
        seed_range(1000..1012),
        (2 * MIB) as u64,
        false,
        NORMAL,
    ));
}

#[test]
fn adoption_across_seeds() {
    assert_none(run_many(
        seed_range(ADOPTION_SEEDS),
        (2 * MIB) as u64,
        true,
        NORMAL,
    ));
}

#[test]
fn small_transfers_many_kills() {
    // Short flows: kills land in the handshake's aftermath and the close.
    assert_none(run_many(
        seed_range(5000..5060),
        (64 * common::KIB) as u64,
        true,
        NORMAL,
    ));
}

/// Replays one seed: `RELAY_FLOW_SIM_ONE=seed[,max_bytes]`.
#[test]
fn replay_one() {
    let Ok(spec) = std::env::var("RELAY_FLOW_SIM_ONE") else {
        return;
    };
    let mut f = spec.split(',');
    let seed = f.next().unwrap().parse().unwrap();
    let max = f.next().map_or((2 * MIB) as u64, |m| m.parse().unwrap());
    if let Err(e) = run_seed(Params::random(seed, max, true)) {
        panic!("{e}");
    }
}

/// The commit rule broken on purpose (the simulation's outbox acknowledges
/// each commit before the standby holds it): the monitor must be what
/// stops every run, and with the monitor off the transfer must fail.
#[test]
#[ignore = "the commit rule broken on purpose: `cargo xtask test` runs it with --ignored"]
fn broken_rule_is_caught() {
    // The seeds `adoption_across_seeds` shows clean with the rule intact:
    // a failure here is the broken rule's doing.
    let seeds = || seed_range(ADOPTION_SEEDS);
    // Watched directly, every run shows it, and it is the monitor that
    // does: an ACK or a record leaves before the standby holds the commit.
    let watched = run_many(
        seeds().into_iter().take(8).collect(),
        (2 * MIB) as u64,
        true,
        Mode {
            watch_rule: true,
            broken_rule: true,
            stop_at_first: false,
        },
    );
    assert_eq!(
        watched.len(),
        8,
        "the broken rule went unnoticed on some seed"
    );
    for f in &watched {
        assert!(
            f.check == Check::CommitRule && f.diagnostic.contains("commit rule broken: "),
            "a run failed, but not by the commit-rule monitor:\n{f}"
        );
    }
    eprintln!(
        "watched: the monitor caught it on every seed; first:\n{}",
        watched[0]
    );
    // End to end only: when a kill lands between the early release and
    // the standby storing the commit, bytes are lost (the client or the
    // backend was told they arrived; the adopter never sees them) and the
    // transfer cannot complete.
    let failures = run_many(
        seeds(),
        (2 * MIB) as u64,
        true,
        Mode {
            watch_rule: false,
            broken_rule: true,
            stop_at_first: true,
        },
    );
    assert!(
        !failures.is_empty(),
        "the simulation did not notice that the commit rule is broken"
    );
    for f in &failures {
        assert!(
            f.check != Check::CommitRule && f.incomplete,
            "with the monitor off, a run must fail by bytes that never arrive:\n{f}"
        );
    }
    eprintln!(
        "end to end: caught ({} seed(s) failed); first:\n{}",
        failures.len(),
        failures[0]
    );
}

/// The seeds the adoption-while-replaying tests run.
const REPLAYING_SEEDS: std::ops::Range<u64> = 1..41;

/// A kill at a seeded point, then another while the adopter replays the
/// dead relay's plan with backend plaintext acknowledged early: its
/// standby holds a checkpoint with `down_partial`, and the next adopter
/// goes on from that.
fn kill_while_replaying(p: &mut Params) {
    let at = match p.kills.first() {
        Some(Trigger::Progress(f)) => *f,
        _ => 0.3,
    };
    p.kills = vec![Trigger::Progress(at), Trigger::Replaying];
}

/// What the runs of an adoption-while-replaying test exercised.
struct Replayed {
    adoptions: u32,
    grown: u64,
}

fn replayed(what: &str, reports: &[Report]) -> Replayed {
    let adoptions = reports.iter().map(|r| r.partial_adoptions).sum();
    let commits: u64 = reports.iter().map(|r| r.partial_commits).sum();
    let grown = reports.iter().map(|r| r.partial_grown).sum();
    let sent: u64 = reports.iter().map(|r| r.recovery_sent).sum();
    let mut gaps: Vec<_> = reports
        .iter()
        .flat_map(|r| r.gaps.iter().copied())
        .collect();
    gaps.sort_unstable();
    eprintln!(
        "{what}: {} runs, {adoptions} adoptions from a checkpoint with down_partial; {commits} \
         such checkpoints stored, {grown} of them by a delta that only added bytes; {sent} \
         segments sent one per ACK by a backend in recovery; the client's wait after an \
         adoption: median {:?}, max {:?}",
        reports.len(),
        gaps.get(gaps.len() / 2),
        gaps.last(),
    );
    Replayed { adoptions, grown }
}

/// Every run completes byte-exact (the client checks each byte at its
/// offset and decrypts every record) with a second adopter going on from
/// the first one's `down_partial`.
#[test]
fn adoption_while_replaying() {
    let (failures, reports) = run_many_with(
        seed_range(REPLAYING_SEEDS),
        MIB as u64,
        true,
        NORMAL,
        kill_while_replaying,
    );
    assert_none(failures);
    let r = replayed("adoption_while_replaying", &reports);
    // Most seeds get there (the rest replay no record split across
    // segments, or have nothing planned at the first kill); the ECDSA
    // seeds move a little from run to run.
    assert!(
        r.adoptions >= 15,
        "only {} adoptions from a checkpoint with down_partial",
        r.adoptions
    );
    assert!(r.grown > 0, "no delta grew a down_partial by a suffix");
}

/// As `adoption_while_replaying`, with a backend that recovers as Linux
/// does when SACK tells it nothing (`Params::linux_recovery`): after each
/// kill it resends one segment, and the next only once the cumulative ACK
/// moves. An adopter that held its ACK until a planned record was whole
/// would get one segment per retransmission timeout, backed off, and the
/// run would stall.
#[test]
fn adoption_while_replaying_linux_backend() {
    fn tweak(p: &mut Params) {
        kill_while_replaying(p);
        p.linux_recovery = true;
    }
    let (failures, reports) =
        run_many_with(seed_range(REPLAYING_SEEDS), MIB as u64, true, NORMAL, tweak);
    assert_none(failures);
    let r = replayed("adoption_while_replaying_linux_backend", &reports);
    assert!(
        r.adoptions >= 15,
        "only {} adoptions from a checkpoint with down_partial",
        r.adoptions
    );
    assert!(r.grown > 0, "no delta grew a down_partial by a suffix");
}
