"""The echo guard against a real spool file: what it saves, what a restart keeps."""
import json
import sqlite3
import time
import tracemalloc
from contextlib import closing

import pytest

from msg_nagios_bridge.cores.nagios.core import may_be_echo
from msg_nagios_bridge.inbound import compact, echo
from msg_nagios_bridge.inbound.compact import KnownObjects, object_text
from msg_nagios_bridge.inbound.echo import EchoGuard
from msg_nagios_bridge.model import CheckResult, Message
from msg_nagios_bridge.spool import SCHEMA_VERSION, Spool, SpoolError

NOW = 1_700_000_000.0


def passive(host, service="s"):
    return CheckResult(host=host, service=service, state=0, attributes={"check_type": "PASSIVE"})


def saved_rows(path):
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT count(*) FROM marks WHERE kind = 'echo'").fetchone()[0]


def test_echo_guard_saves_only_new_objects_not_the_whole_set(tmp_path):
    # It used to rewrite its whole set as one JSON value whenever a batch held a new object:
    # 1.4 s per batch at 500,000 objects, during a large grid's first check interval.
    path = str(tmp_path / "inbound.sqlite")
    with Spool(path) as spool:
        guard = EchoGuard(spool)
        assert guard.about_to_inject([passive(f"h{i}") for i in range(20_000)], now=NOW) == 20_000
        assert guard.about_to_inject([passive("h1"), passive("new")], now=NOW + 60) == 1
        assert guard.about_to_inject([passive(f"h{i}") for i in range(100)], now=NOW + 120) == 0
        assert saved_rows(path) == 20_001


def test_echo_guard_survives_a_restart_and_forgets_objects_after_the_ttl(tmp_path):
    path = str(tmp_path / "inbound.sqlite")
    with Spool(path) as spool:
        guard = EchoGuard(spool, ttl=3600)
        guard.about_to_inject([passive("old")], now=NOW - 7200)
        guard.about_to_inject([passive("recent", "svc")])
    with Spool(path) as spool:
        again = EchoGuard(spool, ttl=3600, may_be_echo=may_be_echo)
        assert again(passive("recent", "svc"))
        assert not again(passive("old")) and len(again) == 1
        assert not again(CheckResult(host="recent", service="svc", state=0, attributes={"check_type": "ACTIVE"}))
    assert saved_rows(path) == 1                        # the forgotten row is deleted too


def test_a_steady_stream_refreshes_each_object_once_a_period(tmp_path):
    with Spool(str(tmp_path / "inbound.sqlite")) as spool:
        guard = EchoGuard(spool, refresh=3600)
        assert guard.about_to_inject([passive("h")], now=NOW) == 1
        assert guard.about_to_inject([passive("h")], now=NOW + 3599) == 0
        assert guard.about_to_inject([passive("h")], now=NOW + 3600) == 1
        assert spool.load_marks("echo", since=0) == {"h\ts": NOW + 3600}


def test_a_version_1_spool_keeps_its_messages_and_echo_objects(tmp_path):
    path = str(tmp_path / "inbound.sqlite")
    with Spool(path) as spool:
        spool.put([Message("m1", "nagios", {}, b"body")])
    _as_version_1(path, json.dumps({"ce01\tCE-JobSubmit": NOW, "host-only\t": NOW}))
    with Spool(path) as spool:
        assert [e.message.message_id for e in spool.take(10)] == ["m1"]
        assert spool.load_marks("echo", since=0) == {"ce01\tCE-JobSubmit": NOW, "host-only\t": NOW}
        assert spool.cursor("echo-guard-objects") is None
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_the_guard_loads_when_old_entries_cannot_be_deleted(tmp_path):
    """Deleting old rows needs a write (a full disk, a tool holding the lock): the bridge must
    still start, with the objects it has."""
    path = str(tmp_path / "inbound.sqlite")
    with Spool(path) as spool:
        first = EchoGuard(spool, ttl=3600)
        first.about_to_inject([passive("old")], now=NOW - 7200)
        first.about_to_inject([passive("recent")])
        with closing(sqlite3.connect(path, timeout=0)) as tool:
            tool.execute("BEGIN IMMEDIATE")                # holds the write lock past busy_timeout
            guard = EchoGuard(spool, ttl=3600)
            tool.execute("ROLLBACK")
        assert guard(passive("recent")) and not guard(passive("old"))
        assert saved_rows(path) == 2                    # the old row stays for a later start
        EchoGuard(spool, ttl=3600)
    assert saved_rows(path) == 1


