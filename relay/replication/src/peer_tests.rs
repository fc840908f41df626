use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn at(n: u64) -> Instant {
    Instant::from_millis(n)
}

/// A peer watched by a relay, in virtual time, stepped a millisecond at a
/// time; `handle_timeout` is called only when `poll_timeout` asks for it,
/// so a wrong timeout shows as a late transition.
struct Watch {
    peer: Peer,
    now: Instant,
    /// (time, event) of everything but heartbeats to send.
    log: Vec<(Instant, PeerEvent)>,
    heartbeats_sent: u64,
}

impl Watch {
    fn new() -> Self {
        Watch {
            peer: Peer::new(PeerConfig::default(), Instant::ZERO).unwrap(),
            now: Instant::ZERO,
            log: Vec::new(),
            heartbeats_sent: 0,
        }
    }

    /// Runs to `until`; `backplane` and `front` say whether each path
    /// delivers at a given millisecond (the peer sends every 20 ms).
    fn run(&mut self, until: u64, backplane: impl Fn(u64) -> bool, front: impl Fn(u64) -> bool) {
        while self.now < at(until) {
            self.now += ms(1);
            let t = self.now.millis();
            if t.is_multiple_of(20) && backplane(t) {
                let hb = Heartbeat {
                    seq: t / 20,
                    sent_at: Instant::from_millis(t + 5000),
                    echo: None,
                };
                self.peer.handle_heartbeat(self.now, &hb);
            }
            if t % 20 == 10 && front(t) {
                self.peer.handle_front_heard(self.now);
            }
            if self.now >= self.peer.poll_timeout() {
                self.peer.handle_timeout(self.now);
            }
            while let Some(e) = self.peer.poll_event() {
                match e {
                    PeerEvent::SendHeartbeat(_) => self.heartbeats_sent += 1,
                    e => self.log.push((self.now, e)),
                }
            }
        }
    }
}

#[test]
fn defaults_and_validation() {
    let cfg = PeerConfig::default();
    assert_eq!((cfg.interval, cfg.misses), (ms(20), 5));
    assert_eq!(cfg.dead_after(), ms(100));
    assert_eq!(cfg.suspect_after(), ms(40));
    assert!(
        PeerConfig {
            misses: 1,
            ..cfg.clone()
        }
        .validate()
        .is_err()
    );
    assert!(
        PeerConfig {
            interval: Duration::ZERO,
            ..cfg
        }
        .validate()
        .is_err()
    );
}

#[test]
fn heartbeats_go_out_every_interval() {
    let mut w = Watch::new();
    w.run(1000, |_| true, |_| true);
    // At 1 ms (the first call), then every 20 ms up to 1000 ms.
    assert_eq!(w.heartbeats_sent, 51);
    assert_eq!(w.peer.state(), PeerState::Up);
    assert_eq!(w.log, [(at(20), PeerEvent::PeerUp)]);
}

#[test]
fn losing_one_path_never_makes_the_peer_down() {
    // Backplane cut at 200 ms, front still heard.
    let mut w = Watch::new();
    w.run(2000, |t| t < 200, |_| true);
    assert_eq!(w.peer.state(), PeerState::Cut);
    assert_eq!(
        w.log,
        [
            (at(20), PeerEvent::PeerUp),
            (at(280), PeerEvent::BackplaneLost)
        ],
        "cut 100 ms after the last backplane heartbeat, never down"
    );
    // Front silent, backplane fine.
    let mut w = Watch::new();
    w.run(2000, |_| true, |_| false);
    assert_eq!(w.peer.state(), PeerState::Up);
    assert_eq!(w.log, [(at(20), PeerEvent::PeerUp)]);
}

#[test]
fn losing_both_paths_makes_it_down_after_interval_times_misses() {
    let mut w = Watch::new();
    // Last backplane heartbeat at 180 ms, last front at 190 ms.
    w.run(400, |t| t < 200, |t| t < 200);
    assert_eq!(w.peer.state(), PeerState::Down);
    assert_eq!(
        w.log,
        [(at(20), PeerEvent::PeerUp), (at(290), PeerEvent::PeerDown)],
        "down exactly 100 ms after the last sign of life"
    );
    // It comes back with a backplane heartbeat only.
    w.run(500, |t| t >= 460, |_| true);
    assert_eq!(w.peer.state(), PeerState::Up);
    assert_eq!(w.log.last(), Some(&(at(460), PeerEvent::PeerUp)));
}

#[test]
fn suspect_after_two_intervals_of_backplane_silence() {
    let mut w = Watch::new();
    w.run(250, |t| t < 200, |_| true);
    // 180 ms was the last heartbeat; suspect at 220 ms.
    let mut w2 = Watch::new();
    w2.run(219, |t| t < 200, |_| true);
    assert_eq!(w2.peer.state(), PeerState::Up);
    w2.run(220, |t| t < 200, |_| true);
    assert_eq!(w2.peer.state(), PeerState::Suspect);
    assert_eq!(w.peer.state(), PeerState::Suspect);
}

