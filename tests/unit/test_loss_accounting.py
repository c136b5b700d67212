"""Loss accounting (docs/loss-accounting.md): the outbound spool's numbering, the receiver's
tracker, its persistence with the inbound spool, and what status, metrics and check make of it."""
import json
import time

import pytest

from msg_nagios_bridge import config
from msg_nagios_bridge.cli.selfcheck import CRITICAL, OK, WARNING, Thresholds, evaluate
from msg_nagios_bridge.cli.main import main
from msg_nagios_bridge.daemon import metrics
from msg_nagios_bridge.daemon import status as status_file
from msg_nagios_bridge.paths import status_path
from msg_nagios_bridge.daemon.status import Status, StatusError
from msg_nagios_bridge.formats import sequence as wire
from msg_nagios_bridge.inbound.sequence import CURSOR_PREFIX, FORGOTTEN_CURSOR, Tracker
from msg_nagios_bridge.model import Message
from msg_nagios_bridge.spool import Spool, SpoolFull
from tests.unit import test_subscriber
from tests.unit.test_subscriber import RecordingBroker, bad, good

subscriber_on = test_subscriber.subscriber_on       # the fixture: a subscriber on a real spool

NOW = 1_700_000_000.0


def stamped(seq, epoch="e1", site="site-a", host="nagios.a", route="central"):
    return {"site": site, "nagios_host": host, "route": route, "route_seq": f"{epoch}:{seq}"}


def note(tracker, *seqs, at=NOW, **kw):
    tracker.note_batch([(stamped(seq, **kw), None) for seq in seqs], at)


def row(tracker, at=NOW, producer="site-a/nagios.a"):
    rows = [r for r in tracker.snapshot(at)["streams"] if r["producer"] == producer]
    assert len(rows) == 1
    return rows[0]


# -- the tracker -------------------------------------------------------------------------------

def test_in_order_has_no_gap():
    tracker = Tracker()
    note(tracker, *range(1, 101))
    r = row(tracker)
    assert (r["highest"], r["missing"], r["late"], r["duplicates"], r["received"]) == (100, 0, 0, 0, 100)
    assert r["oldest_gap_age"] is None


def test_the_first_number_seen_is_the_baseline_not_a_gap():
    tracker = Tracker()
    note(tracker, 5000, 5001)
    assert row(tracker)["missing"] == 0


def test_duplicates_are_neither_gaps_nor_received_twice():
    tracker = Tracker()
    note(tracker, 1, 2, 3, 2, 3, 1, 4)
    r = row(tracker)
    assert (r["missing"], r["duplicates"], r["received"], r["late"]) == (0, 3, 4, 0)


def test_a_jump_opens_a_gap_of_exactly_the_numbers_skipped():
    tracker = Tracker()
    note(tracker, 1, 2, 10, 11, 20, at=NOW)
    r = row(tracker, at=NOW + 30)
    assert (r["missing"], r["gaps"], r["highest"]) == (7 + 8, 2, 20)
    assert r["oldest_gap_age"] == pytest.approx(30)


def test_late_arrivals_fill_gaps_and_are_counted():
    tracker = Tracker()
    note(tracker, 1, 10, at=NOW)                 # gap 2..9
    note(tracker, 5, at=NOW + 1)                 # split: 2..4, 6..9
    assert (row(tracker)["missing"], row(tracker)["gaps"]) == (7, 2)
    note(tracker, 2, 4, 9, 6, at=NOW + 2)        # the ends of both
    note(tracker, 3, 8, 7, at=NOW + 3)
    r = row(tracker, at=NOW + 4)
    assert (r["missing"], r["gaps"], r["late"], r["duplicates"]) == (0, 0, 8, 0)
    note(tracker, 5)                             # again: a duplicate now
    assert row(tracker)["duplicates"] == 1


def test_the_oldest_gap_age_is_that_of_the_first_gap_even_after_a_split():
    tracker = Tracker()
    note(tracker, 1, 10, at=NOW)
    note(tracker, 20, at=NOW + 50)
    note(tracker, 5, at=NOW + 60)
    assert row(tracker, at=NOW + 100)["oldest_gap_age"] == pytest.approx(100)
    note(tracker, 2, 3, 4, 6, 7, 8, 9, at=NOW + 101)
    assert row(tracker, at=NOW + 100)["oldest_gap_age"] == pytest.approx(50)


def test_streams_are_per_producer_and_route():
    tracker = Tracker()
    note(tracker, 1, 3, site="a", host="h")
    note(tracker, 1, 2, site="b", host="h")
    note(tracker, 7, 9, site="a", host="h", route="other")
    rows = {(r["producer"], r["route"]): r["missing"] for r in tracker.snapshot(NOW)["streams"]}
    assert rows == {("a/h", "central"): 1, ("b/h", "central"): 0, ("a/h", "other"): 1}


