//! `lab-backend`: the lab's HTTP/1.1 origin server (see `relay_lab::backend`).
//!
//! ```text
//! lab-backend --listen 10.200.2.10:8080 [--reset-after N] [--max-connections N] [--idle-timeout SECS]
//! lab-backend --listen 10.200.2.10:8080 --echo [--idle-timeout SECS]
//! ```
//!
//! Prints `listening on <addr>` once bound (the real port for `:0`), then
//! nothing per request unless `RUST_LOG` asks for `debug` or `trace`.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use relay_lab::backend::{BackendConfig, serve, serve_echo};

/// HTTP/1.1 origin server of the lab: GET /bytes/N, POST|PUT /upload, GET
/// /health; or, with --echo, a TCP echo server.
#[derive(Debug, Parser)]
#[command(name = "lab-backend")]
struct Args {
    /// Address to listen on (port 0: any free port, printed once bound).
    #[arg(long)]
    listen: SocketAddr,
    /// Cut every response body after N bytes with an RST (SO_LINGER 0).
    #[arg(long, value_name = "N")]
    reset_after: Option<u64>,
    /// Connections served at once; more are answered 503 and closed.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Seconds a connection may stay idle or stalled.
    #[arg(long, default_value_t = 60)]
    idle_timeout: u64,
    /// No HTTP: echo every connection's bytes back to it.
    #[arg(long, conflicts_with_all = ["reset_after"])]
    echo: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let log_requests =
        std::env::var("RUST_LOG").is_ok_and(|v| v.contains("debug") || v.contains("trace"));
    let listener = match TcpListener::bind(args.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("lab-backend: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let bound = listener.local_addr().unwrap_or(args.listen);
    let mut stdout = std::io::stdout();
    if writeln!(stdout, "listening on {bound}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    if args.echo {
        return match serve_echo(listener, Duration::from_secs(args.idle_timeout.max(1))) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lab-backend: accept on {bound} failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let config = BackendConfig {
        max_connections: args.max_connections,
        reset_after: args.reset_after,
        idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
        log_requests,
    };
    match serve(listener, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab-backend: accept on {bound} failed: {e}");
            ExitCode::FAILURE
        }
    }
}
