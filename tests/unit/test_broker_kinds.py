"""brokers.kind: what is refused at config load for each broker, the frames' headers, and how
the publisher sends to RabbitMQ."""
import contextlib
import time

import pytest

from msg_nagios_bridge import config
from msg_nagios_bridge.broker import kinds
from msg_nagios_bridge.config import BrokerSettings
from msg_nagios_bridge.daemon.health import Health
from msg_nagios_bridge.model import Message
from msg_nagios_bridge.outbound.publisher import Publisher
from msg_nagios_bridge.spool import Spool
from tests.sandbox.ports import wait_until

BASE = """
site: {{name: SITE-A}}
brokers: {{hosts: ["127.0.0.1:61613"]{kind}}}
spool: {{directory: /tmp/spool}}
sources: {{ocsp_pipe: {{enabled: false}}}}
inbound:
  enabled: true
  policy: {{rules: [{{senders: ['*']}}]}}
  subscriptions: [{sub}]
"""


def parse(sub, kind=""):
    return config.parse(BASE.format(kind=f", kind: {kind}" if kind else "", sub=sub), "k.yaml")


def test_activemq_is_the_default_and_rabbitmq_defaults_to_the_vhost_slash():
    assert parse("{destination: /queue/a}").brokers.kind == "activemq"
    assert parse("{destination: /queue/a}").brokers.vhost == ""
    rabbit = parse("{destination: /queue/a}", "rabbitmq").brokers
    assert (rabbit.kind, rabbit.vhost) == ("rabbitmq", "/")


def test_an_unknown_kind_is_refused_with_the_choices():
    with pytest.raises(config.ConfigError) as caught:
        parse("{destination: /queue/a}", "artemis")
    assert "brokers.kind" in str(caught.value) and "activemq, rabbitmq" in str(caught.value)


@pytest.mark.parametrize("kind, sub, key, words", [
    ("rabbitmq", "{destination: /queue/a, selector: \"site='X'\"}", "subscriptions[0].selector", "no selectors"),
    ("rabbitmq", "{destination: '/topic/grid.>'}", "subscriptions[0].destination", "use '#'"),
    ("rabbitmq", "{destination: /queue/Consumer.central.VirtualTopic.results}", "subscriptions[0].destination",
     "virtual topic"),
    ("activemq", "{destination: '/topic/grid.#'}", "subscriptions[0].destination", "use '>'"),
    ("activemq", "{destination: /amq/queue/results}", "subscriptions[0].destination", "brokers.kind: rabbitmq"),
    ("activemq", "{destination: /exchange/amq.topic/a.b}", "subscriptions[0].destination", "RabbitMQ"),
])
def test_the_wrong_brokers_conventions_are_refused_saying_what_to_write(kind, sub, key, words):
    with pytest.raises(config.ConfigError) as caught:
        parse(sub, kind)
    assert key in str(caught.value) and words in str(caught.value)


@pytest.mark.parametrize("kind, sub", [
    ("rabbitmq", "{destination: '/topic/grid.*.results.#', durable_name: central}"),
    ("rabbitmq", "{destination: /amq/queue/results}"),
    ("rabbitmq", "{destination: /exchange/amq.topic/a.b}"),
    ("activemq", "{destination: '/topic/grid.>', durable_name: central}"),
    ("activemq", "{destination: /queue/Consumer.central.VirtualTopic.results, selector: \"site='X'\"}"),
])
def test_each_brokers_own_conventions_are_accepted(kind, sub):
    assert parse(sub, kind).inbound.subscriptions


def test_a_durable_name_names_one_queue_on_rabbitmq():
    with pytest.raises(config.ConfigError) as caught:
        parse("{destination: /topic/a, durable_name: d}, {destination: /topic/b, durable_name: d}", "rabbitmq")
    assert "subscriptions[1].durable_name" in str(caught.value)


def test_subscribe_headers_per_kind():
    assert kinds.subscribe_headers("activemq", 2, "/topic/t", "a='b'", "dur", 100, "cid") == (
        "2", {"activemq.prefetchSize": "100", "selector": "a='b'", "activemq.subscriptionName": "dur"})
    assert kinds.subscribe_headers("rabbitmq", 2, "/topic/t", "", "dur", 100, "cid") == (
        "cid.dur", {"prefetch-count": "100", "durable": "true", "auto-delete": "false", "x-queue-name": "cid.dur"})
    assert kinds.subscribe_headers("rabbitmq", 0, "/queue/q", "", "", 7, "cid") == ("0", {"prefetch-count": "7"})


