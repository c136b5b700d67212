"""Outbound throughput: Nagios result lines -> bridge -> ActiveMQ, against raw stomp.py, same broker.

    .venv/bin/python benchmarks/outbound.py [--count N] [--runs 3] [--size 300] [--receipt-count M]
                                            [--tx-batch 500] [--broker-opt KEY=VALUE ...] [--keep]
                                            [--broker rabbitmq] [--split-cores]
    .venv/bin/python benchmarks/outbound.py --profile {perfdata,ocsp} [--count N]

One real ActiveMQ 5.x (tests/sandbox/activemq.py: Debian package, -Xmx256M (256 MB more for each
20,000 messages a case beyond 20,000), KahaDB, STOMP on
127.0.0.1 only) is started in a temp dir and every case is measured against it --runs times
(default 3), interleaved: run 1 measures every case once in the order below, then run 2, and so
on, so that drift (the broker's JIT and KahaDB, the machine) hits all cases alike. Queues get a
fresh name per case and run, and are drained after their case, which also checks that every
message arrived. The report prints every run's rows, then per case the median, min and max of
msgs/s, of the ratio to the 1a baseline of the same run, of CPU per message and of RSS, and
marks the cases during which other processes used > 25% of a CPU, or the host ran this machine
slow (a fixed loop > 1.3x its fastest: common.slow), "disturbed"; the header
records the commit ("+dirty" when the tree differs from it) and the date.

  warm-up  (once, before run 1) raw: W = max(5000, N/2), at most 10,000, without receipts,
           twice W with the bridge's headers, 3000 with receipts in flight, 3000 in
           transactions, twice W in transactions with the bridge's frame headers (not reported; the broker's JIT
           otherwise penalises the first run's cases)
  1a       raw stomp.py 9 Connection12, persistent SEND to a queue, no receipts; then ONE final
           SEND with a receipt. Timed from the first SEND until that receipt: the broker handles
           a connection's frames in order, so the receipt proves all N+1 were stored.
  1a+hdr   the same with the bridge's 12 message headers on every frame (frame-size effect);
           "x 1a+hdr" of a bridge row: against raw stomp.py publishing the same headers without
           receipts (issue 16's point 3 with every header consumers filter on kept).
  1b       raw, persistent, a receipt per message, waiting for each before the next (context).
  1c       raw, a receipt per message with up to max_in_flight (the bridge's setting, 1000)
           unconfirmed: the bridge's delivery contract without the bridge's code.
  1d       raw STOMP transactions: BEGIN, --tx-batch SENDs, COMMIT with a receipt, commits
           pipelined; timed until the last commit's receipt (also proof of delivery).
  1d+hdr   1d with the headers of the bridge's frames (its 12-15 headers and route_seq): what
           the broker costs for the bridge's own messages; "x 1d+hdr" of a bridge row is the
           bridge's own cost (its spool, parsing, fsyncs) against that.
  bridge perfdata   `python -m msg_nagios_bridge run` (tests/sandbox/bridge.py) with only the
           perfdata source; N result lines (result_line.format_line of distinct CheckResults,
           bodies ~--size bytes after WLCG encoding) are appended to its service perfdata file.
  bridge ocsp       the same with only the OCSP FIFO source; a writer thread writes the lines
           into the FIFO in whole-line chunks of at most PIPE_BUF (4096) bytes.
  bridge perfdata, signed (rsa|ecdsa)   with --sign: the perfdata case with a route that signs
           every message (signing.cert_file/key_file: a certificate made for the run); the spool
           signs each message in its write transaction, once numbered. Reported against the
           unsigned perfdata case of the same run too.
  1a (mid-run, at the end)   the baseline again right before the bridge cases and at the end:
           the broker's rate drifts over a run (JIT, KahaDB); the ratio uses the mean of the
           run's 1a cases.

Bridge timing: from the first line written until the bridge has *published* all N, i.e. the
broker sent a RECEIPT for each and the bridge deleted it from its spool. It is observed by
polling the spool's SQLite database read-only every 20 ms: published = sqlite_sequence(messages)
- count(messages) (the AUTOINCREMENT high-water mark says how many were stored; a row is
deleted only after its receipt). status.json is only written every 5 s, and a subscriber on the
queue would add consumer work to the broker that the raw baselines do not have. "spooled" is
the moment the high-water mark reached N (the intake side alone).

Reported for each bridge: peak RSS (VmHWM from /proc/PID/status at the end of the run), its RSS
once connected and before the load (what the load adds is the difference), and CPU
seconds (utime+stime from /proc/PID/stat) during the timed window and over the whole process
life; the CPU seconds of the broker, of this process and of every other process on the machine
during each case are shown too (2 cores are shared: a busy machine disturbs the figures, and the
run warns when other processes used more than a quarter of a CPU during a case).

--profile runs the bridge *in this process* (service.Bridge, no subprocess) with a cProfile
profiler per thread (started by threading.setprofile: no code of the bridge is replaced), and
prints where each thread's time goes: the wall time of named public functions (spool put/take/
done, intake, STOMP send) and the top functions by own time.

--broker rabbitmq runs every case against one RabbitMQ 3.10 node (tests/sandbox/rabbitmq.py,
rabbitmq_stomp on 127.0.0.1) instead, the bridges with ``kind: rabbitmq``: they publish with a
receipt per message (1c's contract), not transactions (docs/rabbitmq.md), so a case 1c+hdr (1c
with the bridge's frame headers) is added and a bridge row's own-cost ratio is "x 1c+hdr". Their
``settle_seconds`` is 0: a receipted row is deleted at once, so the spool's emptiness still marks
the end (the 5 s default would only delay the deletes). On RabbitMQ 1a's final receipt comes once
that message is confirmed (written to disk); the queue stores a channel's messages in order, and
the drain checks that all N+1 are there.

--split-cores starts the broker on the first half of the CPUs and runs everything else (the raw
clients, this process, the bridges) on the other half: in MSG the brokers are other machines, and
on 2 shared cores the bridge's CPU is taken from the broker. The report prints the CPUs each side
has, as the kernel says.

With the defaults a run takes 1-1.5 minutes (--runs 3: 3-4.5 minutes); every server is stopped
by PID in a finally block.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stomp  # noqa: E402

from common import (POLL, REPO, Meter, SpoolWatch, ThreadProfiles, code_fingerprint,  # noqa: E402
                    DISTURBED, busy_others, disturbed, fs_type, loadavg, on_cpus, print_profiles,
                    print_stages, print_summary, print_table, rate, slow, slow_why, self_cpu, split_cores,
                    temp_dir, wait_connected)

from msg_nagios_bridge import config as bridge_config_mod  # noqa: E402
from msg_nagios_bridge.cores.nagios import result_line  # noqa: E402
from msg_nagios_bridge.formats import sequence  # noqa: E402
from msg_nagios_bridge.model import CheckResult  # noqa: E402
from msg_nagios_bridge.outbound.routing import Router  # noqa: E402
from tests.sandbox.activemq import ActiveMQ  # noqa: E402
from tests.sandbox.bridge import Bridge, bridge_config, feed_ocsp  # noqa: E402
from tests.sandbox.pki import Authority  # noqa: E402
from tests.sandbox.rabbitmq import RabbitMQ  # noqa: E402
from tests.sandbox.procfs import cpu_seconds, peak_rss_mb, rss_mb  # noqa: E402
from tests.sandbox.stomp_probe import StompProbe, connect  # noqa: E402


# -- payloads ----------------------------------------------------------------------------------

def make_results(count: int, size: int, router: Router, tag: str):
    """``count`` distinct HARD service results whose WLCG bodies are about ``size`` bytes."""
    now = int(time.time())

    def result(i: int, output: str) -> CheckResult:
        return CheckResult(host="wn%02d.example.org" % (i % 100), service=f"{tag[:2]}{i:06d}",
                           state=i % 4, state_type="HARD", output=output, timestamp=now,
                           perfdata="v=%04d" % (i % 10000))

    probe = router.messages(result(0, "x"), 0)[0]
    pad = max(1, size - len(probe.body) + 1)
    output = ("bench output " + "x" * pad)[:pad]
    results = [result(i, output) for i in range(count)]
    messages = [router.messages(r, 0)[0] for r in results[:200]]
    return results, messages


def raw_body(size: int) -> bytes:
    return (b"metricStatus: OK\n" + b"x" * size)[:size - 4] + b"\nEOT"


# -- raw stomp.py baselines --------------------------------------------------------------------

def raw_no_receipts(broker, destination, count, body, headers, timeout):
    """N persistent SENDs without receipts, then one with a receipt; time until that receipt."""
    conn, listener = connect(broker, auto_decode=False)
    try:
        meter = Meter({"broker": [broker.pid]})
        t0 = time.monotonic()
        for _ in range(count):
            conn.send(destination, body, headers=dict(headers))
        t_sent = time.monotonic()
        conn.send(destination, body, headers={**headers, "receipt": "last"})
        listener.wait("last", timeout)
        t1 = time.monotonic()
        return {"count": count + 1, "seconds": t1 - t0, "sent_in": t_sent - t0, **meter.stop()}
    finally:
        conn.disconnect()


def raw_receipt_each(broker, destination, count, body, headers, timeout):
    """A receipt per message, waiting for each before sending the next."""
    conn, listener = connect(broker, auto_decode=False)
    try:
        meter = Meter({"broker": [broker.pid]})
        t0 = time.monotonic()
        for i in range(count):
            receipt = f"r{i}"
            conn.send(destination, body, headers={**headers, "receipt": receipt})
            listener.wait(receipt, timeout)
        t1 = time.monotonic()
        return {"count": count, "seconds": t1 - t0, **meter.stop()}
    finally:
        conn.disconnect()


def raw_receipt_window(broker, destination, count, body, headers, timeout, window):
    """A receipt per message with up to ``window`` in flight: the bridge's contract, minimal code."""
    conn, listener = connect(broker, auto_decode=False)
    try:
        meter = Meter({"broker": [broker.pid]})
        t0 = time.monotonic()
        sent = confirmed = 0
        while confirmed < count:
            while sent < count and sent - confirmed < window:
                conn.send(destination, body, headers={**headers, "receipt": f"w{sent}"})
                sent += 1
            confirmed = listener.wait_count(confirmed, timeout)
        t1 = time.monotonic()
        return {"count": count, "seconds": t1 - t0, **meter.stop()}
    finally:
        conn.disconnect()


