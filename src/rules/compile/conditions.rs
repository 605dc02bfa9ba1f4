//! The `when` of a rule or a goal: host patterns, path prefixes and regexes, methods, header,
//! cookie and query values, client networks, uid digits, ranges and lists, tier, internal
//! and channel conditions, each checked for the values it may take; the value matchers of
//! [`crate::rules::matcher`] (regexes compiled, bounds parsed, empty ranges refused) and the
//! `not` / `any` combinators, nested at most [`MAX_DEPTH`] deep.

use http::header::HeaderName;
use http::Method;
use indexmap::IndexMap;
use regex::RegexSet;
use serde::Deserialize;
use smallvec::SmallVec;

use super::{At, Compiler};
use crate::facts::identity::Tier;
use crate::facts::Scheme;
use crate::rules::matcher::{
    parse_number, parse_version, Bound, Cmp, Matcher, ValueMatch, MATCHER_KEYS,
};
use crate::rules::model::{Condition, HostPattern, ListenerSet};
use crate::rules::raw::{OneOrMany, RawWhen, WHEN_KEYS};
use crate::rules::sets::{HostSet, StrSet, TableFull};

/// How deep `not` and `any` may nest inside one another.
pub const MAX_DEPTH: usize = 4;

/// The most entries a `uid_in` or `host` list may hold. Such a list compiles into a compact
/// set (about its bytes plus 10 bytes an entry, [`crate::rules::sets`]); a longer one belongs
/// in the store, where it costs neither memory in every process nor reload time.
pub const MAX_LIST_ENTRIES: usize = 200_000;

impl Compiler {
    /// The conditions of `w`, found at `at`, for the rule or goal `what`.
    pub(super) fn conditions(
        &mut self,
        at: &At,
        what: &str,
        when: serde_yaml::Value,
    ) -> Vec<Condition> {
        match self.parse_when(at, what, when) {
            Some(w) => self.conditions_within(at, what, w, 0),
            None => Vec::new(),
        }
    }

    /// Reads a `when` (or an inner set); on failure, each condition is read on its own so
    /// that every bad one is reported at its line, by its name.
    fn parse_when(&mut self, at: &At, what: &str, value: serde_yaml::Value) -> Option<RawWhen> {
        if value.is_null() {
            return Some(RawWhen::default());
        }
        let serde_yaml::Value::Mapping(map) = &value else {
            self.error(
                at,
                format!("{what}: conditions must be a map such as {{ path_prefix: /api }}; the conditions are {WHEN_KEYS}"),
            );
            return None;
        };
        // Read from a reference: a `uid_in` of 100,000 uids is not copied twice.
        let whole = match RawWhen::deserialize(&value) {
            Ok(w) => return Some(w),
            Err(e) => e,
        };
        let mut reported = false;
        for (key, item) in map {
            let name = key.as_str().unwrap_or("?");
            if !WHEN_KEYS.split(", ").any(|k| k == name) {
                self.error(
                    &at.child(name),
                    format!("{what}: unknown condition \"{name}\"; the conditions are {WHEN_KEYS}"),
                );
                reported = true;
                continue;
            }
            let one = serde_yaml::Mapping::from_iter([(key.clone(), item.clone())]);
            if let Err(e) = serde_yaml::from_value::<RawWhen>(serde_yaml::Value::Mapping(one)) {
                self.error(&at.child(name), format!("{what}: {name}: {e}"));
                reported = true;
            }
        }
        if !reported {
            self.error(at, format!("{what}: {whole}"));
        }
        None
    }

