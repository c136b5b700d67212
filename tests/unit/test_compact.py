"""The compact name sets of inbound/compact.py: exact for what was put in, small, reloadable."""
import os
import random
import subprocess
import sys
import tracemalloc
from array import array

import pytest

from msg_nagios_bridge.cores.nagios import objects_cache
from msg_nagios_bridge.inbound import compact
from msg_nagios_bridge.inbound.compact import KnownObjects, TimedNames, object_text
from msg_nagios_bridge.spool import Spool


def grid(hosts, services):
    return [(f"ce{h:04d}.example.org", f"org.sam.svc{s:03d}") for h in range(hosts) for s in range(services)]


def test_known_objects_hold_every_object_put_in_and_refuse_the_others():
    objects = grid(1000, 150) + [(f"ce{h:04d}.example.org", None) for h in range(1000)]
    known = KnownObjects(objects)            # 151,000: more than one CHUNK, so chunks are merged
    assert len(known) == len(objects) > compact.CHUNK
    assert all(key in known for key in objects)
    absent = ([(f"ce{h:04d}.example.org", "org.sam.svc150") for h in range(1000)]
              + [(f"ce{h:04d}.example.org", None) for h in range(1000, 2000)]
              + [("192.0.2.1", "org.sam.svc001"), ("ce0001.example.org", ""), ("", None)])
    assert set(absent).isdisjoint(objects)
    assert not any(key in known for key in absent)


def test_a_host_result_is_not_a_service_and_names_do_not_run_into_each_other():
    known = KnownObjects([("h", None), ("a\tb", "c"), ("H1:h", None)])
    assert ("h", None) in known and ("h", "") not in known
    assert ("a", "b\tc") not in known and ("a\tb", "c") in known
    assert ("H1:h", None) in known and ("h", None) in known and ("1:h", None) not in known
    assert object_text(("ab", "c")) != object_text(("a", "bc"))
    for odd in ("h", ("h",), ("h", None, 1), (1, None), ("h", 2), None):
        assert odd not in known


def test_known_objects_of_keeps_none_and_compact_sets_and_converts_the_rest():
    assert KnownObjects.of(None) is None
    known = KnownObjects([("h", "s")])
    assert KnownObjects.of(known) is known
    converted = KnownObjects.of(frozenset({("h", "s")}))
    assert isinstance(converted, KnownObjects) and ("h", "s") in converted and len(converted) == 1
    empty = KnownObjects.of(frozenset())
    assert len(empty) == 0 and ("h", "s") not in empty, "fail safe: an empty list refuses everything"


def test_half_a_million_objects_take_about_8_bytes_each():
    objects = grid(5000, 100)
    known = KnownObjects(objects)
    assert len(known) == 500_000
    # 4.0 MB of hashes, and what the array over-allocates as it grows (frozenset: 110 MB)
    assert known._hashes.buffer_info()[1] * known._hashes.itemsize < 4.3e6
    assert objects[0] in known and objects[-1] in known and ("ce5000.example.org", "org.sam.svc000") not in known


def test_building_known_objects_holds_little_more_than_the_hashes():
    objects = grid(600, 100)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        known = KnownObjects(objects)
        held, peak = (size - before for size in tracemalloc.get_traced_memory())
    finally:
        tracemalloc.stop()
    assert len(known) == 60_000
    assert held < 0.55e6, f"{held / 1e6:.1f} MB for 60,000 objects"
    # A chunk's list at most (0.7 MB): a chunk of 65,536 held 2.6 MB, and at 500,000 objects
    # the chunks merged into a new array held 4 MB more.
    assert peak - held < 1.2e6, f"{(peak - held) / 1e6:.1f} MB more at the peak of building"


def test_read_known_follows_objects_cache_when_nagios_rewrites_it(tmp_path):
    path = tmp_path / "objects.cache"
    text = "".join(f"define service {{\n\thost_name\th{h}\n\tservice_description\ts {h}\n\t}}\n\n"
                   for h in range(3)) + "define host {\n\thost_name\th0\n\taddress\t192.0.2.1\n\t}\n"
    path.write_text(text)
    known = objects_cache.read_known(str(path))
    assert len(known) == len(objects_cache.parse(text)) == 4
    assert all(key in known for key in objects_cache.parse(text))
    assert ("192.0.2.1", None) not in known and ("h3", "s 3") not in known
    path.write_text(text.replace("h2", "h9"))
    again = objects_cache.read_known(str(path))
    assert ("h9", "s 2") in again and ("h2", "s 2") not in again


