//! Edge transport: what happens on a connection before HTTP (which listener it reached, the
//! PROXY protocol header of a trusted load balancer, the TLS handshake, which HTTP versions
//! it may speak, the limits a connection lives under).

pub mod app;
pub mod limits;
pub mod proxy_protocol;
pub mod tls;
