//! The compiled routing model: what the request path reads.
//!
//! Everything here is built once per rule-set generation by [`compile`](mod@super::compile): names are
//! resolved to indices, regexes compiled, CIDRs parsed, split buckets laid out. Nothing on
//! the request path parses or allocates to evaluate it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::Method;
use ipnet::IpNet;
use pingora::tls::x509::X509;
use regex::RegexSet;
use smallvec::SmallVec;

use crate::config::Listener;
use crate::facts::identity::{Identity, Tier};
pub use crate::facts::rollout::{Phase, RolloutNow};
use crate::facts::{Arrival, ListenerId, Scheme, VersionId};
pub use crate::rules::index::RuleIndex;
pub use crate::rules::matcher::ValueMatch;
pub use crate::rules::sets::{HostSet, StrSet};

/// A release version label: stable, canary, beta, dev...
#[derive(Debug, Clone)]
pub struct Version {
    /// The label used in rules, headers and metrics.
    pub name: Arc<str>,
    /// `name` as the value of `X-Graygate-Version`, built once per generation.
    pub header_value: HeaderValue,
    /// Free text shown to operators and on the channel page.
    pub description: String,
    /// Users may pick it on the channel page.
    pub selectable: bool,
    /// Only internal users may be routed to it.
    pub restricted: bool,
    /// Whether its cookies are shared with the other versions or kept apart (SPEC section 15).
    pub cookies: CookiePolicy,
}

/// How a version's cookies are kept in the browser (`cookies: shared | isolated`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CookiePolicy {
    /// The browser's cookies as they are, without any version's `gg.*` namespace.
    #[default]
    Shared,
    /// Its cookies live in the browser as `{namespace}{name}` and it sees only those (plus
    /// [`RuleSet::passing_cookies`]).
    Isolated {
        /// `gg.{version}.`, built once per generation.
        namespace: Box<str>,
    },
}

impl CookiePolicy {
    /// The policy of version `name` as written: `shared` or `isolated`.
    pub fn parse(text: &str, name: &str) -> Option<CookiePolicy> {
        match text {
            "shared" => Some(CookiePolicy::Shared),
            "isolated" => Some(CookiePolicy::Isolated {
                namespace: format!("gg.{name}.").into(),
            }),
            _ => None,
        }
    }

    /// The namespace of an isolated version.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            CookiePolicy::Shared => None,
            CookiePolicy::Isolated { namespace } => Some(namespace),
        }
    }

    /// Whether the version keeps its cookies (its session) apart.
    pub fn is_isolated(&self) -> bool {
        matches!(self, CookiePolicy::Isolated { .. })
    }

    /// `shared` or `isolated`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CookiePolicy::Shared => "shared",
            CookiePolicy::Isolated { .. } => "isolated",
        }
    }
}

/// A host pattern: `www.example.com`, `*.example.com` or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// The exact host, lowercase.
    Exact(Box<str>),
    /// `*.example.com`, stored as `.example.com`: any host ending in it (not the bare domain).
    Suffix(Box<str>),
    /// `*`: any host.
    Any,
}

impl HostPattern {
    /// Whether `host` (without port, any case) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(exact) => host.eq_ignore_ascii_case(exact),
            HostPattern::Suffix(suffix) => {
                let (host, suffix) = (host.as_bytes(), suffix.as_bytes());
                host.len() > suffix.len()
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
            HostPattern::Any => true,
        }
    }

    /// Exact beats suffix beats any; a longer suffix beats a shorter one.
    pub fn specificity(&self) -> usize {
        match self {
            HostPattern::Exact(_) => usize::MAX,
            HostPattern::Suffix(s) => s.len(),
            HostPattern::Any => 0,
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Suffix(s) => write!(f, "*{s}"),
            HostPattern::Any => f.write_str("*"),
        }
    }
}

