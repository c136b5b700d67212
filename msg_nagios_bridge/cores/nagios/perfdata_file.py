"""The perfdata source: tails a file the Nagios core appends result lines to.

The read position (device, inode, a hash of the file's first KiB, offset of
the first unread byte) is saved in
the spool in the same transaction as the messages made from the lines before
it, so after a crash the bridge neither loses nor repeats a line.

Rotation: ``nagios-config`` has Nagios run ``mv -f FILE FILE.old`` every
``rotate_interval`` seconds. Nagios closes the file before running that
command and opens a new one after, so when the path's inode changes the old
file is complete: the tailer reads it to its end through the descriptor it
holds, then moves on to the next file. It opens every new file as soon as it
appears at FILE, also while it waits for room in the spool, and reads them in
turn: a later ``mv -f`` over ``FILE.old`` then unlinks a file it still holds
open, not one it has not read. While it waits for room, it also copies each
rotated file it has not read to its end into the spool's directory
(HELD_DIRECTORY), so that a restart or reload of the bridge during a long broker
outage does not lose their unread lines with the descriptors; a copy goes once
its file is read. At start the tailer looks for the file last read among those
copies, ``FILE.old`` and ``FILE``, and reads on from there in that order. A file
that shrinks below the read position, or whose first bytes are no longer those read, was truncated (mode ``w``,
``copytruncate``, or by hand; perhaps written again past the position before
the next look): reading starts again at its beginning.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import threading
import time
from collections import deque
from typing import Deque, Dict, List, Optional, Tuple

from . import result_line
from ...files import fsync_dir
from ...daemon.health import Health
from ...outbound.intake import Intake
from ...daemon.threadname import name_os_thread

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = 4 << 20      # the longest line or record read; a longer one is dead-lettered
# What one read takes: a backlog is parsed and held a read at a time (the bytes, their lines and
# records: about three copies), so a smaller read holds less at the peak. A read that holds no
# whole record is done again, up to MAX_BATCH_BYTES.
READ_BYTES = 1 << 20
OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
FINGERPRINT_BYTES = 1024
# In the spool's directory: copies of rotated files not read to their end, one directory per
# perfdata file, named <time_ns>-<dev>-<ino> of the file copied (their names sort oldest
# first). Copies, not hard links: under the systemd unit the spool is another mount than
# Nagios's directory (ReadWritePaths=), and link(2) across mounts fails (EXDEV).
HELD_DIRECTORY = "perfdata-held"


def split_records(lines: List[bytes]) -> Tuple[List[bytes], int]:
    """Whole records from complete lines: a version-2 record is its RECORD_LINES lines joined by
    newlines (result_line.record_template), any other line stands alone; and how many lines they
    use. A version-2 record whose last lines have not arrived yet is left for the next read.
    Lines are grouped by position from a record start, so text inside a record that looks like
    a tag cannot shift the grouping."""
    records: List[bytes] = []
    index = 0
    while index < len(lines):
        if result_line.is_record_start(lines[index]):
            if index + result_line.RECORD_LINES > len(lines):
                break
            records.append(b"\n".join(lines[index:index + result_line.RECORD_LINES]))
            index += result_line.RECORD_LINES
        else:
            records.append(lines[index])
            index += 1
    return records, index


def _records(data: bytes) -> Tuple[List[bytes], List[bytes], int]:
    """(the complete lines of a read, the whole records they make, how many lines those use).
    The lines are split without copying the read up to its last newline first (a copy of the
    read more at its peak): the part after the last newline is dropped."""
    complete = data.split(b"\n")
    complete.pop()
    records, used = split_records(complete)
    return complete, records, used


def _identity(info: os.stat_result) -> Tuple[int, int]:
    return info.st_dev, info.st_ino


def _fingerprint(fd: int, size: int) -> str:
    """A hash of the first bytes of a file: inode numbers are reused after a
    file is deleted, so (device, inode) alone cannot prove it is the same file."""
    head = os.pread(fd, min(size, FINGERPRINT_BYTES), 0)
    return hashlib.blake2b(head, digest_size=8).hexdigest()


def held_directory(spool_path: str, path: str) -> str:
    """Where the tailer of the perfdata file ``path`` keeps its copies (see HELD_DIRECTORY)."""
    tag = hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=4).hexdigest()
    return os.path.join(os.path.dirname(os.path.abspath(spool_path)), HELD_DIRECTORY,
                        f"{os.path.basename(path)}-{tag}")


def _same_start(path: str, other: str) -> bool:
    """Whether two files have the same first FINGERPRINT_BYTES (a copy and its file)."""
    try:
        with open(path, "rb") as one, open(other, "rb") as two:
            return one.read(FINGERPRINT_BYTES) == two.read(FINGERPRINT_BYTES)
    except OSError:
        return False


def _stat(path: str) -> Optional[os.stat_result]:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


class PerfdataTail(threading.Thread):
    def __init__(self, path: str, intake: Intake, health: Health, poll_interval: float):
        super().__init__(name=f"perfdata:{os.path.basename(path)}", daemon=True)
        self.path = path
        self.old_path = path + ".old"
        self.intake = intake
        self.health = health
        self.poll_interval = poll_interval
        self.cursor_name = f"perfdata:{path}"
        self.state_name = f"perfdata {path}"
        self.stopping = intake.stopping
        self.fd: Optional[int] = None
        self.file_id: Optional[Tuple[int, int]] = None
        self.offset = 0
        self.fingerprint = ""                          # of the current file, once it is long enough
        self.head = ""                                 # _fingerprint(fd, offset) as read; "" at 0
        # Newlines still to pass before the next record, after an oversized one was cut.
        self.skip_lines = 0
        # Files that appeared at the path after the current one, opened, not yet read: oldest first.
        self.queued: Deque[Tuple[int, Tuple[int, int]]] = deque()
        self.held_dir = held_directory(intake.spool.path, path)
        self.held: Dict[Tuple[int, int], str] = {}     # file identity -> its copy in held_dir
        self.holding = True                           # False once a copy could not be made
        intake.while_waiting = self._while_waiting

    # -- position -----------------------------------------------------------

    def _open(self, path: str, offset: int, identity: Optional[Tuple[int, int]] = None) -> bool:
        """Read ``path`` from ``offset``; ``identity``: of the file it is a copy of."""
        try:
            fd = os.open(path, OPEN_FLAGS)
        except FileNotFoundError:
            return False
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise OSError(f"{path} is not a regular file (a perfdata file must use mode 'a')")
        self._close()
        self._close_queued()
        self.fd, self.file_id, self.offset = fd, identity or _identity(info), min(offset, info.st_size)
        self.fingerprint = ""
        if offset > info.st_size:
            log.warning("%s is shorter than the saved position; reading it from the start", path)
            self.offset = 0
        self.head = _fingerprint(fd, self.offset) if self.offset else ""
        return True

    def _move_to(self, offset: int, head: str = "") -> None:
        """Read on from ``offset`` (``head``: _fingerprint there, if known)."""
        self.offset = offset
        self.head = head or (_fingerprint(self.fd, offset) if offset else "")

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.fd = None

    def _discover(self) -> None:
        """Open the file at the path if it is new (neither the current one nor queued)."""
        info = _stat(self.path)
        if info is None or self.fd is None:
            return
        identity = _identity(info)
        if identity == self.file_id or any(identity == queued for _, queued in self.queued):
            return
        self._queue([(self.path, identity, False)])
        if len(self.queued) > 1:
            log.warning("%s: %d rotated files wait to be read (the spool has no room)", self.path, len(self.queued))

    def _queue(self, files: List[Tuple[str, Tuple[int, int], bool]]) -> None:
        """Open (path, identity, is a copy) files to be read after the current one, in order;
        a file replaced in between is left (seen at the next look)."""
        for path, identity, copy in files:
            try:
                fd = os.open(path, OPEN_FLAGS)
            except FileNotFoundError:
                continue
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode) or (not copy and _identity(opened) != identity):
                os.close(fd)
                continue
            self.queued.append((fd, identity))

    def _while_waiting(self) -> None:
        """About once a second while a batch waits for room in the spool: open a file rotated
        meanwhile, and copy the rotated files not read to their end (see HELD_DIRECTORY)."""
        self._discover()
        if self.fd is None or not self.holding:
            return
        info = _stat(self.path)
        at_path = _identity(info) if info is not None else None
        for fd, identity in [(self.fd, self.file_id), *self.queued]:
            if identity in self.held or identity == at_path:       # kept, or still being written
                continue
            if fd == self.fd and os.fstat(fd).st_size <= self.offset:
                continue                                           # read to its end
            self._hold(fd, identity)

    def _hold(self, fd: int, identity: Tuple[int, int]) -> None:
        """Copy the whole file open as ``fd`` (rotated: complete) into held_dir, durably."""
        name = f"{time.time_ns():020d}-{identity[0]}-{identity[1]}"
        temporary = os.path.join(self.held_dir, "." + name)
        try:
            os.makedirs(self.held_dir, mode=0o700, exist_ok=True)
            out = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                size, done = os.fstat(fd).st_size, 0
                while done < size:
                    sent = os.sendfile(out, fd, done, size - done)
                    if sent == 0:
                        break
                    done += sent
                os.fsync(out)
            finally:
                os.close(out)
            os.rename(temporary, os.path.join(self.held_dir, name))
            fsync_dir(self.held_dir)
        except OSError as exc:
            # Disk full, or the spool's directory not writable: the descriptors still hold
            # the files while the bridge runs; only a restart before they are read loses lines.
            self.holding = False
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            log.warning("%s: cannot copy rotated files that wait to be read into %s (%s); a restart while"
                        " they wait loses their unread lines", self.path, self.held_dir, exc.strerror)
            return
        self.held[identity] = os.path.join(self.held_dir, name)
        log.info("%s: copied a rotated file that waits to be read (%d bytes) to %s", self.path, size,
                 self.held[identity])

    def _release(self, identity: Optional[Tuple[int, int]]) -> None:
        """The file read to its end: its copy goes."""
        copy = self.held.pop(identity, None) if identity is not None else None
        if copy is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(copy)

    def _held_files(self) -> List[Tuple[str, Tuple[int, int]]]:
        """The copies in held_dir, oldest first, as (path, identity of the file copied); a copy
        cut short by a crash (its temporary name) is removed."""
        try:
            names = sorted(os.listdir(self.held_dir))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            parts = name.split("-")
            if len(parts) == 3 and all(part.isdigit() for part in parts):
                found.append((os.path.join(self.held_dir, name), (int(parts[1]), int(parts[2]))))
            elif name.startswith("."):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.held_dir, name))
        return found

    def _resume(self) -> None:
        """At start: continue where the spool's cursor says, in the held files (oldest first),
        FILE.old or FILE, then read the ones after it in that order."""
        held = self._held_files()
        self.held = {identity: link for link, identity in held}
        saved = self.intake.spool.cursor(self.cursor_name)
        if saved is None:
            for _, identity in held:       # a spool made anew: nothing says they are unread
                self._release(identity)
            self._open(self.path, 0)
            return
        # (path, identity, is a copy): the copies, FILE.old, FILE; each file once, the first
        # of its names (a copy's identity is its file's, from its name; the same identity with
        # other first bytes is another file that got a deleted one's inode number).
        files: List[Tuple[str, Tuple[int, int], bool]] = [(copy, identity, True) for copy, identity in held]
        for path in (self.old_path, self.path):
            info = _stat(path)
            if info is not None and not any(identity == _identity(info) and _same_start(kept, path)
                                            for kept, identity, _ in files):
                files.append((path, _identity(info), False))
        cursor = json.loads(saved)
        wanted = (cursor["dev"], cursor["ino"])
        for index, (path, identity, _) in enumerate(files):
            if identity == wanted and self._open(path, cursor["offset"], identity):
                if _fingerprint(self.fd, cursor["offset"]) == cursor.get("head"):
                    for _, done, _ in files[:index]:
                        self._release(done)
                    self._queue(files[index + 1:])
                    return
                self._close()   # same inode number, another file
        log.warning("%s: the file last read was rotated away while the bridge was stopped; reading %s from"
                    " the start", self.path, ", ".join(path for path, _, _ in files) or "it")
        if files and self._open(files[0][0], 0, files[0][1]):
            self._queue(files[1:])

    def _close_queued(self) -> None:
        while self.queued:
            os.close(self.queued.popleft()[0])

    def _skip_rest_of_record(self, data: bytes) -> bool:
        """After an oversized record's first MAX_BATCH_BYTES: dead-letter the rest of it, up to
        the newline that ends it, and read on from there. True if it did something."""
        left, cut = self.skip_lines, 0
        while left and cut < len(data):
            newline = data.find(b"\n", cut)
            if newline < 0:
                break
            cut, left = newline + 1, left - 1
        if left == 0 or len(data) >= READ_BYTES:
            rest = data if left else data[:cut]
            self.intake.dead_letter(rest, f"the rest of a line or record longer than {MAX_BATCH_BYTES} bytes")
            self._move_to(self.offset + len(rest))
            self.skip_lines = left
            return True
        return self._at_end(data)

    def _next_file(self, leftover: bytes) -> bool:
        """If the current file, read to its end, was replaced: switch. True if it did something."""
        current = _stat(self.path)
        if current is not None and _identity(current) == self.file_id:
            return False   # not rotated; maybe truncated
        if os.fstat(self.fd).st_size > self.offset + len(leftover):
            # Nagios wrote its last lines (closing the file) between our read and the rotation.
            return True
        if leftover:
            self.intake.dead_letter(leftover, "the file was rotated with an incomplete last line")
        self._discover()
        self._release(self.file_id)
        self._close()
        if self.queued:
            self.fd, self.file_id = self.queued.popleft()
        else:
            self.file_id = None
        self.fingerprint = ""
        self._move_to(0)
        return True

    # -- loop ---------------------------------------------------------------

    def run(self) -> None:
        name_os_thread(self.name)
        try:
            self._resume()
            self.health.set_state(self.state_name, "reading" if self.fd is not None else "waiting for the file")
            while not self.stopping.is_set():
                if not self._step():
                    self.stopping.wait(self.poll_interval)
        except OSError as exc:
            log.error("perfdata source %s stopped: %s", self.path, exc)
            self.health.set_state(self.state_name, f"failed: {exc}")
            self.health.error(f"perfdata {self.path}: {exc}")
        finally:
            self._close()
            self._close_queued()

    def _head(self, offset: int) -> str:
        if self.fingerprint:
            return self.fingerprint
        head = _fingerprint(self.fd, offset)
        if offset >= FINGERPRINT_BYTES:
            self.fingerprint = head   # the first bytes of a growing file no longer change
        return head

    def _step(self) -> bool:
        """Read and spool what is there. True if it did something (so go again at once)."""
        if self.fd is None:
            if _stat(self.path) is None:
                return False
            self._open(self.path, 0)
            self.health.set_state(self.state_name, "reading")
        self._discover()
        if self.offset:
            size = os.fstat(self.fd).st_size
            if size < self.offset:
                return self._start_again(f"was truncated (from {self.offset} to {size} bytes)")
            # Truncated and written past the position again before this look (a pause while
            # the spool was full, a quick restart of Nagios with mode w): the size cannot tell.
            if _fingerprint(self.fd, self.offset) != self.head:
                return self._start_again("was truncated and written again since it was read (its first"
                                         " bytes changed)")
        data = os.pread(self.fd, READ_BYTES, self.offset)
        if self.skip_lines:
            return self._skip_rest_of_record(data)
        complete, lines, used = _records(data)
        if not used and len(data) == READ_BYTES:        # a long record: read it whole
            data = os.pread(self.fd, MAX_BATCH_BYTES, self.offset)
            complete, lines, used = _records(data)
        if used:
            new_offset = self.offset + sum(len(line) + 1 for line in complete[:used])
            head = self._head(new_offset)
            cursor = json.dumps({"dev": self.file_id[0], "ino": self.file_id[1], "offset": new_offset,
                                 "head": head})
            if not self.intake.spool_lines(lines, cursor=(self.cursor_name, cursor)):
                return False
            self._move_to(new_offset, head)
            return True
        if len(data) >= MAX_BATCH_BYTES:
            self.intake.dead_letter(data, f"line or record longer than {MAX_BATCH_BYTES} bytes")
            self._move_to(self.offset + len(data))
            # Never resume inside it: the rest of its line is plugin output, which may hold a
            # whole result line of the plugin's making (for any host) right after the cut.
            first_line_ends = data.find(b"\n")
            first = data if first_line_ends < 0 else data[:first_line_ends]
            record_lines = result_line.RECORD_LINES if result_line.is_record_start(first) else 1
            self.skip_lines = record_lines - data.count(b"\n")
            return True
        return self._at_end(data)

    def _at_end(self, data: bytes) -> bool:
        """The file read to its end (``data``: an incomplete last line): switch to the next
        file if it was rotated. True if it did, or if the file is now shorter than the read
        position (the next _step, at once, starts it again)."""
        if self._next_file(data):
            self.skip_lines = 0
            return True
        return os.fstat(self.fd).st_size < self.offset

    def _start_again(self, what: str) -> bool:
        log.warning("%s %s; reading it from the start", self.path, what)
        self.health.add("perfdata_truncations")
        self.fingerprint, self.skip_lines = "", 0
        self._move_to(0)
        return True
