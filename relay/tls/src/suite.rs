//! Protocol versions and the AEAD cipher suites the relay runs.

use ring::{aead, hkdf};
use rustls::SupportedCipherSuite;
use rustls::crypto::ring::cipher_suite as rs;

/// The TLS version of a connection. Only the two versions rustls offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// TLS 1.2 (RFC 5246) with AEAD suites only.
    Tls12,
    /// TLS 1.3 (RFC 8446).
    Tls13,
}

impl Version {
    /// The wire value (`0x0303` / `0x0304`).
    pub fn wire(self) -> u16 {
        match self {
            Version::Tls12 => 0x0303,
            Version::Tls13 => 0x0304,
        }
    }

    /// Parses the wire value; `None` for anything but 1.2 and 1.3.
    pub fn from_wire(v: u16) -> Option<Self> {
        match v {
            0x0303 => Some(Version::Tls12),
            0x0304 => Some(Version::Tls13),
            _ => None,
        }
    }
}

/// The AEAD bulk cipher of a suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Aead {
    /// AES-128-GCM.
    Aes128Gcm,
    /// AES-256-GCM.
    Aes256Gcm,
    /// ChaCha20-Poly1305.
    Chacha20Poly1305,
}

impl Aead {
    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Aead::Aes128Gcm => 16,
            Aead::Aes256Gcm | Aead::Chacha20Poly1305 => 32,
        }
    }

    /// The ring algorithm.
    pub fn ring(self) -> &'static aead::Algorithm {
        match self {
            Aead::Aes128Gcm => &aead::AES_128_GCM,
            Aead::Aes256Gcm => &aead::AES_256_GCM,
            Aead::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

/// Every suite the relay can run: all AEAD suites rustls' ring provider offers.
///
/// The discriminants are the IANA code points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Suite {
    /// TLS_AES_128_GCM_SHA256 (0x1301).
    Tls13Aes128GcmSha256,
    /// TLS_AES_256_GCM_SHA384 (0x1302).
    Tls13Aes256GcmSha384,
    /// TLS_CHACHA20_POLY1305_SHA256 (0x1303).
    Tls13Chacha20Poly1305Sha256,
    /// TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 (0xc02b).
    Tls12EcdheEcdsaAes128GcmSha256,
    /// TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 (0xc02c).
    Tls12EcdheEcdsaAes256GcmSha384,
    /// TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 (0xc02f).
    Tls12EcdheRsaAes128GcmSha256,
    /// TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 (0xc030).
    Tls12EcdheRsaAes256GcmSha384,
    /// TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 (0xcca8).
    Tls12EcdheRsaChacha20Poly1305Sha256,
    /// TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 (0xcca9).
    Tls12EcdheEcdsaChacha20Poly1305Sha256,
}

impl Suite {
    /// All suites, TLS 1.3 first, in the server's preference order.
    pub const ALL: [Suite; 9] = [
        Suite::Tls13Aes128GcmSha256,
        Suite::Tls13Aes256GcmSha384,
        Suite::Tls13Chacha20Poly1305Sha256,
        Suite::Tls12EcdheEcdsaAes128GcmSha256,
        Suite::Tls12EcdheEcdsaAes256GcmSha384,
        Suite::Tls12EcdheEcdsaChacha20Poly1305Sha256,
        Suite::Tls12EcdheRsaAes128GcmSha256,
        Suite::Tls12EcdheRsaAes256GcmSha384,
        Suite::Tls12EcdheRsaChacha20Poly1305Sha256,
    ];

    /// The IANA code point.
    pub fn iana(self) -> u16 {
        match self {
            Suite::Tls13Aes128GcmSha256 => 0x1301,
            Suite::Tls13Aes256GcmSha384 => 0x1302,
            Suite::Tls13Chacha20Poly1305Sha256 => 0x1303,
            Suite::Tls12EcdheEcdsaAes128GcmSha256 => 0xc02b,
            Suite::Tls12EcdheEcdsaAes256GcmSha384 => 0xc02c,
            Suite::Tls12EcdheRsaAes128GcmSha256 => 0xc02f,
            Suite::Tls12EcdheRsaAes256GcmSha384 => 0xc030,
            Suite::Tls12EcdheRsaChacha20Poly1305Sha256 => 0xcca8,
            Suite::Tls12EcdheEcdsaChacha20Poly1305Sha256 => 0xcca9,
        }
    }

    /// Looks a code point up; `None` for suites the relay does not run.
    pub fn from_iana(v: u16) -> Option<Self> {
        Suite::ALL.into_iter().find(|s| s.iana() == v)
    }

