//! Where a worker's commits go (DESIGN.md section 3): to nobody
//! ([`Commits::Local`], a relay alone), or to the peer relay through this
//! worker's replication stream ([`Commits::Cluster`]): a relay-replication
//! [`Outbox`] that decides full checkpoint or delta, and the backplane's
//! [`WorkerPort`] that carries one batch per loop and brings the peer's
//! acknowledgements back. A flow releases bytes to their sender only once
//! its commit is acknowledged (or, with no peer reachable, committed
//! locally and counted as unprotected).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use relay_cluster::{WorkerEvent, WorkerPort};
use relay_flow::{CommitNo, FlowCheckpoint, FlowId, LocalCommit, encode_delta};
use relay_replication::{
    Committed, Encoding, Outbox, OutboxEvent, Payload, Protection, RelayId, UnprotectedReason,
};

/// A worker's link to its peer: the stream's outbox and the backplane port.
pub struct Replication {
    /// The peer relay that stands by for this worker's flows.
    pub peer: RelayId,
    /// This worker's stream.
    pub outbox: Outbox,
    /// The backplane's queues for this worker.
    pub port: WorkerPort,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication")
            .field("peer", &self.peer)
            .field("flows", &self.outbox.flows())
            .finish_non_exhaustive()
    }
}

/// What the replication side did in one [`Commits::pump`], for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PumpReport {
    /// Backplane events taken.
    pub events: usize,
    /// Bytes handed to the backplane.
    pub sent: usize,
    /// The protection changed to this.
    pub protection: Option<Protection>,
}

/// The replicated side of [`Commits`].
pub struct ClusterCommits {
    link: Replication,
    /// Per flow: its latest commit and checkpoint (the delta base, and what
    /// a re-seed sends).
    latest: HashMap<FlowId, (CommitNo, FlowCheckpoint)>,
    acks: VecDeque<(FlowId, CommitNo)>,
    batch: Vec<u8>,
    /// Commits that were local only (no peer, or its queue full).
    pub unprotected_commits: u64,
}

impl std::fmt::Debug for ClusterCommits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCommits")
            .field("link", &self.link)
            .field("flows", &self.latest.len())
            .finish_non_exhaustive()
    }
}

/// Where a worker's commits go.
#[derive(Debug)]
pub enum Commits {
    /// A relay alone: every commit is acknowledged at once.
    Local(LocalCommit),
    /// A relay with a peer.
    Cluster(Box<ClusterCommits>),
}

impl Commits {
    /// The replicated outbox over `link`.
    pub fn cluster(link: Replication) -> Commits {
        Commits::Cluster(Box::new(ClusterCommits {
            link,
            latest: HashMap::new(),
            acks: VecDeque::new(),
            batch: Vec::new(),
            unprotected_commits: 0,
        }))
    }

    /// A commit that carries no checkpoint (a relay alone builds none).
    pub fn commit_no(&mut self, id: FlowId, no: CommitNo) {
        match self {
            Commits::Local(l) => l.commit_no(id, no),
            // Replication needs the checkpoint: a flow that commits without
            // one is not replicated; count it as local.
            Commits::Cluster(c) => {
                c.unprotected_commits += 1;
                c.acks.push_back((id, no));
            }
        }
    }

    /// Once per worker loop: takes the backplane's events (acknowledgements,
    /// reconnections, a dead peer), re-seeds what the outbox asks for and
    /// hands this loop's batch to the backplane.
    pub fn pump(&mut self) -> PumpReport {
        match self {
            Commits::Local(_) => PumpReport::default(),
            Commits::Cluster(c) => c.pump(),
        }
    }

    /// Commits made local-only since the last call (for the metric).
    pub fn take_unprotected(&mut self) -> u64 {
        match self {
            Commits::Local(_) => 0,
            Commits::Cluster(c) => std::mem::take(&mut c.unprotected_commits),
        }
    }

    /// The replication link, if any.
    pub fn replication(&self) -> Option<&Replication> {
        match self {
            Commits::Local(_) => None,
            Commits::Cluster(c) => Some(&c.link),
        }
    }

    /// Where replication stands now (`None` for a relay alone).
    pub fn snapshot(&self) -> Option<ReplicationSnapshot> {
        self.replication().map(|link| {
            let o = &link.outbox;
            let unprotected = o.flows_unprotected();
            ReplicationSnapshot {
                peer: link.peer,
                flows_protected: o.flows().saturating_sub(unprotected) as u64,
                flows_unprotected: unprotected as u64,
                backlog_bytes: o.backlog_bytes() as u64,
                backlog_messages: o.backlog_messages() as u64,
                protection: o.protection(),
            }
        })
    }
}

