#!/usr/bin/env python3
"""Instructions a result on the bridge's paths, counted by callgrind: the same count at every
run, whatever else the machine does (a benchmark's CPU seconds a result moved by a fifth
between runs on 2026-12-06's machine, more than the changes being measured; on 2026-12-07 the
host itself ran the machine up to 1.8x slower for seconds at a time).

Three parts, each in this process with the bridge's own classes and a real spool on disk. Two
inbound, on the inbound benchmark's payload (10 hosts x 100 services, WLCG records with a site
bridge's headers and those ActiveMQ adds):

- ``subscriber``: Subscriber._handle on batches of 200 messages: judge, store with the
  memory's rows, note the ACK (not sent: there is no broker);
- ``writer``: NagiosWriter.deliver on what the subscriber stored (all 3,000, whatever the
  count), into a FIFO that ``cat`` reads, 500 a batch, then the spool's delete of each batch.

and one outbound, on the outbound benchmark's results (distinct service results, bodies of about
300 bytes, the perfdata bridge's route):

- ``outbound``: perfdata lines parsed, routed, built, encoded and put in the spool (numbered),
  500 a batch as the intake does, then taken, made SEND frames from the stored text (the
  publisher's send_frame_stored) and deleted, as the publisher does once they are receipted.

Each count is (Ir(K) - Ir(0)) / K from two runs under valgrind, one working through K of the
3,000 messages and one through none (both make all of them first), so Python's start, the
imports and the making of the messages cancel out. User space only: the kernel's work for the
fsyncs and the FIFO writes is not counted. ``--against DIR`` counts a checkout of another commit
the same way, in the same run, and prints the ratio.

    .venv/bin/python benchmarks/instructions.py                 # all three parts, this checkout
    .venv/bin/python benchmarks/instructions.py --against /tmp/old   # and another commit's
    .venv/bin/python benchmarks/instructions.py --part subscriber --count 3000 --no-callgrind

``--no-callgrind`` runs each part once, without valgrind, and prints its thread CPU a result
(noisy; the smoke test's mode). Needs valgrind (Debian's package) for the counts.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
MESSAGES = 3000
SUBSCRIBER_BATCH = 200
PARTS = ("subscriber", "writer", "outbound")
OUTBOUND_BATCH = 500        # the intake's piece (outbound/intake.py) and the publisher's transaction


def messages(count: int):
    """The inbound benchmark's messages, with the headers ActiveMQ adds."""
    from inbound import Payload
    out = []
    for i, (body, headers) in enumerate(Payload(count, "instr", 10, 100).messages()):
        stamped = {"content-length": str(len(body)), "expires": "0", "destination": "/queue/instr",
                   "subscription": "0", "priority": "4",
                   "message-id": f"ID\\cinstr-1234-5678-1\\c1\\c1\\c1\\c{i}",
                   "ack": f"ID\\cinstr-1234-5678-1\\c{i}", "timestamp": "1765000000000"}
        stamped.update(headers)
        out.append((stamped, body))
    return out


def bridge_parts(work: Path):
    """Settings, an inbound spool and a subscriber (its ACKs go nowhere) for ``work``."""
    from msg_nagios_bridge import config as config_mod, paths
    from msg_nagios_bridge.daemon import service
    from msg_nagios_bridge.daemon.health import Health
    from msg_nagios_bridge.inbound import policy as policy_mod, subscriber as subscriber_mod
    from msg_nagios_bridge.model import SpooledResults
    from tests.sandbox.bridge import bridge_config, inbound_config

    target = types.SimpleNamespace(command_file=work / "nagios.cmd", check_result_path=work / "checkresults",
                                   dir=work)
    (work / "checkresults").mkdir()
    (work / "bridge.yaml").write_text(bridge_config(work, [1], ocsp=False,
                                                    inbound=inbound_config(target, "/queue/instr")))
    settings = config_mod.load(str(work / "bridge.yaml"))
    os.makedirs(settings.spool.directory, exist_ok=True)
    spool = service.Bridge(settings)._open_spool(paths.inbound_spool_path(settings))
    results = SpooledResults(keep=MESSAGES + 1)     # the writer finds them all, as it does keeping up
    subscriber = subscriber_mod.Subscriber(settings.brokers, settings.inbound, spool, Health(),
                                           policy_mod.Policy(rules=settings.inbound.rules,
                                                             sender_header=settings.inbound.sender_header),
                                           results)
    subscriber.session.broker.ack_all = lambda ids: None
    return settings, spool, results, subscriber