def test_a_new_epoch_starts_at_one_and_the_old_one_can_still_fill():
    tracker = Tracker()
    note(tracker, 1, 2, 5, epoch="old")           # 3, 4 missing
    note(tracker, 3, epoch="new")                  # the producer started over: 1, 2 missing
    r = row(tracker)
    assert (r["epoch"], r["previous_epoch"], r["missing"]) == ("new", "old", 2 + 2)
    note(tracker, 3, 4, epoch="old")               # late, from the old epoch
    note(tracker, 1, epoch="new")
    r = row(tracker)
    assert (r["epoch"], r["missing"], r["late"]) == ("new", 1, 3)


def test_a_third_epoch_counts_what_the_first_still_missed_as_lost():
    tracker = Tracker()
    note(tracker, 1, 4, epoch="one")               # 2 missing
    note(tracker, 1, epoch="two")
    note(tracker, 1, epoch="three")
    r = row(tracker)
    # "two" missed nothing: forgotten at once (its counts kept), only epochs with gaps are kept
    assert (r["epoch"], r["previous_epoch"], r["missing"], r["lost"], r["received"]) == ("three", None, 0, 2, 4)
    assert tracker.counters["new_epochs"] == 2


def test_a_redelivery_from_a_forgotten_epoch_does_not_start_it_over():
    tracker = Tracker()
    note(tracker, 1, 2, 3, epoch="old")
    note(tracker, 1, 2, epoch="new")
    assert row(tracker)["previous_epoch"] is None        # "old" missed nothing: forgotten
    note(tracker, 2, 3, epoch="old")                     # the broker delivers it again
    note(tracker, 3, epoch="new")
    r = row(tracker)
    assert (r["epoch"], r["missing"], r["duplicates"], r["highest"]) == ("new", 0, 2, 3)
    again = Tracker()
    again.load(dict(tracker.unsaved()))
    note(again, 1, epoch="old")
    assert (row(again)["epoch"], row(again)["duplicates"]) == ("new", 3)


def test_a_gap_older_than_the_expiry_is_lost_and_no_longer_open():
    tracker = Tracker(expiry=100)
    note(tracker, 1, 5, at=NOW)
    note(tracker, 6, 9, at=NOW + 50)
    r = row(tracker, at=NOW + 120)
    assert (r["missing"], r["lost"], r["oldest_gap_age"]) == (2, 3, pytest.approx(70))
    note(tracker, 3, at=NOW + 121)                 # too late to fill: a duplicate at most
    assert row(tracker, at=NOW + 121)["late"] == 0


@pytest.mark.parametrize("seq", ["0", "-1", "abc", "1e5", "01", " 1", "1 ", "\u00b2", "\u0661",
                                 "9" * 19, "1" * 20, "", "9223372036854775808", "1:2"])
def test_a_malformed_number_is_counted_and_ignored(seq):
    tracker = Tracker()
    note(tracker, 1, 2)
    tracker.note_batch([(dict(stamped(1), route_seq=f"e1:{seq}"), None)], NOW)
    assert tracker.counters["malformed"] == 1
    assert row(tracker)["highest"] == 2


@pytest.mark.parametrize("change", [{"route_seq": ":1"}, {"route_seq": "a b:1"}, {"route_seq": "x" * 65 + ":1"},
                                    {"route_seq": "1"}, {"route_seq": "e1:"}, {"route_seq": "e1;1"},
                                    {"site": ""}, {"route": "r" * 201}, {"nagios_host": "h" * 10_000}])
def test_malformed_names_make_no_stream(change):
    tracker = Tracker()
    tracker.note_batch([(dict(stamped(1), **change), None)], NOW)
    assert tracker.counters["malformed"] == 1
    assert tracker.snapshot(NOW)["streams"] == []


def test_unnumbered_and_untrusted_messages_are_left_out_and_counted():
    tracker = Tracker()
    tracker.note_batch([({"site": "a"}, None), (stamped(1), "bad-signature"), (stamped(1), "bad-headers"),
                        (stamped(1), "too-old")], NOW)
    assert tracker.counters["unnumbered"] == 1
    assert tracker.counters["untrusted"] == 2
    assert row(tracker)["received"] == 1, "a result refused by the policy did arrive"


