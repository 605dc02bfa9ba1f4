//! The `graygate` binary as a process: rules reload on SIGHUP, graceful upgrade (SIGQUIT plus
//! `run -u`) and graceful terminate (SIGTERM).
//!
//! Every test binds its proxy and admin listeners on `127.0.0.1:0`, writes their addresses
//! into its own config and rules in a temporary directory (with its own `pid_file` and
//! `upgrade_sock`), starts `graygate run -u -c CONF` with stdout and stderr going to a log
//! file there, and prints that log when it fails.
//!
//! Every graygate here starts in upgrade mode (`-u`): the first process of a test takes its
//! listeners over from the test itself (`support::handover`, the same SCM_RIGHTS transfer
//! an old process makes on SIGQUIT), so no port is released and bound again; a later process
//! takes them over from the one it replaces.
//!
//! The graceful upgrade works like this (Pingora 0.9, `pingora-core/src/server`):
//!
//! 1. The new process `graygate run -u` binds `upgrade_sock` while it bootstraps (before
//!    any service starts) and polls it for the old process for about 6 s (accept retried
//!    once a second, 5 retries), then exits with status 1 if nothing came.
//! 2. SIGQUIT to the old process: it connects to `upgrade_sock` (retrying once a second, 5
//!    times, if the new process is not there yet) and sends every listening socket (proxy
//!    and admin). Both processes then accept on the same sockets.
//! 3. The old process keeps accepting for a fixed 5 s (Pingora's `CLOSE_TIMEOUT`, not
//!    configurable), then stops accepting, drains for `grace_period_seconds`, gives its
//!    runtimes up to `graceful_shutdown_timeout_seconds` and exits.
//!
//! So the order that works is: start the new process first, wait until `upgrade_sock`
//! exists, then send SIGQUIT to the old one (either order works within the retry windows).

mod support;

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use support::graygate::{ADMIN_PROBE, PROXY_PROBE};
use support::handover::{bind_loopback, Handover};
use support::{answers_http, assert_eventually, get, http_request, Backend, Response};

const TOKEN: &str = "process-test-token";

/// A temporary directory with a config and a rules directory for one graygate.
struct Site {
    dir: tempfile::TempDir,
    conf: PathBuf,
    rules_file: PathBuf,
    proxy: SocketAddr,
    admin: SocketAddr,
    /// The proxy and admin listeners, until [`Site::start`] hands them to graygate.
    listeners: Option<Vec<TcpListener>>,
}

