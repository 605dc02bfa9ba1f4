//! `conf/graygate.yaml`: the server settings, read once at start.
//!
//! `yaml -> RawConf (serde, deny_unknown_fields) -> Config (validated, paths resolved)`.
//! The routing model lives in the rules files (see [`crate::rules`]); this file only says
//! where they are and how the server runs.

mod duration;

pub use duration::{parse_duration, Duration};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::diagnostics::{Diagnostics, Severity, SourceFile};
use crate::store::redis::RedisSettings;

/// Validated server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from.
    pub path: PathBuf,
    /// Proxy listeners.
    pub listen: Vec<SocketAddr>,
    /// The admin listener.
    pub admin: AdminConfig,
    /// The rules file or directory, resolved against the config file's directory.
    pub rules: PathBuf,
    /// The Redis assignment store; `None` means the embedded store.
    pub redis: Option<RedisSettings>,
    /// The name of the environment variable holding the channel-cookie key.
    pub cookie_secret_env: String,
    /// Settings handed to Pingora.
    pub server: ServerSettings,
    /// One line per request on the `graygate::access` log target.
    pub access_log: AccessLogFormat,
}

/// The access log's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// No access log.
    Off,
    /// `client method host/path status duration service= version= decided= rule= upstream=`.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The admin listener's settings.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Where `/metrics` and the admin API listen.
    pub listen: SocketAddr,
    /// The environment variable holding the bearer token.
    pub token_env: String,
}

/// The subset of Pingora's `ServerConf` that graygate exposes.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Seconds to keep serving after SIGTERM / an upgrade before shutting down.
    pub grace_period_seconds: u64,
    /// Seconds the runtime gets to finish in-flight work at shutdown.
    pub graceful_shutdown_timeout_seconds: u64,
    /// Pingora's pid file.
    pub pid_file: PathBuf,
    /// The socket the listeners are handed over on during a graceful upgrade (`run -u`).
    pub upgrade_sock: PathBuf,
    /// Pingora's error log (stderr when unset).
    pub error_log: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConf {
    #[serde(default = "default_listen")]
    listen: Vec<String>,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default = "default_rules")]
    rules: PathBuf,
    #[serde(default)]
    redis: Option<RawRedis>,
    #[serde(default = "default_cookie_secret_env")]
    cookie_secret_env: String,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    access_log: AccessLogFormat,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default = "default_admin_listen")]
    listen: String,
    #[serde(default = "default_token_env")]
    token_env: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: default_admin_listen(),
            token_env: default_token_env(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: String,
    #[serde(default)]
    lookup_timeout: Option<Duration>,
    #[serde(default)]
    cache_ttl: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    threads: Option<usize>,
    grace_period_seconds: Option<u64>,
    graceful_shutdown_timeout_seconds: Option<u64>,
    pid_file: Option<PathBuf>,
    upgrade_sock: Option<PathBuf>,
    error_log: Option<PathBuf>,
}

fn default_listen() -> Vec<String> {
    vec!["0.0.0.0:8080".into()]
}
fn default_rules() -> PathBuf {
    PathBuf::from("../rules")
}
fn default_admin_listen() -> String {
    "127.0.0.1:9901".into()
}
fn default_token_env() -> String {
    "GRAYGATE_ADMIN_TOKEN".into()
}
fn default_cookie_secret_env() -> String {
    "GRAYGATE_COOKIE_SECRET".into()
}

/// Turns a serde_yaml error into a diagnostic with the line serde_yaml found.
pub(crate) fn yaml_error(diags: &mut Diagnostics, file: &Arc<Path>, err: &serde_yaml::Error) {
    let line = err.location().map(|l| l.line());
    let mut message = err.to_string();
    // serde_yaml appends " at line N column M"; the line is already in the prefix.
    if let Some(at) = message.find(" at line ") {
        message.truncate(at);
    }
    diags.push(Severity::Error, file, line, message);
}

