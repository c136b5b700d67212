"""Immutable values that flow through the bridge: CheckResult and Message.

A CheckResult validates itself on construction, so nothing downstream has to
sanitise: a host or service name can never hold ``;``, a newline or another
control character, and a state is always in range.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import re
import threading
from typing import Mapping, NamedTuple, Optional, Tuple

SERVICE_STATES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
HOST_STATES = ("UP", "DOWN", "UNREACHABLE")
STATE_TYPES = ("SOFT", "HARD")

MAX_NAME_LENGTH = 255
# Control characters (C0, DEL, C1), the Nagios command field separator, and lone
# surrogates (text that cannot be written as UTF-8).
_BAD_NAME_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f;\ud800-\udfff]")


# Put where text of a result was cut (by the decoder's max_output_bytes, or to fit a core's
# limit), so a reader sees that something is missing and how much.
TRUNCATION_MARKER = " [truncated by msg-nagios-bridge: {n} bytes cut]"

# A monitored object: (host, service), service None for the host itself.
ObjectKey = Tuple[str, Optional[str]]


def truncation_marker(cut_bytes: int) -> str:
    """The visible note that ``cut_bytes`` bytes (UTF-8) of text were dropped."""
    return TRUNCATION_MARKER.format(n=cut_bytes)


class InvalidResult(ValueError):
    """A check result that must not exist: says which field and why."""


# Names check_name passed, so that an object's name, checked at every step of each of its
# results (decoded, made a CheckResult, made a command line), is tested once and then looked
# up. Only names that passed are kept, as exact str (a subclass could claim to equal one), so
# what check_name accepts is unchanged. Bounded: started again when full.
_PASSED: set = set()
PASSED_KEPT = 1024         # about 100 KB at most: a central bridge at grid scale is near its 50 MB


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a safe Nagios object name, else raise InvalidResult.

    Refuses rather than cleans: a renamed object would report on the wrong thing.
    """
    if type(value) is str and value in _PASSED:
        return value
    _check_name(kind, value)
    if type(value) is str:              # never a subclass: its __eq__ would answer look-ups
        if len(_PASSED) >= PASSED_KEPT:
            _PASSED.clear()
        _PASSED.add(value)
    return value


def _check_name(kind: str, value: str) -> None:
    if not isinstance(value, str):
        raise InvalidResult(f"{kind} must be text, got {type(value).__name__}")
    if not value or value.strip() != value:
        raise InvalidResult(f"{kind} {value[:80]!r} is empty or has surrounding blanks")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidResult(f"{kind} is {len(value)} characters long (limit {MAX_NAME_LENGTH})")
    bad = _BAD_NAME_CHARS.search(value)
    if bad:
        raise InvalidResult(f"{kind} {value[:80]!r} contains the forbidden character {bad.group()!r}")