impl Site {
    /// Binds the listeners and writes `rules/rules.yaml` and `graygate.yaml` with their
    /// addresses and the given drain times.
    fn new(rules: &str, grace_period_seconds: u64, graceful_shutdown_timeout_seconds: u64) -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        let rules_dir = dir.path().join("rules");
        std::fs::create_dir(&rules_dir).expect("rules dir");
        let rules_file = rules_dir.join("rules.yaml");
        std::fs::write(&rules_file, rules).expect("write rules");
        let listeners = vec![bind_loopback(), bind_loopback()];
        let addr = |l: &TcpListener| l.local_addr().expect("listener address");
        let (proxy, admin) = (addr(&listeners[0]), addr(&listeners[1]));
        let conf = dir.path().join("graygate.yaml");
        let text = format!(
            "listen: [\"{proxy}\"]\n\
             admin:\n  listen: \"{admin}\"\n  token_env: GRAYGATE_ADMIN_TOKEN\n\
             rules: rules\n\
             server:\n  threads: 2\n\
             \x20 grace_period_seconds: {grace_period_seconds}\n\
             \x20 graceful_shutdown_timeout_seconds: {graceful_shutdown_timeout_seconds}\n\
             \x20 pid_file: graygate.pid\n  upgrade_sock: upgrade.sock\n"
        );
        // Pingora writes `pid_file` only with `-d` (daemon); set here so nothing lands in the
        // working directory of the test run.
        std::fs::write(&conf, text).expect("write conf");
        Site {
            dir,
            conf,
            rules_file,
            proxy,
            admin,
            listeners: Some(listeners),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Moves the rules file to `store/rules.yaml` and leaves a symlink to it in its place;
    /// returns the new location.
    fn link_rules_elsewhere(&self) -> PathBuf {
        let store = self.path("store");
        std::fs::create_dir(&store).expect("store dir");
        let target = store.join("rules.yaml");
        std::fs::rename(&self.rules_file, &target).expect("move rules to store/");
        std::os::unix::fs::symlink("../store/rules.yaml", &self.rules_file)
            .expect("symlink rules/rules.yaml -> ../store/rules.yaml");
        target
    }

    /// Starts the site's first graygate, hands it the listeners bound in [`Site::new`] and
    /// waits until it serves on them.
    fn start(&mut self, name: &str) -> Proc {
        let listeners = self
            .listeners
            .take()
            .expect("the site's listeners were handed over already");
        let handover = Handover::start(
            listeners,
            self.path("upgrade.sock"),
            Duration::from_secs(15),
        );
        let mut proc = self.spawn(name);
        // The send gives up by itself (about 20 s at most); a process that exits ends the wait.
        assert_eventually(
            Duration::from_secs(30),
            &format!("{name} to take its listeners over"),
            || {
                assert!(
                    proc.exit_status().is_none(),
                    "{name} exited before it took its listeners over"
                );
                handover.is_finished()
            },
        );
        let listeners = handover.finish();
        self.wait_ready(&mut proc);
        // Held until graygate answered: it could not have bound these addresses itself while
        // they were open, so it serves on the sockets it was handed.
        drop(listeners);
        proc
    }

    /// Starts `graygate run -u -c CONF`, which takes its listeners over on `upgrade_sock`
    /// (from the test, see [`Site::start`], or from the process it replaces); output goes to
    /// `NAME.log`.
    fn spawn(&self, name: &str) -> Proc {
        let log = self.path(&format!("{name}.log"));
        let out = File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        let child = Command::new(env!("CARGO_BIN_EXE_graygate"))
            .arg("run")
            .arg("-u")
            .arg("-c")
            .arg(&self.conf)
            .current_dir(self.dir.path())
            .env("GRAYGATE_ADMIN_TOKEN", TOKEN)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn graygate");
        Proc {
            name: name.to_string(),
            child,
            log,
            exited: None,
        }
    }

    /// Waits until graygate answers on the proxy and the admin listener (a connect alone
    /// would succeed on the test's own listening sockets before graygate runs).
    fn wait_ready(&self, proc: &mut Proc) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let name = proc.name.clone();
        for (addr, probe) in [(self.proxy, PROXY_PROBE), (self.admin, ADMIN_PROBE)] {
            assert_eventually(
                deadline.saturating_duration_since(Instant::now()),
                &format!("{name} answering on {addr}"),
                || {
                    assert!(
                        proc.exit_status().is_none(),
                        "{name} exited during start-up"
                    );
                    answers_http(addr, probe)
                },
            );
        }
    }

    fn get(&self, path: &str) -> Response {
        get(self.proxy, "www.example.com", path, &[])
    }

    /// `GET /-/rules` with the token: the generation now serving.
    fn generation(&self) -> u64 {
        let auth = format!("Bearer {TOKEN}");
        let r = get(
            self.admin,
            "localhost",
            "/-/rules",
            &[("Authorization", auth.as_bytes())],
        );
        assert_eq!(r.status, 200, "GET /-/rules: {}", r.body_text());
        let json: serde_json::Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("GET /-/rules is not JSON ({e}): {}", r.body_text()));
        json["generation"]
            .as_u64()
            .unwrap_or_else(|| panic!("GET /-/rules has no numeric generation: {json}"))
    }

    /// `graygate_rules_reload_total{result="<result>"}` from `GET /metrics` (0 when absent).
    fn reloads(&self, result: &str) -> u64 {
        let r = get(self.admin, "localhost", "/metrics", &[]);
        assert_eq!(r.status, 200, "GET /metrics");
        let series = format!("graygate_rules_reload_total{{result=\"{result}\"}} ");
        r.body_text()
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .map(|v| {
                let v = v.trim();
                v.parse::<f64>()
                    .unwrap_or_else(|e| panic!("{series}{v}: not a number ({e})"))
                    as u64
            })
            .unwrap_or(0)
    }
}