/// One condition of a rule's `when`.
#[derive(Debug, Clone)]
pub enum Condition {
    /// The request host matches one of the patterns (boxed: a set is larger than every other
    /// condition).
    Host(Box<HostSet>),
    /// The path starts with one of the prefixes. One list item sits in the condition itself
    /// (as in `Method` and `UidSuffix`): a list of one, the usual case, is not a cache line
    /// of its own that a cold tenant's rule reads.
    PathPrefix(SmallVec<[Box<str>; 1]>),
    /// The path matches one of the regexes.
    PathRegex(RegexSet),
    /// The method is one of these.
    Method(SmallVec<[Method; 1]>),
    /// Every named header matches.
    Header(Vec<(HeaderName, ValueMatch)>),
    /// Every named cookie matches.
    Cookie(Vec<(Box<str>, ValueMatch)>),
    /// Every named query parameter matches.
    Query(Vec<(Box<str>, ValueMatch)>),
    /// The client address is in one of the networks.
    ClientIp(Vec<IpNet>),
    /// Bit `d` set: a numeric uid ending in digit `d` matches.
    UidTail(u16),
    /// The uid ends with one of these.
    UidSuffix(SmallVec<[Box<str>; 1]>),
    /// The uid is one of these (boxed, as `Host`).
    UidIn(Box<StrSet>),
    /// A numeric uid within `[min, max]`.
    UidRange(u64, u64),
    /// The request has (or lacks) a uid.
    HasUid(bool),
    /// The user's tier.
    Tier(Tier),
    /// The user is (or is not) internal.
    Internal(bool),
    /// A valid channel cookie is present (`any`: `None`), or names one of these versions.
    Channel(Option<Vec<VersionId>>),
    /// The request arrived over this scheme (from its listener).
    Scheme(Scheme),
    /// The request arrived on one of these listeners.
    Listener(ListenerSet),
    /// `not`: the inner conditions do not all hold.
    Not(Vec<Condition>),
    /// `any`: at least one inner set holds entirely.
    Any(Vec<Vec<Condition>>),
}

/// The proxy listeners of `conf/graygate.yaml` as the rules see them: each one's name and
/// scheme, in the config's order (a request's [`ListenerId`] indexes them). The rules are
/// compiled against them, so that `listener: [name]` naming no listener is an error of
/// `graygate check`, of the start and of a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listeners(Arc<[(Arc<str>, Scheme)]>);

impl Listeners {
    /// These listeners, in order.
    pub fn new(listeners: impl IntoIterator<Item = (Arc<str>, Scheme)>) -> Listeners {
        Listeners(listeners.into_iter().collect())
    }

    /// The listeners of a loaded config.
    pub fn of(listeners: &[Listener]) -> Listeners {
        Listeners::new(
            listeners
                .iter()
                .map(|l| (Arc::clone(&l.name), l.kind.scheme())),
        )
    }

    /// The id of the listener named `name`.
    pub fn id(&self, name: &str) -> Option<ListenerId> {
        self.0
            .iter()
            .position(|(n, _)| &**n == name)
            .map(|i| ListenerId(i as u16))
    }

    /// The name of listener `id` (`None` for an id the config does not have).
    pub fn name(&self, id: ListenerId) -> Option<&str> {
        self.0.get(id.index()).map(|(n, _)| &**n)
    }

    /// Where a request on the listener named `name` arrives.
    pub fn arrival(&self, name: &str) -> Option<Arrival> {
        self.id(name).map(|id| self.arrival_at(id))
    }

    /// Where a request on listener `id` arrives (plain HTTP for an id the config lacks).
    pub fn arrival_at(&self, listener: ListenerId) -> Arrival {
        Arrival {
            listener,
            scheme: self.0.get(listener.index()).map_or(Scheme::Http, |l| l.1),
        }
    }

    /// Every listener's name, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| &**n)
    }
}

