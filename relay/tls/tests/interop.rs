//! Interop with real clients over loopback TCP: openssl s_client, curl,
//! gnutls-cli and Python's ssl. The test wires the socket to the sans-IO
//! driver and record layer (tests/support/tcp_server.rs).
//!
//! Needs the Debian packages `openssl`, `curl`, `gnutls-bin` and `python3`;
//! a missing tool fails the test with the install command.

mod common;
#[path = "support/proc.rs"]
mod proc;
#[path = "support/tcp_server.rs"]
mod tcp_server;

use std::process::Command;
use std::sync::atomic::Ordering;

use common::*;
use proc::{Proc, require_tool, run};
use relay_tls::config::Tls13Resumption;
use relay_tls::{LocalSessionStore, Suite, Version};
use tcp_server::{HTTP_BODY, Mode, TestServer};

/// OpenSSL's name for a TLS 1.2 suite (TLS 1.3 suites use the IANA name).
fn openssl_name(s: Suite) -> &'static str {
    match s {
        Suite::Tls12EcdheEcdsaAes128GcmSha256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        Suite::Tls12EcdheEcdsaAes256GcmSha384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        Suite::Tls12EcdheRsaAes128GcmSha256 => "ECDHE-RSA-AES128-GCM-SHA256",
        Suite::Tls12EcdheRsaAes256GcmSha384 => "ECDHE-RSA-AES256-GCM-SHA384",
        Suite::Tls12EcdheRsaChacha20Poly1305Sha256 => "ECDHE-RSA-CHACHA20-POLY1305",
        Suite::Tls12EcdheEcdsaChacha20Poly1305Sha256 => "ECDHE-ECDSA-CHACHA20-POLY1305",
        other => other.name(),
    }
}

/// `openssl s_client` arguments that pin one suite.
fn openssl_suite_args(s: Suite) -> Vec<String> {
    match s.version() {
        Version::Tls13 => vec!["-tls1_3".into(), "-ciphersuites".into(), s.name().into()],
        Version::Tls12 => vec!["-tls1_2".into(), "-cipher".into(), openssl_name(s).into()],
    }
}

fn s_client(port: u16, extra: &[String]) -> Proc {
    let ca = fixture("ca.pem");
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-servername",
        "localhost",
    ])
    .arg("-CAfile")
    .arg(&ca)
    .args(["-verify_return_error"])
    .args(extra);
    Proc::spawn(&mut cmd)
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-tls-interop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn openssl_s_client_every_suite_with_resumption() {
    require_tool("openssl", "openssl");
    let server = TestServer::start(server_config(), Mode::Echo);
    let mut expected = Vec::new();
    for suite in Suite::ALL {
        let sess = tmp(&format!("sess-{:04x}.pem", suite.iana()));
        let mut args = openssl_suite_args(suite);
        args.extend(["-sess_out".to_string(), sess.display().to_string()]);
        let mut c = s_client(server.port, &args);
        c.send("ping-full\n");
        c.wait_for("ping-full", 1, 20);
        // A large line crosses record boundaries both ways.
        let big = "x".repeat(40_000);
        c.send(&format!("{big}\n"));
        c.wait_for(&big, 1, 20);
        c.send("Q\n");
        let (_, out, err) = c.finish(20);
        assert!(out.contains("New, TLSv1."), "{suite}: {out}\n{err}");
        expected.push((suite, false));

        let mut args = openssl_suite_args(suite);
        args.extend(["-sess_in".to_string(), sess.display().to_string()]);
        let mut c = s_client(server.port, &args);
        c.send("ping-resumed\n");
        c.wait_for("ping-resumed", 1, 20);
        c.send("Q\n");
        let (_, out, err) = c.finish(20);
        assert!(
            out.contains("Reused, TLSv1."),
            "{suite} not resumed: {out}\n{err}"
        );
        expected.push((suite, true));
    }
    server.stats.wait_finished(expected.len());
    let seen: Vec<(Suite, bool)> = server
        .stats
        .infos()
        .iter()
        .map(|i| (i.suite, i.resumed))
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(server.stats.errors(), Vec::<String>::new());
}

