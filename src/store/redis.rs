//! The Redis store: fred, a local cache, and Redis client tracking to keep the cache right.
//!
//! A lookup first asks the local cache (no round trip). A miss goes to Redis with the lookup
//! timeout and `fail_fast`, so a dead Redis answers at once and a silent one within the
//! timeout; concurrent misses of one key share one round trip (no stampede when entries
//! expire together). Errors and timeouts are never cached.
//!
//! The connection runs in RESP3 with `CLIENT TRACKING` on: Redis remembers the keys this
//! client read and pushes an invalidation when one changes, so an assignment written with
//! `redis-cli` is seen at once rather than after the cache TTL. Tracking is re-armed and the
//! cache flushed on every reconnect, and the cache is flushed when invalidations were lost
//! (a lagged receiver). [`RedisMaintainer`] runs that loop as a Pingora background service.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Client;
use fred::error::ErrorKind;
use fred::interfaces::{
    ClientLike, EventInterface, KeysInterface, SetsInterface, TrackingInterface,
};
use fred::types::config::{Config, Options, ReconnectPolicy};
use fred::types::RespVersion;
use moka::future::Cache;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::broadcast::error::RecvError;

use super::{Answer, Store, StoreError};
use crate::config::RedisSettings;

/// How many keys the local cache holds at most (each entry is a few dozen bytes).
const CACHE_CAPACITY: u64 = 1_000_000;

/// A fred command, boxed once where it is made.
type FredCommand<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, fred::error::Error>> + Send + 'a>>;

/// A store backed by Redis, with a tracked local cache.
pub struct RedisStore {
    client: Client,
    settings: RedisSettings,
    values: Cache<String, Option<Arc<str>>>,
    members: Cache<(String, String), bool>,
    /// Bumped by every invalidation: a fill that raced one is dropped from the cache.
    invalidations: AtomicU64,
}

impl RedisStore {
    /// Builds the client; nothing connects until [`RedisMaintainer`] runs.
    pub fn new(settings: RedisSettings) -> Result<Arc<RedisStore>, String> {
        let mut config = Config::from_url(&settings.url).map_err(|e| e.details().to_string())?;
        config.version = RespVersion::RESP3;
        config.fail_fast = true;
        let client = fred::types::Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(1);
                c.internal_command_timeout = Duration::from_secs(1);
                c.max_command_attempts = 1;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()
            .map_err(|e| e.details().to_string())?;
        let ttl = settings.cache_ttl;
        Ok(Arc::new(RedisStore {
            client,
            values: Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(ttl)
                .build(),
            members: Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(ttl)
                .support_invalidation_closures()
                .build(),
            settings,
            invalidations: AtomicU64::new(0),
        }))
    }

    fn options(&self) -> Options {
        Options {
            timeout: Some(self.settings.lookup_timeout),
            fail_fast: true,
            max_attempts: Some(1),
            ..Options::default()
        }
    }

    fn error(&self, e: fred::error::Error) -> StoreError {
        match e.kind() {
            ErrorKind::Timeout => StoreError::Timeout(self.settings.lookup_timeout),
            _ => StoreError::Failed(e.to_string()),
        }
    }

    /// Runs one Redis command under the lookup timeout. The command comes boxed: a fred
    /// command future is about 5 KB, and every future holding it inline (the timeout, the
    /// cache fill, moka's insertion) would copy it again on every miss.
    async fn bounded<T>(&self, command: FredCommand<'_, T>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.settings.lookup_timeout, command).await {
            Ok(result) => result.map_err(|e| self.error(e)),
            Err(_) => Err(StoreError::Timeout(self.settings.lookup_timeout)),
        }
    }

    /// Connects and waits up to `timeout` (for one-shot tools such as `graygate explain`;
    /// the server connects through [`RedisMaintainer`]).
    pub async fn connect_now(&self, timeout: Duration) -> Result<(), StoreError> {
        let _connection = self.client.connect();
        match tokio::time::timeout(timeout, self.client.wait_for_connect()).await {
            Ok(result) => result.map_err(|e| StoreError::Failed(e.to_string())),
            Err(_) => Err(StoreError::Timeout(timeout)),
        }
    }

    /// Forgets every cached answer.
    pub fn flush(&self) {
        self.invalidations.fetch_add(1, Ordering::AcqRel);
        self.values.invalidate_all();
        self.members.invalidate_all();
    }

    async fn invalidate(&self, key: &str) {
        self.invalidations.fetch_add(1, Ordering::AcqRel);
        self.values.invalidate(key).await;
        let set = key.to_string();
        // Only fails when closures are not supported, and they are.
        let _ = self
            .members
            .invalidate_entries_if(move |(s, _), _| *s == set);
    }

    async fn arm_tracking(&self) {
        match self
            .client
            .start_tracking(Vec::<String>::new(), false, false, false, false)
            .await
        {
            Ok(()) => {
                log::info!("redis: client tracking on; cached lookups are invalidated by Redis")
            }
            Err(e) => log::warn!(
                "redis: client tracking failed ({e}); cached lookups expire after {:?}",
                self.settings.cache_ttl
            ),
        }
        // Whatever was cached before tracking (re)started may be stale.
        self.flush();
    }
}