def raw_transactions(broker, destination, count, body, headers, timeout, batch):
    """BEGIN, ``batch`` SENDs, COMMIT with a receipt; commits pipelined; time until the last one."""
    conn, listener = connect(broker, auto_decode=False)
    try:
        meter = Meter({"broker": [broker.pid]})
        t0 = time.monotonic()
        last = None
        for start in range(0, count, batch):
            tx = conn.begin()
            for _ in range(min(batch, count - start)):
                conn.send(destination, body, headers={**headers, "transaction": tx})
            last = f"c{start}"
            conn.commit(tx, headers={"receipt": last})
        listener.wait(last, timeout)
        t1 = time.monotonic()
        return {"count": count, "seconds": t1 - t0, **meter.stop()}
    finally:
        conn.disconnect()


def drain(broker, destination, expected, timeout, key=None, counted_header=None):
    """Consume the queue (auto ack, prefetch 1000); return (received, distinct by ``key``), and
    with ``counted_header`` how many carried that header as well."""
    probe = StompProbe(broker, destination, ack="auto", prefetch=1000)
    probe.start()
    try:
        deadline = time.monotonic() + timeout
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            got = len(probe.messages)
            if got >= expected:
                time.sleep(0.3)   # a duplicate (at-least-once) would arrive right behind
                break
            if got != last:
                last, last_change = got, time.monotonic()
            elif time.monotonic() - last_change > 5:
                break
            time.sleep(0.05)
        messages = probe.messages
    finally:
        probe.close()
    distinct = len({m.headers.get(key) for m in messages}) if key else len(messages)
    if counted_header:
        return len(messages), distinct, sum(1 for m in messages if counted_header in m.headers)
    return len(messages), distinct


