"""Fault injection, long mode: every scenario of tests/reliability/faults.py, many rounds.

    .venv/bin/python benchmarks/reliability.py [--rounds 5] [--duration 20] [--rate 150]
                                               [--only NAME]... [--broker activemq|rabbitmq]
                                               [--seed N] [--write-doc] [--keep]

Each round builds its world afresh in a temp dir (real ActiveMQ and Nagios on 127.0.0.1, the
bridge as its own process), streams ``--rate`` results/s for ``--duration`` s, injects the
scenario's fault at a random moment, waits for the stream to drain and counts by result id.
Round r of a run with seed S uses seed S + r, so any round can be replayed alone with
RELIABILITY_SEED=S+r in the short mode (tests/reliability/test_faults.py).

Prints one line per round and a table per scenario: rounds, sent, lost, duplicates, the times
to recover (median and worst), how many rounds were disturbed. ``--write-doc`` puts the table
into docs/RELIABILITY.md. Exits 1 if any round lost a result. ``--broker rabbitmq`` runs the
scenarios about the broker itself (faults.BROKER_SCENARIOS) on RabbitMQ nodes instead, and
writes its own table.

A round is the repetition (``--runs`` is another name for ``--rounds``; the default 5 gives
>= 3): a summary gives per scenario the median, min and max over its rounds of the times to
recover, the duplicates and the losses, and each round's value, with "*" on a round during
which other processes used more than a quarter of a CPU (benchmarks/common.py's Meter; the
round's own servers are this process's children and count as its own). The code fingerprint
(commit, +dirty, a hash of the package, the date) is printed at the start and written into the
doc section.
"""
from __future__ import annotations

import argparse
import datetime
import os
import random
import signal
import statistics
import sys
import time

from common import (REPO, Meter, code_fingerprint, disturbed, loadavg, print_summary,
                    print_table, summary_text, temp_dir, write_doc_section)

from tests.reliability import faults  # noqa: E402  (common put the repository on sys.path)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", "--runs", type=int, default=5,
                        help="rounds per scenario: the repetitions (default 5)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of traffic per round")
    parser.add_argument("--rate", type=float, default=150.0, help="results per second")
    parser.add_argument("--kills", type=int, default=3, help="bridge kill -9s per round")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help=f"a scenario (repeatable); one of: {', '.join(faults.SCENARIOS)}")
    parser.add_argument("--broker", choices=("activemq", "rabbitmq"), default="activemq",
                        help="the brokers' kind; rabbitmq runs only the scenarios about the broker")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--write-doc", action="store_true", help="write the table into docs/RELIABILITY.md")
    parser.add_argument("--keep", action="store_true", help="keep the temp dirs")
    return parser.parse_args()


