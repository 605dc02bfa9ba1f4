//! Upstream protocol and TLS per group (SPEC section 11): a plain HTTP/1.1 request to
//! graygate is proxied to an HTTPS/1.1 group, an HTTP/2-over-TLS group and an h2c group,
//! each a real server on its own port (`support::tls_backend`) with certificates made by the
//! test (`support::certs`). A certificate that does not verify is a 502 and an upstream
//! error of kind `tls`, never a silent success.

mod support;

use std::path::Path;
use std::time::Duration;

use support::certs::{self_signed, TestCa};
use support::graygate::{metric, Graygate};
use support::tls_backend::{Mode, TlsBackend};
use support::{assert_eventually, get, http_request, Backend, Response};

fn write(dir: &Path, name: &str, pem: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write PEM");
    path.display().to_string()
}

fn header(r: &Response, name: &str) -> String {
    r.header(name).unwrap_or_else(|| {
        panic!(
            "no {name} in the answer {} {:?}: {}",
            r.status,
            r.headers,
            r.body_text()
        )
    })
}

fn json_error(r: &Response, status: u16) -> String {
    assert_eq!(r.status, status, "{}", r.body_text());
    let body: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body_text()));
    body["error"].as_str().unwrap_or_default().to_string()
}

/// One service per host, each with one stable group.
fn rules(services: &[(&str, String)]) -> String {
    let mut yaml = String::from("versions: { stable: {}, canary: {} }\ndefault: stable\nidentity: { uid: [header:X-User-Id] }\nservices:\n");
    for (host, group) in services {
        let name = host.split('.').next().unwrap_or(host);
        yaml.push_str(&format!(
            "  {name}:\n    hosts: [{host}]\n    groups:\n      stable: {group}\n"
        ));
    }
    yaml
}

#[test]
fn an_https_group_verifies_its_peer_against_the_ca_and_health_checks_over_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new();
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let backend = TlsBackend::start("https", Mode::Https1(ca.issue(&["api.internal"], 11, 30)));
    let gg = Graygate::start(&rules(&[(
        "web.test",
        format!(
            "{{ peers: [\"{}\"], tls: {{ sni: api.internal, ca: \"{ca_file}\" }}, health_check: {{ type: http, path: /healthz, interval: 100ms, timeout: 1s }} }}",
            backend.addr()
        ),
    )]));

    let r = get(gg.proxy, "web.test", "/", &[]);
    assert_eq!((r.status, r.body_text()), (200, "https".to_string()));
    assert_eq!(header(&r, "x-request-version"), "HTTP/1.1");
    assert_eq!(header(&r, "x-seen-sni"), "api.internal");
    assert_eq!(header(&r, "x-seen-version"), "stable");
    assert_eq!(backend.handshakes_failed(), 0);

    // The HTTP health check speaks the group's TLS: probes arrive, and the peer stays up.
    assert_eventually(Duration::from_secs(10), "health probes over TLS", || {
        backend.healthz_requests() >= 2
    });
    assert_eventually(Duration::from_secs(10), "the peer exported healthy", || {
        metric(
            &gg.scrape(),
            "graygate_upstream_peer_healthy",
            &[("service", "web"), ("version", "stable")],
        ) == Some(1.0)
    });
    assert_eq!(backend.handshakes_failed(), 0);
}