/// A graygate child process; SIGKILLed and reaped on drop, and its log printed when the
/// test is failing.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` ("QUIT", "TERM", "HUP", ...) with `kill`.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -{signal} {} ({}) failed",
            self.pid(),
            self.name
        );
    }

    /// The exit status once the process has exited, `None` while it runs.
    fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited
    }

    /// Waits up to `timeout` for the process to exit.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("<no log: {e}>"))
    }

    /// Waits up to `timeout` for `needle` in the log.
    fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let name = self.name.clone();
        assert_eventually(timeout, &format!("{name} logging {needle:?}"), || {
            self.log().contains(needle)
        });
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "----- {} (pid {}) log {} -----\n{}----- end of {} log -----",
                self.name,
                self.pid(),
                self.log.display(),
                self.log(),
                self.name
            );
        }
    }
}

/// Replaces `path` atomically (written next to it, renamed over it), so a reload can never
/// read a half-written file.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.new");
    std::fs::write(&tmp, text).expect("write new file");
    std::fs::rename(&tmp, path).expect("rename new file into place");
}

/// Two versions with one backend each; everyone gets `default`.
fn rules(default: &str, stable: &Backend, canary: &Backend) -> String {
    format!(
        "versions:\n  stable: {{}}\n  canary: {{}}\n\
         default: {default}\n\
         services:\n  web:\n    hosts: [\"*\"]\n    path_prefix: /\n    groups:\n\
         \x20     stable: {{ peers: [\"{}\"] }}\n\
         \x20     canary: {{ peers: [\"{}\"] }}\n",
        stable.addr(),
        canary.addr()
    )
}

fn assert_backend(r: &Response, backend: &str, what: &str) {
    assert_eq!(
        (r.status, r.body_text().as_str()),
        (200, backend),
        "{what}: expected 200 from {backend}, got {} {:?}",
        r.status,
        r.body_text()
    );
}

#[test]
fn sighup_reloads_the_rules() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let mut site = Site::new(&rules("stable", &stable, &canary), 0, 1);
    // rules/rules.yaml is a symlink into another directory, and the edits are made there:
    // the file watch (on the rules directory) does not see them, so SIGHUP has to.
    let target = site.link_rules_elsewhere();
    let mut gg = site.start("graygate");

    assert_backend(&site.get("/"), "stable", "before the change");
    assert_eq!(site.generation(), 1, "generation at start");

    // Send everyone to canary.
    replace_file(&target, &rules("canary", &stable, &canary));
    let hup = Instant::now();
    gg.signal("HUP");
    assert_eventually(
        Duration::from_secs(5),
        "generation 2 after the change and SIGHUP",
        || site.generation() >= 2,
    );
    let applied_after = hup.elapsed();
    assert_eq!(site.generation(), 2, "one change is one generation");
    assert_backend(&site.get("/"), "canary", "after the change");
    // The log line is written just after the swap.
    let mut trigger = None;
    assert_eventually(
        Duration::from_secs(2),
        "a log line naming the trigger of generation 2",
        || {
            let log = gg.log();
            trigger = if log.contains("rules reloaded (SIGHUP): generation 2") {
                Some("SIGHUP")
            } else if log.contains("rules reloaded (file change): generation 2") {
                Some("file change")
            } else {
                None
            };
            trigger.is_some()
        },
    );
    let trigger = trigger.unwrap_or_default();
    eprintln!("sighup: generation 2 applied by {trigger} {applied_after:?} after SIGHUP");

    // The reload counter is bumped just after the swap: let it catch up before reading it.
    assert_eventually(
        Duration::from_secs(5),
        "graygate_rules_reload_total{result=\"ok\"} to count the reload",
        || site.reloads("ok") >= 1,
    );
    thread::sleep(Duration::from_millis(300));
    let ok_before = site.reloads("ok");
    let errors_before = site.reloads("error");

    // SIGHUP without a change: the reload runs (counted as ok) but is no new generation.
    gg.signal("HUP");
    assert_eventually(
        Duration::from_secs(5),
        "graygate_rules_reload_total{result=\"ok\"} to count the second SIGHUP",
        || site.reloads("ok") > ok_before,
    );
    assert_eq!(
        site.generation(),
        2,
        "unchanged files are no new generation"
    );
    assert_eq!(site.reloads("error"), errors_before, "no failed reload");
    assert_backend(&site.get("/"), "canary", "after SIGHUP on unchanged files");
    assert!(
        gg.exit_status().is_none(),
        "graygate exited after SIGHUP: {:?}",
        gg.exit_status()
    );
    assert_eventually(
        Duration::from_secs(2),
        "the log to name the unchanged SIGHUP reload",
        || {
            gg.log()
                .contains("rules reload (SIGHUP): files unchanged, generation 2 keeps serving")
        },
    );
}

