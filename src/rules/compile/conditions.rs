//! The `when` of a rule or a goal: host patterns, path prefixes and regexes, methods, header,
//! cookie and query values, client networks, uid digits, ranges and lists, tier, internal
//! and channel conditions, each checked for the values it may take.

use std::collections::HashSet;

use http::header::HeaderName;
use http::Method;
use regex::RegexSet;

use super::{At, Compiler};
use crate::facts::identity::Tier;
use crate::rules::model::{Condition, ValueMatch};
use crate::rules::raw::{OneOrMany, RawWhen};

impl Compiler {
    /// The conditions of `w`, found at `at`, for the rule or goal `what`.
    pub(super) fn conditions(&mut self, at: &At, what: &str, w: RawWhen) -> Vec<Condition> {
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
        } = w;
        let mut out = Vec::new();
        if let Some(hosts) = host {
            let a = at.child("host");
            let patterns = hosts
                .0
                .iter()
                .filter_map(|h| self.host_pattern(&a, &format!("{what}: host"), h))
                .collect();
            out.push(Condition::Host(patterns));
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
            let mut parsed = Vec::new();
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
            for (name, values) in headers {
                match HeaderName::from_bytes(name.as_bytes()) {
                    Ok(h) => pairs.push((h, value_match(values))),
                    Err(_) => self.error(&a, format!("{what}: \"{name}\" is not a header name")),
                }
            }
            out.push(Condition::Header(pairs));
        }
        if let Some(cookies) = cookie {
            out.push(Condition::Cookie(
                cookies
                    .into_iter()
                    .map(|(n, v)| (n.into(), value_match(v)))
                    .collect(),
            ));
        }
        if let Some(query) = query {
            out.push(Condition::Query(
                query
                    .into_iter()
                    .map(|(n, v)| (n.into(), value_match(v)))
                    .collect(),
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
            out.push(Condition::UidIn(
                uids.0
                    .into_iter()
                    .map(|t| t.0.into())
                    .collect::<HashSet<_>>(),
            ));
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
        out
    }

    /// `path_regex`: every pattern is checked on its own, so each bad one is named.
    fn path_regex(&mut self, at: &At, what: &str, patterns: &[String]) -> Option<Condition> {
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
                let msg = format!("{what}: path_regex \"{pattern}\" is invalid: {reason}");
                self.error(at, msg);
                valid = false;
            }
        }
        if !valid {
            return None;
        }
        match RegexSet::new(patterns) {
            Ok(set) => Some(Condition::PathRegex(set)),
            Err(e) => {
                self.error(at, format!("{what}: path_regex is invalid: {e}"));
                None
            }
        }
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
fn value_match(values: OneOrMany<String>) -> ValueMatch {
    if values.0.iter().any(|v| v == "*") {
        ValueMatch::Present
    } else {
        ValueMatch::AnyOf(values.0.into_iter().map(Into::into).collect())
    }
}
