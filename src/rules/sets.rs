//! Compact string sets and maps, built once per generation and read on the request path
//! without allocating: `uid_in` and `host` lists, the keys of the rule index
//! ([`super::index`]) and the service table's hosts and path prefixes.
//!
//! A [`StrTable`] keeps every key in one string buffer and finds it through a
//! [`hashbrown::HashTable`] of slots that hold the key's place in the buffer: about the key's
//! bytes plus 20 to 40 bytes an entry (the table's spare room included: a 100,000-uid list
//! holds 46 bytes a uid), where a `HashSet<Box<str>>` costs a 16-byte slot and an allocation
//! of its own per key. A lookup that finds its key reads three cache lines (the
//! control bytes, the slot, the key's bytes); with positions alone in the slots it read the
//! table of key ends too, a fourth, which with thousands of tenants is a miss each time.
//! Host tables compare without regard to ASCII case (hashing lowercases a copy on the stack),
//! so a request's host needs no lowercase copy. [`HostSet`] answers `host:` lists (exact names
//! by one lookup, `*.suffix` names by one lookup per suffix length present where the host has
//! a dot, `*` by a flag), [`PrefixMap`] the keys that are a prefix of a path (one lookup per
//! key length present).

use std::fmt;
use std::hash::{BuildHasher, Hasher};

use hashbrown::{DefaultHashBuilder, HashTable};

use super::model::HostPattern;

/// Strings in one buffer, each found by a hash lookup; the position of a key (its order of
/// insertion) indexes side tables. A small `Copy` payload `P` per key (what the key leads to:
/// a span of rules, a host's prefixes) can sit in the key's slot instead, where the lookup
/// that found the key has already read it: one cache line fewer than a side table.
#[derive(Clone, Default)]
pub struct StrTable<P = ()> {
    text: String,
    /// Where key `i` ends in `text` (it starts where key `i - 1` ends).
    ends: Vec<u32>,
    table: HashTable<Slot<P>>,
    state: DefaultHashBuilder,
    caseless: bool,
}

/// A key in the hash table: its position, its bytes in `text`, its payload.
#[derive(Clone, Copy)]
struct Slot<P> {
    position: u32,
    start: u32,
    end: u32,
    payload: P,
}

impl<P> Slot<P> {
    fn key<'t>(&self, text: &'t str) -> &'t str {
        &text[self.start as usize..self.end as usize]
    }
}

impl<P> fmt::Debug for StrTable<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StrTable")
            .field("keys", &self.ends.len())
            .field("bytes", &self.text.len())
            .field("caseless", &self.caseless)
            .finish()
    }
}

fn key_at<'t>(text: &'t str, ends: &[u32], i: u32) -> &'t str {
    let i = i as usize;
    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
    &text[start..ends[i] as usize]
}

fn hash_of(state: &DefaultHashBuilder, caseless: bool, key: &str) -> u64 {
    let mut h = state.build_hasher();
    if caseless {
        // The same chunks for a key and its lowercase twin: the same hash.
        let mut buf = [0u8; 64];
        for chunk in key.as_bytes().chunks(buf.len()) {
            let lower = &mut buf[..chunk.len()];
            lower.copy_from_slice(chunk);
            lower.make_ascii_lowercase();
            h.write(lower);
        }
    } else {
        h.write(key.as_bytes());
    }
    h.write_usize(key.len());
    h.finish()
}

