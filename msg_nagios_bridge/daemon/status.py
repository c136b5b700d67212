"""The status snapshot: what the main loop writes to status.json, and what ``status``,
``check`` and the metrics read.

status.json holds one JSON object (schema 1), padded with spaces to whole 64 KiB blocks::

    schema          1 (files written before the schema had a number have the same keys: read as 1)
    time, pid       when, and by which process, it was written (epoch seconds)
    states          {part: state text}, e.g. "publisher": "connected to b1:61613"
    since           {part: when the part last went from up to held up, or back}
    counters        {name: count}, e.g. "published", "refused.bad-status"
    last            {what: when it last succeeded}, e.g. "publish", "inject"
    errors          [[when, text], ...]: the last few errors, oldest first
    spool, inbound_spool
                    {depth, bytes, oldest_age (s, or null when empty), dead_letters}: the
                    outbound and the inbound spool, each only when its direction is on
    sequences       loss accounting (inbound/sequence.py; only with inbound.loss_accounting):
                    {"counters": {name: count}, "streams": [{producer, route, epoch, highest,
                    missing, late, duplicates, received, lost, untracked, gaps, oldest_gap_age
                    (s, or null), previous_epoch (or null), last_seen}, ...], "forgotten":
                    {streams, received, late, duplicates, lost, untracked}: the sums of the
                    streams forgotten after max_age without a message}
    numbering       the producer's side (outbound spool): {route: {"epoch": id, "last": the
                    last number given}}; only with outbound on

A reader ignores keys it does not know (a newer writer may add some) and fills those an older
writer did not have with empty values; anything else is a StatusError that says what is wrong.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import tempfile
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

SCHEMA = 1
BLOCK = 65536      # the padding: see write()

log = logging.getLogger(__name__)


class StatusError(Exception):
    """status.json exists but cannot be read as a status; the message says why."""


@dataclasses.dataclass(frozen=True)
class SpoolGauges:
    """One spool's gauges at the time of the snapshot."""

    depth: int = 0
    bytes: int = 0
    oldest_age: Optional[float] = None      # seconds; None when the spool is empty
    dead_letters: int = 0


