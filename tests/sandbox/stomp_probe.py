"""An independent stomp.py client for tests and benchmarks: connect with a receipt listener,
subscribe and collect frames, or publish with a receipt."""
import itertools
import threading
import time
import uuid
from collections import namedtuple

import stomp

Message = namedtuple("Message", "headers body received_at")  # received_at: time.monotonic()

_sub_ids = itertools.count(1)


class Receipts(stomp.ConnectionListener):
    """The RECEIPT ids and ERROR frames of one connection (thread-safe)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.receipts = set()
        self.errors = []          # Message tuples of the ERROR frames, in order

    def on_receipt(self, frame):
        with self.cond:
            self.receipts.add(frame.headers.get("receipt-id"))
            self.cond.notify_all()

    def on_error(self, frame):
        with self.cond:
            self.errors.append(Message(dict(frame.headers), frame.body, time.monotonic()))
            self.cond.notify_all()

    def wait(self, receipt, timeout):
        """Until ``receipt`` arrived; RuntimeError on an ERROR frame, TimeoutError after ``timeout``."""
        with self.cond:
            ok = self.cond.wait_for(lambda: receipt in self.receipts or self.errors, timeout)
        self._raise_errors()
        if not ok:
            raise TimeoutError(f"no RECEIPT {receipt} within {timeout}s")

    def wait_count(self, more_than, timeout):
        """Until more than ``more_than`` receipts arrived; returns how many did."""
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.receipts) > more_than or self.errors, timeout)
            count = len(self.receipts)
        self._raise_errors()
        if not ok:
            raise TimeoutError(f"{count} receipts after {timeout}s")
        return count

    def wait_error(self, timeout):
        """The last ERROR frame, waiting up to ``timeout`` for one; None if none came."""
        with self.cond:
            self.cond.wait_for(lambda: self.errors, timeout)
            return self.errors[-1] if self.errors else None

    def _raise_errors(self):
        if self.errors:
            raise RuntimeError(f"STOMP ERROR frame: {self.errors[-1]}")


def connect(addr, client_id=None, heartbeats=(0, 0), auto_decode=True, login=None, **conn_kwargs):
    """A stomp.py 1.2 connection to ``addr`` (host, port), or to a sandbox broker, with a
    Receipts listener; returns (connection, receipts). No reconnects: a test sees a failure.
    A sandbox broker with a ``stomp_vhost`` (RabbitMQ, which takes the host header as its
    vhost) is connected to on that vhost unless ``vhost`` is given."""
    if getattr(addr, "stomp_vhost", None):
        conn_kwargs.setdefault("vhost", addr.stomp_vhost)
    addr = addr.stomp_address if hasattr(addr, "stomp_address") else addr
    conn = stomp.Connection12([tuple(addr)], heartbeats=heartbeats, auto_decode=auto_decode,
                              reconnect_attempts_max=1, **conn_kwargs)
    receipts = Receipts()
    conn.set_listener("receipts", receipts)
    headers = {"client-id": client_id} if client_id else {}
    user, password = login or (None, None)
    conn.connect(user, password, wait=True, headers=headers)
    return conn, receipts


def publish(addr, destination, body, headers=None, timeout=10.0, login=None):
    """Send one persistent message to `destination` on a fresh connection, wait for its receipt."""
    conn, waiter = connect(addr, login=login)
    try:
        receipt = f"pub-{uuid.uuid4()}"
        hdrs = {"persistent": "true", **(headers or {}), "receipt": receipt}
        conn.send(destination, body, headers=hdrs)
        waiter.wait(receipt, timeout)
    finally:
        conn.disconnect()


class StompProbe(stomp.ConnectionListener):
    """Subscribe to one destination and collect every MESSAGE frame (thread-safe).

    ack: "auto", "client" or "client-individual" (then call .ack(msg) yourself, or auto_ack=True).
    selector: SQL-92 selector header. Durable topic subscription: client_id + durable_name.
    """

    def __init__(self, addr, destination, ack="auto", selector=None, client_id=None,
                 durable_name=None, prefetch=None, headers=None, auto_ack=False,
                 heartbeats=(0, 0), auto_decode=True, login=None):
        self.vhost = getattr(addr, "stomp_vhost", None)       # RabbitMQ's (see connect)
        self.addr = tuple(addr.stomp_address if hasattr(addr, "stomp_address") else addr)
        self.destination = destination
        self.ack_mode = ack
        self.auto_ack = auto_ack
        self.sub_headers = dict(headers or {})
        if selector:
            self.sub_headers["selector"] = selector
        if durable_name:
            self.sub_headers["activemq.subscriptionName"] = durable_name
        if prefetch is not None:
            self.sub_headers["activemq.prefetchSize"] = str(prefetch)
        self.client_id = client_id or (f"probe-{uuid.uuid4()}" if durable_name else None)
        self.heartbeats = heartbeats
        self.auto_decode = auto_decode
        self.login = login
        self.sub_id = str(next(_sub_ids))
        self.conn = None
        self._cond = threading.Condition()
        self._messages = []

    # -- connection ------------------------------------------------------------------------------
    def start(self, timeout=10.0):
        """Connect and subscribe; returns once the broker confirmed the SUBSCRIBE with a receipt."""
        self.conn, self._waiter = connect(self.addr, self.client_id, self.heartbeats, self.auto_decode,
                                          login=self.login, **({"vhost": self.vhost} if self.vhost else {}))
        self.conn.set_listener("probe", self)
        receipt = f"sub-{uuid.uuid4()}"
        self.conn.subscribe(self.destination, self.sub_id, ack=self.ack_mode,
                            headers={**self.sub_headers, "receipt": receipt})
        self._waiter.wait(receipt, timeout)
        return self

    def close(self, unsubscribe=False):
        """Disconnect; with `unsubscribe`, also drop the (durable) subscription."""
        if self.conn is None:
            return
        try:
            if unsubscribe and self.conn.is_connected():
                hdrs = {"activemq.subscriptionName": self.sub_headers["activemq.subscriptionName"]} \
                    if "activemq.subscriptionName" in self.sub_headers else {}
                self.conn.unsubscribe(self.sub_id, headers=hdrs)
            if self.conn.is_connected():
                self.conn.disconnect()
        finally:
            self.conn = None

    def __enter__(self):
        return self.start() if self.conn is None else self

    def __exit__(self, *exc):
        self.close()

    # -- listener --------------------------------------------------------------------------------
    def on_message(self, frame):
        msg = Message(dict(frame.headers), frame.body, time.monotonic())
        with self._cond:
            self._messages.append(msg)
            self._cond.notify_all()
        if self.auto_ack and self.ack_mode != "auto":
            self.ack(msg)

    def ack(self, msg):
        self.conn.ack(msg.headers["ack"])

    def nack(self, msg):
        self.conn.nack(msg.headers["ack"])

    # -- results ---------------------------------------------------------------------------------
    @property
    def messages(self):
        """A copy of the frames received so far, in arrival order."""
        with self._cond:
            return list(self._messages)

    @property
    def errors(self):
        return list(self._waiter.errors) if self.conn else []

    def ids(self, header="message-id"):
        """The value of `header` of every message received so far."""
        return [m.headers.get(header) for m in self.messages]

    def bodies(self):
        return [m.body for m in self.messages]

    def clear(self):
        with self._cond:
            self._messages.clear()

    def wait_for_count(self, n, timeout=10.0):
        """Wait until at least `n` messages arrived; return them; TimeoutError otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._messages) >= n, timeout):
                raise TimeoutError(f"got {len(self._messages)} of {n} messages on "
                                   f"{self.destination} within {timeout}s")
            return list(self._messages)