impl Default for Listeners {
    /// The listeners of a config that names none: one plain listener named `http`.
    fn default() -> Listeners {
        Listeners::new([(Arc::from("http"), Scheme::Http)])
    }
}

/// The listeners a `listener:` condition accepts, with every listener's name for messages.
#[derive(Debug, Clone)]
pub struct ListenerSet {
    /// The accepted listeners.
    pub ids: Box<[ListenerId]>,
    /// The config's listeners.
    pub listeners: Listeners,
}

impl ListenerSet {
    /// Whether a request on `listener` is accepted: a few integer comparisons.
    pub fn contains(&self, listener: ListenerId) -> bool {
        self.ids.contains(&listener)
    }
}

/// What a split hashes to place a request in a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitKey {
    /// The uid text.
    Uid,
    /// The client address in its standard text form (`203.0.113.7`, `2001:db8::1`).
    ClientIp,
    /// A fresh random number per request.
    Random,
    /// A cookie's value.
    Cookie(Box<str>),
    /// A header's value.
    Header(HeaderName),
}

/// One version's slice of a split: hash points below `upper` (and at or above the previous
/// arm's `upper`) go to `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitArm {
    /// The version of this slice.
    pub version: VersionId,
    /// The weight as written.
    pub weight: u64,
    /// Cumulative weight up to and including this arm.
    pub upper: u64,
}

/// A weighted split, buckets laid out in the order written.
#[derive(Debug, Clone)]
pub struct Split {
    /// What is hashed.
    pub by: SplitKey,
    /// Mixed into the hash; defaults to the rule name.
    pub salt: Box<[u8]>,
    /// The slices, in the order written.
    pub arms: Vec<SplitArm>,
    /// Sum of the weights (> 0).
    pub total: u64,
    /// Also set the channel cookie, so the user keeps the version.
    pub sticky: bool,
}

/// What a rule does when its conditions hold.
#[derive(Debug, Clone)]
pub enum Action {
    /// Decide this version.
    Version(VersionId),
    /// Decide by a weighted split (boxed: the other actions are a word or two).
    Split(Box<Split>),
    /// Decide the version stored for the uid (`version: $assigned`).
    Assigned,
    /// Decide the version named by a valid channel cookie (`version: $channel`).
    Channel,
    /// Split between a rollout's version and its baseline at the rollout's current weight.
    Rollout(RolloutId),
}

/// An index of [`RuleSet::rollouts`].
pub type RolloutId = usize;

/// A rollout (SPEC section 12): a version moved through weight steps by graygate itself,
/// judged against a baseline on the requests its one rule decides.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// The rollout's name (`graygate_rollout_*{rollout}`, the API's paths).
    pub name: Arc<str>,
    /// The version being rolled out.
    pub version: VersionId,
    /// The version it is judged against and withdrawn to.
    pub baseline: VersionId,
    /// What is hashed to place a user (as `split.by`).
    pub by: SplitKey,
    /// The rollout's name as bytes: the hash's salt, so raising a step only moves users in.
    pub salt: Box<[u8]>,
    /// Percent of the rule's traffic on `version` at each step: increasing, in 1..=100.
    pub steps: Vec<u8>,
    /// How long a step lasts at least before it advances.
    pub step_duration: Duration,
    /// How the version is judged.
    pub analysis: Analysis,
    /// What `failure_limit` consecutive failed checks do.
    pub on_failure: OnFailure,
    /// The index of the one rule with `rollout: NAME`, whose decisions are counted per arm.
    pub rule: usize,
    /// XXH64 of the version's name and the steps: a change restarts the rollout.
    pub fingerprint: u64,
}

impl Rollout {
    /// Where a rollout stands when it starts (or starts again): step 1, progressing.
    pub fn start(&self) -> RolloutNow {
        RolloutNow {
            phase: Phase::Progressing,
            step: 0,
            weight: self.steps[0],
            fingerprint: self.fingerprint,
        }
    }
}

