//! Table tests of the rename (responses) and the restore (requests), and of how both are
//! applied to Pingora's headers.

use super::*;
use crate::rules::testing::model;

const DEV: &str = "gg.dev.";

fn isolated(namespace: &str) -> CookiePolicy {
    CookiePolicy::Isolated {
        namespace: namespace.into(),
    }
}

fn passing() -> Vec<Box<str>> {
    vec!["gg_channel".into(), "uid".into(), "tier".into()]
}

fn cookie_headers(values: &[&str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for value in values {
        headers.append(COOKIE, HeaderValue::from_str(value).unwrap());
    }
    headers
}

/// The upstream `Cookie` header and counts for a request with `values`, or `None` when the
/// request goes upstream unchanged.
fn rewritten(policy: &CookiePolicy, values: &[&str]) -> Option<(Option<String>, Counts)> {
    rewrite(policy, &passing(), &cookie_headers(values)).map(|r| {
        let cookie = r.cookie.map(|v| v.to_str().unwrap().to_string());
        (cookie, r.counts)
    })
}

fn counts(restored: u64, removed: u64) -> Counts {
    Counts {
        restored,
        removed,
        ..Counts::default()
    }
}

#[test]
fn rename_keeps_every_attribute_form_byte_for_byte() {
    let table: &[(&str, &str)] = &[
        ("SESSION=abc", "gg.dev.SESSION=abc"),
        ("SESSION=abc; Path=/", "gg.dev.SESSION=abc; Path=/"),
        (
            "SESSION=abc; Domain=.example.com; Path=/app",
            "gg.dev.SESSION=abc; Domain=.example.com; Path=/app",
        ),
        // Deletions are renamed the same way, so they delete the renamed cookie.
        (
            "SESSION=; Max-Age=0; Path=/",
            "gg.dev.SESSION=; Max-Age=0; Path=/",
        ),
        (
            "SESSION=deleted; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/",
            "gg.dev.SESSION=deleted; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/",
        ),
        (
            "SESSION=abc; Max-Age=3600; Secure; HttpOnly",
            "gg.dev.SESSION=abc; Max-Age=3600; Secure; HttpOnly",
        ),
        (
            "SESSION=abc; SameSite=Strict",
            "gg.dev.SESSION=abc; SameSite=Strict",
        ),
        (
            "SESSION=abc; SameSite=None; Secure; Partitioned",
            "gg.dev.SESSION=abc; SameSite=None; Secure; Partitioned",
        ),
        // Odd spacing and case in the attributes are not normalised.
        (
            "SESSION=abc;path=/;  HTTPONLY ;samesite=lax",
            "gg.dev.SESSION=abc;path=/;  HTTPONLY ;samesite=lax",
        ),
        (
            "q=\"quoted value\"; Path=/",
            "gg.dev.q=\"quoted value\"; Path=/",
        ),
        // The name ends at the first `=`; the value keeps the others.
        ("token=a=b==; Path=/", "gg.dev.token=a=b==; Path=/"),
        ("SESSION=", "gg.dev.SESSION="),
        // The name is trimmed (RFC 6265 section 5.2); the value is copied as sent.
        ("  SESSION  =abc; Path=/", "gg.dev.SESSION=abc; Path=/"),
        ("SESSION= abc ;Path=/", "gg.dev.SESSION= abc ;Path=/"),
        ("\tSESSION\t=abc", "gg.dev.SESSION=abc"),
        // A `;` inside what looks like a value ends the pair: the rest are attributes.
        ("a=1;b=2", "gg.dev.a=1;b=2"),
        // Token characters other than letters and digits.
        ("a.b-c_d!#$%&'*+^`|~=1", "gg.dev.a.b-c_d!#$%&'*+^`|~=1"),
        // Browser-enforced prefixes stay in front, so the browser still enforces them.
        (
            "__Host-SID=1; Secure; Path=/",
            "__Host-gg.dev.SID=1; Secure; Path=/",
        ),
        ("__Secure-SID=1; Secure", "__Secure-gg.dev.SID=1; Secure"),
        ("__secure-SID=1", "__secure-gg.dev.SID=1"),
        // A name already in a namespace is namespaced again (and restored as it was).
        ("gg.qa.x=1", "gg.dev.gg.qa.x=1"),
    ];
    for (set_cookie, want) in table {
        let got = rename(DEV, set_cookie.as_bytes())
            .unwrap_or_else(|e| panic!("{set_cookie:?} was dropped: {e:?}"));
        assert_eq!(got.to_str().unwrap(), *want, "{set_cookie:?}");
    }
    // Version names may hold `-` and `_`.
    assert_eq!(
        rename("gg.qa-eu_2.", b"SESSION=1; HttpOnly").unwrap(),
        "gg.qa-eu_2.SESSION=1; HttpOnly"
    );
}

#[test]
fn rename_drops_invalid_names() {
    for set_cookie in [
        &b""[..],
        b"=1",
        b" =1; Path=/",
        b"a b=1",
        b"a,b=1",
        b"a\"b=1",
        b"a(b)=1",
        b"a/b=1",
        b"no-equals-sign",
        b"no-equals; Path=/",
        b"; Path=/",
        "café=1".as_bytes(),
        b"a\xffb=1",
    ] {
        assert_eq!(
            rename(DEV, set_cookie),
            Err(Dropped::InvalidName),
            "{:?}",
            String::from_utf8_lossy(set_cookie)
        );
    }
}

#[test]
fn rename_drops_a_cookie_that_would_pass_4096_bytes_and_never_truncates() {
    // "gg.dev." (7) + "S" (1) + value: 4096 bytes at most, as browsers keep.
    let fits = format!("S={}; Path=/; Domain=.example.com", "v".repeat(4088));
    let renamed = rename(DEV, fits.as_bytes()).unwrap();
    assert_eq!(renamed.as_bytes(), format!("gg.dev.{fits}").as_bytes());
    let over = format!("S={}; Path=/", "v".repeat(4089));
    assert_eq!(rename(DEV, over.as_bytes()), Err(Dropped::TooLong));
    // Attributes do not count (a browser limits each of them on its own).
    let long_path = format!("S={}; Path=/{}", "v".repeat(4088), "p".repeat(900));
    assert!(rename(DEV, long_path.as_bytes()).is_ok());
    // Whitespace around the value does not count either.
    let padded = format!("S=  {}  ", "v".repeat(4088));
    assert!(rename(DEV, padded.as_bytes()).is_ok());
}

#[test]
fn rename_all_keeps_the_order_and_counts_what_it_dropped() {
    let values: Vec<HeaderValue> = [
        "a=1; Path=/".to_string(),
        "bad name=2".to_string(),
        format!("long={}", "x".repeat(5000)),
        "b=; Max-Age=0".to_string(),
    ]
    .iter()
    .map(|v| HeaderValue::from_str(v).unwrap())
    .collect();
    let renamed = rename_all(DEV, &values);
    assert_eq!(
        renamed.values,
        ["gg.dev.a=1; Path=/", "gg.dev.b=; Max-Age=0"]
    );
    assert_eq!(
        renamed.counts,
        Counts {
            renamed: 2,
            dropped_too_long: 1,
            dropped_invalid: 1,
            ..Counts::default()
        }
    );
}

#[test]
fn an_isolated_version_gets_its_own_cookies_back_and_the_passing_ones() {
    let dev = isolated(DEV);
    type Row<'a> = (&'a [&'a str], Option<(Option<&'a str>, Counts)>);
    let table: &[Row] = &[
        (
            &["gg.dev.SESSION=d; SESSION=s; uid=1; gg_channel=c; theme=x; gg.qa.SESSION=q"],
            Some((Some("SESSION=d; uid=1; gg_channel=c"), counts(1, 3))),
        ),
        // A restored cookie wins over a passing one, and over a plain one, of its name.
        (
            &["uid=1; gg.dev.uid=1001"],
            Some((Some("uid=1001"), counts(1, 1))),
        ),
        (
            &["x=plain; gg.dev.x=own"],
            Some((Some("x=own"), counts(1, 1))),
        ),
        // Values are restored as they were: quoted, with `=`, empty.
        (
            &["gg.dev.q=\"a b\"; gg.dev.t=a=b==; gg.dev.e="],
            Some((Some("q=\"a b\"; t=a=b==; e="), counts(3, 0))),
        ),
        (
            &["__Host-gg.dev.SID=1; __secure-gg.dev.S2=2"],
            Some((Some("__Host-SID=1; __secure-S2=2"), counts(2, 0))),
        ),
        // Spacing around the pairs goes; inside a pair it stays.
        (
            &[" ;; gg.dev.a = 1 ;;; uid=7 ; "],
            Some((Some("a = 1; uid=7"), counts(1, 0))),
        ),
        // Several `Cookie` headers (HTTP/2) become one.
        (
            &["gg.dev.a=1", "uid=2; b=3", "gg.dev.c=4"],
            Some((Some("a=1; uid=2; c=4"), counts(2, 1))),
        ),
        // Forged or unreadable names in the namespace are removed, not restored.
        (
            &["gg.dev.=x; gg.dev.a b=1; gg.dev.x; junk; gg.dev"],
            Some((None, counts(0, 5))),
        ),
        // Another version's cookies and the shared session: removed, nothing left.
        (&["SESSION=s; gg.qa.SESSION=q"], Some((None, counts(0, 2)))),
        // Only passing cookies: unchanged (several headers stay as they are).
        (&["uid=1; gg_channel=c", "tier=paid"], None),
        (&[], None),
        (&[" ; "], None),
    ];
    for (values, want) in table {
        let want = want.map(|(cookie, counts)| (cookie.map(str::to_string), counts));
        assert_eq!(rewritten(&dev, values), want, "{values:?}");
    }
    // Another isolated version sees only its own namespace.
    assert_eq!(
        rewritten(
            &isolated("gg.qa."),
            &["gg.dev.SESSION=d; gg.qa.SESSION=q; uid=1"]
        ),
        Some((Some("SESSION=q; uid=1".to_string()), counts(1, 1)))
    );
    // A version whose name extends another's has a namespace of its own.
    assert_eq!(
        rewritten(&isolated("gg.dev-2."), &["gg.dev.a=1; gg.dev-2.b=2"]),
        Some((Some("b=2".to_string()), counts(1, 1)))
    );
}

