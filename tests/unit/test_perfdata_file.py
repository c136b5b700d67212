"""The perfdata tailer on real files and a real spool: rotation, truncation, restarts."""
import dataclasses
import errno
import os
import threading
import time

import pytest

from msg_nagios_bridge import config
from msg_nagios_bridge.cores.nagios import result_line
from msg_nagios_bridge.daemon.health import Health
from msg_nagios_bridge.model import CheckResult
from msg_nagios_bridge.outbound.routing import Router
from msg_nagios_bridge.outbound.intake import Intake
from msg_nagios_bridge.cores.nagios.perfdata_file import PerfdataTail
from msg_nagios_bridge.spool import Spool
from tests.sandbox.ports import wait_until

SETTINGS = config.parse("""
site: {name: S}
brokers: {hosts: ["127.0.0.1:1"]}
spool: {directory: /tmp/unused}
sources: {ocsp_pipe: {enabled: false}, perfdata: {enabled: true}}
routes: [{name: r, destination: /queue/q, hard_only: false}]
""", "t.yaml")


def lines(start, count):
    return "".join(result_line.format_line(CheckResult(
        host="h", service=f"s{i}", state=0, output=f"out {i}", timestamp=1700000000)) + "\n"
        for i in range(start, start + count))


def services_in(spool):
    entries = spool.take(100_000)
    spool.give_back([e.entry_id for e in entries])
    return sorted(int(e.message.headers["metric"][1:]) for e in entries)


class Tail:
    """A running tailer that can be stopped and started again on the same spool."""

    def __init__(self, tmp_path):
        self.path = str(tmp_path / "perfdata")
        self.spool_path = str(tmp_path / "spool.sqlite")
        self.spool = None
        self.thread = None

    def start(self):
        self.spool = Spool(self.spool_path)
        self.stopping = threading.Event()
        intake = Intake("perfdata", Router(SETTINGS), self.spool, Health(), self.stopping, result_line.parse)
        self.thread = PerfdataTail(self.path, intake, Health(), poll_interval=0.02)
        self.thread.start()
        return self

    def stop(self):
        self.stopping.set()
        self.thread.join(5)
        self.spool.close()

    def wait_for(self, count, timeout=10):
        deadline = time.time() + timeout
        while self.spool.stats().depth < count and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)   # a little longer, so that extra (repeated) lines would show
        return services_in(self.spool)

    def append(self, text, path=None):
        with open(path or self.path, "a") as handle:
            handle.write(text)


@pytest.fixture
def tail(tmp_path):
    t = Tail(tmp_path)
    yield t
    if t.thread is not None and t.thread.is_alive():
        t.stop()


def test_reads_lines_as_they_are_appended_and_waits_for_a_complete_line(tail):
    tail.start()
    tail.append(lines(0, 3))
    assert tail.wait_for(3) == [0, 1, 2]
    partial = lines(3, 1)
    tail.append(partial[:20])
    time.sleep(0.2)
    assert services_in(tail.spool) == [0, 1, 2]
    tail.append(partial[20:])
    assert tail.wait_for(4) == [0, 1, 2, 3]


def test_restart_neither_loses_nor_repeats(tail):
    tail.start()
    tail.append(lines(0, 5))
    tail.wait_for(5)
    tail.stop()
    tail.append(lines(5, 5))             # written while the bridge is down
    tail.start()
    assert tail.wait_for(10) == list(range(10))


def test_rotation_by_rename_while_running(tail):
    tail.start()
    tail.append(lines(0, 5))
    tail.wait_for(5)
    tail.append(lines(5, 5))
    os.rename(tail.path, tail.path + ".old")   # what the processing command does
    tail.append(lines(10, 5))                  # Nagios opens a new file
    assert tail.wait_for(15) == list(range(15))


def test_rotation_while_stopped_reads_the_rest_of_the_old_file_first(tail):
    tail.start()
    tail.append(lines(0, 5))
    tail.wait_for(5)
    tail.stop()
    tail.append(lines(5, 5))
    os.rename(tail.path, tail.path + ".old")
    tail.append(lines(10, 5))
    tail.start()
    assert tail.wait_for(15) == list(range(15))


