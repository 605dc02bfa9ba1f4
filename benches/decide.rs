//! The cost of the request-path decision on a rule set of 100 rules.
//!
//! `cargo bench --bench decide` (part of `make bench`). Four measurements:
//!
//! - `gather`: the filter chain alone ([`Facts::gather`]: cookie parse across the `Cookie`
//!   headers, uid, uid tail, tier, internal);
//! - `decide-first`: a request the first rule decides (a paid user);
//! - `decide-all-100`: a request no rule decides: the worst case. Before the rule index
//!   (`rules/index.rs`) all 100 rules were evaluated; now only its candidates are (the rules
//!   without a key condition, and those whose host, header, uid, prefix or method fits), and
//!   the curve by rule count is `benches/scale.rs`'s;
//! - `gather+decide`: both, for requests cycling through 10,000 uids (most decided by the
//!   rules near the end, a few by splits and tails), what `request_filter` pays per request.
//!
//! A second group, `matchers`, measures `decide` on a one-rule set for each value matcher and
//! combinator of SPEC section 16 (`regex`, a four-pattern `regex` set, `prefix`, `suffix`,
//! `contains`, `in`, a numeric range, a version range, a value that is not a version,
//! `absent`, `not`, `any`), on a request the rule matches (but `version-not-a-version`).
//!
//! The rules use every kind of condition a request can be tested on (host, path prefix and
//! regex, method, header, cookie, query, client address, uid tail, suffix, list and range,
//! tier, internal) and splits by uid and client address; none needs the assignment store, so
//! `decide` always answers.

use std::fmt::Write;
use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use graygate::facts::{Facts, RequestView};
use graygate::rules::{compile, decide, RuleSource};
use http::{HeaderMap, HeaderValue, Method};

const RULES: usize = 100;
static GET: Method = Method::GET;
const UIDS: usize = 10_000;

/// 100 rules; the request under test matches none of the first 98 unless it says so.
fn rule_set() -> String {
    let mut y = String::from(
        "versions: { stable: {}, canary: {}, beta: { selectable: true }, dev: { restricted: true } }\n\
         default: stable\n\
         identity:\n  uid: [cookie:uid, header:X-User-Id, query:uid]\n  \
         tier: { sources: [cookie:tier, header:X-User-Tier], paid_uids: [10001, 10002], default: trial }\n  \
         internal: { uids: [1, 2], cidrs: [10.0.0.0/8] }\n\
         services:\n  web:\n    hosts: [\"*\"]\n    groups:\n      \
         stable: { peers: [\"127.0.0.1:18001\"] }\n      canary: { peers: [\"127.0.0.1:18002\"] }\n\
         rules:\n  - { name: shield-paid, when: { tier: paid }, version: stable }\n",
    );
    for r in 1..RULES - 2 {
        let _ = match r % 12 {
            0 => writeln!(y, "  - {{ name: r{r}, when: {{ host: \"svc{r}.example.com\" }}, version: canary }}"),
            1 => writeln!(y, "  - {{ name: r{r}, when: {{ path_prefix: /feature{r}/ }}, version: beta }}"),
            2 => writeln!(y, "  - {{ name: r{r}, when: {{ path_regex: \"^/v[0-9]+/item{r}/[0-9]+$\" }}, version: canary }}"),
            3 => writeln!(y, "  - {{ name: r{r}, when: {{ header: {{ X-Exp-{r}: \"on\" }} }}, version: canary }}"),
            4 => writeln!(y, "  - {{ name: r{r}, when: {{ cookie: {{ exp{r}: \"1\" }} }}, version: beta }}"),
            5 => writeln!(y, "  - {{ name: r{r}, when: {{ query: {{ exp{r}: \"1\" }} }}, version: canary }}"),
            6 => writeln!(y, "  - {{ name: r{r}, when: {{ client_ip: [\"10.{r}.0.0/16\", \"192.168.{r}.0/24\"] }}, version: canary }}"),
            7 => writeln!(y, "  - {{ name: r{r}, when: {{ uid_in: [\"{r}000001\", \"{r}000002\", \"{r}000003\"] }}, version: beta }}"),
            8 => writeln!(y, "  - {{ name: r{r}, when: {{ uid_range: [{r}000000, {r}999999] }}, version: canary }}"),
            9 => writeln!(y, "  - {{ name: r{r}, when: {{ uid_suffix: [\"{r:03}\"], method: [POST] }}, version: canary }}"),
            10 => writeln!(y, "  - {{ name: r{r}, when: {{ internal: true, header: {{ X-Channel: dev{r} }} }}, version: dev }}"),
            _ => writeln!(y, "  - {{ name: r{r}, when: {{ path_prefix: /ab{r}, has_uid: true }}, split: {{ by: uid, weights: {{ canary: 50, stable: 50 }} }} }}"),
        };
    }
    // The last two decide for most requests of the mixed workload.
    y.push_str("  - { name: tail-30pct, when: { uid_tail: [1, 2, 3] }, version: canary }\n");
    y.push_str(
        "  - { name: register-ab, when: { path_prefix: /register }, split: { by: client_ip, weights: { canary: 50, stable: 50 } } }\n",
    );
    y
}

