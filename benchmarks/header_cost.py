"""What the headers of a message cost ActiveMQ: raw STOMP transactions with several header sets.

    .venv/bin/python benchmarks/header_cost.py [--count 20000] [--runs 3]

One real ActiveMQ (tests/sandbox/activemq.py). Every case sends --count persistent 300-byte
messages in transactions of 500 from raw stomp.py (the bridge's way of publishing, without the
bridge), interleaved over --runs, and reports msgs/s and the broker's CPU per message (utime +
stime of its process over the case). The sets:

  plain        persistent and content-type only (outbound.py's 1a/1d baselines)
  bridge       the headers of a bridge's frame (a real route's, with route_seq)
  -group       the bridge's without JMSXGroupID (route option message_group: false)
  -expires     the bridge's without expires (a route without ttl)
  filterable   only what consumers select on (site, role, nagios_host, vo, metric, status) and
               what the bridge itself needs (persistent, result_id, route_seq, JMSXGroupID,
               expires): the bridge's without content-type, host, state_type, check_time, route

It answers why the bridge cannot publish at 0.8x of raw stomp.py with two headers (issue 16,
docs/performance.md "Outbound"): the broker's work grows with every header.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import code_fingerprint, disturbed, print_summary, rate  # noqa: E402
import outbound  # noqa: E402
from msg_nagios_bridge.formats import sequence  # noqa: E402
from tests.sandbox.activemq import ActiveMQ  # noqa: E402

UNFILTERED = ("content-type", "host", "state_type", "check_time", "route")


def header_sets(bridge):
    drop = lambda *names: {k: v for k, v in bridge.items() if k not in names}  # noqa: E731
    return {
        "plain": {"persistent": "true", "content-type": "text/plain"},
        "bridge": bridge,
        "-group": drop("JMSXGroupID"),
        "-expires": drop("expires"),
        "filterable": drop(*UNFILTERED),
    }


def bridge_frame_headers():
    """A bridge route's headers (as Router makes them, with a ttl and a message group) and the
    route_seq its spool adds."""
    from msg_nagios_bridge.model import CheckResult
    from msg_nagios_bridge.outbound.routing import build_message
    from msg_nagios_bridge.config import Route, Site
    site = Site(name="SITE_A", nagios_name="nagios.site-a.example.org", role="site", vo="ops")
    route = Route(name="results", destination="/topic/grid.probe.metricOutput.EGEE.{role}.{site}", ttl=86400)
    result = CheckResult(host="ce01.site-a.example.org", service="org.sam.CE-JobSubmit", state=0,
                         output="OK: job submitted", timestamp=time.time())
    headers = dict(build_message(route, site, result, int(time.time() * 1000)).headers)
    headers[sequence.SEQ_HEADER] = sequence.stamp_text(sequence.new_epoch(), 123456)
    return headers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args()
    print(f"code: {code_fingerprint()}", flush=True)
    sets = header_sets(bridge_frame_headers())
    body = outbound.raw_body(300)
    cases = {name: [] for name in sets}
    with tempfile.TemporaryDirectory(prefix="mnb-headers-") as tmp:
        broker = ActiveMQ(Path(tmp) / "activemq")
        broker.start()
        try:
            warm = outbound.raw_transactions(broker, "/queue/warm", 10000, body, sets["bridge"], args.timeout, 500)
            outbound.drain(broker, "/queue/warm", warm["count"], args.timeout)
            for number in range(1, args.runs + 1):
                for name, headers in sets.items():
                    queue = f"/queue/headers.{number}.{len(cases[name])}.{abs(hash(name))}"
                    r = outbound.raw_transactions(broker, queue, args.count, body, headers, args.timeout, 500)
                    r["received"], _ = outbound.drain(broker, queue, r["count"], args.timeout)
                    if r["received"] < r["count"]:
                        raise SystemExit(f"{name}: {r['received']} of {r['count']} arrived")
                    r["broker_us"] = 1e6 * r["broker_cpu"] / r["count"]
                    r["headers"] = len(headers)
                    cases[name].append(r)
                    print(f"run {number} {name} ({len(headers)} headers): {rate(r):,.0f} msgs/s, broker"
                          f" {r['broker_us']:.0f} us CPU per message" + (" (disturbed)" if disturbed(r) else ""),
                          flush=True)
        finally:
            broker.stop()
    print_summary(cases, [("msgs/s", rate, ",.0f"), ("broker us CPU/msg", lambda r: r["broker_us"], ".0f"),
                          ("headers", lambda r: r["headers"], "d")], args.runs)
    plain = statistics.median(r["broker_us"] for r in cases["plain"])
    for name in sets:
        if name != "plain":
            extra = statistics.median(r["broker_us"] for r in cases[name]) - plain
            per = extra / max(1, cases[name][0]["headers"] - len(sets["plain"]))
            print(f"{name}: {extra:+.0f} us of broker CPU per message over plain ({per:.1f} us per extra header)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
