"""Fault injection with the real programs: every result counted by its id, end to end.

A *scenario* builds a small world in a temp dir (real ActiveMQ brokers, a real Nagios 4, the
bridge as its own process), streams results through it at a steady rate for ``duration``
seconds, injects its fault at a random moment while the stream runs, then waits for the stream
to drain and counts, by result id, against what an observer independent of the bridge saw:

* outbound: a STOMP consumer (``Counter``) on the brokers, acking each message;
* inbound: Nagios's own log: one ``PASSIVE SERVICE CHECK`` line per result it processed
  (every result goes to a service of its own, so lines per service = deliveries).

Each run yields an ``Outcome``: sent, delivered, lost, duplicated and two recovery times:
``flow_back_s`` (from the fault's start until a result sent after it was delivered: how long
results stopped flowing) and ``caught_up_s`` (from the fault's end until everything sent before
that end was delivered). Inbound times come from nagios.log, so they have a 1 s resolution.

Used by tests/reliability/test_faults.py (short mode, CI) and benchmarks/reliability.py (long
mode). Every server listens on 127.0.0.1 and is stopped by PID when the scenario ends.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import random
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import stomp

from msg_nagios_bridge.cores.nagios import result_line
from msg_nagios_bridge.formats import wlcg
from msg_nagios_bridge.model import CheckResult
from tests.sandbox.activemq import ActiveMQ
from tests.sandbox.bridge import Bridge, bridge_config, feed_ocsp, inbound_config
from tests.sandbox.nagios import Nagios, passive_service
from tests.sandbox.rabbitmq import RabbitMQ
from tests.sandbox.ports import wait_until
from tests.sandbox.procfs import rss_mb
from tests.sandbox.stomp_probe import connect

QUEUE = "/queue/reliability.results"
HOSTS = 20                       # results are spread over this many hosts

logging.getLogger("stomp.py").setLevel(logging.CRITICAL)   # the Counter retries noisily by design


@dataclasses.dataclass
class Params:
    duration: float = 8.0        # seconds of traffic
    rate: float = 150.0          # results per second
    drain_timeout: float = 90.0  # after the stream, how long everything may take to arrive
    kills: int = 2               # bridge kill -9 scenarios: how many kills per run
    broker: str = "activemq"     # the brokers' kind (brokers.kind): activemq | rabbitmq


@dataclasses.dataclass
class Outcome:
    scenario: str
    fault: str                   # what was done, with its random timing
    sent: int
    delivered: int               # distinct results that arrived
    lost: int
    duplicated: int              # deliveries beyond the first, caused by the bridge path
    flow_back_s: Optional[float]
    caught_up_s: Optional[float]
    duplicates_allowed: bool
    notes: str = ""
    lost_sample: List[str] = dataclasses.field(default_factory=list)
    problems: List[str] = dataclasses.field(default_factory=list)   # the fault's own checks

    @property
    def ok(self) -> bool:
        return self.lost == 0 and (self.duplicates_allowed or self.duplicated == 0) and not self.problems

    def line(self) -> str:
        secs = lambda v: "-" if v is None else f"{v:.1f}"
        return (f"{self.scenario}: sent {self.sent}, delivered {self.delivered}, lost {self.lost},"
                f" duplicated {self.duplicated}, flow back {secs(self.flow_back_s)} s,"
                f" caught up {secs(self.caught_up_s)} s [{self.fault}]"
                + (f" {self.notes}" if self.notes else "")
                + (f" PROBLEMS: {'; '.join(self.problems)}" if self.problems else ""))


@dataclasses.dataclass
class Fault:
    """What a scenario did: a description and when (wall clock) the fault started and ended."""
    what: str
    start: float
    end: float
    notes: str = ""
    problems: List[str] = dataclasses.field(default_factory=list)


# -- the observers --------------------------------------------------------------------------

class Counter:
    """An independent STOMP consumer of ``QUEUE``: one link per group of broker addresses (a
    link fails over within its group and reconnects forever). Acks each message after noting
    it, so a message is never counted before it was received.

    ``deliveries[id]`` counts every delivery; a redelivery of a message this consumer already
    saw (its own ack lost with a connection) is noted apart: that duplicate is the test's, not
    the bridge's."""

    def __init__(self, groups, kind="activemq"):
        self.groups = [list(g) for g in groups]
        self.kind = kind
        self.lock = threading.Lock()
        self.first: Dict[str, float] = {}
        self.deliveries = collections.Counter()
        self.own_redeliveries = 0
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._link, args=(g,), daemon=True) for g in self.groups]

    def start(self):
        for thread in self.threads:
            thread.start()
        return self

    def stop(self):
        self.stopping.set()
        for thread in self.threads:
            thread.join(10)

    def _link(self, addresses):
        conn, turn = None, 0
        while not self.stopping.is_set():
            if conn is None or not conn.is_connected():
                _quietly(conn and conn.disconnect)
                conn = self._connect(addresses[turn % len(addresses)])
                turn += 1
                if conn is None:
                    self.stopping.wait(0.3)
                    continue
            self.stopping.wait(0.2)
        _quietly(conn and conn.disconnect)

    def _connect(self, address):
        connected = threading.Event()
        # RabbitMQ takes the host header as the vhost: "/".
        conn = stomp.Connection12([address], heartbeats=(1000, 1000), reconnect_attempts_max=1,
                                  auto_decode=False, **({"vhost": "/"} if self.kind == "rabbitmq" else {}))
        counter = self

        class Listener(stomp.ConnectionListener):
            def on_connected(self, frame):
                connected.set()

            def on_message(self, frame):
                counter._note(frame.headers)
                _quietly(lambda: conn.ack(frame.headers["ack"]))

        conn.set_listener("counter", Listener())
        try:
            conn.connect(wait=False)
            # Not connect(wait=True): that waits forever on a hung (SIGSTOPped) broker.
            if not connected.wait(3.0):
                raise OSError("no CONNECTED")
            conn.subscribe(QUEUE, id="1", ack="client-individual",
                           headers={"prefetch-count" if self.kind == "rabbitmq" else "activemq.prefetchSize": "500"})
            return conn
        except Exception:  # noqa: BLE001 - any failure: try again later
            _quietly(conn.disconnect)
            return None

    def _note(self, headers):
        key = headers.get("result_id", "?")
        with self.lock:
            if key in self.first and headers.get("redelivered") == "true":
                self.own_redeliveries += 1
            self.first.setdefault(key, time.time())
            self.deliveries[key] += 1

    def arrivals(self) -> Dict[str, float]:
        with self.lock:
            return dict(self.first)

    def duplicates(self) -> int:
        with self.lock:
            extra = sum(n - 1 for n in self.deliveries.values())
            return max(0, extra - self.own_redeliveries)


