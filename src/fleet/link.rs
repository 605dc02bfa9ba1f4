//! The fleet's connection to Redis: a fred client of its own (never the request path's lookup
//! client), a subscriber for published changes, and every command bounded by [`TIMEOUT`].
//!
//! The URL is the one `redis.url` names, so a single server, a Redis Cluster
//! (`redis-cluster://`) and Sentinel (`redis-sentinel://`) all work. Every command touches one
//! key (pipelines too: each command is routed to its key's node), so nothing needs the keys of
//! a command to share a cluster slot.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use fred::clients::{Client, Pipeline, SubscriberClient, WithOptions};
use fred::interfaces::{ClientLike, HashesInterface, KeysInterface, LuaInterface, PubsubInterface};
use fred::types::config::{Config, Options, ReconnectPolicy};
use fred::types::{Expiration, SetOptions};

/// The longest any fleet command may take; past it the command counts as failed.
pub const TIMEOUT: Duration = Duration::from_secs(1);

/// Extends the lease only for its holder.
const RENEW: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then \
    return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";

/// Deletes the lease only for its holder.
const RELEASE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then \
    return redis.call('del', KEYS[1]) else return 0 end";

/// A failed fleet command, in words.
pub type LinkError = String;

/// The fleet's clients.
pub struct Link {
    client: Client,
    subscriber: SubscriberClient,
    /// Every command: [`TIMEOUT`], one attempt, and failed at once while the connection is
    /// down (never queued for a reconnect: counts sent late would land in a later window).
    options: Options,
}

impl Link {
    /// Builds the clients for `url`; nothing connects until [`Link::connect`].
    pub fn new(url: &str) -> Result<Link, String> {
        let mut config = Config::from_url(url).map_err(|e| e.details().to_string())?;
        // A dead Redis answers at once instead of queueing commands until it is back.
        config.fail_fast = true;
        let builder = {
            let mut builder = fred::types::Builder::from_config(config);
            builder
                .with_connection_config(|c| {
                    c.connection_timeout = TIMEOUT;
                    c.internal_command_timeout = TIMEOUT;
                    c.max_command_attempts = 1;
                })
                .with_performance_config(|p| p.default_command_timeout = TIMEOUT)
                .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
            builder
        };
        let client = builder.build().map_err(|e| e.details().to_string())?;
        let subscriber = builder
            .build_subscriber_client()
            .map_err(|e| e.details().to_string())?;
        let options = Options {
            timeout: Some(TIMEOUT),
            fail_fast: true,
            max_attempts: Some(1),
            ..Options::default()
        };
        Ok(Link {
            client,
            subscriber,
            options,
        })
    }

