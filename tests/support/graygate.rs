//! Runs the real graygate server in-process on loopback listeners the test bound.
//!
//! The listeners are bound to `127.0.0.1:0` here and handed to the server through Pingora's
//! upgrade socket (see [`super::handover`]), so no port is released between choosing it and
//! serving on it.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use graygate::server::{App, RunOptions};
use graygate::state::SnapshotStore;
use pingora::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use tokio::sync::watch;

use super::handover::{bind_loopback, Handover};
use super::{answers_http, assert_eventually};

/// Not HTTP: Pingora answers it with a 400 itself, before any graygate phase runs, so a
/// readiness probe on the proxy listener shows up in no metric, access log or backend.
pub const PROXY_PROBE: &[u8] = b"not http\r\n\r\n";

/// The admin listener's liveness endpoint, which counts nothing either.
pub const ADMIN_PROBE: &[u8] =
    b"GET /-/healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

/// Does graygate answer on both its listeners?
pub fn serving(proxy: SocketAddr, admin: SocketAddr) -> bool {
    answers_http(proxy, PROXY_PROBE) && answers_http(admin, ADMIN_PROBE)
}

struct ChannelSignal(watch::Receiver<bool>);

#[async_trait]
impl ShutdownSignalWatch for ChannelSignal {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stop| *stop).await;
        ShutdownSignal::FastShutdown
    }
}

