"""The inbound sink: inbound spool -> Nagios (command file or check results directory).

An entry leaves the spool only after Nagios has it: each way in (a Delivery) says when that
is: command_file.py for the command FIFO, checkresults_dir.py for check result files. While
Nagios is stopped, hung or restarting, entries stay in the spool and the writer retries with
capped backoff, so nothing is lost.

The worker sleeps on one Wakeup that a put into the spool, stop() and its own deadlines (a
backoff, a confirmation due, a file to look at) end: no result waits on a poll interval.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from typing import Dict, List, Optional, Tuple

from ...config import InboundSettings
from ...daemon.health import Backoff, Health, RateLimitedLog
from ...inbound.echo import EchoGuard
from ...inbound.judgement import object_key
from ...model import CheckResult, SpooledResults
from ...spool import Spool, SpoolEntry, SpoolError
from ...wakeup import Wakeup
from . import checkresult_file, nagios_command
from .checkresults_dir import CheckResultsDirDelivery
from .command_file import CommandFileDelivery, NagiosUnavailable, nagios_pid_alive
from .delivery import Delivery, Prepared, log
from .shared_newest import SharedNewest
from ...daemon.threadname import name_os_thread

BATCH = 500                 # results per round through the command file
FILE_BATCH = 10_000         # results per check result file (Nagios reads one about every second)
# At most this many bytes of results (as spooled) a round: 10,000 results with outputs near
# max_output_bytes would make a file of 170 MB, held several times over while it is made
# (review 2026-12-06).
BATCH_BYTES = 8 << 20

# Nagios does not acknowledge, so a bridge killed just after a write cannot tell what of its
# last writes Nagios has (the deliveries save that every SAVE_EVERY s at best). Written again in
# order, an older result of an object would show after the newer one Nagios already had, and
# could notify on the old state. So before it writes an entry past the ids it saved as "may be
# written", the writer saves new ones (in the spool): every id up to WRITE_AHEAD past the
# batch's highest, one commit per WRITE_AHEAD entries at most. A writer restarted after a kill
# drops as ``stale`` each entry among them that is older than another of them for the same
# object, as the judgement drops a result older than one already injected: at a kill, an
# object with two results among the last writes and the next WRITE_AHEAD entries loses the
# older one. A clean stop saves that none may be written.
MAYBE_WRITTEN_CURSOR = "nagios-maybe-written"
WRITE_AHEAD = 1_000
MAYBE_WRITTEN_LOOK = 100_000    # entries up to the bound looked at after a restart (more: the oldest)


class NagiosWriter(threading.Thread):
    """Takes entries from the inbound spool, hands each to its delivery, deletes them once the
    delivery confirmed them. Counts ``written`` (handed over, a rewrite included), ``injected``
    (confirmed), ``truncated``, and refusals of what cannot be written at all."""

    def __init__(self, settings: InboundSettings, spool: Spool, health: Health, echo: EchoGuard,
                 results: Optional[SpooledResults] = None):
        super().__init__(name="nagios-writer", daemon=True)
        self.settings = settings
        self.spool = spool
        self.results = results or SpooledResults()     # the subscriber's (daemon/service.py)
        self.health = health
        self.echo = echo
        self.stopping = threading.Event()
        self.wakeup = Wakeup()
        spool.wake_on_put(self.wakeup)
        self._backoff = Backoff(0.5, 10.0)
        self._hold_until = 0.0              # monotonic: take nothing before (backoff, a file waits)
        self._warn = RateLimitedLog(log)
        # The directory also takes, in command_file mode, what is too big for one command line.
        self.files = CheckResultsDirDelivery(settings.check_result_path, spool, health, self._warn)
        self.fifo: Optional[CommandFileDelivery] = None
        if settings.writer == "command_file":
            self.fifo = CommandFileDelivery(settings, spool, health, self._warn)
        # In the order they are written to: the file before the lines (as it always was).
        self.deliveries: List[Delivery] = [self.files] + ([self.fifo] if self.fifo else [])
        # Central bridges sharing one Nagios (docs/scaling.md): no older result after a newer.
        self.shared = SharedNewest(settings.shared_newest_file, settings.max_age) \
            if settings.shared_newest_file else None
        self._maybe_written = 0             # every id up to this one may be written (MAYBE_WRITTEN_CURSOR)

    def stop(self) -> None:
        self.stopping.set()
        self.wakeup.set()

    def run(self) -> None:
        name_os_thread(self.name)
        self.health.set_state("nagios_writer", "waiting for results")
        try:
            self.load()
        except SpoolError as exc:
            log.warning("cannot read which results the last run wrote to Nagios (%s):"
                        " they will be written again", exc)
        batch = FILE_BATCH if self.settings.writer == "checkresults_dir" else BATCH
        while not self.stopping.is_set():
            wait = self._hold_until - time.monotonic()
            if wait > 0:
                self.wakeup.wait(wait)
                continue
            try:
                self.settle()
                if not all(delivery.ready() for delivery in self.deliveries):
                    self._hold(self._next_look() or 0.0)
                    continue
                entries = self.spool.take(batch, max_bytes=BATCH_BYTES)
                if not entries:
                    self.wakeup.wait(self._next_look())
                    continue
                self.deliver(entries)
            except SpoolError as exc:
                self._warn(logging.ERROR, "spool", f"inbound spool problem, retrying: {exc}")
                self.health.error(f"inbound spool: {exc}")
                self._hold(1.0)
        self._confirm_before_exit()

    def load(self) -> None:
        """What the last run left waiting for Nagios (saved in the spool)."""
        for delivery in self.deliveries:
            delivery.load()
        self._maybe_written = int(self.spool.cursor(MAYBE_WRITTEN_CURSOR) or 0)
        self._drop_superseded_rewrites()

    def _drop_superseded_rewrites(self) -> None:
        """Drop (``stale``) the entries the last run may have written that are older than
        another of them for the same object (see MAYBE_WRITTEN_CURSOR). What a delivery knows
        Nagios has stays: it is not written again."""
        if not self._maybe_written:
            return
        entries = self.spool.entries_up_to(self._maybe_written, MAYBE_WRITTEN_LOOK)
        known = frozenset().union(*(delivery.pending for delivery in self.deliveries))
        results: Dict[int, CheckResult] = {}
        newest: Dict[str, float] = {}
        for entry in entries:
            try:
                result = self.results.decode(entry.message.body)
            except (ValueError, TypeError):
                continue                    # deliver() dead-letters it
            results[entry.entry_id] = result
            key = object_key(result)
            newest[key] = max(newest.get(key, -math.inf), result.timestamp)
        older = [entry_id for entry_id, result in results.items()
                 if result.timestamp < newest[object_key(result)] and entry_id not in known
                 and not (self.fifo and self.fifo.written_before(entry_id))]
        if older:
            self.spool.done(older)
            self.health.add("stale", len(older))
            log.info("%d results the last run may have written to Nagios are older than another it may"
                     " have written for the same object: not written again", len(older))

    def settle(self, now: Optional[float] = None) -> None:
        """Delete what the deliveries confirmed by ``now`` (time.monotonic(); None: now)."""
        for delivery in self.deliveries:
            self._settle(delivery, now)

    def _settle(self, delivery: Delivery, now: Optional[float] = None) -> None:
        done = delivery.confirmed(now)
        if done:
            self.spool.done(done)
            self.health.add("injected", len(done))
            delivery.forget(done)

    def _hold(self, seconds: float) -> None:
        """Take nothing for ``seconds`` (a put wakes the worker, which sleeps on; stop() ends it)."""
        self._hold_until = time.monotonic() + seconds

    def _next_look(self) -> Optional[float]:
        """Seconds until a delivery may confirm something; None: nothing waits for Nagios."""
        looks = [look for look in (delivery.next_look() for delivery in self.deliveries) if look is not None]
        return min(looks, default=None)

    def _confirm_before_exit(self) -> None:
        """On a clean stop, wait out the confirmation time rather than write them twice."""
        waiting = [delivery for delivery in self.deliveries if delivery.exit_wait]
        deadline = time.monotonic() + max((delivery.exit_wait for delivery in waiting), default=0.0)
        try:
            while any(delivery.pending for delivery in waiting):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                looks = [look for look in (delivery.next_look() for delivery in waiting) if look is not None]
                time.sleep(min(min(looks, default=0.1), left))
                for delivery in waiting:
                    self._settle(delivery)
            for delivery in self.deliveries:
                delivery.save()             # exactly what waits: none "may be written"
            self._save_maybe_written(0)
        except SpoolError as exc:
            log.warning("could not confirm the last results written to Nagios (%s):"
                        " they will be written again at the next start", exc)

    def deliver(self, entries: List[SpoolEntry]) -> None:
        """Hand ``entries`` (taken from the spool) to their deliveries; refuse what neither can
        hold; give the rest back (and back off) if Nagios cannot take them now."""
        prepared: List[Tuple[Delivery, Prepared]] = []
        in_file = set()                      # objects with a result going to a check result file
        for entry in entries:
            try:
                result = self.results.decode(entry.message.body)
                # Formatted (and so checked) once; one refused result must not block the rest.
                kind, text = what_to_write(self.settings, result)
                if kind == TRUNCATED_LINE:
                    self.health.add("truncated")
                if kind == CHECK_RESULT_FILE:
                    in_file.add(object_key(result))
                delivery = self.files if kind == CHECK_RESULT_FILE else self.fifo
                prepared.append((delivery, Prepared(entry, result, text)))
            except (ValueError, TypeError) as exc:   # decode() already refuses these; defence in depth
                self.spool.reject(entry.entry_id, f"cannot be written to Nagios: {exc}")
                self.health.add("dead_letters")
                self.health.add("refused")
                self.health.add("refused.unwritable")
        if not prepared:
            return
        if in_file and self.fifo is not None:
            # A line reaches Nagios at once, a file at its next reaper pass: an object with a
            # result too big for a line has all its results of the batch in the file (sorted by
            # time there), or a newer line would be overtaken by the older file (review
            # 2026-12-06). The next batch waits for the file (CheckResultsDirDelivery.ready).
            prepared = [(self.files, Prepared(item.entry, item.result, checkresult_file.render_one(item.result)))
                        if delivery is self.fifo and object_key(item.result) in in_file else (delivery, item)
                        for delivery, item in prepared]
        if self.shared is None:
            self._write(prepared)
            return
        with self.shared.locked():
            prepared = self._newest_only(prepared)
            written = self._write(prepared) if prepared else []
            if written:
                self.shared.note([(object_key(item.result), item.result.timestamp) for item in written])

    def _newest_only(self, prepared: List[Tuple[Delivery, Prepared]]) -> List[Tuple[Delivery, Prepared]]:
        """``prepared`` without the results older than what a bridge sharing this Nagios
        already wrote for their object: those leave the spool, counted ``stale``. What the last
        run of this bridge wrote into the same Nagios stays (Nagios has it; it is not written
        again, only confirmed)."""
        newest = self.shared.newest([object_key(item.result) for _, item in prepared])
        keep, older = [], []
        for pair in prepared:
            result, entry_id = pair[1].result, pair[1].entry.entry_id
            superseded = result.timestamp < newest.get(object_key(result), -math.inf)
            if superseded and not (self.fifo and self.fifo.written_before(entry_id)):
                older.append(pair)
            else:
                keep.append(pair)
        if older:
            self.spool.done([item.entry.entry_id for _, item in older])
            self.health.add("stale", len(older))
            log.info("%d results older than what the bridges sharing this Nagios wrote for their"
                     " objects: not written", len(older))
        return keep

    def _bound_what_may_be_written(self, prepared: List[Tuple[Delivery, Prepared]]) -> None:
        """Save new "may be written" ids before writing one outside them (MAYBE_WRITTEN_CURSOR)."""
        top = max(item.entry.entry_id for _, item in prepared)
        if top > self._maybe_written:
            self._save_maybe_written(top + WRITE_AHEAD)

    def _save_maybe_written(self, last_id: int) -> None:
        self.spool.put([], cursor=(MAYBE_WRITTEN_CURSOR, str(last_id)))
        self._maybe_written = last_id

    def _write(self, prepared: List[Tuple[Delivery, Prepared]]) -> List[Prepared]:
        """Write ``prepared`` to their deliveries; what Nagios could not take is given back to
        the spool and the worker backs off. Returns what was written. Each delivery on its own:
        a check results directory that cannot take a file holds back only the results meant
        for it, not the command lines (review 2026-12-06: every line waited behind it)."""
        try:
            self._bound_what_may_be_written(prepared)
            # Before the write: Nagios may run OCSP on a result before the write returns.
            self.echo.about_to_inject(item.result for _, item in prepared)
        except SpoolError:
            self.spool.give_back([item.entry.entry_id for _, item in prepared])
            raise
        batches: Dict[int, List[Prepared]] = {}
        for delivery, item in prepared:
            batches.setdefault(id(delivery), []).append(item)
        problem = nagios_pid_alive(self.settings.nagios_lock_file) if self.settings.nagios_lock_file else None
        written: List[Prepared] = []
        for delivery in self.deliveries:
            batch = batches.get(id(delivery))
            if not batch:
                continue
            try:
                if problem:
                    raise NagiosUnavailable(problem)
                delivery.write(batch)
                written.extend(batch)
            except NagiosUnavailable as exc:
                pending = delivery.pending           # the part written before it failed
                written.extend(item for item in batch if item.entry.entry_id in pending)
                self.spool.give_back([item.entry.entry_id for item in batch if item.entry.entry_id not in pending])
                self.health.set_state("nagios_writer", f"waiting: {exc}")
                self.health.error(f"nagios: {exc}")
                self._warn(logging.WARNING, "nagios", f"cannot hand results to Nagios, will retry: {exc}")
        if len(written) < len(prepared):
            self._hold(self._backoff.next_delay())
        else:
            self._backoff.reset()
            self.health.set_state("nagios_writer", "writing")
        if written:
            self.health.add("written", len(written))
            self.health.mark("inject")
        return written


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
