//! Cookie lookup across every `Cookie` header, tolerant of malformed pairs.
//!
//! HTTP/2 clients may split cookies over several headers, and real traffic carries pairs
//! without `=`, stray spaces, quoted values and bytes that are not UTF-8. A lookup scans the
//! headers in place: no map is built per request, and a pair that cannot be read is skipped.

use http::header::COOKIE;
use http::HeaderMap;

/// Values longer than this are ignored.
pub const MAX_COOKIE_VALUE_LEN: usize = 4096;

/// The value of the first well-formed cookie `name`, across all `Cookie` headers.
pub fn find<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            if pair[..eq].trim_ascii() != name.as_bytes() {
                return None;
            }
            let mut value = pair[eq + 1..].trim_ascii();
            if value.len() >= 2 && value[0] == b'"' && value[value.len() - 1] == b'"' {
                value = &value[1..value.len() - 1];
            }
            if value.len() > MAX_COOKIE_VALUE_LEN {
                return None;
            }
            std::str::from_utf8(value).ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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
    fn overlong_values_are_ignored() {
        let long = format!("uid={}", "1".repeat(MAX_COOKIE_VALUE_LEN + 1));
        let h = headers(&[long.as_bytes()]);
        assert_eq!(find(&h, "uid"), None);
    }
}
