//! graygate: a gray-release (canary) edge load balancer on Pingora.
//!
//! Data flows one way through the modules:
//!
//! ```text
//! conf/graygate.yaml ─► config ─┐
//! rules/*.yaml ──────► rules::load (raw ─► validate ─► compile) ─► snapshot::Snapshot (ArcSwap)
//!                                                                        │
//! request ─► facts (cookies, uid, tier, internal) ─► rules::decide ─► upstream (service, group, peer)
//! ```
//!
//! `proxy` is the thin Pingora glue over these modules; `server` assembles the Pingora server
//! that `main` (and the integration tests) run. `stats` keeps windowed per-version figures
//! (requests, 5xx, latency quantiles, goals) for rollout verdicts and `GET /-/stats`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod channels;
pub mod config;
pub mod diagnostics;
pub mod explain;
pub mod facts;
pub mod metrics;
pub mod pages;
pub mod proxy;
pub mod reload;
pub mod rules;
pub mod server;
pub mod snapshot;
pub mod stats;
pub mod store;
pub mod throttle;
pub mod upstream;
