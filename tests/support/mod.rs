//! Shared helpers for graygate's integration tests.
//!
//! Each integration test file does `mod support;` and uses what it needs:
//!
//! * [`Backend`]: a tiny real HTTP/1.1 upstream (std threads) that answers
//!   with its own name, echoes graygate's routing headers and records what
//!   it saw.
//! * [`http_request`] / [`get`]: a raw HTTP/1.1 client that can send any
//!   bytes (including invalid UTF-8 header values) and parses the response.
//! * [`assert_eventually`]: poll a condition until it holds or time out.
//! * [`RedisServer`]: a throw-away `redis-server` on a local port of its own.
//! * [`graygate`]: the real server in-process; [`handover`]: how it gets listeners the test
//!   bound, so no port is ever released and bound again.
//! * [`certs`]: a test CA, certificates it signs, self-signed ones, and a blocking HTTPS
//!   client; [`tls_backend`]: an HTTPS/1.1, HTTP/2-over-TLS or h2c upstream (tokio, h2).
//! * [`grpc`]: a real gRPC server and client (Python grpcio, `tests/grpc/*.py`).
//!
//! Only `std` and `tempfile` are used here (no async runtime); `graygate` and `handover`
//! also use Pingora, `certs` OpenSSL, `tls_backend` OpenSSL, tokio and h2.
#![allow(dead_code)]

pub mod certs;
pub mod graygate;
pub mod grpc;
pub mod handover;
pub mod tls_backend;

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Request/response head size limit for both the backend and the client.
const MAX_HEAD_BYTES: usize = 256 * 1024;

/// Lock a mutex, ignoring poisoning (a panicking test thread must not cascade).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn invalid_data(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Does a server on `addr` answer `raw` with an HTTP response (any status)?
///
/// The readiness test for a server on a listener the test bound: that socket accepts
/// connections into its backlog from the start, so a connect alone proves nothing.
pub fn answers_http(addr: SocketAddr, raw: &[u8]) -> bool {
    http_request(addr, raw).is_ok()
}

/// Poll `f` every 20 ms until it returns true; panic with `what` after `timeout`.
pub fn assert_eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Backend
// ---------------------------------------------------------------------------

/// One request as a [`Backend`] received it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: String,
    /// Request target as sent (path plus query).
    pub target: String,
    /// Headers in arrival order; names as sent, values raw.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl SeenRequest {
    /// First value of header `name` (case-insensitive), lossy UTF-8.
    pub fn header(&self, name: &str) -> Option<String> {
        header_values(&self.headers, name).into_iter().next()
    }

    /// All values of header `name` (case-insensitive), lossy UTF-8.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        header_values(&self.headers, name)
    }

    /// The path of the target, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

fn header_values(headers: &[(String, Vec<u8>)], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect()
}

struct BackendState {
    name: String,
    status: AtomicU16,
    healthy: AtomicBool,
    delay_ms: AtomicU64,
    stopped: AtomicBool,
    requests: AtomicUsize,
    healthz_requests: AtomicUsize,
    seen: Mutex<Vec<SeenRequest>>,
    /// `Set-Cookie` values per request path (see [`Backend::set_cookies_on`]).
    set_cookies: Mutex<HashMap<String, Vec<String>>>,
    next_conn_id: AtomicU64,
    /// Clones of the open connections, so `stop` can shut them down.
    conns: Mutex<HashMap<u64, TcpStream>>,
}

/// A real HTTP/1.1 upstream on `127.0.0.1:<random port>`.
///
/// Every request except `/healthz` is answered with the status set by
/// [`Backend::set_status`] (default 200), body = the backend's name and the
/// headers `Content-Length`, `Content-Type: text/plain`, `X-Backend: <name>`,
/// plus `X-Seen-Version` / `X-Seen-Rule` echoing each received
/// `X-Graygate-Version` / `X-Graygate-Rule` value (omitted when absent), and the
/// `Set-Cookie` headers given to [`Backend::set_cookies_on`] for the request's path.
/// `GET /healthz` answers `200 ok`, or `503 unhealthy` after
/// `set_healthy(false)`; health checks are not counted or recorded.
pub struct Backend {
    addr: SocketAddr,
    state: Arc<BackendState>,
    accept_thread: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.state.name)
            .field("addr", &self.addr)
            .finish()
    }
}