def test_messages_from_senders_the_policy_does_not_allow_open_no_stream_and_move_none():
    """Regression (review 2026-12-04): a refused sender's message counted, so anyone who may
    publish to the destination could move a producer's stream to 2**63-1 (gaps of 9e18) or
    fill the table of streams so that a new genuine producer went untracked."""
    tracker = Tracker()
    note(tracker, 1)
    forged = [(stamped(2**63 - 1), "sender-not-allowed"), (stamped(5), "no-sender")]
    forged += [(stamped(1, site=f"site-{i}"), "sender-not-allowed") for i in range(50)]
    tracker.note_batch(forged, NOW)
    assert tracker.counters["untrusted"] == 52
    assert len(tracker.snapshot(NOW)["streams"]) == 1 and row(tracker)["missing"] == 0


def test_with_signatures_required_only_messages_whose_numbers_are_signed_count():
    """Regression (review 2026-12-05): route_seq was added after the signature was made, so a
    replayed or renumbered signed message moved its stream's numbers (a stream pushed to
    2**63-1; a broker could hide what it dropped). The producer now signs the stream headers;
    a receiver requiring signatures leaves a message out unless its signature covers each."""
    signed_all = "result_id,role,site,nagios_host,route,route_seq"
    tracker = Tracker(signed_numbers=True)
    tracker.note_batch([(dict(stamped(1), **{"signed-headers": signed_all}), None),
                        (dict(stamped(2), **{"signed-headers": signed_all}), "too-old")], NOW)
    assert (row(tracker)["highest"], row(tracker)["received"]) == (2, 2)
    forged = [dict(stamped(2**63 - 1), **{"signed-headers": "result_id,role,site"}),     # an older producer
              dict(stamped(9), **{"signed-headers": "result_id,role,site,nagios_host,route"}),
              dict(stamped(9, host="other"), **{"signed-headers": "result_id,site,route,route_seq"}),
              stamped(9)]                                        # scheme 1: no signed-headers at all
    tracker.note_batch([(headers, None) for headers in forged], NOW)
    assert tracker.counters["unsigned_numbers"] == 4
    assert len(tracker.snapshot(NOW)["streams"]) == 1
    assert (row(tracker)["highest"], row(tracker)["missing"], row(tracker)["received"]) == (2, 0, 2)
    # Spaces around names as the verifier takes them; a message without a number is
    # unnumbered, not unsigned.
    tracker.note_batch([(dict(stamped(3), **{"signed-headers": " result_id, site , nagios_host,route ,route_seq"}),
                         None), ({"site": "site-a", "signed-headers": "result_id"}, None)], NOW)
    assert row(tracker)["highest"] == 3
    assert (tracker.counters["unnumbered"], tracker.counters["unsigned_numbers"]) == (1, 4)
    # Without signatures required, the numbers count as before.
    plain = Tracker()
    plain.note_batch([(stamped(1), None), (stamped(5), None)], NOW)
    assert (row(plain)["highest"], plain.counters["unsigned_numbers"]) == (5, 0)


