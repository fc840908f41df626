//! The backplane messages and their bodies. The envelope around them is in
//! [`envelope`](crate::envelope); the README lists every field.

use core::fmt;
use core::net::Ipv4Addr;
use core::time::Duration;

use relay_codec::{CodecError, Reader, Writer};
use relay_tcp::Instant;

use crate::error::Error;
use crate::ids::{CommitNo, FlowId, RelayId, StreamId};

/// The protocol version a [`Hello`] announces; peers must agree.
pub const PROTOCOL_VERSION: u16 = 1;

/// Longest relay name in a [`Hello`], bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 64;

/// A message kind, as the envelope carries it. Unknown values are kept
/// (`Unknown`) so that the deframer can frame, skip and name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// [`Message::Hello`].
    Hello,
    /// [`Message::FullCheckpoint`].
    FullCheckpoint,
    /// [`Message::Delta`].
    Delta,
    /// [`Message::Ack`].
    Ack,
    /// [`Message::Forget`].
    Forget,
    /// [`Message::ResyncRequest`].
    ResyncRequest,
    /// [`Message::Heartbeat`].
    Heartbeat,
    /// [`Message::Takeover`].
    Takeover,
    /// [`Message::Handoff`].
    Handoff,
    /// [`Message::HandoffDone`].
    HandoffDone,
    /// A kind this build does not know.
    Unknown(u8),
}

impl Kind {
    /// The wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            Kind::Hello => 1,
            Kind::FullCheckpoint => 2,
            Kind::Delta => 3,
            Kind::Ack => 4,
            Kind::Forget => 5,
            Kind::ResyncRequest => 6,
            Kind::Heartbeat => 7,
            Kind::Takeover => 8,
            Kind::Handoff => 9,
            Kind::HandoffDone => 10,
            Kind::Unknown(v) => v,
        }
    }

    /// The kind of a wire value.
    pub fn from_u8(v: u8) -> Kind {
        match v {
            1 => Kind::Hello,
            2 => Kind::FullCheckpoint,
            3 => Kind::Delta,
            4 => Kind::Ack,
            5 => Kind::Forget,
            6 => Kind::ResyncRequest,
            7 => Kind::Heartbeat,
            8 => Kind::Takeover,
            9 => Kind::Handoff,
            10 => Kind::HandoffDone,
            v => Kind::Unknown(v),
        }
    }

    /// Stream messages travel on a worker's stream with a sequence number
    /// (from 1); every other kind is a control message with sequence 0.
    pub fn is_stream(self) -> bool {
        matches!(self, Kind::FullCheckpoint | Kind::Delta | Kind::Forget)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Kind::Hello => "hello",
            Kind::FullCheckpoint => "full checkpoint",
            Kind::Delta => "delta",
            Kind::Ack => "ack",
            Kind::Forget => "forget",
            Kind::ResyncRequest => "resync request",
            Kind::Heartbeat => "heartbeat",
            Kind::Takeover => "takeover",
            Kind::Handoff => "handoff",
            Kind::HandoffDone => "handoff done",
            Kind::Unknown(v) => return write!(f, "unknown kind {v}"),
        };
        f.write_str(name)
    }
}

/// The first message on a backplane connection, both ways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// The sender's relay id (must match the identity its certificate was
    /// accepted as).
    pub relay: RelayId,
    /// The sender's name, for logs and `relay peers` (at most
    /// [`MAX_NAME_LEN`] bytes).
    pub name: String,
    /// How many worker streams the sender has (its stream workers are
    /// `0..workers`).
    pub workers: u16,
    /// The sender's boot epoch: a restarted relay announces a higher one,
    /// so the peer knows its state is gone.
    pub boot_epoch: u32,
}

/// The echo in a [`Heartbeat`] of the last heartbeat its sender received:
/// the original sender computes the round trip as
/// `now - sent_at - delay`, on its own clock only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Echo {
    /// Sequence number of the heartbeat echoed.
    pub seq: u64,
    /// Its `sent_at`, unchanged (the clock of the relay it came from).
    pub sent_at: Instant,
    /// How long it was held before this heartbeat echoed it.
    pub delay: Duration,
}

/// A liveness probe over the backplane, every
/// [`PeerConfig::interval`](crate::PeerConfig::interval).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sender's heartbeat counter (from 1).
    pub seq: u64,
    /// The sender's clock when sent.
    pub sent_at: Instant,
    /// The last heartbeat the sender received, if any.
    pub echo: Option<Echo>,
}

/// A relay took over services (failover or `relay takeover`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Takeover {
    /// The ownership epoch the taker continues in (above every epoch the
    /// previous owner used).
    pub epoch: u32,
    /// The relay the services were taken from.
    pub from: RelayId,
    /// The services taken (indexes in the cluster configuration).
    pub services: Vec<u16>,
    /// Their VIPs, now answered by the taker.
    pub vips: Vec<Ipv4Addr>,
}

