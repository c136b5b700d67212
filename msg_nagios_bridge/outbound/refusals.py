"""What the publisher does when the broker refuses: a pure state machine (no I/O, no clock).

The broker answers a SEND or COMMIT with an ERROR frame when it refuses a message (a
destination it does not allow, a frame over its size limit, a full store). Inside a
transaction such an ERROR names no message, so the publisher narrows down:

* **isolating**: after an ERROR that named no message, the next ``ISOLATE_MESSAGES`` messages
  go out with one receipt each, so that an ERROR names the message it is about;
* **probing**: if an ERROR names no message even then (ActiveMQ's answer to an oversize frame,
  after which it closes the connection), one message at a time is in flight until a reply
  names its message again; an ERROR that names nothing is then inferred to be about the one
  message in flight;
* a message refused by name is given back, and after ``max_refusals`` tries dead-lettered, but
  only if the broker took another message after its first refusal: proof that it refuses this
  one, not everything (the publisher holds a refused message back until then, or until
  nothing else is left to send, so that others go out between its tries);
* **refusing all**: two different messages refused in a row with no receipt between them, or a
  message at its limit while the broker took nothing since its first refusal, may mean the
  broker refuses everything (store full, a permission withdrawn): the message is given back
  and the publisher pauses (with backoff) instead of emptying the spool into the dead letters
  (and past ``max_dead_letters`` deleting them). A receipt ends the pause's backoff.

``step(state, event)`` returns the new state and the actions the publisher must carry out;
times come in with the events. The publisher keeps the window, the transactions and the spool.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple, Union

ISOLATE_MESSAGES = 2000     # after an ERROR that named no message: this many with a receipt each

# Actions
GIVE_BACK = "give back"                 # the refused message: send it again later
DEAD_LETTER = "dead letter"             # the refused message: refused for certain
PAUSE = "pause"                         # the broker refuses all: wait (backoff) before sending
RESET_PAUSE = "reset pause backoff"     # a receipt: the broker takes messages again
RECONNECT = "reconnect"                 # nothing in flight can be trusted: give all back, reconnect


@dataclasses.dataclass(frozen=True)
class State:
    isolate: int = 0                    # messages still to send with one receipt each
    probing: bool = False               # one message in flight at a time
    receipts: int = 0                   # receipts counted so far (to compare refusals)
    last_refusal: Optional[Tuple[int, int]] = None     # (entry id, receipts by then)

    def window(self, max_in_flight: int) -> int:
        """How many messages may be in flight."""
        return 1 if self.probing else max_in_flight

    @property
    def one_receipt_each(self) -> bool:
        """Send each message with its own receipt (not in a transaction)."""
        return self.isolate > 0

    def infers(self, kind: str, receipt_id: str, in_flight: int) -> bool:
        """An ERROR that names no message is about the one message in flight (probing)."""
        return kind != "receipt" and not receipt_id and self.probing and in_flight == 1


# Events


@dataclasses.dataclass(frozen=True)
class Receipt:
    """A RECEIPT for one of ours (a message or a transaction) arrived."""


@dataclasses.dataclass(frozen=True)
class SentOne:
    """One message went out with its own receipt."""


@dataclasses.dataclass(frozen=True)
class Answered:
    """A reply (receipt or error) matched something in flight; ``inferred``: matched only by
    being the one message in flight (it named none)."""
    inferred: bool


@dataclasses.dataclass(frozen=True)
class NamedNoMessage:
    """An ERROR that named no message (read, or left unread when the connection went)."""


@dataclasses.dataclass(frozen=True)
class RefusedOne:
    """An ERROR about one message: its spool entry, the tries so far (before this one) and
    the limit; ``accepted_since``: a receipt came after this message's first refusal (the
    publisher keeps that per message, in memory). ``inferred`` as in Answered: the broker then closes
    the connection."""
    entry_id: int
    attempts: int
    max_refusals: int
    accepted_since: bool = False
    inferred: bool = False


Event = Union[Receipt, SentOne, Answered, NamedNoMessage, RefusedOne]


def step(state: State, event: Event) -> Tuple[State, Tuple[str, ...]]:
    """The state after ``event`` and what the publisher must do, in order."""
    replace = dataclasses.replace
    if isinstance(event, Receipt):
        return replace(state, receipts=state.receipts + 1), (RESET_PAUSE,)
    if isinstance(event, SentOne):
        return replace(state, isolate=state.isolate - 1), ()
    if isinstance(event, Answered):
        # A reply that names its message: the broker's answers can be told apart again.
        return replace(state, probing=state.probing and event.inferred), ()
    if isinstance(event, NamedNoMessage):
        # Already isolating and still no name: probe one at a time.
        return replace(state, probing=state.probing or state.isolate > 0, isolate=ISOLATE_MESSAGES), (RECONNECT,)
    if isinstance(event, RefusedOne):
        last = state.last_refusal
        new = replace(state, isolate=ISOLATE_MESSAGES, last_refusal=(event.entry_id, state.receipts))
        in_a_row = last is not None and last[1] == state.receipts and last[0] != event.entry_id
        at_limit = event.attempts + 1 >= event.max_refusals
        actions: Tuple[str, ...]
        if at_limit and event.accepted_since:
            # Refused again and again, the broker taking other messages after the first time:
            # it refuses this one (its destination, say, for a route it does not authorise).
            actions = (DEAD_LETTER,)
        elif in_a_row or at_limit:
            # Different messages refused in a row, or one at its limit with nothing accepted
            # since its first refusal: the broker may refuse everything (store full, a permission
            # withdrawn). Dead-lettering would empty the spool into the dead letters (and past
            # max_dead_letters delete them): keep them and retry, more slowly. (Review
            # 2026-12-06: a rule on the time since the last receipt dead-lettered a whole
            # window within seconds of a broker that had just stopped taking messages.)
            actions = (GIVE_BACK, PAUSE)
        else:
            actions = (GIVE_BACK,)
        if event.inferred:
            # Such an ERROR closes the connection; what the broker still sends before closing
            # is about no message of ours.
            actions += (RECONNECT,)
        return new, actions
    raise TypeError(f"not a refusal event: {event!r}")