def run_part(part: str, count: int) -> float:
    """Work through ``count`` messages in ``part``; the thread CPU seconds it took."""
    if part == "outbound":
        return run_outbound(count)
    batch = messages(MESSAGES)
    with tempfile.TemporaryDirectory(prefix="mnb-instr-") as tmp:
        work = Path(tmp)
        settings, spool, results, subscriber = bridge_parts(work)
        try:
            if part == "subscriber":
                start = time.thread_time()
                for first in range(0, count, SUBSCRIBER_BATCH):
                    subscriber._handle(batch[first:min(count, first + SUBSCRIBER_BATCH)])
                return time.thread_time() - start
            # All of them stored, whatever the count: only the writer's work differs with it.
            for first in range(0, MESSAGES, SUBSCRIBER_BATCH):
                subscriber._handle(batch[first:first + SUBSCRIBER_BATCH])
            return _write(work, settings, spool, results, count)
        finally:
            spool.close()


def run_outbound(count: int) -> float:
    """``count`` of MESSAGES perfdata lines (all made first) through the outbound path; the
    thread CPU seconds it took. Says the bytes it wrote a message (/proc/self/io's wchar)."""
    from msg_nagios_bridge import config as config_mod
    from msg_nagios_bridge.broker.connection import send_frame, send_frame_stored
    from msg_nagios_bridge.cores.nagios import result_line
    from msg_nagios_bridge.outbound.routing import Router
    from msg_nagios_bridge.spool import Spool, encode
    from outbound import make_results
    from tests.sandbox.bridge import bridge_config

    with tempfile.TemporaryDirectory(prefix="mnb-instr-") as tmp:
        work = Path(tmp)
        (work / "bridge.yaml").write_text(bridge_config(work, [1], ocsp=False, perfdata=True,
                                                        destination="/queue/instr"))
        router = Router(config_mod.load(str(work / "bridge.yaml")))
        lines = [result_line.format_line(result) for result in make_results(MESSAGES, 300, router, "in")[0]]
        now_ms = int(time.time() * 1000)
        spool = Spool(str(work / "outbound.sqlite"))
        try:
            start, written = time.thread_time(), _written()
            for first in range(0, count, OUTBOUND_BATCH):
                piece = lines[first:min(count, first + OUTBOUND_BATCH)]
                batch = [message for line in piece
                         for message in router.messages(result_line.parse(line), now_ms, sign=False)]
                spool.put(batch, numbered=True, encoded=[encode(message) for message in batch])
                entries = spool.take(OUTBOUND_BATCH, max_bytes=4 << 20)
                for entry in entries:
                    message = entry.message
                    if send_frame_stored(message.destination, message.body, message.headers,
                                         "transaction", "tx") is None:
                        send_frame(message.destination, message.body, dict(message.headers, transaction="tx"))
                spool.done([entry.entry_id for entry in entries])
            took, written = time.thread_time() - start, _written() - written
            if spool.stats().depth:
                raise RuntimeError(f"the outbound path left {spool.stats().depth} messages in the spool")
        finally:
            spool.close()
    if count:
        print(f"outbound: {written / count:,.0f} bytes written a message (the spool's writes)")
    return took


def _written() -> int:
    """Bytes this process has passed to write calls so far (/proc/self/io, wchar)."""
    with open("/proc/self/io") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("wchar:"))


