#!/usr/bin/env python3
"""The fault suite: graygate under failures and hostile clients, one PASS/FAIL line per row.

    bench/faults.sh                  # or: make faults (installs deps, builds, runs this)
    python3 bench/faults.py --bin target/release/graygate [--only corpus] [-v]

Rows (each starts its own graygate, backends and load on free loopback ports):

  redis-restart   Redis killed (SIGKILL) and restarted under load: no request fails, lookups
                  fail open to the next rules while it is down, a new assignment is honoured
                  soon after it is back.
  peer-killed     a canary peer killed (SIGKILL) under load: no request fails, its share goes
                  to the other canary peer, health checks take it out and, once restarted, back.
  reloads         50 reloads (POST /-/reload, rules alternating) under load: every one swaps a
                  new generation, routing follows at once, no request fails.
  invalid-rules   broken rules files under load (POST /-/reload and the file watcher): each is
                  refused with 422, the last good generation keeps serving, no request fails.
  slowloris       many connections (from four loopback addresses) sending one header byte a
                  second: normal clients keep their latency (p99 against a baseline without
                  them), no request fails, graygate closes the slow ones (limits.header_timeout).
  slow-headers    500 slow-header clients under limits.header_timeout 2s: each closed within
                  header_timeout + 1 s of its connect, also on a keep-alive connection after a
                  first request; normal load meanwhile loses nothing.
  client-cap      limits.max_connections_per_client 50: one address's 51st connection onwards
                  is refused (counted), other addresses are served, a slot comes back on close.
  body-limit      limits.max_body_size 1KB and a service's 4KB: 413 with a JSON body, and the
                  upstream (a recording TCP backend) never sees the refused request.
  pooled-peer     the only canary peer killed (SIGKILL) while graygate holds pooled keep-alive
                  connections to it, under canary-only load: 0 failed of at least 2,000
                  requests (retried on a fresh connection, then the default group).
  sighup-burst    SIGHUP during a burst of file events (a write every 50 ms for 3 s): the new
                  rules serve within 1 s of the signal, not after the debounce.
  corpus          malformed and smuggling-style requests against a raw TCP backend that records
                  every byte: per client request the backend sees at most one well-formed
                  request (carrying graygate's X-Graygate-Version, never the client's), graygate
                  answers 400/431 (or 413/414/501/505 where HTTP says so) or forwards a
                  normalised request; after the corpus graygate is alive and /-/healthz answers.

Everything listens on 127.0.0.1 only; every wait has a deadline and the whole run is bounded
by --deadline seconds; every process started here is stopped on exit (also on Ctrl-C).
"""

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import http.client
import json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "faults-admin-token"
UIDS = 10_000
VERBOSE = False


def log(*args):
    if VERBOSE:
        print("   ", *args, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout, interval=0.05):
    """Polls `predicate` until it returns a true value or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception:  # a predicate that raises is "not yet"
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- processes -------------------------------------------------------------------------------

class Procs:
    """Every process this run starts; `stop_all` ends them, by pid."""

    def __init__(self):
        self.procs = []

    def start(self, argv, log_path, env=None):
        out = open(log_path, "ab")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env={**os.environ, **(env or {})})
        out.close()
        self.procs.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM, timeout=5):
        if p.poll() is None:
            try:
                p.send_signal(sig)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            except ProcessLookupError:
                pass

    def stop_all(self):
        for p in reversed(self.procs):
            self.stop(p)
        self.procs = []


class Env:
    """A scratch directory, the processes, and the helpers that start them."""

    def __init__(self, binary):
        self.binary = binary
        self.work = tempfile.mkdtemp(prefix="graygate-faults-")
        self.procs = Procs()

    def close(self):
        self.procs.stop_all()
        shutil.rmtree(self.work, ignore_errors=True)

    def path(self, *parts):
        p = os.path.join(self.work, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def nginx_backend(self, name):
        """A one-process nginx answering `name` (and /healthz); SIGKILL ends it completely."""
        port = free_port()
        conf = self.path(name, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""
worker_processes 1;
master_process off;
daemon off;
pid {self.path(name, 'nginx.pid')};
error_log {self.path(name, 'error.log')} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        keepalive_requests 1000000;
        location /healthz {{ return 200 "ok\\n"; }}
        location / {{ return 200 "{name}\\n"; }}
    }}
}}
""")
        argv = ["nginx", "-c", conf, "-p", self.path(name, "")]
        p = self.procs.start(argv, self.path(name, "stdout.log"))
        if not wait_until(lambda: port_open(port), 10):
            raise RuntimeError(f"nginx backend {name} did not start")
        return Backend(self, name, port, p, argv)

    def redis(self, port=None):
        port = port or free_port()
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.work]
        p = self.procs.start(argv, self.path("redis.log"))
        if not wait_until(lambda: port_open(port), 10):
            raise RuntimeError("redis-server did not start")
        return port, p

    def redis_cli(self, port, commands):
        subprocess.run(["redis-cli", "-p", str(port)], input="\n".join(commands) + "\n",
                       text=True, capture_output=True, timeout=30, check=True)

    def graygate(self, name, rules, redis_url=None, extra_conf=""):
        return Graygate(self, name, rules, redis_url, extra_conf)


class Backend:
    def __init__(self, env, name, port, proc, argv):
        self.env, self.name, self.port, self.proc, self.argv = env, name, port, proc, argv

    def kill(self):
        self.env.procs.stop(self.proc, signal.SIGKILL)

    def restart(self):
        self.proc = self.env.procs.start(self.argv, self.env.path(self.name, "stdout.log"))
        return wait_until(lambda: port_open(self.port), 10)


