//! Prints the failover gap of a relay pair (1 and 1000 flows), bulk MB/s
//! with and without replication, and commit latency, in the lab. See
//! `relay_bench::failover`; FAILOVER_ROUNDS and FAILOVER_ROUNDS_1000 set
//! the rounds.

fn main() -> anyhow::Result<()> {
    relay_bench::failover::run()
}
