"""The echo guard: results the bridge injected must not be published again.

A core reports the results it was handed too (Nagios runs OCSP and writes perfdata for
passive results), so a core that receives remote results and publishes the same services
would hand them straight back to the outbound side. The bridge remembers every object it
injected a result into; a result of such an object that the core's echo signal
(``Core.may_be_echo``; for Nagios, a PASSIVE check) marks as handed to it is its own echo
and is dropped. Results the core checked itself, and handed results of objects the bridge
never injected into (e.g. from NSCA), are published as usual.

The objects are kept in the inbound spool (one row each), so they survive
restarts, and in memory with their times in whole seconds: with ``known_objects`` as a time
beside each of the known objects' hashes (compact.TimedKnownObjects: 4 bytes a known object,
2 MB at 500,000), without as 64-bit hashes in sorted arrays (compact.TimedNames: 12 bytes an
object, 6 MB at 500,000, where a dict of the names took 70 MB). A row is written when an
object is new and refreshed at most once a ``refresh`` period, so a steady stream of results
writes nothing. Objects not injected into for ``ttl`` seconds (give or take ``refresh``) are
forgotten.

Bounded, because a sender the policy lets name any host (``*``) could make it
grow with every name it invents, each silencing that object's passive results
for ``ttl``:

* With ``known_objects`` set (the objects Nagios defines, from objects.cache)
  only those are remembered: a result for an object Nagios does not have is
  ignored by Nagios and can never come back as an echo.
* At most ``max_objects`` are kept, in memory and in the spool. When more are
  noted, the least recently saved are forgotten, whole batches at a time (rows
  share their batch's time), down to 90% of the limit; the batch being noted is
  always kept, so the count can exceed the limit by at most one writer batch.
  A forgotten object that is injected into again is noted again; only its echo
  of an earlier injection could be published. Counted: ``echo_guard_evicted``.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable, Optional

from ..daemon.health import Health
from .compact import KnownObjects, object_text, timed_names_for, whole_second
from ..model import CheckResult
from ..spool import Spool, SpoolError

log = logging.getLogger(__name__)

MARK_KIND = "echo"


def _key(result: CheckResult) -> str:
    """The object's key in the spool."""
    return f"{result.host}\t{result.service or ''}"


def _name(result: CheckResult) -> str:
    """The object's name in memory: the text compact.KnownObjects hashes."""
    return object_text((result.host, result.service))


def _name_of_key(key: str) -> str:
    host, _, service = key.partition("\t")
    return object_text((host, service or None))


class EchoGuard:
    def __init__(self, spool: Optional[Spool] = None, ttl: float = 7 * 86400,
                 refresh: float = 86400, max_objects: int = 1_000_000, health: Optional[Health] = None,
                 may_be_echo: Optional[Callable[[CheckResult], bool]] = None,
                 known_objects: Optional[Iterable] = None):
        """With ``spool`` None the guard lives in memory only (tests, tools). ``may_be_echo``
        is the core's echo signal; None takes every result of a remembered object for one.
        ``known_objects``: the (host, service or None) the core defines, or None (not known:
        remember every object); given here rather than set later, the guard never holds the
        spool's objects in the larger form first."""
        self.may_be_echo = may_be_echo
        self.spool = spool
        self.health = health
        self.ttl = ttl
        self.refresh = refresh
        self.max_objects = max_objects
        self.evicted = 0
        self._lock = threading.Lock()
        self._known = KnownObjects.of(known_objects)
        # object name -> when it was last saved (not last injected: at most ``refresh`` older).
        self._objects = timed_names_for(self._known)
        if spool is not None:
            cutoff = time.time() - ttl
            for rows in spool.each_mark(MARK_KIND, since=cutoff):
                self._objects.load((_name_of_key(key), at) for key, at in rows)
            try:
                spool.forget_marks(MARK_KIND, before=cutoff)
            except SpoolError as exc:      # a full disk must not keep the bridge from starting
                log.warning("cannot delete old echo guard entries now (%s): next start", exc)
            self._evict(keep_after=float("inf"))          # a smaller limit than last time

    @property
    def known_objects(self) -> Optional[KnownObjects]:
        """The objects the core defines (only those are remembered), or None: every object."""
        return self._known

    @known_objects.setter
    def known_objects(self, objects: Optional[Iterable]) -> None:
        """A new object list (the core reloaded): what is remembered of objects it still has
        moves over; the others can no longer echo."""
        known = KnownObjects.of(objects)
        with self._lock:
            kept = timed_names_for(known)
            kept.set_hashed(self._objects.items())    # one process, one hash key: the same values
            self._known, self._objects = known, kept

    def about_to_inject(self, results: Iterable[CheckResult], now: Optional[float] = None) -> int:
        """Note results about to be injected, saving new objects before they return (the
        echo may come back before the write has returned); return how many rows were saved.
        Raises SpoolError if they cannot be saved (then none is noted)."""
        now = time.time() if now is None else now
        known = self._known
        if known is not None:
            results = [result for result in results if (result.host, result.service) in known]
        # Only the writer thread calls this: the lock guards the memory against the outbound
        # side's lookups, and is not held across the (fsynced) save.
        with self._lock:
            due = {}                                 # spool key -> name in memory
            for result in results:
                name = _name(result)
                if now - _or_never(self._objects.get(name)) >= self.refresh:
                    due[_key(result)] = name
        if due and self.spool is not None:
            self.spool.save_marks(MARK_KIND, due, now)
        with self._lock:
            self._objects.set(due.values(), now)
        if len(self._objects) > self.max_objects:
            self._evict(keep_after=now)
        return len(due)

    def _evict(self, keep_after: float) -> None:
        """Over the limit: forget the least recently saved objects, whole batches (one time
        each), down to 90% of the limit, never those saved at ``keep_after`` or later."""
        with self._lock:
            excess = len(self._objects) - (self.max_objects - self.max_objects // 10)
            if len(self._objects) <= self.max_objects or excess <= 0:
                return
            # Forget everything saved at or before the time of the excess-th oldest object.
            counts = self._objects.time_counts()
            times = sorted(counts)
            older = 0
            for i, when in enumerate(times):
                older += counts[when]
                if older >= excess:
                    break
            later = times[i + 1] if i + 1 < len(times) else float("inf")
            # Whole seconds, as the times are kept: what is forgotten here is what the spool
            # forgets (at < before), and the batch being noted (in keep_after's second) stays.
            before = min(later, whole_second(keep_after) if keep_after != float("inf") else keep_after)
            forgotten = self._objects.forget_before(before)
            self.evicted += forgotten
        if forgotten and self.health is not None:
            self.health.add("echo_guard_evicted", forgotten)
        if forgotten:
            log.warning("echo guard full (%d objects, echo_guard_max_objects %d): forgot the %d least"
                        " recently injected", len(self._objects) + forgotten, self.max_objects,
                        forgotten)
        if forgotten and self.spool is not None:
            try:
                self.spool.forget_marks(MARK_KIND, before=before)
            except SpoolError as exc:   # the rows go at the next eviction or start
                log.warning("cannot delete forgotten echo guard entries now (%s)", exc)

    def __call__(self, result: CheckResult) -> bool:
        if self.may_be_echo is not None and not self.may_be_echo(result):
            return False
        with self._lock:
            saved = self._objects.get(_name(result))
        return saved is not None and time.time() - saved < self.ttl

    def __len__(self) -> int:
        return len(self._objects)


def _or_never(saved: Optional[float]) -> float:
    return float("-inf") if saved is None else saved
