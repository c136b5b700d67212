"""Inbound into a real Icinga 2 (Debian's 2.13, tests/sandbox/icinga2.py) through its API.

Two levels: the writer alone (cores/icinga2/writer.py in this process, fed from a real inbound
spool: no broker), and the whole bridge (`msg-nagios-bridge run`, core: icinga2) fed through a
real ActiveMQ. Each fault test prints sent / delivered / lost / duplicated, as the fault suite
does for Nagios: every result goes to an object of its own, so "delivered" is the number of
objects whose last_check_result is the one sent (read back in one /v1/objects query), and
"duplicated" the number of results Icinga recorded twice, counted on an event stream that
stays open through the fault (``duplicated`` is None where the fault ends the stream).
"""
import json
import threading
import time

import pytest

from msg_nagios_bridge import config
from msg_nagios_bridge.cores import core_for
from msg_nagios_bridge.cores.icinga2.writer import lane_of
from msg_nagios_bridge.daemon.health import Health
from msg_nagios_bridge.formats import wlcg
from msg_nagios_bridge.inbound.echo import EchoGuard
from msg_nagios_bridge.model import CheckResult, Message, result_to_dict
from msg_nagios_bridge.spool import Spool
from tests.sandbox.icinga2 import host, passive_service
from tests.sandbox.ports import wait_until
from tests.sandbox.stomp_probe import connect

pytestmark = pytest.mark.integration

PERMISSIONS = ["events/CheckResult", "actions/process-check-result", "objects/query/Host", "objects/query/Service"]
USER, PASSWORD = "bridge", "bridge-secret"
SOURCE = "msg-nagios-bridge@central.example.org"
QUEUE = "/queue/icinga.inbound.test"
FIELDS = {"siteName": "REMOTE", "gatheredAt": "remote-nagios", "role": "site"}
HOSTS = ["ce01.remote.org", "ce02.remote.org"]




MARKER = ("router.remote.org", "marker")   # a service no result goes to: see wait_for_the_stream


def wait_for_the_stream(icinga, stream, timeout=15):
    """Wait until ``stream`` holds the events of every result Icinga has recorded so far:
    events come in the order of the results (in 5 s batches on 2.13), so once a marker result
    sent now is on the stream, everything before it is too."""
    output = f"marker {time.monotonic()}"
    assert icinga.process_check_result(*MARKER, 0, output).status == 200
    assert wait_until(lambda: any(e["check_result"]["output"] == output for e in stream.events) or None,
                      timeout), "the marker's event did not come"


def central_icinga(icinga2_factory, services=40, password=PASSWORD):
    """An Icinga with passive services svc000.. on each of HOSTS, the MARKER service and the
    bridge's ApiUser."""
    objects = [passive_service(h, f"svc{i:03d}") for h in HOSTS for i in range(services)]
    objects += [host("router.remote.org"), passive_service(*MARKER)]
    return icinga2_factory(objects=objects,
                           api_users={USER: {"password": password, "permissions": PERMISSIONS}})


def icinga2_section(icinga, password=PASSWORD, refresh=60, login=None, connections=None):
    """The icinga2 section; ``connections`` left out: the default (several lanes)."""
    login = login or f"user: {USER}, password: {password}"
    lanes = f", connections: {connections}" if connections else ""
    return (f"core: icinga2\n"
            f"icinga2: {{host: 127.0.0.1, port: {icinga.api_port}, ca_file: {icinga.ca_file}, {login},"
            f" publish: false, check_source: {SOURCE}, objects_refresh: {refresh}{lanes}}}\n")


def results_for(count, tag, timestamp=None):
    """``count`` results, each for an object of its own (service results, round-robin over HOSTS)."""
    when = timestamp or int(time.time()) - 60
    return [CheckResult(host=HOSTS[i % len(HOSTS)], service=f"svc{i // len(HOSTS):03d}", state=i % 4,
                        output=f"{tag} result {i}", long_output=f"detail of {i}\nsecond line",
                        perfdata=f"n={i};10;20 'a b'=1s", timestamp=when)
            for i in range(count)]


