"""Icinga 2's REST API over one kept-alive TLS connection (docs/icinga2-notes.md).

Icinga closes a connection after 10 s idle and on every reload, and refuses connections for a
moment while it reloads: any failure closes the connection, and the next request opens a new
one. A request that got no answer may or may not have been processed (the caller decides
whether to send it again). Icinga's certificate is always verified against ``ca_file``.
"""
from __future__ import annotations

import base64
import codecs
import http.client
import json
import re
import socket
import ssl
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from ...config import Icinga2Settings

# Object lists are not read whole: they are taken an object at a time (results_of), however
# long; one object may be this big.
MAX_RESULT_BYTES = 16 << 20
READ_SIZE = 1 << 16
MAX_HEAD_BYTES = 64 << 10       # an answer's status line and header fields
# The inbound writer's answers (LeanClient) are about 100 bytes: a bigger one, counted as it
# comes on the wire (chunk sizes included), is not Icinga's answer to a check result.
MAX_LEAN_ANSWER_BYTES = 1 << 20
MAX_INTERIM_ANSWERS = 8         # 1xx answers skipped before the final one
MAX_ERROR_BYTES = 64 << 10      # of an error answer's body, what is read (for its message)


class ApiUnavailable(Exception):
    """No answer: Icinga cannot be reached, closed the connection, or sent something that is
    not HTTP. The message says which."""


def ssl_context(settings: Icinga2Settings) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=settings.ca_file)
    if settings.cert_file:
        context.load_cert_chain(settings.cert_file, settings.key_file)
    return context


def headers(settings: Icinga2Settings) -> dict:
    # Without Accept: application/json Icinga answers 400 with an HTML page and closes.
    result = {"Accept": "application/json", "Content-Type": "application/json"}
    if settings.user:
        token = base64.b64encode(f"{settings.user}:{settings.password}".encode()).decode("ascii")
        result["Authorization"] = f"Basic {token}"
    return result


class ApiClient:
    """Object lists from one Icinga 2 API (each_result), on a connection kept between them,
    and new connections for the event stream. (The writer's many small requests go through
    LeanClient.)"""

    def __init__(self, settings: Icinga2Settings):
        self.settings = settings
        self._context = ssl_context(settings)
        self._headers = headers(settings)
        self._connection: Optional[http.client.HTTPSConnection] = None

    def connection(self, timeout: Optional[float] = None) -> http.client.HTTPSConnection:
        """A new connection to the API (not yet opened), e.g. for the event stream."""
        return http.client.HTTPSConnection(
            self.settings.host, self.settings.port, context=self._context,
            timeout=self.settings.timeout if timeout is None else timeout)

    def each_result(self, path: str) -> Tuple[int, Any]:
        """GET ``path``: (200, an iterator of its results, read one at a time as it is
        consumed: consume it before the next request), or (status, the answer) for another
        status. ApiUnavailable when there is no answer, or the answer breaks off or is not a
        list of results (the connection is then closed)."""
        if self._connection is None:
            self._connection = self.connection()
        try:
            self._connection.request("GET", path, headers=self._headers)
            response = self._connection.getresponse()
            if response.status != 200:
                data = response.read(MAX_ERROR_BYTES)
                self.close()
                try:
                    return response.status, json.loads(data)
                except (ValueError, RecursionError):
                    return response.status, data.decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise ApiUnavailable(f"GET {path}: {type(exc).__name__}: {exc}") from None

        def results() -> Iterator[dict]:
            try:
                yield from results_of(response.read)
                if response.read(MAX_HEAD_BYTES) and response.read(1):
                    raise ValueError("more than a closing brace after the results")
                if response.will_close:
                    self.close()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.close()
                raise ApiUnavailable(f"GET {path}: {type(exc).__name__}: {exc}") from None
            except BaseException:
                self.close()                # not read to its end: the connection cannot be reused
                raise
        return 200, results()

    @property
    def connected(self) -> bool:
        """A connection is open: the next request goes on it (not on a new one)."""
        return self._connection is not None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _answer(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):    # RecursionError: nested too deeply
        return data.decode("utf-8", "replace")


_RESULTS_START = re.compile(r'\s*\{\s*"results"\s*:\s*\[')
_DECODER = json.JSONDecoder()


_STRUCTURE = re.compile(r'[{}\[\]"]')
_STRING_STOP = re.compile(r'["\\]')