impl Backend {
    /// Start a backend called `name` on `127.0.0.1:0`.
    pub fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("backend: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("backend: local_addr");
        listener
            .set_nonblocking(true)
            .expect("backend: set_nonblocking");
        let state = Arc::new(BackendState {
            name: name.to_string(),
            status: AtomicU16::new(200),
            healthy: AtomicBool::new(true),
            delay_ms: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            requests: AtomicUsize::new(0),
            healthz_requests: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            set_cookies: Mutex::new(HashMap::new()),
            next_conn_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
        });
        let st = Arc::clone(&state);
        let handle = thread::Builder::new()
            .name(format!("backend-{name}-accept"))
            .spawn(move || accept_loop(listener, st))
            .expect("backend: spawn accept thread");
        Backend {
            addr,
            state,
            accept_thread: Mutex::new(Some(handle)),
        }
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Number of requests answered, not counting `/healthz`.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Number of `/healthz` requests received.
    pub fn healthz_requests(&self) -> usize {
        self.state.healthz_requests.load(Ordering::SeqCst)
    }

    /// For every non-healthz request, in order: the values of all
    /// `X-Graygate-Version` headers it carried (empty if none).
    pub fn seen_versions(&self) -> Vec<Vec<String>> {
        lock(&self.state.seen)
            .iter()
            .map(|r| r.header_all("x-graygate-version"))
            .collect()
    }

    /// Every non-healthz request received, in order.
    pub fn seen_requests(&self) -> Vec<SeenRequest> {
        lock(&self.state.seen).clone()
    }

    /// The last non-healthz request received.
    pub fn last_request(&self) -> Option<SeenRequest> {
        lock(&self.state.seen).last().cloned()
    }

    /// For every non-healthz request for `path` (without query), in order: the values of
    /// all `Cookie` headers it carried (empty if none).
    pub fn seen_cookies(&self, path: &str) -> Vec<Vec<String>> {
        lock(&self.state.seen)
            .iter()
            .filter(|r| r.path() == path)
            .map(|r| r.header_all("cookie"))
            .collect()
    }

    /// From now on, every response to a request for `path` (without query) carries one
    /// `Set-Cookie` header per value of `cookies`, sent as is and in order (a login sets a
    /// session, a logout deletes it); an empty list sets none.
    pub fn set_cookies_on(&self, path: &str, cookies: &[&str]) {
        let cookies = cookies.iter().map(|c| c.to_string()).collect();
        lock(&self.state.set_cookies).insert(path.to_string(), cookies);
    }

    /// Status for non-healthz requests from now on.
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// `false` makes `/healthz` answer 503.
    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Delay every non-healthz response by `delay` (for timeout tests).
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Close the listener and shut down every open connection; afterwards
    /// connecting to [`Backend::addr`] is refused. Idempotent.
    pub fn stop(&self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        // The accept thread owns the listener: once joined, the socket is closed.
        if let Some(handle) = lock(&self.accept_thread).take() {
            let _ = handle.join();
        }
        for (_, conn) in lock(&self.state.conns).drain() {
            let _ = conn.shutdown(Shutdown::Both);
        }
        // A process being spawned concurrently (fork before exec) can briefly
        // hold a copy of the listening socket; wait until the port really
        // refuses, so callers can rely on it right after `stop` returns.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)) {
                Ok(probe) => {
                    drop(probe);
                    thread::sleep(Duration::from_millis(5));
                }
                Err(_) => break,
            }
        }
    }

    /// Has `stop` been called?
    pub fn is_stopped(&self) -> bool {
        self.state.stopped.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, st: Arc<BackendState>) {
    while !st.stopped.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if st.stopped.load(Ordering::SeqCst) {
                    let _ = stream.shutdown(Shutdown::Both);
                    break;
                }
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_nodelay(true);
                let id = st.next_conn_id.fetch_add(1, Ordering::SeqCst);
                if let Ok(clone) = stream.try_clone() {
                    lock(&st.conns).insert(id, clone);
                }
                let st2 = Arc::clone(&st);
                let spawned = thread::Builder::new()
                    .name(format!("backend-{}-conn{id}", st.name))
                    .spawn(move || {
                        let _ = serve_connection(stream, &st2);
                        if let Some(c) = lock(&st2.conns).remove(&id) {
                            let _ = c.shutdown(Shutdown::Both);
                        }
                    });
                if spawned.is_err() {
                    if let Some(c) = lock(&st.conns).remove(&id) {
                        let _ = c.shutdown(Shutdown::Both);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
    drop(listener);
}

/// Read one line ending in `\n` (kept in the result); `Ok(None)` on clean EOF.
fn read_line_bytes<R: BufRead>(r: &mut R, budget: &mut usize) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(*budget as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if n > *budget {
        return Err(invalid_data("HTTP head too large"));
    }
    *budget -= n;
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed mid-line",
        ));
    }
    Ok(Some(line))
}