impl RedisStore {
    /// A cached answer, or one Redis round trip shared by every concurrent miss of `key`.
    /// `fetch` is only called on a miss, and the miss path is boxed: the future of a cache
    /// hit (copied into the heap on every lookup by `async_trait`) stays small.
    async fn cached<K, Q, V, F>(
        &self,
        cache: &Cache<K, V>,
        key: &Q,
        fetch: impl FnOnce() -> F,
    ) -> Result<Answer<V>, StoreError>
    where
        K: std::borrow::Borrow<Q> + std::hash::Hash + Eq + Send + Sync + 'static,
        Q: ToOwned<Owned = K> + std::hash::Hash + Eq + ?Sized,
        V: Clone + Send + Sync + 'static,
        F: std::future::Future<Output = Result<V, StoreError>>,
    {
        if let Some(value) = cache.get(key).await {
            return Ok(Answer {
                value,
                cached: true,
            });
        }
        Box::pin(self.fill(cache, key, fetch())).await
    }

    /// The miss path of [`RedisStore::cached`]. A fill that raced an invalidation is used
    /// once and dropped from the cache.
    async fn fill<K, Q, V>(
        &self,
        cache: &Cache<K, V>,
        key: &Q,
        fetch: impl std::future::Future<Output = Result<V, StoreError>>,
    ) -> Result<Answer<V>, StoreError>
    where
        K: std::borrow::Borrow<Q> + std::hash::Hash + Eq + Send + Sync + 'static,
        Q: ToOwned<Owned = K> + std::hash::Hash + Eq + ?Sized,
        V: Clone + Send + Sync + 'static,
    {
        let before = self.invalidations.load(Ordering::Acquire);
        let value = cache
            .try_get_with(key.to_owned(), fetch)
            .await
            .map_err(|e| (*e).clone())?;
        if self.invalidations.load(Ordering::Acquire) != before {
            cache.invalidate(key).await;
        }
        Ok(Answer {
            value,
            cached: false,
        })
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn get(&self, key: &str) -> Result<Answer<Option<Arc<str>>>, StoreError> {
        let fetch = || async {
            let value: Option<String> = self
                .bounded(Box::pin(self.client.with_options(&self.options()).get(key)))
                .await?;
            Ok(value.map(Arc::from))
        };
        self.cached(&self.values, key, fetch).await
    }

    async fn is_member(&self, set: &str, member: &str) -> Result<Answer<bool>, StoreError> {
        let fetch = || async {
            self.bounded(Box::pin(
                self.client
                    .with_options(&self.options())
                    .sismember::<bool, _, _>(set, member),
            ))
            .await
        };
        self.cached(&self.members, &(set.to_string(), member.to_string()), fetch)
            .await
    }

    async fn set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let result: Result<(), StoreError> = self
            .bounded(Box::pin(
                self.client
                    .with_options(&self.options())
                    .set(key, value, None, None, false),
            ))
            .await;
        self.invalidate(key).await;
        result
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let removed: Result<u64, StoreError> = self
            .bounded(Box::pin(self.client.with_options(&self.options()).del(key)))
            .await;
        self.invalidate(key).await;
        removed.map(|n| n > 0)
    }
}

/// Connects the client, keeps tracking armed across reconnects and applies invalidations.
pub struct RedisMaintainer {
    store: Arc<RedisStore>,
}

impl RedisMaintainer {
    /// Maintains `store`'s connection and cache.
    pub fn new(store: Arc<RedisStore>) -> Self {
        RedisMaintainer { store }
    }
}

#[async_trait]
impl BackgroundService for RedisMaintainer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let store = &self.store;
        let client = &store.client;
        let mut invalidations = client.invalidation_rx();
        let mut reconnects = client.reconnect_rx();
        let _connection = client.connect();
        log::info!("redis: connecting to {}", store.settings.url);
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    let _ = client.quit().await;
                    return;
                }
                server = reconnects.recv() => match server {
                    Ok(server) => {
                        log::info!("redis: connected to {server}");
                        store.arm_tracking().await;
                    }
                    Err(RecvError::Lagged(_)) => store.arm_tracking().await,
                    Err(RecvError::Closed) => return,
                },
                invalidation = invalidations.recv() => match invalidation {
                    Ok(invalidation) if invalidation.keys.is_empty() => store.flush(),
                    Ok(invalidation) => {
                        for key in &invalidation.keys {
                            store.invalidate(&key.as_str_lossy()).await;
                        }
                    }
                    Err(RecvError::Lagged(_)) => store.flush(),
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Futures are moved by value through every layer that awaits them; a fred command held
    /// inline (about 5 KB, 10 KB under the timeout) made each cache miss copy tens of KB.
    #[test]
    fn lookup_futures_stay_small() {
        let store = RedisStore::new(RedisSettings {
            url: "redis://127.0.0.1:1".into(),
            lookup_timeout: Duration::from_millis(20),
            cache_ttl: Duration::from_secs(30),
        })
        .expect("a valid url");
        let client = store.client.with_options(&store.options());
        let bounded = store.bounded(Box::pin(client.get::<Option<String>, _>("k")));
        assert!(
            std::mem::size_of_val(&bounded) < 512,
            "{}",
            std::mem::size_of_val(&bounded)
        );
        let fetch = || async {
            let value: Option<String> = store
                .bounded(Box::pin(client.get::<Option<String>, _>("k")))
                .await?;
            Ok(value.map(Arc::from))
        };
        let fill = store.fill(&store.values, "k", fetch());
        assert!(
            std::mem::size_of_val(&fill) < 4096,
            "{}",
            std::mem::size_of_val(&fill)
        );
    }
}
