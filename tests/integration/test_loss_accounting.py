"""Loss accounting end to end (docs/loss-accounting.md): two site bridges publish through the real
ActiveMQ to a central bridge that injects into the real Nagios 4; the broker drops messages on
purpose, and the central bridge must report exactly the number lost, per site, and count
at-least-once redeliveries as duplicates, never as gaps."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from msg_nagios_bridge.cores.nagios import result_line
from msg_nagios_bridge.model import CheckResult
from tests.sandbox.bridge import REPO, feed_ocsp, inbound_config
from tests.sandbox.nagios import host, passive_service
from tests.sandbox.ports import wait_until
from tests.sandbox.stomp_probe import publish

pytestmark = pytest.mark.integration

TOPIC = "/topic/grid.loss.{site}"
HOSTS = ("wn1.example.org", "wn2.example.org")
SERVICES = tuple(f"svc-{i}" for i in range(10))
PRODUCER = "{site}/test-nagios.example.org"         # site/nagios_name (tests/sandbox/bridge.py)
# What a site bridge sets (outbound/routing.py, spool numbering); a copy republished as is is
# what a producer's resend or a broker's redelivery looks like to the receiver.
BRIDGE_HEADERS = ("persistent", "content-type", "site", "role", "nagios_host", "host", "metric", "status",
                  "state_type", "result_id", "check_time", "route", "vo", "route_seq")


def lines(site, first, count):
    """``count`` results of ``site``, numbered from ``first``: each a new result (its own time)."""
    now = int(time.time())
    out = []
    for i in range(first, first + count):
        out.append(result_line.format_line(CheckResult(
            host=HOSTS[i % 2], service=SERVICES[i % len(SERVICES)], state=i % 3,
            output=f"{site} result {i}", timestamp=now - 2000 + i)) + "\n")
    return out


def central_nagios(nagios_factory):
    return nagios_factory(hosts=[host(h) for h in HOSTS],
                          services=[passive_service(h, s) for h in HOSTS for s in SERVICES])


def start_sites(bridge_factory, activemq, destination=TOPIC):
    sites = {}
    for site in ("SITE_A", "SITE_B"):
        bridge = bridge_factory([activemq.stomp_port], name=site.lower(), site=site,
                                destination=destination)
        bridge.start(wait_for=bridge.workdir / "ocsp.fifo")
        sites[site] = bridge
    return sites


def publish_from(sites, counts, sent):
    """Feed each site's OCSP FIFO its count of new results; wait until its bridge published all
    it was given so far (``sent``: site -> total, updated)."""
    for site, count in counts.items():
        feed_ocsp(sites[site].workdir / "ocsp.fifo", lines(site, sent[site] + 1, count))
        sent[site] += count
    for site, bridge in sites.items():
        assert bridge.wait_counter("published", sent[site], timeout=60) >= sent[site], bridge.log_text()[-3000:]


def streams(bridge):
    rows = (bridge.status().get("sequences") or {}).get("streams", [])
    return {row["producer"]: row for row in rows}


def wait_highest(bridge, highest, timeout=60):
    """Wait until the central bridge's status shows each producer's highest number; the rows."""
    def reached(status):
        rows = {row["producer"]: row for row in (status.get("sequences") or {}).get("streams", [])}
        return all(rows.get(PRODUCER.format(site=site), {}).get("highest", 0) >= number
                   for site, number in highest.items())
    status = bridge.wait_status(reached, timeout)
    assert status, (streams(bridge), bridge.log_text()[-3000:])
    time.sleep(2.5)                 # late stragglers, then one more status written
    return streams(bridge)


def spool_bytes(directory):
    """Bytes of the inbound spool's files (the database and its WAL), 0 while there are none."""
    total = 0
    for name in ("inbound.sqlite", "inbound.sqlite-wal"):
        try:
            total += os.path.getsize(directory / name)
        except OSError:
            pass
    return total


def cli(bridge, command):
    run = subprocess.run([sys.executable, "-m", "msg_nagios_bridge", command, "-c", str(bridge.config_path)],
                         capture_output=True, text=True, cwd=str(REPO), timeout=60)
    return run.returncode, run.stdout


def check(bridge):
    return cli(bridge, "check")


