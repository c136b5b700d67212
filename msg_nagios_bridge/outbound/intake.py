"""What both outbound sources share: lines -> results -> messages -> spool.

``spool_lines`` returns only once the batch is durably in the spool (or the
bridge is stopping): that is the moment a source may move on. When the spool
is full or the disk is failing it waits and retries, which is the back-pressure
the sources pass on to Nagios (see docs/spool.md).
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Callable, List, Optional, Sequence, Tuple

from ..daemon.health import Health, RateLimitedLog
from ..model import CheckResult, Message
from .routing import Router
from ..wakeup import Wakeup
from ..spool import Row, Spool, SpoolError, SpoolFull, encode

log = logging.getLogger(__name__)

MAX_DEAD_LETTER_PREVIEW = 4096
PIECE_LINES = 500       # lines parsed and spooled at a time (see spool_lines)

Mark = Tuple[str, str, float]     # (kind, key, time): see Spool.put


class Intake:
    def __init__(self, source: str, router: Router, spool: Spool, health: Health,
                 stopping: threading.Event, parse: Callable[[str], CheckResult]):
        """``parse`` is the core's: one line (or record) of its text -> a CheckResult, or
        ValueError saying why it is not one (the input is then dead-lettered with that reason)."""
        self.source = source
        self.parse = parse
        self.router = router
        self.spool = spool
        self.health = health
        self.stopping = stopping
        self._warn = RateLimitedLog(log)
        # A batch that waits for room sleeps on this: the spool sets it when entries leave
        # (the publisher's deletes), stop() through wake().
        self._room = Wakeup()
        spool.wake_on_room(self._room)
        # Called about once a second while a batch waits for room (the perfdata tailer opens
        # files that Nagios rotates meanwhile, before a second rotation could unlink them).
        self.while_waiting: Optional[Callable[[], None]] = None

    def spool_lines(self, lines: Sequence[bytes], cursor: Optional[Tuple[str, str]] = None,
                    marks_of: Optional[Callable[[CheckResult], Mark]] = None) -> bool:
        """Parse, route and durably spool ``lines`` with ``cursor``, retrying while full.

        ``marks_of`` gives the spool mark (kind, key, time) of each result parsed (routed or
        not), stored in the same transaction as the messages (Spool.put's ``marks``): e.g. the
        newest time per object a source has spooled. Returns False only if the bridge began
        stopping before the batch was stored.
        """
        now_ms = int(time.time() * 1000)
        marks: List[Mark] = []
        self.health.add(f"{self.source}.lines", len(lines))
        # Parsed and stored a piece at a time, so that the publisher sends the first piece
        # while the next is parsed: a backlog of 10,000 lines read in one go otherwise waits
        # whole before its first message leaves (issue 16: outbound throughput).
        for start in range(0, max(len(lines), 1), PIECE_LINES):
            refused: List[Tuple[Message, str]] = []
            messages = self._messages(lines[start:start + PIECE_LINES], now_ms, marks, marks_of, refused)
            last_piece = start + PIECE_LINES >= len(lines)
            chunks = self._chunks(messages)
            for number, (chunk, rows) in enumerate(chunks, 1):
                # The cursor and marks go with the last chunk: a crash in between re-reads the
                # lines, and the spool drops the ids it already holds (dead letters too).
                last = last_piece and number == len(chunks)
                if not self._store(chunk, cursor if last else None, marks if last else [],
                                   refused if number == 1 else [], rows):
                    return False
        return True

    def _messages(self, lines: Sequence[bytes], now_ms: int, marks: List[Mark],
                  marks_of: Optional[Callable[[CheckResult], Mark]],
                  refused: List[Tuple[Message, str]]) -> List[Message]:
        """The routed messages of ``lines``; a line that is no result goes to ``refused`` as a
        dead letter (stored with the messages, in one transaction: an fsync each held a source
        that Nagios wrote in an unexpected template to the disk's fsync rate). The mark of
        each result parsed is appended to ``marks``."""
        messages: List[Message] = []
        for raw in lines:
            text = raw.decode("utf-8", errors="replace").rstrip("\r")
            if not text.strip():
                continue
            try:
                try:
                    result = self.parse(text)
                except ValueError as exc:
                    refused.append(self._refused(raw, str(exc)))
                    continue
                # Unsigned here: the spool signs them once numbered (route_seq signed too).
                messages.extend(self.router.messages(result, now_ms, sign=False))
                if marks_of is not None:
                    marks.append(marks_of(result))
            except Exception as exc:     # noqa: BLE001
                # Whatever one line does, it must not stop the source: the line would be read
                # again after the restart, and fail again, for ever (a poison pill).
                log.exception("%s: cannot turn a line into messages", self.source)
                refused.append(self._refused(raw, f"cannot be turned into a message: {type(exc).__name__}: {exc}"))
        return messages

    def _chunks(self, messages: List[Message]) -> List[Tuple[List[Message], List[Row]]]:
        """Split a batch into parts within the spool's batch_limits: (messages, their rows as
        the spool stores them), the rows made here once for their sizes and handed to put."""
        most, most_bytes = self.spool.batch_limits()
        chunks: List[Tuple[List[Message], List[Row]]] = [([], [])]
        size = 0
        for message in messages:
            row = encode(message)
            if chunks[-1][0] and (len(chunks[-1][0]) >= most or size + row[4] > most_bytes):
                chunks.append(([], []))
                size = 0
            chunks[-1][0].append(message)
            chunks[-1][1].append(row)
            size += row[4]
        return chunks

    def _store(self, messages: List[Message], cursor: Optional[Tuple[str, str]],
               marks: Sequence[Mark] = (), refused: Sequence[Tuple[Message, str]] = (),
               rows: Optional[Sequence[Row]] = None) -> bool:
        """Durably spool ``messages`` (``rows``: encoded already) with ``cursor``, ``marks`` and
        ``refused`` (dead letters), retrying while the spool is full or unavailable; False only
        if the bridge began stopping first."""
        while True:
            try:
                if messages or cursor is not None or marks or refused:
                    self.spool.put(messages, cursor=cursor, marks=marks, numbered=True, dead_letters=refused,
                                   sign=self.router.signature if self.router.signer is not None else None,
                                   encoded=rows)
                self.health.add("spooled", len(messages))
                self.health.set_state(self.source, "reading")
                return True
            except SpoolError as exc:
                kind = "full" if isinstance(exc, SpoolFull) else "unavailable"
                self.health.add(f"spool_{kind}_waits")
                # e.g. "waiting: spool unavailable: database or disk is full"
                self.health.set_state(self.source, f"waiting: spool {kind}: {str(exc).rsplit(': ', 1)[-1][:80]}")
                self._warn(logging.ERROR, kind,
                           f"{self.source}: cannot spool {len(messages)} messages, holding the source "
                           f"until the spool takes them: {exc}")
            if self._wait_for_room():
                return False

    def wake(self) -> None:
        """Wake a batch waiting for room (the bridge is stopping)."""
        self._room.set()

    def _wait_for_room(self) -> bool:
        """Sleep until the spool frees room or the bridge stops (True); while_waiting runs
        about once a second meanwhile: its deadline, not a poll for room."""
        deadline = time.monotonic() + 1.0
        while not self.stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                if self.while_waiting is not None:
                    self.while_waiting()
                return False
            if self._room.wait(left):
                return self.stopping.is_set()
        return True

    def _refused(self, raw: bytes, reason: str) -> Tuple[Message, str]:
        """An input the bridge could not use, as a dead letter with its reason, said (rate-limited)."""
        preview = raw[:MAX_DEAD_LETTER_PREVIEW]
        message = Message(
            message_id=hashlib.blake2b(raw, digest_size=16).hexdigest(),
            destination=f"dead:{self.source}",
            headers={"source": self.source, "length": str(len(raw))},
            body=preview,
        )
        self.health.add("dead_letters")
        self._warn(logging.WARNING, "bad-line", f"{self.source}: refused input ({reason}): {preview[:120]!r}")
        return message, reason

    def dead_letter(self, raw: bytes, reason: str) -> None:
        """Keep an input the bridge could not use, with the reason, now, and say so (rate-limited)."""
        message, reason = self._refused(raw, reason)
        try:
            self.spool.add_dead_letter(message, reason)
        except SpoolError as exc:
            self.health.error(f"{self.source}: could not keep a dead letter: {exc}")
