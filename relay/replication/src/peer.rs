//! Membership: is a peer relay alive? Heartbeats over the backplane, plus
//! a second path (the caller hears the peer over the front network), so
//! that a cut backplane alone never makes both relays serve one VIP.

use core::time::Duration;
use std::collections::VecDeque;

use relay_tcp::Instant;

use crate::error::Error;
use crate::message::{Echo, Heartbeat};

/// Membership timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Heartbeat interval over the backplane.
    pub interval: Duration,
    /// Intervals of silence on both paths after which the peer is down.
    pub misses: u32,
}

impl Default for PeerConfig {
    /// 20 ms and 5 misses: a dead peer is declared within 100 ms.
    fn default() -> Self {
        PeerConfig {
            interval: Duration::from_millis(20),
            misses: 5,
        }
    }
}

impl PeerConfig {
    /// Checks the timing, naming the bad field.
    pub fn validate(&self) -> Result<(), Error> {
        if self.interval < Duration::from_millis(1) {
            return Err(Error::InvalidConfig("interval must be at least 1 ms"));
        }
        if self.misses < 2 {
            return Err(Error::InvalidConfig("misses must be at least 2"));
        }
        Ok(())
    }

    /// Silence on both paths after which the peer is down.
    pub fn dead_after(&self) -> Duration {
        self.interval.saturating_mul(self.misses)
    }

    /// Backplane silence after which the peer is suspect (one heartbeat
    /// late), never later than `dead_after`.
    pub fn suspect_after(&self) -> Duration {
        self.interval.saturating_mul(2).min(self.dead_after())
    }
}

/// What the relay believes about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Nothing heard over the backplane since this relay started.
    Connecting,
    /// Heartbeats arrive over the backplane.
    Up,
    /// Backplane heartbeats are late, but one path was heard within
    /// `dead_after`: not down (a cut backplane alone is never a death).
    Suspect,
    /// The backplane silent for `dead_after`, the front network not: the
    /// peer is alive but cannot be reached. Nobody takes anything over;
    /// flows commit locally (unprotected) until the backplane returns.
    Cut,
    /// Both paths silent for `dead_after`: take over its services. Only a
    /// backplane heartbeat brings it back.
    Down,
}

/// What the caller must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    /// The peer came up (first heartbeat, or back from down).
    PeerUp,
    /// The peer is down: adopt its flows, take its services.
    PeerDown,
    /// The peer is alive (heard over the front network) but the backplane
    /// is lost: stop waiting for its acknowledgements; take nothing over.
    BackplaneLost,
    /// Send this heartbeat on the backplane (if connected).
    SendHeartbeat(Heartbeat),
}

/// Smoothed round-trip time, RFC 6298 (2.2)/(2.3) arithmetic on heartbeat
/// echoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rtt {
    /// Smoothed RTT.
    pub srtt: Duration,
    /// RTT variation.
    pub rttvar: Duration,
    /// The latest sample.
    pub latest: Duration,
}

impl Rtt {
    fn sample(prev: Option<Rtt>, r: Duration) -> Rtt {
        match prev {
            None => Rtt {
                srtt: r,
                rttvar: r / 2,
                latest: r,
            },
            Some(p) => {
                let diff = p.srtt.abs_diff(r);
                Rtt {
                    rttvar: (p.rttvar * 3 + diff) / 4,
                    srtt: (p.srtt * 7 + r) / 8,
                    latest: r,
                }
            }
        }
    }
}

/// The last heartbeat received, to echo.
#[derive(Debug, Clone, Copy)]
struct Received {
    seq: u64,
    sent_at: Instant,
    at: Instant,
}

/// Liveness of one peer relay, driven by an explicit clock.
///
/// Calling order:
///
/// 1. [`handle_heartbeat`](Self::handle_heartbeat) for each heartbeat
///    from the peer's backplane connection;
///    [`handle_front_heard`](Self::handle_front_heard) whenever the peer
///    is heard over the front network (the second path; e.g. its VRRP
///    adverts or ARP replies).
/// 2. [`poll_timeout`](Self::poll_timeout): when to call
///    [`handle_timeout`](Self::handle_timeout) next.
/// 3. [`poll_event`](Self::poll_event) until `None`: send the heartbeats,
///    act on [`PeerEvent::PeerUp`] / [`PeerEvent::PeerDown`].
#[derive(Debug)]
pub struct Peer {
    cfg: PeerConfig,
    state: PeerState,
    /// When this relay started watching (stands in for "last heard" before
    /// anything was heard).
    started: Instant,
    heard_backplane: Option<Instant>,
    heard_front: Option<Instant>,
    next_heartbeat: Instant,
    sent_seq: u64,
    received: Option<Received>,
    /// Highest echo used for an RTT sample (each is used once).
    echo_seq: u64,
    rtt: Option<Rtt>,
    events: VecDeque<PeerEvent>,
}

impl Peer {
    /// Starts watching a peer at `now`; the first heartbeat is due at once.
    pub fn new(cfg: PeerConfig, now: Instant) -> Result<Self, Error> {
        cfg.validate()?;
        Ok(Peer {
            cfg,
            state: PeerState::Connecting,
            started: now,
            heard_backplane: None,
            heard_front: None,
            next_heartbeat: now,
            sent_seq: 0,
            received: None,
            echo_seq: 0,
            rtt: None,
            events: VecDeque::new(),
        })
    }

