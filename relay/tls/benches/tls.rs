//! Prints record-layer throughput per suite (seal and open at 16 KiB and
//! 1400-byte records, beside ring's raw AEAD on the same buffers) and
//! handshakes per second on one core (full and resumed).
//!
//! Run: `cargo bench --bench tls` (optimised). Each figure is measured for
//! about `RELAY_TLS_BENCH_SECS` (default 0.3) seconds on one thread.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_tls::{
    HandshakeDriver, HandshakeStatus, RecordLayer, RecordState, Suite, TlsServerConfig,
    TrafficState, Version, plan_records,
};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

fn budget() -> Duration {
    let secs: f64 = std::env::var("RELAY_TLS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.3);
    Duration::from_secs_f64(secs)
}

/// Runs `f` (which processes `bytes` bytes) repeatedly for the budget; MB/s.
fn mbps(bytes: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm up
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget() {
        f();
        n += 1;
    }
    (n as f64 * bytes as f64) / start.elapsed().as_secs_f64() / 1e6
}

fn state(suite: Suite, fill: u8) -> RecordState {
    match suite.version() {
        Version::Tls13 => {
            RecordState::from_tls13_secret(suite, &vec![fill; suite.hash_len()], 0).unwrap()
        }
        Version::Tls12 => RecordState {
            suite,
            secret: std::sync::Arc::from([]),
            key: vec![fill; suite.aead().key_len()].into(),
            iv: [fill; 12],
            seq: 0,
        },
    }
}

const TOTAL: usize = 1 << 20;

fn record_bench(suite: Suite, record: usize) -> [f64; 4] {
    let traffic = TrafficState::new(state(suite, 1), state(suite, 2)).unwrap();
    let peer = TrafficState::new(state(suite, 2), state(suite, 1)).unwrap();
    let plaintext = vec![0x5au8; TOTAL];
    let plan = plan_records(TOTAL, record);

    // Seal 1 MiB into records of `record` bytes.
    let mut layer = RecordLayer::new(traffic.clone()).unwrap();
    let mut out = Vec::with_capacity(TOTAL * 2);
    let seal = mbps(TOTAL, || {
        out.clear();
        let _ = layer.seal(&plaintext, &plan, &mut out).unwrap();
    });

    // Open the same 1 MiB as the peer sealed it (fresh read state each pass).
    let mut wire = Vec::new();
    let _ = RecordLayer::new(peer)
        .unwrap()
        .seal(&plaintext, &plan, &mut wire)
        .unwrap();
    let mut pt = Vec::with_capacity(TOTAL * 2);
    let open = mbps(TOTAL, || {
        let mut l = RecordLayer::new(traffic.clone()).unwrap();
        pt.clear();
        let r = l.read(&wire, &mut pt);
        assert_eq!(r.plaintext, TOTAL);
    });

    // ring alone: the same AEAD on the same record sizes, no framing.
    let key = LessSafeKey::new(
        UnboundKey::new(suite.aead().ring(), &vec![1u8; suite.aead().key_len()]).unwrap(),
    );
    let mut buf = vec![0x5au8; record];
    let mut seq = 0u64;
    let mut nonce = || {
        seq += 1;
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&seq.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    };
    let raw_seal = mbps(TOTAL, || {
        for _ in 0..plan.len() {
            let _ = key
                .seal_in_place_separate_tag(nonce(), Aad::from([0u8; 13]), &mut buf)
                .unwrap();
        }
    });
    let mut sealed = vec![0x5au8; record];
    let n0 = Nonce::assume_unique_for_key([0; 12]);
    let tag = key
        .seal_in_place_separate_tag(n0, Aad::from([0u8; 13]), &mut sealed)
        .unwrap();
    sealed.extend_from_slice(tag.as_ref());
    let mut scratch = Vec::with_capacity(record + 16);
    let raw_open = mbps(TOTAL, || {
        for _ in 0..plan.len() {
            // Copy then open in place, as the record layer does.
            scratch.clear();
            scratch.extend_from_slice(&sealed);
            let n0 = Nonce::assume_unique_for_key([0; 12]);
            let _ = key
                .open_in_place(n0, Aad::from([0u8; 13]), &mut scratch)
                .unwrap();
        }
    });
    [seal, open, raw_seal, raw_open]
}

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn client_config(suite: Suite) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(data("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![suite.rustls()];
    let v: &'static rustls::SupportedProtocolVersion = match suite.version() {
        Version::Tls13 => &rustls::version::TLS13,
        Version::Tls12 => &rustls::version::TLS12,
    };
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[v])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// One in-memory handshake; returns the time spent in the server (driver) code.
fn handshake(cfg: &TlsServerConfig, client: &mut ClientConnection) -> (Duration, bool) {
    let mut server_time = Duration::ZERO;
    let t = Instant::now();
    let mut driver = HandshakeDriver::new(cfg).unwrap();
    server_time += t.elapsed();
    let now = UnixTime::now();
    loop {
        let mut c2s = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut c2s).unwrap();
        }
        let t = Instant::now();
        let status = driver.handle_input(now, &c2s).unwrap();
        let mut s2c = Vec::new();
        driver.poll_transmit(&mut s2c);
        server_time += t.elapsed();
        let mut rd = &s2c[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
        }
        client.process_new_packets().unwrap();
        if status == HandshakeStatus::Complete && !client.is_handshaking() {
            let t = Instant::now();
            let est = driver.into_established().unwrap();
            let _layer = RecordLayer::new(est.traffic).unwrap();
            server_time += t.elapsed();
            return (server_time, est.info.resumed);
        }
    }
}

