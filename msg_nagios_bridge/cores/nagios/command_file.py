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
"""
from __future__ import annotations

import errno
import os
import select
import stat
from typing import List, Optional, Sequence, Tuple

from .nagios_command import PIPE_BUF


class NagiosUnavailable(Exception):
    """Nagios cannot take commands now: the message says why. Retry later."""


def _batches(lines: Sequence[str]) -> List[bytes]:
    """Pack lines into writes of at most PIPE_BUF bytes, never splitting a line."""
    writes, current = [], b""
    for line in lines:
        data = line.encode("utf-8")
        if len(data) > PIPE_BUF:
            raise ValueError(f"a command line of {len(data)} bytes exceeds PIPE_BUF")
        if len(current) + len(data) > PIPE_BUF:
            writes.append(current)
            current = b""
        current += data
    if current:
        writes.append(current)
    return writes


def reader_identity(path: str) -> Optional[Tuple[int, int]]:
    """(device, inode) of the FIFO at ``path`` if someone (Nagios) has it open for reading,
    else None. A new inode, or a moment with no reader, means Nagios went away meanwhile."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        return (info.st_dev, info.st_ino) if stat.S_ISFIFO(info.st_mode) else None
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
    reader, or no room within ``timeout``. Lines written before the failure are written again
    on the next try: a repeated passive result with the same time is harmless.
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
        raise NagiosUnavailable(f"cannot open the command file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISFIFO(info.st_mode):
            raise NagiosUnavailable(f"{path} is not a FIFO; refusing to write commands into it")
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        for data in _batches(lines):
            while True:
                try:
                    written = os.write(fd, data)
                    break
                except BlockingIOError:
                    # The pipe is full: Nagios is busy. Wait for room.
                    if not poller.poll(int(timeout * 1000)):
                        raise NagiosUnavailable(f"the command file {path} stayed full for {timeout:g} s") from None
                except BrokenPipeError:
                    raise NagiosUnavailable(f"Nagios stopped reading {path}") from None
            if written != len(data):   # cannot happen for <= PIPE_BUF on a pipe; be loud if it does
                raise NagiosUnavailable(f"partial write to {path} ({written} of {len(data)} bytes)")
        return info.st_dev, info.st_ino
    finally:
        os.close(fd)
