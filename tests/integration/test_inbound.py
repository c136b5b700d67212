"""Inbound, end to end with the real programs: STOMP publisher -> ActiveMQ -> bridge -> Nagios 4 (status.dat)."""
import re
import time

import pytest

from msg_nagios_bridge import config
from msg_nagios_bridge.formats import json as json_format
from msg_nagios_bridge.formats import wlcg
from msg_nagios_bridge.model import CheckResult
from msg_nagios_bridge.cores.nagios.wiring import main_config_lines, object_definitions
from tests.sandbox.bridge import inbound_config
from tests.sandbox.nagios import active_service, host, passive_service
from tests.sandbox.ports import wait_until
from tests.sandbox.stomp_probe import publish

pytestmark = pytest.mark.integration

TOPIC = "/topic/grid.probe.metricOutput.EGEE.site.REMOTE"
QUEUE = "/queue/inbound.test"
FIELDS = {"siteName": "REMOTE", "gatheredAt": "remote-nagios", "role": "site"}
HEADERS = {"nagios_host": "remote-nagios", "persistent": "true"}


def remote_result(service, state=2, output="remote says no", **changes):
    values = dict(host="ce01.remote.org", service=service, state=state, output=output,
                  long_output="detail 1\ndetail 2", perfdata="t=1s", timestamp=int(time.time()) - 30)
    values.update(changes)
    return CheckResult(**values)


def send(broker, result, destination=QUEUE, fmt="wlcg", headers=None):
    encode = wlcg.encode if fmt == "wlcg" else json_format.encode
    all_headers = {**HEADERS, "result_id": result.identity(), **(headers or {})}
    publish(broker.stomp_address, destination, encode(result, FIELDS), headers=all_headers)


def landed(nagios, result, timeout=20):
    """Wait until status.dat shows ``result`` on its service; return the status entry."""
    key = (result.host, result.service)

    def shows(status):
        entry = status.get(key)
        return entry if entry and entry.get("plugin_output") == result.output and \
            entry.get("current_state") == str(result.state) else None
    return nagios.wait_for(shows, timeout=timeout)


def central_nagios(nagios_factory, services=("org.sam.CE-JobSubmit", "org.sam.SRM-Put"), **kwargs):
    return nagios_factory(hosts=[host("ce01.remote.org")],
                          services=[passive_service("ce01.remote.org", s) for s in services], **kwargs)


@pytest.mark.parametrize("writer", ["command_file", "checkresults_dir"])
@pytest.mark.parametrize("fmt", ["wlcg", "json"])
def test_a_published_result_lands_in_nagios(writer, fmt, activemq, nagios_factory, bridge_factory):
    nagios = central_nagios(nagios_factory)
    bridge = bridge_factory([activemq.stomp_port], ocsp=False,
                            inbound=inbound_config(nagios, QUEUE, writer=writer))
    bridge.start()
    result = remote_result("org.sam.CE-JobSubmit")
    send(activemq, result, fmt=fmt)
    entry = landed(nagios, result)
    assert entry, (nagios.status().get(("ce01.remote.org", "org.sam.CE-JobSubmit")), bridge.log_text()[-2000:])
    assert entry["long_plugin_output"].replace("\\n", "\n") == "detail 1\ndetail 2"
    assert entry["performance_data"] == "t=1s"
    assert int(entry["last_check"]) == int(result.timestamp)    # the message's own time is kept


def test_big_output_goes_whole_through_the_check_results_directory(activemq, nagios_factory, bridge_factory):
    nagios = central_nagios(nagios_factory)
    bridge = bridge_factory([activemq.stomp_port], ocsp=False,
                            inbound=inbound_config(nagios, QUEUE, mapping="mapping: {max_output_bytes: 65536}"))
    bridge.start()
    long_output = "\n".join(f"line {i} " + "x" * 60 for i in range(300))     # ~20 KB: over PIPE_BUF
    result = remote_result("org.sam.SRM-Put", long_output=long_output)
    send(activemq, result)
    entry = landed(nagios, result)
    assert entry, bridge.log_text()[-2000:]
    assert entry["long_plugin_output"].replace("\\n", "\n") == long_output


