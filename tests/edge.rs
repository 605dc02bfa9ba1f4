//! The edge transport (SPEC section 11) against real clients: OpenSSL and curl over TLS,
//! an HTTP/2 client (the `h2` crate) over TLS and h2c, raw bytes for the bad cases.
//! Certificates are made in the test by a test CA (`support::certs`).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::certs::{https_request, TestCa};
use support::graygate::{metric, Graygate};
use support::{assert_eventually, get, http_request, Backend};

/// uid tail 3 and the office network go to canary, the rest to stable.
fn rules(stable: &Backend, canary: &Backend) -> String {
    format!(
        "versions: {{ stable: {{}}, canary: {{ selectable: true }} }}\n\
         default: stable\n\
         channels: {{ path: /.canary-deployment }}\n\
         services:\n  web:\n    hosts: [\"*\"]\n    groups:\n      stable: {{ peers: [\"{}\"] }}\n      canary: {{ peers: [\"{}\"] }}\n\
         rules:\n  - {{ name: tail, when: {{ uid_tail: [3] }}, version: canary }}\n  - {{ name: office, when: {{ client_ip: [203.0.113.0/24] }}, version: canary }}\n",
        stable.addr(),
        canary.addr()
    )
}

/// A graygate with listeners `http` (plain), `https` (two certificates: `a.test` with
/// `*.a.test`, then `b.test`), `h2c` (plain with h2c) and `redirect` (308 to the https port).
struct Edge {
    gg: Graygate,
    http: SocketAddr,
    https: SocketAddr,
    h2c: SocketAddr,
    redirect: SocketAddr,
    ca: TestCa,
    certs: tempfile::TempDir,
    _backends: (Backend, Backend),
}

const A_SERIAL: u32 = 1001;
const TOKEN: &str = "edge-test-token";
const B_SERIAL: u32 = 2001;

impl Edge {
    fn start() -> Edge {
        Self::start_with("", "")
    }

