//! Passive open: the LISTEN state with a bounded half-open table.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use core::net::SocketAddrV4;

use relay_wire::TcpRepr;

use crate::config::Config;
use crate::conn::{Connection, State};
use crate::error::Error;
use crate::isn::IsnSecret;
use crate::time::Instant;
use crate::tuple::{FourTuple, reset_reply};

/// Default bound on connections in SYN-RECEIVED per listener.
pub const DEFAULT_MAX_HALF_OPEN: usize = 1024;
/// RSTs queued for sending at most; more are dropped (and counted).
const MAX_QUEUED_RESETS: usize = 64;

/// Counters of a listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// SYNs that created a half-open connection.
    pub syns: u64,
    /// Client: SYNs dropped (refused by the engine).
    pub syns_dropped: u64,
    /// Half-open connections pushed out, oldest first, by new SYNs while
    /// the table was full (a SYN flood).
    pub half_open_evicted: u64,
    /// RSTs sent in LISTEN (to stray ACKs) or dropped for lack of room.
    pub resets_sent: u64,
    /// RSTs not sent because the queue was full.
    pub resets_dropped: u64,
    /// Half-open connections that timed out or were reset.
    pub half_open_expired: u64,
    /// Connections that completed the handshake.
    pub established: u64,
}

/// A listening port (RFC 9293 LISTEN). The half-open state is bounded: at
/// most `max_half_open` connections in SYN-RECEIVED; a SYN that finds the
/// table full pushes out the oldest entry (counted). Under a flood of
/// spoofed SYNs a real client's entry then lives as long as the flood takes
/// to refill the table, which is enough when its ACK comes back sooner;
/// this is the bound this crate uses instead of SYN cookies.
///
/// # Calling order
///
/// For a segment to `local` that matches no established connection, call
/// [`handle_segment`](Self::handle_segment); then drain
/// [`poll_transmit`](Self::poll_transmit), take completed connections with
/// [`accept`](Self::accept) (drive them from then on, starting with their
/// `poll_transmit`), and keep [`poll_timeout`](Self::poll_timeout) /
/// [`handle_timeout`](Self::handle_timeout) going for SYN-ACK
/// retransmissions.
pub struct Listener {
    cfg: Config,
    local: SocketAddrV4,
    secret: IsnSecret,
    max_half_open: usize,
    half_open: BTreeMap<FourTuple, Connection>,
    /// Half-open tuples, oldest first (may hold tuples already gone).
    order: VecDeque<FourTuple>,
    /// Half-open connections that may have a segment to send (may hold
    /// tuples already gone): `poll_transmit` never scans the table.
    pending_tx: VecDeque<FourTuple>,
    /// Timer deadlines, earliest first (entries may be stale: each is
    /// checked against its connection when it comes due).
    timers: BinaryHeap<Reverse<(Instant, FourTuple)>>,
    accepted: VecDeque<(FourTuple, Connection)>,
    resets: VecDeque<(FourTuple, TcpRepr<'static>)>,
    stats: ListenerStats,
}

impl core::fmt::Debug for Listener {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Listener")
            .field("local", &self.local)
            .field("half_open", &self.half_open.len())
            .field("accepted", &self.accepted.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// A listener on `local` whose connections use `cfg`.
    pub fn new(
        cfg: Config,
        local: SocketAddrV4,
        secret: IsnSecret,
        max_half_open: usize,
    ) -> Result<Listener, Error> {
        cfg.validate()?;
        if max_half_open == 0 {
            return Err(Error::InvalidConfig("max_half_open: zero"));
        }
        Ok(Listener {
            cfg,
            local,
            secret,
            max_half_open,
            half_open: BTreeMap::new(),
            order: VecDeque::new(),
            pending_tx: VecDeque::new(),
            timers: BinaryHeap::new(),
            accepted: VecDeque::new(),
            resets: VecDeque::new(),
            stats: ListenerStats::default(),
        })
    }

    /// Counters.
    pub fn stats(&self) -> &ListenerStats {
        &self.stats
    }

    /// Connections in SYN-RECEIVED.
    pub fn half_open(&self) -> usize {
        self.half_open.len()
    }

    /// Handles a segment for `tuple` (whose `local` is ours) that no
    /// established connection claimed (RFC 9293 (3.10.7.2)). A connection
    /// that completed its handshake but was not yet taken with
    /// [`accept`](Self::accept) still gets its segments: a client sends
    /// data right behind its ACK, and a caller that drains a whole batch
    /// of frames before accepting must not see that data answered with a
    /// reset.
    pub fn handle_segment(&mut self, now: Instant, tuple: FourTuple, seg: &TcpRepr<'_>) {
        if let Some(conn) = self.half_open.get_mut(&tuple) {
            conn.handle_segment(now, seg);
            self.touched(tuple);
            self.settle(tuple);
            return;
        }
        if let Some((_, conn)) = self.accepted.iter_mut().find(|(t, _)| *t == tuple) {
            conn.handle_segment(now, seg);
            return;
        }
        if seg.flags.rst() {
            return;
        }
        if seg.flags.ack() {
            self.queue_reset(tuple, seg);
            return;
        }
        if !seg.flags.syn() || seg.flags.fin() {
            return;
        }
        while self.half_open.len() >= self.max_half_open {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if self.half_open.remove(&oldest).is_some() {
                self.stats.half_open_evicted += 1;
            }
        }
        match Connection::accept(self.cfg.clone(), tuple, seg, &self.secret, now) {
            Ok(conn) => {
                self.stats.syns += 1;
                self.half_open.insert(tuple, conn);
                self.order.push_back(tuple);
                self.touched(tuple);
                if self.order.len() > 2 * self.max_half_open {
                    let live = &self.half_open;
                    self.order.retain(|t| live.contains_key(t));
                }
            }
            Err(_) => self.stats.syns_dropped += 1,
        }
    }

    /// A half-open connection changed: it may have a segment to send and a
    /// new deadline.
    fn touched(&mut self, tuple: FourTuple) {
        let Some(conn) = self.half_open.get(&tuple) else {
            return;
        };
        self.pending_tx.push_back(tuple);
        if let Some(t) = conn.poll_timeout() {
            self.timers.push(Reverse((t, tuple)));
        }
        if self.timers.len() > 4 * self.half_open.len() + 1024 {
            // Stale entries: rebuild from the live table.
            self.timers = self
                .half_open
                .iter()
                .filter_map(|(t, c)| c.poll_timeout().map(|d| Reverse((d, *t))))
                .collect();
        }
        if self.pending_tx.len() > 4 * self.half_open.len() + 1024 {
            let live = &self.half_open;
            self.pending_tx.retain(|t| live.contains_key(t));
        }
    }

    fn queue_reset(&mut self, tuple: FourTuple, seg: &TcpRepr<'_>) {
        if let Some(rst) = reset_reply(seg) {
            if self.resets.len() < MAX_QUEUED_RESETS {
                self.resets.push_back((tuple, rst));
            } else {
                self.stats.resets_dropped += 1;
            }
        }
    }

    /// Moves a connection on from the half-open table when its handshake
    /// completed, or drops it when it closed.
    fn settle(&mut self, tuple: FourTuple) {
        let Some(state) = self.half_open.get(&tuple).map(Connection::state) else {
            return;
        };
        if state.is_synchronized() {
            if let Some(conn) = self.half_open.remove(&tuple) {
                self.stats.established += 1;
                self.accepted.push_back((tuple, conn));
            }
        } else if state == State::Closed {
            self.stats.half_open_expired += 1;
            if let Some(mut conn) = self.half_open.remove(&tuple) {
                // Keep a final RST it may have queued.
                let mut scratch = [0u8; 0];
                if let Some(rst) = conn.poll_transmit(Instant::ZERO, &mut scratch)
                    && rst.flags.rst()
                    && self.resets.len() < MAX_QUEUED_RESETS
                {
                    let owned = TcpRepr {
                        payload: &[],
                        ..rst
                    };
                    self.resets.push_back((tuple, owned));
                }
            }
        }
    }

    /// A connection whose handshake completed, ready to be driven by the
    /// caller (its pending segments included).
    pub fn accept(&mut self) -> Option<(FourTuple, Connection)> {
        self.accepted.pop_front()
    }

    /// The next segment to send (RSTs and SYN-ACKs) and its 4-tuple.
    pub fn poll_transmit<'b>(
        &mut self,
        now: Instant,
        buf: &'b mut [u8],
    ) -> Option<(FourTuple, TcpRepr<'b>)> {
        if let Some((tuple, rst)) = self.resets.pop_front() {
            self.stats.resets_sent += 1;
            return Some((tuple, rst));
        }
        let _ = buf;
        while let Some(&tuple) = self.pending_tx.front() {
            if let Some(conn) = self.half_open.get_mut(&tuple) {
                let mut scratch = [0u8; 0];
                if let Some(seg) = conn.poll_transmit(now, &mut scratch) {
                    // It stays at the front: it may have more to send.
                    return Some((
                        tuple,
                        TcpRepr {
                            payload: &[],
                            ..seg
                        },
                    ));
                }
                // Done sending: sending armed (or moved) its timer.
                if let Some(t) = conn.poll_timeout() {
                    self.timers.push(Reverse((t, tuple)));
                }
            }
            self.pending_tx.pop_front();
        }
        None
    }