/// One worker's replication as the control plane sees it: `relay peers`
/// and the metrics. Counted over the flows that committed (a flow in its
/// handshake is not replicated: its client retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicationSnapshot {
    /// The peer that stands by for this worker's flows.
    pub peer: RelayId,
    /// Flows whose latest commit is with the peer or on its way.
    pub flows_protected: u64,
    /// Flows whose latest state the peer lacks (awaiting a re-seed, or
    /// committed locally while the peer was unreachable or too slow).
    pub flows_unprotected: u64,
    /// Envelope bytes queued or sent and not yet acknowledged.
    pub backlog_bytes: u64,
    /// Envelopes queued or sent and not yet acknowledged.
    pub backlog_messages: u64,
    /// The outbox's own verdict.
    pub protection: Protection,
}

/// The wire-free name of a [`Protection`]: `protected`, `reseeding`,
/// `unprotected_peer_down`, `unprotected_queue_full`.
pub fn protection_name(p: Protection) -> &'static str {
    match p {
        Protection::Protected => "protected",
        Protection::Reseeding => "reseeding",
        Protection::Unprotected(UnprotectedReason::PeerDown) => "unprotected_peer_down",
        Protection::Unprotected(UnprotectedReason::QueueFull) => "unprotected_queue_full",
    }
}

/// Where a worker publishes its [`ReplicationSnapshot`] for the control
/// plane (one per worker, in [`Shared`](crate::Shared)): relaxed atomics,
/// written once per worker loop, so the worker never waits for a reader.
/// A reader may see fields of two consecutive loops; each is a gauge.
#[derive(Debug, Default)]
pub struct ReplicationFigures {
    /// The peer's relay id, 0 while nothing was published (relay ids
    /// start at 1).
    peer: AtomicU32,
    flows_protected: AtomicU64,
    flows_unprotected: AtomicU64,
    backlog_bytes: AtomicU64,
    backlog_messages: AtomicU64,
    protection: AtomicU8,
}

impl ReplicationFigures {
    /// Publishes `s` (the worker, once per loop).
    pub fn publish(&self, s: &ReplicationSnapshot) {
        let r = Ordering::Relaxed;
        self.flows_protected.store(s.flows_protected, r);
        self.flows_unprotected.store(s.flows_unprotected, r);
        self.backlog_bytes.store(s.backlog_bytes, r);
        self.backlog_messages.store(s.backlog_messages, r);
        self.protection.store(protection_code(s.protection), r);
        self.peer.store(u32::from(s.peer), r);
    }

    /// The last published figures; `None` while the worker replicates to
    /// nobody.
    pub fn snapshot(&self) -> Option<ReplicationSnapshot> {
        let r = Ordering::Relaxed;
        let peer = RelayId::try_from(self.peer.load(r))
            .ok()
            .filter(|&p| p != 0)?;
        Some(ReplicationSnapshot {
            peer,
            flows_protected: self.flows_protected.load(r),
            flows_unprotected: self.flows_unprotected.load(r),
            backlog_bytes: self.backlog_bytes.load(r),
            backlog_messages: self.backlog_messages.load(r),
            protection: protection_from_code(self.protection.load(r)),
        })
    }
}

fn protection_code(p: Protection) -> u8 {
    match p {
        Protection::Protected => 1,
        Protection::Reseeding => 2,
        Protection::Unprotected(UnprotectedReason::PeerDown) => 3,
        Protection::Unprotected(UnprotectedReason::QueueFull) => 4,
    }
}

fn protection_from_code(c: u8) -> Protection {
    match c {
        1 => Protection::Protected,
        2 => Protection::Reseeding,
        4 => Protection::Unprotected(UnprotectedReason::QueueFull),
        _ => Protection::Unprotected(UnprotectedReason::PeerDown),
    }
}

impl relay_flow::Outbox for Commits {
    fn commit(&mut self, id: FlowId, no: CommitNo, checkpoint: &FlowCheckpoint) {
        match self {
            Commits::Local(l) => l.commit(id, no, checkpoint),
            Commits::Cluster(c) => c.commit(id, no, checkpoint),
        }
    }

    fn poll_ack(&mut self) -> Option<(FlowId, CommitNo)> {
        match self {
            Commits::Local(l) => l.poll_ack(),
            Commits::Cluster(c) => c.acks.pop_front(),
        }
    }

    fn forget(&mut self, id: FlowId) {
        match self {
            Commits::Local(l) => l.forget(id),
            Commits::Cluster(c) => {
                c.link.outbox.forget(id);
                c.latest.remove(&id);
            }
        }
    }
}

