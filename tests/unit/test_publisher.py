"""The publisher against brokers that misbehave in ways a real ActiveMQ cannot be made to on
demand, and against a failing spool. (Its work with real brokers is in tests/integration.)

DeafBroker: a STOMP server on 127.0.0.1 that answers CONNECTED, then never reads again while it keeps
sending heart-beats: what ActiveMQ's producer flow control ("Stopping producer") or a broker
whose kernel still answers looks like from the bridge. Making a real ActiveMQ do exactly this
on demand is not practical, hence the small server here.
"""
import contextlib
import socket
import threading
import time

import pytest

from msg_nagios_bridge.config import BrokerSettings
from msg_nagios_bridge.daemon.health import Health
from msg_nagios_bridge.model import Message
from msg_nagios_bridge.outbound.publisher import BATCH, Publisher
from msg_nagios_bridge.spool import Spool, SpoolUnavailable
from tests.sandbox.ports import wait_until


class DeafBroker:
    """Accepts connections, answers CONNECTED, then only sends heart-beats."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.port = self.server.getsockname()[1]
        self.connections = []
        self.closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closing.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            self.connections.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        try:
            client.recv(4096)
            client.sendall(b"CONNECTED\nversion:1.2\nheart-beat:1000,1000\n\n\x00")
            while not self.closing.wait(0.5):
                client.sendall(b"\n")
        except OSError:
            pass

    def close(self):
        self.closing.set()
        self.server.close()
        for client in self.connections:
            client.close()


def test_a_broker_that_stops_reading_is_given_up_within_the_receipt_timeout(tmp_path):
    """Regression (review): stomp.py's socket has no timeout once connected, so a send to a
    broker that stopped reading blocked for ever: no failover, 'connected' in status, and a
    stop or reload that never ended."""
    broker = DeafBroker()
    spool = Spool(str(tmp_path / "spool.sqlite"))
    spool.put([Message(f"m{i}", "/queue/q", {}, b"x" * 65536) for i in range(300)])
    health = Health()
    publisher = Publisher(BrokerSettings(hosts=(("127.0.0.1", broker.port),), receipt_timeout=2,
                                         connect_timeout=2, heartbeat_ms=1000), spool, health, drain_timeout=1)
    publisher.start()
    try:
        deadline = time.time() + 20
        while len(broker.connections) < 2 and time.time() < deadline:
            time.sleep(0.1)
        assert len(broker.connections) >= 2, "the stalled connection was never given up"
    finally:
        stopped_at = time.time()
        publisher.stop()
        publisher.join(10)
        assert not publisher.is_alive(), "stop() must end a publisher blocked on a send"
        assert time.time() - stopped_at < 10
        broker.close()
    assert spool.stats().depth == 300 and spool.stats().leased == 0, "nothing lost, nothing left leased"
    spool.close()


class AcceptingBroker:
    """Stands in for BrokerConnection: every SEND/COMMIT with a receipt gets its RECEIPT, and
    sets the owner's ``wakeup`` as BrokerConnection does."""

    class Events:
        def __init__(self, wakeup):
            self.wakeup = wakeup
            self.lost = False

    def __init__(self, wakeup):
        self.wakeup = wakeup
        self.events = self.Events(wakeup)
        self.replies = []
        self.conn = object()
        self.address = ("127.0.0.1", 1)
        self.is_connected = True

    def connect(self):
        return None

    def abort(self):
        pass

    def corked(self):
        return contextlib.nullcontext()

    def begin(self, transaction):
        self.refused_in_transaction = False

    def refuses(self, body):
        return False

    def reply(self, kind, **headers):
        self.replies.append((kind, headers, ""))
        self.events.wakeup.set()

    def send_stored(self, destination, body, headers, name, value):
        """What BrokerConnection.send_stored sends (its frame: test_broker_session.py)."""
        self.send(destination, body, dict(headers, **{name: value}))

    def send(self, destination, body, headers):
        refused = self.refuses(body)
        if "receipt" in headers:
            self.reply("error", **{"receipt-id": headers["receipt"], "message": "refused"}) if refused \
                else self.reply("receipt", **{"receipt-id": headers["receipt"]})
        elif refused:
            self.refused_in_transaction = True

    def commit(self, transaction, receipt):
        if self.refused_in_transaction:
            self.reply("error", message="refused")          # names no message
        else:
            self.reply("receipt", **{"receipt-id": receipt})

    def take_replies(self):
        replies, self.replies = self.replies, []
        return replies

    def close(self):
        pass

    def discard(self):
        pass