PASSIVE_LINE = re.compile(r"^\[(\d+)\] PASSIVE SERVICE CHECK: ([^;]+);([^;]+);", re.M)


def nagios_deliveries(nagios: Nagios):
    """({service: first time logged}, {service: times logged}) from nagios.log."""
    first, counts = {}, collections.Counter()
    for stamp, _host, service in PASSIVE_LINE.findall(nagios.log_text()):
        first.setdefault(service, float(stamp))
        counts[service] += 1
    return first, counts


# -- the result streams ---------------------------------------------------------------------

class Stream(threading.Thread):
    """Sends result number 0, 1, 2... at ``rate`` per second for ``duration`` seconds through
    ``send(batch)``, which must return only once the batch is handed over. Notes the wall time
    each id was sent."""

    def __init__(self, rate, duration, make, send):
        super().__init__(daemon=True)
        self.rate, self.duration, self.make, self.send = rate, duration, make, send
        self.sent: Dict[str, float] = {}
        self.error = None
        self.started = None

    def run(self):
        try:
            self.started = time.time()
            total, done = int(self.rate * self.duration), 0
            while done < total:
                due = min(total, int((time.time() - self.started) * self.rate) + 1)
                if due > done:
                    batch = [self.make(i) for i in range(done, due)]
                    self.send([item for item, _ in batch])
                    now = time.time()
                    for _, key in batch:
                        self.sent[key] = now
                    done = due
                time.sleep(0.02)
        except Exception as exc:  # noqa: BLE001 - reported by the scenario
            self.error = exc


