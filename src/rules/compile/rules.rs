//! The `rules` section: unique names, exactly one action per rule (a version, `$assigned`,
//! `$channel` or a split), splits with a known key and weights that sum above 0, and a
//! warning for every rule below one that always decides.

use std::collections::HashMap;
use std::sync::Arc;

use super::rollouts::RolloutUse;
use super::{header_value, is_rule_name, split_key, At, Compiler};
use crate::rules::model::{Action, Rule, Split, SplitArm, SplitKey, Version};
use crate::rules::raw::{RawRule, RawSplit};

impl Compiler {
    /// The rules in order, the files' rules one after the other in merge order.
    pub(super) fn rules(
        &mut self,
        raw: Vec<(At, serde_yaml::Value)>,
        versions: &[Version],
        uses: &mut Vec<RolloutUse>,
    ) -> Vec<Rule> {
        let mut rules = Vec::new();
        let mut seen: HashMap<String, At> = HashMap::new();
        let mut always_decides: Option<String> = None;
        for (position, (at, value)) in raw.into_iter().enumerate() {
            let errors_before = self.diags.errors().count();
            let Some(r) = self.parse::<RawRule>(&at, &format!("rule #{}", position + 1), value)
            else {
                continue;
            };
            let RawRule {
                name,
                when,
                version,
                split,
                rollout,
            } = r;
            let what = format!("rule \"{name}\"");
            if !is_rule_name(&name) {
                self.error(
                    &at,
                    format!("{what}: names may only use letters, digits, '-', '_' and '.'"),
                );
            }
            if let Some(first) = seen.get(&name) {
                let msg = format!(
                    "{what} is defined twice (first at {})",
                    self.describe(first)
                );
                self.error(&at, msg);
            } else {
                seen.insert(name.clone(), at.clone());
            }
            if let Some(earlier) = &always_decides {
                self.warning(
                    &at,
                    format!("{what} is unreachable: rule \"{earlier}\" above it has no conditions and always decides"),
                );
            }
            let conditions = self.conditions(&at.child("when"), &what, when);
            let Some(action) = self.action(&at, &what, &name, version, split, rollout) else {
                continue;
            };
            if let Action::Rollout(id) = action {
                uses.push(RolloutUse {
                    rollout: id,
                    rule: rules.len(),
                    at: at.clone(),
                });
            }
            // A rule with errors may have lost conditions: it says nothing about reachability.
            let clean = self.diags.errors().count() == errors_before;
            if clean
                && conditions.is_empty()
                && always_decides.is_none()
                && always_decides_alone(&action, versions)
            {
                always_decides = Some(name.clone());
            }
            rules.push(Rule {
                name: Arc::from(name.as_str()),
                header_value: header_value(&name),
                conditions,
                action,
            });
        }
        rules
    }

    /// What the rule `name` does: exactly one of `version`, `split` and `rollout`.
    fn action(
        &mut self,
        at: &At,
        what: &str,
        name: &str,
        version: Option<String>,
        split: Option<RawSplit>,
        rollout: Option<String>,
    ) -> Option<Action> {
        match (version, split, rollout) {
            (Some(version), None, None) if version == "$assigned" => Some(Action::Assigned),
            (Some(version), None, None) if version == "$channel" => Some(Action::Channel),
            (Some(version), None, None) => self
                .version_ref(&at.child("version"), what, &version)
                .map(Action::Version),
            (None, Some(split), None) => self
                .split(&at.child("split"), what, name, split)
                .map(|split| Action::Split(Box::new(split))),
            (None, None, Some(rollout)) => {
                let id = self.rollout_names.get(&rollout).copied();
                if id.is_none() && !self.rollout_defined.contains_key(&rollout) {
                    self.error(
                        &at.child("rollout"),
                        format!("{what}: unknown rollout \"{rollout}\""),
                    );
                }
                // A rollout defined with errors was reported there.
                id.map(Action::Rollout)
            }
            _ => {
                self.error(
                    at,
                    format!("{what}: needs exactly one action: version, split or rollout"),
                );
                None
            }
        }
    }

