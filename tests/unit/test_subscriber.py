"""The subscriber's hand-off and ACK order, and its backpressure on a full inbound spool, with a
real spool and a stand-in for the broker connection that records ACKs (the same against the
real ActiveMQ: tests/integration/test_inbound.py)."""
import threading
import time

import pytest

from msg_nagios_bridge import config
from msg_nagios_bridge.daemon.health import Health
from msg_nagios_bridge.inbound.subscriber import PAUSED, Subscriber
from msg_nagios_bridge.model import Message
from msg_nagios_bridge.spool import Spool, SpoolUnavailable
from tests.unit.test_judgement import ALLOW_ALL, SENDER, wlcg


class RecordingBroker:
    """Stands in for BrokerConnection: records ACKs; ``on_ack(ack_id)`` runs at each."""

    class Conn:
        def __init__(self, owner):
            self.owner = owner

        def ack(self, ack_id):
            self.owner.on_ack(ack_id)
            self.owner.acks.append(ack_id)

    def __init__(self, wakeup, on_ack=lambda ack_id: None):
        self.events = type("Events", (), {"lost": False, "lock": threading.Lock(), "messages": []})()
        self.wakeup, self.on_ack, self.acks = wakeup, on_ack, []
        self.conn = self.Conn(self)
        self.address = ("127.0.0.1", 61613)
        self.is_connected = True

    def ack_all(self, ack_ids):
        for ack_id in ack_ids:
            self.conn.ack(ack_id)

    def connect(self):
        return None

    def abort(self):
        pass

    def close(self):
        pass

    def discard(self):
        pass

    def deliver(self, *messages):
        with self.events.lock:
            self.events.messages.extend(messages)
        self.wakeup.set()


def make_settings(tmp_path, ack_delay=0, inbound=""):
    """Settings of a subscriber on /queue/q allowing every sender; ``inbound``: more keys of
    the inbound section (flow style, e.g. ``signatures: {...}``)."""
    return config.parse(f"""
site: {{name: S}}
brokers: {{hosts: ["127.0.0.1:1"]}}
spool: {{directory: {tmp_path}}}
sources: {{ocsp_pipe: {{enabled: false}}}}
inbound: {{enabled: true, subscriptions: [{{destination: /queue/q}}], policy: {{rules: [{{senders: ['*']}}]}},
          ack_delay: {ack_delay}{", " + inbound if inbound else ""}}}
""")


def now_text():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def good(i):
    return dict(SENDER, ack=f"good-{i}", result_id=f"r{i}"), wlcg(service=f"svc{i}", when=now_text())


def bad(i):
    return dict(SENDER, ack=f"bad-{i}"), b"not a metric record"


@pytest.fixture
def subscriber_on(tmp_path):
    made = []

    def make(max_messages=1000, on_ack=lambda ack_id: None, ack_delay=0):
        settings = make_settings(tmp_path, ack_delay)
        spool = Spool(str(tmp_path / "inbound.sqlite"), max_messages=max_messages)
        subscriber = Subscriber(settings.brokers, settings.inbound, spool, Health(), ALLOW_ALL)
        broker = subscriber.session.broker = RecordingBroker(subscriber.wakeup, on_ack)
        made.append((subscriber, spool))
        return subscriber, spool, broker
    yield make
    for subscriber, spool in made:
        if subscriber.is_alive():
            subscriber.stop()
            subscriber.join(5)
        subscriber.poison.close()
        spool.close()


def test_a_batch_is_acked_once_its_results_and_dead_letters_are_on_disk(subscriber_on, tmp_path):
    """Cumulative acks: the batch's last message's ACK acknowledges all of it, so it is sent
    only when every message of the batch is durable, the refused ones as dead letters."""
    on_disk_at_ack = {}

    def on_ack(ack_id):
        # Another handle on the file: what a crash right now would leave.
        with Spool(str(tmp_path / "inbound.sqlite"), exclusive=False) as reader:
            on_disk_at_ack[ack_id] = ([dead.entry.message.headers.get("ack") for dead in reader.dead_letters()],
                                      reader.stats().depth)
    subscriber, spool, broker = subscriber_on(on_ack=on_ack)
    subscriber._handle([good(1), bad(2), good(3)])
    assert broker.acks == ["good-3"], "one ACK, for the last message"
    assert on_disk_at_ack["good-3"] == (["bad-2"], 2)
    assert subscriber.health.counter("received") == 3


def test_a_batch_from_several_subscriptions_is_acked_once_per_subscription(subscriber_on):
    """A cumulative ACK acknowledges its own subscription's earlier messages only: the last
    message of each subscription in the batch is acked."""
    subscriber, _, broker = subscriber_on()
    messages = [good(i) for i in range(5)]
    for (headers, _), subscription in zip(messages, ["0", "1", "0", "1", "0"]):
        headers["subscription"] = subscription
    subscriber._handle(messages)
    assert broker.acks == ["good-4", "good-3"]


