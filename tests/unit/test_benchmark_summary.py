"""benchmarks/common.print_summary: the summary every benchmark ends with."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import common  # noqa: E402


def test_an_integer_figure_whose_median_falls_between_two_values_is_shown(capsys):
    """The median of an even number of counts is a float (13.5): an hour-long soak's six
    windows of fd counts crashed the summary with "Unknown format code 'd'"."""
    common.print_summary({"bridges": [{"fds": 13}, {"fds": 14}], "other": [{"fds": 12}, {"fds": 12}]},
                         [("fds", lambda r: r["fds"], "d")], 2, unit="window")
    rows = capsys.readouterr().out.splitlines()
    assert any(row.split()[:5] == ["bridges", "fds", "13.5", "13", "14"] for row in rows), rows
    assert any(row.split()[:5] == ["other", "fds", "12", "12", "12"] for row in rows), rows


def test_a_case_the_host_ran_slow_is_disturbed_though_no_process_was_busy(capsys, monkeypatch):
    """On 2026-12-07 a fixed loop took 7 or 10.5-11 ms, switching every few seconds, on an
    otherwise idle machine: no process showed it. A case whose loops took > 1.3x the fastest
    is disturbed; one at 1.2x, or not probed, is not."""
    monkeypatch.setattr(common, "_probes", [7.0, 7.4, 10.5, 10.9, 8.4, 8.2])
    quiet = {"count": 1000, "seconds": 1.0, "other_cpu": 0.0, "window": 1.0}
    runs = [dict(quiet, probe_ms=7.2), dict(quiet, probe_ms=10.7), dict(quiet, probe_ms=8.3), dict(quiet)]
    assert [common.disturbed(r) for r in runs] == [False, True, False, False]
    assert common.slow_why(runs[1]) == "a slow host: its loops took 10.7 ms, the benchmark's fastest 7.0"
    busy = dict(quiet, probe_ms=7.0, other_cpu=0.5)
    assert common.disturbed(busy) and not common.slow(busy)
    common.print_summary({"case": runs}, [("msgs/s", common.rate, ",.0f")], 4)
    out = capsys.readouterr().out
    assert "1 of 4 case measurements, 1 by a slow host" in out, out
    assert ("machine speed: a fixed loop (100,000 additions) took 7.0 ms at the fastest, median 8.3,"
            " max 10.9, over 6 probes") in out, out


def test_every_meter_probes_the_machine_speed_outside_its_window():
    before = len(common._probes)
    result = common.Meter({}).stop()
    assert len(common._probes) == before + 2
    assert result["probe_ms"] == sum(common._probes[-2:]) / 2 > 0
