"""Outbound, end to end with the real programs: Nagios 4 -> bridge -> ActiveMQ -> an independent subscriber."""
import calendar
import os
import subprocess
import sys
import threading
import time

import pytest

from msg_nagios_bridge import config
from msg_nagios_bridge.cores.nagios import ocsp_record, result_line
from msg_nagios_bridge.formats import wlcg
from msg_nagios_bridge.model import CheckResult
from msg_nagios_bridge.cores.nagios.wiring import main_config_lines, object_definitions
from tests.sandbox.bridge import bridge_config
from tests.sandbox.nagios import active_service, host, passive_service
from tests.sandbox.ports import free_port, wait_until

pytestmark = pytest.mark.integration

TOPIC = "/topic/grid.probe.metricOutput.EGEE.site.TEST_SITE"
QUEUE = "/queue/test.results"


def nagios_wiring(bridge):
    """The nagios.cfg lines and command objects that `nagios-config` prints for this bridge."""
    settings = config.load(str(bridge.config_path))
    extra = dict(line.split("=", 1) for line in main_config_lines(settings).splitlines())
    return extra, object_definitions(settings)


def result_lines(count, prefix="svc"):
    """`count` distinct service result lines, as Nagios would write them."""
    now = int(time.time())
    return [result_line.format_line(CheckResult(
        host="wn%03d.example.org" % (i % 100), service=f"{prefix}-{i}", state=i % 4,
        output=f"result {i}", timestamp=now, perfdata=f"value={i}")) + "\n" for i in range(count)]


def framed(bridge, lines):
    """``lines`` as the OCSP command writes them into the bridge's FIFO (formats/ocsp_record.py)."""
    token = open(ocsp_record.token_path(str(bridge.workdir / "ocsp.fifo"))).read().strip()
    return [ocsp_record.frame(line.rstrip("\n").encode(), token, pid).decode() for pid, line in enumerate(lines, 2)]


def expected_ids(lines):
    return {result_line.parse(line.rstrip("\n")).identity() for line in lines}


def dead_letter_as_results_keep_coming(bridge, refused, timeout=60):
    """Append a result a line at a time to the bridge's perfdata file until ``refused``
    messages are dead letters, as a site's results keep coming: a message the broker refuses
    is dead-lettered once the broker has taken another after its first refusal (proof that it
    does not refuse everything, outbound/refusals.py), so a batch's last one waits for the next
    result. Returns the dead letters counted and how many results were added."""
    added = 0
    deadline = time.time() + timeout
    while bridge.counter("dead_letters") < refused and time.time() < deadline and added < 60:
        with open(bridge.workdir / "service-perfdata", "a") as handle:
            handle.write(result_lines(1, prefix=f"later{added}")[0])
        added += 1
        time.sleep(0.5)
    return bridge.wait_counter("dead_letters", refused, timeout=max(1.0, deadline - time.time())), added


def received_ids(probe):
    return [m.headers["result_id"] for m in probe.messages]


def wait_for_ids(probe, expected, timeout):
    """Wait until every expected result id arrived (counting is not enough: duplicates are allowed).
    Returns the ids received, duplicates included."""
    deadline = time.time() + timeout
    while not expected <= set(received_ids(probe)) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)   # let late duplicates arrive before anyone counts them
    return received_ids(probe)


def append_slowly(path, lines, per_batch=50, pause=0.01):
    """Append lines in batches as the Nagios core would (a thread; returns it)."""
    def run():
        for start in range(0, len(lines), per_batch):
            with open(path, "a") as handle:
                handle.write("".join(lines[start:start + per_batch]))
            time.sleep(pause)
    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("source", ["ocsp_pipe", "perfdata"])
