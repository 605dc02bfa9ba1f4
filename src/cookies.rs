//! Environment-isolated cookies (SPEC section 15): a `cookies: isolated` version keeps its
//! cookies in a namespace of its own in the browser, so switching channels never mixes or
//! loses sessions.
//!
//! Versions that keep their sessions in other stores than production (dev, qa) cannot share
//! the browser's cookies with it: a dev login would overwrite the production `SESSION`, and
//! production would be sent dev's. graygate sits where the cookies pass, so it keeps them
//! apart on the server side, with `HttpOnly`, `Secure` and every other attribute intact
//! (which a copy through the browser's local storage cannot do):
//!
//! - **Responses** served by an isolated version: every `Set-Cookie` is renamed
//!   `gg.{version}.{name}` ([`rename`]); everything after the name is copied byte for byte,
//!   so a deletion (`Max-Age=0`, a past `Expires`) deletes the renamed cookie, and `Domain`
//!   keeps a multi-domain channel group working. A browser-enforced name prefix stays in
//!   front (`__Host-SID` becomes `__Host-gg.dev.SID`), so the browser still enforces it.
//!   graygate's own channel cookie is appended after the rename and never renamed.
//! - **Requests** served by an isolated version ([`rewrite`]): its `gg.{version}.*` cookies
//!   are restored under their own names, the [passing cookies](RuleSet::passing_cookies)
//!   (the channel cookie, the identity cookies) pass unchanged, and every other cookie is
//!   removed. A restored cookie wins over a passing one of the same name: an isolated version
//!   sees only its own. Requests served by a **shared** version lose every `gg.*` cookie
//!   (another version's, or forged by the client) and keep the rest.
//!
//! The version that serves decides, after any fallback: a dev user served by stable because
//! dev's group is down sends stable none of dev's cookies, and stable's answer is not renamed.
//! Routing is unaffected: the facts are read from the request as the browser sent it.
//!
//! **Cost.** Each version's `gg.{version}.` and the passing names are built once per rules
//! generation. A request served by a shared version whose `Cookie` headers hold no `gg.`
//! (every request, when no version is isolated and no client forges) costs one vectorised
//! substring search of the cookie bytes: [`rewrite`] answers `None` before it allocates
//! anything, and the upstream request is not touched ([`apply_to_request`]); `benches/
//! cookies.rs` measures it. Responses of shared versions are not looked at. Only isolated
//! versions, and requests carrying `gg.*` cookies, pay for a rewrite: one buffer for the new
//! `Cookie` header, one per renamed `Set-Cookie`.
//!
//! **Bad input** never fails a request: an unreadable pair in a rewritten request is removed;
//! a `Set-Cookie` whose name is not an RFC 9110 token, or whose renamed name and value would
//! exceed the 4096 bytes a browser keeps, is dropped (never truncated) and counted.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, COOKIE, SET_COOKIE};
use memchr::memmem;
use once_cell::sync::Lazy;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::facts::cookie::{pairs, split_pair};
use crate::facts::VersionId;
use crate::metrics::Metrics;
use crate::rules::model::{CookiePolicy, RuleSet};

/// What every version's namespace starts with: `gg.{version}.`.
pub const NAMESPACE_ROOT: &[u8] = b"gg.";

/// The most a browser keeps of one cookie's name and value together (Chrome and Firefox
/// reject a longer cookie whole). A renamed cookie over it is dropped.
pub const MAX_COOKIE_SIZE: usize = 4096;

/// Name prefixes whose rules the browser enforces (RFC 6265bis section 4.1.3), matched
/// ignoring ASCII case: the namespace goes after them.
const BROWSER_PREFIXES: [&[u8]; 2] = [b"__Secure-", b"__Host-"];

/// The `action` label values of `graygate_cookies_rewritten_total`.
pub const ACTIONS: [&str; 5] = [
    "renamed",
    "restored",
    "removed",
    "dropped_too_long",
    "dropped_invalid",
];