def tally(icinga, results, stream=None, settle=6.0):
    """(delivered, lost, duplicated): objects showing the result sent for them; those that do
    not; results seen more than once on ``stream`` (None without a stream). Waits ``settle``
    seconds first when a stream is given: 2.13 delivers events in 5 s batches."""
    reply = icinga.api("GET", "/v1/objects/services?attrs=last_check_result&attrs=host_name&attrs=name")
    assert reply.status == 200, reply
    shown = {(e["attrs"]["host_name"], e["attrs"]["name"]): e["attrs"]["last_check_result"] or {}
             for e in reply.body["results"]}
    missing = [(r.host, r.service, shown.get((r.host, r.service), {}).get("output"))
               for r in results
               if not (shown.get((r.host, r.service), {}).get("output", "").startswith(r.output + "\n")
                       and shown[(r.host, r.service)].get("check_source") == SOURCE)]
    if missing:
        print(f"\nnot shown as sent ({len(missing)}): {missing[:10]}")
    delivered = len(results) - len(missing)
    duplicated = None
    if stream is not None:
        time.sleep(settle)
        seen = {}
        for event in stream.events:
            cr = event["check_result"]
            if cr.get("check_source") == SOURCE:
                key = (event["host"], event.get("service"), cr["output"])
                seen[key] = seen.get(key, 0) + 1
        duplicated = sum(n - 1 for n in seen.values())
    return delivered, len(results) - delivered, duplicated


def report(name, sent, delivered, lost, duplicated):
    print(f"\n{name}: sent={sent} delivered={delivered} lost={lost} duplicated={duplicated}")


# -- the writer alone, against the real Icinga 2 ----------------------------------------------------

class WriterRig:
    """The Icinga 2 core's writer in this process, on a real inbound spool in ``tmp_path``."""

    def __init__(self, tmp_path, icinga, password=PASSWORD, refresh=60, login=None, connections=None):
        ca = icinga.ca_file
        self.settings = config.parse(icinga2_section(icinga, password, refresh, login, connections) + f"""
site: {{name: CENTRAL, nagios_name: central.example.org}}
brokers: {{hosts: ["127.0.0.1:1"]}}
spool: {{directory: {tmp_path}/spool}}
sources: {{ocsp_pipe: {{enabled: false}}}}
routes: [{{name: r, destination: /queue/out}}]
inbound: {{enabled: true, subscriptions: [{{destination: {QUEUE}}}], policy: {{rules: [{{senders: ['*']}}]}}}}
""", "rig.yaml")
        assert str(ca) in self.settings.icinga2.ca_file
        (tmp_path / "spool").mkdir(parents=True, exist_ok=True)
        self.spool = Spool(str(tmp_path / "spool" / "inbound.sqlite"))
        self.health = Health()
        self.echo = EchoGuard(None)
        self.core = core_for(self.settings)
        self.writer = self.core.writer(self.spool, self.health, self.echo)

    def put(self, results):
        self.spool.put([Message(message_id=f"{r.identity()}", destination="icinga2", headers={},
                                body=json.dumps(result_to_dict(r)).encode()) for r in results])

    def state(self):
        return self.health.snapshot()["states"].get("icinga2_writer", "")

    def wait_empty(self, timeout=30):
        return wait_until(lambda: self.spool.stats().depth == 0 or None, timeout)

    def close(self):
        self.writer.stop()
        self.writer.join(15)
        self.spool.close()


@pytest.fixture
def rig_factory(tmp_path):
    made = []

    def make(icinga, **kwargs):
        rig = WriterRig(tmp_path / f"rig{len(made)}", icinga, **kwargs)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.close()


def test_results_land_with_output_perfdata_check_time_and_check_source(icinga2_factory, rig_factory):
    icinga = central_icinga(icinga2_factory, services=2)
    rig = rig_factory(icinga)
    when = time.time() - 120.25
    service = CheckResult(host="ce01.remote.org", service="svc000", state=2, output="CRITICAL - disk full",
                          long_output="sda1 99%\nsdb1 97%", perfdata="used=99%;90;95 'free space'=1GB",
                          timestamp=when)
    down = CheckResult(host="ce02.remote.org", service=None, state=1, output="host DOWN", timestamp=when)
    unreachable = CheckResult(host="router.remote.org", service=None, state=2, output="unreachable",
                              timestamp=when)
    rig.put([service, down, unreachable])
    rig.writer.start()
    assert rig.wait_empty(), rig.state()
    got = icinga.object_state("ce01.remote.org", "svc000")["last_check_result"]
    assert got["output"] == "CRITICAL - disk full\nsda1 99%\nsdb1 97%"
    assert got["performance_data"] == ["used=99%;90;95", "'free space'=1GB"]
    assert got["state"] == 2 and got["active"] is False and got["check_source"] == SOURCE
    assert abs(got["execution_start"] - when) < 0.001 and abs(got["execution_end"] - when) < 0.001
    for result in (down, unreachable):   # hosts: DOWN and UNREACHABLE both go as exit status 1 (DOWN)
        attrs = icinga.object_state(result.host)
        assert attrs["state"] == 1 and attrs["last_check_result"]["output"] == result.output
    assert rig.health.counter("injected") == 3 and rig.state() in ("writing", "waiting for results")