fn trim_crlf(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Read header lines up to and including the empty line.
fn read_headers<R: BufRead>(r: &mut R, budget: &mut usize) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut headers = Vec::new();
    loop {
        let line = read_line_bytes(r, budget)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in headers")
        })?;
        let line = trim_crlf(&line);
        if line.is_empty() {
            return Ok(headers);
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| invalid_data("header line without ':'"))?;
        let name = String::from_utf8_lossy(&line[..colon]).trim().to_string();
        headers.push((name, trim_ows(&line[colon + 1..]).to_vec()));
    }
}

fn header_str<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

fn header_has_token(headers: &[(String, Vec<u8>)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .any(|t| trim_ows(t).eq_ignore_ascii_case(token.as_bytes()))
}

fn parse_content_length(headers: &[(String, Vec<u8>)]) -> io::Result<Option<u64>> {
    match header_str(headers, "content-length") {
        None => Ok(None),
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| invalid_data("bad Content-Length")),
    }
}

/// Decode a chunked body (and its trailers) from `r`.
fn read_chunked<R: BufRead>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut budget = MAX_HEAD_BYTES;
    loop {
        let line = read_line_bytes(r, &mut budget)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "EOF in chunked body"))?;
        let line = trim_crlf(&line);
        let size_part = line.split(|&b| b == b';').next().unwrap_or_default();
        let size_str =
            std::str::from_utf8(trim_ows(size_part)).map_err(|_| invalid_data("bad chunk size"))?;
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|_| invalid_data(format!("bad chunk size {size_str:?}")))?;
        if size == 0 {
            // trailers, up to the empty line
            loop {
                match read_line_bytes(r, &mut budget)? {
                    None => return Ok(body),
                    Some(l) if trim_crlf(&l).is_empty() => return Ok(body),
                    Some(_) => {}
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(invalid_data("chunk not followed by CRLF"));
        }
        budget = MAX_HEAD_BYTES;
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn serve_connection(stream: TcpStream, st: &BackendState) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        if st.stopped.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut budget = MAX_HEAD_BYTES;
        // Request line (tolerating empty lines before it, RFC 9112 §2.2).
        let request_line = loop {
            match read_line_bytes(&mut reader, &mut budget)? {
                None => return Ok(()),
                Some(l) if trim_crlf(&l).is_empty() => continue,
                Some(l) => break l,
            }
        };
        let request_line = String::from_utf8_lossy(trim_crlf(&request_line)).into_owned();
        let mut parts = request_line.split_whitespace();
        let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
            (Some(m), Some(t), Some(v)) => (m.to_string(), t.to_string(), v.to_string()),
            _ => {
                write_simple(&mut writer, 400, b"bad request line", true)?;
                return Ok(());
            }
        };
        let headers = match read_headers(&mut reader, &mut budget) {
            Ok(h) => h,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                write_simple(&mut writer, 400, b"bad headers", true)?;
                return Ok(());
            }
            Err(e) => return Err(e),
        };

        let close = if version.eq_ignore_ascii_case("HTTP/1.0") {
            !header_has_token(&headers, "connection", "keep-alive")
        } else {
            header_has_token(&headers, "connection", "close")
        };

        // Read and discard the request body.
        if header_has_token(&headers, "expect", "100-continue") {
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        if header_has_token(&headers, "transfer-encoding", "chunked") {
            read_chunked(&mut reader)?;
        } else {
            match parse_content_length(&headers) {
                Ok(Some(n)) => {
                    let copied = io::copy(&mut reader.by_ref().take(n), &mut io::sink())?;
                    if copied < n {
                        return Ok(());
                    }
                }
                Ok(None) => {}
                Err(_) => {
                    write_simple(&mut writer, 400, b"bad content-length", true)?;
                    return Ok(());
                }
            }
        }

        let path = target.split('?').next().unwrap_or_default();
        let is_head = method.eq_ignore_ascii_case("HEAD");
        if path == "/healthz" {
            st.healthz_requests.fetch_add(1, Ordering::SeqCst);
            let healthy = st.healthy.load(Ordering::SeqCst);
            let (status, body): (u16, &[u8]) = if healthy {
                (200, b"ok")
            } else {
                (503, b"unhealthy")
            };
            let body = if is_head { &b""[..] } else { body };
            write_simple(&mut writer, status, body, close)?;
        } else {
            let seen = SeenRequest {
                method: method.clone(),
                target: target.clone(),
                headers,
            };
            let versions: Vec<Vec<u8>> = raw_values(&seen.headers, "x-graygate-version");
            let rules: Vec<Vec<u8>> = raw_values(&seen.headers, "x-graygate-rule");
            lock(&st.seen).push(seen);
            st.requests.fetch_add(1, Ordering::SeqCst);

            let delay = st.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                thread::sleep(Duration::from_millis(delay));
            }
            let status = st.status.load(Ordering::SeqCst);
            let no_body = is_head || status == 204 || status == 304 || status < 200;
            let mut out = Vec::with_capacity(256);
            write!(out, "HTTP/1.1 {status} {}\r\n", reason_phrase(status))?;
            if status != 204 && status >= 200 {
                write!(out, "Content-Length: {}\r\n", st.name.len())?;
            }
            out.extend_from_slice(b"Content-Type: text/plain\r\n");
            write!(out, "X-Backend: {}\r\n", st.name)?;
            for cookie in lock(&st.set_cookies).get(path).into_iter().flatten() {
                write!(out, "Set-Cookie: {cookie}\r\n")?;
            }
            for v in &versions {
                out.extend_from_slice(b"X-Seen-Version: ");
                out.extend_from_slice(v);
                out.extend_from_slice(b"\r\n");
            }
            for v in &rules {
                out.extend_from_slice(b"X-Seen-Rule: ");
                out.extend_from_slice(v);
                out.extend_from_slice(b"\r\n");
            }
            if close {
                out.extend_from_slice(b"Connection: close\r\n");
            }
            out.extend_from_slice(b"\r\n");
            if !no_body {
                out.extend_from_slice(st.name.as_bytes());
            }
            writer.write_all(&out)?;
            writer.flush()?;
        }
        if close {
            let _ = writer.shutdown(Shutdown::Write);
            return Ok(());
        }
    }
}

