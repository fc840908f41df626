//! Splitting a received byte stream into TLS records, telling an incomplete
//! record (wait for more bytes) from a malformed one (alert and close).

use crate::error::Violation;
use crate::suite::Version;

/// Bytes in a record header: type, legacy version, length (RFC 8446 5.1).
pub const RECORD_HEADER_LEN: usize = 5;
/// Most plaintext in one record (RFC 8446 5.1, RFC 5246 6.2.1).
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// Most ciphertext in one TLS 1.3 record (RFC 8446 5.2: 2^14 + 256).
pub const MAX_CIPHERTEXT_TLS13: usize = MAX_PLAINTEXT + 256;
/// Most ciphertext in one TLS 1.2 record (RFC 5246 6.2.3: 2^14 + 2048).
pub const MAX_CIPHERTEXT_TLS12: usize = MAX_PLAINTEXT + 2048;

/// Record content types (RFC 8446 5.1).
pub mod content_type {
    /// change_cipher_spec.
    pub const CHANGE_CIPHER_SPEC: u8 = 20;
    /// alert.
    pub const ALERT: u8 = 21;
    /// handshake.
    pub const HANDSHAKE: u8 = 22;
    /// application_data.
    pub const APPLICATION_DATA: u8 = 23;
}

/// A record header that passed the structural checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// The outer content type (20..=23).
    pub content_type: u8,
    /// The legacy record version (always 0x0303 once accepted).
    pub version: u16,
    /// Length of the record body (the bytes after the header).
    pub len: usize,
}

/// What the front of a byte stream holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deframed {
    /// Not a whole record yet; at least `needed` more bytes are required.
    Incomplete {
        /// Bytes still missing (exact once the header is complete).
        needed: usize,
    },
    /// A whole record: `input[..RECORD_HEADER_LEN + header.len]`.
    Record(RecordHeader),
}

/// Looks at the front of `input` for one record of a connection that runs
/// `version`. Checks each header byte as soon as it is there, so garbage is
/// reported as malformed without waiting for a length's worth of bytes.
pub fn deframe(input: &[u8], version: Version) -> Result<Deframed, Violation> {
    if let Some(&t) = input.first()
        && !(content_type::CHANGE_CIPHER_SPEC..=content_type::APPLICATION_DATA).contains(&t)
    {
        return Err(Violation::UnexpectedContentType(t));
    }
    // The legacy version is 0x0303 for every record after the handshake
    // (RFC 8446 5.1, and the negotiated version in TLS 1.2).
    if let Some(&major) = input.get(1)
        && major != 0x03
    {
        return Err(Violation::BadRecordVersion(u16::from(major) << 8));
    }
    if let Some(&minor) = input.get(2)
        && minor != 0x03
    {
        return Err(Violation::BadRecordVersion(0x0300 | u16::from(minor)));
    }
    if input.len() < RECORD_HEADER_LEN {
        return Ok(Deframed::Incomplete {
            needed: RECORD_HEADER_LEN - input.len(),
        });
    }
    let len = usize::from(u16::from_be_bytes([input[3], input[4]]));
    let max = match version {
        Version::Tls13 => MAX_CIPHERTEXT_TLS13,
        Version::Tls12 => MAX_CIPHERTEXT_TLS12,
    };
    if len > max {
        return Err(Violation::RecordOverflow(len));
    }
    let total = RECORD_HEADER_LEN + len;
    if input.len() < total {
        return Ok(Deframed::Incomplete {
            needed: total - input.len(),
        });
    }
    Ok(Deframed::Record(RecordHeader {
        content_type: input[0],
        version: 0x0303,
        len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_until_whole() {
        let rec = [23, 3, 3, 0, 3, 1, 2, 3];
        for n in 0..rec.len() {
            let want = if n < 5 { 5 - n } else { 8 - n };
            assert_eq!(
                deframe(&rec[..n], Version::Tls13),
                Ok(Deframed::Incomplete { needed: want })
            );
        }
        assert_eq!(
            deframe(&rec, Version::Tls13),
            Ok(Deframed::Record(RecordHeader {
                content_type: 23,
                version: 0x0303,
                len: 3
            }))
        );
    }

    #[test]
    fn malformed_as_soon_as_visible() {
        assert_eq!(
            deframe(&[0x16 + 0x10], Version::Tls13),
            Err(Violation::UnexpectedContentType(0x26))
        );
        assert_eq!(
            deframe(&[0], Version::Tls12),
            Err(Violation::UnexpectedContentType(0))
        );
        assert_eq!(
            deframe(b"GET / HTTP/1.1", Version::Tls12),
            Err(Violation::UnexpectedContentType(b'G'))
        );
        assert_eq!(
            deframe(&[23, 2], Version::Tls13),
            Err(Violation::BadRecordVersion(0x0200))
        );
        assert_eq!(
            deframe(&[23, 3, 1], Version::Tls13),
            Err(Violation::BadRecordVersion(0x0301))
        );
    }

    #[test]
    fn length_limits_per_version() {
        let hdr = |len: usize| [23, 3, 3, (len >> 8) as u8, len as u8];
        assert!(matches!(
            deframe(&hdr(MAX_CIPHERTEXT_TLS13), Version::Tls13),
            Ok(Deframed::Incomplete { .. })
        ));
        assert_eq!(
            deframe(&hdr(MAX_CIPHERTEXT_TLS13 + 1), Version::Tls13),
            Err(Violation::RecordOverflow(MAX_CIPHERTEXT_TLS13 + 1))
        );
        assert!(matches!(
            deframe(&hdr(MAX_CIPHERTEXT_TLS12), Version::Tls12),
            Ok(Deframed::Incomplete { .. })
        ));
        assert_eq!(
            deframe(&hdr(MAX_CIPHERTEXT_TLS12 + 1), Version::Tls12),
            Err(Violation::RecordOverflow(MAX_CIPHERTEXT_TLS12 + 1))
        );
    }
}
