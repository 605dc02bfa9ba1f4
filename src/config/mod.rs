//! `conf/graygate.yaml`: the server settings, read once at start.
//!
//! `yaml -> RawConf (serde, deny_unknown_fields) -> Config (validated, paths resolved)`.
//! The routing model lives in the rules files (see [`crate::rules`]); this file only says
//! where they are and how the server runs.

mod duration;
mod size;

pub use duration::{parse_duration, Duration};
pub use size::{parse_size, Size};

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use serde::Deserialize;

use crate::diagnostics::{Diagnostics, Severity, SourceFile};
use crate::facts::{Arrival, ListenerId, Scheme};

/// Validated server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from.
    pub path: PathBuf,
    /// Proxy listeners, in the order written (a request's [`ListenerId`] indexes this).
    pub listeners: Vec<Listener>,
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
    /// `trusted_proxies:`: peers that may say who the client is (PROXY header,
    /// `X-Forwarded-For`); empty trusts nobody.
    pub trusted_proxies: Vec<IpNet>,
    /// `state.dir`: where runtime state that must survive a restart is written (rollouts).
    pub state_dir: PathBuf,
    /// `limits:`: slow clients, connections per client, request bodies (SPEC section 14).
    pub limits: Limits,
}

/// Validated `limits:` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A request header must arrive complete within this, on new and keep-alive connections.
    pub header_timeout: std::time::Duration,
    /// Connections one client address may hold open (after `trusted_proxies`).
    pub max_connections_per_client: u32,
    /// The largest request body accepted (413 beyond it); services may override it.
    pub max_body_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: std::time::Duration::from_secs(10),
            max_connections_per_client: 512,
            max_body_size: 100 << 20,
        }
    }
}

/// `state.dir` when the config says nothing.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/graygate";

/// Validated `redis:` settings.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// What fred accepts: `redis://`, `redis-cluster://`, `redis-sentinel://`.
    pub url: String,
    /// Per lookup; past it the lookup counts as "no assignment".
    pub lookup_timeout: std::time::Duration,
    /// How long a cached answer may be used without an invalidation.
    pub cache_ttl: std::time::Duration,
}

/// Checks that fred accepts `url`.
pub fn check_redis_url(url: &str) -> Result<(), String> {
    const SCHEMES: [&str; 4] = [
        "redis://",
        "redis-cluster://",
        "redis-sentinel://",
        "redis+unix://",
    ];
    if !SCHEMES.iter().any(|s| url.starts_with(s)) {
        return Err(format!("the scheme must be one of {}", SCHEMES.join(", ")));
    }
    fred::types::config::Config::from_url(url)
        .map(drop)
        .map_err(|e| e.details().to_string())
}

/// One proxy listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Its name (conditions and logs say which listener a request arrived on).
    pub name: Arc<str>,
    /// The address it binds.
    pub addr: SocketAddr,
    /// What it speaks.
    pub kind: ListenerKind,
}

/// What a listener speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerKind {
    /// HTTP without TLS: HTTP/1.1, and HTTP/2 with prior knowledge when `h2c` is set.
    Plain {
        /// Also HTTP/2 with prior knowledge (gRPC without TLS).
        h2c: bool,
        /// Every request is answered 308 to `https://{host}[:port]{path}?{query}`.
        redirect_https: Option<u16>,
    },
    /// HTTPS: TLS 1.2/1.3 with certificates chosen by SNI, HTTP/2 by ALPN.
    Tls(TlsListener),
}

impl ListenerKind {
    /// The scheme of requests arriving on it.
    pub fn scheme(&self) -> Scheme {
        match self {
            ListenerKind::Plain { .. } => Scheme::Http,
            ListenerKind::Tls(_) => Scheme::Https,
        }
    }

    /// The short form's kind: HTTP/1.1, no redirect.
    pub const PLAIN: ListenerKind = ListenerKind::Plain {
        h2c: false,
        redirect_https: None,
    };
}

/// A TLS listener's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListener {
    /// Certificate pairs in the order written: SNI picks by DNS name, the first is the default.
    pub certificates: Vec<CertificateFiles>,
    /// The oldest protocol version accepted.
    pub min_version: TlsVersion,
    /// ALPN offers `h2` before `http/1.1`.
    pub http2: bool,
    /// `Strict-Transport-Security: max-age=...` on every response.
    pub hsts: Option<std::time::Duration>,
    /// A handshake not finished by then is dropped (and counted `timeout`).
    pub handshake_timeout: std::time::Duration,
}

