"""Write passive check results into Nagios's check results directory.

Nagios reaps files named ``c`` + 6 characters that have a matching ``.ok``
file. The result file is written, fsynced and closed first, then the ``.ok``
file is created, so Nagios never reads half a file. This path has no size
limit per result and no reader problem: files wait until Nagios is back (Nagios
deletes unread files older than ``max_check_result_file_age``, 1 hour by default,
by mtime: the writer keeps touching the file that waits).

``CheckResultsDirDelivery`` confirms the results of a file once Nagios has reaped it (read
and deleted it), and writes one file at a time (see ``write``).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import string
import time
from typing import FrozenSet, List, Optional, Sequence

from . import checkresult_file
from ...daemon.health import Health, RateLimitedLog
from ...model import CheckResult
from ...files import fsync_dir
from ...spool import Spool
from .command_file import NO_WRITE_ACCESS, WRITE_ACCESS_HINT, NagiosUnavailable
from .delivery import Prepared, id_ranges, ids_in, log

NOT_REAPED_AFTER = 30.0     # a check result file Nagios has not read by then: Nagios is away
LOOK_EVERY = 0.05           # whether the file is gone (Nagios reads it within about a second)
# Nagios deletes unread check result files older than max_check_result_file_age (by mtime, 1 h
# by default): the file waiting for it is touched this often, so it never looks old.
TOUCH_EVERY = 10.0
# Saved in the spool: the check result file waiting for Nagios, its entries and when it was last
# touched. A restarted bridge waits for that file; if it is gone, it was read, unless the bridge
# was down long enough for Nagios to have deleted it unread (then its results are written again).
FILED_CURSOR = "nagios-filed"

_NAME_CHARS = string.ascii_letters + string.digits


def write_results(directory: str, results: Sequence[CheckResult]) -> str:
    """Write ``results`` as one check result file (without a file_time: see
    checkresult_file.render); returns its path."""
    text = checkresult_file.render(results).encode("utf-8")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        path = os.path.join(directory, "c" + "".join(secrets.choice(_NAME_CHARS) for _ in range(6)))
        try:
            fd = os.open(path, flags, 0o600)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            reason = "does not exist" if exc.errno == errno.ENOENT else exc.strerror
            if exc.errno in NO_WRITE_ACCESS:
                reason += f": {WRITE_ACCESS_HINT}"
            raise NagiosUnavailable(f"cannot write into the check results directory {directory}: {reason}") from None
    else:
        raise NagiosUnavailable(f"no free file name in {directory} after 100 tries")
    try:
        try:
            view = memoryview(text)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        ok = os.open(path + ".ok", flags, 0o600)
        os.close(ok)
        fsync_dir(directory)     # the entries leave the spool once Nagios has read the file
    except OSError as exc:
        _remove(path)
        raise NagiosUnavailable(f"cannot write {path}: {exc.strerror}") from None
    return path


def _remove(path: str) -> None:
    for name in (path, path + ".ok"):
        try:
            os.unlink(name)
        except OSError:
            pass


class CheckResultsDirDelivery:
    """Check result files, confirmed once Nagios has reaped them (a Delivery, see delivery.py)."""

    exit_wait = 0.0      # the file waiting is saved: the next run waits for it

    def __init__(self, directory: str, spool: Spool, health: Health, warn: RateLimitedLog):
        self.directory = directory
        self.spool = spool
        self.health = health
        self.warn = warn
        # The check result file waiting for Nagios, and the entries in it (still in the spool).
        self._file: Optional[str] = None
        self._ids: List[int] = []
        self._since = self._touched = 0.0

    @property
    def pending(self) -> FrozenSet[int]:
        return frozenset(self._ids)

    def ready(self) -> bool:
        """One check result file at a time. Nagios reads the files waiting in its directory in
        no particular order and keeps whichever result it reads last, so a second file written
        before the first was read could leave a service showing an older result (measured: up
        to half of them). Waiting for Nagios to take each file keeps the newest result last."""
        return self._file is None

    def next_look(self) -> Optional[float]:
        if self._file is None:
            return None
        return LOOK_EVERY if time.time() - self._since < NOT_REAPED_AFTER else 1.0

    def write(self, batch: List[Prepared]) -> None:
        """One file, results oldest first."""
        results = sorted((p.result for p in batch), key=lambda result: result.timestamp)
        self._file = write_results(self.directory, results)
        self._ids = [p.entry.entry_id for p in batch]
        self._since = self._touched = time.time()
        self.save()

    def confirmed(self, now: Optional[float] = None) -> List[int]:
        """The entries of the file once Nagios has reaped it; meanwhile keeps the file fresh,
        and says so when Nagios has not read it for NOT_REAPED_AFTER seconds."""
        if self._file is None:
            return []
        # Wall clock: the touch time is saved for the next run.
        now = time.time() + (0.0 if now is None else now - time.monotonic())
        if not os.path.exists(self._file):
            return list(self._ids)
        if now - self._touched >= TOUCH_EVERY:
            try:
                os.utime(self._file)
                self._touched = now
                self.save()
            except FileNotFoundError:
                return []                              # reaped just now: seen next time
            except OSError as exc:
                # Read-only, say (errors=remount-ro): Nagios may still read it; if it deems it
                # too old unread, the wait below says so. Not the end of the writer (review
                # 2026-12-06: this ended its thread, and every restart met the file again).
                self.warn(logging.WARNING, "touch", f"cannot keep {self._file} fresh for Nagios: {exc.strerror}")
        age = now - self._since
        if age >= NOT_REAPED_AFTER:
            problem = (f"Nagios has not read {self._file} for {age:.0f} s"
                       f" (is it running? check_result_path right?)")
            self.health.set_state("nagios_writer", f"waiting: {problem}")
            self.health.error(f"nagios: {problem}")
            self.warn(logging.WARNING, "nagios", f"cannot hand results to Nagios, will retry: {problem}")
        return []

    def forget(self, entry_ids: List[int]) -> None:
        self._file, self._ids = None, []
        self.save()

    def save(self) -> None:
        state = {} if self._file is None else {
            "path": self._file, "ids": id_ranges(sorted(self._ids)), "touched": self._touched}
        self.spool.put([], cursor=(FILED_CURSOR, json.dumps(state)))

    def load(self) -> None:
        saved = json.loads(self.spool.cursor(FILED_CURSOR) or "{}")
        if not saved:
            return
        ids = ids_in(saved["ids"])
        if os.path.exists(saved["path"]):
            log.info("%d results are in %s, which Nagios has not read yet: waiting for it",
                     len(ids), saved["path"])
        elif time.time() - saved["touched"] >= 3 * TOUCH_EVERY:
            log.warning("%s, with %d results, is gone after the bridge was down for %.0f s: Nagios"
                        " may have deleted it unread as too old, so they will be written again",
                        saved["path"], len(ids), time.time() - saved["touched"])
            self.save()
            return
        # Still there, or read by Nagios while the bridge restarted (then confirmed() says so).
        self._file, self._ids = saved["path"], ids
        self._since, self._touched = time.time(), saved["touched"]
