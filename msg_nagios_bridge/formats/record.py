"""The neutral record both inbound formats are read into, and the field readers they share.

formats/wlcg.py and formats/json.py each read a body into a Record; formats/decode.py turns a
Record into a CheckResult. Every reader raises Refused (with a reason code) and nothing else.
"""
from __future__ import annotations

import calendar
import dataclasses
import datetime
import functools
import re
from typing import Any, Dict, Optional

from ..display import quoted as _show
from ..model import Refused

_ISO_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})?")


@dataclasses.dataclass
class Record:
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


def text_field(value: Any, key: str) -> str:
    """``value`` as safe text: a str without NUL or lone surrogates."""
    if not isinstance(value, str):
        raise Refused("bad-field", f"{key} must be text, got {type(value).__name__}")
    if "\x00" in value:
        raise Refused("nul-byte", f"{key} contains a NUL character")
    if value.isascii():
        return value                    # no surrogate can be in it
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Refused("bad-unicode", f"{key} contains a lone surrogate") from None
    return value


MAX_CACHED_TIMESTAMP = 48      # characters: longer texts are parsed every time, never kept


def parse_timestamp(text: str) -> float:
    """ISO 8601 (``2009-09-21T21:35:48Z``, fractions and offsets tolerated,
    no zone = UTC) or plain epoch digits; raises Refused("bad-timestamp").

    Results of one second share its text, so short texts are remembered (a bounded cache of
    short keys: hostile texts can only churn it): a tenth of decoding a record."""
    if len(text) <= MAX_CACHED_TIMESTAMP:
        return _parse_short_timestamp(text)
    return _parse_timestamp(text)


def _parse_timestamp(text: str) -> float:
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


_parse_short_timestamp = functools.lru_cache(maxsize=1024)(_parse_timestamp)


def state_type(value: str) -> str:
    kind = value.strip().upper()
    if kind not in ("SOFT", "HARD"):
        raise Refused("bad-field", f"state type {_show(value)} is not SOFT or HARD")
    return kind