def test_two_rotations_while_stopped_read_old_and_new_from_the_start(tail):
    tail.start()
    tail.append(lines(0, 5))
    tail.wait_for(5)
    tail.stop()
    os.rename(tail.path, tail.path + ".old")        # first rotation: read to the end already
    tail.append(lines(5, 5))
    os.rename(tail.path, tail.path + ".old")        # second: replaces the first .old
    tail.append(lines(10, 5))
    tail.start()
    assert tail.wait_for(15) == list(range(15))


def test_truncation_starts_again_at_the_beginning(tail):
    tail.start()
    tail.append(lines(0, 5))
    tail.wait_for(5)
    with open(tail.path, "w") as handle:         # mode w, or truncated by hand
        handle.write(lines(5, 2))
    assert tail.wait_for(7) == list(range(7))


def test_file_appearing_later_and_garbage_lines(tail):
    tail.start()
    time.sleep(0.1)
    tail.append("garbage line\n" + lines(0, 2))
    assert tail.wait_for(2) == [0, 1]
    assert tail.spool.stats().dead_letters == 1


def test_a_backlog_bigger_than_the_spool_limit_is_taken_in_parts(tmp_path):
    """Regression (found by the fault suite, 'stalled broker, spool at its limit'): after a
    wait, the tailer read the whole backlog as one batch; a batch bigger than the spool's
    limit never fit, even in an empty spool, and the source stalled for good."""
    spool = Spool(str(tmp_path / "spool.sqlite"), max_messages=40)
    stopping = threading.Event()
    intake = Intake("perfdata", Router(SETTINGS), spool, Health(), stopping, result_line.parse)
    batch = [line.encode() for line in lines(0, 100).splitlines()]
    stored = threading.Thread(target=intake.spool_lines, args=(batch, ("perfdata", "end")))
    stored.start()
    seen = set()
    deadline = time.time() + 30
    while stored.is_alive() and time.time() < deadline:     # a publisher emptying the spool
        entries = spool.take(100)
        seen.update(int(e.message.headers["metric"][1:]) for e in entries)
        spool.done([e.entry_id for e in entries])
        time.sleep(0.05)
    stopping.set()
    stored.join(5)
    entries = spool.take(100)
    seen.update(int(e.message.headers["metric"][1:]) for e in entries)
    assert seen == set(range(100))
    assert spool.cursor("perfdata") == "end", "the read position is saved with the last part"
    spool.close()


def test_a_carriage_return_in_plugin_output_is_published_not_a_poison_pill(tail):
    """Regression (review): a CR inside a perfdata line's output or perfdata made the WLCG
    encoder raise outside the dead-letter path; the tailer thread died without moving its
    cursor, so every restart read the same line and died again."""
    tail.start()
    time.sleep(0.1)
    fields = lines(0, 1).rstrip("\n").split("\t")
    fields[11], fields[12] = "OK from a Windows agent\r", "a=1\rb=2"
    superscript = lines(1, 1).replace("\t0\tHARD\t", "\t\u00b2\tHARD\t")   # isdigit() but not int()
    tail.append("\t".join(fields) + "\n" + superscript + lines(2, 2))
    assert tail.wait_for(3) == [0, 2, 3]
    assert tail.thread.is_alive()
    assert tail.spool.stats().dead_letters == 1
    published = [e for e in tail.spool.take(10) if e.message.headers["metric"] == "s0"][0]
    assert b"summaryData: OK from a Windows agent \n" in published.message.body
    assert b"performanceData: a=1 b=2\n" in published.message.body


def test_a_line_that_fails_in_any_way_is_dead_lettered_and_the_batch_still_stored(tmp_path):
    """Whatever one line raises, the others are stored and the source goes on."""
    class Failing(Router):
        def messages(self, result, now_ms=0, sign=True):
            if result.service == "s1":
                raise KeyError("something unforeseen")
            return super().messages(result, now_ms, sign)

    with Spool(str(tmp_path / "spool.sqlite")) as spool:
        intake = Intake("perfdata", Failing(SETTINGS), spool, Health(), threading.Event(), result_line.parse)
        assert intake.spool_lines([line.encode() for line in lines(0, 3).splitlines()])
        assert services_in(spool) == [0, 2]
        [dead] = spool.dead_letters()
        assert "KeyError" in dead.reason and b"\ts1\t" in dead.entry.message.body


