"""A STOMP 1.2 connection to the first reachable broker of a failover list.

stomp.py's callbacks run on its receiver thread; here they only record what
happened (connected, receipts, errors, disconnection) and the owner's loop acts.
Two stomp.py behaviours are wrapped on purpose:

* ``connect(wait=True)`` waits forever when a broker accepts TCP but never
  answers CONNECTED (a hung broker), so we send CONNECT without waiting and
  wait for our own event with a timeout;
* stomp.py does not reconnect by itself and frames written into a dead socket
  vanish without error, so only receipts count as delivery, and the owner
  reconnects from its loop with capped backoff;
* the bridge opens the socket itself (TCP, then TLS with its own context), and
  stomp.py only speaks STOMP over it: see ``_Transport``. Every wait of a connect (TCP,
  handshake, CONNECTED) also watches an ``_Abort``, so ``abort()`` (the owner's stop) ends a
  connect under way at once instead of after the connect timeout.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import select
import socket
import ssl
import contextlib
import struct
import tempfile
import threading
import time
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import stomp
import stomp.connect
import stomp.protocol
import stomp.transport
import stomp.utils
from stomp.exception import StompException

from ..config import BrokerSettings, TlsSettings
from ..trust.tlsfiles import ca_bundle_from_dir
from ..daemon.threadname import named_thread_starter
from . import kinds
from .. import spool

log = logging.getLogger(__name__)


def _unescaped(text: str) -> str:
    """stomp.py's unescaping of one header name or value (every backslash pair, left to right;
    an unknown pair kept as it is). Without an escaped backslash the pairs cannot overlap, so
    three replaces do it: ActiveMQ escapes the colons of its ids (message-id, ack), so most
    frames have several such values, and the regex with a function per pair cost ~1 us each."""
    if "\\\\" in text:
        return re.sub(r"\\.", stomp.utils._unescape_header, text)
    return text.replace("\\c", ":").replace("\\n", "\n").replace("\\r", "\r")


def _parse_headers(lines, offset=0):
    """stomp.utils.parse_headers, the same result, without its regex match per line and its two
    re.sub calls per header when there is nothing to unescape (nearly always): they were half
    of the receiving thread's work on a MESSAGE frame (benchmarks/sequence.py, 5 runs each:
    12.7 against 26.0 us median for a site bridge's 22-header frame). Tested equal to stomp.py's
    on escaped, repeated and malformed headers (tests/unit/test_stomp_headers.py)."""
    headers = {}
    names = _NAMES
    for line in lines[offset:]:
        # stomp.py's HEADER_LINE_RE: a key of one or more characters up to the first colon,
        # then the value up to a newline (there is none in a line parse_frame split).
        key, colon, value = line.partition(":")
        if colon and key:
            if "\\" in key:
                key = _unescaped(key)
            if key not in headers:
                if "\n" in value:
                    value = value[:value.index("\n")]
                if "\\" in value:
                    value = _unescaped(value)
                headers[names.get(key) or _shared_name(key)] = value
    return headers


_NAMES: Dict[str, str] = {}
NAMES_KEPT = 1024           # names shared; then the table starts again (threads racing at the
                            # check may each add one more: bounded all the same)
NAME_KEPT_CHARS = 64        # a longer name is not shared


def _shared_name(key: str) -> str:
    """``key``, a name not in the table yet, kept there for the next frames (_parse_headers
    looks it up first): header names repeat in every frame, and a grid result's 23 names were
    1.3 KB of each message waiting in the prefetch or its batch (tracemalloc, 1,000 frames: 3.5 -> 2.2 MB). A table of our own, bounded in names and
    length (a sender that sends more made-up names than it holds undoes the sharing, not the
    bound), not sys.intern: Python 3.12 made interned strings immortal (CPython issue 113993,
    undone in a later 3.12 release), so a sender's made-up names would have stayed for good."""
    if len(key) <= NAME_KEPT_CHARS:
        if len(_NAMES) >= NAMES_KEPT:
            _NAMES.clear()      # in place: _parse_headers holds the table
        _NAMES[key] = key
    return key


def _parse_frame(frame: bytes) -> Optional[stomp.utils.Frame]:
    """stomp.utils.parse_frame, the same result, with plain searches instead of its regexes: the
    headers end at the first blank line (LF LF or CRLF CRLF, whichever comes first), and lines
    end with LF or CRLF. Linear in the frame."""
    end = frame.find(b"\n\n")
    crlf = frame.find(b"\r\n\r\n", 0, end + 3 if end >= 0 else len(frame))
    if crlf >= 0:
        preamble_end, body_start = crlf, crlf + 4
    elif end >= 0:
        preamble_end, body_start = end, end + 2
    else:
        preamble_end = body_start = len(frame)
    preamble = frame[:preamble_end].decode("utf-8", errors="replace")
    lines = preamble.split("\n") if "\r" not in preamble else stomp.utils.LINE_END_RE.split(preamble)
    first = 0
    while first < len(lines) and not lines[first]:
        first += 1
    if first >= len(lines):
        return None
    return stomp.utils.Frame(lines[first], _parse_headers(lines, first + 1), frame[body_start:])


_EOLS = (b"\n", b"\r\n")
_CONTENT_LENGTH = b"content-length:"
_SPACE = b" \t\n\r\f\v"           # what \\s matches in a bytes regex
_DIGITS = b"0123456789"


