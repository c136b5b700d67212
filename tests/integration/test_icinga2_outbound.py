"""Icinga 2's check results out (cores/icinga2/events.py) against the real Icinga 2 (Debian's
2.13): the event stream source with a real Spool, Intake and Router (no broker), then the
bridge process publishing to a real ActiveMQ.

The fault tests send passive results round robin to a set of services while Icinga reloads or
restarts, the connection is cut or the bridge is killed, and print what was sent (answered 200
by Icinga), delivered, lost and duplicated. The guarantee under test (docs/icinga2.md): the
newest result of every object is published (lost newest = 0), and every result while the
stream is connected; intermediate results superseded while the stream was down are not, and are
counted, not asserted."""
import http.client
import json
import socket
import statistics
import threading
import time
import urllib.parse

import pytest

from msg_nagios_bridge import config
from msg_nagios_bridge.cores.icinga2 import events
from msg_nagios_bridge.cores.icinga2.event_record import MARKS_KIND
from msg_nagios_bridge.daemon.health import Health
from msg_nagios_bridge.formats import wlcg
from msg_nagios_bridge.model import CheckResult
from msg_nagios_bridge.outbound.intake import Intake
from msg_nagios_bridge.outbound.routing import Router
from msg_nagios_bridge.spool import Spool
from tests.sandbox import icinga2 as icinga2_mod
from tests.sandbox.bridge import Bridge, bridge_config
from tests.sandbox.icinga2 import host, passive_service
from tests.sandbox.stomp_probe import publish

pytestmark = pytest.mark.integration

CHECK_SOURCE = "msg-nagios-bridge@test"
EVENT_DELAY = 5.5      # Icinga 2.13 hands events out in batches every 5 s (docs/icinga2-notes.md)




def icinga2_yaml(core, port=None, user="root", password=None, queue="msg-nagios-bridge"):
    return (f"core: icinga2\n"
            f"icinga2: {{ca_file: {core.ca_file}, user: {user}, password: {password or core.password},"
            f" port: {port or core.api_port}, event_queue: {queue}, check_source: {CHECK_SOURCE}, timeout: 5}}\n")


class SourceRig:
    """The event stream source as the daemon wires it (Intake, Router, a real outbound Spool),
    without a broker: what it published is what the spool holds. start() and stop() again are
    a bridge restart on the same spool."""

    def __init__(self, tmp_path, core, **yaml_options):
        (tmp_path / "spool").mkdir(exist_ok=True)
        self.settings = config.parse(
            "site: {name: SITE-A, nagios_name: icinga.example.org}\nbrokers: {hosts: ['127.0.0.1:61613']}\n"
            f"spool: {{directory: {tmp_path / 'spool'}}}\n"
            "routes: [{name: all, destination: /topic/results, format: json, host_checks: true}]\n"
            + icinga2_yaml(core, **yaml_options))
        self.spool = Spool(str(tmp_path / "spool" / "outbound.sqlite"))
        self.health = Health()
        self.source = None

    def start(self):
        self.stopping = threading.Event()
        router = Router(self.settings)
        started = time.monotonic()
        sources = events.start_sources(
            self.settings, lambda name, parse: Intake(name, router, self.spool, self.health, self.stopping, parse),
            self.health)
        self.started_in = time.monotonic() - started
        self.source, = sources
        return self.source

    def stop(self):
        """Stop the source; the seconds it took to end."""
        started = time.monotonic()
        self.stopping.set()
        self.source.join(10)
        assert not self.source.is_alive()
        return time.monotonic() - started

    def state(self):
        return self.health.snapshot()["states"].get(events.SOURCE, "")

    def wait_state(self, text, timeout=15.0):
        deadline = time.monotonic() + timeout
        while text not in self.state():
            assert time.monotonic() < deadline, f"state {self.state()!r}, wanted {text!r}"
            time.sleep(0.05)

    def published(self):
        """[(record, enqueued_at)] of every message in the spool, oldest first."""
        entries = self.spool.take(1_000_000)
        self.spool.give_back([entry.entry_id for entry in entries])
        return [(json.loads(entry.message.body), entry.enqueued_at) for entry in entries]

    def outputs(self):
        return [record["output"] for record, _ in self.published()]

    def close(self):
        if self.source is not None and self.source.is_alive():
            self.stop()
        self.spool.close()


