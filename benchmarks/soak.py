"""Soak: a steady stream through both directions for an hour; RSS, fds and threads must stay flat.

    .venv/bin/python benchmarks/soak.py [--duration 3900] [--rate 200] [--services 2000]
                                        [--reload-every 600] [--rotate-every 180]
                                        [--sample-every 30] [--runs N] [--keep] [--write-doc]

One real ActiveMQ and one real Nagios 4 (tests/sandbox) in a temp dir, on 127.0.0.1 only:

  generator --OCSP FIFO (half)------+
  generator --perfdata file (half)--+--> SITE bridge --> /topic/soak.results --+--> CENTRAL bridge
                                                                               |    --> Nagios cmd FIFO
                                                                               +--> probe (counts ids)

- The generator (a thread here) writes --rate results/s, cycling over --services passive
  services (20 hosts) so the central Nagios's state stays bounded; every round over the services
  gets a new check time, so every result id is distinct. Even-numbered services go through the
  site bridge's OCSP FIFO, in whole lines of <= PIPE_BUF per write() (tests/sandbox/fifo.py's
  write_lines_retrying: a non-blocking open and bounded waits, because the FIFO's reader goes
  away while the site bridge reloads); odd ones are appended to its perfdata file, which is rotated every
  --rotate-every s as Nagios's processing command does (rename to FILE.old, then a new FILE).
- Both bridges subscribe/publish on one topic; the central bridge and the probe hold durable
  subscriptions, so a reload of the central bridge (or a probe reconnect) loses nothing and the
  probe sees every published result once, however the central bridge fares.
- The central bridge injects through Nagios's command FIFO into 2,000 passive services.
  Nagios logs no passive checks or external commands and writes status.dat every 10 s, to keep
  its log and CPU out of the way; at the end status.dat must show every service's last result.
- Every --reload-every s the central bridge gets SIGHUP (15 s after a multiple of 10 min, so a
  sample never falls on it), and the site bridge half a period later. The brief asked for the
  central one only; the site bridge reloads too because its reload re-creates the FIFO reader,
  the perfdata tailer and the publisher, where descriptor leaks would hide (--no-site-reload
  turns that off).
- Every --sample-every s: VmRSS, open fds (/proc/PID/fd), threads and CPU of each bridge
  process, spool depths and counters from its status.json, RSS of the broker and of the Nagios
  core (+ its workers), and the probe's counts, into samples.csv in the temp dir.
- At the end the generator stops, everything drains (bounded by --drain-timeout), and the ids
  are counted: sent, delivered (distinct ids at the probe), lost (sent, never delivered; must be
  0), duplicates; the central bridge's received/injected/duplicates counters; then per bridge:
  RSS at 5 min, 30 min and the end, the least-squares slope of RSS over the last 50 and the
  last 20 min in MB/hour, fd and thread counts min/max after a 5-minute warm-up, and CPU.

Every server is stopped by PID in a finally block; every wait is bounded. The machine's other
load does not matter much here: this measures flatness of memory and descriptors, not speed.

Repetitions (--runs N): an hour is one run, so a repetition here is a window: the load is cut
into N equal windows (default one per 10 minutes, at least 3 and at most 10), and a summary
gives per bridge the median, min and max over the windows of its RSS at the window's end and its
change within the window, fds, threads and CPU per result, and the delivered rate, with each
window's value and "*" on a window during which other processes used more than a quarter of a
CPU (benchmarks/common.py's Meter). The windows follow each other in one world (the first holds
the warm-up), so they are not independent runs: for >= 3 of those, run the soak 3 times (each
prints and writes its code fingerprint: commit, +dirty, a hash of the package, the date) and
quote the median and range of the three.
"""
from __future__ import annotations

import argparse
import collections
import csv
import datetime
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (REPO, Meter, code_fingerprint, loadavg, print_table,  # noqa: E402
                    summary_text, temp_dir, wait_connected, write_doc_section)