    fn split(&mut self, at: &At, what: &str, rule_name: &str, raw: RawSplit) -> Option<Split> {
        let RawSplit {
            by: key,
            weights,
            salt,
            sticky,
        } = raw;
        let by = split_key(&key);
        if by.is_none() {
            self.error(
                at,
                format!("{what}: split by \"{key}\" is not uid, client_ip, random, cookie:NAME or header:NAME"),
            );
        }
        if weights.is_empty() {
            self.error(at, format!("{what}: split weights are empty"));
        }
        let mut arms = Vec::new();
        let mut total: u64 = 0;
        let mut ok = true;
        for (name, weight) in &weights {
            let Some(version) = self.version_ref(at, what, name) else {
                ok = false;
                continue;
            };
            if *weight < 0 || *weight > 1_000_000 {
                self.error(
                    at,
                    format!("{what}: weight {weight} of \"{name}\" is not between 0 and 1000000"),
                );
                ok = false;
                continue;
            }
            total += *weight as u64;
            arms.push(SplitArm {
                version,
                weight: *weight as u64,
                upper: total,
            });
        }
        if ok && !weights.is_empty() && total == 0 {
            self.error(at, format!("{what}: split weights sum to 0"));
            ok = false;
        }
        Some(Split {
            sticky,
            by: by?,
            salt: salt
                .unwrap_or_else(|| rule_name.to_string())
                .into_bytes()
                .into(),
            arms,
            total,
        })
        .filter(|_| ok)
    }
}

/// Whether an action with no conditions before it decides every request: a version anyone
/// may get, or a random split whose every weighted version anyone may get.
fn always_decides_alone(action: &Action, versions: &[Version]) -> bool {
    match action {
        Action::Version(v) => !versions[v.index()].restricted,
        Action::Split(s) => {
            s.by == SplitKey::Random
                && s.arms
                    .iter()
                    .all(|a| a.weight == 0 || !versions[a.version.index()].restricted)
        }
        // A rollout's weight changes while it runs.
        Action::Assigned | Action::Channel | Action::Rollout(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::model::Action;
    use crate::rules::testing::{diagnostics, HEAD};

    fn with_rules(rules: &str) -> Vec<String> {
        diagnostics(&format!("{HEAD}rules:\n{rules}"))
    }

    #[test]
    fn split_and_condition_values() {
        assert_eq!(
            with_rules("  - { name: s, split: { by: device, weights: { canary: -1, beta: 2 } } }\n  - { name: t, when: { tier: gold, uid_range: [9, 1], method: \"G T\", client_ip: [\"1.2.3\"], host: \"a*b\" }, version: canary }\n"),
            vec![
                "rules.yaml:8: error: rule \"s\": split by \"device\" is not uid, client_ip, random, cookie:NAME or header:NAME",
                "rules.yaml:8: error: rule \"s\": weight -1 of \"canary\" is not between 0 and 1000000",
                "rules.yaml:8: error: rule \"s\": unknown version \"beta\"",
                "rules.yaml:9: error: rule \"t\": host: \"a*b\" is not a host, \"*.suffix\" or \"*\"",
                "rules.yaml:9: error: rule \"t\": method \"G T\" is not an HTTP method",
                "rules.yaml:9: error: rule \"t\": client_ip: \"1.2.3\" is not a CIDR like 10.0.0.0/8",
                "rules.yaml:9: error: rule \"t\": uid_range must be [min, max] with min <= max",
                "rules.yaml:9: error: rule \"t\": tier \"gold\" is neither paid nor trial",
            ]
        );
    }

    #[test]
    fn an_action_is_required_and_unique() {
        assert_eq!(
            with_rules("  - { name: none }\n  - { name: both, version: canary, split: { by: uid, weights: { canary: 1 } } }\n"),
            vec![
                "rules.yaml:8: error: rule \"none\": needs exactly one action: version, split or rollout",
                "rules.yaml:9: error: rule \"both\": needs exactly one action: version, split or rollout",
            ]
        );
    }

    #[test]
    fn compiled_split_lays_buckets_out_in_order() {
        let model = crate::rules::testing::model(&format!(
            "{HEAD}rules:\n  - {{ name: s, split: {{ by: uid, weights: {{ canary: 30, stable: 70 }} }} }}\n"
        ));
        let Action::Split(split) = &model.rules.rules[0].action else {
            panic!("a split")
        };
        assert_eq!(split.total, 100);
        assert_eq!(&*split.salt, b"s");
        let arms: Vec<(&str, u64)> = split
            .arms
            .iter()
            .map(|a| (&*model.rules.version(a.version).name, a.upper))
            .collect();
        assert_eq!(arms, vec![("canary", 30), ("stable", 100)]);
    }
}
