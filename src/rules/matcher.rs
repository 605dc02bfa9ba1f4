//! What a header, cookie or query value must be (SPEC section 16), compiled once per
//! generation and evaluated without allocating.
//!
//! A value is written as a string (equal; `"*"` = present), a list of strings (equal to any),
//! or a map of matchers that must all hold: `regex`, `prefix`, `suffix`, `contains`, `in`,
//! `gt`/`gte`/`lt`/`lte`, `version_gt`/`version_gte`/`version_lt`/`version_lte`, `absent`.
//!
//! Bad input never panics and has one documented result:
//!
//! - a header sent twice: the first value counts;
//! - a value longer than [`MAX_VALUE_LEN`] bytes, or not UTF-8 (for headers: not visible
//!   ASCII), is absent: no matcher but `absent: true` holds;
//! - a number is `-?DIGITS` or `-?DIGITS.DIGITS`: no `+`, no exponent, no spaces, no `.5`;
//!   anything else is not a number and no numeric matcher holds (compared as an `f64`);
//! - a dotted version is `DIGITS(.DIGITS)*`, each part at most 19 digits: `5..2`, `v5.2`,
//!   `5.2-beta`, `5.` and an empty value are not versions and no version matcher holds;
//!   missing parts count as 0, so `5.2` equals `5.2.0`, and `5.10` is above `5.9`.

use std::cmp::Ordering;
use std::fmt;

use regex::RegexSet;

/// Longest value a matcher looks at; a longer one is treated as absent.
pub const MAX_VALUE_LEN: usize = 4096;

/// The matcher keys of the map form, in the order messages list them.
pub const MATCHER_KEYS: &str = "regex, prefix, suffix, contains, in, gt, gte, lt, lte, version_gt, version_gte, version_lt, version_lte, absent";

/// What a header, cookie or query parameter must be.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    /// `"*"`: present with any value.
    Present,
    /// Equal to one of these.
    AnyOf(Vec<Box<str>>),
    /// `{ absent: true }`: not sent (or too long, or not UTF-8).
    Absent,
    /// A matcher map: present, and every matcher holds.
    All(Vec<Matcher>),
}

/// One matcher of the map form.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// `regex`: one of the regexes matches (unanchored unless written so).
    Regex(RegexSet),
    /// `prefix`: starts with this.
    Prefix(Box<str>),
    /// `suffix`: ends with this.
    Suffix(Box<str>),
    /// `contains`: contains this.
    Contains(Box<str>),
    /// `in`: equal to one of these.
    In(Vec<Box<str>>),
    /// `gt`..`lte`: a number compared with the bound.
    Number(Bound<f64>),
    /// `version_gt`..`version_lte`: a dotted version compared with the bound.
    Version(Bound<Box<[u64]>>),
}

/// How a value compares with a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// Above.
    Gt,
    /// At or above.
    Gte,
    /// Below.
    Lt,
    /// At or below.
    Lte,
}

impl Cmp {
    /// Whether `ordering` (value against bound) satisfies this comparison.
    fn accepts(self, ordering: Ordering) -> bool {
        match self {
            Cmp::Gt => ordering == Ordering::Greater,
            Cmp::Gte => ordering != Ordering::Less,
            Cmp::Lt => ordering == Ordering::Less,
            Cmp::Lte => ordering != Ordering::Greater,
        }
    }

    /// Why a value failed it: "is below" for `gte`, and so on.
    fn failed(self) -> &'static str {
        match self {
            Cmp::Gt => "is not above",
            Cmp::Gte => "is below",
            Cmp::Lt => "is not below",
            Cmp::Lte => "is above",
        }
    }

    /// Whether this is a lower bound (`gt`, `gte`).
    pub fn is_lower(self) -> bool {
        matches!(self, Cmp::Gt | Cmp::Gte)
    }

    /// Whether the bound itself is excluded (`gt`, `lt`).
    pub fn is_strict(self) -> bool {
        matches!(self, Cmp::Gt | Cmp::Lt)
    }
}

/// A comparison with a bound parsed at load, and the bound as written for messages.
#[derive(Debug, Clone)]
pub struct Bound<T> {
    /// The comparison.
    pub cmp: Cmp,
    /// The parsed bound.
    pub value: T,
    /// The bound as written.
    pub text: Box<str>,
}

