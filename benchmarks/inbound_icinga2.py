"""Inbound throughput into Icinga 2 through its API vs. into Nagios 4 through its command FIFO.

    .venv/bin/python benchmarks/inbound_icinga2.py [--count 2000] [--runs 3] [--hosts 10] [--services 100]

One real ActiveMQ, one real Nagios 4 (benchmarks/inbound.py's central_nagios) and one real
Icinga 2 (tests/sandbox/icinga2.py: Debian's 2.13, the same hosts x passive services, the
bridge logging in as an ApiUser with the four permissions core-config prints) are started in a
temp dir on 127.0.0.1; then, --runs times, alternating:

  bridge -> nagios fifo    benchmarks/inbound.py's case of that name: N WLCG messages preloaded
                           on a queue, the bridge (writer command_file) started, timed from its
                           first spooled message until nagios.log shows the N-th result.
  bridge -> icinga2 api    the same with core: icinga2 (writer api), timed from the first
                           spooled message until the inbound spool is empty: an entry is
                           deleted only once Icinga answered 200 for its object, and Icinga
                           processes a result before it answers. Afterwards /v1/objects is
                           checked: every service must show the last result sent for it.

Prints the commit measured, each run, per case the median and range in results/s, and a
summary over the runs (common.print_summary: results/s, and the CPU of the bridge and of the
core per result in the timed window; "*" marks a run during which other processes used more
than a quarter of a CPU).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import inbound as nagios_bench  # noqa: E402
from common import POLL, Meter, SpoolWatch, code_fingerprint, cpu_us_per, print_summary, temp_dir  # noqa: E402
from inbound import Env, bridge_throughput_case, central_nagios, preload, rate_of  # noqa: E402

from msg_nagios_bridge.config import Icinga2Settings  # noqa: E402
from tests.sandbox.activemq import ActiveMQ  # noqa: E402
from tests.sandbox.bridge import Bridge, bridge_config  # noqa: E402
from tests.sandbox.icinga2 import Icinga2, passive_service  # noqa: E402
from tests.sandbox.ports import descendants_of  # noqa: E402
from tests.sandbox.procfs import thread_cpu  # noqa: E402

USER, PASSWORD = "bridge", "bench-secret"
PERMISSIONS = ["events/CheckResult", "actions/process-check-result", "objects/query/Host", "objects/query/Service"]


def central_icinga(tmp: Path, args) -> Icinga2:
    objects = [passive_service(nagios_bench.host_name(h), nagios_bench.service_name(s))
               for h in range(args.hosts) for s in range(args.services)]
    return Icinga2(tmp / "icinga2", objects=objects,
                   api_users={USER: {"password": PASSWORD, "permissions": PERMISSIONS}})


def icinga_yaml(icinga: Icinga2, queue: str, prefetch=None, connections=None) -> str:
    lanes = f", connections: {connections}" if connections else ""
    text = (f"core: icinga2\n"
            f"icinga2: {{port: {icinga.api_port}, ca_file: {icinga.ca_file}, user: {USER}, password: {PASSWORD},"
            f" publish: false{lanes}}}\n"
            f"inbound:\n  enabled: true\n  subscriptions: [{{destination: \"{queue}\"}}]\n"
            f"  policy: {{rules: [{{senders: ['*'], hosts: ['*'], services: ['*']}}]}}\n")
    if prefetch:
        text += f"  prefetch: {prefetch}\n"
    return text


def objects_check(icinga: Icinga2, payload) -> dict:
    """Every service's last_check_result against the last result sent for it."""
    expected = payload.last_outputs()
    reply = icinga.api("GET", "/v1/objects/services?attrs=last_check_result&attrs=host_name&attrs=name")
    shown = {(e["attrs"]["host_name"], e["attrs"]["name"]): (e["attrs"]["last_check_result"] or {}).get("output", "")
             for e in reply.body["results"]}
    good = sum(1 for key, output in expected.items() if shown.get(key, "").split("\n")[0] == output)
    return {"status_ok": good, "status_of": len(expected)}