fn raw_values(headers: &[(String, Vec<u8>)], name: &str) -> Vec<Vec<u8>> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect()
}

fn write_simple(w: &mut TcpStream, status: u16, body: &[u8], close: bool) -> io::Result<()> {
    let mut out = Vec::with_capacity(128 + body.len());
    write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n",
        reason_phrase(status),
        body.len()
    )?;
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    w.write_all(&out)?;
    w.flush()
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// A parsed HTTP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Headers in arrival order; names as sent, values raw.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First value of header `name` (case-insensitive), lossy UTF-8.
    pub fn header(&self, name: &str) -> Option<String> {
        header_values(&self.headers, name).into_iter().next()
    }

    /// All values of header `name` (case-insensitive), lossy UTF-8.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        header_values(&self.headers, name)
    }

    /// The body as lossy UTF-8.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Send `raw` (a complete request, sent as is) on a new connection to `addr`
/// and read one full response: Content-Length, chunked, or read-to-EOF
/// bodies; interim 1xx responses are skipped. 5 s connect/read/write timeouts.
pub fn http_request(addr: SocketAddr, raw: &[u8]) -> io::Result<Response> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let _ = stream.set_nodelay(true);
    stream.write_all(raw)?;
    stream.flush()?;
    let is_head = raw
        .get(..5)
        .is_some_and(|m| m.eq_ignore_ascii_case(b"HEAD "));
    read_response(BufReader::new(stream), is_head)
}

