//! Round-trip time estimation and the retransmission timeout (RFC 6298).

use core::time::Duration;

/// RFC 6298 (2.4) says the RTO should be rounded up to 1 s. Linux uses
/// 200 ms (`TCP_RTO_MIN`) and so do we: relays sit close to their peers, and
/// with timestamps every ACK gives a sample, so spurious timeouts are rare.
pub const DEFAULT_RTO_MIN: Duration = Duration::from_millis(200);
/// RFC 6298 (2.1): 1 s before the first sample.
pub const DEFAULT_RTO_INITIAL: Duration = Duration::from_secs(1);
/// RFC 6298 (2.5) allows a ceiling of at least 60 s; Linux uses 120 s.
pub const DEFAULT_RTO_MAX: Duration = Duration::from_secs(120);
/// Clock granularity G of RFC 6298 (2): our clock is in microseconds, but
/// timestamp samples are in milliseconds.
const GRANULARITY_US: u64 = 1000;

#[derive(Debug, Clone)]
pub(crate) struct RttEstimator {
    /// Smoothed RTT in microseconds, once there is a sample.
    pub(crate) srtt_us: Option<u64>,
    /// RTT variation in microseconds.
    pub(crate) rttvar_us: u64,
    /// Current RTO (before backoff), microseconds.
    rto_us: u64,
    /// Number of consecutive backoffs (RFC 6298 (5.5)).
    pub(crate) backoff: u32,
    min_us: u64,
    max_us: u64,
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl RttEstimator {
    pub(crate) fn new(initial: Duration, min: Duration, max: Duration) -> RttEstimator {
        RttEstimator {
            srtt_us: None,
            rttvar_us: 0,
            rto_us: us(initial).clamp(us(min), us(max)),
            backoff: 0,
            min_us: us(min),
            max_us: us(max),
        }
    }

    /// Restores an estimator from carried state (a checkpoint).
    pub(crate) fn restore(&mut self, srtt_us: u64, rttvar_us: u64) {
        if srtt_us > 0 {
            self.srtt_us = Some(srtt_us);
            self.rttvar_us = rttvar_us;
            self.recompute();
        }
    }

    fn recompute(&mut self) {
        if let Some(srtt) = self.srtt_us {
            let rto = srtt.saturating_add(GRANULARITY_US.max(self.rttvar_us.saturating_mul(4)));
            self.rto_us = rto.clamp(self.min_us, self.max_us);
        }
    }

    /// RFC 6298 (2.2), (2.3): folds in a new measurement.
    pub(crate) fn sample(&mut self, rtt: Duration) {
        let r = us(rtt);
        match self.srtt_us {
            None => {
                self.srtt_us = Some(r);
                self.rttvar_us = r / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(r);
                self.rttvar_us = (3 * self.rttvar_us + diff) / 4;
                self.srtt_us = Some((7 * srtt + r) / 8);
            }
        }
        // RFC 6298 (5.7): a fresh sample ends the backoff.
        self.backoff = 0;
        self.recompute();
    }

    /// The timeout to arm now: the RTO doubled per backoff (RFC 6298 (5.5)),
    /// capped at the maximum.
    pub(crate) fn rto(&self) -> Duration {
        let shifted = self
            .rto_us
            .checked_shl(self.backoff.min(32))
            .unwrap_or(u64::MAX);
        Duration::from_micros(shifted.min(self.max_us))
    }

    /// The RTO before backoff.
    pub(crate) fn base_rto(&self) -> Duration {
        Duration::from_micros(self.rto_us)
    }

    pub(crate) fn on_timeout(&mut self) {
        self.backoff = self.backoff.saturating_add(1);
    }

    pub(crate) fn srtt(&self) -> Option<Duration> {
        self.srtt_us.map(Duration::from_micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est() -> RttEstimator {
        RttEstimator::new(DEFAULT_RTO_INITIAL, DEFAULT_RTO_MIN, DEFAULT_RTO_MAX)
    }

    #[test]
    fn initial_rto_then_samples() {
        let mut e = est();
        assert_eq!(e.rto(), Duration::from_secs(1));
        e.sample(Duration::from_millis(100));
        // SRTT = 100, RTTVAR = 50, RTO = 100 + 4 * 50 = 300.
        assert_eq!(e.rto(), Duration::from_millis(300));
        e.sample(Duration::from_millis(100));
        // RTTVAR = 37.5, SRTT = 100, RTO = 250.
        assert_eq!(e.rto(), Duration::from_micros(250_000));
        for _ in 0..50 {
            e.sample(Duration::from_millis(1));
        }
        assert_eq!(e.rto(), DEFAULT_RTO_MIN);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let mut e = est();
        e.on_timeout();
        assert_eq!(e.rto(), Duration::from_secs(2));
        for _ in 0..40 {
            e.on_timeout();
        }
        assert_eq!(e.rto(), DEFAULT_RTO_MAX);
        e.sample(Duration::from_millis(10));
        assert_eq!(e.backoff, 0);
        assert_eq!(e.base_rto(), DEFAULT_RTO_MIN);
    }
}