    /// The conditions of `w` inside `depth` combinators.
    fn conditions_within(
        &mut self,
        at: &At,
        what: &str,
        w: RawWhen,
        depth: usize,
    ) -> Vec<Condition> {
        let RawWhen {
            host,
            path_prefix,
            path_regex,
            method,
            header,
            cookie,
            query,
            client_ip,
            uid_tail,
            uid_suffix,
            uid_in,
            uid_range,
            has_uid,
            tier,
            internal,
            channel,
            scheme,
            listener,
            not,
            any,
        } = w;
        let mut out = Vec::new();
        if let Some(hosts) = host {
            let a = at.child("host");
            if self.list_fits(&a, what, "host", hosts.0.len()) {
                let label = format!("{what}: host");
                let patterns: Vec<HostPattern> = hosts
                    .0
                    .iter()
                    .filter_map(|h| self.host_pattern(&a, &label, h))
                    .collect();
                out.extend(
                    self.compact(&a, what, "host", HostSet::new(&patterns))
                        .map(|set| Condition::Host(Box::new(set))),
                );
            }
        }
        if let Some(prefixes) = path_prefix {
            for p in &prefixes.0 {
                if !p.starts_with('/') {
                    self.error(
                        &at.child("path_prefix"),
                        format!("{what}: path_prefix \"{p}\" must start with /"),
                    );
                }
            }
            out.push(Condition::PathPrefix(
                prefixes.0.into_iter().map(Into::into).collect(),
            ));
        }
        if let Some(regexes) = path_regex {
            out.extend(self.path_regex(&at.child("path_regex"), what, &regexes.0));
        }
        if let Some(methods) = method {
            let a = at.child("method");
            let mut parsed = SmallVec::new();
            for m in &methods.0 {
                match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(method) => parsed.push(method),
                    Err(_) => {
                        self.error(&a, format!("{what}: method \"{m}\" is not an HTTP method"))
                    }
                }
            }
            out.push(Condition::Method(parsed));
        }
        if let Some(headers) = header {
            let a = at.child("header");
            let mut pairs = Vec::new();
            for (name, value) in headers {
                let m = self.value_match(&a.child(&name), what, "header", &name, value);
                match HeaderName::from_bytes(name.as_bytes()) {
                    Ok(h) => pairs.extend(m.map(|m| (h, m))),
                    Err(_) => self.error(&a, format!("{what}: \"{name}\" is not a header name")),
                }
            }
            out.push(Condition::Header(pairs));
        }
        if let Some(cookies) = cookie {
            out.push(Condition::Cookie(
                self.named_values(at, what, "cookie", cookies),
            ));
        }
        if let Some(query) = query {
            out.push(Condition::Query(
                self.named_values(at, what, "query", query),
            ));
        }
        if let Some(nets) = client_ip {
            let a = at.child("client_ip");
            let nets = nets
                .0
                .iter()
                .filter_map(|c| self.cidr(&a, &format!("{what}: client_ip"), c))
                .collect();
            out.push(Condition::ClientIp(nets));
        }
        if let Some(tails) = uid_tail {
            let mut mask = 0u16;
            for t in &tails.0 {
                match t.0.parse::<u8>() {
                    Ok(d) if d <= 9 && t.0.len() == 1 => mask |= 1 << d,
                    _ => self.error(
                        &at.child("uid_tail"),
                        format!("{what}: uid_tail \"{}\" is not a digit 0-9", t.0),
                    ),
                }
            }
            out.push(Condition::UidTail(mask));
        }
        if let Some(suffixes) = uid_suffix {
            if suffixes.0.iter().any(|s| s.0.is_empty()) {
                self.error(
                    &at.child("uid_suffix"),
                    format!("{what}: uid_suffix has an empty suffix"),
                );
            }
            out.push(Condition::UidSuffix(
                suffixes.0.into_iter().map(|t| t.0.into()).collect(),
            ));
        }
        if let Some(uids) = uid_in {
            let a = at.child("uid_in");
            if self.list_fits(&a, what, "uid_in", uids.0.len()) {
                let set = StrSet::new(uids.0.iter().map(|t| t.0.as_str()));
                out.extend(
                    self.compact(&a, what, "uid_in", set)
                        .map(|set| Condition::UidIn(Box::new(set))),
                );
            }
        }
        if let Some(range) = uid_range {
            match range[..] {
                [min, max] if min <= max => out.push(Condition::UidRange(min, max)),
                _ => self.error(
                    &at.child("uid_range"),
                    format!("{what}: uid_range must be [min, max] with min <= max"),
                ),
            }
        }
        if let Some(has) = has_uid {
            out.push(Condition::HasUid(has));
        }
        if let Some(tier) = tier {
            match Tier::parse(&tier) {
                Some(t) => out.push(Condition::Tier(t)),
                None => self.error(
                    &at.child("tier"),
                    format!("{what}: tier \"{tier}\" is neither paid nor trial"),
                ),
            }
        }
        if let Some(internal) = internal {
            out.push(Condition::Internal(internal));
        }
        if let Some(channel) = channel {
            out.extend(self.channel(&at.child("channel"), what, channel));
        }
        if let Some(scheme) = scheme {
            match Scheme::parse(&scheme) {
                Some(s) => out.push(Condition::Scheme(s)),
                None => self.error(
                    &at.child("scheme"),
                    format!("{what}: scheme \"{scheme}\" is neither http nor https"),
                ),
            }
        }
        if let Some(names) = listener {
            out.extend(self.listener(&at.child("listener"), what, &names.0));
        }
        if let Some(inner) = not {
            let a = at.child("not");
            if let Some(inner) = self.inner_set(&a, what, "not", inner, depth) {
                out.push(Condition::Not(inner));
            }
        }
        if let Some(sets) = any {
            let a = at.child("any");
            match sets {
                serde_yaml::Value::Sequence(items) if !items.is_empty() => {
                    let mut compiled = Vec::new();
                    for (i, item) in items.into_iter().enumerate() {
                        let label = format!("any #{}", i + 1);
                        compiled.extend(self.inner_set(&a.item(i), what, &label, item, depth));
                    }
                    out.push(Condition::Any(compiled));
                }
                _ => self.error(
                    &a,
                    format!("{what}: any must be a list of condition maps, such as [{{ header: {{ X-Beta: \"1\" }} }}, {{ cookie: {{ beta: \"1\" }} }}]"),
                ),
            }
        }
        out
    }

    /// Whether a `uid_in` or `host` list of `len` entries is short enough; an error says
    /// where a longer one belongs otherwise. A list written out that long is refused before
    /// (`oversized.rs`); this sees the others (a list behind a YAML alias).
    fn list_fits(&mut self, at: &At, what: &str, key: &str, len: usize) -> bool {
        if len <= MAX_LIST_ENTRIES {
            return true;
        }
        self.error(at, super::oversized::too_long(what, key, len));
        false
    }

    /// A compact set, or an error at `at` when it outgrew its positions.
    fn compact<T>(
        &mut self,
        at: &At,
        what: &str,
        key: &str,
        set: Result<T, TableFull>,
    ) -> Option<T> {
        match set {
            Ok(set) => Some(set),
            Err(TableFull) => {
                self.error(at, format!("{what}: {key} is larger than 4 GiB"));
                None
            }
        }
    }

    /// The conditions of one `not` or `any` item, one level deeper than `depth`.
    fn inner_set(
        &mut self,
        at: &At,
        what: &str,
        label: &str,
        value: serde_yaml::Value,
        depth: usize,
    ) -> Option<Vec<Condition>> {
        if depth + 1 > MAX_DEPTH {
            self.error(
                at,
                format!("{what}: {label} is nested more than {MAX_DEPTH} levels deep (not and any nest at most {MAX_DEPTH} levels)"),
            );
            return None;
        }
        if !value.is_mapping() {
            self.error(
                at,
                format!("{what}: {label} must be a map of conditions, such as {{ path_prefix: /admin }}"),
            );
            return None;
        }
        let inner = self.parse_when(at, &format!("{what}: {label}"), value)?;
        let errors_before = self.diags.errors().count();
        let conditions = self.conditions_within(at, what, inner, depth + 1);
        if conditions.is_empty() && self.diags.errors().count() == errors_before {
            self.error(at, format!("{what}: {label} has no conditions"));
            return None;
        }
        Some(conditions)
    }

    /// The expected value of header, cookie or query parameter `name`: a string, a list of
    /// strings, or a map of matchers.
    /// The `cookie:` or `query:` map of a `when`: each name with its compiled value match.
    fn named_values(
        &mut self,
        at: &At,
        what: &str,
        kind: &str,
        values: IndexMap<String, serde_yaml::Value>,
    ) -> Vec<(Box<str>, ValueMatch)> {
        let a = at.child(kind);
        let mut pairs = Vec::new();
        for (name, value) in values {
            let m = self.value_match(&a.child(&name), what, kind, &name, value);
            pairs.extend(m.map(|m| (name.into(), m)));
        }
        pairs
    }

    fn value_match(
        &mut self,
        at: &At,
        what: &str,
        kind: &str,
        name: &str,
        value: serde_yaml::Value,
    ) -> Option<ValueMatch> {
        let subject = format!("{what}: {kind} {name}");
        let forms = format!(
            "a value, \"*\" (present), a list of values, or a map of matchers ({MATCHER_KEYS})"
        );
        match value {
            serde_yaml::Value::Mapping(map) => self.matcher_map(at, &subject, map),
            serde_yaml::Value::Sequence(items) => {
                let mut values = Vec::new();
                for item in &items {
                    match scalar_text(item) {
                        Some(v) => values.push(v),
                        None => {
                            self.error(at, format!("{subject}: a list holds values to match exactly; the accepted forms are {forms}"));
                            return None;
                        }
                    }
                }
                if values.is_empty() {
                    self.error(at, format!("{subject}: the list of values is empty"));
                    return None;
                }
                Some(exact(values))
            }
            other => match scalar_text(&other) {
                Some(v) => Some(exact(vec![v])),
                None => {
                    self.error(at, format!("{subject} must be {forms}"));
                    None
                }
            },
        }
    }

    /// A matcher map: every matcher must hold.
    fn matcher_map(
        &mut self,
        at: &At,
        subject: &str,
        map: serde_yaml::Mapping,
    ) -> Option<ValueMatch> {
        if map.is_empty() {
            self.error(
                at,
                format!("{subject}: the matcher map is empty; the matchers are {MATCHER_KEYS}"),
            );
            return None;
        }
        let errors_before = self.diags.errors().count();
        let mut matchers = Vec::new();
        let mut absent = false;
        let keys = map.len();
        for (key, value) in map {
            let Some(key) = key.as_str().map(str::to_string) else {
                self.error(
                    at,
                    format!("{subject}: matcher keys are names; the matchers are {MATCHER_KEYS}"),
                );
                continue;
            };
            let a = at.child(&key);
            let text = scalar_text(&value);
            let needs_text = |c: &mut Compiler| {
                c.error(&a, format!("{subject}: {key} needs a string"));
            };
            match key.as_str() {
                "regex" => {
                    let patterns: Option<Vec<String>> = match &value {
                        serde_yaml::Value::Sequence(items) => {
                            items.iter().map(scalar_text).collect()
                        }
                        v => scalar_text(v).map(|p| vec![p]),
                    };
                    let Some(patterns) = patterns.filter(|p| !p.is_empty()) else {
                        self.error(&a, format!("{subject}: regex needs a pattern or a list of patterns"));
                        continue;
                    };
                    let label = format!("{subject}: regex");
                    if let Some(set) = self.regex_set(&a, &label, &patterns) {
                        matchers.push(Matcher::Regex(set));
                    }
                }
                "prefix" | "suffix" | "contains" => match text {
                    Some(t) if t.is_empty() => {
                        self.error(&a, format!("{subject}: {key} is empty, so every value matches; use \"*\" for present"))
                    }
                    Some(t) => matchers.push(match key.as_str() {
                        "prefix" => Matcher::Prefix(t.into()),
                        "suffix" => Matcher::Suffix(t.into()),
                        _ => Matcher::Contains(t.into()),
                    }),
                    None => needs_text(self),
                },
                "in" => match &value {
                    serde_yaml::Value::Sequence(items) if !items.is_empty() => {
                        let values: Option<Vec<Box<str>>> =
                            items.iter().map(|i| scalar_text(i).map(Into::into)).collect();
                        match values {
                            Some(values) => matchers.push(Matcher::In(values)),
                            None => self.error(&a, format!("{subject}: in must list strings")),
                        }
                    }
                    serde_yaml::Value::Sequence(_) => {
                        self.error(&a, format!("{subject}: in is empty, so no value matches"))
                    }
                    _ => self.error(&a, format!("{subject}: in must be a list, such as [eu, us]")),
                },
                "gt" | "gte" | "lt" | "lte" => {
                    let bound = number_text(&value)
                        .and_then(|t| parse_number(&t).map(|n| (n, t)));
                    match bound {
                        Some((n, t)) => matchers.push(Matcher::Number(Bound {
                            cmp: cmp_of(&key),
                            value: n,
                            text: t.into(),
                        })),
                        None => self.error(&a, format!("{subject}: {key} needs a plain decimal number such as 1200 or -2.5 (no sign +, no exponent)")),
                    }
                }
                "version_gt" | "version_gte" | "version_lt" | "version_lte" => match &value {
                    serde_yaml::Value::Number(n) if !n.is_u64() => self.error(
                        &a,
                        format!("{subject}: {key} must be quoted, as in \"5.10\": unquoted, YAML reads it as the number {n}"),
                    ),
                    v => match scalar_text(v).and_then(|t| parse_version(&t).map(|p| (p, t))) {
                        Some((parts, t)) => matchers.push(Matcher::Version(Bound {
                            cmp: cmp_of(&key["version_".len()..]),
                            value: parts,
                            text: t.into(),
                        })),
                        None => self.error(&a, format!("{subject}: {key} needs a dotted version such as \"5.2\" or \"5.10.1\" (digits and dots only)")),
                    },
                },
                "absent" => match value {
                    serde_yaml::Value::Bool(true) => absent = true,
                    _ => self.error(&a, format!("{subject}: absent can only be true; use \"*\" for present")),
                },
                other => self.error(
                    &a,
                    format!("{subject}: unknown matcher \"{other}\"; the matchers are {MATCHER_KEYS}"),
                ),
            }
        }
        if absent && keys > 1 {
            self.error(
                at,
                format!("{subject}: absent: true cannot be combined with other matchers"),
            );
        }
        self.check_range(
            at,
            subject,
            "",
            matchers.iter().filter_map(|m| match m {
                Matcher::Number(b) => Some((b.cmp, b.value, &*b.text)),
                _ => None,
            }),
        );
        self.check_range(
            at,
            subject,
            "version_",
            matchers.iter().filter_map(|m| match m {
                // Trailing zeros dropped, so that slices compare as versions do.
                Matcher::Version(b) => {
                    let len = b.value.iter().rposition(|&p| p > 0).map_or(0, |i| i + 1);
                    Some((b.cmp, &b.value[..len], &*b.text))
                }
                _ => None,
            }),
        );
        if self.diags.errors().count() != errors_before {
            return None;
        }
        Some(if absent {
            ValueMatch::Absent
        } else {
            ValueMatch::All(matchers)
        })
    }

    /// Reports bounds that no value can meet, such as `gte: 2000, lt: 1200`.
    fn check_range<'b, T: PartialOrd + Copy>(
        &mut self,
        at: &At,
        subject: &str,
        prefix: &str,
        bounds: impl Iterator<Item = (Cmp, T, &'b str)>,
    ) {
        let (lower, upper): (Vec<_>, Vec<_>) = bounds.partition(|(cmp, _, _)| cmp.is_lower());
        for (lc, lv, lt) in &lower {
            for (uc, uv, ut) in &upper {
                let empty = match lv.partial_cmp(uv) {
                    Some(std::cmp::Ordering::Greater) | None => true,
                    Some(std::cmp::Ordering::Equal) => lc.is_strict() || uc.is_strict(),
                    Some(std::cmp::Ordering::Less) => false,
                };
                if empty {
                    self.error(
                        at,
                        format!(
                            "{subject}: {prefix}{} {lt} and {prefix}{} {ut} leave no value that matches",
                            cmp_name(*lc),
                            cmp_name(*uc)
                        ),
                    );
                }
            }
        }
    }

    /// `path_regex`: every pattern is checked on its own, so each bad one is named.
    fn path_regex(&mut self, at: &At, what: &str, patterns: &[String]) -> Option<Condition> {
        self.regex_set(at, &format!("{what}: path_regex"), patterns)
            .map(Condition::PathRegex)
    }

    /// The patterns as one set, each checked on its own so that each bad one is named.
    fn regex_set(&mut self, at: &At, label: &str, patterns: &[String]) -> Option<RegexSet> {
        let mut valid = true;
        for pattern in patterns {
            if let Err(e) = regex::Regex::new(pattern) {
                // The crate's message ends with the reason on its last line.
                let text = e.to_string();
                let reason = text
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim_start_matches("error: ");
                let msg = format!("{label} \"{pattern}\" is invalid: {reason}");
                self.error(at, msg);
                valid = false;
            }
        }
        if !valid {
            return None;
        }
        match RegexSet::new(patterns) {
            Ok(set) => Some(set),
            Err(e) => {
                self.error(at, format!("{label} is invalid: {e}"));
                None
            }
        }
    }

    /// `listener`: names of the config's proxy listeners, resolved to their ids.
    fn listener(&mut self, at: &At, what: &str, names: &[String]) -> Option<Condition> {
        if names.is_empty() {
            self.error(
                at,
                format!("{what}: listener is an empty list, so no request matches"),
            );
            return None;
        }
        let mut ids = Vec::new();
        for name in names {
            match self.listeners.id(name) {
                Some(id) => ids.push(id),
                None => {
                    let known = self.listeners.names().collect::<Vec<_>>().join(", ");
                    self.error(
                        at,
                        format!("{what}: listener \"{name}\" is not a listener of the config; the listeners are {known}"),
                    );
                }
            }
        }
        Some(Condition::Listener(ListenerSet {
            ids: ids.into(),
            listeners: self.listeners.clone(),
        }))
    }

    /// `channel`: `any`, or the versions whose channel the request must have chosen.
    fn channel(&mut self, at: &At, what: &str, value: serde_yaml::Value) -> Option<Condition> {
        match value {
            serde_yaml::Value::String(any) if any == "any" => Some(Condition::Channel(None)),
            other => match serde_yaml::from_value::<OneOrMany<String>>(other) {
                Ok(names) => {
                    let mut ids = Vec::new();
                    for name in &names.0 {
                        match self.version_names.get(name) {
                            Some(id) => ids.push(*id),
                            None => self.error(
                                at,
                                format!("{what}: channel names unknown version \"{name}\""),
                            ),
                        }
                    }
                    Some(Condition::Channel(Some(ids)))
                }
                Err(_) => {
                    self.error(
                        at,
                        format!("{what}: channel must be any or a list of versions"),
                    );
                    None
                }
            },
        }
    }
}

