//! The receiver side: a [`Standby`] store of one peer's flows.

use std::collections::{BTreeMap, HashMap};

use crate::envelope::{Envelope, encode_with};
use crate::error::Error;
use crate::ids::{CommitNo, FlowId, RelayId, StreamId};
use crate::message::{Hello, Kind, Message, PROTOCOL_VERSION};

/// Rebuilds a full checkpoint from a base and a delta. The replication
/// crate treats checkpoints as opaque bytes; the flow layer knows the
/// encoding (`relay_flow::apply_delta`).
pub trait CheckpointCodec {
    /// The full checkpoint that `delta` makes of `base`; an error (for the
    /// log) if the delta does not apply.
    fn apply_delta(&self, base: &[u8], delta: &[u8]) -> Result<Vec<u8>, String>;
}

impl<F> CheckpointCodec for F
where
    F: Fn(&[u8], &[u8]) -> Result<Vec<u8>, String>,
{
    fn apply_delta(&self, base: &[u8], delta: &[u8]) -> Result<Vec<u8>, String> {
        self(base, delta)
    }
}

/// Limits of a standby store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyConfig {
    /// This relay (the acks and resync requests go out on its control stream).
    pub local_relay: RelayId,
    /// Most flows held for the peer; one more is refused with
    /// [`Error::StandbyFull`] (never acknowledged without being stored).
    pub max_flows: usize,
}

impl StandbyConfig {
    /// Defaults for `local_relay`: 1 Mi flows.
    pub fn new(local_relay: RelayId) -> Self {
        StandbyConfig {
            local_relay,
            max_flows: 1 << 20,
        }
    }
}

/// A flow's state handed out for adoption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    /// The flow.
    pub flow: FlowId,
    /// The commit its checkpoint is the state of; the adopter continues in
    /// a higher epoch.
    pub commit: CommitNo,
    /// The full checkpoint.
    pub bytes: Vec<u8>,
}

/// Why a stream message was refused without breaking the connection
/// (counted in [`StandbyStats::rejected`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rejection {
    /// A delta for a flow the store does not hold (answered with a resync).
    UnknownFlow,
    /// A delta whose base is not the commit held (answered with a resync).
    BaseMismatch,
    /// A delta the codec could not apply (answered with a resync).
    BadDelta,
    /// A delta dropped while the flow waits for the full checkpoint a
    /// resync asked for.
    AwaitingFull,
    /// A commit number at or below the one held (the newer state is kept).
    CommitBackwards,
    /// A flow opened by another relay than the sender, in epoch 0: only
    /// an adopter (epoch above 0) replicates another relay's flows.
    ForeignFlow,
    /// A forget older than the state held (the state is kept).
    StaleForget,
}

/// Counters, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StandbyStats {
    /// Full checkpoints stored.
    pub fulls: u64,
    /// Deltas applied.
    pub deltas: u64,
    /// Flows forgotten.
    pub forgets: u64,
    /// Stream messages seen twice (ignored).
    pub duplicates: u64,
    /// Ack messages sent.
    pub acks_sent: u64,
    /// Resync requests sent.
    pub resyncs_sent: u64,
    /// Flows dropped because the peer came back with a new boot epoch.
    pub dropped_on_restart: u64,
    /// Refused messages, by reason.
    pub rejected: BTreeMap<Rejection, u64>,
}

/// Whether a stored flow's chain of deltas is intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chain {
    /// Deltas from `commit` apply.
    Intact,
    /// A delta was dropped and a resync requested: later deltas are
    /// dropped (without another request) until a full checkpoint comes.
    AwaitingFull,
}

#[derive(Debug, Clone)]
struct Entry {
    commit: CommitNo,
    bytes: Vec<u8>,
    chain: Chain,
}

/// Sequence state of one of the peer's worker streams on this connection.
#[derive(Debug, Clone, Copy, Default)]
struct StreamRx {
    /// Highest sequence number applied.
    applied: u64,
    /// Highest sequence number acknowledged.
    acked: u64,
}

/// The current connection's view of the peer (set by its hello).
#[derive(Debug, Clone)]
struct Connection {
    workers: u16,
    streams: BTreeMap<u16, StreamRx>,
}

