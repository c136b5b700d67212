"""The spool against real SQLite files in tmp_path: no mocks of the thing under test."""
from __future__ import annotations

import enum
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from contextlib import closing

import pytest
from hypothesis import example, given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from msg_nagios_bridge.model import Message
from msg_nagios_bridge import spool as spool_mod
from msg_nagios_bridge.spool import Spool, SpoolError, SpoolFull, SpoolUnavailable, encode, headers_dict, headers_text

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def msg(n, body=b"x" * 300, dest="/topic/grid.probe.metricOutput"):
    return Message(f"id-{n}", dest, {"persistent": "true", "n": str(n)}, body)


class Clock:
    def __init__(self, now=1_700_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


def db_file(tmp_path):
    return str(tmp_path / "spool.db")


@pytest.fixture
def spool(tmp_path):
    with Spool(str(tmp_path / "out" / "outbound.sqlite")) as s:
        yield s


def ids(entries):
    return [e.message.message_id for e in entries]


def rows(path):
    """What is on disk, read through a separate connection."""
    with closing(sqlite3.connect(path)) as reader:
        return [r[0] for r in reader.execute("SELECT message_id FROM messages ORDER BY id")]


# -- the queue ---------------------------------------------------------------------------------

def test_take_is_oldest_first_and_leases(spool):
    assert spool.put([msg(i) for i in range(5)]) == 5
    first = spool.take(2)
    assert ids(first) == ["id-0", "id-1"]
    assert ids(spool.take(10)) == ["id-2", "id-3", "id-4"]  # leased ones are skipped
    assert spool.take(10) == []
    assert spool.stats().leased == 5


def test_message_round_trips_unchanged(spool):
    original = Message("m1", "/queue/x", {"a": "1", "é": "ü\n"}, bytes(range(256)))
    spool.put([original])
    (entry,) = spool.take(1)
    assert entry.message == original
    assert entry.attempts == 0


# Text made mostly of what JSON and STOMP escape, of the separators headers_text joins with, of
# escapes' look-alikes, and of what tells the two forms apart.
_JSON_TEXT = st.lists(st.sampled_from(['"', "\\", '":"', '","', "\\u0022", "\x00", "\x01", "\x7f", "\n", "\r", "é",
                                       "\ud800", "\U0001f600", "a", ":", "\\c", "{", "}"]) | st.text(max_size=4),
                      max_size=6).map("".join)


class _TextEnum(str, enum.Enum):
    A = 'a"b'


_PLAIN = set(map(chr, range(0x80))) - set("\\\n\r\x00\x01")


@settings(max_examples=1500, deadline=None)
@given(st.dictionaries(_JSON_TEXT, _JSON_TEXT | st.sampled_from([_TextEnum.A, 1, 1.5, None, True]), max_size=8))
@example({"persistent": "true", "site": "S", "host": "h.example.org"})
@example({"a": 'x","y'})
@example({"{a": "b"})
@example({"a": "b\\c:d", "route_seq": "e:1"})
def test_headers_are_stored_as_header_lines_when_plain_else_as_json_and_read_back_as_they_were(headers):
    """headers_text writes plain headers (text, ASCII, no backslash, CR, LF, NUL; the first
    name not starting with "{") as STOMP header lines in their order, anything else as the
    JSON encoder writes it, byte for byte; headers_dict reads either back as json.loads reads
    the headers' JSON (and header lines in their order)."""
    text = headers_text(headers)
    as_json = json.dumps(headers, separators=(",", ":"), sort_keys=True)
    plain = bool(headers) and all(isinstance(part, str) and set(part) <= _PLAIN for item in headers.items()
                                  for part in item) and not next(iter(headers)).startswith("{")
    if plain:
        in_order = json.loads(json.dumps(headers))         # their text, in their order
        escaped = {name.replace(":", "\\c"): value.replace(":", "\\c") for name, value in in_order.items()}
        assert text == "".join(f"{name}:{value}\n" for name, value in escaped.items())
        assert spool_mod.stored_as_lines(text) and not text.startswith("{")
        assert list(headers_dict(text).items()) == list(in_order.items())
    else:
        assert text == as_json and not spool_mod.stored_as_lines(text)
    assert headers_dict(text) == json.loads(as_json)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(_JSON_TEXT, _JSON_TEXT, max_size=6), st.from_regex(r"[0-9a-zA-Z_-]{1,8}:[0-9]{1,6}", fullmatch=True))
def test_a_header_put_first_into_a_stored_text_reads_back_first(headers, stamp):
    """with_header_first (put() numbering a message) on either form gives the headers with
    route_seq first, as headers_text of that mapping would be read back."""
    headers.pop("route_seq", None)
    text = spool_mod.with_header_first(headers_text(headers) if headers else "{}", "route_seq", stamp)
    read = headers_dict(text)
    assert read == {"route_seq": stamp, **json.loads(json.dumps(headers))}
    if spool_mod.stored_as_lines(text):
        assert list(read) == ["route_seq", *headers]
    assert spool_mod.stored_names(text, "route_seq")


