"""Icinga 2's event lines -> CheckResults (cores/icinga2/event_record.py), the bounded line
reader (events.LineSplitter) and the marks an intake stores with a batch."""
import contextlib
import copy
import json
import socket
import ssl
import threading
import time

import pytest
from hypothesis import given, strategies as st

from msg_nagios_bridge import config
from msg_nagios_bridge.cores.icinga2 import events
from msg_nagios_bridge.cores.icinga2.event_record import (MARKS_KIND, MAX_EVENT_BYTES, BadEvent, catch_up_line,
                                                          parse_event)
from msg_nagios_bridge.daemon.health import Health
from msg_nagios_bridge.model import CheckResult
from msg_nagios_bridge.outbound.intake import Intake
from msg_nagios_bridge.outbound.routing import Router
from msg_nagios_bridge.spool import Spool
from tests.sandbox.pki import Authority
from tests.sandbox.ports import wait_until

# Seen on Icinga 2.13.6 (tests/sandbox/icinga2.py): a passive service result sent with
# exit_status 2, a check_source of its own and performance_data ["a=1;2;3", 5].
SERVICE_EVENT = {
    "acknowledgement": False, "downtime_depth": 0, "host": "h1", "service": "s1",
    "timestamp": 1796220169.758728, "type": "CheckResult",
    "check_result": {
        "active": False, "check_source": "me", "command": None, "execution_end": 1796220169.7535644,
        "execution_start": 1796220168.7535627, "exit_status": 0, "output": "CRIT - x\nline2\nline3",
        "performance_data": ["a=1;2;3", 5], "previous_hard_state": 99, "schedule_end": 1796220169.758371,
        "schedule_start": 1796220169.758371, "scheduling_source": "icinga-sandbox", "state": 2, "ttl": 0,
        "type": "CheckResult", "vars_after": {"attempt": 1, "reachable": True, "state": 2, "state_type": 1},
        "vars_before": None}}
# A host result sent with exit_status 1 (DOWN): Icinga stores state 2 and no check_source of ours.
HOST_EVENT = {
    "acknowledgement": False, "downtime_depth": 0, "host": "h2", "timestamp": 1796220169.809867,
    "type": "CheckResult",
    "check_result": {
        "active": False, "check_source": "icinga-sandbox", "command": None, "execution_end": 1796220169.809778,
        "execution_start": 1796220169.809778, "exit_status": 0, "output": "down", "performance_data": None,
        "previous_hard_state": 99, "state": 2, "type": "CheckResult",
        "vars_after": {"attempt": 1, "reachable": True, "state": 2, "state_type": 1}, "vars_before": None}}


def line(event):
    return json.dumps(event)


def with_result(**changes):
    event = copy.deepcopy(SERVICE_EVENT)
    for key, value in changes.items():
        if value is KeyError:
            event["check_result"].pop(key, None)
        else:
            event["check_result"][key] = value
    return event


def test_a_service_event_becomes_its_result():
    result = parse_event(line(SERVICE_EVENT))
    assert (result.host, result.service, result.state, result.state_type, result.attempt) == ("h1", "s1", 2, "HARD", 1)
    assert result.output == "CRIT - x" and result.long_output == "line2\nline3"
    assert result.perfdata == "a=1;2;3 5"
    assert result.timestamp == 1796220169.7535644           # execution_end, not the event's time
    assert result.attributes == {"check_source": "me", "check_type": "PASSIVE"}


def test_a_host_event_maps_the_service_state_icinga_stores_to_the_host_state():
    result = parse_event(line(HOST_EVENT))
    assert (result.host, result.service, result.state, result.state_name) == ("h2", None, 1, "DOWN")
    for stored, host_state in ((0, 0), (1, 0), (2, 1), (3, 1)):
        event = copy.deepcopy(HOST_EVENT)
        event["check_result"]["state"] = stored
        assert parse_event(line(event)).state == host_state


def test_state_not_exit_status_and_soft_attempts_and_active_checks():
    event = with_result(state=1, exit_status=0, active=True,
                        vars_after={"attempt": 2, "state_type": 0, "state": 1})
    result = parse_event(line(event))
    assert (result.state, result.state_type, result.attempt) == (1, "SOFT", 2)
    assert result.attributes["check_type"] == "ACTIVE"


