//! The filter chain: turns a request into the facts the rules decide on.
//!
//! [`Facts::gather`] reads the uid, tier and internal flag once per request, borrowing from
//! the request wherever it can; cookie, header and query lookups scan the request in place
//! (no per-request maps are built). Bad input is ignored, never fatal: a malformed cookie
//! pair, a header that is not UTF-8, an over-long or non-printable uid are treated as absent.
//! [`client`] says who the client is (the peer, or what trusted proxies declare); the
//! request's [`Arrival`] (listener and scheme) comes from the local address it reached.

pub mod bucket;
pub mod client;
pub mod cookie;
pub mod identity;
pub mod rollout;

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::HeaderName;
use http::{HeaderMap, Method};

use identity::{Identity, Source, Tier};
pub use rollout::RolloutNow;

/// Longest uid accepted; a longer one is ignored (routed as if absent).
pub const MAX_UID_LEN: usize = 128;

/// Index of a version in the rules' versions table (`RuleSet::versions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionId(pub u16);

impl VersionId {
    /// The index into the versions table.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A request's scheme, from the listener it arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheme {
    /// Plain HTTP.
    #[default]
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// `http` or `https`, in any case.
    pub fn parse(text: &str) -> Option<Scheme> {
        if text.eq_ignore_ascii_case("http") {
            Some(Scheme::Http)
        } else if text.eq_ignore_ascii_case("https") {
            Some(Scheme::Https)
        } else {
            None
        }
    }

    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Index of a listener in the configured listeners (`config::Config::listeners`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ListenerId(pub u16);

impl ListenerId {
    /// The index into the listeners table.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// The listener a request arrived on, and so its scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Arrival {
    /// The listener.
    pub listener: ListenerId,
    /// Its scheme.
    pub scheme: Scheme,
}

/// The host a request is for, without port: the URI authority (HTTP/2, absolute form) or
/// the `Host` header.
pub fn request_host(req: &http::request::Parts) -> &str {
    let raw = req
        .uri
        .host()
        .or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("");
    strip_port(raw)
}

/// `host` without a `:port` (and without the brackets of an IPv6 literal).
pub fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The parts of a request the rules may look at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The method.
    pub method: &'a Method,
    /// The host without port.
    pub host: &'a str,
    /// The path, without query.
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    /// All request headers.
    pub headers: &'a HeaderMap,
    /// The client's address.
    pub client_ip: Option<IpAddr>,
    /// The listener it arrived on.
    pub arrival: Arrival,
}

impl<'a> RequestView<'a> {
    /// The value of a header, if present once or more and valid visible ASCII (first value).
    pub fn header(&self, name: &HeaderName) -> Option<&'a str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The value of a cookie, across every `Cookie` header.
    pub fn cookie(&self, name: &str) -> Option<&'a str> {
        cookie::find(self.headers, name)
    }

    /// The percent-decoded value of a query parameter (first occurrence).
    pub fn query_param(&self, name: &str) -> Option<Cow<'a, str>> {
        let query = self.query?;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if key != name {
                return None;
            }
            // Decoding borrows its input when there was nothing to decode.
            match percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .ok()?
            {
                Cow::Borrowed(_) => Some(Cow::Borrowed(value)),
                Cow::Owned(decoded) => Some(Cow::Owned(decoded)),
            }
        })
    }

    /// The value at `source`.
    pub fn source(&self, source: &Source) -> Option<Cow<'a, str>> {
        match source {
            Source::Cookie(name) => self.cookie(name).map(Cow::Borrowed),
            Source::Header(name) => self.header(name).map(Cow::Borrowed),
            Source::Query(name) => self.query_param(name),
        }
    }
}

/// The user's id as found in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uid<'a> {
    /// The uid text.
    pub text: Cow<'a, str>,
    /// Its value when it is all decimal digits and fits in a u64.
    pub number: Option<u64>,
}