def test_unknown_objects_become_dead_letters_and_icinga_stays_up(icinga2_factory, rig_factory):
    icinga = central_icinga(icinga2_factory, services=2)
    rig = rig_factory(icinga)
    good = results_for(4, "good")
    unknown = CheckResult(host="ce01.remote.org", service="no-such-service", state=1, output="who?")
    rig.put([good[0], unknown, good[1]])
    rig.writer.start()
    assert rig.wait_empty(), rig.state()
    dead = rig.spool.dead_letters()
    assert [d.reason.split(":")[0] for d in dead] == ["unknown-object"], dead
    assert "'ce01.remote.org!no-such-service'" in dead[0].reason
    # Gone from Icinga after the bridge read its list: refused by Icinga (404), also a dead letter.
    icinga.objects = [o for o in icinga.objects if o.get("name") != "svc001"]
    icinga.reload()
    rig.put([good[2], good[3]])
    assert rig.wait_empty(), rig.state()
    reasons = sorted(d.reason for d in rig.spool.dead_letters())
    assert len(reasons) == 3 and all(r.startswith("unknown-object: ") for r in reasons), reasons
    assert any("answered 404" in r and "permission" in r for r in reasons), reasons
    assert icinga.running() and icinga.api_answers()
    assert tally(icinga, good[:2])[0] == 2
    assert rig.health.counter("refused.unknown-object") == 3


def test_icinga_stopped_for_a_while_then_started_loses_nothing(icinga2_factory, rig_factory):
    icinga = central_icinga(icinga2_factory)
    rig = rig_factory(icinga)
    rig.writer.start()
    results = results_for(60, "stopped")
    rig.put(results[:20])
    assert rig.wait_empty(), rig.state()
    icinga.stop()
    rig.put(results[20:])
    assert wait_until(lambda: rig.state().startswith("waiting: ") or None, 15), rig.state()
    time.sleep(3)                                        # a few backoffs while it is down
    assert rig.spool.stats().depth == 40
    icinga.start()
    assert rig.wait_empty(40), rig.state()
    delivered, lost, _ = tally(icinga, results)
    report("writer: icinga stopped", len(results), delivered, lost, None)
    assert lost == 0 and rig.health.counter("injected") == 60


def test_a_reload_mid_stream_loses_nothing(icinga2_factory, rig_factory):
    icinga = central_icinga(icinga2_factory, services=300)
    rig = rig_factory(icinga)
    results = results_for(600, "reload")
    rig.writer.start()
    feeder = threading.Thread(target=lambda: [rig.put(results[i:i + 20]) or time.sleep(0.02)
                                              for i in range(0, len(results), 20)])
    feeder.start()
    assert wait_until(lambda: rig.health.counter("injected") >= 100 or None, 20), rig.state()   # mid-stream
    icinga.reload()
    feeder.join()
    assert rig.wait_empty(60), rig.state()
    delivered, lost, _ = tally(icinga, results)
    report("writer: icinga reloaded", len(results), delivered, lost,
           f"<= {rig.health.counter('icinga2_resent') + rig.health.counter('icinga2_no_answer')} (sent again)")
    assert lost == 0


def test_after_a_reload_the_lanes_dead_connections_cost_one_backoff_not_one_each(icinga2_factory, rig_factory):
    """A reload (or a restart quicker than the lanes' idle close) ends every kept-alive
    connection. The first lanes to find theirs dead hold the writer back, and all are closed.
    Kept, each of the others would fail in turn on its next request, each failure a backoff,
    doubled when no answer came between."""
    icinga = central_icinga(icinga2_factory, services=60)
    rig = rig_factory(icinga)
    rig.writer.start()
    before = results_for(120, "before")                  # enough objects to use every lane
    rig.put(before)
    assert rig.wait_empty(), rig.state()
    assert all(lane.client.connected for lane in rig.writer.lanes)
    icinga.reload()                                      # returns once the API answers again
    after = results_for(120, "after", timestamp=int(time.time()) - 30)
    started = time.monotonic()
    for i in range(0, len(after), 4):                    # a stream: a few results at a time
        rig.put(after[i:i + 4])
        time.sleep(0.05)
    assert rig.wait_empty(60), rig.state()
    took = time.monotonic() - started
    delivered, lost, _ = tally(icinga, after)
    print(f"\nafter a reload: {took:.1f} s, {rig.health.counter('icinga2_no_answer')} requests without an answer")
    assert lost == 0
    # The lanes given the first results find their connections dead at the same moment (at
    # most 4: one put); then all are closed. Kept, every one of the 8 found its own in turn.
    assert rig.health.counter("icinga2_no_answer") <= 4
    assert took < 5, f"{took:.1f} s to deliver after the reload"


