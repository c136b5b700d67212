"""Icinga 2 as the core: the process-check-result request built from a result, the answer ->
action table, the object list's refresh rules, the ApiUser wiring and the echo signal.
(The same against the real Icinga 2: tests/integration/test_icinga2_inbound.py.)"""
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib

import pytest

from msg_nagios_bridge import config
from msg_nagios_bridge.cli.selfcheck import CRITICAL, Thresholds, evaluate
from msg_nagios_bridge.cores import Core, core_for
from msg_nagios_bridge.cores.icinga2 import check_result, wiring
from msg_nagios_bridge.cores.icinga2.api import MAX_LEAN_ANSWER_BYTES, ApiUnavailable, LeanClient
from msg_nagios_bridge.cores.icinga2.check_result import MAX_BODY_BYTES, Action, judge, request
from msg_nagios_bridge.cores.icinga2.core import Icinga2Core
from msg_nagios_bridge.cores.icinga2.objects import ObjectList, ObjectsUnavailable, ObjectsUnreachable
from msg_nagios_bridge.cores.icinga2.writer import CONFIRM_AFTER, Answer, Lane, Prepared, Sent, lane_of, split_by_lane
from msg_nagios_bridge.daemon.health import Backoff
from msg_nagios_bridge.daemon.status import Status
from msg_nagios_bridge.cores.nagios import nagios_command
from msg_nagios_bridge.model import CheckResult, Message
from msg_nagios_bridge.spool import SpoolEntry
from tests.sandbox.pki import Authority

REPO = pathlib.Path(__file__).resolve().parents[2]
SOURCE = "msg-nagios-bridge@central"


def settings_for(tmp_path, login="user: bridge, password: pw", publish="false", inbound=True):
    ca = tmp_path / "ca.crt"
    if not ca.exists():
        ca.write_text("not read by these tests\n")
    section = ("inbound: {enabled: true, subscriptions: [{destination: /queue/q}],"
               " policy: {rules: [{senders: ['*']}]}}" if inbound else "")
    return config.parse(f"""
core: icinga2
icinga2: {{ca_file: {ca}, {login}, publish: {publish}, check_source: {SOURCE}}}
site: {{name: S, nagios_name: central}}
brokers: {{hosts: ["127.0.0.1:1"]}}
spool: {{directory: {tmp_path}/spool}}
sources: {{ocsp_pipe: {{enabled: false}}}}
routes: [{{name: r, destination: /queue/out}}]
{section}
""", "core.yaml")


# -- the request ---------------------------------------------------------------------------------

def test_a_service_result_becomes_a_request_naming_its_object_with_its_own_time_output_and_perfdata():
    result = CheckResult(host="ce01.example.org", service="org.sam.CE JobSubmit", state=2, output="CRITICAL - no",
                         long_output="line 2\nline 3", perfdata="t=1s;2;3 'a b'=4", timestamp=1700000000.5)
    path, body = request(result, SOURCE)
    prefix, query = path.split("?")
    assert prefix == "/v1/actions/process-check-result"
    assert urllib.parse.parse_qs(query) == {"service": ["ce01.example.org!org.sam.CE JobSubmit"]}
    assert "%21" in query and " " not in query and "+" not in query
    assert body == {"type": "Service", "exit_status": 2, "plugin_output": "CRITICAL - no\nline 2\nline 3",
                    "check_source": SOURCE, "performance_data": "t=1s;2;3 'a b'=4",
                    "execution_start": 1700000000.5, "execution_end": 1700000000.5}


def test_control_characters_reach_icinga_as_spaces_as_they_reach_nagios():
    """Regression (review 2026-12-05): ESC, VT, U+009B went to Icinga as they came (JSON-escaped),
    to be printed by whatever lists its objects; the Nagios writers turned them into spaces."""
    result = CheckResult(host="h1", service="s", state=1, output="WARN \x1b[2J\x9bcleared\ttab",
                         long_output="two\x0bthree\nfour", perfdata="t=1\x1b]0;x\x07", timestamp=1700000000)
    _, body = request(result, SOURCE)
    assert body["plugin_output"] == "WARN  [2J cleared\ttab\ntwo three\nfour"
    assert body["performance_data"] == "t=1 ]0;x "
    line = nagios_command.command_line(result, 1700000000)
    assert "WARN  [2J cleared\ttab" in line and "two three" in line           # the same policy


@pytest.mark.parametrize("state, exit_status", [(0, 0), (1, 1), (2, 1)])
def test_a_host_result_maps_down_and_unreachable_to_the_exit_status_1_icinga_accepts(state, exit_status):
    path, body = request(CheckResult(host="h1", service=None, state=state, output="x"), SOURCE)
    assert path == "/v1/actions/process-check-result?host=h1"
    assert body["type"] == "Host" and body["exit_status"] == exit_status


def test_no_time_no_perfdata_no_long_output_leave_their_fields_out():
    _, body = request(CheckResult(host="h1", service="s", state=0, output="fine"), SOURCE)
    assert body == {"type": "Service", "exit_status": 0, "plugin_output": "fine", "check_source": SOURCE}


def test_the_body_size_is_what_goes_on_the_wire_and_over_the_limit_has_a_reason():
    _, body = request(CheckResult(host="h1", service="s", state=0, output="é" * 10), SOURCE)
    assert check_result.body_size(body) == len(json.dumps(body).encode())
    assert check_result.too_big_reason(MAX_BODY_BYTES) is None
    reason = check_result.too_big_reason(MAX_BODY_BYTES + 1)
    assert reason.startswith("too-big: ") and "max_output_bytes" in reason


def test_preview_shows_the_request():
    kind, text = check_result.preview(CheckResult(host="h1", service="s", state=1, output="w"), SOURCE)
    assert kind == "API request" and text.startswith("POST /v1/actions/process-check-result?service=h1%21s\n")
    assert json.loads(text.split("\n", 1)[1])["exit_status"] == 1


# -- the answer -> action table ---------------------------------------------------------------------

def ok(text="Successfully processed check result for object 'h1!s1'."):
    return {"results": [{"code": 200, "status": text}]}


@pytest.mark.parametrize("status, answer, action, reason_start", [
    (200, ok(), Action.INJECTED, ""),
    (200, ok("Ignoring passive check result for unreachable object 'h3!s'."), Action.IGNORED, "Ignoring"),
    (404, {"error": 404, "status": "No objects found."}, Action.DEAD_LETTER, "unknown-object: Icinga 2 answered 404"),
    (400, {"results": [{"code": 400, "status": "Invalid 'exit_status' for Host h2."}]}, Action.DEAD_LETTER,
     "icinga-refused: 400 Invalid 'exit_status'"),
    (403, {"results": [{"code": 403, "status": "Passive checks are disabled for object 'h1!x'."}]},
     Action.DEAD_LETTER, "icinga-refused: 403 Passive checks are disabled"),
    (401, {"error": 401, "status": "Unauthorized. Please check your user credentials."}, Action.CREDENTIALS,
     "Icinga 2 refuses the bridge's credentials (401 Unauthorized"),
    (500, {"results": []}, Action.RETRY, "Icinga 2 answered 500"),
    (503, "<html>proxy says no</html>", Action.RETRY, "Icinga 2 answered 503 <html>"),
    (200, {"results": [{"code": 500, "status": "odd"}]}, Action.RETRY, "Icinga 2 answered 200 odd"),
    (200, "not json", Action.INJECTED, ""),
])
def test_each_answer_has_its_action(status, answer, action, reason_start):
    verdict = judge(status, answer, "h1!s1")
    assert verdict.action is action
    assert verdict.reason.startswith(reason_start), verdict.reason


