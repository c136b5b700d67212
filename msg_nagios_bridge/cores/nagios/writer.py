"""The inbound sink: inbound spool -> Nagios (command file or check results directory).

An entry leaves the spool only after Nagios has it: in a check result file that Nagios has
reaped (deleted after reading), or written into the command FIFO *and* Nagios still reading that FIFO
CONFIRM_AFTER seconds later. The FIFO gives no acknowledgement, and a Nagios that stops (or
dies) drops what it had read but not yet handled (measured: results written just before a
SIGTERM never reached it); so results written shortly before Nagios went away are written
again. While Nagios is stopped, hung or restarting, entries stay in the spool and the writer
retries with capped backoff, so nothing is lost.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from typing import Deque, List, Optional, Tuple

from ...config import InboundSettings
from ...inbound.echo import EchoGuard
from . import checkresult_file, nagios_command
from ...daemon.health import Backoff, Health, RateLimitedLog
from ...model import CheckResult, result_from_dict
from ...spool import Spool, SpoolEntry, SpoolError
from .checkresults_dir import write_results
from .command_file import NagiosUnavailable, fifo_readers, reader_identity, still_holds, write_lines

log = logging.getLogger(__name__)

BATCH = 500                 # results per round through the command file
FILE_BATCH = 10_000         # results per check result file (Nagios reads one about every second)
NOT_REAPED_AFTER = 30.0     # a check result file Nagios has not read by then: Nagios is away
# Nagios deletes unread check result files older than max_check_result_file_age (by mtime, 1 h
# by default): the file waiting for it is touched this often, so it never looks old.
TOUCH_EVERY = 10.0
# Saved in the spool: the check result file waiting for Nagios, its entries and when it was last
# touched. A restarted bridge waits for that file; if it is gone, it was read, unless the bridge
# was down long enough for Nagios to have deleted it unread (then its results are written again).
FILED_CURSOR = "nagios-filed"
# A result written into the command FIFO leaves the spool once the same Nagios has read the
# FIFO for this long after: longer than a killed core's command worker keeps swallowing (~2 s).
CONFIRM_AFTER = 3.0
# Saved in the spool with each write: which entries are in which Nagios's FIFO, unconfirmed.
# A bridge restarted while that same Nagios still reads the same FIFO confirms them instead
# of writing them twice.
WRITTEN_CURSOR = "nagios-written"


def _ranges(ids: List[int]) -> List[List[int]]:
    """Sorted ids as [[low, high], ...] runs (they are mostly consecutive)."""
    runs: List[List[int]] = []
    for i in ids:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return runs


def _frozen(value):
    """JSON lists back into the tuples they were saved from."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


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

    def identity(self) -> Optional[tuple]:
        fifo = reader_identity(self.path)
        if fifo is None:
            return None
        cached = self.cached
        if cached is not None and cached[:2] == fifo and all(still_holds(fifo, *r) for r in self._held):
            if self._held or time.monotonic() - self.scanned_at < self.RESCAN:
                return cached
        self._held = fifo_readers(fifo)
        self.cached = (fifo[0], fifo[1], tuple((pid, start) for pid, start, _ in self._held))
        self.scanned_at = time.monotonic()
        return self.cached


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


