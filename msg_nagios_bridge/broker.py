"""A STOMP 1.2 connection to the first reachable broker of a failover list.

stomp.py's callbacks run on its receiver thread; here they only record what
happened (connected, receipts, errors, disconnection) and the owner's loop acts.
Two stomp.py behaviours are wrapped on purpose:

* ``connect(wait=True)`` waits forever when a broker accepts TCP but never
  answers CONNECTED (a hung broker), so we send CONNECT without waiting and
  wait for our own event with a timeout;
* stomp.py does not reconnect by itself and frames written into a dead socket
  vanish without error, so only receipts count as delivery, and the owner
  reconnects from its loop with capped backoff.
"""
from __future__ import annotations

import logging
import threading
from typing import List, Mapping, Optional, Tuple

import stomp
from stomp.exception import StompException

from .config import BrokerSettings

log = logging.getLogger(__name__)


class _Events(stomp.ConnectionListener):
    """Notes what stomp.py reports; acts on nothing."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wakeup = threading.Event()
        self.connected = threading.Event()
        # Receipts and errors in the order they arrived: an ERROR for a SEND inside a
        # transaction comes before that transaction's COMMIT receipt, and must be seen first.
        self.replies: List[Tuple[str, Mapping[str, str], str]] = []
        self.messages: List[Tuple[Mapping[str, str], str]] = []
        self.lost = False

    def on_connected(self, frame) -> None:
        self.connected.set()
        self.wakeup.set()

    def on_receipt(self, frame) -> None:
        with self.lock:
            self.replies.append(("receipt", dict(frame.headers), ""))
        self.wakeup.set()

    def on_error(self, frame) -> None:
        body = frame.body or ""
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        with self.lock:
            self.replies.append(("error", dict(frame.headers), body))
        self.wakeup.set()

    def on_message(self, frame) -> None:
        with self.lock:
            self.messages.append((dict(frame.headers), frame.body))
        self.wakeup.set()

    def on_disconnected(self) -> None:
        self.lost = True
        self.wakeup.set()

    def on_heartbeat_timeout(self) -> None:
        self.lost = True
        self.wakeup.set()


class BrokerConnection:
    """One connection attempt cycle over ``settings.hosts``, in order."""

    def __init__(self, settings: BrokerSettings, client_id: str = "", auto_decode: bool = True):
        self.settings = settings
        self.client_id = client_id
        # Subscribers take bodies as bytes: stomp.py's decoding would hide invalid UTF-8.
        self.auto_decode = auto_decode
        self.events = _Events()
        self.conn: Optional[stomp.Connection12] = None
        self.address: Optional[Tuple[str, int]] = None

    def connect(self) -> Optional[str]:
        """Try each broker once, in order. Returns None when connected, else why not."""
        problems = []
        for host_port in self.settings.hosts:
            problem = self._connect_one(host_port)
            if problem is None:
                return None
            problems.append(f"{host_port[0]}:{host_port[1]}: {problem}")
        return "; ".join(problems)

    def _connect_one(self, host_port: Tuple[str, int]) -> Optional[str]:
        s = self.settings
        self.events = _Events()
        conn = stomp.Connection12(
            [host_port],
            heartbeats=(s.heartbeat_ms, s.heartbeat_ms),
            reconnect_attempts_max=1,
            timeout=s.connect_timeout,
            vhost=s.vhost or host_port[0],
            auto_decode=self.auto_decode,
        )
        conn.set_listener("bridge", self.events)
        headers = {"client-id": self.client_id} if self.client_id else {}
        try:
            conn.connect(s.username or None, s.password or None, wait=False, headers=headers)
        except (StompException, OSError) as exc:
            self._close(conn)
            return f"cannot connect ({exc.__class__.__name__}: {exc})"
        if not self.events.connected.wait(s.connect_timeout) or self.events.lost:
            error = self._first_error()
            self._close(conn)
            return error or f"no CONNECTED frame within {s.connect_timeout:g} s"
        self.conn, self.address = conn, host_port
        log.info("connected to broker %s:%d", *host_port)
        return None

    def _first_error(self) -> str:
        with self.events.lock:
            for kind, headers, body in self.events.replies:
                if kind == "error":
                    return f"refused: {headers.get('message', '')} {body.strip()[:200]}".strip()
        return ""

    @staticmethod
    def _close(conn: stomp.Connection12) -> None:
        try:
            conn.disconnect()
        except (StompException, OSError):
            pass
        try:
            conn.transport.stop()
        except (StompException, OSError, RuntimeError):
            pass

    @property
    def is_connected(self) -> bool:
        return self.conn is not None and not self.events.lost and self.conn.is_connected()

    def send(self, destination: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Write one SEND frame; raises OSError/StompException if the socket is gone."""
        assert self.conn is not None
        self.conn.send(destination, body, headers=dict(headers))

    def begin(self, transaction: str) -> None:
        assert self.conn is not None
        self.conn.begin(transaction)

    def commit(self, transaction: str, receipt: str) -> None:
        """COMMIT with a receipt: the receipt proves every SEND of the transaction is stored."""
        assert self.conn is not None
        self.conn.commit(transaction, headers={"receipt": receipt})

    def take_replies(self) -> List[Tuple[str, Mapping[str, str], str]]:
        """("receipt" | "error", headers, body) that arrived since the last call, in order."""
        with self.events.lock:
            replies, self.events.replies = self.events.replies, []
        return replies

    def close(self) -> None:
        if self.conn is not None:
            self._close(self.conn)
        self.conn = None
        self.address = None
