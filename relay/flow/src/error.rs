//! Errors of the flow layer.

use relay_replication::CommitNo;

/// Why a flow operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// Peer relay: a checkpoint or delta from the backplane does not decode
    /// or is inconsistent (the part is named).
    #[error("flow checkpoint: bad {0}")]
    Checkpoint(&'static str),
    /// Peer relay (or the caller): a delta made from another commit than
    /// the checkpoint it was applied to. The holder needs a full
    /// checkpoint (or the delta's base) first.
    #[error("flow delta made from commit {base}, applied to the checkpoint of commit {held}")]
    DeltaBase {
        /// The commit the delta was made from.
        base: CommitNo,
        /// The commit of the checkpoint it was applied to.
        held: CommitNo,
    },
    /// The TCP engine refused (e.g. a checkpoint it cannot import).
    #[error("tcp: {0}")]
    Tcp(#[from] relay_tcp::Error),
    /// The TLS layer refused.
    #[error("tls: {0}")]
    Tls(#[from] relay_tls::Error),
    /// The caller used the flow out of order.
    #[error("flow used out of order: {0}")]
    Usage(&'static str),
}

impl From<relay_codec::CodecError> for FlowError {
    /// A field that does not decode is a bad checkpoint; the field's name
    /// is kept (`"trailing bytes"` for bytes after the last field).
    fn from(e: relay_codec::CodecError) -> Self {
        FlowError::Checkpoint(e.what())
    }
}
