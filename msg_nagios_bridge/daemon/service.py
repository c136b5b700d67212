"""The daemon's lifecycle: wire the parts, run, reload, stop.

Start sinks before sources; stop sources before sinks so the sinks can drain.
Signal handlers only set flags; the main loop acts on them.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from typing import Callable, List, Optional

from .. import config
from . import logsetup, metrics, sdnotify
from . import status as status_file
from .status import SpoolGauges, Status
from ..cores import Writer, core_for
from ..inbound import policy as policy_module
from ..inbound.compact import KnownObjects
from ..inbound.echo import EchoGuard
from .health import Health, RateLimitedLog
from ..outbound.routing import Router
from ..outbound.publisher import Publisher
from ..outbound.intake import Intake
from ..inbound.subscriber import Subscriber
from ..model import SpooledResults
from ..paths import inbound_spool_path, outbound_spool_path, shared_spool_directory, status_path
from ..spool import Spool, SpoolError

# Seconds a stop may take in all: the unit's TimeoutStopSec is 30 s before a SIGKILL.
STOP_BUDGET = 20.0
# Of which the publisher waits at most this long for outstanding receipts.
PUBLISHER_DRAIN = 10.0
# Results the subscriber stored that the writer can read back undecoded: two batches of the
# default prefetch (500), one being stored while the writer writes the other.
SPOOLED_RESULTS_KEPT = 1024

log = logging.getLogger(__name__)


class Bridge:
    """One wired set of parts built from one Settings. Reload builds a new one."""

    def __init__(self, settings: config.Settings, health: Optional[Health] = None):
        """``health`` is handed over by a reload: the counters go on. (What was injected is
        remembered in the inbound spool, so a reload or restart keeps it too.)"""
        self.settings = settings
        self.core = core_for(settings)
        self.health = health or Health()
        self.stopping = threading.Event()
        self._intakes: List[Intake] = []
        self.spool: Optional[Spool] = None
        self.inbound_spool: Optional[Spool] = None
        self.publisher: Optional[Publisher] = None
        self.writer: Optional[Writer] = None
        self.subscriber: Optional[Subscriber] = None
        self.echo: Optional[EchoGuard] = None
        self.results: Optional[SpooledResults] = None
        self.sources: List[threading.Thread] = []
        self._objects_version: Optional[object] = None

    def _open_spool(self, path: str) -> Spool:
        s = self.settings.spool
        return Spool(path, max_messages=s.max_messages, max_bytes=s.max_megabytes << 20,
                     max_dead_letter_bytes=s.max_dead_letter_megabytes << 20)

    def start(self) -> None:
        """Sinks first, then sources."""
        s = self.settings
        try:
            os.makedirs(s.spool.directory, mode=0o700, exist_ok=True)
        except OSError as exc:       # one line that names the key, not a traceback
            raise SpoolError(f"spool directory {s.spool.directory} (spool.directory) cannot be created:"
                             f" {exc.strerror}") from None
        _refuse_a_shared_directory(s.spool.directory)
        if s.inbound.enabled:
            self.inbound_spool = self._open_spool(inbound_spool_path(s))
            # Loaded once the core's object list is read (below), to keep its objects beside
            # that list; until then it looks them up in the spool.
            self.echo = EchoGuard(self.inbound_spool, max_objects=s.inbound.echo_guard_max_objects,
                                  health=self.health, may_be_echo=self.core.may_be_echo, load=False)
            # What the subscriber stores, the writer reads back without decoding it again.
            self.results = SpooledResults(keep=SPOOLED_RESULTS_KEPT)
            self.writer = self.core.writer(self.inbound_spool, self.health, self.echo, self.results)
            self.writer.start()
        if s.outbound_enabled:
            self.spool = self._open_spool(outbound_spool_path(s))
            self.publisher = Publisher(s.brokers, self.spool, self.health)
            self.publisher.start()
            self._start_outbound_sources()
        if s.inbound.enabled:
            # After the outbound sources: at grid scale reading the list takes seconds, while
            # the OCSP FIFO holds about 3,000 results.
            known = self._known_objects()
            self.echo.load(known or None)         # unreadable (empty): remember every object
            self.subscriber = Subscriber(s.brokers, s.inbound, self.inbound_spool, self.health, self._policy(known),
                                         self.results)
            self.subscriber.start()
        log.info("bridge started: outbound %s, inbound %s, brokers %s",
                 f"{len(self.sources)} source(s)" if self.sources else "off",
                 f"{len(s.inbound.subscriptions)} subscription(s)" if s.inbound.enabled else "off",
                 ", ".join(f"{h}:{p}" for h, p in s.brokers.hosts))

    def _known_objects(self) -> Optional[KnownObjects]:
        """The objects the local core defines (8 bytes an object: inbound/compact.py), None when
        not configured, and empty when they cannot be read."""
        inbound = self.settings.inbound
        known = None
        if self.core.objects_source:
            try:
                self._objects_version = self.core.objects_version()
                known = self.core.known_objects()
            except OSError as exc:
                # Fail safe: with no object list, refuse rather than accept everything.
                # The key only where the source is the configured objects.cache (Icinga 2's is its API).
                key = "inbound.policy.objects_cache: " if self.core.objects_source == inbound.objects_cache else ""
                log.error("cannot read %s (%s%s): refusing inbound results (unknown-object) until it can be"
                          " read", self.core.objects_source, key, exc.strerror)
                self.health.error(f"objects cache: {exc}")
                known = frozenset()
        return KnownObjects.of(known)

    def _policy(self, known: Optional[KnownObjects]) -> policy_module.Policy:
        """The inbound policy, with the objects the local core defines when configured."""
        inbound = self.settings.inbound
        return policy_module.Policy(rules=inbound.rules, sender_header=inbound.sender_header,
                                    known_objects=known)

    def refresh_known_objects(self) -> None:
        """The core's object list changes when it (re)loads its configuration: follow it."""
        source = self.core.objects_source
        if self.subscriber is None or not source:
            return
        try:
            version = self.core.objects_version()
        except OSError:
            return
        if version != self._objects_version:
            known = self._known_objects()
            if known and self.echo is not None:       # only objects the core has can echo
                self.echo.load(known)
            self.subscriber.policy = self._policy(known)
            log.info("reloaded the object list from %s", source)

    def _start_outbound_sources(self) -> None:
        router = Router(self.settings, is_echo=self.echo)

        def intake_for(source: str, parse) -> Intake:
            intake = Intake(source, router, self.spool, self.health, self.stopping, parse)
            self._intakes.append(intake)
            return intake

        self.sources = self.core.start_sources(intake_for, self.health)

    def stop(self, budget: Optional[float] = STOP_BUDGET,
             while_waiting: Callable[[], None] = lambda: None) -> None:
        """Stop every part at once and wait for them ``budget`` seconds in all (None: until
        they end), calling ``while_waiting`` about once a second (the watchdog ping).

        Nothing waits on another part: what a source read is in a spool, what the
        subscriber took is in the inbound spool or still unacknowledged on the broker, and
        what the publisher or writer had under way stays in its spool. So when the process
        exits, a part still busy at the deadline (a hung broker, a Nagios that stopped
        reading) costs duplicates at the next start, never results, and the stop stays
        within systemd's TimeoutStopSec instead of ending in a SIGKILL. A reload instead
        waits for every part (budget None): an old writer still writing beside the new one
        would write the same results twice, and in the wrong order.
        """
        started = time.monotonic()
        self.stopping.set()                          # the sources
        for intake in self._intakes:
            intake.wake()                            # one waiting for room in the spool
        parts = [part for part in (self.subscriber, self.publisher, self.writer) if part is not None]
        if self.publisher is not None:
            self.publisher.drain_timeout = PUBLISHER_DRAIN if budget is None else \
                min(PUBLISHER_DRAIN, max(0.0, budget - 2.0))
        for part in parts:
            part.stop()
        parts += self.sources
        late = parts
        next_report = started + STOP_BUDGET
        while late:
            waited = time.monotonic() - started
            if budget is not None and waited >= budget:
                log.warning("%s still busy after %.0f s; stopping anyway: what they held stays in"
                            " the spool (or on the broker) and is handled again at the next start",
                            ", ".join(part.name for part in late), budget)
                break
            if budget is None and time.monotonic() >= next_report:
                log.warning("waiting for %s to finish before the reload (%.0f s so far)",
                            ", ".join(part.name for part in late), waited)
                next_report += 10
            late[0].join(1.0 if budget is None else min(1.0, budget - waited))
            while_waiting()
            late = [part for part in late if part.is_alive()]
        self.write_status()
        for spool in (self.spool, self.inbound_spool):
            if spool is not None:
                spool.close()
        log.info("bridge stopped")

    def notice_outside_changes(self) -> None:
        """Pick up what operator tools changed in the spools (a requeued dead letter, a purge):
        the workers sleep until woken, and another process's commit wakes nobody. Called every
        status interval (daemon.status_interval): a requeued result waits at most that long;
        results never do."""
        for spool in (self.spool, self.inbound_spool):
            if spool is not None:
                try:
                    spool.notice_outside_changes()
                except SpoolError as exc:
                    log.warning("cannot look for changes in %s: %s", spool.path, exc)

    def dead_part(self) -> Optional[str]:
        """The name of a part whose thread ended while the bridge runs, if any."""
        parts = [self.publisher, self.writer, self.subscriber] + self.sources
        for part in parts:
            if part is not None and not part.is_alive() and not self.stopping.is_set():
                return part.name
        return None

    def status(self) -> Status:
        """A snapshot of the counters, states and spools (reads the spools: main loop only)."""
        snapshot = self.health.snapshot()
        gauges = {}
        for name, spool in (("spool", self.spool), ("inbound_spool", self.inbound_spool)):
            if spool is not None:
                stats = spool.stats()
                gauges[name] = SpoolGauges(depth=stats.depth, bytes=stats.bytes,
                                           oldest_age=stats.oldest_age, dead_letters=stats.dead_letters)
        tracker = self.subscriber.tracker if self.subscriber is not None else None
        numbering = None
        if self.spool is not None:
            numbering = {route: {"epoch": epoch, "last": last}
                         for route, (epoch, last) in self.spool.sequences().items()}
        now = time.time()
        return Status(time=now, pid=os.getpid(), states=snapshot["states"],
                      since=snapshot["since"], counters=snapshot["counters"], last=snapshot["last"],
                      errors=tuple(snapshot["errors"]),
                      sequences=tracker.snapshot(now) if tracker is not None else None,
                      numbering=numbering, **gauges)

    def write_status(self) -> Optional[Status]:
        """Take a snapshot and write it to status.json (read by ``status`` and ``check``);
        returns it, or None if it could not be taken (best effort: never stop the bridge for it)."""
        try:
            snapshot = self.status()
        except Exception as exc:  # noqa: BLE001
            log.debug("cannot take a status snapshot: %s", exc)
            return None
        status_file.write(status_path(self.settings), snapshot)
        return snapshot


