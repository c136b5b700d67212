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
from .health import Health
from .routing import Router
from .sinks.publisher import Publisher
from .sources.intake import Intake
from .sources.ocsp_pipe import OcspPipeSource
from .sources.perfdata_file import PerfdataTail
from .spool import Spool
from .nagios_wiring import wants_host_results

log = logging.getLogger(__name__)

STATUS_INTERVAL = 2.0


def outbound_spool_path(settings: config.Settings) -> str:
    return os.path.join(settings.spool.directory, "outbound.sqlite")


def status_path(settings: config.Settings) -> str:
    return os.path.join(settings.spool.directory, "status.json")


class Bridge:
    """One wired set of parts built from one Settings. Reload builds a new one."""

    def __init__(self, settings: config.Settings, health: Optional[Health] = None):
        self.settings = settings
        self.health = health or Health()
        self.stopping = threading.Event()
        self.spool: Optional[Spool] = None
        self.publisher: Optional[Publisher] = None
        self.sources: List[threading.Thread] = []

    def start(self) -> None:
        s = self.settings
        os.makedirs(s.spool.directory, mode=0o700, exist_ok=True)
        self.spool = Spool(outbound_spool_path(s), max_messages=s.spool.max_messages,
                           max_bytes=s.spool.max_megabytes << 20)
        self.publisher = Publisher(s.brokers, self.spool, self.health)
        self.publisher.start()
        router = Router(s)
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
        log.info("bridge started: %d source(s), brokers %s", len(self.sources),
                 ", ".join(f"{h}:{p}" for h, p in s.brokers.hosts))

    def stop(self, drain_timeout: float = 10.0) -> None:
        self.stopping.set()
        for source in self.sources:
            source.join(drain_timeout)
        if self.publisher is not None:
            self.publisher.drain_timeout = drain_timeout
            self.publisher.stop()
            self.publisher.join(drain_timeout + 5)
        self.write_status()
        if self.spool is not None:
            self.spool.close()
        log.info("bridge stopped")

    def status(self) -> dict:
        snapshot = self.health.snapshot()
        if self.spool is not None:
            stats = self.spool.stats()
            snapshot["spool"] = {"depth": stats.depth, "bytes": stats.bytes,
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
