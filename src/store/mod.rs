//! The assignment store: where `version: $assigned`, the paid set and the internal set live.
//!
//! [`Store`] has two implementations: [`redis::RedisStore`] (fred, with a local cache kept
//! correct by Redis client tracking) and [`embedded::EmbeddedStore`] (in-process, used when no
//! Redis is configured). [`Lookups`] sits between the pure decision and the store: it runs
//! `decide`, and when a rule reached during evaluation needs a store fact (and only then), it
//! looks the fact up, records the metric, and decides again. Every failure is fail-open: an
//! error, a timeout or an unknown version counts as "no assignment" / "not a member".

pub mod embedded;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::facts::identity::Tier;
use crate::facts::{Assigned, Facts, VersionId};
use crate::metrics::Metrics;
use crate::rules::decide::{decide, explain, Decision, Explanation, Missing};
use crate::rules::model::RuleSet;
use crate::throttle::LogThrottle;

/// Why a store operation gave no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// No answer within the lookup timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The store refused or failed (down, disconnected, wrong type...).
    #[error("{0}")]
    Failed(String),
}

/// A store answer, and whether the local cache gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<T> {
    /// The value.
    pub value: T,
    /// Served from the local cache, without a round trip.
    pub cached: bool,
}

/// Key-value and set lookups, plus the writes of the admin API.
#[async_trait]
pub trait Store: Send + Sync {
    /// `GET key`.
    async fn get(&self, key: &str) -> Result<Answer<Option<Arc<str>>>, StoreError>;
    /// `SISMEMBER set member`.
    async fn is_member(&self, set: &str, member: &str) -> Result<Answer<bool>, StoreError>;
    /// `SET key value`.
    async fn set(&self, key: &str, value: &str) -> Result<(), StoreError>;
    /// `DEL key`; whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;
}

/// Resolves the store facts a decision needs, recording metrics and throttled logs.
pub struct Lookups {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    error_log: LogThrottle,
}

/// `graygate_store_lookups_total`'s `result` label for an outcome.
fn result_label<T>(
    outcome: &Result<Answer<T>, StoreError>,
    found: impl Fn(&T) -> bool,
) -> &'static str {
    match outcome {
        Ok(answer) if answer.cached => "cache_hit",
        Ok(answer) if found(&answer.value) => "hit",
        Ok(_) => "miss",
        Err(StoreError::Timeout(_)) => "timeout",
        Err(StoreError::Failed(_)) => "error",
    }
}

