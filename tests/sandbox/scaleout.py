"""Several central bridges sharing one ActiveMQ virtual topic queue (docs/scaling.md), for
tests/integration/test_scaleout.py and benchmarks/scaleout.py.

Results are built by the site bridge's own routing code (outbound/routing.build_message: the
headers a site bridge sends, JMSXGroupID included) and published to a virtual topic; each
central bridge consumes ``/queue/Consumer.<name>.<topic>`` and injects into one Nagios through
its command FIFO. Every result's output carries the object's counter ``n=<k>`` (1, 2, ...) and
its check time grows with k, so the order in which Nagios applied each object's results can be
read back from nagios.log ("EXTERNAL COMMAND: PROCESS_SERVICE_CHECK_RESULT;..." lines, logged
by Nagios as it handles each one).
"""
from __future__ import annotations

import re
import time
from collections import defaultdict
from pathlib import Path

from msg_nagios_bridge.config import Route, Site
from msg_nagios_bridge.model import CheckResult
from msg_nagios_bridge.outbound import routing

from .bridge import Bridge, bridge_config, inbound_config
from .nagios import Nagios, host, passive_service
from .stomp_probe import connect

TOPIC = "VirtualTopic.scale.results"
CONSUMERS = "central"
QUEUE = f"/queue/Consumer.{CONSUMERS}.{TOPIC}"
SITE = Site(name="REMOTE", role="site", nagios_name="remote-nagios")

# ActiveMQ 5's default group map ("cached") remembers the owners of the 1,024 most recently
# used groups only; a group pushed out is given to whichever consumer comes next, while its old
# owner may still hold earlier results of it: order breaks beyond 1,024 objects. Hash buckets
# never forget an owner (bounded memory: a bucket, not a group, is what is owned).
GROUP_POLICY_XML = """    <destinationPolicy>
      <policyMap><policyEntries>
        <policyEntry queue=">" messageGroupMapFactoryType="bucket"/>
      </policyEntries></policyMap>
    </destinationPolicy>
"""


def host_name(h: int) -> str:
    return f"wn{h:02d}.remote.org"


def service_name(s: int) -> str:
    return f"org.scale.svc{s:02d}"


def central_nagios(workdir: Path, hosts: int, services: int) -> Nagios:
    return Nagios(workdir, hosts=[host(host_name(h)) for h in range(hosts)],
                  services=[passive_service(host_name(h), service_name(s))
                            for h in range(hosts) for s in range(services)])


class Stream:
    """``rounds`` results for each of hosts x services objects, round by round (every object's
    result k before any object's k+1); result k of an object has counter k and check time
    base + k, so a newer result is always later."""

    def __init__(self, tag: str, hosts: int, services: int, rounds: int, base: float = 0.0):
        self.tag, self.rounds = tag, rounds
        self.objects = [(host_name(h), service_name(s)) for h in range(hosts) for s in range(services)]
        self.base = int(base or time.time() - rounds - 5)
        self.route = Route(name="scale", destination=f"/topic/{TOPIC}", message_group=True)

    def __len__(self):
        return len(self.objects) * self.rounds

    def result(self, i: int) -> CheckResult:
        k, slot = divmod(i, len(self.objects))
        host_, service = self.objects[slot]
        return CheckResult(host=host_, service=service, state=0, output=f"OK {self.tag} n={k + 1:05d}",
                           perfdata=f"n={k + 1}", timestamp=self.base + k + 1)

    def newest_outputs(self):
        """{(host, service): output of the object's last result}."""
        last = len(self) - len(self.objects)
        return {obj: self.result(last + slot).output for slot, obj in enumerate(self.objects)}

    def publish(self, broker, start: int = 0, stop: int = None, rate: float = 0.0, timeout: float = 60.0,
                destination: str = ""):
        """Send results [start, stop) as persistent messages, at ``rate``/s (0: at once), a
        receipt on the last, to the virtual topic (or ``destination``); returns the seconds
        the sending took."""
        stop = len(self) if stop is None else stop
        conn, listener = connect(broker, auto_decode=False)
        try:
            t0 = time.monotonic()
            for i in range(start, stop):
                if rate:
                    delay = t0 + (i - start) / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                message = routing.build_message(self.route, SITE, self.result(i))
                headers = dict(message.headers)
                if i == stop - 1:
                    headers["receipt"] = f"scale-{stop}"
                conn.send(destination or message.destination, message.body, headers=headers)
            listener.wait(f"scale-{stop}", timeout)
            return time.monotonic() - t0
        finally:
            conn.disconnect()