@pytest.fixture
def rigs(tmp_path):
    made = []

    def make(core, name="rig", **options):
        (tmp_path / name).mkdir()
        rig = SourceRig(tmp_path / name, core, **options)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.close()


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


# -- results and their fields --------------------------------------------------------------

def test_results_are_published_with_their_fields_and_the_echo_signal(icinga2_factory, rigs):
    core = icinga2_factory(objects=[passive_service("h1", "s1"), host("h2")])
    rig = rigs(core)
    rig.start()
    assert rig.state() == "connected"
    ends = time.time()
    core.process_check_result("h1", "s1", 2, "CRITICAL - disk full\nsecond line\nthird",
                              performance_data=["used=91%;80;90", "free=2GB"], check_source=CHECK_SOURCE,
                              execution_start=ends - 1.5, execution_end=ends)
    core.process_check_result("h2", None, 1, "host down – Überlast ✓")
    wait_for(lambda: len(rig.published()) == 2, 10, "two results")
    (service, _), (down, _) = sorted(rig.published(), key=lambda pair: pair[0]["host"])
    assert service["host"] == "h1" and service["service"] == "s1"
    assert (service["state"], service["status"], service["state_type"], service["attempt"]) == (2, "CRITICAL", "HARD", 1)
    assert service["output"] == "CRITICAL - disk full" and service["long_output"] == "second line\nthird"
    assert service["perfdata"] == "used=91%;80;90 free=2GB"
    assert service["epoch"] == int(ends)                     # execution_end
    # The echo signal Icinga2Core.may_be_echo reads: ours carries the bridge's check_source.
    assert service["attributes"] == {"check_source": CHECK_SOURCE, "check_type": "PASSIVE"}
    assert (down["host"], down["service"], down["status"], down["output"]) == ("h2", None, "DOWN", "host down – Überlast ✓")
    assert down["attributes"] == {"check_source": "icinga-sandbox", "check_type": "PASSIVE"}
    counters = rig.health.snapshot()["counters"]
    assert counters[f"{events.SOURCE}.events"] == 2 and counters[f"{events.SOURCE}.connects"] == 1
    assert rig.spool.load_marks(MARKS_KIND, 0).keys() == {"h1!s1", "h2"}
    # Read again by a catch-up (marks forgotten): the same two messages, so the spool keeps two.
    rig.stop()
    rig.spool.forget_marks(MARKS_KIND, float("inf"))
    rig.start()
    assert rig.source.last_catch_up == (2, 2) and len(rig.published()) == 2 and rig.spool.stats().duplicates == 2


def test_an_active_check_is_marked_active(icinga2_factory, rigs):
    core = icinga2_factory(objects=[icinga2_mod.active_service("h1", "live", state=1, output="WARN - x", interval=1)])
    rig = rigs(core)
    rig.start()
    wait_for(lambda: any(r["service"] == "live" for r, _ in rig.published()), 15, "an active result")
    record = next(r for r, _ in rig.published() if r["service"] == "live")
    assert record["status"] == "WARNING" and record["output"] == "WARN - x"
    assert record["attributes"] == {"check_source": "icinga-sandbox", "check_type": "ACTIVE"}


# -- catch-up ------------------------------------------------------------------------------

