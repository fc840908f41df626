//! The `relay` binary end to end in the lab, with real clients: curl (TLS
//! 1.2 and 1.3, 1 GiB down, 256 MiB up), openssl s_client and Python `ssl`
//! resuming sessions, gnutls-cli, 1000 concurrent `lab-load` connections, a
//! real Prometheus scraping the admin endpoint, the CLI (status, flows,
//! drain, reload, run --check) and bad input (SYN flood, garbage frames,
//! TLS garbage, a stalled handshake, a resetting backend) while a normal
//! download stays byte-exact.
//!
//! Needs root and the `relay` binary built (`cargo build -p relay-app --bin
//! relay`; `cargo xtask test` does it). Every test builds its own lab (a
//! unique prefix), so they run in parallel; guards remove everything also
//! when a test fails. Run with `--nocapture` to see the figures.

use std::io::Read;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use relay_lab::peers::{BackendServer, body_stream, pattern_sha256};
use relay_lab::pki::{KeyKind, SERVER_NAME, TestPki};
use relay_lab::relay::{RelayConfig, RelayProcess, ServiceSpec};
use relay_lab::{Lab, Node, addr, unique_prefix, wait_for};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

// ---------------------------------------------------------------------------
// Harness

/// A `bash -c` script running inside a lab node in its own process group;
/// [`Script::finish`] waits with a deadline, and drop kills the whole group.
struct Script {
    child: Child,
    what: String,
    started: Instant,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

/// What a finished [`Script`] left.
#[derive(Debug)]
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Finished {
    fn ok(&self) -> bool {
        self.status.success()
    }
}

fn drain_pipe(pipe: Option<impl Read + Send + 'static>) -> Option<std::thread::JoinHandle<String>> {
    pipe.map(|mut p| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = p.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    })
}

impl Script {
    fn spawn(lab: &Lab, node: Node, script: &str) -> Script {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lab.ns(node), "bash", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning `{script}`: {e}"));
        let stdout = drain_pipe(child.stdout.take());
        let stderr = drain_pipe(child.stderr.take());
        Script {
            child,
            what: script.to_string(),
            started: Instant::now(),
            stdout,
            stderr,
        }
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the end, at most `timeout` from the start; panics on timeout.
    fn finish(mut self, timeout: Duration) -> Finished {
        let deadline = self.started + timeout;
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            if Instant::now() >= deadline {
                self.kill_group();
                let stderr = self.stderr.take().map(|h| h.join().unwrap_or_default());
                panic!(
                    "`{}` did not finish within {timeout:?}; stderr: {}",
                    self.what,
                    stderr.unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = self.started.elapsed();
        Finished {
            status,
            stdout: self
                .stdout
                .take()
                .map(|h| h.join().unwrap_or_default())
                .unwrap_or_default(),
            stderr: self
                .stderr
                .take()
                .map(|h| h.join().unwrap_or_default())
                .unwrap_or_default(),
            elapsed,
        }
    }

    /// Kills the script (if still running) and returns what it left.
    fn stop(mut self) -> Finished {
        if self.is_running() {
            self.kill_group();
        }
        self.finish(Duration::from_secs(3600))
    }

    fn kill_group(&mut self) {
        let pgid = self.child.id();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill_group();
        }
    }
}

/// Runs `script` in `node` to its end (at most `timeout`).
fn sh(lab: &Lab, node: Node, script: &str, timeout: Duration) -> Finished {
    Script::spawn(lab, node, script).finish(timeout)
}

/// A relay in a lab with a backend and a PKI. Fields drop in order: the
/// relay, the backends, the PKI, then the lab.
struct Setup {
    relay: RelayProcess,
    _backends: Vec<BackendServer>,
    pki: TestPki,
    lab: Lab,
}

fn lab_backend() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lab-backend"))
}

/// Lab, PKI (ECDSA), `lab-backend` on 10.200.2.10:8080, and a relay
/// configured by `configure` from [`RelayConfig::lab`].
fn setup(tag: &str, configure: impl FnOnce(RelayConfig, &TestPki) -> RelayConfig) -> Setup {
    // lab-load may hold its connections for minutes on a loaded machine.
    setup_with(tag, &["--idle-timeout", "600"], configure)
}

/// [`setup`] with `backend_args` for `lab-backend` (e.g. `--echo`).
fn setup_with(
    tag: &str,
    backend_args: &[&str],
    configure: impl FnOnce(RelayConfig, &TestPki) -> RelayConfig,
) -> Setup {
    let lab = Lab::up(&unique_prefix(tag)).expect("lab up");
    let pki = TestPki::generate(KeyKind::EcdsaP256).expect("test PKI");
    let backend = BackendServer::spawn_in(
        &lab,
        Node::Backend,
        lab_backend(),
        &format!("{}:8080", addr::BACKEND),
        backend_args,
    )
    .expect("lab-backend");
    let config = configure(RelayConfig::lab(&pki.cert_chain, &pki.key), &pki);
    let started = Instant::now();
    let relay = RelayProcess::start(&lab, &config).expect("relay run");
    eprintln!(
        "[{tag}] relay up in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Setup {
        relay,
        _backends: vec![backend],
        pki,
        lab,
    }
}

impl Setup {
    fn ca(&self) -> String {
        self.pki.ca.to_string_lossy().into_owned()
    }

    /// `curl` to the VIP for `relay.lab` trusting `ca`, with `opts`.
    fn curl(&self, ca: &str, opts: &str, path: &str) -> String {
        format!(
            "curl -sS --fail --cacert {ca} --resolve {SERVER_NAME}:443:{vip} \
             --connect-timeout 60 {opts} https://{SERVER_NAME}{path}",
            vip = addr::VIP,
        )
    }

    /// A download of `n` pattern bytes piped into sha256sum: a script
    /// printing the hash (and failing if curl fails).
    fn download_script(&self, ca: &str, opts: &str, n: u64) -> String {
        format!(
            "set -o pipefail; {} | sha256sum | cut -c1-64",
            self.curl(ca, opts, &format!("/bytes/{n}"))
        )
    }

    /// Starts a download of `n` bytes in the client node.
    fn start_download(&self, opts: &str, n: u64) -> Script {
        Script::spawn(
            &self.lab,
            Node::Client,
            &self.download_script(&self.ca(), opts, n),
        )
    }