def test_nagios_stopped_for_a_while_loses_nothing(activemq, nagios_factory, bridge_factory):
    nagios = central_nagios(nagios_factory, services=[f"svc{i}" for i in range(20)])
    bridge = bridge_factory([activemq.stomp_port], ocsp=False, inbound=inbound_config(nagios, QUEUE))
    bridge.start()
    nagios.stop()
    results = [remote_result(f"svc{i}", state=i % 4, output=f"while down {i}") for i in range(20)]
    for result in results:
        send(activemq, result)
    held = bridge.wait_status(lambda s: s.get("inbound_spool", {}).get("depth") == 20 and
                              "waiting" in s["states"].get("nagios_writer", ""))
    assert held, bridge.status()
    nagios.start()
    for result in results:
        assert landed(nagios, result), (result.service, bridge.log_text()[-2000:])


def test_a_check_result_file_outlives_a_nagios_down_longer_than_max_check_result_file_age(
        activemq, nagios_factory, bridge_factory):
    """Regression (review): the entries left the spool once their file was written, and the
    file carried a file_time; a Nagios stopped for longer than max_check_result_file_age
    deleted it unread at its start. Here that age is 15 s and Nagios is down for 25 s."""
    nagios = central_nagios(nagios_factory, services=[f"svc{i}" for i in range(5)],
                            extra_cfg={"max_check_result_file_age": "15"})
    bridge = bridge_factory([activemq.stomp_port], ocsp=False,
                            inbound=inbound_config(nagios, QUEUE, writer="checkresults_dir"))
    bridge.start()
    nagios.stop()
    results = [remote_result(f"svc{i}", state=i % 4, output=f"kept {i}") for i in range(5)]
    for result in results:
        send(activemq, result)
    time.sleep(25)
    assert bridge.status()["inbound_spool"]["depth"] == 5, "kept until Nagios has read the file"
    nagios.start()
    for result in results:
        assert landed(nagios, result), (result.service, nagios.log_text()[-1500:], bridge.log_text()[-1500:])
    deadline = time.time() + 10
    while bridge.status()["inbound_spool"]["depth"] and time.time() < deadline:
        time.sleep(0.2)
    assert bridge.status()["inbound_spool"]["depth"] == 0


def test_duplicates_are_dropped_and_refusals_are_dead_lettered_once(activemq, nagios_factory, bridge_factory):
    nagios = central_nagios(nagios_factory)
    rules = "[{senders: ['remote-nagios'], hosts: ['ce01.remote.org'], services: ['org.sam.*']}]"
    bridge = bridge_factory([activemq.stomp_port], ocsp=False, inbound=inbound_config(nagios, QUEUE, rules=rules))
    bridge.start()
    result = remote_result("org.sam.CE-JobSubmit")
    for _ in range(3):
        send(activemq, result)
    send(activemq, remote_result("org.sam.CE-JobSubmit", output="from a stranger"),
         headers={"nagios_host": "evil-nagios"})
    publish(activemq.stomp_address, QUEUE, b"not a metric record", headers={"nagios_host": "remote-nagios"})
    publish(activemq.stomp_address, QUEUE, "hostName: x\nmetricStatus: OK\nEOT\n[1] SHUTDOWN_PROGRAM\n",
            headers={"nagios_host": "remote-nagios"})
    assert landed(nagios, result)
    assert bridge.wait_counter("refused", 3) == 3
    assert bridge.wait_counter("duplicates", 2) == 2
    assert bridge.wait_counter("injected", 1) == 1          # once Nagios has held it CONFIRM_AFTER s
    counters = bridge.status()["counters"]
    assert counters["injected"] == 1 and counters["received"] == 6
    assert counters["duplicates"] == 2
    assert counters["refused"] == 3 and counters["dead_letters"] == 3
    assert counters["refused.sender-not-allowed"] == 1
    assert nagios.status()[("ce01.remote.org", "org.sam.CE-JobSubmit")]["plugin_output"] == result.output
    bridge.stop()          # acked: nothing comes back after a restart
    bridge.start()
    assert bridge.wait_state("subscriber", "subscribed").startswith("subscribed"), bridge.log_text()[-2000:]
    time.sleep(3)          # a redelivery would come at once, on subscribing
    counters = bridge.wait_status(lambda s: True)["counters"]
    assert counters.get("refused", 0) == 0 and counters.get("injected", 0) == 0, counters
    commands = re.findall(r"EXTERNAL COMMAND: ([A-Z_]+);", nagios.log_text())
    assert commands and set(commands) == {"PROCESS_SERVICE_CHECK_RESULT"}, commands
    assert nagios.running()


