"""Inbound messages (WLCG metric output or JSON) -> CheckResult, or Refused: formats/wlcg.py and
formats/json.py read the body into a Record (formats/record.py); this module maps it to a result.

``decode`` is pure apart from reading the clock when no ``now`` is given. It
never raises anything but Refused for any body or headers, however hostile:
every refusal carries a short ``reason`` code for counters and dead letters
and a one-line human message.

Reason codes: ``too-large``, ``empty``, ``nul-byte``, ``not-utf8``,
``bad-unicode``, ``bad-json``, ``json-too-deep``, ``json-too-complex``, ``json-not-object``,
``repeated-key``, ``no-eot``, ``bad-record``, ``encrypted``,
``missing-field``, ``bad-field``, ``field-too-long``, ``bad-status``,
``bad-timestamp``, ``bad-host-name``, ``bad-service-name``,
``template-field-missing``, ``invalid-result``; ``decode-error`` only if a
bug let some other exception through (the tests make sure none does).

Decisions (and why):

- A known key with a bad value is refused; an unknown key is ignored. Real
  producers add keys; a known key with garbage means a broken producer.
- Invalid UTF-8 (overlong forms and encoded surrogates included) and NUL are
  refused, never replaced: a result repaired by guessing reports something
  nobody sent.
- MISSING and DOWNTIME become UNKNOWN (3; for a host, the host value of
  UNKNOWN: 2) with the original status kept visible as an output prefix
  (``DOWNTIME: ...``) and in ``attributes["status_text"]``. UNKNOWN is exactly
  "the state is not known here"; dropping the result would hide that the
  remote side said something.
- A host has no WARNING: a host result with WARNING is refused (``bad-status``)
  rather than guessed into UP or DOWN.
- The output is the original ``summaryData`` (not ``gatheredAt: summary`` as
  old receivers built it; the publisher is in ``attributes["gathered_at"]``).
  A JSON output with newlines keeps its first line as output and moves the
  rest in front of the long output, as Nagios does with plugin output.
- Output plus long output over ``max_output_bytes`` is cut visibly (marker
  ``[truncated by msg-nagios-bridge: N bytes cut]``), never dropped;
  perfdata over that limit loses whole trailing items, noted in long output.
- Names are refused, never cleaned, when CheckResult refuses them or when they
  end with a backslash (the check results directory reader would take that as
  a line continuation): any decoded result suits both Nagios writers.
- CRLF becomes LF; a lone CR, which CheckResult refuses in output, becomes a
  space. Other control characters are left for nagios_command, the one place
  that decides how text reaches Nagios.
"""
from __future__ import annotations

import dataclasses
import math
import re
import string
import time
import typing
from typing import Dict, List, Optional, Tuple

from ..display import quoted
from ..model import CheckResult, InvalidResult, Refused, check_name
from ..model import truncation_marker as marker
from . import json as json_format
from . import wlcg
from .record import Record, text_field

NUL = b"\x00"
MIN_TIMESTAMP = 946684800  # 2000-01-01T00:00:00Z
MAX_FUTURE_SECONDS = 86400
MAX_ATTRIBUTE_CHARS = 255
TEMPLATE_FIELDS = frozenset({"host", "service", "metric", "site", "role", "vo", "flavour"})

_SERVICE_STATUS = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}
_HOST_STATUS = {"UP": 0, "DOWN": 1, "UNREACHABLE": 2, "OK": 0, "CRITICAL": 1, "UNKNOWN": 2}
_AS_UNKNOWN = ("MISSING", "DOWNTIME")





