//! Validation and compilation of the rules files into the [`model`](super::model).
//!
//! Every file of the rules directory is parsed on its own; the sections are merged (a name
//! defined twice is an error), then each item is validated and compiled. All problems are
//! collected with their file and line; the model is only returned when there are none.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::Method;
use indexmap::IndexMap;
use ipnet::IpNet;
use regex::RegexSet;
use serde::de::DeserializeOwned;
use xxhash_rust::xxh64::xxh64;

use super::model::*;
use super::raw::*;
use crate::diagnostics::{Diagnostics, Severity, SourceFile};

/// One rules file's text.
#[derive(Debug, Clone)]
pub struct RuleSource {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its content.
    pub text: String,
}

/// A compiled rules generation with what it was built from.
#[derive(Debug, Clone)]
pub struct LoadedRules {
    /// The compiled model.
    pub model: RoutingModel,
    /// Warnings found (no errors: those reject the load).
    pub warnings: Diagnostics,
    /// The files read, in merge order.
    pub files: Vec<PathBuf>,
    /// XXH64 of every file's path and content.
    pub content_hash: u64,
}

/// Reads the rules file, or every `*.yaml` / `*.yml` file of the rules directory in name
/// order, and compiles them.
pub fn load(path: &Path) -> Result<LoadedRules, Diagnostics> {
    let file: Arc<Path> = Arc::from(path);
    let mut diags = Diagnostics::default();
    let paths = if path.is_dir() {
        match std::fs::read_dir(path) {
            Ok(entries) => {
                let mut paths: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.is_file()
                            && matches!(
                                p.extension().and_then(|e| e.to_str()),
                                Some("yaml" | "yml")
                            )
                    })
                    .collect();
                paths.sort();
                if paths.is_empty() {
                    diags.push(
                        Severity::Error,
                        &file,
                        None,
                        "no *.yaml rules file in this directory".into(),
                    );
                }
                paths
            }
            Err(e) => {
                diags.push(
                    Severity::Error,
                    &file,
                    None,
                    format!("cannot read the rules directory: {e}"),
                );
                Vec::new()
            }
        }
    } else {
        vec![path.to_path_buf()]
    };
    let mut sources = Vec::new();
    for path in paths {
        match std::fs::read_to_string(&path) {
            Ok(text) => sources.push(RuleSource { path, text }),
            Err(e) => diags.push(
                Severity::Error,
                &Arc::from(path.as_path()),
                None,
                format!("cannot read: {e}"),
            ),
        }
    }
    if diags.has_errors() {
        return Err(diags);
    }
    compile(&sources)
}

/// Validates and compiles rules files already read.
pub fn compile(sources: &[RuleSource]) -> Result<LoadedRules, Diagnostics> {
    let mut c = Compiler::default();
    let mut merged = Merged::default();
    for source in sources {
        c.add_file(source, &mut merged);
    }
    let model = c.build(merged);
    let mut hash_input = Vec::new();
    for source in sources {
        hash_input.extend_from_slice(source.path.to_string_lossy().as_bytes());
        hash_input.push(0);
        hash_input.extend_from_slice(source.text.as_bytes());
        hash_input.push(0);
    }
    c.diags.sort();
    if c.diags.has_errors() {
        return Err(c.diags);
    }
    Ok(LoadedRules {
        model: model.expect("a model is built whenever there are no errors"),
        warnings: c.diags,
        files: sources.iter().map(|s| s.path.clone()).collect(),
        content_hash: xxh64(&hash_input, 0),
    })
}

/// Where an item came from: its file and its path inside that file.
#[derive(Debug, Clone)]
struct At {
    file: usize,
    path: String,
}

#[derive(Default)]
struct Merged {
    versions: IndexMap<String, (At, serde_yaml::Value)>,
    default: Option<(At, String)>,
    identity: Option<(At, serde_yaml::Value)>,
    assignments: Option<(At, serde_yaml::Value)>,
    services: IndexMap<String, (At, serde_yaml::Value)>,
    rules: Vec<(At, serde_yaml::Value)>,
    goals: Vec<(At, serde_yaml::Value)>,
    channels: Option<(At, serde_yaml::Value)>,
    address_api: Option<(At, serde_yaml::Value)>,
}

#[derive(Default)]
struct Compiler {
    files: Vec<SourceFile>,
    diags: Diagnostics,
    /// A file could not be parsed: what seems missing from the set may be in it.
    unparsed_file: bool,
    /// Version names, once the versions are compiled (for `channel:` conditions).
    version_names: HashMap<String, VersionId>,
}

/// Goals are tracked per request in a 64-bit set.
pub const MAX_GOALS: usize = 64;

impl Compiler {
    fn error(&mut self, at: &At, message: String) {
        let file = &self.files[at.file];
        let line = file.line(&at.path);
        let path = file.path.clone();
        self.diags.push(Severity::Error, &path, line, message);
    }

    fn warning(&mut self, at: &At, message: String) {
        let file = &self.files[at.file];
        let line = file.line(&at.path);
        let path = file.path.clone();
        self.diags.push(Severity::Warning, &path, line, message);
    }

    fn at(&self, file: usize, path: impl Into<String>) -> At {
        At {
            file,
            path: path.into(),
        }
    }

