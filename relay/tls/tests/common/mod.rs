//! Shared test helpers: fixtures, configs, an in-memory rustls client pairing.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use relay_tls::{
    Established, HandshakeDriver, HandshakeStatus, ReadStatus, RecordLayer, Suite, TlsServerConfig,
    TlsServerConfigBuilder, Version,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// The test PKI: an ECDSA leaf (localhost, ecdsa.test, *.wild.test) and an
/// RSA leaf with an intermediate (localhost, rsa.test). ECDSA is first, so it
/// is the default.
pub fn server_builder() -> TlsServerConfigBuilder {
    TlsServerConfig::builder()
        .certificate_pem_files(
            fixture("ecdsa.pem"),
            fixture("ecdsa.key"),
            &["localhost", "ecdsa.test", "*.wild.test"],
        )
        .unwrap()
        .certificate_pem_files(
            fixture("rsa.pem"),
            fixture("rsa.key"),
            &["localhost", "rsa.test"],
        )
        .unwrap()
}

pub fn server_config() -> TlsServerConfig {
    server_builder().build().unwrap()
}

pub fn roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(fixture("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

/// A rustls client restricted to `suites` (and their versions).
pub fn client_config(suites: &[Suite]) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = suites.iter().map(|s| s.rustls()).collect();
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if suites.iter().any(|s| s.version() == Version::Tls13) {
        versions.push(&rustls::version::TLS13);
    }
    if suites.iter().any(|s| s.version() == Version::Tls12) {
        versions.push(&rustls::version::TLS12);
    }
    let cfg = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&versions)
        .unwrap()
        .with_root_certificates(roots())
        .with_no_client_auth();
    Arc::new(cfg)
}

pub fn client(cfg: &Arc<ClientConfig>, name: &str) -> ClientConnection {
    ClientConnection::new(cfg.clone(), ServerName::try_from(name.to_owned()).unwrap()).unwrap()
}

pub fn now() -> UnixTime {
    UnixTime::now()
}

/// Runs a handshake in memory until both sides are done and the server's
/// output (tickets included) reached the client.
pub fn handshake_at(
    cfg: &TlsServerConfig,
    client: &mut ClientConnection,
    at: UnixTime,
) -> Result<Established, relay_tls::Error> {
    let mut driver = HandshakeDriver::new(cfg)?;
    for _ in 0..100 {
        let mut c2s = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut c2s).unwrap();
        }
        let status = driver.handle_input(at, &c2s);
        let mut s2c = Vec::new();
        driver.poll_transmit(&mut s2c);
        if !s2c.is_empty() {
            let mut rd = &s2c[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
            }
            let _ = client.process_new_packets();
        }
        if status? == HandshakeStatus::Complete && !client.is_handshaking() {
            return driver.into_established();
        }
        assert!(!(c2s.is_empty() && s2c.is_empty()), "handshake stuck");
    }
    panic!("handshake did not finish");
}

pub fn handshake(cfg: &TlsServerConfig, client: &mut ClientConnection) -> Established {
    handshake_at(cfg, client, now()).unwrap()
}

/// Sends `data` from the rustls client and opens it with the record layer.
#[track_caller]
pub fn client_to_server(
    client: &mut ClientConnection,
    server: &mut RecordLayer,
    data: &[u8],
) -> Vec<u8> {
    client.writer().write_all(data).unwrap();
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).unwrap();
    }
    let mut pt = Vec::new();
    let r = server.read(&wire, &mut pt);
    assert_eq!(r.consumed, wire.len(), "{r:?}");
    assert!(matches!(r.status, ReadStatus::NeedMore { .. }), "{r:?}");
    pt
}

/// Hands server-sealed bytes to the rustls client; returns the plaintext it reads.
#[track_caller]
pub fn feed_client(client: &mut ClientConnection, wire: &[u8]) -> Vec<u8> {
    let mut rd = wire;
    let mut pt = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
        }
        client.process_new_packets().unwrap();
        // Drain rustls' plaintext buffer as we go: it is bounded.
        loop {
            match client.reader().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => pt.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("client read: {e}"),
            }
        }
        if rd.is_empty() {
            break;
        }
    }
    pt
}

/// Seals `data` on the record layer and has the rustls client read it.
#[track_caller]
pub fn server_to_client(
    server: &mut RecordLayer,
    client: &mut ClientConnection,
    data: &[u8],
    max_record: usize,
) -> Vec<u8> {
    let mut wire = Vec::new();
    let plan = relay_tls::plan_records(data.len(), max_record);
    let _ = server.seal(data, &plan, &mut wire).unwrap();
    feed_client(client, &wire)
}

pub fn pattern(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}
