"""Compact sets of names for the inbound side: 8 bytes a name (12 with a time), not Python objects.

A central bridge remembers half a million objects twice: the objects Nagios defines (the
policy's ``known_objects``) and the objects it injected into (the echo guard). As a frozenset
of tuples and a dict of strings they took 110 and 70 MB. Here each name is a 64-bit keyed hash
in a sorted ``array``, looked up with ``bisect``: 4 MB for 500,000 names, a lookup in about a
microsecond. The hash is Python's own for str (SipHash-1-3, keyed with 16 random bytes drawn
when the process starts; computed in C), or, where PYTHONHASHSEED fixed that key, BLAKE2b keyed
with random bytes of its own. The key is never saved: the spool keeps the names themselves.

Membership is exact for every name put in. A name never put in is taken for a member only if
its hash equals one of the n stored hashes. With a secret key a sender cannot aim at one; by
chance it happens with probability n / 2**64 per lookup, 2.7e-14 at n = 500,000: about once in
12,000 runs of ten years at 10 absent names a second. What a false member would cost: one
result for an object Nagios does not define is handed to Nagios (which logs and drops it,
unless the name is a host's address), or one passive result that was no echo is not published.
"""
from __future__ import annotations

import collections
import math
import os
import sys
from array import array
from bisect import bisect_left
from hashlib import blake2b
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

ObjectKey = Tuple[str, Optional[str]]
CHUNK = 16_384       # names hashed and sorted at a time while building (bounds the transient list: 0.7 MB)


MASK = (1 << 64) - 1


def _siphash(text: str) -> int:
    return hash(text) & MASK


_SECRET = os.urandom(16)     # for BLAKE2b: one per process, as str's hash key is


def _str_hash_is_secret() -> bool:
    """Whether str's hash key was drawn at random at start. Not with any PYTHONHASHSEED but
    "random": 0 turns randomization off, any other number fixes the key (and
    sys.flags.hash_randomization still says 1)."""
    seed = None if sys.flags.ignore_environment else os.environ.get("PYTHONHASHSEED")
    return bool(sys.flags.hash_randomization) and seed in (None, "random")


class Hasher:
    """Text -> 64-bit unsigned int, keyed with a secret the sender cannot know (the same in
    every Hasher of one process, so two sets of one process can be compared)."""

    def __init__(self) -> None:
        if _str_hash_is_secret() and sys.hash_info.hash_bits >= 64:
            self._hash = _siphash
        else:      # PYTHONHASHSEED set: str's hash key is known
            secret = _SECRET
            self._hash = lambda text: int.from_bytes(blake2b(
                text.encode("utf-8", "surrogatepass"), digest_size=8, key=secret).digest(), "little")

    def __call__(self, text: str) -> int:
        return self._hash(text)


def object_text(key: ObjectKey) -> str:
    """One text per (host, service or None), different for different pairs whatever the
    names hold (a host result is not a service named "")."""
    host, service = key
    return f"H{len(host)}:{host}" if service is None else f"S{len(host)}:{host}{service}"


def _sorted_array(hashes: Iterable[int]) -> array:
    """The hashes in one sorted array('Q'), sorted a chunk at a time and merged into it in
    place (sorting all at once would hold a Python int and a list slot for each: ~22 MB at
    500,000; merging chunks into a new array held the chunks and the result: 8 MB more)."""
    result = array("Q")
    batch: List[int] = []
    for value in hashes:
        batch.append(value)
        if len(batch) >= CHUNK:
            batch.sort()
            merge_in_place(result, batch)
            batch = []
    batch.sort()
    merge_in_place(result, batch)
    return result


