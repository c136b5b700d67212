"""What the two ways of handing results to Nagios share (command_file.py, checkresults_dir.py).

Neither gets an acknowledgement from Nagios, so each keeps what it wrote until it can tell
that Nagios has it, and saves that in the spool (a cursor) so a restarted bridge neither
loses nor needlessly repeats it. The worker (writer.py) takes entries from the spool, hands
them to a delivery and deletes them once the delivery confirmed them.
"""
from __future__ import annotations

import logging
from typing import FrozenSet, List, NamedTuple, Optional, Protocol

from ...model import CheckResult
from ...spool import SpoolEntry

# One logger for the writer and its deliveries (the log lines name it).
log = logging.getLogger(f"{__package__}.writer")


class Prepared(NamedTuple):
    """A spool entry, its result, and the text the delivery writes for it (a command line,
    or a check result file's entry)."""
    entry: SpoolEntry
    result: CheckResult
    text: str


class Delivery(Protocol):
    """One way into Nagios, with its own confirmation.

    Called from the writer thread only. ``write`` raises NagiosUnavailable when Nagios cannot
    take the batch now (then nothing of it counts as written); SpoolError may come out of
    any method that saves state.
    """

    exit_wait: float
    """How long a clean stop waits for the confirmation of what was written (0: none, the
    next run picks it up from the saved state)."""

    def load(self) -> None:
        """Take over what the last run left waiting for confirmation (its spool cursor)."""

    def ready(self) -> bool:
        """False while the delivery cannot take another batch yet (the worker waits)."""

    def write(self, batch: List[Prepared]) -> None:
        """Hand ``batch`` to Nagios; its entries wait in ``pending`` for confirmation."""

    @property
    def pending(self) -> FrozenSet[int]:
        """Entry ids written and not yet confirmed."""

    def confirmed(self, now: Optional[float] = None) -> List[int]:
        """The pending entries Nagios surely has at ``now`` (a time.monotonic() value; None:
        now). The worker deletes them, then calls ``forget``. What Nagios lost is given back
        to the spool here, to be written again."""

    def forget(self, entry_ids: List[int]) -> None:
        """``entry_ids`` (from ``confirmed``) have left the spool: stop waiting for them."""

    def save(self) -> None:
        """Save what waits for confirmation now (the next run's ``load`` reads it)."""

    def next_look(self) -> Optional[float]:
        """Seconds until ``confirmed`` or ``ready`` may tell something new; None: nothing waits."""


def id_ranges(ids: List[int]) -> List[List[int]]:
    """Sorted ids as [[low, high], ...] runs (they are mostly consecutive)."""
    runs: List[List[int]] = []
    for i in ids:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return runs


def ids_in(ranges: List[List[int]]) -> List[int]:
    """The ids of ``id_ranges`` output."""
    return [i for low, high in ranges for i in range(low, high + 1)]