from msg_nagios_bridge.cores.nagios import result_line  # noqa: E402
from msg_nagios_bridge.model import CheckResult  # noqa: E402
from tests.sandbox.activemq import ActiveMQ  # noqa: E402
from tests.sandbox.bridge import Bridge, bridge_config, inbound_config, ocsp_records  # noqa: E402
from tests.sandbox.fifo import write_lines_retrying  # noqa: E402
from tests.sandbox.procfs import cpu_seconds, rss_by_kind, rss_fds_threads  # noqa: E402
from tests.sandbox.nagios import Nagios, host, passive_service  # noqa: E402
from tests.sandbox.ports import children_of  # noqa: E402
from tests.sandbox.stomp_probe import StompProbe  # noqa: E402

TOPIC = "/topic/soak.results"
HOSTS = 20
WARMUP = 300.0
SLOPE_WINDOW = 3000.0
# A capped memory (recent ids) fills over the first half hour, then stays: the slope over the
# last 20 min tells a leak from that curve, which a 50-min slope overstates.
RECENT_SLOPE_WINDOW = 1200.0


# -- the generator -----------------------------------------------------------------------------

class Generator(threading.Thread):
    """--rate results/s over ``services`` services: even ones into the FIFO, odd ones appended
    to the perfdata file, which is rotated every ``rotate_every`` s."""

    def __init__(self, fifo, perfdata, rate, services, rotate_every):
        super().__init__(name="generator", daemon=True)
        self.fifo, self.perfdata = Path(fifo), Path(perfdata)
        self.rate, self.services, self.rotate_every = rate, services, rotate_every
        self.stop_flag = threading.Event()
        self.sent = set()                 # result ids written
        self.last = {}                    # (host, service) -> (timestamp, output) last written
        self.counts = collections.Counter()
        self.failure = None
        self.stamp = 0
        self.lock = threading.Lock()

    def result(self, n):
        rnd, i = divmod(n, self.services)
        if i == 0:
            self.stamp = max(int(time.time()), self.stamp + 1)
        return CheckResult(host=f"wn{i % HOSTS:03d}.soak.example.org", service=f"soak-{i:04d}",
                           state=(i + rnd) % 4, output=f"round {rnd} service {i}",
                           perfdata=f"round={rnd} i={i}", timestamp=self.stamp), i % 2 == 0

    def run(self):
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported by the main loop
            self.failure = f"{type(exc).__name__}: {exc}"

    def _run(self):
        t0 = last_rotation = time.monotonic()
        n = 0
        while not self.stop_flag.is_set():
            tick = time.monotonic()
            due = int((tick - t0) * self.rate)
            to_fifo, to_file = [], []
            while n < due:
                result, via_fifo = self.result(n)
                line = result_line.format_line(result) + "\n"
                (to_fifo if via_fifo else to_file).append((line.encode(), result))
                n += 1
            if to_file:
                with open(self.perfdata, "ab") as handle:      # open, append, close: as Nagios
                    handle.write(b"".join(line for line, _ in to_file))
            if to_fifo:
                self.counts["fifo_retries"] += write_lines_retrying(self.fifo, ocsp_records(self.fifo, [line for line, _ in to_fifo]))
            with self.lock:
                for line, result in to_fifo + to_file:
                    self.sent.add(result_line.parse(line.decode().rstrip("\n")).identity())
                    self.last[(result.host, result.service)] = (int(result.timestamp), result.output)
            self.counts["fifo"] += len(to_fifo)
            self.counts["perfdata"] += len(to_file)
            if self.rotate_every and tick - last_rotation >= self.rotate_every:
                # Nagios closes the file, runs `mv -f FILE FILE.old`, opens a new FILE.
                os.replace(self.perfdata, str(self.perfdata) + ".old")
                self.counts["rotations"] += 1
                last_rotation = tick
            self.stop_flag.wait(max(0.0, 0.1 - (time.monotonic() - tick)))

    def sent_ids(self):
        with self.lock:
            return set(self.sent)


