//! When a request whose upstream connection died under it is sent again (SPEC section 14).
//!
//! Pingora keeps idle upstream connections in a pool; a peer that died or closed an idle
//! connection leaves dead ones there, and the next request to take one fails. Pingora asks
//! `error_while_proxy` whether to try again, and `upstream_peer` then runs again. The
//! decision here: retry once, when the connection was closed, reset or failed a write, no
//! response byte reached the client, the body Pingora buffered for a retry is complete, and
//! either the method is idempotent or the failure was a write (the upstream never got the
//! whole request). That covers the reused connection the SPEC names
//! (`reason="reused_connection"`) and also a fresh one that a dying peer accepted and then
//! reset before answering (`reason="reset"`): for a GET the two are alike, and without it a
//! peer killed under load still cost a request now and then (one in about seven runs of
//! `make faults`' `pooled-peer` row). The retry skips the pool ([`ReuseRetry::prepare`]: the peer gets a pool key of
//! its own, so Pingora connects afresh, and the request says `Connection: close`, so that
//! connection is not kept for the next retry to take); if that connection is refused, `fail_to_connect` moves
//! on to another peer and then to the default version's group, as for any refused
//! connection.

use http::Method;
use pingora::prelude::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, RetryType};

/// Retries of a dead connection per request.
pub const MAX_REUSE_RETRIES: u8 = 1;

/// The pool key of connections opened for a retry: never the one ordinary requests use,
/// so a retry never takes another pooled connection of the peer that just failed.
const FRESH_GROUP_KEY: u64 = 0x6772_6179_7265_7472;

/// What is known of a failed attempt.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// The connection came from the pool.
    pub reused: bool,
    /// GET, HEAD, OPTIONS, PUT, DELETE (and TRACE).
    pub idempotent: bool,
    /// A response header was already sent to the client.
    pub response_started: bool,
    /// Pingora holds the whole body sent so far, so it can send it again.
    pub body_replayable: bool,
}

/// A request's retries of dead connections.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReuseRetry {
    retries: u8,
    fresh: bool,
    /// This attempt is a fresh HTTP/1 connection: its request closes it.
    close: bool,
}

/// Whether `method` may be repeated without changing the outcome (RFC 9110 section 9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Whether `e` says the upstream connection was dead: closed or reset (what Pingora marks
/// retryable on a reused connection), or a write to it that failed. The client's own
/// failures (source downstream) are never retried.
fn dead_connection(e: &Error) -> bool {
    e.esource() == &ErrorSource::Upstream
        && (matches!(e.retry, RetryType::ReusedOnly | RetryType::Decided(true))
            || failed_writing(e))
}

fn failed_writing(e: &Error) -> bool {
    matches!(e.etype(), ErrorType::WriteError)
}

impl ReuseRetry {
    /// Whether to send the request again after `e` on `attempt`: the `reason` label of the
    /// retry (`reused_connection` or `reset`), or `None`. Counts the retry.
    pub fn decide(&mut self, attempt: &Attempt, e: &Error) -> Option<&'static str> {
        let retry = !attempt.response_started
            && attempt.body_replayable
            && self.retries < MAX_REUSE_RETRIES
            && dead_connection(e)
            && (attempt.idempotent || failed_writing(e));
        if !retry {
            return None;
        }
        self.retries += 1;
        self.fresh = true;
        Some(if attempt.reused {
            "reused_connection"
        } else {
            "reset"
        })
    }

    /// Sends the next attempt over a fresh connection, after a reused one failed: a pool
    /// key of its own, so no pooled connection is taken.
    pub fn prepare(&mut self, peer: &mut HttpPeer) {
        if self.fresh {
            peer.group_key = FRESH_GROUP_KEY;
            self.close = peer.options.alpn.get_max_http_version() == 1;
        }
    }

    /// Whether this attempt's request should say `Connection: close`: a retry on a fresh
    /// HTTP/1 connection, which Pingora then does not pool where the next retry would take
    /// it. (HTTP/2 forbids the header; its connections are shared, not taken.)
    pub fn close_connection(&self) -> bool {
        self.close
    }

    /// Retries of dead connections so far.
    pub fn retries(&self) -> u8 {
        self.retries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(etype: ErrorType, retry: RetryType) -> Box<Error> {
        let mut e = Error::new_up(etype);
        e.retry = retry;
        e
    }

    const GET: Attempt = Attempt {
        reused: true,
        idempotent: true,
        response_started: false,
        body_replayable: true,
    };

    #[test]
    fn a_dead_reused_connection_is_retried_once_then_fresh() {
        let reset = error(ErrorType::ConnectionClosed, RetryType::ReusedOnly);
        let mut r = ReuseRetry::default();
        let mut peer = HttpPeer::new(
            std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            false,
            String::new(),
        );
        r.prepare(&mut peer);
        assert_eq!(
            peer.group_key, 0,
            "the first attempt may take a pooled connection"
        );
        assert_eq!(r.decide(&GET, &reset), Some("reused_connection"));
        r.prepare(&mut peer);
        assert_eq!(peer.group_key, FRESH_GROUP_KEY);
        assert!(r.close_connection());
        assert_eq!(r.decide(&GET, &reset), None, "only once");
        assert_eq!(r.retries(), 1);
    }

    #[test]
    fn what_is_never_retried() {
        let reset = error(ErrorType::ConnectionClosed, RetryType::ReusedOnly);
        // A fresh connection reset before any answer: the peer died after accepting it.
        let fresh = Attempt {
            reused: false,
            ..GET
        };
        assert_eq!(ReuseRetry::default().decide(&fresh, &reset), Some("reset"));
        let table = [
            (
                Attempt {
                    response_started: true,
                    ..GET
                },
                "after response bytes",
            ),
            (
                Attempt {
                    body_replayable: false,
                    ..GET
                },
                "a body past the retry buffer",
            ),
            (
                Attempt {
                    idempotent: false,
                    ..GET
                },
                "a POST the upstream may have got",
            ),
        ];
        for (attempt, why) in table {
            assert_eq!(
                ReuseRetry::default().decide(&attempt, &reset),
                None,
                "{why}"
            );
        }
        let timeout = error(ErrorType::ReadTimedout, RetryType::Decided(false));
        let slow = ReuseRetry::default().decide(&GET, &timeout);
        assert_eq!(slow, None, "a slow upstream");
        // A write that failed: the upstream never got the whole request, so a POST goes too.
        let write = error(ErrorType::WriteError, RetryType::Decided(false));
        let post = Attempt {
            idempotent: false,
            ..GET
        };
        assert!(ReuseRetry::default().decide(&post, &write).is_some());
        assert!(ReuseRetry::default().decide(&GET, &write).is_some());
        let mut client_gone = Error::new_down(ErrorType::WriteError);
        client_gone.retry = RetryType::Decided(true);
        let gone = ReuseRetry::default().decide(&GET, &client_gone);
        assert_eq!(gone, None, "the client's failure");
    }

    #[test]
    fn idempotent_methods() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert!(is_idempotent(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!is_idempotent(&m), "{m}");
        }
    }
}