def start_failure(bridge: Bridge) -> Optional[str]:
    """The first part that failed while starting, as ``"PART failed: WHY"``, or None. Such a
    part (an OCSP FIFO that cannot be made) ends the bridge at the main loop's next look."""
    for part, state in sorted(bridge.health.snapshot()["states"].items()):
        if state.startswith("failed"):
            return f"{part} {state}"
    return None


def _refuse_a_shared_directory(directory: str) -> None:
    """SpoolError if another user can put files in ``directory``: one who makes the spool
    file before the bridge does (or replaces it) decides what the writer injects into the core,
    past every inbound check, and what ``status`` and ``check`` report."""
    info = os.stat(directory)
    if shared_spool_directory(info, os.geteuid()):
        raise SpoolError(f"spool directory {directory} (mode {info.st_mode & 0o7777:o}, owner uid {info.st_uid})"
                         " can be written by other users: give it to the bridge's user, mode 0700")


class _Flags:
    """What signal handlers set; the main loop reads and clears."""

    def __init__(self) -> None:
        self.stop = threading.Event()        # wakes the loop, for any of the signals
        self.terminate = False               # its own flag: a TERM beside a HUP must not be lost
        self.reload = False
        self.dump = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGUSR1, self._on_usr1)

    def _on_term(self, *_):
        self.terminate = True
        self.stop.set()

    def _on_hup(self, *_):
        self.reload = True
        self.stop.set()   # wake the loop

    def _on_usr1(self, *_):
        self.dump = True
        self.stop.set()