class Graygate:
    def __init__(self, env, name, rules, redis_url, extra_conf=""):
        self.env, self.name = env, name
        self.port, self.admin_port = free_port(), free_port()
        self.rules_path = env.path(name, "rules", "rules.yaml")
        self.write_rules(rules)
        conf = env.path(name, "graygate.yaml")
        redis = f"redis: {{ url: \"{redis_url}\", lookup_timeout: 20ms, cache_ttl: 1s }}" if redis_url else ""
        with open(conf, "w") as f:
            f.write(f"""listen: ["127.0.0.1:{self.port}"]
admin: {{ listen: "127.0.0.1:{self.admin_port}" }}
rules: rules
access_log: off
server: {{ threads: 1, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1, pid_file: gg.pid, upgrade_sock: gg.sock }}
{redis}
{extra_conf}
""")
        self.log_path = env.path(name, "graygate.log")
        self.proc = env.procs.start([env.binary, "run", "-c", conf], self.log_path,
                                    env={"RUST_LOG": "warn", "GRAYGATE_ADMIN_TOKEN": TOKEN})
        if not wait_until(lambda: self.alive() and self.healthz() and port_open(self.port), 20):
            raise RuntimeError(f"graygate did not start: {self.log_tail()}")

    def write_rules(self, text):
        # Written whole then renamed, as an editor saves: the watcher never reads half a file.
        tmp = self.rules_path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
        os.replace(tmp, self.rules_path)

    def alive(self):
        return self.proc.poll() is None

    def log_tail(self, n=20):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def request(self, path="/", headers=None, port=None, method="GET", timeout=5):
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=timeout)
        try:
            conn.request(method, path, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.read().decode(errors="replace")
        finally:
            conn.close()

    def version_for(self, uid):
        status, body = self.request("/", {"X-User-Id": str(uid)})
        return body.strip() if status == 200 else f"status {status}"

    def healthz(self):
        return self.request("/-/healthz", port=self.admin_port)[0] == 200

    def admin(self, method, path):
        status, body = self.request(path, {"Authorization": f"Bearer {TOKEN}"},
                                    port=self.admin_port, method=method)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def generation(self):
        return self.admin("GET", "/-/rules")[1]["generation"]

    def metric(self, name, **labels):
        """The sum of every series of `name` whose labels include `labels`."""
        _, text = self.request("/metrics", port=self.admin_port)
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name):
                continue
            m = re.match(r'([a-z_]+)(\{[^}]*\})?\s+(\S+)', line)
            if not m or m.group(1) != name:
                continue
            have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(m.group(3))
        return total


# --- load ------------------------------------------------------------------------------------

WRK_SCRIPT = """
local n = 0
local reqs = {}
init = function(args)
    for i = 0, %(uids)d - 1 do reqs[i] = wrk.format("GET", "/", { ["X-User-Id"] = tostring(i) }) end
end
request = function()
    n = (n + 1) %% %(uids)d
    return reqs[n]
end
%(pacing)s
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("RESULT %%d %%d %%d %%d %%d %%d %%d %%.3f %%.3f %%.3f\\n", summary.requests,
        e.status, e.connect, e.read, e.write, e.timeout, e.status + e.connect + e.read + e.write + e.timeout,
        latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
"""


def check_load_survived(row, gg, r):
    """The checks every fault row makes of its background load: it ran, nothing failed, and
    graygate is still alive."""
    row.check(r["requests"] > 1000, f"the load ran only {r['requests']} requests")
    row.check(r["errors"] == 0, f"requests failed: {Load.describe(r)}")
    row.check(gg.alive(), "graygate died")


