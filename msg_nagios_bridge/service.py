"""The daemon's lifecycle: wire the parts, run, reload, stop.

Start sinks before sources; stop sources before sinks so the sinks can drain.
Signal handlers only set flags; the main loop acts on them.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import threading
import time
from typing import List, Optional

from . import config
from . import policy as policy_module
from .echo import CURSOR_NAME as ECHO_CURSOR, EchoGuard
from .health import Health
from .nagios_wiring import wants_host_results
from .routing import Router
from .sinks.nagios_writer import NagiosWriter
from .sinks.publisher import Publisher
from .sources.intake import Intake
from .sources.ocsp_pipe import OcspPipeSource
from .sources.perfdata_file import PerfdataTail
from .sources.subscriber import Subscriber
from .spool import Spool

log = logging.getLogger(__name__)

STATUS_INTERVAL = 2.0


def outbound_spool_path(settings: config.Settings) -> str:
    return os.path.join(settings.spool.directory, "outbound.sqlite")


def inbound_spool_path(settings: config.Settings) -> str:
    return os.path.join(settings.spool.directory, "inbound.sqlite")


def status_path(settings: config.Settings) -> str:
    return os.path.join(settings.spool.directory, "status.json")


class Bridge:
    """One wired set of parts built from one Settings. Reload builds a new one."""

    def __init__(self, settings: config.Settings, health: Optional[Health] = None):
        self.settings = settings
        self.health = health or Health()
        self.stopping = threading.Event()
        self.spool: Optional[Spool] = None
        self.inbound_spool: Optional[Spool] = None
        self.publisher: Optional[Publisher] = None
        self.writer: Optional[NagiosWriter] = None
        self.subscriber: Optional[Subscriber] = None
        self.echo: Optional[EchoGuard] = None
        self.sources: List[threading.Thread] = []
        self._objects_mtime: Optional[float] = None

    def _open_spool(self, path: str) -> Spool:
        s = self.settings.spool
        return Spool(path, max_messages=s.max_messages, max_bytes=s.max_megabytes << 20)

    def start(self) -> None:
        """Sinks first, then sources."""
        s = self.settings
        os.makedirs(s.spool.directory, mode=0o700, exist_ok=True)
        if s.inbound.enabled:
            self.inbound_spool = self._open_spool(inbound_spool_path(s))
            self.echo = EchoGuard(saved=self.inbound_spool.cursor(ECHO_CURSOR))
            self.writer = NagiosWriter(s.inbound, self.inbound_spool, self.health, self.echo)
            self.writer.start()
        if s.outbound_enabled:
            self.spool = self._open_spool(outbound_spool_path(s))
            self.publisher = Publisher(s.brokers, self.spool, self.health)
            self.publisher.start()
            self._start_outbound_sources()
        if s.inbound.enabled:
            self.subscriber = Subscriber(s.brokers, s.inbound, self.inbound_spool, self.health, self._policy())
            self.subscriber.start()
        log.info("bridge started: outbound %s, inbound %s, brokers %s",
                 f"{len(self.sources)} source(s)" if self.sources else "off",
                 f"{len(s.inbound.subscriptions)} subscription(s)" if s.inbound.enabled else "off",
                 ", ".join(f"{h}:{p}" for h, p in s.brokers.hosts))

    def _policy(self) -> policy_module.Policy:
        """The inbound policy, with the objects the local Nagios defines when configured."""
        inbound = self.settings.inbound
        known = None
        if inbound.objects_cache:
            try:
                self._objects_mtime = os.stat(inbound.objects_cache).st_mtime
                known = policy_module.known_objects_from_objects_cache(inbound.objects_cache)
            except OSError as exc:
                # Fail safe: with no object list, refuse rather than accept everything.
                log.error("cannot read %s (%s): refusing inbound results until it can be read",
                          inbound.objects_cache, exc.strerror)
                self.health.error(f"objects cache: {exc}")
                known = frozenset()
        return policy_module.Policy(rules=inbound.rules, sender_header=inbound.sender_header,
                                    known_objects=known)

    def refresh_known_objects(self) -> None:
        """Nagios rewrites objects.cache when it (re)loads its configuration: follow it."""
        path = self.settings.inbound.objects_cache
        if self.subscriber is None or not path:
            return
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            return
        if mtime != self._objects_mtime:
            self.subscriber.policy = self._policy()
            log.info("reloaded the object list from %s", path)

    def _start_outbound_sources(self) -> None:
        s = self.settings
        router = Router(s, is_echo=self.echo)
        if s.ocsp_pipe.enabled:
            intake = Intake("ocsp_pipe", router, self.spool, self.health, self.stopping)
            self.sources.append(OcspPipeSource(s.ocsp_pipe, intake, self.health))
        if s.perfdata.enabled:
            paths = [s.perfdata.service_file]
            if wants_host_results(s):
                paths.append(s.perfdata.host_file)
            for path in paths:
                intake = Intake("perfdata", router, self.spool, self.health, self.stopping)
                self.sources.append(PerfdataTail(path, intake, self.health, s.perfdata.poll_interval))
        for source in self.sources:
            source.start()
        for source in self.sources:
            if isinstance(source, OcspPipeSource):
                source.ready.wait(10)

    def stop(self, drain_timeout: float = 10.0) -> None:
        """Sources first, then sinks, so the sinks can drain."""
        self.stopping.set()
        if self.subscriber is not None:
            self.subscriber.stop()
            self.subscriber.join(drain_timeout)
        for source in self.sources:
            source.join(drain_timeout)
        if self.publisher is not None:
            self.publisher.drain_timeout = drain_timeout
            self.publisher.stop()
            self.publisher.join(drain_timeout + 5)
        if self.writer is not None:
            self.writer.stop()
            self.writer.join(drain_timeout)
        self.write_status()
        for spool in (self.spool, self.inbound_spool):
            if spool is not None:
                spool.close()
        log.info("bridge stopped")

    def status(self) -> dict:
        snapshot = self.health.snapshot()
        for name, spool in (("spool", self.spool), ("inbound_spool", self.inbound_spool)):
            if spool is not None:
                stats = spool.stats()
                snapshot[name] = {"depth": stats.depth, "bytes": stats.bytes,
                                  "oldest_age": stats.oldest_age, "dead_letters": stats.dead_letters}
        snapshot["time"] = time.time()
        snapshot["pid"] = os.getpid()
        return snapshot

    def write_status(self) -> None:
        """Atomically replace status.json (read by ``status`` and ``check``)."""
        path = status_path(self.settings)
        try:
            data = json.dumps(self.status(), sort_keys=True, default=str)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".status.")
            with os.fdopen(fd, "w") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except Exception as exc:  # status is best effort; never stop the bridge for it
            log.debug("cannot write %s: %s", path, exc)


class _Flags:
    """What signal handlers set; the main loop reads and clears."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.reload = False
        self.dump = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGUSR1, self._on_usr1)

    def _on_hup(self, *_):
        self.reload = True
        self.stop.set()   # wake the loop

    def _on_usr1(self, *_):
        self.dump = True
        self.stop.set()