def seconds(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{statistics.median(values):.1f} / {max(values):.1f}"


def summarise(name, rounds):
    """The table's row of a scenario; ``rounds``: [{"outcome": Outcome, Meter figures}]."""
    outcomes = [r["outcome"] for r in rounds]
    lost = sum(o.lost for o in outcomes)
    dups = [o.duplicated for o in outcomes]
    verdict = "PASS" if all(o.ok for o in outcomes) else "FAIL"
    return [name, len(outcomes), sum(o.sent for o in outcomes), sum(o.delivered for o in outcomes),
            lost, f"{sum(dups)} ({min(dups)}-{max(dups)})" if dups else "-",
            "yes" if outcomes and outcomes[0].duplicates_allowed else "no",
            seconds(o.flow_back_s for o in outcomes), seconds(o.caught_up_s for o in outcomes),
            sum(map(disturbed, rounds)), verdict]


HEAD = ["scenario", "rounds", "sent", "delivered", "lost", "duplicates (min-max)", "dups allowed",
        "flow back s (median / worst)", "caught up s (median / worst)", "disturbed rounds", "verdict"]
SUMMARY_FIGURES = [
    ("flow back s", lambda r: r["outcome"].flow_back_s, ".1f"),
    ("caught up s", lambda r: r["outcome"].caught_up_s, ".1f"),
    ("duplicates", lambda r: r["outcome"].duplicated, "d"),
    ("lost", lambda r: r["outcome"].lost, "d"),
]


def summary_args(cases, args):
    """print_summary's arguments for ``cases`` ({scenario: [round result or None]})."""
    return (cases, SUMMARY_FIGURES, args.rounds), dict(
        unit="round", how=f"each round a fresh world; round r has seed {args.seed} + r - 1")


def markdown(rows, notes, args, started, elapsed, code, cases):
    lines = [f"Run on {started:%Y-%m-%d %H:%M} UTC in {elapsed / 60:.0f} min:"
             f" `python benchmarks/reliability.py {' '.join(sys.argv[1:])}`",
             f"({args.rounds} rounds per scenario, {args.duration:g} s at {args.rate:g} results/s"
             f" each, seed {args.seed}, {args.broker}; {code}; load average at the end {loadavg()}).",
             "", "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    lines += ["", "*flow back*: from the fault's start until a result sent after it arrived;"
              " *caught up*: from the fault's end until every result sent before that end had"
              " arrived. Inbound times come from nagios.log (1 s resolution). *disturbed*: other"
              " processes used more than a quarter of a CPU during the round.", "",
              "Per scenario over its rounds (median, min, max, each round):", "", "```"]
    positional, keywords = summary_args(cases, args)
    lines += [summary_text(*positional, **keywords), "```", ""]
    if notes:
        lines += ["What the rounds noted:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines)


def main():
    args = parse_args()
    args.seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    known = list(faults.SCENARIOS) if args.broker == "activemq" else list(faults.BROKER_SCENARIOS)
    names = args.only or known
    unknown = [n for n in names if n not in known]
    if unknown:
        sys.exit(f"unknown scenario(s) on {args.broker}: {unknown}; known: {known}")
    params = faults.Params(duration=args.duration, rate=args.rate, kills=args.kills, broker=args.broker)
    started, t0 = datetime.datetime.now(datetime.timezone.utc), time.monotonic()
    code = code_fingerprint()           # at the start: each round's bridge runs the code of then
    print(f"code: {code}; seed {args.seed}; load average at the start {loadavg()}", flush=True)
    rows, notes, failed, cases = [], [], False, {}
    for name in names:
        cases[name] = []
        for round_no in range(args.rounds):
            seed = args.seed + round_no
            # The round's servers are children of this process, stopped and waited for inside
            # the round: with bench_children their CPU is the round's own, not "other".
            meter = Meter({}, bench_children=True)
            with temp_dir("reliability-", args.keep) as tmp:
                try:
                    outcome = faults.run(name, tmp, seed, params)
                except Exception as exc:  # noqa: BLE001 - a broken round is reported, not hidden
                    print(f"{name} round {round_no} (seed {seed}): ERROR {exc}", flush=True)
                    notes.append(f"{name}, seed {seed}: the round could not run: {exc}")
                    failed = True
                    cases[name].append(None)
                    continue
            result = {**meter.stop(), "outcome": outcome}
            cases[name].append(result)
            print(f"round {round_no} seed {seed}: {'ok  ' if outcome.ok else 'FAIL'} {outcome.line()}"
                  + (f" (disturbed: other processes {result['other_cpu']:.0f} CPU s in"
                     f" {result['window']:.0f} s)" if disturbed(result) else ""), flush=True)
            if not outcome.ok:
                failed = True
                notes.append(f"{name}, seed {seed}: {outcome.line()}; lost e.g. {outcome.lost_sample}")
            elif outcome.notes and round_no == 0:
                notes.append(f"{name}: {outcome.notes}")
        rows.append(summarise(name, [r for r in cases[name] if r]))
    print()
    print_table(HEAD, rows)
    positional, keywords = summary_args(cases, args)
    print_summary(*positional, **keywords)
    if args.write_doc:
        text = markdown(rows, notes, args, started, time.monotonic() - t0, code, cases)
        write_doc_section(REPO / "docs" / "RELIABILITY.md",
                          "faults" if args.broker == "activemq" else "faults-rabbitmq", text)
        print(f"\nwritten to {REPO / 'docs' / 'RELIABILITY.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    os.chdir(REPO)
    # SIGTERM unwinds like Ctrl-C, so every round's servers are stopped by their finally blocks.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
