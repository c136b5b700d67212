"""Loss accounting's cost in-process (docs/loss-accounting.md): CPU per message of the receiver's
tracker (note_batch and saving the changed state, per batch of 100) and of the outbound spool's
put with and without numbering (batches of 500), and of stomp.py parsing a MESSAGE frame.

    .venv/bin/python benchmarks/sequence.py [--runs 5] [--count N]

Each case runs --runs times in a row (not interleaved), --count messages a run (default 100,000
for the tracker, 20,000 for the others); measured is this process's CPU time per message.
Printed: the commit measured, then per case the median, min and max over the runs and each
run's value (common.print_summary), "*" on a run during which other processes used more than a
quarter of a CPU (the machine's busy CPU less this process's, over the run's wall time), or
the host ran the machine slow (common.slow).
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Meter, code_fingerprint, print_summary  # noqa: E402
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
                       "route_seq": f"0123456789abcdef:{seq}", "result_id": "x"}, None))
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



_FRAME_HEADERS = {
    "persistent": "true", "content-type": "text/plain", "site": "SITE_A", "role": "site",
    "nagios_host": "nagios.site-a.org", "host": "ce01.site-a.org", "metric": "org.sam.CE-JobSubmit",
    "status": "OK", "state_type": "HARD", "result_id": "0123456789abcdef0123456789abcdef",
    "check_time": "1764705997", "route": "central", "subscription": "0", "priority": "4",
    "destination": "/topic/grid.probe.metricOutput.EGEE.site.SITE_A", "timestamp": "1764705997000",
    "message-id": "ID:host-1234-5678-1:1:1:1:1", "ack": "ID:host-1234-5678-1:1:1:1:1", "expires": "0"}


def stomp_parse_run(numbered, n=20_000, shipped=False):
    """stomp.py parsing a MESSAGE frame as the broker delivers it to the receiver: the cost of
    one more header on the wire. The bridge's parse_headers (broker/connection.py), or with
    ``shipped`` stomp.py's own (the baseline)."""
    from stomp import utils
    from msg_nagios_bridge.broker import connection
    utils.parse_headers = SHIPPED_PARSE_HEADERS if shipped else connection._parse_headers
    headers = dict(_FRAME_HEADERS, route_seq="0123456789abcdef:123456") if numbered else _FRAME_HEADERS
    frame = ("MESSAGE\n" + "".join(f"{k}:{v}\n" for k, v in headers.items()) + "\n" + "x" * 300).encode()
    start = time.process_time()
    for _ in range(n):
        utils.parse_frame(frame)
    utils.parse_headers = connection._parse_headers
    return (time.process_time() - start) / n * 1e6


def shipped_parse_headers():
    """stomp.py's parse_headers as shipped: its utils module loaded afresh (the package's is
    patched by broker/connection.py once that is imported)."""
    import importlib.util
    import stomp.utils
    spec = importlib.util.spec_from_file_location("stomp_utils_as_shipped", stomp.utils.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parse_headers


SHIPPED_PARSE_HEADERS = shipped_parse_headers()

# name: (function(n) -> µs CPU per message, default n)
CASES = {"tracker, in order": (tracker_run, 100_000),
         "tracker, 20% reordered (gaps open and fill)": (lambda n: tracker_run(n, reorder=True), 100_000),
         "outbound put, plain": (lambda n: put_run(False, n), 20_000),
         "outbound put, numbered": (lambda n: put_run(True, n), 20_000),
         "stomp.py parses a MESSAGE, bridge headers": (lambda n: stomp_parse_run(False, n), 20_000),
         "stomp.py parses a MESSAGE, + route_seq": (lambda n: stomp_parse_run(True, n), 20_000),
         "stomp.py's own parse_headers, + route_seq": (lambda n: stomp_parse_run(True, n, shipped=True), 20_000)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--count", type=int, default=None,
                        help="messages a run of every case (default: 100,000 for the tracker, 20,000 for the others)")
    args = parser.parse_args()
    print(f"code: {code_fingerprint()}", flush=True)
    results = {}
    for name, (run, count) in CASES.items():
        results[name] = []
        for _ in range(args.runs):
            meter = Meter({})       # other_cpu: the machine's busy CPU less this process's
            us = run(args.count or count)
            results[name].append({"us": us, **meter.stop()})
    print_summary(results, [("µs CPU/msg", lambda r: r["us"], ".2f")], args.runs,
                  how="a case's runs one after another")
    return 0


if __name__ == "__main__":
    sys.exit(main())
