//! The emergency override (SPEC section 13): every request of every instance, internal users
//! too, goes to one version until an operator clears it.
//!
//! ```text
//! PUT|DELETE /-/override ─► Emergency::set / clear ─► SnapshotStore::update_runtime ─► requests
//!                                  │                 ├─► graygate_override{version}
//!                                  │                 └─► state.dir/override.json (durable)
//!                                  └─► shared through Redis by the fleet (key REDIS_KEY + publish)
//! fleet: a published change or the 5 s poll ─► Emergency::adopt (the newer document wins)
//! ```
//!
//! - **A document, not a flag**: the override is saved as `{override, at_unix_ms, by}`; a
//!   clear is a document too (`override: null`), so of two copies (the file, Redis) the newer
//!   wins whether it sets or clears. An instance that could not reach Redis when the operator
//!   acted keeps its document pending and writes it once Redis answers, unless a newer one was
//!   written there meanwhile.
//! - **Restarts**: the file is read before serving, so an override set before a restart (Redis
//!   down or not) applies to the first request.
//! - **Names**: the runtime state holds the version by name; a rules generation that does not
//!   know it leaves the override unapplied (and says so in `/-/rules`) until one does.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::metrics::Metrics;
use crate::state::durable::DurableFile;
use crate::state::runtime::Override;
use crate::state::SnapshotStore;
use crate::stats::unix_ms;
use crate::throttle::LogThrottle;
use crate::web::Refused;

/// The Redis key of the shared document.
pub const REDIS_KEY: &str = "graygate:state:override";

/// The log target of changes.
pub const LOG_TARGET: &str = "graygate::override";

/// The format written; a document of another format is ignored (and logged).
const FORMAT: u32 = 1;

/// The longest reason kept.
const MAX_REASON: usize = 1_000;

/// The saved override: in `state.dir/override.json` and, with Redis, under [`REDIS_KEY`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    format: u32,
    /// The override, `None` once cleared.
    #[serde(rename = "override")]
    pub set: Option<Override>,
    /// When an operator set or cleared it, Unix milliseconds: of two copies, the newer wins.
    pub at_unix_ms: u64,
    /// The instance the operator asked.
    pub by: String,
}

impl Document {
    /// Reads a document; `Err` says why it is unreadable.
    pub fn parse(text: &str) -> Result<Document, String> {
        let doc: Document = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if doc.format != FORMAT {
            return Err(format!("format {} is not {FORMAT}", doc.format));
        }
        Ok(doc)
    }

