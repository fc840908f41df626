//! The flow checkpoint: everything an adopter needs, as plain data.
//!
//! See `docs/flow-design.md` for what each part is for. The encoding is
//! `RFLW`, a version byte, the flow id (`u16` relay, `u16` worker, `u64`
//! counter) and commit number (`u32` epoch, `u64` n) as the replication
//! protocol writes them, then the fields in order, big-endian, each
//! variable part length-prefixed, written and read with `relay_codec`.
//! Decoding never panics: a peer that lies on the backplane gets a
//! [`FlowError::Checkpoint`] naming the field.

use std::net::{Ipv4Addr, SocketAddrV4};

use relay_codec::{Reader, Writer};
use relay_tcp::Checkpoint;
use relay_tls::{KeyCheck, TrafficState};

use crate::error::FlowError;
use crate::outbox::{CommitNo, FlowId};

const MAGIC: &[u8; 4] = b"RFLW";
/// Encoding version of [`FlowCheckpoint::to_bytes`].
pub const FLOW_CHECKPOINT_VERSION: u8 = 4;
/// Largest partial record carried (a TLS record is at most 2^14 + 256 bytes
/// of body plus a 5-byte header).
pub const MAX_PARTIAL: usize = (1 << 14) + 256 + 5;
/// Most handshake tail bytes a checkpoint carries (a few session ticket
/// records in practice).
pub const MAX_HS_TAIL: usize = 1 << 14;
/// Most backend plaintext a checkpoint carries past the downstream
/// release point (two records' worth: one being sealed, one arriving).
pub const MAX_DOWN_PARTIAL: usize = 2 << 14;
/// Most planned batches a checkpoint may carry.
pub const MAX_BATCHES: usize = 4096;

/// Records planned together and committed before they were sealed: the
/// adopter seals the same plaintext with `state_before` and `sizes` and gets
/// the same bytes (AEAD nonces derive from the sequence number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedBatch {
    /// The write side (and control records owed) before the first record.
    pub state_before: TrafficState,
    /// Offset in the relay -> client stream of the batch's first byte.
    pub client_off: u64,
    /// Offset in the backend -> relay stream of its first plaintext byte.
    pub plain_off: u64,
    /// Plaintext size of each application-data record, in order.
    pub sizes: Vec<u16>,
    /// close_notify and FIN follow the batch (the backend closed).
    pub close: bool,
}

impl PlannedBatch {
    /// Plaintext bytes the batch covers.
    pub fn plaintext_len(&self) -> u64 {
        self.sizes.iter().map(|&s| u64::from(s)).sum()
    }
}

/// What the flow is, for operators (`relay flows`) and for the adopter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowMeta {
    /// Index of the service in the configuration.
    pub service: u16,
    /// The backend the flow talks to.
    pub backend: SocketAddrV4,
    /// SNI the client sent.
    pub server_name: Option<String>,
    /// ALPN protocol chosen.
    pub alpn: Option<Vec<u8>>,
    /// The TLS session was resumed.
    pub resumed: bool,
}

/// A flow's state as of one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowCheckpoint {
    /// The flow (unique in the cluster; kept across adoptions).
    pub id: FlowId,
    /// The commit this is the state as of. Deltas name their base by it
    /// ([`encode_delta`](crate::encode_delta)); an adopter continues in
    /// the epoch after its epoch.
    pub commit: CommitNo,
    /// Client connection. `rcv_rel` is the upstream release point and
    /// `snd_una` the first byte of the first unacknowledged planned batch.
    pub front: Checkpoint,
    /// Backend connection. `rcv_rel` is the downstream release point and
    /// `snd_una` the plaintext end of the last released client record.
    pub back: Checkpoint,
    /// Record protection: the read half as of the upstream release point,
    /// the write half (and control records owed) after every planned batch.
    pub traffic: TrafficState,
    /// Client ciphertext past the last opened record, up to the release
    /// point (a record the client has only partly sent).
    pub partial: Vec<u8>,
    /// Handshake output the client has not acknowledged (session tickets
    /// after the client's Finished): the client-bound bytes just before
    /// `down_client_off`, which an adopter sends again before any batch.
    pub hs_tail: Vec<u8>,
    /// Backend plaintext from `down_plain_off` on that this relay has
    /// acknowledged to the backend although the client has not
    /// acknowledged the records carrying it (`back.rcv_rel` is
    /// `down_plain_off` plus its length). Only an adopter replaying its
    /// predecessor's plan carries any: the backend retransmits one segment
    /// at a time then, and a record that waited for all of its segments
    /// before any was acknowledged would wait one retransmission timeout
    /// per segment.
    pub down_partial: Vec<u8>,
    /// Client stream offset of the upstream release point.
    pub up_client_off: u64,
    /// Backend-bound plaintext offset at the end of the last opened record.
    pub up_plain_off: u64,
    /// Client-bound stream offset of the first unacknowledged batch (or of
    /// the end of the stream sent so far when every batch is acknowledged).
    pub down_client_off: u64,
    /// Backend plaintext offset matching `down_client_off`: the downstream
    /// release point.
    pub down_plain_off: u64,
    /// Planned batches from `down_client_off` on, oldest first.
    pub batches: Vec<PlannedBatch>,
    /// Operator-facing facts.
    pub meta: FlowMeta,
}

