//! gRPC end to end through graygate (SPEC section 11): a real grpcio client speaks h2c to an
//! `h2c: true` listener, graygate proxies to `protocol: h2c` groups whose peers are real
//! grpcio servers (`support::grpc`). Unary and server-streaming calls work, a non-OK status
//! arrives with its `grpc-message` and the server's trailing metadata, and gray routing reads
//! gRPC metadata like any header: `x-user-id: 42` goes to the canary's server, everyone else
//! to stable's, and each server sees the metadata and graygate's version header.

mod support;

use support::graygate::{metric, Graygate};
use support::grpc::{call, python_or_skip, GrpcServer};

fn rules(stable: &GrpcServer, canary: &GrpcServer) -> String {
    format!(
        "versions: {{ stable: {{}}, canary: {{}} }}\ndefault: stable\nidentity: {{ uid: [header:x-user-id] }}\nservices:\n  echo:\n    hosts: [\"*\"]\n    groups:\n      stable: {{ peers: [\"{}\"], protocol: h2c }}\n      canary: {{ peers: [\"{}\"], protocol: h2c }}\nrules:\n  - {{ name: uid-42, when: {{ uid_in: [42] }}, version: canary }}\n",
        stable.addr(),
        canary.addr()
    )
}

#[test]
fn grpc_through_graygate_streams_keeps_trailers_and_routes_by_metadata() {
    let Some(python) = python_or_skip() else {
        return;
    };
    let stable = GrpcServer::start(&python, "stable");
    let canary = GrpcServer::start(&python, "canary");
    // The first listener is plain HTTP/1.1 (the harness probes readiness there), the second
    // takes HTTP/2 with prior knowledge.
    let (gg, proxies) = Graygate::start_listeners(
        &rules(&stable, &canary),
        None,
        2,
        |addrs| {
            format!(
                "listeners:\n  - {{ name: http, listen: \"{}\" }}\n  - {{ name: grpc, listen: \"{}\", h2c: true }}\n",
                addrs[0], addrs[1]
            )
        },
        "",
    );
    let proxy = proxies[1];

    // Unary and server streaming, to stable (no uid) and to canary (uid 42).
    let unary = call(&python, proxy, "Unary", "hi", &[]);
    assert_eq!(unary.code, "OK", "{unary:?}");
    assert_eq!(unary.messages, ["stable:hi"]);
    assert_eq!(unary.trailer("x-backend"), Some("stable"));
    let streamed = call(&python, proxy, "Stream", "5", &[("x-user-id", "42")]);
    assert_eq!(streamed.code, "OK", "{streamed:?}");
    assert_eq!(
        streamed.messages,
        ["canary:0", "canary:1", "canary:2", "canary:3", "canary:4"]
    );
    assert_eq!(streamed.trailer("x-backend"), Some("canary"));

    // A non-OK status: grpc-status and grpc-message (and the other trailers) pass unchanged.
    let failed = call(
        &python,
        proxy,
        "Fail",
        "no entry for 7",
        &[("x-user-id", "7")],
    );
    assert_eq!(failed.code, "PERMISSION_DENIED", "{failed:?}");
    assert_eq!(failed.details, "denied: no entry for 7");
    assert_eq!(failed.trailer("x-backend"), Some("stable"));

    // Gray routing by metadata: the server that answers names itself and shows what it got.
    for (uid, backend) in [("42", "canary"), ("7", "stable")] {
        let echoed = call(&python, proxy, "Metadata", "", &[("x-user-id", uid)]);
        assert_eq!(echoed.code, "OK", "{echoed:?}");
        let seen: serde_json::Value =
            serde_json::from_str(&echoed.messages[0]).expect("the server answers JSON");
        assert_eq!(seen["backend"], backend, "uid {uid}");
        assert_eq!(seen["metadata"]["x-user-id"], uid);
        assert_eq!(seen["metadata"]["x-graygate-version"], backend);
        assert_eq!(
            seen["metadata"]["x-graygate-rule"],
            if uid == "42" { "uid-42" } else { "default" }
        );
    }

    // The calls count like any request: per version, 2xx (gRPC answers HTTP 200).
    let text = gg.scrape();
    let count = |version| {
        metric(
            &text,
            "graygate_requests_total",
            &[
                ("service", "echo"),
                ("version", version),
                ("status_class", "2xx"),
            ],
        )
    };
    assert_eq!(count("stable"), Some(3.0));
    assert_eq!(count("canary"), Some(2.0));
}
