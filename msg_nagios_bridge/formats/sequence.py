"""The per-route sequence headers (loss accounting, docs/loss-accounting.md).

A producing bridge numbers the messages of each route 1, 2, 3 ... when they enter its outbound
spool: ``route_seq: <epoch>:<number>``, where the epoch names the run of numbers (a random id
made with the counter: a new spool, a lost counter). One header, not two: stomp.py parses every
header with regular expressions, about 1.6 us a header and message at the receiver. A receiver
tracks the numbers per stream: the producer (``site`` and ``nagios_host``), the ``route`` and
the epoch.

Pure: header values in, a Stamp or a reason out; linear in nothing (every check is on a
bounded length first).
"""
from __future__ import annotations

import dataclasses
import re
import secrets
from typing import Mapping, Union

SEQ_HEADER = "route_seq"
ROUTE_HEADER = "route"
PRODUCER_HEADERS = ("site", "nagios_host")
# What a stream's key and a message's place in it are read from: a signing producer signs
# them (trust/signing.py), and a receiver that requires signatures counts only messages
# whose signature covers every one of them that the message carries.
STREAM_HEADERS = PRODUCER_HEADERS + (ROUTE_HEADER, SEQ_HEADER)

MAX_SEQ = (1 << 63) - 1          # fits SQLite's INTEGER; 19 digits
MAX_NAME = 200                   # characters of a producer's site, host or route name
MAX_EPOCH = 64                   # characters of an epoch id
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


def stamp_text(epoch: str, number: int) -> str:
    """The value of SEQ_HEADER."""
    return f"{epoch}:{number}"


def parse(headers: Mapping[str, str]) -> Union[Stamp, str]:
    """The Stamp of a message, or UNNUMBERED / MALFORMED."""
    value = headers.get(SEQ_HEADER)
    if value is None:
        return UNNUMBERED
    # Lengths first: a regex is never run on more than a bounded text.
    if not isinstance(value, str) or len(value) > MAX_EPOCH + 1 + 19:
        return MALFORMED
    epoch, _, seq = value.rpartition(":")
    if not (_EPOCH.fullmatch(epoch) and _SEQ.fullmatch(seq)):
        return MALFORMED
    route = headers.get(ROUTE_HEADER, "")
    site, host = (headers.get(name, "") for name in PRODUCER_HEADERS)
    if not all(isinstance(text, str) and 0 < len(text) <= MAX_NAME for text in (route, site, host)):
        return MALFORMED
    number = int(seq)
    if number > MAX_SEQ:
        return MALFORMED
    return Stamp(f"{site}/{host}", route, epoch, number)
