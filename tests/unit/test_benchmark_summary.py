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