def merge_in_place(values: array, new: List[int], times: Optional[array] = None,
                   new_times: Optional[List[int]] = None) -> None:
    """Insert the sorted ``new`` into the sorted array ``values``, and ``new_times`` into
    ``times`` at the same places, in place: the arrays grow at their end (glibc remaps a large
    block, it does not copy it) and the old values move up from the last, each once, by
    memmove through a memoryview. No second copy of the arrays is ever held: a merged copy
    held both at the moment of each merge (6 MB more at 500,000 timed names)."""
    count = len(new)
    if not count:
        return
    end = len(values)           # values[:end]: the old values that have not moved yet
    values.frombytes(bytes(count * values.itemsize))
    if times is not None:
        times.frombytes(bytes(count * times.itemsize))
    with memoryview(values) as moved, memoryview(times if times is not None else b"") as moved_times:
        for j in range(count - 1, -1, -1):
            place = bisect_left(values, new[j], 0, end)
            # values[place:end] go up by j + 1: new[0..j] belong below them.
            moved[place + j + 1:end + j + 1] = moved[place:end]
            moved[place + j] = new[j]
            if times is not None:
                moved_times[place + j + 1:end + j + 1] = moved_times[place:end]
                moved_times[place + j] = new_times[j]
            end = place


class KnownObjects:
    """An immutable set of (host, service or None) pairs: ``pair in known``, ``len(known)``."""

    def __init__(self, objects: Iterable[ObjectKey] = ()) -> None:
        self._hash = Hasher()
        self._hashes = _sorted_array(self._hash(object_text(key)) for key in objects)

    @classmethod
    def of(cls, objects: Optional[Iterable[ObjectKey]]) -> Optional["KnownObjects"]:
        """``objects`` as KnownObjects (itself if it is one already); None stays None."""
        if objects is None or isinstance(objects, KnownObjects):
            return objects
        return cls(objects)

    def __contains__(self, key: object) -> bool:
        if not (isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], str)
                and (key[1] is None or isinstance(key[1], str))):
            return False
        return self.place(self._hash(object_text(key))) >= 0

    def place(self, value: int) -> int:
        """Index of the hash ``value`` in the sorted hashes, or -1."""
        hashes = self._hashes
        i = bisect_left(hashes, value)
        return i if i < len(hashes) and hashes[i] == value else -1

    def __len__(self) -> int:
        return len(self._hashes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KnownObjects) and self._hashes == other._hashes

    __hash__ = None     # mutable in principle: not a dict key

    def __repr__(self) -> str:
        return f"<KnownObjects: {len(self)} objects>"


MERGE_AT = 8192      # new names kept in a dict until this many, then merged into the arrays


def whole_second(when: float) -> int:
    """A time as TimedNames keeps it: the whole second at or before it (none before 1970)."""
    return max(0, math.floor(when))