def test_many_results_for_a_few_objects_through_several_lanes_land_in_order_and_none_is_lost(
        icinga2_factory, rig_factory):
    """Each object's results go on one lane (one connection) in their order; the lanes send at
    the same time. Icinga must record every result once, each object's in the order sent, and
    show the newest."""
    icinga = central_icinga(icinga2_factory, services=4)
    rig = rig_factory(icinga, connections=4)
    objects = [(HOSTS[i % 2], f"svc{i // 2:03d}") for i in range(8)]
    assert len({lane_of(f"{h}!{s}", 4) for h, s in objects}) >= 3, "the objects must spread over lanes"
    rounds = 60
    base = int(time.time()) - rounds - 60
    # Round k of every object, interleaved as they would come from a broker; each object's
    # check time grows with k, so its newest result is also its last one.
    results = [CheckResult(host=h, service=s, state=k % 3, output=f"lanes {h}!{s} #{k:03d}", timestamp=base + k)
               for k in range(rounds) for h, s in objects]
    stream = icinga.events(queue_name="lanes")
    rig.writer.start()
    feeder = threading.Thread(target=lambda: [rig.put(results[i:i + 37]) or time.sleep(0.01)
                                              for i in range(0, len(results), 37)])
    feeder.start()
    feeder.join()
    assert rig.wait_empty(60), rig.state()
    assert rig.spool.stats().dead_letters == 0
    assert rig.health.counter("injected") == len(results) and rig.health.counter("icinga2_no_answer") == 0
    for h, s in objects:
        assert icinga.object_state(h, s)["last_check_result"]["output"] == f"lanes {h}!{s} #{rounds - 1:03d}"
    wait_for_the_stream(icinga, stream, timeout=20)     # 2.13 delivers events in 5 s batches
    assert len(stream.events) >= len(results) + 1, len(stream.events)     # and the marker
    seen = {}
    for event in stream.events:
        if event["check_result"].get("check_source") == SOURCE:
            seen.setdefault((event["host"], event.get("service")), []).append(event["check_result"]["output"])
    stream.close()
    for h, s in objects:
        assert seen.get((h, s)) == [f"lanes {h}!{s} #{k:03d}" for k in range(rounds)], (h, s)
    report("writer: 4 lanes, 8 objects", len(results), sum(len(v) for v in seen.values()), 0, 0)


def test_a_pause_longer_than_icingas_idle_timeout_costs_no_request_without_an_answer(icinga2_factory, rig_factory):
    """Icinga closes a connection idle for 10 to 15 s; a request sent on it gets no answer and
    would be sent twice. The writer closes an idle connection first."""
    icinga = central_icinga(icinga2_factory, services=2)
    rig = rig_factory(icinga)
    first, second = results_for(2, "idle")
    rig.put([first])
    rig.writer.start()
    assert rig.wait_empty(), rig.state()
    time.sleep(17)
    rig.put([second])
    assert rig.wait_empty(), rig.state()
    assert tally(icinga, [first, second])[1] == 0
    assert rig.health.counter("icinga2_no_answer") == 0 and rig.health.counter("written") == 2


def test_the_apiuser_core_config_prints_is_enough_with_a_client_certificate(icinga2_factory, rig_factory):
    icinga = icinga2_factory(objects=[passive_service("h1", "s1")])
    cert, key = icinga.client_cert("msg-nagios-bridge.central.example.org")
    rig = rig_factory(icinga, login=f"cert_file: {cert}, key_file: {key}")
    text = rig.core.wiring()
    assert 'client_cn = "msg-nagios-bridge.central.example.org"' in text
    assert "actions/process-check-result" in text and "events/CheckResult" not in text   # publish: false
    icinga.extra_config = text
    icinga.reload()
    result = CheckResult(host="h1", service="s1", state=3, output="by certificate", timestamp=time.time() - 1)
    rig.put([result])
    rig.writer.start()
    assert rig.wait_empty(), rig.state()
    assert icinga.object_state("h1", "s1")["last_check_result"]["output"] == "by certificate"
    assert rig.health.counter("injected") == 1 and not rig.spool.dead_letters()


