//! Sticky channels, the self-service page and the mobile address API against the real
//! server: choosing a channel routes the next requests, forged and restricted choices are
//! refused or ignored, sticky splits keep users, and the address API follows the decision.

mod support;

use support::graygate::Graygate;
use support::{get, http_request, Backend, Response};

const PAGE: &str = "/.canary-deployment";
const HOST: &str = "www.example.com";

struct Site {
    /// Kept alive for the test's duration; it serves the default version.
    _stable: Backend,
    canary: Backend,
    beta: Backend,
    dev: Backend,
    gg: Graygate,
}

fn site(extra_rules: &str) -> Site {
    let (stable, canary, beta, dev) = (
        Backend::start("stable"),
        Backend::start("canary"),
        Backend::start("beta"),
        Backend::start("dev"),
    );
    let rules = format!(
        "versions:\n  stable: {{}}\n  canary: {{}}\n  beta: {{ selectable: true, description: \"opt-in beta channel\" }}\n  dev: {{ selectable: true, restricted: true }}\n\
         default: stable\n\
         identity: {{ uid: [cookie:uid, header:X-User-Id, query:uid], internal: {{ uids: [1] }} }}\n\
         channels: {{ cookie: gg_channel, max_age: 30d, domain: .example.com }}\n\
         address_api: {{ path: /.graygate/address, ttl: 60s }}\n\
         services:\n  web:\n    hosts: [\"*\"]\n    groups:\n      stable: {{ peers: [\"{}\"], public_addresses: [\"https://s.example.com\"] }}\n      canary: {{ peers: [\"{}\"], public_addresses: [\"https://c.example.com\"] }}\n      beta: {{ peers: [\"{}\"] }}\n      dev: {{ peers: [\"{}\"] }}\n\
         rules:\n  - {{ name: follow-channel, when: {{ channel: any }}, version: $channel }}\n  - {{ name: tail, when: {{ uid_tail: [3] }}, version: canary }}\n{extra_rules}",
        stable.addr(),
        canary.addr(),
        beta.addr(),
        dev.addr()
    );
    let gg = Graygate::start(&rules);
    Site {
        _stable: stable,
        canary,
        beta,
        dev,
        gg,
    }
}

/// POSTs the page's form with `fields`, from `origin` when given.
fn choose(site: &Site, fields: &str, origin: Option<&str>, cookie: Option<&str>) -> Response {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let raw = format!(
        "POST {PAGE} HTTP/1.1\r\nHost: {HOST}\r\n{origin}{cookie}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{fields}",
        fields.len()
    );
    http_request(site.gg.proxy, raw.as_bytes()).expect("POST the channel page")
}

/// `name=value` of the response's Set-Cookie for the channel cookie.
fn channel_cookie(r: &Response) -> Option<String> {
    r.header_all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("gg_channel="))
        .map(|c| c.split(';').next().unwrap_or_default().to_string())
}

fn with_cookie(site: &Site, cookie: &str) -> Response {
    get(site.gg.proxy, HOST, "/", &[("Cookie", cookie.as_bytes())])
}