@pytest.mark.parametrize("text", ['{"a":"b"}', ' {"a":"b"}', '{"a":"b"} ', '{ "a" : "b" }\n', "[1]", '"x"',
                                  '{"a":"b"}x', '{"a":', "", "{}", '{"a":"b","a":"c"}'])
def test_stored_headers_are_read_as_json_loads_reads_them_blanks_and_errors_included(text):
    try:
        expected = json.loads(text)
    except ValueError as exc:
        with pytest.raises(type(exc)):
            headers_dict(text)
    else:
        assert headers_dict(text) == expected


def test_done_deletes_durably(spool):
    spool.put([msg(i) for i in range(3)])
    entries = spool.take(3)
    spool.done([entries[0].entry_id, entries[2].entry_id])
    assert rows(spool.path) == ["id-1"]
    assert spool.stats().depth == 1 and spool.stats().leased == 1
    assert spool.stats().done == 2


class RecordingConnection:
    """Passes everything to a sqlite3 connection and records the SQL texts it is given."""

    def __init__(self, db):
        self.db, self.texts = db, set()

    def execute(self, sql, *args):
        self.texts.add(sql)
        return self.db.execute(sql, *args)

    def executemany(self, sql, *args):
        self.texts.add(sql)
        return self.db.executemany(sql, *args)

    def __getattr__(self, name):
        return getattr(self.db, name)


def test_one_statement_for_any_number_of_ids_so_the_site_bridge_rss_does_not_creep(spool):
    """The site bridge's RSS rose ~4 MB/h in a soak at 600 results/s: done() wrote one "?" per
    id, so every batch size was another SQL text, and sqlite3 keeps up to 128 statements
    compiled per connection, each as large as its IN list. Any batch size must share one text."""
    spool.put([msg(i) for i in range(400)])
    recording = spool._db = RecordingConnection(spool._db)
    spool._reader = RecordingConnection(spool._reader_connection())     # take()'s own
    spool._reader.texts = recording.texts
    for size in range(1, 25):                      # done(), batch sizes 1..24
        spool.done(e.entry_id for e in spool.take(size))
    given = spool.take(30)
    for size in (1, 7, 13):                        # given back, then taken again by id
        spool.give_back(e.entry_id for e in given[:size])
        spool.done(e.entry_id for e in spool.take(size))
        given = given[size:]
    spool.done(e.entry_id for e in given)
    for entry in spool.take(6):
        spool.reject(entry.entry_id, "test")
    dead = [d.dead_id for d in spool.dead_letters()]
    spool.purge_dead_letters(dead[:1])
    spool.purge_dead_letters(dead[1:])

    assert spool.stats().depth == 400 - 330 - 6 and spool.stats().dead_letters == 0
    assert rows(spool.path)[0] == "id-336"
    by_ids = sorted(t for t in recording.texts if "IN (" in t)
    assert len(by_ids) == 4, by_ids                # count + delete, take again, purge
    assert not any("?,?" in t for t in recording.texts)


def test_done_counts_what_it_deleted_once_however_often_an_id_is_given(spool):
    spool.put([msg(i) for i in range(5)])
    entries = spool.take(5)
    spool.done([entries[0].entry_id] * 3 + [entries[1].entry_id, 10_000])
    assert spool.stats().depth == 3 and spool.stats().done == 2
    assert rows(spool.path) == ["id-2", "id-3", "id-4"]


def test_give_back_unleases_and_counts_attempts(spool):
    spool.put([msg(i) for i in range(3)])
    a, b, c = spool.take(3)
    spool.give_back([b.entry_id])
    (again,) = spool.take(5)
    assert again.entry_id == b.entry_id and again.attempts == 1
    spool.give_back([a.entry_id, again.entry_id])
    assert [(e.message.message_id, e.attempts) for e in spool.take(5)] == [("id-0", 1), ("id-1", 2)]
    assert spool.stats().given_back == 3


def test_duplicates_are_skipped_and_counted(spool):
    assert spool.put([msg(1), msg(2)]) == 2
    assert spool.put([msg(2), msg(3), msg(3)]) == 1
    assert rows(spool.path) == ["id-1", "id-2", "id-3"]
    stats = spool.stats()
    assert (stats.put, stats.duplicates, stats.depth) == (3, 2, 3)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=6) | st.text("0123456789abcdef", min_size=32, max_size=32), max_size=5))
def test_an_array_of_message_ids_reads_back_as_the_ids(ids):
    assert json.loads(spool_mod._id_array_text(ids)) == ids