@pytest.mark.parametrize("ack_delay", [0, 5])
def test_batches_from_two_subscriptions_are_acked_whole(ack_delay, activemq, nagios_factory, bridge_factory):
    """Cumulative acks: a batch is acked by the last message of each subscription in it. Results
    waiting in two queues come in batches that mix both; after a restart none comes again.
    With ack_delay (5 s: neither it nor a quarter of the prefetch passes here) the ACKs still
    waiting go out at the stop."""
    services = [f"org.sam.T{i}" for i in range(60)]
    nagios = central_nagios(nagios_factory, services=services)
    queues = [QUEUE, QUEUE + ".second"]
    bridge = bridge_factory([activemq.stomp_port], ocsp=False,
                            inbound=inbound_config(nagios, queues) + f"  ack_delay: {ack_delay}\n")
    for i, service in enumerate(services):
        send(activemq, remote_result(service, output=f"result {i}"), destination=queues[i % 2])
    bridge.start()
    assert bridge.wait_counter("received", 60) == 60, bridge.log_text()[-2000:]
    assert bridge.wait_counter("injected", 60) == 60
    bridge.stop()
    bridge.start()
    assert bridge.wait_state("subscriber", "subscribed").startswith("subscribed"), bridge.log_text()[-2000:]
    time.sleep(3)          # a redelivery would come at once, on subscribing
    assert bridge.wait_status(lambda s: True)["counters"].get("received", 0) == 0


def test_site_nagios_to_central_nagios_through_two_bridges(activemq, nagios_factory, bridge_factory):
    central = nagios_factory(hosts=[host("ce01.site.org")],
                             services=[passive_service("ce01.site.org", "org.sam.CE-JobSubmit")])
    receiver = bridge_factory([activemq.stomp_port], name="central", ocsp=False,
                              inbound=inbound_config(central, TOPIC.replace("REMOTE", "SITE_A"),
                                                     durable_name="central"))
    receiver.start()
    sender = bridge_factory([activemq.stomp_port], name="site", site="SITE.A")
    sender.start(wait_for=sender.workdir / "ocsp.fifo")
    settings = config.load(str(sender.config_path))
    extra = dict(line.split("=", 1) for line in main_config_lines(settings).splitlines())
    nagios_factory(hosts=[host("ce01.site.org")], extra_cfg=extra, objects=object_definitions(settings),
                   services=[active_service("ce01.site.org", "org.sam.CE-JobSubmit", state=1,
                                            output="slow submission", max_check_attempts=1)])
    entry = central.wait_for(lambda s: (s.get(("ce01.site.org", "org.sam.CE-JobSubmit")) or {}).get(
        "plugin_output") == "WARNING: slow submission" or None, timeout=30)
    assert entry, (receiver.log_text()[-2000:], sender.log_text()[-2000:])
    assert central.status()[("ce01.site.org", "org.sam.CE-JobSubmit")]["current_state"] == "1"


