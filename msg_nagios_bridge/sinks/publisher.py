"""The outbound sink: spool -> STOMP SEND (persistent) -> receipt -> delete.

Many receipts are kept in flight (``max_in_flight``) instead of waiting for
each one. A spooled message is deleted only after the broker's receipt for it;
anything in flight when the connection goes is given back and sent again
(at-least-once; receivers drop duplicates by ``result_id``). A broker that is
away means reconnect with capped exponential backoff, forever.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from typing import Dict, Optional

from stomp.exception import StompException

from ..broker import BrokerConnection
from ..config import BrokerSettings
from ..health import Health, RateLimitedLog
from ..spool import Spool, SpoolEntry, SpoolError

log = logging.getLogger(__name__)


class Publisher(threading.Thread):
    """Runs until ``stop()``; then drains in-flight receipts within ``drain_timeout``."""

    def __init__(self, settings: BrokerSettings, spool: Spool, health: Health,
                 drain_timeout: float = 10.0):
        super().__init__(name="publisher", daemon=True)
        self.settings = settings
        self.spool = spool
        self.health = health
        self.drain_timeout = drain_timeout
        self.broker = BrokerConnection(settings)
        self._stopping = threading.Event()
        self._in_flight: Dict[str, tuple] = {}   # receipt -> (entry, sent_at)
        self._generation = 0
        self._backoff = settings.backoff_initial
        self._warn = RateLimitedLog(log)

    def stop(self) -> None:
        self._stopping.set()
        self.broker.events.wakeup.set()

    def run(self) -> None:
        self.health.set_state("publisher", "starting")
        while not self._stopping.is_set():
            try:
                if not self.broker.is_connected:
                    self._reconnect()
                    continue
                self._fill_window()
                self._wait_for_progress(0.2)
                self._collect()
            except SpoolError as exc:
                self._warn(logging.ERROR, "spool", f"spool problem, retrying: {exc}")
                self.health.error(f"spool: {exc}")
                self._stopping.wait(1.0)
            except (StompException, OSError) as exc:
                self._connection_lost(f"{exc.__class__.__name__}: {exc}")
        self._drain()
        self.broker.close()
        self.health.set_state("publisher", "stopped")

    # -- connection ---------------------------------------------------------

    def _reconnect(self) -> None:
        if self.broker.conn is not None:
            self._connection_lost("connection lost")
        self.health.set_state("publisher", "connecting")
        problem = self.broker.connect()
        if problem is None:
            self._generation += 1
            self._backoff = self.settings.backoff_initial
            address = "%s:%d" % self.broker.address
            self.health.set_state("publisher", f"connected to {address}")
            self.health.add("connects")
            return
        delay = self._backoff * random.uniform(0.8, 1.2)
        self._backoff = min(self._backoff * 2, self.settings.backoff_max)
        self.health.set_state("publisher", f"disconnected: {problem}")
        self.health.error(f"broker: {problem}")
        self._warn(logging.WARNING, "connect", f"no broker reachable ({problem}); retrying in {delay:.1f} s")
        self._stopping.wait(delay)

    def _connection_lost(self, why: str) -> None:
        """Give back everything in flight: without a receipt it may not have arrived."""
        if self._in_flight:
            self.spool.give_back([entry.entry_id for entry, _ in self._in_flight.values()])
            self.health.add("retries", len(self._in_flight))
            self._in_flight.clear()
        self._warn(logging.WARNING, "lost", f"broker connection lost ({why}); will reconnect")
        self.health.error(f"broker: {why}")
        self.broker.close()

    # -- sending ------------------------------------------------------------

    def _fill_window(self) -> None:
        room = self.settings.max_in_flight - len(self._in_flight)
        if room <= 0:
            return
        entries = self.spool.take(room)
        for index, entry in enumerate(entries):
            receipt = f"{self._generation}-{entry.entry_id}"
            headers = dict(entry.message.headers)
            headers["receipt"] = receipt
            try:
                self.broker.send(entry.message.destination, entry.message.body, headers)
            except BaseException:
                # Not sent: hand the unsent rest back before the caller handles the error.
                self.spool.give_back([e.entry_id for e in entries[index:]])
                raise
            self._in_flight[receipt] = (entry, time.monotonic())

    def _wait_for_progress(self, timeout: float) -> None:
        """Sleep until a receipt arrives, the spool gets data, or ``timeout``."""
        events = self.broker.events
        if self._in_flight:
            events.wakeup.wait(timeout)
        else:
            self.spool.wait(timeout)
        events.wakeup.clear()

    def _collect(self) -> None:
        receipts, errors = self.broker.take_events()
        done = []
        for receipt in receipts:
            item = self._in_flight.pop(receipt, None)
            if item is not None:
                done.append(item[0].entry_id)
        if done:
            self.spool.done(done)
            self.health.add("published", len(done))
            self.health.mark("publish")
        for headers, body in errors:
            self._refused(headers, body)
        if self._in_flight:
            oldest = min(sent for _, sent in self._in_flight.values())
            if time.monotonic() - oldest > self.settings.receipt_timeout:
                self._connection_lost(f"no receipt within {self.settings.receipt_timeout:g} s")
        if self.broker.events.lost:
            self._connection_lost("disconnected by the broker or heartbeat timeout")

    def _refused(self, headers, body: str) -> None:
        """An ERROR frame. If it names one of our messages, that message was refused."""
        reason = f"{headers.get('message', 'broker error')} {body.strip()[:300]}".strip()
        item = self._in_flight.pop(headers.get("receipt-id", ""), None)
        self.health.error(f"broker refused: {reason}")
        if item is not None:
            entry: SpoolEntry = item[0]
            if entry.attempts + 1 >= self.settings.max_refusals:
                self.spool.reject(entry.entry_id, f"refused {entry.attempts + 1} times by the broker: {reason}")
                self.health.add("dead_letters")
                log.error("message %s to %s moved to dead letters: %s",
                          entry.message.message_id, entry.message.destination, reason)
            else:
                self.spool.give_back([entry.entry_id])
        # ActiveMQ closes the connection after an ERROR frame: start over.
        self._connection_lost(f"broker error: {reason}")

    def _drain(self) -> None:
        """At shutdown: wait a little for outstanding receipts, give back the rest."""
        deadline = time.monotonic() + self.drain_timeout
        while self._in_flight and self.broker.is_connected and time.monotonic() < deadline:
            self.broker.events.wakeup.wait(0.1)
            self.broker.events.wakeup.clear()
            try:
                self._collect()
            except (SpoolError, StompException, OSError):
                break
        if self._in_flight:
            self.spool.give_back([entry.entry_id for entry, _ in self._in_flight.values()])
            self._in_flight.clear()
