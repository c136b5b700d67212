"""The self-check plugin and the metrics, from status snapshots."""
import os
import re
import socket
import threading
from pathlib import Path

import pytest

from msg_nagios_bridge.daemon import metrics, sdnotify
from msg_nagios_bridge.daemon.status import Status
from msg_nagios_bridge.daemon.pidfile import AlreadyRunning, PidFile
from msg_nagios_bridge.cli.selfcheck import CRITICAL, OK, WARNING, Thresholds, evaluate

NOW = 1_700_000_000.0


def status(**changes):
    base = {"time": NOW - 1, "pid": 42,
            "states": {"publisher": "connected to b1:61613", "ocsp_pipe": "reading"},
            "since": {"publisher": NOW - 500, "ocsp_pipe": NOW - 500},
            "spool": {"depth": 3, "bytes": 900, "oldest_age": 0.5, "dead_letters": 0},
            "counters": {"published": 1000, "spooled": 1003}, "last": {"publish": NOW - 1}}
    base.update(changes)
    return Status.from_json(base)


def test_ok_names_the_counters_and_gives_perfdata():
    code, line = evaluate(status(), Thresholds(), NOW)
    assert code == OK
    assert line.startswith("MSG-BRIDGE OK - published 1000, injected 0, backlog 3 | ")
    assert "backlog=3;10000;100000;0" in line and "dead_letters=0;1;100;0" in line
    assert "\n" not in line


@pytest.mark.parametrize("away, expected", [(60, OK), (200, WARNING), (700, CRITICAL)])
def test_broker_away_grows_from_warning_to_critical(away, expected):
    down = status(states={"publisher": "disconnected: b1:61613: cannot connect"},
                  since={"publisher": NOW - away})
    code, line = evaluate(down, Thresholds(), NOW)
    assert code == expected
    if expected != OK:
        assert f"publisher disconnected: b1:61613: cannot connect for {away} s" in line


def test_backlog_age_and_dead_letters_have_thresholds():
    assert evaluate(status(spool={"depth": 20_000, "bytes": 1, "oldest_age": 1, "dead_letters": 0}),
                    Thresholds(), NOW)[0] == WARNING
    assert evaluate(status(spool={"depth": 1, "bytes": 1, "oldest_age": 4000, "dead_letters": 0}),
                    Thresholds(), NOW)[0] == CRITICAL
    assert evaluate(status(spool={"depth": 1, "bytes": 1, "oldest_age": 1, "dead_letters": 5}),
                    Thresholds(), NOW)[0] == WARNING


def test_no_status_or_a_stale_one_is_critical():
    assert evaluate(None, Thresholds(), NOW)[0] == CRITICAL
    code, line = evaluate(status(time=NOW - 100), Thresholds(), NOW)
    assert code == CRITICAL and "100 s old" in line


def test_nagios_unavailable_and_a_failed_part():
    waiting = status(states={"nagios_writer": "waiting: no command file at /x (is Nagios running?)"},
                     since={"nagios_writer": NOW - 900})
    code, line = evaluate(waiting, Thresholds(), NOW)
    assert code == CRITICAL and "Nagios unavailable for 900 s" in line
    failed = status(states={"ocsp_pipe": "failed: /run/x exists and is not a FIFO"})
    assert evaluate(failed, Thresholds(), NOW)[0] == CRITICAL


def test_a_pipe_in_a_state_cannot_break_the_perfdata():
    odd = status(states={"publisher": "disconnected: a|b"}, since={"publisher": NOW - 700})
    line = evaluate(odd, Thresholds(), NOW)[1]
    assert line.count("|") == 1


def test_metrics_render_counters_gauges_and_parts():
    text = metrics.render(status())
    assert "msg_nagios_bridge_published_total 1000" in text
    assert "msg_nagios_bridge_spool_depth 3" in text
    assert 'msg_nagios_bridge_part_up{part="publisher"} 1' in text
    assert text.count("# TYPE msg_nagios_bridge_part_up gauge") == 1


def test_metrics_textfile_is_replaced_atomically(tmp_path):
    path = tmp_path / "bridge.prom"
    metrics.write_textfile(str(path), "a 1\n")
    metrics.write_textfile(str(path), "a 2\n")
    assert path.read_text() == "a 2\n" and os.listdir(tmp_path) == ["bridge.prom"]


def test_pidfile_is_locked_and_removed(tmp_path):
    path = tmp_path / "bridge.pid"
    with PidFile(str(path)):
        assert path.read_text() == f"{os.getpid()}\n"
        with pytest.raises(AlreadyRunning, match=str(os.getpid())):
            PidFile(str(path)).check()
    assert not path.exists()
    path.write_text("12345\n")              # stale, from a killed bridge: no lock, no problem
    PidFile(str(path)).check()


