//! The `services` section: host patterns and path prefixes no two services share, one group
//! per known version (the default one included), peers resolved at compile time, the
//! balancing policy, health checks and timeouts.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;

use super::{is_dotted_name, is_name, At, Compiler};
use crate::facts::VersionId;
use crate::rules::model::{
    GroupConfig, GroupSpec, HealthCheckKind, HealthCheckSpec, HostPattern, LbPolicy, ServiceSpec,
    UpstreamTimeouts, Version,
};
use crate::rules::raw::{RawGroup, RawHealthCheck, RawService, RawTimeouts};

impl Compiler {
    /// The services; each must have a group for the default version, when it is known.
    pub(super) fn services(
        &mut self,
        raw: IndexMap<String, (At, serde_yaml::Value)>,
        default: Option<VersionId>,
        versions: &[Version],
    ) -> Vec<ServiceSpec> {
        let mut services = Vec::new();
        let mut claimed: HashMap<(HostPattern, String), String> = HashMap::new();
        for (name, (at, value)) in raw {
            let what = format!("service \"{name}\"");
            if !is_name(&name) {
                self.error(
                    &at,
                    format!("{what}: names may only use letters, digits, '-' and '_'"),
                );
            }
            let Some(s) = self.parse::<RawService>(&at, &what, value) else {
                continue;
            };
            let RawService {
                hosts,
                path_prefix,
                groups: raw_groups,
            } = s;
            let hosts_at = at.child("hosts");
            if hosts.0.is_empty() {
                self.error(&hosts_at, format!("{what}: hosts is empty"));
            }
            let hosts: Vec<HostPattern> = hosts
                .0
                .iter()
                .filter_map(|h| self.host_pattern(&hosts_at, &format!("{what}: hosts"), h))
                .collect();
            let prefix = path_prefix.unwrap_or_else(|| "/".into());
            if !prefix.starts_with('/') {
                self.error(
                    &at.child("path_prefix"),
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
            let groups_at = at.child("groups");
            let mut groups = Vec::new();
            for (version, value) in &raw_groups {
                let group_at = groups_at.child(version);
                let gwhat = format!("{what} group \"{version}\"");
                let Some(id) = self.version_names.get(version).copied() else {
                    self.error(
                        &group_at,
                        format!("{what}: group for unknown version \"{version}\""),
                    );
                    continue;
                };
                if let Some(group) = self.group(&group_at, &gwhat, id, value.clone()) {
                    groups.push(group);
                }
            }
            if let Some(default) = default {
                let default_name = &versions[default.index()].name;
                if !raw_groups.is_empty()
                    && !groups.iter().any(|g| g.version == default)
                    && !raw_groups.contains_key(&**default_name)
                {
                    self.error(
                        &groups_at,
                        format!("{what}: no group for the default version \"{default_name}\""),
                    );
                }
                if raw_groups.is_empty() {
                    self.error(&at, format!("{what}: no groups"));
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

    /// The group of `version` in one service.
    fn group(
        &mut self,
        at: &At,
        what: &str,
        version: VersionId,
        value: serde_yaml::Value,
    ) -> Option<GroupConfig> {
        let RawGroup {
            peers: peer_texts,
            lb,
            health_check,
            public_addresses,
            timeouts,
        } = self.parse::<RawGroup>(at, what, value)?;
        if peer_texts.is_empty() {
            self.error(at, format!("{what}: peers is empty"));
        }
        let peers_at = at.child("peers");
        let mut peers = Vec::new();
        for (i, peer) in peer_texts.iter().enumerate() {
            match resolve_peer(peer) {
                Ok(addrs) => {
                    for addr in addrs {
                        if !peers.contains(&addr) {
                            peers.push(addr);
                        }
                    }
                }
                Err(why) => self.error(&peers_at.item(i), format!("{what}: peer \"{peer}\" {why}")),
            }
        }
        let lb = match lb.as_deref() {
            None | Some("round_robin") => LbPolicy::RoundRobin,
            Some("consistent") => LbPolicy::Consistent,
            Some(other) => {
                self.error(
                    &at.child("lb"),
                    format!("{what}: lb \"{other}\" is neither round_robin nor consistent"),
                );
                LbPolicy::RoundRobin
            }
        };
        let health_check =
            health_check.and_then(|h| self.health_check(&at.child("health_check"), what, h));
        let timeouts = upstream_timeouts(timeouts.unwrap_or_default());
        let public_addresses = public_addresses
            .unwrap_or_else(|| peers.iter().map(|p| format!("http://{p}")).collect());
        Some(GroupConfig {
            version,
            spec: GroupSpec {
                peers,
                lb,
                health_check,
                timeouts,
            },
            public_addresses,
        })
    }

    fn health_check(
        &mut self,
        at: &At,
        what: &str,
        raw: RawHealthCheck,
    ) -> Option<HealthCheckSpec> {
        let RawHealthCheck {
            kind,
            path,
            host,
            interval,
            timeout,
            rise,
            fall,
        } = raw;
        let kind = match kind.as_str() {
            "tcp" => HealthCheckKind::Tcp,
            "http" => {
                let path = path.unwrap_or_else(|| "/".into());
                if !path.starts_with('/') {
                    self.error(
                        at,
                        format!("{what}: health_check path \"{path}\" must start with /"),
                    );
                }
                HealthCheckKind::Http {
                    path,
                    host: host.unwrap_or_else(|| "localhost".into()),
                }
            }
            other => {
                self.error(
                    at,
                    format!("{what}: health_check type \"{other}\" is neither http nor tcp"),
                );
                return None;
            }
        };
        let interval = interval.map(|d| d.0).unwrap_or(Duration::from_secs(2));
        let timeout = timeout.map(|d| d.0).unwrap_or(Duration::from_secs(1));
        if interval.is_zero() || timeout.is_zero() {
            self.error(
                at,
                format!("{what}: health_check interval and timeout must be above 0"),
            );
        }
        let (rise, fall) = (rise.unwrap_or(1), fall.unwrap_or(1));
        if rise == 0 || fall == 0 {
            self.error(
                at,
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
    }

    /// `*`, `*.suffix` or a host name, matched without regard to case.
    pub(super) fn host_pattern(&mut self, at: &At, what: &str, text: &str) -> Option<HostPattern> {
        let text = text.trim().to_ascii_lowercase();
        let pattern = if text == "*" {
            Some(HostPattern::Any)
        } else if let Some(suffix) = text.strip_prefix("*.") {
            is_dotted_name(suffix).then(|| HostPattern::Suffix(format!(".{suffix}").into()))
        } else {
            is_dotted_name(&text).then(|| HostPattern::Exact(text.clone().into()))
        };
        if pattern.is_none() {
            self.error(
                at,
                format!("{what}: \"{text}\" is not a host, \"*.suffix\" or \"*\""),
            );
        }
        pattern
    }
}

/// The group's timeouts, each left out one taking its default.
fn upstream_timeouts(raw: RawTimeouts) -> UpstreamTimeouts {
    let RawTimeouts {
        connect,
        read,
        write,
        idle,
    } = raw;
    let defaults = UpstreamTimeouts::default();
    UpstreamTimeouts {
        connect: connect.map(|d| d.0).unwrap_or(defaults.connect),
        read: read.map(|d| d.0).unwrap_or(defaults.read),
        write: write.map(|d| d.0).unwrap_or(defaults.write),
        idle: idle.map(|d| d.0).unwrap_or(defaults.idle),
    }
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
    use crate::rules::testing::diagnostics;

    #[test]
    fn overlapping_services_are_rejected() {
        let yaml = "versions: { stable: {} }\ndefault: stable\nservices:\n  a:\n    hosts: [www.example.com]\n    groups: { stable: { peers: [\"127.0.0.1:1\"] } }\n  b:\n    hosts: [WWW.example.com]\n    groups: { stable: { peers: [\"127.0.0.1:2\"] } }\n";
        assert_eq!(
            diagnostics(yaml),
            vec!["rules.yaml:8: error: service \"b\": host \"www.example.com\" with path_prefix \"/\" is already served by service \"a\""]
        );
    }
}
