//! Congestion control: NewReno (RFC 5681, RFC 6582) and CUBIC (RFC 9438).
//!
//! Loss detection and recovery (which segments to resend, RFC 6675) live in
//! the connection; this module only sizes the congestion window.

use core::time::Duration;

use crate::time::Instant;

/// Which congestion controller a connection runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CongestionAlgorithm {
    /// RFC 5681 slow start and congestion avoidance with RFC 3465 byte
    /// counting; halve on loss.
    NewReno,
    /// RFC 9438, Linux's default: cubic growth around the last maximum,
    /// with its Reno-friendly region; multiply by 0.7 on loss.
    #[default]
    Cubic,
}

impl CongestionAlgorithm {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            CongestionAlgorithm::NewReno => 0,
            CongestionAlgorithm::Cubic => 1,
        }
    }

    pub(crate) fn from_u8(v: u8) -> Option<CongestionAlgorithm> {
        match v {
            0 => Some(CongestionAlgorithm::NewReno),
            1 => Some(CongestionAlgorithm::Cubic),
            _ => None,
        }
    }
}

/// RFC 9438 (4.6) multiplicative decrease factor.
const BETA_CUBIC: f64 = 0.7;
/// RFC 9438 (5) constant C, in segments per second cubed.
const C_CUBIC: f64 = 0.4;

#[derive(Debug, Clone)]
pub(crate) struct Congestion {
    pub(crate) algorithm: CongestionAlgorithm,
    /// Congestion window in bytes.
    pub(crate) cwnd: u32,
    /// Slow start threshold in bytes.
    pub(crate) ssthresh: u32,
    /// Bytes acknowledged in congestion avoidance not yet turned into growth.
    acc: u64,
    /// CUBIC: window before the last reduction, bytes (W_max).
    pub(crate) w_max: u32,
    /// CUBIC: start of the current congestion avoidance epoch.
    epoch_start: Option<Instant>,
    /// CUBIC: K, microseconds.
    k_us: u64,
    /// CUBIC: Reno-friendly estimate W_est, bytes (as f64 for fractions).
    w_est: f64,
}

impl Congestion {
    pub(crate) fn new(algorithm: CongestionAlgorithm, initial_window: u32) -> Congestion {
        Congestion {
            algorithm,
            cwnd: initial_window,
            ssthresh: u32::MAX,
            acc: 0,
            w_max: 0,
            epoch_start: None,
            k_us: 0,
            w_est: 0.0,
        }
    }

    /// Restores carried state (a checkpoint); the CUBIC epoch restarts.
    pub(crate) fn restore(&mut self, cwnd: u32, ssthresh: u32, w_max: u32) {
        self.cwnd = cwnd;
        self.ssthresh = ssthresh;
        self.w_max = w_max;
        self.epoch_start = None;
        self.acc = 0;
    }

    pub(crate) fn in_slow_start(&self) -> bool {
        self.cwnd < self.ssthresh
    }

    /// New data was cumulatively acknowledged outside loss recovery.
    pub(crate) fn on_ack(&mut self, now: Instant, acked: usize, mss: u32, srtt: Option<Duration>) {
        let acked = u32::try_from(acked).unwrap_or(u32::MAX);
        if self.in_slow_start() {
            // RFC 3465 (2.2) with L = 2 * SMSS.
            self.cwnd = self.cwnd.saturating_add(acked.min(2 * mss));
            if self.cwnd > self.ssthresh {
                self.cwnd = self.ssthresh.max(2 * mss);
            }
            return;
        }
        match self.algorithm {
            CongestionAlgorithm::NewReno => self.reno_grow(acked, mss),
            CongestionAlgorithm::Cubic => self.cubic_grow(now, acked, mss, srtt),
        }
    }

    /// RFC 5681 (3.1) equation 3 with byte counting: one SMSS per cwnd acked.
    fn reno_grow(&mut self, acked: u32, mss: u32) {
        self.acc += u64::from(acked);
        if self.acc >= u64::from(self.cwnd) {
            self.acc -= u64::from(self.cwnd);
            self.cwnd = self.cwnd.saturating_add(mss);
        }
    }

    fn cubic_grow(&mut self, now: Instant, acked: u32, mss: u32, srtt: Option<Duration>) {
        let mssf = f64::from(mss);
        let start = match self.epoch_start {
            Some(t) => t,
            None => {
                // RFC 9438 (4.2): a new epoch.
                self.epoch_start = Some(now);
                if self.cwnd < self.w_max {
                    let segs = f64::from(self.w_max - self.cwnd) / mssf;
                    self.k_us = ((segs / C_CUBIC).cbrt() * 1e6) as u64;
                } else {
                    self.k_us = 0;
                    self.w_max = self.cwnd;
                }
                self.w_est = f64::from(self.cwnd);
                self.acc = 0;
                now
            }
        };
        let rtt_us = srtt.map_or(100_000, |d| {
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
        });
        // RFC 9438 (4.2): the target is W_cubic(t + RTT), in segments.
        let t = (now.micros().saturating_sub(start.micros()) + rtt_us) as f64 / 1e6;
        let dt = t - self.k_us as f64 / 1e6;
        let w_max_segs = f64::from(self.w_max) / mssf;
        let w_cubic = C_CUBIC * dt * dt * dt + w_max_segs;
        let cwnd_segs = f64::from(self.cwnd) / mssf;
        // RFC 9438 (4.3): the Reno-friendly estimate grows by
        // alpha_cubic = 3 (1 - beta) / (1 + beta) segments per window.
        let alpha = 3.0 * (1.0 - BETA_CUBIC) / (1.0 + BETA_CUBIC);
        self.w_est += alpha * f64::from(acked) / cwnd_segs;
        if w_cubic * mssf < self.w_est {
            self.cwnd = (self.w_est as u32).max(self.cwnd);
            return;
        }
        // RFC 9438 (4.4), (4.5): grow by (target - cwnd) / cwnd per SMSS
        // acked, target clamped to [cwnd, 1.5 cwnd].
        let target = w_cubic.clamp(cwnd_segs, 1.5 * cwnd_segs);
        let inc = (target - cwnd_segs) / cwnd_segs * f64::from(acked);
        self.acc += inc as u64;
        let whole = self.acc;
        self.acc = 0;
        self.cwnd = self
            .cwnd
            .saturating_add(u32::try_from(whole).unwrap_or(u32::MAX));
    }

