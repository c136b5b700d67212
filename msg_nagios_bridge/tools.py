"""Operator tools: dead letters (list, show, requeue, purge) and ``send``.

They work while the daemon runs: the dead-letter tables are changed through
SQLite (which serializes writers), and the daemon re-counts its spools every
``RECOUNT_INTERVAL`` seconds.
"""
from __future__ import annotations

import json
import os
import time
from typing import List, Optional, Sequence, TextIO

from . import config
from . import policy as policy_module
from .broker import BrokerConnection
from .display import printable, quoted
from .formats import inbound
from .model import CheckResult, Message, result_to_dict
from .routing import Router
from .service import inbound_spool_path, outbound_spool_path
from .spool import DeadLetter, Spool, SpoolError


class ToolError(Exception):
    """What the operator asked for cannot be done: the message says why."""


def open_spool(settings: config.Settings, which: str) -> Spool:
    path = inbound_spool_path(settings) if which == "inbound" else outbound_spool_path(settings)
    if not os.path.exists(path):
        raise ToolError(f"no {which} spool at {path} (has the bridge run with {which} enabled?)")
    return Spool(path, exclusive=False)


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def list_dead_letters(spool: Spool, out: TextIO, limit: int = 1000) -> int:
    letters = spool.dead_letters(limit)
    for letter in letters:
        out.write(f"{letter.dead_id:6d}  {_when(letter.rejected_at)}  "
                  f"{printable(letter.entry.message.destination, 60):60s}  {printable(letter.reason, 120)}\n")
    out.write(f"{len(letters)} dead letter(s)\n")
    return len(letters)


def _find(spool: Spool, dead_id: int) -> DeadLetter:
    for letter in spool.dead_letters(1_000_000):
        if letter.dead_id == dead_id:
            return letter
    raise ToolError(f"no dead letter {dead_id}")


def show_dead_letter(spool: Spool, dead_id: int, out: TextIO) -> None:
    letter = _find(spool, dead_id)
    message = letter.entry.message
    out.write(f"dead letter {letter.dead_id}, refused {_when(letter.rejected_at)}\n")
    # Everything below but the id and the time came from outside: escaped (display.py).
    out.write(f"reason: {printable(letter.reason)}\n")
    out.write(f"destination: {printable(message.destination)}\nmessage id: {printable(message.message_id)}\n")
    for key, value in sorted(message.headers.items()):
        out.write(f"header {printable(key)}: {quoted(value, None)}\n")
    out.write("body:\n" + printable(message.body, keep="\n\t") + "\n")


def requeue(settings: config.Settings, which: str, spool: Spool, dead_ids: Sequence[int], out: TextIO) -> int:
    """Give dead letters another chance. Returns how many were requeued.

    Outbound: the message goes back in the queue as it was. Inbound: the
    original message is decoded and checked against the *current* policy
    again (requeueing makes sense after the policy or the Nagios objects
    changed); if accepted, its result joins the queue to Nagios.
    """
    done = 0
    for dead_id in dead_ids:
        letter = _find(spool, dead_id)
        message = letter.entry.message
        if message.destination.startswith("dead:"):
            out.write(f"{dead_id}: not requeued: it is an input line the bridge could not read, not a message\n")
            continue
        if which == "inbound":
            try:
                result = _decode_again(settings, message)
            except inbound.Refused as exc:
                out.write(f"{dead_id}: still refused: {exc}\n")
                continue
            # A new id: the spool counts an id it holds as a dead letter as a duplicate.
            # Stored first, purged after: a crash in between repeats a result, never loses one.
            requeued = Message(message_id=f"{message.message_id}:requeued:{time.time():.6f}", destination="nagios",
                               headers={}, body=json.dumps(result_to_dict(result)).encode("utf-8"))
            if spool.put([requeued]) != 1:
                raise ToolError(f"dead letter {dead_id} could not be queued again")
            spool.purge_dead_letters([dead_id])
        elif spool.requeue_dead_letter(dead_id) is None:
            raise ToolError(f"no dead letter {dead_id}")
        out.write(f"{dead_id}: requeued\n")
        done += 1
    return done


def _decode_again(settings: config.Settings, message: Message) -> CheckResult:
    inbound_settings = settings.inbound
    known = None
    if inbound_settings.objects_cache:
        known = policy_module.known_objects_from_objects_cache(inbound_settings.objects_cache)
    policy = policy_module.Policy(rules=inbound_settings.rules, sender_header=inbound_settings.sender_header,
                                  known_objects=known)
    headers = {k: v for k, v in message.headers.items() if k != "refused"}
    result = inbound.decode(headers, message.body, inbound_settings.mapping)
    policy_module.check(policy, result, policy_module.sender_of(policy, headers))
    return result


def purge(spool: Spool, dead_ids: Optional[List[int]], older_than_days: Optional[float]) -> int:
    before = time.time() - older_than_days * 86400 if older_than_days is not None else None
    return spool.purge_dead_letters(dead_ids, before=before)


def send(settings: config.Settings, result: CheckResult, out: TextIO, timeout: float = 10.0) -> int:
    """Route ``result`` like the daemon would and publish it now, waiting for the broker's receipts.

    Returns how many messages the broker confirmed. Goes straight to the broker
    (not through the spool), so it also proves the broker settings work.
    """
    messages = Router(settings).messages(result, int(time.time() * 1000))
    if not messages:
        out.write("no route takes this result (check hard_only, hosts, services, host_checks)\n")
        return 0
    broker = BrokerConnection(settings.brokers)
    problem = broker.connect()
    if problem is not None:
        raise ToolError(f"no broker reachable: {problem}")
    try:
        for index, message in enumerate(messages):
            broker.send(message.destination, message.body, dict(message.headers, receipt=f"send-{index}"))
        confirmed: set = set()
        deadline = time.monotonic() + timeout
        while len(confirmed) < len(messages) and time.monotonic() < deadline:
            broker.events.wakeup.wait(0.1)
            broker.events.wakeup.clear()
            for kind, headers, body in broker.take_replies():
                if kind == "error":
                    raise ToolError(f"the broker refused it: {headers.get('message', '')} {body.strip()[:200]}")
                confirmed.add(headers.get("receipt-id"))
    finally:
        broker.close()
    for message in messages:
        out.write(f"sent to {message.destination} (result_id {message.headers['result_id']})\n")
    if len(confirmed) < len(messages):
        raise ToolError(f"only {len(confirmed)} of {len(messages)} receipts within {timeout:g} s")
    out.write(f"{len(confirmed)} message(s) confirmed by the broker\n")
    return len(confirmed)


__all__ = ["ToolError", "open_spool", "list_dead_letters", "show_dead_letter", "requeue", "purge", "send",
           "SpoolError"]
