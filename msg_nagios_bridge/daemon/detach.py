"""``run --daemon``: detach the classic way, and make the command the operator typed say whether
the bridge started.

python-daemon's DaemonContext forks, and its parent leaves at once with 0 (``detach_process``):
whatever failed after that (the log file, the spool, a part) went to a stderr that is
/dev/null, after the command had said all was well. So the operator's process forks a child
that enters the context, and waits on a pipe whose write end the daemon keeps
(``files_preserve``) until the bridge has started (where ``service.run`` says READY=1 under
systemd) or failed. The daemon then writes one line, ``<exit code> <text>``, ``0 started`` when
it runs, and the waiting process prints the text of a failure and exits with its code.
A pipe closed without a line means the daemon ended without a word (killed, say).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import select
import sys
import threading
import time
from typing import Optional, Tuple

from .. import config
from ..spool import SpoolError

# Seconds the command waits for the daemon's word. Starting takes well under a second; the
# parts' own waits (the OCSP source's, cores/nagios/core.py SOURCE_READY_TIMEOUT) fit in it.
START_TIMEOUT = 60.0
MAX_TEXT = 3000          # characters of the line: an error, not a flood

log = logging.getLogger(__name__)


def detach(settings: config.Settings, config_path: str, log_settings: config.LoggingSettings,
           options: dict) -> int:
    """Run the bridge detached with DaemonContext(**options); return the exit code for the
    operator's command. Never returns in the forked processes: they end with os._exit."""
    read_end, write_end = os.pipe()
    sys.stdout.flush()         # else the child writes what this process buffered, a second time
    sys.stderr.flush()
    child = os.fork()
    if child:
        os.close(write_end)
        # The child leaves as soon as DaemonContext forked the daemon (or failed before).
        os.waitpid(child, 0)
        return wait_for_start(read_end)
    os.close(read_end)
    code = 1
    try:
        code = _daemon(settings, config_path, log_settings, options, _Report(write_end))
    finally:
        # Never back into the caller's code (a second copy of the command, or of a test run).
        logging.shutdown()
        os._exit(code)


def wait_for_start(read_end: int, timeout: float = START_TIMEOUT) -> int:
    """Read the daemon's line from ``read_end`` (closed here), print a failure's text on
    stderr, return its exit code; 1 when it said nothing, in time or at all."""
    deadline = time.monotonic() + timeout
    data = b""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([pipe], [], [], left)[0]:
                print(f"error: cannot tell whether the bridge started: it said nothing within {timeout:.0f} s"
                      " (it may still be starting: see its log and `msg-nagios-bridge status`)", file=sys.stderr)
                return 1
            chunk = pipe.read(4096)
            if not chunk:
                break
            data += chunk
    code, _, text = data.decode("utf-8", "replace").strip().partition(" ")
    if not code.isdigit():
        print("error: the detached bridge ended while it started, without saying why (see its log)", file=sys.stderr)
        return 1
    if int(code):
        print(text, file=sys.stderr)
    return int(code)


class StartFailed(Exception):
    """A part of the bridge failed while it started; the text says which and why."""


class _Report:
    """The daemon's one line to the waiting command. "started" goes at once; a failure only at
    close(), once the daemon has let go of its pidfile, so that the next start is not refused
    with "another bridge holds". The pipe is then closed: nothing keeps the command waiting."""

    def __init__(self, fd: int):
        self.fd: Optional[int] = fd
        self.failure: Optional[Tuple[int, str]] = None

    @property
    def pending(self) -> bool:
        """The command still waits to hear how the start went."""
        return self.fd is not None and self.failure is None

    def started(self) -> None:
        self._send(0, "started")

    def failed(self, code: int, text: str) -> None:
        if self.pending:
            self.failure = (code, text)

    def close(self) -> None:
        if self.failure is not None:
            self._send(*self.failure)
        elif self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _send(self, code: int, text: str) -> None:
        line = " ".join(text.split())[:MAX_TEXT]          # one line, whatever the exception said
        try:
            os.write(self.fd, f"{code} {line}\n".encode("utf-8", "replace"))
        except OSError:
            pass              # the command was interrupted: nobody waits any more
        finally:
            os.close(self.fd)
            self.fd = None


def describe(exc: BaseException) -> Tuple[int, str]:
    """(exit code, one line) for an exception that stops the bridge, as ``main`` prints it in the
    foreground: a ConfigError is a configuration error (2), anything else could not be done (1)."""
    if isinstance(exc, config.ConfigError):
        return 2, f"configuration error: {exc}"
    if isinstance(exc, (SpoolError, StartFailed)):
        return 1, f"error: {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return 1, f"error: {exc.filename}: {exc.strerror}" if exc.filename else f"error: {exc.strerror}"
    return 1, f"error: {type(exc).__name__}: {exc}"


def _daemon(settings: config.Settings, config_path: str, log_settings: config.LoggingSettings,
            options: dict, report: _Report) -> int:
    import daemon
    try:
        # detach_process=True: python-daemon does not detach when it thinks init or inetd
        # started it (a socket on stdin); the child that waitpid() waits for would then be the daemon.
        with daemon.DaemonContext(files_preserve=[report.fd], detach_process=True, **options):
            return _serve(settings, config_path, log_settings, report)
    except Exception as exc:      # noqa: BLE001 -- the context itself: the drop to daemon.user, the pidfile
        # Before the start the command prints it (a log here could be the terminal: twice).
        return _failed(report, exc, log_it=not report.pending)
    finally:
        report.close()


def _serve(settings: config.Settings, config_path: str, log_settings: config.LoggingSettings,
           report: _Report) -> int:
    from . import logsetup
    from .service import run, start_failure
    try:
        logsetup.configure(log_settings, config_path)
    except config.ConfigError as exc:
        # A log file the daemon's user cannot open: say it where an admin looks next.
        logsetup.configure(dataclasses.replace(log_settings, target="syslog"))
        return _failed(report, exc)
    # stderr is /dev/null: a part that dies on an exception would take its traceback with it.
    threading.excepthook = lambda args: log.error(
        "%s ended on an unexpected error", args.thread.name if args.thread else "a thread",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    def started(bridge) -> None:
        # A part that failed while starting (an OCSP FIFO that cannot be made) would end the
        # daemon only at the main loop's next look (up to daemon.status_interval), after the
        # command had said "started": stop now, and say why.
        failure = start_failure(bridge)
        if failure:
            raise StartFailed(failure)
        report.started()

    try:
        return run(settings, config_path, started=started)
    except Exception as exc:      # noqa: BLE001 -- whatever it is, it is logged and the command told
        return _failed(report, exc)


def _failed(report: _Report, exc: Exception, log_it: bool = True) -> int:
    """Log why the daemon stops (with a traceback when the cause is not a known one), and tell
    the waiting command if it still waits."""
    code, line = describe(exc)
    known = isinstance(exc, (config.ConfigError, SpoolError, StartFailed))
    if log_it:
        log.error("the bridge %s: %s", "could not start" if report.pending else "stopped", line,
                  exc_info=None if known else exc)
    report.failed(code, line)
    return code