def test_a_real_nagios_result_arrives_with_the_right_body_and_headers(
        source, tmp_path, activemq, nagios_factory, stomp_probe_factory, bridge_factory):
    probe = stomp_probe_factory(activemq, TOPIC)
    bridge = bridge_factory([activemq.stomp_port],
                                          ocsp=source == "ocsp_pipe", perfdata=source == "perfdata")
    bridge.start(wait_for=bridge.workdir / "ocsp.fifo" if source == "ocsp_pipe" else None)
    extra, objects = nagios_wiring(bridge)
    nagios_factory(hosts=[host("ce01.example.org")], extra_cfg=extra, objects=objects, services=[
        active_service("ce01.example.org", "org.sam.CE-JobSubmit", state=2, output="job failed",
                       max_check_attempts=1, _MSG_FLAVOUR="CREAM-CE")])
    metrics = lambda: {m.headers["metric"] for m in probe.messages}
    assert wait_until(lambda: {"org.sam.CE-JobSubmit", "HOST"} <= metrics(), timeout=20), bridge.log_text()
    by_metric = {m.headers["metric"]: m for m in probe.messages}
    message = by_metric["org.sam.CE-JobSubmit"]
    headers = message.headers
    assert headers["persistent"] == "true"
    assert (headers["site"], headers["role"], headers["nagios_host"]) == ("TEST.SITE", "site", "test-nagios.example.org")
    assert (headers["host"], headers["status"], headers["state_type"]) == ("ce01.example.org", "CRITICAL", "HARD")
    assert len(headers["result_id"]) == 32 and headers["check_time"].isdigit()
    record = wlcg.decode(message.body)
    assert record["metricStatus"] == "CRITICAL"
    assert record["summaryData"] == "CRITICAL: job failed"
    assert record["hostName"] == record["serviceURI"] == "ce01.example.org"
    assert record["serviceFlavour"] == "CREAM-CE"
    assert record["siteName"] == "TEST.SITE" and record["gatheredAt"] == "test-nagios.example.org"
    assert abs(calendar.timegm(time.strptime(record["timestamp"], wlcg.TIME_FORMAT)) - time.time()) < 60
    assert by_metric["HOST"].headers["status"] == "OK"   # the host check, host_checks: true


def test_hostile_plugin_output_cannot_reach_the_ocsp_shell(tmp_path, activemq, nagios_factory,
                                                           stomp_probe_factory, bridge_factory):
    canary = tmp_path / "pwned"
    plugin = tmp_path / "hostile.sh"
    plugin.write_text("#!/bin/sh\n"
                      f"printf '%s\\n' \"OK ' ; touch {canary} ; ' \\$(touch {canary}) \\`touch {canary}\\` "
                      f"| x=1\" 'long;line' \"\\\\n $(printf '\\t')tab\"\nexit 0\n")
    plugin.chmod(0o755)
    probe = stomp_probe_factory(activemq, TOPIC)
    bridge = bridge_factory([activemq.stomp_port])
    bridge.start(wait_for=bridge.workdir / "ocsp.fifo")
    extra, objects = nagios_wiring(bridge)
    objects += f"\ndefine command {{\n    command_name hostile\n    command_line {plugin}\n}}\n"
    nagios_factory(hosts=[host("h1")], extra_cfg=extra, objects=objects, services=[
        {**active_service("h1", "evil", max_check_attempts=1), "check_command": "hostile"}])
    assert probe.wait_for_count(2, timeout=20), bridge.log_text()
    time.sleep(1)
    assert not canary.exists(), "plugin output was executed by the OCSP command's shell"
    evil = next(m for m in probe.messages if m.headers["metric"] == "evil")
    # Nagios stripped the illegal characters (' ` $ | ...) before the shell saw them.
    assert "touch" in wlcg.decode(evil.body)["summaryData"]


def test_an_ocsp_writer_waiting_while_the_bridge_restarts_is_delivered(tmp_path, activemq,
                                                                       stomp_probe_factory, bridge_factory):
    probe = stomp_probe_factory(activemq, QUEUE)
    bridge = bridge_factory([activemq.stomp_port], destination=QUEUE)
    fifo = bridge.workdir / "ocsp.fifo"
    bridge.start(wait_for=fifo)
    assert bridge.stop() == 0
    assert fifo.exists(), "the FIFO must stay so Nagios's writers wait instead of creating a file"
    lines = result_lines(3)
    writers = [subprocess.Popen(["sh", "-c", f"printf '%s' '{record}' > {fifo}"]) for record in framed(bridge, lines)]
    time.sleep(0.5)
    assert all(w.poll() is None for w in writers), "writers should be waiting for a reader"
    bridge.start(wait_for=fifo)
    assert all(w.wait(10) == 0 for w in writers)
    assert set(wait_for_ids(probe, expected_ids(lines), timeout=15)) == expected_ids(lines), bridge.log_text()