def test_numbered_duplicates_are_skipped_whatever_the_ids_hold(spool):
    """The ids of a numbered put go into SQL as a JSON array, made without json.dumps when
    they are letters and digits only: ids with quotes, backslashes or other text too."""
    ids = ["0f" * 16, 'a"b', "c\\d", "é", "e,f", ""]
    batch = [Message(message_id, "/queue/q", {"route": "r"}, b"x") for message_id in ids]
    assert spool.put(batch, numbered=True) == len(ids)
    assert spool.put(batch + [Message("new", "/queue/q", {"route": "r"}, b"x")], numbered=True) == 1
    assert rows(spool.path) == ids + ["new"]
    assert spool.stats().duplicates == len(ids)


def test_a_body_of_a_bytes_subclass_is_stored_as_its_bytes(spool):
    class Body(bytes):
        pass
    spool.put([msg(1, body=Body(b"\x00\xffz")), msg(2, body=b"")])
    assert [entry.message.body for entry in spool.take(10)] == [b"\x00\xffz", b""]
    with closing(sqlite3.connect(spool.path)) as reader:
        assert reader.execute("SELECT group_concat(typeof(body)) FROM messages").fetchone()[0] == "blob,blob"


def test_a_take_by_bytes_fills_its_budget_with_given_back_entries_first_and_new_ones_after(spool):
    size = encode(msg(1))[4]
    spool.put([msg(1), msg(2), msg(3), msg(4, body=b"x" * 3000)])
    assert [e.entry_id for e in spool.take(1)] == [1]
    spool.give_back([1])
    # The given-back entry fills most of the budget: the next one does not fit beside it.
    assert [e.entry_id for e in spool.take(3, max_bytes=size + 1)] == [1]
    assert [e.entry_id for e in spool.take(3, max_bytes=2 * size)] == [2, 3]
    # Alone, an entry bigger than the budget is taken all the same (else it would wait for ever).
    assert [e.entry_id for e in spool.take(3, max_bytes=size)] == [4]


def test_cursor_is_saved_with_the_batch(spool):
    assert spool.cursor("perfdata") is None
    spool.put([msg(1)], cursor=("perfdata", "1234:100"))
    spool.put([], cursor=("perfdata", "1234:180"))  # lines filtered out: the cursor still moves
    assert spool.cursor("perfdata") == "1234:180"
    assert spool.cursor("other") is None


def test_wait_wakes_on_put(spool):
    assert spool.wait(0.01) is False
    threading.Timer(0.05, lambda: spool.put([msg(1)])).start()
    started = time.monotonic()
    assert spool.wait(5) is True
    assert time.monotonic() - started < 4, "woken by the put, not by the 5 s timeout"
    assert ids(spool.take(1)) == ["id-1"]


# -- limits ------------------------------------------------------------------------------------

def test_full_by_count_writes_nothing(tmp_path):
    with Spool(db_file(tmp_path), max_messages=4) as spool:
        spool.put([msg(i) for i in range(3)], cursor=("src", "3"))
        with pytest.raises(SpoolFull, match="full"):
            spool.put([msg(i) for i in range(3, 5)], cursor=("src", "5"))
        assert rows(spool.path) == ["id-0", "id-1", "id-2"]
        assert spool.cursor("src") == "3"
        stats = spool.stats()
        assert (stats.depth, stats.put, stats.refused_full) == (3, 3, 2)
        # Duplicates take no room, so this batch fits.
        assert spool.put([msg(0), msg(1), msg(3)], cursor=("src", "4")) == 1
        assert spool.cursor("src") == "4"
        spool.done(e.entry_id for e in spool.take(2))
        assert spool.put([msg(5), msg(6)]) == 2


def test_full_by_bytes_writes_nothing(tmp_path):
    size = encode(msg(0))[4]
    with Spool(db_file(tmp_path), max_bytes=2 * size) as spool:
        spool.put([msg(0)])
        with pytest.raises(SpoolFull):
            spool.put([msg(1), msg(2)])
        assert spool.stats().bytes == size
        assert spool.put([msg(1)]) == 1
        assert spool.stats().bytes == 2 * size


