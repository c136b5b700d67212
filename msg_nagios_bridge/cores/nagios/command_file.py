"""Write passive check results into Nagios's external command file (a FIFO).

Replaces pynag's command writer on purpose: pynag opens the FIFO with a
blocking open(), which hangs forever when Nagios is stopped but left the FIFO
behind (Debian's 4.4.6 does). Here:

* open is ``O_WRONLY | O_NONBLOCK``: ``ENOENT`` means no FIFO (Nagios is
  stopped), ``ENXIO`` means no reader (Nagios is hung or restarting); both
  are reported clearly and retried, and nothing is lost meanwhile;
* every write() holds whole lines and at most PIPE_BUF bytes, so it is atomic
  even with other writers (the CGIs, NSCA...) on the same FIFO;
* when the pipe is full the writer waits for room, with a timeout.

The FIFO gives no acknowledgement, and a Nagios that stops (or dies) drops what it had read
but not yet handled (measured: results written just before a SIGTERM never reached it). So
``CommandFileDelivery`` confirms a result only once the same Nagios has still been reading
the FIFO CONFIRM_AFTER seconds after the write, and gives back (to be written again) what
was written shortly before Nagios went away.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import select
import stat
import struct
import termios
import time
from collections import deque
from typing import Deque, FrozenSet, List, Optional, Sequence, Tuple

from ...config import InboundSettings
from ...daemon.health import Health, RateLimitedLog
from ...spool import Spool
from .delivery import Prepared, id_ranges, ids_in, log
from .nagios_command import PIPE_BUF

# A result written into the command FIFO leaves the spool once the same Nagios has read the
# FIFO for this long after: longer than a killed core's command worker keeps swallowing (~2 s).
CONFIRM_AFTER = 3.0
# What to do about EACCES / EPERM / EROFS on a Nagios path: the usual causes are the bridge's
# user and, under the hardened unit (ProtectSystem=strict), a path outside its ReadWritePaths.
NO_WRITE_ACCESS = (errno.EACCES, errno.EPERM, errno.EROFS)
WRITE_ACCESS_HINT = ("the bridge's user (the Nagios user) needs write access to it, and under systemd a path"
                     " outside /var/lib/nagios4 needs ReadWritePaths= in a drop-in (docs/packaging.md)")
# Meanwhile the reader is looked at this often: a restarting Nagios shows as a moment with no
# reader, which one look at the confirmation time would miss (where Nagios's processes cannot
# be seen, a new FIFO may reuse the old one's inode and look the same). A write uses the last
# look when it is this recent (a look is a /proc walk of a few syscalls, and at 1,000 results/s
# writes come in batches of a few results): a reader that changed in between is seen by the
# next look, and the batch is written again (duplicates, never loss). Confirmed entries are
# handed for deletion at these looks too, so one delete covers LOOK_EVERY s of writes.
LOOK_EVERY = 0.2
# The saved cursor (below) is rewritten at most this often: it only spares a bridge restarted
# after a crash from writing again what the same Nagios already has, so a crash loses at most
# this much of it (those results are written twice), while a commit per write cost about
# 60 us of CPU each and the cursor's size grows with what waits (3 s of writes).
SAVE_EVERY = 0.5
# Saved in the spool with each write: which entries are in which Nagios's FIFO, unconfirmed.
# A bridge restarted while that same Nagios still reads the same FIFO confirms them instead
# of writing them twice.
WRITTEN_CURSOR = "nagios-written"


class NagiosUnavailable(Exception):
    """Nagios cannot take commands now: the message says why. Retry later. ``written``: how
    many of the lines were in the FIFO before it failed (write_lines)."""

    def __init__(self, message: str, written: int = 0):
        super().__init__(message)
        self.written = written


def _batches(lines: Sequence[str]) -> List[Tuple[bytes, int]]:
    """Pack lines into writes of at most PIPE_BUF bytes, never splitting a line; each write
    with how many lines it holds."""
    writes, current, count = [], b"", 0
    for line in lines:
        data = line.encode("utf-8")
        if len(data) > PIPE_BUF:
            raise ValueError(f"a command line of {len(data)} bytes exceeds PIPE_BUF")
        if len(current) + len(data) > PIPE_BUF:
            writes.append((current, count))
            current, count = b"", 0
        current += data
        count += 1
    if current:
        writes.append((current, count))
    return writes


def reader_identity(path: str) -> Optional[Tuple[int, int]]:
    """(device, inode) of the FIFO at ``path`` if someone (Nagios) has it open for reading,
    else None. A new inode, or a moment with no reader, means Nagios went away meanwhile."""
    found = fifo_state(path)
    return found[:2] if found is not None else None


def fifo_state(path: str) -> Optional[Tuple[int, int, int]]:
    """reader_identity's (device, inode), and how many bytes in the FIFO no reader has taken
    yet (FIONREAD; 0 if it cannot be told)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISFIFO(info.st_mode):
            return None
        try:
            unread = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            unread = 0
        return info.st_dev, info.st_ino, unread
    finally:
        os.close(fd)


