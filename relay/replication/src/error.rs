//! The crate's one error type. Each variant says whose side caused it:
//! the **peer** relay (a malformed or out-of-order backplane message: the
//! caller counts it and disconnects the peer) or **internal** (this relay
//! called the API wrongly: a bug to fix, never the peer's doing).

use relay_codec::CodecError;

use crate::ids::{CommitNo, FlowId, RelayId, StreamId};
use crate::message::Kind;

/// What went wrong, and on whose side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Peer: the bytes do not start with the envelope magic (not our
    /// protocol, or the stream lost its framing).
    #[error("backplane: bad envelope magic {got:#06x}")]
    BadMagic {
        /// The two bytes found.
        got: u16,
    },
    /// Peer: an envelope version this build does not read.
    #[error("backplane: unsupported envelope version {got}")]
    EnvelopeVersion {
        /// The version found.
        got: u8,
    },
    /// Peer: an envelope whose body length is above
    /// [`MAX_BODY_LEN`](crate::MAX_BODY_LEN) (a lying length is refused
    /// before anything is buffered for it).
    #[error("backplane: body of {len} bytes exceeds the limit of {max}")]
    BodyTooLong {
        /// The length announced.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// Peer: a message kind this build does not know. The envelope was
    /// consumed; the stream is still framed.
    #[error("backplane: unknown message kind {0}")]
    UnknownKind(u8),
    /// Peer: a message body does not decode (the field is named).
    #[error("backplane: malformed {kind} message: {source}")]
    Malformed {
        /// The message kind.
        kind: Kind,
        /// The field and what is wrong with it.
        source: CodecError,
    },
    /// Peer: a stream message (checkpoint, delta, forget) without a
    /// sequence number, or a control message with one, or on the wrong
    /// kind of stream.
    #[error("backplane: {kind} on stream {stream} with sequence number {seq}")]
    Sequencing {
        /// The message kind.
        kind: Kind,
        /// The envelope's stream.
        stream: StreamId,
        /// The envelope's sequence number.
        seq: u64,
    },
    /// Peer: its hello speaks another protocol version.
    #[error("backplane: peer speaks protocol version {theirs}, we speak {ours}")]
    ProtocolVersion {
        /// Ours.
        ours: u16,
        /// The peer's.
        theirs: u16,
    },
    /// Peer: a hello or a stream from another relay than the one this
    /// connection was authenticated as.
    #[error("backplane: expected relay {expected}, got relay {got}")]
    WrongRelay {
        /// The relay this connection belongs to.
        expected: RelayId,
        /// The relay the message names.
        got: RelayId,
    },
    /// Peer: a stream message before the hello.
    #[error("backplane: {0} before hello")]
    NoHello(Kind),
    /// Peer: a stream of a worker the hello did not announce.
    #[error("backplane: stream {stream} but the peer announced {workers} workers")]
    StreamOutOfRange {
        /// The stream.
        stream: StreamId,
        /// Workers in the peer's hello.
        workers: u16,
    },
    /// Peer: a stream skipped sequence numbers (messages were lost: the
    /// transport is supposed to be reliable and ordered).
    #[error("backplane: stream {stream} jumped from {expected} to {got}")]
    Gap {
        /// The stream.
        stream: StreamId,
        /// The sequence number expected next.
        expected: u64,
        /// The one received.
        got: u64,
    },
    /// Peer: an acknowledgement or resync request for a sequence number
    /// this outbox never sent.
    #[error("backplane: peer refers to sequence number {seq}, highest sent is {sent}")]
    NeverSent {
        /// The sequence number named.
        seq: u64,
        /// The highest sent on this connection.
        sent: u64,
    },
    /// Peer: a message this side does not take (an ack handed to a
    /// standby, a checkpoint handed to an outbox).
    #[error("backplane: unexpected {0} message")]
    Unexpected(Kind),
    /// Peer (or configuration): more flows than the standby holds; the
    /// flow is refused (and the peer disconnected) rather than acknowledged
    /// without being stored.
    #[error("standby full: {max} flows")]
    StandbyFull {
        /// The configured capacity.
        max: usize,
    },
    /// Internal: a delta whose base is not what the peer holds (ask
    /// [`Outbox::encoding_for`](crate::Outbox::encoding_for) first).
    #[error("flow {flow}: delta from {base}, but the peer holds {held:?}")]
    DeltaBase {
        /// The flow.
        flow: FlowId,
        /// The base the delta was made from.
        base: CommitNo,
        /// The base the peer holds, if any.
        held: Option<CommitNo>,
    },
    /// Internal: a commit number at or below the flow's latest.
    #[error("flow {flow}: commit {commit} does not follow {latest}")]
    CommitBackwards {
        /// The flow.
        flow: FlowId,
        /// The commit given.
        commit: CommitNo,
        /// The flow's latest commit.
        latest: CommitNo,
    },
    /// Internal: a checkpoint or message too large for one envelope.
    #[error("message body of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Internal: an unusable configuration (field named).
    #[error("invalid replication configuration: {0}")]
    InvalidConfig(&'static str),
}