impl<'a> Uid<'a> {
    /// Accepts 1 to [`MAX_UID_LEN`] visible ASCII characters other than `"`, `,`, `;`, `\`.
    pub fn parse(text: Cow<'a, str>) -> Option<Uid<'a>> {
        let valid = !text.is_empty()
            && text.len() <= MAX_UID_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\'));
        if !valid {
            return None;
        }
        let number = if text.bytes().all(|b| b.is_ascii_digit()) {
            text.parse::<u64>().ok()
        } else {
            None
        };
        Some(Uid { text, number })
    }

    /// The last decimal digit of a numeric uid.
    pub fn tail(&self) -> Option<u8> {
        self.number?;
        self.text.bytes().last().map(|b| b - b'0')
    }
}

/// The stored assignment of the request's uid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assigned {
    /// No uid: nothing to look up.
    NoUid,
    /// Not looked up yet; a rule needing it asks for the lookup.
    Unresolved,
    /// Looked up: the stored version, or `None` (nothing stored, an unknown version, or the
    /// store failed or timed out).
    Known(Option<VersionId>),
}

/// Everything the rules decide on.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// The request itself.
    pub req: RequestView<'a>,
    /// The uid, if the request carries a valid one.
    pub uid: Option<Uid<'a>>,
    /// Paid or trial.
    pub tier: Tier,
    /// `tier` may still become paid through the store's paid set.
    pub tier_unresolved: bool,
    /// Internal user (uid or network).
    pub internal: bool,
    /// `internal` may still become true through the store's internal set.
    pub internal_unresolved: bool,
    /// The uid's stored assignment.
    pub assigned: Assigned,
    /// The version of a valid channel cookie (set by the caller, which holds the key).
    pub channel: Option<VersionId>,
    /// Where each rollout stands, by rollout index (set by the caller from the runtime
    /// state); a rollout missing here stands at its start.
    pub rollouts: &'a [RolloutNow],
    /// The emergency override's version (set by the caller from the runtime state): every
    /// request goes there, no rule is evaluated.
    pub override_version: Option<VersionId>,
}

impl<'a> Facts<'a> {
    /// Runs the filter chain over a request.
    pub fn gather(identity: &Identity, req: RequestView<'a>) -> Facts<'a> {
        let uid = identity
            .uid
            .iter()
            .find_map(|source| req.source(source).and_then(Uid::parse));
        let uid_text = uid.as_ref().map(|u| &*u.text);
        let tier = if uid_text.is_some_and(|t| identity.tier.paid_uids.contains(t)) {
            Tier::Paid
        } else {
            identity
                .tier
                .sources
                .iter()
                .find_map(|source| req.source(source).and_then(|v| Tier::parse(&v)))
                .unwrap_or(identity.tier.default)
        };
        let internal = uid_text.is_some_and(|t| identity.internal.uids.contains(t))
            || req
                .client_ip
                .is_some_and(|ip| identity.internal.cidrs.iter().any(|net| net.contains(&ip)));
        let has_uid = uid.is_some();
        Facts {
            req,
            tier_unresolved: has_uid && tier != Tier::Paid && identity.tier.redis_set.is_some(),
            internal_unresolved: has_uid && !internal && identity.internal.redis_set.is_some(),
            assigned: if has_uid {
                Assigned::Unresolved
            } else {
                Assigned::NoUid
            },
            channel: None,
            rollouts: &[],
            override_version: None,
            uid,
            tier,
            internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::identity::{InternalPolicy, TierPolicy};
    use super::*;

    #[test]
    fn hosts_without_ports() {
        assert_eq!(strip_port("www.example.com:8080"), "www.example.com");
        assert_eq!(strip_port("www.example.com"), "www.example.com");
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("[::1]"), "::1");
        assert_eq!(strip_port("a:b"), "a:b");
        assert_eq!(strip_port(""), "");
    }

    fn identity() -> Identity {
        Identity {
            uid: vec![
                Source::Cookie("uid".into()),
                Source::Header(HeaderName::from_static("x-user-id")),
                Source::Query("uid".into()),
            ],
            tier: TierPolicy {
                sources: vec![Source::Cookie("tier".into())],
                paid_uids: ["10001".into()].into_iter().collect(),
                default: Tier::Trial,
                redis_set: None,
            },
            internal: InternalPolicy {
                uids: ["1".into()].into_iter().collect(),
                cidrs: vec!["10.0.0.0/8".parse().unwrap()],
                redis_set: None,
            },
        }
    }

    fn facts_for<R>(
        headers: &[(&str, &[u8])],
        query: Option<&str>,
        ip: &str,
        f: impl FnOnce(Facts) -> R,
    ) -> R {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(value).unwrap(),
            );
        }
        let req = RequestView {
            method: &Method::GET,
            host: "www.example.com",
            path: "/",
            query,
            headers: &map,
            client_ip: ip.parse().ok(),
            arrival: Arrival::default(),
        };
        f(Facts::gather(&identity(), req))
    }