def outbound_line(i: int):
    """(result line, result id) of result number ``i`` for the outbound sources."""
    result = CheckResult(host=f"wn{i % HOSTS:02d}.example.org", service=f"svc-{i}", state=i % 4,
                         output=f"result {i}", timestamp=int(time.time()), perfdata=f"n={i}")
    line = result_line.format_line(result) + "\n"
    return line, result_line.parse(line.rstrip("\n")).identity()


def append_to(path: Path):
    def send(lines):
        with open(path, "a") as handle:
            handle.write("".join(lines))
    return send


def write_to_fifo(path: Path):
    """Framed records, whole ones of at most PIPE_BUF bytes per write(), as the OCSP shells
    write them; the open() waits while no bridge reads the FIFO, as theirs do."""
    return lambda lines: feed_ocsp(path, lines)


INBOUND_FIELDS = {"siteName": "REMOTE", "gatheredAt": "remote-nagios", "role": "site"}


def inbound_message(i: int):
    result = CheckResult(host=f"h{i % HOSTS:02d}", service=f"s{i}", state=i % 4,
                         output=f"result {i}", timestamp=int(time.time()))
    return (result.identity(), wlcg.encode(result, INBOUND_FIELDS)), f"s{i}"


class Publisher:
    """Persistent SENDs to ``QUEUE`` on one broker, as a remote site bridge would."""

    def __init__(self, broker: ActiveMQ):
        self.conn, _ = connect(broker)

    def send(self, items):
        for result_id, body in items:
            self.conn.send(QUEUE, body, headers={"persistent": "true", "result_id": result_id,
                                                 "nagios_host": "remote-nagios"})

    def close(self):
        # A receipted DISCONNECT: the broker has every SEND before it once this returns.
        _quietly(lambda: self.conn.disconnect(receipt="bye"))


# -- helpers --------------------------------------------------------------------------------

def _quietly(call):
    if call is None:
        return
    with contextlib.suppress(Exception):
        call()


def _outcome(name, fault, sent, arrivals, duplicated, allowed, bridge):
    """Count ``sent`` ({id: time}) against ``arrivals`` ({id: first arrival time}); when
    something was lost, the bridge's log tail goes into the notes."""
    lost = [key for key in sent if key not in arrivals]
    before_end = [arrivals[k] for k, t in sent.items() if t <= fault.end and k in arrivals]
    after_start = [arrivals[k] for k, t in sent.items() if t >= fault.start and k in arrivals]
    caught_up = None if lost else max(0.0, max(before_end, default=fault.end) - fault.end)
    # Clamped: inbound times have a 1 s resolution (nagios.log).
    flow_back = max(0.0, min(after_start) - fault.start) if after_start else None
    notes = fault.notes + (f" bridge log tail: {bridge.log_text()[-1500:]!r}" if lost else "")
    return Outcome(name, fault.what, len(sent), len(set(sent) & set(arrivals)), len(lost),
                   duplicated, flow_back, caught_up, allowed, notes, sorted(lost)[:5], fault.problems)