    /// `tls_extra` is added to the https listener's `tls:` map.
    fn start_with(tls_extra: &str, extra_conf: &str) -> Edge {
        let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
        let ca = TestCa::new();
        let certs = tempfile::tempdir().expect("certs dir");
        ca.issue(&["a.test", "*.a.test"], A_SERIAL, 90)
            .write(certs.path(), "a");
        ca.issue(&["b.test"], B_SERIAL, 90).write(certs.path(), "b");
        std::fs::write(certs.path().join("ca.pem"), ca.pem()).expect("write CA");
        let dir = certs.path().display().to_string();
        let (gg, addrs) = Graygate::start_listeners(
            &rules(&stable, &canary),
            Some(TOKEN),
            4,
            |a| {
                format!(
                    "listeners:\n\
                     \x20 - {{ name: http, listen: \"{}\" }}\n\
                     \x20 - name: https\n    listen: \"{}\"\n    tls:\n      certificates:\n        - {{ cert: {dir}/a.crt, key: {dir}/a.key }}\n        - {{ cert: {dir}/b.crt, key: {dir}/b.key }}\n      hsts: 180d\n{tls_extra}\
                     \x20 - {{ name: h2c, listen: \"{}\", h2c: true }}\n\
                     \x20 - {{ name: redirect, listen: \"{}\", redirect_https: {} }}\n",
                    a[0],
                    a[1],
                    a[2],
                    a[3],
                    a[1].port()
                )
            },
            extra_conf,
        );
        Edge {
            gg,
            http: addrs[0],
            https: addrs[1],
            h2c: addrs[2],
            redirect: addrs[3],
            ca,
            certs,
            _backends: (stable, canary),
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.certs.path().join("ca.pem")
    }

    /// GET `path` over HTTPS with SNI `name`.
    fn https_get(
        &self,
        name: Option<&str>,
        path: &str,
        headers: &str,
    ) -> support::certs::TlsAnswer {
        let host = name.unwrap_or("a.test");
        let raw =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n");
        https_request(self.https, &self.ca.cert, name, raw.as_bytes()).expect("HTTPS request")
    }

    /// curl against the https listener (`a.test` resolved to it), trusting the test CA:
    /// (HTTP version, status, response headers, body).
    fn curl(&self, args: &[&str], url_path: &str) -> (String, u16, String, String) {
        let port = self.https.port();
        let url = format!("https://a.test:{port}{url_path}");
        curl(
            &self.ca_file(),
            &format!("a.test:{port}:127.0.0.1"),
            args,
            &url,
        )
    }
}

/// Runs curl with `--resolve resolve` and `--cacert ca`: (HTTP version, status, headers, body).
fn curl(ca: &Path, resolve: &str, args: &[&str], url: &str) -> (String, u16, String, String) {
    let headers = tempfile::NamedTempFile::new().expect("headers file");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["--resolve", resolve, "-D"])
        .arg(headers.path())
        .args(["-w", "\n%{http_version} %{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?} {url}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, last) = stdout.rsplit_once('\n').expect("curl's -w line");
    let (version, status) = last.split_once(' ').expect("version and status");
    (
        version.to_string(),
        status.parse().expect("status"),
        std::fs::read_to_string(headers.path()).unwrap_or_default(),
        body.to_string(),
    )
}

#[test]
fn sni_picks_the_certificate_by_name_and_defaults_to_the_first() {
    let edge = Edge::start();
    let exact = edge.https_get(Some("b.test"), "/", "");
    assert_eq!(exact.serial, B_SERIAL, "b.test has its own certificate");
    assert_eq!(exact.names, ["b.test"]);
    assert_eq!(exact.response.status, 200);
    let wildcard = edge.https_get(Some("shop.a.test"), "/", "");
    assert_eq!(wildcard.serial, A_SERIAL, "*.a.test covers shop.a.test");
    assert_eq!(edge.https_get(Some("A.TEST"), "/", "").serial, A_SERIAL);
    // No SNI, or a name no certificate covers: the first certificate (the client then
    // rejects the name itself; here the name is not verified).
    let none = edge.https_get(None, "/", "");
    assert_eq!(none.serial, A_SERIAL);
    let before = metric(
        &edge.gg.scrape(),
        "graygate_tls_sni_unmatched_total",
        &[("listener", "https")],
    )
    .unwrap_or(0.0);
    let raw = b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    let unknown = https_request(edge.https, &edge.ca.cert, Some("unknown.example"), raw);
    assert!(
        unknown.is_err(),
        "the default certificate does not name unknown.example, so verification fails"
    );
    let text = edge.gg.scrape();
    assert_eq!(
        metric(
            &text,
            "graygate_tls_sni_unmatched_total",
            &[("listener", "https")]
        ),
        Some(before + 1.0)
    );
    // Both versions; 1.3 is the default of both ends.
    assert_eq!(exact.version, "TLSv1.3");
    let expiry = metric(
        &text,
        "graygate_tls_certificate_expiry_timestamp_seconds",
        &[("listener", "https")],
    )
    .expect("expiry gauge");
    assert!(expiry > 1.7e9, "{expiry}");
}

#[test]
fn tls_1_2_works_and_min_version_1_3_refuses_it() {
    let edge = Edge::start_with("      min_version: \"1.3\"\n", "");
    let out = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(edge.https.to_string())
        .args(["-servername", "a.test", "-tls1_2"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    assert!(
        !out.status.success()
            || !String::from_utf8_lossy(&out.stdout).contains("BEGIN CERTIFICATE"),
        "TLS 1.2 is refused on a 1.3-only listener"
    );
    let ok = edge.https_get(Some("a.test"), "/", "");
    assert_eq!(ok.version, "TLSv1.3");
    let edge = Edge::start();
    let out = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(edge.https.to_string())
        .args(["-servername", "a.test", "-tls1_2", "-brief"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("TLSv1.2"), "{text}");
}

#[test]
fn tls_sessions_are_resumed() {
    let edge = Edge::start();
    let session = edge.certs.path().join("session.pem");
    let s_client = |extra: &[&str]| -> String {
        let out = Command::new("openssl")
            .args(["s_client", "-connect"])
            .arg(edge.https.to_string())
            .args(["-servername", "a.test", "-tls1_2"])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl s_client");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = s_client(&["-sess_out", session.to_str().unwrap()]);
    assert!(first.contains("New, TLSv1.2"), "{first}");
    let second = s_client(&["-sess_in", session.to_str().unwrap()]);
    assert!(second.contains("Reused, TLSv1.2"), "{second}");
}

#[test]
fn http2_over_tls_routes_like_http1_with_the_scheme_upstream() {
    let edge = Edge::start();
    let (version, status, headers, body) = edge.curl(&["--http2", "-H", "X-User-Id: 13"], "/");
    assert_eq!((version.as_str(), status), ("2", 200));
    assert_eq!(body, "canary", "uid 13 goes to canary over HTTP/2 too");
    assert!(
        headers.contains("strict-transport-security: max-age=15552000"),
        "{headers}"
    );
    let (version, _, _, body) = edge.curl(&["--http1.1", "-H", "X-User-Id: 13"], "/");
    assert_eq!((version.as_str(), body.as_str()), ("1.1", "canary"));
    let (version, _, _, body) = edge.curl(&["--http2", "-H", "X-User-Id: 15"], "/");
    assert_eq!((version.as_str(), body.as_str()), ("2", "stable"));
    let seen = edge
        ._backends
        .1
        .last_request()
        .expect("canary saw requests");
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(seen.header("x-graygate-version").as_deref(), Some("canary"));
    // The same over plain HTTP says http, and a client's own value is replaced.
    let plain = get(
        edge.http,
        "a.test",
        "/",
        &[("X-User-Id", b"13"), ("X-Forwarded-Proto", b"https")],
    );
    assert_eq!(plain.body_text(), "canary");
    let seen = edge
        ._backends
        .1
        .last_request()
        .expect("canary saw requests");
    assert_eq!(seen.header_all("x-forwarded-proto"), ["http"]);
    assert_eq!(plain.header("strict-transport-security"), None);
    // Metrics count HTTP/2 like HTTP/1.1 (in the logging phase, just after the response).
    assert_eventually(Duration::from_secs(2), "3 canary requests counted", || {
        metric(
            &edge.gg.scrape(),
            "graygate_requests_total",
            &[("service", "web"), ("version", "canary")],
        ) == Some(3.0)
    });
    assert_eq!(
        metric(
            &edge.gg.scrape(),
            "graygate_tls_handshakes_total",
            &[("listener", "https"), ("result", "ok")]
        ),
        Some(3.0)
    );
}

/// An HTTP/2 client of the `h2` crate on `io`: GET `/` with `x-user-id: uid`, several
/// streams at once on one connection; returns (status, body) of each.
async fn h2_get_many<T>(io: T, authority: &str, uids: &[&str]) -> Vec<(u16, String)>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = h2::client::handshake(io).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut pending = Vec::new();
    for uid in uids {
        let mut client = client.clone().ready().await.expect("h2 ready");
        let request = http::Request::builder()
            .uri(format!("https://{authority}/"))
            .header("x-user-id", *uid)
            .body(())
            .expect("request");
        let (response, _) = client.send_request(request, true).expect("send");
        pending.push(response);
    }
    let mut answers = Vec::new();
    for response in pending {
        let response = response.await.expect("response");
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("body chunk");
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        answers.push((status, String::from_utf8_lossy(&bytes).into_owned()));
    }
    answers
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn a_rust_h2_client_gets_the_same_routing_over_tls_and_h2c() {
    let edge = Edge::start();
    let uids = ["13", "15", "23", "1"];
    let want = vec![
        (200, "canary".to_string()),
        (200, "stable".to_string()),
        (200, "canary".to_string()),
        (200, "stable".to_string()),
    ];
    let rt = runtime();
    let over_tls = rt.block_on(async {
        use openssl::ssl::{SslConnector, SslMethod};
        let mut builder = SslConnector::builder(SslMethod::tls()).expect("connector");
        builder.set_ca_file(edge.ca_file()).expect("CA");
        builder.set_alpn_protos(b"\x02h2").expect("alpn");
        let ssl = builder
            .build()
            .configure()
            .expect("configure")
            .into_ssl("a.test")
            .expect("ssl");
        let tcp = tokio::net::TcpStream::connect(edge.https)
            .await
            .expect("connect");
        let mut tls = tokio_openssl::SslStream::new(ssl, tcp).expect("stream");
        std::pin::Pin::new(&mut tls).connect().await.expect("TLS");
        assert_eq!(tls.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
        h2_get_many(tls, "a.test", &uids).await
    });
    assert_eq!(over_tls, want);
    let over_h2c = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(edge.h2c)
            .await
            .expect("connect");
        h2_get_many(tcp, "a.test", &uids).await
    });
    assert_eq!(over_h2c, want);
    // A plain listener without h2c does not speak HTTP/2 with prior knowledge.
    let refused = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(edge.http)
            .await
            .expect("connect");
        let (client, connection) = match h2::client::handshake(tcp).await {
            Ok(pair) => pair,
            Err(_) => return true,
        };
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut client = match client.ready().await {
            Ok(c) => c,
            Err(_) => return true,
        };
        let request = http::Request::builder()
            .uri("http://a.test/")
            .body(())
            .expect("request");
        match client.send_request(request, true) {
            Ok((response, _)) => tokio::time::timeout(Duration::from_secs(5), response)
                .await
                .map_or(true, |r| r.is_err()),
            Err(_) => true,
        }
    });
    assert!(refused, "prior knowledge on a listener without h2c");
    // An h2c listener still answers HTTP/1 requests shorter than the 24-byte preface.
    let short = http_request(edge.h2c, b"GET / HTTP/1.0\r\n\r\n").expect("an answer");
    assert_eq!(short.status, 200, "{}", short.body_text());
    let long = get(edge.h2c, "a.test", "/", &[("X-User-Id", b"13")]);
    assert_eq!(long.body_text(), "canary");
    let (version, status, _, _) = curl(
        &edge.ca_file(),
        "unused:1:127.0.0.1",
        &["--http2-prior-knowledge"],
        &format!("http://{}/", edge.h2c),
    );
    assert_eq!((version.as_str(), status), ("2", 200));
}

#[test]
fn redirect_https_answers_308_with_path_and_query() {
    let edge = Edge::start();
    let r = get(
        edge.redirect,
        "shop.a.test:8080",
        "/cart/items?id=7&x=%20y",
        &[],
    );
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location").as_deref(),
        Some(
            format!(
                "https://shop.a.test:{}/cart/items?id=7&x=%20y",
                edge.https.port()
            )
            .as_str()
        )
    );
    assert_eq!(edge._backends.0.requests() + edge._backends.1.requests(), 0);
    // A Host that is not a name is not echoed into a Location.
    let r = http_request(
        edge.redirect,
        b"GET / HTTP/1.1\r\nHost: evil.test/x\r\nConnection: close\r\n\r\n",
    )
    .expect("request");
    assert_eq!(r.status, 400);
}

#[test]
fn hsts_and_secure_cookie_on_graygate_own_answers_over_tls() {
    let edge = Edge::start();
    // A page graygate answers itself over TLS carries HSTS too.
    let page = edge.https_get(Some("a.test"), "/.canary-deployment", "");
    assert_eq!(page.response.status, 200, "{}", page.response.body_text());
    assert_eq!(
        page.response.header("strict-transport-security").as_deref(),
        Some("max-age=15552000")
    );
    // Choosing a channel over HTTPS sets a Secure cookie; over HTTP it is not Secure.
    let form = "version=canary";
    let post = |over_tls: bool| -> support::Response {
        let raw = format!(
            "POST /.canary-deployment HTTP/1.1\r\nHost: a.test\r\nOrigin: https://a.test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        );
        if over_tls {
            https_request(edge.https, &edge.ca.cert, Some("a.test"), raw.as_bytes())
                .expect("HTTPS POST")
                .response
        } else {
            let raw = raw.replace("Origin: https://a.test", "Origin: http://a.test");
            http_request(edge.http, raw.as_bytes()).expect("POST")
        }
    };
    let secure = post(true);
    let cookie = secure.header("set-cookie").unwrap_or_default();
    assert!(
        cookie.starts_with("gg_channel=canary."),
        "{cookie} ({}) {:?} {}",
        secure.status,
        secure.headers,
        secure.body_text()
    );
    assert!(cookie.contains("; Secure"), "{cookie}");
    let plain = post(false);
    let cookie = plain.header("set-cookie").unwrap_or_default();
    assert!(
        cookie.starts_with("gg_channel=canary."),
        "{cookie} ({})",
        plain.status
    );
    assert!(!cookie.contains("Secure"), "{cookie}");
}

/// The serial of the certificate served for `a.test`.
fn served_serial(edge: &Edge) -> Option<u32> {
    let raw = b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    https_request(edge.https, &edge.ca.cert, Some("a.test"), raw)
        .ok()
        .map(|a| a.serial)
}

#[test]
fn certificates_reload_on_change_and_a_broken_pair_keeps_the_old_one() {
    let edge = Edge::start();
    assert_eq!(served_serial(&edge), Some(A_SERIAL));
    // A connection open across the reloads keeps working.
    let mut open = {
        let tcp = TcpStream::connect(edge.https).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let config = support::certs::connector(&edge.ca.cert)
            .configure()
            .expect("configure");
        std::io::BufReader::new(config.connect("a.test", tcp).expect("TLS"))
    };
    let keep_alive_get = |tls: &mut std::io::BufReader<openssl::ssl::SslStream<TcpStream>>| {
        tls.get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .expect("write");
        support::read_response(&mut *tls, false)
            .expect("a response on the open connection")
            .status
    };
    assert_eq!(keep_alive_get(&mut open), 200);

    // A renewed certificate (new serial) is served within 3 s of the file change.
    let renewed = edge.ca.issue(&["a.test", "*.a.test"], 1002, 90);
    let started = Instant::now();
    renewed.write(edge.certs.path(), "a");
    assert_eventually(Duration::from_secs(3), "the renewed certificate", || {
        served_serial(&edge) == Some(1002)
    });
    eprintln!("renewed certificate served after {:?}", started.elapsed());
    let text = edge.gg.scrape();
    assert!(metric(&text, "graygate_tls_reload_total", &[("result", "ok")]).unwrap_or(0.0) >= 1.0);

    // A key that does not match: rejected, the renewed pair keeps serving.
    let other = edge.ca.issue(&["a.test"], 1003, 90);
    std::fs::write(edge.certs.path().join("a.key"), &other.key_pem).expect("write key");
    assert_eventually(
        Duration::from_secs(5),
        "the rejected reload counted",
        || {
            metric(
                &edge.gg.scrape(),
                "graygate_tls_reload_total",
                &[("result", "error")],
            )
            .unwrap_or(0.0)
                >= 1.0
        },
    );
    assert_eq!(served_serial(&edge), Some(1002));
    // POST /-/reload says which listener kept its pairs, and why.
    let r = http_request(
        edge.gg.admin,
        format!("POST /-/reload HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .expect("POST /-/reload");
    assert_eq!(r.status, 422, "{}", r.body_text());
    let body: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(body["result"], "unchanged", "the rules are fine: {body}");
    assert_eq!(body["certificates"][0]["listener"], "https");
    assert_eq!(body["certificates"][0]["result"], "error");
    let error = body["certificates"][0]["errors"][0]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("a.key: this key does not belong to the certificate"),
        "{error}"
    );
    assert_eq!(served_serial(&edge), Some(1002));
    // Garbage in the certificate file: the same.
    std::fs::write(edge.certs.path().join("a.crt"), b"not a certificate").expect("write");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(served_serial(&edge), Some(1002));
    assert_eq!(
        keep_alive_get(&mut open),
        200,
        "the open connection survived"
    );
    // An expired certificate is refused as well.
    let expired = edge.ca.issue(&["a.test"], 1004, 0);
    expired.write(edge.certs.path(), "a");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(served_serial(&edge), Some(1002));
}

#[test]
fn garbage_stalls_and_floods_cost_only_their_connection() {
    let edge = Edge::start_with("      handshake_timeout: 1s\n", "");
    // Plain HTTP to the TLS port, and random bytes.
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 6, 7, 8][..],
    ] {
        let mut tcp = TcpStream::connect(edge.https).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tcp.write_all(garbage).expect("write");
        let mut buf = [0u8; 256];
        // The server answers with an alert at most, then closes.
        let mut total = 0;
        while let Ok(n) = tcp.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
            assert!(total < 256, "no HTTP answer comes back");
        }
    }
    // A handshake that stalls half-way: the first bytes of a ClientHello, then nothing.
    let mut stalled = TcpStream::connect(edge.https).expect("connect");
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .expect("write");
    // Meanwhile others are served.
    assert_eq!(served_serial(&edge), Some(A_SERIAL));
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    let started = Instant::now();
    let closed = matches!(stalled.read(&mut buf), Ok(0) | Err(_));
    assert!(closed, "the stalled handshake is dropped");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let handshakes = |result| {
        metric(
            &edge.gg.scrape(),
            "graygate_tls_handshakes_total",
            &[("listener", "https"), ("result", result)],
        )
    };
    // The counter follows the close by a moment.
    assert_eventually(Duration::from_secs(2), "the timeout counted", || {
        handshakes("timeout") == Some(1.0)
    });
    assert_eq!(handshakes("error"), Some(2.0));

    // An HTTP/2 client that opens far more streams than the server allows and resets them,
    // and one whose header list is over the limit: their connection (or stream) ends,
    // others go on.
    let rt = runtime();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(edge.h2c)
            .await
            .expect("connect");
        let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let huge = "x".repeat(70 * 1024);
        let mut client = client.ready().await.expect("ready");
        let request = http::Request::builder()
            .uri("http://a.test/")
            .header("x-huge", huge.as_str())
            .body(())
            .expect("request");
        if let Ok((response, _)) = client.send_request(request, true) {
            let answer = tokio::time::timeout(Duration::from_secs(5), response).await;
            let refused = match answer {
                Ok(Ok(r)) => r.status().as_u16() >= 400,
                Ok(Err(_)) | Err(_) => true,
            };
            assert!(refused, "a header list over 64 KiB is refused");
        }
        for _ in 0..2000 {
            let Ok(mut ready) = client.clone().ready().await else {
                break;
            };
            let request = http::Request::builder()
                .uri("http://a.test/")
                .body(())
                .expect("request");
            match ready.send_request(request, false) {
                Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
                Err(_) => break,
            }
        }
        driver.abort();
    });
    assert_eq!(served_serial(&edge), Some(A_SERIAL));
    let (version, status, _, body) = curl(
        &edge.ca_file(),
        "unused:1:127.0.0.1",
        &["--http2-prior-knowledge", "-H", "X-User-Id: 13"],
        &format!("http://{}/", edge.h2c),
    );
    assert_eq!(
        (version.as_str(), status, body.as_str()),
        ("2", 200, "canary")
    );
}

