//! The mobile address API: which addresses a uid's app should use, with a TTL.
//!
//! `GET {address_api.path}?service=api` with the usual uid sources answers the public
//! addresses of the group that would serve this user (the same decision as the proxy, the
//! default version's group when the decided one is missing or has no healthy peer), with
//! `Cache-Control: max-age` so that apps re-check instead of needing a restart.

use pingora::proxy::Session;
use serde_json::json;

use super::{form_pairs, respond, respond_error, Visitor};
use crate::rules::model::AddressApiSettings;
use crate::snapshot::Snapshot;

/// Answers one address API request for `visitor`.
pub async fn address_api(
    session: &mut Session,
    snapshot: &Snapshot,
    settings: &AddressApiSettings,
    visitor: &Visitor,
) -> pingora::Result<()> {
    let query = session.req_header().uri.query().unwrap_or("").to_string();
    let Some(service_name) = form_pairs(&query)
        .into_iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v)
    else {
        return respond_error(session, 400, "the service parameter is required").await;
    };
    let Some(service) = snapshot
        .services
        .services
        .iter()
        .find(|s| *s.name == *service_name)
    else {
        return respond_error(session, 404, "unknown service").await;
    };
    let decision = visitor.decision;
    let rules = &snapshot.rules;
    let healthy = |v| service.group(v).filter(|g| g.pool.has_healthy_peer());
    let (group, fallback) = match healthy(decision.version) {
        Some(g) => (Some(g), false),
        None => (
            healthy(rules.default).or_else(|| service.group(rules.default)),
            decision.version != rules.default,
        ),
    };
    let Some(group) = group else {
        return respond_error(session, 503, "no group serves this service").await;
    };
    let ttl = settings.ttl.as_secs();
    let body = json!({
        "version": &*rules.version(group.version).name,
        "decided": &*rules.version(decision.version).name,
        "fallback": fallback,
        "service": &*service.name,
        "addresses": &*group.public_addresses,
        "ttl_seconds": ttl,
        "rule": decision.rule_name(rules),
        "uid": visitor.uid,
    });
    respond(
        session,
        200,
        "application/json",
        &[("cache-control", format!("max-age={ttl}"))],
        body.to_string(),
    )
    .await
}
