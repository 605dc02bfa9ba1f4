//! Where rollout records survive a restart: `rollouts.json` in `state.dir`, a [`DurableFile`]
//! (written atomically: a crash leaves the old file or the new one). With `redis:` configured
//! the fleet shares the same document under the Redis key [`REDIS_KEY`], so an instance started
//! on a fresh disk (a new pod) takes the state up from there; of two copies the newer wins.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::machine::Stored;
use crate::state::durable::DurableFile;

/// The Redis key of the fleet's document (SPEC section 13).
pub const REDIS_KEY: &str = "graygate:state:rollouts";

/// The format written; any other is read as unreadable (the rollouts restart paused).
const FORMAT: u32 = 1;

/// The file's content (and the fleet's copy in Redis).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    format: u32,
    /// When it was written, Unix milliseconds: of two copies, the newer wins.
    #[serde(default)]
    saved_unix_ms: u64,
    rollouts: BTreeMap<String, Stored>,
}

/// A saved document: the records, and when they were saved.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    /// Unix milliseconds.
    pub at_unix_ms: u64,
    /// By rollout name.
    pub records: BTreeMap<String, Stored>,
}

/// The document's text for `records` saved at `at_unix_ms`.
pub fn document(at_unix_ms: u64, records: BTreeMap<String, Stored>) -> String {
    let file = StateFile {
        format: FORMAT,
        saved_unix_ms: at_unix_ms,
        rollouts: records,
    };
    // Plain data (strings, numbers, maps): serializing cannot fail.
    serde_json::to_string_pretty(&file).unwrap_or_default()
}

/// Reads a document (from the file or Redis); `Err` says why it is unreadable.
pub fn parse(text: &str) -> Result<Saved, String> {
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    match serde_json::from_str::<Format>(text) {
        Ok(v) if v.format != FORMAT => return Err(format!("format {} is not {FORMAT}", v.format)),
        Err(e) => return Err(e.to_string()),
        Ok(_) => {}
    }
    serde_json::from_str::<StateFile>(text)
        .map(|file| Saved {
            at_unix_ms: file.saved_unix_ms,
            records: file.rollouts,
        })
        .map_err(|e| e.to_string())
}

/// What was found at start.
#[derive(Debug)]
pub enum Loaded {
    /// No file: a first start.
    Missing,
    /// The stored records.
    Records(Saved),
    /// A file that could not be read or parsed, or of another format, and why.
    Unreadable(String),
}

/// The records' file in the state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    file: DurableFile,
}

impl StateDir {
    /// The records in `dir`.
    pub fn new(dir: &Path) -> StateDir {
        StateDir {
            file: DurableFile::new(dir, "rollouts.json"),
        }
    }

    /// The file the records live in.
    pub fn file(&self) -> PathBuf {
        self.file.path()
    }

    /// Reads the records.
    pub fn load(&self) -> Loaded {
        let text = match self.file.read() {
            Ok(Some(text)) => text,
            Ok(None) => return Loaded::Missing,
            Err(e) => return Loaded::Unreadable(format!("{}: {e}", self.file().display())),
        };
        match parse(&text) {
            Ok(saved) => Loaded::Records(saved),
            Err(why) => Loaded::Unreadable(format!("{}: {why}", self.file().display())),
        }
    }

    /// Writes a [`document`] atomically.
    pub fn save(&self, document: &str) -> std::io::Result<()> {
        self.file.write(document)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::model::Phase;

    fn stored() -> Stored {
        Stored {
            phase: Phase::Progressing,
            step: 1,
            fingerprint: 42,
            step_elapsed_ms: 1500,
            failures: 0,
            last_passed: true,
            since_unix_ms: 1,
            checks: Default::default(),
            events: Default::default(),
        }
    }

    #[test]
    fn records_round_trip_and_bad_files_are_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(&dir.path().join("nested"));
        assert!(matches!(state.load(), Loaded::Missing));
        let records = BTreeMap::from([("ramp".to_string(), stored())]);
        state.save(&document(7, records.clone())).unwrap();
        match state.load() {
            Loaded::Records(back) => assert_eq!(
                back,
                Saved {
                    at_unix_ms: 7,
                    records
                }
            ),
            other => panic!("{other:?}"),
        }
        for (text, says) in [
            (
                "{\"format\": 1, \"rollouts\": {\"ramp\": 7}}",
                "invalid type",
            ),
            ("{\"format\": 0, \"rollouts\": {}}", "format 0 is not 1"),
            ("not json", "expected ident"),
            ("", "EOF"),
        ] {
            std::fs::write(state.file(), text).unwrap();
            match state.load() {
                Loaded::Unreadable(why) => assert!(why.contains(says), "{text}: {why}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_directory_that_refuses_the_write_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        // A "directory" below a plain file cannot be created.
        let state = StateDir::new(&blocker.join("state"));
        assert!(state.save(&document(1, BTreeMap::new())).is_err());
        assert!(matches!(
            state.load(),
            Loaded::Missing | Loaded::Unreadable(_)
        ));
    }
}