@pytest.mark.parametrize("objects_cache", [False, True], ids=["every-object", "objects-cache"])
def test_no_echo_when_one_nagios_both_sends_and_receives(objects_cache, activemq, nagios_factory,
                                                          stomp_probe_factory, bridge_factory, tmp_path):
    """With the objects cache the guard keeps its objects beside Nagios's list, which the bridge
    (started first) reads only once Nagios has written it: the guard follows that new list."""
    outbound = "/queue/outbound.echo"
    probe = stomp_probe_factory(activemq, outbound)
    bridge = bridge_factory([activemq.stomp_port], destination=outbound)
    nagios = nagios_factory(start=False, hosts=[host("local.org"), host("ce01.remote.org")], services=[
        active_service("local.org", "local-check", state=0, output="local ok", max_check_attempts=1),
        passive_service("ce01.remote.org", "org.sam.CE-JobSubmit")])
    bridge.config_path.write_text(bridge.config_path.read_text()
                                  + inbound_config(nagios, QUEUE, objects_cache=objects_cache))
    bridge.start(wait_for=bridge.workdir / "ocsp.fifo")
    settings = config.load(str(bridge.config_path))
    nagios.extra_cfg = dict(line.split("=", 1) for line in main_config_lines(settings).splitlines())
    nagios.objects = object_definitions(settings)
    nagios.start()
    if objects_cache:
        assert wait_until(lambda: "reloaded the object list" in bridge.log_text(), timeout=30), \
            bridge.log_text()[-2000:]
    result = remote_result("org.sam.CE-JobSubmit")
    send(activemq, result)
    assert landed(nagios, result)
    # An echo would go out through the OCSP FIFO in the order Nagios handled the results: two
    # local checks published after the injected one has landed are enough to have seen it.
    local_checks = lambda: sum(m.headers["metric"] == "local-check" for m in probe.messages)
    seen = local_checks()
    assert wait_until(lambda: local_checks() >= seen + 2, timeout=30), bridge.log_text()[-2000:]
    metrics = [m.headers["metric"] for m in probe.messages]
    assert "org.sam.CE-JobSubmit" not in metrics, "the injected result was published again (echo)"


def test_resubscribes_after_the_broker_restarts_and_uses_the_error_queue(activemq, nagios_factory,
                                                                         stomp_probe_factory, bridge_factory):
    nagios = central_nagios(nagios_factory)
    inbound = inbound_config(nagios, TOPIC, durable_name="central") + "  error_queue: /queue/errors\n"
    bridge = bridge_factory([activemq.stomp_port], ocsp=False, inbound=inbound)
    bridge.start()
    first = remote_result("org.sam.CE-JobSubmit", output="before the restart")
    # A topic keeps nothing for a durable subscription that does not exist yet.
    assert bridge.wait_state("subscriber", "subscribed").startswith("subscribed"), bridge.log_text()[-2000:]
    send(activemq, first, destination=TOPIC)
    assert landed(nagios, first)
    activemq.kill()
    activemq.start()
    # Published before the bridge is back: the durable subscription keeps it.
    second = remote_result("org.sam.CE-JobSubmit", output="after the restart")
    send(activemq, second, destination=TOPIC)
    assert landed(nagios, second, timeout=30), bridge.log_text()[-2000:]
    errors = stomp_probe_factory(activemq, "/queue/errors")
    publish(activemq.stomp_address, TOPIC, "metricName: x\nEOT\n", headers={"nagios_host": "remote-nagios"})
    message = errors.wait_for_count(1, timeout=20)[0]
    assert message.headers["refused"] and message.headers["original_destination"] == TOPIC


