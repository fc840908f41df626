//! The sender side: one [`Outbox`] per worker stream.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::envelope::{HEADER_LEN, MAX_BODY_LEN, encode_with};
use crate::error::Error;
use crate::ids::{CommitNo, FlowId, StreamId};
use crate::message::{
    FORGET_BODY_LEN, Kind, delta_body_len, full_body_len, write_delta, write_full,
};

/// Limits of one outbox. Everything queued or sent but not yet
/// acknowledged counts against them; past them the outbox commits locally
/// (unprotected) instead of growing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxConfig {
    /// Most envelope bytes queued or in flight (sent, not acknowledged).
    pub max_bytes: usize,
    /// Most messages queued or in flight.
    pub max_messages: usize,
    /// Most ended flows whose forget waits for the peer (while it is
    /// unreachable); beyond it the standby keeps a stale entry (counted in
    /// [`OutboxStats::forgets_dropped`]).
    pub max_pending_forgets: usize,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_bytes: 8 << 20,
            max_messages: 1 << 16,
            max_pending_forgets: 1 << 16,
        }
    }
}

impl OutboxConfig {
    /// Checks the limits, naming the bad field.
    pub fn validate(&self) -> Result<(), Error> {
        // One largest envelope must fit, or a big checkpoint could never be sent.
        if self.max_bytes < HEADER_LEN + MAX_BODY_LEN {
            return Err(Error::InvalidConfig(
                "max_bytes must hold one largest envelope (HEADER_LEN + MAX_BODY_LEN)",
            ));
        }
        if self.max_messages < 2 {
            return Err(Error::InvalidConfig("max_messages must be at least 2"));
        }
        Ok(())
    }
}

/// What the worker hands to [`Outbox::commit`] for a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// The flow's whole checkpoint.
    Full(&'a [u8]),
    /// The difference from the checkpoint of commit `base`
    /// ([`Encoding::Delta`] said which).
    Delta {
        /// The commit the delta was made from.
        base: CommitNo,
        /// The delta.
        bytes: &'a [u8],
    },
    /// Nothing: the commit is local only ([`Encoding::LocalOnly`]).
    LocalOnly,
}

/// What the outbox wants for a flow's next commit
/// ([`Outbox::encoding_for`]), so the worker encodes only what travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// A full checkpoint: the peer lacks the flow's latest state.
    Full,
    /// A delta from `base`, the flow's latest commit, which the peer holds
    /// (or will, in stream order) when the delta arrives.
    Delta {
        /// The base.
        base: CommitNo,
    },
    /// No bytes: the peer is unreachable or the queue is full, so the
    /// commit will be local (unprotected).
    LocalOnly,
}

/// What became of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Queued for the peer: its acknowledgement comes from
    /// [`Outbox::handle_ack`].
    Queued,
    /// Not replicated (peer unreachable or queue full): it counts as
    /// acknowledged now. The flow is unprotected until it is re-seeded.
    Local,
}

/// Why commits are local.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnprotectedReason {
    /// No connection to the peer ([`Outbox::peer_down`], or none yet).
    PeerDown,
    /// The queue reached its limits: the peer or the backplane is too slow.
    QueueFull,
}

/// Whether the worker's flows are protected by the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// Every live flow's latest commit is on its way to the peer, or there.
    Protected,
    /// Connected, but some flows still need a full checkpoint (after a
    /// reconnection, a resync request or a queue overflow).
    Reseeding,
    /// Commits are local.
    Unprotected(UnprotectedReason),
}

/// Something the worker should know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxEvent {
    /// The protection changed (log it; count time unprotected).
    Protection(Protection),
}

/// Counters, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Full checkpoints queued.
    pub fulls: u64,
    /// Deltas queued.
    pub deltas: u64,
    /// Forgets queued.
    pub forgets: u64,
    /// Commits acknowledged locally, unprotected (including the unacked
    /// ones released when the peer went down).
    pub unprotected_commits: u64,
    /// Commits the peer acknowledged (reported by `handle_ack`).
    pub acked_commits: u64,
    /// Resync requests taken from the peer.
    pub resyncs: u64,
    /// Times the queue overflowed.
    pub overflows: u64,
    /// Commits held while the queue was full.
    pub held_commits: u64,
    /// Connections (`peer_reset` calls).
    pub connections: u64,
    /// Forgets dropped because too many waited.
    pub forgets_dropped: u64,
    /// Envelope bytes handed to `poll_transmit`.
    pub bytes_sent: u64,
}