/// The headers of a browser request from user `uid`.
fn headers(uid: &str, tier: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("www.example.com"));
    h.insert(
        "user-agent",
        HeaderValue::from_static("Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"),
    );
    h.insert(
        "accept",
        HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8"),
    );
    h.append(
        "cookie",
        HeaderValue::from_str(&format!(
            "_ga=GA1.2.1234567890.1700000000; sid=0f3a9c2e7b1d4e5f; uid={uid}; tier={tier}; theme=dark"
        ))
        .expect("a valid header value"),
    );
    h
}

fn bench(c: &mut Criterion) {
    let loaded = compile(
        &[RuleSource {
            path: "bench-rules.yaml".into(),
            text: rule_set(),
        }],
        &Default::default(),
    )
    .unwrap_or_else(|d| panic!("the bench rules do not compile:\n{d}"));
    let rules = &loaded.model.rules;
    assert_eq!(rules.rules.len(), RULES);
    let ip: IpAddr = "203.0.113.7".parse().expect("an address");
    let view = |headers: &'static HeaderMap, path: &'static str| RequestView {
        method: &GET,
        host: "www.example.com",
        path,
        query: Some("page=2&sort=desc"),
        headers,
        client_ip: Some(ip),
        arrival: Default::default(),
    };
    let paid: &'static HeaderMap = Box::leak(Box::new(headers("10001", "paid")));
    // uid 4567: tail 7, so no rule decides.
    let undecided: &'static HeaderMap = Box::leak(Box::new(headers("4567", "trial")));
    let mixed: &'static [HeaderMap] = Box::leak(
        (0..UIDS)
            .map(|uid| {
                headers(
                    &uid.to_string(),
                    if uid % 20 == 0 { "paid" } else { "trial" },
                )
            })
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    let paths = ["/", "/register/step1", "/feature3/x", "/products/42"];

    // The cases measured decide what they are meant to decide.
    let first =
        decide(rules, &Facts::gather(&rules.identity, view(paid, "/"))).expect("no store facts");
    assert_eq!(first.rule, Some(0));
    let none = decide(
        rules,
        &Facts::gather(&rules.identity, view(undecided, "/products/42")),
    )
    .expect("no store facts");
    assert_eq!(none.rule, None, "the worst case reaches the default");

    let mut group = c.benchmark_group("100-rules");
    group.throughput(Throughput::Elements(1));
    group.bench_function("gather", |b| {
        b.iter(|| Facts::gather(&rules.identity, black_box(view(undecided, "/products/42"))).tier)
    });
    let facts = Facts::gather(&rules.identity, view(paid, "/"));
    group.bench_function("decide-first", |b| {
        b.iter(|| decide(rules, black_box(&facts)))
    });
    let facts = Facts::gather(&rules.identity, view(undecided, "/products/42"));
    group.bench_function("decide-all-100", |b| {
        b.iter(|| decide(rules, black_box(&facts)))
    });
    let mut n = 0usize;
    group.bench_function("gather+decide", |b| {
        b.iter(|| {
            n = (n + 1) % UIDS;
            let facts = Facts::gather(
                &rules.identity,
                black_box(view(&mixed[n], paths[n % paths.len()])),
            );
            decide(rules, &facts)
        })
    });
    group.finish();
}

