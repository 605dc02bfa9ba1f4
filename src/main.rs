//! The `graygate` command: `run`, `check` and `explain`.

/// glibc's malloc was 28% of the instructions per proxied request (docs/performance.md);
/// mimalloc cut user time per request by about a quarter.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
                "graygate check: ok: {} version(s), {} service(s), {} rule(s), {} goal(s) from {} file(s); default version {}; {} TLS listener(s)",
                rules.versions.len(),
                loaded.model.services.len(),
                rules.rules.len(),
                rules.goals.len(),
                loaded.files.len(),
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
            let store = SnapshotStore::load(&config.rules, Listeners::of(&config.listeners))
                .map_err(|d| anyhow::anyhow!("{d}"))?;
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
                let lookups = Lookups::new(lookup_store, Arc::new(Metrics::new()));
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