def spool_depth(path):
    """Entries in a bridge's inbound spool, read without disturbing it (-1 if unreadable)."""
    import sqlite3
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute("SELECT count(*) FROM messages").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return -1


def test_the_daemon_killed_while_writing_and_restarted_loses_nothing(icinga2_factory, tmp_path):
    """`msg-nagios-bridge run` (no broker reachable: the writer drains what its inbound spool
    holds) is kill -9ed while it writes, then started again. Counted on an event stream that
    stays open: every result recorded at least once; those recorded twice are the ones answered
    but not yet deleted when the process died."""
    from tests.sandbox.bridge import Bridge
    # 4,000 results: the writer's lanes answer 1,500 within the 0.5 s before the first deletion,
    # and the kill must come while the spool is partly drained.
    icinga = central_icinga(icinga2_factory, services=2000)
    stream = icinga.events(queue_name="kill9")
    workdir = tmp_path / "daemon"
    (workdir / "spool").mkdir(parents=True)
    bridge = Bridge(workdir, icinga2_section(icinga) + f"""
site: {{name: CENTRAL, nagios_name: central.example.org}}
brokers: {{hosts: ["127.0.0.1:1"], backoff_initial: 1, backoff_max: 5}}
spool: {{directory: {workdir}/spool}}
sources: {{ocsp_pipe: {{enabled: false}}}}
routes: [{{name: r, destination: /queue/out}}]
inbound: {{enabled: true, subscriptions: [{{destination: {QUEUE}}}], policy: {{rules: [{{senders: ['*']}}]}}}}
logging: {{level: INFO}}
""")
    results = results_for(4000, "daemon-kill9")
    path = workdir / "spool" / "inbound.sqlite"
    with Spool(str(path)) as spool:
        spool.put([Message(message_id=r.identity(), destination="icinga2", headers={},
                           body=json.dumps(result_to_dict(r)).encode()) for r in results])
    try:
        bridge.start()
        left = wait_until(lambda: 0 < spool_depth(path) < len(results) and spool_depth(path), 30, interval=0.005)
        bridge.kill()
        assert left, bridge.log_text()[-3000:]
        bridge.start()
        assert wait_until(lambda: spool_depth(path) == 0 or None, 60), bridge.log_text()[-3000:]
        wait_for_the_stream(icinga, stream)      # every result was answered: all their events
        assert len(stream.events) >= len(results) + 1             # and the marker
        delivered, lost, duplicated = tally(icinga, results, stream, settle=0)
        seen = {(e["host"], e["service"], e["check_result"]["output"]) for e in stream.events}
        on_stream = sum(1 for r in results
                        if (r.host, r.service, f"{r.output}\n{r.long_output}") in seen)
    finally:
        bridge.stop()
        stream.close()
    report(f"daemon: kill -9 with {left} left, restart", len(results), delivered, lost, duplicated)
    assert lost == 0 and on_stream == len(results)
    assert duplicated <= left           # only what was still in the spool can be sent twice


def test_wrong_password_holds_everything_with_a_clear_state(icinga2_factory, rig_factory):
    icinga = central_icinga(icinga2_factory)
    rig = rig_factory(icinga, password="wrong")
    results = results_for(10, "auth")
    rig.put(results)
    rig.writer.start()
    state = wait_until(lambda: "401" in rig.state() and rig.state(), 15)
    assert state and state.startswith("waiting: Icinga 2 refuses the bridge's credentials (401"), rig.state()
    assert rig.spool.stats().depth == 10 and not rig.spool.dead_letters()


