"""The hosts and services Icinga 2 defines, from its API, kept for ``objects_refresh`` seconds.

Read with ``GET /v1/objects/hosts?attrs=name`` and ``/v1/objects/services?attrs=name&attrs=host_name``
(the ApiUser's objects/query/Host and objects/query/Service). An ApiUser without them gets
404 "No objects found." (an Icinga without services answers 200 and an empty list), so a 404
here is reported as the missing permission.

Shared by the main loop (objects_version, to follow a change) and the writer (before each
send): one lock, one connection of its own. The list is read again once it is older than
``objects_refresh``, and at once after ``stale()`` (the writer calls it on a 404: an object
may have gone). After a failed read the next try waits RETRY_AFTER seconds, so a main loop
that asks every few seconds does not wait for an unreachable API each time.
"""
from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Optional

from ...inbound.compact import KnownObjects
from ...model import ObjectKey
from .api import ApiClient, ApiUnavailable
from ...daemon.threadname import named_thread_starter

RETRY_AFTER = 5.0
STALE_REREAD = 1.0      # a stale list is read again at most this often (404s may come in a row)


class ObjectsUnavailable(OSError):
    """The object list cannot be read now (the text says why)."""


class ObjectsUnreachable(ObjectsUnavailable):
    """... because the API gave no answer (Icinga is down, restarting, or not reachable)."""


def object_keys(kind: str, results: Iterable[Any]) -> Iterator[ObjectKey]:
    """(host, service or None) of each result of ``/v1/objects/hosts`` or ``/services``;
    ValueError if one is malformed."""
    for entry in results:
        try:
            attrs = entry["attrs"]
            key = (attrs["name"], None) if kind == "hosts" else (attrs["host_name"], attrs["name"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"unexpected answer from /v1/objects/{kind}: {type(exc).__name__} {exc}") from None
        if not all(isinstance(name, str) for name in key if name is not None):
            raise ValueError(f"unexpected answer from /v1/objects/{kind}: a name is not text")
        yield key


def parse(hosts_answer, services_answer) -> KnownObjects:
    """The objects of the two answers (parsed whole; the list is read with ObjectList)."""
    try:
        hosts, services = hosts_answer["results"], services_answer["results"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"unexpected answer from /v1/objects: {type(exc).__name__} {exc}") from None
    return KnownObjects(itertools.chain(object_keys("hosts", hosts), object_keys("services", services)))


class ObjectList:
    def __init__(self, client: ApiClient, refresh: float, clock: Callable[[], float] = time.monotonic):
        self.client = client
        self.refresh = refresh
        self._clock = clock
        self._lock = threading.Lock()
        self._objects: Optional[KnownObjects] = None
        self._version = 0                       # grows when the list changes
        self._read_at = float("-inf")
        self._stale = False
        self._failed_at = float("-inf")
        self._error: Optional[ObjectsUnavailable] = None
        self._tried = False                     # a read was tried (version() waits only for the first)
        self._refresher: Optional[threading.Thread] = None

    def _read(self) -> KnownObjects:
        """Both lists, an object at a time into a compact set (inbound/compact.py): 8 bytes an
        object, and never the whole answer in memory (a 500,000-object Icinga answers ~40 MB)."""
        return KnownObjects(itertools.chain.from_iterable(
            self._keys(kind, permission) for kind, permission in
            (("hosts", "objects/query/Host"), ("services", "objects/query/Service"))))

    def _keys(self, kind: str, permission: str) -> Iterator[ObjectKey]:
        path = f"/v1/objects/{kind}?attrs=name" + ("&attrs=host_name" if kind == "services" else "")
        try:
            try:
                status, answer = self.client.each_result(path)
            except ApiUnavailable:
                # Icinga closes a connection idle for 10 s: a GET is safe to send again.
                status, answer = self.client.each_result(path)
            if status == 200:
                yield from object_keys(kind, answer)
                return
        except ApiUnavailable as exc:
            raise ObjectsUnreachable(f"cannot read Icinga 2's object list: {exc}") from None
        except ValueError as exc:
            self.client.close()
            raise ObjectsUnavailable(str(exc)) from None
        if status == 401:
            text = answer.get("status", "") if isinstance(answer, dict) else ""
            raise ObjectsUnavailable(f"Icinga 2 refuses the bridge's credentials (401 {text})".replace(" )", ")"))
        if status == 404:
            raise ObjectsUnavailable(f"Icinga 2 answered 404 to {path}: the ApiUser lacks the permission"
                                     f" {permission}")
        text = answer.get("status", "") if isinstance(answer, dict) else str(answer)[:200]
        raise ObjectsUnavailable(f"Icinga 2 answered {status} to {path}: {text}")

    def _due(self) -> bool:
        age = self._clock() - self._read_at
        return age >= self.refresh or (self._stale and age >= STALE_REREAD)

    def _refresh_if_due(self) -> None:
        """Called with the lock held. Raises ObjectsUnavailable when a due read fails and no
        list was ever read (with one, the old list stays in use until a read succeeds)."""
        now = self._clock()
        if not self._due():
            return
        self._tried = True
        if now - self._failed_at < RETRY_AFTER:
            if self._objects is None and self._error is not None:
                raise self._error
            return
        try:
            objects = self._read()
        except ObjectsUnavailable as exc:
            self._failed_at, self._error = now, exc
            if self._objects is None:
                raise
            return
        if objects != self._objects:
            self._objects = objects
            self._version += 1
        self._read_at, self._stale, self._error = now, False, None

    def get(self) -> KnownObjects:
        """The list, read again when due; raises ObjectsUnavailable if it was never read."""
        with self._lock:
            self._refresh_if_due()
            assert self._objects is not None
            return self._objects

    def version(self) -> Optional[int]:
        """Grows when the list changes; None while it was never read. Never waits for Icinga
        but the first time: the main loop asks every few seconds, and a hung API must not hold
        it (status.json would go stale); a due read runs in a thread of its own."""
        if not self._tried:
            with self._lock:
                try:
                    self._refresh_if_due()
                except ObjectsUnavailable:
                    pass
        elif self._due() and not (self._refresher and self._refresher.is_alive()):
            self._refresher = named_thread_starter("icinga2-objects")(self._refresh_quietly)
        return None if self._objects is None else self._version

    def _refresh_quietly(self) -> None:
        with self._lock:
            try:
                self._refresh_if_due()
            except ObjectsUnavailable:
                pass        # the writer says why, in its state

    def stale(self) -> None:
        """Read it again before the next use (a 404 came: an object may be gone)."""
        with self._lock:
            self._stale = True

    @property
    def problem(self) -> str:
        """Why the last read failed ("" if it did not)."""
        return str(self._error or "")

    def close(self) -> None:
        with self._lock:
            self.client.close()