class World:
    """The servers of one scenario run; ``close`` stops every one of them by PID."""

    def __init__(self, tmp: Path, rng: random.Random, params: Params):
        self.tmp, self.rng, self.p = tmp, rng, params
        self.brokers: List[ActiveMQ] = []
        self.bridges: List[Bridge] = []
        self.nagios: Optional[Nagios] = None
        self.closers: List[Callable] = []

    def broker(self, name, **kwargs) -> ActiveMQ:
        """A broker of the run's kind (Params.broker): ActiveMQ, or a RabbitMQ node (the same
        lifecycle: start, stop, kill, pause/resume, restart)."""
        if self.p.broker == "rabbitmq":
            broker = RabbitMQ(self.tmp / f"rabbitmq-{name}", name=name, **kwargs)
        else:
            broker = ActiveMQ(self.tmp / f"activemq-{name}", name=name, **kwargs)
        self.brokers.append(broker)
        return broker

    def bridge(self, name, config_text) -> Bridge:
        bridge = Bridge(self.tmp / name, config_text)
        self.bridges.append(bridge)
        return bridge

    def at(self, low, high) -> float:
        """Sleep until a random moment between ``low`` and ``high`` (fractions of the
        stream's duration, from its start); returns that moment's offset in seconds."""
        offset = self.rng.uniform(low, high) * self.p.duration
        time.sleep(max(0.0, self.stream.started + offset - time.time()))
        return offset

    def flow(self, make, send, fault) -> Fault:
        """Stream results made by ``make`` through ``send`` while ``fault(self)`` runs; return
        the Fault once the stream has ended."""
        self.stream = Stream(self.p.rate, self.p.duration, make, send)
        self.stream.start()
        wait_until(lambda: self.stream.started is not None, 5, 0.01)
        happened = fault(self)
        self.stream.join(self.p.duration + self.p.drain_timeout)
        if self.stream.error:
            raise RuntimeError(f"the stream failed: {self.stream.error}")
        return happened

    def close(self):
        for close in reversed(self.closers):
            _quietly(close)
        for bridge in self.bridges:
            _quietly(bridge.stop)
        if self.nagios:
            _quietly(self.nagios.stop)
        stopping = [threading.Thread(target=_quietly, args=(broker.stop,)) for broker in self.brokers]
        for thread in stopping:             # at once: each stop waits for its own process
            thread.start()
        for thread in stopping:
            thread.join()


# -- outbound -------------------------------------------------------------------------------

def run_outbound(name, tmp, rng, params, *, source, brokers, counter_groups, fault,
                 allowed=True, bridge_options=None, prepare=None):
    """Stream results into ``source`` ("perfdata" or "ocsp") of a bridge publishing to
    ``brokers`` (a function of the World returning [(ActiveMQ, start?)...]); ``fault(world)``
    runs while the stream flows and returns a Fault."""
    world = World(tmp, rng, params)
    try:
        chosen = brokers(world)
        starting = [broker for broker in chosen if not broker.running()]
        for broker in starting:             # at once: two nodes start side by side
            broker.start(wait=False)
        for broker in starting:
            broker.wait_ready()
        if params.broker == "rabbitmq":
            # The durable queue, declared before anything flows; on a node to be SIGKILLed, then
            # restarted cleanly: a queue declared a moment before a SIGKILL can be gone after it
            # (docs/rabbitmq.md). The other faults end with a clean shutdown or none, and skip
            # the 7 s a restart costs.
            for broker in chosen:
                broker.declare_queues(QUEUE, restart=getattr(fault, "kills_broker", False))
        if prepare:
            prepare(world)
        options = dict(heartbeat_ms=1000, **(bridge_options or {}))
        if params.broker != "activemq":
            options["kind"] = params.broker
        bridge = world.bridge("bridge", bridge_config(
            tmp / "bridge", [b.stomp_port for b in world.brokers], ocsp=source == "ocsp",
            perfdata=source == "perfdata", destination=QUEUE, **options))
        fifo = tmp / "bridge" / "ocsp.fifo"
        bridge.start(wait_for=fifo if source == "ocsp" else None)
        world.bridge_process = bridge
        if source == "ocsp":
            # Keep the FIFO open, as systemd's msg-nagios-bridge-ocsp.socket (ListenFIFO=) does,
            # so that what waits in the pipe outlives a bridge killed with -9.
            holder = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
            world.closers.insert(0, lambda: os.close(holder))
        counter = Counter(counter_groups(world), params.broker).start()
        world.closers.append(counter.stop)
        send = write_to_fifo(fifo) if source == "ocsp" else append_to(tmp / "bridge" / "service-perfdata")
        happened = world.flow(outbound_line, send, fault)
        sent = world.stream.sent
        wait_until(lambda: set(sent) <= set(counter.arrivals()), params.drain_timeout)
        time.sleep(1.0)   # late duplicates
        return _outcome(name, happened, sent, counter.arrivals(), counter.duplicates(), allowed, bridge)
    finally:
        world.close()


