//! Cross-checks against a rustls client in memory: the handshake driver, the
//! hand-over to the record layer, records both ways for every suite, KeyUpdate
//! from either side, export/import, resumption, SNI, ALPN, config errors.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use relay_tls::config::Tls13Resumption;
use relay_tls::{
    Error, HandshakeDriver, LocalSessionStore, ReadStatus, RecordLayer, Suite, TrafficState,
    Version,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};

/// The certificate a suite needs: 1.2 ECDSA suites the ECDSA one, 1.2 RSA
/// suites the RSA one; TLS 1.3 suites are run with both.
fn cases() -> Vec<(Suite, &'static str)> {
    let mut v = Vec::new();
    for s in Suite::ALL {
        match s.needs_ecdsa() {
            Some(true) => v.push((s, "ecdsa.pem")),
            Some(false) => v.push((s, "rsa.pem")),
            None => {
                v.push((s, "ecdsa.pem"));
                v.push((s, "rsa.pem"));
            }
        }
    }
    v
}

fn leaf(file: &str) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(fixture(file))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
}

#[test]
fn every_suite_both_directions_with_key_updates_and_a_move() {
    let server_cfg = server_config();
    for (suite, cert) in cases() {
        let name = if cert == "rsa.pem" {
            "rsa.test"
        } else {
            "ecdsa.test"
        };
        let ccfg = client_config(&[suite]);
        let mut client = client(&ccfg, name);
        let est = handshake(&server_cfg, &mut client);
        assert_eq!(est.info.suite, suite);
        assert_eq!(est.info.version, suite.version());
        assert_eq!(
            client.peer_certificates().unwrap()[0],
            leaf(cert),
            "{suite}"
        );
        assert!(est.leftover.is_empty());
        let tls13 = suite.version() == Version::Tls13;
        if tls13 {
            // rustls sealed its NewSessionTickets (in one record) under the application key.
            assert!(est.traffic.write.seq >= 1);
            assert_eq!(est.traffic.read.secret.len(), suite.hash_len());
        } else {
            assert_eq!(
                (est.traffic.read.seq, est.traffic.write.seq),
                (1, 1),
                "Finished was record 0"
            );
        }
        let first_read = est.traffic.read.clone();
        let first_write = est.traffic.write.clone();
        let mut server = RecordLayer::new(est.traffic).unwrap();

        for round in 0..6u8 {
            // Client -> server, sizes around record boundaries.
            let up = pattern(20_000 + usize::from(round) * 333, round);
            assert_eq!(
                client_to_server(&mut client, &mut server, &up),
                up,
                "{suite} round {round}"
            );
            // Server -> client at 16 KiB and 1400-byte records.
            let down = pattern(50_000, round ^ 0x5a);
            let max = if round % 2 == 0 { 16384 } else { 1400 };
            assert_eq!(server_to_client(&mut server, &mut client, &down, max), down);
            if tls13 {
                match round % 3 {
                    // Server-initiated, without and with a request.
                    0 => server.initiate_key_update(false).unwrap(),
                    1 => server.initiate_key_update(true).unwrap(),
                    // Client-initiated: rustls always asks us to update too.
                    _ => client.refresh_traffic_keys().unwrap(),
                }
            }
            if round == 3 {
                // Move the connection: export, import into a fresh layer.
                let bytes = server.export();
                drop(server);
                server = RecordLayer::new(TrafficState::import(&bytes).unwrap()).unwrap();
            }
        }
        if tls13 {
            // Both directions moved to new secrets (each KeyUpdate restarts seq at 0).
            let now = server.traffic_state();
            assert_ne!(now.read.secret, first_read.secret, "{suite}");
            assert_ne!(now.write.secret, first_write.secret, "{suite}");
            assert!(now.read.seq < first_read.seq + 40 && now.write.seq < 40);
        }
        // Clean close both ways.
        server.close();
        let mut wire = Vec::new();
        let _ = server.poll_transmit(&mut wire).unwrap();
        assert!(feed_client(&mut client, &wire).is_empty());
        client.send_close_notify();
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let r = server.read(&wire, &mut Vec::new());
        assert_eq!(r.status, ReadStatus::CloseNotify);
    }
}

