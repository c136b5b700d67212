"""The OCSP FIFO is created safely and never follows what it should not."""
import os
import stat
import subprocess
import threading
import time

import pytest
from pathlib import Path

from msg_nagios_bridge.config import OcspPipeSettings, parse
from msg_nagios_bridge.cores.nagios import ocsp_record, result_line
from msg_nagios_bridge.daemon.health import Health
from msg_nagios_bridge.model import CheckResult
from tests.sandbox.fifo import printf_command
from msg_nagios_bridge.outbound.routing import Router
from msg_nagios_bridge.outbound.intake import Intake
from msg_nagios_bridge.cores.nagios.ocsp_pipe import READ_CHUNK, FifoError, OcspPipeSource, prepare_fifo
from msg_nagios_bridge.spool import Spool
from tests.sandbox.ports import wait_until

ROUTER = Router(parse("site: {name: S}\nbrokers: {hosts: ['127.0.0.1:1']}\n"
                      "spool: {directory: /tmp/unused}\nroutes: [{name: r, destination: /queue/q}]\n", "t"))


def settings(path, **changes):
    return OcspPipeSettings(enabled=True, path=str(path), **changes)


TOKEN = "TestTokenTestTokenTestTokenTestT"


def result_lines(*services, token=TOKEN):
    """Framed records (formats/ocsp_record.py), as the OCSP command writes them."""
    return "".join(ocsp_record.frame(result_line.format_line(CheckResult(
        host="h", service=service, state=0, output="ok", timestamp=1700000000)).encode(), token, pid).decode()
        for pid, service in enumerate(services, 100))


def start_source(path, spool, intake_health=None, health=None):
    """A running OCSP source on ``path`` (its token file, holding TOKEN, beside it); stop it
    with source.stopping.set(); source.join()."""
    token_file = Path(ocsp_record.token_path(str(path)))
    if not token_file.exists():
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o640)
    source = OcspPipeSource(settings(path), Intake("ocsp_pipe", ROUTER, spool, intake_health or Health(),
                                                   threading.Event(), result_line.parse), health or Health(), str(token_file))
    source.start()
    assert source.ready.wait(5) and source.failure is None
    return source


def metrics_in(spool):
    return [entry.message.headers["metric"] for entry in spool.take(1000)]


