"""The Nagios writers on real FIFOs and directories: no FIFO, no reader, atomic writes, refusals."""
import dataclasses
import errno
import json
import logging
import os
import threading
import time

import pytest

from msg_nagios_bridge import config
from msg_nagios_bridge.cores.nagios.core import may_be_echo
from msg_nagios_bridge.inbound.echo import EchoGuard
from msg_nagios_bridge.cores.nagios import checkresult_file, nagios_command
from msg_nagios_bridge.daemon.health import Health
from msg_nagios_bridge.model import CheckResult, Message, SpooledResults, result_from_dict, result_to_dict
from msg_nagios_bridge.cores.nagios.checkresults_dir import write_results
from msg_nagios_bridge.cores.nagios.command_file import NagiosUnavailable, _batches, write_lines
from msg_nagios_bridge.cores.nagios import checkresults_dir, command_file
from msg_nagios_bridge.cores.nagios import writer as writer_module
from msg_nagios_bridge.cores.nagios.checkresults_dir import CheckResultsDirDelivery
from msg_nagios_bridge.cores.nagios.command_file import CONFIRM_AFTER, CommandFileDelivery, nagios_pid_alive
from msg_nagios_bridge.cores.nagios.delivery import Prepared
from msg_nagios_bridge.cores.nagios.writer import NagiosWriter
from msg_nagios_bridge.daemon.health import RateLimitedLog
from msg_nagios_bridge.wakeup import Wakeup
from msg_nagios_bridge.spool import Spool
from tests.sandbox.ports import wait_until

RESULT = CheckResult(host="h1", service="s1", state=1, output="warn", long_output="a\nb", timestamp=1700000000)


class FifoReader(threading.Thread):
    """Reads a FIFO like Nagios does, recording every read() separately."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.reads, self.running = [], True

    def run(self):
        while self.running:
            try:
                data = os.read(self.fd, 65536)
                if data:
                    self.reads.append(data)
            except BlockingIOError:
                time.sleep(0.005)

    def text(self):
        return b"".join(self.reads).decode()

    def close(self):
        """Stop, keeping what is still in the pipe."""
        self.running = False
        self.join()
        try:
            while data := os.read(self.fd, 65536):
                self.reads.append(data)
        except BlockingIOError:
            pass
        os.close(self.fd)


def test_no_fifo_and_no_reader_are_told_apart(tmp_path):
    path = str(tmp_path / "nagios.cmd")
    with pytest.raises(NagiosUnavailable, match="no command file"):
        write_lines(path, ["x\n"])
    os.mkfifo(path)
    with pytest.raises(NagiosUnavailable, match="nobody reads"):
        write_lines(path, ["x\n"])


def test_refuses_a_regular_file_and_a_symlink(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(NagiosUnavailable, match="not a FIFO"):
        write_lines(str(plain), ["x\n"])
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(tmp_path / "fifo")
    with pytest.raises(NagiosUnavailable, match="symlink"):
        write_lines(str(tmp_path / "link"), ["x\n"])


def test_writes_are_whole_lines_and_at_most_pipe_buf(tmp_path):
    path = tmp_path / "nagios.cmd"
    os.mkfifo(path)
    reader = FifoReader(path)
    reader.start()
    lines = [nagios_command.command_line(
        CheckResult(host="h", service=f"s{i}", state=0, output="x" * (i % 300), timestamp=1), 1) for i in range(400)]
    try:
        write_lines(str(path), lines)
        assert wait_until(lambda: reader.text() == "".join(lines), timeout=10)
    finally:
        reader.close()
    assert reader.text() == "".join(lines)
    assert all(len(batch) <= nagios_command.PIPE_BUF and batch.endswith(b"\n") for batch, _ in _batches(lines))


def test_a_full_pipe_times_out_clearly(tmp_path):
    path = tmp_path / "nagios.cmd"
    os.mkfifo(path)
    keep = os.open(path, os.O_RDONLY | os.O_NONBLOCK)      # a reader that never reads
    line = nagios_command.command_line(RESULT, 1)
    try:
        with pytest.raises(NagiosUnavailable, match="stayed full"):
            write_lines(str(path), [line] * 2000, timeout=0.3)
    finally:
        os.close(keep)


def test_check_result_file_then_ok_file(tmp_path):
    path = write_results(str(tmp_path), [RESULT])
    name = os.path.basename(path)
    assert name.startswith("c") and len(name) == 7
    assert os.path.exists(path + ".ok")
    text = open(path).read()
    (entry,) = checkresult_file.parse(text)
    assert entry["host_name"] == "h1" and entry["return_code"] == "1"
    assert "file_time" not in text, "Nagios would drop the file unread once that is an hour old"
    with pytest.raises(NagiosUnavailable, match="does not exist"):
        write_results(str(tmp_path / "missing"), [RESULT])


def test_lock_file_check(tmp_path):
    lock = tmp_path / "nagios.lock"
    assert "cannot read" in nagios_pid_alive(str(lock))
    lock.write_text(f"{os.getpid()}\n")
    assert nagios_pid_alive(str(lock)) is None
    lock.write_text("999999999\n")
    assert "not running" in nagios_pid_alive(str(lock))


def writer_settings(tmp_path, **changes):
    settings = config.parse(f"""
site: {{name: S}}
brokers: {{hosts: ["127.0.0.1:1"]}}
spool: {{directory: {tmp_path}}}
sources: {{ocsp_pipe: {{enabled: false}}}}
inbound: {{enabled: true, subscriptions: [{{destination: /queue/q}}], policy: {{rules: [{{senders: ['*']}}]}},
          command_file: {tmp_path}/nagios.cmd, check_result_path: {tmp_path}}}