def test_a_404_says_it_may_be_a_missing_permission_and_counts_as_unknown_object():
    reason = judge(404, {"error": 404, "status": "No objects found."}, "h1!s9").reason
    assert "'h1!s9'" in reason and "actions/process-check-result" in reason
    assert check_result.reason_counter(reason) == "unknown-object"
    assert check_result.reason_counter(check_result.unknown_object_reason("h", answered=False)) == "unknown-object"


# -- the object list ---------------------------------------------------------------------------------

class ScriptedApi:
    """Answers GETs from ``answers`` (path prefix -> (status, body) or an exception), counting them."""

    def __init__(self, answers):
        self.answers = answers
        self.requests = []
        self.gate = None        # a threading.Event: requests wait for it (a slow API)

    def request(self, method, path, body=None):
        if self.gate is not None:
            assert self.gate.wait(5)
        self.requests.append(path)
        answer = self.answers[path.split("?")[0]]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def each_result(self, path):
        status, body = self.request("GET", path)
        return (status, iter(body["results"])) if status == 200 else (status, body)

    def close(self):
        pass


def holds_exactly(known, expected):
    """A KnownObjects holds ``expected`` and nothing more (by count)."""
    return len(known) == len(expected) and all(key in known for key in expected)


def listing(hosts=("h1",), services=(("h1", "s1"),)):
    return {"/v1/objects/hosts": (200, {"results": [{"name": h, "attrs": {"name": h}} for h in hosts]}),
            "/v1/objects/services": (200, {"results": [{"name": f"{h}!{s}", "attrs": {"host_name": h, "name": s}}
                                                       for h, s in services]})}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_list_is_read_once_per_refresh_and_its_version_moves_only_when_it_changes():
    api, clock = ScriptedApi(listing()), Clock()
    objects = ObjectList(api, refresh=60, clock=clock)
    version = objects.version()                    # the first time: read at once
    assert version is not None and holds_exactly(objects.get(), {("h1", None), ("h1", "s1")})
    clock.now += 59
    objects.get()
    assert len(api.requests) == 2                  # hosts and services, once
    assert api.requests[1] == "/v1/objects/services?attrs=name&attrs=host_name"
    clock.now += 1
    assert objects.get() and objects.version() == version and len(api.requests) == 4   # read again, unchanged
    api.answers = listing(services=(("h1", "s1"), ("h1", "s2")))
    objects.stale()
    objects.get()
    assert objects.version() == version and len(api.requests) == 4   # a stale list waits STALE_REREAD s
    clock.now += 1
    assert ("h1", "s2") in objects.get() and objects.version() == version + 1


def test_version_reads_a_due_list_in_the_background():
    api, clock = ScriptedApi(listing()), Clock()
    objects = ObjectList(api, refresh=60, clock=clock)
    version = objects.version()
    api.answers, api.gate = listing(hosts=("h1", "h2")), threading.Event()
    clock.now += 60
    assert objects.version() == version            # answered at once, while the API is slow
    api.gate.set()
    objects._refresher.join(5)
    assert objects.version() == version + 1 and ("h2", None) in objects.get()


def test_unreachable_before_the_first_read_is_none_for_the_core_and_the_old_list_stays_after():
    api, clock = ScriptedApi({"/v1/objects/hosts": ApiUnavailable("refused")}), Clock()
    objects = ObjectList(api, refresh=60, clock=clock)
    with pytest.raises(ObjectsUnreachable):
        objects.get()
    assert objects.version() is None
    assert len(api.requests) == 2                  # a GET is tried twice (idle close), then held
    api.answers = listing()
    clock.now += 5
    assert holds_exactly(objects.get(), {("h1", None), ("h1", "s1")})
    api.answers = {"/v1/objects/hosts": ApiUnavailable("down")}
    clock.now += 60
    assert holds_exactly(objects.get(), {("h1", None), ("h1", "s1")}) and "down" in objects.problem


def test_a_404_on_the_list_names_the_missing_permission():
    api = ScriptedApi({**listing(), "/v1/objects/services": (404, {"error": 404, "status": "No objects found."})})
    objects = ObjectList(api, refresh=60, clock=Clock())
    with pytest.raises(ObjectsUnavailable, match="objects/query/Service") as caught:
        objects.get()
    assert not isinstance(caught.value, ObjectsUnreachable)
    assert objects.version() is None                # never read: the core says "no list" (None)


def test_a_401_on_the_list_says_the_credentials_are_refused():
    api = ScriptedApi({**listing(), "/v1/objects/hosts": (401, {"error": 401, "status": "Unauthorized."})})
    with pytest.raises(ObjectsUnavailable, match=r"refuses the bridge's credentials \(401 Unauthorized.\)"):
        ObjectList(api, refresh=60, clock=Clock()).get()


# -- the core ------------------------------------------------------------------------------------------

def test_core_for_picks_icinga2_and_it_implements_the_interface(tmp_path):
    core = core_for(settings_for(tmp_path))
    assert isinstance(core, Icinga2Core) and isinstance(core, Core)
    assert core.objects_source.startswith("https://127.0.0.1:5665/")
    assert core.start_sources(None, None) == []    # publish: false
    assert core.preview(CheckResult(host="h", service="s", state=0))[0] == "API request"


def test_the_echo_signal_is_the_bridges_check_source(tmp_path):
    core = core_for(settings_for(tmp_path))
    ours = CheckResult(host="h", service="s", state=0, attributes={"check_source": SOURCE, "check_type": "PASSIVE"})
    other_passive = CheckResult(host="h", service="s", state=0,
                                attributes={"check_source": "nsca-gw", "check_type": "PASSIVE"})
    active = CheckResult(host="h", service="s", state=0, attributes={"check_source": "icinga-master"})
    active_named_like_us = CheckResult(host="h", service="s", state=0,
                                       attributes={"check_source": SOURCE, "check_type": "ACTIVE"})
    assert core.may_be_echo(ours)
    assert not core.may_be_echo(other_passive) and not core.may_be_echo(active)
    assert not core.may_be_echo(active_named_like_us)