class IdProbe(StompProbe):
    """A StompProbe that only counts ``result_id`` headers (an hour of frames would not fit)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ids = collections.Counter()

    def on_message(self, frame):
        with self._cond:
            self.ids[frame.headers.get("result_id")] += 1

    def counts(self):
        with self._cond:
            return sum(self.ids.values()), len(self.ids)

    def reconnect_if_needed(self):
        if self.conn is not None and self.conn.is_connected():
            return False
        self.close()
        self.start()
        return True


# -- analysis ----------------------------------------------------------------------------------

def slope_per_hour(points):
    """Least-squares slope of [(t s, value)] in value per hour; NaN with < 3 points."""
    points = [(t, v) for t, v in points if v == v]
    if len(points) < 3:
        return float("nan")
    mt = sum(t for t, _ in points) / len(points)
    mv = sum(v for _, v in points) / len(points)
    var = sum((t - mt) ** 2 for t, _ in points)
    return 3600 * sum((t - mt) * (v - mv) for t, v in points) / var if var else float("nan")


def at(samples, t, key):
    """The value of ``key`` in the sample nearest to ``t`` s (None if the run was shorter)."""
    if not samples or samples[-1]["t"] < t - 30:
        return None
    return min(samples, key=lambda s: abs(s["t"] - t))[key]


def window_result(start, end, meter):
    """Both bridges' figures over a window ({"site_rss": ...}), from the samples at its
    ``start`` and ``end`` and the window's Meter (whose "other_cpu" and "window" mark a disturbed
    one)."""
    out = dict(meter)
    for bridge, counter in WORK_COUNTER.items():
        done = end[counter] - start[counter]
        out.update({f"{bridge}_rss": end[f"{bridge}_rss_mb"],
                    f"{bridge}_rss_change": end[f"{bridge}_rss_mb"] - start[f"{bridge}_rss_mb"],
                    f"{bridge}_fds": end[f"{bridge}_fds"], f"{bridge}_threads": end[f"{bridge}_threads"],
                    f"{bridge}_us": 1e6 * meter[f"{bridge}_cpu"] / done if done > 0 else None,
                    f"{bridge}_rate": done / max(1e-6, end["t"] - start["t"])})
    return out


# The sample's column counting a bridge's work (from its status.json, up to a few seconds old).
WORK_COUNTER = {"site": "published", "central": "central_injected"}
SUMMARY_FIGURES = [
    (f"{bridge} {label}", lambda r, key=f"{bridge}_{key}": r[key], form)
    for bridge in WORK_COUNTER
    for label, key, form in (("results/s", "rate", ",.0f"), ("RSS MB at the end", "rss", ".1f"),
                             ("RSS change MB", "rss_change", "+.1f"), ("fds at the end", "fds", "d"),
                             ("threads at the end", "threads", "d"), ("CPU us/result", "us", ",.0f"))]


def fmt(x, digits=1):
    if x is None:
        return "-"
    if isinstance(x, float):
        return "nan" if x != x else f"{x:.{digits}f}"
    return str(x)


# -- the run -----------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=3900, help="seconds of steady load")
    ap.add_argument("--rate", type=float, default=200, help="results/s, half FIFO, half perfdata")
    ap.add_argument("--services", type=int, default=2000)
    ap.add_argument("--sample-every", type=float, default=30)
    ap.add_argument("--reload-every", type=float, default=600, help="SIGHUP period; 0: never")
    ap.add_argument("--no-site-reload", action="store_true", help="reload only the central bridge")
    ap.add_argument("--rotate-every", type=float, default=180, help="perfdata rotation period")
    ap.add_argument("--drain-timeout", type=float, default=300)
    ap.add_argument("--runs", type=int, default=0,
                    help="windows the load is cut into for the summary, the repetitions "
                         "(default: one per 10 minutes, 3-10)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (samples.csv, logs)")
    ap.add_argument("--write-doc", action="store_true", help="write the soak section of docs/RELIABILITY.md")
    args = ap.parse_args()
    if args.runs < 0:
        ap.error("--runs must be at least 1 (or 0: the default)")
    args.runs = args.runs or max(3, min(10, round(args.duration / 600)))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))    # run the finally blocks
    command = "python benchmarks/soak.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    started = datetime.datetime.now().astimezone()
    args.code = code_fingerprint()      # now: the bridges load the code as it is at their start
    print(f"code: {args.code}", flush=True)
    with temp_dir("soak-", args.keep) as tmp:
        code = run(args, tmp, command, started)
    sys.exit(code)


def run(args, tmp, command, started):
    broker = ActiveMQ(tmp / "activemq")
    services = [(f"wn{i % HOSTS:03d}.soak.example.org", f"soak-{i:04d}") for i in range(args.services)]
    nagios = Nagios(tmp / "nagios", hosts=[host(h) for h in sorted({h for h, _ in services})],
                    services=[passive_service(h, s) for h, s in services],
                    extra_cfg={"status_update_interval": 10, "log_passive_checks": 0,
                               "log_external_commands": 0})
    central = site = probe = gen = None
    csv_path = tmp / "samples.csv"
    samples = []
    try:
        broker.start()
        nagios.start()
        print(f"broker pid {broker.pid} (stomp {broker.stomp_port}), nagios pid {nagios.pid}, dir {tmp}")
        central = Bridge(tmp / "central", bridge_config(
            tmp / "central", [broker.stomp_port], ocsp=False, site="SOAK.CENTRAL",
            inbound=inbound_config(nagios, TOPIC, durable_name="central")))
        central.start()
        wait_connected(central)
        deadline = time.monotonic() + 30
        while not central.status().get("states", {}).get("subscriber", "").startswith("subscribed"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"central bridge did not subscribe:\n{central.log_text()[-3000:]}")
            time.sleep(0.2)
        probe = IdProbe(broker, TOPIC, client_id="soak-probe", durable_name="soak-probe").start()
        site = Bridge(tmp / "site", bridge_config(tmp / "site", [broker.stomp_port], ocsp=True,
                                                  perfdata=True, destination=TOPIC, site="SOAK.SITE"))
        site.start(wait_for=site.workdir / "ocsp.fifo")
        wait_connected(site)
        print(f"site bridge pid {site.pid}, central bridge pid {central.pid}")

        gen = Generator(site.workdir / "ocsp.fifo", site.workdir / "service-perfdata",
                        args.rate, args.services, args.rotate_every)
        bridges = {"site": site, "central": central}
        columns = ["t", "phase"] + [f"{b}_{k}" for b in bridges for k in
                                    ("rss_mb", "fds", "threads", "cpu_s", "spool_depth")] + [
            "site_heap_mb", "site_thread_arenas_mb", "site_anon_mb", "site_file_mb",
            "broker_rss_mb", "nagios_rss_mb", "nagios_workers_rss_mb", "sent", "published",
            "probe_frames", "probe_distinct", "central_received", "central_injected",
            "central_duplicates", "site_reloads", "central_reloads", "load"]
        out = open(csv_path, "w", newline="")
        writer = csv.DictWriter(out, columns)
        writer.writeheader()

        def sample(t, phase, keep=True):
            row = {"t": round(t, 1), "phase": phase}
            for name, bridge in bridges.items():
                rss, fds, threads = rss_fds_threads(bridge.pid)
                status = bridge.status()
                spool = status.get("spool" if name == "site" else "inbound_spool", {})
                row.update({f"{name}_rss_mb": round(rss, 2), f"{name}_fds": fds,
                            f"{name}_threads": threads, f"{name}_cpu_s": cpu_seconds(bridge.pid),
                            f"{name}_spool_depth": spool.get("depth")})
            # Where the site bridge's memory lives, to tell a Python-level leak (anon: object
            # arenas) from malloc fragmentation (heap, thread arenas).
            row.update({f"site_{k}_mb": v for k, v in rss_by_kind(site.pid).items()})
            row["broker_rss_mb"] = round(rss_fds_threads(broker.pid)[0], 1)
            row["nagios_rss_mb"] = round(rss_fds_threads(nagios.pid)[0], 1)
            row["nagios_workers_rss_mb"] = round(sum(rss_fds_threads(p)[0] for p in children_of(nagios.pid)), 1)
            frames, distinct = probe.counts()
            sc, cc = site.status().get("counters", {}), central.status().get("counters", {})
            row.update(sent=len(gen.sent), published=sc.get("published", 0), probe_frames=frames,
                       probe_distinct=distinct, central_received=cc.get("received", 0),
                       central_injected=cc.get("injected", 0),
                       central_duplicates=cc.get("duplicates", 0),
                       site_reloads=sc.get("reloads", 0), central_reloads=cc.get("reloads", 0),
                       load=loadavg())
            if keep:
                samples.append(row)
                writer.writerow(row)
                out.flush()
            return row

        def meter():
            return Meter({"site": [site.pid], "central": [central.pid], "broker": [broker.pid],
                          "nagios": [nagios.pid] + children_of(nagios.pid)}, with_children=("nagios",))

        t0 = time.monotonic()
        cpu0 = {name: cpu_seconds(b.pid) for name, b in bridges.items()}
        window_start, window_meter = sample(0.0, "window", keep=False), meter()
        windows = []
        window_ends = [args.duration * k / args.runs for k in range(1, args.runs + 1)]
        gen.start()
        next_sample = 0.0
        reloads = []
        if args.reload_every:
            k = 1
            while k * args.reload_every / 2 + 15 < args.duration:
                who = "central" if k % 2 == 0 else "site"
                if who == "central" or not args.no_site_reload:
                    reloads.append((k * args.reload_every / 2 + 15, who))
                k += 1
        print(f"samples -> {csv_path}")
        print(f"reloads at {', '.join(f'{t:.0f}s {w}' for t, w in reloads) or 'none'}")
        while True:
            now = time.monotonic() - t0
            if gen.failure or not gen.is_alive():
                raise RuntimeError(f"generator stopped: {gen.failure}")
            for name, bridge in bridges.items():
                if bridge.proc.poll() is not None:
                    raise RuntimeError(f"{name} bridge exited with {bridge.proc.returncode}:\n"
                                       f"{bridge.log_text()[-3000:]}")
            if reloads and now >= reloads[0][0]:
                who = reloads.pop(0)[1]
                bridges[who].signal(signal.SIGHUP)
                print(f"[{now:6.0f}s] SIGHUP {who}")
            if now >= next_sample:
                if probe.reconnect_if_needed():
                    print(f"[{now:6.0f}s] probe reconnected")
                row = sample(now, "run")
                print(f"[{now:6.0f}s] site rss {row['site_rss_mb']:.1f} MB (anon "
                      f"{row.get('site_anon_mb', 0):.1f}, heap {row.get('site_heap_mb', 0):.1f}, "
                      f"arenas {row.get('site_thread_arenas_mb', 0):.1f}) fds {row['site_fds']} "
                      f"thr {row['site_threads']} depth {row['site_spool_depth']} | central rss "
                      f"{row['central_rss_mb']:.1f} MB fds {row['central_fds']} thr "
                      f"{row['central_threads']} depth {row['central_spool_depth']} | sent "
                      f"{row['sent']} probe {row['probe_distinct']} injected "
                      f"{row['central_injected']} | load {row['load']}", flush=True)
                next_sample += args.sample_every
            if window_ends and now >= window_ends[0]:
                window_ends.pop(0)
                end, cpu = sample(now, "window", keep=False), window_meter.stop()
                windows.append(window_result(window_start, end, cpu))
                window_start, window_meter = end, meter()
            if now >= args.duration:
                break
            time.sleep(min(1.0, max(0.05, min(next_sample, reloads[0][0] if reloads else 1e9,
                                              window_ends[0] if window_ends else 1e9) - now)))

        # -- drain -------------------------------------------------------------------------
        gen.stop_flag.set()
        gen.join(90)
        if gen.is_alive() or gen.failure:
            raise RuntimeError(f"generator did not stop cleanly: {gen.failure}")
        run_seconds = time.monotonic() - t0
        sent = gen.sent_ids()
        print(f"generator stopped after {run_seconds:.0f} s: {len(sent)} sent "
              f"({gen.counts['fifo']} FIFO, {gen.counts['perfdata']} perfdata, "
              f"{gen.counts['rotations']} rotations, {gen.counts['fifo_retries']} FIFO retries); draining")
        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline:
            probe.reconnect_if_needed()
            with probe._cond:
                missing = sum(1 for i in sent if i not in probe.ids)
            cst = central.status()
            if not missing and cst.get("inbound_spool", {}).get("depth", 1) == 0 and \
                    cst.get("counters", {}).get("received", 0) >= len(sent):
                break
            time.sleep(1)
        time.sleep(3)                                  # late duplicates, a fresh status.json
        final = sample(time.monotonic() - t0, "drained")
        cpu = {name: cpu_seconds(b.pid) - cpu0[name] for name, b in bridges.items()}

        # Nagios: every service shows the last result written for it.
        deadline = time.monotonic() + 60
        while True:
            status = nagios.status()
            stale = [key for key, (stamp, output) in gen.last.items()
                     if (status.get(key) or {}).get("plugin_output") != output
                     or (status.get(key) or {}).get("last_check") != str(stamp)]
            if not stale or time.monotonic() > deadline:
                break
            time.sleep(2)

        # -- report --------------------------------------------------------------------------
        with probe._cond:
            ids = dict(probe.ids)
        delivered = sum(1 for i in sent if i in ids)
        lost = len(sent) - delivered
        foreign = sum(1 for i in ids if i not in sent)
        duplicates = sum(n - 1 for n in ids.values())
        counters = {name: b.status().get("counters", {}) for name, b in bridges.items()}
        table = []
        end_t = samples[-1]["t"]
        after_warmup = [s for s in samples if s["t"] >= WARMUP] if end_t >= 2 * WARMUP else samples
        window = [s for s in samples if s["t"] >= end_t - SLOPE_WINDOW]
        recent = [s for s in samples if s["t"] >= end_t - RECENT_SLOPE_WINDOW]
        for name in bridges:
            fds = [s[f"{name}_fds"] for s in after_warmup]
            threads = [s[f"{name}_threads"] for s in after_warmup]
            all_fds = [s[f"{name}_fds"] for s in samples]
            table.append([
                name, fmt(at(samples, 300, f"{name}_rss_mb")), fmt(at(samples, 1800, f"{name}_rss_mb")),
                fmt(final[f"{name}_rss_mb"]),
                fmt(slope_per_hour([(s["t"], s[f"{name}_rss_mb"]) for s in window]), 2),
                fmt(slope_per_hour([(s["t"], s[f"{name}_rss_mb"]) for s in recent]), 2),
                f"{min(fds)}-{max(fds)}", f"{min(all_fds)}-{max(all_fds)}", f"{min(threads)}-{max(threads)}",
                f"{cpu[name]:.0f} s ({100 * cpu[name] / final['t']:.1f}%)",
                counters[name].get("reloads", 0)])
        head = ["bridge", "RSS MB @5 min", "@30 min", "@end", "RSS slope MB/h (last 50 min)",
                "(last 20 min)", "fds after warm-up", "fds whole run", "threads after warm-up",
                "CPU (% of a core)", "reloads"]
        counts = [
            ["sent (generator)", len(sent)],
            ["published (site counter)", counters["site"].get("published", 0)],
            ["delivered (distinct ids at the probe)", delivered],
            ["lost (sent, never delivered)", lost],
            ["duplicates at the probe", duplicates],
            ["ids at the probe never sent", foreign],
            ["central received / injected / duplicates", f"{counters['central'].get('received', 0)} / "
             f"{counters['central'].get('injected', 0)} / {counters['central'].get('duplicates', 0)}"],
            ["central refused / dead letters", f"{counters['central'].get('refused', 0)} / "
             f"{counters['central'].get('dead_letters', 0)}"],
            ["services whose last result Nagios does not show", f"{len(stale)} of {len(gen.last)}"],
            ["FIFO / perfdata lines, rotations", f"{gen.counts['fifo']} / {gen.counts['perfdata']}, "
             f"{gen.counts['rotations']}"],
        ]
        every10 = [s for s in samples if s["phase"] == "run" and s["t"] % 600 < args.sample_every] + [final]
        sample_head = ["t (min)", "site RSS MB", "site anon / heap + thread arenas MB", "site fds",
                       "site threads", "central RSS MB",
                       "central fds", "central threads", "site spool", "central spool",
                       "broker RSS MB", "Nagios RSS MB"]
        sample_rows = [[f"{s['t'] / 60:.0f}" + (" (drained)" if s["phase"] == "drained" else ""),
                        fmt(s["site_rss_mb"]), f'{fmt(s.get("site_anon_mb"))} / '
                        f'{fmt(s.get("site_heap_mb", 0) + s.get("site_thread_arenas_mb", 0))}',
                        s["site_fds"], s["site_threads"],
                        fmt(s["central_rss_mb"]), s["central_fds"], s["central_threads"],
                        s["site_spool_depth"], s["central_spool_depth"], fmt(s["broker_rss_mb"]),
                        fmt(s["nagios_rss_mb"])] for s in every10]

        print()
        print_table(head, table)
        print()
        print_table(["count", "value"], counts)
        print()
        print_table(sample_head, sample_rows)
        summary = summary_text({"bridges": windows}, SUMMARY_FIGURES, len(windows), unit="window",
                               how=f"the load cut into {args.runs} windows of "
                                   f"{args.duration / args.runs:.0f} s; one world throughout, so the"
                                   " windows are not independent runs")
        print("\n" + summary)
        print(f"\nsamples: {csv_path}")
        problems = []
        if lost:
            problems.append(f"LOST {lost} RESULTS")
        if stale:
            problems.append(f"{len(stale)} services do not show their last result in Nagios, e.g. {stale[:3]}")
        if gen.counts["fifo"] + gen.counts["perfdata"] != len(sent):
            problems.append("the generator's counts disagree with its ids")
        for p in problems:
            print(f"\n!!!!!!!! {p} !!!!!!!!")

        if args.write_doc:
            md = lambda h, rows: "\n".join(["| " + " | ".join(map(str, h)) + " |",
                                            "|" + " --- |" * len(h)] +
                                           ["| " + " | ".join(map(str, r)) + " |" for r in rows])
            reload_text = "No reloads" if not args.reload_every else (
                f"The central bridge got SIGHUP every {args.reload_every / 60:g} min" +
                ("" if args.no_site_reload else ", the site bridge too, half a period later"))
            text = f"""`{command}`, {started:%Y-%m-%d %H:%M %Z}, {run_seconds / 60:.0f} min of load at
{args.rate:g} results/s ({args.services} services, half through the OCSP FIFO, half through the
perfdata file rotated every {args.rotate_every:g} s), {len(sent)} results; code: {args.code}.
A site bridge publishes to `{TOPIC}`; a central bridge (durable subscription) injects into a real
Nagios 4 through its command FIFO; an independent durable subscriber counts result ids.
{reload_text}. Samples every
{args.sample_every:g} s; fds and threads "after warm-up" are from minute 5 on. The 2-core machine
ran other tests and benchmarks at the same time (this measures flatness, not speed).

{md(head, table)}

{md(["count", "value"], counts)}

Every 10 minutes:

{md(sample_head, sample_rows)}

Per bridge over {args.runs} windows (median, min, max, each window; counters from status.json):

```
{summary}
```
{chr(10).join(f"{chr(10)}**{p}**" for p in problems)}"""
            write_doc_section(REPO / "docs" / "RELIABILITY.md", "soak", text)
            print("wrote the soak section of docs/RELIABILITY.md")
        out.close()
        return 1 if problems else 0
    finally:
        if gen is not None:
            gen.stop_flag.set()
        for part in (site, central):
            if part is not None:
                part.stop()
        if probe is not None:
            try:
                probe.close()
            except Exception:  # noqa: BLE001 - the broker goes next anyway
                pass
        nagios.stop()
        broker.stop()


if __name__ == "__main__":
    main()