def test_the_catch_up_publishes_each_object_s_newest_result_once_across_restarts(icinga2_factory, rigs):
    objects = [passive_service("h1", f"s{i}") for i in range(5)] + [host("h2"), passive_service("h3", "never")]
    core = icinga2_factory(objects=objects)
    for round_ in range(3):                                  # before the bridge: only the last is kept
        for i in range(5):
            assert core.process_check_result("h1", f"s{i}", i % 4, f"before {round_} s{i}").status == 200
    core.process_check_result("h2", None, 0, "h2 up")
    rig = rigs(core)
    rig.start()
    # h3 (never checked) and h1 have no result; h1!s0..4 and h2 do.
    assert rig.source.last_catch_up == (6, 6)
    assert sorted(rig.outputs()) == sorted([f"before 2 s{i}" for i in range(5)] + ["h2 up"])
    assert rig.state() == "connected"

    rig.stop()                                               # a restart with nothing new: nothing again
    rig.start()
    assert rig.source.last_catch_up == (6, 0)
    assert rig.spool.stats().duplicates == 0

    rig.stop()                                               # results while the bridge is away
    core.process_check_result("h1", "s1", 1, "away 1")
    core.process_check_result("h1", "s1", 2, "away 2")       # supersedes "away 1": not recovered
    core.process_check_result("h2", None, 1, "h2 down")
    rig.start()
    assert rig.source.last_catch_up == (6, 2)
    assert rig.outputs()[-2:] == ["away 2", "h2 down"]
    assert "away 1" not in rig.outputs()
    assert rig.health.snapshot()["counters"][f"{events.SOURCE}.catch_up_results"] == 6 + 0 + 2   # one Health across the three


def test_a_result_read_by_the_catch_up_and_the_stream_is_one_message(icinga2_factory, rigs, monkeypatch):
    """A result that lands between the stream's opening and the object list's reading is both in
    the catch-up and on the stream (up to 5 s later): same message id, so the spool keeps one."""
    core = icinga2_factory(objects=[passive_service("h1", "s1")])
    catch_up = events.EventStreamSource._catch_up

    def result_in_the_window(source):
        assert core.process_check_result("h1", "s1", 2, "in the window").status == 200
        return catch_up(source)

    monkeypatch.setattr(events.EventStreamSource, "_catch_up", result_in_the_window)
    rig = rigs(core)
    rig.start()
    assert rig.source.last_catch_up == (1, 1)                # the catch-up took it ...
    wait_for(lambda: rig.health.counter(f"{events.SOURCE}.events") == 1, 10, "its event on the stream")
    assert rig.outputs() == ["in the window"]                # ... the stream too, and the spool kept one
    assert rig.spool.stats().duplicates == 1


def test_a_catch_up_of_2000_objects_takes_seconds_not_minutes(icinga2_factory, rigs):
    services = [f"s{i:04d}" for i in range(2000)]
    core = icinga2_factory(objects=[passive_service(f"h{i % 50:02d}", s) for i, s in enumerate(services)])
    with core.connect() as connection:
        for i, service in enumerate(services):
            path = "/v1/actions/process-check-result?service=" + urllib.parse.quote(f"h{i % 50:02d}!{service}", safe="")
            assert connection.request("POST", path, {"exit_status": i % 4, "plugin_output": f"out {i}",
                                                     "performance_data": [f"v={i}"]}).status == 200
    rig = rigs(core)
    rig.start()
    assert rig.source.last_catch_up == (2000, 2000)
    print(f"\ncatch-up of 2,000 objects at start: {rig.started_in:.2f} s (connect, both object lists, parse,"
          f" route, spool)")
    assert len(rig.published()) == 2000
    rig.stop()
    rig.start()
    assert rig.source.last_catch_up == (2000, 0)
    print(f"catch-up of 2,000 objects with nothing new: {rig.started_in:.2f} s")
    assert rig.started_in < 10

# -- faults --------------------------------------------------------------------------------