""", "w.yaml").inbound
    return settings


def spooled(result, key):
    return Message(message_id=key, destination="nagios", headers={}, body=SpooledResults().encode(result))


def test_writer_waits_for_nagios_then_delivers_and_dead_letters_the_unwritable(tmp_path):
    spool = Spool(str(tmp_path / "inbound.sqlite"))
    bad = result_to_dict(RESULT)
    bad["host"] = "bad;host"          # edited into the spool by hand: refused on its own, not blocking the batch
    spool.put([spooled(RESULT, "a"), Message("b", "nagios", {}, json.dumps(bad).encode())])
    echo = EchoGuard(may_be_echo=may_be_echo)
    writer = NagiosWriter(writer_settings(tmp_path), spool, Health(), echo)
    writer.start()
    try:
        # No FIFO yet: nothing lost, nothing written; the unwritable one is dead-lettered.
        assert wait_until(lambda: spool.stats().dead_letters == 1, timeout=10)
        assert spool.stats().depth == 1
        os.mkfifo(tmp_path / "nagios.cmd")
        reader = FifoReader(tmp_path / "nagios.cmd")
        reader.start()
        assert wait_until(lambda: spool.stats().depth == 0, timeout=15)
        reader.close()
    finally:
        writer.stop()
        writer.join(5)
    assert reader.text() == nagios_command.command_line(RESULT, 1700000000)
    assert echo(CheckResult(host="h1", service="s1", state=1, attributes={"check_type": "PASSIVE"}))
    assert not echo(CheckResult(host="h1", service="s1", state=1, attributes={"check_type": "ACTIVE"}))
    assert spool.dead_letters()[0].reason.startswith("cannot be written to Nagios")
    spool.close()


def test_the_writer_writes_what_the_spool_holds_remembered_by_the_subscriber_or_not(tmp_path):
    """The writer reads back undecoded a result the subscriber just stored (SpooledResults):
    the line is the same; and a result the subscriber encoded whose id the spool already held
    (a duplicate it dropped) is never what gets written for that id."""
    spool = Spool(str(tmp_path / "inbound.sqlite"))
    shared = SpooledResults(keep=16)
    held = dataclasses.replace(RESULT, output="held first")
    spool.put([spooled(held, "a")])
    spool.put([Message("a", "nagios", {}, shared.encode(dataclasses.replace(RESULT, output="dropped copy")))])
    remembered = dataclasses.replace(RESULT, host="h2", output="remembered")
    body = shared.encode(remembered)
    spool.put([Message("b", "nagios", {}, body)])
    os.mkfifo(tmp_path / "nagios.cmd")
    reader = FifoReader(tmp_path / "nagios.cmd")
    reader.start()
    writer = NagiosWriter(writer_settings(tmp_path), spool, Health(), EchoGuard(), shared)
    writer.start()
    try:
        assert wait_until(lambda: reader.text().count("\n") == 2, timeout=10)
    finally:
        reader.close()
        writer.stop()
        writer.join(10)
        spool.close()
    assert reader.text() == (nagios_command.command_line(held, 1700000000)
                             + nagios_command.command_line(remembered, 1700000000))
    assert shared.decode(body) is not remembered        # the writer took it from the memory


def test_echo_guard_knows_the_object_before_nagios_reads_the_line(tmp_path):
    """Regression (CI, test_no_echo_when_one_nagios_both_sends_and_receives): the guard noted
    an object only after the write and an fsync, and Nagios's OCSP for it came back first."""
    spool = Spool(str(tmp_path / "inbound.sqlite"))
    echo = EchoGuard(spool)
    os.mkfifo(tmp_path / "nagios.cmd")
    seen_by_guard_on_read = []

    class ObsessingNagios(FifoReader):
        def run(self):                   # the moment a line arrives, its echo comes back
            while self.running:
                try:
                    if os.read(self.fd, 65536):
                        seen_by_guard_on_read.append(echo(CheckResult(
                            host="h1", service="s1", state=1, attributes={"check_type": "PASSIVE"})))
                except BlockingIOError:
                    time.sleep(0.001)

    reader = ObsessingNagios(tmp_path / "nagios.cmd")
    reader.start()
    writer = NagiosWriter(writer_settings(tmp_path), spool, Health(), echo)
    writer.start()
    try:
        spool.put([spooled(RESULT, "a")])
        deadline = time.time() + 10
        while not seen_by_guard_on_read and time.time() < deadline:
            time.sleep(0.01)
    finally:
        reader.close()
        writer.stop()
        writer.join(10)
        spool.close()
    assert seen_by_guard_on_read == [True]


def wait_for_result_files(directory, timeout=10):
    """The check result files (with their .ok) in ``directory``, once there is one."""
    deadline = time.time() + timeout
    while True:
        files = sorted(name for name in os.listdir(directory)
                       if name.startswith("c") and os.path.exists(directory / (name + ".ok")))
        if files or time.time() > deadline:
            return files
        time.sleep(0.02)


def first_output_lines(path):
    """The first line of each result's output in a check result file."""
    return [entry["output"].split("\n")[0] for entry in checkresult_file.parse(path.read_text())]


def drained(spool, timeout=10):
    """True once the spool is empty (waiting at most ``timeout`` s)."""
    deadline = time.time() + timeout
    while spool.stats().depth and time.time() < deadline:
        time.sleep(0.05)
    return spool.stats().depth == 0


def reap(directory, name):
    """What Nagios does with a check result file it has read."""
    os.unlink(directory / name)
    os.unlink(directory / (name + ".ok"))


