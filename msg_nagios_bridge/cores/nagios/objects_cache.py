"""Nagios's objects.cache: the objects (hosts and services) the local Nagios defines.

Nagios writes it when it (re)loads its configuration. The inbound policy uses it to refuse
results for objects Nagios does not have (inbound/policy.py, ``known_objects``).
"""
from __future__ import annotations

import re
from typing import BinaryIO, FrozenSet, Iterable, Iterator, Optional

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


# A line objects() may act on: after blanks, "define ", "}", "host_name" or "service_description"
# (a key line's key is a prefix of the line). Matched from the LF before it.
_MAY_MATTER = re.compile(rb"\n[ \t\r]*(?:define |\}|host_name|service_description)[^\n]*")
BLOCK = 1 << 16     # bytes read at a time (1 MiB: no faster, 4 MB more at its peak)


def lines_that_matter(handle: BinaryIO, block: int = BLOCK) -> Iterator[str]:
    """The lines of an objects.cache opened in binary (split on LF only, as Nagios splits them)
    that objects() may act on, decoded as UTF-8 with surrogateescape; objects() passes over
    every other line, so it gives from these the objects it gives from all of them.

    Why: at grid scale (500,000 objects, 17 million lines, 397 MB) a read with objects() over
    every line cost 5.2 s of CPU, 2.5 s this way (3 runs each); one regex over each 64 KiB read
    skips, in C, the 7 lines in 8 that name neither a block nor its host or service. A line longer than a block
    is gathered in pieces and joined once, so the time is linear in the file however its
    lines fall (decoding a line alone gives what decoding the file gives: LF is never part of
    a UTF-8 sequence).
    """
    if block < 1:
        raise ValueError(f"block must be at least 1 byte, not {block}")
    rest = b"\n"            # the line not yet ended, from the LF before it (the first line has none)
    pieces = []
    while True:
        data = handle.read(block)
        if not data:
            break
        last = data.rfind(b"\n")
        if last < 0:
            pieces.append(data)
            continue
        text = b"".join([rest, *pieces, data])
        pieces = []
        end = len(text) - len(data) + last + 1      # just past the last LF: whole lines only
        for line in _MAY_MATTER.findall(text, 0, end):
            yield line[1:].decode("utf-8", "surrogateescape")
        rest = text[end - 1:]
    for line in _MAY_MATTER.findall(b"".join([rest, *pieces])):
        yield line[1:].decode("utf-8", "surrogateescape")


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
    with open(path, "rb") as handle:
        return frozenset(objects(lines_that_matter(handle)))


def read_known(path: str) -> KnownObjects:
    """read(), kept compactly (inbound/compact.py) and read in blocks: at 500,000
    objects the frozenset took 110 MB and the text 53 MB, this 4 MB. Raises OSError as read()."""
    with open(path, "rb") as handle:
        return KnownObjects(objects(lines_that_matter(handle)))
