"""The inbound sink for Icinga 2: inbound spool -> ``POST /v1/actions/process-check-result``.

One request per result over one kept-alive TLS connection (api.py); Icinga answers for each
object, and that answer decides (check_result.judge):

* 200: Icinga accepted it: the entry is deleted once confirmed (CONFIRM_AFTER below:
  ``injected``; a 200 "Ignoring passive check result" for an unreachable object is deleted too
  and counted in ``icinga2_ignored``);
* 404 (no such object, or no permission), 400 and 403: Icinga will never take it: a dead
  letter (``unknown-object: ...``, ``icinga-refused: ...``);
* 401: the credentials are refused: the entry stays, the writer backs off and says so;
* any other status, or no answer at all: the entry stays and is sent again after a backoff.
  A request that got no answer may have been processed: sending it again can record it twice
  (duplicates rather than loss).

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
from collections import deque
from typing import Deque, List, Optional, Tuple

from ...config import Settings
from ...daemon.health import Backoff, Health, RateLimitedLog
from ...inbound.echo import EchoGuard
from ...model import result_from_dict
from ...spool import Spool, SpoolEntry, SpoolError
from ...wakeup import Wakeup
from . import check_result
from .api import ApiClient, ApiUnavailable
from .check_result import Action
from .objects import ObjectList, ObjectsUnavailable

log = logging.getLogger(__name__)

BATCH = 200             # entries taken from the spool at a time (one delete per batch)
IDLE_CLOSE = 5.0        # Icinga closes a connection idle for 10 to 15 s: close ours first
# A 200 from an Icinga that is stopping or reloading may come after it saved its state: the
# result is gone when it starts again (seen: the last result answered before a SIGTERM closed
# the connection). So an answered entry is deleted only once Icinga answered another request
# this long after it, on a connection that did not break in between; a break gives back what
# was answered less than this long before it (sent again: duplicates rather than loss).
CONFIRM_AFTER = 0.5
PART = "icinga2_writer"


class Icinga2Writer(threading.Thread):
    """Takes entries from the inbound spool, sends each to Icinga 2, deletes it once Icinga
    answered for its object. Counts ``written`` (requests answered), ``injected`` (200,
    confirmed, deleted), ``icinga2_ignored``, ``icinga2_no_answer``, ``icinga2_resent`` (answered
    shortly before a break, sent again) and dead letters by reason (``refused.<reason>``)."""

    def __init__(self, settings: Settings, spool: Spool, health: Health, echo: EchoGuard,
                 objects: ObjectList, client: Optional[ApiClient] = None):
        super().__init__(name="icinga2-writer", daemon=True)
        self.settings = settings
        self.check_source = settings.icinga2.check_source
        self.spool = spool
        self.health = health
        self.echo = echo
        self.objects = objects
        self.client = client or ApiClient(settings.icinga2)
        self.stopping = threading.Event()
        self.wakeup = Wakeup()
        spool.wake_on_put(self.wakeup)
        self._backoff = Backoff(0.5, 30.0)
        self._hold_until = 0.0              # monotonic: send nothing before (backoff)
        self._last_request = float("-inf")  # monotonic
        self._held_since: Optional[float] = None
        # Answered by Icinga (200), not yet confirmed: (monotonic time of the answer, entry id).
        self._pending: Deque[Tuple[float, int]] = deque()
        self._answered: List[int] = []      # confirmed, not yet deleted from the spool
        self._last_answer = float("-inf")   # monotonic: the last answer on an unbroken connection
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
                except SpoolError as exc:
                    self._warn(logging.ERROR, "spool", f"inbound spool problem, retrying: {exc}")
                    self.health.error(f"inbound spool: {exc}")
                    self._hold_until = time.monotonic() + 1.0
            try:
                if self._pending:
                    self._confirm_by_probe(final=True)
                self._settle()
            except SpoolError as exc:
                log.warning("could not delete the last results Icinga 2 took (%s): they will be sent again"
                            " at the next start", exc)
        finally:
            self.client.close()

    def _request(self, method: str, path: str, body=None):
        """(status, answer), or None when Icinga gave no answer (then held, the connection dropped)."""
        try:
            return self.client.request(method, path, body)
        except ApiUnavailable as exc:
            self.health.add("icinga2_no_answer")
            self._broken()
            self._hold(f"Icinga 2 API unavailable: {exc}", "unavailable")
            return None
        finally:
            self._last_request = time.monotonic()

    def _idle(self) -> None:
        """Nothing to send: close the connection before Icinga does (a request on a connection
        Icinga closed gets no answer, and would be sent twice), then sleep until a put."""
        self._set_state("waiting for results")
        if self._pending:
            self._confirm_by_probe()
            return
        idle = time.monotonic() - self._last_request
        if idle < IDLE_CLOSE:
            self.wakeup.wait(IDLE_CLOSE - idle)
            return
        self.client.close()
        self.wakeup.wait(self._warn.due_in())

    def _confirm(self) -> None:
        """Move the answers confirmed by a later answer CONFIRM_AFTER s on to ``_answered``."""
        while self._pending and self._pending[0][0] <= self._last_answer - CONFIRM_AFTER:
            self._answered.append(self._pending.popleft()[1])

    def _broken(self) -> None:
        """The connection broke: what was answered shortly before may be lost: send it again."""
        if self._pending:
            ids = [entry_id for _, entry_id in self._pending]
            self._pending.clear()
            self.spool.give_back(ids)
            self.health.add("icinga2_resent", len(ids))

    def _confirm_by_probe(self, final: bool = False) -> None:
        """Nothing more to send (``final``: the writer stops): wait until the last answer is
        CONFIRM_AFTER old, then ask Icinga something cheap on the same connection; an answer
        confirms every pending entry. Not final, a put or stop() ends the wait: back to the loop."""
        wait = self._pending[-1][0] + CONFIRM_AFTER - time.monotonic()
        if wait > 0:
            if not final:
                self.wakeup.wait(wait)
                return                  # the loop comes back here when the time has come
            time.sleep(wait)
        host = self._probe_host
        answered = self._request("GET", "/v1/objects/hosts?" + urllib.parse.urlencode(
            {"host": host, "attrs": "name"}, quote_via=urllib.parse.quote, safe=""))
        if answered is None:
            return
        status, _ = answered
        if status >= 500 or status == 401:
            self._broken()
            self._hold(f"Icinga 2 answered {status} to a probe", "probe")
            return
        self._last_answer = time.monotonic()
        self._confirm()
        self._settle()

    def _settle(self) -> None:
        """Delete what Icinga answered for (kept across a failed delete, to try again)."""
        self._confirm()
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
        """Send ``entries`` (taken from the spool) one by one; what Icinga did not answer for
        goes back to the spool."""
        try:
            known = self.objects.get()
        except ObjectsUnavailable as exc:
            self.spool.give_back([entry.entry_id for entry in entries])
            self._hold(str(exc), "objects")
            return
        prepared = []
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
            prepared.append((entry, result, name, path, body))
        if not prepared:
            return
        try:
            self.echo.about_to_inject(result for _, result, _, _, _ in prepared)
        except SpoolError:
            self.spool.give_back([entry.entry_id for entry, _, _, _, _ in prepared])
            raise
        sent = 0
        try:
            for entry, _, name, path, body in prepared:
                if time.monotonic() - self._last_request >= IDLE_CLOSE:
                    self.client.close()
                answered = self._request("POST", path, body)
                if answered is None:
                    return
                status, answer = answered
                self._last_answer = self._last_request
                self._probe_host = name.split("!", 1)[0]
                self.health.add("written")
                self.health.mark("icinga2_answer")
                verdict = check_result.judge(status, answer, name)
                if verdict.action in (Action.INJECTED, Action.IGNORED):
                    self._pending.append((self._last_answer, entry.entry_id))
                    sent += 1
                    self.health.mark("inject")
                    self._answers_again()
                    if verdict.action is Action.IGNORED:
                        self.health.add("icinga2_ignored")
                        self._warn(logging.INFO, "ignored", f"Icinga 2 accepted but ignored a result: {verdict.reason}")
                elif verdict.action is Action.DEAD_LETTER:
                    self._answers_again()
                    if verdict.reason.startswith(check_result.UNKNOWN_OBJECT):
                        self.objects.stale()       # the object may be gone: read the list again soon
                    self._refuse(entry, verdict.reason)
                    sent += 1
                else:
                    what = "credentials" if verdict.action is Action.CREDENTIALS else "retry"
                    if verdict.action is Action.RETRY:
                        self._broken()      # a 5xx: Icinga may be going down
                    self._hold(verdict.reason, what)
                    return
        finally:
            unanswered = [entry.entry_id for entry, _, _, _, _ in prepared[sent:]]
            if unanswered:
                self.spool.give_back(unanswered)
            self._settle()
