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
    /// The main job: lab up, a backend with a large file, the relay in front
    /// of it, curl downloading it over TLS through the VIP (hash checked),
    /// `relay status` and metrics printed, lab down.
    Demo {
        /// Bytes the client downloads.
        #[arg(long, default_value_t = 1 << 30)]
        bytes: usize,
        /// Show the datapath probe instead (a kernel client echoed from
        /// userspace through AF_XDP, no TLS).
        #[arg(long)]
        datapath: bool,
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
    // The peers of the benchmark and of the lab tests.
    "nginx",
    "haproxy",
    "wrk",
    "prometheus",
    "hping3",
];

/// Keeps package scripts from starting the daemons they install (nginx,
/// haproxy, prometheus): the lab starts its own, inside its namespaces.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => setup(),
        Cmd::Lab { action, prefix } => lab(action, &prefix),
        Cmd::Demo { bytes, datapath } => {
            if datapath {
                demo_datapath(bytes)
            } else {
                demo(bytes as u64)
            }
        }
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
        let own_policy = !Path::new(POLICY_RC_D).exists();
        if own_policy {
            std::fs::write(POLICY_RC_D, "#!/bin/sh\nexit 101\n")
                .and_then(|()| {
                    std::fs::set_permissions(
                        POLICY_RC_D,
                        std::os::unix::fs::PermissionsExt::from_mode(0o755),
                    )
                })
                .context("writing policy-rc.d")?;
        }
        let installed = sh("apt-get", &args).context("apt-get install");
        if own_policy {
            let _ = std::fs::remove_file(POLICY_RC_D);
        }
        installed?;
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

fn demo(bytes: u64) -> Result<()> {
    use relay_lab::relay::{RelayConfig, RelayProcess};
    use relay_lab::{Node, peers, pki};
    setup()?;
    step("building the relay and the lab's backend");
    sh(
        "cargo",
        &["build", "-p", "relay-app", "-p", "relay-lab", "--bins"],
    )?;
    step("building the lab (prefix \"demo\")");
    let lab = Lab::up("demo").context("building the lab")?;
    let pki = pki::TestPki::generate(pki::KeyKind::EcdsaP256)?;
    let backend_bin = relay_lab::peers::sibling_binary("lab-backend")
        .context("lab-backend next to xtask (cargo build -p relay-lab --bins)")?;
    let backend_addr = format!("{}:8080", addr::BACKEND);
    let backend = peers::BackendServer::spawn_in(
        &lab,
        Node::Backend,
        &backend_bin,
        &backend_addr,
        &["--idle-timeout", "600"],
    )?;
    println!("    backend: lab-backend on {backend_addr} (plain HTTP, GET /bytes/N)");

    step("starting the relay pair: relay-a serves the VIP, relay-b stands by over the backplane");
    let a_config = RelayConfig::pair_member(&pki, Node::RelayA)?;
    let b_config = RelayConfig::pair_member(&pki, Node::RelayB)?;
    let mut relay_a = RelayProcess::start_on(&lab, Node::RelayA, &a_config)?;
    let relay_b = RelayProcess::start_on(&lab, Node::RelayB, &b_config)?;
    relay_lab::wait_for(Duration::from_secs(30), "relay-b to see relay-a", || {
        relay_b.log_tail(200).contains("peer up").then_some(())
    })?;
    println!(
        "    relay-a (pid {}) serves https://{}:{} on the VIP {}; relay-b (pid {}) holds its flows' checkpoints",
        relay_a.pid(),
        pki::SERVER_NAME,
        addr::VIP_PORT,
        addr::VIP,
        relay_b.pid()
    );

    step(&format!(
        "curl downloads {bytes} bytes through the VIP; relay-a is killed (SIGKILL) part way"
    ));
    let pcap = pki.dir().join("client.pcap");
    let mut capture = lab.spawn(
        Node::Client,
        "tcpdump",
        &[
            "-U",
            "-s",
            "96",
            "-n",
            "-i",
            "eth0",
            "-w",
            &pcap.to_string_lossy(),
            "tcp port 443",
        ],
    )?;
    relay_lab::wait_for(Duration::from_secs(30), "tcpdump capturing", || {
        (std::fs::metadata(&pcap).ok()?.len() >= 24).then_some(())
    })?;
    let expected = peers::pattern_sha256(bytes);
    let t0 = Instant::now();
    let cmd = format!(
        "set -o pipefail; curl -sS --fail --cacert {ca} --resolve {name}:443:{vip} \
         -w '%{{stderr}}connects=%{{num_connects}}\\n' https://{name}/bytes/{bytes} | sha256sum",
        ca = pki.ca.display(),
        name = pki::SERVER_NAME,
        vip = addr::VIP,
    );
    let curl = lab.spawn(Node::Client, "bash", &["-c", &cmd])?;
    let kill_at = bytes * 2 / 5;
    let mut shown = 0;
    relay_lab::wait_for(Duration::from_secs(300), "the download under way", || {
        let moved = relay_a.status().ok()?.bytes_down;
        if moved >= shown + bytes / 10 {
            shown = moved;
            println!("    relay-a has relayed {} MB", moved / 1_000_000);
        }
        (moved >= kill_at).then_some(())
    })?;
    let killed_after = t0.elapsed();
    relay_a.kill();
    println!(
        "    relay-a killed {:.1} s into the download (its box and links stay up)",
        killed_after.as_secs_f64()
    );
    let out = curl.wait_with_output()?;
    let secs = t0.elapsed().as_secs_f64();
    let got = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let exact = out.status.success() && got == expected;
    let _ = relay_lab::run("kill", &["-TERM", &capture.id().to_string()]);
    let _ = capture.wait();
    println!("    expected sha256 {expected}");
    println!("    received sha256 {got}");
    println!(
        "    byte-exact: {}   ({bytes} bytes in {secs:.2} s, {:.1} MB/s; {})",
        if exact { "yes" } else { "NO" },
        bytes as f64 / secs / 1e6,
        stderr.trim()
    );

    step("failover");
    for line in relay_b.log_tail(400).lines() {
        if line.contains("took over the peer's flows") || line.contains("peer up") {
            println!(
                "    relay-b: {}",
                line.split("INFO ").nth(1).unwrap_or(line)
            );
        }
    }
    if let Ok(Some((gap, _))) = relay_lab::gap::largest_gap(&lab, Node::Client, &pcap) {
        println!(
            "    failover gap at the client: {:.0} ms without a byte from the VIP",
            gap * 1e3
        );
    }
    if let Ok(status) = relay_b.status() {
        println!(
            "    relay-b relayed {} MB of the download; it opened {} new flows and did {} handshakes",
            status.bytes_down / 1_000_000,
            status.flows_opened,
            status.handshakes_full + status.handshakes_resumed
        );
    }

    step("lab down");
    drop(relay_b);
    drop(relay_a);
    drop(backend);
    drop(lab);
    if !exact {
        bail!("the download was not byte-exact");
    }
    println!("\ndemo ok");
    Ok(())
}