def test_entries_the_spool_could_not_delete_after_their_receipt_are_not_stranded(tmp_path, monkeypatch):
    """Regression (review): after a receipt the entries left the in-flight list before the
    spool deleted them; when that delete failed (disk full) they stayed leased, never sent
    again until a restart."""
    spool = Spool(str(tmp_path / "spool.sqlite"))
    spool.put([Message(f"m{i}", "/queue/q", {}, b"ok") for i in range(5)])
    real_done, failures = spool.done, []

    def done_failing_once(ids):
        if not failures:
            failures.append(ids)
            raise SpoolUnavailable("database or disk is full")
        return real_done(ids)

    monkeypatch.setattr(spool, "done", done_failing_once)
    publisher = Publisher(BrokerSettings(hosts=(("127.0.0.1", 1),)), spool, Health(), drain_timeout=1)
    publisher.session.broker = AcceptingBroker(publisher.wakeup)
    publisher.start()
    try:
        deadline = time.time() + 15
        while spool.stats().depth and time.time() < deadline:
            time.sleep(0.05)
        assert failures, "the delete never failed: the test did not test anything"
        assert spool.stats().depth == 0 and spool.stats().leased == 0
    finally:
        publisher.stop()
        publisher.join(5)
        spool.close()


def test_a_connection_lost_while_the_spool_cannot_write_does_not_end_the_publisher(tmp_path, monkeypatch):
    """Review 2026-12-06: giving back what was in flight writes the tries; when that failed
    (disk full) while a failed send was handled, the error ended the publisher's thread."""
    spool = Spool(str(tmp_path / "spool.sqlite"))
    spool.put([Message(f"m{i}", "/queue/q", {}, b"ok") for i in range(BATCH + 10)])
    first = spool.take(1)[0].entry_id
    spool.give_back([first], tried=False)
    real_give_back, failures = spool.give_back, []

    def give_back_failing_once(ids, tried=True):
        ids = list(ids)
        real_give_back(ids, tried=False)                 # unleased, as Spool.give_back does
        if first in ids and not failures:                # the first batch, in flight when lost
            failures.append(ids)
            raise SpoolUnavailable("database or disk is full")

    class FailingSecondWrite(AcceptingBroker):
        def __init__(self, wakeup):
            super().__init__(wakeup)
            self.transactions = 0

        def begin(self, transaction):
            self.transactions += 1
            if self.transactions == 2 and not failures:
                raise OSError(32, "Broken pipe")         # the first batch's COMMIT unanswered
            super().begin(transaction)

        def commit(self, transaction, receipt):
            if self.transactions > 1 or failures:
                super().commit(transaction, receipt)

    monkeypatch.setattr(spool, "give_back", give_back_failing_once)
    publisher = Publisher(BrokerSettings(hosts=(("127.0.0.1", 1),), backoff_initial=0.01, backoff_max=0.05),
                          spool, Health(), drain_timeout=1)
    publisher.session.broker = FailingSecondWrite(publisher.wakeup)
    publisher.start()
    try:
        assert wait_until(lambda: not spool.stats().depth or not publisher.is_alive(), timeout=15)
        assert failures, "the give back never failed: the test did not test anything"
        assert publisher.is_alive() and spool.stats().depth == 0, spool.stats()
    finally:
        publisher.stop()
        publisher.join(5)
        spool.close()