impl ValueMatch {
    /// Whether a value (absent = `None`) matches.
    pub fn matches(&self, value: Option<&str>) -> bool {
        match (self, value.filter(|v| v.len() <= MAX_VALUE_LEN)) {
            (ValueMatch::Absent, value) => value.is_none(),
            (_, None) => false,
            (ValueMatch::Present, Some(_)) => true,
            (ValueMatch::AnyOf(values), Some(v)) => values.iter().any(|x| **x == *v),
            (ValueMatch::All(matchers), Some(v)) => matchers.iter().all(|m| m.matches(v)),
        }
    }

    /// Why `value` does not match, after the value's name: `is "no"`, `"5.1.9" is below
    /// 5.2`; `None` when it matches.
    pub fn why_not(&self, value: Option<&str>) -> Option<String> {
        if self.matches(value) {
            return None;
        }
        let value = value.filter(|v| v.len() <= MAX_VALUE_LEN);
        Some(match (self, value) {
            (ValueMatch::Absent, value) => format!("is present ({})", Shown(value)),
            (_, None) => "is absent".into(),
            (ValueMatch::All(matchers), Some(v)) => match matchers.iter().find(|m| !m.matches(v)) {
                Some(m) => m.why_not(v),
                None => format!("is {}", Shown(Some(v))),
            },
            (_, value) => format!("is {}", Shown(value)),
        })
    }
}

impl Matcher {
    /// Whether a present value matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Regex(set) => set.is_match(value),
            Matcher::Prefix(p) => value.starts_with(&**p),
            Matcher::Suffix(s) => value.ends_with(&**s),
            Matcher::Contains(c) => value.contains(&**c),
            Matcher::In(values) => values.iter().any(|x| **x == *value),
            Matcher::Number(bound) => parse_number(value)
                .and_then(|n| n.partial_cmp(&bound.value))
                .is_some_and(|o| bound.cmp.accepts(o)),
            Matcher::Version(bound) => {
                compare_version(value, &bound.value).is_some_and(|o| bound.cmp.accepts(o))
            }
        }
    }

    /// Why a present value failed this matcher.
    fn why_not(&self, value: &str) -> String {
        let v = Shown(Some(value));
        match self {
            Matcher::Regex(set) => format!("{v} matches no regex of {}", set.patterns().join(", ")),
            Matcher::Prefix(p) => format!("{v} does not start with \"{p}\""),
            Matcher::Suffix(s) => format!("{v} does not end with \"{s}\""),
            Matcher::Contains(c) => format!("{v} does not contain \"{c}\""),
            Matcher::In(values) => format!("{v} is not in [{}]", values.join(", ")),
            Matcher::Number(_) if parse_number(value).is_none() => {
                format!("{v} is not a number")
            }
            Matcher::Version(bound) if compare_version(value, &bound.value).is_none() => {
                format!("{v} is not a dotted version")
            }
            Matcher::Number(bound) => format!("{v} {} {}", bound.cmp.failed(), bound.text),
            Matcher::Version(bound) => format!("{v} {} {}", bound.cmp.failed(), bound.text),
        }
    }
}

/// A plain decimal number: `-?DIGITS` or `-?DIGITS.DIGITS`; anything else is `None`.
pub fn parse_number(text: &str) -> Option<f64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = match digits.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (digits, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || !fraction.is_none_or(all_digits) {
        return None;
    }
    text.parse().ok()
}

/// A dotted version bound: `DIGITS(.DIGITS)*`.
pub fn parse_version(text: &str) -> Option<Box<[u64]>> {
    text.split('.').map(version_part).collect()
}

/// One part of a dotted version: 1 to 19 digits.
fn version_part(part: &str) -> Option<u64> {
    if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    part.parse().ok()
}

