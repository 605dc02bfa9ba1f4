//! The decision: a pure function of the compiled rules and the request's facts.
//!
//! Rules are tried top to bottom. A rule whose conditions all hold either decides a version
//! or is skipped (a split whose key is absent; a restricted version for a user who is not
//! internal), and evaluation moves on. No rule deciding means the default version.
//! [`explain`] runs the very same evaluation with a trace of every rule, for `graygate
//! explain` and the admin API; [`decide`] runs it with a trace that compiles away, over the
//! rules the [rule index](super::index) names as candidates for the request (the others'
//! key conditions cannot hold), skipping the key condition the index proved. [`decide_linear`]
//! tries every rule and every condition: the reference the index is tested against.

use std::fmt;

use serde::Serialize;

use crate::facts::bucket::{ip_text, scale, split_hash};
use crate::facts::VersionId;
use crate::facts::{Assigned, Facts};
use crate::rules::matcher::Shown;
use crate::rules::model::{
    Action, Condition, RolloutId, RolloutNow, Rule, RuleSet, Split, SplitKey, ValueMatch,
};

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
    /// The uid's stored assignment.
    Assigned,
    /// A valid channel cookie.
    Channel,
    /// A rollout's split; `point` is where the key fell on `[0, 100)`, the version below
    /// the weight.
    Rollout {
        /// The key's position.
        point: u64,
    },
    /// No rule decided.
    Default,
    /// The emergency override: no rule was evaluated (SPEC section 13).
    Override,
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
    /// The deciding rule's name as a header value, `override` or `default`.
    pub fn rule_header_value<'r>(&self, rules: &'r RuleSet) -> &'r http::HeaderValue {
        static DEFAULT: http::HeaderValue = http::HeaderValue::from_static("default");
        static OVERRIDE: http::HeaderValue = http::HeaderValue::from_static("override");
        match (self.rule, self.reason) {
            (Some(i), _) => &rules.rules[i].header_value,
            (None, Reason::Override) => &OVERRIDE,
            (None, _) => &DEFAULT,
        }
    }

    /// The deciding rule's place among the generation's rule slots: its index, then
    /// `default` (the rule count) and `override` (one past it), as [`Decision::rule_name`]
    /// names them.
    pub fn rule_slot(&self, rules: &RuleSet) -> usize {
        match (self.rule, self.reason) {
            (Some(i), _) => i,
            (None, Reason::Override) => rules.rules.len() + 1,
            (None, _) => rules.rules.len(),
        }
    }

    /// The names of a generation's rule slots, by [`Decision::rule_slot`]: the rules, then
    /// `default` and `override` (what [`Decision::rule_name`] says of each).
    pub fn rule_slot_names(rules: &RuleSet) -> Vec<&str> {
        let rule_names = rules.rules.iter().map(|rule| &*rule.name);
        rule_names.chain(["default", "override"]).collect()
    }

    /// The deciding rule's name, `override` or `default`.
    pub fn rule_name<'r>(&self, rules: &'r RuleSet) -> &'r str {
        match (self.rule, self.reason) {
            (Some(i), _) => &rules.rules[i].name,
            (None, Reason::Override) => "override",
            (None, _) => "default",
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

/// A fact the rules reached but the facts do not hold yet: look it up and decide again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// The uid's stored assignment (`version: $assigned`).
    Assignment,
    /// Membership of the uid in the paid set (`tier:` condition).
    Tier,
    /// Membership of the uid in the internal set (`internal:` condition, restricted guard).
    Internal,
}

/// Decides the version for a request, or names the first store fact a reached rule needs.
pub fn decide(rules: &RuleSet, facts: &Facts) -> Result<Decision, Missing> {
    let candidates = rules.index.candidates(facts).filter_map(|c| {
        let rule = rules.rules.get(c.position)?;
        Some((c.position, rule, c.proven))
    });
    evaluate(rules, facts, candidates, &mut ())
}

/// [`decide`] trying every rule in turn, without the index: the reference it is tested
/// against (and what [`explain`] runs).
pub fn decide_linear(rules: &RuleSet, facts: &Facts) -> Result<Decision, Missing> {
    evaluate(rules, facts, in_turn(rules), &mut ())
}

/// Decides and explains every rule's part in the decision.
pub fn explain(rules: &RuleSet, facts: &Facts) -> Result<Explanation, Missing> {
    let mut steps = Vec::with_capacity(rules.rules.len());
    let decision = evaluate(rules, facts, in_turn(rules), &mut steps)?;
    for rule in &rules.rules[steps.len()..] {
        steps.push(Step {
            rule: rule.name.to_string(),
            outcome: Outcome::NotReached,
        });
    }
    Ok(Explanation { steps, decision })
}

/// The store fact `condition` needs that `facts` does not hold yet.
fn needs(condition: &Condition, facts: &Facts) -> Option<Missing> {
    match condition {
        Condition::Tier(_) if facts.tier_unresolved => Some(Missing::Tier),
        Condition::Internal(_) if facts.internal_unresolved => Some(Missing::Internal),
        // Inside a combinator every inner fact is asked for: more lookups than the shortest
        // evaluation might need, never a decision on a fact not yet known.
        Condition::Not(inner) => needs_nested(inner.iter(), facts),
        Condition::Any(sets) => needs_nested(sets.iter().flatten(), facts),
        _ => None,
    }
}

/// Every rule in turn, none of its conditions known to hold: what [`evaluate`] tries
/// without the index.
fn in_turn(rules: &RuleSet) -> impl Iterator<Item = (usize, &Rule, Option<usize>)> {
    rules
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| (i, rule, None))
}

