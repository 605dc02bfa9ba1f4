//! The one piece of hot state: the current rules generation, swapped atomically.
//!
//! A request loads the snapshot once (in `new_ctx`) and uses that generation to the end,
//! whatever reloads happen meanwhile. A reload compiles the new rules against the current
//! snapshot (so unchanged groups keep their pools and health) and swaps only on success.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::diagnostics::{Diagnostics, Severity};
use crate::rules::model::RuleSet;
use crate::rules::{self, LoadedRules};
use crate::upstream::ServiceTable;

/// Everything a request needs, from one rules generation.
#[derive(Debug)]
pub struct Snapshot {
    /// 1 for the rules loaded at start, +1 per successful reload.
    pub generation: u64,
    /// The compiled rules.
    pub rules: RuleSet,
    /// Services and their live groups.
    pub services: ServiceTable,
    /// XXH64 of the rules files.
    pub content_hash: u64,
    /// The files read.
    pub files: Vec<PathBuf>,
    /// When this generation was loaded.
    pub loaded_at: SystemTime,
}

impl Snapshot {
    fn build(
        loaded: LoadedRules,
        generation: u64,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, Diagnostics> {
        let services = ServiceTable::build(&loaded.model.services, previous.map(|p| &p.services))
            .map_err(|e| {
            let mut diags = Diagnostics::default();
            let file = loaded.files.first().cloned().unwrap_or_default();
            diags.push(
                Severity::Error,
                &Arc::from(file.as_path()),
                None,
                format!("cannot build upstream groups: {e}"),
            );
            diags
        })?;
        Ok(Snapshot {
            generation,
            rules: loaded.model.rules,
            services,
            content_hash: loaded.content_hash,
            files: loaded.files,
            loaded_at: SystemTime::now(),
        })
    }
}

/// What a successful reload did.
#[derive(Debug, Clone)]
pub enum Reloaded {
    /// A new generation serves.
    Swapped(Arc<Snapshot>),
    /// The files were unchanged; the current generation keeps serving.
    Unchanged(Arc<Snapshot>),
}

impl Reloaded {
    /// The generation serving after the reload.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        match self {
            Reloaded::Swapped(s) | Reloaded::Unchanged(s) => s,
        }
    }
}

/// Holds the current [`Snapshot`] and knows where to reload it from.
pub struct SnapshotStore {
    current: ArcSwap<Snapshot>,
    rules_path: PathBuf,
    reload_lock: Mutex<()>,
}

impl SnapshotStore {
    /// Loads the first generation from `rules_path`; warnings are logged.
    pub fn load(rules_path: &Path) -> Result<SnapshotStore, Diagnostics> {
        let loaded = rules::load(rules_path)?;
        for warning in loaded.warnings.items() {
            log::warn!("{warning}");
        }
        let snapshot = Snapshot::build(loaded, 1, None)?;
        Ok(SnapshotStore {
            current: ArcSwap::from_pointee(snapshot),
            rules_path: rules_path.to_path_buf(),
            reload_lock: Mutex::new(()),
        })
    }

    /// The current generation.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Loads, validates and compiles the rules again and swaps them in; on any error the
    /// current generation keeps serving and every error is returned. Files whose content did
    /// not change leave the current generation in place.
    pub fn reload(&self) -> Result<Reloaded, Diagnostics> {
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.current();
        let loaded = rules::load(&self.rules_path)?;
        if loaded.content_hash == previous.content_hash && loaded.files == previous.files {
            return Ok(Reloaded::Unchanged(previous));
        }
        for warning in loaded.warnings.items() {
            log::warn!("{warning}");
        }
        let next = Arc::new(Snapshot::build(
            loaded,
            previous.generation + 1,
            Some(&previous),
        )?);
        self.current.store(Arc::clone(&next));
        Ok(Reloaded::Swapped(next))
    }

    /// The rules file or directory.
    pub fn rules_path(&self) -> &Path {
        &self.rules_path
    }
}