def test_the_command_file_writer_still_works_with_icinga2s_compat_pipe_and_says_it_is_deprecated(
        icinga2_factory, tmp_path, caplog):
    pipe = tmp_path / "icinga2.cmd"
    icinga = icinga2_factory(objects=[passive_service("h1", "s1")],
                             extra_config=f'object ExternalCommandListener "command" {{ command_path = "{pipe}" }}\n')
    assert wait_until(lambda: pipe.exists() or None, 10)
    from msg_nagios_bridge.cores.nagios.writer import NagiosWriter
    settings = config.parse(f"""
site: {{name: CENTRAL}}
brokers: {{hosts: ["127.0.0.1:1"]}}
spool: {{directory: {tmp_path}/spool}}
sources: {{ocsp_pipe: {{enabled: false}}}}
routes: [{{name: r, destination: /queue/out}}]
inbound: {{enabled: true, subscriptions: [{{destination: {QUEUE}}}], policy: {{rules: [{{senders: ['*']}}]}},
          writer: command_file, command_file: {pipe}}}
""", "pipe.yaml")
    (tmp_path / "spool").mkdir()
    spool, health = Spool(str(tmp_path / "spool" / "inbound.sqlite")), Health()
    writer = NagiosWriter(settings.inbound, spool, health, EchoGuard(None))
    result = CheckResult(host="h1", service="s1", state=1, output="through the pipe", timestamp=time.time() - 5)
    spool.put([Message(message_id="m1", destination="nagios", headers={},
                       body=json.dumps(result_to_dict(result)).encode())])
    with caplog.at_level("WARNING"):
        writer.start()
        try:
            got = icinga.wait_for_result("h1", "s1", lambda r: r["output"] == "through the pipe", timeout=15)
            assert got["state"] == 1
            assert wait_until(lambda: spool.stats().depth == 0 or None, 15)
        finally:
            writer.stop()
            writer.join(15)
            spool.close()
    state = health.snapshot()["states"].get("command_file", "")
    assert state.startswith("writing; deprecated: ") and "2.18" in state and "core: icinga2" in state
    assert any("read by Icinga 2" in r.getMessage() and "deprecated" in r.getMessage() for r in caplog.records)
    from msg_nagios_bridge.cli.selfcheck import Thresholds, evaluate
    from msg_nagios_bridge.daemon.status import Status
    status = Status.from_json({"time": time.time(), "pid": 1, "states": {"command_file": state}, "since": {},
                               "counters": {}, "last": {}})
    code, line = evaluate(status, Thresholds(), time.time())
    assert code == 0 and "deprecated" in line


# -- the whole bridge: ActiveMQ -> msg-nagios-bridge run (core: icinga2) -> Icinga 2 ------------------

def bridge_inbound(icinga, password=PASSWORD):
    return icinga2_section(icinga, password) + f"""
inbound:
  enabled: true
  subscriptions: [{{destination: "{QUEUE}"}}]
  policy: {{rules: [{{senders: ['*'], hosts: ['*'], services: ['*'], host_checks: true}}]}}
"""


class Publisher(threading.Thread):
    """Sends ``results`` as WLCG messages to QUEUE at ``rate``/s over one STOMP connection,
    persistent, a receipt on the last; ``sent`` counts what was handed to the broker."""

    def __init__(self, broker, results, rate=200.0):
        super().__init__(daemon=True)
        self.broker, self.results, self.rate = broker, results, rate
        self.sent = 0
        self.error = None

    def run(self):
        try:
            conn, receipts = connect(self.broker)
            try:
                t0 = time.monotonic()
                for i, result in enumerate(self.results):
                    delay = t0 + i / self.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    headers = {"persistent": "true", "nagios_host": "remote-nagios", "result_id": result.identity()}
                    if i == len(self.results) - 1:
                        headers["receipt"] = "last"
                    conn.send(QUEUE, wlcg.encode(result, FIELDS), headers=headers)
                    self.sent += 1
                receipts.wait("last", 30)
            finally:
                conn.disconnect()
        except Exception as exc:  # noqa: BLE001 - the test reports it
            self.error = exc


def resent(bridge):
    """The bound on duplicates where the fault ends the event stream: results sent again."""
    counters = bridge.status().get("counters", {})
    return (f"<= {counters.get('icinga2_resent', 0) + counters.get('icinga2_no_answer', 0)} (sent again:"
            f" {counters.get('icinga2_resent', 0)} answered shortly before a break,"
            f" {counters.get('icinga2_no_answer', 0)} without an answer)")


def wait_delivered(icinga, results, timeout=60):
    """Poll until every result shows on its object (or ``timeout``); return tally()."""
    deadline = time.monotonic() + timeout
    while True:
        counted = tally(icinga, results)
        if counted[1] == 0 or time.monotonic() > deadline:
            return counted
        time.sleep(0.5)


