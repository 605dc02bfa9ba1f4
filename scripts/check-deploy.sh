#!/usr/bin/env bash
# Validate the deployment artefacts under deploy/ (called by `make test`):
#
#   * Prometheus rules: `promtool check rules` and the unit tests of `promtool test rules`;
#   * every YAML / JSON file parses; the Grafana dashboard has its variables, its panels use
#     the ${datasource} variable, and deploy/grafana/queries.txt matches the dashboard;
#   * the Kubernetes manifests have the probes, ports and timings graygate needs;
#   * the server settings and rules shipped for Docker and Kubernetes pass `graygate check`;
#   * the systemd unit and the Dockerfile have their key directives.
#
#   scripts/check-deploy.sh                 # uses `cargo run` for graygate check
#   GRAYGATE=path/to/graygate scripts/check-deploy.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

fail() {
    echo "check-deploy: error: $*" >&2
    exit 1
}

for tool in promtool python3; do
    command -v "$tool" >/dev/null 2>&1 ||
        fail "$tool not found (install it: scripts/install-deps.sh test)"
done
python3 -c 'import yaml' 2>/dev/null ||
    fail "python3 cannot import yaml (install python3-yaml: scripts/install-deps.sh test)"

echo "== promtool check rules"
promtool check rules deploy/prometheus/alerts.yml

echo "== promtool test rules"
promtool test rules deploy/prometheus/alerts_test.yml

echo "== YAML, JSON and manifest checks"
python3 - <<'PY'
import glob
import json
import re
import sys

import yaml

errors = []


def check(cond, msg):
    if not cond:
        errors.append(msg)
    return cond


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


docs = {}
for path in sorted(glob.glob("deploy/**/*.y*ml", recursive=True)):
    try:
        docs[path] = load_all(path)
        print(f"  ok  {path} ({len(docs[path])} document(s))")
    except yaml.YAMLError as e:
        errors.append(f"{path}: YAML does not parse: {e}")

# ---------------------------------------------------------------- Grafana dashboard
dash_path = "deploy/grafana/graygate.json"
try:
    with open(dash_path) as f:
        dash = json.load(f)
    print(f"  ok  {dash_path}")
except (OSError, ValueError) as e:
    sys.exit(f"check-deploy: error: {dash_path}: {e}")

check(isinstance(dash.get("schemaVersion"), int) and dash["schemaVersion"] >= 36,
      f"{dash_path}: schemaVersion should be ~39, is {dash.get('schemaVersion')}")
variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
ds = variables.get("datasource", {})
check(ds.get("type") == "datasource" and ds.get("query") == "prometheus",
      f"{dash_path}: needs a `datasource` variable of type datasource / prometheus")
for name in ("service", "version"):
    v = variables.get(name, {})
    check(v.get("type") == "query" and v.get("multi") and v.get("includeAll")
          and v.get("allValue") == ".*",
          f"{dash_path}: `{name}` must be a multi-select query variable with All = .*")
    check(f"label_values(graygate_requests_total, {name})" in json.dumps(v.get("query")),
          f"{dash_path}: `{name}` must come from label_values(graygate_requests_total, {name})")


def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))


exprs = []
for p in panels(dash.get("panels", [])):
    if p.get("type") == "row":
        continue
    check(p.get("datasource", {}).get("uid") == "${datasource}",
          f"{dash_path}: panel {p.get('title')!r} does not use ${{datasource}}")
    for t in p.get("targets", []):
        check(t.get("datasource", {}).get("uid") == "${datasource}",
              f"{dash_path}: a query of {p.get('title')!r} does not use ${{datasource}}")
        exprs.append(t["expr"])
titles = " | ".join(p.get("title", "") for p in panels(dash.get("panels", [])))
for want in ("Request rate", "Error rate", "p50", "p99", "Goal conversion", "Fallbacks",
             "Store lookups", "Decisions", "peer health"):
    check(want.lower() in titles.lower(), f"{dash_path}: no panel about {want!r}")

concrete = {e.replace("$service", ".*").replace("$version", ".*")
             .replace("$__rate_interval", "1m") for e in exprs}
queries = [q.strip() for q in open("deploy/grafana/queries.txt") if q.strip()]
check(len(queries) >= 5, "deploy/grafana/queries.txt: expected the dashboard's main queries")
for q in queries:
    check("$" not in q, f"queries.txt: unresolved variable in {q}")
    check(q in concrete, f"queries.txt: not a dashboard query (out of date?): {q}")

