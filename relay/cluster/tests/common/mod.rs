//! Test helpers: a throw-away cluster PKI made with the `openssl` CLI (as
//! `tests/src/pki.rs` does for the lab), backplanes on 127.0.0.1, a
//! blocking TLS client that plays a peer, and waits with deadlines.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use relay_cluster::{Backplane, BackplaneConfig, Waker, WorkerEvent, WorkerPort};
use relay_replication::{Deframer, Envelope, Hello, Message, PROTOCOL_VERSION, RelayId};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// How long any condition may take before a test fails. Generous: CI
/// shares two cores with compilers.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A certificate chain and its key.
#[derive(Debug, Clone)]
pub struct Identity {
    pub chain: PathBuf,
    pub key: PathBuf,
}

/// The cluster CA and a second, unrelated CA, in a temporary folder
/// removed on drop.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
    /// The cluster CA certificate.
    pub ca: PathBuf,
}

const DAYS: &str = "3650";

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the openssl CLI is needed for these tests");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    pub fn generate() -> Pki {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "relay-cluster-pki-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki {
            ca: dir.join("cluster-ca.pem"),
            dir,
        };
        pki.make_ca("cluster");
        pki.make_ca("rogue");
        pki
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn make_ca(&self, which: &str) {
        let key = self.path(&format!("{which}-ca.key"));
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ]);
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &key,
            "-sha256",
            "-days",
            DAYS,
            "-subj",
            &format!("/CN={which} test CA"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            &self.path(&format!("{which}-ca.pem")),
        ]);
    }

    /// A relay certificate for `name` from the cluster CA.
    pub fn relay(&self, name: &str) -> Identity {
        self.issue("cluster", name)
    }

    /// A certificate for `name` from another CA.
    pub fn rogue(&self, name: &str) -> Identity {
        self.issue("rogue", name)
    }

    fn issue(&self, ca: &str, name: &str) -> Identity {
        static SERIAL: AtomicU32 = AtomicU32::new(1);
        let file = format!("{ca}-{name}");
        let key = self.path(&format!("{file}.key"));
        let csr = self.path(&format!("{file}.csr"));
        let ext = self.path(&format!("{file}.ext"));
        let chain = self.path(&format!("{file}.pem"));
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ]);
        openssl(&[
            "req",
            "-new",
            "-key",
            &key,
            "-subj",
            &format!("/CN={name}"),
            "-out",
            &csr,
        ]);
        // Relays are TLS servers and clients on the backplane.
        std::fs::write(
            &ext,
            format!(
                "subjectAltName=DNS:{name}\n\
                 basicConstraints=critical,CA:FALSE\n\
                 keyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth,clientAuth\n"
            ),
        )
        .unwrap();
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed).to_string();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &self.path(&format!("{ca}-ca.pem")),
            "-CAkey",
            &self.path(&format!("{ca}-ca.key")),
            "-set_serial",
            &serial,
            "-days",
            DAYS,
            "-sha256",
            "-extfile",
            &ext,
            "-out",
            &chain,
        ]);
        Identity {
            chain: chain.into(),
            key: key.into(),
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The checkpoint codec of these tests: a delta is bytes appended.
pub fn append(base: &[u8], delta: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = base.to_vec();
    out.extend_from_slice(delta);
    Ok(out)
}

pub fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

/// An address nobody listens on (bound, then released).
pub fn closed_addr() -> SocketAddr {
    bind().local_addr().unwrap()
}

/// A relay's configuration with fast timing for tests.
pub fn config(
    pki: &Pki,
    id: RelayId,
    name: &str,
    listen: SocketAddr,
    peers: &[(RelayId, &str, SocketAddr)],
) -> BackplaneConfig {
    let me = pki.relay(name);
    let mut cfg = BackplaneConfig::new(id, name, listen, &pki.ca, me.chain, me.key);
    for &(id, name, addr) in peers {
        cfg = cfg.peer(id, name, addr);
    }
    // Membership lenient enough not to flap on a loaded machine; the
    // heartbeat test sets its own.
    cfg.heartbeat.interval = Duration::from_millis(50);
    cfg.heartbeat.misses = 20;
    cfg.handshake_timeout = Duration::from_secs(5);
    cfg.boot_epoch = Some(u32::from(id) * 1000);
    cfg
}

/// A started backplane with a counting waker per worker.
pub struct Relay {
    pub bp: Backplane,
    pub wakes: Vec<Arc<AtomicUsize>>,
}

pub fn start(cfg: BackplaneConfig, listener: TcpListener, workers: usize) -> Relay {
    let wakes: Vec<Arc<AtomicUsize>> = (0..workers).map(|_| Arc::default()).collect();
    let wakers: Vec<Waker> = wakes
        .iter()
        .map(|c| {
            let c = c.clone();
            Arc::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
            }) as Waker
        })
        .collect();
    let bp = Backplane::start_on(listener, cfg, append, wakers).expect("backplane starts");
    Relay { bp, wakes }
}

/// Polls `cond` until it holds; fails the test after `timeout`.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Takes worker events until one matches; returns it. The ones before
/// are passed to `seen`.
#[track_caller]
pub fn next_event(
    port: &mut WorkerPort,
    what: &str,
    mut seen: impl FnMut(&WorkerEvent),
    want: impl Fn(&WorkerEvent) -> bool,
) -> WorkerEvent {
    let deadline = Instant::now() + DEADLINE;
    loop {
        while let Some(e) = port.try_recv() {
            if want(&e) {
                return e;
            }
            seen(&e);
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A hello as relay `relay` would send it.
pub fn hello_bytes(relay: RelayId, name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    Envelope::control(
        relay,
        Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            relay,
            name: name.into(),
            workers: 1,
            boot_epoch: 7,
        }),
    )
    .encode(&mut out)
    .unwrap();
    out
}

/// A hand-driven backplane client (blocking rustls): plays a peer, or
/// an intruder.
pub struct Client {
    pub tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl Client {
    /// Connects to `addr` expecting the server to be `server_name`,
    /// trusting `ca`, presenting `me`. The TLS handshake is driven to
    /// its end (from the client's side) before returning.
    pub fn connect(addr: SocketAddr, server_name: &str, ca: &Path, me: &Identity) -> Client {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&me.chain)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(&me.key).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        let name = ServerName::try_from(server_name.to_owned()).unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        // Completes the handshake (the server may still refuse our
        // certificate afterwards: TLS 1.3 clients finish first).
        let _ = tls.conn.complete_io(&mut tls.sock);
        Client { tls }
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tls.write_all(bytes)?;
        self.tls.flush()
    }

    /// Reads until the server closes (or errs); returns every
    /// application byte received.
    pub fn read_to_close(&mut self) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match self.tls.read(&mut buf) {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Reads the server's first envelope.
    pub fn read_envelope(&mut self) -> Envelope {
        let mut d = Deframer::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(env) = d.pop().unwrap() {
                return env;
            }
            let n = self.tls.read(&mut buf).unwrap();
            assert!(n > 0, "closed before an envelope");
            d.push(&buf[..n]);
        }
    }
}