/// How the outbox's link to the peer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// No connection: every commit is local.
    Down,
    /// Connected: commits are queued.
    Up,
    /// Connected, but the queue hit its limits (the peer is too slow):
    /// commits are held, neither sent nor released, until the backlog
    /// drains to half the limits (they are re-seeded), a new connection
    /// re-seeds them, or [`Outbox::peer_down`] releases them locally. Not
    /// local at once: the peer still holds older copies of those flows and
    /// would adopt them if we died; the worker has the connection closed
    /// ([`OutboxEvent::Protection`] with `QueueFull` says so), and the
    /// backplane releases the held commits only once the peer can tell
    /// that we may commit without it.
    Overflow,
}

/// Where the peer stands on one flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerCopy {
    /// The current connection carries the flow's state up to its latest
    /// commit, starting with the full checkpoint at sequence `full_seq`:
    /// the next commit may be a delta from `latest`.
    InStream { full_seq: u64 },
    /// The peer lacks the latest state; the flow is in the re-seed queue.
    Missing,
    /// [`Outbox::poll_needs_full`] gave the flow to the caller, who owes
    /// a full checkpoint.
    Asked,
}

#[derive(Debug, Clone)]
struct FlowRepl {
    /// The flow's latest commit.
    latest: CommitNo,
    /// Highest commit the worker has been told is acknowledged (by the
    /// peer or locally); later acks of older commits are not reported.
    released: Option<CommitNo>,
    copy: PeerCopy,
}

/// What a sent, unacknowledged envelope carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carried {
    Full {
        flow: FlowId,
        commit: CommitNo,
    },
    Delta {
        flow: FlowId,
        commit: CommitNo,
    },
    Forget {
        flow: FlowId,
        commit: CommitNo,
    },
    /// A delta the standby dropped (resync request): its ack releases nothing.
    Void,
}

#[derive(Debug, Clone, Copy)]
struct Unacked {
    seq: u64,
    len: usize,
    carried: Carried,
}

/// The sender side of one worker's replication stream.
///
/// Calling order, per worker loop:
///
/// 1. On each new backplane connection (the first too), after the hellos:
///    [`peer_reset`](Self::peer_reset). When the connection is lost or the
///    peer is declared down: [`peer_down`](Self::peer_down), and release
///    the commits it returns.
/// 2. For each flow commit: [`encoding_for`](Self::encoding_for) says what
///    to encode (full, delta from which base, or nothing), then
///    [`commit`](Self::commit). [`Committed::Local`] means acknowledged
///    now (unprotected); [`Committed::Queued`] waits for the peer.
///    When a flow ends: [`forget`](Self::forget).
/// 3. While [`poll_needs_full`](Self::poll_needs_full) names a flow,
///    commit its latest checkpoint as [`Payload::Full`] (same commit
///    number is fine): the re-seed after a reconnection, a resync request
///    or an overflow. It names flows only while the queue has room.
/// 4. [`poll_transmit`](Self::poll_transmit) once: everything queued, in
///    one buffer, for one backplane write.
/// 5. For each [`Message::Ack`](crate::Message::Ack) of this stream:
///    [`handle_ack`](Self::handle_ack); release the commits it returns
///    (ACK after replication). For each
///    [`Message::ResyncRequest`](crate::Message::ResyncRequest):
///    [`handle_resync`](Self::handle_resync).
/// 6. [`poll_event`](Self::poll_event) for protection changes.
///
/// Memory is bounded: envelopes are kept only until `poll_transmit` copies
/// them out; after that only their sequence number, length and flow are
/// kept until acknowledged, within [`OutboxConfig`]'s limits. The outbox
/// never stores a checkpoint: a re-seed asks the caller for one.
#[derive(Debug)]
pub struct Outbox {
    cfg: OutboxConfig,
    stream: StreamId,
    link: Link,
    flows: HashMap<FlowId, FlowRepl>,
    /// Flows whose copy is not `InStream` (kept so that `protection` is O(1)).
    behind: usize,
    /// Flows to ask a full checkpoint for; may hold stale names (skipped).
    reseed: VecDeque<FlowId>,
    /// Ended flows whose forget has not reached the peer.
    pending_forgets: BTreeMap<FlowId, CommitNo>,
    /// Envelopes queued, not yet handed to `poll_transmit`.
    queued: Vec<u8>,
    /// Sent or queued, not acknowledged, in sequence order.
    unacked: VecDeque<Unacked>,
    unacked_bytes: usize,
    /// Next sequence number on this connection (from 1).
    next_seq: u64,
    /// Highest sequence number handed to `poll_transmit`.
    sent_seq: u64,
    /// Highest sequence number acknowledged.
    acked_seq: u64,
    /// Last protection reported by an event.
    reported: Protection,
    events: VecDeque<OutboxEvent>,
    stats: OutboxStats,
}

