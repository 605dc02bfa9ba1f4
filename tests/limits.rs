//! `limits:` (SPEC section 14) against real sockets: a slow request header is closed after
//! `header_timeout` (new and keep-alive connections), a WebSocket-style upgrade outlives it,
//! one client's connections are capped, and bodies over `max_body_size` are answered 413
//! before the upstream sees them.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use support::graygate::{metric, Graygate};
use support::{assert_eventually, http_request, read_response, Backend, KeepAlive};

fn rules(backend: &Backend, extra_service: &str) -> String {
    format!(
        "versions: {{ stable: {{}} }}\ndefault: stable\n\
         services:\n  web:\n    hosts: [\"*\"]\n    groups:\n      stable: {{ peers: [\"{}\"] }}\n{extra_service}\
         rules: []\n",
        backend.addr()
    )
}

const LIMITS: &str =
    "limits: { header_timeout: 1s, max_connections_per_client: 4, max_body_size: 1KB }\n";

/// Reads from `stream` until the peer closes it (or resets it); `Err` when it is still open
/// after `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(started.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Ok(started.elapsed()),
        }
        if started.elapsed() > within {
            return Err(format!("still open after {within:?}"));
        }
    }
}

#[test]
fn a_slow_header_is_closed_after_header_timeout() {
    let backend = Backend::start("stable");
    let gg = Graygate::start_with(&rules(&backend, ""), None, LIMITS);
    let before = metric(
        &gg.scrape(),
        "graygate_connections_total",
        &[("result", "header_timeout")],
    )
    .unwrap_or(0.0);
    let mut slow = TcpStream::connect(gg.proxy).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .unwrap();
    // A byte every 300 ms: every read is quick, the header is never complete.
    let trickle = {
        let mut s = slow.try_clone().unwrap();
        thread::spawn(move || {
            for _ in 0..40 {
                if s.write_all(b"a").is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(300));
            }
        })
    };
    // header_timeout is 1 s; the bound leaves room for a loaded machine.
    let took = closed_within(&mut slow, Duration::from_secs(8)).unwrap();
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    trickle.join().unwrap();
    assert_eventually(Duration::from_secs(5), "header_timeout counted", || {
        metric(
            &gg.scrape(),
            "graygate_connections_total",
            &[("result", "header_timeout")],
        )
        .unwrap_or(0.0)
            > before
    });
    assert_eq!(backend.requests(), 0);
}

#[test]
fn keep_alive_requests_get_the_deadline_too_and_idle_time_is_not_counted() {
    let backend = Backend::start("stable");
    let gg = Graygate::start_with(&rules(&backend, ""), None, LIMITS);
    let stream = TcpStream::connect(gg.proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    writer
        .write_all(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut reader, false).unwrap().status, 200);
    // Idle longer than header_timeout between requests: the connection stays.
    thread::sleep(Duration::from_millis(1_500));
    writer
        .write_all(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut reader, false).unwrap().status, 200);
    // The third request's header never ends: closed after header_timeout.
    writer.write_all(b"GET /3 HTTP/1.1\r\nHost: a\r\n").unwrap();
    let mut raw = reader.into_inner();
    closed_within(&mut raw, Duration::from_secs(8)).unwrap();
    assert_eq!(backend.requests(), 2);
}

/// An upstream that answers any request with `101 Switching Protocols` and then echoes.
fn upgrade_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match conn.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                if head.starts_with(b"GET /healthz") {
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    );
                    return;
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                );
                let mut buf = [0u8; 1024];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn an_upgraded_connection_outlives_header_timeout() {
    let upstream = upgrade_backend();
    let rules = format!(
        "versions: {{ stable: {{}} }}\ndefault: stable\n\
         services:\n  ws:\n    hosts: [\"*\"]\n    groups:\n      stable: {{ peers: [\"{upstream}\"] }}\n\
         rules: []\n"
    );
    let gg = Graygate::start_with(&rules, None, LIMITS);
    let mut ws = TcpStream::connect(gg.proxy).unwrap();
    ws.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(ws.read(&mut byte).unwrap(), 1, "closed during the 101");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    // Bytes that are no HTTP header, sent slower than header_timeout: echoed each time.
    for i in 0..3u8 {
        thread::sleep(Duration::from_millis(700));
        ws.write_all(&[b'a' + i]).unwrap();
        let mut echo = [0u8; 1];
        ws.read_exact(&mut echo).unwrap();
        assert_eq!(echo[0], b'a' + i);
    }
}

#[test]
fn one_client_is_capped_and_gets_its_slots_back() {
    let backend = Backend::start("stable");
    let gg = Graygate::start_with(&rules(&backend, ""), None, LIMITS);
    // Four keep-alive connections, each proven accepted by an answered request.
    let mut held: Vec<KeepAlive> = (0..4).map(|_| KeepAlive::new(gg.proxy)).collect();
    for conn in &mut held {
        assert_eq!(conn.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").status, 200);
    }
    let refused = || {
        metric(
            &gg.scrape(),
            "graygate_connections_total",
            &[("result", "client_limit")],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(refused(), 0.0);
    // The fifth is closed at once, without an answer.
    let fifth = http_request(gg.proxy, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(fifth.is_err(), "{fifth:?}");
    assert_eq!(refused(), 1.0);
    // One closed: a new connection is admitted (once graygate has seen the close).
    held.pop();
    assert_eventually(Duration::from_secs(5), "a slot given back", || {
        http_request(
            gg.proxy,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .is_ok_and(|r| r.status == 200)
    });
}

#[test]
fn bodies_over_max_body_size_are_refused_before_the_upstream() {
    let backend = Backend::start("stable");
    let gg = Graygate::start_with(
        &rules(
            &backend,
            "  upload:\n    hosts: [upload.test]\n    max_body_size: 4KB\n    groups:\n      stable: { peers: [\"BACKEND\"] }\n"
                .replace("BACKEND", &backend.addr().to_string())
                .as_str(),
        ),
        None,
        LIMITS,
    );
    let post = |host: &str, len: usize| {
        let mut raw = format!(
            "POST /up HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        raw.extend(std::iter::repeat_n(b'x', len));
        http_request(gg.proxy, &raw)
    };
    // 2,000 bytes: over the global 1 KB, under the upload service's 4 KB.
    let refused = post("a.test", 2_000).unwrap();
    assert_eq!(refused.status, 413);
    assert_eq!(
        refused.header("content-type").as_deref(),
        Some("application/json")
    );
    assert!(
        refused.body_text().contains("max_body_size"),
        "{}",
        refused.body_text()
    );
    assert_eq!(
        backend.requests(),
        0,
        "the upstream saw the refused request"
    );
    assert_eq!(post("a.test", 1_000).unwrap().status, 200);
    assert_eq!(post("upload.test", 2_000).unwrap().status, 200);
    assert_eq!(post("upload.test", 5_000).unwrap().status, 413);
    assert_eq!(backend.requests(), 2);
    // A chunked body has no length to check first: cut at the limit, answered 413.
    let mut chunked =
        b"POST /up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for _ in 0..4 {
        chunked.extend_from_slice(b"200\r\n");
        chunked.extend(std::iter::repeat_n(b'y', 0x200));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let cut = http_request(gg.proxy, &chunked);
    // The 413, or (when the upstream answered first) no complete answer; never a 200.
    assert!(cut.as_ref().map_or(true, |r| r.status == 413), "{cut:?}");
}
