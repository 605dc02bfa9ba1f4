//! Edge transport: what happens on a connection before HTTP.

pub mod proxy_protocol;