/// The actions a version of this policy can count (the series created at 0 for it).
pub fn actions(policy: &CookiePolicy) -> &'static [&'static str] {
    match policy {
        CookiePolicy::Isolated { .. } => &ACTIONS,
        // A shared version only ever loses the `gg.*` cookies a request carries.
        CookiePolicy::Shared => &ACTIONS[2..3],
    }
}

/// Why a `Set-Cookie` of an isolated version was not passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// No `=` in its name-value pair, or a name that is empty or not a token.
    InvalidName,
    /// The renamed name and the value exceed [`MAX_COOKIE_SIZE`].
    TooLong,
}

/// Cookies handled for one request or response, by action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// `Set-Cookie`s renamed into the serving version's namespace.
    pub renamed: u64,
    /// Request cookies restored from the serving version's namespace.
    pub restored: u64,
    /// Request cookies the serving version may not see.
    pub removed: u64,
    /// `Set-Cookie`s dropped because the renamed cookie would be too long.
    pub dropped_too_long: u64,
    /// `Set-Cookie`s dropped because their name is invalid.
    pub dropped_invalid: u64,
}

impl Counts {
    /// Each count with its `action` label, in the order of [`ACTIONS`].
    pub fn by_action(&self) -> [(&'static str, u64); 5] {
        [
            (ACTIONS[0], self.renamed),
            (ACTIONS[1], self.restored),
            (ACTIONS[2], self.removed),
            (ACTIONS[3], self.dropped_too_long),
            (ACTIONS[4], self.dropped_invalid),
        ]
    }

    /// Adds the counts to `graygate_cookies_rewritten_total` of `version`.
    pub fn record(&self, metrics: &Metrics, version: &str) {
        for (action, n) in self.by_action() {
            if n > 0 {
                metrics.record_cookies(version, action, n);
            }
        }
    }
}

/// A request's cookies as the serving version gets them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The one `Cookie` header to send upstream; `None` when no cookie is left.
    pub cookie: Option<HeaderValue>,
    /// What was done.
    pub counts: Counts,
}

/// `Set-Cookie` values as the browser gets them from an isolated version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Renamed {
    /// The renamed values, in the upstream's order (dropped ones left out).
    pub values: Vec<HeaderValue>,
    /// What was done.
    pub counts: Counts,
}

/// A token (RFC 9110 section 5.6.2): what RFC 6265 allows as a cookie name.
fn is_token(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| is_tchar(b))
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The length of a browser-enforced prefix (`__Secure-`, `__Host-`) `name` starts with.
fn browser_prefix_len(name: &[u8]) -> usize {
    BROWSER_PREFIXES
        .iter()
        .find(|p| name.len() >= p.len() && name[..p.len()].eq_ignore_ascii_case(p))
        .map_or(0, |p| p.len())
}

/// A pair's name: before its first `=`, trimmed; the whole pair when it has none.
fn name_of(pair: &[u8]) -> &[u8] {
    split_pair(pair).map_or(pair, |(name, _)| name)
}

/// Whether a cookie is in some version's namespace (`gg.*`, after a browser prefix). Works
/// on a trimmed pair as on its name: the pair starts with the name.
fn is_namespaced(pair: &[u8]) -> bool {
    pair[browser_prefix_len(pair)..].starts_with(NAMESPACE_ROOT)
}

/// `false` when no cookie of a `Cookie` header value can be in a namespace: no `gg.` in it.
/// One vectorised substring search over the bytes (its searcher built once per process, not
/// per request, and no UTF-8 check) spares the common request the pair-by-pair look.
fn may_be_namespaced(value: &[u8]) -> bool {
    static NAMESPACE: Lazy<memmem::Finder<'static>> =
        Lazy::new(|| memmem::Finder::new(NAMESPACE_ROOT));
    NAMESPACE.find(value).is_some()
}

