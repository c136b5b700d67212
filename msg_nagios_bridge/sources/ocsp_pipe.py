"""The OCSP/OCHP source: a FIFO the bridge owns, fed by a shell ``printf``.

Nagios runs the OCSP/OCHP command after every check; ``nagios-config`` prints
one that writes a single result line (see formats/result_line.py) into this
FIFO, costing one ``sh`` fork per check and no Python start-up.

* The bridge opens the FIFO read-write, so it never sees end-of-file when the
  last writer closes, and writers never get SIGPIPE while the bridge runs.
* While the bridge is down the FIFO stays in place: writers block in open()
  until the bridge is back or Nagios's ``ocsp_timeout`` kills them. If the
  FIFO was missing, the shell's ``>`` creates a regular file instead; at start
  the bridge takes such a file's lines in, then puts the FIFO in its place.
* A line longer than PIPE_BUF (4096 bytes) may be interleaved with another
  writer's line; the parser detects that and dead-letters the mix. Results
  with big outputs belong on the perfdata source, which has no such limit.
"""
from __future__ import annotations

import errno
import grp
import logging
import os
import select
import stat
import threading
from typing import List

from ..config import OcspPipeSettings
from ..health import Health
from .intake import Intake

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 16
MAX_BATCH_BYTES = 1 << 20


class FifoError(Exception):
    """The FIFO path cannot be used safely: says what is there and why."""


def prepare_fifo(settings: OcspPipeSettings) -> bytes:
    """Create (or check) the FIFO. Returns the lines of a stray regular file found there.

    Refuses anything at the path that is not a FIFO or regular file we own:
    a symlink or someone else's file must not become our input or target.
    """
    path = settings.path
    recovered = b""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    if info is not None:
        if stat.S_ISFIFO(info.st_mode) and info.st_uid == os.geteuid():
            _apply_mode(settings)
            return recovered
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid():
            recovered = _take_stray_file(path)
        else:
            raise FifoError(f"{path} exists and is not a FIFO owned by uid {os.geteuid()} "
                            f"(mode {stat.filemode(info.st_mode)}, owner uid {info.st_uid}); "
                            f"remove it or choose another sources.ocsp_pipe.path")
    try:
        os.mkfifo(path, 0o600)
    except OSError as exc:
        raise FifoError(f"cannot create the FIFO {path}: {exc.strerror}") from None
    _apply_mode(settings)
    return recovered


def _take_stray_file(path: str) -> bytes:
    """Writers ran while the FIFO was missing and made a file: keep what they wrote."""
    aside = f"{path}.recovered"
    os.rename(path, aside)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(aside, flags)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, READ_CHUNK)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    log.warning("found a regular file at %s (written while the FIFO was missing); taking in its %d bytes",
                path, sum(map(len, chunks)))
    return b"".join(chunks)


def _apply_mode(settings: OcspPipeSettings) -> None:
    if settings.group:
        try:
            gid = grp.getgrnam(settings.group).gr_gid
        except KeyError:
            raise FifoError(f"group {settings.group!r} (sources.ocsp_pipe.group) does not exist") from None
        os.chown(settings.path, -1, gid, follow_symlinks=False)
    os.chmod(settings.path, settings.mode)


class OcspPipeSource(threading.Thread):
    def __init__(self, settings: OcspPipeSettings, intake: Intake, health: Health):
        super().__init__(name="ocsp-pipe", daemon=True)
        self.settings = settings
        self.intake = intake
        self.health = health
        self.stopping = intake.stopping
        self.ready = threading.Event()
        self.failure = None

    def run(self) -> None:
        try:
            recovered = prepare_fifo(self.settings)
            fd = os.open(self.settings.path, os.O_RDWR | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except (FifoError, OSError) as exc:
            self.failure = str(exc)
            self.health.set_state("ocsp_pipe", f"failed: {exc}")
            self.health.error(f"ocsp_pipe: {exc}")
            log.error("OCSP pipe source cannot start: %s", exc)
            self.ready.set()
            return
        self.health.set_state("ocsp_pipe", "reading")
        self.ready.set()
        try:
            if recovered:
                lines = recovered.split(b"\n")
                if lines[-1]:
                    self.intake.dead_letter(lines[-1], "incomplete last line in the recovered file")
                if self.intake.spool_lines(lines[:-1]):
                    os.unlink(self.settings.path + ".recovered")
            self._loop(fd)
        finally:
            os.close(fd)
            self.health.set_state("ocsp_pipe", "stopped")

    def _loop(self, fd: int) -> None:
        pending = b""
        skipping = False   # inside a line that was too long: drop up to its newline
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not self.stopping.is_set():
            if not poller.poll(200):
                continue
            data = self._read_available(fd)
            if not data:
                continue
            lines: List[bytes] = (pending + data).split(b"\n")
            pending = lines.pop()
            if skipping and lines:
                lines.pop(0)
                skipping = False
            if len(pending) > self.settings.max_line_bytes:
                if not skipping:
                    self.intake.dead_letter(pending, f"line longer than {self.settings.max_line_bytes} bytes")
                pending, skipping = b"", True
            if lines:
                self.intake.spool_lines(lines)

    @staticmethod
    def _read_available(fd: int) -> bytes:
        chunks, size = [], 0
        while size < MAX_BATCH_BYTES:
            try:
                chunk = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
