"""Inbound throughput and latency: ActiveMQ -> bridge -> Nagios 4, against Nagios's own rate.

    .venv/bin/python benchmarks/inbound.py [--count N] [--runs 3] [--hosts 10] [--services 100]
                                           [--ocsp-count 5000] [--extra-prefetch 1000]
                                           [--latency-rate 1000] [--latency-seconds 20]
                                           [--nagios-latency-rate 1000] [--nagios-latency-seconds 10]
                                           [--prefetch P] [--ack-delay S] [--skip NAME] [--keep]
    .venv/bin/python benchmarks/inbound.py --profile [--count N]   # where the bridge's time goes

One real ActiveMQ 5.x (tests/sandbox/activemq.py: Debian package, -Xmx256M, KahaDB) and one real
Nagios 4 (tests/sandbox/nagios.py: Debian nagios4 4.4.6; --hosts x --services passive services;
log_external_commands=1, log_passive_checks=1, status_update_interval=1,
check_result_reaper_frequency=1; no OCSP) are started in a temp dir, on 127.0.0.1 only, and
every case is measured against them --runs times (default 3), interleaved: run 1 measures every
case once in the order below, then run 2, and so on, so that drift (the broker's JIT and KahaDB,
the machine) hits all cases alike. Each run works in its own subdirectory and queues. The report
prints every run's rows, then per case the median, min and max of each figure over the runs
(msgs/s, ratios to the baselines of the same run, CPU per message, RSS, latency p50/p99), and
marks the runs of a case during which other processes used > 25% of a CPU, or the host ran this
machine slow (a fixed loop > 1.3x its fastest: common.slow), "disturbed". The
header records the commit ("+dirty" when the tree differs from it) and the date.

  warm-up         a 3000-message "bridge fifo (alone)" run, once, not reported (broker JIT);
                  when a latency case runs, also --latency-warmup-seconds (10) of the paced
                  publisher into a bridge (not reported): the broker handles single paced
                  SENDs on other code paths than a backlog, and until its JIT has compiled
                  them it used 1 ms of CPU a message, three times what it used later (the first
                  latency case of a run had the broker at 10 s of CPU in 10 s, the same case
                  after it 3 s; p50 5.3 against 4.1 ms, p99 52 against 19: one run, 2026-12-04).
  nagios fifo     Nagios's own rate, THE BASELINE: N PROCESS_SERVICE_CHECK_RESULT lines (the very
  (baseline)      lines the bridge writes: nagios_command.command_line) written straight into
                  Nagios's command FIFO as fast as it takes them (blocking writes of whole lines,
                  <= PIPE_BUF each); timed from the first write until nagios.log holds the N-th
                  "EXTERNAL COMMAND: PROCESS_SERVICE_CHECK_RESULT" line of the case. Nagios logs
                  that line and handles the result in the same call (4.4.6's "PASSIVE SERVICE
                  CHECK" line cannot be used to time: it is written with the service's
                  *previous* output).
  nagios+ocsp     The same against a second sandbox Nagios that obsesses over services with the
  fifo (base.)    bridge's own OCSP command (tests/sandbox/fifo.printf_command: sh + printf into a
                  FIFO, read here): a central Nagios that also runs the outbound side, as the
                  reference measurement (~950/s) did. --ocsp-count results; done when the core
                  has logged all and all OCSP lines arrived.
  raw stomp.py, ack client-individual (baseline)
  raw stomp.py, ack client per prefetch/2 (baseline)
                  The bridge's intake without the bridge: the same N messages pre-loaded the
                  same way, read by one stomp.py consumer with the bridge's prefetch that does
                  nothing but acknowledge: an ACK frame per message from the listener
                  (client-individual, what the bridge's contract needs), or one cumulative ACK
                  per prefetch/2 messages, at most 100, and on the last (client: a lean
                  consumer keeps the broker from running out of prefetch credit; ActiveMQ
                  pages at most 200 messages of a queue in at a time). Timed from the first MESSAGE
                  until the RECEIPT of the last ACK. The bridge rows show "x raw": their rate
                  over the client-individual consumer's in the same run.
  bridge fifo     The bridge alone, writer command_file: N WLCG messages pre-loaded on a queue
  (alone)         (persistent SENDs, no receipts, a receipt on the last one), then
                  `python -m msg_nagios_bridge run` started; its command_file is a FIFO read by
                  a child process of this benchmark that reads and discards as fast as it can
                  (timestamping every read). Timed from the first message stored in the bridge's
                  inbound spool (its SQLite file, polled read-only every 20 ms; status.json is
                  written only every 2 s) until the reader has N lines. The bridge's ceiling.
  bridge crdir    The same with writer checkresults_dir into a directory nobody reaps; timed
  (alone)         until the spool is empty (a row is deleted only once its file and .ok file
                  are written); the results in the files are counted afterwards.
  bridge -> nagios fifo / crdir
                  The same two writers against the real Nagios; timed until Nagios processed
                  all N (fifo: the EXTERNAL COMMAND lines; crdir: N "PASSIVE SERVICE CHECK" lines,
                  counted only). status.dat is checked afterwards: every service should show
                  the last result sent for it (each result of a round has the same check time,
                  later rounds later ones); when not, the rounds shown are listed.
  nagios crdir    Nagios's own rate through the check results directory: N results in files of
  (baseline)      500 (checkresult_file.render, what the bridge writes) all written at once;
                  timed until N PASSIVE SERVICE CHECK lines.
  bridge fifo (alone) prefetch P
                  "bridge fifo (alone)" again with inbound.prefetch = --extra-prefetch.
  bridge fifo (alone) again
                  "bridge fifo (alone)" once more at the very end (after the latency cases):
                  how much the figure drifts within one run.
  latency raw     The broker's share of the latency: the same paced publisher, read by a
  stomp.py        stomp.py consumer in this process (TCP_NODELAY, the bridge's prefetch) that
  (baseline)      notes each message's arrival and sends an ACK frame for it (client-individual).
  latency fifo    A publisher sends --latency-rate results/s for --latency-seconds (persistent,
  (alone)         no receipts) into a queue the running bridge consumes; the bridge's
                  command_file is the benchmark's FIFO reader, which timestamps each line on
                  arrival (CLOCK_MONOTONIC, shared by all processes). Every output carries an
                  id, so latency = arrival - send time, per message: p50/p90/p99/max.
  latency ->      The same into the real Nagios at --nagios-latency-rate, "arrival" being the
  nagios fifo     moment the benchmark sees the result's EXTERNAL COMMAND line in nagios.log
                  (polled every 0.5 ms). Through the check results directory it is not measured:
                  Nagios reaps that directory once a second (check_result_reaper_frequency=1),
                  so the latency there is that interval (0-1 s) plus processing, not the bridge;
                  and status.dat, written once a second, is too coarse to say more.

Every bridge row reports its peak RSS (VmHWM) and CPU seconds (utime+stime from /proc) in the
timed window and over its whole life; the CPU of the broker, of Nagios (core + workers + their
waited-for children), of this benchmark (+ its FIFO reader) and of everything else on the machine
in the window are shown too (2 cores are shared: "other" says whether something else, or the
kernel, disturbed a case).

--profile runs service.Bridge inside this process (no subprocess) on the "bridge fifo (alone)"
case with one cProfile profiler per thread (started by threading.setprofile: no code of the
bridge is replaced), and prints where each thread's time goes: the wall time of named public
functions (judgement, decode, spool put/take/done, FIFO write, ACK) and the top functions.

Every server is started from the temp dir and stopped by PID in a finally block; every wait is
bounded (--case-timeout). With the defaults a run takes about 2-3 minutes on 2 cores, so
--runs 3 about 7-9 minutes.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import re
import select
import shutil
import socket
import statistics
import sys
import threading
import time
import types
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stomp  # noqa: E402

from common import (POLL, Meter, SpoolWatch, ThreadProfiles, code_fingerprint,  # noqa: E402
                    DISTURBED, busy_others, disturbed, fs_type, loadavg, print_profiles, print_stages,
                    print_summary, print_table, rate as rate_of, slow, slow_why, self_cpu, system_busy,
                    temp_dir, wait_connected)

from msg_nagios_bridge.config.settings import InboundSettings  # noqa: E402
from msg_nagios_bridge.cores.nagios import checkresult_file, nagios_command  # noqa: E402
from msg_nagios_bridge.formats import wlcg  # noqa: E402
from msg_nagios_bridge.model import CheckResult  # noqa: E402
from tests.sandbox.activemq import ActiveMQ  # noqa: E402
from tests.sandbox.bridge import Bridge, bridge_config, inbound_config  # noqa: E402
from tests.sandbox.nagios import Nagios, host, passive_service  # noqa: E402
from tests.sandbox.fifo import write_lines  # noqa: E402
from tests.sandbox.ports import children_of  # noqa: E402
from tests.sandbox.procfs import cpu_seconds, peak_rss_mb, thread_cpu  # noqa: E402
from tests.sandbox.stomp_probe import connect  # noqa: E402

FIELDS = {"siteName": "REMOTE", "gatheredAt": "remote-nagios", "role": "site"}
SENDER = "remote-nagios"
CRDIR_BATCH = 500          # results per check result file in the Nagios baseline
PASSIVE = b"PASSIVE SERVICE CHECK: "
COMMAND_LINE = b"EXTERNAL COMMAND: PROCESS_SERVICE_CHECK_RESULT;"
ID_RE = re.compile(rb"id=(\d+)")


# -- payloads ----------------------------------------------------------------------------------

class Payload:
    """``count`` distinct service results spread round-robin over hosts x services, state OK
    (no state change: Nagios's fastest path, so its baseline is as high as it gets)."""

    def __init__(self, count: int, tag: str, hosts: int, services: int):
        self.tag = tag
        total = hosts * services
        rounds = -(-count // total)
        # One check time per round, increasing and in the past: the check results directory
        # reaper sorts by finish time, so the last round sent is also the last one processed.
        base = int(time.time()) - rounds - 1
        self.results = []
        for i in range(count):
            slot = i % total
            self.results.append(CheckResult(
                host=host_name(slot // services), service=service_name(slot % services), state=0,
                output=f"OK bench {tag} id={i:07d} transfer ok", long_output="detail: all fine",
                perfdata=f"time={(i % 1000) / 1000:.3f}s;1;2 size={i % 4096}B",
                timestamp=base + i // total))
        self.count = count
        self.total = total

    def message(self, i: int):
        result = self.results[i]
        # Numbered as a site bridge numbers them (loss accounting: docs/loss-accounting.md).
        headers = {"persistent": "true", "nagios_host": SENDER, "result_id": result.identity(),
                   "site": "bench", "route": self.tag, "route_seq": f"0123456789abcdef:{i + 1}"}
        return wlcg.encode(result, FIELDS).encode("utf-8"), headers

    def messages(self):
        return [self.message(i) for i in range(self.count)]

    def command_lines(self):
        return [nagios_command.command_line(r, int(r.timestamp)).encode() for r in self.results]

    def last_outputs(self):
        """{(host, service): output of the last result sent for it}."""
        out = {}
        for r in self.results:
            out[(r.host, r.service)] = r.output
        return out


def host_name(h: int) -> str:
    return f"ce{h:02d}.remote.org"


def service_name(s: int) -> str:
    return f"org.bench.svc{s:03d}"


# -- the broker side ---------------------------------------------------------------------------

def preload(broker, queue, messages, timeout):
    """Persistent SENDs without receipts, a receipt on the last one; returns seconds."""
    conn, listener = connect(broker, auto_decode=False)
    try:
        t0 = time.monotonic()
        last = len(messages) - 1
        for i, (body, headers) in enumerate(messages):
            if i == last:
                headers = {**headers, "receipt": "preload-last"}
            conn.send(queue, body, headers=headers)
        listener.wait("preload-last", timeout)
        return time.monotonic() - t0
    finally:
        conn.disconnect()


class PacedPublisher:
    """Send messages at ``rate``/s (catching up in bursts if late), noting each send time."""

    def __init__(self, broker, queue, messages, rate):
        self.broker, self.queue, self.messages, self.rate = broker, queue, messages, rate
        self.sent_at = [0.0] * len(messages)

    def run(self, start=0, stop=None):
        stop = len(self.messages) if stop is None else stop
        conn, listener = connect(self.broker, auto_decode=False)
        # A bridge publishing results sets TCP_NODELAY (broker/connection.open_socket): without
        # it, each SEND waits for the broker's delayed ACK of the previous one (27 ms p50 at
        # 1,000/s, measured), and the latency measured would be the publisher's.
        conn.transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            t0 = time.monotonic()
            for i in range(start, stop):
                target = t0 + (i - start) / self.rate
                delay = target - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                body, headers = self.messages[i]
                if i == stop - 1:
                    headers = {**headers, "receipt": f"paced-{stop}"}
                self.sent_at[i] = time.monotonic()
                conn.send(self.queue, body, headers=headers)
            elapsed = self.sent_at[stop - 1] - self.sent_at[start] if stop - start > 1 else 0.0
            listener.wait(f"paced-{stop}", 30)
            return elapsed
        finally:
            conn.disconnect()


# -- observing the central side ----------------------------------------------------------------

def _reader_main(path, stop, ready, counter, first, last, record_path):
    """Child process: read the FIFO as fast as possible, count lines, optionally record
    (id, arrival time) per line. Keeps a write end open so reads never see EOF between the
    bridge's open/write/close cycles."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    keep = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    ready.set()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    n, partial, records = 0, b"", [] if record_path else None
    try:
        while True:
            if not poller.poll(50):
                if stop.is_set():
                    break
                continue
            try:
                data = os.read(fd, 1 << 20)
            except BlockingIOError:
                continue
            t = time.monotonic()
            if not data:
                continue
            k = data.count(b"\n")
            if k:
                if n == 0:
                    first.value = t
                n += k
                last.value = t
                counter.value = n
            if records is not None:
                lines = (partial + data).split(b"\n")
                partial = lines.pop()
                for line in lines:
                    m = ID_RE.search(line)
                    records.append(f"{int(m.group(1)) if m else -1} {t!r}\n")
    finally:
        os.close(fd)
        os.close(keep)
        if records is not None:
            with open(record_path, "w") as handle:
                handle.writelines(records)


class FifoReader:
    """A FIFO read by a child process (spawned: no threads are inherited)."""

    def __init__(self, path: Path, record: bool = False):
        self.path = path
        ctx = multiprocessing.get_context("spawn")
        if path.exists():
            path.unlink()
        os.mkfifo(path, 0o600)
        self.stop_event, ready = ctx.Event(), ctx.Event()
        self.counter = ctx.Value("q", 0)
        self.first = ctx.Value("d", 0.0)
        self.last = ctx.Value("d", 0.0)
        self.record_path = str(path) + ".records" if record else None
        self.proc = ctx.Process(target=_reader_main, name="fifo-reader", daemon=True,
                                args=(str(path), self.stop_event, ready, self.counter, self.first,
                                      self.last, self.record_path))
        self.proc.start()
        if not ready.wait(20):
            self.close()
            raise RuntimeError("the FIFO reader did not start")

    @property
    def pid(self):
        return self.proc.pid

    @property
    def lines(self) -> int:
        return self.counter.value

    def close(self):
        """Stop the child; returns {id: arrival} when recording."""
        self.stop_event.set()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        arrivals = {}
        if self.record_path and os.path.exists(self.record_path):
            with open(self.record_path) as handle:
                for line in handle:
                    ident, t = line.split()
                    arrivals.setdefault(int(ident), float(t))
        return arrivals


class LogTail:
    """Follow nagios.log from its current end and count processed results.

    kind "command": "EXTERNAL COMMAND: PROCESS_SERVICE_CHECK_RESULT;..." lines carrying ``tag``
    (Nagios logs that line and then handles the result right away, in the same call), with
    their id and arrival time when recording. kind "passive": every "PASSIVE SERVICE CHECK:"
    line, whatever its text: Nagios 4.4.6 writes that line for each processed passive result
    but with the service's *previous* output (it logs before it updates the service), so it
    counts results but cannot tell which one.
    """

    def __init__(self, path: Path, kind: str, tag: str = "", record: bool = False):
        self.path = path
        self.marker = COMMAND_LINE if kind == "command" else PASSIVE
        self.tag = tag.encode()
        self.offset = path.stat().st_size if path.exists() else 0
        self.partial = b""
        self.count = 0
        self.first = self.last = None
        self.arrivals = {} if record else None
        self._thread = None
        self._stop = threading.Event()
        self._handle = None         # kept open: an open() per poll made each poll slower

    def poll(self) -> int:
        try:
            if self._handle is None:
                self._handle = open(self.path, "rb")
            self._handle.seek(self.offset)
            data = self._handle.read()
        except OSError:
            return self.count
        t = time.monotonic()
        if not data:
            return self.count
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            if self.marker in line and self.tag in line:
                self.count += 1
                if self.first is None:
                    self.first = t
                self.last = t
                if self.arrivals is not None:
                    m = ID_RE.search(line)
                    if m:
                        self.arrivals.setdefault(int(m.group(1)), t)
        return self.count

    def follow(self, interval=0.0005):
        """Poll in a thread every ``interval`` s (for latency: a line is timed when seen, so
        the interval is added to it, half of it on average; 2 ms polls added about 1 ms to
        the p50 measured until 2026-12-04)."""
        def loop():
            while not self._stop.is_set():
                self.poll()
                time.sleep(interval)
            self.poll()
        self._thread = threading.Thread(target=loop, name="log-tail", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def crdir_files(directory: Path):
    return [p for p in directory.iterdir() if len(p.name) == 7 and p.name.startswith("c")]


def crdir_results(directory: Path) -> int:
    return sum(p.read_bytes().count(b"\nservice_description=") for p in crdir_files(directory))


class Reaper(threading.Thread):
    """Stands in for Nagios in the 'alone' case: takes each finished file (one with its .ok) away
    into reaped/ at once, so the bridge (which writes one file at a time) is measured alone."""

    def __init__(self, directory: Path):
        super().__init__(daemon=True)
        self.directory, self.reaped = directory, directory / "reaped"
        self.reaped.mkdir()
        self.running = True

    def run(self):
        while self.running:
            for path in crdir_files(self.directory):
                ok = path.with_name(path.name + ".ok")
                if ok.exists():
                    path.rename(self.reaped / path.name)
                    ok.unlink()
            time.sleep(0.01)

    def close(self):
        self.running = False
        self.join(2)


def status_check(nagios, payload, timeout=4.0):
    """status.dat against the last result sent per service (waits up to ``timeout`` s for
    Nagios to write it, every 1 s): {"status_ok": n, "status_of": services, and when some
    differ "status_rounds": which round (0 = first result sent for a service) they show}."""
    expected = payload.last_outputs()
    deadline = time.monotonic() + timeout
    while True:
        status = nagios.status()
        good = sum(1 for key, output in expected.items()
                   if (status.get(key) or {}).get("plugin_output") == output)
        if good == len(expected) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    out = {"status_ok": good, "status_of": len(expected)}
    if good != len(expected):
        rounds = {}
        for key in expected:
            text = (status.get(key) or {}).get("plugin_output", "")
            m = ID_RE.search(text.encode()) if payload.tag in text else None
            label = str(int(m.group(1)) // payload.total) if m else "other"
            rounds[label] = rounds.get(label, 0) + 1
        out["status_rounds"] = dict(sorted(rounds.items()))
    return out


# -- cases -------------------------------------------------------------------------------------

class Env:
    """What the cases of one run share. Run ``run`` > 0 (of --runs) works in its own subdirectory
    of ``tmp`` and names its queues and payload tags apart from the other runs."""

    def __init__(self, args, tmp, broker, nagios, run=0):
        self.args, self.broker, self.nagios, self.run = args, broker, nagios, run
        self.tmp = tmp / f"run{run}" if run else tmp
        self.tmp.mkdir(exist_ok=True)
        self.seq = 0
        self.suffix = f"-r{run}" if run else ""

    def queue(self, name):
        self.seq += 1
        return f"/queue/bench.inbound.{name}{self.suffix}.{self.args.run_id}.{self.seq}"

    def tag(self, name):
        return f"{name}{self.suffix}-{self.args.run_id}"

    def meter(self, bridge_pid=None, reader_pid=None, nagios=None):
        nagios = nagios or self.nagios
        return Meter({"bridge": [bridge_pid], "broker": [self.broker.pid],
                      "nagios": [nagios.pid] + children_of(nagios.pid), "reader": [reader_pid]},
                     detail=True, with_children=("nagios",))

    def payload(self, name, count=None):
        return Payload(count or self.args.count, self.tag(name), self.args.hosts, self.args.services)


def central_nagios(tmp: Path, args, name="nagios", ocsp_fifo=None):
    """The sandbox Nagios: hosts x passive services. With ``ocsp_fifo``, it also obsesses over
    services with the bridge's own OCSP command (tests/sandbox/fifo.printf_command: one sh + printf
    per result) writing into that FIFO: a central Nagios that also runs the outbound side."""
    extra, objects = {}, ""
    if ocsp_fifo:
        from msg_nagios_bridge.cores.nagios import result_line
        from msg_nagios_bridge.cores.nagios.wiring import ILLEGAL_MACRO_OUTPUT_CHARS
        from tests.sandbox.fifo import printf_command
        extra = {"obsess_over_services": 1, "ocsp_command": "bench-ocsp", "ocsp_timeout": 5,
                 "illegal_macro_output_chars": ILLEGAL_MACRO_OUTPUT_CHARS}
        objects = ("define command {\n    command_name bench-ocsp\n    command_line "
                   + printf_command(result_line.SERVICE_TAG, result_line.SERVICE_MACROS, str(ocsp_fifo))
                   + "\n}\n")
    return Nagios(tmp / name, hosts=[host(host_name(h)) for h in range(args.hosts)],
                  services=[passive_service(host_name(h), service_name(s))
                            for h in range(args.hosts) for s in range(args.services)],
                  extra_cfg=extra, objects=objects)


def nagios_fifo_case(env: Env, nagios=None, count=None, ocsp_reader=None, name="nfifo"):
    """Nagios alone: N command lines straight into its FIFO, as fast as it takes them."""
    args = env.args
    nagios = nagios or env.nagios
    payload = env.payload(name, count)
    lines = payload.command_lines()
    tail = LogTail(nagios.log_file, "command", payload.tag)
    ocsp0 = ocsp_reader.lines if ocsp_reader else 0
    done = {}

    def write():
        write_lines(nagios.command_file, lines)
        done["written"] = time.monotonic()

    writer = threading.Thread(target=write, name="nagios-fifo-writer")
    meter = env.meter(nagios=nagios, reader_pid=ocsp_reader.pid if ocsp_reader else None)
    t0 = time.monotonic()
    writer.start()
    deadline = t0 + args.case_timeout
    progress, progress_at, stalled = None, t0, False
    while time.monotonic() < deadline:
        if tail.poll() >= payload.count and (
                not ocsp_reader or ocsp_reader.lines - ocsp0 >= payload.count):
            break
        state = (tail.count, ocsp_reader.lines if ocsp_reader else 0)
        if state != progress:
            progress, progress_at = state, time.monotonic()
        elif time.monotonic() - progress_at > args.stall_timeout:
            stalled = True
            break
        time.sleep(POLL / 4)
    t_core = tail.last or time.monotonic()
    t1 = max(t_core, ocsp_reader.last.value) if ocsp_reader else t_core
    writer.join(30)
    r = {"count": payload.count, "seconds": t1 - t0, **meter.stop()}
    note = [f"all lines written into the FIFO after {done.get('written', t1) - t0:.2f} s"]
    if ocsp_reader:
        note.append(f"the core had processed all after {t_core - t0:.2f} s, the last OCSP line "
                    f"came {t1 - t_core:.2f} s later ({ocsp_reader.lines - ocsp0} OCSP lines)")
    r["note"] = "; ".join(note)
    if tail.count < payload.count or (ocsp_reader and ocsp_reader.lines - ocsp0 < payload.count):
        r["incomplete"] = (("STALLED: no progress for %.0f s; " % args.stall_timeout if stalled else "")
                           + f"{tail.count}/{payload.count} processed"
                           + (f", {ocsp_reader.lines - ocsp0} OCSP lines" if ocsp_reader else "")
                           + f" after {time.monotonic() - t0:.0f} s")
        if stalled:
            r["incomplete"] += f"; Nagios core + workers used {nagios_cpu_now(nagios):.1f} CPU s/s meanwhile"
    r.update(status_check(nagios, payload))
    return r


def with_ocsp_nagios(env: Env, name, fn):
    """Run ``fn(nagios, reader)`` against a fresh second sandbox Nagios that obsesses over
    services (the bridge's OCSP printf into a FIFO read by this benchmark); stopped after."""
    reader = FifoReader(env.tmp / f"{name}-ocsp.fifo")
    nagios = central_nagios(env.tmp, env.args, f"nagios-{name}", ocsp_fifo=reader.path)
    try:
        nagios.start()
        return fn(nagios, reader)
    finally:
        nagios.stop(timeout=5)    # a livelocked core ignores SIGTERM: SIGKILL sooner
        reader.close()            # only now: an OCSP shell would block opening a readerless FIFO


def ocsp_case(env: Env):
    """Nagios+OCSP alone: done when the core has processed N and N OCSP lines came."""
    return with_ocsp_nagios(env, "nocsp", lambda nagios, reader: nagios_fifo_case(
        env, nagios, env.args.ocsp_count, reader, "nocsp"))


def bridge_ocsp_case(env: Env):
    """The bridge (command_file) into a Nagios that obsesses over services."""
    return with_ocsp_nagios(env, "bnocsp", lambda nagios, reader: bridge_throughput_case(
        env, "bnocsp", "command_file", True, nagios=nagios, ocsp_reader=reader,
        count=env.args.ocsp_bridge_count))


def nagios_cpu_now(nagios, interval=1.0):
    """CPU seconds per second the Nagios core and its workers use now (a livelock spins)."""
    pids = [nagios.pid] + children_of(nagios.pid)
    before = sum(cpu_seconds(p) for p in pids)
    time.sleep(interval)
    return (sum(cpu_seconds(p) for p in pids) - before) / interval


def write_crdir(directory: Path, results, now):
    """Check result files of CRDIR_BATCH results, each closed before its .ok file."""
    files = 0
    for start in range(0, len(results), CRDIR_BATCH):
        path = directory / ("c" + uuid.uuid4().hex[:6])
        path.write_text(checkresult_file.render(results[start:start + CRDIR_BATCH], now))
        (directory / (path.name + ".ok")).touch()
        files += 1
    return files


def nagios_crdir_case(env: Env):
    """Nagios alone: N results in check result files of 500, all written at once."""
    args, nagios = env.args, env.nagios
    payload = env.payload("ncrdir")
    directory = Path(nagios.check_result_path)
    tail = LogTail(nagios.log_file, "passive")
    meter = env.meter()
    t0 = time.monotonic()
    files = write_crdir(directory, payload.results, time.time())
    written = time.monotonic() - t0
    deadline = t0 + args.case_timeout
    while tail.poll() < payload.count and time.monotonic() < deadline:
        time.sleep(POLL / 4)
    t1 = tail.last or time.monotonic()
    r = {"count": payload.count, "seconds": t1 - t0, **meter.stop(),
         "note": f"{files} files written in {written:.2f} s (Nagios reaps once a second)"}
    if tail.count < payload.count:
        r["incomplete"] = f"{tail.count}/{payload.count} processed after {args.case_timeout:.0f} s"
    r.update(status_check(nagios, payload))
    return r


def _inbound_yaml(env: Env, target, queue, writer, prefetch=None):
    text = inbound_config(target, queue, writer=writer)
    prefetch = prefetch or env.args.prefetch
    if prefetch:
        text += f"  prefetch: {prefetch}\n"
    ack_delay = getattr(env.args, "ack_delay", 0)    # inbound_icinga2.py's arguments have none
    if ack_delay:
        text += f"  ack_delay: {ack_delay}\n"
    return text


def start_bridge(env: Env, name, target, queue, writer, prefetch=None):
    workdir = env.tmp / name
    text = bridge_config(workdir, [env.broker.stomp_port], ocsp=False,
                         inbound=_inbound_yaml(env, target, queue, writer, prefetch))
    bridge = Bridge(workdir, text)
    bridge.start()
    return bridge, SpoolWatch(workdir / "spool" / "inbound.sqlite")


def bridge_throughput_case(env: Env, name, writer, to_nagios, prefetch=None, nagios=None,
                           ocsp_reader=None, count=None):
    """N messages pre-loaded on a queue, then a bridge started; timed from its first spooled
    message until the central side has all N (and, with ``ocsp_reader``, N OCSP lines)."""
    args = env.args
    nagios = nagios or env.nagios
    payload = env.payload(name, count)
    queue = env.queue(name)
    pre = preload(env.broker, queue, payload.messages(), args.case_timeout)
    r = {"count": payload.count, "preload_s": pre}
    reader = tail = reaper = None
    crdir = None
    if to_nagios:
        target = nagios
        crdir = Path(nagios.check_result_path)
        if writer == "command_file":
            tail = LogTail(nagios.log_file, "command", payload.tag)
        else:
            tail = LogTail(nagios.log_file, "passive")
    else:
        work = env.tmp / f"{name}-central"
        work.mkdir()
        crdir = work / "checkresults"
        crdir.mkdir()
        if writer == "checkresults_dir":
            reaper = Reaper(crdir)
            reaper.start()
        target = types.SimpleNamespace(command_file=work / "nagios.cmd", check_result_path=crdir,
                                       dir=work)
        if writer == "command_file":
            reader = FifoReader(work / "nagios.cmd")
    bridge = watch = None
    try:
        ocsp0 = ocsp_reader.lines if ocsp_reader else 0
        meter = env.meter(reader_pid=(reader or ocsp_reader).pid if (reader or ocsp_reader) else None,
                          nagios=nagios)
        t_start = time.monotonic()
        bridge, watch = start_bridge(env, name, target, queue, writer, prefetch)
        pid = bridge.pid
        meter.groups["bridge"] = [pid]      # born inside the window: all its CPU counts
        deadline = t_start + args.case_timeout
        t_first = t_injected = t_done = None
        injected = central = 0
        progress, progress_at = None, t_start
        while True:
            now = time.monotonic()
            seq, depth, dead = watch.poll()
            injected = seq - depth
            if t_first is None and seq > 0:
                t_first = now
                cpu_first = cpu_seconds(pid)
                threads_first = thread_cpu(pid)
            if t_injected is None and injected >= payload.count:
                t_injected = now
            if reader is not None:
                central = reader.lines
                if central >= payload.count:
                    t_done = reader.last.value
            elif tail is not None:   # the real Nagios: processed results in nagios.log
                central = tail.poll()
                if ocsp_reader is not None:
                    if central >= payload.count and ocsp_reader.lines - ocsp0 >= payload.count:
                        t_done = max(tail.last, ocsp_reader.last.value)
                elif central >= payload.count:
                    t_done = tail.last
            else:                # check results dir nobody reaps: the bridge's hand-over
                if t_injected is not None:
                    t_done, central = t_injected, payload.count
            if t_done is not None and t_injected is not None:
                break
            state = (seq, injected, central, ocsp_reader.lines if ocsp_reader else 0)
            if state != progress:
                progress, progress_at = state, now
            stalled = t_first is not None and now - progress_at > args.stall_timeout
            if now > deadline or stalled or bridge.proc.poll() is not None:
                r["incomplete"] = (("STALLED: no progress for %.0f s; " % (now - progress_at)
                                    if stalled else "")
                                   + f"{injected}/{payload.count} handed over, {central} at the central"
                                   + (f" side ({ocsp_reader.lines - ocsp0} OCSP lines)" if ocsp_reader
                                      else " side") + f" after {now - t_start:.1f} s")
                break
            time.sleep(POLL if t_first is not None else 0.005)
        t_end = time.monotonic()
        r.update(meter.stop())
        if t_first:
            r["cpu_by_thread"] = thread_cpu_between(threads_first, thread_cpu(pid))
        r["bridge_cpu_total"] = cpu_seconds(pid)
        r["bridge_cpu"] = r["bridge_cpu_total"] - (cpu_first if t_first else 0.0)
        r["rss_mb"] = peak_rss_mb(pid)
        t_first = t_first or t_end
        t_done = t_done or t_end
        r["seconds"] = max(1e-6, t_done - t_first)
        r["startup_s"] = t_first - t_start
        r["injected_s"] = (t_injected or t_end) - t_first
        r["dead"] = dead
        if r.get("incomplete"):
            r["count"] = min(injected, central) if central else injected
    finally:
        if watch:
            watch.close()
        if bridge:
            r["exit"] = bridge.stop()
            counters = bridge.status().get("counters", {})
            r["counters"] = {k: counters.get(k, 0) for k in ("received", "injected", "duplicates",
                                                             "refused", "truncated")}
        if reader:
            reader.close()
        if reaper:
            reaper.close()
    if to_nagios:
        r.update(status_check(nagios, payload))
    elif writer == "checkresults_dir":
        r["files"] = len(crdir_files(crdir)) + len(crdir_files(crdir / "reaped"))
        r["results_in_files"] = crdir_results(crdir) + crdir_results(crdir / "reaped")
        shutil.rmtree(crdir, ignore_errors=True)
    return r


def thread_cpu_between(before, after):
    """{thread name: CPU seconds between two thread_cpu samples}; threads of one name added up."""
    used = {}
    for tid, (name, cpu) in after.items():
        used[name] = used.get(name, 0.0) + cpu - before.get(tid, (name, 0.0))[1]
    return used


class RawConsumer(stomp.ConnectionListener):
    """A lean stomp.py consumer, no processing: ``ack`` "client-individual" sends an ACK frame
    per message from the listener; "client" acknowledges cumulatively, the message that ends
    every ``every`` (and the last), asking a receipt for the last ACK."""

    def __init__(self, conn, count, ack, every):
        self.conn, self.count, self.ack, self.every = conn, count, ack, every
        self.received = 0
        self.first = None

    def on_message(self, frame):
        self.received += 1
        if self.first is None:
            self.first = time.monotonic()
        last = self.received == self.count
        if self.ack == "client-individual" or last or self.received % self.every == 0:
            self.conn.ack(frame.headers["ack"], receipt="raw-last" if last else None)


def raw_consumer_case(env: Env, name, ack):
    """The baseline for the bridge's intake: the same N messages pre-loaded the same way, read by
    a raw stomp.py consumer (prefetch as the bridge's) that only acknowledges. Timed from the
    first message received until the RECEIPT of the last ACK (the broker handles a connection's
    frames in order: every ACK was processed)."""
    args = env.args
    payload = env.payload(name)
    queue = env.queue(name)
    r = {"count": payload.count,
         "preload_s": preload(env.broker, queue, payload.messages(), args.case_timeout)}
    prefetch = args.prefetch or InboundSettings.prefetch      # the bridge's, as in its rows
    conn, receipts = connect(env.broker, auto_decode=False)
    consumer = RawConsumer(conn, payload.count, ack, every=max(1, min(prefetch, ACTIVEMQ_PAGE) // 2))
    conn.set_listener("raw", consumer)
    try:
        meter = env.meter()
        t_start = time.monotonic()
        conn.subscribe(queue, "1", ack=ack, headers={"activemq.prefetchSize": str(prefetch)})
        try:
            receipts.wait("raw-last", args.case_timeout)
        except TimeoutError:
            r["incomplete"] = f"{consumer.received}/{payload.count} received after {args.case_timeout:.0f} s"
        t_end = time.monotonic()
        r.update(meter.stop())
    finally:
        conn.disconnect()
    r["consumer_cpu"] = r["bench_cpu"]      # the main thread only waits
    r["count"] = min(consumer.received, payload.count)
    r["startup_s"] = (consumer.first or t_end) - t_start
    r["seconds"] = max(1e-6, t_end - (consumer.first or t_start))
    return r


class TimingConsumer(stomp.ConnectionListener):
    """The raw latency baseline's consumer: notes when each message arrived (by the number in
    its route_seq) and acknowledges it with an ACK frame of its own (client-individual)."""

    def __init__(self, conn):
        self.conn = conn
        self.arrivals = {}

    def on_message(self, frame):
        t = time.monotonic()
        self.arrivals.setdefault(int(frame.headers["route_seq"].rpartition(":")[2]) - 1, t)
        self.conn.ack(frame.headers["ack"])


def latency_case(env: Env, name, sink, rate, seconds):
    """A publisher at ``rate``/s; per-message publish -> arrival time. ``sink``: "fifo" (a
    bridge writing into the benchmark's FIFO), "nagios" (a bridge writing into the real
    Nagios; arrival = its log line) or "raw" (no bridge: a stomp.py consumer acking each
    message, the broker's share of the latency)."""
    args, nagios = env.args, env.nagios
    warm = max(100, int(rate * 0.5))
    count = int(rate * seconds)
    payload = env.payload(name, count=warm + count)
    messages = payload.messages()
    queue = env.queue(name)
    reader = tail = consumer = conn = bridge = None
    if sink == "nagios":
        target = nagios
        tail = LogTail(nagios.log_file, "command", payload.tag, record=True)
        tail.follow()
        arrivals_seen = lambda: tail.count                      # noqa: E731
    elif sink == "fifo":
        work = env.tmp / f"{name}-central"
        work.mkdir()
        target = types.SimpleNamespace(command_file=work / "nagios.cmd",
                                       check_result_path=work / "checkresults", dir=work)
        reader = FifoReader(work / "nagios.cmd", record=True)
        arrivals_seen = lambda: reader.lines                    # noqa: E731
    else:
        conn, _ = connect(env.broker, auto_decode=False)
        conn.transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # as the bridge's
        consumer = TimingConsumer(conn)
        conn.set_listener("timing", consumer)
        prefetch = args.prefetch or InboundSettings.prefetch
        arrivals_seen = lambda: len(consumer.arrivals)          # noqa: E731
    r = {"rate": rate, "count": count}
    try:
        if consumer is not None:
            conn.subscribe(queue, "1", ack="client-individual",
                           headers={"activemq.prefetchSize": str(prefetch)})
        else:
            bridge, watch = start_bridge(env, name, target, queue, "command_file")
            watch.close()
            wait_connected(bridge, interval=0.02)
        publisher = PacedPublisher(env.broker, queue, messages, rate)
        publisher.run(0, warm)                    # warm-up: not counted
        deadline = time.monotonic() + 20
        while arrivals_seen() < warm and time.monotonic() < deadline:
            time.sleep(0.01)
        meter = env.meter(bridge.pid if bridge else None, reader.pid if reader else None)
        sent_for = publisher.run(warm, warm + count)
        deadline = time.monotonic() + 15
        while arrivals_seen() < warm + count and time.monotonic() < deadline:
            time.sleep(0.01)
        r.update(meter.stop())
        r["achieved_rate"] = (count - 1) / sent_for if sent_for else 0.0
        if bridge:
            r["bridge_cpu_total"] = cpu_seconds(bridge.pid)
            r["rss_mb"] = peak_rss_mb(bridge.pid)
        else:
            r["consumer_cpu"] = r["bench_cpu"]   # with the paced publisher's: same process
    finally:
        if bridge:
            r["exit"] = bridge.stop()
        if conn is not None:
            conn.disconnect()
            arrivals = consumer.arrivals
        elif tail:
            tail.stop()
            arrivals = tail.arrivals
        else:
            arrivals = reader.close()
    latencies = sorted(arrivals[i] - publisher.sent_at[i] for i in range(warm, warm + count)
                       if i in arrivals)
    r["received"] = len(latencies)
    r["latencies"] = latencies
    return r


def percentile(values, p):
    if not values:
        return float("nan")
    k = (len(values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


# -- report ------------------------------------------------------------------------------------

# ActiveMQ 5 reads at most maxPageSize (200 by default) messages of a queue into memory for
# dispatch at a time: a cumulative consumer that waited for 250 messages before its first ACK
# (half the bridge's prefetch of 500) got 200 and stalled until the broker's periodic sweep,
# 10,000 messages taking 30 s.
ACTIVEMQ_PAGE = 200

RAW_CASES = ("raw stomp.py, ack client-individual (baseline)",
             "raw stomp.py, ack client per prefetch/2 (baseline)")


def _figures(results):
    """Adds to each result the figures compared across runs: ratios to the baselines of the same
    run ("x_nagios": nagios fifo, "x_raw": the raw client-individual consumer), CPU per message
    ("us_per_msg_window": the bridge's from its first spooled message until all were handed over
    (latency: the publishing window), or the raw consumer's; "us_per_msg": the bridge's whole
    life, Python's start included), latency percentiles."""
    nagios_fifo = {n: rate_of(r) for name, n, r in results if name == "nagios fifo (baseline)"}
    raw = {n: rate_of(r) for name, n, r in results if name == RAW_CASES[0]}
    for name, n, r in results:
        if "latencies" in r:
            lat = r["latencies"]
            r["p50_ms"], r["p99_ms"] = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
            cpu = r["bridge_cpu"] if "rss_mb" in r else r["consumer_cpu"]
            r["us_per_msg_window"] = 1e6 * cpu / max(1, r["count"])
            continue
        msgs = rate_of(r)
        if nagios_fifo.get(n) and name != "nagios fifo (baseline)" and name not in RAW_CASES:
            r["x_nagios"] = msgs / nagios_fifo[n]
        if "rss_mb" in r:
            if raw.get(n):
                r["x_raw"] = msgs / raw[n]
            r["us_per_msg"] = 1e6 * r["bridge_cpu_total"] / max(1, r["count"])
            r["us_per_msg_window"] = 1e6 * r["bridge_cpu"] / max(1, r["count"])
            r["us_per_msg_threads"] = {name: 1e6 * cpu / max(1, r["count"])
                                       for name, cpu in r.get("cpu_by_thread", {}).items()}
        elif "consumer_cpu" in r:
            r["us_per_msg_window"] = 1e6 * r["consumer_cpu"] / max(1, r["count"])


BRIDGE_THREADS = ("subscriber", "subscriber-rx", "nagios-writer")

SUMMARY_FIGURES = [
    ("msgs/s", lambda r: None if "latencies" in r else rate_of(r), ",.0f"),
    ("x nagios fifo", lambda r: r.get("x_nagios"), ".2f"),
    ("x raw (client-individual)", lambda r: r.get("x_raw"), ".2f"),
    ("latency p50 ms", lambda r: r.get("p50_ms"), ".1f"),
    ("latency p99 ms", lambda r: r.get("p99_ms"), ".1f"),
    ("us CPU/msg, window", lambda r: r.get("us_per_msg_window"), ".0f"),
    ("us CPU/msg, whole life", lambda r: r.get("us_per_msg"), ".0f"),
    # The window's CPU by thread (the bridge names its threads: daemon/threadname.py).
    *((f"  of which {thread}", lambda r, t=thread: r.get("us_per_msg_threads", {}).get(t), ".0f")
      for thread in BRIDGE_THREADS),
    ("bridge RSS MB", lambda r: r.get("rss_mb"), ".0f"),
]


def _notes(args, r):
    note = []
    if "preload_s" in r:
        note.append(f"pre-loaded in {r['preload_s']:.1f} s")
    if "injected_s" in r:
        note.append(f"spool empty (all handed over) {r['injected_s']:.2f} s after the first spooled")
    if r.get("note"):
        note.append(r["note"])
    if "status_ok" in r:
        ok = r["status_ok"] == r["status_of"]
        note.append(f"status.dat: {r['status_ok']}/{r['status_of']} services show their last "
                    f"result {'ok' if ok else 'MISMATCH'}")
        if r.get("status_rounds"):
            last = str(-(-r["count"] // (args.hosts * args.services)) - 1)
            note.append("services per round shown (last round sent = " + last + "): " +
                        ", ".join(f"round {k}: {v}" for k, v in r["status_rounds"].items()))
    if "results_in_files" in r:
        note.append(f"{r['files']} files holding {r['results_in_files']} results "
                    f"{'ok' if r['results_in_files'] == r['count'] else 'MISMATCH'}")
    if r.get("us_per_msg_threads"):
        note.append("us CPU/msg in the window by thread: " + ", ".join(
            f"{name} {us:.1f}" for name, us in sorted(r["us_per_msg_threads"].items(), key=lambda kv: -kv[1])
            if us >= 0.05))
    if "counters" in r:
        note.append("counters " + ", ".join(f"{k} {v}" for k, v in r["counters"].items() if v))
    if r.get("dead"):
        note.append(f"{r['dead']} dead letters")
    if slow(r):
        note.append("DISTURBED: " + slow_why(r))
    if busy_others(r):
        note.append(f"DISTURBED: other CPU {r['other_cpu']:.2f} s in {r['window']:.2f} s = irq+softirq "
                    f"{r['softirq_cpu']:.2f} s, steal {r['steal_cpu']:.2f} s, busiest other processes: " +
                    (", ".join(f"{name} {cpu:.2f} s" for cpu, name in r["other_top"]) or "none"))
    if r.get("incomplete"):
        note.append("INCOMPLETE: " + r["incomplete"])
    if r.get("exit") not in (None, 0):
        note.append(f"bridge exit code {r['exit']}")
    return note


def _other(r):
    return f"{r['other_cpu']:.2f}" + (" *" if disturbed(r) else "")


def report(env: Env, results, started):
    args = env.args
    _figures(results)
    order = list(dict.fromkeys(name for name, _, _ in results))     # cases in the order measured
    by_case = sorted(results, key=lambda x: (order.index(x[0]), x[1]))
    rows = [x for x in by_case if "latencies" not in x[2]]
    latencies = [x for x in by_case if "latencies" in x[2]]
    print()
    print(f"=== inbound benchmark, run {args.run_id}: {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, stomp.py {stomp.__version__}; temp dir on {args.fs}")
    print(f"code: {args.code}; bridge prefetch {args.prefetch or f'default ({InboundSettings.prefetch})'}")
    print(f"ActiveMQ 5.x pid {env.broker.pid} (-Xmx256M, KahaDB); Nagios 4 pid {env.nagios.pid} with "
          f"{args.hosts} hosts x {args.services} passive services, no OCSP (the +ocsp baseline: a second "
          f"one obsessing over services); N = {args.count} per throughput case; {args.runs} runs, cases "
          f"interleaved; load average at start {args.load_start} (CPU busy {args.busy_start:.2f} s/s in "
          f"the second before the start), at end {loadavg()}")
    print()
    head = ("case", "run", "N", "window s", "msgs/s", "x nagios fifo", "x raw", "startup s",
            "bridge CPU s", "us CPU/msg", "bridge RSS", "broker CPU", "nagios CPU", "bench CPU",
            "other CPU")
    table, notes = [], []
    for name, n, r in rows:
        is_bridge = "rss_mb" in r
        table.append((
            name, n, r["count"], f"{r['seconds']:.2f}", f"{rate_of(r):,.0f}",
            f"{r['x_nagios']:.2f}x" if "x_nagios" in r else "",
            f"{r['x_raw']:.2f}x" if "x_raw" in r else "",
            f"{r['startup_s']:.2f}" if "startup_s" in r else "",
            f"{r['bridge_cpu']:.2f} ({r['bridge_cpu_total']:.2f})" if is_bridge else "",
            f"{r['us_per_msg']:.0f}" if "us_per_msg" in r else
            f"{r['us_per_msg_window']:.0f}" if "us_per_msg_window" in r else "",
            f"{r['rss_mb']:.0f} MB" if is_bridge else "",
            f"{r['broker_cpu']:.2f}", f"{r['nagios_cpu']:.2f}",
            f"{r['bench_cpu'] + r.get('reader_cpu', 0):.2f}", _other(r)))
        notes.append((f"{name} #{n}", _notes(args, r)))
    print_table(head, table)
    print()
    for name, note in notes:
        if note:
            print(f"  {name}: " + "; ".join(note))
    if latencies:
        print()
        head = ("latency case", "run", "rate /s (sent)", "N", "got", "p50 ms", "p90 ms", "p99 ms",
                "max ms", "bridge CPU s", "CPU/msg us", "bridge RSS", "broker CPU", "nagios CPU",
                "other CPU", "p99 < 100 ms")
        table = []
        for name, n, r in latencies:
            lat = r["latencies"]
            table.append((
                name, n, f"{r['rate']} ({r['achieved_rate']:.0f})", r["count"], r["received"],
                f"{r['p50_ms']:.1f}", f"{percentile(lat, 90) * 1000:.1f}",
                f"{r['p99_ms']:.1f}", f"{(lat[-1] if lat else float('nan')) * 1000:.1f}",
                f"{r['bridge_cpu']:.2f} ({r['bridge_cpu_total']:.2f})" if "rss_mb" in r else "",
                f"{r['us_per_msg_window']:.0f}", f"{r['rss_mb']:.0f} MB" if "rss_mb" in r else "",
                f"{r['broker_cpu']:.2f}", f"{r['nagios_cpu']:.2f}", _other(r),
                ("yes" if r["p99_ms"] < 100 else "NO") + ("" if r["received"] == r["count"] else " (MISSING)")))
        print_table(head, table)
    print(f"\n(other CPU: * = disturbed: {DISTURBED} during the case)")
    cases = {name: [next((r for c, n, r in results if c == name and n == k), None)
                    for k in range(1, args.runs + 1)] for name in order}
    print_summary(cases, SUMMARY_FIGURES, args.runs)
    ratios = [r["x_raw"] for r in cases.get("bridge fifo (alone)", []) if r and "x_raw" in r]
    if ratios:
        median = statistics.median(ratios)
        print(f"target (issue 16): bridge fifo (alone) >= 0.5x the raw client-individual consumer: median "
              f"{median:.2f}x ({min(ratios):.2f}-{max(ratios):.2f}x), "
              f"{'meets' if median >= 0.5 else 'falls short of'} it")
    print("""
How measured: msgs/s = N / window. nagios fifo: window = first write into Nagios's FIFO ->
  N-th "EXTERNAL COMMAND: PROCESS_SERVICE_CHECK_RESULT" line of the case in nagios.log (Nagios
  handles the result in the same call, right after logging it); +ocsp: and N OCSP lines read
  from the OCSP FIFO. nagios crdir: files written -> N-th "PASSIVE SERVICE CHECK" line (4.4.6
  writes it per processed result, with the previous output, so it is only counted).
  bridge rows: window = first message in the bridge's spool (polled every 20 ms) -> the N-th
  line read from the FIFO (alone), the N-th result in nagios.log as above (-> nagios), the
  spool empty (crdir alone: every file and .ok written). startup s = bridge process start
  -> first message spooled (Python start, config, STOMP connect, subscribe, first batch).
  bridge CPU s: in the window (whole process life); us CPU/msg uses the whole life (Python's
  start included), in the summary also "window": from the first spooled message until the spool
  was empty (every result handed over, acknowledged and deleted), and "of which" that window's
  CPU by the bridge's thread (/proc/PID/task: subscriber, its STOMP reader subscriber-rx, the
  nagios-writer); RSS is VmHWM at the end. bench CPU: this process plus the FIFO reader child.
  raw stomp.py rows: the same N messages pre-loaded the same way, one stomp.py 9 consumer with
  the bridge's prefetch, no processing; window = first MESSAGE -> the RECEIPT of the last ACK.
  client-individual: an ACK frame per message, sent from the listener; client: one cumulative
  ACK per prefetch/2 messages, at most 100 (ActiveMQ pages 200 in at a time: the broker never
  runs out of credit) and
  one on the last. us CPU/msg there = this process (the consumer; the main thread only waits).
  x raw = msgs/s over the client-individual consumer's of the same run; x nagios fifo likewise.
  latency: per message, publish (just before the STOMP SEND) -> its line read from the FIFO
  (alone) / its EXTERNAL COMMAND line seen in nagios.log (polled every 0.5 ms); a warm-up of
  half a second of messages before is not counted. -> nagios crdir latency: not measured
  (Nagios reaps the directory once a second; status.dat is written once a second).""")
    print(f"\ntotal run time {time.monotonic() - started:.0f} s")


# -- profile mode ------------------------------------------------------------------------------

PROFILE_STAGES = [
    ("judgement.judge_batch (decode, policy, dedupe)", "msg_nagios_bridge.inbound.judgement:judge_batch"),
    ("decode.decode (WLCG -> CheckResult)", "msg_nagios_bridge.formats.decode:decode"),
    ("spool.put (INSERT txn + fsync)", "msg_nagios_bridge.spool:Spool.put"),
    ("spool.take (SELECT)", "msg_nagios_bridge.spool:Spool.take"),
    ("spool.done (DELETE txn + fsync)", "msg_nagios_bridge.spool:Spool.done"),
    ("wakeup.wait (a worker idle)", "msg_nagios_bridge.wakeup:Wakeup.wait"),
    ("writer.deliver (hand to the core)", "msg_nagios_bridge.cores.nagios.writer:NagiosWriter.deliver"),
    ("nagios_command.command_line (format one)", "msg_nagios_bridge.cores.nagios.nagios_command:command_line"),
    ("command_file.write_lines (FIFO)", "msg_nagios_bridge.cores.nagios.command_file:write_lines"),
    ("stomp ack (one ACK frame)", "stomp:Connection12.ack"),
]


def profile_mode(env: Env):
    """service.Bridge in this process on the 'bridge fifo (alone)' case, with a cProfile
    profiler per thread."""
    import logging
    from msg_nagios_bridge import config as config_mod
    from msg_nagios_bridge.daemon import service
    from msg_nagios_bridge import paths

    logging.basicConfig(level=logging.WARNING)
    args = env.args
    name = "profile"
    payload = env.payload(name)
    queue = env.queue(name)
    pre = preload(env.broker, queue, payload.messages(), args.case_timeout)
    work = env.tmp / name
    work.mkdir()
    target = types.SimpleNamespace(command_file=work / "nagios.cmd",
                                   check_result_path=work / "checkresults", dir=work)
    reader = FifoReader(work / "nagios.cmd")
    (work / "bridge.yaml").write_text(bridge_config(
        work, [env.broker.stomp_port], ocsp=False,
        inbound=_inbound_yaml(env, target, queue, "command_file")))
    settings = config_mod.load(str(work / "bridge.yaml"))
    watch = SpoolWatch(Path(paths.inbound_spool_path(settings)))
    with ThreadProfiles() as profiler:
        bridge = service.Bridge(settings)
        try:
            cpu0 = self_cpu()
            t_start = time.monotonic()
            bridge.start()
            t_first = None
            deadline = t_start + args.case_timeout
            while reader.lines < payload.count and time.monotonic() < deadline:
                if t_first is None and watch.poll()[0] > 0:
                    t_first = time.monotonic()
                time.sleep(POLL if t_first else 0.005)
            t_end = reader.last.value or time.monotonic()
            cpu = self_cpu() - cpu0
        finally:
            bridge.stop()
            watch.close()
            reader.close()
    t_first = t_first or t_start
    elapsed = max(1e-6, t_end - t_first)
    print(f"\n=== profile: {reader.lines}/{payload.count} lines in {elapsed:.2f} s ="
          f" {reader.lines / elapsed:,.0f} msgs/s under cProfile from the first spooled message"
          f" (pre-loaded in {pre:.1f} s); process CPU {cpu:.2f} s from bridge start"
          f" ({t_end - t_start:.2f} s)")
    print_stages(profiler.profiles, PROFILE_STAGES, elapsed, width=48)
    print_profiles(profiler.profiles, args.profile_top)


# -- main --------------------------------------------------------------------------------------

def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="messages per throughput case")
    parser.add_argument("--warmup-count", type=int, default=3000,
                        help="messages of the warm-up run, not reported (default 3000)")
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--services", type=int, default=100, help="passive services per host")
    parser.add_argument("--latency-rate", type=int, default=1000)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--latency-warmup-seconds", type=float, default=10.0,
                        help="paced warm-up before the first latency case, not reported (0: none)")
    parser.add_argument("--nagios-latency-rate", type=int, default=1000,
                        help="results/s for the latency through the real Nagios (0: skip)")
    parser.add_argument("--nagios-latency-seconds", type=float, default=10.0)
    parser.add_argument("--ocsp-count", type=int, default=2000,
                        help="results for the Nagios-with-OCSP baseline (0: skip); bursts of "
                             "3000+ can livelock Nagios 4.4.6 (reported as STALLED)")
    parser.add_argument("--ocsp-bridge-count", type=int, default=5000,
                        help="messages for 'bridge -> nagios+ocsp fifo' (0: skip)")
    parser.add_argument("--stall-timeout", type=float, default=10.0,
                        help="end a case when nothing moved for this many seconds")
    parser.add_argument("--prefetch", type=int, default=None,
                        help="inbound.prefetch for the bridge (default: the bridge's default)")
    parser.add_argument("--ack-delay", type=float, default=0.0,
                        help="inbound.ack_delay for the bridge (default 0, the bridge's default)")
    parser.add_argument("--extra-prefetch", type=int, default=1000,
                        help="also run 'bridge fifo (alone)' with this inbound.prefetch (0: skip)")
    parser.add_argument("--runs", type=int, default=3,
                        help="measure every case this many times, interleaved (default 3)")
    parser.add_argument("--case-timeout", type=float, default=90.0)
    parser.add_argument("--skip", action="append", default=[],
                        help="skip cases whose name contains this (repeatable)")
    parser.add_argument("--profile", action="store_true",
                        help="profile the bridge in-process instead of the benchmark")
    parser.add_argument("--profile-top", type=int, default=22)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, spools)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    args.run_id = uuid.uuid4().hex[:6]
    args.code = code_fingerprint()      # now, not at the report: the bridges run the code of the start
    return args


def main():
    args = parse_args()
    with temp_dir("mnb-inbound-", args.keep) as tmp:
        return run_all(args, tmp, time.monotonic())


def run_all(args, tmp: Path, started: float):
    args.fs = fs_type(tmp)
    args.load_start = loadavg()
    busy0 = system_busy()
    time.sleep(1.0)
    args.busy_start = system_busy() - busy0
    if args.busy_start > 0.25:
        print(f"WARNING: the machine is busy before the start ({args.busy_start:.2f} CPU seconds "
              "used in 1 s by other processes): figures will be disturbed", flush=True)
    broker = ActiveMQ(tmp / "activemq")
    nagios = central_nagios(tmp, args)
    try:
        broker.start()
        nagios.start()
        print(f"ActiveMQ up in {broker.started_in:.1f} s (pid {broker.pid}, STOMP 127.0.0.1:"
              f"{broker.stomp_port}); Nagios up in {nagios.started_in:.1f} s (pid {nagios.pid}, "
              f"{args.hosts * args.services} passive services); temp dir {tmp}", flush=True)
        env = Env(args, tmp, broker, nagios)

        # Warm the broker's JIT on the paths used (send + dispatch to a client-individual
        # subscriber): a short bridge run, not reported.
        env_warm = Env(argparse.Namespace(**{**vars(args), "count": args.warmup_count}), tmp, broker, nagios)
        r = bridge_throughput_case(env_warm, "warmup", "command_file", to_nagios=False)
        print(f"warm-up (not reported): bridge alone {rate_of(r):,.0f} msgs/s", flush=True)
        if args.latency_warmup_seconds > 0 and not all(
                any(s in name for s in args.skip) for name in ("latency raw stomp.py (baseline)", "latency fifo (alone)",
                                                          "latency -> nagios fifo")):
            r = latency_case(env_warm, "latwarm", "fifo", args.latency_rate, args.latency_warmup_seconds)
            lat = r["latencies"]
            print(f"warm-up (not reported): paced {args.latency_rate}/s for {args.latency_warmup_seconds:g} s, "
                  f"p50 {percentile(lat, 50) * 1000:.1f} ms, p99 {percentile(lat, 99) * 1000:.1f} ms, "
                  f"broker CPU {r.get('broker_cpu', float('nan')):.1f} s", flush=True)

        if args.profile:
            profile_mode(env)
            return 0

        results = []            # (case name, run number, result), in the order measured
        raw_ci, raw_client = RAW_CASES
        for number in range(1, args.runs + 1):
            env = Env(args, tmp, broker, nagios, run=number)

            def run(name, fn, *a, **kw):
                if any(s in name for s in args.skip):
                    return
                r = fn(env, *a, **kw)
                results.append((name, number, r))
                if "latencies" in r:
                    lat = r["latencies"]
                    figure = (f"p50 {percentile(lat, 50) * 1000:.1f} ms, p99 "
                              f"{percentile(lat, 99) * 1000:.1f} ms, {r['received']}/{r['count']}")
                else:
                    figure = f"{rate_of(r):,.0f} msgs/s"
                print(f"run {number}/{args.runs} {name}: {figure}"
                      + (" (disturbed)" if disturbed(r) else "")
                      + (f" INCOMPLETE {r['incomplete']}" if r.get("incomplete") else ""), flush=True)

            run("nagios fifo (baseline)", nagios_fifo_case)
            if args.ocsp_count:
                run("nagios+ocsp fifo (baseline)", ocsp_case)
            run(raw_ci, raw_consumer_case, "rawci", "client-individual")
            run(raw_client, raw_consumer_case, "rawclient", "client")
            run("bridge fifo (alone)", bridge_throughput_case, "bfifo", "command_file", False)
            run("bridge crdir (alone)", bridge_throughput_case, "bcrdir", "checkresults_dir", False)
            run("bridge -> nagios fifo", bridge_throughput_case, "bnfifo", "command_file", True)
            if args.ocsp_bridge_count:
                run("bridge -> nagios+ocsp fifo", bridge_ocsp_case)
            run("nagios crdir (baseline)", nagios_crdir_case)
            run("bridge -> nagios crdir", bridge_throughput_case, "bncrdir", "checkresults_dir", True)
            if args.extra_prefetch:
                run(f"bridge fifo (alone) prefetch {args.extra_prefetch}", bridge_throughput_case,
                    "bfifopf", "command_file", False, args.extra_prefetch)
            run("latency raw stomp.py (baseline)", latency_case, "latraw", "raw", args.latency_rate,
                args.latency_seconds)
            run("latency fifo (alone)", latency_case, "latfifo", "fifo", args.latency_rate,
                args.latency_seconds)
            if args.nagios_latency_rate:
                run("latency -> nagios fifo", latency_case, "latnagios", "nagios",
                    args.nagios_latency_rate, args.nagios_latency_seconds)
            run("bridge fifo (alone) again", bridge_throughput_case, "bfifo2", "command_file", False)
        report(env, results, started)
        return 0
    finally:
        nagios.stop()
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
