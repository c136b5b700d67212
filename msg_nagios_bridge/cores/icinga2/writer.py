"""The inbound sink for Icinga 2: inbound spool -> ``POST /v1/actions/process-check-result``.

One request per result, on ``icinga2.connections`` lanes: a lane is one kept-alive TLS
connection (api.LeanClient: a minimal HTTP/1.1 exchange, a third of http.client's CPU) and the
answers on it not yet confirmed. A result goes to the lane of its object (lane_of: a CRC-32 of
``host!service``, the same in every run); the lanes send at the same time (the writer thread
sends one lane's share of a batch, a thread pool the others'), and the next batch is taken only
when every lane is done with this one and has given back what it did not get answered. So one
object's results always go on one connection, each after Icinga answered the one before, in
spool order (a given-back entry is taken again before newer ones). Only the writer thread
touches the spool, the counters and the health state. Why lanes: one request at a time waits
for each answer, with Icinga and the bridge mostly idle meanwhile (docs/icinga2.md).

Icinga answers for each object, and that answer decides (check_result.judge):

* 200: Icinga accepted it: the entry is deleted once confirmed (CONFIRM_AFTER below:
  ``injected``; a 200 "Ignoring passive check result" for an unreachable object is deleted too
  and counted in ``icinga2_ignored``);
* 404 (no such object, or no permission), 400 and 403: Icinga will never take it: a dead
  letter (``unknown-object: ...``, ``icinga-refused: ...``);
* 401: the credentials are refused: the entry stays, the writer backs off and says so;
* any other status, or no answer at all: the entry stays and is sent again after a backoff.
  A request that got no answer may have been processed: sending it again can record it twice
  (duplicates rather than loss).

A lane that gets no answer, a 401 or a 5xx stops, and so do the others after their request
under way; what they did not get answered goes back to the spool, and the writer backs off once.

Before sending, what Icinga would store badly or refuse is refused here: objects not in its
object list (objects.py) and requests over check_result.MAX_BODY_BYTES. The worker sleeps on
one Wakeup that a put into the spool and stop() set.
"""
from __future__ import annotations

import json
import urllib.parse
import logging
import threading
import time
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Deque, List, NamedTuple, Optional, Sequence, Tuple, TypeVar

from ...config import Settings
from ...daemon.health import Backoff, Health, RateLimitedLog
from ...inbound.echo import EchoGuard
from ...model import CheckResult, result_from_dict
from ...spool import Spool, SpoolEntry, SpoolError
from ...wakeup import Wakeup
from . import check_result
from .api import ApiUnavailable, LeanClient
from .check_result import Action, Verdict
from .objects import ObjectList, ObjectsUnavailable

log = logging.getLogger(__name__)

BATCH = 200             # entries taken from the spool at a time (one delete per batch)
IDLE_CLOSE = 5.0        # Icinga closes a connection idle for 10 to 15 s: close ours first
# A 200 from an Icinga that is stopping or reloading may come after it saved its state: the
# result is gone when it starts again (seen: the last result answered before a SIGTERM closed
# the connection). So an answered entry is deleted only once Icinga answered another request
# this long after it, on the same connection, unbroken in between; a break gives back what
# was answered on that connection and not yet confirmed (sent again: duplicates rather than loss).
CONFIRM_AFTER = 0.5
PART = "icinga2_writer"

T = TypeVar("T")


def lane_of(name: str, lanes: int) -> int:
    """The lane of the object ``name`` (``host`` or ``host!service``): the same in every run."""
    return zlib.crc32(name.encode("utf-8")) % lanes


def split_by_lane(items: Sequence[T], name: Callable[[T], str], lanes: int) -> List[List[T]]:
    """``items`` in ``lanes`` lists by lane_of(name(item)), each list in the order given: the
    results for one object all go to one lane, in their order."""
    out: List[List[T]] = [[] for _ in range(lanes)]
    for item in items:
        out[lane_of(name(item), lanes)].append(item)
    return out


