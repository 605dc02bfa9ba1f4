//! Which service serves a host and path, in a few hash lookups whatever the number of
//! services.
//!
//! The rule (SPEC: services) is: among the services whose hosts match, the longest path
//! prefix wins; on a tie, the most specific host (exact, then the longer `*.suffix`, then
//! `*`). [`Routes`] finds exact hosts in one table and `*.suffix` hosts in another (both
//! without regard to case), `*` on its own, and keeps each pattern's prefixes: a pattern with
//! `/` alone (nearly every tenant host) as its service, in the pattern's hash slot; one with
//! a few as a short list in one shared array, longest first, tried in turn (two cache lines
//! read, where a map reads about eight); one with more as a [`PrefixMap`] (one lookup per
//! prefix length present). A lookup takes the exact host's longest prefix, each matching
//! suffix's (one lookup per suffix length present where the host has a dot) and `*`'s, and
//! keeps the best by (prefix length, specificity).
//! [`Routes::find_linear`] is the reference: the sorted list tried in turn, which property
//! tests compare with the indexed lookup.

use crate::rules::model::HostPattern;
use crate::rules::sets::{PrefixMap, StrTable, SuffixTable, TableFull};

/// An index of the service table's services.
pub type ServiceId = usize;

/// Every (host, prefix) route of a service table, indexed.
#[derive(Debug, Default)]
pub struct Routes {
    /// Exact hosts, each with its prefixes in its slot.
    exact: StrTable<Prefixes>,
    /// `*.suffix` hosts, the same.
    suffixes: SuffixTable<Prefixes>,
    any: Prefixes,
    /// The routes of the patterns with few prefixes, each pattern's longest first.
    few: Vec<FewRoute>,
    /// The bytes of their prefixes.
    few_text: String,
    /// The prefixes of the patterns with many.
    many: Vec<PrefixMap<ServiceId>>,
    /// (host, prefix, service): longest prefix first, then the most specific host.
    linear: Vec<(HostPattern, Box<str>, ServiceId)>,
}

/// A host pattern with at most this many prefixes tries them in turn: one cache line of
/// routes and one of prefix bytes, where a hash map of prefixes reads about eight (its
/// header, lengths, control bytes, slot, key and value), each a miss when the host is one
/// of thousands.
const FEW: usize = 8;

/// The prefixes of one host pattern, small enough to sit in the pattern's hash slot.
#[derive(Debug, Clone, Copy)]
enum Prefixes {
    /// `/` alone (a service's default prefix, what nearly every tenant host has): the
    /// service itself, so that finding the host has found the route.
    Slash(u32),
    /// At most [`FEW`]: a span of [`Routes::few`], longest first.
    Few { start: u32, end: u32 },
    /// More: a map of [`Routes::many`] (one lookup per prefix length present).
    Many(u32),
}

impl Default for Prefixes {
    fn default() -> Self {
        Prefixes::Few { start: 0, end: 0 }
    }
}

