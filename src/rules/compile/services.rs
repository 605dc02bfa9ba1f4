//! The `services` section: host patterns and path prefixes no two services share, one group
//! per known version (the default one included), peers resolved at compile time, the
//! balancing policy, health checks, timeouts, and the protocol and TLS spoken to the peers
//! (a `tls.ca` file is read and parsed here, relative to the rules file).

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;

use super::{is_dotted_name, is_name, push_named, At, Compiler};
use crate::facts::VersionId;
use pingora::tls::x509::X509;
use xxhash_rust::xxh64::xxh64;

use crate::rules::model::{
    CaBundle, GroupConfig, GroupSpec, HealthCheckKind, HealthCheckSpec, HostPattern, LbPolicy,
    ServiceSpec, UpstreamProtocol, UpstreamTimeouts, UpstreamTls, Version,
};
use crate::rules::raw::{RawGroup, RawHealthCheck, RawService, RawTimeouts, RawUpstreamTls};

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
                max_body_size,
            } = s;
            let max_body_size = max_body_size.and_then(|value| {
                let text = match value {
                    serde_yaml::Value::Number(n) => n.to_string(),
                    serde_yaml::Value::String(s) => s,
                    _ => String::from("?"),
                };
                match crate::config::parse_size(&text) {
                    Ok(0) => {
                        self.error(
                            &at.child("max_body_size"),
                            format!("{what}: max_body_size must be above 0"),
                        );
                        None
                    }
                    Ok(n) => Some(n),
                    Err(why) => {
                        self.error(
                            &at.child("max_body_size"),
                            format!("{what}: max_body_size {why}"),
                        );
                        None
                    }
                }
            });
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
                max_body_size,
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
            protocol,
            tls,
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
        let protocol = match protocol.as_deref() {
            None | Some("http1") => UpstreamProtocol::Http1,
            Some("h2") => UpstreamProtocol::H2,
            Some("h2c") => UpstreamProtocol::H2c,
            Some(other) => {
                self.error(
                    &at.child("protocol"),
                    format!("{what}: protocol \"{other}\" is none of http1, h2 and h2c"),
                );
                UpstreamProtocol::Http1
            }
        };
        let tls_at = at.child("tls");
        let tls = tls
            .and_then(|t| self.parse::<RawUpstreamTls>(&tls_at, &format!("{what}: tls"), t))
            .and_then(|t| self.upstream_tls(&tls_at, what, t));
        match (protocol, &tls) {
            (UpstreamProtocol::H2, None) => self.error(
                &at.child("protocol"),
                format!("{what}: protocol h2 needs tls (HTTP/2 without TLS is h2c)"),
            ),
            (UpstreamProtocol::H2c, Some(_)) => self.error(
                &at.child("protocol"),
                format!("{what}: protocol h2c is HTTP/2 without TLS: drop tls, or use protocol h2"),
            ),
            _ => {}
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let public_addresses = public_addresses
            .unwrap_or_else(|| peers.iter().map(|p| format!("{scheme}://{p}")).collect());
        Some(GroupConfig {
            version,
            spec: GroupSpec {
                peers,
                lb,
                health_check,
                timeouts,
                protocol,
                tls,
            },
            public_addresses,
        })
    }

    /// `tls: { sni, verify, ca }`: the server name, whether certificates are checked, and
    /// the roots they are checked against (a PEM file read now, relative to the rules file).
    fn upstream_tls(&mut self, at: &At, what: &str, raw: RawUpstreamTls) -> Option<UpstreamTls> {
        let RawUpstreamTls { sni, verify, ca } = raw;
        let sni = sni.unwrap_or_default().trim().to_ascii_lowercase();
        let verify = verify.unwrap_or(true);
        let mut valid = true;
        if !sni.is_empty() && (!is_dotted_name(&sni) || sni.parse::<std::net::IpAddr>().is_ok()) {
            self.error(
                &at.child("sni"),
                format!("{what}: tls.sni \"{sni}\" is not a host name"),
            );
            valid = false;
        }
        if sni.is_empty() && verify {
            // Pingora's connector checks nothing when it sends no SNI
            // (connectors/tls/boringssl_openssl: "disable verification if sni does not exist"):
            // a certificate check without a name would silently not happen.
            self.error(
                at,
                format!("{what}: tls.verify needs tls.sni, the name the peers' certificates are checked against (or set verify: false)"),
            );
            valid = false;
        }
        let ca = match ca {
            Some(path) => {
                if !verify {
                    self.warning(
                        &at.child("ca"),
                        format!("{what}: tls.ca is not used with verify: false"),
                    );
                }
                match self.ca_bundle(at, &path) {
                    Ok(bundle) => Some(bundle),
                    Err(why) => {
                        self.error(&at.child("ca"), format!("{what}: tls.ca {why}"));
                        valid = false;
                        None
                    }
                }
            }
            None => None,
        };
        valid.then(|| UpstreamTls {
            sni: sni.into(),
            verify,
            ca,
        })
    }

    /// Reads and parses the PEM certificates of `text`, a path relative to the directory of
    /// the rules file `at` is in. Its bytes join the content hash, so a reload notices a new
    /// CA file even when no rules file changed.
    fn ca_bundle(&mut self, at: &At, text: &str) -> Result<CaBundle, String> {
        let written = std::path::Path::new(text);
        let path = match self.files[at.file].path.parent() {
            Some(dir) if written.is_relative() => dir.join(written),
            _ => written.to_path_buf(),
        };
        let shown = path.display();
        let pem = std::fs::read(&path).map_err(|e| format!("\"{shown}\" cannot be read: {e}"))?;
        let certs = X509::stack_from_pem(&pem)
            .map_err(|e| format!("\"{shown}\" is not PEM certificates: {e}"))?;
        if certs.is_empty() {
            return Err(format!("\"{shown}\" holds no PEM certificate"));
        }
        let written = written.to_string_lossy();
        push_named(&mut self.included, &written, &pem);
        self.named.push((written.into_owned(), path.clone()));
        Ok(CaBundle {
            content_hash: xxh64(&pem, 0),
            path,
            certs: Arc::new(certs.into_boxed_slice()),
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

    #[test]
    fn a_service_body_limit_is_a_size() {
        let yaml = |limit: &str| {
            format!("versions: {{ stable: {{}} }}\ndefault: stable\nservices:\n  up:\n    hosts: [\"*\"]\n    max_body_size: {limit}\n    groups: {{ stable: {{ peers: [\"127.0.0.1:1\"] }} }}\n")
        };
        assert!(diagnostics(&yaml("2GB")).is_empty());
        assert!(diagnostics(&yaml("4096")).is_empty());
        assert_eq!(
            diagnostics(&yaml("huge")),
            vec!["rules.yaml:6: error: service \"up\": max_body_size \"huge\" is not a size like 512KB, 100MB or 1GB"]
        );
        assert_eq!(
            diagnostics(&yaml("0")),
            vec!["rules.yaml:6: error: service \"up\": max_body_size must be above 0"]
        );
    }
}

#[cfg(test)]
mod upstream_tests {
    use std::path::Path;

    use openssl::asn1::Asn1Time;
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::x509::{X509NameBuilder, X509};

    use crate::rules::compile::{compile, LoadedRules, RuleSource};
    use crate::rules::model::{Listeners, UpstreamProtocol};
    use crate::rules::testing::diagnostics;

    /// A self-signed certificate in PEM, enough for a `tls.ca` file.
    fn ca_pem(name: &str) -> Vec<u8> {
        let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let mut subject = X509NameBuilder::new().unwrap();
        subject.append_entry_by_text("CN", name).unwrap();
        let subject = subject.build();
        let mut cert = X509::builder().unwrap();
        cert.set_version(2).unwrap();
        cert.set_subject_name(&subject).unwrap();
        cert.set_issuer_name(&subject).unwrap();
        cert.set_pubkey(&key).unwrap();
        cert.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        cert.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        cert.sign(&key, MessageDigest::sha256()).unwrap();
        cert.build().to_pem().unwrap()
    }

    fn group_yaml(group: &str) -> String {
        format!("versions: {{ stable: {{}} }}\ndefault: stable\nservices:\n  web:\n    hosts: [\"*\"]\n    groups:\n      stable: {group}\n")
    }

    fn compile_in(dir: &Path, yaml: &str) -> Result<LoadedRules, Vec<String>> {
        let path = dir.join("rules.yaml");
        std::fs::write(&path, yaml).unwrap();
        compile(
            &[RuleSource {
                path: path.clone(),
                text: yaml.into(),
            }],
            &Listeners::default(),
        )
        .map_err(|d| {
            d.items()
                .iter()
                .map(|d| d.to_string().replace(&format!("{}", dir.display()), "DIR"))
                .collect()
        })
    }

    #[test]
    fn protocol_and_tls_errors_name_the_group_and_line() {
        let cases = [
            (
                "{ peers: [\"127.0.0.1:1\"], protocol: h3 }",
                "rules.yaml:7: error: service \"web\" group \"stable\": protocol \"h3\" is none of http1, h2 and h2c",
            ),
            (
                "{ peers: [\"127.0.0.1:1\"], protocol: h2 }",
                "rules.yaml:7: error: service \"web\" group \"stable\": protocol h2 needs tls (HTTP/2 without TLS is h2c)",
            ),
            (
                "{ peers: [\"127.0.0.1:1\"], protocol: h2c, tls: { sni: api.internal } }",
                "rules.yaml:7: error: service \"web\" group \"stable\": protocol h2c is HTTP/2 without TLS: drop tls, or use protocol h2",
            ),
            (
                "{ peers: [\"127.0.0.1:1\"], tls: {} }",
                "rules.yaml:7: error: service \"web\" group \"stable\": tls.verify needs tls.sni, the name the peers' certificates are checked against (or set verify: false)",
            ),
            (
                "{ peers: [\"127.0.0.1:1\"], tls: { sni: 10.0.0.1, verify: false } }",
                "rules.yaml:7: error: service \"web\" group \"stable\": tls.sni \"10.0.0.1\" is not a host name",
            ),
            (
                "{ peers: [\"127.0.0.1:1\"], tls: { sni: \"a b\" } }",
                "rules.yaml:7: error: service \"web\" group \"stable\": tls.sni \"a b\" is not a host name",
            ),
            (
                "{ peers: [\"127.0.0.1:1\"], tls: { sni: a, verify: 1 } }",
                "rules.yaml:7: error: service \"web\" group \"stable\": tls: invalid type: integer `1`, expected a boolean",
            ),
            (
                "{ peers: [\"127.0.0.1:1\"], tls: { sni: a, cert: x } }",
                "rules.yaml:7: error: service \"web\" group \"stable\": tls: unknown field `cert`, expected one of `sni`, `verify`, `ca`",
            ),
        ];
        for (group, want) in cases {
            assert_eq!(diagnostics(&group_yaml(group)), vec![want], "{group}");
        }
    }

    #[test]
    fn a_ca_file_that_is_missing_or_not_pem_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("junk.pem"), "not a certificate\n").unwrap();
        std::fs::write(
            dir.path().join("broken.pem"),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let group = |ca: &str| {
            group_yaml(&format!(
                "{{ peers: [\"127.0.0.1:1\"], tls: {{ sni: api.internal, ca: {ca} }} }}"
            ))
        };
        let missing = compile_in(dir.path(), &group("tls/none.pem")).unwrap_err();
        assert_eq!(missing.len(), 1);
        assert!(
            missing[0].starts_with("DIR/rules.yaml:7: error: service \"web\" group \"stable\": tls.ca \"DIR/tls/none.pem\" cannot be read: "),
            "{missing:?}"
        );
        let junk = compile_in(dir.path(), &group("junk.pem")).unwrap_err();
        assert_eq!(
            junk,
            vec!["DIR/rules.yaml:7: error: service \"web\" group \"stable\": tls.ca \"DIR/junk.pem\" holds no PEM certificate"]
        );
        let broken = compile_in(dir.path(), &group("broken.pem")).unwrap_err();
        assert_eq!(broken.len(), 1);
        assert!(
            broken[0].starts_with("DIR/rules.yaml:7: error: service \"web\" group \"stable\": tls.ca \"DIR/broken.pem\" is not PEM certificates: "),
            "{broken:?}"
        );
    }

    #[test]
    fn a_ca_file_is_read_relative_to_the_rules_file_and_joins_the_content_hash() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tls")).unwrap();
        std::fs::write(dir.path().join("tls/ca.pem"), ca_pem("first")).unwrap();
        let yaml = group_yaml(
            "{ peers: [\"127.0.0.1:1\"], protocol: h2, tls: { sni: API.internal, ca: tls/ca.pem } }",
        );
        let first = compile_in(dir.path(), &yaml).unwrap();
        let spec = &first.model.services[0].groups[0].spec;
        assert_eq!(spec.protocol, UpstreamProtocol::H2);
        let tls = spec.tls.as_ref().unwrap();
        assert_eq!((&*tls.sni, tls.verify), ("api.internal", true));
        let ca = tls.ca.as_ref().unwrap();
        assert_eq!(ca.path, dir.path().join("tls/ca.pem"));
        assert_eq!(ca.certs.len(), 1);
        assert_eq!(
            first.model.services[0].groups[0].public_addresses,
            vec!["https://127.0.0.1:1"]
        );
        // The same files again: the same hash, and the origin finds them unchanged without
        // compiling. A new CA alone: a new hash and a new spec, and the origin sees it.
        let again = compile_in(dir.path(), &yaml).unwrap();
        assert_eq!(again.origin, first.origin);
        let sources = crate::rules::read(&dir.path().join("rules.yaml")).unwrap();
        assert!(first.origin.is_unchanged_in(&sources));
        std::fs::write(dir.path().join("tls/ca.pem"), ca_pem("second")).unwrap();
        assert!(!first.origin.is_unchanged_in(&sources));
        let renewed = compile_in(dir.path(), &yaml).unwrap();
        assert_ne!(renewed.origin.content_hash, first.origin.content_hash);
        assert_ne!(renewed.model.services[0].groups[0].spec, *spec);
        std::fs::remove_file(dir.path().join("tls/ca.pem")).unwrap();
        assert!(!renewed.origin.is_unchanged_in(&sources), "a CA file gone");
    }

    #[test]
    fn a_ca_without_verification_is_a_warning_and_defaults_are_http1_without_tls() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_pem("ca")).unwrap();
        let loaded = compile_in(
            dir.path(),
            &group_yaml("{ peers: [\"127.0.0.1:1\"], tls: { verify: false, ca: ca.pem } }"),
        )
        .unwrap();
        let warnings: Vec<String> = loaded
            .warnings
            .items()
            .iter()
            .map(|d| {
                d.to_string()
                    .replace(&format!("{}", dir.path().display()), "DIR")
            })
            .collect();
        assert_eq!(
            warnings,
            vec!["DIR/rules.yaml:7: warning: service \"web\" group \"stable\": tls.ca is not used with verify: false"]
        );
        let plain = compile_in(dir.path(), &group_yaml("{ peers: [\"127.0.0.1:1\"] }")).unwrap();
        let spec = &plain.model.services[0].groups[0].spec;
        assert_eq!((spec.protocol, &spec.tls), (UpstreamProtocol::Http1, &None));
        let h2c = compile_in(
            dir.path(),
            &group_yaml("{ peers: [\"127.0.0.1:1\"], protocol: h2c }"),
        )
        .unwrap();
        assert_eq!(
            h2c.model.services[0].groups[0].spec.protocol,
            UpstreamProtocol::H2c
        );
    }
}
