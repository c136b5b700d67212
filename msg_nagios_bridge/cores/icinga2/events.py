"""Icinga 2's check results out: the API's event stream, with a catch-up at every connect.

``POST /v1/events?types=CheckResult&queue=...`` is a long-lived answer of one JSON event a
line (event_record.py reads them). The stream does not replay: what Icinga checked while
nobody listened, and events still waiting in Icinga when a reload ends the stream, never come
(docs/icinga2-notes.md). So at every (re)connect, once the stream is open (from then on every
new result comes on it), the source reads each object's ``last_check_result`` and spools those
newer than the newest the bridge spooled for that object. That newest time per object is kept
in the outbound spool's marks (kind ``MARKS_KIND``), written in the same transaction as the
messages, so it is exactly as durable as what it describes. A result spooled twice (by the
catch-up and by the stream) is parsed the same way both times and gets the same message id:
the spool or the receivers drop the second. The guarantee, exactly: docs/icinga2.md,
"Outbound".

Lines are read in bounded chunks; a line over MAX_EVENT_BYTES is dead-lettered (its head)
and skipped up to its newline, never buffered whole. A stop (the intake's ``stopping``) shuts
the sockets down at once: a blocked read or answer ends then, not at a timeout.
"""
from __future__ import annotations

import http.client
import logging
import socket
import threading
import urllib.parse
from typing import Any, Iterator, List, Optional, Set, Tuple

from ...config import Icinga2Settings, Settings
from ...daemon.health import Backoff, Health, RateLimitedLog
from ...display import printable
from ...model import CheckResult
from ...outbound.intake import Intake, Mark
from .. import IntakeFor
from .api import MAX_ERROR_BYTES, MAX_HEAD_BYTES, ApiClient, headers, results_of, ssl_context
from .event_record import MARKS_KIND, MAX_EVENT_BYTES, catch_up_line, object_key, parse_event
from ...daemon.threadname import name_os_thread

log = logging.getLogger(__name__)

SOURCE = "icinga2_events"      # the intake's name, the health state's, and the counters' prefix
READ_CHUNK = 1 << 16
REFUSED_HEAD_BYTES = 1 << 16   # what of a line too long is kept as its dead letter
CATCH_UP_CHUNK = 1000          # objects of the catch-up spooled at a time
CATCH_UP_BYTES = 16 << 20      # ... or fewer, once their outputs and perfdata are this big
# An object of the catch-up bigger than this would make a line over MAX_EVENT_BYTES (the line
# is the same JSON, less a few names): skipped as it is read, never held (review 2026-12-05:
# up to 1,000 objects of 16 MiB each were held before the line's limit was checked).
CATCH_UP_OBJECT_BYTES = MAX_EVENT_BYTES + (64 << 10)
READY_TIMEOUT = 30.0           # how long start_sources waits for the first connect and catch-up
BACKOFF_INITIAL, BACKOFF_CAP = 0.5, 30.0
# A stream may be silent for hours; a peer that vanished (no FIN, no RST) is found by TCP
# keepalive: first probe after 60 s idle, then every 10 s, given up after 3 unanswered.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 60, 10, 3


class StreamRefused(Exception):
    """Icinga answered, but not with a stream (or an object list): the message says what."""


class _Stopping(Exception):
    """The bridge began stopping while the catch-up spooled: the next start catches up."""


def start_sources(settings: Settings, intake_for: IntakeFor, health: Health) -> List[threading.Thread]:
    """The event stream source, started, once it has connected and caught up (or failed a
    first time: it goes on trying); [] when ``icinga2.publish`` is off."""
    if not settings.icinga2.publish:
        return []
    source = EventStreamSource(settings.icinga2, intake_for(SOURCE, parse_event), health)
    source.start()
    source.ready.wait(READY_TIMEOUT)
    return [source]


def mark_of(result: CheckResult) -> Mark:
    """The spool mark of a spooled result: its object and check time."""
    return (MARKS_KIND, object_key(result.host, result.service), result.timestamp)


