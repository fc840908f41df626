//! relay-codec: the one byte reader/writer that every checkpoint and
//! backplane encoding of the relay uses (TCP and TLS checkpoints, flow
//! checkpoints and deltas, replication envelopes).
//!
//! - [`Writer`] appends to a `Vec<u8>`: big-endian `u8`/`u16`/`u32`/`u64`,
//!   `bool` (one byte, 0 or 1), LEB128 varints, zigzag varints for signed
//!   differences, and length-prefixed blocks.
//! - [`Reader`] reads the same things off the front of a byte slice. Every
//!   read names the field it reads (`what`), so a short, lying or garbled
//!   input is a [`CodecError`] that says which field and what was wrong.
//!   Nothing panics on any input, and nothing allocates on the strength of a
//!   length read from the input: a length is checked against the bytes that
//!   are actually there before it is used.
//!
//! The encodings built on top add magic numbers, versions and meaning; this
//! crate only knows bytes.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

/// Longest LEB128 encoding of a `u64`: ten groups of seven bits.
pub const MAX_VARINT_LEN: usize = 10;

/// What is wrong with the bytes given to a [`Reader`]. Every variant names
/// the field (`what`) the reader was reading, except [`CodecError::Trailing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The input ends before the field does (or a length or count in the
    /// input claims more bytes than follow it).
    #[error("{what}: input ends early ({needed} bytes needed, {left} left)")]
    Short {
        /// The field being read.
        what: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        left: usize,
    },
    /// The field's bytes are there but the value is not allowed (a `bool`
    /// other than 0 or 1, a length above its bound).
    #[error("{what}: invalid value")]
    Invalid {
        /// The field being read.
        what: &'static str,
    },
    /// A varint runs past [`MAX_VARINT_LEN`] bytes or past 64 bits.
    #[error("{what}: varint longer than 10 bytes or above 2^64")]
    VarintTooLong {
        /// The field being read.
        what: &'static str,
    },
    /// Bytes remain after the last field ([`Reader::finish`]).
    #[error("{left} trailing bytes after the last field")]
    Trailing {
        /// How many.
        left: usize,
    },
}

impl CodecError {
    /// The field the error is about (`"trailing bytes"` for
    /// [`CodecError::Trailing`]): what an encoding's own error keeps.
    pub fn what(&self) -> &'static str {
        match *self {
            CodecError::Short { what, .. }
            | CodecError::Invalid { what }
            | CodecError::VarintTooLong { what } => what,
            CodecError::Trailing { .. } => "trailing bytes",
        }
    }
}