_show = quoted      # a value in a refusal's message: quoted, every unprintable character escaped, cut
# In a name from another site: characters that change how the text around them is shown (bidi
# controls, zero-width characters, the byte order mark) or end a line for readers that split as
# str.splitlines does (U+2028, U+2029). No object name needs them, and with them a sender's
# result could read as another object's in Nagios's log and web pages (a U+202E reverses what
# follows it). Only inbound: the local Nagios's own names are published as they are.
_HIDDEN_IN_NAMES = re.compile("[\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


@dataclasses.dataclass(frozen=True)
class Mapping:
    """How a remote record becomes a local Nagios host and service name.

    host_from: "serviceURI" (host part of ``srm://host:8443/path`` or the bare
    value, falling back to hostName) or "hostName" (falling back to serviceURI).
    service_from: "nagiosName" (falling back to metricName) or "metricName"
    (falling back to nagiosName). For JSON, ``host`` is hostName,
    ``attributes.uri`` is serviceURI and ``service`` is both service names.
    service_suffix_role: append ``-<role>`` when the record or the ``role``
    header has a role (only without service_template, which says {role} itself).
    host_template / service_template: ``str.format`` templates over {host}
    {service} {metric} {site} {role} {vo} {flavour}, plain fields only; a field
    the message lacks refuses the message (``template-field-missing``).
    """

    host_from: str = "serviceURI"
    service_from: str = "nagiosName"
    service_suffix_role: bool = False
    host_template: Optional[str] = None
    service_template: Optional[str] = None
    max_body_bytes: int = 1024 * 1024
    max_output_bytes: int = 8 * 1024

    def __post_init__(self) -> None:
        if self.host_from not in ("serviceURI", "hostName"):
            raise ValueError(f"host_from {self.host_from!r} is not serviceURI or hostName")
        if self.service_from not in ("nagiosName", "metricName"):
            raise ValueError(f"service_from {self.service_from!r} is not nagiosName or metricName")
        for name in ("host_template", "service_template"):
            template = getattr(self, name)
            if template is not None:
                check_template(name, template)
        if self.service_template is not None and self.service_suffix_role:
            raise ValueError("service_suffix_role and service_template are exclusive: put {role} in the template")
        for name, low in (("max_body_bytes", 64), ("max_output_bytes", 256)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} {value!r} must be an integer of at least {low}")


def check_template(name: str, template: object) -> None:
    """Raise ValueError unless ``template`` uses only plain known fields."""
    if not isinstance(template, str) or not template:
        raise ValueError(f"{name} must be a non-empty string")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"{name} {template!r} is not a valid template: {e}") from None
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in TEMPLATE_FIELDS or spec or conversion:
            raise ValueError(f"{name} {template!r}: field {{{field}}} is not one of "
                             f"{', '.join(sorted(TEMPLATE_FIELDS))} (no conversions or format specs)")


# -- small parsers ------------------------------------------------------------

def _tidy(text: str) -> str:
    """CRLF -> LF, lone CR -> space."""
    return text.replace("\r\n", "\n").replace("\r", " ")


def _check_time(epoch: float, now: float) -> float:
    if not math.isfinite(epoch) or epoch < MIN_TIMESTAMP or epoch > now + MAX_FUTURE_SECONDS:
        raise Refused("bad-timestamp", f"time {_show(epoch)} is before 2000 or more than a day ahead")
    return epoch


def uri_host(value: str) -> str:
    """Host part of ``scheme://[user@]host[:port]/...``, or the bare value
    (without a ``:port``). Own parsing, not urllib: urlsplit silently deletes
    tabs and newlines, which would let a hostile value through cleaned."""
    if "://" in value:
        rest = value.split("://", 1)[1]
        for stop in "/?#":
            rest = rest.split(stop, 1)[0]
        rest = rest.rsplit("@", 1)[-1]
        if rest.startswith("["):  # [IPv6]:port
            return rest[1:].split("]", 1)[0]
        return rest.split(":", 1)[0] if rest.count(":") == 1 else rest
    head, sep, port = value.rpartition(":")
    if sep and head and ":" not in head and port.isdigit():
        return head
    return value


# -- record -> CheckResult -----------------------------------------------------

def _state(record: Record) -> Tuple[int, Optional[str]]:
    """(state, unusual status to show) for the record."""
    table = _HOST_STATUS if record.is_host else _SERVICE_STATUS
    kind = "host" if record.is_host else "service"
    shown = None
    state = None
    if record.status is not None:
        status = record.status.strip().upper()
        if status in _AS_UNKNOWN:
            state, shown = table["UNKNOWN"], status
        elif status in table:
            state = table[status]
        else:
            raise Refused("bad-status", f"{_show(record.status)} is not a {kind} status")
    if record.state is not None:
        limit = 2 if record.is_host else 3
        if not 0 <= record.state <= limit:
            raise Refused("bad-status", f"state {record.state} is not a {kind} state (0-{limit})")
        if state is not None and state != record.state and shown is None:
            raise Refused("bad-status", f"status {_show(record.status)} and state {record.state} disagree")
        if state is None:
            state = record.state
    assert state is not None
    return state, shown


