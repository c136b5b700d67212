"""The self-check plugin and the metrics, from status snapshots."""
import os
import socket
import threading

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
    pinger = threading.Thread(target=lambda: sent.extend(sdnotify.notify("WATCHDOG=1") for _ in range(200)),
                              daemon=True)
    try:
        pinger.start()
        pinger.join(60)
        assert not pinger.is_alive(), "notify blocked on a full queue"
        assert sent.count(True) >= 1 and sent.count(False) >= 1, sent.count(True)
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
