"""Operator tools: dead letters (list, show, requeue, purge) and ``send``.

They work while the daemon runs: the dead-letter tables are changed through
SQLite (which serializes writers), and the daemon notices another process's commit
within its status interval (2 s: ``Spool.notice_outside_changes``), re-counts and wakes its workers.
"""
from __future__ import annotations

import os
import time
from typing import List, Optional, Sequence, TextIO

from .. import config
from ..cores import core_for
from ..inbound import judgement
from ..broker.connection import BrokerConnection
from ..display import printable, quoted
from ..model import InvalidResult
from ..model import CheckResult, Message, SpooledResults
from ..outbound.routing import Router
from ..paths import inbound_spool_path, outbound_spool_path
from ..spool import DeadLetter, Spool, SpoolError


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
    total = spool.stats().dead_letters
    if total > len(letters):
        # The spool keeps up to 10,000: say that the newest are not in this list.
        out.write(f"{len(letters)} of {total} dead letter(s) listed, the oldest: purge or requeue"
                  f" them to list the newer ones\n")
    else:
        out.write(f"{len(letters)} dead letter(s)\n")
    return len(letters)


def _find(spool: Spool, dead_id: int) -> DeadLetter:
    # By its id: reading every dead letter (up to 10,000 of up to 4 MiB) for each id made
    # a requeue of many ids quadratic (review 2026-12-05).
    letter = spool.dead_letter(dead_id)
    if letter is None:
        raise ToolError(f"no dead letter {dead_id}")
    return letter


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
    rules = load_rules(settings) if which == "inbound" else None
    for dead_id in dead_ids:
        letter = _find(spool, dead_id)
        message = letter.entry.message
        if message.destination.startswith("dead:"):
            out.write(f"{dead_id}: not requeued: it is an input line the bridge could not read, not a message\n")
            continue
        if which == "inbound":
            verdict = judge_again(rules, spool, message)
            if verdict.outcome != judgement.ACCEPTED:
                why = verdict.refusal if verdict.refusal is not None else f"{verdict.outcome}: already injected" \
                    if verdict.outcome == judgement.DUPLICATE else f"{verdict.outcome}: a newer result was injected"
                out.write(f"{dead_id}: still refused: {why}\n")
                continue
            # A new id: the spool counts an id it holds as a dead letter as a duplicate.
            # Stored first, purged after: a crash in between repeats a result, never loses one.
            requeued = Message(message_id=verdict.key, destination="nagios", headers={},
                               body=SpooledResults().encode(verdict.result))
            if spool.put([requeued], newest=judgement.memory_rows([verdict])) != 1:
                raise ToolError(f"dead letter {dead_id} could not be queued again")
            spool.purge_dead_letters([dead_id])
        elif spool.requeue_dead_letter(dead_id) is None:
            raise ToolError(f"no dead letter {dead_id}")
        out.write(f"{dead_id}: requeued\n")
        done += 1
    return done


def load_rules(settings: config.Settings) -> judgement.Rules:
    """judgement.load_rules, an unreadable object list named by its key."""
    try:
        return judgement.load_rules(settings)
    except OSError as exc:
        source = settings.inbound.objects_cache
        if not source or exc.filename != source:
            raise
        raise ToolError(f"cannot read the core's object list {source} (inbound.policy.objects_cache):"
                        f" {exc.strerror}") from None


def original_headers(message: Message) -> dict:
    """A dead letter's headers as they were received (without what the bridge added)."""
    return {k: v for k, v in message.headers.items() if k != "refused" and not k.startswith("x-bridge-")}


def judge_again(rules: judgement.Rules, spool: Spool, message: Message) -> judgement.Verdict:
    """The inbound judgement of a dead letter, against the current rules and what was injected."""
    return judgement.judge_batch(rules, [(original_headers(message), message.body)],
                                 judgement.SpoolMemory(spool), time.time())[0]


TRY_ACCEPTED, TRY_REFUSED, TRY_DROPPED = 0, 1, 3


def try_message(settings: config.Settings, headers: dict, body: bytes, out: TextIO) -> int:
    """A dry run of the inbound judgement on one message: no broker, no Nagios, nothing
    written. Prints the verdict and what would be written. Returns TRY_ACCEPTED,
    TRY_REFUSED, or TRY_DROPPED (a duplicate or a stale result, judged against the inbound
    spool's memory when the spool exists)."""
    rules = load_rules(settings)
    memory: judgement.Memory = judgement.NoMemory()
    spool = None
    path = inbound_spool_path(settings)
    if os.path.exists(path):
        spool = Spool(path, exclusive=False)
        memory = judgement.SpoolMemory(spool)
    try:
        verdict = judgement.judge_batch(rules, [(headers, body)], memory, time.time())[0]
    finally:
        if spool is not None:
            spool.close()
    if verdict.outcome == judgement.REFUSED:
        out.write(f"refused: {verdict.refusal}\n")
        return TRY_REFUSED
    if verdict.outcome != judgement.ACCEPTED:
        out.write(f"{verdict.outcome}: {'the same result was already injected' if verdict.outcome == judgement.DUPLICATE else 'a newer result for this object was already injected'}\n")
        return TRY_DROPPED
    try:
        kind, text = core_for(settings).preview(verdict.result)
    except InvalidResult as exc:     # the writer would dead-letter it
        out.write(f"refused by the writer: {exc}\n")
        return TRY_REFUSED
    out.write(f"accepted from sender {verdict.sender!r}; the {kind} that would be written:\n")
    # Escaped for the terminal: the writers keep a bidi override (and Icinga's JSON a C1
    # control such as U+009B, a CSI) of the sender's output, which are plugin text to the core.
    text = printable(text, keep="\n")
    out.write(text if text.endswith("\n") else text + "\n")
    return TRY_ACCEPTED


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
        # An error, not a quiet 0: a test that sent nothing must not pass for one that did.
        raise ToolError("no route takes this result, nothing was sent (check the routes' hard_only, hosts,"
                        " services, host_checks)")
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
