"""The echo guard: results the bridge injected must not be published again.

Nagios runs OCSP (and writes perfdata) for passive results too, so a Nagios
that receives remote results and obsesses over the same services would hand
them straight back to the outbound side. The bridge remembers every object it
injected a result into; a PASSIVE result of such an object is its own echo and
is dropped. Active results of those objects, and passive results of objects the
bridge never injected into (e.g. from NSCA), are published as usual.

The set is kept in the inbound spool (as a cursor), so it survives restarts.
Objects not injected into for ``ttl`` seconds are forgotten.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Dict, Iterable, Optional, Tuple

from .model import CheckResult

Key = Tuple[str, str]
CURSOR_NAME = "echo-guard-objects"


class EchoGuard:
    def __init__(self, ttl: float = 7 * 86400, saved: Optional[str] = None):
        self.ttl = ttl
        self._lock = threading.Lock()
        self._objects: Dict[Key, float] = {}
        if saved:
            for key, seen in json.loads(saved).items():
                host, _, service = key.partition("\t")
                self._objects[(host, service)] = seen

    @staticmethod
    def _key(result: CheckResult) -> Key:
        return (result.host, result.service or "")

    def injected(self, results: Iterable[CheckResult], now: Optional[float] = None) -> bool:
        """Note injected results. True if an object is new (then the set is worth saving)."""
        now = time.time() if now is None else now
        grew = False
        with self._lock:
            for result in results:
                key = self._key(result)
                grew = grew or key not in self._objects
                self._objects[key] = now
        return grew

    def __call__(self, result: CheckResult) -> bool:
        if result.attributes.get("check_type") != "PASSIVE":
            return False
        with self._lock:
            seen = self._objects.get(self._key(result))
        return seen is not None and time.time() - seen < self.ttl

    def dump(self) -> str:
        cutoff = time.time() - self.ttl
        with self._lock:
            return json.dumps({f"{h}\t{s}": t for (h, s), t in self._objects.items() if t >= cutoff})
