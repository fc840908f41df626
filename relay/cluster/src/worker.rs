//! The workers' side of the backplane: each worker runs its own
//! [`Outbox`](relay_replication::Outbox) (one stream) and talks to the
//! backplane thread through a [`WorkerPort`]: lock-free queues both ways,
//! never blocking, no tokio.
//!
//! Batches are tagged with the connection they were encoded for (the
//! generation of the last [`WorkerEvent::PeerReset`] the worker took):
//! an outbox numbers its stream per connection, so a batch encoded for a
//! connection that is gone would be a gap or a duplicate on the next one.
//! Such batches are dropped, and acks from an old connection are not
//! handed out after the reset that replaced it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use relay_replication::{FlowId, RelayId, StreamId};

use crate::counters::{AtomicCounters, bump};
use crate::error::Error;

/// Called (from the backplane thread) whenever something was queued for a
/// worker, so that a worker sleeping in `poll` wakes up (e.g. it writes
/// an eventfd the worker polls). Must be quick and must not block.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// What the backplane tells a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEvent {
    /// A new connection to `peer` is up (hellos exchanged): call
    /// [`Outbox::peer_reset`](relay_replication::Outbox::peer_reset) and
    /// re-seed. Batches sent from now on travel on this connection.
    PeerReset(RelayId),
    /// `peer` applied this worker's stream up to `seq` (cumulative): call
    /// [`Outbox::handle_ack`](relay_replication::Outbox::handle_ack) and
    /// release what it returns.
    Ack {
        /// The peer.
        peer: RelayId,
        /// Highest sequence number applied.
        seq: u64,
    },
    /// `peer` dropped the delta at `seq` of this worker's stream and asks
    /// for a full checkpoint of `flow`: call
    /// [`Outbox::handle_resync`](relay_replication::Outbox::handle_resync).
    Resync {
        /// The peer.
        peer: RelayId,
        /// The dropped delta's sequence number.
        seq: u64,
        /// The flow.
        flow: FlowId,
    },
    /// The connection to `peer` ended. Commits in flight wait for the
    /// next connection (its `PeerReset` re-seeds them) or for `PeerDown`.
    /// A worker that would rather not wait may call
    /// [`Outbox::peer_down`](relay_replication::Outbox::peer_down) now.
    Disconnected(RelayId),
    /// Membership declared `peer` down: call
    /// [`Outbox::peer_down`](relay_replication::Outbox::peer_down) and
    /// release what it returns (unprotected).
    PeerDown(RelayId),
    /// Membership declared `peer` up (for logs and metrics; the
    /// connection's `PeerReset` is what re-seeds).
    PeerUp(RelayId),
}

/// A worker's bytes for one peer, encoded for one connection.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) worker: u16,
    pub(crate) generation: u64,
    pub(crate) bytes: Vec<u8>,
}

/// An event with the connection generation it belongs to.
#[derive(Debug)]
pub(crate) struct Tagged {
    pub(crate) generation: u64,
    pub(crate) event: WorkerEvent,
}

/// The per-peer state that workers touch, lock-free.
#[derive(Debug)]
pub(crate) struct PeerQueue {
    pub(crate) id: RelayId,
    /// Batches queued beyond which a send fails (and resets the connection).
    pub(crate) max: usize,
    pub(crate) tx: Sender<Batch>,
    pub(crate) rx: Receiver<Batch>,
    /// Generation of the live connection; 0 when there is none.
    pub(crate) live: AtomicU64,
    /// A batch of the live connection was lost: its writer must reset it.
    pub(crate) reset: AtomicBool,
    /// A worker's outbox is full: the peer is too slow. The writer closes
    /// the connection, and our workers commit locally once the peer can
    /// tell (see `Shared::local_delay`).
    pub(crate) too_slow: AtomicBool,
    /// Wakes the live connection's writer.
    pub(crate) writer_wake: tokio::sync::Notify,
}

impl PeerQueue {
    pub(crate) fn new(id: RelayId, max: usize) -> Self {
        // Unbounded as a channel (no up-front allocation of `max` slots),
        // bounded by the check in `send`.
        let (tx, rx) = crossbeam_channel::unbounded();
        PeerQueue {
            id,
            max,
            tx,
            rx,
            live: AtomicU64::new(0),
            reset: AtomicBool::new(false),
            too_slow: AtomicBool::new(false),
            writer_wake: tokio::sync::Notify::new(),
        }
    }
}

/// The sending half of a worker's event queue, kept by the backplane.
pub(crate) struct WorkerTx {
    pub(crate) tx: Sender<Tagged>,
    pub(crate) waker: Waker,
}

impl fmt::Debug for WorkerTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerTx")
            .field("queued", &self.tx.len())
            .finish_non_exhaustive()
    }
}

/// One worker's connection to the backplane thread. Owned by the worker;
/// `Send`, not shared.
///
/// Calling order, per worker loop (see relay-replication's README):
///
/// 1. [`try_recv`](Self::try_recv) until `None`, acting on each
///    [`WorkerEvent`] with the worker's outbox.
/// 2. Commits, re-seeds, `outbox.poll_transmit(&mut batch)`.
/// 3. [`send`](Self::send) the batch to the peer (one per loop).
pub struct WorkerPort {
    worker: u16,
    relay: RelayId,
    /// Per peer: its queue and the generation of the last `PeerReset`
    /// this worker took (0: none yet).
    peers: Vec<(Arc<PeerQueue>, u64)>,
    events: Receiver<Tagged>,
    counters: Arc<AtomicCounters>,
    closed: Arc<AtomicBool>,
}

