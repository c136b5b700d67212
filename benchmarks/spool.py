"""Spool throughput: SQLite WAL synchronous=FULL (the Spool) against the baselines, same run.

    python benchmarks/spool.py [--dir DIR] [--seconds S] [--deletes N] [--runs 3]

Baselines: a minimal fsyncing directory queue in the style of python-dirq's QueueSimple (one
file per message: write a temp file, fsync, rename into place, fsync the directory), and
SQLite with synchronous=NORMAL, which is faster but not durable against power loss (reference
only). Messages are 300-byte bodies. Each case runs for at most --seconds, so the whole run is
bounded (about 12 cases x S plus set-up). Run it on the file system the spool will live on:
on tmpfs fsync costs nothing and the comparison means little.

Then memory: RSS growth of a fresh process after --deletes deletes of 1-500 ids each (random
sizes, from a thread, as the publisher does), by the Spool against the Spool's earlier delete,
which wrote one "?" per id (so each batch size was a statement of its own, and sqlite3 keeps up
to 128 compiled per connection: the site bridge's slow RSS rise in the soak).

Then the inbound memory's share of a subscriber's ``put``: a spool holding --marks-objects objects'
newest times, --marks-batches batches of --marks-batch results each (a 300-byte message and its
object's memory, objects taken round robin over 250 sites as the grid sends them), from a copy of
the same starting file for each variant: the memory of spool format 3 (one row per object with
its newest time and the tags of that time: what the subscriber writes), the memory of format 2
(the newest times and --marks-seen seen ids as marks, with their time index: what the
subscriber wrote before), and the messages only (the baseline). Mean µs of ``put`` per result,
time waiting for the disk included.

Every case (and the memory case) is measured --runs times (default 3), interleaved: run 1
measures every case once, then run 2, and so on. The tables show medians (the ratios are the
medians of each run's own ratio); then a summary gives per case the median, min and max and each
run's value, with "*" on a run during which other processes used more than a quarter of a CPU
(benchmarks/common.py's Meter and disturbed). The header records the commit and the date. With
the defaults a run takes about 40 s, so --runs 3 about 2 minutes.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Meter, code_fingerprint, fs_type, loadavg, print_summary  # noqa: E402

from msg_nagios_bridge.inbound.judgement import memory_tag  # noqa: E402
from msg_nagios_bridge.model import Message  # noqa: E402
from msg_nagios_bridge.spool import Spool, encode  # noqa: E402

from tests.sandbox.procfs import rss_mb  # noqa: E402

BODY = b"m" * 300
HEADERS = {"persistent": "true", "content-type": "text/plain"}
DEST = "/topic/grid.probe.metricOutput.EGEE.ngi.example"
DRAIN_DEPTH = 10_000


class DirQueue:
    """The smallest durable one-file-per-message queue: the directory-queue baseline.

    File names sort by time, so listing gives oldest first. Same API subset as Spool.
    """

    def __init__(self, path: str) -> None:
        self.path, self.tmp = path, os.path.join(path, "tmp")
        os.makedirs(self.tmp, mode=0o700)
        self._lock = threading.Lock()
        self._leased: set = set()
        self._seq = 0

    def _fsync_dir(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)

    def put(self, messages, durable: bool = True) -> int:
        with self._lock:
            for message in messages:
                self._seq += 1
                name = f"{time.time_ns():020d}{self._seq:010d}"
                message_id, destination, headers, body, _ = encode(message)
                tmp = os.path.join(self.tmp, name)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.write(fd, f"{message_id}\n{destination}\n{headers}\n".encode() + body)
                if durable:
                    os.fsync(fd)
                os.close(fd)
                os.rename(tmp, os.path.join(self.path, name))
            if durable:
                self._fsync_dir()  # once per batch: the renames become durable together
        return len(messages)

    def take(self, limit: int):
        with self._lock:
            names = sorted(n for n in os.listdir(self.path)
                           if n != "tmp" and n not in self._leased)[:limit]
            entries = []
            for name in names:
                with open(os.path.join(self.path, name), "rb") as f:
                    message_id, destination, headers, body = f.read().split(b"\n", 3)
                entries.append((name, body))
            self._leased.update(names)
        return entries

    def done(self, names) -> None:
        with self._lock:
            for name in names:
                os.unlink(os.path.join(self.path, name))
                self._leased.discard(name)
            self._fsync_dir()

    def close(self) -> None:
        pass


def open_backend(kind: str, path: str):
    if kind == "dirq":
        return DirQueue(path)
    spool = Spool(os.path.join(path, "spool.db"), max_messages=10**8, max_bytes=1 << 40)
    if kind == "sqlite-normal":
        spool._db.execute("PRAGMA synchronous=NORMAL")  # reference only: not power-safe
    return spool


def entry_key(entry):
    return entry[0] if isinstance(entry, tuple) else entry.entry_id


def messages(start: int, count: int):
    return [Message(f"bench-{n}", DEST, HEADERS, BODY) for n in range(start, start + count)]


def bench_put(queue, batch: int, seconds: float) -> float:
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        queue.put(messages(n, batch))
        n += batch
    return n / (time.perf_counter() - started)


def bench_drain(queue, seconds: float) -> float:
    for start in range(0, DRAIN_DEPTH, 1000):  # set-up, not timed
        batch = messages(start, 1000)
        queue.put(batch, durable=False) if isinstance(queue, DirQueue) else queue.put(batch)
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        entries = queue.take(100)
        if not entries:
            break
        queue.done([entry_key(e) for e in entries])
        n += len(entries)
    return n / (time.perf_counter() - started)


def bench_mixed(queue, seconds: float) -> float:
    """Two source threads put batches of 10 while a publisher thread takes 100 and done()s."""
    stop, delivered = threading.Event(), [0]

    def source(k: int) -> None:
        n = k * 10**9
        while not stop.is_set():
            queue.put(messages(n, 10))
            n += 10

    def publisher() -> None:
        while not stop.is_set():
            entries = queue.take(100)
            if entries:
                queue.done([entry_key(e) for e in entries])
                delivered[0] += len(entries)
            else:
                time.sleep(0.001)

    threads = [threading.Thread(target=source, args=(k,)) for k in (1, 2)]
    threads.append(threading.Thread(target=publisher))
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return delivered[0] / (time.perf_counter() - started)


CASES = [
    ("put, batch 1", lambda q, s: bench_put(q, 1, s)),
    ("put, batch 100", lambda q, s: bench_put(q, 100, s)),
    (f"take 100 + done ({DRAIN_DEPTH} queued)", bench_drain),
    ("2 putters (batch 10) + 1 taker, delivered", bench_mixed),
]
KINDS = ["sqlite-full", "dirq", "sqlite-normal"]
MEMORY_CASE = "RSS growth, deletes of 1-500 ids"
MARKS_CASE = "put per result, inbound memory"


def delete_with_one_mark_per_id(spool: Spool, ids) -> None:
    """The Spool's done() before 7851831: the SQL text changes with the number of ids."""
    marks = ",".join("?" * len(ids))

    def work() -> None:
        spool._db.execute(f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE id IN ({marks})",
                          ids).fetchone()
        spool._db.execute(f"DELETE FROM messages WHERE id IN ({marks})", ids)

    with spool._lock:
        spool._write("delete", work)


