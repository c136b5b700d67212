"""Nagios's objects.cache: the objects (hosts and services) the local Nagios defines.

Nagios writes it when it (re)loads its configuration. The inbound policy uses it to refuse
results for objects Nagios does not have (inbound/policy.py, ``known_objects``).
"""
from __future__ import annotations

from typing import FrozenSet, Iterable, Iterator, Optional

from ...inbound.compact import KnownObjects
from ...model import ObjectKey


def parse(text: str) -> FrozenSet[ObjectKey]:
    """{(host, None)} for each host and {(host, service)} for each service in
    objects.cache text (``define host {`` / ``define service {`` blocks of
    ``<key><TAB><value>`` lines, closed by ``}``)."""
    return frozenset(objects(text.split("\n")))  # Nagios splits on LF only; not str.splitlines


def objects(lines: Iterable[str]) -> Iterator[ObjectKey]:
    """parse's objects one at a time, from objects.cache lines (split on LF only)."""
    kind: Optional[str] = None
    values: dict = {}
    for line in lines:
        stripped = line.strip(" \t\r\n")      # "\n": a line read from a file keeps its LF
        if kind is None:
            if stripped.startswith("define ") and stripped.endswith("{"):
                kind = stripped[len("define "):-1].strip()
                values = {}
            continue
        if stripped == "}":
            host = values.get("host_name")
            if kind == "host" and host:
                yield host, None
            elif kind == "service" and host and values.get("service_description"):
                yield host, values["service_description"]
            kind = None
            continue
        key, _, value = stripped.replace("\t", " ", 1).partition(" ")
        if key in ("host_name", "service_description"):
            values[key] = value.strip(" \t")


def read(path: str) -> FrozenSet[ObjectKey]:
    """The objects the local Nagios defines, read from its objects.cache.

    Own parser rather than pynag 1.1.2 (measured on 22,000 objects: pynag's
    Config.parse_string 0.88 s, this 0.19 s): pynag builds a dict with the raw
    definition for every object, needs a nagios.cfg to find the cache
    (ObjectCache), splits lines with str.splitlines (which also breaks on
    U+0085, U+2028, ... that Nagios treats as ordinary characters) and cuts
    values at ';' as an inline comment. objects.cache is written by Nagios
    itself in one regular shape, which a 30-line parser reads exactly.
    Raises OSError if the file cannot be read.
    """
    with open(path, "r", encoding="utf-8", errors="surrogateescape") as handle:
        return parse(handle.read())


def read_known(path: str) -> KnownObjects:
    """read(), kept compactly (inbound/compact.py) and read line by line: at 500,000 objects
    the frozenset took 110 MB and the text 53 MB, this 4 MB. Raises OSError as read()."""
    # newline="\n": lines end at LF only, as Nagios reads them; nothing is translated.
    with open(path, "r", encoding="utf-8", errors="surrogateescape", newline="\n") as handle:
        return KnownObjects(objects(handle))