impl Outbox {
    /// The outbox of `stream`, with no connection yet (commits are local
    /// until [`peer_reset`](Self::peer_reset)).
    pub fn new(stream: StreamId, cfg: OutboxConfig) -> Result<Self, Error> {
        cfg.validate()?;
        if stream.is_control() {
            return Err(Error::InvalidConfig(
                "an outbox needs a worker stream, not the control stream",
            ));
        }
        Ok(Outbox {
            cfg,
            stream,
            link: Link::Down,
            flows: HashMap::new(),
            behind: 0,
            reseed: VecDeque::new(),
            pending_forgets: BTreeMap::new(),
            queued: Vec::new(),
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            next_seq: 1,
            sent_seq: 0,
            acked_seq: 0,
            reported: Protection::Unprotected(UnprotectedReason::PeerDown),
            events: VecDeque::new(),
            stats: OutboxStats::default(),
        })
    }

    /// The stream this outbox sends on.
    pub fn stream(&self) -> StreamId {
        self.stream
    }

    /// Counters.
    pub fn stats(&self) -> &OutboxStats {
        &self.stats
    }

    /// Flows the outbox tracks (live flows of the worker).
    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    /// Envelope bytes queued or in flight: the replication backlog.
    pub fn backlog_bytes(&self) -> usize {
        self.unacked_bytes
    }

    /// Envelopes queued or in flight: the replication backlog in messages.
    pub fn backlog_messages(&self) -> usize {
        self.unacked.len()
    }

    /// Live flows whose latest state the peer lacks (awaiting a re-seed,
    /// or committed locally while the peer was unreachable or the queue
    /// full): the unprotected flows. The others are protected: their
    /// latest commit is with the peer or on its way.
    pub fn flows_unprotected(&self) -> usize {
        self.behind
    }

    /// Whether the flows are protected now.
    pub fn protection(&self) -> Protection {
        match self.link {
            Link::Down => Protection::Unprotected(UnprotectedReason::PeerDown),
            Link::Overflow => Protection::Unprotected(UnprotectedReason::QueueFull),
            Link::Up => {
                if self.behind > 0 || !self.pending_forgets.is_empty() {
                    Protection::Reseeding
                } else {
                    Protection::Protected
                }
            }
        }
    }

    /// What the flow's next commit should carry.
    pub fn encoding_for(&self, flow: FlowId) -> Encoding {
        if self.link != Link::Up {
            return Encoding::LocalOnly;
        }
        match self.flows.get(&flow) {
            Some(f) if matches!(f.copy, PeerCopy::InStream { .. }) => {
                Encoding::Delta { base: f.latest }
            }
            _ => Encoding::Full,
        }
    }

