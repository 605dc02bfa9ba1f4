//! Self-tests for the shared integration-test helpers in `tests/support`.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use support::{assert_eventually, get, http_request, Backend, RedisServer, RedisStartError};

#[test]
fn backend_answers_its_name_and_echoes_graygate_headers() {
    let b = Backend::start("stable");
    let r = get(
        b.addr(),
        "example.test",
        "/some/path?q=1",
        &[
            ("X-Graygate-Version", b"canary"),
            ("X-Graygate-Rule", b"uid-tail"),
        ],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body_text(), "stable");
    assert_eq!(r.header("x-backend").as_deref(), Some("stable"));
    assert_eq!(r.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(r.header("X-SEEN-VERSION").as_deref(), Some("canary"));
    assert_eq!(r.header("x-seen-rule").as_deref(), Some("uid-tail"));

    // Absent headers are not echoed; duplicates are all recorded.
    let r = get(b.addr(), "example.test", "/", &[]);
    assert_eq!(r.header("x-seen-version"), None);
    assert_eq!(r.header("x-seen-rule"), None);
    let r = get(
        b.addr(),
        "example.test",
        "/",
        &[("x-graygate-version", b"a"), ("X-Graygate-Version", b"b")],
    );
    assert_eq!(r.header_all("x-seen-version"), vec!["a", "b"]);

    // Health checks are neither counted nor recorded.
    let h = get(b.addr(), "example.test", "/healthz", &[]);
    assert_eq!((h.status, h.body_text().as_str()), (200, "ok"));
    b.set_healthy(false);
    assert_eq!(get(b.addr(), "example.test", "/healthz", &[]).status, 503);

    assert_eq!(b.requests(), 3);
    assert_eq!(b.healthz_requests(), 2);
    assert_eq!(
        b.seen_versions(),
        vec![
            vec!["canary".to_string()],
            vec![],
            vec!["a".into(), "b".into()]
        ]
    );
    let first = &b.seen_requests()[0];
    assert_eq!(first.method, "GET");
    assert_eq!(first.target, "/some/path?q=1");
    assert_eq!(first.header("host").as_deref(), Some("example.test"));

    b.set_status(502);
    let r = get(b.addr(), "example.test", "/", &[]);
    assert_eq!((r.status, r.body_text().as_str()), (502, "stable"));
}

#[test]
fn backend_keeps_connections_alive_and_discards_bodies() {
    let b = Backend::start("canary");
    let mut s = TcpStream::connect(b.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert_eq!(out.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{out}");
    assert_eq!(out.matches("\r\n\r\ncanary").count(), 3, "{out}");
    let targets: Vec<_> = b.seen_requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/a", "/b", "/c"]);
}

#[test]
fn stop_refuses_new_connections_and_closes_open_ones() {
    let b = Backend::start("stable");
    let addr = b.addr();
    assert_eq!(get(addr, "h", "/", &[]).status, 200);

    // An idle keep-alive connection that has already been served once.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    assert!(idle.read(&mut buf).unwrap() > 0);

    b.stop();

    let err = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .expect_err("connect after stop() should fail");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    let err = http_request(addr, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");

    // The open connection was shut down: EOF (or a reset), not a hang.
    match idle.read(&mut buf) {
        Ok(n) => assert_eq!(n, 0, "expected EOF on the idle connection"),
        Err(e) => assert_ne!(
            e.kind(),
            ErrorKind::WouldBlock,
            "idle connection still open"
        ),
    }
    b.stop(); // idempotent
}

#[test]
fn get_sends_invalid_utf8_header_values() {
    let b = Backend::start("stable");
    let raw: &[u8] = b"\xff\xfe not utf-8 \xc3\x28";
    let r = get(
        b.addr(),
        "h",
        "/",
        &[("X-User-Id", raw), ("X-Graygate-Version", b"\xff")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body_text(), "stable");
    let seen = b.last_request().expect("backend saw the request");
    let value = seen
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("x-user-id"))
        .map(|(_, v)| v.clone());
    assert_eq!(value.as_deref(), Some(raw));
    // Raw bytes are echoed back; accessors are lossy.
    assert_eq!(r.header("x-seen-version").as_deref(), Some("\u{fffd}"));
}

#[test]
fn client_reads_chunked_and_read_to_eof_bodies() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        let replies: [&[u8]; 2] = [
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\n",
            b"HTTP/1.0 404 Not Found\r\nX-A: 1\r\n\r\nuntil eof",
        ];
        for reply in replies {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).unwrap();
            s.write_all(reply).unwrap();
        }
    });
    let r = http_request(addr, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    assert_eq!((r.status, r.body_text().as_str()), (200, "Wikipedia"));
    let r = http_request(addr, b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!((r.status, r.body_text().as_str()), (404, "until eof"));
    assert_eq!(r.header("x-a").as_deref(), Some("1"));
    server.join().unwrap();
}

#[test]
fn redis_server_starts_answers_and_restarts() {
    if !RedisServer::available() {
        println!("SKIPPED: redis-server / redis-cli not installed (make deps-test installs them)");
        return;
    }
    let mut redis = RedisServer::start();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/0", redis.port()));
    assert_eq!(redis.cli(&["PING"]), "PONG");
    assert_eq!(redis.cli(&["SET", "graygate:k", "v1"]), "OK");
    assert_eq!(redis.cli(&["GET", "graygate:k"]), "v1");

    redis.kill();
    assert!(!redis.is_running());
    assert_eventually(Duration::from_secs(5), "redis port closed", || {
        TcpStream::connect(redis.addr()).is_err()
    });

    let port = redis.port();
    redis.restart();
    assert_eq!(redis.port(), port);
    assert!(redis.is_running());
    assert_eq!(redis.cli(&["PING"]), "PONG");
    assert_eq!(redis.cli(&["GET", "graygate:k"]), "", "no persistence");
}

#[test]
fn redis_server_reports_a_taken_port_as_taken() {
    if !RedisServer::available() {
        println!("SKIPPED: redis-server / redis-cli not installed (make deps-test installs them)");
        return;
    }
    // Held by a listener that is no Redis: redis-server fails its bind and exits.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let started = Instant::now();
    let result = RedisServer::start_on(port);
    assert!(
        matches!(result, Err(RedisStartError::PortTaken)),
        "port {port} held by a listener: {result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "told from the bind error, not a timeout ({:?})",
        started.elapsed()
    );

    // Held by another Redis, which answers there: that one must not pass for the new one.
    let first = RedisServer::start();
    let result = RedisServer::start_on(first.port());
    assert!(
        matches!(result, Err(RedisStartError::PortTaken)),
        "port {} held by another Redis: {result:?}",
        first.port()
    );
    assert_eq!(first.cli(&["PING"]), "PONG", "the first Redis is unharmed");
}