def test_wiring_is_the_least_apiuser_with_a_password_placeholder(tmp_path):
    text = wiring.render(settings_for(tmp_path))
    assert 'object ApiUser "bridge" {' in text and 'password = "CHANGE-ME"' in text and "pw" not in text
    assert 'permissions = [ "actions/process-check-result", "objects/query/Host", "objects/query/Service" ]' in text
    both = wiring.render(settings_for(tmp_path, publish="true"))
    assert ('[ "events/CheckResult", "actions/process-check-result", "objects/query/Host",'
            ' "objects/query/Service" ]') in both


def test_wiring_with_a_client_certificate_names_its_cn(tmp_path):
    cert, key = Authority(tmp_path / "pki", name="Icinga CA").issue("bridge", "bridge.example.org", client=True)
    text = wiring.render(settings_for(tmp_path, login=f"cert_file: {cert}, key_file: {key}", publish="true",
                                      inbound=False))
    assert 'object ApiUser "msg-nagios-bridge" {' in text and 'client_cn = "bridge.example.org"' in text
    assert "password" not in text and "actions/process-check-result" not in text


def test_check_reports_icinga2_unavailable(tmp_path):
    now = 1_800_000_000.0
    status = Status.from_json({"time": now - 1, "pid": 1, "states": {"icinga2_writer": "waiting: Icinga 2 refuses"
                                                                     " the bridge's credentials (401)"},
                               "since": {"icinga2_writer": now - 700}, "counters": {}, "last": {}})
    code, line = evaluate(status, Thresholds(), now)
    assert code == CRITICAL and "Icinga 2 unavailable for 700 s (Icinga 2 refuses the bridge's credentials" in line


