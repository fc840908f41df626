//! Child processes for interop tests: bounded in time, output collected.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Fails the test with a clear message when a tool is missing (no silent skip).
pub fn require_tool(tool: &str, debian_package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "this interop test needs `{tool}`, which is not installed: apt-get install -y {debian_package}"
    );
}

pub struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    collectors: Vec<JoinHandle<()>>,
    what: String,
}

fn collect(mut r: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b2 = buf.clone();
    let handle = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b2.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (buf, handle)
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Self {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stdin = child.stdin.take();
        let (out, out_done) = collect(child.stdout.take().unwrap());
        let (err, err_done) = collect(child.stderr.take().unwrap());
        Self {
            child,
            stdin,
            out,
            err,
            collectors: vec![out_done, err_done],
            what,
        }
    }

    pub fn send(&mut self, s: &str) {
        let stdin = self.stdin.as_mut().expect("stdin closed");
        stdin.write_all(s.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    /// Waits until stdout holds `needle` `count` times; panics with the output after `secs`.
    #[track_caller]
    pub fn wait_for(&self, needle: &str, count: usize, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.stdout().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle:?} from {}\n--- stdout\n{}\n--- stderr\n{}",
                self.what,
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Like [`Self::wait_for`] on stderr.
    #[track_caller]
    pub fn wait_for_err(&self, needle: &str, count: usize, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.stderr().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle:?} on stderr of {}\n--- stdout\n{}\n--- stderr\n{}",
                self.what,
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn join_collectors(&mut self) {
        for handle in self.collectors.drain(..) {
            let _ = handle.join();
        }
    }

    /// Closes stdin and waits for the exit (killing it after `secs`).
    pub fn finish(mut self, secs: u64) -> (ExitStatus, String, String) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // The collectors end at EOF, once they hold the last bytes.
                self.join_collectors();
                return (st, self.stdout(), self.stderr());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let st = self.child.wait().unwrap();
                self.join_collectors();
                return (st, self.stdout(), self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Never leave a client running past its test.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a command with stdin from `input`, bounded by `secs`.
pub fn run(cmd: &mut Command, input: &str, secs: u64) -> (ExitStatus, String, String) {
    let mut p = Proc::spawn(cmd);
    if !input.is_empty() {
        p.send(input);
    }
    p.finish(secs)
}