def test_cumulative_acks_are_the_last_ack_of_each_subscription():
    from msg_nagios_bridge.inbound.subscriber import cumulative_acks
    batch = [({"subscription": s, "ack": a}, b"") for s, a in [("a", "1"), ("b", "2"), ("a", "3"), ("c", "4")]]
    assert cumulative_acks(batch) == {"a": "3", "b": "2", "c": "4"}
    assert cumulative_acks([]) == {}


def test_a_refused_message_whose_dead_letter_cannot_be_written_is_not_acked(subscriber_on, monkeypatch):
    subscriber, spool, broker = subscriber_on()

    def failing(message, reason, states=()):
        raise SpoolUnavailable("database or disk is full")
    monkeypatch.setattr(spool, "add_dead_letter", failing)
    with pytest.raises(SpoolUnavailable):
        subscriber._handle([bad(1)])
    assert broker.acks == [], "not acked: the broker delivers it again"


def test_a_full_inbound_spool_pauses_taking_and_resumes_when_there_is_room(subscriber_on):
    subscriber, spool, broker = subscriber_on(max_messages=3)     # batches of one (batch_limits)
    health = subscriber.health
    subscriber.start()
    broker.deliver(good(0), good(1), good(2))
    assert_soon(lambda: broker.acks == ["good-0", "good-1", "good-2"])
    broker.deliver(good(3), bad(4))             # 3 + 1 > 3: good-3 does not fit
    assert_soon(lambda: health.snapshot()["states"]["subscriber"] == PAUSED)
    assert broker.acks == ["good-0", "good-1", "good-2"], "nothing of the held batch acked"
    broker.deliver(good(5))
    time.sleep(0.3)
    assert [headers["ack"] for headers, _ in broker.events.messages] == ["bad-4", "good-5"], \
        "nothing more is taken while paused"
    assert spool.stats().depth == 3
    entries = spool.take(10)                     # Nagios takes them: room
    spool.done([entry.entry_id for entry in entries])
    assert_soon(lambda: broker.acks == ["good-0", "good-1", "good-2", "good-3", "bad-4", "good-5"])
    assert health.snapshot()["states"]["subscriber"] == "subscribed on 127.0.0.1:61613"
    assert health.counter("paused") == 1 and health.counter("received") == 6
    assert broker.events.messages == []


def test_more_messages_waiting_than_the_spool_holds_are_taken_in_parts_and_none_sticks(subscriber_on):
    """While paused on a full spool, up to a whole prefetch (500) waits; taken as one batch,
    more than the spool's limit never fit, even empty, and the subscriber stayed paused for
    ever (benchmarks/reliability.py, "stalled Nagios": 1,585 of 2,250 results never came)."""
    subscriber, spool, broker = subscriber_on(max_messages=8)     # batches of 2
    broker.deliver(*[good(i) for i in range(20)])
    subscriber.start()
    stored = []
    deadline = time.monotonic() + 10
    while len(stored) < 20 and time.monotonic() < deadline:     # Nagios takes what is there
        entries = spool.take(100)
        spool.done([entry.entry_id for entry in entries])
        stored += entries
        time.sleep(0.01)
    assert len(stored) == 20 and broker.acks[-1] == "good-19"
    assert spool.stats().put == 20


def test_a_batch_bigger_than_the_limits_fits_an_empty_spool_only(tmp_path):
    from msg_nagios_bridge.spool import SpoolFull
    with Spool(str(tmp_path / "s.sqlite"), max_messages=3) as spool:
        assert spool.put([Message(f"a{i}", "nagios", {}, b"{}") for i in range(5)]) == 5
        with pytest.raises(SpoolFull):
            spool.put([Message("b", "nagios", {}, b"{}")])
        spool.done([entry.entry_id for entry in spool.take(5)])
        assert spool.put([Message(f"c{i}", "nagios", {}, b"{}") for i in range(4)]) == 4


def test_a_held_batch_is_dropped_unacked_when_the_connection_goes(subscriber_on):
    """The broker delivers its messages again after a reconnect: held in memory, never acked."""
    subscriber, spool, broker = subscriber_on(max_messages=1)
    spool.put([Message("filler", "nagios", {}, b"{}")])
    subscriber._handle([good(1)])
    assert subscriber._held is not None and broker.acks == []
    subscriber._lost("test")
    assert subscriber._held is None and broker.acks == []


def assert_soon(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.01)


