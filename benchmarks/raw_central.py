"""The grid-scale ramp's baseline at the central side (gridscale.py --consumer raw): what the
broker and Nagios sustain when the consumer does the least a central consumer can do.

    python benchmarks/raw_central.py PORT DESTINATION PREFETCH FIFO WORKDIR [--fsync]

One stomp.py connection subscribes to DESTINATION with cumulative acks (``ack: client``) and
the bridge's prefetch; the main thread takes whatever arrived, turns each WLCG record into a
PROCESS_SERVICE_CHECK_RESULT line (host = hostName, service = metricName, as the bridge's
default mapping names the grid's objects), writes the lines into Nagios's FIFO in whole-line
chunks of at most PIPE_BUF, then acks the batch's last message. No spool, no fsync, no judging,
no memory of what was injected, no threads of its own: a lower bound of a consumer's cost, not
a safe consumer (what Nagios had in its FIFO when it stopped is lost).

With ``--fsync`` it first appends the batch's bodies to WORKDIR/spool/raw.log and fdatasyncs
it, then acks, then writes the FIFO: the least a consumer that acks only what is on disk does
(the bridge's contract), to tell the price of that contract from the bridge's own cost. The log
is emptied once it passes LOG_LIMIT bytes (everything in it has gone into the FIFO by then).

It writes WORKDIR/spool/status.json as the bridge does, with the fields gridscale.py reads:
pid, the subscriber's state, and the counters received and written. Stops on SIGTERM.
"""
from __future__ import annotations

import json
import os
import select
import signal
import sys
import threading
import time

import stomp

STATUS = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}
PIPE_BUF = select.PIPE_BUF
LOG_LIMIT = 64 << 20


class Collector(stomp.ConnectionListener):
    """Frames from stomp.py's reader thread, taken in batches by the main thread."""

    def __init__(self):
        self.lock, self.ready = threading.Lock(), threading.Event()
        self.frames = []

    def on_message(self, frame):
        with self.lock:
            self.frames.append(frame)
        self.ready.set()

    def take(self):
        with self.lock:
            frames, self.frames = self.frames, []
            self.ready.clear()
        return frames


def command(body: bytes, now: int) -> bytes:
    """The command line of one WLCG record (the fields before its EOT line)."""
    fields = {}
    for line in body.decode("utf-8", "replace").split("\n"):
        if line == "EOT":
            break
        key, _, value = line.partition(": ")
        fields.setdefault(key, value)
    return (f"[{now}] PROCESS_SERVICE_CHECK_RESULT;{fields.get('hostName', '')};{fields.get('metricName', '')};"
            f"{STATUS.get(fields.get('metricStatus'), 3)};{fields.get('summaryData', '')}\n").encode()


def chunks(lines):
    """Whole lines joined into writes of at most PIPE_BUF bytes (atomic on a FIFO)."""
    chunk = b""
    for line in lines:
        if chunk and len(chunk) + len(line) > PIPE_BUF:
            yield chunk
            chunk = b""
        chunk += line
    if chunk:
        yield chunk


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def log_durably(fd: int, bodies) -> None:
    """Append the bodies, each after its length, and wait until they are on disk."""
    write_all(fd, b"".join(b"%d\n%s" % (len(body), body) for body in bodies))
    os.fdatasync(fd)


def write_status(path: str, state: str, received: int, written: int) -> None:
    text = json.dumps({"pid": os.getpid(), "time": time.time(), "states": {"subscriber": state},
                       "counters": {"received": received, "written": written, "injected": written}})
    with open(path + ".tmp", "w") as handle:
        handle.write(text)
    os.replace(path + ".tmp", path)


def main(argv) -> int:
    durable = "--fsync" in argv
    port, destination, prefetch, fifo, workdir = [arg for arg in argv if arg != "--fsync"]
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    os.makedirs(os.path.join(workdir, "spool"), exist_ok=True)
    status_path = os.path.join(workdir, "spool", "status.json")
    collector = Collector()
    conn = stomp.Connection12([("127.0.0.1", int(port))], heartbeats=(0, 0), auto_decode=False)
    conn.set_listener("raw", collector)
    conn.connect(wait=True)
    conn.subscribe(destination, id="raw", ack="client", headers={"activemq.prefetchSize": prefetch})
    fd = os.open(fifo, os.O_WRONLY)
    log = os.open(os.path.join(workdir, "spool", "raw.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) \
        if durable else None
    kind = "raw stomp.py baseline" + (", fsync before the ack" if durable else "")
    received = written = 0
    write_status(status_path, f"subscribed ({kind})", 0, 0)
    next_status = time.monotonic() + 0.5
    try:
        while not stopping.is_set():
            collector.ready.wait(0.2)
            frames = collector.take()
            if frames:
                received += len(frames)
                if log is not None:
                    log_durably(log, [frame.body for frame in frames])
                    conn.ack(frames[-1].headers["ack"])
                now = int(time.time())
                for chunk in chunks(command(frame.body, now) for frame in frames):
                    write_all(fd, chunk)
                written += len(frames)
                if log is None:
                    conn.ack(frames[-1].headers["ack"])
                elif os.fstat(log).st_size > LOG_LIMIT:
                    os.ftruncate(log, 0)
            if time.monotonic() >= next_status:
                write_status(status_path, f"subscribed ({kind})", received, written)
                next_status = time.monotonic() + 0.5
    finally:
        write_status(status_path, "stopped", received, written)
        os.close(fd)
        if log is not None:
            os.close(log)
        conn.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
