//! Assembles the Pingora server: proxy listeners, the admin listener and health checks.
//!
//! `main` and the integration tests share this, so tests run the real server in-process.

use std::sync::Arc;

use pingora::apps::http_app::HttpServer;
use pingora::apps::HttpServerOptions;
use pingora::proxy::http_proxy;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::access_log::AccessLog;
use crate::admin::{AdminApp, Steering};
use crate::channels::ChannelKey;
use crate::config::{Config, ListenerKind};
use crate::diagnostics::{Diagnostics, Severity};
use crate::edge::app::EdgeApp;
use crate::edge::tls::{self, TlsEndpoint};
use crate::emergency::Emergency;
use crate::facts::client::TrustedProxies;
use crate::fleet::{Fleet, FleetService};
use crate::metrics::Metrics;
use crate::proxy::Gateway;
use crate::reload::{ReloadTriggers, Reloader};
use crate::rollout::{RolloutTicker, Rollouts};
use crate::rules::model::Listeners;
use crate::state::SnapshotStore;
use crate::stats::StatsTicker;
use crate::store::embedded::EmbeddedStore;
use crate::store::redis::{RedisMaintainer, RedisStore};
use crate::store::{Lookups, Store};
use crate::upstream::HealthChecker;

/// Flags of `graygate run` that Pingora acts on.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Detach into the background.
    pub daemon: bool,
    /// Take the listeners over from a running instance (graceful upgrade).
    pub upgrade: bool,
}

/// A loaded configuration with its live state.
pub struct App {
    /// Server settings.
    pub config: Config,
    /// The current rules generation.
    pub store: Arc<SnapshotStore>,
    /// Every exported series.
    pub metrics: Arc<Metrics>,
    /// The admin API's bearer token, read from `admin.token_env`; `None` disables the API.
    pub admin_token: Option<String>,
    /// Store lookups for the decisions (Redis or embedded).
    pub lookups: Arc<Lookups>,
    /// Signs and verifies channel cookies.
    pub channel_key: ChannelKey,
    /// The TLS endpoint of each listener (`None` for plain ones), in the config's order.
    pub tls: tls::ListenerEndpoints,
    /// The rollouts' records and their checks.
    pub rollouts: Arc<Rollouts>,
    /// The emergency override.
    pub emergency: Arc<Emergency>,
    /// This instance's part in the fleet, when Redis is configured.
    pub fleet: Option<Arc<Fleet>>,
    /// The buffered access log; `flush` it after the server stops.
    pub access_log: Arc<AccessLog>,
    /// The Redis store, when configured, for its background connection service.
    redis: Option<Arc<RedisStore>>,
}

impl App {
    /// Reads the config and the rules it names; all problems are returned together.
    pub fn load(config_path: &std::path::Path) -> Result<App, Diagnostics> {
        let config = Config::load(config_path)?;
        let metrics = Arc::new(Metrics::new());
        let store = Arc::new(SnapshotStore::load(
            &config.rules,
            Listeners::of(&config.listeners),
            &metrics,
        )?);

        let admin_token = std::env::var(&config.admin.token_env)
            .ok()
            .filter(|t| !t.is_empty());
        let (store_impl, redis): (Arc<dyn Store>, _) = match &config.redis {
            Some(settings) => {
                let redis = RedisStore::new(settings.clone()).map_err(|why| {
                    let mut diags = Diagnostics::default();
                    let file: Arc<std::path::Path> = Arc::from(config.path.as_path());
                    diags.push(Severity::Error, &file, None, format!("redis: {why}"));
                    diags
                })?;
                (redis.clone(), Some(redis))
            }
            None => (Arc::new(EmbeddedStore::default()), None),
        };
        // Before serving: the saved steps and override apply to the first request.
        let rollouts = Arc::new(Rollouts::open(
            Arc::clone(&store),
            Arc::clone(&metrics),
            &config.state_dir,
            config.redis.is_some(),
        ));
        let instance = instance_id(&config);
        let emergency = Arc::new(Emergency::open(
            Arc::clone(&store),
            Arc::clone(&metrics),
            &config.state_dir,
            &instance,
        ));
        let fleet = match &config.redis {
            Some(settings) => {
                let mut address = format!("admin {}", config.admin.listen);
                for listener in &config.listeners {
                    address.push_str(&format!(", {} {}", listener.name, listener.addr));
                }
                let fleet = Fleet::new(
                    &settings.url,
                    instance,
                    address,
                    Arc::clone(&store),
                    Arc::clone(&metrics),
                    Arc::clone(&rollouts),
                    Arc::clone(&emergency),
                )
                .map_err(|why| {
                    let mut diags = Diagnostics::default();
                    let file: Arc<std::path::Path> = Arc::from(config.path.as_path());
                    diags.push(Severity::Error, &file, None, format!("redis: {why}"));
                    diags
                })?;
                Some(Arc::new(fleet))
            }
            None => None,
        };
        let lookups = Arc::new(Lookups::new(store_impl, Arc::clone(&metrics)));
        let channel_key = ChannelKey::from_env(&config.cookie_secret_env);
        let (tls, expiring) = tls::endpoints(&config.listeners, &metrics)?;
        for warning in expiring.items() {
            log::warn!("{warning}");
        }
        for listener in &config.listeners {
            metrics.prepare_listener(
                &listener.name,
                matches!(listener.kind, ListenerKind::Tls(_)),
            );
        }
        let access_log = AccessLog::stderr(config.access_log);
        Ok(App {
            access_log,
            config,
            store,
            metrics,
            admin_token,
            lookups,
            channel_key,
            tls,
            rollouts,
            emergency,
            fleet,
            redis,
        })
    }

