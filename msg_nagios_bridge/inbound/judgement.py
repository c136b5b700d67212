"""The inbound judgement: the one place that decides what a message from the broker becomes.

The subscriber, ``dead-letters requeue --inbound`` and ``try-message`` all call
``judge_batch``, so a message is judged the same way wherever it comes from:

1. headers within limits (count, name and value sizes): ``bad-headers``;
2. the signature, when signatures are required: the verified signer is the sender, and a
   header the bridge reads (``HEADERS_READ``) that the signature does not cover is refused
   (``unsigned-header``);
3. the sender (the policy's sender header when signatures are not required), which some
   rule of the policy must allow (``no-sender``, ``sender-not-allowed``), before any decoding;
4. decoding (formats.decode);
5. the policy (the hosts and services the sender may report on);
6. freshness: a result older than ``max_age`` or more than ``max_clock_skew`` ahead of the
   clock is refused (``too-old``, ``from-future``);
7. against what was already injected (``Memory``): a result older than the newest one
   injected for the same object is ``stale`` (Nagios takes a passive result's time as
   last_check unconditionally, so an old result replayed would overwrite a newer state);
   the same result again with its object's newest time is a ``duplicate``.

Steps 1-6 are pure and linear in the message size; every refusal is a Refused with a reason.
Duplicates are keyed by the sender's verified identity (the signer certificate, canonical)
and the result_id, never by header text a sender can vary.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import typing
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from . import policy as policy_module
from ..display import quoted
from ..formats import decode as inbound_format
from ..model import Refused
from ..model import CheckResult
from ..spool import NEWEST_TAG_WIDTH

# Headers a message's meaning depends on: the dedupe key (result_id) and the fields the
# decoder, the name mapping and templates read. With signatures required each must be signed.
HEADERS_READ = ("result_id", "role", "site", "vo")

MAX_HEADERS = 100
MAX_HEADER_NAME_BYTES = 256
MAX_HEADER_VALUE_BYTES = 32 * 1024          # a signer certificate in base64 fits (16 KiB)
MAX_HEADERS_BYTES = 128 * 1024
MAX_RESULT_ID = 128

ACCEPTED, DUPLICATE, STALE, REFUSED = "accepted", "duplicate", "stale", "refused"


@dataclasses.dataclass(frozen=True)
class Rules:
    """Everything a judgement depends on, built once per (re)load."""

    mapping: inbound_format.Mapping
    policy: policy_module.Policy
    verifier: Optional[object] = None        # signing.Verifier when signatures are required
    max_age: float = 86400.0
    max_clock_skew: float = 300.0


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What became of one message. ``result`` is set unless it was refused."""

    outcome: str                      # ACCEPTED, DUPLICATE, STALE or REFUSED
    key: str = ""                     # the dedupe key ("" when refused before it was known)
    result: Optional[CheckResult] = None
    sender: str = ""
    refusal: Optional[Refused] = None
    # Of the result and the key, made once here: the memory's look-up and its rows read them
    # several times each (as properties they were a Python call each time).
    object_key: str = ""              # object_key(result); "" without a result
    tag: str = ""                     # memory_tag(key); "" without a key

    def __init__(self, outcome: str, key: str = "", result: Optional[CheckResult] = None, sender: str = "",
                 refusal: Optional[Refused] = None, object_key: str = "", tag: str = "") -> None:
        # The fields in one update of the instance's dict, as CheckResult does: the frozen
        # dataclass's own __init__ and a __post_init__ set them one object.__setattr__ at a
        # time, and one Verdict is made for every message (again for a duplicate or stale one).
        # This and check_sender's loop: 5.6% of the subscriber's instructions, with
        # wlcg.decode's (docs/performance.md, "Two more Python costs a message off").
        if result is not None and not object_key:
            object_key = _object_key_of(result)
        if key and not tag:
            tag = memory_tag(key)
        vars(self).update(outcome=outcome, key=key, result=result, sender=sender, refusal=refusal,
                          object_key=object_key, tag=tag)