impl Lookups {
    /// Lookups against `store`.
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Lookups {
            store,
            metrics,
            error_log: LogThrottle::new(Duration::from_secs(5)),
        }
    }

    /// The store behind the lookups.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Decides, looking up each store fact the evaluation reaches (at most once each).
    pub async fn decide(&self, rules: &RuleSet, facts: &mut Facts<'_>) -> Decision {
        loop {
            match decide(rules, facts) {
                Ok(decision) => return decision,
                Err(missing) => self.resolve(rules, facts, missing).await,
            }
        }
    }

    /// Like [`Lookups::decide`], with the trace of every rule.
    pub async fn explain(&self, rules: &RuleSet, facts: &mut Facts<'_>) -> Explanation {
        loop {
            match explain(rules, facts) {
                Ok(explanation) => return explanation,
                Err(missing) => self.resolve(rules, facts, missing).await,
            }
        }
    }

    /// `baseline` (the baseline of a withdrawn decided version) unless the user is internal:
    /// internal users keep a withdrawn version. The internal flag is looked up only then.
    pub async fn withdrawn_to(
        &self,
        rules: &RuleSet,
        baseline: Option<VersionId>,
        facts: &mut Facts<'_>,
    ) -> Option<VersionId> {
        let baseline = baseline?;
        if facts.internal_unresolved {
            self.resolve(rules, facts, Missing::Internal).await;
        }
        (!facts.internal).then_some(baseline)
    }

    fn record<T>(
        &self,
        kind: &str,
        outcome: &Result<Answer<T>, StoreError>,
        found: impl Fn(&T) -> bool,
    ) {
        let result = result_label(outcome, found);
        self.metrics
            .store_lookups
            .with_label_values(&[kind, result])
            .inc();
        if let Err(e) = outcome {
            if let Some(held_back) = self.error_log.admit() {
                log::warn!(
                    "store lookup ({kind}) failed, routing as if absent: {e}; {held_back} similar failure(s) not logged"
                );
            }
        }
    }

    /// Fills in `missing`; every branch settles the fact so that `decide` progresses.
    pub async fn resolve(&self, rules: &RuleSet, facts: &mut Facts<'_>, missing: Missing) {
        let uid = facts
            .uid
            .as_ref()
            .map(|u| u.text.clone())
            .unwrap_or_default();
        match missing {
            Missing::Assignment => {
                let key = rules.assignments.key(&uid);
                let outcome = self.store.get(&key).await;
                self.record("assignment", &outcome, Option::is_some);
                let version = outcome
                    .ok()
                    .and_then(|a| a.value)
                    .and_then(|name| rules.version_id(&name));
                facts.assigned = Assigned::Known(version);
            }
            Missing::Tier => {
                if let Some(set) = &rules.identity.tier.redis_set {
                    let outcome = self.store.is_member(set, &uid).await;
                    self.record("tier", &outcome, |member| *member);
                    if outcome.is_ok_and(|a| a.value) {
                        facts.tier = Tier::Paid;
                    }
                }
                facts.tier_unresolved = false;
            }
            Missing::Internal => {
                if let Some(set) = &rules.identity.internal.redis_set {
                    let outcome = self.store.is_member(set, &uid).await;
                    self.record("internal", &outcome, |member| *member);
                    if outcome.is_ok_and(|a| a.value) {
                        facts.internal = true;
                    }
                }
                facts.internal_unresolved = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::RequestView;
    use crate::rules::testing::model;
    use embedded::EmbeddedStore;
    use http::{HeaderMap, Method};

    const RULES: &str = r#"
versions: { stable: {}, canary: {}, beta: {}, dev: { restricted: true } }
default: stable
identity:
  uid: [query:uid]
  tier: { redis_set: "gray:paid" }
  internal: { redis_set: "gray:internal" }
assignments: { key: "gray:version:{uid}" }
services:
  web: { hosts: ["*"], groups: { stable: { peers: ["127.0.0.1:1"] } } }
rules:
  - { name: tail, when: { uid_tail: [9] }, version: beta }
  - { name: shield-paid, when: { tier: paid }, version: stable }
  - { name: assigned, version: $assigned }
  - { name: internal-dev, when: { uid_tail: [7] }, version: dev }
"#;

    async fn run(store: &Arc<EmbeddedStore>, uid: &str) -> (String, String, String) {
        let model = model(RULES);
        let metrics = Arc::new(Metrics::new());
        let lookups = Lookups::new(store.clone(), metrics.clone());
        let headers = HeaderMap::new();
        let query = format!("uid={uid}");
        let view = RequestView {
            method: &Method::GET,
            host: "h",
            path: "/",
            query: Some(&query),
            headers: &headers,
            client_ip: None,
            arrival: Default::default(),
        };
        let mut facts = Facts::gather(&model.rules.identity, view);
        let decision = lookups.decide(&model.rules, &mut facts).await;
        let mut kinds: Vec<String> = ["assignment", "tier", "internal"]
            .iter()
            .flat_map(|k| ["cache_hit", "hit", "miss", "error", "timeout"].map(|r| (k, r)))
            .filter_map(|(k, r)| {
                let n = metrics.store_lookups.with_label_values(&[k, r]).get();
                (n > 0).then(|| format!("{k}:{r}"))
            })
            .collect();
        kinds.sort();
        (
            model.rules.version(decision.version).name.to_string(),
            decision.rule_name(&model.rules).to_string(),
            kinds.join(","),
        )
    }

    fn v(version: &str, rule: &str, lookups: &str) -> (String, String, String) {
        (version.into(), rule.into(), lookups.into())
    }

    #[tokio::test]
    async fn lookups_only_when_a_reached_rule_needs_them() {
        let store = Arc::new(EmbeddedStore::default());
        // uid 19 is decided by the first rule: no lookup at all.
        assert_eq!(run(&store, "19").await, v("beta", "tail", ""));
        // uid 5: tier set (miss), then assignment (miss), then default.
        assert_eq!(
            run(&store, "5").await,
            v("stable", "default", "assignment:miss,tier:miss")
        );
        store.set("gray:version:5", "canary").await.unwrap();
        assert_eq!(
            run(&store, "5").await,
            v("canary", "assigned", "assignment:hit,tier:miss")
        );
        store.add_member("gray:paid", "5");
        assert_eq!(
            run(&store, "5").await,
            v("stable", "shield-paid", "tier:hit")
        );
    }

    #[tokio::test]
    async fn unknown_stored_versions_are_ignored() {
        let store = Arc::new(EmbeddedStore::default());
        store.set("gray:version:6", "nightly").await.unwrap();
        assert_eq!(
            run(&store, "6").await,
            v("stable", "default", "assignment:hit,tier:miss")
        );
    }

    #[tokio::test]
    async fn restricted_versions_look_up_the_internal_set() {
        let store = Arc::new(EmbeddedStore::default());
        assert_eq!(
            run(&store, "7").await,
            v(
                "stable",
                "default",
                "assignment:miss,internal:miss,tier:miss"
            )
        );
        store.add_member("gray:internal", "7");
        assert_eq!(
            run(&store, "7").await,
            v(
                "dev",
                "internal-dev",
                "assignment:miss,internal:hit,tier:miss"
            )
        );
    }
}
