//! Prints AF_XDP and kernel frame rates on a veth pair. See `relay_bench::datapath`.

fn main() -> anyhow::Result<()> {
    let seconds = std::env::args()
        .nth(1)
        .map(|s| s.parse::<f64>())
        .transpose()?
        .unwrap_or(3.0);
    relay_bench::datapath::run(std::time::Duration::from_secs_f64(seconds))
}