def _content_length(buffer: bytearray, start: int, end: int) -> Optional[int]:
    """The value of the first ``content-length:`` at a line's start in buffer[start:end] that
    has digits after its blanks (blanks may span lines, at most 15 digits are read), as the
    regex ``^content-length:\\s*([0-9]{1,15})`` with MULTILINE finds it; None if none has.
    A line starts at start only after a newline (or at the buffer's start), as ``^`` does."""
    at = start if start == 0 or buffer[start - 1] == 10 else -1
    if at < 0 or not buffer.startswith(_CONTENT_LENGTH, at, end):
        at = buffer.find(b"\n" + _CONTENT_LENGTH, start, end)
        at = at + 1 if at >= 0 else -1
    while at >= 0:
        digits = at + len(_CONTENT_LENGTH)
        while digits < end and buffer[digits] in _SPACE:
            digits += 1
        last = digits
        while last < end and last - digits < 15 and buffer[last] in _DIGITS:
            last += 1
        if last > digits:
            return int(buffer[digits:last])
        at = buffer.find(b"\n" + _CONTENT_LENGTH, at, end)
        at = at + 1 if at >= 0 else -1
    return None


class _FrameSplitter:
    """Cuts the bytes a connection receives into frames (each without its closing NUL), as
    stomp.py's BaseTransport.__read does, in time linear in them. stomp.py copies and searches
    its whole receive buffer again for every chunk that holds a NUL: a message of N bytes with
    a NUL in every chunk took time in N squared on the receiving thread, holding the GIL
    (review 2026-12-04: 16 MiB in 4 KiB chunks, 2.3 s against 0.02 s here), before any limit of
    the bridge's.

    stomp.py's rules, kept: a frame ends at its first NUL, unless the headers before that NUL
    carry a content-length, which then says where the body ends; optional EOLs after a frame
    are skipped. One difference: EOLs between frames with no frame after them yet count as a
    heart-beat (a b"\n" frame), wherever they came (stomp.py: only alone in a read)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.start = 0              # where the next frame begins
        self.scanned = 0            # no NUL at or after start before this
        self.end = -1               # the frame's end, once its content-length said it

    def feed(self, chunk: bytes) -> None:
        self.buffer += chunk

    def frames(self) -> List[bytes]:
        """The frames complete so far, in order (or a heart-beat, b"\n")."""
        frames: List[bytes] = []
        buffer = self.buffer
        beat = False
        while True:
            if self.end < 0:
                eols = self.start
                while buffer.startswith(_EOLS, self.start):
                    self.start += 1 if buffer[self.start] == 10 else 2
                if self.start > eols:
                    beat = True
                    self.scanned = max(self.scanned, self.start)
                nul = buffer.find(b"\0", max(self.scanned, self.start))
                if nul < 0:
                    self.scanned = len(buffer)
                    break
                self.end = self._end(nul)
            if len(buffer) <= self.end:
                break               # stomp.py too waits for a byte past the body
            frames.append(bytes(buffer[self.start:self.end]))
            self.start = self.scanned = self.end + 1
            self.end = -1
        if beat and not frames:
            frames.append(b"\n")   # a heart-beat, where nothing else shows the broker alive
        if self.start:
            del buffer[:self.start]                 # at most once per frame completed: linear
            self.scanned -= self.start
            if self.end >= 0:
                self.end -= self.start
            self.start = 0
        return frames

    def _end(self, nul: int) -> int:
        """Where the frame beginning at ``start`` ends, given its first NUL at ``nul``: what
        stomp.py's PREAMBLE_END_RE and a content-length header at a line's start (the regex
        ``^content-length:\\s*([0-9]{1,15})``, MULTILINE) say, found with plain searches (the
        two regexes were a seventh of the receiving thread's time at 3,500 results/s, py-spy
        2026-12-05; tested equal to them on generated frames, tests/unit/test_stomp_headers.py)."""
        buffer, start = self.buffer, self.start
        lf = buffer.find(b"\n\n", start, nul)
        crlf = buffer.find(b"\r\n\r\n", start, nul if lf < 0 else min(nul, lf + 3))
        if crlf >= 0:
            headers_end, body_start = crlf, crlf + 4
        elif lf >= 0:
            headers_end, body_start = lf, lf + 2
        else:
            return nul
        length = _content_length(buffer, start, headers_end)
        return nul if length is None else max(nul, body_start + length)


stomp.utils.parse_headers = _parse_headers      # parse_frame looks it up at each call
stomp.transport.parse_frame = _parse_frame      # the receiving loop looks it up at each frame

RECV_BYTES = 1 << 16
# Heart-beats. ActiveMQ checks every interval and sends a heart-beat only if it sent nothing
# since the last check, so after its last frame the next may come almost two intervals later:
# with stomp.py's default (lost after 1.5 intervals) a healthy connection whose traffic just
# stopped was dropped (seen as the subscriber, paused on a full spool, losing its connection
# 6 s after connecting, with 2 s heart-beats). So the broker is asked to send twice as often
# as heartbeat_ms, and is lost after 3 of its intervals: after 1.5 x heartbeat_ms as before,
# while ActiveMQ's longest gap is 1 x heartbeat_ms.
HEARTBEAT_GRACE = 3.0


def heartbeats(heartbeat_ms: int) -> Tuple[int, int]:
    """The STOMP heart-beat header: (we send every, we want the broker to send every) ms."""
    return (heartbeat_ms, max(1, heartbeat_ms // 2) if heartbeat_ms else 0)


class _Events(stomp.ConnectionListener):
    """Notes what stomp.py reports and sets ``wakeup`` (the owner's wakeup.Wakeup, or any
    object with set()); acts on nothing."""

    def __init__(self, wakeup) -> None:
        self.lock = threading.Lock()
        self.wakeup = wakeup
        self.connected = threading.Event()
        # Receipts and errors in the order they arrived: an ERROR for a SEND inside a
        # transaction comes before that transaction's COMMIT receipt, and must be seen first.
        self.replies: List[Tuple[str, Mapping[str, str], str]] = []
        self.messages: List[Tuple[Mapping[str, str], str]] = []
        self.lost = False

    def on_connected(self, frame) -> None:
        self.connected.set()
        self.wakeup.set()

    def on_receipt(self, frame) -> None:
        with self.lock:
            self.replies.append(("receipt", dict(frame.headers), ""))
        self.wakeup.set()

    def on_error(self, frame) -> None:
        body = frame.body or ""
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        with self.lock:
            self.replies.append(("error", dict(frame.headers), body))
        self.wakeup.set()

    def on_message(self, frame) -> None:
        with self.lock:
            self.messages.append((frame.headers, frame.body))    # a dict of its own per frame
        self.wakeup.set()

    def on_disconnected(self) -> None:
        self.lost = True
        self.wakeup.set()

    def on_heartbeat_timeout(self) -> None:
        self.lost = True
        self.wakeup.set()


def tls_context(tls: TlsSettings, ca_file: Optional[str]) -> ssl.SSLContext:
    """The context the bridge's TLS connections use (also for diagnosing a failed handshake)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file:
        context.load_verify_locations(ca_file)
    else:
        context.load_default_certs()
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file or None, tls.key_password or None)
    return context


