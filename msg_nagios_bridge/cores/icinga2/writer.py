"""The inbound sink for Icinga 2: inbound spool -> ``POST /v1/actions/process-check-result``.

One request per result, on ``icinga2.connections`` lanes: a lane is one kept-alive TLS
connection (api.LeanClient: a minimal HTTP/1.1 exchange, a third of http.client's CPU), a
thread of its own, an inbox, and the answers on its connection not yet confirmed. A result goes
to the lane of its object (lane_of: a CRC-32 of ``host!service``, the same in every run), in
spool order; each lane sends what its inbox holds, one request after the other's answer, and
posts the answers back. The writer thread keeps up to 2 x BATCH entries handed out, so no lane
waits for another (a slow lane holds only its own objects; the lanes once waited for each
other at every batch of 200: docs/icinga2.md). So one object's results always go on one
connection, each after Icinga answered the one before, in spool order (a given-back entry is
taken again before newer ones). Only the writer thread touches the spool, the counters and the
health state. Why lanes: one request at a time waits for each answer, with Icinga and the
bridge mostly idle meanwhile.

Icinga answers for each object, and that answer decides (check_result.judge):

* 200: Icinga accepted it: the entry is deleted once confirmed (CONFIRM_AFTER below:
  ``injected``; a 200 "Ignoring passive check result" for an unreachable object is deleted too
  and counted in ``icinga2_ignored``);
* 404 (no such object, or no permission), 400 and 403: Icinga will never take it: a dead
  letter (``unknown-object: ...``, ``icinga-refused: ...``);
* 401: the credentials are refused: the entry stays, the writer backs off and says so;
* a 5xx in the object's own entry (its action failed: Icinga answers so for that request
  alone): only its lane stops, the entry is sent again, and after MAX_SERVER_ERRORS such
  answers it is a dead letter (``icinga-error: ...``): retried for ever, one such result
  stalled every lane;
* any other status, or no answer at all: the entry stays and is sent again after a backoff.
  A request that got no answer may have been processed: sending it again can record it twice
  (duplicates rather than loss).

But when 403s, 404s or an object's 5xx come for REFUSING_ALL different objects in a row, no
200 between, Icinga refuses or fails everything (an ApiUser without the permission: 2.13
answers 404, later versions 403): they are kept, not counted, and the writer holds and backs
off, instead of moving the whole spool to the dead letters (which past their limit deletes
the oldest).

A lane that gets no answer, a 401 or a 5xx stops, and so do the others after their request
under way; what they did not get answered, and what waits in their inboxes, goes back to the
spool, and the writer backs off once.

Before sending, what Icinga would store badly or refuse is refused here: objects not in its
object list (objects.py) and requests over check_result.MAX_BODY_BYTES. The worker sleeps on
one Wakeup that a put into the spool and stop() set.
"""
from __future__ import annotations

import functools
import urllib.parse
import logging
import threading
import time
import zlib
from collections import deque
from typing import Any, Callable, Deque, Dict, List, NamedTuple, Optional, Sequence, Tuple, TypeVar

from ...config import Settings
from ...daemon.health import Backoff, Health, RateLimitedLog
from ...inbound.echo import EchoGuard
from ...model import CheckResult, SpooledResults
from ...spool import Spool, SpoolEntry, SpoolError
from ...wakeup import Wakeup
from . import check_result
from .api import ApiUnavailable, LeanClient
from .check_result import Action, Verdict
from .objects import ObjectList, ObjectsUnavailable
from ...daemon.threadname import name_os_thread, named_thread_starter

log = logging.getLogger(__name__)

