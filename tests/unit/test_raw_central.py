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
