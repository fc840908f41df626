//! `cargo bench -p relay-bench`: the datapath figures (needs root).

fn main() -> anyhow::Result<()> {
    relay_bench::datapath::run(std::time::Duration::from_secs(2))
}
