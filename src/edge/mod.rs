//! Edge transport: what happens on a connection before HTTP (which listener it reached, its
//! TLS handshake, which HTTP versions it may speak).

pub mod app;
pub mod tls;
