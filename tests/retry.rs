//! Retries on failed reused upstream connections (SPEC section 14): a pooled connection that
//! the upstream closes without answering is retried on a fresh one for idempotent requests,
//! never for a POST it may have processed; a killed peer's pooled connections cost no
//! request when another peer or the default group is there.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use support::graygate::{metric, Graygate};
use support::{assert_eventually, Backend, KeepAlive};

/// An upstream whose connections each answer their first request and then close when the
/// second one arrives, without a byte of answer: the peer that closed an idle keep-alive
/// connection just as graygate reused it.
struct OneShotUpstream {
    addr: SocketAddr,
    answered: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

fn read_head(reader: &mut BufReader<TcpStream>) -> Option<(String, usize)> {
    let mut first = String::new();
    if reader.read_line(&mut first).ok()? == 0 {
        return None;
    }
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            return Some((first, length));
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
}

impl OneShotUpstream {
    fn start() -> OneShotUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let answered = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicUsize::new(0));
        let (a, d) = (Arc::clone(&answered), Arc::clone(&dropped));
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (a, d) = (Arc::clone(&a), Arc::clone(&d));
                thread::spawn(move || {
                    let mut writer = conn.try_clone().unwrap();
                    let mut reader = BufReader::new(conn);
                    let Some((_, length)) = read_head(&mut reader) else {
                        return;
                    };
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    a.fetch_add(1, Ordering::SeqCst);
                    let _ = writer.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-Backend: oneshot\r\n\r\noneshot\n",
                    );
                    // The next request on this connection is read, then dropped unanswered.
                    if read_head(&mut reader).is_some() {
                        d.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        OneShotUpstream {
            addr,
            answered,
            dropped,
        }
    }
}

fn rules(peer: SocketAddr) -> String {
    // No health check: the test's own requests are the only traffic, one connection at a time.
    format!(
        "versions: {{ stable: {{}} }}\ndefault: stable\n\
         services:\n  web:\n    hosts: [\"*\"]\n    groups:\n      stable: {{ peers: [\"{peer}\"] }}\n\
         rules: []\n"
    )
}

fn retries(gg: &Graygate, reason: &str) -> f64 {
    metric(
        &gg.scrape(),
        "graygate_retries_total",
        &[("service", "web"), ("reason", reason)],
    )
    .unwrap_or(0.0)
}

#[test]
fn a_dead_reused_connection_is_retried_on_a_fresh_one() {
    let upstream = OneShotUpstream::start();
    let gg = Graygate::start(&rules(upstream.addr));
    let mut client = KeepAlive::new(gg.proxy);
    for i in 0..6 {
        // Every second request takes the connection pooled by the one before, which the
        // upstream drops unanswered; the retry's fresh connection is not pooled, so the next
        // request opens a new one again.
        let r = client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        if r.status != 200 {
            let text = gg.scrape();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("retries") || l.contains("upstream_errors"))
                .collect();
            panic!("request {i}: {} {lines:#?}", r.body_text());
        }
        assert_eq!(r.body_text(), "oneshot\n");
    }
    assert_eventually(Duration::from_secs(5), "3 retries counted", || {
        retries(&gg, "reused_connection") == 3.0
    });
    assert_eq!(upstream.answered.load(Ordering::SeqCst), 6);
    assert_eq!(upstream.dropped.load(Ordering::SeqCst), 3);
    let text = gg.scrape();
    assert_eq!(
        metric(
            &text,
            "graygate_upstream_errors_total",
            &[("service", "web"), ("kind", "reset")]
        ),
        Some(3.0),
        "each dead connection is an upstream error"
    );
}

#[test]
fn a_post_the_upstream_may_have_processed_is_not_retried() {
    let upstream = OneShotUpstream::start();
    let gg = Graygate::start(&rules(upstream.addr));
    let mut client = KeepAlive::new(gg.proxy);
    let first = client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(first.status, 200);
    // The POST went out whole on the pooled connection, which then closed: graygate cannot
    // know whether it was processed, so the client hears of the failure.
    let post = client.send(b"POST /order HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(post.status, 502, "{}", post.body_text());
    assert_eq!(retries(&gg, "reused_connection"), 0.0);
}

#[test]
fn a_killed_peer_costs_no_request() {
    let stable = Backend::start("stable");
    let canary_1 = Backend::start("canary-1");
    let canary_2 = Backend::start("canary-2");
    let rules = format!(
        "versions: {{ stable: {{}}, canary: {{}} }}\ndefault: stable\nidentity: {{ uid: [header:X-User-Id] }}\n\
         services:\n  web:\n    hosts: [\"*\"]\n    groups:\n      stable: {{ peers: [\"{}\"] }}\n      canary: {{ peers: [\"{}\", \"{}\"] }}\n\
         rules:\n  - {{ name: tail, when: {{ uid_tail: [3] }}, version: canary }}\n",
        stable.addr(),
        canary_1.addr(),
        canary_2.addr()
    );
    let gg = Graygate::start(&rules);
    // Several keep-alive clients, so graygate pools several connections to each canary peer.
    let mut clients: Vec<KeepAlive> = (0..4).map(|_| KeepAlive::new(gg.proxy)).collect();
    let request = b"GET / HTTP/1.1\r\nHost: a\r\nX-User-Id: 13\r\n\r\n";
    for _ in 0..5 {
        for c in &mut clients {
            assert_eq!(c.send(request).status, 200);
        }
    }
    assert!(canary_1.requests() > 0 && canary_2.requests() > 0);
    // Killed with its pooled connections; the next requests find them dead or refused.
    canary_1.stop();
    for i in 0..50 {
        for c in &mut clients {
            let r = c.send(request);
            assert_eq!(
                r.status,
                200,
                "request {i} after the kill: {}",
                r.body_text()
            );
            assert_eq!(r.header("x-backend").as_deref(), Some("canary-2"));
        }
    }
    // Both canary peers gone: the default group serves.
    canary_2.stop();
    for c in &mut clients {
        let r = c.send(request);
        assert_eq!(r.status, 200, "{}", r.body_text());
        assert_eq!(r.header("x-backend").as_deref(), Some("stable"));
    }
}
