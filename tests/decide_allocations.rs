//! `decide` allocates nothing on the request path, whatever matcher or combinator it runs:
//! a counting global allocator (this test binary only, hence its `unsafe`) watches every
//! call after the first on the thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use graygate::facts::{Arrival, Facts, ListenerId, RequestView, Scheme};
use graygate::rules::model::Listeners;
use graygate::rules::{compile, decide, RuleSource};
use http::{HeaderMap, HeaderValue, Method};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const RULES: &str = r#"
versions: { stable: {}, canary: {} }
default: stable
services:
  web:
    hosts: ["*"]
    groups: { stable: { peers: ["127.0.0.1:1"] } }
rules:
  - { name: re, when: { header: { X-Tester: { regex: ["^(qa|tester)-", "-qa$"] } } }, version: canary }
  - { name: text, when: { cookie: { plan: { prefix: pro-, suffix: -y, contains: o-, in: [pro-y, pro-oy] } } }, version: canary }
  - { name: app, when: { header: { X-App-Version: { version_gte: "5.2", version_lt: "6" } } }, version: canary }
  - { name: build, when: { query: { build: { gte: 1200, lt: 2000 } } }, version: canary }
  - { name: legacy, when: { cookie: { legacy: { absent: true } }, path_prefix: /legacy }, version: canary }
  - { name: combined, when: { not: { path_prefix: /admin }, any: [ { header: { X-Beta: "1" } }, { cookie: { beta: "1" } } ] }, version: canary }
  - { name: edge, when: { scheme: https, listener: [public-tls, internal] }, version: canary }
"#;

#[test]
fn decide_does_not_allocate() {
    let listeners = Listeners::new([
        ("public".into(), Scheme::Http),
        ("public-tls".into(), Scheme::Https),
        ("internal".into(), Scheme::Https),
    ]);
    let model = compile(
        &[RuleSource {
            path: "rules.yaml".into(),
            text: RULES.into(),
        }],
        &listeners,
    )
    .expect("the rules compile")
    .model;
    let on = |name: &str| listeners.arrival(name).expect("a listener");
    let (http, tls) = (on("public"), on("public-tls"));
    // (path, query, headers, arrival)
    type Request<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Arrival);
    let requests: &[Request] = &[
        ("/", "", &[("x-tester", "qa-1")], http),
        ("/", "", &[("cookie", "plan=pro-y")], http),
        ("/", "", &[("x-app-version", "5.10.3")], http),
        ("/", "", &[("x-app-version", "v5.2")], http),
        ("/", "build=1500", &[], http),
        ("/", "build=1e3", &[], http),
        ("/legacy/x", "", &[("cookie", "a=b")], http),
        ("/shop", "", &[("cookie", "beta=1")], http),
        ("/admin", "", &[("x-beta", "1")], http),
        ("/", "", &[], http),
        ("/", "", &[], tls),
        ("/", "", &[], on("internal")),
        (
            "/",
            "",
            &[],
            Arrival {
                listener: ListenerId(7),
                scheme: Scheme::Https,
            },
        ),
    ];
    for (path, query, pairs, arrival) in requests {
        let mut headers = HeaderMap::new();
        for (name, value) in *pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        let view = RequestView {
            method: &Method::GET,
            host: "www.example.com",
            path,
            query: Some(*query).filter(|q| !q.is_empty()),
            headers: &headers,
            client_ip: None,
            arrival: *arrival,
        };
        let facts = Facts::gather(&model.rules.identity, view);
        // The regex engine builds its scratch cache on a thread's first match and reuses it
        // after: the steady state of a worker thread is what is measured.
        let _ = decide(&model.rules, &facts);
        let before = ALLOCATIONS.with(Cell::get);
        let decision = decide(&model.rules, &facts);
        let after = ALLOCATIONS.with(Cell::get);
        assert!(decision.is_ok());
        assert_eq!(
            after - before,
            0,
            "decide allocated for {path}?{query} {pairs:?}"
        );
    }
}
