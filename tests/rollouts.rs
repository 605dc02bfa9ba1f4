//! Rollouts end to end (SPEC section 12): real backends, real graygate, real traffic.
//!
//! A canary that starts failing (5xx, or slow by 200 ms) at step 2 is rolled back within
//! `interval` × `failure_limit` + 1 s and no user but an internal one gets it afterwards; a
//! healthy canary walks every step; a restart resumes the step; operators steer it through the
//! API and the CLI; an unreadable state file restarts the rollouts paused.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::graygate::{admin_cli, metric, Graygate};
use support::{assert_eventually, get, http_request, Backend};

const TOKEN: &str = "rollout-test-token";

/// Rules with the rollout `ramp` (canary against stable) and a rule that always sends
/// `X-Canary: 1` to canary, so that withdrawal from another rule shows.
fn rules(stable: &Backend, canary: &Backend, steps: &str, step_duration: &str) -> String {
    format!(
        "versions: {{ stable: {{}}, canary: {{}} }}\n\
         default: stable\n\
         identity:\n  uid: [header:X-User-Id]\n  internal: {{ uids: [staff-1] }}\n\
         services:\n  web:\n    hosts: [\"*\"]\n    groups:\n      stable: {{ peers: [\"{}\"] }}\n      canary: {{ peers: [\"{}\"] }}\n\
         rollouts:\n  ramp:\n    version: canary\n    steps: {steps}\n    step_duration: {step_duration}\n\
         \x20   analysis: {{ interval: 1s, window: 3s, min_requests: 10, failure_limit: 2, max_error_rate: {{ ratio: 2, margin: 0.05 }}, max_p99_latency: {{ ratio: 2, margin: 100ms }} }}\n\
         rules:\n  - {{ name: pinned, when: {{ header: {{ X-Canary: \"1\" }} }}, version: canary }}\n  - {{ name: ramp-rule, rollout: ramp }}\n",
        stable.addr(),
        canary.addr()
    )
}

fn admin(graygate: &Graygate, method: &str, path: &str) -> (u16, Value) {
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let response = http_request(graygate.admin, raw.as_bytes()).expect("admin answers");
    let value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    (response.status, value)
}

/// The rollout `ramp` as `GET /-/rollouts` shows it.
fn ramp(graygate: &Graygate) -> Value {
    let (status, value) = admin(graygate, "GET", "/-/rollouts");
    assert_eq!(status, 200, "{value}");
    value["rollouts"]
        .as_array()
        .and_then(|all| all.iter().find(|r| r["name"] == "ramp").cloned())
        .unwrap_or_else(|| panic!("no rollout ramp in {value}"))
}

/// One request for `uid` through the rollout rule: the backend that answered and the status.
fn request(proxy: SocketAddr, uid: &str, extra: &[(&str, &[u8])]) -> (String, u16) {
    let mut headers: Vec<(&str, &[u8])> = vec![("X-User-Id", uid.as_bytes())];
    headers.extend_from_slice(extra);
    let response = get(proxy, "shop.example", "/", &headers);
    (
        response.header("X-Backend").unwrap_or_default(),
        response.status,
    )
}

/// Steady traffic from many uids on two threads until stopped; every answer is recorded
/// with the instant it arrived.
struct Load {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<(Instant, String, u16)>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(proxy: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicUsize::new(0));
        let threads = (0..3)
            .map(|_| {
                let (stop, answers, next) = (stop.clone(), answers.clone(), next.clone());
                thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let uid = format!("user-{}", next.fetch_add(1, Ordering::Relaxed) % 500);
                        let (backend, status) = request(proxy, &uid, &[]);
                        answers
                            .lock()
                            .unwrap()
                            .push((Instant::now(), backend, status));
                    }
                })
            })
            .collect();
        Load {
            stop,
            answers,
            threads,
        }
    }

    fn stop(self) -> Vec<(Instant, String, u16)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a load thread");
        }
        Arc::try_unwrap(self.answers)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_default()
    }
}

