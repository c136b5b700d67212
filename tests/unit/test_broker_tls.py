"""The TLS connection broker.py makes, against a small TLS STOMP server on 127.0.0.1: the peer
check runs after the handshake and before any STOMP frame, and a refusal (or a check that
breaks) closes the connection with the reason. (Real ActiveMQ: tests/integration/test_tls.py.)"""
import ssl
import socket
import threading

import pytest

from msg_nagios_bridge.broker.connection import BrokerConnection
from msg_nagios_bridge.config import BrokerSettings, TlsSettings
from tests.sandbox.pki import Authority
from tests.sandbox.ports import wait_until


class TlsStompServer:
    """Completes TLS handshakes (client certificate required), answers CONNECT with CONNECTED,
    and records what each connection sent."""

    def __init__(self, authority):
        cert, key = authority.issue("server", "server.test", hosts=("127.0.0.1",))
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.context.load_verify_locations(authority.cert_file)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.received = []          # per TLS connection: the bytes it sent
        self.clients = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        try:
            with self.context.wrap_socket(client, server_side=True) as tls:
                self.clients.append(tls)
                data = bytearray()
                self.received.append(data)
                while chunk := tls.recv(4096):
                    data += chunk
                    if data.startswith((b"CONNECT", b"STOMP")) and b"\x00" in data and b"CONNECTED" not in data:
                        tls.sendall(b"CONNECTED\nversion:1.2\nheart-beat:0,0\n\n\x00")
                        data += b"(CONNECTED sent)"
        except OSError:
            pass

    def drop_clients(self):
        """What a broker that crashes or restarts does to its connections."""
        for tls in self.clients:
            tls.shutdown(socket.SHUT_RDWR)

    def close(self):
        self.server.close()


@pytest.fixture
def pki(tmp_path):
    authority = Authority(tmp_path / "pki")
    cert, key = authority.issue("client", "site-a.example.org", client=True)
    return authority, cert, key


@pytest.fixture
def server(pki):
    made = TlsStompServer(pki[0])
    yield made
    made.close()


def connection(pki, port, check_peer):
    authority, cert, key = pki
    tls = TlsSettings(enabled=True, ca_file=str(authority.cert_file), cert_file=str(cert), key_file=str(key))
    settings = BrokerSettings(hosts=(("127.0.0.1", port),), connect_timeout=5, heartbeat_ms=0, tls=tls)
    return BrokerConnection(settings, check_peer=check_peer)


def test_the_peer_check_sees_the_verified_certificate_and_lets_the_broker_in(pki, server):
    seen = []

    def check_peer(tls_socket):
        seen.append((tls_socket.getpeercert()["subject"], b"".join(server.received)))
        return None

    broker = connection(pki, server.port, check_peer)
    try:
        assert broker.connect() is None
        ((subject, sent_before_check),) = seen
        assert ((("commonName", "server.test"),) in subject) and not sent_before_check
        sock = broker.conn.transport.socket
        assert sock.version() in ("TLSv1.2", "TLSv1.3") and sock.context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert len(server.received) == 1        # one TLS connection, the one carrying STOMP
    finally:
        broker.discard()


def test_a_refusal_closes_the_connection_before_any_frame_and_says_why(pki, server):
    broker = connection(pki, server.port, lambda tls_socket: "revoked (serial 1f)")
    problem = broker.connect()
    assert problem == f"127.0.0.1:{server.port}: TLS: the broker's certificate was refused: revoked (serial 1f)"
    assert broker.conn is None
    assert wait_until(lambda: len(server.received) == 1, timeout=5)
    assert bytes(server.received[0]) == b""          # no CONNECT (no credentials) went out


def test_a_peer_check_that_breaks_refuses_the_broker(pki, server):
    def broken(tls_socket):
        raise ValueError("no CRL for this CA")

    broker = connection(pki, server.port, broken)
    problem = broker.connect()
    assert "TLS: the broker's certificate was refused: the trust check failed (ValueError: no CRL for this CA)" \
        in problem
    assert broker.conn is None


def test_a_broker_that_closes_the_connection_is_noticed_at_once(pki, server):
    """Regression: stomp.py 9 puts the TLS sockets it wraps into a non-blocking loop that reads
    a TLS end-of-file as "nothing yet", so a closed connection went unnoticed (until heart-beats
    timed out, and never with heart-beats off); the bridge's own socket stays blocking."""
    broker = connection(pki, server.port, None)
    try:
        assert broker.connect() is None
        server.drop_clients()
        assert wait_until(lambda: broker.events.lost, timeout=5)
        assert not broker.is_connected
    finally:
        broker.discard()


def test_a_hundred_tls_connections_in_a_row_all_connect(pki, server):
    """Regression (a fresh-clone CI run, then 8 of 200 here): stomp.py's reader thread and the
    writing thread used the TLS connection at once, which OpenSSL does not allow; a CONNECT frame
    was lost ("no CONNECTED frame") or the read failed with "[SSL] internal error". Reads and
    writes now take turns (broker._Transport)."""
    problems = []
    for _ in range(100):
        broker = connection(pki, server.port, None)
        try:
            problem = broker.connect()
            if problem is not None:
                problems.append(problem)
        finally:
            broker.discard()
    assert problems == []
