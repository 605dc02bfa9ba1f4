//! A real gRPC server and client: Python grpcio with generic handlers (`tests/grpc/*.py`),
//! run from the venv `scripts/install-deps.sh test` makes.
//!
//! [`GrpcServer::start`] runs `server.py NAME`, which binds `127.0.0.1:0` and prints its
//! port; the process is killed and reaped on drop (and exits by itself when its standard
//! input, held here, closes). [`call`] runs `client.py` once and parses the JSON it prints:
//! the status code, `grpc-message`, the messages and the trailing metadata.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The venv's interpreter: `GRAYGATE_GRPC_PYTHON`, else
/// `${XDG_CACHE_HOME:-$HOME/.cache}/graygate/grpc-venv/bin/python`, when it exists.
pub fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GRAYGATE_GRPC_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let python = cache.join("graygate/grpc-venv/bin/python");
    python.exists().then_some(python)
}

/// The interpreter, or `None` with a note when the venv is missing outside CI. Under CI
/// (`CI` set, where `make test` has just run `install-deps.sh test`) a missing venv fails.
pub fn python_or_skip() -> Option<PathBuf> {
    let found = python();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the grpcio venv is missing although scripts/install-deps.sh test ran"
        );
        eprintln!("SKIPPED: no grpcio venv (scripts/install-deps.sh test makes it)");
    }
    found
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/grpc")
        .join(name)
}

/// A running `server.py`.
pub struct GrpcServer {
    addr: SocketAddr,
    child: Child,
    /// Held so the server lives; closed on drop.
    stdin: Option<ChildStdin>,
}

impl GrpcServer {
    /// Starts a server that names itself `name` in its answers; panics if it does not print
    /// its port within 30 s.
    pub fn start(python: &PathBuf, name: &str) -> GrpcServer {
        let mut child = Command::new(python)
            .arg(script("server.py"))
            .arg(name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("server stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let port = line
            .strip_prefix("PORT ")
            .and_then(|p| p.trim().parse::<u16>().ok());
        let Some(port) = port else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gRPC server {name} printed no port: {line:?}");
        };
        GrpcServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            stdin,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one call answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcAnswer {
    /// The status code's name: `OK`, `PERMISSION_DENIED`, `UNAVAILABLE`...
    pub code: String,
    /// `grpc-message`, decoded.
    pub details: String,
    /// The response messages, as text.
    pub messages: Vec<String>,
    /// Trailing metadata with text values.
    pub trailing: serde_json::Map<String, serde_json::Value>,
}

impl GrpcAnswer {
    /// A trailing metadata value.
    pub fn trailer(&self, key: &str) -> Option<&str> {
        self.trailing.get(key).and_then(|v| v.as_str())
    }
}

/// Calls `/graygate.test.Echo/{method}` on `target` over h2c with `request` and `metadata`.
pub fn call(
    python: &PathBuf,
    target: SocketAddr,
    method: &str,
    request: &str,
    metadata: &[(&str, &str)],
) -> GrpcAnswer {
    let mut cmd = Command::new(python);
    cmd.arg(script("client.py"))
        .arg(target.to_string())
        .arg(method)
        .arg(request);
    for (k, v) in metadata {
        cmd.arg(format!("{k}={v}"));
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run the gRPC client: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gRPC client failed ({}): {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("gRPC client printed no JSON ({e}): {text}"));
    let text_of = |key: &str| v[key].as_str().unwrap_or_default().to_string();
    GrpcAnswer {
        code: text_of("code"),
        details: text_of("details"),
        messages: v["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|s| s.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default(),
        trailing: v["trailing"].as_object().cloned().unwrap_or_default(),
    }
}
