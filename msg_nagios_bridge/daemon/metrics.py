"""The status snapshot as Prometheus metrics: a textfile and/or /metrics on loopback."""
from __future__ import annotations

import os
import re
import tempfile
import threading
from typing import TYPE_CHECKING, Callable, List

from .health import is_up
from .status import Status
from .threadname import named_thread_starter

if TYPE_CHECKING:
    import http.server

PREFIX = "msg_nagios_bridge_"
# Any local user can connect to the loopback endpoint: each connection is served by a thread,
# so one that sends nothing (or reads nothing) must not keep its thread for ever, and many
# must not make thousands of threads (the unit's TasksMax: a bridge that cannot start a thread
# cannot reconnect to its broker).
REQUEST_TIMEOUT = 10.0      # seconds a client has to send its request and read the answer
MAX_CLIENTS = 16            # connections served at once; one more is closed unanswered
_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


def _name(text: str) -> str:
    return PREFIX + _UNSAFE.sub("_", text)


def render(status: Status) -> str:
    """Prometheus text exposition format for a status snapshot."""
    lines: List[str] = []

    def metric(name: str, kind: str, value, labels: str = "") -> None:
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{name}{labels} {value}")

    for counter, value in sorted(status.counters.items()):
        metric(_name(counter) + "_total", "counter", value)
    for spool, gauges in status.spools().items():
        for field in ("depth", "bytes", "dead_letters", "oldest_age"):
            value = getattr(gauges, field)
            if value is not None:
                metric(_name(f"{spool}_{field}" + ("_seconds" if field == "oldest_age" else "")), "gauge", value)
    for what, when in sorted(status.last.items()):
        metric(_name(f"last_{what}_timestamp_seconds"), "gauge", when)
    states = sorted(status.states.items())
    if states:
        lines.append(f"# TYPE {_name('part_up')} gauge")
    for part, state in states:
        up = 1 if is_up(state) else 0
        lines.append('%s{part="%s"} %d' % (_name("part_up"), _UNSAFE.sub("_", part), up))
    _sequences(status, lines)
    metric(_name("status_timestamp_seconds"), "gauge", status.time)
    return "\n".join(lines) + "\n"


# Loss accounting, one series a (producer, route): (row field, metric, type).
FORGOTTEN_LABEL = "(forgotten)"   # producer and route of the forgotten streams' sums
_STREAM_METRICS = (
    ("missing", "sequence_missing", "gauge"),
    ("highest", "sequence_highest", "gauge"),
    ("oldest_gap_age", "sequence_oldest_gap_age_seconds", "gauge"),
    ("received", "sequence_received_total", "counter"),
    ("late", "sequence_late_total", "counter"),
    ("duplicates", "sequence_duplicates_total", "counter"),
    ("lost", "sequence_lost_total", "counter"),
    ("untracked", "sequence_untracked_total", "counter"),
)


def _label(text: str) -> str:
    """A label value as the exposition format escapes it."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sequences(status: Status, lines: List[str]) -> None:
    if status.numbering:
        lines.append(f"# TYPE {_name('sequence_numbered')} gauge")
        for route, value in sorted(status.numbering.items()):
            lines.append('%s{route="%s"} %d' % (_name("sequence_numbered"), _label(route), value["last"]))
    if status.sequences is None:
        return
    for counter, value in sorted(status.sequences.get("counters", {}).items()):
        lines.append(f"# TYPE {_name('sequence_' + counter)}_total counter")
        lines.append(f"{_name('sequence_' + counter)}_total {value}")
    rows = status.streams()
    forgotten = status.forgotten()
    if forgotten.get("streams"):
        # The counters of the streams forgotten after max_age idle, in one series of their
        # own: a sum over the series never goes down when a stream's own series ends.
        lines.append(f"# TYPE {_name('sequence_forgotten_streams_total')} counter")
        lines.append(f"{_name('sequence_forgotten_streams_total')} {forgotten['streams']}")
        rows = rows + [dict(forgotten, producer=FORGOTTEN_LABEL, route=FORGOTTEN_LABEL)]
    for field, name, kind in _STREAM_METRICS:
        samples = [(row, row[field]) for row in rows if row.get(field) is not None]
        if not samples:
            continue
        lines.append(f"# TYPE {_name(name)} {kind}")
        for row, value in samples:
            lines.append('%s{producer="%s",route="%s"} %s' % (_name(name), _label(row["producer"]),
                                                            _label(row["route"]), value))


def write_textfile(path: str, text: str) -> None:
    """Replace ``path`` atomically (node_exporter must never read half a file)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".msg_nagios_bridge.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def serve(listen: str, text: Callable[[], str]) -> http.server.ThreadingHTTPServer:
    """Serve ``text()`` at /metrics on ``listen`` (loopback only, checked by the config)."""
    # Imported here: http.server brings http.client and email (about 2 MB of RSS), which a
    # bridge without the metrics endpoint never uses.
    import http.server
    host, _, port = listen.rpartition(":")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body = text().encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):   # no access log
            pass

    Handler.timeout = REQUEST_TIMEOUT    # the socket's timeout for every read and write

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        slots = threading.BoundedSemaphore(MAX_CLIENTS)

        def process_request(self, request, client_address):
            if not self.slots.acquire(blocking=False):
                self.shutdown_request(request)      # all busy: no thread for this one
                return
            try:
                super().process_request(request, client_address)
            except BaseException:
                self.slots.release()
                raise

        def process_request_thread(self, request, client_address):
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.slots.release()

    server = Server((host, int(port)), Handler)
    named_thread_starter("metrics")(server.serve_forever)
    return server
