//! Time to load, validate, compile and swap a large rule set: 1,000 rules and 50 services,
//! then the per-tenant set of issue 18, 10,000 rules and 2,000 services (target: under
//! 500 ms).
//!
//! `cargo bench --bench reload` (or `make bench`) prints where a first load's time goes (the
//! line index of the diagnostics, the YAML parse, the whole compile, building the groups),
//! then the median and worst of repeated reloads: once with only the rules changed (every
//! group reused), once with every group's peers changed (every group rebuilt). Reloads run on
//! the calling thread, as they do on the reload thread in the server (never on a request
//! worker).
//!
//! Under `cargo test` (no `--bench` argument) it runs the small set only, with two reloads of
//! each kind, and asserts what the bench relies on: each reload swaps a new generation, the
//! unchanged groups keep their pools and the changed ones get new pools.

// Only the rule sets of the module are used here.
#[allow(dead_code)]
#[path = "support/tenants.rs"]
mod tenants;

use std::fmt::Write;
use std::time::{Duration, Instant};

use std::path::Path;
use std::sync::Arc;

use graygate::diagnostics::SourceFile;
use graygate::rules::{compile, RuleSource};
use graygate::state::{Reloaded, SnapshotStore};
use graygate::upstream::{Pool, ServiceTable};

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

/// Where the time of a first load of `text` goes, each phase timed on its own.
fn phases(text: &str) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let started = Instant::now();
    // The index is built on the first question, as a diagnostic asks it.
    let line = SourceFile::new(Path::new("rules.yaml"), text).line("rules");
    let line_index = started.elapsed();
    assert!(line.is_some());
    let started = Instant::now();
    let value: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    let yaml = started.elapsed();
    drop(value);
    let started = Instant::now();
    let loaded = compile(
        &[RuleSource {
            path: "rules.yaml".into(),
            text: text.into(),
        }],
        &Default::default(),
    )
    .unwrap_or_else(|d| panic!("{d}"));
    let compiled = started.elapsed();
    let model = &loaded.model;
    let started = Instant::now();
    let table = ServiceTable::build(&model.services, &model.rules.versions, None).unwrap();
    let groups = started.elapsed();
    let started = Instant::now();
    let again = ServiceTable::build(&model.services, &model.rules.versions, Some(&table)).unwrap();
    let reused = started.elapsed();
    drop((again, table));
    println!(
        "  phases: line index alone {:.1} ms (built only for a diagnostic), YAML to a value \
         alone {:.1} ms; compile {:.1} ms (its parsing included), groups {:.1} ms built ({} pools), {:.1} ms reused",
        ms(line_index),
        ms(yaml),
        ms(compiled),
        ms(groups),
        model.services.len(),
        ms(reused),
    );
}

/// The pools of the serving generation.
fn pools(store: &SnapshotStore) -> Vec<Arc<Pool>> {
    store.current().services.pools().to_vec()
}

/// Reloads `rounds` times with `text(round)`; asserts each swaps a new generation, and that
/// each keeps the pools of the one before (`reuse`) or replaces all of them.
fn measure(
    store: &SnapshotStore,
    path: &Path,
    rounds: usize,
    reuse: bool,
    text: &dyn Fn(usize) -> String,
) -> Vec<Duration> {
    let mut times = Vec::new();
    for round in 0..rounds {
        std::fs::write(path, text(round)).unwrap();
        let before = pools(store);
        let started = Instant::now();
        let reloaded = store.reload().unwrap_or_else(|d| panic!("{d}"));
        times.push(started.elapsed());
        assert!(matches!(reloaded, Reloaded::Swapped(_)));
        let after = pools(store);
        assert_eq!(before.len(), after.len());
        let kept = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert_eq!(kept, if reuse { after.len() } else { 0 }, "pools kept");
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
    phases(first);
    let started = Instant::now();
    let store = SnapshotStore::load(&path, Default::default(), &Default::default())
        .unwrap_or_else(|d| panic!("{d}"));
    println!(
        "first load of {rules} rules and {services} services: {:?} ({} bytes of YAML)",
        started.elapsed(),
        std::fs::metadata(&path).unwrap().len()
    );
    report(
        "rules changed, groups reused",
        rules,
        services,
        &measure(&store, &path, rounds, true, same_groups),
    );
    report(
        "every group rebuilt",
        rules,
        services,
        &measure(&store, &path, rounds, false, new_groups),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test` runs this as a quick check.
    let bench = std::env::args().any(|a| a == "--bench");
    run(
        &rule_set(0, 20_000),
        RULES,
        SERVICES,
        if bench { ROUNDS } else { 2 },
        &|round| rule_set(round + 1, 20_000),
        &|round| rule_set(round + 1, [30_000, 40_000][round % 2]),
    );
    if !bench {
        return;
    }
    run(
        &tenant_set(0, 20_000),
        TENANT_RULES,
        TENANT_SERVICES,
        TENANT_ROUNDS,
        &|round| tenant_set(round + 1, 20_000),
        &|round| tenant_set(round + 1, [30_000, 40_000][round % 2]),
    );
}