class Load:
    """wrk in the background for `seconds` against `port`; `result()` waits for its summary."""

    def __init__(self, env, port, seconds, connections=16, paced_ms=None):
        script = env.path("wrk", f"load-{port}-{time.monotonic_ns()}.lua")
        pacing = f"delay = function() return math.random(0, {2 * paced_ms}) end" if paced_ms else ""
        with open(script, "w") as f:
            f.write(WRK_SCRIPT % {"uids": UIDS, "pacing": pacing})
        self.seconds = seconds
        self.proc = subprocess.Popen(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "3s", "-s", script,
             f"http://127.0.0.1:{port}/"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        env.procs.procs.append(self.proc)

    def stop_early(self):
        """Ends the run now (wrk prints its summary on SIGINT)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def result(self):
        out, _ = self.proc.communicate(timeout=self.seconds + 30)
        m = re.search(r"^RESULT (.*)$", out, re.M)
        if not m:
            raise RuntimeError(f"wrk printed no summary:\n{out}")
        f = m.group(1).split()
        r = dict(zip(["requests", "status", "connect", "read", "write", "timeout", "errors"], map(int, f[:7])))
        r.update(zip(["p50", "p99", "max"], map(float, f[7:])))
        return r

    @staticmethod
    def describe(r):
        return (f"{r['requests']} requests, {r['errors']} failed (status {r['status']}, connect {r['connect']}, "
                f"read {r['read']}, write {r['write']}, timeout {r['timeout']}), p99 {r['p99']:.1f} ms, max {r['max']:.1f} ms")


def services(stable, canary):
    def peers(ports):
        return "[" + ", ".join(f'"127.0.0.1:{p}"' for p in ports) + "]"
    return f"""services:
  web:
    hosts: ["*"]
    groups:
      stable: {{ peers: {peers(stable)}, health_check: {{ type: tcp, interval: 1s, timeout: 500ms }} }}
      canary: {{ peers: {peers(canary)}, health_check: {{ type: tcp, interval: 1s, timeout: 500ms }} }}
"""


def tail_rules(stable, canary, tails="[1, 2, 3]", extra_rules=""):
    return f"""versions: {{ stable: {{}}, canary: {{}} }}
default: stable
identity: {{ uid: [header:X-User-Id] }}
{services(stable, canary)}
rules:
{extra_rules}  - {{ name: tail, when: {{ uid_tail: {tails} }}, version: canary }}
"""


class Row:
    def __init__(self, name):
        self.name = name
        self.problems = []
        self.facts = []

    def check(self, ok, problem):
        if not ok:
            self.problems.append(problem)
        return ok

    def fact(self, text):
        self.facts.append(text)


# --- rows ------------------------------------------------------------------------------------

def row_redis_restart(env, row):
    stable, canary = env.nginx_backend("stable"), env.nginx_backend("canary")
    rport, rproc = env.redis()
    env.redis_cli(rport, [f"SET gray:version:{i} canary" for i in range(0, UIDS, 2)])
    gg = env.graygate("gg-redis", f"""versions: {{ stable: {{}}, canary: {{}} }}
default: stable
identity: {{ uid: [header:X-User-Id] }}
{services([stable.port], [canary.port])}
rules:
  - {{ name: assigned, version: $assigned }}
""", redis_url=f"redis://127.0.0.1:{rport}/0")
    row.check(wait_until(lambda: gg.version_for(2) == "canary", 5), "uid 2's stored assignment is not honoured before the fault")
    load = Load(env, gg.port, 14)
    time.sleep(3)
    errors_before = gg.metric("graygate_store_lookups_total", result="error") + gg.metric("graygate_store_lookups_total", result="timeout")
    env.procs.stop(rproc, signal.SIGKILL)
    down_at = time.monotonic()
    # While Redis is down (and the 1 s cache has expired) the lookup fails open: default version.
    fail_open = wait_until(lambda: gg.version_for(2) == "stable", 4)
    row.check(fail_open, "while Redis is down, uid 2 is not served the default version (no fail-open)")
    # Uids never seen (so never cached): each needs a lookup, which must fail at once.
    took = []
    for uid in range(500_000, 500_020):
        started = time.monotonic()
        status, _ = gg.request("/", {"X-User-Id": str(uid)})
        took.append((time.monotonic() - started) * 1e3)
        row.check(status == 200, f"a request while Redis is down answered {status}")
    took.sort()
    row.check(took[10] < 5, f"lookups do not fail at once while Redis is down: median request {took[10]:.1f} ms")
    time.sleep(max(0.0, 4 - (time.monotonic() - down_at)))
    errors_during = gg.metric("graygate_store_lookups_total", result="error") + gg.metric("graygate_store_lookups_total", result="timeout") - errors_before
    row.check(errors_during > 0, "no failed store lookup was counted while Redis was down")
    _, rproc = env.redis(rport)
    back_at = time.monotonic()
    env.redis_cli(rport, ["SET gray:version:77 canary"])
    honoured = wait_until(lambda: gg.version_for(77) == "canary", 10)
    recovered_s = time.monotonic() - back_at
    row.check(honoured, "after Redis came back, uid 77's new assignment is not honoured within 10 s")
    r = load.result()
    check_load_survived(row, gg, r)
    row.check(r["max"] < 1000, f"a request took {r['max']:.0f} ms (lookup_timeout is 20 ms)")
    row.fact(f"Redis down 4 s: {Load.describe(r)}; {errors_during:.0f} lookups failed open "
             f"(uncached uids during the outage: median {took[10]:.1f} ms, max {took[-1]:.1f} ms); a new assignment honoured "
             f"{recovered_s:.2f} s after the restart")


def row_peer_killed(env, row):
    stable = env.nginx_backend("stable")
    c1, c2 = env.nginx_backend("canary-1"), env.nginx_backend("canary-2")
    gg = env.graygate("gg-peer", tail_rules([stable.port], [c1.port, c2.port]))
    seen = {gg.version_for(13) for _ in range(8)}
    row.check(seen == {"canary-1", "canary-2"}, f"uid 13 is not spread over both canary peers: {seen}")
    load = Load(env, gg.port, 12)
    time.sleep(3)
    c1.kill()
    killed_at = time.monotonic()
    label = {"peer": f"127.0.0.1:{c1.port}"}
    out = wait_until(lambda: gg.metric("graygate_upstream_peer_healthy", **label) == 0, 5)
    out_s = time.monotonic() - killed_at
    row.check(out, "the killed peer is not marked unhealthy within 5 s")
    answers = [gg.version_for(13) for _ in range(20)]
    row.check(set(answers) == {"canary-2"}, f"after the kill uid 13 was answered by {set(answers)}")
    time.sleep(2)
    c1.restart()
    back_at = time.monotonic()
    back = wait_until(lambda: gg.metric("graygate_upstream_peer_healthy", **label) == 1, 5)
    row.check(back, "the restarted peer is not healthy again within 5 s")
    back_s = time.monotonic() - back_at
    r = load.result()
    connect_errors = gg.metric("graygate_upstream_errors_total", kind="connect")
    check_load_survived(row, gg, r)
    row.fact(f"{Load.describe(r)}; peer marked down {out_s:.1f} s after SIGKILL and up "
             f"{back_s:.1f} s after its restart; {connect_errors:.0f} refused connects retried")


def row_reloads(env, row, count=50):
    stable, canary = env.nginx_backend("stable"), env.nginx_backend("canary")
    variants = [tail_rules([stable.port], [canary.port], "[1, 2, 3]"),
                tail_rules([stable.port], [canary.port], "[4, 5, 6]")]
    gg = env.graygate("gg-reload", variants[0])
    first = gg.generation()
    ok_before = gg.metric("graygate_rules_reload_total", result="ok")
    load = Load(env, gg.port, 60)
    time.sleep(1)
    swapped = wrong_routing = 0
    started = time.monotonic()
    for i in range(1, count + 1):
        gg.write_rules(variants[i % 2])
        status, body = gg.admin("POST", "/-/reload")
        # The file watcher may reload the saved file first; then this POST finds it unchanged.
        if status == 200 and isinstance(body, dict) and body.get("result") in ("reloaded", "unchanged"):
            if wait_until(lambda: gg.generation() == first + i, 2):
                swapped += 1
        else:
            row.check(False, f"reload {i} answered {status}: {body}")
        want = "canary" if i % 2 else "stable"   # uid 4: canary only under tails [4, 5, 6]
        if gg.version_for(4) != want:
            wrong_routing += 1
        time.sleep(0.1)   # spread the reloads over the load
    reload_s = time.monotonic() - started
    row.check(swapped == count, f"only {swapped} of {count} reloads made a new generation")
    row.check(wrong_routing == 0, f"{wrong_routing} requests right after a reload were routed by the old rules")
    ok_count = gg.metric("graygate_rules_reload_total", result="ok") - ok_before
    time.sleep(1)
    load.stop_early()
    r = load.result()
    check_load_survived(row, gg, r)
    row.fact(f"{count} reloads in {reload_s:.1f} s, generation {first} -> {gg.generation()}, "
             f"{ok_count:.0f} counted ok; {Load.describe(r)}")


INVALID_RULES = [
    ("yaml syntax", "rules: [ { name: x\n"),
    ("binary garbage", b"\x00\xff\xfe\x01versions\x00"),
    ("empty file", ""),
    ("unknown version", None),
    ("bad regex", None),
    ("unknown key", None),
    ("duplicate rule", None),
    ("bad CIDR", None),
    ("weights sum to 0", None),
    ("no group for the default", None),
]


def invalid_variants(stable, canary):
    good = tail_rules([stable], [canary])
    out = []
    for name, text in INVALID_RULES:
        if text is None:
            text = {
                "unknown version": good.replace("version: canary }", "version: gamma }"),
                "bad regex": tail_rules([stable], [canary], extra_rules='  - { name: re, when: { path_regex: "([" }, version: canary }\n'),
                "unknown key": good.replace("when:", "whenn:"),
                "duplicate rule": tail_rules([stable], [canary], extra_rules="  - { name: tail, version: stable }\n"),
                "bad CIDR": tail_rules([stable], [canary], extra_rules="  - { name: net, when: { client_ip: [10.0.0.0/33] }, version: canary }\n"),
                "weights sum to 0": tail_rules([stable], [canary], extra_rules="  - { name: s, split: { by: uid, weights: { canary: 0, stable: 0 } } }\n"),
                "no group for the default": good.replace("      stable: {", "      other: {"),
            }[name]
        out.append((name, text))
    return out


def row_invalid_rules(env, row):
    stable, canary = env.nginx_backend("stable"), env.nginx_backend("canary")
    gg = env.graygate("gg-invalid", tail_rules([stable.port], [canary.port]))
    generation = gg.generation()
    errors_before = gg.metric("graygate_rules_reload_total", result="error")
    load = Load(env, gg.port, 60)
    time.sleep(1)
    variants = invalid_variants(stable.port, canary.port)
    for name, text in variants:
        gg.write_rules(text)
        status, body = gg.admin("POST", "/-/reload")
        row.check(status == 422, f"{name}: POST /-/reload answered {status}, not 422: {body}")
        time.sleep(0.4)   # the watcher's 200 ms of quiet: it reloads (and refuses) the file too
        row.check(gg.generation() == generation, f"{name}: the generation moved")
        row.check(gg.version_for(13) == "canary" and gg.version_for(15) == "stable",
                  f"{name}: routing changed while the broken file was in place")
    refused = gg.metric("graygate_rules_reload_total", result="error") - errors_before
    row.check(refused >= len(variants), f"only {refused:.0f} refused reloads were counted for {len(variants)} broken files")
    gg.write_rules(tail_rules([stable.port], [canary.port], "[1, 2, 3, 9]"))
    status, _ = gg.admin("POST", "/-/reload")
    row.check(wait_until(lambda: gg.generation() == generation + 1, 3), "the repaired file did not load")
    row.check(gg.version_for(19) == "canary", "the repaired rules do not serve")
    time.sleep(1)
    load.stop_early()
    r = load.result()
    check_load_survived(row, gg, r)
    row.fact(f"{len(variants)} broken files refused ({refused:.0f} refusals counted: POST and watcher), "
             f"generation held at {generation}, then the repaired file loaded; {Load.describe(r)}")


SLOW_SOURCES = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]


class Slowloris:
    """`count` connections that send a request line, then one header byte a second, spread
    over `sources` (loopback addresses, so one address's connection cap is not what closes
    them); `lifetimes` holds, per connection graygate closed, seconds from connect to close.
    With `first_request`, each connection first sends a complete request and reads its
    answer (the slow header is then a keep-alive request)."""

    def __init__(self, port, count, seconds, sources=SLOW_SOURCES, first_request=False):
        self.port, self.count, self.seconds, self.sources = port, count, seconds, sources
        self.first_request = first_request
        self.opened = self.closed_by_peer = 0
        self.lifetimes = []
        self.thread = threading.Thread(target=lambda: asyncio.run(self.main()), daemon=True)
        self.thread.start()

    async def one(self, i, stop_at):
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", self.port, local_addr=(self.sources[i % len(self.sources)], 0))
        except OSError:
            return
        self.opened += 1
        started = None
        try:
            if self.first_request:
                writer.write(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                await asyncio.wait_for(reader.readexactly(length), timeout=10)
            started = time.monotonic()
            writer.write(b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Slow: ")
            await writer.drain()
            while time.monotonic() < stop_at:
                try:
                    # Anything graygate sends (an error response) or its closing ends this one.
                    await asyncio.wait_for(reader.read(1024), timeout=1)
                    raise ConnectionError
                except asyncio.TimeoutError:
                    pass
                writer.write(b"a")
                await writer.drain()
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            self.closed_by_peer += 1
            if started is not None:
                self.lifetimes.append(time.monotonic() - started)
        except (asyncio.TimeoutError, AttributeError):
            pass  # the first request was not answered: not a slow-header case
        finally:
            writer.close()

    async def main(self):
        stop_at = time.monotonic() + self.seconds
        tasks = []
        for i in range(self.count):
            tasks.append(asyncio.create_task(self.one(i, stop_at)))
            if i % 100 == 99:
                await asyncio.sleep(0.05)
        await asyncio.gather(*tasks)

    def join(self):
        self.thread.join(self.seconds + 30)


def row_slowloris(env, row, count=1000):
    stable, canary = env.nginx_backend("stable"), env.nginx_backend("canary")
    gg = env.graygate("gg-slow", tail_rules([stable.port], [canary.port]))
    # About 2,000 requests/s from 20 paced connections: latency, not throughput.
    base = Load(env, gg.port, 5, connections=20, paced_ms=10).result()
    slow = Slowloris(gg.port, count, 16)
    wait_until(lambda: slow.opened >= count, 5)
    time.sleep(2)
    during = Load(env, gg.port, 8, connections=20, paced_ms=10).result()
    open_after = slow.opened - slow.closed_by_peer
    slow.join()
    bound = 2 * base["p99"] + 5
    row.check(slow.opened >= count * 0.95, f"only {slow.opened} of {count} slow connections opened")
    row.check(during["errors"] == 0, f"normal requests failed during the attack: {Load.describe(during)}")
    row.check(during["p99"] <= bound, f"p99 went from {base['p99']:.2f} ms to {during['p99']:.2f} ms (bound {bound:.2f} ms)")
    row.check(gg.alive() and gg.healthz(), "graygate died or its health check fails")
    row.check(slow.closed_by_peer >= slow.opened * 0.95,
              f"only {slow.closed_by_peer} of {slow.opened} slow connections closed within 16 s (header_timeout 10 s)")
    row.fact(f"{slow.opened} slow connections: normal p99 {base['p99']:.2f} ms -> {during['p99']:.2f} ms "
             f"(bound 2x + 5 ms), p50 {base['p50']:.2f} -> {during['p50']:.2f} ms, 0 of {during['requests']} failed; "
             f"{slow.closed_by_peer} slow connections closed by graygate within 16 s, {open_after} still open")


def row_slow_headers(env, row, count=500, header_timeout=2.0):
    stable, canary = env.nginx_backend("stable"), env.nginx_backend("canary")
    gg = env.graygate("gg-slow-headers", tail_rules([stable.port], [canary.port]),
                      extra_conf=f"limits: {{ header_timeout: {header_timeout:g}s }}")
    load = Load(env, gg.port, 10, connections=20, paced_ms=10)
    fresh = Slowloris(gg.port, count, 8)
    kept = Slowloris(gg.port, 50, 8, first_request=True)
    fresh.join()
    kept.join()
    r = load.result()
    bound = header_timeout + 1
    for name, slow, n in (("new", fresh, count), ("keep-alive", kept, 50)):
        row.check(slow.opened >= n * 0.95, f"only {slow.opened} of {n} {name} slow connections opened")
        row.check(len(slow.lifetimes) == slow.opened,
                  f"{slow.opened - len(slow.lifetimes)} {name} slow connections were not closed within 8 s")
        late = [t for t in slow.lifetimes if t > bound]
        row.check(not late, f"{len(late)} {name} slow connections lived past header_timeout + 1 s (max {max(late or [0]):.2f} s)")
    closed = gg.metric("graygate_connections_total", result="header_timeout")
    row.check(closed >= (fresh.opened + kept.opened) * 0.95, f"only {closed:.0f} closes counted as header_timeout")
    check_load_survived(row, gg, r)
    every = sorted(fresh.lifetimes + kept.lifetimes) or [0]
    row.fact(f"{fresh.opened} new + {kept.opened} keep-alive slow connections, header_timeout {header_timeout:g} s: "
             f"closed after {every[0]:.2f}-{every[-1]:.2f} s (median {every[len(every) // 2]:.2f} s), "
             f"{closed:.0f} counted; normal load {Load.describe(r)}")


def row_client_cap(env, row, cap=50):
    stable, canary = env.nginx_backend("stable"), env.nginx_backend("canary")
    gg = env.graygate("gg-cap", tail_rules([stable.port], [canary.port]),
                      extra_conf=f"limits: {{ max_connections_per_client: {cap} }}")
    held, refused = [], 0
    for _ in range(cap + 20):
        s = socket.create_connection(("127.0.0.1", gg.port), timeout=5, source_address=("127.0.0.7", 0))
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        try:
            answer = s.recv(1024)
        except OSError:
            answer = b""
        if answer.startswith(b"HTTP/1.1 200"):
            held.append(s)
        else:
            refused += 1
            s.close()
    row.check(len(held) == cap, f"{len(held)} connections of one address admitted (cap {cap})")
    row.check(refused == 20, f"{refused} connections refused (expected 20)")
    counted = gg.metric("graygate_connections_total", result="client_limit")
    row.check(counted == refused, f"{counted:.0f} refusals counted for {refused}")
    other = gg.request("/", {"X-User-Id": "1"})
    row.check(other[0] == 200, f"another address answered {other[0]} while 127.0.0.7 is at its cap")
    held.pop().close()
    def admitted():
        s = socket.create_connection(("127.0.0.1", gg.port), timeout=5, source_address=("127.0.0.7", 0))
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            return s.recv(1024).startswith(b"HTTP/1.1 200")
        except OSError:
            return False
        finally:
            s.close()
    row.check(wait_until(admitted, 5), "no slot came back after a connection closed")
    for s in held:
        s.close()
    row.fact(f"cap {cap}: {len(held) + 1} admitted from 127.0.0.7, {refused} refused and counted, other addresses served, "
             "a closed connection's slot reused")


def row_body_limit(env, row):
    backend = RawBackend()
    try:
        rules = f"""versions: {{ stable: {{}} }}
default: stable
services:
  web: {{ hosts: ["*"], groups: {{ stable: {{ peers: ["127.0.0.1:{backend.port}"] }} }} }}
  upload: {{ hosts: [upload.test], max_body_size: 4KB, groups: {{ stable: {{ peers: ["127.0.0.1:{backend.port}"] }} }} }}
rules: []
"""
        gg = env.graygate("gg-body", rules, extra_conf="limits: { max_body_size: 1KB }")
        def post(host, n):
            conn = http.client.HTTPConnection("127.0.0.1", gg.port, timeout=5)
            try:
                conn.request("POST", "/up", body=b"x" * n, headers={"Host": host})
                r = conn.getresponse()
                return r.status, r.getheader("content-type"), r.read().decode(errors="replace")
            except (OSError, http.client.HTTPException) as e:
                return 0, None, str(e)
            finally:
                conn.close()
        backend.take()
        cases = [("a.test", 2000, 413), ("a.test", 1000, 200), ("upload.test", 3000, 200), ("upload.test", 5000, 413)]
        for host, n, want in cases:
            status, ctype, body = post(host, n)
            row.check(status == want, f"POST {n} bytes to {host}: {status} (expected {want})")
            if want == 413:
                try:
                    error = json.loads(body)
                except ValueError:
                    error = {}
                row.check(ctype == "application/json" and error.get("status") == 413,
                          f"the 413 is not JSON: {ctype} {body[:80]!r}")
        # A 10 MB upload announced by its Content-Length: the answer comes after the first
        # 64 KB, before the rest is sent (graygate closes without reading it: a client that
        # keeps sending regardless may see a reset instead, as with any server that does
        # not linger).
        with socket.create_connection(("127.0.0.1", gg.port), timeout=5) as s:
            s.sendall(b"POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 65536)
            answer = b""
            try:
                while b"\r\n\r\n" not in answer:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
            except OSError:
                pass
        row.check(answer.startswith(b"HTTP/1.1 413"), f"a 10 MB upload answered {answer[:40]!r}")
        backend.settle()
        seen = [e for e in backend.take() if e[0] == "ok"]
        row.check(len(seen) == 2, f"the upstream saw {len(seen)} requests (expected the 2 under the limits)")
        row.fact(f"{len(cases)} POSTs and a 10 MB upload: 413 JSON for 2,000 B and 10 MB (limit 1 KB) and 5,000 B (service limit 4 KB), "
                 f"the upstream saw only the {len(seen)} under the limits")
    finally:
        backend.close()


def row_pooled_peer(env, row):
    stable, canary = env.nginx_backend("stable"), env.nginx_backend("canary")
    # Every uid of the load ends in 3: all canary, one peer; no health check catches it first.
    rules = f"""versions: {{ stable: {{}}, canary: {{}} }}
default: stable
identity: {{ uid: [header:X-User-Id] }}
services:
  web:
    hosts: ["*"]
    groups:
      stable: {{ peers: ["127.0.0.1:{stable.port}"] }}
      canary: {{ peers: ["127.0.0.1:{canary.port}"] }}
rules:
  - {{ name: all, when: {{ uid_tail: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] }}, version: canary }}
