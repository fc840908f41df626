//! The crate's one error type, and the named ways a client breaks the record protocol.

use std::path::PathBuf;

use rustls::AlertDescription;

/// How a client broke the record protocol after the handshake. Each maps to the
/// alert the relay sends before it closes ([`Violation::alert`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A record failed AEAD authentication, or was too short to hold a tag
    /// (RFC 8446 5.2 / RFC 5246 6.2.3.3): `bad_record_mac`.
    #[error("record failed authentication")]
    BadRecordMac,
    /// A record's length field exceeds the ciphertext limit (RFC 8446 5.2:
    /// 2^14 + 256; RFC 5246 6.2.3: 2^14 + 2048): `record_overflow`.
    #[error("record length {0} exceeds the limit")]
    RecordOverflow(usize),
    /// A decrypted record holds more than 2^14 bytes of plaintext: `record_overflow`.
    #[error("decrypted record of {0} bytes exceeds 2^14")]
    PlaintextOverflow(usize),
    /// The record header names a content type this layer does not accept in
    /// this place (RFC 8446 5: `unexpected_message`).
    #[error("unexpected record content type {0}")]
    UnexpectedContentType(u8),
    /// The record header's legacy version is not 0x0303: `decode_error`.
    #[error("record version {0:#06x} is not 0x0303")]
    BadRecordVersion(u16),
    /// A TLS 1.3 inner plaintext with no non-zero byte (RFC 8446 5.4): `unexpected_message`.
    #[error("TLS 1.3 record without an inner content type")]
    MissingInnerContentType,
    /// An empty handshake or alert record (RFC 8446 5.1): `unexpected_message`.
    #[error("empty handshake or alert record")]
    EmptyFragment,
    /// A handshake message the relay does not accept after the handshake
    /// (`unexpected_message`); the value is the handshake type.
    #[error("unexpected post-handshake message type {0}")]
    UnexpectedHandshake(u8),
    /// A KeyUpdate whose body is not one byte of 0 or 1 (RFC 8446 4.6.3): `decode_error`.
    #[error("malformed KeyUpdate")]
    BadKeyUpdate,
    /// A handshake message spans a key change (RFC 8446 5.1): `unexpected_message`.
    #[error("handshake message spans a key change")]
    HandshakeSpansKeyChange,
    /// An alert record that is not exactly two bytes: `decode_error`.
    #[error("malformed alert")]
    BadAlert,
    /// A TLS 1.3 peer sent a KeyUpdate where TLS 1.2 is running, or the other
    /// way round: `unexpected_message`.
    #[error("KeyUpdate on a TLS 1.2 connection")]
    KeyUpdateInTls12,
}

impl Violation {
    /// The alert the relay sends for this violation.
    pub fn alert(self) -> AlertDescription {
        match self {
            Violation::BadRecordMac => AlertDescription::BadRecordMac,
            Violation::RecordOverflow(_) | Violation::PlaintextOverflow(_) => {
                AlertDescription::RecordOverflow
            }
            Violation::BadRecordVersion(_) | Violation::BadKeyUpdate | Violation::BadAlert => {
                AlertDescription::DecodeError
            }
            Violation::UnexpectedContentType(_)
            | Violation::MissingInnerContentType
            | Violation::EmptyFragment
            | Violation::UnexpectedHandshake(_)
            | Violation::HandshakeSpansKeyChange
            | Violation::KeyUpdateInTls12 => AlertDescription::UnexpectedMessage,
        }
    }
}

/// What is wrong with bytes given to an `import` function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended early (in the named field).
    #[error("truncated in {0}")]
    Truncated(&'static str),
    /// The first byte is an encoding version this build does not read.
    #[error("unknown encoding version {0}")]
    UnknownFormat(u8),
    /// Bytes remain after the encoded value.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
    /// A cipher suite this build does not run.
    #[error("unknown cipher suite {0:#06x}")]
    UnknownSuite(u16),
    /// A protocol version other than 1.2/1.3, or one that does not match the suite.
    #[error("bad protocol version {0:#06x}")]
    BadVersion(u16),
    /// A key, IV or secret of the wrong length for the suite.
    #[error("bad {0} length")]
    BadLength(&'static str),
    /// The TLS 1.3 key/IV do not derive from the traffic secret (corrupt state).
    #[error("key and IV do not derive from the traffic secret")]
    KeyMismatch,
    /// The two directions name different suites.
    #[error("read and write directions disagree on the suite")]
    SuiteMismatch,
    /// A flag or pending-control value outside its range.
    #[error("bad {0} value")]
    BadValue(&'static str),
}

impl From<relay_codec::CodecError> for DecodeError {
    /// Keeps the field's name: a short input is [`DecodeError::Truncated`],
    /// trailing bytes [`DecodeError::TrailingBytes`], anything else a
    /// [`DecodeError::BadValue`].
    fn from(e: relay_codec::CodecError) -> Self {
        use relay_codec::CodecError;
        match e {
            CodecError::Short { what, .. } => DecodeError::Truncated(what),
            CodecError::Trailing { left } => DecodeError::TrailingBytes(left),
            CodecError::Invalid { what } | CodecError::VarintTooLong { what } => {
                DecodeError::BadValue(what)
            }
        }
    }
}

/// The relay-tls error. Each variant says which side caused it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Operator: a configured file could not be read.
    #[error("cannot read {path}: {source}")]
    ConfigIo {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Operator: a configured file holds the wrong thing (no certificate, no
    /// key, a key that does not match the certificate, ...).
    #[error("{path}: {what}")]
    ConfigFile {
        /// The file (for in-memory PEM, the label the caller gave it).
        path: PathBuf,
        /// What is wrong, for the operator.
        what: String,
    },
    /// Operator: a setting is wrong.
    #[error("{field}: {what}")]
    Config {
        /// The setting.
        field: &'static str,
        /// What is wrong, for the operator.
        what: String,
    },
    /// Client (or internal): the handshake failed; rustls' verdict. The alert
    /// for the client, if any, is waiting in the driver's output.
    #[error("handshake failed: {0}")]
    Handshake(rustls::Error),
    /// Client: it broke the record protocol; the alert is queued and the
    /// connection is closed.
    #[error("client violated the record protocol ({0}); alert {alert:?}", alert = .0.alert())]
    Peer(Violation),
    /// Client: it sent a fatal alert; the connection is closed.
    #[error("client sent alert {0:?}")]
    PeerAlert(AlertDescription),
    /// Peer relay or storage: exported state bytes could not be imported.
    #[error("cannot import TLS state: {0}")]
    Decode(#[from] DecodeError),
    /// Caller: the call is not allowed in this state (e.g. sealing after
    /// close_notify, a record plan that does not add up).
    #[error("{0}")]
    Usage(&'static str),
    /// Internal: a should-not-happen condition (a crypto call failed, the
    /// captured secrets do not match the connection).
    #[error("internal: {0}")]
    Internal(&'static str),
}
