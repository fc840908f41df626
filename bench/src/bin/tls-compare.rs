//! Prints TLS termination figures of the relay, nginx and haproxy in the lab. See `relay_bench::tls_compare`.

fn main() -> anyhow::Result<()> {
    let seconds = std::env::args()
        .nth(1)
        .map(|s| s.parse::<u32>())
        .transpose()?
        .unwrap_or(5);
    relay_bench::tls_compare::run_compare(seconds)
}