def results_of(read: Callable[[int], bytes], limit: int = MAX_RESULT_BYTES,
               too_big: Optional[Callable[[str], None]] = None) -> Iterator[dict]:
    """The objects of an answer ``{"results": [...]}``, one at a time, from ``read(n)`` (e.g. an
    HTTPResponse's read): the whole answer is never held, only the object being read. Time is
    linear in the answer's size however it is cut: an object cut by the end of what was read
    is parsed again only once twice as much is there. ValueError when the answer is not such a
    list, or one object is over ``limit`` bytes (counted as characters; an object that came
    whole within a read past the limit, READ_SIZE more, is taken: at most that much is held).
    With ``too_big``, such an object is skipped instead (read to its end, never held) and
    ``too_big`` gets its first characters: one huge object does not cost the whole list."""
    decode = codecs.getincrementaldecoder("utf-8")("replace").decode
    text, at, done = "", 0, False

    def more(least: int) -> bool:
        """Read until ``least`` characters are there after ``at`` (or the end); False at the end."""
        nonlocal text, at, done
        if at > READ_SIZE and at * 2 > len(text):
            text, at = text[at:], 0            # drop what was parsed: copies stay linear
        pieces, size = [text], len(text) - at
        while not done and size < least:
            data = read(READ_SIZE)
            done = not data
            pieces.append(decode(data, final=done))
            size += len(pieces[-1])
        if len(pieces) > 1:
            text = "".join(pieces)              # once per call, and calls ask for twice as much
        return len(text) - at >= least

    def skip_blanks() -> str:
        nonlocal at
        while True:
            while at < len(text) and text[at] in " \t\r\n":
                at += 1
            if at < len(text) or not more(1):
                return text[at] if at < len(text) else ""

    def skip_object() -> None:
        """Move ``at`` past the object starting there, holding at most a read or two of it:
        strings are skipped to their closing quote (escapes included), brackets counted."""
        nonlocal at
        depth, in_string = 0, False
        while True:
            found = (_STRING_STOP if in_string else _STRUCTURE).search(text, at)
            if found is None:
                at = len(text)
            elif in_string and found.group() == "\\":
                if found.end() < len(text):
                    at = found.end() + 1        # the escaped character, whatever it is
                    continue
                at = found.start()              # the backslash and what it escapes come next
            else:
                at = found.end()
                mark = found.group()
                if mark == '"':
                    in_string = not in_string
                elif mark in "{[":
                    depth += 1
                else:
                    depth -= 1
                    if depth == 0:
                        return
                continue
            if not more(2 if at < len(text) else 1):
                raise ValueError("the answer ends inside the results")

    more(64)
    start = _RESULTS_START.match(text, at)
    if not start:
        raise ValueError(f"not an answer with results: {text[at:at + 60]!r}")
    at = start.end()
    first = True
    while True:
        mark = skip_blanks()
        if mark == "]":
            return
        if not mark:
            raise ValueError("the answer ends inside the results")
        if not first:
            if mark != ",":
                raise ValueError(f"expected , or ] between results, found {mark!r}")
            at += 1
            mark = skip_blanks()
        if mark != "{":
            raise ValueError(f"a result is not a JSON object: {text[at:at + 60]!r}")
        while True:
            try:
                item, end = _DECODER.raw_decode(text, at)
                break
            except json.JSONDecodeError:
                if done:
                    raise ValueError("the answer ends inside the results") from None
                if len(text) - at > limit:
                    if too_big is None:
                        raise ValueError(f"a result is over {limit} bytes") from None
                    too_big(text[at:at + 200])
                    skip_object()
                    item = None
                    break
                # Twice as much, but never past the limit: one more than it tells.
                more(min(max(2 * (len(text) - at), READ_SIZE), limit + 1))
            except RecursionError:
                raise ValueError("a result is nested too deeply") from None
        first = False
        if item is not None:
            at = end
            yield item


