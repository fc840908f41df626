//! The failover gap as the client sees it: the longest silence between two
//! data segments from the VIP in a packet capture taken at the client.

use std::path::Path;

use crate::{Lab, LabError, Node, addr};

/// The longest pause between consecutive data-carrying segments from the
/// VIP in `pcap` (read with tcpdump in `node`), in seconds, and the capture
/// time it ended at. `None` with fewer than two such segments.
pub fn largest_gap(lab: &Lab, node: Node, pcap: &Path) -> Result<Option<(f64, f64)>, LabError> {
    let filter = format!(
        "src host {} and src port {} and greater 100",
        addr::VIP,
        addr::VIP_PORT
    );
    let out = lab.exec(
        node,
        "tcpdump",
        &["-tt", "-n", "-r", &pcap.to_string_lossy(), &filter],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(gap_of(text.lines().filter_map(|l| {
        l.split_whitespace()
            .next()
            .and_then(|t| t.parse::<f64>().ok())
    })))
}

/// The largest difference between consecutive times, and the later time.
fn gap_of(times: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let mut last: Option<f64> = None;
    let mut best: Option<(f64, f64)> = None;
    for t in times {
        if let Some(prev) = last {
            let gap = t - prev;
            if best.is_none_or(|(g, _)| gap > g) {
                best = Some((gap, t));
            }
        }
        last = Some(t);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_pause_wins() {
        let times = [1.0, 1.1, 1.2, 1.9, 2.0];
        let (gap, at) = gap_of(times.into_iter()).unwrap();
        assert!((gap - 0.7).abs() < 1e-9);
        assert_eq!(at, 1.9);
        assert_eq!(gap_of([1.0].into_iter()), None);
    }
}
