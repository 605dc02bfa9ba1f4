//! The admin listener: metrics, health, and the token-protected admin API.
//!
//! `GET /metrics` and `GET /-/healthz` are open. Everything else needs
//! `Authorization: Bearer <token>` (the token comes from the environment variable named by
//! `admin.token_env`, compared in constant time) and answers 401 without it. With no token
//! configured the protected endpoints are disabled (403), never open.
//!
//! - `GET /-/rules`: generation, content hash, load time, files and a summary.
//! - `POST /-/reload`: reload the rules and the TLS listeners' certificates now (200 with the
//!   generation and each listener's certificate result, 422 with every error).
//! - `GET /-/explain?uid=&host=&path=&ip=&cookie=&method=`: the decision trace as JSON.
//! - `GET /-/stats?window=1m`: windowed per-service, per-version figures (requests, 5xx rate,
//!   p50/p90/p99, goal conversions) from `stats`, the read side a rollout check uses.
//! - `GET /-/rollouts`: each rollout's state, step, weight, since and last checks;
//!   `GET /-/rollouts/NAME/events`: its last 100 transitions;
//!   `POST /-/rollouts/NAME/{pause,resume,promote,rollback,retry}`: an operator's action (200
//!   with the rollout after it, 404 for an unknown rollout, 409 when its state forbids it).
//! - `GET|PUT|DELETE /-/override`: the emergency override (SPEC section 13); `PUT` takes
//!   `{"version": "stable", "reason": "..."}` (400 for an unknown version or no reason); with
//!   Redis it is written there and published before the answer (`"shared": true`).
//! - `GET /-/fleet`: the fleet's live instances, each `in_sync` or `drifted`, and the judge
//!   (404 without `redis:`, 503 when Redis cannot be read).
//! - `GET|PUT|DELETE /-/assignments/{uid}`: the uid's stored version (Redis when configured,
//!   else the embedded store); `PUT` takes the version name, bare or as `{"version": ...}`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::header::WWW_AUTHENTICATE;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::channels::ChannelKey;
use crate::config::parse_duration;
use crate::edge::tls::CertificatesReloaded;
use crate::emergency::Emergency;
use crate::explain::{explain_request, RequestDescription};
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::rollout::{Action, Rollouts};
use crate::state::{Reloaded, Snapshot};
use crate::store::Lookups;
use crate::web::{form_field, form_pairs, read_body, Refused, Reply};

/// The window of `GET /-/stats` when none is asked.
const DEFAULT_STATS_WINDOW: Duration = Duration::from_secs(60);

/// Largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

/// What operators steer through the admin API: rollouts, the override, the fleet.
pub struct Steering {
    /// The rollouts' records and their checks.
    pub rollouts: Arc<Rollouts>,
    /// The emergency override.
    pub emergency: Arc<Emergency>,
    /// This instance's part in the fleet, when Redis is configured.
    pub fleet: Option<Arc<Fleet>>,
}

/// The admin HTTP app.
pub struct AdminApp {
    metrics: Arc<Metrics>,
    reloader: Arc<Reloader>,
    lookups: Arc<Lookups>,
    channel_key: ChannelKey,
    steering: Steering,
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
        steering: Steering,
        token: Option<String>,
        token_env: &str,
    ) -> Self {
        AdminApp {
            metrics,
            reloader,
            lookups,
            channel_key,
            steering,
            token: token.filter(|t| !t.is_empty()),
            token_env: token_env.to_string(),
        }
    }

    /// `Some(reply)` when the request may not use the admin API.
    fn denial(&self, session: &ServerSession) -> Option<Reply> {
        let Some(token) = &self.token else {
            let message = format!(
                "the admin API is disabled: set {} to enable it",
                self.token_env
            );
            return Some(Reply::error(403, &message));
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
            Some(
                Reply::error(401, "a valid bearer token is required")
                    .with_header(WWW_AUTHENTICATE, "Bearer"),
            )
        }
    }
}

fn method_not_allowed() -> Reply {
    Reply::error(405, "method not allowed")
}

