//! The admin listener: `/metrics` and `/-/healthz`, separate from the proxy listeners.
//!
//! Both endpoints are open (no token), as SPEC section 6 requires; the token-protected
//! admin API is not part of this build yet and answers 404.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::metrics::Metrics;
use crate::snapshot::SnapshotStore;

/// The admin HTTP app.
pub struct AdminApp {
    metrics: Arc<Metrics>,
    store: Arc<SnapshotStore>,
}

impl AdminApp {
    /// An admin app exporting `metrics` for the generation in `store`.
    pub fn new(metrics: Arc<Metrics>, store: Arc<SnapshotStore>) -> Self {
        AdminApp { metrics, store }
    }
}

fn response(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        match (req.method.as_str(), req.uri.path()) {
            ("GET", "/metrics") => {
                self.metrics
                    .rules_generation
                    .set(self.store.current().generation as i64);
                response(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.metrics.render(),
                )
            }
            ("GET", "/-/healthz") => response(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            _ => response(
                StatusCode::NOT_FOUND,
                "application/json",
                br#"{"error":"not found","status":404}"#.to_vec(),
            ),
        }
    }
}