def _escaped(text: str) -> str:
    """A STOMP 1.2 header name or value escaped (backslash, newline, colon, carriage return)."""
    if "\\" in text or "\n" in text or ":" in text or "\r" in text:
        return text.replace("\\", "\\\\").replace("\n", "\\n").replace(":", "\\c").replace("\r", "\\r")
    return text


_SET_BY_THE_FRAME = ("destination", "content-length")
_TEXT_ONLY = {str}


def send_frame(destination: str, body: bytes, headers: Mapping[str, str]) -> bytes:
    """One STOMP 1.2 SEND frame, encoded: what stomp.py's send() writes (escaped headers, a
    content-length). stomp.py stays the STOMP implementation (connect, heart-beats, receipts,
    parsing what the broker sends); the publisher only encodes its SENDs here, because
    stomp.py's per-frame work (header merging and copying, sorting, a line encoded at a time,
    then listener calls and a lock per frame) was the largest part of the bridge's outbound
    CPU. Measured: 3.1 us per frame here against 8.6 us for stomp.py's encoding alone (3.7 us
    for 14 headers on 2026-12-07: docs/performance.md).
    Header names are text (``str``); values of other types are sent as their str()."""
    if "destination" in headers or "content-length" in headers:
        headers = {name: value for name, value in headers.items() if name not in _SET_BY_THE_FRAME}
    lines = None
    if set(map(type, headers.values())) <= _TEXT_ONLY:     # values all exact str (or none)
        # All the headers as one text, name and value joined by NUL and lines by SOH, escaped
        # in one go (the escape maps each character on its own, so this is the escape of each
        # part), then the separators made ":" and newline: a message's 13-16 headers without a
        # Python call each. (Another value goes header by header, through str(): its format()
        # may differ.)
        joined = "\x01".join([f"{name}\x00{value}" for name, value in headers.items()])
        count = len(headers)
        if count and joined.count("\x00") == count and joined.count("\x01") == count - 1:
            lines = _escaped(joined).replace("\x00", ":").replace("\x01", "\n") + "\n"
    if lines is None:       # no headers, other values, or text with a NUL or SOH of its own
        lines = "".join([f"{_escaped(name)}:{_escaped(str(value))}\n" for name, value in headers.items()])
    return _send_frame(destination, body, lines)


def _send_frame(destination: str, body: bytes, lines: str) -> bytes:
    """The SEND frame of ``lines``, its headers escaped, each ending in a newline."""
    head = f"SEND\ndestination:{_escaped(destination)}\ncontent-length:{len(body)}\n{lines}\n"
    if "\0" in head:
        # STOMP has no escape for NUL, which ends a frame: a reader would see two frames.
        head = head.replace("\0", "\ufffd")
    return head.encode("utf-8") + body + b"\0"


def send_frame_stored(destination: str, body: bytes, headers: Mapping[str, str], name: str, value: str
                      ) -> Optional[bytes]:
    """send_frame(destination, body, dict(headers, name=value)) for headers taken from the
    spool (spool.StoredHeaders), made from their stored text without reading it, when that
    text is STOMP header lines (spool.headers_text: plain headers, escaped as send_frame
    escapes them) and holds neither ``name`` nor a header the frame sets itself; else None
    (the caller then sends the headers read). Byte for byte send_frame's frame
    (tests/unit/test_broker_session.py). ``name`` is plain ASCII without a colon."""
    text = getattr(headers, "stored_text", None)
    if type(text) is not str or not spool.stored_as_lines(text):
        return None
    lines = "\n" + text        # every header's line starts after a newline: one search a name
    if f"\n{name}:" in lines or "\ndestination:" in lines or "\ncontent-length:" in lines:
        return None
    return _send_frame(destination, body, f"{text}{name}:{_escaped(str(value))}\n")


