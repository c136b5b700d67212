"""benchmarks/raw_central.py, the grid-scale ramp's baseline consumer: its command lines and
its FIFO writes (whole lines, at most PIPE_BUF a write)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import raw_central  # noqa: E402


def test_a_wlcg_record_becomes_the_command_the_bridge_would_write():
    body = (b"hostName: ce01.remote.org\nmetricName: org.bench.svc001\nmetricStatus: CRITICAL\n"
            b"summaryData: down id=7 sent=12.5\nmetricStatus: OK\nEOT\ngarbage: after\n")
    assert raw_central.command(body, 1700000000) == (
        b"[1700000000] PROCESS_SERVICE_CHECK_RESULT;ce01.remote.org;org.bench.svc001;2;down id=7 sent=12.5\n")
    assert b";3;" in raw_central.command(b"hostName: h\nmetricName: s\nmetricStatus: ODD\nEOT\n", 1)


def test_lines_are_joined_into_writes_of_whole_lines_within_pipe_buf():
    lines = [b"x" * 100 + b"\n"] * 200 + [b"y" * (raw_central.PIPE_BUF + 10) + b"\n"]
    chunks = list(raw_central.chunks(lines))
    assert b"".join(chunks) == b"".join(lines)
    assert all(chunk.endswith(b"\n") for chunk in chunks)
    assert all(len(chunk) <= raw_central.PIPE_BUF for chunk in chunks[:-1])
    assert chunks[-1] == lines[-1]          # a line longer than PIPE_BUF goes alone


def test_a_durable_batch_is_appended_after_its_length_and_synced(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(raw_central.os, "fdatasync", lambda fd: synced.append(fd))
    fd = raw_central.os.open(tmp_path / "raw.log", raw_central.os.O_WRONLY | raw_central.os.O_CREAT
                             | raw_central.os.O_APPEND)
    try:
        raw_central.log_durably(fd, [b"one\nEOT\n", b""])
        raw_central.log_durably(fd, [b"x" * 70000])
    finally:
        raw_central.os.close(fd)
    assert (tmp_path / "raw.log").read_bytes() == b"8\none\nEOT\n0\n70000\n" + b"x" * 70000
    assert synced == [fd, fd]