/// How the dotted version `value` compares with `bound` (missing parts are 0), or `None`
/// when `value` is not a dotted version. Reads `value` in place.
pub fn compare_version(value: &str, bound: &[u64]) -> Option<Ordering> {
    let mut ordering = Ordering::Equal;
    let mut parts = 0;
    for part in value.split('.') {
        let n = version_part(part)?;
        if ordering == Ordering::Equal {
            ordering = n.cmp(bound.get(parts).unwrap_or(&0));
        }
        parts += 1;
    }
    if ordering == Ordering::Equal && bound.iter().skip(parts).any(|&b| b > 0) {
        ordering = Ordering::Less;
    }
    Some(ordering)
}

/// A request value in messages: quoted, cut at 64 bytes, or `absent`.
pub(crate) struct Shown<'a>(pub Option<&'a str>);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) if v.len() > 64 => write!(f, "\"{}...\"", &v[..v.floor_char_boundary(64)]),
            Some(v) => write!(f, "\"{v}\""),
            None => f.write_str("absent"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn numbers_are_plain_decimals() {
        for (text, parsed) in [
            ("1200", Some(1200.0)),
            ("-3", Some(-3.0)),
            ("0.5", Some(0.5)),
            ("007", Some(7.0)),
            ("+3", None),
            ("1e3", None),
            ("1E3", None),
            (" 12", None),
            ("12 ", None),
            (".5", None),
            ("5.", None),
            ("-", None),
            ("", None),
            ("inf", None),
            ("NaN", None),
            ("1.2.3", None),
            ("0x10", None),
        ] {
            assert_eq!(parse_number(text), parsed, "{text:?}");
        }
    }

    #[test]
    fn versions_compare_part_by_part() {
        let v = |t: &str| parse_version(t).unwrap();
        for (value, bound, ordering) in [
            ("5.10", "5.9", Some(Ordering::Greater)),
            ("5.2", "5.2.0", Some(Ordering::Equal)),
            ("5.2.0.0", "5.2", Some(Ordering::Equal)),
            ("5.2", "5.2.1", Some(Ordering::Less)),
            ("6", "5.99.99", Some(Ordering::Greater)),
            ("05.02", "5.2", Some(Ordering::Equal)),
            ("5..2", "5.2", None),
            ("v5.2", "5.2", None),
            ("5.2-beta", "5.2", None),
            ("5.", "5", None),
            (".5", "5", None),
            ("", "5", None),
            ("5.2 ", "5.2", None),
            ("99999999999999999999", "1", None),
        ] {
            assert_eq!(
                compare_version(value, &v(bound)),
                ordering,
                "{value} vs {bound}"
            );
        }
        assert_eq!(parse_version("5..2"), None);
        assert_eq!(parse_version("v5"), None);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn over_long_values_are_absent() {
        let long = "1".repeat(MAX_VALUE_LEN + 1);
        assert!(!ValueMatch::Present.matches(Some(&long)));
        assert!(ValueMatch::Absent.matches(Some(&long)));
        assert!(ValueMatch::Present.matches(Some(&long[1..])));
    }

    proptest! {
        /// Version order is the order of the parts as numbers, trailing zeros ignored.
        #[test]
        fn version_order_is_numeric(a in proptest::collection::vec(0u64..1000, 1..5), b in proptest::collection::vec(0u64..1000, 1..5)) {
            let text = |p: &[u64]| p.iter().map(u64::to_string).collect::<Vec<_>>().join(".");
            let trim = |p: &[u64]| {
                let mut p = p.to_vec();
                while p.last() == Some(&0) { p.pop(); }
                p
            };
            prop_assert_eq!(compare_version(&text(&a), &b), Some(trim(&a).cmp(&trim(&b))));
        }

        /// Any text at all: no panic, and a number or version only when the grammar says so.
        #[test]
        fn arbitrary_values_never_panic(value in ".{0,40}") {
            let bound = parse_version("5.2").unwrap();
            if compare_version(&value, &bound).is_some() {
                prop_assert!(value.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
            }
            if parse_number(&value).is_some() {
                prop_assert!(value.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'-'));
            }
        }

        /// A number compares like the integer it spells.
        #[test]
        fn numbers_compare_like_integers(n in -1_000_000i64..1_000_000, bound in -1_000_000i64..1_000_000) {
            let m = Matcher::Number(Bound { cmp: Cmp::Gte, value: bound as f64, text: bound.to_string().into() });
            prop_assert_eq!(m.matches(&n.to_string()), n >= bound);
        }
    }
}
