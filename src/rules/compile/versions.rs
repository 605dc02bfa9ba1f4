//! The `versions` section and the `default` version: names that are valid header values,
//! a known default, and references to versions by name from the other sections.

use std::sync::Arc;

use indexmap::IndexMap;

use super::{header_value, is_name, At, Compiler};
use crate::facts::identity::{Identity, Source};
use crate::facts::VersionId;
use crate::rules::model::{ChannelSettings, CookiePolicy, Version};
use crate::rules::raw::RawVersion;

impl Compiler {
    /// The versions in the order written: a version's id is its position.
    pub(super) fn versions(
        &mut self,
        raw: &IndexMap<String, (At, serde_yaml::Value)>,
    ) -> Vec<Version> {
        let mut versions = Vec::new();
        for (name, (at, value)) in raw {
            if !is_name(name) {
                self.error(
                    at,
                    format!("version \"{name}\": names may only use letters, digits, '-' and '_'"),
                );
            }
            // `stable:` with nothing after it is a version with every setting left out.
            let value = if value.is_null() {
                serde_yaml::Value::Mapping(Default::default())
            } else {
                value.clone()
            };
            let Some(v) = self.parse::<RawVersion>(at, &format!("version \"{name}\""), value)
            else {
                continue;
            };
            let RawVersion {
                description,
                selectable,
                restricted,
                cookies,
            } = v;
            let cookies = match cookies.as_deref() {
                None => CookiePolicy::Shared,
                Some(text) => CookiePolicy::parse(text, name).unwrap_or_else(|| {
                    self.error(
                        at,
                        format!("version \"{name}\": cookies: \"{text}\" is neither isolated nor shared"),
                    );
                    CookiePolicy::Shared
                }),
            };
            versions.push(Version {
                name: Arc::from(name.as_str()),
                header_value: header_value(name),
                description: description.unwrap_or_default(),
                selectable,
                restricted,
                cookies,
            });
        }
        if versions.len() > u16::MAX as usize {
            let at = raw[0].0.clone();
            self.error(&at, "versions: too many".into());
        }
        versions
    }

    /// The cookies that pass to every version unchanged (SPEC section 15): the channel
    /// cookie and the identity cookies, each name once.
    pub(super) fn passing_cookies(
        channels: &ChannelSettings,
        identity: &Identity,
    ) -> Vec<Box<str>> {
        let mut names: Vec<Box<str>> = vec![channels.cookie.clone()];
        for source in identity.uid.iter().chain(&identity.tier.sources) {
            if let Source::Cookie(name) = source {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        names
    }

    /// The version that serves when no rule decides.
    pub(super) fn default_version(&mut self, raw: Option<(At, String)>) -> Option<VersionId> {
        let Some((at, name)) = raw else {
            self.missing("default: missing; name the version that serves when no rule decides");
            return None;
        };
        self.version_ref(&at, "default", &name)
    }

    /// The version called `name`; an unknown name is an error of `what`.
    pub(super) fn version_ref(&mut self, at: &At, what: &str, name: &str) -> Option<VersionId> {
        let id = self.version_names.get(name).copied();
        if id.is_none() {
            self.error(at, format!("{what}: unknown version \"{name}\""));
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::model::CookiePolicy;
    use crate::rules::testing::{diagnostics, model};

    const SERVICES: &str = "default: stable\nservices:\n  web:\n    hosts: [\"*\"]\n    groups: { stable: { peers: [\"127.0.0.1:1\"] } }\n";

    #[test]
    fn cookie_policies() {
        let rules = model(&format!(
            "versions:\n  stable: {{}}\n  beta: {{ cookies: shared }}\n  dev-eu_2: {{ selectable: true, restricted: true, cookies: isolated }}\n{SERVICES}"
        ))
        .rules;
        let policies: Vec<&CookiePolicy> = rules.versions.iter().map(|v| &v.cookies).collect();
        assert_eq!(
            policies,
            [
                &CookiePolicy::Shared,
                &CookiePolicy::Shared,
                &CookiePolicy::Isolated {
                    namespace: "gg.dev-eu_2.".into()
                },
            ]
        );
        assert_eq!(
            diagnostics(&format!(
                "versions:\n  stable: {{}}\n  dev: {{ cookies: separate }}\n  qa: {{ cookies: Isolated }}\n  ops: {{ cookies: [isolated] }}\n  ci: {{ cookie: isolated }}\n{SERVICES}"
            )),
            vec![
                "rules.yaml:3: error: version \"dev\": cookies: \"separate\" is neither isolated nor shared",
                "rules.yaml:4: error: version \"qa\": cookies: \"Isolated\" is neither isolated nor shared",
                "rules.yaml:5: error: version \"ops\": invalid type: sequence, expected a string",
                "rules.yaml:6: error: version \"ci\": unknown field `cookie`, expected one of `description`, `selectable`, `restricted`, `cookies`",
            ]
        );
    }

    fn names(names: &[Box<str>]) -> Vec<&str> {
        names.iter().map(|n| &**n).collect()
    }

    #[test]
    fn passing_cookies_are_the_channel_and_identity_cookies() {
        let rules = model(&format!("versions: {{ stable: {{}} }}\n{SERVICES}")).rules;
        // The default identity reads the uid from cookie:uid, header:X-User-Id, query:uid.
        assert_eq!(names(&rules.passing_cookies), ["gg_channel", "uid"]);
        let rules = model(&format!(
            "versions: {{ stable: {{}} }}\n{SERVICES}channels: {{ cookie: gg_ch }}\n\
             identity:\n  uid: [header:X-User-Id, cookie:user, cookie:uid]\n  tier: {{ sources: [cookie:plan, cookie:user, query:tier] }}\n"
        ))
        .rules;
        assert_eq!(
            names(&rules.passing_cookies),
            ["gg_ch", "user", "uid", "plan"]
        );
    }

    #[test]
    fn missing_default_and_default_group() {
        assert_eq!(
            diagnostics("versions: { stable: {} }\n"),
            vec!["rules.yaml: error: default: missing; name the version that serves when no rule decides"]
        );
        assert_eq!(
            diagnostics("versions: { stable: {}, canary: {} }\ndefault: stable\nservices:\n  web:\n    hosts: [\"*\"]\n    groups:\n      canary: { peers: [\"127.0.0.1:1\"] }\n"),
            vec!["rules.yaml:6: error: service \"web\": no group for the default version \"stable\""]
        );
    }
}