fn same(caseless: bool, a: &str, b: &str) -> bool {
    if caseless {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

/// A table this large no longer fits the `u32` positions: the compiler refuses such lists
/// long before (see `MAX_LIST_ENTRIES` in `compile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull;

impl<P: Copy + Default> StrTable<P> {
    /// An empty table comparing keys exactly.
    pub fn new() -> StrTable<P> {
        StrTable::default()
    }

    /// An empty table comparing keys without regard to ASCII case (host names).
    pub fn caseless() -> StrTable<P> {
        StrTable {
            caseless: true,
            ..StrTable::default()
        }
    }

    /// The position of `key`, added (with the default payload) if new.
    pub fn insert(&mut self, key: &str) -> Result<u32, TableFull> {
        self.insert_with(key, P::default())
    }
}

impl<P: Copy> StrTable<P> {
    /// The position of `key`, added with `payload` if new (a key present keeps its own).
    pub fn insert_with(&mut self, key: &str, payload: P) -> Result<u32, TableFull> {
        if let Some(i) = self.get(key) {
            return Ok(i);
        }
        let start = u32::try_from(self.text.len()).map_err(|_| TableFull)?;
        let end = u32::try_from(self.text.len() + key.len()).map_err(|_| TableFull)?;
        let position = u32::try_from(self.ends.len()).map_err(|_| TableFull)?;
        self.text.push_str(key);
        self.ends.push(end);
        let (text, state, caseless) = (&self.text, &self.state, self.caseless);
        let hash = hash_of(state, caseless, key);
        let slot = Slot {
            position,
            start,
            end,
            payload,
        };
        self.table
            .insert_unique(hash, slot, |s| hash_of(state, caseless, s.key(text)));
        Ok(position)
    }

    /// The position of `key`, if present.
    pub fn get(&self, key: &str) -> Option<u32> {
        self.slot(key).map(|s| s.position)
    }

    /// The payload of `key`, if present, where it sits in the key's slot.
    pub fn payload(&self, key: &str) -> Option<&P> {
        self.slot(key).map(|s| &s.payload)
    }

    fn slot(&self, key: &str) -> Option<&Slot<P>> {
        if self.ends.is_empty() {
            return None;
        }
        let hash = hash_of(&self.state, self.caseless, key);
        self.table
            .find(hash, |s| same(self.caseless, s.key(&self.text), key))
    }

    /// The key at position `i`.
    pub fn key(&self, i: u32) -> &str {
        key_at(&self.text, &self.ends, i)
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Every key, in insertion order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        (0..self.ends.len() as u32).map(|i| self.key(i))
    }

    /// Gives back the spare capacity of the building phase.
    pub fn shrink(&mut self) {
        self.text.shrink_to_fit();
        self.ends.shrink_to_fit();
        let (text, state, caseless) = (&self.text, &self.state, self.caseless);
        self.table
            .shrink_to_fit(|s| hash_of(state, caseless, s.key(text)));
    }
}

/// A set of exact strings: a `uid_in` list.
#[derive(Debug, Clone, Default)]
pub struct StrSet(StrTable);

impl StrSet {
    /// The set of `items` (duplicates kept once).
    pub fn new<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<StrSet, TableFull> {
        let mut table = StrTable::new();
        for item in items {
            table.insert(item)?;
        }
        table.shrink();
        Ok(StrSet(table))
    }

    /// Whether `item` is in the set.
    pub fn contains(&self, item: &str) -> bool {
        self.0.get(item).is_some()
    }

    /// How many distinct items.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every item, in the order first written.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.keys()
    }
}

/// `*.suffix` host patterns, stored as `.suffix`, with the lengths present so that a host is
/// looked up only at those lengths (and only where it has a dot there).
#[derive(Debug, Clone, Default)]
pub struct SuffixTable<P = ()> {
    /// The suffixes, `.example.com`, without regard to case, each with its payload.
    pub table: StrTable<P>,
    /// The distinct suffix lengths, longest first.
    lens: Vec<usize>,
}

impl<P: Copy + Default> SuffixTable<P> {
    /// An empty table.
    pub fn new() -> SuffixTable<P> {
        SuffixTable {
            table: StrTable::caseless(),
            lens: Vec::new(),
        }
    }

    /// The position of `suffix` (`.example.com`), added if new.
    pub fn insert(&mut self, suffix: &str) -> Result<u32, TableFull> {
        self.insert_with(suffix, P::default())
    }
}

impl<P: Copy> SuffixTable<P> {
    /// The position of `suffix`, added with `payload` if new.
    pub fn insert_with(&mut self, suffix: &str, payload: P) -> Result<u32, TableFull> {
        if let Err(at) = self.lens.binary_search_by(|l| suffix.len().cmp(l)) {
            self.lens.insert(at, suffix.len());
        }
        self.table.insert_with(suffix, payload)
    }

    /// The payloads of the suffixes `host` ends with (the host longer than the suffix, as
    /// [`HostPattern::matches`] has it), longest suffix first, with each suffix's length.
    pub fn matching<'s: 'h, 'h>(
        &'s self,
        host: &'h str,
    ) -> impl Iterator<Item = (&'s P, usize)> + 'h {
        let bytes = host.as_bytes();
        self.lens
            .iter()
            .filter(move |&&len| len < bytes.len() && bytes[bytes.len() - len] == b'.')
            // A '.' byte starts a character: the slice is on a boundary.
            .filter_map(move |&len| {
                let suffix = &host[host.len() - len..];
                self.table.payload(suffix).map(|p| (p, len))
            })
    }

    /// Whether no suffix is stored.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Gives back the spare capacity of the building phase.
    pub fn shrink(&mut self) {
        self.table.shrink();
        self.lens.shrink_to_fit();
    }
}

/// A `host:` list: exact names, `*.suffix` names and `*`, each kind found in one step.
#[derive(Debug, Clone, Default)]
pub struct HostSet {
    /// Exact names, without regard to case.
    pub exact: StrTable,
    /// `*.suffix` names.
    pub suffixes: SuffixTable,
    /// `*` was listed.
    pub any: bool,
}

impl HostSet {
    /// The set of `patterns`.
    pub fn new<'a>(
        patterns: impl IntoIterator<Item = &'a HostPattern>,
    ) -> Result<HostSet, TableFull> {
        let mut set = HostSet {
            exact: StrTable::caseless(),
            suffixes: SuffixTable::new(),
            any: false,
        };
        for pattern in patterns {
            match pattern {
                HostPattern::Exact(host) => {
                    set.exact.insert(host)?;
                }
                HostPattern::Suffix(suffix) => {
                    set.suffixes.insert(suffix)?;
                }
                HostPattern::Any => set.any = true,
            }
        }
        set.exact.shrink();
        set.suffixes.shrink();
        Ok(set)
    }

    /// Whether `host` (without port, any case) matches one of the patterns.
    pub fn matches(&self, host: &str) -> bool {
        self.any || self.exact.get(host).is_some() || self.suffixes.matching(host).next().is_some()
    }

    /// How many patterns.
    pub fn len(&self) -> usize {
        self.exact.len() + self.suffixes.table.len() + usize::from(self.any)
    }

    /// Whether no pattern is listed (no host matches).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Values keyed by path prefixes: which keys a path starts with.
#[derive(Debug, Clone)]
pub struct PrefixMap<V> {
    keys: StrTable,
    values: Vec<V>,
    /// The distinct key lengths, shortest first.
    lens: Vec<usize>,
}

impl<V> Default for PrefixMap<V> {
    fn default() -> Self {
        PrefixMap {
            keys: StrTable::new(),
            values: Vec::new(),
            lens: Vec::new(),
        }
    }
}

impl<V> PrefixMap<V> {
    /// The value of `prefix`, made by `new` when the prefix is new.
    pub fn entry(&mut self, prefix: &str, new: impl FnOnce() -> V) -> Result<&mut V, TableFull> {
        let i = self.keys.insert(prefix)? as usize;
        if i == self.values.len() {
            self.values.push(new());
            if let Err(at) = self.lens.binary_search(&prefix.len()) {
                self.lens.insert(at, prefix.len());
            }
        }
        Ok(&mut self.values[i])
    }

    /// The values of the keys `path` starts with, shortest key first, with each key's length.
    pub fn prefixes_of<'s: 'p, 'p>(
        &'s self,
        path: &'p str,
    ) -> impl Iterator<Item = (usize, &'s V)> + 'p {
        self.lens
            .iter()
            .take_while(move |&&len| len <= path.len())
            .filter_map(move |&len| {
                let i = self.keys.get(path.get(..len)?)?;
                Some((len, &self.values[i as usize]))
            })
    }

    /// The value of the longest key `path` starts with, with that key's length.
    pub fn longest(&self, path: &str) -> Option<(usize, &V)> {
        self.lens
            .iter()
            .rev()
            .filter(|&&len| len <= path.len())
            .find_map(|&len| {
                let i = self.keys.get(path.get(..len)?)?;
                Some((len, &self.values[i as usize]))
            })
    }

    /// Every key with its value, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.keys.keys().zip(self.values.iter())
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Gives back the spare capacity of the building phase.
    pub fn shrink(&mut self) {
        self.keys.shrink();
        self.values.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tables_find_what_was_inserted_and_hosts_ignore_case() {
        let mut exact: StrTable = StrTable::new();
        assert_eq!(exact.insert("a"), Ok(0));
        assert_eq!(exact.insert("bc"), Ok(1));
        assert_eq!(exact.insert("a"), Ok(0));
        assert_eq!(
            (exact.get("bc"), exact.get("BC"), exact.get("")),
            (Some(1), None, None)
        );
        // Payloads: found with their key; a key inserted again keeps its first.
        let mut hosts: StrTable<u16> = StrTable::caseless();
        hosts.insert_with("www.example.com", 7).unwrap();
        assert_eq!(hosts.get("WWW.Example.COM"), Some(0));
        assert_eq!(hosts.payload("WWW.Example.COM"), Some(&7));
        let long = "x".repeat(200);
        hosts.insert_with(&long, 8).unwrap();
        assert_eq!(hosts.insert_with(&long, 9), Ok(1));
        assert_eq!(hosts.get(&long.to_ascii_uppercase()), Some(1));
        assert_eq!(hosts.payload(&long), Some(&8));
        assert_eq!(hosts.payload("example.com"), None);
        let mut suffixes: SuffixTable<u16> = SuffixTable::new();
        suffixes.insert_with(".example.com", 1).unwrap();
        suffixes.insert_with(".com", 2).unwrap();
        let found: Vec<_> = suffixes.matching("a.EXAMPLE.com").collect();
        assert_eq!(found, vec![(&1, 12), (&2, 4)]);
    }

    #[test]
    fn prefix_maps_walk_the_prefixes_of_a_path() {
        let mut map = PrefixMap::default();
        for (p, v) in [("/", 1), ("/api", 2), ("/api/v2", 3), ("/b", 4)] {
            *map.entry(p, || 0).unwrap() = v;
        }
        let found: Vec<_> = map.prefixes_of("/api/v2/x").map(|(l, v)| (l, *v)).collect();
        assert_eq!(found, vec![(1, 1), (4, 2), (7, 3)]);
        assert_eq!(map.longest("/api/v1"), Some((4, &2)));
        assert_eq!(map.longest("é"), None);
    }

    fn pattern() -> impl Strategy<Value = HostPattern> {
        prop_oneof![
            "[a-c]{1,2}(\\.[a-c]{1,2}){0,2}".prop_map(|h| HostPattern::Exact(h.into())),
            "(\\.[a-c]{1,2}){1,2}".prop_map(|s| HostPattern::Suffix(s.into())),
            Just(HostPattern::Any),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A table finds every key it was given, at its first position with its first
        /// payload, and no other; across its growth and its final shrink, case-blind or not.
        #[test]
        fn tables_agree_with_a_map(
            keys in proptest::collection::vec("[a-dA-D]{0,3}", 0..120),
            probes in proptest::collection::vec("[a-dA-D]{0,3}", 0..40),
            caseless in any::<bool>(),
        ) {
            let fold = |k: &str| if caseless { k.to_ascii_lowercase() } else { k.to_string() };
            let mut table: StrTable<usize> =
                if caseless { StrTable::caseless() } else { StrTable::new() };
            let mut model: std::collections::HashMap<String, (u32, usize)> = Default::default();
            for (n, key) in keys.iter().enumerate() {
                let next = model.len() as u32;
                let (position, _) = *model.entry(fold(key)).or_insert((next, n));
                prop_assert_eq!(table.insert_with(key, n), Ok(position));
            }
            table.shrink();
            prop_assert_eq!(table.len(), model.len());
            for key in keys.iter().chain(&probes) {
                let want = model.get(&fold(key));
                prop_assert_eq!(table.get(key), want.map(|&(p, _)| p));
                prop_assert_eq!(table.payload(key), want.map(|(_, n)| n));
            }
            for (i, key) in table.keys().enumerate() {
                prop_assert_eq!(model[&fold(key)].0, i as u32);
            }
        }

        /// A host set answers as the list of patterns it was built from.
        #[test]
        fn host_sets_agree_with_the_patterns(
            patterns in proptest::collection::vec(pattern(), 0..6),
            host in "[a-cA-C.]{0,8}",
        ) {
            let set = HostSet::new(&patterns).unwrap();
            prop_assert_eq!(set.matches(&host), patterns.iter().any(|p| p.matches(&host)));
        }
    }
}
