//! Benchmarks that print figures. Each needs root: it builds its own
//! namespace with a veth pair and removes it afterwards.

pub mod datapath;
pub mod failover;
pub mod tls_compare;
