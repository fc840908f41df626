//! The record layer's state as plain, versioned data.
//!
//! # Encoding (format version 1)
//!
//! All integers are big-endian. A [`RecordState`] (one direction):
//!
//! ```text
//! u8   format version = 1
//! u16  cipher suite (IANA code point; implies the protocol version)
//! u64  sequence number of the next record in this direction
//! u8   key length, then the AEAD key         (16 or 32)
//! [12] the IV                                (TLS 1.3: RFC 8446 7.3 iv;
//!                                             TLS 1.2 GCM: 4-byte salt || 8-byte
//!                                             explicit-nonce base; TLS 1.2 ChaCha: iv)
//! u8   secret length, then the secret        (TLS 1.3: the current
//!                                             application traffic secret, 32 or 48;
//!                                             TLS 1.2: 0)
//! ```
//!
//! A [`TrafficState`] (both directions and the close/control state):
//!
//! ```text
//! u8   format version = 1
//! u16  protocol version (0x0303 / 0x0304)
//! u8   flags: bit 0 close_notify received, bit 1 close_notify sent,
//!             bit 2 failed (a fatal alert was sent or received); others 0
//! u8   number of pending control messages (at most 4), then per message:
//!        u8 kind (1 = KeyUpdate, 2 = alert), u8 value
//!        (KeyUpdate: 0 update_not_requested / 1 update_requested;
//!         alert: the description; level is fatal except close_notify)
//! u16  length, then the read-direction RecordState
//! u16  length, then the write-direction RecordState
//! ```
//!
//! Both are written and read with `relay_codec`: a short or garbled input
//! is a [`DecodeError`] naming the field. Importing checks every length
//! against the suite, the protocol version against the suite and, for
//! TLS 1.3, that key and IV derive from the secret, so a corrupted
//! checkpoint is an error, never a silently broken flow.

use std::sync::Arc;

use relay_codec::{Reader, Writer};

use crate::error::DecodeError;
use crate::keys::{self, IV_LEN};
use crate::suite::{Suite, Version};

/// The current encoding version of [`RecordState`] and [`TrafficState`].
pub const STATE_FORMAT: u8 = 1;

/// Most pending control messages a [`TrafficState`] carries (a KeyUpdate, an
/// answer to one, an alert, close_notify).
pub const MAX_PENDING_CONTROL: usize = 4;

/// One direction of a connection's record protection.
///
/// Invariant: `key`, `iv` (and for TLS 1.3 `secret`) belong to `suite`; `seq`
/// is the sequence number of the next record to open (read) or seal (write).
#[derive(Clone, PartialEq, Eq)]
pub struct RecordState {
    /// The negotiated suite (implies the protocol version).
    pub suite: Suite,
    /// TLS 1.3: the current application traffic secret of this direction
    /// (`*_application_traffic_secret_N`), from which KeyUpdates derive the
    /// next one. Empty for TLS 1.2. (Shared, like the key: a checkpoint
    /// carries one state per planned batch, and cloning them for every
    /// commit of a thousand flows was a third of a worker's time in
    /// allocations and copies.)
    pub secret: Arc<[u8]>,
    /// The AEAD key.
    pub key: Arc<[u8]>,
    /// The IV. For TLS 1.2 AES-GCM the first 4 bytes are the implicit salt
    /// (RFC 5288 3) and the last 8 the base that, xored with the sequence
    /// number, gives the explicit nonce we send (the same choice rustls makes).
    pub iv: [u8; IV_LEN],
    /// Sequence number of the next record in this direction (RFC 8446 5.3).
    pub seq: u64,
}

