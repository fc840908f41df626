//! TLS termination side by side: nginx and haproxy (Debian packages), each on
//! one core of relay-a in the lab, in front of the same plain-HTTP backend;
//! real clients in the client namespace measure
//!
//! - single-connection download MB/s (curl, 256 MiB file),
//! - full TLS 1.3 and resumed TLS 1.2 handshakes/s (`openssl s_time -new` /
//!   `-reuse`),
//! - request latency p50/p99 over keep-alive (wrk, one connection),
//!
//! and the relay itself in the same conditions, plus its resident memory
//! per established flow (500 idle TLS connections, each with its backend
//! connection open).

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use relay_lab::{Lab, Node, addr, run, unique_prefix, wait_for};

const BIG_FILE: &str = "big.bin";
const BIG_BYTES: usize = 256 << 20;
const SMALL_FILE: &str = "small.txt";
const BACKEND_PORT: u16 = 8080;
/// The core the terminators are pinned to (the clients get the other one).
const SERVER_CORE: &str = "1";

/// One terminator's figures.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    /// Single-connection download, MB/s.
    pub download_mb_s: Option<f64>,
    /// Full handshakes per second.
    pub full_hs_s: Option<f64>,
    /// Resumed handshakes per second.
    pub resumed_hs_s: Option<f64>,
    /// Keep-alive request latency, 50th percentile, milliseconds.
    pub p50_ms: Option<f64>,
    /// Keep-alive request latency, 99th percentile, milliseconds.
    pub p99_ms: Option<f64>,
    /// Resident memory per established flow, KiB (the relay only).
    pub kib_per_flow: Option<f64>,
}

/// Idle flows opened to measure memory per flow.
const IDLE_FLOWS: usize = 500;