"""
    gg = env.graygate("gg-pooled", rules)
    row.check(wait_until(lambda: gg.version_for(3) == "canary", 5), "uid 3 is not served by canary before the kill")
    load = Load(env, gg.port, 8, connections=16)
    time.sleep(3)
    canary.kill()
    r = load.result()
    retried = gg.metric("graygate_retries_total", reason="reused_connection") + gg.metric("graygate_retries_total", reason="reset")
    connect = gg.metric("graygate_retries_total", reason="connect")
    row.check(r["requests"] >= 2000, f"the load ran only {r['requests']} requests")
    if not row.check(r["errors"] == 0, f"requests failed: {Load.describe(r)}"):
        row.fact("graygate's log: " + " | ".join(l for l in gg.log_tail(40).splitlines() if "ERROR" in l)[-1500:])
    row.check(gg.version_for(3) == "stable", "after the kill uid 3 is not served by the default group")
    row.check(gg.alive(), "graygate died")
    row.fact(f"{Load.describe(r)}; after SIGKILL of the only canary peer: {retried:.0f} dead connections retried "
             f"fresh, {connect:.0f} refused connects moved on (to the default group)")


def row_sighup_burst(env, row):
    stable, canary = env.nginx_backend("stable"), env.nginx_backend("canary")
    v1 = tail_rules([stable.port], [canary.port], "[1]")
    v2 = tail_rules([stable.port], [canary.port], "[1, 9]")
    gg = env.graygate("gg-sighup", v1)
    row.check(gg.version_for(19) == "stable", "uid 19 is not stable before the change")
    first = gg.generation()
    stop = threading.Event()
    other = gg.rules_path.replace("rules.yaml", "notes.txt")
    def burst():
        while not stop.is_set():
            with open(other, "w") as f:
                f.write(str(time.monotonic()))   # a file event in the rules directory
            time.sleep(0.05)
    t = threading.Thread(target=burst, daemon=True)
    t.start()
    time.sleep(0.5)
    gg.write_rules(v2)
    gg.proc.send_signal(signal.SIGHUP)
    sent = time.monotonic()
    served = wait_until(lambda: gg.version_for(19) == "canary", 1.0, 0.02)
    took = time.monotonic() - sent
    time.sleep(2.5)
    stop.set()
    t.join(2)
    row.check(served, f"the new rules did not serve within 1 s of SIGHUP during the burst ({took:.2f} s)")
    row.check(gg.generation() > first, "no new generation")
    row.check(gg.alive(), "graygate died")
    row.fact(f"file events every 50 ms for 3 s; SIGHUP 0.5 s in: new rules serving {took * 1000:.0f} ms after the signal "
             f"(generation {first} -> {gg.generation()})")


# --- the malformed-request corpus --------------------------------------------------------------

TCHAR = set(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP/1\.[01]")
OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\nbackend\n"


def parse_request(buf):
    """Strict RFC 9112 parse of one request at the start of `buf`.

    Returns ("incomplete", None, 0), ("ok", info, consumed) or ("bad", info, consumed) where
    info has the request line, the problems found and the X-Graygate-Version values."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if b"\n\n" in buf or b"\r\r" in buf or len(buf) > 4 << 20:
            return "bad", {"line": buf[:80], "problems": ["header section not ended by CRLF CRLF"]}, len(buf)
        return "incomplete", None, 0
    lines = buf[:end].split(b"\r\n")
    problems = []
    info = {"line": lines[0][:120], "problems": problems}
    if any(b"\r" in l or b"\n" in l for l in lines):
        problems.append("bare CR or LF")
    m = REQUEST_LINE.fullmatch(lines[0])
    if not m:
        problems.append("bad request line")
    headers = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            problems.append("obs-fold")
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or any(c not in TCHAR for c in name):
            problems.append(f"bad header name {name[:40]!r}")
            continue
        value = value.strip(b" \t")
        if any((c < 0x20 and c != 0x09) or c == 0x7F for c in value):
            problems.append(f"control character in {name.decode(errors='replace')}")
        headers.append((name.lower(), value))
    info["gg"] = [v for n, v in headers if n == b"x-graygate-version"]
    hosts = [v for n, v in headers if n == b"host"]
    if len(hosts) != 1:
        problems.append(f"{len(hosts)} Host headers")
    te = [v for n, v in headers if n == b"transfer-encoding"]
    cl = [v for n, v in headers if n == b"content-length"]
    body_start = end + 4
    if te and cl:
        problems.append("both Transfer-Encoding and Content-Length")
    if len(cl) > 1:
        problems.append("duplicate Content-Length")
    if problems:
        return "bad", info, len(buf)
    if te:
        codings = [c.strip().lower() for v in te for c in v.split(b",")]
        if codings[-1] != b"chunked":
            problems.append(f"final transfer coding {codings[-1]!r}")
            return "bad", info, len(buf)
        pos = body_start
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return "incomplete", None, 0
            size_text = buf[pos:eol].split(b";")[0]
            if not re.fullmatch(rb"[0-9a-fA-F]{1,16}", size_text):
                problems.append(f"bad chunk size {buf[pos:eol][:20]!r}")
                return "bad", info, len(buf)
            size = int(size_text, 16)
            pos = eol + 2
            if size == 0:
                trailers_end = buf.find(b"\r\n\r\n", pos - 2)
                if trailers_end < 0:
                    return "incomplete", None, 0
                return "ok", info, trailers_end + 4
            if len(buf) < pos + size + 2:
                return "incomplete", None, 0
            if buf[pos + size:pos + size + 2] != b"\r\n":
                problems.append("chunk data not followed by CRLF")
                return "bad", info, len(buf)
            pos += size + 2
    if cl:
        if not re.fullmatch(rb"[0-9]{1,15}", cl[0]):
            problems.append(f"bad Content-Length {cl[0][:30]!r}")
            return "bad", info, len(buf)
        need = body_start + int(cl[0])
        if len(buf) < need:
            return "incomplete", None, 0
        return "ok", info, need
    return "ok", info, body_start