class LeanClient:
    """The same requests as ApiClient, for the inbound writer's many small ones: a minimal
    HTTP/1.1 exchange on one kept-alive TLS socket, without http.client, whose request and
    header parsing cost about twice the rest of a request (measured: 0.14 against 0.05 ms CPU
    per process-check-result). Reads answers with Content-Length, chunked, or until close."""

    def __init__(self, settings: Icinga2Settings):
        self.settings = settings
        self._context = ssl_context(settings)
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        self._fields = f"Host: {host}:{settings.port}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers(settings).items())
        self._sock: Optional[socket.socket] = None
        self._buffer = bytearray()

    @property
    def connected(self) -> bool:
        """A connection is open: the next request goes on it (not on a new one)."""
        return self._sock is not None

    def _connect(self) -> None:
        raw = socket.create_connection((self.settings.host, self.settings.port), timeout=self.settings.timeout)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # one small request, its answer
            self._sock = self._context.wrap_socket(raw, server_hostname=self.settings.host)
        except BaseException:
            raw.close()
            raise
        self._buffer = bytearray()

    def request(self, method: str, path: str, body: Any = None) -> Tuple[int, Any]:
        """(HTTP status, the answer parsed from JSON, or its text if it is not JSON);
        raises ApiUnavailable when there is no answer (the connection is then closed)."""
        payload = b"" if body is None else json.dumps(body).encode("utf-8")
        length = "" if body is None else f"Content-Length: {len(payload)}\r\n"
        try:
            if self._sock is None:
                self._connect()
            # The path comes quoted (ASCII); latin-1 refuses anything else.
            self._sock.sendall(f"{method} {path} HTTP/1.1\r\n{self._fields}{length}\r\n".encode("latin-1")
                               + payload)
            status, fields = self._read_final_head()
            data = self._read_body(status, fields)
            if fields.get("connection", "").lower() == "close":
                self.close()
        except (OSError, ValueError) as exc:    # UnicodeError is a ValueError
            self.close()
            raise ApiUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        return status, _answer(data)

    # The buffer is a bytearray and every search resumes where the last one stopped: reading an
    # answer stays linear in its size however the server cuts it (one byte per packet included).

    def _fill(self) -> None:
        data = self._sock.recv(1 << 16)
        if not data:
            raise ConnectionError("the connection was closed")
        self._buffer += data

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]             # from the front of a bytearray: no copy of the rest
        return data

    def _read_exact(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        return self._take(size)

    def _find(self, mark: bytes, limit: int, what: str) -> int:
        """The offset of ``mark`` in the buffer, reading until it comes; ValueError once more
        than ``limit`` bytes came without it."""
        start = 0
        while True:
            at = self._buffer.find(mark, start)
            if at >= 0:
                return at
            if len(self._buffer) > limit:
                raise ValueError(f"{what} is over {limit} bytes")
            start = max(0, len(self._buffer) - len(mark) + 1)
            self._fill()

    def _read_line(self) -> bytes:
        at = self._find(b"\r\n", MAX_HEAD_BYTES, "a line of the answer")
        line = self._take(at)
        del self._buffer[:2]
        return line

    def _read_head(self) -> Tuple[int, Dict[str, str]]:
        end = self._find(b"\r\n\r\n", MAX_HEAD_BYTES, "the answer's header")
        lines = self._take(end).decode("latin-1").split("\r\n")
        del self._buffer[:4]
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ValueError(f"not an HTTP answer: {lines[0][:80]!r}")
        fields = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                raise ValueError(f"not an HTTP header field: {line[:80]!r}")
            fields[name.strip().lower()] = value.strip()
        return int(code), fields

    def _read_final_head(self) -> Tuple[int, Dict[str, str]]:
        """The head of the final answer: interim 1xx answers (a proxy's 100 Continue) are
        skipped, or the answers that follow would be read as the next requests' (review
        2026-12-05); 101 switches protocols, which this client never asks for."""
        for _ in range(MAX_INTERIM_ANSWERS):
            status, fields = self._read_head()
            if status == 101:
                raise ValueError("the answer switches protocols (101), which was not asked for")
            if not 100 <= status < 200:
                return status, fields
        raise ValueError(f"more than {MAX_INTERIM_ANSWERS} interim (1xx) answers")

    def _read_body(self, status: int, fields: Dict[str, str]) -> bytes:
        limit = MAX_LEAN_ANSWER_BYTES
        if status in (204, 304):
            return b""
        if "chunked" in fields.get("transfer-encoding", "").lower():
            # One bytearray, not a list of chunks, and the limit counts the chunk lines too:
            # an answer in 1-byte chunks held many times its size in memory (review).
            body, wire = bytearray(), 0
            while True:
                line = self._read_line()
                digits = line.split(b";", 1)[0].strip()
                if not digits or len(digits) > 16 or digits.strip(b"0123456789abcdefABCDEF"):
                    raise ValueError(f"not a chunk size: {bytes(digits[:40])!r}")
                chunk = int(digits, 16)
                if chunk == 0:
                    while self._read_line():    # trailer fields, up to an empty line
                        pass
                    return bytes(body)
                wire += len(line) + chunk + 4
                if wire > limit:
                    raise ValueError(f"the answer is over {limit} bytes")
                body += self._read_exact(chunk)
                if self._read_exact(2) != b"\r\n":
                    raise ValueError("a chunk does not end with CRLF")
        if "content-length" in fields:
            if not fields["content-length"].isdigit():
                raise ValueError(f"not a Content-Length: {fields['content-length'][:40]!r}")
            size = int(fields["content-length"])
            if not 0 <= size <= limit:
                raise ValueError(f"the answer is over {limit} bytes (Content-Length {size})")
            return self._read_exact(size)
        while True:                             # until the server closes the connection
            if len(self._buffer) > limit:
                raise ValueError(f"the answer is over {limit} bytes")
            data = self._sock.recv(1 << 16)
            if not data:
                data = bytes(self._buffer)
                self.close()
                return data
            self._buffer += data

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buffer = bytearray()
