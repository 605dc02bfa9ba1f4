//! Cost at SaaS scale (issue 18): the same per-tenant rule shapes at 10, 100, 1,000 and
//! 10,000 rules, and service tables of 10 to 10,000 hosts.
//!
//! `cargo bench --bench scale` (part of `make bench`, through `bench/scale.sh`, which reads
//! the ratios out of criterion's estimates). Before criterion runs, it prints what loading
//! costs: compile time and heap bytes per rule for each size (a counting allocator, this
//! binary only), a `uid_in` list of 100,000 uids (time and bytes per entry) and a
//! 1,000,000-entry list (the time to its refusal).
//!
//! Groups, each with one benchmark per size:
//!
//! - `decide-worst`: a request every key of tenant 0 fits (its host, tenant header, uid
//!   list's tenant) that no rule decides: all candidates evaluated, then the default;
//! - `decide-linear-worst`: the same request with every rule tried in turn (the reference,
//!   what `decide` cost before the index);
//! - `decide-mixed`: 1,000 requests for random tenants, hosts, paths and uids (gathered
//!   beforehand);
//! - `gather+decide`: the same requests, facts gathered in the loop;
//! - `service-find`: `ServiceTable`'s host and path lookup over 1,000 requests, tables of
//!   10 to 10,000 tenant hosts (exact and `*.suffix`) plus `*`.

#[path = "support/tenants.rs"]
mod tenants;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput};
use graygate::facts::{Facts, RequestView};
use graygate::rules::decide::decide_linear;
use graygate::rules::model::{HostPattern, RuleSet};
use graygate::rules::{compile, decide, RuleSource};
use graygate::upstream::Routes;
use http::{HeaderMap, HeaderValue, Method};

/// Counts the bytes held on the heap, to report what a rule costs.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];
const REQUESTS: usize = 1_000;
static GET: Method = Method::GET;
static POST: Method = Method::POST;

/// Every group on one (never contacted) peer.
fn one_peer(_: usize) -> String {
    "127.0.0.1:1".into()
}

fn compiled(text: String) -> RuleSet {
    compile(
        &[RuleSource {
            path: "scale-rules.yaml".into(),
            text,
        }],
        &Default::default(),
    )
    .unwrap_or_else(|d| panic!("the scale rules do not compile:\n{d}"))
    .model
    .rules
}

/// A request's parts, leaked so that views can borrow them for the whole run.
struct Request {
    method: &'static Method,
    host: &'static str,
    path: &'static str,
    headers: &'static HeaderMap,
}

impl Request {
    fn new(
        method: &'static Method,
        host: String,
        path: &'static str,
        tenant: usize,
        uid: &str,
    ) -> Request {
        let mut h = HeaderMap::new();
        h.insert(
            "user-agent",
            HeaderValue::from_static("Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"),
        );
        h.insert(
            "x-tenant",
            HeaderValue::from_str(&format!("t{tenant}")).expect("a header value"),
        );
        h.insert(
            "cookie",
            HeaderValue::from_str(&format!("_ga=GA1.2.1234567890.1700000000; sid=0f3a9c2e7b1d4e5f; uid={uid}; tier=trial; theme=dark"))
                .expect("a header value"),
        );
        Request {
            method,
            host: Box::leak(host.into_boxed_str()),
            path,
            headers: Box::leak(Box::new(h)),
        }
    }

    fn view(&self) -> RequestView<'static> {
        RequestView {
            method: self.method,
            host: self.host,
            path: self.path,
            query: None,
            headers: self.headers,
            client_ip: "203.0.113.7".parse().ok(),
            arrival: Default::default(),
        }
    }
}

/// `REQUESTS` requests for random tenants of a set of `rules` rules (a fixed seed).
fn mixed(rules: usize) -> Vec<Request> {
    let mut rng = fastrand::Rng::with_seed(18);
    let tenants = tenants::tenants(rules);
    let paths = ["/", "/api/orders", "/new/home", "/static/app.js"];
    (0..REQUESTS)
        .map(|_| {
            let t = rng.usize(..tenants);
            let host = match rng.u8(..3) {
                0 => format!("t{t}.example.com"),
                1 => format!("www.t{t}.example.net"),
                _ => "app.example.com".to_string(),
            };
            let uid = if rng.bool() {
                format!("{t}0000{}", rng.u8(..10))
            } else {
                rng.u32(..1_000_000).to_string()
            };
            let method = if rng.u8(..4) == 0 { &POST } else { &GET };
            Request::new(method, host, paths[rng.usize(..paths.len())], t, &uid)
        })
        .collect()
}

fn held() -> isize {
    HELD.load(Ordering::Relaxed)
}

