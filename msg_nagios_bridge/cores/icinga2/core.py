"""Icinga 2 as the bridge's core (cores.Core), through its REST API (api.py).

Local results out: the event stream and its catch-up (events.py). Remote results in:
writer.py, one process-check-result request per result. The object list: objects.py, from
/v1/objects. The wiring: the ApiUser (wiring.py). The echo signal: the check_source the
writer puts on every result it sends.
"""
from __future__ import annotations

import threading
from typing import List, Optional, Tuple

from ...config import Settings
from ...daemon.health import Health
from ...inbound.compact import KnownObjects
from ...inbound.echo import EchoGuard
from ...model import CheckResult, SpooledResults
from ...spool import Spool
from .. import IntakeFor
from . import check_result, wiring
from .api import ApiClient
from .objects import ObjectList, ObjectsUnavailable
from .writer import Icinga2Writer


class Icinga2Core:
    name = "icinga2"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        s = settings.icinga2
        self.objects_source = f"https://{s.host}:{s.port}/v1/objects"
        self._objects: Optional[ObjectList] = None

    @property
    def objects(self) -> ObjectList:
        """Made on first use: the CA and certificate files are read then (the tools that
        never reach Icinga, e.g. try-message's preview, do not need them)."""
        if self._objects is None:
            self._objects = ObjectList(ApiClient(self.settings.icinga2), self.settings.icinga2.objects_refresh)
        return self._objects

    def start_sources(self, intake_for: IntakeFor, health: Health) -> List[threading.Thread]:
        if not self.settings.icinga2.publish:
            return []
        from .events import start_sources     # written beside this (branch icinga-out)
        return start_sources(self.settings, intake_for, health)

    def writer(self, spool: Spool, health: Health, echo: EchoGuard,
               results: Optional[SpooledResults] = None) -> Icinga2Writer:
        return Icinga2Writer(self.settings, spool, health, echo, self.objects, results)

    def preview(self, result: CheckResult) -> Tuple[str, str]:
        return check_result.preview(result, self.settings.icinga2.check_source)

    def known_objects(self) -> Optional[KnownObjects]:
        """Icinga's hosts and services; None while the list was never read (Icinga unreachable,
        credentials or permissions refused). A bridge started before Icinga, or with a wrong
        password, must not refuse every result as an unknown object: the writer checks each
        one against the list before sending, and holds them all until it can read it."""
        try:
            return self.objects.get()
        except ObjectsUnavailable:
            return None

    def objects_version(self) -> Optional[int]:
        """Grows when the list read from Icinga changed (read again every objects_refresh s);
        None while it was never read, as known_objects()."""
        return self.objects.version()

    def wiring(self) -> str:
        return wiring.render(self.settings)

    def may_be_echo(self, result: CheckResult) -> bool:
        return may_be_echo(result, self.settings.icinga2.check_source)


def may_be_echo(result: CheckResult, check_source: str) -> bool:
    """The writer sends every result with the bridge's own check_source; Icinga keeps it on the
    result and on its event (events.py puts it in attributes["check_source"], and "ACTIVE" or
    "PASSIVE" in attributes["check_type"]). Icinga's own checks carry its node name."""
    attributes = result.attributes
    return (bool(check_source) and attributes.get("check_source") == check_source
            and attributes.get("check_type") != "ACTIVE")    # ours are passive: Icinga's checks are not
