"""The bridge's two publishing modes against a real RabbitMQ (rabbitmq_stomp): throughput, and
whether the last receipt means "stored".

    .venv/bin/python benchmarks/rabbitmq_publish.py [--count 20000] [--runs 3] [--size 300]

One RabbitMQ 3.10 node (tests/sandbox/rabbitmq.py: from a temp dir, STOMP on 127.0.0.1) serves
every case. The bridge's own Publisher (outbound/publisher.py, brokers.kind: rabbitmq, default
max_in_flight 1000) publishes --count messages of about --size bytes with the bridge's headers
(persistent: true) from a spool to a fresh durable queue, once per mode:

  transactions   publisher.transactions = True: BEGIN, 500 SENDs, COMMIT with a receipt
                 (what the bridge does on ActiveMQ)
  receipts       publisher.transactions = False: one receipt per SEND, up to 1000 in flight
                 (what the bridge does on RabbitMQ)
  receipts-5000  the same with brokers.max_in_flight: 5000
  receipts-each  one receipt per SEND, but one write per frame (Publisher._send_each, what the
                 publisher does while isolating a refused message), for comparison

Throughput: from the start of the publisher until it has counted every message published (a
receipt for each), msgs/s; every run checks with rabbitmqctl that the queue holds --count.
Runs are interleaved (run 1: every mode, run 2: every mode ...). The CPU of the node (beam.smp
and its helpers) and of this process (the publisher) is metered over the same window
(common.Meter), and so is what other processes used. Printed: the commit measured, each run,
then a summary per mode (common.print_summary): msgs/s and the node's and the publisher's CPU
per message, median, min, max and each run's value, "*" on a run during which other processes
used more than a quarter of a CPU.

Crash check (--crash, transactions and receipts, once per run): the queue is declared (a
subscription, closed) 3 s before; the same publish, and the moment the publisher has its last
receipt the node is killed (SIGKILL, beam.smp and its helpers); after a restart, rabbitmqctl
counts what the durable queue kept. A receipt that means "stored" loses nothing.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Meter, code_fingerprint, cpu_us_per, disturbed, loadavg, print_summary, rate  # noqa: E402
from msg_nagios_bridge.config import BrokerSettings  # noqa: E402
from msg_nagios_bridge.daemon.health import Health  # noqa: E402
from msg_nagios_bridge.model import Message  # noqa: E402
from msg_nagios_bridge.outbound.publisher import Publisher  # noqa: E402
from msg_nagios_bridge.spool import Spool  # noqa: E402
from tests.sandbox.ports import descendants_of  # noqa: E402
from tests.sandbox.rabbitmq import RabbitMQ  # noqa: E402
from tests.sandbox.stomp_probe import StompProbe  # noqa: E402

# name: (transactions?, max_in_flight, a write per frame?)
MODES = {"transactions": (True, 1000, False), "receipts": (False, 1000, False),
         "receipts-5000": (False, 5000, False), "receipts-each": (False, 1000, True)}


def messages(count: int, size: int, queue: str):
    headers = {"persistent": "true", "content-type": "text/plain", "site": "SITE-A", "role": "site",
               "nagios_host": "nagios.example.org", "host": "wn01.example.org", "metric": "org.example.Check",
               "status": "OK", "state_type": "HARD", "check_time": "1700000000", "route": "results"}
    body = (b"metricStatus: OK\nsummaryData: " + b"x" * size)[:size - 4] + b"\nEOT"
    return [Message(f"m{i}", f"/queue/{queue}", dict(headers, result_id=f"r{i}"), body) for i in range(count)]


def publish(node: RabbitMQ, workdir: Path, mode: str, queue: str, count: int, size: int, kill_at_end=False):
    """Publish ``count`` messages in ``mode``; return ({"count", "seconds", and a Meter's CPU
    figures: "node_cpu", "bench_cpu" (the publisher), "other_cpu", "window"}, messages the queue
    holds)."""
    if kill_at_end:
        # Declared (durable) well before the kill: a queue declared just before a SIGKILL was
        # once missing after the restart, messages and all (docs/rabbitmq.md).
        StompProbe(node, f"/queue/{queue}").start().close()
        time.sleep(3)
    spool = Spool(str(workdir / f"{queue}.sqlite"))
    spool.put(messages(count, size, queue))
    health = Health()
    transactions, window, write_each = MODES[mode]
    settings = BrokerSettings(hosts=(node.stomp_address,), kind="rabbitmq", receipt_timeout=60,
                              max_in_flight=window)
    publisher = Publisher(settings, spool, health, drain_timeout=1)
    publisher.transactions = transactions
    if write_each:
        publisher._send_receipted = publisher._send_each
    meter = Meter({"node": [node.pid] + descendants_of(node.pid)})
    started = time.monotonic()
    publisher.start()
    try:
        deadline = started + 300
        while health.counter("published") < count and time.monotonic() < deadline:
            time.sleep(0.002)
        r = {"count": count, "seconds": time.monotonic() - started, **meter.stop()}
        if kill_at_end:
            node.kill()
    finally:
        publisher.stop()
        publisher.join(15)
        spool.close()
    if health.counter("published") < count:
        raise RuntimeError(f"{mode}: only {health.counter('published')} of {count} published")
    if kill_at_end:
        node.start()
    held = node.queues().get(queue)
    return r, "queue missing" if held is None else held[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--crash", action="store_true", help="also the kill-after-the-last-receipt check")
    args = parser.parse_args()
    print(f"code: {code_fingerprint()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-rabbitmq-") as tmp:
        workdir = Path(tmp)
        node = RabbitMQ(workdir / "node")
        node.start()
        print(f"RabbitMQ node started in {node.started_in:.1f} s; {args.count} messages of {args.size} B, "
              f"{args.runs} runs, interleaved")
        results = {mode: [] for mode in MODES}
        kept = {mode: [] for mode in MODES}
        try:
            for run in range(1, args.runs + 1):
                for mode in MODES:
                    queue = f"bench-{mode}-{run}"
                    r, held = publish(node, workdir, mode, queue, args.count, args.size)
                    if held != args.count:
                        raise RuntimeError(f"{queue}: the queue holds {held}, not {args.count}")
                    results[mode].append(r)
                    print(f"run {run}  {mode:13s}  {rate(r):8.0f} msgs/s  ({r['seconds']:.2f} s)"
                          f"  other processes {r['other_cpu']:.2f} CPU s" + (" (disturbed)" if disturbed(r) else "")
                          + f"  load {loadavg().split()[0]}", flush=True)
                    node.ctl("delete_queue", queue)
                if args.crash:
                    for mode in ("transactions", "receipts"):
                        queue = f"crash-{mode}-{run}"
                        _, held = publish(node, workdir, mode, queue, args.count, args.size, kill_at_end=True)
                        kept[mode].append(held)
                        print(f"run {run}  {mode:13s}  killed at the last receipt: {held} of {args.count} kept",
                              flush=True)
                        if held != "queue missing":
                            node.ctl("delete_queue", queue)
        finally:
            node.stop()
        print_summary(results, [("msgs/s", rate, ",.0f"), ("node µs CPU/msg", cpu_us_per("node_cpu"), ".0f"),
                                ("publisher µs CPU/msg", cpu_us_per("bench_cpu"), ".0f")], args.runs)
        for mode in MODES:
            if kept[mode]:
                print(f"{mode}: kept after a kill at the last receipt {', '.join(map(str, kept[mode]))}"
                      f" of {args.count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