/// The flows one peer replicates to this relay.
///
/// Calling order, per backplane connection to the peer:
///
/// 1. [`handle_hello`](Self::handle_hello) with the peer's hello: stream
///    sequence numbers restart; stored flows are kept (the peer re-seeds
///    them all with full checkpoints), unless the peer's boot epoch
///    changed (it restarted: its old flows are gone).
/// 2. For each stream envelope ([`Kind::is_stream`]) from the
///    [`Deframer`](crate::Deframer): [`handle`](Self::handle). An `Err` is
///    the peer's fault: count it and disconnect.
/// 3. After a batch of envelopes: [`poll_transmit`](Self::poll_transmit)
///    appends the resync requests and one cumulative ack per stream.
/// 4. When the connection ends: [`disconnected`](Self::disconnected).
///
/// When the peer is declared dead, [`take_all`](Self::take_all) hands out
/// every flow for adoption; a handoff takes a listed set
/// ([`take`](Self::take)).
///
/// A message that is wrong but harmless to the connection (a delta for an
/// unknown flow, a commit number going back, another relay's flow) is
/// refused and counted ([`Rejection`]); no entry is ever replaced by a
/// state older than it, or by a delta applied to the wrong base.
#[derive(Debug)]
pub struct Standby<C> {
    cfg: StandbyConfig,
    peer: RelayId,
    codec: C,
    conn: Option<Connection>,
    /// The boot epoch of the peer's last hello.
    boot_epoch: Option<u32>,
    entries: HashMap<FlowId, Entry>,
    /// Resync requests to send: (stream, seq of the dropped delta, flow).
    resyncs: Vec<(StreamId, u64, FlowId)>,
    stats: StandbyStats,
}

impl<C: CheckpointCodec> Standby<C> {
    /// An empty store for the flows of relay `peer`.
    pub fn new(peer: RelayId, codec: C, cfg: StandbyConfig) -> Self {
        Standby {
            cfg,
            peer,
            codec,
            conn: None,
            boot_epoch: None,
            entries: HashMap::new(),
            resyncs: Vec::new(),
            stats: StandbyStats::default(),
        }
    }

    /// The peer this store is for.
    pub fn peer(&self) -> RelayId {
        self.peer
    }

    /// Counters.
    pub fn stats(&self) -> &StandbyStats {
        &self.stats
    }

    /// Flows held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no flow is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A flow's stored commit and checkpoint.
    pub fn get(&self, flow: FlowId) -> Option<(CommitNo, &[u8])> {
        self.entries
            .get(&flow)
            .map(|e| (e.commit, e.bytes.as_slice()))
    }