def test_core_config_and_nagios_config_print_the_apiuser(tmp_path, capsys):
    from msg_nagios_bridge.cli.main import main
    path = tmp_path / "bridge.yaml"
    settings_for(tmp_path)              # writes the CA file the config names
    ca = tmp_path / "ca.crt"
    path.write_text(f"""
core: icinga2
icinga2: {{ca_file: {ca}, user: bridge, password: pw, publish: false}}
site: {{name: S, nagios_name: central}}
brokers: {{hosts: ["127.0.0.1:1"]}}
spool: {{directory: {tmp_path}/spool}}
sources: {{ocsp_pipe: {{enabled: false}}}}
routes: [{{name: r, destination: /queue/out}}]
inbound: {{enabled: true, subscriptions: [{{destination: /queue/q}}], policy: {{rules: [{{senders: ['*']}}]}}}}
""")
    outputs = []
    for command in ("core-config", "nagios-config"):
        assert main([command, "-c", str(path)]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and 'object ApiUser "bridge" {' in outputs[0]


# -- the writer's lanes ----------------------------------------------------------------------------

def test_an_object_has_one_lane_the_same_in_every_run_and_objects_spread_over_all_lanes():
    # crc32: the lane does not depend on Python's per-process hash seed.
    assert [lane_of(name, 4) for name in ("h1!s1", "h1!s2", "h2", "host-0007!svc-0042")] == [
        zlib.crc32(name.encode()) % 4 for name in ("h1!s1", "h1!s2", "h2", "host-0007!svc-0042")]
    # The same in every run, whatever Python's hash seed: other processes, other seeds.
    names = [f"h{h}!s{s}" for h in range(5) for s in range(20)]
    here = [lane_of(name, 4) for name in names]
    for seed in ("1", "2"):
        other = subprocess.run(
            [sys.executable, "-c", "import sys\nfrom msg_nagios_bridge.cores.icinga2.writer import lane_of\n"
             "print([lane_of(name, 4) for name in sys.argv[1:]])", *names],
            capture_output=True, text=True, check=True, cwd=str(REPO), env=dict(os.environ, PYTHONHASHSEED=seed))
        assert other.stdout.strip() == str(here), other.stderr
    assert {lane_of(f"h{h}!s{s}", 4) for h in range(5) for s in range(20)} == {0, 1, 2, 3}
    assert {lane_of(f"h{h}!s{s}", 1) for h in range(5) for s in range(20)} == {0}


def test_the_split_puts_each_objects_results_on_its_lane_in_their_order_and_loses_none():
    items = [(f"h{i % 3}!s{i % 7}", i) for i in range(200)]
    shares = split_by_lane(items, lambda item: item[0], 4)
    assert sorted(x for share in shares for x in share) == sorted(items)
    for index, share in enumerate(shares):
        assert all(lane_of(name, 4) == index for name, _ in share)
        assert [i for _, i in share] == sorted(i for _, i in share)       # the order given
    names = {name for name, _ in items}
    assert sum(1 for share in shares if share) > 1
    for name in names:      # one object's results: all on one lane
        assert sum(1 for share in shares if any(n == name for n, _ in share)) == 1


class LaneApi:
    """A connection that answers every POST with ``status`` (or raises ``fail``), and can be closed."""

    def __init__(self, status=200, fail=None):
        self.status, self.fail = status, fail
        self.connected = False
        self.sent = []

    def request(self, method, path, body=None):
        if self.fail is not None:
            self.connected = False
            raise self.fail
        self.connected = True
        self.sent.append(body["plugin_output"] if body else method)
        return self.status, {"results": [{"code": self.status, "status": "Successfully processed"}]}

    def close(self):
        self.connected = False


def prepared(number, name="h1!s1"):
    message = Message(f"m{number}", "/queue/q", {}, b"{}")
    return Prepared(SpoolEntry(number, message, 0.0, 0), None, name,
                    "/v1/actions/process-check-result", {"plugin_output": f"r{number}"})


def test_a_lane_sends_in_order_and_keeps_the_200s_pending_until_a_later_answer_confirms_them():
    api = LaneApi()
    lane = Lane(api)
    sent = lane.send([prepared(1), prepared(2)], threading.Event())
    assert api.sent == ["r1", "r2"] and [a.item.entry.entry_id for a in sent.answers] == [1, 2]
    assert sent.rest == [] and sent.failure is None and [i.entry.entry_id for _, i in lane.pending] == [1, 2]
    assert lane.confirmed() == []       # answered just now: not yet confirmed
    lane.pending = type(lane.pending)((at - CONFIRM_AFTER, item) for at, item in lane.pending)
    lane.send([prepared(3)], threading.Event())
    assert lane.confirmed() == [1, 2]


def test_what_a_closed_connection_answered_is_sent_again_first_on_the_new_one():
    api = LaneApi()
    lane = Lane(api)
    lane.send([prepared(1), prepared(2)], threading.Event())
    api.close()                         # e.g. Icinga said Connection: close, or it restarted
    sent = lane.send([prepared(3)], threading.Event())
    assert api.sent == ["r1", "r2", "r1", "r2", "r3"] and sent.resent == 2
    assert [i.entry.entry_id for _, i in lane.pending] == [1, 2, 3]


def test_a_lane_without_an_answer_stops_gives_back_the_rest_and_halts_the_others():
    halt = threading.Event()
    lane = Lane(LaneApi(fail=ApiUnavailable("refused")))
    sent = lane.send([prepared(1), prepared(2)], halt)
    assert sent.failure == "refused" and [i.entry.entry_id for i in sent.rest] == [1, 2] and halt.is_set()
    other = Lane(LaneApi())
    assert other.send([prepared(3, "h2")], halt) == Sent([], [prepared(3, "h2")])   # halted: sends nothing


def lane_writer(tmp_path, spool, *clients, start=True, objects=None):
    """An Icinga2Writer whose lanes talk to ``clients`` (LaneApi), their threads started
    (``start``; else run() starts them)."""
    from msg_nagios_bridge.cores.icinga2.writer import Icinga2Writer
    from msg_nagios_bridge.daemon.health import Health
    from msg_nagios_bridge.inbound.echo import EchoGuard
    (tmp_path / "ca.crt").write_text(open(Authority(tmp_path / "pki", name="Icinga CA").cert_file).read())
    writer = Icinga2Writer(settings_for(tmp_path), spool, Health(), EchoGuard(), objects=objects)
    for lane, client in zip(writer.lanes, clients):
        lane.client = client
    if start:
        writer._start_lanes()
    return writer


def hand_out(writer, items_by_lane):
    with writer._cond:
        for index, items in items_by_lane.items():
            writer.lanes[index].inbox.extend(items)
            writer._outstanding += len(items)
        writer._cond.notify_all()


def run_writer_thread_until(writer, done, timeout=5.0):
    """Do the writer thread's part (collect, settle) until ``done()`` or ``timeout``."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        writer.wakeup.wait(0.02)
        writer._collect()
        writer._settle()


def test_a_lane_with_nothing_to_send_probes_once_its_answers_are_due_and_they_leave_the_spool(tmp_path):
    """A lane whose objects get no new result (the others may be busy): without a probe its
    200s stayed unconfirmed, and after 5 s its connection was closed and they were sent again."""
    from msg_nagios_bridge.spool import Spool
    spool = Spool(str(tmp_path / "in.sqlite"))
    try:
        spool.put([Message("m1", "nagios", {}, b"{}"), Message("m2", "nagios", {}, b"{}")])
        ids = [entry.entry_id for entry in spool.take(2)]
        first, second = LaneApi(), LaneApi()
        writer = lane_writer(tmp_path, spool, first, second)
        started = time.monotonic()
        hand_out(writer, {0: [prepared(ids[0])], 1: [prepared(ids[1], "h2!s1")]})
        run_writer_thread_until(writer, lambda: first.sent and second.sent)
        assert first.sent == ["r%d" % ids[0]] and spool.stats().depth == 2    # answered, not yet confirmed
        run_writer_thread_until(writer, lambda: spool.stats().depth == 0)
        assert first.sent == ["r%d" % ids[0], "GET"] and second.sent == ["r%d" % ids[1], "GET"]
        assert spool.stats().depth == 0 and time.monotonic() - started >= CONFIRM_AFTER
        assert writer._outstanding == 0 and writer.health.snapshot()["counters"]["injected"] == 2
        writer._stop_lanes()
    finally:
        spool.close()


def test_a_lane_without_an_answer_halts_every_lane_and_all_they_hold_goes_back_to_the_spool(tmp_path, monkeypatch):
    from msg_nagios_bridge.cores.icinga2 import writer as writer_module
    from msg_nagios_bridge.spool import Spool
    monkeypatch.setattr(writer_module, "CONFIRM_AFTER", 60.0)     # no probe confirms the 200s meanwhile
    spool = Spool(str(tmp_path / "in.sqlite"))
    try:
        spool.put([Message(f"m{i}", "nagios", {}, b"{}") for i in range(6)])
        ids = [entry.entry_id for entry in spool.take(6)]
        failing, working = LaneApi(fail=ApiUnavailable("refused")), LaneApi()
        writer = lane_writer(tmp_path, spool, failing, working)
        hand_out(writer, {0: [prepared(i) for i in ids[:3]], 1: [prepared(i, "h2!s1") for i in ids[3:]]})
        run_writer_thread_until(writer, lambda: writer._hold_until > 0)
        assert writer._hold_until > time.monotonic() and writer._outstanding == 0
        assert not any(lane.inbox for lane in writer.lanes)
        # The failed lane's three are taken again first, oldest first; the other lane's 200s
        # stay pending on their unbroken connection until confirmed.
        again = [entry.entry_id for entry in spool.take(6)]
        pending = [item.entry.entry_id for _, item in writer.lanes[1].pending]
        assert again[:3] == ids[:3] and sorted(again + pending) == ids
        assert writer.health.snapshot()["counters"]["icinga2_no_answer"] == 1
        writer._stop_lanes()
    finally:
        spool.close()


def test_a_lane_stops_at_a_5xx_and_gives_it_back():
    sent = Lane(LaneApi(status=503)).send([prepared(1), prepared(2)], threading.Event())
    assert sent.hold.action is Action.RETRY and [i.entry.entry_id for i in sent.rest] == [1, 2]


@pytest.mark.parametrize("value, problem", [
    (0, "must be a whole number from 1 to 32"), (33, "must be a whole number from 1 to 32"),
    ("4", "must be a whole number"), (True, "must be a whole number")])
def test_connections_is_a_whole_number_from_1_to_32(tmp_path, value, problem):
    with pytest.raises(config.ConfigError, match=f"icinga2.connections = .*{problem}"):
        settings_for(tmp_path, login=f"user: bridge, password: pw, connections: {json.dumps(value)}")


def test_connections_defaults_to_8_and_1_is_one_connection(tmp_path):
    assert settings_for(tmp_path).icinga2.connections == 8
    assert settings_for(tmp_path, login="user: bridge, password: pw, connections: 1").icinga2.connections == 1


# -- the writer's HTTP client (a real socket pair; the answers are written before the request) --

def lean_with(tmp_path, answer: bytes, close=False):
    ca = Authority(tmp_path / "pki", name="Icinga CA").cert_file
    client = LeanClient(config.Icinga2Settings(ca_file=str(ca), user="bridge", password="pw"))
    client._sock, server = socket.socketpair()      # in place of the TLS socket _connect() opens
    server.sendall(answer)
    if close:
        server.shutdown(socket.SHUT_WR)
    return client, server


def test_lean_client_sends_one_request_and_reads_answers_with_content_length_on_one_connection(tmp_path):
    first = b'{"results": [{"code": 200, "status": "ok"}]}'
    client, server = lean_with(tmp_path, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                               + str(len(first)).encode() + b"\r\n\r\n" + first
                               + b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nnot there")
    assert client.request("POST", "/v1/actions/process-check-result?service=h%21s", {"a": 1}) == (
        200, {"results": [{"code": 200, "status": "ok"}]})
    assert client.connected
    assert client.request("GET", "/v1/objects/hosts?host=h") == (404, "not there")
    sent = server.recv(1 << 16).decode()
    assert sent.startswith("POST /v1/actions/process-check-result?service=h%21s HTTP/1.1\r\nHost: 127.0.0.1:5665\r\n")
    assert "Authorization: Basic YnJpZGdlOnB3\r\n" in sent and "Accept: application/json\r\n" in sent
    assert 'Content-Length: 8\r\n\r\n{"a": 1}GET /v1/objects/hosts?host=h HTTP/1.1\r\n' in sent


def test_lean_client_reads_a_chunked_answer_and_closes_when_told(tmp_path):
    client, _ = lean_with(tmp_path, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                          b"5;x=y\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\nTrailer: t\r\n\r\n")
    assert client.request("GET", "/x") == (200, {"a": 1})
    assert not client.connected


def test_lean_client_reads_an_answer_without_length_until_the_connection_closes(tmp_path):
    client, _ = lean_with(tmp_path, b"HTTP/1.0 500 Internal\r\n\r\nbroken", close=True)
    assert client.request("GET", "/x") == (500, "broken") and not client.connected


@pytest.mark.parametrize("answer", [
    b"hello there\r\n\r\n",                                          # not HTTP
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",           # closed mid-answer
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # not a chunk size
    b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
    b""])                                                            # closed before answering
def test_lean_client_without_a_proper_answer_raises_unavailable_and_closes(tmp_path, answer):
    client, _ = lean_with(tmp_path, answer, close=True)
    with pytest.raises(ApiUnavailable, match="GET /x: "):
        client.request("GET", "/x")
    assert not client.connected


class Pieces:
    """A socket whose recv() hands out ``data`` in pieces of ``size`` bytes, then end of file:
    the worst cut a server or the network can make, which a real socket cannot be made to
    produce on demand."""

    def __init__(self, data: bytes, size: int):
        self.data, self.size, self.at = data, size, 0

    def recv(self, limit):
        piece = self.data[self.at:self.at + min(self.size, limit)]
        self.at += len(piece)
        return piece

    def sendall(self, data):
        pass

    def close(self):
        pass


def test_lean_client_reads_a_big_answer_cut_in_small_pieces_in_linear_time(tmp_path):
    """Its largest answer (1 MiB) in 64-byte pieces: with an immutable buffer grown piece by
    piece this copied about 8 GB (minutes); read whole in well under the bound here."""
    client, _ = lean_with(tmp_path, b"")
    body = b"x" * MAX_LEAN_ANSWER_BYTES
    client._sock = Pieces(b"HTTP/1.0 200 OK\r\n\r\n" + body, 64)
    started = time.monotonic()
    assert client.request("GET", "/x") == (200, body.decode())
    assert time.monotonic() - started < 5


def chunked(body: bytes, size: int) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
                    for i in range(0, len(body), size)) + b"0\r\n\r\n"


def test_lean_client_counts_an_answer_in_tiny_chunks_as_it_comes_on_the_wire(tmp_path):
    """1-byte chunks held many times the answer's size in memory, up to 256 MiB of answer a
    lane (the review). The writer's answers are about
    100 bytes: the limit is 1 MiB of what comes on the wire, chunk lines included."""
    client, _ = lean_with(tmp_path, b"")
    fits = b"y" * (MAX_LEAN_ANSWER_BYTES // 8)          # 1 byte a chunk: 6 bytes on the wire
    client._sock = Pieces(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(fits, 1), 4096)
    assert client.request("GET", "/x") == (200, fits.decode())
    client, _ = lean_with(tmp_path, b"")
    client._sock = Pieces(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                          + chunked(b"y" * (MAX_LEAN_ANSWER_BYTES // 4), 1), 4096)
    with pytest.raises(ApiUnavailable, match="over 1048576 bytes"):
        client.request("GET", "/x")


def test_lean_client_skips_interim_answers_so_the_next_answers_stay_in_step(tmp_path):
    """A 100 Continue was taken for the answer: each later answer was then read as the next
    request's, so a refused result could be deleted as injected (the review's proxy)."""
    ok = b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}'
    not_found = b'HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}'
    client, server = lean_with(tmp_path, b"HTTP/1.1 100 Continue\r\n\r\n" + not_found
                               + b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n" + ok)
    assert client.request("POST", "/a", {})[0] == 404
    assert client.request("POST", "/b", {})[0] == 200
    server.close()
    for answer, problem in ((b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "switches protocols"),
                            (b"HTTP/1.1 100 Continue\r\n\r\n" * 9 + ok, "more than 8 interim")):
        client, _ = lean_with(tmp_path, answer)
        with pytest.raises(ApiUnavailable, match=problem):
            client.request("POST", "/a", {})


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nX: " + b"a" * (70 << 10),                                    # a head without end
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * (70 << 10),     # a chunk size without end
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nabc",                # a negative chunk size
    b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nabcde"])
def test_lean_client_refuses_heads_and_sizes_beyond_its_limits_byte_by_byte(tmp_path, answer):
    client, _ = lean_with(tmp_path, b"")
    client._sock = Pieces(answer, 1)
    with pytest.raises(ApiUnavailable):
        client.request("GET", "/x")


# -- results_of: an object list an object at a time -------------------------------------------------

def reader(data: bytes, size: int):
    """read(n) over ``data`` in pieces of at most ``size`` bytes."""
    view = memoryview(data)
    state = {"at": 0}

    def read(n):
        at = state["at"]
        piece = bytes(view[at:at + min(n, size)])
        state["at"] = at + len(piece)
        return piece
    return read


@pytest.mark.parametrize("size", [1, 7, 1 << 16])
def test_results_of_gives_each_object_however_the_answer_is_cut(size):
    from msg_nagios_bridge.cores.icinga2.api import results_of
    items = [{"attrs": {"name": f"h{i}", "note": "\u00e9\u4e2d\U0001F600 \\ \" ]}"}} for i in range(300)]
    data = (' { "results" : [ ' + " , ".join(json.dumps(i) for i in items) + ' ] } ').encode()
    assert list(results_of(reader(data, size))) == items
    assert list(results_of(reader(b'{"results":[]}', size))) == []


@pytest.mark.parametrize("data, problem", [
    (b'{"error":404,"status":"No objects found."}', "not an answer with results"),
    (b'{"results":[{"a":1}', "ends inside the results"),
    (b'{"results":[{"a":1},{"b"', "ends inside the results"),
    (b'{"results":[{"a":1} {"b":2}]}', "expected , or ]"),
    (b'{"results":[1,2]}', "not a JSON object"),
    (b'{"results":[{"a":' + b"[" * 100000 + b"]" * 100000 + b"}]}", "nested too deeply"),
    (b'{"results":[{"a":"' + b"x" * (3 << 16) + b'"}]}', "over 65536 bytes")])
def test_results_of_says_what_is_wrong_with_an_answer(data, problem):
    from msg_nagios_bridge.cores.icinga2.api import results_of
    with pytest.raises(ValueError, match=problem):
        list(results_of(reader(data, 4096), limit=1 << 16))


def test_results_of_is_linear_in_the_answer_cut_in_small_pieces(monkeypatch):
    """One 4 MB object and 20,000 small ones in 1 KB pieces: an object cut by a piece's end is
    parsed again only once twice as much came, so the characters scanned stay within a few
    times the answer (parsing again at every piece scanned the 4 MB object 4,000 times)."""
    from msg_nagios_bridge.cores.icinga2 import api
    scanned = [0]
    decoder = api._DECODER

    class Counting:
        def raw_decode(self, text, at):
            scanned[0] += len(text) - at
            return decoder.raw_decode(text, at)
    monkeypatch.setattr(api, "_DECODER", Counting())
    big = {"attrs": {"name": "big", "output": "x" * (4 << 20)}}
    small = [{"attrs": {"name": f"h{i}"}} for i in range(20000)]
    data = json.dumps({"results": [big] + small}).encode()
    started = time.monotonic()
    got = list(api.results_of(reader(data, 1024)))
    assert len(got) == 20001 and got[0] == big
    # Each small object's scan may see the rest of the buffer (up to a piece): bounded by the
    # pieces, not by the answer; the big one by twice its size, twice.
    assert scanned[0] < 4 * len(data) + 20001 * 2 * api.READ_SIZE
    assert time.monotonic() - started < 10


def test_a_lane_whose_connection_closed_sends_its_unconfirmed_answers_again_without_holding(tmp_path):
    """Icinga said Connection: close after the last answer: the lane's probe finds no
    connection; a new one cannot confirm what the old one answered, so they go again, first."""
    from msg_nagios_bridge.spool import Spool
    spool = Spool(str(tmp_path / "in.sqlite"))
    try:
        spool.put([Message(f"m{i}", "nagios", {}, b"{}") for i in range(2)])
        ids = [entry.entry_id for entry in spool.take(2)]
        api = LaneApi()
        writer = lane_writer(tmp_path, spool, api)
        hand_out(writer, {0: [prepared(ids[0]), prepared(ids[1])]})
        run_writer_thread_until(writer, lambda: len(api.sent) == 2)
        api.close()
        run_writer_thread_until(writer, lambda: spool.stats().depth == 0)
        assert api.sent == ["r%d" % ids[0], "r%d" % ids[1]] * 2 + ["GET"] and spool.stats().depth == 0
        counters = writer.health.snapshot()["counters"]
        assert counters["icinga2_resent"] == 2 and "icinga2_no_answer" not in counters
        assert writer._hold_until == 0.0
        writer._stop_lanes()
    finally:
        spool.close()


# -- review: the writer's counting, its stop, a spool error on a halted lane ------------------------

def until(done, timeout=5.0):
    """Poll ``done()`` until it holds or ``timeout`` passed; whether it held."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.005)
    return done()