class RefusingBroker(AcceptingBroker):
    """Refuses every message while ``refusing`` is set."""

    def __init__(self, wakeup):
        super().__init__(wakeup)
        self.refusing = True
        self.refusals = 0

    def refuses(self, body):
        self.refusals += self.refusing
        return self.refusing


def test_a_broker_that_refuses_everything_does_not_empty_the_spool_into_dead_letters(tmp_path):
    """Regression (review): each refused message was retried at once and dead-lettered after
    max_refusals tries, so a broker refusing everything (store full, a permission withdrawn)
    moved the whole spool to the dead letters within seconds, and past max_dead_letters the
    oldest were deleted."""
    spool = Spool(str(tmp_path / "spool.sqlite"))
    spool.put([Message(f"m{i}", "/queue/q", {}, b"ok") for i in range(200)])
    publisher = Publisher(BrokerSettings(hosts=(("127.0.0.1", 1),), backoff_initial=0.1, backoff_max=0.5,
                                         max_refusals=2), spool, Health(), drain_timeout=1)
    broker = publisher.session.broker = RefusingBroker(publisher.wakeup)
    publisher.start()
    try:
        # More refusals than the 200 messages have tries before max_refusals: at least one of
        # them was refused more often than that, and still nothing is dead-lettered.
        assert wait_until(lambda: broker.refusals > 200 * 3, timeout=30), broker.refusals
        assert spool.stats().dead_letters == 0
        broker.refusing = False                      # the broker has room again
        deadline = time.time() + 20
        while spool.stats().depth and time.time() < deadline:
            time.sleep(0.05)
        assert spool.stats().depth == 0 and spool.stats().dead_letters == 0
    finally:
        publisher.stop()
        publisher.join(5)
        spool.close()


def test_a_message_the_broker_refuses_while_it_takes_others_is_dead_lettered():
    """The other side of the rule above: one bad message among good ones still goes to the
    dead letters after max_refusals tries, and the rest are delivered."""
    import tempfile

    class RefusingOne(AcceptingBroker):
        def refuses(self, body):
            return body == b"bad"

    with tempfile.TemporaryDirectory() as directory:
        spool = Spool(directory + "/spool.sqlite")
        spool.put([Message(f"m{i}", "/queue/q", {}, b"bad" if i == 5 else b"ok") for i in range(50)])
        publisher = Publisher(BrokerSettings(hosts=(("127.0.0.1", 1),), max_refusals=3), spool, Health(),
                              drain_timeout=1)
        publisher.session.broker = RefusingOne(publisher.wakeup)
        publisher.start()
        try:
            deadline = time.time() + 20
            while (spool.stats().depth or not spool.stats().dead_letters) and time.time() < deadline:
                time.sleep(0.05)
            assert spool.stats().depth == 0
            assert [dead.entry.message.message_id for dead in spool.dead_letters()] == ["m5"]
        finally:
            publisher.stop()
            publisher.join(5)
            spool.close()