/// Reads one full response from `r` (see [`http_request`]).
pub fn read_response<R: BufRead>(mut r: R, is_head: bool) -> io::Result<Response> {
    loop {
        let mut budget = MAX_HEAD_BYTES;
        let status_line = read_line_bytes(&mut r, &mut budget)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before any response",
            )
        })?;
        let status_line = String::from_utf8_lossy(trim_crlf(&status_line)).into_owned();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        if !version.starts_with("HTTP/") {
            return Err(invalid_data(format!("bad status line {status_line:?}")));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid_data(format!("bad status line {status_line:?}")))?;
        let headers = read_headers(&mut r, &mut budget)?;
        if (100..200).contains(&status) && status != 101 {
            continue; // interim response
        }
        let body = if is_head || status == 204 || status == 304 || status == 101 {
            Vec::new()
        } else if header_has_token(&headers, "transfer-encoding", "chunked") {
            read_chunked(&mut r)?
        } else if let Some(n) = parse_content_length(&headers)? {
            let n = usize::try_from(n).map_err(|_| invalid_data("Content-Length too large"))?;
            let mut body = vec![0u8; n];
            r.read_exact(&mut body)?;
            body
        } else {
            let mut body = Vec::new();
            match r.read_to_end(&mut body) {
                Ok(_) => {}
                // A server that closes with unread request bytes resets the
                // connection; treat that like EOF for a read-to-EOF body.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
                Err(e) => return Err(e),
            }
            body
        };
        return Ok(Response {
            status,
            headers,
            body,
        });
    }
}

/// A keep-alive client connection to the proxy sending raw requests. Responses must carry
/// `Content-Length`.
pub struct KeepAlive {
    addr: SocketAddr,
    reader: Option<BufReader<TcpStream>>,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> KeepAlive {
        KeepAlive { addr, reader: None }
    }

    fn connect(&mut self) -> io::Result<&mut BufReader<TcpStream>> {
        if self.reader.is_none() {
            let stream = TcpStream::connect(self.addr)?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.set_nodelay(true)?;
            self.reader = Some(BufReader::new(stream));
        }
        Ok(self.reader.as_mut().expect("connected"))
    }

    /// Sends `raw`; on a connection the server had closed meanwhile, once more on a new one.
    pub fn send(&mut self, raw: &[u8]) -> Response {
        let reused = self.reader.is_some();
        match self.try_send(raw) {
            Ok(r) => r,
            Err(e) if reused => {
                self.reader = None;
                self.try_send(raw).unwrap_or_else(|e2| {
                    panic!("request failed on a reused ({e}) then a new connection: {e2}")
                })
            }
            Err(e) => panic!(
                "request failed on a new connection: {e}; request {:?}",
                String::from_utf8_lossy(raw)
            ),
        }
    }

    fn try_send(&mut self, raw: &[u8]) -> io::Result<Response> {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let reader = self.connect()?;
        reader.get_mut().write_all(raw)?;
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            let (name, value) = trimmed
                .split_once(':')
                .ok_or_else(|| bad(format!("bad header line {trimmed:?}")))?;
            headers.push((name.to_string(), value.trim().as_bytes().to_vec()));
        }
        let response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let len: usize = response
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("response without Content-Length".into()))?;
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        if response
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            self.reader = None;
        }
        Ok(Response { body, ..response })
    }
}

