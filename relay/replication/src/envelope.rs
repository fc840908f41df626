//! The one envelope every backplane message travels in, and the
//! [`Deframer`] that reads envelopes off the backplane byte stream.
//!
//! ```text
//! [2]  magic "RB"
//! u8   envelope version (ENVELOPE_VERSION = 1)
//! u8   message kind
//! u16  stream relay
//! u16  stream worker (0xffff: the relay's control messages)
//! u64  sequence number within the stream (0 for control messages)
//! u32  body length (at most MAX_BODY_LEN)
//! [..] body
//! ```

use relay_codec::{Reader, Writer};

use crate::error::Error;
use crate::ids::StreamId;
use crate::message::{Kind, Message};

/// The first two bytes of every envelope.
pub const MAGIC: [u8; 2] = *b"RB";
/// The envelope version this build writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;
/// Envelope header size: magic, version, kind, stream, sequence, length.
pub const HEADER_LEN: usize = 2 + 1 + 1 + StreamId::LEN + 8 + 4;
/// Largest body accepted or sent. A flow checkpoint is a few hundred bytes
/// plus at most one partial TLS record (16 KiB) and its planned record
/// batches; a handoff lists 12 bytes per flow. 1 MiB leaves room for both
/// and bounds what a lying length can make the receiver buffer.
pub const MAX_BODY_LEN: usize = 1 << 20;

/// One message with its stream position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The sending stream (a worker's, or the relay's control stream).
    pub stream: StreamId,
    /// Position in the stream, from 1; 0 for control messages.
    pub seq: u64,
    /// The message.
    pub message: Message,
}

impl Envelope {
    /// A control message (sequence 0) from `relay`.
    pub fn control(relay: crate::ids::RelayId, message: Message) -> Self {
        Envelope {
            stream: StreamId::control(relay),
            seq: 0,
            message,
        }
    }

    /// Appends the encoding to `out`. Refuses a body above
    /// [`MAX_BODY_LEN`] (nothing is appended then).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        encode_with(out, self.message.kind(), self.stream, self.seq, |w| {
            self.message.write_body(w)
        })
    }
}

/// Appends an envelope whose body `body` writes; refuses (and removes) a
/// body above [`MAX_BODY_LEN`].
pub(crate) fn encode_with(
    out: &mut Vec<u8>,
    kind: Kind,
    stream: StreamId,
    seq: u64,
    body: impl FnOnce(&mut Writer<'_>),
) -> Result<(), Error> {
    let start = out.len();
    let mut w = Writer::new(out);
    w.bytes(&MAGIC);
    w.u8(ENVELOPE_VERSION);
    w.u8(kind.to_u8());
    stream.write(&mut w);
    w.u64(seq);
    w.nested_u32(body);
    let len = out.len() - start - HEADER_LEN;
    if len > MAX_BODY_LEN {
        out.truncate(start);
        return Err(Error::TooLarge {
            len,
            max: MAX_BODY_LEN,
        });
    }
    Ok(())
}

/// A decoded envelope header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    kind: Kind,
    stream: StreamId,
    seq: u64,
    body_len: usize,
}

/// Reads envelopes off the backplane byte stream (the decrypted TLS
/// stream of one peer connection).
///
/// Push received bytes with [`push`](Self::push), then call
/// [`pop`](Self::pop) until it returns `Ok(None)` (*incomplete*: more
/// bytes are needed). An `Err` is *malformed* input naming what was wrong;
/// the caller counts it and disconnects the peer. After a bad header the
/// deframer has lost the framing and returns the same error forever; after
/// a bad body (or an unknown kind) the envelope was consumed and the next
/// call reads the next one.
///
/// Buffering is bounded by what the caller pushes between calls to `next`
/// plus one envelope ([`HEADER_LEN`] + [`MAX_BODY_LEN`]): a body length
/// above the limit is refused as soon as the header is in.
#[derive(Debug, Default)]
pub struct Deframer {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    start: usize,
    failed: Option<Error>,
}

impl Deframer {
    /// An empty deframer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes (dropped once the framing is lost: the
    /// caller is disconnecting).
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            // Compact once the consumed prefix dominates.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as envelopes.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete envelope; `Ok(None)` if more bytes are needed.
    pub fn pop(&mut self) -> Result<Option<Envelope>, Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let avail = &self.buf[self.start..];
        let header = match parse_header(avail) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.failed = Some(e.clone());
                return Err(e);
            }
        };
        let total = HEADER_LEN + header.body_len;
        if avail.len() < total {
            return Ok(None);
        }
        let body = &avail[HEADER_LEN..total];
        let message = Message::decode(header.kind, body);
        self.start += total;
        let message = message?;
        Ok(Some(Envelope {
            stream: header.stream,
            seq: header.seq,
            message,
        }))
    }
}

/// Parses and checks a header; `Ok(None)` if `bytes` holds less than one,
/// but bytes that are there are checked at once (garbage fails early).
fn parse_header(bytes: &[u8]) -> Result<Option<Header>, Error> {
    if bytes.len() < HEADER_LEN {
        for (i, (&b, &m)) in bytes.iter().zip(&MAGIC).enumerate() {
            if b != m {
                let mut got = [0u8; 2];
                got[..=i].copy_from_slice(&bytes[..=i]);
                return Err(Error::BadMagic {
                    got: u16::from_be_bytes(got),
                });
            }
        }
        if let Some(&v) = bytes.get(2)
            && v != ENVELOPE_VERSION
        {
            return Err(Error::EnvelopeVersion { got: v });
        }
        return Ok(None);
    }
    let mut r = Reader::new(&bytes[..HEADER_LEN]);
    // The reads below cannot fail: HEADER_LEN bytes are there.
    let short = |source| Error::Malformed {
        kind: Kind::Unknown(0),
        source,
    };
    let magic = r.u16("magic").map_err(short)?;
    if magic.to_be_bytes() != MAGIC {
        return Err(Error::BadMagic { got: magic });
    }
    let version = r.u8("version").map_err(short)?;
    if version != ENVELOPE_VERSION {
        return Err(Error::EnvelopeVersion { got: version });
    }
    let kind = Kind::from_u8(r.u8("kind").map_err(short)?);
    let stream = StreamId::read(&mut r, "stream").map_err(short)?;
    let seq = r.u64("seq").map_err(short)?;
    let len = r.u32("body length").map_err(short)?;
    if len as usize > MAX_BODY_LEN {
        return Err(Error::BodyTooLong {
            len,
            max: MAX_BODY_LEN as u32,
        });
    }
    // Stream messages come on a worker stream, numbered from 1; control
    // messages on the control stream, unnumbered. (Unknown kinds are
    // framed and refused by the body decoder.)
    let misplaced = match kind {
        Kind::Unknown(_) => false,
        k if k.is_stream() => seq == 0 || stream.is_control(),
        _ => seq != 0 || !stream.is_control(),
    };
    if misplaced {
        return Err(Error::Sequencing { kind, stream, seq });
    }
    Ok(Some(Header {
        kind,
        stream,
        seq,
        body_len: len as usize,
    }))
}

#[cfg(test)]
#[path = "envelope_tests.rs"]
mod tests;