impl core::fmt::Debug for RecordState {
    // Keys stay out of logs.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RecordState")
            .field("suite", &self.suite)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl RecordState {
    /// Builds a TLS 1.3 state from a traffic secret (derives key and IV).
    pub fn from_tls13_secret(suite: Suite, secret: &[u8], seq: u64) -> Result<Self, crate::Error> {
        if suite.version() != Version::Tls13 {
            return Err(crate::Error::Usage(
                "from_tls13_secret needs a TLS 1.3 suite",
            ));
        }
        if secret.len() != suite.hash_len() {
            return Err(crate::Error::Usage(
                "traffic secret length does not match the suite",
            ));
        }
        let (key, iv) = keys::traffic_key_iv(suite, secret)?;
        Ok(Self {
            suite,
            secret: secret.into(),
            key: key.into(),
            iv,
            seq,
        })
    }

    /// The state after a KeyUpdate (RFC 8446 7.2): next secret, its key and
    /// IV, sequence number 0.
    pub(crate) fn updated(&self) -> Result<Self, crate::Error> {
        let next = keys::next_traffic_secret(self.suite, &self.secret)?;
        Self::from_tls13_secret(self.suite, &next, 0)
    }

    /// Encodes this state (see the module docs for the layout).
    pub fn export(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 2 + 8 + 1 + 32 + IV_LEN + 1 + 48);
        self.export_into(&mut Writer::new(&mut out));
        out
    }

    fn export_into(&self, w: &mut Writer<'_>) {
        w.u8(STATE_FORMAT);
        w.u16(self.suite.iana());
        w.u64(self.seq);
        // Lengths fit a byte: keys are 16/32 bytes, secrets 0/32/48 (checked on import).
        w.u8(self.key.len() as u8);
        w.bytes(&self.key);
        w.bytes(&self.iv);
        w.u8(self.secret.len() as u8);
        w.bytes(&self.secret);
    }

    /// Decodes and validates a state written by [`RecordState::export`].
    pub fn import(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let state = Self::read(&mut r, KeyCheck::Derive)?;
        r.finish()?;
        Ok(state)
    }

    fn read(r: &mut Reader<'_>, check: KeyCheck) -> Result<Self, DecodeError> {
        let format = r.u8("format version")?;
        if format != STATE_FORMAT {
            return Err(DecodeError::UnknownFormat(format));
        }
        let code = r.u16("cipher suite")?;
        let suite = Suite::from_iana(code).ok_or(DecodeError::UnknownSuite(code))?;
        let seq = r.u64("sequence number")?;
        let key_len = usize::from(r.u8("key length")?);
        if key_len != suite.aead().key_len() {
            return Err(DecodeError::BadLength("key"));
        }
        let key: Arc<[u8]> = r.take(key_len, "key")?.into();
        let iv: [u8; IV_LEN] = r.array("iv")?;
        let secret_len = usize::from(r.u8("secret length")?);
        let want = match suite.version() {
            Version::Tls12 => 0,
            Version::Tls13 => suite.hash_len(),
        };
        if secret_len != want {
            return Err(DecodeError::BadLength("secret"));
        }
        let secret: Arc<[u8]> = r.take(secret_len, "secret")?.into();
        if suite.version() == Version::Tls13 && check == KeyCheck::Derive {
            let (k, i) =
                keys::traffic_key_iv(suite, &secret).map_err(|_| DecodeError::KeyMismatch)?;
            if k[..] != key[..] || i != iv {
                return Err(DecodeError::KeyMismatch);
            }
        }
        Ok(Self {
            suite,
            secret,
            key,
            iv,
            seq,
        })
    }
}

/// Whether decoding a TLS 1.3 state derives its key and IV from its traffic
/// secret again to check them (two HKDF expansions per direction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyCheck {
    /// Derive and compare: state from elsewhere, about to be used.
    Derive,
    /// Structure and lengths only: state that is only stored and passed on,
    /// such as a standby's copy of its peer's checkpoints, rebuilt for every
    /// delta; it is checked with [`Derive`](Self::Derive) when adopted.
    Skip,
}

/// A control record the record layer owes the peer, sealed before any further
/// application data (so it is part of the deterministic write stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// A TLS 1.3 KeyUpdate; `update_requested` asks the peer to update too.
    KeyUpdate {
        /// RFC 8446 4.6.3 `request_update`.
        update_requested: bool,
    },
    /// An alert: close_notify (warning) or a fatal alert with this description.
    Alert(rustls::AlertDescription),
}

/// Everything the record layer of one connection needs, as plain data: what
/// the handshake hands over and what a checkpoint carries.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TrafficState {
    /// The negotiated protocol version.
    pub version: Version,
    /// The negotiated suite.
    pub suite: Suite,
    /// Client -> relay protection.
    pub read: RecordState,
    /// Relay -> client protection.
    pub write: RecordState,
    /// The client's close_notify has been received (later records are ignored).
    pub received_close_notify: bool,
    /// Our close_notify has been sealed (no more records may be sealed).
    pub sent_close_notify: bool,
    /// A fatal alert was sent or received; the connection is dead.
    pub failed: bool,
    /// Control records owed to the client, oldest first.
    pub pending: Vec<Control>,
}

