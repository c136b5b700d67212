"""The WLCG "metric output" text format: ``key: value`` lines ending with ``EOT``.

One record per message. ``detailsData`` is the only multi-line field and comes
last. The parser takes the final ``EOT`` line as the end, so an ``EOT`` line
inside detailsData (which broke older parsers) is just text; unknown keys are
kept, not refused.

**EOT inside a value is escaped, not refused** (dot-stuffing, as SMTP does with
its ``.`` line). Downstream consumers read up to the first ``EOT`` line, so
plugin long output holding ``EOT`` and then ``siteName: OTHER ...`` would be
read there as a second, forged record (signed as ours when signing is on). The
format has no escape of its own, so ``encode`` adds one dot: every line of a
value (but its first, which follows ``key: ``) that, after leading blanks,
starts with ``EOT`` (any case) after zero or more dots gets one more dot before
them: ``EOT`` is sent as ``.EOT``, ``  eot x`` as ``  .eot x``, ``.EOT`` as
``..EOT``. A consumer that knows
nothing of it sees the text, recognisable, one dot longer; ``decode`` removes
the dot again, so our own round trip is exact. "Line" counts every line break
some reader splits on (``\n``, ``\r``, VT, FF, FS/GS/RS, NEL, U+2028/2029) and
"blanks" everything some reader strips (Python's ``strip``, Java's ``trim``),
so no reader finds an ``EOT`` line before ours. (A record from another sender
with a ``.EOT`` line in detailsData loses that one dot on the way in.)
"""
from __future__ import annotations

import functools
import re
import time
from itertools import repeat
from typing import Dict, List, Mapping, Optional

from ..model import CheckResult, Refused
from .record import Record, parse_timestamp, state_type

HOST_METRIC_NAME = "HOST"
# WLCG statuses for Nagios host states: a host result travels as a metric.
_HOST_STATUS = ("OK", "CRITICAL", "UNKNOWN")
_SERVICE_STATUS = ("OK", "WARNING", "CRITICAL", "UNKNOWN")

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"     # str.splitlines()
_SEGMENTS = re.compile(f"([{_LINE_BREAKS}])")
_BREAKS_TO_BLANKS = str.maketrans(_LINE_BREAKS, " " * len(_LINE_BREAKS))
_BREAK = re.compile(f"[{_LINE_BREAKS}]")
# What a reader may strip before "EOT": every control up to the space, and whatever str.isspace()
# takes (re's \s is that same test). A regex, not a string of those characters: building that
# string scanned all 1.1 million code points, 64 ms at every import (each CLI command paid it).
_LEADING_BLANKS = re.compile(r"[\x00-\x20\s]*")
_EOT_START = re.compile(r"\.*eot", re.IGNORECASE)
_ESCAPED_EOT_START = re.compile(r"\.+eot", re.IGNORECASE)


def _restuff(text: str, pattern: "re.Pattern[str]", change) -> str:
    if "eot" not in text.lower():
        return text                                   # nearly always: nothing to do
    parts = _SEGMENTS.split(text)                     # lines at even indexes, breaks between
    # Not the first: it follows "key: " on its line (a host "eotvos.example.org" stays as it is).
    for index in range(2, len(parts), 2):
        line = parts[index]
        start = _LEADING_BLANKS.match(line).end()
        if pattern.match(line, start):
            parts[index] = line[:start] + change(line[start:])
    return "".join(parts)


def escape_eot(text: str) -> str:
    """``text`` with one dot added before every line start ``(blanks)(dots)EOT`` but the first."""
    return _restuff(text, _EOT_START, lambda rest: "." + rest)


def unescape_eot(text: str) -> str:
    """The inverse of escape_eot: one dot taken from every line start ``(blanks).(dots)EOT``."""
    return _restuff(text, _ESCAPED_EOT_START, lambda rest: rest[1:])


class BadMessage(ValueError):
    """A body that is not a metric-output record: the message says why."""


def format_time(epoch: float) -> str:
    return _format_second(int(epoch))


@functools.lru_cache(maxsize=256)      # a backlog's results share their seconds: 1.5 us a call saved
def _format_second(second: int) -> str:
    return time.strftime(TIME_FORMAT, time.gmtime(second))


def metric_status(result: CheckResult) -> str:
    return (_HOST_STATUS if result.is_host_check else _SERVICE_STATUS)[result.state]


# Every line break but "\n": with the count of "\n", what tells that no one-line field holds one.
_BREAK_BUT_NEWLINE = re.compile(f"[{_LINE_BREAKS[1:]}]")