class Sender(threading.Thread):
    """Sends passive results round robin to ``services`` of host h1 (output "seq N"), one every
    ``interval`` s, over a kept-alive connection (a new one after any failure); remembers
    which Icinga answered 200 and which got no answer."""

    def __init__(self, core, services, interval=0.02):
        super().__init__(daemon=True)
        self.core, self.services, self.interval = core, services, interval
        self.accepted = {}                # output -> object key
        self.unanswered = []
        self.finished = threading.Event()
        self.seq = 0

    def run(self):
        connection = None
        while not self.finished.is_set():
            service = self.services[self.seq % len(self.services)]
            output = f"seq {self.seq}"
            self.seq += 1
            path = "/v1/actions/process-check-result?service=" + urllib.parse.quote(f"h1!{service}", safe="")
            try:
                connection = connection or self.core.connect(timeout=5)
                reply = connection.request("POST", path, {"exit_status": self.seq % 4, "plugin_output": output})
                if reply.status == 200:
                    self.accepted[output] = f"h1!{service}"
            except (OSError, http.client.HTTPException):
                self.unanswered.append(output)
                if connection is not None:
                    connection.close()
                connection = None
                time.sleep(0.05)           # refused while Icinga reloads: a moment later
            self.finished.wait(self.interval)
        if connection is not None:
            connection.close()

    def stop(self):
        self.finished.set()
        self.join(10)


def newest_outputs(core, services):
    """{object key: the output of its last result}, as Icinga holds it now (objects that have one)."""
    results = {f"h1!{s}": core.object_state("h1", s)["last_check_result"] for s in services}
    return {key: result["output"] for key, result in results.items() if result}


def account(title, sender, published_outputs, newest, catch_up_results, duplicates,
            why="intermediate results superseded while the stream was down"):
    """Print and return the fault suite's figures: newest-per-object and all results."""
    published = set(published_outputs)
    lost_newest = sorted(key for key, output in newest.items() if output not in published)
    delivered = [output for output in sender.accepted if output in published]
    lost = len(sender.accepted) - len(delivered)
    extra = len(published & set(sender.unanswered))
    print(f"\n{title}: sent {len(sender.accepted)} (answered 200; {len(sender.unanswered)} got no answer,"
          f" {extra} of those were recorded and published) / delivered {len(delivered)} / lost {lost}"
          f" ({why}) / duplicated {duplicates}"
          f" (dropped by message id) / newest per object: {len(newest)} objects, lost {len(lost_newest)}"
          f" / results recovered by the catch-ups: {catch_up_results}")
    return lost_newest


SERVICES = [f"s{i}" for i in range(10)]
MARKER = "marker"      # a service of h1 besides SERVICES: its result, sent last, closes a run


def fault_objects():
    return [passive_service("h1", s) for s in SERVICES + [MARKER]]


def mark_the_end(core):
    """Send the marker's result after everything else and return its output: events come in
    the order Icinga recorded the results, so once it is published, every event sent before it
    on the same stream is too (what a fixed wait of one more 5 s batch was for)."""
    output = f"the end {time.monotonic()}"
    assert core.process_check_result("h1", MARKER, 0, output).status == 200
    return output


def run_fault(core, rig, fault, times, title, gap=7.0, **account_options):
    """Results flow while ``fault(i)`` happens ``times`` times, ``gap`` s apart (more than
    Icinga's 5 s batches, so that the stream delivers between faults); then wait for the
    stream to settle and account. Returns (the objects whose newest result was lost, counters)."""
    rig.start()
    sender = Sender(core, SERVICES)
    sender.start()
    try:
        for i in range(times):
            time.sleep(gap)
            fault(i)
        time.sleep(1.0)
    finally:
        sender.stop()
    wait_for(lambda: rig.state() in ("connected", "reading"), 20, "the stream connected again")
    newest = newest_outputs(core, SERVICES)
    end = mark_the_end(core)
    # Every newest result must come, by the stream or a catch-up; late ones within the batching;
    # the marker after them, so that events of intermediate results on their way are in too.
    deadline = time.monotonic() + 3 * EVENT_DELAY
    while time.monotonic() < deadline and not set(newest.values()) | {end} <= set(rig.outputs()):
        time.sleep(0.2)
    counters = rig.health.snapshot()["counters"]
    return account(title, sender, rig.outputs(), newest, counters.get(f"{events.SOURCE}.catch_up_results", 0),
                   rig.spool.stats().duplicates, **account_options), counters


