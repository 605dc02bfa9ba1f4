//! The decision: a pure function of the compiled rules and the request's facts.
//!
//! Rules are tried top to bottom. A rule whose conditions all hold either decides a version
//! or is skipped (a split whose key is absent; a restricted version for a user who is not
//! internal), and evaluation moves on. No rule deciding means the default version.
//! [`explain`] runs the very same evaluation with a trace of every rule, for `graygate
//! explain` and the admin API; [`decide`] runs it with a trace that compiles away.

use std::fmt;

use serde::Serialize;

use crate::facts::bucket::{ip_text, scale, split_hash};
use crate::facts::Facts;
use crate::rules::model::{Action, Condition, RuleSet, Split, SplitKey, ValueMatch, VersionId};

/// Why a version was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A rule's `version:` action.
    Rule,
    /// A rule's split; `point` is where the key fell on `[0, total)`.
    Split {
        /// The key's position.
        point: u64,
    },
    /// No rule decided.
    Default,
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The decided version.
    pub version: VersionId,
    /// The index of the deciding rule, `None` for the default.
    pub rule: Option<usize>,
    /// How it was decided.
    pub reason: Reason,
}

impl Decision {
    /// The deciding rule's name, or `default`.
    pub fn rule_name<'r>(&self, rules: &'r RuleSet) -> &'r str {
        match self.rule {
            Some(i) => &rules.rules[i].name,
            None => "default",
        }
    }
}

/// What happened to one rule during evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "why", rename_all = "snake_case")]
pub enum Outcome {
    /// The rule decided.
    Decided(String),
    /// A condition did not hold.
    NotMatched(String),
    /// The conditions held but the rule could not decide.
    Skipped(String),
    /// An earlier rule decided.
    NotReached,
}

/// One rule's line in an explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// The rule's name.
    pub rule: String,
    /// What happened.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The decision with the trace of every rule.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// Every rule, in order.
    pub steps: Vec<Step>,
    /// The decision.
    pub decision: Decision,
}

/// A sink for evaluation steps; `()` discards them at no cost.
trait Trace {
    fn record(&mut self, rule: &str, outcome: impl FnOnce() -> Outcome);
}

impl Trace for () {
    #[inline(always)]
    fn record(&mut self, _: &str, _: impl FnOnce() -> Outcome) {}
}

impl Trace for Vec<Step> {
    fn record(&mut self, rule: &str, outcome: impl FnOnce() -> Outcome) {
        self.push(Step {
            rule: rule.to_string(),
            outcome: outcome(),
        });
    }
}

/// Decides the version for a request.
pub fn decide(rules: &RuleSet, facts: &Facts) -> Decision {
    evaluate(rules, facts, &mut ())
}

/// Decides and explains every rule's part in the decision.
pub fn explain(rules: &RuleSet, facts: &Facts) -> Explanation {
    let mut steps = Vec::with_capacity(rules.rules.len());
    let decision = evaluate(rules, facts, &mut steps);
    for rule in &rules.rules[steps.len()..] {
        steps.push(Step {
            rule: rule.name.to_string(),
            outcome: Outcome::NotReached,
        });
    }
    Explanation { steps, decision }
}

fn evaluate(rules: &RuleSet, facts: &Facts, trace: &mut impl Trace) -> Decision {
    for (index, rule) in rules.rules.iter().enumerate() {
        if let Some(failed) = rule.conditions.iter().find(|c| !holds(c, facts)) {
            trace.record(&rule.name, || {
                Outcome::NotMatched(describe_miss(failed, facts))
            });
            continue;
        }
        let (version, reason) = match &rule.action {
            Action::Version(version) => (*version, Reason::Rule),
            Action::Split(split) => match split_point(split, facts) {
                Some(point) => (arm_at(split, point), Reason::Split { point }),
                None => {
                    trace.record(&rule.name, || {
                        Outcome::Skipped(format!(
                            "the split key ({}) is absent",
                            key_name(&split.by)
                        ))
                    });
                    continue;
                }
            },
        };
        if rules.version(version).restricted && !facts.internal {
            trace.record(&rule.name, || {
                Outcome::Skipped(format!(
                    "version {} is restricted and the user is not internal",
                    rules.version(version).name
                ))
            });
            continue;
        }
        trace.record(&rule.name, || {
            let name = &rules.version(version).name;
            Outcome::Decided(match (reason, &rule.action) {
                (Reason::Split { point }, Action::Split(split)) => format!(
                    "{name}: {} fell at {point} of [0, {})",
                    key_name(&split.by),
                    split.total
                ),
                _ => name.to_string(),
            })
        });
        return Decision {
            version,
            rule: Some(index),
            reason,
        };
    }
    Decision {
        version: rules.default,
        rule: None,
        reason: Reason::Default,
    }
}

