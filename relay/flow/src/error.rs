//! Errors of the flow layer.

/// Why a flow operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// A checkpoint from the backplane does not decode or is inconsistent.
    #[error("flow checkpoint: bad {0}")]
    Checkpoint(&'static str),
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
