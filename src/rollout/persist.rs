//! Where rollout records survive a restart: `rollouts.json` in `state.dir`, written atomically
//! (a temporary file, `fsync`, `rename`, `fsync` of the directory), so a crash leaves the old
//! file or the new one, never half of one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::machine::Stored;

/// The format written; any other is read as unreadable (the rollouts restart paused).
const FORMAT: u32 = 1;

/// The file's content.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    format: u32,
    rollouts: BTreeMap<String, Stored>,
}

/// What was found at start.
#[derive(Debug)]
pub enum Loaded {
    /// No file: a first start.
    Missing,
    /// The stored records, by rollout name.
    Records(BTreeMap<String, Stored>),
    /// A file that could not be read or parsed, or of another format, and why.
    Unreadable(String),
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// The records in `dir`.
    pub fn new(dir: &Path) -> StateDir {
        StateDir {
            dir: dir.to_path_buf(),
        }
    }

    /// The file the records live in.
    pub fn file(&self) -> PathBuf {
        self.dir.join("rollouts.json")
    }

    /// Reads the records.
    pub fn load(&self) -> Loaded {
        let path = self.file();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
            Err(e) => return Loaded::Unreadable(format!("{}: {e}", path.display())),
        };
        #[derive(Deserialize)]
        struct Version {
            format: u32,
        }
        match serde_json::from_str::<Version>(&text) {
            Ok(v) if v.format != FORMAT => {
                return Loaded::Unreadable(format!(
                    "{}: format {} is not {FORMAT}",
                    path.display(),
                    v.format
                ))
            }
            Err(e) => return Loaded::Unreadable(format!("{}: {e}", path.display())),
            Ok(_) => {}
        }
        match serde_json::from_str::<StateFile>(&text) {
            Ok(file) => Loaded::Records(file.rollouts),
            Err(e) => Loaded::Unreadable(format!("{}: {e}", path.display())),
        }
    }

    /// Writes the records atomically.
    pub fn save(&self, rollouts: BTreeMap<String, Stored>) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let text = serde_json::to_vec_pretty(&StateFile {
            format: FORMAT,
            rollouts,
        })
        .map_err(std::io::Error::other)?;
        let path = self.file();
        let tmp = self.dir.join(".rollouts.json.tmp");
        {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&text)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        // The rename itself is durable once the directory is.
        std::fs::File::open(&self.dir)?.sync_all()
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
        state.save(records.clone()).unwrap();
        match state.load() {
            Loaded::Records(back) => assert_eq!(back, records),
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
        assert!(state.save(BTreeMap::new()).is_err());
        assert!(matches!(
            state.load(),
            Loaded::Missing | Loaded::Unreadable(_)
        ));
    }
}
