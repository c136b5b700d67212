"""Helpers the benchmarks share that tests do not need (those are in tests/sandbox).

A CPU meter over a window, the read-only spool watcher, report formatting and the profile
mode (a cProfile profiler per thread, by public hooks only). Importing it puts the repository
root on sys.path (for msg_nagios_bridge and tests.sandbox).
"""
from __future__ import annotations

import contextlib
import cProfile
import importlib
import io
import os
import pstats
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.sandbox.procfs import CLK_TCK, cpu_seconds  # noqa: E402

POLL = 0.02


# -- process accounting ------------------------------------------------------------------------

def self_cpu() -> float:
    """CPU seconds of this process and its waited-for children."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def tree_cpu() -> float:
    """CPU seconds of this process and of every child it has waited for (a round's servers,
    once stopped, count here rather than as "other")."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_cpu() + children.ru_utime + children.ru_stime


def system_fields():
    """The first 8 counters of the "cpu" line of /proc/stat (clock ticks)."""
    with open("/proc/stat") as handle:
        return [int(x) for x in handle.readline().split()[1:9]]


def system_busy() -> float:
    """CPU seconds all CPUs spent not idle (user+nice+system+irq+softirq+steal)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = system_fields()
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def all_processes():
    """{pid: (name, utime+stime ticks)} of every process (kernel threads too)."""
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as handle:
                    text = handle.read()
            except OSError:
                continue
            head, _, rest = text.rpartition(")")
            fields = rest.split()
            out[int(entry.name)] = (head.partition("(")[2], int(fields[11]) + int(fields[12]))
    return out


# -- the machine's own speed -------------------------------------------------------------------
# The host of a virtual machine may run its CPUs slower for a while (other guests): no process of
# this machine shows it, and every figure of that while is off. On 2026-12-07 a loop of 200,000
# additions took 10.5 ms (6.9-11.9, 60 tries in 15 s): 7 ms or 10.5-11, changing every few
# seconds, with the machine otherwise idle. Each
# Meter times the loop at its start and stop: a case whose loops took more than SLOW_FACTOR
# times the fastest of the benchmark is disturbed too ("slow host").
PROBE_LOOPS = 100_000
SLOW_FACTOR = 1.3
_probes: list = []          # every probe's ms, in order


def speed_probe() -> float:
    """ms of this thread's CPU for PROBE_LOOPS additions in Python (kept for slow/speed_line)."""
    start = time.thread_time()
    total = 0
    for number in range(PROBE_LOOPS):
        total += number
    took = (time.thread_time() - start) * 1000
    _probes.append(took)
    return took


def slow(r) -> bool:
    """Whether a case's loops (a Meter's "probe_ms", the mean of its two) took more than
    SLOW_FACTOR times the fastest loop of this benchmark so far."""
    probe = r.get("probe_ms")
    return probe is not None and probe > SLOW_FACTOR * min(_probes, default=probe)


def slow_why(r) -> str:
    """What made a case slow (slow(r)) in words, for its line in a report."""
    return f"a slow host: its loops took {r['probe_ms']:.1f} ms, the benchmark's fastest {min(_probes):.1f}"


def speed_line() -> str:
    """The probes of this benchmark so far, in one line."""
    if not _probes:
        return "machine speed: not probed"
    return (f"machine speed: a fixed loop ({PROBE_LOOPS:,} additions) took {min(_probes):.1f} ms at the"
            f" fastest, median {statistics.median(_probes):.1f}, max {max(_probes):.1f}, over {len(_probes)}"
            f" probes (two a case); a case whose two took > {SLOW_FACTOR}x the fastest is disturbed (slow host)")