#[test]
fn choosing_beta_on_the_page_routes_the_next_requests_to_beta() {
    let site = site("");
    let page = get(site.gg.proxy, HOST, PAGE, &[("Cookie", b"uid=5")]);
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/html"));
    let html = page.body_text();
    assert!(html.contains(r#"id="current">stable<"#), "{html}");
    assert!(html.contains(r#"value="beta""#) && html.contains(r#"value="automatic""#));
    assert!(
        !html.contains(r#"value="dev""#),
        "a restricted version is not offered to a non-internal user"
    );
    assert!(
        !html.contains("<script"),
        "the page works without JavaScript"
    );

    let r = choose(
        &site,
        "version=beta&return_to=%2Fshop",
        Some("https://www.example.com"),
        Some("uid=5"),
    );
    assert_eq!(r.status, 303, "{}", r.body_text());
    assert_eq!(r.header("location").as_deref(), Some("/shop"));
    let set = r.header_all("set-cookie").join(" | ");
    for attribute in [
        "HttpOnly",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=2592000",
        "Domain=.example.com",
    ] {
        assert!(set.contains(attribute), "{attribute} missing in {set}");
    }
    let cookie = channel_cookie(&r).expect("a channel cookie");
    for _ in 0..5 {
        let r = with_cookie(&site, &format!("uid=5; {cookie}"));
        assert_eq!(r.body_text(), "beta");
        assert_eq!(r.header("x-seen-rule").as_deref(), Some("follow-channel"));
    }
    // The cookie is bound to uid 5: another user presenting it is ignored.
    assert_eq!(
        with_cookie(&site, &format!("uid=6; {cookie}")).body_text(),
        "stable"
    );

    let json = get(
        site.gg.proxy,
        HOST,
        PAGE,
        &[
            ("Cookie", format!("uid=5; {cookie}").as_bytes()),
            ("Accept", b"application/json"),
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
    assert_eq!(v["version"], "beta");
    assert_eq!(v["channel"], "beta");
    assert_eq!(v["automatic"], false);

    // "automatic" clears the choice.
    let r = choose(
        &site,
        "version=automatic",
        None,
        Some(&format!("uid=5; {cookie}")),
    );
    assert_eq!(r.status, 303);
    assert!(r
        .header_all("set-cookie")
        .iter()
        .any(|c| c.starts_with("gg_channel=;") && c.contains("Max-Age=0")));
    assert_eq!(site.beta.requests(), 5);
}

#[test]
fn restricted_forged_and_cross_site_choices_are_refused() {
    let site = site("");
    // A non-internal user cannot choose dev: 403 and no cookie.
    let r = choose(&site, "version=dev", None, Some("uid=5"));
    assert_eq!(r.status, 403);
    assert_eq!(channel_cookie(&r), None);
    // Unknown and non-selectable versions.
    assert_eq!(
        choose(&site, "version=nightly", None, Some("uid=5")).status,
        400
    );
    assert_eq!(
        choose(&site, "version=canary", None, Some("uid=5")).status,
        403
    );
    // A cross-site form post and an open redirect.
    let r = choose(
        &site,
        "version=beta",
        Some("https://evil.example.org"),
        Some("uid=5"),
    );
    assert_eq!((r.status, channel_cookie(&r)), (403, None));
    assert_eq!(
        choose(&site, "version=beta", Some("null"), None).status,
        403
    );
    for target in [
        "https%3A%2F%2Fevil.example.org%2F",
        "%2F%2Fevil.example.org",
        "javascript%3Aalert(1)",
    ] {
        let r = choose(
            &site,
            &format!("version=beta&return_to={target}"),
            None,
            None,
        );
        assert_eq!(
            (r.status, channel_cookie(&r)),
            (403, None),
            "return_to={target}"
        );
    }
    // Same site under the cookie domain is fine.
    let r = choose(
        &site,
        "version=beta&return_to=https%3A%2F%2Fm.example.com%2F",
        Some("https://m.example.com"),
        None,
    );
    assert_eq!(r.status, 303);

    // An internal user may choose dev, and is routed there.
    let r = choose(&site, "version=dev", None, Some("uid=1"));
    assert_eq!(r.status, 303);
    let dev_cookie = channel_cookie(&r).unwrap();
    assert_eq!(
        with_cookie(&site, &format!("uid=1; {dev_cookie}")).body_text(),
        "dev"
    );

    // Hand-made and tampered cookies are ignored: routed as if absent.
    let (version_expiry, mac) = dev_cookie["gg_channel=".len()..].rsplit_once('.').unwrap();
    let forged = [
        "gg_channel=dev.9999999999.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_string(),
        format!(
            "gg_channel=beta.{}.{mac}",
            version_expiry.split_once('.').unwrap().1
        ),
        format!("gg_channel={version_expiry}.{}", &mac[..mac.len() - 1]),
        "gg_channel=dev".to_string(),
        "gg_channel=".to_string(),
    ];
    for cookie in forged {
        let r = with_cookie(&site, &format!("uid=5; {cookie}"));
        assert_eq!(
            (r.body_text(), r.header("x-seen-rule")),
            ("stable".to_string(), Some("default".to_string())),
            "{cookie}"
        );
    }
    // The internal user's own dev cookie presented by a non-internal user: ignored (other uid).
    assert_eq!(
        with_cookie(&site, &format!("uid=5; {dev_cookie}")).body_text(),
        "stable"
    );
    assert_eq!(site.dev.requests(), 1);
}

#[test]
fn a_sticky_random_split_keeps_a_user_on_one_version() {
    let site = site("  - { name: anonymous, when: { has_uid: false }, split: { by: random, sticky: true, weights: { canary: 50, stable: 50 } } }\n");
    for visitor in 0..10 {
        let first = get(site.gg.proxy, HOST, "/", &[]);
        let version = first.body_text();
        let cookie = channel_cookie(&first)
            .unwrap_or_else(|| panic!("visitor {visitor}: the first decision sets the cookie"));
        assert!(
            cookie.starts_with(&format!("gg_channel={version}.")),
            "{cookie} for {version}"
        );
        // The business service saw the decision on that very first request.
        assert_eq!(
            first.header("x-seen-version").as_deref(),
            Some(version.as_str())
        );
        for _ in 0..100 {
            let r = with_cookie(&site, &cookie);
            assert_eq!(r.body_text(), version, "visitor {visitor} moved");
            assert_eq!(
                channel_cookie(&r),
                None,
                "the cookie is set once, not on every response"
            );
        }
    }
}

#[test]
fn the_address_api_answers_each_versions_addresses() {
    let site = site("");
    let ask = |uid: &str| {
        let r = get(
            site.gg.proxy,
            HOST,
            &format!("/.graygate/address?service=web&uid={uid}"),
            &[],
        );
        assert_eq!(r.status, 200, "{}", r.body_text());
        assert_eq!(r.header("cache-control").as_deref(), Some("max-age=60"));
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()
    };
    let canary = ask("13");
    assert_eq!(canary["version"], "canary");
    assert_eq!(
        canary["addresses"],
        serde_json::json!(["https://c.example.com"])
    );
    assert_eq!(canary["rule"], "tail");
    assert_eq!(canary["ttl_seconds"], 60);
    let stable = ask("14");
    assert_eq!(stable["version"], "stable");
    assert_eq!(
        stable["addresses"],
        serde_json::json!(["https://s.example.com"])
    );
    // The uid may come from any uid source, e.g. a header.
    let r = get(
        site.gg.proxy,
        HOST,
        "/.graygate/address?service=web",
        &[("X-User-Id", b"23")],
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["version"],
        "canary"
    );
    // A group with no public_addresses hands out its peers.
    let beta_cookie = {
        let r = choose(&site, "version=beta", None, Some("uid=8"));
        channel_cookie(&r).unwrap()
    };
    let r = get(
        site.gg.proxy,
        HOST,
        "/.graygate/address?service=web",
        &[("Cookie", format!("uid=8; {beta_cookie}").as_bytes())],
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["version"], "beta");
    assert_eq!(
        v["addresses"],
        serde_json::json!([format!("http://{}", site.beta.addr())])
    );
    // Health fallback: the canary group down means the default group's addresses.
    site.canary.stop();
    let mut rules_file =
        std::fs::read_to_string(site.gg.dir.path().join("rules/rules.yaml")).unwrap();
    assert!(rules_file.contains("canary: { peers:"));
    rules_file = rules_file.replace(
        &format!("canary: {{ peers: [\"{}\"]", site.canary.addr()),
        &format!("canary: {{ peers: [\"{}\"], health_check: {{ type: tcp, interval: 100ms, timeout: 100ms }}", site.canary.addr()),
    );
    std::fs::write(site.gg.dir.path().join("rules/rules.yaml"), rules_file).unwrap();
    support::assert_eventually(
        std::time::Duration::from_secs(5),
        "the canary group is seen down",
        || {
            let v = ask("13");
            v["version"] == "stable" && v["fallback"] == true && v["decided"] == "canary"
        },
    );
    assert_eq!(
        ask("13")["addresses"],
        serde_json::json!(["https://s.example.com"])
    );
    // Errors.
    assert_eq!(
        get(site.gg.proxy, HOST, "/.graygate/address", &[]).status,
        400
    );
    assert_eq!(
        get(site.gg.proxy, HOST, "/.graygate/address?service=nope", &[]).status,
        404
    );
}