#[test]
fn a_certificate_that_does_not_verify_is_a_502_and_a_tls_upstream_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new();
    let other_ca = TestCa::new();
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let other_file = write(dir.path(), "other.pem", &other_ca.pem());
    let signed = TlsBackend::start("signed", Mode::Https1(ca.issue(&["api.internal"], 12, 30)));
    let lone = TlsBackend::start("self-signed", Mode::Https1(self_signed("api.internal")));
    let group = |backend: &TlsBackend, tls: &str| {
        format!("{{ peers: [\"{}\"], tls: {tls} }}", backend.addr())
    };
    let gg = Graygate::start(&rules(&[
        (
            "good.test",
            group(
                &signed,
                &format!("{{ sni: api.internal, ca: \"{ca_file}\" }}"),
            ),
        ),
        // The same peer and name, another CA: Pingora's connection pool must not hand it the
        // connection `good` verified (its reuse hash ignores the roots; the group key not).
        (
            "wrongca.test",
            group(
                &signed,
                &format!("{{ sni: api.internal, ca: \"{other_file}\" }}"),
            ),
        ),
        (
            "wrongname.test",
            group(
                &signed,
                &format!("{{ sni: other.internal, ca: \"{ca_file}\" }}"),
            ),
        ),
        // No ca: the system's roots, which do not know a self-signed certificate.
        ("strict.test", group(&lone, "{ sni: api.internal }")),
        (
            "lax.test",
            group(&lone, "{ sni: api.internal, verify: false }"),
        ),
        ("nosni.test", group(&lone, "{ verify: false }")),
    ]));

    let good = get(gg.proxy, "good.test", "/", &[]);
    assert_eq!((good.status, good.body_text()), (200, "signed".to_string()));
    let answered = signed.requests();
    for host in ["wrongca.test", "wrongname.test", "strict.test"] {
        // Keep-alive would let a pooled connection answer: one request per connection.
        let r = get(gg.proxy, host, "/", &[]);
        assert_eq!(
            json_error(&r, 502),
            "bad gateway: the upstream failed",
            "{host}"
        );
        let service = host.split('.').next().unwrap_or(host);
        let errors = metric(
            &gg.scrape(),
            "graygate_upstream_errors_total",
            &[("service", service), ("version", "stable"), ("kind", "tls")],
        );
        assert_eq!(errors, Some(1.0), "{host}: one tls error counted");
    }
    assert_eq!(
        signed.requests(),
        answered,
        "no request reached a peer that failed to verify"
    );
    assert!(
        signed.handshakes_failed() >= 2,
        "the peer saw the refused handshakes"
    );

    let lax = get(gg.proxy, "lax.test", "/", &[]);
    assert_eq!(
        (lax.status, lax.body_text()),
        (200, "self-signed".to_string())
    );
    assert_eq!(header(&lax, "x-seen-sni"), "api.internal");
    let nosni = get(gg.proxy, "nosni.test", "/", &[]);
    assert_eq!(nosni.status, 200, "{}", nosni.body_text());
    assert_eq!(header(&nosni, "x-seen-sni"), "-", "no name: no SNI sent");
}

#[test]
fn an_h2_group_speaks_http2_over_tls_to_the_canary_while_stable_stays_http1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new();
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let stable = Backend::start("stable");
    let canary = TlsBackend::start(
        "canary-h2",
        Mode::H2(ca.issue(&["canary.internal"], 13, 30)),
    );
    let yaml = format!(
        "versions: {{ stable: {{}}, canary: {{}} }}\ndefault: stable\nidentity: {{ uid: [header:X-User-Id] }}\nservices:\n  web:\n    hosts: [\"*\"]\n    groups:\n      stable: {{ peers: [\"{}\"] }}\n      canary:\n        peers: [\"{}\"]\n        protocol: h2\n        tls: {{ sni: canary.internal, ca: \"{ca_file}\" }}\nrules:\n  - {{ name: tail-3, when: {{ uid_tail: [3] }}, version: canary }}\n",
        stable.addr(),
        canary.addr()
    );
    let gg = Graygate::start(&yaml);

    // uid 13 ends in 3: canary, over HTTP/2 with TLS; uid 14: stable, plain HTTP/1.1.
    let r = get(gg.proxy, "www.example.com", "/", &[("X-User-Id", b"13")]);
    assert_eq!((r.status, r.body_text()), (200, "canary-h2".to_string()));
    assert_eq!(header(&r, "x-request-version"), "HTTP/2.0");
    assert_eq!(header(&r, "x-seen-sni"), "canary.internal");
    assert_eq!(header(&r, "x-seen-version"), "canary");
    let r = get(gg.proxy, "www.example.com", "/", &[("X-User-Id", b"14")]);
    assert_eq!((r.status, r.body_text()), (200, "stable".to_string()));

    // A request body crosses the HTTP/1.1 to HTTP/2 translation whole.
    let body = "x".repeat(100_000);
    let raw = format!(
        "POST /upload HTTP/1.1\r\nHost: www.example.com\r\nX-User-Id: 23\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = http_request(gg.proxy, raw.as_bytes()).expect("POST through graygate");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(header(&r, "x-request-version"), "HTTP/2.0");
    assert_eq!(header(&r, "x-body-bytes"), "100000");
    assert_eq!(canary.requests(), 2);
}