def _as_version_1(path, echo_cursor=None):
    """Turn the spool at ``path`` back into what version 1 left, with ``echo_cursor`` if given."""
    with closing(sqlite3.connect(path)) as db:
        db.executescript("DROP TABLE marks; DROP TABLE newest; PRAGMA user_version=1;")
        if echo_cursor is not None:
            db.execute("INSERT INTO cursors VALUES ('echo-guard-objects', ?, 0)", (echo_cursor,))
        db.commit()


def _as_version_2(path, marks):
    """Turn the spool at ``path`` back into what version 2 left: the inbound memory as ``marks``."""
    with closing(sqlite3.connect(path)) as db:
        db.executescript("DROP TABLE newest; PRAGMA user_version=2;")
        db.executemany("INSERT INTO marks (kind, key, at) VALUES (?, ?, ?)", marks)
        db.commit()


def test_a_version_2_spool_keeps_its_messages_newest_times_and_echo_objects(tmp_path):
    path = str(tmp_path / "inbound.sqlite")
    with Spool(path) as spool:
        spool.put([Message("m1", "nagios", {}, b"body")])
    _as_version_2(path, [("newest", "h\ts", NOW), ("seen", "id:x:r1", NOW), ("echo", "ce01\tCE", NOW)])
    with Spool(path, exclusive=False) as tool:       # only the daemon converts
        assert tool.stats().depth == 1
        with pytest.raises(SpoolError, match="start the upgraded daemon once"):
            tool.find_newest(["h\ts"])
    with Spool(path) as daemon:
        assert [e.message.message_id for e in daemon.take(10)] == ["m1"]
        assert daemon.find_newest(["h\ts"]) == {"h\ts": (NOW, "")}
        assert daemon.load_marks("echo", since=0) == {"ce01\tCE": NOW}
        assert daemon.find_marks("seen", ["id:x:r1"]) == {} and daemon.find_marks("newest", ["h\ts"]) == {}
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_version_1_spool_without_echo_objects_or_with_damaged_ones_still_opens(tmp_path):
    for name, cursor in (("none", None), ("not-json", "{truncated"), ("a-list", "[1, 2]"),
                         ("bad-values", json.dumps({"h\ts": "yesterday", "h2\t": NOW}))):
        path = str(tmp_path / f"{name}.sqlite")
        with Spool(path) as spool:
            spool.put([Message("m1", "nagios", {}, b"body")], cursor=("ocsp", "not json either"))
        _as_version_1(path, cursor)
        with Spool(path) as spool:
            assert [e.message.message_id for e in spool.take(10)] == ["m1"], name
            assert spool.load_marks("echo", since=0) == ({"h2\t": NOW} if name == "bad-values" else {}), name
            assert spool.cursor("ocsp") == "not json either" and spool.cursor("echo-guard-objects") is None


def test_operator_tools_leave_a_version_1_spool_to_the_daemon(tmp_path):
    """A tool may run beside an old daemon still writing version 1: only the daemon converts."""
    path = str(tmp_path / "inbound.sqlite")
    with Spool(path) as spool:
        spool.put([Message("m1", "nagios", {}, b"body")])
    _as_version_1(path, json.dumps({"ce01\tCE-JobSubmit": NOW}))
    with Spool(path, exclusive=False) as tool:
        assert tool.stats().depth == 1
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    with Spool(path) as daemon:
        assert daemon.load_marks("echo", since=0) == {"ce01\tCE-JobSubmit": NOW}


RECENT = time.time() - 3600       # the guard's lookups use the clock: a time within its ttl


def test_the_echo_guard_does_not_grow_with_every_name_a_star_sender_invents(tmp_path):
    """Regression (issue 12): every object name a '*' sender invented stayed in the guard (memory
    and spool rows) for 7 days, without limit. Now at most max_objects: the least recently
    injected are forgotten first, in memory and in the spool, and the newest batch is kept."""
    from msg_nagios_bridge.daemon.health import Health
    path = str(tmp_path / "inbound.sqlite")
    health = Health()
    with Spool(path) as spool:
        guard = EchoGuard(spool, max_objects=1000, health=health)
        guard.about_to_inject([passive("real")], now=RECENT)
        for batch in range(30):                          # 30 batches of 100 invented names
            guard.about_to_inject([passive(f"invented-{batch}-{i}") for i in range(100)], now=RECENT + 1 + batch)
            assert len(guard) <= 1000 and saved_rows(path) <= 1000
        assert guard(passive("invented-29-99")) and not guard(passive("real"))
        assert not guard(passive("invented-0-0"))
        assert health.counter("echo_guard_evicted") == 3001 - len(guard)
        guard.about_to_inject([passive("real")], now=RECENT + 100)     # injected again: noted again
        assert guard(passive("real"))
    with Spool(path) as spool:
        smaller = EchoGuard(spool, max_objects=200)      # a lower limit applies at the next start
        assert len(smaller) <= 200 and smaller(passive("real"))
    assert saved_rows(path) <= 200


