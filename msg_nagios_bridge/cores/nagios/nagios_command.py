"""External command lines for Nagios: the ONE place that builds them (contract 5).

Only two commands ever come out of this module::

    [now] PROCESS_SERVICE_CHECK_RESULT;<host>;<service>;<code>;<text>\\n
    [now] PROCESS_HOST_CHECK_RESULT;<host>;<code>;<text>\\n

Names are re-validated here even though CheckResult already checks them (a
second lock on the door that leads to an administrator's shell): a name with
``;``, a control character (C0, DEL, C1), a lone surrogate, surrounding blanks,
no characters or more than 255 is refused with CommandRefused, never cleaned,
because a cleaned name would report on a different object.

The text is ``output`` + ``|perfdata`` + ``\\n long output``, then made safe:

1. perfdata is one line by definition: CR/LF in it become spaces (they would
   otherwise move perfdata into the long output).
2. ``\\r\\n`` becomes ``\\n`` (a CRLF line end is a line end).
3. TAB is kept: plugins print tables with it, and it is harmless in a command
   line, in a check result file and in status.dat. Every other control
   character -- lone CR, NUL, ESC, DEL, C1 -- becomes a space, and a lone
   surrogate becomes U+FFFD. Why a space and not an escape:
   Nagios un-escapes only ``\\\\`` and ``\\n``; any other ``\\x`` would show as
   literal text, indistinguishable from a plugin that printed a backslash, and a
   raw one is worse (NUL silently cuts the C string, CR and ESC play games with
   terminals and line-based files such as status.dat). A space keeps words
   apart and is what a reader expects to see.
4. Escape backslashes first (``\\`` -> ``\\\\``), then newlines (LF -> ``\\n``).

After step 4 every backslash in the text starts ``\\\\`` or ``\\n``, so both
un-escape functions found in Nagios 4 sources read it the same way.
Nagios itself later turns ``;`` in output into ``:``; that is harmless.

Writes of at most PIPE_BUF bytes are atomic on a FIFO with several writers:
check ``fits_pipe_buf`` and either ``truncate_to_fit`` or use the check
results directory for bigger results.
"""
from __future__ import annotations

import math
import re
from typing import List, Tuple

from ...model import TRUNCATION_MARKER, CheckResult, InvalidResult
from ...model import truncation_marker as marker
from ...model import check_name as model_check_name

PIPE_BUF = 4096

SERVICE_COMMAND = "PROCESS_SERVICE_CHECK_RESULT"
HOST_COMMAND = "PROCESS_HOST_CHECK_RESULT"
COMMANDS = (SERVICE_COMMAND, HOST_COMMAND)

# Control characters that must not survive in text (newline is escaped instead; TAB is kept).
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_LINE = re.compile(r"\[(\d+)\] ([A-Z_]+);([^\n]*)\n?")


class CommandRefused(ValueError):
    """A result that must not become a command line: the message says why."""


def check_name(kind: str, value: object) -> str:
    """Return ``value`` if it may stand in a command field, else raise CommandRefused.

    The same rule as CheckResult's, checked again here on purpose: this is the
    last step before Nagios's command file.
    """
    try:
        return model_check_name(kind, value)
    except InvalidResult as exc:
        raise CommandRefused(str(exc)) from None


def check_code(result: CheckResult) -> int:
    """The result's state as a return code, or CommandRefused (hosts 0-2, services 0-3)."""
    limit = 2 if result.service is None else 3
    code = result.state
    if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= limit:
        raise CommandRefused(f"return code {code!r} is not an integer from 0 to {limit}")
    return code


def _check_now(now: object) -> int:
    if isinstance(now, bool) or not isinstance(now, (int, float)):
        raise CommandRefused(f"command time {now!r} is not a number")
    if not math.isfinite(now) or not 0 <= now < 2**35:
        raise CommandRefused(f"command time {now!r} is out of range")
    return int(now)


def clean_text(text: str) -> str:
    """Text with the control-character policy applied (steps 2-3 above), not yet escaped."""
    if text.isprintable():
        # Nearly always: nothing to change. Every character the steps change (C0 and C1
        # controls but tab and newline, CR, surrogates) is one str.isprintable refuses.
        return text
    text = text.replace("\r\n", "\n")
    text = _CONTROL_BUT_NEWLINE.sub(" ", text)
    return _SURROGATE.sub("\ufffd", text)