/// `GET path` with `Host: host`, the given headers (raw byte values, sent as
/// is) and `Connection: close`. Panics with a clear message on I/O error.
pub fn get(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &[u8])]) -> Response {
    let mut raw = Vec::with_capacity(128);
    raw.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n").as_bytes());
    for (name, value) in headers {
        raw.extend_from_slice(name.as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"Connection: close\r\n\r\n");
    http_request(addr, &raw).unwrap_or_else(|e| {
        panic!(
            "GET http://{host}{path} via {addr} failed: {e} (kind {:?}); request was {:?}",
            e.kind(),
            String::from_utf8_lossy(&raw)
        )
    })
}

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

/// A throw-away `redis-server` on a port of 127.0.0.1 of its own, without
/// persistence, in a temporary directory. Killed on drop.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Options beyond the test defaults (`--cluster-enabled yes`, ...).
    args: Vec<String>,
    /// A config file's text, written to the server's directory and passed first (Sentinel
    /// needs a file it can rewrite).
    conf: Option<String>,
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("running", &self.child.is_some())
            .finish()
    }
}

/// Why a `redis-server` did not come up.
#[derive(Debug)]
pub enum RedisStartError {
    /// Another process holds the port: try another one (or, to keep it, again).
    PortTaken,
    /// Anything else: trying again would not help.
    Failed(String),
}

