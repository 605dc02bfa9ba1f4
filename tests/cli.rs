//! The `graygate` binary: `check` on the shipped and on a broken configuration, `explain`.

use std::process::Command;

fn graygate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_graygate"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run graygate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_passes_on_the_shipped_configuration() {
    let (code, stdout, stderr) = graygate(&["check", "-c", "conf/graygate.yaml"]);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(
        stdout.trim(),
        "graygate check: ok: 4 version(s), 2 service(s), 8 rule(s), 1 goal(s), 1 rollout(s) from 2 file(s); default version stable; 0 TLS listener(s)"
    );
    assert_eq!(stderr, "", "no warnings on the shipped rules");
}

#[test]
fn check_lists_every_error_of_a_broken_configuration() {
    let (code, stdout, stderr) = graygate(&["check", "-c", "tests/fixtures/broken/graygate.yaml"]);
    assert_eq!(code, 1, "stdout: {stdout}");
    let a = "tests/fixtures/broken/rules/a.yaml";
    let b = "tests/fixtures/broken/rules/b.yaml";
    let expected = [
        format!("{a}:4: error: version \"bad name\": names may only use letters, digits, '-' and '_'"),
        format!("{a}:5: error: default: unknown version \"stabel\""),
        format!("{a}:7: error: identity.uid: \"phone:X\" is not a source like cookie:NAME, header:NAME or query:NAME"),
        format!("{a}:8: error: identity.internal.cidrs: \"10.0.0.0/33\" is not a CIDR like 10.0.0.0/8"),
        format!("{a}:14: error: service \"web\": group for unknown version \"nightly\""),
        format!("{a}:17: error: rule \"tail\": uid_tail \"12\" is not a digit 0-9"),
        format!("{a}:18: error: rule \"tail\": unknown version \"canry\""),
        format!("{a}:20: error: rule \"regex\": path_regex \"(\" is invalid: unclosed group"),
        format!("{a}:23: error: rule \"zero\": split weights sum to 0"),
        format!("{a}:24: error: rule \"tail\" is defined twice (first at {a}:16)"),
        format!("{a}:26: error: rule #5: unknown field `whn`, expected one of `name`, `when`, `version`, `split`, `rollout`"),
        format!("{a}:31: warning: rule \"late\" is unreachable: rule \"everyone\" above it has no conditions and always decides"),
        format!("{b}:2: error: version \"canary\" is defined twice (first at {a}:3)"),
        format!("{b}:6: error: service \"api\": path_prefix \"api\" must start with /"),
        format!("{b}:8: error: service \"api\" group \"stable\": peer \"not-an-address\" is not host:port"),
        format!("{b}:8: error: service \"api\" group \"stable\": lb \"fastest\" is neither round_robin nor consistent"),
        format!("{b}:8: error: service \"api\" group \"stable\": health_check type \"udp\" is neither http nor tcp"),
        format!("{b}:12: error: service \"grpc\" group \"stable\": protocol h2 needs tls (HTTP/2 without TLS is h2c)"),
        format!("{b}:15: error: service \"grpc\" group \"canary\": tls.ca \"tests/fixtures/broken/rules/tls/missing-ca.pem\" cannot be read: No such file or directory (os error 2)"),
        "graygate check: 18 error(s)".to_string(),
    ];
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines, expected, "full stderr:\n{stderr}");
}

#[test]
fn check_reports_a_config_file_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("graygate.yaml");
    std::fs::write(
        &conf,
        "listen: [\"127.0.0.1:8080\"]\nrules: rules\nthreads: 4\n",
    )
    .unwrap();
    let (code, _, stderr) = graygate(&["check", "-c", conf.to_str().unwrap()]);
    assert_eq!(code, 1);
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.ends_with(":3: error: unknown field `threads`, expected one of `listen`, `listeners`, `admin`, `rules`, `redis`, `cookie_secret_env`, `server`, `access_log`, `trusted_proxies`, `state`, `limits`"),
        "{stderr}"
    );
}

/// `listener:` names are checked against the config's listeners, with the rule's line; and
/// `explain --listener` places the request on one, by name, with its scheme.
#[test]
fn listener_conditions_name_configured_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("graygate.yaml");
    std::fs::write(
        &conf,
        "listeners:\n  - { name: public, listen: \"127.0.0.1:18080\" }\n  - { name: office, listen: \"127.0.0.1:18081\" }\nrules: rules.yaml\n",
    )
    .unwrap();
    let head = "versions: { stable: {}, canary: {} }\ndefault: stable\nservices:\n  web:\n    hosts: [\"*\"]\n    groups: { stable: { peers: [\"127.0.0.1:1\"] } }\nrules:\n";
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        format!("{head}  - name: office\n    when: {{ listener: [office, ofice] }}\n    version: canary\n"),
    )
    .unwrap();
    let (code, _, stderr) = graygate(&["check", "-c", conf.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.ends_with("rules.yaml:9: error: rule \"office\": listener \"ofice\" is not a listener of the config; the listeners are public, office"),
        "{stderr}"
    );
    std::fs::write(
        &rules,
        format!("{head}  - name: office\n    when: {{ listener: office }}\n    version: canary\n"),
    )
    .unwrap();
    let (code, stdout, stderr) = graygate(&["check", "-c", conf.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let explain = |listener: &[&str]| {
        let mut args = vec!["explain", "-c", conf.to_str().unwrap()];
        args.extend(listener);
        graygate(&args)
    };
    let (code, stdout, _) = explain(&["--listener", "office"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("decision: canary (rule office)"),
        "{stdout}"
    );
    let (code, stdout, _) = explain(&[]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("no match    office                   listener: the request arrived on public, not on office"),
        "{stdout}"
    );
    let (code, _, stderr) = explain(&["--listener", "lobby"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no listener is named \"lobby\"; the listeners are public, office"),
        "{stderr}"
    );
}

#[test]
fn explain_prints_every_rule_and_the_decision() {
    let (code, stdout, stderr) = graygate(&[
        "explain",
        "-c",
        "conf/graygate.yaml",
        "--uid",
        "13",
        "--host",
        "www.example.com",
        "--path",
        "/api/orders",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let expected = "\
facts: uid=13 tier=trial internal=false
rules (generation 1):
  1. no match    follow-channel           no valid channel cookie
  2. no match    shield-paid              tier is trial, not paid
  3. skipped     assigned                 no usable assignment stored (none, an unknown version, or the store failed)
  4. no match    internal-dev             header x-graygate-channel is absent
  5. DECIDED     tail-30pct               canary
  6. not reached ramp-canary
  7. not reached ab-register
  8. not reached anonymous-5pct
decision: canary (rule tail-30pct)
service: api, group canary: 127.0.0.1:18002
";
    assert_eq!(stdout, expected);

    let (code, stdout, _) = graygate(&[
        "explain",
        "-c",
        "conf/graygate.yaml",
        "--uid",
        "10001",
        "--json",
    ]);
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["version"], "stable");
    assert_eq!(report["rule"], "shield-paid");
    assert_eq!(report["tier"], "paid");
    assert_eq!(report["steps"][0]["outcome"], "not_matched");
    assert_eq!(report["steps"][1]["outcome"], "decided");
    assert_eq!(report["steps"][2]["outcome"], "not_reached");
}
