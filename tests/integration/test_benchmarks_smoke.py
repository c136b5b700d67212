"""Every benchmark in benchmarks/, run as an operator runs it (``python benchmarks/X.py`` from the
repository root) with tiny counts, so that none rots unseen: each must exit 0 and print its
result table with every row it promises, and deliver everything it sent. The figures themselves
are not checked: a tiny run on a shared CI machine says nothing about speed.

Each benchmark starts and stops its own ActiveMQ and Nagios (tests/sandbox) in a temp dir.
"""
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def bench(script, *args, timeout=180):
    """The output of ``python benchmarks/<script> <args>`` from the repository root; fails with
    its tail unless it exits 0. On a timeout it gets SIGINT first, so its finally blocks stop
    the servers it started."""
    proc = subprocess.Popen([sys.executable, f"benchmarks/{script}", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": ""})     # it must find its own way
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out = _interrupt(proc)
        pytest.fail(f"{script} {' '.join(args)} ran over {timeout} s:\n{out[-4000:]}")
    except BaseException:       # pytest itself interrupted: the benchmark's servers go with it
        _interrupt(proc)
        raise
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{out[-4000:]}"
    return out


def _interrupt(proc):
    """SIGINT (its finally blocks stop the servers it started), then SIGKILL after 60 s; its
    output. (A SIGINT to pytest's PID alone left a soak benchmark running, with its ActiveMQ,
    Nagios and bridges.)"""
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def table_rows(out):
    """The first cells of the rows of every table printed (a name, two or more spaces, a figure,
    as common.print_table lays them out; or a markdown row)."""
    rows = set()
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")] if line.startswith("|") else \
            re.split(r"\s{2,}", line.strip())
        if len(cells) > 1 and cells[0]:
            rows.add(cells[0])
    return rows


def assert_rows(out, expected):
    rows = table_rows(out)
    missing = [name for name in expected if name not in rows]
    assert not missing, f"rows missing from the table: {missing}\n{out[-4000:]}"


def assert_code_recorded(out):
    """The header names the commit and date."""
    assert re.search(r"^code: commit [0-9a-f]{40}(\+dirty)?, .*, \d{4}-\d\d-\d\d \d\d:\d\d UTC", out, re.M), out


def assert_summary(out, unit, count, rows):
    """A summary over ``count`` repetitions called ``unit`` ("run", "window", "round") holds each
    of ``rows`` ((case or "", figure)) with a median, min, max and one value per repetition
    (each "*" or not), and says how many were disturbed."""
    summary = out[out.index(f"\nsummary over {count} {unit}{'s' if count != 1 else ''} ("):]
    number = r"[-+\d.,]+"
    for case, figure in rows:
        pattern = (r"^ *" + re.escape(case) + r" +" + re.escape(figure) + f" +{number}" * 3
                   + rf"( +{number}( \*)?){{{count}}}$")
        assert re.search(pattern, summary, re.M), f"no summary row {case!r} {figure!r}:\n{summary}"
    assert re.search(rf"^disturbed {unit}s \(other processes > 25% of a CPU, or a slow host \(a fixed loop"
                     rf" > 1.3x its fastest\) during (a case|the {unit})\): \d+ of \d+", summary, re.M), summary
    assert_speed_recorded(summary)


def assert_figures_recorded(out, bridge_cases, ratio):
    """The header names the commit and date; the summary over the runs shows, for each of
    ``bridge_cases``, its median, min and max msgs/s and its ratio to the baseline of its run,
    and says how many runs were disturbed."""
    assert_code_recorded(out)
    summary = out[out.index("\nsummary over 1 run "):]
    for case in bridge_cases:
        rows = summary[summary.index("\n" + case + " "):].splitlines()[1:6]
        assert re.match(re.escape(case) + r" +msgs/s +[\d,]+ +[\d,]+ +[\d,]+ +[\d,]+( \*)?$", rows[0]), rows
        assert any(re.match(r" +" + re.escape(ratio) + r" +[\d.]+ ", row) for row in rows), rows
    assert re.search(r"^disturbed runs \(other processes > 25% of a CPU, or a slow host \(a fixed loop > 1.3x"
                     r" its fastest\) during a case\): [01] of 1", summary, re.M), summary
    assert_speed_recorded(summary)


def assert_speed_recorded(summary):
    """The summary says how fast the machine ran a fixed loop over the benchmark (common.speed_line)."""
    found = re.search(r"^machine speed: a fixed loop \(100,000 additions\) took ([\d.]+) ms at the fastest,"
                      r" median ([\d.]+), max ([\d.]+), over (\d+) probes", summary, re.M)
    assert found, summary
    fastest, median, most, count = float(found[1]), float(found[2]), float(found[3]), int(found[4])
    assert 0 < fastest <= median <= most and count >= 2, found[0]


def assert_all_delivered(out):
    for bad in ("INCOMPLETE", "MISSING", "MISMATCH", "Traceback"):
        assert bad not in out, f"{bad} in the output:\n{out[-4000:]}"


def test_spool():
    out = bench("spool.py", "--dir", "/tmp", "--seconds", "0.2", "--deletes", "200", "--runs", "2",
                "--marks-objects", "3000", "--marks-seen", "1000", "--marks-batches", "5", "--marks-batch", "20")
    assert_rows(out, ["case", "put, batch 1", "put, batch 100", "take 100 + done (10000 queued)",
                      "2 putters (batch 10) + 1 taker, delivered"])
    assert re.search(r"RSS growth over 200 deletes .* \+[\d.]+ MB, the Spool .* \+[\d.]+ MB", out), out
    assert_code_recorded(out)
    assert_summary(out, "run", 2, [("put, batch 1", "SQLite FULL /s"), ("", "dirq fsync /s"),
                                   ("", "FULL/dirq"), ("2 putters (batch 10) + 1 taker, delivered", "SQLite FULL /s"),
                                   ("RSS growth, deletes of 1-500 ids", "one ? per id MB"), ("", "Spool MB"),
                                   ("put per result, inbound memory", "messages and memory (format 3), µs/result"),
                                   ("", "messages and marks (format 2), µs/result"),
                                   ("", "messages only, µs/result"), ("", "format 3 / messages only"),
                                   ("", "format 2 / format 3")])
    assert re.search(r"put per result, a spool of 3,000 newest times \(and 1,000 seen ids for format 2\), 5 batches"
                     r" of 20 .*messages and memory \(format 3\) [\d,]+ µs, .* messages only [\d,]+ µs", out), out


def test_icinga2_objects():
    out = bench("icinga2_objects.py", "--objects", "3000", "--runs", "2")
    assert_code_recorded(out)
    for case in ("bridge: results_of + KnownObjects", "baseline: json.loads + frozenset"):
        assert len(re.findall(rf"^run [12] {re.escape(case)}: RSS before \d+ MB, after \d+ MB, peak \d+ MB$",
                              out, re.M)) == 2, out
        assert re.search(rf"^{re.escape(case)}\s+after - before, MB\s+-?\d+\s+-?\d+\s+-?\d+$", out, re.M), out


def test_instructions():
    """The in-process parts once without valgrind, then a count under callgrind (valgrind is
    one of scripts/setup.sh's packages): a few hundred thousand instructions a message."""
    out = bench("instructions.py", "--no-callgrind", "--count", "300", timeout=120)
    assert_code_recorded(out)
    for part in ("subscriber", "writer", "outbound"):
        assert re.search(rf"^{part}: \d+\.\d us of thread CPU a message \(300 messages", out, re.M), out
    written = re.search(r"^outbound: ([\d,]+) bytes written a message", out, re.M)
    assert written and 500 < int(written.group(1).replace(",", "")) < 20_000, out
    for part in ("subscriber", "outbound"):
        out = bench("instructions.py", "--part", part, "--count", "40", "--runs", "1", timeout=300)
        count = re.search(rf"^{part}: instructions a message: this checkout ([\d,]+) \(", out, re.M)
        assert count and 50_000 < int(count.group(1).replace(",", "")) < 5_000_000, out


def test_sequence():
    out = bench("sequence.py", "--count", "2000", "--runs", "2", timeout=60)
    assert_code_recorded(out)
    assert_summary(out, "run", 2, [(case, "µs CPU/msg") for case in (
        "tracker, in order", "tracker, 20% reordered (gaps open and fill)", "outbound put, plain",
        "outbound put, numbered", "stomp.py parses a MESSAGE, bridge headers", "stomp.py parses a MESSAGE, + route_seq",
        "stomp.py's own parse_headers, + route_seq")])


def test_outbound():
    out = bench("outbound.py", "--count", "300", "--runs", "1", "--receipt-count", "100",
                "--tx-batch", "50", "--case-timeout", "30", "--sign", "rsa")
    assert_rows(out, ["1a raw no receipts", "1a+hdr raw, bridge headers", "1b raw receipt each, waited",
                      "1c raw receipt each, 1000 in flight", "1d raw transactions of 50",
                      "1d+hdr raw transactions of 50, the bridge's headers",
                      "1a raw no receipts (mid-run)", "bridge perfdata", "bridge ocsp",
                      "bridge perfdata, signed (rsa)", "1a raw no receipts (at the end)"])
    assert out.count("queue drained afterwards: 300/300 ok") >= 6, out      # 1c, 1d, 1d+hdr, the 3 bridges
    assert "signed: 300/300 ok" in out, out
    assert re.search(r"^bridge perfdata, signed \(rsa\) / bridge perfdata of the same run: median [\d.]+x", out, re.M), out
    assert_figures_recorded(out, ["bridge perfdata", "bridge ocsp"], "x 1a")
    assert_figures_recorded(out, ["bridge perfdata", "bridge ocsp"], "x 1a+hdr")
    assert_figures_recorded(out, ["bridge perfdata", "bridge ocsp"], "x 1d+hdr")
    assert_all_delivered(out)


def test_outbound_on_rabbitmq_split_cores():
    out = bench("outbound.py", "--broker", "rabbitmq", "--split-cores", "--count", "300", "--runs", "1",
                "--receipt-count", "100", "--tx-batch", "50", "--case-timeout", "30", timeout=240)
    assert re.search(r"^RabbitMQ \(rabbitmq_stomp.*\) pid \d+;", out, re.M), out[-3000:]
    split = re.search(r"^split cores: the broker on CPU\(s\) ([\d,]+), the bridges and raw clients on ([\d,]+)$",
                      out, re.M)
    assert split, out[-3000:]
    assert not set(split[1].split(",")) & set(split[2].split(",")), split[0]
    assert_rows(out, ["1a raw no receipts", "1a+hdr raw, bridge headers", "1c raw receipt each, 1000 in flight",
                      "1c+hdr raw receipt each, 1000 in flight, the bridge's headers",
                      "bridge perfdata", "bridge ocsp", "1a raw no receipts (at the end)"])
    assert out.count("queue drained afterwards: 300/300 ok") >= 6, out[-3000:]     # 1c, 1c+hdr, 1d, 1d+hdr, bridges
    assert_figures_recorded(out, ["bridge perfdata", "bridge ocsp"], "x 1a")
    assert_figures_recorded(out, ["bridge perfdata", "bridge ocsp"], "x 1a+hdr")
    assert_figures_recorded(out, ["bridge perfdata", "bridge ocsp"], "x 1c+hdr")
    assert_all_delivered(out)


def test_header_cost():
    out = bench("header_cost.py", "--count", "200", "--runs", "1")
    assert_code_recorded(out)
    for case in ("plain", "bridge", "-group", "-expires", "filterable"):
        assert re.search(rf"^run 1 {re.escape(case)} \(\d+ headers\): [\d,]+ msgs/s, broker \d+ us CPU per message",
                         out, re.M), out
        assert re.search(rf"^{re.escape(case)}\s+msgs/s\s+[\d,]+", out, re.M), out
    assert "bridge: +" in out or "bridge: -" in out, out


def test_outbound_profile():
    out = bench("outbound.py", "--profile", "perfdata", "--count", "300", "--profile-top", "5")
    assert "=== profile perfdata: 300 results in" in out, out
    assert "no longer in the code" not in out, out     # every stage named still exists
    assert_rows(out, ["thread"])
    assert re.search(r"^  publisher #\d+ +broker\.send_stored \(SEND frame\) +300 ", out, re.M), out
    assert re.search(r"^--- thread publisher #\d+: [\d.]+ s profiled ---$", out, re.M), out


def test_inbound():
    out = bench("inbound.py", "--count", "200", "--runs", "1", "--warmup-count", "200", "--hosts", "2",
                "--services", "10", "--ocsp-count", "40", "--ocsp-bridge-count", "40",
                "--extra-prefetch", "20", "--latency-rate", "100", "--latency-seconds", "1",
                "--latency-warmup-seconds", "1",
                "--nagios-latency-rate", "100", "--nagios-latency-seconds", "1",
                "--case-timeout", "40", "--stall-timeout", "10")
    assert_rows(out, ["nagios fifo (baseline)", "nagios+ocsp fifo (baseline)",
                      "raw stomp.py, ack client-individual (baseline)",
                      "raw stomp.py, ack client per prefetch/2 (baseline)", "bridge fifo (alone)",
                      "bridge crdir (alone)", "bridge -> nagios fifo", "bridge -> nagios+ocsp fifo",
                      "nagios crdir (baseline)", "bridge -> nagios crdir",
                      "bridge fifo (alone) prefetch 20", "bridge fifo (alone) again",
                      "latency raw stomp.py (baseline)", "latency fifo (alone)", "latency -> nagios fifo"])
    assert re.search(r"^warm-up \(not reported\): paced 100/s for 1 s, p50 ", out, re.M), out
    for case in ("latency raw stomp\\.py \\(baseline\\)", "latency fifo \\(alone\\)"):     # got all
        assert re.search(rf"^{case} +1 +100 \(\d+\) +100 +100 ", out, re.M), out
    assert_figures_recorded(out, ["bridge fifo (alone)", "bridge -> nagios fifo"], "x raw (client-individual)")
    assert_all_delivered(out)


def test_inbound_profile():
    out = bench("inbound.py", "--profile", "--count", "300", "--warmup-count", "100", "--hosts", "2",
                "--services", "10", "--profile-top", "5")
    assert "=== profile: 300/300 lines in" in out, out
    assert "no longer in the code" not in out, out
    assert re.search(r"^  subscriber #\d+ +spool\.put", out, re.M), out
    assert re.search(r"command_file\.write_lines \(FIFO\) +\d+ ", out), out


def test_soak():
    out = bench("soak.py", "--duration", "20", "--rate", "50", "--services", "40", "--sample-every", "5",
                "--reload-every", "8", "--rotate-every", "10", "--drain-timeout", "60")
    assert "SIGHUP site" in out, out
    assert_rows(out, ["site", "central", "sent (generator)", "delivered (distinct ids at the probe)"])
    assert re.search(r"^lost \(sent, never delivered\) +0$", out, re.M), out
    assert_code_recorded(out)
    assert_summary(out, "window", 3, [("bridges", "site results/s"), ("", "site RSS MB at the end"),
                                      ("", "central fds at the end"), ("", "central CPU us/result")])
    assert_all_delivered(out)


def test_gridscale():
    out = bench("gridscale.py", "--duration", "10", "--warmup", "3", "--sites", "2", "--services", "20",
                "--hosts-per-site", "2", "--rate", "100", "--baseline-count", "500",
                "--drain-timeout", "60", "--stall-timeout", "10")
    assert_rows(out, ["window", "100/s x 10 s", "100/s"])
    assert "**Lost: 0** of 1,300 sent" in out, out
    assert re.search(r"^\| 100/s \| \S.* \d+% \| \S.* \d+% \|$", out[out.index("The busiest thread of each"):], re.M), out
    assert_code_recorded(out)
    assert_summary(out, "window", 3, [("100/s x 10 s", "sent/s"), ("", "injected/s"), ("", "lag p99 ms"),
                                      ("", "bridge us/result")])
    assert_all_delivered(out)


@pytest.mark.parametrize("consumer", ["raw", "raw-fsync"])
def test_gridscale_raw_consumer_baseline(consumer):
    """--consumer raw: benchmarks/raw_central.py in the bridge's place takes every result into
    Nagios, and the report says it is the baseline (raw-fsync: each batch on disk before its
    ack). With --split-cores: the broker and the generators on one half of the CPUs, the
    consumer and Nagios on the other."""
    out = bench("gridscale.py", "--duration", "6", "--warmup", "2", "--sites", "2", "--services", "20",
                "--hosts-per-site", "2", "--rate", "100", "--baseline-count", "500", "--consumer", consumer,
                "--drain-timeout", "60", "--stall-timeout", "10", "--split-cores")
    assert "**Central consumer: the raw stomp.py baseline (benchmarks/raw_central.py), not the bridge**" in out, out
    assert ("fdatasynced before its ack" in out) == (consumer == "raw-fsync"), out
    split = re.search(r"\*\*Split cores\*\* \(--split-cores\): the broker and the generators on CPU\(s\) ([\d,]+),"
                      r" the central consumer and Nagios on ([\d,]+) ", out)
    assert split and not set(split[1].split(",")) & set(split[2].split(",")), out
    assert "**Lost: 0** of 800 sent" in out, out
    assert re.search(r"counters received 800, injected 800", out), out
    assert_all_delivered(out)


def test_reliability():
    out = bench("reliability.py", "--rounds", "1", "--duration", "3", "--rate", "50", "--kills", "1",
                "--only", "broker SIGKILL")
    assert_rows(out, ["scenario", "broker SIGKILL"])
    assert re.search(r"^broker SIGKILL +1 +150 +150 +0 .* [01] +PASS$", out, re.M), out    # [01]: disturbed
    assert_code_recorded(out)
    assert_summary(out, "round", 1, [("broker SIGKILL", "flow back s"), ("", "caught up s"), ("", "lost")])
    assert_all_delivered(out)


def test_inbound_icinga2():
    out = bench("inbound_icinga2.py", "--count", "200", "--runs", "1", "--hosts", "2", "--services", "10", timeout=240)
    assert "bridge -> icinga2 api: median" in out and "bridge -> nagios fifo: median" in out, out[-3000:]
    assert "INCOMPLETE" not in out, out[-3000:]
    assert len(re.findall(r"objects showing the last result (\d+)/\1;", out)) == 2, out[-3000:]
    assert_code_recorded(out)
    assert_summary(out, "run", 1, [("bridge -> nagios fifo", "results/s"), ("", "bridge µs CPU/result"),
                                   ("", "Nagios µs CPU/result"), ("bridge -> icinga2 api", "results/s"),
                                   ("", "results/s, until the last answer"), ("", "Icinga 2 µs CPU/result")])


def test_rabbitmq_publish():
    out = bench("rabbitmq_publish.py", "--count", "300", "--runs", "1", "--crash", timeout=240)
    assert_rows(out, ["transactions", "receipts", "receipts-5000", "receipts-each"])
    assert re.search(r"run 1  receipts +killed at the last receipt: 300 of 300 kept", out), out[-3000:]
    assert re.search(r"^receipts: kept after a kill at the last receipt 300 of 300$", out, re.M), out[-3000:]
    assert_code_recorded(out)
    assert_summary(out, "run", 1, [("transactions", "msgs/s"), ("", "node µs CPU/msg"), ("", "publisher µs CPU/msg"),
                                   ("receipts", "msgs/s"), ("receipts-5000", "msgs/s"), ("receipts-each", "msgs/s")])


def test_scaleout():
    out = bench("scaleout.py", "--runs", "1", "--hosts", "2", "--services", "10", "--rounds", "3", "--unshared",
                timeout=240)
    assert_rows(out, ["1 bridge", "2 bridges", "4 bridges", "1 bridge, no shared file"])
    assert re.search(r"^code: commit [0-9a-f]{40}(\+dirty)?, .*, \d{4}-\d\d-\d\d \d\d:\d\d UTC", out, re.M), out
    assert "lost, out of order, newest not shown or incomplete in 0 of 4 case runs" in out, out[-3000:]
    assert_all_delivered(out)