/// The default of `tls.handshake_timeout`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// The certificate chain (leaf first), resolved against the config file's directory.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
    /// The `cert` path as written: the `certificate` label of the expiry metric.
    pub label: String,
}

/// The oldest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// Which listener a connection arrived on, by the local address it reached.
pub fn arrival(listeners: &[Listener], local: Option<SocketAddr>) -> Arrival {
    let found = local.and_then(|local| {
        listeners.iter().position(|l| {
            l.addr.port() == local.port()
                && (l.addr.ip().is_unspecified() || l.addr.ip() == local.ip())
        })
    });
    match found {
        Some(i) => Arrival {
            listener: ListenerId(i as u16),
            scheme: listeners[i].kind.scheme(),
        },
        None => Arrival::default(),
    }
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
    /// The short form: plain HTTP/1.1 listeners named `http`, `http-2`, ...
    #[serde(default)]
    listen: Option<Vec<String>>,
    #[serde(default)]
    listeners: Option<Vec<RawListener>>,
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
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    header_timeout: Option<Duration>,
    max_connections_per_client: Option<u32>,
    max_body_size: Option<Size>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: String,
    listen: String,
    #[serde(default)]
    redirect_https: Option<u16>,
    #[serde(default)]
    h2c: bool,
    #[serde(default)]
    tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    certificates: Vec<RawCertificate>,
    #[serde(default)]
    min_version: Option<String>,
    #[serde(default)]
    http2: Option<bool>,
    #[serde(default)]
    hsts: Option<Duration>,
    #[serde(default)]
    handshake_timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    cert: PathBuf,
    key: PathBuf,
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

const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
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

/// The name of the `i`th listener of the short form `listen: [...]`: `http`, `http-2`, ...
fn short_form_name(i: usize) -> String {
    match i {
        0 => "http".into(),
        _ => format!("http-{}", i + 1),
    }
}

fn is_listener_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// What listener `name` speaks, from its written settings; problems go to `error`.
fn listener_kind(
    name: &str,
    raw: RawListener,
    at: &str,
    resolve: &dyn Fn(&Path) -> PathBuf,
    error: &mut dyn FnMut(&str, String),
) -> ListenerKind {
    let RawListener {
        name: _,
        listen: _,
        redirect_https,
        h2c,
        tls,
    } = raw;
    let Some(tls) = tls else {
        if redirect_https == Some(0) {
            error(
                &format!("{at}.redirect_https"),
                format!("listeners: {name}: redirect_https must be a port (1-65535)"),
            );
        }
        return ListenerKind::Plain {
            h2c,
            redirect_https: redirect_https.filter(|p| *p != 0),
        };
    };
    if h2c {
        error(
            &format!("{at}.h2c"),
            format!("listeners: {name}: h2c is for plain listeners; TLS listeners offer h2 by ALPN (tls.http2)"),
        );
    }
    if redirect_https.is_some() {
        error(
            &format!("{at}.redirect_https"),
            format!("listeners: {name}: redirect_https is for plain listeners, this one is HTTPS already"),
        );
    }
    let RawTls {
        certificates,
        min_version,
        http2,
        hsts,
        handshake_timeout,
    } = tls;
    let handshake_timeout = handshake_timeout.map_or(DEFAULT_HANDSHAKE_TIMEOUT, |d| d.0);
    if handshake_timeout.is_zero() {
        error(
            &format!("{at}.tls.handshake_timeout"),
            format!("listeners: {name}: tls.handshake_timeout must be above 0"),
        );
    }
    if certificates.is_empty() {
        error(
            &format!("{at}.tls.certificates"),
            format!("listeners: {name}: tls.certificates needs at least one {{ cert, key }} pair"),
        );
    }
    let min_version = match min_version.as_deref() {
        None | Some("1.2") => TlsVersion::Tls12,
        Some("1.3") => TlsVersion::Tls13,
        Some(other) => {
            error(
                &format!("{at}.tls.min_version"),
                format!("listeners: {name}: tls.min_version \"{other}\" is not \"1.2\" or \"1.3\""),
            );
            TlsVersion::Tls12
        }
    };
    let hsts = hsts.map(|d| d.0);
    if hsts.is_some_and(|d| d.is_zero()) {
        error(
            &format!("{at}.tls.hsts"),
            format!("listeners: {name}: tls.hsts must be above 0 (leave it out to send no HSTS)"),
        );
    }
    ListenerKind::Tls(TlsListener {
        certificates: certificates
            .into_iter()
            .map(|RawCertificate { cert, key }| CertificateFiles {
                label: cert.to_string_lossy().into_owned(),
                cert: resolve(&cert),
                key: resolve(&key),
            })
            .collect(),
        min_version,
        http2: http2.unwrap_or(true),
        hsts,
        handshake_timeout,
    })
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
        let RawConf {
            listen,
            listeners: raw_listeners,
            admin,
            rules,
            redis,
            cookie_secret_env,
            server,
            access_log,
            trusted_proxies: raw_trusted,
            state,
            limits: raw_limits,
        } = raw;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        // (name, address text, YAML path of the listener, what it speaks as written)
        let both = listen.is_some() && raw_listeners.is_some();
        let written: Vec<(String, String, String, Option<RawListener>)> =
            match (listen, raw_listeners) {
                (Some(_), Some(_)) => {
                    error(
                        "listeners",
                        "listeners: use either listen (the short form) or listeners, not both"
                            .into(),
                    );
                    Vec::new()
                }
                (Some(addrs), None) => addrs
                    .into_iter()
                    .enumerate()
                    .map(|(i, addr)| (short_form_name(i), addr, format!("listen.{i}"), None))
                    .collect(),
                (None, Some(items)) => items
                    .into_iter()
                    .enumerate()
                    .map(|(i, raw)| {
                        (
                            raw.name.clone(),
                            raw.listen.clone(),
                            format!("listeners.{i}"),
                            Some(raw),
                        )
                    })
                    .collect(),
                (None, None) => vec![(
                    short_form_name(0),
                    DEFAULT_LISTEN.into(),
                    "listen".into(),
                    None,
                )],
            };
        if written.is_empty() && !both {
            error(
                "listen",
                "listen: at least one proxy address is needed".into(),
            );
        }
        let mut listeners: Vec<Listener> = Vec::new();
        for (name, addr, at, raw) in written {
            if !is_listener_name(&name) {
                error(
                    &at,
                    format!("listeners: \"{name}\" is not a name (letters, digits, '-', '_')"),
                );
            }
            if listeners.iter().any(|l| *l.name == *name) {
                error(&at, format!("listeners: \"{name}\" is defined twice"));
            }
            let kind = match raw {
                None => ListenerKind::PLAIN,
                Some(raw) => listener_kind(&name, raw, &at, &resolve, &mut error),
            };
            match addr.parse::<SocketAddr>() {
                Ok(a) if listeners.iter().any(|l| l.addr == a) => {
                    error(&at, format!("listeners: {a} is listened on twice"));
                }
                Ok(a) => listeners.push(Listener {
                    name: name.into(),
                    addr: a,
                    kind,
                }),
                Err(_) => error(
                    &at,
                    format!("listen: \"{addr}\" is not an address like 0.0.0.0:8080"),
                ),
            }
        }
        let admin_listen = admin.listen.parse::<SocketAddr>().unwrap_or_else(|_| {
            error(
                "admin.listen",
                format!(
                    "admin.listen: \"{}\" is not an address like 127.0.0.1:9901",
                    admin.listen
                ),
            );
            SocketAddr::from(([127, 0, 0, 1], 9901))
        });
        let redis = redis.map(|r| {
            if let Err(why) = check_redis_url(&r.url) {
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
        let mut trusted_proxies = Vec::new();
        for (i, text) in raw_trusted.iter().enumerate() {
            let net = text
                .parse::<IpNet>()
                .ok()
                .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from));
            match net {
                Some(net) => trusted_proxies.push(net.trunc()),
                None => error(
                    &format!("trusted_proxies.{i}"),
                    format!("trusted_proxies: \"{text}\" is not a CIDR like 10.0.0.0/8"),
                ),
            }
        }
        let threads = server.threads.unwrap_or(2);
        if threads == 0 {
            error(
                "server.threads",
                "server.threads: must be at least 1".into(),
            );
        }
        let limits = limits(raw_limits, &mut error);
        let run_dir = std::env::temp_dir();
        Config {
            path: path.to_path_buf(),
            listeners,
            admin: AdminConfig {
                listen: admin_listen,
                token_env: admin.token_env,
            },
            rules: resolve(&rules),
            redis,
            cookie_secret_env,
            server: ServerSettings {
                threads: threads.max(1),
                grace_period_seconds: server.grace_period_seconds.unwrap_or(5),
                graceful_shutdown_timeout_seconds: server
                    .graceful_shutdown_timeout_seconds
                    .unwrap_or(5),
                pid_file: server
                    .pid_file
                    .map(|p| resolve(&p))
                    .unwrap_or_else(|| run_dir.join("graygate.pid")),
                upgrade_sock: server
                    .upgrade_sock
                    .map(|p| resolve(&p))
                    .unwrap_or_else(|| run_dir.join("graygate_upgrade.sock")),
                error_log: server.error_log.map(|p| resolve(&p)),
            },
            access_log,
            trusted_proxies,
            state_dir: state
                .dir
                .map(|p| resolve(&p))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            limits,
        }
    }
}

/// The `limits:` section, defaults filled in; a zero is an error (leave a key out for its
/// default).
fn limits(raw: RawLimits, error: &mut dyn FnMut(&str, String)) -> Limits {
    let RawLimits {
        header_timeout,
        max_connections_per_client,
        max_body_size,
    } = raw;
    let defaults = Limits::default();
    let limits = Limits {
        header_timeout: header_timeout.map_or(defaults.header_timeout, |d| d.0),
        max_connections_per_client: max_connections_per_client
            .unwrap_or(defaults.max_connections_per_client),
        max_body_size: max_body_size.map_or(defaults.max_body_size, |s| s.0),
    };
    if limits.header_timeout.is_zero() {
        error(
            "limits.header_timeout",
            "limits.header_timeout: must be above 0".into(),
        );
    }
    if limits.max_connections_per_client == 0 {
        error(
            "limits.max_connections_per_client",
            "limits.max_connections_per_client: must be at least 1".into(),
        );
    }
    if limits.max_body_size == 0 {
        error(
            "limits.max_body_size",
            "limits.max_body_size: must be above 0".into(),
        );
    }
    limits
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
        assert_eq!(
            config.listeners,
            vec![Listener {
                name: "http".into(),
                addr: "127.0.0.1:8080".parse().unwrap(),
                kind: ListenerKind::PLAIN,
            }]
        );
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

    #[test]
    fn trusted_proxies_are_networks() {
        assert!(load_text("rules: ../rules\n")
            .unwrap()
            .trusted_proxies
            .is_empty());
        let config =
            load_text("trusted_proxies: [10.0.0.0/8, 192.0.2.7, \"2001:db8::1/32\"]\n").unwrap();
        let nets: Vec<String> = config
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
        let err = load_text("trusted_proxies:\n  - 10.0.0.0/8\n  - 10.0.0.0/33\n  - lb.internal\n")
            .unwrap_err();
        let messages: Vec<String> = err.items().iter().map(|d| d.to_string()).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(
            messages[0].ends_with(
                ":3: error: trusted_proxies: \"10.0.0.0/33\" is not a CIDR like 10.0.0.0/8"
            ),
            "{messages:?}"
        );
        assert!(
            messages[1].ends_with(
                ":4: error: trusted_proxies: \"lb.internal\" is not a CIDR like 10.0.0.0/8"
            ),
            "{messages:?}"
        );
    }

    #[test]
    fn limits_defaults_values_and_errors() {
        let config = load_text("rules: ../rules\n").unwrap();
        assert_eq!(config.limits, Limits::default());
        assert_eq!(
            config.limits.header_timeout,
            std::time::Duration::from_secs(10)
        );
        let config = load_text(
            "limits: { header_timeout: 2s, max_connections_per_client: 8, max_body_size: 1MB }\n",
        )
        .unwrap();
        assert_eq!(
            config.limits,
            Limits {
                header_timeout: std::time::Duration::from_secs(2),
                max_connections_per_client: 8,
                max_body_size: 1 << 20,
            }
        );
        let config = load_text("limits:\n  max_body_size: 4096\n").unwrap();
        assert_eq!(config.limits.max_body_size, 4096);
        let err = load_text(
            "limits:\n  header_timeout: 0s\n  max_connections_per_client: 0\n  max_body_size: 0\n",
        )
        .unwrap_err();
        let messages: Vec<String> = err.items().iter().map(|d| d.to_string()).collect();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert!(messages[0].ends_with(":2: error: limits.header_timeout: must be above 0"));
        assert!(messages[1]
            .ends_with(":3: error: limits.max_connections_per_client: must be at least 1"));
        assert!(messages[2].ends_with(":4: error: limits.max_body_size: must be above 0"));
        let err = load_text("limits:\n  max_body_size: lots\n").unwrap_err();
        assert!(
            err.items()[0]
                .to_string()
                .contains(":2: error: limits: \"lots\" is not a size like 512KB, 100MB or 1GB"),
            "{err}"
        );
        let err = load_text("limits:\n  header_timeuot: 1s\n").unwrap_err();
        assert!(
            err.items()[0]
                .message
                .contains("unknown field `header_timeuot`"),
            "{err}"
        );
    }

    #[test]
    fn listeners_long_and_short_form() {
        let config = load_text("listen: [\"127.0.0.1:8080\", \"127.0.0.1:8081\"]\n").unwrap();
        let names: Vec<&str> = config.listeners.iter().map(|l| &*l.name).collect();
        assert_eq!(names, ["http", "http-2"]);
        let config = load_text(
            "listeners:\n  - { name: public, listen: \"0.0.0.0:8080\" }\n  - { name: internal, listen: \"127.0.0.1:9000\" }\n",
        )
        .unwrap();
        assert_eq!(config.listeners[1].name.as_ref(), "internal");
        assert_eq!(config.listeners[1].kind.scheme(), Scheme::Http);
        // A connection is placed on its listener by the local address it reached; a wildcard
        // listener takes any local address on its port.
        let local = |a: &str| Some(a.parse().unwrap());
        let arrival_at = |a| arrival(&config.listeners, local(a)).listener;
        assert_eq!(arrival_at("192.0.2.7:8080"), ListenerId(0));
        assert_eq!(arrival_at("127.0.0.1:9000"), ListenerId(1));
        assert_eq!(
            arrival_at("127.0.0.2:9000"),
            ListenerId(0),
            "no match: the first"
        );
        assert_eq!(arrival(&config.listeners, None), Arrival::default());
        // Defaults: one plain listener on :8080.
        let config = load_text("rules: ../rules\n").unwrap();
        assert_eq!(config.listeners[0].addr, "0.0.0.0:8080".parse().unwrap());
    }

    #[test]
    fn bad_listeners_are_reported_with_their_lines() {
        let messages = |text: &str| -> Vec<String> {
            load_text(text)
                .unwrap_err()
                .items()
                .iter()
                .map(|d| d.to_string())
                .collect()
        };
        let m = messages(
            "listeners:\n  - { name: a, listen: \"127.0.0.1:1\" }\n  - { name: a, listen: \"127.0.0.1:2\" }\n  - { name: \"b c\", listen: \"127.0.0.1:1\" }\n  - { name: d, listen: nowhere }\n",
        );
        assert_eq!(m.len(), 4, "{m:?}");
        assert!(
            m[0].ends_with(":3: error: listeners: \"a\" is defined twice"),
            "{m:?}"
        );
        assert!(
            m[1].ends_with(
                ":4: error: listeners: \"b c\" is not a name (letters, digits, '-', '_')"
            ),
            "{m:?}"
        );
        assert!(
            m[2].ends_with(":4: error: listeners: 127.0.0.1:1 is listened on twice"),
            "{m:?}"
        );
        assert!(
            m[3].ends_with(":5: error: listen: \"nowhere\" is not an address like 0.0.0.0:8080"),
            "{m:?}"
        );
        let m = messages("listen: [\"127.0.0.1:1\"]\nlisteners: []\n");
        assert!(
            m[0].ends_with(
                ":2: error: listeners: use either listen (the short form) or listeners, not both"
            ),
            "{m:?}"
        );
        let m = messages("listeners:\n  - { name: a, listen: \"127.0.0.1:1\", tls: {} }\n");
        assert!(m[0].contains("missing field `certificates`"), "{m:?}");
        let m = messages("listen: []\n");
        assert!(
            m[0].ends_with(":1: error: listen: at least one proxy address is needed"),
            "{m:?}"
        );
    }
}
