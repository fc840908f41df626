//! The control plane of the `relay` binary: the command line, the control
//! socket the CLI talks to (JSON lines over a Unix stream socket), and the
//! admin HTTP endpoint Prometheus scrapes.
//!
//! The datapath (workers, flows) is wired in by `relay-worker`; this crate
//! only carries requests to it through [`control::ControlHandler`] and
//! renders what it reports.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod control;
mod error;
pub mod pair;
pub mod peers;
pub mod run;

pub use error::Error;