def icinga_case(env: Env, icinga: Icinga2, name: str, connections=None) -> dict:
    args = env.args
    payload = env.payload(name)
    queue = env.queue(name)
    r = {"count": payload.count, "preload_s": preload(env.broker, queue, payload.messages(), args.case_timeout)}
    workdir = env.tmp / name
    bridge = Bridge(workdir, bridge_config(workdir, [env.broker.stomp_port], ocsp=False,
                                           inbound=icinga_yaml(icinga, queue, args.prefetch, connections)))
    t_start = time.monotonic()
    bridge.start()
    watch = SpoolWatch(workdir / "spool" / "inbound.sqlite")
    t_first = t_done = meter = None
    timeline = []
    try:
        deadline = t_start + args.case_timeout
        while time.monotonic() < deadline and bridge.proc.poll() is None:
            seq, depth, dead = watch.poll()
            now = time.monotonic()
            if t_first is None and seq > 0:
                t_first, t_first_wall = now, time.time()
                meter = Meter({"bridge": [bridge.pid], "icinga2": [icinga.pid] + descendants_of(icinga.pid),
                               "broker": [env.broker.pid]})
                threads0 = thread_cpu(bridge.pid)
            if t_first is not None and args.timeline:
                timeline.append((now - t_first, seq, seq - depth - dead))
            if seq - depth - dead >= payload.count:
                t_done = now
                break
            time.sleep(POLL if t_first else 0.005)
        r["dead"] = watch.poll()[2]
        if meter is not None:
            r.update(meter.stop())
            r["threads_cpu"] = sorted((cpu - threads0.get(t, ("", 0.0))[1]
                                       for t, (_, cpu) in thread_cpu(bridge.pid).items()), reverse=True)[:3]
    finally:
        watch.close()
        r["exit"] = bridge.stop()
        counters = bridge.status().get("counters", {})
        last_inject = bridge.status().get("last", {}).get("inject")
        if t_first is not None and last_inject:
            # Comparable to the FIFO case's end (the core has the N-th result): Icinga answered
            # 200 for the last result (marked when its lane's batch came back: a little late).
            r["answered_s"] = max(1e-6, last_inject - t_first_wall)
        r["counters"] = {k: counters.get(k, 0) for k in ("received", "injected", "written", "icinga2_no_answer",
                                                         "refused")}
    if t_done is None:
        r["incomplete"] = f"not all answered within {args.case_timeout:.0f} s: {bridge.log_text()[-1500:]}"
    r["seconds"] = max(1e-6, (t_done or time.monotonic()) - (t_first or t_start))
    if timeline:
        r["timeline"] = " ".join(f"{t:.1f}s:{spooled}/{deleted}" for t, spooled, deleted in timeline[::5])
    r.update(objects_check(icinga, payload))
    return r


def cpu_note(r) -> str:
    """CPU of the bridge and of the core in the timed window, in ms per result."""
    if "window" not in r:
        return ""
    per = 1000.0 / max(1, r["count"])
    core = "icinga2" if "icinga2_cpu" in r else "nagios"
    text = (f"; CPU in {r['window']:.2f} s: bridge {r['bridge_cpu']:.2f} s ({r['bridge_cpu'] * per:.2f} ms/result"
            f"), {core} {r[f'{core}_cpu']:.2f} s ({r[f'{core}_cpu'] * per:.2f} ms/result)")
    if "broker_cpu" in r:
        text += f", broker {r['broker_cpu']:.2f} s ({r['broker_cpu'] * per:.2f} ms/result)"
    if r.get("threads_cpu"):
        text += f", busiest bridge threads {', '.join(f'{x:.2f}' for x in r['threads_cpu'])} s"
    return text


def answered_rate(r):
    """Results/s until the core answered for the last result; None where that is not known."""
    return r["count"] / r["answered_s"] if r.get("answered_s") else None