def ack_frame(ack_id: str) -> bytes:
    """One STOMP 1.2 ACK frame, encoded: what stomp.py's ack() writes (an escaped ``id``), for
    the same reason as send_frame: its frame object, listener calls and lock per ACK cost the
    subscriber about a tenth of its time per message."""
    return f"ACK\nid:{_escaped(ack_id)}\n\n".encode("utf-8") + b"\0"


class PeerRefused(ConnectionError):
    """The broker's certificate passed TLS verification but the bridge's own check refused it."""


class ConnectAborted(ConnectionError):
    """abort() was called while connecting."""


class _Abort:
    """Lets another thread end a connect under way: a pipe whose read end every wait of a
    connect selects on beside its socket. Once set it stays set (the owner is stopping)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pipe: Optional[Tuple[int, int]] = None
        self.is_set = False

    def set(self) -> None:
        with self._lock:
            self.is_set = True
            if self._pipe is not None:
                try:
                    os.write(self._pipe[1], b"x")
                except OSError:         # full (set before) or closed: readable either way
                    pass

    def _read_end(self) -> int:
        with self._lock:
            if self._pipe is None:
                self._pipe = os.pipe()
                os.set_blocking(self._pipe[1], False)
                if self.is_set:
                    os.write(self._pipe[1], b"x")
            return self._pipe[0]

    def wait(self, sock: socket.socket, *, write: bool, deadline: float, what: str) -> None:
        """Until ``sock`` is readable (writable with ``write``); raise ConnectAborted on
        abort, socket.timeout at ``deadline`` (the connect timeout)."""
        abort_fd = self._read_end()
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout(what)
        readable, writable, _ = select.select([abort_fd] + ([] if write else [sock]),
                                              [sock] if write else [], [], left)
        if abort_fd in readable or self.is_set:
            raise ConnectAborted("stopped while connecting")
        if not readable and not writable:
            raise socket.timeout(what)

    def close(self) -> None:
        with self._lock:
            pipe, self._pipe = self._pipe, None
        if pipe is not None:
            for fd in pipe:
                os.close(fd)


def open_socket(host_port: Tuple[str, int], timeout: float, context: Optional[ssl.SSLContext],
                abort: Optional[_Abort] = None) -> socket.socket:
    """TCP to ``host_port`` within ``timeout`` per address (as socket.create_connection), then
    with a ``context`` the TLS handshake within ``timeout``; both end at once on ``abort``.
    Returns a non-blocking socket; raises OSError (ssl.SSLError, socket.timeout, ConnectAborted)."""
    abort = abort if abort is not None else _Abort()
    if abort.is_set:
        raise ConnectAborted("stopped while connecting")
    # (The name lookup cannot be interrupted; it has the resolver's own timeouts.)
    addresses = socket.getaddrinfo(host_port[0], host_port[1], 0, socket.SOCK_STREAM)
    error: Optional[OSError] = None
    sock = None
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            code = sock.connect_ex(address)
            if code in (errno.EINPROGRESS, errno.EAGAIN):
                abort.wait(sock, write=True, deadline=time.monotonic() + timeout, what="timed out")
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))
            break
        except ConnectAborted:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            sock, error = None, exc
    if sock is None:
        raise error or OSError(f"no address for {host_port[0]}")
    # Every frame goes out whole in one send, so Nagle's algorithm only delays: with it, a frame
    # sent while the previous one is unacknowledged waits for the peer's delayed ACK (up to 40 ms
    # on Linux). Measured: a result published at 1,000/s reached the consumer 27 ms later (p50);
    # with TCP_NODELAY on the sender, 0.4 ms (docs/performance.md).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if context is None:
        return sock
    try:
        # Verifies the chain and the host name, presents the client certificate.
        tls_socket = context.wrap_socket(sock, server_hostname=host_port[0], do_handshake_on_connect=False)
    except BaseException:
        sock.close()
        raise
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                tls_socket.do_handshake()
                return tls_socket
            except ssl.SSLWantReadError:
                abort.wait(tls_socket, write=False, deadline=deadline, what="The handshake operation timed out")
            except ssl.SSLWantWriteError:
                abort.wait(tls_socket, write=True, deadline=deadline, what="The handshake operation timed out")
    except BaseException:
        tls_socket.close()
        raise


def ack_at_once(sock: Optional[socket.socket]) -> None:
    """Ask Linux to send the TCP ACK for what was just read now, not 4-40 ms later.

    ActiveMQ's STOMP connector leaves Nagle's algorithm on unless the broker's administrator
    adds transport.tcpNoDelay=true, so the broker holds each frame while the one before is
    unacknowledged at the TCP level. A consumer that sends nothing back for a while (its ACKs
    grouped by inbound.ack_delay, or waiting for a commit) then gets every frame after the
    first when its kernel's delayed ACK fires. Measured against the sandbox's ActiveMQ, 1,000
    messages/s with cumulative ACKs every 10 ms: p50 5.9 ms from SEND to the consumer without
    this, 0.3 with it (and with tcpNoDelay on the broker instead); acking each message, 0.3
    either way (docs/performance.md). TCP_QUICKACK is not sticky (the kernel leaves quick-ACK
    mode by itself), so it is set again after every read: one setsockopt, about a microsecond.
    Elsewhere than Linux, or on a closed socket, nothing. Only the subscriber's connection
    asks for it: a publisher writes far more than it reads, and its frames carry the ACKs; in
    two outbound runs each, with it, the bridge and the broker spent 10-15% more CPU per message
    (within the noise of that day, not pursued)."""
    if _TCP_QUICKACK is None or sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
    except OSError:
        pass


_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def explain_connect_error(exc: OSError) -> str:
    """Why a connection (or its TLS handshake) failed, in the words the logs and docs use."""
    if isinstance(exc, PeerRefused):
        return f"TLS: the broker's certificate was refused: {exc}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the broker's certificate was refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if any(alert in reason for alert in ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA",
                                              "HANDSHAKE_FAILURE", "CERTIFICATE_UNKNOWN")):
            return f"TLS: the broker refused the bridge's client certificate ({reason})"
        return f"TLS handshake failed: {reason}"
    return f"cannot connect ({exc.strerror or exc})"


def diagnose_tls(host_port: Tuple[str, int], context: ssl.SSLContext, timeout: float,
                 abort: Optional[_Abort] = None) -> Optional[str]:
    """Do the TLS handshake again, and read, to say *why* a connection that got through its
    handshake then failed: with TLS 1.3 a broker refuses a client certificate only after the
    client has finished its side of the handshake."""
    try:
        with open_socket(host_port, timeout, context, abort) as tls_socket:
            # TLS 1.3 reports a refused client certificate only on the first read.
            tls_socket.settimeout(min(timeout, 1.0))
            try:
                tls_socket.recv(1)
            except socket.timeout:
                pass
    except OSError as exc:
        return explain_connect_error(exc)
    return None


class _Transport(stomp.transport.Transport):
    """stomp.py's transport over a socket the bridge opens itself: TCP within the connect
    timeout, then, with a ``context``, TLS with the bridge's own context and ``check_peer``.

    stomp.py's ``set_ssl`` is bypassed on purpose. Its versions differ: 8.0.0 (Debian 12's
    python3-stomp) has no ``verify`` parameter, builds a context without the TLS 1.2 minimum,
    and, when python3-openssl is installed, first opens a TLS connection of its own *without*
    the client certificate to read the broker's expiry date, which a broker that requires
    client certificates refuses. Here there is one TLS connection, made the same way whatever
    the stomp.py version."""

    def __init__(self, host_port: Tuple[str, int], timeout: float, vhost: str, auto_decode: bool,
                 context: Optional[ssl.SSLContext], check_peer: Callable[[ssl.SSLSocket], None],
                 abort: _Abort, thread_name: str = "stomp-rx", quick_ack: bool = False):
        super().__init__([host_port], reconnect_attempts_max=1, timeout=timeout, vhost=vhost,
                         auto_decode=auto_decode)
        self.override_threading(named_thread_starter(thread_name))
        self._host_port = host_port
        self._timeout = timeout
        self._context = context
        self._check_peer = check_peer
        self._abort = abort
        self._quick_ack = quick_ack     # ack_at_once after every read
        self.opened = False         # the socket is connected, and its handshake and check passed
        # stomp.py 8.0.0 (Debian 12's) leaves the connect timeout on the socket, so an idle
        # connection "times out" and drops every connect_timeout seconds; 8.1+ does this itself.
        # For stomp.py this stays "blocking": its reader thread calls receive() and writers call
        # send(), below, whatever its version.
        self.blocking = True
        self.send_timeout = timeout     # BrokerConnection sets receipt_timeout once connected
        # OpenSSL allows one thread at a time on a connection. stomp.py reads in its own thread
        # and writes from the caller's and its heart-beat thread: unserialised, about 4% of TLS
        # connections failed here ("[SSL] internal error", or a CONNECT frame that never went
        # out). So a TLS socket is non-blocking, and every read and write holds this lock.
        self._tls_lock = threading.Lock()
        # One writer at a time for a whole frame (or corked batch): a heart-beat between two
        # partial writes of a big one would land inside it. (stomp.py's own plain-socket send
        # holds a semaphore for the same reason.)
        self._write_lock = threading.Lock()
        self._corked: Optional[List[bytes]] = None     # frames held by corked()
        self._splitter = _FrameSplitter()               # what is read, cut into frames
        self._cork_thread: Optional[int] = None
        self._note_listeners()

    def set_listener(self, name, listener) -> None:
        super().set_listener(name, listener)
        self._note_listeners()

    def remove_listener(self, name) -> None:
        super().remove_listener(name)
        self._note_listeners()

    def _note_listeners(self) -> None:
        """The calls process_frame makes for a MESSAGE: every listener's on_before_message, then
        every on_message, in the listeners' names' order (a listener without one is skipped)."""
        listeners = [listener for _, listener in sorted(self.listeners.items())]
        calls = [getattr(listener, name, None) for name in ("on_before_message", "on_message")
                 for listener in listeners]
        self._on_message: Tuple[Callable[[stomp.utils.Frame], None], ...] = tuple(
            call for call in calls if call is not None)

    def process_frame(self, f, frame_str) -> None:
        """A MESSAGE frame goes to the listeners' on_before_message then on_message, in their
        names' order, as stomp.py's notify does, without its per-call work (a lock, sorting the
        listeners, looking up each method by name; and with stomp.py 8, a log call): a third of
        the receiving thread's time per message. Any other frame goes through stomp.py."""
        if f.cmd != "MESSAGE":
            return super().process_frame(f, frame_str)
        for call in self._on_message:
            call(f)
        return None

    @contextlib.contextmanager
    def corked(self) -> Iterator[None]:
        """Frames this thread sends inside go out together, in one write, when the block ends
        without an exception (with one, none of them): the ACKs of a batch, or a whole
        transaction, in one system call instead of one per frame. Other threads' frames, such
        as heart-beats, go out at once as usual."""
        self._corked, self._cork_thread = [], threading.get_ident()
        try:
            yield
            frames = self._corked
        finally:
            self._corked, self._cork_thread = None, None
        if frames:
            self._send_now(b"".join(frames))

    def send(self, encoded_frame: bytes) -> None:
        if self._corked is not None and self._cork_thread == threading.get_ident():
            self._corked.append(encoded_frame)
            return None
        return self._send_now(encoded_frame)

    def attempt_connection(self) -> None:
        """Connect or raise OSError (ssl.SSLError, PeerRefused); stomp.py then starts its reader."""
        self.connection_error = False
        sock = open_socket(self._host_port, self._timeout, self._context, self._abort)
        try:
            if self._context is not None:
                self._check_peer(sock)
            # A plain socket blocks, as stomp.py 8 keeps every socket: a reader thread, and writes
            # from the caller's thread (which _limit_send_time bounds). A TLS one is non-blocking
            # under _tls_lock (receive/send below). (stomp.py 9's own loop for TLS takes an
            # end-of-file for "nothing to read yet": a closed connection would go unnoticed.)
            sock.setblocking(self._context is None)
        except BaseException:
            sock.close()        # the TLS socket once made (wrap_socket took over the TCP one)
            raise
        self.socket = sock
        self.current_host_and_port = self._host_port
        self.opened = True

    def _BaseTransport__read(self) -> List[bytes]:
        """Replaces stomp.py's BaseTransport.__read (its reader thread's "read the next frames"),
        the same reads and errors, with _FrameSplitter's linear cutting into frames."""
        while self.running:
            frames = self._splitter.frames()
            if frames:
                return frames
            try:
                chunk = self.receive()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return []
            except stomp.exception.InterruptedException:
                continue
            except Exception:           # noqa: BLE001 - as stomp.py: an error is the end
                log.debug("socket read error", exc_info=True)
                chunk = b""
            if not chunk:
                raise stomp.exception.ConnectionClosedException()
            self._splitter.feed(chunk)
        return []

    def receive(self) -> bytes:
        """Up to RECV_BYTES, waiting for them; b"" at the end of the connection (stomp.py then
        reports it lost). With ``quick_ack``, each read asks the kernel to acknowledge at once
        (ack_at_once)."""
        sock = self.socket
        if not isinstance(sock, ssl.SSLSocket):
            data = super().receive()
            if self._quick_ack:
                ack_at_once(sock)
            return data
        while True:
            with self._tls_lock:
                try:
                    data = sock.recv(RECV_BYTES)
                    if self._quick_ack:
                        ack_at_once(sock)
                    return data
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    pass
            try:
                select.select([sock], [], [], 1.0)     # outside the lock: writers go on meanwhile
            except (OSError, ValueError):              # closed under us
                return b""
            if not self.running:
                return b""

    def _send_now(self, encoded_frame: bytes) -> None:
        """All of ``encoded_frame``, within send_timeout (a broker that stops reading)."""
        sock = self.socket
        if sock is None:
            raise stomp.exception.NotConnectedException()
        with self._write_lock:
            if not isinstance(sock, ssl.SSLSocket):
                # Not stomp.py's send(): it looks at self.socket again after its check, and the
                # reader thread sets it to None when the broker closes the connection, so a send
                # racing that raised AttributeError, which ended the publisher thread (seen
                # once, RabbitMQ closing on an oversized frame). This socket raises OSError.
                sock.sendall(encoded_frame)
                return None
            self._send_all(sock, memoryview(encoded_frame))
        return None

    def _send_all(self, sock: ssl.SSLSocket, view: memoryview) -> None:
        """Fails when nothing could be written for send_timeout (a corked batch may be big)."""
        deadline = time.monotonic() + self.send_timeout
        while view:
            with self._tls_lock:
                try:
                    view = view[sock.send(view):]
                    deadline = time.monotonic() + self.send_timeout
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    pass
            if view:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout(f"no room to send for {self.send_timeout:g} s")
                select.select([], [sock], [], min(left, 1.0))
        return None


