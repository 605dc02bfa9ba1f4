//! Time to load, validate, compile and swap a large rule set: 1,000 rules and 50 services,
//! then the per-tenant set of issue 18, 10,000 rules and 2,000 services (target: under
//! 500 ms).
//!
//! `cargo bench --bench reload` (or `make bench`) prints the median and worst of repeated
//! reloads: once with only the rules changed (every group reused), once with every group's
//! peers changed (every group rebuilt). Reloads run on the calling thread, as they do on
//! the blocking pool in the server (never on a request worker).

// Only the rule sets of the module are used here.
#[allow(dead_code)]
#[path = "support/tenants.rs"]
mod tenants;

use std::fmt::Write;
use std::time::{Duration, Instant};

use graygate::state::{Reloaded, SnapshotStore};

const RULES: usize = 1_000;
const SERVICES: usize = 50;
const ROUNDS: usize = 30;

const TENANT_RULES: usize = 10_000;
const TENANT_SERVICES: usize = 2_000;
const TENANT_ROUNDS: usize = 10;

fn rule_set(variant: usize, peer_base: u16) -> String {
    let mut y = String::from(
        "versions: { stable: {}, canary: {}, beta: { selectable: true } }\ndefault: stable\n\
         identity: { uid: [cookie:uid, header:X-User-Id], tier: { sources: [cookie:tier], paid_uids: [10001] } }\nservices:\n",
    );
    for s in 0..SERVICES {
        let port = peer_base + (s as u16) * 2;
        let _ = writeln!(
            y,
            "  svc{s}:\n    hosts: [\"svc{s}.example.com\", \"*.svc{s}.example.net\"]\n    path_prefix: /\n    groups:\n      \
             stable: {{ peers: [\"127.0.0.1:{port}\"], health_check: {{ type: http, path: /healthz, interval: 2s, timeout: 1s }} }}\n      \
             canary: {{ peers: [\"127.0.0.1:{}\"], lb: consistent }}",
            port + 1
        );
    }
    y.push_str("rules:\n");
    for r in 0..RULES {
        let _ = match r % 5 {
            0 => writeln!(y, "  - {{ name: r{r}, when: {{ uid_tail: [{}], host: \"svc{}.example.com\" }}, version: canary }}", r % 10, r % SERVICES),
            1 => writeln!(y, "  - {{ name: r{r}, when: {{ path_regex: \"^/v{variant}/item/[0-9]+{r}$\" }}, version: beta }}"),
            2 => writeln!(y, "  - {{ name: r{r}, when: {{ header: {{ X-Exp-{r}: \"on\" }}, client_ip: [10.{}.0.0/16] }}, version: canary }}", r % 256),
            3 => writeln!(y, "  - {{ name: r{r}, when: {{ uid_range: [{r}000, {r}999], tier: trial }}, version: canary }}"),
            _ => writeln!(y, "  - {{ name: r{r}, when: {{ path_prefix: /p{r} }}, split: {{ by: uid, weights: {{ canary: {}, stable: 90 }} }} }}", 10 + variant % 10),
        };
    }
    y
}

/// The tenant set of `tenants.rs`; service `t`'s peer on port `base + t`, and a comment
/// that makes each variant a new generation.
fn tenant_set(variant: usize, peer_base: u16) -> String {
    let peer = move |t: usize| format!("127.0.0.1:{}", peer_base as usize + t);
    format!(
        "# variant {variant}\n{}",
        tenants::rule_set(TENANT_RULES, TENANT_SERVICES, &peer)
    )
}

fn measure(
    store: &SnapshotStore,
    path: &std::path::Path,
    rounds: usize,
    text: &dyn Fn(usize) -> String,
) -> Vec<Duration> {
    let mut times = Vec::new();
    for round in 0..rounds {
        std::fs::write(path, text(round)).unwrap();
        let started = Instant::now();
        let reloaded = store.reload().unwrap_or_else(|d| panic!("{d}"));
        times.push(started.elapsed());
        assert!(matches!(reloaded, Reloaded::Swapped(_)));
    }
    times.sort();
    times
}

fn report(what: &str, rules: usize, services: usize, t: &[Duration]) {
    println!(
        "{what}: median {:.1} ms, worst {:.1} ms over {} reloads of {rules} rules and {services} services",
        t[t.len() / 2].as_secs_f64() * 1e3,
        t[t.len() - 1].as_secs_f64() * 1e3,
        t.len()
    );
}

/// Loads `first`, then reloads with the rules changed and with every group changed.
fn run(
    first: &str,
    rules: usize,
    services: usize,
    rounds: usize,
    same_groups: &dyn Fn(usize) -> String,
    new_groups: &dyn Fn(usize) -> String,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, first).unwrap();
    let started = Instant::now();
    let store = SnapshotStore::load(&path, Default::default()).unwrap_or_else(|d| panic!("{d}"));
    println!(
        "first load of {rules} rules and {services} services: {:?} ({} bytes of YAML)",
        started.elapsed(),
        std::fs::metadata(&path).unwrap().len()
    );
    report(
        "rules changed, groups reused",
        rules,
        services,
        &measure(&store, &path, rounds, same_groups),
    );
    report(
        "every group rebuilt",
        rules,
        services,
        &measure(&store, &path, rounds, new_groups),
    );
}

fn main() {
    run(
        &rule_set(0, 20_000),
        RULES,
        SERVICES,
        ROUNDS,
        &|round| rule_set(round + 1, 20_000),
        &|round| rule_set(round + 1, [30_000, 40_000][round % 2]),
    );
    run(
        &tenant_set(0, 20_000),
        TENANT_RULES,
        TENANT_SERVICES,
        TENANT_ROUNDS,
        &|round| tenant_set(round + 1, 20_000),
        &|round| tenant_set(round + 1, [30_000, 40_000][round % 2]),
    );
}