/// One `Set-Cookie` value renamed into `namespace` (`gg.{version}.`).
///
/// The name is the part of the name-value pair (up to the first `;`) before its first `=`,
/// trimmed (RFC 6265 section 5.2); it must be a token. Everything after that `=` (the value,
/// then every attribute) is copied byte for byte.
pub fn rename(namespace: &str, set_cookie: &[u8]) -> Result<HeaderValue, Dropped> {
    let pair_end = set_cookie
        .iter()
        .position(|&b| b == b';')
        .unwrap_or(set_cookie.len());
    let (pair, attributes) = set_cookie.split_at(pair_end);
    let eq = pair
        .iter()
        .position(|&b| b == b'=')
        .ok_or(Dropped::InvalidName)?;
    let name = pair[..eq].trim_ascii();
    if !is_token(name) {
        return Err(Dropped::InvalidName);
    }
    let value = &pair[eq + 1..];
    let namespace = namespace.as_bytes();
    if namespace.len() + name.len() + value.trim_ascii().len() > MAX_COOKIE_SIZE {
        return Err(Dropped::TooLong);
    }
    let (browser_prefix, rest) = name.split_at(browser_prefix_len(name));
    let mut out = Vec::with_capacity(namespace.len() + set_cookie.len());
    out.extend_from_slice(browser_prefix);
    out.extend_from_slice(namespace);
    out.extend_from_slice(rest);
    out.push(b'=');
    out.extend_from_slice(value);
    out.extend_from_slice(attributes);
    // Bytes of a header value with a token added: always a valid header value.
    HeaderValue::from_maybe_shared(Bytes::from(out)).map_err(|_| Dropped::InvalidName)
}

/// Every `Set-Cookie` value renamed into `namespace`; dropped ones are counted.
pub fn rename_all<'a>(
    namespace: &str,
    set_cookies: impl IntoIterator<Item = &'a HeaderValue>,
) -> Renamed {
    let mut renamed = Renamed::default();
    for value in set_cookies {
        match rename(namespace, value.as_bytes()) {
            Ok(value) => {
                renamed.values.push(value);
                renamed.counts.renamed += 1;
            }
            Err(Dropped::TooLong) => renamed.counts.dropped_too_long += 1,
            Err(Dropped::InvalidName) => renamed.counts.dropped_invalid += 1,
        }
    }
    renamed
}

/// A pair of `namespace` restored: `(browser prefix, the pair from its restored name on)`,
/// or `None` when the pair is not in the namespace or its restored name is not a token.
fn restore<'p>(namespace: &[u8], pair: &'p [u8]) -> Option<(&'p [u8], &'p [u8])> {
    let (name, _) = split_pair(pair)?;
    let split = browser_prefix_len(name);
    let own = name[split..].strip_prefix(namespace)?;
    if !own.iter().all(|&b| is_tchar(b)) || (split == 0 && own.is_empty()) {
        return None;
    }
    // `pair` starts with `name` (pairs are trimmed), so the restored pair is its tail.
    Some((&pair[..split], &pair[split + namespace.len()..]))
}