/// A rollout's analysis settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// How often the window is judged.
    pub interval: Duration,
    /// The sliding window of per-arm counts judged.
    pub window: Duration,
    /// Requests each arm needs in the window for a conclusive check.
    pub min_requests: u64,
    /// Fail when the version's 5xx rate exceeds the baseline's × ratio + margin.
    pub max_error_rate: RateBound,
    /// Fail when the version's p99 exceeds the baseline's × ratio + margin.
    pub max_p99_latency: Option<LatencyBound>,
    /// Fail when a goal's conversion rate falls below the baseline's × `min_ratio`.
    pub goals: Vec<GoalBound>,
    /// Consecutive failed checks that trigger `on_failure`.
    pub failure_limit: u32,
}

/// A bound on a rate relative to the baseline's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateBound {
    /// Multiplies the baseline's rate.
    pub ratio: f64,
    /// Added after: the slack that keeps a baseline at 0 from failing every error.
    pub margin: f64,
}

/// A bound on a latency relative to the baseline's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyBound {
    /// Multiplies the baseline's p99.
    pub ratio: f64,
    /// Added after.
    pub margin: Duration,
}

/// A goal's conversion rate relative to the baseline's.
#[derive(Debug, Clone, PartialEq)]
pub struct GoalBound {
    /// The goal's name (one of the rules' `goals`).
    pub goal: Arc<str>,
    /// The version's rate must be at least the baseline's × this.
    pub min_ratio: f64,
}

/// What a rollout does on `failure_limit` consecutive failed checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Weight 0 and the version withdrawn.
    Rollback,
    /// Stop where it is, for an operator to decide.
    Pause,
}

/// The channel cookie and the self-service page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSettings {
    /// Where the page is served (when `page` is on).
    pub path: Box<str>,
    /// The cookie's name.
    pub cookie: Box<str>,
    /// The cookie's lifetime.
    pub max_age: Duration,
    /// The cookie's `Domain`, so that one choice switches a group of domains.
    pub domain: Option<Box<str>>,
}

impl Default for ChannelSettings {
    fn default() -> Self {
        ChannelSettings {
            path: "/.canary-deployment".into(),
            cookie: "gg_channel".into(),
            max_age: Duration::from_secs(30 * 86_400),
            domain: None,
        }
    }
}

/// The mobile address API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressApiSettings {
    /// Where it is served.
    pub path: Box<str>,
    /// How long clients may keep an answer.
    pub ttl: Duration,
}

/// The store key of a uid's assignment: `prefix uid suffix` (from `gray:version:{uid}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    /// Text before `{uid}`.
    pub prefix: Box<str>,
    /// Text after `{uid}`.
    pub suffix: Box<str>,
}

impl KeyTemplate {
    /// The key for `uid`.
    pub fn key(&self, uid: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + uid.len() + self.suffix.len());
        key.push_str(&self.prefix);
        key.push_str(uid);
        key.push_str(&self.suffix);
        key
    }
}

impl Default for KeyTemplate {
    fn default() -> Self {
        KeyTemplate {
            prefix: "gray:version:".into(),
            suffix: "".into(),
        }
    }
}

/// One rule: conditions and an action. What `decide` reads of a candidate (its conditions
/// and its action) comes first and the record is aligned to a cache line, so that trying a
/// rule of a cold tenant reads one line of it, not two or three.
#[derive(Debug, Clone)]
#[repr(C, align(64))]
pub struct Rule {
    /// All must hold.
    pub conditions: Vec<Condition>,
    /// What to decide.
    pub action: Action,
    /// Unique name, used in headers, logs and metrics.
    pub name: Arc<str>,
    /// `name` as the value of `X-Graygate-Rule`, built once per generation.
    pub header_value: HeaderValue,
}

