//! Responses graygate writes itself on the proxy listener: the self-service channel page and
//! the mobile address API. Both use the same facts and decision as the proxy, and return a
//! [`Reply`](crate::web::Reply) that the proxy writes.

mod address;
mod channel_page;

pub use address::address_api;
pub use channel_page::channel_page;

use crate::facts::{Scheme, VersionId};
use crate::rules::decide::Decision;

/// Who is asking, as the proxy's filter chain and rules saw them.
#[derive(Debug, Clone)]
pub struct Visitor {
    /// The decision for this request (with store facts looked up).
    pub decision: Decision,
    /// The uid, if any.
    pub uid: Option<String>,
    /// An internal user (may pick restricted versions).
    pub internal: bool,
    /// The version of a valid channel cookie.
    pub channel: Option<VersionId>,
    /// The request host, without port.
    pub host: String,
    /// Where the request falls for consistent hashing (see `upstream::balance_key`).
    pub balance_key: [u8; 8],
    /// `https` on a TLS listener: the channel cookie is then `Secure`.
    pub scheme: Scheme,
}
