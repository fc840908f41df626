//! Counters for metrics, per backplane (no global registry: two relays
//! run in one test process).

use std::sync::atomic::{AtomicU64, Ordering};

use relay_replication::{HEADER_LEN, Kind};

/// Number of message kind slots: index 0 counts unknown kinds, 1..=10
/// the known ones by wire value.
const KIND_SLOTS: usize = 11;

fn slot(kind: Kind) -> usize {
    match kind {
        Kind::Unknown(_) => 0,
        k => usize::from(k.to_u8()).min(KIND_SLOTS - 1),
    }
}

/// Message counts by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCounts([u64; KIND_SLOTS]);

impl KindCounts {
    /// The count for `kind` (all unknown kinds share one count).
    pub fn get(&self, kind: Kind) -> u64 {
        self.0[slot(kind)]
    }

    /// Every known kind with its count, then the unknown ones
    /// (`Kind::Unknown(0)`).
    pub fn iter(&self) -> impl Iterator<Item = (Kind, u64)> + '_ {
        (1..KIND_SLOTS)
            .map(|i| (Kind::from_u8(i as u8), self.0[i]))
            .chain(std::iter::once((Kind::Unknown(0), self.0[0])))
    }

    /// Sum over every kind.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// A snapshot of a backplane's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// TCP connections accepted on the listen address (before any check).
    pub connections_accepted: u64,
    /// Outbound dial attempts.
    pub dials: u64,
    /// Connections that passed every check and became a peer's live
    /// connection.
    pub connections_established: u64,
    /// Established connections to a peer that had one before.
    pub reconnects: u64,
    /// Live connections that ended.
    pub disconnects: u64,
    /// TLS handshakes that failed for another reason than the other end's
    /// certificate (network, timeout, protocol mismatch), both directions,
    /// and connections the other end closed before its hello (it refused
    /// us, or closed a duplicate).
    pub rejected_handshake: u64,
    /// Connections refused because the other end is not a configured peer:
    /// a certificate not from the cluster CA (or none), a certificate that
    /// names no configured peer at the address it came from, a hello that
    /// claims another relay. They got nothing from us.
    pub rejected_unauthorised: u64,
    /// Connections closed because they sent bytes the deframer refused
    /// (garbage, a bad header, an undecodable body).
    pub rejected_malformed: u64,
    /// Connections closed for a protocol violation other than framing (a
    /// standby error, an ack for a stream that is not ours, a second hello).
    pub protocol_errors: u64,
    /// Duplicate connections closed by the tie-break (one live connection
    /// per peer pair).
    pub duplicates_closed: u64,
    /// Worker batches dropped because their connection was gone.
    pub stale_batches: u64,
    /// Worker batches dropped because the peer's queue was full (the
    /// connection is reset).
    pub queue_full: u64,
    /// Worker batches dropped because they were not well-formed envelopes
    /// of the worker's own stream (a bug in the caller; the connection is
    /// reset).
    pub bad_batches: u64,
    /// Events to the app dropped because it did not read them.
    pub events_dropped: u64,
    /// Messages received, by kind.
    pub messages_in: KindCounts,
    /// Messages sent, by kind.
    pub messages_out: KindCounts,
    /// Backplane bytes received (plaintext, all peers).
    pub bytes_in: u64,
    /// Backplane bytes sent (plaintext, all peers).
    pub bytes_out: u64,
    /// Front-path heartbeats sent (all peers).
    pub front_sent: u64,
    /// Front-path heartbeats accepted (all peers).
    pub front_heard: u64,
    /// Datagrams on the front-path port refused: not a beat, a stranger,
    /// a bad tag, a replay, or no key yet.
    pub front_refused: u64,
    /// Times a peer was found alive with its backplane lost.
    pub backplane_lost: u64,
    /// Datagram heartbeats accepted over the backplane link (all peers).
    pub backplane_beats_heard: u64,
    /// A peer's flows dropped from the standby store instead of being
    /// adopted or kept: the peer was heard alive after its connection
    /// ended, so it may have committed without us since.
    pub stale_flows_dropped: u64,
}

/// The live counters.
#[derive(Debug, Default)]
pub(crate) struct AtomicCounters {
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) dials: AtomicU64,
    pub(crate) connections_established: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) disconnects: AtomicU64,
    pub(crate) rejected_handshake: AtomicU64,
    pub(crate) rejected_unauthorised: AtomicU64,
    pub(crate) rejected_malformed: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) duplicates_closed: AtomicU64,
    pub(crate) stale_batches: AtomicU64,
    pub(crate) queue_full: AtomicU64,
    pub(crate) bad_batches: AtomicU64,
    pub(crate) events_dropped: AtomicU64,
    messages_in: [AtomicU64; KIND_SLOTS],
    messages_out: [AtomicU64; KIND_SLOTS],
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) front_sent: AtomicU64,
    pub(crate) front_heard: AtomicU64,
    pub(crate) front_refused: AtomicU64,
    pub(crate) backplane_lost: AtomicU64,
    pub(crate) backplane_beats_heard: AtomicU64,
    pub(crate) stale_flows_dropped: AtomicU64,
}

