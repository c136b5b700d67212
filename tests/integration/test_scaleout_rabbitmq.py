"""RabbitMQ's equivalent of several central bridges on one ActiveMQ queue (docs/scaling.md): a
consistent-hash exchange (plugin rabbitmq_consistent_hash_exchange) that hashes the
``JMSXGroupID`` header the site bridges send onto one durable queue per central bridge. Every
object goes to one queue, so to one bridge, in order; a killed bridge's share waits in its queue
until it is back. Real RabbitMQ 3.10 (tests/sandbox/rabbitmq.py) and Nagios 4.
"""
import json
import time

import pytest

from tests.sandbox import rabbitmq as rabbitmq_mod
from tests.sandbox import scaleout
from tests.sandbox.bridge import Bridge, bridge_config, inbound_config

HOSTS, SERVICES = 5, 10
EXCHANGE = "grid.results.hash"


def definitions(bridges):
    """The exchange, one durable queue per bridge bound with weight 10, as a definitions file
    (STOMP cannot declare an exchange with arguments)."""
    queues = [f"central-{i}" for i in range(bridges)]
    return {
        "exchanges": [{"name": EXCHANGE, "vhost": "/", "type": "x-consistent-hash", "durable": True,
                       "auto_delete": False, "internal": False, "arguments": {"hash-header": "JMSXGroupID"}}],
        "queues": [{"name": q, "vhost": "/", "durable": True, "auto_delete": False, "arguments": {}}
                   for q in queues],
        "bindings": [{"source": EXCHANGE, "vhost": "/", "destination": q, "destination_type": "queue",
                      "routing_key": "10", "arguments": {}} for q in queues],
    }


class HashingRabbitMQ(rabbitmq_mod.RabbitMQ):
    """The sandbox node with the consistent-hash exchange plugin too."""

    def write_config(self):
        super().write_config()
        (self.dir / "enabled_plugins").write_text("[rabbitmq_stomp,rabbitmq_consistent_hash_exchange].\n")


@pytest.fixture
def rabbit(tmp_path):
    try:
        rabbitmq_mod.check_installed()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    defs = tmp_path / "definitions.json"
    defs.write_text(json.dumps(definitions(2)))
    node = HashingRabbitMQ(tmp_path / "rabbitmq")
    node.start()
    # Imported into the running node (a file loaded at boot replaces the default vhost and user).
    node.ctl("import_definitions", str(defs))
    yield node
    node.stop()


@pytest.fixture
def nagios(tmp_path):
    core = scaleout.central_nagios(tmp_path / "nagios", HOSTS, SERVICES)
    core.start()
    yield core
    core.stop()


def central(tmp_path, rabbit, nagios, index):
    workdir = tmp_path / f"central{index}"
    inbound = (inbound_config(nagios, f"/amq/queue/central-{index}") + f"  client_id: central-{index}\n"
               "  loss_accounting: false\n"
               f"  shared_newest_file: {nagios.dir / 'central-newest.sqlite'}\n")
    return Bridge(workdir, bridge_config(workdir, [rabbit.stomp_port], ocsp=False, inbound=inbound,
                                         site="CENTRAL", heartbeat_ms=1000, kind="rabbitmq"))


def drain(applied, stream, timeout=40.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        applied.poll()
        if applied.verdict(stream)["missing"] == 0:
            return
        time.sleep(0.1)


def test_a_consistent_hash_exchange_keeps_each_object_on_one_bridge_and_in_order(tmp_path, rabbit, nagios):
    bridges = [central(tmp_path, rabbit, nagios, i).start() for i in range(2)]
    try:
        for bridge in bridges:
            assert "subscribed" in bridge.wait_state("subscriber", "subscribed", timeout=30), bridge.log_text()[-2000:]
        stream = scaleout.Stream("rmqhash", HOSTS, SERVICES, rounds=8)         # 400 results
        applied = scaleout.Applied(nagios.log_file, stream.tag)
        destination = f"/exchange/{EXCHANGE}/results"
        third = len(stream) // 3
        stream.publish(rabbit, 0, third, destination=destination)
        # A bridge killed: its queue keeps its share (no take-over on RabbitMQ) until it is back.
        bridges[0].kill()
        stream.publish(rabbit, third, 2 * third, rate=200, destination=destination)
        bridges[0].start()
        stream.publish(rabbit, 2 * third, len(stream), rate=200, destination=destination)
        drain(applied, stream)
        verdict = applied.verdict(stream)
        stale = sum(b.counter("stale") for b in bridges)
        # Lost 0: never applied only if the restarted bridge dropped it as superseded.
        assert verdict["unsuperseded"] == 0 and verdict["missing"] <= stale, (verdict, stale)
        assert verdict["out_of_order"] == 0, verdict
        assert scaleout.wait_newest_shown(nagios, stream, 10) == len(stream.objects)
        received = [b.wait_counter("received", 1, timeout=10) for b in bridges]
        assert all(received), received           # both queues had a share
        print(f"rabbitmq hash: {verdict}, received per bridge (since its start) {received}, stale {stale}")
    finally:
        for bridge in bridges:
            bridge.stop()