/// One rule `m` with `when` deciding canary, after the usual head.
fn one_rule(when: &str) -> graygate::rules::model::RuleSet {
    let text = format!(
        "versions: {{ stable: {{}}, canary: {{}} }}\ndefault: stable\nservices:\n  web:\n    hosts: [\"*\"]\n    groups: {{ stable: {{ peers: [\"127.0.0.1:18001\"] }} }}\nrules:\n  - {{ name: m, when: {when}, version: canary }}\n"
    );
    compile(
        &[RuleSource {
            path: "bench-matchers.yaml".into(),
            text,
        }],
        &Default::default(),
    )
    .unwrap_or_else(|d| panic!("the matcher bench rules do not compile:\n{d}"))
    .model
    .rules
}

fn matchers(c: &mut Criterion) {
    let mut h = headers("4567", "trial");
    h.insert("x-app-version", HeaderValue::from_static("5.10.3"));
    h.insert("x-tester", HeaderValue::from_static("tester-42"));
    h.insert("x-build", HeaderValue::from_static("1500"));
    h.insert("x-odd-version", HeaderValue::from_static("v5.10.3"));
    let view = RequestView {
        method: &GET,
        host: "www.example.com",
        path: "/products/42",
        query: Some("page=2&sort=desc"),
        headers: &h,
        client_ip: "203.0.113.7".parse().ok(),
        arrival: Default::default(),
    };
    let cases: &[(&str, &str, bool)] = &[
        ("regex", "{ header: { X-Tester: { regex: \"^(qa|tester)-\" } } }", true),
        ("regex-set-4", "{ header: { X-Tester: { regex: [\"^qa-\", \"^dev-\", \"^ops-\", \"^tester-\"] } } }", true),
        ("prefix", "{ cookie: { theme: { prefix: da } } }", true),
        ("suffix", "{ cookie: { sid: { suffix: 4e5f } } }", true),
        ("contains", "{ header: { User-Agent: { contains: Firefox } } }", true),
        ("in", "{ cookie: { theme: { in: [light, dark, contrast] } } }", true),
        ("number-range", "{ header: { X-Build: { gte: 1200, lt: 2000 } } }", true),
        ("version-range", "{ header: { X-App-Version: { version_gte: \"5.2\", version_lt: \"6\" } } }", true),
        ("version-not-a-version", "{ header: { X-Odd-Version: { version_gte: \"5.2\" } } }", false),
        ("absent", "{ cookie: { legacy: { absent: true } } }", true),
        ("not", "{ not: { path_prefix: /admin } }", true),
        ("any", "{ any: [ { header: { X-Beta: \"1\" } }, { cookie: { beta: \"1\" } }, { header: { X-Tester: { prefix: tester- } } } ] }", true),
    ];
    let mut group = c.benchmark_group("matchers");
    group.throughput(Throughput::Elements(1));
    for (name, when, matches) in cases {
        let rules = one_rule(when);
        let facts = Facts::gather(&rules.identity, view);
        let decision = decide(&rules, &facts).expect("no store facts");
        assert_eq!(decision.rule.is_some(), *matches, "{name}: {when}");
        group.bench_function(*name, |b| b.iter(|| decide(&rules, black_box(&facts))));
    }
    group.finish();
}

criterion_group!(benches, bench, matchers);
criterion_main!(benches);
