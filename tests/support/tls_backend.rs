//! An upstream that speaks HTTPS/1.1, HTTP/2 over TLS (ALPN `h2`) or h2c (HTTP/2 with prior
//! knowledge), on a listener the test bound to `127.0.0.1:0`.
//!
//! Every request is answered `200` with the backend's name as the body and headers that say
//! what the server saw: `x-backend` (its name), `x-request-version` (the HTTP version it
//! parsed: `HTTP/1.1` or `HTTP/2.0`), `x-seen-sni` (the TLS server name the client sent, or
//! `-`), `x-seen-version` (graygate's `X-Graygate-Version`) and `x-body-bytes` (the request
//! body's length). `GET /healthz` answers `200 ok` and is only counted in
//! [`TlsBackend::healthz_requests`]. It runs on a tokio runtime of its own thread, stopped
//! and joined on drop.

use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use openssl::pkey::PKey;
use openssl::ssl::{self, AlpnError, NameType, Ssl, SslAcceptor, SslMethod};
use openssl::x509::X509;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use super::certs::Issued;

/// How the backend speaks.
pub enum Mode {
    /// HTTP/1.1 over TLS.
    Https1(Issued),
    /// HTTP/2 over TLS; only ALPN `h2` is accepted.
    H2(Issued),
    /// HTTP/2 over plain TCP with prior knowledge.
    H2c,
}

#[derive(Default)]
struct Counters {
    requests: AtomicUsize,
    healthz: AtomicUsize,
    handshakes_failed: AtomicUsize,
}

/// A TLS and/or HTTP/2 upstream; see the module doc.
pub struct TlsBackend {
    addr: SocketAddr,
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

/// What one request looked like, for the answer.
struct Seen {
    name: Arc<str>,
    version: &'static str,
    sni: String,
    graygate_version: String,
    body_bytes: usize,
}

impl Seen {
    fn headers(&self) -> [(&'static str, String); 5] {
        [
            ("x-backend", self.name.to_string()),
            ("x-request-version", self.version.to_string()),
            ("x-seen-sni", self.sni.clone()),
            ("x-seen-version", self.graygate_version.clone()),
            ("x-body-bytes", self.body_bytes.to_string()),
        ]
    }
}

fn acceptor(identity: &Issued, alpn: &'static [u8]) -> SslAcceptor {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).expect("acceptor");
    let cert = X509::from_pem(&identity.cert_pem).expect("certificate PEM");
    let key = PKey::private_key_from_pem(&identity.key_pem).expect("key PEM");
    b.set_certificate(&cert).expect("certificate");
    b.set_private_key(&key).expect("key");
    b.set_alpn_select_callback(move |_, offered| {
        ssl::select_next_proto(alpn, offered).ok_or(AlpnError::ALERT_FATAL)
    });
    b.build()
}

impl TlsBackend {
    /// Starts a backend called `name` speaking `mode`.
    pub fn start(name: &str, mode: Mode) -> TlsBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("tls backend: bind");
        let addr = listener.local_addr().expect("tls backend: address");
        listener.set_nonblocking(true).expect("nonblocking");
        let counters = Arc::new(Counters::default());
        let (stop, mut stopped) = watch::channel(false);
        let name: Arc<str> = Arc::from(name);
        let tls = match &mode {
            Mode::Https1(id) => Some((acceptor(id, b"\x08http/1.1"), false)),
            Mode::H2(id) => Some((acceptor(id, b"\x02h2"), true)),
            Mode::H2c => None,
        };
        let c = Arc::clone(&counters);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tls backend runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let tls = tls.map(Arc::new);
                loop {
                    let tcp = tokio::select! {
                        _ = stopped.changed() => return,
                        accepted = listener.accept() => match accepted {
                            Ok((tcp, _)) => tcp,
                            Err(_) => continue,
                        },
                    };
                    let (name, c, tls) = (Arc::clone(&name), Arc::clone(&c), tls.clone());
                    tokio::spawn(async move {
                        match tls.as_deref() {
                            None => serve_h2(tcp, name, c, String::from("-")).await,
                            Some((acceptor, h2)) => {
                                let Ok(ssl) = Ssl::new(acceptor.context()) else {
                                    return;
                                };
                                let Ok(mut stream) = tokio_openssl::SslStream::new(ssl, tcp) else {
                                    return;
                                };
                                if Pin::new(&mut stream).accept().await.is_err() {
                                    c.handshakes_failed.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                                let sni = stream
                                    .ssl()
                                    .servername(NameType::HOST_NAME)
                                    .unwrap_or("-")
                                    .to_string();
                                if *h2 {
                                    serve_h2(stream, name, c, sni).await
                                } else {
                                    serve_h1(stream, name, c, sni).await
                                }
                            }
                        }
                    });
                }
            });
        });
        TlsBackend {
            addr,
            counters,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered, not counting `/healthz`.
    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// `/healthz` requests answered.
    pub fn healthz_requests(&self) -> usize {
        self.counters.healthz.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed (the client refused the certificate, no common ALPN...).
    pub fn handshakes_failed(&self) -> usize {
        self.counters.handshakes_failed.load(Ordering::SeqCst)
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn count(c: &Counters, path: &str) -> bool {
    let health = path == "/healthz";
    let counter = if health { &c.healthz } else { &c.requests };
    counter.fetch_add(1, Ordering::SeqCst);
    health
}

/// HTTP/1.1 with keep-alive; request bodies by Content-Length only (what graygate sends for
/// the tests' requests).
async fn serve_h1<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    name: Arc<str>,
    c: Arc<Counters>,
    sni: String,
) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let path = parts.nth(1).unwrap_or("/").to_string();
        let mut length = 0usize;
        let mut graygate_version = String::from("-");
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("x-graygate-version") {
                    graygate_version = v.trim().to_string();
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        let health = count(&c, &path);
        let seen = Seen {
            name: Arc::clone(&name),
            version: "HTTP/1.1",
            sni: sni.clone(),
            graygate_version,
            body_bytes: length,
        };
        let text: &[u8] = if health { b"ok" } else { name.as_bytes() };
        let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n", text.len());
        for (k, v) in seen.headers() {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let stream = reader.get_mut();
        if stream.write_all(out.as_bytes()).await.is_err()
            || stream.write_all(text).await.is_err()
            || stream.flush().await.is_err()
        {
            return;
        }
    }
}

async fn serve_h2<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    name: Arc<str>,
    c: Arc<Counters>,
    sni: String,
) {
    let Ok(mut conn) = h2::server::handshake(stream).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = conn.accept().await {
        let (name, c, sni) = (Arc::clone(&name), Arc::clone(&c), sni.clone());
        tokio::spawn(async move {
            let (head, mut body) = request.into_parts();
            let mut body_bytes = 0;
            while let Some(Ok(chunk)) = body.data().await {
                body_bytes += chunk.len();
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            let health = count(&c, head.uri.path());
            let seen = Seen {
                name: Arc::clone(&name),
                version: if head.version == http::Version::HTTP_2 {
                    "HTTP/2.0"
                } else {
                    "other"
                },
                sni,
                graygate_version: head
                    .headers
                    .get("x-graygate-version")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string(),
                body_bytes,
            };
            let mut response = http::Response::builder().status(200);
            for (k, v) in seen.headers() {
                response = response.header(k, v);
            }
            let Ok(response) = response.body(()) else {
                return;
            };
            let text = if health {
                Bytes::from_static(b"ok")
            } else {
                Bytes::from(name.to_string())
            };
            if let Ok(mut send) = respond.send_response(response, false) {
                let _ = send.send_data(text, true);
            }
        });
    }
}