    /// Connects both clients (they reconnect by themselves) and subscribes to `channel`,
    /// again after every reconnect.
    pub fn connect(&self, channel: &'static str) {
        // Connection tasks: they run on, the handles are not needed.
        drop(self.client.connect());
        drop(self.subscriber.connect());
        drop(self.subscriber.manage_subscriptions());
        let subscriber = self.subscriber.clone();
        tokio::spawn(async move {
            // Until the first subscription succeeds; later reconnects re-subscribe by
            // themselves (`manage_subscriptions`).
            loop {
                if bounded(subscriber.subscribe(channel)).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Published messages (their text) on the subscribed channel.
    pub fn messages(&self) -> tokio::sync::broadcast::Receiver<fred::types::Message> {
        fred::interfaces::EventInterface::message_rx(&self.subscriber)
    }

    /// Is the subscriber connected (else the fleet polls)?
    pub fn subscribed(&self) -> bool {
        self.subscriber.is_connected()
    }

    /// Closes both clients.
    pub async fn quit(&self) {
        let _ = bounded(self.subscriber.quit()).await;
        let _ = bounded(self.client.quit()).await;
    }

    fn command(&self) -> WithOptions<Client> {
        self.client.with_options(&self.options)
    }

    fn pipeline(&self) -> Pipeline<WithOptions<Client>> {
        Pipeline::from(self.command())
    }

    /// `GET key`.
    pub async fn get(&self, key: &str) -> Result<Option<String>, LinkError> {
        bounded(self.command().get(key)).await
    }

    /// `SET key value`.
    pub async fn set(&self, key: &str, value: &str) -> Result<(), LinkError> {
        bounded(self.command().set(key, value, None, None, false)).await
    }

    /// `SET key value NX`: whether it was set (the key did not exist).
    pub async fn set_new(&self, key: &str, value: &str) -> Result<bool, LinkError> {
        let set: Option<String> =
            bounded(
                self.client
                    .set(key, value, None, Some(SetOptions::NX), false),
            )
            .await?;
        Ok(set.is_some())
    }

    /// `PUBLISH channel message`.
    pub async fn publish(&self, channel: &str, message: &str) -> Result<(), LinkError> {
        let _receivers: i64 = bounded(self.command().publish(channel, message)).await?;
        Ok(())
    }

    /// Takes the lease `key` for `holder` for `ttl` if nobody holds it (`SET NX PX`).
    pub async fn acquire(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, LinkError> {
        let set: Option<String> = bounded(self.command().set(
            key,
            holder,
            Some(Expiration::PX(ttl.as_millis() as i64)),
            Some(SetOptions::NX),
            false,
        ))
        .await?;
        Ok(set.is_some())
    }

    /// Extends `holder`'s lease `key` to `ttl`; `false` when another holds it.
    pub async fn renew(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, LinkError> {
        let ttl = ttl.as_millis().to_string();
        let renewed: i64 =
            bounded(self.command().eval(RENEW, vec![key], vec![holder, &ttl])).await?;
        Ok(renewed == 1)
    }

    /// Gives `holder`'s lease `key` up.
    pub async fn release(&self, key: &str, holder: &str) -> Result<(), LinkError> {
        let _released: i64 = bounded(self.command().eval(RELEASE, vec![key], vec![holder])).await?;
        Ok(())
    }

    /// `HSET key field value`.
    pub async fn hset(&self, key: &str, field: &str, value: &str) -> Result<(), LinkError> {
        let _added: i64 = bounded(self.command().hset(key, (field, value))).await?;
        Ok(())
    }

    /// `HGETALL key`.
    pub async fn hgetall(&self, key: &str) -> Result<HashMap<String, String>, LinkError> {
        bounded(self.command().hgetall(key)).await
    }

    /// `HDEL key fields...`.
    pub async fn hdel(&self, key: &str, fields: Vec<String>) -> Result<(), LinkError> {
        if fields.is_empty() {
            return Ok(());
        }
        let _removed: i64 = bounded(self.command().hdel(key, fields)).await?;
        Ok(())
    }

    /// Adds each bucket's counts (`HINCRBY`), marks it with `presence` (`HSET presence 1`)
    /// and sets its expiry, in one pipeline.
    pub async fn add_counts(
        &self,
        buckets: &[super::counts::Bucket],
        presence: &str,
    ) -> Result<(), LinkError> {
        if buckets.is_empty() {
            return Ok(());
        }
        let pipeline = self.pipeline();
        for (key, fields, ttl) in buckets {
            for (field, value) in fields {
                let value = i64::try_from(*value).unwrap_or(i64::MAX);
                let _: () = pipeline
                    .hincrby(key, field, value)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let _: () = pipeline
                .hset(key, (presence, 1))
                .await
                .map_err(|e| e.to_string())?;
            let _: () = pipeline
                .pexpire(key, ttl.as_millis() as i64, None)
                .await
                .map_err(|e| e.to_string())?;
        }
        let results = bounded_results(pipeline.try_all::<fred::types::Value>()).await?;
        match results.into_iter().find_map(Result::err) {
            Some(e) => Err(e.to_string()),
            None => Ok(()),
        }
    }

    /// `HGETALL` of every key, in one pipeline; a missing key reads as empty.
    pub async fn hgetall_many(
        &self,
        keys: &[String],
    ) -> Result<Vec<HashMap<String, u64>>, LinkError> {
        let pipeline = self.pipeline();
        for key in keys {
            let _: () = pipeline.hgetall(key).await.map_err(|e| e.to_string())?;
        }
        let results = bounded_results(pipeline.try_all::<HashMap<String, u64>>()).await?;
        results
            .into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
    }
}

/// Runs one fred command under [`TIMEOUT`].
async fn bounded<T>(
    command: impl Future<Output = Result<T, fred::error::Error>>,
) -> Result<T, LinkError> {
    match tokio::time::timeout(TIMEOUT, command).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {TIMEOUT:?}")),
    }
}

/// Runs a pipeline under [`TIMEOUT`].
async fn bounded_results<T>(results: impl Future<Output = T>) -> Result<T, LinkError> {
    tokio::time::timeout(TIMEOUT, results)
        .await
        .map_err(|_| format!("no answer within {TIMEOUT:?}"))
}