def _has_break_but_newline(text: str) -> bool:
    # ASCII text (isascii is a flag of the string) by a substring search for each of the six
    # ASCII ones of _LINE_BREAKS but "\n": the regex's class holds breaks outside Latin-1 and
    # cost the outbound path 16,600 instructions a message (docs/performance.md). A unit test
    # keeps the six in step with _LINE_BREAKS.
    if text.isascii():
        return ("\r" in text or "\x0b" in text or "\x0c" in text or "\x1c" in text or "\x1d" in text
                or "\x1e" in text)
    return _BREAK_BUT_NEWLINE.search(text) is not None


def encode(result: CheckResult, fields: Mapping[str, str]) -> str:
    """The metric-output text for ``result``.

    ``fields`` holds what the result cannot know: ``siteName``, ``gatheredAt``
    and optionally ``role``, ``voName``, ``serviceFlavour``, ``serviceURI``.
    """
    # The one-line fields in one format, the key order _encode_record's: a record of 13
    # fields cost a dict, a search of their joined values and a formatted line each. When a
    # value holds a line break, the text has more lines than fields or a break other than
    # "\n", and the record is made again the careful way (tests/unit/test_formats.py checks
    # that both give the same text).
    metric = result.service if result.service is not None else HOST_METRIC_NAME
    get, attributes = fields.get, result.attributes
    role, vo, perfdata = get("role"), get("voName"), result.perfdata
    text = (f"serviceURI: {get('serviceURI') or attributes.get('uri') or result.host}\n"
            f"hostName: {result.host}\n"
            f"serviceFlavour: {get('serviceFlavour') or attributes.get('flavour') or 'unknown'}\n"
            f"siteName: {fields['siteName']}\nmetricStatus: {metric_status(result)}\n"
            f"metricName: {metric}\nsummaryData: {result.output}\ngatheredAt: {fields['gatheredAt']}\n"
            f"timestamp: {format_time(result.timestamp)}\nnagiosName: {metric}\n"
            f"statusType: {result.state_type}\n"
            + (f"role: {role}\n" if role else "") + (f"voName: {vo}\n" if vo else "")
            + (f"performanceData: {perfdata}\n" if perfdata else ""))
    lines = 11 + bool(role) + bool(vo) + bool(perfdata)
    if text.count("\n") != lines or _has_break_but_newline(text):
        return _encode_record(result, fields)
    if result.long_output:
        text += "detailsData: " + escape_eot(result.long_output) + "\n"
    return text + "EOT\n"


def _encode_record(result: CheckResult, fields: Mapping[str, str]) -> str:
    """encode's text made a field at a time: for a record whose one-line fields hold line breaks."""
    metric = result.service if result.service is not None else HOST_METRIC_NAME
    record: Dict[str, str] = {
        "serviceURI": fields.get("serviceURI") or result.attributes.get("uri") or result.host,
        "hostName": result.host,
        "serviceFlavour": fields.get("serviceFlavour") or result.attributes.get("flavour") or "unknown",
        "siteName": fields["siteName"],
        "metricStatus": metric_status(result),
        "metricName": metric,
        "summaryData": result.output,
        "gatheredAt": fields["gatheredAt"],
        "timestamp": format_time(result.timestamp),
        "nagiosName": metric,
        "statusType": result.state_type,
    }
    for key in ("role", "voName"):
        if fields.get(key):
            record[key] = fields[key]
    if result.perfdata:
        record["performanceData"] = result.perfdata
    # A line break of any reader's kind (str.splitlines: VT, FF, NEL, U+2028 ...) in a one-line
    # field becomes a blank: text after it would read as a key of its own there. (One search
    # over all of them first: a translate per field cost 8 us a record.) Without line breaks
    # a field starts no line, so no EOT in it needs escaping.
    if _BREAK.search("".join(record.values())) is not None:
        record = {key: value.translate(_BREAKS_TO_BLANKS) for key, value in record.items()}
    lines = [f"{key}: {value}" for key, value in record.items()]
    if result.long_output:
        lines.append("detailsData: " + escape_eot(result.long_output))
    lines.append("EOT")
    return "\n".join(lines) + "\n"