def test_partial_and_garbage_lines_on_the_pipe(tmp_path, activemq, stomp_probe_factory, bridge_factory):
    probe = stomp_probe_factory(activemq, QUEUE)
    bridge = bridge_factory([activemq.stomp_port], destination=QUEUE)
    fifo = bridge.workdir / "ocsp.fifo"
    bridge.start(wait_for=fifo)
    good = result_lines(2)
    records = framed(bridge, good)
    fd = os.open(fifo, os.O_WRONLY)
    os.write(fd, records[0][:10].encode())          # a line in two writes
    time.sleep(0.3)
    os.write(fd, records[0][10:].encode() + b"this is not a result\n\xff\xfe\n" + records[1].encode())
    os.close(fd)
    assert set(wait_for_ids(probe, expected_ids(good), timeout=15)) == expected_ids(good), bridge.log_text()
    deadline = time.time() + 10
    while bridge.status().get("counters", {}).get("dead_letters", 0) < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert bridge.status()["counters"]["dead_letters"] == 2


def test_network_of_brokers_failover_mid_stream_loses_nothing(tmp_path, activemq_factory,
                                                              stomp_probe_factory, bridge_factory):
    # b1 forwards to b2 (network of brokers); the subscriber is on b2; the bridge prefers b1.
    b2 = activemq_factory("b2")
    b1 = activemq_factory("b1", network_to=[b2.openwire_port])
    b1.wait_bridges()
    probe = stomp_probe_factory(b2, QUEUE)
    bridge = bridge_factory([b1.stomp_port, b2.stomp_port], ocsp=False, perfdata=True, destination=QUEUE)
    bridge.start()
    lines = result_lines(3000)
    writer = append_slowly(bridge.workdir / "service-perfdata", lines)
    probe.wait_for_count(300, timeout=30)
    b1.kill()                      # the broker the bridge is connected to, mid-stream
    writer.join()
    # What b1 had confirmed but not yet forwarded waits in its store: bring it back.
    time.sleep(2)
    b1.start()
    expected = expected_ids(lines)
    got = wait_for_ids(probe, expected, timeout=60)
    assert set(got) == expected, (len(expected - set(got)), bridge.log_text()[-3000:])
    print(f"failover: sent {len(lines)}, delivered {len(set(got))}, duplicates {len(got) - len(set(got))}")


def test_kill_9_of_the_bridge_mid_stream_loses_nothing_from_perfdata(tmp_path, activemq,
                                                                     stomp_probe_factory, bridge_factory):
    probe = stomp_probe_factory(activemq, QUEUE)
    bridge = bridge_factory([activemq.stomp_port], ocsp=False,
                                          perfdata=True, destination=QUEUE)
    bridge.start()
    lines = result_lines(4000)
    writer = append_slowly(bridge.workdir / "service-perfdata", lines)
    probe.wait_for_count(500, timeout=30)
    bridge.kill()
    time.sleep(0.5)
    bridge.start()
    writer.join()
    expected = expected_ids(lines)
    got = wait_for_ids(probe, expected, timeout=60)
    assert set(got) == expected, (len(expected - set(got)), bridge.log_text()[-3000:])
    print(f"kill -9: sent {len(lines)}, delivered {len(set(got))}, duplicates {len(got) - len(set(got))}")


def test_a_result_over_the_brokers_frame_limit_is_dead_lettered_and_the_rest_delivered(
        activemq_factory, stomp_probe_factory, bridge_factory):
    """Regression (a known limit until 2026-11-30): ActiveMQ answers a frame over its size
    limit with an ERROR that names no message, and closes the connection. The bridge sent that
    message first after every reconnect, and outbound stalled on it for ever."""
    port = free_port()
    broker = activemq_factory("small", extra_connectors=f'      <transportConnector name="small" '
                              f'uri="stomp://127.0.0.1:{port}?wireFormat.maxFrameSize=50000"/>\n')
    probe = stomp_probe_factory(broker, QUEUE)
    bridge = bridge_factory([port], ocsp=False, perfdata=True, destination=QUEUE, max_refusals=2)
    bridge.start()
    lines = result_lines(2000)           # a backlog: sends go on after the broker has closed
    huge = CheckResult(host="wn000.example.org", service="huge", state=0, output="x" * 80_000,
                       timestamp=int(time.time()))
    (bridge.workdir / "service-perfdata").write_text(
        "".join(lines[:100]) + result_line.format_line(huge) + "\n" + "".join(lines[100:]))
    assert set(wait_for_ids(probe, expected_ids(lines), 60)) == expected_ids(lines), bridge.log_text()[-3000:]
    assert bridge.wait_counter("dead_letters", 1, timeout=30) == 1, bridge.log_text()[-3000:]
    listed = subprocess.run([sys.executable, "-m", "msg_nagios_bridge", "dead-letters", "list",
                             "-c", str(bridge.config_path)], capture_output=True, text=True, timeout=30).stdout
    assert "1 dead letter(s)" in listed and "maximum frame size" in listed, listed
    assert "huge" not in {m.headers["metric"] for m in probe.messages}


