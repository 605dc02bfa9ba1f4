//! Validation and compilation of the rules files into the [`model`](super::model).
//!
//! `yaml -> Raw* (serde, deny_unknown_fields) -> validate (all errors, file:line) -> compiled model`
//!
//! Every file of the rules directory is parsed on its own into a [`RawRuleFile`] whose sections
//! stay YAML values; the sections of all files are merged (a name defined twice is an error).
//! Each item is then parsed into its `Raw*` type and validated by the file of its section:
//!
//! - `versions`: the versions and the `default` one;
//! - `identity`: where the uid, the tier and the internal flag come from, and the
//!   `assignments` key;
//! - `services`: hosts, groups, peers, health checks and timeouts;
//! - `rules`: the ordered rules and their actions (a version or a split);
//! - `conditions`: the `when` of a rule or a goal;
//! - `goals`: what counts as a reached goal;
//! - `rollouts`: automated rollouts, each used by one rule's `rollout:` action;
//! - `channels`: the channel page and the address API settings.
//!
//! Every section reports into one sink (`Compiler::error`, `Compiler::warning`) with the
//! file and line of the item; the model is only returned when no error was found. Each raw
//! struct is destructured without `..` where it is compiled, so a field serde accepts cannot
//! be forgotten here.

mod channels;
mod conditions;
mod goals;
mod identity;
mod oversized;
mod rollouts;
mod rules;
mod services;
mod versions;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;
use serde::de::DeserializeOwned;
use xxhash_rust::xxh64::xxh64;

use super::model::{Listeners, RoutingModel, RuleIndex, RuleSet, SplitKey};

use super::raw::RawRuleFile;
use crate::diagnostics::{Diagnostics, Severity, SourceFile};
use crate::facts::VersionId;

pub use conditions::MAX_LIST_ENTRIES;
pub use goals::MAX_GOALS;

/// One rules file's text.
#[derive(Debug, Clone)]
pub struct RuleSource {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its content.
    pub text: String,
}

/// A compiled rules generation with what it was built from.
#[derive(Debug, Clone)]
pub struct LoadedRules {
    /// The compiled model.
    pub model: RoutingModel,
    /// Warnings found (no errors: those reject the load).
    pub warnings: Diagnostics,
    /// The files it was compiled from.
    pub origin: RulesOrigin,
}

/// What a generation was compiled from: enough to tell, from the files read again, that
/// nothing changed without compiling them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RulesOrigin {
    /// The files read, in merge order.
    pub files: Vec<PathBuf>,
    /// XXH64 of every file's name and content, the files the rules name (`tls.ca`) included.
    pub content_hash: u64,
    /// The files the rules named (`tls.ca`): as written, and where they were read.
    named: Vec<(String, PathBuf)>,
}

impl RulesOrigin {
    /// Whether `sources`, just read, are the files this was compiled from with the same
    /// content, and the files the rules name, read again, too: a reload that finds so keeps
    /// the generation serving without compiling anything.
    pub fn is_unchanged_in(&self, sources: &[RuleSource]) -> bool {
        if !self.files.iter().eq(sources.iter().map(|s| &s.path)) {
            return false;
        }
        let mut named = Vec::new();
        for (written, path) in &self.named {
            match std::fs::read(path) {
                Ok(bytes) => push_named(&mut named, written, &bytes),
                Err(_) => return false,
            }
        }
        content_hash(sources, &named) == self.content_hash
    }
}

/// Reads the rules file, or every `*.yaml` / `*.yml` file of the rules directory in name
/// order, and compiles them against the config's `listeners`.
pub fn load(path: &Path, listeners: &Listeners) -> Result<LoadedRules, Diagnostics> {
    compile(&read(path)?, listeners)
}