impl TrafficState {
    /// A fresh state as the handshake produces it.
    pub fn new(read: RecordState, write: RecordState) -> Result<Self, DecodeError> {
        if read.suite != write.suite {
            return Err(DecodeError::SuiteMismatch);
        }
        Ok(Self {
            version: read.suite.version(),
            suite: read.suite,
            read,
            write,
            received_close_notify: false,
            sent_close_notify: false,
            failed: false,
            pending: Vec::new(),
        })
    }

    /// Encodes this state (see the module docs for the layout).
    pub fn export(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        let mut w = Writer::new(&mut out);
        w.u8(STATE_FORMAT);
        w.u16(self.version.wire());
        let flags = u8::from(self.received_close_notify)
            | u8::from(self.sent_close_notify) << 1
            | u8::from(self.failed) << 2;
        w.u8(flags);
        // Bounded by MAX_PENDING_CONTROL through RecordLayer's queue discipline.
        w.u8(self.pending.len() as u8);
        for c in &self.pending {
            match *c {
                Control::KeyUpdate { update_requested } => {
                    w.u8(1);
                    w.bool(update_requested);
                }
                Control::Alert(desc) => {
                    w.u8(2);
                    w.u8(u8::from(desc));
                }
            }
        }
        for dir in [&self.read, &self.write] {
            w.nested_u16(|w| dir.export_into(w));
        }
        out
    }

    /// Decodes and validates a state written by [`TrafficState::export`].
    pub fn import(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::import_with(bytes, KeyCheck::Derive)
    }