    /// Commits `commit` of `flow`. Commit numbers of a flow must grow; a
    /// full checkpoint may repeat the latest (a re-seed).
    ///
    /// Errors are internal: a delta from a base the peer does not hold, a
    /// commit number going back, a checkpoint above [`MAX_BODY_LEN`].
    pub fn commit(
        &mut self,
        flow: FlowId,
        commit: CommitNo,
        payload: Payload<'_>,
    ) -> Result<Committed, Error> {
        if let Some(f) = self.flows.get(&flow) {
            let repeat_ok = matches!(payload, Payload::Full(_)) && commit == f.latest;
            if commit < f.latest || (commit == f.latest && !repeat_ok) {
                return Err(Error::CommitBackwards {
                    flow,
                    commit,
                    latest: f.latest,
                });
            }
        }
        let body_len = match payload {
            Payload::Full(b) => full_body_len(b.len()),
            Payload::Delta { bytes, .. } => delta_body_len(bytes.len()),
            Payload::LocalOnly => 0,
        };
        if body_len > MAX_BODY_LEN {
            return Err(Error::TooLarge {
                len: body_len,
                max: MAX_BODY_LEN,
            });
        }
        if let (Link::Up, Payload::Delta { base, .. }) = (self.link, payload) {
            let held = match self.flows.get(&flow) {
                Some(f) if matches!(f.copy, PeerCopy::InStream { .. }) => Some(f.latest),
                _ => None,
            };
            if held != Some(base) {
                return Err(Error::DeltaBase { flow, base, held });
            }
        }
        if self.link == Link::Up
            && payload != Payload::LocalOnly
            && !self.has_room(HEADER_LEN + body_len, 1)
        {
            self.overflow();
        }
        if self.link == Link::Overflow {
            // The flow's latest is this commit and the peer lacks it: the
            // re-seed (or peer_down) releases it.
            self.set_flow(flow, commit, PeerCopy::Missing);
            self.compact_reseed();
            self.stats.held_commits += 1;
            self.note_protection();
            return Ok(Committed::Queued);
        }
        if self.link != Link::Up || payload == Payload::LocalOnly {
            self.commit_local(flow, commit);
            self.note_protection();
            return Ok(Committed::Local);
        }
        let seq = self.next_seq;
        let (kind, carried) = match payload {
            Payload::Full(_) => (Kind::FullCheckpoint, Carried::Full { flow, commit }),
            _ => (Kind::Delta, Carried::Delta { flow, commit }),
        };
        encode_with(
            &mut self.queued,
            kind,
            self.stream,
            seq,
            |w| match payload {
                Payload::Full(b) => write_full(w, flow, commit, b),
                Payload::Delta { base, bytes } => write_delta(w, flow, base, commit, bytes),
                Payload::LocalOnly => {}
            },
        )?;
        self.push_unacked(seq, HEADER_LEN + body_len, carried);
        let full = matches!(payload, Payload::Full(_));
        let copy = if full {
            PeerCopy::InStream { full_seq: seq }
        } else {
            // A delta: the flow was InStream (checked above) and stays so.
            self.flows.get(&flow).map_or(PeerCopy::Missing, |f| f.copy)
        };
        self.set_flow(flow, commit, copy);
        if full {
            self.stats.fulls += 1;
        } else {
            self.stats.deltas += 1;
        }
        self.note_protection();
        Ok(Committed::Queued)
    }

    /// The flow ended: the peer may drop its state. Later acks of its
    /// commits are not reported.
    pub fn forget(&mut self, flow: FlowId) {
        let Some(f) = self.flows.remove(&flow) else {
            return;
        };
        if !matches!(f.copy, PeerCopy::InStream { .. }) {
            self.behind -= 1;
        }
        if self.link == Link::Up && self.has_room(HEADER_LEN + FORGET_BODY_LEN, 1) {
            self.queue_forget(flow, f.latest);
        } else if self.pending_forgets.len() < self.cfg.max_pending_forgets {
            self.pending_forgets.insert(flow, f.latest);
        } else {
            self.stats.forgets_dropped += 1;
        }
        self.note_protection();
    }

    /// A flow the peer needs a full checkpoint of: commit the flow's
    /// latest checkpoint as [`Payload::Full`] now. `None` while there is
    /// nothing to re-seed, no connection, or too little room in the queue
    /// (re-seeding must not overflow it).
    pub fn poll_needs_full(&mut self) -> Option<FlowId> {
        if self.link != Link::Up {
            return None;
        }
        self.flush_forgets();
        while self.below_half() {
            let flow = self.reseed.pop_front()?;
            if let Some(f) = self.flows.get(&flow)
                && f.copy == PeerCopy::Missing
            {
                let latest = f.latest;
                self.set_flow(flow, latest, PeerCopy::Asked);
                return Some(flow);
            }
        }
        None
    }