/// Tries `candidates` (rule positions, in rule order, each with the condition the index
/// proved, which is not evaluated again) top to bottom.
fn evaluate<'r>(
    rules: &'r RuleSet,
    facts: &Facts,
    candidates: impl Iterator<Item = (usize, &'r Rule, Option<usize>)>,
    trace: &mut impl Trace,
) -> Result<Decision, Missing> {
    if let Some(version) = facts.override_version {
        return Ok(Decision {
            version,
            rule: None,
            reason: Reason::Override,
        });
    }
    'rules: for (index, rule, proven) in candidates {
        for (c, condition) in rule.conditions.iter().enumerate() {
            // The index found the request under this condition's keys: it holds, and as
            // a key it needs no store fact.
            if proven == Some(c) {
                continue;
            }
            if let Some(missing) = needs(condition, facts) {
                return Err(missing);
            }
            if !holds(condition, facts) {
                trace.record(&rule.name, || {
                    Outcome::NotMatched(describe_miss(condition, facts))
                });
                continue 'rules;
            }
        }
        let (version, reason) = match &rule.action {
            Action::Version(version) => (*version, Reason::Rule),
            Action::Split(split) => match split_point(split, facts) {
                Some(point) => match arm_at(split, point) {
                    Some(version) => (version, Reason::Split { point }),
                    None => {
                        trace.record(&rule.name, || {
                            Outcome::Skipped("the split has no arms".into())
                        });
                        continue;
                    }
                },
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
            Action::Rollout(id) => {
                let rollout = &rules.rollouts[*id];
                match key_point(&rollout.by, &rollout.salt, 100, facts) {
                    Some(point) => {
                        let weight = rollout_now(rules, *id, facts).weight;
                        let version = if point < u64::from(weight) {
                            rollout.version
                        } else {
                            rollout.baseline
                        };
                        (version, Reason::Rollout { point })
                    }
                    None => {
                        trace.record(&rule.name, || {
                            Outcome::Skipped(format!(
                                "the rollout key ({}) is absent",
                                key_name(&rollout.by)
                            ))
                        });
                        continue;
                    }
                }
            }
            Action::Channel => match facts.channel {
                Some(version) => (version, Reason::Channel),
                None => {
                    trace.record(&rule.name, || {
                        Outcome::Skipped("no valid channel cookie".into())
                    });
                    continue;
                }
            },
            Action::Assigned => match facts.assigned {
                Assigned::Unresolved => return Err(Missing::Assignment),
                Assigned::Known(Some(version)) => (version, Reason::Assigned),
                Assigned::NoUid => {
                    trace.record(&rule.name, || {
                        Outcome::Skipped("no uid, so no stored assignment".into())
                    });
                    continue;
                }
                Assigned::Known(None) => {
                    trace.record(&rule.name, || {
                        Outcome::Skipped(
                            "no usable assignment stored (none, an unknown version, or the store failed)".into(),
                        )
                    });
                    continue;
                }
            },
        };
        if rules.version(version).restricted && !facts.internal {
            if facts.internal_unresolved {
                return Err(Missing::Internal);
            }
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
            let mut why = match (reason, &rule.action) {
                (Reason::Split { point }, Action::Split(split)) => format!(
                    "{name}: {} fell at {point} of [0, {})",
                    key_name(&split.by),
                    split.total
                ),
                (Reason::Rollout { point }, Action::Rollout(id)) => {
                    let rollout = &rules.rollouts[*id];
                    let now = rollout_now(rules, *id, facts);
                    format!(
                        "{name}: rollout {} at step {} of {} ({}%, {}), {} fell at {point} of [0, 100)",
                        rollout.name,
                        usize::from(now.step) + 1,
                        rollout.steps.len(),
                        now.weight,
                        now.phase.as_str(),
                        key_name(&rollout.by)
                    )
                }
                (Reason::Assigned, _) => format!("{name}: the stored assignment"),
                (Reason::Channel, _) => format!("{name}: the channel cookie"),
                _ => name.to_string(),
            };
            for held in rule.conditions.iter().filter_map(|c| held_set(c, facts)) {
                why.push_str(&format!(" ({held})"));
            }
            Outcome::Decided(why)
        });
        return Ok(Decision {
            version,
            rule: Some(index),
            reason,
        });
    }
    Ok(Decision {
        version: rules.default,
        rule: None,
        reason: Reason::Default,
    })
}

/// Where the request's key falls on `[0, split.total)`, or `None` when the key is absent.
fn split_point(split: &Split, facts: &Facts) -> Option<u64> {
    key_point(&split.by, &split.salt, split.total, facts)
}

/// Where the request's `by` key, hashed with `salt`, falls on `[0, total)`; `None` when the
/// request has no such key.
fn key_point(by: &SplitKey, salt: &[u8], total: u64, facts: &Facts) -> Option<u64> {
    let hash = match by {
        SplitKey::Uid => split_hash(salt, facts.uid.as_ref()?.text.as_bytes()),
        SplitKey::ClientIp => {
            let mut buf = [0u8; 48];
            split_hash(salt, ip_text(facts.req.client_ip?, &mut buf))
        }
        SplitKey::Random => fastrand::u64(..),
        SplitKey::Cookie(name) => split_hash(salt, facts.req.cookie(name)?.as_bytes()),
        SplitKey::Header(name) => split_hash(salt, facts.req.header(name)?.as_bytes()),
    };
    Some(scale(hash, total))
}

/// Where rollout `id` stands for this request: the caller's runtime state, or its start.
fn rollout_now(rules: &RuleSet, id: RolloutId, facts: &Facts) -> RolloutNow {
    facts
        .rollouts
        .get(id)
        .copied()
        .unwrap_or_else(|| rules.rollouts[id].start())
}

/// The version whose range holds `point` (`None` only for a split without arms, which
/// compile never builds).
pub fn arm_at(split: &Split, point: u64) -> Option<VersionId> {
    split
        .arms
        .iter()
        .find(|arm| point < arm.upper)
        .or(split.arms.last())
        .map(|arm| arm.version)
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

/// The goals whose conditions the request meets, as a bit set (bit `i`: goal `i`); a
/// conversion when the response status then fits the goal.
pub fn goal_attempts(rules: &RuleSet, facts: &Facts) -> u64 {
    rules
        .goals
        .iter()
        .enumerate()
        .filter(|(_, goal)| goal.conditions.iter().all(|c| holds(c, facts)))
        .fold(0, |bits, (i, _)| bits | 1 << i)
}

/// Whether one condition holds.
pub fn holds(condition: &Condition, facts: &Facts) -> bool {
    let req = &facts.req;
    let uid = facts.uid.as_ref();
    match condition {
        Condition::Host(set) => set.matches(req.host),
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
        Condition::UidIn(set) => uid.is_some_and(|u| set.contains(&u.text)),
        Condition::UidRange(min, max) => uid
            .and_then(|u| u.number)
            .is_some_and(|n| (*min..=*max).contains(&n)),
        Condition::HasUid(wanted) => uid.is_some() == *wanted,
        Condition::Tier(tier) => facts.tier == *tier,
        Condition::Internal(wanted) => facts.internal == *wanted,
        Condition::Channel(None) => facts.channel.is_some(),
        Condition::Channel(Some(versions)) => facts.channel.is_some_and(|v| versions.contains(&v)),
        Condition::Scheme(scheme) => req.arrival.scheme == *scheme,
        Condition::Listener(set) => set.contains(req.arrival.listener),
        Condition::Not(inner) => !holds_all(inner, facts),
        Condition::Any(sets) => sets.iter().any(|set| holds_all(set, facts)),
    }
}

/// Whether every condition of an inner set holds. Kept out of line so that the recursion
/// through `not` and `any` does not stop [`holds`] from being inlined into the rule loop.
#[inline(never)]
fn holds_all(conditions: &[Condition], facts: &Facts) -> bool {
    conditions.iter().all(|c| holds(c, facts))
}

/// The first store fact an inner condition needs; out of line like [`holds_all`].
#[inline(never)]
fn needs_nested<'c>(
    mut conditions: impl Iterator<Item = &'c Condition>,
    facts: &Facts,
) -> Option<Missing> {
    conditions.find_map(|c| needs(c, facts))
}