def test_database_full_is_unavailable_then_recovers(spool):
    """Simulated with PRAGMA max_page_count: SQLite reports SQLITE_FULL, as on a full disk."""
    spool.put([msg(0)])
    pages = spool._db.execute("PRAGMA page_count").fetchone()[0]
    spool._db.execute(f"PRAGMA max_page_count={pages + 1}")
    with pytest.raises(SpoolUnavailable, match="full"):
        spool.put([msg(i, body=b"y" * 4000) for i in range(1, 20)], cursor=("src", "x"))
    assert rows(spool.path) == ["id-0"] and spool.cursor("src") is None
    assert spool.stats().errors == 1 and spool.stats().depth == 1
    assert ids(spool.take(5)) == ["id-0"]  # reading still works
    spool._db.execute("PRAGMA max_page_count=1073741823")
    assert spool.put([msg(i, body=b"y" * 4000) for i in range(1, 20)]) == 19
    assert spool._db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_real_write_error_is_unavailable_then_recovers(tmp_path):
    """A real failing write(2): RLIMIT_FSIZE makes the kernel refuse to grow the WAL file.

    Runs in a child process so the limit cannot touch pytest's own files.
    """
    script = textwrap.dedent("""
        import os, resource, signal, sys
        from msg_nagios_bridge.model import Message
        from msg_nagios_bridge.spool import Spool, SpoolUnavailable
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        m = lambda n: Message(f"id-{n}", "/topic/t", {}, b"z" * 3000)
        spool = Spool(sys.argv[1])
        spool.put([m(0)])
        limit = max(os.path.getsize(sys.argv[1] + suffix) for suffix in ("", "-wal"))
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit + 4096, hard))
        try:
            spool.put([m(n) for n in range(1, 50)], cursor=("src", "50"))
            print("no error")
        except SpoolUnavailable as exc:
            print("unavailable", spool.stats().depth, spool.cursor("src"), exc)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        print("after", spool.put([m(n) for n in range(1, 50)], cursor=("src", "50")))
        spool.close()
    """)
    out = subprocess.run([sys.executable, "-c", script, db_file(tmp_path)], cwd=REPO, timeout=30,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].startswith("unavailable 1 None ")
    assert out[1] == "after 49"
    with Spool(db_file(tmp_path)) as spool:
        assert spool.stats().depth == 50


# -- reopening, files, errors at start ---------------------------------------------------------

def test_reopen_keeps_everything_and_forgets_leases(tmp_path):
    path = str(tmp_path / "s")
    with Spool(path) as spool:
        spool.put([msg(i) for i in range(4)], cursor=("src", "c1"))
        a, b = spool.take(2)
        spool.give_back([b.entry_id])
        spool.take(5)
        spool.reject(a.entry_id, "bad destination")
    with Spool(path) as spool:
        entries = spool.take(10)
        assert ids(entries) == ["id-1", "id-2", "id-3"]
        assert [e.attempts for e in entries] == [1, 0, 0]
        assert spool.cursor("src") == "c1"
        stats = spool.stats()
        assert (stats.depth, stats.dead_letters, stats.bytes) == (3, 1, 3 * encode(msg(0))[4])


def test_files_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        with Spool(str(tmp_path / "new" / "spool.db")) as spool:
            spool.put([msg(1)])
            modes = {name: stat.S_IMODE(os.stat(tmp_path / "new" / name).st_mode)
                     for name in os.listdir(tmp_path / "new")}
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o700
    assert sorted(modes) == ["spool.db", "spool.db-shm", "spool.db-wal", "spool.db.lock"]
    assert set(modes.values()) == {0o600}, modes


def test_second_open_of_the_same_directory_is_refused(spool):
    with pytest.raises(SpoolError, match="in use"):
        Spool(spool.path)


def test_garbage_database_names_the_file(tmp_path):
    (tmp_path / "spool.db").write_bytes(b"this is not a database\n" * 100)
    expected = re.escape(db_file(tmp_path)) + " cannot be opened: .*not a database"
    with pytest.raises(SpoolError, match=expected):
        Spool(db_file(tmp_path))


def test_damaged_index_is_refused_at_open(tmp_path):
    with Spool(db_file(tmp_path)) as spool:  # close() checkpoints the WAL into spool.db
        spool.put([msg(i) for i in range(200)])
    with closing(sqlite3.connect(tmp_path / "spool.db")) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_master"
                          " WHERE name = 'sqlite_autoindex_messages_1'").fetchone()[0]
    with open(tmp_path / "spool.db", "r+b") as f:
        f.seek((root - 1) * page_size)
        leaf = f.read(1) == b"\x0a"
        f.seek((root - 1) * page_size + (8 if leaf else 12))
        f.write(b"\x00\x10")  # the first cell now points into the page header
    # Reading the table would not notice; the quick_check at open does.
    expected = re.escape(str(tmp_path / "spool.db")) + " cannot be opened: integrity check failed"
    with pytest.raises(SpoolError, match=expected):
        Spool(db_file(tmp_path))


def test_foreign_sqlite_database_is_refused(tmp_path):
    with closing(sqlite3.connect(tmp_path / "spool.db")) as db:
        db.execute("CREATE TABLE t (x)")
        db.commit()
    with pytest.raises(SpoolError, match="not a msg-nagios-bridge spool"):
        Spool(db_file(tmp_path))