@dataclasses.dataclass(frozen=True, init=False)
class CheckResult:
    """One outcome of a Nagios host check (service is None) or service check.

    ``output`` is the first line of plugin output, ``long_output`` the rest
    (real newlines), ``perfdata`` the text after ``|``. ``timestamp`` is the
    check time in seconds since the epoch. ``attributes`` carries optional
    extra fields (service flavour, service URI, VO...) as text.
    """

    host: str
    service: Optional[str]
    state: int
    state_type: str = "HARD"
    output: str = ""
    long_output: str = ""
    perfdata: str = ""
    timestamp: float = 0.0
    attempt: int = 1
    attributes: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __init__(self, host: str, service: Optional[str], state: int, state_type: str = "HARD",
                 output: str = "", long_output: str = "", perfdata: str = "", timestamp: float = 0.0,
                 attempt: int = 1, attributes: Optional[Mapping[str, str]] = None) -> None:
        # The fields in one update of the instance's dict: a frozen dataclass's own __init__
        # sets them one object.__setattr__ at a time: 2.16 µs (2.13-2.21) to make a result,
        # against 1.50 (1.48-1.52), medians of 5 processes (one is made for every result, in
        # and out). The mapping is copied: what the caller
        # changes in its own afterwards does not reach the result.
        vars(self).update(host=host, service=service, state=state, state_type=state_type, output=output,
                          long_output=long_output, perfdata=perfdata, timestamp=timestamp, attempt=attempt,
                          attributes={} if attributes is None else dict(attributes))
        self._check()

    def _check(self) -> None:
        check_name("host name", self.host)
        if self.service is not None:
            check_name("service description", self.service)
        limit = 3 if self.service is not None else 2
        if not isinstance(self.state, int) or isinstance(self.state, bool) or not 0 <= self.state <= limit:
            raise InvalidResult(f"state {self.state!r} is not an integer from 0 to {limit}")
        if self.state_type not in STATE_TYPES:
            raise InvalidResult(f"state type {self.state_type!r} is not SOFT or HARD")
        for name in ("output", "long_output", "perfdata"):
            if not isinstance(getattr(self, name), str):
                raise InvalidResult(f"{name} must be text")
        if "\n" in self.output or "\r" in self.output:
            raise InvalidResult("output must be a single line (long output goes in long_output)")
        if not isinstance(self.timestamp, (int, float)) or not 0 <= self.timestamp < 2**35:
            raise InvalidResult(f"timestamp {self.timestamp!r} is out of range")

    @property
    def is_host_check(self) -> bool:
        return self.service is None

    @property
    def state_name(self) -> str:
        return (HOST_STATES if self.is_host_check else SERVICE_STATES)[self.state]

    def identity(self) -> str:
        """A stable id: the same result read twice (after a crash) gets the same id."""
        # Each part followed by a NUL, hashed in one piece (the same bytes as a part at a time).
        text = "\0".join((self.host, self.service or "", str(self.state), self.state_type,
                          repr(float(self.timestamp)), self.output, self.long_output, self.perfdata))
        return hashlib.blake2b((text + "\0").encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


class Message(NamedTuple):
    """A STOMP message ready to send: destination, headers, body (bytes).

    A NamedTuple, not a frozen dataclass: one is made per result on the way out and one per
    entry taken from the spool, and a frozen dataclass's __init__ (a setattr per field) took
    0.56 µs (0.53-0.56) against 0.26 (0.26-0.27), medians of 5 processes."""

    message_id: str
    destination: str
    headers: Mapping[str, str]
    body: bytes
    # ``headers`` as the spool stores them (spool.headers_text's header lines), when whoever
    # made the message made them with the headers (outbound/routing.py build_message): the
    # spool then stores them as they are. None: the spool makes them from ``headers``.
    header_lines: Optional[str] = None


def result_to_dict(result: CheckResult) -> dict:
    """Plain data for the inbound spool (JSON); ``result_from_dict`` validates it again.

    Written out rather than dataclasses.asdict, which deep-copies and cost a
    fifth of the subscriber's time (benchmarks/inbound.py --profile).
    """
    return {"host": result.host, "service": result.service, "state": result.state,
            "state_type": result.state_type, "output": result.output, "long_output": result.long_output,
            "perfdata": result.perfdata, "timestamp": result.timestamp, "attempt": result.attempt,
            "attributes": dict(result.attributes)}


# The C string escaper json.dumps itself uses (json.encoder's module-level name).
_quoted = json.encoder.encode_basestring_ascii


def result_json(result: CheckResult) -> str:
    """``json.dumps(result_to_dict(result))``, byte for byte (tests/unit/test_model.py), made
    directly: json.dumps makes a new encoder at each call and formats a float through a Python
    function, a ninth of the subscriber's instructions a result (benchmarks/instructions.py).
    Anything but exact ints, a float or int time and text (an attribute that is not text, say)
    goes to json.dumps itself."""
    state, attempt, timestamp = result.state, result.attempt, result.timestamp
    if type(state) is not int or type(attempt) is not int or type(timestamp) not in (float, int):
        return json.dumps(result_to_dict(result))
    # CheckResult holds the time within 0 and 2**35, so repr is json's text for it (never nan).
    try:
        attributes = ", ".join([f"{_quoted(key)}: {_quoted(value)}" for key, value in result.attributes.items()])
        service = "null" if result.service is None else _quoted(result.service)
        return (f'{{"host": {_quoted(result.host)}, "service": {service}, "state": {state},'
                f' "state_type": {_quoted(result.state_type)}, "output": {_quoted(result.output)},'
                f' "long_output": {_quoted(result.long_output)}, "perfdata": {_quoted(result.perfdata)},'
                f' "timestamp": {timestamp!r}, "attempt": {attempt}, "attributes": {{{attributes}}}}}')
    except TypeError:               # not text: json.dumps says how it is written, or raises
        return json.dumps(result_to_dict(result))


def result_from_dict(data: dict) -> CheckResult:
    return CheckResult(**data)


class SpooledResults:
    """A result's body in the inbound spool (JSON of result_to_dict) and back again, for the
    subscriber and the core's writer of one bridge.

    ``encode`` remembers the last ``keep`` results it encoded (bodies up to ``MAX_BODY``
    bytes), keyed by the exact body; ``decode`` of one of those bodies hands back the result
    itself instead of parsing the JSON and validating it again (0.3 us instead of 8.5 in
    process; the Nagios writer spent 12 us less a result at grid scale: docs/performance.md). Decoding that body gives an equal result
    (tests/unit/test_model.py), so what the writer gets never depends on whether the result
    was remembered; one not remembered (evicted, given back and taken again, from an earlier
    run) is decoded. Bounded: at most ``keep`` results of at most MAX_BODY bytes each.
    ``keep`` 0 remembers nothing (a writer or subscriber alone, in tests and tools)."""

    MAX_BODY = 4096

    def __init__(self, keep: int = 0):
        self.keep = keep
        self._recent: "collections.OrderedDict[bytes, CheckResult]" = collections.OrderedDict()
        self._lock = threading.Lock()      # the subscriber encodes, the writer decodes

    def encode(self, result: CheckResult) -> bytes:
        body = result_json(result).encode("utf-8")
        if self.keep and len(body) <= self.MAX_BODY:
            with self._lock:
                self._recent[body] = result
                if len(self._recent) > self.keep:
                    self._recent.popitem(last=False)
        return body

    def decode(self, body: bytes) -> CheckResult:
        """The result in ``body``; raises ValueError or TypeError if it holds none."""
        if self.keep:
            with self._lock:
                result = self._recent.pop(body, None)
            if result is not None:
                return result
        return result_from_dict(json.loads(body))


class Refused(ValueError):
    """A message the bridge will not turn into a result.

    ``reason`` is a short code (``too-large``, ``bad-host-name``, ...);
    ``message`` says what and why, on one line.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
