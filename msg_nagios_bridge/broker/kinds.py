"""What the bridge says differently to each kind of broker (``brokers.kind``).

Both speak STOMP 1.2, but their extensions differ. What is done here, and why (measured and
read from RabbitMQ 3.10.8's rabbitmq_stomp, see docs/rabbitmq.md):

* **Publishing.** ActiveMQ sends a COMMIT's receipt once the transaction's messages are
  stored. RabbitMQ's STOMP plugin keeps a transaction's frames in memory, publishes them at
  COMMIT and answers the COMMIT's receipt at once, without waiting for its publisher confirms:
  that receipt proves nothing about the messages. A SEND's receipt, though, is sent only when
  RabbitMQ confirms the message (for a persistent message in a durable queue: once it is on
  disk). So on RabbitMQ the bridge sends each message with its own receipt, many in flight.
* **Expiry.** ActiveMQ reads ``expires`` (an absolute time, ms since the epoch); RabbitMQ
  ignores it (it passes it on as an application header) and reads ``expiration``: the time
  to live in ms, relative to its arrival. Both are sent to RabbitMQ.
* **Subscribing.** ActiveMQ: ``activemq.prefetchSize``, a durable topic subscription is the
  CONNECT's ``client-id`` plus ``activemq.subscriptionName``. RabbitMQ: ``prefetch-count``
  (without it, the broker sends without limit), a durable topic subscription is a durable
  queue bound to the topic, asked for with ``durable:true``, ``auto-delete:false`` and a
  stable ``id``; its queue is named (``x-queue-name``) after the client id and durable name,
  so that it is the same queue after every reconnect and readable in ``rabbitmqctl
  list_queues``.
* **Settling.** RabbitMQ 3.10 was measured losing a durable queue, with the messages it had
  just confirmed into it, when the node was killed moments after the SEND that created the
  queue (7 of 60 tries under load, docs/rabbitmq.md). So on RabbitMQ the publisher keeps a
  receipted message in the spool for ``brokers.settle_seconds`` (by default
  ``settle_seconds(kind)``) and sends it again if the connection is lost meanwhile: a crash
  right after the receipts costs duplicates, not results.
"""
from __future__ import annotations

import time
from typing import Dict, Mapping, Optional, Tuple

from .. import spool

ACTIVEMQ = "activemq"
RABBITMQ = "rabbitmq"
KINDS = (ACTIVEMQ, RABBITMQ)


def uses_transactions(kind: str) -> bool:
    """Whether the publisher sends in STOMP transactions (one receipt per COMMIT): only where
    a COMMIT's receipt proves the messages are stored."""
    return kind != RABBITMQ


RABBITMQ_SETTLE_SECONDS = 5.0


def settle_seconds(kind: str) -> float:
    """The default of ``brokers.settle_seconds``: how long a receipted message stays in the
    spool, to be sent again if the connection is lost meanwhile; 0 where a receipt alone
    proves it stored."""
    return RABBITMQ_SETTLE_SECONDS if kind == RABBITMQ else 0.0


def durable_queue_name(client_id: str, durable_name: str) -> str:
    """The name of the durable queue that holds a durable topic subscription on RabbitMQ."""
    return f"{client_id}.{durable_name}" if client_id else durable_name


def subscribe_headers(kind: str, index: int, destination: str, selector: str, durable_name: str,
                      prefetch: int, client_id: str) -> Tuple[str, Dict[str, str]]:
    """The SUBSCRIBE frame's id and other headers for the ``index``-th subscription."""
    if kind == RABBITMQ:
        # (A selector never gets here: the configuration refuses one for RabbitMQ.)
        headers = {"prefetch-count": str(prefetch)}
        if durable_name:
            queue = durable_queue_name(client_id, durable_name)
            headers.update({"durable": "true", "auto-delete": "false", "x-queue-name": queue})
            return queue, headers
        return str(index), headers
    headers = {"activemq.prefetchSize": str(prefetch)}
    if selector:
        headers["selector"] = selector
    if durable_name:
        headers["activemq.subscriptionName"] = durable_name
    return str(index), headers


def adds_no_headers(kind: str, stored_text: str) -> bool:
    """True if outgoing_headers leaves the headers of ``kind`` whose text, as the spool writes
    it (spool.headers_text), is ``stored_text`` as they are, without reading the text."""
    return kind != RABBITMQ or not spool.stored_names(stored_text, "expires")


def outgoing_headers(kind: str, headers: Mapping[str, str], now_ms: Optional[int] = None) -> Mapping[str, str]:
    """A SEND's headers for ``kind``: on RabbitMQ an ``expires`` (absolute, ms) also becomes
    ``expiration`` (the time left, ms, at the moment of sending)."""
    if kind != RABBITMQ or "expires" not in headers or "expiration" in headers:
        return headers
    try:
        expires = int(headers["expires"])
    except ValueError:
        return headers
    if expires <= 0:                # ActiveMQ's "never"
        return headers
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    return dict(headers, expiration=str(max(0, expires - now_ms)))