/// `"*"` among the values means present with any value.
fn exact(values: Vec<String>) -> ValueMatch {
    if values.iter().any(|v| v == "*") {
        ValueMatch::Present
    } else {
        ValueMatch::AnyOf(values.into_iter().map(Into::into).collect())
    }
}

/// A string, or a whole number written without quotes (`X-Beta: 1`).
fn scalar_text(value: &serde_yaml::Value) -> Option<String> {
    match value {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

/// A numeric bound as text: a YAML number or a string.
fn number_text(value: &serde_yaml::Value) -> Option<String> {
    match value {
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        other => scalar_text(other),
    }
}

/// `gt`, `gte`, `lt` or `lte` (the key is one of them).
fn cmp_of(key: &str) -> Cmp {
    match key {
        "gt" => Cmp::Gt,
        "gte" => Cmp::Gte,
        "lt" => Cmp::Lt,
        _ => Cmp::Lte,
    }
}

/// The key of a comparison.
fn cmp_name(cmp: Cmp) -> &'static str {
    match cmp {
        Cmp::Gt => "gt",
        Cmp::Gte => "gte",
        Cmp::Lt => "lt",
        Cmp::Lte => "lte",
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::testing::{diagnostics, HEAD};

    fn with_when(when: &str) -> Vec<String> {
        diagnostics(&format!(
            "{HEAD}rules:\n  - name: r\n    version: canary\n    when:\n{when}"
        ))
    }

    const MATCHERS: &str = "regex, prefix, suffix, contains, in, gt, gte, lt, lte, version_gt, version_gte, version_lt, version_lte, absent";
    const CONDITIONS: &str = "host, path_prefix, path_regex, method, header, cookie, query, client_ip, uid_tail, uid_suffix, uid_in, uid_range, has_uid, tier, internal, channel, scheme, listener, not, any";

    /// A list longer than `MAX_LIST_ENTRIES` is refused at its line, saying where it belongs
    /// (`benches/scale.rs` compiles a list of 100,000).
    #[test]
    fn over_long_lists_are_refused_with_advice() {
        let list = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
        let max = super::MAX_LIST_ENTRIES;
        assert_eq!(
            with_when(&format!("      uid_in: [{}]\n", list(max + 1))),
            vec![format!("rules.yaml:11: error: rule \"r\": uid_in lists {} uids, more than {max}: put the uids in a Redis set (identity.tier.redis_set or identity.internal.redis_set, then tier: paid or internal: true) or store their versions (version: $assigned)", max + 1)]
        );
        let hosts = (0..=max)
            .map(|i| format!("h{i}.example.com"))
            .collect::<Vec<_>>()
            .join(", ");
        assert_eq!(
            with_when(&format!("      host: [{hosts}]\n")),
            vec![format!("rules.yaml:11: error: rule \"r\": host lists {} hosts, more than {max}: serve the domains with \"*.suffix\" patterns, or give each group of tenants a service of its own", max + 1)]
        );
    }

    /// Every malformed matcher or combinator: the exact message, at the line of the value.
    #[test]
    fn malformed_matchers_and_combinators() {
        let forms = format!(
            "a value, \"*\" (present), a list of values, or a map of matchers ({MATCHERS})"
        );
        let cases: Vec<(&str, usize, String)> = vec![
            ("      header:\n        X-A: { regexp: x }\n", 12, format!("header X-A: unknown matcher \"regexp\"; the matchers are {MATCHERS}")),
            ("      header:\n        X-A: { regex: [\"^ok\", \"(\"] }\n", 12, "header X-A: regex \"(\" is invalid: unclosed group".into()),
            ("      header:\n        X-A: { regex: [\"^a\", { b: 1 }] }\n", 12, "header X-A: regex needs a pattern or a list of patterns".into()),
            ("      header:\n        X-A: { regex: [] }\n", 12, "header X-A: regex needs a pattern or a list of patterns".into()),
            ("      header:\n        X-A: {}\n", 12, format!("header X-A: the matcher map is empty; the matchers are {MATCHERS}")),
            ("      cookie:\n        a: { in: [] }\n", 12, "cookie a: in is empty, so no value matches".into()),
            ("      cookie:\n        a: { gte: 2000, lt: 1200 }\n", 12, "cookie a: gte 2000 and lt 1200 leave no value that matches".into()),
            ("      cookie:\n        a: { gt: 5, lte: 5 }\n", 12, "cookie a: gt 5 and lte 5 leave no value that matches".into()),
            ("      cookie:\n        a: { gte: \"+5\" }\n", 12, "cookie a: gte needs a plain decimal number such as 1200 or -2.5 (no sign +, no exponent)".into()),
            ("      cookie:\n        a: { version_gte: \"5..2\" }\n", 12, "cookie a: version_gte needs a dotted version such as \"5.2\" or \"5.10.1\" (digits and dots only)".into()),
            ("      cookie:\n        a: { version_lt: v6 }\n", 12, "cookie a: version_lt needs a dotted version such as \"5.2\" or \"5.10.1\" (digits and dots only)".into()),
            ("      cookie:\n        a: { version_gte: 5.10 }\n", 12, "cookie a: version_gte must be quoted, as in \"5.10\": unquoted, YAML reads it as the number 5.1".into()),
            ("      cookie:\n        a: { version_gte: \"6\", version_lt: \"6.0\" }\n", 12, "cookie a: version_gte 6 and version_lt 6.0 leave no value that matches".into()),
            ("      query:\n        a: { absent: false }\n", 12, "query a: absent can only be true; use \"*\" for present".into()),
            ("      query:\n        a: { absent: true, prefix: x }\n", 12, "query a: absent: true cannot be combined with other matchers".into()),
            ("      query:\n        a: { prefix: \"\" }\n", 12, "query a: prefix is empty, so every value matches; use \"*\" for present".into()),
            ("      query:\n        a: ~\n", 12, format!("query a must be {forms}")),
            ("      query:\n        a: [{ prefix: x }]\n", 12, format!("query a: a list holds values to match exactly; the accepted forms are {forms}")),
            ("      uid_tail: { a: 1 }\n", 11, "uid_tail: expected a value or a list of values, not a map".into()),
            ("      host: { a: 1 }\n", 11, "host: expected a value or a list of values, not a map".into()),
            ("      uid_in: [[1]]\n", 11, "uid_in: expected a whole number or a string, such as 10001 or \"10001\"".into()),
            ("      pathprefix: /a\n", 11, format!("unknown condition \"pathprefix\"; the conditions are {CONDITIONS}")),
            ("      not: { pathprefix: /a }\n", 11, format!("not: unknown condition \"pathprefix\"; the conditions are {CONDITIONS}")),
            ("      not: {}\n", 11, "not has no conditions".into()),
            ("      not: /admin\n", 11, "not must be a map of conditions, such as { path_prefix: /admin }".into()),
            ("      any: []\n", 11, "any must be a list of condition maps, such as [{ header: { X-Beta: \"1\" } }, { cookie: { beta: \"1\" } }]".into()),
            ("      any:\n        - { path_prefix: /a }\n        - { cookie: { b: { in: [] } } }\n", 13, "cookie b: in is empty, so no value matches".into()),
            ("      not: { not: { not: { not: { not: { path_prefix: /a } } } } }\n", 11, "not is nested more than 4 levels deep (not and any nest at most 4 levels)".into()),
            ("      scheme: ftp\n", 11, "scheme \"ftp\" is neither http nor https".into()),
            ("      scheme: [http, https]\n", 11, "scheme: invalid type: sequence, expected a string".into()),
            // The default listeners: one named http (what a config without listeners has).
            ("      listener: [http, htps]\n", 11, "listener \"htps\" is not a listener of the config; the listeners are http".into()),
            ("      listener: []\n", 11, "listener is an empty list, so no request matches".into()),
            ("      any: [ { listener: nope } ]\n", 11, "listener \"nope\" is not a listener of the config; the listeners are http".into()),
        ];
        for (when, line, message) in cases {
            assert_eq!(
                with_when(when),
                vec![format!("rules.yaml:{line}: error: rule \"r\": {message}")],
                "when:\n{when}"
            );
        }
    }

    /// Depth 4 is allowed; every matcher form compiles.
    #[test]
    fn well_formed_matchers_compile() {
        let when = "      scheme: HTTPS\n      listener: http\n      not: { any: [ { not: { any: [ { path_prefix: /a } ] } } ] }\n      header:\n        X-A: always\n        X-B: [\"1\", 2]\n        X-C: { regex: \"^(qa|tester)-\", prefix: qa, suffix: \"-1\", contains: a-, in: [qa-1, qa-2] }\n        X-D: { gte: 1200, lt: 2000.5, gt: -1, lte: \"1999\" }\n        X-E: { version_gte: \"5.2\", version_lt: 6, version_gt: \"5\", version_lte: \"5.99.1\" }\n        X-F: { absent: true }\n";
        assert_eq!(with_when(when), Vec::<String>::new());
    }
}