impl Rule {
    /// The rollout this rule moves, if it is a rollout's rule.
    pub fn rollout(&self) -> Option<RolloutId> {
        match self.action {
            Action::Rollout(id) => Some(id),
            _ => None,
        }
    }
}

/// Which response statuses count as a goal's conversion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusMatch {
    /// Bit `c` set: status class `c`xx matches (1..=5).
    pub classes: u8,
    /// Exact codes that match.
    pub codes: Vec<u16>,
}

impl StatusMatch {
    /// Whether `status` matches.
    pub fn matches(&self, status: u16) -> bool {
        let class = status / 100;
        (class < 8 && self.classes & (1 << class) != 0) || self.codes.contains(&status)
    }
}

/// A conversion counted per version.
#[derive(Debug, Clone)]
pub struct Goal {
    /// The goal's name (a metric label).
    pub name: Arc<str>,
    /// Which requests are attempts.
    pub conditions: Vec<Condition>,
    /// Which responses are conversions.
    pub status: StatusMatch,
}

/// The compiled rules: versions, identity, the ordered rules and goals.
#[derive(Debug, Clone)]
pub struct RuleSet {
    /// Every version, indexed by [`VersionId`].
    pub versions: Vec<Version>,
    /// The last full release: used when no rule decides.
    pub default: VersionId,
    /// How the user is identified.
    pub identity: Identity,
    /// Top to bottom; the first rule that decides wins.
    pub rules: Vec<Rule>,
    /// Conversions to count.
    pub goals: Vec<Goal>,
    /// The rollouts, each used by exactly one rule.
    pub rollouts: Vec<Rollout>,
    /// Where assignments are stored.
    pub assignments: KeyTemplate,
    /// The channel cookie (always) and its page.
    pub channels: ChannelSettings,
    /// Whether the self-service page is served (a `channels:` section is configured).
    pub channel_page: bool,
    /// The address API, when configured.
    pub address_api: Option<AddressApiSettings>,
    /// Cookies every version receives unchanged, isolated or not: the channel cookie and the
    /// identity cookies (`cookie:` sources of `identity.uid` and `identity.tier.sources`).
    pub passing_cookies: Vec<Box<str>>,
    /// The listeners the rules were compiled against.
    pub listeners: Listeners,
    /// Which rules a request may match, by host, uid, header, path prefix and method: what
    /// [`decide`](super::decide::decide) consults before evaluating rules.
    pub index: RuleIndex,
}

impl RuleSet {
    /// The version with this id.
    pub fn version(&self, id: VersionId) -> &Version {
        &self.versions[id.index()]
    }

    /// The id of the version with this name.
    pub fn version_id(&self, name: &str) -> Option<VersionId> {
        self.versions
            .iter()
            .position(|v| &*v.name == name)
            .map(|i| VersionId(i as u16))
    }
}

/// Load balancing inside one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LbPolicy {
    /// Each peer in turn.
    RoundRobin,
    /// Ketama consistent hashing, keyed by uid, else client IP.
    Consistent,
}

/// Active health checking of a group's peers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheckSpec {
    /// What a probe does.
    pub kind: HealthCheckKind,
    /// Time between probes.
    pub interval: Duration,
    /// Time a probe may take.
    pub timeout: Duration,
    /// Consecutive successes to become healthy.
    pub rise: usize,
    /// Consecutive failures to become unhealthy.
    pub fall: usize,
}

/// A TCP connect or an HTTP GET.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HealthCheckKind {
    /// The peer accepts a TCP connection.
    Tcp,
    /// `GET path` with `Host: host` answers 2xx or 3xx.
    Http {
        /// The request path.
        path: String,
        /// The Host header.
        host: String,
    },
}

/// Timeouts of upstream connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpstreamTimeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Between reads of the response.
    pub read: Duration,
    /// Between writes of the request.
    pub write: Duration,
    /// An idle pooled connection is closed after this.
    pub idle: Duration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        UpstreamTimeouts {
            connect: Duration::from_secs(1),
            read: Duration::from_secs(60),
            write: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        }
    }
}