def test_resends_after_lost_connections_are_no_tries_towards_max_refusals(tmp_path):
    """Regression (review 2026-12-04): every message in flight when a connection went had a
    try counted, so one that rode through a few broker restarts was dead-lettered at its first
    refusals. Only refusals count: the bad message is refused max_refusals - 1 times on its
    own (its transaction's refusal is the other try), however many connections were lost.
    New results keep coming, as at a site: a message is dead-lettered only when the broker
    refuses it while it takes others (refusals.py)."""

    class LosingThenRefusingOne(AcceptingBroker):
        def __init__(self, wakeup):
            super().__init__(wakeup)
            self.losses, self.refused_alone = 0, 0

        def losing(self):
            return self.losses < 4

        def refuses(self, body):
            if body == b"bad":
                spool.put([Message(f"new{self.refused_alone}-{self.losses}-{time.monotonic_ns()}",
                                   "/queue/q", {}, b"ok")])
            return body == b"bad"

        def send(self, destination, body, headers):
            if self.losing():
                return                          # no receipt: in flight until the loss below
            self.refused_alone += "receipt" in headers and self.refuses(body)
            super().send(destination, body, headers)

        def commit(self, transaction, receipt):
            if self.losing():
                self.events.lost = True         # what stomp.py's listener notes at a reset
                self.events.wakeup.set()
            else:
                super().commit(transaction, receipt)

        def close(self):                        # "connected again" at once
            self.losses += self.events.lost
            self.events.lost = False

    spool = Spool(str(tmp_path / "spool.sqlite"))
    spool.put([Message(f"m{i}", "/queue/q", {}, b"bad" if i == 5 else b"ok") for i in range(50)])
    publisher = Publisher(BrokerSettings(hosts=(("127.0.0.1", 1),), max_refusals=5, backoff_initial=0.01,
                                         backoff_max=0.05), spool, Health(), drain_timeout=1)
    broker = publisher.session.broker = LosingThenRefusingOne(publisher.wakeup)
    publisher.start()
    try:
        assert wait_until(lambda: not spool.stats().depth and spool.stats().dead_letters, timeout=20), spool.stats()
        assert broker.losses == 4
        [dead] = spool.dead_letters()
        assert dead.entry.message.message_id == "m5"
        assert broker.refused_alone == 4, broker.refused_alone
    finally:
        publisher.stop()
        publisher.join(5)
        spool.close()


class ClosingOnBigFrames(AcceptingBroker):
    """ActiveMQ's answer to a frame over its size limit: an ERROR that names no message (it
    could not read the receipt header), then the connection closes. Our next send then fails,
    usually before the ERROR is read; a new connection starts with nothing received."""

    def __init__(self, wakeup, limit):
        super().__init__(wakeup)
        self.limit, self.stored, self.pending, self.connects = limit, [], [], 0

    def connect(self):
        self.events, self.replies, self.pending = self.Events(self.wakeup), [], []
        self.is_connected = True
        self.connects += 1
        return None

    def send(self, destination, body, headers):
        if not self.is_connected:
            raise OSError(32, "Broken pipe")
        if len(body) > self.limit:
            self.reply("error", message="The maximum frame size was exceeded")
            self.is_connected, self.events.lost = False, True
            return
        if "receipt" in headers:
            self.stored.append(body)
        else:
            self.pending.append(body)
        super().send(destination, body, headers)

    def begin(self, transaction):
        if not self.is_connected:
            raise OSError(32, "Broken pipe")
        super().begin(transaction)
        self.pending = []

    def commit(self, transaction, receipt):
        if not self.is_connected:
            raise OSError(32, "Broken pipe")
        self.stored.extend(self.pending)
        super().commit(transaction, receipt)


def test_a_broker_that_stops_taking_messages_right_after_a_receipt_dead_letters_nothing(tmp_path):
    """Review 2026-12-06: "refusing all" needed 30 s without a receipt, so a broker that took
    1,000 messages and then refused everything (store full) had every message of the window
    refused max_refusals times within seconds: dead-lettered, and past max_dead_letters
    deleted. A message is now dead-lettered only if the broker took another after its first refusal."""

    class AcceptsThenRefusesAll(AcceptingBroker):
        def __init__(self, wakeup, good):
            super().__init__(wakeup)
            self.good, self.seen, self.refusals = good, 0, 0

        def refuses(self, body):
            self.seen += 1
            refused = self.seen > self.good
            self.refusals += refused
            return refused

    spool = Spool(str(tmp_path / "spool.sqlite"), max_dead_letters=1000)
    spool.put([Message(f"m{i}", "/queue/q", {}, b"ok") for i in range(5000)])
    publisher = Publisher(BrokerSettings(hosts=(("127.0.0.1", 1),), backoff_initial=0.05, backoff_max=0.2),
                          spool, Health(), drain_timeout=1)
    broker = publisher.session.broker = AcceptsThenRefusesAll(publisher.wakeup, good=1000)
    publisher.start()
    try:
        assert wait_until(lambda: broker.refusals > 5 * 1000, timeout=30), broker.refusals
        stats = spool.stats()
        assert (stats.dead_letters, stats.dead_letters_dropped) == (0, 0), stats
        assert stats.depth == 4000, stats
    finally:
        publisher.stop()
        publisher.join(5)
        spool.close()