def decode(body: str) -> Dict[str, str]:
    """Parse one record into a dict of its keys (``detailsData`` may span lines).

    Raises BadMessage when the text does not end with ``EOT``, a line before
    detailsData is not ``key: value``, or a key repeats. Values are unescaped
    (unescape_eot). Blank lines are skipped.
    """
    text = (body.replace("\r\n", "\n") if "\r" in body else body).rstrip("\n")
    head, _, last = text.rpartition("\n")
    if last.strip() != "EOT":
        raise BadMessage("record does not end with an EOT line")
    # An escaped EOT is a dot before "eot" (any case): without ".e" or ".E" (nearly always) no
    # value has anything to unescape, and the text is not lowered to count its "eot"s.
    escaped = (".e" in head or ".E" in head) and "eot" in head.lower()
    if not escaped:
        record = _usual_record(head)
        if record is not None:
            return record
    return _careful_record(head.split("\n"), escaped)


def _usual_record(head: str) -> Optional[Dict[str, str]]:
    """The record as _careful_record makes it, when every line before detailsData is
    ``key: value`` with a new key and detailsData comes after them; None otherwise
    (a blank or bad line, a repeated key, detailsData first or spelt with blanks):
    _careful_record then parses it, or says what is wrong. Two comprehensions and checks on
    the whole record, instead of the careful parser's checks line by line."""
    before, found, details = head.partition("\ndetailsData:")
    lines = before.split("\n")
    try:
        # Each line's pair is made and dropped in turn: a list of them all, a million blank
        # lines long, kept Python's collector busy (several times the careful parser's time).
        record = {key.strip(): value.strip() for key, value in map(str.split, lines, repeat(":"), repeat(1))}
    except ValueError:          # a line without a colon
        return None
    # Keys are stripped, so a blank in one is inside it: the careful parser refuses it.
    if len(record) != len(lines) or "" in record or "detailsData" in record or " " in "".join(record):
        return None
    if found:
        record["detailsData"] = details[1:] if details.startswith(" ") else details
    return record


def _careful_record(lines: List[str], escaped: bool) -> Dict[str, str]:
    """The record from its lines (without EOT), one at a time; raises BadMessage."""
    record: Dict[str, str] = {}
    for index, line in enumerate(lines):
        key, sep, value = line.partition(":")
        if not sep:
            if line and not line.isspace():     # a blank line is skipped
                raise BadMessage(f"line {index + 1} is not 'key: value': {line[:60]!r}")
            continue
        key = key.strip()
        if not key or " " in key:
            raise BadMessage(f"line {index + 1} is not 'key: value': {line[:60]!r}")
        if key in record:
            raise BadMessage(f"key {key!r} appears twice")
        if key == "detailsData":
            rest = "\n".join([value[1:] if value.startswith(" ") else value] + lines[index + 1:])
            record[key] = unescape_eot(rest) if escaped else rest
            break
        value = value.strip()
        record[key] = unescape_eot(value) if escaped else value
    return record


def read_record(text: str) -> Record:
    """A received body -> Record (formats/decode.py makes the CheckResult); raises Refused."""
    try:
        raw = decode(text.rstrip(" \t\r\n"))
    except BadMessage as e:
        message = str(e)
        if message.startswith("record does not end with an EOT line"):
            reason = "no-eot"
        elif message.startswith("key ") and message.endswith(" appears twice"):
            reason = "repeated-key"
        else:
            reason = "bad-record"
        raise Refused(reason, message) from None
    record = Record()
    if raw.get("encrypted", "").strip().lower() in ("yes", "true", "1"):
        raise Refused("encrypted", "encrypted metric records are not supported")
    # An empty value is a missing value (``or None``).
    get = raw.get
    record.host_name, record.service_uri = get("hostName") or None, get("serviceURI") or None
    record.nagios_name, record.metric_name = get("nagiosName") or None, get("metricName") or None
    record.is_host = (record.metric_name or record.nagios_name) == HOST_METRIC_NAME
    record.status = get("metricStatus") or None
    if record.status is None:
        raise Refused("missing-field", "metricStatus is missing")
    stamp = get("timestamp")
    if not stamp:
        raise Refused("missing-field", "timestamp is missing")
    record.timestamp = parse_timestamp(stamp)
    record.output = get("summaryData", "")
    record.long_output = get("detailsData", "")
    record.perfdata = get("performanceData") or get("perfdata") or ""
    if get("statusType"):
        record.state_type = state_type(raw["statusType"])
    fields = record.fields
    for field, key in _FIELDS:
        value = get(key)
        if value:
            fields[field] = value
    return record


# Record.fields from the record's keys.
_FIELDS = (("site", "siteName"), ("role", "role"), ("vo", "voName"), ("flavour", "serviceFlavour"),
           ("gathered_at", "gatheredAt"))