def test_check_result_entries_leave_the_spool_only_once_nagios_has_read_the_file(tmp_path, monkeypatch):
    """Regression (review): entries were deleted as soon as their file was written. A Nagios
    stopped for longer than max_check_result_file_age deletes such a file unread at its next
    start, and a restarted bridge forgot the file and wrote the next one beside it."""
    import dataclasses
    monkeypatch.setattr(checkresults_dir, "TOUCH_EVERY", 0.2)
    settings = dataclasses.replace(writer_settings(tmp_path), writer="checkresults_dir")
    spool = Spool(str(tmp_path / "inbound.sqlite"))
    spool.put([spooled(dataclasses.replace(RESULT, output=f"r{i}"), f"k{i}") for i in range(3)])
    writer = NagiosWriter(settings, spool, Health(), EchoGuard())
    writer.start()
    try:
        [name] = wait_for_result_files(tmp_path)
        os.utime(tmp_path / name, (1, 1))                     # as if it had waited for hours
        assert wait_until(lambda: time.time() - os.stat(tmp_path / name).st_mtime < 5, timeout=10), \
            "touched, so never too old for Nagios"
        assert spool.stats().depth == 3, "kept until Nagios has read the file"
    finally:
        writer.stop()
        writer.join(5)
        spool.close()
    spool = Spool(str(tmp_path / "inbound.sqlite"))                    # the bridge restarted
    spool.put([spooled(dataclasses.replace(RESULT, output="later"), "later")])
    writer = NagiosWriter(settings, spool, Health(), EchoGuard())
    writer.start()
    try:
        time.sleep(0.5)
        assert wait_for_result_files(tmp_path) == [name], "waits for the file the last run wrote"
        reap(tmp_path, name)
        [second] = wait_for_result_files(tmp_path)
        assert first_output_lines(tmp_path / second) == ["later"]
        reap(tmp_path, second)
        assert drained(spool)
    finally:
        writer.stop()
        writer.join(5)
        spool.close()


def test_a_check_result_file_gone_while_the_bridge_was_down_long_is_written_again(tmp_path):
    """Nagios may have deleted it unread as too old: duplicates rather than loss."""
    import dataclasses
    settings = dataclasses.replace(writer_settings(tmp_path), writer="checkresults_dir")
    spool = Spool(str(tmp_path / "inbound.sqlite"))
    spool.put([spooled(RESULT, "k")])
    writer = NagiosWriter(settings, spool, Health(), EchoGuard())
    writer.start()
    [name] = wait_for_result_files(tmp_path)
    writer.stop()
    writer.join(5)
    saved = json.loads(spool.cursor(checkresults_dir.FILED_CURSOR))
    saved["touched"] -= 3600                                  # the bridge was down an hour
    spool.put([], cursor=(checkresults_dir.FILED_CURSOR, json.dumps(saved)))
    spool.close()
    reap(tmp_path, name)
    spool = Spool(str(tmp_path / "inbound.sqlite"))
    writer = NagiosWriter(settings, spool, Health(), EchoGuard())
    writer.start()
    try:
        [again] = wait_for_result_files(tmp_path)
        assert again != name
        assert first_output_lines(tmp_path / again) == [RESULT.output]
    finally:
        writer.stop()
        writer.join(5)
        spool.close()


def test_check_result_files_are_written_one_at_a_time_oldest_result_first(tmp_path):
    spool = Spool(str(tmp_path / "inbound.sqlite"))
    settings = writer_settings(tmp_path)
    import dataclasses
    settings = dataclasses.replace(settings, writer="checkresults_dir")
    older = dataclasses.replace(RESULT, output="older", timestamp=1700000000)
    newer = dataclasses.replace(RESULT, output="newer", timestamp=1700000060)
    spool.put([spooled(newer, "n"), spooled(older, "o")])
    writer = NagiosWriter(settings, spool, Health(), EchoGuard())
    writer.start()
    try:
        files = wait_for_result_files(tmp_path)
        assert len(files) == 1
        assert first_output_lines(tmp_path / files[0]) == ["older", "newer"]
        spool.put([spooled(dataclasses.replace(RESULT, output="third", timestamp=1700000120), "t")])
        time.sleep(0.5)
        assert spool.stats().depth == 3, "no second file while Nagios has not read the first"
        assert wait_for_result_files(tmp_path) == files
        reap(tmp_path, files[0])
        [second] = wait_for_result_files(tmp_path)
        reap(tmp_path, second)
        assert drained(spool)
    finally:
        writer.stop()
        writer.join(5)
        spool.close()


def test_results_nagios_read_just_before_it_stopped_are_written_again(tmp_path):
    """Regression (found by the fault suite, 'Nagios stopped'): a Nagios stopping drops what its
    command worker had read but not handled; the writer deleted those results at write time."""
    import dataclasses
    spool = Spool(str(tmp_path / "inbound.sqlite"))
    fifo = tmp_path / "nagios.cmd"
    os.mkfifo(fifo)
    first = FifoReader(fifo)             # a Nagios that reads the lines, then dies unhandled
    first.start()
    writer = NagiosWriter(writer_settings(tmp_path), spool, Health(), EchoGuard())
    writer.start()
    try:
        spool.put([spooled(dataclasses.replace(RESULT, output=f"r{i}"), f"k{i}") for i in range(5)])
        deadline = time.time() + 5
        while first.text().count("\n") < 5 and time.time() < deadline:
            time.sleep(0.02)
        assert first.text().count("\n") == 5
        assert spool.stats().depth == 5, "written, but kept until Nagios has had them a while"
        first.close()                    # Nagios stops
        os.unlink(fifo)                  # and a new one makes a new FIFO
        time.sleep(0.5)
        os.mkfifo(fifo)
        second = FifoReader(fifo)
        second.start()
        deadline = time.time() + 10
        while spool.stats().depth and time.time() < deadline:
            time.sleep(0.05)
        second.close()
    finally:
        writer.stop()
        writer.join(10)
    assert sorted(line.rsplit(";", 1)[1].split("\\n")[0] for line in second.text().splitlines()) == \
        [f"r{i}" for i in range(5)]
    assert spool.stats().depth == 0, "confirmed once the new Nagios had them for a while"
    spool.close()


