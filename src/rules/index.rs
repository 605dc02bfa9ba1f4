//! The rule index: which rules a request may match, found without trying the others.
//!
//! Built by `compile` once per generation, consulted by [`decide`](super::decide::decide)
//! before any rule is evaluated. Every rule is filed under one *key condition*, or under
//! `always`:
//!
//! - `host:` without `*`: its exact names (one hash lookup of the request's host) and its
//!   `*.suffix` names (one lookup per suffix length where the host has a dot);
//! - `uid_in:`: its uids (one lookup of the request's uid);
//! - `header:` with an exact value list (`X-Tenant: [t1, t2]`): those values, per header name
//!   (one lookup per indexed header name);
//! - `path_prefix:`: its prefixes (one lookup per prefix length present);
//! - `method:`: its methods.
//!
//! Of the conditions a rule has, the key is the one whose keys are shared by the fewest
//! rules (per-tenant hosts over a host every rule names), so a request's candidates are the
//! rules of its own host, uid, tenant header, path and method. For each key the index holds
//! the sorted rule positions (a key of one rule holds it in its own hash slot, so that finding
//! the key has read it); [`RuleIndex::candidates`] merges the lists that apply to the
//! request with `always`, in rule order and without duplicates. The lookups cost the same for
//! 10 rules or 10,000; only the candidates are evaluated, by the very code that evaluates
//! every rule in turn, so the first candidate that decides is the first rule that decides.
//!
//! A candidate found under a key also carries its key condition as *proven*: the lookup that
//! found it is that condition's own test (the same tables, the same request fields), so
//! `decide` does not evaluate it again; with thousands of tenants that test is the rule's
//! costliest step, a hash lookup into memory no other request touched lately. A header
//! condition on two headers is only partly proven (its key is one header's value) and is
//! evaluated in full.
//!
//! Skipping a rule is sound because its key condition does not hold for the request, and
//! linear evaluation would have stopped at that condition too: a key is only taken from the
//! conditions before the first one that may need a store fact (`tier`, `internal`, or a `not`
//! or `any` holding one), so a skipped rule could not have asked for a lookup either. A
//! property test (`decide.rs`) compares indexed and linear `decide` on random rule sets.

use std::fmt;

use http::header::HeaderName;
use http::Method;
use smallvec::SmallVec;

use super::matcher::MAX_VALUE_LEN;
use super::model::{Condition, Rule, ValueMatch};
use super::sets::{PrefixMap, StrTable, SuffixTable, TableFull};
use crate::facts::Facts;

/// A rule filed under a key: its position, and the condition of the rule that the key's
/// lookup proves to hold ([`Filed::UNPROVEN`] for a rule without a key, or a key that checks
/// only part of its condition: one value of a multi-header condition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Filed {
    rule: u32,
    proven: u32,
}

impl Filed {
    const UNPROVEN: u32 = u32::MAX;
}

/// A candidate rule for a request: its position, and which of its conditions the index has
/// already checked (a rule under `always` has none); [`decide`](super::decide::decide) does
/// not evaluate that one again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The rule's position.
    pub position: usize,
    /// The index, in the rule's conditions, of its key condition when the key proved it.
    pub proven: Option<usize>,
}

/// Rule positions: a span of [`RuleIndex::ids`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

/// The rules under one key, in the key's slot: the one rule of a key that files one (a
/// tenant's host, uid or header value, most often), or a span of [`RuleIndex::ids`]. A key
/// of one rule thus leads to it without reading `ids`, a cache line fewer per lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listed {
    One(Filed),
    Many(Span),
}

impl Default for Listed {
    fn default() -> Listed {
        Listed::Many(Span::default())
    }
}

/// Keys of one kind, each with its rules in its slot.
type Keyed = StrTable<Listed>;

/// Which rules a request may match; see the module documentation.
#[derive(Clone, Default)]
pub struct RuleIndex {
    /// Every rule's position, grouped by key; each group sorted.
    ids: Box<[Filed]>,
    /// Rules without a key condition: candidates for every request.
    always: Listed,
    hosts: Keyed,
    suffixes: SuffixTable<Listed>,
    uids: Keyed,
    headers: Vec<(HeaderName, Keyed)>,
    prefixes: PrefixMap<Listed>,
    methods: Vec<(Method, Listed)>,
}