def one_broker(world):
    return [world.broker("b1")]


def broker_signal(how):
    """The bridge's only broker: SIGKILL / SIGTERM, down a while, start again; or a restart."""
    def fault(world):
        broker = world.brokers[0]
        at = world.at(0.2, 0.6)
        start = time.time()
        if how == "restart":
            broker.restart()
            return Fault(f"restart at {at:.1f} s", start, time.time())
        broker.kill() if how == "kill" else broker.stop()
        down = world.rng.uniform(0.5, 3.0)
        time.sleep(down)
        broker.start()
        return Fault(f"SIG{how.upper()} at {at:.1f} s, down {down:.1f} s + start {broker.started_in:.1f} s",
                     start, time.time())
    fault.kills_broker = how == "kill"
    return fault


def failover_pair(world):
    """Two brokers on one KahaDB store: the second waits for the store's lock."""
    store = world.tmp / "shared-kahadb"
    master = world.broker("master", data_dir=store)
    master.start()
    world.broker("slave", data_dir=store).start(wait=False)
    return [master]


def failover_fault(world):
    master, slave = world.brokers
    at = world.at(0.2, 0.6)
    start = time.time()
    master.kill()
    slave.wait_ready(60)
    end = time.time()
    return Fault(f"master SIGKILL at {at:.1f} s, slave took over in {end - start:.1f} s", start, end)


def network(world):
    """b1 forwards to b2 (a network of brokers); the bridge prefers b1, the consumer is on b2."""
    b2 = world.broker("b2")
    b2.start()
    b1 = world.broker("b1", network_to=[b2.openwire_port])
    b1.start()
    b1.wait_bridges()
    world.brokers[:] = [b1, b2]          # the bridge's failover order
    return [b1, b2]


def network_fault(world):
    victim = world.rng.choice(world.brokers)
    at = world.at(0.2, 0.6)
    start = time.time()
    victim.kill()
    down = world.rng.uniform(0.5, 3.0)
    time.sleep(down)
    victim.start()
    return Fault(f"{victim.name} ({'publisher' if victim is world.brokers[0] else 'consumer'} side)"
                 f" SIGKILL at {at:.1f} s, down {down:.1f} s", start, time.time())


def two_brokers(world):
    return [world.broker("b1"), world.broker("b2")]


def hang_fault(world):
    """SIGSTOP the broker the bridge uses: it must notice by heartbeats and fail over."""
    broker = world.brokers[0]
    at = world.at(0.15, 0.4)
    start = time.time()
    broker.pause()
    hung = world.rng.uniform(3.0, 6.0)
    time.sleep(hung)
    broker.resume()
    # The end is the SIGSTOP: the bridge must recover while the broker still hangs.
    return Fault(f"SIGSTOP at {at:.1f} s for {hung:.1f} s", start, start)


