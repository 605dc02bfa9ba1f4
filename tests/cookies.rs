//! Environment-isolated cookies (SPEC section 15) against the real server and real backends:
//! a stable and a dev backend that both keep their login in `SESSION`, a user switching
//! between them on the channel page, HTTP/1.1 requests with several `Cookie` headers (the
//! shape HTTP/2 sends), fallbacks, forged cookies and unruly backends.

mod support;

use support::graygate::{metric, Graygate};
use support::{get, http_request, Backend, Response};

const PAGE: &str = "/.canary-deployment";
const HOST: &str = "www.example.com";

/// The session cookie of both backends' login, with every attribute a browser honours.
const STABLE_LOGIN: &str =
    "SESSION=stable-1; Path=/; Domain=.example.com; Max-Age=3600; Secure; HttpOnly; SameSite=Lax";
const DEV_LOGIN: &str =
    "SESSION=dev-1; Path=/; Domain=.example.com; Max-Age=3600; Secure; HttpOnly; SameSite=Lax";

struct Site {
    stable: Backend,
    dev: Backend,
    qa: Backend,
    gg: Graygate,
}

/// stable (shared, the default), dev and qa (isolated, restricted); uid 1 is internal; the
/// `api` service has no dev group, so dev's users fall back to stable there.
fn site(extra_rules: &str) -> Site {
    let (stable, dev, qa) = (
        Backend::start("stable"),
        Backend::start("dev"),
        Backend::start("qa"),
    );
    let rules = format!(
        "versions:\n  stable: {{}}\n  dev: {{ selectable: true, restricted: true, cookies: isolated }}\n  qa: {{ selectable: true, restricted: true, cookies: isolated }}\n\
         default: stable\n\
         identity: {{ uid: [cookie:uid, header:X-User-Id], internal: {{ uids: [1] }} }}\n\
         channels: {{ cookie: gg_channel, max_age: 30d, domain: .example.com }}\n\
         services:\n  web:\n    hosts: [\"*\"]\n    groups:\n      stable: {{ peers: [\"{}\"] }}\n      dev: {{ peers: [\"{}\"] }}\n      qa: {{ peers: [\"{}\"] }}\n\
         \x20 api:\n    hosts: [\"*\"]\n    path_prefix: /api\n    groups:\n      stable: {{ peers: [\"{}\"] }}\n\
         rules:\n  - {{ name: follow-channel, when: {{ channel: any }}, version: $channel }}\n{extra_rules}",
        stable.addr(),
        dev.addr(),
        qa.addr(),
        stable.addr(),
    );
    let gg = Graygate::start(&rules);
    Site {
        stable,
        dev,
        qa,
        gg,
    }
}

/// A browser's cookie jar, enough for these tests: host-only and domain cookies alike,
/// replaced by name, deleted by `Max-Age=0` or an `Expires` in 1970.
#[derive(Debug, Default)]
struct Jar(Vec<(String, String)>);

impl Jar {
    fn with(pairs: &[(&str, &str)]) -> Jar {
        Jar(pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect())
    }

