"""The OCSP FIFO is created safely and never follows what it should not."""
import os
import stat

import pytest

from msg_nagios_bridge.config import OcspPipeSettings
from msg_nagios_bridge.sources.ocsp_pipe import FifoError, prepare_fifo


def settings(path, **changes):
    return OcspPipeSettings(enabled=True, path=str(path), **changes)


def test_creates_a_fifo_with_the_configured_mode(tmp_path):
    path = tmp_path / "ocsp.fifo"
    assert prepare_fifo(settings(path, mode=0o620)) == b""
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


def test_a_regular_file_left_by_writers_is_taken_in(tmp_path):
    path = tmp_path / "ocsp.fifo"
    path.write_bytes(b"line one\nline two\n")     # the shell's '>' made a file: FIFO was missing
    assert prepare_fifo(settings(path)) == b"line one\nline two\n"
    assert stat.S_ISFIFO(os.lstat(path).st_mode)
    assert (tmp_path / "ocsp.fifo.recovered").exists()   # removed once its lines are spooled


def test_an_unknown_group_is_a_clear_error(tmp_path):
    with pytest.raises(FifoError, match="does not exist"):
        prepare_fifo(settings(tmp_path / "f", group="no-such-group-here"))


class RefusingSpool:
    """A spool whose disk is gone: every put fails, nothing is stored."""
    max_messages, max_bytes = 1000, 1 << 20

    def put(self, messages, cursor=None):
        from msg_nagios_bridge.spool import SpoolUnavailable
        raise SpoolUnavailable("disk I/O error")


def test_lines_leave_the_fifo_only_once_they_are_spooled(tmp_path):
    """Regression (found by the fault suite, 'bridge kill -9, OCSP pipe'): the source read
    lines out of the FIFO before spooling them, so a kill -9 in between lost them."""
    import threading
    import time

    from msg_nagios_bridge.config import parse
    from msg_nagios_bridge.health import Health
    from msg_nagios_bridge.routing import Router
    from msg_nagios_bridge.sources.intake import Intake
    from msg_nagios_bridge.sources.ocsp_pipe import OcspPipeSource

    path = tmp_path / "ocsp.fifo"
    router = Router(parse("site: {name: S}\nbrokers: {hosts: ['127.0.0.1:1']}\n"
                          "spool: {directory: /tmp/unused}\nroutes: [{name: r, destination: /queue/q}]\n", "t"))
    stopping = threading.Event()
    intake_health = Health()
    source = OcspPipeSource(settings(path), Intake("ocsp_pipe", router, RefusingSpool(), intake_health, stopping),
                            Health())
    source.start()
    assert source.ready.wait(5) and source.failure is None
    from msg_nagios_bridge.formats import result_line
    from msg_nagios_bridge.model import CheckResult
    lines = "".join(result_line.format_line(CheckResult(host="h", service=f"s{i}", state=0, output="ok",
                                                        timestamp=1700000000)) + "\n" for i in range(2)).encode()
    holder = os.open(path, os.O_RDWR | os.O_NONBLOCK)    # what systemd's ListenFIFO= keeps open
    try:
        os.write(holder, lines)
        time.sleep(1.5)                                  # the source tried (and failed) to spool them
        stopping.set()
        source.join(5)
        assert not source.is_alive()
        assert intake_health._states["ocsp_pipe"] == "waiting: spool unavailable: disk I/O error"
        assert os.read(holder, 4096) == lines, "the lines must still be in the FIFO"
    finally:
        os.close(holder)


def test_a_line_longer_than_the_pipe_is_dead_lettered_and_the_next_one_still_read(tmp_path):
    """Regression (review of the tee reader): a line longer than the FIFO could hold never
    showed a newline, and the reader waited for its end forever while every writer blocked."""
    import threading
    import time

    from msg_nagios_bridge.config import parse
    from msg_nagios_bridge.formats import result_line
    from msg_nagios_bridge.health import Health
    from msg_nagios_bridge.model import CheckResult
    from msg_nagios_bridge.routing import Router
    from msg_nagios_bridge.sources.intake import Intake
    from msg_nagios_bridge.sources.ocsp_pipe import OcspPipeSource
    from msg_nagios_bridge.spool import Spool

    path = tmp_path / "ocsp.fifo"
    router = Router(parse("site: {name: S}\nbrokers: {hosts: ['127.0.0.1:1']}\n"
                          "spool: {directory: /tmp/unused}\nroutes: [{name: r, destination: /queue/q}]\n", "t"))
    spool = Spool(str(tmp_path / "spool.sqlite"))
    stopping = threading.Event()
    source = OcspPipeSource(settings(path), Intake("ocsp_pipe", router, spool, Health(), stopping), Health())
    source.start()
    assert source.ready.wait(5) and source.failure is None
    good = (result_line.format_line(CheckResult(host="h", service="after", state=0, output="ok",
                                                timestamp=1700000000)) + "\n").encode()

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
        assert [e.message.headers["metric"] for e in spool.take(10)] == ["after"]
        assert spool.stats().dead_letters >= 1
    finally:
        stopping.set()
        source.join(5)
        spool.close()
