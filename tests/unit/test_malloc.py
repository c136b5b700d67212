"""The daemon's RSS stays flat while a large hash table is rebuilt on new threads."""
import json
import subprocess
import sys
from pathlib import Path

from msg_nagios_bridge.daemon.malloc import keep_large_blocks_mapped
from tests.sandbox.procfs import smaps_rss_by_kind

REPO = Path(__file__).resolve().parents[2]

# Subscribers come and go (a reload starts a new thread while the old one still ends), each adding
# ids to one bounded set of recent ids (its 8 MB table is rebuilt as the oldest ids are dropped)
# beside allocations of its own. Prints VmRSS (MB) after each subscriber, the first once the memory
# is full. The subscriber kept such a set until its memory moved into the spool; the allocator
# behaviour it showed holds for any large table that threads take turns rebuilding.
CHURN = """
import collections, json, sys, threading, time
from msg_nagios_bridge.daemon.malloc import keep_large_blocks_mapped
from tests.sandbox.procfs import rss_mb
class RecentIds:
    def __init__(self, size=200_000):
        self.size, self.order, self.ids = size, collections.deque(), set()
    def add(self, item):
        self.ids.add(item)
        self.order.append(item)
        if len(self.order) > self.size:
            self.ids.discard(self.order.popleft())
if sys.argv[1] == "fixed":
    assert keep_large_blocks_mapped()
recent, added, samples = RecentIds(), [0], []
def subscriber(count, ended):
    kept = []
    for i in range(count):
        recent.add("id:%032d" % added[0])
        added[0] += 1
        if i % 1000 == 0:
            kept.append(bytearray(20000))
    ended.wait()
previous = None
for phase in range(10):
    ended = threading.Event()
    threading.Thread(target=subscriber, args=(350_000, ended), daemon=True).start()
    while added[0] < (phase + 1) * 350_000:
        time.sleep(0.01)
    if previous is not None:
        previous.set()
    previous = ended
    samples.append(rss_mb())
print(json.dumps(samples))
"""


def churn(mode):
    out = subprocess.run([sys.executable, "-c", CHURN, mode], cwd=REPO, capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout)


def test_the_mmap_threshold_can_be_fixed_here():
    assert keep_large_blocks_mapped(), "this project's machines run glibc: mallopt must take it"


def test_rss_stays_flat_while_subscribers_rebuild_the_recent_id_memory():
    """Regression (90-min soak, 2026-11-29): the central bridge's RSS stepped up 8 MB at each
    rebuild of the recent-id memory's table (63, 71, 79, 87 MB), as glibc kept freed large
    blocks in the arenas of the threads that had used them."""
    fixed = churn("fixed")
    assert max(fixed) - fixed[0] < 20, f"RSS (MB) after each subscriber: {fixed}"
    # The control: without the fix the same churn does step up (else the test proves nothing).
    plain = churn("plain")
    assert max(plain) - plain[0] >= 20, f"RSS (MB) without the fix: {plain}: the churn no longer shows the growth"


# Threads that each keep 2,000 small blocks (below the mmap threshold, so from their arena) and
# print the process's resident memory by kind while they still hold them.
THREADS_ALLOCATE = """
import json, os, sys, threading
from msg_nagios_bridge.daemon.malloc import use_one_arena
from tests.sandbox.procfs import rss_by_kind
if sys.argv[1] == "one":
    assert use_one_arena()
allocated, done = threading.Barrier(5), threading.Event()
def work():
    kept = [bytearray(1000) for _ in range(2000)]
    allocated.wait()
    done.wait()
threads = [threading.Thread(target=work) for _ in range(4)]
for thread in threads:
    thread.start()
allocated.wait()
print(json.dumps(rss_by_kind(os.getpid())))
done.set()
"""


def threads_allocate(mode):
    out = subprocess.run([sys.executable, "-c", THREADS_ALLOCATE, mode], cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def test_one_arena_keeps_every_threads_allocations_in_the_main_heap():
    """use_one_arena, and the test's way of seeing thread arenas (tests/sandbox/procfs.py)."""
    plain = threads_allocate("plain")
    assert plain["thread_arenas"] >= 4, f"threads without the setting: {plain}: thread arenas not seen"
    one = threads_allocate("one")
    assert one["thread_arenas"] == 0 and one["heap"] > plain["heap"], (plain, one)


SMAPS = """\
{start:x}-{end:x} rw-p 00000000 00:00 0
Rss:                {rss} kB
{end:x}-{reserve_end:x} {reserve} 00000000 00:00 0
Rss:                   0 kB
"""
BOUNDARY = 0x7F6094000000       # a multiple of 64 MiB


def test_only_a_mapping_shaped_as_a_glibc_thread_heap_counts_as_a_thread_arena():
    """Regression (CI, 2026-12-06): two merged Python object arenas, 2 MiB that happened to start
    on a 64 MiB boundary, were counted as a thread arena and failed the daemon's arena test."""
    heap = SMAPS.format(start=BOUNDARY, end=BOUNDARY + (2036 << 10), rss=2036, reserve="---p",
                        reserve_end=BOUNDARY + (64 << 20))
    assert smaps_rss_by_kind(heap)["thread_arenas"] == 1.99
    merged_object_arenas = SMAPS.format(start=BOUNDARY, end=BOUNDARY + (2 << 20), rss=2048, reserve="rw-p",
                                        reserve_end=BOUNDARY + (3 << 20))
    assert smaps_rss_by_kind(merged_object_arenas) == {"heap": 0, "thread_arenas": 0, "anon": 2.0, "file": 0}
    short_reserve = SMAPS.format(start=BOUNDARY, end=BOUNDARY + (2 << 20), rss=2048, reserve="---p",
                                 reserve_end=BOUNDARY + (4 << 20))
    assert smaps_rss_by_kind(short_reserve)["thread_arenas"] == 0
