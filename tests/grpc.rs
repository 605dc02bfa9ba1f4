//! The gRPC harness itself, client to server with nothing between: a real grpcio server
//! (`tests/grpc/server.py`) answers unary and server-streaming calls, a non-OK status with
//! its `grpc-message`, and echoes the metadata it got; the test stops it at the end. The
//! calls through graygate use the same harness (`tests/grpc_graygate.rs`).

mod support;

use std::net::TcpStream;
use std::time::Duration;

use support::grpc::{call, python_or_skip, GrpcServer};

#[test]
fn the_harness_answers_unary_streaming_errors_and_metadata_directly() {
    let Some(python) = python_or_skip() else {
        return;
    };
    let server = GrpcServer::start(&python, "stable");
    let addr = server.addr();

    let unary = call(&python, addr, "Unary", "hi", &[]);
    assert_eq!(
        (unary.code.as_str(), &unary.messages[..]),
        ("OK", &["stable:hi".to_string()][..])
    );
    assert_eq!(unary.trailer("x-backend"), Some("stable"));

    let stream = call(&python, addr, "Stream", "3", &[]);
    assert_eq!(stream.code, "OK");
    assert_eq!(stream.messages, ["stable:0", "stable:1", "stable:2"]);

    let failed = call(&python, addr, "Fail", "no entry", &[]);
    assert_eq!(failed.code, "PERMISSION_DENIED");
    assert_eq!(failed.details, "denied: no entry");
    assert_eq!(failed.trailer("x-backend"), Some("stable"));

    let bad = call(&python, addr, "Stream", "many", &[]);
    assert_eq!(
        (bad.code.as_str(), bad.details.as_str()),
        ("INVALID_ARGUMENT", "not a count")
    );

    let echoed = call(&python, addr, "Metadata", "", &[("x-user-id", "42")]);
    assert_eq!(echoed.code, "OK");
    let seen: serde_json::Value = serde_json::from_str(&echoed.messages[0]).expect("JSON");
    assert_eq!(seen["backend"], "stable");
    assert_eq!(seen["metadata"]["x-user-id"], "42");

    drop(server);
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "the server stopped with the test"
    );
}
