//! `relay`: runs the TLS relay, and asks a running relay how it does.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use relay_app::cli::{self, Cli, Command};
use relay_app::control::{ControlClient, Request, Response, parse_reply};
use relay_control::config::Config;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay: {e:#}");
            if let Some(relay_app::Error::NotRunning { .. }) = e.downcast_ref() {
                eprintln!(
                    "relay: start one with `relay run --config FILE`, or name its socket with --control PATH"
                );
            }
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by RUST_LOG (default `info`).
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn execute(cli: Cli) -> anyhow::Result<()> {
    let socket = cli.control_socket();
    match cli.command {
        Command::Run { config, check } => run(&config, check, cli.control),
        Command::Status { json: true } => print_raw(&socket, Request::Status),
        Command::Status { json: false } => {
            print!("{}", cli::format_status(&connect(&socket)?.status()?));
            Ok(())
        }
        Command::Flows { json: true } => print_raw(&socket, Request::Flows),
        Command::Flows { json: false } => {
            print!("{}", cli::format_flows(&connect(&socket)?.flows()?));
            Ok(())
        }
        Command::Peers { json: true } => print_raw(&socket, Request::Peers),
        Command::Peers { json: false } => {
            print!("{}", cli::format_peers(&connect(&socket)?.peers()?));
            Ok(())
        }
        Command::Drain => {
            println!("{}", connect(&socket)?.drain()?);
            Ok(())
        }
        Command::Handoff => {
            println!("{}", connect(&socket)?.handoff()?);
            Ok(())
        }
        Command::Takeover => {
            println!("{}", connect(&socket)?.takeover()?);
            Ok(())
        }
        Command::Reload => {
            print!("{}", cli::format_reload(&connect(&socket)?.reload()?));
            Ok(())
        }
    }
}

fn connect(socket: &Path) -> anyhow::Result<ControlClient> {
    Ok(ControlClient::connect(socket)?)
}

/// `--json`: the reply line as the relay sent it, unless it is a refusal.
fn print_raw(socket: &Path, request: Request) -> anyhow::Result<()> {
    let line = connect(socket)?.request_raw(&request)?;
    if let Response::Error(e) = parse_reply(&line)? {
        return Err(relay_app::Error::Refused(e).into());
    }
    println!("{line}");
    Ok(())
}

/// `relay run`: validate the configuration (certificate files included);
/// with `check` print its summary, otherwise run the relay.
fn run(path: &Path, check: bool, control: Option<PathBuf>) -> anyhow::Result<()> {
    let mut config = Config::load(path)?;
    config.validate(path, true)?;
    if check {
        println!("config OK: {}", cli::config_summary(&config));
        return Ok(());
    }
    if let Some(control) = control {
        config.control_socket = control;
    }
    relay_app::run::run(config, path)
        .with_context(|| format!("running the relay configured by {}", path.display()))
}