#[test]
fn export_import_after_n_records_and_m_key_updates() {
    let server_cfg = server_config();
    for suite in [
        Suite::Tls13Aes128GcmSha256,
        Suite::Tls13Aes256GcmSha384,
        Suite::Tls13Chacha20Poly1305Sha256,
    ] {
        for (n, m) in [(0usize, 0usize), (1, 1), (10, 3), (37, 7)] {
            let ccfg = client_config(&[suite]);
            let mut client = client(&ccfg, "localhost");
            let est = handshake(&server_cfg, &mut client);
            let mut server = RecordLayer::new(est.traffic).unwrap();
            let mut updates = 0;
            for i in 0..n {
                if updates < m && i % (n / m.max(1)).max(1) == 0 {
                    if updates % 2 == 0 {
                        server.initiate_key_update(true).unwrap();
                    } else {
                        client.refresh_traffic_keys().unwrap();
                    }
                    updates += 1;
                }
                let d = pattern(1000 + i, i as u8);
                assert_eq!(server_to_client(&mut server, &mut client, &d, 700), d);
                assert_eq!(client_to_server(&mut client, &mut server, &d), d);
            }
            // Export on "relay A", import on "relay B": the client sees one stream.
            let bytes = server.export();
            let mut b = RecordLayer::new(TrafficState::import(&bytes).unwrap()).unwrap();
            for i in 0..5 {
                let d = pattern(3000, 100 + i);
                assert_eq!(server_to_client(&mut b, &mut client, &d, 16384), d);
                assert_eq!(client_to_server(&mut client, &mut b, &d), d);
                b.initiate_key_update(i % 2 == 0).unwrap();
            }
        }
    }
}

#[test]
fn bytes_after_client_finished_are_not_lost() {
    // TLS 1.3: the client's first application data travels with its Finished.
    let server_cfg = server_config();
    for suite in [
        Suite::Tls13Aes128GcmSha256,
        Suite::Tls13Chacha20Poly1305Sha256,
    ] {
        let ccfg = client_config(&[suite]);
        let mut client = client(&ccfg, "localhost");
        use std::io::Write;
        client
            .writer()
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .unwrap();
        let est = handshake(&server_cfg, &mut client);
        assert!(
            !est.leftover.is_empty(),
            "the request came with the Finished"
        );
        let mut server = RecordLayer::new(est.traffic).unwrap();
        let mut pt = Vec::new();
        let r = server.read(&est.leftover, &mut pt);
        assert_eq!(r.consumed, est.leftover.len());
        assert_eq!(pt, b"GET / HTTP/1.1\r\n\r\n");
    }
    // TLS 1.2 resumption: the server's Finished goes first, so the client's
    // CCS, Finished and data arrive together.
    let ccfg = client_config(&[Suite::Tls12EcdheEcdsaAes128GcmSha256]);
    let mut c1 = client(&ccfg, "localhost");
    let _ = handshake(&server_cfg, &mut c1);
    let mut c2 = client(&ccfg, "localhost");
    use std::io::Write;
    c2.writer().write_all(b"early-ish").unwrap();
    let est = handshake(&server_cfg, &mut c2);
    assert!(est.info.resumed);
    let mut server = RecordLayer::new(est.traffic).unwrap();
    let mut pt = Vec::new();
    let _ = server.read(&est.leftover, &mut pt);
    assert_eq!(pt, b"early-ish");
}

#[test]
fn input_split_anywhere_gives_the_same_result() {
    // Feed the client's whole flight (Finished + data) one byte at a time.
    let server_cfg = server_config();
    let ccfg = client_config(&[Suite::Tls13Aes256GcmSha384]);
    let mut client = client(&ccfg, "localhost");
    use std::io::Write;
    client.writer().write_all(b"hello").unwrap();
    let mut driver = HandshakeDriver::new(&server_cfg).unwrap();
    let mut complete = false;
    for _ in 0..20 {
        let mut c2s = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut c2s).unwrap();
        }
        for b in &c2s {
            complete = driver.handle_input(now(), std::slice::from_ref(b)).unwrap()
                == relay_tls::HandshakeStatus::Complete;
        }
        let mut s2c = Vec::new();
        driver.poll_transmit(&mut s2c);
        let _ = feed_client(&mut client, &s2c);
        if complete {
            break;
        }
    }
    let est = driver.into_established().unwrap();
    let mut server = RecordLayer::new(est.traffic).unwrap();
    let mut pt = Vec::new();
    let _ = server.read(&est.leftover, &mut pt);
    assert_eq!(pt, b"hello");
}

