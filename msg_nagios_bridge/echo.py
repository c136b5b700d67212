"""The echo guard: results the bridge injected must not be published again.

Nagios runs OCSP (and writes perfdata) for passive results too, so a Nagios
that receives remote results and obsesses over the same services would hand
them straight back to the outbound side. The bridge remembers every object it
injected a result into; a PASSIVE result of such an object is its own echo and
is dropped. Active results of those objects, and passive results of objects the
bridge never injected into (e.g. from NSCA), are published as usual.

The objects are kept in the inbound spool (one row each), so they survive
restarts; a row is written when an object is new and refreshed at most once a
``refresh`` period, so a steady stream of results writes nothing. Objects not
injected into for ``ttl`` seconds (give or take ``refresh``) are forgotten.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Dict, Iterable, Optional

from .model import CheckResult
from .spool import Spool, SpoolError

log = logging.getLogger(__name__)

MARK_KIND = "echo"


def _key(result: CheckResult) -> str:
    return f"{result.host}\t{result.service or ''}"


class EchoGuard:
    def __init__(self, spool: Optional[Spool] = None, ttl: float = 7 * 86400,
                 refresh: float = 86400):
        """With ``spool`` None the guard lives in memory only (tests, tools)."""
        self.spool = spool
        self.ttl = ttl
        self.refresh = refresh
        self._lock = threading.Lock()
        # object -> when it was last saved (not last injected: at most ``refresh`` older).
        self._objects: Dict[str, float] = {}
        if spool is not None:
            cutoff = time.time() - ttl
            self._objects = spool.load_marks(MARK_KIND, since=cutoff)
            try:
                spool.forget_marks(MARK_KIND, before=cutoff)
            except SpoolError as exc:      # a full disk must not keep the bridge from starting
                log.warning("cannot delete old echo guard entries now (%s): next start", exc)

    def about_to_inject(self, results: Iterable[CheckResult], now: Optional[float] = None) -> int:
        """Note results about to be injected, saving new objects before they return (the
        echo may come back before the write has returned); return how many rows were saved.
        Raises SpoolError if they cannot be saved (then none is noted)."""
        now = time.time() if now is None else now
        # Only the writer thread calls this: the lock guards the dict against the outbound
        # side's lookups, and is not held across the (fsynced) save.
        with self._lock:
            due = {key for key in map(_key, results)
                   if now - self._objects.get(key, float("-inf")) >= self.refresh}
        if due and self.spool is not None:
            self.spool.save_marks(MARK_KIND, due, now)
        with self._lock:
            self._objects.update(dict.fromkeys(due, now))
        return len(due)

    def __call__(self, result: CheckResult) -> bool:
        if result.attributes.get("check_type") != "PASSIVE":
            return False
        with self._lock:
            saved = self._objects.get(_key(result))
        return saved is not None and time.time() - saved < self.ttl

    def __len__(self) -> int:
        return len(self._objects)
