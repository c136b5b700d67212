"""The one-line text form in which Nagios hands results to the bridge.

Both outbound sources use it: the OCSP/OCHP command ``printf``s it into the
bridge's FIFO, framed (formats/ocsp_record.py), and the core writes it into the perfdata files through
``service_perfdata_file_template`` / ``host_perfdata_file_template``. One
format means one parser and one set of tests for both paths.

A line is tab-separated and starts with a tag that names its kind and version::

    MNB1S <checktime> <host> <service> <stateid> <statetype> <attempt> <checktype> <flavour> <uri> <publish> <output> <perfdata> <long output>
    MNB1H <checktime> <host> <stateid> <statetype> <attempt> <checktype> <flavour> <uri> <publish> <output> <perfdata> <long output>

``checktype`` is ACTIVE or PASSIVE: the echo guard needs it (a passive result
the bridge itself injected must not be published again).

``flavour``, ``uri`` and ``publish`` come from the custom variables
``_MSG_FLAVOUR``, ``_MSG_URI`` and ``_MSG_PUBLISH``; Nagios writes an
undefined one as the macro's own text, which the parser reads as "not set".
Nagios escapes long output (escape_newlines: a backslash becomes two, a
newline the two characters ``\\n``); the parser undoes exactly that. The
free-text fields come last, so a stray tab inside plugin text can only shift text between output, perfdata and
long output; it can never move a value into a fixed field such as the state.
"""
from __future__ import annotations

import re
from typing import List

from ...model import CheckResult, InvalidResult

SERVICE_TAG = "MNB1S"
HOST_TAG = "MNB1H"
# Version 2, for the perfdata files: the free-text fields each on a line of their own (below).
SERVICE_RECORD_TAG = "MNB2S"
HOST_RECORD_TAG = "MNB2H"
RECORD_LINES = 4

# The time is the check's own (Nagios sets last_check from the result's start time before it
# runs the OCSP command or writes perfdata), not $TIMET$: Nagios expands that anew for each
# line, so the OCSP line and the perfdata line of one check could differ by a second, and two
# checks of one service alike in state and output, written within a second, shared one identity.
SERVICE_MACROS = (
    "$LASTSERVICECHECK$", "$HOSTNAME$", "$SERVICEDESC$", "$SERVICESTATEID$", "$SERVICESTATETYPE$",
    "$SERVICEATTEMPT$", "$SERVICECHECKTYPE$", "$_SERVICEMSG_FLAVOUR$", "$_SERVICEMSG_URI$", "$_SERVICEMSG_PUBLISH$",
    "$SERVICEOUTPUT$", "$SERVICEPERFDATA$", "$LONGSERVICEOUTPUT$",
)
HOST_MACROS = (
    "$LASTHOSTCHECK$", "$HOSTNAME$", "$HOSTSTATEID$", "$HOSTSTATETYPE$",
    "$HOSTATTEMPT$", "$HOSTCHECKTYPE$", "$_HOSTMSG_FLAVOUR$", "$_HOSTMSG_URI$", "$_HOSTMSG_PUBLISH$",
    "$HOSTOUTPUT$", "$HOSTPERFDATA$", "$LONGHOSTOUTPUT$",
)
_SERVICE_FIELDS = 1 + len(SERVICE_MACROS)
_HOST_FIELDS = 1 + len(HOST_MACROS)


class BadLine(ValueError):
    """A line that is not a result: the message says why."""


def template(tag: str, macros) -> str:
    """The perfdata-file template for ``tag`` (Nagios turns ``\\t`` into a tab)."""
    return "\\t".join((tag,) + tuple(macros))


def record_template(tag: str, macros) -> str:
    """The perfdata-file template of a version-2 record: the fixed fields tab-separated on one
    line, then output, perfdata and long output on a line each (Nagios turns ``\\n`` into a
    newline). None of those three can hold a newline (the output is the first line, Nagios
    joins perfdata lines with blanks, and it escapes long output), while each may hold tabs,
    which on one tab-separated line could not be told from the separator."""
    return "\\t".join((tag,) + tuple(macros[:-3])) + "".join("\\n" + macro for macro in macros[-3:])


def service_template() -> str:
    return record_template(SERVICE_RECORD_TAG, SERVICE_MACROS)


def host_template() -> str:
    return record_template(HOST_RECORD_TAG, HOST_MACROS)


def is_record_start(line: bytes) -> bool:
    """True for the first line of a version-2 record (RECORD_LINES lines in all)."""
    return line.startswith((SERVICE_RECORD_TAG.encode() + b"\t", HOST_RECORD_TAG.encode() + b"\t"))


_NAGIOS_ESCAPE = re.compile(r"\\(\\|n)")


def _unescape_long_output(text: str) -> str:
    """Undo Nagios's escape_newlines (backslash -> two backslashes, newline -> backslash n),
    in one pass: ``C:\\\\new`` is ``C:\\new``, not ``C:`` + a line break + ``ew``. A backslash
    before anything else (which escape_newlines never writes) is kept as it is."""
    if "\\" not in text:      # nearly every result: nothing to undo, no regex call
        return text.strip("\n")
    return _NAGIOS_ESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else "\\", text).strip("\n")