def fifo_readers(fifo: Tuple[int, int]) -> Tuple[Tuple[int, int, int], ...]:
    """(pid, start time, fd) of the processes other than this one that hold the FIFO ``fifo``
    (device, inode) open for reading, from /proc; processes we may not look into are missed.
    The fd lets a caller check cheaply that a process still holds it (``still_holds``)."""
    readers = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                info = os.stat(fd.path)
                if (info.st_dev, info.st_ino) != fifo:
                    continue
                with open(f"/proc/{entry.name}/fdinfo/{fd.name}", encoding="ascii") as handle:
                    flags = int(handle.read().split("flags:", 1)[1].split()[0], 8)
                if flags & os.O_ACCMODE != os.O_WRONLY:
                    readers.append((int(entry.name), process_start(int(entry.name)), int(fd.name)))
                    break
        except (OSError, ValueError, IndexError):
            continue      # gone meanwhile, or not ours to look into
    return tuple(sorted(readers))


def still_holds(fifo: Tuple[int, int], pid: int, start: int, fd: int) -> bool:
    """True if process ``pid`` (started at ``start``) still has the FIFO ``fifo`` open as ``fd``.
    A running process is not enough: Nagios's old command worker outlives its core by a second
    or two after closing the FIFO, while a new Nagios already reads it (same inode)."""
    try:
        info = os.stat(f"/proc/{pid}/fd/{fd}")
        return (info.st_dev, info.st_ino) == fifo and process_start(pid) == start
    except (OSError, ValueError, IndexError):
        return False


