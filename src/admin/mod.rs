//! The admin listener: metrics, health, and the token-protected admin API.
//!
//! `GET /metrics` and `GET /-/healthz` are open. Everything else needs
//! `Authorization: Bearer <token>` (the token comes from the environment variable named by
//! `admin.token_env`, compared in constant time) and answers 401 without it. With no token
//! configured the protected endpoints are disabled (403), never open.
//!
//! - `GET /-/rules`: generation, content hash, load time, files and a summary.
//! - `POST /-/reload`: reload the rules now (200 with the generation, 422 with every error).
//! - `GET /-/explain?uid=&host=&path=&ip=&cookie=&method=`: the decision trace as JSON.
//! - `GET|PUT|DELETE /-/assignments/{uid}`: the uid's stored version (Redis when configured,
//!   else the embedded store); `PUT` takes the version name, bare or as `{"version": ...}`.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::channels::ChannelKey;
use crate::explain::{explain_request, RequestDescription};
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::snapshot::{Reloaded, Snapshot};
use crate::store::Lookups;

/// Largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

/// The admin HTTP app.
pub struct AdminApp {
    metrics: Arc<Metrics>,
    reloader: Arc<Reloader>,
    lookups: Arc<Lookups>,
    channel_key: ChannelKey,
    token: Option<String>,
    token_env: String,
}

impl AdminApp {
    /// An admin app; `token` (from `token_env`) guards the API, `None` disables it.
    pub fn new(
        metrics: Arc<Metrics>,
        reloader: Arc<Reloader>,
        lookups: Arc<Lookups>,
        channel_key: ChannelKey,
        token: Option<String>,
        token_env: &str,
    ) -> Self {
        AdminApp {
            metrics,
            reloader,
            lookups,
            channel_key,
            token: token.filter(|t| !t.is_empty()),
            token_env: token_env.to_string(),
        }
    }

    /// `Some(response)` when the request may not use the admin API.
    fn denial(&self, session: &ServerSession) -> Option<Response<Vec<u8>>> {
        let Some(token) = &self.token else {
            return Some(json_response(
                StatusCode::FORBIDDEN,
                json!({ "error": format!("the admin API is disabled: set {} to enable it", self.token_env), "status": 403 }),
            ));
        };
        let presented = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
            None
        } else {
            let mut response = json_response(
                StatusCode::UNAUTHORIZED,
                json!({ "error": "a valid bearer token is required", "status": 401 }),
            );
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            Some(response)
        }
    }
}

fn response(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(&value).unwrap_or_default();
    body.push(b'\n');
    response(status, "application/json", body)
}

fn not_found() -> Response<Vec<u8>> {
    json_response(
        StatusCode::NOT_FOUND,
        json!({ "error": "not found", "status": 404 }),
    )
}

/// The query string as a multimap, percent-decoded (`+` is a space).
fn query_params(query: Option<&str>) -> HashMap<String, Vec<String>> {
    let mut params: HashMap<String, Vec<String>> = HashMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        params.entry(decode(key)).or_default().push(decode(value));
    }
    params
}