    fn store(&mut self, response: &Response) {
        for set_cookie in response.header_all("set-cookie") {
            let (pair, attributes) = set_cookie.split_once(';').unwrap_or((&set_cookie, ""));
            let (name, value) = pair.split_once('=').expect("a name=value pair");
            let (name, value) = (name.trim().to_string(), value.trim().to_string());
            let deleted = attributes.split(';').map(str::trim).any(|a| {
                a.eq_ignore_ascii_case("Max-Age=0")
                    || (a.starts_with("Expires=") && a.contains("1970"))
            });
            self.0.retain(|(n, _)| *n != name);
            if !deleted {
                self.0.push((name, value));
            }
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// `GET path` with the jar's cookies; the response's cookies go into the jar.
fn browse(site: &Site, jar: &mut Jar, path: &str) -> Response {
    let r = get(
        site.gg.proxy,
        HOST,
        path,
        &[("Cookie", jar.header().as_bytes())],
    );
    jar.store(&r);
    r
}

/// Picks `version` on the channel page with the jar's cookies, as the page's form does.
fn choose(site: &Site, jar: &mut Jar, version: &str) {
    let form = format!("version={version}&return_to=%2F");
    let raw = format!(
        "POST {PAGE} HTTP/1.1\r\nHost: {HOST}\r\nOrigin: https://{HOST}\r\nCookie: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        jar.header(),
        form.len()
    );
    let r = http_request(site.gg.proxy, raw.as_bytes()).expect("POST the channel page");
    assert_eq!(r.status, 303, "choosing {version}: {}", r.body_text());
    jar.store(&r);
}

/// The single `Cookie` header of the last request `backend` got for `path`.
fn last_cookie(backend: &Backend, path: &str) -> String {
    let seen = backend.seen_cookies(path);
    let last = seen
        .last()
        .unwrap_or_else(|| panic!("{} got no {path}", backend.name()));
    assert!(
        last.len() <= 1,
        "{} got several Cookie headers: {last:?}",
        backend.name()
    );
    last.first().cloned().unwrap_or_default()
}

/// The names in a `Cookie` header value, in order.
fn names(cookie: &str) -> Vec<&str> {
    cookie
        .split(';')
        .filter_map(|p| p.split_once('=').map(|(n, _)| n.trim()))
        .collect()
}

/// Every `Cookie` value `backend` ever got, joined (to look for a leaked session).
fn everything_seen(backend: &Backend) -> String {
    backend
        .seen_requests()
        .iter()
        .flat_map(|r| r.header_all("cookie"))
        .collect::<Vec<_>>()
        .join(" | ")
}

fn cookies_metric(site: &Site, version: &str, action: &str) -> f64 {
    metric(
        &site.gg.scrape(),
        "graygate_cookies_rewritten_total",
        &[("version", version), ("action", action)],
    )
    .unwrap_or_else(|| {
        panic!("no graygate_cookies_rewritten_total{{version={version},action={action}}}")
    })
}

#[test]
fn log_in_on_stable_switch_to_dev_log_in_switch_back_and_both_sessions_are_intact() {
    let site = site("");
    for backend in [&site.stable, &site.dev] {
        let login = if backend.name() == "stable" {
            STABLE_LOGIN
        } else {
            DEV_LOGIN
        };
        let theme = if backend.name() == "stable" {
            "light"
        } else {
            "dark"
        };
        backend.set_cookies_on("/login", &[login, &format!("theme={theme}; Path=/")]);
        backend.set_cookies_on(
            "/logout",
            &["SESSION=; Max-Age=0; Path=/; Domain=.example.com"],
        );
    }
    // The series exist before the first event.
    for action in [
        "renamed",
        "restored",
        "removed",
        "dropped_too_long",
        "dropped_invalid",
    ] {
        assert_eq!(cookies_metric(&site, "dev", action), 0.0, "{action}");
    }
    assert_eq!(cookies_metric(&site, "stable", "removed"), 0.0);

    // Logged in on stable: a shared version's cookies pass as they are, both ways.
    let mut jar = Jar::with(&[("uid", "1")]);
    let r = browse(&site, &mut jar, "/login");
    assert_eq!(r.body_text(), "stable");
    assert_eq!(
        r.header_all("set-cookie"),
        [STABLE_LOGIN, "theme=light; Path=/"]
    );
    browse(&site, &mut jar, "/");
    assert_eq!(
        last_cookie(&site.stable, "/"),
        "uid=1; SESSION=stable-1; theme=light"
    );

    // Switched to dev: dev sees the identity and channel cookies, not stable's session.
    choose(&site, &mut jar, "dev");
    let channel = jar.get("gg_channel").expect("a channel cookie").to_string();
    assert_eq!(browse(&site, &mut jar, "/").body_text(), "dev");
    assert_eq!(
        last_cookie(&site.dev, "/"),
        format!("uid=1; gg_channel={channel}")
    );

    // Logged in on dev: its cookies reach the browser renamed, every attribute kept, and
    // leave stable's session alone.
    let r = browse(&site, &mut jar, "/login");
    assert_eq!(r.body_text(), "dev");
    assert_eq!(
        r.header_all("set-cookie"),
        [
            format!("gg.dev.{DEV_LOGIN}"),
            "gg.dev.theme=dark; Path=/".to_string()
        ]
    );
    assert_eq!(jar.get("SESSION"), Some("stable-1"));
    assert_eq!(jar.get("gg.dev.SESSION"), Some("dev-1"));
    browse(&site, &mut jar, "/");
    assert_eq!(
        last_cookie(&site.dev, "/"),
        format!("uid=1; gg_channel={channel}; SESSION=dev-1; theme=dark")
    );

    // Back to stable (automatic): stable's session is intact, dev's cookies are not sent.
    choose(&site, &mut jar, "automatic");
    assert_eq!(jar.get("gg_channel"), None);
    assert_eq!(browse(&site, &mut jar, "/").body_text(), "stable");
    assert_eq!(
        last_cookie(&site.stable, "/"),
        "uid=1; SESSION=stable-1; theme=light"
    );

    // And dev again: dev's session is where it was.
    choose(&site, &mut jar, "dev");
    let channel = jar.get("gg_channel").expect("a channel cookie").to_string();
    assert_eq!(browse(&site, &mut jar, "/").body_text(), "dev");
    assert_eq!(
        last_cookie(&site.dev, "/"),
        format!("uid=1; SESSION=dev-1; theme=dark; gg_channel={channel}")
    );

    // A dev logout deletes dev's session only.
    let r = browse(&site, &mut jar, "/logout");
    assert_eq!(
        r.header_all("set-cookie"),
        ["gg.dev.SESSION=; Max-Age=0; Path=/; Domain=.example.com"]
    );
    assert_eq!(
        (jar.get("gg.dev.SESSION"), jar.get("SESSION")),
        (None, Some("stable-1"))
    );

    // Neither ever saw the other's session.
    assert!(
        !everything_seen(&site.dev).contains("stable-1"),
        "{}",
        everything_seen(&site.dev)
    );
    assert!(
        !everything_seen(&site.stable).contains("dev-1"),
        "{}",
        everything_seen(&site.stable)
    );
    assert!(
        !everything_seen(&site.stable).contains("gg."),
        "{}",
        everything_seen(&site.stable)
    );
    assert_eq!(cookies_metric(&site, "dev", "renamed"), 3.0);
    // Restored: SESSION and theme on two requests, then SESSION and theme for the logout.
    assert_eq!(cookies_metric(&site, "dev", "restored"), 6.0);
    // Stable, once dev logged in: gg.dev.SESSION and gg.dev.theme removed from one request.
    assert_eq!(cookies_metric(&site, "stable", "removed"), 2.0);
}

#[test]
fn several_cookie_headers_reach_the_upstream_as_one() {
    let site = site("");
    let mut jar = Jar::with(&[("uid", "1")]);
    choose(&site, &mut jar, "qa");
    let channel = jar.get("gg_channel").unwrap().to_string();
    // HTTP/2 clients send one `cookie` header per cookie; this is the same over HTTP/1.1.
    let raw = format!(
        "GET /cart HTTP/1.1\r\nHost: {HOST}\r\nCookie: uid=1; gg.qa.a=1\r\nCookie: SESSION=s; gg.dev.SESSION=d\r\nCookie: gg_channel={channel}\r\nCookie: gg.qa.b=2\r\nConnection: close\r\n\r\n"
    );
    let r = http_request(site.gg.proxy, raw.as_bytes()).unwrap();
    assert_eq!(r.body_text(), "qa");
    assert_eq!(
        site.qa.seen_cookies("/cart"),
        [[format!("uid=1; a=1; gg_channel={channel}; b=2")]]
    );
    // To a shared version, several headers without gg.* are joined too (RFC 9113 8.2.3: an
    // HTTP/1.1 hop gets one Cookie header)...
    let raw = format!(
        "GET /cart HTTP/1.1\r\nHost: {HOST}\r\nCookie: uid=5\r\nCookie: SESSION=s\r\nConnection: close\r\n\r\n"
    );
    http_request(site.gg.proxy, raw.as_bytes()).unwrap();
    assert_eq!(site.stable.seen_cookies("/cart"), [["uid=5; SESSION=s"]]);
    // ... and when a gg.* cookie has to go.
    let raw = format!(
        "GET /cart HTTP/1.1\r\nHost: {HOST}\r\nCookie: uid=5\r\nCookie: gg.qa.a=1\r\nCookie: SESSION=s\r\nConnection: close\r\n\r\n"
    );
    http_request(site.gg.proxy, raw.as_bytes()).unwrap();
    assert_eq!(site.stable.seen_cookies("/cart")[1], ["uid=5; SESSION=s"]);
}

#[test]
fn a_dev_user_falling_back_to_stable_never_sends_devs_cookies_to_stable() {
    let site = site("");
    site.stable
        .set_cookies_on("/api/orders", &["SESSION=stable-2; Path=/"]);
    site.stable
        .set_cookies_on("/shop", &["SESSION=stable-3; Path=/"]);
    let mut jar = Jar::with(&[("uid", "1"), ("SESSION", "stable-1")]);
    choose(&site, &mut jar, "dev");
    jar.0.push(("gg.dev.SESSION".into(), "dev-1".into()));
    let channel = jar.get("gg_channel").unwrap().to_string();
    let want = format!("uid=1; SESSION=stable-1; gg_channel={channel}");

    // The api service has no dev group: stable serves (no_group), with stable's cookies,
    // and its Set-Cookie is not renamed (the version that serves decides).
    let r = browse(&site, &mut jar, "/api/orders");
    assert_eq!(r.body_text(), "stable");
    assert_eq!(r.header("x-seen-version").as_deref(), Some("stable"));
    assert_eq!(r.header_all("set-cookie"), ["SESSION=stable-2; Path=/"]);
    assert_eq!(last_cookie(&site.stable, "/api/orders"), want);

    // Dev's group refuses connections: retried on stable (connect), the same way.
    site.dev.stop();
    let r = browse(&site, &mut jar, "/shop");
    assert_eq!(r.body_text(), "stable");
    assert_eq!(r.header_all("set-cookie"), ["SESSION=stable-3; Path=/"]);
    let seen = last_cookie(&site.stable, "/shop");
    assert_eq!(names(&seen), ["uid", "gg_channel", "SESSION"], "{seen}");
    assert!(
        !everything_seen(&site.stable).contains("dev-1"),
        "{}",
        everything_seen(&site.stable)
    );
    let metrics = site.gg.scrape();
    for reason in ["no_group", "connect"] {
        assert_eq!(
            metric(
                &metrics,
                "graygate_fallbacks_total",
                &[("from", "dev"), ("reason", reason)]
            ),
            Some(1.0),
            "{reason}"
        );
    }
}

#[test]
fn a_forged_namespaced_cookie_toward_a_shared_version_is_removed() {
    let site = site("");
    let r = get(
        site.gg.proxy,
        HOST,
        "/",
        &[(
            "Cookie",
            b"SESSION=s; gg.dev.SESSION=forged; __Host-gg.qa.SID=x; theme=light",
        )],
    );
    assert_eq!(r.body_text(), "stable");
    assert_eq!(last_cookie(&site.stable, "/"), "SESSION=s; theme=light");
    // Only forged ones: no Cookie header at all.
    get(
        site.gg.proxy,
        HOST,
        "/only",
        &[("Cookie", b"gg.dev.SESSION=forged")],
    );
    assert_eq!(site.stable.seen_cookies("/only"), [Vec::<String>::new()]);
    assert_eq!(cookies_metric(&site, "stable", "removed"), 3.0);
    // A forged cookie does not move the user to dev either.
    assert_eq!(site.dev.requests(), 0);
}

#[test]
fn fifty_set_cookie_headers_from_dev_are_all_renamed_and_graygates_own_is_not() {
    // A sticky split sets graygate's channel cookie on the very response dev answers.
    let site = site("  - { name: try-dev, when: { header: { X-Try: dev } }, split: { by: random, sticky: true, weights: { dev: 1 } } }\n");
    let fifty: Vec<String> = (0..50)
        .map(|i| format!("c{i}={i}; Path=/; HttpOnly"))
        .collect();
    let refs: Vec<&str> = fifty.iter().map(String::as_str).collect();
    site.dev.set_cookies_on("/many", &refs);
    let r = get(
        site.gg.proxy,
        HOST,
        "/many",
        &[("Cookie", b"uid=1"), ("X-Try", b"dev")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body_text(), "dev");
    let set = r.header_all("set-cookie");
    assert_eq!(set.len(), 51, "{set:?}");
    let want: Vec<String> = (0..50)
        .map(|i| format!("gg.dev.c{i}={i}; Path=/; HttpOnly"))
        .collect();
    assert_eq!(set[..50], want[..]);
    assert!(set[50].starts_with("gg_channel=dev."), "{}", set[50]);
    assert_eq!(cookies_metric(&site, "dev", "renamed"), 50.0);
}

#[test]
fn an_over_long_or_invalid_set_cookie_is_dropped_and_counted_never_truncated() {
    let site = site("");
    // "gg.dev." (7) + name + value: 4096 bytes at most, as browsers keep.
    let fits = format!("ok={}; Path=/", "v".repeat(4096 - 7 - 2));
    let over = format!("big={}; Path=/", "v".repeat(4096 - 7 - 3 + 1));
    site.dev
        .set_cookies_on("/big", &[&fits, &over, "bad name=1; Path=/", "fine=1"]);
    let mut jar = Jar::with(&[("uid", "1")]);
    choose(&site, &mut jar, "dev");
    let r = browse(&site, &mut jar, "/big");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_text(), "dev");
    assert_eq!(
        r.header_all("set-cookie"),
        [format!("gg.dev.{fits}"), "gg.dev.fine=1".to_string()]
    );
    assert_eq!(cookies_metric(&site, "dev", "renamed"), 2.0);
    assert_eq!(cookies_metric(&site, "dev", "dropped_too_long"), 1.0);
    assert_eq!(cookies_metric(&site, "dev", "dropped_invalid"), 1.0);
    // The kept one comes back to dev whole.
    browse(&site, &mut jar, "/next");
    let seen = last_cookie(&site.dev, "/next");
    assert!(
        seen.contains(&format!("ok={}", "v".repeat(4087))),
        "{} bytes",
        seen.len()
    );
    assert_eq!(names(&seen), ["uid", "gg_channel", "ok", "fine"]);
}