/// The `relay` binary next to this one (same cargo profile).
fn relay_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let path = exe.parent().context("binary directory")?.join("relay");
    if !path.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p relay-app`",
            path.display()
        );
    }
    Ok(path)
}

fn start_relay(lab: &Lab, dir: &Path, cert: &Path, key: &Path) -> Result<(Child, PathBuf)> {
    let relay = relay_binary()?;
    let sock = dir.join("relay.sock");
    let conf = dir.join("relay.toml");
    write(
        &conf,
        &format!(
            "name = \"bench\"\nadmin_addr = \"{admin}:9100\"\ncontrol_socket = \"{sock}\"\n\
             [front]\ninterface = \"front\"\n[back]\ninterface = \"back\"\naddress = \"{back}\"\nports = \"{first}-{last}\"\n\
             [[service]]\nname = \"bench\"\nvip = \"{vip}\"\nbackends = [\"{b}:{BACKEND_PORT}\"]\n\
             [[service.certificate]]\ncert = \"{cert}\"\nkey = \"{key}\"\n",
            admin = addr::RELAY_A_FRONT,
            sock = sock.display(),
            back = addr::BACK_SHARED,
            first = addr::BACK_PORT_FIRST,
            last = addr::BACK_PORT_LAST,
            vip = addr::VIP,
            b = addr::BACKEND,
            cert = cert.display(),
            key = key.display()
        ),
    )?;
    let child = lab.spawn(
        Node::RelayA,
        "taskset",
        &[
            "-c",
            SERVER_CORE,
            &relay.to_string_lossy(),
            "run",
            "--config",
            &conf.to_string_lossy(),
        ],
    )?;
    let relay_s = relay.to_string_lossy().into_owned();
    let sock_s = sock.to_string_lossy().into_owned();
    wait_for(
        Duration::from_secs(30),
        "relay answering on its control socket",
        || run(&relay_s, &["--control", &sock_s, "status"]).ok(),
    )?;
    Ok((child, sock))
}

fn rss_kib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Opens IDLE_FLOWS TLS connections that each made one request (so their
/// backend connection is up), and measures the relay's RSS growth.
fn memory_per_flow(lab: &Lab, pid: u32) -> Option<f64> {
    let before = rss_kib(pid)?;
    let script = format!(
        "import socket, ssl, sys\n\
         ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n\
         conns = []\n\
         for i in range({IDLE_FLOWS}):\n\
         \x20   s = ctx.wrap_socket(socket.create_connection(('{vip}', 443), timeout=20))\n\
         \x20   s.sendall(b'GET /{SMALL_FILE} HTTP/1.1\\r\\nHost: bench\\r\\n\\r\\n')\n\
         \x20   got = b''\n\
         \x20   while not got.endswith(b'ok\\n'):\n\
         \x20       got += s.recv(4096)\n\
         \x20   conns.append(s)\n\
         print('ready', flush=True)\n\
         sys.stdin.read()\n",
        vip = addr::VIP
    );
    let mut child = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns(Node::Client),
            "python3",
            "-c",
            &script,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let stdout = child.stdout.take()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(120))
        .is_ok_and(|l| l.trim() == "ready");
    let after = rss_kib(pid);
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
    if !ready {
        return None;
    }
    Some((after? - before) / IDLE_FLOWS as f64)
}

struct Workdir(PathBuf);

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Stops a server we started: SIGTERM, then SIGKILL if it lingers.
fn stop(mut child: Child) {
    let _ = run("kill", &["-TERM", &child.id().to_string()]);
    let exited = wait_for(Duration::from_secs(5), "server exit", || {
        child.try_wait().ok().flatten()
    });
    if exited.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn wait_listening(lab: &Lab, node: Node, port: u16) -> Result<()> {
    wait_for(
        Duration::from_secs(20),
        &format!("port {port} listening in {}", node.name()),
        || {
            let out = lab.exec(node, "ss", &["-ltnH"]).ok()?;
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.contains(&format!(":{port} ")))
                .then_some(())
        },
    )?;
    Ok(())
}

fn certs(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../relay/tls/tests/data");
    let cert = data.join("ecdsa.pem");
    let key = data.join("ecdsa.key");
    let combined = dir.join("haproxy.pem");
    let mut pem = std::fs::read_to_string(&cert).context("test certificate")?;
    pem.push_str(&std::fs::read_to_string(&key).context("test key")?);
    write(&combined, &pem)?;
    Ok((cert, key, combined))
}

fn start_backend(lab: &Lab, dir: &Path) -> Result<Child> {
    let root = dir.join("www");
    std::fs::create_dir_all(&root)?;
    std::fs::write(root.join(BIG_FILE), relay_lab::echo::pattern(BIG_BYTES, 42))?;
    write(&root.join(SMALL_FILE), "ok\n")?;
    let conf = dir.join("backend-nginx.conf");
    write(
        &conf,
        &format!(
            "daemon off; master_process off; pid {d}/backend.pid; error_log {d}/backend-error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; sendfile on; keepalive_requests 1000000;\n\
               server {{ listen {ip}:{BACKEND_PORT}; root {root}; }} }}\n",
            d = dir.display(),
            ip = addr::BACKEND,
            root = root.display()
        ),
    )?;
    let child = lab.spawn(
        Node::Backend,
        "nginx",
        &["-c", &conf.to_string_lossy(), "-p", &dir.to_string_lossy()],
    )?;
    wait_listening(lab, Node::Backend, BACKEND_PORT)?;
    Ok(child)
}

fn start_nginx(lab: &Lab, dir: &Path, cert: &Path, key: &Path) -> Result<Child> {
    let conf = dir.join("tls-nginx.conf");
    write(
        &conf,
        &format!(
            "daemon off; master_process off; pid {d}/tls.pid; error_log {d}/tls-error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; keepalive_requests 1000000;\n\
               upstream backend {{ server {b}:{BACKEND_PORT}; keepalive 64; }}\n\
               server {{ listen {vip}:443 ssl; ssl_certificate {cert}; ssl_certificate_key {key};\n\
                 ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m; ssl_session_tickets on;\n\
                 location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
                   proxy_buffering off; }} }} }}\n",
            d = dir.display(),
            b = addr::BACKEND,
            vip = addr::VIP,
            cert = cert.display(),
            key = key.display()
        ),
    )?;
    let child = lab.spawn(
        Node::RelayA,
        "taskset",
        &[
            "-c",
            SERVER_CORE,
            "nginx",
            "-c",
            &conf.to_string_lossy(),
            "-p",
            &dir.to_string_lossy(),
        ],
    )?;
    wait_listening(lab, Node::RelayA, 443)?;
    Ok(child)
}

fn start_haproxy(lab: &Lab, dir: &Path, combined: &Path) -> Result<Child> {
    let conf = dir.join("haproxy.cfg");
    write(
        &conf,
        &format!(
            "global\n  nbthread 1\n  tune.ssl.default-dh-param 2048\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  option http-keep-alive\n\
             frontend tls\n  bind {vip}:443 ssl crt {crt}\n  default_backend web\n\
             backend web\n  http-reuse always\n  server b1 {b}:{BACKEND_PORT}\n",
            vip = addr::VIP,
            crt = combined.display(),
            b = addr::BACKEND
        ),
    )?;
    let child = lab.spawn(
        Node::RelayA,
        "taskset",
        &[
            "-c",
            SERVER_CORE,
            "haproxy",
            "-db",
            "-f",
            &conf.to_string_lossy(),
        ],
    )?;
    wait_listening(lab, Node::RelayA, 443)?;
    Ok(child)
}

fn parse_after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    text.lines().find(|l| l.contains(marker))
}

/// `wrk --latency` prints "     50%    1.23ms"; returns milliseconds.
fn wrk_percentile(text: &str, pct: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.trim_start().starts_with(pct))?;
    let value = line.split_whitespace().nth(1)?;
    let (num, unit) = value.split_at(value.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => return None,
    })
}

fn measure(lab: &Lab, seconds: u32) -> Figures {
    let url_big = format!("https://{}/{BIG_FILE}", addr::VIP);
    let url_small = format!("https://{}/{SMALL_FILE}", addr::VIP);
    let connect = format!("{}:443", addr::VIP);
    let time = seconds.to_string();
    let mut f = Figures::default();

    if let Ok(out) = lab.exec(
        Node::Client,
        "curl",
        &[
            "-k",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{speed_download}",
            &url_big,
        ],
    ) {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut parts = text.split_whitespace();
        if let (Some(size), Some(speed)) = (parts.next(), parts.next())
            && size.parse::<usize>().ok() == Some(BIG_BYTES)
        {
            f.download_mb_s = speed.parse::<f64>().ok().map(|b| b / 1e6);
        }
    }
    // Resumption is measured with TLS 1.2 session IDs: `s_time -reuse`
    // offers one session again and again, and the relay's TLS 1.3 tickets
    // are single use (DESIGN.md section 7), so every reuse after the first
    // would be a full handshake.
    for (flag, version, slot) in [
        ("-new", "-tls1_3", &mut f.full_hs_s),
        ("-reuse", "-tls1_2", &mut f.resumed_hs_s),
    ] {
        if let Ok(out) = lab.exec(
            Node::Client,
            "openssl",
            &[
                "s_time", "-connect", &connect, flag, version, "-time", &time,
            ],
        ) {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            // "1234 connections in 5.01s; 246.31 connections/user sec, ..." then
            // "1234 connections in 6 real seconds, ..."
            *slot = parse_after(&text, "real seconds").and_then(|l| {
                let mut w = l.split_whitespace();
                let n: f64 = w.next()?.parse().ok()?;
                let secs: f64 = w.nth(2)?.parse().ok()?;
                Some(n / secs.max(1.0))
            });
        }
    }
    if let Ok(out) = lab.exec(
        Node::Client,
        "wrk",
        &[
            "-t1",
            "-c1",
            &format!("-d{seconds}s"),
            "--latency",
            &url_small,
        ],
    ) {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        f.p50_ms = wrk_percentile(&text, "50%");
        f.p99_ms = wrk_percentile(&text, "99%");
    }
    f
}

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "failed".to_string(), |v| format!("{v:.digits$}"))
}

/// Runs nginx and haproxy in turn and prints the table.
pub fn run_compare(seconds: u32) -> Result<()> {
    for tool in ["nginx", "haproxy", "wrk", "curl", "openssl", "taskset"] {
        if run("sh", &["-c", &format!("command -v {tool}")]).is_err() {
            bail!("{tool} is not installed: `cargo xtask setup` installs it");
        }
    }
    let lab = Lab::up(&unique_prefix("cmp")).context("lab up (run as root)")?;
    let dir =
        Workdir(std::env::temp_dir().join(format!("relay-tls-compare-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let (cert, key, combined) = certs(&dir.0)?;
    let backend = start_backend(&lab, &dir.0)?;

    println!(
        "TLS termination on one core of relay-a (core {SERVER_CORE}), same backend (nginx, plain HTTP), clients in the client namespace"
    );
    let mut rows: Vec<(&str, Figures)> = Vec::new();
    for name in ["relay", "nginx", "haproxy"] {
        println!("  measuring {name} ({seconds} s per figure)...");
        if name == "relay" {
            let (child, _sock) = start_relay(&lab, &dir.0, &cert, &key)?;
            let mut figures = measure(&lab, seconds);
            figures.kib_per_flow = memory_per_flow(&lab, child.id());
            stop(child);
            // A stopped relay leaves its steer programs attached and
            // dropping what they steer (a dead relay's box must stay quiet
            // about its flows): the peers measured next need them gone.
            for ifname in ["front", "back"] {
                lab.ip(Node::RelayA, &["link", "set", "dev", ifname, "xdp", "off"])
                    .with_context(|| format!("detaching the steer program from {ifname}"))?;
            }
            rows.push((name, figures));
            continue;
        }
        let child = match name {
            "nginx" => start_nginx(&lab, &dir.0, &cert, &key)?,
            _ => start_haproxy(&lab, &dir.0, &combined)?,
        };
        let figures = measure(&lab, seconds);
        stop(child);
        wait_for(Duration::from_secs(10), "port 443 free", || {
            let out = lab.exec(Node::RelayA, "ss", &["-ltnH"]).ok()?;
            (!String::from_utf8_lossy(&out.stdout).contains(":443 ")).then_some(())
        })?;
        rows.push((name, figures));
    }
    stop(backend);

    println!(
        "{:<10} {:>14} {:>14} {:>17} {:>10} {:>10} {:>10}",
        "", "download MB/s", "full 1.3 hs/s", "resumed 1.2 hs/s", "p50 ms", "p99 ms", "KiB/flow"
    );
    for (name, f) in &rows {
        println!(
            "{name:<10} {:>14} {:>14} {:>17} {:>10} {:>10} {:>10}",
            cell(f.download_mb_s, 1),
            cell(f.full_hs_s, 0),
            cell(f.resumed_hs_s, 0),
            cell(f.p50_ms, 3),
            cell(f.p99_ms, 3),
            if *name == "relay" {
                cell(f.kib_per_flow, 1)
            } else {
                "-".to_string()
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_percentiles_parse() {
        let text =
            "  Latency Distribution\n     50%  120.00us\n     75%    1.50ms\n     99%    2.25s\n";
        assert_eq!(wrk_percentile(text, "50%"), Some(0.12));
        assert_eq!(wrk_percentile(text, "99%"), Some(2250.0));
        assert_eq!(wrk_percentile("garbage", "50%"), None);
    }
}
