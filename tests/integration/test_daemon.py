"""The daemon as an administrator runs it: signals, reload, --daemon, status, check, tools, metrics."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.request

import pytest

from tests.integration.test_outbound import QUEUE, expected_ids, received_ids, result_lines, wait_for_ids
from tests.reliability import faults
from tests.sandbox.bridge import inbound_config
from tests.sandbox.procfs import rss_by_kind, thread_cpu
from tests.sandbox.nagios import host, passive_service, pipe_bytes
from tests.sandbox.ports import free_port, wait_until
from tests.sandbox.stomp_probe import publish

pytestmark = pytest.mark.integration


def cli(bridge, *args, timeout=30):
    return subprocess.run([sys.executable, "-m", "msg_nagios_bridge", *args, "-c", str(bridge.config_path)],
                          capture_output=True, text=True, timeout=timeout)


def perfdata_bridge(bridge_factory, broker, **options):
    return bridge_factory([broker.stomp_port], ocsp=False, perfdata=True, destination=QUEUE, **options)


def test_ready_notification_status_and_metrics(tmp_path, activemq, bridge_factory, monkeypatch):
    notify = tmp_path / "notify"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(notify))
    server.settimeout(20)
    metrics_port = free_port()
    bridge = perfdata_bridge(bridge_factory, activemq)
    bridge.config_path.write_text(bridge.config_path.read_text() +
                                  f"metrics: {{listen: '127.0.0.1:{metrics_port}', textfile: {tmp_path}/m.prom}}\n")
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify))
    try:
        bridge.start()
        assert server.recv(200).startswith(b"READY=1")
        (bridge.workdir / "service-perfdata").write_text("".join(result_lines(5)))
        bridge.wait_counter("published", 5)
        status = cli(bridge, "status")
        assert status.returncode == 0
        assert "publisher" in status.stdout and "connected to 127.0.0.1" in status.stdout
        assert "published 5" in status.stdout
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert "msg_nagios_bridge_published_total 5" in text
        assert (tmp_path / "m.prom").exists()
        # top -H tells the threads apart (Python 3.11 names none at the OS level).
        names = {name for name, _ in thread_cpu(bridge.pid).values()}
        assert {"publisher", "publisher-rx", "metrics"} <= names, names
        assert any(name.startswith("perfdata:") for name in names), names
        bridge.signal(signal.SIGTERM)
        assert bridge.proc.wait(20) == 0
        assert b"STOPPING=1" in server.recv(200)
    finally:
        server.close()


def test_after_reloads_every_thread_of_the_daemon_allocates_from_the_main_arena(activemq, bridge_factory):
    """Regression (soak, 2026-11-30): the site bridge's RSS crept up in glibc's per-thread
    arenas, more after each reload: new threads land on other arenas, each keeping what its
    threads freed. Every thread, old and new, must allocate from the main arena ([heap])."""
    bridge = perfdata_bridge(bridge_factory, activemq)
    bridge.start()
    lines = result_lines(600)
    for round_ in range(3):
        with open(bridge.workdir / "service-perfdata", "a") as handle:
            handle.write("".join(lines[round_ * 200:(round_ + 1) * 200]))
        assert bridge.wait_counter("published", (round_ + 1) * 200) >= (round_ + 1) * 200
        bridge.signal(signal.SIGHUP)
        assert bridge.wait_counter("reloads", round_ + 1) == round_ + 1
    memory = rss_by_kind(bridge.pid)
    assert memory["heap"] > 1, memory
    assert memory["thread_arenas"] == 0, f"resident MB by kind of mapping: {memory}"


def test_reload_with_a_good_and_a_bad_config(activemq, stomp_probe_factory, bridge_factory):
    first = stomp_probe_factory(activemq, QUEUE)
    second = stomp_probe_factory(activemq, "/queue/after.reload")
    bridge = perfdata_bridge(bridge_factory, activemq)
    bridge.start()
    path = bridge.workdir / "service-perfdata"
    before = result_lines(5, prefix="before")
    path.write_text("".join(before))
    assert set(wait_for_ids(first, expected_ids(before), 20)) == expected_ids(before)
    good = bridge.config_path.read_text().replace(QUEUE, "/queue/after.reload")
    bridge.config_path.write_text(good)
    bridge.signal(signal.SIGHUP)
    assert bridge.wait_counter("reloads", 1) == 1, bridge.log_text()[-2000:]
    after = result_lines(5, prefix="after")
    with open(path, "a") as handle:
        handle.write("".join(after))
    assert set(wait_for_ids(second, expected_ids(after), 20)) == expected_ids(after), bridge.log_text()[-2000:]
    bridge.config_path.write_text(good + "\nnot_a_key: 1\n")
    bridge.signal(signal.SIGHUP)
    assert wait_until(lambda: "reload refused, keeping the running configuration" in bridge.log_text())
    assert "not_a_key" in bridge.log_text()
    still = result_lines(5, prefix="still")
    with open(path, "a") as handle:
        handle.write("".join(still))
    assert set(wait_for_ids(second, expected_ids(still), 20)) >= expected_ids(still)
    assert bridge.proc.poll() is None
    # Regression (review): a TERM arriving with a HUP was cleared with it and ignored, until
    # the service manager's SIGKILL.
    bridge.signal(signal.SIGHUP)
    bridge.signal(signal.SIGTERM)
    assert bridge.proc.wait(30) == 0, bridge.log_text()[-2000:]


def test_term_while_results_flow_loses_nothing(activemq, stomp_probe_factory, bridge_factory):
    probe = stomp_probe_factory(activemq, QUEUE)
    bridge = perfdata_bridge(bridge_factory, activemq)
    bridge.start()
    lines = result_lines(3000)
    path = bridge.workdir / "service-perfdata"
    for start in range(0, 1500, 100):
        with open(path, "a") as handle:
            handle.write("".join(lines[start:start + 100]))
        time.sleep(0.01)
        if start == 200:
            probe.wait_for_count(100, timeout=20)     # results are flowing
    assert bridge.stop() == 0                       # TERM mid-stream: a clean exit
    with open(path, "a") as handle:
        handle.write("".join(lines[1500:]))
    bridge.start()
    got = wait_for_ids(probe, expected_ids(lines), 60)
    assert set(got) == expected_ids(lines)
    print(f"TERM mid-stream: sent {len(lines)}, delivered {len(set(got))}, duplicates {len(got) - len(set(got))}")


def test_daemon_mode_pidfile(tmp_path, activemq, bridge_factory):
    bridge = perfdata_bridge(bridge_factory, activemq)
    pidfile = tmp_path / "bridge.pid"
    log = tmp_path / "bridge-daemon.log"
    bridge.config_path.write_text(bridge.config_path.read_text().replace(
        "logging: {level: INFO}", f"logging: {{level: INFO, target: file, file: {log}}}").replace(
        "daemon: {", f"daemon: {{pidfile: {pidfile}, "))
    started = cli(bridge, "run", "--daemon", "--allow-root")
    assert started.returncode == 0, started.stderr
    pid = None
    try:
        deadline = time.time() + 10
        while not (pidfile.exists() and pidfile.read_text().strip()) and time.time() < deadline:
            time.sleep(0.1)
        pid = int(pidfile.read_text())
        assert os.getsid(pid) != os.getsid(0), "a detached daemon has left our session"
        second = cli(bridge, "run", "--daemon", "--allow-root")
        assert second.returncode == 1 and f"pid {pid}" in second.stderr
        deadline = time.time() + 10
        while "connected to broker" not in log.read_text() and time.time() < deadline:
            time.sleep(0.1)
        assert "connected to broker" in log.read_text()
    finally:
        # The daemon this test started, by its PID, whatever failed above.
        if pid is None and pidfile.exists() and pidfile.read_text().strip():
            pid = int(pidfile.read_text())
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 20
    while pidfile.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert not pidfile.exists(), "the pidfile is removed on exit"
    assert "bridge stopped" in log.read_text()


def check_until(bridge, code, timeout=30):
    """Run ``check --disconnected 2,4`` until it exits with ``code``; return the last run."""
    runs = []
    wait_until(lambda: runs.append(cli(bridge, "check", "--disconnected", "2,4")) or runs[-1].returncode == code,
               timeout, interval=0.5)
    return runs[-1]


def test_check_goes_critical_while_the_broker_is_down_and_recovers(activemq, bridge_factory):
    bridge = perfdata_bridge(bridge_factory, activemq)
    bridge.start()
    ok = check_until(bridge, 0)
    assert ok.returncode == 0 and ok.stdout.startswith("MSG-BRIDGE OK"), ok.stdout
    activemq.stop()
    down = check_until(bridge, 2)        # disconnected for over 4 s
    assert down.returncode == 2 and "MSG-BRIDGE CRITICAL - publisher" in down.stdout, down.stdout
    assert "|" in down.stdout and len(down.stdout.strip().splitlines()) == 1
    activemq.start()
    assert check_until(bridge, 0).returncode == 0
    bridge.stop()                                       # not running: its status goes stale
    assert wait_until(lambda: cli(bridge, "check", "--stale", "1").returncode == 2, timeout=10)


def test_send_and_the_dead_letter_tools(activemq, stomp_probe_factory, nagios_factory, bridge_factory):
    probe = stomp_probe_factory(activemq, QUEUE)
    nagios = nagios_factory(hosts=[host("ce01.remote.org")],
                            services=[passive_service("ce01.remote.org", "org.sam.CE-JobSubmit")])
    rules = "[{senders: ['trusted'], hosts: ['*'], services: ['*']}]"
    bridge = perfdata_bridge(bridge_factory, activemq, inbound=inbound_config(nagios, "/queue/in", rules=rules))
    bridge.start()
    sent = cli(bridge, "send", "--host", "h1", "--service", "by-hand", "--state", "1")
    assert sent.returncode == 0 and "1 message(s) confirmed by the broker" in sent.stdout, sent.stderr
    assert probe.wait_for_count(1, timeout=15)[0].headers["metric"] == "by-hand"
    # Outbound: an unreadable input line is a dead letter that cannot be requeued.
    (bridge.workdir / "service-perfdata").write_text("garbage\n")
    # Inbound: a sender the policy does not know.
    body = ("serviceURI: ce01.remote.org\nhostName: ce01.remote.org\nmetricStatus: CRITICAL\n"
            "metricName: org.sam.CE-JobSubmit\nsummaryData: late but fine\ntimestamp: "
            + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\nEOT\n")
    publish(activemq.stomp_address, "/queue/in", body, headers={"nagios_host": "stranger"})
    bridge.wait_counter("dead_letters", 2)
    listed = cli(bridge, "dead-letters", "list")
    assert "1 dead letter(s)" in listed.stdout and "unknown tag" in listed.stdout
    dead_id = listed.stdout.split()[0]
    assert "not requeued" in cli(bridge, "dead-letters", "requeue", dead_id).stdout
    assert "1 dead letter(s) deleted" in cli(bridge, "dead-letters", "purge", "--all").stdout
    inbound = cli(bridge, "dead-letters", "list", "--inbound")
    assert "sender-not-allowed" in inbound.stdout
    inbound_id = inbound.stdout.split()[0]
    assert "still refused" in cli(bridge, "dead-letters", "requeue", "--inbound", inbound_id).stdout
    shown = cli(bridge, "dead-letters", "show", "--inbound", inbound_id).stdout
    assert "late but fine" in shown and "stranger" in shown
    # The operator trusts the sender now: requeue puts the result through to Nagios.
    bridge.config_path.write_text(bridge.config_path.read_text().replace("['trusted']", "['trusted', 'stranger']"))
    assert f"{inbound_id}: requeued" in cli(bridge, "dead-letters", "requeue", "--inbound", inbound_id).stdout
    assert nagios.wait_for(lambda s: (s.get(("ce01.remote.org", "org.sam.CE-JobSubmit")) or {}).get(
        "plugin_output") == "late but fine" or None, timeout=20), bridge.log_text()[-2000:]


def test_stop_ends_within_its_budget_when_the_broker_and_nagios_both_hang(tmp_path, activemq, stomp_probe_factory,
                                                                         bridge_factory):
    """SIGTERM while the broker hangs (SIGSTOP) with receipts outstanding and Nagios's FIFO is
    full: a clean exit within the stop budget (20 s; systemd waits 30 s), and the next start
    delivers everything, both ways. (The budget itself: test_service.py.)"""
    fifo = tmp_path / "nagios.cmd"
    os.mkfifo(fifo)
    hung_nagios = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)    # holds the FIFO, reads nothing
    nagios = types.SimpleNamespace(command_file=fifo, check_result_path=tmp_path)
    probe = stomp_probe_factory(activemq, QUEUE)
    bridge = perfdata_bridge(bridge_factory, activemq, inbound=inbound_config(nagios, faults.QUEUE))
    bridge.start()
    inbound = [faults.inbound_message(i) for i in range(1500)]      # ((result id, body), service)
    publisher = faults.Publisher(activemq)
    publisher.send(item for item, _ in inbound)
    publisher.close()
    deadline = time.monotonic() + 60
    while pipe_bytes(hung_nagios) < 40_000 and time.monotonic() < deadline:   # Nagios's FIFO is full
        time.sleep(0.2)
    assert pipe_bytes(hung_nagios) >= 40_000, bridge.log_text()[-2000:]
    lines = result_lines(2000)
    with open(bridge.workdir / "service-perfdata", "a") as handle:
        handle.write("".join(lines[:1000]))
    probe.wait_for_count(100, timeout=20)
    activemq.pause()                                                          # the broker hangs
    with open(bridge.workdir / "service-perfdata", "a") as handle:
        handle.write("".join(lines[1000:]))
    time.sleep(1)
    started = time.monotonic()
    code = bridge.stop(timeout=60)
    took = time.monotonic() - started
    activemq.resume()
    assert code == 0 and took < 30, (code, took, bridge.log_text()[-3000:])    # TimeoutStopSec
    print(f"stop with a hung broker and a hung Nagios: {took:.1f} s")
    # Nothing was lost: the next start delivers the rest, both ways.
    read = []
    reader = threading.Thread(target=_read_fifo, args=(hung_nagios, read, 90), daemon=True)
    reader.start()
    bridge.start()
    assert set(wait_for_ids(probe, expected_ids(lines), 60)) == expected_ids(lines)
    want = {service for _, service in inbound}
    deadline = time.monotonic() + 60
    while not want <= _injected_services(read) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert want <= _injected_services(read), len(want - _injected_services(read))
    bridge.stop()
    reader.join(5)
    os.close(hung_nagios)


def _read_fifo(fd, into, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            data = os.read(fd, 65536)
            if data:
                into.append(data)
        except BlockingIOError:
            time.sleep(0.01)
        except OSError:
            return


def _injected_services(chunks):
    """The services of the PROCESS_SERVICE_CHECK_RESULT lines read (one per inbound result)."""
    return {line.split(";")[2] for line in b"".join(chunks).decode().splitlines() if ";" in line}