impl FlowCheckpoint {
    /// Encodes the checkpoint.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512 + self.partial.len());
        let mut w = Writer::new(&mut out);
        w.bytes(MAGIC);
        w.u8(FLOW_CHECKPOINT_VERSION);
        w.u16(self.id.relay);
        w.u16(self.id.worker);
        w.u64(self.id.counter);
        w.u32(self.commit.epoch);
        w.u64(self.commit.n);
        w.block(&self.front.to_bytes());
        w.block(&self.back.to_bytes());
        w.block(&self.traffic.export());
        w.block(&self.partial);
        w.block(&self.hs_tail);
        w.block(&self.down_partial);
        for v in [
            self.up_client_off,
            self.up_plain_off,
            self.down_client_off,
            self.down_plain_off,
        ] {
            w.u64(v);
        }
        // At most MAX_BATCHES batches of at most 64 records (decode checks).
        w.u32(self.batches.len() as u32);
        for b in &self.batches {
            w.block(&b.state_before.export());
            w.u64(b.client_off);
            w.u64(b.plain_off);
            w.bool(b.close);
            w.u32(b.sizes.len() as u32);
            for &s in &b.sizes {
                w.u16(s);
            }
        }
        let m = &self.meta;
        w.u16(m.service);
        w.bytes(&m.backend.ip().octets());
        w.u16(m.backend.port());
        w.block(m.server_name.as_deref().unwrap_or("").as_bytes());
        w.bool(m.server_name.is_some());
        w.block(m.alpn.as_deref().unwrap_or(&[]));
        w.bool(m.alpn.is_some());
        w.bool(m.resumed);
        out
    }

    /// Decodes and validates a checkpoint written by [`Self::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FlowError> {
        Self::decode(bytes, KeyCheck::Derive)
    }

    /// Decodes a checkpoint a standby stored (it passed [`from_bytes`]'s
    /// structure checks, or was built by [`apply_delta`](crate::apply_delta)),
    /// without deriving every TLS 1.3 key again. A standby rebuilds its
    /// peer's checkpoint for every delta, and the derivations (four HKDF
    /// expansions for the traffic state and for each planned batch's) were
    /// nearly half its backplane thread's time in a bulk transfer; the
    /// adopter decodes with [`from_bytes`](Self::from_bytes).
    pub fn from_stored_bytes(bytes: &[u8]) -> Result<Self, FlowError> {
        Self::decode(bytes, KeyCheck::Skip)
    }

    fn decode(bytes: &[u8], check: KeyCheck) -> Result<Self, FlowError> {
        let mut r = Reader::new(bytes);
        if r.take(4, "magic")? != MAGIC {
            return Err(FlowError::Checkpoint("magic"));
        }
        let version = r.u8("version")?;
        if version != FLOW_CHECKPOINT_VERSION {
            return Err(FlowError::Checkpoint("version"));
        }
        let id = FlowId {
            relay: r.u16("flow relay")?,
            worker: r.u16("flow worker")?,
            counter: r.u64("flow counter")?,
        };
        let commit = CommitNo::new(r.u32("commit epoch")?, r.u64("commit n")?);
        let front = Checkpoint::from_bytes(r.block("front")?)
            .map_err(|_| FlowError::Checkpoint("front"))?;
        let back =
            Checkpoint::from_bytes(r.block("back")?).map_err(|_| FlowError::Checkpoint("back"))?;
        let traffic = TrafficState::import_with(r.block("traffic")?, check)
            .map_err(|_| FlowError::Checkpoint("traffic"))?;
        let partial = r.block("partial")?.to_vec();
        if partial.len() > MAX_PARTIAL {
            return Err(FlowError::Checkpoint("partial"));
        }
        let hs_tail = r.block("hs_tail")?.to_vec();
        if hs_tail.len() > MAX_HS_TAIL {
            return Err(FlowError::Checkpoint("hs_tail"));
        }
        let down_partial = r.block("down_partial")?.to_vec();
        if down_partial.len() > MAX_DOWN_PARTIAL {
            return Err(FlowError::Checkpoint("down_partial"));
        }
        let up_client_off = r.u64("up_client_off")?;
        let up_plain_off = r.u64("up_plain_off")?;
        let down_client_off = r.u64("down_client_off")?;
        let down_plain_off = r.u64("down_plain_off")?;
        let n = r.u32("batches")? as usize;
        if n > MAX_BATCHES {
            return Err(FlowError::Checkpoint("batches"));
        }
        let mut batches = Vec::with_capacity(n);
        for _ in 0..n {
            let state_before = TrafficState::import_with(r.block("batch state")?, check)
                .map_err(|_| FlowError::Checkpoint("batch state"))?;
            if state_before.suite != traffic.suite {
                return Err(FlowError::Checkpoint("batch suite"));
            }
            let client_off = r.u64("batch client_off")?;
            let plain_off = r.u64("batch plain_off")?;
            let close = r.bool("batch close")?;
            let count = r.u32("batch sizes")? as usize;
            if count > 64 {
                return Err(FlowError::Checkpoint("batch sizes"));
            }
            let mut sizes = Vec::with_capacity(count);
            for _ in 0..count {
                let s = r.u16("batch size")?;
                if s == 0 || s > 1 << 14 {
                    return Err(FlowError::Checkpoint("batch size"));
                }
                sizes.push(s);
            }
            batches.push(PlannedBatch {
                state_before,
                client_off,
                plain_off,
                sizes,
                close,
            });
        }
        let service = r.u16("service")?;
        let ip = Ipv4Addr::from(r.array::<4>("backend")?);
        let port = r.u16("backend port")?;
        let sni = r.block("server_name")?;
        let server_name = if r.bool("server_name flag")? {
            Some(
                String::from_utf8(sni.to_vec())
                    .map_err(|_| FlowError::Checkpoint("server_name"))?,
            )
        } else {
            None
        };
        let alpn = r.block("alpn")?.to_vec();
        let alpn = r.bool("alpn flag")?.then_some(alpn);
        let resumed = r.bool("resumed")?;
        r.finish()?;
        let ck = FlowCheckpoint {
            id,
            commit,
            front,
            back,
            traffic,
            partial,
            hs_tail,
            down_partial,
            up_client_off,
            up_plain_off,
            down_client_off,
            down_plain_off,
            batches,
            meta: FlowMeta {
                service,
                backend: SocketAddrV4::new(ip, port),
                server_name,
                alpn,
                resumed,
            },
        };
        ck.validate()?;
        Ok(ck)
    }

    /// Checks that the parts agree with each other.
    pub fn validate(&self) -> Result<(), FlowError> {
        if self.partial.len() > MAX_PARTIAL {
            return Err(FlowError::Checkpoint("partial"));
        }
        if (self.partial.len() as u64) > self.up_client_off {
            return Err(FlowError::Checkpoint("partial longer than the stream"));
        }
        if self.hs_tail.len() > MAX_HS_TAIL || self.hs_tail.len() as u64 > self.down_client_off {
            return Err(FlowError::Checkpoint("hs_tail"));
        }
        if self.down_partial.len() > MAX_DOWN_PARTIAL
            || self
                .down_plain_off
                .checked_add(self.down_partial.len() as u64)
                .is_none()
        {
            return Err(FlowError::Checkpoint("down_partial"));
        }
        let mut client = self.down_client_off;
        let mut plain = self.down_plain_off;
        for b in &self.batches {
            if b.client_off < client || b.plain_off != plain {
                return Err(FlowError::Checkpoint("batches out of order"));
            }
            client = b.client_off;
            // Offsets count bytes: a peer's can be anything, not a sum past 2^64.
            plain = plain
                .checked_add(b.plaintext_len())
                .ok_or(FlowError::Checkpoint("batch offsets past 2^64"))?;
        }
        Ok(())
    }
}
