"""The sandbox runs the real programs: ActiveMQ brokers, a network of brokers, and Nagios."""
import statistics
import time
import uuid

import pytest
import stomp

from tests.sandbox.nagios import active_service, passive_service
from tests.sandbox.ports import wait_until
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
