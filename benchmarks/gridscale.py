"""Grid scale: 250 sites x 2,000 services every 5 minutes into one central inbound bridge.

    .venv/bin/python benchmarks/gridscale.py [--duration 600] [--warmup 60] [--rate R]
                                             [--sites 250] [--services 2000] [--runs N] [--write-doc]
    .venv/bin/python benchmarks/gridscale.py --ramp [--ramp-rates 1700,2000,2500,3500,5000]
                                             [--step-seconds 60] [--runs N] [--write-doc]
    (--duration 60 for a try; --help for the rest)

One real ActiveMQ and one real Nagios 4 (tests/sandbox) on 127.0.0.1 in a temp dir, stopped by
PID in finally blocks; every wait is bounded. What runs, and why where it differs from a plain
sandbox run (each choice measured on this project's 2-core machine):

- Nagios holds the real grid, not time-compressed: --sites x --services passive services
  (250 x 2,000 = 500,000 on 5,000 hosts, --hosts-per-site 20), from inbound.central_nagios. It
  loads in about 20 s with about 800 MB RSS. Its status.dat would be about 600 MB, so
  status_update_interval is 3600 s (--status-interval) instead of the sandbox's 1 s. Smaller
  --sites/--services/--rate compress the grid; the check interval (services / rate) is printed.
- Nagios's own rate is measured first, against this Nagios: inbound.py's "nagios fifo
  (baseline)", command lines written straight into its FIFO.
- The generator publishes what site bridges publish: routing.build_message with the default
  route, so the WLCG body and the headers (site, nagios_host = the site's Nagios, result_id, ...)
  are a site bridge's own, to the site's topic /topic/grid.probe.metricOutput.EGEE.site.SITEnnn.
  Slot i is site i % sites, then that site's services in order: the round-robin of a check
  interval of services / rate, every site sending rate / sites per second. Every output carries
  "id=<slot> sent=<CLOCK_MONOTONIC just before the SEND>", so lag is read at injection.
  - Frames are written on plain sockets (RawStomp), not through stomp.py: 10 us of CPU per
    SEND against stomp.py's 51 us, and the generator shares the 2 cores with what it measures.
  - The sites share --connections (8) connections: the broker stores one connection's
    persistent SENDs one after another, which capped a single connection at 1-2k/s.
  - --generators processes (default one per 8,000/s: one used 55-80 us of CPU per result).
    A generator more than 1 s behind its schedule makes the run INVALID (in bold, exit code 1).
- The broker forwards every site topic into one queue (a composite topic, as MSG's central
  consumers use virtual topics), which the central bridge consumes. A durable topic subscription
  (--subscription durable, as scripts/demo.py uses) cost the broker 560-1,000 us of CPU per
  result against 250-380 us into a queue (one process sending, under load): with the broker on
  the same 2 cores that CPU would be taken from the bridge. A non-durable subscription would
  keep nothing while the bridge is away, which no central site runs. The broker's heap is 1 GB:
  the sandbox's 256 MB ran out of memory (OutOfMemoryError, dispatch stopped) under a backlog of
  60,000 results.
- The central bridge is `python -m msg_nagios_bridge run` (tests/sandbox/bridge.py) with the
  default prefetch (--prefetch) and writer command_file into the real Nagios. Its policy reads
  Nagios's objects.cache (every grid object; --no-objects-cache: none, as before 2026-12-02). Its echo guard is
  primed with every grid object before it starts, as a central bridge holds it after its first
  check interval (it is kept in the inbound spool across restarts). --cold starts it empty, as
  in a new central bridge's first interval, when every batch holds new objects to save. (Until
  7c60465 each such batch saved the whole guard as one JSON value, 1.4 s at 500,000 objects:
  163 injected/s cold against 724/s primed on the same busy machine.)
- Injected = the result's "EXTERNAL COMMAND: PROCESS_SERVICE_CHECK_RESULT" line in nagios.log
  (Nagios logs it and handles the result in the same call; see inbound.py), followed every 2 ms.
  Lag = that moment - the sent time in the line.
- Backlog = sent - injected, split by where it waits: on the broker (sent, not yet in the
  bridge's inbound spool), in the bridge (spooled, not yet written into the FIFO) and in Nagios
  (written, not yet logged); "written" is the bridge's counter in status.json (<= 2 s old).

Sustained mode: --warmup s (not reported), --duration s timed, then a drain until every sent
result is injected (or --stall-timeout s without progress). Reported: sent and injected rates
(whole window and per minute), lag p50/p90/p99/max of the results sent in the window, CPU (% of
one core) of the bridge, broker, Nagios (core + workers), generators and everything else, CPU
per result, bridge RSS, the backlog, lost (sent, never injected: must be 0) and duplicates.

--ramp: steps of --step-seconds at each of --ramp-rates after a warm-up at half the first. A step
keeps up when over its last quarter the backlog is under 2 s worth of results or at most half a
second's worth above its first quarter's. The ramp stops at the first step that does not; where
its backlog waits (and the CPU figures) say whether the bridge, Nagios or the machine is the limit.
--consumer raw puts benchmarks/raw_central.py in the bridge's place: raw stomp.py with cumulative
acks and the bridge's prefetch, each record turned into a command line written into the FIFO, no
spool, fsync or judging. The same ramp with it is the baseline: a step it keeps up with and the
bridge does not is the bridge's limit; a step neither keeps up with is the broker's, Nagios's or
the machine's.

Repetitions (--runs N): one run loads a 500,000-service Nagios and a broker for minutes, so a
repetition here is a window: each reported step (the sustained window, or each ramp step) is cut
into N equal windows (default: sustained one a minute, at least 3 and at most 10; ramp 3 per
step), and a summary gives per step the median, min and max over its windows of the rates, lag
p50/p99, the bridge's CPU, CPU per result and RSS, and each window's value, with "*" on a window
during which other processes used more than a quarter of a CPU (benchmarks/common.py's
disturbed). The windows share one broker, Nagios and bridge, so they are not independent runs:
for >= 3 of those, run the command 3 times (each prints and writes its code fingerprint: commit,
+dirty, a hash of the package, the date) and quote the median and range of the three reports.
"""
from __future__ import annotations

import argparse
import array
import datetime
import math
import multiprocessing
import os
import platform
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stomp  # noqa: E402

import inbound  # noqa: E402
from common import (REPO, Meter, SpoolWatch, code_fingerprint, fs_type, loadavg, on_cpus,  # noqa: E402
                    rate as rate_of, self_cpu, split_cores, summary_text, system_busy, temp_dir,
                    write_doc_section)
from inbound import COMMAND_LINE, Env, central_nagios, host_name, percentile, service_name  # noqa: E402

