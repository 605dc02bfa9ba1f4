//! The one piece of hot state: the current [`Snapshot`], swapped atomically.
//!
//! A snapshot is built from two inputs: the rules files (compiled into a [`RuleSet`] and a
//! [`ServiceTable`]) and the [`RuntimeState`] that is not in the files (rollout weights,
//! withdrawn versions, an override; see `runtime.rs`). The runtime state is resolved against
//! the generation's names when the snapshot is built, and kept across file reloads: a reload
//! rebuilds the snapshot from the new files and the same runtime state, a runtime change
//! rebuilds it from the same files (shared, not recompiled) and the new state.
//!
//! The snapshot also holds the generation's [`StatsCells`]: the windowed-figure cells of each
//! service's groups and of each rollout rule's two arms, resolved by name once per generation, so that the proxy's `logging`
//! records a request with a few atomic adds and no lookup; and its [`GenerationSeries`], the
//! Prometheus series of its groups, decisions and goals by index, for the same reason.
//!
//! A request loads the snapshot once (in `new_ctx`) and uses it to the end, whatever reloads
//! happen meanwhile; the one `ArcSwap` here is the only thing a request loads.

pub mod durable;
pub mod runtime;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::cookies;
use crate::diagnostics::{Diagnostics, Severity};
use crate::facts::VersionId;
use crate::metrics::{GenerationSeries, Metrics, SeriesLayout};
use crate::rules::decide::Decision;
use crate::rules::model::{Listeners, RolloutId, RuleSet};
use crate::rules::{self, LoadedRules, RulesOrigin};
use crate::stats::{Cell, GoalMap, Scope, Stats};
use crate::upstream::{ServiceId, ServiceTable};
pub use runtime::{AppliedState, Override, RuntimeState};

/// Everything a request needs: one rules generation and the runtime state applied to it.
#[derive(Debug)]
pub struct Snapshot {
    /// 1 for the rules loaded at start, +1 per successful reload.
    pub generation: u64,
    /// The compiled rules.
    pub rules: Arc<RuleSet>,
    /// Services and their live groups.
    pub services: Arc<ServiceTable>,
    /// The files it was compiled from, and the hash of their content.
    pub origin: RulesOrigin,
    /// When this generation was loaded.
    pub loaded_at: SystemTime,
    /// The runtime state, resolved against this generation's names.
    pub runtime: AppliedState,
    /// This generation's windowed-figure cells, resolved once.
    pub stats: Arc<StatsCells>,
    /// This generation's Prometheus series, by index.
    pub series: Arc<GenerationSeries>,
}

/// The stats cells of one generation, resolved when it is built so that a request never
/// looks a cell up (the cells themselves are keyed by name and outlive generations).
#[derive(Debug)]
pub struct StatsCells {
    /// `cells[service * versions + version]`: the cell of the service's group for that
    /// version (one flat table: a request reads one slot, not a row's header and then a row).
    cells: Box<[Option<Arc<Cell>>]>,
    /// The number of versions: the row length of `cells`.
    versions: usize,
    /// `arms[rollout]`: the cells of the rollout's two arms (its version, then its
    /// baseline), counting only the requests its rule decided.
    arms: Box<[RolloutArms]>,
    /// The generation's goals mapped to stats goal slots.
    pub goals: GoalMap,
}

/// The two arm cells of a rollout's rule.
#[derive(Debug, Clone)]
struct RolloutArms {
    /// The rollout's version (`cells[0]`); every other decision is the baseline (`cells[1]`).
    version: VersionId,
    cells: [Arc<Cell>; 2],
}