#[test]
fn a_bad_certificate_stops_the_start_with_its_file_named() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("dir");
    let good = ca.issue(&["a.test"], 1, 30);
    let other = ca.issue(&["a.test"], 2, 30);
    good.write(dir.path(), "good");
    std::fs::write(dir.path().join("other.key"), &other.key_pem).expect("write");
    std::fs::write(
        dir.path().join("garbage.crt"),
        b"-----BEGIN CERTIFICATE-----\nnope\n",
    )
    .expect("write");
    ca.issue(&["a.test"], 3, 0).write(dir.path(), "expired");
    let d = dir.path().display();
    let conf = format!(
        "listeners:\n  - name: https\n    listen: \"127.0.0.1:1\"\n    tls:\n      certificates:\n        - {{ cert: {d}/good.crt, key: {d}/other.key }}\n        - {{ cert: {d}/missing.crt, key: {d}/good.key }}\n        - {{ cert: {d}/garbage.crt, key: {d}/good.key }}\n        - {{ cert: {d}/expired.crt, key: {d}/expired.key }}\nrules: rules.yaml\n"
    );
    std::fs::write(dir.path().join("graygate.yaml"), conf).expect("write conf");
    std::fs::write(
        dir.path().join("rules.yaml"),
        "versions: { stable: {} }\ndefault: stable\nservices:\n  web:\n    hosts: [\"*\"]\n    groups: { stable: { peers: [\"127.0.0.1:9\"] } }\n",
    )
    .expect("write rules");
    let out = Command::new(env!("CARGO_BIN_EXE_graygate"))
        .args(["check", "-c"])
        .arg(dir.path().join("graygate.yaml"))
        .output()
        .expect("graygate check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines[0].contains(
            "other.key: error: listener https: this key does not belong to the certificate"
        ),
        "{stderr}"
    );
    assert!(
        lines[1].contains("missing.crt: error: listener https: cannot read"),
        "{stderr}"
    );
    assert!(
        lines[2].contains("garbage.crt: error: listener https: not a PEM certificate chain"),
        "{stderr}"
    );
    assert!(
        lines[3].contains("expired.crt: error: listener https: expired on"),
        "{stderr}"
    );
    assert_eq!(lines[4], "graygate check: 4 error(s)");
    // `graygate run` refuses to start, naming the same files.
    let out = Command::new(env!("CARGO_BIN_EXE_graygate"))
        .args(["run", "-c"])
        .arg(dir.path().join("graygate.yaml"))
        .output()
        .expect("graygate run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("other.key: error"), "{stderr}");
    assert!(
        stderr.contains("cannot start: 4 error(s) in the configuration"),
        "{stderr}"
    );
    // A certificate expiring within 14 days is a warning, not an error.
    let soon = ca.issue(&["a.test"], 4, 5);
    soon.write(dir.path(), "soon");
    let conf = format!(
        "listeners:\n  - name: https\n    listen: \"127.0.0.1:1\"\n    tls:\n      certificates:\n        - {{ cert: {d}/soon.crt, key: {d}/soon.key }}\nrules: rules.yaml\n"
    );
    std::fs::write(dir.path().join("graygate.yaml"), conf).expect("write conf");
    let out = Command::new(env!("CARGO_BIN_EXE_graygate"))
        .args(["check", "-c"])
        .arg(dir.path().join("graygate.yaml"))
        .output()
        .expect("graygate check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("soon.crt: warning: listener https: the certificate expires in 4days"),
        "{stderr}"
    );
}