from msg_nagios_bridge.config import InboundSettings, Route, Site  # noqa: E402
from msg_nagios_bridge.inbound.echo import EchoGuard  # noqa: E402
from msg_nagios_bridge.model import CheckResult  # noqa: E402
from msg_nagios_bridge.outbound.routing import build_message  # noqa: E402
from msg_nagios_bridge.spool import Spool  # noqa: E402
from tests.sandbox.activemq import ActiveMQ  # noqa: E402
from tests.sandbox.procfs import busiest_thread, cpu_seconds, peak_rss_mb, rss_mb, thread_cpu  # noqa: E402
from tests.sandbox.bridge import Bridge, bridge_config, inbound_config  # noqa: E402
from tests.sandbox.ports import children_of, track  # noqa: E402

SITE_TOPIC = "/topic/grid.probe.metricOutput.EGEE.{role}.{site}"   # the default route's
SITE_TOPICS = "grid.probe.metricOutput.EGEE.site.>"
CENTRAL_QUEUE = "grid.central.inbound"
# --subscription queue: the broker forwards every site topic into one queue (a composite topic,
# as central consumers of MSG use virtual topics), which the central bridge consumes.
FORWARD_XML = f"""    <destinationInterceptors><virtualDestinationInterceptor><virtualDestinations>
      <compositeTopic name="{SITE_TOPICS}" forwardOnly="true">
        <forwardTo><queue physicalName="{CENTRAL_QUEUE}"/></forwardTo></compositeTopic>
    </virtualDestinations></virtualDestinationInterceptor></destinationInterceptors>"""
SUBSCRIPTIONS = {"queue": f"/queue/{CENTRAL_QUEUE}", "durable": f"/topic/{SITE_TOPICS}"}
LINE_RE = re.compile(rb"id=(\d+) sent=(\d+\.\d+)")
BROKER_HEAP = "1G"
RAW_PREFETCH = InboundSettings.prefetch     # the bridge's default, for --consumer raw
BEHIND_LIMIT = 1.0         # s behind schedule that make a generator's figure invalid


# -- the grid ----------------------------------------------------------------------------------

class CentralBroker(ActiveMQ):
    """The sandbox broker with the heap of a central broker: with the sandbox's 256 MB it ran
    out of memory (OutOfMemoryError, then no dispatch) under a backlog of ~60,000 results."""

    def command(self):
        return [f"-Xmx{BROKER_HEAP}" if arg == "-Xmx256M" else arg for arg in super().command()]


class RawCentral(Bridge):
    """--consumer raw or raw-fsync: benchmarks/raw_central.py in the bridge's place (its
    status.json has what the sampler reads), the baseline that says whether a step the bridge
    cannot keep up with is the broker's and Nagios's limit too."""

    def __init__(self, workdir, port, destination, prefetch, fifo, fsync=False):
        super().__init__(workdir, "")
        self.argv = [sys.executable, str(Path(__file__).resolve().parent / "raw_central.py"), str(port),
                     destination, str(prefetch), str(fifo), str(workdir)] + (["--fsync"] if fsync else [])

    def start(self, wait_for=None, timeout=15.0):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO),
                                     start_new_session=True)
        log.close()
        track(self)
        return self


class RawWatch:
    """SpoolWatch's poll for RawCentral: what it took from the broker (it holds nothing)."""

    def __init__(self, consumer):
        self.consumer = consumer

    def poll(self):
        return self.consumer.status().get("counters", {}).get("received", 0), 0, 0

    def close(self):
        pass


class Grid:
    """sites x services per site, hosts_per_site hosts each: slot i -> (site, host, service)."""

    def __init__(self, sites, services, hosts_per_site):
        if services % hosts_per_site:
            raise SystemExit(f"--services {services} is not a multiple of --hosts-per-site "
                             f"{hosts_per_site}")
        self.sites, self.services, self.hosts_per_site = sites, services, hosts_per_site
        self.per_host = services // hosts_per_site

    def slot(self, i):
        site, j = i % self.sites, i // self.sites
        svc = j % self.services
        return site, host_name(site * self.hosts_per_site + svc // self.per_host), \
            service_name(svc % self.per_host)

    def prime_echo_guard(self, spool_path: Path):
        """Save every grid object in the echo guard, as a central bridge that has seen one check
        interval holds it (in its inbound spool, so it survives restarts); returns MB of spool."""
        spool_path.parent.mkdir(parents=True, exist_ok=True)
        spool = Spool(str(spool_path))
        try:
            objects = {self.slot(i)[1:] for i in range(self.sites * self.services)}
            EchoGuard(spool).about_to_inject(CheckResult(host=host, service=service, state=0)
                                             for host, service in objects)
        finally:
            spool.close()
        return spool_path.stat().st_size / 1e6

    def nagios(self, tmp):
        ns = argparse.Namespace(hosts=self.sites * self.hosts_per_site, services=self.per_host)
        return central_nagios(tmp, ns)


class Schedule:
    """Steps of (rate/s, seconds) back to back: slot i is due at ``due(i)`` s after the start."""

    def __init__(self, steps):
        self.steps = steps
        self.first, self.start = [0], [0.0]     # first slot, start time of each step
        for rate, seconds in steps:
            self.first.append(self.first[-1] + int(rate * seconds))
            self.start.append(self.start[-1] + seconds)
        self.total = self.first[-1]

    def step_of(self, i):
        s = 0
        while i >= self.first[s + 1]:
            s += 1
        return s

    def due(self, i, s):
        return self.start[s] + (i - self.first[s]) / self.steps[s][0]


class RawStomp:
    """A bare STOMP 1.2 publisher on a socket: the SEND frames stomp.py would write, for a
    fraction of its CPU (the generator shares the 2 cores with what it measures)."""

    def __init__(self, address):
        self.sock = socket.create_connection(address, timeout=120)
        # As a site bridge does (broker/connection.open_socket): without it each SEND can wait
        # for the broker's delayed ACK of the one before, and the lag measured is the sender's.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(b"CONNECT\naccept-version:1.2\nhost:localhost\nheart-beat:0,0\n\n\0")
        self._expect(b"CONNECTED")

    def send(self, destination, body, headers):
        # Our header values hold no ":", "\\" or newline, so none needs escaping.
        head = "".join(f"{k}:{v}\n" for k, v in headers.items())
        self.sock.sendall(f"SEND\ndestination:{destination}\n{head}content-length:{len(body)}\n\n"
                          .encode() + body + b"\0")

    def close(self):
        """DISCONNECT with a receipt: it comes once the broker handled every frame before it."""
        try:
            self.sock.sendall(b"DISCONNECT\nreceipt:end\n\n\0")
            self._expect(b"RECEIPT")
        finally:
            self.sock.close()

    def _expect(self, command):
        data = b""
        while b"\0" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"the broker closed the connection, expected {command!r}")
            data += chunk
        if not data.lstrip(b"\r\n").startswith(command):
            raise ConnectionError(f"expected {command!r} from the broker, got {data[:300]!r}")