class Prepared(NamedTuple):
    """An entry ready to send: its request, and the object it is for."""
    entry: SpoolEntry
    result: CheckResult
    name: str
    path: str
    body: dict


class Answer(NamedTuple):
    item: Prepared
    verdict: Verdict


class Sent(NamedTuple):
    """What a lane's send() did. ``answers``: Icinga took or refused these for good, in order
    (a 200 is also in the lane's pending); ``rest``: not answered so, to give back; why the
    lane stopped early: ``failure`` (no answer: the text says why) or ``hold`` (an answer to
    hold on: 401, 5xx); ``resent``: pending entries a closed connection could not confirm,
    sent again."""
    answers: List[Answer]
    rest: List[Prepared]
    failure: Optional[str] = None
    hold: Optional[Verdict] = None
    resent: int = 0


class Lane:
    """One kept-alive connection to the API, and the results answered 200 on it not yet
    confirmed. Between send() calls only the writer thread touches it; during one, only the
    thread running it."""

    def __init__(self, client: LeanClient):
        self.client = client
        # Answered 200, not yet confirmed: (monotonic time of the answer, the entry sent).
        self.pending: Deque[Tuple[float, Prepared]] = deque()
        self.last_request = float("-inf")   # monotonic
        self.last_answer = float("-inf")    # monotonic: the last answer on this connection

    def request(self, method: str, path: str, body: Any = None) -> Tuple[int, Any]:
        """(status, answer); ApiUnavailable when there is no answer (the connection is closed)."""
        try:
            answered = self.client.request(method, path, body)
        finally:
            self.last_request = time.monotonic()
        self.last_answer = self.last_request
        return answered

    def confirmed(self) -> List[int]:
        """Take the ids of the answers confirmed by a later answer CONFIRM_AFTER s on."""
        ids = []
        while self.pending and self.pending[0][0] <= self.last_answer - CONFIRM_AFTER:
            ids.append(self.pending.popleft()[1].entry.entry_id)
        return ids

    def send(self, items: Sequence[Prepared], halt: threading.Event) -> Sent:
        """Send ``items`` one after another, until one gets no answer or an answer to hold on
        (then sets ``halt``), or another lane set ``halt``."""
        queue = deque(items)
        answers: List[Answer] = []
        resent = 0
        while queue and not halt.is_set():
            if time.monotonic() - self.last_request >= IDLE_CLOSE:
                self.client.close()
            if self.pending and not self.client.connected:
                # A new connection cannot confirm what the closed one answered (Icinga may have
                # restarted in between): send those again first, so each object's order holds.
                again = [item for _, item in self.pending]
                self.pending.clear()
                queue.extendleft(reversed(again))
                resent += len(again)
            item = queue[0]
            try:
                status, answer = self.request("POST", item.path, item.body)
            except ApiUnavailable as exc:
                halt.set()
                return Sent(answers, list(queue), failure=str(exc), resent=resent)
            verdict = check_result.judge(status, answer, item.name)
            if verdict.action in (Action.CREDENTIALS, Action.RETRY):
                halt.set()
                return Sent(answers, list(queue), hold=verdict, resent=resent)
            queue.popleft()
            if verdict.action in (Action.INJECTED, Action.IGNORED):
                self.pending.append((self.last_answer, item))
            answers.append(Answer(item, verdict))
        return Sent(answers, list(queue), resent=resent)


