"""The inbound source: subscriptions -> judgement -> inbound spool -> ACK.

Subscriptions use ``client-individual`` acks and a bounded prefetch. Every message is
judged by judgement.judge_batch (the same function the operator tools use). A message is
acked only after it is durably in the inbound spool, or durably kept as a dead letter with
its reason (a refused message is acked too, so the broker does not redeliver it forever).
Duplicates and stale results are dropped against the memory of what was injected, kept in
the inbound spool (so it holds across restarts) and written in the same transaction as the
accepted results. A message whose judgement killed the bridge is dead-lettered unjudged
when it comes again (poison.py). After a broker loss the subscriber reconnects over the
failover list with capped backoff, forever, and subscribes again.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Dict, List, Mapping, Optional, Tuple

from stomp.exception import StompException

from ..broker.connection import BrokerConnection
from ..config import BrokerSettings, InboundSettings
from . import judgement
from . import policy as policy_module
from ..display import quoted
from ..model import Refused
from ..daemon.health import Backoff, Health, RateLimitedLog
from ..model import Message, result_to_dict
from .poison import PoisonGuard, fingerprint
from ..spool import Spool, SpoolError

log = logging.getLogger(__name__)

FORGET_INTERVAL = 600.0      # seconds between trims of the memory of injected results


class Subscriber(threading.Thread):
    def __init__(self, brokers: BrokerSettings, settings: InboundSettings, spool: Spool,
                 health: Health, policy: policy_module.Policy):
        super().__init__(name="subscriber", daemon=True)
        self.brokers = brokers
        self.settings = settings
        self.spool = spool
        self.health = health
        self.policy = policy
        self.broker = BrokerConnection(brokers, client_id=settings.client_id, auto_decode=False)
        self.stopping = threading.Event()
        self.memory = judgement.SpoolMemory(spool)
        self.poison = PoisonGuard(spool.path + ".judging")
        self._forgotten_at = 0.0
        self._backoff = Backoff(brokers.backoff_initial, brokers.backoff_max)
        self._warn = RateLimitedLog(log)
        self._refusal_log = RateLimitedLog(log)
        self.verifier = judgement.make_verifier(settings)

    def stop(self) -> None:
        self.stopping.set()
        self.broker.events.wakeup.set()

    def run(self) -> None:
        self.health.set_state("subscriber", "starting")
        while not self.stopping.is_set():
            try:
                if not self.broker.is_connected:
                    self._reconnect()
                    continue
                self.broker.events.wakeup.wait(0.2)
                self.broker.events.wakeup.clear()
                self._handle(self._take_messages())
                self._refusal_log.flush()
                if self.broker.events.lost:
                    self._lost("disconnected by the broker or heartbeat timeout")
            except SpoolError as exc:
                # Unacked messages will be redelivered: close and start over later.
                self._warn(logging.ERROR, "spool", f"inbound spool problem; resubscribing later: {exc}")
                self.health.error(f"inbound spool: {exc}")
                self._lost(f"inbound spool: {exc}")
                self.stopping.wait(1.0)
            except (StompException, OSError) as exc:
                self._lost(f"{exc.__class__.__name__}: {exc}")
        self.broker.discard()
        self.poison.close()
        self.health.set_state("subscriber", "stopped")

    def _reconnect(self) -> None:
        if self.broker.conn is not None:
            self._lost("connection lost")
        self.health.set_state("subscriber", "connecting")
        problem = self.broker.connect()
        if problem is None:
            try:
                self._subscribe()
            except (StompException, OSError) as exc:
                problem = f"subscribe failed: {exc}"
                self.broker.close()
        if problem is None:
            self._backoff.reset()
            self.health.set_state("subscriber", "subscribed on %s:%d" % self.broker.address)
            return
        delay = self._backoff.next_delay()
        self.health.set_state("subscriber", f"disconnected: {problem}")
        self.health.error(f"subscriber: {problem}")
        self._warn(logging.WARNING, "connect", f"subscriber: no broker reachable ({problem}); retrying in {delay:.1f} s")
        self.stopping.wait(delay)

    def _subscribe(self) -> None:
        for index, sub in enumerate(self.settings.subscriptions):
            headers = {"activemq.prefetchSize": str(self.settings.prefetch)}
            if sub.selector:
                headers["selector"] = sub.selector
            if sub.durable_name:
                headers["activemq.subscriptionName"] = sub.durable_name
            self.broker.conn.subscribe(sub.destination, id=str(index), ack="client-individual", headers=headers)

    def _lost(self, why: str) -> None:
        self._warn(logging.WARNING, "lost", f"subscriber connection lost ({why}); will reconnect")
        self.health.error(f"subscriber: {why}")
        self.broker.close()

    def _take_messages(self) -> List[Tuple[Dict[str, str], bytes]]:
        events = self.broker.events
        with events.lock:
            messages, events.messages = events.messages, []
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
        accepted: List[Message] = []
        for (headers, body), verdict in zip(messages, verdicts):
            if verdict.outcome == judgement.REFUSED:
                self._refuse(headers, body, verdict.refusal)
            elif verdict.outcome == judgement.ACCEPTED:
                accepted.append(Message(message_id=verdict.key, destination="nagios", headers={},
                                        body=json.dumps(result_to_dict(verdict.result)).encode("utf-8")))
            else:
                self.health.add("duplicates" if verdict.outcome == judgement.DUPLICATE else "stale")
        if accepted:
            # Durable hand-off first, with what it adds to the memory ...
            new = self.spool.put(accepted, marks=judgement.memory_marks(verdicts))
            self.health.add("duplicates", len(accepted) - new)
            self.health.mark("receive")
        # Every message taken is counted once its outcome is durable (a batch the spool could
        # not take is redelivered, and counted then): received = injected + refused +
        # duplicates + stale + waiting in the inbound spool.
        self.health.add("received", len(messages))
        for headers, _ in messages:         # ... then the ACK
            self.broker.conn.ack(headers.get("ack", ""))
        if now - self._forgotten_at > FORGET_INTERVAL:
            self._forgotten_at = now
            self.memory.forget(now - self.settings.max_age)

    def _refuse(self, headers: Dict[str, str], body: bytes, exc: Refused) -> None:
        self.health.add("refused")
        self.health.add(f"refused.{exc.reason}")
        self._refusal_log(logging.WARNING, exc.reason,
                          f"refused a message from {quoted(headers.get('destination', '?'), 200)} "
                          f"(sender {quoted(headers.get(self.policy.sender_header, '?'), 200)}): {exc}")
        # Its own id: the spool counts an id it holds as a dead letter as a duplicate, so a
        # forgery kept under the genuine result's id would make the genuine one vanish.
        # Not remembered as seen either, for the same reason.
        self.spool.add_dead_letter(dead_letter(headers, body, exc, self.settings.mapping.max_body_bytes),
                                   str(exc)[:1000])
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
