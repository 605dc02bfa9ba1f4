//! The `identity` section (where the uid and the tier are read, who is internal) and the
//! `assignments` key: sources like `cookie:NAME`, tiers, CIDRs and the `{uid}` template.

use std::net::IpAddr;

use http::header::HeaderName;
use ipnet::IpNet;

use super::{At, Compiler};
use crate::facts::identity::{Identity, InternalPolicy, Source, Tier, TierPolicy};
use crate::rules::model::KeyTemplate;
use crate::rules::raw::{RawAssignments, RawIdentity, RawInternal, RawTier};

impl Compiler {
    /// Where the uid and the tier are read and who is internal; the defaults when the
    /// section is absent.
    pub(super) fn identity(&mut self, raw: Option<(At, serde_yaml::Value)>) -> Option<Identity> {
        let (at, raw) = match raw {
            Some((at, value)) => {
                let raw = self.parse::<RawIdentity>(&at, "identity", value)?;
                (at, raw)
            }
            None => (At::top(0, "identity"), RawIdentity::default()),
        };
        let RawIdentity {
            uid,
            tier,
            internal,
        } = raw;
        let uid_texts = uid.map(|u| u.0).unwrap_or_else(|| {
            vec![
                "cookie:uid".into(),
                "header:X-User-Id".into(),
                "query:uid".into(),
            ]
        });
        let uid_at = at.child("uid");
        let uid = uid_texts
            .iter()
            .enumerate()
            .filter_map(|(i, t)| self.source(&uid_at.item(i), "identity.uid", t))
            .collect();
        let tier = self.tier(&at.child("tier"), tier.unwrap_or_default());
        let internal = self.internal(&at.child("internal"), internal.unwrap_or_default());
        Some(Identity {
            uid,
            tier,
            internal,
        })
    }

    fn tier(&mut self, at: &At, raw: RawTier) -> TierPolicy {
        let RawTier {
            sources,
            paid_uids,
            redis_set,
            default,
        } = raw;
        let sources = sources
            .0
            .iter()
            .filter_map(|t| self.source(at, "identity.tier.sources", t))
            .collect();
        let default = match default.as_deref() {
            None => Tier::Trial,
            Some(text) => Tier::parse(text).unwrap_or_else(|| {
                self.error(
                    at,
                    format!("identity.tier.default: \"{text}\" is neither paid nor trial"),
                );
                Tier::Trial
            }),
        };
        TierPolicy {
            sources,
            paid_uids: paid_uids.into_iter().map(|t| t.0.into()).collect(),
            default,
            redis_set: redis_set.map(Into::into),
        }
    }

    fn internal(&mut self, at: &At, raw: RawInternal) -> InternalPolicy {
        let RawInternal {
            uids,
            cidrs,
            redis_set,
        } = raw;
        let cidrs = cidrs
            .iter()
            .filter_map(|c| self.cidr(at, "identity.internal.cidrs", c))
            .collect();
        InternalPolicy {
            uids: uids.into_iter().map(|t| t.0.into()).collect(),
            cidrs,
            redis_set: redis_set.map(Into::into),
        }
    }

    /// A place a value is read from: `cookie:NAME`, `header:NAME` or `query:NAME`.
    fn source(&mut self, at: &At, what: &str, text: &str) -> Option<Source> {
        let parsed = text.split_once(':').and_then(|(kind, name)| {
            let name = name.trim();
            if name.is_empty() {
                return None;
            }
            match kind.trim() {
                "cookie" => Some(Source::Cookie(name.into())),
                "header" => HeaderName::from_bytes(name.as_bytes())
                    .ok()
                    .map(Source::Header),
                "query" => Some(Source::Query(name.into())),
                _ => None,
            }
        });
        if parsed.is_none() {
            self.error(at, format!("{what}: \"{text}\" is not a source like cookie:NAME, header:NAME or query:NAME"));
        }
        parsed
    }

    /// A network like `10.0.0.0/8`, or one address.
    pub(super) fn cidr(&mut self, at: &At, what: &str, text: &str) -> Option<IpNet> {
        let parsed = text
            .parse::<IpNet>()
            .ok()
            .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
            .map(|net| net.trunc());
        if parsed.is_none() {
            self.error(
                at,
                format!("{what}: \"{text}\" is not a CIDR like 10.0.0.0/8"),
            );
        }
        parsed
    }

    /// The Redis key of a uid's assignment: `{uid}` exactly once.
    pub(super) fn assignments(
        &mut self,
        raw: Option<(At, serde_yaml::Value)>,
    ) -> Option<KeyTemplate> {
        let Some((at, value)) = raw else {
            return Some(KeyTemplate::default());
        };
        let RawAssignments { key } = self.parse::<RawAssignments>(&at, "assignments", value)?;
        match key.split_once("{uid}") {
            Some((prefix, suffix)) if !suffix.contains("{uid}") => Some(KeyTemplate {
                prefix: prefix.into(),
                suffix: suffix.into(),
            }),
            _ => {
                let msg = format!("assignments.key: \"{key}\" must contain {{uid}} exactly once");
                self.error(&at, msg);
                None
            }
        }
    }
}
