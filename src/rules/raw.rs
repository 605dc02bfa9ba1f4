//! The rules files as written: serde types with unknown keys rejected.
//!
//! These types never reach the request path; [`compile`](mod@super::compile) validates them and builds
//! the [`super::model`]. Sections are parsed item by item (one rule, one service, one group
//! at a time) so that one bad item does not hide the errors of the next.

use indexmap::IndexMap;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

use crate::config::Duration;

/// One value or a list of them: `method: GET` and `method: [GET, HEAD]` mean the same.
#[derive(Debug, Clone, PartialEq)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany(Vec::new())
    }
}

// Both are read through a `serde_yaml::Value` with hand-written messages: an untagged enum
// would answer "data did not match any variant of untagged enum", which tells an operator
// nothing (issue 17).
impl<'de, T: DeserializeOwned> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_yaml::Value::deserialize(deserializer)?;
        let items = match value {
            serde_yaml::Value::Sequence(items) => items,
            serde_yaml::Value::Mapping(_) => {
                return Err(D::Error::custom(
                    "expected a value or a list of values, not a map",
                ))
            }
            one => vec![one],
        };
        items
            .into_iter()
            .map(|item| T::deserialize(item).map_err(D::Error::custom))
            .collect::<Result<Vec<T>, D::Error>>()
            .map(OneOrMany)
    }
}

/// A scalar read as text: uids and digits may be written `10001` or `"10001"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_yaml::Value::deserialize(deserializer)? {
            serde_yaml::Value::Number(n) if n.is_u64() => Ok(Text(n.to_string())),
            serde_yaml::Value::String(s) => Ok(Text(s)),
            _ => Err(D::Error::custom(
                "expected a whole number or a string, such as 10001 or \"10001\"",
            )),
        }
    }
}

