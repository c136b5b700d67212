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