#[test]
fn into_established_needs_a_drained_output() {
    let server_cfg = server_config();
    let ccfg = client_config(&[Suite::Tls13Aes128GcmSha256]);
    let mut client = client(&ccfg, "localhost");
    let mut driver = HandshakeDriver::new(&server_cfg).unwrap();
    let mut c2s = Vec::new();
    client.write_tls(&mut c2s).unwrap();
    driver.handle_input(now(), &c2s).unwrap();
    assert!(driver.wants_transmit());
    assert!(matches!(driver.into_established(), Err(Error::Usage(_))));
}

fn resumes(
    server_cfg: &relay_tls::TlsServerConfig,
    ccfg: &Arc<rustls::ClientConfig>,
) -> (bool, bool) {
    let mut c1 = client(ccfg, "localhost");
    let first = handshake(server_cfg, &mut c1);
    let mut c2 = client(ccfg, "localhost");
    let second = handshake(server_cfg, &mut c2);
    // Both connections carry data afterwards.
    let mut s = RecordLayer::new(second.traffic).unwrap();
    assert_eq!(
        server_to_client(&mut s, &mut c2, b"resumed?", 100),
        b"resumed?"
    );
    (first.info.resumed, second.info.resumed)
}

#[test]
fn tls13_ticket_resumption() {
    let cfg = server_config();
    let ccfg = client_config(&[Suite::Tls13Aes128GcmSha256]);
    assert_eq!(resumes(&cfg, &ccfg), (false, true));
}

#[test]
fn tls13_stateful_resumption_is_single_use() {
    let store = LocalSessionStore::new(100);
    let cfg = server_builder()
        .session_store(store.clone())
        .tls13_resumption(Tls13Resumption::Stateful)
        .tickets_per_handshake(1)
        .build()
        .unwrap();
    let ccfg = client_config(&[Suite::Tls13Chacha20Poly1305Sha256]);
    let mut c1 = client(&ccfg, "localhost");
    let _ = handshake(&cfg, &mut c1);
    assert_eq!(store.len(), 1);
    let mut c2 = client(&ccfg, "localhost");
    let e2 = handshake(&cfg, &mut c2);
    assert!(e2.info.resumed);
    // The resumption took the entry; the new handshake left a new one.
    assert_eq!(store.len(), 1);
    assert_eq!(store.hits_misses().0, 1);
}

#[test]
fn tls12_session_id_and_ticket_resumption() {
    // Session IDs: the server has no ticketer, the store holds the session.
    let store = LocalSessionStore::new(100);
    let cfg = server_builder()
        .session_store(store.clone())
        .tls13_resumption(Tls13Resumption::Disabled)
        .build()
        .unwrap();
    let ccfg = client_config(&[Suite::Tls12EcdheRsaAes256GcmSha384]);
    assert_eq!(resumes(&cfg, &ccfg), (false, true));
    assert!(store.hits_misses().0 >= 1);
    // Tickets (RFC 5077) from the same ticketer as TLS 1.3.
    let store = LocalSessionStore::new(100);
    let cfg = server_builder()
        .session_store(store.clone())
        .build()
        .unwrap();
    let mut ccfg = (*client_config(&[Suite::Tls12EcdheEcdsaChacha20Poly1305Sha256])).clone();
    ccfg.resumption = rustls::client::Resumption::in_memory_sessions(8)
        .tls12_resumption(rustls::client::Tls12Resumption::SessionIdOrTickets);
    assert_eq!(resumes(&cfg, &Arc::new(ccfg)), (false, true));
}

#[test]
fn session_lifetime_follows_the_callers_clock() {
    // rustls' server checks no session age itself; the local store does, by
    // the clock the caller drives through handle_input.
    let clock = relay_tls::CallerClock::new();
    let store = LocalSessionStore::with_expiry(100, clock.clone(), Duration::from_secs(3600));
    let cfg = server_builder()
        .clock(clock)
        .session_store(store)
        .tls13_resumption(Tls13Resumption::Stateful)
        .build()
        .unwrap();
    let start = now().as_secs();
    for (i, suite) in [
        Suite::Tls13Aes128GcmSha256,
        Suite::Tls12EcdheEcdsaAes128GcmSha256,
    ]
    .into_iter()
    .enumerate()
    {
        let ccfg = client_config(&[suite]);
        // The clock only moves forward: each round starts later.
        let t0 = UnixTime::since_unix_epoch(Duration::from_secs(start + i as u64 * 10 * 3600));
        let at = |secs: u64| UnixTime::since_unix_epoch(Duration::from_secs(t0.as_secs() + secs));
        let mut c = client(&ccfg, "localhost");
        let _ = handshake_at(&cfg, &mut c, at(0)).unwrap();
        let mut c = client(&ccfg, "localhost");
        assert!(
            handshake_at(&cfg, &mut c, at(1800)).unwrap().info.resumed,
            "{suite} within the hour"
        );
        let mut c = client(&ccfg, "localhost");
        assert!(
            !handshake_at(&cfg, &mut c, at(3 * 3600))
                .unwrap()
                .info
                .resumed,
            "{suite} hours later"
        );
    }
}