def step_until_idle(tailer):
    while tailer._step():
        pass


def test_lines_written_between_a_read_and_the_rotation_are_read_before_switching(tmp_path, monkeypatch):
    """Regression (review): the tailer read the file, then saw it rotated; lines Nagios wrote
    (closing the file) in between were never read, and the part line became a dead letter."""
    from msg_nagios_bridge.cores.nagios import perfdata_file
    path = str(tmp_path / "perfdata")
    spool = Spool(str(tmp_path / "spool.sqlite"))
    tailer = PerfdataTail(path, Intake("perfdata", Router(SETTINGS), spool, Health(), threading.Event(), result_line.parse),
                          Health(), 0.02)
    text = lines(0, 10)
    cut = text.index("\n", len(text) // 2) + 5            # Nagios's buffer flushed mid-line
    with open(path, "w") as handle:
        handle.write(text[:cut])
    tailer._resume()
    step_until_idle(tailer)
    real_stat, raced = perfdata_file._stat, []

    def stat_after_nagios_closed_and_rotated(name):
        if not raced:
            raced.append(True)
            with open(path, "a") as handle:
                handle.write(text[cut:])
            os.rename(path, path + ".old")
            open(path, "w").close()
        return real_stat(name)

    monkeypatch.setattr(perfdata_file, "_stat", stat_after_nagios_closed_and_rotated)
    for _ in range(20):
        tailer._step()
    assert services_in(spool) == list(range(10))
    assert spool.stats().dead_letters == 0
    spool.close()


def test_files_rotated_while_the_spool_is_full_are_all_read_later(tmp_path):
    """Regression (review): while the spool had no room the tailer waited, knowing only FILE
    and FILE.old; a second rotation meanwhile (mv -f over FILE.old) unlinked a file it had
    never opened, and its results were gone without a word."""
    path = tmp_path / "perfdata"
    spool = Spool(str(tmp_path / "spool.sqlite"), max_messages=40)
    stopping = threading.Event()
    tailer = PerfdataTail(str(path), Intake("perfdata", Router(SETTINGS), spool, Health(), stopping, result_line.parse),
                          Health(), poll_interval=0.02)
    path.write_text(lines(0, 40))
    tailer.start()
    try:
        deadline = time.time() + 10
        while spool.stats().depth < 40 and time.time() < deadline:
            time.sleep(0.02)
        for rotation in range(1, 5):                     # the spool is full: the tailer waits
            path.write_text(path.read_text() + lines(rotation * 100, 30))
            os.replace(path, str(path) + ".old")         # Nagios's mv -f
            path.write_text("")
            # The tailer looks about once a second: it must have the new file open before the
            # next rotation moves it away.
            new = os.stat(path)
            assert wait_until(lambda: (new.st_dev, new.st_ino) in {q for _, q in tailer.queued}, timeout=10)
        path.write_text(lines(900, 5))
        seen = set()
        deadline = time.time() + 30
        expected = set(range(40)) | {r * 100 + i for r in range(1, 5) for i in range(30)} | set(range(900, 905))
        while seen != expected and time.time() < deadline:   # a publisher emptying the spool
            entries = spool.take(100)
            seen.update(int(e.message.headers["metric"][1:]) for e in entries)
            spool.done([e.entry_id for e in entries])
            time.sleep(0.05)
        assert seen == expected, sorted(expected - seen)[:10]
    finally:
        stopping.set()
        tailer.join(5)
        spool.close()


def test_a_restart_after_a_truncation_does_not_publish_the_file_again(tmp_path):
    """Regression (review): a truncation kept the hash of the old first KiB, so after a restart
    the saved position no longer matched and .old and the whole file were read again."""
    path = str(tmp_path / "perfdata")
    spool_path = str(tmp_path / "spool.sqlite")

    def tailer(spool):
        return PerfdataTail(path, Intake("perfdata", Router(SETTINGS), spool, Health(), threading.Event(), result_line.parse),
                            Health(), 0.02)

    def publish(spool):
        entries = spool.take(1000)
        spool.done([e.entry_id for e in entries])
        return len(entries)

    with open(path + ".old", "w") as handle:
        handle.write(lines(100, 20))                    # an earlier file, long published
    with open(path, "w") as handle:
        handle.write(lines(0, 60))
    spool = Spool(spool_path)
    first = tailer(spool)
    first._resume()
    step_until_idle(first)
    assert publish(spool) == 60
    os.truncate(path, 0)
    first._step()
    with open(path, "a") as handle:
        handle.write(lines(200, 60))
    step_until_idle(first)
    assert publish(spool) == 60
    first._close()
    spool.close()
    spool = Spool(spool_path)
    second = tailer(spool)
    second._resume()
    step_until_idle(second)
    assert publish(spool) == 0
    second._close()
    spool.close()


# -- version-2 records: output, perfdata and long output each on a line of their own -----------

def records(start, count, output="out\twith a tab"):
    return "".join(result_line.format_record(CheckResult(
        host="h", service=f"s{i}", state=0, output=f"{output} {i}", perfdata="a=1\tb=2",
        long_output="long\ttext\nsecond", timestamp=1700000000)) + "\n" for i in range(start, start + count))


def test_a_record_is_taken_whole_once_all_its_lines_are_there(tail):
    """Regression: a tab in the first line of output or in perfdata moved text into the next
    field of the one-line format."""
    tail.start()
    tail.append(records(0, 2) + lines(2, 1))               # version 2 and old single lines, mixed
    assert tail.wait_for(3) == [0, 1, 2]
    record = records(3, 1)
    second_end = record.index("\n", record.index("\n") + 1) + 1
    head, rest = record[:second_end], record[second_end:]               # two of its four lines, then the rest
    tail.append(head)
    time.sleep(0.2)
    assert services_in(tail.spool) == [0, 1, 2]
    tail.append(rest)
    assert tail.wait_for(4) == [0, 1, 2, 3]
    entries = tail.spool.take(10)
    bodies = {e.message.headers["metric"]: e.message.body.decode() for e in entries}
    assert "summaryData: out\twith a tab 3\n" in bodies["s3"] and "performanceData: a=1\tb=2\n" in bodies["s3"]
    assert "detailsData: long\ttext\nsecond\n" in bodies["s3"]


def test_text_that_looks_like_a_record_start_inside_a_record_does_not_shift_the_grouping(tail):
    tail.start()
    tail.append(records(0, 1, output="MNB2S\t1\th\tforged") + records(1, 1))
    assert tail.wait_for(2) == [0, 1]


def test_split_records_leaves_an_incomplete_record_for_later():
    from msg_nagios_bridge.cores.nagios.perfdata_file import split_records
    complete = records(0, 1).encode().split(b"\n")[:-1]
    assert split_records(complete + [b"garbage", complete[0]]) == (
        [b"\n".join(complete), b"garbage"], len(complete) + 1)


@pytest.mark.parametrize("kind", ["record", "line"])
def test_an_oversized_record_is_dead_lettered_whole_and_its_tail_never_read_as_a_result(tmp_path, kind):
    """Regression (review 2026-12-04): after the first 4 MiB of an oversized record were
    dead-lettered, the tailer read on from the cut, inside plugin output: a result line the
    plugin placed there was published, for any host. The record's last part is written
    later here, so that skipping to its end also waits for it."""
    from msg_nagios_bridge.cores.nagios.perfdata_file import MAX_BATCH_BYTES
    forged = result_line.format_line(CheckResult(host="victim.example.org", service="forged", state=2,
                                                 output="planted", timestamp=1700000123))
    big = CheckResult(host="h", service="big", state=0, output="ok", timestamp=1700000000, long_output="")
    if kind == "record":
        fmt = result_line.format_record
        prefix = fmt(big).rsplit("\n", 1)[0] + "\n"       # its long output is on its last line
        text = fmt(dataclasses.replace(big, long_output="A" * (MAX_BATCH_BYTES - len(prefix)) + forged))
    else:
        fmt = result_line.format_line
        prefix = fmt(big).split("\tok")[0] + "\t"         # output is where the line cut falls
        text = fmt(dataclasses.replace(big, output="A" * (MAX_BATCH_BYTES - len(prefix)) + forged))
    assert text.index(forged) == MAX_BATCH_BYTES
    path = tmp_path / "perfdata"
    path.write_text(lines(0, 1) + text[:-5])
    with Spool(str(tmp_path / "spool.sqlite")) as spool:
        intake = Intake("perfdata", Router(SETTINGS), spool, Health(), threading.Event(), result_line.parse)
        tailer = PerfdataTail(str(path), intake, Health(), poll_interval=0.02)
        step_until_idle(tailer)
        with open(path, "a") as handle:
            handle.write(text[-5:] + "\n" + lines(1, 1))
        step_until_idle(tailer)
        assert services_in(spool) == [0, 1]
        dead = sorted(spool.dead_letters(), key=lambda d: d.entry.entry_id)
        assert [int(d.entry.message.headers["length"]) for d in dead] == [MAX_BATCH_BYTES, len(text) + 1 - MAX_BATCH_BYTES]
        assert "the rest of a line or record longer than" in dead[1].reason
        tailer._close()


@pytest.mark.parametrize("kind", ["record", "line"])
def test_a_backlog_is_read_a_mebibyte_at_a_time_and_a_longer_record_still_whole(tmp_path, monkeypatch, kind):
    """A read takes READ_BYTES (a backlog is held a read at a time: less memory at the peak); a
    line or record longer than that, up to MAX_BATCH_BYTES, is read again whole, not dead-lettered."""
    from msg_nagios_bridge.cores.nagios import perfdata_file
    reads = []
    real_pread = os.pread
    monkeypatch.setattr(perfdata_file.os, "pread", lambda fd, size, offset: reads.append(size) or
                        real_pread(fd, size, offset))
    long = CheckResult(host="h", service="s7", state=0, output="ok", timestamp=1700000000,
                       long_output="A" * (perfdata_file.READ_BYTES + 1000))
    fmt = result_line.format_record if kind == "record" else result_line.format_line
    path = tmp_path / "perfdata"
    path.write_text(lines(0, 7) + fmt(long) + "\n" + lines(8, 6000))
    with Spool(str(tmp_path / "spool.sqlite")) as spool:
        intake = Intake("perfdata", Router(SETTINGS), spool, Health(), threading.Event(), result_line.parse)
        tailer = PerfdataTail(str(path), intake, Health(), poll_interval=0.02)
        step_until_idle(tailer)
        assert services_in(spool) == list(range(6008))
        assert spool.dead_letters() == []
        tailer._close()
    assert [size for size in reads if size > perfdata_file.READ_BYTES] == [perfdata_file.MAX_BATCH_BYTES]


def test_refused_lines_are_kept_in_the_transaction_of_their_batch(tmp_path):
    """Regression (review 2026-12-04): each refused line was kept in a transaction (an fsync)
    of its own: a perfdata file in Nagios's default template, or garbage on the OCSP pipe,
    went in at the fsync rate (about 2,500 lines/s here) and the source fell behind."""
    bad = [b"[SERVICEPERFDATA]\t1700000000\th\ts%d\t0.1\t0.0\tOK\ttime=1s" % i for i in range(1200)]
    good = [line.encode() for line in lines(0, 3).splitlines()]
    with Spool(str(tmp_path / "spool.sqlite")) as spool:
        writes = []
        real_write = spool._write
        spool._write = lambda what, work: (writes.append(what), real_write(what, work))[1]
        intake = Intake("perfdata", Router(SETTINGS), spool, Health(), threading.Event(), result_line.parse)
        assert intake.spool_lines(bad[:600] + good + bad[600:], cursor=("perfdata:x", "42"))
        assert writes == ["store a batch"] * 3            # one per piece of 500 lines (PIECE_LINES)
        assert services_in(spool) == [0, 1, 2] and spool.stats().dead_letters == 1200
        assert spool.cursors("perfdata:") == {"perfdata:x": "42"}
        assert intake.spool_lines(bad[:10])                                 # read again after a crash
        assert spool.stats().dead_letters == 1200                           # kept once


def test_a_file_truncated_and_written_past_the_position_before_the_next_look_is_read_from_its_start(tmp_path):
    """Review 2026-12-06: only a file shorter than the read position counted as truncated, so
    one truncated and refilled past it between two looks (Nagios restarted with mode w while the
    tailer waited for room in the spool) lost its first lines and was read from mid-line."""
    path = str(tmp_path / "perfdata")
    with open(path, "w") as f:
        f.write(lines(0, 10))
    with Spool(str(tmp_path / "s.sqlite")) as spool:
        health = Health()
        tail = PerfdataTail(path, Intake("perfdata", Router(SETTINGS), spool, health, threading.Event(),
                                         result_line.parse), health, 0.02)
        tail._resume()
        step_until_idle(tail)
        with open(path, "w") as f:
            f.write(lines(100, 20))
        step_until_idle(tail)
        tail._close()
        assert services_in(spool) == list(range(10)) + list(range(100, 120))
        assert spool.stats().dead_letters == 0
        assert health.counter("perfdata_truncations") == 1


class _Lagging:
    """A tailer on a spool of 20 messages with a drain that stands for the publisher: what a
    long broker outage looks like to the perfdata source."""

    def __init__(self, tmp_path):
        self.path = str(tmp_path / "perfdata")
        self.held = tmp_path / "perfdata-held"
        self.spool = Spool(str(tmp_path / "spool.sqlite"), max_messages=20)
        self.seen = set()
        self.tail = self.stop = None

    def drain(self):
        entries = self.spool.take(1000)
        self.seen.update(int(entry.message.headers["metric"][1:]) for entry in entries)
        self.spool.done([entry.entry_id for entry in entries])

    def start(self):
        self.stop = threading.Event()
        self.tail = PerfdataTail(self.path, Intake("perfdata", Router(SETTINGS), self.spool, Health(), self.stop,
                                                   result_line.parse), Health(), 0.02)
        self.tail.start()

    def end(self):
        self.stop.set()
        self.tail.intake.wake()
        self.tail.join(5)
        assert not self.tail.is_alive()

    def fill_and_rotate_twice(self):
        """Lines 0-9 published; 10-39 written, 20 of them spooled (full); then two rotations,
        of 30 lines each (100-129, 200-229)."""
        with open(self.path, "w") as handle:
            handle.write(lines(0, 10))
        self.start()
        assert wait_until(lambda: self.spool.stats().depth == 10, timeout=5)
        self.drain()                                    # published: the cursor is after line 9
        with open(self.path, "a") as handle:            # the broker away: the spool fills up
            handle.write(lines(10, 30))
        assert wait_until(lambda: self.spool.stats().depth == 20, timeout=5)
        for rotation in (1, 2):
            os.rename(self.path, self.path + ".old")
            with open(self.path, "w") as handle:
                handle.write(lines(100 * rotation, 30))
            assert wait_until(lambda: len(self.tail.queued) == rotation, timeout=5)   # seen while waiting

    def read_all(self):
        expected = set(range(40)) | set(range(100, 130)) | set(range(200, 230))
        assert wait_until(lambda: self.drain() or self.seen >= expected, timeout=15), sorted(expected - self.seen)
        assert self.seen == expected


def test_rotated_files_waiting_for_a_full_spool_survive_a_restart_of_the_bridge(tmp_path):
    """Review 2026-12-06: while the spool was full, the files Nagios rotated were held only by
    their open descriptors; after a second rotation (mv -f over FILE.old) a reload or restart
    of the bridge closed them, and their unread lines were lost. They are now copied into the
    spool's directory while the tailer waits, and found there at start; a copy goes once read."""
    lagging = _Lagging(tmp_path)
    lagging.fill_and_rotate_twice()
    assert len(list(lagging.held.rglob("*-*-*"))) == 2    # the first file (unlinked now) and the second
    lagging.end()                                         # a restart: the descriptors are gone
    lagging.start()
    lagging.read_all()
    assert wait_until(lambda: not any(path.is_file() for path in lagging.held.rglob("*")), timeout=5), \
        "each copy goes once its file is read"
    lagging.end()
    lagging.spool.close()


def test_a_rotated_file_that_cannot_be_copied_is_still_read_while_the_bridge_runs(tmp_path, monkeypatch, caplog):
    """Disk full when copying: a warning, no partial copy left, and the descriptors still
    hold the files, as before copies were made."""
    def no_room(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "sendfile", no_room)
    lagging = _Lagging(tmp_path)
    lagging.fill_and_rotate_twice()
    assert not lagging.tail.holding and "cannot copy rotated files" in caplog.text
    assert not any(path.is_file() for path in lagging.held.rglob("*"))
    lagging.read_all()
    lagging.end()
    lagging.spool.close()
