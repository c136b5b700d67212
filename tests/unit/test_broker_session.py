"""The connect/backoff loop the publisher and subscriber share (broker/session.py), against
real sockets on 127.0.0.1: a stop ends a connect under way at once, and a worker sleeps on
its one wake-up (no poll interval between a new message and its SEND)."""
import enum
import logging
import socket
import threading
import time

import pytest
from hypothesis import example, given, settings as hypothesis_settings, strategies as st

from msg_nagios_bridge.broker.connection import BrokerConnection
from msg_nagios_bridge.broker.session import BrokerSession
from msg_nagios_bridge.config import BrokerSettings, TlsSettings
from msg_nagios_bridge.daemon.health import Health
from msg_nagios_bridge.model import Message
from msg_nagios_bridge.outbound.publisher import Publisher
from msg_nagios_bridge.spool import Spool
from msg_nagios_bridge.wakeup import Wakeup
from tests.sandbox.ports import wait_until
from tests.unit.test_publisher import AcceptingBroker

STOP_WITHIN = 1.0       # seconds a stop may take while a connect is under way


class SilentServer:
    """Accepts TCP connections and never sends a byte: a hung broker whose kernel still
    answers (for TLS, the handshake never completes either)."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.port = self.server.getsockname()[1]
        self.accepted = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.accepted.append(self.server.accept()[0])
            except OSError:
                return

    def close(self):
        self.server.close()
        for client in self.accepted:
            client.close()


@pytest.fixture
def silent():
    server = SilentServer()
    yield server
    server.close()


def settings(port, **more):
    return BrokerSettings(hosts=(("127.0.0.1", port),), connect_timeout=30, backoff_initial=30,
                          backoff_max=60, heartbeat_ms=0, **more)


def stop_time(session, started_connecting):
    """Run session.connect() in a thread; once ``started_connecting()``, stop; return how long
    the stop took to end the connect, and what connect() returned."""
    result = []
    thread = threading.Thread(target=lambda: result.append(session.connect()), daemon=True)
    thread.start()
    assert wait_until(started_connecting, timeout=10), "the connect never started"
    time.sleep(0.2)                         # well inside the connect
    stopped_at = time.monotonic()
    session.stop()
    thread.join(10)
    assert not thread.is_alive()
    return time.monotonic() - stopped_at, result[0]


@pytest.mark.parametrize("tls", [False, True], ids=["waiting for CONNECTED", "in the TLS handshake"])
def test_a_stop_ends_a_connect_to_a_broker_that_never_answers(silent, tls):
    """Regression (issue 14): a stop waited out connect_timeout (10 s by default) when the
    broker accepted TCP and never answered."""
    health = Health()
    session = BrokerSession("publisher", settings(silent.port, tls=TlsSettings(enabled=tls, verify=False)),
                            health, Wakeup(), logging.getLogger("test"), up_state=lambda address: "connected")
    took, connected = stop_time(session, lambda: silent.accepted)
    assert took < STOP_WITHIN, f"the stop took {took:.2f} s"
    assert connected is False and session.broker.conn is None
    assert health.snapshot()["states"]["publisher"] == "connecting"
    session.broker.discard()


def test_a_stop_ends_the_backoff_after_a_failed_connect():
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))           # bound, not listening: connections are refused
    port = closed.getsockname()[1]
    health = Health()
    session = BrokerSession("subscriber", settings(port), health, Wakeup(), logging.getLogger("test"),
                            up_state=lambda address: "subscribed", label="subscriber")
    took, connected = stop_time(session, lambda: health.snapshot()["states"]["subscriber"].startswith("disconnected"))
    assert took < STOP_WITHIN and connected is False
    assert "connection refused" in health.snapshot()["states"]["subscriber"].lower()
    closed.close()
    session.broker.discard()


def test_a_publisher_stopped_while_connecting_ends_at_once(silent, tmp_path):
    with Spool(str(tmp_path / "spool.sqlite")) as spool:
        publisher = Publisher(settings(silent.port), spool, Health(), drain_timeout=1)
        publisher.start()
        assert wait_until(lambda: silent.accepted, timeout=10)
        time.sleep(0.2)
        stopped_at = time.monotonic()
        publisher.stop()
        publisher.join(10)
        assert not publisher.is_alive() and time.monotonic() - stopped_at < STOP_WITHIN


class SlowReceipts(AcceptingBroker):
    """Answers the first message only when told: the window then holds one message in
    flight, so only the spool's wake-up can tell the publisher about the next ones."""

    def __init__(self, wakeup):
        super().__init__(wakeup)
        self.sent, self.held = [], []

    def send(self, destination, body, headers):
        self.sent.append(body)
        if "receipt" in headers and len(self.sent) == 1:
            self.held.append(headers["receipt"])
            return
        super().send(destination, body, headers)

    def commit(self, transaction, receipt):
        if not self.held and len(self.sent) == 1:
            self.held.append(receipt)
            return
        super().commit(transaction, receipt)