/// Reads the rules file, or every `*.yaml` / `*.yml` file of the rules directory in name
/// order.
pub fn read(path: &Path) -> Result<Vec<RuleSource>, Diagnostics> {
    let file: Arc<Path> = Arc::from(path);
    let mut diags = Diagnostics::default();
    let paths = if path.is_dir() {
        match std::fs::read_dir(path) {
            Ok(entries) => {
                let mut paths: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.is_file()
                            && matches!(
                                p.extension().and_then(|e| e.to_str()),
                                Some("yaml" | "yml")
                            )
                    })
                    .collect();
                paths.sort();
                if paths.is_empty() {
                    diags.push(
                        Severity::Error,
                        &file,
                        None,
                        "no *.yaml rules file in this directory".into(),
                    );
                }
                paths
            }
            Err(e) => {
                diags.push(
                    Severity::Error,
                    &file,
                    None,
                    format!("cannot read the rules directory: {e}"),
                );
                Vec::new()
            }
        }
    } else {
        vec![path.to_path_buf()]
    };
    let mut sources = Vec::new();
    for path in paths {
        match std::fs::read_to_string(&path) {
            Ok(text) => sources.push(RuleSource { path, text }),
            Err(e) => diags.push(
                Severity::Error,
                &Arc::from(path.as_path()),
                None,
                format!("cannot read: {e}"),
            ),
        }
    }
    if diags.has_errors() {
        return Err(diags);
    }
    Ok(sources)
}

/// Validates and compiles rules files already read, against the config's `listeners` (what
/// `listener:` conditions may name).
pub fn compile(sources: &[RuleSource], listeners: &Listeners) -> Result<LoadedRules, Diagnostics> {
    let mut c = Compiler {
        listeners: listeners.clone(),
        ..Compiler::default()
    };
    let mut merged = Merged::default();
    for source in sources {
        c.add_file(source, &mut merged);
    }
    let model = c.build(merged);
    if model.is_none() && !c.diags.has_errors() {
        c.no_model();
    }
    c.diags.sort();
    match model {
        Some(model) if !c.diags.has_errors() => Ok(LoadedRules {
            model,
            warnings: c.diags,
            origin: RulesOrigin {
                files: sources.iter().map(|s| s.path.clone()).collect(),
                content_hash: content_hash(sources, &c.included),
                named: c.named,
            },
        }),
        _ => Err(c.diags),
    }
}

/// XXH64 of every file's name and content, each followed by a NUL, then of the files the
/// rules named (`included`, already in that form: [`push_named`]). Names, not paths: the
/// same rules loaded from another directory (another instance of the fleet) have the same
/// hash; a reload still compares the paths apart.
fn content_hash(sources: &[RuleSource], included: &[u8]) -> u64 {
    let mut input = Vec::new();
    for source in sources {
        let name = source.path.file_name().unwrap_or(source.path.as_os_str());
        input.extend_from_slice(name.to_string_lossy().as_bytes());
        input.push(0);
        input.extend_from_slice(source.text.as_bytes());
        input.push(0);
    }
    input.extend_from_slice(included);
    xxh64(&input, 0)
}

/// Adds a file the rules named to the `included` part of a content hash: its name as
/// written (the same rules in another directory hash the same) and its bytes, each followed
/// by a NUL.
fn push_named(included: &mut Vec<u8>, written: &str, bytes: &[u8]) {
    included.extend_from_slice(written.as_bytes());
    included.push(0);
    included.extend_from_slice(bytes);
    included.push(0);
}

/// Where an item came from: its file and its path inside that file.
#[derive(Debug, Clone)]
struct At {
    file: usize,
    path: String,
}

impl At {
    /// A top-level key of one file.
    fn top(file: usize, key: &str) -> At {
        At {
            file,
            path: key.into(),
        }
    }

    /// The key `key` of the mapping at this path.
    fn child(&self, key: &str) -> At {
        At {
            file: self.file,
            path: format!("{}.{key}", self.path),
        }
    }