    #[test]
    fn uid_sources_in_order() {
        facts_for(
            &[("cookie", b"uid=42"), ("x-user-id", b"7")],
            Some("uid=9"),
            "1.2.3.4",
            |f| {
                assert_eq!(f.uid.unwrap().text, "42");
            },
        );
        facts_for(&[("x-user-id", b"7")], Some("uid=9"), "1.2.3.4", |f| {
            assert_eq!(f.uid.unwrap().number, Some(7));
        });
        facts_for(&[], Some("a=1&uid=9%31"), "1.2.3.4", |f| {
            assert_eq!(f.uid.unwrap().text, "91");
        });
        facts_for(&[], Some("uid=123&b"), "1.2.3.4", |f| {
            assert_eq!(f.uid.unwrap().text, "123");
        });
    }

    #[test]
    fn bad_uids_are_ignored() {
        let long = "9".repeat(10 * 1024);
        facts_for(&[("x-user-id", long.as_bytes())], None, "1.2.3.4", |f| {
            assert!(f.uid.is_none())
        });
        facts_for(&[("x-user-id", b"\xff\xfe")], None, "1.2.3.4", |f| {
            assert!(f.uid.is_none())
        });
        facts_for(&[("cookie", b"uid=")], None, "1.2.3.4", |f| {
            assert!(f.uid.is_none())
        });
        // A bad first source does not stop the next one from being used.
        facts_for(
            &[("cookie", b"uid=\"a b\""), ("x-user-id", b"15")],
            None,
            "1.2.3.4",
            |f| assert_eq!(f.uid.unwrap().text, "15"),
        );
        facts_for(&[("x-user-id", b"abc")], None, "1.2.3.4", |f| {
            let uid = f.uid.unwrap();
            assert_eq!((uid.number, uid.tail()), (None, None));
        });
        facts_for(
            &[("x-user-id", b"99999999999999999999999")],
            None,
            "1.2.3.4",
            |f| {
                // Digits beyond u64: a uid, but not a number, so no tail.
                assert_eq!(f.uid.unwrap().tail(), None);
            },
        );
    }

    #[test]
    fn tail_of_numeric_uid() {
        let uid = Uid::parse(Cow::Borrowed("1003")).unwrap();
        assert_eq!(uid.tail(), Some(3));
        assert_eq!(Uid::parse(Cow::Borrowed("0")).unwrap().tail(), Some(0));
    }

    #[test]
    fn tier_and_internal() {
        facts_for(
            &[("cookie", b"uid=10001; tier=trial")],
            None,
            "1.2.3.4",
            |f| {
                assert_eq!(
                    f.tier,
                    Tier::Paid,
                    "paid_uids win over what the request says"
                );
            },
        );
        facts_for(&[("cookie", b"uid=5; tier=PAID")], None, "1.2.3.4", |f| {
            assert_eq!(f.tier, Tier::Paid)
        });
        facts_for(&[("cookie", b"uid=5; tier=gold")], None, "1.2.3.4", |f| {
            assert_eq!(f.tier, Tier::Trial)
        });
        facts_for(&[("cookie", b"uid=1")], None, "1.2.3.4", |f| {
            assert!(f.internal)
        });
        facts_for(&[("cookie", b"uid=5")], None, "10.1.2.3", |f| {
            assert!(f.internal)
        });
        facts_for(&[("cookie", b"uid=5")], None, "11.1.2.3", |f| {
            assert!(!f.internal)
        });
    }
}
