//! Cookie lookup across every `Cookie` header, tolerant of malformed pairs.
//!
//! HTTP/2 clients may split cookies over several headers, and real traffic carries pairs
//! without `=`, stray spaces, quoted values and bytes that are not UTF-8. A lookup scans the
//! headers in place: no map is built per request, and a pair that cannot be read is skipped.

use http::header::COOKIE;
use http::HeaderMap;

/// Values longer than this are ignored.
pub const MAX_COOKIE_VALUE_LEN: usize = 4096;

/// The value of the first well-formed cookie `name`, across all `Cookie` headers: the
/// first pair (as [`pairs`] and [`split_pair`] cut them) named `name` whose value, once
/// unquoted, is at most [`MAX_COOKIE_VALUE_LEN`] bytes of UTF-8.
///
/// Found without cutting every pair: the name's first byte is searched for (SIMD,
/// `memchr`, nothing to build per call), and an occurrence of the name counts only where a
/// pair starts before it and `=` follows it, as a property test against the cutting
/// definition checks.
pub fn find<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let name = name.as_bytes();
    headers
        .get_all(COOKIE)
        .iter()
        .find_map(|value| find_in(value.as_bytes(), name))
}

/// [`find`] in one header value, by searching for `name`.
fn find_in<'a>(value: &'a [u8], name: &[u8]) -> Option<&'a str> {
    let Some(&first) = name.first() else {
        return find_by_pairs(value, name);
    };
    for at in memchr::memchr_iter(first, value) {
        if !value[at..].starts_with(name) {
            continue;
        }
        // A pair starts before the name: only whitespace since the last `;` (or the start).
        let before = value[..at].trim_ascii_end();
        if before.last().is_some_and(|&b| b != b';') {
            continue;
        }
        // `=` follows it, after whitespace.
        let after = value[at + name.len()..].trim_ascii_start();
        let Some(rest) = after.strip_prefix(b"=") else {
            continue;
        };
        let end = memchr::memchr(b';', rest).unwrap_or(rest.len());
        if let Some(found) = cookie_value(rest[..end].trim_ascii()) {
            return Some(found);
        }
    }
    None
}

/// [`find`] in one header value, by cutting it into pairs: the definition.
fn find_by_pairs<'a>(value: &'a [u8], name: &[u8]) -> Option<&'a str> {
    pairs(value).find_map(|pair| {
        let (pair_name, value) = split_pair(pair)?;
        if pair_name != name {
            return None;
        }
        cookie_value(value)
    })
}

/// A pair's trimmed value as a cookie's: unquoted, at most [`MAX_COOKIE_VALUE_LEN`] bytes,
/// UTF-8; `None` otherwise.
fn cookie_value(mut value: &[u8]) -> Option<&str> {
    if value.len() >= 2 && value[0] == b'"' && value[value.len() - 1] == b'"' {
        value = &value[1..value.len() - 1];
    }
    if value.len() > MAX_COOKIE_VALUE_LEN {
        return None;
    }
    std::str::from_utf8(value).ok()
}

/// The pairs of one `Cookie` header value, in order: split at `;`, trimmed, empty ones
/// skipped. A pair may still lack a `=` (see [`split_pair`]).
pub fn pairs(value: &[u8]) -> impl Iterator<Item = &[u8]> + Clone + '_ {
    value
        .split(|&b| b == b';')
        .map(<[u8]>::trim_ascii)
        .filter(|pair| !pair.is_empty())
}

/// A pair's name and value, split at its first `=` and each trimmed; `None` without `=`.
pub fn split_pair(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = pair.iter().position(|&b| b == b'=')?;
    Some((pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    proptest::proptest! {
        /// The search finds what cutting into pairs finds, on headers made of pieces that
        /// make names, separators, spaces, quotes and lookalikes meet.
        #[test]
        fn search_finds_what_pairs_find(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    "uid", "uid", "x", "=", "=", ";", "; ", " ", "\t", "\"", "4", "ab", "uidx",
                    "myuid", "\u{e9}",
                ]),
                0..24,
            ),
            name in proptest::sample::select(vec!["uid", "x", "ab", "u"]),
        ) {
            let value: String = pieces.concat();
            proptest::prop_assert_eq!(
                find_in(value.as_bytes(), name.as_bytes()),
                find_by_pairs(value.as_bytes(), name.as_bytes()),
                "in {:?}", value
            );
        }
    }

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(COOKIE, HeaderValue::from_bytes(v).unwrap());
        }
        map
    }

    #[test]
    fn finds_across_headers() {
        let h = headers(&[b"a=1; b=2", b"uid=42"]);
        assert_eq!(find(&h, "a"), Some("1"));
        assert_eq!(find(&h, "b"), Some("2"));
        assert_eq!(find(&h, "uid"), Some("42"));
        assert_eq!(find(&h, "c"), None);
    }

    #[test]
    fn tolerates_malformed_pairs() {
        let h = headers(&[b";;; junk ; =x; uid ; uid = 7 ;\"q\"; q=\"v\"; z=\xff"]);
        assert_eq!(find(&h, "uid"), Some("7"));
        assert_eq!(find(&h, "q"), Some("v"));
        assert_eq!(find(&h, "z"), None, "non-UTF-8 value is ignored");
        assert_eq!(find(&h, ""), Some("x"));
    }

    #[test]
    fn first_readable_pair_wins() {
        let h = headers(&[b"uid=\xff; uid=8"]);
        assert_eq!(find(&h, "uid"), Some("8"));
    }

    #[test]
    fn pairs_are_trimmed_and_split_at_the_first_equals_sign() {
        let all: Vec<&[u8]> = pairs(b" a=1 ;; b = x=y ;c;  ").collect();
        assert_eq!(all, [&b"a=1"[..], b"b = x=y", b"c"]);
        assert_eq!(split_pair(b"b = x=y"), Some((&b"b"[..], &b"x=y"[..])));
        assert_eq!(split_pair(b"c"), None);
        assert_eq!(split_pair(b"=v"), Some((&b""[..], &b"v"[..])));
    }

    #[test]
    fn overlong_values_are_ignored() {
        let long = format!("uid={}", "1".repeat(MAX_COOKIE_VALUE_LEN + 1));
        let h = headers(&[long.as_bytes()]);
        assert_eq!(find(&h, "uid"), None);
    }
}