def bridge_kills(world):
    """kill -9 the bridge ``kills`` times at random moments; restart after a random pause."""
    bridge = world.bridge_process
    moments = sorted(world.rng.uniform(0.1, 0.8) for _ in range(world.p.kills))
    done, first = [], None
    for fraction in moments:
        time.sleep(max(0.0, world.stream.started + fraction * world.p.duration - time.time()))
        first = first or time.time()
        bridge.kill()
        pause = world.rng.uniform(0.0, 1.0)
        time.sleep(pause)
        fifo = bridge.workdir / "ocsp.fifo"
        bridge.start(wait_for=fifo if fifo.exists() else None)
        done.append(f"{fraction * world.p.duration:.1f} s (+{pause:.1f})")
    return Fault("kill -9 at " + ", ".join(done), first, time.time())


SPOOL_LIMIT = 300      # max_messages of the stalled scenarios' spools
RSS_LIMIT_MB = 150     # a stalled bridge must stay well under this


def bounded(sampler) -> List[str]:
    """What a stall must not do: hold more than the spool's limit, or grow in memory."""
    problems = []
    if sampler.peak_depth > SPOOL_LIMIT:
        problems.append(f"spool depth {sampler.peak_depth} passed its limit {SPOOL_LIMIT}")
    if sampler.peak_rss > RSS_LIMIT_MB:
        problems.append(f"RSS {sampler.peak_rss:.0f} MB > {RSS_LIMIT_MB} MB")
    return problems


class Sampler(threading.Thread):
    """Every 0.25 s: the bridge's RSS (MB) and spool depths and states from status.json."""

    def __init__(self, bridge: Bridge):
        super().__init__(daemon=True)
        self.bridge = bridge
        self.stopping = threading.Event()
        self.peak_rss = 0.0
        self.peak_depth = 0
        self.states = set()

    def run(self):
        while not self.stopping.wait(0.25):
            rss = rss_mb(self.bridge.pid)
            if rss == rss:      # not NaN: the bridge runs
                self.peak_rss = max(self.peak_rss, rss)
            status = self.bridge.status()
            for spool in ("spool", "inbound_spool"):
                self.peak_depth = max(self.peak_depth, (status.get(spool) or {}).get("depth", 0))
            self.states.update(f"{k}: {v.split(' for ')[0]}" for k, v in status.get("states", {}).items())

    def stop(self):
        self.stopping.set()
        self.join(5)


def small_filesystem(world, megabytes=8):
    """Mount a tmpfs of ``megabytes`` on the bridge's spool directory (needs root)."""
    spool = world.tmp / "bridge" / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0700", "tmpfs", str(spool)],
                   check=True, capture_output=True, text=True)
    world.closers.insert(0, lambda: subprocess.run(["umount", "-l", str(spool)], check=False))
    return spool


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until its filesystem is full; return the file.

    Unbuffered on purpose: a buffered file keeps the part of its last block that did not fit
    and raises ENOSPC again when it is closed."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 4096, 1):               # down to the last byte
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def disk_full_fault(world):
    """The spool's filesystem fills up while the broker is away (so the spool must grow: with
    the broker up, SQLite keeps reusing its WAL and free pages and may never need a new block),
    stays full until the bridge says so and a while longer, then space returns and the broker
    comes back. The bridge must stay up, say why it waits, and deliver everything."""
    spool = world.tmp / "bridge" / "spool"
    broker = world.brokers[0]
    sampler = Sampler(world.bridge_process)
    sampler.start()
    at = world.at(0.2, 0.4)
    start = time.time()
    broker.kill()                  # at once: a slow JVM stop could outlast the stream, and then
    filler = fill(spool)           # nothing more would be stored to hit the full disk
    said_full = lambda: any("disk is full" in s for s in sampler.states)
    noticed = wait_until(said_full, 20.0, 0.1)
    noticed_after = time.time() - start
    time.sleep(world.rng.uniform(1.0, 3.0))
    alive = world.bridge_process.proc.poll() is None
    filler.unlink()
    broker.start()
    end = time.time()
    time.sleep(1.0)
    sampler.stop()
    said = sorted(s for s in sampler.states if "spool" in s and "waiting" in s)
    problems = [] if alive else ["the bridge died while the disk was full"]
    if not noticed:
        problems.append("status never said the spool's disk is full")
    return Fault(f"broker away and filesystem full at {at:.1f} s for {end - start:.1f} s", start, end,
                 f"bridge {'alive' if alive else 'DEAD'} while full; said so after {noticed_after:.1f} s:"
                 f" {said or 'nothing'}", problems)


