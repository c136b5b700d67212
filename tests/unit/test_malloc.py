"""The daemon's RSS stays flat while a large hash table is rebuilt on new threads."""
import json
import subprocess
import sys
from pathlib import Path

from msg_nagios_bridge.daemon.malloc import keep_large_blocks_mapped

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