def test_lf_only_like_nagios_a_line_separator_inside_a_name_stays_in_it(tmp_path):
    path = tmp_path / "objects.cache"
    path.write_bytes("define service {\r\n\thost_name\th\u2028x\r\n\tservice_description\ts\x85y\r\n\t}\r\n"
                     .encode("utf-8"))
    assert objects_cache.read(str(path)) == {("h\u2028x", "s\x85y")}
    known = objects_cache.read_known(str(path))
    assert ("h\u2028x", "s\x85y") in known and len(known) == 1


@pytest.mark.parametrize("seed", ["0", "1234"])
def test_with_a_fixed_pythonhashseed_the_hash_is_keyed_with_a_secret_of_its_own(seed):
    """Regression (review 2026-12-04): only PYTHONHASHSEED=0 was seen as a known key; with
    1234, sys.flags.hash_randomization is 1 and str's hash, keyed with 1234, was used."""
    code = ("import sys; from msg_nagios_bridge.inbound.compact import Hasher, KnownObjects, _siphash;"
            "h = Hasher(); assert h._hash is not _siphash;"
            "k = KnownObjects([('h', 's'), ('h', None)]);"
            "assert ('h', 's') in k and ('h', None) in k and ('h', 't') not in k; print('ok')")
    env = dict(os.environ, PYTHONHASHSEED=seed)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
    assert compact.Hasher()._hash is compact._siphash or not sys.flags.hash_randomization


def test_timed_names_keep_the_latest_time_across_merges_and_forget_by_time():
    names = TimedNames()
    first = [f"name-{i}" for i in range(compact.MERGE_AT + 10)]
    names.set(first[:100], 10.0)
    assert len(names) == 100 and names.get("name-5") == 10.0 and names.get("name-100") is None
    names.set(first, 20.0)                         # crosses MERGE_AT: merged into the arrays
    assert len(names) == len(first) and not names._new
    assert names.get("name-5") == 20.0 and names.get(first[-1]) == 20.0
    names.set(["name-5"], 30.0)                    # in the arrays: updated in place
    names.set(["late"], 30.0)                      # new: in the dict until the next merge
    assert names.get("name-5") == 30.0 and names.get("late") == 30.0 and len(names) == len(first) + 1
    assert names.time_counts() == {20.0: len(first) - 1, 30.0: 2}
    assert names.forget_before(30.0) == len(first) - 1
    assert len(names) == 2 and names.get("name-6") is None and names.get("late") == 30.0


def test_timed_names_load_rows_from_the_spool_a_chunk_at_a_time(tmp_path):
    with Spool(str(tmp_path / "inbound.sqlite")) as spool:
        spool.save_marks("echo", [f"old-{i}" for i in range(50)], 100.0)
        spool.save_marks("echo", [f"new-{i}" for i in range(250)], 200.0)
        spool.save_marks("other", ["x"], 300.0)
        chunks = list(spool.each_mark("echo", since=150.0, chunk=100))
        assert [len(rows) for rows in chunks] == [100, 100, 50]
        keys = [key for rows in chunks for key, _ in rows]
        assert keys == sorted(keys) and set(keys) == {f"new-{i}" for i in range(250)}
        assert list(spool.each_mark("echo", since=0, chunk=300))[0] and \
            sum(len(rows) for rows in spool.each_mark("echo", since=0, chunk=7)) == 300
        names = TimedNames()
        for rows in spool.each_mark("echo", since=0, chunk=64):
            names.load(rows)
        assert len(names) == 300 and names.get("old-3") == 100.0 and names.get("new-249") == 200.0
        assert names.get("x") is None


def test_timed_names_keep_whole_seconds_in_four_bytes():
    names = TimedNames()
    names.set(["a"], 1_700_000_000.9)
    names.set([f"n{i}" for i in range(compact.MERGE_AT)], 1_700_000_001.2)
    assert names.get("a") == 1_700_000_000 and names.get("n1") == 1_700_000_001
    assert names._times.itemsize == 4 and names._hashes.itemsize == 8
    assert names.forget_before(1_700_000_001) == 1 and names.get("a") is None and len(names) == compact.MERGE_AT