impl ClusterCommits {
    fn commit(&mut self, id: FlowId, no: CommitNo, ck: &FlowCheckpoint) {
        let full;
        let delta;
        let payload = match self.link.outbox.encoding_for(id) {
            Encoding::Full => {
                full = ck.to_bytes();
                Payload::Full(&full)
            }
            Encoding::Delta { base } => {
                let from_base = self
                    .latest
                    .get(&id)
                    .filter(|(n, _)| *n == base)
                    .and_then(|(_, b)| encode_delta(ck, b));
                match from_base {
                    Some(d) => {
                        delta = d;
                        Payload::Delta {
                            base,
                            bytes: &delta,
                        }
                    }
                    None => {
                        full = ck.to_bytes();
                        Payload::Full(&full)
                    }
                }
            }
            Encoding::LocalOnly => Payload::LocalOnly,
        };
        self.queue(id, no, payload);
        self.latest.insert(id, (no, ck.clone()));
    }

    fn queue(&mut self, id: FlowId, no: CommitNo, payload: Payload<'_>) {
        match self.link.outbox.commit(id, no, payload) {
            Ok(Committed::Queued) => {}
            Ok(Committed::Local) => {
                self.unprotected_commits += 1;
                self.acks.push_back((id, no));
            }
            Err(e) => {
                // Our own bookkeeping refused it: the flow must not wait
                // forever; it goes on unprotected.
                tracing::warn!(flow = ?id, error = %e, "commit not replicated");
                self.unprotected_commits += 1;
                self.acks.push_back((id, no));
            }
        }
    }

    fn pump(&mut self) -> PumpReport {
        let mut report = PumpReport::default();
        let peer = self.link.peer;
        while let Some(event) = self.link.port.try_recv() {
            report.events += 1;
            match event {
                WorkerEvent::PeerReset(p) if p == peer => self.link.outbox.peer_reset(),
                WorkerEvent::Ack { peer: p, seq } if p == peer => {
                    match self.link.outbox.handle_ack(seq) {
                        Ok(acked) => self.acks.extend(acked),
                        Err(e) => tracing::warn!(error = %e, "peer acknowledgement refused"),
                    }
                }
                WorkerEvent::Resync { peer: p, seq, flow } if p == peer => {
                    if let Err(e) = self.link.outbox.handle_resync(seq, flow) {
                        tracing::warn!(error = %e, "peer resync request refused");
                    }
                }
                WorkerEvent::PeerDown(p) if p == peer => {
                    let released = self.link.outbox.peer_down();
                    self.unprotected_commits += released.len() as u64;
                    self.acks.extend(released);
                }
                _ => {}
            }
        }
        while let Some(flow) = self.link.outbox.poll_needs_full() {
            match self.latest.get(&flow) {
                Some((no, ck)) => {
                    let (no, bytes) = (*no, ck.to_bytes());
                    self.queue(flow, no, Payload::Full(&bytes));
                }
                None => self.link.outbox.forget(flow),
            }
        }
        self.batch.clear();
        if self.link.outbox.poll_transmit(&mut self.batch) > 0 {
            report.sent = self.batch.len();
            let bytes = std::mem::take(&mut self.batch);
            if let Err(e) = self.link.port.send(peer, bytes) {
                // The backplane is gone or its queue full: the outbox's
                // bookkeeping waits for a reset or for PeerDown.
                tracing::debug!(error = %e, "batch not queued for the backplane");
            }
        }
        while let Some(OutboxEvent::Protection(p)) = self.link.outbox.poll_event() {
            tracing::info!(protection = ?p, "replication protection changed");
            if p == Protection::Unprotected(UnprotectedReason::QueueFull)
                && let Err(e) = self.link.port.peer_too_slow(peer)
            {
                tracing::warn!(error = %e, "cannot report the peer too slow");
            }
            report.protection = Some(p);
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_publish_what_the_worker_saw() {
        let f = ReplicationFigures::default();
        assert_eq!(f.snapshot(), None, "nothing published: no replication");
        for protection in [
            Protection::Protected,
            Protection::Reseeding,
            Protection::Unprotected(UnprotectedReason::PeerDown),
            Protection::Unprotected(UnprotectedReason::QueueFull),
        ] {
            let s = ReplicationSnapshot {
                peer: 2,
                flows_protected: 7,
                flows_unprotected: 3,
                backlog_bytes: 4096,
                backlog_messages: 12,
                protection,
            };
            f.publish(&s);
            assert_eq!(f.snapshot(), Some(s));
            assert_eq!(
                protection_from_code(protection_code(protection)),
                protection
            );
        }
        assert_eq!(
            protection_name(Protection::Unprotected(UnprotectedReason::QueueFull)),
            "unprotected_queue_full"
        );
    }
}
