"""The text of a Nagios check results directory file (``c`` + 6 characters).

Only the text lives here; writing the file and its ``.ok`` companion is the
sink's job. A file holds a header (optionally with ``file_time``: see render)
and one ``key=value`` block per result, each ended by a blank line::

    ### Passive Check Result File ###

    ### Nagios Service Check Result ###
    host_name=web01
    service_description=HTTP
    check_type=1
    ...
    output=HTTP OK|time=0.1s\\nsecond line

Names follow the same rules as command lines (nagios_command.check_name) plus
one more: a name may not end with a backslash, because Nagios's reader
(``mmap_fgets_multiline``) takes a trailing backslash as a line continuation
and would glue the next ``key=value`` line onto the name. Output is cleaned and
escaped exactly as for command lines, so every value is one line.

Times are written ``sec.usec`` with usec as a plain integer without leading
zeros, as Nagios writes them: Nagios reads the usec part with
``strtoul(..., 0)``, which would take ``000123`` as octal.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

from ...model import CheckResult
from .nagios_command import CommandRefused, check_code, check_name, escape, plugin_text, unescape

FILE_HEADER = "### Passive Check Result File ###"
SERVICE_HEADER = "### Nagios Service Check Result ###"
HOST_HEADER = "### Nagios Host Check Result ###"


def _name(kind: str, value: object) -> str:
    name = check_name(kind, value)
    if name.endswith("\\"):
        raise CommandRefused(f"{kind} {name[:80]!r} ends with a backslash (a line continuation for Nagios)")
    return name


def _sec_usec(timestamp: float) -> str:
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)) \
            or not math.isfinite(timestamp) or not 0 <= timestamp < 2**35:
        raise CommandRefused(f"timestamp {timestamp!r} is out of range")
    sec = int(timestamp)
    usec = min(int(round((timestamp - sec) * 1_000_000)), 999_999)
    return f"{sec}.{usec}"


def render_one(result: CheckResult) -> str:
    """One result block, ending with the blank line that closes it."""
    lines = [HOST_HEADER if result.service is None else SERVICE_HEADER,
             "host_name=" + _name("host name", result.host)]
    if result.service is not None:
        lines.append("service_description=" + _name("service description", result.service))
    when = _sec_usec(result.timestamp)
    lines += [
        "check_type=1",  # passive
        "check_options=0",
        "scheduled_check=0",
        "reschedule_check=0",
        "latency=0.0",
        f"start_time={when}",
        f"finish_time={when}",
        "early_timeout=0",
        "exited_ok=1",
        f"return_code={check_code(result)}",
        "output=" + escape(plugin_text(result)),
    ]
    block = "\n".join(lines) + "\n\n"
    if block.count("\n") != len(lines) + 1:
        raise CommandRefused("internal error: a check result value spans lines")
    return block


def render(results: Sequence[CheckResult], now: Optional[float] = None) -> str:
    """The whole file for ``results``; ``now``, if given, becomes ``file_time``.

    Nagios drops a file unread once its ``file_time`` is older than
    ``max_check_result_file_age`` (1 h by default). The bridge leaves it out: its
    file may wait for a Nagios stopped for longer than that, and must then still
    be read (Nagios's other age check, by mtime, the sink defeats by touching it).

    Raises CommandRefused if any result must not reach Nagios (the caller
    should refuse that one result, not the batch: render them one by one with
    ``render_one`` to find it).
    """
    if now is None:
        return f"{FILE_HEADER}\n\n" + "".join(render_one(result) for result in results)
    if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now) or now < 0:
        raise CommandRefused(f"file time {now!r} is out of range")
    head = f"{FILE_HEADER}\nfile_time={int(now)}\n\n"
    return head + "".join(render_one(result) for result in results)


def _logical_lines(text: str) -> List[str]:
    """Lines as Nagios 4 ``mmap_fgets_multiline`` returns them (without newline).

    A line ending in one backslash continues on the next line (whose leading
    blanks are dropped); a line ending in two backslashes loses the last one.
    """
    raw = text.split("\n")
    if raw and raw[-1] == "":
        raw.pop()
    out: List[str] = []
    buf = None
    for line in raw:
        buf = line if buf is None else buf + line.lstrip(" \t")
        body = buf[:-1] if buf.endswith("\r") else buf
        if body.endswith("\\\\"):
            out.append(body[:-1])
            buf = None
        elif len(body) > 1 and body.endswith("\\"):
            buf = body[:-1]
        else:
            out.append(buf)
            buf = None
    if buf is not None:
        out.append(buf)
    return out


def parse(text: str) -> List[Dict[str, str]]:
    """Read a file the way Nagios does, for tests: one dict per result.

    Comment lines are skipped, a blank line ends a result, ``key=value`` splits
    at the first ``=``; ``output`` is un-escaped as Nagios does, other values
    are raw text. The file header (``file_time``) is not a result.
    """
    results: List[Dict[str, str]] = []
    current: Dict[str, str] = {}
    for line in _logical_lines(text):
        if line.startswith("#"):
            continue
        if line == "":
            if "host_name" in current and "output" in current:
                results.append(current)
            current = {}
            continue
        key, sep, value = line.partition("=")
        if not sep or key == "file_time":
            continue
        current[key] = unescape(value) if key == "output" else value
    if "host_name" in current and "output" in current:
        results.append(current)
    return results