def test_bridge_results_land_and_unknown_objects_are_dead_letters(activemq, icinga2_factory, bridge_factory):
    icinga = central_icinga(icinga2_factory, services=5)
    bridge = bridge_factory([activemq.stomp_port], ocsp=False, site="CENTRAL", inbound=bridge_inbound(icinga))
    bridge.start()
    assert bridge.wait_state("icinga2_writer", "waiting for results"), bridge.log_text()[-3000:]
    results = results_for(6, "bridge")
    unknown = CheckResult(host="ce01.remote.org", service="not-in-icinga", state=2, output="nobody",
                          timestamp=time.time() - 60)
    publisher = Publisher(activemq, results[:3] + [unknown] + results[3:])
    publisher.run()
    assert publisher.error is None, publisher.error
    delivered, lost, _ = wait_delivered(icinga, results, 30)
    assert lost == 0, bridge.log_text()[-3000:]
    got = icinga.object_state(results[0].host, results[0].service)["last_check_result"]
    assert got["output"] == "bridge result 0\ndetail of 0\nsecond line" and got["check_source"] == SOURCE
    assert got["performance_data"] == ["n=0;10;20", "'a b'=1s"]
    assert int(got["execution_start"]) == int(results[0].timestamp)
    assert bridge.wait_counter("refused.unknown-object", 1) == 1
    assert bridge.wait_counter("injected", 6) == 6
    assert icinga.running() and icinga.api_answers()


def test_bridge_icinga_stopped_mid_stream_then_started_loses_nothing(activemq, icinga2_factory, bridge_factory):
    icinga = central_icinga(icinga2_factory, services=150)
    bridge = bridge_factory([activemq.stomp_port], ocsp=False, site="CENTRAL", inbound=bridge_inbound(icinga))
    bridge.start()
    assert bridge.wait_state("icinga2_writer", "waiting for results"), bridge.log_text()[-3000:]
    results = results_for(300, "stopped")
    publisher = Publisher(activemq, results, rate=100)
    publisher.start()
    assert wait_until(lambda: publisher.sent >= 80 or None, 20), (publisher.sent, publisher.error)   # mid-stream
    icinga.stop()
    assert bridge.wait_state("icinga2_writer", "waiting: "), bridge.status()
    time.sleep(3)
    icinga.start()
    publisher.join(60)
    assert publisher.error is None, publisher.error
    delivered, lost, _ = wait_delivered(icinga, results)
    report("bridge: icinga stopped", len(results), delivered, lost, resent(bridge))
    assert lost == 0, bridge.log_text()[-3000:]


def test_bridge_icinga_reloaded_mid_stream_loses_nothing(activemq, icinga2_factory, bridge_factory):
    icinga = central_icinga(icinga2_factory, services=150)
    bridge = bridge_factory([activemq.stomp_port], ocsp=False, site="CENTRAL", inbound=bridge_inbound(icinga))
    bridge.start()
    assert bridge.wait_state("icinga2_writer", "waiting for results"), bridge.log_text()[-3000:]
    results = results_for(300, "reload")
    publisher = Publisher(activemq, results, rate=100)
    publisher.start()
    for at in (80, 180):
        assert wait_until(lambda: publisher.sent >= at or None, 20), (publisher.sent, publisher.error)
        icinga.reload()
    publisher.join(60)
    assert publisher.error is None, publisher.error
    delivered, lost, _ = wait_delivered(icinga, results)
    report("bridge: icinga reloaded twice", len(results), delivered, lost, resent(bridge))
    assert lost == 0, bridge.log_text()[-3000:]


def test_bridge_killed_mid_stream_and_restarted_loses_nothing(activemq, icinga2_factory, bridge_factory):
    icinga = central_icinga(icinga2_factory, services=150)
    stream = icinga.events(queue_name="duplicates")
    bridge = bridge_factory([activemq.stomp_port], ocsp=False, site="CENTRAL", inbound=bridge_inbound(icinga))
    bridge.start()
    assert bridge.wait_state("icinga2_writer", "waiting for results"), bridge.log_text()[-3000:]
    results = results_for(300, "kill9")
    publisher = Publisher(activemq, results, rate=100)
    publisher.start()
    assert wait_until(lambda: publisher.sent >= 120 or None, 20), (publisher.sent, publisher.error)
    bridge.kill()
    time.sleep(1)
    bridge.start()
    publisher.join(60)
    assert publisher.error is None, publisher.error
    delivered, lost, _ = wait_delivered(icinga, results)
    _, _, duplicated = tally(icinga, results, stream)
    stream.close()
    report("bridge: kill -9 and restart", len(results), delivered, lost, duplicated)
    assert lost == 0, bridge.log_text()[-3000:]


