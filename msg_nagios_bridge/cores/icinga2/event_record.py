"""The JSON text in which Icinga 2 hands check results to the bridge (docs/icinga2-notes.md).

One line of ``POST /v1/events?types=CheckResult`` is one event::

    {"type": "CheckResult", "host": "h1", "service": "s1", "timestamp": ...,
     "check_result": {"state": 2, "output": "CRITICAL - x\\nmore", "performance_data": ["a=1"],
                      "execution_start": ..., "execution_end": ..., "active": false,
                      "check_source": "...", "vars_after": {"state_type": 1, "attempt": 1}, ...}}

(``service`` is absent for a host.) The catch-up reads the same ``check_result`` from each
object's ``last_check_result`` and wraps it in the same shape (``catch_up_line``), so both
paths go through one parser and give the same CheckResult, hence the same message ids.

What is read, and why:

* ``state``, not ``exit_status``: Icinga keeps 0 in ``exit_status`` for passive results. A
  host's result carries a service state: OK and WARNING are UP, CRITICAL and UNKNOWN are DOWN
  (Icinga's own rule); Icinga never reports UNREACHABLE in a check result.
* The first line of ``output`` is the output, the rest the long output (the API keeps it whole).
* ``performance_data`` is a list (items may be numbers); joined with blanks.
* The check time is ``execution_end`` (``execution_start`` if there is none).
* ``vars_after.state_type`` 0 is SOFT, 1 HARD; ``vars_after.attempt`` the attempt.
* ``attributes``: ``check_source`` (the echo signal: the bridge's own results carry
  ``icinga2.check_source``) and ``check_type`` ACTIVE or PASSIVE (``active``).

``parse_event`` takes hostile text: it runs in linear time (Python's json, then a fixed walk of
a few keys) and raises nothing but ValueError, whatever the input.
"""
from __future__ import annotations

import json
import math
from typing import Any, Dict, Optional

from ...model import CheckResult, InvalidResult

# A line longer than this is refused (dead-lettered) by the reader, never buffered whole.
MAX_EVENT_BYTES = 1 << 20

# The marks kind under which the outbound spool keeps, per object, the newest check time the
# bridge has spooled (docs/icinga2.md, "Outbound").
MARKS_KIND = "icinga2-newest"

_MAX_INT_DIGITS = 20           # no number in an event needs more; longer ones are refused
_SERVICE_TO_HOST_STATE = (0, 0, 1, 1)   # OK, WARNING -> UP; CRITICAL, UNKNOWN -> DOWN
_STATE_TYPES = {0: "SOFT", 1: "HARD"}


class BadEvent(ValueError):
    """A line that is not a usable CheckResult event: the message says why."""


def _bounded_int(text: str) -> int:
    # Python refuses only past 4300 digits, and converting those is quadratic.
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise BadEvent(f"number with {len(text)} digits")
    return int(text)


def _no_constant(name: str) -> Any:
    raise BadEvent(f"{name} is not a number")


def _loads(text: str) -> Any:
    try:
        return json.loads(text, parse_int=_bounded_int, parse_constant=_no_constant)
    except BadEvent:
        raise
    except RecursionError:
        raise BadEvent("JSON nested too deeply") from None
    except ValueError as exc:       # json.JSONDecodeError is one
        raise BadEvent(f"not JSON: {str(exc)[:120]}") from None


def _number(where: Dict[str, Any], key: str, required: bool = True) -> Optional[float]:
    value = where.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadEvent(f"{key} {str(value)[:40]!r} is not a number")
    return value


def _integer(where: Dict[str, Any], key: str, default: Optional[int] = None) -> int:
    value = where.get(key)
    if value is None and default is not None:
        return default
    number = _number(where, key)
    if number != int(number):
        raise BadEvent(f"{key} {number!r} is not a whole number")
    return int(number)


def _text(where: Dict[str, Any], key: str, default: Optional[str] = None) -> str:
    value = where.get(key)
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise BadEvent(f"{key} is {type(value).__name__}, not text")
    return value


