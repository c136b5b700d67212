"""The hostile corpus, tried for real: ActiveMQ -> bridge -> a real Nagios. Nothing but passive
results may reach Nagios, both stay up, and memory stays bounded."""
import json
import pathlib
import re
import time

import pytest

from tests.sandbox.bridge import inbound_config
from tests.sandbox.nagios import host, passive_service
from tests.sandbox.ports import wait_until
from tests.sandbox.procfs import peak_rss_mb
from tests.sandbox.stomp_probe import publish

pytestmark = pytest.mark.integration

CORPUS = pathlib.Path(__file__).parent.parent / "fixtures" / "hostile" / "cases.jsonl"
QUEUE = "/queue/hostile"
GENERATED = {
    "ten-megabyte-body": ("metricName: x\ndetailsData: " + "A" * (10 << 20) + "\nEOT\n").encode(),
    "deep-json": b"[" * 100_000 + b"]" * 100_000,
    "huge-json-array": b'{"host": "h", "x": [' + b"1," * 400_000 + b"1]}",
    # Regression: the decoder's nesting pre-check was quadratic on this; 1 MiB took about an hour.
    "json-unterminated-escaped-quotes": b'{"host": "' + b'\\"' * 500_000,
}
# Hostile headers (the judgement refuses them before any other work). ActiveMQ itself refuses a
# header line over 10 KiB ("The maximum header length was exceeded") and more than 1,000 headers.
GENERATED_HEADERS = {
    "header-flood": {f"h{i}": "v" for i in range(500)},
    "many-long-headers": {f"h{i}": "v" * 9_000 for i in range(200)},
}


def corpus():
    """The cases, their 2024 check times moved to a minute ago (the bridge refuses results
    older than inbound.policy.max_age)."""
    recent = time.time() - 60
    stamp, epoch = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(recent)), str(int(recent))
    for line in CORPUS.read_text().replace("2024-01-01T00:00:00Z", stamp).replace("1704067200", epoch).splitlines():
        case = json.loads(line)
        body = case["body"].encode() if "body" in case else case["body_latin1"].encode("latin-1")
        yield case["name"], body, case.get("headers") or {}


def test_every_hostile_message_is_refused_or_becomes_one_passive_result(activemq, nagios_factory, bridge_factory):
    nagios = nagios_factory(hosts=[host("se01.example.org"), host("ce01.example.org")], services=[
        passive_service("se01.example.org", "org.sam.SRM-Put"),
        passive_service("ce01.example.org", "org.sam.CE-JobSubmit")],
        extra_cfg={"log_external_commands": "1", "log_passive_checks": "1"})
    bridge = bridge_factory([activemq.stomp_port], ocsp=False, inbound=inbound_config(
        nagios, QUEUE, rules="[{senders: ['*'], hosts: ['*'], services: ['*'], host_checks: true}]",
        mapping="mapping: {max_body_bytes: 1048576}"))
    bridge.start()
    cases = list(corpus()) + [(name, body, {}) for name, body in GENERATED.items()]
    cases += [(name, next(corpus())[1], headers) for name, headers in GENERATED_HEADERS.items()]
    for _, body, headers in cases:
        publish(activemq.stomp_address, QUEUE, body, headers={"nagios_host": "remote", **headers})
    assert bridge.wait_counter("received", len(cases), timeout=60) == len(cases), bridge.log_text()[-2000:]
    counters = bridge.status()["counters"]
    accepted = counters["received"] - sum(counters.get(name, 0) for name in ("refused", "duplicates", "stale"))
    assert counters.get("refused", 0) > 0 and accepted > 0, counters
    # The counters add up: every message taken is injected, refused, a duplicate, stale or waiting.
    assert bridge.wait_status(lambda status: status["counters"].get("injected", 0) == accepted
                              and status["inbound_spool"]["depth"] == 0, timeout=30), bridge.status()
    counters = bridge.status()["counters"]
    assert counters["received"] == sum(counters.get(name, 0) for name in ("injected", "refused", "duplicates", "stale"))
    # Nagios logs every command it reads from its command file: wait until it has read them all.
    logged = lambda: re.findall(r"EXTERNAL COMMAND: ([A-Z_]+);", nagios.log_text())
    assert wait_until(lambda: len(logged()) >= accepted, timeout=30), (len(logged()), counters)
    assert bridge.proc.poll() is None, "the bridge must stay up"
    assert nagios.running(), "Nagios must stay up"
    commands = logged()
    assert set(commands) <= {"PROCESS_SERVICE_CHECK_RESULT", "PROCESS_HOST_CHECK_RESULT"}, set(commands)
    assert "SHUTDOWN" not in " ".join(commands)
    peak = peak_rss_mb(bridge.pid)
    print(f"hostile corpus: {len(cases)} messages, {accepted} injected, {counters['refused']} refused, "
          f"bridge peak RSS {peak:.0f} MB")
    assert peak < 300, f"bridge peak RSS {peak:.0f} MB"