def test_messages_the_broker_dropped_are_reported_exactly_per_site(activemq, nagios_factory, bridge_factory,
                                                                  stomp_probe_factory):
    """The central bridge's subscription is a plain (non-durable) topic subscription: while it
    is stopped, the broker drops what the sites publish (nobody listens). Exactly those are
    missing afterwards, per site; resent copies are duplicates; a restart keeps the figures."""
    nagios = central_nagios(nagios_factory)
    central = bridge_factory([activemq.stomp_port], name="central", ocsp=False,
                             inbound=inbound_config(nagios, TOPIC.format(site=">")) + "  gap_warning_seconds: 1\n")
    central.start()
    assert "subscribed" in central.wait_state("subscriber", "subscribed"), central.log_text()
    probe = stomp_probe_factory(activemq, TOPIC.format(site=">"))         # sees all, for the resend
    sites = start_sites(bridge_factory, activemq)
    sent = {"SITE_A": 0, "SITE_B": 0}

    publish_from(sites, {"SITE_A": 20, "SITE_B": 20}, sent)
    rows = wait_highest(central, {"SITE_A": 20, "SITE_B": 20})
    assert [rows[PRODUCER.format(site=s)]["missing"] for s in sent] == [0, 0], rows

    assert central.stop() == 0
    publish_from(sites, {"SITE_A": 7, "SITE_B": 13}, sent)      # dropped: no subscriber
    central.start()
    assert "subscribed" in central.wait_state("subscriber", "subscribed"), central.log_text()
    publish_from(sites, {"SITE_A": 10, "SITE_B": 10}, sent)
    rows = wait_highest(central, sent)
    a, b = rows[PRODUCER.format(site="SITE_A")], rows[PRODUCER.format(site="SITE_B")]
    assert (a["highest"], a["missing"], a["received"], a["late"]) == (37, 7, 30, 0), a
    assert (b["highest"], b["missing"], b["received"], b["late"]) == (43, 13, 30, 0), b
    assert a["epoch"] != b["epoch"] and a["duplicates"] == b["duplicates"] == 0
    # The producers' side says the same: numbered up to 37 and 43, in those epochs.
    for site, row in (("SITE_A", a), ("SITE_B", b)):
        assert sites[site].status()["numbering"]["results"] == {"epoch": row["epoch"], "last": row["highest"]}
    # This process (since the restart) took the 20 that came: received = injected + stale + ...
    assert central.status()["counters"]["received"] == 20

    # At-least-once: copies of messages already received (a producer's resend after a lost
    # receipt looks exactly like this) are duplicates, not gaps, and not received twice.
    frames = [m for m in probe.messages if m.headers.get("site") == "SITE_A"][:5]
    assert len(frames) == 5
    for frame in frames:
        publish(activemq.stomp_address, frame.headers["destination"], frame.body,
                headers={k: v for k, v in frame.headers.items() if k in BRIDGE_HEADERS})
    assert wait_until(lambda: streams(central)[PRODUCER.format(site="SITE_A")]["duplicates"] >= 5, 20)
    a = streams(central)[PRODUCER.format(site="SITE_A")]
    assert (a["duplicates"], a["missing"], a["received"]) == (5, 7, 30), a

    code, line = check(central)
    assert code == 1, line
    assert "SITE_A/test-nagios.example.org route results: 7 missing" in line
    assert "SITE_B/test-nagios.example.org route results: 13 missing" in line
    assert " missing=20 " in line
    code, text = cli(central, "status")
    assert code == 0 and "SITE_B/test-nagios.example.org route results: epoch " in text, text
    assert "highest 43, missing 13 (oldest gap " in text, text
    code, text = cli(sites["SITE_A"], "status")
    assert f"numbered up to 37 (epoch {a['epoch']})" in text, text

    # The state is in the inbound spool: a restart invents nothing and forgets nothing.
    before = streams(central)
    assert central.stop() == 0
    central.start()
    status = central.wait_status(lambda s: s.get("sequences") is not None)
    after = {row["producer"]: row for row in status["sequences"]["streams"]}
    for producer in before:
        for field in ("epoch", "highest", "missing", "received", "duplicates", "late"):
            assert after[producer][field] == before[producer][field], (producer, field)


def test_a_receiver_killed_before_its_acks_counts_the_redelivery_as_duplicates(
        activemq, nagios_factory, bridge_factory):
    """A queue keeps what the central bridge did not ack: kill -9 it while it works through a
    backlog, start it again, and every message arrives: nothing missing, whatever was
    delivered twice is a duplicate."""
    queue = "/queue/grid.loss"
    nagios = central_nagios(nagios_factory)
    sites = start_sites(bridge_factory, activemq, destination=queue)
    sent = {"SITE_A": 0, "SITE_B": 0}
    publish_from(sites, {"SITE_A": 1500, "SITE_B": 1500}, sent)      # waiting on the queue
    central = bridge_factory([activemq.stomp_port], name="central", ocsp=False,
                             inbound=inbound_config(nagios, queue))
    central.start()
    spool = central.workdir / "spool"
    # Kill it once it is under way (results in its inbound spool), before it is through.
    assert wait_until(lambda: spool_bytes(spool) > 200_000, 60), central.log_text()[-2000:]
    central.proc.send_signal(signal.SIGKILL)
    central.proc.wait(10)
    central.start()
    rows = wait_highest(central, sent, timeout=120)
    for site in sent:
        row = rows[PRODUCER.format(site=site)]
        # A message not yet saved before the kill may come back after later ones: late, not missing.
        assert (row["highest"], row["missing"], row["received"]) == (1500, 0, 1500), row
    duplicates = sum(row["duplicates"] for row in rows.values())
    code, line = check(central)
    assert code == 0, line
    print(f"redelivered and counted as duplicates: {duplicates}; "
          f"counters: {json.dumps(central.status()['counters'], sort_keys=True)}")