def _performance_data(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):          # not what 2.13 sends, but what it accepts
        items = [value]
    elif isinstance(value, list):
        items = value
    else:
        raise BadEvent(f"performance_data is {type(value).__name__}, not a list")
    parts = []
    for item in items:
        if isinstance(item, str):
            parts.append(item)
        elif isinstance(item, (int, float)) and not isinstance(item, bool) and math.isfinite(item):
            parts.append(repr(item))    # Icinga keeps an array item that is a number as a number
        else:
            raise BadEvent(f"performance_data item is {type(item).__name__}, not text")
    # Icinga does not check array items: a line break in one must not split a record.
    return " ".join(parts).replace("\r", " ").replace("\n", " ").strip()


def to_result(host: Any, service: Any, check_result: Any) -> CheckResult:
    """The CheckResult of an object's ``check_result`` (as in an event or ``last_check_result``)."""
    if not isinstance(check_result, dict):
        raise BadEvent("check_result is not an object")
    if not isinstance(host, str):
        raise BadEvent("host is not text")
    if service is not None and not isinstance(service, str):
        raise BadEvent("service is not text")
    state = _integer(check_result, "state")
    if not 0 <= state <= 3:
        raise BadEvent(f"state {state} is not 0 to 3")
    if service is None:
        state = _SERVICE_TO_HOST_STATE[state]
    vars_after = check_result.get("vars_after")
    if vars_after is None:
        vars_after = {}
    if not isinstance(vars_after, dict):
        raise BadEvent("vars_after is not an object")
    state_type = _STATE_TYPES.get(_integer(vars_after, "state_type", default=1))
    if state_type is None:
        raise BadEvent(f"vars_after.state_type {vars_after.get('state_type')!r} is not 0 or 1")
    attempt = _integer(vars_after, "attempt", default=1)
    if not 0 <= attempt < 1 << 31:
        raise BadEvent(f"attempt {attempt} is out of range")
    timestamp = _number(check_result, "execution_end", required=False)
    if timestamp is None:
        timestamp = _number(check_result, "execution_start")
    output = _text(check_result, "output", default="")
    first, _, rest = output.partition("\n")
    active = check_result.get("active", False)
    if not isinstance(active, bool):
        raise BadEvent("active is not true or false")
    try:
        return CheckResult(
            host=host,
            service=service,
            state=state,
            state_type=state_type,
            # A plugin may print a CR (Windows agents end lines with CRLF): a blank, as from Nagios.
            output=first.replace("\r", " "),
            long_output=rest.strip("\n"),
            perfdata=_performance_data(check_result.get("performance_data")),
            timestamp=float(timestamp),
            attempt=attempt,
            attributes={"check_source": _text(check_result, "check_source", default=""),
                        "check_type": "ACTIVE" if active else "PASSIVE"},
        )
    except InvalidResult as exc:
        raise BadEvent(str(exc)) from None


def parse_event(text: str) -> CheckResult:
    """One line of the event stream (or a ``catch_up_line``) -> a CheckResult, or BadEvent."""
    if len(text) > MAX_EVENT_BYTES:
        raise BadEvent(f"event longer than {MAX_EVENT_BYTES} characters")
    event = _loads(text)
    if not isinstance(event, dict):
        raise BadEvent(f"event is {type(event).__name__}, not an object")
    if event.get("type") != "CheckResult":
        raise BadEvent(f"event type {str(event.get('type'))[:40]!r} is not CheckResult")
    return to_result(event.get("host"), event.get("service"), event.get("check_result"))


def catch_up_line(host: str, service: Optional[str], check_result: Any) -> bytes:
    """An object's ``last_check_result`` as a line ``parse_event`` reads like a stream event."""
    event: Dict[str, Any] = {"type": "CheckResult", "host": host, "check_result": check_result,
                             "catch_up": True}
    if service is not None:
        event["service"] = service
    # ASCII: a lone surrogate in a name or output (JSON allows one) still makes a line.
    return json.dumps(event, sort_keys=True, separators=(",", ":")).encode("ascii")


def object_key(host: str, service: Optional[str]) -> str:
    """Icinga's own name of an object: ``host`` or ``host!service``."""
    return host if service is None else f"{host}!{service}"
