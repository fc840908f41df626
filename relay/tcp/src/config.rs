//! Per-connection settings.

use core::time::Duration;

use crate::cc::CongestionAlgorithm;
use crate::error::Error;
use crate::rtt::{DEFAULT_RTO_INITIAL, DEFAULT_RTO_MAX, DEFAULT_RTO_MIN};

/// How far the engine may cumulatively ACK received bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReleaseMode {
    /// Only as far as the application says with
    /// [`Connection::release_to`](crate::Connection::release_to): the relay's
    /// ACK-after-replication rule (DESIGN.md section 3).
    #[default]
    Manual,
    /// Everything delivered is released at once: an ordinary TCP.
    OnDelivery,
}

/// Keepalive probing (RFC 9293 (3.8.4), RFC 1122 (4.2.3.6)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe (RFC 1122: no less than 2 hours by
    /// default; Linux `tcp_keepalive_time`).
    pub idle: Duration,
    /// Time between unanswered probes.
    pub interval: Duration,
    /// Unanswered probes after which the connection times out.
    pub probes: u32,
}

/// Settings of one connection. `Config::default()` is a Linux-like TCP.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// MSS we announce and the largest payload we send with a bare 20-byte
    /// header, from the caller's MTU (MTU - 40 for IPv4). Options reduce the
    /// payload (RFC 6691).
    pub mss: u16,
    /// Send buffer size in bytes: bytes from `snd_una` the application may
    /// queue.
    pub send_buffer: usize,
    /// Receive buffer in bytes: what the advertised window counts against,
    /// from the release point (or the read point if earlier).
    pub recv_buffer: usize,
    /// Offer window scaling (RFC 7323 (2)).
    pub window_scaling: bool,
    /// Offer SACK (RFC 2018).
    pub sack: bool,
    /// Offer timestamps (RFC 7323 (3)).
    pub timestamps: bool,
    /// Disable Nagle's algorithm (RFC 9293 (3.7.4)): send small segments at
    /// once. The relay sends whole TLS records, so this is on by default.
    pub nodelay: bool,
    /// Release point policy.
    pub release: ReleaseMode,
    /// Congestion controller.
    pub congestion: CongestionAlgorithm,
    /// Initial window in segments (RFC 6928: 10).
    pub initial_window: u32,
    /// Lower bound of the RTO; see [`DEFAULT_RTO_MIN`] for why 200 ms.
    pub rto_min: Duration,
    /// RTO before the first RTT sample.
    pub rto_initial: Duration,
    /// Upper bound of the backed-off RTO.
    pub rto_max: Duration,
    /// Delayed ACK timeout (RFC 9293 (3.8.6.3): under 0.5 s; Linux's
    /// minimum is 40 ms). `None` acknowledges every segment at once.
    pub delayed_ack: Option<Duration>,
    /// Retransmissions of a SYN or SYN-ACK before giving up (Linux
    /// `tcp_syn_retries` is 6).
    pub syn_retries: u32,
    /// Consecutive retransmission timeouts of data before giving up
    /// (Linux `tcp_retries2` is 15).
    pub max_retries: u32,
    /// Keepalive, off by default as RFC 1122 requires.
    pub keepalive: Option<Keepalive>,
    /// TIME-WAIT duration, 2 * MSL (Linux: 60 s).
    pub time_wait: Duration,
    /// Challenge ACKs (RFC 5961 (7)) per second per connection.
    pub challenge_ack_limit: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            mss: 1460,
            send_buffer: 256 * 1024,
            recv_buffer: 256 * 1024,
            window_scaling: true,
            sack: true,
            timestamps: true,
            nodelay: true,
            release: ReleaseMode::Manual,
            congestion: CongestionAlgorithm::Cubic,
            initial_window: 10,
            rto_min: DEFAULT_RTO_MIN,
            rto_initial: DEFAULT_RTO_INITIAL,
            rto_max: DEFAULT_RTO_MAX,
            delayed_ack: Some(Duration::from_millis(40)),
            syn_retries: 6,
            max_retries: 15,
            keepalive: None,
            time_wait: Duration::from_secs(60),
            challenge_ack_limit: 10,
        }
    }
}

/// Largest receive buffer: the window must stay below 2^30 (RFC 7323 (2.3)).
pub const MAX_RECV_BUFFER: usize = 1 << 30;

impl Config {
    /// Checks the settings, naming the first bad field.
    pub fn validate(&self) -> Result<(), Error> {
        if self.mss < 64 {
            return Err(Error::InvalidConfig("mss: below 64"));
        }
        if self.send_buffer == 0 || self.send_buffer > MAX_RECV_BUFFER {
            return Err(Error::InvalidConfig("send_buffer: must be 1..=2^30"));
        }
        if self.recv_buffer < usize::from(self.mss) || self.recv_buffer > MAX_RECV_BUFFER {
            return Err(Error::InvalidConfig("recv_buffer: must be mss..=2^30"));
        }
        if !self.window_scaling && self.recv_buffer > 65535 {
            return Err(Error::InvalidConfig(
                "recv_buffer: above 65535 needs window_scaling",
            ));
        }
        if self.initial_window == 0 {
            return Err(Error::InvalidConfig("initial_window: zero"));
        }
        if self.rto_min.is_zero() || self.rto_min > self.rto_max {
            return Err(Error::InvalidConfig("rto_min: zero or above rto_max"));
        }
        if let Some(k) = self.keepalive
            && (k.idle.is_zero() || k.interval.is_zero() || k.probes == 0)
        {
            return Err(Error::InvalidConfig(
                "keepalive: zero idle, interval or probes",
            ));
        }
        Ok(())
    }

    /// The window scale shift we offer: the smallest that lets the whole
    /// receive buffer be advertised (RFC 7323 (2.3), at most 14).
    pub fn window_shift(&self) -> u8 {
        if !self.window_scaling {
            return 0;
        }
        let mut shift = 0u8;
        while shift < 14 && (self.recv_buffer >> shift) > 65535 {
            shift += 1;
        }
        shift
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        Config::default().validate().unwrap();
        assert_eq!(Config::default().window_shift(), 3);
    }

    #[test]
    fn bad_fields_are_named() {
        let c = Config {
            mss: 10,
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(Error::InvalidConfig("mss: below 64")));
        let c = Config {
            window_scaling: false,
            ..Config::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("recv_buffer")
        );
        let c = Config {
            recv_buffer: 1 << 30,
            ..Config::default()
        };
        assert_eq!(c.window_shift(), 14);
    }
}
