"""The OCSP/OCHP source: a FIFO the bridge owns, fed by a shell ``printf``.

Nagios runs the OCSP/OCHP command after every check; ``nagios-config`` prints
one that writes a single result line (see formats/result_line.py) into this
FIFO, costing one ``sh`` fork per check and no Python start-up.

* The bridge opens the FIFO read-write, so it never sees end-of-file when the
  last writer closes, and writers never get SIGPIPE while the bridge runs.
* While the bridge is down the FIFO stays in place: writers block in open()
  until the bridge is back or Nagios's ``ocsp_timeout`` kills them. If the
  FIFO was missing, the shell's ``>>`` creates a regular file instead; at start
  the bridge moves such a file aside (``PATH.recovered.N``), puts the FIFO in
  its place, and takes the file's lines in before anything else.
* Lines leave the FIFO only once they are in the spool: the bridge copies the
  pipe's contents with tee(2) (which does not consume them), spools the whole
  lines, and only then reads those bytes out of the FIFO. A bridge killed in
  between finds them again, provided the pipe outlived it: something must
  hold the FIFO open meanwhile, as systemd's msg-nagios-bridge-ocsp.socket
  does (ListenFIFO=); otherwise the kernel drops the pipe's contents when the
  last process that had it open goes away.
* The FIFO is enlarged to 1 MiB where the kernel allows (about 3,000 results
  wait in it while the bridge restarts, instead of about 200).
* Each result comes framed (formats/ocsp_record.py): a secret token kept
  beside the FIFO (``<fifo>.token``), the writer's pid and the length. A
  record over PIPE_BUF (4096 bytes) may be cut by another writer's bytes; such
  a record never passes, whatever the plugin printed, and is dead-lettered
  (``ocsp-split``), while the whole records around it are taken. Results with
  big outputs belong on the perfdata source, which has no such limit.
"""
from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import fcntl
import glob
import grp
import logging
import os
import select
import stat
import termios
import threading
import time
from typing import Callable, List

from ...config import OcspPipeSettings
from ...display import printable
from . import ocsp_record
from ...daemon.health import Health, RateLimitedLog
from ...outbound.intake import Intake
from ...files import fsync_dir
from ...daemon.threadname import name_os_thread

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 16
PIPE_SIZE = 1 << 20          # asked for with F_SETPIPE_SZ; the kernel may give less
F_SETPIPE_SZ, F_GETPIPE_SZ = 1031, 1032
SPLICE_F_NONBLOCK = 2
PARTIAL_WAIT = 0.02          # a line whose end has not arrived yet: look again this much later


class FifoError(Exception):
    """The FIFO path cannot be used safely: says what is there and why."""


def prepare_fifo(settings: OcspPipeSettings) -> List[str]:
    """Create (or check) the FIFO. Returns the files of lines to take in first, oldest first:
    regular files that writers made at the path while the FIFO was missing, moved aside.

    Refuses anything at the path that is not a FIFO or regular file we own:
    a symlink or someone else's file must not become our input or target.
    """
    path = settings.path
    for _ in range(10):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            info = None
        if info is not None:
            if stat.S_ISFIFO(info.st_mode) and info.st_uid == os.geteuid():
                break
            if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid():
                _move_stray_file_aside(path)
            else:
                raise FifoError(f"{path} exists and is not a FIFO owned by uid {os.geteuid()} "
                                f"(mode {stat.filemode(info.st_mode)}, owner uid {info.st_uid}); "
                                f"remove it or choose another sources.ocsp_pipe.path")
        try:
            os.mkfifo(path, 0o600)
            break
        except FileExistsError:
            continue           # a writer made a file again in between: move that aside too
        except OSError as exc:
            raise FifoError(f"cannot create the FIFO {path}: {exc.strerror}{_directory_hint(exc)}") from None
    else:
        raise FifoError(f"cannot create the FIFO {path}: writers keep creating a file there")
    _apply_mode(settings)
    return recovered_files(path)


