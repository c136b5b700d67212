"""The inbound source: subscriptions -> judgement -> inbound spool -> ACK.

Subscriptions use cumulative ``client`` acks and a bounded prefetch. Every message is
judged by judgement.judge_batch (the same function the operator tools use). A batch (what
arrived since the last) is acked only once every message of it is durable: in the inbound
spool, or kept as a dead letter with its reason (a refused message is acked too, so the broker
does not redeliver it forever). One ACK per subscription, for the last durable message of it,
acknowledges every message delivered before on that subscription: those were taken in this
batch or an earlier one, in order, so they are durable too. (An ACK per message cost
ActiveMQ a third more CPU per result: docs/performance.md.) With ``ack_delay`` set, the ACKs
of durable batches go out together once a quarter of the prefetch or ``ack_delay`` seconds
wait: at a steady rate batches hold one or two messages, each with an ACK of its own. No
result waits for that ACK (it is in the spool, on its way to the core, and the connection asks
for quick TCP ACKs, so the broker's Nagle does not hold the next messages back); it saves only
the ACK writes (3% of the CPU per result at 1,000/s), hence off by default.
A lost connection's waiting ACKs are dropped: the broker redelivers those messages and the
memory of what was injected drops them.
Duplicates and stale results are dropped against the memory of what was injected, kept in
the inbound spool (so it holds across restarts) and written in the same transaction as the
accepted results. A message whose judgement killed the bridge is dead-lettered unjudged
when it comes again (poison.py). After a broker loss the subscriber reconnects over the
failover list with capped backoff, forever, and subscribes again (broker/session.py).

Backpressure: when the inbound spool is full, the batch that did not fit is held, unacked,
and the subscriber stops taking messages; it keeps its connection, so the broker stops
sending once ``prefetch`` messages per subscription are unacked (what is held in memory is
bounded by that). Its state is PAUSED until the spool has room (Spool.wake_on_room), then
the held batch is stored and acked and taking resumes. See docs/spool.md.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Dict, List, Mapping, Optional, Tuple

from stomp.exception import StompException

from ..broker import kinds
from ..broker.connection import BrokerConnection
from ..broker.session import BrokerSession
from ..config import BrokerSettings, InboundSettings
from . import judgement
from . import policy as policy_module
from ..display import quoted
from ..model import Refused
from ..daemon.health import Health, RateLimitedLog
from ..model import Message, SpooledResults
from .poison import PoisonGuard, fingerprint
from .sequence import CURSOR_PREFIX, Tracker
from ..spool import Spool, SpoolError, SpoolFull
from ..wakeup import Wakeup
from ..daemon.threadname import name_os_thread

log = logging.getLogger(__name__)

FORGET_INTERVAL = 600.0      # seconds between sweeps of the memory (newest times kept max_age)
SWEEP_STEP_GAP = 0.1         # seconds at least between two steps of a sweep (each a short write)
SPOOL_RETRY = 1.0            # seconds before subscribing again after an inbound spool error
PAUSED = "paused: inbound spool full"


@dataclasses.dataclass
class _Held:
    """A judged batch whose accepted results the full spool could not take yet."""
    accepted: List[Message]
    memory: list                # judgement.memory_rows of the accepted
    acks: Dict[str, str]        # cumulative_acks of its messages
    taken: int                  # how many messages it holds (refused ones included)


class Subscriber(threading.Thread):
    """Runs until ``stop()``. Sleeps on one Wakeup, set by the broker connection (a message,
    a loss), the inbound spool (room freed) and stop()."""

    def __init__(self, brokers: BrokerSettings, settings: InboundSettings, spool: Spool,
                 health: Health, policy: policy_module.Policy, results: Optional[SpooledResults] = None):
        super().__init__(name="subscriber", daemon=True)
        self.brokers = brokers
        self.settings = settings
        self.spool = spool
        self.health = health
        self.policy = policy
        self.results = results or SpooledResults()     # shared with the core's writer (daemon/service.py)
        self.wakeup = Wakeup()
        self.session = BrokerSession("subscriber", brokers, health, self.wakeup, log,
                                     up_state=lambda address: f"subscribed on {address}",
                                     on_connect=self._subscribe, label="subscriber",
                                     client_id=settings.client_id, auto_decode=False,
                                     quick_ack=True)     # the broker's Nagle: broker/connection.ack_at_once
        spool.wake_on_room(self.wakeup)
        self.stopping = self.session.stopping
        self.memory = judgement.SpoolMemory(spool)
        self.poison = PoisonGuard(spool.path + ".judging")
        self._forgotten_at = 0.0
        self._swept_at = 0.0
        self._held: Optional[_Held] = None      # while set: paused, taking nothing
        self._paused = False                    # the state says PAUSED
        self._warn = RateLimitedLog(log)
        self._refusal_log = RateLimitedLog(log)
        # ACKs of durable messages not sent yet: subscription -> its last durable message's.
        self._unacked: Dict[str, str] = {}
        self._unacked_count = 0
        self._unacked_since = 0.0               # monotonic: when the oldest became durable
        self.ack_every = max(1, settings.prefetch // 4) if settings.ack_delay else 1
        self.verifier = judgement.make_verifier(settings)
        # Loss accounting (docs/loss-accounting.md): its state is saved with every write that
        # comes before an ACK, so what was acked is never forgotten.
        self.tracker: Optional[Tracker] = None
        if settings.loss_accounting:
            self.tracker = Tracker(expiry=settings.max_age, signed_numbers=self.verifier is not None)
            self.tracker.load(spool.cursors(CURSOR_PREFIX))

    @property
    def broker(self) -> BrokerConnection:
        return self.session.broker

    def stop(self) -> None:
        """From any thread; ends a connect under way at once."""
        self.session.stop()

    def run(self) -> None:
        name_os_thread(self.name)
        self.health.set_state("subscriber", "starting")
        while not self.stopping.is_set():
            try:
                if not self.broker.is_connected:
                    self._reconnect()
                    continue
                if self._held is not None:
                    self._store_held()
                if self._held is None:
                    self._handle(self._take_messages())
                self._ack_if_due()
                self._refusal_log.flush()
                if self.broker.events.lost:
                    self._lost("disconnected by the broker or heartbeat timeout")
                    continue
                self.session.wait(self._deadline())
            except SpoolError as exc:
                # Unacked messages will be redelivered: close and start over later.
                self._warn(logging.ERROR, "spool", f"inbound spool problem; resubscribing later: {exc}")
                self.health.error(f"inbound spool: {exc}")
                self._lost(f"inbound spool: {exc}")
                self.session.sleep(SPOOL_RETRY)
            except (StompException, OSError) as exc:
                self._lost(f"{exc.__class__.__name__}: {exc}")
        if self._unacked and self.broker.is_connected:
            try:
                self._send_acks()
            except (StompException, OSError):
                pass                    # redelivered to the next consumer; the memory drops them
        self.broker.discard()
        self.poison.close()
        self.health.set_state("subscriber", "stopped")

    def _deadline(self) -> Optional[float]:
        """When the loop must run without being woken: when the refusal log's held-back
        summary is due (RateLimitedLog.flush) or the ACKs waiting are; None: only a wake-up."""
        due = self._refusal_log.due_in()
        deadlines = [] if due is None else [time.monotonic() + due]
        if self._unacked:
            deadlines.append(self._unacked_since + self.settings.ack_delay)
        return min(deadlines, default=None)

    def _reconnect(self) -> None:
        if self.broker.conn is not None:
            self._lost("connection lost")
        self.session.connect()

    def _subscribe(self) -> None:
        for index, sub in enumerate(self.settings.subscriptions):
            id_, headers = kinds.subscribe_headers(self.brokers.kind, index, sub.destination, sub.selector,
                                                   sub.durable_name, self.settings.prefetch, self.settings.client_id)
            self.broker.conn.subscribe(sub.destination, id=id_, ack="client", headers=headers)

    def _lost(self, why: str) -> None:
        if self._held is not None:
            # Its messages were never acked: the broker delivers them again, to us or another.
            self._held = None
            self._paused = False
        # Ack ids of a lost connection mean nothing to the next: those messages come again
        # and the memory of what was injected drops them.
        self._unacked, self._unacked_count = {}, 0
        self.session.lost(why)

    def _take_messages(self) -> List[Tuple[Dict[str, str], bytes]]:
        """The messages received, up to the spool's batch_limits: while paused on a full spool
        up to a whole prefetch (500) waits, and a batch bigger than the spool's limit never
        fit, even empty (the subscriber stayed paused for ever: benchmarks/reliability.py,
        2026-12-05). The rest is taken in the next round."""
        most, most_bytes = self.spool.batch_limits()
        events = self.broker.events
        with events.lock:
            waiting = events.messages
            cut = size = 0
            while cut < len(waiting) and (cut == 0 or (cut < most and size + len(waiting[cut][1]) <= most_bytes)):
                size += len(waiting[cut][1])
                cut += 1
            messages, events.messages = waiting[:cut], waiting[cut:]
        if len(messages) < len(waiting):
            self.wakeup.set()           # the rest: in the next round, not at the next frame
        return [(headers, body if isinstance(body, bytes) else body.encode("utf-8", "surrogateescape"))
                for headers, body in messages]

    @property
    def rules(self) -> judgement.Rules:
        # Built per batch: refresh_known_objects replaces self.policy while we run.
        return judgement.make_rules(self.settings, self.policy.known_objects, self.verifier)

    def _judge(self, messages: List[Tuple[Dict[str, str], bytes]], now: float) -> List[judgement.Verdict]:
        rules = self.rules
        verdicts = []
        for headers, body in messages:
            print_ = fingerprint(headers, body)
            if self.poison.is_suspect(print_):
                verdicts.append(judgement.Verdict(judgement.REFUSED, refusal=Refused(
                    "poison", f"the bridge stopped while judging this message before (fingerprint {print_}):"
                              f" kept unjudged")))
                continue
            self.poison.judging(print_)
            verdicts.append(judgement.judge_one(rules, headers, body, now))
        self.poison.idle()
        return judgement.against_memory(verdicts, self.memory)

    def _handle(self, messages: List[Tuple[Dict[str, str], bytes]]) -> None:
        if not messages:
            return
        now = time.time()
        verdicts = self._judge(messages, now)
        if self.tracker is not None:
            self.tracker.note_batch([(headers, verdict.refusal.reason if verdict.outcome == judgement.REFUSED
                                      else None) for (headers, _), verdict in zip(messages, verdicts)], now)
        accepted: List[Message] = []
        for (headers, body), verdict in zip(messages, verdicts):
            if verdict.outcome == judgement.REFUSED:
                # Durable when this returns (add_dead_letter commits): acked with the batch.
                self._refuse(headers, body, verdict.refusal)
            elif verdict.outcome == judgement.ACCEPTED:
                accepted.append(Message(message_id=verdict.key, destination="nagios", headers={},
                                        body=self.results.encode(verdict.result)))
            else:
                self.health.add("duplicates" if verdict.outcome == judgement.DUPLICATE else "stale")
        self._held = _Held(accepted, judgement.memory_rows(verdicts), cumulative_acks(messages), len(messages))
        self._store_held()
        self._forget_some(now)

    def _forget_some(self, now: float) -> None:
        """Between batches: a step of the memory's sweep, at most every SWEEP_STEP_GAP seconds,
        and a new sweep every FORGET_INTERVAL."""
        if now - self._forgotten_at > FORGET_INTERVAL:
            self._forgotten_at = now
            self.memory.start_forgetting(now - self.settings.max_age)
        if now - self._swept_at >= SWEEP_STEP_GAP:
            self._swept_at = now
            self.memory.forget_some()

    def _store_held(self) -> None:
        """Store the held batch and ACK it; if the spool is full, keep holding it (paused:
        nothing more is taken, nothing acked) until the spool wakes us with room."""
        held = self._held
        assert held is not None
        states = self.tracker.unsaved() if self.tracker is not None else []
        if held.accepted or states:
            try:
                # Durable hand-off first, with what it adds to the memory ...
                new = self.spool.put(held.accepted, newest=held.memory, states=states)
            except SpoolFull as exc:
                if not self._paused:
                    self._paused = True
                    self.health.add("paused")
                    self.health.set_state("subscriber", PAUSED)
                    self._warn(logging.WARNING, "full", f"inbound spool full: holding {held.taken} messages "
                               f"unacked and taking no more until it has room ({exc})")
                return
            if self.tracker is not None:
                self.tracker.saved(states)
            self.health.add("duplicates", len(held.accepted) - new)
            if held.accepted:
                self.health.mark("receive")
        self._held = None
        if self._paused:
            self._paused = False
            log.info("inbound spool has room again: taking messages again")
            self.health.set_state("subscriber", "subscribed on %s:%d" % self.broker.address)
        # Every message taken is counted once its outcome is durable (a batch the spool could
        # not take is redelivered, and counted then): received = injected + refused +
        # duplicates + stale + waiting in the inbound spool.
        self.health.add("received", held.taken)
        self._ack_later(held.acks, held.taken)  # ... then the ACKs

    def _ack_later(self, acks: Dict[str, str], count: int) -> None:
        """Note the ACKs of a durable batch; they go out at once, or with ``ack_delay``, with
        the next batches' once ``ack_every`` messages or ``ack_delay`` seconds wait."""
        if not self._unacked:
            self._unacked_since = time.monotonic()
        self._unacked.update(acks)
        self._unacked_count += count
        self._ack_if_due()

    def _ack_if_due(self) -> None:
        if self._unacked and (self._unacked_count >= self.ack_every
                              or time.monotonic() - self._unacked_since >= self.settings.ack_delay):
            self._send_acks()

    def _send_acks(self) -> None:
        acks, self._unacked, self._unacked_count = self._unacked, {}, 0
        self.broker.ack_all(acks.values())


    def _refuse(self, headers: Dict[str, str], body: bytes, exc: Refused) -> None:
        self.health.add("refused")
        self.health.add(f"refused.{exc.reason}")
        self._refusal_log(logging.WARNING, exc.reason,
                          f"refused a message from {quoted(headers.get('destination', '?'), 200)} "
                          f"(sender {quoted(headers.get(self.policy.sender_header, '?'), 200)}): {exc}")
        # Its own id: the spool counts an id it holds as a dead letter as a duplicate, so a
        # forgery kept under the genuine result's id would make the genuine one vanish.
        # Not remembered as seen either, for the same reason.
        states = self.tracker.unsaved() if self.tracker is not None else []
        self.spool.add_dead_letter(dead_letter(headers, body, exc, self.settings.mapping.max_body_bytes),
                                   str(exc)[:1000], states=states)
        if self.tracker is not None:
            self.tracker.saved(states)
        if exc.reason == "poison":
            self.poison.caught(fingerprint(headers, body))
        self.health.add("dead_letters")
        if self.settings.error_queue:
            # Best effort: the local dead letter above is the record that counts.
            error_headers = {"persistent": "true", "expires": str(int((time.time() + 7 * 86400) * 1000)),
                             "refused": exc.reason, "reason": str(exc)[:1000].replace("\n", " "),
                             "original_destination": headers.get("destination", "")[:200],
                             "refused_by": self.settings.client_id}
            self.broker.send(self.settings.error_queue, body[:65536], error_headers)
            self.health.add("error_queue_sent")


