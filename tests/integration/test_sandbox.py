"""The sandbox runs the real programs: ActiveMQ brokers, a network of brokers, and Nagios; and its
helpers that tests and benchmarks share (FIFO writers, /proc readers) do what they say."""
import math
import os
import statistics
import subprocess
import time
import uuid

import pytest
import stomp

from tests.sandbox.fifo import PIPE_BUF, pack
from tests.sandbox.nagios import active_service, passive_service
from tests.sandbox.ports import wait_until
from tests.sandbox.procfs import cpu_seconds, peak_rss_mb, rss_fds_threads, rss_mb
from tests.sandbox.stomp_probe import publish

pytestmark = pytest.mark.integration


def test_broker_delivers_persistent_message(activemq, stomp_probe_factory):
    print(f"\nbroker start-up: {activemq.started_in:.2f}s")
    queue = f"/queue/sandbox.{uuid.uuid4().hex}"
    probe = stomp_probe_factory(activemq, queue, ack="client-individual", auto_ack=True)
    publish(activemq.stomp_address, queue, "hello", {"site": "CERN-PROD"})
    [msg] = probe.wait_for_count(1)
    assert msg.body == "hello"
    assert msg.headers["site"] == "CERN-PROD"
    assert msg.headers["persistent"] == "true"
    assert probe.ids() == [msg.headers["message-id"]]


def test_network_forwards_topic_messages(activemq_factory, stomp_probe_factory):
    b = activemq_factory("B")
    t0 = time.monotonic()
    a = activemq_factory("A", network_to=[b.openwire_port])
    a.wait_bridges()
    bridge_s = time.monotonic() - t0
    topic = "/topic/grid.probe.metricOutput.EGEE.ngi.TEST"
    probe = stomp_probe_factory(b, topic)

    sender = stomp.Connection12([a.stomp_address])
    sender.connect(wait=True)
    try:
        # The subscriber's demand reaches A asynchronously: send until the first message crosses.
        t0 = time.monotonic()
        while not probe.messages:
            assert time.monotonic() < t0 + 15, "no topic message crossed the network"
            sender.send(topic, "warm-up")
            time.sleep(0.05)
        first_s = time.monotonic() - t0
        latencies = []
        for i in range(20):                      # warm-ups may still land: pick by seq
            probe.clear()
            t0 = time.monotonic()
            sender.send(topic, f"m{i}", headers={"seq": str(i)})
            msg = wait_until(lambda: next((m for m in probe.messages if m.headers.get("seq") == str(i)), None),
                             timeout=10, interval=0.01)
            assert msg, f"m{i} did not cross the network"
            latencies.append(msg.received_at - t0)
    finally:
        sender.disconnect()
    print(f"\nA started + bridge up: {bridge_s:.2f}s; subscribe -> first crossing: {first_s:.2f}s")
    print(f"A->B topic latency ms: min {min(latencies) * 1e3:.1f} "
          f"median {statistics.median(latencies) * 1e3:.1f} max {max(latencies) * 1e3:.1f}")


def test_broker_kill_restart_keeps_persistent_queue_message(activemq, stomp_probe_factory):
    queue = "/queue/sandbox.persist"
    publish(activemq.stomp_address, queue, "survivor", {"n": "1"})
    old_pid = activemq.pid
    activemq.kill()
    activemq.restart()
    assert activemq.pid != old_pid
    print(f"\nbroker restart after SIGKILL: {activemq.started_in:.2f}s")
    probe = stomp_probe_factory(activemq, queue, ack="client-individual", auto_ack=True)
    [msg] = probe.wait_for_count(1)
    assert (msg.body, msg.headers["n"]) == ("survivor", "1")


def test_nagios_active_and_passive_results(nagios_factory):
    nagios = nagios_factory(services=[
        active_service("web1", "http", state=2, output="down hard", interval=1),
        passive_service("web1", "remote-probe"),
    ])
    print(f"\nnagios start-up: {nagios.started_in * 1e3:.0f} ms")
    act = nagios.wait_for(lambda st: st[("web1", "http")]["has_been_checked"] == "1"
                          and st[("web1", "http")], timeout=15)
    assert act["current_state"] == "2"
    assert act["plugin_output"] == "CRITICAL: down hard"

    assert nagios.status()[("web1", "remote-probe")]["has_been_checked"] == "0"
    nagios.send_command("PROCESS_SERVICE_CHECK_RESULT;web1;remote-probe;1;disk 91% full|used=91")
    pas = nagios.wait_for(lambda st: st[("web1", "remote-probe")]["has_been_checked"] == "1"
                          and st[("web1", "remote-probe")], timeout=10)
    assert pas["current_state"] == "1"
    assert pas["plugin_output"] == "disk 91% full"
    assert pas["performance_data"] == "used=91"
    assert pas["check_type"] == "1"  # passive
    assert ("web1", None) in nagios.status()


def test_fifo_writes_pack_whole_lines_under_pipe_buf():
    lines = [b"x" * n + b"\n" for n in (10, 4000, 90, 5000, 1, 4095)]
    chunks = pack(lines)
    assert b"".join(chunks) == b"".join(lines)
    assert all(chunk.endswith(b"\n") for chunk in chunks)
    # Only a line that is longer by itself may exceed PIPE_BUF, and then alone.
    assert all(len(chunk) <= PIPE_BUF or chunk.count(b"\n") == 1 for chunk in chunks)
    assert [len(c) for c in chunks] == [4012, 91, 5001, 2, 4096]


def test_procfs_readers_see_a_live_process_and_nan_for_a_gone_one():
    assert 1 < rss_mb() <= peak_rss_mb() < 10_000
    rss, fds, threads = rss_fds_threads(os.getpid())
    assert rss > 1 and fds >= 3 and threads >= 1
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert math.isnan(rss_mb(gone.pid)) and math.isnan(peak_rss_mb(gone.pid))
    assert cpu_seconds(gone.pid) == 0.0 and cpu_seconds(os.getpid()) > 0
