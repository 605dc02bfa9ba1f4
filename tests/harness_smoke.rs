//! The in-process server harness starts, routes one request and stops.

mod support;

use support::graygate::{metric, Graygate};
use support::{get, Backend};

#[test]
fn routes_to_the_default_group_and_stops() {
    let stable = Backend::start("stable");
    let rules = format!(
        "versions: {{ stable: {{}} }}\ndefault: stable\nservices:\n  web:\n    hosts: [\"*\"]\n    groups:\n      stable: {{ peers: [\"{}\"] }}\n",
        stable.addr()
    );
    let gg = Graygate::start(&rules);
    // `start` waited for answers on both listeners: its probes reach no backend and count as
    // no request.
    assert_eq!(
        stable.requests(),
        0,
        "the start-up probes reached the backend"
    );
    assert_eq!(
        metric(&gg.scrape(), "graygate_requests_total", &[]),
        Some(0.0),
        "the start-up probes were counted"
    );
    let response = get(gg.proxy, "www.example.com", "/", &[]);
    assert_eq!(response.status, 200);
    assert_eq!(response.body_text(), "stable");
    assert_eq!(response.header("x-seen-version").as_deref(), Some("stable"));
    assert_eq!(response.header("x-seen-rule").as_deref(), Some("default"));
}