/// Compile time and heap bytes per rule, per size; the large lists.
fn report_loading() {
    println!("== loading (compile, heap held by the compiled rules)");
    let empty = {
        let before = held();
        let rules = compiled(tenants::rule_set(0, 0, &one_peer));
        let bytes = held() - before;
        drop(rules);
        bytes
    };
    for &n in &SIZES {
        let text = tenants::rule_set(n, 0, &one_peer);
        let before = held();
        let started = Instant::now();
        let rules = compiled(text);
        let took = started.elapsed();
        let bytes = held() - before - empty;
        println!(
            "{n:>6} rules: compile {:>7.1} ms, {:>6} bytes per rule ({} KiB in all)",
            took.as_secs_f64() * 1e3,
            bytes / n as isize,
            bytes / 1024
        );
        drop(rules);
    }
    for (entries, refused) in [(100_000usize, false), (1_000_000, true)] {
        let uids: Vec<String> = (0..entries)
            .map(|u| format!("\"{}\"", 1_000_000_000 + u))
            .collect();
        let text = format!(
            "{}  - {{ name: big, when: {{ uid_in: [{}] }}, version: canary }}\n",
            tenants::rule_set(2, 0, &one_peer),
            uids.join(", ")
        );
        drop(uids);
        let before = held();
        let started = Instant::now();
        let outcome = compile(
            &[RuleSource {
                path: "big.yaml".into(),
                text,
            }],
            &Default::default(),
        );
        let took = started.elapsed();
        match outcome {
            Ok(_loaded) if !refused => println!(
                "uid_in of {entries} uids: compile {:.0} ms, {} bytes per uid",
                took.as_secs_f64() * 1e3,
                (held() - before - empty) / entries as isize
            ),
            Err(d) if refused => println!(
                "uid_in of {entries} uids: refused in {:.0} ms: {}",
                took.as_secs_f64() * 1e3,
                d.items().first().map(|d| d.to_string()).unwrap_or_default()
            ),
            Ok(loaded) => {
                drop(loaded);
                panic!("a list of {entries} uids was accepted")
            }
            Err(d) => panic!("a list of {entries} uids was refused:\n{d}"),
        }
    }
}

fn rules_curve(c: &mut Criterion) {
    let sets: Vec<(usize, RuleSet)> = SIZES
        .iter()
        .map(|&n| (n, compiled(tenants::rule_set(n, 0, &one_peer))))
        .collect();
    // Tenant 0's uid list holds 000000..000009: uid 777 is not in it, ends in 7 (no tail).
    let worst = Request::new(&GET, "t0.example.com".into(), "/", 0, "777");
    let mut group = c.benchmark_group("decide-worst");
    group.throughput(Throughput::Elements(1));
    for (n, rules) in &sets {
        let facts = Facts::gather(&rules.identity, worst.view());
        let decision = decide(rules, &facts).expect("no store facts");
        assert_eq!(decision.rule, None, "the worst case reaches the default");
        assert_eq!(decide_linear(rules, &facts), Ok(decision));
        group.bench_with_input(BenchmarkId::from_parameter(n), &facts, |b, facts| {
            b.iter(|| decide(rules, black_box(facts)))
        });
    }
    group.finish();
    let mut group = c.benchmark_group("decide-linear-worst");
    group.throughput(Throughput::Elements(1));
    for (n, rules) in &sets {
        let facts = Facts::gather(&rules.identity, worst.view());
        group.bench_with_input(BenchmarkId::from_parameter(n), &facts, |b, facts| {
            b.iter(|| decide_linear(rules, black_box(facts)))
        });
    }
    group.finish();
    let mut group = c.benchmark_group("decide-mixed");
    group.throughput(Throughput::Elements(1));
    for (n, rules) in &sets {
        let requests = mixed(*n);
        let facts: Vec<Facts<'static>> = requests
            .iter()
            .map(|r| Facts::gather(&rules.identity, r.view()))
            .collect();
        for f in &facts {
            assert_eq!(
                decide(rules, f),
                decide_linear(rules, f),
                "indexed and linear agree"
            );
        }
        let mut i = 0;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                i = (i + 1) % REQUESTS;
                decide(rules, black_box(&facts[i]))
            })
        });
    }
    group.finish();
    let mut group = c.benchmark_group("gather+decide");
    group.throughput(Throughput::Elements(1));
    for (n, rules) in &sets {
        let requests = mixed(*n);
        let mut i = 0;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                i = (i + 1) % REQUESTS;
                let facts = Facts::gather(&rules.identity, black_box(requests[i].view()));
                decide(rules, &facts)
            })
        });
    }
    group.finish();
}

fn hosts_curve(c: &mut Criterion) {
    let mut group = c.benchmark_group("service-find");
    group.throughput(Throughput::Elements(1));
    for &n in &SIZES {
        let mut routes = Vec::new();
        for t in 0..n {
            routes.push((
                HostPattern::Exact(format!("t{t}.example.com").into()),
                "/".into(),
                t,
            ));
            routes.push((
                HostPattern::Suffix(format!(".t{t}.example.net").into()),
                "/".into(),
                t,
            ));
            routes.push((
                HostPattern::Exact(format!("t{t}.example.com").into()),
                "/api".into(),
                t,
            ));
        }
        routes.push((HostPattern::Any, "/".into(), n));
        let routes = Routes::new(routes).expect("a table");
        let requests = mixed(n * 5);
        for r in &requests {
            assert_eq!(
                routes.find(r.host, r.path),
                routes.find_linear(r.host, r.path)
            );
        }
        let mut i = 0;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                i = (i + 1) % REQUESTS;
                let r = &requests[i];
                routes.find(black_box(r.host), black_box(r.path))
            })
        });
    }
    group.finish();
}

fn main() {
    report_loading();
    let mut c = Criterion::default().configure_from_args();
    rules_curve(&mut c);
    hosts_curve(&mut c);
    c.final_summary();
}
