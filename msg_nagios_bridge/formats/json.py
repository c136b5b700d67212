"""The JSON message format: one object per result, UTF-8, keys sorted.

Keys: ``host``, ``service`` (null for host checks), ``state`` (0-3),
``status`` (OK/WARNING/... or UP/DOWN/UNREACHABLE), ``state_type``,
``attempt``, ``output``, ``long_output``, ``perfdata``, ``timestamp``
(ISO 8601 UTC), ``epoch``, ``site``, ``role``, ``gathered_at``, ``id`` and
``attributes`` (flavour, uri, ...), plus ``vo`` when configured.
"""
from __future__ import annotations

import json
from typing import Mapping

from ..model import CheckResult
from .wlcg import format_time


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