    /// The flows held, in no particular order.
    pub fn flows(&self) -> impl Iterator<Item = FlowId> + '_ {
        self.entries.keys().copied()
    }

    /// The peer's hello on a new connection.
    pub fn handle_hello(&mut self, hello: &Hello) -> Result<(), Error> {
        if hello.version != PROTOCOL_VERSION {
            return Err(Error::ProtocolVersion {
                ours: PROTOCOL_VERSION,
                theirs: hello.version,
            });
        }
        if hello.relay != self.peer {
            return Err(Error::WrongRelay {
                expected: self.peer,
                got: hello.relay,
            });
        }
        if self.boot_epoch.is_some_and(|b| b != hello.boot_epoch) && !self.entries.is_empty() {
            // The peer restarted: its flows died with the old process (or
            // were adopted already), and its new flow ids may reuse theirs.
            tracing::info!(
                peer = self.peer,
                flows = self.entries.len(),
                "peer restarted; dropping its old flows"
            );
            self.stats.dropped_on_restart += self.entries.len() as u64;
            self.entries.clear();
        }
        self.boot_epoch = Some(hello.boot_epoch);
        self.conn = Some(Connection {
            workers: hello.workers,
            streams: BTreeMap::new(),
        });
        self.resyncs.clear();
        Ok(())
    }

    /// The connection ended: stream state goes, stored flows stay.
    pub fn disconnected(&mut self) {
        self.conn = None;
        self.resyncs.clear();
    }

    /// Applies one stream envelope in stream order: duplicates are
    /// ignored, a gap is an error.
    pub fn handle(&mut self, env: Envelope) -> Result<(), Error> {
        let kind = env.message.kind();
        if !kind.is_stream() {
            return Err(Error::Unexpected(kind));
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(Error::NoHello(kind));
        };
        if env.stream.relay != self.peer {
            return Err(Error::WrongRelay {
                expected: self.peer,
                got: env.stream.relay,
            });
        }
        if env.stream.worker >= conn.workers {
            return Err(Error::StreamOutOfRange {
                stream: env.stream,
                workers: conn.workers,
            });
        }
        let rx = conn.streams.entry(env.stream.worker).or_default();
        if env.seq <= rx.applied {
            self.stats.duplicates += 1;
            return Ok(());
        }
        if env.seq != rx.applied + 1 {
            return Err(Error::Gap {
                stream: env.stream,
                expected: rx.applied + 1,
                got: env.seq,
            });
        }
        // Checked before `applied` moves: a refused flow is not acknowledged.
        if let Message::FullCheckpoint { flow, .. } = &env.message
            && !self.entries.contains_key(flow)
            && self.entries.len() >= self.cfg.max_flows
        {
            return Err(Error::StandbyFull {
                max: self.cfg.max_flows,
            });
        }
        rx.applied = env.seq;
        self.apply(env.stream, env.seq, env.message);
        Ok(())
    }

    fn apply(&mut self, stream: StreamId, seq: u64, message: Message) {
        match message {
            Message::FullCheckpoint {
                flow,
                commit,
                bytes,
            } => {
                if self.foreign(flow, commit) {
                    return;
                }
                if let Some(e) = self.entries.get(&flow)
                    && commit < e.commit
                {
                    self.reject(Rejection::CommitBackwards, flow);
                    return;
                }
                self.entries.insert(
                    flow,
                    Entry {
                        commit,
                        bytes,
                        chain: Chain::Intact,
                    },
                );
                self.stats.fulls += 1;
            }
            Message::Delta {
                flow,
                base,
                commit,
                bytes,
            } => {
                if self.foreign(flow, commit) {
                    return;
                }
                let Some(e) = self.entries.get_mut(&flow) else {
                    self.reject(Rejection::UnknownFlow, flow);
                    self.resyncs.push((stream, seq, flow));
                    return;
                };
                if e.chain == Chain::AwaitingFull {
                    self.reject(Rejection::AwaitingFull, flow);
                    return;
                }
                if commit <= base {
                    e.chain = Chain::AwaitingFull;
                    self.reject(Rejection::CommitBackwards, flow);
                    self.resyncs.push((stream, seq, flow));
                    return;
                }
                if base != e.commit {
                    e.chain = Chain::AwaitingFull;
                    self.reject(Rejection::BaseMismatch, flow);
                    self.resyncs.push((stream, seq, flow));
                    return;
                }
                match self.codec.apply_delta(&e.bytes, &bytes) {
                    Ok(full) => {
                        e.bytes = full;
                        e.commit = commit;
                        self.stats.deltas += 1;
                    }
                    Err(why) => {
                        tracing::debug!(%flow, %commit, %why, "delta does not apply");
                        e.chain = Chain::AwaitingFull;
                        self.reject(Rejection::BadDelta, flow);
                        self.resyncs.push((stream, seq, flow));
                    }
                }
            }
            Message::Forget { flow, commit } => match self.entries.get(&flow) {
                Some(e) if e.commit <= commit => {
                    self.entries.remove(&flow);
                    self.stats.forgets += 1;
                }
                Some(_) => self.reject(Rejection::StaleForget, flow),
                // Never stored, or already gone: nothing to do.
                None => {}
            },
            // `handle` lets only stream messages through.
            _ => {}
        }
    }

    /// Another relay's flow in its first epoch: not the sender's to send.
    fn foreign(&mut self, flow: FlowId, commit: CommitNo) -> bool {
        let foreign = flow.relay != self.peer && commit.epoch == 0;
        if foreign {
            self.reject(Rejection::ForeignFlow, flow);
        }
        foreign
    }

    fn reject(&mut self, why: Rejection, flow: FlowId) {
        tracing::debug!(peer = self.peer, %flow, ?why, "replication message refused");
        *self.stats.rejected.entry(why).or_default() += 1;
    }

    /// Appends the resync requests, then one cumulative ack per stream
    /// that applied something since the last call (the requests go first,
    /// so the peer learns a delta was dropped before the ack that covers
    /// it). Returns the bytes appended.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        let control = StreamId::control(self.cfg.local_relay);
        for (stream, seq, flow) in self.resyncs.drain(..) {
            // Control bodies are a few bytes: never above MAX_BODY_LEN.
            let _ = encode_with(out, Kind::ResyncRequest, control, 0, |w| {
                Message::ResyncRequest { stream, seq, flow }.write_body(w)
            });
            self.stats.resyncs_sent += 1;
        }
        if let Some(conn) = self.conn.as_mut() {
            for (&worker, rx) in conn.streams.iter_mut() {
                if rx.applied > rx.acked {
                    rx.acked = rx.applied;
                    let stream = StreamId::new(self.peer, worker);
                    let _ = encode_with(out, Kind::Ack, control, 0, |w| {
                        Message::Ack {
                            stream,
                            seq: rx.applied,
                        }
                        .write_body(w)
                    });
                    self.stats.acks_sent += 1;
                }
            }
        }
        out.len() - start
    }

    /// Every flow, for adoption when the peer is dead; the store is then
    /// empty. Sorted by flow id.
    pub fn take_all(&mut self) -> Vec<Adopted> {
        let mut all: Vec<Adopted> = self
            .entries
            .drain()
            .map(|(flow, e)| Adopted {
                flow,
                commit: e.commit,
                bytes: e.bytes,
            })
            .collect();
        all.sort_by_key(|a| a.flow);
        all
    }

    /// The listed flows that are held (a handoff), in the order given.
    pub fn take(&mut self, flows: &[FlowId]) -> Vec<Adopted> {
        flows
            .iter()
            .filter_map(|&flow| {
                self.entries.remove(&flow).map(|e| Adopted {
                    flow,
                    commit: e.commit,
                    bytes: e.bytes,
                })
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "standby_tests.rs"]
mod tests;