def _generator_main(address, p, nprocs, nconns, grid, steps, tag, persistent, ready, go, start,
                    sent, behind, stop):
    """Child process: send slots p, p + nprocs, ... on schedule, as the sites' bridges would,
    spreading its sites over ``nconns`` connections."""
    sched = Schedule(steps)
    route = Route(name="results", destination=SITE_TOPIC)
    sites = [Site(name=f"SITE{k:03d}", role="site", nagios_name=f"nagios.site{k:03d}.example.org")
             for k in range(grid.sites)]
    conns = [RawStomp(address) for _ in range(nconns)]
    ready.set()
    go.wait(300)
    t0 = start.value
    worst, n, s = 0.0, 0, 0
    try:
        for i in range(p, sched.total, nprocs):
            s = sched.step_of(i) if i >= sched.first[s + 1] else s
            late = time.monotonic() - (t0 + sched.due(i, s))
            if late < -0.002:          # sleep only when 2 ms ahead: fewer wake-ups
                time.sleep(-late)
            elif late > worst:
                worst = behind.value = late
            if n % 1000 == 0 and stop.is_set():
                break
            site, host, service = grid.slot(i)
            now = time.monotonic()
            result = CheckResult(host=host, service=service, state=0,
                                 output=f"OK {tag} id={i} sent={now:.6f}",
                                 long_output="detail: transfer test passed",
                                 perfdata=f"time={(i % 1000) / 1000:.3f}s;5;10 size={i % 4096}B",
                                 timestamp=int(time.time()))
            msg = build_message(route, sites[site], result)
            headers = msg.headers if persistent else {**msg.headers, "persistent": "false"}
            conns[(site // nprocs) % nconns].send(msg.destination, msg.body, headers)
            n += 1
            sent.value = n
    finally:
        for conn in conns:
            conn.close()


class Generators:
    """``nprocs`` spawned generator processes sharing one schedule."""

    def __init__(self, broker, nprocs, nconns, grid, schedule, tag, persistent):
        ctx = multiprocessing.get_context("spawn")
        self.stop_event = ctx.Event()
        self.sent = [ctx.Value("q", 0, lock=False) for _ in range(nprocs)]
        self.behind = [ctx.Value("d", 0.0, lock=False) for _ in range(nprocs)]
        self.nprocs, self.schedule = nprocs, schedule
        ready, go, start = [ctx.Event() for _ in range(nprocs)], ctx.Event(), ctx.Value("d", 0.0)
        self.procs = [ctx.Process(target=_generator_main, name=f"generator-{p}", daemon=True,
                                  args=(broker.stomp_address, p, nprocs, nconns, grid, schedule.steps,
                                        tag, persistent, ready[p], go, start, self.sent[p],
                                        self.behind[p], self.stop_event)) for p in range(nprocs)]
        for proc in self.procs:
            proc.start()
        # The schedule starts once every process is up and connected (slow under load).
        for event in ready:
            if not event.wait(120):
                self.close()
                raise RuntimeError("a generator process did not start and connect within 120 s")
        self.t0 = start.value = time.monotonic() + 0.1
        go.set()

    @property
    def pids(self):
        return [proc.pid for proc in self.procs]

    def count(self):
        return sum(v.value for v in self.sent)

    def worst_behind(self):
        return max(v.value for v in self.behind)

    def alive(self):
        return any(proc.is_alive() for proc in self.procs)

    def sent_ids(self):
        """The slots each process sent (in order, so its first ``sent`` ones)."""
        for p, v in enumerate(self.sent):
            yield from range(p, p + v.value * self.nprocs, self.nprocs)

    def close(self):
        self.stop_event.set()
        for proc in self.procs:
            proc.join(90)
            if proc.is_alive():
                proc.kill()          # our own child, by PID
                proc.join(5)


# -- observing ---------------------------------------------------------------------------------

class InjectTail:
    """Follows nagios.log from its end: per slot the injections seen, the sent time, the lag."""

    def __init__(self, path: Path, tag: str, capacity: int):
        self.handle = open(path, "rb")
        self.handle.seek(0, os.SEEK_END)
        self.tag, self.partial = tag.encode(), b""
        self.lines = self.unique = 0
        self.seen = bytearray(capacity)
        self.sent = array.array("d", [math.nan]) * capacity
        self.lag = array.array("d", [math.nan]) * capacity
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="log-tail", daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.is_set():
            self.poll()
            time.sleep(0.002)
        self.poll()

    def poll(self):
        data = self.handle.read()
        if not data:
            return
        t = time.monotonic()
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            if COMMAND_LINE in line and self.tag in line:
                m = LINE_RE.search(line)
                i = int(m.group(1))
                self.lines += 1
                if self.seen[i] == 0:
                    self.unique += 1
                    self.sent[i] = float(m.group(2))
                    self.lag[i] = t - self.sent[i]
                self.seen[i] = min(255, self.seen[i] + 1)

    def lags(self, t_from, t_to):
        """Sorted lags of the results sent in [t_from, t_to)."""
        return sorted(lag for sent, lag in zip(self.sent, self.lag) if t_from <= sent < t_to)

    def close(self):
        self._stop.set()
        self._thread.join(10)
        self.handle.close()


class Sampler:
    """Once a second: counts, CPU seconds and bridge RSS (rows of dicts)."""

    def __init__(self, gens, tail, watch, bridge, broker, nagios):
        self.gens, self.tail, self.watch = gens, tail, watch
        self.bridge, self.broker, self.nagios = bridge, broker, nagios
        self.rows = []
        self.gen_cpu = {}        # last CPU seen per generator: they exit at the end

    def sample(self):
        spooled, depth, dead = self.watch.poll()
        nagios_pids = [self.nagios.pid] + children_of(self.nagios.pid)
        for pid in self.gens.pids:
            self.gen_cpu[pid] = max(self.gen_cpu.get(pid, 0.0), cpu_seconds(pid))
        row = {"t": time.monotonic(), "sent": self.gens.count(), "spooled": spooled,
               "depth": depth, "dead": dead, "injected": self.tail.unique,
               "lines": self.tail.lines, "bridge": cpu_seconds(self.bridge.pid),
               "rss": rss_mb(self.bridge.pid), "broker": cpu_seconds(self.broker.pid),
               "nagios": sum(cpu_seconds(p, True) for p in nagios_pids),
               "gen": sum(self.gen_cpu.values()), "bench": self_cpu(), "busy": system_busy(),
               "threads": {"broker": thread_cpu(self.broker.pid), "bridge": thread_cpu(self.bridge.pid)}}
        # Where the results not yet injected wait: not yet taken from the broker, in the
        # spool not yet written, written into Nagios's FIFO but not yet handled.
        # The bridge's own count of results written to Nagios is in status.json (<= 2 s old).
        written = self.bridge.status().get("counters", {}).get("written", 0)
        row["backlog"] = row["sent"] - row["injected"]
        row["at_broker"] = row["sent"] - spooled
        row["in_spool"] = max(0, min(spooled - written, spooled - row["injected"]))
        row["in_nagios"] = max(0, min(written, spooled) - row["injected"])
        self.rows.append(row)
        return row

    def rows_in(self, t_from, t_to):
        """The samples inside [t_from, t_to] (sampled every second; at least the last one)."""
        return [r for r in self.rows if t_from - 0.6 <= r["t"] <= t_to + 0.6] or self.rows[-1:]

    def between(self, t_from, t_to):
        rows = self.rows_in(t_from, t_to)
        return rows[0], rows[-1]


def window_stats(sampler, tail, t_from, t_to, lags=True):
    a, b = sampler.between(t_from, t_to)
    dt = max(1e-6, b["t"] - a["t"])
    pct = lambda k: 100 * (b[k] - a[k]) / dt
    cpu = {k: pct(k) for k in ("bridge", "broker", "nagios", "gen", "bench")}
    cpu["other"] = max(0.0, pct("busy") - sum(cpu.values()))
    rss = [r["rss"] for r in sampler.rows if a["t"] <= r["t"] <= b["t"]]
    return {"sent_rate": (b["sent"] - a["sent"]) / dt, "inj_rate": (b["lines"] - a["lines"]) / dt,
            "injected": b["lines"] - a["lines"], "cpu": cpu,
            "lags": tail.lags(t_from, t_to) if lags else [],
            "us": {k: cpu[k] / 100 * dt * 1e6 / max(1, b["lines"] - a["lines"]) for k in cpu},
            "rss": (a["rss"], max(rss or [a["rss"]]), b["rss"]), "start": a, "end": b,
            "busiest": {k: busiest_thread(a["threads"][k], b["threads"][k], dt) for k in ("broker", "bridge")}}


def repetitions(sampler, tail, t_from, t_to, n):
    """[t_from, t_to) cut into ``n`` equal windows: window_stats of each, with the CPU other
    processes used in seconds ("other_cpu" over "window"), as common.disturbed reads them."""
    out, length = [], (t_to - t_from) / n
    for k in range(n):
        st = window_stats(sampler, tail, t_from + k * length, t_from + (k + 1) * length)
        dt = st["end"]["t"] - st["start"]["t"]
        out.append({**st, "other_cpu": st["cpu"]["other"] / 100 * dt, "window": dt})
    return out


def lag_ms(p):
    return lambda r: 1000 * percentile(r["lags"], p) if r["lags"] else None


SUMMARY_FIGURES = [
    ("sent/s", lambda r: r["sent_rate"], ",.0f"),
    ("injected/s", lambda r: r["inj_rate"], ",.0f"),
    ("lag p50 ms", lag_ms(50), ",.0f"),
    ("lag p99 ms", lag_ms(99), ",.0f"),
    ("bridge CPU %", lambda r: r["cpu"]["bridge"], ".0f"),
    ("bridge us/result", lambda r: r["us"]["bridge"], ",.0f"),
    ("bridge RSS MB (max)", lambda r: r["rss"][1], ".0f"),
    ("other CPU %", lambda r: r["cpu"]["other"], ".0f"),
]


def keeps_up(rate, rows):
    """Over the last quarter of the window the backlog (sent - injected) is under 2 s worth,
    or no more than half a second's worth above the first quarter's (means: samples jitter)."""
    quarter = max(1, len(rows) // 4)
    mean = lambda part: sum(r["backlog"] for r in part) / len(part)
    return mean(rows[-quarter:]) <= max(2 * rate, mean(rows[:quarter]) + rate / 2)


def backlog_text(row):
    return f"{row['at_broker']:,} / {row['in_spool']:,} / {row['in_nagios']:,}"


def lag_cells(lags):
    return [f"{percentile(lags, p) * 1000:,.0f}" for p in (50, 90, 99)] + \
        [f"{(lags[-1] if lags else math.nan) * 1000:,.0f}"]


def md_table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


# -- the run -----------------------------------------------------------------------------------

def nagios_baseline(args, tmp, broker, nagios, grid):
    """inbound.py's "nagios fifo (baseline)" against the grid's Nagios."""
    # Its status.dat check would parse a 600 MB file that Nagios writes only hourly here.
    inbound.status_check = lambda *a, **kw: {}
    env = Env(argparse.Namespace(count=args.baseline_count, hosts=grid.sites * grid.hosts_per_site,
                                 services=grid.per_host, run_id=args.run_id, case_timeout=120,
                                 stall_timeout=10), tmp, broker, nagios)
    return inbound.nagios_fifo_case(env, count=args.baseline_count)


def run(args, tmp: Path):
    started = time.monotonic()
    far, near = split_cores(args)
    grid = Grid(args.sites, args.services, args.hosts_per_site)
    if args.ramp:
        rates = [float(r) for r in args.ramp_rates.split(",")]
        # Warm-up at half the first rate: at the full rate the fresh broker (JIT) once let a
        # backlog of 30,000 build, which the first step then carried and did not work off.
        steps = [(rates[0] / 2, args.warmup)] + [(r, args.step_seconds) for r in rates]
    else:
        steps = [(args.rate, args.warmup), (args.rate, args.duration)]
    schedule = Schedule(steps)
    nprocs = args.generators or max(1, math.ceil(max(r for r, _ in steps) / 8000))
    tag = f"grid-{args.run_id}"
    info = {"load_start": loadavg(), "fs": fs_type(tmp)}
    busy0 = system_busy()
    time.sleep(1.0)
    info["busy_start"] = system_busy() - busy0
    broker = CentralBroker(tmp / "activemq", extra_xml=FORWARD_XML if args.subscription == "queue" else "")
    nagios = grid.nagios(tmp)
    nagios.extra_cfg = {"status_update_interval": args.status_interval}
    nagios.start_timeout = 600
    bridge = gens = tail = watch = None
    try:
        with on_cpus(far):
            broker.start()
        t = time.monotonic()
        with on_cpus(near):
            nagios.start()
        info["nagios_start"] = (time.monotonic() - t, nagios.started_in, peak_rss_mb(nagios.pid))
        print(f"ActiveMQ up in {broker.started_in:.1f} s; Nagios with "
              f"{grid.sites * grid.services:,} passive services up in {info['nagios_start'][0]:.1f} s"
              f" (config written and checked, then {nagios.started_in:.1f} s to start), "
              f"RSS {info['nagios_start'][2]:,.0f} MB; temp dir {tmp}", flush=True)
        base = nagios_baseline(args, tmp, broker, nagios, grid)
        info["baseline"] = base
        print(f"Nagios's own rate (FIFO): {rate_of(base):,.0f} results/s"
              + (f" INCOMPLETE {base['incomplete']}" if base.get("incomplete") else ""), flush=True)

        work = tmp / "central-bridge"
        central = inbound_config(nagios, SUBSCRIPTIONS[args.subscription],
                                 durable_name="gridscale" if args.subscription == "durable" else "",
                                 objects_cache=not args.no_objects_cache)
        if args.prefetch:
            central += f"  prefetch: {args.prefetch}\n"
        if args.ack_delay:
            central += f"  ack_delay: {args.ack_delay}\n"
        if args.consumer != "bridge":
            bridge = RawCentral(work, broker.stomp_port, SUBSCRIPTIONS[args.subscription],
                                args.prefetch or RAW_PREFETCH, nagios.command_file,
                                fsync=args.consumer == "raw-fsync")
        else:
            if not args.cold:
                info["primed_mb"] = grid.prime_echo_guard(work / "spool" / "inbound.sqlite")
            bridge = Bridge(work, bridge_config(work, [broker.stomp_port], ocsp=False, inbound=central))
        with on_cpus(near):
            bridge.start()
        deadline = time.monotonic() + 60
        # A durable subscription must exist before the first SEND to a site topic.
        while not bridge.status().get("states", {}).get("subscriber", "").startswith("subscribed"):
            if time.monotonic() > deadline or bridge.proc.poll() is not None:
                raise RuntimeError(f"bridge did not subscribe:\n{bridge.log_text()[-3000:]}")
            time.sleep(0.2)
        # Five idle seconds: what everything costs before the load, and how busy the machine is.
        idle = Meter({"bridge": [bridge.pid], "broker": [broker.pid],
                      "nagios": [nagios.pid] + children_of(nagios.pid)}, detail=True,
                     with_children=("nagios",))
        time.sleep(5.0)
        info["idle"] = idle.stop()
        info["bridge_idle_rss"] = rss_mb(bridge.pid)
        watch = RawWatch(bridge) if args.consumer != "bridge" else SpoolWatch(work / "spool" / "inbound.sqlite")
        tail = InjectTail(nagios.log_file, tag, schedule.total)
        with on_cpus(far):
            gens = Generators(broker, nprocs, max(1, args.connections // nprocs), grid, schedule, tag,
                              not args.non_persistent)
        sampler = Sampler(gens, tail, watch, bridge, broker, nagios)
        if args.split_cores:        # as the kernel has it, not as asked
            cpus = lambda pids: ",".join(sorted({str(c) for pid in pids for c in os.sched_getaffinity(pid)}))  # noqa: E731
            info["far"] = cpus([broker.pid, *gens.pids])
            info["near"] = cpus([bridge.pid, nagios.pid, *children_of(nagios.pid)])
        print(f"{nprocs} generator(s), {schedule.total:,} results over {schedule.start[-1]:.0f} s: "
              + ", ".join(f"{r:,.0f}/s x {d:.0f} s" for r, d in steps), flush=True)
        bounds = [gens.t0 + s for s in schedule.start]
        meters, windows = [], []
        next_print = bounds[1]
        while gens.alive() or time.monotonic() < bounds[-1]:
            if time.monotonic() > bounds[-1] + 120:
                raise RuntimeError("the generators did not finish within 120 s of the schedule's end")
            row = sampler.sample()
            now = row["t"]
            started_steps = sum(1 for b in bounds[1:-1] if now >= b)   # reported steps begun
            while len(meters) < started_steps:
                if meters:
                    windows.append(meters[-1].stop())
                meters.append(Meter({"bridge": [bridge.pid], "broker": [broker.pid],
                                     "nagios": [nagios.pid] + children_of(nagios.pid),
                                     "gen": gens.pids}, detail=True, with_children=("nagios",)))
            if now >= next_print:
                cpu = window_stats(sampler, tail, now - 30, now, lags=False)["cpu"]
                print(f"  t={now - bounds[1]:5.0f} s  sent {row['sent']:,}  injected "
                      f"{row['injected']:,}  backlog broker/spool/nagios {backlog_text(row)}  "
                      f"bridge RSS {row['rss']:.0f} MB  behind {gens.worst_behind():.2f} s  CPU% "
                      + " ".join(f"{k} {v:.0f}" for k, v in cpu.items()), flush=True)
                next_print += 30
            if bridge.proc.poll() is not None:
                raise RuntimeError(f"the bridge exited with {bridge.proc.returncode}:\n"
                                   f"{bridge.log_text()[-3000:]}")
            done = sum(1 for b in bounds[2:] if now >= b)              # reported steps ended
            if args.ramp and done and not gens.stop_event.is_set() and done < len(steps) - 1 \
                    and not keeps_up(steps[done][0], sampler.rows_in(bounds[done], bounds[done + 1])):
                # The first step that falls behind is the answer; more would only add backlog.
                print(f"  step {steps[done][0]:,.0f}/s fell behind: ramp stopped", flush=True)
                gens.stop_event.set()
                bounds = bounds[:done + 2]
            time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
        windows.append(meters[-1].stop())
        t_gen_end = time.monotonic()
        total_sent = gens.count()
        # Drain: until every sent result is in, nothing moved for --stall-timeout s, or at most
        # --drain-timeout s (what is still missing then counts as lost).
        progress, progress_at = -1, time.monotonic()
        while (tail.unique < total_sent and time.monotonic() - progress_at < args.stall_timeout
               and time.monotonic() - t_gen_end < args.drain_timeout):
            row = sampler.sample()
            if row["injected"] != progress:
                progress, progress_at = row["injected"], time.monotonic()
            time.sleep(1.0)
        time.sleep(0.1)                          # the tail thread's last poll
        info["drain_s"] = time.monotonic() - t_gen_end
        info["drained"] = tail.unique >= total_sent
        info["last_row"] = sampler.sample()
        info["meters"] = windows
        info["behind"] = gens.worst_behind()
        info["total_sent"] = total_sent
        info["scheduled"] = schedule.total
        sent_ids = list(gens.sent_ids())
        info["lost"] = [i for i in sent_ids if not tail.seen[i]]
        info["dups"] = sum(c - 1 for c in tail.seen if c > 1)
        info["bridge_hwm"] = peak_rss_mb(bridge.pid)
        info["gens"] = nprocs
        info["gen_exit"] = [proc.exitcode for proc in gens.procs]
        info["rates"] = [r for r, _ in steps[1:]]
        steps = steps[:len(bounds) - 1]
        stats = [window_stats(sampler, tail, bounds[s], bounds[s + 1]) for s in range(1, len(steps))]
        info["bridge_exit"] = bridge.stop()      # it writes its final status.json on the way out
        info["status"] = bridge.status()
        info["elapsed"] = time.monotonic() - started
        return report(args, grid, steps, bounds, sampler, tail, stats, info)
    finally:
        if gens:
            gens.close()
        if tail:
            tail.close()
        if watch:
            watch.close()
        if bridge:
            bridge.stop()
        nagios.stop()
        broker.stop()


# -- report ------------------------------------------------------------------------------------

def report(args, grid, steps, bounds, sampler, tail, stats, info):
    services = grid.sites * grid.services
    nagios_rate = rate_of(info["baseline"])
    rate0 = steps[1][0]
    interval = services / rate0
    invalid = info["behind"] > BEHIND_LIMIT or any(info["gen_exit"])
    lost = info["lost"]
    lines = [
        f"Run {datetime.datetime.now():%Y-%m-%d %H:%M}: `{args.command}`  ",
        f"code {args.code}; {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"stomp.py {stomp.__version__}; temp dir on {info['fs']}.  ",
        f"Machine: load average {info['load_start']} at the start (other processes used "
        f"{info['busy_start']:.2f} CPU s in the second before), {loadavg()} at the end."
        + (f" **Split cores** (--split-cores): the broker and the generators on CPU(s) {info['far']},"
           f" the central {'bridge' if args.consumer == 'bridge' else 'consumer'} and Nagios on {info['near']}"
           " (MSG's brokers and sites are other machines)." if args.split_cores else ""),
        "",
        f"- Grid: {grid.sites} sites x {grid.services:,} services = {services:,} passive services "
        f"({grid.hosts_per_site} hosts x {grid.per_host} services per site) in one Nagios 4.4.6; "
        f"{rate0:,.0f} results/s is a check interval of {interval:,.0f} s"
        + (": the real grid, not time-compressed." if services == 500_000 and abs(interval - 300) < 1
           else " (time-compressed: the real grid is 500,000 services every 300 s).")
        + f" Nagios loaded it in {info['nagios_start'][0]:.0f} s (config written and checked "
          f"included), RSS {info['nagios_start'][2]:,.0f} MB; status_update_interval "
          f"{args.status_interval} s.",
        f"- Nagios's own rate, command lines straight into its FIFO ({info['baseline']['count']:,} "
        f"results): **{nagios_rate:,.0f}/s**.",
        f"- Generator: {info['gens']} process(es), {info['total_sent']:,} of {info['scheduled']:,} "
        f"results sent{' (the ramp stopped at the first step that fell behind)' if len(stats) < len(info['rates']) else ''}"
        f", at most {info['behind'] * 1000:,.0f} ms behind schedule"
        + (f", exit codes {info['gen_exit']}" if any(info["gen_exit"]) else "")
        + (f". **INVALID: the generator fell behind by more than {BEHIND_LIMIT:.0f} s; the rates "
           "below are not the rates asked for.**" if invalid else "."),
        ("- **Central consumer: the raw stomp.py baseline (benchmarks/raw_central.py), not the bridge**:"
         " no spool, no judging, cumulative acks, whole lines into the FIFO"
         + (", each batch appended to a file and fdatasynced before its ack" if args.consumer == "raw-fsync"
            else "") + "; every 'bridge' below is this consumer. " if args.consumer != "bridge" else "")
        + f"- Central bridge: subscribed to {SUBSCRIPTIONS[args.subscription]}"
        + (" (the broker forwards every site topic into it)" if args.subscription == "queue"
           else " (durable)") + f", prefetch {args.prefetch or f'default ({InboundSettings.prefetch})'}, writer "
        f"command_file; its echo guard "
        + (f"primed with all {services:,} objects ({info['primed_mb']:.0f} MB of spool), "
           "as after its first check interval" if "primed_mb" in info else
           "empty at the start (--cold: its first check interval)")
        + ("" if args.no_objects_cache else
           f"; its policy checks every result against Nagios's objects.cache ({services:,} services)")
        + f"; ActiveMQ heap {BROKER_HEAP}; the sites share "
        f"{max(1, args.connections // info['gens']) * info['gens']} STOMP connection(s); messages "
        f"{'NOT ' if args.non_persistent else ''}persistent.",
        "",
    ]
    head = ("window", "sent/s", "injected/s", "lag p50 ms", "p90", "p99", "max",
            "backlog at end: broker / spool / Nagios", "bridge CPU", "bridge RSS MB start/max/end",
            "broker CPU", "Nagios CPU", "generator CPU", "other CPU")
    rows, verdicts = [], []
    for s, st in enumerate(stats, 1):
        rate, cpu, end = steps[s][0], st["cpu"], st["end"]
        verdicts.append((rate, keeps_up(rate, sampler.rows_in(bounds[s], bounds[s + 1])), st))
        rows.append((f"{rate:,.0f}/s x {steps[s][1]:.0f} s", f"{st['sent_rate']:,.0f}",
                     f"{st['inj_rate']:,.0f}", *lag_cells(st["lags"]), backlog_text(end),
                     f"{cpu['bridge']:.0f}%", "{:.0f} / {:.0f} / {:.0f}".format(*st["rss"]),
                     f"{cpu['broker']:.0f}%", f"{cpu['nagios']:.0f}%", f"{cpu['gen']:.0f}%",
                     f"{cpu['other']:.0f}%"))
    lines += [md_table(head, rows), ""]
    head = ("window", "bridge", "broker", "Nagios (core + workers)", "generator")
    lines += ["CPU per injected result (us):", "", md_table(head, [
        (f"{steps[s][0]:,.0f}/s", *(f"{st['us'][k]:,.0f}" for k in ("bridge", "broker", "nagios", "gen")))
        for s, st in enumerate(stats, 1)]), ""]
    head = ("window", "broker's busiest thread", "bridge's busiest thread")
    lines += ["The busiest thread of each (% of a core: a process can be limited by one thread while it "
              "uses less than its cores):", "", md_table(head, [
                  (f"{steps[s][0]:,.0f}/s", *(f"{st['busiest'][k][1]} {st['busiest'][k][0]:.0f}%"
                                              for k in ("broker", "bridge")))
                  for s, st in enumerate(stats, 1)]), ""]
    counters = info["status"].get("counters", {})
    others, window = {}, sum(m["window"] for m in info["meters"])
    for m in info["meters"]:
        for cpu, name in m["other_top"]:
            others[name] = others.get(name, 0.0) + cpu
    top = [f"{name} {100 * cpu / window:.0f}%" for name, cpu in
           sorted(others.items(), key=lambda kv: -kv[1])[:5]]
    lines += [
        (f"- **Lost: {len(lost):,}** of {info['total_sent']:,} sent" if not lost or info["drained"] else
         f"- **Not injected when the drain was given up** ({info['drain_s']:.0f} s after the generator "
         f"stopped; backlog then {backlog_text(info['last_row'])} on the broker / in the bridge / in "
         f"Nagios): **{len(lost):,}** of {info['total_sent']:,} sent")
        + (f" (e.g. ids {lost[:10]})" if lost else "")
        + f"; **duplicates: {info['dups']:,}**; dead letters {info['last_row']['dead']}"
        + (f". The backlog drained {info['drain_s']:.0f} s after the generator stopped." if info["drained"]
           else "."),
        f"- Bridge: peak RSS (VmHWM) {info['bridge_hwm']:.1f} MiB = {info['bridge_hwm'] * 1.048576:.1f} MB"
        f" ({info['bridge_idle_rss']:.1f} MiB idle before the load); counters " + ", ".join(f"{k} {counters.get(k, 0):,}" for k in
                                            ("received", "injected", "duplicates", "refused"))
        + f"; exit code {info['bridge_exit']} on SIGTERM.",
        "- Idle, in the 5 s before the load: " + ", ".join(
            f"{k} {100 * info['idle'][k + '_cpu'] / info['idle']['window']:.0f}%"
            for k in ("bridge", "broker", "nagios", "other")) + " of a core.",
        "- Busiest other processes over the timed windows (not started by this benchmark): "
        + (", ".join(top) or "none") + ".",
        "",
    ]
    if not args.ramp:
        bucket = 60 if args.duration >= 300 else max(10, args.duration // 6)
        head = ("minute" if bucket == 60 else f"{bucket:.0f} s", "sent/s", "injected/s",
                "lag p50 ms", "p90", "p99", "max", "backlog at end: broker / spool / Nagios",
                "bridge CPU", "bridge RSS MB", "broker CPU", "Nagios CPU", "other CPU")
        rows, t = [], bounds[1]
        while t + bucket / 2 < bounds[2]:
            b = window_stats(sampler, tail, t, min(t + bucket, bounds[2]))
            rows.append((f"{(t - bounds[1]) / bucket + 1:.0f}", f"{b['sent_rate']:,.0f}",
                         f"{b['inj_rate']:,.0f}", *lag_cells(b["lags"]), backlog_text(b["end"]),
                         f"{b['cpu']['bridge']:.0f}%", f"{b['end']['rss']:.0f}",
                         f"{b['cpu']['broker']:.0f}%", f"{b['cpu']['nagios']:.0f}%",
                         f"{b['cpu']['other']:.0f}%"))
            t += bucket
        lines += ["Over time (lag of the results sent in each interval):", "", md_table(head, rows), ""]
    runs = args.runs or (3 if args.ramp else max(3, min(10, round(args.duration / 60))))
    cases = {f"{steps[s][0]:,.0f}/s x {steps[s][1]:.0f} s": repetitions(sampler, tail, bounds[s],
                                                                       bounds[s + 1], runs)
             for s in range(1, len(steps))}
    how = (f"each step cut into {runs} equal windows; one broker, Nagios and bridge throughout, so"
           " the windows are not independent runs")
    lines += [f"Per step over {runs} windows (median, min, max, each window; lag of the results sent in"
              " the window):", "", "```", summary_text(cases, SUMMARY_FIGURES, runs, unit="window", how=how),
              "```", ""]
    fail = next((v for v in verdicts if not v[1]), None)
    if fail is None:
        lines.append(f"**Verdict: the bridge kept up at {verdicts[-1][0]:,.0f} results/s**"
                     + (" (every step)." if args.ramp else "."))
    else:
        rate, _, st = fail
        end, cpu = st["end"], st["cpu"]
        where = max(("on the broker", end["at_broker"]), ("in the bridge's spool", end["in_spool"]),
                    ("in Nagios", end["in_nagios"]), key=lambda x: x[1])[0]
        busy = sum(cpu.values())
        broker_top, bridge_top = st["busiest"]["broker"], st["busiest"]["bridge"]
        if args.split_cores:
            far_cpus, near_cpus = (len(info[k].split(",")) for k in ("far", "near"))
            far_busy = (cpu["broker"] + cpu["gen"]) / far_cpus
            near_busy = (cpu["bridge"] + cpu["nagios"]) / near_cpus
            sides = (f"the broker's CPU(s) {info['far']} {far_busy:.0f}% busy (broker {cpu['broker']:.0f}%,"
                     f" generators {cpu['gen']:.0f}% of a core), the bridge's {info['near']} {near_busy:.0f}%"
                     f" (bridge {cpu['bridge']:.0f}%, Nagios {cpu['nagios']:.0f}%)")
        if where == "in Nagios":
            limit = "**Nagios**"
        elif args.split_cores and max(far_busy, near_busy) >= 85:
            side = ("**the broker's side**" if far_busy >= 85 > near_busy else
                    "**the bridge's side**" if near_busy >= 85 > far_busy else "**both sides' CPUs**")
            limit = f"{side}: {sides}"
        elif args.split_cores:
            limit = f"**the bridge**, with CPU to spare on both sides: {sides}"
        elif cpu["bridge"] >= 85:
            limit = f"**the bridge**: it used {cpu['bridge']:.0f}% of a core"
        elif broker_top[0] >= 85:
            limit = (f"**the broker**: its busiest thread ({broker_top[1]}) used {broker_top[0]:.0f}% of a "
                     f"core, the whole broker {cpu['broker']:.0f}%; the bridge {cpu['bridge']:.0f}%, its "
                     f"busiest thread ({bridge_top[1]}) {bridge_top[0]:.0f}%")
        elif busy > 180:
            limit = (f"**the machine's CPU**, not the bridge itself: all processes used {busy:.0f}% "
                     f"of the 2 cores' 200% (other processes {cpu['other']:.0f}%), the bridge only "
                     f"{cpu['bridge']:.0f}% of a core; it waited for CPU and for the broker")
        else:
            limit = (f"**the bridge**, though at {cpu['bridge']:.0f}% of a core and with CPU to spare "
                     f"({busy:.0f}% of 200% used): it waits on the broker (prefetch, acks); the busiest "
                     f"threads: the broker's ({broker_top[1]}) {broker_top[0]:.0f}%, the bridge's "
                     f"({bridge_top[1]}) {bridge_top[0]:.0f}% of a core")
        lines.append(
            f"**Verdict: the central side falls behind at {rate:,.0f} results/s** (sent "
            f"{st['sent_rate']:,.0f}/s, injected {st['inj_rate']:,.0f}/s); the backlog waits {where}. "
            f"The limit is {limit}."
            + ("" if where == "in Nagios" else
               f" Not Nagios: it takes {nagios_rate:,.0f}/s from its FIFO, "
               f"{nagios_rate / max(1.0, st['inj_rate']):.0f}x what it was given, and used "
               f"{cpu['nagios']:.0f}% of a core."))
    if args.ramp and any(v[1] for v in verdicts):
        lines.append(f"Highest step kept up: {max(v[0] for v in verdicts if v[1]):,.0f}/s; highest "
                     f"injection rate in a step: {max(v[2]['inj_rate'] for v in verdicts):,.0f}/s.")
    if invalid:
        lines.append(f"\n**INVALID RUN: the generator fell {info['behind']:.1f} s behind its schedule.**")
    lines += ["", "How measured: sent/s from the generators' counters; injected/s = EXTERNAL COMMAND "
              "lines in nagios.log per second; lag = when that line appeared (polled every 2 ms) - the "
              "CLOCK_MONOTONIC time the generator put into the output just before the SEND, over the "
              "results sent in the window. Backlog: on the broker = sent - stored in the bridge's "
              "inbound spool; spool = stored, not yet written to Nagios; Nagios = written into its "
              "FIFO, not yet logged (\"written\" is the bridge's injected counter from its status.json, "
              "up to 2 s old). CPU: % of one core; Nagios = core + workers; other = every "
              "process not started by this benchmark, and the kernel."]
    text = "\n".join(lines)
    print("\n" + text + f"\n\ntotal run time {info['elapsed']:.0f} s")
    if args.write_doc:
        write_doc("ramp" if args.ramp else "cold" if args.cold else "sustained", text)
    return 1 if invalid or lost else 0


def write_doc(mode, text):
    """Into docs/RELIABILITY.md's gridscale section, one sub-section per mode."""
    path = REPO / "docs" / "RELIABILITY.md"
    if f"<!-- BEGIN gridscale-{mode} -->" not in path.read_text():
        intro = ("`python benchmarks/gridscale.py` (sustained: `--duration 600`) and "
                 "`python benchmarks/gridscale.py --ramp` (the ceiling). A generator publishes "
                 "what 250 site bridges publish (250 sites x 2,000 services every 5 minutes) into "
                 "one broker; one central bridge injects it into one Nagios 4 holding all 500,000 "
                 "services. See the tool's docstring for the method.\n\n")
        subs = "".join(f"### {title}\n\n<!-- BEGIN gridscale-{m} -->\n(not yet measured)\n"
                       f"<!-- END gridscale-{m} -->\n\n"
                       for m, title in (("sustained", "Sustained"), ("ramp", "Ceiling (ramp)"),
                                          ("cold", "First check interval (`--cold`)")))
        write_doc_section(path, "gridscale", intro + subs)
    write_doc_section(path, f"gridscale-{mode}", text)
    print(f"wrote the gridscale-{mode} section of {path}")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600, help="timed window, s")
    parser.add_argument("--warmup", type=float, default=60, help="s before the window, not reported")
    parser.add_argument("--sites", type=int, default=250)
    parser.add_argument("--services", type=int, default=2000, help="services per site")
    parser.add_argument("--hosts-per-site", type=int, default=20)
    parser.add_argument("--rate", type=float, default=None,
                        help="results/s (default: sites x services / 300, a 5-minute interval)")
    parser.add_argument("--runs", type=int, default=0,
                        help="windows each reported step is cut into for the summary, the "
                             "repetitions (default: sustained one a minute, 3-10; ramp 3 a step)")
    parser.add_argument("--ramp", action="store_true", help="step the rate up to find the ceiling")
    parser.add_argument("--ramp-rates", default="1700,2000,2500,3500,5000")
    parser.add_argument("--step-seconds", type=float, default=60)
    parser.add_argument("--generators", type=int, default=0,
                        help="publisher processes (default: one per 8,000 results/s)")
    parser.add_argument("--cold", action="store_true",
                        help="start the bridge with an empty echo guard (its first check interval)")
    parser.add_argument("--no-objects-cache", action="store_true",
                        help="no objects_cache in the bridge's policy (by default it knows all the "
                             "grid's objects, as a central bridge should)")
    parser.add_argument("--connections", type=int, default=8,
                        help="STOMP connections the sites share (over all generator processes)")
    parser.add_argument("--subscription", choices=sorted(SUBSCRIPTIONS), default="queue",
                        help="queue: the site topics forwarded into one queue; durable: a durable "
                             "subscription to the site topics")
    parser.add_argument("--non-persistent", action="store_true",
                        help="send persistent:false (no broker store: more CPU left for the bridge)")
    parser.add_argument("--prefetch", type=int, default=0,
                        help="inbound.prefetch of the bridge (default: the bridge's default)")
    parser.add_argument("--ack-delay", type=float, default=0.0,
                        help="inbound.ack_delay of the bridge (default 0, the bridge's default)")
    parser.add_argument("--consumer", choices=("bridge", "raw", "raw-fsync"), default="bridge",
                        help="raw: benchmarks/raw_central.py (raw stomp.py into the FIFO, no spool "
                             "or judging) in the central bridge's place, the baseline for the ramp; "
                             "raw-fsync: the same, each batch fdatasynced to a file before its ack")
    parser.add_argument("--split-cores", action="store_true",
                        help="the broker and the generators on one half of the CPUs, the central bridge"
                             " (or raw consumer) and Nagios on the other: MSG's brokers and sites are"
                             " other machines (this process stays on all)")
    parser.add_argument("--baseline-count", type=int, default=50000,
                        help="results for Nagios's own FIFO rate")
    parser.add_argument("--status-interval", type=int, default=3600,
                        help="Nagios status_update_interval, s")
    parser.add_argument("--stall-timeout", type=float, default=30,
                        help="end the drain after this many s without progress")
    parser.add_argument("--drain-timeout", type=float, default=900,
                        help="wait at most this many s for the backlog after the generator stopped")
    parser.add_argument("--write-doc", action="store_true",
                        help="write the result into docs/RELIABILITY.md (section gridscale)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()
    if args.runs < 0:
        parser.error("--runs must be at least 1 (or 0: the default)")
    if args.consumer != "bridge" and (args.write_doc or args.subscription == "durable"):
        parser.error("--consumer raw is a baseline: no --write-doc, and only --subscription queue")
    args.rate = args.rate or args.sites * args.services / 300
    args.run_id = uuid.uuid4().hex[:6]
    args.command = "python benchmarks/gridscale.py " + shlex.join(sys.argv[1:])
    return args


def main():
    # SIGTERM (e.g. from timeout) must run the finally blocks that stop what we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse_args()
    args.code = code_fingerprint()      # now: the bridge loads the code as it is at its start
    print(f"code: {args.code}", flush=True)
    with temp_dir("mnb-gridscale-", args.keep) as tmp:
        return run(args, tmp)


if __name__ == "__main__":
    sys.exit(main())