def _write(work: Path, settings, spool, results, count: int) -> float:
    from msg_nagios_bridge.cores.nagios import writer as writer_mod
    from msg_nagios_bridge.daemon.health import Health
    from msg_nagios_bridge.inbound.echo import EchoGuard

    fifo = work / "nagios.cmd"
    os.mkfifo(fifo)
    received = work / "received.txt"
    with open(received, "wb") as out:
        reader = subprocess.Popen(["cat", str(fifo)], stdout=out)
    # A writer of our own holds the FIFO open throughout: cat ends at the first EOF, which the
    # close of the last writer is (a probe that opened and closed it once ended cat before the
    # writer's first line, and the counts of 2026-12-06 were of a writer finding no reader).
    keeper = None
    try:
        deadline = time.monotonic() + 10
        while keeper is None:           # until cat has it open: then a write finds a reader
            try:
                keeper = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("cat did not open the FIFO")
                time.sleep(0.01)
        echo = EchoGuard(spool, max_objects=settings.inbound.echo_guard_max_objects, health=Health(), load=False)
        echo.load(None)
        writer = writer_mod.NagiosWriter(settings.inbound, spool, Health(), echo, results)
        writer.load()
        start = time.thread_time()
        done = 0
        while done < count:
            entries = spool.take(min(writer_mod.BATCH, count - done), max_bytes=writer_mod.BATCH_BYTES)
            writer.deliver(entries)
            spool.done([entry.entry_id for entry in entries])
            done += len(entries)
        took = time.thread_time() - start
    finally:
        if keeper is not None:
            os.close(keeper)            # cat's end of file: it ends once it has read every line
            try:
                reader.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass                    # the count of lines below says so
        reader.kill()
        reader.wait()
    lines = received.read_bytes().count(b"\n")
    if lines != count:
        raise RuntimeError(f"the writer wrote {lines} lines into the FIFO, not {count}")
    return took


def instructions(tree: Path, part: str, count: int) -> int:
    """Instructions ``part`` takes a message with the package of the checkout ``tree`` (this
    script and its payload either way)."""
    def collected(k: int) -> int:
        env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(tree), MNB_TREE=str(tree))
        out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                              sys.executable, str(HERE / "instructions.py"), "--inner",
                              "--part", part, "--count", str(k)],
                             env=env, cwd=tree, capture_output=True, text=True, timeout=900)
        match = re.search(r"Collected : (\d+)", out.stderr)
        if out.returncode != 0 or not match:
            raise RuntimeError(f"valgrind run of {part} ({k}) failed:\n{out.stdout}{out.stderr[-2000:]}")
        return int(match.group(1))
    return round((collected(count) - collected(0)) / count)


def _commit(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=PARTS, action="append", help="all three when not given")
    parser.add_argument("--count", type=int, default=MESSAGES, help=f"messages to work through (<= {MESSAGES})")
    parser.add_argument("--against", type=Path, help="a checkout of another commit, counted the same way")
    parser.add_argument("--runs", type=int, default=3, help="counts of each (they differ by a few instructions)")
    parser.add_argument("--no-callgrind", action="store_true", help="one pass, thread CPU (noisy)")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    parts = args.part or list(PARTS)
    count = max(1, min(args.count, MESSAGES))
    # The package (and tests.sandbox) of the checkout being counted, imported before this
    # script's payload (inbound.py, common.py) puts this checkout first on the path.
    tree = Path(os.environ.get("MNB_TREE", str(HERE.parent))).resolve()
    sys.path[:0] = [str(HERE), str(tree)]
    import msg_nagios_bridge
    import tests.sandbox.bridge  # noqa: F401
    counted = Path(msg_nagios_bridge.__file__).resolve()
    if tree not in counted.parents:
        raise SystemExit(f"counting {counted}, not the package of {tree}")
    if args.inner:
        run_part(parts[0], args.count)
        return 0
    from common import code_fingerprint
    print("=== instructions a result on the bridge's paths")
    print(f"code: {code_fingerprint()}")
    if args.no_callgrind:
        for part in parts:
            print(f"{part}: {1e6 * run_part(part, count) / count:.1f} us of thread CPU a message"
                  f" ({count} messages, one pass, not a count of instructions)")
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt install valgrind)", file=sys.stderr)
        return 2
    trees = [("this checkout", HERE.parent)] + ([("--against", args.against.resolve())] if args.against else [])
    for label, tree in trees[1:]:
        print(f"--against: {tree}, commit {_commit(tree)}")
    print(f"callgrind, (Ir({count}) - Ir(0)) / {count}, PYTHONHASHSEED=0, user space only;"
          f" {args.runs} run(s) of each, in turn: median (min-max)")
    for part in parts:
        counts = {label: [] for label, _ in trees}
        for _ in range(args.runs):
            for label, tree in trees:
                counts[label].append(instructions(tree, part, count))
        medians = {label: statistics.median(values) for label, values in counts.items()}
        line = ", ".join(f"{label} {medians[label]:,.0f} ({min(values):,}-{max(values):,})"
                         for label, values in counts.items())
        if len(trees) == 2:
            line += f"; ratio {medians[trees[0][0]] / medians[trees[1][0]]:.3f}"
        print(f"{part}: instructions a message: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
