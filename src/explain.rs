//! Explaining a decision for a described request, without serving it.
//!
//! `graygate explain` builds the request an operator describes (uid, host, path, cookies,
//! client address, listener), runs the same filter chain and rules as the proxy, and reports every
//! rule's outcome, the decision, and the service and group that would serve it.

use std::fmt;
use std::net::IpAddr;

use http::header::{HeaderName, HeaderValue, COOKIE};
use http::{HeaderMap, Method};
use serde::Serialize;

use crate::channels::ChannelKey;
use crate::facts::identity::Source;
use crate::facts::{Facts, ListenerId, RequestView};
use crate::rules::decide::{Reason, Step};
use crate::state::Snapshot;
use crate::store::Lookups;
use crate::upstream::balance_key;

/// A request described by an operator.
#[derive(Debug, Clone, Default)]
pub struct RequestDescription {
    /// The uid; placed in the first configured uid source.
    pub uid: Option<String>,
    /// The host.
    pub host: String,
    /// The path, optionally with `?query`.
    pub path: String,
    /// The method (GET when empty).
    pub method: String,
    /// Cookie headers, `k=v; k2=v2`.
    pub cookies: Vec<String>,
    /// Other headers.
    pub headers: Vec<(String, String)>,
    /// The client address.
    pub ip: Option<IpAddr>,
    /// The name of the listener it arrives on (and so its scheme); the first one when `None`.
    pub listener: Option<String>,
}

/// Peers of the group that would serve.
#[derive(Debug, Clone, Serialize)]
pub struct PeerState {
    /// `ip:port`.
    pub addr: String,
    /// In rotation.
    pub healthy: bool,
}

/// The full explanation of one decision.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The rules generation used.
    pub generation: u64,
    /// The uid found, if any.
    pub uid: Option<String>,
    /// `paid` or `trial`.
    pub tier: &'static str,
    /// Internal user.
    pub internal: bool,
    /// Every rule's outcome.
    pub steps: Vec<Step>,
    /// The decided version.
    pub version: String,
    /// The deciding rule, `override` or `default`.
    pub rule: String,
    /// The emergency override's reason, when the override decided.
    #[serde(rename = "override", skip_serializing_if = "Option::is_none")]
    pub override_reason: Option<String>,
    /// The service matched, if any.
    pub service: Option<String>,
    /// The version whose group serves (the default after a fallback), by the same policy as
    /// the proxy (`Service::serving_group`).
    pub group: Option<String>,
    /// Why the group is not the decided version's: `no_group`, `unhealthy`, `withdrawn`.
    pub fallback: Option<&'static str>,
    /// The peer the request would be sent to, when one is healthy.
    pub peer: Option<String>,
    /// That group's peers.
    pub peers: Vec<PeerState>,
}

/// Why a description could not be turned into a request.
#[derive(Debug, thiserror::Error)]
pub enum DescriptionError {
    /// A header name or value is not valid HTTP.
    #[error("invalid header {0:?}")]
    Header(String),
    /// The method is not an HTTP method.
    #[error("invalid method {0:?}")]
    Method(String),
    /// No listener has this name.
    #[error("no listener is named {0:?}; the listeners are {1}")]
    Listener(String, String),
}

