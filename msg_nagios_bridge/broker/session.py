"""The connect/backoff loop a broker worker (publisher, subscriber) shares.

A ``BrokerSession`` owns the worker's BrokerConnection. The worker calls ``connect()`` from
its loop whenever it is not connected: one pass over the failover list, then, if no broker
answered, a capped exponential backoff that only ``stop()`` cuts short. It keeps the
worker's health state ("connecting", "disconnected: why", the worker's own up state) and
logs as each worker always has. ``stop()`` may come from any thread: it also ends a connect
under way at once (BrokerConnection.abort).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

from stomp.exception import StompException

from ..config import BrokerSettings
from ..daemon.health import Backoff, Health, RateLimitedLog
from ..wakeup import Wakeup
from .connection import BrokerConnection


class BrokerSession:
    """``part``: the health part and log name ("publisher", "subscriber"). ``up_state``:
    the health state once connected, given the address. ``on_connect()`` runs once per new
    connection (subscribe, say): raising StompException or OSError fails that attempt.
    ``label``: how the log lines and errors name the connection ("broker", "subscriber").
    ``quick_ack``: TCP ACKs at once (a consumer's connection; connection.ack_at_once)."""

    def __init__(self, part: str, settings: BrokerSettings, health: Health, wakeup: Wakeup,
                 logger: logging.Logger, *, up_state: Callable[[str], str],
                 on_connect: Callable[[], None] = lambda: None, label: str = "broker",
                 client_id: str = "", auto_decode: bool = True, quick_ack: bool = False):
        self.part = part
        self.health = health
        self.wakeup = wakeup
        self.up_state = up_state
        self.on_connect = on_connect
        self.label = label
        self.stopping = threading.Event()
        self.broker = BrokerConnection(settings, client_id=client_id, auto_decode=auto_decode, wakeup=wakeup,
                                       thread_name=f"{part}-rx", quick_ack=quick_ack)
        self._backoff = Backoff(settings.backoff_initial, settings.backoff_max)
        self._warn = RateLimitedLog(logger)
        # The publisher says "no broker reachable", the subscriber "subscriber: no broker reachable".
        self._prefix = "" if label == "broker" else f"{label}: "

    def stop(self) -> None:
        """From any thread: the worker's loop ends, a connect under way ends at once."""
        self.stopping.set()
        self.broker.abort()
        self.wakeup.set()

    def connect(self) -> bool:
        """One pass over the failover list; True when connected (and on_connect done). If no
        broker answered: health and log say why, and this sleeps the backoff delay (or until
        stop()) before returning False."""
        if self.broker.conn is not None:
            self.lost("connection lost")
        self.health.set_state(self.part, "connecting")
        problem = self.broker.connect()
        if problem is None:
            try:
                self.on_connect()
            except (StompException, OSError) as exc:
                problem = f"subscribe failed: {exc}"
                self.broker.close()
        if problem is None:
            self._backoff.reset()
            self.health.set_state(self.part, self.up_state("%s:%d" % self.broker.address))
            return True
        if self.stopping.is_set():
            return False
        delay = self._backoff.next_delay()
        self.health.set_state(self.part, f"disconnected: {problem}")
        self.health.error(f"{self.label}: {problem}")
        self._warn(logging.WARNING, "connect", f"{self._prefix}no broker reachable ({problem}); retrying in {delay:.1f} s")
        self.sleep(delay)           # the backoff delay: a deadline, cut short only by stop()
        return False

    def lost(self, why: str) -> None:
        """Log and note a lost connection, and close it; the next connect() makes a new one."""
        self._warn(logging.WARNING, "lost", f"{self.label} connection lost ({why}); will reconnect")
        self.health.error(f"{self.label}: {why}")
        self.broker.close()

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` (a deadline the worker owns: a backoff, a retry delay) on the
        worker's wakeup; other wake-ups (a frame, a put) do not end it, stop() does."""
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.wakeup.wait(left)

    def wait(self, deadline: Optional[float]) -> None:
        """Sleep until the wakeup is set (a frame, the spool, stop()) or the monotonic
        ``deadline`` (None: no deadline) passes."""
        if self.stopping.is_set():
            return
        self.wakeup.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