SUMMARY_FIGURES = [
    ("results/s", rate_of, ",.0f"),
    ("results/s, until the last answer", answered_rate, ",.0f"),
    ("bridge µs CPU/result", cpu_us_per("bridge_cpu"), ".0f"),
    ("Icinga 2 µs CPU/result", cpu_us_per("icinga2_cpu"), ".0f"),
    ("Nagios µs CPU/result", cpu_us_per("nagios_cpu"), ".0f"),
]


def summary(name: str, rates) -> str:
    return (f"{name}: median {statistics.median(rates):,.0f}/s, range {min(rates):,.0f} to {max(rates):,.0f}/s"
            f" ({', '.join(f'{x:,.0f}' for x in rates)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--prefetch", type=int, default=None)
    parser.add_argument("--connections", default=str(Icinga2Settings.connections),
                        help="icinga2.connections of the bridge; a comma list runs a case per value"
                             " (default: the configuration's default, %(default)s)")
    parser.add_argument("--case-timeout", type=float, default=90.0)
    parser.add_argument("--stall-timeout", type=float, default=10.0)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--timeline", action="store_true", help="print spooled/deleted every 0.1 s")
    args = parser.parse_args()
    args.run_id = uuid.uuid4().hex[:6]
    print(f"code: {code_fingerprint()}", flush=True)
    with temp_dir("mnb-icinga2-", args.keep) as tmp:
        broker, nagios, icinga = ActiveMQ(tmp / "activemq"), central_nagios(tmp, args), central_icinga(tmp, args)
        try:
            broker.start()
            nagios.start()
            icinga.start()
            print(f"ActiveMQ, Nagios 4 and Icinga 2 up; {args.hosts * args.services} passive services each;"
                  f" N={args.count}, {args.runs} runs; load average {nagios_bench.loadavg()}", flush=True)
            env = Env(args, tmp, broker, nagios)
            lanes = [int(x) for x in args.connections.split(",")]
            print(f"icinga2.connections: {', '.join(map(str, lanes))}", flush=True)
            icinga_case(env, icinga, "warmup", lanes[-1])   # not reported: JIT of the broker, first TLS
            cases = [("bridge -> nagios fifo", lambda run: bridge_throughput_case(
                env, f"bnfifo{run}", "command_file", True))]
            cases += [("bridge -> icinga2 api" + (f", connections {n}" if len(lanes) > 1 else ""),
                       lambda run, n=n: icinga_case(env, icinga, f"bicinga{n}x{run}", n)) for n in lanes]
            results = {name: [] for name, _ in cases}

            for run in range(args.runs):
                for name, case in cases:
                    r = case(run)
                    results[name].append(r)
                    print(f"run {run + 1} {name}: {rate_of(r):,.0f} results/s ({r['count']} in {r['seconds']:.2f} s"
                          + (f", the last answered after {r['answered_s']:.2f} s = {answered_rate(r):,.0f}/s"
                             if r.get("answered_s") else "")
                          + f"; objects showing the last result {r.get('status_ok')}/{r.get('status_of')};"
                          f" dead {r.get('dead')}; {r.get('counters')}){cpu_note(r)}"
                          + (f" INCOMPLETE {r['incomplete']}" if r.get("incomplete") else "")
                          + (f"\n  spooled/deleted: {r['timeline']}" if r.get("timeline") else ""), flush=True)
            for name, rs in results.items():
                print(summary(name, [rate_of(r) for r in rs]))
            for name, rs in results.items():
                if any(r.get("answered_s") for r in rs):
                    print(summary(f"{name}, until the last answer",
                                  [answered_rate(r) for r in rs if r.get("answered_s")]))
            print_summary(results, SUMMARY_FIGURES, args.runs)
            print(f"load average at the end {nagios_bench.loadavg()}")
        finally:
            for thing in (icinga, nagios, broker):
                try:
                    thing.stop()
                except Exception as exc:  # noqa: BLE001 - stop the others
                    print(f"stopping {thing!r}: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