/// One backplane message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Control: the first message on a connection, both ways.
    Hello(Hello),
    /// Stream: a flow's whole checkpoint as of `commit`.
    FullCheckpoint {
        /// The flow.
        flow: FlowId,
        /// The commit it is the state of.
        commit: CommitNo,
        /// The checkpoint encoding (opaque here).
        bytes: Vec<u8>,
    },
    /// Stream: a flow's checkpoint as of `commit`, as a difference from
    /// the checkpoint of `base`, which the receiver must hold.
    Delta {
        /// The flow.
        flow: FlowId,
        /// The commit the delta was made from.
        base: CommitNo,
        /// The commit it brings the flow to.
        commit: CommitNo,
        /// The delta encoding (opaque here: the caller's codec applies it).
        bytes: Vec<u8>,
    },
    /// Control: every stream message of `stream` up to `seq` is applied
    /// (cumulative).
    Ack {
        /// The acknowledged stream (the receiver's).
        stream: StreamId,
        /// Highest sequence number applied.
        seq: u64,
    },
    /// Stream: the flow ended; drop its state if it is not newer than `commit`.
    Forget {
        /// The flow.
        flow: FlowId,
        /// Its last commit.
        commit: CommitNo,
    },
    /// Control: the standby dropped the delta at `seq` of `stream` because
    /// it lacks the delta's base; send a full checkpoint of `flow`.
    ResyncRequest {
        /// The stream the delta came on.
        stream: StreamId,
        /// The delta's sequence number.
        seq: u64,
        /// The flow.
        flow: FlowId,
    },
    /// Control: liveness and round-trip time.
    Heartbeat(Heartbeat),
    /// Control: the sender took over services.
    Takeover(Takeover),
    /// Control: planned move of `flows` to relay `to`; their last commits
    /// precede this message on their streams.
    Handoff {
        /// The relay that takes the flows.
        to: RelayId,
        /// The flows.
        flows: Vec<FlowId>,
    },
    /// Control: the receiver of a [`Message::Handoff`] installed its flows;
    /// the sender may stop serving them.
    HandoffDone,
}

