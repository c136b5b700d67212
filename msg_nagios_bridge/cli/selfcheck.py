"""``msg-nagios-bridge check``: a Nagios plugin for the bridge itself.

Pure: a status snapshot (daemon/status.py: what the daemon writes to status.json), thresholds
and the time -> a Nagios exit code and one line of output with perfdata.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

from ..daemon.health import is_up
from ..display import printable
from ..daemon.status import Status

OK, WARNING, CRITICAL, UNKNOWN = range(4)
NAMES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")


@dataclasses.dataclass(frozen=True)
class Thresholds:
    backlog: Tuple[int, int] = (10_000, 100_000)          # messages waiting in the spools
    oldest: Tuple[float, float] = (300.0, 1800.0)         # age of the oldest waiting message, s
    disconnected: Tuple[float, float] = (120.0, 600.0)    # broker or Nagios away for, s
    dead_letters: Tuple[int, int] = (1, 100)
    stale: float = 30.0                                   # status.json older than this: not running
    # A producer's stream with a gap open this long, s (inbound.gap_warning_seconds,
    # gap_critical_seconds; 0: never).
    gap: Tuple[float, float] = (300.0, 0.0)


def _grade(value: float, limits) -> int:
    warning, critical = limits
    return CRITICAL if value >= critical else WARNING if value >= warning else OK


def evaluate(status: Optional[Status], limits: Thresholds, now: float,
             unreadable: str = "") -> Tuple[int, str]:
    """(exit code, one line of output with perfdata); ``unreadable`` says why there is no
    ``status`` when status.json exists but cannot be read."""
    if unreadable:
        return CRITICAL, printable(f"MSG-BRIDGE CRITICAL - cannot read the bridge's status: {unreadable}").replace("|", "/")
    if not status:
        return CRITICAL, "MSG-BRIDGE CRITICAL - no status: the bridge is not running (or cannot write its status)"
    age = now - status.time
    if age > limits.stale:
        return CRITICAL, f"MSG-BRIDGE CRITICAL - status is {age:.0f} s old: the bridge is not running or hung"
    if age < -limits.stale:
        # A running bridge rewrites its status within an interval, whatever the clock did.
        return CRITICAL, (f"MSG-BRIDGE CRITICAL - status is dated {-age:.0f} s ahead: the clock was set back"
                          " since, and the bridge has not written again (not running or hung)")
    spools = status.spools().values()
    backlog = sum(spool.depth for spool in spools)
    oldest = max([spool.oldest_age or 0 for spool in spools] + [0])
    dead = sum(spool.dead_letters for spool in spools)
    problems: List[Tuple[int, str]] = []
    away = 0.0
    states, since = status.states, status.since
    for part in ("publisher", "subscriber"):
        state = states.get(part)
        if state is not None and not is_up(state):
            seconds = now - since.get(part, now)
            away = max(away, seconds)
            problems.append((_grade(seconds, limits.disconnected), f"{part} {state} for {seconds:.0f} s"))
    for part, core in (("nagios_writer", "Nagios"), ("icinga2_writer", "Icinga 2")):
        writer = states.get(part, "")
        if writer.startswith("waiting:"):
            seconds = now - since.get(part, now)
            away = max(away, seconds)
            problems.append((_grade(seconds, limits.disconnected), f"{core} unavailable for {seconds:.0f} s ({writer[9:]})"))
    # Icinga 2's event stream says when it cannot reach Icinga (a Nagios FIFO cannot). A full
    # spool also holds it up ("waiting: spool full"): that is graded as the backlog.
    stream = states.get("icinga2_events", "")
    if stream.startswith("waiting:") and not stream.startswith("waiting: spool "):
        seconds = now - since.get("icinga2_events", now)
        away = max(away, seconds)
        problems.append((_grade(seconds, limits.disconnected),
                         f"Icinga 2 event stream down for {seconds:.0f} s ({stream[9:]})"))
    for part, state in states.items():
        if state.startswith("failed"):
            problems.append((CRITICAL, f"{part} {state}"))
    problems.append((_grade(backlog, limits.backlog), f"backlog {backlog}"))
    problems.append((_grade(oldest, limits.oldest), f"oldest waiting {oldest:.0f} s"))
    problems.append((_grade(dead, limits.dead_letters), f"{dead} dead letters"))
    problems += _gaps(status, limits.gap)
    code = max(grade for grade, _ in problems)
    counters = status.counters
    shown = [text for grade, text in problems if grade > OK] or [
        f"published {counters.get('published', 0)}, injected {counters.get('injected', 0)}, backlog {backlog}"]
    perfdata = (f"backlog={backlog};{limits.backlog[0]};{limits.backlog[1]};0 "
                f"oldest={oldest:.0f}s;{limits.oldest[0]:.0f};{limits.oldest[1]:.0f};0 "
                f"disconnected={away:.0f}s;{limits.disconnected[0]:.0f};{limits.disconnected[1]:.0f};0 "
                f"dead_letters={dead};{limits.dead_letters[0]};{limits.dead_letters[1]};0 "
                f"published={counters.get('published', 0)}c injected={counters.get('injected', 0)}c "
                f"refused={counters.get('refused', 0)}c")
    if status.sequences is not None:
        missing = sum(row["missing"] for row in status.streams())
        lost = sum(row["lost"] for row in status.streams()) + status.forgotten().get("lost", 0)
        perfdata += f" missing={missing} lost={lost}c"
    # Works, but will not for long (Icinga 2's compat command pipe): said, not graded.
    shown += [f"{part} {state}" for part, state in sorted(states.items()) if "deprecated" in state]
    # Escaped again: a status written by an older bridge may hold a state with a line break.
    text = printable("; ".join(shown)).replace("|", "/")
    return code, f"MSG-BRIDGE {NAMES[code]} - {text} | {perfdata}"


def _gaps(status: Status, limits: Tuple[float, float]) -> List[Tuple[int, str]]:
    """The streams with a gap open longer than a threshold (loss accounting), worst first;
    at most 3 named, the rest counted."""
    warning, critical = limits
    graded = []
    for row in status.streams():
        age = row["oldest_gap_age"]
        if age is None:
            continue
        grade = CRITICAL if critical and age >= critical else WARNING if warning and age >= warning else OK
        if grade > OK:
            graded.append((grade, age, row))
    graded.sort(key=lambda item: (-item[0], -item[1]))
    # The names come from message headers: shown escaped and cut.
    problems = [(grade, f"{printable(row['producer'], 80)} route {printable(row['route'], 40)}:"
                        f" {row['missing']} missing, gap open {age:.0f} s")
                for grade, age, row in graded[:3]]
    if len(graded) > 3:
        problems.append((max(grade for grade, _, _ in graded[3:]), f"{len(graded) - 3} more streams with gaps"))
    return problems