#[test]
fn sni_selects_the_certificate() {
    let cfg = server_config();
    let ccfg = client_config(&[Suite::Tls13Aes128GcmSha256]);
    for (name, cert) in [
        ("rsa.test", "rsa.pem"),
        ("ecdsa.test", "ecdsa.pem"),
        ("a.wild.test", "ecdsa.pem"),
        ("localhost", "ecdsa.pem"),
    ] {
        let mut c = client(&ccfg, name);
        let e = handshake(&cfg, &mut c);
        assert_eq!(e.info.server_name.as_deref(), Some(name));
        assert_eq!(c.peer_certificates().unwrap()[0], leaf(cert), "{name}");
    }
    // A TLS 1.2 client with only RSA suites gets the RSA certificate for a
    // name both certificates carry.
    let ccfg = client_config(&[Suite::Tls12EcdheRsaAes128GcmSha256]);
    let mut c = client(&ccfg, "localhost");
    let _ = handshake(&cfg, &mut c);
    assert_eq!(c.peer_certificates().unwrap()[0], leaf("rsa.pem"));
    // The RSA chain is sent whole (leaf + intermediate).
    assert_eq!(c.peer_certificates().unwrap().len(), 2);
}

#[test]
fn alpn_is_negotiated_or_refused() {
    let cfg = server_builder()
        .alpn_protocols(vec![b"h2".to_vec(), b"http/1.1".to_vec()])
        .build()
        .unwrap();
    let mut ccfg = (*client_config(&[Suite::Tls13Aes128GcmSha256])).clone();
    ccfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let ccfg = Arc::new(ccfg);
    let mut c = client(&ccfg, "localhost");
    assert_eq!(
        handshake(&cfg, &mut c).info.alpn.as_deref(),
        Some(&b"http/1.1"[..])
    );
    let mut bad = (*ccfg).clone();
    bad.alpn_protocols = vec![b"spdy/3".to_vec()];
    let mut c = client(&Arc::new(bad), "localhost");
    let err = handshake_at(&cfg, &mut c, now()).unwrap_err();
    assert!(
        matches!(err, Error::Handshake(rustls::Error::NoApplicationProtocol)),
        "{err}"
    );
}

#[test]
fn restricted_versions_and_suites() {
    let cfg = server_builder()
        .versions(&[Version::Tls13])
        .suites(&[Suite::Tls13Chacha20Poly1305Sha256])
        .build()
        .unwrap();
    let ccfg = client_config(&Suite::ALL);
    let mut c = client(&ccfg, "localhost");
    assert_eq!(
        handshake(&cfg, &mut c).info.suite,
        Suite::Tls13Chacha20Poly1305Sha256
    );
    let ccfg = client_config(&[Suite::Tls12EcdheEcdsaAes128GcmSha256]);
    let mut c = client(&ccfg, "localhost");
    assert!(handshake_at(&cfg, &mut c, now()).is_err());
}

#[test]
fn garbage_instead_of_a_client_hello_is_an_alert() {
    let cfg = server_config();
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[22, 3, 1, 0, 4, 1, 0, 0, 0],
        &[22, 3, 3, 0xff, 0xff],
    ] {
        let mut d = HandshakeDriver::new(&cfg).unwrap();
        let err = d.handle_input(now(), junk).unwrap_err();
        assert!(matches!(err, Error::Handshake(_)), "{err}");
        let mut out = Vec::new();
        d.poll_transmit(&mut out);
        assert_eq!(
            out.first(),
            Some(&21),
            "an alert record for {junk:?}: {out:?}"
        );
        assert!(d.handle_input(now(), b"more").is_err());
    }
}