# On the central broker, every message put on the queue is also copied to a topic, where a probe
# sees it without competing with the central bridge for it.
COPY_TO_TOPIC = """    <destinationInterceptors><virtualDestinationInterceptor><virtualDestinations>
      <compositeQueue name="{queue}" forwardOnly="false"><forwardTo><topic physicalName="{topic}"/></forwardTo></compositeQueue>
    </virtualDestinations></virtualDestinationInterceptor></destinationInterceptors>"""


def test_a_non_persistent_site_broker_killed_with_messages_is_reported_exactly_per_site(
        activemq_factory, nagios_factory, bridge_factory, stomp_probe_factory):
    """A network of brokers: the site bridges publish to a site broker that keeps messages in
    memory only (persistent="false") and forwards them over a networkConnector to the central
    broker, where the central bridge consumes a queue. The central broker is stopped, so what
    the sites publish waits on the site broker (they have its receipts, so they let go of it);
    the site broker is killed -9 and everything it held is gone. Exactly that many are missing,
    per site; what was delivered twice is a duplicate, never a gap."""
    queue = "/queue/grid.loss.network"
    central_broker = activemq_factory("central", extra_xml=COPY_TO_TOPIC.format(
        queue="grid.loss.network", topic="grid.loss.copies"))
    probe = stomp_probe_factory(central_broker, "/topic/grid.loss.copies")
    site_broker = activemq_factory("site", persistent=False, network_to=[central_broker.openwire_port])
    site_broker.wait_bridges()
    nagios = central_nagios(nagios_factory)
    central = bridge_factory([central_broker.stomp_port], name="central", ocsp=False,
                             inbound=inbound_config(nagios, queue))
    central.start()
    assert "subscribed" in central.wait_state("subscriber", "subscribed"), central.log_text()
    sites = start_sites(bridge_factory, site_broker, destination=queue)
    sent = {"SITE_A": 0, "SITE_B": 0}

    publish_from(sites, {"SITE_A": 20, "SITE_B": 20}, sent)
    rows = wait_highest(central, {"SITE_A": 20, "SITE_B": 20})
    assert [rows[PRODUCER.format(site=s)]["missing"] for s in sent] == [0, 0], rows
    assert probe.wait_for_count(40, timeout=20)
    copies = [m for m in probe.messages if m.headers.get("site") == "SITE_B"][:5]
    probe.close()

    # Cut the network: the central broker goes away (nothing in flight: all 20 arrived), so the
    # site broker keeps what comes, in memory, and receipts it.
    central_broker.stop()
    lost = {"SITE_A": 60, "SITE_B": 90}
    publish_from(sites, lost, sent)
    site_broker.kill()                       # non-persistent: the 150 messages it held are gone
    central_broker.start()
    site_broker.start()
    site_broker.wait_for_log(r"Network connection between .* has been established", 60, count=2)
    publish_from(sites, {"SITE_A": 30, "SITE_B": 30}, sent)
    rows = wait_highest(central, sent, timeout=90)
    # At-least-once: copies of 5 SITE_B messages delivered before the cut, published again
    # to the site broker as they were (a resend after a lost receipt looks like this), cross the
    # network and are duplicates, not gaps.
    assert len(copies) == 5
    for frame in copies:
        publish(site_broker.stomp_address, queue, frame.body,
                headers={k: v for k, v in frame.headers.items() if k in BRIDGE_HEADERS})
    resent = {"SITE_A": 0, "SITE_B": 5}
    assert wait_until(lambda: streams(central)[PRODUCER.format(site="SITE_B")]["duplicates"] >= 5, 30)
    time.sleep(2.5)
    rows = streams(central)

    for site in sent:
        row = rows[PRODUCER.format(site=site)]
        delivered = row["received"]
        print(f"network of brokers, {site}: sent {sent[site]}, delivered {delivered}, "
              f"lost {row['missing']} (held by the killed site broker: {lost[site]}), "
              f"duplicated {row['duplicates']}, late {row['late']}")
        assert (row["highest"], row["missing"], row["received"], row["late"], row["lost"]) == (
            sent[site], lost[site], sent[site] - lost[site], 0, 0), row
        assert row["duplicates"] == resent[site], row
        # The producer's side agrees on the numbers it gave.
        assert sites[site].status()["numbering"]["results"] == {"epoch": row["epoch"], "last": row["highest"]}
    code, line = check(central)
    assert " missing=150 " in line, line