class TimedNames:
    """A mutable map name -> time in whole seconds (whole_second), compact: 12 bytes a name in
    sorted arrays of hashes and times, plus a small dict of the names added since the last
    merge. Not thread-safe: callers lock."""

    def __init__(self) -> None:
        self._hash = Hasher()
        self._hashes = array("Q")
        self._times = array("I")             # until 2106
        self._new: Dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._hashes) + len(self._new)

    def _find(self, value: int) -> int:
        """Index of ``value`` in the arrays, or -1."""
        hashes = self._hashes
        i = bisect_left(hashes, value)
        return i if i < len(hashes) and hashes[i] == value else -1

    def get(self, name: str) -> Optional[int]:
        value = self._hash(name)
        when = self._new.get(value)
        if when is not None:
            return when
        i = self._find(value)
        return self._times[i] if i >= 0 else None

    def time_of(self, name: str) -> int:
        """``name``'s time, or 0 when it has none (every name may be kept here: never -1)."""
        when = self.get(name)
        return 0 if when is None else when

    def set(self, names: Iterable[str], when: float) -> None:
        """Each of ``names`` now maps to ``when`` (its whole second)."""
        self.set_hashed((self._hash(name), when) for name in names)

    def set_hashed(self, pairs: Iterable[Tuple[int, float]]) -> None:
        """set() for (hash, time) pairs as items() gives them."""
        for value, when in pairs:
            i = self._find(value)
            if i >= 0:
                self._times[i] = whole_second(when)
            else:
                self._new[value] = whole_second(when)
        if len(self._new) >= MERGE_AT:
            self._merge()

    def items(self) -> Iterator[Tuple[int, int]]:
        """(hash, whole second) for every name kept."""
        yield from zip(self._hashes, self._times)
        yield from list(self._new.items())

    def load(self, rows: Iterable[Tuple[str, float]]) -> None:
        """Add (name, time) rows, e.g. read from the spool a chunk at a time."""
        for name, when in rows:
            self.set((name,), when)
        self._merge()

    def _merge(self) -> None:
        """Fold the dict of new names into the sorted arrays, in place (merge_in_place)."""
        if not self._new:
            return
        new = sorted(self._new)
        merge_in_place(self._hashes, new, self._times, [self._new[value] for value in new])
        self._new = {}

    def time_counts(self) -> Dict[int, int]:
        """{time: how many names map to it} (names share their batch's time: few keys)."""
        counts: Dict[int, int] = {}
        for when in self._times:
            counts[when] = counts.get(when, 0) + 1
        for when in self._new.values():
            counts[when] = counts.get(when, 0) + 1
        return counts

    def forget_before(self, before: float) -> int:
        """Drop every name whose time is before ``before``; return how many."""
        self._merge()
        hashes, times = array("Q"), array("I")
        for value, when in zip(self._hashes, self._times):
            if when >= before:
                hashes.append(value)
                times.append(when)
        dropped = len(self._hashes) - len(hashes)
        self._hashes, self._times = hashes, times
        return dropped


class TimedKnownObjects:
    """TimedNames for the objects of one KnownObjects set (their object_text as names): a time
    for each known object in one array beside the set's hashes, 4 bytes an object whether it
    has a time or not (0: none). Names outside the set are not kept. The echo guard of a
    central bridge remembers only objects Nagios defines: 2 MB at 500,000 objects where
    TimedNames took 6 MB, and nothing to merge. Not thread-safe: callers lock."""

    def __init__(self, known: KnownObjects) -> None:
        self.known = known
        self._times = array("I", bytes(4 * len(known)))
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def get(self, name: str) -> Optional[int]:
        return max(self.time_of(name), 0) or None

    def time_of(self, name: str) -> int:
        """``name``'s time; 0 when it has none, -1 when it is not a known object (never kept)."""
        i = self.known.place(self.known._hash(name))
        return self._times[i] if i >= 0 else -1

    def set(self, names: Iterable[str], when: float) -> None:
        self.set_hashed((self.known._hash(name), when) for name in names)

    def set_hashed(self, pairs: Iterable[Tuple[int, float]]) -> None:
        times = self._times
        for value, when in pairs:
            i = self.known.place(value)
            if i >= 0:
                self._count += not times[i]
                times[i] = max(1, whole_second(when))      # 0 means none: 1970's first second is 1

    def load(self, rows: Iterable[Tuple[str, float]]) -> None:
        for name, when in rows:
            self.set((name,), when)

    def items(self) -> Iterator[Tuple[int, int]]:
        return ((value, when) for value, when in zip(self.known._hashes, self._times) if when)

    def time_counts(self) -> Dict[int, int]:
        counts = collections.Counter(self._times)     # counted in C: 500,000 in about 20 ms
        counts.pop(0, None)
        return dict(counts)

    def forget_before(self, before: float) -> int:
        times = self._times
        dropped = 0
        for i, when in enumerate(times):
            if when and when < before:
                times[i] = 0
                dropped += 1
        self._count -= dropped
        return dropped


def timed_names_for(known: Optional[KnownObjects]):
    """Where to keep a time per object: TimedKnownObjects beside ``known``, or TimedNames when
    there is no known set (every name kept)."""
    return TimedNames() if known is None else TimedKnownObjects(known)