    /// The item at `index` of the list at this path.
    fn item(&self, index: usize) -> At {
        self.child(&index.to_string())
    }
}

/// The sections of every file, still YAML, each with where it was found.
#[derive(Default)]
struct Merged {
    versions: IndexMap<String, (At, serde_yaml::Value)>,
    default: Option<(At, String)>,
    identity: Option<(At, serde_yaml::Value)>,
    assignments: Option<(At, serde_yaml::Value)>,
    services: IndexMap<String, (At, serde_yaml::Value)>,
    rules: Vec<(At, serde_yaml::Value)>,
    goals: Vec<(At, serde_yaml::Value)>,
    channels: Option<(At, serde_yaml::Value)>,
    address_api: Option<(At, serde_yaml::Value)>,
    rollouts: IndexMap<String, (At, serde_yaml::Value)>,
}

/// The files read so far and the diagnostics every section reports into.
#[derive(Default)]
struct Compiler {
    files: Vec<SourceFile>,
    diags: Diagnostics,
    /// A file could not be parsed: what seems missing from the set may be in it.
    unparsed_file: bool,
    /// Version names, once the versions are compiled.
    version_names: HashMap<String, VersionId>,
    /// The path and bytes of every other file the rules read (`tls.ca`), each followed by a
    /// NUL: part of the content hash ([`push_named`]).
    included: Vec<u8>,
    /// Those files: as written, and where they were read.
    named: Vec<(String, PathBuf)>,
    /// The config's proxy listeners.
    listeners: Listeners,
    /// Rollout names, once the rollouts are compiled (those without errors).
    rollout_names: HashMap<String, usize>,
    /// Where each rollout was defined, errors or not.
    rollout_defined: HashMap<String, At>,
}

impl Compiler {
    /// Records an error at the line of `at`.
    fn error(&mut self, at: &At, message: String) {
        self.report(Severity::Error, at, message);
    }

    /// Records a warning at the line of `at`.
    fn warning(&mut self, at: &At, message: String) {
        self.report(Severity::Warning, at, message);
    }

    fn report(&mut self, severity: Severity, at: &At, message: String) {
        let file = &self.files[at.file];
        let line = file.line(&at.path);
        let path = file.path.clone();
        self.diags.push(severity, &path, line, message);
    }

    /// Records an error about a section the merged set lacks: at the first file, without a
    /// line. Nothing is said when a file could not be parsed, as the section may be in it.
    fn missing(&mut self, message: &str) {
        if self.unparsed_file {
            return;
        }
        if let Some(file) = self.files.first() {
            let path = file.path.clone();
            self.diags
                .push(Severity::Error, &path, None, message.into());
        }
    }

    /// Records that no model was built although no error says why: with no file at all, or
    /// by a defect of this compiler (a section returned nothing without reporting).
    fn no_model(&mut self) {
        let (path, message) = match self.files.first() {
            None => (Arc::from(Path::new("<rules>")), "no rules file to compile"),
            Some(file) => (
                file.path.clone(),
                "internal error: no model was built, yet no error was found",
            ),
        };
        self.diags
            .push(Severity::Error, &path, None, message.into());
    }

    /// `file:line` of `at`, for messages that point at a first definition.
    fn describe(&self, at: &At) -> String {
        let file = &self.files[at.file];
        match file.line(&at.path) {
            Some(line) => format!("{}:{line}", file.path.display()),
            None => file.path.display().to_string(),
        }
    }