/// A PROXY protocol v2 header for TCP over IPv4 from `src`.
fn proxy_v2(src: std::net::SocketAddrV4) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
    header.extend_from_slice(&src.ip().octets());
    header.extend_from_slice(&[127, 0, 0, 1]);
    header.extend_from_slice(&src.port().to_be_bytes());
    header.extend_from_slice(&443u16.to_be_bytes());
    header
}

#[test]
fn proxy_protocol_from_a_trusted_balancer_names_the_client() {
    let edge = Edge::start_with("", "trusted_proxies: [127.0.0.1/32]\n");
    let backends = &edge._backends;
    // v1 on the plain listener: the declared client decides (the office rule) and is the
    // X-Forwarded-For graygate sends.
    let r = http_request(
        edge.http,
        b"PROXY TCP4 203.0.113.9 127.0.0.1 5000 80\r\nGET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .expect("request");
    assert_eq!((r.status, r.body_text().as_str()), (200, "canary"));
    let seen = backends.1.last_request().expect("canary saw it");
    assert_eq!(seen.header_all("x-forwarded-for"), ["203.0.113.9"]);
    // v2 in front of a TLS handshake.
    let tcp = TcpStream::connect(edge.https).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (&tcp)
        .write_all(&proxy_v2("203.0.113.10:6000".parse().unwrap()))
        .expect("write the header");
    let config = support::certs::connector(&edge.ca.cert)
        .configure()
        .expect("configure");
    let mut tls = config.connect("a.test", tcp).expect("TLS after PROXY v2");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .expect("write");
    let r = support::read_response(std::io::BufReader::new(tls), false).expect("response");
    assert_eq!(r.body_text(), "canary");
    let seen = backends.1.last_request().expect("canary saw it");
    assert_eq!(seen.header_all("x-forwarded-for"), ["203.0.113.10"]);
    // A trusted peer may also send no header at all.
    let r = get(edge.http, "a.test", "/", &[]);
    assert_eq!(r.body_text(), "stable");
    // A broken header from a trusted peer closes that connection only, and is counted.
    let broken = http_request(
        edge.http,
        b"PROXY TCP4 203.0.113.9 nonsense\r\nGET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
    );
    assert!(broken.is_err(), "{broken:?}");
    assert_eventually(Duration::from_secs(2), "the refused header counted", || {
        metric(
            &edge.gg.scrape(),
            "graygate_connections_total",
            &[("listener", "http"), ("result", "proxy_protocol_error")],
        ) == Some(1.0)
    });
    assert_eq!(get(edge.http, "a.test", "/", &[]).status, 200);
}

#[test]
fn proxy_protocol_and_forwarded_for_from_anyone_else_are_ignored() {
    let edge = Edge::start();
    let backends = &edge._backends;
    let before = backends.0.requests() + backends.1.requests();
    let r = http_request(
        edge.http,
        b"PROXY TCP4 203.0.113.9 127.0.0.1 5000 80\r\nGET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .expect("request");
    assert_eq!(r.status, 400, "an untrusted peer's PROXY line is not HTTP");
    assert_eq!(backends.0.requests() + backends.1.requests(), before);
    // Nor does its X-Forwarded-For make it an office client.
    let r = get(
        edge.http,
        "a.test",
        "/",
        &[("X-Forwarded-For", b"203.0.113.9")],
    );
    assert_eq!(r.body_text(), "stable");
    let seen = backends.0.last_request().expect("stable saw it");
    assert_eq!(
        seen.header_all("x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"]
    );
}

/// A WebSocket upstream: answers the upgrade (with the RFC 6455 accept key), then echoes
/// every byte back. Returns its address; it serves one connection.
fn websocket_echo() -> SocketAddr {
    use base64::Engine as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match conn.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let key = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_default();
        let digest =
            openssl::sha::sha1(format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes());
        let accept = base64::engine::general_purpose::STANDARD.encode(digest);
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        if conn.write_all(answer.as_bytes()).is_err() {
            return;
        }
        let mut buf = [0u8; 1024];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 || conn.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
    addr
}

#[test]
fn websocket_upgrades_over_https() {
    let ca = TestCa::new();
    let certs = tempfile::tempdir().expect("certs dir");
    let (cert, key) = ca.issue(&["a.test"], 7, 30).write(certs.path(), "a");
    let ws = websocket_echo();
    let rules = format!(
        "versions: {{ stable: {{}} }}\ndefault: stable\nservices:\n  ws:\n    hosts: [\"*\"]\n    groups:\n      stable: {{ peers: [\"{ws}\"] }}\n"
    );
    let (_gg, https) = Graygate::start_https(&rules, &cert, &key);
    let tcp = TcpStream::connect(https).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let config = support::certs::connector(&ca.cert)
        .configure()
        .expect("configure");
    let mut tls = config.connect("a.test", tcp).expect("TLS");
    tls.write_all(
        b"GET /chat HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .expect("write the upgrade");
    let mut reader = std::io::BufReader::new(tls);
    let answer = support::read_response(&mut reader, false).expect("101");
    assert_eq!(answer.status, 101);
    assert_eq!(
        answer.header("sec-websocket-accept").as_deref(),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "the RFC 6455 example key"
    );
    // A masked text frame "hello" goes through the tunnel and comes back byte for byte.
    let frame = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    reader.get_mut().write_all(&frame).expect("write a frame");
    let mut echoed = [0u8; 11];
    reader.read_exact(&mut echoed).expect("read the echo");
    assert_eq!(echoed, frame);
}