#[test]
fn openssl_s_client_tls12_session_id_resumption() {
    require_tool("openssl", "openssl");
    // No ticketer: TLS 1.2 resumption goes through the session store.
    let store = LocalSessionStore::new(100);
    let cfg = server_builder()
        .session_store(store.clone())
        .tls13_resumption(Tls13Resumption::Disabled)
        .build()
        .unwrap();
    let server = TestServer::start(cfg, Mode::Echo);
    let sess = tmp("sess-id.pem");
    for (i, flag) in ["-sess_out", "-sess_in"].into_iter().enumerate() {
        let mut c = s_client(
            server.port,
            &[
                "-tls1_2".into(),
                "-no_ticket".into(),
                flag.into(),
                sess.display().to_string(),
            ],
        );
        c.send("hello\n");
        c.wait_for("hello", 1, 20);
        c.send("Q\n");
        let (_, out, _) = c.finish(20);
        assert!(
            out.contains(if i == 0 {
                "New, TLSv1.2"
            } else {
                "Reused, TLSv1.2"
            }),
            "{out}"
        );
    }
    assert_eq!(store.len(), 1);
    assert_eq!(store.hits_misses().0, 1);
}

#[test]
fn openssl_s_client_key_updates_both_ways_and_a_move() {
    require_tool("openssl", "openssl");
    let server = TestServer::start(server_config(), Mode::Echo);
    for suite in [
        Suite::Tls13Aes128GcmSha256,
        Suite::Tls13Aes256GcmSha384,
        Suite::Tls13Chacha20Poly1305Sha256,
    ] {
        let before_rx = server.stats.key_updates_received.load(Ordering::SeqCst);
        let before_tx = server.stats.key_updates_sent.load(Ordering::SeqCst);
        let mut c = s_client(server.port, &openssl_suite_args(suite));
        c.send("ping-0\n");
        c.wait_for("ping-0", 1, 20);
        // `k`: the client updates its keys; `K`: it also asks us to. s_client
        // takes a command only at the start of what one read of stdin returns,
        // so wait for it to act before typing more.
        c.send("k\n");
        c.wait_for_err("KEYUPDATE", 1, 20);
        c.send("ping-1\n");
        c.wait_for("ping-1", 1, 20);
        c.send("K\n");
        c.wait_for_err("KEYUPDATE", 2, 20);
        c.send("ping-2\n");
        c.wait_for("ping-2", 1, 20);
        // Our own KeyUpdate with update_requested; openssl answers it.
        c.send("server-keyupdate\n");
        c.wait_for("server-keyupdate", 1, 20);
        c.send("ping-3\n");
        c.wait_for("ping-3", 1, 20);
        // Checkpoint/import on the server mid-connection, then more updates.
        c.send("server-move\n");
        c.wait_for("server-move", 1, 20);
        c.send("K\n");
        c.wait_for_err("KEYUPDATE", 3, 20);
        c.send("ping-4\n");
        c.wait_for("ping-4", 1, 20);
        c.send("Q\n");
        let (_, _, err) = c.finish(20);
        assert!(err.matches("KEYUPDATE").count() >= 3, "{err}");
        let rx = server.stats.key_updates_received.load(Ordering::SeqCst) - before_rx;
        let tx = server.stats.key_updates_sent.load(Ordering::SeqCst) - before_tx;
        // k, K, the answer to ours, K again.
        assert!(rx >= 4, "{suite}: received {rx} KeyUpdates");
        // The answers to K (twice) and our own.
        assert!(tx >= 3, "{suite}: sent {tx} KeyUpdates");
    }
    server.stats.wait_finished(3);
    assert_eq!(server.stats.moves.load(Ordering::SeqCst), 3);
    assert_eq!(server.stats.errors(), Vec::<String>::new());
}

#[test]
fn curl_every_suite() {
    require_tool("curl", "curl");
    let cfg = server_builder()
        .alpn_protocols(vec![b"http/1.1".to_vec()])
        .build()
        .unwrap();
    let server = TestServer::start(cfg, Mode::Http);
    for suite in Suite::ALL {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "20", "--cacert"])
            .arg(fixture("ca.pem"))
            .args(["--resolve", &format!("localhost:{}:127.0.0.1", server.port)]);
        match suite.version() {
            Version::Tls13 => cmd.args([
                "--tlsv1.3",
                "--tls-max",
                "1.3",
                "--tls13-ciphers",
                suite.name(),
            ]),
            Version::Tls12 => cmd.args([
                "--tlsv1.2",
                "--tls-max",
                "1.2",
                "--ciphers",
                openssl_name(suite),
            ]),
        };
        cmd.arg(format!("https://localhost:{}/", server.port));
        let (st, out, err) = run(&mut cmd, "", 30);
        assert!(st.success(), "{suite}: curl failed: {err}");
        assert_eq!(out, HTTP_BODY, "{suite}");
        let info = server.stats.infos().last().cloned().unwrap();
        assert_eq!(info.suite, suite);
        assert_eq!(info.alpn.as_deref(), Some(&b"http/1.1"[..]));
    }
    server.stats.wait_finished(Suite::ALL.len());
    assert_eq!(server.stats.errors(), Vec::<String>::new());
}

