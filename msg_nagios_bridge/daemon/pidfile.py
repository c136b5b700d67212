"""A pidfile that is locked while the bridge runs and removed when it stops.

Used as DaemonContext's ``pidfile`` (any context manager will do). The lock
is an flock on the open file, so a stale file left by a killed bridge does not
block the next start, and two bridges cannot run on one pidfile.
"""
from __future__ import annotations

import fcntl
import os
from typing import Optional


class AlreadyRunning(Exception):
    """Another process holds the pidfile's lock."""


class PidFile:
    def __init__(self, path: str):
        self.path = path
        self.fd: Optional[int] = None

    def _lock(self, flags: int = os.O_RDWR | os.O_CREAT) -> int:
        fd = os.open(self.path, flags | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise AlreadyRunning(f"another bridge (pid {other}) holds {self.path}") from None
        return fd

    def check(self) -> None:
        """Raise AlreadyRunning now, in the foreground, rather than after detaching.

        Creates nothing: this runs before the drop to daemon.user, and a pidfile it made would
        belong to root, which the detached bridge could then not open (it died unseen)."""
        try:
            fd = self._lock(os.O_RDONLY)
        except FileNotFoundError:
            return          # no pidfile: nothing holds it
        os.close(fd)

    def __enter__(self) -> "PidFile":
        self.fd = self._lock()
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode("ascii"))
        os.fsync(self.fd)
        return self

    def __exit__(self, *exc_info) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
