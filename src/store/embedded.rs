//! The embedded store: assignments and sets in process memory, for deployments without Redis.
//!
//! Lookups never fail and never leave the process. Writes come from the admin API; they are
//! local to this instance (use Redis to share assignments across a fleet).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use super::{Answer, Store, StoreError};

/// An in-process store.
#[derive(Debug, Default)]
pub struct EmbeddedStore {
    values: RwLock<HashMap<String, Arc<str>>>,
    sets: RwLock<HashMap<String, HashSet<String>>>,
}

impl EmbeddedStore {
    /// Adds `member` to `set` (tests and tools; the admin API manages assignments only).
    pub fn add_member(&self, set: &str, member: &str) {
        self.sets
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(set.to_string())
            .or_default()
            .insert(member.to_string());
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Answer<Option<Arc<str>>>, StoreError> {
        let values = self.values.read().unwrap_or_else(|e| e.into_inner());
        Ok(Answer {
            value: values.get(key).cloned(),
            cached: false,
        })
    }

    async fn is_member(&self, set: &str, member: &str) -> Result<Answer<bool>, StoreError> {
        let sets = self.sets.read().unwrap_or_else(|e| e.into_inner());
        Ok(Answer {
            value: sets.get(set).is_some_and(|s| s.contains(member)),
            cached: false,
        })
    }

    async fn set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.values
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), Arc::from(value));
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self
            .values
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key)
            .is_some())
    }
}