class Meter:
    """CPU seconds over a window: "<group>_cpu" per group of PIDs, "bench_cpu" (this process),
    "other_cpu" (everything else) and "window"; "probe_ms", the machine's speed at the start and
    the stop (speed_probe, outside the window). With ``detail``, also the kernel's share
    ("softirq_cpu", "steal_cpu") and the 3 busiest other processes ("other_top"). The groups
    named in ``with_children`` also count the CPU of their waited-for children; with
    ``bench_children``, "bench_cpu" counts this process's waited-for children too (servers a
    benchmark started and stopped inside the window are then not "other")."""

    def __init__(self, groups, detail: bool = False, with_children=(), bench_children: bool = False):
        self.groups = {name: [p for p in pids if p] for name, pids in groups.items()}
        self.detail, self.with_children = detail, set(with_children)
        self.bench_children = bench_children
        self.probe_start = speed_probe()
        self.t0 = time.monotonic()
        if detail:
            self.procs = all_processes()
            self.fields = system_fields()
        self.start = self._sample()

    def _sample(self):
        sample = {name: sum(cpu_seconds(p, name in self.with_children) for p in pids)
                  for name, pids in self.groups.items()}
        sample["bench"] = tree_cpu() if self.bench_children else self_cpu()
        sample["busy"] = system_busy()
        return sample

    def stop(self) -> dict:
        end = self._sample()
        out = {f"{k}_cpu": end[k] - self.start[k] for k in end if k != "busy"}
        out["other_cpu"] = max(0.0, (end["busy"] - self.start["busy"]) - sum(out.values()))
        out["window"] = time.monotonic() - self.t0
        out["probe_ms"] = (self.probe_start + speed_probe()) / 2
        if not self.detail:
            return out
        fields = [b - a for a, b in zip(self.fields, system_fields())]
        out["softirq_cpu"] = (fields[5] + fields[6]) / CLK_TCK      # irq + softirq
        out["steal_cpu"] = fields[7] / CLK_TCK
        mine = {os.getpid()} | {p for pids in self.groups.values() for p in pids}
        others = []
        for pid, (name, ticks) in all_processes().items():
            before = self.procs.get(pid, (name, 0))[1]     # born in the window: from 0
            if pid not in mine and ticks > before:
                others.append(((ticks - before) / CLK_TCK, f"{name}[{pid}]"))
        others.sort(reverse=True)
        out["other_top"] = others[:3]
        return out


def loadavg() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def fs_type(path: Path) -> str:
    """"<fs type> at <mount point>" of the mount holding ``path``."""
    best, fs = "", "?"
    with contextlib.suppress(OSError), open("/proc/mounts") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) > 2 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, fs = parts[1], f"{parts[2]} at {parts[1]}"
    return fs