    /// Waits for a download started by [`Setup::start_download`] and checks
    /// it byte-exact; returns MB/s.
    fn check_download(&self, script: Script, n: u64, timeout: Duration, what: &str) -> f64 {
        let done = script.finish(timeout);
        assert!(
            done.ok(),
            "{what}: curl failed ({}): {}\nrelay log:\n{}",
            done.status,
            done.stderr,
            self.relay.log_tail(30)
        );
        assert_eq!(
            done.stdout.trim(),
            pattern_sha256(n),
            "{what}: body of {n} bytes differs"
        );
        let rate = n as f64 / done.elapsed.as_secs_f64() / 1e6;
        eprintln!(
            "{what}: {n} bytes byte-exact in {:.2} s ({rate:.1} MB/s)",
            done.elapsed.as_secs_f64()
        );
        rate
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.relay
            .metrics()
            .expect("GET /metrics")
            .sum(name, labels)
    }
}

/// Writes the first `n` bytes of the body pattern to `path`.
fn write_pattern_file(path: &Path, n: u64) {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut stream = body_stream();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = n;
    while left > 0 {
        let len = buf.len().min(left as usize);
        stream.fill(&mut buf[..len]);
        file.write_all(&buf[..len]).expect("write");
        left -= len as u64;
    }
    file.flush().expect("flush");
}

/// A PUT to /upload whose body curl reads from a fifo that a thread of the
/// test writes: half of it at once, the rest when [`HeldUpload::finish`]
/// says so. The backend answers with the body's hash.
struct HeldUpload {
    curl: Script,
    release: std::sync::mpsc::Sender<()>,
    writer: std::thread::JoinHandle<std::io::Result<()>>,
    n: u64,
}

impl HeldUpload {
    fn start(s: &Setup, dir: &Path, n: u64) -> HeldUpload {
        let fifo = dir.join("body");
        relay_lab::run("mkfifo", &[&fifo.to_string_lossy()]).expect("mkfifo");
        // curl sends a body of unknown size chunked, which the backend does
        // not take: give the length and drop the chunked coding.
        let curl = Script::spawn(
            &s.lab,
            Node::Client,
            &s.curl(
                &s.ca(),
                &format!(
                    "-H 'Expect:' -H 'Transfer-Encoding:' -H 'Content-Length: {n}' -T {}",
                    fifo.display()
                ),
                "/upload",
            ),
        );
        let (release, released) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            use std::io::Write;
            // Blocks until curl opens the fifo for reading.
            let mut out = std::fs::OpenOptions::new().write(true).open(&fifo)?;
            let mut stream = body_stream();
            let mut buf = vec![0u8; 64 * 1024];
            let mut left = n;
            let mut write = |upto: u64, left: &mut u64| -> std::io::Result<()> {
                while *left > upto {
                    let len = buf.len().min((*left - upto) as usize);
                    stream.fill(&mut buf[..len]);
                    out.write_all(&buf[..len])?;
                    *left -= len as u64;
                }
                Ok(())
            };
            write(n / 2, &mut left)?;
            // Held until told (or until the test drops the sender).
            let _ = released.recv();
            write(0, &mut left)
        });
        HeldUpload {
            curl,
            release,
            writer,
            n,
        }
    }

    /// Lets the rest of the body go and checks the backend's hash of it.
    fn finish(self, s: &Setup, what: &str) {
        let _ = self.release.send(());
        let done = self.curl.finish(Duration::from_secs(120));
        // Checked before joining the writer: a curl that never opened the
        // fifo leaves the writer blocked in open().
        assert!(
            done.ok(),
            "{what}: curl failed ({}): {}\nrelay log:\n{}",
            done.status,
            done.stderr,
            s.relay.log_tail(30)
        );
        self.writer
            .join()
            .expect("fifo writer")
            .expect("writing the body into the fifo");
        assert_eq!(
            done.stdout,
            format!("{} {}\n", pattern_sha256(self.n), self.n),
            "{what}: the backend's hash of the body"
        );
        eprintln!("{what}: {} bytes byte-exact", self.n);
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-lab-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

/// Removes a folder on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// Real clients

#[test]
fn curl_moves_a_gibibyte_down_with_tls12_and_tls13_and_256_mib_up() {
    let s = setup("gib", |c, _| c);
    let expected = pattern_sha256(GIB);
    for (version, opts) in [
        ("TLSv1.2", "--tlsv1.2 --tls-max 1.2"),
        ("TLSv1.3", "--tlsv1.3"),
    ] {
        // curl -v names the negotiated version on stderr.
        let script = format!(
            "set -o pipefail; {} -v 2>/tmp/curl-$$.err | sha256sum | cut -c1-64; \
             grep -o 'SSL connection using TLSv1\\.[0-9]' /tmp/curl-$$.err; rm -f /tmp/curl-$$.err",
            s.curl(&s.ca(), opts, &format!("/bytes/{GIB}"))
        );
        let done = sh(&s.lab, Node::Client, &script, Duration::from_secs(240));
        assert!(
            done.ok(),
            "{version}: {} {}\n{}",
            done.status,
            done.stderr,
            s.relay.log_tail(30)
        );
        let mut lines = done.stdout.lines();
        assert_eq!(
            lines.next(),
            Some(expected.as_str()),
            "{version}: 1 GiB body"
        );
        assert_eq!(
            lines.next(),
            Some(format!("SSL connection using {version}").as_str())
        );
        eprintln!(
            "curl {version}: 1 GiB down byte-exact in {:.1} s ({:.1} MB/s)",
            done.elapsed.as_secs_f64(),
            GIB as f64 / done.elapsed.as_secs_f64() / 1e6
        );
    }

    let dir = TempDir(temp_dir("upload"));
    let file = dir.0.join("upload.bin");
    let n = 256 * MIB;
    write_pattern_file(&file, n);
    // -T streams the file (PUT; /upload takes PUT and POST); no
    // `Expect: 100-continue` round.
    let done = sh(
        &s.lab,
        Node::Client,
        &s.curl(
            &s.ca(),
            &format!("-H 'Expect:' -T {}", file.display()),
            "/upload",
        ),
        Duration::from_secs(120),
    );
    assert!(done.ok(), "upload: {} {}", done.status, done.stderr);
    assert_eq!(done.stdout, format!("{} {n}\n", pattern_sha256(n)));
    eprintln!(
        "curl: 256 MiB up, backend's hash matches, in {:.1} s ({:.1} MB/s)",
        done.elapsed.as_secs_f64(),
        n as f64 / done.elapsed.as_secs_f64() / 1e6
    );
    // A flow's bytes reach the counters in periodic reports and when it is
    // removed: wait for every flow to be gone before reading them.
    let status = wait_for(
        Duration::from_secs(60),
        "every flow closed and counted",
        || {
            s.relay
                .status()
                .ok()
                .filter(|st| st.flows_active == 0 && st.bytes_up >= n)
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", s.relay.status()));
    assert!(status.bytes_down >= 2 * GIB, "{status:?}");
    assert!(status.bytes_up >= n, "{status:?}");
}

/// The request of the one-shot clients: 1000 pattern bytes, then close.
fn small_request() -> String {
    format!("GET /bytes/1000 HTTP/1.1\\r\\nHost: {SERVER_NAME}\\r\\nConnection: close\\r\\n\\r\\n")
}

/// `openssl s_client` twice with `flag` (`-tls1_2`, `-tls1_3`): the first
/// saves its session (`-sess_out`), the second offers it (`-sess_in`) and
/// must say "Reused".
fn openssl_resumes(tag: &str, version: &str, flag: &str) {
    let s = setup(tag, |c, _| c);
    let dir = TempDir(temp_dir(&format!("resume-{}", s.lab.prefix())));
    let sess = dir.0.join("session.pem");
    // -ign_eof: read to the server's close, so a TLS 1.3 ticket (sent after
    // the handshake) is in the saved session.
    let s_client = |sess_opt: &str| {
        format!(
            "printf '{}' | openssl s_client -connect {}:443 -servername {SERVER_NAME} \
             -CAfile {} -verify_return_error {flag} -ign_eof {sess_opt} {} 2>&1",
            small_request(),
            addr::VIP,
            s.ca(),
            sess.display()
        )
    };
    let first = sh(
        &s.lab,
        Node::Client,
        &s_client("-sess_out"),
        Duration::from_secs(20),
    );
    assert!(first.ok(), "{version} first: {}", first.stdout);
    assert!(
        first.stdout.contains(&format!("New, {version}")),
        "{version} first: {}",
        first.stdout
    );
    assert!(first.stdout.contains("Verify return code: 0 (ok)"));
    assert!(first.stdout.contains("HTTP/1.1 200"), "{}", first.stdout);
    let second = sh(
        &s.lab,
        Node::Client,
        &s_client("-sess_in"),
        Duration::from_secs(20),
    );
    assert!(second.ok(), "{version} second: {}", second.stdout);
    assert!(
        second.stdout.contains(&format!("Reused, {version}")),
        "{version} second connection not resumed:\n{}",
        second.stdout
    );
    assert!(second.stdout.contains("HTTP/1.1 200"), "{}", second.stdout);
    eprintln!("openssl s_client {version}: Reused");
    let status = s.relay.status().expect("status");
    assert!(status.handshakes_resumed >= 1, "{status:?}");
}

#[test]
fn openssl_s_client_resumes_a_tls12_session() {
    openssl_resumes("osslv12", "TLSv1.2", "-tls1_2");
}

#[test]
fn openssl_s_client_resumes_a_tls13_session() {
    openssl_resumes("osslv13", "TLSv1.3", "-tls1_3");
}

#[test]
fn python_ssl_resumes_sessions_with_tls12_and_tls13() {
    let s = setup("python", |c, _| c);
    let dir = TempDir(temp_dir(&format!("python-{}", s.lab.prefix())));
    let script = dir.0.join("resume.py");
    std::fs::write(&script, PYTHON_RESUME).expect("write");
    let done = sh(
        &s.lab,
        Node::Client,
        &format!("python3 {} {} {}", script.display(), s.ca(), addr::VIP),
        Duration::from_secs(30),
    );
    assert!(done.ok(), "python: {}{}", done.stdout, done.stderr);
    for version in ["TLSv1.2", "TLSv1.3"] {
        assert!(
            done.stdout.contains(&format!(
                "{version} first_reused=False second_reused=True body_ok=True"
            )),
            "python {version}:\n{}{}",
            done.stdout,
            done.stderr
        );
    }
    eprint!("python ssl:\n{}", done.stdout);
    let status = s.relay.status().expect("status");
    assert!(status.handshakes_resumed >= 2, "{status:?}");
}

/// `gnutls-cli` with `priority` fetches /bytes/1000: its stdin (a fifo)
/// stays open until it exits at the server's close; the body is checked.
fn gnutls_fetches(tag: &str, priority: &str, description: &str) {
    let s = setup(tag, |c, _| c);
    let dir = TempDir(temp_dir(&format!("gnutls-{}", s.lab.prefix())));
    let out = dir.0.join("out");
    let log = dir.0.join("log");
    let fifo = dir.0.join("stdin");
    let done = sh(
        &s.lab,
        Node::Client,
        &format!(
            "mkfifo {fifo}; gnutls-cli --logfile={log} --priority {priority} --x509cafile {ca} \
             --port 443 --sni-hostname {SERVER_NAME} --verify-hostname {SERVER_NAME} {vip} \
             < {fifo} > {out} & g=$!; exec 3>{fifo}; printf '{request}' >&3; wait $g; rc=$?; \
             exec 3>&-; tail -c 1000 {out} | sha256sum | cut -c1-64; head -1 {out}; exit $rc",
            fifo = fifo.display(),
            log = log.display(),
            out = out.display(),
            ca = s.ca(),
            vip = addr::VIP,
            request = small_request(),
        ),
        Duration::from_secs(20),
    );
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        done.ok(),
        "gnutls-cli: {} {}\n{said}",
        done.status,
        done.stderr
    );
    let mut lines = done.stdout.lines();
    assert_eq!(lines.next(), Some(pattern_sha256(1000).as_str()), "{said}");
    assert_eq!(
        lines.next().map(str::trim_end),
        Some("HTTP/1.1 200 OK"),
        "{said}"
    );
    assert!(said.contains(description), "{said}");
    eprintln!("gnutls-cli {priority}: fetched /bytes/1000 byte-exact ({description})");
}

#[test]
fn gnutls_cli_fetches_with_tls12() {
    gnutls_fetches("gnutls12", "NORMAL:-VERS-TLS1.3", "(TLS1.2-X.509)");
}

#[test]
fn gnutls_cli_fetches_with_tls13() {
    gnutls_fetches("gnutls13", "NORMAL", "(TLS1.3-X.509)");
}

/// argv: CA file, VIP. For TLS 1.2 and 1.3: a first connection, then a
/// second one offering the first's session.
/// argv: CA file, VIP, count. Each client: a TLS 1.3 handshake, one short
/// request, shutdown of its writing side, close without reading the answer
/// (a common way for a client to go).
const PYTHON_SEND_AND_GO: &str = r#"
import socket, ssl, sys
ca, vip, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = ssl.create_default_context(cafile=ca)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
for i in range(count):
    raw = socket.create_connection((vip, 443), timeout=30)
    s = ctx.wrap_socket(raw, server_hostname="relay.lab")
    s.sendall(b"GET / HTTP/1.0\r\nHost: relay.lab\r\n\r\n")
    s.shutdown(socket.SHUT_WR)
    s.close()
print("done", count)
"#;

#[test]
fn clients_that_send_shut_down_and_close_leave_no_flow_behind() {
    let s = setup("sendgo", |c, _| c);
    let dir = TempDir(temp_dir(&format!("sendgo-{}", s.lab.prefix())));
    let script = dir.0.join("send_and_go.py");
    std::fs::write(&script, PYTHON_SEND_AND_GO).expect("write");
    let done = sh(
        &s.lab,
        Node::Client,
        &format!("python3 {} {} {} 20", script.display(), s.ca(), addr::VIP),
        Duration::from_secs(120),
    );
    assert!(done.ok(), "python: {}{}", done.stdout, done.stderr);
    let left = wait_for(Duration::from_secs(60), "every flow to end", || {
        s.relay.flows().ok().filter(|f| f.is_empty())
    });
    if let Err(e) = left {
        panic!(
            "{e}: still listed: {:#?}\nrelay log:\n{}",
            s.relay.flows(),
            s.relay.log_tail(40)
        );
    }
    let status = s.relay.status().expect("status");
    assert!(status.flows_active == 0, "{status:?}");
    // Each client finished its handshake before it closed: the relay must
    // finish them too, FIN or not right behind the Finished.
    assert_eq!(
        (status.handshakes_full, status.handshakes_failed),
        (20, 0),
        "{status:?}"
    );
}

/// argv: CA file, VIP. One TLS 1.3 client that asks for 64 MiB, shuts
/// down its writing side and then never reads: a closing flow that cannot
/// move (the client's window is shut) while the client lives on.
const PYTHON_ASK_AND_STALL: &str = r#"
import socket, ssl, sys, time
ca, vip = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
raw = socket.create_connection((vip, 443), timeout=30)
raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s = ctx.wrap_socket(raw, server_hostname="relay.lab")
s.sendall(b"GET /bytes/67108864 HTTP/1.0\r\nHost: relay.lab\r\n\r\n")
s.shutdown(socket.SHUT_WR)
print("stalled", flush=True)
time.sleep(600)
"#;

#[test]
fn a_closing_flow_that_stops_moving_ends_at_the_close_timeout() {
    let s = setup("closeto", |c, _| c.close_timeout_ms(3000));
    let dir = TempDir(temp_dir(&format!("closeto-{}", s.lab.prefix())));
    let script = dir.0.join("ask_and_stall.py");
    std::fs::write(&script, PYTHON_ASK_AND_STALL).expect("write");
    let client = Script::spawn(
        &s.lab,
        Node::Client,
        &format!("exec python3 {} {} {}", script.display(), s.ca(), addr::VIP),
    );
    let closed = wait_for(Duration::from_secs(60), "the stalled flow to close", || {
        (s.metric("relay_flows_closed_total", &[("reason", "close_timeout")]) >= 1.0).then_some(())
    });
    if let Err(e) = closed {
        let reasons: Vec<String> = s
            .relay
            .metrics()
            .map(|m| {
                m.text
                    .lines()
                    .filter(|l| l.starts_with("relay_flows_closed_total") && !l.ends_with(" 0"))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let client = client.stop();
        panic!(
            "{e}: flows {:#?}\nclosed: {reasons:?}\nclient: {}{}\nrelay:\n{}",
            s.relay.flows(),
            client.stdout,
            client.stderr,
            s.relay.log_tail(40)
        );
    }
    wait_for(Duration::from_secs(30), "no flow left", || {
        s.relay.flows().ok().filter(|f| f.is_empty())
    })
    .unwrap();
}

/// argv: CA file, VIP, go-file, interface. Opens a keep-alive TLS session
/// and fetches once; probes ARP for the VIP; prints `ready`; waits for the
/// go-file (the test kills the relay, then creates it); probes ARP again and
/// sends a second request on the same session, reporting how it ended:
/// `reset` (a RST reached the client), `silent` (nothing came back in
/// 5 s) or `answered`.
const PYTHON_SESSION_ACROSS_A_DEATH: &str = r#"
import os, socket, ssl, struct, sys, time
ca, vip, go, iface = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]

def arp_answered(secs):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
    s.bind((iface, 0))
    mac = s.getsockname()[4]
    me = socket.inet_aton("10.200.1.10")
    target = socket.inet_aton(vip)
    req = b"\xff" * 6 + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) \
        + mac + me + b"\x00" * 6 + target
    s.send(req.ljust(60, b"\x00"))
    s.settimeout(0.2)
    end = time.monotonic() + secs
    while time.monotonic() < end:
        try:
            f = s.recv(128)
        except socket.timeout:
            continue
        if len(f) >= 42 and f[20:22] == b"\x00\x02" and f[28:32] == target:
            return True
    return False

def fetch(ss):
    ss.sendall(b"GET /bytes/1000 HTTP/1.1\r\nHost: relay.lab\r\n\r\n")
    data = b""
    while not (b"\r\n\r\n" in data and len(data.split(b"\r\n\r\n", 1)[1]) >= 1000):
        chunk = ss.recv(65536)
        if not chunk:
            raise SystemExit("EOF")
        data += chunk

ctx = ssl.create_default_context(cafile=ca)
raw = socket.create_connection((vip, 443), timeout=30)
ss = ctx.wrap_socket(raw, server_hostname="relay.lab")
fetch(ss)
print("arp_before", arp_answered(3), flush=True)
print("ready", flush=True)
end = time.monotonic() + 120
while not os.path.exists(go):
    if time.monotonic() > end:
        raise SystemExit("no go")
    time.sleep(0.05)
print("arp_after", arp_answered(3), flush=True)
ss.settimeout(5)
try:
    ss.sendall(b"GET /bytes/1000 HTTP/1.1\r\nHost: relay.lab\r\n\r\n")
    got = ss.recv(65536)
    print("after:", "answered" if got else "eof", flush=True)
except (ConnectionResetError, BrokenPipeError):
    print("after: reset", flush=True)
except socket.timeout:
    print("after: silent", flush=True)
"#;

#[test]
fn a_killed_relay_process_leaves_its_box_silent_and_a_new_one_takes_over() {
    let mut s = setup("killproc", |c, _| c);
    let dir = TempDir(temp_dir(&format!("killproc-{}", s.lab.prefix())));
    let script = dir.0.join("session.py");
    let go = dir.0.join("go");
    std::fs::write(&script, PYTHON_SESSION_ACROSS_A_DEATH).expect("write");
    let client = Script::spawn(
        &s.lab,
        Node::Client,
        &format!(
            "exec python3 {} {} {} {} eth0",
            script.display(),
            s.ca(),
            addr::VIP,
            go.display()
        ),
    );
    // The session is open once the relay lists its flow.
    wait_for(Duration::from_secs(60), "the session's flow", || {
        (s.relay.status().ok()?.flows_active > 0).then_some(())
    })
    .unwrap();
    let rsts = |lab: &Lab| -> i64 {
        lab.kernel_tcp_counters(Node::RelayA)
            .expect("counters")
            .iter()
            .find(|(n, _)| n == "OutRsts")
            .map_or(0, |(_, v)| *v)
    };
    let rsts_before = rsts(&s.lab);
    s.relay.kill();
    std::fs::write(&go, b"").expect("go");
    let done = client.finish(Duration::from_secs(120));
    eprint!("client:\n{}{}", done.stdout, done.stderr);
    assert!(done.ok(), "client: {}{}", done.stdout, done.stderr);
    assert!(
        done.stdout.contains("arp_before True"),
        "the live relay's box answers ARP for the VIP: {}",
        done.stdout
    );
    assert!(
        done.stdout.contains("arp_after False"),
        "the dead relay's box still answers ARP for the VIP: {}",
        done.stdout
    );
    assert!(
        done.stdout.contains("after: silent"),
        "the session must see no reset (and nobody serves it): {}",
        done.stdout
    );
    assert_eq!(rsts(&s.lab), rsts_before, "relay-a's kernel sent resets");

    // A new relay process replaces the program the dead one left and serves.
    let config = RelayConfig::lab(&s.pki.cert_chain, &s.pki.key);
    s.relay = RelayProcess::start(&s.lab, &config).expect("relay restarts");
    let again = s.start_download("", MIB);
    s.check_download(
        again,
        MIB,
        Duration::from_secs(60),
        "download after the restart",
    );
}

/// A lab relay pair: relay-a serves the lab's service, relay-b stands by
/// for it over the backplane; both up and connected.
fn pair_setup(tag: &str) -> (Setup, RelayProcess) {
    pair_setup_with(tag, &["--idle-timeout", "600"])
}

/// [`pair_setup`] with `backend_args` for `lab-backend` (e.g. `--echo`).
fn pair_setup_with(tag: &str, backend_args: &[&str]) -> (Setup, RelayProcess) {
    let s = setup_with(tag, backend_args, |_, pki| {
        RelayConfig::pair_member(pki, Node::RelayA).expect("relay-a's cluster config")
    });
    let b_config = RelayConfig::pair_member(&s.pki, Node::RelayB).expect("relay-b's config");
    let b = RelayProcess::start_on(&s.lab, Node::RelayB, &b_config).expect("relay-b runs");
    wait_for(Duration::from_secs(30), "relay-b to see relay-a up", || {
        b.log_tail(200).contains("peer up").then_some(())
    })
    .and_then(|()| {
        // A relay of a pair serves its addresses once it knows its peer
        // does not.
        wait_for(Duration::from_secs(30), "relay-a to serve the VIP", || {
            s.relay
                .log_tail(200)
                .contains("serving addresses")
                .then_some(())
        })
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nrelay-b:\n{}\nrelay-a:\n{}",
            b.log_tail(40),
            s.relay.log_tail(40)
        )
    });
    (s, b)
}

/// How relay-a dies.
#[derive(Clone, Copy, Debug)]
enum Death {
    /// SIGKILL of the process; its box and links stay up.
    Process,
    /// SIGKILL and every link of its box down (front, back, backplane).
    Node,
}

/// What crosses relay-a's death.
#[derive(Clone, Copy, Debug)]
enum Transfer {
    /// curl downloads `bytes` with this TLS version (`1.2` or `1.3`).
    Download(&'static str, u64),
    /// curl uploads `bytes` (TLS 1.3); the backend hashes them.
    Upload(u64),
}

/// Where between 10% and 80% of the transfer relay-a dies: different on
/// every run, printed so that a failing run can be told apart.
fn kill_point(n: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    n / 10 + (nanos % 70) * (n / 100)
}

/// The relay pair serves `transfer`; relay-a dies (`death`) part way;
/// the same connection finishes byte-exact through relay-b, with no reset
/// seen by the client and no new connection or handshake.
/// What the client sees of resets and FINs on port 443, captured from
/// the start of a test.
struct ClientCapture {
    pcap: std::path::PathBuf,
    tcpdump: Script,
}

impl ClientCapture {
    fn start(s: &Setup, dir: &TempDir) -> ClientCapture {
        let pcap = dir.0.join("client.pcap");
        let tcpdump = Script::spawn(
            &s.lab,
            Node::Client,
            &format!(
                "exec tcpdump -U -n -i eth0 -w {} 'tcp port 443 and (tcp[tcpflags] & (tcp-rst|tcp-fin) != 0)'",
                pcap.display()
            ),
        );
        wait_for(Duration::from_secs(30), "tcpdump capturing", || {
            (std::fs::metadata(&pcap).ok()?.len() >= 24).then_some(())
        })
        .unwrap();
        ClientCapture { pcap, tcpdump }
    }

    /// Waits for the connection's close (a FIN from the VIP: everything
    /// before it is in the capture too) and returns the resets from the
    /// VIP. curl itself may end with a RST (it closes without reading our
    /// close_notify); a RST from the VIP must never be there.
    fn resets_from_vip(self, s: &Setup) -> Vec<String> {
        let vip = format!("{}.{} >", addr::VIP, addr::VIP_PORT);
        let pcap = self.pcap.to_string_lossy().into_owned();
        let lines = wait_for(
            Duration::from_secs(30),
            "the connection's close in the capture",
            || {
                let out = s
                    .lab
                    .exec(Node::Client, "tcpdump", &["-n", "-r", &pcap])
                    .ok()?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.lines()
                    .any(|l| l.contains(&vip) && l.contains("Flags [F"))
                    .then_some(text)
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        drop(self.tcpdump.stop());
        lines
            .lines()
            .filter(|l| l.contains(&vip) && l.contains("Flags [R"))
            .map(str::to_string)
            .collect()
    }
}

fn survive(tag: &str, death: Death, transfer: Transfer) {
    let (mut s, b) = pair_setup(tag);
    let dir = TempDir(temp_dir(&format!("{tag}-{}", s.lab.prefix())));
    let capture = ClientCapture::start(&s, &dir);
    let ca = s.ca();
    let report = "-v -w '%{stderr}connects=%{num_connects}\\n'";
    let (script, n, upload) = match transfer {
        Transfer::Download(version, n) => (
            format!(
                "set -o pipefail; {} | sha256sum | cut -c1-64",
                s.curl(
                    &ca,
                    &format!("--tlsv{version} --tls-max {version} {report}"),
                    &format!("/bytes/{n}")
                )
            ),
            n,
            false,
        ),
        Transfer::Upload(n) => {
            let file = dir.0.join("upload.bin");
            write_pattern_file(&file, n);
            (
                s.curl(
                    &ca,
                    &format!("-H 'Expect:' -T {} {report}", file.display()),
                    "/upload",
                ),
                n,
                true,
            )
        }
    };
    let point = kill_point(n);
    let started = Instant::now();
    let run = Script::spawn(&s.lab, Node::Client, &script);
    wait_for(Duration::from_secs(120), "the transfer under way", || {
        let st = s.relay.status().ok()?;
        let moved = if upload { st.bytes_up } else { st.bytes_down };
        (moved >= point).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\nrelay-a:\n{}", s.relay.log_tail(30)));
    s.relay.kill();
    if let Death::Node = death {
        for ifname in ["front", "back", "bp0"] {
            s.lab
                .exec(Node::RelayA, "ip", &["link", "set", "dev", ifname, "down"])
                .expect("link down");
        }
    }
    let killed = started.elapsed();
    let done = run.finish(Duration::from_secs(300));
    assert!(
        done.ok(),
        "{tag}: curl failed ({}): {}\nrelay-b:\n{}",
        done.status,
        done.stderr
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n"),
        b.log_tail(40)
    );
    let expected = if upload {
        format!("{} {n}", pattern_sha256(n))
    } else {
        pattern_sha256(n)
    };
    assert_eq!(done.stdout.trim(), expected, "{tag}: not byte-exact");
    assert!(
        done.stderr.contains("connects=1"),
        "{tag}: one connection: {}",
        done.stderr
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    if let Transfer::Download(version, _) = transfer {
        assert!(
            done.stderr
                .contains(&format!("SSL connection using TLSv{version}")),
            "{tag}: TLS version"
        );
    }
    let resets = capture.resets_from_vip(&s);
    assert!(
        resets.is_empty(),
        "{tag}: resets reached the client: {resets:?}"
    );
    let status = b.status().expect("relay-b status");
    assert_eq!(
        (
            status.flows_opened,
            status.handshakes_full,
            status.handshakes_resumed
        ),
        (0, 0, 0),
        "{tag}: relay-b carried the old connection, it opened none: {status:?}"
    );
    let moved = if upload {
        status.bytes_up
    } else {
        status.bytes_down
    };
    assert!(moved > 0, "{tag}: relay-b carried no byte: {status:?}");
    let takeover = b
        .log_tail(400)
        .lines()
        .find(|l| l.contains("took over the peer's flows"))
        .unwrap_or("")
        .to_string();
    eprintln!(
        "{tag}: {death:?} death of relay-a at byte {point} of {n} ({:.1} s in); \
         byte-exact through relay-b, which carried {moved} bytes; {}",
        killed.as_secs_f64(),
        takeover.split("took over").nth(1).unwrap_or("")
    );
}

#[test]
fn a_thousand_flows_mid_transfer_survive_the_death_of_their_relay() {
    let (mut s, b) = pair_setup("thousandfail");
    let load = Script::spawn(
        &s.lab,
        Node::Client,
        &format!(
            "{} --connect {}:443 --sni {SERVER_NAME} --ca {} \
             --connections 1000 --bytes {} --timeout 300",
            env!("CARGO_BIN_EXE_lab-load"),
            addr::VIP,
            s.ca(),
            MIB
        ),
    );
    let point = kill_point(1000 * MIB);
    wait_for(
        Duration::from_secs(240),
        "the thousand transfers under way",
        || (s.relay.status().ok()?.bytes_down >= point).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\nrelay-a:\n{}", s.relay.log_tail(30)));
    let alive = s.relay.status().map(|st| st.flows_active).unwrap_or(0);
    s.relay.kill();
    let done = load.finish(Duration::from_secs(900));
    eprint!("lab-load: {}{}", done.stdout, done.stderr);
    assert!(
        done.ok() && done.stdout.contains("connections=1000 ok=1000 failed=0"),
        "lab-load across the death ({}):\n{}\nrelay-b:\n{}",
        done.status,
        done.stdout.lines().take(20).collect::<Vec<_>>().join("\n"),
        b.log_tail(30)
    );
    let status = b.status().expect("relay-b status");
    assert_eq!(status.flows_opened, 0, "no new flow on relay-b: {status:?}");
    let adopted = b
        .metrics()
        .expect("relay-b metrics")
        .sum("relay_flows_adopted_total", &[]);
    let takeover = b
        .log_tail(400)
        .lines()
        .find(|l| l.contains("took over the peer's flows"))
        .unwrap_or("")
        .to_string();
    eprintln!(
        "thousand: relay-a died at byte {point} with {alive} flows open; relay-b adopted {adopted} and carried {} bytes; {}",
        status.bytes_down,
        takeover.split("took over").nth(1).unwrap_or("")
    );
    assert!(adopted >= 1.0, "relay-b adopted nothing");
}

#[test]
fn a_tls13_download_survives_the_death_of_its_relay_process() {
    survive("dl13proc", Death::Process, Transfer::Download("1.3", GIB));
}

#[test]
fn a_tls12_download_survives_the_death_of_its_relay_node() {
    survive("dl12node", Death::Node, Transfer::Download("1.2", GIB));
}

#[test]
fn an_upload_survives_the_death_of_its_relay_node() {
    survive("upnode", Death::Node, Transfer::Upload(256 * MIB));
}

const PYTHON_RESUME: &str = r#"
import hashlib, socket, ssl, sys
ca, vip = sys.argv[1], sys.argv[2]
REQ = b"GET /bytes/1000 HTTP/1.1\r\nHost: relay.lab\r\nConnection: close\r\n\r\n"

def fetch(ctx, session=None):
    raw = socket.create_connection((vip, 443), timeout=10)
    s = ctx.wrap_socket(raw, server_hostname="relay.lab", session=session)
    s.sendall(REQ)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    body = data.split(b"\r\n\r\n", 1)[1]
    version, session, reused = s.version(), s.session, s.session_reused
    s.close()
    return version, session, reused, body

for name, version in (("TLSv1.2", ssl.TLSVersion.TLSv1_2), ("TLSv1.3", ssl.TLSVersion.TLSv1_3)):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = version
    ctx.maximum_version = version
    v1, session, reused1, body1 = fetch(ctx)
    v2, _, reused2, body2 = fetch(ctx, session=session)
    assert v1 == name and v2 == name, (v1, v2)
    print(f"{name} first_reused={reused1} second_reused={reused2} "
          f"body_ok={len(body1) == 1000 and body1 == body2}")
"#;

#[test]
fn lab_load_holds_1000_connections_each_moving_1_mib() {
    let s = setup("thousand", |c, _| c);
    let done = sh(
        &s.lab,
        Node::Client,
        &format!(
            "{} --connect {}:443 --sni {SERVER_NAME} --ca {} \
             --connections 1000 --bytes {} --timeout 300",
            env!("CARGO_BIN_EXE_lab-load"),
            addr::VIP,
            s.ca(),
            MIB
        ),
        // A thousand TLS clients on two shared cores: minutes when busy.
        Duration::from_secs(900),
    );
    eprint!("lab-load: {}{}", done.stdout, done.stderr);
    assert!(
        done.ok(),
        "lab-load failed ({}):\n{}\nrelay log:\n{}",
        done.status,
        done.stdout.lines().take(20).collect::<Vec<_>>().join("\n"),
        s.relay.log_tail(30)
    );
    assert!(
        done.stdout.contains("connections=1000 ok=1000 failed=0"),
        "{}",
        done.stdout
    );
    let status = s.relay.status().expect("status");
    assert!(status.flows_opened >= 1000, "{status:?}");
}

/// A Prometheus server in the client node, killed on drop.
struct Prometheus {
    child: Child,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_the_admin_endpoint() {
    let s = setup("prom", |c, _| c);
    let dir = TempDir(temp_dir(&format!("prom-{}", s.lab.prefix())));
    let config = dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: relay\n    static_configs:\n      - targets: ['{}']\n",
            relay_lab::relay::ADMIN_ADDR
        ),
    )
    .expect("write");
    let listen = format!("{}:9090", addr::CLIENT);
    let child = s
        .lab
        .spawn(
            Node::Client,
            "prometheus",
            &[
                &format!("--config.file={}", config.display()),
                &format!("--storage.tsdb.path={}", dir.0.join("data").display()),
                &format!("--web.listen-address={listen}"),
            ],
        )
        .expect("prometheus (cargo xtask setup installs it)");
    let _prometheus = Prometheus { child, _dir: dir };
    // One flow, so that relay_flows_opened_total is above 0.
    let n = MIB;
    let dl = s.start_download("", n);
    s.check_download(dl, n, Duration::from_secs(30), "download");
    let query = |q: &str| -> Option<f64> {
        let done = sh(
            &s.lab,
            Node::Client,
            &format!(
                "curl -sS --max-time 10 -G --data-urlencode 'query={q}' http://{listen}/api/v1/query"
            ),
            Duration::from_secs(30),
        );
        let v: serde_json::Value = serde_json::from_str(&done.stdout).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let started = Instant::now();
    let opened = wait_for(
        Duration::from_secs(60),
        "Prometheus to hold relay_flows_opened_total > 0",
        || query("relay_flows_opened_total").filter(|v| *v > 0.0),
    )
    .unwrap();
    let up = wait_for(Duration::from_secs(30), "up{job=\"relay\"} == 1", || {
        query("up{job=\"relay\"}").filter(|v| *v == 1.0)
    })
    .unwrap();
    eprintln!(
        "prometheus: relay_flows_opened_total={opened} up={up} after {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// The CLI

#[test]
fn cli_status_flows_and_drain() {
    let s = setup("drain", |c, _| c);
    let status = s.relay.status().expect("status");
    assert_eq!(status.state, "running");
    assert_eq!(status.backends.len(), 1, "{status:?}");
    assert_eq!(
        status.backends[0].addr.to_string(),
        format!("{}:8080", addr::BACKEND)
    );
    let human =
        String::from_utf8_lossy(&s.relay.cli(&["status"]).expect("status").stdout).into_owned();
    assert!(
        human.contains("state") && human.contains("running"),
        "{human}"
    );
    eprint!("relay status:\n{human}");

    // An upload whose body this test feeds through a fifo: the flow stays
    // open exactly until the test lets it finish, however slow the machine.
    let dir = TempDir(temp_dir(&format!("drain-{}", s.lab.prefix())));
    let held = HeldUpload::start(&s, &dir.0, 4 * MIB);
    let backend = format!("{}:8080", addr::BACKEND);
    let flow = wait_for(
        Duration::from_secs(30),
        "the held upload in `relay flows`",
        || {
            s.relay.flows().ok()?.into_iter().find(|f| {
                f.client.ip().to_string() == addr::CLIENT.to_string()
                    && f.backend.map(|b| b.to_string()) == Some(backend.clone())
            })
        },
    )
    .unwrap();
    eprintln!("relay flows --json: {flow:?}");
    let human =
        String::from_utf8_lossy(&s.relay.cli(&["flows"]).expect("flows").stdout).into_owned();
    assert!(human.contains(&format!("-> {backend}")), "{human}");
    eprint!("relay flows:\n{human}");

    let said = s.relay.drain().expect("drain");
    eprint!("relay drain: {said}");
    assert_eq!(s.relay.status().expect("status").state, "draining");
    // A new connection is refused while the open one carries on.
    let refused = sh(
        &s.lab,
        Node::Client,
        &s.curl(&s.ca(), "--max-time 30", "/bytes/1000"),
        Duration::from_secs(60),
    );
    assert!(
        !refused.ok(),
        "a new connection went through while draining"
    );
    assert_eq!(
        refused.status.code(),
        Some(7),
        "curl should fail to connect (exit 7): {}",
        refused.stderr
    );
    eprintln!("new connection while draining: {}", refused.stderr.trim());
    assert!(
        s.relay
            .flows()
            .expect("flows")
            .iter()
            .any(|f| f.id == flow.id)
    );
    held.finish(&s, "upload across the drain");
    assert!(s.metric("relay_flows_refused_total", &[("reason", "draining")]) >= 1.0);
}

#[test]
fn cli_reload_swaps_the_certificate_for_new_connections_only() {
    let dir = TempDir(temp_dir("reload"));
    let cert = dir.0.join("server.crt");
    let key = dir.0.join("server.key");
    let s = setup("reload", |c, pki| {
        std::fs::copy(&pki.cert_chain, &cert).expect("copy");
        std::fs::copy(&pki.key, &key).expect("copy");
        RelayConfig {
            services: vec![ServiceSpec::lab(&cert, &key)],
            ..c
        }
    });
    let old_ca = s.ca();
    let n = 8 * MIB;
    let slow = s.start_download("--limit-rate 1M", n);
    wait_for(Duration::from_secs(30), "the old download's flow", || {
        (s.relay.status().ok()?.flows_active > 0).then_some(())
    })
    .unwrap();

    let new_pki = TestPki::generate(KeyKind::Rsa2048).expect("second PKI");
    // Replace the files the configuration names, then reload.
    std::fs::copy(&new_pki.cert_chain, &cert).expect("copy");
    std::fs::copy(&new_pki.key, &key).expect("copy");
    let said = s.relay.reload().expect("reload");
    eprint!("relay reload: {said}");
    assert!(said.contains("1 certificate"), "{said}");

    let new_ca = new_pki.ca.to_string_lossy().into_owned();
    let fresh = sh(
        &s.lab,
        Node::Client,
        &s.download_script(&new_ca, "", MIB),
        Duration::from_secs(30),
    );
    assert!(
        fresh.ok(),
        "new connection with the new CA: {}",
        fresh.stderr
    );
    assert_eq!(fresh.stdout.trim(), pattern_sha256(MIB));
    let stale = sh(
        &s.lab,
        Node::Client,
        &s.curl(&old_ca, "", "/bytes/1000"),
        Duration::from_secs(30),
    );
    assert_eq!(
        stale.status.code(),
        Some(60),
        "the old CA must no longer verify a new connection: {}",
        stale.stderr
    );
    s.check_download(
        slow,
        n,
        Duration::from_secs(60),
        "download across the reload",
    );
}

/// `relay run --check --config FILE` on `text` (written into `dir`):
/// exit status and everything it printed.
fn run_check(dir: &Path, text: &str) -> (ExitStatus, String) {
    let bin = relay_lab::relay::relay_binary().expect("relay binary");
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).expect("write");
    let out = Command::new(&bin)
        .args(["run", "--check", "--config"])
        .arg(&path)
        .output()
        .expect("relay run --check");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A good configuration (certificates that exist) and its folder.
fn check_fixture() -> (TestPki, TempDir, String) {
    let pki = TestPki::generate(KeyKind::EcdsaP256).expect("PKI");
    let dir = TempDir(temp_dir(&format!("check-{}", unique_prefix("c"))));
    let good = RelayConfig::lab(&pki.cert_chain, &pki.key)
        .max_flows(1000)
        .to_toml(&dir.0.join("relay.sock"));
    (pki, dir, good)
}

/// 1-based line of the first line of `text` starting with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines()
        .position(|l| l.starts_with(prefix))
        .expect("line present")
        + 1
}

#[test]
fn run_check_accepts_a_good_config_and_names_unknown_and_invalid_fields() {
    let (_pki, dir, good) = check_fixture();
    let (status, said) = run_check(&dir.0, &good);
    assert!(status.success(), "good config refused: {said}");
    assert!(said.contains("config OK"), "{said}");

    // An unknown field: its name and line.
    let bad = good.replace("[front]\n", "[front]\ninterfaec = \"front\"\n");
    let (status, said) = run_check(&dir.0, &bad);
    eprint!("relay run --check (unknown field):\n{said}");
    assert!(!status.success());
    assert!(said.contains("interfaec"), "{said}");
    let line = line_of(&bad, "interfaec");
    assert!(
        said.contains(&format!("relay.toml:{line}:")),
        "line {line}: {said}"
    );

    // A value that parses but cannot work names its field.
    let bad = good.replace("backends = [\"10.200.2.10:8080\"]", "backends = []");
    assert_ne!(bad, good);
    let (status, said) = run_check(&dir.0, &bad);
    eprint!("relay run --check (no backends):\n{said}");
    assert!(!status.success());
    assert!(said.contains("service[0].backends"), "{said}");
}

#[test]
fn run_check_names_the_field_and_line_of_a_type_error() {
    let (_pki, dir, good) = check_fixture();
    let bad = good.replace("max_flows = 1000", "max_flows = \"lots\"");
    let line = line_of(&bad, "max_flows");
    let (status, said) = run_check(&dir.0, &bad);
    eprint!("relay run --check (type error):\n{said}");
    assert!(!status.success());
    assert!(
        said.contains(&format!("relay.toml:{line}:")),
        "line {line}: {said}"
    );
    assert!(said.contains("max_flows"), "the field's name: {said}");

    // The same for a value its own parser refuses.
    let bad = good.replace("ports = \"40000-49999\"", "ports = \"49999-40000\"");
    let line = line_of(&bad, "ports");
    let (status, said) = run_check(&dir.0, &bad);
    eprint!("relay run --check (bad range):\n{said}");
    assert!(!status.success());
    assert!(
        said.contains(&format!("relay.toml:{line}:")),
        "line {line}: {said}"
    );
    assert!(said.contains("ports"), "the field's name: {said}");
}

// ---------------------------------------------------------------------------
// Bad input

/// Starts a SYN flood (`hping3`) to VIP:443 from the client
/// node that runs until the returned [`Script`] is dropped, and waits until
/// the relay has seen 10000 of its frames; returns the flood and a reader of
/// the front's redirect counter.
///
/// 10000 SYNs a second fill the relay's half-open table (16384 entries) in
/// under two seconds and keep evicting from it: a flood by the listener's
/// standards, while a real client's entry outlives its round trip even on a
/// loaded machine (the relay has no SYN cookies yet; an unbounded
/// `--flood` makes a new client's success a race against the CPU).
fn start_syn_flood(s: &Setup) -> (Script, impl Fn() -> f64 + '_) {
    let flood = Script::spawn(
        &s.lab,
        Node::Client,
        &format!("exec hping3 -q -S -p 443 -i u100 {}", addr::VIP),
    );
    let redirected = || {
        s.metric(
            "relay_xdp_verdicts_total",
            &[("interface", "front"), ("verdict", "redirect")],
        )
    };
    let base = redirected();
    wait_for(
        Duration::from_secs(60),
        "the flood to reach the relay",
        || (redirected() > base + 10_000.0).then_some(()),
    )
    .unwrap();
    (flood, redirected)
}

#[test]
fn syn_flood_does_not_disturb_a_download() {
    let s = setup("synflood", |c, _| c);
    let n = 96 * MIB;
    let before = s.start_download("--limit-rate 8M", n);
    wait_for(Duration::from_secs(30), "the download's flow", || {
        (s.relay.status().ok()?.flows_active > 0).then_some(())
    })
    .unwrap();
    let (mut flood, redirected) = start_syn_flood(&s);
    // The flood runs until the download is done.
    s.check_download(
        before,
        n,
        Duration::from_secs(180),
        "download across the SYN flood",
    );
    assert!(
        flood.is_running(),
        "the flood stopped before the download did"
    );
    drop(flood);
    eprintln!(
        "flood: {} frames redirected; flows opened {}, refused {}",
        redirected(),
        s.metric("relay_flows_opened_total", &[]),
        s.metric("relay_flows_refused_total", &[])
    );
    let after = s.start_download("", MIB);
    s.check_download(
        after,
        MIB,
        Duration::from_secs(60),
        "download after the flood",
    );
}

#[test]
fn a_new_connection_is_served_during_a_syn_flood() {
    let s = setup("synnew", |c, _| c);
    let (mut flood, _) = start_syn_flood(&s);
    let n = 16 * MIB;
    let during = s.start_download("", n);
    s.check_download(
        during,
        n,
        Duration::from_secs(120),
        "download opened during the SYN flood",
    );
    assert!(
        flood.is_running(),
        "the flood stopped before the download did"
    );
    drop(flood);
}

/// argv: interface, destination MAC, count. Sends `count` frames of
/// garbage to the destination MAC: random bytes, IPv4 with bad lengths,
/// TCP to VIP:443 with bad checksums or offsets, random EtherTypes.
const PYTHON_GARBAGE_FRAMES: &str = r#"
import random, socket, struct, sys
iface, dst, count = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", "")), int(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
src = s.getsockname()[4]
rnd = random.Random(7)
vip = socket.inet_aton("10.200.1.100")
me = socket.inet_aton("10.200.1.10")

def csum(b):
    if len(b) % 2:
        b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16:
        t = (t & 0xFFFF) + (t >> 16)
    return ~t & 0xFFFF

def ipv4(payload, total=None, ihl=5, proto=6):
    total = 20 + len(payload) if total is None else total
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total & 0xFFFF, rnd.getrandbits(16), 0, 64, proto, 0, me, vip)
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload

def tcp(flags, doff=5, payload=b""):
    return struct.pack("!HHIIBBHHH", rnd.randint(1024, 65535), 443, rnd.getrandbits(32), rnd.getrandbits(32),
                       doff << 4, flags, 65535, rnd.getrandbits(16), 0) + payload

sent = 0
for i in range(count):
    kind = i % 6
    if kind == 0:
        body = rnd.randbytes(rnd.randint(0, 300))
        frame = dst + src + b"\x08\x00" + body
    elif kind == 1:   # IPv4 claiming more bytes than the frame holds
        frame = dst + src + b"\x08\x00" + ipv4(tcp(0x02), total=1400)
    elif kind == 2:   # IHL below 5
        frame = dst + src + b"\x08\x00" + ipv4(tcp(0x02), ihl=rnd.randint(0, 4))
    elif kind == 3:   # TCP data offset beyond the segment
        frame = dst + src + b"\x08\x00" + ipv4(tcp(0x18, doff=15))
    elif kind == 4:   # TCP to VIP:443 with a wrong checksum and random payload
        frame = dst + src + b"\x08\x00" + ipv4(tcp(rnd.getrandbits(8), payload=rnd.randbytes(rnd.randint(0, 200))))
    else:             # random EtherType
        frame = dst + src + struct.pack("!H", rnd.getrandbits(16)) + rnd.randbytes(rnd.randint(0, 100))
    s.send(frame[:1514])
    sent += 1
print("sent", sent)
"#;

/// argv: VIP, handshake timeout (s). TLS garbage after the TCP handshake
/// and a stalled partial ClientHello; prints how each connection ended.
const PYTHON_TLS_ABUSE: &str = r#"
import os, socket, sys, time
vip, hs_timeout = sys.argv[1], float(sys.argv[2])

def ending(sock, limit):
    sock.settimeout(limit)
    start = time.monotonic()
    got = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return "fin", got, time.monotonic() - start
            got += chunk
    except ConnectionResetError:
        return "rst", got, time.monotonic() - start
    except socket.timeout:
        return "hang", got, time.monotonic() - start

# 1. Random bytes that are not a TLS record (first byte no content type).
s = socket.create_connection((vip, 443), timeout=30)
s.sendall(b"\xff" + os.urandom(999))
how, got, secs = ending(s, hs_timeout + 8)
alert = got[:1] == b"\x15"
print(f"garbage: {how} alert={alert} after={secs:.2f}")

# 2. A handshake record whose body is garbage.
s = socket.create_connection((vip, 443), timeout=30)
body = os.urandom(200)
s.sendall(b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body)
how, got, secs = ending(s, hs_timeout + 8)
alert = got[:1] == b"\x15"
print(f"garbage_handshake: {how} alert={alert} after={secs:.2f}")

# 3. The first 40 bytes of a ClientHello, then nothing.
s = socket.create_connection((vip, 443), timeout=30)
hello = b"\x01\x00\x01\xfc\x03\x03" + os.urandom(32) + b"\x00\x00"
s.sendall(b"\x16\x03\x01\x02\x00" + hello[:35])
how, got, secs = ending(s, hs_timeout + 8)
print(f"stalled: {how} after={secs:.2f}")
"#;

#[test]
fn garbage_frames_and_tls_garbage_and_a_stalled_handshake() {
    // A handshake timeout well above what a loaded machine's real clients
    // need (the downloads below handshake under it too).
    let s = setup("garbage", |c, _| c.handshake_timeout_ms(5000));
    let dir = TempDir(temp_dir(&format!("garbage-{}", s.lab.prefix())));
    let n = 256 * MIB;
    let download = s.start_download("", n);

    let malformed = || {
        s.metric("relay_frames_malformed_total", &[])
            + s.metric(
                "relay_xdp_verdicts_total",
                &[("interface", "front"), ("verdict", "drop_malformed")],
            )
    };
    let before = malformed();
    let relay_mac = s.lab.mac(Node::RelayA, "front").expect("MAC");
    let mac: Vec<String> = relay_mac.iter().map(|b| format!("{b:02x}")).collect();
    let frames = dir.0.join("frames.py");
    std::fs::write(&frames, PYTHON_GARBAGE_FRAMES).expect("write");
    let sent = sh(
        &s.lab,
        Node::Client,
        &format!("python3 {} eth0 {} 30000", frames.display(), mac.join(":")),
        Duration::from_secs(60),
    );
    assert!(sent.ok(), "garbage frames: {}{}", sent.stdout, sent.stderr);
    let after = wait_for(
        Duration::from_secs(30),
        "the malformed counters to move",
        || {
            let m = malformed();
            (m > before).then_some(m)
        },
    )
    .unwrap();
    eprintln!(
        "garbage frames: {} sent; malformed counted {} (relay_frames_malformed_total {}, drop_malformed {})",
        sent.stdout.trim(),
        after - before,
        s.metric("relay_frames_malformed_total", &[]),
        s.metric(
            "relay_xdp_verdicts_total",
            &[("interface", "front"), ("verdict", "drop_malformed")]
        ),
    );

    let abuse = dir.0.join("abuse.py");
    std::fs::write(&abuse, PYTHON_TLS_ABUSE).expect("write");
    let done = sh(
        &s.lab,
        Node::Client,
        &format!("python3 {} {} 5", abuse.display(), addr::VIP),
        Duration::from_secs(120),
    );
    eprint!("TLS abuse:\n{}{}", done.stdout, done.stderr);
    assert!(done.ok(), "{}", done.stderr);
    for case in ["garbage:", "garbage_handshake:", "stalled:"] {
        let line = done
            .stdout
            .lines()
            .find(|l| l.starts_with(case))
            .unwrap_or_else(|| panic!("no {case} line"));
        assert!(!line.contains(" hang "), "connection left hanging: {line}");
    }
    let stalled = done
        .stdout
        .lines()
        .find(|l| l.starts_with("stalled:"))
        .and_then(|l| l.rsplit_once("after="))
        .and_then(|(_, secs)| secs.parse::<f64>().ok())
        .expect("stalled time");
    // Closed by the timeout, not before it (how much later depends on
    // the machine's load; "hang" above bounds it).
    assert!(
        stalled >= 4.0,
        "the stalled handshake should be closed by the 5 s timeout, was closed after {stalled} s"
    );
    for reason in ["timeout", "tls_error"] {
        wait_for(
            Duration::from_secs(30),
            &format!("relay_handshakes_failed_total{{reason={reason}}} to count"),
            || {
                (s.metric("relay_handshakes_failed_total", &[("reason", reason)]) >= 1.0)
                    .then_some(())
            },
        )
        .unwrap();
    }

    s.check_download(
        download,
        n,
        Duration::from_secs(120),
        "download across the garbage",
    );
    let again = s.start_download("", MIB);
    s.check_download(
        again,
        MIB,
        Duration::from_secs(30),
        "download after the garbage",
    );
}

#[test]
fn a_resetting_backend_fails_curl_cleanly() {
    // A second service on VIP:8443 whose backend resets every response
    // after 100000 bytes; the first keeps a normal backend.
    let s = setup("reset", |c, pki| {
        let mut reset = ServiceSpec::lab(&pki.cert_chain, &pki.key);
        reset.name = "reset".into();
        reset.port = 8443;
        reset.backends = vec![std::net::SocketAddrV4::new(addr::BACKEND, 8081)];
        c.service(reset)
    });
    let _resetting = BackendServer::spawn_in(
        &s.lab,
        Node::Backend,
        lab_backend(),
        &format!("{}:8081", addr::BACKEND),
        &["--reset-after", "100000"],
    )
    .expect("resetting backend");
    let n = 128 * MIB;
    let normal = s.start_download("", n);
    let broken = sh(
        &s.lab,
        Node::Client,
        &format!(
            "curl -sS --cacert {} --resolve {SERVER_NAME}:8443:{} --max-time 60 \
             https://{SERVER_NAME}:8443/bytes/{} -o /dev/null",
            s.ca(),
            addr::VIP,
            10 * MIB
        ),
        Duration::from_secs(90),
    );
    assert!(!broken.ok(), "a reset backend's download succeeded");
    assert_ne!(
        broken.status.code(),
        Some(28),
        "curl hung until --max-time instead of failing: {}",
        broken.stderr
    );
    eprintln!(
        "reset backend: curl failed in {:.2} s with {}: {}",
        broken.elapsed.as_secs_f64(),
        broken.status,
        broken.stderr.trim()
    );
    s.check_download(
        normal,
        n,
        Duration::from_secs(120),
        "download beside the resets",
    );
}

// ---------------------------------------------------------------------------
// The operator's view of a relay pair

#[test]
fn relay_peers_and_the_metrics_show_the_pair() {
    let (s, b) = pair_setup("peers");
    let a = &s.relay;
    // Each sees the other up, with a measured RTT, over a live connection;
    // with `protected`, our worker's replication to it is protected too
    // (checked for relay-a, whose flow the test replicates below).
    let see = |from: &RelayProcess, me: &str, other: &str, id: u16, protected: bool| {
        let (p, line) = wait_for(
            Duration::from_secs(30),
            &format!("{me} to list {other} up with an RTT"),
            || {
                let p = from.peers().ok()?;
                let line = p.peers.iter().find(|l| l.name == other)?.clone();
                (p.clustered
                    && line.state == "up"
                    && line.connected
                    && line.rtt_us.is_some()
                    && (!protected || line.protection.as_deref() == Some("protected")))
                .then_some((p, line))
            },
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n{me} peers: {:?}\nits log:\n{}",
                from.peers(),
                from.log_tail(40)
            )
        });
        assert_eq!(p.relay, me);
        assert_eq!((p.relay_id, line.relay_id), (Some(3 - id), id));
        assert!(line.bytes_sent > 0 && line.bytes_received > 0, "{line:?}");
        eprintln!("{me}: {line:?}");
        line
    };
    let b_seen_by_a = see(a, "relay-a", "relay-b", 2, true);
    let a_seen_by_b = see(&b, "relay-b", "relay-a", 1, false);
    assert_eq!((b_seen_by_a.flows_held, a_seen_by_b.flows_held), (0, 0));

    // The human table names the peer and its state.
    let human =
        String::from_utf8_lossy(&a.cli(&["peers"]).expect("relay peers").stdout).into_owned();
    eprint!("relay peers on relay-a:\n{human}");
    assert!(human.starts_with("relay-a (relay 1): 1 peer\n"), "{human}");
    let row = human
        .lines()
        .find(|l| l.starts_with("relay-b"))
        .unwrap_or_else(|| panic!("no relay-b row: {human}"));
    assert!(row.split_whitespace().nth(2) == Some("up"), "{row}");

    // /metrics on both sides.
    let scrape_up = |from: &RelayProcess, other: &str| {
        wait_for(
            Duration::from_secs(30),
            &format!("relay_peer_up{{peer=\"{other}\"}} 1"),
            || {
                let m = from.metrics().ok()?;
                (m.sum("relay_peer_up", &[("peer", other)]) == 1.0).then_some(m)
            },
        )
        .unwrap()
    };
    let m = scrape_up(a, "relay-b");
    assert!(
        m.text.contains("relay_peer_up{peer=\"relay-b\"} 1\n"),
        "{}",
        m.text
    );
    assert_eq!(
        m.sum("relay_peer_state", &[("peer", "relay-b"), ("state", "up")]),
        1.0
    );
    let rtt = m.sum("relay_backplane_rtt_seconds", &[("peer", "relay-b")]);
    assert!(rtt > 0.0 && rtt < 1.0, "rtt {rtt}");
    assert!(
        m.sum(
            "relay_backplane_bytes_total",
            &[("peer", "relay-b"), ("direction", "sent")]
        ) > 0.0
    );
    for name in [
        "relay_backplane_connections_refused_total",
        "relay_replication_backlog_bytes",
        "relay_flows_unprotected",
        "relay_failovers_total",
        "relay_failover_seconds_count",
    ] {
        assert!(
            m.text.lines().any(|l| l.starts_with(name)),
            "{name} missing from relay-a's /metrics"
        );
    }
    scrape_up(&b, "relay-a");

    // A flow on relay-a (an upload the test holds open): protected by
    // relay-b and held there in standby; once it ends, nothing is left in
    // the backlog or the standby.
    let dir = TempDir(temp_dir(&format!("peers-{}", s.lab.prefix())));
    let upload = HeldUpload::start(&s, &dir.0, 4 * MIB);
    let (mine, theirs) = wait_for(
        Duration::from_secs(60),
        "the upload protected by relay-b and held there",
        || {
            let mine = a.peers().ok()?.peers.into_iter().next()?;
            let theirs = b.peers().ok()?.peers.into_iter().next()?;
            (mine.flows_protected >= 1 && theirs.flows_held >= 1).then_some((mine, theirs))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nrelay-a: {:?}\nrelay-b: {:?}", a.peers(), b.peers()));
    eprintln!("during the upload:\n  relay-a: {mine:?}\n  relay-b: {theirs:?}");
    upload.finish(&s, "upload through a protected relay");
    wait_for(
        Duration::from_secs(30),
        "the backlog and the standby empty after the flow",
        || {
            let mine = a.peers().ok()?.peers.into_iter().next()?;
            let held = b.peers().ok()?.peers.into_iter().next()?;
            (mine.flows_protected == 0
                && mine.backlog_messages == 0
                && mine.backlog_bytes == 0
                && held.flows_held == 0)
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nrelay-a: {:?}\nrelay-b: {:?}", a.peers(), b.peers()));
}

/// The backplane between the relays is cut while a download runs through
/// relay-a, and both relays stay alive: the front-path heartbeats keep
/// each one from declaring the other dead, so relay-b takes nothing over
/// (exactly one relay serves the VIP), relay-a's flow carries on with
/// local commits, and when the backplane returns the pair re-forms. The
/// download finishes byte-exact on its one connection with no reset.
#[test]
fn a_cut_backplane_with_both_relays_alive_leaves_one_relay_serving() {
    let (s, b) = pair_setup("bpcut");
    let dir = TempDir(temp_dir(&format!("bpcut-{}", s.lab.prefix())));
    let peer_state =
        |r: &RelayProcess| -> Option<String> { Some(r.peers().ok()?.peers.first()?.state.clone()) };
    // The front path keys come with the first backplane connection.
    wait_for(
        Duration::from_secs(30),
        "front-path heartbeats both ways",
        || {
            let heard = |r: &RelayProcess| {
                r.metrics()
                    .map(|m| m.sum("relay_front_heartbeats_total", &[("outcome", "heard")]))
                    .unwrap_or(0.0)
            };
            (heard(&b) > 0.0 && heard(&s.relay) > 0.0).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nrelay-b:\n{}", b.log_tail(30)));
    let capture = ClientCapture::start(&s, &dir);
    let n = 256 * MIB;
    let script = counted_download(&s, n, "--limit-rate 16M");
    let run = Script::spawn(&s.lab, Node::Client, &script);
    wait_for(Duration::from_secs(120), "the download under way", || {
        (s.relay.status().ok()?.bytes_down >= n / 10).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\nrelay-a:\n{}", s.relay.log_tail(30)));

    s.lab
        .exec(Node::RelayA, "ip", &["link", "set", "dev", "bp0", "down"])
        .expect("backplane down");
    wait_for(
        Duration::from_secs(30),
        "both relays to see the cut",
        || (peer_state(&b)? == "cut" && peer_state(&s.relay)? == "cut").then_some(()),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: relay-b sees {:?}, relay-a {:?}\nrelay-b:\n{}",
            peer_state(&b),
            peer_state(&s.relay),
            b.log_tail(30)
        )
    });
    // The flow carries on unprotected: commits are local while cut.
    let cut_at = s.relay.status().expect("relay-a status").bytes_down;
    let unprotected = |r: &RelayProcess| {
        r.metrics()
            .map(|m| m.sum("relay_commits_unprotected_total", &[]))
            .unwrap_or(0.0)
    };
    wait_for(
        Duration::from_secs(120),
        "relay-a's flow moving on local commits",
        || {
            let moved = s.relay.status().ok()?.bytes_down >= cut_at + 16 * MIB;
            (moved && unprotected(&s.relay) > 0.0).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nrelay-a:\n{}", s.relay.log_tail(30)));
    // Well past the dead interval (8 x 50 ms) by now: nobody took over.
    assert_eq!(peer_state(&b).as_deref(), Some("cut"));
    assert!(
        !b.log_tail(400).contains("took over"),
        "relay-b took over a live relay's flows:\n{}",
        b.log_tail(30)
    );
    let adopted = b
        .metrics()
        .expect("relay-b metrics")
        .sum("relay_flows_adopted_total", &[]);
    assert_eq!(adopted, 0.0, "relay-b adopted flows of a live relay");

    s.lab
        .exec(Node::RelayA, "ip", &["link", "set", "dev", "bp0", "up"])
        .expect("backplane up");
    wait_for(Duration::from_secs(60), "the pair to re-form", || {
        (peer_state(&b)? == "up" && peer_state(&s.relay)? == "up").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\nrelay-b:\n{}", b.log_tail(30)));

    let done = run.finish(Duration::from_secs(300));
    check_counted_download(&done, n, "bpcut", &s.relay.log_tail(30));
    let resets = capture.resets_from_vip(&s);
    assert!(resets.is_empty(), "resets reached the client: {resets:?}");
    let status = b.status().expect("relay-b status");
    assert_eq!(
        (status.flows_opened, status.bytes_down),
        (0, 0),
        "relay-b served nothing: {status:?}"
    );
    eprintln!(
        "bpcut: backplane cut at byte {cut_at} of {n}; relay-a committed locally ({} unprotected commits), relay-b took nothing over; the pair re-formed",
        unprotected(&s.relay)
    );
}

// ---------------------------------------------------------------------------
// A lossy backplane

/// The number of lines in a relay's log now: [`log_since`] reads what
/// comes after.
fn log_len(r: &RelayProcess) -> usize {
    r.log_tail(usize::MAX).lines().count()
}

/// A relay's log lines from line `from` on.
fn log_since(r: &RelayProcess, from: usize) -> Vec<String> {
    r.log_tail(usize::MAX)
        .lines()
        .skip(from)
        .map(str::to_string)
        .collect()
}

/// Log lines that show the pair coming apart: a cut (the backplane given
/// up while the peer is heard on the front), a dead peer, a dropped
/// backplane connection.
fn flaps(lines: &[String]) -> Vec<String> {
    const MARKS: [&str; 4] = [
        "backplane lost",
        "peer down",
        "backplane disconnected",
        "connection silent",
    ];
    lines
        .iter()
        .filter(|l| MARKS.iter().any(|m| l.contains(m)))
        .cloned()
        .collect()
}

/// How many of `lines` contain `mark`.
fn count_of(lines: &[String], mark: &str) -> usize {
    lines.iter().filter(|l| l.contains(mark)).count()
}

/// A TLS 1.3 download of `n` bytes with curl reporting its connections.
/// A TLS 1.3 download of `n` bytes that prints its hash and, on stderr,
/// the number of connections curl made; `extra` goes to curl too.
fn counted_download(s: &Setup, n: u64, extra: &str) -> String {
    format!(
        "set -o pipefail; {} | sha256sum | cut -c1-64",
        s.curl(
            &s.ca(),
            &format!("--tlsv1.3 {extra} -v -w '%{{stderr}}connects=%{{num_connects}}\\n'"),
            &format!("/bytes/{n}")
        )
    )
}

/// Checks a finished [`counted_download`]: curl succeeded, the body is
/// byte-exact, on one connection.
fn check_counted_download(done: &Finished, n: u64, what: &str, relay_log: &str) {
    let tail = |text: &str, k: usize| {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(k)..].join("\n")
    };
    assert!(
        done.ok(),
        "{what}: curl failed ({}): {}\nrelay log:\n{relay_log}",
        done.status,
        tail(&done.stderr, 20)
    );
    assert_eq!(
        done.stdout.trim(),
        pattern_sha256(n),
        "{what}: not byte-exact"
    );
    assert!(
        done.stderr.contains("connects=1"),
        "{what}: one connection: {}",
        tail(&done.stderr, 5)
    );
}

/// A relay pair whose backplane loses `percent` % of its packets each way
/// (random drops on both relays' `bp0`: the lab kernel has no netem, see
/// [`Lab::add_ingress_loss`]), put on once the front path is keyed (from
/// then on a silent backplane alone reads as a cut, not a death). Returns
/// the pair and where each relay's log stood when the loss began.
fn lossy_pair(tag: &str, percent: u32) -> (Setup, RelayProcess, usize, usize) {
    let (s, b) = pair_setup(tag);
    wait_for(
        Duration::from_secs(30),
        "front-path heartbeats both ways",
        || {
            let heard = |r: &RelayProcess| {
                r.metrics()
                    .map(|m| m.sum("relay_front_heartbeats_total", &[("outcome", "heard")]))
                    .unwrap_or(0.0)
            };
            (heard(&b) > 0.0 && heard(&s.relay) > 0.0).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nrelay-b:\n{}", b.log_tail(30)));
    let (a_from, b_from) = (log_len(&s.relay), log_len(&b));
    for node in [Node::RelayA, Node::RelayB] {
        s.lab
            .add_ingress_loss(node, "bp0", percent)
            .expect("loss on bp0");
    }
    (s, b, a_from, b_from)
}

/// `(received, dropped)` on relay-a's and relay-b's `bp0`.
fn backplane_drops(s: &Setup) -> [(u64, u64); 2] {
    [Node::RelayA, Node::RelayB]
        .map(|node| s.lab.ingress_loss_counters(node, "bp0").unwrap_or((0, 0)))
}

fn unprotected_commits(r: &RelayProcess) -> f64 {
    r.metrics()
        .map(|m| m.sum("relay_commits_unprotected_total", &[]))
        .unwrap_or(0.0)
}

/// The backplane of the pair loses 10% of its packets each way. The
/// replication connection is TCP and TLS, so loss costs it
/// retransmissions and delays acknowledgements, and with them the
/// releases of the flows it protects. (1) A 256 MiB download through
/// relay-a is byte-exact on one connection with no reset. (2) relay-a is
/// killed (process death) under a second one, at a moment when relay-b
/// protects the flow: relay-b adopts it from state that crossed the lossy
/// backplane and finishes it byte-exact on the same connection, with no
/// reset from the VIP. While relay-a lived, relay-b never declared it dead
/// (no "peer down", no takeover). The membership's cuts and reconnections
/// under the loss are printed; that they should not happen at all is
/// `the_pair_stays_connected_with_ten_percent_loss_on_the_backplane`.
#[test]
fn every_flow_stays_byte_exact_with_ten_percent_loss_on_the_backplane() {
    let (mut s, b, a_from, b_from) = lossy_pair("bploss", 10);
    let n = 256 * MIB;

    // (1) A whole download over the lossy backplane.
    let dir1 = TempDir(temp_dir(&format!("bploss1-{}", s.lab.prefix())));
    let capture = ClientCapture::start(&s, &dir1);
    let run = Script::spawn(&s.lab, Node::Client, &counted_download(&s, n, ""));
    let done = run.finish(Duration::from_secs(300));
    check_counted_download(&done, n, "lossy 1", &s.relay.log_tail(30));
    let resets = capture.resets_from_vip(&s);
    assert!(
        resets.is_empty(),
        "lossy 1: resets from the VIP: {resets:?}"
    );
    let [(a_pkts, a_drops), (b_pkts, b_drops)] = backplane_drops(&s);
    let cuts = |from_a: &[String], from_b: &[String]| {
        (
            count_of(from_a, "backplane lost") + count_of(from_b, "backplane lost"),
            count_of(from_a, "backplane disconnected"),
        )
    };
    let (cuts1, drops1) = cuts(&log_since(&s.relay, a_from), &log_since(&b, b_from));
    eprintln!(
        "lossy 1: {n} bytes byte-exact on one connection in {:.2} s ({:.1} MB/s); \
         bp0 drops: relay-a {a_drops} of {a_pkts} received, relay-b {b_drops} of {b_pkts}; \
         {cuts1} cuts and {drops1} backplane reconnections; relay-a's unprotected commits: {}",
        done.elapsed.as_secs_f64(),
        n as f64 / done.elapsed.as_secs_f64() / 1e6,
        unprotected_commits(&s.relay),
    );
    assert!(
        a_drops > 0 && b_drops > 0,
        "the loss must have hit both directions"
    );

    // (2) relay-a dies under a second download, at a moment when relay-b
    // protects the flow (under this loss the pair is cut now and then, and
    // a relay that dies while cut takes its unprotected flows with it:
    // docs/replication.md, "Current limits").
    let dir2 = TempDir(temp_dir(&format!("bploss2-{}", s.lab.prefix())));
    let capture = ClientCapture::start(&s, &dir2);
    let base = s.relay.status().expect("relay-a status").bytes_down;
    let point = kill_point(n);
    let run = Script::spawn(&s.lab, Node::Client, &counted_download(&s, n, ""));
    wait_for(
        Duration::from_secs(300),
        "the second download under way",
        || (s.relay.status().ok()?.bytes_down >= base + point).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\nrelay-a:\n{}", s.relay.log_tail(30)));
    let reached = Instant::now();
    let protected = wait_for(
        Duration::from_secs(120),
        "relay-b protecting the flow",
        || {
            let mine = s.relay.peers().ok()?.peers.into_iter().next()?;
            (mine.state == "up"
                && mine.connected
                && mine.protection.as_deref() == Some("protected")
                && mine.flows_protected == 1
                && mine.flows_unprotected == 0)
                .then_some(mine)
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}\nrelay-a:\n{}",
            s.relay.peers(),
            s.relay.log_tail(30)
        )
    });
    let waited = reached.elapsed();
    let at = s.relay.status().expect("relay-a status").bytes_down - base;
    let b_before_kill = log_since(&b, b_from);
    let a_lines = log_since(&s.relay, a_from);
    let a_unprotected = unprotected_commits(&s.relay);
    let [(a_pkts, a_drops), (b_pkts, b_drops)] = backplane_drops(&s);
    s.relay.kill();
    let done = run.finish(Duration::from_secs(300));
    check_counted_download(&done, n, "lossy 2", &b.log_tail(40));
    let resets = capture.resets_from_vip(&s);
    assert!(
        resets.is_empty(),
        "lossy 2: resets from the VIP: {resets:?}"
    );
    let status = b.status().expect("relay-b status");
    assert_eq!(
        (
            status.flows_opened,
            status.handshakes_full,
            status.handshakes_resumed
        ),
        (0, 0, 0),
        "relay-b carried the old connection, it opened none: {status:?}"
    );
    assert!(status.bytes_down > 0, "relay-b carried no byte: {status:?}");
    let takeover = b
        .log_tail(usize::MAX)
        .lines()
        .find(|l| l.contains("took over the peer's flows"))
        .unwrap_or("")
        .to_string();
    for node in [Node::RelayA, Node::RelayB] {
        s.lab
            .remove_ingress_loss(node, "bp0")
            .expect("remove the loss");
    }
    let (cuts2, drops2) = cuts(&a_lines, &b_before_kill);
    let lived = flaps(&a_lines)
        .into_iter()
        .chain(flaps(&b_before_kill))
        .count();
    eprintln!(
        "lossy 2: relay-a killed at byte {at} of {n} ({waited:.1?} after byte {point} for \
         relay-b to protect the flow: {protected:?}); bp0 drops by then: relay-a {a_drops} of \
         {a_pkts}, relay-b {b_drops} of {b_pkts}; relay-a's unprotected commits: \
         {a_unprotected}; byte-exact on one connection in {:.2} s, relay-b carried {} bytes; {}",
        done.elapsed.as_secs_f64(),
        status.bytes_down,
        takeover.split("took over").nth(1).unwrap_or("")
    );
    eprintln!(
        "membership under 10% backplane loss while relay-a lived: {cuts2} cuts, {drops2} \
         backplane reconnections ({lived} flap lines in both logs)"
    );
    // While relay-a lived, relay-b never declared it dead.
    let dead: Vec<&String> = b_before_kill
        .iter()
        .filter(|l| l.contains("took over") || l.contains("peer down"))
        .collect();
    assert!(
        dead.is_empty(),
        "relay-b declared a live relay-a dead under 10% backplane loss: {dead:?}"
    );
}

/// The backplane of the pair loses 10% of its packets each way, idle for
/// 20 s and then under a 256 MiB download: the pair stays connected, and
/// neither relay sees the other cut or down (a late heartbeat, `suspect`,
/// is what loss may cost).
#[test]
fn the_pair_stays_connected_with_ten_percent_loss_on_the_backplane() {
    let (s, b, a_from, b_from) = lossy_pair("bpflap", 10);
    let flapped = |s: &Setup| -> Vec<String> {
        flaps(&log_since(&s.relay, a_from))
            .into_iter()
            .chain(flaps(&log_since(&b, b_from)))
            .collect()
    };
    // Idle: heartbeats alone. A flap ends the wait early.
    let idle = Duration::from_secs(20);
    let started = Instant::now();
    let first = wait_for(idle, "a flap", || flapped(&s).into_iter().next());
    let idle_flaps = flapped(&s);
    eprintln!(
        "idle pair, 10% backplane loss: {} in {:.1} s; first: {first:?}",
        if idle_flaps.is_empty() {
            "no flap".to_string()
        } else {
            format!("{} flap lines", idle_flaps.len())
        },
        started.elapsed().as_secs_f64()
    );
    // Busy: the replication of a download.
    let (a_mark, b_mark) = (log_len(&s.relay), log_len(&b));
    let n = 256 * MIB;
    let done = Script::spawn(&s.lab, Node::Client, &counted_download(&s, n, ""))
        .finish(Duration::from_secs(300));
    check_counted_download(&done, n, "download", &s.relay.log_tail(30));
    let busy: Vec<String> = flaps(&log_since(&s.relay, a_mark))
        .into_iter()
        .chain(flaps(&log_since(&b, b_mark)))
        .collect();
    let [(a_pkts, a_drops), (b_pkts, b_drops)] = backplane_drops(&s);
    eprintln!(
        "busy pair, 10% backplane loss: {} flap lines ({} cuts) in {:.1} s of download; \
         bp0 drops: relay-a {a_drops} of {a_pkts}, relay-b {b_drops} of {b_pkts}",
        busy.len(),
        count_of(&busy, "backplane lost"),
        done.elapsed.as_secs_f64()
    );
    assert!(
        idle_flaps.is_empty() && busy.is_empty(),
        "the pair flapped under 10% backplane loss:\nidle: {idle_flaps:#?}\nbusy: {busy:#?}"
    );
}

// ---------------------------------------------------------------------------
// An interactive session across a death

/// An interactive client in a lab node: its stdin is a pipe the test holds
/// (the client sees no EOF until the test closes it), its stdout and
/// stderr are read as they come. Its own process group, killed on drop.
struct Interactive {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    out: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Interactive {
    /// `bash -c script` in `node`; the script merges stderr into stdout.
    fn spawn(lab: &Lab, node: Node, script: &str) -> Interactive {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lab.ns(node), "bash", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning `{script}`: {e}"));
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(mut stdout) = child.stdout.take() {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stdout.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut text) = out.lock() {
                        text.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        Interactive {
            stdin: child.stdin.take(),
            child,
            out,
        }
    }

    /// Writes `line` and a newline to the client's stdin.
    fn send(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("writing {line:?} to the client: {e}"));
    }

    /// Everything the client printed so far.
    fn output(&self) -> String {
        self.out.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Waits until the output satisfies `check`.
    fn wait_output(
        &self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&str) -> bool,
    ) -> Result<(), relay_lab::LabError> {
        wait_for(timeout, what, || check(&self.output()).then_some(()))
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .status();
        }
        let _ = self.child.wait();
    }
}

/// `openssl s_client -tls1_3` through the pair to an echo backend, driven
/// line by line: a line is echoed through relay-a; relay-a is killed
/// (SIGKILL); a line is echoed through relay-b on the same connection;
/// then the client updates its keys (`k`: KeyUpdate, update_not_requested)
/// and asks the relay to update its own (`K`: update_requested), and lines
/// are still echoed after each. Then the client closes (`Q`) and the relay
/// closes cleanly: no reset from the VIP, and relay-b opened no flow.
#[test]
fn an_interactive_openssl_session_survives_the_kill_and_updates_its_keys() {
    let (mut s, b) = pair_setup_with("osslku", &["--echo", "--idle-timeout", "600"]);
    let dir = TempDir(temp_dir(&format!("osslku-{}", s.lab.prefix())));
    let capture = ClientCapture::start(&s, &dir);
    // No -quiet or -ign_eof: they turn off s_client's command letters.
    let mut client = Interactive::spawn(
        &s.lab,
        Node::Client,
        &format!(
            "exec openssl s_client -connect {}:443 -servername {SERVER_NAME} -CAfile {} \
             -verify_return_error -tls1_3 2>&1",
            addr::VIP,
            s.ca()
        ),
    );
    // Every step panics with what the client printed and both relays' logs.
    let fail = |what: &str, e: &dyn std::fmt::Display, client: &Interactive, s: &Setup| -> ! {
        let out = client.output();
        let lines: Vec<&str> = out.lines().collect();
        panic!(
            "{what}: {e}\nclient (last lines):\n{}\nrelay-b:\n{}\nrelay-a:\n{}",
            lines[lines.len().saturating_sub(30)..].join("\n"),
            b.log_tail(40),
            s.relay.log_tail(20)
        )
    };
    let echoed = |client: &mut Interactive, s: &Setup, line: &str, timeout: Duration| {
        let started = Instant::now();
        client.send(line);
        client
            .wait_output(timeout, &format!("the echo of {line:?}"), |o| {
                o.contains(line)
            })
            .unwrap_or_else(|e| fail(line, &e, client, s));
        started.elapsed()
    };
    let key_update = |client: &mut Interactive, s: &Setup, letter: &str, count: usize| {
        client.send(letter);
        client
            .wait_output(Duration::from_secs(10), "s_client's KEYUPDATE", |o| {
                o.matches("KEYUPDATE").count() >= count
            })
            .unwrap_or_else(|e| fail(letter, &e, client, s));
    };

    client
        .wait_output(Duration::from_secs(30), "the handshake", |o| {
            o.contains("Verify return code: 0 (ok)")
        })
        .unwrap_or_else(|e| fail("handshake", &e, &client, &s));
    assert!(
        client.output().contains("TLSv1.3"),
        "not TLS 1.3:\n{}",
        client.output()
    );
    // No line may start with Q, R, k or K: s_client's command letters.
    let first = echoed(
        &mut client,
        &s,
        "line 1 through relay-a",
        Duration::from_secs(30),
    );
    // Killed only once relay-b holds the flow and everything relay-a
    // committed is acknowledged.
    wait_for(Duration::from_secs(30), "relay-b to hold the flow", || {
        let mine = s.relay.peers().ok()?.peers.into_iter().next()?;
        let theirs = b.peers().ok()?.peers.into_iter().next()?;
        (theirs.flows_held == 1 && mine.backlog_messages == 0).then_some(())
    })
    .unwrap_or_else(|e| fail("standby", &e, &client, &s));
    s.relay.kill();
    let killed = Instant::now();
    wait_for(Duration::from_secs(30), "relay-b's takeover", || {
        b.log_tail(400)
            .contains("took over the peer's flows")
            .then_some(())
    })
    .unwrap_or_else(|e| fail("takeover", &e, &client, &s));
    let took_over = killed.elapsed();
    let after_kill = [
        "line 2 through relay-b after the kill",
        "line 3 after our KeyUpdate",
        "line 4, a second after our KeyUpdate",
        "line 5 after our KeyUpdate asking for the relay's",
        "line 6, a second after both KeyUpdates",
    ];
    let second = echoed(&mut client, &s, after_kill[0], Duration::from_secs(60));
    key_update(&mut client, &s, "k", 1);
    let third = echoed(&mut client, &s, after_kill[1], Duration::from_secs(30));
    let fourth = echoed(&mut client, &s, after_kill[2], Duration::from_secs(30));
    key_update(&mut client, &s, "K", 2);
    let fifth = echoed(&mut client, &s, after_kill[3], Duration::from_secs(30));
    let sixth = echoed(&mut client, &s, after_kill[4], Duration::from_secs(30));
    assert!(client.is_running(), "s_client ended:\n{}", client.output());
    // Each line came back once, in order: nothing lost, nothing doubled.
    let out = client.output();
    let at: Vec<Option<usize>> = std::iter::once("line 1 through relay-a")
        .chain(after_kill)
        .map(|line| {
            (out.matches(line).count() == 1)
                .then(|| out.find(line))
                .flatten()
        })
        .collect();
    assert!(
        at.iter().all(Option::is_some) && at.windows(2).all(|w| w[0] < w[1]),
        "the echoes, once each and in order: {at:?}\n{out}"
    );
    // The listing is refreshed by the worker every so often.
    let flow = wait_for(
        Duration::from_secs(30),
        "relay-b to list the adopted flow",
        || match b.flows().ok()?.as_slice() {
            [flow] if flow.bytes_up > 0 => Some(flow.clone()),
            _ => None,
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", b.flows()));
    eprintln!("relay-b's flow before the close: {flow:?}");

    // The client closes; the relay closes too, with no reset.
    client.send("Q");
    wait_for(Duration::from_secs(30), "s_client to exit", || {
        (!client.is_running()).then_some(())
    })
    .unwrap_or_else(|e| fail("Q", &e, &client, &s));
    let resets = capture.resets_from_vip(&s);
    assert!(resets.is_empty(), "resets from the VIP: {resets:?}");
    // Once the flow is gone, relay-b's counters hold all it moved: at
    // least the five lines each way (they may count relay-a's part too).
    let moved: u64 = after_kill.iter().map(|l| l.len() as u64 + 1).sum();
    let status = wait_for(
        Duration::from_secs(30),
        &format!("relay-b's flow closed, with at least {moved} bytes each way counted"),
        || {
            let st = b.status().ok()?;
            (st.flows_active == 0 && st.bytes_up >= moved && st.bytes_down >= moved).then_some(st)
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}\nrelay-b:\n{}", b.status(), b.log_tail(30)));
    assert_eq!(
        (
            status.flows_opened,
            status.handshakes_full,
            status.handshakes_resumed
        ),
        (0, 0, 0),
        "relay-b carried the old connection, it opened none: {status:?}"
    );
    let takeover = b
        .log_tail(400)
        .lines()
        .find(|l| l.contains("took over the peer's flows"))
        .unwrap_or("")
        .to_string();
    eprintln!(
        "s_client TLS 1.3 across relay-a's death: echo through relay-a in {:.0} ms; \
         relay-b took over {:.0} ms after the kill ({}); echoes through relay-b in \
         {:.0} ms (first after the kill), {:.0} and {:.0} ms after k, {:.0} and {:.0} ms \
         after K; relay-b moved {} bytes up and {} down on the adopted connection",
        first.as_secs_f64() * 1e3,
        took_over.as_secs_f64() * 1e3,
        takeover.split("took over").nth(1).unwrap_or("").trim(),
        second.as_secs_f64() * 1e3,
        third.as_secs_f64() * 1e3,
        fourth.as_secs_f64() * 1e3,
        fifth.as_secs_f64() * 1e3,
        sixth.as_secs_f64() * 1e3,
        status.bytes_up,
        status.bytes_down
    );
}

/// Failback: relay-a dies under a download and relay-b carries it on;
/// relay-a comes back, stands by (it does not take the VIP relay-b
/// serves) and is re-seeded with the flow; `relay handoff` on relay-b then
/// moves the flow and the addresses back to relay-a. The download finishes
/// byte-exact on its one connection, with no reset from the VIP.
#[test]
fn failback_a_returning_relay_gets_its_flows_back_by_handoff() {
    let (mut s, b) = pair_setup("failback");
    let dir = TempDir(temp_dir(&format!("failback-{}", s.lab.prefix())));
    let capture = ClientCapture::start(&s, &dir);
    let n = 256 * MIB;
    let script = counted_download(&s, n, "--limit-rate 12M");
    let run = Script::spawn(&s.lab, Node::Client, &script);
    wait_for(Duration::from_secs(120), "the download under way", || {
        (s.relay.status().ok()?.bytes_down >= n / 10).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\nrelay-a:\n{}", s.relay.log_tail(30)));
    s.relay.kill();
    wait_for(Duration::from_secs(30), "relay-b to take over", || {
        b.log_tail(400).contains("took over").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\nrelay-b:\n{}", b.log_tail(30)));
    wait_for(
        Duration::from_secs(120),
        "relay-b to carry the flow",
        || (b.status().ok()?.bytes_down > 0).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\nrelay-b:\n{}", b.log_tail(30)));

    // relay-a comes back: it must stand by, and get the flow re-seeded.
    let a_config = RelayConfig::pair_member(&s.pki, Node::RelayA).expect("relay-a's config");
    let a = RelayProcess::start_on(&s.lab, Node::RelayA, &a_config).expect("relay-a restarts");
    wait_for(
        Duration::from_secs(60),
        "relay-a to hold relay-b's flow",
        || {
            let p = a.peers().ok()?;
            let peer = p.peers.first()?;
            (peer.state == "up" && peer.flows_held >= 1).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nrelay-a:\n{}", a.log_tail(30)));
    // relay-b's view too: it hands off only to a peer it sees up.
    wait_for(Duration::from_secs(60), "relay-b to see relay-a up", || {
        let p = b.peers().ok()?;
        let peer = p.peers.first()?;
        (peer.state == "up" && peer.connected).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\nrelay-b:\n{}", b.log_tail(30)));
    assert!(
        a.log_tail(400).contains("serving no address"),
        "relay-a took addresses its peer serves:\n{}",
        a.log_tail(30)
    );
    let before = b.status().expect("relay-b status").bytes_down;

    let said = b.handoff().unwrap_or_else(|e| {
        panic!(
            "relay handoff: {e}\nrelay-b:\n{}\nrelay-a:\n{}",
            b.log_tail(30),
            a.log_tail(30)
        )
    });
    assert!(
        said.contains("handed 1 flows"),
        "relay handoff said: {said}"
    );
    wait_for(
        Duration::from_secs(60),
        "relay-a to carry the flow on",
        || {
            let st = a.status().ok()?;
            (st.bytes_down > 0).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nrelay-a:\n{}", a.log_tail(30)));
    // The adopted flow is listed as any other: its backend and its TLS.
    let listed = wait_for(Duration::from_secs(30), "relay-a to list the flow", || {
        a.flows().ok()?.into_iter().next()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        listed.backend,
        Some(SocketAddr::V4(SocketAddrV4::new(addr::BACKEND, 8080))),
        "{listed:?}"
    );
    assert!(listed.tls.contains("Tls13"), "{listed:?}");

    let done = run.finish(Duration::from_secs(300));
    check_counted_download(&done, n, "failback", &a.log_tail(30));
    let resets = capture.resets_from_vip(&s);
    assert!(resets.is_empty(), "resets reached the client: {resets:?}");
    let (ma, mb) = (
        a.metrics().expect("relay-a metrics"),
        b.metrics().expect("relay-b metrics"),
    );
    assert_eq!(ma.sum("relay_flows_adopted_total", &[]), 1.0);
    assert_eq!(mb.sum("relay_flows_handed_off_total", &[]), 1.0);
    let a_status = a.status().expect("relay-a status");
    assert_eq!(a_status.flows_opened, 0, "relay-a opened no new flow");
    eprintln!(
        "failback: relay-b carried {} bytes after the failover, then handed off ({}); relay-a carried {} bytes to the end",
        before,
        said.trim(),
        a_status.bytes_down
    );
}