def test_merging_in_place_gives_the_sorted_merge_with_each_time_beside_its_value():
    rng = random.Random(7)
    for old_count, new_count in ((0, 5), (5, 0), (1000, 1), (1, 1000), (3000, 3000), (20, 200_000)):
        old = sorted(rng.getrandbits(64) for _ in range(old_count))
        new = sorted(rng.getrandbits(64) for _ in range(new_count))
        if old and new:
            new = sorted(new + [old[0]])    # KnownObjects may hold a value twice
        values, times = array("Q", old), array("I", (v % 1000 for v in old))
        compact.merge_in_place(values, new, times, [v % 1000 for v in new])
        assert list(values) == sorted(old + new)
        assert list(times) == [v % 1000 for v in values]
    edges = array("Q", [5, 6, 7])
    compact.merge_in_place(edges, [1, 2])           # all below: the old values move once
    compact.merge_in_place(edges, [8, 9])           # all above: nothing moves
    assert list(edges) == [1, 2, 5, 6, 7, 8, 9]


def test_a_merge_into_timed_names_holds_no_second_copy_of_them():
    names = TimedNames()
    names.load((f"S{i}:h{i}", 1.7e9) for i in range(200_000))
    added = [f"new-{i}" for i in range(compact.MERGE_AT)]
    tracemalloc.start()
    try:
        # Copied while traced: tracemalloc counts a block it did not see allocated as new
        # memory when it is reallocated.
        names._hashes, names._times = array("Q", names._hashes), array("I", names._times)
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        names.set(added, 1.8e9)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert not names._new and len(names) == 200_000 + len(added)
    assert names.get("new-9") == 1_800_000_000 and names.get("S7:h7") == 1_700_000_000
    # The arrays take 2.4 MB; a merge that built merged copies held both.
    assert peak < 1.5e6, f"{peak / 1e6:.1f} MB more at the peak of a merge"


def test_times_beside_known_objects_keep_only_known_names_in_four_bytes_each():
    known = KnownObjects([("h", "s"), ("h", None), ("h2", "s")])
    timed = compact.TimedKnownObjects(known)
    assert timed._times.itemsize == 4 and len(timed._times) == len(known) == 3 and len(timed) == 0
    timed.set([object_text(("h", "s")), object_text(("other", "s"))], 1_700_000_000.7)
    assert timed.get(object_text(("h", "s"))) == 1_700_000_000 and len(timed) == 1
    assert timed.get(object_text(("other", "s"))) is None, "not a known object: not kept"
    assert timed.get(object_text(("h", None))) is None, "known, never set"
    assert timed.time_of(object_text(("h", None))) == 0 and timed.time_of(object_text(("other", "s"))) == -1
    names = TimedNames()                               # TimedNames keeps any name: never -1
    names.set(["x"], 5.0)
    assert names.time_of("x") == 5 and names.time_of("y") == 0
    timed.set([object_text(("h", "s")), object_text(("h", None))], 1_700_000_005)
    assert len(timed) == 2 and timed.time_counts() == {1_700_000_005: 2}
    timed.set([object_text(("h2", "s"))], 0.5)            # 0 means none: a time in 1970's first second is 1
    assert timed.get(object_text(("h2", "s"))) == 1 and len(timed) == 3
    assert timed.forget_before(1_700_000_005) == 1 and len(timed) == 2
    assert timed.get(object_text(("h2", "s"))) is None and timed.forget_before(10) == 0
    timed.load([(object_text(("h2", "s")), 1_700_000_009.0)])
    assert sorted(when for _, when in timed.items()) == [1_700_000_005, 1_700_000_005, 1_700_000_009]


def test_timed_names_move_into_times_beside_known_objects_by_their_hashes():
    names = TimedNames()
    names.set([object_text(("h", "s")), object_text(("gone", "s"))], 100.0)
    names.set([f"n{i}" for i in range(compact.MERGE_AT)], 50.0)       # some in the arrays, some in the dict
    names.set([object_text(("h", None))], 200.0)
    known = KnownObjects([("h", "s"), ("h", None), ("new", "s")])
    timed = compact.TimedKnownObjects(known)
    timed.set_hashed(names.items())
    assert timed.get(object_text(("h", "s"))) == 100 and timed.get(object_text(("h", None))) == 200
    assert len(timed) == 2 and timed.get(object_text(("new", "s"))) is None
    back = TimedNames()
    back.set_hashed(timed.items())
    assert len(back) == 2 and back.get(object_text(("h", None))) == 200