impl StatsCells {
    fn resolve(stats: &Stats, rules: &RuleSet, services: &ServiceTable) -> StatsCells {
        let versions = rules.versions.len();
        let mut cells = vec![None; services.services.len() * versions];
        for (s, service) in services.services.iter().enumerate() {
            let scope = Scope::Service(Arc::clone(&service.name));
            for group in service.groups() {
                cells[s * versions + group.version.index()] =
                    Some(stats.cell(&scope, &group.version_name));
            }
        }
        let arms = rules
            .rollouts
            .iter()
            .map(|rollout| {
                let scope = Scope::Rule(Arc::clone(&rules.rules[rollout.rule].name));
                let cell = |v: VersionId| stats.cell(&scope, &rules.version(v).name);
                RolloutArms {
                    version: rollout.version,
                    cells: [cell(rollout.version), cell(rollout.baseline)],
                }
            })
            .collect();
        StatsCells {
            cells: cells.into(),
            versions,
            arms,
            goals: stats.goal_map(rules.goals.iter().map(|g| &*g.name)),
        }
    }

    /// The cell counting the requests rollout `rollout`'s rule decided for `version` (the
    /// rollout's two arms are counted apart from the services' figures).
    pub fn rollout_arm(&self, rollout: RolloutId, version: VersionId) -> Option<&Cell> {
        let arms = self.arms.get(rollout)?;
        Some(&arms.cells[usize::from(version != arms.version)])
    }

    /// The cell counting `service`'s requests served by `version`'s group.
    pub fn cell(&self, service: ServiceId, version: VersionId) -> Option<&Cell> {
        if version.index() >= self.versions {
            return None;
        }
        self.cells
            .get(service * self.versions + version.index())?
            .as_deref()
    }
}

impl Snapshot {
    /// Builds a new generation from compiled rules; unchanged groups keep `previous`'s pools.
    fn build(
        loaded: LoadedRules,
        generation: u64,
        previous: Option<&Snapshot>,
        runtime: &RuntimeState,
        stats: &Stats,
        metrics: &Arc<Metrics>,
    ) -> Result<Snapshot, Diagnostics> {
        let rules = loaded.model.rules;
        let services = ServiceTable::build(
            &loaded.model.services,
            &rules.versions,
            previous.map(|p| &*p.services),
        )
        .map_err(|e| {
            let mut diags = Diagnostics::default();
            let file = loaded.origin.files.first().cloned().unwrap_or_default();
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
            runtime: runtime.apply(&rules),
            stats: Arc::new(StatsCells::resolve(stats, &rules, &services)),
            series: Arc::new(prepare_series(metrics, &rules, &services)),
            rules: Arc::new(rules),
            services: Arc::new(services),
            origin: loaded.origin,
            loaded_at: SystemTime::now(),
        })
    }

    /// The same generation with another runtime state: rules and groups are shared.
    fn with_runtime(&self, runtime: &RuntimeState) -> Snapshot {
        Snapshot {
            generation: self.generation,
            rules: Arc::clone(&self.rules),
            services: Arc::clone(&self.services),
            origin: self.origin.clone(),
            loaded_at: self.loaded_at,
            runtime: runtime.apply(&self.rules),
            stats: Arc::clone(&self.stats),
            series: Arc::clone(&self.series),
        }
    }
}