def stalled_broker_fault(world):
    """The broker goes away for long enough that the spool reaches its limit: the source must
    wait (the lines stay in Nagios's perfdata file) and memory must stay flat."""
    broker = world.brokers[0]
    sampler = Sampler(world.bridge_process)
    sampler.start()
    at = world.at(0.1, 0.2)
    start = time.time()
    broker.stop()
    down = world.rng.uniform(0.5, 0.7) * world.p.duration
    time.sleep(down)
    broker.start()
    end = time.time()
    time.sleep(1.0)
    sampler.stop()
    waited = any("spool full" in s for s in sampler.states)
    problems = bounded(sampler) + ([] if waited else ["the source never waited for the full spool"])
    return Fault(f"broker down at {at:.1f} s for {down:.1f} s", start, end,
                 f"spool limit {SPOOL_LIMIT}: peak depth {sampler.peak_depth}, source waited: {waited},"
                 f" peak RSS {sampler.peak_rss:.0f} MB", problems)


# -- inbound --------------------------------------------------------------------------------

def run_inbound(name, tmp, rng, params, *, fault, writer="command_file", allowed=True,
                spool_options=""):
    """Publish results to a queue the bridge injects into a real Nagios from; ``fault(world)``
    runs while they flow. Nagios's log is the observer."""
    world = World(tmp, rng, params)
    try:
        broker = world.broker("b1")
        broker.start()
        count = int(params.rate * params.duration)
        world.nagios = Nagios(tmp / "nagios", services=[
            passive_service(f"h{i % HOSTS:02d}", f"s{i}") for i in range(count)])
        world.nagios.start()
        bridge = world.bridge("bridge", bridge_config(
            tmp / "bridge", [broker.stomp_port], ocsp=False, heartbeat_ms=1000,
            spool_options=spool_options, inbound=inbound_config(world.nagios, QUEUE, writer=writer)))
        bridge.start()
        world.bridge_process = bridge
        publisher = Publisher(broker)
        world.closers.append(publisher.close)
        happened = world.flow(inbound_message, publisher.send, fault)
        publisher.close()
        sent = world.stream.sent
        wait_until(lambda: set(sent) <= set(nagios_deliveries(world.nagios)[0]), params.drain_timeout, 0.5)
        time.sleep(2.0)   # Nagios reaps results once a second: let late duplicates show
        first, counts = nagios_deliveries(world.nagios)
        return _outcome(name, happened, sent, first, sum(n - 1 for n in counts.values()), allowed, bridge)
    finally:
        world.close()


def nagios_fault(how):
    def fault(world):
        nagios = world.nagios
        at = world.at(0.2, 0.6)
        start = time.time()
        if how == "reload":
            nagios.reload()
            return Fault(f"SIGHUP at {at:.1f} s", start, time.time())
        if how == "restart":
            nagios.restart()
            return Fault(f"restart at {at:.1f} s", start, time.time())
        if how == "stall":
            sampler = Sampler(world.bridge_process)
            sampler.start()
            nagios.proc.send_signal(signal.SIGSTOP)      # hangs: its command FIFO fills up
            stalled = world.rng.uniform(0.4, 0.6) * world.p.duration
            time.sleep(stalled)
            nagios.proc.send_signal(signal.SIGCONT)
            end = time.time()
            time.sleep(1.0)
            sampler.stop()
            return Fault(f"SIGSTOP at {at:.1f} s for {stalled:.1f} s", start, end,
                         f"spool limit {SPOOL_LIMIT}: peak depth {sampler.peak_depth},"
                         f" peak RSS {sampler.peak_rss:.0f} MB", bounded(sampler))
        nagios.stop()
        down = world.rng.uniform(1.0, 4.0)
        time.sleep(down)
        nagios.start()
        return Fault(f"stopped at {at:.1f} s for {down:.1f} s", start, time.time())
    return fault


