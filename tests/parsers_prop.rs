//! Property tests of every parser of request data and of the rules compiler (SPEC section 14):
//! random bytes and random structures never panic, and each gives its documented result.
//!
//! | parser | documented result for bad input |
//! | --- | --- |
//! | `facts::cookie::find` (Cookie headers) | a malformed pair is skipped; a value is UTF-8, unquoted, at most 4096 bytes |
//! | `facts::Uid::parse` (uid sources) | `None` unless 1-128 visible ASCII characters without `"` `,` `;` `\`; a tail only for digits |
//! | `RequestView::query_param`, `source` | `None` for a missing or undecodable parameter |
//! | `Facts::gather` (every source at once) | facts from what is readable, defaults otherwise |
//! | `ChannelKey::verify` (channel cookie) | `None` unless signed by the key, unexpired, for this uid |
//! | `web::form_pairs` (form bodies) | pairs of what it can decode (lossy UTF-8), empty pairs dropped |
//! | `config::parse_size` (`limits.max_body_size`) | an error naming the text |
//! | `rules::compile` | `Ok`, or `Err` with every message non-empty and its line inside the file |
//!
//! The PROXY protocol header parser has its own property tests beside it
//! (`src/edge/proxy_protocol.rs`: random headers never panic, wait or over-read).

use std::borrow::Cow;
use std::path::PathBuf;

use graygate::channels::ChannelKey;
use graygate::config::parse_size;
use graygate::facts::cookie::{self, MAX_COOKIE_VALUE_LEN};
use graygate::facts::{Arrival, Facts, RequestView, Uid};
use graygate::rules::model::Listeners;
use graygate::rules::{compile, RuleSource};
use graygate::web::form_pairs;
use http::header::COOKIE;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;

/// Header values as a client may send them: any bytes a header value can carry.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => any::<u8>().prop_map(|b| if b == b'\t' || (b >= 0x20 && b != 0x7f) { b } else { b'x' }),
            1 => prop::sample::select(vec![b';', b'=', b'"', b' ', b',', b'%']),
        ],
        0..200,
    )
}

fn cookie_headers(values: &[Vec<u8>]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for v in values {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            map.append(COOKIE, v);
        }
    }
    map
}

/// A token-like name or value, as a well-behaved client writes them.
fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,20}"
}

