"""A broker that stops reading must not hold the publisher for ever.

A STOMP server on 127.0.0.1 that answers CONNECTED, then never reads again while it keeps
sending heart-beats: what ActiveMQ's producer flow control ("Stopping producer") or a broker
whose kernel still answers looks like from the bridge. Making a real ActiveMQ do exactly this
on demand is not practical, hence the small server here.
"""
import socket
import threading
import time

from msg_nagios_bridge.config import BrokerSettings
from msg_nagios_bridge.health import Health
from msg_nagios_bridge.model import Message
from msg_nagios_bridge.sinks.publisher import Publisher
from msg_nagios_bridge.spool import Spool


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
