"""What a monitoring core must give the bridge, and the one the settings name.

The daemon and the operator tools reach the core only through ``Core``; each core lives in a
folder of its own (cores/nagios/). A second core (Icinga 2 through its REST API) is a new
folder that implements ``Core`` and a line in ``core_for``: the flows above do not learn
which core they talk to.
"""
from __future__ import annotations

import threading
import typing
from typing import Callable, FrozenSet, Hashable, List, Optional, Protocol, Tuple

from ..model import CheckResult, ObjectKey, SpooledResults

if typing.TYPE_CHECKING:   # types only: the flows import this module, not the other way round
    from ..config import Settings
    from ..daemon.health import Health
    from ..inbound.echo import EchoGuard
    from ..outbound.intake import Intake
    from ..spool import Spool

# (source name, parse) -> the Intake a source hands its input to. ``parse`` turns one record
# of the core's text into a CheckResult, or raises ValueError saying why it is not one.
IntakeFor = Callable[[str, Callable[[str], CheckResult]], "Intake"]


class Writer(Protocol):
    """A worker thread that hands remote results to the core."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> None:
        """Ask it to end soon (it may first wait briefly for confirmations); join() waits."""

    def join(self, timeout: Optional[float] = None) -> None: ...

    def is_alive(self) -> bool: ...


@typing.runtime_checkable
class Core(Protocol):
    """A monitoring core: where local results come from and remote results go."""

    name: str
    """Its name in logs and settings ("nagios")."""

    objects_source: str
    """Where the object list comes from (a path, a URL), for log lines; "" when none is
    configured (then known_objects() is None and every object passes)."""

    def start_sources(self, intake_for: IntakeFor, health: "Health") -> List[threading.Thread]:
        """Local results out: start the threads that read the results the core produces and
        hand them to intakes made by ``intake_for``; return them once they are reading. They
        end when their intake's ``stopping`` is set. No sources configured: []."""

    def writer(self, spool: "Spool", health: "Health", echo: "EchoGuard",
               results: "Optional[SpooledResults]" = None) -> Writer:
        """Remote results in: the worker (not started) that takes entries from ``spool``,
        hands them to the core and deletes each only once the core confirmed it has it; until
        then, and across restarts, an entry stays in the spool (duplicates rather than loss).
        It calls ``echo.about_to_inject`` before each write."""

    def preview(self, result: CheckResult) -> Tuple[str, str]:
        """(what kind of write, the text) the writer would hand the core for ``result``;
        raises InvalidResult for a result it would refuse. For the try-message tool."""

    def known_objects(self) -> Optional[FrozenSet[ObjectKey]]:
        """The (host, service or None) objects the core defines, or None when no object
        list is configured. Raises OSError (naming what) when it cannot be read."""

    def objects_version(self) -> Optional[Hashable]:
        """Cheap; changes whenever known_objects() would (None: no object list configured).
        Raises OSError when the list cannot be reached now."""

    def wiring(self) -> str:
        """The text ``nagios-config`` prints: what to add to the core's own configuration so
        that it feeds the sources and takes the writer's results."""

    def may_be_echo(self, result: CheckResult) -> bool:
        """The echo signal: True if ``result``, read from the core, may be one the core was
        handed (as the bridge's injected results are) rather than one it checked itself. The
        echo guard drops such results for objects the bridge injected into."""


def core_for(settings: "Settings") -> Core:
    """The core ``settings`` describe."""
    if settings.core == "icinga2":
        from .icinga2.core import Icinga2Core
        return Icinga2Core(settings)
    from .nagios.core import NagiosCore
    return NagiosCore(settings)