class Icinga2Writer(threading.Thread):
    """Takes entries from the inbound spool, sends each to Icinga 2, deletes it once Icinga
    answered for its object. Counts ``written`` (requests answered), ``injected`` (200,
    confirmed, deleted), ``icinga2_ignored``, ``icinga2_no_answer``, ``icinga2_resent`` (answered
    shortly before a break, or on a connection closed before they were confirmed: sent again) and dead letters by reason (``refused.<reason>``)."""

    def __init__(self, settings: Settings, spool: Spool, health: Health, echo: EchoGuard,
                 objects: ObjectList):
        super().__init__(name="icinga2-writer", daemon=True)
        self.settings = settings
        self.check_source = settings.icinga2.check_source
        self.spool = spool
        self.health = health
        self.echo = echo
        self.objects = objects
        self.lanes = [Lane(LeanClient(settings.icinga2)) for _ in range(settings.icinga2.connections)]
        # The writer thread sends one lane's share itself, these threads the others'.
        self._pool = (ThreadPoolExecutor(len(self.lanes) - 1, thread_name_prefix="icinga2-lane")
                      if len(self.lanes) > 1 else None)
        self.stopping = threading.Event()
        self.wakeup = Wakeup()
        spool.wake_on_put(self.wakeup)
        self._backoff = Backoff(0.5, 30.0)
        self._hold_until = 0.0              # monotonic: send nothing before (backoff)
        self._held_since: Optional[float] = None
        self._answered: List[int] = []      # confirmed, not yet deleted from the spool
        self._state = ""
        self._probe_host = ""               # a host Icinga has: the probe's cheap question
        self._warn = RateLimitedLog(log)

    def stop(self) -> None:
        self.stopping.set()
        self.wakeup.set()

    def _set_state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self.health.set_state(PART, state)

    def run(self) -> None:
        self._set_state("waiting for results")
        try:
            while not self.stopping.is_set():
                self._warn.flush()
                wait = self._hold_until - time.monotonic()
                if wait > 0:
                    self.wakeup.wait(wait)
                    continue
                try:
                    self._settle()
                    entries = self.spool.take(BATCH)
                    if not entries:
                        self._idle()
                        continue
                    self.deliver(entries)
                    self._probe_quiet_lanes()
                except SpoolError as exc:
                    self._warn(logging.ERROR, "spool", f"inbound spool problem, retrying: {exc}")
                    self.health.error(f"inbound spool: {exc}")
                    self._hold_until = time.monotonic() + 1.0
            try:
                if self._pending():
                    self._confirm_by_probe(final=True)
                self._settle()
            except SpoolError as exc:
                log.warning("could not delete the last results Icinga 2 took (%s): they will be sent again"
                            " at the next start", exc)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            for lane in self.lanes:
                lane.client.close()

    def _pending(self) -> List[Lane]:
        """The lanes with answers not yet confirmed."""
        return [lane for lane in self.lanes if lane.pending]

    def _idle(self) -> None:
        """Nothing to send: close the connections before Icinga does (a request on a connection
        Icinga closed gets no answer, and would be sent twice), then sleep until a put."""
        self._set_state("waiting for results")
        if self._pending():
            self._confirm_by_probe()
            return
        idle = time.monotonic() - max(lane.last_request for lane in self.lanes)
        if idle < IDLE_CLOSE:
            self.wakeup.wait(IDLE_CLOSE - idle)
            return
        for lane in self.lanes:
            lane.client.close()
        self.wakeup.wait(self._warn.due_in())

    def _broken(self, lane: Lane) -> None:
        """The lane's connection broke: what was answered on it shortly before may be lost:
        send it again."""
        if lane.pending:
            ids = [item.entry.entry_id for _, item in lane.pending]
            lane.pending.clear()
            self.spool.give_back(ids)
            self.health.add("icinga2_resent", len(ids))

    def _confirm_by_probe(self, final: bool = False) -> None:
        """Nothing more to send (``final``: the writer stops): wait until the last answer is
        CONFIRM_AFTER old, then ask Icinga something cheap on each connection with answers to
        confirm; an answer confirms every pending entry of its lane. Not final, a put or stop()
        ends the wait: back to the loop."""
        lanes = self._pending()
        wait = max(lane.pending[-1][0] for lane in lanes) + CONFIRM_AFTER - time.monotonic()
        if wait > 0:
            if not final:
                self.wakeup.wait(wait)
                return                  # the loop comes back here when the time has come
            time.sleep(wait)
        if self._probe(lanes):
            self._settle()

    def _probe_quiet_lanes(self) -> None:
        """While other lanes are busy, a lane whose objects got no new result keeps its 200s
        unconfirmed, and after IDLE_CLOSE its connection is closed and they are sent again
        (duplicates): probe such a lane once its last answer is CONFIRM_AFTER old."""
        now = time.monotonic()
        quiet = [lane for lane in self.lanes if lane.pending and now - lane.last_answer >= CONFIRM_AFTER]
        if quiet and self._probe(quiet):
            self._settle()

    def _probe(self, lanes: List[Lane]) -> bool:
        """Ask Icinga something cheap on each of ``lanes``: an answer confirms every pending
        entry of its lane. False if Icinga did not answer (then the writer holds)."""
        path = "/v1/objects/hosts?" + urllib.parse.urlencode(
            {"host": self._probe_host, "attrs": "name"}, quote_via=urllib.parse.quote, safe="")
        for lane in lanes:
            if not lane.client.connected:
                self._broken(lane)      # a new connection cannot confirm them; nothing newer is in flight
                continue
            try:
                status, _ = lane.request("GET", path)
            except ApiUnavailable as exc:
                self.health.add("icinga2_no_answer")
                self._broken(lane)
                self._hold(f"Icinga 2 API unavailable: {exc}", "unavailable")
                return False
            if status >= 500 or status == 401:
                self._broken(lane)
                self._hold(f"Icinga 2 answered {status} to a probe", "probe")
                return False
        return True

    def _settle(self) -> None:
        """Delete what Icinga answered for (kept across a failed delete, to try again)."""
        for lane in self.lanes:
            self._answered += lane.confirmed()
        if self._answered:
            self.spool.done(self._answered)
            self.health.add("injected", len(self._answered))
            self._answered = []

    def _refuse(self, entry: SpoolEntry, reason: str) -> None:
        """A dead letter: Icinga will never take this entry."""
        self.spool.reject(entry.entry_id, reason)
        counter = check_result.reason_counter(reason)
        self.health.add("dead_letters")
        self.health.add("refused")
        self.health.add(f"refused.{counter}")
        self._warn(logging.WARNING, counter, f"inbound result refused: {reason}")

    def _hold(self, problem: str, key: str) -> None:
        """Icinga cannot take results now: back off, and say why in the health state."""
        now = time.monotonic()
        if self._held_since is None:
            self._held_since = now
        self._set_state(f"waiting: {problem}")
        self.health.error(f"icinga2: {problem}")
        self._warn(logging.WARNING, key, f"cannot hand results to Icinga 2, will retry: {problem}")
        self._hold_until = now + self._backoff.next_delay()

    def _answers_again(self) -> None:
        if self._held_since is not None:
            log.info("Icinga 2 takes results again (held back for %.0f s)", time.monotonic() - self._held_since)
            self._held_since = None
            self._backoff.reset()
        self._set_state("writing")

    def deliver(self, entries: List[SpoolEntry]) -> None:
        """Send ``entries`` (taken from the spool), each object's in order on its lane, the
        lanes at the same time; what Icinga did not answer for goes back to the spool."""
        try:
            known = self.objects.get()
        except ObjectsUnavailable as exc:
            self.spool.give_back([entry.entry_id for entry in entries])
            self._hold(str(exc), "objects")
            return
        prepared: List[Prepared] = []
        for entry in entries:
            try:
                result = result_from_dict(json.loads(entry.message.body))
            except (ValueError, TypeError) as exc:   # decode() already refuses these; defence in depth
                self._refuse(entry, f"unwritable: cannot be sent to Icinga 2: {exc}")
                continue
            name = check_result.object_name(result)
            if (result.host, result.service) not in known:
                self._refuse(entry, check_result.unknown_object_reason(name, answered=False))
                continue
            path, body = check_result.request(result, self.check_source)
            too_big = check_result.too_big_reason(check_result.body_size(body))
            if too_big:
                self._refuse(entry, too_big)
                continue
            prepared.append(Prepared(entry, result, name, path, body))
        if not prepared:
            return
        try:
            self.echo.about_to_inject(item.result for item in prepared)
        except SpoolError:
            self.spool.give_back([item.entry.entry_id for item in prepared])
            raise
        shares = split_by_lane(prepared, lambda item: item.name, len(self.lanes))
        outcomes: List[Sent] = []
        taken = [0] * len(shares)       # per lane: how many of its answers were counted here
        try:
            outcomes = self._send(shares)
            for index, sent in enumerate(outcomes):
                if sent.resent:
                    self.health.add("icinga2_resent", sent.resent)
                for answer in sent.answers:
                    self._take_answer(answer)
                    taken[index] += 1
            # Then what stopped a lane (after the answers: the state says "waiting" at the end).
            hold = None
            for lane, sent in zip(self.lanes, outcomes):
                if sent.failure is not None:
                    self.health.add("icinga2_no_answer")
                    self._broken(lane)
                    hold = hold or (f"Icinga 2 API unavailable: {sent.failure}", "unavailable")
                elif sent.hold is not None:
                    self.health.add("written")
                    self.health.mark("icinga2_answer")
                    if sent.hold.action is Action.RETRY:
                        self._broken(lane)      # a 5xx: Icinga may be going down
                    hold = hold or (sent.hold.reason, "credentials" if sent.hold.action is Action.CREDENTIALS
                                    else "retry")
            if hold:
                self._hold(*hold)           # once for the batch, however many lanes stopped
        finally:
            if len(outcomes) == len(shares):
                # Not answered, and refusals not yet recorded (a failed reject): taken again.
                back = [item for sent, done in zip(outcomes, taken) for item in sent.rest +
                        [a.item for a in sent.answers[done:] if a.verdict.action is Action.DEAD_LETTER]]
            else:                           # a lane failed unexpectedly: all but the pending
                pending = {id(item) for lane in self.lanes for _, item in lane.pending}
                back = [item for item in prepared if id(item) not in pending]
            if back:
                self.spool.give_back(sorted(item.entry.entry_id for item in back))
            self._settle()

    def _send(self, shares: List[List[Prepared]]) -> List[Sent]:
        """Each lane sends its share, the lanes at the same time; the writer thread sends one."""
        halt = threading.Event()
        busy = [index for index, share in enumerate(shares) if share]
        futures = {index: self._pool.submit(self.lanes[index].send, shares[index], halt)
                   for index in busy[1:]} if self._pool is not None else {}
        outcomes = [Sent([], [])] * len(shares)
        try:
            if busy:
                outcomes[busy[0]] = self.lanes[busy[0]].send(shares[busy[0]], halt)
        finally:
            error = None
            for index, future in futures.items():
                try:
                    outcomes[index] = future.result()
                except Exception as exc:  # noqa: BLE001 - wait for every lane, then raise
                    error = error or exc
            if error is not None:
                raise error
        return outcomes

    def _take_answer(self, answer: Answer) -> None:
        """Count and act on an answer Icinga gave for good (a 200 is pending in its lane)."""
        item, verdict = answer
        self._probe_host = item.name.split("!", 1)[0]
        self.health.add("written")
        self.health.mark("icinga2_answer")
        self._answers_again()
        if verdict.action in (Action.INJECTED, Action.IGNORED):
            self.health.mark("inject")
            if verdict.action is Action.IGNORED:
                self.health.add("icinga2_ignored")
                self._warn(logging.INFO, "ignored", f"Icinga 2 accepted but ignored a result: {verdict.reason}")
        else:                           # Action.DEAD_LETTER
            if verdict.reason.startswith(check_result.UNKNOWN_OBJECT):
                self.objects.stale()       # the object may be gone: read the list again soon
            self._refuse(item.entry, verdict.reason)
