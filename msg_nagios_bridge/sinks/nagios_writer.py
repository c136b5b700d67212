"""The inbound sink: inbound spool -> Nagios (command file or check results directory).

An entry leaves the spool only after Nagios has it: written into the command
FIFO, or as a reaped-when-ready file in the check results directory. While
Nagios is stopped, hung or restarting, entries stay in the spool and the
writer retries with capped backoff, so nothing is lost.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import List, Optional

from ..config import InboundSettings
from ..echo import CURSOR_NAME, EchoGuard
from ..formats import checkresult_file, nagios_command
from ..health import Backoff, Health, RateLimitedLog
from ..model import CheckResult, result_from_dict
from ..spool import Spool, SpoolEntry, SpoolError
from .checkresults_dir import write_results
from .command_file import NagiosUnavailable, write_lines

log = logging.getLogger(__name__)

BATCH = 500


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
        self._warn = RateLimitedLog(log)

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        self.health.set_state("nagios_writer", "waiting for results")
        while not self.stopping.is_set():
            try:
                entries = self.spool.take(BATCH)
                if not entries:
                    self.spool.wait(0.2)
                    continue
                self._write(entries)
            except SpoolError as exc:
                self._warn(logging.ERROR, "spool", f"inbound spool problem, retrying: {exc}")
                self.health.error(f"inbound spool: {exc}")
                self.stopping.wait(1.0)

    def _write(self, entries: List[SpoolEntry]) -> None:
        results, bad = [], []
        for entry in entries:
            try:
                result = result_from_dict(json.loads(entry.message.body))
                # Both writers must accept it: one refused result must not block the rest.
                nagios_command.command_line(result, 0)
                checkresult_file.render_one(result)
                results.append((entry, result))
            except (ValueError, TypeError) as exc:   # decode() already refuses these; defence in depth
                bad.append((entry, str(exc)))
        for entry, reason in bad:
            self.spool.reject(entry.entry_id, f"cannot be written to Nagios: {reason}")
            self.health.add("dead_letters")
        if not results:
            return
        try:
            if self.settings.nagios_lock_file:
                problem = nagios_pid_alive(self.settings.nagios_lock_file)
                if problem:
                    raise NagiosUnavailable(problem)
            self._deliver([result for _, result in results])
        except NagiosUnavailable as exc:
            self.spool.give_back([entry.entry_id for entry, _ in results])
            self.health.set_state("nagios_writer", f"waiting: {exc}")
            self.health.error(f"nagios: {exc}")
            self._warn(logging.WARNING, "nagios", f"cannot hand results to Nagios, will retry: {exc}")
            self.stopping.wait(self._backoff.next_delay())
            return
        self._backoff.reset()
        self.spool.done([entry.entry_id for entry, _ in results])
        self.health.add("injected", len(results))
        self.health.mark("inject")
        self.health.set_state("nagios_writer", "writing")
        if self.echo.injected(result for _, result in results):
            self.spool.put([], cursor=(CURSOR_NAME, self.echo.dump()))

    def _deliver(self, results: List[CheckResult]) -> None:
        now = int(time.time())
        if self.settings.writer == "checkresults_dir":
            write_results(self.settings.check_result_path, results, now)
            return
        lines, big = [], []
        for result in results:
            # Nagios takes the check time from the [timestamp]: keep the result's own.
            when = int(result.timestamp) or now
            line = nagios_command.command_line(result, when)
            if nagios_command.fits_pipe_buf(line):
                lines.append(line)
            elif self.settings.check_result_path:
                big.append(result)          # whole, through the directory
            else:
                lines.append(nagios_command.truncate_to_fit(result, when))
                self.health.add("truncated")
        if big:
            write_results(self.settings.check_result_path, big, now)
        if lines:
            write_lines(self.settings.command_file, lines)