    /// Decodes a state like [`import`](Self::import), checking its key and
    /// IV against its secret only if `check` says so.
    pub fn import_with(bytes: &[u8], check: KeyCheck) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let format = r.u8("format version")?;
        if format != STATE_FORMAT {
            return Err(DecodeError::UnknownFormat(format));
        }
        let wire = r.u16("protocol version")?;
        let version = Version::from_wire(wire).ok_or(DecodeError::BadVersion(wire))?;
        let flags = r.u8("flags")?;
        if flags & !0b111 != 0 {
            return Err(DecodeError::BadValue("flags"));
        }
        let n = usize::from(r.u8("pending control count")?);
        if n > MAX_PENDING_CONTROL {
            return Err(DecodeError::BadValue("pending control count"));
        }
        let mut pending = Vec::with_capacity(n);
        for _ in 0..n {
            let kind = r.u8("pending control")?;
            let value = r.u8("pending control")?;
            pending.push(match (kind, value) {
                (1, 0 | 1) if version == Version::Tls13 => Control::KeyUpdate {
                    update_requested: value == 1,
                },
                (2, v) => Control::Alert(rustls::AlertDescription::from(v)),
                _ => return Err(DecodeError::BadValue("pending control")),
            });
        }
        let mut dirs = [None, None];
        for (d, what) in dirs.iter_mut().zip(["read state", "write state"]) {
            let mut sub = Reader::new(r.block_u16(what)?);
            let state = RecordState::read(&mut sub, check)?;
            sub.finish()?;
            *d = Some(state);
        }
        r.finish()?;
        let [Some(read), Some(write)] = dirs else {
            return Err(DecodeError::Truncated("record state"));
        };
        if read.suite != write.suite {
            return Err(DecodeError::SuiteMismatch);
        }
        if read.suite.version() != version {
            return Err(DecodeError::BadVersion(wire));
        }
        Ok(Self {
            version,
            suite: read.suite,
            read,
            write,
            received_close_notify: flags & 1 != 0,
            sent_close_notify: flags & 2 != 0,
            failed: flags & 4 != 0,
            pending,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls13_state(seq: u64) -> RecordState {
        RecordState::from_tls13_secret(Suite::Tls13Aes256GcmSha384, &[7u8; 48], seq).unwrap()
    }

    fn tls12_state() -> RecordState {
        RecordState {
            suite: Suite::Tls12EcdheRsaChacha20Poly1305Sha256,
            secret: Arc::from([]),
            key: Arc::from([3; 32]),
            iv: [4; 12],
            seq: 99,
        }
    }

    #[test]
    fn record_state_round_trips() {
        for s in [tls13_state(12345), tls12_state()] {
            let bytes = s.export();
            assert_eq!(bytes[0], STATE_FORMAT);
            assert_eq!(RecordState::import(&bytes).unwrap(), s);
        }
    }

    #[test]
    fn traffic_state_round_trips() {
        let mut t = TrafficState::new(tls13_state(1), tls13_state(2)).unwrap();
        t.pending = vec![
            Control::KeyUpdate {
                update_requested: true,
            },
            Control::Alert(rustls::AlertDescription::CloseNotify),
        ];
        t.sent_close_notify = true;
        let bytes = t.export();
        assert_eq!(TrafficState::import(&bytes).unwrap(), t);
    }

    #[test]
    fn a_checkpoint_is_small() {
        // The largest case: SHA-384 secrets, 32-byte keys, a full control queue.
        let mut t = TrafficState::new(tls13_state(u64::MAX), tls13_state(u64::MAX)).unwrap();
        t.pending = vec![
            Control::KeyUpdate {
                update_requested: true
            };
            MAX_PENDING_CONTROL
        ];
        assert!(t.export().len() <= 240, "{}", t.export().len());
    }

    #[test]
    fn import_rejects_bad_input() {
        let good = tls13_state(5).export();
        // Every truncation is an error, never a panic.
        for n in 0..good.len() {
            assert!(RecordState::import(&good[..n]).is_err(), "prefix {n}");
        }
        let mut bad = good.clone();
        bad[0] = 2;
        assert_eq!(
            RecordState::import(&bad),
            Err(DecodeError::UnknownFormat(2))
        );
        let mut bad = good.clone();
        bad[1..3].copy_from_slice(&0x1304u16.to_be_bytes());
        assert_eq!(
            RecordState::import(&bad),
            Err(DecodeError::UnknownSuite(0x1304))
        );
        let mut bad = good.clone();
        bad.push(0);
        assert_eq!(
            RecordState::import(&bad),
            Err(DecodeError::TrailingBytes(1))
        );
        // A flipped key bit no longer derives from the secret.
        let mut bad = good.clone();
        bad[13] ^= 1;
        assert_eq!(RecordState::import(&bad), Err(DecodeError::KeyMismatch));
        // A TLS 1.2 state with a secret.
        let mut s = tls12_state().export();
        let last = s.len() - 1;
        s[last] = 1;
        s.push(0);
        assert_eq!(
            RecordState::import(&s),
            Err(DecodeError::BadLength("secret"))
        );
    }

    #[test]
    fn traffic_import_rejects_mixed_suites() {
        let t = TrafficState {
            version: Version::Tls13,
            suite: Suite::Tls13Aes256GcmSha384,
            read: tls13_state(0),
            write: tls12_state(),
            received_close_notify: false,
            sent_close_notify: false,
            failed: false,
            pending: vec![],
        };
        assert_eq!(
            TrafficState::import(&t.export()),
            Err(DecodeError::SuiteMismatch)
        );
        let good = TrafficState::new(tls13_state(0), tls13_state(0))
            .unwrap()
            .export();
        for n in 0..good.len() {
            assert!(TrafficState::import(&good[..n]).is_err());
        }
    }

    #[test]
    fn skipping_the_key_check_still_checks_the_structure() {
        let mut t = TrafficState::new(tls13_state(3), tls13_state(4)).unwrap();
        let mut key = t.write.key.to_vec();
        key[0] ^= 1;
        t.write.key = key.into();
        let bytes = t.export();
        assert_eq!(TrafficState::import(&bytes), Err(DecodeError::KeyMismatch));
        assert_eq!(TrafficState::import_with(&bytes, KeyCheck::Skip), Ok(t));
        for n in 0..bytes.len() {
            assert!(TrafficState::import_with(&bytes[..n], KeyCheck::Skip).is_err());
        }
        let mut short_key = TrafficState::new(tls13_state(0), tls13_state(0)).unwrap();
        short_key.read.key = short_key.read.key[1..].into();
        assert_eq!(
            TrafficState::import_with(&short_key.export(), KeyCheck::Skip),
            Err(DecodeError::BadLength("key"))
        );
    }
}
