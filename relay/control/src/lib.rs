//! Control-plane pieces of the relay that do no I/O of their own: the TOML
//! configuration with validation that names the bad field and line, and a
//! Prometheus registry that is a value, not a global, so that two relays
//! can run in one test process.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod backends;
pub mod config;
pub mod metrics;

pub use config::{Config, ConfigError};
pub use metrics::Registry;