def test_a_batch_bigger_than_the_limit_is_kept_whole(tmp_path):
    with Spool(str(tmp_path / "inbound.sqlite")) as spool:
        guard = EchoGuard(spool, max_objects=10)
        guard.about_to_inject([passive(f"old{i}") for i in range(5)], now=RECENT)
        guard.about_to_inject([passive(f"h{i}") for i in range(50)], now=RECENT + 1)
        assert len(guard) == 50 and all(guard(passive(f"h{i}")) for i in range(50))


def test_with_known_objects_only_objects_nagios_defines_are_remembered(tmp_path):
    with Spool(str(tmp_path / "inbound.sqlite")) as spool:
        guard = EchoGuard(spool)
        guard.known_objects = frozenset({("real", "s"), ("host-only", None)})
        assert guard.about_to_inject([passive("real"), passive("invented"),
                                      CheckResult(host="host-only", service=None, state=0,
                                                  attributes={"check_type": "PASSIVE"})], now=RECENT) == 2
        assert guard(passive("real")) and not guard(passive("invented")) and len(guard) == 2


def test_the_core_echo_signal_decides_which_results_of_an_injected_object_are_echoes():
    guard = EchoGuard(may_be_echo=may_be_echo)
    guard.about_to_inject([passive("h1")])
    assert guard(passive("h1"))
    assert not guard(CheckResult(host="h1", service="s", state=0, attributes={"check_type": "ACTIVE"}))
    assert not guard(passive("h2")), "never injected into"
    without_signal = EchoGuard()
    without_signal.about_to_inject([passive("h1")])
    assert without_signal(CheckResult(host="h1", service="s", state=0, attributes={"check_type": "ACTIVE"}))


def test_eviction_forgets_the_same_objects_in_memory_and_in_the_spool_with_times_in_fractions(tmp_path):
    # The guard keeps whole seconds in memory (inbound/compact.py), the spool the exact time:
    # both must forget the same rows, and the batch being noted stays whole.
    path = str(tmp_path / "inbound.sqlite")
    with Spool(path) as spool:
        guard = EchoGuard(spool, max_objects=100)
        for batch in range(12):
            now = RECENT + batch * 0.4                    # three batches share a whole second
            guard.about_to_inject([passive(f"b{batch}-{i}") for i in range(20)], now=now)
            assert len(guard) == saved_rows(path) <= 120
            assert all(guard(passive(f"b{batch}-{i}")) for i in range(20))
    with Spool(path) as spool:
        assert len(EchoGuard(spool, max_objects=100)) == saved_rows(path)


def test_with_known_objects_the_guard_keeps_four_bytes_a_known_object_not_twelve_an_injected_one(tmp_path):
    """Issue 16, point 4: a central bridge's guard held the same 500,000 objects as the known
    objects a second time, as hashes with times (6 MB, 12 bytes an object). Beside the known
    objects' hashes it takes a time each: 4 bytes a known object (2 MB)."""
    objects = [(f"ce{i:05d}.example.org", "org.sam.CE-JobSubmit") for i in range(50_000)]
    known = KnownObjects(objects)
    path = str(tmp_path / "inbound.sqlite")
    with Spool(path) as spool:
        EchoGuard(spool).about_to_inject([passive(host, service) for host, service in objects], now=RECENT)
    with Spool(path) as spool:
        tracemalloc.start()
        try:
            guard = EchoGuard(spool, known_objects=known)
            snapshot = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        assert len(guard) == 50_000 and guard(passive("ce00007.example.org", "org.sam.CE-JobSubmit"))
    # Only what the guard's own code allocated and still holds: a whole-process figure counts
    # whatever other threads (a test's leftovers) allocate meanwhile.
    own = snapshot.filter_traces([tracemalloc.Filter(True, compact.__file__),
                                  tracemalloc.Filter(True, echo.__file__)])
    held = sum(stat.size for stat in own.statistics("filename"))
    assert held < 5 * len(objects), f"{held / len(objects):.1f} bytes an object"