class ClosingAfterNamedRefusal(ClosingOnBigFrames):
    """RabbitMQ after a channel error (access refused), ActiveMQ after a fatal one: an ERROR
    that names the message, then the connection closes; the next send fails first."""

    def send(self, destination, body, headers):
        if not self.is_connected:
            raise OSError(32, "Broken pipe")
        if body == b"bad":
            named = {"receipt-id": headers["receipt"]} if "receipt" in headers else {}
            self.reply("error", message="access refused", **named)
            self.is_connected, self.events.lost = False, True
            return
        if "receipt" in headers:
            self.stored.append(body)
            return AcceptingBroker.send(self, destination, body, headers)
        self.pending.append(body)
        AcceptingBroker.send(self, destination, body, headers)


@pytest.mark.parametrize("kind", ["activemq", "rabbitmq"])
def test_a_message_refused_by_name_just_before_the_broker_closes_is_dead_lettered(tmp_path, kind):
    """Review 2026-12-06: the ERROR naming the message was left unread when the next send
    failed on the closed connection, so no try was counted, the message went first again on
    every new connection, and publishing stopped for good (41,709 connects in 10 s)."""
    spool = Spool(str(tmp_path / "spool.sqlite"))
    spool.put([Message(f"m{i}", "/queue/q", {}, b"bad" if i == 5 else f"ok {i}".encode()) for i in range(200)])
    publisher = Publisher(BrokerSettings(hosts=(("127.0.0.1", 1),), max_refusals=3, max_in_flight=20, kind=kind,
                                         backoff_initial=0.05, backoff_max=0.1), spool, Health(), drain_timeout=1)
    broker = publisher.session.broker = ClosingAfterNamedRefusal(publisher.wakeup, limit=1 << 20)
    publisher.start()
    try:
        assert wait_until(lambda: spool.stats().depth == 0, timeout=20), (spool.stats(), broker.connects)
        [dead] = spool.dead_letters()
        assert dead.entry.message.message_id == "m5" and "access refused" in dead.reason
        assert sorted(set(broker.stored)) == sorted(f"ok {i}".encode() for i in range(200) if i != 5)
        assert broker.connects < 50, broker.connects
    finally:
        publisher.stop()
        publisher.join(5)
        spool.close()


def test_a_message_over_the_brokers_frame_limit_is_dead_lettered_and_the_rest_go_through(tmp_path):
    """Regression (known limit until 2026-11-30): the broker's ERROR for an oversize frame names
    no message and closes the connection, so the publisher sent the same message first after
    every reconnect and outbound stalled on it for ever. With more messages waiting than fit in
    flight, the next send fails before the ERROR is read: it must count all the same."""
    spool = Spool(str(tmp_path / "spool.sqlite"))
    spool.put([Message(f"m{i}", "/queue/q", {}, b"x" * 5000 if i == 5 else f"ok {i}".encode())
               for i in range(200)])
    publisher = Publisher(BrokerSettings(hosts=(("127.0.0.1", 1),), max_refusals=3, max_in_flight=20,
                                         backoff_initial=0.05, backoff_max=0.1), spool, Health(), drain_timeout=1)
    broker = publisher.session.broker = ClosingOnBigFrames(publisher.wakeup, limit=1000)
    publisher.start()
    try:
        assert wait_until(lambda: spool.stats().depth == 0, timeout=20), (spool.stats(), broker.connects)
        [dead] = spool.dead_letters()
        assert dead.entry.message.message_id == "m5"
        assert "maximum frame size" in dead.reason, dead.reason
        assert sorted(set(broker.stored)) == sorted(f"ok {i}".encode() for i in range(200) if i != 5)
    finally:
        publisher.stop()
        publisher.join(5)
        spool.close()