def test_execution_start_stands_in_for_a_missing_end_and_defaults_fill_the_rest():
    event = with_result(execution_end=KeyError, vars_after=KeyError, output=KeyError, performance_data=KeyError,
                        check_source=KeyError, active=KeyError)
    result = parse_event(line(event))
    assert result.timestamp == 1796220168.7535627
    assert (result.state_type, result.attempt, result.output, result.perfdata) == ("HARD", 1, "", "")
    assert result.attributes == {"check_source": "", "check_type": "PASSIVE"}


def test_line_breaks_never_reach_one_line_fields():
    result = parse_event(line(with_result(output="first\r\nsecond\n", performance_data=["a=1\nmetricStatus: OK", "b=2\r"])))
    assert result.output == "first " and result.long_output == "second"
    assert result.perfdata == "a=1 metricStatus: OK b=2"


def test_a_catch_up_line_gives_the_same_result_and_so_the_same_message_id():
    for event in (SERVICE_EVENT, HOST_EVENT):
        from_stream = parse_event(line(event))
        again = parse_event(catch_up_line(event["host"], event.get("service"), event["check_result"]).decode())
        assert again == from_stream and again.identity() == from_stream.identity()


def test_a_lone_surrogate_still_makes_a_catch_up_line():
    text = catch_up_line("h1", "s1", {"state": 0, "output": "x\ud800", "execution_end": 1.0})
    assert parse_event(text.decode()).output == "x\ud800"