def test_sd_notify_speaks_to_the_socket(tmp_path, monkeypatch):
    address = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        assert sdnotify.notify("READY=1")
        assert server.recv(100) == b"READY=1"
        monkeypatch.setenv("WATCHDOG_USEC", "20000000")
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        assert sdnotify.watchdog_interval() == 10.0
    finally:
        server.close()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sdnotify.notify("READY=1")


def test_sd_notify_does_not_hang_when_the_receiver_stops_reading(tmp_path, monkeypatch):
    """The receiver's queue holds a few datagrams (net.unix.max_dgram_qlen); past that a
    blocking send waited for ever, and the daemon's main loop with it."""
    address = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setattr(sdnotify, "SEND_TIMEOUT", 0.1)
    sent = []

    def ping_until_refused():
        # Until the first refusal (the queue is full; nobody reads it), at most 200 pings:
        # each refusal waits SEND_TIMEOUT, and 200 of them once cost this test 19 s.
        while len(sent) < 200 and False not in sent:
            sent.append(sdnotify.notify("WATCHDOG=1"))
    pinger = threading.Thread(target=ping_until_refused, daemon=True)
    try:
        pinger.start()
        pinger.join(60)
        assert not pinger.is_alive(), "notify blocked on a full queue"
        assert sent.count(True) >= 1 and sent[-1] is False, sent.count(True)
    finally:
        server.close()


def test_rate_limited_log_sums_up_a_burst_once_it_is_over(caplog):
    """Regression: 'and N more' was added only to the next line with the same key, so 62 of 78
    refusals never appeared in the log, even after minutes of quiet."""
    import logging
    import re
    import time
    from msg_nagios_bridge.daemon.health import RateLimitedLog
    limited = RateLimitedLog(logging.getLogger("test.burst"), interval=0.2)
    with caplog.at_level(logging.WARNING, logger="test.burst"):
        for index in range(78):
            limited(logging.WARNING, "bad-field", f"refused message {index} as bad-field")
        limited.flush()                       # the interval is not over: nothing yet
        assert len(caplog.records) == 1
        time.sleep(0.25)
        limited.flush()
        limited.flush()                       # once only
    assert len(caplog.records) == 2
    assert re.fullmatch(r"77 more like this \(bad-field\) in the last \d+ s; the last: refused message 77 as bad-field",
                        caplog.records[1].getMessage()), caplog.records[1].getMessage()


def icinga2_status(**changes):
    """A bridge with core: icinga2 in both directions: the event stream cannot connect, the
    writer writes."""
    base = {"time": NOW - 1, "pid": 42,
            "states": {"publisher": "connected to b1:61613", "subscriber": "subscribed on b1:61613",
                       "icinga2_events": "waiting: ConnectionRefusedError: [Errno 111] Connection refused",
                       "icinga2_writer": "writing"},
            "since": {"icinga2_events": NOW - 400, "icinga2_writer": NOW - 900},
            "spool": {"depth": 0, "bytes": 0, "oldest_age": None, "dead_letters": 0},
            "inbound_spool": {"depth": 12, "bytes": 3000, "oldest_age": 30.5, "dead_letters": 5},
            "counters": {"icinga2_events.events": 120, "icinga2_events.lines": 120, "icinga2_events.connects": 2,
                         "icinga2_events.disconnects": 3, "icinga2_events.catch_up_results": 7, "spooled": 127,
                         "published": 127, "received": 50, "written": 45, "injected": 40, "icinga2_no_answer": 1,
                         "icinga2_resent": 3, "icinga2_ignored": 2, "refused": 5, "refused.unknown-object": 4,
                         "refused.too-big": 1, "dead_letters": 5},
            "last": {"icinga2_events.event": NOW - 3, "icinga2_events.catch_up": NOW - 100, "inject": NOW - 10,
                     "icinga2_answer": NOW - 5, "publish": NOW - 2}}
    base.update(changes)
    return Status.from_json(base)