def _names(record: Record, headers: typing.Mapping[str, str], mapping: Mapping) -> Tuple[str, Optional[str], Dict[str, str]]:
    by_uri = uri_host(record.service_uri) if record.service_uri else None
    # The first of each pair that is set (not empty).
    if mapping.host_from == "serviceURI":
        host = by_uri or record.host_name or None
    else:
        host = record.host_name or by_uri or None
    if host is None:
        raise Refused("missing-field", "no host: serviceURI and hostName are both missing or empty")
    if record.is_host:
        service = None
    elif mapping.service_from == "nagiosName":
        service = record.nagios_name or record.metric_name or None
    else:
        service = record.metric_name or record.nagios_name or None
    if service is None and not record.is_host:
        raise Refused("missing-field", "no service: nagiosName and metricName are both missing or empty")
    values = dict(record.fields)
    get = headers.get if hasattr(headers, "get") else {}.get
    for field in ("site", "role", "vo"):
        header = get(field)
        if field not in values and isinstance(header, str) and header:
            values[field] = text_field(header, f"header {field}")
    values.update(host=host, metric=record.metric_name or record.nagios_name or wlcg.HOST_METRIC_NAME)
    if service is not None:
        values["service"] = service
    if mapping.host_template:
        host = _fill("host_template", mapping.host_template, values)
    if service is not None:
        if mapping.service_template:
            service = _fill("service_template", mapping.service_template, values)
        elif mapping.service_suffix_role and values.get("role"):
            service = f"{service}-{values['role']}"
    return host, service, values


def _fill(name: str, template: str, values: Dict[str, str]) -> str:
    missing = [field for _, field, _, _ in string.Formatter().parse(template) if field and field not in values]
    if missing:
        raise Refused("template-field-missing", f"{name} needs {{{missing[0]}}}, which the message does not give")
    return template.format(**values)


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _cut_bytes(text: str, budget: int) -> str:
    """Longest prefix of ``text`` within ``budget`` UTF-8 bytes (never mid-character)."""
    raw = text.encode("utf-8")[:max(budget, 0)]
    return raw.decode("utf-8", "ignore")


def _limittext_field(output: str, long_output: str, limit: int) -> Tuple[str, str]:
    """Output and long output within ``limit`` bytes, cut visibly."""
    total = _utf8_len(output) + _utf8_len(long_output)
    if total <= limit:
        return output, long_output
    room = limit - _utf8_len(marker(total))
    if _utf8_len(output) <= room:
        kept = _cut_bytes(long_output, room - _utf8_len(output))
        return output, kept + marker(total - _utf8_len(output) - _utf8_len(kept))
    kept = _cut_bytes(output, room)
    return kept + marker(total - _utf8_len(kept)), ""


def _limit_perfdata(perfdata: str, limit: int) -> Tuple[str, int]:
    """Perfdata within ``limit`` bytes, dropping whole trailing items; (kept, bytes cut)."""
    if _utf8_len(perfdata) <= limit:
        return perfdata, 0
    kept: List[str] = []
    size = 0
    for item in perfdata.split(" "):
        size += _utf8_len(item) + (1 if kept else 0)
        if size > limit:
            break
        kept.append(item)
    text = " ".join(kept).strip()
    return text, _utf8_len(perfdata) - _utf8_len(text)


