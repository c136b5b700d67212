"""Loss accounting's cost in-process (docs/loss-accounting.md): CPU per message of the receiver's
tracker (note_batch and saving the changed state, per batch of 100) and of the outbound spool's
put with and without numbering (batches of 500). Median and range of 5 runs, process CPU time.

    .venv/bin/python benchmarks/sequence.py
"""
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from msg_nagios_bridge.inbound.sequence import Tracker  # noqa: E402
from msg_nagios_bridge.model import Message  # noqa: E402
from msg_nagios_bridge.spool import Spool  # noqa: E402




def tracker_run(n=100_000, batch=100, reorder=False):
    t = Tracker()
    heads = []
    for i in range(n):
        seq = i + 1
        if reorder and i % 10 == 5:
            seq = i + 2
        elif reorder and i % 10 == 6:
            seq = i
        heads.append(({"persistent": "true", "nagios_host": "n", "site": "s", "route": "central",
                       "route_epoch": "0123456789abcdef", "route_seq": str(seq), "result_id": "x"}, None))
    start = time.process_time()
    for k in range(0, n, batch):
        t.note_batch(heads[k:k + batch], 1.0)
        st = t.unsaved(); t.saved(st)
    return (time.process_time() - start) / n * 1e6



def put_run(numbered, n=20_000, batch=500):
    with tempfile.TemporaryDirectory() as d:
        return _put_run(d, numbered, n, batch)


def _put_run(d, numbered, n, batch):
    s = Spool(os.path.join(d, "s.sqlite"))
    msgs = [Message(f"id{i:08d}", "/topic/x.y", {"persistent": "true", "content-type": "text/plain", "site": "S",
            "role": "site", "nagios_host": "n", "host": f"h{i%10}", "metric": "m", "status": "OK",
            "state_type": "HARD", "result_id": f"r{i}", "check_time": "1", "route": "central"}, b"x" * 300) for i in range(n)]
    start = time.process_time()
    for k in range(0, n, batch):
        s.put(msgs[k:k + batch], numbered=numbered)
    used = time.process_time() - start
    s.close()
    return used / n * 1e6



for name, fn in (("tracker, in order", lambda: tracker_run()),
                 ("tracker, 20% reordered (gaps open and fill)", lambda: tracker_run(reorder=True)),
                 ("outbound put, plain", lambda: put_run(False)),
                 ("outbound put, numbered", lambda: put_run(True))):
    runs = [fn() for _ in range(5)]
    print(f"{name:45s} median {statistics.median(runs):6.2f} us/msg (min {min(runs):.2f}, max {max(runs):.2f}; 5 runs)")