def git_commit() -> str:
    """``git rev-parse HEAD`` of the repository, with "+dirty" when the tree differs from it
    (modified or untracked files outside .gitignore); "?" without git."""
    import subprocess

    def git(*argv):
        return subprocess.run(["git", "-C", str(REPO), *argv], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        head = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain"))
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (head or "?") + ("+dirty" if head and dirty else "")


def code_fingerprint() -> str:
    """Which bridge code was measured, and when: the git commit ("+dirty" when the tree differs),
    a hash of the package's .py files as run, and the date (UTC)."""
    import hashlib
    digest = hashlib.sha1()
    for path in sorted((REPO / "msg_nagios_bridge").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"commit {git_commit()}, msg_nagios_bridge/*.py sha1 {digest.hexdigest()[:10]}, {stamp}"


@contextlib.contextmanager
def temp_dir(prefix: str, keep: bool):
    """A fresh temp dir, removed afterwards unless ``keep`` (then its path is printed)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        if keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# -- spool, bridge ----------------------------------------------------------------

class SpoolWatch:
    """Read-only view of a bridge spool: (stored high-water mark, held, dead letters)."""

    def __init__(self, db_path: Path):
        self.db_path = db_path
        self.db = None

    def poll(self):
        if self.db is None:
            path = self.db_path
            if path.is_dir():   # older spool layout: a directory holding spool.db
                path = path / "spool.db"
            if not path.is_file():
                return 0, 0, 0
            try:
                self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                          isolation_level=None, timeout=5.0)
            except sqlite3.Error:
                return 0, 0, 0
        try:
            seq = self.db.execute("SELECT coalesce(max(seq), 0) FROM sqlite_sequence"
                                  " WHERE name = 'messages'").fetchone()[0]
            depth = self.db.execute("SELECT count(*) FROM messages").fetchone()[0]
            dead = self.db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        except sqlite3.Error:
            return 0, 0, 0
        return seq, depth, dead

    def close(self):
        if self.db is not None:
            self.db.close()
            self.db = None


def wait_connected(bridge, timeout=20.0, interval=0.05):
    """Wait until a sandbox bridge process logs "connected to broker"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "connected to broker" in bridge.log_text():
            return
        if bridge.proc.poll() is not None:
            break
        time.sleep(interval)
    raise RuntimeError(f"bridge did not connect:\n{bridge.log_text()[-3000:]}")


# -- report ------------------------------------------------------------------------------------

def rate(r):
    """Messages per second of a case result ({"count", "seconds"})."""
    return r["count"] / r["seconds"] if r.get("seconds") else 0.0


def cpu_us_per(key: str):
    """A summary figure: µs of ``key`` (a Meter's "<group>_cpu") per message of a case result
    ({"count", ...}); None where it was not measured."""
    return lambda r: 1e6 * r[key] / max(1, r["count"]) if key in r else None


def print_table(head, rows):
    """Columns padded to fit; the first left-aligned, the others right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    print(fmt(head))
    print(fmt(["-" * w for w in widths]))
    for row in rows:
        print(fmt(row))


BUSY_SHARE = 0.25      # other processes using more than this share of one CPU disturb a case
BUSY_FLOOR = 0.05      # CPU seconds: /proc counts in 10 ms ticks, one tick in a 30 ms case is not "busy"


def busy_others(r) -> bool:
    """Whether other processes used > 25% of a CPU during a case (a Meter's "other_cpu" over
    its "window"), and more than 0.05 CPU seconds in all (below that it is tick rounding)."""
    other = r.get("other_cpu", 0.0)
    return other > BUSY_FLOOR and other > BUSY_SHARE * r.get("window", r.get("seconds", 0.0))


def disturbed(r) -> bool:
    """Whether other processes were busy during a case (busy_others) or the host ran this
    machine slow (slow)."""
    return busy_others(r) or slow(r)


DISTURBED = f"other processes > 25% of a CPU, or a slow host (a fixed loop > {SLOW_FACTOR}x its fastest)"


INTERLEAVED = "interleaved: each run measures every case once, in order"


def _formatted(value, fmt: str) -> str:
    """``format(value, fmt)``; an integer format given the median of an even count of integers
    (a float such as 13.5) shows it with one decimal."""
    if fmt.endswith("d") and isinstance(value, float):
        fmt = fmt[:-1] + (".0f" if value.is_integer() else ".1f")
    return format(value, fmt)


def print_summary(cases, figures, runs: int, unit: str = "run", how: str = INTERLEAVED):
    """Per case and figure: median, min, max over the runs, and each run's value ("*" marks a
    disturbed run). ``cases`` is {case name: [result dict or None per run]}; ``figures`` is
    [(label, function(result) -> number or None, format)], a figure shown for a case when it
    gives a number for at least one run. Then how many runs were disturbed. A benchmark whose
    repetitions are not interleaved runs names them (``unit``: "round", "window") and says what
    one is (``how``)."""
    head = ("case", "figure", "median", "min", "max", *(f"{unit} {k}" for k in range(1, runs + 1)))
    table = []
    for name, results in cases.items():
        first = True
        for label, value, fmt in figures:
            pairs = [(value(r), disturbed(r)) if r else (None, False) for r in results]
            values = [v for v, _ in pairs if v is not None]
            if not values:
                continue
            per_run = ["-" if v is None else _formatted(v, fmt) + (" *" if busy else "  ")
                       for v, busy in pairs]
            table.append((name if first else "", label, _formatted(statistics.median(values), fmt),
                          _formatted(min(values), fmt), _formatted(max(values), fmt), *per_run))
            first = False
    print(f"\nsummary over {runs} {unit}{'s' if runs != 1 else ''} ({how};"
          f" * = disturbed: {DISTURBED} during it):")
    print_table(head, table)
    busy_runs = sorted({i + 1 for results in cases.values() for i, r in enumerate(results)
                        if r and disturbed(r)})
    measured = [r for results in cases.values() for r in results if r]
    slow_ones = sum(map(slow, measured))
    if unit != "run":
        print(f"disturbed {unit}s ({DISTURBED} during the {unit}):"
              f" {sum(map(disturbed, measured))} of {len(measured)} ({slow_ones} by a slow host)")
    else:
        print(f"disturbed runs ({DISTURBED} during a case): {len(busy_runs)} of {runs}"
              + (f" (run {', '.join(map(str, busy_runs))}; {sum(map(disturbed, measured))} of"
                 f" {len(measured)} case measurements, {slow_ones} by a slow host)" if busy_runs else ""))
    print(speed_line())


def summary_text(*args, **kwargs) -> str:
    """What print_summary(*args, **kwargs) prints, as text (for a doc section)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_summary(*args, **kwargs)
    return out.getvalue().strip("\n")


# -- profile mode ------------------------------------------------------------------------------

class ThreadProfiles:
    """A cProfile profiler of its own in every thread started while this is entered, by public
    hooks only: threading.setprofile() gives each new thread a hook whose first call starts that
    thread's profiler (enable() then replaces the hook in that thread). Read ``profiles``
    ({"name #n": cProfile.Profile}) once the threads have ended."""

    def __init__(self):
        self.profiles = {}
        self._lock = threading.Lock()

    def __enter__(self):
        threading.setprofile(self._start_in_thread)
        return self

    def __exit__(self, *exc):
        threading.setprofile(None)

    def _start_in_thread(self, frame, event, arg):
        thread = threading.current_thread()
        profile = cProfile.Profile()
        with self._lock:
            self.profiles[f"{thread.name} #{len(self.profiles) + 1}"] = profile
        profile.enable()


def _key(where: str):
    """How pstats names the function at ``where`` ("package.module:Class.method"): (file,
    first line, name); None if there is no such function (any more)."""
    module, _, path = where.partition(":")
    try:
        function = importlib.import_module(module)
        for name in path.split("."):
            function = getattr(function, name)
        code = function.__code__
    except (ImportError, AttributeError):
        return None
    return code.co_filename, code.co_firstlineno, code.co_name


def _stats(profile):
    stats = pstats.Stats(profile, stream=io.StringIO())
    return stats if stats.total_calls else None


def print_stages(profiles: dict, stages, elapsed: float, width: int = 44):
    """Where each thread's wall time went, by named public functions: ``stages`` is
    [(label, "package.module:Class.method")]; each row is cProfile's count and cumulative time
    of that function in that thread (its own time, what it called, and its waits)."""
    keys = [(label, _key(where)) for label, where in stages]
    missing = [where for (label, key), (_, where) in zip(keys, stages) if key is None]
    if missing:
        print(f"\n(no longer in the code, not shown: {', '.join(missing)})")
    print(f"\nwall time per stage and thread (cProfile cumulative; timed window {elapsed:.2f} s):")
    print(f"  {'thread':28} {'stage':{width}} {'calls':>7} {'total s':>8} {'% wall':>7} {'mean ms':>8}")
    for thread, profile in sorted(profiles.items()):
        stats = _stats(profile)
        if stats is None:
            continue
        rows = [(label, stats.stats[key]) for label, key in keys if key in stats.stats]
        for label, (_, calls, _, cumulative, _) in sorted(rows, key=lambda row: -row[1][3]):
            print(f"  {thread[:28]:28} {label:{width}} {calls:7d} {cumulative:8.3f}"
                  f" {100 * cumulative / elapsed:6.1f}% {1000 * cumulative / max(calls, 1):8.3f}")


def print_profiles(profiles: dict, top: int):
    """The ``top`` functions by own time of each thread's profile."""
    for name, profile in sorted(profiles.items()):
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out)
        if not stats.total_calls:
            continue
        print(f"\n--- thread {name}: {stats.total_tt:.2f} s profiled ---")
        stats.sort_stats("tottime").print_stats(top)
        text = out.getvalue()
        print(text[text.find("   ncalls"):].rstrip())


def write_doc_section(path: Path, name: str, text: str) -> None:
    """Replace the part of ``path`` between ``<!-- BEGIN name -->`` and ``<!-- END name -->``
    with ``text`` (appending the markers if absent), so several tools share one page."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    page = path.read_text() if path.exists() else ""
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in page and end in page:
        head, rest = page.split(begin, 1)
        page = head + block + rest.split(end, 1)[1]
    else:
        page = page.rstrip() + ("\n\n" if page else "") + block + "\n"
    path.write_text(page)


@contextlib.contextmanager
def on_cpus(cpus):
    """Processes started inside run on ``cpus`` (None: wherever they like): a child inherits the
    affinity of the thread that starts it, and so do the threads it starts."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def split_cores(args):
    """--split-cores: (far, near) CPU sets, the first and second half of this process's CPUs, or
    (None, None). Far: what runs on other machines in MSG (the broker; gridscale's generators, the
    sites' bridges); near: the bridge measured (or the raw client standing in for it), and its
    Nagios."""
    if not args.split_cores:
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--split-cores needs at least 2 CPUs")
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])
