//! The real peers of the end-to-end tests: the `lab-backend` origin server
//! and the `lab-load` TLS client (binaries of this package), and what tests
//! need around them: the body pattern's expected hash without storing the
//! data, a guard that runs the backend (on the host or inside a lab node)
//! and stops it on drop, and where the built binaries are.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::echo::PatternStream;
use crate::{Lab, LabError, Node};

/// The I/O chunk of the peers: bodies are generated, sent, read and hashed
/// 64 KiB at a time.
pub const CHUNK: usize = 64 * 1024;

/// The seed of every HTTP body of the lab (`GET /bytes/N` answers, `lab-load
/// --upload` bodies): a body of N bytes is the first N bytes of this stream.
pub const BODY_SEED: u64 = 0x1ab_b0d7;

/// The body pattern: `GET /bytes/N` is its first N bytes.
pub fn body_stream() -> PatternStream {
    PatternStream::new(BODY_SEED)
}

/// Hex SHA-256 of the first `n` bytes of [`body_stream`], computed 64 KiB at
/// a time (constant memory for any `n`).
pub fn pattern_sha256(n: u64) -> String {
    let mut stream = body_stream();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = n;
    while left > 0 {
        let len = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        stream.fill(&mut buf[..len]);
        hasher.update(&buf[..len]);
        left -= len as u64;
    }
    crate::backend::hex(&hasher.finalize())
}

/// The path of binary `name` of this package when called from a test or
/// bench of the same target directory (`target/<profile>/deps/x` ->
/// `target/<profile>/<name>`). Integration tests of this package should
/// prefer `env!("CARGO_BIN_EXE_<name>")`, which Cargo guarantees is built.
pub fn sibling_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?;
    if dir.ends_with("deps") {
        dir = dir.parent()?;
    }
    let path = dir.join(name);
    path.is_file().then_some(path)
}

/// How long [`BackendServer`] waits for the `listening on` line.
pub const BACKEND_START_TIMEOUT: Duration = Duration::from_secs(20);

/// The last stderr lines of a peer kept for error messages.
const STDERR_KEEP: usize = 50;

/// A running `lab-backend`, killed (by its PID) and reaped on drop.
#[derive(Debug)]
pub struct BackendServer {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl BackendServer {
    /// Starts `bin` (the `lab-backend` binary) on this host with `--listen
    /// listen` and `extra` arguments, and waits for it to be bound.
    /// `127.0.0.1:0` picks a free port: see [`BackendServer::addr`].
    pub fn spawn(bin: &Path, listen: &str, extra: &[&str]) -> Result<BackendServer, LabError> {
        let program = bin.to_string_lossy().into_owned();
        let mut args = vec!["--listen", listen];
        args.extend_from_slice(extra);
        let child = Command::new(bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| LabError::Spawn {
                cmd: format!("{program} {}", args.join(" ")),
                source,
            })?;
        Self::wait_listening(child, &format!("{program} {}", args.join(" ")))
    }

    /// Starts `bin` inside `node` of `lab` (as [`Lab::spawn`]), e.g. the
    /// backend node on `10.200.2.10:8080`, and waits for it to be bound.
    pub fn spawn_in(
        lab: &Lab,
        node: Node,
        bin: &Path,
        listen: &str,
        extra: &[&str],
    ) -> Result<BackendServer, LabError> {
        let program = bin.to_string_lossy().into_owned();
        let mut args = vec!["--listen", listen];
        args.extend_from_slice(extra);
        // `ip netns exec` execs the program: the child's PID is the backend's.
        let child = lab.spawn(node, &program, &args)?;
        Self::wait_listening(
            child,
            &format!(
                "ip netns exec {} {program} {}",
                lab.ns(node),
                args.join(" ")
            ),
        )
    }

    fn wait_listening(mut child: Child, cmd: &str) -> Result<BackendServer, LabError> {
        let stderr_lines = Arc::new(Mutex::new(Vec::new()));
        let mut stderr_reader = None;
        if let Some(stderr) = child.stderr.take() {
            let keep = stderr_lines.clone();
            stderr_reader = Some(std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(mut keep) = keep.lock() {
                        if keep.len() == STDERR_KEEP {
                            keep.remove(0);
                        }
                        keep.push(line);
                    }
                }
            }));
        }
        let (tx, rx) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            // Reads stdout to its end, so the pipe never fills up.
            std::thread::spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                for line in lines.by_ref().map_while(Result::ok) {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        let _ = tx.send(addr.trim().parse::<SocketAddr>().ok());
                    }
                }
            });
        }
        let mut server = BackendServer {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            stderr: stderr_lines,
            stderr_reader,
        };
        let deadline = Instant::now() + BACKEND_START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(Some(addr)) => {
                    server.addr = addr;
                    return Ok(server);
                }
                Ok(None) => {
                    return Err(server.failed(cmd, "printed an unparsable listening line"));
                }
                // Its stdout closed: it exited (or is about to) without binding.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(server.failed(cmd, "closed its stdout before listening"));
                }
                Err(mpsc::RecvTimeoutError::Timeout) if server.exited() => {
                    return Err(server.failed(cmd, "exited before listening"));
                }
                Err(_) if left.is_zero() => {
                    return Err(LabError::Timeout(
                        BACKEND_START_TIMEOUT,
                        format!("`{cmd}` to print its listening line"),
                    ));
                }
                Err(_) => {}
            }
        }
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    fn failed(&mut self, cmd: &str, what: &str) -> LabError {
        let status = match self.child.try_wait() {
            Ok(Some(status)) => format!("{what}: {status}"),
            _ => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                what.to_string()
            }
        };
        // The child is gone: its stderr reaches EOF and the reader ends.
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        LabError::Failed {
            cmd: cmd.to_string(),
            status,
            stderr: self.stderr_tail(),
        }
    }

    /// The address the backend is bound to (the real port for `:0`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The backend's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines the backend wrote on stderr.
    pub fn stderr_tail(&self) -> String {
        self.stderr
            .lock()
            .map(|lines| lines.join("\n"))
            .unwrap_or_default()
    }

    /// Whether the backend still runs.
    pub fn is_running(&mut self) -> bool {
        !self.exited()
    }
}

impl Drop for BackendServer {
    fn drop(&mut self) {
        // Child::kill signals exactly this PID (SIGKILL); then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