class _Connection12(stomp.connect.StompConnection12):
    """stomp.py's STOMP 1.2 connection over a ``_Transport`` (what StompConnection12.__init__
    does, with our transport instead of the one it would make)."""

    def __init__(self, transport: _Transport, heartbeats: Tuple[int, int]):
        stomp.connect.BaseConnection.__init__(self, transport)
        stomp.protocol.Protocol12.__init__(self, transport, heartbeats,
                                           heart_beat_receive_scale=HEARTBEAT_GRACE)


def grid_trust_check(tls: TlsSettings) -> Optional[Callable[[ssl.SSLSocket], Optional[str]]]:
    """The broker certificate check beyond OpenSSL's chain and host name (which the handshake
    does): the CA's CRL, its namespaces and the serverAuth key usage (gridtrust.TrustStore), for a
    verified connection to brokers of our own CAs; None otherwise."""
    if not (tls.enabled and tls.verify and (tls.ca_file or tls.ca_dir)):
        return None
    try:
        import cryptography  # noqa: F401 - a Debian Recommends, not a Depends
    except ImportError:
        log.error("python3-cryptography is not installed: the brokers' certificates get OpenSSL's chain and "
                  "host name checks only, not CRLs, namespaces or key usage (apt install python3-cryptography)")
        return None
    from ..trust.gridtrust import TrustStore, Untrusted
    store = TrustStore.from_settings(tls.ca_file, tls.ca_dir, tls.rules)

    def check(tls_socket: ssl.SSLSocket) -> Optional[str]:
        try:
            store.check_tls_peer(tls_socket, "server")
        except Untrusted as exc:
            return str(exc)
        return None
    return check