impl fmt::Debug for RuleIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleIndex")
            .field("rules", &self.ids.len())
            .field("always", &self.list(&self.always).len())
            .field("hosts", &self.hosts.len())
            .field("suffixes", &self.suffixes.table.len())
            .field("uids", &self.uids.len())
            .field("headers", &self.headers.len())
            .finish_non_exhaustive()
    }
}

/// The kind of a key condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Host,
    Suffix,
    Uid,
    Header(usize),
    Prefix,
    Method(usize),
}

/// The tables keys are counted and filed in while building.
#[derive(Default)]
struct Builder {
    hosts: StrTable,
    suffixes: SuffixTable,
    uids: StrTable,
    headers: Vec<(HeaderName, StrTable)>,
    prefixes: PrefixMap<u32>,
    methods: Vec<Method>,
    /// Rules per key, by kind: `counts[kind][key]`.
    counts: [Vec<u32>; 6],
    header_counts: Vec<Vec<u32>>,
}

/// One way to file a rule: keys of one condition (possibly of two kinds, for a host list of
/// exact and suffix names), and whether finding one of them proves the whole condition.
struct Option_ {
    keys: Vec<(Kind, u32)>,
    proves: bool,
}

impl Builder {
    fn count(&mut self, kind: Kind, key: u32) -> &mut u32 {
        let counts = match kind {
            Kind::Header(h) => &mut self.header_counts[h],
            other => &mut self.counts[slot(other)],
        };
        let key = key as usize;
        if counts.len() <= key {
            counts.resize(key + 1, 0);
        }
        &mut counts[key]
    }

    /// The ways `condition` can file a rule, its keys added to the tables.
    fn option(&mut self, condition: &Condition) -> Result<Option<Option_>, TableFull> {
        let mut keys = Vec::new();
        let mut proves = true;
        match condition {
            Condition::Host(set) if !set.any => {
                for host in set.exact.keys() {
                    keys.push((Kind::Host, self.hosts.insert(host)?));
                }
                for suffix in set.suffixes.table.keys() {
                    keys.push((Kind::Suffix, self.suffixes.insert(suffix)?));
                }
            }
            Condition::UidIn(set) => {
                for uid in set.iter() {
                    keys.push((Kind::Uid, self.uids.insert(uid)?));
                }
            }
            Condition::Header(pairs) => {
                // A value of one header; the others, if any, are left to `holds`.
                proves = pairs.len() == 1;
                let Some((name, values)) = pairs.iter().find_map(|(name, m)| match m {
                    ValueMatch::AnyOf(values) => Some((name, values)),
                    _ => None,
                }) else {
                    return Ok(None);
                };
                let h = match self.headers.iter().position(|(n, _)| n == name) {
                    Some(h) => h,
                    None => {
                        self.headers.push((name.clone(), StrTable::new()));
                        self.header_counts.push(Vec::new());
                        self.headers.len() - 1
                    }
                };
                for value in values {
                    keys.push((Kind::Header(h), self.headers[h].1.insert(value)?));
                }
            }
            Condition::PathPrefix(prefixes) => {
                for prefix in prefixes {
                    let next = self.prefixes.len() as u32;
                    let id = *self.prefixes.entry(prefix, || next)?;
                    keys.push((Kind::Prefix, id));
                }
            }
            Condition::Method(methods) => {
                for method in methods {
                    let m = match self.methods.iter().position(|x| x == method) {
                        Some(m) => m,
                        None => {
                            self.methods.push(method.clone());
                            self.methods.len() - 1
                        }
                    };
                    keys.push((Kind::Method(m), m as u32));
                }
            }
            _ => return Ok(None),
        }
        keys.sort_unstable_by_key(|&(kind, key)| (slot(kind), kind_extra(kind), key));
        keys.dedup();
        Ok(Some(Option_ { keys, proves }))
    }
}

fn slot(kind: Kind) -> usize {
    match kind {
        Kind::Host => 0,
        Kind::Suffix => 1,
        Kind::Uid => 2,
        Kind::Header(_) => 3,
        Kind::Prefix => 4,
        Kind::Method(_) => 5,
    }
}

fn kind_extra(kind: Kind) -> usize {
    match kind {
        Kind::Header(h) => h,
        _ => 0,
    }
}