# ---------------------------------------------------------------- Prometheus rules: names
exported = {"graygate_requests_total", "graygate_request_duration_seconds_bucket",
            "graygate_request_duration_seconds_count", "graygate_upstream_errors_total",
            "graygate_decisions_total", "graygate_fallbacks_total", "graygate_goal_total",
            "graygate_store_lookups_total", "graygate_rules_generation",
            "graygate_rules_reload_total", "graygate_upstream_peer_healthy",
            # SPEC 11 (edge transport)
            "graygate_tls_reload_total", "graygate_tls_certificate_expiry_timestamp_seconds",
            "graygate_tls_handshakes_total", "graygate_tls_sni_unmatched_total",
            "graygate_connections_total",
            # SPEC 12 (rollouts)
            "graygate_rollout_weight", "graygate_rollout_state", "graygate_rollout_checks_total",
            # SPEC 13 (fleet)
            "graygate_override", "graygate_fleet_instances", "graygate_fleet_judge"}
rules_text = open("deploy/prometheus/alerts.yml").read() + "\n".join(exprs)
for name in set(re.findall(r"\bgraygate_[a-z_]+", rules_text)):
    check(name in exported, f"unknown metric {name} in the rules or the dashboard (SPEC 7)")

# ---------------------------------------------------------------- Kubernetes manifests
k8s = {}
for path in glob.glob("deploy/k8s/*.yaml"):
    for d in docs.get(path, []):
        check("apiVersion" in d and "kind" in d and "name" in d.get("metadata", {}),
              f"{path}: a document without apiVersion / kind / metadata.name")
        k8s[(d.get("kind"), d.get("metadata", {}).get("name"))] = d

conf_cm = k8s.get(("ConfigMap", "graygate-conf"), {})
rules_cm = k8s.get(("ConfigMap", "graygate-rules"), {})
check("graygate.yaml" in conf_cm.get("data", {}), "configmap.yaml: graygate-conf/graygate.yaml")
check(rules_cm.get("data"), "configmap.yaml: graygate-rules has no rules files")
conf = yaml.safe_load(conf_cm.get("data", {}).get("graygate.yaml", "{}")) or {}
for name, text in rules_cm.get("data", {}).items():
    check(name.endswith((".yaml", ".yml")), f"graygate-rules: {name} is not *.yaml")
    yaml.safe_load(text)
check(conf.get("admin", {}).get("listen", "").startswith("0.0.0.0:9901"),
      "graygate-conf: admin.listen must be 0.0.0.0:9901 (scraped by Prometheus)")
check(conf.get("rules") == "/etc/graygate/rules", "graygate-conf: rules: /etc/graygate/rules")
check(conf.get("redis", {}).get("url"), "graygate-conf: every replica needs the shared redis.url")

dep = k8s.get(("Deployment", "graygate"), {})
pod = dep.get("spec", {}).get("template", {}).get("spec", {})
check(dep.get("spec", {}).get("replicas") == 3, "deployment.yaml: 3 replicas")
containers = pod.get("containers", [{}])
c = containers[0]
for probe in ("readinessProbe", "livenessProbe"):
    g = c.get(probe, {}).get("httpGet", {})
    check(g.get("path") == "/-/healthz" and g.get("port") in (9901, "admin"),
          f"deployment.yaml: {probe} must GET /-/healthz on 9901")
sc = c.get("securityContext", {})
check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False,
      "deployment.yaml: read-only root filesystem, no privilege escalation")
check(pod.get("securityContext", {}).get("runAsNonRoot") is True, "deployment.yaml: runAsNonRoot")
env = {e["name"]: e for e in c.get("env", [])}
for var in ("GRAYGATE_ADMIN_TOKEN", "GRAYGATE_COOKIE_SECRET"):
    check("secretKeyRef" in env.get(var, {}).get("valueFrom", {}),
          f"deployment.yaml: {var} must come from a Secret")
mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
check("/etc/graygate/rules" in mounts and "subPath" not in mounts["/etc/graygate/rules"],
      "deployment.yaml: the rules ConfigMap must be a directory mount (no subPath)")
check("/tmp" in mounts, "deployment.yaml: a writable /tmp (pid file) with a read-only root")
server = conf.get("server", {})
pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
sleep = int(pre_stop[-1]) if pre_stop and str(pre_stop[-1]).isdigit() else 0
check(sleep > 0, "deployment.yaml: a preStop sleep")
need = sleep + server.get("grace_period_seconds", 5) + \
    server.get("graceful_shutdown_timeout_seconds", 5)