fn demo_datapath(bytes: usize) -> Result<()> {
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
    // `cargo test --workspace` also builds target/debug/relay (relay-app has
    // integration tests), which the relay-lab tests run.
    step("cargo test (unit, BPF verdict and lab tests; needs root)");
    let mut totals = TestTotals::default();
    cargo_test(
        &root(),
        &["test", "--workspace", "--no-fail-fast"],
        &mut totals,
    )?;
    step("TCP engine simulation at full size (64 MiB each way per run; release build)");
    cargo_test(
        &root(),
        &["test", "--release", "-p", "relay-tcp", "--test", "sim"],
        &mut totals,
    )?;
    // The mutation lives in the simulation (its outbox acknowledges commits
    // before the standby holds them), not in relay-flow; the test is
    // ignored in plain `cargo test` and asserts that the commit-rule
    // monitor is what fails the runs.
    step("failover simulation with the commit rule broken on purpose (must be caught)");
    let passed_before = totals.passed;
    cargo_test(
        &root(),
        &[
            "test",
            "-p",
            "relay-flow",
            "--test",
            "sim",
            "--",
            "--ignored",
            "--exact",
            "broken_rule_is_caught",
        ],
        &mut totals,
    )?;
    if totals.passed != passed_before + 1 {
        bail!(
            "the broken-commit-rule run did not run: no test `broken_rule_is_caught` passed in relay/flow/tests/sim.rs (renamed or no longer ignored?)"
        );
    }
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
    )?;
    step("TLS termination: the relay beside nginx and haproxy, one core each, in the lab");
    sh("cargo", &["build", "--release", "-p", "relay-app"])?;
    sh(
        "cargo",
        &[
            "run",
            "--release",
            "-p",
            "relay-bench",
            "--bin",
            "tls-compare",
        ],
    )?;
    step(
        "failover gap (1 and 1000 flows), replication cost and commit latency of a relay pair, in the lab",
    );
    // The relay, lab-backend and lab-load in release, next to the bench.
    sh(
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "relay-app",
            "-p",
            "relay-lab",
            "--bins",
        ],
    )?;
    sh(
        "cargo",
        &["run", "--release", "-p", "relay-bench", "--bin", "failover"],
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
        ("relay/replication/fuzz", "deframe"),
        ("relay/flow/fuzz", "tcp_checkpoint"),
        ("relay/flow/fuzz", "flow_checkpoint"),
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
