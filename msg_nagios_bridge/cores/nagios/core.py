"""Nagios as the bridge's core (cores.Core): the parts in this folder, put together.

Local results out: the OCSP pipe (ocsp_pipe.py) and the perfdata tailer (perfdata_file.py),
both reading result_line.py records. Remote results in: writer.py, through the command FIFO
(command_file.py) or the check results directory (checkresults_dir.py). The object list:
objects.cache (objects_cache.py). The wiring: wiring.py. The echo signal: a PASSIVE check.
"""
from __future__ import annotations

import os
import threading
from typing import Container, List, Optional, Tuple

from ...config import Settings
from ...daemon.health import Health
from ...inbound.echo import EchoGuard
from ...model import CheckResult, ObjectKey, SpooledResults
from ...spool import Spool
from .. import IntakeFor
from . import objects_cache, ocsp_record, result_line, wiring
from .ocsp_pipe import OcspPipeSource
from .perfdata_file import PerfdataTail
from .writer import NagiosWriter, what_to_write

SOURCE_READY_TIMEOUT = 10.0     # how long start_sources waits for the OCSP pipe to be open


class NagiosCore:
    name = "nagios"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.objects_source = settings.inbound.objects_cache

    def start_sources(self, intake_for: IntakeFor, health: Health) -> List[threading.Thread]:
        s = self.settings
        sources: List[threading.Thread] = []
        pipe: Optional[OcspPipeSource] = None
        if s.ocsp_pipe.enabled:
            pipe = OcspPipeSource(s.ocsp_pipe, intake_for("ocsp_pipe", result_line.parse), health,
                                  ocsp_record.token_path(s.ocsp_pipe.path))
            sources.append(pipe)
        if s.perfdata.enabled:
            paths = [s.perfdata.service_file]
            if wiring.wants_host_results(s):
                paths.append(s.perfdata.host_file)
            for path in paths:
                sources.append(PerfdataTail(path, intake_for("perfdata", result_line.parse), health,
                                            s.perfdata.poll_interval))
        for source in sources:
            source.start()
        if pipe is not None:
            pipe.ready.wait(SOURCE_READY_TIMEOUT)
        return sources

    def writer(self, spool: Spool, health: Health, echo: EchoGuard,
               results: Optional[SpooledResults] = None) -> NagiosWriter:
        return NagiosWriter(self.settings.inbound, spool, health, echo, results)

    def preview(self, result: CheckResult) -> Tuple[str, str]:
        return what_to_write(self.settings.inbound, result)

    def known_objects(self) -> Optional[Container[ObjectKey]]:
        return objects_cache.read_known(self.objects_source) if self.objects_source else None

    def objects_version(self) -> Optional[float]:
        """objects.cache's mtime: Nagios rewrites it when it (re)loads its configuration."""
        return os.stat(self.objects_source).st_mtime if self.objects_source else None

    def wiring(self) -> str:
        return wiring.render(self.settings)

    def may_be_echo(self, result: CheckResult) -> bool:
        return may_be_echo(result)


def may_be_echo(result: CheckResult) -> bool:
    """Nagios runs OCSP (and writes perfdata) for passive results too, and reports every
    result it was handed, the bridge's included, as a PASSIVE check (result_line's checktype)."""
    return result.attributes.get("check_type") == "PASSIVE"