    fn describe(&self, at: &At) -> String {
        let file = &self.files[at.file];
        match file.line(&at.path) {
            Some(line) => format!("{}:{line}", file.path.display()),
            None => file.path.display().to_string(),
        }
    }

    /// Parses one item; a failure is reported at the item's line.
    fn parse<T: DeserializeOwned>(
        &mut self,
        at: &At,
        what: &str,
        value: serde_yaml::Value,
    ) -> Option<T> {
        match serde_yaml::from_value(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(at, format!("{what}: {e}"));
                None
            }
        }
    }

    fn add_file(&mut self, source: &RuleSource, merged: &mut Merged) {
        let index = self.files.len();
        self.files.push(SourceFile::new(&source.path, &source.text));
        let raw: RawRuleFile = match serde_yaml::from_str::<Option<RawRuleFile>>(&source.text) {
            Ok(raw) => raw.unwrap_or_default(),
            Err(e) => {
                let path = self.files[index].path.clone();
                crate::config::yaml_error(&mut self.diags, &path, &e);
                self.unparsed_file = true;
                return;
            }
        };
        self.merge_named(
            index,
            "versions",
            "version",
            raw.versions,
            &mut merged.versions,
        );
        self.merge_named(
            index,
            "services",
            "service",
            raw.services,
            &mut merged.services,
        );
        for (i, value) in raw.rules.into_iter().flatten().enumerate() {
            merged
                .rules
                .push((self.at(index, format!("rules.{i}")), value));
        }
        for (i, value) in raw.goals.into_iter().flatten().enumerate() {
            merged
                .goals
                .push((self.at(index, format!("goals.{i}")), value));
        }
        self.once(index, "default", raw.default, &mut merged.default);
        self.once(index, "identity", raw.identity, &mut merged.identity);
        self.once(
            index,
            "assignments",
            raw.assignments,
            &mut merged.assignments,
        );
        self.once(index, "channels", raw.channels, &mut merged.channels);
        self.once(
            index,
            "address_api",
            raw.address_api,
            &mut merged.address_api,
        );
    }

    /// Adds a file's named items (versions, services) to the merged set; a name defined
    /// twice is an error at the second definition.
    fn merge_named(
        &mut self,
        file: usize,
        section: &str,
        kind: &str,
        items: Option<IndexMap<String, serde_yaml::Value>>,
        merged: &mut IndexMap<String, (At, serde_yaml::Value)>,
    ) {
        for (name, value) in items.into_iter().flatten() {
            let at = self.at(file, format!("{section}.{name}"));
            if let Some((first, _)) = merged.get(&name) {
                let msg = format!(
                    "{kind} \"{name}\" is defined twice (first at {})",
                    self.describe(first)
                );
                self.error(&at, msg);
            } else {
                merged.insert(name, (at, value));
            }
        }
    }

    /// Keeps a section that may be defined in one file only.
    fn once<T>(&mut self, file: usize, key: &str, value: Option<T>, slot: &mut Option<(At, T)>) {
        let Some(value) = value else { return };
        let at = self.at(file, key);
        if let Some((first, _)) = slot {
            let msg = format!("{key} is defined twice (first at {})", self.describe(first));
            self.error(&at, msg);
        } else {
            *slot = Some((at, value));
        }
    }

    fn build(&mut self, merged: Merged) -> Option<RoutingModel> {
        let versions = self.versions(&merged.versions);
        self.version_names = versions
            .iter()
            .enumerate()
            .map(|(i, v)| (v.name.to_string(), VersionId(i as u16)))
            .collect();
        let channel_page = merged.channels.is_some();
        let channels = self.channels(merged.channels);
        let address_api = self.address_api(merged.address_api);
        let names: HashMap<&str, VersionId> = versions
            .iter()
            .enumerate()
            .map(|(i, v)| (&*v.name, VersionId(i as u16)))
            .collect();
        let default = match &merged.default {
            Some((at, name)) => match names.get(name.as_str()) {
                Some(id) => Some(*id),
                None => {
                    self.error(at, format!("default: unknown version \"{name}\""));
                    None
                }
            },
            None => {
                if let Some(file) = self.files.first().filter(|_| !self.unparsed_file) {
                    let path = file.path.clone();
                    self.diags.push(
                        Severity::Error,
                        &path,
                        None,
                        "default: missing; name the version that serves when no rule decides"
                            .into(),
                    );
                }
                None
            }
        };
        let identity = self.identity(merged.identity);
        let assignments = self.assignments(merged.assignments);
        let services = self.services(&merged.services, &names, default, &versions);
        let rules = self.rules(merged.rules, &names, &versions);
        let goals = self.goals(merged.goals);
        if versions.is_empty() && !self.files.is_empty() && !self.unparsed_file {
            let path = self.files[0].path.clone();
            self.diags.push(
                Severity::Error,
                &path,
                None,
                "versions: at least one version is needed".into(),
            );
        }
        Some(RoutingModel {
            rules: RuleSet {
                versions,
                default: default?,
                identity: identity?,
                rules,
                goals,
                assignments: assignments?,
                channels: channels?,
                channel_page,
                address_api: address_api?,
            },
            services,
        })
    }

    fn versions(&mut self, raw: &IndexMap<String, (At, serde_yaml::Value)>) -> Vec<Version> {
        let mut versions = Vec::new();
        for (name, (at, value)) in raw {
            if !is_name(name) {
                self.error(
                    at,
                    format!("version \"{name}\": names may only use letters, digits, '-' and '_'"),
                );
            }
            let value = if value.is_null() {
                serde_yaml::Value::Mapping(Default::default())
            } else {
                value.clone()
            };
            let Some(v) = self.parse::<RawVersion>(at, &format!("version \"{name}\""), value)
            else {
                continue;
            };
            versions.push(Version {
                name: Arc::from(name.as_str()),
                header_value: header_value(name),
                description: v.description.unwrap_or_default(),
                selectable: v.selectable,
                restricted: v.restricted,
            });
        }
        if versions.len() > u16::MAX as usize {
            let at = raw[0].0.clone();
            self.error(&at, "versions: too many".into());
        }
        versions
    }

    fn source(&mut self, at: &At, what: &str, text: &str) -> Option<Source> {
        let parsed = text.split_once(':').and_then(|(kind, name)| {
            let name = name.trim();
            if name.is_empty() {
                return None;
            }
            match kind.trim() {
                "cookie" => Some(Source::Cookie(name.into())),
                "header" => HeaderName::from_bytes(name.as_bytes())
                    .ok()
                    .map(Source::Header),
                "query" => Some(Source::Query(name.into())),
                _ => None,
            }
        });
        if parsed.is_none() {
            self.error(at, format!("{what}: \"{text}\" is not a source like cookie:NAME, header:NAME or query:NAME"));
        }
        parsed
    }

    fn assignments(&mut self, raw: Option<(At, serde_yaml::Value)>) -> Option<KeyTemplate> {
        let Some((at, value)) = raw else {
            return Some(KeyTemplate::default());
        };
        let raw = self.parse::<RawAssignments>(&at, "assignments", value)?;
        match raw.key.split_once("{uid}") {
            Some((prefix, suffix)) if !suffix.contains("{uid}") => Some(KeyTemplate {
                prefix: prefix.into(),
                suffix: suffix.into(),
            }),
            _ => {
                let msg = format!(
                    "assignments.key: \"{}\" must contain {{uid}} exactly once",
                    raw.key
                );
                self.error(&at, msg);
                None
            }
        }
    }

    fn channels(&mut self, raw: Option<(At, serde_yaml::Value)>) -> Option<ChannelSettings> {
        let defaults = ChannelSettings::default();
        let Some((at, value)) = raw else {
            return Some(defaults);
        };
        let raw = self.parse::<RawChannels>(&at, "channels", value)?;
        let path = raw.path.unwrap_or_else(|| defaults.path.to_string());
        if !path.starts_with('/') {
            self.error(&at, format!("channels.path: \"{path}\" must start with /"));
        }
        let cookie = raw.cookie.unwrap_or_else(|| defaults.cookie.to_string());
        let token = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        };
        if !token(&cookie) {
            self.error(
                &at,
                format!("channels.cookie: \"{cookie}\" is not a cookie name"),
            );
        }
        if let Some(domain) = &raw.domain {
            if !token(domain) || !domain.contains('.') {
                self.error(
                    &at,
                    format!("channels.domain: \"{domain}\" is not a domain like .example.com"),
                );
            }
        }
        let max_age = raw.max_age.map(|d| d.0).unwrap_or(defaults.max_age);
        if max_age.is_zero() {
            self.error(&at, "channels.max_age: must be above 0".into());
        }
        Some(ChannelSettings {
            path: path.into(),
            cookie: cookie.into(),
            max_age,
            domain: raw.domain.map(Into::into),
        })
    }

    fn address_api(
        &mut self,
        raw: Option<(At, serde_yaml::Value)>,
    ) -> Option<Option<AddressApiSettings>> {
        let Some((at, value)) = raw else {
            return Some(None);
        };
        let raw = self.parse::<RawAddressApi>(&at, "address_api", value)?;
        let path = raw.path.unwrap_or_else(|| "/.graygate/address".into());
        if !path.starts_with('/') {
            self.error(
                &at,
                format!("address_api.path: \"{path}\" must start with /"),
            );
        }
        Some(Some(AddressApiSettings {
            path: path.into(),
            ttl: raw.ttl.map(|d| d.0).unwrap_or(Duration::from_secs(60)),
        }))
    }

    fn identity(&mut self, raw: Option<(At, serde_yaml::Value)>) -> Option<Identity> {
        let (at, raw) = match raw {
            Some((at, value)) => {
                let raw = self.parse::<RawIdentity>(&at, "identity", value)?;
                (at, raw)
            }
            None => (self.at(0, "identity"), RawIdentity::default()),
        };
        let uid_texts = raw.uid.map(|u| u.0).unwrap_or_else(|| {
            vec![
                "cookie:uid".into(),
                "header:X-User-Id".into(),
                "query:uid".into(),
            ]
        });
        let uid = uid_texts
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                self.source(
                    &At {
                        path: format!("{}.uid.{i}", at.path),
                        ..at.clone()
                    },
                    "identity.uid",
                    t,
                )
            })
            .collect();
        let tier_raw = raw.tier.unwrap_or_default();
        let tier_at = At {
            path: format!("{}.tier", at.path),
            ..at.clone()
        };
        let tier_sources = tier_raw
            .sources
            .0
            .iter()
            .filter_map(|t| self.source(&tier_at, "identity.tier.sources", t))
            .collect();
        let default = match tier_raw.default.as_deref() {
            None => Tier::Trial,
            Some(text) => Tier::parse(text).unwrap_or_else(|| {
                self.error(
                    &tier_at,
                    format!("identity.tier.default: \"{text}\" is neither paid nor trial"),
                );
                Tier::Trial
            }),
        };
        let internal_raw = raw.internal.unwrap_or_default();
        let internal_at = At {
            path: format!("{}.internal", at.path),
            ..at.clone()
        };
        let cidrs = internal_raw
            .cidrs
            .iter()
            .filter_map(|c| self.cidr(&internal_at, "identity.internal.cidrs", c))
            .collect();
        Some(Identity {
            uid,
            tier: TierPolicy {
                sources: tier_sources,
                paid_uids: tier_raw.paid_uids.into_iter().map(|t| t.0.into()).collect(),
                default,
                redis_set: tier_raw.redis_set.map(Into::into),
            },
            internal: InternalPolicy {
                uids: internal_raw.uids.into_iter().map(|t| t.0.into()).collect(),
                cidrs,
                redis_set: internal_raw.redis_set.map(Into::into),
            },
        })
    }

    fn cidr(&mut self, at: &At, what: &str, text: &str) -> Option<IpNet> {
        let parsed = text
            .parse::<IpNet>()
            .ok()
            .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
            .map(|net| net.trunc());
        if parsed.is_none() {
            self.error(
                at,
                format!("{what}: \"{text}\" is not a CIDR like 10.0.0.0/8"),
            );
        }
        parsed
    }

    fn host_pattern(&mut self, at: &At, what: &str, text: &str) -> Option<HostPattern> {
        let text = text.trim().to_ascii_lowercase();
        let valid_name = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        };
        let pattern = if text == "*" {
            Some(HostPattern::Any)
        } else if let Some(suffix) = text.strip_prefix("*.") {
            valid_name(suffix).then(|| HostPattern::Suffix(format!(".{suffix}").into()))
        } else {
            valid_name(&text).then(|| HostPattern::Exact(text.clone().into()))
        };
        if pattern.is_none() {
            self.error(
                at,
                format!("{what}: \"{text}\" is not a host, \"*.suffix\" or \"*\""),
            );
        }
        pattern
    }

    fn services(
        &mut self,
        raw: &IndexMap<String, (At, serde_yaml::Value)>,
        names: &HashMap<&str, VersionId>,
        default: Option<VersionId>,
        versions: &[Version],
    ) -> Vec<ServiceSpec> {
        let mut services = Vec::new();
        let mut claimed: HashMap<(HostPattern, String), String> = HashMap::new();
        for (name, (at, value)) in raw {
            let what = format!("service \"{name}\"");
            if !is_name(name) {
                self.error(
                    at,
                    format!("{what}: names may only use letters, digits, '-' and '_'"),
                );
            }
            let Some(s) = self.parse::<RawService>(at, &what, value.clone()) else {
                continue;
            };
            let hosts_at = At {
                path: format!("{}.hosts", at.path),
                ..at.clone()
            };
            if s.hosts.0.is_empty() {
                self.error(&hosts_at, format!("{what}: hosts is empty"));
            }
            let hosts: Vec<HostPattern> = s
                .hosts
                .0
                .iter()
                .filter_map(|h| self.host_pattern(&hosts_at, &format!("{what}: hosts"), h))
                .collect();
            let prefix = s.path_prefix.unwrap_or_else(|| "/".into());
            if !prefix.starts_with('/') {
                let at = At {
                    path: format!("{}.path_prefix", at.path),
                    ..at.clone()
                };
                self.error(
                    &at,
                    format!("{what}: path_prefix \"{prefix}\" must start with /"),
                );
            }
            for host in &hosts {
                if let Some(other) = claimed.insert((host.clone(), prefix.clone()), name.clone()) {
                    self.error(
                        &hosts_at,
                        format!("{what}: host \"{host}\" with path_prefix \"{prefix}\" is already served by service \"{other}\""),
                    );
                }
            }
            let mut groups = Vec::new();
            for (version, value) in &s.groups {
                let group_at = At {
                    path: format!("{}.groups.{version}", at.path),
                    ..at.clone()
                };
                let gwhat = format!("{what} group \"{version}\"");
                let Some(id) = names.get(version.as_str()).copied() else {
                    self.error(
                        &group_at,
                        format!("{what}: group for unknown version \"{version}\""),
                    );
                    continue;
                };
                if let Some(group) = self.group(&group_at, &gwhat, value.clone()) {
                    groups.push(GroupConfig {
                        version: id,
                        ..group
                    });
                }
            }
            if let Some(default) = default {
                if !s.groups.is_empty()
                    && !groups.iter().any(|g| g.version == default)
                    && !s.groups.contains_key(&*versions[default.index()].name)
                {
                    let groups_at = At {
                        path: format!("{}.groups", at.path),
                        ..at.clone()
                    };
                    self.error(
                        &groups_at,
                        format!(
                            "{what}: no group for the default version \"{}\"",
                            versions[default.index()].name
                        ),
                    );
                }
                if s.groups.is_empty() {
                    self.error(at, format!("{what}: no groups"));
                }
            }
            services.push(ServiceSpec {
                name: Arc::from(name.as_str()),
                hosts,
                path_prefix: prefix.into(),
                groups,
            });
        }
        services
    }

    fn group(&mut self, at: &At, what: &str, value: serde_yaml::Value) -> Option<GroupConfig> {
        let g = self.parse::<RawGroup>(at, what, value)?;
        if g.peers.is_empty() {
            self.error(at, format!("{what}: peers is empty"));
        }
        let mut peers = Vec::new();
        for (i, peer) in g.peers.iter().enumerate() {
            let peer_at = At {
                path: format!("{}.peers.{i}", at.path),
                ..at.clone()
            };
            match resolve_peer(peer) {
                Ok(addrs) => {
                    for addr in addrs {
                        if !peers.contains(&addr) {
                            peers.push(addr);
                        }
                    }
                }
                Err(why) => self.error(&peer_at, format!("{what}: peer \"{peer}\" {why}")),
            }
        }
        let lb = match g.lb.as_deref() {
            None | Some("round_robin") => LbPolicy::RoundRobin,
            Some("consistent") => LbPolicy::Consistent,
            Some(other) => {
                let lb_at = At {
                    path: format!("{}.lb", at.path),
                    ..at.clone()
                };
                self.error(
                    &lb_at,
                    format!("{what}: lb \"{other}\" is neither round_robin nor consistent"),
                );
                LbPolicy::RoundRobin
            }
        };
        let health_check = g.health_check.and_then(|h| {
            let hc_at = At {
                path: format!("{}.health_check", at.path),
                ..at.clone()
            };
            let kind = match h.kind.as_str() {
                "tcp" => HealthCheckKind::Tcp,
                "http" => {
                    let path = h.path.unwrap_or_else(|| "/".into());
                    if !path.starts_with('/') {
                        self.error(
                            &hc_at,
                            format!("{what}: health_check path \"{path}\" must start with /"),
                        );
                    }
                    HealthCheckKind::Http {
                        path,
                        host: h.host.unwrap_or_else(|| "localhost".into()),
                    }
                }
                other => {
                    self.error(
                        &hc_at,
                        format!("{what}: health_check type \"{other}\" is neither http nor tcp"),
                    );
                    return None;
                }
            };
            let interval = h.interval.map(|d| d.0).unwrap_or(Duration::from_secs(2));
            let timeout = h.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(1));
            if interval.is_zero() || timeout.is_zero() {
                self.error(
                    &hc_at,
                    format!("{what}: health_check interval and timeout must be above 0"),
                );
            }
            let (rise, fall) = (h.rise.unwrap_or(1), h.fall.unwrap_or(1));
            if rise == 0 || fall == 0 {
                self.error(
                    &hc_at,
                    format!("{what}: health_check rise and fall must be at least 1"),
                );
            }
            Some(HealthCheckSpec {
                kind,
                interval,
                timeout,
                rise: rise.max(1),
                fall: fall.max(1),
            })
        });
        let defaults = UpstreamTimeouts::default();
        let t = g.timeouts.unwrap_or_default();
        let timeouts = UpstreamTimeouts {
            connect: t.connect.map(|d| d.0).unwrap_or(defaults.connect),
            read: t.read.map(|d| d.0).unwrap_or(defaults.read),
            write: t.write.map(|d| d.0).unwrap_or(defaults.write),
            idle: t.idle.map(|d| d.0).unwrap_or(defaults.idle),
        };
        let public_addresses = g
            .public_addresses
            .unwrap_or_else(|| peers.iter().map(|p| format!("http://{p}")).collect());
        Some(GroupConfig {
            version: VersionId(0),
            spec: GroupSpec {
                peers,
                lb,
                health_check,
                timeouts,
            },
            public_addresses,
        })
    }

    fn version_ref(
        &mut self,
        at: &At,
        what: &str,
        name: &str,
        names: &HashMap<&str, VersionId>,
    ) -> Option<VersionId> {
        let id = names.get(name).copied();
        if id.is_none() {
            self.error(at, format!("{what}: unknown version \"{name}\""));
        }
        id
    }

    fn rules(
        &mut self,
        raw: Vec<(At, serde_yaml::Value)>,
        names: &HashMap<&str, VersionId>,
        versions: &[Version],
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
            let what = format!("rule \"{}\"", r.name);
            if !is_rule_name(&r.name) {
                self.error(
                    &at,
                    format!("{what}: names may only use letters, digits, '-', '_' and '.'"),
                );
            }
            if let Some(first) = seen.get(&r.name) {
                let msg = format!(
                    "{what} is defined twice (first at {})",
                    self.describe(first)
                );
                self.error(&at, msg);
            } else {
                seen.insert(r.name.clone(), at.clone());
            }
            if let Some(earlier) = &always_decides {
                self.warning(
                    &at,
                    format!("{what} is unreachable: rule \"{earlier}\" above it has no conditions and always decides"),
                );
            }
            let when_at = At {
                path: format!("{}.when", at.path),
                ..at.clone()
            };
            let conditions = self.conditions(&when_at, &what, r.when);
            let action = match (r.version, r.split) {
                (Some(version), None) if version == "$assigned" => Some(Action::Assigned),
                (Some(version), None) if version == "$channel" => Some(Action::Channel),
                (Some(version), None) => {
                    let v_at = At {
                        path: format!("{}.version", at.path),
                        ..at.clone()
                    };
                    self.version_ref(&v_at, &what, &version, names)
                        .map(Action::Version)
                }
                (None, Some(split)) => {
                    let s_at = At {
                        path: format!("{}.split", at.path),
                        ..at.clone()
                    };
                    self.split(&s_at, &what, &r.name, split, names)
                        .map(Action::Split)
                }
                _ => {
                    self.error(
                        &at,
                        format!("{what}: needs exactly one action: version or split"),
                    );
                    None
                }
            };
            let Some(action) = action else { continue };
            // A rule with errors may have lost conditions: it says nothing about reachability.
            let clean = self.diags.errors().count() == errors_before;
            if clean && conditions.is_empty() && always_decides.is_none() {
                let decides = match &action {
                    Action::Version(v) => !versions[v.index()].restricted,
                    Action::Split(s) => {
                        s.by == SplitKey::Random
                            && s.arms
                                .iter()
                                .all(|a| a.weight == 0 || !versions[a.version.index()].restricted)
                    }
                    Action::Assigned | Action::Channel => false,
                };
                if decides {
                    always_decides = Some(r.name.clone());
                }
            }
            rules.push(Rule {
                name: Arc::from(r.name.as_str()),
                header_value: header_value(&r.name),
                conditions,
                action,
            });
        }
        rules
    }

    fn split(
        &mut self,
        at: &At,
        what: &str,
        rule_name: &str,
        raw: RawSplit,
        names: &HashMap<&str, VersionId>,
    ) -> Option<Split> {
        let by = match raw.by.as_str() {
            "uid" => Some(SplitKey::Uid),
            "client_ip" => Some(SplitKey::ClientIp),
            "random" => Some(SplitKey::Random),
            other => match other.split_once(':') {
                Some(("cookie", name)) if !name.is_empty() => Some(SplitKey::Cookie(name.into())),
                Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                    .ok()
                    .map(SplitKey::Header),
                _ => None,
            },
        };
        if by.is_none() {
            self.error(
                at,
                format!("{what}: split by \"{}\" is not uid, client_ip, random, cookie:NAME or header:NAME", raw.by),
            );
        }
        if raw.weights.is_empty() {
            self.error(at, format!("{what}: split weights are empty"));
        }
        let mut arms = Vec::new();
        let mut total: u64 = 0;
        let mut ok = true;
        for (name, weight) in &raw.weights {
            let Some(version) = self.version_ref(at, what, name, names) else {
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
        if ok && !raw.weights.is_empty() && total == 0 {
            self.error(at, format!("{what}: split weights sum to 0"));
            ok = false;
        }
        Some(Split {
            sticky: raw.sticky,
            by: by?,
            salt: raw
                .salt
                .unwrap_or_else(|| rule_name.to_string())
                .into_bytes()
                .into(),
            arms,
            total,
        })
        .filter(|_| ok)
    }

    fn conditions(&mut self, at: &At, what: &str, w: RawWhen) -> Vec<Condition> {
        let mut out = Vec::new();
        let sub = |key: &str| At {
            path: format!("{}.{key}", at.path),
            ..at.clone()
        };
        if let Some(hosts) = w.host {
            let a = sub("host");
            let patterns = hosts
                .0
                .iter()
                .filter_map(|h| self.host_pattern(&a, &format!("{what}: host"), h))
                .collect();
            out.push(Condition::Host(patterns));
        }
        if let Some(prefixes) = w.path_prefix {
            for p in &prefixes.0 {
                if !p.starts_with('/') {
                    self.error(
                        &sub("path_prefix"),
                        format!("{what}: path_prefix \"{p}\" must start with /"),
                    );
                }
            }
            out.push(Condition::PathPrefix(
                prefixes.0.into_iter().map(Into::into).collect(),
            ));
        }
        if let Some(regexes) = w.path_regex {
            let mut valid = true;
            for pattern in &regexes.0 {
                if let Err(e) = regex::Regex::new(pattern) {
                    // The crate's message ends with the reason on its last line.
                    let text = e.to_string();
                    let reason = text
                        .lines()
                        .last()
                        .unwrap_or("")
                        .trim_start_matches("error: ");
                    let msg = format!("{what}: path_regex \"{pattern}\" is invalid: {reason}");
                    self.error(&sub("path_regex"), msg);
                    valid = false;
                }
            }
            if valid {
                match RegexSet::new(&regexes.0) {
                    Ok(set) => out.push(Condition::PathRegex(set)),
                    Err(e) => {
                        let msg = format!("{what}: path_regex is invalid: {e}");
                        self.error(&sub("path_regex"), msg);
                    }
                }
            }
        }
        if let Some(methods) = w.method {
            let a = sub("method");
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
        if let Some(headers) = w.header {
            let a = sub("header");
            let mut pairs = Vec::new();
            for (name, values) in headers {
                match HeaderName::from_bytes(name.as_bytes()) {
                    Ok(h) => pairs.push((h, value_match(values))),
                    Err(_) => self.error(&a, format!("{what}: \"{name}\" is not a header name")),
                }
            }
            out.push(Condition::Header(pairs));
        }
        if let Some(cookies) = w.cookie {
            out.push(Condition::Cookie(
                cookies
                    .into_iter()
                    .map(|(n, v)| (n.into(), value_match(v)))
                    .collect(),
            ));
        }
        if let Some(query) = w.query {
            out.push(Condition::Query(
                query
                    .into_iter()
                    .map(|(n, v)| (n.into(), value_match(v)))
                    .collect(),
            ));
        }
        if let Some(nets) = w.client_ip {
            let a = sub("client_ip");
            let nets = nets
                .0
                .iter()
                .filter_map(|c| self.cidr(&a, &format!("{what}: client_ip"), c))
                .collect();
            out.push(Condition::ClientIp(nets));
        }
        if let Some(tails) = w.uid_tail {
            let mut mask = 0u16;
            for t in &tails.0 {
                match t.0.parse::<u8>() {
                    Ok(d) if d <= 9 && t.0.len() == 1 => mask |= 1 << d,
                    _ => self.error(
                        &sub("uid_tail"),
                        format!("{what}: uid_tail \"{}\" is not a digit 0-9", t.0),
                    ),
                }
            }
            out.push(Condition::UidTail(mask));
        }
        if let Some(suffixes) = w.uid_suffix {
            if suffixes.0.iter().any(|s| s.0.is_empty()) {
                self.error(
                    &sub("uid_suffix"),
                    format!("{what}: uid_suffix has an empty suffix"),
                );
            }
            out.push(Condition::UidSuffix(
                suffixes.0.into_iter().map(|t| t.0.into()).collect(),
            ));
        }
        if let Some(uids) = w.uid_in {
            out.push(Condition::UidIn(
                uids.0
                    .into_iter()
                    .map(|t| t.0.into())
                    .collect::<HashSet<_>>(),
            ));
        }
        if let Some(range) = w.uid_range {
            match range[..] {
                [min, max] if min <= max => out.push(Condition::UidRange(min, max)),
                _ => self.error(
                    &sub("uid_range"),
                    format!("{what}: uid_range must be [min, max] with min <= max"),
                ),
            }
        }
        if let Some(has) = w.has_uid {
            out.push(Condition::HasUid(has));
        }
        if let Some(tier) = w.tier {
            match Tier::parse(&tier) {
                Some(t) => out.push(Condition::Tier(t)),
                None => self.error(
                    &sub("tier"),
                    format!("{what}: tier \"{tier}\" is neither paid nor trial"),
                ),
            }
        }
        if let Some(internal) = w.internal {
            out.push(Condition::Internal(internal));
        }
        if let Some(channel) = w.channel {
            let at = sub("channel");
            match channel {
                serde_yaml::Value::String(any) if any == "any" => {
                    out.push(Condition::Channel(None))
                }
                other => match serde_yaml::from_value::<OneOrMany<String>>(other) {
                    Ok(names) => {
                        let mut ids = Vec::new();
                        for name in &names.0 {
                            match self.version_names.get(name) {
                                Some(id) => ids.push(*id),
                                None => self.error(
                                    &at,
                                    format!("{what}: channel names unknown version \"{name}\""),
                                ),
                            }
                        }
                        out.push(Condition::Channel(Some(ids)));
                    }
                    Err(_) => self.error(
                        &at,
                        format!("{what}: channel must be any or a list of versions"),
                    ),
                },
            }
        }
        out
    }

    fn goals(&mut self, raw: Vec<(At, serde_yaml::Value)>) -> Vec<Goal> {
        let mut goals = Vec::new();
        let mut seen = HashSet::new();
        for (at, value) in raw {
            let Some(g) = self.parse::<RawGoal>(&at, &format!("goal #{}", goals.len() + 1), value)
            else {
                continue;
            };
            let what = format!("goal \"{}\"", g.name);
            if !is_rule_name(&g.name) {
                self.error(
                    &at,
                    format!("{what}: names may only use letters, digits, '-', '_' and '.'"),
                );
            }
            if !seen.insert(g.name.clone()) {
                self.error(&at, format!("{what} is defined twice"));
            }
            let when_at = At {
                path: format!("{}.when", at.path),
                ..at.clone()
            };
            let conditions = self.conditions(&when_at, &what, g.when);
            let mut status = StatusMatch {
                classes: 0,
                codes: Vec::new(),
            };
            let texts = g
                .status
                .map(|s| s.0)
                .unwrap_or_else(|| vec![Text("2xx".into())]);
            for t in texts {
                let t = t.0.to_ascii_lowercase();
                match (
                    t.strip_suffix("xx").map(|c| c.parse::<u8>()),
                    t.parse::<u16>(),
                ) {
                    (Some(Ok(class @ 1..=5)), _) => status.classes |= 1 << class,
                    (None, Ok(code @ 100..=599)) => status.codes.push(code),
                    _ => self.error(
                        &at,
                        format!(
                            "{what}: status \"{t}\" is not a code like 201 or a class like 2xx"
                        ),
                    ),
                }
            }
            if goals.len() == MAX_GOALS {
                self.error(
                    &at,
                    format!("{what}: at most {MAX_GOALS} goals are supported"),
                );
                continue;
            }
            goals.push(Goal {
                name: Arc::from(g.name.as_str()),
                conditions,
                status,
            });
        }
        goals
    }
}

fn value_match(values: OneOrMany<String>) -> ValueMatch {
    if values.0.iter().any(|v| v == "*") {
        ValueMatch::Present
    } else {
        ValueMatch::AnyOf(values.0.into_iter().map(Into::into).collect())
    }
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A checked name as a header value. Names are checked by [`is_name`] or [`is_rule_name`]
/// first, and a set with an error is never served, so the fallback is never sent.
fn header_value(name: &str) -> http::HeaderValue {
    http::HeaderValue::from_str(name).unwrap_or(http::HeaderValue::from_static("invalid"))
}

fn is_rule_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Resolves `ip:port` directly and `host:port` with the system resolver, at compile time
/// (never on the request path).
fn resolve_peer(peer: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(addr) = peer.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    if peer
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .is_none()
    {
        return Err("is not host:port".into());
    }
    match peer.to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                Err("resolves to no address".into())
            } else {
                Ok(addrs)
            }
        }
        Err(e) => Err(format!("cannot be resolved: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::testing::diagnostics;

    const HEAD: &str = "versions: { stable: {}, canary: {} }\ndefault: stable\nservices:\n  web:\n    hosts: [\"*\"]\n    groups: { stable: { peers: [\"127.0.0.1:1\"] } }\n";

    fn with_rules(rules: &str) -> Vec<String> {
        diagnostics(&format!("{HEAD}rules:\n{rules}"))
    }

    #[test]
    fn channel_and_address_settings() {
        let model = crate::rules::testing::model(&format!(
            "{HEAD}channels: {{ cookie: gg_ch, max_age: 7d, domain: .example.com }}\naddress_api: {{ ttl: 30s }}\n\
             rules:\n  - {{ name: c, when: {{ channel: [canary] }}, version: $channel }}\n  - {{ name: s, split: {{ by: random, sticky: true, weights: {{ canary: 1 }} }} }}\n"
        ));
        let rules = &model.rules;
        assert!(rules.channel_page);
        assert_eq!(&*rules.channels.path, "/.canary-deployment");
        assert_eq!(&*rules.channels.cookie, "gg_ch");
        assert_eq!(rules.channels.max_age, Duration::from_secs(7 * 86_400));
        let api = rules.address_api.as_ref().unwrap();
        assert_eq!(
            (&*api.path, api.ttl),
            ("/.graygate/address", Duration::from_secs(30))
        );
        assert!(matches!(rules.rules[0].action, Action::Channel));
        assert!(matches!(&rules.rules[1].action, Action::Split(s) if s.sticky));
        assert_eq!(
            diagnostics(&format!(
                "{HEAD}channels: {{ path: page, cookie: \"a b\", domain: localhost }}\nrules:\n  - {{ name: c, when: {{ channel: [nightly] }}, version: canary }}\n"
            )),
            vec![
                "rules.yaml:7: error: channels.path: \"page\" must start with /",
                "rules.yaml:7: error: channels.cookie: \"a b\" is not a cookie name",
                "rules.yaml:7: error: channels.domain: \"localhost\" is not a domain like .example.com",
                "rules.yaml:9: error: rule \"c\": channel names unknown version \"nightly\"",
            ]
        );
    }

    #[test]
    fn missing_default_and_default_group() {
        assert_eq!(
            diagnostics("versions: { stable: {} }\n"),
            vec!["rules.yaml: error: default: missing; name the version that serves when no rule decides"]
        );
        assert_eq!(
            diagnostics("versions: { stable: {}, canary: {} }\ndefault: stable\nservices:\n  web:\n    hosts: [\"*\"]\n    groups:\n      canary: { peers: [\"127.0.0.1:1\"] }\n"),
            vec!["rules.yaml:6: error: service \"web\": no group for the default version \"stable\""]
        );
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
                "rules.yaml:8: error: rule \"none\": needs exactly one action: version or split",
                "rules.yaml:9: error: rule \"both\": needs exactly one action: version or split",
            ]
        );
    }

    #[test]
    fn overlapping_services_are_rejected() {
        let yaml = "versions: { stable: {} }\ndefault: stable\nservices:\n  a:\n    hosts: [www.example.com]\n    groups: { stable: { peers: [\"127.0.0.1:1\"] } }\n  b:\n    hosts: [WWW.example.com]\n    groups: { stable: { peers: [\"127.0.0.1:2\"] } }\n";
        assert_eq!(
            diagnostics(yaml),
            vec!["rules.yaml:8: error: service \"b\": host \"www.example.com\" with path_prefix \"/\" is already served by service \"a\""]
        );
    }

    #[test]
    fn unknown_top_level_key_and_bad_yaml_have_lines() {
        assert_eq!(
            diagnostics(&format!("{HEAD}rulez: []\n")),
            vec!["rules.yaml:7: error: unknown field `rulez`, expected one of `versions`, `default`, `identity`, `assignments`, `services`, `rules`, `goals`, `channels`, `address_api`"]
        );
        let bad = diagnostics("versions: { stable: {}\ndefault: stable\n");
        assert_eq!(bad.len(), 1);
        assert!(bad[0].starts_with("rules.yaml:2: error: "), "{bad:?}");
    }

    #[test]
    fn names_defined_twice_across_files() {
        let sources = [
            RuleSource { path: "a.yaml".into(), text: HEAD.into() },
            RuleSource { path: "b.yaml".into(), text: "default: canary\nservices:\n  web:\n    hosts: [\"*\"]\n    groups: { stable: { peers: [\"127.0.0.1:1\"] } }\n".into() },
        ];
        let errors: Vec<String> = compile(&sources)
            .unwrap_err()
            .items()
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(
            errors,
            vec![
                "b.yaml:1: error: default is defined twice (first at a.yaml:2)",
                "b.yaml:3: error: service \"web\" is defined twice (first at a.yaml:4)",
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