def test_given_known_objects_the_guard_loads_only_those_and_follows_a_new_list(tmp_path):
    path = str(tmp_path / "inbound.sqlite")
    with Spool(path) as spool:
        EchoGuard(spool).about_to_inject([passive("kept"), passive("removed"), passive("host-only", None)],
                                         now=RECENT)
    with Spool(path) as spool:
        guard = EchoGuard(spool, known_objects={("kept", "s"), ("host-only", None), ("added", "s")})
        assert len(guard) == 2 and guard(passive("kept")) and guard(passive("host-only", None))
        assert not guard(passive("removed")), "Nagios does not define it: it cannot echo"
        assert guard.about_to_inject([passive("added"), passive("kept")], now=RECENT + 1) == 1
        # Nagios reloads without "kept": what it still defines stays remembered, at its time.
        guard.known_objects = {("added", "s"), ("host-only", None), ("new", "s")}
        assert len(guard) == 2 and guard(passive("added")) and guard(passive("host-only", None))
        assert not guard(passive("kept"))
        assert guard.about_to_inject([passive("added")], now=RECENT + 2) == 0, "still remembered: no new row"
        guard.known_objects = None              # no list any more: every object of the spool again
        assert guard.about_to_inject([passive("anything")], now=RECENT + 3) == 1
        assert len(guard) == 5 and all(guard(passive(name)) for name in ("anything", "added", "kept", "removed"))


def test_a_shorter_list_for_a_while_forgets_nothing_the_full_list_has(tmp_path):
    """Review of 6f47f55: Nagios rewrites objects.cache in place; a list read while it was half
    written dropped the other objects from the guard for good (their echoes published until
    each was injected into again). The guard rebuilds from the spool with each list."""
    path = str(tmp_path / "inbound.sqlite")
    full = {("a", "s"), ("b", "s")}
    with Spool(path) as spool:
        guard = EchoGuard(spool, known_objects=full)
        guard.about_to_inject([passive("a"), passive("b")], now=RECENT)
        guard.known_objects = {("a", "s")}         # half written
        assert not guard(passive("b"))
        guard.known_objects = full
        assert guard(passive("a")) and guard(passive("b")) and len(guard) == 2
    with Spool(path) as spool:                        # the same when the short list came first
        guard = EchoGuard(spool, known_objects={("a", "s")})
        assert not guard(passive("b"))
        guard.known_objects = full
        assert guard(passive("b"))


def test_before_its_objects_are_loaded_the_guard_looks_them_up_in_the_spool(tmp_path):
    path = str(tmp_path / "inbound.sqlite")
    with Spool(path) as spool:
        EchoGuard(spool).about_to_inject([passive("injected")], now=RECENT)
        guard = EchoGuard(spool, load=False, may_be_echo=may_be_echo)
        assert len(guard) == 0
        assert guard(passive("injected")) and not guard(passive("never"))
        assert not guard(CheckResult(host="injected", service="s", state=0, attributes={"check_type": "ACTIVE"}))
        assert guard.about_to_inject([passive("early")], now=RECENT + 1) == 1
        assert guard(passive("early"))
        guard.load({("injected", "s"), ("early", "s")})
        assert len(guard) == 2 and guard(passive("injected")) and guard(passive("early"))


def test_what_is_noted_while_the_guard_loads_is_in_its_memory_after(tmp_path):
    path = str(tmp_path / "inbound.sqlite")
    with Spool(path) as spool:
        first = EchoGuard(spool)
        first.about_to_inject([passive(f"h{i}") for i in range(30)], now=RECENT)
        guard = EchoGuard(spool)
        reading = spool.each_mark

        def each_mark_while_the_writer_notes(kind, since, chunk=10):
            for number, rows in enumerate(reading(kind, since, chunk=chunk)):
                if number == 1:        # the writer injects between two chunks of the read
                    guard.about_to_inject([passive("during"), passive("h0")], now=RECENT + 90_000)
                yield rows
        spool.each_mark = each_mark_while_the_writer_notes
        guard.load(None)
        assert guard(passive("during")) and len(guard) == 31
        assert guard._objects.get(compact_name("h0")) == int(RECENT + 90_000), "refreshed during the load"


def compact_name(host, service="s"):
    return object_text((host, service))