def test_a_clean_stop_confirms_what_nagios_has_rather_than_writing_it_twice(tmp_path):
    spool = Spool(str(tmp_path / "inbound.sqlite"))
    fifo = tmp_path / "nagios.cmd"
    os.mkfifo(fifo)
    reader = FifoReader(fifo)
    reader.start()
    writer = NagiosWriter(writer_settings(tmp_path), spool, Health(), EchoGuard())
    writer.start()
    try:
        spool.put([spooled(RESULT, "a")])
        deadline = time.time() + 5
        while not reader.text() and time.time() < deadline:
            time.sleep(0.02)
    finally:
        writer.stop()
        writer.join(10)
        reader.close()
    assert spool.stats().depth == 0
    spool.close()


READER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_NONBLOCK)
closed = sys.argv[3] if len(sys.argv) > 3 else None
with open(sys.argv[2], "ab", buffering=0) as out:
    while not (closed and os.path.exists(closed)):
        try:
            data = os.read(fd, 65536)
            if data:
                out.write(data)
        except BlockingIOError:
            pass
        time.sleep(0.01)
os.close(fd)          # as a stopped core's command worker: the FIFO closed, the process not yet gone
time.sleep(60)
"""


def a_nagios(fifo, out, closed=None):
    """A process reading the FIFO as Nagios's command worker does (another PID than ours); once
    the file ``closed`` exists it closes the FIFO and lingers, as the worker of a stopped core."""
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-c", READER, str(fifo), str(out)] + ([str(closed)] if closed else []))
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            return proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("reader did not start")


def lines_in(path, count, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline and (not path.exists() or path.read_bytes().count(b"\n") < count):
        time.sleep(0.02)
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.parametrize("same_nagios", [True, False])
def test_a_restarted_bridge_writes_again_only_what_a_new_nagios_never_got(tmp_path, same_nagios):
    """Regression (review): the FIFO's inode cannot tell a restarted Nagios (it reuses the
    FIFO); entries the last run wrote were skipped for a new Nagios that never had them."""
    import dataclasses
    fifo = tmp_path / "nagios.cmd"
    os.mkfifo(fifo)
    first, second = tmp_path / "first.out", tmp_path / "second.out"
    nagios = a_nagios(fifo, first)
    spool = Spool(str(tmp_path / "inbound.sqlite"))
    try:
        spool.put([spooled(dataclasses.replace(RESULT, output=f"r{i}"), f"k{i}") for i in range(5)])
        crashed = NagiosWriter(writer_settings(tmp_path), spool, Health(), EchoGuard())
        crashed.deliver(spool.take(10))            # written, then the bridge is "killed -9"
        assert lines_in(first, 5) == 5
        spool.close()
        if not same_nagios:                       # a new Nagios on the same FIFO (same inode)
            nagios.kill()
            nagios.wait()
            nagios = a_nagios(fifo, second)
        spool = Spool(str(tmp_path / "inbound.sqlite"))
        restarted = NagiosWriter(writer_settings(tmp_path), spool, Health(), EchoGuard())
        restarted.load()
        restarted.deliver(spool.take(10))
        time.sleep(0.5)
        if same_nagios:
            assert lines_in(first, 6, timeout=1) == 5, "the same Nagios had them: not written twice"
        else:
            assert lines_in(second, 5) == 5, "the new Nagios never had them: written again"
    finally:
        nagios.kill()
        nagios.wait()
        spool.close()


def results_of(host, counters, base=1700000000):
    """(spool message, output) for results n=k of ``host``/s1, each k s after ``base``."""
    return [(spooled(dataclasses.replace(RESULT, host=host, output=f"{host} n={k}", timestamp=base + k), f"{host}-{k}"),
             f"{host} n={k}") for k in counters]


def outputs(path):
    """The first line of each result's output, in the order written."""
    return [line.split(";")[-1].split("\\n")[0] for line in path.read_text().splitlines()] if path.exists() else []


def test_a_bridge_killed_just_after_a_write_never_shows_an_older_result_after_a_newer(tmp_path):
    """Regression (CI, test_a_consistent_hash_exchange_keeps_each_object_on_one_bridge_and_in_order):
    a bridge killed after writing a batch, before its cursor was saved, wrote the whole batch
    again: Nagios applied h1 n=1 after h1 n=2 (and could have notified on the old state)."""
    fifo, out = tmp_path / "nagios.cmd", tmp_path / "nagios.out"
    os.mkfifo(fifo)
    nagios = a_nagios(fifo, out)
    spool = Spool(str(tmp_path / "inbound.sqlite"))
    try:
        (first,) = [m for m, _ in results_of("h0", [1])]
        spool.put([first])
        batch = results_of("h1", [1]) + results_of("h2", [1]) + results_of("h1", [2])
        spool.put([m for m, _ in batch])
        crashed = NagiosWriter(writer_settings(tmp_path), spool, Health(), EchoGuard())
        crashed.deliver(spool.take(1))         # its cursor is saved with this write...
        crashed.deliver(spool.take(10))        # ...not with this one, SAVE_EVERY has not passed
        assert lines_in(out, 4) == 4
        spool.close()                          # "kill -9"
        spool = Spool(str(tmp_path / "inbound.sqlite"))
        health = Health()
        restarted = NagiosWriter(writer_settings(tmp_path), spool, health, EchoGuard())
        restarted.load()
        restarted.deliver(spool.take(10))
        assert lines_in(out, 6) == 6
        time.sleep(0.3)
        applied = outputs(out)
        assert applied == ["h0 n=1", "h1 n=1", "h2 n=1", "h1 n=2", "h2 n=1", "h1 n=2"], applied
        assert health.counter("stale") == 1      # h1 n=1: dropped, older than h1 n=2
    finally:
        nagios.kill()
        nagios.wait()
        spool.close()