impl RedisServer {
    /// Are `redis-server` and `redis-cli` on PATH?
    pub fn available() -> bool {
        ["redis-server", "redis-cli"].iter().all(|bin| {
            Command::new(bin)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
    }

    /// Start a server and wait until it answers; panics on failure.
    ///
    /// redis-server binds its port itself and cannot be handed a listener (it has no option
    /// to take an inherited socket), and `--port 0` switches TCP off instead of letting the
    /// kernel choose. So it starts on a [`candidate_port`] and, when that port turns out to
    /// be taken, again on another one.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// A Sentinel (`redis-server sentinel.conf --sentinel`) watching the master at `master` as
    /// `name`, with a quorum of 1.
    pub fn start_sentinel(name: &str, master: SocketAddr) -> RedisServer {
        let conf = format!(
            "sentinel monitor {name} {} {} 1\nsentinel down-after-milliseconds {name} 2000\n",
            master.ip(),
            master.port()
        );
        RedisServer::start_configured(Some(conf), &["--sentinel"])
    }

    /// Like [`RedisServer::start`], with more `redis-server` options.
    pub fn start_with(args: &[&str]) -> RedisServer {
        RedisServer::start_configured(None, args)
    }

    fn start_configured(conf: Option<String>, args: &[&str]) -> RedisServer {
        const ATTEMPTS: usize = 20;
        let mut taken = Vec::new();
        for _ in 0..ATTEMPTS {
            let port = candidate_port();
            match RedisServer::start_on_with(port, conf.clone(), args) {
                Ok(server) => return server,
                Err(RedisStartError::PortTaken) => taken.push(port),
                Err(RedisStartError::Failed(why)) => panic!("could not start redis-server: {why}"),
            }
        }
        panic!("could not start redis-server: every port tried was taken: {taken:?}");
    }

    /// Start a server on `port` and wait until it answers; [`RedisStartError::PortTaken`]
    /// when another process holds the port.
    pub fn start_on(port: u16) -> Result<RedisServer, RedisStartError> {
        RedisServer::start_on_with(port, None, &[])
    }

    fn start_on_with(
        port: u16,
        conf: Option<String>,
        args: &[&str],
    ) -> Result<RedisServer, RedisStartError> {
        let dir = tempfile::Builder::new()
            .prefix("graygate-redis-")
            .tempdir()
            .map_err(|e| RedisStartError::Failed(format!("temp dir: {e}")))?;
        let mut server = RedisServer {
            port,
            dir,
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            conf,
        };
        server.spawn_and_wait()?;
        Ok(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:<port>/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Run `redis-cli -h 127.0.0.1 -p <port> <args>` and return its stdout
    /// without the trailing newline; panics if it cannot run or fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("could not run redis-cli: {e}"));
        assert!(
            out.status.success(),
            "redis-cli {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        while s.ends_with('\n') || s.ends_with('\r') {
            s.pop();
        }
        s
    }

    /// Is the server process running (not killed, not exited)?
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kill the server (SIGKILL) and wait for it. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill (if running) and start again on the same port; the data is gone.
    pub fn restart(&mut self) {
        self.kill();
        // The clients know this port, so it is kept: should another process hold it for a
        // moment, try it again until the deadline.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(RedisStartError::Failed(why)) => {
                    panic!(
                        "could not restart redis-server on port {}: {why}",
                        self.port
                    )
                }
                Err(RedisStartError::PortTaken) if Instant::now() >= deadline => panic!(
                    "could not restart redis-server: port {} was still taken after 10 s",
                    self.port
                ),
                Err(RedisStartError::PortTaken) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn_and_wait(&mut self) -> Result<(), RedisStartError> {
        let failed = RedisStartError::Failed;
        let log =
            std::fs::File::create(self.log_path()).map_err(|e| failed(format!("log file: {e}")))?;
        let log2 = log
            .try_clone()
            .map_err(|e| failed(format!("log file: {e}")))?;
        let mut command = Command::new("redis-server");
        if let Some(conf) = &self.conf {
            let path = self.dir.path().join("redis.conf");
            std::fs::write(&path, conf).map_err(|e| failed(format!("config file: {e}")))?;
            command.arg(path);
        }
        let child = command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(&self.args)
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| {
                failed(format!(
                    "spawn redis-server: {e} (is it installed? make deps-test)"
                ))
            })?;
        let pid = child.id();
        self.child = Some(child);

        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                let log = self.log();
                // redis-server 6 and 7: "Could not create server TCP listening socket
                // 127.0.0.1:PORT: bind: Address already in use", then exit status 1.
                if log.contains("Address already in use") {
                    return Err(RedisStartError::PortTaken);
                }
                return Err(failed(format!(
                    "redis-server on port {} exited early ({status}); log:\n{log}",
                    self.port
                )));
            }
            match answering_pid(self.addr()) {
                Some(p) if p == pid => return Ok(()),
                // Another Redis holds the port; ours is about to exit with the bind error.
                Some(_) => {
                    self.kill();
                    return Err(RedisStartError::PortTaken);
                }
                None => {}
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(failed(format!(
                    "redis-server on port {} did not answer within 10 s; log:\n{}",
                    self.port,
                    self.log()
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port to try for a program that binds by itself and cannot be told to choose one: a
/// random port below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), where the
/// ports the kernel hands out for `bind(0)` (every other listener of the tests) and for
/// outgoing connections never land. Nothing reserves it: the caller starts the program on it
/// and tries another when the program reports it taken.
fn candidate_port() -> u16 {
    use std::hash::BuildHasher as _;

    let ephemeral_start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, high) = if ephemeral_start >= 4096 {
        (ephemeral_start / 2, ephemeral_start)
    } else {
        // No room below the range: any unprivileged port, the retry copes.
        (1024, u16::MAX)
    };
    // Random enough, and differs between calls and processes (std's per-call hasher keys).
    let random = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    low + (random % u64::from(high - low)) as u16
}

/// The `process_id` of the Redis server answering on `addr`, from `INFO server`.
fn answering_pid(addr: SocketAddr) -> Option<u32> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.set_write_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(b"INFO server\r\n").ok()?;
    // A bulk string: `$<length>\r\n<length bytes>\r\n`.
    let mut reader = BufReader::new(s);
    let mut head = String::new();
    reader.read_line(&mut head).ok()?;
    let len: usize = head.strip_prefix('$')?.trim_end().parse().ok()?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|line| line.strip_prefix("process_id:")?.trim().parse().ok())
}