/// Where the request's key falls on `[0, split.total)`, or `None` when the key is absent.
fn split_point(split: &Split, facts: &Facts) -> Option<u64> {
    let hash = match &split.by {
        SplitKey::Uid => split_hash(&split.salt, facts.uid.as_ref()?.text.as_bytes()),
        SplitKey::ClientIp => {
            let mut buf = [0u8; 48];
            split_hash(&split.salt, ip_text(facts.req.client_ip?, &mut buf))
        }
        SplitKey::Random => fastrand::u64(..),
        SplitKey::Cookie(name) => split_hash(&split.salt, facts.req.cookie(name)?.as_bytes()),
        SplitKey::Header(name) => split_hash(&split.salt, facts.req.header(name)?.as_bytes()),
    };
    Some(scale(hash, split.total))
}

/// The version whose range holds `point`.
pub fn arm_at(split: &Split, point: u64) -> VersionId {
    split
        .arms
        .iter()
        .find(|arm| point < arm.upper)
        .or(split.arms.last())
        .map(|arm| arm.version)
        .expect("compile guarantees a split has arms")
}

fn key_name(key: &SplitKey) -> String {
    match key {
        SplitKey::Uid => "uid".into(),
        SplitKey::ClientIp => "client_ip".into(),
        SplitKey::Random => "random".into(),
        SplitKey::Cookie(name) => format!("cookie:{name}"),
        SplitKey::Header(name) => format!("header:{name}"),
    }
}

/// Whether one condition holds.
pub fn holds(condition: &Condition, facts: &Facts) -> bool {
    let req = &facts.req;
    let uid = facts.uid.as_ref();
    match condition {
        Condition::Host(patterns) => patterns.iter().any(|p| p.matches(req.host)),
        Condition::PathPrefix(prefixes) => prefixes.iter().any(|p| req.path.starts_with(&**p)),
        Condition::PathRegex(set) => set.is_match(req.path),
        Condition::Method(methods) => methods.contains(req.method),
        Condition::Header(pairs) => pairs.iter().all(|(name, m)| m.matches(req.header(name))),
        Condition::Cookie(pairs) => pairs.iter().all(|(name, m)| m.matches(req.cookie(name))),
        Condition::Query(pairs) => pairs
            .iter()
            .all(|(name, m)| m.matches(req.query_param(name).as_deref())),
        Condition::ClientIp(nets) => req
            .client_ip
            .is_some_and(|ip| nets.iter().any(|net| net.contains(&ip))),
        Condition::UidTail(digits) => uid
            .and_then(|u| u.tail())
            .is_some_and(|d| digits & (1 << d) != 0),
        Condition::UidSuffix(suffixes) => {
            uid.is_some_and(|u| suffixes.iter().any(|s| u.text.ends_with(&**s)))
        }
        Condition::UidIn(set) => uid.is_some_and(|u| set.contains(&*u.text)),
        Condition::UidRange(min, max) => uid
            .and_then(|u| u.number)
            .is_some_and(|n| (*min..=*max).contains(&n)),
        Condition::HasUid(wanted) => uid.is_some() == *wanted,
        Condition::Tier(tier) => facts.tier == *tier,
        Condition::Internal(wanted) => facts.internal == *wanted,
    }
}

