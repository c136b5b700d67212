"""The inbound source: subscriptions -> decode -> policy -> inbound spool -> ACK.

Subscriptions use ``client-individual`` acks and a bounded prefetch. A message
is acked only after it is durably in the inbound spool, or durably kept as a
dead letter with its reason (a refused message is acked too, so the broker does
not redeliver it forever). Duplicates are dropped by ``result_id``: the spool
ignores an id it holds, and a bounded memory of recent ids covers results
already handed to Nagios. After a broker loss the subscriber reconnects over
the failover list with capped backoff, forever, and subscribes again.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import threading
import time
from typing import Deque, Dict, List, Mapping, Optional, Set, Tuple

from stomp.exception import StompException

from ..broker import BrokerConnection
from ..config import BrokerSettings, InboundSettings
from ..formats import inbound
from ..health import Backoff, Health, RateLimitedLog
from ..model import Message, result_to_dict
from .. import policy as policy_module
from ..spool import Spool, SpoolError

log = logging.getLogger(__name__)

RECENT_IDS = 200_000


class RecentIds:
    """A bounded set of recently accepted ids (oldest forgotten first). Not thread-safe: one
    subscriber uses it at a time (a reload hands it on once the old one has ended)."""

    def __init__(self, size: int = RECENT_IDS):
        self.size = size
        self._order: Deque[str] = collections.deque()
        self._ids: Set[str] = set()

    def __contains__(self, item: str) -> bool:
        return item in self._ids

    def add(self, item: str) -> None:
        if item in self._ids:
            return
        self._ids.add(item)
        self._order.append(item)
        if len(self._order) > self.size:
            self._ids.discard(self._order.popleft())


def dedupe_key(headers: Mapping[str, str], body: bytes, sender_header: str = "") -> str:
    """The publisher's stable result_id when there is one, else a hash of the body.

    A result_id counts within its sender (the sender header, and the signer's certificate
    when signed): a sender the policy accepts must not be able to make another's result
    look like a duplicate by sending its id first.
    """
    result_id = headers.get("result_id", "")
    if result_id and len(result_id) <= 128:
        origin = f"{headers.get(sender_header, '') if sender_header else ''}\0{headers.get('signer', '')}"
        scope = hashlib.blake2b(origin.encode("utf-8", "replace"), digest_size=8).hexdigest()
        return f"id:{scope}:{result_id}"
    return "body:" + hashlib.blake2b(body, digest_size=16).hexdigest()


class Subscriber(threading.Thread):
    def __init__(self, brokers: BrokerSettings, settings: InboundSettings, spool: Spool,
                 health: Health, policy: policy_module.Policy, recent: Optional[RecentIds] = None):
        super().__init__(name="subscriber", daemon=True)
        self.brokers = brokers
        self.settings = settings
        self.spool = spool
        self.health = health
        self.policy = policy
        self.broker = BrokerConnection(brokers, client_id=settings.client_id, auto_decode=False)
        self.stopping = threading.Event()
        self.recent = recent if recent is not None else RecentIds()
        self._backoff = Backoff(brokers.backoff_initial, brokers.backoff_max)
        self._warn = RateLimitedLog(log)
        self._refusal_log = RateLimitedLog(log)
        self.verifier = None
        if settings.signatures.required:
            from ..signing import Verifier
            self.verifier = Verifier.from_settings(settings.signatures)

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

    def _handle(self, messages: List[Tuple[Dict[str, str], bytes]]) -> None:
        if not messages:
            return
        accepted: List[Message] = []
        acks: List[str] = []
        keys: List[str] = []
        now = time.time()
        for headers, body in messages:
            ack_id = headers.get("ack", "")
            key = dedupe_key(headers, body, self.policy.sender_header)
            acks.append(ack_id)
            if key in self.recent:
                self.health.add("duplicates")
                continue
            try:
                # With signatures required, the verified signer is the sender the policy sees.
                sender = (self.verifier.verify(headers, body).dn if self.verifier is not None
                          else policy_module.sender_of(self.policy, headers))
                result = inbound.decode(headers, body, self.settings.mapping, now=now)
                policy_module.check(self.policy, result, sender)
            except inbound.Refused as exc:
                self._refuse(headers, body, key, exc)
                continue
            except Exception as exc:     # noqa: BLE001
                # A defect, not a verdict on the message: still kept as a dead letter and
                # acked, because an exception here would stop the subscriber on a message the
                # broker redelivers after every restart.
                log.exception("cannot judge a message from %s", headers.get("destination", "?"))
                self._refuse(headers, body, key, inbound.Refused(
                    "internal-error", f"the bridge failed on this message: {type(exc).__name__}: {exc}"))
                continue
            accepted.append(Message(message_id=key, destination="nagios", headers={},
                                    body=json.dumps(result_to_dict(result)).encode("utf-8")))
            keys.append(key)
        if accepted:
            new = self.spool.put(accepted)      # durable hand-off first ...
            self.health.add("received", new)
            self.health.add("duplicates", len(accepted) - new)
            self.health.mark("receive")
        for key in keys:
            self.recent.add(key)
        for ack_id in acks:               # ... then the ACK
            self.broker.conn.ack(ack_id)

    def _refuse(self, headers: Dict[str, str], body: bytes, key: str, exc: inbound.Refused) -> None:
        self.health.add("refused")
        self.health.add(f"refused.{exc.reason}")
        self._refusal_log(logging.WARNING, exc.reason,
                          f"refused a message from {headers.get('destination', '?')} "
                          f"(sender {headers.get(self.policy.sender_header, '?')!r}): {exc}")
        kept = {k: v[:200] for k, v in list(headers.items())[:50]}
        kept["refused"] = exc.reason
        # Its own id: the spool counts an id it holds as a dead letter as a duplicate, so a
        # forgery kept under the genuine result's id would make the genuine one vanish.
        self.spool.add_dead_letter(Message(message_id=f"refused:{time.time_ns()}:{key}",
                                           destination=headers.get("destination", "?")[:200],
                                           headers=kept, body=body[:65536]), str(exc)[:1000])
        self.health.add("dead_letters")
        # Not remembered as seen: a forged message must not make the genuine one with the
        # same result_id look like a duplicate later.
        if self.settings.error_queue:
            # Best effort: the local dead letter above is the record that counts.
            error_headers = {"persistent": "true", "expires": str(int((time.time() + 7 * 86400) * 1000)),
                             "refused": exc.reason, "reason": str(exc)[:1000].replace("\n", " "),
                             "original_destination": headers.get("destination", "")[:200],
                             "refused_by": self.settings.client_id}
            self.broker.send(self.settings.error_queue, body[:65536], error_headers)
            self.health.add("error_queue_sent")