def install_signal_flags() -> "_Flags":
    """Install the handlers as early as possible: a TERM during start-up then stops cleanly."""
    global _flags
    if _flags is None:
        _flags = _Flags()
        _flags.install()
    return _flags


_flags: Optional[_Flags] = None


def run(settings: config.Settings, config_path: str,
        started: Callable[[Bridge], None] = lambda bridge: None) -> int:
    """Run until SIGTERM/SIGINT. Returns the exit code (1 if a part died: let systemd restart us).
    ``started`` is called once the parts have started, where systemd is told READY=1 (run
    --daemon tells the command that waits for it, detach.py); what it raises stops the bridge
    and comes out of run()."""
    flags = install_signal_flags()
    bridge = Bridge(settings)
    bridge.start()
    exporter = Exporter(settings.metrics, bridge.write_status())
    sdnotify.notify(f"READY=1\nSTATUS=running, brokers {len(settings.brokers.hosts)}\nMAINPID={os.getpid()}")
    watchdog = sdnotify.watchdog_interval()
    code = 0
    try:
        started(bridge)          # may raise to end the bridge: the finally below stops it
        while True:
            interval = bridge.settings.daemon.status_interval
            flags.stop.wait(min(interval, watchdog or interval))
            flags.stop.clear()
            if flags.terminate:
                break
            if flags.dump:
                flags.dump = False
                log.info("counters: %s", json.dumps(bridge.health.snapshot()["counters"], sort_keys=True))
            if flags.reload:
                flags.reload = False
                sdnotify.notify("RELOADING=1")
                bridge = _reload(bridge, config_path)
                exporter.close()
                exporter = Exporter(bridge.settings.metrics, bridge.write_status())
                sdnotify.notify("READY=1")
                if flags.terminate:          # a TERM during the reload
                    break
            dead = bridge.dead_part()
            if dead:
                log.error("%s stopped unexpectedly; exiting so that the service manager restarts the bridge", dead)
                code = 1
                break
            if watchdog:
                sdnotify.notify("WATCHDOG=1")   # only a loop that still runs gets here
            bridge.refresh_known_objects()
            bridge.notice_outside_changes()
            exporter.update(bridge.write_status())
    finally:
        sdnotify.notify("STOPPING=1")
        exporter.close()
        bridge.stop()
    return code