def test_a_broker_down_for_a_while_gets_everything_spooled(tmp_path, activemq, stomp_probe_factory,
                                                           bridge_factory):
    bridge = bridge_factory([activemq.stomp_port], ocsp=False,
                                          perfdata=True, destination=QUEUE)
    activemq.stop()
    bridge.start()
    lines = result_lines(1000)
    (bridge.workdir / "service-perfdata").write_text("".join(lines))
    deadline = time.time() + 20
    while bridge.status().get("spool", {}).get("depth", 0) < len(lines) and time.time() < deadline:
        time.sleep(0.2)
    status = bridge.status()
    assert status["spool"]["depth"] == len(lines), status
    assert not status["states"]["publisher"].startswith("connected"), status
    time.sleep(3)                  # several reconnect rounds; the bridge must not give up
    activemq.start()
    probe = stomp_probe_factory(activemq, QUEUE)
    expected = expected_ids(lines)
    got = wait_for_ids(probe, expected, timeout=60)
    assert set(got) == expected, (len(expected - set(got)), bridge.log_text()[-3000:])
    assert len(got) == len(expected), "a broker that was simply down should cause no duplicates"


def test_perfdata_rotation_by_the_nagios_processing_command_loses_nothing(
        tmp_path, activemq, nagios_factory, stomp_probe_factory, bridge_factory):
    from tests.sandbox.fifo import printf_command
    probe = stomp_probe_factory(activemq, QUEUE)
    bridge = bridge_factory([activemq.stomp_port], ocsp=False, perfdata=True, destination=QUEUE)
    config_text = bridge.config_path.read_text().replace("rotate_interval: 0", "rotate_interval: 2")
    bridge.config_path.write_text(config_text)
    bridge.start()
    extra, objects = nagios_wiring(bridge)
    # Ground truth, independent of the bridge: an OCSP command appending every result to a file.
    truth = tmp_path / "truth.log"
    objects += ("\ndefine command {\n    command_name truth\n    command_line "
                + printf_command(result_line.SERVICE_TAG, result_line.SERVICE_MACROS, str(truth))
                + "\n}\n")
    extra.update(obsess_over_services="1", ocsp_command="truth")
    services = [active_service("h1", f"svc{i}", state=i % 4, output=f"out {i}") for i in range(10)]
    nagios = nagios_factory(hosts=[host("h1")], extra_cfg=extra, objects=objects, services=services)
    time.sleep(7)                      # three or more rotations at 2 s
    nagios.stop()
    assert (bridge.workdir / "service-perfdata.old").exists(), "Nagios never rotated the file"
    expected = {result_line.parse(line).identity() for line in truth.read_text().splitlines()
                if line.startswith(result_line.SERVICE_TAG)}
    assert len(expected) >= 40
    got = wait_for_ids(probe, expected, timeout=20)
    assert not expected - set(got), f"{len(expected - set(got))} results lost"
    # Results checked while Nagios shut down reach the perfdata file but their OCSP may never run.
    assert len(set(got) - expected) <= 3
    assert len(got) == len(set(got)), "rotation must not make the bridge read a line twice"


@pytest.mark.parametrize("source", ["ocsp_pipe", "perfdata"])
def test_each_result_carries_the_time_of_its_own_check(
        source, tmp_path, activemq, nagios_factory, stomp_probe_factory, bridge_factory):
    """Two checks of one service, alike in state and output, are two results stamped with the
    check's time, not the moment Nagios wrote them. Stamped with $TIMET$, which Nagios expands
    anew for each line, two such checks written within one second were one identity (the spool
    kept one), and the OCSP line and the perfdata line of one check could differ by a second."""
    probe = stomp_probe_factory(activemq, QUEUE)
    bridge = bridge_factory([activemq.stomp_port], ocsp=source == "ocsp_pipe",
                            perfdata=source == "perfdata", destination=QUEUE)
    bridge.start(wait_for=bridge.workdir / "ocsp.fifo" if source == "ocsp_pipe" else None)
    extra, objects = nagios_wiring(bridge)
    extra["obsess_over_hosts"] = "0"
    nagios = nagios_factory(hosts=[host("h1", active_checks_enabled=0)], extra_cfg=extra, objects=objects,
                            services=[passive_service("h1", "remote")])
    checked = [int(time.time()) - 300, int(time.time()) - 200]
    for when in checked:
        nagios.send_command("PROCESS_SERVICE_CHECK_RESULT;h1;remote;1;disk 91% full", timestamp=when)
    stamps = lambda: sorted(int(m.headers["check_time"]) for m in probe.messages
                            if m.headers.get("metric") == "remote")
    assert wait_until(lambda: len(stamps()) >= 2, timeout=20), (stamps(), bridge.log_text()[-2000:])
    time.sleep(0.5)   # a third message, if any, would be a duplicate
    assert stamps() == checked


