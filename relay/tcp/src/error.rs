//! The crate's one error type.

/// What went wrong, and on whose side.
///
/// Segments from the network never produce an `Error`: a bad segment is
/// answered the way the RFCs say (an ACK, a challenge ACK, a RST or a silent
/// drop) and counted in [`Stats`](crate::Stats). Errors come from the API:
/// a checkpoint that does not decode, or a call the connection's state does
/// not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Peer relay (or storage): the checkpoint bytes end early.
    #[error("checkpoint truncated: need {needed} bytes, got {got}")]
    CheckpointTruncated {
        /// Bytes the encoding needs.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// Peer relay: the bytes do not start with the checkpoint magic.
    #[error("not a checkpoint (bad magic)")]
    CheckpointMagic,
    /// Peer relay: a checkpoint or delta of a version this build does not know.
    #[error("unsupported checkpoint version {0}")]
    CheckpointVersion(u8),
    /// Peer relay: the checkpoint decodes but breaks an invariant (named).
    #[error("invalid checkpoint: {0}")]
    CheckpointInvalid(&'static str),
    /// Peer relay: a field of a checkpoint or delta does not decode (short,
    /// an invalid value, an overlong varint; the field is named).
    #[error("checkpoint field {0}")]
    CheckpointField(#[from] relay_codec::CodecError),
    /// Peer relay: a delta was made against another base checkpoint.
    #[error("delta does not apply: base tag {expected:#010x}, delta made from {got:#010x}")]
    DeltaBase {
        /// Tag of the checkpoint it was applied to.
        expected: u32,
        /// Tag of the checkpoint the delta was made from.
        got: u32,
    },
    /// Internal: a checkpoint was asked of a connection that is not
    /// synchronized (still in the handshake, or closed).
    #[error("connection in state {0} cannot be checkpointed")]
    NotCheckpointable(crate::State),
    /// Internal: `release_to` was given a point beyond the delivered bytes or
    /// behind the current release point.
    #[error("release point {requested} outside [{current}, {delivered}]")]
    ReleaseOutOfRange {
        /// The requested release point.
        requested: relay_wire::SeqNumber,
        /// The current release point.
        current: relay_wire::SeqNumber,
        /// The end of the delivered bytes (after a delivered FIN).
        delivered: relay_wire::SeqNumber,
    },
    /// Internal: `Connection::accept` was given a segment that is not a
    /// plain SYN.
    #[error("passive open needs a SYN without ACK, RST or FIN")]
    NotASyn,
    /// Internal: the configuration is unusable (field named).
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
}