# -- the bridge --------------------------------------------------------------------------------

def write_perfdata(path: Path, lines, chunk_lines: int):
    with open(path, "ab") as handle:
        for start in range(0, len(lines), chunk_lines):
            handle.write(b"".join(lines[start:start + chunk_lines]))
            handle.flush()


def bridge_case(broker, workdir: Path, source: str, destination: str, lines, args, signing=None):
    """Run one bridge process with one source; time N lines from first write to all published.
    ``signing``: (cert_file, key_file) for a route that signs every message."""
    count = len(lines)
    text = bridge_config(workdir, [broker.stomp_port], ocsp=source == "ocsp",
                         perfdata=source == "perfdata", destination=destination,
                         **dict(args.broker_opt))
    if signing:
        text = text.replace("host_checks: true}", "host_checks: true, sign: true}", 1) + \
            f"signing: {{cert_file: {signing[0]}, key_file: {signing[1]}}}\n"
    bridge = Bridge(workdir, text, python=args.bridge_python)
    fifo = workdir / "ocsp.fifo"
    result = {"count": count}
    watch = SpoolWatch(workdir / "spool" / "outbound.sqlite")
    try:
        bridge.start(wait_for=fifo if source == "ocsp" else None)
        wait_connected(bridge)
        time.sleep(0.3)
        pid = bridge.pid
        result["idle_rss_mb"] = rss_mb(pid)         # connected, before the load: what the load adds
        meter = Meter({"broker": [broker.pid], "bridge": [pid]})
        if source == "perfdata":
            writer = threading.Thread(target=write_perfdata,
                                      args=(workdir / "service-perfdata", lines, args.chunk_lines))
        else:
            writer = threading.Thread(target=feed_ocsp, args=(fifo, lines))
        t0 = time.monotonic()
        writer.start()
        spooled_at = written_at = None
        deadline = t0 + args.case_timeout
        published = 0
        while True:
            now = time.monotonic()
            if written_at is None and not writer.is_alive():
                written_at = now
            seq, depth, dead = watch.poll()
            published = seq - depth - dead
            if spooled_at is None and seq >= count:
                spooled_at = now
            if seq >= count and depth == 0:
                break
            if now > deadline or bridge.proc.poll() is not None:
                result["incomplete"] = f"{published}/{count} published after {now - t0:.1f} s"
                break
            time.sleep(POLL)
        t1 = time.monotonic()
        writer.join(30)
        result.update(
            seconds=t1 - t0, published=published, dead=dead,
            written_in=(written_at or t1) - t0, spooled_in=(spooled_at or t1) - t0,
            **meter.stop())
        if result.get("incomplete"):
            result["count"] = published
        result["bridge_cpu_total"] = cpu_seconds(pid)
        result["rss_mb"] = peak_rss_mb(pid)
    finally:
        watch.close()
        code = bridge.stop()
        result["exit"] = code
    if signing:
        received, distinct, result["signed"] = drain(broker, destination, count, args.case_timeout,
                                                     key="result_id", counted_header="signed-headers")
    else:
        received, distinct = drain(broker, destination, count, args.case_timeout, key="result_id")
    result["received"], result["distinct"] = received, distinct
    return result