def test_creates_a_fifo_with_the_configured_mode(tmp_path):
    path = tmp_path / "ocsp.fifo"
    assert prepare_fifo(settings(path, mode=0o620)) == []
    info = os.lstat(path)
    assert stat.S_ISFIFO(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o620


def test_an_existing_fifo_of_ours_is_reused_and_its_mode_fixed(tmp_path):
    path = tmp_path / "ocsp.fifo"
    os.mkfifo(path, 0o666)
    prepare_fifo(settings(path, mode=0o600))
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600


def test_a_symlink_is_refused_and_not_followed(tmp_path):
    target = tmp_path / "target"
    target.write_text("precious")
    path = tmp_path / "ocsp.fifo"
    path.symlink_to(target)
    with pytest.raises(FifoError, match="not a FIFO"):
        prepare_fifo(settings(path))
    assert target.read_text() == "precious"
    assert stat.S_IMODE(os.stat(target).st_mode) != 0o620


def test_a_directory_is_refused(tmp_path):
    path = tmp_path / "ocsp.fifo"
    path.mkdir()
    with pytest.raises(FifoError, match="not a FIFO"):
        prepare_fifo(settings(path))


def test_a_regular_file_left_by_writers_is_moved_aside_for_its_lines(tmp_path):
    path = tmp_path / "ocsp.fifo"
    path.write_bytes(b"line one\nline two\n")     # the shell's '>>' made a file: FIFO was missing
    [aside] = prepare_fifo(settings(path))
    assert stat.S_ISFIFO(os.lstat(path).st_mode)
    assert aside.startswith(f"{path}.recovered.")
    assert open(aside, "rb").read() == b"line one\nline two\n"   # removed once its lines are spooled


def test_the_ocsp_command_appends_to_the_file_it_makes_while_the_fifo_is_missing(tmp_path):
    """Regression (review): the command used '>', so while the FIFO was missing every check
    truncated the file and only the last result was left for the bridge to take in."""
    path = tmp_path / "ocsp.fifo"
    for value in ("one", "two", "three"):
        subprocess.run(["sh", "-c", printf_command("MNB1S", (value,), str(path))], check=True, timeout=10)
    assert path.read_text() == "MNB1S\tone\nMNB1S\ttwo\nMNB1S\tthree\n"


def test_a_stray_file_never_replaces_one_whose_lines_are_not_yet_spooled(tmp_path):
    """Regression (review): the file was moved to one fixed name, over the last one; a bridge
    stopped or killed before spooling its lines left it there, and nothing read it again."""
    path = tmp_path / "ocsp.fifo"
    path.write_bytes(result_lines("first", "second").encode())
    prepare_fifo(settings(path))                   # then the bridge stops before taking it in
    os.unlink(path)                                # /run cleared; Nagios writes on
    path.write_bytes(result_lines("third").encode() + f"{TOKEN}:1 99\tMNB1S\tcut off".encode())
    with Spool(str(tmp_path / "spool.sqlite")) as spool:
        source = start_source(path, spool)
        try:
            # The recovered file is taken in, its cut-off end dead-lettered, then it is deleted.
            assert wait_until(lambda: spool.stats().depth == 3 and spool.stats().dead_letters == 1 and
                              not list(tmp_path.glob("ocsp.fifo.recovered*")), timeout=10)
            assert metrics_in(spool) == ["first", "second", "third"]
            assert [dead.reason.split(" in ")[0] for dead in spool.dead_letters()] == ["incomplete last line"]
            assert not list(tmp_path.glob("ocsp.fifo.recovered*")), "taken in, then deleted"
        finally:
            source.stopping.set()
            source.join(5)


def test_an_unknown_group_is_a_clear_error(tmp_path):
    with pytest.raises(FifoError, match="does not exist"):
        prepare_fifo(settings(tmp_path / "f", group="no-such-group-here"))


class RefusingSpool:
    """A spool whose disk is gone: every put fails, nothing is stored."""
    max_messages, max_bytes = 1000, 1 << 20

    def batch_limits(self):
        return 250, 1 << 18

    def wake_on_room(self, wakeup):
        pass                      # never any room

    def put(self, messages, cursor=None, marks=(), numbered=False, dead_letters=(), sign=None, encoded=None):
        from msg_nagios_bridge.spool import SpoolUnavailable
        raise SpoolUnavailable("disk I/O error")


def test_lines_leave_the_fifo_only_once_they_are_spooled(tmp_path):
    """Regression (found by the fault suite, 'bridge kill -9, OCSP pipe'): the source read
    lines out of the FIFO before spooling them, so a kill -9 in between lost them."""
    path = tmp_path / "ocsp.fifo"
    intake_health = Health()
    source = start_source(path, RefusingSpool(), intake_health)
    lines = result_lines("s0", "s1").encode()
    holder = os.open(path, os.O_RDWR | os.O_NONBLOCK)    # what systemd's ListenFIFO= keeps open
    try:
        os.write(holder, lines)
        assert wait_until(lambda: intake_health._states.get("ocsp_pipe", "").startswith(
            "waiting: spool unavailable"), timeout=10)     # the source tried (and failed) to spool them
        source.stopping.set()
        source.join(5)
        assert not source.is_alive()
        assert intake_health._states["ocsp_pipe"] == "waiting: spool unavailable: disk I/O error"
        assert os.read(holder, 4096) == lines, "the lines must still be in the FIFO"
    finally:
        os.close(holder)


def test_a_line_longer_than_the_pipe_is_dead_lettered_and_the_next_one_still_read(tmp_path):
    """Regression (review of the tee reader): a line longer than the FIFO could hold never
    showed a newline, and the reader waited for its end forever while every writer blocked."""
    path = tmp_path / "ocsp.fifo"
    spool = Spool(str(tmp_path / "spool.sqlite"))
    source = start_source(path, spool)
    good = result_lines("after").encode()

    def write():
        fd = os.open(path, os.O_WRONLY)
        try:
            for _ in range((2 << 20) // 3000):
                os.write(fd, b"x" * 3000)            # one line of 2 MiB, in small writes
            os.write(fd, b"\n" + good)
        finally:
            os.close(fd)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        deadline = time.time() + 20
        while spool.stats().depth < 1 and time.time() < deadline:
            time.sleep(0.05)
        writer.join(5)
        assert not writer.is_alive(), "the writer must not stay blocked"
        assert spool.stats().depth == 1
        assert metrics_in(spool) == ["after"]
        assert spool.stats().dead_letters >= 1
    finally:
        source.stopping.set()
        source.join(5)
        spool.close()


def test_the_token_file_is_made_once_mode_0640_and_kept_across_restarts(tmp_path):
    from msg_nagios_bridge.cores.nagios.ocsp_pipe import load_token
    path = tmp_path / "ocsp.token"
    token = load_token(str(path))
    assert ocsp_record.is_token(token.decode()) and stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert load_token(str(path)) == token                      # the next start keeps it
    path.chmod(0o644)
    with pytest.raises(FifoError, match="others cannot read"):
        load_token(str(path))
    path.chmod(0o640)
    path.write_text("short\n")
    with pytest.raises(FifoError, match="holds no OCSP record token"):
        load_token(str(path))


def test_a_split_ocsp_line_cannot_forge_a_result_for_another_host(tmp_path):
    """Regression (issue 12): an OCSP line over PIPE_BUF, cut by another writer's line, left a tail
    that parsed as a whole result for a host the plugin output named. Old-format lines (no frame)
    are refused on the FIFO; the genuine records around the cut are still taken."""
    path = tmp_path / "ocsp.fifo"
    forged = result_line.format_line(CheckResult(host="victim", service="forged", state=0, output="fine",
                                                 timestamp=1700000000))
    long = result_line.format_line(CheckResult(host="h", service="long", state=2, output="x",
                                               long_output="y" * 5000 + "\n" + forged, timestamp=1700000000))
    record = ocsp_record.frame(long.encode(), TOKEN, 7)
    cut = record.index(forged.encode())
    stream = record[:cut] + result_lines("inside").encode() + record[cut:] + (forged + "\n").encode() \
        + result_lines("after").encode()
    with Spool(str(tmp_path / "spool.sqlite")) as spool:
        health = Health()
        source = start_source(path, spool, health=health)
        try:
            fd = os.open(path, os.O_WRONLY)
            os.write(fd, stream)
            os.close(fd)
            assert wait_until(lambda: spool.stats().depth == 2 and spool.stats().dead_letters == 3, timeout=10)
            assert metrics_in(spool) == ["inside", "after"]
            reasons = sorted(dead.reason.split(":")[0] for dead in spool.dead_letters())
            assert reasons == ["ocsp-old-format", "ocsp-split", "ocsp-split"]
            assert all(TOKEN.encode() not in dead.entry.message.body for dead in spool.dead_letters())
            assert health.counter("ocsp_refused_records") == 3
        finally:
            source.stopping.set()
            source.join(5)


def test_after_an_upgrade_plain_lines_are_taken_until_the_first_framed_record(tmp_path, caplog):
    """A site that upgraded and has not installed the new OCSP command yet loses nothing: its
    plain lines are taken (with a warning) until a framed record shows the new command is in;
    from then on plain lines are refused, as a forged tail would be."""
    path = tmp_path / "ocsp.fifo"
    with Spool(str(tmp_path / "spool.sqlite")) as spool:
        source = start_source(path, spool)
        try:
            def plain(service):
                return (result_line.format_line(CheckResult(host="h", service=service, state=0, output="ok",
                                                           timestamp=1700000000)) + "\n").encode()
            fd = os.open(path, os.O_WRONLY)
            os.write(fd, plain("old1") + plain("old2"))
            assert wait_until(lambda: spool.stats().depth == 2, timeout=10)
            os.write(fd, result_lines("framed").encode())
            os.write(fd, plain("plain-after"))
            os.close(fd)
            assert wait_until(lambda: spool.stats().depth == 3 and spool.stats().dead_letters == 1, timeout=10)
            assert metrics_in(spool) == ["old1", "old2", "framed"]
            assert spool.dead_letters()[0].reason.startswith("ocsp-old-format")
            assert "without the record frame" in caplog.text
        finally:
            source.stopping.set()
            source.join(5)


def test_a_group_the_bridge_is_not_in_is_named_with_what_to_do(tmp_path, monkeypatch):
    # It said "[Errno 1] Operation not permitted" (the FIFO) or named only the token file.
    from msg_nagios_bridge.cores.nagios import ocsp_pipe
    group = __import__("grp").getgrgid(os.getgid()).gr_name

    def refuse(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "chown", refuse)
    monkeypatch.setattr(os, "fchown", refuse)
    with pytest.raises(FifoError, match=rf"cannot give .*ocsp.fifo to group '{group}' \(sources.ocsp_pipe.group\)"
                                        r": the bridge's user is not in that group"):
        prepare_fifo(settings(tmp_path / "ocsp.fifo", group=group))
    with pytest.raises(FifoError, match=r"cannot give .*ocsp.fifo.token to group .*not in that group"):
        ocsp_pipe.load_token(str(tmp_path / "ocsp.fifo.token"), group)
    assert not [name for name in os.listdir(tmp_path) if ".token" in name]


def test_a_missing_or_read_only_fifo_directory_says_what_to_do(tmp_path, monkeypatch):
    # "cannot create the OCSP token file ...: No such file or directory" after a reboot emptied
    # /run (a hand-made directory), or "Read-only file system" under the unit: now with the fix.
    from msg_nagios_bridge.cores.nagios import ocsp_pipe
    with pytest.raises(FifoError, match=r"No such file or directory: its directory does not exist"):
        ocsp_pipe.load_token(str(tmp_path / "gone" / "ocsp.fifo.token"))
    with pytest.raises(FifoError, match=r"cannot create the FIFO .*: its directory does not exist"):
        prepare_fifo(settings(tmp_path / "gone" / "ocsp.fifo"))

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr(os, "mkfifo", read_only)
    with pytest.raises(FifoError, match=r"Read-only file system: the bridge's user cannot write.*ReadWritePaths="):
        prepare_fifo(settings(tmp_path / "ocsp.fifo"))


def test_the_rest_of_an_overlong_line_in_a_recovered_file_is_not_read_as_lines(tmp_path):
    """Review 2026-12-06: after the first part of a line over the limit, a recovered file's
    reader took the rest of that line, up to its newline, as lines of their own, so a result
    line inside plugin output at the cut was published (the FIFO's reader skips it)."""
    forged = result_line.format_line(CheckResult(host="victim", service="forged", state=2,
                                                 output="planted", timestamp=1700000000))
    cut = 2 * READ_CHUNK * 16          # where the reader gives up on the line (over 1 MiB)
    head = result_line.format_line(CheckResult(host="h", service="big", state=0, output="x", timestamp=1700000000))
    recovered = tmp_path / "ocsp.fifo.recovered.1"
    recovered.write_text(head + "A" * (cut - len(head)) + forged + "\n" + forged.replace("victim", "next") + "\n")
    with Spool(str(tmp_path / "s.sqlite")) as spool:
        source = OcspPipeSource(settings(tmp_path / "ocsp.fifo"), Intake("ocsp_pipe", ROUTER, spool, Health(),
                                threading.Event(), result_line.parse), Health(), str(tmp_path / "ocsp.fifo.token"))
        source.token = TOKEN.encode()
        assert source._take_in(str(recovered))
        assert [entry.message.headers["host"] for entry in spool.take(10)] == ["next"]
        assert [letter.reason for letter in spool.dead_letters()] == [
            f"line longer than {source.settings.max_line_bytes} bytes in {recovered}"]