def test_a_clean_stop_while_nagios_is_down_keeps_every_result_of_the_backlog(tmp_path):
    """Results tried while Nagios was down "may be written"; a clean stop says none may be, so
    the restarted bridge writes them all, the older ones of an object too."""
    spool = Spool(str(tmp_path / "inbound.sqlite"))
    try:
        backlog = results_of("h1", [1, 2, 3])
        spool.put([m for m, _ in backlog])
        writer = NagiosWriter(writer_settings(tmp_path), spool, Health(), EchoGuard())
        writer.start()                         # no FIFO: Nagios is down
        assert wait_until(lambda: int(spool.cursor(writer_module.MAYBE_WRITTEN_CURSOR) or 0), timeout=10)
        writer.stop()
        writer.join(10)
        assert spool.cursor(writer_module.MAYBE_WRITTEN_CURSOR) == "0"
        health = Health()
        restarted = NagiosWriter(writer_settings(tmp_path), spool, health, EchoGuard())
        restarted.load()
        assert spool.stats().depth == 3 and health.counter("stale") == 0
    finally:
        spool.close()


def test_the_ids_that_may_be_written_are_saved_before_the_write_and_once_per_write_ahead(tmp_path, monkeypatch):
    fifo, out = tmp_path / "nagios.cmd", tmp_path / "nagios.out"
    os.mkfifo(fifo)
    nagios = a_nagios(fifo, out)
    spool = Spool(str(tmp_path / "inbound.sqlite"))
    monkeypatch.setattr(writer_module, "WRITE_AHEAD", 5)
    try:
        spool.put([m for m, _ in results_of("h1", range(1, 4))])     # a backlog of 3 (ids 1-3)
        writer = NagiosWriter(writer_settings(tmp_path), spool, Health(), EchoGuard())
        saved = []
        real_put = spool.put
        monkeypatch.setattr(spool, "put", lambda messages, cursor=None: (
            saved.append(int(cursor[1])) if cursor and cursor[0] == writer_module.MAYBE_WRITTEN_CURSOR else None,
            real_put(messages, cursor=cursor))[1])
        writer.deliver(spool.take(1))
        assert saved == [6]                  # up to 5 past the batch, before it was written
        writer.deliver(spool.take(2))
        for k in range(4, 7):
            real_put([results_of("h2", [k])[0][0]])
            writer.deliver(spool.take(1))
        assert len(saved) == 1              # ids 2-6 were covered: no commit for them
        real_put([results_of("h2", [7])[0][0]])
        writer.deliver(spool.take(1))
        assert saved[-1] == 12
        assert lines_in(out, 7) == 7
    finally:
        nagios.kill()
        nagios.wait()
        spool.close()


def test_a_restarted_nagios_is_told_apart_while_its_old_command_worker_lingers(tmp_path):
    """Regression (fault suite, 'Nagios restarted', up to 1,141 duplicates a round): the old
    command worker outlives its core by a second or two after closing the FIFO, and the new
    Nagios reuses the FIFO's inode. The reader was taken as unchanged while its process ran, so
    what the old Nagios had dropped could be confirmed (lost), and what the new one had was
    written again once the old worker exited (duplicates)."""
    import dataclasses
    fifo = tmp_path / "nagios.cmd"
    os.mkfifo(fifo)
    first, second, closed = tmp_path / "first.out", tmp_path / "second.out", tmp_path / "closed"
    old, new = a_nagios(fifo, first, closed), None
    spool = Spool(str(tmp_path / "inbound.sqlite"))
    try:
        spool.put([spooled(dataclasses.replace(RESULT, output=f"r{i}"), f"k{i}") for i in range(5)])
        writer = NagiosWriter(writer_settings(tmp_path), spool, Health(), EchoGuard())
        writer.deliver(spool.take(10))
        assert lines_in(first, 5) == 5
        closed.touch()                          # the old Nagios stops, dropping what it had read
        deadline = time.time() + 5
        while time.time() < deadline:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                time.sleep(0.02)
            except OSError:
                break
        new = a_nagios(fifo, second)            # a new Nagios on the same FIFO, before the
        assert old.poll() is None               # writer looked again; the old worker lingers
        writer.settle(now=time.monotonic() + 60)
        assert spool.stats().depth == 5, "the new Nagios never had them: kept, not confirmed"
        writer.deliver(spool.take(10))
        assert lines_in(second, 5) == 5
        writer.settle(now=time.monotonic() + 120)          # the next look
        assert spool.stats().depth == 0, "confirmed once the same (new) Nagios had them"
    finally:
        for proc in (old, new):
            if proc is not None:
                proc.kill()
                proc.wait()
        spool.close()


# -- each delivery on its own, and the worker's one wake-up ------------------------------------

WARN = RateLimitedLog(logging.getLogger(__name__))


def prepared(spool, render):
    """Everything in ``spool``, taken, as a delivery's batch with ``render(result)`` as text."""
    batch = []
    for entry in spool.take(100):
        result = result_from_dict(json.loads(entry.message.body))
        batch.append(Prepared(entry, result, render(result)))
    return batch


def two_results(spool):
    spool.put([spooled(RESULT, "a"), spooled(dataclasses.replace(RESULT, output="second"), "b")])


def two_results_and_a_reading_fifo(tmp_path, health):
    """A spool with two_results, a command FIFO with a reader, and a delivery into it."""
    spool = Spool(str(tmp_path / "inbound.sqlite"))
    two_results(spool)
    os.mkfifo(tmp_path / "nagios.cmd")
    reader = FifoReader(tmp_path / "nagios.cmd")
    reader.start()
    return spool, reader, CommandFileDelivery(writer_settings(tmp_path), spool, health, WARN)