# -- report ------------------------------------------------------------------------------------

def same_frames_case(args) -> str:
    """The raw case sending the bridge's own frames the way the bridge sends them on this broker."""
    return "1c+hdr" if args.broker == "rabbitmq" else "1d+hdr"


def summary_figures(args):
    return [
        ("msgs/s", rate, ",.0f"),
        ("x 1a", lambda r: r.get("x_1a"), ".2f"),
        ("x 1a+hdr", lambda r: r.get("x_1a_headers"), ".2f"),
        (f"x {same_frames_case(args)}", lambda r: r.get("x_same_frames"), ".2f"),
        ("us CPU/msg", lambda r: r.get("us_per_msg"), ".0f"),
        ("bridge RSS MB", lambda r: r.get("rss_mb"), ".0f"),
        ("bridge RSS MB idle", lambda r: r.get("idle_rss_mb"), ".0f"),
    ]


def report(results, args, broker, body_sizes):
    """``results``: [(case name, run number, result)] in the order measured."""
    baselines = {}          # run number -> mean 1a msgs/s of that run
    for n in sorted({n for _, n, _ in results}):
        values = [rate(r) for name, k, r in results if k == n and name.startswith("1a raw")]
        baselines[n] = statistics.mean(values) if values else 0.0
    own = same_frames_case(args)
    same_frames = {n: rate(r) for name, n, r in results if name.startswith(own)}
    same_headers = {n: rate(r) for name, n, r in results if name.startswith("1a+hdr")}
    for name, n, r in results:
        if baselines.get(n):
            r["x_1a"] = rate(r) / baselines[n]
        if name.startswith("bridge") and same_frames.get(n):
            r["x_same_frames"] = rate(r) / same_frames[n]
        if name.startswith("bridge") and same_headers.get(n):
            r["x_1a_headers"] = rate(r) / same_headers[n]
        if "bridge_cpu" in r:
            r["us_per_msg"] = 1e6 * r["bridge_cpu"] / max(1, r["count"])
    order = list(dict.fromkeys(name for name, _, _ in results))
    rows = sorted(results, key=lambda x: (order.index(x[0]), x[1]))
    print()
    print(f"{broker_description(args)} pid {broker.pid}; {os.cpu_count()} CPUs;"
          f" Python {platform.python_version()}, stomp.py {stomp.__version__}")
    print(f"code: {args.code}; bridge max_in_flight {args.window}")
    if args.split_cores:
        print(args.cpus)
    print(f"bridges run by {args.bridge_python or sys.executable}: {args.bridge_libraries}")
    print(f"bodies: raw {body_sizes[0]} B; bridge WLCG {body_sizes[1]} B mean "
          f"(+ {body_sizes[2]} B of the bridge's 12 headers per frame)")
    print(f"{args.runs} runs, cases interleaved; load average at start {args.load_start}, at end {loadavg()}")
    for n, baseline in baselines.items():
        runs = [rate(r) for name, k, r in results if k == n and name.startswith("1a raw")]
        print(f"run {n}: baseline 1a = mean of its {len(runs)} 1a cases = {baseline:,.0f} msgs/s (they "
              f"range {min(runs):,.0f}-{max(runs):,.0f}: the broker is noisy)")
    print("bridge target >= 0.8x 1a (x 1a: over the baseline of the same run)")
    print()
    head = ("case", "run", "N", "seconds", "msgs/s", "x 1a", "bridge RSS", "bridge CPU s",
            "us CPU/msg", "broker CPU s", "bench CPU s", "other CPU s")
    table, notes = [], []
    for name, n, r in rows:
        bridge = "bridge_cpu" in r
        table.append((
            name, n, f"{r['count']}", f"{r['seconds']:.2f}", f"{rate(r):,.0f}",
            f"{r['x_1a']:.2f}x" if "x_1a" in r else "",
            f"{r['rss_mb']:.0f} MB" if "rss_mb" in r else "",
            f"{r['bridge_cpu']:.2f} ({r['bridge_cpu_total']:.2f})" if bridge else "",
            f"{r['us_per_msg']:.0f}" if bridge else "",
            f"{r['broker_cpu']:.2f}", f"{r['bench_cpu']:.2f}",
            f"{r['other_cpu']:.2f}" + (" *" if disturbed(r) else "")))
        note = []
        if "sent_in" in r:
            note.append(f"all SENDs written after {r['sent_in']:.2f} s")
        if "spooled_in" in r:
            note.append(f"all lines written after {r['written_in']:.2f} s, "
                        f"all spooled after {r['spooled_in']:.2f} s")
        if "received" in r:
            got = r.get("distinct") or r["received"]
            dup = r["received"] - r["distinct"] if r.get("distinct") is not None else 0
            note.append(f"queue drained afterwards: {got}/{r['count']} "
                        f"{'ok' if got >= r['count'] else 'MISSING'}" + (f", {dup} duplicates" if dup else ""))
        if "signed" in r:
            note.append(f"signed: {r['signed']}/{r['received']} {'ok' if r['signed'] == r['received'] else 'UNSIGNED'}")
        if r.get("dead"):
            note.append(f"{r['dead']} dead letters")
        if busy_others(r):
            note.append(f"DISTURBED: other processes used {r['other_cpu']:.2f} CPU s in {r['window']:.2f} s")
        if slow(r):
            note.append("DISTURBED: " + slow_why(r))
        if r.get("incomplete"):
            note.append("INCOMPLETE: " + r["incomplete"])
        if r.get("exit") not in (None, 0):
            note.append(f"bridge exit code {r['exit']}")
        notes.append((f"{name} #{n}", note))
    print_table(head, table)
    print()
    for name, note in notes:
        if note:
            print(f"  {name}: " + "; ".join(note))
    print(f"\n(other CPU s: * = disturbed: {DISTURBED} during the case)")
    cases = {name: [next((r for c, k, r in results if c == name and k == n), None)
                    for n in range(1, args.runs + 1)] for name in order}
    print_summary(cases, summary_figures(args), args.runs)
    values = list(baselines.values())
    print(f"baseline 1a (mean of a run's 1a cases): median {statistics.median(values):,.0f} msgs/s, "
          f"range {min(values):,.0f}-{max(values):,.0f}")
    for source in ("perfdata", "ocsp"):
        ratios = [r["x_1a"] for r in cases.get(f"bridge {source}", []) if r and "x_1a" in r]
        if ratios:
            median = statistics.median(ratios)
            print(f"target (issue 16): bridge {source} >= 0.8x 1a: median {median:.2f}x "
                  f"({min(ratios):.2f}-{max(ratios):.2f}x), {'meets' if median >= 0.8 else 'falls short of'} it")
        ratios = [r["x_1a_headers"] for r in cases.get(f"bridge {source}", []) if r and "x_1a_headers" in r]
        if ratios:
            print(f"  with the same headers: bridge {source} / 1a+hdr (raw stomp.py publishing the bridge's"
                  f" message headers without receipts): median {statistics.median(ratios):.2f}x"
                  f" ({min(ratios):.2f}-{max(ratios):.2f}x)")
        ratios = [r["x_same_frames"] for r in cases.get(f"bridge {source}", []) if r and "x_same_frames" in r]
        if ratios:
            how = f"a receipt each, {args.window} in flight" if own == "1c+hdr" else "transactions"
            print(f"  the bridge's own cost: bridge {source} / {own} (raw stomp.py sending the bridge's frames,"
                  f" headers and {how}): median {statistics.median(ratios):.2f}x"
                  f" ({min(ratios):.2f}-{max(ratios):.2f}x)")
    signed = next((name for name in cases if name.startswith("bridge perfdata, signed")), None)
    if signed:
        pairs = [(s, u) for s, u in zip(cases[signed], cases["bridge perfdata"]) if s and u]
        ratios = [rate(s) / rate(u) for s, u in pairs if rate(u)]
        extra = [s["us_per_msg"] - u["us_per_msg"] for s, u in pairs if "us_per_msg" in s and "us_per_msg" in u]
        if ratios:
            print(f"{signed} / bridge perfdata of the same run: median {statistics.median(ratios):.2f}x"
                  f" ({min(ratios):.2f}-{max(ratios):.2f}x); the bridge's CPU per message"
                  f" {statistics.median(extra):+.0f} us ({min(extra):+.0f} to {max(extra):+.0f})")
    print("""
How measured: 1a/1a+hdr: (N+1) / time from the first SEND until the RECEIPT of one final SEND
  (the broker handles a connection's frames in order). 1b: N / time, waiting for each receipt.
  1c: receipt per message, up to max_in_flight unconfirmed (what the bridge does, minus the
  bridge). 1d: STOMP transactions (BEGIN, SENDs, COMMIT with receipt), commits pipelined.
  bridge: N / time from the first line written until the spool had stored N and held none
  (a row is deleted only after its broker RECEIPT), polled read-only every 20 ms.
  bridge CPU s: during the timed window (whole process life); RSS = VmHWM at the end; idle RSS =
  VmRSS once connected, before the first line.
  bench CPU s: this process (the raw client, or the line writer + spool poller).
  other CPU s: all other processes on the machine during the case (should be ~0).""")