def test_expires_becomes_a_relative_expiration_on_rabbitmq_only():
    headers = {"persistent": "true", "expires": "10500"}
    assert kinds.outgoing_headers("activemq", headers, now_ms=10_000) is headers
    assert kinds.outgoing_headers("rabbitmq", headers, now_ms=10_000) == dict(headers, expiration="500")
    assert kinds.outgoing_headers("rabbitmq", headers, now_ms=11_000)["expiration"] == "0"
    assert "expiration" not in kinds.outgoing_headers("rabbitmq", {"expires": "0"}, now_ms=5)
    assert "expiration" not in kinds.outgoing_headers("rabbitmq", {"persistent": "true"}, now_ms=5)


def test_transactions_only_where_a_commit_receipt_means_stored():
    assert kinds.uses_transactions("activemq") and not kinds.uses_transactions("rabbitmq")


class CorkingBroker:
    """Stands in for BrokerConnection (as test_publisher.AcceptingBroker), recording what the
    publisher does: frames written in corked blocks, BEGIN/COMMIT; the first corked write fails
    (unless ``fail_next_write`` is cleared); closed, it is connected again at once."""

    def __init__(self, wakeup):
        import types
        self.events = types.SimpleNamespace(wakeup=wakeup, lost=False)
        self.conn, self.address, self.is_connected = object(), ("127.0.0.1", 1), True
        self.replies, self.writes, self.transactions, self.pending = [], [], 0, None
        self.fail_next_write = True

    def connect(self):
        return None

    def abort(self):
        pass

    def close(self):
        self.events.lost = False        # "reconnected" at once: the next connection is a fresh one

    discard = close

    @contextlib.contextmanager
    def corked(self):
        self.pending = []
        yield
        frames, self.pending = self.pending, None
        if self.fail_next_write:
            self.fail_next_write = False
            raise OSError("the write failed")
        self.writes.append(frames)
        for headers in frames:
            self.replies.append(("receipt", {"receipt-id": headers["receipt"]}, ""))
        self.events.wakeup.set()

    def send(self, destination, body, headers):
        assert self.pending is not None, "a SEND outside a corked block"
        self.pending.append(headers)

    def send_stored(self, destination, body, headers, name, value):
        self.send(destination, body, dict(headers, **{name: value}))

    def begin(self, transaction):
        self.transactions += 1

    def take_replies(self):
        replies, self.replies = self.replies, []
        return replies


def test_on_rabbitmq_each_message_has_its_receipt_a_batch_is_one_write_and_a_failed_write_gives_back_once(
        tmp_path):
    spool = Spool(str(tmp_path / "spool.sqlite"))
    spool.put([Message(f"m{i}", "/queue/q", {"persistent": "true"}, b"ok") for i in range(700)])
    given_back = []
    real_give_back = spool.give_back
    spool.give_back = lambda ids, tried=True: (given_back.extend((i, tried) for i in ids), real_give_back(ids, tried))
    health = Health()
    publisher = Publisher(BrokerSettings(hosts=(("127.0.0.1", 1),), kind="rabbitmq"), spool, health,
                          drain_timeout=1)
    broker = publisher.session.broker = CorkingBroker(publisher.wakeup)
    publisher.start()
    try:
        assert wait_until(lambda: spool.stats().depth == 0, 15), spool.stats()
    finally:
        publisher.stop()
        publisher.join(5)
        spool.close()
    assert broker.transactions == 0 and health.counter("published") == 700
    assert sorted(len(frames) for frames in broker.writes) == [200, 500]     # a write per batch (BATCH)
    assert all("receipt" in headers for frames in broker.writes for headers in frames)
    # The failed write's batch (500, in flight by then) was given back once, by the connection
    # loss, and not as a try towards max_refusals: the broker refused nothing.
    assert len(given_back) == 500 and len(set(given_back)) == 500
    assert {tried for _, tried in given_back} == {False}