/// (handshakes/s counting both ends, handshakes/s of server CPU only).
fn handshake_rate(cfg: &TlsServerConfig, suite: Suite, name: &str, resumed: bool) -> (f64, f64) {
    let ccfg = client_config(suite);
    let sni = ServerName::try_from(name.to_owned()).unwrap();
    let one = || {
        if !resumed {
            // A fresh client config each time: nothing to resume from.
            let mut c = ClientConnection::new(client_config(suite), sni.clone()).unwrap();
            let (t, r) = handshake(cfg, &mut c);
            assert!(!r);
            t
        } else {
            let mut c = ClientConnection::new(ccfg.clone(), sni.clone()).unwrap();
            let (t, r) = handshake(cfg, &mut c);
            assert!(r, "expected a resumed handshake");
            t
        }
    };
    if resumed {
        // Prime the client's session cache.
        let mut c = ClientConnection::new(ccfg.clone(), sni.clone()).unwrap();
        let _ = handshake(cfg, &mut c);
    }
    let _ = one();
    let start = Instant::now();
    let (mut n, mut server) = (0u32, Duration::ZERO);
    while start.elapsed() < budget() * 3 {
        server += one();
        n += 1;
    }
    (
        f64::from(n) / start.elapsed().as_secs_f64(),
        f64::from(n) / server.as_secs_f64(),
    )
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would run us
    // with no such flag: keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("relay-tls bench: run with `cargo bench --bench tls`");
        return;
    }
    let mut so = std::io::stdout().lock();
    writeln!(
        so,
        "relay-tls record layer, one core, 1 MiB per pass (MB/s = 10^6 bytes/s of plaintext)"
    )
    .unwrap();
    writeln!(
        so,
        "{:<46} {:>7} {:>9} {:>9} {:>10} {:>10}",
        "suite", "record", "seal", "open", "ring seal", "ring open"
    )
    .unwrap();
    for suite in Suite::ALL {
        for record in [16384usize, 1400] {
            let [s, o, rs, ro] = record_bench(suite, record);
            writeln!(
                so,
                "{:<46} {:>7} {:>9.0} {:>9.0} {:>10.0} {:>10.0}",
                suite.name(),
                record,
                s,
                o,
                rs,
                ro
            )
            .unwrap();
        }
    }

    let cfg = TlsServerConfig::builder()
        .certificate_pem_files(
            data("ecdsa.pem"),
            data("ecdsa.key"),
            &["localhost", "ecdsa.test"],
        )
        .unwrap()
        .certificate_pem_files(data("rsa.pem"), data("rsa.key"), &["rsa.test"])
        .unwrap()
        .build()
        .unwrap();
    writeln!(so, "\nhandshakes, in memory with a rustls client, one core").unwrap();
    writeln!(
        so,
        "{:<58} {:>12} {:>14}",
        "kind", "pair/s", "server-only/s"
    )
    .unwrap();
    for (label, suite, name, resumed) in [
        (
            "full TLS 1.3 ECDSA P-256, X25519, AES-128-GCM",
            Suite::Tls13Aes128GcmSha256,
            "ecdsa.test",
            false,
        ),
        (
            "full TLS 1.3 RSA-2048, X25519, AES-128-GCM",
            Suite::Tls13Aes128GcmSha256,
            "rsa.test",
            false,
        ),
        (
            "full TLS 1.2 ECDHE-ECDSA-AES128-GCM",
            Suite::Tls12EcdheEcdsaAes128GcmSha256,
            "ecdsa.test",
            false,
        ),
        (
            "resumed TLS 1.3 (ticket, psk_dhe_ke)",
            Suite::Tls13Aes128GcmSha256,
            "ecdsa.test",
            true,
        ),
        (
            "resumed TLS 1.2 (ticket)",
            Suite::Tls12EcdheEcdsaAes128GcmSha256,
            "ecdsa.test",
            true,
        ),
    ] {
        let (pair, server) = handshake_rate(&cfg, suite, name, resumed);
        writeln!(so, "{label:<58} {pair:>12.0} {server:>14.0}").unwrap();
    }
}
