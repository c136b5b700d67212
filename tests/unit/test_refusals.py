"""The publisher's refusal/probe state machine, transition by transition:
(state, event) -> (new state, actions)."""
import pytest

from msg_nagios_bridge.outbound.refusals import (
    DEAD_LETTER, GIVE_BACK, ISOLATE_MESSAGES, PAUSE, RECONNECT, RESET_PAUSE,
    Answered, NamedNoMessage, Receipt, RefusedOne, SentOne, State, step)

QUIET = State()
ISOLATING = State(isolate=ISOLATE_MESSAGES)
PROBING = State(isolate=ISOLATE_MESSAGES, probing=True)


def refused(entry_id, attempts=0, max_refusals=3, accepted_since=False, inferred=False):
    return RefusedOne(entry_id=entry_id, attempts=attempts, max_refusals=max_refusals,
                      accepted_since=accepted_since, inferred=inferred)


TABLE = [
    # (why, state, event, new state, actions)
    ("a receipt is counted and ends a refusing-all pause's backoff",
     State(receipts=4), Receipt(), State(receipts=5), (RESET_PAUSE,)),
    ("a message sent with its own receipt counts down the isolation",
     State(isolate=2), SentOne(), State(isolate=1), ()),
    ("an unnamed ERROR in a transaction: isolate (one receipt each), reconnect",
     QUIET, NamedNoMessage(), ISOLATING, (RECONNECT,)),
    ("an unnamed ERROR while isolating: probe one at a time",
     State(isolate=7), NamedNoMessage(), PROBING, (RECONNECT,)),
    ("an unnamed ERROR while probing: still probing, isolation starts again",
     State(isolate=3, probing=True), NamedNoMessage(), PROBING, (RECONNECT,)),
    ("a reply that names its message ends probing",
     PROBING, Answered(inferred=False), ISOLATING, ()),
    ("a reply matched only by being the one in flight does not",
     PROBING, Answered(inferred=True), PROBING, ()),
    ("the first refusal is given back (nothing to compare yet); isolation starts",
     State(receipts=9), refused(1), State(isolate=ISOLATE_MESSAGES, receipts=9, last_refusal=(1, 9)), (GIVE_BACK,)),
    ("refused again at max_refusals tries, the broker taking others since: dead letter",
     State(last_refusal=(1, 0), receipts=5), refused(1, attempts=2, accepted_since=True),
     State(isolate=ISOLATE_MESSAGES, receipts=5, last_refusal=(1, 5)), (DEAD_LETTER,)),
    ("... the broker taking nothing since: it may refuse all; kept, and a pause",
     State(last_refusal=(1, 5), receipts=5), refused(1, attempts=2),
     State(isolate=ISOLATE_MESSAGES, receipts=5, last_refusal=(1, 5)), (GIVE_BACK, PAUSE)),
    ("refused again before max_refusals: given back",
     State(last_refusal=(1, 0), receipts=5), refused(1, attempts=1, accepted_since=True),
     State(isolate=ISOLATE_MESSAGES, receipts=5, last_refusal=(1, 5)), (GIVE_BACK,)),
    ("two messages in a row, no receipt between: the broker may refuse all (however lately it took one)",
     State(last_refusal=(1, 5), receipts=5), refused(2, attempts=1),
     State(isolate=ISOLATE_MESSAGES, receipts=5, last_refusal=(2, 5)), (GIVE_BACK, PAUSE)),
    ("... but one at its limit that the broker refused while it took others: dead letter",
     State(last_refusal=(1, 5), receipts=5), refused(2, attempts=2, accepted_since=True),
     State(isolate=ISOLATE_MESSAGES, receipts=5, last_refusal=(2, 5)), (DEAD_LETTER,)),
    ("... a receipt between the two refusals: not in a row",
     State(last_refusal=(1, 4), receipts=5), refused(2, attempts=0),
     State(isolate=ISOLATE_MESSAGES, receipts=5, last_refusal=(2, 5)), (GIVE_BACK,)),
    ("... nor the same message refused twice",
     State(last_refusal=(1, 5), receipts=5), refused(1, attempts=0),
     State(isolate=ISOLATE_MESSAGES, receipts=5, last_refusal=(1, 5)), (GIVE_BACK,)),
    ("an inferred refusal (probing) also drops the connection the broker is closing",
     State(isolate=5, probing=True), refused(1, inferred=True),
     State(isolate=ISOLATE_MESSAGES, probing=True, last_refusal=(1, 0)), (GIVE_BACK, RECONNECT)),
    ("an inferred refusal at the limit, the broker taking others since: dead letter, then reconnect",
     State(probing=True, last_refusal=(1, 0), receipts=2), refused(1, attempts=2, accepted_since=True, inferred=True),
     State(isolate=ISOLATE_MESSAGES, probing=True, receipts=2, last_refusal=(1, 2)), (DEAD_LETTER, RECONNECT)),
]


@pytest.mark.parametrize("why, state, event, expected, actions", TABLE, ids=[row[0] for row in TABLE])
def test_transition(why, state, event, expected, actions):
    assert step(state, event) == (expected, actions)


@pytest.mark.parametrize("state, window, one_each", [
    (QUIET, 50, False), (ISOLATING, 50, True), (PROBING, 1, True), (State(probing=True), 1, False)])
def test_what_the_state_allows(state, window, one_each):
    assert state.window(50) == window
    assert state.one_receipt_each == one_each


@pytest.mark.parametrize("state, kind, receipt_id, in_flight, inferred", [
    (PROBING, "error", "", 1, True),
    (PROBING, "error", "1-7", 1, False),      # it names its message
    (PROBING, "receipt", "", 1, False),
    (PROBING, "error", "", 0, False),         # nothing in flight to be about
    (ISOLATING, "error", "", 1, False),       # not probing: more than one may have been in flight
])
def test_an_unnamed_error_is_inferred_only_when_probing_with_one_in_flight(state, kind, receipt_id, in_flight, inferred):
    assert state.infers(kind, receipt_id, in_flight) is inferred


def test_a_broker_that_refuses_every_message_is_told_apart_from_one_bad_message():
    """A run of events as the publisher sees them: a bad message among good ones is dead-
    lettered; a broker that stops taking anything right after a receipt pauses instead, and
    never dead-letters, however many tries (review 2026-12-06: within 30 s of a receipt it
    dead-lettered a whole window)."""
    state, actions_seen = QUIET, []
    events = [Receipt(), NamedNoMessage(), refused(7, attempts=0), Receipt(),
              refused(7, attempts=1, accepted_since=True), Receipt(), refused(7, attempts=2, accepted_since=True)]
    for event in events:
        state, actions = step(state, event)
        actions_seen.append(actions)
    assert actions_seen[-1] == (DEAD_LETTER,)
    state, actions = step(state, Receipt())
    seen = []
    for attempts in range(6):                  # the broker now refuses all: 8 and 9, again and again
        for entry_id in (8, 9):
            state, actions = step(state, refused(entry_id, attempts=attempts))
            seen.append(actions)
    assert seen[0] == (GIVE_BACK,) and all(actions == (GIVE_BACK, PAUSE) for actions in seen[1:])


def test_an_unknown_event_is_an_error():
    with pytest.raises(TypeError):
        step(QUIET, "receipt")