class LineSplitter:
    """Whole lines out of a byte stream fed in chunks, none longer than ``limit`` bytes: the
    head of a longer one is handed back as refused, and the rest skipped up to its newline.
    Linear in what is fed; holds at most ``limit`` bytes."""

    def __init__(self, limit: int = MAX_EVENT_BYTES):
        self.limit = limit
        self._pending = bytearray()
        self._skipping = False

    def feed(self, chunk: bytes) -> Tuple[List[bytes], List[bytes]]:
        """(the lines ``chunk`` completed, the heads of the lines refused as too long)."""
        lines: List[bytes] = []
        refused: List[bytes] = []
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                break
            piece = chunk[start:end]
            if self._skipping:
                self._skipping = False            # the end of a line already refused
            elif len(self._pending) + len(piece) > self.limit:
                refused.append(bytes(self._pending[:REFUSED_HEAD_BYTES]) +
                               piece[:max(0, REFUSED_HEAD_BYTES - len(self._pending))])
            else:
                lines.append(bytes(self._pending) + piece if self._pending else piece)
            self._pending.clear()
            start = end + 1
        rest = chunk[start:]
        if not self._skipping and rest:
            if len(self._pending) + len(rest) > self.limit:
                refused.append(bytes(self._pending[:REFUSED_HEAD_BYTES]) +
                               rest[:max(0, REFUSED_HEAD_BYTES - len(self._pending))])
                self._pending.clear()
                self._skipping = True
            else:
                self._pending += rest
        return lines, refused