class RawBackend:
    """A TCP backend that parses strictly and records every request (and every bad byte)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.events = []          # (kind, info): kind in ok, bad, incomplete
        self.last_activity = time.monotonic()
        self.stopping = False
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def record(self, kind, info):
        with self.lock:
            self.events.append((kind, info))
            self.last_activity = time.monotonic()

    def serve(self, conn):
        buf = b""
        conn.settimeout(30)
        with conn:
            while not self.stopping:
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                with self.lock:
                    self.last_activity = time.monotonic()
                if not data:
                    if buf:
                        self.record("incomplete", {"line": buf[:80], "problems": [f"{len(buf)} bytes then the connection closed"]})
                    return
                buf += data
                while buf:
                    kind, info, used = parse_request(buf)
                    if kind == "incomplete":
                        break
                    self.record(kind, info)
                    if kind == "bad":
                        return   # a strict server closes on a message it cannot frame
                    buf = buf[used:]
                    try:
                        conn.sendall(OK_RESPONSE)
                    except OSError:
                        return

    def take(self):
        with self.lock:
            events, self.events = self.events, []
        return events

    def settle(self, quiet=0.25, limit=3):
        wait_until(lambda: time.monotonic() - self.last_activity > quiet, limit, 0.05)

    def close(self):
        self.stopping = True
        self.sock.close()


def read_responses(sock, expected, timeout=2.0):
    """Reads up to `expected` + 1 HTTP responses; returns their statuses (and whether the
    connection was closed)."""
    sock.settimeout(0.2)
    buf = b""
    statuses = []
    deadline = time.monotonic() + timeout
    closed = False
    while time.monotonic() < deadline:
        # Parse whatever full responses the buffer holds.
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].decode("latin-1")
            m = re.match(r"HTTP/1\.[01] (\d{3})", head)
            if not m:
                statuses.append(-1)
                buf = b""
                break
            length = re.search(r"(?im)^content-length:\s*(\d+)\s*$", head)
            chunked = re.search(r"(?im)^transfer-encoding:.*chunked", head)
            body_at = end + 4
            if chunked:
                term = buf.find(b"\r\n0\r\n\r\n", body_at - 2)
                if term < 0 and not buf[body_at:].startswith(b"0\r\n\r\n"):
                    break
                used = (term + 7) if term >= 0 else body_at + 5
            else:
                used = body_at + int(length.group(1)) if length else body_at
                if len(buf) < used:
                    break
            statuses.append(int(m.group(1)))
            buf = buf[used:]
        if closed or len(statuses) > expected:
            break
        if len(statuses) == expected:
            # Linger a little: a desynchronised proxy would send one response too many.
            deadline = min(deadline, time.monotonic() + 0.3)
        try:
            data = sock.recv(65536)
            if not data:
                closed = True
            buf += data
        except socket.timeout:
            pass
        except OSError:
            closed = True
    return statuses, closed


def corpus():
    """(name, bytes, client requests): malformed, ambiguous and smuggling-style requests.
    Every request carries `X-Graygate-Version: spoofed`, which must never reach the backend."""
    H = b"Host: example.com\r\nX-User-Id: 13\r\nX-Graygate-Version: spoofed\r\n"
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: example.com\r\n\r\n"
    cases = [
        ("baseline GET", b"GET /ok HTTP/1.1\r\n" + H + b"\r\n", 1),
        ("baseline POST", b"POST /ok HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello", 1),
        ("CL.TE smuggle", b"POST /c HTTP/1.1\r\n" + H + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG" + smuggled[1:], 1),
        ("TE.CL smuggle", b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n", 1),
        ("TE.CL with a request in the chunk", b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n" + b"%x\r\n" % len(smuggled) + smuggled + b"\r\n0\r\n\r\n", 1),
        ("two different Content-Length", b"POST /c HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 1),
        ("two equal Content-Length", b"POST /c HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 1),
        ("Content-Length list, equal", b"POST /c HTTP/1.1\r\n" + H + b"Content-Length: 5, 5\r\n\r\nhello", 1),
        ("Content-Length list, different", b"POST /c HTTP/1.1\r\n" + H + b"Content-Length: 5, 40\r\n\r\nhello" + smuggled, 1),
        ("Content-Length +5", b"POST /c HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello", 1),
        ("Content-Length -1", b"POST /c HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\nhello", 1),
        ("Content-Length hex", b"POST /c HTTP/1.1\r\n" + H + b"Content-Length: 0x5\r\n\r\nhello", 1),
        ("Content-Length 5 5", b"POST /c HTTP/1.1\r\n" + H + b"Content-Length: 5 5\r\n\r\nhello", 1),
        ("Content-Length overflow", b"POST /c HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999999\r\n\r\nhello", 1),
        ("Transfer-Encoding xchunked", b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\nhello", 1),
        ("Transfer-Encoding chunked, identity", b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 1),
        ("two Transfer-Encoding headers", b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 1),
        ("Transfer-Encoding space before colon", b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 1),
        ("Transfer-Encoding tab", b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding:\tchunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 1),
        ("Transfer-Encoding CHUNKED", b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding: CHUNKED\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 1),
        ("Transfer-Encoding obs-fold", b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 1),
        ("obs-fold", b"GET /c HTTP/1.1\r\n" + H + b"X-Folded: a\r\n b\r\n\r\n", 1),
        ("bare CR in a value", b"GET /c HTTP/1.1\r\n" + H + b"X-Foo: a\rb\r\n\r\n", 1),
        ("bare CR ends a line", b"GET /c HTTP/1.1\r\n" + H + b"X-Foo: a\rX-Bar: b\r\n\r\n", 1),
        ("bare LF line ends", b"GET /c HTTP/1.1\nHost: example.com\nX-Graygate-Version: spoofed\n\n", 1),
        ("NUL in a value", b"GET /c HTTP/1.1\r\n" + H + b"X-Foo: a\x00b\r\n\r\n", 1),
        ("control character in a value", b"GET /c HTTP/1.1\r\n" + H + b"X-Foo: a\x01b\x7f\r\n\r\n", 1),
        ("control character in a name", b"GET /c HTTP/1.1\r\n" + H + b"X-F\x01oo: a\r\n\r\n", 1),
        ("space in a name", b"GET /c HTTP/1.1\r\n" + H + b"X Foo: a\r\n\r\n", 1),
        ("empty name", b"GET /c HTTP/1.1\r\n" + H + b": a\r\n\r\n", 1),
        ("non-ASCII name", b"GET /c HTTP/1.1\r\n" + H + b"X-\xc3\x9c: a\r\n\r\n", 1),
        ("obs-text value", b"GET /c HTTP/1.1\r\n" + H + b"X-Foo: \xff\xfe\r\n\r\n", 1),
        ("NUL in the target", b"GET /a\x00b HTTP/1.1\r\n" + H + b"\r\n", 1),
        ("space in the target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 1),
        ("control character in the target", b"GET /a\x01b HTTP/1.1\r\n" + H + b"\r\n", 1),
        ("bad method", b"G(T /c HTTP/1.1\r\n" + H + b"\r\n", 1),
        ("HTTP/1.2", b"GET /c HTTP/1.2\r\n" + H + b"\r\n", 1),
        ("HTTP/9.9", b"GET /c HTTP/9.9\r\n" + H + b"\r\n", 1),
        ("HTTP/1.0 with chunked", b"POST /c HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 1),
        ("no Host", b"GET /c HTTP/1.1\r\nX-Graygate-Version: spoofed\r\n\r\n", 1),
        ("two Host headers", b"GET /c HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nX-Graygate-Version: spoofed\r\n\r\n", 1),
        ("absolute form, other Host", b"GET http://a.example/c HTTP/1.1\r\nHost: b.example\r\nX-Graygate-Version: spoofed\r\n\r\n", 1),
        ("chunk size overflow", b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nhello\r\n0\r\n\r\n", 1),
        ("chunk size not hex", b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 1),
        ("chunk without CRLF", b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n" + smuggled, 1),
        ("chunk extension", b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\n\r\n", 1),
        ("trailer section", b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Graygate-Version: spoofed\r\n\r\n", 1),
        ("pipelined pair", b"GET /p1 HTTP/1.1\r\n" + H + b"\r\nGET /p2 HTTP/1.1\r\n" + H + b"\r\n", 2),
        ("Upgrade then a pipelined request", b"GET /c HTTP/1.1\r\n" + H + b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n" + smuggled, 2),
        ("h2c upgrade", b"GET /c HTTP/1.1\r\n" + H + b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n", 1),
        ("Connection names X-Graygate-Version", b"GET /c HTTP/1.1\r\n" + H + b"Connection: keep-alive, X-Graygate-Version, X-Graygate-Rule\r\n\r\n", 1),
        ("Expect 100-continue", b"POST /c HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello", 1),
        ("leading empty lines", b"\r\n\r\nGET /c HTTP/1.1\r\n" + H + b"\r\n", 1),
        ("huge header value (64 KiB)", b"GET /c HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 65536 + b"\r\n\r\n", 1),
        ("huge header section (2 MiB)", b"GET /c HTTP/1.1\r\n" + H + b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 1000) for i in range(2048)) + b"\r\n", 1),
        ("1,000 headers", b"GET /c HTTP/1.1\r\n" + H + b"".join(b"X-H%d: v\r\n" % i for i in range(1000)) + b"\r\n", 1),
        ("huge target (100 KiB)", b"GET /" + b"a" * 102400 + b" HTTP/1.1\r\n" + H + b"\r\n", 1),
        ("huge Cookie with a uid", b"GET /c HTTP/1.1\r\n" + H + b"Cookie: " + b"; ".join(b"k%d=v" % i for i in range(5000)) + b"; uid=13\r\n\r\n", 1),
        ("TLS ClientHello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(32)) + b"\x00\x00\x02\x13\x01\x01\x00", 1),
        ("random bytes", bytes((i * 37 + 11) % 256 for i in range(512)), 1),
    ]
    return cases


ANSWERS = {400, 413, 414, 431, 501, 505}


def row_corpus(env, row):
    backend = RawBackend()
    try:
        gg = env.graygate("gg-corpus", f"""versions: {{ stable: {{}}, canary: {{}} }}