struct Shown<'a>(Option<&'a str>);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) if v.len() > 64 => write!(f, "\"{}...\"", &v[..v.floor_char_boundary(64)]),
            Some(v) => write!(f, "\"{v}\""),
            None => f.write_str("absent"),
        }
    }
}

fn describe_pairs<'a>(
    kind: &str,
    pairs: impl Iterator<Item = (&'a str, &'a ValueMatch, Option<String>)>,
) -> String {
    for (name, m, value) in pairs {
        if !m.matches(value.as_deref()) {
            return format!("{kind} {name} is {}", Shown(value.as_deref()));
        }
    }
    format!("{kind} did not match")
}

/// Why a condition did not hold, in words.
pub fn describe_miss(condition: &Condition, facts: &Facts) -> String {
    let req = &facts.req;
    let uid = facts.uid.as_ref().map(|u| &*u.text);
    match condition {
        Condition::Host(_) => format!("host {} is not listed", Shown(Some(req.host))),
        Condition::PathPrefix(_) => {
            format!("path {} has none of the prefixes", Shown(Some(req.path)))
        }
        Condition::PathRegex(_) => format!("path {} matches no regex", Shown(Some(req.path))),
        Condition::Method(_) => format!("method {} is not listed", req.method),
        Condition::Header(pairs) => describe_pairs(
            "header",
            pairs
                .iter()
                .map(|(n, m)| (n.as_str(), m, req.header(n).map(str::to_string))),
        ),
        Condition::Cookie(pairs) => describe_pairs(
            "cookie",
            pairs
                .iter()
                .map(|(n, m)| (&**n, m, req.cookie(n).map(str::to_string))),
        ),
        Condition::Query(pairs) => describe_pairs(
            "query",
            pairs
                .iter()
                .map(|(n, m)| (&**n, m, req.query_param(n).map(|v| v.into_owned()))),
        ),
        Condition::ClientIp(_) => match req.client_ip {
            Some(ip) => format!("client_ip {ip} is in none of the networks"),
            None => "client_ip is unknown".into(),
        },
        Condition::UidTail(_) => match facts.uid.as_ref().and_then(|u| u.tail()) {
            Some(d) => format!("uid_tail: uid {} ends in {d}", Shown(uid)),
            None => format!("uid_tail: uid {} is not numeric", Shown(uid)),
        },
        Condition::UidSuffix(_) => {
            format!("uid_suffix: uid {} has none of the suffixes", Shown(uid))
        }
        Condition::UidIn(_) => format!("uid_in: uid {} is not listed", Shown(uid)),
        Condition::UidRange(min, max) => {
            format!("uid_range: uid {} is not in [{min}, {max}]", Shown(uid))
        }
        Condition::HasUid(wanted) => {
            if *wanted {
                "has_uid: the request has no uid".into()
            } else {
                format!("has_uid: false, but the uid is {}", Shown(uid))
            }
        }
        Condition::Tier(tier) => format!("tier is {}, not {}", facts.tier.as_str(), tier.as_str()),
        Condition::Internal(wanted) => {
            if *wanted {
                "internal: the user is not internal".into()
            } else {
                "internal: false, but the user is internal".into()
            }
        }
    }
}

/// Writes one line per step: number, outcome, rule, why.
pub fn write_steps(f: &mut impl fmt::Write, steps: &[Step]) -> fmt::Result {
    for (i, step) in steps.iter().enumerate() {
        let (mark, why) = match &step.outcome {
            Outcome::Decided(why) => ("DECIDED    ", why.as_str()),
            Outcome::NotMatched(why) => ("no match   ", why.as_str()),
            Outcome::Skipped(why) => ("skipped    ", why.as_str()),
            Outcome::NotReached => ("not reached", ""),
        };
        writeln!(f, "{:>3}. {mark} {:<24} {why}", i + 1, step.rule)?;
    }
    Ok(())
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_steps(f, &self.steps)
    }
}