class EventStreamSource(threading.Thread):
    """Reads Icinga's CheckResult events into ``intake``; reconnects (with a catch-up) for ever,
    with backoff, until the intake's ``stopping`` is set."""

    def __init__(self, settings: Icinga2Settings, intake: Intake, health: Health):
        super().__init__(name="icinga2-events", daemon=True)
        self.settings = settings
        self.intake = intake
        self.health = health
        self.stopping = intake.stopping
        self.api = ApiClient(settings)
        self._context = ssl_context(settings)
        self.ready = threading.Event()      # the first connect and catch-up done, or failed
        self.connects = 0
        self.last_catch_up: Optional[Tuple[int, int]] = None   # (objects with a result, spooled)
        self._where = f"{settings.host}:{settings.port}"
        self._path = "/v1/events?" + urllib.parse.urlencode({"types": "CheckResult", "queue": settings.event_queue})
        self._warn = RateLimitedLog(log)
        self._lock = threading.Lock()
        self._sockets: Set[socket.socket] = set()

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        name_os_thread(self.name)
        threading.Thread(target=self._close_on_stop, name="icinga2-events-stop", daemon=True).start()
        backoff = Backoff(BACKOFF_INITIAL, BACKOFF_CAP)
        try:
            while not self.stopping.is_set():
                try:
                    self._session(backoff)
                    problem = "the stream ended (Icinga reloaded, restarted or closed it)"
                except StreamRefused as exc:
                    problem = str(exc)
                except (OSError, http.client.HTTPException) as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                except Exception as exc:     # noqa: BLE001 - a bug must not end the source for good
                    log.exception("Icinga 2 event stream: unexpected error")
                    problem = f"unexpected {type(exc).__name__}: {exc}"
                finally:
                    self._close_all()
                self.ready.set()
                if self.stopping.is_set():
                    break
                delay = backoff.next_delay()
                self.health.add(f"{SOURCE}.disconnects")
                self.health.set_state(SOURCE, f"waiting: {printable(problem, 200)}")
                self._warn(logging.WARNING, "stream",
                           f"Icinga 2 event stream at {self._where}: {printable(problem, 300)}; reconnecting in"
                           f" {delay:.1f} s, then catching up from the objects' last results")
                self.stopping.wait(delay)
        finally:
            self.ready.set()
            self.health.set_state(SOURCE, "stopped")

    def _session(self, backoff: Backoff) -> None:
        """Open the stream, catch up, then read until the stream ends or the bridge stops."""
        connection = self._connect()
        sock = connection.sock
        connection.request("POST", self._path, headers=headers(self.settings))
        response = connection.getresponse()       # the connection hands its socket to it
        try:
            if response.status != 200:
                raise StreamRefused(_refusal("POST /v1/events", response.status, response.read(4096),
                                             "events/CheckResult"))
            sock.settimeout(None)                 # a silent stream is no error (keepalive is on)
            self.connects += 1
            self.health.add(f"{SOURCE}.connects")
            # Only now: Icinga subscribes the stream before it writes the 200 (2.13.6
            # EventsHandler::HandleRequest), and stores a result as last_check_result before it
            # sends the result's event (Checkable::ProcessCheckResult). So every result whose
            # event missed this stream is in the objects' last results now, or superseded there.
            objects, spooled = self._catch_up()
            if self.stopping.is_set():
                return
            backoff.reset()
            self.health.set_state(SOURCE, "connected")
            self.ready.set()
            log.info("Icinga 2 event stream connected to %s (queue %s); caught up: %d of %d objects'"
                     " last results were newer than those already spooled", self._where,
                     self.settings.event_queue, spooled, objects)
            self._read(response)
        finally:
            response.close()

    def _read(self, response: http.client.HTTPResponse) -> None:
        splitter = LineSplitter(MAX_EVENT_BYTES)
        while not self.stopping.is_set():
            chunk = response.read1(READ_CHUNK)
            if not chunk:
                return
            lines, refused = splitter.feed(chunk)
            for head in refused:
                self.health.add(f"{SOURCE}.events")
                self.intake.dead_letter(head, f"event longer than {MAX_EVENT_BYTES} bytes")
            lines = [line for line in lines if line.strip()]
            if not lines:
                continue
            self.health.add(f"{SOURCE}.events", len(lines))
            self.health.mark(f"{SOURCE}.event")
            if not self.intake.spool_lines(lines, marks_of=mark_of):
                return                            # stopping: the catch-up at the next start has them

    # -- the catch-up ----------------------------------------------------------------------

    def _catch_up(self) -> Tuple[int, int]:
        """Spool each object's last result newer than the newest spooled for it (by check
        time); (objects with a result, results spooled). The object lists are read an object
        at a time and spooled CATCH_UP_CHUNK objects at a time, oldest first within each (so
        all oldest first up to that many objects), so a large Icinga's answer (hundreds of MB
        with outputs) is never held whole."""
        connection = self._connect()
        found = spooled = 0
        try:
            chunk: List[Tuple[Any, Any, dict]] = []
            size = 0
            for kind, attrs in (("hosts", "attrs=name&attrs=last_check_result"),
                                ("services", "attrs=name&attrs=host_name&attrs=last_check_result")):
                for item in self._last_results(connection, kind, attrs):
                    chunk.append(item)
                    size += _rough_size(item[2])
                    if len(chunk) >= CATCH_UP_CHUNK or size >= CATCH_UP_BYTES:
                        spooled += self._spool_newer(chunk)
                        found += len(chunk)
                        chunk, size = [], 0
            spooled += self._spool_newer(chunk)
            found += len(chunk)
        except _Stopping:
            return found, spooled                 # the bridge stops: the next start catches up
        finally:
            connection.close()
        # One mark per object ever seen: keep those of objects Icinga no longer has in bounds.
        self.intake.spool.keep_newest_marks(MARKS_KIND, max(10_000, 2 * found))
        self.health.add(f"{SOURCE}.catch_up_results", spooled)
        self.health.mark(f"{SOURCE}.catch_up")
        self.last_catch_up = (found, spooled)
        return self.last_catch_up

    def _spool_newer(self, found: List[Tuple[Any, Any, dict]]) -> int:
        """Spool those of ``found`` (host, service, last_check_result) newer than the newest
        spooled for their object; how many. Raises _Stopping when the bridge stops."""
        keys = []
        for host, service, _ in found:
            try:
                keys.append(object_key(host, service))
            except TypeError:
                pass                              # not text: the parser says what is wrong
        newest = self.intake.spool.find_marks(MARKS_KIND, keys) if keys else {}
        lines: List[Tuple[float, bytes]] = []
        for host, service, last in found:
            when = last.get("execution_end", last.get("execution_start"))
            try:
                key = object_key(host, service)
                if key in newest and float(when) <= newest[key]:
                    continue
            except (TypeError, ValueError):
                pass                              # the parser says what is wrong with it
            line = catch_up_line(host, service, last)
            if len(line) > MAX_EVENT_BYTES:
                self.intake.dead_letter(line[:REFUSED_HEAD_BYTES], f"event longer than {MAX_EVENT_BYTES} bytes")
                continue
            lines.append((when if isinstance(when, (int, float)) else 0.0, line))
        lines.sort(key=lambda pair: pair[0])      # oldest first, as the stream would have had them
        if lines and not self.intake.spool_lines([line for _, line in lines], marks_of=mark_of):
            raise _Stopping()
        return len(lines)

    def _last_results(self, connection: http.client.HTTPSConnection, kind: str,
                      attrs: str) -> Iterator[Tuple[Any, Any, dict]]:
        """(host, service or None, last_check_result) of the ``kind`` objects that have one,
        read an object at a time (api.results_of)."""
        path = f"/v1/objects/{kind}?{attrs}"
        connection.request("GET", path, headers=headers(self.settings))
        response = connection.getresponse()
        if response.status != 200:
            data = response.read(MAX_ERROR_BYTES)
            raise StreamRefused(_refusal(f"GET {path}", response.status, data,
                                         f"objects/query/{kind[:-1].capitalize()}"))
        try:
            for item in results_of(response.read, limit=CATCH_UP_OBJECT_BYTES,
                                   too_big=lambda head: self._skipped(path, head)):
                attrs_of = item["attrs"]
                last = attrs_of.get("last_check_result")
                if isinstance(last, dict):        # None: never checked
                    if kind == "hosts":
                        yield attrs_of.get("name"), None, last
                    else:
                        yield attrs_of.get("host_name"), attrs_of.get("name"), last
            # results_of stops at the list's end: read the answer to its own (the closing
            # brace may come in a read of its own), else the next request on the connection
            # raises ResponseNotReady.
            if response.read(MAX_HEAD_BYTES) and response.read(1):
                raise ValueError("more than a closing brace after the results")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StreamRefused(f"GET {path}: not an object list ({type(exc).__name__}: {exc})") from None

    def _skipped(self, path: str, head: str) -> None:
        """An object of the catch-up over CATCH_UP_OBJECT_BYTES: skipped (its result would be
        over MAX_EVENT_BYTES anyway), kept as a dead letter with its head, the rest goes on."""
        self.intake.dead_letter(head.encode("utf-8", "replace"), f"an object of GET {path} is over"
                                f" {CATCH_UP_OBJECT_BYTES} bytes: skipped by the catch-up")

    # -- sockets ---------------------------------------------------------------------------

    def _connect(self) -> http.client.HTTPSConnection:
        """A new connection, opened (TCP and TLS, each within ``timeout``), its socket kept for
        stop from before the TCP connect: a stop ends a connect or a handshake under way at once
        (an Icinga that accepts TCP and never answers would hold it for the whole timeout)."""
        connection = self.api.connection()
        error: Optional[OSError] = None
        for family, kind, proto, _, address in socket.getaddrinfo(
                self.settings.host, self.settings.port, type=socket.SOCK_STREAM):
            raw = self._watched(socket.socket(family, kind, proto))
            try:
                if self.stopping.is_set():
                    raise OSError("stopping")
                raw.settimeout(connection.timeout)
                raw.connect(address)
                break
            except OSError as exc:
                error = exc
                self._forget(raw)
        else:
            raise error or OSError(f"{self.settings.host} resolves to no address")
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                              ("TCP_KEEPCNT", KEEPALIVE_COUNT)):
            if hasattr(socket, option):
                raw.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
        # wrap_socket takes the descriptor over from ``raw``: the TLS socket is the one a stop
        # must shut, before the handshake starts.
        with self._lock:
            self._sockets.discard(raw)
        try:
            sock = self._watched(self._context.wrap_socket(raw, server_hostname=self.settings.host,
                                                           do_handshake_on_connect=False))
        except OSError:
            raw.close()
            raise
        sock.do_handshake()
        connection.sock = sock
        return connection

    def _watched(self, sock: socket.socket) -> socket.socket:
        """``sock``, kept for stop; shut at once if the stop already came."""
        with self._lock:
            self._sockets.add(sock)
        if self.stopping.is_set():
            _shut(sock)
        return sock

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        sock.close()

    def _close_on_stop(self) -> None:
        self.stopping.wait()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def _close_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _shut(sock)
            sock.close()


def _shut(sock: socket.socket) -> None:
    """End the connection under a read blocked in another thread (close() alone would not wake
    it). The plain socket's shutdown: SSLSocket's own would drop the TLS object under it."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _refusal(what: str, status: int, body: bytes, permission: str) -> str:
    text = printable(body.decode("utf-8", "replace"), 120)
    if status == 404:
        # Icinga answers a missing permission exactly as a missing path or object.
        return f"{what}: 404 (does the ApiUser have the permission {permission}?): {text}"
    return f"{what}: {status} {text}"


def _rough_size(check_result: Any) -> int:
    """About how big a last_check_result is: its output and perfdata, the fields that grow."""
    if not isinstance(check_result, dict):
        return 64
    output, perfdata = check_result.get("output"), check_result.get("performance_data")
    return (256 + (len(output) if isinstance(output, str) else 0)
            + (sum(len(item) for item in perfdata if isinstance(item, str)) if isinstance(perfdata, list) else 0))