def statement_memory_worker(kind: str, path: str, deletes: int) -> None:
    """Print this process's RSS growth (MB) over ``deletes`` deletes of 1-500 ids each."""
    spool = Spool(os.path.join(path, "outbound.sqlite"))
    delete = spool.done if kind == "spool" else lambda ids: delete_with_one_mark_per_id(spool, ids)
    sizes = random.Random(1).choices(range(1, 501), k=deletes)
    growth = []

    def run() -> None:
        delete(list(range(1, 11)))      # warm up: the first statement and the page cache
        before = rss_mb(os.getpid())
        for n, size in enumerate(sizes):
            delete(list(range(n * 500, n * 500 + size)))
        growth.append(rss_mb(os.getpid()) - before)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    spool.close()
    print(growth[0])


def statement_memory(scratch: str, deletes: int, run: int) -> dict:
    """RSS growth (MB) of a fresh process per kind of delete; with the Meter's figures (the
    workers are waited-for children, so their CPU is not counted as other processes')."""
    meter = Meter({}, bench_children=True)
    growth = {}
    for kind in ("one-mark-per-id", "spool"):
        path = os.path.join(scratch, f"memory-{kind}-{run}")
        os.makedirs(path)
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-worker", kind, path,
                              str(deletes)], capture_output=True, text=True, timeout=600, check=True)
        growth[kind] = float(out.stdout.split()[-1])
    return {**meter.stop(), **growth}


MARKS_VARIANTS = (("messages and memory (format 3)", "newest"), ("messages and marks (format 2)", "marks"),
                  ("messages only", None))
MARKS_SITES, MARKS_HOSTS_PER_SITE, MARKS_SERVICES_PER_HOST = 250, 20, 100