fn rules_summary(snapshot: &Snapshot) -> serde_json::Value {
    let rules = &snapshot.rules;
    json!({
        "generation": snapshot.generation,
        "content_hash": format!("{:016x}", snapshot.origin.content_hash),
        "loaded_at": humantime::format_rfc3339_seconds(snapshot.loaded_at).to_string(),
        "files": snapshot.origin.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "default": &*rules.version(rules.default).name,
        "versions": rules.versions.iter().map(|v| json!({
            "name": &*v.name, "description": v.description, "selectable": v.selectable, "restricted": v.restricted,
            "cookies": v.cookies.as_str(),
        })).collect::<Vec<_>>(),
        "rules": rules.rules.iter().map(|r| &*r.name).collect::<Vec<_>>(),
        "runtime": runtime_summary(snapshot),
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

/// The runtime state applied to the snapshot (section "runtime" of `/-/rules`).
fn runtime_summary(snapshot: &Snapshot) -> serde_json::Value {
    let rules = &snapshot.rules;
    let runtime = &snapshot.runtime;
    json!({
        "override": runtime.override_version.map(|v| json!({
            "version": &*rules.version(v).name,
            "reason": runtime.override_reason,
        })),
        "withdrawn": runtime.withdrawn().map(|v| &*rules.version(v).name).collect::<Vec<_>>(),
        "rollouts": rules.rollouts.iter().zip(&runtime.rollouts).map(|(r, now)| serde_json::json!({
            "name": &*r.name, "state": now.phase.as_str(), "step": now.step + 1, "weight": now.weight,
        })).collect::<Vec<_>>(),
        "ignored": runtime.ignored,
    })
}

impl AdminApp {
    /// `GET|PUT|DELETE /-/assignments/{uid}`: the uid's stored version.
    async fn assignment(&self, session: &mut ServerSession, uid: &str) -> Reply {
        let snapshot = self.reloader.store().current();
        let rules = &snapshot.rules;
        if crate::facts::Uid::parse(uid.into()).is_none() {
            return Reply::error(400, "not a valid uid");
        }
        let key = rules.assignments.key(uid);
        let store = self.lookups.store();
        let failed =
            |e: crate::store::StoreError| Reply::error(503, &format!("the store failed: {e}"));
        let method = session.req_header().method.clone();
        match method.as_str() {
            "GET" => match store.get(&key).await {
                Ok(answer) => match answer.value {
                    Some(version) => Reply::json(
                        200,
                        &json!({ "uid": uid, "key": key, "version": &*version, "known": rules.version_id(&version).is_some() }),
                    ),
                    None => Reply::json(
                        404,
                        &json!({ "uid": uid, "key": key, "error": "no assignment", "status": 404 }),
                    ),
                },
                Err(e) => failed(e),
            },
            "PUT" => {
                let body = match read_body(session, MAX_BODY).await {
                    Ok(body) => body,
                    Err(e) => return e.reply(),
                };
                // Either the bare version name or {"version": "..."}.
                let text = String::from_utf8_lossy(&body);
                let version = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| {
                        v.get("version")
                            .and_then(|v| v.as_str())
                            .map(str::to_string)
                    })
                    .unwrap_or_else(|| text.trim().to_string());
                if rules.version_id(&version).is_none() {
                    return Reply::error(400, &format!("unknown version {version:?}"));
                }
                match store.set(&key, &version).await {
                    Ok(()) => {
                        Reply::json(200, &json!({ "uid": uid, "key": key, "version": version }))
                    }
                    Err(e) => failed(e),
                }
            }
            "DELETE" => match store.delete(&key).await {
                Ok(existed) => {
                    Reply::json(200, &json!({ "uid": uid, "key": key, "deleted": existed }))
                }
                Err(e) => failed(e),
            },
            _ => method_not_allowed(),
        }
    }

    /// `GET|PUT|DELETE /-/override`.
    async fn emergency_override(&self, session: &mut ServerSession) -> Reply {
        let method = session.req_header().method.clone();
        let emergency = Arc::clone(&self.steering.emergency);
        // Off the admin thread's runtime: a change saves the state file.
        let done = match method.as_str() {
            "GET" => return Reply::json(200, &self.steering.emergency.status()),
            "PUT" => {
                let body = match read_body(session, MAX_BODY).await {
                    Ok(body) => body,
                    Err(e) => return e.reply(),
                };
                let asked: serde_json::Value = match serde_json::from_slice(&body) {
                    Ok(value) => value,
                    Err(e) => {
                        let message = format!(
                            "the body must be {{\"version\": \"...\", \"reason\": \"...\"}}: {e}"
                        );
                        return Reply::error(400, &message);
                    }
                };
                let field = |name: &str| {
                    asked
                        .get(name)
                        .and_then(|v| v.as_str())
                        .unwrap_or("")
                        .to_string()
                };
                let (version, reason) = (field("version"), field("reason"));
                tokio::task::spawn_blocking(move || emergency.set(&version, &reason)).await
            }
            "DELETE" => tokio::task::spawn_blocking(move || emergency.clear()).await,
            _ => return method_not_allowed(),
        };
        let mut status = match done {
            Ok(Ok(status)) => status,
            Ok(Err(refused)) => return Refused::reply(Err(refused)),
            Err(e) => return Reply::error(500, &format!("the change did not complete: {e}")),
        };
        if let Some(fleet) = &self.steering.fleet {
            let shared = fleet.share_override().await;
            status["shared"] = shared.into();
            if !shared {
                status["warning"] = "Redis could not be reached: the override applies to this instance now, and is written to Redis for the others once it answers".into();
            }
        }
        Reply::json(200, &status)
    }

    /// `GET /-/fleet`.
    async fn fleet(&self) -> Reply {
        let Some(fleet) = &self.steering.fleet else {
            return Reply::error(404, "no fleet: the fleet view needs redis: in the config");
        };
        match fleet.status().await {
            Ok(status) => Reply::json(200, &status),
            Err(e) => Reply::error(503, &format!("cannot read the fleet from Redis: {e}")),
        }
    }

    /// `POST /-/reload`. Compiling reads files and may resolve peer names: it runs on the
    /// reload thread, in the idle class ([`Reloader::spawn`]), as the file-watch path does,
    /// never on an async worker.
    async fn reload(&self) -> Reply {
        let Some(report) = Arc::clone(&self.reloader)
            .reload_in_thread("admin API")
            .await
        else {
            return Reply::error(500, "the reload did not finish");
        };
        // Each TLS listener's certificates: reloaded, unchanged, or kept after errors.
        let certificates: Vec<serde_json::Value> = report
            .certificates
            .iter()
            .map(|c| match &c.outcome {
                Ok(done) => json!({
                    "listener": &*c.listener,
                    "result": match done {
                        CertificatesReloaded::Swapped => "reloaded",
                        CertificatesReloaded::Unchanged => "unchanged",
                    },
                }),
                Err(problems) => json!({
                    "listener": &*c.listener,
                    "result": "error",
                    "errors": problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                }),
            })
            .collect();
        let certificates_failed = report.certificates.iter().any(|c| c.outcome.is_err());
        let mut body = match &report.rules {
            Ok(reloaded) => json!({
                "result": match reloaded { Reloaded::Swapped(_) => "reloaded", Reloaded::Unchanged(_) => "unchanged" },
                "generation": reloaded.snapshot().generation,
            }),
            Err(diags) => json!({
                "result": "error",
                "generation": self.reloader.store().current().generation,
                "errors": diags.items().iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            }),
        };
        if !certificates.is_empty() {
            body["certificates"] = certificates.into();
        }
        let status = if report.rules.is_err() || certificates_failed {
            422
        } else {
            200
        };
        Reply::json(status, &body)
    }

    async fn explain(&self, query: Option<&str>) -> Reply {
        let params = form_pairs(query.unwrap_or(""));
        let first = |key: &str| form_field(&params, key).map(str::to_string);
        let ip = match first("ip").map(|ip| ip.parse()) {
            Some(Ok(ip)) => Some(ip),
            Some(Err(_)) => return Reply::error(400, "ip is not an IP address"),
            None => None,
        };
        let desc = RequestDescription {
            uid: first("uid").filter(|u| !u.is_empty()),
            host: first("host").unwrap_or_else(|| "localhost".into()),
            path: first("path").unwrap_or_else(|| "/".into()),
            method: first("method").unwrap_or_default(),
            cookies: params
                .iter()
                .filter(|(k, _)| k == "cookie")
                .map(|(_, v)| v.clone())
                .collect(),
            headers: Vec::new(),
            ip,
            listener: first("listener").filter(|l| !l.is_empty()),
        };
        let snapshot = self.reloader.store().current();
        match explain_request(&snapshot, &self.lookups, &self.channel_key, &desc).await {
            Ok(report) => Reply::json(200, &serde_json::to_value(report).unwrap_or_default()),
            Err(e) => Reply::error(400, &e.to_string()),
        }
    }

    /// `GET /-/stats?window=1m`: every service's per-version figures over the window
    /// (default 1 minute, at most the history kept).
    fn stats(&self, query: Option<&str>) -> Reply {
        let stats = self.reloader.store().stats();
        let params = form_pairs(query.unwrap_or(""));
        let window = match form_field(&params, "window").map(parse_duration) {
            None => DEFAULT_STATS_WINDOW,
            Some(Ok(window)) if !window.is_zero() && window <= stats.history() => window,
            Some(_) => {
                let message = format!(
                    "window must be a duration like 30s or 5m, above 0 and at most {}",
                    humantime::format_duration(stats.history())
                );
                return Reply::error(400, &message);
            }
        };
        Reply::json(
            200,
            &json!({
                "window_seconds": window.as_secs_f64(),
                "cells": stats.all(window),
            }),
        )
    }

    /// Answers one admin request. The token is checked before anything of the request
    /// beyond its header is read.
    async fn answer(&self, session: &mut ServerSession) -> Reply {
        let req = session.req_header();
        let endpoint = Endpoint::of(req.method.as_str(), req.uri.path());
        let query = req.uri.query().map(str::to_string);
        match endpoint {
            Endpoint::Metrics => {
                return Reply::new(200, "text/plain; version=0.0.4", self.metrics.render())
            }
            Endpoint::Healthz => return Reply::new(200, "text/plain", "ok\n"),
            Endpoint::NotFound => return Reply::error(404, "not found"),
            _ => {}
        }
        if let Some(denied) = self.denial(session) {
            return denied;
        }
        match endpoint {
            Endpoint::Rules => Reply::json(200, &rules_summary(&self.reloader.store().current())),
            Endpoint::Reload => self.reload().await,
            Endpoint::Explain => self.explain(query.as_deref()).await,
            Endpoint::Stats => self.stats(query.as_deref()),
            Endpoint::Assignment(uid) => self.assignment(session, &uid).await,
            Endpoint::Rollouts => Reply::json(200, &self.steering.rollouts.status()),
            Endpoint::Override => self.emergency_override(session).await,
            Endpoint::Fleet => self.fleet().await,
            Endpoint::RolloutEvents(name) => Refused::reply(self.steering.rollouts.events(&name)),
            Endpoint::RolloutAction(name, action) => {
                // Off the admin thread's runtime: an action saves the state file.
                let rollouts = Arc::clone(&self.steering.rollouts);
                let done = tokio::task::spawn_blocking(move || rollouts.act(&name, action)).await;
                match done {
                    Ok(result) => Refused::reply(result),
                    Err(e) => Reply::error(500, &format!("the action did not complete: {e}")),
                }
            }
            Endpoint::WrongMethod | Endpoint::Metrics | Endpoint::Healthz | Endpoint::NotFound => {
                method_not_allowed()
            }
        }
    }
}

/// What an admin request asks for, from its method and path: the one list of endpoints.
enum Endpoint {
    Metrics,
    Healthz,
    Rules,
    Reload,
    Explain,
    Stats,
    /// `/-/assignments/{uid}`, any method (the handler answers 405 for the others).
    Assignment(String),
    /// `GET /-/rollouts`.
    Rollouts,
    /// `/-/override`, any method (the handler answers 405 for the others).
    Override,
    /// `GET /-/fleet`.
    Fleet,
    /// `GET /-/rollouts/NAME/events`.
    RolloutEvents(String),
    /// `POST /-/rollouts/NAME/ACTION`.
    RolloutAction(String, Action),
    /// A protected endpoint asked with a method it does not answer.
    WrongMethod,
    NotFound,
}

impl Endpoint {
    fn of(method: &str, path: &str) -> Endpoint {
        if let Some(uid) = path.strip_prefix("/-/assignments/") {
            let uid = percent_encoding::percent_decode_str(uid).decode_utf8_lossy();
            return Endpoint::Assignment(uid.into_owned());
        }
        if let Some(rest) = path.strip_prefix("/-/rollouts/") {
            let (name, tail) = rest.split_once('/').unwrap_or((rest, ""));
            let name = percent_encoding::percent_decode_str(name)
                .decode_utf8_lossy()
                .into_owned();
            return match (method, tail, Action::parse(tail)) {
                ("GET", "events", _) => Endpoint::RolloutEvents(name),
                ("POST", _, Some(action)) => Endpoint::RolloutAction(name, action),
                (_, "events", _) | (_, _, Some(_)) => Endpoint::WrongMethod,
                _ => Endpoint::NotFound,
            };
        }
        match (method, path) {
            ("GET", "/metrics") => Endpoint::Metrics,
            ("GET", "/-/healthz") => Endpoint::Healthz,
            ("GET", "/-/rules") => Endpoint::Rules,
            ("POST", "/-/reload") => Endpoint::Reload,
            ("GET", "/-/explain") => Endpoint::Explain,
            ("GET", "/-/stats") => Endpoint::Stats,
            ("GET", "/-/rollouts") => Endpoint::Rollouts,
            (_, "/-/override") => Endpoint::Override,
            ("GET", "/-/fleet") => Endpoint::Fleet,
            (
                _,
                "/-/rules" | "/-/reload" | "/-/explain" | "/-/stats" | "/-/rollouts" | "/-/fleet",
            ) => Endpoint::WrongMethod,
            _ => Endpoint::NotFound,
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let reply = self.answer(session).await;
        // A body nobody asked for (a refused request's, a GET's) is not drained to keep the
        // connection: the connection is closed instead.
        if !(session.is_body_empty() || session.is_body_done()) {
            session.set_keepalive(None);
        }
        reply.into_http()
    }
}
