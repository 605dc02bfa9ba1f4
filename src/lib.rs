//! graygate: a gray-release (canary) edge load balancer on Pingora.
//!
//! Data flows one way through the modules:
//!
//! ```text
//! conf/graygate.yaml ─► config (listeners, admin, redis, server)
//! rules/*.yaml ──────► rules::load (raw ─► compile/ ─► model) ─┐
//! runtime state (where rollouts stand, override) ──────────────┴─► state::Snapshot (one ArcSwap)
//!                                                                        │
//! request ─► facts (listener, client address, cookies, uid, tier, internal) ─► rules::decide
//!         ─► upstream::Service::serving_group (group, peer, fallback reason)
//!         ─► logging: metrics (Prometheus, write-only) and stats (windowed, readable)
//! ```
//!
//! `edge` handles a connection before HTTP (the PROXY protocol header); `proxy` is the thin
//! Pingora glue over these modules and `pages` answer what graygate serves
//! itself, as a `web::Reply`; `admin` is the admin listener; `server` assembles the Pingora
//! server that `main` (and the integration tests) run. `stats` keeps windowed per-version
//! figures (requests, 5xx, latency quantiles, goals) for rollout verdicts and `GET /-/stats`;
//! `rollout` judges each rollout's arms on them and moves its steps through the runtime state;
//! `emergency` holds the operator's override; with Redis, `fleet` shares both across instances
//! (one judge on the summed counts, published changes, heartbeats).
//! `access_log` writes the request lines from a thread of its own, off the request path.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod channels;
pub mod config;
pub mod cookies;
pub mod diagnostics;
pub mod edge;
pub mod emergency;
pub mod explain;
pub mod facts;
pub mod fleet;
pub mod metrics;
pub mod pages;
pub mod proxy;
pub mod reload;
pub mod rollout;
pub mod rules;
pub mod server;
pub mod state;
pub mod stats;
pub mod store;
pub mod throttle;
pub mod upstream;
pub mod web;