# -- profile mode ------------------------------------------------------------------------------

PROFILE_STAGES = [
    ("spool.put (txn + fsync)", "msg_nagios_bridge.spool:Spool.put"),
    ("spool.take (SELECT)", "msg_nagios_bridge.spool:Spool.take"),
    ("spool.done (DELETE + fsync)", "msg_nagios_bridge.spool:Spool.done"),
    ("intake.spool_lines (parse+route+put)", "msg_nagios_bridge.outbound.intake:Intake.spool_lines"),
    ("broker.send_stored (SEND frame)", "msg_nagios_bridge.broker.connection:BrokerConnection.send_stored"),
]


def profile_mode(broker, tmp: Path, args, results_for):
    """Run service.Bridge in this process, with a cProfile profiler per thread."""
    import logging
    from msg_nagios_bridge.daemon import service
    from msg_nagios_bridge import paths

    logging.basicConfig(level=logging.WARNING)
    source = args.profile
    workdir = tmp / f"profile-{source}"
    destination = f"/queue/bench.profile.{source}.{args.run_id}"
    workdir.mkdir()
    (workdir / "bridge.yaml").write_text(bridge_config(
        workdir, [broker.stomp_port], ocsp=source == "ocsp", perfdata=source == "perfdata",
        destination=destination, **dict(args.broker_opt)))
    settings = bridge_config_mod.load(str(workdir / "bridge.yaml"))
    lines = results_for(settings, "pc")
    with ThreadProfiles() as profiler:
        bridge = service.Bridge(settings)
        try:
            bridge.start()
            deadline = time.monotonic() + 20
            while not bridge.publisher.broker.is_connected and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            cpu0 = self_cpu()
            watch = SpoolWatch(Path(paths.outbound_spool_path(settings)))
            if source == "perfdata":
                writer = threading.Thread(target=write_perfdata, name="bench-writer",
                                          args=(Path(settings.perfdata.service_file), lines,
                                                args.chunk_lines))
            else:
                writer = threading.Thread(target=feed_ocsp, name="bench-writer",
                                          args=(Path(settings.ocsp_pipe.path), lines))
            t0 = time.monotonic()
            writer.start()
            spooled_at = None
            while time.monotonic() - t0 < args.case_timeout:
                seq, depth, dead = watch.poll()
                if spooled_at is None and seq >= len(lines):
                    spooled_at = time.monotonic() - t0
                if seq >= len(lines) and depth == 0:
                    break
                time.sleep(POLL)
            elapsed = time.monotonic() - t0
            cpu = self_cpu() - cpu0
            watch.close()
            writer.join()
        finally:
            bridge.stop()
    print(f"\n=== profile {source}: {len(lines)} results in {elapsed:.2f} s = "
          f"{len(lines) / elapsed:,.0f} msgs/s under cProfile (all spooled after "
          f"{spooled_at or float('nan'):.2f} s); process CPU {cpu:.2f} s (incl. the watcher/writer)")
    print_stages(profiler.profiles, PROFILE_STAGES, elapsed)
    print_profiles(profiler.profiles, args.profile_top)
    drain(broker, destination, len(lines), args.case_timeout, key="result_id")


