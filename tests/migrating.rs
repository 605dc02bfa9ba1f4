//! Every example of docs/migrating.md: each file of docs/migrating/ passes `graygate check`
//! (the binary, with a server configuration naming that file), and decides what the peer's
//! own documentation says for the cases it describes.

use std::path::{Path, PathBuf};
use std::process::Command;

use graygate::facts::{Facts, RequestView};
use graygate::rules::{decide, load};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};

const FILES: &[&str] = &[
    "ingress-nginx.yaml",
    "ingress-nginx-value.yaml",
    "apisix.yaml",
    "abtestinggateway.yaml",
    "kong.yaml",
    "higress.yaml",
];

fn example(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/migrating")
        .join(file)
}

#[test]
fn every_example_passes_graygate_check() {
    let listed: Vec<String> = std::fs::read_dir(example(""))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    for name in &listed {
        assert!(FILES.contains(&name.as_str()), "{name} is not checked here");
    }
    let dir = std::env::temp_dir().join(format!("graygate-migrating-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for file in FILES {
        let conf = dir.join(format!("{file}.conf.yaml"));
        std::fs::write(
            &conf,
            format!(
                "listen: [\"127.0.0.1:0\"]\nrules: {}\n",
                example(file).display()
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_graygate"))
            .args(["check", "-c", conf.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .output()
            .expect("run graygate");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{file}:\n{stdout}{stderr}");
        assert!(
            stdout.starts_with("graygate check: ok:"),
            "{file}: {stdout}"
        );
        assert_eq!(stderr, "", "{file}: no warnings");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every YAML block of docs/migrating.md is copied from one of the example files.
#[test]
fn the_guide_shows_the_checked_files() {
    let guide = std::fs::read_to_string(example("../migrating.md")).unwrap();
    let files: Vec<String> = FILES
        .iter()
        .map(|f| std::fs::read_to_string(example(f)).unwrap())
        .collect();
    let blocks: Vec<&str> = guide
        .split("```yaml\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap())
        .collect();
    assert_eq!(blocks.len(), 7);
    for block in blocks {
        assert!(
            files.iter().any(|f| f.contains(block)),
            "not in any docs/migrating file:\n{block}"
        );
    }
}

/// `graygate explain` names the matcher that failed and the value, and why no `any` set held.
#[test]
fn explain_names_the_failing_matcher() {
    let dir = std::env::temp_dir().join(format!("graygate-explain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("apisix.conf.yaml");
    std::fs::write(
        &conf,
        format!(
            "listen: [\"127.0.0.1:0\"]\nrules: {}\n",
            example("apisix.yaml").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_graygate"))
        .args([
            "explain",
            "-c",
            conf.to_str().unwrap(),
            "--path",
            "/?name=jack",
        ])
        .args(["--header", "User-Id: 23", "--header", "Apisix-Key: hello"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run graygate");
    std::fs::remove_dir_all(&dir).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
    assert!(
        lines.contains(
            &"1. no match    match-vars               header user-id \"23\" is not above 23"
        ),
        "{stdout}"
    );
    assert!(
        lines.contains(&"2. no match    operators                any: no set holds (#1: header x-region is absent; #2: header x-build is absent; #3: cookie plan is absent)"),
        "{stdout}"
    );
}

/// The README's matcher example compiles as written.
#[test]
fn the_readme_matcher_example_compiles() {
    let readme = std::fs::read_to_string(example("../../README.md")).unwrap();
    let block = readme
        .split("```yaml\n")
        .find(|b| b.contains("app-5.2-and-later"))
        .and_then(|b| b.split("```").next())
        .expect("the README has the matcher example");
    let text = format!("versions: {{ stable: {{}}, canary: {{}} }}\ndefault: stable\nservices:\n  web:\n    hosts: [\"*\"]\n    groups: {{ stable: {{ peers: [\"127.0.0.1:1\"] }} }}\n{block}");
    let loaded = graygate::rules::compile(
        &[graygate::rules::RuleSource {
            path: "README.md".into(),
            text,
        }],
        &Default::default(),
    )
    .unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(loaded.model.rules.rules.len(), 1);
}

/// One request: path, query, headers, client address.
struct Req<'a> {
    path: &'a str,
    query: &'a str,
    headers: &'a [(&'a str, &'a str)],
    ip: &'a str,
}

const GET: Req = Req {
    path: "/",
    query: "",
    headers: &[],
    ip: "203.0.113.7",
};

/// (rule, version) decided for `req` by the example `file`.
fn decided(file: &str, req: &Req) -> (String, String) {
    let rules = load(&example(file), &Default::default())
        .unwrap_or_else(|d| panic!("{file}:\n{d}"))
        .model
        .rules;
    let mut headers = HeaderMap::new();
    for (name, value) in req.headers {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let view = RequestView {
        method: &Method::GET,
        host: "app.example.com",
        path: req.path,
        query: Some(req.query).filter(|q| !q.is_empty()),
        headers: &headers,
        client_ip: req.ip.parse().ok(),
        arrival: Default::default(),
    };
    let facts = Facts::gather(&rules.identity, view);
    let decision = decide(&rules, &facts).expect("no store facts in the examples");
    (
        decision.rule_name(&rules).to_string(),
        rules.version(decision.version).name.to_string(),
    )
}

/// Runs the cases of one file; a version `"*"` means any (a random split).
fn cases(file: &str, cases: &[(Req, &str, &str)]) {
    for (req, rule, version) in cases {
        let (got_rule, got_version) = decided(file, req);
        assert_eq!(
            got_rule, *rule,
            "{file}: {} ?{} {:?}",
            req.path, req.query, req.headers
        );
        if *version != "*" {
            assert_eq!(
                got_version, *version,
                "{file}: {} ?{} {:?}",
                req.path, req.query, req.headers
            );
        }
    }
}

fn with(headers: &'static [(&'static str, &'static str)]) -> Req<'static> {
    Req { headers, ..GET }
}

#[test]
fn ingress_nginx_header_then_cookie_then_weight() {
    cases(
        "ingress-nginx.yaml",
        &[
            (
                with(&[("x-canary", "always")]),
                "by-header-always",
                "canary",
            ),
            (with(&[("x-canary", "never")]), "by-header-never", "stable"),
            // The header outranks the cookie, both ways.
            (
                with(&[("x-canary", "never"), ("cookie", "canary=always")]),
                "by-header-never",
                "stable",
            ),
            (
                with(&[("x-canary", "always"), ("cookie", "canary=never")]),
                "by-header-always",
                "canary",
            ),
            (
                with(&[("cookie", "canary=always")]),
                "by-cookie-always",
                "canary",
            ),
            (
                with(&[("cookie", "canary=never")]),
                "by-cookie-never",
                "stable",
            ),
            // Any other header value is ignored: the cookie, then the weight, decide.
            (
                with(&[("x-canary", "yes"), ("cookie", "canary=always")]),
                "by-cookie-always",
                "canary",
            ),
            (with(&[("x-canary", "yes")]), "by-weight", "*"),
            (with(&[("cookie", "canary=1")]), "by-weight", "*"),
            (GET, "by-weight", "*"),
        ],
    );
}

#[test]
fn ingress_nginx_header_value_and_pattern() {
    cases(
        "ingress-nginx-value.yaml",
        &[
            (
                with(&[("x-region", "eu-west")]),
                "by-header-value",
                "canary",
            ),
            (with(&[("x-region", "eu-west-2")]), "default", "stable"),
            (
                with(&[("x-tester", "qa-alice")]),
                "by-header-pattern",
                "canary",
            ),
            (with(&[("x-tester", "dev-bob")]), "default", "stable"),
        ],
    );
}

#[test]
fn apisix_match_vars_and_weighted_upstreams() {
    let matching: &[(&str, &str)] = &[("user-id", "30"), ("apisix-key", "hello")];
    cases(
        "apisix.yaml",
        &[
            (
                Req {
                    query: "name=jack",
                    headers: matching,
                    ..GET
                },
                "match-vars",
                "*",
            ),
            // Every var must hold: user-id 23 is not above 23; no name=jack; a key without letters.
            (
                Req {
                    query: "name=jack",
                    headers: &[("user-id", "23"), ("apisix-key", "hello")],
                    ..GET
                },
                "default",
                "stable",
            ),
            (
                Req {
                    query: "name=rose",
                    headers: matching,
                    ..GET
                },
                "default",
                "stable",
            ),
            (
                Req {
                    query: "name=jack",
                    headers: &[("user-id", "30"), ("apisix-key", "123")],
                    ..GET
                },
                "default",
                "stable",
            ),
            (with(&[("x-region", "us")]), "operators", "canary"),
            (with(&[("x-build", "99")]), "operators", "canary"),
            (with(&[("x-build", "100")]), "default", "stable"),
            (with(&[("cookie", "plan=Pro-1")]), "operators", "canary"),
            (
                Req {
                    query: "debug=1",
                    headers: &[("x-region", "us")],
                    ..GET
                },
                "default",
                "stable",
            ),
        ],
    );
}

#[test]
fn abtestinggateway_policies() {
    let uid = |u: &'static str| -> Req<'static> {
        let headers: &'static [(&'static str, &'static str)] = Box::leak(Box::new([("x-uid", u)]));
        with(headers)
    };
    cases(
        "abtestinggateway.yaml",
        &[
            (uid("5124"), "uidappoint", "beta3"),
            (uid("1500"), "uidrange", "beta2"),
            (uid("2001"), "uidsuffix", "beta1"),
            (uid("2002"), "default", "stable"),
            (
                Req {
                    ip: "192.168.1.77",
                    ..GET
                },
                "iprange",
                "beta2",
            ),
            (
                Req {
                    query: "city=SH",
                    ..GET
                },
                "arg-city",
                "beta1",
            ),
            (
                Req {
                    query: "city=GZ",
                    ..GET
                },
                "default",
                "stable",
            ),
            (
                Req {
                    path: "/api/new/list",
                    ..GET
                },
                "url",
                "beta3",
            ),
        ],
    );
}

#[test]
fn kong_canary_groups_and_hashes() {
    cases(
        "kong.yaml",
        &[
            (
                with(&[("x-consumer-groups", "vip, beta")]),
                "deny-vip",
                "stable",
            ),
            (
                with(&[("x-consumer-groups", "staff,beta")]),
                "allow-beta",
                "canary",
            ),
            // "beta-testers" is not the group "beta".
            (
                with(&[("x-consumer-groups", "beta-testers")]),
                "anonymous-by-ip",
                "*",
            ),
            (
                Req {
                    path: "/devices/1",
                    headers: &[("x-device", "d-42")],
                    ..GET
                },
                "by-device",
                "*",
            ),
            (
                with(&[("x-consumer-username", "alice")]),
                "by-consumer",
                "*",
            ),
            (GET, "anonymous-by-ip", "*"),
        ],
    );
    // hash: consumer is sticky: the same consumer always gets the same version.
    let alice = with(&[("x-consumer-username", "alice")]);
    assert_eq!(decided("kong.yaml", &alice), decided("kong.yaml", &alice));
}

#[test]
fn higress_frontend_gray() {
    cases(
        "higress.yaml",
        &[
            (with(&[("cookie", "userid=00000002")]), "beta-user", "gray"),
            (with(&[("userid", "00000003")]), "beta-user", "gray"),
            (with(&[("cookie", "level=level5")]), "beta-user", "gray"),
            // inner-user is not an enabled gray deployment.
            (with(&[("cookie", "userid=00000001")]), "default", "base"),
            (
                with(&[("cookie", "userid=9; level=level1")]),
                "default",
                "base",
            ),
        ],
    );
}
