"""Inbound policy: who may inject which results into the local core. Pure.

FAIL-SAFE DEFAULT: a Policy with no rules refuses every result. Injecting
results is a way into an administrator's tool (contract 5), so it must be
switched on explicitly, e.g.
``Rule(senders=("*",), hosts=("*",), services=("*",))`` to accept everything.

A result passes when one rule matches all of: the sender, the host, and the
service (or, for a host result, that rule has ``host_checks=True``). Patterns
are ``fnmatch`` patterns matched case-sensitively (Nagios names are
case-sensitive). A rule with ``exact_senders=True`` compares senders as exact
strings instead: a certificate DN may hold ``*``, ``?`` or ``[...]``, which as
a pattern would match other senders (or not even itself). Then, if
``known_objects`` is set, the (host, service) pair (service None for a host)
must be one the local Nagios defines: Nagios would otherwise log and drop the
result, where the bridge can dead-letter it with a reason. It also closes a
side door: Nagios accepts a host's *address* in place of its name in
PROCESS_*_CHECK_RESULT, so a host pattern alone can be sidestepped with an
address; with known_objects only real names pass.

Refusal reasons: ``no-sender``, ``sender-not-allowed``, ``host-not-allowed``,
``service-not-allowed``, ``host-check-not-allowed``, ``unknown-object``.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import typing
from typing import Container, Optional, Tuple

from ..display import quoted as _show
from ..model import CheckResult, ObjectKey, Refused
from .compact import KnownObjects


def _patterns(kind: str, value: object) -> Tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (tuple, list)):
        raise ValueError(f"{kind} must be a list of patterns, got {value!r}")
    if not all(isinstance(p, str) and p for p in value):
        raise ValueError(f"{kind} must hold non-empty strings, got {value!r}")
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class Rule:
    """Senders matching ``senders`` may send results for ``hosts`` x ``services``.

    Host results (no service) only when ``host_checks`` is True. With
    ``exact_senders`` the senders are exact strings (e.g. certificate DNs), not patterns.
    """

    senders: Tuple[str, ...]
    hosts: Tuple[str, ...]
    services: Tuple[str, ...] = ()
    host_checks: bool = False
    exact_senders: bool = False

    def __post_init__(self) -> None:
        for name in ("senders", "hosts", "services"):
            object.__setattr__(self, name, _patterns(name, getattr(self, name)))
        for name in ("host_checks", "exact_senders"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def allows_sender(self, sender: str) -> bool:
        return sender in self.senders if self.exact_senders else _matches(sender, self.senders)


@dataclasses.dataclass(frozen=True)
class Policy:
    """The inbound policy. No rules = refuse everything (fail-safe).

    ``sender_header``: the message header that names the sender: by default the
    publisher's own ``nagios_host`` header (which a sender can forge: restrict
    who may publish at the broker), or ``JMSXUserID``, the identity ActiveMQ
    stamps on each message with ``populateJMSXUserID`` (docs/inbound.md).
    ``known_objects``: {(host, service or None)} the local Nagios defines, or
    None to skip that check; kept as compact.KnownObjects (8 bytes an object).
    """

    rules: Tuple[Rule, ...] = ()
    sender_header: str = "nagios_host"
    known_objects: Optional[Container[ObjectKey]] = None

    def __post_init__(self) -> None:
        if not isinstance(self.rules, (tuple, list)) or not all(isinstance(r, Rule) for r in self.rules):
            raise ValueError("rules must be a list of Rule")
        object.__setattr__(self, "rules", tuple(self.rules))
        if self.known_objects is not None:
            object.__setattr__(self, "known_objects", KnownObjects.of(self.known_objects))


def _matches(name: str, patterns: Tuple[str, ...]) -> bool:
    # "*" (the usual rule) needs no pattern matching: it matches any name (looked for first,
    # in C: the generator alone cost 1 us a pattern list, three lists a result).
    return "*" in patterns or any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _what(result: CheckResult) -> str:
    """The result's name, for a refusal (made only when one is raised)."""
    return f"{result.host}" + (f"/{result.service}" if result.service is not None else " (host result)")


def sender_of(policy: Policy, headers: typing.Mapping[str, str]) -> str:
    """The sender identity of a message ("" when the header is missing)."""
    value = headers.get(policy.sender_header, "") if hasattr(headers, "get") else ""
    return value if isinstance(value, str) else ""


def check_sender(policy: Policy, sender: str) -> None:
    """Return if some rule allows ``sender``; else raise Refused (``no-sender``,
    ``sender-not-allowed``). Judged before the body is decoded: a sender no rule names costs no
    decoding, and nothing it sends counts in the loss accounting (inbound/sequence.py)."""
    if not isinstance(sender, str) or not sender:
        raise Refused("no-sender", f"the message has no {policy.sender_header!r} sender")
    for rule in policy.rules:       # a loop, not any() over a generator and its frame:
        if rule.allows_sender(sender):   # fewer instructions for the usual single rule
            return
    hint = " (the policy has no rules: inbound results are off)" if not policy.rules else ""
    raise Refused("sender-not-allowed", f"sender {_show(sender)} may not send results{hint}")


def check(policy: Policy, result: CheckResult, sender: str) -> None:
    """Return if ``sender`` may inject ``result``; else raise Refused with a reason.

    The reason names the furthest step any sender-matching rule got to, so an
    operator sees whether the host or the service is the problem.
    """
    if not isinstance(sender, str) or not sender:
        raise Refused("no-sender", f"result for {_show(_what(result))} has no {policy.sender_header!r} sender")
    # The furthest step a rule got to: 1 its sender, 2 and its host, 3 and the service (or a
    # host result). One loop, stopping at the first rule that allows it all (nearly always the
    # first rule: a list per step cost a Python call each, every result).
    furthest = 0
    for rule in policy.rules:
        if not rule.allows_sender(sender):
            continue
        furthest = max(furthest, 1)
        if not _matches(result.host, rule.hosts):
            continue
        furthest = 2
        if rule.host_checks if result.service is None else _matches(result.service, rule.services):
            furthest = 3
            break
    if furthest == 0:
        hint = " (the policy has no rules: inbound results are off)" if not policy.rules else ""
        raise Refused("sender-not-allowed", f"sender {_show(sender)} may not send results{hint}")
    if furthest == 1:
        raise Refused("host-not-allowed", f"sender {_show(sender)} may not send results for host {_show(result.host)}")
    if furthest == 2:
        if result.service is None:
            raise Refused("host-check-not-allowed",
                          f"sender {_show(sender)} may not send host results for {_show(result.host)}")
        raise Refused("service-not-allowed", f"sender {_show(sender)} may not send {_show(_what(result))}")
    if policy.known_objects is not None and (result.host, result.service) not in policy.known_objects:
        raise Refused("unknown-object", f"the local monitoring core defines no {_show(_what(result))}")