    fn reduce(&mut self, flight: u32, mss: u32) -> u32 {
        self.epoch_start = None;
        self.acc = 0;
        match self.algorithm {
            CongestionAlgorithm::NewReno => {
                // RFC 5681 (3.1) equation 4.
                (flight / 2).max(2 * mss)
            }
            CongestionAlgorithm::Cubic => {
                // RFC 9438 (4.7) fast convergence, then (4.6).
                let cwnd = self.cwnd;
                self.w_max = if cwnd < self.w_max {
                    (f64::from(cwnd) * (1.0 + BETA_CUBIC) / 2.0) as u32
                } else {
                    cwnd
                };
                ((f64::from(cwnd) * BETA_CUBIC) as u32).max(2 * mss)
            }
        }
    }

    /// Entering fast recovery (RFC 6675 (5) step 4.2, RFC 6582 (3.2) step 2).
    pub(crate) fn on_loss(&mut self, flight: u32, mss: u32) {
        self.ssthresh = self.reduce(flight, mss);
        self.cwnd = self.ssthresh;
    }

    /// A retransmission timeout (RFC 5681 (3.1), RFC 9438 (4.8)): ssthresh
    /// as for a loss, cwnd to the loss window of one segment.
    pub(crate) fn on_rto(&mut self, flight: u32, mss: u32) {
        self.ssthresh = self.reduce(flight, mss);
        self.cwnd = mss;
    }

    /// Leaving fast recovery: deflate to ssthresh (RFC 6582 (3.2) step 3).
    pub(crate) fn on_recovery_exit(&mut self) {
        self.cwnd = self.ssthresh.max(self.cwnd.min(self.ssthresh));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: u32 = 1000;

    #[test]
    fn reno_slow_start_then_linear() {
        let mut c = Congestion::new(CongestionAlgorithm::NewReno, 10 * MSS);
        let t = Instant::ZERO;
        c.on_ack(t, 5 * MSS as usize, MSS, None);
        assert_eq!(
            c.cwnd,
            12 * MSS,
            "slow start grows by at most 2 SMSS per ACK"
        );
        c.on_loss(12 * MSS, MSS);
        assert_eq!((c.cwnd, c.ssthresh), (6 * MSS, 6 * MSS));
        for _ in 0..6 {
            c.on_ack(t, MSS as usize, MSS, None);
        }
        assert_eq!(c.cwnd, 7 * MSS, "one SMSS per window in avoidance");
        c.on_rto(7 * MSS, MSS);
        assert_eq!((c.cwnd, c.ssthresh), (MSS, 3500));
        c.on_loss(MSS, MSS);
        assert_eq!(c.ssthresh, 2 * MSS, "never below 2 SMSS");
    }

    #[test]
    fn cubic_is_reno_friendly_at_short_rtt() {
        let mut c = Congestion::new(CongestionAlgorithm::Cubic, 100 * MSS);
        c.ssthresh = 100 * MSS;
        c.on_loss(100 * MSS, MSS);
        let rtt = Duration::from_millis(10);
        let mut now = Instant::ZERO;
        for _ in 0..100 {
            for _ in 0..(c.cwnd / MSS) {
                c.on_ack(now, MSS as usize, MSS, Some(rtt));
            }
            now += rtt;
        }
        // 100 RTTs at alpha = 0.53 segments per RTT: about 70 + 53.
        assert!(c.cwnd > 115 * MSS && c.cwnd < 130 * MSS, "cwnd {}", c.cwnd);
    }

    #[test]
    fn cubic_reduces_by_beta_and_regrows_to_w_max() {
        let mut c = Congestion::new(CongestionAlgorithm::Cubic, 100 * MSS);
        c.ssthresh = 100 * MSS;
        c.on_loss(100 * MSS, MSS);
        assert_eq!(c.cwnd, 70 * MSS);
        assert_eq!(c.w_max, 100 * MSS);
        // A long RTT, so that the cubic curve (not the Reno-friendly
        // estimate) drives growth: about K = cbrt(30 / 0.4) = 4.2 s to get
        // back to W_max, then slowly past it.
        let rtt = Duration::from_millis(200);
        let mut now = Instant::ZERO;
        for _ in 0..30 {
            for _ in 0..(c.cwnd / MSS) {
                c.on_ack(now, MSS as usize, MSS, Some(rtt));
            }
            now += rtt;
        }
        assert!(c.cwnd >= 99 * MSS && c.cwnd < 120 * MSS, "cwnd {}", c.cwnd);
        // Fast convergence: a loss below W_max lowers W_max further.
        let before = c.cwnd;
        c.w_max = before + 10 * MSS;
        c.on_loss(before, MSS);
        assert!(c.w_max < before);
    }
}
