"""Loss accounting at the receiver: the producers' per-route sequence numbers, tracked per
stream (producer, route) and epoch, as ranges (docs/loss-accounting.md).

A message that arrived counts once: a number above the highest seen opens a gap for the
numbers skipped (missing); a number inside a gap fills it (late); any other number below the
highest is a duplicate (at-least-once redelivery: neither a gap nor a loss). A new epoch
retires the current one (kept, one per stream, so its gaps can still fill) and starts at 1.
A gap open longer than ``expiry`` (inbound.policy.max_age: whatever comes later is too old to
inject) is closed as lost. A stream not seen for ``expiry`` is forgotten (its cursor deleted),
its counts kept in one ``forgotten`` sum, so the totals never go down; if its producer comes
back, the stream starts again from a new baseline.

Bounded whatever the senders do: at most ``max_streams`` streams (messages of more are
counted, not tracked), ``max_gaps`` gap ranges a stream and ``max_total_gaps`` in all (past
that a stream's oldest gap is dropped and its size counted as untracked). Every operation is
O(1) or O(log gaps) but a gap split, a list insert of at most max_gaps items.

The state of each changed stream is saved as a spool cursor (``seq-in:<json [producer,
route]>``; a forgotten one's is deleted, and the forgotten sum saved as ``seq-in:forgotten``)
in the transaction that makes its messages durable, before they are acked: a
restart never forgets a number that was acked, so it invents no gap (a redelivered message it
saw already is a duplicate).
"""
from __future__ import annotations

import bisect
import json
import logging
import threading
import time
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..daemon.health import RateLimitedLog
from ..formats import sequence as wire

log = logging.getLogger(__name__)

_INF = float("inf")
MAX_STREAMS = 1000
MAX_GAPS = 1000
MAX_TOTAL_GAPS = 100_000
OLD_EPOCHS = 4                   # forgotten epoch ids remembered per stream
CURSOR_PREFIX = "seq-in:"
FORGOTTEN_CURSOR = CURSOR_PREFIX + "forgotten"   # not a JSON list: never a stream's name
_COUNTS = ("received", "late", "duplicates", "lost", "untracked")

# Refusals that say the headers cannot be trusted to name the producer, or that the sender
# is none the policy allows: such a message is left out of the accounting (counted as
# untrusted), or anyone who may publish to the destination could open streams and gaps
# (review 2026-12-04). Every other refused message came from a sender the policy allows
# (the sender is judged before decoding: judgement.py), from the producer its headers name:
# it counts as received.
UNTRUSTED_REFUSALS = frozenset({
    "bad-headers", "poison", "internal-error", "bad-signature", "signature-scheme", "unsigned",
    "unsigned-header", "untrusted-signer", "encrypted", "no-sender", "sender-not-allowed"})


class _Epoch:
    """One epoch of a stream: the highest number seen and the gaps below it, as sorted
    inclusive ranges [first, last, opened_at] (sorted by number, so by time opened too)."""

    __slots__ = ("epoch", "high", "gaps", "missing", "received", "late", "duplicates", "lost", "untracked")

    def __init__(self, epoch: str, high: int = 0):
        self.epoch = epoch
        self.high = high
        self.gaps: List[List[float]] = []
        self.missing = 0
        self.received = self.late = self.duplicates = self.lost = self.untracked = 0

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "high": self.high, "gaps": self.gaps, "received": self.received,
                "late": self.late, "duplicates": self.duplicates, "lost": self.lost, "untracked": self.untracked}

    @classmethod
    def from_json(cls, data: dict, max_gaps: int) -> "_Epoch":
        part = cls(str(data["epoch"]), _count(data["high"]))
        gaps = data["gaps"]
        for first, last, since in gaps[max(0, len(gaps) - max_gaps):]:
            first, last = _count(first), _count(last)
            if not 0 < first <= last < part.high or (part.gaps and first <= part.gaps[-1][1]):
                raise ValueError("gaps out of order")
            part.gaps.append([first, last, float(since)])
            part.missing += last - first + 1
        for name in _COUNTS:
            setattr(part, name, _count(data.get(name, 0)))
        return part