/// The series table of a generation, with the series it can produce created at 0 so that
/// rates and ratios exist before the first event.
fn prepare_series(
    metrics: &Arc<Metrics>,
    rules: &RuleSet,
    services: &ServiceTable,
) -> GenerationSeries {
    let versions: Vec<&str> = rules.versions.iter().map(|v| &*v.name).collect();
    let groups: Vec<(&str, Vec<usize>)> = services
        .services
        .iter()
        .map(|s| (&*s.name, s.groups().map(|g| g.version.index()).collect()))
        .collect();
    let goals: Vec<&str> = rules.goals.iter().map(|g| &*g.name).collect();
    // Cookie isolation's series, once some version is isolated.
    if rules.versions.iter().any(|v| v.cookies.is_isolated()) {
        for version in &rules.versions {
            metrics.prepare_cookies(&version.name, cookies::actions(&version.cookies));
        }
    }
    let rule_slots = Decision::rule_slot_names(rules);
    let layout = SeriesLayout {
        versions: &versions,
        services: &groups,
        rules: &rule_slots,
        goals: &goals,
    };
    GenerationSeries::new(Arc::clone(metrics), &layout)
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

/// Holds the current [`Snapshot`], the runtime state it was built with, and where to reload
/// the rules from.
pub struct SnapshotStore {
    current: ArcSwap<Snapshot>,
    rules_path: PathBuf,
    /// The config's proxy listeners, which the rules are compiled against.
    listeners: Listeners,
    /// The runtime state; its lock also orders every rebuild (file reloads and runtime
    /// changes), so neither can lose the other's update.
    runtime: Mutex<RuntimeState>,
    /// The windowed per-version figures every generation's cells live in.
    stats: Arc<Stats>,
    /// The Prometheus series every generation's series table counts in.
    metrics: Arc<Metrics>,
    /// Generations swapped out while requests still held them. A later swap drops those no
    /// request holds any more, so that freeing a generation of 10,000 rules falls to the
    /// thread that reloads, never to the request worker that happened to hold it last.
    retired: Mutex<Vec<Arc<Snapshot>>>,
}

impl SnapshotStore {
    /// Loads the first generation from `rules_path`, compiled against the config's
    /// `listeners` (as every reload will be), counting in `metrics`; warnings are logged.
    pub fn load(
        rules_path: &Path,
        listeners: Listeners,
        metrics: &Arc<Metrics>,
    ) -> Result<SnapshotStore, Diagnostics> {
        Self::load_with(rules_path, listeners, RuntimeState::default(), metrics)
    }

    /// Loads the first generation with a runtime state known from before (a restart).
    pub fn load_with(
        rules_path: &Path,
        listeners: Listeners,
        runtime: RuntimeState,
        metrics: &Arc<Metrics>,
    ) -> Result<SnapshotStore, Diagnostics> {
        let loaded = rules::load(rules_path, &listeners)?;
        for warning in loaded.warnings.items() {
            log::warn!("{warning}");
        }
        let stats = Arc::new(Stats::default());
        let snapshot = Snapshot::build(loaded, 1, None, &runtime, &stats, metrics)?;
        snapshot.runtime.log_ignored();
        metrics.rules_generation.set(snapshot.generation as i64);
        Ok(SnapshotStore {
            current: ArcSwap::from_pointee(snapshot),
            rules_path: rules_path.to_path_buf(),
            listeners,
            runtime: Mutex::new(runtime),
            stats,
            metrics: Arc::clone(metrics),
            retired: Mutex::default(),
        })
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The services of the current snapshot (what the health checker probes).
    pub fn current_services(&self) -> Arc<ServiceTable> {
        Arc::clone(&self.current.load().services)
    }

    fn lock_runtime(&self) -> MutexGuard<'_, RuntimeState> {
        self.runtime.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads, validates and compiles the rules again and swaps them in, with the runtime
    /// state kept; on any error the current snapshot keeps serving and every error is
    /// returned. Files whose content did not change leave the current snapshot in place,
    /// found so before compiling (the file watch and `POST /-/reload` after one edit cost
    /// one compile, not two).
    pub fn reload(&self) -> Result<Reloaded, Diagnostics> {
        let runtime = self.lock_runtime();
        let previous = self.current();
        let sources = rules::read(&self.rules_path)?;
        if previous.origin.is_unchanged_in(&sources) {
            return Ok(Reloaded::Unchanged(previous));
        }
        let loaded = rules::compile(&sources, &self.listeners)?;
        for warning in loaded.warnings.items() {
            log::warn!("{warning}");
        }
        let next = Arc::new(Snapshot::build(
            loaded,
            previous.generation + 1,
            Some(&previous),
            &runtime,
            &self.stats,
            &self.metrics,
        )?);
        next.runtime.log_ignored();
        drop(previous);
        self.swap(Arc::clone(&next));
        Ok(Reloaded::Swapped(next))
    }

    /// Serves `next`, keeping the generation it replaces among the retired, and drops the
    /// retired generations no request holds any more (here, on the swapping thread).
    fn swap(&self, next: Arc<Snapshot>) {
        self.metrics.rules_generation.set(next.generation as i64);
        let previous = self.current.swap(next);
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.push(previous);
        // `swap` has turned every reader's borrow of the old generation into a count.
        retired.retain(|s| Arc::strong_count(s) > 1);
    }

    /// Changes the runtime state and swaps in the current generation rebuilt with it.
    pub fn update_runtime(&self, change: impl FnOnce(&mut RuntimeState)) -> Arc<Snapshot> {
        let mut runtime = self.lock_runtime();
        change(&mut runtime);
        let next = Arc::new(self.current().with_runtime(&runtime));
        next.runtime.log_ignored();
        self.swap(Arc::clone(&next));
        next
    }

    /// The runtime state as last set (names, not resolved).
    pub fn runtime(&self) -> RuntimeState {
        self.lock_runtime().clone()
    }

    /// The windowed per-version figures (for `/-/stats`, rollouts, and the ticker).
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The rules file or directory.
    pub fn rules_path(&self) -> &Path {
        &self.rules_path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The versions and the service, shared by the rule sets below.
    macro_rules! base {
        () => {
            "versions: { stable: {}, canary: {} }\ndefault: stable\n\
        services:\n  web:\n    hosts: [\"*\"]\n    groups:\n      stable: { peers: [\"127.0.0.1:1\"] }\n      canary: { peers: [\"127.0.0.1:2\"] }\n"
        };
    }

    const BASE: &str = base!();

    const RULES: &str = concat!(
        base!(),
        "rollouts:\n  ramp: { version: canary, steps: [10, 50], step_duration: 1m }\n",
        "rules:\n  - { name: ramp, rollout: ramp }\n"
    );

    /// `state` with the rollout `ramp` of `rules` rolled back.
    fn roll_back(state: &mut RuntimeState, rules: &RuleSet) {
        let rollout = &rules.rollouts[0];
        state.rollouts.insert(
            "ramp".into(),
            crate::rules::model::RolloutNow {
                phase: crate::rules::model::Phase::RolledBack,
                weight: 0,
                ..rollout.start()
            },
        );
    }

    fn store_with(rules: &str) -> (tempfile::TempDir, SnapshotStore) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
        let store = SnapshotStore::load(dir.path(), Listeners::default(), &Arc::default()).unwrap();
        (dir, store)
    }

    /// A generation a request still holds at a swap is freed by a later swap, not by the
    /// request; one nobody holds is freed by the swap itself.
    #[test]
    fn retired_generations_are_freed_by_the_swapping_thread() {
        let (dir, store) = store_with(RULES);
        let held = store.current();
        let weak = Arc::downgrade(&held);
        let rewrite = |n: usize| {
            std::fs::write(dir.path().join("rules.yaml"), format!("{RULES}# {n}\n")).unwrap()
        };
        rewrite(1);
        assert!(matches!(store.reload().unwrap(), Reloaded::Swapped(_)));
        drop(held);
        assert!(
            weak.upgrade().is_some(),
            "the request's drop did not free it"
        );
        let second = Arc::downgrade(&store.current());
        rewrite(2);
        assert!(matches!(store.reload().unwrap(), Reloaded::Swapped(_)));
        assert!(weak.upgrade().is_none(), "the next swap freed it");
        assert!(
            second.upgrade().is_none(),
            "a generation nobody held is freed at once"
        );
    }

    #[test]
    fn runtime_state_survives_a_file_reload_and_follows_the_names() {
        let (dir, store) = store_with(RULES);
        let before = store.current();
        let changed = store.update_runtime(|state| {
            roll_back(state, &before.rules);
            state.override_version = Some(Override {
                version: "stable".into(),
                reason: "incident 42".into(),
            });
        });
        // Same generation, rules and groups shared, runtime applied.
        assert_eq!(changed.generation, before.generation);
        assert!(Arc::ptr_eq(&changed.rules, &before.rules));
        assert!(Arc::ptr_eq(&changed.services, &before.services));
        let canary = changed.rules.version_id("canary").unwrap();
        let stable = changed.rules.version_id("stable");
        assert_eq!(changed.runtime.withdrawn_to(canary), stable);
        assert_eq!(changed.runtime.rollouts[0].weight, 0);
        assert_eq!(
            changed.runtime.override_version,
            changed.rules.version_id("stable")
        );

        // A reload that moves canary to another index keeps it withdrawn by name.
        std::fs::write(
            dir.path().join("rules.yaml"),
            RULES.replace(
                "{ stable: {}, canary: {} }",
                "{ beta: {}, canary: {}, stable: {} }",
            ),
        )
        .unwrap();
        let Reloaded::Swapped(next) = store.reload().unwrap() else {
            panic!("the files changed");
        };
        assert_eq!(next.generation, 2);
        let canary = next.rules.version_id("canary").unwrap();
        assert_eq!(canary.index(), 1);
        assert_eq!(
            next.runtime.withdrawn_to(canary),
            next.rules.version_id("stable")
        );
        assert_eq!(
            next.runtime
                .withdrawn_to(next.rules.version_id("beta").unwrap()),
            None
        );
        assert_eq!(
            next.runtime.override_version,
            next.rules.version_id("stable")
        );

        // A reload whose rules no longer know the rollout keeps its state for later.
        std::fs::write(
            dir.path().join("rules.yaml"),
            RULES.replace("ramp", "other"),
        )
        .unwrap();
        let Reloaded::Swapped(third) = store.reload().unwrap() else {
            panic!("the files changed");
        };
        assert_eq!(
            third.runtime.ignored,
            vec!["rollout \"ramp\" is not in the rules".to_string()]
        );
        assert_eq!(third.runtime.withdrawn().count(), 0);
        assert!(store.runtime().rollouts.contains_key("ramp"));

        // Editing its steps starts the rollout again: nothing withdrawn.
        std::fs::write(
            dir.path().join("rules.yaml"),
            RULES.replace("[10, 50]", "[20, 50]"),
        )
        .unwrap();
        let Reloaded::Swapped(fourth) = store.reload().unwrap() else {
            panic!("the files changed");
        };
        assert_eq!(fourth.runtime.withdrawn().count(), 0);
        assert_eq!(fourth.runtime.rollouts[0].weight, 20);
    }

    /// The listeners given at load are the ones every reload compiles against.
    #[test]
    fn reloads_check_listener_names_against_the_config() {
        use crate::facts::Scheme;
        let dir = tempfile::tempdir().unwrap();
        let rules = |listener: &str| {
            format!("{BASE}rules:\n  - {{ name: r, when: {{ listener: {listener} }}, version: canary }}\n")
        };
        let file = dir.path().join("rules.yaml");
        std::fs::write(&file, rules("office")).unwrap();
        let listeners = Listeners::new([
            ("public".into(), Scheme::Http),
            ("office".into(), Scheme::Https),
        ]);
        assert!(SnapshotStore::load(dir.path(), Listeners::default(), &Arc::default()).is_err());
        let store = SnapshotStore::load(dir.path(), listeners, &Arc::default()).unwrap();
        std::fs::write(&file, rules("ofice")).unwrap();
        let err = store.reload().unwrap_err().to_string();
        assert!(
            err.contains("rule \"r\": listener \"ofice\" is not a listener of the config; the listeners are public, office"),
            "{err}"
        );
        assert_eq!(store.current().generation, 1);
        std::fs::write(&file, rules("[public]")).unwrap();
        assert!(matches!(store.reload(), Ok(Reloaded::Swapped(_))));
    }

    #[test]
    fn a_failed_reload_keeps_the_runtime_state_serving() {
        let (dir, store) = store_with(RULES);
        let rules = Arc::clone(&store.current().rules);
        store.update_runtime(|state| roll_back(state, &rules));
        std::fs::write(dir.path().join("rules.yaml"), "versions: [").unwrap();
        assert!(store.reload().is_err());
        let current = store.current();
        assert_eq!(current.generation, 1);
        assert!(current
            .runtime
            .withdrawn_to(current.rules.version_id("canary").unwrap())
            .is_some());
    }
}
