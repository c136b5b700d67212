"""Counters and recent errors, shared by every part of the daemon (thread-safe)."""
from __future__ import annotations

import collections
import logging
import random
import threading
import time
from typing import Deque, Dict, Optional, Tuple

from ..display import printable


# States in which a part is doing its job; anything else means it is held up.
UP_STATES = ("connected", "subscribed", "reading", "writing", "waiting for results")


def is_up(state: str) -> bool:
    return state.startswith(UP_STATES)


class Health:
    """Named counters, last-success times and the last few errors.

    Parts add to counters (``published``, ``spooled``, ``dead_letters`` ...),
    mark successes (``mark("publish")``) and note errors; ``snapshot()`` is
    what status reports and the self-check read.
    """

    def __init__(self, max_errors: int = 20):
        self._lock = threading.Lock()
        self._counters: Dict[str, int] = collections.Counter()
        self._last: Dict[str, float] = {}
        self._errors: Deque[Tuple[float, str]] = collections.deque(maxlen=max_errors)
        self._states: Dict[str, str] = {}
        self._since: Dict[str, float] = {}

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[name] += amount

    def mark(self, name: str) -> None:
        with self._lock:
            self._last[name] = time.time()

    def set_state(self, part: str, state: str) -> None:
        """``since`` is when the part last went from up to held up, or back (see UP_STATES).
        ``state`` is escaped and cut like an error: it may quote remote text (a broker's ERROR
        frame, often a Java stack trace), and ``status`` prints it, ``check`` puts it in its one line."""
        state = printable(state, 1000)
        with self._lock:
            old = self._states.get(part)
            if old is None or is_up(old) != is_up(state):
                self._since[part] = time.time()
            self._states[part] = state

    def error(self, text: str) -> None:
        """Note an error for ``status`` (escaped and cut: it may quote remote text)."""
        with self._lock:
            self._errors.append((time.time(), printable(text, 1000)))

    def counter(self, name: str) -> int:
        with self._lock:
            return self._counters[name]

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "counters": dict(self._counters),
                "last": dict(self._last),
                "states": dict(self._states),
                "since": dict(self._since),
                "errors": list(self._errors),
            }


class RateLimitedLog:
    """Logs a repeated problem once per ``interval``; what it held back is summed up, per key,
    by the next line for that key or by ``flush`` once the interval is over, so every
    occurrence is counted in the log even when the burst ends (call ``flush`` from a loop)."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0):
        self.logger, self.interval = logger, interval
        self._lock = threading.Lock()
        # key -> (when last logged, held back since, level, the last text held back)
        self._seen: Dict[str, Tuple[float, int, int, str]] = {}

    def __call__(self, level: int, key: str, text: str) -> None:
        now = time.monotonic()
        with self._lock:
            last, held, _, _ = self._seen.get(key, (None, 0, level, ""))
            if last is not None and now - last < self.interval:
                self._seen[key] = (last, held + 1, level, text)
                return
            self._seen[key] = (now, 0, level, "")
        if held:
            text = f"{text} (and {held} more like it in the last {int(now - last)} s)"
        self.logger.log(level, "%s", text)

    def due_in(self) -> Optional[float]:
        """Seconds until ``flush`` has a summary to write (0 if now), None if nothing is held
        back: the deadline a loop that sleeps until woken passes to its wait."""
        now = time.monotonic()
        with self._lock:
            dues = [last + self.interval - now for last, held, _, _ in self._seen.values() if held]
        return max(0.0, min(dues)) if dues else None

    def flush(self) -> None:
        """Write the summary of every key whose interval is over with occurrences held back."""
        now = time.monotonic()
        due = []
        with self._lock:
            for key, (last, held, level, text) in self._seen.items():
                if held and now - last >= self.interval:
                    due.append((key, held, level, text, int(now - last)))
                    self._seen[key] = (now, 0, level, "")
        for key, held, level, text, seconds in due:
            self.logger.log(level, "%d more like this (%s) in the last %d s; the last: %s", held, key, seconds, text)


class Backoff:
    """Capped exponential backoff with +/-20% jitter (so many bridges do not retry in step)."""

    def __init__(self, initial: float, cap: float):
        self.initial, self.cap = initial, cap
        self._current = initial

    def next_delay(self) -> float:
        delay = self._current * random.uniform(0.8, 1.2)
        self._current = min(self._current * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._current = self.initial
