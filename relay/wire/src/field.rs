//! Bounds-checked big-endian field access shared by the views.
//!
//! A read past the end gives zero and a write past the end is dropped, so a
//! view built with `new_unchecked` over a short buffer can give wrong answers
//! but can never take the worker down.

pub(crate) fn read_u8(buf: &[u8], at: usize) -> u8 {
    buf.get(at).copied().unwrap_or(0)
}

pub(crate) fn read_array<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    at.checked_add(N)
        .and_then(|end| buf.get(at..end))
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .unwrap_or([0; N])
}

pub(crate) fn read_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(read_array(buf, at))
}

pub(crate) fn read_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(read_array(buf, at))
}

pub(crate) fn write_u8(buf: &mut [u8], at: usize, value: u8) {
    if let Some(b) = buf.get_mut(at) {
        *b = value;
    }
}

pub(crate) fn write_bytes(buf: &mut [u8], at: usize, value: &[u8]) {
    if let Some(dst) = at
        .checked_add(value.len())
        .and_then(|end| buf.get_mut(at..end))
    {
        dst.copy_from_slice(value);
    }
}

pub(crate) fn write_u16(buf: &mut [u8], at: usize, value: u16) {
    write_bytes(buf, at, &value.to_be_bytes());
}

pub(crate) fn write_u32(buf: &mut [u8], at: usize, value: u32) {
    write_bytes(buf, at, &value.to_be_bytes());
}

/// `buf[start..end]` clamped to the buffer; empty when the range is inverted.
pub(crate) fn slice(buf: &[u8], start: usize, end: usize) -> &[u8] {
    let end = end.min(buf.len());
    buf.get(start..end).unwrap_or(&[])
}

/// Mutable counterpart of [`slice`].
pub(crate) fn slice_mut(buf: &mut [u8], start: usize, end: usize) -> &mut [u8] {
    let end = end.min(buf.len());
    buf.get_mut(start..end).unwrap_or(&mut [])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_is_harmless() {
        let mut b = [1u8, 2, 3];
        assert_eq!(read_u16(&b, 1), 0x0203);
        assert_eq!(read_u16(&b, 2), 0);
        assert_eq!(read_u32(&b, 0), 0);
        assert_eq!(read_u8(&b, 3), 0);
        assert_eq!(read_u16(&b, usize::MAX), 0);
        write_u16(&mut b, 2, 0xffff);
        write_bytes(&mut b, usize::MAX, &[1, 2]);
        assert_eq!(b, [1, 2, 3]);
        assert_eq!(slice(&b, 2, 1), &[] as &[u8]);
        assert_eq!(slice(&b, 1, 100), &[2, 3]);
        assert_eq!(slice(&b, 5, 100), &[] as &[u8]);
        assert!(slice_mut(&mut b, 4, 2).is_empty());
    }
}