/// Whether a condition may ask for a store fact (as `decide`'s `needs` does): the conditions
/// of a rule after it cannot be keys.
fn may_need_store(condition: &Condition) -> bool {
    match condition {
        Condition::Tier(_) | Condition::Internal(_) => true,
        Condition::Not(inner) => inner.iter().any(may_need_store),
        Condition::Any(sets) => sets.iter().flatten().any(may_need_store),
        _ => false,
    }
}

impl RuleIndex {
    /// The index of `rules`; if a table outgrows its positions (never below
    /// `MAX_LIST_ENTRIES`), every rule is a candidate for every request.
    pub fn build(rules: &[Rule]) -> RuleIndex {
        Self::try_build(rules).unwrap_or_else(|TableFull| RuleIndex::every_rule(rules.len()))
    }

    /// An index that files every rule under `always`: linear evaluation.
    pub fn every_rule(rules: usize) -> RuleIndex {
        let ids: Box<[Filed]> = (0..rules as u32)
            .map(|rule| Filed {
                rule,
                proven: Filed::UNPROVEN,
            })
            .collect();
        RuleIndex {
            always: Listed::Many(Span {
                start: 0,
                end: ids.len() as u32,
            }),
            ids,
            ..RuleIndex::default()
        }
    }

    fn try_build(rules: &[Rule]) -> Result<RuleIndex, TableFull> {
        u32::try_from(rules.len()).map_err(|_| TableFull)?;
        let mut b = Builder::default();
        // Every way each rule could be filed, and how many rules share each key.
        // (condition, option) per rule.
        let mut options: Vec<Vec<(usize, Option_)>> = Vec::with_capacity(rules.len());
        for rule in rules {
            let mut mine = Vec::new();
            for (c, condition) in rule.conditions.iter().enumerate() {
                if may_need_store(condition) {
                    break;
                }
                if let Some(option) = b.option(condition)? {
                    for &(kind, key) in &option.keys {
                        *b.count(kind, key) += 1;
                    }
                    mine.push((c, option));
                }
            }
            options.push(mine);
        }
        // Each rule under the key condition whose busiest key has the fewest rules.
        let mut filed: Vec<(Kind, u32, Filed)> = Vec::new();
        let mut always = Vec::new();
        for (position, mine) in options.into_iter().enumerate() {
            let rule = position as u32;
            let best = mine.into_iter().min_by_key(|(_, option)| {
                option
                    .keys
                    .iter()
                    .map(|&(kind, key)| *b.count(kind, key))
                    .max()
                    .unwrap_or(0)
            });
            match best {
                // A key condition with no key (`uid_in: []`) never holds: the rule is never
                // a candidate, as it never decides.
                Some((c, option)) => {
                    let proven = if option.proves {
                        u32::try_from(c).map_err(|_| TableFull)?
                    } else {
                        Filed::UNPROVEN
                    };
                    let filed_as = Filed { rule, proven };
                    filed.extend(option.keys.into_iter().map(|(k, key)| (k, key, filed_as)))
                }
                None => always.push(Filed {
                    rule,
                    proven: Filed::UNPROVEN,
                }),
            }
        }
        filed.sort_unstable_by_key(|&(kind, key, f)| (slot(kind), kind_extra(kind), key, f.rule));
        filed.dedup();

        let mut ids: Vec<Filed> = Vec::with_capacity(filed.len() + always.len());
        let mut push = |list: &mut dyn Iterator<Item = Filed>| {
            let start = ids.len() as u32;
            ids.extend(list);
            Span {
                start,
                end: ids.len() as u32,
            }
        };
        let always = Listed::Many(push(&mut always.into_iter()));
        let mut index = RuleIndex {
            always,
            ..RuleIndex::default()
        };
        index.suffixes = SuffixTable::new();
        index.hosts = StrTable::caseless();
        let mut prefix_listed: Vec<Option<Listed>> = vec![None; b.prefixes.len()];
        let mut method_lists: Vec<(usize, Listed)> = Vec::new();
        let mut header_keyed: Vec<Keyed> = b.headers.iter().map(|_| Keyed::default()).collect();
        for group in filed.chunk_by(|a, b| a.0 == b.0 && a.1 == b.1) {
            let (kind, key, first) = group[0];
            let listed = match group {
                [_] => Listed::One(first),
                _ => Listed::Many(push(&mut group.iter().map(|&(_, _, f)| f))),
            };
            match kind {
                Kind::Host => {
                    index.hosts.insert_with(b.hosts.key(key), listed)?;
                }
                Kind::Suffix => {
                    index
                        .suffixes
                        .insert_with(b.suffixes.table.key(key), listed)?;
                }
                Kind::Uid => {
                    index.uids.insert_with(b.uids.key(key), listed)?;
                }
                Kind::Header(h) => {
                    header_keyed[h].insert_with(b.headers[h].1.key(key), listed)?;
                }
                Kind::Prefix => prefix_listed[key as usize] = Some(listed),
                Kind::Method(m) => method_lists.push((m, listed)),
            }
        }
        for (prefix, id) in b.prefixes.iter() {
            if let Some(listed) = prefix_listed[*id as usize] {
                *index.prefixes.entry(prefix, Listed::default)? = listed;
            }
        }
        index.methods = method_lists
            .into_iter()
            .map(|(m, listed)| (b.methods[m].clone(), listed))
            .collect();
        index.headers = b
            .headers
            .into_iter()
            .zip(header_keyed)
            .filter(|(_, keyed)| !keyed.is_empty())
            .map(|((name, _), keyed)| (name, keyed))
            .collect();
        for keyed in index
            .headers
            .iter_mut()
            .map(|(_, k)| k)
            .chain([&mut index.hosts, &mut index.uids])
        {
            keyed.shrink();
        }
        index.suffixes.shrink();
        index.prefixes.shrink();
        index.ids = ids.into();
        Ok(index)
    }