/// Appends `parts` to a `Cookie` header value being built, as one more pair.
fn push_pair(out: &mut Vec<u8>, parts: &[&[u8]]) {
    if !out.is_empty() {
        out.extend_from_slice(b"; ");
    }
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// What a request's `Cookie` headers (all of them: HTTP/2 sends several) become for a
/// version of `policy`, with `passing` the names every version receives; `None` when they
/// go upstream unchanged.
pub fn rewrite(
    policy: &CookiePolicy,
    passing: &[Box<str>],
    headers: &HeaderMap,
) -> Option<Rewritten> {
    let all_pairs = || {
        headers
            .get_all(COOKIE)
            .iter()
            .flat_map(|value| pairs(value.as_bytes()))
    };
    let passes = |name: &[u8]| passing.iter().any(|p| p.as_bytes() == name);
    let mut counts = Counts::default();
    let mut out = Vec::new();
    match policy {
        CookiePolicy::Shared => {
            let hidden = |pair: &[u8]| is_namespaced(pair) && !passes(name_of(pair));
            // The common case: nothing to hide, nothing allocated, nothing touched.
            let values = headers.get_all(COOKIE);
            if !values.iter().any(|v| may_be_namespaced(v.as_bytes())) || !all_pairs().any(hidden) {
                return None;
            }
            for pair in all_pairs() {
                if hidden(pair) {
                    counts.removed += 1;
                } else {
                    push_pair(&mut out, &[pair]);
                }
            }
        }
        CookiePolicy::Isolated { namespace } => {
            let namespace = namespace.as_bytes();
            // A restored cookie hides a passing one of the same name.
            let restored: Vec<(&[u8], &[u8])> = all_pairs()
                .filter(|pair| !passes(name_of(pair)))
                .filter_map(|pair| restore(namespace, pair))
                .map(|(prefix, rest)| (prefix, name_of(rest)))
                .collect();
            let restored_as = |name: &[u8]| {
                restored.iter().any(|(prefix, rest)| {
                    name.len() == prefix.len() + rest.len()
                        && name.starts_with(prefix)
                        && name.ends_with(rest)
                })
            };
            for pair in all_pairs() {
                let name = name_of(pair);
                if passes(name) {
                    if restored_as(name) {
                        counts.removed += 1;
                    } else {
                        push_pair(&mut out, &[pair]);
                    }
                } else if let Some((prefix, rest)) = restore(namespace, pair) {
                    counts.restored += 1;
                    push_pair(&mut out, &[prefix, rest]);
                } else {
                    counts.removed += 1;
                }
            }
            if counts == Counts::default() {
                return None;
            }
        }
    }
    // Trimmed pieces of header values joined by "; ": always a valid header value.
    let cookie = (!out.is_empty())
        .then(|| HeaderValue::from_maybe_shared(Bytes::from(out)).ok())
        .flatten();
    Some(Rewritten { cookie, counts })
}

/// Gives the upstream request the cookies the `serving` version may see: when they differ
/// from the browser's `downstream` ones, every `Cookie` header is replaced by one (or none,
/// when no cookie is left). Returns what was done.
pub fn apply_to_request(
    rules: &RuleSet,
    serving: VersionId,
    downstream: &HeaderMap,
    upstream: &mut RequestHeader,
) -> pingora::Result<Counts> {
    let policy = &rules.version(serving).cookies;
    let Some(rewritten) = rewrite(policy, &rules.passing_cookies, downstream) else {
        join_cookie_headers(upstream)?;
        return Ok(Counts::default());
    };
    upstream.remove_header(&COOKIE);
    if let Some(cookie) = rewritten.cookie {
        upstream.insert_header(COOKIE, cookie)?;
    }
    Ok(rewritten.counts)
}

/// Joins several `Cookie` headers (HTTP/2 clients split them, one per cookie) into one with
/// `; `, as RFC 9113 section 8.2.3 requires before an HTTP/1.1 hop; one header is left as is.
fn join_cookie_headers(upstream: &mut RequestHeader) -> pingora::Result<()> {
    let mut values = upstream.headers.get_all(COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return Ok(());
    };
    let mut joined = first.as_bytes().to_vec();
    for value in upstream.headers.get_all(COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(value.as_bytes());
    }
    upstream.insert_header(COOKIE, joined)
}

/// Renames every `Set-Cookie` of a response from an isolated `serving` version (nothing is
/// done for a shared one). Returns what was done.
pub fn apply_to_response(
    rules: &RuleSet,
    serving: VersionId,
    response: &mut ResponseHeader,
) -> pingora::Result<Counts> {
    let Some(namespace) = rules.version(serving).cookies.namespace() else {
        return Ok(Counts::default());
    };
    if !response.headers.contains_key(SET_COOKIE) {
        return Ok(Counts::default());
    }
    let renamed = rename_all(namespace, response.headers.get_all(SET_COOKIE));
    response.remove_header(&SET_COOKIE);
    for value in renamed.values {
        response.append_header(SET_COOKIE, value)?;
    }
    Ok(renamed.counts)
}

#[cfg(test)]
mod tests;
