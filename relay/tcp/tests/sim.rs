//! Deterministic simulation: two engines over a lossy in-memory link.
//!
//! In release builds every run moves 64 MiB each way; debug builds move
//! 2 MiB so that a plain `cargo test` stays quick. `RELAY_TCP_SIM_BIG=1`
//! widens the matrix (more seeds, more loss rates).

mod common;

use std::time::Duration;

use common::{Sim, SimParams};
use relay_tcp::CongestionAlgorithm;

const MIB: usize = 1 << 20;

fn bytes() -> usize {
    if cfg!(debug_assertions) {
        2 * MIB
    } else {
        64 * MIB
    }
}

fn big() -> bool {
    std::env::var_os("RELAY_TCP_SIM_BIG").is_some()
}

fn seeds() -> Vec<u64> {
    if big() {
        (1..=8).collect()
    } else if cfg!(debug_assertions) {
        vec![1]
    } else {
        vec![1, 2, 3]
    }
}

#[track_caller]
fn run(p: SimParams) -> Sim {
    let label = format!(
        "seed {} loss {} dup {} reorder {} ckpt {}",
        p.seed, p.loss, p.duplicate, p.reorder, p.checkpoints
    );
    let started = std::time::Instant::now();
    let mut sim = Sim::new(p);
    sim.run();
    eprintln!(
        "{label}: {} segments, {} dropped, virtual {:?}, wall {:?}, failovers {}+{}",
        sim.segments,
        sim.dropped,
        sim.now - relay_tcp::Instant::from_secs(1000),
        started.elapsed(),
        sim.a.failovers,
        sim.b.failovers
    );
    sim
}

#[test]
fn clean_link_small() {
    let sim = run(SimParams::new(1, MIB, 0.0));
    let a = sim.a.conn.as_ref().unwrap().stats();
    assert_eq!(a.timeouts, 0, "{a:?}");
}

#[test]
fn loss_matrix() {
    let rates: &[f64] = if big() {
        &[0.0, 0.005, 0.01, 0.02, 0.05, 0.1]
    } else {
        &[0.01, 0.1]
    };
    for &seed in &seeds() {
        for &loss in rates {
            run(SimParams::new(seed, bytes(), loss));
        }
    }
}

#[test]
fn reordering_and_duplication() {
    for &seed in &seeds() {
        let mut p = SimParams::new(seed + 100, bytes(), 0.02);
        p.reorder = 0.05;
        p.duplicate = 0.02;
        run(p);
    }
}

#[test]
fn newreno_without_sack_or_timestamps() {
    for &seed in &seeds() {
        let mut p = SimParams::new(seed + 200, bytes() / 4, 0.02);
        p.config.congestion = CongestionAlgorithm::NewReno;
        p.config.sack = false;
        p.config.timestamps = false;
        p.reorder = 0.01;
        run(p);
    }
}

#[test]
fn small_buffers_zero_windows_and_no_delayed_ack() {
    let mut p = SimParams::new(300, bytes() / 8, 0.01);
    p.config.recv_buffer = 4096;
    p.config.send_buffer = 8192;
    p.config.window_scaling = false;
    p.config.delayed_ack = None;
    p.config.nodelay = false;
    run(p);
}

#[test]
fn checkpoint_failover_matrix() {
    let rates: &[f64] = if big() {
        &[0.0, 0.01, 0.05, 0.1]
    } else {
        &[0.0, 0.02, 0.1]
    };
    for &seed in &seeds() {
        for &loss in rates {
            let mut p = SimParams::new(seed + 400, bytes(), loss);
            p.checkpoints = true;
            p.reorder = 0.01;
            p.failover_every = if loss >= 0.05 {
                Duration::from_secs(5)
            } else {
                Duration::from_millis(300)
            };
            let sim = run(p);
            assert!(
                sim.a.failovers + sim.b.failovers > 0,
                "no failover happened"
            );
            let full = sim.checkpoint_sizes.iter().max().copied().unwrap_or(0);
            let delta =
                sim.delta_sizes.iter().sum::<usize>() as f64 / sim.delta_sizes.len().max(1) as f64;
            eprintln!("  checkpoint {full} bytes, mean delta {delta:.1} bytes");
        }
    }
}

#[test]
fn checkpoint_failover_without_sack_or_timestamps() {
    for &seed in &seeds() {
        let mut p = SimParams::new(seed + 500, bytes() / 4, 0.02);
        p.checkpoints = true;
        p.config.sack = false;
        p.config.timestamps = false;
        p.config.congestion = CongestionAlgorithm::NewReno;
        p.failover_every = Duration::from_millis(500);
        let sim = run(p);
        assert!(
            sim.a.failovers + sim.b.failovers > 0,
            "no failover happened"
        );
    }
}

#[test]
fn checkpoint_failover_while_closing() {
    // Short transfers, frequent failovers: many land in FIN-WAIT, CLOSING,
    // LAST-ACK or TIME-WAIT.
    for seed in 0..if cfg!(debug_assertions) { 10 } else { 40 } {
        let mut p = SimParams::new(seed + 600, 64 * 1024, 0.05);
        p.checkpoints = true;
        p.failover_every = Duration::from_millis(40);
        p.down_time = Duration::from_millis(5);
        run(p);
    }
}

/// Replays one run: `RELAY_TCP_SIM_ONE=seed,loss,ckpt(0/1),mib[,reorder]`
/// (what the matrices print). Does nothing without the variable.
#[test]
fn replay_one() {
    let Ok(spec) = std::env::var("RELAY_TCP_SIM_ONE") else {
        return;
    };
    let f: Vec<&str> = spec.split(',').collect();
    let mut p = SimParams::new(
        f[0].parse().unwrap(),
        f[3].parse::<usize>().unwrap() * MIB,
        f[1].parse().unwrap(),
    );
    p.checkpoints = f[2] == "1";
    p.reorder = f.get(4).map_or(0.01, |r| r.parse().unwrap());
    if p.checkpoints {
        p.failover_every = if p.loss >= 0.05 {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(300)
        };
    }
    run(p);
}