def _clean_perfdata(perfdata: str) -> str:
    return clean_text(perfdata.replace("\r", " ").replace("\n", " "))


def _parts(result: CheckResult) -> Tuple[str, str, str]:
    """(output, perfdata, long output), each cleaned."""
    for name in ("output", "long_output", "perfdata"):
        if not isinstance(getattr(result, name), str):
            raise CommandRefused(f"{name} must be text")
    # The output is one line; a newline that got in anyway becomes a space here.
    output = clean_text(result.output).replace("\n", " ")
    return output, _clean_perfdata(result.perfdata), clean_text(result.long_output)


def _compose(output: str, perfdata: str, long_output: str) -> str:
    text = output
    if perfdata:
        text += "|" + perfdata
    if long_output:
        text += "\n" + long_output
    return text


def plugin_text(result: CheckResult) -> str:
    """The text Nagios ends up with for ``result`` (cleaned, unescaped)."""
    return _compose(*_parts(result))


def escape(text: str) -> str:
    """Backslashes first, then newlines: the only escapes Nagios undoes."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def unescape(text: str) -> str:
    """What Nagios does to escaped output: ``\\\\`` -> ``\\``, ``\\n`` -> newline.

    Any other backslash is kept as it is (Nagios 4 ``unescape_check_result_output``).
    """
    out: List[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "\\n":
            out.append("\\" if text[i + 1] == "\\" else "\n")
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _prefix(result: CheckResult, now: object) -> str:
    host = check_name("host name", result.host)
    code = check_code(result)
    stamp = _check_now(now)
    if result.service is None:
        return f"[{stamp}] {HOST_COMMAND};{host};{code};"
    service = check_name("service description", result.service)
    return f"[{stamp}] {SERVICE_COMMAND};{host};{service};{code};"


def command_line(result: CheckResult, now: int) -> str:
    """The one command line for ``result``, ending with its only newline.

    ``now`` is the command's time; Nagios uses it as the passive check's time,
    so pass ``int(result.timestamp)`` to keep the remote check time.
    Raises CommandRefused for a name or state that must not reach Nagios.
    """
    line = _prefix(result, now) + escape(plugin_text(result)) + "\n"
    _assert_one_line(line)
    return line


def _assert_one_line(line: str) -> None:
    # Belt and braces: whatever happened above, never hand out a second line. (Text that is all
    # printable has none of the control characters: the regex, a tenth of the writer's work
    # a result, looks only at the rest, such as text with a TAB.)
    if line.count("\n") != 1 or not line.endswith("\n") or (
            not line[:-1].isprintable() and _CONTROL_BUT_NEWLINE.search(line)):
        raise CommandRefused("internal error: command line is not exactly one clean line")


def fits_pipe_buf(line: str) -> bool:
    """True if writing ``line`` to the command FIFO is one atomic write."""
    return len(line.encode("utf-8")) <= PIPE_BUF


def _cost(text: str) -> int:
    """Bytes ``text`` takes once escaped and encoded."""
    return len(text.encode("utf-8")) + text.count("\\") + text.count("\n")


def _cut(text: str, budget: int) -> str:
    """The longest prefix of ``text`` that costs at most ``budget`` bytes.

    Cutting the unescaped text at a character boundary can never split a UTF-8
    sequence or an escape pair.
    """
    # Every character costs a byte at least: the prefix is within the first ``budget``, so
    # this costs O(budget log budget) whatever the text's length (it measured the whole text
    # first: 14 ms for an 8 MB output, on the writer thread).
    text = text[:max(budget, 0) + 1]
    if _cost(text) <= budget:
        return text
    low, high = 0, len(text)  # _cost(text[:low]) <= budget < _cost(text[:high])
    while high - low > 1:
        mid = (low + high) // 2
        if _cost(text[:mid]) <= budget:
            low = mid
        else:
            high = mid
    return text[:low]


_MARKER = re.compile(re.escape(TRUNCATION_MARKER).replace(r"\{n\}", r"(\d{1,20})"))


def _markers(text: str) -> Tuple[int, int]:
    """(bytes the markers in ``text`` say were cut, bytes the markers themselves take)."""
    said = taken = 0
    for match in _MARKER.finditer(text):
        said += int(match.group(1))
        taken += len(match.group(0).encode("utf-8"))
    return said, taken


def _true_cut(full: str, kept: str) -> int:
    """Bytes of the original text missing when ``full`` is cut down to ``kept``: what is
    dropped now, less the markers dropped with it, plus what those markers said an earlier
    cut (the decoder's max_output_bytes) had dropped already."""
    said_full, taken_full = _markers(full)
    said_kept, taken_kept = _markers(kept)
    dropped = len(full.encode("utf-8")) - len(kept.encode("utf-8"))
    return dropped - (taken_full - taken_kept) + (said_full - said_kept)


def truncate_to_fit(result: CheckResult, now: int, limit: int = PIPE_BUF) -> str:
    """A command line of at most ``limit`` bytes; cut text is marked visibly.

    Returns ``command_line(result, now)`` when that fits. Otherwise it gives up
    text in this order: the end of the long output (marker at the cut), then
    the long output and trailing perfdata items (perfdata is only ever cut
    between items; the marker goes after the output), then the end of the
    output itself. ``N`` in the marker counts UTF-8 bytes of unescaped text,
    of the original: a marker of an earlier cut that goes now adds its count.
    Raises CommandRefused if even the names and the marker do not fit.
    """
    prefix = _prefix(result, now)
    output, perfdata, long_output = _parts(result)
    full = _compose(output, perfdata, long_output)
    budget = limit - len(prefix.encode("utf-8")) - 1  # the final newline
    if _cost(full) <= budget:
        text = full
    else:
        # Upper bound for the marker: N never has more digits than the whole text and the
        # earlier cuts together.
        room = budget - _cost(marker(len(full.encode("utf-8")) + _markers(full)[0]))
        if room < 0:
            raise CommandRefused(f"a {limit}-byte line cannot hold the names and a truncation marker")
        head = _compose(output, perfdata, "")
        newline = _cost("\n")  # two bytes once escaped
        if long_output and _cost(head) + newline <= room:
            kept = _cut(long_output, room - _cost(head) - newline).rstrip("\n")
            body = head + "\n" + kept
            mark = marker(_true_cut(full, body))
            text = body + (mark if kept else mark.lstrip())
        elif _cost(output) <= room:
            items: List[str] = []
            # A running cost (_cost adds up over concatenation): measuring the joined items
            # again for each one took time quadratic in their number (review 2026-12-04).
            used = _cost(output + "|")
            for item in perfdata.split(" "):
                used += _cost(item) + (1 if items else 0)       # its separating blank
                if used > room:
                    break
                items.append(item)
            kept_perf = " ".join(items).strip()
            text = output + marker(_true_cut(full, _compose(output, kept_perf, ""))) + ("|" + kept_perf if kept_perf else "")
        else:
            kept = _cut(output, room)
            text = kept + marker(_true_cut(full, kept))
    line = prefix + escape(text) + "\n"
    _assert_one_line(line)
    if len(line.encode("utf-8")) > limit:
        raise CommandRefused("internal error: truncated line is still too long")
    return line


def parse_command_line(line: str) -> Tuple[int, str, Tuple[str, ...]]:
    """Split a line made by this module into (time, command, fields).

    Service lines give (host, service, code, text), host lines (host, code,
    text); ``text`` is still escaped (see ``unescape``). Raises ValueError for
    anything else, including a second line.
    """
    match = _LINE.fullmatch(line)
    if not match:
        raise ValueError(f"not a single command line: {line[:80]!r}")
    stamp, command, rest = match.groups()
    if command == SERVICE_COMMAND:
        fields = rest.split(";", 3)
        expected = 4
    elif command == HOST_COMMAND:
        fields = rest.split(";", 2)
        expected = 3
    else:
        raise ValueError(f"command {command!r} is not one the bridge sends")
    if len(fields) != expected:
        raise ValueError(f"{command} needs {expected} fields, got {len(fields)}")
    return int(stamp), command, tuple(fields)
