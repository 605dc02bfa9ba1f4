//! The `versions` section and the `default` version: names that are valid header values,
//! a known default, and references to versions by name from the other sections.

use std::sync::Arc;

use indexmap::IndexMap;

use super::{header_value, is_name, At, Compiler};
use crate::facts::VersionId;
use crate::rules::model::Version;
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
            } = v;
            versions.push(Version {
                name: Arc::from(name.as_str()),
                header_value: header_value(name),
                description: description.unwrap_or_default(),
                selectable,
                restricted,
            });
        }
        if versions.len() > u16::MAX as usize {
            let at = raw[0].0.clone();
            self.error(&at, "versions: too many".into());
        }
        versions
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
    use crate::rules::testing::diagnostics;

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