impl fmt::Debug for WorkerPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerPort")
            .field("stream", &self.stream())
            .field("pending_events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl WorkerPort {
    pub(crate) fn new(
        worker: u16,
        relay: RelayId,
        peers: Vec<Arc<PeerQueue>>,
        events: Receiver<Tagged>,
        counters: Arc<AtomicCounters>,
        closed: Arc<AtomicBool>,
    ) -> Self {
        WorkerPort {
            worker,
            relay,
            peers: peers.into_iter().map(|q| (q, 0)).collect(),
            events,
            counters,
            closed,
        }
    }

    /// The worker's number.
    pub fn worker(&self) -> u16 {
        self.worker
    }

    /// The stream this worker's outbox must send on.
    pub fn stream(&self) -> StreamId {
        StreamId::new(self.relay, self.worker)
    }

    /// The configured peers.
    pub fn peers(&self) -> impl Iterator<Item = RelayId> + '_ {
        self.peers.iter().map(|(q, _)| q.id)
    }

    /// The next event, if any. Acks and resync requests from a connection
    /// older than the last [`WorkerEvent::PeerReset`] handed out are
    /// skipped (they number another stream instance).
    pub fn try_recv(&mut self) -> Option<WorkerEvent> {
        loop {
            let Tagged { generation, event } = self.events.try_recv().ok()?;
            match &event {
                WorkerEvent::PeerReset(p) => {
                    if let Some(e) = self.peers.iter_mut().find(|(q, _)| q.id == *p) {
                        e.1 = generation;
                    }
                }
                WorkerEvent::Ack { peer, .. } | WorkerEvent::Resync { peer, .. } => {
                    let current = self.peers.iter().find(|(q, _)| q.id == *peer);
                    if current.is_none_or(|(_, g)| *g != generation) {
                        continue;
                    }
                }
                _ => {}
            }
            return Some(event);
        }
    }

    /// `peer`'s queue and the generation of the last `PeerReset` taken.
    fn queue_of(&self, peer: RelayId) -> Result<(&PeerQueue, u64), Error> {
        self.peers
            .iter()
            .find(|(q, _)| q.id == peer)
            .map(|(q, g)| (&**q, *g))
            .ok_or(Error::UnknownPeer(peer))
    }

    /// The worker found `peer` inconsistent on the current connection (an
    /// ack or resync request for a sequence number never sent:
    /// `Outbox::handle_ack` or `handle_resync` returned an error): the
    /// connection is closed (counted in `protocol_errors`) and the streams
    /// restart whole on the next one. Nothing happens if that connection
    /// is gone already.
    pub fn reset_connection(&self, peer: RelayId) -> Result<(), Error> {
        let (q, generation) = self.queue_of(peer)?;
        if generation != 0 && q.live.load(Ordering::Acquire) == generation {
            tracing::warn!(
                peer,
                worker = self.worker,
                "backplane: worker resets the connection"
            );
            bump(&self.counters.protocol_errors);
            q.reset.store(true, Ordering::Release);
            q.writer_wake.notify_one();
        }
        Ok(())
    }

    /// The worker's outbox for `peer` overflowed (it holds its commits):
    /// the live connection closes with [`DisconnectReason::PeerTooSlow`]
    /// and, a few heartbeat intervals later, [`WorkerEvent::PeerDown`]
    /// lets the workers commit locally; the next connection re-seeds.
    pub fn peer_too_slow(&self, peer: RelayId) -> Result<(), Error> {
        let (q, generation) = self.queue_of(peer)?;
        if generation != 0 && q.live.load(Ordering::Acquire) == generation {
            q.too_slow.store(true, Ordering::Release);
            q.writer_wake.notify_one();
        }
        Ok(())
    }

    /// Hands a batch (the bytes of `outbox.poll_transmit`) to the
    /// backplane for `peer`, without blocking. It travels on the
    /// connection of the last [`WorkerEvent::PeerReset`] taken from
    /// [`try_recv`](Self::try_recv).
    ///
    /// Errors: [`Error::UnknownPeer`]; [`Error::NotConnected`] (that
    /// connection is gone: harmless, the batch is dropped and the next
    /// `PeerReset` re-seeds); [`Error::QueueFull`] (dropped, and the
    /// connection is reset so that the stream restarts whole);
    /// [`Error::Shutdown`].
    pub fn send(&self, peer: RelayId, bytes: Vec<u8>) -> Result<(), Error> {
        let (q, generation) = self.queue_of(peer)?;
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        if bytes.is_empty() {
            return Ok(());
        }
        if generation == 0 || q.live.load(Ordering::Acquire) != generation {
            bump(&self.counters.stale_batches);
            return Err(Error::NotConnected(peer));
        }
        let batch = Batch {
            worker: self.worker,
            generation,
            bytes,
        };
        if q.tx.len() >= q.max {
            bump(&self.counters.queue_full);
            q.reset.store(true, Ordering::Release);
            q.writer_wake.notify_one();
            return Err(Error::QueueFull(peer));
        }
        match q.tx.try_send(batch) {
            Ok(()) => {
                q.writer_wake.notify_one();
                Ok(())
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Error::Shutdown),
        }
    }
}