#[test]
fn a_shared_version_loses_every_namespaced_cookie() {
    let shared = CookiePolicy::Shared;
    type Row<'a> = (&'a [&'a str], Option<(Option<&'a str>, Counts)>);
    let table: &[Row] = &[
        (&["SESSION=s; theme=x; uid=1"], None),
        (&["egg.x=1; gg=1; gg_x=1; ggx.y=1; x=gg.dev.1"], None),
        (&[], None),
        (
            &["SESSION=s; gg.dev.SESSION=d; gg.qa.x=1"],
            Some((Some("SESSION=s"), counts(0, 2))),
        ),
        (
            &["__Host-gg.dev.SID=1; a=1", "__SECURE-gg.qa.x=2"],
            Some((Some("a=1"), counts(0, 2))),
        ),
        (&["gg.dev.SESSION=d"], Some((None, counts(0, 1)))),
        // Junk pairs are kept (a shared version gets the browser's cookies), unless they
        // look namespaced.
        (
            &["junk; gg.dev; a = 1 ;; b=2", "gg.dev.x=1"],
            Some((Some("junk; a = 1; b=2"), counts(0, 2))),
        ),
    ];
    for (values, want) in table {
        let want = want.map(|(cookie, counts)| (cookie.map(str::to_string), counts));
        assert_eq!(rewritten(&shared, values), want, "{values:?}");
    }
    // Bytes that are not UTF-8 skip the quick search, not the look.
    let mut headers = HeaderMap::new();
    headers.append(
        COOKIE,
        HeaderValue::from_bytes(b"a=\xff; gg.dev.x=1").unwrap(),
    );
    let r = rewrite(&shared, &passing(), &headers).unwrap();
    assert_eq!(r.cookie.unwrap().as_bytes(), b"a=\xff");
    headers.insert(COOKIE, HeaderValue::from_bytes(b"a=\xff; b=2").unwrap());
    assert_eq!(rewrite(&shared, &passing(), &headers), None);
    // A passing cookie keeps its name even in the namespace (a channel cookie named so).
    let passing: Vec<Box<str>> = vec!["gg.ch".into()];
    let r = rewrite(&shared, &passing, &cookie_headers(&["gg.ch=c; gg.dev.x=1"])).unwrap();
    assert_eq!(r.cookie.unwrap(), "gg.ch=c");
    let r = rewrite(
        &isolated(DEV),
        &passing,
        &cookie_headers(&["gg.ch=c; gg.dev.x=1"]),
    );
    assert_eq!(r.unwrap().cookie.unwrap(), "gg.ch=c; x=1");
}