    /// Parses one item; a failure is reported at the item's line.
    fn parse<T: DeserializeOwned>(
        &mut self,
        at: &At,
        what: &str,
        value: serde_yaml::Value,
    ) -> Option<T> {
        match serde_yaml::from_value(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(at, format!("{what}: {e}"));
                None
            }
        }
    }

    fn add_file(&mut self, source: &RuleSource, merged: &mut Merged) {
        let index = self.files.len();
        self.files.push(SourceFile::new(&source.path, &source.text));
        let oversized = oversized::oversized_lists(&source.text);
        if !oversized.is_empty() {
            // Refused before it is parsed into values (`oversized.rs`): the rest of the file
            // is not checked, and what seems missing from the set may be in it.
            let path = self.files[index].path.clone();
            for list in oversized {
                self.diags
                    .push(Severity::Error, &path, Some(list.line), list.message);
            }
            self.unparsed_file = true;
            return;
        }
        let raw: RawRuleFile = match serde_yaml::from_str::<Option<RawRuleFile>>(&source.text) {
            Ok(raw) => raw.unwrap_or_default(),
            Err(e) => {
                let path = self.files[index].path.clone();
                crate::config::yaml_error(&mut self.diags, &path, &e);
                self.unparsed_file = true;
                return;
            }
        };
        let RawRuleFile {
            versions,
            default,
            identity,
            assignments,
            services,
            rules,
            goals,
            channels,
            address_api,
            rollouts,
        } = raw;
        self.merge_named(index, "versions", "version", versions, &mut merged.versions);
        self.merge_named(index, "rollouts", "rollout", rollouts, &mut merged.rollouts);
        self.merge_named(index, "services", "service", services, &mut merged.services);
        let rules_at = At::top(index, "rules");
        for (i, value) in rules.into_iter().flatten().enumerate() {
            merged.rules.push((rules_at.item(i), value));
        }
        let goals_at = At::top(index, "goals");
        for (i, value) in goals.into_iter().flatten().enumerate() {
            merged.goals.push((goals_at.item(i), value));
        }
        self.once(index, "default", default, &mut merged.default);
        self.once(index, "identity", identity, &mut merged.identity);
        self.once(index, "assignments", assignments, &mut merged.assignments);
        self.once(index, "channels", channels, &mut merged.channels);
        self.once(index, "address_api", address_api, &mut merged.address_api);
    }

    /// Adds a file's named items (versions, services) to the merged set; a name defined
    /// twice is an error at the second definition.
    fn merge_named(
        &mut self,
        file: usize,
        section: &str,
        kind: &str,
        items: Option<IndexMap<String, serde_yaml::Value>>,
        merged: &mut IndexMap<String, (At, serde_yaml::Value)>,
    ) {
        let section_at = At::top(file, section);
        for (name, value) in items.into_iter().flatten() {
            let at = section_at.child(&name);
            if let Some((first, _)) = merged.get(&name) {
                let msg = format!(
                    "{kind} \"{name}\" is defined twice (first at {})",
                    self.describe(first)
                );
                self.error(&at, msg);
            } else {
                merged.insert(name, (at, value));
            }
        }
    }

    /// Keeps a section that may be defined in one file only.
    fn once<T>(&mut self, file: usize, key: &str, value: Option<T>, slot: &mut Option<(At, T)>) {
        let Some(value) = value else { return };
        let at = At::top(file, key);
        if let Some((first, _)) = slot {
            let msg = format!("{key} is defined twice (first at {})", self.describe(first));
            self.error(&at, msg);
        } else {
            *slot = Some((at, value));
        }
    }

    /// Compiles every section; `None` when one of them could not be built, which that
    /// section has reported.
    fn build(&mut self, merged: Merged) -> Option<RoutingModel> {
        let Merged {
            versions,
            default,
            identity,
            assignments,
            services,
            rules,
            goals,
            channels,
            address_api,
            rollouts,
        } = merged;
        let versions = self.versions(&versions);
        self.version_names = versions
            .iter()
            .enumerate()
            .map(|(i, v)| (v.name.to_string(), VersionId(i as u16)))
            .collect();
        let channel_page = channels.is_some();
        let channels = self.channels(channels);
        let address_api = self.address_api(address_api);
        let default = self.default_version(default);
        let identity = self.identity(identity);
        let assignments = self.assignments(assignments);
        let services = self.services(services, default, &versions);
        let goals = self.goals(goals);
        let mut rollouts = self.rollouts(rollouts, &versions, default, &goals);
        let mut uses = Vec::new();
        let rules = self.rules(rules, &versions, &mut uses);
        self.link_rollouts(&mut rollouts, uses);
        if versions.is_empty() {
            self.missing("versions: at least one version is needed");
        }
        let passing_cookies = match (&channels, &identity) {
            (Some(channels), Some(identity)) => Self::passing_cookies(channels, identity),
            _ => Vec::new(),
        };
        let index = RuleIndex::build(&rules);
        Some(RoutingModel {
            rules: RuleSet {
                versions,
                default: default?,
                identity: identity?,
                rules,
                goals,
                rollouts,
                assignments: assignments?,
                channels: channels?,
                channel_page,
                address_api: address_api?,
                passing_cookies,
                listeners: self.listeners.clone(),
                index,
            },
            services,
        })
    }
}

