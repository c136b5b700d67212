"""The JSON message format: one object per result, UTF-8, keys sorted.

Keys: ``host``, ``service`` (null for host checks), ``state`` (0-3),
``status`` (OK/WARNING/... or UP/DOWN/UNREACHABLE), ``state_type``,
``attempt``, ``output``, ``long_output``, ``perfdata``, ``timestamp``
(ISO 8601 UTC), ``epoch``, ``site``, ``role``, ``gathered_at``, ``id`` and
``attributes`` (flavour, uri, ...), plus ``vo`` when configured.
"""
from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..display import quoted as _show
from ..model import CheckResult, Refused
from .record import Record, parse_timestamp, state_type, text_field
from .wlcg import format_time

MAX_JSON_DEPTH = 6
# A result needs a handful of objects and arrays. Counted as bytes before parsing (brackets
# inside strings count too): a mebibyte of tiny arrays costs json.loads and the garbage
# collector half a second to build and free, linear but needless.
MAX_JSON_BRACKETS = 10_000


def encode(result: CheckResult, fields: Mapping[str, str]) -> str:
    record = {
        "id": result.identity(),
        "host": result.host,
        "service": result.service,
        "state": result.state,
        "status": result.state_name,
        "state_type": result.state_type,
        "attempt": result.attempt,
        "output": result.output,
        "long_output": result.long_output,
        "perfdata": result.perfdata,
        "timestamp": format_time(result.timestamp),
        "epoch": int(result.timestamp),
        "site": fields["siteName"],
        "role": fields.get("role", ""),
        "gathered_at": fields["gatheredAt"],
        "attributes": dict(result.attributes),
    }
    if fields.get("voName"):
        record["vo"] = fields["voName"]
    return json.dumps(record, sort_keys=True, ensure_ascii=False)


# -- decode: a received body -> Record (formats/decode.py makes the CheckResult) ------

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


def read_record(text: str) -> Record:
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

    def opttext_field(key: str, source: Dict[str, Any] = data) -> Optional[str]:
        value = source.get(key)
        return None if value is None else text_field(value, key)

    record = Record()
    if "host" not in data:
        raise Refused("missing-field", "host is missing")
    if "service" not in data:
        raise Refused("missing-field", "service is missing (null for a host result)")
    record.host_name = text_field(data["host"], "host")
    service = opttext_field("service")
    record.is_host = service is None
    record.nagios_name = record.metric_name = service
    attributes = data.get("attributes")
    attributes = {} if attributes is None else attributes
    if not isinstance(attributes, dict):
        raise Refused("bad-field", "attributes must be an object")
    record.service_uri = opttext_field("uri", attributes) or None
    record.status, record.state = _json_state(data)
    if data.get("epoch") is not None:
        record.timestamp = _json_time(data["epoch"], "epoch")
    elif data.get("timestamp") is not None:
        record.timestamp = _json_time(data["timestamp"], "timestamp")
    else:
        raise Refused("missing-field", "neither epoch nor timestamp is given")
    record.output = opttext_field("output") or ""
    record.long_output = opttext_field("long_output") or ""
    record.perfdata = opttext_field("perfdata") or ""
    if data.get("state_type") is not None:
        record.state_type = state_type(text_field(data["state_type"], "state_type"))
    attempt = data.get("attempt")
    if attempt is not None:
        if not _is_integer(attempt) or not 1 <= attempt <= 1000:
            raise Refused("bad-field", f"attempt {_show(attempt)} is not an integer from 1 to 1000")
        record.attempt = int(attempt)
    for field, key, source in (("site", "site", data), ("role", "role", data), ("vo", "vo", data),
                               ("gathered_at", "gathered_at", data), ("flavour", "flavour", attributes)):
        value = opttext_field(key, source)
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
            names.append(text_field(value, key))
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
            return parse_timestamp(text_field(value, key))
        except Refused as exc:
            raise Refused(exc.reason, f"{key}: {exc.message}; or give epoch seconds") from None
    raise Refused("bad-field", f"{key} {_show(value)} is neither epoch seconds nor an ISO 8601 time")
