//! The `relay` binary end to end: `run --check` on files, and the client
//! commands against a control server in this process.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use relay_app::control::{
    BackendLine, ControlHandler, ControlServer, FlowLine, PeersReply, RelayState, ReloadReply,
    StatusReply,
};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("relay-app-cli-{}-{name}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn relay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A configuration whose certificate files live in `dir`.
fn write_config(dir: &TempDir, extra: &str) -> PathBuf {
    let cert = dir.join("web.crt");
    let key = dir.join("web.key");
    fs::write(&cert, "-----BEGIN CERTIFICATE-----\n").unwrap();
    fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
    let config = format!(
        r#"name = "relay-a"
admin_addr = "127.0.0.1:9100"
control_socket = "{control}"
{extra}
[front]
interface = "front"

[back]
interface = "back"
address = "10.200.2.100"
ports = "40000-49999"

[[service]]
name = "web"
vip = "10.200.1.100"
backends = ["10.200.2.10:8080"]
[[service.certificate]]
cert = "{cert}"
key = "{key}"
"#,
        control = dir.join("relay.sock").display(),
        cert = cert.display(),
        key = key.display(),
    );
    let path = dir.join("relay.toml");
    fs::write(&path, config).unwrap();
    path
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn check_accepts_a_good_config() {
    let dir = TempDir::new("good");
    let config = write_config(&dir, "");
    let out = relay(&["run", "--config", path_str(&config), "--check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("config OK: relay \"relay-a\": 1 service"),
        "{stdout}"
    );
    assert!(stdout.contains("relay.sock"), "{stdout}");
}

#[test]
fn check_names_the_line_or_field() {
    let dir = TempDir::new("bad");
    let config = write_config(&dir, "colour = \"blue\"");
    let out = relay(&["run", "--config", path_str(&config), "--check"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("relay.toml:4:"), "{stderr}");
    assert!(stderr.contains("colour"), "{stderr}");

    let config = write_config(&dir, "");
    fs::remove_file(dir.join("web.key")).unwrap();
    let out = relay(&["run", "--config", path_str(&config), "--check"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("service[0].certificate[0].key"), "{stderr}");

    let out = relay(&["run", "--config", path_str(&dir.join("missing.toml"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("missing.toml"));
}

#[test]
fn run_with_a_bad_certificate_names_the_service_and_file() {
    // The files exist (so --check passes them) but hold no PEM: `run`
    // refuses before touching any interface, naming what is wrong.
    let dir = TempDir::new("run");
    let config = write_config(&dir, "");
    let out = relay(&["run", "--config", path_str(&config)]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("service[0] (web)"), "{stderr}");
    assert!(stderr.contains("web.crt"), "{stderr}");
}

#[test]
fn client_commands_without_a_relay_fail_clearly() {
    let dir = TempDir::new("none");
    let socket = dir.join("relay.sock");
    for cmd in ["status", "flows", "peers", "drain", "reload"] {
        let out = relay(&[cmd, "--control", path_str(&socket)]);
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "no relay is running at {}: not found",
                socket.display()
            )),
            "{stderr}"
        );
    }
}

struct Fake;

impl ControlHandler for Fake {
    fn status(&self) -> StatusReply {
        StatusReply {
            version: "0.1.0".into(),
            uptime_secs: 61,
            state: RelayState::Running,
            flows_active: 1,
            flows_limit: 10,
            flows_opened: 5,
            handshakes_full: 4,
            handshakes_resumed: 1,
            handshakes_failed: 0,
            bytes_up: 10,
            bytes_down: 20,
            workers: 1,
            backends: vec![BackendLine {
                service: "web".into(),
                addr: "10.200.2.10:8080".parse().unwrap(),
                health: "up".into(),
                active_flows: 1,
            }],
            xdp_mode: "driver".into(),
        }
    }
    fn flows(&self) -> Vec<FlowLine> {
        vec![FlowLine {
            id: 1,
            client: "10.200.1.2:50000".parse().unwrap(),
            backend: Some("10.200.2.10:8080".parse().unwrap()),
            state: "established".into(),
            bytes_up: 10,
            bytes_down: 20,
            age_secs: 3,
            tls: "TLS1.3 AES_128_GCM_SHA256".into(),
        }]
    }
    fn peers(&self) -> Result<PeersReply, String> {
        // A relay alone (no [cluster]).
        Ok(PeersReply {
            clustered: false,
            relay: "relay-a".into(),
            relay_id: None,
            peers: Vec::new(),
        })
    }
    fn drain(&self) -> Result<String, String> {
        Ok("draining: 1 flow left".into())
    }
    fn reload(&self) -> Result<ReloadReply, String> {
        Err("service[0].certificate[0].cert: no such file".into())
    }
}

#[test]
fn client_commands_talk_to_the_relay() {
    let dir = TempDir::new("live");
    let socket = dir.join("relay.sock");
    let mut server = ControlServer::bind(&socket).unwrap();
    server.serve(Arc::new(Fake)).unwrap();
    let s = path_str(&socket);

    let out = relay(&["status", "--control", s]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("state       running\n"), "{stdout}");
    assert!(stdout.contains("web      10.200.2.10:8080  up"), "{stdout}");

    let out = relay(&["--control", s, "status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["status"]["flows_limit"], 10);

    let out = relay(&["flows", "--control", s]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("10.200.1.2:50000 -> 10.200.2.10:8080  established"),
        "{stdout}"
    );
    let out = relay(&["flows", "--json", "--control", s]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["flows"][0]["id"], 1);

    let out = relay(&["peers", "--control", s]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "relay-a has no [cluster] section: no peers (every commit is local)\n"
    );
    let out = relay(&["peers", "--json", "--control", s]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cluster"]["clustered"], false);
    assert_eq!(v["cluster"]["peers"], serde_json::json!([]));

    let out = relay(&["drain", "--control", s]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "draining: 1 flow left\n");

    let out = relay(&["reload", "--control", s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("the relay refused: service[0].certificate[0].cert"),
        "{}",
        text(&out.stderr)
    );
}