impl Message {
    /// The message's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello(_) => Kind::Hello,
            Message::FullCheckpoint { .. } => Kind::FullCheckpoint,
            Message::Delta { .. } => Kind::Delta,
            Message::Ack { .. } => Kind::Ack,
            Message::Forget { .. } => Kind::Forget,
            Message::ResyncRequest { .. } => Kind::ResyncRequest,
            Message::Heartbeat(_) => Kind::Heartbeat,
            Message::Takeover(_) => Kind::Takeover,
            Message::Handoff { .. } => Kind::Handoff,
            Message::HandoffDone => Kind::HandoffDone,
        }
    }

    /// Writes the body (the envelope adds kind and length).
    pub fn write_body(&self, w: &mut Writer<'_>) {
        match self {
            Message::Hello(h) => {
                w.u16(h.version);
                w.u16(h.relay);
                // Names longer than MAX_NAME_LEN are cut at a char boundary.
                let mut end = h.name.len().min(MAX_NAME_LEN);
                while !h.name.is_char_boundary(end) {
                    end -= 1;
                }
                w.u8(end as u8);
                w.bytes(&h.name.as_bytes()[..end]);
                w.u16(h.workers);
                w.u32(h.boot_epoch);
            }
            Message::FullCheckpoint {
                flow,
                commit,
                bytes,
            } => write_full(w, *flow, *commit, bytes),
            Message::Delta {
                flow,
                base,
                commit,
                bytes,
            } => write_delta(w, *flow, *base, *commit, bytes),
            Message::Ack { stream, seq } => {
                stream.write(w);
                w.u64(*seq);
            }
            Message::Forget { flow, commit } => {
                flow.write(w);
                commit.write(w);
            }
            Message::ResyncRequest { stream, seq, flow } => {
                stream.write(w);
                w.u64(*seq);
                flow.write(w);
            }
            Message::Heartbeat(hb) => {
                w.u64(hb.seq);
                w.u64(hb.sent_at.micros());
                w.bool(hb.echo.is_some());
                if let Some(e) = hb.echo {
                    w.u64(e.seq);
                    w.u64(e.sent_at.micros());
                    w.u64(duration_micros(e.delay));
                }
            }
            Message::Takeover(t) => {
                w.u32(t.epoch);
                w.u16(t.from);
                w.u32(t.services.len() as u32);
                for s in &t.services {
                    w.u16(*s);
                }
                w.u32(t.vips.len() as u32);
                for v in &t.vips {
                    w.bytes(&v.octets());
                }
            }
            Message::Handoff { to, flows } => {
                w.u16(*to);
                w.u32(flows.len() as u32);
                for f in flows {
                    f.write(w);
                }
            }
            Message::HandoffDone => {}
        }
    }

    /// Decodes the body of a message of kind `kind`. Never panics; an
    /// unknown kind is [`Error::UnknownKind`], a bad body
    /// [`Error::Malformed`] naming the field.
    pub fn decode(kind: Kind, body: &[u8]) -> Result<Message, Error> {
        if let Kind::Unknown(v) = kind {
            return Err(Error::UnknownKind(v));
        }
        let mut r = Reader::new(body);
        let m = Self::read_body(kind, &mut r).and_then(|m| r.finish().map(|()| m));
        m.map_err(|source| Error::Malformed { kind, source })
    }

    fn read_body(kind: Kind, r: &mut Reader<'_>) -> Result<Message, CodecError> {
        Ok(match kind {
            Kind::Hello => {
                let version = r.u16("version")?;
                let relay = r.u16("relay")?;
                let len = usize::from(r.u8("name length")?);
                if len > MAX_NAME_LEN {
                    return Err(CodecError::Invalid {
                        what: "name length",
                    });
                }
                let name = core::str::from_utf8(r.take(len, "name")?)
                    .map_err(|_| CodecError::Invalid { what: "name" })?
                    .to_owned();
                Message::Hello(Hello {
                    version,
                    relay,
                    name,
                    workers: r.u16("workers")?,
                    boot_epoch: r.u32("boot epoch")?,
                })
            }
            Kind::FullCheckpoint => Message::FullCheckpoint {
                flow: FlowId::read(r)?,
                commit: CommitNo::read(r, "commit")?,
                bytes: r.rest().to_vec(),
            },
            Kind::Delta => Message::Delta {
                flow: FlowId::read(r)?,
                base: CommitNo::read(r, "base")?,
                commit: CommitNo::read(r, "commit")?,
                bytes: r.rest().to_vec(),
            },
            Kind::Ack => Message::Ack {
                stream: StreamId::read(r, "stream")?,
                seq: r.u64("seq")?,
            },
            Kind::Forget => Message::Forget {
                flow: FlowId::read(r)?,
                commit: CommitNo::read(r, "commit")?,
            },
            Kind::ResyncRequest => Message::ResyncRequest {
                stream: StreamId::read(r, "stream")?,
                seq: r.u64("seq")?,
                flow: FlowId::read(r)?,
            },
            Kind::Heartbeat => {
                let seq = r.u64("seq")?;
                let sent_at = Instant::from_micros(r.u64("sent at")?);
                let echo = if r.bool("echo flag")? {
                    Some(Echo {
                        seq: r.u64("echo seq")?,
                        sent_at: Instant::from_micros(r.u64("echo sent at")?),
                        delay: Duration::from_micros(r.u64("echo delay")?),
                    })
                } else {
                    None
                };
                Message::Heartbeat(Heartbeat { seq, sent_at, echo })
            }
            Kind::Takeover => {
                let epoch = r.u32("epoch")?;
                let from = r.u16("from")?;
                let n = r.count("services", 2)?;
                let mut services = Vec::with_capacity(n);
                for _ in 0..n {
                    services.push(r.u16("service")?);
                }
                let n = r.count("vips", 4)?;
                let mut vips = Vec::with_capacity(n);
                for _ in 0..n {
                    vips.push(Ipv4Addr::from(r.array::<4>("vip")?));
                }
                Message::Takeover(Takeover {
                    epoch,
                    from,
                    services,
                    vips,
                })
            }
            Kind::Handoff => {
                let to = r.u16("to")?;
                let n = r.count("flows", FlowId::LEN)?;
                let mut flows = Vec::with_capacity(n);
                for _ in 0..n {
                    flows.push(FlowId::read(r)?);
                }
                Message::Handoff { to, flows }
            }
            Kind::HandoffDone => Message::HandoffDone,
            // Refused by `decode` before.
            Kind::Unknown(_) => return Err(CodecError::Invalid { what: "kind" }),
        })
    }
}

/// Body length of a full checkpoint message carrying `len` bytes.
pub(crate) const fn full_body_len(len: usize) -> usize {
    FlowId::LEN + CommitNo::LEN + len
}

/// Body length of a delta message carrying `len` bytes.
pub(crate) const fn delta_body_len(len: usize) -> usize {
    FlowId::LEN + 2 * CommitNo::LEN + len
}

/// Body length of a forget message.
pub(crate) const FORGET_BODY_LEN: usize = FlowId::LEN + CommitNo::LEN;

/// The body of [`Message::FullCheckpoint`] from borrowed bytes (the outbox
/// writes without building a `Message`).
pub(crate) fn write_full(w: &mut Writer<'_>, flow: FlowId, commit: CommitNo, bytes: &[u8]) {
    flow.write(w);
    commit.write(w);
    w.bytes(bytes);
}

/// The body of [`Message::Delta`] from borrowed bytes.
pub(crate) fn write_delta(
    w: &mut Writer<'_>,
    flow: FlowId,
    base: CommitNo,
    commit: CommitNo,
    bytes: &[u8],
) {
    flow.write(w);
    base.write(w);
    commit.write(w);
    w.bytes(bytes);
}

pub(crate) fn duration_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
