//! The `channels` section (the page where a visitor picks a version: its path, its cookie's
//! name, lifetime and domain) and the `address_api` section (its path and the TTL handed out).

use std::time::Duration;

use super::{is_dotted_name, At, Compiler};
use crate::rules::model::{AddressApiSettings, ChannelSettings};
use crate::rules::raw::{RawAddressApi, RawChannels};

impl Compiler {
    /// The channel page's settings; the defaults when the section is absent.
    pub(super) fn channels(
        &mut self,
        raw: Option<(At, serde_yaml::Value)>,
    ) -> Option<ChannelSettings> {
        let defaults = ChannelSettings::default();
        let Some((at, value)) = raw else {
            return Some(defaults);
        };
        let RawChannels {
            path,
            cookie,
            max_age,
            domain,
        } = self.parse::<RawChannels>(&at, "channels", value)?;
        let path = path.unwrap_or_else(|| defaults.path.to_string());
        if !path.starts_with('/') {
            self.error(&at, format!("channels.path: \"{path}\" must start with /"));
        }
        let cookie = cookie.unwrap_or_else(|| defaults.cookie.to_string());
        if !is_dotted_name(&cookie) {
            self.error(
                &at,
                format!("channels.cookie: \"{cookie}\" is not a cookie name"),
            );
        }
        if let Some(domain) = &domain {
            if !is_dotted_name(domain) || !domain.contains('.') {
                self.error(
                    &at,
                    format!("channels.domain: \"{domain}\" is not a domain like .example.com"),
                );
            }
        }
        let max_age = max_age.map(|d| d.0).unwrap_or(defaults.max_age);
        if max_age.is_zero() {
            self.error(&at, "channels.max_age: must be above 0".into());
        }
        Some(ChannelSettings {
            path: path.into(),
            cookie: cookie.into(),
            max_age,
            domain: domain.map(Into::into),
        })
    }

    /// `None` inside: the section is absent and the address API is off.
    pub(super) fn address_api(
        &mut self,
        raw: Option<(At, serde_yaml::Value)>,
    ) -> Option<Option<AddressApiSettings>> {
        let Some((at, value)) = raw else {
            return Some(None);
        };
        let RawAddressApi { path, ttl } = self.parse::<RawAddressApi>(&at, "address_api", value)?;
        let path = path.unwrap_or_else(|| "/.graygate/address".into());
        if !path.starts_with('/') {
            self.error(
                &at,
                format!("address_api.path: \"{path}\" must start with /"),
            );
        }
        Some(Some(AddressApiSettings {
            path: path.into(),
            ttl: ttl.map(|d| d.0).unwrap_or(Duration::from_secs(60)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::rules::model::Action;
    use crate::rules::testing::{diagnostics, HEAD};

    #[test]
    fn channel_and_address_settings() {
        let model = crate::rules::testing::model(&format!(
            "{HEAD}channels: {{ cookie: gg_ch, max_age: 7d, domain: .example.com }}\naddress_api: {{ ttl: 30s }}\n\
             rules:\n  - {{ name: c, when: {{ channel: [canary] }}, version: $channel }}\n  - {{ name: s, split: {{ by: random, sticky: true, weights: {{ canary: 1 }} }} }}\n"
        ));
        let rules = &model.rules;
        assert!(rules.channel_page);
        assert_eq!(&*rules.channels.path, "/.canary-deployment");
        assert_eq!(&*rules.channels.cookie, "gg_ch");
        assert_eq!(rules.channels.max_age, Duration::from_secs(7 * 86_400));
        let api = rules.address_api.as_ref().unwrap();
        assert_eq!(
            (&*api.path, api.ttl),
            ("/.graygate/address", Duration::from_secs(30))
        );
        assert!(matches!(rules.rules[0].action, Action::Channel));
        assert!(matches!(&rules.rules[1].action, Action::Split(s) if s.sticky));
        assert_eq!(
            diagnostics(&format!(
                "{HEAD}channels: {{ path: page, cookie: \"a b\", domain: localhost }}\nrules:\n  - {{ name: c, when: {{ channel: [nightly] }}, version: canary }}\n"
            )),
            vec![
                "rules.yaml:7: error: channels.path: \"page\" must start with /",
                "rules.yaml:7: error: channels.cookie: \"a b\" is not a cookie name",
                "rules.yaml:7: error: channels.domain: \"localhost\" is not a domain like .example.com",
                "rules.yaml:9: error: rule \"c\": channel names unknown version \"nightly\"",
            ]
        );
    }
}
