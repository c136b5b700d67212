"""Memory of reading Icinga 2's object list: an object at a time into KnownObjects (the bridge)
against the whole answer parsed into a set of names (the baseline, the bridge before ca670de).

    .venv/bin/python benchmarks/icinga2_objects.py [--objects 500000] [--runs 3]

Writes a /v1/objects/services answer of --objects services (names as a grid site's, 2,000 per
host) into a temp file, then, --runs times and interleaved, reads it in a fresh process per
case (so each starts from the same RSS) and prints that process's RSS before reading, after
(the list kept, the answer gone) and at its peak (VmHWM). No server: the answer is the same
bytes Icinga sends, read through the same code path as a response (read(n) in 64 KB pieces).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import code_fingerprint, loadavg, print_table, temp_dir  # noqa: E402

CASES = ("bridge: results_of + KnownObjects", "baseline: json.loads + frozenset")


def write_answer(path: Path, count: int) -> None:
    with open(path, "w") as out:
        out.write('{"results":[')
        for i in range(count):
            entry = {"attrs": {"host_name": f"host{i // 2000}.site{i // 2000}.example.org",
                               "name": f"org.example.service-{i % 2000}"},
                     "joins": {}, "meta": {}, "name": f"host{i // 2000}!{i % 2000}", "type": "Service"}
            out.write(("," if i else "") + json.dumps(entry))
        out.write("]}")


def rss_fields() -> dict:
    with open("/proc/self/status") as status:
        return {line.split(":")[0]: int(line.split()[1]) / 1024 for line in status
                if line.startswith(("VmRSS:", "VmHWM:"))}


def read_case(case: str, path: str) -> None:
    """In a fresh process: read the answer as ``case`` does; print the figures as JSON."""
    from msg_nagios_bridge.cores.icinga2.api import results_of
    from msg_nagios_bridge.cores.icinga2.objects import object_keys
    from msg_nagios_bridge.inbound.compact import KnownObjects
    before = rss_fields()["VmRSS"]
    with open(path, "rb") as answer:
        if case == CASES[0]:
            objects = KnownObjects(object_keys("services", results_of(answer.read)))
        else:
            parsed = json.loads(answer.read())
            objects = frozenset((e["attrs"]["host_name"], e["attrs"]["name"]) for e in parsed["results"])
            del parsed
    after = rss_fields()
    print(json.dumps({"objects": len(objects), "before": before, "after": after["VmRSS"], "peak": after["VmHWM"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=500_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--read-case", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read_case:
        read_case(*args.read_case)
        return
    print(f"code: {code_fingerprint()}", flush=True)
    with temp_dir("mnb-icinga2-objects-", args.keep) as tmp:
        path = tmp / "services.json"
        write_answer(path, args.objects)
        print(f"{args.objects:,} services, answer {path.stat().st_size / 1e6:,.0f} MB; {args.runs} runs,"
              f" each case in a fresh process", flush=True)
        figures = {case: [] for case in CASES}
        for run in range(1, args.runs + 1):
            for case in CASES:
                out = subprocess.run([sys.executable, __file__, "--read-case", case, str(path)],
                                     capture_output=True, text=True, timeout=600, check=True)
                got = json.loads(out.stdout.splitlines()[-1])
                assert got["objects"] == args.objects, got
                figures[case].append(got)
                print(f"run {run} {case}: RSS before {got['before']:.0f} MB, after {got['after']:.0f} MB,"
                      f" peak {got['peak']:.0f} MB", flush=True)
    rows = []
    for case, runs in figures.items():
        for label in ("after", "peak"):
            values = [r[label] - r["before"] for r in runs]
            rows.append((case, f"{label} - before, MB", f"{statistics.median(values):.0f}",
                         f"{min(values):.0f}", f"{max(values):.0f}"))
    print(f"\nsummary over {args.runs} runs (memory is little disturbed by other load; load average"
          f" at the end {loadavg()}):")
    print_table(("case", "figure", "median", "min", "max"), rows)


if __name__ == "__main__":
    main()