    /// Earliest timer among the half-open connections.
    pub fn poll_timeout(&self) -> Option<Instant> {
        // The earliest entry, possibly stale: waking early is harmless.
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Runs due timers (SYN-ACK retransmissions, half-open expiry).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((t, tuple))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.half_open.get_mut(&tuple) else {
                continue;
            };
            match conn.poll_timeout() {
                Some(d) if d <= now => {
                    conn.handle_timeout(now);
                    self.touched(tuple);
                    self.settle(tuple);
                }
                // Rescheduled since: its newer entry is in the heap.
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use core::net::Ipv4Addr;
    use core::time::Duration;

    use relay_wire::{SeqNumber, TcpFlags, TcpOptions};

    use super::*;

    const LOCAL: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 443);
    const T0: Instant = Instant::from_secs(1);

    fn peer(port: u16) -> FourTuple {
        FourTuple::new(LOCAL, SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), port))
    }

    fn seg(port: u16, seq: u32, ack: Option<u32>, flags: TcpFlags) -> TcpRepr<'static> {
        TcpRepr {
            src_port: port,
            dst_port: 443,
            seq_number: SeqNumber(seq),
            ack_number: SeqNumber(ack.unwrap_or(0)),
            flags: if ack.is_some() {
                flags | TcpFlags::ACK
            } else {
                flags
            },
            window_len: 1000,
            options: TcpOptions::default(),
            payload: &[],
        }
    }

    fn listener(max: usize) -> Listener {
        Listener::new(Config::default(), LOCAL, IsnSecret::new([9; 16]), max).unwrap()
    }

    #[test]
    fn syn_then_ack_yields_a_connection() {
        let mut l = listener(4);
        l.handle_segment(T0, peer(1000), &seg(1000, 500, None, TcpFlags::SYN));
        assert_eq!(l.half_open(), 1);
        let mut buf = [0u8; 64];
        let (tuple, sa) = l.poll_transmit(T0, &mut buf).unwrap();
        assert_eq!(tuple, peer(1000));
        assert_eq!(sa.flags, TcpFlags::SYN | TcpFlags::ACK);
        assert_eq!(sa.ack_number, SeqNumber(501));
        let iss = sa.seq_number;
        assert!(l.poll_transmit(T0, &mut buf).is_none());
        assert!(l.accept().is_none());
        l.handle_segment(
            T0,
            peer(1000),
            &seg(1000, 501, Some(iss.0 + 1), TcpFlags::empty()),
        );
        let (tuple, mut conn) = l.accept().unwrap();
        assert_eq!(tuple, peer(1000));
        assert_eq!(conn.state(), State::Established);
        assert_eq!(conn.poll_event(), Some(crate::Event::Connected));
        assert_eq!((l.half_open(), l.stats().established), (0, 1));
    }

    #[test]
    fn data_behind_the_ack_reaches_a_connection_not_yet_accepted() {
        let mut l = listener(4);
        l.handle_segment(T0, peer(1000), &seg(1000, 500, None, TcpFlags::SYN));
        let mut buf = [0u8; 64];
        let (_, sa) = l.poll_transmit(T0, &mut buf).unwrap();
        let iss = sa.seq_number;
        // The ACK and the first data segment arrive in one batch, before
        // the caller accepts.
        l.handle_segment(
            T0,
            peer(1000),
            &seg(1000, 501, Some(iss.0 + 1), TcpFlags::empty()),
        );
        let data = TcpRepr {
            payload: b"hello",
            ..seg(1000, 501, Some(iss.0 + 1), TcpFlags::PSH)
        };
        l.handle_segment(T0, peer(1000), &data);
        assert!(
            l.poll_transmit(T0, &mut buf).is_none(),
            "no reset for the accepted connection's data"
        );
        assert_eq!(l.stats().resets_sent, 0);
        let (_, conn) = l.accept().unwrap();
        let (a, b) = conn.readable();
        assert_eq!([a, b].concat(), b"hello");
    }

    #[test]
    fn half_open_table_is_bounded() {
        let mut l = listener(2);
        for port in 1000..1005 {
            l.handle_segment(T0, peer(port), &seg(port, 1, None, TcpFlags::SYN));
        }
        assert_eq!(l.half_open(), 2);
        assert_eq!(l.stats().half_open_evicted, 3);
        // The newest SYNs hold the table: the last client can complete.
        let mut buf = [0u8; 64];
        let mut iss = None;
        while let Some((t, sa)) = l.poll_transmit(T0, &mut buf) {
            if t == peer(1004) {
                iss = Some(sa.seq_number);
            }
        }
        let iss = iss.expect("a SYN-ACK to the newest client");
        l.handle_segment(
            T0,
            peer(1004),
            &seg(1004, 2, Some(iss.0 + 1), TcpFlags::empty()),
        );
        assert_eq!(l.accept().map(|(t, _)| t), Some(peer(1004)));
    }

    #[test]
    fn stray_ack_gets_rst_and_rst_is_ignored() {
        let mut l = listener(2);
        l.handle_segment(T0, peer(7), &seg(7, 1, Some(12345), TcpFlags::empty()));
        l.handle_segment(T0, peer(7), &seg(7, 1, None, TcpFlags::RST));
        l.handle_segment(T0, peer(7), &seg(7, 1, None, TcpFlags::SYN | TcpFlags::FIN));
        let mut buf = [0u8; 0];
        let (_, rst) = l.poll_transmit(T0, &mut buf).unwrap();
        assert_eq!(
            (rst.seq_number, rst.flags),
            (SeqNumber(12345), TcpFlags::RST)
        );
        assert!(l.poll_transmit(T0, &mut buf).is_none());
        assert_eq!(l.half_open(), 0);
    }

    #[test]
    fn half_open_connections_expire() {
        let mut l = listener(2);
        l.handle_segment(T0, peer(1), &seg(1, 1, None, TcpFlags::SYN));
        let mut buf = [0u8; 0];
        let mut t = T0;
        let mut synacks = 0;
        loop {
            while l.poll_transmit(t, &mut buf).is_some() {
                synacks += 1;
            }
            let Some(deadline) = l.poll_timeout() else {
                break;
            };
            assert!(deadline - t <= Duration::from_secs(64));
            t = deadline;
            l.handle_timeout(t);
        }
        assert_eq!(synacks, 1 + Config::default().syn_retries);
        assert_eq!((l.half_open(), l.stats().half_open_expired), (0, 1));
    }
}
