//! The Internet checksum (RFC 1071): the one's-complement of the
//! one's-complement sum of 16-bit big-endian words.
//!
//! [`data`] and [`pseudo_header_v4`] return *folded sums*, not checksums;
//! [`combine`] adds sums, and the checksum written into a header is
//! `!combine(&[...])`. A region that includes a correct checksum sums to
//! `0xffff`.

use core::net::Ipv4Addr;

use crate::ipv4::IpProtocol;

/// Folds a wide accumulator into a 16-bit one's-complement sum: the carries
/// out of bit 15 are added back in (end-around carry, RFC 1071 (4.1)).
const fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Bytes summed before the accumulator is folded; keeps the `u64` far from
/// overflow whatever the slice length (each step adds at most 2^33).
const FOLD_EVERY: usize = 1 << 20;

/// The folded one's-complement sum of `data` as big-endian 16-bit words; an
/// odd final byte is padded with a zero byte (RFC 1071 (1)).
///
/// Runs per packet, so it sums 8 bytes at a time as two 32-bit words into a
/// 64-bit accumulator and folds once at the end; RFC 1071 (2)(B) shows the
/// carries may be deferred like this.
pub fn data(data: &[u8]) -> u16 {
    let mut total: u64 = 0;
    for block in data.chunks(FOLD_EVERY) {
        let mut acc: u64 = 0;
        let mut words = block.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            let v = u64::from_be_bytes(b);
            acc += (v >> 32) + (v & 0xffff_ffff);
        }
        let mut rest = words.remainder().chunks_exact(2);
        for w in &mut rest {
            let mut b = [0u8; 2];
            b.copy_from_slice(w);
            acc += u64::from(u16::from_be_bytes(b));
        }
        if let Some(&last) = rest.remainder().first() {
            acc += u64::from(last) << 8;
        }
        total += u64::from(fold(acc));
    }
    fold(total)
}

/// Adds folded sums (from [`data`], [`pseudo_header_v4`] or 16-bit fields).
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u64::from(s)).sum())
}

/// The folded sum of the IPv4 pseudo-header used by TCP and UDP
/// (RFC 9293 (3.1)): source and destination addresses, zero, protocol, and
/// `length`, the length of the transport header plus payload.
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: IpProtocol, length: u32) -> u16 {
    let [s0, s1, s2, s3] = src.octets();
    let [d0, d1, d2, d3] = dst.octets();
    let sum = u64::from(u16::from_be_bytes([s0, s1]))
        + u64::from(u16::from_be_bytes([s2, s3]))
        + u64::from(u16::from_be_bytes([d0, d1]))
        + u64::from(u16::from_be_bytes([d2, d3]))
        + u64::from(u8::from(protocol))
        + u64::from(length >> 16)
        + u64::from(length & 0xffff);
    fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte-by-byte reference, the textbook loop.
    fn naive(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        let mut i = 0;
        while i < data.len() {
            let hi = u32::from(data[i]) << 8;
            let lo = data.get(i + 1).map_or(0, |&b| u32::from(b));
            sum += hi | lo;
            sum = (sum & 0xffff) + (sum >> 16);
            i += 2;
        }
        sum as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 (3): the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(data(&bytes), 0xddf2);
        assert_eq!(!data(&bytes), 0x220d);
        assert_eq!(combine(&[data(&bytes[..4]), data(&bytes[4..])]), 0xddf2);
    }

    #[test]
    fn known_ipv4_header() {
        // The header from Wikipedia's "IPv4 header checksum" example.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(!data(&hdr), 0xb861);
        let mut with = hdr;
        with[10] = 0xb8;
        with[11] = 0x61;
        assert_eq!(data(&with), 0xffff);
    }

    #[test]
    fn edge_cases() {
        assert_eq!(data(&[]), 0);
        assert_eq!(data(&[0xab]), 0xab00);
        assert_eq!(data(&[0xff; 2]), 0xffff);
        assert_eq!(data(&[0xff; 4096]), 0xffff);
        assert_eq!(combine(&[]), 0);
        assert_eq!(combine(&[0xffff, 0x0001]), 0x0001);
        assert_eq!(combine(&[0x8000, 0x8000]), 0x0001);
    }

    #[test]
    fn matches_naive_on_every_length_and_alignment() {
        let mut x: u32 = 0x1234_5678;
        let bytes: Vec<u8> = (0..300)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for start in 0..9 {
            for end in start..bytes.len() {
                assert_eq!(data(&bytes[start..end]), naive(&bytes[start..end]));
            }
        }
    }

    #[test]
    fn large_buffer_folds() {
        let big = vec![0xffu8; (FOLD_EVERY * 3) + 7];
        assert_eq!(data(&big), naive(&big));
    }

    #[test]
    fn pseudo_header() {
        let src = Ipv4Addr::new(192, 168, 0, 1);
        let dst = Ipv4Addr::new(192, 168, 0, 199);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src.octets());
        bytes.extend_from_slice(&dst.octets());
        bytes.extend_from_slice(&[0, 6, 0x01, 0x2c]);
        assert_eq!(
            pseudo_header_v4(src, dst, IpProtocol::Tcp, 300),
            data(&bytes)
        );
    }
}