def test_icinga_reloads_mid_stream_lose_no_newest_result(icinga2_factory, rigs):
    core = icinga2_factory(objects=fault_objects())
    rig = rigs(core)
    lost_newest, counters = run_fault(core, rig, lambda i: core.reload(), 3, "Icinga reloaded 3 times mid-stream")
    assert lost_newest == []
    assert counters[f"{events.SOURCE}.connects"] == 4          # each reload ended the stream
    assert rig.state() in ("connected", "reading")


def test_icinga_restarts_mid_stream_lose_no_newest_result(icinga2_factory, rigs):
    core = icinga2_factory(objects=fault_objects())
    rig = rigs(core)
    lost_newest, counters = run_fault(core, rig, lambda i: core.restart(), 2, "Icinga restarted 2 times mid-stream")
    assert lost_newest == []
    assert counters[f"{events.SOURCE}.connects"] == 3
    assert counters[f"{events.SOURCE}.disconnects"] >= 2


def test_icinga_killed_mid_stream_the_bridge_publishes_what_icinga_still_has(icinga2_factory, rigs):
    """Icinga's own crash: it keeps last results in memory and writes them every 300 s and at a
    clean stop, so after a SIGKILL and a new start it has forgotten what it accepted since (here:
    everything, it never wrote its state). The bridge publishes what Icinga still holds, and
    what the stream had brought before the crash; what waited in Icinga's event inbox at the
    crash is gone for everybody: printed, not asserted."""
    core = icinga2_factory(objects=fault_objects())
    rig = rigs(core)
    before_crash = {}

    def crash(i):
        before_crash.update(newest_outputs(core, SERVICES))
        core.kill()
        core.start()

    lost_newest, counters = run_fault(core, rig, crash, 1, "Icinga killed (SIGKILL) once mid-stream, then started",
                                      why="superseded while the stream was down, or forgotten by Icinga's crash")
    assert lost_newest == []                       # of what Icinga holds after its new start
    published = set(rig.outputs())
    gone = [key for key, output in before_crash.items() if output not in published]
    print(f"newest results Icinga had accepted just before the crash that nobody got: {len(gone)} of"
          f" {len(before_crash)} objects (their events waited in Icinga's inbox, its state file was not written)")


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 in front of ``port`` whose connections the test can cut
    (a dropped connection, as a firewall or NAT timeout does it)."""

    def __init__(self, port):
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.pairs = []
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)          # a silent stream is no reason to end it
            with self.lock:
                self.pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source, sink):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        """End every connection through the proxy at once, both ends (the blocked pumps wake)."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
            self.cuts += 1
        for pair in pairs:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def close(self):
        self.listener.close()
        self.cut()


def test_dropped_connections_lose_no_newest_result(icinga2_factory, rigs):
    core = icinga2_factory(objects=fault_objects())
    proxy = TcpProxy(core.api_port)
    try:
        rig = rigs(core, port=proxy.port)
        lost_newest, counters = run_fault(core, rig, lambda i: proxy.cut(), 4, "the stream's connection cut 4 times")
    finally:
        proxy.close()
    assert lost_newest == []
    assert counters[f"{events.SOURCE}.connects"] == 5


# -- connection states, refusals and stop --------------------------------------------------

def test_icinga_down_then_up_waits_with_backoff_then_connects_and_catches_up(icinga2_factory, rigs):
    core = icinga2_factory(objects=[passive_service("h1", "s1")])
    core.process_check_result("h1", "s1", 1, "before the outage")
    core.stop()
    rig = rigs(core)
    rig.start()                                               # returns after the first failure
    assert rig.started_in < 5 and rig.state().startswith("waiting: ConnectionRefusedError")
    time.sleep(2.0)
    disconnects = rig.health.snapshot()["counters"][f"{events.SOURCE}.disconnects"]
    assert 2 <= disconnects <= 5                              # 0.5 s, 1 s, 2 s ... not a busy loop
    core.start()
    rig.wait_state("connected", timeout=15)
    assert rig.outputs() == ["before the outage"]