@pytest.mark.parametrize("text, reason", [
    ("", "not JSON"),
    ("{", "not JSON"),
    ("[1, 2]", "not an object"),
    ('"CheckResult"', "not an object"),
    ("null", "not an object"),
    (line({**SERVICE_EVENT, "type": "StateChange"}), "is not CheckResult"),
    (line({**SERVICE_EVENT, "type": None}), "is not CheckResult"),
    (line({**SERVICE_EVENT, "host": None}), "host is not text"),
    (line({**SERVICE_EVENT, "host": ["h1"]}), "host is not text"),
    (line({**SERVICE_EVENT, "host": ""}), "empty"),
    (line({**SERVICE_EVENT, "host": "h;1"}), "forbidden character"),
    (line({**SERVICE_EVENT, "host": "h\n1"}), "forbidden character"),
    (line({**SERVICE_EVENT, "service": 7}), "service is not text"),
    (line({**SERVICE_EVENT, "service": "x" * 300}), "characters long"),
    (line({**SERVICE_EVENT, "check_result": None}), "check_result is not an object"),
    (line({**SERVICE_EVENT, "check_result": "x"}), "check_result is not an object"),
    (line(with_result(state=KeyError)), "state"),
    (line(with_result(state=4)), "not 0 to 3"),
    (line(with_result(state=-1)), "not 0 to 3"),
    (line(with_result(state=1.5)), "not a whole number"),
    (line(with_result(state="2")), "not a number"),
    (line(with_result(state=True)), "not a number"),
    (line(with_result(execution_end=KeyError, execution_start=KeyError)), "execution_start"),
    (line(with_result(execution_end="now")), "not a number"),
    (line(with_result(execution_end=-5)), "out of range"),
    (line(with_result(execution_end=1e300)), "out of range"),
    ('{"type": "CheckResult", "host": "h", "check_result": {"state": 0, "execution_end": NaN}}', "not a number"),
    ('{"type": "CheckResult", "host": "h", "check_result": {"state": 0, "execution_end": Infinity}}', "not a number"),
    ('{"type": "CheckResult", "host": "h", "check_result": {"state": 0, "execution_end": 1e999}}', "not a number"),
    ('{"type": "CheckResult", "host": "h", "check_result": {"state": ' + "9" * 5000 + "}}", "digits"),
    (line(with_result(output=["x"])), "output is list"),
    (line(with_result(performance_data={"a": 1})), "performance_data is dict"),
    (line(with_result(performance_data=[None])), "item is NoneType"),
    (line(with_result(performance_data=[True])), "item is bool"),
    (line(with_result(performance_data=[["a=1"]])), "item is list"),
    (line(with_result(check_source=5)), "check_source is int"),
    (line(with_result(active="yes")), "active"),
    (line(with_result(vars_after=[1])), "vars_after is not an object"),
    (line(with_result(vars_after={"state_type": 2})), "not 0 or 1"),
    (line(with_result(vars_after={"state_type": "1"})), "not a number"),
    (line(with_result(vars_after={"attempt": -1})), "out of range"),
    (line(with_result(vars_after={"attempt": 1 << 40})), "out of range"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"a":' * 100_000 + "1" + "}" * 100_000, "nested too deeply"),
    (line({**SERVICE_EVENT, "check_result": {"state": 0, "execution_end": 1.0,
                                              "vars_before": json.loads("[" * 900 + "]" * 900)}}), None),
    ("x" * (MAX_EVENT_BYTES + 1), "longer than"),
])
def test_hostile_events_are_refused_with_a_reason_and_only_as_value_errors(text, reason):
    if reason is None:          # deep but within Python's limits: taken, the nesting is not read
        assert parse_event(text).host == "h1"
        return
    with pytest.raises(BadEvent) as caught:
        parse_event(text)
    assert reason in str(caught.value)


def _slow_shapes():
    """Lines at the size limit built to be slow for a parser."""
    limit = MAX_EVENT_BYTES - 200
    head = '{"type": "CheckResult", "host": "h1", "service": "s1", "check_result": {"state": 0, ' \
           '"execution_end": 1.0, "output": "'
    return {
        "escapes": head + "\\\\" * (limit // 2) + '"}}',
        "unicode escapes": head + "\\u00e9" * (limit // 6) + '"}}',
        "unterminated string": head + "a" * limit,
        "many tiny fields": '{"type": "CheckResult", "host": "h1", "check_result": {' +
                            ",".join(f'"k{i}":0' for i in range(limit // 12)) + ', "state": 0, "execution_end": 1.0}}',
        "many perfdata items": head + 'x", "performance_data": [' + ",".join(['"a=1"'] * (limit // 6)) + "]}}",
        "deep nesting": "[" * limit,
        "digits": '{"type": "CheckResult", "host": "h1", "check_result": {"state": ' + "1" * limit + "}}",
        "blanks": " " * limit,
    }


@pytest.mark.parametrize("name", sorted(_slow_shapes()))
def test_lines_at_the_limit_built_to_be_slow_parse_in_bounded_time(name):
    text = _slow_shapes()[name]
    assert len(text) <= MAX_EVENT_BYTES
    started = time.perf_counter()
    try:
        parse_event(text)
    except ValueError:
        pass
    assert time.perf_counter() - started < 1.0, name


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=20)


@given(st.sampled_from(["type", "host", "service", "check_result"]), json_values)
def test_any_value_in_any_event_key_is_a_result_or_a_value_error(key, value):
    try:
        result = parse_event(json.dumps({**SERVICE_EVENT, key: value}))
    except ValueError:
        return
    assert isinstance(result, CheckResult)


@given(st.sampled_from(sorted(SERVICE_EVENT["check_result"]) + ["vars_after"]), json_values)
def test_any_value_in_any_result_key_is_a_result_or_a_value_error(key, value):
    try:
        result = parse_event(json.dumps(with_result(**{key: value})))
    except ValueError:
        return
    assert isinstance(result, CheckResult)


@given(st.binary(max_size=300))
def test_any_bytes_are_a_result_or_a_value_error(data):
    try:
        result = parse_event(data.decode("utf-8", "replace"))
    except ValueError:
        return
    assert isinstance(result, CheckResult)


# -- the bounded line reader -----------------------------------------------------------------

def feed_all(splitter, data, size):
    lines, refused = [], []
    for start in range(0, len(data), size):
        got, bad = splitter.feed(data[start:start + size])
        lines += got
        refused += bad
    return lines, refused


@pytest.mark.parametrize("size", [1, 3, 7, 64, 1 << 16])
def test_lines_cut_anywhere_by_the_reads_come_out_whole(size):
    data = b"".join(line(SERVICE_EVENT).encode() + b"\n" for _ in range(5)) + b'{"partial'
    splitter = events.LineSplitter(limit=10_000)
    lines, refused = feed_all(splitter, data, size)
    assert lines == [line(SERVICE_EVENT).encode()] * 5 and refused == []


@pytest.mark.parametrize("size", [5, 1000, 1 << 16])
def test_a_line_over_the_limit_is_refused_by_its_head_and_skipped_to_its_end(size):
    splitter = events.LineSplitter(limit=100)
    data = b"ok1\n" + b"A" * 99 + b"\n" + b"B" * 101 + b"\n" + b"C" * 5000 + b"\nok2\n" + b"D" * 150
    lines, refused = feed_all(splitter, data, size)
    assert lines == [b"ok1", b"A" * 99, b"ok2"]
    assert len(refused) == 3                       # B (at its end), C (as soon as it passes), D (unfinished)
    assert refused[0].startswith(b"B") and refused[1].startswith(b"C") and refused[2].startswith(b"D")
    assert len(splitter._pending) == 0


def test_a_10_mb_line_is_never_held_and_reading_goes_on_after_it():
    splitter = events.LineSplitter()               # MAX_EVENT_BYTES
    chunk = b"x" * (1 << 16)
    started = time.perf_counter()
    refused_all = []
    for _ in range(160):                           # 10 MiB, no newline yet
        lines, refused = splitter.feed(chunk)
        assert lines == [] and len(splitter._pending) <= MAX_EVENT_BYTES
        refused_all += refused
    lines, refused = splitter.feed(b"tail\n" + line(SERVICE_EVENT).encode() + b"\n")
    assert len(refused_all) == 1 and len(refused_all[0]) == events.REFUSED_HEAD_BYTES and refused == []
    assert lines == [line(SERVICE_EVENT).encode()]
    assert time.perf_counter() - started < 2.0


# -- marks stored with the batch ---------------------------------------------------------------

def test_the_intake_stores_each_parsed_result_s_mark_with_its_messages_and_none_for_dead_letters(tmp_path):
    settings = config.parse("site: {name: SITE-A}\nbrokers: {hosts: ['127.0.0.1:61613']}\n"
                            f"spool: {{directory: {tmp_path}}}\n"
                            "routes: [{name: r, destination: /topic/x, host_checks: true, hard_only: true}]\n")
    with Spool(str(tmp_path / "out.sqlite")) as spool:
        intake = Intake("icinga2_events", Router(settings), spool, Health(), threading.Event(), parse_event)
        soft = with_result(vars_after={"state_type": 0, "attempt": 1}, execution_end=1796220200.5)
        soft["service"] = "s2"
        batch = [line(SERVICE_EVENT).encode(), line(HOST_EVENT).encode(), line(soft).encode(), b"not json"]
        assert intake.spool_lines(batch, marks_of=events.mark_of)
        assert spool.stats().depth == 2                    # the SOFT one is not routed ...
        assert spool.load_marks(MARKS_KIND, 0) == {        # ... but marked: it was taken
            "h1!s1": 1796220169.7535644, "h2": 1796220169.809778, "h1!s2": 1796220200.5}
        assert [d.reason for d in spool.dead_letters()] == ["not JSON: Expecting value: line 1 column 1 (char 0)"]
        # An older result does not move a mark back.
        older = with_result(execution_end=1.0, execution_start=1.0)
        assert intake.spool_lines([line(older).encode()], marks_of=events.mark_of)
        assert spool.load_marks(MARKS_KIND, 0)["h1!s1"] == 1796220169.7535644



# -- a stop while the source connects ------------------------------------------------------------

STOP_WITHIN = 1.0       # seconds a stop may take while a connect or an answer is awaited


class SilentApi:
    """A hung Icinga on 127.0.0.1 whose kernel still answers, at one of three stages:
    "tcp connect": its accept queue is full, so a connect waits for the SYN's answer;
    "tls handshake": it accepts TCP and never sends a byte;
    "answer" (with ``context``): it completes the handshake, reads the request, never answers."""

    def __init__(self, stage, context=None):
        self.context = context
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(0)
        self.port = self.server.getsockname()[1]
        self.accepted = []
        self.requests = []
        self.fillers = []
        if stage == "tcp connect":
            for _ in range(3):              # Linux queues backlog + 1; the rest wait in SYN_SENT
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", self.port))
                self.fillers.append(filler)
        else:
            threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client = self.server.accept()[0]
            except OSError:
                return
            self.accepted.append(client)
            if self.context is not None:
                threading.Thread(target=self._read_request, args=(client,), daemon=True).start()

    def _read_request(self, client):
        try:
            tls = self.context.wrap_socket(client, server_side=True)
            self.accepted.append(tls)
            self.requests.append(tls.recv(65536))
        except OSError:
            pass

    def close(self):
        self.server.close()
        for client in self.accepted + self.fillers:
            client.close()


@pytest.fixture
def api_pki(tmp_path):
    """(the CA file, a server-side SSLContext with a certificate for 127.0.0.1 from that CA)."""
    authority = Authority(tmp_path / "pki", name="Icinga Test CA")
    cert, key = authority.issue("api", "icinga.test", hosts=("127.0.0.1",))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return authority.cert_file, context


@pytest.mark.parametrize("stage", ["tcp connect", "tls handshake", "answer"])
def test_a_stop_ends_a_connect_to_an_icinga_that_never_answers(tmp_path, api_pki, stage):
    """A stop returns at once (not after the 30 s timeout) while the source waits for the
    answer to its SYN, in the TLS handshake with an Icinga that accepted TCP and sends nothing,
    or for the answer to its POST /v1/events. Regression: the socket was kept for the stop only
    once the handshake was done."""
    ca_file, server_context = api_pki
    api = SilentApi(stage, server_context if stage == "answer" else None)
    settings = config.parse(
        "site: {name: SITE-A}\nbrokers: {hosts: ['127.0.0.1:61613']}\n"
        f"spool: {{directory: {tmp_path}}}\nroutes: [{{name: r, destination: /topic/x}}]\n"
        f"core: icinga2\nicinga2: {{host: 127.0.0.1, port: {api.port}, ca_file: {ca_file}, user: u,"
        f" password: p, timeout: 30}}\n")
    health = Health()
    try:
        with Spool(str(tmp_path / "out.sqlite")) as spool:
            intake = Intake(events.SOURCE, Router(settings), spool, health, threading.Event(), parse_event)
            source = events.EventStreamSource(settings.icinga2, intake, health)
            source.start()
            waiting = {"tcp connect": lambda: source._sockets, "tls handshake": lambda: api.accepted,
                       "answer": lambda: api.requests}[stage]
            assert wait_until(waiting, timeout=10), "the source never got that far"
            time.sleep(0.3)                   # well inside the wait
            assert source.is_alive() and not source.ready.is_set()
            if stage == "tcp connect":            # still waiting for the SYN's answer: no TLS yet
                assert not any(isinstance(sock, ssl.SSLSocket) for sock in list(source._sockets))
            stopped_at = time.monotonic()
            intake.stopping.set()
            source.join(10)
            took = time.monotonic() - stopped_at
            assert not source.is_alive()
            assert took < STOP_WITHIN, f"the stop took {took:.2f} s"
            assert health.snapshot()["states"][events.SOURCE] == "stopped"
            if stage == "answer":
                assert api.requests[0].startswith(b"POST /v1/events?types=CheckResult&queue=")
    finally:
        api.close()


@contextlib.contextmanager
def object_lists(hosts: bytes, services: bytes):
    """An HTTP server on 127.0.0.1 answering GET /v1/objects/hosts... with ``hosts`` and any
    other GET with ``services``; yields its port."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = hosts if self.path.startswith("/v1/objects/hosts") else services
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass
    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


def test_the_catch_up_reads_each_object_list_to_its_end_so_the_next_request_can_follow(tmp_path):
    """results_of stops at the list's ``]``: when the closing ``}`` came in a read of its own
    (an answer of 64 KiB + 1 bytes), the services request on the same connection raised
    http.client.ResponseNotReady and the catch-up failed."""
    import http.client
    import types
    from msg_nagios_bridge.cores.icinga2.api import READ_SIZE
    last = {"execution_end": 1.0, "state": 0, "output": ""}
    hosts = json.dumps({"results": [{"attrs": {"name": "h1", "last_check_result": dict(last, output="")}}]})
    hosts = hosts.replace('"output": ""', '"output": "' + "x" * (READ_SIZE + 1 - len(hosts)) + '"').encode()
    services = json.dumps({"results": [{"attrs": {"name": "s1", "host_name": "h1", "last_check_result": last}}]}).encode()
    assert len(hosts) == READ_SIZE + 1 and hosts.endswith(b"]}")

    with object_lists(hosts, services) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            source = types.SimpleNamespace(settings=config.Icinga2Settings(user="bridge", password="pw"))
            got = list(events.EventStreamSource._last_results(source, connection, "hosts", "attrs=name"))
            assert [(host, service) for host, service, _ in got] == [("h1", None)]
            got = list(events.EventStreamSource._last_results(source, connection, "services", "attrs=name"))
            assert [(host, service) for host, service, _ in got] == [("h1", "s1")]
        finally:
            connection.close()


def test_one_object_with_an_output_over_the_result_limit_is_skipped_and_the_catch_up_goes_on():
    """Icinga stores 20 MiB outputs: such an object is skipped (read to its end, never held),
    named in a dead letter, and the objects after it are caught up (before, the whole list
    was refused at it, so every connect failed before the stream was read)."""
    from msg_nagios_bridge.cores.icinga2.api import results_of
    big = {"attrs": {"name": "h1", "last_check_result": {"output": "x\\\" ]} {[" * (2 << 20)}}}   # 16+ MiB
    small = {"attrs": {"name": "h2", "last_check_result": {"output": "ok"}}}
    data = json.dumps({"results": [small, big, small]}).encode()
    view, at = memoryview(data), [0]

    def read(n):
        piece = bytes(view[at[0]:at[0] + n])
        at[0] += len(piece)
        return piece
    skipped = []
    started = time.monotonic()
    names = [item["attrs"]["name"] for item in results_of(read, too_big=skipped.append)]
    assert names == ["h2", "h2"] and len(skipped) == 1 and skipped[0].startswith('{"attrs": {"name": "h1"')
    assert time.monotonic() - started < 10
    at[0] = 0
    with pytest.raises(ValueError, match="over"):        # without too_big: refused, as the object list is
        list(results_of(read))


@pytest.mark.parametrize("size", [1, 3, 4096])
def test_skipping_an_object_over_the_limit_keeps_strings_escapes_and_brackets_however_it_is_cut(size):
    from msg_nagios_bridge.cores.icinga2.api import results_of
    big = {"a": ["}" * 5000, "\\\"{[", {"b": "\\" * 40 + '"'}], "c": "]" * 30}
    data = json.dumps({"results": [big, {"n": 1}, big, {"n": 2}]}).encode()
    view, at = memoryview(data), [0]

    def read(n):
        piece = bytes(view[at[0]:at[0] + min(n, size)])
        at[0] += len(piece)
        return piece
    skipped = []
    assert list(results_of(read, limit=100, too_big=skipped.append)) == [{"n": 1}, {"n": 2}]
    assert len(skipped) == 2


def test_the_catch_up_holds_neither_objects_over_the_line_limit_nor_many_big_ones():
    """Objects of up to 16 MiB were read, and up to 1,000 held, before the line's 1 MiB limit
    refused them (the review: memory in proportion). Now an object that would
    make a line over MAX_EVENT_BYTES is skipped as it is read, and a chunk is spooled once its
    outputs reach CATCH_UP_BYTES."""
    import functools
    import http.client
    import tracemalloc
    import types
    over = {"attrs": {"name": "big", "last_check_result": {"execution_end": 1.0, "output": "x" * (3 << 19)}}}
    under = {"attrs": {"name": "h", "last_check_result": {"execution_end": 1.0, "output": "y" * (900 << 10)}}}
    hosts = json.dumps({"results": [over, under] * 30}).encode()          # 72 MiB
    services = b'{"results": []}'

    chunks, skipped = [], []
    with object_lists(hosts, services) as port:
        source = types.SimpleNamespace(
            settings=config.Icinga2Settings(user="bridge", password="pw"), health=Health(),
            _connect=lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=10),
            _skipped=lambda path, head: skipped.append(head),
            _spool_newer=lambda chunk: chunks.append(len(chunk)) or 0,
            intake=types.SimpleNamespace(spool=types.SimpleNamespace(keep_newest_marks=lambda kind, keep: None)))
        source._last_results = functools.partial(events.EventStreamSource._last_results, source)
        tracemalloc.start()
        try:
            assert events.EventStreamSource._catch_up(source) == (30, 0)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert len(skipped) == 30 and skipped[0].startswith('{"attrs": {"name": "big"')
    assert max(chunks) <= events.CATCH_UP_BYTES // (900 << 10) + 1 and sum(chunks) == 30
    assert peak < 3 * events.CATCH_UP_BYTES, f"{peak / 2**20:.0f} MiB held at the peak"
