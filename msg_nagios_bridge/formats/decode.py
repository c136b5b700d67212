"""Inbound messages (WLCG metric output or JSON) -> CheckResult, or Refused.

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

import calendar
import dataclasses
import datetime
import json
import math
import re
import string
import time
import typing
from typing import Any, Dict, List, Optional, Tuple

from ..display import quoted
from ..model import CheckResult, InvalidResult, Refused, check_name
from ..model import truncation_marker as marker
from . import wlcg

NUL = b"\x00"
MIN_TIMESTAMP = 946684800  # 2000-01-01T00:00:00Z
MAX_FUTURE_SECONDS = 86400
MAX_JSON_DEPTH = 6
# A result needs a handful of objects and arrays. Counted as bytes before parsing (brackets
# inside strings count too): a mebibyte of tiny arrays costs json.loads and the garbage
# collector half a second to build and free, linear but needless.
MAX_JSON_BRACKETS = 10_000
MAX_ATTRIBUTE_CHARS = 255
TEMPLATE_FIELDS = frozenset({"host", "service", "metric", "site", "role", "vo", "flavour"})

_SERVICE_STATUS = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}
_HOST_STATUS = {"UP": 0, "DOWN": 1, "UNREACHABLE": 2, "OK": 0, "CRITICAL": 1, "UNKNOWN": 2}
_AS_UNKNOWN = ("MISSING", "DOWNTIME")

_ISO_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})?")




_show = quoted      # a value in a refusal's message: quoted, every unprintable character escaped, cut


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

def _text(value: Any, key: str) -> str:
    """``value`` as safe text: a str without NUL or lone surrogates."""
    if not isinstance(value, str):
        raise Refused("bad-field", f"{key} must be text, got {type(value).__name__}")
    if "\x00" in value:
        raise Refused("nul-byte", f"{key} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Refused("bad-unicode", f"{key} contains a lone surrogate") from None
    return value


def _tidy(text: str) -> str:
    """CRLF -> LF, lone CR -> space."""
    return text.replace("\r\n", "\n").replace("\r", " ")


def parse_timestamp(text: str) -> float:
    """ISO 8601 (``2009-09-21T21:35:48Z``, fractions and offsets tolerated,
    no zone = UTC) or plain epoch digits; raises Refused("bad-timestamp")."""
    value = text.strip()
    if value.isdigit() and value.isascii() and len(value) <= 12:
        return float(value)
    match = _ISO_TIME.fullmatch(value)
    if not match:
        raise Refused("bad-timestamp", f"timestamp {_show(text)} is not like 2009-09-21T21:35:48Z")
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    fraction, zone = match.group(7), match.group(8)
    try:
        datetime.date(year, month, day)  # timegm would quietly turn Feb 30 into Mar 1
    except ValueError:
        raise Refused("bad-timestamp", f"timestamp {_show(text)} is not a valid date") from None
    if not (hour <= 23 and minute <= 59 and second <= 60):  # 60: a leap second
        raise Refused("bad-timestamp", f"timestamp {_show(text)} is not a valid time of day")
    epoch = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if fraction:
        epoch += float(fraction)
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:])
        if hours > 14 or minutes > 59:
            raise Refused("bad-timestamp", f"timestamp {_show(text)} has no real UTC offset")
        epoch -= sign * (hours * 3600 + minutes * 60)
    return float(epoch)


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


# -- the two formats -> one neutral record -------------------------------------

@dataclasses.dataclass
class _Record:
    host_name: Optional[str] = None       # hostName / JSON host
    service_uri: Optional[str] = None     # serviceURI / JSON attributes.uri
    nagios_name: Optional[str] = None     # nagiosName / JSON service
    metric_name: Optional[str] = None     # metricName / JSON service
    is_host: bool = False
    status: Optional[str] = None
    state: Optional[int] = None
    output: str = ""
    long_output: str = ""
    perfdata: str = ""
    timestamp: Optional[float] = None
    state_type: str = "HARD"
    attempt: int = 1
    fields: Dict[str, str] = dataclasses.field(default_factory=dict)  # site, role, vo, flavour, gathered_at


def _record_from_wlcg(text: str) -> _Record:
    try:
        raw = wlcg.decode(text.rstrip(" \t\r\n"))
    except wlcg.BadMessage as e:
        message = str(e)
        if message.startswith("record does not end with an EOT line"):
            reason = "no-eot"
        elif message.startswith("key ") and message.endswith(" appears twice"):
            reason = "repeated-key"
        else:
            reason = "bad-record"
        raise Refused(reason, message) from None
    record = _Record()
    if raw.get("encrypted", "").strip().lower() in ("yes", "true", "1"):
        raise Refused("encrypted", "encrypted metric records are not supported")
    get = lambda key: raw.get(key) or None  # noqa: E731 - an empty value is a missing value
    record.host_name, record.service_uri = get("hostName"), get("serviceURI")
    record.nagios_name, record.metric_name = get("nagiosName"), get("metricName")
    record.is_host = (record.metric_name or record.nagios_name) == wlcg.HOST_METRIC_NAME
    record.status = get("metricStatus")
    if record.status is None:
        raise Refused("missing-field", "metricStatus is missing")
    stamp = get("timestamp")
    if stamp is None:
        raise Refused("missing-field", "timestamp is missing")
    record.timestamp = parse_timestamp(stamp)
    record.output = raw.get("summaryData", "")
    record.long_output = raw.get("detailsData", "")
    record.perfdata = raw.get("performanceData") or raw.get("perfdata") or ""
    if get("statusType"):
        record.state_type = _state_type(raw["statusType"])
    for field, key in (("site", "siteName"), ("role", "role"), ("vo", "voName"),
                       ("flavour", "serviceFlavour"), ("gathered_at", "gatheredAt")):
        if get(key):
            record.fields[field] = raw[key]
    return record


def _state_type(value: str) -> str:
    kind = value.strip().upper()
    if kind not in ("SOFT", "HARD"):
        raise Refused("bad-field", f"state type {_show(value)} is not SOFT or HARD")
    return kind


class _Repeated(Exception):
    pass


def _no_repeats(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    result: Dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Repeated(key)
        result[key] = value
    return result


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _json_depth(value: Any) -> int:
    """How deep ``value`` (a parsed JSON document) nests, up to MAX_JSON_DEPTH + 1, walked
    level by level without recursion.

    The depth is checked after parsing, not before: any pre-scan of the text that
    skips strings has to find where each string ends, and a regex doing that on an
    unterminated string full of escaped quotes goes back over the rest of the body
    for every quote (quadratic: 20 KB took 1.5 s, 1 MiB about an hour, holding the GIL).
    json.loads is linear, and its C scanner stops deep nesting with RecursionError.
    """
    depth = 0
    level = [value] if isinstance(value, (dict, list)) else []
    while level and depth <= MAX_JSON_DEPTH:
        depth += 1
        children: List[Any] = []
        for container in level:
            children.extend(container.values() if isinstance(container, dict) else container)
        level = [child for child in children if isinstance(child, (dict, list))]
    return depth


def _record_from_json(text: str) -> _Record:
    brackets = text.count("[") + text.count("{")
    if brackets > MAX_JSON_BRACKETS:
        raise Refused("json-too-complex", f"JSON body has {brackets} brackets ([ or {{, strings included;"
                                          f" limit {MAX_JSON_BRACKETS})")
    try:
        data = json.loads(text, object_pairs_hook=_no_repeats, parse_constant=_no_constants)
    except _Repeated as e:
        raise Refused("repeated-key", f"JSON key {_show(str(e))} appears twice in one object") from None
    except RecursionError:
        raise Refused("json-too-deep", "JSON nests too deep") from None
    except ValueError as e:
        raise Refused("bad-json", f"not valid JSON: {_show(str(e), 120)}") from None
    if _json_depth(data) > MAX_JSON_DEPTH:
        raise Refused("json-too-deep", f"JSON nests deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(data, dict):
        raise Refused("json-not-object", f"JSON body is a {type(data).__name__}, not an object")

    def opt_text(key: str, source: Dict[str, Any] = data) -> Optional[str]:
        value = source.get(key)
        return None if value is None else _text(value, key)

    record = _Record()
    if "host" not in data:
        raise Refused("missing-field", "host is missing")
    if "service" not in data:
        raise Refused("missing-field", "service is missing (null for a host result)")
    record.host_name = _text(data["host"], "host")
    service = opt_text("service")
    record.is_host = service is None
    record.nagios_name = record.metric_name = service
    attributes = data.get("attributes")
    attributes = {} if attributes is None else attributes
    if not isinstance(attributes, dict):
        raise Refused("bad-field", "attributes must be an object")
    record.service_uri = opt_text("uri", attributes) or None
    record.status, record.state = _json_state(data)
    if data.get("epoch") is not None:
        record.timestamp = _json_time(data["epoch"], "epoch")
    elif data.get("timestamp") is not None:
        record.timestamp = _json_time(data["timestamp"], "timestamp")
    else:
        raise Refused("missing-field", "neither epoch nor timestamp is given")
    record.output = opt_text("output") or ""
    record.long_output = opt_text("long_output") or ""
    record.perfdata = opt_text("perfdata") or ""
    if data.get("state_type") is not None:
        record.state_type = _state_type(_text(data["state_type"], "state_type"))
    attempt = data.get("attempt")
    if attempt is not None:
        if not _is_integer(attempt) or not 1 <= attempt <= 1000:
            raise Refused("bad-field", f"attempt {_show(attempt)} is not an integer from 1 to 1000")
        record.attempt = int(attempt)
    for field, key, source in (("site", "site", data), ("role", "role", data), ("vo", "vo", data),
                               ("gathered_at", "gathered_at", data), ("flavour", "flavour", attributes)):
        value = opt_text(key, source)
        if value:
            record.fields[field] = value
    return record


def _json_state(data: Dict[str, Any]) -> Tuple[Optional[str], Optional[int]]:
    """(status name, state number) from ``status`` and ``state``, each of which producers
    write as a name (``"CRITICAL"``) or a number (2). Two names or two numbers must agree."""
    names: List[str] = []
    numbers: List[int] = []
    for key in ("status", "state"):
        value = data.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, str):
            names.append(_text(value, key))
        elif _is_integer(value):
            numbers.append(int(value))
        else:
            raise Refused("bad-field", f"{key} {_show(value)} is neither a state name (OK, CRITICAL, UP, ...)"
                                       f" nor a number")
    if not names and not numbers:
        raise Refused("missing-field", "neither status nor state is given")
    if len(set(numbers)) > 1 or len({name.strip().upper() for name in names}) > 1:
        raise Refused("bad-status", f"status {_show(data.get('status'))} and state {_show(data.get('state'))} disagree")
    return (names[0] if names else None), (numbers[0] if numbers else None)


def _is_integer(value: Any) -> bool:
    """An integer as JSON (and JSON Schema) sees one: 2 or 2.0, never true/false."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _json_time(value: Any, key: str) -> float:
    """Epoch seconds (a number, or digits as text) or ISO 8601 text, from field ``key``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if abs(value) < 2**53 else math.inf
    if isinstance(value, str):
        try:
            return parse_timestamp(_text(value, key))
        except Refused as exc:
            raise Refused(exc.reason, f"{key}: {exc.message}; or give epoch seconds") from None
    raise Refused("bad-field", f"{key} {_show(value)} is neither epoch seconds nor an ISO 8601 time")


# -- record -> CheckResult -----------------------------------------------------

def _state(record: _Record) -> Tuple[int, Optional[str]]:
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


def _names(record: _Record, headers: typing.Mapping[str, str], mapping: Mapping) -> Tuple[str, Optional[str], Dict[str, str]]:
    by_uri = uri_host(record.service_uri) if record.service_uri else None
    hosts = (by_uri, record.host_name) if mapping.host_from == "serviceURI" else (record.host_name, by_uri)
    host = next((h for h in hosts if h), None)
    if host is None:
        raise Refused("missing-field", "no host: serviceURI and hostName are both missing or empty")
    services = ((record.nagios_name, record.metric_name) if mapping.service_from == "nagiosName"
                else (record.metric_name, record.nagios_name))
    service = None if record.is_host else next((s for s in services if s), None)
    if service is None and not record.is_host:
        raise Refused("missing-field", "no service: nagiosName and metricName are both missing or empty")
    values = dict(record.fields)
    for field in ("site", "role", "vo"):
        header = headers.get(field) if hasattr(headers, "get") else None
        if field not in values and isinstance(header, str) and header:
            values[field] = _text(header, f"header {field}")
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
    return len(text.encode("utf-8"))


def _cut_bytes(text: str, budget: int) -> str:
    """Longest prefix of ``text`` within ``budget`` UTF-8 bytes (never mid-character)."""
    raw = text.encode("utf-8")[:max(budget, 0)]
    return raw.decode("utf-8", "ignore")


def _limit_text(output: str, long_output: str, limit: int) -> Tuple[str, str]:
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


def _result(record: _Record, headers: typing.Mapping[str, str], mapping: Mapping, now: float) -> CheckResult:
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
    state, shown = _state(record)
    timestamp = _check_time(record.timestamp if record.timestamp is not None else math.nan, now)

    output, long_output = _tidy(record.output), _tidy(record.long_output).strip("\n")
    if "\n" in output:  # first line is the output, the rest goes before the long output
        output, rest = output.split("\n", 1)
        long_output = rest.strip("\n") + ("\n" + long_output if long_output else "")
    if shown and not output.upper().startswith(shown):
        output = f"{shown}: {output}" if output else shown
    perfdata = re.sub(r"[\r\n]+", " ", record.perfdata)  # perfdata is one line
    output, long_output = _limit_text(output, long_output, mapping.max_output_bytes)
    perfdata, perf_cut = _limit_perfdata(perfdata, mapping.max_output_bytes)
    if perf_cut:
        long_output += ("\n" if long_output else "") + "perfdata" + marker(perf_cut)

    attributes = {key: values[key] for key in ("site", "role", "vo", "flavour", "gathered_at") if values.get(key)}
    if record.service_uri:
        attributes["uri"] = record.service_uri
    if record.status is not None:
        attributes["status_text"] = record.status.strip()
    for key, value in attributes.items():
        _text(value, key)
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
            record = _record_from_json(text)
        else:
            record = _record_from_wlcg(text)
        return _result(record, headers if headers is not None else {}, mapping, now)
    except Refused:
        raise
    except Exception as e:  # noqa: BLE001 - contract 4: bad input gets a reason, never a crash
        raise Refused("decode-error", f"unexpected {type(e).__name__}: {_show(str(e), 120)}") from None
