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
* a message refused by name is given back, and after ``max_refusals`` tries dead-lettered;
* **refusing all**: two different messages refused in a row with no receipt between them and
  none for ``REFUSING_ALL_AFTER`` seconds means the broker refuses everything (store full, a
  permission withdrawn): the message is given back and the publisher pauses (with backoff)
  instead of emptying the spool into the dead letters.

``step(state, event)`` returns the new state and the actions the publisher must carry out;
times come in with the events. The publisher keeps the window, the transactions and the spool.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple, Union

ISOLATE_MESSAGES = 2000     # after an ERROR that named no message: this many with a receipt each
# No receipt for this long and refusals of different messages in a row: the broker refuses all.
REFUSING_ALL_AFTER = 30.0

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
    receipt_at: float = float("-inf")   # monotonic time of the last receipt
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
    """A RECEIPT for one of ours (a message or a transaction) arrived at ``at``."""
    at: float


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
    """An ERROR about one message: its spool entry, the tries so far (before this one),
    the limit, and when. ``inferred`` as in Answered: the broker then closes the connection."""
    entry_id: int
    attempts: int
    max_refusals: int
    at: float
    inferred: bool = False


Event = Union[Receipt, SentOne, Answered, NamedNoMessage, RefusedOne]


def step(state: State, event: Event) -> Tuple[State, Tuple[str, ...]]:
    """The state after ``event`` and what the publisher must do, in order."""
    replace = dataclasses.replace
    if isinstance(event, Receipt):
        return replace(state, receipts=state.receipts + 1, receipt_at=event.at), (RESET_PAUSE,)
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
        if last is None:
            actions: Tuple[str, ...] = (GIVE_BACK,)         # the first: nothing to compare yet
        elif last[1] == state.receipts and last[0] != event.entry_id and \
                event.at - state.receipt_at > REFUSING_ALL_AFTER:
            # Two messages refused in a row, none accepted between or for a while: the broker
            # refuses everything (store full, a permission withdrawn). Dead-lettering would
            # empty the spool into the dead letters (and past max_dead_letters delete them):
            # keep them and retry, more slowly. (A broker that still took messages lately
            # refuses these ones: their destination, say, as for a route it does not authorise.
            # Those go to the dead letters after max_refusals.)
            actions = (GIVE_BACK, PAUSE)
        elif event.attempts + 1 >= event.max_refusals:
            actions = (DEAD_LETTER,)
        else:
            actions = (GIVE_BACK,)
        if event.inferred:
            # Such an ERROR closes the connection; what the broker still sends before closing
            # is about no message of ours.
            actions += (RECONNECT,)
        return new, actions
    raise TypeError(f"not a refusal event: {event!r}")