impl Config {
    /// Reads and validates `path`, reporting every problem found.
    pub fn load(path: &Path) -> Result<Config, Diagnostics> {
        let file: Arc<Path> = Arc::from(path);
        let mut diags = Diagnostics::default();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                diags.push(Severity::Error, &file, None, format!("cannot read: {e}"));
                return Err(diags);
            }
        };
        let raw: RawConf = match serde_yaml::from_str(&text) {
            Ok(raw) => raw,
            Err(e) => {
                yaml_error(&mut diags, &file, &e);
                return Err(diags);
            }
        };
        let source = SourceFile::new(path, &text);
        let config = Self::validate(path, raw, &source, &mut diags);
        if diags.has_errors() {
            Err(diags)
        } else {
            Ok(config)
        }
    }

    fn validate(path: &Path, raw: RawConf, source: &SourceFile, diags: &mut Diagnostics) -> Config {
        let file = &source.path;
        let mut error = |at: &str, message: String| {
            diags.push(Severity::Error, file, source.line(at), message);
        };
        let mut listen = Vec::new();
        if raw.listen.is_empty() {
            error(
                "listen",
                "listen: at least one proxy address is needed".into(),
            );
        }
        for (i, addr) in raw.listen.iter().enumerate() {
            match addr.parse::<SocketAddr>() {
                Ok(a) => listen.push(a),
                Err(_) => error(
                    &format!("listen.{i}"),
                    format!("listen: \"{addr}\" is not an address like 0.0.0.0:8080"),
                ),
            }
        }
        let admin_listen = raw.admin.listen.parse::<SocketAddr>().unwrap_or_else(|_| {
            error(
                "admin.listen",
                format!(
                    "admin.listen: \"{}\" is not an address like 127.0.0.1:9901",
                    raw.admin.listen
                ),
            );
            SocketAddr::from(([127, 0, 0, 1], 9901))
        });
        let redis = raw.redis.map(|r| {
            if let Err(why) = crate::store::redis::check_url(&r.url) {
                error(
                    "redis.url",
                    format!("redis.url: \"{}\" is not usable: {why}", r.url),
                );
            }
            let lookup_timeout = r
                .lookup_timeout
                .map(|d| d.0)
                .unwrap_or(std::time::Duration::from_millis(20));
            if lookup_timeout.is_zero() {
                error(
                    "redis.lookup_timeout",
                    "redis.lookup_timeout: must be above 0".into(),
                );
            }
            RedisSettings {
                url: r.url,
                lookup_timeout,
                cache_ttl: r
                    .cache_ttl
                    .map(|d| d.0)
                    .unwrap_or(std::time::Duration::from_secs(30)),
            }
        });
        let threads = raw.server.threads.unwrap_or(2);
        if threads == 0 {
            error(
                "server.threads",
                "server.threads: must be at least 1".into(),
            );
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let run_dir = std::env::temp_dir();
        Config {
            path: path.to_path_buf(),
            listen,
            admin: AdminConfig {
                listen: admin_listen,
                token_env: raw.admin.token_env,
            },
            rules: resolve(&raw.rules),
            redis,
            cookie_secret_env: raw.cookie_secret_env,
            server: ServerSettings {
                threads: threads.max(1),
                grace_period_seconds: raw.server.grace_period_seconds.unwrap_or(5),
                graceful_shutdown_timeout_seconds: raw
                    .server
                    .graceful_shutdown_timeout_seconds
                    .unwrap_or(5),
                pid_file: raw
                    .server
                    .pid_file
                    .map(|p| resolve(&p))
                    .unwrap_or_else(|| run_dir.join("graygate.pid")),
                upgrade_sock: raw
                    .server
                    .upgrade_sock
                    .map(|p| resolve(&p))
                    .unwrap_or_else(|| run_dir.join("graygate_upgrade.sock")),
                error_log: raw.server.error_log.map(|p| resolve(&p)),
            },
            access_log: raw.access_log,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Config, Diagnostics> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("graygate.yaml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path)
    }

    #[test]
    fn defaults_and_relative_rules_path() {
        let config = load_text("listen: [\"127.0.0.1:8080\"]\nrules: ../rules\n").unwrap();
        assert_eq!(config.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert!(config.rules.ends_with("../rules"));
        assert_eq!(config.admin.listen, "127.0.0.1:9901".parse().unwrap());
        assert_eq!(config.admin.token_env, "GRAYGATE_ADMIN_TOKEN");
        assert_eq!(config.server.threads, 2);
        assert_eq!(config.server.grace_period_seconds, 5);
    }

    #[test]
    fn redis_settings_and_defaults() {
        let config = load_text("redis:\n  url: redis://127.0.0.1:6379/0\n").unwrap();
        let redis = config.redis.unwrap();
        assert_eq!(redis.lookup_timeout, std::time::Duration::from_millis(20));
        assert_eq!(redis.cache_ttl, std::time::Duration::from_secs(30));
        let config = load_text("redis: { url: \"redis-cluster://10.0.0.1:7000\", lookup_timeout: 5ms, cache_ttl: 1m }\n").unwrap();
        assert_eq!(
            config.redis.unwrap().cache_ttl,
            std::time::Duration::from_secs(60)
        );
        let err = load_text("redis:\n  url: \"mysql://x\"\n").unwrap_err();
        assert!(
            err.items()[0]
                .to_string()
                .contains(":2: error: redis.url: \"mysql://x\" is not usable"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_an_error_with_its_line() {
        let err = load_text("listen: [\"127.0.0.1:8080\"]\nlisten_typo: 1\n").unwrap_err();
        let d = &err.items()[0];
        assert_eq!(d.line, Some(2));
        assert!(
            d.message.starts_with("unknown field `listen_typo`"),
            "{}",
            d.message
        );
    }

    #[test]
    fn every_bad_value_is_reported() {
        let err = load_text("listen: [\"nope\", \"1.2.3.4:80\", \"x:y\"]\nadmin:\n  listen: bad\nserver:\n  threads: 0\n")
            .unwrap_err();
        let messages: Vec<String> = err.items().iter().map(|d| d.to_string()).collect();
        assert_eq!(messages.len(), 4, "{messages:?}");
        assert!(messages[0]
            .ends_with(":1: error: listen: \"nope\" is not an address like 0.0.0.0:8080"));
        assert!(messages[1].contains("\"x:y\""));
        assert!(messages[2]
            .ends_with(":3: error: admin.listen: \"bad\" is not an address like 127.0.0.1:9901"));
        assert!(messages[3].ends_with(":5: error: server.threads: must be at least 1"));
    }
}