    fn list<'a>(&'a self, listed: &'a Listed) -> &'a [Filed] {
        match listed {
            Listed::One(filed) => std::slice::from_ref(filed),
            Listed::Many(span) => self
                .ids
                .get(span.start as usize..span.end as usize)
                .unwrap_or_default(),
        }
    }

    /// The positions of the rules `facts` may match, in rule order: every rule whose key
    /// condition holds, and every rule without one.
    pub fn candidates<'a>(&'a self, facts: &Facts) -> Candidates<'a> {
        let req = &facts.req;
        let mut lists: SmallVec<[&'a [Filed]; 8]> = SmallVec::new();
        let mut add = |listed: &'a Listed| {
            let list = self.list(listed);
            if !list.is_empty() {
                lists.push(list);
            }
        };
        add(&self.always);
        if let Some(listed) = self.hosts.payload(req.host) {
            add(listed);
        }
        for (listed, _) in self.suffixes.matching(req.host) {
            add(listed);
        }
        if let Some(uid) = &facts.uid {
            if let Some(listed) = self.uids.payload(&uid.text) {
                add(listed);
            }
        }
        for (name, keyed) in &self.headers {
            // A value `holds` would not read (too long) is not looked up either, so that
            // a key found proves its condition.
            let value = req.header(name).filter(|v| v.len() <= MAX_VALUE_LEN);
            if let Some(listed) = value.and_then(|v| keyed.payload(v)) {
                add(listed);
            }
        }
        for (_, listed) in self.prefixes.prefixes_of(req.path) {
            add(listed);
        }
        for (method, listed) in &self.methods {
            if method == req.method {
                add(listed);
            }
        }
        Candidates { lists }
    }
}

/// The candidate rules of one request, in rule order: a merge of sorted lists.
pub struct Candidates<'a> {
    lists: SmallVec<[&'a [Filed]; 8]>,
}

