//! The routing model: versions, identity, services and the ordered rules.
//!
//! `rules/*.yaml -> raw (serde, unknown keys rejected) -> compile (every error with file and
//! line) -> model -> decide (pure)`. Raw types never reach the request path.

pub mod compile;
pub mod decide;
pub mod index;
pub mod matcher;
pub mod model;
pub mod raw;
pub mod sets;

pub use compile::{compile, load, read, LoadedRules, RuleSource, RulesOrigin};
pub use decide::{decide, explain, Decision, Explanation};

/// Helpers for tests: compile YAML text and build requests.
#[cfg(test)]
pub(crate) mod testing {
    use super::compile::{compile, RuleSource};
    use super::model::RoutingModel;

    /// The start of a rules file: versions stable and canary, default stable, and a
    /// service `web` on every host; sections such as `rules:` may follow.
    pub const HEAD: &str = "versions: { stable: {}, canary: {} }\ndefault: stable\nservices:\n  web:\n    hosts: [\"*\"]\n    groups: { stable: { peers: [\"127.0.0.1:1\"] } }\n";

    /// Compiles one rules file, panicking with every diagnostic on failure.
    pub fn model(yaml: &str) -> RoutingModel {
        compile(
            &[RuleSource {
                path: "rules.yaml".into(),
                text: yaml.to_string(),
            }],
            &Default::default(),
        )
        .unwrap_or_else(|d| panic!("rules do not compile:\n{d}"))
        .model
    }

    /// Runs `f` on a GET request carrying `uid` in its query string.
    pub fn with_query_uid<R>(uid: &str, f: impl FnOnce(crate::facts::RequestView) -> R) -> R {
        let headers = http::HeaderMap::new();
        let query = format!("uid={uid}");
        f(crate::facts::RequestView {
            method: &http::Method::GET,
            host: "h",
            path: "/",
            query: Some(&query),
            headers: &headers,
            client_ip: None,
            arrival: Default::default(),
        })
    }

    /// The diagnostics (errors and warnings) of one rules file, as printed by `check`.
    pub fn diagnostics(yaml: &str) -> Vec<String> {
        let sources = [RuleSource {
            path: "rules.yaml".into(),
            text: yaml.to_string(),
        }];
        match compile(&sources, &Default::default()) {
            Ok(loaded) => loaded
                .warnings
                .items()
                .iter()
                .map(|d| d.to_string())
                .collect(),
            Err(diags) => diags.items().iter().map(|d| d.to_string()).collect(),
        }
    }
}