/// The HTTP version spoken to a group's peers (`protocol: http1 | h2 | h2c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1, over TLS when the group has `tls` (ALPN `http/1.1`).
    #[default]
    Http1,
    /// HTTP/2 over TLS (ALPN `h2`).
    H2,
    /// HTTP/2 over plain TCP with prior knowledge (gRPC without TLS).
    H2c,
}

impl UpstreamProtocol {
    /// The word written in the rules.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2 => "h2",
            UpstreamProtocol::H2c => "h2c",
        }
    }
}

/// The certificates of a `tls.ca` file, parsed at compile time.
///
/// Two bundles are equal when they come from the same file with the same content, so a
/// reload that leaves the file alone reuses the group's pool.
#[derive(Clone)]
pub struct CaBundle {
    /// The file, resolved against the rules file's directory.
    pub path: std::path::PathBuf,
    /// XXH64 of the file's bytes.
    pub content_hash: u64,
    /// The certificates, in the form Pingora's connector takes.
    pub certs: Arc<Box<[X509]>>,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle")
            .field("path", &self.path)
            .field("certificates", &self.certs.len())
            .finish()
    }
}

impl PartialEq for CaBundle {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.content_hash == other.content_hash
    }
}

impl Eq for CaBundle {}

impl std::hash::Hash for CaBundle {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.path.hash(state);
        self.content_hash.hash(state);
    }
}

/// TLS to a group's peers (`tls: { sni, verify, ca }`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// The server name sent and, with `verify`, checked against the peers' certificates;
    /// empty: no SNI is sent (compile then requires `verify: false`).
    pub sni: Box<str>,
    /// Check the peers' certificate chains (against `ca`, else the system's roots) and name.
    pub verify: bool,
    /// The roots to check against instead of the system's.
    pub ca: Option<CaBundle>,
}

/// One version's upstream group as configured: the part that, when unchanged across a
/// reload, lets the live group (and its health state) be reused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupSpec {
    /// Resolved peer addresses, in the order written.
    pub peers: Vec<SocketAddr>,
    /// Load balancing.
    pub lb: LbPolicy,
    /// Active health checks, if any.
    pub health_check: Option<HealthCheckSpec>,
    /// Connection timeouts.
    pub timeouts: UpstreamTimeouts,
    /// The HTTP version spoken to the peers.
    pub protocol: UpstreamProtocol,
    /// TLS to the peers, if any.
    pub tls: Option<UpstreamTls>,
}

/// One service as configured.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Unique name (a metric label).
    pub name: Arc<str>,
    /// Hosts it serves.
    pub hosts: Vec<HostPattern>,
    /// Path prefix it serves.
    pub path_prefix: Box<str>,
    /// Groups per version.
    pub groups: Vec<GroupConfig>,
    /// Overrides `limits.max_body_size`.
    pub max_body_size: Option<u64>,
}

/// One version's group inside a service.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// The version it serves.
    pub version: VersionId,
    /// Peers and how to balance and check them.
    pub spec: GroupSpec,
    /// What the address API hands out for this group.
    pub public_addresses: Vec<String>,
}

/// The whole compiled model of one rules generation.
#[derive(Debug, Clone)]
pub struct RoutingModel {
    /// Versions, identity, rules, goals.
    pub rules: RuleSet,
    /// Services and their groups.
    pub services: Vec<ServiceSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_decide_reads_of_a_rule_is_its_first_cache_line() {
        assert_eq!(std::mem::align_of::<Rule>(), 64);
        // A list of one condition's items kept inline does not grow the condition.
        assert_eq!(std::mem::size_of::<Condition>(), 40);
        let read = std::mem::offset_of!(Rule, action) + std::mem::size_of::<Action>();
        assert!(std::mem::offset_of!(Rule, conditions) < read && read <= 64);
    }
}