    /// The current belief.
    pub fn state(&self) -> PeerState {
        self.state
    }

    /// The round-trip estimate, once a heartbeat echo came back.
    pub fn rtt(&self) -> Option<Rtt> {
        self.rtt
    }

    /// When the peer was last heard over the backplane.
    pub fn heard_backplane(&self) -> Option<Instant> {
        self.heard_backplane
    }

    /// When the peer was last heard on either path.
    pub fn heard(&self) -> Option<Instant> {
        self.heard_backplane.max(self.heard_front)
    }

    /// A heartbeat arrived over the backplane.
    pub fn handle_heartbeat(&mut self, now: Instant, hb: &Heartbeat) {
        self.heard_backplane = Some(now);
        self.received = Some(Received {
            seq: hb.seq,
            sent_at: hb.sent_at,
            at: now,
        });
        if let Some(echo) = hb.echo
            && echo.seq > self.echo_seq
            && echo.seq <= self.sent_seq
            && echo.sent_at <= now
        {
            self.echo_seq = echo.seq;
            // On our clock only: sent_at is ours, delay is the peer's hold.
            let r = (now - echo.sent_at).saturating_sub(echo.delay);
            self.rtt = Some(Rtt::sample(self.rtt, r));
        }
        self.evaluate(now);
    }

    /// A datagram heartbeat came over the backplane link: the link is up,
    /// whatever the state of the TCP stream beside it (a lossy link stalls
    /// that stream for retransmission timeouts).
    pub fn handle_backplane_beat(&mut self, now: Instant) {
        self.heard_backplane = Some(now);
        self.evaluate(now);
    }

    /// The peer was heard over the front network (second path).
    pub fn handle_front_heard(&mut self, now: Instant) {
        self.heard_front = Some(now);
        self.evaluate(now);
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Instant {
        let mut at = self.next_heartbeat;
        let bp = self.heard_backplane.unwrap_or(self.started);
        let front = self.heard_front.unwrap_or(self.started);
        // The instant the state would change if nothing is heard: Up turns
        // Suspect, Connecting and Suspect turn Down.
        let change = match self.state {
            PeerState::Up => Some(bp + self.cfg.suspect_after()),
            // Cut at `bp + dead` if the front is fresh then, else down.
            PeerState::Suspect => {
                let cut_at = bp + self.cfg.dead_after();
                if front + self.cfg.suspect_after() > cut_at {
                    Some(cut_at)
                } else {
                    Some(bp.max(front) + self.cfg.dead_after())
                }
            }
            PeerState::Connecting | PeerState::Cut => Some(bp.max(front) + self.cfg.dead_after()),
            PeerState::Down => None,
        };
        if let Some(c) = change {
            at = at.min(c);
        }
        at
    }

    /// Time passed: send a heartbeat if due, re-evaluate the peer.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_heartbeat {
            self.sent_seq += 1;
            let hb = Heartbeat {
                seq: self.sent_seq,
                sent_at: now,
                echo: self.received.map(|r| Echo {
                    seq: r.seq,
                    sent_at: r.sent_at,
                    delay: now - r.at,
                }),
            };
            // A heartbeat not yet taken is stale: keep only the newest.
            self.events
                .retain(|e| !matches!(e, PeerEvent::SendHeartbeat(_)));
            self.events.push_back(PeerEvent::SendHeartbeat(hb));
            // Late calls do not cause a burst: the next one is an interval away.
            let next = self.next_heartbeat + self.cfg.interval;
            self.next_heartbeat = if next > now {
                next
            } else {
                now + self.cfg.interval
            };
        }
        self.evaluate(now);
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    fn evaluate(&mut self, now: Instant) {
        let since = |t: Option<Instant>| now - t.unwrap_or(self.started);
        let bp_silent = since(self.heard_backplane);
        let front_silent = since(self.heard_front);
        let dead = self.cfg.dead_after();
        let both_silent = bp_silent >= dead && front_silent >= dead;
        let bp_fresh = self.heard_backplane.is_some() && bp_silent < self.cfg.suspect_after();
        let front_fresh = self.heard_front.is_some() && front_silent < self.cfg.suspect_after();
        let next = match self.state {
            PeerState::Down if bp_fresh => PeerState::Up,
            PeerState::Down => PeerState::Down,
            _ if both_silent => PeerState::Down,
            _ if bp_fresh => PeerState::Up,
            PeerState::Connecting => PeerState::Connecting,
            // A dying relay falls silent on both paths within an interval
            // or so: only a front still fresh when the backplane is given
            // up means a cut, not a death about to be declared.
            PeerState::Up | PeerState::Suspect if bp_silent >= dead && front_fresh => {
                PeerState::Cut
            }
            PeerState::Cut => PeerState::Cut,
            PeerState::Up | PeerState::Suspect => PeerState::Suspect,
        };
        if next == self.state {
            return;
        }
        tracing::info!(from = ?self.state, to = ?next, "peer state");
        match (self.state, next) {
            (PeerState::Connecting | PeerState::Down | PeerState::Cut, PeerState::Up) => {
                self.events.push_back(PeerEvent::PeerUp)
            }
            (_, PeerState::Cut) => self.events.push_back(PeerEvent::BackplaneLost),
            (_, PeerState::Down) => self.events.push_back(PeerEvent::PeerDown),
            _ => {}
        }
        self.state = next;
    }
}

#[cfg(test)]
#[path = "peer_tests.rs"]
mod tests;
