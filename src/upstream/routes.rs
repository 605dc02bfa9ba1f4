//! Which service serves a host and path, in a few hash lookups whatever the number of
//! services.
//!
//! The rule (SPEC: services) is: among the services whose hosts match, the longest path
//! prefix wins; on a tie, the most specific host (exact, then the longer `*.suffix`, then
//! `*`). [`Routes`] keeps, for every host pattern, a [`PrefixMap`] of its prefixes:
//! exact hosts in one table and `*.suffix` hosts in another (both without regard to case),
//! `*` on its own. A lookup takes the exact host's longest prefix, each matching suffix's
//! (one lookup per suffix length present where the host has a dot) and `*`'s, and keeps the
//! best by (prefix length, specificity). [`Routes::find_linear`] is the reference: the sorted
//! list tried in turn, which a property test compares with the indexed lookup.

use crate::rules::model::HostPattern;
use crate::rules::sets::{PrefixMap, StrTable, SuffixTable, TableFull};

/// An index of the service table's services.
pub type ServiceId = usize;

/// Every (host, prefix) route of a service table, indexed.
#[derive(Debug, Default)]
pub struct Routes {
    exact: StrTable,
    exact_prefixes: Vec<PrefixMap<ServiceId>>,
    suffixes: SuffixTable,
    suffix_prefixes: Vec<PrefixMap<ServiceId>>,
    any: PrefixMap<ServiceId>,
    /// (host, prefix, service): longest prefix first, then the most specific host.
    linear: Vec<(HostPattern, Box<str>, ServiceId)>,
}

impl Routes {
    /// The routes of `(host, prefix, service)` triples in the order written; a (host, prefix)
    /// pair written twice goes to its first service (compile refuses such tables).
    pub fn new(routes: Vec<(HostPattern, Box<str>, ServiceId)>) -> Result<Routes, TableFull> {
        let mut linear = routes;
        // Stable: equal routes keep the order written.
        linear.sort_by(|a, b| {
            b.1.len()
                .cmp(&a.1.len())
                .then(b.0.specificity().cmp(&a.0.specificity()))
        });
        let mut table = Routes {
            exact: StrTable::caseless(),
            suffixes: SuffixTable::new(),
            ..Routes::default()
        };
        for (host, prefix, id) in &linear {
            let prefixes = match host {
                HostPattern::Exact(name) => {
                    let i = table.exact.insert(name)? as usize;
                    if i == table.exact_prefixes.len() {
                        table.exact_prefixes.push(PrefixMap::default());
                    }
                    &mut table.exact_prefixes[i]
                }
                HostPattern::Suffix(suffix) => {
                    let i = table.suffixes.insert(suffix)? as usize;
                    if i == table.suffix_prefixes.len() {
                        table.suffix_prefixes.push(PrefixMap::default());
                    }
                    &mut table.suffix_prefixes[i]
                }
                HostPattern::Any => &mut table.any,
            };
            // The first service written for the pair keeps it, as in the sorted list.
            prefixes.entry(prefix, || *id)?;
        }
        table.exact.shrink();
        table.suffixes.shrink();
        for map in table
            .exact_prefixes
            .iter_mut()
            .chain(table.suffix_prefixes.iter_mut())
        {
            map.shrink();
        }
        table.linear = linear;
        Ok(table)
    }

    /// The service for a host (without port, any case) and path.
    pub fn find(&self, host: &str, path: &str) -> Option<ServiceId> {
        // (prefix length, host specificity, service): the greatest wins. Two candidates
        // never tie: equal prefix lengths that both prefix the path are the same prefix, and
        // two patterns of one specificity matching one host are the same pattern.
        let mut best: Option<(usize, usize, ServiceId)> = None;
        let mut offer = |found: Option<(usize, &ServiceId)>, specificity: usize| {
            if let Some((len, &id)) = found {
                if best.is_none_or(|(l, s, _)| (len, specificity) > (l, s)) {
                    best = Some((len, specificity, id));
                }
            }
        };
        if let Some(i) = self.exact.get(host) {
            offer(self.exact_prefixes[i as usize].longest(path), usize::MAX);
        }
        for (i, len) in self.suffixes.matching(host) {
            offer(self.suffix_prefixes[i as usize].longest(path), len);
        }
        offer(self.any.longest(path), 0);
        best.map(|(_, _, id)| id)
    }

    /// [`Routes::find`] by trying every route in turn: the reference.
    pub fn find_linear(&self, host: &str, path: &str) -> Option<ServiceId> {
        self.linear
            .iter()
            .find(|(pattern, prefix, _)| path.starts_with(&**prefix) && pattern.matches(host))
            .map(|(_, _, id)| *id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn routes(list: &[(&str, &str, ServiceId)]) -> Routes {
        Routes::new(
            list.iter()
                .map(|(h, p, id)| {
                    let host = match *h {
                        "*" => HostPattern::Any,
                        h if h.starts_with("*.") => HostPattern::Suffix(h[1..].into()),
                        h => HostPattern::Exact(h.into()),
                    };
                    (host, (*p).into(), *id)
                })
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn longest_prefix_then_most_specific_host() {
        let r = routes(&[
            ("*", "/", 0),
            ("*.example.com", "/", 1),
            ("www.example.com", "/", 2),
            ("*", "/api", 3),
            ("*.b.example.com", "/", 4),
        ]);
        for (host, path, want) in [
            ("www.example.com", "/", 2),
            ("WWW.example.COM", "/x", 2),
            ("a.example.com", "/", 1),
            ("a.b.example.com", "/", 4),
            ("example.com", "/", 0),
            ("www.example.com", "/api/v1", 3),
            ("", "/", 0),
        ] {
            assert_eq!(r.find(host, path), Some(want), "{host}{path}");
            assert_eq!(r.find_linear(host, path), Some(want), "{host}{path}");
        }
        assert_eq!(routes(&[("a.com", "/", 0)]).find("b.com", "/"), None);
    }

    fn pattern() -> impl Strategy<Value = HostPattern> {
        prop_oneof![
            3 => "[ab]{1,2}(\\.[ab]{1,2}){0,2}".prop_map(|h| HostPattern::Exact(h.into())),
            3 => "(\\.[ab]{1,2}){1,2}".prop_map(|s| HostPattern::Suffix(s.into())),
            1 => Just(HostPattern::Any),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// On random tables (duplicate pairs included), the indexed lookup answers as the
        /// sorted list does.
        #[test]
        fn indexed_lookup_agrees_with_the_linear_one(
            table in proptest::collection::vec((pattern(), "/[ab/]{0,3}", 0usize..6), 0..16),
            requests in proptest::collection::vec(("[aAbB.]{0,7}", "/[ab/é]{0,4}"), 1..16),
        ) {
            let r = Routes::new(table.into_iter().map(|(h, p, id)| (h, p.into(), id)).collect()).unwrap();
            for (host, path) in &requests {
                prop_assert_eq!(r.find(host, path), r.find_linear(host, path), "{} {}", host, path);
            }
        }
    }
}