def test_a_version_3_spool_keeps_its_json_headers_and_is_sent_from_them(tmp_path):
    """Version 3 stored every message's headers as JSON. The daemon marks such a file version
    4 without touching its rows, and takes and sends them as before (read into a dict, not
    sent from the text); an operator tool leaves the number to the daemon. A spool of a
    version it does not know (a newer daemon's) is refused, not misread."""
    from msg_nagios_bridge.broker.connection import send_frame, send_frame_stored
    path = db_file(tmp_path)
    headers = {"persistent": "true", "route_seq": "e:1", "host": "h.example.org"}
    with Spool(path) as spool:
        spool.put([Message("m1", "/queue/q", headers, b"body")])
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT headers FROM messages").fetchone()[0] == "persistent:true\nroute_seq:e\\c1\nhost:h.example.org\n"
        db.execute("UPDATE messages SET headers = ?", (json.dumps(headers, separators=(",", ":"), sort_keys=True),))
        db.execute("PRAGMA user_version=3")
        db.commit()
    with Spool(path, exclusive=False) as tool:
        assert tool.version == 3 and tool.stats().depth == 1
    with Spool(path) as daemon:
        assert daemon.version == spool_mod.SCHEMA_VERSION == 4
        (entry,) = daemon.take(1)
        assert dict(entry.message.headers) == headers
        assert send_frame_stored("/queue/q", b"body", entry.message.headers, "transaction", "t") is None
        assert send_frame("/queue/q", b"body", dict(entry.message.headers, transaction="t")).startswith(
            b"SEND\ndestination:/queue/q\ncontent-length:4\nhost:h.example.org\npersistent:true\nroute_seq:e\\c1\n")
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 4
        db.execute("PRAGMA user_version=5")
        db.commit()
    with pytest.raises(SpoolError, match="spool format version 5 is not 4"):
        Spool(path)


def test_closed_spool_refuses_work(tmp_path):
    spool = Spool(db_file(tmp_path))
    spool.close()
    spool.close()
    with pytest.raises(SpoolError, match="closed"):
        spool.put([msg(1)])
    with Spool(db_file(tmp_path)):  # the lock was released
        pass


# -- dead letters and stats --------------------------------------------------------------------

def test_dead_letters_keep_reason_and_can_be_requeued_or_purged(tmp_path):
    clock = Clock()
    with Spool(db_file(tmp_path), clock=clock) as spool:
        spool.put([msg(i) for i in range(4)])
        entries = spool.take(4)
        clock.now += 10
        spool.reject(entries[0].entry_id, "destination not allowed")
        clock.now += 10
        spool.reject(entries[1].entry_id, "too large")
        spool.reject(entries[1].entry_id, "again")  # no longer there: nothing happens
        dead = spool.dead_letters()
        assert [(d.entry.message.message_id, d.reason, d.rejected_at) for d in dead] == [
            ("id-0", "destination not allowed", clock.now - 10), ("id-1", "too large", clock.now)]
        assert dead[0].entry.message == msg(0)
        assert spool.dead_letter(dead[1].dead_id) == dead[1]             # one, by its id
        assert spool.dead_letter(dead[1].dead_id + 1) is None
        stats = spool.stats()
        assert (stats.depth, stats.dead_letters, stats.rejected, stats.leased) == (2, 2, 2, 2)
        assert spool.put([msg(0)]) == 0  # a source re-reading it does not bring it back

        new_id = spool.requeue_dead_letter(dead[0].dead_id)
        assert new_id > entries[-1].entry_id
        assert spool.requeue_dead_letter(dead[0].dead_id) is None
        (requeued,) = spool.take(5)
        assert requeued.message == msg(0) and requeued.attempts == 0
        assert spool.stats().dead_letters == 1

        spool.reject(requeued.entry_id, "still bad")
        assert spool.purge_dead_letters(before=clock.now - 5) == 0
        assert spool.purge_dead_letters([dead[1].dead_id]) == 1
        assert spool.purge_dead_letters() == 1
        assert spool.dead_letters() == [] and spool.stats().dead_letters == 0


def test_input_that_never_was_queued_can_be_a_dead_letter(tmp_path):
    clock = Clock()
    with Spool(db_file(tmp_path), clock=clock) as spool:
        bad = Message("h1", "dead:perfdata", {"source": "perfdata"}, b"garbage line")
        assert spool.add_dead_letter(bad, "no host name") is True
        assert spool.add_dead_letter(bad, "no host name") is False  # read again after a crash
        (dead,) = spool.dead_letters()
        assert (dead.entry.entry_id, dead.entry.message, dead.reason, dead.rejected_at) == (
            0, bad, "no host name", clock.now)
        stats = spool.stats()
        assert (stats.depth, stats.dead_letters, stats.rejected) == (0, 1, 1)


def test_dead_letter_limit_drops_oldest_and_counts(tmp_path):
    with Spool(db_file(tmp_path), max_dead_letters=2) as spool:
        spool.put([msg(i) for i in range(3)])
        for entry in spool.take(3):
            spool.reject(entry.entry_id, f"bad {entry.message.message_id}")
        assert [d.reason for d in spool.dead_letters()] == ["bad id-1", "bad id-2"]
        stats = spool.stats()
        assert (stats.dead_letters, stats.dead_letters_dropped, stats.rejected) == (2, 1, 3)