def nagios_escape(text: str) -> str:
    """What Nagios's escape_newlines makes of long output (for tests and ``format_line``)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


_ATTRIBUTE_NAMES = ("check_type", "flavour", "uri", "publish")


def _attributes(check_type: str, flavour: str, uri: str, publish: str) -> dict:
    # Nagios leaves the macro of an undefined custom variable as its own text
    # (``$_SERVICEMSG_URI$``): that means "not set". A loop, without a dict of all four made
    # first: the usual line has ACTIVE and three unset variables, so three are dropped.
    attributes = {}
    for key, value in zip(_ATTRIBUTE_NAMES, (check_type, flavour, uri, publish)):
        if value and not (value[:2] == "$_" and value[-1] == "$"):
            attributes[key] = value
    return attributes


def parse(line: str) -> CheckResult:
    """Parse one line (without its newline), or one version-2 record (its RECORD_LINES lines
    joined by newlines), into a CheckResult, or raise BadLine."""
    tag = line[:6].split("\t", 1)[0]
    if tag in (SERVICE_RECORD_TAG, HOST_RECORD_TAG):
        parts = line.split("\n")
        if len(parts) != RECORD_LINES:
            raise BadLine(f"{tag} record has {len(parts)} lines, expected {RECORD_LINES}")
        fixed = parts[0].split("\t")
        expected = (_SERVICE_FIELDS if tag == SERVICE_RECORD_TAG else _HOST_FIELDS) - 3
        if len(fixed) != expected:
            raise BadLine(f"{tag} record has {len(fixed)} fixed fields, expected {expected}")
        return _result(tag == SERVICE_RECORD_TAG, fixed + parts[1:])
    if "\n" in line:
        raise BadLine("line contains a newline")
    if tag == SERVICE_TAG:
        expected = _SERVICE_FIELDS
    elif tag == HOST_TAG:
        expected = _HOST_FIELDS
    else:
        raise BadLine(f"unknown tag {tag[:10]!r} (expected {SERVICE_TAG} or {HOST_TAG})")
    fields: List[str] = line.split("\t", expected - 1)
    if len(fields) != expected:
        raise BadLine(f"{tag} line has {len(fields)} fields, expected {expected}")
    # A second tag inside one line means two writers' bytes were interleaved on
    # the FIFO (a write over PIPE_BUF): the record cannot be trusted.
    if "\t" + SERVICE_TAG + "\t" in line or "\t" + HOST_TAG + "\t" in line:
        raise BadLine("two records interleaved in one line (a result over PIPE_BUF on the OCSP pipe?)")
    return _result(tag == SERVICE_TAG, fields)


def _result(is_service: bool, fields: List[str]) -> CheckResult:
    try:
        if is_service:
            (_, timet, host, service, state, state_type, attempt, check_type,
             flavour, uri, publish, output, perfdata, long_output) = fields
        else:
            (_, timet, host, state, state_type, attempt, check_type,
             flavour, uri, publish, output, perfdata, long_output) = fields
            service = None
        return CheckResult(
            host=host,
            service=service,
            state=_integer("state", state),
            state_type=state_type,
            # A plugin may print a CR (Windows agents end lines with CRLF): it must not make
            # a result that Nagios took unpublishable, so it becomes a blank.
            output=output.replace("\r", " "),
            long_output=_unescape_long_output(long_output),
            perfdata=perfdata.replace("\r", " ").strip(),
            timestamp=float(_integer("time", timet)),
            attempt=_integer("attempt", attempt or "1"),
            attributes=_attributes(check_type, flavour, uri, publish),
        )
    except InvalidResult as exc:
        raise BadLine(str(exc)) from None


def _integer(name: str, text: str) -> int:
    # isdigit() alone accepts "²", which int() refuses.
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        raise BadLine(f"{name} {text[:20]!r} is not a non-negative integer")
    return int(text)


def format_record(result: CheckResult) -> str:
    """A version-2 record as Nagios writes it into a perfdata file (for tests): RECORD_LINES
    lines joined by newlines, without the final one."""
    fields = _fields(result)
    fields[0] = SERVICE_RECORD_TAG if result.service is not None else HOST_RECORD_TAG
    return "\t".join(fields[:-3]) + "".join("\n" + field for field in fields[-3:])


def format_line(result: CheckResult) -> str:
    """The inverse of parse(), for tests and the ``send`` tool."""
    return "\t".join(_fields(result))


def _fields(result: CheckResult) -> List[str]:
    attrs = result.attributes
    common = [str(int(result.timestamp)), result.host]
    if result.service is not None:
        common.append(result.service)
    return [SERVICE_TAG if result.service is not None else HOST_TAG] + common + [
        str(result.state), result.state_type, str(result.attempt), attrs.get("check_type", ""),
        attrs.get("flavour", ""), attrs.get("uri", ""), attrs.get("publish", ""),
        result.output, result.perfdata, nagios_escape(result.long_output),
    ]
