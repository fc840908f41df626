//! The datapath in the lab: a kernel TCP client in the client namespace talks
//! to VIP:443; relay-a answers from userspace through XDP and AF_XDP with
//! frames built by relay-wire; relay-a's kernel never sees the flow.

use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use relay_common::Verdict;
use relay_lab::{Lab, Node, echo, run, unique_prefix, wait_for};

#[test]
fn kernel_client_talks_to_userspace_through_af_xdp() {
    let lab = Lab::up(&unique_prefix("dp")).expect("lab up (run as root)");

    // Capture in the client namespace: what the client's kernel really got.
    let mut capture = lab
        .spawn(
            Node::Client,
            "tcpdump",
            &["-l", "-n", "-i", "eth0", "tcp", "port", "443"],
        )
        .expect("start tcpdump");
    let stderr = capture.stderr.take().expect("tcpdump stderr");
    let (listening_tx, listening_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = listening_tx.send(());
            }
        }
    });
    listening_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("tcpdump listening within 20 s");

    let stdout = capture.stdout.take().expect("tcpdump stdout");
    let captured = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = captured.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(mut lines) = sink.lock() {
                lines.push(line);
            }
        }
    });

    let report =
        echo::run_echo_exchange(&lab, 1 << 20, Duration::from_secs(60)).expect("echo exchange");

    // tcpdump prints a packet some time after it passed: wait until both
    // FINs of the close are in the capture before stopping it.
    let vip = format!("{}.{}", relay_lab::addr::VIP, relay_lab::addr::VIP_PORT);
    let from_vip = format!("{vip} >");
    let to_vip = format!("> {vip}:");
    let lines = wait_for(Duration::from_secs(30), "both FINs in the capture", || {
        let lines = captured.lock().ok()?.clone();
        let fin = |dir: &str| {
            lines
                .iter()
                .any(|l| l.contains(dir) && l.contains("Flags [F"))
        };
        (fin(&from_vip) && fin(&to_vip)).then_some(lines)
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", captured.lock().map(|l| l.clone())));
    run("kill", &["-TERM", &capture.id().to_string()]).expect("stop tcpdump");
    let _ = capture.wait();

    assert_eq!(report.received_bytes, report.bytes);
    assert_eq!(
        report.received_sha256, report.sent_sha256,
        "echo must be byte-exact"
    );
    assert_eq!(report.responder.opened, 1, "{:?}", report.responder);
    assert_eq!(report.responder.closed, 1, "{:?}", report.responder);
    assert_eq!(report.responder.malformed, 0, "{:?}", report.responder);

    // Every frame of the flow went through the steer program to userspace.
    assert!(
        report.verdicts.get(Verdict::Redirect) >= report.responder.frames_in,
        "{:?}",
        report.verdicts
    );
    assert_eq!(report.verdicts.get(Verdict::DropNoWorker), 0);
    assert_eq!(report.verdicts.get(Verdict::DropMalformed), 0);

    // relay-a's kernel TCP never saw a segment and never sent a reset.
    for counter in [
        "InSegs",
        "OutRsts",
        "PassiveOpens",
        "AttemptFails",
        "EstabResets",
        "InErrs",
    ] {
        assert!(
            !report
                .relay_kernel_tcp_delta
                .iter()
                .any(|(name, _)| name == counter),
            "relay-a kernel counter {counter} moved: {:?}",
            report.relay_kernel_tcp_delta
        );
    }

    // The client saw our SYN-ACK and no reset from anyone.
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&from_vip) && l.contains("Flags [S.]")),
        "no SYN-ACK from the VIP in the capture:\n{}",
        lines.join("\n")
    );
    let resets: Vec<&String> = lines.iter().filter(|l| l.contains("Flags [R")).collect();
    assert!(resets.is_empty(), "resets in the capture: {resets:?}");
}