def test_the_memory_is_swept_a_step_between_batches(subscriber_on, monkeypatch):
    """Every FORGET_INTERVAL a sweep starts; each batch after it (SWEEP_STEP_GAP apart) takes a
    bounded step, so 500,000 objects at grid scale never go in one long delete."""
    from msg_nagios_bridge.inbound import judgement, subscriber as subscriber_module
    monkeypatch.setattr(judgement, "SWEEP_SCAN", 2)
    subscriber, spool, _ = subscriber_on()
    objects = [f"h{i}\ts" for i in range(6)]
    start = 100_000.0
    cutoff = start - subscriber.settings.max_age
    # Objects 0 to 3 older than max_age, 4 and 5 not.
    spool.put([], newest=[(obj, cutoff - 4 + i, f"{i:016x}") for i, obj in enumerate(objects)])
    subscriber._forget_some(start)                          # starts a sweep, takes its first step
    left = lambda: len(spool.find_newest(objects))          # noqa: E731
    assert left() == 4, "the first step looked at 2 objects, both older than max_age"
    subscriber._forget_some(start + subscriber_module.SWEEP_STEP_GAP / 2)
    assert left() == 4, "too soon after the last step"
    counts = []
    for step in range(1, 4):
        subscriber._forget_some(start + step * subscriber_module.SWEEP_STEP_GAP)
        counts.append(left())
    assert counts == [2, 2, 2], "2 objects looked at a step; the 2 within max_age stay"
    assert sorted(spool.find_newest(objects)) == objects[4:]


def test_by_default_each_batch_is_acked_as_soon_as_it_is_durable(subscriber_on):
    subscriber, _, broker = subscriber_on()
    subscriber._handle([good(1)])
    assert broker.acks == ["good-1"]
    subscriber._handle([good(2), good(3)])
    assert broker.acks == ["good-1", "good-3"]


def test_with_ack_delay_the_acks_of_small_batches_go_together_after_a_quarter_of_the_prefetch(subscriber_on):
    """With ack_delay, the ACKs of batches of a message or two wait for the next batches'
    until prefetch/4 messages are durable (one ACK frame for all of them, per subscription)."""
    subscriber, _, broker = subscriber_on(ack_delay=1)     # the count decides, here
    assert subscriber.ack_every == subscriber.settings.prefetch // 4 == 125
    subscriber.ack_every = 5
    subscriber._handle([good(1), good(2)])
    subscriber._handle([good(3)])
    assert broker.acks == [], "3 of 5: not yet"
    subscriber._handle([good(4), bad(5)])
    assert broker.acks == ["bad-5"], "5 durable: one ACK for all"
    subscriber._handle([good(6)])
    assert broker.acks == ["bad-5"]


def test_a_waiting_ack_goes_out_after_ack_delay_with_no_more_messages(subscriber_on):
    """A lone message is acked after ack_delay though nothing else comes (the loop's
    deadline wakes it), and it was durable before."""
    delay = 0.05
    acked_at = {}
    subscriber, spool, broker = subscriber_on(ack_delay=delay, on_ack=lambda ack_id: acked_at.setdefault(
        ack_id, (time.monotonic(), spool.stats().depth)))
    subscriber.start()
    delivered = time.monotonic()
    broker.deliver(good(1))
    assert_soon(lambda: broker.acks == ["good-1"])
    at, depth = acked_at["good-1"]
    assert depth == 1, "in the spool before its ACK"
    assert delay <= at - delivered < delay + 1.0


def test_waiting_acks_are_dropped_when_the_connection_goes_and_sent_at_a_stop(subscriber_on):
    """The ack ids of a lost connection mean nothing on the next (the broker delivers those
    messages again and the memory drops them); at a stop, what waits is acked before closing."""
    subscriber, _, broker = subscriber_on(ack_delay=1)     # not due before the stop
    subscriber._handle([good(1)])
    subscriber._lost("test")
    assert subscriber._unacked == {} and broker.acks == []
    subscriber._handle([good(2)])
    subscriber.start()
    subscriber.stop()
    subscriber.join(5)
    assert broker.acks == ["good-2"]


def test_the_subscribers_connection_asks_for_quick_tcp_acks(tmp_path):
    """ActiveMQ's Nagle holds each MESSAGE until the previous one's TCP ACK: a subscriber that
    has sent nothing back for a while must not leave that ACK to its kernel's delayed-ACK timer
    (broker/connection.ack_at_once)."""
    settings = make_settings(tmp_path, 0)
    spool = Spool(str(tmp_path / "inbound.sqlite"))
    subscriber = Subscriber(settings.brokers, settings.inbound, spool, Health(), ALLOW_ALL)
    try:
        assert subscriber.session.broker.quick_ack is True
    finally:
        subscriber.poison.close()
        spool.close()