def test_a_hung_broker_is_noticed_by_heartbeats_and_the_bridge_fails_over(
        tmp_path, activemq_factory, stomp_probe_factory, bridge_factory):
    b1 = activemq_factory("b1")
    b2 = activemq_factory("b2")
    probe1 = stomp_probe_factory(b1, QUEUE)
    probe2 = stomp_probe_factory(b2, QUEUE)
    bridge = bridge_factory([b1.stomp_port, b2.stomp_port], ocsp=False, perfdata=True,
                            destination=QUEUE, heartbeat_ms=1000)
    bridge.start()
    first = result_lines(10, prefix="before")
    bridge_file = bridge.workdir / "service-perfdata"
    bridge_file.write_text("".join(first))
    assert set(wait_for_ids(probe1, expected_ids(first), timeout=15)) == expected_ids(first)
    b1.pause()                          # SIGSTOP: the socket stays open, nothing answers
    try:
        started = time.time()
        later = result_lines(10, prefix="after")
        with open(bridge_file, "a") as handle:
            handle.write("".join(later))
        got = wait_for_ids(probe2, expected_ids(later), timeout=30)
        assert expected_ids(later) <= set(got), bridge.log_text()[-2000:]
        print(f"hung broker: failed over and delivered in {time.time() - started:.1f} s")
    finally:
        b1.resume()


AUTHORIZATION = """
<plugins>
  <simpleAuthenticationPlugin>
    <users>
      <authenticationUser username="site" password="site-pw" groups="sites"/>
      <authenticationUser username="admin" password="admin-pw" groups="admins"/>
    </users>
  </simpleAuthenticationPlugin>
  <authorizationPlugin>
    <map>
      <authorizationMap>
        <authorizationEntries>
          <authorizationEntry queue="allowed.>" read="admins" write="sites" admin="admins,sites"/>
          <authorizationEntry queue="forbidden.>" read="admins" write="admins" admin="admins,sites"/>
          <authorizationEntry topic="ActiveMQ.Advisory.>" read="admins,sites" write="admins,sites"
                              admin="admins,sites"/>
        </authorizationEntries>
      </authorizationMap>
    </map>
  </authorizationPlugin>
</plugins>
"""


def test_a_destination_the_broker_refuses_ends_in_dead_letters_without_a_retry_storm(
        tmp_path, activemq_factory, stomp_probe_factory, bridge_factory):
    broker = activemq_factory("auth", extra_xml=AUTHORIZATION, login=("admin", "admin-pw"))
    allowed = stomp_probe_factory(broker, "/queue/allowed.results", login=("admin", "admin-pw"))
    refused_route = '  - {name: refused, destination: "/queue/forbidden.results", hard_only: false}\n'
    bridge = bridge_factory([broker.stomp_port], ocsp=False, perfdata=True, destination="/queue/allowed.results",
                            extra_routes=refused_route, username="site", password="site-pw", max_refusals=3)
    bridge.start()
    lines = result_lines(300)
    (bridge.workdir / "service-perfdata").write_text("".join(lines))
    got = wait_for_ids(allowed, expected_ids(lines), timeout=60)
    assert set(got) == expected_ids(lines), bridge.log_text()[-3000:]
    dead, added = dead_letter_as_results_keep_coming(bridge, len(lines))
    assert dead >= len(lines), bridge.log_text()[-3000:]
    errors = bridge.counter("broker_errors")
    refused = len(lines) + added
    assert errors <= 3 * refused + 30, f"{errors} broker errors for at most {refused} refused messages"
    assert "moved to dead letters" in bridge.log_text() and "not authorized" in bridge.log_text().lower()
