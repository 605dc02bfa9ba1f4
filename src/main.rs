//! The `graygate` command: `run`, `check`, `explain` and `rollout`.
#![deny(unsafe_code)]

/// glibc's malloc was 28% of the instructions per proxied request (docs/performance.md);
/// mimalloc cut user time per request by about a quarter.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns what loading the rules freed to the OS, then keeps the memory mimalloc frees
/// for reuse instead of returning it, unless the operator chose with `MIMALLOC_PURGE_DELAY`.
///
/// By default mimalloc returns pages free for a second (`madvise`), checked when their
/// thread next allocates: the reload thread returned the previous generation's pages at the
/// start of each reload and faulted them in again while compiling, and that page-table
/// work on the worker's core added about 0.4 ms to p99 under load (docs/performance.md,
/// "Sixth pass"). Kept, the memory of a generation serves the next one: resident memory
/// stays at its peak (about two generations of rules), which the default already nearly
/// did (278 MiB against 263 MiB after reloads of 10,000 rules and 2,000 services). The
/// first load's garbage (the parsed YAML) is returned first, so that until the first
/// reload the process holds the rules and no more (117 MiB against 136 MiB).
///
/// The one `unsafe` of graygate (the library forbids it): mimalloc has no safe interface to
/// its options.
#[allow(unsafe_code)]
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
        || std::env::var_os("MIMALLOC_RESET_DELAY").is_some()
    {
        return;
    }
    // SAFETY: `mi_collect` frees and returns the calling thread's empty pages, which any
    // thread may do at any time; `mi_option_set` stores a number in mimalloc's option
    // table, likewise, and -1 is a valid purge delay ("never").
    unsafe {
        libmimalloc_sys::mi_collect(true);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
}

/// `mi_option_purge_delay` of `mimalloc.h`, which libmimalloc-sys does not name: mimalloc
/// keeps its option numbers stable across versions (retired options keep their slot), and
/// a test checks this one holds the default purge delay.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use graygate::channels::ChannelKey;
use graygate::config::Config;
use graygate::diagnostics::Diagnostics;
use graygate::explain::{explain_request, RequestDescription};
use graygate::metrics::Metrics;
use graygate::rules::model::Listeners;
use graygate::server::{App, RunOptions};
use graygate::state::SnapshotStore;
use graygate::store::embedded::EmbeddedStore;
use graygate::store::redis::RedisStore;
use graygate::store::{Lookups, Store};