def test_the_publishers_connection_leaves_tcp_acks_to_the_kernel(tmp_path):
    """A publisher's own frames carry its ACKs; quick ACKs there only cost (ack_at_once)."""
    spool = Spool(str(tmp_path / "out.sqlite"))
    publisher = Publisher(BrokerSettings(hosts=(("127.0.0.1", 1),)), spool, Health(), drain_timeout=1)
    try:
        assert publisher.session.broker.quick_ack is False
    finally:
        spool.close()


class HoldingBroker(AcceptingBroker):
    """Accepts every frame and answers none until ``release()``: what is in flight piles up."""

    def __init__(self, wakeup):
        super().__init__(wakeup)
        self.sent, self.held = [], []

    def send(self, destination, body, headers):
        self.sent.append(len(body))

    def commit(self, transaction, receipt):
        self.held.append(receipt)

    def release(self):
        for receipt in self.held:
            self.reply("receipt", **{"receipt-id": receipt})
        self.held = []


def test_big_messages_in_flight_are_bounded_in_bytes_not_only_in_number(tmp_path):
    """Regression (review 2026-12-04): the window counted messages only, and a transaction's
    frames are joined into one write: a spool of big messages put up to 1,000 of them in
    memory. Now at most MAX_IN_FLIGHT_BYTES of bodies (and one more message) wait for receipts,
    BATCH_BYTES a transaction, and at least one message goes however big."""
    from msg_nagios_bridge.outbound import publisher as publisher_module
    spool = Spool(str(tmp_path / "spool.sqlite"))
    size = 3 << 20
    spool.put([Message(f"big{i}", "/queue/q", {}, bytes([65 + i % 26]) * size) for i in range(12)]
              + [Message("huge", "/queue/q", {}, b"h" * (publisher_module.BATCH_BYTES + 1))])
    health = Health()
    publisher = Publisher(BrokerSettings(hosts=(("127.0.0.1", 1),)), spool, health, drain_timeout=1)
    broker = publisher.session.broker = HoldingBroker(publisher.wakeup)
    publisher.start()
    try:
        most = publisher_module.MAX_IN_FLIGHT_BYTES // size + 1
        assert wait_until(lambda: len(broker.sent) == most, 10), broker.sent
        time.sleep(0.3)
        assert len(broker.sent) == most and len(broker.held) == most   # 6 MiB + 3 MiB > BATCH_BYTES
        for _ in range(10):
            broker.release()
            if wait_until(lambda: health.counter("published") == 13, 0.5):
                break
        assert health.counter("published") == 13 and spool.stats().depth == 0
        assert broker.sent[-1] == publisher_module.BATCH_BYTES + 1       # alone in its transaction
    finally:
        publisher.stop()
        publisher.join(5)
        spool.close()


def test_messages_in_flight_are_kept_without_their_bodies(tmp_path):
    """What waits for a receipt is each message's id, tries, message id and destination: the
    bodies and headers stay in the spool (a thousand whole entries held 3.2 MiB of a site
    bridge's 50 MB). 10 MiB of bodies in flight hold well under 1 MiB of Python objects."""
    import gc
    import tracemalloc
    spool = Spool(str(tmp_path / "spool.sqlite"))
    spool.put([Message(f"m{i}", "/queue/q", {"h": "v"}, bytes([65 + i]) * (1 << 20)) for i in range(10)])
    health = Health()
    publisher = Publisher(BrokerSettings(hosts=(("127.0.0.1", 1),)), spool, health, drain_timeout=1)
    broker = publisher.session.broker = HoldingBroker(publisher.wakeup)
    tracemalloc.start()
    publisher.start()
    try:
        assert wait_until(lambda: len(broker.sent) == 10 and len(broker.held) >= 1, 10), broker.sent
        time.sleep(0.2)
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
        assert held < 1 << 20, f"{held} bytes held with 10 MiB in flight"
        broker.release()
        assert wait_until(lambda: health.counter("published") == 10, 5)
        assert spool.stats().depth == 0
    finally:
        tracemalloc.stop()
        publisher.stop()
        publisher.join(5)
        spool.close()
