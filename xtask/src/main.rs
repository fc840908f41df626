//! Developer and lab tooling. `cargo xtask --help` lists the commands.
//!
//! Every command installs what it needs first (`setup` is idempotent), so the
//! README's two commands work on a fresh machine of the project's kind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use relay_lab::{Lab, addr, echo};

#[derive(Parser)]
#[command(about = "relay developer tooling: setup, lab, demo, test, bench, fuzz")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the system packages and toolchain parts the project needs (idempotent).
    Setup,
    /// Build, inspect or remove the lab of network namespaces.
    Lab {
        #[command(subcommand)]
        action: LabAction,
        /// Name prefix of the lab's namespaces (parallel labs need distinct prefixes).
        #[arg(long, default_value = "lab", global = true)]
        prefix: String,
    },
    /// The main job: lab up, a kernel client talks to the VIP through XDP and
    /// AF_XDP, figures printed, lab down.
    Demo {
        /// Bytes the client sends (and expects echoed back).
        #[arg(long, default_value_t = 4 << 20)]
        bytes: usize,
    },
    /// Every test: formatting, lints, unit, BPF and lab tests, a bounded fuzz run.
    Test {
        /// Seconds of fuzzing per fuzz target (0 skips fuzzing).
        #[arg(long, default_value_t = 15)]
        fuzz_seconds: u64,
    },
    /// Run the benchmarks and print their figures.
    Bench,
    /// Fuzz every parser for a bounded time.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

#[derive(Subcommand)]
enum LabAction {
    /// Build the topology (replacing leftovers with the same prefix).
    Up,
    /// Remove everything with this prefix, also after a crash.
    Down,
    /// Show namespaces, addresses and attached XDP programs.
    Status,
}

/// Debian packages the project's tooling, tests and benches run.
const SYSTEM_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "tcpdump",
    "curl",
    "openssl",
    "gnutls-bin",
    "python3",
    "iperf3",
];

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => setup(),
        Cmd::Lab { action, prefix } => lab(action, &prefix),
        Cmd::Demo { bytes } => demo(bytes),
        Cmd::Test { fuzz_seconds } => test(fuzz_seconds),
        Cmd::Bench => bench(),
        Cmd::Fuzz { seconds } => fuzz(seconds),
    }
}

fn root() -> PathBuf {
    // xtask lives one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn step(what: &str) {
    println!("\n==> {what}");
}