fn describe_pairs<'a>(
    kind: &str,
    pairs: impl Iterator<Item = (&'a str, &'a ValueMatch, Option<String>)>,
) -> String {
    for (name, m, value) in pairs {
        if let Some(why) = m.why_not(value.as_deref()) {
            return format!("{kind} {name} {why}");
        }
    }
    format!("{kind} did not match")
}

/// For an `any` that held, which set decided it: `any #2 holds`.
fn held_set(condition: &Condition, facts: &Facts) -> Option<String> {
    let Condition::Any(sets) = condition else {
        return None;
    };
    let i = sets.iter().position(|set| holds_all(set, facts))?;
    Some(format!("any #{} holds", i + 1))
}

/// The name of a condition, for saying which inner ones held.
fn label(condition: &Condition) -> String {
    match condition {
        Condition::Host(_) => "host".into(),
        Condition::PathPrefix(_) => "path_prefix".into(),
        Condition::PathRegex(_) => "path_regex".into(),
        Condition::Method(_) => "method".into(),
        Condition::Header(pairs) => {
            let names: Vec<&str> = pairs.iter().map(|(n, _)| n.as_str()).collect();
            format!("header {}", names.join(", "))
        }
        Condition::Cookie(pairs) | Condition::Query(pairs) => {
            let kind = if matches!(condition, Condition::Cookie(_)) {
                "cookie"
            } else {
                "query"
            };
            let names: Vec<&str> = pairs.iter().map(|(n, _)| &**n).collect();
            format!("{kind} {}", names.join(", "))
        }
        Condition::ClientIp(_) => "client_ip".into(),
        Condition::UidTail(_) => "uid_tail".into(),
        Condition::UidSuffix(_) => "uid_suffix".into(),
        Condition::UidIn(_) => "uid_in".into(),
        Condition::UidRange(..) => "uid_range".into(),
        Condition::HasUid(_) => "has_uid".into(),
        Condition::Tier(_) => "tier".into(),
        Condition::Internal(_) => "internal".into(),
        Condition::Channel(_) => "channel".into(),
        Condition::Scheme(_) => "scheme".into(),
        Condition::Listener(_) => "listener".into(),
        Condition::Not(_) => "not".into(),
        Condition::Any(_) => "any".into(),
    }
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
        Condition::Channel(_) => match facts.channel {
            Some(_) => "the channel cookie names a version not listed".into(),
            None => "no valid channel cookie".into(),
        },
        Condition::Internal(wanted) => {
            if *wanted {
                "internal: the user is not internal".into()
            } else {
                "internal: false, but the user is internal".into()
            }
        }
        Condition::Scheme(scheme) => format!(
            "scheme: the request came over {}, not {}",
            req.arrival.scheme.as_str(),
            scheme.as_str()
        ),
        Condition::Listener(set) => {
            let wanted: Vec<&str> = set
                .ids
                .iter()
                .filter_map(|id| set.listeners.name(*id))
                .collect();
            match set.listeners.name(req.arrival.listener) {
                Some(name) => format!(
                    "listener: the request arrived on {name}, not on {}",
                    wanted.join(", ")
                ),
                None => format!(
                    "listener: the request's listener is unknown, not one of {}",
                    wanted.join(", ")
                ),
            }
        }
        Condition::Not(inner) => format!(
            "not: every inner condition holds ({})",
            inner.iter().map(label).collect::<Vec<_>>().join("; ")
        ),
        Condition::Any(sets) => {
            let misses: Vec<String> = sets
                .iter()
                .enumerate()
                .filter_map(|(i, set)| {
                    let miss = set.iter().find(|c| !holds(c, facts))?;
                    Some(format!("#{}: {}", i + 1, describe_miss(miss, facts)))
                })
                .collect();
            format!("any: no set holds ({})", misses.join("; "))
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
        let line = format!("{:>3}. {mark} {:<24} {why}", i + 1, step.rule);
        writeln!(f, "{}", line.trim_end())?;
    }
    Ok(())
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_steps(f, &self.steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::RequestView;
    use crate::rules::testing::model;
    use http::header::{HeaderName, HeaderValue};
    use http::{HeaderMap, Method};

    const BASE: &str = r#"
versions:
  stable: {}
  canary: {}
  dev: { restricted: true }
default: stable
identity:
  uid: [cookie:uid, header:X-User-Id, query:uid]
  tier: { sources: [cookie:tier], paid_uids: [10001] }
  internal: { uids: [1], cidrs: [10.0.0.0/8] }
services:
  web:
    hosts: ["*"]
    groups: { stable: { peers: ["127.0.0.1:1"] } }
"#;

    /// A request for the table: everything optional, GET / on www.example.com by default.
    #[derive(Clone)]
    struct Req {
        method: &'static str,
        host: &'static str,
        path: &'static str,
        query: Option<&'static str>,
        headers: &'static [(&'static str, &'static str)],
        ip: &'static str,
    }

    const GET: Req = Req {
        method: "GET",
        host: "www.example.com",
        path: "/",
        query: None,
        headers: &[],
        ip: "192.0.2.1",
    };

    fn uid(value: &'static str) -> Req {
        let headers: &'static [(&'static str, &'static str)] =
            Box::leak(Box::new([("x-user-id", value)]));
        Req { headers, ..GET }
    }

    /// Runs `rules` (YAML list items) on `req`; returns (version, rule).
    fn run(rules: &str, req: &Req) -> (String, String) {
        let yaml = format!("{BASE}rules:\n{rules}");
        let model = model(&yaml);
        let mut headers = HeaderMap::new();
        for (name, value) in req.headers {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let method = Method::from_bytes(req.method.as_bytes()).unwrap();
        let view = RequestView {
            method: &method,
            host: req.host,
            path: req.path,
            query: req.query,
            headers: &headers,
            client_ip: req.ip.parse().ok(),
            arrival: Default::default(),
        };
        let facts = Facts::gather(&model.rules.identity, view);
        let decision = decide(&model.rules, &facts).expect("no store facts in these rules");
        // The traced evaluation must always agree with the fast one.
        let explained = explain(&model.rules, &facts).unwrap();
        assert_eq!(explained.decision.version, decision.version);
        assert_eq!(explained.decision.rule, decision.rule);
        assert_eq!(explained.steps.len(), model.rules.rules.len());
        (
            model.rules.version(decision.version).name.to_string(),
            decision.rule_name(&model.rules).to_string(),
        )
    }

    /// One rule `r` with `when` deciding canary.
    fn when(conditions: &str) -> String {
        format!("  - {{ name: r, when: {conditions}, version: canary }}\n")
    }

    #[test]
    fn every_condition_matches_and_misses() {
        let hdr = |h: &'static [(&'static str, &'static str)]| Req { headers: h, ..GET };
        let cases: Vec<(&str, Req, bool)> = vec![
            ("{ host: www.example.com }", GET, true),
            ("{ host: [a.example.com, WWW.example.com] }", GET, true),
            ("{ host: example.com }", GET, false),
            ("{ host: \"*.example.com\" }", GET, true),
            (
                "{ host: \"*.example.com\" }",
                Req {
                    host: "example.com",
                    ..GET
                },
                false,
            ),
            ("{ host: \"*\" }", GET, true),
            (
                "{ path_prefix: /shop }",
                Req {
                    path: "/shop/cart",
                    ..GET
                },
                true,
            ),
            (
                "{ path_prefix: [/a, /shop] }",
                Req {
                    path: "/sho",
                    ..GET
                },
                false,
            ),
            (
                "{ path_regex: \"^/item/[0-9]+$\" }",
                Req {
                    path: "/item/42",
                    ..GET
                },
                true,
            ),
            (
                "{ path_regex: \"^/item/[0-9]+$\" }",
                Req {
                    path: "/item/x",
                    ..GET
                },
                false,
            ),
            (
                "{ method: [POST, put] }",
                Req {
                    method: "PUT",
                    ..GET
                },
                true,
            ),
            ("{ method: POST }", GET, false),
            (
                "{ header: { X-Beta: \"yes\" } }",
                hdr(&[("x-beta", "yes")]),
                true,
            ),
            (
                "{ header: { X-Beta: [\"1\", \"yes\"] } }",
                hdr(&[("x-beta", "no")]),
                false,
            ),
            (
                "{ header: { X-Beta: \"*\" } }",
                hdr(&[("x-beta", "anything")]),
                true,
            ),
            ("{ header: { X-Beta: \"*\" } }", GET, false),
            (
                "{ header: { X-A: \"1\", X-B: \"2\" } }",
                hdr(&[("x-a", "1")]),
                false,
            ),
            (
                "{ cookie: { beta: \"1\" } }",
                hdr(&[("cookie", "a=b; beta=1")]),
                true,
            ),
            (
                "{ cookie: { beta: \"1\" } }",
                hdr(&[("cookie", "beta=2")]),
                false,
            ),
            (
                "{ query: { preview: \"on\" } }",
                Req {
                    query: Some("x=1&preview=on"),
                    ..GET
                },
                true,
            ),
            (
                "{ query: { preview: \"*\" } }",
                Req {
                    query: Some("x=1"),
                    ..GET
                },
                false,
            ),
            ("{ client_ip: [192.0.2.0/24] }", GET, true),
            (
                "{ client_ip: [198.51.100.0/24, \"2001:db8::/32\"] }",
                GET,
                false,
            ),
            ("{ uid_tail: [1, 2, 3] }", uid("13"), true),
            ("{ uid_tail: [1, 2, 3] }", uid("15"), false),
            ("{ uid_tail: [1, 2, 3] }", uid("a3"), false),
            ("{ uid_suffix: [\"07\"] }", uid("1207"), true),
            ("{ uid_suffix: [\"07\"] }", uid("1217"), false),
            ("{ uid_in: [42, \"abc\"] }", uid("abc"), true),
            ("{ uid_in: [42] }", uid("43"), false),
            ("{ uid_range: [100, 199] }", uid("199"), true),
            ("{ uid_range: [100, 199] }", uid("200"), false),
            ("{ has_uid: true }", uid("5"), true),
            ("{ has_uid: true }", GET, false),
            ("{ has_uid: false }", GET, true),
            ("{ tier: paid }", uid("10001"), true),
            (
                "{ tier: paid }",
                hdr(&[("cookie", "uid=5; tier=paid")]),
                true,
            ),
            ("{ tier: trial }", uid("5"), true),
            ("{ tier: paid }", uid("5"), false),
            ("{ internal: true }", uid("1"), true),
            (
                "{ internal: true }",
                Req {
                    ip: "10.9.8.7",
                    ..GET
                },
                true,
            ),
            ("{ internal: false }", uid("1"), false),
            // The default listeners: one plain listener named http.
            ("{ scheme: http }", GET, true),
            ("{ scheme: https }", GET, false),
            ("{ listener: http }", GET, true),
            ("{ not: { listener: [http] } }", GET, false),
            (
                "{ uid_tail: [3], path_prefix: /api }",
                Req {
                    path: "/api",
                    ..uid("3")
                },
                true,
            ),
            (
                "{ uid_tail: [3], path_prefix: /api }",
                Req {
                    path: "/web",
                    ..uid("3")
                },
                false,
            ),
        ];
        for (conditions, req, matches) in cases {
            let expected = if matches {
                ("canary".to_string(), "r".to_string())
            } else {
                ("stable".to_string(), "default".to_string())
            };
            assert_eq!(run(&when(conditions), &req), expected, "when: {conditions}");
        }
    }

    #[test]
    fn value_matchers_and_combinators() {
        let hdr = |h: &'static [(&'static str, &'static str)]| Req { headers: h, ..GET };
        let app = |v: &'static str| -> Req {
            let headers: &'static [(&'static str, &'static str)] =
                Box::leak(Box::new([("x-app-version", v)]));
            Req { headers, ..GET }
        };
        let version = "{ header: { X-App-Version: { version_gte: \"5.2\", version_lt: \"6\" } } }";
        let build = "{ header: { X-App-Version: { gte: 1200, lt: 2000 } } }";
        let cases: Vec<(&str, Req, bool)> = vec![
            (
                "{ header: { X-T: { regex: \"^(qa|tester)-\" } } }",
                hdr(&[("x-t", "qa-7")]),
                true,
            ),
            (
                "{ header: { X-T: { regex: \"^(qa|tester)-\" } } }",
                hdr(&[("x-t", "xqa-7")]),
                false,
            ),
            // Unanchored unless written so.
            (
                "{ header: { X-T: { regex: \"qa\" } } }",
                hdr(&[("x-t", "xqa-7")]),
                true,
            ),
            (
                "{ header: { X-T: { regex: [\"^a\", \"^b\"] } } }",
                hdr(&[("x-t", "b1")]),
                true,
            ),
            (
                "{ header: { X-T: { regex: [\"^a\", \"^b\"] } } }",
                hdr(&[("x-t", "c1")]),
                false,
            ),
            ("{ header: { X-T: { regex: \".*\" } } }", GET, false),
            (
                "{ cookie: { plan: { prefix: pro- } } }",
                hdr(&[("cookie", "plan=pro-y")]),
                true,
            ),
            (
                "{ cookie: { plan: { prefix: pro- } } }",
                hdr(&[("cookie", "plan=basic")]),
                false,
            ),
            (
                "{ cookie: { plan: { suffix: -y } } }",
                hdr(&[("cookie", "plan=pro-y")]),
                true,
            ),
            (
                "{ cookie: { plan: { suffix: -y } } }",
                hdr(&[("cookie", "plan=pro-m")]),
                false,
            ),
            (
                "{ cookie: { plan: { contains: o-y } } }",
                hdr(&[("cookie", "plan=pro-y")]),
                true,
            ),
            (
                "{ cookie: { plan: { contains: o-y } } }",
                hdr(&[("cookie", "plan=pro")]),
                false,
            ),
            (
                "{ cookie: { region: { in: [eu, us] } } }",
                hdr(&[("cookie", "region=us")]),
                true,
            ),
            (
                "{ cookie: { region: { in: [eu, us] } } }",
                hdr(&[("cookie", "region=ap")]),
                false,
            ),
            ("{ cookie: { legacy: { absent: true } } }", GET, true),
            (
                "{ cookie: { legacy: { absent: true } } }",
                hdr(&[("cookie", "legacy=1")]),
                false,
            ),
            (version, app("5.2"), true),
            (version, app("5.2.0"), true),
            (version, app("5.10"), true),
            (version, app("5.9.9"), true),
            (version, app("5.1.9"), false),
            (version, app("6"), false),
            (version, app("6.0.1"), false),
            (version, app("5..2"), false),
            (version, app("v5.2"), false),
            (version, app(""), false),
            (version, GET, false),
            (build, app("1200"), true),
            (build, app("1999.99"), true),
            (build, app("2000"), false),
            (build, app("1199"), false),
            (build, app("+1300"), false),
            (build, app("1.3e3"), false),
            (build, app("13e2"), false),
            (
                "{ query: { n: { gt: -5, lte: 0 } } }",
                Req {
                    query: Some("n=-1"),
                    ..GET
                },
                true,
            ),
            (
                "{ query: { n: { gt: -5, lte: 0 } } }",
                Req {
                    query: Some("n=-5"),
                    ..GET
                },
                false,
            ),
            (
                "{ query: { n: { gt: -5, lte: 0 } } }",
                Req {
                    query: Some("n=%2D1"),
                    ..GET
                },
                true,
            ),
            // The first value of a repeated header counts.
            (
                version,
                hdr(&[("x-app-version", "5.3"), ("x-app-version", "4.0")]),
                true,
            ),
            (
                version,
                hdr(&[("x-app-version", "4.0"), ("x-app-version", "5.3")]),
                false,
            ),
            ("{ not: { path_prefix: /admin } }", GET, true),
            (
                "{ not: { path_prefix: /admin } }",
                Req {
                    path: "/admin/x",
                    ..GET
                },
                false,
            ),
            (
                "{ not: { path_prefix: /admin, method: POST } }",
                Req {
                    path: "/admin/x",
                    ..GET
                },
                true,
            ),
            (
                "{ any: [ { header: { X-Beta: \"1\" } }, { cookie: { beta: \"1\" } } ] }",
                hdr(&[("x-beta", "1")]),
                true,
            ),
            (
                "{ any: [ { header: { X-Beta: \"1\" } }, { cookie: { beta: \"1\" } } ] }",
                hdr(&[("cookie", "beta=1")]),
                true,
            ),
            (
                "{ any: [ { header: { X-Beta: \"1\" } }, { cookie: { beta: \"1\" } } ] }",
                hdr(&[("cookie", "beta=2")]),
                false,
            ),
            (
                "{ any: [ { not: { any: [ { path_prefix: /a }, { path_prefix: /b } ] } } ] }",
                Req { path: "/c", ..GET },
                true,
            ),
            (
                "{ any: [ { not: { any: [ { path_prefix: /a }, { path_prefix: /b } ] } } ] }",
                Req { path: "/b", ..GET },
                false,
            ),
        ];
        for (conditions, req, matches) in cases {
            let expected = if matches {
                ("canary".to_string(), "r".to_string())
            } else {
                ("stable".to_string(), "default".to_string())
            };
            assert_eq!(
                run(&when(conditions), &req),
                expected,
                "when: {conditions} on {:?} {:?}",
                req.headers,
                req.query
            );
        }
    }

    /// A value over 4 KB and a header that is not visible ASCII are absent.
    #[test]
    fn over_long_and_non_ascii_values_are_absent() {
        let model = model(&format!(
            "{BASE}rules:\n  - {{ name: present, when: {{ header: {{ X-A: \"*\" }}, cookie: {{ c: \"*\" }} }}, version: canary }}\n  - {{ name: gone, when: {{ header: {{ X-A: {{ absent: true }} }} }}, version: dev }}\n"
        ));
        let decided = |value: HeaderValue, cookie: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-a", value);
            headers.insert("cookie", HeaderValue::from_str(cookie).unwrap());
            headers.insert("x-user-id", HeaderValue::from_static("1"));
            let view = RequestView {
                method: &Method::GET,
                host: "h",
                path: "/",
                query: None,
                headers: &headers,
                client_ip: None,
                arrival: Default::default(),
            };
            let facts = Facts::gather(&model.rules.identity, view);
            decide(&model.rules, &facts)
                .unwrap()
                .rule_name(&model.rules)
                .to_string()
        };
        let ok = HeaderValue::from_static("v");
        assert_eq!(decided(ok.clone(), "c=1"), "present");
        let long = "x".repeat(4097);
        assert_eq!(
            decided(HeaderValue::from_str(&long).unwrap(), "c=1"),
            "gone"
        );
        assert_eq!(
            decided(HeaderValue::from_str(&long[1..]).unwrap(), "c=1"),
            "present"
        );
        let utf8 = HeaderValue::from_bytes("café".as_bytes()).unwrap();
        assert_eq!(decided(utf8, "c=1"), "gone");
        let latin1 = HeaderValue::from_bytes(b"caf\xe9").unwrap();
        assert_eq!(decided(latin1, "c=1"), "gone");
        assert_eq!(decided(ok.clone(), &format!("c={long}")), "default");
        assert_eq!(decided(ok, &format!("c={}", &long[1..])), "present");
    }

    #[test]
    fn explanation_names_the_failing_matcher() {
        let explained = |rules: &str, headers: &[(&str, &str)], path: &str| {
            let model = model(&format!("{BASE}rules:\n{rules}"));
            let mut map = HeaderMap::new();
            for (n, v) in headers {
                map.append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            let view = RequestView {
                method: &Method::GET,
                host: "h",
                path,
                query: None,
                headers: &map,
                client_ip: None,
                arrival: Default::default(),
            };
            let facts = Facts::gather(&model.rules.identity, view);
            match &explain(&model.rules, &facts).unwrap().steps[0].outcome {
                Outcome::NotMatched(why) => why.clone(),
                other => panic!("{other:?}"),
            }
        };
        let app = "  - { name: app, when: { header: { X-App-Version: { version_gte: \"5.2\", version_lt: \"6\" } } }, version: canary }\n";
        // (rules, headers, path, why the first rule did not match)
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: Vec<Case> = vec![
            (app, &[("x-app-version", "5.1.9")], "/", "header x-app-version \"5.1.9\" is below 5.2"),
            (app, &[("x-app-version", "6.1")], "/", "header x-app-version \"6.1\" is not below 6"),
            (app, &[("x-app-version", "v5.2")], "/", "header x-app-version \"v5.2\" is not a dotted version"),
            (app, &[], "/", "header x-app-version is absent"),
            ("  - { name: n, when: { header: { X-B: { gt: 10, lte: 20 } } }, version: canary }\n", &[("x-b", "10")], "/", "header x-b \"10\" is not above 10"),
            ("  - { name: n, when: { header: { X-B: { gt: 10, lte: 20 } } }, version: canary }\n", &[("x-b", "21")], "/", "header x-b \"21\" is above 20"),
            ("  - { name: n, when: { header: { X-B: { gt: 10 } } }, version: canary }\n", &[("x-b", "1e3")], "/", "header x-b \"1e3\" is not a number"),
            ("  - { name: n, when: { header: { X-B: { gte: 10 } } }, version: canary }\n", &[("x-b", "9")], "/", "header x-b \"9\" is below 10"),
            ("  - { name: n, when: { header: { X-B: { lt: 10 } } }, version: canary }\n", &[("x-b", "10")], "/", "header x-b \"10\" is not below 10"),
            ("  - { name: n, when: { header: { X-B: { version_gt: \"1.2\" } } }, version: canary }\n", &[("x-b", "1.2.0")], "/", "header x-b \"1.2.0\" is not above 1.2"),
            ("  - { name: n, when: { header: { X-B: { version_lte: \"1.2\" } } }, version: canary }\n", &[("x-b", "1.10")], "/", "header x-b \"1.10\" is above 1.2"),
            ("  - { name: t, when: { header: { X-T: { regex: [\"^qa-\", \"^t-\"] } } }, version: canary }\n", &[("x-t", "dev")], "/", "header x-t \"dev\" matches no regex of ^qa-, ^t-"),
            ("  - { name: p, when: { cookie: { plan: { prefix: pro-, suffix: -y } } }, version: canary }\n", &[("cookie", "plan=pro-m")], "/", "cookie plan \"pro-m\" does not end with \"-y\""),
            ("  - { name: p, when: { cookie: { plan: { prefix: pro- } } }, version: canary }\n", &[("cookie", "plan=basic")], "/", "cookie plan \"basic\" does not start with \"pro-\""),
            ("  - { name: p, when: { cookie: { plan: { contains: x } } }, version: canary }\n", &[("cookie", "plan=basic")], "/", "cookie plan \"basic\" does not contain \"x\""),
            ("  - { name: p, when: { cookie: { region: { in: [eu, us] } } }, version: canary }\n", &[("cookie", "region=ap")], "/", "cookie region \"ap\" is not in [eu, us]"),
            ("  - { name: p, when: { cookie: { legacy: { absent: true } } }, version: canary }\n", &[("cookie", "legacy=1")], "/", "cookie legacy is present (\"1\")"),
            ("  - { name: p, when: { header: { X-Beta: [\"1\", yes] } }, version: canary }\n", &[("x-beta", "no")], "/", "header x-beta is \"no\""),
            ("  - { name: a, when: { not: { path_prefix: /admin, method: GET } }, version: canary }\n", &[], "/admin/users", "not: every inner condition holds (path_prefix; method)"),
            ("  - { name: a, when: { any: [ { header: { X-Beta: \"1\" } }, { cookie: { beta: \"1\" } } ] }, version: canary }\n", &[("x-beta", "0")], "/", "any: no set holds (#1: header x-beta is \"0\"; #2: cookie beta is absent)"),
        ];
        for (rules, headers, path, why) in cases {
            assert_eq!(explained(rules, headers, path), why, "{rules}");
        }
        let model = model(&format!("{BASE}rules:\n  - {{ name: a, when: {{ any: [ {{ header: {{ X-Beta: \"1\" }} }}, {{ cookie: {{ beta: \"1\" }} }} ] }}, version: canary }}\n"));
        let mut headers = HeaderMap::new();
        headers.insert("cookie", HeaderValue::from_static("beta=1"));
        let view = RequestView {
            method: &Method::GET,
            host: "h",
            path: "/",
            query: None,
            headers: &headers,
            client_ip: None,
            arrival: Default::default(),
        };
        let facts = Facts::gather(&model.rules.identity, view);
        assert_eq!(
            explain(&model.rules, &facts).unwrap().steps[0].outcome,
            Outcome::Decided("canary (any #2 holds)".into())
        );
    }

    /// `scheme` and `listener` read the request's arrival; explain says where it arrived.
    #[test]
    fn scheme_and_listener_conditions() {
        use crate::facts::{Arrival, ListenerId, Scheme};
        use crate::rules::compile::{compile, RuleSource};
        use crate::rules::model::Listeners;
        let listeners = Listeners::new([
            ("public".into(), Scheme::Http),
            ("public-tls".into(), Scheme::Https),
            ("office".into(), Scheme::Https),
        ]);
        let rules = "  - { name: tls-office, when: { scheme: https, listener: office }, version: dev }\n  - { name: plain, when: { scheme: http }, version: canary }\n  - { name: either, when: { listener: [public, office] }, version: stable }\n  - { name: not-public, when: { not: { listener: public } }, version: canary }\n";
        let model = compile(
            &[RuleSource {
                path: "rules.yaml".into(),
                text: format!("{BASE}rules:\n{rules}"),
            }],
            &listeners,
        )
        .unwrap_or_else(|d| panic!("{d}"))
        .model;
        let headers = HeaderMap::new();
        let unknown = Arrival {
            listener: ListenerId(9),
            scheme: Scheme::Https,
        };
        let cases: [(Arrival, &str, &[&str]); 4] = [
            (
                listeners.arrival("public").unwrap(),
                "plain",
                &["scheme: the request came over http, not https"],
            ),
            (
                listeners.arrival("public-tls").unwrap(),
                "not-public",
                &[
                    "listener: the request arrived on public-tls, not on office",
                    "scheme: the request came over https, not http",
                    "listener: the request arrived on public-tls, not on public, office",
                ],
            ),
            // dev is for internal users only, so tls-office is skipped for uid 5.
            (
                listeners.arrival("office").unwrap(),
                "either",
                &["scheme: the request came over https, not http"],
            ),
            (
                unknown,
                "not-public",
                &[
                    "listener: the request's listener is unknown, not one of office",
                    "scheme: the request came over https, not http",
                    "listener: the request's listener is unknown, not one of public, office",
                ],
            ),
        ];
        for (arrival, rule, misses) in cases {
            let view = RequestView {
                method: &Method::GET,
                host: "h",
                path: "/",
                query: Some("uid=5"),
                headers: &headers,
                client_ip: None,
                arrival,
            };
            let facts = Facts::gather(&model.rules.identity, view);
            let decision = decide(&model.rules, &facts).unwrap();
            assert_eq!(decision.rule_name(&model.rules), rule, "{arrival:?}");
            let explained = explain(&model.rules, &facts).unwrap();
            let why: Vec<&str> = explained
                .steps
                .iter()
                .filter_map(|s| match &s.outcome {
                    Outcome::NotMatched(why) => Some(why.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(why, misses, "{arrival:?}");
        }
    }

    #[test]
    fn first_deciding_rule_wins() {
        let rules = "  - { name: paid, when: { tier: paid }, version: stable }\n  - { name: tail, when: { uid_tail: [1] }, version: canary }\n";
        assert_eq!(run(rules, &uid("10001")), ("stable".into(), "paid".into()));
        assert_eq!(run(rules, &uid("11")), ("canary".into(), "tail".into()));
        assert_eq!(run(rules, &uid("12")), ("stable".into(), "default".into()));
    }

    #[test]
    fn restricted_versions_only_for_internal_users() {
        let rules = "  - { name: to-dev, version: dev }\n  - { name: rest, version: canary }\n";
        assert_eq!(run(rules, &uid("1")), ("dev".into(), "to-dev".into()));
        assert_eq!(
            run(
                rules,
                &Req {
                    ip: "10.0.0.1",
                    ..GET
                }
            ),
            ("dev".into(), "to-dev".into())
        );
        assert_eq!(
            run(rules, &uid("5")),
            ("canary".into(), "rest".into()),
            "skipped, not denied"
        );
    }

    #[test]
    fn splits_by_each_key() {
        let all_canary = |by: &str| {
            format!("  - {{ name: s, split: {{ by: \"{by}\", weights: {{ canary: 1, stable: 0 }} }} }}\n")
        };
        let hdr = |h: &'static [(&'static str, &'static str)]| Req { headers: h, ..GET };
        let cases: Vec<(&str, Req, bool)> = vec![
            ("uid", uid("77"), true),
            ("uid", GET, false),
            ("client_ip", GET, true),
            (
                "client_ip",
                Req {
                    ip: "unknown",
                    ..GET
                },
                false,
            ),
            ("random", GET, true),
            ("cookie:session", hdr(&[("cookie", "session=abc")]), true),
            ("cookie:session", GET, false),
            ("header:X-Device", hdr(&[("x-device", "d1")]), true),
            ("header:X-Device", GET, false),
        ];
        for (by, req, key_present) in cases {
            let expected = if key_present {
                ("canary".to_string(), "s".to_string())
            } else {
                ("stable".to_string(), "default".to_string())
            };
            assert_eq!(run(&all_canary(by), &req), expected, "split by {by}");
        }
        let none_canary =
            "  - { name: s, split: { by: uid, weights: { canary: 0, stable: 1 } } }\n";
        assert_eq!(run(none_canary, &uid("77")), ("stable".into(), "s".into()));
    }

    #[test]
    fn split_position_follows_the_documented_hash() {
        // Python: xxhash.xxh64(b"s:12345").intdigest() * 100 >> 64 == 95, and
        // xxhash.xxh64(b"other:12345") gives 56: the arm boundary sits exactly there.
        assert_eq!(scale(split_hash(b"s", b"12345"), 100), 95);
        let split = |salt: &str, canary: u32| {
            format!("  - {{ name: s, split: {{ by: uid, salt: {salt}, weights: {{ canary: {canary}, stable: {} }} }} }}\n", 100 - canary)
        };
        assert_eq!(run(&split("s", 96), &uid("12345")).0, "canary");
        assert_eq!(run(&split("s", 95), &uid("12345")).0, "stable");
        assert_eq!(run(&split("other", 57), &uid("12345")).0, "canary");
        assert_eq!(run(&split("other", 56), &uid("12345")).0, "stable");
        // Without `salt`, the rule name is the salt.
        let unsalted = "  - { name: s, split: { by: uid, weights: { canary: 96, stable: 4 } } }\n";
        assert_eq!(run(unsalted, &uid("12345")).0, "canary");
    }

    #[test]
    fn a_rollout_splits_at_its_current_weight_and_raising_it_only_moves_users_in() {
        use crate::rules::model::{Phase, RolloutNow};
        let yaml = format!(
            "{BASE}rollouts:\n  ramp: {{ version: canary, steps: [5, 50, 100], step_duration: 1m }}\nrules:\n  - {{ name: r, rollout: ramp }}\n"
        );
        let model = model(&yaml);
        let rules = &model.rules;
        let canary = rules.version_id("canary").unwrap();
        let headers = HeaderMap::new();
        fn view<'a>(query: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
            RequestView {
                method: &Method::GET,
                host: "h",
                path: "/",
                query: Some(query),
                headers,
                client_ip: None,
                arrival: Default::default(),
            }
        }
        let at = |weight: u8, uid: &str| {
            let query = format!("uid={uid}");
            let now = [RolloutNow {
                phase: Phase::Progressing,
                step: 1,
                weight,
                fingerprint: rules.rollouts[0].fingerprint,
            }];
            let mut facts = Facts::gather(&rules.identity, view(&query, &headers));
            facts.rollouts = &now;
            let decision = decide(rules, &facts).unwrap();
            assert!(matches!(decision.reason, Reason::Rollout { .. }));
            decision.version == canary
        };
        let mut on = [0usize; 4];
        for uid in 0..2000 {
            let uid = uid.to_string();
            let ins: Vec<bool> = [0u8, 5, 50, 100].iter().map(|w| at(*w, &uid)).collect();
            // Monotonic: a user in the version at a weight stays in at every higher one.
            assert!(ins.windows(2).all(|p| !p[0] || p[1]), "uid {uid}: {ins:?}");
            for (count, inside) in on.iter_mut().zip(&ins) {
                *count += usize::from(*inside);
            }
        }
        assert_eq!(on[0], 0);
        assert_eq!(on[3], 2000);
        assert!((60..=140).contains(&on[1]), "5% of 2000: {}", on[1]);
        assert!((900..=1100).contains(&on[2]), "50% of 2000: {}", on[2]);
        // Without runtime state a rollout stands at its first step, and says so.
        let facts = Facts::gather(&rules.identity, view("uid=7", &headers));
        let text = explain(rules, &facts).unwrap().to_string();
        assert!(
            text.contains("rollout ramp at step 1 of 3 (5%, progressing), uid fell at"),
            "{text}"
        );
    }

    #[test]
    fn explanation_says_why() {
        let yaml = format!(
            "{BASE}rules:\n  - {{ name: paid, when: {{ tier: paid }}, version: stable }}\n  - {{ name: tail, when: {{ uid_tail: [3] }}, version: canary }}\n  - {{ name: dev, version: dev }}\n  - {{ name: last, version: stable }}\n"
        );
        let model = model(&yaml);
        let headers = HeaderMap::new();
        let view = RequestView {
            method: &Method::GET,
            host: "h",
            path: "/",
            query: Some("uid=15"),
            headers: &headers,
            client_ip: None,
            arrival: Default::default(),
        };
        let facts = Facts::gather(&model.rules.identity, view);
        let text = explain(&model.rules, &facts).unwrap().to_string();
        assert_eq!(
            text,
            "  1. no match    paid                     tier is trial, not paid\n  \
             2. no match    tail                     uid_tail: uid \"15\" ends in 5\n  \
             3. skipped     dev                      version dev is restricted and the user is not internal\n  \
             4. DECIDED     last                     stable\n"
        );
    }

    mod properties {
        use super::*;
        use crate::rules::model::RoutingModel;
        use crate::rules::testing::with_query_uid;
        use proptest::prelude::*;

        fn split_model(salt: &str, canary: u32, stable: u32) -> RoutingModel {
            model(&format!(
                "{BASE}rules:\n  - {{ name: s, split: {{ by: uid, salt: \"{salt}\", weights: {{ canary: {canary}, stable: {stable} }} }} }}\n"
            ))
        }

        /// The version decided for a uid carried in the query string.
        fn version_of(model: &RoutingModel, uid: &str) -> VersionId {
            with_query_uid(uid, |view| {
                decide(&model.rules, &Facts::gather(&model.rules.identity, view))
                    .unwrap()
                    .version
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(24))]

            /// Over 20,000 uids the first arm's share is within 2 points of its weight
            /// (more than 5 standard deviations at this sample size).
            #[test]
            fn split_shares_converge_to_the_weights(canary in 1u32..100, stable in 1u32..100, salt in "[a-z]{1,8}") {
                let model = split_model(&salt, canary, stable);
                let canary_id = model.rules.version_id("canary").unwrap();
                let n = 20_000;
                let hits = (0..n).filter(|i| version_of(&model, &i.to_string()) == canary_id).count();
                let share = hits as f64 / n as f64;
                let expected = canary as f64 / (canary + stable) as f64;
                prop_assert!((share - expected).abs() < 0.02, "share {share} vs {expected}");
            }

            /// A uid gets the same version every time, and from a freshly compiled rule set
            /// (another instance, another generation).
            #[test]
            fn a_uid_always_gets_the_same_version(uid in "[0-9a-zA-Z_-]{1,40}", canary in 0u32..100) {
                let first = split_model("s", canary, 100 - canary);
                let second = split_model("s", canary, 100 - canary);
                let v = version_of(&first, &uid);
                prop_assert_eq!(v, version_of(&first, &uid));
                prop_assert_eq!(v, version_of(&second, &uid));
            }

            /// Raising the first arm's weight only moves users into it.
            #[test]
            fn ramping_up_is_monotonic(uid in "[0-9]{1,12}", low in 0u32..100, raise in 0u32..100, stable in 1u32..100) {
                let high = low + raise;
                let before = split_model("ramp", low, stable);
                let after = split_model("ramp", high, stable);
                let canary = before.rules.version_id("canary").unwrap();
                if version_of(&before, &uid) == canary {
                    prop_assert_eq!(version_of(&after, &uid), canary);
                }
            }
        }
    }
}