def _result(record: Record, headers: typing.Mapping[str, str], mapping: Mapping, now: float) -> CheckResult:
    host, service, values = _names(record, headers, mapping)
    for kind, name, reason in (("host name", host, "bad-host-name"),
                               ("service description", service, "bad-service-name")):
        if name is None:
            continue
        try:
            check_name(kind, name)
        except InvalidResult as e:
            raise Refused(reason, str(e)) from None
        # Every decoded result must suit both writers: the check results reader
        # takes a trailing backslash as a line continuation (see checkresult_file).
        if name.endswith("\\"):
            raise Refused(reason, f"{kind} {_show(name)} ends with a backslash")
        # All of them outside ASCII: an ASCII name (isascii is a flag) skips the regex.
        hidden = None if name.isascii() else _HIDDEN_IN_NAMES.search(name)
        if hidden:
            raise Refused(reason, f"{kind} {_show(name)} contains U+{ord(hidden.group()):04X}, which changes"
                                  " how the text around it is shown")
    state, shown = _state(record)
    timestamp = _check_time(record.timestamp if record.timestamp is not None else math.nan, now)

    output, long_output = _tidy(record.output), _tidy(record.long_output).strip("\n")
    if "\n" in output:  # first line is the output, the rest goes before the long output
        output, rest = output.split("\n", 1)
        long_output = rest.strip("\n") + ("\n" + long_output if long_output else "")
    if shown and not output.upper().startswith(shown):
        output = f"{shown}: {output}" if output else shown
    perfdata = record.perfdata
    if "\n" in perfdata or "\r" in perfdata:
        perfdata = re.sub(r"[\r\n]+", " ", perfdata)  # perfdata is one line
    if "\t" in perfdata:
        # Nagios and Icinga 2 write perfdata into their perfdata files as it came, and the usual
        # templates for graphers are tab-separated KEY::value fields read last key first
        # (PNP4Nagios's process_perfdata.pl: HOSTNAME also names the directory it writes):
        # "a=1<TAB>HOSTNAME::other" from a sender allowed one host would graph another (review
        # 2026-12-05). Perfdata items are separated by blanks, so a tab says no more than a space.
        perfdata = perfdata.replace("\t", " ")
    output, long_output = _limittext_field(output, long_output, mapping.max_output_bytes)
    perfdata, perf_cut = _limit_perfdata(perfdata, mapping.max_output_bytes)
    if perf_cut:
        long_output += ("\n" if long_output else "") + "perfdata" + marker(perf_cut)

    attributes = {}
    for key in ("site", "role", "vo", "flavour", "gathered_at"):
        if values.get(key):
            attributes[key] = values[key]
    if record.service_uri:
        attributes["uri"] = record.service_uri
    if record.status is not None:
        attributes["status_text"] = record.status.strip()
    # Nearly always short ASCII text together: then each is, and is within the limit (a few
    # calls for all instead of a few for each). Otherwise each on its own says what is wrong.
    try:
        joined = "".join(attributes.values())
        usual = joined.isascii() and "\x00" not in joined and len(joined) <= MAX_ATTRIBUTE_CHARS
    except TypeError:
        usual = False
    if not usual:
        for key, value in attributes.items():
            text_field(value, key)
            if len(value) > MAX_ATTRIBUTE_CHARS:
                raise Refused("field-too-long", f"{key} is {len(value)} characters long (limit {MAX_ATTRIBUTE_CHARS})")
    try:
        return CheckResult(host=host, service=service, state=state, state_type=record.state_type,
                           output=output, long_output=long_output, perfdata=perfdata,
                           timestamp=timestamp, attempt=record.attempt, attributes=attributes)
    except InvalidResult as e:
        raise Refused("invalid-result", str(e)) from None


def _is_json(headers: typing.Mapping[str, str], start: str) -> bool:
    """The format: ``content-type`` decides when it names one (``application/json`` or a
    ``+json`` type: JSON; ``text/plain``: WLCG metric output); otherwise a body starting with
    ``{`` or ``[`` is JSON. A forged content-type cannot turn a signed body into another
    result: no text is both a JSON document and a record ending in an EOT line."""
    content_type = headers.get("content-type", "") if hasattr(headers, "get") else ""
    kind = content_type.split(";", 1)[0].strip().lower() if isinstance(content_type, str) else ""
    if kind == "application/json" or kind.endswith("+json"):
        return True
    if kind == "text/plain":
        return False
    return start[0] in "{["


def decode(headers: typing.Mapping[str, str], body: bytes, mapping: Mapping = Mapping(),
           now: Optional[float] = None) -> CheckResult:
    """Turn one inbound message into a CheckResult, or raise Refused.

    The format is JSON or WLCG metric output as ``content-type`` says, else JSON
    when the body starts with ``{`` or ``[`` after blanks. ``now`` (epoch seconds; default: the clock) bounds the
    message time: refused before 2000 or more than a day ahead of ``now``.
    """
    if now is None:
        now = time.time()
    if isinstance(body, str):
        try:
            body = body.encode("utf-8")
        except UnicodeEncodeError:
            raise Refused("bad-unicode", "body contains a lone surrogate") from None
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise Refused("bad-record", f"body is a {type(body).__name__}, not bytes")
    body = bytes(body)
    if len(body) > mapping.max_body_bytes:
        raise Refused("too-large", f"body is {len(body)} bytes (limit {mapping.max_body_bytes})")
    if NUL in body:
        raise Refused("nul-byte", f"body contains a NUL byte at offset {body.index(NUL)}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Refused("not-utf8", f"body is not UTF-8 (byte {e.start}: {_show(body[e.start:e.start + 4])})") from None
    text = text[1:] if text.startswith("\ufeff") else text
    start = text.lstrip()
    if not start:
        raise Refused("empty", "body is empty")
    try:
        if _is_json(headers, start):
            record = json_format.read_record(text)
        else:
            record = wlcg.read_record(text)
        return _result(record, headers if headers is not None else {}, mapping, now)
    except Refused:
        raise
    except Exception as e:  # noqa: BLE001 - contract 4: bad input gets a reason, never a crash
        raise Refused("decode-error", f"unexpected {type(e).__name__}: {_show(str(e), 120)}") from None