/// Adds one; relaxed: counters order nothing.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl AtomicCounters {
    pub(crate) fn message_in(&self, kind: Kind) {
        bump(&self.messages_in[slot(kind)]);
    }

    /// Counts the envelopes of an outgoing buffer by kind.
    pub(crate) fn messages_out(&self, buf: &[u8]) {
        let _ = walk(buf, |kind, _, _| bump(&self.messages_out[slot(kind)]));
    }

    pub(crate) fn snapshot(&self) -> Counters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let kinds = |a: &[AtomicU64; KIND_SLOTS]| {
            let mut k = KindCounts::default();
            for (i, c) in a.iter().enumerate() {
                k.0[i] = get(c);
            }
            k
        };
        Counters {
            connections_accepted: get(&self.connections_accepted),
            dials: get(&self.dials),
            connections_established: get(&self.connections_established),
            reconnects: get(&self.reconnects),
            disconnects: get(&self.disconnects),
            rejected_handshake: get(&self.rejected_handshake),
            rejected_unauthorised: get(&self.rejected_unauthorised),
            rejected_malformed: get(&self.rejected_malformed),
            protocol_errors: get(&self.protocol_errors),
            duplicates_closed: get(&self.duplicates_closed),
            stale_batches: get(&self.stale_batches),
            queue_full: get(&self.queue_full),
            bad_batches: get(&self.bad_batches),
            events_dropped: get(&self.events_dropped),
            messages_in: kinds(&self.messages_in),
            messages_out: kinds(&self.messages_out),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            front_sent: get(&self.front_sent),
            front_heard: get(&self.front_heard),
            front_refused: get(&self.front_refused),
            backplane_lost: get(&self.backplane_lost),
            backplane_beats_heard: get(&self.backplane_beats_heard),
            stale_flows_dropped: get(&self.stale_flows_dropped),
        }
    }
}

/// Walks the envelope headers of an encoded buffer, calling `f(kind,
/// stream relay, stream worker)` for each. `Err` if the buffer is not a
/// whole number of envelopes (headers are read, bodies are skipped by
/// their length; the bodies themselves are the peer's to check).
pub(crate) fn walk(mut buf: &[u8], mut f: impl FnMut(Kind, u16, u16)) -> Result<(), ()> {
    while !buf.is_empty() {
        if buf.len() < HEADER_LEN || buf[..2] != relay_replication::MAGIC {
            return Err(());
        }
        let kind = Kind::from_u8(buf[3]);
        let relay = u16::from_be_bytes([buf[4], buf[5]]);
        let worker = u16::from_be_bytes([buf[6], buf[7]]);
        let len = u32::from_be_bytes([buf[16], buf[17], buf[18], buf[19]]) as usize;
        let total = HEADER_LEN.checked_add(len).ok_or(())?;
        if buf.len() < total {
            return Err(());
        }
        f(kind, relay, worker);
        buf = &buf[total..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use relay_replication::{Envelope, Message, StreamId};

    use super::*;

    #[test]
    fn walk_counts_whole_envelopes_and_refuses_cut_ones() {
        let mut buf = Vec::new();
        Envelope::control(3, Message::HandoffDone)
            .encode(&mut buf)
            .unwrap();
        Envelope::control(
            3,
            Message::Ack {
                stream: StreamId::new(4, 1),
                seq: 9,
            },
        )
        .encode(&mut buf)
        .unwrap();
        let mut seen = Vec::new();
        walk(&buf, |k, r, w| seen.push((k, r, w))).unwrap();
        assert_eq!(
            seen,
            vec![
                (Kind::HandoffDone, 3, StreamId::CONTROL_WORKER),
                (Kind::Ack, 3, StreamId::CONTROL_WORKER)
            ]
        );
        assert!(walk(&buf[..buf.len() - 1], |_, _, _| {}).is_err());
        assert!(walk(b"garbage that is long enough for a header", |_, _, _| {}).is_err());

        let c = AtomicCounters::default();
        c.messages_out(&buf);
        c.message_in(Kind::Unknown(77));
        let s = c.snapshot();
        assert_eq!(s.messages_out.get(Kind::Ack), 1);
        assert_eq!(s.messages_out.total(), 2);
        assert_eq!(s.messages_in.get(Kind::Unknown(5)), 1);
    }
}