def _count(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= wire.MAX_SEQ:
        raise ValueError(f"not a count: {value!r}")
    return value


class _Stream:
    __slots__ = ("producer", "route", "current", "previous", "retired", "old_epochs", "last_seen")

    def __init__(self, producer: str, route: str, current: _Epoch):
        self.producer, self.route, self.current = producer, route, current
        self.previous: Optional[_Epoch] = None
        self.retired = _Epoch("")         # the sums of the epochs before those two (no gaps)
        # The ids of the last few forgotten epochs: a message of one (a redelivery) must not
        # start that epoch over as a new one.
        self.old_epochs: List[str] = []
        self.last_seen = 0.0

    def epochs(self) -> List[_Epoch]:
        return [self.current] + ([self.previous] if self.previous is not None else [])

    def drop_previous(self) -> None:
        """Forget the previous epoch, adding its counts to ``retired``; what it still
        missed is lost."""
        old, self.previous = self.previous, None
        if old is not None:
            _add_counts(self.retired, old)
            self.old_epochs = (self.old_epochs + [old.epoch])[-OLD_EPOCHS:]


def _numbers_signed(headers: Mapping[str, str]) -> bool:
    """True if ``signed-headers`` lists each stream header the message has (a message
    without route_seq is left out as unnumbered anyway)."""
    if wire.SEQ_HEADER not in headers:
        return True
    listed = [name.strip() for name in headers.get("signed-headers", "").split(",")]
    return all(name in listed for name in wire.STREAM_HEADERS if name in headers)


def _add_counts(total: _Epoch, part: _Epoch) -> None:
    """Add the counts of ``part`` to ``total``; what ``part`` still misses is lost."""
    for name in _COUNTS:
        setattr(total, name, getattr(total, name) + getattr(part, name))
    total.lost += part.missing


class Tracker:
    """Thread-safe: the subscriber notes and saves, the main loop takes snapshots."""

    def __init__(self, *, expiry: float = 86400.0, max_streams: int = MAX_STREAMS, max_gaps: int = MAX_GAPS,
                 max_total_gaps: int = MAX_TOTAL_GAPS, signed_numbers: bool = False):
        """``signed_numbers`` (signatures required): a message counts only if its signature
        covers each of the stream headers it carries (wire.STREAM_HEADERS; the verifier checked
        the signature over the names its ``signed-headers`` lists); else anyone who may
        publish, or a broker on the way, could renumber a signed message."""
        self.expiry = expiry
        self.signed_numbers = signed_numbers
        self.max_streams, self.max_gaps, self.max_total_gaps = max_streams, max_gaps, max_total_gaps
        self._lock = threading.Lock()
        self._streams: Dict[Tuple[str, str, str], _Stream] = {}
        self._dirty: set = set()
        self._deleted: set = set()       # keys of forgotten streams whose cursors are not deleted yet
        # The sums of the streams forgotten after ``expiry`` without a message, and how many.
        self._forgotten = _Epoch("")
        self._forgotten_streams = 0
        # Its cursor's value: made when it changes (expire), not for every batch's unsaved().
        self._forgotten_text = self._forgotten_saved = self._forgotten_value()
        self._total_gaps = 0
        # Messages left out of the accounting, by why (counters since the start).
        self.counters = dict.fromkeys(("unnumbered", "malformed", "untrusted", "unsigned_numbers",
                                       "untracked_streams", "new_epochs"), 0)
        self._log = RateLimitedLog(log)

    # -- noting what arrived ---------------------------------------------------------------

    def note_batch(self, items: Iterable[Tuple[Mapping[str, str], Optional[str]]], now: float) -> None:
        """Note messages that arrived: (headers, refusal reason or None if not refused)."""
        with self._lock:
            for headers, refusal in items:
                if refusal is not None and refusal in UNTRUSTED_REFUSALS:
                    self.counters["untrusted"] += 1
                elif self.signed_numbers and not _numbers_signed(headers):
                    self.counters["unsigned_numbers"] += 1
                else:
                    self._note(headers, now)

    def _note(self, headers: Mapping[str, str], now: float) -> None:
        value = headers.get(wire.SEQ_HEADER)
        if value is None:
            self.counters["unnumbered"] += 1
            return
        key = (headers.get("site", ""), headers.get("nagios_host", ""), headers.get(wire.ROUTE_HEADER, ""))
        stream = self._streams.get(key)
        # The fast path (a known stream, its current epoch, a plain number) skips the parse.
        seq = _number_in(value, stream.current.epoch) if stream is not None else None
        if seq is None:
            stamp = wire.parse(headers)
            if isinstance(stamp, str):
                self.counters["malformed" if stamp == wire.MALFORMED else "unnumbered"] += 1
                return
            seq = stamp.seq
            if stream is None:
                if len(self._streams) >= self.max_streams:
                    self.counters["untracked_streams"] += 1
                    return
                # The first message of a stream is its baseline: what came before it was not
                # known to be meant for this receiver.
                stream = self._streams[key] = _Stream(stamp.producer, stamp.route, _Epoch(stamp.epoch, seq - 1))
                self._deleted.discard(key)     # its cursor is written again, not deleted
            elif stamp.epoch != stream.current.epoch:
                if stream.previous is not None and stamp.epoch == stream.previous.epoch:
                    self._apply(stream, stream.previous, seq, now)
                    self._dirty.add(key)
                    stream.last_seen = now
                    return
                if stamp.epoch in stream.old_epochs:
                    # Of an epoch already forgotten: it arrived, and can fill no known gap.
                    stream.retired.duplicates += 1
                    self._dirty.add(key)
                    return
                self._retire(stream, _Epoch(stamp.epoch))        # a new epoch starts at 1
        self._apply(stream, stream.current, seq, now)
        self._dirty.add(key)
        stream.last_seen = now

    def _apply(self, stream: _Stream, part: _Epoch, seq: int, now: float) -> None:
        part.received += 1
        if seq > part.high:
            if seq > part.high + 1:
                self._open_gap(part, part.high + 1, seq - 1, now)
            part.high = seq
            return
        gaps = part.gaps
        # The last gap that starts at or below seq ([seq, inf] sorts after [seq, last, since]).
        index = bisect.bisect_right(gaps, [seq, _INF]) - 1
        if index < 0 or gaps[index][1] < seq:
            part.duplicates += 1
            part.received -= 1          # counted once, when it first came
            return
        part.late += 1
        part.missing -= 1
        first, last, since = gaps[index]
        if first == last:
            del gaps[index]
            self._total_gaps -= 1
        elif seq == first:
            gaps[index][0] = seq + 1
        elif seq == last:
            gaps[index][1] = seq - 1
        else:
            gaps[index][1] = seq - 1
            gaps.insert(index + 1, [seq + 1, last, since])
            self._total_gaps += 1
            self._bound(part)

    def _open_gap(self, part: _Epoch, first: int, last: int, now: float) -> None:
        part.gaps.append([first, last, now])
        part.missing += last - first + 1
        self._total_gaps += 1
        self._bound(part)

    def _bound(self, part: _Epoch) -> None:
        """Drop the oldest gaps of ``part`` past the limits, counted as untracked."""
        while part.gaps and (len(part.gaps) > self.max_gaps or self._total_gaps > self.max_total_gaps):
            first, last, _ = part.gaps.pop(0)
            size = int(last - first + 1)
            part.missing -= size
            part.untracked += size
            self._total_gaps -= 1

    def _retire(self, stream: _Stream, new: _Epoch) -> None:
        if stream.previous is not None:
            # Only one old epoch is kept: what the older one still missed is lost.
            self._total_gaps -= len(stream.previous.gaps)
            stream.drop_previous()
        stream.previous = stream.current
        stream.current = new
        self.counters["new_epochs"] += 1
        self._log(logging.WARNING, "epoch", f"producer {stream.producer[:200]!r} route {stream.route[:200]!r}"
                  f" started a new sequence (epoch {new.epoch} after {stream.previous.epoch})")

    def expire(self, now: float) -> None:
        """Close the gaps older than ``expiry`` as lost; forget an old epoch with none left,
        and a stream not seen for ``expiry`` (its counts kept in the forgotten sum)."""
        with self._lock:
            idle = [key for key, stream in self._streams.items() if stream.last_seen < now - self.expiry]
            for key in idle:
                stream = self._streams.pop(key)
                for part in stream.epochs() + [stream.retired]:
                    self._total_gaps -= len(part.gaps)
                    _add_counts(self._forgotten, part)
                self._forgotten_streams += 1
                self._dirty.discard(key)
                self._deleted.add(key)
            if idle:
                self._forgotten_text = self._forgotten_value()
            for key, stream in self._streams.items():
                changed = False
                for part in stream.epochs():
                    while part.gaps and part.gaps[0][2] < now - self.expiry:
                        first, last, _ = part.gaps.pop(0)
                        part.missing -= int(last - first + 1)
                        part.lost += int(last - first + 1)
                        self._total_gaps -= 1
                        changed = True
                if stream.previous is not None and not stream.previous.gaps:
                    stream.drop_previous()
                    changed = True
                if changed:
                    self._dirty.add(key)

    # -- saving and loading ----------------------------------------------------------------

    def unsaved(self) -> List[Tuple[str, Optional[str]]]:
        """The (cursor name, value) of every stream changed since saved() last saw it, value
        None for a forgotten stream's (to delete), and the forgotten sum if it changed."""
        with self._lock:
            states: List[Tuple[str, Optional[str]]] = [self._cursor(key) for key in self._dirty]
            states += [(_cursor_name(key), None) for key in self._deleted]
            if self._forgotten_text != self._forgotten_saved:
                states.append((FORGOTTEN_CURSOR, self._forgotten_text))
            return states

    def saved(self, states: Sequence[Tuple[str, Optional[str]]]) -> None:
        """``states`` (from unsaved()) are durable now."""
        if states:
            with self._lock:
                for name, value in states:
                    if name == FORGOTTEN_CURSOR:
                        self._forgotten_saved = value
                    elif value is None:
                        self._deleted.discard(json_key(name))
                    else:
                        self._dirty.discard(json_key(name))

    def _forgotten_value(self) -> str:
        return json.dumps({"streams": self._forgotten_streams, **self._forgotten.to_json()},
                          separators=(",", ":"))

    def _cursor(self, key: Tuple[str, str, str]) -> Tuple[str, str]:
        stream = self._streams[key]
        value = {"producer": stream.producer, "route": stream.route, "last_seen": stream.last_seen,
                 "current": stream.current.to_json(), "retired": stream.retired.to_json(),
                 "old_epochs": stream.old_epochs,
                 "previous": stream.previous.to_json() if stream.previous is not None else None}
        return _cursor_name(key), json.dumps(value, separators=(",", ":"))

    def load(self, cursors: Mapping[str, str]) -> int:
        """Take the streams saved in ``cursors`` (Spool.cursors(CURSOR_PREFIX)); a damaged one
        is skipped with a warning. Returns how many were loaded."""
        loaded = 0
        with self._lock:
            for name, value in cursors.items():
                if name == FORGOTTEN_CURSOR:
                    self._load_forgotten(value)
                    continue
                if len(self._streams) >= self.max_streams:
                    log.warning("loss accounting: more saved streams than %d; the rest are not tracked",
                                self.max_streams)
                    break
                try:
                    key = json_key(name)
                    data = json.loads(value)
                    stream = _Stream(str(data["producer"]), str(data["route"]),
                                     _Epoch.from_json(data["current"], self.max_gaps))
                    if data.get("retired"):
                        stream.retired = _Epoch.from_json(data["retired"], 0)
                    if data.get("previous"):
                        stream.previous = _Epoch.from_json(data["previous"], self.max_gaps)
                    # A state saved before last_seen was: seen now (not forgotten at once).
                    stream.last_seen = float(data.get("last_seen", time.time()))
                    stream.old_epochs = [str(epoch) for epoch in data.get("old_epochs", [])][-OLD_EPOCHS:]
                except (ValueError, TypeError, KeyError, IndexError) as exc:
                    log.warning("loss accounting: saved state %s is damaged (%s): starting it afresh",
                                name[:200], exc)
                    continue
                self._streams[key] = stream
                self._total_gaps += sum(len(part.gaps) for part in stream.epochs())
                loaded += 1
        return loaded

    def _load_forgotten(self, value: str) -> None:
        # Sums of many streams may pass 2^63-1 (wire.MAX_SEQ bounds one number, not a sum).
        try:
            data = json.loads(value)
            counts = {name: data.get(name, 0) for name in ("streams",) + _COUNTS}
            if not all(type(count) is int and count >= 0 for count in counts.values()):
                raise ValueError(f"not counts: {counts}")
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("loss accounting: the saved sum of forgotten streams is damaged (%s): starting it at 0",
                        str(exc)[:200])
            return
        self._forgotten_streams = counts.pop("streams")
        for name, count in counts.items():
            setattr(self._forgotten, name, count)
        self._forgotten_text = self._forgotten_saved = value

    # -- reporting -------------------------------------------------------------------------

    def snapshot(self, now: float) -> dict:
        """What status.json keeps under ``sequences``: the counters and one row a stream."""
        self.expire(now)
        rows = []
        with self._lock:
            for stream in self._streams.values():
                current, previous = stream.current, stream.previous
                parts = stream.epochs()
                opened = [part.gaps[0][2] for part in parts if part.gaps]
                rows.append({
                    "producer": stream.producer, "route": stream.route, "epoch": current.epoch,
                    "highest": current.high,
                    "missing": sum(part.missing for part in parts),
                    "late": sum(part.late for part in parts + [stream.retired]),
                    "duplicates": sum(part.duplicates for part in parts + [stream.retired]),
                    "received": sum(part.received for part in parts + [stream.retired]),
                    "lost": sum(part.lost for part in parts + [stream.retired]),
                    "untracked": sum(part.untracked for part in parts + [stream.retired]),
                    "gaps": sum(len(part.gaps) for part in parts),
                    "oldest_gap_age": max(0.0, now - min(opened)) if opened else None,
                    "previous_epoch": previous.epoch if previous is not None else None,
                    "last_seen": stream.last_seen})
            counters = dict(self.counters)
            forgotten = {"streams": self._forgotten_streams,
                         **{name: getattr(self._forgotten, name) for name in _COUNTS}}
        rows.sort(key=lambda row: (row["producer"], row["route"]))
        return {"counters": counters, "streams": rows, "forgotten": forgotten}


def _number_in(value, epoch: str) -> Optional[int]:
    """The number in a route_seq ``value`` of ``epoch``, if it is a plain one; else None (then
    wire.parse says what it is)."""
    cut = len(epoch) + 1
    if (isinstance(value, str) and value.startswith(epoch) and 0 < len(value) - cut <= 18
            and value[cut - 1] == ":" and value[cut] != "0" and value.isascii() and value[cut:].isdigit()):
        return int(value[cut:])
    return None


def _cursor_name(key: Tuple[str, str, str]) -> str:
    return CURSOR_PREFIX + json.dumps(list(key))


def json_key(name: str) -> Tuple[str, str, str]:
    """The stream key in a cursor name made by Tracker._cursor."""
    if not name.startswith(CURSOR_PREFIX):
        raise ValueError("not a sequence cursor")
    site, host, route = json.loads(name[len(CURSOR_PREFIX):])
    return str(site), str(host), str(route)