/// One request of the load during the upgrade.
struct Sample {
    /// When the request was started.
    sent: Instant,
    result: io::Result<Response>,
}

/// Sends sequential `GET /` requests (a new connection each, `Connection: close`) until
/// stopped (or for at most 40 s), recording every result.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
}

impl Load {
    fn start(proxy: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(40);
            let mut samples = Vec::new();
            while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
                let sent = Instant::now();
                let result = http_request(
                    proxy,
                    b"GET / HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n",
                );
                samples.push(Sample { sent, result });
                thread::sleep(Duration::from_millis(2));
            }
            samples
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("load thread")
            .join()
            .expect("load thread panicked")
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn graceful_upgrade_hands_over_without_failed_requests() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let mut site = Site::new(&rules("stable", &stable, &canary), 1, 1);
    let upgrade_sock = site.path("upgrade.sock");

    let mut old = site.start("old");
    assert_backend(&site.get("/"), "stable", "old process");

    let start = Instant::now();
    let load = Load::start(site.proxy);
    thread::sleep(Duration::from_millis(300));

    // The new process waits on upgrade_sock during bootstrap; only then ask the old one.
    let mut new = site.spawn("new");
    assert_eventually(
        Duration::from_secs(5),
        "the new process to bind upgrade_sock",
        || {
            assert!(
                new.exit_status().is_none(),
                "the new process exited before the hand-over"
            );
            upgrade_sock.exists()
        },
    );
    let quit = Instant::now();
    old.signal("QUIT");
    new.wait_for_log("Bootstrap done", Duration::from_secs(10));
    let handed_over = quit.elapsed();

    let old_status = old.wait_exit(Duration::from_secs(15));
    let old_exit = quit.elapsed();
    assert!(
        old_status.is_some(),
        "the old process did not exit within 15 s of SIGQUIT"
    );
    let old_exited_at = Instant::now();
    thread::sleep(Duration::from_secs(1));
    let samples = load.finish();