class BrokerConnection:
    """One connection attempt cycle over ``settings.hosts``, in order."""

    def __init__(self, settings: BrokerSettings, client_id: str = "", auto_decode: bool = True,
                 check_peer: Optional[Callable[[ssl.SSLSocket], Optional[str]]] = None, wakeup=None,
                 thread_name: str = "stomp-rx", quick_ack: bool = False):
        """``check_peer(tls_socket)`` runs right after each TLS handshake, before any STOMP
        frame is sent, and returns why the broker's certificate is refused (None: accepted);
        the grid trust check (CRLs, namespaces, key usage) plugs in here. ``wakeup`` (the
        owner's wakeup.Wakeup) is set whenever a frame arrives or the connection drops; without
        one, ``events.wakeup`` is a threading.Event of its own. ``thread_name``: stomp.py's
        reader thread's (top -H shows it). ``quick_ack``: TCP ACKs at once (ack_at_once), for a
        consumer, which may send nothing back for a while."""
        self.settings = settings
        self.thread_name = thread_name
        self.quick_ack = quick_ack
        self.check_peer = check_peer if check_peer is not None else grid_trust_check(settings.tls)
        self.client_id = client_id
        # Subscribers take bodies as bytes: stomp.py's decoding would hide invalid UTF-8.
        self.auto_decode = auto_decode
        self.wakeup = wakeup if wakeup is not None else threading.Event()
        self.events = _Events(self.wakeup)
        self._abort = _Abort()
        self.conn: Optional[_Connection12] = None
        self.address: Optional[Tuple[str, int]] = None
        self._last: Optional[Tuple[str, int]] = None     # the broker last connected to
        self._ca_file: Optional[str] = None
        if settings.tls.enabled:
            self._ca_file = self._prepare_ca(settings.tls)
            if not settings.tls.verify:
                log.warning("TLS certificate verification is OFF (brokers.tls.verify: false): "
                            "anyone between the bridge and the broker can read and change messages")

    @staticmethod
    def _prepare_ca(tls: TlsSettings) -> Optional[str]:
        if tls.ca_file or not tls.ca_dir:
            return tls.ca_file or None
        handle = tempfile.NamedTemporaryFile("w", prefix="msg-nagios-bridge-ca-", suffix=".pem", delete=False)
        with handle:
            handle.write(ca_bundle_from_dir(tls.ca_dir))
        return handle.name

    def connect(self) -> Optional[str]:
        """Try each broker once, in order, but starting after the one last connected to: a
        broker that was just lost (crashed, or hung with its port still open) is tried last.
        Returns None when connected, else why not."""
        problems = []
        hosts = list(self.settings.hosts)
        if self._last in hosts:
            after = hosts.index(self._last) + 1
            hosts = hosts[after:] + hosts[:after]
        for host_port in hosts:
            if self._abort.is_set:
                return "stopped while connecting"
            problem = self._connect_one(host_port)
            if problem is None:
                return None
            problems.append(f"{host_port[0]}:{host_port[1]}: {problem}")
        return "; ".join(problems)

    def _connect_one(self, host_port: Tuple[str, int]) -> Optional[str]:
        s = self.settings
        tls = s.tls
        self.events = _Events(self.wakeup)
        context = None
        if tls.enabled:
            try:
                # Made at every attempt, so that a renewed certificate or CA is picked up.
                context = tls_context(tls, self._ca_file)
            except (OSError, ValueError) as exc:
                return f"TLS: cannot load the bridge's certificate, key or CAs ({exc})"
        # RabbitMQ takes the CONNECT's host header as the vhost: "/" unless one is configured.
        vhost = s.vhost or ("/" if s.kind == kinds.RABBITMQ else host_port[0])
        transport = _Transport(host_port, s.connect_timeout, vhost, self.auto_decode,
                               context, self._check_peer, self._abort, self.thread_name, self.quick_ack)
        conn = _Connection12(transport, heartbeats(s.heartbeat_ms))
        conn.set_listener("bridge", self.events)
        headers = {"client-id": self.client_id} if self.client_id else {}
        try:
            conn.connect(s.username or None, s.password or None, wait=False, headers=headers)
        except (StompException, OSError) as exc:
            self._close(conn)
            if self._abort.is_set:
                return "stopped while connecting"
            if isinstance(exc, OSError) and not transport.opened:
                return self._with_hint(explain_connect_error(exc))    # our own connect or handshake
            # The broker closed the connection after the handshake, before or while CONNECT
            # went out (TLS 1.3 refuses a client certificate only then): ask again, and read.
            return (self._diagnose(host_port) if tls.enabled else None) or \
                f"cannot connect ({exc.__class__.__name__}: {exc})"
        # abort() sets ``connected`` too, to end this wait (the connect timeout) at once.
        if not self.events.connected.wait(s.connect_timeout) or self.events.lost or self._abort.is_set:
            error = self._first_error()
            self._close(conn)
            if self._abort.is_set:
                return "stopped while connecting"
            if not error and tls.enabled:
                error = self._diagnose(host_port)
            return error or f"no CONNECTED frame within {s.connect_timeout:g} s"
        self._limit_send_time(conn)
        self.conn, self.address, self._last = conn, host_port, host_port
        log.info("connected to broker %s:%d%s", *host_port,
                 f" ({conn.transport.socket.version()})" if tls.enabled else "")
        return None

    def _check_peer(self, tls_socket: ssl.SSLSocket) -> None:
        """The hook after the handshake: raises PeerRefused (the socket is then closed and the
        reason reported like any TLS refusal) when ``check_peer`` refuses the broker."""
        if self.check_peer is None:
            return
        # A check that breaks refuses the broker: it neither lets it in nor kills the part.
        try:
            reason = self.check_peer(tls_socket)
        except Exception as exc:  # noqa: BLE001
            reason = f"the trust check failed ({exc.__class__.__name__}: {exc})"
        if reason:
            raise PeerRefused(reason)

    def _limit_send_time(self, conn) -> None:
        """A broker that stops reading (ActiveMQ's producer flow control, or a hung broker whose
        kernel still answers) would block a send for ever: stomp.py's socket has no timeout once
        connected. A send that cannot go out within receipt_timeout fails like a lost connection."""
        sock = getattr(conn.transport, "socket", None)
        if sock is None:
            return
        seconds = max(1.0, self.settings.receipt_timeout)
        conn.transport.send_timeout = seconds          # a TLS socket is non-blocking: its own bound
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        struct.pack("ll", int(seconds), int(seconds % 1 * 1_000_000)))

    def _diagnose(self, host_port: Tuple[str, int]) -> Optional[str]:
        tls = self.settings.tls
        return self._with_hint(diagnose_tls(host_port, tls_context(tls, self._ca_file),
                                             self.settings.connect_timeout, self._abort))

    def _with_hint(self, problem: Optional[str]) -> Optional[str]:
        if problem and "client certificate" in problem and not self.settings.tls.cert_file:
            problem += "; the broker requires one: set brokers.tls.cert_file and key_file"
        return problem

    def _first_error(self) -> str:
        with self.events.lock:
            for kind, headers, body in self.events.replies:
                if kind == "error":
                    return f"refused: {headers.get('message', '')} {body.strip()[:200]}".strip()
        return ""

    @staticmethod
    def _close(conn: _Connection12) -> None:
        sock = getattr(conn.transport, "socket", None)
        # A DISCONNECT only where it cannot block: into a broker that stopped reading, the
        # send would wait (stomp.py's heart-beat thread holding the socket meanwhile).
        if sock is None or _has_room(sock):
            try:
                conn.disconnect()
            except (StompException, OSError):
                pass
        # transport.stop() waits, without a timeout, for the receiving thread, which ends only
        # when the socket does: a broker that still sends heart-beats but no longer reads
        # would keep it (and us) there for ever.
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            conn.transport.stop()
        except (StompException, OSError, RuntimeError):
            pass

    def abort(self) -> None:
        """End a connect() under way (from another thread) and refuse any later one: for the
        owner's stop(). A connection already made is left as it is (it drains)."""
        self._abort.set()
        self.events.connected.set()

    @property
    def is_connected(self) -> bool:
        return self.conn is not None and not self.events.lost and self.conn.is_connected()

    def send(self, destination: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Write one SEND frame (encoded by send_frame); raises OSError/StompException if the
        socket is gone."""
        assert self.conn is not None
        headers = kinds.outgoing_headers(self.settings.kind, headers)
        self.conn.transport.send(send_frame(destination, body, headers))

    def send_stored(self, destination: str, body: bytes, headers: Mapping[str, str], name: str, value: str) -> None:
        """send(destination, body, dict(headers, name=value)), for headers taken from the spool:
        encoded from their stored text where it can be (send_frame_stored)."""
        assert self.conn is not None
        stored = getattr(headers, "stored_text", None)
        frame = None
        if stored is not None and kinds.adds_no_headers(self.settings.kind, stored):
            frame = send_frame_stored(destination, body, headers, name, value)
        if frame is None:
            self.send(destination, body, dict(headers, **{name: value}))
        else:
            self.conn.transport.send(frame)

    def ack_all(self, ack_ids: Iterable[str]) -> None:
        """An ACK frame for each id (the subscriber's cumulative acks: one per subscription of
        a batch), the frames written together in one send."""
        assert self.conn is not None
        frames = b"".join(ack_frame(ack_id) for ack_id in ack_ids)
        if frames:
            self.conn.transport.send(frames)

    def corked(self):
        """The frames sent inside the block go out in one write at its end (_Transport.corked)."""
        assert self.conn is not None
        return self.conn.transport.corked()

    def begin(self, transaction: str) -> None:
        assert self.conn is not None
        self.conn.begin(transaction)

    def commit(self, transaction: str, receipt: str) -> None:
        """COMMIT with a receipt: the receipt proves every SEND of the transaction is stored."""
        assert self.conn is not None
        self.conn.commit(transaction, headers={"receipt": receipt})

    def take_replies(self) -> List[Tuple[str, Mapping[str, str], str]]:
        """("receipt" | "error", headers, body) that arrived since the last call, in order."""
        with self.events.lock:
            replies, self.events.replies = self.events.replies, []
        return replies

    def close(self) -> None:
        if self.conn is not None:
            self._close(self.conn)
        self.conn = None
        self.address = None

    def discard(self) -> None:
        """Close, and remove the CA bundle made from a CA directory."""
        self.close()
        self._abort.close()
        if self._ca_file and self.settings.tls.ca_dir:
            try:
                os.unlink(self._ca_file)
            except OSError:
                pass


def _has_room(sock) -> bool:
    """True if a small frame can be written to ``sock`` now."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return False