    /// The IANA name, as `openssl ciphers -stdname` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Suite::Tls13Aes128GcmSha256 => "TLS_AES_128_GCM_SHA256",
            Suite::Tls13Aes256GcmSha384 => "TLS_AES_256_GCM_SHA384",
            Suite::Tls13Chacha20Poly1305Sha256 => "TLS_CHACHA20_POLY1305_SHA256",
            Suite::Tls12EcdheEcdsaAes128GcmSha256 => "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            Suite::Tls12EcdheEcdsaAes256GcmSha384 => "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            Suite::Tls12EcdheRsaAes128GcmSha256 => "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            Suite::Tls12EcdheRsaAes256GcmSha384 => "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            Suite::Tls12EcdheRsaChacha20Poly1305Sha256 => {
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"
            }
            Suite::Tls12EcdheEcdsaChacha20Poly1305Sha256 => {
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
            }
        }
    }

    /// The protocol version the suite belongs to.
    pub fn version(self) -> Version {
        match self {
            Suite::Tls13Aes128GcmSha256
            | Suite::Tls13Aes256GcmSha384
            | Suite::Tls13Chacha20Poly1305Sha256 => Version::Tls13,
            _ => Version::Tls12,
        }
    }

    /// The bulk AEAD.
    pub fn aead(self) -> Aead {
        match self {
            Suite::Tls13Aes128GcmSha256
            | Suite::Tls12EcdheEcdsaAes128GcmSha256
            | Suite::Tls12EcdheRsaAes128GcmSha256 => Aead::Aes128Gcm,
            Suite::Tls13Aes256GcmSha384
            | Suite::Tls12EcdheEcdsaAes256GcmSha384
            | Suite::Tls12EcdheRsaAes256GcmSha384 => Aead::Aes256Gcm,
            Suite::Tls13Chacha20Poly1305Sha256
            | Suite::Tls12EcdheRsaChacha20Poly1305Sha256
            | Suite::Tls12EcdheEcdsaChacha20Poly1305Sha256 => Aead::Chacha20Poly1305,
        }
    }

    /// The suite's hash length (the TLS 1.3 traffic secret length).
    pub fn hash_len(self) -> usize {
        match self {
            Suite::Tls13Aes256GcmSha384
            | Suite::Tls12EcdheEcdsaAes256GcmSha384
            | Suite::Tls12EcdheRsaAes256GcmSha384 => 48,
            _ => 32,
        }
    }

    /// HKDF over the suite's hash (used for TLS 1.3 key derivation).
    pub(crate) fn hkdf(self) -> hkdf::Algorithm {
        if self.hash_len() == 48 {
            hkdf::HKDF_SHA384
        } else {
            hkdf::HKDF_SHA256
        }
    }

    /// Whether a TLS 1.2 suite needs an ECDSA certificate (`Some(true)`), an RSA
    /// one (`Some(false)`); `None` for TLS 1.3 suites, which work with either.
    pub fn needs_ecdsa(self) -> Option<bool> {
        match self {
            Suite::Tls12EcdheEcdsaAes128GcmSha256
            | Suite::Tls12EcdheEcdsaAes256GcmSha384
            | Suite::Tls12EcdheEcdsaChacha20Poly1305Sha256 => Some(true),
            Suite::Tls12EcdheRsaAes128GcmSha256
            | Suite::Tls12EcdheRsaAes256GcmSha384
            | Suite::Tls12EcdheRsaChacha20Poly1305Sha256 => Some(false),
            _ => None,
        }
    }

    /// The rustls (ring provider) suite.
    pub fn rustls(self) -> SupportedCipherSuite {
        match self {
            Suite::Tls13Aes128GcmSha256 => rs::TLS13_AES_128_GCM_SHA256,
            Suite::Tls13Aes256GcmSha384 => rs::TLS13_AES_256_GCM_SHA384,
            Suite::Tls13Chacha20Poly1305Sha256 => rs::TLS13_CHACHA20_POLY1305_SHA256,
            Suite::Tls12EcdheEcdsaAes128GcmSha256 => rs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            Suite::Tls12EcdheEcdsaAes256GcmSha384 => rs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            Suite::Tls12EcdheRsaAes128GcmSha256 => rs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            Suite::Tls12EcdheRsaAes256GcmSha384 => rs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            Suite::Tls12EcdheRsaChacha20Poly1305Sha256 => {
                rs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            }
            Suite::Tls12EcdheEcdsaChacha20Poly1305Sha256 => {
                rs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            }
        }
    }
}

impl core::fmt::Display for Suite {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}