def marks_objects(count: int):
    """Object keys in the order gridscale.py's generator sends them (Grid.slot, with its names):
    one site after another, each site's services in order, so one batch's objects lie far apart
    in key order, as at the central bridge."""
    keys = []
    for i in range(count):
        site, service = i % MARKS_SITES, (i // MARKS_SITES) % (MARKS_HOSTS_PER_SITE * MARKS_SERVICES_PER_HOST)
        host = site * MARKS_HOSTS_PER_SITE + service // MARKS_SERVICES_PER_HOST
        keys.append(f"ce{host:02d}.remote.org\torg.bench.svc{service % MARKS_SERVICES_PER_HOST:03d}")
    return keys


def random_id(rng: random.Random) -> str:
    """A seen id shaped as the subscriber's dedupe keys (judgement.dedupe_key)."""
    return f"id:{rng.getrandbits(64):016x}:{rng.getrandbits(128):032x}"


def marks_base(scratch: str, keys, seen: int) -> str:
    """The starting spool of the marks case (built once): a newest time for each of ``keys`` in
    both formats' memories, and ``seen`` ids (format 2's marks)."""
    path = os.path.join(scratch, "marks-base", "inbound.sqlite")
    os.makedirs(os.path.dirname(path))
    rng = random.Random(1)
    with Spool(path) as spool:
        for start in range(0, len(keys), 20_000):
            chunk = list(enumerate(keys[start:start + 20_000], start))
            spool.put([], marks=[("newest", key, 1e9 + i * 0.001) for i, key in chunk],
                      newest=[(key, 1e9 + i * 0.001, f"{rng.getrandbits(64):016x}") for i, key in chunk])
        for start in range(0, seen, 20_000):
            spool.put([], marks=[("seen", random_id(rng), 1e9 + i * 0.001)
                                 for i in range(start, min(seen, start + 20_000))])
    return path


def marks_put(base: str, work: str, memory, keys, batches: int, batch: int) -> float:
    """Mean µs of put per result over ``batches`` batches, on a copy of ``base``, with ``memory``
    "newest" (format 3), "marks" (format 2) or None."""
    os.makedirs(work)
    path = os.path.join(work, "inbound.sqlite")
    shutil.copyfile(base, path)
    rng = random.Random(2)
    spent, now, position = 0.0, 2e9, 0
    with Spool(path) as spool:
        for _ in range(batches):
            ids = [random_id(rng) for _ in range(batch)]
            objects = [keys[(position + k) % len(keys)] for k in range(batch)]
            marks = [mark for result_id, obj in zip(ids, objects)
                     for mark in (("seen", result_id, now), ("newest", obj, now))] if memory == "marks" else []
            newest = [(obj, now, memory_tag(result_id)) for result_id, obj in zip(ids, objects)] \
                if memory == "newest" else []
            batch_messages = [Message(result_id, "nagios", {}, BODY) for result_id in ids]
            start = time.perf_counter()
            spool.put(batch_messages, marks=marks, newest=newest)
            spent += time.perf_counter() - start
            spool.done([entry.entry_id for entry in spool.take(batch)])
            position, now = position + batch, now + 0.1
    shutil.rmtree(work)
    return spent / (batches * batch) * 1e6


def marks_cost(scratch: str, base: str, keys, args, run: int) -> dict:
    """One run of every marks variant: {variant: µs per result}, with the Meter's figures."""
    meter = Meter({})
    costs = {name: marks_put(base, os.path.join(scratch, f"marks-{run}-{i}"), memory, keys,
                             args.marks_batches, args.marks_batch)
             for i, (name, memory) in enumerate(MARKS_VARIANTS)}
    return {**meter.stop(), **costs}


def measure(scratch: str, seconds: float, run: int) -> dict:
    """One run of every case against every kind: {case name: {kind: msgs/s, "other_cpu",
    "window"}} (the CPU figures over the case's three kinds)."""
    out = {}
    for name, case in CASES:
        meter = Meter({})
        rates = {}
        for kind in KINDS:
            path = os.path.join(scratch, f"{kind}-{run}-{len(out)}")
            queue = open_backend(kind, path)
            try:
                rates[kind] = case(queue, seconds)
            finally:
                queue.close()
                shutil.rmtree(path)
        out[name] = {**meter.stop(), **rates}
    return out


SUMMARY_FIGURES = [
    ("SQLite FULL /s", lambda r: r.get("sqlite-full"), ",.0f"),
    ("dirq fsync /s", lambda r: r.get("dirq"), ",.0f"),
    ("SQLite NORMAL /s", lambda r: r.get("sqlite-normal"), ",.0f"),
    ("FULL/dirq", lambda r: r["sqlite-full"] / r["dirq"] if "dirq" in r else None, ".1f"),
    ("FULL/NORMAL", lambda r: r["sqlite-full"] / r["sqlite-normal"] if "sqlite-normal" in r else None,
     ".2f"),
    ("one ? per id MB", lambda r: r.get("one-mark-per-id"), "+.1f"),
    ("Spool MB", lambda r: r.get("spool"), "+.1f"),
    *((f"{name}, µs/result", lambda r, name=name: r.get(name), ".0f") for name, _ in MARKS_VARIANTS),
    ("format 3 / messages only", lambda r: r["messages and memory (format 3)"] / r["messages only"]
     if "messages only" in r else None, ".1f"),
    ("format 2 / format 3", lambda r: r["messages and marks (format 2)"] / r["messages and memory (format 3)"]
     if "messages only" in r else None, ".1f"),
]


def report(cases: dict, args) -> None:
    """The tables of the runs in ``cases`` ({case name: [result per run]})."""
    plural = "s" if args.runs != 1 else ""
    print(f"\nmessages/s (300-byte bodies, {args.seconds:g} s per case; medians of {args.runs} run{plural},"
          " ratios: medians of each run's own)\n")
    header = f"| {'case':43} | {'SQLite FULL':>11} | {'dirq fsync':>10} | {'SQLite NORMAL':>13} |" \
             f" {'FULL/dirq':>9} | {'FULL/NORMAL':>11} |"
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for name, _ in CASES:
        full, dirq, normal, per_dirq, per_normal = (
            statistics.median(value(r) for r in cases[name]) for _, value, _ in SUMMARY_FIGURES[:5])
        print(f"| {name:43} | {full:11,.0f} | {dirq:10,.0f} | {normal:13,.0f} |"
              f" {per_dirq:8.1f}x | {per_normal:10.2f}x |")

    memory = cases[MEMORY_CASE]
    marks = [r["one-mark-per-id"] for r in memory]
    spool = [r["spool"] for r in memory]
    print(f"\nRSS growth over {args.deletes:,} deletes of 1-500 ids each (a fresh process each):"
          f" one \"?\" per id (the spool before 7851831) {statistics.median(marks):+.1f} MB,"
          f" the Spool (one JSON array) {statistics.median(spool):+.1f} MB"
          + (f" (medians of {args.runs} runs; ranges {min(marks):+.1f} to {max(marks):+.1f} and"
             f" {min(spool):+.1f} to {max(spool):+.1f} MB)" if args.runs > 1 else ""))
    marks = cases[MARKS_CASE]
    print(f"\nput per result, a spool of {args.marks_objects:,} newest times (and {args.marks_seen:,} seen ids"
          " for format 2),"
          f" {args.marks_batches} batches of {args.marks_batch} (medians of {args.runs} run{plural}): "
          + ", ".join(f"{name} {statistics.median(r[name] for r in marks):,.0f} µs" for name, _ in MARKS_VARIANTS))
    print_summary(cases, SUMMARY_FIGURES, args.runs)
    print(f"load average at the end {loadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=".", help="where to create the scratch directory")
    parser.add_argument("--seconds", type=float, default=2.0, help="time limit per case")
    parser.add_argument("--deletes", type=int, default=5000, help="deletes in the memory case")
    parser.add_argument("--runs", type=int, default=3,
                        help="measure every case this many times, interleaved (default 3)")
    parser.add_argument("--marks-objects", type=int, default=500_000, help="newest times in the marks case")
    parser.add_argument("--marks-seen", type=int, default=200_000, help="seen ids in the marks case (format 2)")
    parser.add_argument("--marks-batches", type=int, default=200, help="batches per variant of the marks case")
    parser.add_argument("--marks-batch", type=int, default=200, help="results per batch in the marks case")
    parser.add_argument("--memory-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        kind, path, deletes = args.memory_worker
        statement_memory_worker(kind, path, int(deletes))
        return
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    code = code_fingerprint()      # before the scratch directory, which may be in the work tree
    scratch = tempfile.mkdtemp(prefix="spool-bench-", dir=args.dir)
    print(f"python {platform.python_version()}, sqlite {__import__('sqlite3').sqlite_version}, "
          f"{os.cpu_count()} CPUs, {platform.machine()}, scratch on "
          f"{fs_type(os.path.realpath(scratch))} ({scratch})")
    print(f"code: {code}")
    print(f"{args.runs} run{'s' if args.runs != 1 else ''}, cases interleaved; load average at the start"
          f" {loadavg()}", flush=True)
    cases = {name: [] for name, _ in CASES}
    cases[MEMORY_CASE] = []
    cases[MARKS_CASE] = []
    try:
        marks_keys = marks_objects(args.marks_objects)
        base = marks_base(scratch, marks_keys, args.marks_seen)
        for run in range(1, args.runs + 1):
            for name, result in measure(scratch, args.seconds, run).items():
                cases[name].append(result)
                print(f"run {run}/{args.runs} {name}: " + ", ".join(
                    f"{kind} {result[kind]:,.0f}/s" for kind in KINDS), flush=True)
            cases[MEMORY_CASE].append(statement_memory(scratch, args.deletes, run))
            cases[MARKS_CASE].append(marks_cost(scratch, base, marks_keys, args, run))
            print(f"run {run}/{args.runs} {MARKS_CASE}: " + ", ".join(
                f"{name} {cases[MARKS_CASE][-1][name]:,.0f} µs" for name, _ in MARKS_VARIANTS), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report(cases, args)


if __name__ == "__main__":
    main()