const RULES: &str = "versions: { stable: {}, canary: {} }
default: stable
identity:
  uid: [cookie:uid, header:X-User-Id, query:uid]
  tier: { sources: [cookie:tier, header:X-Tier], paid_uids: [\"7\"], default: trial }
  internal: { uids: [\"42\"], cidrs: [10.0.0.0/8] }
services:
  web: { hosts: [\"*\"], groups: { stable: { peers: [\"127.0.0.1:1\"] }, canary: { peers: [\"127.0.0.1:2\"] } } }
rules:
  - { name: tail, when: { uid_tail: [3] }, version: canary }
";

fn compiled(
    text: &str,
) -> Result<graygate::rules::LoadedRules, graygate::diagnostics::Diagnostics> {
    compile(
        &[RuleSource {
            path: PathBuf::from("rules.yaml"),
            text: text.to_string(),
        }],
        &Listeners::new([]),
    )
}

/// The query parameter `name` of `query`, as a uid source reads it.
fn query_param(query: &str, name: &str) -> Option<String> {
    let headers = HeaderMap::new();
    let view = RequestView {
        method: &Method::GET,
        host: "a",
        path: "/",
        query: Some(query),
        headers: &headers,
        client_ip: None,
        arrival: Arrival::default(),
    };
    view.query_param(name).map(Cow::into_owned)
}

proptest! {
    // No regression files: a failure prints its minimal input, which becomes a table case.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(400) })]

    #[test]
    fn cookie_lookup_never_panics_and_returns_readable_values(
        values in prop::collection::vec(header_bytes(), 0..4),
        name in prop_oneof![token(), Just(String::new()), Just("uid".to_string())],
    ) {
        let headers = cookie_headers(&values);
        if let Some(value) = cookie::find(&headers, &name) {
            prop_assert!(value.len() <= MAX_COOKIE_VALUE_LEN);
            prop_assert!(!value.starts_with(' ') && !value.ends_with(' '));
        }
        for v in &values {
            for pair in cookie::pairs(v) {
                prop_assert!(!pair.is_empty());
                if let Some((n, val)) = cookie::split_pair(pair) {
                    prop_assert!(n.len() + val.len() < pair.len());
                }
            }
        }
    }

    #[test]
    fn a_well_formed_cookie_is_found_among_garbage(
        noise in header_bytes(),
        name in token(),
        value in token(),
    ) {
        // The noise is a header of its own after the pair's (HTTP/2 splits cookies so):
        // whatever it holds, the pair is found.
        let pair = format!("{name}={value}").into_bytes();
        let headers = cookie_headers(&[pair, noise.clone()]);
        prop_assert_eq!(cookie::find(&headers, &name), Some(value.as_str()));
    }

    #[test]
    fn uids_are_accepted_only_as_documented(text in ".{0,140}") {
        match Uid::parse(Cow::Borrowed(&text)) {
            Some(uid) => {
                prop_assert!(!text.is_empty() && text.len() <= 128);
                prop_assert!(text.bytes().all(|b| b.is_ascii_graphic() && !b"\",;\\".contains(&b)));
                match uid.tail() {
                    Some(tail) => {
                        prop_assert!(text.bytes().all(|b| b.is_ascii_digit()));
                        prop_assert_eq!(u32::from(tail), u32::from(text.as_bytes()[text.len() - 1] - b'0'));
                    }
                    None => prop_assert!(uid.number.is_none()),
                }
            }
            None => prop_assert!(
                text.is_empty()
                    || text.len() > 128
                    || text.bytes().any(|b| !b.is_ascii_graphic() || b"\",;\\".contains(&b))
            ),
        }
    }

    #[test]
    fn query_parameters_decode_or_are_absent(
        query in "[ -~]{0,120}",
        name in prop_oneof![token(), Just("uid".to_string())],
        value in "[ -~]{0,30}",
    ) {
        // Random text: no panic.
        let _ = query_param(&query, &name);
        // An encoded pair first in the query comes back decoded.
        let encoded = percent_encoding::utf8_percent_encode(&value, percent_encoding::NON_ALPHANUMERIC);
        let built = format!("{name}={encoded}&{query}");
        prop_assert_eq!(query_param(&built, &name), Some(value));
    }

    #[test]
    fn gathering_facts_from_random_requests_never_panics(
        cookies in prop::collection::vec(header_bytes(), 0..3),
        user_header in header_bytes(),
        tier_header in header_bytes(),
        query in prop::option::of("[ -~]{0,80}"),
    ) {
        let rules = compiled(RULES).expect("the test rules compile");
        let mut headers = cookie_headers(&cookies);
        for (name, value) in [("x-user-id", &user_header), ("x-tier", &tier_header)] {
            if let Ok(v) = HeaderValue::from_bytes(value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        }
        let view = RequestView {
            method: &Method::GET,
            host: "a",
            path: "/",
            query: query.as_deref(),
            headers: &headers,
            client_ip: Some("10.1.2.3".parse().unwrap()),
            arrival: Arrival::default(),
        };
        let facts = Facts::gather(&rules.model.rules.identity, view);
        if let Some(uid) = &facts.uid {
            prop_assert!(Uid::parse(uid.text.clone()).is_some());
        }
        prop_assert!(facts.internal, "10.0.0.0/8 is internal whatever the headers say");
    }

    #[test]
    fn channel_cookies_verify_only_when_signed(
        value in "[ -~]{0,200}",
        // Version names are letters, digits, '-' and '_' (the compiler refuses others).
        version in "[A-Za-z0-9_-]{1,20}",
        uid in prop::option::of(token()),
        other_uid in token(),
    ) {
        let key = ChannelKey::new(b"0123456789abcdef0123456789abcdef").expect("a 32-byte key");
        let now = 1_700_000_000;
        // Random text never verifies.
        prop_assert_eq!(key.verify("gg_channel", &value, now, uid.as_deref()), None);
        // A signed value verifies for its uid, and only while it has not expired.
        let signed = key.sign("gg_channel", &version, now + 60, uid.as_deref());
        prop_assert_eq!(key.verify("gg_channel", &signed, now, uid.as_deref()), Some(version.as_str()));
        prop_assert_eq!(key.verify("gg_channel", &signed, now + 60, uid.as_deref()), None);
        if uid.as_deref() != Some(other_uid.as_str()) {
            prop_assert_eq!(key.verify("gg_channel", &signed, now, Some(&other_uid)), None);
        }
        // Any one byte changed: refused (or, for a change inside the version, another text).
        let mut tampered = signed.clone().into_bytes();
        let at = tampered.len() - 1;
        tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        prop_assert_eq!(key.verify("gg_channel", &tampered, now, uid.as_deref()), None);
    }

    #[test]
    fn form_bodies_decode_what_they_can(
        body in "[ -~]{0,200}",
        pairs in prop::collection::vec((token(), "[ -~]{0,20}"), 0..5),
    ) {
        // Random text: no panic, and never a pair with an empty name and value.
        prop_assert!(form_pairs(&body).len() <= body.split('&').count());
        let encoded: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)))
            .collect();
        let decoded = form_pairs(&encoded.join("&"));
        prop_assert_eq!(decoded, pairs);
    }

    #[test]
    fn sizes_parse_or_name_the_text(text in "[ -~]{0,20}") {
        match parse_size(&text) {
            Ok(_) => prop_assert!(text.trim().starts_with(|c: char| c.is_ascii_digit())),
            Err(message) => prop_assert!(message.contains(&text)),
        }
    }
}

/// A YAML structure built from the rules vocabulary, so random trees reach deep into the
/// compiler (not just its YAML parser). Peers are IP literals or text that is no `host:port`:
/// nothing is looked up in DNS.
fn yaml_value() -> impl Strategy<Value = serde_yaml::Value> {
    let key = prop::sample::select(vec![
        "versions",
        "default",
        "identity",
        "uid",
        "tier",
        "internal",
        "services",
        "hosts",
        "groups",
        "peers",
        "rules",
        "name",
        "when",
        "version",
        "uid_tail",
        "split",
        "by",
        "weights",
        "stable",
        "canary",
        "path_prefix",
        "health_check",
        "type",
        "interval",
        "timeouts",
        "connect",
        "protocol",
        "tls",
        "sni",
        "ca",
        "max_body_size",
        "goals",
        "channels",
        "cookie",
        "path",
        "any",
        "all",
        "not",
        "header",
        "method",
        "client_ip",
        "rollout",
        "listener",
        "selectable",
        "lb",
        "sticky",
    ]);
    let leaf = prop_oneof![
        Just(serde_yaml::Value::Null),
        any::<bool>().prop_map(serde_yaml::Value::Bool),
        any::<i64>().prop_map(|n| serde_yaml::Value::Number(n.into())),
        prop::sample::select(vec![
            "stable",
            "canary",
            "127.0.0.1:1",
            "[::1]:2",
            "uid",
            "cookie:uid",
            "header:X-User-Id",
            "query:uid",
            "*",
            "/",
            "/api",
            "10ms",
            "2s",
            "10MB",
            "http1",
            "h2",
            "h2c",
            "tcp",
            "http",
            "GET",
            "10.0.0.0/8",
            "paid",
            "trial",
            "",
            "x",
            "-1",
            "nope",
        ])
        .prop_map(|s| serde_yaml::Value::String(s.to_string())),
        "[ -~]{0,12}"
            .prop_filter("no host:port (DNS)", |s| !s.contains(':'))
            .prop_map(serde_yaml::Value::String),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_yaml::Value::Sequence),
            prop::collection::vec((key.clone(), inner), 0..5).prop_map(|entries| {
                serde_yaml::Value::Mapping(
                    entries
                        .into_iter()
                        .map(|(k, v)| (serde_yaml::Value::String(k.to_string()), v))
                        .collect(),
                )
            }),
        ]
    })
}

fn assert_clear_errors(text: &str) -> Result<(), TestCaseError> {
    if let Err(diags) = compiled(text) {
        let lines = text.lines().count().max(1);
        prop_assert!(
            diags.items().iter().next().is_some(),
            "an Err without a diagnostic"
        );
        for d in diags.items() {
            prop_assert!(!d.message.trim().is_empty(), "an empty message");
            if let Some(line) = d.line {
                prop_assert!(
                    line >= 1 && line <= lines + 1,
                    "line {} of {}: {}",
                    line,
                    lines,
                    d.message
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(300) })]

    #[test]
    fn the_compiler_takes_random_bytes(text in prop::collection::vec(any::<u8>(), 0..300)) {
        assert_clear_errors(&String::from_utf8_lossy(&text))?;
    }

    #[test]
    fn the_compiler_takes_random_structures(tree in yaml_value()) {
        let text = serde_yaml::to_string(&tree).unwrap_or_default();
        assert_clear_errors(&text)?;
    }

    #[test]
    fn the_compiler_takes_random_sections(
        sections in prop::collection::vec(
            (prop::sample::select(vec!["versions", "default", "identity", "services", "rules", "goals", "channels"]), yaml_value()),
            1..6,
        ),
    ) {
        // Top-level keys the file may hold, random values under them: the errors come from
        // each section's own checks.
        let tree = serde_yaml::Value::Mapping(
            sections
                .into_iter()
                .map(|(k, v)| (serde_yaml::Value::String(k.to_string()), v))
                .collect(),
        );
        let text = serde_yaml::to_string(&tree).unwrap_or_default();
        assert_clear_errors(&text)?;
    }

    #[test]
    fn the_compiler_takes_mutations_of_good_rules(
        cut in 0usize..400,
        insert in "[ -~\n]{0,12}",
    ) {
        let at = RULES.char_indices().map(|(i, _)| i).nth(cut % RULES.len()).unwrap_or(0);
        let text = format!("{}{insert}{}", &RULES[..at], &RULES[at..]);
        assert_clear_errors(&text)?;
    }
}