#[test]
fn gnutls_cli_both_versions_with_resumption() {
    require_tool("gnutls-cli", "gnutls-bin");
    let server = TestServer::start(server_config(), Mode::Echo);
    for prio in [
        "NORMAL:-VERS-ALL:+VERS-TLS1.3",
        "NORMAL:-VERS-ALL:+VERS-TLS1.2:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:+CHACHA20-POLY1305",
    ] {
        let mut cmd = Command::new("gnutls-cli");
        cmd.arg("--x509cafile").arg(fixture("ca.pem")).args([
            "--port",
            &server.port.to_string(),
            "--priority",
            prio,
            "--resume",
            "localhost",
        ]);
        let mut c = Proc::spawn(&mut cmd);
        c.wait_for("This is a resumed session", 1, 30);
        c.send("gnutls-ping\n");
        c.wait_for("gnutls-ping", 1, 20);
        let (_, out, err) = c.finish(20);
        assert!(out.contains("gnutls-ping"), "{out}\n{err}");
    }
    // Each gnutls-cli --resume run connects twice.
    server.stats.wait_finished(4);
    let infos = server.stats.infos();
    let resumed: Vec<(Version, bool)> = infos.iter().map(|i| (i.version, i.resumed)).collect();
    assert_eq!(
        resumed,
        vec![
            (Version::Tls13, false),
            (Version::Tls13, true),
            (Version::Tls12, false),
            (Version::Tls12, true)
        ]
    );
    assert_eq!(server.stats.errors(), Vec::<String>::new());
}

const PYTHON_CLIENT: &str = r#"
import socket, ssl, sys
port, ca, ver = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(ca)
v = ssl.TLSVersion.TLSv1_3 if ver == "1.3" else ssl.TLSVersion.TLSv1_2
ctx.minimum_version = v
ctx.maximum_version = v
def exchange(ss, msg):
    ss.sendall(msg)
    data = b""
    while not data.endswith(msg):
        chunk = ss.recv(65536)
        if not chunk:
            raise SystemExit("EOF before echo")
        data += chunk
    assert data == msg, (data, msg)
def connect(session=None, keyupdate=False):
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    ss = ctx.wrap_socket(s, server_hostname="localhost", session=session)
    exchange(ss, b"python-ping\n")
    if keyupdate:
        exchange(ss, b"server-keyupdate\n")
        exchange(ss, bytes(range(256)) * 300 + b"\n")
    sess, reused, cipher = ss.session, ss.session_reused, ss.cipher()[0]
    ss.unwrap()
    ss.close()
    return sess, reused, cipher
s1, r1, c1 = connect(keyupdate=(ver == "1.3"))
s2, r2, c2 = connect(session=s1)
print("reused", r1, r2, c1, c2)
"#;

#[test]
fn python_ssl_with_resumption() {
    require_tool("python3", "python3");
    let server = TestServer::start(server_config(), Mode::Echo);
    for ver in ["1.3", "1.2"] {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", PYTHON_CLIENT, &server.port.to_string()])
            .arg(fixture("ca.pem"))
            .arg(ver);
        let (st, out, err) = run(&mut cmd, "", 60);
        assert!(st.success(), "python ssl {ver}: {out}\n{err}");
        assert!(out.contains("reused False True"), "{ver}: {out}");
    }
    server.stats.wait_finished(4);
    let infos = server.stats.infos();
    assert_eq!(infos.iter().filter(|i| i.resumed).count(), 2);
    assert!(server.stats.key_updates_sent.load(Ordering::SeqCst) >= 1);
    assert!(server.stats.key_updates_received.load(Ordering::SeqCst) >= 1);
    assert!(server.stats.close_notify_received.load(Ordering::SeqCst) >= 4);
    assert_eq!(server.stats.errors(), Vec::<String>::new());
}
