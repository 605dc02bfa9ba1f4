#!/usr/bin/env python3
"""The soak (make soak): graygate for SOAK_SECONDS (default 600) under steady load and
recurring faults, loopback only, every process bounded and stopped on exit.

    bench/soak.sh                       # or: make soak (installs deps, builds, runs this)
    python3 bench/soak.py --bin target/release/graygate [--seconds 600] [-v]

Load, all the time:
  - HTTP/1.1: wrk, 16 keep-alive connections paced to about 1,500 requests/s, 10,000 uids;
  - HTTP/2: h2load on an h2c listener, 2 connections x 4 streams, 100 requests/s each, in
    30 s rounds;
  - WebSocket: 20 clients through graygate to an echo upstream, a frame a second each;
  - 500 slow clients (four loopback addresses) trickling one header byte a second, each
    reconnecting when closed (limits.header_timeout 5s).
Faults, on a schedule:
  - the rules are rewritten every 10 s (the file watch reloads them);
  - Redis (the assignment store) is killed and restarted every 2 minutes;
  - a canary peer is killed every minute and restarted 20 s later.

Rows (PASS/FAIL, like make faults):
  requests     0 failed requests a client could not have retried (wrk and h2load statuses
               and errors; WebSocket frames not echoed or connections dropped)
  memory       RSS growth under 10% between minute 2 and the end
  descriptors  open file descriptors bounded (the maximum under 4,096, and at the end at most
               1.5x + 50 their count at minute 2)
  slow-clients every slow client closed within header_timeout + 1 s of its connect
  faults       every scheduled fault happened (reloads, Redis restarts, peer flaps) and
               graygate answered throughout
"""

import argparse
import asyncio
import base64
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faults  # noqa: E402  (the fault suite's processes, backends and helpers)
from faults import Env, Load, UIDS, free_port, port_open, wait_until, SLOW_SOURCES  # noqa: E402

HEADER_TIMEOUT = 5.0


def log(*args):
    if faults.VERBOSE:
        print("   ", time.strftime("%H:%M:%S"), *args, flush=True)


# --- a WebSocket echo upstream and clients (RFC 6455, just enough) ---------------------------

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_accept(key):
    import hashlib
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


async def read_frame(reader):
    head = await reader.readexactly(2)
    length = head[1] & 0x7F
    if length == 126:
        length = struct.unpack(">H", await reader.readexactly(2))[0]
    elif length == 127:
        length = struct.unpack(">Q", await reader.readexactly(8))[0]
    mask = await reader.readexactly(4) if head[1] & 0x80 else None
    data = bytearray(await reader.readexactly(length))
    if mask:
        for i in range(len(data)):
            data[i] ^= mask[i % 4]
    return head[0] & 0x0F, bytes(data)


def frame(payload, masked):
    head = bytes([0x81, (0x80 if masked else 0) | len(payload)])
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class WsEcho:
    """An asyncio WebSocket echo server (and /healthz) on its own thread."""

    def __init__(self):
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self.start(), self.loop).result(10)

    async def start(self):
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", self.port)

    async def serve(self, reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            key = re.search(rb"(?i)sec-websocket-key: *(\S+)", head)
            if not key:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                await writer.drain()
                return
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + ws_accept(key.group(1)) + b"\r\n\r\n")
            await writer.drain()
            while True:
                op, data = await read_frame(reader)
                if op == 8:
                    return
                writer.write(frame(data, masked=False))
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