/// The canary breaks (by `break_it`) at step 2: it is rolled back within interval ×
/// failure_limit + 1 s (3 s), then no non-internal user gets it, from any rule.
fn broken_canary_is_rolled_back(break_it: impl FnOnce(&Backend), what: &str) {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let graygate = Graygate::start_with(
        &rules(&stable, &canary, "[20, 50, 100]", "2s"),
        Some(TOKEN),
        "",
    );
    let load = Load::start(graygate.proxy);
    assert_eventually(Duration::from_secs(20), "step 2 (50%)", || {
        ramp(&graygate)["weight"] == 50
    });
    break_it(&canary);
    let broke = Instant::now();
    assert_eventually(Duration::from_secs(10), "rolled back", || {
        ramp(&graygate)["state"] == "rolled_back"
    });
    let rolled_back_after = broke.elapsed();
    // Served traffic for a while after the verdict.
    thread::sleep(Duration::from_millis(1500));
    let answers = load.stop();
    let last_canary = answers
        .iter()
        .filter(|(_, backend, _)| backend == "canary")
        .map(|(at, _, _)| *at)
        .max()
        .expect("the canary served before it broke");
    let canary_gone_after = last_canary.saturating_duration_since(broke);
    eprintln!(
        "{what}: rolled back {rolled_back_after:?} after the break; last canary response {canary_gone_after:?} after it; {} requests",
        answers.len()
    );
    assert!(
        rolled_back_after <= Duration::from_secs(3) + Duration::from_millis(1000),
        "{what}: rolled back after {rolled_back_after:?}, more than interval × failure_limit + 1 s"
    );
    assert!(
        canary_gone_after <= Duration::from_secs(4),
        "{what}: the canary still answered {canary_gone_after:?} after it broke"
    );
    // Every answer since the canary left came from stable, successfully: the transition
    // failed no request.
    let after: Vec<_> = answers
        .iter()
        .filter(|(at, _, _)| *at > last_canary)
        .collect();
    assert!(
        after.len() > 20,
        "traffic after the rollback: {}",
        after.len()
    );
    assert!(
        after.iter().all(|(_, b, s)| b == "stable" && *s == 200),
        "{what}: answers after the rollback: {:?}",
        after
            .iter()
            .filter(|(_, b, s)| b != "stable" || *s != 200)
            .take(5)
            .collect::<Vec<_>>()
    );
    // Withdrawn from every rule: the pinned rule's users get stable, internal users canary.
    assert_eq!(
        request(graygate.proxy, "user-1", &[("X-Canary", b"1")]).0,
        "stable"
    );
    if !canary.is_stopped() {
        assert_eq!(
            request(graygate.proxy, "staff-1", &[("X-Canary", b"1")]).0,
            "canary"
        );
    }
    let metrics = graygate.scrape();
    assert_eq!(
        metric(
            &metrics,
            "graygate_rollout_state",
            &[("rollout", "ramp"), ("state", "rolled_back")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "graygate_rollout_weight", &[("rollout", "ramp")]),
        Some(0.0)
    );
    assert!(
        metric(
            &metrics,
            "graygate_rollout_checks_total",
            &[("rollout", "ramp"), ("result", "fail")]
        )
        .unwrap_or(0.0)
            >= 2.0
    );
    assert!(
        metric(
            &metrics,
            "graygate_fallbacks_total",
            &[("reason", "withdrawn")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    // The events name the failed checks and their figures.
    let (status, events) = admin(&graygate, "GET", "/-/rollouts/ramp/events");
    assert_eq!(status, 200);
    let last = events["events"]
        .as_array()
        .and_then(|e| e.last())
        .cloned()
        .unwrap();
    assert_eq!(last["to"], "rolled_back");
    assert_eq!(last["check"]["result"], "fail", "{last}");
}

#[test]
fn a_canary_failing_with_5xx_at_step_2_is_rolled_back_and_withdrawn() {
    broken_canary_is_rolled_back(|canary| canary.set_status(500), "5xx");
}

#[test]
fn a_canary_slow_by_200ms_at_step_2_is_rolled_back_and_withdrawn() {
    broken_canary_is_rolled_back(
        |canary| canary.set_delay(Duration::from_millis(200)),
        "slow",
    );
}

#[test]
fn a_canary_whose_backend_dies_at_step_2_is_rolled_back_though_stable_answered_for_it() {
    // Its users are served by stable (a `connect` fallback), but the canary's arm counts them
    // as failed: the version could not serve.
    broken_canary_is_rolled_back(|canary| canary.stop(), "dead");
}

#[test]
fn a_healthy_canary_walks_every_step_to_completed() {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let graygate = Graygate::start_with(
        &rules(&stable, &canary, "[20, 50, 100]", "2s"),
        Some(TOKEN),
        "",
    );
    let load = Load::start(graygate.proxy);
    assert_eventually(Duration::from_secs(30), "completed", || {
        ramp(&graygate)["state"] == "completed"
    });
    let answers = load.stop();
    assert!(answers.iter().all(|(_, _, s)| *s == 200));
    let rollout = ramp(&graygate);
    assert_eq!(rollout["weight"], 100);
    let (_, events) = admin(&graygate, "GET", "/-/rollouts/ramp/events");
    let steps: Vec<(String, u64)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["to"].as_str().unwrap().to_string(),
                e["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        vec![
            ("progressing".into(), 20),
            ("progressing".into(), 50),
            ("completed".into(), 100)
        ]
    );
    // At 100 every user of the rule gets canary.
    assert_eq!(request(graygate.proxy, "someone", &[]).0, "canary");
}

#[test]
fn an_idle_canary_is_not_judged_and_does_not_advance() {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let graygate = Graygate::start_with(
        &rules(&stable, &canary, "[20, 50, 100]", "1s"),
        Some(TOKEN),
        "",
    );
    thread::sleep(Duration::from_secs(3));
    let rollout = ramp(&graygate);
    assert_eq!(
        (rollout["state"].clone(), rollout["step"].clone()),
        ("progressing".into(), 1.into())
    );
    let metrics = graygate.scrape();
    assert!(
        metric(
            &metrics,
            "graygate_rollout_checks_total",
            &[("rollout", "ramp"), ("result", "inconclusive")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "graygate_rollout_checks_total",
            &[("rollout", "ramp"), ("result", "pass")]
        ),
        Some(0.0)
    );
}

fn state_conf(dir: &Path) -> String {
    format!("state: {{ dir: \"{}\" }}\n", dir.display())
}

#[test]
fn a_restart_resumes_the_step_and_a_rolled_back_version_stays_withdrawn() {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let state = tempfile::tempdir().unwrap();
    let rules = rules(&stable, &canary, "[20, 50, 100]", "1h");
    let first = Graygate::start_with(&rules, Some(TOKEN), &state_conf(state.path()));
    let (status, after) = admin(&first, "POST", "/-/rollouts/ramp/promote");
    assert_eq!((status, after["step"].clone()), (200, 2.into()), "{after}");
    thread::sleep(Duration::from_millis(1500));
    drop(first);

    let second = Graygate::start_with(&rules, Some(TOKEN), &state_conf(state.path()));
    let rollout = ramp(&second);
    assert_eq!(
        (rollout["step"].clone(), rollout["weight"].clone()),
        (2.into(), 50.into())
    );
    let elapsed = rollout["step_elapsed_seconds"].as_f64().unwrap();
    assert!(elapsed >= 1.4, "step 2 resumed with {elapsed} s run");
    let (status, _) = admin(&second, "POST", "/-/rollouts/ramp/rollback");
    assert_eq!(status, 200);
    drop(second);

    let third = Graygate::start_with(&rules, Some(TOKEN), &state_conf(state.path()));
    assert_eq!(ramp(&third)["state"], "rolled_back");
    for uid in ["a", "b", "c", "d", "e"] {
        assert_eq!(request(third.proxy, uid, &[("X-Canary", b"1")]).0, "stable");
    }
    // A reload keeps it withdrawn; editing the steps starts the rollout again.
    let reload = |g: &Graygate| assert_eq!(admin(g, "POST", "/-/reload").0, 200);
    std::fs::write(&third.rules_file, format!("{rules}# touched\n")).unwrap();
    reload(&third);
    assert_eq!(ramp(&third)["state"], "rolled_back");
    std::fs::write(
        &third.rules_file,
        rules.replace("[20, 50, 100]", "[10, 50, 100]"),
    )
    .unwrap();
    reload(&third);
    let restarted = ramp(&third);
    assert_eq!(
        (restarted["state"].clone(), restarted["weight"].clone()),
        ("progressing".into(), 10.into())
    );
    assert_eq!(request(third.proxy, "a", &[("X-Canary", b"1")]).0, "canary");
}

#[test]
fn an_unreadable_state_file_restarts_every_rollout_paused_at_step_1() {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let state = tempfile::tempdir().unwrap();
    std::fs::write(state.path().join("rollouts.json"), "{\"format\": 99}").unwrap();
    let graygate = Graygate::start_with(
        &rules(&stable, &canary, "[20, 50, 100]", "1s"),
        Some(TOKEN),
        &state_conf(state.path()),
    );
    let rollout = ramp(&graygate);
    assert_eq!(
        (
            rollout["state"].clone(),
            rollout["step"].clone(),
            rollout["weight"].clone()
        ),
        ("paused".into(), 1.into(), 20.into())
    );
    // The file is rewritten in the current format.
    let text = std::fs::read_to_string(state.path().join("rollouts.json")).unwrap();
    assert!(text.contains("\"format\": 1"), "{text}");
}

#[test]
fn operators_steer_a_rollout_through_the_api_and_the_cli() {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let graygate = Graygate::start_with(
        &rules(&stable, &canary, "[20, 50, 100]", "1h"),
        Some(TOKEN),
        "",
    );
    let cli = |args: &[&str]| admin_cli(graygate.admin, TOKEN, "rollout", args);
    let (ok, stdout, _) = cli(&["status"]);
    assert!(ok);
    assert!(
        stdout.starts_with("ramp: progressing at step 1/3 (20% on canary, baseline stable)"),
        "{stdout}"
    );
    let (ok, stdout, _) = cli(&["pause", "ramp"]);
    assert!(
        ok && stdout.starts_with("ramp: paused at step 1/3"),
        "{stdout}"
    );
    let (ok, _, stderr) = cli(&["pause", "ramp"]);
    assert!(
        !ok && stderr.contains("409") && stderr.contains("cannot pause a rollout that is paused"),
        "{stderr}"
    );
    let (ok, stdout, _) = cli(&["resume", "ramp"]);
    assert!(
        ok && stdout.starts_with("ramp: progressing at step 1/3"),
        "{stdout}"
    );
    let (ok, stdout, _) = cli(&["promote", "ramp"]);
    assert!(
        ok && stdout.starts_with("ramp: progressing at step 2/3 (50%"),
        "{stdout}"
    );
    let (ok, stdout, _) = cli(&["rollback", "ramp"]);
    assert!(
        ok && stdout.starts_with("ramp: rolled_back at step 2/3 (0%"),
        "{stdout}"
    );
    assert_eq!(
        request(graygate.proxy, "x", &[("X-Canary", b"1")]).0,
        "stable"
    );
    let (ok, stdout, _) = cli(&["retry", "ramp"]);
    assert!(
        ok && stdout.starts_with("ramp: progressing at step 1/3 (20%"),
        "{stdout}"
    );
    assert_eq!(
        request(graygate.proxy, "x", &[("X-Canary", b"1")]).0,
        "canary"
    );
    let (ok, _, stderr) = cli(&["pause", "nope"]);
    assert!(!ok && stderr.contains("404"), "{stderr}");
    let (ok, _, stderr) = cli(&["pause"]);
    assert!(
        !ok && stderr.contains("needs the rollout's name"),
        "{stderr}"
    );
    let (ok, stdout, _) = cli(&["status", "ramp", "--json"]);
    assert!(ok);
    let value: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(value["rollouts"][0]["state"], "progressing");
    // The admin API refuses without the token and for unknown actions.
    let raw = "POST /-/rollouts/ramp/pause HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_eq!(
        http_request(graygate.admin, raw.as_bytes()).unwrap().status,
        401
    );
    assert_eq!(admin(&graygate, "POST", "/-/rollouts/ramp/explode").0, 404);
    assert_eq!(admin(&graygate, "GET", "/-/rollouts/ramp/pause").0, 405);
    // explain shows the rollout's step and state for its rule.
    let (status, explained) = admin(&graygate, "GET", "/-/explain?uid=x&host=shop.example");
    assert_eq!(status, 200);
    assert!(
        explained
            .to_string()
            .contains("rollout ramp at step 1 of 3 (20%, progressing)"),
        "{explained}"
    );
}

#[test]
fn with_redis_a_fresh_disk_takes_the_state_up_from_redis() {
    let redis = support::RedisServer::start();
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let rules = rules(&stable, &canary, "[20, 50, 100]", "1h");
    let conf = |dir: &Path| {
        format!(
            "{}redis: {{ url: \"{}\", lookup_timeout: 500ms }}\n",
            state_conf(dir),
            redis.url()
        )
    };
    let first_disk = tempfile::tempdir().unwrap();
    let first = Graygate::start_with(&rules, Some(TOKEN), &conf(first_disk.path()));
    assert_eq!(admin(&first, "POST", "/-/rollouts/ramp/promote").0, 200);
    assert_eq!(admin(&first, "POST", "/-/rollouts/ramp/rollback").0, 200);
    assert_eventually(
        Duration::from_secs(5),
        "the state mirrored to Redis",
        || {
            redis
                .cli(&["GET", "graygate:state:rollouts"])
                .contains("\"rolled_back\"")
        },
    );
    drop(first);

    // Another instance on another disk: Redis's copy is newer than nothing.
    let second_disk = tempfile::tempdir().unwrap();
    let second = Graygate::start_with(&rules, Some(TOKEN), &conf(second_disk.path()));
    assert_eventually(
        Duration::from_secs(3),
        "the rollback taken up from Redis",
        || ramp(&second)["state"] == "rolled_back",
    );
    assert_eq!(
        request(second.proxy, "u", &[("X-Canary", b"1")]).0,
        "stable"
    );
    let saved = std::fs::read_to_string(second_disk.path().join("rollouts.json")).unwrap();
    assert!(
        saved.contains("\"rolled_back\""),
        "written to the new disk too: {saved}"
    );
    // Redis down: the instance keeps serving on what it knows.
    drop(redis);
    assert_eq!(admin(&second, "POST", "/-/rollouts/ramp/retry").0, 200);
    assert_eq!(ramp(&second)["state"], "progressing");
    assert_eq!(
        request(second.proxy, "u", &[("X-Canary", b"1")]).0,
        "canary"
    );
}
