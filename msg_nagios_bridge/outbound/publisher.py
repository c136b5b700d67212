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
its size limit), is found by sending one message at a time after it. (Those
decisions are the pure state machine in refusals.py; this class carries them out.)

Anything in flight when the connection goes is given back and sent again
(at-least-once; receivers drop duplicates by ``result_id``). So is what was receipted in
the last ``settle_seconds`` (by default 5 s on RabbitMQ, none on ActiveMQ: broker/kinds.py).
A broker that is away means reconnect with capped exponential backoff, forever (broker/session.py).
"""
from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from typing import Deque, Dict, List, NamedTuple, Optional, Tuple

from stomp.exception import StompException

from ..broker import kinds
from ..broker.connection import BrokerConnection
from ..broker.session import BrokerSession
from ..config import BrokerSettings
from ..daemon.health import Backoff, Health, RateLimitedLog
from ..display import printable
from ..spool import Spool, SpoolError
from ..wakeup import Wakeup
from . import refusals
from ..daemon.threadname import name_os_thread

log = logging.getLogger(__name__)

BATCH = 500                 # messages per transaction
# Bytes of bodies per batch (transaction), and in flight: big messages (a plugin's long
# output, up to 4 MiB a record) hold a bounded amount of memory, not BATCH or max_in_flight
# of them, and a transaction's joined into one write (review 2026-12-04).
BATCH_BYTES = 4 << 20
MAX_IN_FLIGHT_BYTES = 16 << 20
SPOOL_RETRY = 1.0           # seconds before trying a failing spool again


class _Sent(NamedTuple):
    """What the publisher keeps of a message in flight: enough to delete it on its receipt,
    give it back, or dead-letter it when refused (its headers and body stay in the spool: a
    thousand whole SpoolEntry objects held 3.2 MiB, docs/performance.md)."""
    entry_id: int
    attempts: int
    message_id: str
    destination: str


class Publisher(threading.Thread):
    """Runs until ``stop()``; then drains in-flight receipts within ``drain_timeout``.

    Sleeps on one Wakeup, set by the broker connection (a reply, a loss), the spool (something
    to take) and stop(); the only timeouts are deadlines: the oldest receipt's, the end of a
    refusing-all pause, a backoff."""

    def __init__(self, settings: BrokerSettings, spool: Spool, health: Health,
                 drain_timeout: float = 10.0):
        super().__init__(name="publisher", daemon=True)
        self.settings = settings
        self.spool = spool
        self.health = health
        self.drain_timeout = drain_timeout
        self.wakeup = Wakeup()
        self.session = BrokerSession("publisher", settings, health, self.wakeup, log,
                                     up_state=lambda address: f"connected to {address}",
                                     on_connect=self._connected)
        spool.wake_on_put(self.wakeup)
        self._in_flight: Dict[str, tuple] = {}   # receipt -> ([_Sent], sent_at, body bytes)
        self._in_flight_count = 0
        self._in_flight_bytes = 0                 # of their bodies
        # Receipted, deleted at their deadline (monotonic); given back if the connection goes first.
        self.settle_seconds = settings.settle_seconds
        self._settling: Deque[Tuple[float, List[int]]] = collections.deque()
        self._refusals = refusals.State()
        # Per message refused (spool entry id): the receipts counted at its first refusal, to
        # tell whether the broker took anything since (refusals.RefusedOne.accepted_since).
        self._refused_at: Dict[int, int] = {}
        # Messages refused by name, held back (leased) until the broker takes another message,
        # or nothing else is left to send: other messages go out between a message's tries,
        # so that its refusals can be told from a broker that refuses everything.
        self._deferred: List[int] = []
        self._generation = 0
        self._serial = 0
        self._warn = RateLimitedLog(log)
        self._refusal_backoff = Backoff(settings.backoff_initial, settings.backoff_max)
        self._refusing_all = ""                                   # the broker's reason, if so
        self._paused_until = float("-inf")    # refusing all: nothing is sent before (monotonic)
        # Transactions only where a COMMIT's receipt proves the messages are stored (not on
        # RabbitMQ: broker/kinds.py); else one receipt per message, many in flight.
        self.transactions = kinds.uses_transactions(settings.kind)

    @property
    def broker(self) -> BrokerConnection:
        return self.session.broker

    def stop(self) -> None:
        """From any thread; ends a connect under way at once."""
        self.session.stop()

    def run(self) -> None:
        name_os_thread(self.name)
        self.health.set_state("publisher", "starting")
        stopping = self.session.stopping
        while not stopping.is_set():
            try:
                if not self.broker.is_connected:
                    if self.broker.conn is not None:
                        self._connection_lost("connection lost")
                    self.session.connect()
                    continue
                self._fill_window()
                self.session.wait(self._deadline())
                # Read the replies before looking at the connection again: an ERROR that came
                # just before the broker closed must be seen as one (see _refused).
                self._collect()
            except SpoolError as exc:
                self._warn(logging.ERROR, "spool", f"spool problem, retrying: {exc}")
                self.health.error(f"spool: {exc}")
                self.session.sleep(SPOOL_RETRY)
            except (StompException, OSError) as exc:
                self._connection_lost(f"{exc.__class__.__name__}: {exc}")
        self._drain()
        self.broker.discard()
        self.health.set_state("publisher", "stopped")

    def _deadline(self) -> Optional[float]:
        """The next moment the loop must act without being woken: the oldest receipt's deadline
        (receipt_timeout), the end of a refusing-all pause, or the oldest settling entries'.
        None: only a wake-up."""
        deadlines = [self._settling[0][0]] if self._settling else []
        if self._in_flight:
            oldest = next(iter(self._in_flight.values()))[1]    # dicts keep sending order
            deadlines.append(oldest + self.settings.receipt_timeout)
        if self._paused_until > time.monotonic():
            deadlines.append(self._paused_until)
        return min(deadlines) if deadlines else None

    # -- connection ---------------------------------------------------------

    def _connected(self) -> None:
        self._generation += 1
        self.health.add("connects")

    def _in_flight_ids(self):
        return [entry.entry_id for entries, *_ in self._in_flight.values() for entry in entries]

    def _connection_lost(self, why: str, replies_read: bool = False, after_error: bool = False) -> None:
        """Give back everything in flight: without a receipt it may not have arrived; and what
        is settling, unless the broker closed the connection after an ERROR (``after_error``):
        it is up then, and those it confirmed are safe (else each probe for a refused message,
        a reconnect, would send them all again)."""
        if not replies_read:
            self._note_unread_errors()
        try:
            ids = self._in_flight_ids()
            if ids:
                self._in_flight.clear()
                self._in_flight_count = self._in_flight_bytes = 0
                self.health.add("retries", len(ids))
                # A try towards max_refusals only when the broker refused something (an ERROR
                # naming no message): a connection lost (network, broker restart) refuses
                # nothing, and counting it would dead-letter a message at its first refusal
                # after a few.
                self.spool.give_back(ids, tried=after_error)
            if not after_error:
                settled = [entry_id for _, settling in self._settling for entry_id in settling]
                self._settling.clear()
                if settled:
                    # The broker confirmed them: not a try that counts towards max_refusals.
                    self.health.add("retries", len(settled))
                    self.spool.give_back(settled, tried=False)
            self._delete_settled(everything=True)      # after an ERROR: confirmed by a live broker
        except SpoolError as exc:
            # give_back unleases even when it cannot write the tries (disk full), and what
            # could not be deleted is given back (_never_stranded): the connection is given up
            # all the same (review 2026-12-06: this error ended the publisher's thread).
            self._warn(logging.ERROR, "spool", f"spool problem while giving back what was in flight: {exc}")
            self.health.error(f"spool: {exc}")
        self.session.lost(why)

    def _note_unread_errors(self) -> None:
        """Replies may still be unread when the connection is given up: ActiveMQ and RabbitMQ
        close it right after an ERROR, and with a window of messages to send, the next send
        usually fails first. Take them in as if read: a receipt deletes its messages, an ERROR
        naming a message counts a try or dead-letters it, one naming none starts isolating.
        (Review 2026-12-06: only the last was taken in, so a message refused by name before
        the broker closed was sent first again on every connection, for ever.)"""
        try:
            self._take_in_replies(losing=True)
        except SpoolError as exc:
            # Those not taken in stay in flight: given back by the caller, sent again.
            self._warn(logging.ERROR, "spool", f"spool problem while taking in the last replies: {exc}")

    def _step(self, event: refusals.Event):
        self._refusals, actions = refusals.step(self._refusals, event)
        return actions

    # -- sending ------------------------------------------------------------

    def _fill_window(self) -> None:
        if time.monotonic() < self._paused_until:
            return                          # the broker refuses all: wait out the pause
        while True:
            room = self._refusals.window(self.settings.max_in_flight) - self._in_flight_count
            bytes_room = MAX_IN_FLIGHT_BYTES - self._in_flight_bytes
            if room <= 0 or bytes_room <= 0:
                return
            entries = self.spool.take(min(room, BATCH), max_bytes=min(bytes_room, BATCH_BYTES))
            if not entries:
                if self._deferred and not self._in_flight:
                    self._release_deferred()        # nothing else to send: try them again
                    continue
                return
            try:
                if self._refusals.one_receipt_each:
                    self._send_each(entries)
                elif not self.transactions:
                    self._send_receipted(entries)
                else:
                    self._send_transaction(entries)
            except BaseException:
                # Not (all) sent: hand the batch back before the caller handles the error
                # (not refused: no try).
                self.spool.give_back([entry.entry_id for entry in entries], tried=False)
                raise

    def _next_receipt(self) -> str:
        self._serial += 1
        return f"{self._generation}-{self._serial}"

    def _send_transaction(self, entries) -> None:
        receipt = self._next_receipt()
        transaction = "tx-" + receipt
        # BEGIN, the SENDs and the COMMIT in one write: one system call per transaction, not
        # one per message.
        with self.broker.corked():
            self.broker.begin(transaction)
            for entry in entries:
                self.broker.send_stored(entry.message.destination, entry.message.body, entry.message.headers,
                                        "transaction", transaction)
            self.broker.commit(transaction, receipt)
        self._track(receipt, entries)

    def _send_receipted(self, entries) -> None:
        """One receipt per message (where a COMMIT's receipt proves nothing: broker/kinds.py),
        the batch in one write as a transaction is. Once the batch is tracked in flight,
        ``entries`` is emptied: if the write then fails, the connection loss gives them back."""
        receipts = []
        with self.broker.corked():
            for entry in entries:
                receipt = self._next_receipt()
                self.broker.send_stored(entry.message.destination, entry.message.body, entry.message.headers,
                                        "receipt", receipt)
                receipts.append((receipt, entry))
            for receipt, entry in receipts:
                self._track(receipt, [entry])
            del entries[:]

    def _send_each(self, entries) -> None:
        """One receipt per message, so that an ERROR names the message it is about."""
        for index, entry in enumerate(entries):
            receipt = self._next_receipt()
            try:
                self.broker.send_stored(entry.message.destination, entry.message.body, entry.message.headers,
                                        "receipt", receipt)
            except BaseException:
                # The ones before this are tracked in flight (given back with them); the caller
                # gives back what is left in ``entries``: this one and the rest, once each.
                del entries[:index]
                raise
            self._track(receipt, [entry])
            if self._refusals.one_receipt_each:
                self._step(refusals.SentOne())

    def _track(self, receipt: str, entries) -> None:
        size = sum(len(entry.message.body) for entry in entries)
        sent = [_Sent(entry.entry_id, entry.attempts, entry.message.message_id, entry.message.destination)
                for entry in entries]
        self._in_flight[receipt] = (sent, time.monotonic(), size)
        self._in_flight_count += len(entries)
        self._in_flight_bytes += size

    def _collect(self) -> None:
        if not self._take_in_replies():
            return              # connection abandoned: later replies belong to it
        self._delete_settled()
        if self._refusing_all:
            delay = self._refusal_backoff.next_delay()
            self._warn(logging.ERROR, "refuses-all", f"the broker refuses every message ({self._refusing_all});"
                       f" keeping them in the spool, sending again in {delay:.1f} s")
            self._refusing_all = ""
            self._paused_until = time.monotonic() + delay
        if self._in_flight:
            oldest = next(iter(self._in_flight.values()))[1]    # dicts keep sending order
            if time.monotonic() - oldest >= self.settings.receipt_timeout:
                self._connection_lost(f"no receipt within {self.settings.receipt_timeout:g} s")
                return
        if self.broker.events.lost:
            self._connection_lost("disconnected by the broker or heartbeat timeout")

    def _take_in_replies(self, losing: bool = False) -> bool:
        """Match the broker's replies to what is in flight: delete what is receipted, handle
        ERRORs (_refused). False if the connection was abandoned on one (the later replies
        belong to it); ``losing``: it is being given up already."""
        done = []
        for kind, headers, body in self.broker.take_replies():
            receipt = headers.get("receipt-id", "")
            inferred = self._refusals.infers(kind, receipt, self._in_flight_count)
            if inferred:
                receipt = next(iter(self._in_flight))      # the one message in flight
            item = self._in_flight.pop(receipt, None)
            if item is not None:
                self._in_flight_count -= len(item[0])
                self._in_flight_bytes -= item[2]
                self._step(refusals.Answered(inferred))
            if kind == "receipt":
                if item is not None:
                    done.extend(entry.entry_id for entry in item[0])
                    if refusals.RESET_PAUSE in self._step(refusals.Receipt()):
                        self._refusal_backoff.reset()
                    self._release_deferred()        # the broker took a message after them
                continue
            self._mark_done(done)
            done = []
            if not self._refused(headers, body, item, inferred, losing):
                return False
        self._mark_done(done)
        return True

    def _release_deferred(self) -> None:
        """Give back the refused messages held back (each refusal a try)."""
        if self._deferred:
            deferred, self._deferred = self._deferred, []
            self.spool.give_back(deferred)

    def _mark_done(self, entry_ids) -> None:
        """Receipted: published; deleted now, or once settled (``settle_seconds``)."""
        if entry_ids:
            for entry_id in entry_ids if self._refused_at else ():
                self._refused_at.pop(entry_id, None)
            if self.settle_seconds:
                self._settling.append((time.monotonic() + self.settle_seconds, list(entry_ids)))
            else:
                self._delete_entries(entry_ids)
            self.health.add("published", len(entry_ids))
            self.health.mark("publish")

    def _delete_settled(self, everything: bool = False) -> None:
        """Delete what has settled (``everything``: all receipted, at shutdown)."""
        now = time.monotonic()
        settled: List[int] = []
        while self._settling and (everything or self._settling[0][0] <= now):
            settled.extend(self._settling.popleft()[1])
        self._delete_entries(settled)

    def _delete_entries(self, entry_ids) -> None:
        if entry_ids:
            with self._never_stranded(entry_ids):
                self.spool.done(entry_ids)

    @contextlib.contextmanager
    def _never_stranded(self, entry_ids, tried: bool = False):
        """The entries are out of _in_flight: if the spool cannot delete (or reject) them, give
        them back, or they would stay leased, never sent again until a restart. (Sent again
        later: duplicates, not loss.) ``tried``: they were refused (a try); accepted ones,
        whose delete failed, were not."""
        try:
            yield
        except SpoolError:
            try:
                self.spool.give_back(entry_ids, tried=tried)      # unleases even when it cannot write
            except SpoolError:
                pass
            raise

    def _refused(self, headers, body: str, item, inferred: bool = False, losing: bool = False) -> bool:
        """An ERROR frame. Returns False if the connection had to be abandoned.

        With a receipt-id of one message (sent one receipt each), that message was
        refused: give it back, or after ``max_refusals`` tries move it to the dead
        letters; the connection goes on. Otherwise (an error inside a transaction,
        which names no message) nothing in flight can be trusted: give everything
        back, reconnect, and send one receipt each for a while to find the culprit.
        ``inferred``: the ERROR named no message but only one was in flight (probing).
        Such an ERROR closes the connection, and what the broker still sends before
        closing (ActiveMQ reads the rest of an oversize frame as more frames, each one
        an ERROR) is about no message of ours: abandon it. ``losing``: the connection is
        being given up already (only the bookkeeping is done here).
        """
        # The broker's text (which may quote our headers) goes into logs, status and dead letters.
        reason = printable(f"{headers.get('message', 'broker error')} {body.strip()[:300]}".strip(), 400)
        self.health.error(f"broker refused: {reason}")
        self.health.add("broker_errors")
        if item is not None and len(item[0]) == 1:
            entry: _Sent = item[0][0]
            receipts = self._refusals.receipts
            accepted_since = receipts > self._refused_at.setdefault(entry.entry_id, receipts)
            actions = self._step(refusals.RefusedOne(entry.entry_id, entry.attempts, self.settings.max_refusals,
                                                     accepted_since, inferred))
            if refusals.GIVE_BACK in actions:
                self._deferred.append(entry.entry_id)
            if refusals.PAUSE in actions:
                self._refusing_all = reason
            if refusals.DEAD_LETTER in actions:
                self._refused_at.pop(entry.entry_id, None)
                with self._never_stranded([entry.entry_id], tried=True):
                    self.spool.reject(entry.entry_id, f"refused by the broker on try {entry.attempts + 1}: {reason}")
                self.health.add("dead_letters")
                self._warn(logging.ERROR, "dead-letter", f"message {entry.message_id} to "
                           f"{entry.destination} moved to dead letters: {reason}")
            if refusals.RECONNECT in actions:
                if not losing:
                    self._connection_lost(f"broker error: {reason}", replies_read=True, after_error=True)
                return False
            return True
        if item is not None:
            self.spool.give_back([entry.entry_id for entry in item[0]])
        self._step(refusals.NamedNoMessage())
        if not losing:
            self._connection_lost(f"broker error: {reason}", replies_read=True, after_error=True)
        return False

    def _drain(self) -> None:
        """At shutdown: wait a little for outstanding receipts, give back the rest."""
        deadline = time.monotonic() + self.drain_timeout
        while self._in_flight and self.broker.is_connected and time.monotonic() < deadline:
            self.wakeup.wait(deadline - time.monotonic())      # the drain deadline
            try:
                self._collect()
            except (SpoolError, StompException, OSError):
                break
        if self._in_flight:
            self.spool.give_back(self._in_flight_ids(), tried=False)     # stopped: no try
            self._in_flight.clear()
            self._in_flight_count = self._in_flight_bytes = 0
        self._release_deferred()        # a reload's next publisher takes them from this spool
        # A clean stop: what was receipted is deleted now, not sent again at the next start.
        try:
            self._delete_settled(everything=True)
        except SpoolError:
            pass                # given back (_never_stranded): sent again at the next start