def test_only_objects_the_local_nagios_defines_and_the_list_follows_a_reload(activemq, nagios_factory,
                                                                             bridge_factory):
    nagios = central_nagios(nagios_factory, services=["org.sam.CE-JobSubmit"])
    bridge = bridge_factory([activemq.stomp_port], ocsp=False,
                            inbound=inbound_config(nagios, QUEUE, objects_cache=True))
    bridge.start()
    unknown = remote_result("org.sam.SRM-Put", output="not defined yet")
    send(activemq, unknown)
    known = remote_result("org.sam.CE-JobSubmit")
    send(activemq, known)
    assert landed(nagios, known)
    assert bridge.wait_counter("refused.unknown-object", 1) == 1
    nagios.services.append(passive_service("ce01.remote.org", "org.sam.SRM-Put"))
    reloads = lambda: bridge.log_text().count("reloaded the object list")
    before = reloads()
    nagios.reload()
    assert wait_until(lambda: reloads() > before, timeout=30), bridge.log_text()[-2000:]
    again = remote_result("org.sam.SRM-Put", output="defined now")
    send(activemq, again)
    assert landed(nagios, again), bridge.log_text()[-2000:]


def test_nagios_lock_file_shows_a_dead_core_and_nothing_is_lost(activemq, nagios_factory, bridge_factory, tmp_path):
    nagios = central_nagios(nagios_factory)
    lock = tmp_path / "nagios.lock"
    lock.write_text(f"{nagios.pid}\n")              # what `nagios4 -d` writes
    bridge = bridge_factory([activemq.stomp_port], ocsp=False,
                            inbound=inbound_config(nagios, QUEUE, lock_file=lock))
    bridge.start()
    first = remote_result("org.sam.CE-JobSubmit", output="core alive")
    send(activemq, first)
    assert landed(nagios, first)
    nagios.kill(workers=False)     # SIGKILL: the command-file worker keeps the FIFO open for a while
    second = remote_result("org.sam.CE-JobSubmit", output="core dead")
    send(activemq, second)
    assert "not running" in bridge.wait_state("nagios_writer", "not running"), bridge.status().get("states")
    nagios.start()
    lock.write_text(f"{nagios.pid}\n")
    assert landed(nagios, second, timeout=30), bridge.log_text()[-2000:]


def test_a_full_inbound_spool_pauses_the_subscriber_on_its_connection_and_loses_nothing(
        activemq, nagios_factory, bridge_factory):
    """Regression (issue 14): with a full inbound spool the subscriber dropped its connection
    and reconnected about once a second. Now it keeps the connection, takes nothing more
    (ActiveMQ stops at ``prefetch`` unacked messages), says so in its state, and resumes when
    the Nagios writer has drained the spool."""
    services = [f"svc{i}" for i in range(30)]
    nagios = central_nagios(nagios_factory, services=services)
    bridge = bridge_factory([activemq.stomp_port], ocsp=False, spool_options="max_messages: 10",
                            inbound=inbound_config(nagios, QUEUE, mapping="prefetch: 5"))
    bridge.start()
    assert bridge.wait_state("subscriber", "subscribed").startswith("subscribed"), bridge.log_text()[-2000:]
    nagios.stop()                   # the writer waits: the inbound spool fills
    results = [remote_result(service, state=i % 4, output=f"held back {i}") for i, service in enumerate(services)]
    for result in results:
        send(activemq, result)
    assert bridge.wait_state("subscriber", "paused: inbound spool full") == "paused: inbound spool full", \
        (bridge.status().get("states"), bridge.log_text()[-2000:])
    connections = bridge.log_text().count("connected to broker")
    time.sleep(6)                   # the old way: about six reconnects by now
    status = bridge.wait_status(lambda s: True)
    assert status["states"]["subscriber"] == "paused: inbound spool full"
    assert bridge.log_text().count("connected to broker") == connections, bridge.log_text()[-2000:]
    assert "subscriber connection lost" not in bridge.log_text()
    assert status["inbound_spool"]["depth"] <= 10 and status["counters"]["received"] < 30, status
    nagios.start()
    for result in results:
        assert landed(nagios, result, timeout=60), (result.service, bridge.log_text()[-2000:])
    assert bridge.wait_state("subscriber", "subscribed").startswith("subscribed")
    assert bridge.wait_counter("received", 30) == 30
    assert "subscriber connection lost" not in bridge.log_text()
    assert bridge.log_text().count("connected to broker") == connections