class Exporter:
    """Writes the metrics textfile and serves /metrics, as configured, from the main loop's
    last status snapshot: the server's threads never touch the spools (a reload closes them)."""

    def __init__(self, settings: config.MetricsSettings, snapshot: Optional[Status]):
        self.settings = settings
        self.server = None
        self._text = metrics.render(snapshot) if snapshot is not None else ""
        self._warn = RateLimitedLog(log)      # the textfile is written every status interval
        if settings.listen:
            try:
                self.server = metrics.serve(settings.listen, lambda: self._text)
            except OSError as exc:
                log.error("cannot serve metrics on %s: %s", settings.listen, exc.strerror)

    def update(self, snapshot: Optional[Status]) -> None:
        """Render ``snapshot`` (None: keep the last one) for /metrics and the textfile."""
        if snapshot is None:
            return
        self._text = metrics.render(snapshot)     # one assignment: a request sees the old or the new
        if self.settings.textfile:
            try:
                metrics.write_textfile(self.settings.textfile, self._text)
            except OSError as exc:
                self._warn(logging.WARNING, "textfile", f"cannot write the metrics textfile {self.settings.textfile}"
                           f" (metrics.textfile): {exc.strerror}; under systemd its directory needs"
                           " ReadWritePaths= in a drop-in (docs/packaging.md)")

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _reload(bridge: Bridge, config_path: str) -> Bridge:
    """Validate the new config first; if it is bad keep the running bridge."""
    try:
        settings = config.load(config_path)
    except config.ConfigError as exc:
        log.error("reload refused, keeping the running configuration: %s", exc)
        bridge.health.error(f"reload refused: {exc}")
        return bridge
    try:
        logsetup.configure(settings.logging, config_path)     # also re-opens a log file moved by logrotate
    except config.ConfigError as exc:
        log.error("reload refused, keeping the running configuration: %s", exc)
        bridge.health.error(f"reload refused: {exc}")
        return bridge
    log.info("reloading configuration from %s", config_path)
    health = bridge.health
    bridge.stop(budget=None, while_waiting=lambda: sdnotify.notify("WATCHDOG=1"))
    fresh = Bridge(settings, health)
    try:
        fresh.start()
    except Exception as exc:     # noqa: BLE001
        # A config can be valid and still not start (a spool directory that cannot be made, a
        # spool in use): go back to the one that ran rather than exit and restart-loop on it.
        log.error("reload failed, going back to the running configuration: %s: %s", type(exc).__name__, exc)
        health.error(f"reload failed: {exc}")
        fresh.stop(budget=10.0)
        logsetup.configure(bridge.settings.logging)
        fresh = Bridge(bridge.settings, health)
        fresh.start()
        return fresh
    health.add("reloads")
    return fresh
