//! Datagram heartbeats: one per peer per interval over the front network
//! (membership's second path, so that a lost backplane alone never reads
//! as a dead peer and never makes two relays serve one VIP), and one over
//! the backplane link itself (so that a lossy backplane, whose TCP stream
//! stalls for retransmission timeouts, does not read as a lost one).
//!
//! A beat is authenticated with HMAC-SHA256 under a key both ends export
//! from the TLS session of their live backplane connection (RFC 8446
//! section 7.5): only the relay that completed the mutual handshake with
//! us can keep itself alive in our eyes, and the key outlives the
//! connection, which is exactly when the beats matter. A new connection
//! brings a new key; beats count up per key, so a replayed beat is
//! refused.
//!
//! A beat, 47 bytes: `RLFH`, version 1, the sender's relay id (u16), the
//! sequence number (u64), all big-endian, then the tag over the 15 bytes
//! before it.

use ring::hmac;

use relay_replication::RelayId;

/// Which network a datagram heartbeat crosses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BeatPath {
    /// The front network: membership's second path.
    Front,
    /// The backplane link, beside the TCP connection.
    Backplane,
}

impl BeatPath {
    /// The TLS exporter label both ends derive this path's key with: one
    /// key per path, so that a beat of one path replayed on the other is
    /// refused.
    pub(crate) fn label(self) -> &'static [u8] {
        match self {
            BeatPath::Front => b"EXPORTER-relay-front-heartbeat",
            BeatPath::Backplane => b"EXPORTER-relay-backplane-heartbeat",
        }
    }
}

/// The keys of both datagram paths shared with one peer.
#[derive(Debug)]
pub(crate) struct BeatKeys {
    pub(crate) front: FrontKey,
    pub(crate) backplane: FrontKey,
}

impl BeatKeys {
    pub(crate) fn path(&mut self, path: BeatPath) -> &mut FrontKey {
        match path {
            BeatPath::Front => &mut self.front,
            BeatPath::Backplane => &mut self.backplane,
        }
    }
}
/// Key length, bytes.
pub(crate) const KEY_LEN: usize = 32;

const MAGIC: [u8; 4] = *b"RLFH";
const VERSION: u8 = 1;
const BODY_LEN: usize = 4 + 1 + 2 + 8;
const TAG_LEN: usize = 32;
/// A beat's length on the wire.
pub(crate) const BEAT_LEN: usize = BODY_LEN + TAG_LEN;

/// Why a datagram on the front port was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BeatError {
    /// Not a beat's length.
    #[error("{0} bytes, a beat has {BEAT_LEN}")]
    Length(usize),
    /// Not our magic.
    #[error("not a front heartbeat")]
    Magic,
    /// Another version.
    #[error("front heartbeat version {0}, ours is {VERSION}")]
    Version(u8),
    /// A relay that is not a configured peer, or from another address.
    #[error("relay {0} is not a peer at this address")]
    Stranger(RelayId),
    /// No key yet: the backplane never came up with this peer.
    #[error("no key for relay {0} yet")]
    NoKey(RelayId),
    /// The tag does not verify under the current key.
    #[error("bad tag")]
    Tag,
    /// Already seen, or older.
    #[error("replayed sequence number {seq} (highest seen {seen})")]
    Replay {
        /// The beat's sequence number.
        seq: u64,
        /// The highest accepted so far under this key.
        seen: u64,
    },
}

/// The relay a datagram claims to come from (checked before its tag, to
/// find the key).
pub(crate) fn claimed_sender(datagram: &[u8]) -> Result<RelayId, BeatError> {
    if datagram.len() != BEAT_LEN {
        return Err(BeatError::Length(datagram.len()));
    }
    if datagram[..4] != MAGIC {
        return Err(BeatError::Magic);
    }
    if datagram[4] != VERSION {
        return Err(BeatError::Version(datagram[4]));
    }
    Ok(u16::from_be_bytes([datagram[5], datagram[6]]))
}

/// The front-path key shared with one peer, and the sequence numbers used
/// under it.
pub(crate) struct FrontKey {
    key: hmac::Key,
    sent: u64,
    seen: u64,
}

impl std::fmt::Debug for FrontKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontKey")
            .field("sent", &self.sent)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl FrontKey {
    /// A key from exported keying material.
    pub(crate) fn new(material: &[u8; KEY_LEN]) -> FrontKey {
        FrontKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, material),
            sent: 0,
            seen: 0,
        }
    }

    /// The next beat from relay `from`.
    pub(crate) fn seal(&mut self, from: RelayId) -> [u8; BEAT_LEN] {
        self.sent += 1;
        let mut out = [0u8; BEAT_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[5..7].copy_from_slice(&from.to_be_bytes());
        out[7..15].copy_from_slice(&self.sent.to_be_bytes());
        let tag = hmac::sign(&self.key, &out[..BODY_LEN]);
        out[BODY_LEN..].copy_from_slice(tag.as_ref());
        out
    }

    /// Checks a beat from relay `from`: its tag under this key, and that
    /// its sequence number is new.
    pub(crate) fn open(&mut self, datagram: &[u8], from: RelayId) -> Result<(), BeatError> {
        if claimed_sender(datagram)? != from {
            return Err(BeatError::Stranger(claimed_sender(datagram)?));
        }
        hmac::verify(&self.key, &datagram[..BODY_LEN], &datagram[BODY_LEN..])
            .map_err(|_| BeatError::Tag)?;
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&datagram[7..15]);
        let seq = u64::from_be_bytes(seq);
        if seq <= self.seen {
            return Err(BeatError::Replay {
                seq,
                seen: self.seen,
            });
        }
        self.seen = seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beat_opens_once_under_the_same_key_only() {
        let material = [7u8; KEY_LEN];
        let mut a = FrontKey::new(&material);
        let mut b = FrontKey::new(&material);
        let beat = a.seal(1);
        assert_eq!(claimed_sender(&beat), Ok(1));
        assert_eq!(b.open(&beat, 1), Ok(()));
        assert_eq!(b.open(&beat, 1), Err(BeatError::Replay { seq: 1, seen: 1 }));
        let next = a.seal(1);
        assert_eq!(b.open(&next, 1), Ok(()));
        // Another session's key.
        let mut other = FrontKey::new(&[8u8; KEY_LEN]);
        assert_eq!(other.open(&a.seal(1), 1), Err(BeatError::Tag));
        // A relay claiming another id than the slot's.
        assert_eq!(b.open(&a.seal(1), 2), Err(BeatError::Stranger(1)));
    }

    #[test]
    fn garbage_is_refused_by_name() {
        let mut k = FrontKey::new(&[1u8; KEY_LEN]);
        let good = k.seal(3);
        assert_eq!(claimed_sender(&good[..10]), Err(BeatError::Length(10)));
        let mut bad = good;
        bad[0] = b'X';
        assert_eq!(claimed_sender(&bad), Err(BeatError::Magic));
        let mut bad = good;
        bad[4] = 9;
        assert_eq!(claimed_sender(&bad), Err(BeatError::Version(9)));
        let mut bad = good;
        bad[BEAT_LEN - 1] ^= 1;
        let mut peer = FrontKey::new(&[1u8; KEY_LEN]);
        assert_eq!(peer.open(&bad, 3), Err(BeatError::Tag));
        // A flipped sequence number breaks the tag too.
        let mut bad = good;
        bad[14] ^= 1;
        assert_eq!(peer.open(&bad, 3), Err(BeatError::Tag));
        assert_eq!(peer.open(&good, 3), Ok(()));
    }
}