/// A graygate instance serving `rules` on loopback.
pub struct Graygate {
    /// The proxy listener.
    pub proxy: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The rules file the instance watches.
    pub rules_file: PathBuf,
    /// The rules generation store, for assertions and reloads.
    pub store: Arc<SnapshotStore>,
    /// Where the config and rules were written.
    pub dir: tempfile::TempDir,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Graygate {
    /// Writes `rules` to a temporary rules directory and starts graygate on its own ports,
    /// with the admin API disabled.
    pub fn start(rules: &str) -> Graygate {
        Self::start_with_token(rules, None)
    }

    /// Like [`Graygate::start`], with `token` guarding the admin API.
    pub fn start_with_token(rules: &str, token: Option<&str>) -> Graygate {
        Self::start_with(rules, token, "")
    }

    /// Like [`Graygate::start`], with `token` guarding the admin API and `extra_conf`
    /// appended to `conf/graygate.yaml` (for example a `redis:` section; a `state:` section
    /// there replaces the temporary state directory).
    pub fn start_with(rules: &str, token: Option<&str>, extra_conf: &str) -> Graygate {
        let (graygate, _) = Self::start_listeners(
            rules,
            token,
            1,
            |addrs| format!("listen: [\"{}\"]\n", addrs[0]),
            extra_conf,
        );
        graygate
    }

    /// Starts graygate with a plain listener (`Graygate::proxy`) and an HTTPS one serving the
    /// pair `cert`/`key`, whose address is returned.
    pub fn start_https(rules: &str, cert: &Path, key: &Path) -> (Graygate, SocketAddr) {
        let (graygate, addrs) = Self::start_listeners(
            rules,
            None,
            2,
            |a| {
                format!(
                    "listeners:\n  - {{ name: http, listen: \"{}\" }}\n  - {{ name: https, listen: \"{}\", tls: {{ certificates: [{{ cert: {}, key: {} }}] }} }}\n",
                    a[0],
                    a[1],
                    cert.display(),
                    key.display()
                )
            },
            "",
        );
        (graygate, addrs[1])
    }

    /// Starts graygate with `count` proxy listeners, described by the `listeners:` YAML that
    /// `listeners_conf` writes for their addresses (the first must be plain HTTP: readiness
    /// is probed there); `extra_conf` is appended to the config. Returns the addresses too.
    pub fn start_listeners(
        rules: &str,
        token: Option<&str>,
        count: usize,
        listeners_conf: impl FnOnce(&[SocketAddr]) -> String,
        extra_conf: &str,
    ) -> (Graygate, Vec<SocketAddr>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let rules_dir = dir.path().join("rules");
        std::fs::create_dir(&rules_dir).expect("rules dir");
        std::fs::write(rules_dir.join("rules.yaml"), rules).expect("write rules");
        let listeners: Vec<TcpListener> = (0..=count).map(|_| bind_loopback()).collect();
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .map(|l| l.local_addr().expect("listener address"))
            .collect();
        let (proxies, admin) = (&addrs[..count], addrs[count]);
        let proxy = proxies[0];
        // Rollout state in the temporary directory, unless the test names its own.
        let state = if extra_conf.contains("state:") {
            ""
        } else {
            "state: { dir: state }\n"
        };
        let conf = format!(
            "{}{state}admin: {{ listen: \"{admin}\" }}\nrules: rules\nserver:\n  threads: 2\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 1\n  pid_file: graygate.pid\n  upgrade_sock: upgrade.sock\n",
            listeners_conf(proxies)
        );
        let conf_path: PathBuf = dir.path().join("graygate.yaml");
        std::fs::write(&conf_path, conf + extra_conf).expect("write conf");
        let mut app =
            App::load(&conf_path).unwrap_or_else(|d| panic!("config does not load:\n{d}"));
        app.admin_token = token.map(str::to_string);
        let store = Arc::clone(&app.store);
        let (stop, stop_rx) = watch::channel(false);
        // Started first: `App::server` bootstraps, and in upgrade mode the bootstrap waits on
        // `upgrade_sock` for these listeners.
        let handover = Handover::start(
            listeners,
            dir.path().join("upgrade.sock"),
            Duration::from_secs(10),
        );
        let thread = std::thread::spawn(move || {
            let options = RunOptions {
                upgrade: true,
                ..RunOptions::default()
            };
            app.server(options).run(RunArgs {
                shutdown_signal: Box::new(ChannelSignal(stop_rx)),
            });
        });
        let listeners = handover.finish();
        assert_eventually(
            Duration::from_secs(10),
            &format!("graygate serving on {proxy} and {admin}"),
            || serving(proxy, admin),
        );
        // Held until graygate answered: it could not have bound these addresses itself while
        // they were open, so it serves on the sockets it was handed.
        drop(listeners);
        let graygate = Graygate {
            proxy,
            admin,
            rules_file: rules_dir.join("rules.yaml"),
            store,
            dir,
            stop,
            thread: Some(thread),
        };
        (graygate, proxies.to_vec())
    }
}

impl Graygate {
    /// The admin listener's `/metrics` text.
    pub fn scrape(&self) -> String {
        let r = super::get(self.admin, "127.0.0.1", "/metrics", &[]);
        assert_eq!(r.status, 200, "GET /metrics on the admin listener");
        r.body_text()
    }
}

/// The sum of the samples of `name` whose labels include every pair of `labels`, or `None`
/// when no sample matches (Prometheus text format; label values never hold `,` or `"` here).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric_name, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap_or(rest)),
            None => (series, ""),
        };
        if metric_name != name {
            continue;
        }
        let pairs: Vec<(&str, &str)> = label_text
            .split(',')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
            .collect();
        if labels.iter().all(|want| pairs.contains(want)) {
            let v: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad sample value in metrics line {line:?}"));
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

impl Drop for Graygate {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs `graygate SUBCOMMAND ARGS` against the admin API at `admin` (with `token` in
/// `GRAYGATE_ADMIN_TOKEN`, and no config): whether it succeeded, its stdout and its stderr.
pub fn admin_cli(
    admin: SocketAddr,
    token: &str,
    subcommand: &str,
    args: &[&str],
) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_graygate"))
        .arg(subcommand)
        .args(args)
        .args([
            "--admin",
            &format!("http://{admin}"),
            "-c",
            "/nonexistent.yaml",
        ])
        .env("GRAYGATE_ADMIN_TOKEN", token)
        .output()
        .expect("graygate runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