    // Classify every failure: refused (nobody listening), another I/O error (reset, timeout,
    // closed early) or a wrong answer.
    let (mut refused, mut io_errors, mut bad_answers) = (0, 0, 0);
    let failures: Vec<String> = samples
        .iter()
        .filter_map(|s| {
            let when = match s.sent.checked_duration_since(quit) {
                Some(d) => format!("sent {} ms after SIGQUIT", d.as_millis()),
                None => format!("sent {} ms before SIGQUIT", (quit - s.sent).as_millis()),
            };
            match &s.result {
                Ok(r) if r.status == 200 && r.body_text() == "stable" => None,
                Ok(r) => {
                    bad_answers += 1;
                    Some(format!("{when}: answered {} {:?}", r.status, r.body_text()))
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    refused += 1;
                    Some(format!("{when}: connection refused ({e})"))
                }
                Err(e) => {
                    io_errors += 1;
                    Some(format!("{when}: {:?} error: {e}", e.kind()))
                }
            }
        })
        .collect();
    let after_quit = samples.iter().filter(|s| s.sent > quit).count();
    let after_old_exit = samples.iter().filter(|s| s.sent > old_exited_at).count();
    eprintln!(
        "upgrade: {} requests ({after_quit} sent after SIGQUIT, {after_old_exit} after the old \
         process exited); hand-over logged {handed_over:?} and old exit {old_exit:?} after \
         SIGQUIT ({:?}); total {:?}",
        samples.len(),
        old_status,
        start.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the upgrade ({refused} connection refused, \
         {io_errors} other I/O errors, {bad_answers} wrong answers); the first 20:\n{}",
        failures.len(),
        samples.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        after_old_exit >= 10,
        "only {after_old_exit} requests after the old process exited"
    );
    assert!(
        new.exit_status().is_none(),
        "the new process exited: {:?}",
        new.exit_status()
    );
    assert_backend(&site.get("/"), "stable", "the new process alone");
    let health = get(site.admin, "localhost", "/-/healthz", &[]);
    assert_eq!(health.status, 200, "admin listener handed over too");
    assert!(
        old.log().contains("listener sockets sent"),
        "the old process logs the hand-over"
    );
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let (grace, shutdown_timeout) = (3, 2);
    let mut site = Site::new(&rules("stable", &stable, &canary), grace, shutdown_timeout);
    let mut gg = site.start("graygate");
    assert_backend(&site.get("/"), "stable", "before SIGTERM");

    stable.set_delay(Duration::from_millis(1500));
    let seen = stable.requests();
    let proxy = site.proxy;
    let started = Instant::now();
    let in_flight = thread::spawn(move || {
        let r = http_request(
            proxy,
            b"GET /slow HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n",
        );
        (r, started.elapsed())
    });
    assert_eventually(
        Duration::from_secs(5),
        "the slow request to reach the backend",
        || stable.requests() > seen,
    );
    thread::sleep(Duration::from_millis(300));
    let term = Instant::now();
    gg.signal("TERM");

    let (result, took) = in_flight.join().expect("request thread");
    let r = result.unwrap_or_else(|e| {
        panic!(
            "the in-flight request failed after SIGTERM ({:?}): {e}",
            e.kind()
        )
    });
    assert_backend(&r, "stable", "the in-flight request");
    assert!(
        took >= Duration::from_millis(1400),
        "the request was not slow ({took:?})"
    );

    let limit = Duration::from_secs(grace + shutdown_timeout + 3);
    let status = gg.wait_exit(limit);
    let exited_after = term.elapsed();
    let status = status.unwrap_or_else(|| panic!("graygate still running {limit:?} after SIGTERM"));
    eprintln!("sigterm: request took {took:?}; exit {status} {exited_after:?} after SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[test]
fn sigterm_loses_no_access_log_line() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let mut site = Site::new(&rules("stable", &stable, &canary), 0, 1);
    let mut gg = site.start("graygate");
    // The access log writes at least every second; lines of the last second before SIGTERM
    // are written by the flush after Pingora's shutdown.
    let count = 300;
    for i in 0..count {
        let r = get(site.proxy, "www.example.com", &format!("/line-{i}"), &[]);
        assert_eq!(r.status, 200);
    }
    gg.signal("TERM");
    let status = gg
        .wait_exit(Duration::from_secs(10))
        .expect("graygate still running 10 s after SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let log = gg.log();
    let lines = log
        .lines()
        .filter(|l| l.contains(" INFO  graygate::access] ") && l.contains("/line-"))
        .count();
    assert_eq!(lines, count, "access log lines after SIGTERM\n{log}");
    assert!(
        log.contains(&format!("GET www.example.com/line-{} 200 ", count - 1)),
        "the last line, in the text format"
    );
}
