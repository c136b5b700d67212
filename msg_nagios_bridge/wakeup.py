"""The one thing a worker thread sleeps on.

Everything the worker waits for sets it: the spool (something to take, or room freed), the
broker connection (a frame arrived, the connection dropped), and stop(). So no result waits on
a poll interval, and a stop is seen at once. A timeout passed to wait() is a deadline the
worker itself owns (a backoff delay, a receipt deadline), never a poll.
"""
import threading
from typing import Optional


class Wakeup:
    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Sleep until set() or ``timeout``; True if set. Clears it: a set() after this
        returns wakes the next wait(), so nothing set while the worker was busy is missed."""
        woken = self._event.wait(timeout)
        self._event.clear()
        return woken

    def is_set(self) -> bool:
        return self._event.is_set()