def process_start(pid: int) -> int:
    """The start time of ``pid`` in clock ticks since boot (with the PID, unique until reboot)."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[19])


def write_lines(path: str, lines: Sequence[str], timeout: float = 10.0) -> Tuple[int, int]:
    """Write ``lines`` (each ending in a newline, each <= PIPE_BUF) to the FIFO at ``path``.

    Returns the FIFO's (device, inode). Raises NagiosUnavailable when there is no FIFO, no
    reader, or no room within ``timeout``, with how many lines were written before (its
    ``written``): those are in the FIFO, and writing them again after newer results of their
    objects would put an older state back (review 2026-12-06).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise NagiosUnavailable(f"no command file at {path} (is Nagios running?)") from None
        if exc.errno == errno.ENXIO:
            raise NagiosUnavailable(f"nobody reads the command file {path} (Nagios stopped or restarting)") from None
        if exc.errno == errno.ELOOP:
            raise NagiosUnavailable(f"{path} is a symlink; refusing to follow it") from None
        hint = f": {WRITE_ACCESS_HINT}" if exc.errno in NO_WRITE_ACCESS else ""
        raise NagiosUnavailable(f"cannot open the command file {path}: {exc.strerror}{hint}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISFIFO(info.st_mode):
            raise NagiosUnavailable(f"{path} is not a FIFO; refusing to write commands into it")
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        done = 0                                   # lines in the FIFO
        for data, count in _batches(lines):
            while True:
                try:
                    written = os.write(fd, data)
                    break
                except BlockingIOError:
                    # The pipe is full: Nagios is busy. Wait for room.
                    if not poller.poll(int(timeout * 1000)):
                        raise NagiosUnavailable(f"the command file {path} stayed full for {timeout:g} s",
                                                done) from None
                except BrokenPipeError:
                    raise NagiosUnavailable(f"Nagios stopped reading {path}", done) from None
            if written != len(data):   # cannot happen for <= PIPE_BUF on a pipe; be loud if it does
                raise NagiosUnavailable(f"partial write to {path} ({written} of {len(data)} bytes)", done)
            done += count
        return info.st_dev, info.st_ino
    finally:
        os.close(fd)


def nagios_pid_alive(lock_file: str) -> Optional[str]:
    """None if the PID in Nagios's lock file runs, else why not.

    After a SIGKILL of the core, its command-file worker keeps the FIFO open
    for a few seconds and swallows what is written: the lock file tells.
    """
    try:
        with open(lock_file, encoding="ascii") as handle:
            pid = int(handle.read().strip() or "0")
    except (OSError, ValueError):
        return f"cannot read a PID from Nagios's lock file {lock_file}"
    if pid <= 0:
        return f"no PID in Nagios's lock file {lock_file}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"Nagios (pid {pid} from {lock_file}) is not running"
    except PermissionError:
        pass   # it runs, as another user
    return None


class ReaderWatch:
    """Identifies the Nagios reading the command FIFO: (device, inode, ((pid, start), ...)) of
    the FIFO and of the processes holding it open for reading. Nagios reuses an existing FIFO,
    so the inode alone cannot tell a restarted Nagios; the reading processes can. The /proc scan
    runs only when the FIFO changed or a known reader no longer holds it (or every RESCAN s
    while none is seen)."""

    RESCAN = 10.0

    def __init__(self, path: str) -> None:
        self.path = path
        self.cached: Optional[tuple] = None
        self._held: Tuple[Tuple[int, int, int], ...] = ()     # (pid, start, fd) of the cached readers
        self.scanned_at = 0.0
        self.icinga2 = False        # the reader is Icinga 2 (its deprecated compat command pipe)
        self.unread = 0             # at the last identity(): bytes in the FIFO not read yet

    def identity(self) -> Optional[tuple]:
        state = fifo_state(self.path)
        if state is None:
            return None
        fifo, self.unread = state[:2], state[2]
        cached = self.cached
        if cached is not None and cached[:2] == fifo and all(still_holds(fifo, *r) for r in self._held):
            if self._held or time.monotonic() - self.scanned_at < self.RESCAN:
                return cached
        self._held = fifo_readers(fifo)
        self.cached = (fifo[0], fifo[1], tuple((pid, start) for pid, start, _ in self._held))
        self.scanned_at = time.monotonic()
        self.icinga2 = any(process_name(pid) == "icinga2" for pid, _, _ in self._held)
        return self.cached


def process_name(pid: int) -> str:
    """The command name of ``pid`` (/proc/PID/comm), "" if it cannot be read."""
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


ICINGA2_PIPE_DEPRECATED = ("writing; deprecated: the command file is Icinga 2's compat command pipe (deprecated,"
                           " removal planned for 2.18); use core: icinga2 (its API writer, docs/icinga2.md)")


def _frozen(value):
    """JSON lists back into the tuples they were saved from."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


class CommandFileDelivery:
    """Command lines into the command FIFO, confirmed by the same reader CONFIRM_AFTER s later
    (a Delivery, see delivery.py)."""

    exit_wait = CONFIRM_AFTER + 0.5     # a clean stop waits rather than write them twice

    def __init__(self, settings: InboundSettings, spool: Spool, health: Health, warn: RateLimitedLog):
        self.path = settings.command_file
        self.lock_file = settings.nagios_lock_file
        self.spool = spool
        self.health = health
        self.warn = warn
        # Written, not yet confirmed: (monotonic time, entry ids, reader seen before the write).
        self._unconfirmed: Deque[Tuple[float, List[int], Optional[tuple]]] = deque()
        self._readers = ReaderWatch(self.path)
        # Entries an earlier run of the bridge wrote to the same Nagios that reads the FIFO now.
        self._written_before: set = set()
        self._written_to: Optional[tuple] = None
        self._told_icinga2 = False
        self._looked: Optional[tuple] = None      # the last look: reader identity
        self._next_look = float("-inf")           # monotonic: when the next look is due
        self._emptied_at = float("-inf")          # monotonic: the last look that found the FIFO read
        self._saved_at = float("-inf")            # monotonic: the cursor's last save
        self._unsaved = False                     # what waits changed since that save

    def _look(self, now: float, fresh: bool = False) -> Optional[tuple]:
        """The reader, from the last look if it is less than LOOK_EVERY old (``fresh``: look now)."""
        if fresh or now >= self._next_look:
            self._looked = self.reader()
            self._next_look = now + LOOK_EVERY
            if self._looked is not None and self._readers.unread == 0:
                self._emptied_at = now            # all written before now has been read
        return self._looked

    def reader(self) -> Optional[tuple]:
        """Who reads the command FIFO now (see ReaderWatch); None if nobody, or if the PID in
        Nagios's lock file (when set) is not running."""
        if self.lock_file and nagios_pid_alive(self.lock_file):
            return None
        identity = self._readers.identity()
        if self._readers.icinga2 and not self._told_icinga2:
            self._told_icinga2 = True
            log.warning("%s is read by Icinga 2: its command pipe (the 'command' feature) is deprecated"
                        " and will be removed in Icinga 2.18; set core: icinga2 to use its API instead"
                        " (docs/icinga2.md)", self.path)
            self.health.set_state("command_file", ICINGA2_PIPE_DEPRECATED)
        return identity

    @property
    def pending(self) -> FrozenSet[int]:
        return frozenset(i for _, batch, _ in self._unconfirmed for i in batch)

    def written_before(self, entry_id: int) -> bool:
        """Whether the last run wrote this entry into the FIFO of the Nagios that reads it now
        (``write`` will not write it again)."""
        return entry_id in self._written_before

    def ready(self) -> bool:
        return True

    def next_look(self) -> Optional[float]:
        if not self._unconfirmed:
            return None
        return max(0.0, self._next_look - time.monotonic())

    def load(self) -> None:
        saved = json.loads(self.spool.cursor(WRITTEN_CURSOR) or "{}")
        reader = self.reader()
        if reader is None or not reader[2]:
            return
        for batch_reader, ranges in saved.get("batches", []):
            if _frozen(batch_reader) == reader:
                self._written_before.update(ids_in(ranges))
        if self._written_before:
            self._written_to = reader
            log.info("%d results written by the last run are in the command FIFO of the Nagios"
                     " that still reads it: not writing them again", len(self._written_before))

    def write(self, batch: List[Prepared]) -> None:
        now = time.monotonic()
        reader = self._look(now)
        if self._written_before and reader != self._written_to:
            self._written_before.clear()            # that Nagios went away: write them all
        already = [p.entry.entry_id for p in batch if p.entry.entry_id in self._written_before]
        self._written_before.difference_update(already)
        to_write = [p for p in batch if p.entry.entry_id not in already]
        try:
            if to_write:
                write_lines(self.path, [p.text for p in to_write])
        except NagiosUnavailable as exc:
            # The lines in the FIFO wait for confirmation as any written batch (given back if
            # that Nagios goes away); the caller gives back the rest.
            if exc.written:
                self._unconfirmed.append((time.monotonic(), already + [p.entry.entry_id for p in to_write[:exc.written]],
                                          reader))
                self._unsaved = True
            raise
        # The reader seen just before the write: if it changed in between, the next
        # confirmed() sees a different one and the batch is written again.
        self._unconfirmed.append((time.monotonic(), [p.entry.entry_id for p in batch], reader))
        self._unsaved = True
        if now - self._saved_at >= SAVE_EVERY:
            self.save()

    def confirmed(self, now: Optional[float] = None) -> List[int]:
        """The entries the same reader has had for CONFIRM_AFTER seconds; gives them all back
        (to be written again) if the FIFO lost its reader or the reader changed."""
        if not self._unconfirmed:
            return []
        now = time.monotonic() if now is None else now
        if now < self._next_look:
            # Looked less than LOOK_EVERY ago. What came due since waits for the next look: at
            # a steady rate something is due at every write, and confirming it then cost a
            # look, a walk over everything unconfirmed (3 s of writes) and a delete per write.
            return []
        reader = self._look(now, fresh=True)
        if self._unsaved and now - self._saved_at >= SAVE_EVERY:
            self.save()
        if reader is None or any(batch_reader != reader for _, _, batch_reader in self._unconfirmed):
            ids = [i for _, batch, _ in self._unconfirmed for i in batch]
            self.spool.give_back(ids)             # first: on a spool error nothing is forgotten
            self._unconfirmed.clear()
            self.save()
            self.health.add("rewritten", len(ids))
            self.warn(logging.WARNING, "rewrite", f"Nagios stopped reading {self.path}"
                      f" soon after {len(ids)} results were written: they will be written again")
            return []
        # Only what a reader has taken from the pipe: a hung Nagios keeps the FIFO open and
        # reads nothing, and what is still in the pipe is gone when it is restarted (review
        # 2026-12-06: it was confirmed after CONFIRM_AFTER all the same).
        settled = [batch for written_at, batch, _ in self._unconfirmed
                   if now - written_at >= CONFIRM_AFTER and written_at < self._emptied_at]
        return [i for batch in settled for i in batch]

    def forget(self, entry_ids: List[int]) -> None:
        gone = set(entry_ids)
        while self._unconfirmed and gone.issuperset(self._unconfirmed[0][1]):
            self._unconfirmed.popleft()

    def save(self) -> None:
        """Save which entries wait for confirmation in which Nagios (only a reader whose
        processes were seen can be recognised by the next run), as runs of ids per reader."""
        by_reader: dict = {}
        for _, ids, reader in self._unconfirmed:
            if reader is not None and reader[2]:
                by_reader.setdefault(reader, []).extend(ids)
        batches = [[reader, id_ranges(sorted(ids))] for reader, ids in by_reader.items()]
        self.spool.put([], cursor=(WRITTEN_CURSOR, json.dumps({"batches": batches})))
        self._saved_at = time.monotonic()
        self._unsaved = False
