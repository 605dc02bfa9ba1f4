//! Errors and warnings found while loading configuration, each tied to a file and a line.
//!
//! Loading never stops at the first problem: every stage pushes what it finds into one
//! [`Diagnostics`] list so that `graygate check` (and a failed reload) can report all of them.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// How serious a diagnostic is: errors reject the configuration, warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The configuration is rejected.
    Error,
    /// The configuration is accepted, but probably not what the operator meant.
    Warning,
}

/// One problem found in one file, at one line when it is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file the problem is in.
    pub file: Arc<Path>,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match self.line {
            Some(line) => write!(
                f,
                "{}:{}: {}: {}",
                self.file.display(),
                line,
                severity,
                self.message
            ),
            None => write!(f, "{}: {}: {}", self.file.display(), severity, self.message),
        }
    }
}

/// The problems found while loading; errors make the whole load fail.
#[derive(Debug, Default, Clone)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// Records a problem.
    pub fn push(
        &mut self,
        severity: Severity,
        file: &Arc<Path>,
        line: Option<usize>,
        message: String,
    ) {
        self.items.push(Diagnostic {
            severity,
            file: file.clone(),
            line,
            message,
        });
    }

    /// Every diagnostic, in the order found.
    pub fn items(&self) -> &[Diagnostic] {
        &self.items
    }

    /// Only the errors.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter().filter(|d| d.severity == Severity::Error)
    }

    /// Only the warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }

    /// Whether any error was found.
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }

    /// Orders the list by file, then line (stable: same-line items keep their order).
    pub fn sort(&mut self) {
        self.items
            .sort_by(|a, b| a.file.cmp(&b.file).then(a.line.cmp(&b.line)));
    }

    /// Appends another list.
    pub fn extend(&mut self, other: Diagnostics) {
        self.items.extend(other.items);
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.items {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// One YAML file: its text, its path and where each node starts.
///
/// Paths are written with `.` between segments: `rules.2.when.uid_tail`,
/// `services.web.groups.stable.peers.0`. The index of lines is built on the first question:
/// a file that loads without a diagnostic is parsed once (by serde), not twice; for 10,000
/// rules the index alone costs about as much as that parse.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The file's path as given.
    pub path: Arc<Path>,
    text: Arc<str>,
    lines: Arc<OnceLock<HashMap<String, usize>>>,
}

impl SourceFile {
    /// Keeps `text` (read from `path`) to index it when a line is first asked. A YAML syntax
    /// error leaves the index empty; serde reports it with its own line.
    pub fn new(path: &Path, text: &str) -> Self {
        SourceFile {
            path: Arc::from(path),
            text: Arc::from(text),
            lines: Arc::default(),
        }
    }

    fn lines(&self) -> &HashMap<String, usize> {
        self.lines.get_or_init(|| {
            let mut recv = LineRecorder::default();
            let _ = Parser::new_from_str(&self.text).load(&mut recv, false);
            recv.lines
        })
    }

    /// The line of the node at `path`, or of its nearest ancestor that has one.
    pub fn line(&self, path: &str) -> Option<usize> {
        let lines = self.lines();
        let mut path = path;
        loop {
            if let Some(line) = lines.get(path) {
                return Some(*line);
            }
            path = &path[..path.rfind('.')?];
        }
    }

    /// The file's path, owned.
    pub fn path_buf(&self) -> PathBuf {
        self.path.to_path_buf()
    }
}

#[derive(Debug)]
enum Frame {
    Map {
        key: Option<String>,
    },
    /// `line`: the line a lookup of the sequence's own path answers.
    Seq {
        next: usize,
        line: Option<usize>,
    },
}

#[derive(Default)]
struct LineRecorder {
    path: Vec<String>,
    frames: Vec<Frame>,
    lines: HashMap<String, usize>,
}

impl LineRecorder {
    /// What [`SourceFile::line`] will answer for the current path.
    fn line_of_path(&self) -> Option<usize> {
        (0..=self.path.len())
            .rev()
            .find_map(|n| self.lines.get(&self.path[..n].join(".")).copied())
    }

    fn record(&mut self, mark: &Marker) {
        self.lines.entry(self.path.join(".")).or_insert(mark.line());
    }

    /// Enters a node; `scalar`: a scalar or an alias, which has no nodes inside.
    fn enter_value(&mut self, mark: &Marker, scalar: bool) {
        match self.frames.last_mut() {
            Some(Frame::Map { key: Some(key) }) => {
                let key = key.clone();
                self.path.push(key);
            }
            Some(Frame::Seq { next, line }) => {
                // A scalar on its sequence's line has that line already (`line` falls back
                // to the sequence): a flow list of a million uids adds no entries.
                let same_line = scalar && *line == Some(mark.line());
                let index = next.to_string();
                self.path.push(index);
                if !same_line {
                    self.record(mark);
                }
            }
            _ => {}
        }
    }

    fn leave_value(&mut self) {
        match self.frames.last_mut() {
            Some(Frame::Map { key }) => {
                let had_key = key.take().is_some();
                if had_key {
                    self.path.pop();
                }
            }
            Some(Frame::Seq { next, .. }) => {
                *next += 1;
                self.path.pop();
            }
            None => {}
        }
    }
}

impl MarkedEventReceiver for LineRecorder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(text, ..) => {
                match self.frames.last_mut() {
                    Some(Frame::Map { key }) if key.is_none() => {
                        *key = Some(text.clone());
                        self.path.push(text);
                        self.record(&mark);
                        self.path.pop();
                        return;
                    }
                    // An item on its sequence's line records nothing (see `enter_value`):
                    // count it without building its path, so a million-item flow list costs
                    // the parse alone.
                    Some(Frame::Seq { next, line }) if *line == Some(mark.line()) => {
                        *next += 1;
                        return;
                    }
                    _ => {}
                }
                self.enter_value(&mark, true);
                self.leave_value();
            }
            Event::Alias(_) => {
                self.enter_value(&mark, true);
                self.leave_value();
            }
            Event::MappingStart(..) => {
                self.enter_value(&mark, false);
                self.frames.push(Frame::Map { key: None });
            }
            Event::SequenceStart(..) => {
                self.enter_value(&mark, false);
                let line = self.line_of_path();
                self.frames.push(Frame::Seq { next: 0, line });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.frames.pop();
                self.leave_value();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_nested_nodes() {
        let text = "versions:\n  stable: {}\nrules:\n  - name: a\n    version: stable\n  - name: b\n    when: { uid_tail: [1, 2] }\n    version: canary\n";
        let file = SourceFile::new(Path::new("r.yaml"), text);
        assert_eq!(file.line("versions"), Some(1));
        assert_eq!(file.line("versions.stable"), Some(2));
        assert_eq!(file.line("rules.0"), Some(4));
        assert_eq!(file.line("rules.0.version"), Some(5));
        assert_eq!(file.line("rules.1"), Some(6));
        assert_eq!(file.line("rules.1.when.uid_tail"), Some(7));
        assert_eq!(file.line("rules.1.version"), Some(8));
        // A path with no node of its own falls back to its nearest ancestor.
        assert_eq!(file.line("rules.1.when.uid_tail.7"), Some(7));
        assert_eq!(file.line("nowhere"), None);
    }

    #[test]
    fn list_items_keep_their_lines() {
        let text = "peers:\n  - a\n  - b\nuids: [1, 2,\n  3]\nnested: [[x], y]\n";
        let file = SourceFile::new(Path::new("r.yaml"), text);
        assert_eq!(file.line("peers.0"), Some(2));
        assert_eq!(file.line("peers.1"), Some(3));
        // Items on their list's line are not recorded one by one, yet have that line.
        assert_eq!(file.line("uids.1"), Some(4));
        assert_eq!(file.line("uids.2"), Some(5));
        assert_eq!(file.line("nested.0.0"), Some(6));
        assert_eq!(file.lines().len(), 7, "{:?}", file.lines());
    }

    #[test]
    fn display_has_file_and_line() {
        let mut d = Diagnostics::default();
        let file: Arc<Path> = Arc::from(Path::new("rules/a.yaml"));
        d.push(
            Severity::Error,
            &file,
            Some(3),
            "unknown version \"x\"".into(),
        );
        assert_eq!(
            d.to_string(),
            "rules/a.yaml:3: error: unknown version \"x\"\n"
        );
        assert!(d.has_errors());
    }
}