def test_wrong_credentials_and_missing_permissions_say_so_and_keep_trying(icinga2_factory, rigs):
    core = icinga2_factory(objects=[passive_service("h1", "s1")], api_users={
        "no-events": {"password": "pw-1", "permissions": ["objects/query/Host", "objects/query/Service"]},
        "no-objects": {"password": "pw-2", "permissions": ["events/CheckResult"]}})
    wrong = rigs(core, "wrong", password="not-the-password")
    wrong.start()
    assert wrong.state().startswith("waiting: POST /v1/events: 401")
    no_events = rigs(core, "no-events", user="no-events", password="pw-1")
    no_events.start()
    assert no_events.state().startswith("waiting: POST /v1/events: 404 (does the ApiUser have the permission events/CheckResult?)")
    no_objects = rigs(core, "no-objects", user="no-objects", password="pw-2")
    no_objects.start()
    assert no_objects.state().startswith("waiting: GET /v1/objects/hosts?attrs=name&attrs=last_check_result: 404"
                                         " (does the ApiUser have the permission objects/query/Host?)")
    for rig in (wrong, no_events, no_objects):
        assert rig.outputs() == [] and rig.source.is_alive()


def test_a_stop_ends_a_silent_stream_at_once_and_one_in_backoff_too(icinga2_factory, rigs):
    core = icinga2_factory(objects=[passive_service("h1", "s1")])
    rig = rigs(core)
    rig.start()
    time.sleep(1.0)                                           # blocked in the read: nothing comes
    assert rig.stop() < 0.5
    core.stop()
    rig.start()
    time.sleep(1.0)
    assert rig.state().startswith("waiting")
    assert rig.stop() < 0.5
    assert rig.state() == "stopped"


def test_a_huge_result_is_dead_lettered_and_the_stream_goes_on(icinga2_factory, rigs):
    core = icinga2_factory(objects=[passive_service("h1", "s1"), passive_service("h1", "s2")])
    rig = rigs(core)
    rig.start()
    core.process_check_result("h1", "s1", 0, "x" * (2 << 20))
    core.process_check_result("h1", "s2", 0, "small one after it")
    wait_for(lambda: rig.outputs() == ["small one after it"], 15, "the small result")
    dead = rig.spool.dead_letters()
    assert [d.reason for d in dead] == [f"event longer than {events.MAX_EVENT_BYTES} bytes"]
    assert rig.state() in ("connected", "reading")


# -- latency -------------------------------------------------------------------------------

def test_latency_from_icinga_to_the_spool(icinga2_factory, rigs):
    """Three runs of 20 results 0.25 s apart: from Icinga's 200 to the message in the spool.
    Icinga 2.13 hands events out in batches every 5 s, so up to about 5 s is expected."""
    core = icinga2_factory(objects=[passive_service("h1", "s1")])
    rig = rigs(core)
    rig.start()
    medians = []
    for run in range(3):
        sent = {}
        for i in range(20):
            output = f"run {run} result {i}"
            sent[output] = time.time()
            assert core.process_check_result("h1", "s1", i % 4, output).status == 200
            time.sleep(0.25)
        wait_for(lambda: set(sent) <= set(rig.outputs()), 15, "every result")
        delays = sorted(at - sent[record["output"]] for record, at in rig.published() if record["output"] in sent)
        medians.append(statistics.median(delays))
        print(f"\nlatency run {run + 1}: median {statistics.median(delays):.2f} s,"
              f" min {delays[0]:.2f} s, max {delays[-1]:.2f} s")
    assert max(medians) < 6.0


# -- the bridge process, publishing to a real ActiveMQ ------------------------------------------

QUEUE = "/queue/icinga.results"
REMOTE_QUEUE = "/queue/remote.results"