@dataclasses.dataclass(frozen=True)
class Status:
    """One snapshot of the daemon (see the module docstring for the JSON form)."""

    time: float
    pid: int
    states: Mapping[str, str] = dataclasses.field(default_factory=dict)
    since: Mapping[str, float] = dataclasses.field(default_factory=dict)
    counters: Mapping[str, int] = dataclasses.field(default_factory=dict)
    last: Mapping[str, float] = dataclasses.field(default_factory=dict)
    errors: Tuple[Tuple[float, str], ...] = ()
    spool: Optional[SpoolGauges] = None
    inbound_spool: Optional[SpoolGauges] = None
    sequences: Optional[Mapping[str, Any]] = None
    numbering: Optional[Mapping[str, Mapping[str, Any]]] = None

    SPOOLS = ("spool", "inbound_spool")

    def spools(self) -> Dict[str, SpoolGauges]:
        """{"spool": ..., "inbound_spool": ...}, each only when that direction is on."""
        return {name: getattr(self, name) for name in self.SPOOLS if getattr(self, name) is not None}

    def to_json(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {
            "schema": SCHEMA, "time": self.time, "pid": self.pid,
            "states": dict(self.states), "since": dict(self.since),
            "counters": dict(self.counters), "last": dict(self.last),
            "errors": [[when, text] for when, text in self.errors]}
        for name, gauges in self.spools().items():
            data[name] = dataclasses.asdict(gauges)
        if self.sequences is not None:
            data["sequences"] = self.sequences
        if self.numbering is not None:
            data["numbering"] = {route: dict(value) for route, value in self.numbering.items()}
        return data

    def streams(self) -> List[Mapping[str, Any]]:
        """The loss accounting's rows, one a (producer, route); [] without it."""
        return list(self.sequences["streams"]) if self.sequences else []

    def forgotten(self) -> Mapping[str, int]:
        """The sums of the streams the loss accounting forgot (not seen for max_age): with
        the rows', totals that never go down. {} without loss accounting."""
        return dict(self.sequences.get("forgotten") or {}) if self.sequences else {}

    @classmethod
    def from_json(cls, data: Any) -> "Status":
        """The status in ``data`` (a decoded status.json); StatusError if it is not one."""
        if not isinstance(data, dict):
            raise StatusError(f"not a JSON object but {type(data).__name__}")
        schema = data.get("schema", 1)
        try:
            return cls(
                time=_number(data, "time"), pid=_integer(data, "pid"),
                states=_mapping(data, "states", str), since=_mapping(data, "since", float),
                counters=_mapping(data, "counters", int), last=_mapping(data, "last", float),
                errors=_errors(data.get("errors", [])),
                spool=_gauges(data, "spool"), inbound_spool=_gauges(data, "inbound_spool"),
                sequences=_sequences(data.get("sequences")), numbering=_numbering(data.get("numbering")))
        except StatusError as exc:
            if isinstance(schema, int) and schema > SCHEMA:
                raise StatusError(f"{exc} (written by a newer release: schema {schema}, "
                                  f"this one reads {SCHEMA})") from None
            raise


def _number(data: Mapping, key: str, *, optional: bool = False) -> Optional[float]:
    value = data.get(key)
    if value is None and optional and key in data:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        # json reads NaN and Infinity: a status time of either would never be stale.
        raise StatusError(f"{key} is {'missing' if key not in data else repr(value)[:40]}, not a number")
    return float(value)


def _integer(data: Mapping, key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise StatusError(f"{key} is {'missing' if key not in data else repr(value)[:40]}, not an integer")
    return value


def _mapping(data: Mapping, key: str, kind: type) -> Dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise StatusError(f"{key} is not a JSON object")
    check = _integer if kind is int else _number if kind is float else None
    for name, item in value.items():
        if check is not None:
            try:
                check(value, name)
            except StatusError as exc:
                raise StatusError(f"{key}.{exc}") from None
        elif not isinstance(item, str):
            raise StatusError(f"{key}.{name} is {repr(item)[:40]}, not a string")
    return {name: (float(item) if kind is float else item) for name, item in value.items()}


def _errors(value: Any) -> Tuple[Tuple[float, str], ...]:
    if not isinstance(value, list) or not all(
            isinstance(item, list) and len(item) == 2 and isinstance(item[1], str)
            and isinstance(item[0], (int, float)) for item in value):
        raise StatusError("errors is not a list of [time, text]")
    return tuple((float(when), text) for when, text in value)


def _gauges(data: Mapping, key: str) -> Optional[SpoolGauges]:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise StatusError(f"{key} is not a JSON object")
    try:
        return SpoolGauges(depth=_integer(value, "depth"), bytes=_integer(value, "bytes"),
                           oldest_age=_number(value, "oldest_age", optional=True),
                           dead_letters=_integer(value, "dead_letters"))
    except StatusError as exc:
        raise StatusError(f"{key}.{exc}") from None


_FORGOTTEN_COUNTS = ("streams", "received", "late", "duplicates", "lost", "untracked")
_STREAM_COUNTS = ("highest", "missing", "late", "duplicates", "received", "lost", "untracked", "gaps")


def _sequences(value: Any) -> Optional[Dict[str, Any]]:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("streams", []), list):
        raise StatusError("sequences is not a JSON object with a list of streams")
    counters = _mapping(value, "counters", int)
    streams = []
    for index, row in enumerate(value.get("streams", [])):
        if not isinstance(row, dict):
            raise StatusError(f"sequences.streams[{index}] is not a JSON object")
        try:
            checked = {name: _integer(row, name) for name in _STREAM_COUNTS}
            checked["oldest_gap_age"] = _number(row, "oldest_gap_age", optional=True)
        except StatusError as exc:
            raise StatusError(f"sequences.streams[{index}].{exc}") from None
        for name in ("producer", "route", "epoch"):
            if not isinstance(row.get(name), str):
                raise StatusError(f"sequences.streams[{index}].{name} is not a string")
            checked[name] = row[name]
        previous = row.get("previous_epoch")
        checked["previous_epoch"] = previous if isinstance(previous, str) else None
        last_seen = row.get("last_seen")
        checked["last_seen"] = float(last_seen) if isinstance(last_seen, (int, float)) else None
        streams.append(checked)
    # The sums of the streams forgotten after max_age idle (absent in a status before them).
    forgotten = _mapping(value, "forgotten", int) if "forgotten" in value else {}
    return {"counters": counters, "streams": streams,
            "forgotten": {name: forgotten.get(name, 0) for name in _FORGOTTEN_COUNTS}}


def _numbering(value: Any) -> Optional[Dict[str, Dict[str, Any]]]:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
            isinstance(item, dict) and isinstance(item.get("epoch"), str) and isinstance(item.get("last"), int)
            and not isinstance(item.get("last"), bool) for item in value.values()):
        raise StatusError("numbering is not a JSON object of {epoch, last} per route")
    return {route: {"epoch": item["epoch"], "last": item["last"]} for route, item in value.items()}


def read(path: str) -> Optional[Status]:
    """The status in ``path``; None when there is none (the bridge never ran with this spool
    directory); StatusError when it cannot be read or is not a status."""
    for attempt in range(2):
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StatusError(f"cannot read {path}: {exc.strerror}") from None
        try:
            data = json.loads(text)
            break
        except ValueError as exc:
            if attempt:
                raise StatusError(f"{path} is not JSON: {exc}") from None
            time.sleep(0.2)     # caught mid-rewrite (in place, on a full disk): look again
    try:
        return Status.from_json(data)
    except StatusError as exc:
        raise StatusError(f"{path} is not a bridge status: {exc}") from None


def write(path: str, status: Status) -> None:
    """Atomically replace ``path`` with ``status`` (best effort: errors are logged, not raised).

    The text is padded with spaces to whole BLOCKs: when the spool's filesystem is full and no
    new file can be made, the old one is overwritten in place (same size, no new blocks
    needed), so the status still says why the bridge waits."""
    tmp = None
    data = json.dumps(status.to_json(), sort_keys=True)
    data += " " * (-len(data) % BLOCK)
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".status.")
        with os.fdopen(fd, "w") as handle:
            handle.write(data)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            _write_in_place(path, data)
        else:
            log.debug("cannot write %s: %s", path, exc)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)      # never leave a temp file behind on a full disk


def _write_in_place(path: str, data: str) -> None:
    try:
        with open(path, "r+", encoding="utf-8") as handle:
            size = os.fstat(handle.fileno()).st_size
            if len(data) <= size:
                handle.write(data + " " * (size - len(data)))
    except OSError as exc:
        log.debug("cannot rewrite %s in place: %s", path, exc)