#[test]
fn a_renamed_cookie_is_restored_as_the_upstream_set_it() {
    for set_cookie in [
        "SESSION=abc; Path=/",
        "q=\"a b\"",
        "t=a=b==",
        "__Host-SID=1; Secure; Path=/",
        "e=",
    ] {
        let renamed = rename(DEV, set_cookie.as_bytes()).unwrap();
        let pair = renamed.to_str().unwrap().split(';').next().unwrap();
        let back = rewritten(&isolated(DEV), &[pair]).unwrap();
        assert_eq!(
            back.0.as_deref(),
            Some(set_cookie.split(';').next().unwrap()),
            "{set_cookie}"
        );
    }
}

const RULES: &str = "versions:\n  stable: {}\n  dev: { cookies: isolated }\ndefault: stable\n\
    services:\n  web:\n    hosts: [\"*\"]\n    groups:\n      stable: { peers: [\"127.0.0.1:1\"] }\n      dev: { peers: [\"127.0.0.1:2\"] }\n";

fn request(cookies: &[&str]) -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/", None).unwrap();
    for cookie in cookies {
        req.append_header(COOKIE, *cookie).unwrap();
    }
    req
}

fn cookie_values(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

#[test]
fn the_pass_through_path_leaves_the_upstream_request_alone() {
    let rules = model(RULES).rules;
    let stable = rules.version_id("stable").unwrap();
    // One header goes untouched; several (an HTTP/2 client's) are joined with "; " for the
    // HTTP/1.1 hop (RFC 9113 8.2.3), in order, nothing renamed or dropped.
    for sent in [
        &["SESSION=s; theme=x; uid=1"][..],
        &["SESSION=s; theme=x", "uid=1"],
    ] {
        let downstream = request(sent);
        let mut upstream = downstream.clone();
        let counts = apply_to_request(&rules, stable, &downstream.headers, &mut upstream).unwrap();
        assert_eq!(counts, Counts::default(), "{sent:?}");
        assert_eq!(
            cookie_values(&upstream.headers),
            ["SESSION=s; theme=x; uid=1"],
            "{sent:?}"
        );
    }
    let no_cookie = request(&[]);
    let mut upstream = no_cookie.clone();
    apply_to_request(&rules, stable, &no_cookie.headers, &mut upstream).unwrap();
    assert!(!upstream.headers.contains_key(COOKIE));
}

#[test]
fn requests_are_rewritten_into_one_cookie_header_or_none() {
    let rules = model(RULES).rules;
    let passing: Vec<&str> = rules.passing_cookies.iter().map(|n| &**n).collect();
    assert_eq!(passing, ["gg_channel", "uid"]);
    let (stable, dev) = (
        rules.version_id("stable").unwrap(),
        rules.version_id("dev").unwrap(),
    );
    let downstream = request(&["SESSION=s; gg.dev.SESSION=d", "uid=1; gg_channel=c"]);
    let mut upstream = downstream.clone();
    let counts = apply_to_request(&rules, dev, &downstream.headers, &mut upstream).unwrap();
    assert_eq!(
        cookie_values(&upstream.headers),
        ["SESSION=d; uid=1; gg_channel=c"]
    );
    assert_eq!(counts, self::counts(1, 1));
    // The same request served by stable (a fallback): dev's cookie is gone.
    let mut upstream = downstream.clone();
    apply_to_request(&rules, stable, &downstream.headers, &mut upstream).unwrap();
    assert_eq!(
        cookie_values(&upstream.headers),
        ["SESSION=s; uid=1; gg_channel=c"]
    );
    // Nothing left for dev: no Cookie header at all.
    let downstream = request(&["SESSION=s", "theme=x"]);
    let mut upstream = downstream.clone();
    apply_to_request(&rules, dev, &downstream.headers, &mut upstream).unwrap();
    assert!(!upstream.headers.contains_key(COOKIE));
}

#[test]
fn responses_of_an_isolated_version_are_renamed_and_of_a_shared_one_left_alone() {
    let rules = model(RULES).rules;
    let (stable, dev) = (
        rules.version_id("stable").unwrap(),
        rules.version_id("dev").unwrap(),
    );
    let response = || {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.append_header("content-type", "text/plain").unwrap();
        for c in ["SESSION=d; HttpOnly", "bad name=1", "theme=dark; Path=/"] {
            r.append_header(SET_COOKIE, c).unwrap();
        }
        r
    };
    let mut r = response();
    let counts = apply_to_response(&rules, dev, &mut r).unwrap();
    let set: Vec<&str> = r
        .headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        set,
        ["gg.dev.SESSION=d; HttpOnly", "gg.dev.theme=dark; Path=/"]
    );
    assert_eq!((counts.renamed, counts.dropped_invalid), (2, 1));
    assert_eq!(r.headers.get("content-type").unwrap(), "text/plain");

    let mut r = response();
    assert_eq!(
        apply_to_response(&rules, stable, &mut r).unwrap(),
        Counts::default()
    );
    assert_eq!(r.headers.get_all(SET_COOKIE).iter().count(), 3);
}

#[test]
fn fifty_set_cookie_headers_are_all_renamed() {
    let rules = model(RULES).rules;
    let dev = rules.version_id("dev").unwrap();
    let mut r = ResponseHeader::build(200, None).unwrap();
    for i in 0..50 {
        r.append_header(SET_COOKIE, format!("c{i}={i}; Path=/"))
            .unwrap();
    }
    let counts = apply_to_response(&rules, dev, &mut r).unwrap();
    assert_eq!(counts.renamed, 50);
    let set: Vec<String> = r
        .headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = (0..50)
        .map(|i| format!("gg.dev.c{i}={i}; Path=/"))
        .collect();
    assert_eq!(set, want);
}

#[test]
fn counts_map_onto_the_action_labels() {
    let c = Counts {
        renamed: 1,
        restored: 2,
        removed: 3,
        dropped_too_long: 4,
        dropped_invalid: 5,
    };
    let labels: Vec<&str> = c.by_action().iter().map(|(a, _)| *a).collect();
    assert_eq!(labels, ACTIONS);
    assert_eq!(
        c.by_action().iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(actions(&CookiePolicy::Shared), ["removed"]);
    assert_eq!(actions(&isolated(DEV)), ACTIONS);
}