def test_dead_letters_are_bounded_in_bytes_keeping_the_newest(tmp_path):
    """Regression: dead letters counted against no byte limit (up to 10,000 of ~670 kB each)."""
    with Spool(db_file(tmp_path), max_dead_letter_bytes=250_000) as spool:
        for index in range(5):
            spool.add_dead_letter(Message(f"dead-{index}", "/queue/q", {}, bytes(100_000)), f"refused {index}")
        assert [d.reason for d in spool.dead_letters()] == ["refused 3", "refused 4"]
        assert spool.stats().dead_letters_dropped == 3 and spool.stats().dead_letters == 2
        spool.add_dead_letter(Message("small", "/queue/q", {}, b"x"), "refused small")
        assert [d.reason for d in spool.dead_letters()] == ["refused 3", "refused 4", "refused small"]


def test_a_dead_letter_larger_than_the_byte_limit_is_kept_alone(tmp_path):
    """Review 2026-12-06: one larger than max_dead_letter_bytes was deleted as it came (the
    log said the oldest were), so a refused 4 MiB perfdata record left no trace but a count."""
    with Spool(db_file(tmp_path), max_dead_letter_bytes=250_000) as spool:
        spool.add_dead_letter(Message("small", "/queue/q", {}, b"x"), "refused small")
        spool.put([Message("big", "/queue/q", {}, bytes(400_000))])
        [entry] = spool.take(1)
        spool.reject(entry.entry_id, "refused big")
        assert [d.reason for d in spool.dead_letters()] == ["refused big"]
        assert (spool.stats().dead_letters, spool.stats().dead_letters_dropped) == (1, 1)
        spool.add_dead_letter(Message("next", "/queue/q", {}, b"y"), "refused next")
        assert [d.reason for d in spool.dead_letters()] == ["refused next"]


def test_stats_depth_bytes_and_oldest_age(tmp_path):
    clock = Clock()
    with Spool(db_file(tmp_path), clock=clock) as spool:
        stats = spool.stats()
        assert (stats.depth, stats.bytes, stats.oldest_age) == (0, 0, None)
        spool.put([msg(1)])
        clock.now += 30
        spool.put([msg(2, body=b"")])
        clock.now += 5
        stats = spool.stats()
        body_free = len("id-2") + len("/topic/grid.probe.metricOutput") + len("persistent:true\nn:2\n")
        assert stats.depth == 2
        assert stats.bytes == 300 + 2 * body_free
        assert stats.oldest_age == 35
        spool.done([spool.take(1)[0].entry_id])
        assert spool.stats().oldest_age == 5


# -- concurrency and crashes -------------------------------------------------------------------

def test_threads_putting_while_one_takes(tmp_path):
    producers, per_producer = 4, 300
    delivered, stop = [], threading.Event()
    with Spool(db_file(tmp_path)) as spool:
        def produce(p):
            rng, n = random.Random(p), 0
            while n < per_producer:
                end = min(per_producer, n + rng.randint(1, 25))
                batch = [msg(f"{p}-{i}") for i in range(n, end)]
                assert spool.put(batch) == len(batch)
                n += len(batch)

        def consume():
            rng = random.Random(99)
            while not stop.is_set() or spool.stats().depth:
                entries = spool.take(50)
                if not entries:
                    spool.wait(0.05)
                    continue
                back = [e for e in entries if rng.random() < 0.1]
                spool.give_back(e.entry_id for e in back)
                ok = [e for e in entries if e not in back]
                spool.done(e.entry_id for e in ok)
                delivered.extend(e.message.message_id for e in ok)

        consumer = threading.Thread(target=consume)
        consumer.start()
        threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        stop.set()
        consumer.join(30)
        assert not consumer.is_alive()
        stats = spool.stats()
    expected = {f"id-{p}-{i}" for p in range(producers) for i in range(per_producer)}
    assert sorted(delivered) == sorted(expected)  # nothing lost, nothing delivered twice
    assert (stats.depth, stats.bytes, stats.leased, stats.put, stats.done) == (
        0, 0, 0, len(expected), len(expected))


KILL_CHILD = textwrap.dedent("""
    import random, sys
    from msg_nagios_bridge.model import Message
    from msg_nagios_bridge.spool import Spool
    spool = Spool(sys.argv[1])
    batch = int(spool.cursor("src") or 0)  # resume like a source would
    rng = random.Random()
    while True:
        batch += 1
        ids = [f"{batch}-{i}" for i in range(rng.choice((1, 7, 100)))]
        spool.put([Message(i, "/topic/t", {"k": "v"}, b"p" * 300) for i in ids],
                  cursor=("src", str(batch)))
        print(batch, *ids, flush=True)  # only after put() returned: acknowledged
""")