/// The key a split or a rollout hashes: `uid`, `client_ip`, `random`, `cookie:NAME` or
/// `header:NAME`.
fn split_key(text: &str) -> Option<SplitKey> {
    match text {
        "uid" => Some(SplitKey::Uid),
        "client_ip" => Some(SplitKey::ClientIp),
        "random" => Some(SplitKey::Random),
        other => match other.split_once(':') {
            Some(("cookie", name)) if !name.is_empty() => Some(SplitKey::Cookie(name.into())),
            Some(("header", name)) => http::header::HeaderName::from_bytes(name.as_bytes())
                .ok()
                .map(SplitKey::Header),
            _ => None,
        },
    }
}

/// A version or service name: letters, digits, '-' and '_', at most 64.
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A rule or goal name: letters, digits, '-', '_' and '.', at most 128.
fn is_rule_name(name: &str) -> bool {
    name.len() <= 128 && is_dotted_name(name)
}

/// Letters, digits, '-', '_' and '.', at least one: rule names, host names, cookie names.
fn is_dotted_name(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A checked name as a header value. Names are checked by [`is_name`] or [`is_rule_name`]
/// first, and a set with an error is never served, so the fallback is never sent.
fn header_value(name: &str) -> http::HeaderValue {
    http::HeaderValue::from_str(name).unwrap_or(http::HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::testing::{diagnostics, HEAD};

    #[test]
    fn unknown_top_level_key_and_bad_yaml_have_lines() {
        assert_eq!(
            diagnostics(&format!("{HEAD}rulez: []\n")),
            vec!["rules.yaml:7: error: unknown field `rulez`, expected one of `versions`, `default`, `identity`, `assignments`, `services`, `rules`, `goals`, `channels`, `address_api`, `rollouts`"]
        );
        let bad = diagnostics("versions: { stable: {}\ndefault: stable\n");
        assert_eq!(bad.len(), 1);
        assert!(bad[0].starts_with("rules.yaml:2: error: "), "{bad:?}");
    }

    #[test]
    fn names_defined_twice_across_files() {
        let sources = [
            RuleSource { path: "a.yaml".into(), text: HEAD.into() },
            RuleSource { path: "b.yaml".into(), text: "default: canary\nservices:\n  web:\n    hosts: [\"*\"]\n    groups: { stable: { peers: [\"127.0.0.1:1\"] } }\n".into() },
        ];
        let errors: Vec<String> = compile(&sources, &Listeners::default())
            .unwrap_err()
            .items()
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(
            errors,
            vec![
                "b.yaml:1: error: default is defined twice (first at a.yaml:2)",
                "b.yaml:3: error: service \"web\" is defined twice (first at a.yaml:4)",
            ]
        );
    }

    #[test]
    fn no_file_is_an_error() {
        let errors: Vec<String> = compile(&[], &Listeners::default())
            .unwrap_err()
            .items()
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(errors, vec!["<rules>: error: no rules file to compile"]);
    }
}