def test_bridge_with_a_wrong_password_loses_nothing_and_says_so_then_delivers_once_fixed(
        activemq, icinga2_factory, bridge_factory):
    icinga = central_icinga(icinga2_factory)
    bridge = bridge_factory([activemq.stomp_port], ocsp=False, site="CENTRAL",
                            inbound=bridge_inbound(icinga, password="wrong"))
    bridge.start()
    results = results_for(20, "password")
    publisher = Publisher(activemq, results)
    publisher.run()
    assert publisher.error is None, publisher.error
    state = bridge.wait_state("icinga2_writer", "401")
    assert state.startswith("waiting: Icinga 2 refuses the bridge's credentials (401"), bridge.status()
    status = bridge.wait_status(lambda s: s.get("inbound_spool", {}).get("depth") == 20)
    assert status and status["inbound_spool"]["dead_letters"] == 0, bridge.status()
    assert tally(icinga, results)[0] == 0
    bridge.stop()
    bridge.config_path.write_text(bridge.config_path.read_text().replace("password: wrong", f"password: {PASSWORD}"))
    bridge.start()
    delivered, lost, _ = wait_delivered(icinga, results, 30)
    report("bridge: wrong password, then fixed", len(results), delivered, lost, None)
    assert lost == 0, bridge.log_text()[-3000:]


def test_the_hostile_corpus_into_icinga_only_check_results_land_and_both_stay_up(
        activemq, icinga2_factory, bridge_factory):
    from tests.integration.test_hostile import GENERATED, GENERATED_HEADERS, corpus
    from tests.sandbox.stomp_probe import publish
    icinga = icinga2_factory(objects=[passive_service("se01.example.org", "org.sam.SRM-Put"),
                                      passive_service("ce01.example.org", "org.sam.CE-JobSubmit"),
                                      passive_service(*MARKER)],
                             api_users={USER: {"password": PASSWORD, "permissions": PERMISSIONS}})
    before = icinga.api("GET", "/v1/objects/services?attrs=name").body["results"]
    # Anything but a check result (a comment, downtime, acknowledgement...) would show here.
    stream = icinga.events(types=("CheckResult", "CommentAdded", "DowntimeAdded", "AcknowledgementSet",
                                  "Notification"), queue_name="hostile")
    bridge = bridge_factory([activemq.stomp_port], ocsp=False, site="CENTRAL", inbound=bridge_inbound(icinga)
                            + "  mapping: {max_body_bytes: 1048576}\n")
    bridge.start()
    cases = list(corpus()) + [(name, body, {}) for name, body in GENERATED.items()]
    cases += [(name, next(corpus())[1], headers) for name, headers in GENERATED_HEADERS.items()]
    for _, body, headers in cases:
        publish(activemq.stomp_address, QUEUE, body, headers={"nagios_host": "remote", **headers})
    assert bridge.wait_counter("received", len(cases), timeout=60) == len(cases), bridge.log_text()[-2000:]
    counters = bridge.status()["counters"]
    accepted = counters["received"] - sum(counters.get(name, 0) for name in ("refused", "duplicates", "stale"))
    assert counters.get("refused", 0) > 0 and accepted > 0, counters
    assert bridge.wait_status(lambda status: status["counters"].get("injected", 0) == accepted
                              and status["inbound_spool"]["depth"] == 0, timeout=30), bridge.status()
    wait_for_the_stream(icinga, stream)     # the events of all that was injected
    stream.close()
    assert bridge.proc.poll() is None and icinga.running() and icinga.api_answers()
    kinds = {event["type"] for event in stream.events}
    assert kinds == {"CheckResult"}, kinds
    ours = [e for e in stream.events if e["check_result"].get("check_source") == SOURCE]
    # <=: Icinga drops (with a 200) a result older than the object's current one.
    assert 0 < len(ours) <= accepted and {(e["host"], e.get("service")) for e in ours} <= {
        ("se01.example.org", "org.sam.SRM-Put"), ("ce01.example.org", "org.sam.CE-JobSubmit"),
        ("se01.example.org", None), ("ce01.example.org", None)}
    assert icinga.api("GET", "/v1/objects/services?attrs=name").body["results"] == before
    print(f"\nhostile corpus into Icinga 2: {len(cases)} messages, {accepted} injected, {counters['refused']} refused")