# -- main --------------------------------------------------------------------------------------

def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="messages per case (default 20000)")
    parser.add_argument("--runs", type=int, default=3,
                        help="measure every case this many times, interleaved (default 3)")
    parser.add_argument("--size", type=int, default=300, help="message body bytes (default 300)")
    parser.add_argument("--receipt-count", type=int, default=None,
                        help="messages for 1b, a receipt awaited each (default min(count, 5000))")
    parser.add_argument("--tx-batch", type=int, default=500,
                        help="messages per STOMP transaction in case 1d (default 500)")
    parser.add_argument("--chunk-lines", type=int, default=100,
                        help="lines per write()+flush() into the perfdata file (default 100)")
    parser.add_argument("--case-timeout", type=float, default=60.0,
                        help="give up on one case after this many seconds (default 60)")
    parser.add_argument("--broker-opt", action="append", default=[], metavar="KEY=VALUE",
                        type=lambda s: tuple(s.split("=", 1)),
                        help="extra bridge brokers: setting, e.g. max_in_flight=2000")
    parser.add_argument("--profile", choices=("perfdata", "ocsp"),
                        help="profile the bridge in-process instead of the benchmark")
    parser.add_argument("--profile-top", type=int, default=18)
    parser.add_argument("--sign", choices=("rsa", "ecdsa"),
                        help="add a case: the perfdata bridge with a route that signs every message"
                             " (an RSA 2048 or ECDSA P-256 certificate made for the run)")
    parser.add_argument("--bridge-python", metavar="PATH",
                        help="run the bridges with this interpreter instead of this one's, e.g."
                             " /usr/bin/python3: Debian's python3-stomp, -yaml and -cryptography,"
                             " as the Debian package runs it (the raw cases stay in this process)")
    parser.add_argument("--broker", choices=("activemq", "rabbitmq"), default="activemq",
                        help="the broker of every case (default activemq); rabbitmq: the bridges"
                             " with kind: rabbitmq and settle_seconds: 0")
    parser.add_argument("--split-cores", action="store_true",
                        help="the broker on one half of the CPUs, the bridges and raw clients on the other"
                             " (in MSG the brokers are other machines)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, spools)")
    args = parser.parse_args()
    if args.broker == "rabbitmq":
        args.broker_opt = [("kind", "rabbitmq"), ("settle_seconds", "0"), *args.broker_opt]
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    args.receipt_count = args.receipt_count or min(args.count, 5000)
    args.run_id = uuid.uuid4().hex[:8]
    args.bridge_libraries = library_versions(args.bridge_python or sys.executable)
    args.code = code_fingerprint()      # now, not at the report: the bridges run the code of the start
    return args


