//! The byte reader and writers the checkpoint and delta encodings share:
//! every read names what it was reading, so a short or lying input is a
//! [`FlowError::Checkpoint`] that says which part, never a panic.

use crate::error::FlowError;

/// Appends a 32-bit length and the bytes.
pub(crate) fn put_block(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// Appends a LEB128 varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Reads fields off the front of a byte slice.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FlowError> {
        if self.0.len() < n {
            return Err(FlowError::Checkpoint(what));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, FlowError> {
        Ok(self.take(1, what)?[0])
    }

    pub(crate) fn bool(&mut self, what: &'static str) -> Result<bool, FlowError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(FlowError::Checkpoint(what)),
        }
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, FlowError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, FlowError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, FlowError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A 32-bit length, then that many bytes.
    pub(crate) fn block(&mut self, what: &'static str) -> Result<&'a [u8], FlowError> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }

    /// A LEB128 varint of at most 10 bytes.
    pub(crate) fn varint(&mut self, what: &'static str) -> Result<u64, FlowError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8(what)?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(FlowError::Checkpoint(what))
    }
}