#[derive(Parser)]
#[command(
    name = "graygate",
    version,
    about = "A gray-release (canary) edge load balancer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic.
    Run {
        /// The server config.
        #[arg(short, long, default_value = "conf/graygate.yaml")]
        conf: PathBuf,
        /// Detach into the background.
        #[arg(short, long)]
        daemon: bool,
        /// Take the listeners over from the running instance (graceful upgrade).
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Validate the config and the rules, listing every error; exit 1 if there is one.
    Check {
        /// The server config.
        #[arg(short, long, default_value = "conf/graygate.yaml")]
        conf: PathBuf,
    },
    /// Print how a request would be routed, rule by rule, without serving it.
    Explain {
        /// The server config.
        #[arg(short, long, default_value = "conf/graygate.yaml")]
        conf: PathBuf,
        /// The user's id (placed in the first configured uid source).
        #[arg(long)]
        uid: Option<String>,
        /// The request host.
        #[arg(long, default_value = "localhost")]
        host: String,
        /// The request path, optionally with a query.
        #[arg(long, default_value = "/")]
        path: String,
        /// The method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// A Cookie header value such as "tier=paid; gg=1" (repeatable).
        #[arg(long)]
        cookie: Vec<String>,
        /// A header "Name: value" (repeatable).
        #[arg(long)]
        header: Vec<String>,
        /// The client address.
        #[arg(long)]
        ip: Option<IpAddr>,
        /// The listener the request arrives on (by name; its scheme follows); the first one
        /// when not given.
        #[arg(long)]
        listener: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show or steer the rollouts of a running graygate through its admin API (the token is
    /// read from the environment variable the config's `admin.token_env` names).
    Rollout {
        /// status, pause, resume, promote (next step now), rollback or retry.
        #[arg(value_parser = ["status", "pause", "resume", "promote", "rollback", "retry"])]
        action: String,
        /// The rollout (every rollout for `status` when not given).
        name: Option<String>,
        #[command(flatten)]
        api: AdminApi,
    },
    /// Set, clear or show the emergency override of a running graygate (with Redis, of the
    /// whole fleet) through its admin API: every request to one version.
    Override {
        /// set VERSION, clear, or status.
        #[arg(value_parser = ["set", "clear", "status"])]
        action: String,
        /// The version every request goes to (for `set`).
        version: Option<String>,
        /// Why, for the others (required by `set`).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        api: AdminApi,
    },
}

/// How a command reaches a running graygate's admin API, and how it prints the answer.
#[derive(clap::Args)]
struct AdminApi {
    /// The admin listener's URL; the config's `admin.listen` when not given.
    #[arg(long)]
    admin: Option<String>,
    /// The server config (for `admin.listen` and `admin.token_env`).
    #[arg(short, long, default_value = "conf/graygate.yaml")]
    conf: PathBuf,
    /// Print the API's JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// One call of a running graygate's admin API; `Err` for an unreachable API, `Ok(Err)` with
/// the status and body for a refusal.
fn admin_call(
    api: &AdminApi,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<Result<serde_json::Value, (u16, String)>> {
    // The config is optional here: without it the defaults apply.
    let config = Config::load(&api.conf).ok();
    let token_env = config
        .as_ref()
        .map_or("GRAYGATE_ADMIN_TOKEN".to_string(), |c| {
            c.admin.token_env.clone()
        });
    let base = api.admin.clone().unwrap_or_else(|| {
        let listen = config
            .as_ref()
            .map_or("127.0.0.1:9901".to_string(), |c| c.admin.listen.to_string());
        format!("http://{listen}")
    });
    let base = base.trim_end_matches('/');
    let token = std::env::var(&token_env).unwrap_or_default();
    let request = ureq::request(method, &format!("{base}{path}"))
        .set("Authorization", &format!("Bearer {token}"))
        .timeout(Duration::from_secs(10));
    let answer = match body {
        Some(body) => request.send_json(body),
        None => request.call(),
    };
    match answer {
        Ok(response) => Ok(Ok(response.into_json()?)),
        Err(ureq::Error::Status(status, response)) => {
            let body = response.into_string().unwrap_or_default();
            Ok(Err((status, body.trim().to_string())))
        }
        Err(e) => anyhow::bail!("cannot reach the admin API at {base}: {e}"),
    }
}

/// `graygate override set VERSION --reason R | clear | status`.
fn override_command(
    action: &str,
    version: Option<&str>,
    reason: Option<&str>,
    api: &AdminApi,
) -> anyhow::Result<ExitCode> {
    let (method, body) = match (action, version) {
        ("set", Some(version)) => {
            let Some(reason) = reason.filter(|r| !r.trim().is_empty()) else {
                anyhow::bail!("graygate override set needs --reason \"...\"");
            };
            (
                "PUT",
                Some(serde_json::json!({ "version": version, "reason": reason })),
            )
        }
        ("set", None) => anyhow::bail!("graygate override set needs the version"),
        ("clear", _) => ("DELETE", None),
        _ => ("GET", None),
    };
    let value = match admin_call(api, method, "/-/override", body)? {
        Ok(value) => value,
        Err((status, body)) => {
            eprintln!("graygate override {action}: {status}: {body}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if api.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    match value["override"].as_object() {
        Some(o) => println!(
            "override: every request goes to {} ({})",
            o["version"].as_str().unwrap_or("?"),
            o["reason"].as_str().unwrap_or("")
        ),
        None => println!("no override: requests follow the rules"),
    }
    if let Some(warning) = value["warning"].as_str() {
        eprintln!("warning: {warning}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `graygate rollout ACTION [NAME]`: one admin API call, its answer printed.
fn rollout_command(action: &str, name: Option<&str>, api: &AdminApi) -> anyhow::Result<ExitCode> {
    let (method, path) = match (action, name) {
        ("status", _) => ("GET", "/-/rollouts".to_string()),
        (action, Some(name)) => ("POST", format!("/-/rollouts/{name}/{action}")),
        (action, None) => anyhow::bail!("graygate rollout {action} needs the rollout's name"),
    };
    let mut value = match admin_call(api, method, &path, None)? {
        Ok(value) => value,
        Err((status, body)) => {
            eprintln!("graygate rollout {action}: {status}: {body}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if action == "status" {
        if let (Some(name), Some(all)) = (name, value["rollouts"].as_array()) {
            let one = all.iter().find(|r| r["name"] == name).cloned();
            match one {
                Some(one) => value = serde_json::json!({ "rollouts": [one] }),
                None => {
                    eprintln!("graygate rollout status: no rollout named \"{name}\"");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    } else {
        value = serde_json::json!({ "rollouts": [value] });
    }
    if api.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    for r in value["rollouts"].as_array().into_iter().flatten() {
        println!(
            "{}: {} at step {}/{} ({}% on {}, baseline {}), since {}",
            r["name"].as_str().unwrap_or("?"),
            r["state"].as_str().unwrap_or("?"),
            r["step"],
            r["steps"].as_array().map_or(0, Vec::len),
            r["weight"],
            r["version"].as_str().unwrap_or("?"),
            r["baseline"].as_str().unwrap_or("?"),
            r["since"].as_str().unwrap_or("?"),
        );
        if let Some(check) = r["last_checks"].as_array().and_then(|c| c.last()) {
            let verdict = &check["verdict"];
            println!(
                "  last check: {} ({}); version {} requests, {:.2}% 5xx; baseline {} requests, {:.2}% 5xx",
                verdict["result"].as_str().unwrap_or("?"),
                verdict["why"].as_str().unwrap_or(""),
                verdict["version"]["requests"],
                verdict["version"]["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
                verdict["baseline"]["requests"],
                verdict["baseline"]["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_diagnostics(diags: &Diagnostics) {
    for d in diags.items() {
        eprintln!("{d}");
    }
}

fn check(conf: &std::path::Path) -> ExitCode {
    let config = match Config::load(conf) {
        Ok(config) => config,
        Err(diags) => {
            print_diagnostics(&diags);
            eprintln!("graygate check: {} error(s)", diags.errors().count());
            return ExitCode::FAILURE;
        }
    };
    // Every certificate pair is read, checked against its key and built into a TLS context,
    // as at start; pairs close to expiry are warnings.
    let certificates = match graygate::edge::tls::endpoints(&config.listeners, &Metrics::new()) {
        Ok((endpoints, warnings)) => {
            print_diagnostics(&warnings);
            Ok(endpoints.iter().flatten().count())
        }
        Err(diags) => Err(diags),
    };
    let rules = graygate::rules::load(&config.rules, &Listeners::of(&config.listeners));
    let mut errors = 0;
    if let Err(diags) = &certificates {
        print_diagnostics(diags);
        errors += diags.errors().count();
    }
    match &rules {
        Ok(loaded) => print_diagnostics(&loaded.warnings),
        Err(diags) => {
            print_diagnostics(diags);
            errors += diags.errors().count();
        }
    }
    match (rules, certificates) {
        (Ok(loaded), Ok(tls_listeners)) => {
            let rules = &loaded.model.rules;
            println!(
                "graygate check: ok: {} version(s), {} service(s), {} rule(s), {} goal(s), {} rollout(s) from {} file(s); default version {}; {} TLS listener(s)",
                rules.versions.len(),
                loaded.model.services.len(),
                rules.rules.len(),
                rules.goals.len(),
                rules.rollouts.len(),
                loaded.origin.files.len(),
                rules.version(rules.default).name,
                tls_listeners
            );
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("graygate check: {errors} error(s)");
            ExitCode::FAILURE
        }
    }
}

fn main() -> anyhow::Result<ExitCode> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            conf,
            daemon,
            upgrade,
        } => {
            let app = match App::load(&conf) {
                Ok(app) => app,
                Err(diags) => {
                    print_diagnostics(&diags);
                    anyhow::bail!(
                        "cannot start: {} error(s) in the configuration",
                        diags.errors().count()
                    );
                }
            };
            keep_freed_memory();
            let snapshot = app.store.current();
            let listeners: Vec<String> = app
                .config
                .listeners
                .iter()
                .map(|l| format!("{} {}", l.name, l.addr))
                .collect();
            log::info!(
                "graygate: serving rules generation {} ({} rules) on {}, admin on {}",
                snapshot.generation,
                snapshot.rules.rules.len(),
                listeners.join(", "),
                app.config.admin.listen
            );
            // `run` returns after a graceful (SIGTERM) or fast (SIGINT) shutdown; the access
            // log's last lines are written before the process exits.
            app.server(RunOptions { daemon, upgrade })
                .run(pingora::server::RunArgs::default());
            app.access_log.flush();
            std::process::exit(0);
        }
        Command::Check { conf } => Ok(check(&conf)),
        Command::Rollout { action, name, api } => rollout_command(&action, name.as_deref(), &api),
        Command::Override {
            action,
            version,
            reason,
            api,
        } => override_command(&action, version.as_deref(), reason.as_deref(), &api),
        Command::Explain {
            conf,
            uid,
            host,
            path,
            method,
            cookie,
            header,
            ip,
            listener,
            json,
        } => {
            let config = Config::load(&conf).map_err(|d| anyhow::anyhow!("{d}"))?;
            let metrics = Arc::new(Metrics::new());
            let store =
                SnapshotStore::load(&config.rules, Listeners::of(&config.listeners), &metrics)
                    .map_err(|d| anyhow::anyhow!("{d}"))?;
            // Where the rollouts stand and the override, as the running graygate last saved
            // them (read only).
            let saved =
                graygate::rollout::saved_positions(&config.state_dir, &store.current().rules);
            let saved_override = graygate::emergency::saved_override(&config.state_dir);
            store.update_runtime(|state| {
                state.rollouts = saved;
                state.override_version = saved_override;
            });
            let headers = header
                .iter()
                .map(|h| {
                    h.split_once(':')
                        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                        .with_context(|| format!("--header {h:?} is not \"Name: value\""))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let desc = RequestDescription {
                uid,
                host,
                path,
                method,
                cookies: cookie,
                headers,
                ip,
                listener,
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = runtime.block_on(async {
                let lookup_store: Arc<dyn Store> = match &config.redis {
                    Some(settings) => {
                        let redis = RedisStore::new(settings.clone())
                            .map_err(|e| anyhow::anyhow!("redis: {e}"))?;
                        if let Err(e) = redis.connect_now(Duration::from_secs(1)).await {
                            eprintln!("warning: redis: {e}; store lookups fail open");
                        }
                        redis
                    }
                    None => Arc::new(EmbeddedStore::default()),
                };
                let lookups = Lookups::new(lookup_store, Arc::clone(&metrics));
                let channel_key = ChannelKey::from_env(&config.cookie_secret_env);
                anyhow::Ok(explain_request(&store.current(), &lookups, &channel_key, &desc).await?)
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    /// Option 15 is the purge delay: untouched, it holds mimalloc 3's default of 1,000 ms
    /// (unless the environment set it).
    #[test]
    #[allow(unsafe_code)]
    fn the_purge_delay_option_is_the_one_named() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: `mi_option_get` reads mimalloc's option table.
        let delay = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(delay, 1000);
    }
}