/// Runs a command in the workspace root, streaming its output.
fn sh(program: &str, args: &[&str]) -> Result<()> {
    let started = Instant::now();
    let status = Command::new(program)
        .args(args)
        .current_dir(root())
        .status()
        .with_context(|| format!("could not start `{program}`; is it installed?"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    println!(
        "    ({program} {} took {:.1} s)",
        args.first().unwrap_or(&""),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn setup() -> Result<()> {
    step("system packages");
    let missing: Vec<&str> = SYSTEM_PACKAGES
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        println!("    all present: {}", SYSTEM_PACKAGES.join(" "));
    } else {
        println!("    installing: {}", missing.join(" "));
        sh("apt-get", &["update", "-qq"])
            .context("apt-get update (needs root and the Debian mirror)")?;
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend(missing.iter());
        sh("apt-get", &args).context("apt-get install")?;
    }
    step("nightly toolchain with rust-src (for the XDP program)");
    let has_nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_nightly {
        sh(
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
        )?;
    }
    sh(
        "rustup",
        &["component", "add", "rust-src", "--toolchain", "nightly"],
    )?;
    println!(
        "    bpf-linker is built and cached by the first `cargo build` (relay/datapath/build.rs)"
    );
    Ok(())
}

fn lab(action: LabAction, prefix: &str) -> Result<()> {
    match action {
        LabAction::Up => {
            setup()?;
            step(&format!("lab up (prefix {prefix:?})"));
            let lab = Lab::up(prefix).context("building the lab")?;
            lab.keep();
            print!("{}", Lab::status(prefix)?);
            println!("\nremove it with: cargo xtask lab down --prefix {prefix}");
        }
        LabAction::Down => {
            Lab::down(prefix).context("removing the lab")?;
            println!("lab {prefix:?} removed");
        }
        LabAction::Status => print!("{}", Lab::status(prefix)?),
    }
    Ok(())
}

fn demo(bytes: usize) -> Result<()> {
    setup()?;
    step("building the lab (prefix \"demo\")");
    let lab = Lab::up("demo").context("building the lab")?;
    println!(
        "    client {} -> VIP {}:{} on relay-a (XDP steer program + AF_XDP socket on 'front')",
        addr::CLIENT,
        addr::VIP,
        addr::VIP_PORT
    );
    step(&format!(
        "kernel TCP client sends {bytes} bytes; relay-a echoes them from userspace"
    ));
    let report = echo::run_echo_exchange(&lab, bytes, Duration::from_secs(60))?;
    let secs = report.client_elapsed.as_secs_f64();
    println!(
        "    sent     {} bytes  sha256 {}",
        report.bytes, report.sent_sha256
    );
    println!(
        "    received {} bytes  sha256 {}",
        report.received_bytes, report.received_sha256
    );
    let exact = report.sent_sha256 == report.received_sha256;
    println!(
        "    byte-exact: {}   ({:.2} s, {:.1} MB/s each way; the echo responder is a datapath probe, not the relay's TCP)",
        if exact { "yes" } else { "NO" },
        secs,
        report.bytes as f64 / secs / 1e6
    );
    step("relay-a XDP verdicts during the exchange");
    for (name, count) in report.verdicts.named() {
        println!("    {name:<18} {count}");
    }
    step("relay-a AF_XDP socket");
    let d = report.device;
    println!(
        "    rx {} frames / {} bytes, tx {} frames / {} bytes, kicks {}, backpressure {}, kernel drops {}",
        d.rx_frames, d.rx_bytes, d.tx_frames, d.tx_bytes, d.kicks, d.tx_backpressure, d.rx_dropped
    );
    println!("    responder: {:?}", report.responder);
    step("relay-a kernel TCP counters changed during the exchange");
    if report.relay_kernel_tcp_delta.is_empty() {
        println!("    none: the relay's kernel never saw the flow (no segments in, no resets out)");
    } else {
        for (name, delta) in &report.relay_kernel_tcp_delta {
            println!("    {name} +{delta}");
        }
    }
    step("lab down");
    drop(lab);
    if !exact {
        bail!("the echo was not byte-exact");
    }
    println!("\ndemo ok");
    Ok(())
}

fn test(fuzz_seconds: u64) -> Result<()> {
    setup()?;
    step("cargo fmt --check");
    sh("cargo", &["fmt", "--all", "--", "--check"])?;
    step("cargo clippy (warnings are errors)");
    sh(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    step("cargo test (unit, BPF verdict and lab tests; needs root)");
    let mut totals = TestTotals::default();
    cargo_test(&root(), &["test", "--workspace"], &mut totals)?;
    step("TCP engine simulation at full size (64 MiB each way per run; release build)");
    cargo_test(
        &root(),
        &["test", "--release", "-p", "relay-tcp", "--test", "sim"],
        &mut totals,
    )?;
    if fuzz_seconds > 0 {
        fuzz(fuzz_seconds)?;
    }
    println!(
        "\nall tests: {} passed, {} failed",
        totals.passed, totals.failed
    );
    Ok(())
}

#[derive(Default)]
struct TestTotals {
    passed: u64,
    failed: u64,
}

/// Runs `cargo <args>` in `dir`, echoing its output and adding up the
/// `test result:` lines, so the run ends with one total line.
fn cargo_test(dir: &Path, args: &[&str], totals: &mut TestTotals) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let started = Instant::now();
    let mut child = Command::new("cargo")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("could not start cargo")?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(label), Some(count)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(count) = count.parse::<u64>() else {
                    continue;
                };
                match label {
                    "passed" => totals.passed += count,
                    "failed" => totals.failed += count,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    println!(
        "    (cargo {} took {:.1} s)",
        args.join(" "),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn bench() -> Result<()> {
    setup()?;
    step("datapath benchmark (AF_XDP vs kernel, in a namespace)");
    sh(
        "cargo",
        &["run", "--release", "-p", "relay-bench", "--bin", "datapath"],
    )
}

fn fuzz(seconds: u64) -> Result<()> {
    step("cargo-fuzz");
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have {
        println!("    installing cargo-fuzz from crates.io (once)");
        sh("cargo", &["install", "cargo-fuzz", "--locked"])?;
    }
    // (crate fuzz project, target): one target per parser that sees the network.
    let targets = [
        ("relay/wire/fuzz", "ethernet"),
        ("relay/wire/fuzz", "arp"),
        ("relay/wire/fuzz", "ipv4"),
        ("relay/wire/fuzz", "tcp"),
        ("relay/wire/fuzz", "tcp_frame"),
        ("relay/tls/fuzz", "deframe"),
        ("relay/tls/fuzz", "record_open"),
    ];
    for (i, (dir, target)) in targets.iter().enumerate() {
        step(&format!(
            "fuzz {dir} {target} for {seconds} s ({}/{})",
            i + 1,
            targets.len()
        ));
        let status = Command::new("cargo")
            .args([
                "+nightly",
                "fuzz",
                "run",
                target,
                "--",
                &format!("-max_total_time={seconds}"),
            ])
            .current_dir(root().join(dir))
            .status()
            .context("running cargo fuzz")?;
        if !status.success() {
            bail!("fuzz target {target} failed: see {dir}/artifacts/{target}");
        }
    }
    Ok(())
}
