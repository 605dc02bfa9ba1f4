//! A file in `state.dir` that survives crashes: written to a temporary file, `fsync`ed,
//! renamed over the old one, and the directory `fsync`ed, so a crash leaves the old content or
//! the new, never half of one. The rollouts' records and the emergency override live in such
//! files.

use std::io::Write;
use std::path::{Path, PathBuf};

/// One durable file: `name` in a directory created on the first write.
#[derive(Debug, Clone)]
pub struct DurableFile {
    dir: PathBuf,
    name: &'static str,
}

impl DurableFile {
    /// The file `name` in `dir`.
    pub fn new(dir: &Path, name: &'static str) -> DurableFile {
        DurableFile {
            dir: dir.to_path_buf(),
            name,
        }
    }

    /// Its path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(self.name)
    }

    /// Its content; `None` when there is no such file.
    pub fn read(&self) -> std::io::Result<Option<String>> {
        match std::fs::read_to_string(self.path()) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces its content with `text`, atomically and durably.
    pub fn write(&self, text: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(".{}.tmp", self.name));
        {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, self.path())?;
        // The rename itself is durable once the directory is.
        std::fs::File::open(&self.dir)?.sync_all()
    }
}