#[test]
fn config_errors_name_the_file_and_the_problem() {
    use relay_tls::TlsServerConfig;
    let e = TlsServerConfig::builder()
        .certificate_pem_files(fixture("missing.pem"), fixture("ecdsa.key"), &[])
        .unwrap_err();
    assert!(
        matches!(&e, Error::ConfigIo { path, .. } if path.ends_with("missing.pem")),
        "{e}"
    );
    let e = TlsServerConfig::builder()
        .certificate_pem_files(fixture("ecdsa.pem"), fixture("rsa.key"), &[])
        .unwrap_err();
    assert!(
        matches!(&e, Error::ConfigFile { path, what } if path.ends_with("rsa.key") && what.contains("does not match")),
        "{e}"
    );
    let e = TlsServerConfig::builder()
        .certificate_pem_files(fixture("ecdsa.pem"), fixture("ecdsa.key"), &["rsa.test"])
        .unwrap_err();
    assert!(
        matches!(&e, Error::ConfigFile { what, .. } if what.contains("rsa.test")),
        "{e}"
    );
    let e = TlsServerConfig::builder()
        .certificate_pem_files(fixture("ecdsa.key"), fixture("ecdsa.key"), &[])
        .unwrap_err();
    assert!(
        matches!(&e, Error::ConfigFile { what, .. } if what.contains("no CERTIFICATE")),
        "{e}"
    );
    let e = TlsServerConfig::builder()
        .certificate_pem_files(fixture("ecdsa.pem"), fixture("ecdsa.pem"), &[])
        .unwrap_err();
    assert!(
        matches!(&e, Error::ConfigFile { what, .. } if what.contains("private key")),
        "{e}"
    );
    let e = TlsServerConfig::builder().build().unwrap_err();
    assert!(matches!(
        e,
        Error::Config {
            field: "certificates",
            ..
        }
    ));
    let e = server_builder()
        .versions(&[Version::Tls12])
        .suites(&[Suite::Tls13Aes128GcmSha256])
        .build()
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Config {
                field: "suites",
                ..
            }
        ),
        "{e}"
    );
    let e = server_builder()
        .alpn_protocols(vec![vec![]])
        .build()
        .unwrap_err();
    assert!(matches!(
        e,
        Error::Config {
            field: "alpn_protocols",
            ..
        }
    ));
}

/// Hostile records from a real TLS peer: the rustls client receives the
/// alert we send and the connection is closed on our side.
#[test]
fn hostile_records_from_a_rustls_client_get_the_right_alert() {
    use rustls::AlertDescription as A;
    use std::io::Write;
    let server_cfg = server_config();
    type Tamper = fn(&mut Vec<u8>);
    let cases: [(&str, Tamper, A); 5] = [
        ("flipped ciphertext byte", |w| w[7] ^= 0x40, A::BadRecordMac),
        (
            "truncated then a new header",
            |w| {
                w.truncate(20);
                w[3] = 0;
                w[4] = 10;
                w.truncate(15)
            },
            A::BadRecordMac,
        ),
        (
            "oversized length",
            |w| {
                w[3] = 0x7f;
            },
            A::RecordOverflow,
        ),
        (
            "wrong outer content type",
            |w| w[0] = 0x19,
            A::UnexpectedMessage,
        ),
        (
            "change_cipher_spec after Finished",
            |w| {
                *w = vec![20, 3, 3, 0, 1, 1];
            },
            A::UnexpectedMessage,
        ),
    ];
    for suite in [
        Suite::Tls13Aes128GcmSha256,
        Suite::Tls12EcdheRsaAes128GcmSha256,
    ] {
        for (name, tamper, alert) in cases {
            let ccfg = client_config(&[suite]);
            let mut client = client(&ccfg, "localhost");
            let est = handshake(&server_cfg, &mut client);
            let mut server = RecordLayer::new(est.traffic).unwrap();
            client.writer().write_all(b"some application data").unwrap();
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            tamper(&mut wire);
            let mut pt = Vec::new();
            let r = server.read(&wire, &mut pt);
            assert!(pt.is_empty(), "{name}");
            assert!(
                matches!(r.status, ReadStatus::Violation(v) if v.alert() == alert),
                "{suite} {name}: {r:?}"
            );
            let mut out = Vec::new();
            let _ = server.poll_transmit(&mut out).unwrap();
            let mut rd = &out[..];
            client.read_tls(&mut rd).unwrap();
            let err = client.process_new_packets().unwrap_err();
            assert_eq!(err, rustls::Error::AlertReceived(alert), "{suite} {name}");
            // Nothing more goes out.
            assert!(server.seal(b"x", &[1], &mut Vec::new()).is_err());
            assert_eq!(
                server.read(b"\x17\x03\x03", &mut pt).status,
                ReadStatus::Dead
            );
        }
    }
}