def run(config_path: str) -> int:
    """Run in the foreground until SIGTERM/SIGINT. Returns the exit code."""
    settings = config.load(config_path)
    logging.getLogger().setLevel(settings.log_level)
    flags = _Flags()
    flags.install()
    bridge = Bridge(settings)
    bridge.start()
    bridge.write_status()
    try:
        while True:
            woke = flags.stop.wait(STATUS_INTERVAL)
            if woke and not (flags.reload or flags.dump):
                break
            flags.stop.clear()
            if flags.dump:
                flags.dump = False
                log.info("counters: %s", json.dumps(bridge.status().get("counters", {}), sort_keys=True))
            if flags.reload:
                flags.reload = False
                bridge = _reload(bridge, config_path)
            bridge.refresh_known_objects()
            bridge.write_status()
    finally:
        bridge.stop()
    return 0


def _reload(bridge: Bridge, config_path: str) -> Bridge:
    """Validate the new config first; if it is bad keep the running bridge."""
    try:
        settings = config.load(config_path)
    except config.ConfigError as exc:
        log.error("reload refused, keeping the running configuration: %s", exc)
        return bridge
    log.info("reloading configuration from %s", config_path)
    health = bridge.health
    bridge.stop()
    logging.getLogger().setLevel(settings.log_level)
    fresh = Bridge(settings, health)
    fresh.start()
    return fresh
