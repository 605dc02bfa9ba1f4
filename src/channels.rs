//! The signed channel cookie: `VERSION.EXPIRY.MAC`.
//!
//! `MAC = base64url(HMAC-SHA256(key, name "\n" version "\n" expiry "\n" uid))`, where `name` is
//! the cookie's name, `expiry` the Unix time in seconds after which the cookie is void, and
//! `uid` the user's id (empty for a user without one): a cookie made for one user is worth
//! nothing to another. Verification compares MACs in constant time. Anything that does not
//! verify (forged, expired, truncated, another uid's, a version the rules do not know) is
//! ignored, never an error: the request is routed as if there were no cookie.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::facts::{Facts, Scheme, VersionId};
use crate::rules::decide::Decision;
use crate::rules::model::{Action, ChannelSettings, RuleSet};

type HmacSha256 = Hmac<Sha256>;

/// Longest cookie value looked at; a valid one is far shorter.
const MAX_COOKIE_LEN: usize = 256;

/// The key that signs channel cookies.
#[derive(Clone)]
pub struct ChannelKey {
    key: Vec<u8>,
}

impl std::fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChannelKey(..)")
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ChannelKey {
    /// A key from secret bytes (at least 16).
    pub fn new(key: &[u8]) -> Option<ChannelKey> {
        (key.len() >= 16).then(|| ChannelKey { key: key.to_vec() })
    }

    /// The key from the environment variable `env`, or a random one (logged as a warning:
    /// cookies then do not survive a restart nor work across instances).
    pub fn from_env(env: &str) -> ChannelKey {
        match std::env::var(env) {
            Ok(secret) if secret.len() >= 16 => ChannelKey {
                key: secret.into_bytes(),
            },
            other => {
                if other.is_ok() {
                    log::warn!("{env} is shorter than 16 bytes: using a random channel-cookie key");
                } else {
                    log::warn!(
                        "{env} is not set: channel cookies are signed with a random key, valid only for this process"
                    );
                }
                let mut key = vec![0u8; 32];
                if getrandom::fill(&mut key).is_err() {
                    // No OS randomness: still unpredictable enough per process, and logged.
                    log::error!(
                        "no OS randomness for the channel-cookie key; using a time-based key"
                    );
                    key = format!("{:?}{}", std::time::Instant::now(), unix_now()).into_bytes();
                }
                ChannelKey { key }
            }
        }
    }

    fn mac(&self, name: &str, version: &str, expiry: u64, uid: &str) -> HmacSha256 {
        // HMAC accepts keys of any length.
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(name.as_bytes());
        mac.update(b"\n");
        mac.update(version.as_bytes());
        mac.update(b"\n");
        mac.update(expiry.to_string().as_bytes());
        mac.update(b"\n");
        mac.update(uid.as_bytes());
        mac
    }

    /// The cookie value for `version`, valid until `expiry` (Unix seconds), bound to `uid`.
    pub fn sign(&self, name: &str, version: &str, expiry: u64, uid: Option<&str>) -> String {
        let tag = self
            .mac(name, version, expiry, uid.unwrap_or(""))
            .finalize()
            .into_bytes();
        format!("{version}.{expiry}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The version a cookie value names, if it verifies at `now` for `uid`.
    pub fn verify<'v>(
        &self,
        name: &str,
        value: &'v str,
        now: u64,
        uid: Option<&str>,
    ) -> Option<&'v str> {
        if value.len() > MAX_COOKIE_LEN {
            return None;
        }
        let mut parts = value.splitn(3, '.');
        let (version, expiry, tag) = (parts.next()?, parts.next()?, parts.next()?);
        let expiry_secs: u64 = expiry.parse().ok()?;
        if expiry_secs <= now || version.is_empty() || expiry_secs.to_string() != expiry {
            return None;
        }
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.mac(name, version, expiry_secs, uid.unwrap_or(""))
            .verify_slice(&tag)
            .ok()?;
        Some(version)
    }

    /// The known version named by the request's channel cookie, if it verifies.
    pub fn channel_of(
        &self,
        rules: &RuleSet,
        cookie: Option<&str>,
        uid: Option<&str>,
    ) -> Option<VersionId> {
        let settings = &rules.channels;
        let version = self.verify(&settings.cookie, cookie?, unix_now(), uid)?;
        rules.version_id(version)
    }

    /// The channel cookie a decision sets: a sticky split's first decision for this user is
    /// kept in the channel cookie, so the user stays on the version (and the business service
    /// sees it on this very request). `None` when the decision was not a sticky split, or the
    /// request already carries a valid cookie for the decided version.
    pub fn sticky_cookie(
        &self,
        rules: &RuleSet,
        decision: &Decision,
        facts: &Facts,
    ) -> Option<String> {
        let rule = &rules.rules[decision.rule?];
        match &rule.action {
            Action::Split(split) if split.sticky && facts.channel != Some(decision.version) => {
                Some(self.set_cookie(
                    &rules.channels,
                    Some(&rules.version(decision.version).name),
                    facts.uid.as_ref().map(|u| &*u.text),
                    facts.req.arrival.scheme,
                ))
            }
            _ => None,
        }
    }

    /// A `Set-Cookie` value choosing `version` for `uid` (or clearing the choice); `Secure`
    /// when the request came over HTTPS.
    pub fn set_cookie(
        &self,
        settings: &ChannelSettings,
        choice: Option<&str>,
        uid: Option<&str>,
        scheme: Scheme,
    ) -> String {
        let mut cookie = match choice {
            Some(version) => {
                let max_age = settings.max_age.as_secs();
                let value = self.sign(&settings.cookie, version, unix_now() + max_age, uid);
                format!("{}={value}; Max-Age={max_age}", settings.cookie)
            }
            None => format!("{}=; Max-Age=0", settings.cookie),
        };
        cookie.push_str("; Path=/; HttpOnly; SameSite=Lax");
        if scheme == Scheme::Https {
            cookie.push_str("; Secure");
        }
        if let Some(domain) = &settings.domain {
            cookie.push_str("; Domain=");
            cookie.push_str(domain);
        }
        cookie
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn key() -> ChannelKey {
        ChannelKey::new(b"0123456789abcdef-test-key").unwrap()
    }

    #[test]
    fn a_signed_cookie_verifies() {
        let value = key().sign("gg_channel", "beta", NOW + 60, Some("42"));
        assert!(value.starts_with("beta.1800000060."));
        assert_eq!(
            key().verify("gg_channel", &value, NOW, Some("42")),
            Some("beta")
        );
        let anonymous = key().sign("gg_channel", "beta", NOW + 60, None);
        assert_eq!(
            key().verify("gg_channel", &anonymous, NOW, None),
            Some("beta")
        );
    }

    #[test]
    fn every_forgery_is_ignored() {
        let k = key();
        let good = k.sign("gg_channel", "beta", NOW + 60, Some("42"));
        let (_, rest) = good.split_once('.').unwrap();
        let (_, tag) = rest.split_once('.').unwrap();
        let forged: Vec<(&str, String)> = vec![
            (
                "another version, same MAC",
                format!("dev.{}.{tag}", NOW + 60),
            ),
            (
                "a later expiry, same MAC",
                format!("beta.{}.{tag}", NOW + 6000),
            ),
            ("expired", k.sign("gg_channel", "beta", NOW - 1, Some("42"))),
            ("expires now", k.sign("gg_channel", "beta", NOW, Some("42"))),
            ("truncated MAC", good[..good.len() - 2].to_string()),
            ("no MAC", format!("beta.{}", NOW + 60)),
            ("empty MAC", format!("beta.{}.", NOW + 60)),
            ("only a version", "beta".to_string()),
            ("hand-made", "dev.9999999999.AAAA".to_string()),
            (
                "signed with another key",
                ChannelKey::new(b"another-key-0123456789").unwrap().sign(
                    "gg_channel",
                    "beta",
                    NOW + 60,
                    Some("42"),
                ),
            ),
            (
                "another cookie name",
                k.sign("other", "beta", NOW + 60, Some("42")),
            ),
            (
                "another uid",
                k.sign("gg_channel", "beta", NOW + 60, Some("43")),
            ),
            (
                "made anonymous, used with a uid",
                k.sign("gg_channel", "beta", NOW + 60, None),
            ),
            (
                "expiry with a leading zero",
                format!("beta.0{}.{tag}", NOW + 60),
            ),
            ("not base64", format!("beta.{}.!!!!", NOW + 60)),
            ("huge", "a".repeat(10_000)),
            ("empty", String::new()),
        ];
        for (what, value) in forged {
            assert_eq!(
                k.verify("gg_channel", &value, NOW, Some("42")),
                None,
                "{what}: {value}"
            );
        }
    }

    #[test]
    fn set_cookie_attributes() {
        let settings = ChannelSettings {
            path: "/.canary-deployment".into(),
            cookie: "gg_channel".into(),
            max_age: std::time::Duration::from_secs(30 * 86400),
            domain: Some(".example.com".into()),
        };
        let cookie = key().set_cookie(&settings, Some("beta"), Some("7"), Scheme::Http);
        assert!(cookie.starts_with("gg_channel=beta."), "{cookie}");
        assert!(
            cookie.ends_with(
                "; Max-Age=2592000; Path=/; HttpOnly; SameSite=Lax; Domain=.example.com"
            ),
            "{cookie}"
        );
        assert_eq!(
            key().set_cookie(&settings, None, None, Scheme::Http),
            "gg_channel=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax; Domain=.example.com"
        );
        // Over HTTPS the browser is told never to send it in clear text.
        assert_eq!(
            key().set_cookie(&settings, None, None, Scheme::Https),
            "gg_channel=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax; Secure; Domain=.example.com"
        );
    }
}