def cumulative_acks(messages: List[Tuple[Dict[str, str], bytes]]) -> Dict[str, str]:
    """The ack ids that acknowledge every message of a batch with ``client`` acks: of each
    subscription, its last message's (subscription -> ack id)."""
    last: Dict[str, str] = {}
    for headers, _ in messages:
        last[headers.get("subscription", "")] = headers.get("ack", "")
    return last


def dead_letter(headers: Mapping[str, str], body: bytes, exc: Refused, max_body_bytes: int) -> Message:
    """A refused message as a dead letter: whole, so that requeue after a fix judges exactly
    what was received, within the bounds the judgement accepts (a body over max_body_bytes,
    or headers over the header limits, were refused for that and are kept cut, with a note)."""
    kept: Dict[str, str] = dict(headers)
    if exc.reason == "bad-headers":
        kept = {name[:judgement.MAX_HEADER_NAME_BYTES // 4]: value[:1024]
                for name, value in list(headers.items())[:judgement.MAX_HEADERS]}
        kept["x-bridge-headers-cut"] = f"{len(headers)} headers, names and values cut to fit"
    if len(body) > max_body_bytes:
        kept["x-bridge-body-cut"] = f"{len(body) - max_body_bytes} of {len(body)} bytes cut"
        body = body[:max_body_bytes]
    kept["refused"] = exc.reason
    return Message(message_id=f"refused:{time.time_ns()}:{fingerprint(headers, body)}",
                   destination=headers.get("destination", "?")[:1024], headers=kept, body=body)
