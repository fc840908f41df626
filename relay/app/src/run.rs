//! `relay run`: the relay itself.

use std::path::Path;

use relay_control::config::Config;

/// Runs the relay described by `config` (read from `path`, already
/// validated) until it is drained or stopped.
pub fn run(config: Config, path: &Path) -> anyhow::Result<()> {
    let _ = (config, path);
    anyhow::bail!("the datapath is wired in by relay-worker")
}