    /// Appends every queued envelope to `out` (one backplane write);
    /// returns the bytes appended.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize {
        let n = self.queued.len();
        out.append(&mut self.queued);
        self.sent_seq = self.next_seq - 1;
        self.stats.bytes_sent += n as u64;
        n
    }

    /// The peer applied everything up to `seq` on this stream. Returns,
    /// per flow, the highest commit now acknowledged that was not reported
    /// before: the worker may release what those commits cover.
    pub fn handle_ack(&mut self, seq: u64) -> Result<Vec<(FlowId, CommitNo)>, Error> {
        if seq > self.sent_seq {
            return Err(Error::NeverSent {
                seq,
                sent: self.sent_seq,
            });
        }
        if seq <= self.acked_seq || self.link == Link::Down {
            return Ok(Vec::new());
        }
        self.acked_seq = seq;
        let mut acked: BTreeMap<FlowId, CommitNo> = BTreeMap::new();
        while let Some(u) = self.unacked.front().copied() {
            if u.seq > seq {
                break;
            }
            self.unacked.pop_front();
            self.unacked_bytes -= u.len;
            if let Carried::Full { flow, commit } | Carried::Delta { flow, commit } = u.carried {
                let e = acked.entry(flow).or_insert(commit);
                *e = (*e).max(commit);
            }
        }
        let mut out = Vec::with_capacity(acked.len());
        for (flow, commit) in acked {
            if let Some(f) = self.flows.get_mut(&flow)
                && f.released.is_none_or(|r| commit > r)
            {
                f.released = Some(commit);
                out.push((flow, commit));
            }
        }
        self.stats.acked_commits += out.len() as u64;
        if self.link == Link::Overflow && self.below_half() {
            tracing::info!(stream = %self.stream, "replication backlog drained; re-seeding");
            self.link = Link::Up;
        }
        self.flush_forgets();
        self.note_protection();
        Ok(out)
    }

    /// The standby dropped the delta at `seq` for `flow` (it lacks the
    /// base). The flow's deltas from `seq` on release nothing when acked,
    /// and the flow is re-seeded, unless a full checkpoint was sent after
    /// `seq` already (the standby takes that one).
    pub fn handle_resync(&mut self, seq: u64, flow: FlowId) -> Result<(), Error> {
        if seq > self.sent_seq {
            return Err(Error::NeverSent {
                seq,
                sent: self.sent_seq,
            });
        }
        if self.link == Link::Down {
            return Ok(());
        }
        self.stats.resyncs += 1;
        let mut refreshed = false;
        for u in self.unacked.iter_mut().filter(|u| u.seq >= seq) {
            match u.carried {
                Carried::Full { flow: f, .. } if f == flow => {
                    refreshed = true;
                    break;
                }
                Carried::Delta { flow: f, .. } if f == flow => u.carried = Carried::Void,
                _ => {}
            }
        }
        if !refreshed && self.flows.contains_key(&flow) {
            self.mark_missing(flow);
            self.compact_reseed();
        }
        self.note_protection();
        Ok(())
    }

    /// A new connection to the peer (the first one too), after the hellos.
    /// The new standby may lack everything not acknowledged: every live
    /// flow is re-seeded (see [`poll_needs_full`](Self::poll_needs_full)),
    /// and commits in flight on the old connection are acknowledged when
    /// their flow's full checkpoint is. Sequence numbers restart at 1.
    pub fn peer_reset(&mut self) {
        self.stats.connections += 1;
        self.drop_in_flight();
        self.link = Link::Up;
        self.mark_all_missing();
        self.flush_forgets();
        self.note_protection();
    }

    /// The connection is gone or the peer is declared down: commits become
    /// local. Returns the commits that were waiting for the peer, now
    /// released locally (unprotected).
    pub fn peer_down(&mut self) -> Vec<(FlowId, CommitNo)> {
        self.drop_in_flight();
        self.link = Link::Down;
        // Every flow's latest commit not released yet: in flight, held
        // while the queue was full, or waiting for its re-seed.
        let mut out = Vec::new();
        for (&flow, f) in self.flows.iter_mut() {
            if f.released.is_none_or(|r| f.latest > r) {
                f.released = Some(f.latest);
                out.push((flow, f.latest));
            }
        }
        out.sort_unstable();
        self.stats.unprotected_commits += out.len() as u64;
        self.mark_all_missing();
        self.note_protection();
        out
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<OutboxEvent> {
        self.events.pop_front()
    }

    fn commit_local(&mut self, flow: FlowId, commit: CommitNo) {
        let released = self.flows.get(&flow).and_then(|f| f.released);
        self.set_flow(flow, commit, PeerCopy::Missing);
        if let Some(f) = self.flows.get_mut(&flow) {
            f.released = Some(released.map_or(commit, |r| r.max(commit)));
        }
        self.compact_reseed();
        self.stats.unprotected_commits += 1;
    }

    /// Records the flow's latest commit and where the peer stands,
    /// keeping `behind` and the re-seed queue in step: a flow that becomes
    /// `Missing` is queued once.
    fn set_flow(&mut self, flow: FlowId, latest: CommitNo, copy: PeerCopy) {
        let in_stream = |c: PeerCopy| matches!(c, PeerCopy::InStream { .. });
        let old = match self.flows.get_mut(&flow) {
            Some(f) => {
                let old = f.copy;
                f.latest = latest;
                f.copy = copy;
                Some(old)
            }
            None => {
                self.flows.insert(
                    flow,
                    FlowRepl {
                        latest,
                        released: None,
                        copy,
                    },
                );
                None
            }
        };
        let was_behind = old.is_some_and(|c| !in_stream(c));
        match (was_behind, in_stream(copy)) {
            (false, false) => self.behind += 1,
            (true, true) => self.behind -= 1,
            _ => {}
        }
        if copy == PeerCopy::Missing && old != Some(PeerCopy::Missing) {
            self.reseed.push_back(flow);
        }
    }

    /// The peer lacks the flow's latest state: queue it for a re-seed.
    fn mark_missing(&mut self, flow: FlowId) {
        if let Some(f) = self.flows.get(&flow) {
            let latest = f.latest;
            self.set_flow(flow, latest, PeerCopy::Missing);
        }
    }

    fn mark_all_missing(&mut self) {
        let ids: Vec<FlowId> = self.flows.keys().copied().collect();
        for id in ids {
            self.mark_missing(id);
        }
        self.compact_reseed();
    }

    /// Every envelope queued or in flight is lost with the connection;
    /// forgets among them are retried on the next one.
    fn drop_in_flight(&mut self) {
        for u in std::mem::take(&mut self.unacked) {
            if let Carried::Forget { flow, commit } = u.carried {
                self.pending_forgets.insert(flow, commit);
            }
        }
        self.queued.clear();
        self.unacked_bytes = 0;
        self.next_seq = 1;
        self.sent_seq = 0;
        self.acked_seq = 0;
    }

    fn overflow(&mut self) {
        tracing::warn!(
            stream = %self.stream,
            bytes = self.unacked_bytes,
            messages = self.unacked.len(),
            "replication queue full (the peer is too slow): holding commits; the connection closes"
        );
        self.stats.overflows += 1;
        self.link = Link::Overflow;
    }

    fn has_room(&self, bytes: usize, messages: usize) -> bool {
        self.unacked_bytes + bytes <= self.cfg.max_bytes
            && self.unacked.len() + messages <= self.cfg.max_messages
    }

    /// The backlog is below half the limits: room to re-seed without
    /// overflowing again at once.
    fn below_half(&self) -> bool {
        self.unacked_bytes <= self.cfg.max_bytes / 2
            && self.unacked.len() <= self.cfg.max_messages / 2
    }

    fn push_unacked(&mut self, seq: u64, len: usize, carried: Carried) {
        self.next_seq += 1;
        self.unacked_bytes += len;
        self.unacked.push_back(Unacked { seq, len, carried });
    }

    fn queue_forget(&mut self, flow: FlowId, commit: CommitNo) {
        let seq = self.next_seq;
        // A forget body is a few bytes: it cannot exceed MAX_BODY_LEN.
        if encode_with(&mut self.queued, Kind::Forget, self.stream, seq, |w| {
            flow.write(w);
            commit.write(w);
        })
        .is_ok()
        {
            self.push_unacked(
                seq,
                HEADER_LEN + FORGET_BODY_LEN,
                Carried::Forget { flow, commit },
            );
            self.stats.forgets += 1;
        }
    }

    /// Sends the forgets that waited for a connection, while there is room.
    fn flush_forgets(&mut self) {
        while self.link == Link::Up && self.has_room(HEADER_LEN + FORGET_BODY_LEN, 1) {
            let Some((flow, commit)) = self.pending_forgets.pop_first() else {
                break;
            };
            if self.flows.contains_key(&flow) {
                // The same flow id is live again (an adopted flow came
                // back): its full checkpoint replaces the old state.
                continue;
            }
            self.queue_forget(flow, commit);
        }
    }

    /// Drops stale names from the re-seed queue once it is much longer
    /// than the flows it can name (bounds it under flapping).
    fn compact_reseed(&mut self) {
        if self.reseed.len() > 2 * self.flows.len() + 64 {
            let mut seen = std::collections::HashSet::new();
            let flows = &self.flows;
            self.reseed.retain(|id| {
                flows.get(id).is_some_and(|f| f.copy == PeerCopy::Missing) && seen.insert(*id)
            });
        }
    }

    fn note_protection(&mut self) {
        let now = self.protection();
        if now != self.reported {
            self.reported = now;
            if self.events.back() == Some(&OutboxEvent::Protection(now)) {
                return;
            }
            // Only the latest few changes matter to a worker that polls late.
            if self.events.len() >= 8 {
                self.events.pop_front();
            }
            self.events.push_back(OutboxEvent::Protection(now));
        }
    }
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
