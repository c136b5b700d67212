"""Central scale-out: 1, 2, 4 central bridges sharing one ActiveMQ queue, into one Nagios 4.

    .venv/bin/python benchmarks/scaleout.py [--runs 3] [--bridges 1,2,4] [--hosts 10]
                                            [--services 50] [--rounds 20] [--prefetch 100]
                                            [--unshared] [--keep]

One real ActiveMQ 5 (tests/sandbox/activemq.py) and one real Nagios 4 (hosts x services passive
services) are started in a temp dir on 127.0.0.1. For every case (N central bridges) and run,
hosts x services x rounds results, built by the site bridge's routing code (JMSXGroupID =
host!service on each), are preloaded into a queue of their own, /queue/Consumer.c<N>.VirtualTopic
.scale.r<run> (straight into the virtual topic's consumer queue: the broker's forwarding from the
topic is publish-time work, not the central side's); then N central bridges are started on it,
each with its own spool, client-id and the shared newest file (docs/scaling.md). The broker's
policy for that queue has consumersBeforeDispatchStarts=N (ActiveMQ holds dispatch until N
consumers are there, so the first one does not take every message group) and the hash-bucket
group map. Timed from the first result Nagios logs ("EXTERNAL COMMAND:
PROCESS_SERVICE_CHECK_RESULT", polled every 20 ms) until it logged the last one.

With --unshared, one more case: one bridge without inbound.shared_newest_file (its cost).

Per case: results/s and its ratio to the one-bridge rate of the same run; the CPU of every
bridge in the window (% of a core, and µs per result over all bridges), of the broker, of
Nagios and of everything else; each bridge's share of the results; and the checks: lost (sent,
never applied, not dropped as stale), applied out of order per object, duplicates, objects
showing their newest result in status.dat. Every case is measured --runs times, interleaved
(1, 2, 4, 1, 2, 4, ...); the summary gives median, min and max, and marks runs during which
other processes used more than a quarter of a CPU (disturbed). The header records the commit.

This machine has 2 cores, shared by the broker, Nagios, this benchmark and every bridge: more
bridges here add processes to the same 2 cores, so the figure shows what scale-out costs and
that it keeps order and loses nothing, not the speed-up of bridges on machines of their own.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (POLL, Meter, code_fingerprint, disturbed, fs_type, loadavg,  # noqa: E402
                    print_summary, print_table, system_busy, temp_dir)

from tests.sandbox import scaleout  # noqa: E402
from tests.sandbox.activemq import ActiveMQ  # noqa: E402
from tests.sandbox.ports import children_of  # noqa: E402
from tests.sandbox.procfs import cpu_seconds, peak_rss_mb  # noqa: E402


def policy_xml(cases) -> str:
    entries = "".join(
        f'        <policyEntry queue="Consumer.c{label}.>" messageGroupMapFactoryType="bucket"'
        f' consumersBeforeDispatchStarts="{n}" timeBeforeDispatchStarts="30000"/>\n' for label, n, _ in cases)
    return ("    <destinationPolicy>\n      <policyMap><policyEntries>\n" + entries
            + "      </policyEntries></policyMap>\n    </destinationPolicy>\n")


def name(label: str) -> str:
    n = int(label.rstrip("u"))
    return f"{n} bridge{'s' if n > 1 else ''}" + (", no shared file" if label.endswith("u") else "")


def case(args, tmp: Path, broker, nagios, label: str, run: int) -> dict:
    """``count`` bridges (label "<count>", or "<count>u": without shared_newest_file) drain
    one preloaded queue into ``nagios``."""
    count, shared = int(label.rstrip("u")), not label.endswith("u")
    work = tmp / f"r{run}-c{label}"
    queue = f"/queue/Consumer.c{label}.VirtualTopic.scale.r{run}"
    # Every case's results are newer than the last case's for the same objects: the bridges
    # share a newest-result file with this Nagios, and would rightly drop older ones as stale.
    stream = scaleout.Stream(f"s{run}c{label}", args.hosts, args.services, args.rounds, base=args.next_base)
    args.next_base += args.rounds + 1
    applied = scaleout.Applied(nagios.log_file, stream.tag)
    r = {"count": len(stream), "preload_s": stream.publish(broker, destination=queue, timeout=120)}
    bridges = [scaleout.central_bridge(work / f"central{i}", broker, nagios, i, args.prefetch, shared, queue)
               for i in range(count)]
    try:
        t_start = time.monotonic()
        for bridge in bridges:
            bridge.start()
        deadline = t_start + args.case_timeout
        t_first = meter = None
        progress, progress_at = 0, t_start
        while True:
            now = time.monotonic()
            lines = applied.poll()
            if t_first is None and lines:
                t_first = now
                cpu_first = [cpu_seconds(b.pid) for b in bridges]
                meter = Meter({"broker": [broker.pid], "nagios": [nagios.pid] + children_of(nagios.pid),
                               "bridges": [b.pid for b in bridges]}, with_children=("nagios",))
            if lines >= len(stream):
                break
            if lines != progress:
                progress, progress_at = lines, now
            if now > deadline or (t_first and now - progress_at > args.stall_timeout) \
                    or any(b.proc.poll() is not None for b in bridges):
                r["incomplete"] = f"{lines}/{len(stream)} applied after {now - t_start:.1f} s"
                break
            time.sleep(POLL)
        t_done = time.monotonic() if r.get("incomplete") else now
        if meter is None:
            raise RuntimeError(f"nothing applied in {args.case_timeout} s:\n{bridges[0].log_text()[-2000:]}")
        r.update(meter.stop())
        r["seconds"] = max(1e-6, t_done - t_first)
        r["startup_s"] = t_first - t_start
        r["bridge_cpu"] = [cpu_seconds(b.pid) - c for b, c in zip(bridges, cpu_first)]
        r["rss_mb"] = [peak_rss_mb(b.pid) for b in bridges]
    finally:
        for bridge in bridges:
            bridge.stop()
    r["received"] = [b.counter("received") for b in bridges]
    stale = sum(b.counter("stale") for b in bridges)
    r.update(applied.verdict(stream))
    # Never applied and not dropped as superseded (with no kill, stale is 0: lost = missing).
    r["lost"] = max(r["unsuperseded"], r["missing"] - stale)
    r["stale"] = stale
    r["newest_shown"] = scaleout.wait_newest_shown(nagios, stream, 5)
    r["objects"] = len(stream.objects)
    return r


def rate(r):
    return r["count"] / r["seconds"] if r.get("seconds") else 0.0


def report(args, results, started):
    print(f"\ncode: {args.fingerprint}; {args.runs} runs; {os.cpu_count()} CPUs shared with whatever else runs"
          f" (load {args.load_start} at the start); temp dir on {args.fs}")
    print(f"{args.hosts} x {args.services} objects x {args.rounds} rounds = "
          f"{args.hosts * args.services * args.rounds} results per case; prefetch {args.prefetch}\n")
    base = {run: rate(r) for (label, run), r in results.items() if label == "1"}
    rows = []
    order = [label for label, _, _ in args.cases]
    for (label, run), r in sorted(results.items(), key=lambda item: (item[0][1], order.index(item[0][0]))):
        r["x1"] = rate(r) / base[run] if base.get(run) else None
        window = r["window"]
        rows.append((name(label), run, f"{rate(r):,.0f}",
                     "-" if r["x1"] is None else f"{r['x1']:.2f}",
                     " ".join(f"{100 * c / window:.0f}%" for c in r["bridge_cpu"]),
                     f"{1e6 * sum(r['bridge_cpu']) / r['count']:.0f}",
                     f"{100 * r['broker_cpu'] / window:.0f}%", f"{100 * r['nagios_cpu'] / window:.0f}%",
                     f"{100 * r['other_cpu'] / window:.0f}%",
                     "/".join(str(x) for x in r["received"]),
                     r["lost"], r["out_of_order"], r["duplicates"], r["stale"],
                     f"{r['newest_shown']}/{r['objects']}",
                     ("DISTURBED " if disturbed(r) else "") + r.get("incomplete", "")))
    print_table(("case", "run", "results/s", "x 1", "CPU per bridge", "µs/result", "broker", "nagios",
                 "other", "received per bridge", "lost", "out of order", "dup", "stale", "newest shown",
                 "note"), rows)
    cases = {name(label): [results.get((label, run)) for run in range(1, args.runs + 1)]
             for label in order}
    print_summary(cases, [
        ("results/s", lambda r: rate(r), ",.0f"),
        ("x 1 bridge", lambda r: r.get("x1"), ".2f"),
        ("bridges µs CPU/result", lambda r: 1e6 * sum(r["bridge_cpu"]) / r["count"], ".0f"),
        ("busiest bridge % core", lambda r: 100 * max(r["bridge_cpu"]) / r["window"], ".0f"),
        ("broker % core", lambda r: 100 * r["broker_cpu"] / r["window"], ".0f"),
        ("lost", lambda r: r["lost"], "d"),
        ("out of order", lambda r: r["out_of_order"], "d"),
    ], args.runs)
    bad = [(key, r) for key, r in results.items()
           if r["lost"] or r["out_of_order"] or r["newest_shown"] != r["objects"] or r.get("incomplete")]
    print(f"\nlost, out of order, newest not shown or incomplete in {len(bad)} of {len(results)} case runs;"
          f" {time.monotonic() - started:.0f} s in all")
    return 1 if bad else 0


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bridges", default="1,2,4", help="central bridge counts, comma-separated")
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--services", type=int, default=50, help="passive services per host")
    parser.add_argument("--rounds", type=int, default=20, help="results per object per case")
    parser.add_argument("--prefetch", type=int, default=100)
    parser.add_argument("--case-timeout", type=float, default=120.0)
    parser.add_argument("--stall-timeout", type=float, default=15.0)
    parser.add_argument("--unshared", action="store_true",
                        help="also one bridge without inbound.shared_newest_file (what the file costs)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()
    args.bridges = [int(x) for x in args.bridges.split(",")]
    if args.runs < 1 or not args.bridges or min(args.bridges) < 1:
        parser.error("--runs and every --bridges count must be at least 1")
    # (label, bridges, shared file); "1" is the baseline of the "x 1" ratio
    args.cases = [(str(n), n, True) for n in dict.fromkeys([1] + args.bridges)]
    if args.unshared:
        args.cases.append(("1u", 1, False))
    return args


def main():
    args = parse_args()
    started = time.monotonic()
    args.fingerprint = code_fingerprint()
    with temp_dir("mnb-scaleout-", args.keep) as tmp:
        args.fs = fs_type(tmp)
        args.load_start = loadavg()
        busy0 = system_busy()
        time.sleep(1.0)
        if system_busy() - busy0 > 0.25:
            print("WARNING: the machine is busy before the start: figures will be disturbed", flush=True)
        broker = ActiveMQ(tmp / "activemq", extra_xml=policy_xml(args.cases))
        nagios = scaleout.central_nagios(tmp / "nagios", args.hosts, args.services)
        try:
            broker.start()
            nagios.start()
            print(f"ActiveMQ (pid {broker.pid}) and Nagios (pid {nagios.pid}, {args.hosts * args.services}"
                  f" passive services) up; temp dir {tmp}", flush=True)
            # Warm the broker's JIT (send, dispatch with groups): one short case, not reported.
            # Check times from the past on, one a round, none ahead of the clock at the end.
            args.next_base = int(time.time()) - (args.runs * len(args.cases) + 1) * (args.rounds + 1) - 10
            warm = argparse.Namespace(**{**vars(args), "rounds": 2})
            case(warm, tmp, broker, nagios, "1", 0)
            args.next_base = warm.next_base
            results = {}
            for run in range(1, args.runs + 1):
                for label, _, _ in args.cases:
                    r = results[(label, run)] = case(args, tmp, broker, nagios, label, run)
                    print(f"run {run}/{args.runs} {name(label)}: {rate(r):,.0f} results/s, received "
                          f"{r['received']}, lost {r['lost']}, out of order {r['out_of_order']}"
                          + (" (disturbed)" if disturbed(r) else "")
                          + (f" INCOMPLETE {r['incomplete']}" if r.get("incomplete") else ""), flush=True)
            return report(args, results, started)
        finally:
            nagios.stop()
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
