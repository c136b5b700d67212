"""The newest result time per object, shared by the central bridges that write into one Nagios.

Several bridges consuming one queue (docs/scaling.md) each keep their own memory of what they
injected (inbound/judgement.py), and message groups keep each object's results in order
through one bridge at a time. Not across a kill: results a killed bridge had taken (acked, or
written but not yet confirmed) wait in its spool and are written when it is back, after the
bridge that took its share over may have written newer ones for the same objects; Nagios
takes a passive result's time as its last check unconditionally, so an older one would show.

This file is the memory they share: one SQLite row per object (its newest time written into
Nagios). A writer holds an exclusive lock on ``<file>.lock`` from checking its batch against
the file until the batch is in Nagios and noted, so the order in the file is the order in
the command FIFO. A result older than the newest written for its object is dropped (the
bridge counts it ``stale``); one of the same time (a duplicate) is written. The bridges must
share the file's file system, as they share the FIFO (a local Nagios). Rows older than
``max_age`` are forgotten (a result that old is refused before it gets here).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from typing import Dict, Iterator, List, Sequence, Tuple

from ...spool import SpoolError

FORGET_EVERY = 600.0        # seconds between deletes of rows older than max_age
_CHUNK = 500                # objects per SELECT (SQLite's limit on parameters is larger)


class SharedNewest:
    def __init__(self, path: str, max_age: float = 86400.0):
        self.path = path
        self.max_age = max_age
        self._lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
        # Under the lock: bridges started together (test_scaleout, a boot) switched the new file
        # to WAL at once, and SQLite answers one of two connections that both read and then want
        # to write "database is locked" at once, without its busy timeout (the other could
        # never go on otherwise): that bridge died at its start (6 processes: 27 in 100 tries).
        with self.locked():
            self.db = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS newest (object TEXT PRIMARY KEY, time REAL NOT NULL)")
        self._forgot_at = 0.0

    @contextlib.contextmanager
    def locked(self) -> Iterator["SharedNewest"]:
        """Exclusive among the bridges sharing the file: check, write to Nagios, note."""
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield self
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def newest(self, objects: Sequence[str]) -> Dict[str, float]:
        try:
            return self._newest(objects)
        except sqlite3.Error as exc:     # the writer retries on a SpoolError
            raise SpoolError(f"shared newest file {self.path}: {exc}") from exc

    def _newest(self, objects: Sequence[str]) -> Dict[str, float]:
        found: Dict[str, float] = {}
        unique = sorted(set(objects))
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(self.db.execute(f"SELECT object, time FROM newest WHERE object IN ({marks})", chunk))
        return found

    def note(self, written: List[Tuple[str, float]]) -> None:
        """Record ``written`` ((object, result time), in the order written) as in Nagios."""
        try:
            self._note(written)
        except sqlite3.Error as exc:
            raise SpoolError(f"shared newest file {self.path}: {exc}") from exc

    def _note(self, written: List[Tuple[str, float]]) -> None:
        now = time.time()
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO newest (object, time) VALUES (?, ?) ON CONFLICT (object)"
                                " DO UPDATE SET time = max(time, excluded.time)", written)
            if now - self._forgot_at > FORGET_EVERY:
                self._forgot_at = now
                self.db.execute("DELETE FROM newest WHERE time < ?", (now - self.max_age,))

    def close(self) -> None:
        self.db.close()
        os.close(self._lock_fd)