check(pod.get("terminationGracePeriodSeconds", 30) > need,
      f"deployment.yaml: terminationGracePeriodSeconds must exceed preStop + grace ({need}s)")

svc = k8s.get(("Service", "graygate"), {})
ports = {p.get("name"): p for p in svc.get("spec", {}).get("ports", [])}
check(ports.get("admin", {}).get("port") == 9901, "service.yaml: named port admin 9901")
check(any(p.get("port") == 80 for p in ports.values()), "service.yaml: proxy port 80")
sm = k8s.get(("ServiceMonitor", "graygate"), {})
check(sm.get("apiVersion") == "monitoring.coreos.com/v1", "servicemonitor.yaml: apiVersion")
eps = sm.get("spec", {}).get("endpoints", [])
check(any(e.get("port") == "admin" and e.get("path") == "/metrics" for e in eps),
      "servicemonitor.yaml: scrape port admin, path /metrics")
check(("Secret", "graygate-secrets") in k8s, "secret.example.yaml: Secret graygate-secrets")

# ---------------------------------------------------------------- systemd unit
unit = open("deploy/systemd/graygate.service").read()
for line in ("ExecStart=/usr/local/bin/graygate run -c /etc/graygate/graygate.yaml",
             "ExecReload=/bin/kill -HUP $MAINPID", "KillSignal=SIGTERM", "Restart=on-failure",
             "EnvironmentFile=-/etc/graygate/env", "NoNewPrivileges=yes",
             "ProtectSystem=strict", "LimitNOFILE="):
    check(line in unit, f"graygate.service: missing {line}")
m = re.search(r"^TimeoutStopSec=(\d+)s?$", unit, re.M)
check(m and int(m.group(1)) > 10, "graygate.service: TimeoutStopSec above the grace period")

# ---------------------------------------------------------------- Dockerfile
dockerfile = open("deploy/docker/Dockerfile").read()
for want in ("FROM rust:1-bookworm AS builder", "cmake", "cargo build --release --locked",
             "FROM debian:bookworm-slim", "ca-certificates", "USER 10001",
             "EXPOSE 8080 9901",
             'ENTRYPOINT ["/usr/local/bin/graygate", "run", "-c", "/etc/graygate/graygate.yaml"]'):
    check(want in dockerfile, f"Dockerfile: missing {want!r}")
for src in re.findall(r"^COPY (?!--from)(\S+) ", dockerfile, re.M):
    check(src == "." or glob.glob(src.rstrip("/")), f"Dockerfile: COPY source {src} missing")
ignore = open(".dockerignore").read().split()
check("target/" in ignore and ".git/" in ignore, ".dockerignore: target/ and .git/")

if errors:
    for e in errors:
        print(f"check-deploy: error: {e}", file=sys.stderr)
    sys.exit(1)
print("  ok  dashboard, queries.txt, manifests, unit, Dockerfile")
PY

echo "== graygate check of the Docker and Kubernetes configuration"
if [[ -n "${GRAYGATE:-}" ]]; then
    graygate=("$GRAYGATE")
else
    graygate=(cargo run --quiet --locked --)
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Docker: the image's /etc/graygate/graygate.yaml with the repository's rules/ beside it.
mkdir -p "$tmp/docker"
cp deploy/docker/graygate.yaml "$tmp/docker/graygate.yaml"
cp -r rules "$tmp/docker/rules"
"${graygate[@]}" check -c "$tmp/docker/graygate.yaml"

# Kubernetes: both ConfigMaps written out as the pod sees them. Peer names are resolved when
# rules load and cluster DNS does not exist here: they are replaced by 127.0.0.1.
mkdir -p "$tmp/k8s/rules"
python3 - "$tmp/k8s" <<'PY'
import re
import sys

import yaml

out = sys.argv[1]
maps = {d["metadata"]["name"]: d["data"] for d in yaml.safe_load_all(open("deploy/k8s/configmap.yaml"))
        if d and d.get("kind") == "ConfigMap"}
conf = maps["graygate-conf"]["graygate.yaml"].replace(" /tmp/graygate", f" {out}/graygate")
conf = conf.replace("/etc/graygate/rules", f"{out}/rules")
open(f"{out}/graygate.yaml", "w").write(conf)
for name, text in maps["graygate-rules"].items():
    text = re.sub(r'"[A-Za-z0-9.-]+\.svc\.cluster\.local:(\d+)"', r'"127.0.0.1:\1"', text)
    open(f"{out}/rules/{name}", "w").write(text)
PY
"${graygate[@]}" check -c "$tmp/k8s/graygate.yaml"

echo "check-deploy: ok"