class Memory(typing.Protocol):
    """What was injected before: per object, the newest result time and the tags
    (``memory_tag``) of the results injected with that time."""

    def recall(self, objects: Sequence[str]) -> typing.Mapping[str, Tuple[float, typing.Collection[str]]]: ...


class NoMemory:
    """A memory that has seen nothing (a dry run without a spool)."""

    def recall(self, objects: Sequence[str]) -> typing.Mapping[str, Tuple[float, typing.Collection[str]]]:
        return {}


def memory_tag(key: str) -> str:
    """The fixed-width digest of a dedupe key that the memory keeps (8 bytes: a collision
    needs two results of one object with the same time)."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=NEWEST_TAG_WIDTH // 2).hexdigest()


def object_key(result: CheckResult) -> str:
    return f"{result.host}\t{result.service if result.service is not None else ''}"


_object_key_of = object_key     # for Verdict.__init__, whose argument of that name hides it


def dedupe_key(identity: str, headers: typing.Mapping[str, str], body: bytes) -> str:
    """``identity`` (the verified signer, or the sender) and the result_id; without a
    result_id, a hash of the body."""
    result_id = headers.get("result_id", "")
    if result_id:
        return f"id:{_scope(identity)}:{result_id}"
    return "body:" + hashlib.blake2b(body, digest_size=16).hexdigest()


def _scope(identity: str) -> str:
    """The hash of ``identity`` that scopes its result ids. A bridge's senders are few, so the
    hashes of short identities are remembered (a sender's header can be 32 KiB long: a long one
    is hashed each time, so that what is kept stays small)."""
    return _short_scope(identity) if len(identity) <= 256 else _hashed_scope(identity)


def _hashed_scope(identity: str) -> str:
    return hashlib.blake2b(identity.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


_short_scope = functools.lru_cache(maxsize=1024)(_hashed_scope)


def check_headers(headers: typing.Mapping[str, str]) -> None:
    """Refuse headers beyond the limits (a flood of headers is work before any other check)."""
    if len(headers) > MAX_HEADERS:
        raise Refused("bad-headers", f"{len(headers)} headers (limit {MAX_HEADERS})")
    if _ascii_within_limits(headers):
        return
    total = 0
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise Refused("bad-headers", "a header name or value is not text")
        # ASCII (nearly every header) is one byte a character: no encoding needed to count.
        name_bytes = len(name) if name.isascii() else len(name.encode("utf-8", "surrogatepass"))
        value_bytes = len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
        if name_bytes > MAX_HEADER_NAME_BYTES:
            raise Refused("bad-headers", f"a header name is {name_bytes} bytes long (limit {MAX_HEADER_NAME_BYTES})")
        if value_bytes > MAX_HEADER_VALUE_BYTES:
            raise Refused("bad-headers", f"header {quoted(name, 60)} is {value_bytes} bytes long"
                                         f" (limit {MAX_HEADER_VALUE_BYTES})")
        total += name_bytes + value_bytes
    if total > MAX_HEADERS_BYTES:
        raise Refused("bad-headers", f"headers take {total} bytes (limit {MAX_HEADERS_BYTES})")
    if len(headers.get("result_id", "")) > MAX_RESULT_ID:
        raise Refused("bad-headers", f"result_id is longer than {MAX_RESULT_ID} characters")


def _ascii_within_limits(headers: typing.Mapping[str, str]) -> bool:
    """True if every name and value is ASCII text within the limits (nearly every message):
    the same checks as check_headers' loop, a few calls for all headers instead of a few per
    header. False means the loop decides (and names what is wrong)."""
    try:
        names, values = "".join(headers), "".join(headers.values())
    except TypeError:
        return False                    # not all text
    # All names (all values) within one name's (value's) limit: each is, and the longest
    # need not be looked for (nearly always: a grid result's names take about 200 characters).
    return (names.isascii() and values.isascii() and len(names) + len(values) <= MAX_HEADERS_BYTES
            and (len(names) <= MAX_HEADER_NAME_BYTES or max(map(len, headers)) <= MAX_HEADER_NAME_BYTES)
            and (len(values) <= MAX_HEADER_VALUE_BYTES
                 or max(map(len, headers.values())) <= MAX_HEADER_VALUE_BYTES)
            and len(headers.get("result_id", "")) <= MAX_RESULT_ID)


def _sender(rules: Rules, headers: typing.Mapping[str, str], body: bytes) -> Tuple[str, str]:
    """(sender the policy sees, identity duplicates are scoped by)."""
    if rules.verifier is None:
        sender = policy_module.sender_of(rules.policy, headers)
        return sender, sender
    signed = rules.verifier.verify(headers, body)
    unsigned = [name for name in HEADERS_READ if name in headers and name not in signed.signed_headers]
    if unsigned:
        raise Refused("unsigned-header", f"header {unsigned[0]!r} is read by the bridge but not covered "
                                         f"by the signature of {signed.dn!r}")
    return signed.dn, signed.identity


def judge(rules: Rules, headers: typing.Mapping[str, str], body: bytes, now: float) -> Verdict:
    """Steps 1-6 for one message: an ACCEPTED verdict, or raise Refused (only)."""
    check_headers(headers)
    sender, identity = _sender(rules, headers, body)
    policy_module.check_sender(rules.policy, sender)
    result = inbound_format.decode(headers, body, rules.mapping, now=now)
    policy_module.check(rules.policy, result, sender)
    age = now - result.timestamp
    if age > rules.max_age:
        raise Refused("too-old", f"the result is from {age:.0f} s ago (limit {rules.max_age:g} s: "
                                 f"inbound.policy.max_age)")
    if -age > rules.max_clock_skew:
        raise Refused("from-future", f"the result is {-age:.0f} s ahead of this clock (limit "
                                     f"{rules.max_clock_skew:g} s: inbound.policy.max_clock_skew)")
    return Verdict(ACCEPTED, dedupe_key(identity, headers, body), result, sender)


def judge_one(rules: Rules, headers: typing.Mapping[str, str], body: bytes, now: float) -> Verdict:
    """``judge`` that returns a REFUSED verdict instead of raising, for any exception: a
    defect here must not stop the subscriber on a message the broker redelivers."""
    try:
        return judge(rules, headers, body, now)
    except Refused as exc:
        return Verdict(REFUSED, refusal=exc)
    except Exception as exc:     # noqa: BLE001 - contract 4: a reason, never a crash
        return Verdict(REFUSED, refusal=Refused(
            "internal-error", f"the bridge failed on this message: {type(exc).__name__}: {exc}"))


def against_memory(verdicts: List[Verdict], memory: Memory) -> List[Verdict]:
    """Step 7: mark duplicates and stale results among the accepted verdicts, in order
    (a batch counts as already injected what it accepts before)."""
    accepted = [v for v in verdicts if v.outcome == ACCEPTED]
    if not accepted:
        return verdicts
    newest: Dict[str, Tuple[float, Set[str]]] = {
        obj: (at, set(tags)) for obj, (at, tags) in memory.recall(sorted({v.object_key for v in accepted})).items()}
    judged = []
    for verdict in verdicts:
        if verdict.outcome == ACCEPTED:
            when, tag = verdict.result.timestamp, verdict.tag
            at, tags = newest.get(verdict.object_key, (-math.inf, set()))
            if when < at:
                verdict = dataclasses.replace(verdict, outcome=STALE)
            elif when == at and tag in tags:
                verdict = dataclasses.replace(verdict, outcome=DUPLICATE)
            elif when == at:
                tags.add(tag)
            else:
                newest[verdict.object_key] = (when, {tag})
        judged.append(verdict)
    return judged


def judge_batch(rules: Rules, messages: Iterable[Tuple[typing.Mapping[str, str], bytes]],
                memory: Memory, now: float) -> List[Verdict]:
    """Judge messages in arrival order: one Verdict each."""
    return against_memory([judge_one(rules, headers, body, now) for headers, body in messages], memory)


def memory_rows(verdicts: Iterable[Verdict]) -> List[Tuple[str, float, str]]:
    """What the accepted verdicts add to the memory, as the spool's ``newest`` rows (object,
    result time, tag), in order."""
    return [(verdict.object_key, verdict.result.timestamp, verdict.tag)
            for verdict in verdicts if verdict.outcome == ACCEPTED]


SWEEP_SCAN = 10_000     # objects looked at per step of a sweep (a few ms)


class SpoolMemory:
    """The memory kept in the inbound spool (its ``newest`` table), so it holds across restarts.

    One row per object: the newest result time injected and the tags of the results injected
    with that time, kept for max_age (a result older than that is refused as too-old before the
    memory is asked). A broker's redelivery of the newest result has its time and its tag: a
    duplicate; of an older one, an older time: stale (injecting it would put an older state
    over a newer one). Up to NEWEST_TAGS_MAX tags per time (spool.py); beyond, the older ones of
    that time are forgotten, and such a result redelivered would be injected once more (with
    the same time, so the core ends with the same newest state only if it came last).

    What is forgotten goes in a sweep of bounded steps (``start_forgetting``, then
    ``forget_some`` between batches): at grid scale 500,000 rows to look at, and deleting
    them at once would stall the subscriber.
    """

    def __init__(self, spool):
        self.spool = spool
        self._before: Optional[float] = None             # the sweep's cut-off, None when idle
        self._after = ""                                 # the sweep's position in object order

    def recall(self, objects: Sequence[str]) -> typing.Mapping[str, Tuple[float, typing.Collection[str]]]:
        width = NEWEST_TAG_WIDTH
        return {obj: (at, [tags[i:i + width] for i in range(0, len(tags), width)])
                for obj, (at, tags) in self.spool.find_newest(objects).items()}

    def start_forgetting(self, before: float) -> None:
        """Begin a sweep of the newest times before ``before``."""
        self._before, self._after = before, ""

    def forget_some(self, scan: Optional[int] = None) -> bool:
        """One step of the sweep (at most ``scan`` objects looked at, SWEEP_SCAN by default);
        True while more is left."""
        if self._before is not None:
            end = self.spool.forget_newest_step(self._before, self._after, scan or SWEEP_SCAN)
            if end is None:
                self._before, self._after = None, ""
            else:
                self._after = end
        return self._before is not None

    def forget(self, before: float) -> None:
        """A whole sweep at once (tools and tests)."""
        self.start_forgetting(before)
        while self.forget_some():
            pass


def make_verifier(settings) -> Optional[object]:
    """The signature verifier ``settings`` (config.InboundSettings) ask for, or None."""
    if not settings.signatures.required:
        return None
    from ..trust.signing import Verifier
    return Verifier.from_settings(settings.signatures)


def make_rules(settings, known_objects=None, verifier=None) -> Rules:
    """Rules from config.InboundSettings, the objects the local Nagios defines (or None) and
    a verifier (make_verifier's; built once, it holds the parsed CAs)."""
    policy = policy_module.Policy(rules=settings.rules, sender_header=settings.sender_header,
                                  known_objects=known_objects)
    return Rules(mapping=settings.mapping, policy=policy, verifier=verifier,
                 max_age=settings.max_age, max_clock_skew=settings.max_clock_skew)


def load_rules(settings) -> Rules:
    """make_rules for an operator tool, from config.Settings: reads the core's object list
    (OSError if it cannot) and the CAs."""
    from ..cores import core_for
    return make_rules(settings.inbound, core_for(settings).known_objects(), make_verifier(settings.inbound))
