//! The cost of cookie isolation (SPEC section 15) on the request path.
//!
//! `cargo bench --bench cookies`. Each measurement works on a browser-like `Cookie` header of
//! six pairs (about 230 bytes: analytics ids, a session, a theme, the uid, the channel cookie):
//!
//! - `find-uid`: one `facts::cookie::find` (what the filter chain pays per cookie source
//!   today), the yardstick;
//! - `shared-pass-through`: [`cookies::rewrite`] for a shared version when no cookie is in a
//!   `gg.*` namespace: the common case, which answers `None` and leaves the request alone;
//! - `shared-strip`: the same request with two `gg.dev.*` cookies, stripped;
//! - `isolated-restore`: the same request served by isolated dev (two restored, four removed);
//! - `rename-set-cookie`: one `Set-Cookie` with five attributes renamed.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use graygate::cookies::{rename, rewrite};
use graygate::facts::cookie::find;
use graygate::rules::model::CookiePolicy;
use http::header::{HeaderMap, HeaderValue, COOKIE};

const BROWSER: &str = "_ga=GA1.2.1234567890.1700000000; _gid=GA1.2.987654321.1700000000; \
    SESSION=7f3c2a9e4b1d8f6a0c5e3b7d9a2f4c6e; theme=light; uid=1003; \
    gg_channel=dev.1800000000.q2Xb9Yw4k1c7P0sZ3mN8vT6uR5eQ1aD2fG7hJ9kL0";

fn headers(value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        COOKIE,
        HeaderValue::from_str(value).expect("a header value"),
    );
    headers
}

fn bench(c: &mut Criterion) {
    let passing: Vec<Box<str>> = vec!["gg_channel".into(), "uid".into()];
    let plain = headers(BROWSER);
    let namespaced = headers(&BROWSER.replace(
        "SESSION=7f3c2a9e4b1d8f6a0c5e3b7d9a2f4c6e; theme=light",
        "gg.dev.SESSION=0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a; gg.dev.theme=dark",
    ));
    let shared = CookiePolicy::Shared;
    let dev = CookiePolicy::parse("isolated", "dev").expect("a policy");
    let set_cookie = b"SESSION=0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a; Path=/; Domain=.example.com; Max-Age=3600; Secure; HttpOnly";

    let mut group = c.benchmark_group("cookies");
    group.throughput(Throughput::Elements(1));
    group.bench_function("find-uid", |b| b.iter(|| find(black_box(&plain), "uid")));
    group.bench_function("shared-pass-through", |b| {
        b.iter(|| {
            let r = rewrite(&shared, &passing, black_box(&plain));
            assert!(r.is_none());
            r
        })
    });
    group.bench_function("shared-strip", |b| {
        b.iter(|| rewrite(&shared, &passing, black_box(&namespaced)))
    });
    group.bench_function("isolated-restore", |b| {
        b.iter(|| rewrite(&dev, &passing, black_box(&namespaced)))
    });
    group.bench_function("rename-set-cookie", |b| {
        b.iter(|| rename("gg.dev.", black_box(set_cookie)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