def samples(text):
    """{metric name with its labels: value} of a metrics text; asserts each family has one
    TYPE line, before its samples, and that every name is a valid Prometheus name."""
    typed, values = set(), {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name = line.split()[2]
            assert name not in typed, f"two TYPE lines for {name}"
            typed.add(name)
            continue
        series, value = line.rsplit(" ", 1)
        name = series.split("{")[0]
        assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", name), name
        assert name in typed, f"{name} has no TYPE line before it"
        values[series] = float(value)
    return values


def test_metrics_show_the_icinga2_side_connected_last_event_backlog_and_refusals_by_reason():
    values = samples(metrics.render(icinga2_status()))
    p = "msg_nagios_bridge_"
    assert values[p + 'part_up{part="icinga2_events"}'] == 0          # the stream cannot connect
    assert values[p + 'part_up{part="icinga2_writer"}'] == 1
    assert values[p + "last_icinga2_events_event_timestamp_seconds"] == NOW - 3
    assert values[p + "last_icinga2_events_catch_up_timestamp_seconds"] == NOW - 100
    assert values[p + "last_icinga2_answer_timestamp_seconds"] == NOW - 5
    assert values[p + "last_inject_timestamp_seconds"] == NOW - 10
    assert values[p + "inbound_spool_depth"] == 12 and values[p + "inbound_spool_oldest_age_seconds"] == 30.5
    assert values[p + "inbound_spool_dead_letters"] == 5
    assert p + "spool_oldest_age_seconds" not in values                # the outbound spool is empty
    for counter, value in (("icinga2_events_events", 120), ("icinga2_events_catch_up_results", 7),
                           ("icinga2_events_connects", 2), ("icinga2_events_disconnects", 3),
                           ("icinga2_no_answer", 1), ("icinga2_resent", 3), ("icinga2_ignored", 2),
                           ("written", 45), ("injected", 40), ("refused", 5), ("refused_unknown_object", 4),
                           ("refused_too_big", 1)):
        assert values[f"{p}{counter}_total"] == value, counter


def test_every_icinga2_metric_the_docs_name_is_rendered():
    """docs/metrics.md names the Icinga 2 metrics as the renderer makes them."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    named = set(re.findall(r"`((?:icinga2_|last_icinga2_|refused_)[a-z0-9_]+_(?:total|timestamp_seconds))`", docs))
    parts = set(re.findall(r'`part_up\{part="(icinga2_[a-z]+)"\}`', docs))
    assert len(named) >= 10 and parts == {"icinga2_events", "icinga2_writer"}
    rendered = samples(metrics.render(icinga2_status()))
    for part in parts:
        assert f'msg_nagios_bridge_part_up{{part="{part}"}}' in rendered, part
    for name in named - {"refused_icinga_refused_total", "refused_unwritable_total"}:   # not in this snapshot
        assert "msg_nagios_bridge_" + name in rendered, name


def test_check_says_when_the_icinga2_event_stream_is_down():
    code, line = evaluate(icinga2_status(), Thresholds(), NOW)
    assert code == WARNING
    assert "Icinga 2 event stream down for 400 s (ConnectionRefusedError" in line
    assert "disconnected=400s" in line
    long_down = icinga2_status(since={"icinga2_events": NOW - 700})
    assert evaluate(long_down, Thresholds(), NOW)[0] == CRITICAL
    # A full spool holds the stream up: that is the backlog's threshold, not a disconnect.
    full = icinga2_status(states={"icinga2_events": "waiting: spool full: 100000 messages"})
    code, line = evaluate(full, Thresholds(), NOW)
    assert code == WARNING and "event stream" not in line               # the 5 dead letters warn
    connected = icinga2_status(states={"icinga2_events": "connected", "icinga2_writer": "writing"},
                               inbound_spool={"depth": 12, "bytes": 3000, "oldest_age": 30.5, "dead_letters": 0})
    assert evaluate(connected, Thresholds(), NOW)[0] == OK


def test_metrics_endpoint_bounds_its_clients_and_their_time(monkeypatch):
    """Any local user can connect to /metrics: idle connections are closed after a timeout,
    and beyond MAX_CLIENTS at once a connection is closed unanswered, not given a thread."""
    import urllib.request
    from tests.sandbox.ports import free_port
    monkeypatch.setattr(metrics, "REQUEST_TIMEOUT", 0.5, raising=False)
    monkeypatch.setattr(metrics, "MAX_CLIENTS", 4, raising=False)
    port = free_port()
    server = metrics.serve(f"127.0.0.1:{port}", lambda: "a 1\n")
    idle = []
    try:
        threads = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
        extra = socket.create_connection(("127.0.0.1", port), timeout=5)
        idle.append(extra)
        assert extra.recv(100) == b"", "a fifth client at once is closed at once"
        assert threading.active_count() <= threads + 4
        for sock in idle[:4]:
            assert sock.recv(100) == b"", "a client that sends nothing is closed after the timeout"
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert body == b"a 1\n", "the slots are free again"
    finally:
        for sock in idle:
            sock.close()
        server.shutdown()
        server.server_close()


def test_remote_text_in_a_state_is_escaped_for_status_and_check(tmp_path, capsys):
    """A broker's ERROR frame (often a Java stack trace; any byte, ESC too) becomes the
    publisher's state: `status` must not print an escape sequence to the operator's terminal,
    and `check` must stay one line with its perfdata."""
    from msg_nagios_bridge import config
    from msg_nagios_bridge.cli.main import main
    from msg_nagios_bridge.daemon import status as status_file
    from msg_nagios_bridge.daemon.health import Health
    from msg_nagios_bridge.paths import status_path
    import time
    remote = "disconnected: b1:61613: refused: \x1b]2;owned\x07\x1b[2J bad\n\tat org.apache.X"
    health = Health()
    health.set_state("publisher", remote)
    state = health.snapshot()["states"]["publisher"]
    assert state.startswith("disconnected: b1:61613: refused: ") and not any(c in state for c in "\x1b\x07\n\t")
    # A status file written before the state was escaped (or by hand) still holds the raw text.
    raw = status(states={"publisher": remote}, since={"publisher": NOW - 700})
    code, line = evaluate(raw, Thresholds(), NOW)
    assert code == CRITICAL and not any(c in line for c in "\x1b\x07\n\t")
    assert "for 700 s" in line.split("|")[0]
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(f"site: {{name: S}}\nbrokers: {{hosts: ['127.0.0.1:1']}}\nspool: {{directory: {tmp_path}}}\n")
    status_file.write(status_path(config.load(str(cfg))), Status.from_json(
        {**raw.to_json(), "time": time.time(), "errors": [[NOW, "broker said \x1b[2J"]]}))
    assert main(["status", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "refused: \\x1b]2;owned" in out and "broker said \\x1b[2J" in out and "\x1b" not in out


def test_check_gives_a_long_status_interval_time_before_calling_the_status_stale(tmp_path, capsys):
    """Regression: daemon.status_interval may be up to 60 s, but check called a status older
    than 30 s stale: a healthy bridge with a long interval was CRITICAL half of the time."""
    import time
    from msg_nagios_bridge import config
    from msg_nagios_bridge.cli.main import main
    from msg_nagios_bridge.daemon import status as status_file
    from msg_nagios_bridge.paths import status_path
    cfg = tmp_path / "bridge.yaml"
    base = f"site: {{name: S}}\nbrokers: {{hosts: ['127.0.0.1:1']}}\nspool: {{directory: {tmp_path}}}\n"
    written_45_s_ago = Status.from_json({**status().to_json(), "time": time.time() - 45})
    cfg.write_text(base + "daemon: {status_interval: 60}\n")
    status_file.write(status_path(config.load(str(cfg))), written_45_s_ago)
    assert main(["check", "-c", str(cfg)]) == OK, capsys.readouterr().out
    assert main(["check", "-c", str(cfg), "--stale", "40"]) == CRITICAL
    cfg.write_text(base)                                   # 2 s: 45 s without a status is stale
    assert main(["check", "-c", str(cfg)]) == CRITICAL
    assert "s old: the bridge is not running or hung" in capsys.readouterr().out


@pytest.mark.parametrize("written", ['{"time": NaN, "pid": 1}', '{"time": Infinity, "pid": 1}',
                                     '{"time": 1e400, "pid": 1}'])
def test_a_status_that_could_never_be_stale_is_not_read_as_fresh(tmp_path, written):
    """Regression: json reads NaN and Infinity, and a status time of either was never older
    than --stale: check said OK for ever, running bridge or not."""
    from msg_nagios_bridge.daemon import status as status_file
    path = tmp_path / "status.json"
    path.write_text(written)
    with pytest.raises(status_file.StatusError, match="time is .*, not a number"):
        status_file.read(str(path))


def test_a_status_dated_ahead_of_the_clock_is_critical():
    """A clock set back after the bridge last wrote: only a bridge that stopped writing leaves
    such a status for longer than --stale."""
    code, line = evaluate(status(time=NOW + 3600), Thresholds(), NOW)
    assert code == CRITICAL and "dated 3600 s ahead" in line
    assert evaluate(status(time=NOW + 5), Thresholds(), NOW)[0] == OK      # clocks of a few s


def test_the_foreground_pidfile_check_creates_nothing(tmp_path):
    """Regression: ``run --daemon`` checks the pidfile in the foreground, as root before the
    drop to daemon.user; that check created the file (root's, 0644), and the detached bridge,
    now daemon.user, could not open it and died where nobody saw it (stderr is /dev/null)."""
    path = tmp_path / "bridge.pid"
    PidFile(str(path)).check()
    assert not path.exists()
    with PidFile(str(path)):
        with pytest.raises(AlreadyRunning, match=str(os.getpid())):
            PidFile(str(path)).check()

