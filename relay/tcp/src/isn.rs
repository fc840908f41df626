//! Initial sequence numbers (RFC 6528) and per-connection timestamp offsets,
//! from a caller-supplied secret, with SipHash-2-4 written here so the crate
//! needs no crypto dependency.

use core::net::SocketAddrV4;

use relay_wire::SeqNumber;

use crate::time::Instant;
use crate::tuple::FourTuple;

/// SipHash-2-4 of `data` under `key` (Aumasson and Bernstein, 2012).
pub fn siphash24(key: &[u8; 16], data: &[u8]) -> u64 {
    let k0 = u64::from_le_bytes(half(key, 0));
    let k1 = u64::from_le_bytes(half(key, 8));
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let m = u64::from_le_bytes(word);
        v[3] ^= m;
        sip_round(&mut v);
        sip_round(&mut v);
        v[0] ^= m;
    }
    let rest = chunks.remainder();
    let mut last = [0u8; 8];
    last[..rest.len()].copy_from_slice(rest);
    last[7] = data.len() as u8;
    let m = u64::from_le_bytes(last);
    v[3] ^= m;
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^= m;
    v[2] ^= 0xff;
    for _ in 0..4 {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

fn half(key: &[u8; 16], at: usize) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&key[at..at + 8]);
    out
}

fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

/// The per-boot secret from which ISNs and timestamp offsets are derived.
///
/// The caller supplies the 128-bit key (from its own random source); the
/// engine never draws randomness itself. All relays of a cluster may share
/// one secret or not: a checkpoint carries the ISNs and offsets it needs.
#[derive(Clone)]
pub struct IsnSecret {
    key: [u8; 16],
}

impl core::fmt::Debug for IsnSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("IsnSecret(..)")
    }
}

fn addr_bytes(out: &mut [u8; 13], a: SocketAddrV4, b: SocketAddrV4, domain: u8) {
    out[0..4].copy_from_slice(&a.ip().octets());
    out[4..6].copy_from_slice(&a.port().to_be_bytes());
    out[6..10].copy_from_slice(&b.ip().octets());
    out[10..12].copy_from_slice(&b.port().to_be_bytes());
    out[12] = domain;
}

impl IsnSecret {
    /// A secret from 16 caller-supplied random bytes.
    pub const fn new(key: [u8; 16]) -> IsnSecret {
        IsnSecret { key }
    }

    /// RFC 6528 (3): `ISN = M + F(localip, localport, remoteip, remoteport,
    /// secretkey)` where `M` is a timer ticking every 4 microseconds and `F`
    /// is SipHash-2-4 keyed by the secret.
    pub fn isn(&self, tuple: &FourTuple, now: Instant) -> SeqNumber {
        let mut data = [0u8; 13];
        addr_bytes(&mut data, tuple.local, tuple.remote, 0);
        let f = siphash24(&self.key, &data) as u32;
        let m = (now.micros() / 4) as u32;
        SeqNumber(m.wrapping_add(f))
    }

    /// A per-connection offset added to the millisecond clock to make TSval
    /// (RFC 7323 (7.1): timestamps should not leak the host clock).
    pub fn ts_offset(&self, tuple: &FourTuple) -> u32 {
        let mut data = [0u8; 13];
        addr_bytes(&mut data, tuple.local, tuple.remote, 1);
        siphash24(&self.key, &data) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    #[test]
    fn siphash_reference_vectors() {
        // From the SipHash paper, appendix A: key 00..0f, message 00..0e.
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let msg: Vec<u8> = (0u8..15).collect();
        assert_eq!(siphash24(&key, &msg), 0xa129_ca61_49be_45e5);
        // The reference implementation's vectors.h, lengths 0 and 8.
        assert_eq!(siphash24(&key, &[]), 0x726f_db47_dd0e_0e31);
        let msg8: Vec<u8> = (0u8..8).collect();
        assert_eq!(siphash24(&key, &msg8), 0x93f5_f579_9a93_2462);
    }

    #[test]
    fn isn_depends_on_tuple_secret_and_clock() {
        let tuple = FourTuple::new(
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 443),
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 40000),
        );
        let other = FourTuple::new(
            tuple.local,
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 40001),
        );
        let s = IsnSecret::new([7; 16]);
        let t = Instant::from_secs(1);
        assert_eq!(s.isn(&tuple, t), s.isn(&tuple, t));
        assert_ne!(s.isn(&tuple, t), s.isn(&other, t));
        assert_ne!(s.isn(&tuple, t), IsnSecret::new([8; 16]).isn(&tuple, t));
        // M ticks every 4 microseconds.
        assert_eq!(
            s.isn(&tuple, t + core::time::Duration::from_micros(40)) - s.isn(&tuple, t),
            10
        );
        assert_ne!(s.ts_offset(&tuple), s.ts_offset(&other));
        assert_eq!(format!("{s:?}"), "IsnSecret(..)");
    }
}