def test_a_message_put_while_a_receipt_is_awaited_goes_out_at_once(tmp_path):
    """Regression (issue 14): with a receipt outstanding the publisher waited on the broker
    only and found new spool entries on a 0.2 s poll."""
    with Spool(str(tmp_path / "spool.sqlite")) as spool:
        publisher = Publisher(BrokerSettings(hosts=(("127.0.0.1", 1),)), spool, Health(), drain_timeout=1)
        broker = publisher.session.broker = SlowReceipts(publisher.wakeup)
        publisher.start()
        try:
            spool.put([Message("first", "/queue/q", {}, b"first")])
            assert wait_until(lambda: broker.held, timeout=5)
            started = time.monotonic()
            for i in range(10):
                spool.put([Message(f"m{i}", "/queue/q", {}, b"m%d" % i)])
                assert wait_until(lambda: len(broker.sent) == i + 2, timeout=5, interval=0.001)
            took = time.monotonic() - started
            assert took < 1.0, f"10 messages took {took:.2f} s to go out (a 0.2 s poll: 2 s)"
        finally:
            publisher.stop()
            publisher.join(5)


class EchoingHeartbeats:
    """Answers CONNECTED with the heart-beats the client asked for, swapped (as ActiveMQ does),
    and keeps the CONNECT frame it got."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.port = self.server.getsockname()[1]
        self.connect_frame = b""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        client, _ = self.server.accept()
        while b"\x00" not in self.connect_frame:
            self.connect_frame += client.recv(4096)
        asked = dict(line.split(":", 1) for line in self.connect_frame.decode().split("\n")[1:] if ":" in line)
        cx, cy = asked["heart-beat"].split(",")
        client.sendall(f"CONNECTED\nversion:1.2\nheart-beat:{cy},{cx}\n\n\x00".encode())
        self.client = client

    def close(self):
        self.server.close()


def test_the_broker_is_asked_for_heartbeats_twice_as_often_as_it_is_given_up():
    """ActiveMQ may leave almost two of its intervals between heart-beats (it skips one when it
    sent anything since its last check): asked for heartbeat_ms / 2, it is never silent longer
    than heartbeat_ms, and the bridge gives it up after 1.5 x heartbeat_ms, as before."""
    server = EchoingHeartbeats()
    broker = BrokerConnection(BrokerSettings(hosts=(("127.0.0.1", server.port),), heartbeat_ms=4000,
                                             connect_timeout=5))
    try:
        assert broker.connect() is None
        assert b"\nheart-beat:4000,2000\n" in server.connect_frame
        assert broker.conn.receive_sleep == pytest.approx(6.0)
    finally:
        broker.discard()
        server.close()


def test_broker_sockets_send_each_frame_at_once(silent):
    """TCP_NODELAY: a frame is never held back for the peer's delayed ACK of the one before
    (Nagle's algorithm cost 27 ms per result at 1,000/s, docs/performance.md)."""
    from msg_nagios_bridge.broker.connection import open_socket
    sock = open_socket(("127.0.0.1", silent.port), 5.0, None)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        sock.close()


class TinyStompServer:
    """Answers CONNECT with CONNECTED (no heart-beats) and keeps every byte received after it."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.port = self.server.getsockname()[1]
        self.received = b""
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        conn, _ = self.server.accept()
        data = b""
        while b"\0" not in data:
            data += conn.recv(4096)
        conn.sendall(b"CONNECTED\nversion:1.2\nheart-beat:0,0\n\n\0")
        data = data.split(b"\0", 1)[1]
        while True:
            with self.lock:
                self.received += data
            data = conn.recv(65536)
            if not data:
                return

    def frames(self, command):
        with self.lock:
            return [f for f in self.received.split(b"\0") if f.lstrip(b"\n").startswith(command + b"\n")]


def test_the_acks_of_a_batch_go_out_in_one_write(monkeypatch):
    """ack_all: one write for the whole batch (one system call instead of one per message),
    each ACK a frame of its own that the broker receives."""
    from msg_nagios_bridge.broker import connection
    server = TinyStompServer()
    writes = []
    send_now = connection._Transport._send_now

    def counting(self, data):
        writes.append(data)
        return send_now(self, data)
    monkeypatch.setattr(connection._Transport, "_send_now", counting)
    broker = BrokerConnection(settings(server.port))
    assert broker.connect() is None
    try:
        writes.clear()
        broker.ack_all([f"ack-{i}" for i in range(50)])
        assert len(writes) == 1 and writes[0].count(b"ACK\n") == 50
        assert wait_until(lambda: len(server.frames(b"ACK")) == 50, 5)
        assert [f.split(b"id:")[1].split(b"\n")[0] for f in server.frames(b"ACK")] == \
            [f"ack-{i}".encode() for i in range(50)]
        broker.conn.ack("alone")            # outside ack_all: written at once, as before
        assert len(writes) == 2
    finally:
        broker.close()


@pytest.mark.parametrize("kind", ["activemq", "rabbitmq"])
def test_messages_taken_from_a_numbered_spool_reach_the_socket_with_their_headers(tmp_path, kind):
    """BrokerConnection.send_stored on entries as the publisher takes them (numbered by put(),
    their headers left as stored text): each SEND carries the message's headers, its number and
    the added header, whether made from the text or from the headers read back; on RabbitMQ an
    ``expires`` also gives an ``expiration``."""
    import stomp.utils
    from msg_nagios_bridge.broker import kinds
    server = TinyStompServer()
    broker = BrokerConnection(settings(server.port, kind=kind))
    spool = Spool(str(tmp_path / "spool.sqlite"))
    later = str(int(time.time() * 1000) + 600_000)
    header_sets = [{"persistent": "true", "route": "r", "site": "S"}, {"route": "r", "vo": "é"},
                   {"route": "r", "note": "a:b", "odd": ":"}, {"route": "r", "expires": later},
                   {"route": "r", "expires": "0"}, {"route": "r", "receipt": "theirs"}, {"a\\b": "c"}, {}]
    spool.put([Message(f"m{i}", "/queue/q", headers, b"body %d" % i) for i, headers in enumerate(header_sets)],
              numbered=True)
    assert broker.connect() is None
    try:
        entries = spool.take(100)
        for entry in entries:
            broker.send_stored(entry.message.destination, entry.message.body, entry.message.headers,
                               "receipt", f"r-{entry.entry_id}")
        assert wait_until(lambda: len(server.frames(b"SEND")) == len(header_sets), 5)
        numbers = []
        for entry, frame in zip(entries, server.frames(b"SEND")):
            parsed = stomp.utils.parse_frame(frame.lstrip(b"\n"))
            expected = dict(entry.message.headers, receipt=f"r-{entry.entry_id}")
            if "route" in expected:
                numbers.append(int(parsed.headers["route_seq"].rpartition(":")[2]))
            sent = dict(parsed.headers)
            if kind == "rabbitmq" and expected.get("expires", "0") != "0":
                assert 0 < int(sent.pop("expiration")) <= 600_000
            assert sent == dict(expected, destination="/queue/q", **{"content-length": str(len(entry.message.body))})
            assert parsed.body == entry.message.body
        assert numbers == list(range(1, 7))                     # numbered by put(), in order
        assert kinds.adds_no_headers(kind, '{"expires":"1"}') == (kind != "rabbitmq")
    finally:
        broker.close()
        spool.close()


def test_a_send_frame_encoded_by_the_bridge_is_what_stomp_py_would_write():
    """The publisher's SENDs (send_frame) parse, with stomp.py's own parser, to the headers and
    body stomp.py's send() writes, hostile header text included."""
    import stomp.utils
    from stomp.protocol import Protocol12
    from msg_nagios_bridge.broker.connection import send_frame

    class Capture:
        def transmit(self, frame):
            self.frame = stomp.utils.pack(stomp.utils.convert_frame(frame))
    protocol = Protocol12.__new__(Protocol12)
    protocol.transport, protocol.auto_content_length, protocol.version = Capture(), True, "1.2"
    headers = {"persistent": "true", "site": "SITE-A", "transaction": "tx-1-5", "result_id": "a55c53c9",
               "odd": "a:b\\c\nd\re", "é": "ünïcode"}
    body = b"serviceURI: ce01\nEOT\n\x00 after a NUL"
    destination = "/topic/grid.probe.metricOutput.EGEE.site.SITE-A"
    protocol.send(destination, body, headers=dict(headers))
    # stomp.py's parser takes a frame without its closing NUL.
    theirs = stomp.utils.parse_frame(protocol.transport.frame[:-1])
    ours = stomp.utils.parse_frame(send_frame(destination, body, headers)[:-1])
    assert ours.cmd == theirs.cmd == "SEND"
    assert ours.headers == theirs.headers and ours.body == theirs.body == body
    assert ours.headers["odd"] == "a:b\\c\nd\re" and ours.headers["content-length"] == str(len(body))


def _send_frame_header_by_header(destination, body, headers):
    """send_frame as it was written first, each header escaped on its own: the reference."""
    from msg_nagios_bridge.broker.connection import _escaped
    lines = [f"SEND\ndestination:{_escaped(destination)}\ncontent-length:{len(body)}\n"]
    for name, value in headers.items():
        if name not in ("destination", "content-length"):
            lines.append(f"{_escaped(name)}:{_escaped(str(value))}\n")
    lines.append("\n")
    return "".join(lines).replace("\0", "\ufffd").encode("utf-8") + body + b"\0"


# Header text made mostly of what STOMP escapes and of the separators send_frame joins with.
_HEADER_TEXT = st.lists(st.sampled_from(["\\", "\n", ":", "\r", "\x00", "\x01", "a", "é", "\\c", "\x00:"])
                        | st.text(max_size=4), max_size=6).map("".join)


class _TextEnum(str, enum.Enum):
    A = "a:b"


class _Shown:
    """A value whose format() and str() differ: a header is its str()."""
    def __format__(self, spec):
        return "formatted"

    def __str__(self):
        return "str:\\"


_ODD_VALUES = st.sampled_from([_TextEnum.A, enum.IntEnum("N", "ONE").ONE, _Shown(), 1.5, None, True])


@hypothesis_settings(max_examples=1500, deadline=None)
@given(st.dictionaries(_HEADER_TEXT, _HEADER_TEXT | st.integers() | _ODD_VALUES, max_size=6),
       _HEADER_TEXT)
@example({}, "/queue/q")
@example({"k": _TextEnum.A, "f": _Shown()}, "/queue/q")
@example({"destination": "/queue/other", "content-length": "9", "a": "b"}, "/queue/q")
@example({"a\x00b": "c", "d": "e\x01f"}, "/queue/q")
def test_send_frame_escapes_all_headers_at_once_as_it_does_one_by_one(headers, destination):
    from msg_nagios_bridge.broker.connection import send_frame
    body = b"body\x00\n"
    assert send_frame(destination, body, headers) == _send_frame_header_by_header(destination, body, headers)


# Mostly plain text (what send_frame_stored takes as it is), with what it must not take.
_STORED_TEXT = st.from_regex(r"[ -~]{0,5}", fullmatch=True) | _HEADER_TEXT | st.sampled_from(
    ['"', ":", "\\", "\\c", "{", "\n", "é", "destination", "content-length", "transaction", "receipt", "route_seq"])
_PLAIN_CHARACTERS = set(map(chr, range(0x80))) - set("\\\n\r\x00\x01")


@hypothesis_settings(max_examples=1500, deadline=None)
@given(st.dictionaries(_STORED_TEXT, _STORED_TEXT | st.integers() | st.none(), max_size=6),
       st.sampled_from(["transaction", "receipt", "a"]), _STORED_TEXT, st.booleans())
@example({"persistent": "true", "site": "S", "route": "r"}, "transaction", "tx-1-2", True)
@example({"transaction": "mine"}, "transaction", "tx-1-2", False)
@example({"destination": "/queue/x"}, "receipt", "1-2", False)
@example({"a": ":", "b": ":x:", "c": "", "d": ":"}, "receipt", "1:2", True)
@example({"a": "b", ":": "c", "d": "e"}, "receipt", "1", False)
@example({"a": "b", "x": "\ndestination:/queue/evil"}, "receipt", "1", False)
def test_a_frame_made_from_the_stored_text_is_the_frame_of_its_headers(headers, name, value, numbered):
    """send_frame_stored, from a spool row's headers text (as put() writes it, numbered or
    not), gives send_frame's frame of the headers read back with the added header, byte for
    byte; and it takes every plain text (the publisher's usual case)."""
    from msg_nagios_bridge.broker.connection import send_frame, send_frame_stored
    from msg_nagios_bridge.spool import StoredHeaders, headers_dict, headers_text, with_header_first
    text = headers_text(headers) if headers else "{}"
    if numbered and "route_seq" not in headers:        # put first, as put() numbers a message
        text = with_header_first(text, "route_seq", "aB-c_1:7")
    read = headers_dict(text)
    frame = send_frame_stored("/queue/q", b"b\x00dy", StoredHeaders(text), name, value)
    if frame is not None:
        assert frame == send_frame("/queue/q", b"b\x00dy", dict(read, **{name: value}))
    plain = all(type(value) is str and set(name + value) <= _PLAIN_CHARACTERS for name, value in headers.items())
    if headers and plain and not next(iter(headers)).startswith("{") and not {name, "destination", "content-length"} & set(read):
        assert frame is not None


def test_a_routed_message_is_sent_from_its_stored_text():
    """The bridge's own messages take send_frame_stored's way (not only the tests' texts)."""
    from msg_nagios_bridge.broker.connection import send_frame, send_frame_stored
    from msg_nagios_bridge.spool import StoredHeaders, encode
    from tests.unit.test_routing import ALL, JSON_CE, SETTINGS, result
    from msg_nagios_bridge.outbound import routing
    for route in (ALL, JSON_CE):
        message = routing.build_message(route, SETTINGS.site, result(), now_ms=1000)
        stored = StoredHeaders(encode(message)[2])
        frame = send_frame_stored(message.destination, message.body, stored, "transaction", "tx-1-1")
        assert frame is not None and frame == send_frame(message.destination, message.body,
                                                         dict(stored, transaction="tx-1-1"))
        assert dict(stored) == message.headers


def test_a_nul_in_a_header_never_ends_the_send_frame():
    """STOMP has no escape for NUL, which ends a frame: in a header it becomes U+FFFD, so that
    one SEND stays one frame (a NUL in the body is safe: content-length)."""
    import stomp.utils
    from msg_nagios_bridge.broker.connection import send_frame
    frame = send_frame("/queue/q\x00BOGUS", b"body\x00NUL", {"vo": "ops\x00\nBOGUS:1"})
    assert frame.count(b"\x00") == 2 and frame.endswith(b"\x00")        # the body's and the end
    parsed = stomp.utils.parse_frame(frame[:-1])
    assert parsed.cmd == "SEND" and parsed.headers["destination"] == "/queue/q\ufffdBOGUS"
    assert parsed.headers["vo"] == "ops\ufffd\nBOGUS:1" and parsed.body == b"body\x00NUL"


def test_an_ack_frame_encoded_by_the_bridge_is_what_stomp_py_would_write():
    """The subscriber's ACKs (ack_frame) are byte for byte what stomp.py's ack() writes, for
    ActiveMQ's ids (colons), RabbitMQ's, and hostile text."""
    import stomp.utils
    from stomp.protocol import Protocol12
    from msg_nagios_bridge.broker.connection import ack_frame

    class Capture:
        def transmit(self, frame):
            self.frame = stomp.utils.pack(stomp.utils.convert_frame(frame))
    protocol = Protocol12.__new__(Protocol12)
    protocol.transport, protocol.auto_content_length, protocol.version = Capture(), True, "1.2"
    for ack_id in ("ID:host-35555-1764690000000-5:1:-1:1:42", "T_0@@session-kq1bcUtz1a8bDJzcMkVFeQ@@1", "",
                   "a:b\\c\nd\re", "ünï"):
        protocol.ack(ack_id)
        assert ack_frame(ack_id) == protocol.transport.frame, ack_id


def test_a_send_on_a_connection_the_broker_closed_raises_what_the_owners_handle():
    """Regression (seen once, RabbitMQ closing on an oversized frame): stomp.py's own send read
    the socket again after its check, so a send racing the reader thread's cleanup raised
    AttributeError and ended the publisher thread. Now: NotConnectedException (a
    StompException) without a socket, OSError on a closed one, never anything else."""
    import socket as socket_module

    import stomp.exception
    from msg_nagios_bridge.broker import connection

    transport = connection._Transport(("127.0.0.1", 1), 1.0, "localhost", False, None, lambda sock: None,
                                      connection._Abort())
    with pytest.raises(stomp.exception.StompException):
        transport.send(b"ACK\nid:1\n\n\0")
    ours, theirs = socket_module.socketpair()
    transport.socket = ours
    transport.send(b"ACK\nid:1\n\n\0")
    assert theirs.recv(100) == b"ACK\nid:1\n\n\0"
    ours.close()
    with pytest.raises(OSError):
        transport.send(b"ACK\nid:2\n\n\0")
    theirs.close()


def test_a_send_reads_the_socket_once_so_the_reader_threads_cleanup_cannot_race_it():
    """The socket attribute goes None (the reader thread's cleanup) after it was first read:
    the send uses the socket it read (stomp.py's read it again: AttributeError)."""
    import socket as socket_module

    from msg_nagios_bridge.broker import connection

    class Racing(connection._Transport):
        reads = 0
        _socket = None

        @property
        def socket(self):
            self.reads += 1
            return self._socket if self.reads <= 2 else None

        @socket.setter
        def socket(self, value):
            self._socket = value

    transport = Racing(("127.0.0.1", 1), 1.0, "localhost", False, None, lambda sock: None, connection._Abort())
    ours, theirs = socket_module.socketpair()
    transport.socket, transport.reads = ours, 0
    try:
        transport.send(b"ACK\nid:1\n\n\0")
        assert theirs.recv(100) == b"ACK\nid:1\n\n\0"
    finally:
        ours.close()
        theirs.close()


def _tcp_pair():
    import socket as socket_module
    listener = socket_module.create_server(("127.0.0.1", 0))
    client = socket_module.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    return client, server


def test_ack_at_once_puts_the_socket_back_in_quick_ack_mode():
    """TCP_QUICKACK reads 0 once the kernel is delaying ACKs (set here by hand); ack_at_once
    makes it 1 again. Without it, ActiveMQ's Nagle holds each frame until the delayed ACK."""
    import socket as socket_module

    from msg_nagios_bridge.broker import connection

    if not hasattr(socket_module, "TCP_QUICKACK"):
        pytest.skip("TCP_QUICKACK is Linux's")
    client, server = _tcp_pair()
    try:
        client.setsockopt(socket_module.IPPROTO_TCP, socket_module.TCP_QUICKACK, 0)
        assert client.getsockopt(socket_module.IPPROTO_TCP, socket_module.TCP_QUICKACK) == 0
        connection.ack_at_once(client)
        assert client.getsockopt(socket_module.IPPROTO_TCP, socket_module.TCP_QUICKACK) == 1
    finally:
        client.close()
        server.close()
    connection.ack_at_once(client)      # closed: nothing raised
    connection.ack_at_once(None)


def test_every_read_of_a_consumers_socket_asks_for_a_quick_ack_and_only_a_consumers(monkeypatch):
    from msg_nagios_bridge.broker import connection

    asked = []
    monkeypatch.setattr(connection, "ack_at_once", asked.append)
    for quick_ack, expected in ((True, 2), (False, 0)):
        asked.clear()
        transport = connection._Transport(("127.0.0.1", 1), 1.0, "localhost", False, None, lambda sock: None,
                                          connection._Abort(), quick_ack=quick_ack)
        client, server = _tcp_pair()
        transport.socket = client
        try:
            for frame in (b"MESSAGE\n\n1\0", b"MESSAGE\n\n2\0"):
                server.sendall(frame)
                assert transport.receive() == frame
            assert asked == [client] * expected
        finally:
            client.close()
            server.close()
