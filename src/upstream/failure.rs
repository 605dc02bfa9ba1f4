//! What an upstream failure is called, and what the client is told about it.
//!
//! Pingora reports failures as an error type and a source (upstream, downstream, internal).
//! graygate turns them into the `kind` label of `graygate_upstream_errors_total` and into the
//! status of the JSON answer the client gets; both mappings live here, once.

use pingora::{Error, ErrorSource, ErrorType};

/// The `kind` label of a failed connection attempt: `tls` when the TCP connection was made
/// but the TLS handshake failed (a certificate that does not verify, no common protocol).
pub fn connect_error_kind(e: &Error) -> &'static str {
    match e.etype() {
        ErrorType::ConnectTimedout => "connect_timeout",
        ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::TLSWantX509Lookup
        | ErrorType::InvalidCert => "tls",
        _ => "connect",
    }
}

/// The `kind` label of a request that failed on the upstream side after connecting; `None`
/// when the failure was not the upstream's.
pub fn error_kind(e: &Error) -> Option<&'static str> {
    if e.esource() != &ErrorSource::Upstream {
        return None;
    }
    Some(match e.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => "timeout",
        ErrorType::ConnectionClosed => "reset",
        ErrorType::ReadError | ErrorType::WriteError => "io",
        ErrorType::InvalidHTTPHeader | ErrorType::H1Error | ErrorType::H2Error => "protocol",
        _ => "other",
    })
}

/// The status answered for a request that could not be proxied, with its message; `None`
/// when the client is gone (nothing can be written).
pub fn error_status(e: &Error) -> Option<(u16, &'static str)> {
    let status = match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        _ => match e.esource() {
            ErrorSource::Upstream => match e.etype() {
                ErrorType::ReadTimedout | ErrorType::WriteTimedout | ErrorType::ConnectTimedout => {
                    504
                }
                _ => 502,
            },
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                    return None
                }
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    };
    let message: &'static str = match status {
        503 => "no healthy upstream",
        413 => "the request body is larger than max_body_size",
        502 => "bad gateway: the upstream failed",
        504 => "gateway timeout: the upstream did not answer in time",
        400 => "bad request",
        _ => "internal error",
    };
    Some((status, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(etype: ErrorType, source: ErrorSource) -> Box<Error> {
        match source {
            ErrorSource::Upstream => Error::new_up(etype),
            ErrorSource::Downstream => Error::new_down(etype),
            _ => Error::new_in(etype),
        }
    }

    #[test]
    fn kinds_and_statuses() {
        let timeout = error(ErrorType::ReadTimedout, ErrorSource::Upstream);
        assert_eq!(error_kind(&timeout), Some("timeout"));
        assert_eq!(error_status(&timeout).map(|s| s.0), Some(504));
        let reset = error(ErrorType::ConnectionClosed, ErrorSource::Upstream);
        assert_eq!(error_kind(&reset), Some("reset"));
        assert_eq!(error_status(&reset).map(|s| s.0), Some(502));
        let gone = error(ErrorType::ConnectionClosed, ErrorSource::Downstream);
        assert_eq!(error_kind(&gone), None);
        assert_eq!(error_status(&gone), None);
        let no_peer = error(ErrorType::HTTPStatus(503), ErrorSource::Internal);
        assert_eq!(error_status(&no_peer), Some((503, "no healthy upstream")));
        let refused = error(ErrorType::ConnectRefused, ErrorSource::Upstream);
        assert_eq!(connect_error_kind(&refused), "connect");
        let slow = error(ErrorType::ConnectTimedout, ErrorSource::Upstream);
        assert_eq!(connect_error_kind(&slow), "connect_timeout");
        let untrusted = error(ErrorType::InvalidCert, ErrorSource::Upstream);
        assert_eq!(connect_error_kind(&untrusted), "tls");
        let handshake = error(ErrorType::TLSHandshakeFailure, ErrorSource::Upstream);
        assert_eq!(connect_error_kind(&handshake), "tls");
    }
}