/// Zigzag mapping of a signed value (0, -1, 1, -2, ... to 0, 1, 2, 3, ...),
/// so that small differences of either sign make short varints.
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Inverse of [`zigzag`].
pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Appends fields to a byte vector.
///
/// Writing cannot fail: the values are the caller's own. The one limit is
/// a block longer than its length field can say (4 GiB, or 64 KiB for the
/// `u16` forms); its length is then written as the largest value, and the
/// encoding fails to decode on the other side rather than being misread.
#[derive(Debug)]
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    /// A writer appending to `out` (whatever `out` holds stays in front).
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        Writer { out }
    }

    /// Bytes in the underlying vector so far (including what was there before).
    pub fn position(&self) -> usize {
        self.out.len()
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    /// Two bytes, big-endian.
    pub fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    /// Four bytes, big-endian.
    pub fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    /// Eight bytes, big-endian.
    pub fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    /// One byte, 0 or 1.
    pub fn bool(&mut self, v: bool) {
        self.out.push(u8::from(v));
    }

    /// Raw bytes, no length (the reader must know how many).
    pub fn bytes(&mut self, v: &[u8]) {
        self.out.extend_from_slice(v);
    }

    /// LEB128: seven bits per byte, least significant group first, the
    /// high bit set on every byte but the last. 1 to 10 bytes.
    pub fn varint(&mut self, mut v: u64) {
        loop {
            let low = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.out.push(low);
                return;
            }
            self.out.push(low | 0x80);
        }
    }

    /// A signed value as the varint of its [`zigzag`] mapping.
    pub fn zigzag(&mut self, v: i64) {
        self.varint(zigzag(v));
    }

    /// A `u32` length, then the bytes.
    pub fn block(&mut self, v: &[u8]) {
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.bytes(v);
    }

    /// A `u16` length, then the bytes.
    pub fn block_u16(&mut self, v: &[u8]) {
        self.u16(u16::try_from(v.len()).unwrap_or(u16::MAX));
        self.bytes(v);
    }

    /// A varint length, then the bytes.
    pub fn varint_block(&mut self, v: &[u8]) {
        self.varint(v.len() as u64);
        self.bytes(v);
    }

    /// A `u32` length, then whatever `body` writes: for a nested encoding
    /// whose length is known only once it is written.
    pub fn nested_u32(&mut self, body: impl FnOnce(&mut Writer<'_>)) {
        let at = self.out.len();
        self.u32(0);
        body(&mut Writer::new(self.out));
        let len = u32::try_from(self.out.len() - at - 4).unwrap_or(u32::MAX);
        self.out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// A `u16` length, then whatever `body` writes.
    pub fn nested_u16(&mut self, body: impl FnOnce(&mut Writer<'_>)) {
        let at = self.out.len();
        self.u16(0);
        body(&mut Writer::new(self.out));
        let len = u16::try_from(self.out.len() - at - 2).unwrap_or(u16::MAX);
        self.out[at..at + 2].copy_from_slice(&len.to_be_bytes());
    }
}

/// Reads fields off the front of a byte slice.
///
/// Each read takes `what`, the field's name, for the error. A failed read
/// leaves the reader where it was, but callers normally give up at the
/// first error.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Whether everything has been read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Everything not read yet (the reader is then empty).
    pub fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.rest)
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        if self.rest.len() < n {
            return Err(CodecError::Short {
                what,
                needed: n,
                left: self.rest.len(),
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        Ok(u8::from_be_bytes(self.array(what)?))
    }

    /// Two bytes, big-endian.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    /// Four bytes, big-endian.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    /// Eight bytes, big-endian.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// One byte that must be 0 or 1.
    pub fn bool(&mut self, what: &'static str) -> Result<bool, CodecError> {
        match self.rest.first() {
            Some(0) | Some(1) => Ok(self.u8(what)? == 1),
            Some(_) => Err(CodecError::Invalid { what }),
            None => Err(CodecError::Short {
                what,
                needed: 1,
                left: 0,
            }),
        }
    }

    /// A LEB128 varint of at most [`MAX_VARINT_LEN`] bytes whose value fits
    /// 64 bits. (Non-minimal encodings such as `0x80 0x00` are accepted.)
    pub fn varint(&mut self, what: &'static str) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for (i, &byte) in self.rest.iter().enumerate().take(MAX_VARINT_LEN) {
            // The tenth byte holds bit 63 only.
            if i == MAX_VARINT_LEN - 1 && byte > 1 {
                return Err(CodecError::VarintTooLong { what });
            }
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.rest = &self.rest[i + 1..];
                return Ok(v);
            }
        }
        if self.rest.len() >= MAX_VARINT_LEN {
            return Err(CodecError::VarintTooLong { what });
        }
        Err(CodecError::Short {
            what,
            needed: self.rest.len() + 1,
            left: self.rest.len(),
        })
    }

    /// A varint that must be at most `max` (a length or a count).
    pub fn varint_max(&mut self, what: &'static str, max: u64) -> Result<u64, CodecError> {
        let save = self.rest;
        let v = self.varint(what)?;
        if v > max {
            self.rest = save;
            return Err(CodecError::Invalid { what });
        }
        Ok(v)
    }

    /// A signed value written by [`Writer::zigzag`].
    pub fn zigzag(&mut self, what: &'static str) -> Result<i64, CodecError> {
        Ok(unzigzag(self.varint(what)?))
    }

    /// A `u32` length, then that many bytes.
    pub fn block(&mut self, what: &'static str) -> Result<&'a [u8], CodecError> {
        let save = self.rest;
        let n = self.u32(what)?;
        self.take_len(u64::from(n), what, save)
    }

    /// A `u16` length, then that many bytes.
    pub fn block_u16(&mut self, what: &'static str) -> Result<&'a [u8], CodecError> {
        let save = self.rest;
        let n = self.u16(what)?;
        self.take_len(u64::from(n), what, save)
    }

    /// A varint length of at most `max`, then that many bytes.
    pub fn varint_block(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], CodecError> {
        let save = self.rest;
        let n = self.varint_max(what, max as u64)?;
        self.take_len(n, what, save)
    }

    fn take_len(
        &mut self,
        n: u64,
        what: &'static str,
        save: &'a [u8],
    ) -> Result<&'a [u8], CodecError> {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        self.take(n, what).inspect_err(|_| self.rest = save)
    }

    /// A `u32` count of elements of at least `min_len` bytes each, checked
    /// against the bytes left, so that a lying count cannot make the caller
    /// reserve memory for elements that are not there.
    pub fn count(&mut self, what: &'static str, min_len: usize) -> Result<usize, CodecError> {
        let save = self.rest;
        let n = usize::try_from(self.u32(what)?).unwrap_or(usize::MAX);
        let needed = n.saturating_mul(min_len.max(1));
        if needed > self.rest.len() {
            let left = self.rest.len();
            self.rest = save;
            return Err(CodecError::Short { what, needed, left });
        }
        Ok(n)
    }

    /// The end: refuses trailing bytes.
    pub fn finish(self) -> Result<(), CodecError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(CodecError::Trailing {
                left: self.rest.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests;