def test_command_file_delivery_confirms_once_the_same_reader_held_the_lines_for_a_while(tmp_path):
    spool, reader, delivery = two_results_and_a_reading_fifo(tmp_path, Health())
    try:
        batch = prepared(spool, lambda result: nagios_command.command_line(result, 1700000000))
        ids = sorted(item.entry.entry_id for item in batch)
        delivery.write(batch)
        written_at = time.monotonic()
        assert wait_until(lambda: reader.text().count("\n") == 2, timeout=5)
        assert sorted(delivery.pending) == ids and delivery.ready()
        assert 0 <= delivery.next_look() <= command_file.LOOK_EVERY, "watches the reader meanwhile"
        assert delivery.confirmed(now=written_at + CONFIRM_AFTER - 1) == [], "too early to tell"
        assert sorted(delivery.confirmed(now=written_at + CONFIRM_AFTER)) == ids
        assert spool.stats().depth == 2, "the worker deletes them, not the delivery"
        delivery.forget(ids)
        assert not delivery.pending and delivery.next_look() is None
    finally:
        reader.close()
        spool.close()


def test_at_a_steady_rate_what_came_due_is_confirmed_at_the_looks_not_at_each_write(tmp_path):
    """Two writes 0.1 s apart: the first comes due first, but what comes due less than
    LOOK_EVERY after a look waits for the next look, so one delete covers LOOK_EVERY s of
    writes (a look, a walk over what waits and a delete at every write cost ~100 us each)."""
    spool, reader, delivery = two_results_and_a_reading_fifo(tmp_path, Health())
    try:
        first, second = [[item] for item in prepared(spool, lambda result: nagios_command.command_line(result, 1700000000))]
        delivery.write(first)
        time.sleep(0.1)
        delivery.write(second)
        second_at = time.monotonic()
        assert wait_until(lambda: reader.text().count("\n") == 2, timeout=5)
        look = second_at + CONFIRM_AFTER - 0.05       # the first is due, the second not yet
        assert delivery.confirmed(now=look) == [first[0].entry.entry_id]
        delivery.forget([first[0].entry.entry_id])
        assert delivery.confirmed(now=look + 0.1) == [], "due now, but looked 0.1 s ago"
        assert abs(delivery.next_look() - (look + command_file.LOOK_EVERY - time.monotonic())) < 0.05, "the next look"
        assert delivery.confirmed(now=look + command_file.LOOK_EVERY) == [second[0].entry.entry_id]
    finally:
        reader.close()
        spool.close()


def test_command_file_delivery_gives_back_what_a_reader_that_went_away_had(tmp_path):
    health = Health()
    spool, reader, delivery = two_results_and_a_reading_fifo(tmp_path, health)
    batch = prepared(spool, lambda result: nagios_command.command_line(result, 1700000000))
    delivery.write(batch)
    reader.close()                                   # Nagios stopped, dropping what it had read
    try:
        assert delivery.confirmed(now=time.monotonic() + 60) == []
        assert not delivery.pending
        assert health.counter("rewritten") == 2
        assert sorted(entry.entry_id for entry in spool.take(10)) == \
            sorted(item.entry.entry_id for item in batch), "given back, to be written again"
        with pytest.raises(NagiosUnavailable, match="nobody reads"):
            delivery.write(batch)
        assert not delivery.pending, "a failed write leaves nothing waiting"
    finally:
        spool.close()


def test_check_results_dir_delivery_confirms_a_file_once_nagios_reaped_it(tmp_path):
    spool = Spool(str(tmp_path / "inbound.sqlite"))
    two_results(spool)
    directory = tmp_path / "checkresults"
    directory.mkdir()
    delivery = CheckResultsDirDelivery(str(directory), spool, Health(), WARN)
    try:
        batch = prepared(spool, checkresult_file.render_one)
        ids = sorted(item.entry.entry_id for item in batch)
        assert delivery.ready() and delivery.next_look() is None
        delivery.write(batch)
        [name] = wait_for_result_files(directory)
        assert not delivery.ready(), "one file at a time"
        assert sorted(delivery.pending) == ids and delivery.next_look() == checkresults_dir.LOOK_EVERY
        assert delivery.confirmed() == []
        assert json.loads(spool.cursor(checkresults_dir.FILED_CURSOR))["path"] == str(directory / name)
        restarted = CheckResultsDirDelivery(str(directory), spool, Health(), WARN)
        restarted.load()
        assert not restarted.ready() and sorted(restarted.pending) == ids, "a new run waits for it too"
        reap(directory, name)
        assert sorted(delivery.confirmed()) == ids
        delivery.forget(ids)
        assert delivery.ready() and not delivery.pending
        assert json.loads(spool.cursor(checkresults_dir.FILED_CURSOR)) == {}
    finally:
        spool.close()


class RecordingWakeup(Wakeup):
    """A Wakeup that notes each timeout the worker sleeps with, and whether it sleeps now."""

    def __init__(self):
        super().__init__()
        self.timeouts, self.asleep = [], "not yet"

    def wait(self, timeout=None):
        self.timeouts.append(timeout)
        self.asleep = timeout
        try:
            return super().wait(timeout)
        finally:
            self.asleep = "awake"