def test_settle_seconds_defaults_to_five_on_rabbitmq_and_none_on_activemq():
    assert parse("{destination: /queue/a}").brokers.settle_seconds == 0
    assert parse("{destination: /queue/a}", "rabbitmq").brokers.settle_seconds == kinds.RABBITMQ_SETTLE_SECONDS == 5
    assert parse("{destination: /queue/a}", "activemq, settle_seconds: 2.5").brokers.settle_seconds == 2.5
    with pytest.raises(config.ConfigError) as caught:
        parse("{destination: /queue/a}", "rabbitmq, settle_seconds: -1")
    assert "settle_seconds = -1" in str(caught.value) and "from 0 to 3600" in str(caught.value)


def publish_settling(tmp_path, settle_seconds, count=50):
    """A publisher on RabbitMQ's terms with ``settle_seconds``, started on ``count`` spooled
    messages that the CorkingBroker receipts at once: (publisher, spool, health)."""
    spool = Spool(str(tmp_path / "spool.sqlite"))
    spool.put([Message(f"m{i}", "/queue/q", {"persistent": "true"}, b"ok") for i in range(count)])
    health = Health()
    publisher = Publisher(BrokerSettings(hosts=(("127.0.0.1", 1),), kind="rabbitmq", settle_seconds=settle_seconds),
                          spool, health, drain_timeout=1)
    publisher.session.broker = CorkingBroker(publisher.wakeup)
    publisher.session.broker.fail_next_write = False
    publisher.start()
    return publisher, spool, health


def test_receipted_messages_stay_in_the_spool_for_settle_seconds_then_are_deleted(tmp_path):
    publisher, spool, health = publish_settling(tmp_path, 1.0)
    try:
        assert wait_until(lambda: health.counter("published") == 50, 10)
        published_at = time.monotonic()
        assert spool.stats().depth == 50 and spool.stats().leased == 50     # receipted, settling
        assert wait_until(lambda: spool.stats().depth == 0, 10), spool.stats()
        assert time.monotonic() - published_at > 0.8
        assert spool.take(100) == []
    finally:
        publisher.stop()
        publisher.join(5)
        spool.close()


def test_a_connection_lost_while_they_settle_sends_the_receipted_again_and_a_clean_stop_deletes_them(tmp_path):
    publisher, spool, health = publish_settling(tmp_path, 600.0)
    broker = publisher.session.broker
    try:
        assert wait_until(lambda: health.counter("published") == 50, 10)
        first_writes = len(broker.writes)
        broker.events.lost = True                   # what stomp.py's listener notes at a reset
        publisher.wakeup.set()
        # Given back and sent again (the CorkingBroker "reconnects" at once): 50 more receipts.
        assert wait_until(lambda: health.counter("published") == 100, 10), health.counter("published")
        assert health.counter("retries") == 50
        resent = [headers for frames in broker.writes[first_writes:] for headers in frames]
        assert len(resent) == 50
        assert spool.stats().depth == 50            # the same 50 entries, settling again
        # Confirmed once: sending them again is no try that counts towards max_refusals.
        assert {entry.attempts for entry in spool.entries_up_to(10**9, 100)} == {0}
    finally:
        publisher.stop()
        publisher.join(5)
    assert spool.stats().depth == 0                 # a clean stop: receipted means delivered
    spool.close()


def test_a_connection_the_broker_closes_after_an_error_does_not_send_the_settling_again(tmp_path):
    """An ERROR comes from a live broker: what it confirmed is safe, and sending it again at
    each reconnect (each probe for a refused message is one) would repeat it many times."""
    publisher, spool, health = publish_settling(tmp_path, 600.0)
    broker = publisher.session.broker
    try:
        assert wait_until(lambda: health.counter("published") == 50, 10)
        writes = len(broker.writes)
        broker.replies.append(("error", {"message": "not allowed"}, ""))    # names no message
        publisher.wakeup.set()
        assert wait_until(lambda: spool.stats().depth == 0, 10), spool.stats()
        assert health.counter("broker_errors") == 1 and health.counter("retries") == 0
        assert len(broker.writes) == writes and health.counter("published") == 50
    finally:
        publisher.stop()
        publisher.join(5)
        spool.close()
