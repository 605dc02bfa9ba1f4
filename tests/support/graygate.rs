//! Runs the real graygate server in-process on free loopback ports.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use graygate::server::{App, RunOptions};
use graygate::state::SnapshotStore;
use pingora::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use tokio::sync::watch;

use super::{free_port, wait_for_listen};

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
    /// Writes `rules` to a temporary rules directory and starts graygate on free ports,
    /// with the admin API disabled.
    pub fn start(rules: &str) -> Graygate {
        Self::start_with_token(rules, None)
    }

    /// Like [`Graygate::start`], with `token` guarding the admin API.
    pub fn start_with_token(rules: &str, token: Option<&str>) -> Graygate {
        Self::start_with(rules, token, "")
    }

    /// Like [`Graygate::start`], with `token` guarding the admin API and `extra_conf`
    /// appended to `conf/graygate.yaml` (for example a `redis:` section).
    pub fn start_with(rules: &str, token: Option<&str>, extra_conf: &str) -> Graygate {
        let dir = tempfile::tempdir().expect("temp dir");
        let rules_dir = dir.path().join("rules");
        std::fs::create_dir(&rules_dir).expect("rules dir");
        std::fs::write(rules_dir.join("rules.yaml"), rules).expect("write rules");
        let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let conf = format!(
            "listen: [\"{proxy}\"]\nadmin: {{ listen: \"{admin}\" }}\nrules: rules\nserver:\n  threads: 2\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 1\n  pid_file: graygate.pid\n  upgrade_sock: upgrade.sock\n"
        );
        let conf_path: PathBuf = dir.path().join("graygate.yaml");
        std::fs::write(&conf_path, conf + extra_conf).expect("write conf");
        let mut app =
            App::load(&conf_path).unwrap_or_else(|d| panic!("config does not load:\n{d}"));
        app.admin_token = token.map(str::to_string);
        let store = Arc::clone(&app.store);
        let (stop, stop_rx) = watch::channel(false);
        let thread = std::thread::spawn(move || {
            let server = app.server(RunOptions::default());
            server.run(RunArgs {
                shutdown_signal: Box::new(ChannelSignal(stop_rx)),
            });
        });
        wait_for_listen(proxy, Duration::from_secs(10));
        wait_for_listen(admin, Duration::from_secs(10));
        Graygate {
            proxy,
            admin,
            rules_file: rules_dir.join("rules.yaml"),
            store,
            dir,
            stop,
            thread: Some(thread),
        }
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
