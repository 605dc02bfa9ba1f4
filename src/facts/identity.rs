//! Who the user is, as the compiled rules describe it: where the uid is read, how the tier
//! and the internal flag are found. Built by `rules::compile` from the `identity:` section,
//! read by [`Facts::gather`](super::Facts::gather) on every request.

use std::collections::HashSet;

use http::header::HeaderName;
use ipnet::IpNet;

/// Paid (high-risk) or trial (low-risk) user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// A paying user, shielded from canaries.
    Paid,
    /// A trial user, canaried first.
    Trial,
}

impl Tier {
    /// Parses `paid` / `trial`, ignoring ASCII case.
    pub fn parse(text: &str) -> Option<Tier> {
        if text.eq_ignore_ascii_case("paid") {
            Some(Tier::Paid)
        } else if text.eq_ignore_ascii_case("trial") {
            Some(Tier::Trial)
        } else {
            None
        }
    }

    /// `paid` or `trial`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Paid => "paid",
            Tier::Trial => "trial",
        }
    }
}

/// Where a request carries an identity value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `cookie:NAME`
    Cookie(Box<str>),
    /// `header:NAME`
    Header(HeaderName),
    /// `query:NAME`
    Query(Box<str>),
}

/// How the user's uid, tier and internal flag are found.
#[derive(Debug, Clone)]
pub struct Identity {
    /// uid sources in order; the first present and valid wins.
    pub uid: Vec<Source>,
    /// Paid or trial.
    pub tier: TierPolicy,
    /// Who counts as internal.
    pub internal: InternalPolicy,
}

/// How the tier is found.
#[derive(Debug, Clone)]
pub struct TierPolicy {
    /// Request sources whose value is `paid` or `trial`.
    pub sources: Vec<Source>,
    /// uids that are paid whatever the request says.
    pub paid_uids: HashSet<Box<str>>,
    /// The tier when nothing says otherwise.
    pub default: Tier,
    /// A store set whose members are paid (`SISMEMBER set uid`).
    pub redis_set: Option<Box<str>>,
}

/// Who is internal: may be routed to, and may select, restricted versions.
#[derive(Debug, Clone, Default)]
pub struct InternalPolicy {
    /// Internal uids.
    pub uids: HashSet<Box<str>>,
    /// Internal client networks.
    pub cidrs: Vec<IpNet>,
    /// A store set whose members are internal (`SISMEMBER set uid`).
    pub redis_set: Option<Box<str>>,
}
