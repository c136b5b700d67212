"""The outbound sink: spool -> STOMP SEND (persistent) -> receipt -> delete.

Messages go out in STOMP transactions: BEGIN, up to ``BATCH`` SENDs, COMMIT
with a receipt. The receipt of the COMMIT proves the broker stored every
message of the batch; only then are they deleted from the spool. Several
transactions are kept in flight (up to ``max_in_flight`` messages) instead of
waiting for each one. Measured on ActiveMQ 5.17: a receipt per message caps
publishing at about a fifth of the broker's rate, a receipt per commit does
not (benchmarks/outbound.py).

When the broker answers with an ERROR (e.g. a destination it refuses), the
batch is given back and the publisher switches to one receipt per message for
a while, so the refused message is found, counted, and after ``max_refusals``
moved to the dead letters, while the others go through. An ERROR that names no
message even then, and closes the connection (ActiveMQ's answer to a frame over
its size limit), is found by sending one message at a time after it.

Anything in flight when the connection goes is given back and sent again
(at-least-once; receivers drop duplicates by ``result_id``). A broker that is
away means reconnect with capped exponential backoff, forever.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Dict, Optional, Tuple

from stomp.exception import StompException

from ..broker.connection import BrokerConnection
from ..config import BrokerSettings
from ..daemon.health import Backoff, Health, RateLimitedLog
from ..display import printable
from ..spool import Spool, SpoolEntry, SpoolError

log = logging.getLogger(__name__)

BATCH = 500                 # messages per transaction
ISOLATE_MESSAGES = 2000     # after an ERROR: this many messages with a receipt each
# No receipt for this long and refusals of different messages in a row: the broker refuses all.
REFUSING_ALL_AFTER = 30.0


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
        self._in_flight: Dict[str, tuple] = {}   # receipt -> (entries, sent_at)
        self._in_flight_count = 0
        self._isolate = 0                         # messages still to send one receipt each
        # After an ERROR that named no message even with one receipt per message: one message
        # in flight at a time until a reply names its message, so that the next such ERROR
        # can only be about that message.
        self._probing = False
        self._generation = 0
        self._serial = 0
        self._backoff = Backoff(settings.backoff_initial, settings.backoff_max)
        self._warn = RateLimitedLog(log)
        # To tell a broker that refuses everything (store full, a permission withdrawn) from one
        # that refuses a message: the receipts counted, and the refusal before this one.
        self._receipts = 0
        self._receipt_at = float("-inf")                          # monotonic time of the last
        self._last_refusal: Optional[Tuple[int, int]] = None     # (entry id, receipts by then)
        self._refusal_backoff = Backoff(settings.backoff_initial, settings.backoff_max)
        self._refusing_all = ""                                   # the broker's reason, if so

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
        self.broker.discard()
        self.health.set_state("publisher", "stopped")

    # -- connection ---------------------------------------------------------

    def _reconnect(self) -> None:
        if self.broker.conn is not None:
            self._connection_lost("connection lost")
        self.health.set_state("publisher", "connecting")
        problem = self.broker.connect()
        if problem is None:
            self._generation += 1
            self._backoff.reset()
            address = "%s:%d" % self.broker.address
            self.health.set_state("publisher", f"connected to {address}")
            self.health.add("connects")
            return
        delay = self._backoff.next_delay()
        self.health.set_state("publisher", f"disconnected: {problem}")
        self.health.error(f"broker: {problem}")
        self._warn(logging.WARNING, "connect", f"no broker reachable ({problem}); retrying in {delay:.1f} s")
        self._stopping.wait(delay)

    def _in_flight_ids(self):
        return [entry.entry_id for entries, _ in self._in_flight.values() for entry in entries]

    def _connection_lost(self, why: str, replies_read: bool = False) -> None:
        """Give back everything in flight: without a receipt it may not have arrived."""
        if not replies_read:
            self._note_unread_errors()
        if self._in_flight:
            ids = self._in_flight_ids()
            self.spool.give_back(ids)
            self.health.add("retries", len(ids))
            self._in_flight.clear()
            self._in_flight_count = 0
        self._warn(logging.WARNING, "lost", f"broker connection lost ({why}); will reconnect")
        self.health.error(f"broker: {why}")
        self.broker.close()

    def _note_unread_errors(self) -> None:
        """An ERROR that names no message may still be unread when the connection is given up:
        ActiveMQ closes the connection right after it, and with a window of messages to send,
        the next send usually fails first. Count it as if it had been read (see _refused)."""
        for kind, headers, _ in self.broker.take_replies():
            if kind == "error" and not headers.get("receipt-id"):
                self._named_no_message()
                return

    def _named_no_message(self) -> None:
        """After an ERROR that named no message: one receipt per message for a while, to find
        the culprit; if that was already so, one message at a time (probing)."""
        self._probing = self._probing or self._isolate > 0
        self._isolate = ISOLATE_MESSAGES

    # -- sending ------------------------------------------------------------

    def _fill_window(self) -> None:
        while True:
            room = (1 if self._probing else self.settings.max_in_flight) - self._in_flight_count
            if room <= 0:
                return
            entries = self.spool.take(min(room, BATCH))
            if not entries:
                return
            try:
                if self._isolate > 0:
                    self._send_each(entries)
                else:
                    self._send_transaction(entries)
            except BaseException:
                # Not (all) sent: hand the batch back before the caller handles the error.
                self.spool.give_back([entry.entry_id for entry in entries])
                raise

    def _next_receipt(self) -> str:
        self._serial += 1
        return f"{self._generation}-{self._serial}"

    def _send_transaction(self, entries) -> None:
        receipt = self._next_receipt()
        transaction = "tx-" + receipt
        self.broker.begin(transaction)
        for entry in entries:
            headers = dict(entry.message.headers, transaction=transaction)
            self.broker.send(entry.message.destination, entry.message.body, headers)
        self.broker.commit(transaction, receipt)
        self._track(receipt, entries)

    def _send_each(self, entries) -> None:
        """One receipt per message, so that an ERROR names the message it is about."""
        for index, entry in enumerate(entries):
            receipt = self._next_receipt()
            try:
                self.broker.send(entry.message.destination, entry.message.body,
                                 dict(entry.message.headers, receipt=receipt))
            except BaseException:
                # The ones before this are tracked in flight (given back with them); the caller
                # gives back what is left in ``entries``: this one and the rest, once each.
                del entries[:index]
                raise
            self._track(receipt, [entry])
            self._isolate -= 1

    def _track(self, receipt: str, entries) -> None:
        self._in_flight[receipt] = (entries, time.monotonic())
        self._in_flight_count += len(entries)

    def _wait_for_progress(self, timeout: float) -> None:
        """Sleep until a receipt arrives, the spool gets data, or ``timeout``."""
        events = self.broker.events
        if self._in_flight:
            events.wakeup.wait(timeout)
        else:
            self.spool.wait(timeout)
        events.wakeup.clear()

    def _collect(self) -> None:
        done = []
        for kind, headers, body in self.broker.take_replies():
            receipt = headers.get("receipt-id", "")
            inferred = kind != "receipt" and not receipt and self._probing and self._in_flight_count == 1
            if inferred:
                receipt = next(iter(self._in_flight))      # the one message in flight
            item = self._in_flight.pop(receipt, None)
            if item is not None:
                self._in_flight_count -= len(item[0])
                # A reply that names its message: the broker's answers can be told apart again.
                self._probing = self._probing and inferred
            if kind == "receipt":
                if item is not None:
                    done.extend(entry.entry_id for entry in item[0])
                    self._receipts += 1
                    self._receipt_at = time.monotonic()
                    self._refusal_backoff.reset()
                continue
            self._mark_done(done)
            done = []
            if not self._refused(headers, body, item, inferred):
                return          # connection abandoned: later replies belong to it
        self._mark_done(done)
        if self._refusing_all:
            delay = self._refusal_backoff.next_delay()
            self._warn(logging.ERROR, "refuses-all", f"the broker refuses every message ({self._refusing_all});"
                       f" keeping them in the spool, sending again in {delay:.1f} s")
            self._refusing_all = ""
            self._stopping.wait(delay)
        if self._in_flight:
            oldest = next(iter(self._in_flight.values()))[1]    # dicts keep sending order
            if time.monotonic() - oldest > self.settings.receipt_timeout:
                self._connection_lost(f"no receipt within {self.settings.receipt_timeout:g} s")
        if self.broker.events.lost:
            self._connection_lost("disconnected by the broker or heartbeat timeout")

    def _mark_done(self, entry_ids) -> None:
        if entry_ids:
            with self._never_stranded(entry_ids):
                self.spool.done(entry_ids)
            self.health.add("published", len(entry_ids))
            self.health.mark("publish")

    @contextlib.contextmanager
    def _never_stranded(self, entry_ids):
        """The entries are out of _in_flight: if the spool cannot delete (or reject) them, give
        them back, or they would stay leased, never sent again until a restart. (Sent again
        later: duplicates, not loss.)"""
        try:
            yield
        except SpoolError:
            try:
                self.spool.give_back(entry_ids)      # unleases even when it cannot write
            except SpoolError:
                pass
            raise

    def _refused(self, headers, body: str, item, inferred: bool = False) -> bool:
        """An ERROR frame. Returns False if the connection had to be abandoned.

        With a receipt-id of one message (sent one receipt each), that message was
        refused: give it back, or after ``max_refusals`` tries move it to the dead
        letters; the connection goes on. Otherwise (an error inside a transaction,
        which names no message) nothing in flight can be trusted: give everything
        back, reconnect, and send one receipt each for a while to find the culprit.
        ``inferred``: the ERROR named no message but only one was in flight (probing).
        Such an ERROR closes the connection, and what the broker still sends before
        closing (ActiveMQ reads the rest of an oversize frame as more frames, each one
        an ERROR) is about no message of ours: abandon it.
        """
        # The broker's text (which may quote our headers) goes into logs, status and dead letters.
        reason = printable(f"{headers.get('message', 'broker error')} {body.strip()[:300]}".strip(), 400)
        self.health.error(f"broker refused: {reason}")
        self.health.add("broker_errors")
        if item is not None and len(item[0]) == 1:
            self._isolate = ISOLATE_MESSAGES
            entry: SpoolEntry = item[0][0]
            last, self._last_refusal = self._last_refusal, (entry.entry_id, self._receipts)
            if last is None:
                self.spool.give_back([entry.entry_id])        # the first: nothing to compare yet
            elif last[1] == self._receipts and last[0] != entry.entry_id and \
                    time.monotonic() - self._receipt_at > REFUSING_ALL_AFTER:
                # Two messages refused in a row, none accepted between or for a while: the
                # broker refuses everything (store full, a permission withdrawn). Dead-lettering
                # would empty the spool into the dead letters (and past max_dead_letters delete
                # them): keep them and retry, more slowly. (A broker that still took messages
                # lately refuses these ones: their destination, say, as for a route it does not
                # authorise. Those go to the dead letters after max_refusals.)
                self.spool.give_back([entry.entry_id])
                self._refusing_all = reason
            elif entry.attempts + 1 >= self.settings.max_refusals:
                with self._never_stranded([entry.entry_id]):
                    self.spool.reject(entry.entry_id, f"refused by the broker on try {entry.attempts + 1}: {reason}")
                self.health.add("dead_letters")
                self._warn(logging.ERROR, "dead-letter", f"message {entry.message.message_id} to "
                           f"{entry.message.destination} moved to dead letters: {reason}")
            else:
                self.spool.give_back([entry.entry_id])
            if inferred:
                self._connection_lost(f"broker error: {reason}", replies_read=True)
                return False
            return True
        if item is not None:
            self.spool.give_back([entry.entry_id for entry in item[0]])
        self._named_no_message()
        self._connection_lost(f"broker error: {reason}", replies_read=True)
        return False

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
            self.spool.give_back(self._in_flight_ids())
            self._in_flight.clear()
            self._in_flight_count = 0