/// Explains how `snapshot` routes the described request.
pub async fn explain_request(
    snapshot: &Snapshot,
    lookups: &Lookups,
    channel_key: &ChannelKey,
    desc: &RequestDescription,
) -> Result<Report, DescriptionError> {
    let rules = &snapshot.rules;
    let mut headers = HeaderMap::new();
    let (path, query) = match desc.path.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (desc.path.clone(), None),
    };
    let mut query = query;
    for cookie in &desc.cookies {
        let value =
            HeaderValue::from_str(cookie).map_err(|_| DescriptionError::Header(cookie.clone()))?;
        headers.append(COOKIE, value);
    }
    for (name, value) in &desc.headers {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| DescriptionError::Header(name.clone()))?;
        let v =
            HeaderValue::from_str(value).map_err(|_| DescriptionError::Header(value.clone()))?;
        headers.append(n, v);
    }
    if let (Some(uid), Some(source)) = (&desc.uid, rules.identity.uid.first()) {
        match source {
            Source::Cookie(name) => {
                let value = HeaderValue::from_str(&format!("{name}={uid}"))
                    .map_err(|_| DescriptionError::Header(uid.clone()))?;
                headers.append(COOKIE, value);
            }
            Source::Header(name) => {
                let value = HeaderValue::from_str(uid)
                    .map_err(|_| DescriptionError::Header(uid.clone()))?;
                headers.insert(name.clone(), value);
            }
            Source::Query(name) => {
                let pair = format!("{name}={uid}");
                query = Some(match query {
                    Some(q) if !q.is_empty() => format!("{q}&{pair}"),
                    _ => pair,
                });
            }
        }
    }
    let method = if desc.method.is_empty() {
        Method::GET
    } else {
        Method::from_bytes(desc.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| DescriptionError::Method(desc.method.clone()))?
    };
    let arrival = match &desc.listener {
        Some(name) => rules.listeners.arrival(name).ok_or_else(|| {
            let known = rules.listeners.names().collect::<Vec<_>>().join(", ");
            DescriptionError::Listener(name.clone(), known)
        })?,
        None => rules.listeners.arrival_at(ListenerId::default()),
    };
    let view = RequestView {
        method: &method,
        host: &desc.host,
        path: &path,
        query: query.as_deref(),
        headers: &headers,
        client_ip: desc.ip,
        arrival,
    };
    let mut facts = Facts::gather(&rules.identity, view);
    let uid = facts.uid.as_ref().map(|u| &*u.text);
    facts.channel = channel_key.channel_of(rules, view.cookie(&rules.channels.cookie), uid);
    facts.rollouts = &snapshot.runtime.rollouts;
    facts.override_version = snapshot.runtime.override_version;
    let explanation = lookups.explain(rules, &mut facts).await;
    let decision = explanation.decision;
    let service = snapshot
        .services
        .find(&desc.host, &path)
        .map(|id| &snapshot.services.services[id]);
    let key = balance_key(facts.uid.as_ref().map(|u| &*u.text), desc.ip);
    let withdrawn = snapshot.runtime.withdrawal(&decision);
    let withdrawn_to = lookups.withdrawn_to(rules, withdrawn, &mut facts).await;
    let serving = service
        .and_then(|s| s.serving_group(decision.version, withdrawn_to, rules.default, &key, &[]));
    let group = serving.map(|s| s.group);
    Ok(Report {
        generation: snapshot.generation,
        uid: facts.uid.as_ref().map(|u| u.text.to_string()),
        tier: facts.tier.as_str(),
        internal: facts.internal,
        steps: explanation.steps,
        version: rules.version(decision.version).name.to_string(),
        rule: decision.rule_name(rules).to_string(),
        override_reason: (decision.reason == Reason::Override)
            .then(|| snapshot.runtime.override_reason.clone().unwrap_or_default()),
        service: service.map(|s| s.name.to_string()),
        group: group.map(|g| g.version_name.to_string()),
        fallback: serving.and_then(|s| s.fallback).map(|r| r.as_str()),
        peer: serving.and_then(|s| s.peer).map(|p| p.to_string()),
        peers: group
            .map(|g| {
                g.pool
                    .spec()
                    .peers
                    .iter()
                    .map(|p| PeerState {
                        addr: p.to_string(),
                        healthy: g.pool.is_healthy(*p),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "facts: uid={} tier={} internal={}",
            self.uid.as_deref().unwrap_or("-"),
            self.tier,
            self.internal
        )?;
        if let Some(reason) = &self.override_reason {
            writeln!(
                f,
                "override: every request goes to {} (reason: {reason}); no rule is evaluated",
                self.version
            )?;
        }
        writeln!(f, "rules (generation {}):", self.generation)?;
        crate::rules::decide::write_steps(f, &self.steps)?;
        writeln!(f, "decision: {} (rule {})", self.version, self.rule)?;
        match (&self.service, &self.group) {
            (Some(service), Some(group)) => {
                let peers: Vec<String> = self
                    .peers
                    .iter()
                    .map(|p| format!("{}{}", p.addr, if p.healthy { "" } else { " (unhealthy)" }))
                    .collect();
                let fallback = match self.fallback {
                    Some(reason) => format!(" (fallback: {reason})"),
                    None => String::new(),
                };
                writeln!(
                    f,
                    "service: {service}, group {group}{fallback}: {}",
                    peers.join(", ")
                )
            }
            (Some(service), None) => writeln!(f, "service: {service}, no group"),
            _ => writeln!(f, "service: none matches this host and path (404)"),
        }
    }
}