def test_the_idle_writer_sleeps_without_a_timeout_and_a_put_wakes_it(tmp_path, monkeypatch):
    """No poll interval: with nothing to do it sleeps with no timeout at all, so only the
    spool's put can make it write, and it writes at once."""
    monkeypatch.setattr(writer_module, "Wakeup", RecordingWakeup)
    spool = Spool(str(tmp_path / "inbound.sqlite"))
    os.mkfifo(tmp_path / "nagios.cmd")
    reader = FifoReader(tmp_path / "nagios.cmd")
    reader.start()
    writer = NagiosWriter(writer_settings(tmp_path), spool, Health(), EchoGuard())
    writer.start()
    try:
        assert wait_until(lambda: writer.wakeup.asleep is None and not writer.wakeup.is_set(), timeout=5)
        assert writer.wakeup.timeouts == [None], "sleeps once, with no timeout"
        put_at = time.monotonic()
        spool.put([spooled(RESULT, "a")])
        assert wait_until(lambda: reader.text(), timeout=5)
        assert time.monotonic() - put_at < 2.0, "written at once (a generous bound for a busy machine)"
        # Then it watches the reader until the confirmation is due, deletes the entry, and
        # sleeps with no timeout again.
        assert wait_until(lambda: spool.stats().depth == 0, timeout=10)
        assert wait_until(lambda: writer.wakeup.asleep is None, timeout=5)
        assert all(timeout <= CONFIRM_AFTER for timeout in writer.wakeup.timeouts[1:-1])
    finally:
        writer.stop()
        writer.join(10)
        reader.close()
        spool.close()
    assert not writer.is_alive()


def test_a_put_does_not_cut_the_backoff_short(tmp_path):
    """The worker is woken by every put, but while it backs off from a Nagios that is away it
    goes back to sleep: no retry storm while results keep arriving."""
    attempts = []

    class CountingWriter(NagiosWriter):
        def deliver(self, entries):
            attempts.append(time.monotonic())
            super().deliver(entries)

    spool = Spool(str(tmp_path / "inbound.sqlite"))        # no FIFO: Nagios is away
    writer = CountingWriter(writer_settings(tmp_path), spool, Health(), EchoGuard())
    writer.start()
    try:
        spool.put([spooled(RESULT, "first")])
        assert wait_until(lambda: attempts, timeout=5)
        until = time.monotonic() + 1.0
        number = 0
        while time.monotonic() < until:
            number += 1
            spool.put([spooled(RESULT, f"k{number}")])
            time.sleep(0.02)
        assert number > 20
        assert len(attempts) <= 4, f"{len(attempts)} attempts in about a second of backoff"
    finally:
        writer.stop()
        writer.join(10)
        spool.close()
    assert not writer.is_alive()


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_no_write_access_to_nagios_paths_says_what_to_do(tmp_path, monkeypatch, code):
    # Found following the docs: "cannot open the command file ...: Read-only file system" (a
    # command_file outside the unit's ReadWritePaths) said nothing of the drop-in that fixes it.
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(NagiosUnavailable, match=r"ReadWritePaths=.*docs/packaging.md") as caught:
        write_lines(str(tmp_path / "nagios.cmd"), ["x\n"])
    assert os.strerror(code) in str(caught.value) and "nagios.cmd" in str(caught.value)
    with pytest.raises(NagiosUnavailable, match=r"write access.*ReadWritePaths="):
        write_results(str(tmp_path), [RESULT])


# -- review 2026-12-06 ---------------------------------------------------------------------

OLDER_BIG = CheckResult(host="h1", service="s1", state=2, output="CRIT", long_output="x" * 5000, timestamp=1700000000)
NEWER_SMALL = CheckResult(host="h1", service="s1", state=0, output="OK now", timestamp=1700000060)


def _files_waiting(directory):
    return [result for name in os.listdir(directory) if len(name) == 7 and name.startswith("c")
            for result in checkresult_file.parse(open(os.path.join(directory, name)).read())]


def test_a_newer_line_does_not_overtake_an_older_result_of_its_object_waiting_in_a_file(tmp_path):
    """A line reaches Nagios at once, a check result file at its next reaper pass: an older
    result too big for a line went to a file and a newer one of the same object to the FIFO,
    so Nagios ended showing the older. Now all of that object's results of the batch go to the
    file, oldest first; other objects' lines still go to the FIFO."""
    spool = Spool(str(tmp_path / "inbound.sqlite"))
    other = dataclasses.replace(NEWER_SMALL, host="h2")
    spool.put([spooled(OLDER_BIG, "a"), spooled(NEWER_SMALL, "b"), spooled(other, "c")])
    os.mkfifo(tmp_path / "nagios.cmd")
    reader = FifoReader(tmp_path / "nagios.cmd")
    reader.start()
    writer = NagiosWriter(writer_settings(tmp_path), spool, Health(), EchoGuard(may_be_echo=may_be_echo))
    try:
        writer.deliver(spool.take(500))
        assert wait_until(lambda: ";h2;s1;" in reader.text(), timeout=5)
        assert ";h1;" not in reader.text()
        assert [result["output"].splitlines()[0] for result in _files_waiting(tmp_path)] == ["CRIT", "OK now"]
    finally:
        reader.close()
        spool.close()


def test_a_check_results_directory_that_cannot_take_a_file_holds_back_only_its_results(tmp_path):
    """Review 2026-12-06: the whole batch was given back when the file could not be written
    (directory full, read-only or gone), so no line reached Nagios while it lasted."""
    settings = dataclasses.replace(writer_settings(tmp_path), check_result_path=str(tmp_path / "gone"))
    spool = Spool(str(tmp_path / "inbound.sqlite"))
    spool.put([spooled(OLDER_BIG, "a")] + [spooled(dataclasses.replace(NEWER_SMALL, service=f"s{i}"), f"n{i}")
                                           for i in range(2, 7)])
    os.mkfifo(tmp_path / "nagios.cmd")
    reader = FifoReader(tmp_path / "nagios.cmd")
    reader.start()
    writer = NagiosWriter(settings, spool, Health(), EchoGuard(may_be_echo=may_be_echo))
    try:
        writer.deliver(spool.take(500))
        assert wait_until(lambda: reader.text().count("\n") == 5, timeout=5), reader.text()
        assert spool.stats().depth == 6 and spool.stats().leased == 5     # the big one waits, given back
    finally:
        reader.close()
        spool.close()