def cpu_list(pid: int) -> str:
    """The CPUs ``pid``'s main thread may run on, as the kernel has it."""
    return ",".join(map(str, sorted(os.sched_getaffinity(pid))))


def broker_description(args) -> str:
    if args.broker == "rabbitmq":
        return f"RabbitMQ (rabbitmq_stomp, Mnesia and message store on {args.fs})"
    return f"ActiveMQ 5.x (-Xmx{activemq_heap_mb(args.count)}M, KahaDB on {args.fs})"


def activemq_heap_mb(count: int) -> int:
    """The broker's heap: 256 MB (the sandbox's) up to 20,000 messages a case, 256 MB more for
    each 20,000 beyond: a case's messages wait in its queue until drained, and 60,000 of them
    with the bridge's headers ran 256 MB out (OutOfMemoryError in the broker's log)."""
    return 256 * max(1, -(-count // 20_000))


def library_versions(python: str) -> str:
    """The Python, stomp.py and cryptography versions ``python`` runs the bridge with (from the
    repository, as tests/sandbox/bridge.py starts it): a wheel's cryptography carries its own
    OpenSSL, Debian's uses the system's, and memory figures differ by it."""
    probe = ("import platform, stomp\n"
             "v = stomp.__version__; v = '.'.join(map(str, v)) if isinstance(v, tuple) else v\n"
             "try:\n import cryptography; c = cryptography.__version__\n"
             "except ImportError:\n c = 'not installed'\n"
             "print(f'Python {platform.python_version()}, stomp.py {v}, cryptography {c}')")
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, cwd=str(REPO), timeout=60)
    if done.returncode != 0:
        raise SystemExit(f"{python} cannot run the bridge: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


def main():
    args = parse_args()
    with temp_dir("mnb-outbound-", args.keep) as tmp:
        return run(args, tmp, time.monotonic())


def run(args, tmp: Path, started: float):
    args.fs = fs_type(tmp)
    args.load_start = loadavg()
    if args.broker == "rabbitmq":
        broker = RabbitMQ(tmp / "rabbitmq")
    else:
        broker = ActiveMQ(tmp / "activemq", heap_mb=activemq_heap_mb(args.count))
    far, near = split_cores(args)
    try:
        with on_cpus(far):
            broker.start()
        if near:        # the rest of the run: the raw clients' threads and the bridges inherit it
            os.sched_setaffinity(0, near)
            args.cpus = (f"split cores: the broker on CPU(s) {cpu_list(broker.pid)}, the bridges and raw"
                         f" clients on {cpu_list(os.getpid())}")
        print(f"{broker_description(args)} up in {broker.started_in:.1f} s (pid {broker.pid}, STOMP "
              f"127.0.0.1:{broker.stomp_port}); temp dir {tmp} ({args.fs})", flush=True)
        example_dir = tmp / "example"
        example_dir.mkdir()
        (example_dir / "bridge.yaml").write_text(bridge_config(
            example_dir, [broker.stomp_port], ocsp=False, perfdata=True, destination="/queue/x"))
        example_settings = bridge_config_mod.load(str(example_dir / "bridge.yaml"))
        (example_dir / "opts.yaml").write_text(bridge_config(
            example_dir, [broker.stomp_port], ocsp=False, perfdata=True, destination="/queue/x",
            **dict(args.broker_opt)))
        args.window = bridge_config_mod.load(str(example_dir / "opts.yaml")).brokers.max_in_flight
        args.signing = None
        if args.sign:
            args.signing = Authority(tmp / "pki").issue("signer", "bench-signer.example.org", client=True,
                                                        key_type="rsa" if args.sign == "rsa" else "ec")

        def results_for(settings, tag):
            results, _ = make_results(args.count, args.size, Router(settings), tag)
            return [(result_line.format_line(r) + "\n").encode() for r in results]

        _, sample = make_results(200, args.size, Router(example_settings), "sample")
        bridge_headers = dict(sample[0].headers)
        # What the bridge's frames carry besides: the number its spool gives (formats/sequence.py).
        frame_headers = {**bridge_headers, sequence.SEQ_HEADER: sequence.stamp_text(sequence.new_epoch(), 123456)}
        body_sizes = (args.size, round(statistics.mean(len(m.body) for m in sample)),
                      len(json.dumps(bridge_headers)))

        body = raw_body(args.size)
        plain = {"persistent": "true", "content-type": "text/plain"}
        q = lambda name: f"/queue/bench.{name}.{args.run_id}"
        timeout = args.case_timeout

        # The broker's JIT needs warming on every path measured, or the first case pays for it:
        # the bridge's headers too (JMS properties), or run 1's 1a+hdr, the baseline of point 3,
        # ran cold at 11,200-12,500 msgs/s against 14,800-16,600 in runs 2 and 3 (2026-12-07,
        # 4 sets), and every --runs 1 set it against a cold baseline.
        # At most 10,000 (the default count's): the warm-up's 56,000 messages wait in one queue
        # until drained, and at --count 60000 its 160,000 ran ActiveMQ's 256 MB heap out.
        warm_n = min(max(5000, args.count // 2), 10_000)
        warm = [raw_no_receipts(broker, q("warmup"), warm_n, body, plain, timeout),
                raw_no_receipts(broker, q("warmup"), 2 * warm_n, body, bridge_headers, timeout),
                raw_receipt_window(broker, q("warmup"), 3000, body, plain, timeout, window=1000),
                raw_transactions(broker, q("warmup"), 3000, body, plain, timeout, batch=500),
                raw_transactions(broker, q("warmup"), 2 * warm_n, body, frame_headers, timeout, batch=500)]
        drain(broker, q("warmup"), sum(r["count"] for r in warm), timeout)
        print("warm-up (not reported): " + ", ".join(f"{rate(r):,.0f}" for r in warm) + " msgs/s",
              flush=True)

        if args.profile:
            profile_mode(broker, tmp, args, results_for)
            return 0

        results = []            # (case name, run number, result), in the order measured
        for number in range(1, args.runs + 1):
            def raw(name, queue, fn, n, headers):
                r = fn(broker, queue, n, body, headers, timeout)
                r["received"], _ = drain(broker, queue, r["count"], timeout)
                r["distinct"] = None
                results.append((name, number, r))
                print(f"run {number}/{args.runs} {name}: {rate(r):,.0f} msgs/s"
                      + (" (disturbed)" if disturbed(r) else ""), flush=True)

            rq = lambda name: q(f"{name}.r{number}")     # noqa: E731 - a queue of this run
            raw("1a raw no receipts", rq("raw1"), raw_no_receipts, args.count, plain)
            raw("1a+hdr raw, bridge headers", rq("rawhdr"), raw_no_receipts, args.count,
                {**bridge_headers})
            raw("1b raw receipt each, waited", rq("rawrcpt"), raw_receipt_each, args.receipt_count, plain)
            window = args.window
            raw(f"1c raw receipt each, {window} in flight", rq("rawwin"),
                lambda *a: raw_receipt_window(*a, window=window), args.count, plain)
            raw(f"1d raw transactions of {args.tx_batch}", rq("rawtx"),
                lambda *a: raw_transactions(*a, batch=args.tx_batch), args.count, plain)
            raw(f"1d+hdr raw transactions of {args.tx_batch}, the bridge's headers", rq("rawtxhdr"),
                lambda *a: raw_transactions(*a, batch=args.tx_batch), args.count, frame_headers)
            if args.broker == "rabbitmq":
                raw(f"1c+hdr raw receipt each, {window} in flight, the bridge's headers", rq("rawwinhdr"),
                    lambda *a: raw_receipt_window(*a, window=window), args.count, frame_headers)
            raw("1a raw no receipts (mid-run)", rq("rawmid"), raw_no_receipts, args.count, plain)
            bridges = [("perfdata", "perfdata", None), ("ocsp", "ocsp", None)]
            if args.signing:
                bridges.append((f"perfdata, signed ({args.sign})", "perfdata", args.signing))
            for case, source, signing in bridges:
                workdir = tmp / f"bridge-{source}{'-signed' if signing else ''}-r{number}"
                lines = results_for(example_settings, source)   # same site/route: same bodies
                r = bridge_case(broker, workdir, source, rq(f"bridge.{source}{'.signed' if signing else ''}"),
                                lines, args, signing)
                results.append((f"bridge {case}", number, r))
                print(f"run {number}/{args.runs} bridge {case}: {rate(r):,.0f} msgs/s"
                      + (" (disturbed)" if disturbed(r) else ""), flush=True)
            raw("1a raw no receipts (at the end)", rq("raw2"), raw_no_receipts, args.count, plain)

        report(results, args, broker, body_sizes)
        print(f"\ntotal run time {time.monotonic() - started:.0f} s")
        return 0
    finally:
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