def test_results_sent_again_are_not_counted_twice_as_come_back(tmp_path):
    """A resent entry was already counted back once, with its first answer: counting it again
    drove _outstanding below zero (the writer then handed out more than 2 x BATCH)."""
    from msg_nagios_bridge.spool import Spool
    spool = Spool(str(tmp_path / "in.sqlite"))
    try:
        spool.put([Message(f"m{i}", "nagios", {}, b"{}") for i in range(3)])
        ids = [entry.entry_id for entry in spool.take(3)]
        api = LaneApi()
        writer = lane_writer(tmp_path, spool, api)
        hand_out(writer, {0: [prepared(ids[0]), prepared(ids[1])]})
        run_writer_thread_until(writer, lambda: len(api.sent) == 2)
        api.close()                     # the probe finds it closed: sends both again
        run_writer_thread_until(writer, lambda: spool.stats().depth == 1)
        assert writer._outstanding == 0
        hand_out(writer, {0: [prepared(ids[2])]})
        run_writer_thread_until(writer, lambda: len(api.sent) == 5)
        api.close()                     # send() finds it closed: the pending one goes first
        hand_out(writer, {0: []})
        run_writer_thread_until(writer, lambda: spool.stats().depth == 0)
        assert spool.stats().depth == 0 and writer._outstanding == 0
        writer._stop_lanes()
    finally:
        spool.close()