/// A route of a host with few prefixes: its prefix's place in [`Routes::few_text`].
#[derive(Debug, Clone, Copy)]
struct FewRoute {
    start: u32,
    end: u32,
    service: ServiceId,
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
        // Each pattern's prefixes; the first service written for a pair keeps it, as in
        // the sorted list.
        let mut exact_hosts: StrTable = StrTable::caseless();
        let mut exact: Vec<PrefixMap<ServiceId>> = Vec::new();
        let mut suffix_hosts: StrTable = StrTable::caseless();
        let mut suffix: Vec<PrefixMap<ServiceId>> = Vec::new();
        let mut any = PrefixMap::default();
        for (host, prefix, id) in &linear {
            let (hosts, maps, name) = match host {
                HostPattern::Exact(name) => (&mut exact_hosts, &mut exact, name),
                HostPattern::Suffix(name) => (&mut suffix_hosts, &mut suffix, name),
                HostPattern::Any => {
                    any.entry(prefix, || *id)?;
                    continue;
                }
            };
            let i = hosts.insert(name)? as usize;
            if i == maps.len() {
                maps.push(PrefixMap::default());
            }
            maps[i].entry(prefix, || *id)?;
        }
        let mut table = Routes {
            exact: StrTable::caseless(),
            suffixes: SuffixTable::new(),
            ..Routes::default()
        };
        for (host, map) in exact_hosts.keys().zip(exact) {
            let prefixes = table.prefixes(map)?;
            table.exact.insert_with(host, prefixes)?;
        }
        for (suffix_host, map) in suffix_hosts.keys().zip(suffix) {
            let prefixes = table.prefixes(map)?;
            table.suffixes.insert_with(suffix_host, prefixes)?;
        }
        table.any = table.prefixes(any)?;
        table.exact.shrink();
        table.suffixes.shrink();
        table.few.shrink_to_fit();
        table.few_text.shrink_to_fit();
        table.many.shrink_to_fit();
        table.linear = linear;
        Ok(table)
    }

    /// One pattern's prefixes: its service when `/` is the only one, a span of
    /// [`Routes::few`] when there are few, else a map of [`Routes::many`].
    fn prefixes(&mut self, mut map: PrefixMap<ServiceId>) -> Result<Prefixes, TableFull> {
        if let (1, Some(("/", &service))) = (map.len(), map.iter().next()) {
            let service = u32::try_from(service).map_err(|_| TableFull)?;
            return Ok(Prefixes::Slash(service));
        }
        if map.len() > FEW {
            map.shrink();
            let at = u32::try_from(self.many.len()).map_err(|_| TableFull)?;
            self.many.push(map);
            return Ok(Prefixes::Many(at));
        }
        let mut routes: Vec<(&str, ServiceId)> = map.iter().map(|(p, &id)| (p, id)).collect();
        routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        let start = u32::try_from(self.few.len()).map_err(|_| TableFull)?;
        for (prefix, service) in routes {
            let from = u32::try_from(self.few_text.len()).map_err(|_| TableFull)?;
            self.few_text.push_str(prefix);
            let to = u32::try_from(self.few_text.len()).map_err(|_| TableFull)?;
            self.few.push(FewRoute {
                start: from,
                end: to,
                service,
            });
        }
        let end = u32::try_from(self.few.len()).map_err(|_| TableFull)?;
        Ok(Prefixes::Few { start, end })
    }

    /// The service of the longest of `prefixes` that `path` starts with, with its length.
    fn longest(&self, prefixes: Prefixes, path: &str) -> Option<(usize, ServiceId)> {
        match prefixes {
            Prefixes::Slash(service) => path.starts_with('/').then_some((1, service as ServiceId)),
            Prefixes::Few { start, end } => self
                .few
                .get(start as usize..end as usize)?
                .iter()
                .find_map(|r| {
                    let prefix = self.few_text.get(r.start as usize..r.end as usize)?;
                    path.starts_with(prefix)
                        .then_some((prefix.len(), r.service))
                }),
            Prefixes::Many(at) => {
                let map = self.many.get(at as usize)?;
                map.longest(path).map(|(len, &id)| (len, id))
            }
        }
    }

    /// The service for a host (without port, any case) and path.
    pub fn find(&self, host: &str, path: &str) -> Option<ServiceId> {
        // (prefix length, host specificity, service): the greatest wins. Two candidates
        // never tie: equal prefix lengths that both prefix the path are the same prefix, and
        // two patterns of one specificity matching one host are the same pattern.
        let mut best: Option<(usize, usize, ServiceId)> = None;
        let mut offer = |found: Option<(usize, ServiceId)>, specificity: usize| {
            if let Some((len, id)) = found {
                if best.is_none_or(|(l, s, _)| (len, specificity) > (l, s)) {
                    best = Some((len, specificity, id));
                }
            }
        };
        if let Some(&prefixes) = self.exact.payload(host) {
            offer(self.longest(prefixes, path), usize::MAX);
        }
        for (&prefixes, len) in self.suffixes.matching(host) {
            offer(self.longest(prefixes, path), len);
        }
        offer(self.longest(self.any, path), 0);
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

        /// The same with many prefixes on few patterns: hosts past `FEW` prefixes (a map
        /// of prefixes) beside hosts with few (a list tried in turn).
        #[test]
        fn many_prefixes_agree_with_the_linear_lookup(
            table in proptest::collection::vec(
                (proptest::sample::select(&["a", "b.a", "*.a", "*"][..]), "/[ab/]{0,3}", 0usize..6),
                0..48,
            ),
            requests in proptest::collection::vec(("[ab.]{0,4}", "/[ab/]{0,4}"), 1..16),
        ) {
            let list: Vec<(&str, &str, ServiceId)> =
                table.iter().map(|(h, p, id)| (*h, p.as_str(), *id)).collect();
            let r = routes(&list);
            for (host, path) in &requests {
                prop_assert_eq!(r.find(host, path), r.find_linear(host, path), "{} {}", host, path);
            }
        }
    }
}