BATCH = 200             # entries taken from the spool at a time (one delete per batch)
IDLE_CLOSE = 5.0        # Icinga closes a connection idle for 10 to 15 s: close ours first
# A 200 from an Icinga that is stopping or reloading may come after it saved its state: the
# result is gone when it starts again (seen: the last result answered before a SIGTERM closed
# the connection). So an answered entry is deleted only once Icinga answered another request
# this long after it, on the same connection, unbroken in between; a break gives back what
# was answered on that connection and not yet confirmed (sent again: duplicates rather than loss).
CONFIRM_AFTER = 0.5
SETTLE_EVERY = 0.2      # seconds a confirmed entry may wait for its (shared, durable) delete
REFUSING_ALL = 3        # refusals for this many different objects in a row, no 200 between: hold
MAX_SERVER_ERRORS = 5   # an object's 5xx answers to one result: then a dead letter
SERVER_ERRORS_KEPT = 1000   # entries whose 5xx answers are counted (the oldest forgotten past it)
ICINGA_ERROR = "icinga-error"
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
    confirmed. Its connection, pending and times: touched by the lane's thread, and by the
    writer thread only while every lane is halted and none busy, or their threads ended (a
    stop). Its inbox and busy flag: only under the writer's Condition."""

    def __init__(self, client: LeanClient):
        self.client = client
        # Answered 200, not yet confirmed: (monotonic time of the answer, the entry sent).
        self.pending: Deque[Tuple[float, Prepared]] = deque()
        self.last_request = float("-inf")   # monotonic
        self.last_answer = float("-inf")    # monotonic: the last answer on this connection
        self.inbox: Deque[Prepared] = deque()   # to send (the writer appends, the lane's thread takes)
        self.busy = False                   # the lane's thread is sending or probing

    def probe_due(self) -> Optional[float]:
        """Seconds until a probe would confirm every pending answer (<= 0: now); None when
        nothing is pending."""
        if not self.pending:
            return None
        return self.last_answer + CONFIRM_AFTER - time.monotonic()

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
            except Exception as exc:  # noqa: BLE001 - a bug: what is queued (resent ones too) goes back
                log.exception("icinga2 lane: sending failed")
                self.client.close()
                halt.set()
                return Sent(answers, list(queue), failure=f"internal error: {exc}", resent=resent)
            verdict = check_result.judge(status, answer, item.name)
            if verdict.action in (Action.CREDENTIALS, Action.RETRY):
                if not verdict.for_object:
                    halt.set()          # Icinga cannot take results now: every lane stops
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
                 objects: ObjectList, results: Optional[SpooledResults] = None):
        super().__init__(name="icinga2-writer", daemon=True)
        self.settings = settings
        self.results = results or SpooledResults()     # the subscriber's (daemon/service.py)
        self.check_source = settings.icinga2.check_source
        self.spool = spool
        self.health = health
        self.echo = echo
        self.objects = objects
        self.lanes = [Lane(LeanClient(settings.icinga2)) for _ in range(settings.icinga2.connections)]
        # Shared with the lane threads, under _cond: each lane's inbox and busy flag, _events,
        # _closing. A lane thread sends what its inbox holds and posts (lane, Sent, confirmed
        # ids) to _events; everything else (the spool, counters, health) is this thread's.
        self._cond = threading.Condition()
        self._events: Deque[Tuple[int, Sent, List[int]]] = deque()
        self._halt = threading.Event()     # set by a lane that stopped: the others stop too
        self._closing = False
        self._lane_threads: List[threading.Thread] = []
        self._outstanding = 0               # handed to the lanes, not yet come back in an event
        self.stopping = threading.Event()
        self.wakeup = Wakeup()
        spool.wake_on_put(self.wakeup)
        self._backoff = Backoff(0.5, 30.0)
        self._hold_until = 0.0              # monotonic: send nothing before (backoff)
        self._held_since: Optional[float] = None
        self._answered: List[int] = []      # confirmed, not yet deleted from the spool
        self._settle_due = 0.0              # monotonic: delete _answered by then
        self._state = ""
        self._probe_host = ""               # a host Icinga has: the probe's cheap question
        self._refused_in_row: set = set()   # objects refused (for_object) since the last 200
        self._server_errors: Dict[int, int] = {}    # entry id -> an object's 5xx answers to it
        self._last_refusal = ""
        self._warn = RateLimitedLog(log)

    def stop(self) -> None:
        self.stopping.set()
        self.wakeup.set()

    def _set_state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self.health.set_state(PART, state)

    def run(self) -> None:
        name_os_thread(self.name)
        self._set_state("waiting for results")
        self._start_lanes()
        try:
            while not self.stopping.is_set():
                self._warn.flush()
                try:
                    self._collect()
                    self._settle(force=self._outstanding == 0)
                    wait = self._hold_until - time.monotonic()
                    if wait > 0:
                        self.wakeup.wait(wait)
                        continue
                    if self._outstanding < BATCH:
                        entries = self.spool.take(BATCH)
                        if entries:
                            self.deliver(entries)
                            continue
                    if self._outstanding == 0:
                        self._set_state("waiting for results")
                    self.wakeup.wait(self._next_wake())
                except SpoolError as exc:
                    self._warn(logging.ERROR, "spool", f"inbound spool problem, retrying: {exc}")
                    self.health.error(f"inbound spool: {exc}")
                    self._hold_until = time.monotonic() + 1.0
            try:
                # The lanes' threads end first (each after its request under way): a lane
                # released here would probe its connection while this thread probes it too.
                self._halt.set()
                self._stop_lanes()
                self._collect(halting=True)
                self._take_back_inboxes()
                if self._pending():
                    self._confirm_by_probe()
                self._settle()
            except SpoolError as exc:
                log.warning("could not delete the last results Icinga 2 took (%s): they will be sent again"
                            " at the next start", exc)
        finally:
            self._stop_lanes()
            for lane in self.lanes:
                lane.client.close()

    # -- the lane threads ------------------------------------------------------------------------

    def _start_lanes(self) -> None:
        for index in range(len(self.lanes)):
            self._lane_threads.append(named_thread_starter(f"icinga2-lane-{index}")(
                functools.partial(self._lane_loop, index)))

    def _stop_lanes(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for thread in self._lane_threads:
            thread.join(timeout=60)

    def _lane_loop(self, index: int) -> None:
        """A lane's thread: send what its inbox holds; when it has nothing to send, probe its
        connection once its unconfirmed answers are CONFIRM_AFTER old (else, with the other
        lanes busy, they would wait for its idle close and be sent again), and close the
        connection before Icinga's idle timeout does."""
        lane = self.lanes[index]
        while True:
            with self._cond:
                while True:
                    if self._closing:
                        return
                    if not self._halt.is_set():
                        if lane.inbox:
                            chunk = list(lane.inbox)
                            lane.inbox.clear()
                            break
                        due = lane.probe_due()
                        if due is not None and due <= 0:
                            chunk = []      # nothing to send: a probe
                            break
                    else:
                        due = None
                    idle = IDLE_CLOSE - (time.monotonic() - lane.last_request)
                    if lane.client.connected and not lane.pending and idle <= 0:
                        lane.client.close()
                    timeouts = [t for t in (due, idle if lane.client.connected else None) if t is not None and t > 0]
                    self._cond.wait(min(timeouts) if timeouts else None)
                lane.busy = True
            try:
                sent = lane.send(chunk, self._halt) if chunk else self._probe_lane(lane)
                confirmed = lane.confirmed()
            except Exception as exc:  # noqa: BLE001 - a bug must not end the lane silently
                log.exception("icinga2 lane %d failed", index)
                sent, confirmed = Sent([], list(chunk), failure=f"internal error: {exc}"), []
                self._halt.set()
            with self._cond:
                lane.busy = False
                self._events.append((index, sent, confirmed))
                self._cond.notify_all()
            self.wakeup.set()

    def _probe_lane(self, lane: Lane) -> Sent:
        """Ask Icinga something cheap on ``lane``: its answer confirms the lane's answers that
        are CONFIRM_AFTER old. No answer, a 401 or a 5xx: a failed Sent (the lane stops)."""
        if not lane.client.connected:
            # Closed (idle, or Icinga said Connection: close) before its answers were confirmed:
            # a new connection cannot confirm them; send them again (send() does, on it).
            again = [item for _, item in lane.pending]
            lane.pending.clear()
            sent = lane.send(again, self._halt)
            return sent._replace(resent=sent.resent + len(again)) if again else sent
        path = "/v1/objects/hosts?" + urllib.parse.urlencode(
            {"host": self._probe_host, "attrs": "name"}, quote_via=urllib.parse.quote, safe="")
        try:
            status, _ = lane.request("GET", path)
        except ApiUnavailable as exc:
            self._halt.set()
            return Sent([], [], failure=str(exc))
        if status >= 500 or status == 401:
            self._halt.set()
            return Sent([], [], hold=Verdict(Action.RETRY if status >= 500 else Action.CREDENTIALS,
                                             f"Icinga 2 answered {status} to a probe"))
        return Sent([], [])

    def _halt_lanes(self, hold: Optional[Tuple[str, str]] = None) -> Optional[Tuple[str, str]]:
        """Stop every lane after its request under way, take back what they hold (their
        inboxes go back to the spool, with what each lane did not get answered), release
        them; (problem, key) when a lane stopped on something to hold on (``hold``: what the
        events already taken said)."""
        self._halt.set()
        with self._cond:
            self._cond.notify_all()
            while any(lane.busy for lane in self.lanes):
                self._cond.wait()
        # A spool error here leaves the halt set, with the events after it: the next
        # _collect halts again (released now, a lane could run while its event is taken).
        hold = self._collect(halting=True) or hold
        if hold is not None and hold[1] == "unavailable":
            # No answer on one connection: Icinga stopped, restarted or reloaded, which ends
            # every kept-alive connection. Kept, each would fail in turn on its next request,
            # each failure a backoff, doubled if no answer came between. Closed now, the next
            # requests open new ones; what they answered and was not confirmed is sent again
            # first, as after any closed connection (Lane.send).
            for lane in self.lanes:
                lane.client.close()
        back = self._take_back_inboxes(give_back=False)
        with self._cond:
            self._halt.clear()
            self._cond.notify_all()         # a lane with answers to confirm may probe again
        if back:
            self.spool.give_back(back)
        return hold

    def _take_back_inboxes(self, give_back: bool = True) -> List[int]:
        """Empty the lanes' inboxes (the lanes are halted); their entries go back to the spool
        (``give_back``), else their ids are returned."""
        back: List[int] = []
        with self._cond:
            for lane in self.lanes:
                back += [item.entry.entry_id for item in lane.inbox]
                self._outstanding -= len(lane.inbox)
                lane.inbox.clear()
        back.sort()
        if give_back and back:
            self.spool.give_back(back)
        return back

    def _pending(self) -> List[Lane]:
        """The lanes with answers not yet confirmed (only while the lanes are halted)."""
        return [lane for lane in self.lanes if lane.pending]

    def _broken(self, lane: Lane) -> None:
        """The lane's connection broke (the lanes are halted): what was answered on it shortly
        before may be lost: send it again."""
        if lane.pending:
            ids = [item.entry.entry_id for _, item in lane.pending]
            lane.pending.clear()
            self.spool.give_back(ids)
            self.health.add("icinga2_resent", len(ids))

    def _confirm_by_probe(self) -> None:
        """The writer stops, the lanes are halted: wait until the last answer is CONFIRM_AFTER
        old, then probe each lane with answers to confirm."""
        lanes = self._pending()
        wait = max(lane.pending[-1][0] for lane in lanes) + CONFIRM_AFTER - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        for lane in lanes:
            if not lane.client.connected:
                self._broken(lane)          # sent again at the next start, not now
                continue
            sent = self._probe_lane(lane)
            if sent.failure is not None or sent.hold is not None:
                self._broken(lane)
            else:
                self._note_confirmed(lane.confirmed())

    # -- the writer thread -----------------------------------------------------------------------

    def _next_wake(self) -> Optional[float]:
        """Seconds until this thread has something of its own to do (a rate-limited warning, a
        delete due); None: only when woken."""
        waits = [self._warn.due_in()] + ([self._settle_due - time.monotonic()] if self._answered else [])
        waits = [max(w, 0.0) for w in waits if w is not None]
        return min(waits) if waits else None

    def _collect(self, halting: bool = False) -> Optional[Tuple[str, str]]:
        """Act on what the lanes posted: count the answers, note what is confirmed; when a lane
        stopped (no answer, 401, 5xx), halt them all, take everything back, back off once.
        ``halting``: only act on the events; (problem, key) when a lane stopped on one."""
        hold = None
        while True:
            with self._cond:
                if not self._events:
                    break
                # One at a time: after an error (a spool write), the rest are still there.
                index, sent, confirmed = self._events.popleft()
            self._note_confirmed(confirmed)
            hold = self._take_sent(self.lanes[index], sent) or hold
        if halting:
            return hold
        # Also when a lane's stop was not seen (a spool error ended an earlier _collect
        # before it), or its event is not yet posted: else the halt stayed set for good.
        if hold or self._halt.is_set():
            hold = self._halt_lanes(hold)
            if hold:
                self._hold(*hold)           # once, however many lanes stopped
        return None

    def _take_sent(self, lane: Lane, sent: Sent) -> Optional[Tuple[str, str]]:
        """Count one lane's Sent and give back what it did not get answered; (problem, key)
        when the lane stopped on it."""
        taken, kept = 0, []
        rest, failed_alone = list(sent.rest), sent.hold is not None and sent.hold.for_object
        try:
            if sent.resent:
                self.health.add("icinga2_resent", sent.resent)
            for answer in sent.answers:
                if not self._take_answer(answer):
                    kept.append(answer.item)
                taken += 1
            if failed_alone:
                self.health.add("written")
                if not self._refused_by_all(rest[0].name) and self._failed_again(rest[0].entry, sent.hold):
                    rest.pop(0)
        finally:
            # Not answered, kept (Icinga refuses all), and refusals not yet recorded (a failed
            # reject): taken again.
            back = rest + kept + [a.item for a in sent.answers[taken:] if a.verdict.action is Action.DEAD_LETTER]
            # Entries sent again were counted back with their first answer already.
            self._outstanding -= len(sent.answers) + len(sent.rest) - sent.resent
            if back:
                self.spool.give_back(sorted(item.entry.entry_id for item in back))
        if sent.failure is not None:
            self.health.add("icinga2_no_answer")
            self._broken(lane)
            return f"Icinga 2 API unavailable: {sent.failure}", "unavailable"
        if len(self._refused_in_row) >= REFUSING_ALL and (failed_alone or (kept and sent.hold is None)):
            self._halt.set()            # the other lanes would only be refused too
            reason = sent.hold.reason if failed_alone else self._last_refusal
            return (f"Icinga 2 refuses every result ({len(self._refused_in_row)} objects in a row, none"
                    f" accepted; the last: {reason}); check the ApiUser's permission"
                    " actions/process-check-result, and Icinga 2's log", "refuses-all")
        if failed_alone:
            return None                 # that lane stopped; the others go on
        if sent.hold is not None:
            self.health.add("written")
            self.health.mark("icinga2_answer")
            if sent.hold.action is Action.RETRY:
                self._broken(lane)      # a 5xx: Icinga may be going down
            return sent.hold.reason, "credentials" if sent.hold.action is Action.CREDENTIALS else "retry"
        return None

    def _refused_by_all(self, name: str) -> bool:
        """Note a refusal for object ``name`` (Verdict.for_object); True when such refusals
        came for REFUSING_ALL different objects since the last 200: Icinga refuses all."""
        self._refused_in_row.add(name)
        return len(self._refused_in_row) >= REFUSING_ALL

    def _failed_again(self, entry: SpoolEntry, verdict: Verdict) -> bool:
        """Count an object's 5xx answer to ``entry``; True when that made it a dead letter."""
        count = self._server_errors.pop(entry.entry_id, 0) + 1
        if count < MAX_SERVER_ERRORS:
            self._server_errors[entry.entry_id] = count
            while len(self._server_errors) > SERVER_ERRORS_KEPT:
                del self._server_errors[next(iter(self._server_errors))]
            return False
        self._refuse(entry, f"{ICINGA_ERROR}: {verdict.reason} ({count} times to this result)")
        return True

    def _settle(self, force: bool = True) -> None:
        """Delete what Icinga answered for (kept across a failed delete, to try again). Not
        ``force``d: only once BATCH are confirmed or the oldest waited SETTLE_EVERY (one
        durable delete for many answers; a crash before it only sends them again)."""
        if not self._answered:
            return
        if not force and len(self._answered) < BATCH and time.monotonic() < self._settle_due:
            return
        self.spool.done(self._answered)
        self.health.add("injected", len(self._answered))
        self._answered = []

    def _note_confirmed(self, ids: List[int]) -> None:
        if ids and not self._answered:
            self._settle_due = time.monotonic() + SETTLE_EVERY
        self._answered += ids

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
        # One backoff step an attempt: the lanes of one attempt find Icinga gone one after
        # another (a collect each), and each stepping it took the hold from 0.5 s to its 30 s
        # cap at once (an Icinga restart of 3 s held results for 29 s).
        if now >= self._hold_until:
            self._hold_until = now + self._backoff.next_delay()

    def _answers_again(self) -> None:
        if self._held_since is not None:
            log.info("Icinga 2 takes results again (held back for %.0f s)", time.monotonic() - self._held_since)
            self._held_since = None
            self._backoff.reset()
        self._set_state("writing")

    def deliver(self, entries: List[SpoolEntry]) -> None:
        """Hand ``entries`` (taken from the spool) to the lanes, each object's to its lane in
        spool order; returns at once (the lanes post what Icinga answered)."""
        try:
            known = self.objects.get()
        except ObjectsUnavailable as exc:
            self.spool.give_back([entry.entry_id for entry in entries])
            self._hold(str(exc), "objects")
            return
        prepared: List[Prepared] = []
        for index, entry in enumerate(entries):
            try:
                reason = None
                try:
                    result = self.results.decode(entry.message.body)
                except (ValueError, TypeError) as exc:   # decode() already refuses these; defence in depth
                    reason = f"unwritable: cannot be sent to Icinga 2: {exc}"
                else:
                    name = check_result.object_name(result)
                    if (result.host, result.service) not in known:
                        reason = check_result.unknown_object_reason(name, answered=False)
                    else:
                        path, body = check_result.request(result, self.check_source)
                        reason = check_result.too_big_reason(check_result.body_size(body))
                if reason:
                    self._refuse(entry, reason)
                else:
                    prepared.append(Prepared(entry, result, name, path, body))
            except SpoolError:
                # A dead letter not recorded (disk full): this entry, the rest and those
                # prepared go back, or they stayed leased until a restart (review 2026-12-05).
                self.spool.give_back(sorted([item.entry.entry_id for item in prepared]
                                            + [later.entry_id for later in entries[index:]]))
                raise
        if not prepared:
            return
        try:
            self.echo.about_to_inject(item.result for item in prepared)
        except SpoolError:
            self.spool.give_back([item.entry.entry_id for item in prepared])
            raise
        shares = split_by_lane(prepared, lambda item: item.name, len(self.lanes))
        with self._cond:
            for lane, share in zip(self.lanes, shares):
                lane.inbox.extend(share)
            self._outstanding += len(prepared)
            self._cond.notify_all()

    def _take_answer(self, answer: Answer) -> bool:
        """Count and act on an answer Icinga gave for good (a 200 is pending in its lane).
        False: a refusal kept, not a dead letter (Icinga refuses every result: give it back)."""
        item, verdict = answer
        self.health.add("written")
        self.health.mark("icinga2_answer")
        if verdict.action in (Action.INJECTED, Action.IGNORED):
            self._probe_host = item.name.split("!", 1)[0]
            self._refused_in_row.clear()
            self._answers_again()
            self.health.mark("inject")
            if verdict.action is Action.IGNORED:
                self.health.add("icinga2_ignored")
                self._warn(logging.INFO, "ignored", f"Icinga 2 accepted but ignored a result: {verdict.reason}")
            return True
        # Action.DEAD_LETTER
        if verdict.reason.startswith(check_result.UNKNOWN_OBJECT):
            self.objects.stale()       # the object may be gone: read the list again soon
        if verdict.for_object and self._refused_by_all(item.name):
            self._last_refusal = verdict.reason
            return False
        self._refuse(item.entry, verdict.reason)
        return True