    /// The Pingora server, bootstrapped, with every service added; call `run` on it.
    pub fn server(&self, options: RunOptions) -> Server {
        let settings = &self.config.server;
        let conf = ServerConf {
            threads: settings.threads,
            daemon: options.daemon,
            grace_period_seconds: Some(settings.grace_period_seconds),
            graceful_shutdown_timeout_seconds: Some(settings.graceful_shutdown_timeout_seconds),
            pid_file: settings.pid_file.to_string_lossy().into_owned(),
            upgrade_sock: settings.upgrade_sock.to_string_lossy().into_owned(),
            error_log: settings
                .error_log
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned()),
            ..ServerConf::default()
        };
        let opt = Opt {
            upgrade: options.upgrade,
            daemon: options.daemon,
            ..Opt::default()
        };
        let mut server = Server::new_with_opt_and_conf(opt, conf);
        server.bootstrap();

        let gateway = || {
            Gateway::new(
                Arc::clone(&self.store),
                Arc::clone(&self.metrics),
                Arc::clone(&self.lookups),
                self.channel_key.clone(),
                &self.config,
                Arc::clone(&self.access_log),
            )
        };
        // Pingora's h2c switch is per application: listeners with `h2c: true` are served by a
        // second proxy over the same state.
        let http = http_proxy(&server.configuration, gateway());
        let mut h2c = http_proxy(&server.configuration, gateway());
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        h2c.server_options = Some(options);
        let edge = EdgeApp::new(
            &self.config.listeners,
            &self.tls,
            TrustedProxies::new(self.config.trusted_proxies.iter().copied()),
            &self.config.limits,
            http,
            h2c,
            &self.metrics,
        );
        let mut proxy = Service::new("graygate proxy".to_string(), edge);
        for listener in &self.config.listeners {
            proxy.add_tcp(&listener.addr.to_string());
        }
        let certificates: Vec<Arc<TlsEndpoint>> = self.tls.iter().flatten().cloned().collect();
        let reloader = Arc::new(
            Reloader::new(Arc::clone(&self.store), Arc::clone(&self.metrics))
                .with_certificates(certificates),
        );
        let token = self.admin_token.clone();
        if token.is_none() {
            log::warn!(
                "{} is not set: the admin API (rules, reload, explain) is disabled",
                self.config.admin.token_env
            );
        }
        let admin_app = AdminApp::new(
            Arc::clone(&self.metrics),
            Arc::clone(&reloader),
            Arc::clone(&self.lookups),
            self.channel_key.clone(),
            Steering {
                rollouts: Arc::clone(&self.rollouts),
                emergency: Arc::clone(&self.emergency),
                fleet: self.fleet.clone(),
            },
            token,
            &self.config.admin.token_env,
        );
        let mut admin = Service::new("graygate admin".to_string(), HttpServer::new_app(admin_app));
        admin.threads = Some(1);
        admin.add_tcp(&self.config.admin.listen.to_string());
        let health = background_service(
            "graygate health checks",
            HealthChecker::new(
                {
                    let store = Arc::clone(&self.store);
                    Box::new(move || store.current_services())
                },
                Arc::clone(&self.metrics),
            ),
        );
        let triggers =
            background_service("graygate reload triggers", ReloadTriggers::new(reloader));
        server.add_service(proxy);
        server.add_service(admin);
        server.add_service(health);
        server.add_service(background_service(
            "graygate stats",
            StatsTicker::new(Arc::clone(self.store.stats())),
        ));
        server.add_service(triggers);
        // In a fleet the fleet ticks the rollouts (one judge); alone, the rollout ticker does.
        if let Some(fleet) = &self.fleet {
            server.add_service(background_service(
                "graygate fleet",
                FleetService::new(Arc::clone(fleet)),
            ));
        } else {
            server.add_service(background_service(
                "graygate rollouts",
                RolloutTicker::new(Arc::clone(&self.rollouts)),
            ));
        }
        if let Some(redis) = &self.redis {
            server.add_service(background_service(
                "graygate redis",
                RedisMaintainer::new(Arc::clone(redis)),
            ));
        }
        server
    }
}

/// This instance's id in the fleet: the host's name and the admin port (unique per host, and
/// across the instances a test runs in one process).
fn instance_id(config: &Config) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "graygate".to_string());
    format!("{host}:{}", config.admin.listen.port())
}