class ProbeTimingApi(LaneApi):
    """A LaneApi whose probes take a round trip, and which notes requests made at once."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()
        self.in_flight = self.most_at_once = 0

    def request(self, method, path, body=None):
        with self.lock:
            self.in_flight += 1
            self.most_at_once = max(self.most_at_once, self.in_flight)
        try:
            if method == "GET":
                time.sleep(0.05)        # the probe's round trip to Icinga
            return super().request(method, path, body)
        finally:
            with self.lock:
                self.in_flight -= 1


def test_a_stop_confirms_the_last_answers_with_one_probe_on_the_writer_thread_alone(tmp_path):
    """At a stop the lanes are halted and the writer thread probes: the lanes' threads must not
    probe too (they did: the halt was cleared first, so a lane's thread and the writer thread
    used one connection at once, and what the lane's probe confirmed was never deleted)."""
    from msg_nagios_bridge.spool import Spool
    spool = Spool(str(tmp_path / "in.sqlite"))
    try:
        spool.put([Message("m1", "nagios", {}, b"{}")])
        ids = [entry.entry_id for entry in spool.take(1)]
        api = ProbeTimingApi()
        writer = lane_writer(tmp_path, spool, api, start=False)
        hand_out(writer, {0: [prepared(ids[0])]})
        writer.start()
        assert until(lambda: len(api.sent) == 1)
        started = time.monotonic()
        writer.stop()
        writer.join(10)
        took = time.monotonic() - started
        assert not writer.is_alive() and took < CONFIRM_AFTER + 2.0
        assert api.sent == ["r%d" % ids[0], "GET"] and api.most_at_once == 1
        assert spool.stats().depth == 0         # confirmed by the stop's probe, deleted
    finally:
        spool.close()


class ScriptedLaneApi(LaneApi):
    """Answers each POST with the next of ``script``: a status, or an exception to raise."""

    def __init__(self, script):
        super().__init__()
        self.script = list(script)

    def request(self, method, path, body=None):
        step = self.script.pop(0) if method == "POST" and self.script else 200
        if isinstance(step, Exception):
            self.connected = False
            raise step
        self.status = step
        return super().request(method, path, body)


class NoObjects:
    def get(self):
        raise ObjectsUnavailable("the object list is not read in this test")

    def stale(self):
        pass


def test_a_spool_error_while_taking_a_stopped_lanes_answers_does_not_leave_every_lane_halted(tmp_path, monkeypatch):
    """A lane got a 404 then no answer; recording the 404's dead letter failed (a spool
    error). The writer must still halt and release the lanes: it lost the lane's failure with
    the exception and left the halt set, so no lane sent anything again until a restart."""
    from msg_nagios_bridge.spool import Spool, SpoolError
    spool = Spool(str(tmp_path / "in.sqlite"))
    try:
        spool.put([Message(f"m{i}", "nagios", {}, b"{}") for i in range(3)])
        ids = [entry.entry_id for entry in spool.take(3)]
        first = ScriptedLaneApi([404, ApiUnavailable("refused")])
        second = LaneApi()
        writer = lane_writer(tmp_path, spool, first, second, start=False, objects=NoObjects())
        real_reject, failures = spool.reject, []

        def reject_once(entry_id, reason):
            if not failures:
                failures.append(entry_id)
                raise SpoolError("disk full (once)")
            real_reject(entry_id, reason)
        monkeypatch.setattr(spool, "reject", reject_once)
        hand_out(writer, {0: [prepared(ids[0]), prepared(ids[1])]})
        writer.start()
        try:
            assert until(lambda: failures and not writer._halt.is_set() and not writer._events)
            hand_out(writer, {1: [prepared(ids[2], "h2!s1")]})
            assert until(lambda: second.sent == ["r%d" % ids[2]]), "the lanes stayed halted"
        finally:
            writer.stop()
            writer.join(10)
    finally:
        spool.close()


def test_an_answer_nested_too_deeply_is_an_answer_not_an_exception_from_the_client(tmp_path):
    """json.loads raises RecursionError (not a ValueError) for a deeply nested answer: it came
    out of LeanClient.request, ended the lane's send on its error path, and lost the entries
    the lane was sending again from a closed connection (leased until a restart)."""
    body = b"[" * 100000
    client, _ = lean_with(tmp_path, b"HTTP/1.1 500 Odd\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    status, answer = client.request("GET", "/x")
    assert status == 500 and answer == body.decode()


def test_a_lane_whose_send_breaks_gives_back_what_it_was_sending_again_too():
    """An unexpected error while a lane sends: everything not answered goes back, including
    the pending entries it had just taken to send again on a new connection."""
    class Breaking(LaneApi):
        def request(self, method, path, body=None):
            if body and body["plugin_output"] == "r3":
                raise RuntimeError("a bug")
            return super().request(method, path, body)
    api = Breaking()
    lane = Lane(api)
    lane.send([prepared(1), prepared(2)], threading.Event())
    api.close()                         # 1 and 2 go again first, on a new connection
    halt = threading.Event()
    sent = lane.send([prepared(3), prepared(4)], halt)
    assert [a.item.entry.entry_id for a in sent.answers] == [1, 2] and sent.resent == 2
    assert [i.entry.entry_id for i in sent.rest] == [3, 4] and sent.failure and halt.is_set()
    assert [i.entry.entry_id for _, i in lane.pending] == [1, 2]


@pytest.mark.parametrize("size", [1 << 16, 1 << 20])
def test_results_of_reads_no_more_than_the_limit_of_an_object_over_it(size):
    """An object over the limit: at most about the limit is read and held before the
    ValueError (it read twice the limit: 32 MB at the default 16 MB, 128 MB of str with
    non-BMP characters)."""
    from msg_nagios_bridge.cores.icinga2.api import READ_SIZE, results_of
    limit = 1 << 20
    data = b'{"results":[{"a":"' + b"x" * (8 * limit) + b'"}]}'
    read = reader(data, size)
    taken = [0]

    def counting(n):
        piece = read(n)
        taken[0] += len(piece)
        return piece
    with pytest.raises(ValueError, match="over 1048576 bytes"):
        list(results_of(counting, limit=limit))
    assert taken[0] <= limit + 2 * READ_SIZE


def test_a_spool_error_in_a_halting_collect_keeps_the_lanes_halted_until_every_event_is_taken(tmp_path, monkeypatch):
    """Two lanes stopped; taking the first one's answers fails (a spool error). The lanes must
    stay halted until the second one's event is taken too: released earlier, that lane could
    send again while the writer thread clears its pending."""
    from msg_nagios_bridge.spool import Spool, SpoolError
    spool = Spool(str(tmp_path / "in.sqlite"))
    try:
        spool.put([Message(f"m{i}", "nagios", {}, b"{}") for i in range(3)])
        ids = [entry.entry_id for entry in spool.take(3)]
        writer = lane_writer(tmp_path, spool, LaneApi(), LaneApi(), start=False, objects=NoObjects())
        failures = []

        def reject_once(entry_id, reason):
            failures.append(entry_id)
            if len(failures) == 1:
                raise SpoolError("disk full (once)")
        monkeypatch.setattr(spool, "reject", reject_once)
        dead = judge(404, {"error": 404, "status": "No objects found."}, "h1!s1")
        writer._halt.set()
        writer._outstanding = 3
        writer._events.extend([
            (0, Sent([Answer(prepared(ids[0]), dead)], [prepared(ids[1])], failure="refused"), []),
            (1, Sent([], [prepared(ids[2], "h2!s1")], failure="refused"), [])])
        with pytest.raises(SpoolError):
            writer._halt_lanes()            # the events came while it waited for the busy lanes
        assert writer._halt.is_set() and len(writer._events) == 1
        writer._collect()
        assert not writer._halt.is_set() and not writer._events and writer._outstanding == 0
        assert sorted(entry.entry_id for entry in spool.take(3)) == ids
    finally:
        spool.close()


# -- a review of the writer's answers (2026-12-05) -------------------------------------------------

class AllKnown:
    """An object list that has every object."""

    def get(self):
        class Everything:
            def __contains__(self, key):
                return True
        return Everything()

    def stale(self):
        self.stale_calls = getattr(self, "stale_calls", 0) + 1


class DecidingApi(LaneApi):
    """Answers each POST with ``decide(body)`` -> (status, answer); a GET (a probe) with 200."""

    def __init__(self, decide):
        super().__init__()
        self.decide = decide

    def request(self, method, path, body=None):
        self.connected = True
        self.sent.append(body["plugin_output"] if body else method)
        return self.decide(body) if body else (200, {"results": []})


def spooled_results(spool, outputs):
    from msg_nagios_bridge.model import result_to_dict
    spool.put([Message(f"m{i}", "nagios", {}, json.dumps(result_to_dict(
        CheckResult(f"h{i}", "s", 0, output=text, timestamp=1000.0 + i))).encode())
        for i, text in enumerate(outputs)])


def writer_on(tmp_path, decide):
    """An unstarted Icinga2Writer on a real spool whose 8 lanes all talk to ``decide``: (writer, spool, apis)."""
    from msg_nagios_bridge.spool import Spool
    spool = Spool(str(tmp_path / "in.sqlite"))
    apis = [DecidingApi(decide) for _ in range(8)]
    writer = lane_writer(tmp_path, spool, *apis, start=False, objects=AllKnown())
    writer._backoff = Backoff(0.01, 0.05)          # the holds' backoff: short here
    return writer, spool, apis


def accepted(body):
    return 200, {"results": [{"code": 200, "status": f"Successfully processed check result for {body['plugin_output']}"}]}


def test_lanes_finding_icinga_gone_one_after_another_step_the_backoff_once(tmp_path):
    """Regression: each of the 8 lanes that found Icinga gone in one attempt stepped the
    backoff (a collect each, while the hold of the first ran): after a restart of 3 s the
    results waited the 30 s cap (29 s in test_icinga2_inbound's stop-and-start test, 4 s
    with this). A failure reported while held keeps the hold as it is."""
    writer, spool, _ = writer_on(tmp_path, accepted)
    writer._backoff = Backoff(0.5, 30.0)
    try:
        writer._hold("Icinga 2 API unavailable: refused", "unavailable")
        first = writer._hold_until
        for _ in range(7):                  # the attempt's other lanes, a collect each
            writer._hold("Icinga 2 API unavailable: refused", "unavailable")
        assert writer._hold_until == first
        assert writer._backoff._current == 1.0, "stepped once, from 0.5"
        writer._hold_until = time.monotonic()           # the hold is over: the next attempt fails
        writer._hold("Icinga 2 API unavailable: refused", "unavailable")
        assert writer._backoff._current == 2.0 and writer._hold_until > time.monotonic() + 0.7
    finally:
        spool.close()


def test_a_result_whose_action_fails_in_icinga_is_a_dead_letter_and_stalls_no_other(tmp_path):
    """Icinga answers 500 "Action execution failed" in the object's own entry when its action
    throws for that request. Retried for ever, and halting every lane each time, that one
    result let almost no other through (the review's fake Icinga). Now only its lane stops,
    and after MAX_SERVER_ERRORS such answers it is a dead letter."""
    from msg_nagios_bridge.cores.icinga2.writer import MAX_SERVER_ERRORS

    def decide(body):
        if body["plugin_output"] == "POISON":
            return 500, {"results": [{"code": 500, "status": "Action execution failed: 'boom'."}]}
        return accepted(body)
    writer, spool, apis = writer_on(tmp_path, decide)
    spooled_results(spool, ["POISON"] + [f"r{i}" for i in range(300)])
    writer.start()
    try:
        assert until(lambda: spool.stats().depth == 0, timeout=30), (spool.stats(), writer._state)
        assert [text for api in apis for text in api.sent].count("POISON") == MAX_SERVER_ERRORS
        [dead] = spool.dead_letters()
        assert dead.reason == (f"icinga-error: Icinga 2 answered 500 Action execution failed: 'boom'."
                               f" ({MAX_SERVER_ERRORS} times to this result)")
        assert writer.health.snapshot()["counters"]["injected"] == 300
        assert writer._held_since is None           # no hold: the other lanes went on
    finally:
        writer.stop()
        writer.join(10)
        spool.close()


@pytest.mark.parametrize("answer", [
    (503, {"status": "Shutting down"}),            # Icinga going down: every lane holds
    (500, {"results": [{"code": 500, "status": "Action execution failed: 'disk full'"}]})])  # fails all
def test_5xx_answers_to_every_result_make_no_dead_letter(tmp_path, answer):
    down = {"on": True}

    def decide(body):
        return answer if down["on"] else accepted(body)
    writer, spool, apis = writer_on(tmp_path, decide)
    spooled_results(spool, [f"r{i}" for i in range(20)])
    writer.start()
    try:
        assert until(lambda: sum(len(api.sent) for api in apis) > 100, timeout=30)
        assert spool.stats().dead_letters == 0 and spool.stats().depth == 20
        assert writer._state.startswith("waiting: ")
        down["on"] = False
        assert until(lambda: spool.stats().depth == 0, timeout=30), spool.stats()
        assert spool.stats().dead_letters == 0
    finally:
        writer.stop()
        writer.join(10)
        spool.close()


@pytest.mark.parametrize("status, text", [(404, "No objects found."), (403, "No permission")])
def test_icinga_refusing_every_result_does_not_empty_the_spool_into_dead_letters(tmp_path, status, text):
    """An ApiUser without actions/process-check-result: Icinga 2.13 answers 404 to every
    request (later versions 403), for objects its list has. Each result was dead-lettered at
    the writer's full rate, and past max_dead_letters (10,000) the oldest were deleted. Now the
    writer holds after REFUSING_ALL
    different objects in a row, and keeps them."""
    from msg_nagios_bridge.cores.icinga2.writer import REFUSING_ALL
    refusing = {"on": True}

    def decide(body):
        return (status, {"error": status, "status": text}) if refusing["on"] else accepted(body)
    writer, spool, apis = writer_on(tmp_path, decide)
    spooled_results(spool, [f"r{i}" for i in range(500)])
    writer.start()
    try:
        assert until(lambda: sum(len(api.sent) for api in apis) > 200, timeout=30)
        assert until(lambda: "refuses every result" in writer._state, timeout=10), writer._state
        assert spool.stats().dead_letters <= REFUSING_ALL - 1
        assert spool.stats().depth >= 500 - (REFUSING_ALL - 1)
        refusing["on"] = False                  # the permission is given
        assert until(lambda: spool.stats().depth == 0, timeout=30), spool.stats()
        assert writer.health.snapshot()["counters"]["injected"] + spool.stats().dead_letters == 500
        assert writer._state == "waiting for results"
    finally:
        writer.stop()
        writer.join(10)
        spool.close()


def test_one_object_icinga_refuses_among_others_it_takes_is_still_a_dead_letter(tmp_path):
    def decide(body):
        if body["plugin_output"] in ("gone-1", "gone-2"):
            return 404, {"error": 404, "status": "No objects found."}
        return accepted(body)
    writer, spool, apis = writer_on(tmp_path, decide)
    spooled_results(spool, ["gone-1"] + [f"r{i}" for i in range(100)] + ["gone-2"])
    writer.start()
    try:
        assert until(lambda: spool.stats().depth == 0, timeout=30), spool.stats()
        assert sorted(dead.reason.split(":")[0] for dead in spool.dead_letters()) == ["unknown-object"] * 2
        assert writer.objects.stale_calls >= 1       # the list is read again: the object may be gone
    finally:
        writer.stop()
        writer.join(10)
        spool.close()


def test_a_dead_letter_the_spool_cannot_record_while_preparing_strands_no_entry(tmp_path, monkeypatch):
    """deliver(): a reject that failed (disk full) left the loop with the batch's entries
    leased, never taken again until a restart (the review: 11 of 11 stranded)."""
    from msg_nagios_bridge.spool import Spool, SpoolError

    class KnowsAllBut:
        def get(self):
            class Known:
                def __contains__(self, key):
                    return key[0] != "h3"
            return Known()

        def stale(self):
            pass
    spool = Spool(str(tmp_path / "in.sqlite"))
    try:
        spooled_results(spool, [f"r{i}" for i in range(11)])
        writer = lane_writer(tmp_path, spool, start=False, objects=KnowsAllBut())
        monkeypatch.setattr(spool, "reject", lambda entry_id, reason: (_ for _ in ()).throw(SpoolError("disk full")))
        with pytest.raises(SpoolError):
            writer.deliver(spool.take(11))
        assert spool.stats().leased == 0 and len(spool.take(11)) == 11
        assert writer._outstanding == 0 and not any(lane.inbox for lane in writer.lanes)
    finally:
        spool.close()