class NagiosWriter(threading.Thread):
    def __init__(self, settings: InboundSettings, spool: Spool, health: Health, echo: EchoGuard):
        super().__init__(name="nagios-writer", daemon=True)
        self.settings = settings
        self.spool = spool
        self.health = health
        self.echo = echo
        self.stopping = threading.Event()
        self._backoff = Backoff(0.5, 10.0)
        # The check result file waiting for Nagios, and the entries in it (still in the spool).
        self._pending_file: Optional[str] = None
        self._pending_ids: List[int] = []
        self._pending_since = self._touched = 0.0
        # Written into the command FIFO, not yet confirmed: (monotonic time, entry ids, reader).
        self._unconfirmed: Deque[Tuple[float, List[int], Optional[tuple]]] = deque()
        self._readers = ReaderWatch(settings.command_file)
        # Entries an earlier run of the bridge wrote to the same Nagios that reads the FIFO now.
        self._written_before: set = set()
        self._written_to: Optional[tuple] = None
        self._warn = RateLimitedLog(log)

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        self.health.set_state("nagios_writer", "waiting for results")
        try:
            self._load_written()
            self._load_filed()
        except SpoolError as exc:
            log.warning("cannot read which results the last run wrote to Nagios (%s):"
                        " they will be written again", exc)
        while not self.stopping.is_set():
            try:
                self._confirm()
                if self._file_waits():
                    continue
                entries = self.spool.take(FILE_BATCH if self.settings.writer == "checkresults_dir" else BATCH)
                if not entries:
                    self.spool.wait(0.2)
                    continue
                self._write(entries)
            except SpoolError as exc:
                self._warn(logging.ERROR, "spool", f"inbound spool problem, retrying: {exc}")
                self.health.error(f"inbound spool: {exc}")
                self.stopping.wait(1.0)
        self._confirm_before_exit()

    def _reader(self) -> Optional[tuple]:
        """Who reads the command FIFO now (see ReaderWatch); None if nobody, or if the PID in
        Nagios's lock file (when set) is not running."""
        if self.settings.nagios_lock_file and nagios_pid_alive(self.settings.nagios_lock_file):
            return None
        return self._readers.identity()

    def _confirm(self, now: Optional[float] = None) -> None:
        """Delete the written entries the same reader has had for CONFIRM_AFTER seconds; give
        them all back (to be written again) if the FIFO lost its reader or the reader changed."""
        if not self._unconfirmed:
            return
        now = time.monotonic() if now is None else now
        reader = self._reader()
        if reader is None or any(batch_reader != reader for _, _, batch_reader in self._unconfirmed):
            ids = [i for _, batch, _ in self._unconfirmed for i in batch]
            self.spool.give_back(ids)             # first: on a spool error nothing is forgotten
            self._unconfirmed.clear()
            self._save_written()
            self.health.add("rewritten", len(ids))
            self._warn(logging.WARNING, "rewrite", f"Nagios stopped reading {self.settings.command_file}"
                       f" soon after {len(ids)} results were written: they will be written again")
            return
        settled = 0
        while settled < len(self._unconfirmed) and now - self._unconfirmed[settled][0] >= CONFIRM_AFTER:
            settled += 1
        if settled:
            self._done([i for _, batch, _ in list(self._unconfirmed)[:settled] for i in batch])
            for _ in range(settled):
                self._unconfirmed.popleft()

    def _done(self, entry_ids: List[int]) -> None:
        """Nagios has these results for sure (its reader held them CONFIRM_AFTER seconds, or
        it reaped their file): they leave the spool and count as ``injected`` (``written``
        counts writes, a rewrite after Nagios restarted included)."""
        self.spool.done(entry_ids)
        self.health.add("injected", len(entry_ids))

    def _save_written(self) -> None:
        """Save which entries wait for confirmation in which Nagios (only a reader whose
        processes were seen can be recognised by the next run)."""
        batches = [[reader, _ranges(sorted(ids))] for _, ids, reader in self._unconfirmed
                   if reader is not None and reader[2]]
        self.spool.put([], cursor=(WRITTEN_CURSOR, json.dumps({"batches": batches})))

    def _load_written(self) -> None:
        if self.settings.writer != "command_file":
            return
        saved = json.loads(self.spool.cursor(WRITTEN_CURSOR) or "{}")
        reader = self._reader()
        if reader is None or not reader[2]:
            return
        for batch_reader, ranges in saved.get("batches", []):
            if _frozen(batch_reader) == reader:
                self._written_before.update(i for low, high in ranges for i in range(low, high + 1))
        if self._written_before:
            self._written_to = reader
            log.info("%d results written by the last run are in the command FIFO of the Nagios"
                     " that still reads it: not writing them again", len(self._written_before))

    def _confirm_before_exit(self) -> None:
        """On a clean stop, wait out the confirmation time rather than write them twice."""
        deadline = time.monotonic() + CONFIRM_AFTER + 0.5
        try:
            while self._unconfirmed and time.monotonic() < deadline:
                time.sleep(0.1)
                self._confirm()
        except SpoolError as exc:
            log.warning("could not confirm the last results written to Nagios (%s):"
                        " they will be written again at the next start", exc)

    def _write(self, entries: List[SpoolEntry]) -> None:
        now = int(time.time())
        prepared: List[Tuple[SpoolEntry, CheckResult, Optional[str]]] = []
        for entry in entries:
            try:
                result = result_from_dict(json.loads(entry.message.body))
                # Formatted (and so checked) once; one refused result must not block the rest.
                prepared.append((entry, result, self._line(result, now)))
            except (ValueError, TypeError) as exc:   # decode() already refuses these; defence in depth
                self.spool.reject(entry.entry_id, f"cannot be written to Nagios: {exc}")
                self.health.add("dead_letters")
                self.health.add("refused")
                self.health.add("refused.unwritable")
        if not prepared:
            return
        try:
            # Before the write: Nagios may run OCSP on a result before write_lines returns.
            self.echo.about_to_inject(result for _, result, _ in prepared)
        except SpoolError:
            self.spool.give_back([entry.entry_id for entry, _, _ in prepared])
            raise
        try:
            if self.settings.nagios_lock_file:
                problem = nagios_pid_alive(self.settings.nagios_lock_file)
                if problem:
                    raise NagiosUnavailable(problem)
            filed = [entry.entry_id for entry, _, line in prepared if line is None]
            if filed:
                self._write_file([result for _, result, line in prepared if line is None], filed)
            # Who reads the FIFO matters only for command lines (not for check result files).
            has_lines = any(line is not None for _, _, line in prepared)
            reader = self._reader() if has_lines else None
            if has_lines and self._written_before and reader != self._written_to:
                self._written_before.clear()            # that Nagios went away: write them all
            already = [entry.entry_id for entry, _, line in prepared
                       if line is not None and entry.entry_id in self._written_before]
            self._written_before.difference_update(already)
            lines = [line for entry, _, line in prepared
                     if line is not None and entry.entry_id not in already]
            if lines:
                write_lines(self.settings.command_file, lines)
        except NagiosUnavailable as exc:
            self.spool.give_back([entry.entry_id for entry, _, _ in prepared
                                  if entry.entry_id not in self._pending_ids])
            self.health.set_state("nagios_writer", f"waiting: {exc}")
            self.health.error(f"nagios: {exc}")
            self._warn(logging.WARNING, "nagios", f"cannot hand results to Nagios, will retry: {exc}")
            self.stopping.wait(self._backoff.next_delay())
            return
        self._backoff.reset()
        written = [entry.entry_id for entry, _, line in prepared if line is not None]
        if written:
            # The reader seen just before the write: if it changed in between, the next
            # _confirm sees a different one and writes the batch again.
            self._unconfirmed.append((time.monotonic(), written, reader))
        if written:
            self._save_written()
        self.health.add("written", len(prepared))
        self.health.mark("inject")
        self.health.set_state("nagios_writer", "writing")

    def _line(self, result: CheckResult, now: int) -> Optional[str]:
        """The command line for ``result``, or None if it goes through the check results directory."""
        kind, text = what_to_write(self.settings, result)
        if kind == TRUNCATED_LINE:
            self.health.add("truncated")
        return text if kind != CHECK_RESULT_FILE else None

    def _write_file(self, results: List[CheckResult], entry_ids: List[int]) -> None:
        """One check result file at a time (see _file_waits), results oldest first.

        Nagios reads the files waiting in its directory in no particular order
        and keeps whichever result it reads last, so a second file written
        before the first was read could leave a service showing an older
        result (measured: up to half of them). Waiting for Nagios to take each
        file keeps the newest result last.
        """
        results = sorted(results, key=lambda result: result.timestamp)
        self._pending_file = write_results(self.settings.check_result_path, results)
        self._pending_ids = list(entry_ids)
        self._pending_since = self._touched = time.time()
        self._save_filed()

    def _file_waits(self) -> bool:
        """True while the last check result file waits for Nagios (the caller must not write
        another). Once Nagios has reaped it, its entries leave the spool."""
        if self._pending_file is None:
            return False
        now = time.time()
        if not os.path.exists(self._pending_file):
            self._done(self._pending_ids)
            self._pending_file, self._pending_ids = None, []
            self._save_filed()
            return False
        if now - self._touched >= TOUCH_EVERY:
            try:
                os.utime(self._pending_file)
                self._touched = now
                self._save_filed()
            except FileNotFoundError:
                return True                            # reaped just now: seen next time
        age = now - self._pending_since
        if age < NOT_REAPED_AFTER:
            self.stopping.wait(0.05)                   # Nagios reads it within about a second
            return True
        problem = (f"Nagios has not read {self._pending_file} for {age:.0f} s"
                   f" (is it running? check_result_path right?)")
        self.health.set_state("nagios_writer", f"waiting: {problem}")
        self.health.error(f"nagios: {problem}")
        self._warn(logging.WARNING, "nagios", f"cannot hand results to Nagios, will retry: {problem}")
        self.stopping.wait(1.0)
        return True

    def _save_filed(self) -> None:
        state = {} if self._pending_file is None else {
            "path": self._pending_file, "ids": _ranges(sorted(self._pending_ids)), "touched": self._touched}
        self.spool.put([], cursor=(FILED_CURSOR, json.dumps(state)))

    def _load_filed(self) -> None:
        saved = json.loads(self.spool.cursor(FILED_CURSOR) or "{}")
        if not saved:
            return
        ids = [i for low, high in saved["ids"] for i in range(low, high + 1)]
        if os.path.exists(saved["path"]):
            log.info("%d results are in %s, which Nagios has not read yet: waiting for it",
                     len(ids), saved["path"])
            self._pending_file, self._pending_ids = saved["path"], ids
            self._pending_since, self._touched = time.time(), saved["touched"]
            return
        if time.time() - saved["touched"] < 3 * TOUCH_EVERY:
            self._done(ids)                            # read by Nagios while the bridge restarted
        else:
            log.warning("%s, with %d results, is gone after the bridge was down for %.0f s: Nagios"
                        " may have deleted it unread as too old, so they will be written again",
                        saved["path"], len(ids), time.time() - saved["touched"])
        self._save_filed()


COMMAND_LINE, TRUNCATED_LINE, CHECK_RESULT_FILE = "command line", "command line, truncated", "check result file"


def what_to_write(settings: InboundSettings, result: CheckResult) -> Tuple[str, str]:
    """(COMMAND_LINE | TRUNCATED_LINE | CHECK_RESULT_FILE, the text) the writer would write
    for ``result``; raises InvalidResult for what neither form can hold."""
    if settings.writer == "checkresults_dir":
        return CHECK_RESULT_FILE, checkresult_file.render_one(result)
    # Nagios takes the check time from the [timestamp]: keep the result's own.
    when = int(result.timestamp) or int(time.time())
    line = nagios_command.command_line(result, when)
    if nagios_command.fits_pipe_buf(line):
        return COMMAND_LINE, line
    if settings.check_result_path:
        return CHECK_RESULT_FILE, checkresult_file.render_one(result)      # whole, through the directory
    return TRUNCATED_LINE, nagios_command.truncate_to_fit(result, when)