class WsClients:
    """`count` WebSocket clients through graygate, a frame a second each, until `stop_at`."""

    def __init__(self, port, count, stop_at):
        self.port, self.count, self.stop_at = port, count, stop_at
        self.echoed = self.failed = self.connects = 0
        self.problems = []
        self.thread = threading.Thread(target=lambda: asyncio.run(self.main()), daemon=True)
        self.thread.start()

    async def one(self, i):
        while time.monotonic() < self.stop_at:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 5)
            except (OSError, asyncio.TimeoutError) as e:
                self.failed += 1
                self.problems.append(f"ws connect: {e}")
                await asyncio.sleep(1)
                continue
            self.connects += 1
            try:
                key = base64.b64encode(os.urandom(16))
                writer.write(b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                if not head.startswith(b"HTTP/1.1 101"):
                    raise ConnectionError(f"handshake answered {head[:40]!r}")
                n = 0
                while time.monotonic() < self.stop_at:
                    payload = f"c{i}-{n}".encode()
                    writer.write(frame(payload, masked=True))
                    await writer.drain()
                    op, data = await asyncio.wait_for(read_frame(reader), 5)
                    if data != payload:
                        raise ConnectionError(f"echo {data!r} for {payload!r}")
                    self.echoed += 1
                    n += 1
                    await asyncio.sleep(1)
                return
            except (OSError, ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
                self.failed += 1
                self.problems.append(f"ws: {type(e).__name__}: {e}")
            finally:
                writer.close()

    async def main(self):
        await asyncio.gather(*(self.one(i) for i in range(self.count)))

    def join(self):
        self.thread.join(30)


class SlowClients:
    """`count` slow-header connections at all times (reconnecting when closed), from the
    slow loopback addresses; `lifetimes` are connect-to-close seconds. They run in a process
    of their own: in this one the other clients' threads would delay the measurement (an
    event loop late by a second reads a close a second late)."""

    def __init__(self, port, count, stop_at):
        import multiprocessing
        self.port, self.count, self.stop_at = port, count, stop_at
        self.lifetimes = []
        self.still_open_at_end = 0
        self.results, child_end = multiprocessing.Pipe(duplex=False)
        self.proc = multiprocessing.get_context("fork").Process(target=self.run, args=(child_end,), daemon=True)
        self.proc.start()

    def run(self, child_end):
        asyncio.run(self.main())
        child_end.send((self.lifetimes, self.still_open_at_end))

    async def one(self, i):
        source = SLOW_SOURCES[i % len(SLOW_SOURCES)]
        while time.monotonic() < self.stop_at:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(source, 0))
            except OSError:
                await asyncio.sleep(1)
                continue
            started = time.monotonic()
            try:
                writer.write(b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Slow: ")
                await writer.drain()
                while True:
                    if time.monotonic() >= self.stop_at:
                        self.still_open_at_end += 1
                        return
                    try:
                        if await asyncio.wait_for(reader.read(1024), timeout=1) == b"":
                            break
                        break  # an answer (an error page) counts as closing
                    except asyncio.TimeoutError:
                        pass
                    writer.write(b"a")
                    await writer.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                writer.close()
            self.lifetimes.append(time.monotonic() - started)

    async def main(self):
        tasks = []
        for i in range(self.count):
            tasks.append(asyncio.create_task(self.one(i)))
            if i % 100 == 99:
                await asyncio.sleep(0.05)
        await asyncio.gather(*tasks)

    def join(self):
        if self.results.poll(60):
            self.lifetimes, self.still_open_at_end = self.results.recv()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


# --- the run ---------------------------------------------------------------------------------

def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def rules_text(stable, canary, ws_port, tails):
    def peers(ports):
        return "[" + ", ".join(f'"127.0.0.1:{p}"' for p in ports) + "]"
    return f"""versions: {{ stable: {{}}, canary: {{}} }}
default: stable
identity: {{ uid: [header:X-User-Id] }}
services:
  ws:
    hosts: [ws.test]
    groups:
      stable: {{ peers: ["127.0.0.1:{ws_port}"] }}
  web:
    hosts: ["*"]
    groups:
      stable: {{ peers: {peers(stable)}, health_check: {{ type: tcp, interval: 1s, timeout: 500ms }} }}
      canary: {{ peers: {peers(canary)}, health_check: {{ type: tcp, interval: 1s, timeout: 500ms }} }}
rules:
  - {{ name: assigned, version: $assigned }}
  - {{ name: tail, when: {{ uid_tail: {tails} }}, version: canary }}
"""


def h2load_round(port, seconds):
    """One h2load round; (requests done, failed, errored, timeout, non-2xx)."""
    out = subprocess.run(
        ["h2load", "-c", "2", "-m", "4", "--rps", "100", "-D", str(seconds),
         "-H", "X-User-Id: 13", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=seconds + 30).stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not m or not codes:
        return 0, 1, 0, 0, 0, f"h2load printed no summary: {out[-300:]!r}"
    done, failed, errored, timeouts = int(m.group(3)), int(m.group(5)), int(m.group(6)), int(m.group(7))
    non_2xx = int(codes.group(2)) + int(codes.group(3)) + int(codes.group(4))
    return done, failed, errored, timeouts, non_2xx, None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", default=os.path.join(faults.ROOT, "target", "release", "graygate"))
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 600)))
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    faults.VERBOSE = args.verbose
    seconds = args.seconds
    # Bounded: the run ends itself; the alarm is the backstop (make soak adds a timeout too).
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("the soak ran past its deadline")))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.alarm(int(seconds + 180))

    env = Env(args.bin)
    rows = []
    started = time.monotonic()
    try:
        stable = env.nginx_backend("stable")
        canary_1, canary_2 = env.nginx_backend("canary-1"), env.nginx_backend("canary-2")
        ws = WsEcho()
        rport, rproc = env.redis()
        env.redis_cli(rport, [f"SET gray:version:{i} canary" for i in range(0, UIDS, 10)])
        variants = [rules_text([stable.port], [canary_1.port, canary_2.port], ws.port, t) for t in ("[1, 2, 3]", "[4, 5, 6]")]
        h2c_port = free_port()
        gg = env.graygate("gg-soak", variants[0], redis_url=f"redis://127.0.0.1:{rport}/0",
                          extra_conf=f"limits: {{ header_timeout: {HEADER_TIMEOUT:g}s }}")
        # A second listener with h2c, for the HTTP/2 load: the config above has one listener;
        # restart with both (the Graygate helper writes `listen:`, so rewrite its config).
        conf = env.path("gg-soak", "graygate.yaml")
        text = open(conf).read().replace(
            f'listen: ["127.0.0.1:{gg.port}"]',
            f'listeners:\n  - {{ name: http, listen: "127.0.0.1:{gg.port}" }}\n  - {{ name: h2c, listen: "127.0.0.1:{h2c_port}", h2c: true }}')
        env.procs.stop(gg.proc)
        with open(conf, "w") as f:
            f.write(text)
        gg.proc = env.procs.start([env.binary, "run", "-c", conf], gg.log_path,
                                  env={"RUST_LOG": "warn", "GRAYGATE_ADMIN_TOKEN": faults.TOKEN})
        if not wait_until(lambda: gg.alive() and gg.healthz() and port_open(gg.port) and port_open(h2c_port), 20):
            raise RuntimeError(f"graygate did not start with the h2c listener: {gg.log_tail()}")
        pid = gg.proc.pid
        stop_at = time.monotonic() + seconds
        print(f"soak: {seconds:.0f} s, graygate pid {pid}, HTTP/1.1 on {gg.port}, h2c on {h2c_port}", flush=True)

        wrk = Load(env, gg.port, int(seconds), connections=16, paced_ms=10)
        wsc = WsClients(gg.port, 20, stop_at)
        slow = SlowClients(gg.port, 500, stop_at)
        h2 = {"done": 0, "bad": 0, "problems": []}

        def h2_loop():
            while time.monotonic() < stop_at - 5:
                chunk = min(30, max(1, int(stop_at - time.monotonic() - 2)))
                done, failed, errored, timeouts, non_2xx, problem = h2load_round(h2c_port, chunk)
                h2["done"] += done
                bad = failed + errored + timeouts + non_2xx
                h2["bad"] += bad + (1 if problem else 0)
                if bad or problem:
                    h2["problems"].append(problem or f"{failed} failed, {errored} errored, {timeouts} timeouts, {non_2xx} non-2xx")
        h2_thread = threading.Thread(target=h2_loop, daemon=True)
        h2_thread.start()

        samples = []     # (seconds since start, rss KB, fds)
        events = {"reloads": 0, "redis_restarts": 0, "peer_kills": 0, "peer_restarts": 0, "unanswered_probes": 0}
        gen0 = gg.generation()
        t0 = time.monotonic()
        next_reload, next_redis, next_flap, next_sample, restart_peer_at = 10, 120, 60, 0, None
        variant = 0
        while time.monotonic() < stop_at:
            now = time.monotonic() - t0
            if now >= next_sample:
                samples.append((now, rss_kb(pid), fd_count(pid)))
                log(f"t={now:.0f}s rss={samples[-1][1]} KB fds={samples[-1][2]}")
                try:
                    if gg.request("/", {"X-User-Id": "1"}, timeout=5)[0] != 200:
                        events["unanswered_probes"] += 1
                except OSError:
                    events["unanswered_probes"] += 1
                next_sample += 10
            if now >= next_reload:
                variant ^= 1
                gg.write_rules(variants[variant])
                events["reloads"] += 1
                next_reload += 10
            if now >= next_redis:
                env.procs.stop(rproc, signal.SIGKILL)
                time.sleep(1)
                _, rproc = env.redis(rport)
                events["redis_restarts"] += 1
                log("redis restarted")
                next_redis += 120
            if now >= next_flap:
                canary_1.kill()
                events["peer_kills"] += 1
                restart_peer_at = now + 20
                log("canary-1 killed")
                next_flap += 60
            if restart_peer_at is not None and now >= restart_peer_at:
                canary_1.restart()
                events["peer_restarts"] += 1
                restart_peer_at = None
                log("canary-1 restarted")
            time.sleep(0.2)
        samples.append((time.monotonic() - t0, rss_kb(pid), fd_count(pid)))

        r = wrk.result()
        wsc.join()
        slow.join()
        h2_thread.join(60)
        gen_end = gg.generation()

        # --- rows ---
        def row(name, ok, fact):
            rows.append((name, ok, fact))

        ws_problems = "; ".join(sorted(set(wsc.problems))[:3])
        row("requests", r["errors"] == 0 and h2["bad"] == 0 and wsc.failed == 0 and r["requests"] > 0 and h2["done"] > 0,
            f"HTTP/1.1 {Load.describe(r)}; HTTP/2 {h2['done']} requests, {h2['bad']} failed"
            f"{' (' + '; '.join(h2['problems'][:3]) + ')' if h2['problems'] else ''}; "
            f"WebSocket {wsc.echoed} frames echoed over {wsc.connects} connections, {wsc.failed} failures"
            f"{' (' + ws_problems + ')' if ws_problems else ''}")
        base = min(samples, key=lambda s: abs(s[0] - min(120, seconds * 0.2)))
        end = samples[-1]
        growth = (end[1] - base[1]) / base[1]
        row("memory", growth < 0.10,
            f"RSS {base[1] / 1024:.1f} MiB at {base[0]:.0f} s -> {end[1] / 1024:.1f} MiB at {end[0]:.0f} s ({growth * 100:+.1f}%), "
            f"max {max(s[1] for s in samples) / 1024:.1f} MiB")
        max_fds = max(s[2] for s in samples)
        row("descriptors", max_fds < 4096 and end[2] <= base[2] * 1.5 + 50,
            f"{base[2]} open at {base[0]:.0f} s, {end[2]} at the end, max {max_fds}")
        lifetimes = sorted(slow.lifetimes) or [0]
        late = [t for t in lifetimes if t > HEADER_TIMEOUT + 1]
        row("slow-clients", not late and len(slow.lifetimes) > 500,
            f"{len(slow.lifetimes)} slow connections closed after {lifetimes[0]:.2f}-{lifetimes[-1]:.2f} s "
            f"(header_timeout {HEADER_TIMEOUT:g} s, median {lifetimes[len(lifetimes) // 2]:.2f} s); {len(late)} past +1 s; "
            f"{slow.still_open_at_end} open when the soak ended")
        def scheduled(first, period):
            # The schedule's events inside the run (the last may fall on its very end).
            return max(0, len(range(first, int(seconds), period)) - 1)
        ok = (events["reloads"] >= scheduled(10, 10) and gen_end - gen0 >= events["reloads"] * 0.9
              and events["redis_restarts"] >= scheduled(120, 120) and events["peer_kills"] >= scheduled(60, 60)
              and events["unanswered_probes"] == 0 and gg.alive())
        row("faults", ok,
            f"{events['reloads']} rules rewrites -> generation {gen0} -> {gen_end}; {events['redis_restarts']} Redis restarts; "
            f"{events['peer_kills']} canary peer kills, {events['peer_restarts']} restarts; "
            f"{events['unanswered_probes']} unanswered probes; graygate {'alive' if gg.alive() else 'DEAD'}")
    except Exception as e:  # a soak that cannot finish is a failed soak, with the reason
        rows.append(("run", False, f"{type(e).__name__}: {e}"))
    finally:
        env.close()
    signal.alarm(0)
    failed = 0
    for name, ok, fact in rows:
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name:<13} {fact}", flush=True)
    print(f"soak: {failed} row(s) failed, {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