def central_bridge(workdir: Path, broker, nagios: Nagios, index: int, prefetch: int = 100,
                   shared: bool = True, queue: str = QUEUE) -> Bridge:
    """Central bridge number ``index``: its own spool and status under ``workdir``, its own
    client-id (ActiveMQ refuses a second connection with a client-id in use), the shared queue,
    and (``shared``) the newest-result file all centrals of this Nagios share."""
    # Loss accounting off: each bridge sees only a share of the stream (docs/scaling.md).
    inbound = inbound_config(nagios, queue) + (f"  client_id: central-{index}\n  prefetch: {prefetch}\n"
                                               "  loss_accounting: false\n")
    if shared:
        inbound += f"  shared_newest_file: {nagios.dir / 'central-newest.sqlite'}\n"
    return Bridge(workdir, bridge_config(workdir, [broker.stomp_port], ocsp=False, inbound=inbound,
                                         site="CENTRAL", heartbeat_ms=1000))


_APPLIED = re.compile(rb"EXTERNAL COMMAND: PROCESS_SERVICE_CHECK_RESULT;([^;\n]*);([^;\n]*);\d+;OK (\S+) n=(\d+)")


class Applied:
    """What Nagios applied, per object, in order: read from nagios.log (from where it was
    when made), counting the lines of one stream's ``tag``."""

    def __init__(self, log_file: Path, tag: str):
        self.log_file, self.tag = Path(log_file), tag.encode()
        self.offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        self.partial = b""
        self.order = defaultdict(list)       # (host, service) -> [counter, ...] as applied
        self.lines = 0

    def poll(self) -> int:
        with open(self.log_file, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            m = _APPLIED.search(line)
            if m and m.group(3) == self.tag:
                self.order[(m.group(1).decode(), m.group(2).decode())].append(int(m.group(4)))
                self.lines += 1
        return self.lines

    def verdict(self, stream: Stream) -> dict:
        """missing: (object, counter) pairs sent but never applied (lost, unless a bridge
        dropped it as older than what was already applied: its ``stale`` counter);
        unsuperseded: the missing ones with no newer result of their object applied; out_of_order: applications of
        a counter lower than one applied before for the object (an older result over a newer);
        duplicates: applications beyond the first of a counter (at-least-once)."""
        missing = unsuperseded = out_of_order = distinct = applied = 0
        for obj in stream.objects:
            seen, newest = set(), 0
            for k in self.order.get(obj, []):
                out_of_order += k < newest      # repeated or not, it overwrote a newer result
                seen.add(k)
                newest = max(newest, k)
            applied += len(self.order.get(obj, []))
            distinct += len(seen)
            never = [k for k in range(1, stream.rounds + 1) if k not in seen]
            missing += len(never)
            unsuperseded += sum(1 for k in never if k > newest)
        return {"missing": missing, "unsuperseded": unsuperseded, "out_of_order": out_of_order,
                "duplicates": applied - distinct, "distinct": distinct, "applied": applied}


def newest_shown(nagios: Nagios, stream: Stream) -> int:
    """How many objects show their last result in status.dat."""
    status = nagios.status()
    return sum(1 for obj, output in stream.newest_outputs().items()
               if (status.get(obj) or {}).get("plugin_output") == output)


def wait_newest_shown(nagios: Nagios, stream: Stream, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        shown = newest_shown(nagios, stream)
        if shown == len(stream.objects) or time.monotonic() > deadline:
            return shown
        time.sleep(0.25)


def spool_depth(bridge: Bridge) -> int:
    """Results the bridge holds in its inbound spool, not yet confirmed by Nagios (read-only)."""
    import sqlite3
    path = bridge.workdir / "spool" / "inbound.sqlite"
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        return db.execute("SELECT count(*) FROM messages").fetchone()[0]
    finally:
        db.close()
