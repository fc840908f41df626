//! `lab-load`: the lab's TLS load client (see `relay_lab::load`).
//!
//! ```text
//! lab-load --connect 10.200.1.100:443 --sni relay.lab --ca ca.pem \
//!          --connections 1000 --bytes 1048576 [--upload] [--timeout SECS]
//! ```
//!
//! Prints one line per failed connection, then the summary line
//! `connections=N ok=N failed=N bytes=N secs=S MB/s=R`; exits 1 if any
//! connection failed, 2 if the run could not start.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use relay_lab::load::{LoadConfig, run};

/// Holds N TLS connections open at once, then moves and checks N bodies.
#[derive(Debug, Parser)]
#[command(name = "lab-load")]
struct Args {
    /// Server address (the VIP in the lab).
    #[arg(long)]
    connect: SocketAddr,
    /// Server name sent in the ClientHello and verified in the certificate.
    #[arg(long, default_value = "relay.lab")]
    sni: String,
    /// PEM file of the CA (or certificates) to trust.
    #[arg(long)]
    ca: PathBuf,
    /// Connections held open at once.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Body bytes per connection.
    #[arg(long, default_value_t = 1 << 20)]
    bytes: u64,
    /// POST the bytes to /upload and check the returned hash, instead of GET /bytes/N.
    #[arg(long)]
    upload: bool,
    /// Seconds allowed for every connect, read and write.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = LoadConfig {
        connect: args.connect,
        sni: args.sni,
        ca: args.ca,
        connections: args.connections,
        bytes: args.bytes,
        upload: args.upload,
        timeout: Duration::from_secs(args.timeout.max(1)),
    };
    let report = match run(&config) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("lab-load: {e}");
            return ExitCode::from(2);
        }
    };
    for failure in &report.failures {
        println!("{failure}");
    }
    println!("{}", report.summary());
    eprintln!(
        "lab-load: {} connections open at once after {:.3} s of handshakes",
        report.held,
        report.handshakes.as_secs_f64()
    );
    if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