@pytest.fixture
def icinga_bridge(tmp_path, activemq):
    """make(core) -> a Bridge process (not started) with core: icinga2 publishing Icinga's results
    to QUEUE on ``activemq``; stopped at teardown."""
    made = []

    def make(core, name="bridge", inbound=""):
        workdir = tmp_path / name
        bridge = Bridge(workdir, bridge_config(workdir, [activemq.stomp_port], ocsp=False, destination=QUEUE,
                                               inbound=inbound) + icinga2_yaml(core))
        made.append(bridge)
        return bridge

    yield make
    for bridge in made:
        bridge.stop()


def summaries(probe):
    """[(result_id, output, received_at)] of every message the probe received."""
    return [(m.headers["result_id"], wlcg.decode(m.body)["summaryData"], m.received_at) for m in probe.messages]


def start_bridge(bridge):
    """Start the bridge process; return once its status shows the stream connected (and so
    caught up: "reading" comes only after that)."""
    bridge.start()
    status = bridge.wait_status(lambda s: s.get("states", {}).get(events.SOURCE) in ("connected", "reading"), 30)
    assert status, bridge.log_text()[-3000:]
    return bridge


def test_the_bridge_publishes_icinga_results_to_the_broker_within_icinga_s_batching(
        icinga2_factory, icinga_bridge, activemq, stomp_probe_factory):
    core = icinga2_factory(objects=[passive_service("h1", "s1"), host("h2")])
    probe = stomp_probe_factory(activemq, QUEUE)
    bridge = start_bridge(icinga_bridge(core))
    core.process_check_result("h1", "s1", 2, "CRITICAL - disk full\nsecond line", performance_data=["used=91%"])
    core.process_check_result("h2", None, 1, "host down")
    probe.wait_for_count(2, timeout=15)
    by_host = {m.headers["host"]: m for m in probe.messages}
    service = wlcg.decode(by_host["h1"].body)
    assert (service["metricName"], service["metricStatus"], service["summaryData"]) == ("s1", "CRITICAL", "CRITICAL - disk full")
    assert service["detailsData"] == "second line" and service["performanceData"] == "used=91%"
    # WLCG reports a DOWN host as CRITICAL
    assert (by_host["h2"].headers["metric"], by_host["h2"].headers["status"]) == (wlcg.HOST_METRIC_NAME, "CRITICAL")
    medians = []
    for run in range(3):
        probe.clear()
        sent = {}
        for i in range(20):
            output = f"run {run} result {i}"
            sent[output] = time.monotonic()
            assert core.process_check_result("h1", "s1", i % 4, output).status == 200
            time.sleep(0.25)
        deadline = time.monotonic() + 15
        while not set(sent) <= {output for _, output, _ in summaries(probe)} and time.monotonic() < deadline:
            time.sleep(0.1)
        delays = sorted(at - sent[output] for _, output, at in summaries(probe) if output in sent)
        assert len(delays) == 20
        medians.append(statistics.median(delays))
        print(f"\nIcinga -> bridge -> ActiveMQ -> subscriber, run {run + 1}: median {medians[-1]:.2f} s,"
              f" min {delays[0]:.2f} s, max {delays[-1]:.2f} s")
    assert max(medians) < 6.0
    assert bridge.wait_counter(f"{events.SOURCE}.events", 62) >= 62     # 2 + 3 x 20


def account_probe(title, sender, probe, newest, catch_ups):
    received = summaries(probe)
    outputs = [output for _, output, _ in received]
    ids = [result_id for result_id, _, _ in received]
    return account(title, sender, outputs, newest, catch_ups, len(ids) - len(set(ids)))


def settle(core, probe):
    """{object: its newest output}, once every newest one and the marker sent after them
    (mark_the_end) arrived, or 4 batches passed."""
    newest = newest_outputs(core, SERVICES)
    end = mark_the_end(core)
    received = lambda: {o for _, o, _ in summaries(probe)}
    deadline = time.monotonic() + 4 * EVENT_DELAY
    while time.monotonic() < deadline and not set(newest.values()) | {end} <= received():
        time.sleep(0.2)
    return newest