def test_a_subscriber_requiring_signatures_counts_only_the_numbers_its_signature_covers(tmp_path):
    """The whole inbound path with real signatures: a message signed as the outbound spool
    signs it counts; one signed before numbering (an older producer) is injected but left out
    of the accounting; a renumbered copy of a signed message is refused (bad-signature)."""
    from msg_nagios_bridge.daemon.health import Health
    from msg_nagios_bridge.inbound.subscriber import Subscriber
    from msg_nagios_bridge.trust.signing import Signer
    from tests.sandbox.pki import Authority
    from tests.unit.test_judgement import ALLOW_ALL, wlcg
    authority = Authority(tmp_path / "pki")
    cert, key = authority.issue("site-a", "nagios.site-a.org", client=True)
    settings = test_subscriber.make_settings(
        tmp_path, inbound=f"signatures: {{required: true, ca_file: {authority.cert_file}}}")
    signer = Signer(str(cert), str(key))

    def message(seq, service, number_signed=True):
        headers = {"result_id": f"r-{service}", "role": "site", "site": "site-a", "nagios_host": "nagios.a",
                   "route": "central"}
        body = wlcg(service=service, when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        if number_signed:
            headers["route_seq"] = f"e1:{seq}"
        headers.update(signer.sign(headers, body))
        headers["route_seq"] = f"e1:{seq}"
        return dict(headers, ack=f"ack-{service}"), body

    with Spool(str(tmp_path / "inbound.sqlite")) as spool:
        subscriber = Subscriber(settings.brokers, settings.inbound, spool, Health(), ALLOW_ALL)
        subscriber.session.broker = test_subscriber.RecordingBroker(subscriber.wakeup)
        assert subscriber.tracker.signed_numbers
        first, older, third = message(1, "s1"), message(2**63 - 1, "s2", number_signed=False), message(3, "s3")
        renumbered = (dict(third[0], route_seq="e1:999", ack="ack-forged"), third[1])
        subscriber._handle([first, older, renumbered, third])
        try:
            assert spool.stats().depth == 3, "the three genuine results are to be injected"
            [dead] = spool.dead_letters()
            assert dead.reason.startswith("bad-signature")
            counters = subscriber.tracker.counters
            assert (counters["unsigned_numbers"], counters["untrusted"]) == (1, 1)
            stream = subscriber.tracker.snapshot(time.time())["streams"][0]
            assert (stream["highest"], stream["missing"], stream["received"]) == (3, 1, 2)
        finally:
            subscriber.poison.close()


def test_a_huge_hostile_header_is_refused_in_constant_time():
    tracker = Tracker()
    note(tracker, 1)
    for size in (10**6, 10**7):
        huge = {"route_seq": "e" * size + ":" + "7" * size, "site": "s" * size,
                "nagios_host": "h", "route": "central"}
        started = time.perf_counter()
        tracker.note_batch([(huge, None)] * 100, NOW)
        assert time.perf_counter() - started < 0.05, f"{size}: the length is checked before any scan"
    assert tracker.counters["malformed"] == 200
    assert wire.parse({"route_seq": "e:1", "site": "s", "nagios_host": "h",
                       "route": "r"}) == wire.Stamp("s/h", "r", "e", 1)


def test_hostile_epoch_flapping_and_jumps_use_bounded_memory():
    tracker = Tracker(max_gaps=10, max_total_gaps=1000)
    for i in range(5000):
        note(tracker, 2 * i + 3, epoch=f"e{i % 7}")    # a new epoch nearly every message, gaps each
    assert tracker._total_gaps <= 1000
    assert sum(len(part.gaps) for s in tracker._streams.values() for part in s.epochs()) == tracker._total_gaps
    note(tracker, wire.MAX_SEQ, epoch="big")
    assert row(tracker)["missing"] >= wire.MAX_SEQ - 1      # as the numbers say, in one range


def test_gap_ranges_per_stream_are_bounded_oldest_dropped_and_counted():
    tracker = Tracker(max_gaps=5)
    note(tracker, *range(1, 40, 2))          # 19 gaps of one each
    r = row(tracker)
    assert (r["gaps"], r["missing"], r["untracked"]) == (5, 5, 14)
    note(tracker, 2)                         # its gap was dropped: now a duplicate, not late
    assert row(tracker)["late"] == 0


def test_the_total_of_gap_ranges_is_bounded_across_streams():
    tracker = Tracker(max_gaps=100, max_total_gaps=30)
    for site in "abcdef":
        note(tracker, *range(1, 40, 2), site=site)
    rows = tracker.snapshot(NOW)["streams"]
    assert sum(r["gaps"] for r in rows) <= 30
    assert sum(r["missing"] + r["untracked"] for r in rows) == 6 * 19


def test_streams_are_bounded_and_the_rest_counted():
    tracker = Tracker(max_streams=3)
    for site in "abcde":
        note(tracker, 1, 2, site=site)
    assert len(tracker.snapshot(NOW)["streams"]) == 3
    assert tracker.counters["untracked_streams"] == 4


def totals(tracker, at):
    """The counts of every stream, forgotten ones included: counters that never go down."""
    snap = tracker.snapshot(at)
    return {name: sum(r[name] for r in snap["streams"]) + snap["forgotten"][name]
            for name in ("received", "late", "duplicates", "lost", "untracked")}


def test_a_stream_not_seen_for_the_expiry_is_forgotten_and_its_counts_kept():
    tracker = Tracker(expiry=100)
    note(tracker, 1, 2, 5, 3, 3, at=NOW)                 # 4 missing, 3 late, 1 duplicate
    note(tracker, 7, at=NOW + 50, site="site-b")
    before = totals(tracker, NOW + 99)
    assert tracker.snapshot(NOW + 99)["forgotten"]["streams"] == 0
    after = totals(tracker, NOW + 101)                   # site-a idle for 101 s, site-b for 51
    assert [r["producer"] for r in tracker.snapshot(NOW + 101)["streams"]] == ["site-b/nagios.a"]
    assert tracker.snapshot(NOW + 101)["forgotten"] == {
        "streams": 1, "received": 4, "late": 1, "duplicates": 1, "lost": 1, "untracked": 0}
    assert after == dict(before, lost=before["lost"] + 1)   # the gap (4) closed as lost: never down
    note(tracker, 9, at=NOW + 102)                       # it comes back: a new baseline, no gap
    assert (row(tracker, NOW + 102)["missing"], row(tracker, NOW + 102)["received"]) == (0, 1)
    assert totals(tracker, NOW + 102)["received"] == after["received"] + 1


def test_forgetting_makes_room_in_a_full_table_of_streams():
    tracker = Tracker(expiry=100, max_streams=3)
    for site in "abc":
        note(tracker, 1, site=site, at=NOW)
    note(tracker, 1, site="d", at=NOW + 10)
    assert tracker.counters["untracked_streams"] == 1
    tracker.expire(NOW + 101)
    note(tracker, 2, site="d", at=NOW + 102)
    assert [r["producer"] for r in tracker.snapshot(NOW + 102)["streams"]] == ["d/nagios.a"]
    assert tracker.counters["untracked_streams"] == 1


# -- persistence -----------------------------------------------------------------------------

def test_the_state_survives_a_restart_through_the_spool(tmp_path):
    path = str(tmp_path / "inbound.sqlite")
    tracker = Tracker()
    note(tracker, 1, 5, 9, epoch="old", at=NOW)
    note(tracker, 2, epoch="new", at=NOW + 1)
    note(tracker, 3, epoch="old", at=NOW + 2)
    with Spool(path) as spool:
        states = tracker.unsaved()
        spool.put([], states=states)
        tracker.saved(states)
        assert tracker.unsaved() == []
    before = tracker.snapshot(NOW + 10)
    again = Tracker()
    with Spool(path) as spool:
        assert again.load(spool.cursors(CURSOR_PREFIX)) == 1
    assert again.snapshot(NOW + 10)["streams"] == before["streams"]    # counters are since the start
    note(again, 4, epoch="old", at=NOW + 11)            # the old epoch's gaps still fill
    note(again, 1, epoch="new", at=NOW + 11)
    assert row(again, NOW + 11)["missing"] == before["streams"][0]["missing"] - 2


def save(tracker, spool):
    states = tracker.unsaved()
    spool.put([], states=states)
    tracker.saved(states)


def test_a_forgotten_stream_s_cursor_is_deleted_and_its_counts_survive_a_restart(tmp_path):
    path = str(tmp_path / "inbound.sqlite")
    tracker = Tracker(expiry=100)
    note(tracker, 1, 4, at=NOW)
    note(tracker, 1, 2, at=NOW + 60, site="site-b")
    with Spool(path) as spool:
        save(tracker, spool)
        assert len(spool.cursors(CURSOR_PREFIX)) == 2
        tracker.expire(NOW + 101)
        save(tracker, spool)
        assert tracker.unsaved() == []
        saved = spool.cursors(CURSOR_PREFIX)
    assert sorted(saved) == sorted([FORGOTTEN_CURSOR, CURSOR_PREFIX + '["site-b", "nagios.a", "central"]'])
    again = Tracker(expiry=100)
    assert again.load(saved) == 1
    assert again.snapshot(NOW + 101) == tracker.snapshot(NOW + 101)
    assert again.snapshot(NOW + 101)["forgotten"]["lost"] == 2


def test_a_stream_forgotten_and_seen_again_before_saving_keeps_its_cursor(tmp_path):
    tracker = Tracker(expiry=100)
    note(tracker, 1, at=NOW)
    with Spool(str(tmp_path / "s.sqlite")) as spool:
        save(tracker, spool)
        tracker.expire(NOW + 101)
        note(tracker, 7, at=NOW + 102)
        save(tracker, spool)
        again = Tracker(expiry=100)
        again.load(spool.cursors(CURSOR_PREFIX))
    assert row(again, NOW + 102)["highest"] == 7
    assert again.snapshot(NOW + 102)["forgotten"]["streams"] == 1


def test_a_stream_forgotten_while_its_state_is_being_saved_is_deleted_next_time(tmp_path):
    """The main loop's expire() may run between the subscriber's unsaved() and saved()."""
    tracker = Tracker(expiry=100)
    note(tracker, 1, at=NOW)
    with Spool(str(tmp_path / "s.sqlite")) as spool:
        states = tracker.unsaved()
        tracker.expire(NOW + 101)
        spool.put([], states=states)
        tracker.saved(states)
        save(tracker, spool)
        assert list(spool.cursors(CURSOR_PREFIX)) == [FORGOTTEN_CURSOR]


@pytest.mark.parametrize("value", ["not json", "[1]", '{"received": -1}', '{"lost": "3"}', '{"streams": 1.5}'])
def test_a_damaged_sum_of_forgotten_streams_starts_at_zero(value, caplog):
    tracker = Tracker()
    tracker.load({FORGOTTEN_CURSOR: value})
    assert tracker.snapshot(NOW)["forgotten"] == dict.fromkeys(
        ("streams", "received", "late", "duplicates", "lost", "untracked"), 0)
    assert "forgotten streams is damaged" in caplog.text


def test_a_sum_of_forgotten_streams_past_2_63_loads():
    tracker = Tracker()
    tracker.load({FORGOTTEN_CURSOR: json.dumps({"streams": 2, "lost": 2 * wire.MAX_SEQ})})
    assert tracker.snapshot(NOW)["forgotten"]["lost"] == 2 * wire.MAX_SEQ


def test_a_damaged_saved_state_is_skipped_not_fatal(tmp_path, caplog):
    with Spool(str(tmp_path / "s.sqlite")) as spool:
        spool.put([], states=[(CURSOR_PREFIX + '["a", "h", "r"]', '{"current": {"epoch": 5}}'),
                              (CURSOR_PREFIX + "not json", "{}"),
                              (CURSOR_PREFIX + '["b", "h", "r"]', json.dumps({
                                  "producer": "b/h", "route": "r", "current": {
                                      "epoch": "e", "high": 3, "gaps": [[5, 9, 0]]}}))])
        tracker = Tracker()
        assert tracker.load(spool.cursors(CURSOR_PREFIX)) == 0
    assert "damaged" in caplog.text


def test_the_receiver_saves_the_numbers_before_it_acks(subscriber_on, tmp_path):
    """Whatever is acked is in the saved state: a kill -9 right after an ACK forgets nothing,
    so the restarted receiver invents no gap; a redelivery is a duplicate."""
    states_at_ack = {}

    def on_ack(ack_id):
        with Spool(str(tmp_path / "inbound.sqlite"), exclusive=False) as reader:
            states_at_ack[ack_id] = reader.cursors(CURSOR_PREFIX)
    subscriber, spool, broker = subscriber_on(on_ack=on_ack)
    numbered = []
    for i, seq in ((1, 1), (2, 2), (3, 5)):
        headers, body = good(i)
        numbered.append((dict(headers, **stamped(seq)), body))
    headers, body = bad(9)
    numbered.insert(1, (dict(headers, **stamped(3)), body))      # refused: arrived all the same
    subscriber._handle(numbered)
    assert broker.acks == ["good-3"], "the batch is acked by its last message"
    for ack_id, saved in states_at_ack.items():
        loaded = Tracker()
        loaded.load(saved)
        assert row(loaded)["highest"] == 5, ack_id
    assert row(subscriber.tracker)["missing"] == 1          # 4
    # A restart, and the broker delivers the batch again (the ACKs were lost): duplicates.
    again = Tracker()
    again.load(spool.cursors(CURSOR_PREFIX))
    again.note_batch([(h, None) for h, _ in numbered], NOW)
    r = row(again)
    assert (r["missing"], r["duplicates"], r["received"]) == (1, 4, 4)


def test_a_batch_of_duplicates_only_still_saves_the_numbers(subscriber_on):
    subscriber, spool, broker = subscriber_on()
    headers, body = good(1)
    subscriber._handle([(dict(headers, **stamped(1)), body)])
    subscriber._handle([(dict(headers, **stamped(2), ack="again"), body)])    # the same result
    assert broker.acks == ["good-1", "again"]
    loaded = Tracker()
    loaded.load(spool.cursors(CURSOR_PREFIX))
    assert row(loaded)["highest"] == 2


# -- the outbound numbering ------------------------------------------------------------------

def out(i, route="central", **headers):
    return Message(f"id-{i}", "/topic/t", {"route": route, "site": "S", **headers}, b"body %d" % i)


def numbers(spool):
    return [(e.message.headers.get("route"),) + tuple(e.message.headers["route_seq"].split(":")[::-1])
            if "route_seq" in e.message.headers else (e.message.headers.get("route"), None, None)
            for e in spool.take(1000)]


def test_each_route_is_numbered_from_one_and_duplicates_take_no_number(tmp_path):
    with Spool(str(tmp_path / "out.sqlite")) as spool:
        assert spool.put([out(1), out(2, "other"), out(1), out(3)], numbered=True) == 3
        assert spool.put([out(3), out(4), out(5, "other")], numbered=True) == 2
        stats = spool.stats()
        assert (stats.put, stats.duplicates, stats.depth) == (5, 2, 5)
        assert stats.bytes == spool._db.execute("SELECT sum(size) FROM messages").fetchone()[0] > 0
        got = numbers(spool)
    assert [(route, seq) for route, seq, _ in got] == [
        ("central", "1"), ("other", "1"), ("central", "2"), ("central", "3"), ("other", "2")]
    epochs = {route: {epoch for r, _, epoch in got if r == route} for route in ("central", "other")}
    assert all(len(found) == 1 for found in epochs.values())
    assert epochs["central"] != epochs["other"]


def test_the_numbering_survives_a_reopen_and_a_new_spool_has_a_new_epoch(tmp_path):
    with Spool(str(tmp_path / "out.sqlite")) as spool:
        spool.put([out(1), out(2)], numbered=True)
        first = spool.sequences()["central"]
    with Spool(str(tmp_path / "out.sqlite")) as spool:
        spool.put([out(3)], numbered=True)
        assert numbers(spool)[-1][1:] == ("3", first[0])
    with Spool(str(tmp_path / "new.sqlite")) as spool:
        spool.put([out(4)], numbered=True)
        _, seq, epoch = numbers(spool)[0]
        assert (seq, epoch == first[0]) == ("1", False)


def test_a_batch_the_full_spool_refuses_uses_no_numbers(tmp_path):
    with Spool(str(tmp_path / "out.sqlite"), max_messages=2) as spool:
        spool.put([out(1)], numbered=True)
        with pytest.raises(SpoolFull):
            spool.put([out(2), out(3)], numbered=True)
        spool.put([out(4)], numbered=True)
        assert [seq for _, seq, _ in numbers(spool)] == ["1", "2"]


def test_a_message_already_a_dead_letter_gets_no_number(tmp_path):
    with Spool(str(tmp_path / "out.sqlite")) as spool:
        spool.put([out(1)], numbered=True)
        spool.reject(spool.take(1)[0].entry_id, "refused by the broker")
        spool.put([out(1), out(2)], numbered=True)
        assert [seq for _, seq, _ in numbers(spool)] == ["2"]


def test_numbering_keeps_the_other_headers_and_counts_the_bytes(tmp_path):
    with Spool(str(tmp_path / "out.sqlite")) as spool:
        spool.put([out(1, extra="x"), Message("plain", "/topic/t", {}, b"b")], numbered=True)
        entries = spool.take(10)
        assert entries[0].message.headers == {"route": "central", "site": "S", "extra": "x",
                                              "route_seq": spool.sequences()["central"][0] + ":1"}
        assert entries[1].message.headers == {}, "no route: not numbered"
        size = spool.stats().bytes
        spool.done([e.entry_id for e in entries])
        assert spool.stats().bytes == 0 and size > 0


def test_a_stamped_message_is_parsed_back_by_the_receiver(tmp_path):
    with Spool(str(tmp_path / "out.sqlite")) as spool:
        spool.put([out(1, nagios_host="nagios.s")], numbered=True)
        headers = spool.take(1)[0].message.headers
    stamp = wire.parse(headers)
    assert (stamp.producer, stamp.route, stamp.seq) == ("S/nagios.s", "central", 1)


# -- status, metrics, check, config ----------------------------------------------------------

def status_with(rows, counters=None):
    return Status.from_json({"time": NOW - 1, "pid": 1, "sequences": {
        "counters": counters or {"malformed": 2}, "streams": rows}})


def stream_row(**changes):
    base = {"producer": "site-a/nagios.a", "route": "central", "epoch": "e1", "highest": 100,
            "missing": 0, "late": 0, "duplicates": 0, "received": 100, "lost": 0, "untracked": 0,
            "gaps": 0, "oldest_gap_age": None, "previous_epoch": None, "last_seen": NOW}
    base.update(changes)
    return base


def test_status_keeps_the_streams_and_refuses_a_broken_row():
    status = status_with([stream_row(missing=3, gaps=1, oldest_gap_age=12.0)])
    assert Status.from_json(status.to_json()) == status
    assert status.streams()[0]["missing"] == 3
    with pytest.raises(StatusError, match="sequences.streams.0..missing"):
        status_with([stream_row(missing="3")])


@pytest.mark.parametrize("age, limits, expected", [
    (None, (300, 0), OK), (299, (300, 0), OK), (300, (300, 0), WARNING), (10**6, (300, 0), WARNING),
    (700, (300, 600), CRITICAL), (700, (0, 0), OK)])
def test_check_grades_the_oldest_open_gap(age, limits, expected):
    rows = [stream_row(missing=4 if age else 0, gaps=1 if age else 0, oldest_gap_age=age)]
    code, line = evaluate(status_with(rows), Thresholds(gap=limits), NOW)
    assert code == expected, line
    if expected != OK:
        assert "site-a/nagios.a route central: 4 missing, gap open" in line
    assert " missing=%d lost=0c" % (4 if age else 0) in line


def test_check_names_three_streams_and_counts_the_rest():
    rows = [stream_row(producer=f"s{i}/n\x1b|", missing=1, gaps=1, oldest_gap_age=400 + i) for i in range(5)]
    code, line = evaluate(status_with(rows), Thresholds(), NOW)
    assert code == WARNING
    assert "2 more streams with gaps" in line and "s4/n" in line and "s0/n" not in line
    assert "\x1b" not in line and line.count("|") == 1


def test_the_producer_side_shows_the_last_number_of_each_route():
    status = Status.from_json({"time": NOW, "pid": 1, "numbering": {"central": {"epoch": "ab", "last": 41}}})
    assert Status.from_json(status.to_json()) == status
    assert 'msg_nagios_bridge_sequence_numbered{route="central"} 41' in metrics.render(status)
    with pytest.raises(StatusError, match="numbering"):
        Status.from_json({"time": NOW, "pid": 1, "numbering": {"central": {"epoch": "ab", "last": "41"}}})


def test_metrics_show_each_stream_with_escaped_labels():
    text = metrics.render(status_with([stream_row(producer='a"b\\c\nd', missing=2, oldest_gap_age=5.0, lost=1)]))
    assert 'msg_nagios_bridge_sequence_missing{producer="a\\"b\\\\c\\nd",route="central"} 2' in text
    assert "# TYPE msg_nagios_bridge_sequence_lost_total counter" in text
    assert "msg_nagios_bridge_sequence_malformed_total 2" in text
    assert "sequence_oldest_gap_age_seconds{" in text


def test_status_metrics_and_check_count_the_forgotten_streams(tmp_path, capsys):
    forgotten = {"streams": 3, "received": 50, "late": 1, "duplicates": 2, "lost": 7, "untracked": 0}
    status = Status.from_json({"time": NOW - 1, "pid": 1, "sequences": {
        "counters": {}, "streams": [stream_row(lost=1)], "forgotten": forgotten}})
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(config_text(tmp_path, ", loss_accounting: true"))
    status_file.write(status_path(config.load(str(cfg))), status)
    assert main(["status", "-c", str(cfg)]) == 0
    assert ("3 streams forgotten (not seen for max_age), in all: received 50, late 1, lost 7, duplicates 2"
            in capsys.readouterr().out)
    assert Status.from_json(status.to_json()) == status
    assert status.forgotten() == forgotten
    text = metrics.render(status)
    assert 'msg_nagios_bridge_sequence_lost_total{producer="(forgotten)",route="(forgotten)"} 7' in text
    assert 'msg_nagios_bridge_sequence_lost_total{producer="site-a/nagios.a",route="central"} 1' in text
    assert "msg_nagios_bridge_sequence_forgotten_streams_total 3" in text
    assert 'sequence_missing{producer="(forgotten)"' not in text
    assert " lost=8c" in evaluate(status, Thresholds(), NOW)[1]
    assert status_with([stream_row()]).forgotten()["streams"] == 0     # a status from before
    with pytest.raises(StatusError, match="forgotten"):
        Status.from_json({"time": NOW, "pid": 1, "sequences": {"streams": [], "forgotten": {"lost": "7"}}})


def config_text(tmp_path, inbound_extra=""):
    return f"""
site: {{name: S}}
brokers: {{hosts: ["127.0.0.1:1"]}}
spool: {{directory: {tmp_path}}}
sources: {{ocsp_pipe: {{enabled: false}}}}
inbound: {{enabled: true, subscriptions: [{{destination: /queue/q}}], policy: {{rules: [{{senders: ['*']}}]}}{inbound_extra}}}
"""


def test_config_defaults_and_validation(tmp_path):
    settings = config.parse(config_text(tmp_path))
    assert (settings.inbound.loss_accounting, settings.inbound.gap_warning_seconds,
            settings.inbound.gap_critical_seconds) == (True, 300.0, 0.0)
    settings = config.parse(config_text(tmp_path, ", loss_accounting: false, gap_warning_seconds: 60,"
                                                  " gap_critical_seconds: 600"))
    assert (settings.inbound.loss_accounting, settings.inbound.gap_critical_seconds) == (False, 600.0)
    with pytest.raises(config.ConfigError, match="gap_critical_seconds"):
        config.parse(config_text(tmp_path, ", gap_warning_seconds: 600, gap_critical_seconds: 60"))
    with pytest.raises(config.ConfigError, match="gap_warning_seconds"):
        config.parse(config_text(tmp_path, ", gap_warning_seconds: -1"))


def test_without_loss_accounting_the_subscriber_tracks_nothing(tmp_path):
    from msg_nagios_bridge.daemon.health import Health
    from msg_nagios_bridge.inbound.subscriber import Subscriber
    from tests.unit.test_judgement import ALLOW_ALL
    settings = config.parse(config_text(tmp_path, ", loss_accounting: false"))
    with Spool(str(tmp_path / "in.sqlite")) as spool:
        subscriber = Subscriber(settings.brokers, settings.inbound, spool, Health(), ALLOW_ALL)
        subscriber.session.broker = RecordingBroker(subscriber.wakeup)
        headers, body = good(1)
        subscriber._handle([(dict(headers, **stamped(1)), body)])
        subscriber.poison.close()
        assert subscriber.tracker is None and spool.cursors(CURSOR_PREFIX) == {}