    /// Its text.
    pub fn text(&self) -> String {
        // Plain strings and numbers: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The override as this instance holds it, and where it is saved.
pub struct Emergency {
    store: Arc<SnapshotStore>,
    metrics: Arc<Metrics>,
    file: DurableFile,
    instance: String,
    inner: Mutex<Inner>,
}

struct Inner {
    doc: Option<Document>,
    /// The operator's latest document, not yet written to Redis.
    share_pending: Option<String>,
    save_errors: LogThrottle,
}

impl Emergency {
    /// Reads `state_dir/override.json` and applies it (call before serving); `instance`
    /// names this instance in the documents it writes.
    pub fn open(
        store: Arc<SnapshotStore>,
        metrics: Arc<Metrics>,
        state_dir: &std::path::Path,
        instance: &str,
    ) -> Emergency {
        let file = DurableFile::new(state_dir, "override.json");
        let doc = match file.read() {
            Ok(Some(text)) => match Document::parse(&text) {
                Ok(doc) => Some(doc),
                Err(why) => {
                    log::error!(target: LOG_TARGET, "{} is unreadable ({why}): no override applies", file.path().display());
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                log::error!(target: LOG_TARGET, "{}: {e}: no override applies", file.path().display());
                None
            }
        };
        let emergency = Emergency {
            store,
            metrics,
            file,
            instance: instance.to_string(),
            inner: Mutex::new(Inner {
                doc: None,
                share_pending: None,
                save_errors: LogThrottle::new(Duration::from_secs(30)),
            }),
        };
        let mut inner = emergency.lock();
        inner.doc = doc;
        emergency.apply(&inner);
        drop(inner);
        emergency
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `PUT /-/override`: every request to `version` from now on; the override after, or why
    /// not (400: a version the rules serving do not know, or no reason).
    pub fn set(&self, version: &str, reason: &str) -> Result<Value, Refused> {
        let rules = Arc::clone(&self.store.current().rules);
        if rules.version_id(version).is_none() {
            let known: Vec<&str> = rules.versions.iter().map(|v| &*v.name).collect();
            return Err(Refused {
                status: 400,
                message: format!(
                    "unknown version \"{version}\"; the rules serving know {}",
                    known.join(", ")
                ),
            });
        }
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(Refused {
                status: 400,
                message: "an override needs a reason (\"reason\": \"...\")".into(),
            });
        }
        let reason: String = reason.chars().take(MAX_REASON).collect();
        self.operator(Some(Override {
            version: version.to_string(),
            reason,
        }))
    }

    /// `DELETE /-/override`: requests follow the rules again.
    pub fn clear(&self) -> Result<Value, Refused> {
        self.operator(None)
    }

    fn operator(&self, set: Option<Override>) -> Result<Value, Refused> {
        let mut inner = self.lock();
        let at = unix_ms().max(inner.doc.as_ref().map_or(0, |d| d.at_unix_ms + 1));
        let doc = Document {
            format: FORMAT,
            set,
            at_unix_ms: at,
            by: self.instance.clone(),
        };
        match &doc.set {
            Some(o) => {
                log::warn!(target: LOG_TARGET, "override set: every request goes to {} ({})", o.version, o.reason)
            }
            None => log::warn!(target: LOG_TARGET, "override cleared: requests follow the rules"),
        }
        inner.share_pending = Some(doc.text());
        inner.doc = Some(doc);
        self.apply(&inner);
        let saved = self.save(&mut inner);
        let mut status = self.status_of(&inner);
        if let Err(e) = saved {
            status["warning"] = format!(
                "applied, but not saved to {}: {e}; it will not survive a restart",
                self.file.path().display()
            )
            .into();
        }
        Ok(status)
    }

    /// `GET /-/override`.
    pub fn status(&self) -> Value {
        self.status_of(&self.lock())
    }

    fn status_of(&self, inner: &Inner) -> Value {
        let doc = inner.doc.as_ref();
        let snapshot = self.store.current();
        json!({
            "override": doc.and_then(|d| d.set.as_ref()).map(|o| json!({
                "version": o.version,
                "reason": o.reason,
                "applied": snapshot.runtime.override_version.is_some(),
            })),
            "at_unix_ms": doc.map(|d| d.at_unix_ms),
            "by": doc.map(|d| d.by.as_str()),
            "shared": inner.share_pending.is_none(),
        })
    }

    /// Takes up a document read from Redis when it is newer than the one held; whether it was.
    pub fn adopt(&self, text: &str) -> bool {
        let doc = match Document::parse(text) {
            Ok(doc) => doc,
            Err(why) => {
                log::warn!(target: LOG_TARGET, "the override in Redis is unreadable ({why}): the local one stands");
                return false;
            }
        };
        let mut inner = self.lock();
        let held = inner.doc.as_ref().map_or(0, |d| d.at_unix_ms);
        if doc.at_unix_ms <= held {
            return false;
        }
        match &doc.set {
            Some(o) => {
                log::warn!(target: LOG_TARGET, "override from the fleet (set on {}): every request goes to {} ({})", doc.by, o.version, o.reason)
            }
            None => log::warn!(target: LOG_TARGET, "override cleared by the fleet (on {})", doc.by),
        }
        inner.doc = Some(doc);
        // Superseded: an older operator's document is not written over the newer one.
        inner.share_pending = None;
        self.apply(&inner);
        // A failure is logged; Redis holds the document meanwhile.
        let _ = self.save(&mut inner);
        true
    }

    /// The operator's document not yet in Redis, with its time (for the fleet to write when
    /// Redis holds nothing newer).
    pub fn pending_share(&self) -> Option<(String, u64)> {
        let inner = self.lock();
        let text = inner.share_pending.clone()?;
        Some((text, inner.doc.as_ref().map_or(0, |d| d.at_unix_ms)))
    }

    /// The pending document `text` reached Redis.
    pub fn shared(&self, text: &str) {
        let mut inner = self.lock();
        if inner.share_pending.as_deref() == Some(text) {
            inner.share_pending = None;
        }
    }

    /// The document held, as text (to write back to a Redis that lost it).
    pub fn document(&self) -> Option<String> {
        self.lock().doc.as_ref().map(Document::text)
    }

    /// Hands the override to the requests and to the gauge.
    fn apply(&self, inner: &Inner) {
        let set = inner.doc.as_ref().and_then(|d| d.set.clone());
        let snapshot = self
            .store
            .update_runtime(|state| state.override_version = set.clone());
        self.refresh_gauge(&snapshot.rules, set.as_ref().map(|o| o.version.as_str()));
    }

    /// Sets `graygate_override` for every version the rules know.
    fn refresh_gauge(&self, rules: &crate::rules::model::RuleSet, version: Option<&str>) {
        for v in &rules.versions {
            self.metrics
                .override_version
                .with_label_values(&[&v.name])
                .set(i64::from(Some(&*v.name) == version));
        }
    }

    fn save(&self, inner: &mut Inner) -> std::io::Result<()> {
        let Some(doc) = &inner.doc else { return Ok(()) };
        let result = self.file.write(&doc.text());
        if let Err(e) = &result {
            if let Some(held_back) = inner.save_errors.admit() {
                log::error!(target: LOG_TARGET, "cannot save the override to {}: {e} ({held_back} similar failure(s) not logged)", self.file.path().display());
            }
        }
        result
    }
}

/// The override saved in `state_dir`, read without writing (for `graygate explain`).
pub fn saved_override(state_dir: &std::path::Path) -> Option<Override> {
    let text = DurableFile::new(state_dir, "override.json").read().ok()??;
    Document::parse(&text).ok()?.set
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::model::Listeners;

    const RULES: &str = "versions: { stable: {}, canary: {} }\ndefault: canary\n\
        services:\n  web:\n    hosts: [\"*\"]\n    groups:\n      stable: { peers: [\"127.0.0.1:1\"] }\n      canary: { peers: [\"127.0.0.1:2\"] }\n";

    #[test]
    fn set_survives_a_restart_and_the_newer_document_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yaml"), RULES).unwrap();
        let state = dir.path().join("state");
        let open = || {
            let metrics = Arc::new(Metrics::new());
            let store =
                Arc::new(SnapshotStore::load(dir.path(), Listeners::default(), &metrics).unwrap());
            (
                Emergency::open(Arc::clone(&store), Arc::clone(&metrics), &state, "a"),
                store,
                metrics,
            )
        };
        let (emergency, store, metrics) = open();
        assert_eq!(emergency.set("nope", "x").unwrap_err().status, 400);
        assert_eq!(emergency.set("stable", "  ").unwrap_err().status, 400);
        let status = emergency.set("stable", "incident 7").unwrap();
        assert_eq!(status["override"]["version"], "stable", "{status}");
        let stable = store.current().rules.version_id("stable");
        assert_eq!(store.current().runtime.override_version, stable);
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(
            text.contains("graygate_override{version=\"stable\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("graygate_override{version=\"canary\"} 0"),
            "{text}"
        );
        let (pending, at) = emergency.pending_share().expect("not in Redis yet");
        emergency.shared(&pending);
        assert!(emergency.pending_share().is_none());
        drop(emergency);

        // A restart applies it before serving; saved_override reads it too.
        let (emergency, store, _) = open();
        assert_eq!(store.current().runtime.override_version, stable);
        assert_eq!(saved_override(&state).unwrap().reason, "incident 7");

        // An older document from Redis is not taken up; a newer clear is.
        let older = Document {
            format: FORMAT,
            set: None,
            at_unix_ms: at - 1,
            by: "b".into(),
        };
        assert!(!emergency.adopt(&older.text()));
        assert!(!emergency.adopt("{ not json"));
        let newer = Document {
            at_unix_ms: at + 1,
            ..older
        };
        assert!(emergency.adopt(&newer.text()));
        assert_eq!(store.current().runtime.override_version, None);
        assert!(
            emergency.pending_share().is_none(),
            "adopted, not re-shared"
        );
        assert!(saved_override(&state).is_none());
        // An operator's clear after that is newer still.
        emergency.set("canary", "again").unwrap();
        let held = Document::parse(&emergency.document().unwrap()).unwrap();
        assert!(held.at_unix_ms > at + 1);
    }
}