/// The top level of one rules file. Every section is optional in one file; the merged set
/// must have what it needs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuleFile {
    pub versions: Option<IndexMap<String, serde_yaml::Value>>,
    pub default: Option<String>,
    pub identity: Option<serde_yaml::Value>,
    pub assignments: Option<serde_yaml::Value>,
    pub services: Option<IndexMap<String, serde_yaml::Value>>,
    pub rules: Option<Vec<serde_yaml::Value>>,
    pub goals: Option<Vec<serde_yaml::Value>>,
    pub channels: Option<serde_yaml::Value>,
    pub address_api: Option<serde_yaml::Value>,
    pub rollouts: Option<IndexMap<String, serde_yaml::Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVersion {
    pub description: Option<String>,
    #[serde(default)]
    pub selectable: bool,
    #[serde(default)]
    pub restricted: bool,
    /// `shared` (the default) or `isolated`.
    pub cookies: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    pub uid: Option<OneOrMany<String>>,
    pub tier: Option<RawTier>,
    pub internal: Option<RawInternal>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    #[serde(default)]
    pub sources: OneOrMany<String>,
    #[serde(default)]
    pub paid_uids: Vec<Text>,
    pub redis_set: Option<String>,
    pub default: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInternal {
    #[serde(default)]
    pub uids: Vec<Text>,
    #[serde(default)]
    pub cidrs: Vec<String>,
    pub redis_set: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAssignments {
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub hosts: OneOrMany<String>,
    pub path_prefix: Option<String>,
    pub groups: IndexMap<String, serde_yaml::Value>,
    /// Overrides `limits.max_body_size` (a size like `10MB`, or bytes).
    pub max_body_size: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    pub peers: Vec<String>,
    pub lb: Option<String>,
    pub health_check: Option<RawHealthCheck>,
    pub public_addresses: Option<Vec<String>>,
    pub timeouts: Option<RawTimeouts>,
    /// `http1` (the default), `h2` or `h2c`.
    pub protocol: Option<String>,
    /// A [`RawUpstreamTls`], read by compile so its errors name `tls`.
    pub tls: Option<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub sni: Option<String>,
    pub verify: Option<bool>,
    /// A PEM file, relative to the rules file's directory.
    pub ca: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    #[serde(rename = "type")]
    pub kind: String,
    pub path: Option<String>,
    pub host: Option<String>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    /// Consecutive successes that mark a peer healthy again.
    pub rise: Option<usize>,
    /// Consecutive failures that mark a peer unhealthy.
    pub fall: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<Duration>,
    pub read: Option<Duration>,
    pub write: Option<Duration>,
    pub idle: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    /// A `RawWhen`, read by compile condition by condition so each error names its own.
    #[serde(default)]
    pub when: serde_yaml::Value,
    pub version: Option<String>,
    pub split: Option<RawSplit>,
    /// The name of a rollout of the `rollouts` section.
    pub rollout: Option<String>,
}

/// The keys of [`RawWhen`], for messages.
pub const WHEN_KEYS: &str = "host, path_prefix, path_regex, method, header, cookie, query, client_ip, uid_tail, uid_suffix, uid_in, uid_range, has_uid, tier, internal, channel, scheme, listener, not, any";

/// Conditions; every one listed must hold, a list inside one means any of its values.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWhen {
    pub host: Option<OneOrMany<String>>,
    pub path_prefix: Option<OneOrMany<String>>,
    pub path_regex: Option<OneOrMany<String>>,
    pub method: Option<OneOrMany<String>>,
    /// Each value is a string, a list of strings or a matcher map, read by compile.
    pub header: Option<IndexMap<String, serde_yaml::Value>>,
    pub cookie: Option<IndexMap<String, serde_yaml::Value>>,
    pub query: Option<IndexMap<String, serde_yaml::Value>>,
    pub client_ip: Option<OneOrMany<String>>,
    pub uid_tail: Option<OneOrMany<Text>>,
    pub uid_suffix: Option<OneOrMany<Text>>,
    pub uid_in: Option<OneOrMany<Text>>,
    pub uid_range: Option<Vec<u64>>,
    pub has_uid: Option<bool>,
    pub tier: Option<String>,
    pub internal: Option<bool>,
    pub channel: Option<serde_yaml::Value>,
    /// `http` or `https`.
    pub scheme: Option<String>,
    /// Listener names from `conf/graygate.yaml`.
    pub listener: Option<OneOrMany<String>>,
    /// Inner conditions (a `RawWhen`), read by compile so errors keep their line.
    pub not: Option<serde_yaml::Value>,
    /// A list of inner condition sets (each a `RawWhen`), read by compile.
    pub any: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSplit {
    pub by: String,
    pub weights: IndexMap<String, i64>,
    pub salt: Option<String>,
    #[serde(default)]
    pub sticky: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGoal {
    pub name: String,
    /// A `RawWhen`, read by compile condition by condition.
    #[serde(default)]
    pub when: serde_yaml::Value,
    pub status: Option<OneOrMany<Text>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannels {
    pub path: Option<String>,
    pub cookie: Option<String>,
    pub max_age: Option<Duration>,
    pub domain: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAddressApi {
    pub path: Option<String>,
    pub ttl: Option<Duration>,
}

/// One rollout of the `rollouts` section (SPEC section 12).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    pub version: String,
    pub baseline: Option<String>,
    pub by: Option<String>,
    pub steps: Vec<i64>,
    pub step_duration: Duration,
    #[serde(default)]
    pub analysis: RawAnalysis,
    pub on_failure: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnalysis {
    pub interval: Option<Duration>,
    pub window: Option<Duration>,
    pub min_requests: Option<u64>,
    pub max_error_rate: Option<RawRateBound>,
    pub max_p99_latency: Option<RawLatencyBound>,
    #[serde(default)]
    pub goals: IndexMap<String, RawGoalBound>,
    pub failure_limit: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateBound {
    pub ratio: f64,
    #[serde(default)]
    pub margin: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLatencyBound {
    pub ratio: f64,
    pub margin: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGoalBound {
    pub min_ratio: f64,
}