fn rules_summary(snapshot: &Snapshot) -> serde_json::Value {
    let rules = &snapshot.rules;
    json!({
        "generation": snapshot.generation,
        "content_hash": format!("{:016x}", snapshot.content_hash),
        "loaded_at": humantime::format_rfc3339_seconds(snapshot.loaded_at).to_string(),
        "files": snapshot.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "default": &*rules.version(rules.default).name,
        "versions": rules.versions.iter().map(|v| json!({
            "name": &*v.name, "description": v.description, "selectable": v.selectable, "restricted": v.restricted,
        })).collect::<Vec<_>>(),
        "rules": rules.rules.iter().map(|r| &*r.name).collect::<Vec<_>>(),
        "goals": rules.goals.iter().map(|g| &*g.name).collect::<Vec<_>>(),
        "services": snapshot.services.services.iter().map(|s| json!({
            "name": &*s.name,
            "hosts": s.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
            "path_prefix": &*s.path_prefix,
            "groups": s.groups().map(|g| json!({
                "version": &*rules.version(g.version).name,
                "peers": g.pool.spec().peers.iter().map(|p| json!({
                    "addr": p.to_string(), "healthy": g.pool.is_healthy(*p),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

impl AdminApp {
    /// The request body, or `None` when it is over [`MAX_BODY`] or unreadable.
    async fn read_body(session: &mut ServerSession) -> Option<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY {
                        return None;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Some(body),
                Err(_) => return None,
            }
        }
    }

    /// `GET|PUT|DELETE /-/assignments/{uid}`: the uid's stored version.
    async fn assignment(&self, method: &str, uid: &str, body: &[u8]) -> Response<Vec<u8>> {
        let snapshot = self.reloader.store().current();
        let rules = &snapshot.rules;
        if crate::facts::Uid::parse(uid.into()).is_none() {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({ "error": "not a valid uid", "status": 400 }),
            );
        }
        let key = rules.assignments.key(uid);
        let store = self.lookups.store();
        let failed = |e: crate::store::StoreError| {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": format!("the store failed: {e}"), "status": 503 }),
            )
        };
        match method {
            "GET" => match store.get(&key).await {
                Ok(answer) => match answer.value {
                    Some(version) => json_response(
                        StatusCode::OK,
                        json!({ "uid": uid, "key": key, "version": &*version, "known": rules.version_id(&version).is_some() }),
                    ),
                    None => json_response(
                        StatusCode::NOT_FOUND,
                        json!({ "uid": uid, "key": key, "error": "no assignment", "status": 404 }),
                    ),
                },
                Err(e) => failed(e),
            },
            "PUT" => {
                // Either the bare version name or {"version": "..."}.
                let text = String::from_utf8_lossy(body);
                let version = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| {
                        v.get("version")
                            .and_then(|v| v.as_str())
                            .map(str::to_string)
                    })
                    .unwrap_or_else(|| text.trim().to_string());
                if rules.version_id(&version).is_none() {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        json!({ "error": format!("unknown version {version:?}"), "status": 400 }),
                    );
                }
                match store.set(&key, &version).await {
                    Ok(()) => json_response(
                        StatusCode::OK,
                        json!({ "uid": uid, "key": key, "version": version }),
                    ),
                    Err(e) => failed(e),
                }
            }
            "DELETE" => match store.delete(&key).await {
                Ok(existed) => json_response(
                    StatusCode::OK,
                    json!({ "uid": uid, "key": key, "deleted": existed }),
                ),
                Err(e) => failed(e),
            },
            _ => json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({ "error": "method not allowed", "status": 405 }),
            ),
        }
    }

    fn reload(&self) -> Response<Vec<u8>> {
        match self.reloader.reload("admin API") {
            Ok(reloaded) => json_response(
                StatusCode::OK,
                json!({
                    "result": match reloaded { Reloaded::Swapped(_) => "reloaded", Reloaded::Unchanged(_) => "unchanged" },
                    "generation": reloaded.snapshot().generation,
                }),
            ),
            Err(diags) => json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({
                    "result": "error",
                    "generation": self.reloader.store().current().generation,
                    "errors": diags.items().iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                }),
            ),
        }
    }

    async fn explain(&self, query: Option<&str>) -> Response<Vec<u8>> {
        let params = query_params(query);
        let first = |key: &str| params.get(key).and_then(|v| v.first()).cloned();
        let ip = match first("ip").map(|ip| ip.parse()) {
            Some(Ok(ip)) => Some(ip),
            Some(Err(_)) => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    json!({ "error": "ip is not an IP address", "status": 400 }),
                )
            }
            None => None,
        };
        let desc = RequestDescription {
            uid: first("uid").filter(|u| !u.is_empty()),
            host: first("host").unwrap_or_else(|| "localhost".into()),
            path: first("path").unwrap_or_else(|| "/".into()),
            method: first("method").unwrap_or_default(),
            cookies: params.get("cookie").cloned().unwrap_or_default(),
            headers: Vec::new(),
            ip,
        };
        let snapshot = self.reloader.store().current();
        match explain_request(&snapshot, &self.lookups, &self.channel_key, &desc).await {
            Ok(report) => json_response(
                StatusCode::OK,
                serde_json::to_value(report).unwrap_or_default(),
            ),
            Err(e) => json_response(
                StatusCode::BAD_REQUEST,
                json!({ "error": e.to_string(), "status": 400 }),
            ),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let query = session.req_header().uri.query().map(str::to_string);
        let Some(body) = Self::read_body(session).await else {
            return json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({ "error": "body too large", "status": 413 }),
            );
        };
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => response(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render(),
            ),
            ("GET", "/-/healthz") => response(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            (_, "/-/rules" | "/-/reload" | "/-/explain") => {
                if let Some(denied) = self.denial(session) {
                    return denied;
                }
                match (method.as_str(), path.as_str()) {
                    ("GET", "/-/rules") => json_response(
                        StatusCode::OK,
                        rules_summary(&self.reloader.store().current()),
                    ),
                    ("POST", "/-/reload") => self.reload(),
                    ("GET", "/-/explain") => self.explain(query.as_deref()).await,
                    _ => json_response(
                        StatusCode::METHOD_NOT_ALLOWED,
                        json!({ "error": "method not allowed", "status": 405 }),
                    ),
                }
            }
            (_, p) if p.starts_with("/-/assignments/") => match self.denial(session) {
                Some(denied) => denied,
                None => {
                    let uid = percent_encoding::percent_decode_str(&p["/-/assignments/".len()..])
                        .decode_utf8_lossy()
                        .into_owned();
                    self.assignment(method.as_str(), &uid, &body).await
                }
            },
            _ => not_found(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_decode() {
        let p = query_params(Some("uid=13&cookie=a%3D1&cookie=b%3D2&path=%2Fx+y&flag"));
        assert_eq!(p["uid"], vec!["13"]);
        assert_eq!(p["cookie"], vec!["a=1", "b=2"]);
        assert_eq!(p["path"], vec!["/x y"]);
        assert_eq!(p["flag"], vec![""]);
        assert!(query_params(None).is_empty());
    }
}