def _move_stray_file_aside(path: str) -> None:
    """Writers ran while the FIFO was missing and made a file: keep it under a name of its own
    (never over an earlier one) until its lines are spooled."""
    aside = f"{path}.recovered.{time.time_ns()}"
    os.rename(path, aside)
    log.warning("found a regular file at %s (written while the FIFO was missing): its %d bytes are taken"
                " in from %s", path, os.lstat(aside).st_size, aside)


def recovered_files(path: str) -> List[str]:
    """The files moved aside from ``path`` whose lines are not yet all spooled, oldest first
    (also those of an earlier run that stopped or died before it had taken them in)."""
    found = []
    for name in glob.glob(glob.escape(path) + ".recovered*"):
        info = os.lstat(name)
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid():
            found.append((info.st_mtime_ns, name))
    return [name for _, name in sorted(found)]


def _apply_mode(settings: OcspPipeSettings) -> None:
    if settings.group:
        _to_group(settings.path, settings.group, lambda gid: os.chown(settings.path, -1, gid, follow_symlinks=False))
    os.chmod(settings.path, settings.mode)


def load_token(path: str, group: str = "") -> bytes:
    """The OCSP record token in ``path``, made (32 random letters, mode 0640, ``group``) if
    missing. It stays across restarts: records waiting in the FIFO carry it. Refuses a file
    that is not a regular file of ours, that others may read, or that holds no token."""
    if not os.path.lexists(path):
        # Written whole under another name, then linked into place: a crash leaves no empty file.
        temporary = f"{path}.new.{os.getpid()}"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640)
            try:
                os.fchmod(fd, 0o640)                 # whatever the umask
                if group:
                    _to_group(path, group, lambda gid: os.fchown(fd, -1, gid))
                os.write(fd, (ocsp_record.new_token() + "\n").encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(temporary, path)
                fsync_dir(os.path.dirname(path) or ".")
                log.info("made a new OCSP record token in %s", path)
            except FileExistsError:
                pass                                 # made meanwhile: use that one
        except OSError as exc:
            raise FifoError(f"cannot create the OCSP token file {path}: {exc.strerror}{_directory_hint(exc)}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise FifoError(f"cannot read the OCSP token file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o007:
            raise FifoError(f"{path} must be a regular file of uid {os.geteuid()} that others cannot read"
                            f" (mode {stat.filemode(info.st_mode)}, owner uid {info.st_uid})")
        text = os.read(fd, 4096).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    if not ocsp_record.is_token(text):
        raise FifoError(f"{path} holds no OCSP record token (32 letters): remove it, the bridge makes a new"
                        " one at its next start (and records still waiting with the old one are refused)")
    return text.encode("ascii")



def _directory_hint(exc: OSError) -> str:
    """What to do when the FIFO's directory is missing or not writable (a path outside the unit's
    /run/msg-nagios-bridge is read-only under ProtectSystem=strict)."""
    if exc.errno == errno.ENOENT:
        return ": its directory does not exist (the systemd unit and tmpfiles.d entry make /run/msg-nagios-bridge)"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (": the bridge's user cannot write its directory (under systemd only /run/msg-nagios-bridge is"
                " writable: keep sources.ocsp_pipe.path there, or add ReadWritePaths= in a drop-in)")
    return ""


def _to_group(path: str, group: str, chown: Callable[[int], None]) -> None:
    """``chown(gid)`` of ``group``; EPERM (the bridge's user is not in it) said as such, not as
    a bare "Operation not permitted"."""
    try:
        chown(_gid(group))
    except PermissionError:
        raise FifoError(f"cannot give {path} to group {group!r} (sources.ocsp_pipe.group): the bridge's user is"
                        " not in that group; add it to the group, or leave group empty") from None


def _gid(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise FifoError(f"group {group!r} (sources.ocsp_pipe.group) does not exist") from None


class OcspPipeSource(threading.Thread):
    def __init__(self, settings: OcspPipeSettings, intake: Intake, health: Health, token_file: str):
        """``token_file``: where the OCSP record token is kept (ocsp_record.token_path)."""
        super().__init__(name="ocsp-pipe", daemon=True)
        self.settings = settings
        self.intake = intake
        self.health = health
        self.token_file = token_file
        self.token = b""
        # Until the first framed record, plain result lines are an OCSP command from before the
        # frame (a site that upgraded and has not run nagios-config yet): taken, with a warning,
        # rather than dead-lettered for good. A forged tail can only come from a framed record
        # cut by another writer, and that record's head, with the token, comes first on the
        # FIFO; from the first framed record on, plain lines are refused (ocsp-old-format).
        self.framed_seen = False
        self._unframed = RateLimitedLog(log, interval=3600.0)
        self.stopping = intake.stopping
        self.ready = threading.Event()
        self.failure = None

    def run(self) -> None:
        name_os_thread(self.name)
        fd = -1
        try:
            self.token = load_token(self.token_file, self.settings.group)
            recovered = prepare_fifo(self.settings)
            fd = os.open(self.settings.path, os.O_RDWR | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                raise FifoError(f"{self.settings.path} is no longer a FIFO")
            try:
                # Peek-then-consume counts bytes: it needs to be the FIFO's only reader.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FifoError(f"another process reads {self.settings.path} (it holds a lock on it);"
                                f" two bridges cannot share one OCSP FIFO") from None
            peek = PipePeek(fd)
        except (FifoError, OSError, AttributeError) as exc:   # AttributeError: a libc without tee()
            if fd >= 0:
                os.close(fd)
            self.failure = str(exc)
            self.health.set_state("ocsp_pipe", f"failed: {exc}")
            self.health.error(f"ocsp_pipe: {exc}")
            log.error("OCSP pipe source cannot start: %s", printable(exc))
            self.ready.set()
            return
        self.health.set_state("ocsp_pipe", "reading")
        self.ready.set()
        try:
            for name in recovered:
                if not self._take_in(name):
                    return                          # stopping: the file stays for the next start
            self._read_lines(fd, peek)
        finally:
            peek.close()
            os.close(fd)
            self.health.set_state("ocsp_pipe", "stopped")

    def _take_in(self, name: str) -> bool:
        """Spool the lines of a file moved aside, then delete it; False if stopping first
        (a crash in between reads it again: the spool drops the ids it already holds)."""
        limit = self.settings.max_line_bytes
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            rest = b""
            skipping = False   # inside a line too long to take in: drop it up to its newline
            while True:
                chunk = os.read(fd, READ_CHUNK * 16)
                data = rest + chunk
                if skipping:
                    # As _read_lines does: the rest of that line is plugin output, and may hold
                    # a whole result line of the plugin's making right after the cut.
                    newline = data.find(b"\n")
                    skipping = newline < 0
                    data = b"" if skipping else data[newline + 1:]
                lines = data.split(b"\n")
                rest = lines.pop()
                if not chunk:
                    break
                if len(rest) > limit:
                    lines.append(rest)   # refused below with its length, like one from the FIFO
                    rest, skipping = b"", True
                too_long = [line for line in lines if len(line) > limit]
                for line in too_long:
                    self.intake.dead_letter(self._redacted(line[:limit]), f"line longer than {limit} bytes in {name}")
                if not self.intake.spool_lines(self._records([line for line in lines if len(line) <= limit])):
                    return False
            if rest:
                self.intake.dead_letter(self._redacted(rest), f"incomplete last line in {name}")
        finally:
            os.close(fd)
        os.unlink(name)
        log.info("took in the lines of %s", name)
        return True

    def _read_lines(self, fd: int, peek: "PipePeek") -> None:
        limit = self.settings.max_line_bytes
        skipping = False   # inside a line too long to take in: drop it up to its newline
        readable, room = select.poll(), select.poll()
        readable.register(fd, select.POLLIN)
        room.register(fd, select.POLLOUT)
        while not self.stopping.is_set():
            if not readable.poll(200):
                continue
            data = peek.peek()
            if not data:
                continue
            if skipping:
                newline = data.find(b"\n")
                peek.consume(newline + 1 if newline >= 0 else len(data))
                skipping = newline < 0
                continue
            end = data.rfind(b"\n") + 1
            if end == 0:
                # No whole line yet. Its end is still being written, unless the line is over the
                # limit, or the pipe is full or holds more than tee could show: then it is too
                # long ever to be seen whole here (lines over PIPE_BUF belong on perfdata).
                if len(data) < limit and room.poll(0) and _waiting(fd) <= len(data):
                    self.stopping.wait(PARTIAL_WAIT)
                    continue
                self.intake.dead_letter(self._redacted(data), f"line longer than {min(limit, len(data))} bytes"
                                        f" (what the FIFO can show at once: {peek.capacity} bytes)")
                peek.consume(len(data))
                skipping = True
                continue
            lines: List[bytes] = []
            for line in data[:end].split(b"\n")[:-1]:
                if len(line) > limit:
                    self.intake.dead_letter(self._redacted(line), f"line longer than {limit} bytes")
                else:
                    lines.append(line)
            if lines and not self.intake.spool_lines(self._records(lines)):
                return                              # stopping: the lines stay in the FIFO
            peek.consume(end)

    def _records(self, lines: List[bytes]) -> List[bytes]:
        """The result lines of the genuine records on ``lines``; the rest is dead-lettered.
        (A crash after this re-reads the lines: the dead letters' ids are their hashes.)"""
        results: List[bytes] = []
        for line in lines:
            if not line.strip():
                continue
            if self.token in line:
                self.framed_seen = True
            elif not self.framed_seen and line.startswith((b"MNB1S\t", b"MNB1H\t")):
                self._unframed(logging.WARNING, "unframed",
                               "the OCSP command writes result lines without the record frame (a command from"
                               " an older version): taken until the first framed record; install the command"
                               " 'msg-nagios-bridge nagios-config' prints")
                results.append(line)
                continue
            taken, rejected = ocsp_record.unwrap(line, self.token)
            results.extend(taken)
            for part, reason in rejected:
                self.health.add("ocsp_refused_records")
                self.intake.dead_letter(part, reason)
        return results

    def _redacted(self, data: bytes) -> bytes:
        return data.replace(self.token, b"<token>") if self.token else data


def _waiting(fd: int) -> int:
    """Bytes waiting in the pipe (FIONREAD)."""
    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return count[0]


class PipePeek:
    """Look at what waits in a pipe without taking it (tee(2) into a pipe of our own), then
    take exactly what was looked at once it is safe."""

    _tee = None

    def __init__(self, fd: int) -> None:
        self.fd = fd
        if PipePeek._tee is None:
            tee = ctypes.CDLL(None, use_errno=True).tee
            tee.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]
            tee.restype = ctypes.c_ssize_t
            PipePeek._tee = tee
        self.copy_r, self.copy_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self.capacity = min(_grow_pipe(fd), _grow_pipe(self.copy_w))
        except OSError:
            self.close()
            raise
        if self.capacity < 1 << 16:
            log.warning("OCSP FIFO: the kernel gave pipes of only %d bytes (pipe-user-pages-soft?):"
                        " longer lines are dead-lettered", self.capacity)

    def peek(self) -> bytes:
        """A copy of up to ``capacity`` bytes from the head of the pipe (b"" if it is empty)."""
        copied = PipePeek._tee(self.fd, self.copy_w, self.capacity, SPLICE_F_NONBLOCK)
        if copied < 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EINTR):
                return b""
            raise OSError(code, f"tee on the OCSP FIFO: {os.strerror(code)}")
        return _read_exactly(self.copy_r, copied)

    def consume(self, size: int) -> None:
        """Take ``size`` bytes (already looked at) out of the pipe."""
        _read_exactly(self.fd, size)

    def close(self) -> None:
        os.close(self.copy_r)
        os.close(self.copy_w)


def _grow_pipe(fd: int) -> int:
    """Ask for a PIPE_SIZE buffer; return the size the kernel gave."""
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass        # over the user's pipe quota: keep the default size
    return fcntl.fcntl(fd, F_GETPIPE_SZ)


def _read_exactly(fd: int, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.read(fd, size)         # Python retries EINTR itself
        if not chunk:
            raise OSError(errno.EIO, "pipe emptied under the OCSP reader")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