#[test]
fn a_peer_never_heard_is_down_after_the_deadline_unless_the_front_hears_it() {
    let mut w = Watch::new();
    w.run(300, |_| false, |_| false);
    assert_eq!(w.log, [(at(100), PeerEvent::PeerDown)]);
    let mut w = Watch::new();
    w.run(300, |_| false, |_| true);
    assert_eq!(w.peer.state(), PeerState::Connecting);
    assert!(w.log.is_empty());
}

#[test]
fn rtt_comes_from_echoes_on_our_own_clock() {
    let mut p = Peer::new(PeerConfig::default(), at(0)).unwrap();
    p.handle_timeout(at(0));
    let Some(PeerEvent::SendHeartbeat(hb)) = p.poll_event() else {
        panic!("no heartbeat");
    };
    assert_eq!((hb.seq, hb.sent_at, hb.echo), (1, at(0), None));
    // The peer held ours 4 ms before echoing it; it arrives at 10 ms.
    let echo = |seq, sent_at, delay| Heartbeat {
        seq: 77,
        sent_at: Instant::from_micros(999_999_999),
        echo: Some(Echo {
            seq,
            sent_at,
            delay,
        }),
    };
    p.handle_heartbeat(at(10), &echo(1, at(0), ms(4)));
    let rtt = p.rtt().unwrap();
    assert_eq!((rtt.srtt, rtt.rttvar, rtt.latest), (ms(6), ms(3), ms(6)));
    // Echoes of heartbeats never sent, sent in the future, or used
    // already do not count.
    p.handle_heartbeat(at(11), &echo(2, at(0), ms(0)));
    p.handle_heartbeat(at(12), &echo(1, at(0), ms(0)));
    assert_eq!(p.rtt().unwrap().latest, ms(6));
    // Our next heartbeat echoes theirs with how long we held it.
    p.handle_timeout(at(20));
    assert_eq!(p.poll_event(), Some(PeerEvent::PeerUp));
    let Some(PeerEvent::SendHeartbeat(hb)) = p.poll_event() else {
        panic!("no heartbeat");
    };
    assert_eq!(
        hb.echo,
        Some(Echo {
            seq: 77,
            sent_at: Instant::from_micros(999_999_999),
            delay: ms(8)
        })
    );
    // A second sample is smoothed (RFC 6298 (2.3)).
    p.handle_heartbeat(at(34), &echo(2, at(20), ms(2)));
    let rtt = p.rtt().unwrap();
    assert_eq!(rtt.latest, ms(12));
    assert_eq!(rtt.srtt, (ms(6) * 7 + ms(12)) / 8);
    assert_eq!(rtt.rttvar, (ms(3) * 3 + ms(6)) / 4);
}

#[test]
fn two_peers_measure_their_round_trip() {
    // Each sends to the other with a 3 ms one-way delay.
    let cfg = PeerConfig::default();
    let mut a = Peer::new(cfg.clone(), at(0)).unwrap();
    let mut b = Peer::new(cfg, at(7)).unwrap();
    let mut wire: Vec<(Instant, bool, Heartbeat)> = Vec::new();
    let mut now = at(0);
    while now < at(500) {
        now += ms(1);
        let (due, later): (Vec<_>, Vec<_>) = wire.drain(..).partition(|(t, _, _)| *t <= now);
        wire = later;
        for (_, to_a, hb) in due {
            if to_a {
                a.handle_heartbeat(now, &hb);
            } else {
                b.handle_heartbeat(now, &hb);
            }
        }
        for (p, to_a) in [(&mut a, false), (&mut b, true)] {
            if now >= p.poll_timeout() {
                p.handle_timeout(now);
            }
            while let Some(e) = p.poll_event() {
                if let PeerEvent::SendHeartbeat(hb) = e {
                    wire.push((now + ms(3), to_a, hb));
                }
            }
        }
    }
    for p in [&a, &b] {
        assert_eq!(p.state(), PeerState::Up);
        let rtt = p.rtt().unwrap();
        assert!(
            rtt.latest >= ms(6) && rtt.latest <= ms(8),
            "{:?}",
            rtt.latest
        );
    }
}

#[test]
fn a_cut_backplane_heals_and_a_cut_peer_that_falls_silent_is_down() {
    let mut w = Watch::new();
    // Backplane lost from 200 ms to 600 ms, the front heard throughout.
    w.run(800, |t| !(200..600).contains(&t), |_| true);
    assert_eq!(w.peer.state(), PeerState::Up);
    assert_eq!(
        w.log,
        [
            (at(20), PeerEvent::PeerUp),
            (at(280), PeerEvent::BackplaneLost),
            (at(600), PeerEvent::PeerUp),
        ]
    );
    // Cut, then the front falls silent too (last heard at 1010 ms): down
    // 100 ms after that, whatever the backplane said before.
    let mut w = Watch::new();
    w.run(1500, |t| t < 200, |t| t < 1020);
    assert_eq!(w.peer.state(), PeerState::Down);
    assert_eq!(
        w.log,
        [
            (at(20), PeerEvent::PeerUp),
            (at(280), PeerEvent::BackplaneLost),
            (at(1110), PeerEvent::PeerDown),
        ]
    );
}
