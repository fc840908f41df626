//! Where commits go: the replication interface of DESIGN.md section 3.

use std::collections::VecDeque;

pub use relay_replication::{CommitNo, FlowId, RelayId};

use crate::checkpoint::FlowCheckpoint;

/// Takes a flow's commits and acknowledges them once nobody can lose them.
///
/// Flow ids and commit numbers are the replication crate's: a
/// [`FlowId`] names the flow in the whole cluster (relay, worker, counter)
/// and never changes; a flow commits `CommitNo { epoch, n }` with `n` from
/// 1 in epoch 0 on the relay that opened it, and each adopter continues in
/// the next epoch ([`Flow::adopt`](crate::Flow::adopt)).
///
/// The local implementation ([`LocalCommit`]) acknowledges at once; the
/// cluster's acknowledges after a peer relay has stored the commit. An
/// acknowledgement covers every earlier commit of the same flow.
pub trait Outbox {
    /// Queues commit `no` of flow `id`. The checkpoint is the whole state an
    /// adopter needs as of this commit; how much of it travels (a full
    /// checkpoint or a delta) is the outbox's business.
    fn commit(&mut self, id: FlowId, no: CommitNo, checkpoint: &FlowCheckpoint);

    /// The next acknowledgement, if any: hand it to
    /// [`Flow::handle_commit_ack`](crate::Flow::handle_commit_ack).
    fn poll_ack(&mut self) -> Option<(FlowId, CommitNo)>;

    /// A flow is gone: forget its state.
    fn forget(&mut self, id: FlowId);
}

/// The outbox of a relay without peers: every commit is acknowledged at
/// once (nothing else could hold it).
#[derive(Debug, Default)]
pub struct LocalCommit {
    acks: VecDeque<(FlowId, CommitNo)>,
    commits: u64,
}

impl LocalCommit {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Commits taken so far.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// Takes a commit that comes without a checkpoint (`Flow::poll_commit_no`).
    pub fn commit_no(&mut self, id: FlowId, no: CommitNo) {
        self.commits += 1;
        self.acks.push_back((id, no));
    }
}

impl Outbox for LocalCommit {
    fn commit(&mut self, id: FlowId, no: CommitNo, _checkpoint: &FlowCheckpoint) {
        self.commits += 1;
        self.acks.push_back((id, no));
    }

    fn poll_ack(&mut self) -> Option<(FlowId, CommitNo)> {
        self.acks.pop_front()
    }

    fn forget(&mut self, id: FlowId) {
        self.acks.retain(|(f, _)| *f != id);
    }
}
