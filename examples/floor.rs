//! The floor: the least a Pingora 0.9 HTTP proxy does per request, for `make bench` to set
//! graygate beside (issue 15).
//!
//! ```text
//! target/release/examples/floor --listen 127.0.0.1:8080 --upstream 127.0.0.1:18001
//! target/release/examples/floor --listen 127.0.0.1:8443 --upstream 127.0.0.1:18001 \
//!     --tls-cert localhost.crt --tls-key localhost.key
//! ```
//!
//! With `--tls-cert` and `--tls-key` the listener is Pingora's own TLS one
//! (`TlsSettings::intermediate`, Mozilla's intermediate profile as graygate's listeners, with
//! ALPN `h2` preferred over `http/1.1`): the floor of HTTPS and HTTP/2 (`bench/https.sh`).
//! One upstream address, resolved once at start; one worker thread; upstream connections
//! kept alive in Pingora's pool; downstream keep-alive of 60 s. The peer carries the same
//! timeouts as a graygate group's defaults (connect 1 s, read, write and idle 60 s), the
//! downstream modules are switched off as graygate's are, and the allocator is graygate's
//! (mimalloc): what is left per request is Pingora's own proxy path, with no rule, no
//! header added and no metric. Built by the release profile of the crate, so it shares
//! graygate's Pingora version, LTO and codegen settings.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::modules::http::HttpModules;
use pingora::prelude::HttpPeer;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A proxy to one upstream.
struct Floor {
    /// The peer every request goes to; cloned per request as graygate's pool does.
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    /// No downstream modules (Pingora's default adds a compression module, switched off).
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> pingora::Result<bool> {
        session.set_keepalive(Some(60));
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

/// What the command line asks for.
struct Args {
    listen: SocketAddr,
    upstream: SocketAddr,
    /// The certificate chain and key files of a TLS listener.
    tls: Option<(String, String)>,
}

const USAGE: &str =
    "usage: floor --listen IP:PORT --upstream IP:PORT [--tls-cert FILE --tls-key FILE]";

/// `--listen ADDR --upstream ADDR`, both `ip:port`, and optionally `--tls-cert FILE
/// --tls-key FILE` together.
fn parse_args() -> Result<Args, String> {
    let (mut listen, mut upstream, mut cert, mut key) = (None, None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let addr = || -> Result<SocketAddr, String> {
            value.parse().map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--listen" => listen = Some(addr()?),
            "--upstream" => upstream = Some(addr()?),
            "--tls-cert" => cert = Some(value),
            "--tls-key" => key = Some(value),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err(format!("--tls-cert and --tls-key go together\n{USAGE}")),
    };
    match (listen, upstream) {
        (Some(listen), Some(upstream)) => Ok(Args {
            listen,
            upstream,
            tls,
        }),
        _ => Err(USAGE.into()),
    }
}

fn main() {
    let Args {
        listen,
        upstream,
        tls,
    } = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let pid = std::env::temp_dir().join(format!("floor-{}.pid", std::process::id()));
    let sock = std::env::temp_dir().join(format!("floor-{}.sock", std::process::id()));
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: pid.to_string_lossy().into_owned(),
        upgrade_sock: sock.to_string_lossy().into_owned(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();

    let mut peer = HttpPeer::new(upstream, false, String::new());
    let options = &mut peer.options;
    options.connection_timeout = Some(Duration::from_secs(1));
    options.total_connection_timeout = Some(Duration::from_secs(1));
    options.read_timeout = Some(Duration::from_secs(60));
    options.write_timeout = Some(Duration::from_secs(60));
    options.idle_timeout = Some(Duration::from_secs(60));
    let mut proxy = http_proxy_service(&server.configuration, Floor { peer });
    match tls {
        None => proxy.add_tcp(&listen.to_string()),
        Some((cert, key)) => {
            let mut settings = match TlsSettings::intermediate(&cert, &key) {
                Ok(settings) => settings,
                Err(e) => {
                    eprintln!("floor: {e}");
                    std::process::exit(2);
                }
            };
            settings.enable_h2();
            proxy.add_tls_with_settings(&listen.to_string(), None, settings);
        }
    }
    server.add_service(proxy);
    server.run_forever();
}
