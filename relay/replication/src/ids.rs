//! Names: of a flow in the cluster, of a commit within a flow, of a
//! replication stream.

use core::fmt;

use relay_codec::{CodecError, Reader, Writer};

/// A relay's number in the cluster configuration.
pub type RelayId = u16;

/// A flow's identity, unique in the cluster: the relay and worker that
/// opened it and that worker's counter. It never changes, not even when
/// another relay adopts the flow (the adopter keeps the name and raises the
/// commit epoch instead, see [`CommitNo`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId {
    /// The relay that opened the flow.
    pub relay: RelayId,
    /// The worker (queue) of that relay that opened it.
    pub worker: u16,
    /// That worker's flow counter.
    pub counter: u64,
}

impl FlowId {
    /// Encoded size: 2 + 2 + 8.
    pub const LEN: usize = 12;

    pub(crate) fn write(&self, w: &mut Writer<'_>) {
        w.u16(self.relay);
        w.u16(self.worker);
        w.u64(self.counter);
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(FlowId {
            relay: r.u16("flow relay")?,
            worker: r.u16("flow worker")?,
            counter: r.u64("flow counter")?,
        })
    }
}

impl fmt::Display for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.relay, self.worker, self.counter)
    }
}

/// A commit's number within its flow, ordered by epoch, then `n`.
///
/// The relay that opens a flow commits in epoch 0. A relay that adopts the
/// flow (failover or handoff) continues in a higher epoch, so its commits
/// order after every commit of the previous owner even if `n` restarts, and
/// a late message from the previous owner can never overwrite the new
/// owner's state on a standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CommitNo {
    /// Ownership epoch: 0 for the opener, raised at each adoption.
    pub epoch: u32,
    /// Commit counter within the epoch.
    pub n: u64,
}

impl CommitNo {
    /// Encoded size: 4 + 8.
    pub const LEN: usize = 12;

    /// Commit `n` of epoch `epoch`.
    pub const fn new(epoch: u32, n: u64) -> Self {
        CommitNo { epoch, n }
    }

    /// The next commit in the same epoch.
    pub fn next(self) -> Self {
        CommitNo {
            epoch: self.epoch,
            n: self.n.wrapping_add(1),
        }
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>) {
        w.u32(self.epoch);
        w.u64(self.n);
    }

    pub(crate) fn read(r: &mut Reader<'_>, what: &'static str) -> Result<Self, CodecError> {
        Ok(CommitNo {
            epoch: r.u32(what)?,
            n: r.u64(what)?,
        })
    }
}

impl fmt::Display for CommitNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.n)
    }
}

/// A replication stream: the sending relay and worker. Each worker of a
/// relay has its own ordered stream of commits to a peer; control
/// messages (hello, heartbeats, acks, ...) travel on the relay's
/// [`CONTROL_WORKER`](StreamId::CONTROL_WORKER) pseudo-stream, unsequenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    /// The sending relay.
    pub relay: RelayId,
    /// The sending worker, or [`StreamId::CONTROL_WORKER`].
    pub worker: u16,
}

impl StreamId {
    /// Encoded size: 2 + 2.
    pub const LEN: usize = 4;

    /// The worker number of a relay's control messages.
    pub const CONTROL_WORKER: u16 = u16::MAX;

    /// Worker `worker`'s stream of relay `relay`.
    pub const fn new(relay: RelayId, worker: u16) -> Self {
        StreamId { relay, worker }
    }

    /// Relay `relay`'s control pseudo-stream.
    pub const fn control(relay: RelayId) -> Self {
        StreamId {
            relay,
            worker: Self::CONTROL_WORKER,
        }
    }

    /// Whether this is a control pseudo-stream.
    pub fn is_control(&self) -> bool {
        self.worker == Self::CONTROL_WORKER
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>) {
        w.u16(self.relay);
        w.u16(self.worker);
    }

    pub(crate) fn read(r: &mut Reader<'_>, what: &'static str) -> Result<Self, CodecError> {
        Ok(StreamId {
            relay: r.u16(what)?,
            worker: r.u16(what)?,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_control() {
            write!(f, "{}/control", self.relay)
        } else {
            write!(f, "{}/{}", self.relay, self.worker)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_numbers_order_by_epoch_first() {
        assert!(CommitNo::new(1, 0) > CommitNo::new(0, u64::MAX));
        assert!(CommitNo::new(0, 2) > CommitNo::new(0, 1));
        assert_eq!(CommitNo::new(3, 7).next(), CommitNo::new(3, 8));
        assert_eq!(CommitNo::new(3, 7).to_string(), "3:7");
    }

    #[test]
    fn ids_round_trip() {
        let f = FlowId {
            relay: 2,
            worker: 3,
            counter: 1 << 40,
        };
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out);
        f.write(&mut w);
        CommitNo::new(9, 10).write(&mut w);
        StreamId::control(4).write(&mut w);
        assert_eq!(out.len(), FlowId::LEN + CommitNo::LEN + StreamId::LEN);
        let mut r = Reader::new(&out);
        assert_eq!(FlowId::read(&mut r), Ok(f));
        assert_eq!(CommitNo::read(&mut r, "commit"), Ok(CommitNo::new(9, 10)));
        let s = StreamId::read(&mut r, "stream").unwrap();
        assert!(s.is_control());
        assert_eq!(s.to_string(), "4/control");
        r.finish().unwrap();
    }
}
