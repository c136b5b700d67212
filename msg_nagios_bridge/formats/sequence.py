"""The per-route sequence headers (loss accounting, docs/loss-accounting.md).

A producing bridge numbers the messages of each route 1, 2, 3 ... in ``route_seq`` when they
enter its outbound spool, and names the run of numbers in ``route_epoch`` (a random id made
when the counter was made: a new spool, a lost counter). A receiver tracks the numbers per
stream: the producer (``site`` and ``nagios_host``), the ``route`` and the epoch.

Pure: header values in, a Stamp or a reason out; linear in nothing (every check is on a
bounded length first).
"""
from __future__ import annotations

import dataclasses
import re
import secrets
from typing import Mapping, Union

SEQ_HEADER = "route_seq"
EPOCH_HEADER = "route_epoch"
ROUTE_HEADER = "route"
PRODUCER_HEADERS = ("site", "nagios_host")

MAX_SEQ = (1 << 63) - 1          # fits SQLite's INTEGER; 19 digits
MAX_NAME = 200                   # characters of a producer's site, host or route name
_SEQ = re.compile(r"[1-9][0-9]{0,18}")
_EPOCH = re.compile(r"[0-9a-zA-Z_-]{1,64}")


def new_epoch() -> str:
    """A random 64-bit id, as 16 hex digits."""
    return secrets.token_hex(8)


@dataclasses.dataclass(frozen=True)
class Stamp:
    """One message's place in its stream."""

    producer: str      # "site/nagios_host"
    route: str
    epoch: str
    seq: int


# Why a message is left out of the accounting (a counter each, never a refusal of the message).
UNNUMBERED = "unnumbered"        # no route_seq header: an older producer, or another tool
MALFORMED = "malformed"          # a header not of the form above


def parse(headers: Mapping[str, str]) -> Union[Stamp, str]:
    """The Stamp of a message, or UNNUMBERED / MALFORMED."""
    seq = headers.get(SEQ_HEADER)
    if seq is None:
        return UNNUMBERED
    epoch = headers.get(EPOCH_HEADER, "")
    route = headers.get(ROUTE_HEADER, "")
    site, host = (headers.get(name, "") for name in PRODUCER_HEADERS)
    # Lengths first: a regex is never run on more than a bounded text.
    if not (isinstance(seq, str) and len(seq) <= 19 and _SEQ.fullmatch(seq)):
        return MALFORMED
    if not (isinstance(epoch, str) and len(epoch) <= 64 and _EPOCH.fullmatch(epoch)):
        return MALFORMED
    if not all(isinstance(text, str) and 0 < len(text) <= MAX_NAME for text in (route, site, host)):
        return MALFORMED
    number = int(seq)
    if number > MAX_SEQ:
        return MALFORMED
    return Stamp(f"{site}/{host}", route, epoch, number)