# -- the catalogue --------------------------------------------------------------------------

def _outbound(source, brokers, counter_groups, fault, **kw):
    return lambda name, tmp, rng, p: run_outbound(name, tmp, rng, p, source=source, brokers=brokers,
                                                 counter_groups=counter_groups, fault=fault, **kw)


ONLY_FIRST = lambda w: [[w.brokers[0].stomp_address]]
EITHER = lambda w: [[b.stomp_address for b in w.brokers]]
EACH = lambda w: [[b.stomp_address] for b in w.brokers]
SECOND = lambda w: [[w.brokers[1].stomp_address]]

SCENARIOS = {
    "broker SIGKILL": _outbound("perfdata", one_broker, ONLY_FIRST, broker_signal("kill")),
    "broker SIGTERM": _outbound("perfdata", one_broker, ONLY_FIRST, broker_signal("term")),
    "broker restart": _outbound("ocsp", one_broker, ONLY_FIRST, broker_signal("restart")),
    "failover pair": _outbound("perfdata", failover_pair, EITHER, failover_fault),
    "network of brokers": _outbound("perfdata", network, SECOND, network_fault),
    "hung broker (SIGSTOP)": _outbound("perfdata", two_brokers, EACH, hang_fault),
    "bridge kill -9, perfdata": _outbound("perfdata", one_broker, ONLY_FIRST, bridge_kills),
    "bridge kill -9, OCSP pipe": _outbound("ocsp", one_broker, ONLY_FIRST, bridge_kills),
    "bridge kill -9, inbound": lambda n, t, r, p: run_inbound(n, t, r, p, fault=bridge_kills),
    "Nagios stopped (command file)": lambda n, t, r, p: run_inbound(n, t, r, p, fault=nagios_fault("stop")),
    "Nagios stopped (results dir)": lambda n, t, r, p: run_inbound(
        n, t, r, p, fault=nagios_fault("stop"), writer="checkresults_dir"),
    "Nagios restarted": lambda n, t, r, p: run_inbound(n, t, r, p, fault=nagios_fault("restart")),
    "spool filesystem full": _outbound("perfdata", one_broker, ONLY_FIRST, disk_full_fault,
                                       prepare=small_filesystem),
    "stalled broker, spool at its limit": _outbound(
        "perfdata", one_broker, ONLY_FIRST, stalled_broker_fault,
        bridge_options={"spool_options": f"max_messages: {SPOOL_LIMIT}"}),
    "stalled Nagios (SIGSTOP), inbound spool at its limit": lambda n, t, r, p: run_inbound(
        n, t, r, p, fault=nagios_fault("stall"), spool_options=f"max_messages: {SPOOL_LIMIT}"),
    "Nagios reloaded": lambda n, t, r, p: run_inbound(n, t, r, p, fault=nagios_fault("reload"),
                                                      allowed=False),
}


# The scenarios that are about the broker itself, run on RabbitMQ too (Params.broker): two
# independent nodes for the hang (the bridge fails over to the other).
BROKER_SCENARIOS = ("broker SIGKILL", "broker SIGTERM", "broker restart", "hung broker (SIGSTOP)")


def run(name: str, tmp: Path, seed: int, params: Params) -> Outcome:
    """Run scenario ``name`` once in the (empty) directory ``tmp``, with ``params.broker``
    brokers (rabbitmq: only the BROKER_SCENARIOS)."""
    if params.broker != "activemq" and name not in BROKER_SCENARIOS:
        raise ValueError(f"{name!r} runs on ActiveMQ only")
    tmp.mkdir(parents=True, exist_ok=True)
    return SCENARIOS[name](name, tmp, random.Random(seed), params)
