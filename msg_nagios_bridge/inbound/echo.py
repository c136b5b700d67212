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
from typing import Callable, Iterable, List, Optional, Tuple

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
                 known_objects: Optional[Iterable] = None, load: bool = True):
        """With ``spool`` None the guard lives in memory only (tests, tools). ``may_be_echo``
        is the core's echo signal; None takes every result of a remembered object for one.
        ``known_objects``: the (host, service or None) the core defines, or None (not known:
        remember every object). ``load`` False: the objects are loaded later, by load();
        until then the guard looks its objects up in the spool (the bridge starts its
        outbound side before it has read the core's object list, which takes seconds at
        grid scale, and loads the guard only then, so it never holds the larger form)."""
        self.may_be_echo = may_be_echo
        self.spool = spool
        self.health = health
        self.ttl = ttl
        self.refresh = refresh
        self.max_objects = max_objects
        self.evicted = 0
        self._lock = threading.Lock()
        self._known: Optional[KnownObjects] = None
        # object name -> when it was last saved (not last injected: at most ``refresh`` older).
        self._objects = timed_names_for(None)
        self._loaded = spool is None
        self._noted_while_loading: Optional[List[Tuple[List[str], float]]] = None
        if load:
            self.load(known_objects)

    def load(self, known_objects: Optional[Iterable] = None) -> None:
        """(Re)build the memory for this object list (None: every object) from the spool, the
        durable copy: an object a shorter list left out (a half-written objects.cache) is
        back with the next full one. Built beside the memory in use and swapped in whole;
        what is noted meanwhile is applied to it, so nothing noted is missed."""
        known = KnownObjects.of(known_objects)
        fresh = timed_names_for(known)
        with self._lock:
            self._noted_while_loading = []
        try:
            if self.spool is None:
                fresh.set_hashed(self._objects.items())   # memory only: all there is
            else:
                cutoff = time.time() - self.ttl
                for rows in self.spool.each_mark(MARK_KIND, since=cutoff):
                    fresh.load((_name_of_key(key), at) for key, at in rows)
        except BaseException:
            with self._lock:
                self._noted_while_loading = None
            raise
        with self._lock:
            for names, when in self._noted_while_loading:
                fresh.set(names, when)
            self._noted_while_loading = None
            self._known, self._objects, self._loaded = known, fresh, True
        if self.spool is not None:
            try:
                self.spool.forget_marks(MARK_KIND, before=cutoff)
            except SpoolError as exc:      # a full disk must not keep the bridge from starting
                log.warning("cannot delete old echo guard entries now (%s): next start", exc)
        self._evict(keep_after=float("inf"))          # a smaller limit than last time

    @property
    def known_objects(self) -> Optional[KnownObjects]:
        """The objects the core defines (only those are remembered), or None: every object."""
        return self._known

    @known_objects.setter
    def known_objects(self, objects: Optional[Iterable]) -> None:
        self.load(objects)

    def about_to_inject(self, results: Iterable[CheckResult], now: Optional[float] = None) -> int:
        """Note results about to be injected, saving new objects before they return (the
        echo may come back before the write has returned); return how many rows were saved.
        With known objects, only those are noted. Raises SpoolError if they cannot be saved
        (then none is noted)."""
        now = time.time() if now is None else now
        # Only the writer thread calls this: the lock guards the memory against the outbound
        # side's lookups, and is not held across the (fsynced) save.
        with self._lock:
            due = {}                                 # spool key -> name in memory
            objects = self._objects
            for result in results:
                name = _name(result)
                saved = objects.time_of(name)        # -1: not a known object
                if saved == 0 or (saved > 0 and now - saved >= self.refresh):
                    due[_key(result)] = name
        if due and self.spool is not None:
            self.spool.save_marks(MARK_KIND, due, now)
        with self._lock:
            self._objects.set(due.values(), now)
            if self._noted_while_loading is not None:
                self._noted_while_loading.append((list(due.values()), now))
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
            loaded = self._loaded
            saved = self._objects.time_of(_name(result)) if loaded else 0
        if not loaded:
            saved = self._saved_in_spool(result)
        return saved > 0 and time.time() - saved < self.ttl

    def _saved_in_spool(self, result: CheckResult) -> float:
        """When the object was last saved, read from the spool (before the first load); 0 if
        never or when the spool cannot be read (then the result is published: a copy of a
        result is better than the loss of one)."""
        try:
            return self.spool.find_marks(MARK_KIND, [_key(result)]).get(_key(result), 0)
        except SpoolError as exc:
            log.warning("echo guard: cannot read the spool (%s): %s/%s published", exc, result.host,
                        result.service or "")
            return 0

    def __len__(self) -> int:
        return len(self._objects)


def _or_never(saved: Optional[float]) -> float:
    return float("-inf") if saved is None else saved
