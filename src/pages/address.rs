//! The mobile address API: which addresses a uid's app should use, with a TTL.
//!
//! `GET {address_api.path}?service=api` with the usual uid sources answers the public
//! addresses of the group that would serve this user: the same decision as the proxy and the
//! same serving policy (`Service::serving_group`), with `Cache-Control: max-age` so that apps
//! re-check instead of needing a restart.

use http::header::CACHE_CONTROL;
use serde_json::json;

use super::Visitor;
use crate::rules::model::AddressApiSettings;
use crate::state::Snapshot;
use crate::web::{form_field, form_pairs, Reply};

/// Answers one address API request (`query`: the raw query string) for `visitor`.
pub fn address_api(
    snapshot: &Snapshot,
    settings: &AddressApiSettings,
    query: Option<&str>,
    visitor: &Visitor,
) -> Reply {
    let pairs = form_pairs(query.unwrap_or(""));
    let Some(service_name) = form_field(&pairs, "service") else {
        return Reply::error(400, "the service parameter is required");
    };
    let Some(service) = snapshot
        .services
        .services
        .iter()
        .find(|s| *s.name == *service_name)
    else {
        return Reply::error(404, "unknown service");
    };
    let decision = visitor.decision;
    let rules = &snapshot.rules;
    let Some(serving) = service.serving_group(
        decision.version,
        None,
        rules.default,
        &visitor.balance_key,
        &[],
    ) else {
        return Reply::error(503, "no group serves this service");
    };
    let ttl = settings.ttl.as_secs();
    let body = json!({
        "version": &*serving.group.version_name,
        "decided": &*rules.version(decision.version).name,
        "fallback": serving.fallback.is_some(),
        "fallback_reason": serving.fallback.map(|r| r.as_str()),
        "service": &*service.name,
        "addresses": &*serving.group.public_addresses,
        "ttl_seconds": ttl,
        "rule": decision.rule_name(rules),
        "uid": visitor.uid,
    });
    Reply::json(200, &body).with_header(CACHE_CONTROL, &format!("max-age={ttl}"))
}