def test_kill_9_loses_no_acknowledged_batch(tmp_path):
    acknowledged = {}  # batch number -> ids
    for round_ in range(4):
        child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, db_file(tmp_path)], cwd=REPO,
                                 stdout=subprocess.PIPE, text=True)
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(child.stdout))
        reader.start()
        deadline = time.monotonic() + 10
        while not lines and time.monotonic() < deadline:  # let it start, then kill at random
            time.sleep(0.01)
        time.sleep(random.uniform(0, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        reader.join(10)
        assert lines, "the child acknowledged nothing"
        for line in lines:
            if line.endswith("\n"):
                batch, *batch_ids = line.split()
                acknowledged[int(batch)] = batch_ids

        db = sqlite3.connect(tmp_path / "spool.db")  # a fresh reader, as after a reboot
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        db.close()
        with Spool(db_file(tmp_path)) as spool:
            stored = set(ids(spool.take(10**6)))
            cursor = int(spool.cursor("src"))
        assert cursor >= max(acknowledged)
        for batch, batch_ids in acknowledged.items():
            assert stored.issuperset(batch_ids), f"round {round_}: batch {batch} lost"
        # The cursor and the lines went in one transaction: no batch beyond the cursor.
        assert all(int(i.split("-")[0]) <= cursor for i in stored)


# -- a model-based check of the whole API ------------------------------------------------------

class SpoolModel(RuleBasedStateMachine):
    """Random sequences of operations, reopening included, against a dict and a set."""

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="spool-model-")
        self.spool = Spool(os.path.join(self.dir, "spool.db"), max_messages=12)
        self.queued = {}  # entry_id -> message_id
        self.leased = set()
        self.dead = set()

    def teardown(self):
        self.spool.close()
        shutil.rmtree(self.dir)

    @rule(numbers=st.lists(st.integers(0, 30), max_size=6))
    def put(self, numbers):
        known = set(self.queued.values()) | self.dead
        new = list(dict.fromkeys(f"id-{n}" for n in numbers if f"id-{n}" not in known))
        if len(self.queued) + len(new) > 12:
            with pytest.raises(SpoolFull):
                self.spool.put([msg(n) for n in numbers])
            return
        assert self.spool.put([msg(n) for n in numbers]) == len(new)
        taken = self.spool.take(100)  # learn the new entry ids, then unlease what was taken
        for entry in taken:
            self.queued.setdefault(entry.entry_id, entry.message.message_id)
        self.spool.give_back(e.entry_id for e in taken)

    @rule(limit=st.integers(1, 5))
    def take(self, limit):
        expected = sorted(set(self.queued) - self.leased)[:limit]
        got = self.spool.take(limit)
        assert [e.entry_id for e in got] == expected
        assert [e.message.message_id for e in got] == [self.queued[i] for i in expected]
        self.leased.update(expected)

    @rule(limit=st.integers(1, 5), budget=st.integers(1, 1500))
    def take_bytes(self, limit, budget):
        """take(limit, max_bytes): oldest first while their sizes fit, but at least one."""
        expected, left = [], budget
        for entry_id in sorted(set(self.queued) - self.leased)[:limit]:
            size = encode(msg(int(self.queued[entry_id][3:])))[4]
            if expected and size > left:
                break
            expected.append(entry_id)
            left -= size
        got = self.spool.take(limit, max_bytes=budget)
        assert [e.entry_id for e in got] == expected
        self.leased.update(expected)

    @precondition(lambda self: self.leased)
    @rule(data=st.data())
    def finish(self, data):
        entry_id = data.draw(st.sampled_from(sorted(self.leased)))
        action = data.draw(st.sampled_from(["done", "give_back", "reject"]))
        if action == "done":
            self.spool.done([entry_id])
        elif action == "give_back":
            self.spool.give_back([entry_id])
        else:
            self.spool.reject(entry_id, "bad")
            self.dead.add(self.queued[entry_id])
        self.leased.discard(entry_id)
        if action != "give_back":
            del self.queued[entry_id]

    @rule()
    def reopen(self):
        self.spool.close()
        self.spool = Spool(os.path.join(self.dir, "spool.db"), max_messages=12)
        self.leased.clear()

    @invariant()
    def stats_match(self):
        stats = self.spool.stats()
        assert (stats.depth, stats.leased, stats.dead_letters) == (
            len(self.queued), len(self.leased), len(self.dead))


SpoolModel.TestCase.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
TestSpoolModel = SpoolModel.TestCase


def test_entries_given_back_survive_a_failed_read_in_take(tmp_path, monkeypatch):
    """Regression (review): take() forgot the given-back ids before reading them; one failed
    read (EIO) left them neither leased nor waiting: never sent again until a restart."""
    from msg_nagios_bridge.spool import SpoolUnavailable
    with Spool(str(tmp_path / "spool.sqlite")) as spool:
        spool.put([msg(i) for i in range(3)])
        spool.give_back([entry.entry_id for entry in spool.take(3)])      # a connection lost
        real_read, failed = spool._read, []

        def read_failing_once(what, sql, args=(), db=None):
            if not failed:
                failed.append(what)
                raise SpoolUnavailable("disk I/O error")
            return real_read(what, sql, args, db)

        monkeypatch.setattr(spool, "_read", read_failing_once)
        with pytest.raises(SpoolUnavailable):
            spool.take(10)
        assert len(spool.take(10)) == 3


def test_take_does_not_wait_for_a_write_in_progress(tmp_path):
    """The thread that takes (the Nagios writer) must not wait while another thread's put
    holds the write lock through its commit and fsync: take reads through its own connection
    the last commit, and what commits later is taken next time."""
    with Spool(str(tmp_path / "spool.sqlite")) as spool:
        spool.put([msg(i) for i in range(3)])
        taken = []
        with spool._lock:                         # a put in the middle of its commit
            spool._db.execute("BEGIN IMMEDIATE")
            spool._db.execute("INSERT INTO messages (message_id, destination, headers, body, size,"
                              " enqueued_at) VALUES ('uncommitted', 'd', '{}', x'00', 1, 0)")
            taker = threading.Thread(target=lambda: taken.extend(spool.take(10)))
            taker.start()
            taker.join(5)
            finished = not taker.is_alive()
            spool._db.execute("COMMIT")
        taker.join(5)
        assert finished and [e.message.message_id for e in taken] == ["id-0", "id-1", "id-2"]
        assert [e.message.message_id for e in spool.take(10)] == ["uncommitted"]


def test_spool_wakes_its_watchers_on_put_and_on_room(tmp_path):
    from msg_nagios_bridge.wakeup import Wakeup
    with Spool(str(tmp_path / "s.sqlite")) as spool:
        to_take, room = Wakeup(), Wakeup()
        spool.wake_on_put(to_take)
        spool.wake_on_room(room)
        spool.put([msg(1)])
        assert to_take.wait(0) and not room.wait(0)
        entries = spool.take(10)
        spool.give_back([entries[0].entry_id])
        assert to_take.wait(0) and not room.wait(0)
        entries = spool.take(10)
        spool.done([entries[0].entry_id])
        assert room.wait(0) and not to_take.wait(0)
        spool.done([entries[0].entry_id])                 # already gone: no room freed, no wake-up
        assert not room.wait(0)


def test_a_commit_by_another_process_wakes_the_workers_of_this_one(tmp_path):
    """An operator tool's requeue is another connection's commit: nobody in the daemon is woken
    by it, so the daemon looks (notice_outside_changes) and wakes its workers."""
    from msg_nagios_bridge.wakeup import Wakeup
    path = str(tmp_path / "s.sqlite")
    with Spool(path) as daemon_side:
        to_take = Wakeup()
        daemon_side.wake_on_put(to_take)
        assert not daemon_side.notice_outside_changes()          # the first look only notes
        daemon_side.put([msg(1)])
        to_take.wait(0)
        assert not daemon_side.notice_outside_changes(), "its own commits are not outside changes"
        with Spool(path, exclusive=False) as tool_side:
            tool_side.put([msg(2)])
        assert daemon_side.notice_outside_changes()
        assert to_take.wait(0) and daemon_side.stats().depth == 2
        assert [entry.message.message_id for entry in daemon_side.take(10)] == ["id-1", "id-2"]


def test_a_put_of_rows_encoded_before_stores_what_a_put_of_the_messages_stores(tmp_path):
    """The intake encodes its messages once, to size its chunks, and hands put the rows: the
    spool then holds exactly what it holds when it encodes them itself (numbers included)."""
    batch = [Message(f"id-{n}", "/queue/q", {"route": "results", "site": "S", "é": "ü\"\\"}, b"body %d" % n)
             for n in range(3)]
    stored = []
    for name, encoded in (("plain", None), ("encoded", [encode(m) for m in batch])):
        with Spool(str(tmp_path / name / "s.sqlite")) as s:
            assert s.put(batch, numbered=True, encoded=encoded) == 3
            entries = s.take(10)
            stored.append([(e.message.message_id, e.message.destination, e.message.body,
                            {k: v for k, v in e.message.headers.items() if k != "route_seq"},
                            e.message.headers["route_seq"].rpartition(":")[2]) for e in entries])
            stored.append(s.stats().bytes)
    assert stored[0] == stored[2] and stored[1] == stored[3]       # the entries, the bytes held
    assert [number for *_, number in stored[2]] == ["1", "2", "3"]
    with Spool(str(tmp_path / "mismatch" / "s.sqlite")) as s, pytest.raises(ValueError):
        s.put(batch, encoded=[encode(batch[0])])


def test_the_spool_asks_for_nothing_newer_than_sqlite_3_34():
    """EL9 and Debian 11 ship SQLite 3.34.1 (with Python 3.9, which pyproject.toml allows):
    DELETE ... RETURNING (3.35), the ->> operators (3.38), unixepoch() (3.38) and STRICT
    tables (3.37) would fail there at the first use, with the results held in the spool."""
    import re
    from msg_nagios_bridge import spool as spool_module
    with open(spool_module.__file__, encoding="utf-8") as handle:
        source = handle.read()
    newer = re.findall(r"\bRETURNING\b|->>|\bunixepoch\(|\)\s*STRICT\b|\bSTRICT\s*[,;]", source)
    assert newer == [], newer
