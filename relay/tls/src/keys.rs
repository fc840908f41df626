//! TLS 1.3 key derivation (RFC 8446 section 7) on ring's HKDF.

use ring::hkdf;

use crate::error::Error;
use crate::suite::Suite;

/// Length of every AEAD nonce / record IV used here (RFC 8446 5.3: iv_length 12).
pub const IV_LEN: usize = 12;

/// An output length for ring's HKDF.
struct OutLen(usize);

impl hkdf::KeyType for OutLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label (RFC 8446 7.1) into `out` (whose length is `Length`).
pub(crate) fn expand_label(
    alg: hkdf::Algorithm,
    secret: &[u8],
    label: &[u8],
    context: &[u8],
    out: &mut [u8],
) -> Result<(), Error> {
    const PREFIX: &[u8] = b"tls13 ";
    let len = u16::try_from(out.len()).map_err(|_| Error::Internal("hkdf output too long"))?;
    let len = len.to_be_bytes();
    let label_len = u8::try_from(PREFIX.len() + label.len())
        .map_err(|_| Error::Internal("hkdf label too long"))?;
    let ctx_len =
        u8::try_from(context.len()).map_err(|_| Error::Internal("hkdf context too long"))?;
    let info: [&[u8]; 6] = [&len, &[label_len], PREFIX, label, &[ctx_len], context];
    let prk = hkdf::Prk::new_less_safe(alg, secret);
    let okm = prk
        .expand(&info, OutLen(out.len()))
        .map_err(|_| Error::Internal("hkdf expand"))?;
    okm.fill(out).map_err(|_| Error::Internal("hkdf fill"))
}

/// Derives the record key and IV from a traffic secret (RFC 8446 7.3).
pub(crate) fn traffic_key_iv(
    suite: Suite,
    secret: &[u8],
) -> Result<(Vec<u8>, [u8; IV_LEN]), Error> {
    let mut key = vec![0u8; suite.aead().key_len()];
    let mut iv = [0u8; IV_LEN];
    expand_label(suite.hkdf(), secret, b"key", &[], &mut key)?;
    expand_label(suite.hkdf(), secret, b"iv", &[], &mut iv)?;
    Ok((key, iv))
}

/// The next application traffic secret after a KeyUpdate (RFC 8446 7.2):
/// `HKDF-Expand-Label(secret_N, "traffic upd", "", Hash.length)`.
pub(crate) fn next_traffic_secret(suite: Suite, secret: &[u8]) -> Result<Vec<u8>, Error> {
    let mut next = vec![0u8; suite.hash_len()];
    expand_label(suite.hkdf(), secret, b"traffic upd", &[], &mut next)?;
    Ok(next)
}

/// The per-record nonce: the IV xor the sequence number left-padded to 12
/// bytes (RFC 8446 5.3; also TLS 1.2 ChaCha20-Poly1305, RFC 7905 section 2, and
/// our TLS 1.2 GCM explicit nonce choice, see `record`).
pub(crate) fn nonce(iv: &[u8; IV_LEN], seq: u64) -> [u8; IV_LEN] {
    let mut n = *iv;
    for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
        *b ^= s;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::hex;

    /// RFC 8448 section 3: {server} derive write traffic keys for application data.
    #[test]
    fn rfc8448_server_application_key_iv() {
        let secret = hex("a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643");
        let (key, iv) = traffic_key_iv(Suite::Tls13Aes128GcmSha256, &secret).unwrap();
        assert_eq!(key, hex("9f02283b6c9c07efc26bb9f2ac92e356"));
        assert_eq!(iv.to_vec(), hex("cf782b88dd83549aadf1e984"));
    }

    /// RFC 8448 section 3: {client} derive write traffic keys for application data.
    #[test]
    fn rfc8448_client_application_key_iv() {
        let secret = hex("9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5");
        let (key, iv) = traffic_key_iv(Suite::Tls13Aes128GcmSha256, &secret).unwrap();
        assert_eq!(key, hex("17422dda596ed5d9acd890e3c63f5051"));
        assert_eq!(iv.to_vec(), hex("5b78923dee08579033e523d9"));
    }

    /// A "traffic upd" vector for a SHA-384 suite (published with s2n-tls'
    /// key schedule tests; also cross-checked against rustls in tests/).
    #[test]
    fn traffic_update_sha384() {
        let secret = hex(
            "4bc28934ddd802b00f479e14a72d7725dab45d32b3b145f29e4c5b56677560eb5236b168c71c5c75aa52f3e20ee89bfb",
        );
        let next = next_traffic_secret(Suite::Tls13Aes256GcmSha384, &secret).unwrap();
        assert_eq!(
            next,
            hex(
                "ee85dd54781bd4d8a100589a9fe6ac9a3797b811e977f549cd531be2441d7c63e2b9729d145c11d84af35957727565a4"
            )
        );
    }

    #[test]
    fn nonce_xors_the_low_bytes() {
        let iv = [0x11; IV_LEN];
        assert_eq!(nonce(&iv, 0), iv);
        let n = nonce(&iv, 0x0102);
        assert_eq!(&n[..10], &[0x11; 10]);
        assert_eq!(&n[10..], &[0x11 ^ 1, 0x11 ^ 2]);
    }
}