def test_an_error_touching_the_waiting_check_result_file_does_not_end_the_writer(tmp_path, monkeypatch):
    """Review 2026-12-06: os.utime raising EROFS (a file system remounted read-only) ended the
    writer's thread, and every restart met the same file again."""
    settings = dataclasses.replace(writer_settings(tmp_path), writer="checkresults_dir")
    spool = Spool(str(tmp_path / "inbound.sqlite"))
    spool.put([spooled(NEWER_SMALL, "b")])
    monkeypatch.setattr(checkresults_dir, "TOUCH_EVERY", 0.2)
    writer = NagiosWriter(settings, spool, Health(), EchoGuard(may_be_echo=may_be_echo))
    writer.start()
    try:
        assert wait_until(lambda: writer.files._file is not None, timeout=5)
        touched = []

        def read_only(*args, **kwargs):
            touched.append(args)
            raise OSError(errno.EROFS, "Read-only file system")
        monkeypatch.setattr(os, "utime", read_only)
        assert wait_until(lambda: touched, timeout=5), "the file was never touched: nothing tested"
        time.sleep(0.5)
        assert writer.is_alive()
    finally:
        writer.stop()
        writer.join(5)
        spool.close()


def test_a_write_that_times_out_mid_batch_does_not_write_its_first_lines_again(tmp_path, monkeypatch):
    """Review 2026-12-06: the FIFO filled mid-batch (Nagios stalled), the lines already in it
    stayed there, and the whole batch was given back and written again: Nagios applied OLD,
    NEW, OLD, NEW for one object. The lines in the FIFO now wait for confirmation instead."""
    import fcntl
    import functools
    monkeypatch.setattr(command_file, "write_lines", functools.partial(command_file.write_lines, timeout=0.2))
    spool = Spool(str(tmp_path / "inbound.sqlite"))
    fillers = [spooled(CheckResult(host="h2", service=f"f{i}", state=0, output="y" * 100, timestamp=1700000000),
                       f"f{i}") for i in range(60)]
    spool.put([spooled(dataclasses.replace(OLDER_BIG, long_output=""), "a"), spooled(NEWER_SMALL, "b")] + fillers)
    os.mkfifo(tmp_path / "nagios.cmd")
    stalled = os.open(tmp_path / "nagios.cmd", os.O_RDONLY | os.O_NONBLOCK)     # reads nothing for now
    fcntl.fcntl(stalled, fcntl.F_SETPIPE_SZ, 4096)
    writer = NagiosWriter(writer_settings(tmp_path), spool, Health(), EchoGuard(may_be_echo=may_be_echo))
    try:
        writer.deliver(spool.take(500))          # the pipe fills after about 4 KiB: a timeout
        seen = os.read(stalled, 65536).decode()  # Nagios reads again
        assert 0 < seen.count("\n") < 62
        reader = FifoReader(tmp_path / "nagios.cmd")
        reader.start()
        try:
            writer.deliver(spool.take(500))
            assert wait_until(lambda: seen.count("\n") + reader.text().count("\n") == 62, timeout=5)
        finally:
            reader.close()
    finally:
        os.close(stalled)
        spool.close()
    states = [line.split(";")[3] for line in (seen + reader.text()).splitlines() if ";h1;s1;" in line]
    assert states == ["2", "0"], f"Nagios applied h1/s1 states in this order: {states}"


def test_lines_still_unread_in_the_pipe_are_not_confirmed(tmp_path):
    """Review 2026-12-06: a hung Nagios keeps the FIFO open and reads nothing; after
    CONFIRM_AFTER the lines still in the kernel's pipe were confirmed and deleted, and a
    restart of that Nagios then lost them. Confirmed once a look finds them read."""
    spool = Spool(str(tmp_path / "inbound.sqlite"))
    spool.put([spooled(NEWER_SMALL, "b")])
    os.mkfifo(tmp_path / "nagios.cmd")
    hung = os.open(tmp_path / "nagios.cmd", os.O_RDONLY | os.O_NONBLOCK)
    delivery = CommandFileDelivery(writer_settings(tmp_path), spool, Health(), WARN)
    try:
        [entry] = prepared(spool, lambda result: nagios_command.command_line(result, 1700000060))
        delivery.write([entry])
        later = time.monotonic() + CONFIRM_AFTER + 1
        assert delivery.confirmed(now=later) == []
        assert os.read(hung, 65536).count(b"\n") == 1          # Nagios reads it at last
        assert delivery.confirmed(now=later + 1) == [entry.entry.entry_id]
    finally:
        os.close(hung)
        spool.close()


def test_a_round_of_the_writer_takes_a_bounded_number_of_bytes(tmp_path, monkeypatch):
    """Review 2026-12-06: a round took up to 10,000 results whatever their size (a check
    result file of 170 MB with outputs near the limit, held several times over)."""
    monkeypatch.setattr(writer_module, "BATCH_BYTES", 50_000)
    settings = dataclasses.replace(writer_settings(tmp_path), writer="checkresults_dir")
    spool = Spool(str(tmp_path / "inbound.sqlite"))
    spool.put([spooled(dataclasses.replace(NEWER_SMALL, service=f"s{i}", long_output="z" * 8000), f"k{i}")
               for i in range(40)])
    writer = NagiosWriter(settings, spool, Health(), EchoGuard(may_be_echo=may_be_echo))
    writer.start()
    try:
        assert wait_until(lambda: writer.files._file is not None, timeout=5)
        in_file = len(checkresult_file.parse(open(writer.files._file).read()))
        assert 1 <= in_file < 10, in_file
    finally:
        writer.stop()
        writer.join(5)
        spool.close()