impl Iterator for Candidates<'_> {
    type Item = Candidate;

    fn next(&mut self) -> Option<Candidate> {
        let next = *self
            .lists
            .iter()
            .filter_map(|l| l.first())
            .min_by_key(|f| f.rule)?;
        // A rule in two lists is there under two keys of one condition: the same `Filed`.
        for list in self.lists.iter_mut() {
            if list.first().is_some_and(|f| f.rule == next.rule) {
                *list = &list[1..];
            }
        }
        Some(Candidate {
            position: next.rule as usize,
            proven: (next.proven != Filed::UNPROVEN).then_some(next.proven as usize),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use http::{HeaderMap, HeaderValue};
    use proptest::prelude::*;

    use crate::facts::{Assigned, Facts, RequestView, Uid, VersionId};
    use crate::rules::decide::{decide, decide_linear, explain};
    use crate::rules::testing::model;

    use super::Candidate;

    const HEAD: &str = "versions: { stable: {}, canary: {}, dev: { restricted: true } }\ndefault: stable\nservices:\n  web:\n    hosts: [\"*\"]\n    groups: { stable: { peers: [\"127.0.0.1:1\"] } }\nrules:\n";

    /// A list of 0 to `max` items drawn from `pool`, as YAML.
    fn list(pool: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
        list_of(pool, 0, max)
    }

    /// A list of `min` to `max` items drawn from `pool`, as YAML.
    fn list_of(
        pool: &'static [&'static str],
        min: usize,
        max: usize,
    ) -> impl Strategy<Value = String> {
        proptest::sample::subsequence(pool, min..=max).prop_map(|items| {
            format!(
                "[{}]",
                items
                    .iter()
                    .map(|i| format!("\"{i}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    /// A `when` map: each condition present or not, from small pools so that requests
    /// match often.
    fn when() -> impl Strategy<Value = String> {
        let host = list(
            &["a.com", "B.com", "x.a.com", "*.a.com", "*.x.a.com", "*"],
            3,
        );
        let prefix = list(&["/", "/api", "/api/v2", "/b", "/é"], 2);
        let method = list(&["GET", "POST", "PUT"], 2);
        // The header map: one header (a key that proves the condition) or two (a key that
        // checks one of them).
        let tenant = prop_oneof![
            list_of(&["t1", "t2", "t3"], 1, 2).prop_map(|t| format!("X-Tenant: {t}")),
            list_of(&["t1", "t2"], 1, 2).prop_map(|t| format!("X-Tenant: {t}, X-Beta: yes")),
            Just("X-Tenant: { prefix: t }".to_string()),
            Just("X-Tenant: \"*\"".to_string()),
        ];
        let uid_in = list(&["1", "2", "3", "u4"], 3);
        let store = prop_oneof![
            Just("tier: paid"),
            Just("tier: trial"),
            Just("internal: true"),
            Just("not: { tier: paid }"),
            Just("any: [ { uid_in: [\"1\"] }, { internal: true } ]"),
            Just("not: { host: a.com }"),
            Just("uid_tail: [1, 2]"),
        ];
        let w = 0.3;
        (
            proptest::option::weighted(w, host),
            proptest::option::weighted(w, prefix),
            proptest::option::weighted(w, method),
            proptest::option::weighted(w, tenant),
            proptest::option::weighted(w, uid_in),
            proptest::option::weighted(w, store),
        )
            .prop_map(|(host, prefix, method, tenant, uid_in, store)| {
                let mut parts = Vec::new();
                parts.extend(host.map(|h| format!("host: {h}")));
                parts.extend(prefix.map(|p| format!("path_prefix: {p}")));
                parts.extend(method.map(|m| format!("method: {m}")));
                parts.extend(tenant.map(|t| format!("header: {{ {t} }}")));
                parts.extend(uid_in.map(|u| format!("uid_in: {u}")));
                parts.extend(store.map(str::to_string));
                format!("{{ {} }}", parts.join(", "))
            })
    }

    fn action() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just("version: canary"),
            Just("version: stable"),
            Just("version: dev"),
            Just("version: $assigned"),
            Just("version: $channel"),
            Just("split: { by: uid, weights: { canary: 1, stable: 1 } }"),
        ]
    }

    /// A request and the state of its facts.
    #[derive(Debug, Clone)]
    struct Request {
        host: &'static str,
        path: &'static str,
        method: &'static str,
        tenant: Option<&'static str>,
        beta: bool,
        uid: Option<&'static str>,
        paid: bool,
        tier_unresolved: bool,
        internal: bool,
        internal_unresolved: bool,
        assigned: u8,
        channel: Option<u16>,
    }

    fn request() -> impl Strategy<Value = Request> {
        (
            proptest::sample::select(
                &[
                    "a.com",
                    "A.COM",
                    "x.a.com",
                    "y.X.a.com",
                    "b.com",
                    "c.org",
                    "",
                ][..],
            ),
            proptest::sample::select(&["/", "/api", "/api/v2/x", "/b", "/é", ""][..]),
            proptest::sample::select(&["GET", "POST", "DELETE"][..]),
            proptest::option::of(proptest::sample::select(&["t1", "t2", "t3", "t10"][..])),
            proptest::option::of(proptest::sample::select(
                &["1", "2", "3", "u4", "5", "12"][..],
            )),
            any::<(bool, bool, bool, bool, bool)>(),
            0u8..4,
            proptest::option::of(0u16..3),
        )
            .prop_map(
                |(
                    host,
                    path,
                    method,
                    tenant,
                    uid,
                    (beta, paid, tu, internal, iu),
                    assigned,
                    channel,
                )| {
                    Request {
                        host,
                        path,
                        method,
                        tenant,
                        beta,
                        uid,
                        paid,
                        tier_unresolved: tu,
                        internal,
                        internal_unresolved: iu,
                        assigned,
                        channel,
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// On random rule sets and requests, the indexed `decide` answers as trying every
        /// rule in turn does (store facts asked for included), and `explain` agrees.
        #[test]
        fn indexed_decide_agrees_with_linear_decide(
            rules in proptest::collection::vec((when(), action()), 0..24),
            requests in proptest::collection::vec(request(), 1..24),
        ) {
            let mut yaml = String::from(HEAD);
            for (i, (when, action)) in rules.iter().enumerate() {
                yaml.push_str(&format!("  - {{ name: r{i}, when: {when}, {action} }}\n"));
            }
            let model = model(&yaml);
            let rules = &model.rules;
            for r in &requests {
                let mut headers = HeaderMap::new();
                if let Some(t) = r.tenant {
                    headers.insert("x-tenant", HeaderValue::from_static(t));
                }
                if r.beta {
                    headers.insert("x-beta", HeaderValue::from_static("yes"));
                }
                let method = http::Method::from_bytes(r.method.as_bytes()).unwrap();
                let facts = Facts {
                    req: RequestView {
                        method: &method,
                        host: r.host,
                        path: r.path,
                        query: None,
                        headers: &headers,
                        client_ip: None,
                        arrival: Default::default(),
                    },
                    uid: r.uid.and_then(|u| Uid::parse(Cow::Borrowed(u))),
                    tier: if r.paid { crate::facts::identity::Tier::Paid } else { crate::facts::identity::Tier::Trial },
                    tier_unresolved: r.tier_unresolved,
                    internal: r.internal,
                    internal_unresolved: r.internal_unresolved,
                    assigned: match (r.uid, r.assigned) {
                        (None, _) => Assigned::NoUid,
                        (_, 0) => Assigned::Unresolved,
                        (_, 1) => Assigned::Known(None),
                        (_, n) => Assigned::Known(Some(VersionId(u16::from(n) - 2))),
                    },
                    channel: r.channel.map(VersionId),
                    rollouts: &[],
                    override_version: None,
                };
                let linear = decide_linear(rules, &facts);
                prop_assert_eq!(decide(rules, &facts), linear, "{:?}\n{}", r, yaml);
                if let Ok(decision) = linear {
                    let explained = explain(rules, &facts).unwrap();
                    prop_assert_eq!(explained.decision, decision);
                    prop_assert_eq!(explained.steps.len(), rules.rules.len());
                }
            }
        }
    }

    #[test]
    fn per_tenant_rules_leave_few_candidates() {
        let mut yaml = String::from(HEAD);
        for t in 0..1000 {
            yaml.push_str(&format!(
                "  - {{ name: host{t}, when: {{ host: t{t}.example.com }}, version: canary }}\n"
            ));
            yaml.push_str(&format!("  - {{ name: hdr{t}, when: {{ host: app.example.com, header: {{ X-Tenant: [\"t{t}\"] }} }}, version: canary }}\n"));
        }
        yaml.push_str("  - { name: last, when: { tier: paid }, version: canary }\n");
        let model = model(&yaml);
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", HeaderValue::from_static("t7"));
        let method = http::Method::GET;
        let view = RequestView {
            method: &method,
            host: "app.example.com",
            path: "/",
            query: None,
            headers: &headers,
            client_ip: None,
            arrival: Default::default(),
        };
        let facts = Facts::gather(&model.rules.identity, view);
        let candidates: Vec<Candidate> = model.rules.index.candidates(&facts).collect();
        // hdr7 (position 15) by its tenant header, which the lookup proved (its second
        // condition), `last` (position 2000) without a key.
        assert_eq!(
            candidates,
            vec![
                Candidate {
                    position: 15,
                    proven: Some(1)
                },
                Candidate {
                    position: 2000,
                    proven: None
                }
            ]
        );
    }
}