default: stable
identity: {{ uid: [cookie:uid, header:X-User-Id] }}
services:
  web:
    hosts: ["*"]
    groups:
      stable: {{ peers: ["127.0.0.1:{backend.port}"] }}
      canary: {{ peers: ["127.0.0.1:{backend.port}"] }}
rules:
  - {{ name: tail, when: {{ uid_tail: [1, 2, 3] }}, version: canary }}
""")
        cases = corpus()
        forwarded = refused = aborted = 0
        for name, data, requests in cases:
            backend.take()
            with socket.create_connection(("127.0.0.1", gg.port), timeout=5) as s:
                try:
                    s.sendall(data)
                except OSError:
                    pass   # graygate may close before reading a huge request whole
                statuses, closed = read_responses(s, requests)
            backend.settle()
            events = backend.take()
            seen = [info for kind, info in events if kind == "ok"]
            bad = [info for kind, info in events if kind == "bad"]
            partial = [info for kind, info in events if kind == "incomplete"]
            problems = []
            if bad:
                problems.append("the backend saw a malformed request: " + "; ".join(
                    f"{i['line']!r} ({', '.join(i['problems'])})" for i in bad))
            if len(seen) > requests:
                problems.append(f"the backend saw {len(seen)} requests for {requests}: " + ", ".join(repr(i["line"]) for i in seen))
            for i in seen:
                if i["gg"] not in ([b"stable"], [b"canary"]):
                    problems.append(f"the backend saw {i['line']!r} with X-Graygate-Version {i['gg']}")
                if b"smuggled" in i["line"].lower():
                    problems.append(f"a smuggled request reached the backend: {i['line']!r}")
            if len(statuses) > requests:
                problems.append(f"{len(statuses)} responses for {requests} requests: {statuses}")
            if not seen and not bad:
                if not statuses:
                    problems.append("no answer (connection closed)" if closed else "no answer within 2 s")
                elif statuses[0] not in ANSWERS:
                    problems.append(f"answered {statuses[0]} without forwarding")
            if not gg.alive():
                problems.append("graygate died")
            outcome = (f"forwarded {len(seen)}" if seen else "refused") + f", answered {statuses}" + \
                (f", {len(partial)} aborted upstream" if partial else "")
            forwarded += bool(seen)
            refused += not seen
            aborted += bool(partial)
            log(f"{'FAIL' if problems else 'ok  '} {name}: {outcome}" + ("" if not problems else " -- " + " | ".join(problems)))
            for p in problems:
                row.check(False, f"{name}: {p}")
            if not gg.alive():
                break
        row.check(gg.alive(), "graygate is not running after the corpus")
        row.check(wait_until(gg.healthz, 3), "/-/healthz does not answer after the corpus")
        row.check(gg.version_for(13) == "backend", "a normal request fails after the corpus")
        row.fact(f"{len(cases)} requests: {forwarded} forwarded as one well-formed request, {refused} refused "
                 f"(400/431/...), {aborted} cut short upstream; graygate alive, /-/healthz answers")
    finally:
        backend.close()


ROWS = [
    ("redis-restart", "Redis killed and restarted under load", row_redis_restart),
    ("peer-killed", "a canary peer killed under load", row_peer_killed),
    ("reloads", "50 reloads under load", row_reloads),
    ("invalid-rules", "invalid rules under load", row_invalid_rules),
    ("slowloris", "slow-header clients, normal clients keep their latency", row_slowloris),
    ("slow-headers", "slow headers closed within header_timeout + 1 s", row_slow_headers),
    ("client-cap", "connections per client address capped", row_client_cap),
    ("body-limit", "bodies over max_body_size refused before the upstream", row_body_limit),
    ("pooled-peer", "the only canary peer killed with pooled connections", row_pooled_peer),
    ("sighup-burst", "SIGHUP during a burst of file events", row_sighup_burst),
    ("corpus", "malformed and smuggling-style requests", row_corpus),
]


def main():
    global VERBOSE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "graygate"))
    parser.add_argument("--only", action="append", help="run only these rows (repeatable)")
    parser.add_argument("--deadline", type=float, default=290, help="seconds for the whole run")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    VERBOSE = args.verbose

    def on_alarm(*_):
        raise TimeoutError(f"the fault suite ran past its {args.deadline:.0f} s deadline")
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.alarm(int(args.deadline))

    failed = 0
    started = time.monotonic()
    for key, title, run in ROWS:
        if args.only and key not in args.only:
            continue
        env = Env(args.bin)
        row = Row(key)
        t0 = time.monotonic()
        out_of_time = False
        try:
            run(env, row)
        except TimeoutError as e:
            row.check(False, str(e))
            out_of_time = True
        except Exception as e:  # a row that cannot finish is a failed row, with the reason
            row.check(False, f"{type(e).__name__}: {e}")
        finally:
            env.close()
        ok = not row.problems
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {key:<14} {title} ({time.monotonic() - t0:.0f} s)", flush=True)
        for fact in row.facts:
            print(f"      {fact}", flush=True)
        for problem in row.problems:
            print(f"      problem: {problem}", flush=True)
        if out_of_time:
            break
    signal.alarm(0)
    print(f"fault suite: {failed} row(s) failed, {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