def test_bridge_killed_mid_stream_loses_no_newest_result(icinga2_factory, icinga_bridge, activemq, stomp_probe_factory):
    core = icinga2_factory(objects=fault_objects())
    probe = stomp_probe_factory(activemq, QUEUE)
    bridge = start_bridge(icinga_bridge(core))
    sender = Sender(core, SERVICES)
    sender.start()
    catch_ups = 0
    try:
        for _ in range(2):
            time.sleep(7.0)
            bridge.kill()                                     # kill -9, mid-stream
            time.sleep(2.0)                                   # results go on meanwhile
            start_bridge(bridge)
            catch_ups += bridge.counter(f"{events.SOURCE}.catch_up_results")
        time.sleep(3.0)
    finally:
        sender.stop()
    newest = settle(core, probe)
    lost_newest = account_probe("bridge kill -9 twice mid-stream", sender, probe, newest, catch_ups)
    assert lost_newest == []
    assert catch_ups >= len(SERVICES)         # each restart caught up what came while it was dead


def test_icinga_reloaded_and_restarted_under_the_bridge_loses_no_newest_result(
        icinga2_factory, icinga_bridge, activemq, stomp_probe_factory):
    core = icinga2_factory(objects=fault_objects())
    probe = stomp_probe_factory(activemq, QUEUE)
    bridge = start_bridge(icinga_bridge(core))
    sender = Sender(core, SERVICES)
    sender.start()
    try:
        for fault in (core.reload, core.restart, core.reload):
            time.sleep(7.0)
            fault()
        time.sleep(3.0)
    finally:
        sender.stop()
    newest = settle(core, probe)
    status = bridge.wait_status(lambda s: True)
    lost_newest = account_probe("Icinga reload, restart, reload under the bridge", sender, probe, newest,
                                status.get("counters", {}).get(f"{events.SOURCE}.catch_up_results", 0))
    assert lost_newest == []
    assert status["counters"][f"{events.SOURCE}.connects"] == 4


def test_results_the_bridge_injected_are_not_published_again(
        icinga2_factory, icinga_bridge, activemq, stomp_probe_factory):
    """Both directions on one Icinga: a remote result the bridge writes into Icinga comes back on
    the event stream with the bridge's check_source, and the echo guard drops it; Icinga's own
    result beside it is published."""
    core = icinga2_factory(objects=[passive_service("h1", "remote"), passive_service("h1", "local")])
    probe = stomp_probe_factory(activemq, QUEUE)
    bridge = icinga_bridge(core, inbound=f"""
inbound:
  enabled: true
  subscriptions: [{{destination: "{REMOTE_QUEUE}"}}]
  policy: {{rules: [{{senders: ['*'], hosts: ['*'], services: ['*'], host_checks: true}}]}}
""")
    start_bridge(bridge)
    remote = CheckResult(host="h1", service="remote", state=2, output="remote says CRITICAL", timestamp=int(time.time()))
    publish(activemq, REMOTE_QUEUE, wlcg.encode(remote, {"siteName": "REMOTE", "gatheredAt": "remote-nagios"}),
            headers={"persistent": "true", "nagios_host": "remote-nagios", "result_id": remote.identity()})
    injected = core.wait_for_result("h1", "remote", lambda r: r["output"] == "remote says CRITICAL", timeout=20)
    assert injected["check_source"] == CHECK_SOURCE
    core.process_check_result("h1", "local", 1, "local WARNING")
    deadline = time.monotonic() + 3 * EVENT_DELAY                # both events come in the same batches
    while "local WARNING" not in {o for _, o, _ in summaries(probe)} and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(EVENT_DELAY)
    outputs = [output for _, output, _ in summaries(probe)]
    assert outputs == ["local WARNING"]
    assert bridge.wait_counter(f"{events.SOURCE}.events", 2) >= 2  # the injected one was read, and dropped