#[test]
fn an_h2c_group_speaks_http2_with_prior_knowledge() {
    let backend = TlsBackend::start("h2c", Mode::H2c);
    let gg = Graygate::start(&rules(&[(
        "grpc.test",
        format!(
            "{{ peers: [\"{}\"], protocol: h2c, health_check: {{ type: http, path: /healthz, interval: 100ms, timeout: 1s }} }}",
            backend.addr()
        ),
    )]));
    for _ in 0..3 {
        let r = get(gg.proxy, "grpc.test", "/", &[]);
        assert_eq!((r.status, r.body_text()), (200, "h2c".to_string()));
        assert_eq!(header(&r, "x-request-version"), "HTTP/2.0");
        assert_eq!(header(&r, "x-seen-sni"), "-");
    }
    assert_eq!(backend.requests(), 3);
    // The HTTP health check speaks h2c too (an HTTP/1.1 probe would fail the h2 preface).
    assert_eventually(Duration::from_secs(10), "h2c health probes", || {
        backend.healthz_requests() >= 2
    });
    assert_eventually(Duration::from_secs(10), "the peer exported healthy", || {
        metric(
            &gg.scrape(),
            "graygate_upstream_peer_healthy",
            &[("service", "grpc"), ("version", "stable")],
        ) == Some(1.0)
    });
}

#[test]
fn a_replaced_ca_file_is_picked_up_by_a_reload_and_a_broken_one_keeps_the_last_good_rules() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new();
    let other_ca = TestCa::new();
    // The file starts with the wrong CA: the peer does not verify.
    let ca_file = write(dir.path(), "ca.pem", &other_ca.pem());
    let backend = TlsBackend::start("https", Mode::Https1(ca.issue(&["api.internal"], 14, 30)));
    let gg = Graygate::start(&rules(&[(
        "web.test",
        format!(
            "{{ peers: [\"{}\"], tls: {{ sni: api.internal, ca: \"{ca_file}\" }} }}",
            backend.addr()
        ),
    )]));
    assert_eq!(get(gg.proxy, "web.test", "/", &[]).status, 502);

    // Only the CA file changes, no rules file: the reload still sees a change.
    write(dir.path(), "ca.pem", &ca.pem());
    let generation = gg.store.current().generation;
    let reloaded = gg.store.reload().unwrap_or_else(|d| panic!("reload: {d}"));
    assert!(
        matches!(reloaded, graygate::state::Reloaded::Swapped(_)),
        "a new CA is a new generation"
    );
    assert_eq!(gg.store.current().generation, generation + 1);
    let r = get(gg.proxy, "web.test", "/", &[]);
    assert_eq!((r.status, r.body_text()), (200, "https".to_string()));

    // A CA file that is no longer PEM: the reload fails naming it, the last good rules serve.
    write(
        dir.path(),
        "ca.pem",
        b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    let errors = match gg.store.reload() {
        Err(diagnostics) => diagnostics.to_string(),
        Ok(_) => panic!("a broken CA fails the reload"),
    };
    assert!(
        errors.contains(&format!("tls.ca \"{ca_file}\" is not PEM certificates")),
        "{errors}"
    );
    assert_eq!(gg.store.current().generation, generation + 1);
    let r = get(gg.proxy, "web.test", "/", &[]);
    assert_eq!((r.status, r.body_text()), (200, "https".to_string()));
}
