"""broker/connection.py replaces stomp.py's parse_headers and parse_frame with leaner ones, and
sends MESSAGE frames to the listeners without stomp.py's notify: each must give what stomp.py's
own gives, for every input."""
import importlib.util
import random
import re
import threading
import time

import stomp.utils

from msg_nagios_bridge.broker import connection


def stomp_original():
    """stomp.py's utils module as shipped, loaded afresh (the package's is patched)."""
    spec = importlib.util.spec_from_file_location("stomp_utils_as_shipped", stomp.utils.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bridge_parses_stomp_headers_and_frames_with_its_own_functions():
    assert stomp.utils.parse_headers is connection._parse_headers
    assert stomp.transport.parse_frame is connection._parse_frame


def test_headers_parse_exactly_as_stomp_py_parses_them():
    original = stomp_original()
    fixed = [
        ["MESSAGE", "destination:/queue/a", "message-id:ID:1", "subscription:0"],
        ["MESSAGE", "a\\cb:c\\nd\\\\e", "a:second", "x\\ry:\\c\\c"],            # escapes in keys and values
        ["MESSAGE", "no colon here", ":empty key", "key:", "k:v:w", "dup:1", "dup:2"],
        ["MESSAGE", "bad\\qescape:v\\t", "trailing\\:x\\"],                       # undefined escapes
        ["MESSAGE", "é\u2028:ü\\n", ""],
        ["MESSAGE", "k:v\nw", "\n:x", "a\nb:c"],                                  # newlines (never from a frame)
    ]
    rng = random.Random(7)
    alphabet = "ab:\\cnrt\\:é"
    generated = [["MESSAGE"] + ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
                                for _ in range(rng.randrange(0, 8))] for _ in range(3000)]
    for lines in fixed + generated:
        for offset in (0, 1):
            assert connection._parse_headers(lines, offset) == original.parse_headers(lines, offset), lines
    frame = b"MESSAGE\ndestination:/queue/a\\cb\nx:y\n\nbody"
    assert stomp.utils.parse_frame(frame).headers == original.parse_frame(frame).headers == {
        "destination": "/queue/a:b", "x": "y"}


def test_a_header_name_is_one_object_shared_by_every_frame():
    """Names are shared as they are parsed: the 500 messages a prefetch holds do not each keep
    a copy of the same 23 names."""
    connection._NAMES.clear()       # a table other tests filled to its bound would start again here
    first = connection._parse_frame(b"MESSAGE\nresult_id:1\nnagios_host:a.example\n\nx")
    second = connection._parse_frame(b"MESSAGE\nresult_id:2\nnagios_host:b.example\n\ny")
    assert list(first.headers) == list(second.headers) == ["result_id", "nagios_host"]
    assert all(a is b for a, b in zip(first.headers, second.headers))
    assert first.headers["result_id"] == "1" and second.headers["nagios_host"] == "b.example"


def test_the_shared_names_stay_bounded_whatever_names_senders_make_up():
    """Made-up names (a new one in every frame, or long ones) are not kept beyond the table's
    bound: it starts again when full, and a long name is never kept."""
    for i in range(3 * connection.NAMES_KEPT):
        connection._parse_frame(b"MESSAGE\nmade-up-%d:v\n\n" % i)
        assert len(connection._NAMES) <= connection.NAMES_KEPT
    long_name = "n" * (connection.NAME_KEPT_CHARS + 1)
    frame = connection._parse_frame(f"MESSAGE\n{long_name}:v\n\n".encode())
    assert frame.headers == {long_name: "v"} and long_name not in connection._NAMES
    again = connection._parse_frame(b"MESSAGE\nresult_id:3\n\n")
    assert again.headers == {"result_id": "3"} and connection._NAMES["result_id"] is next(iter(again.headers))


def test_a_huge_header_line_is_parsed_in_linear_time():
    """1 MB without a colon, and 1 MB of escapes: each line is matched once."""
    started = time.monotonic()
    connection._parse_headers(["MESSAGE", "x" * (1 << 20), "k:" + "\\n" * (1 << 19)])
    assert time.monotonic() - started < 5


def frames_as_stomp_parses_them(original, frames):
    for frame in frames:
        ours, theirs = connection._parse_frame(frame), original.parse_frame(frame)
        if theirs is None:
            assert ours is None, frame
        else:
            assert (ours.cmd, ours.headers, ours.body) == (theirs.cmd, theirs.headers, theirs.body), frame


def test_frames_parse_exactly_as_stomp_py_parses_them():
    original = stomp_original()
    fixed = [
        b"MESSAGE\ndestination:/queue/a\nmessage-id:ID\\c1\n\nbody\n\nmore",
        b"MESSAGE\r\ndestination:/queue/a\r\nx:y\r\n\r\nbody\n\n",             # CRLF lines
        b"MESSAGE\r\nx:y\r\n\r\n\nbody", b"MESSAGE\nx:y\r\n\r\nbody\n\n",    # both ends: the first wins
        b"\n\nMESSAGE\nx:y\n\nbody", b"\n\n\n", b"", b"MESSAGE", b"MESSAGE\nx:y",   # blank, empty, no end
        b"ERROR\nmessage:bad\xff\xfe\n\n\xff body",                                 # not UTF-8
        b"MESSAGE\nx:a\rb\n\r\n\r\n",                                               # a lone CR
    ]
    rng = random.Random(11)
    pieces = [b"MESSAGE", b"\n", b"\r\n", b"\r", b":", b"k", b"v", b"\\c", b"\\", b"\xc3\xa9", b"\xff", b" "]
    generated = [b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 24))) for _ in range(5000)]
    frames_as_stomp_parses_them(original, fixed + generated)


def test_a_huge_frame_is_parsed_in_linear_time():
    """No blank line in 8 MB of CRs and LFs (the searches for its end), and 4 MB of headers."""
    original = stomp_original()
    started = time.monotonic()
    connection._parse_frame(b"MESSAGE" + b"\r\n\r" * (1 << 21) + b"x")
    connection._parse_frame(b"MESSAGE\n" + b"k:v\n" * (1 << 20) + b"\n")
    assert time.monotonic() - started < 5
    frames_as_stomp_parses_them(original, [b"MESSAGE" + b"\r\n\r" * 1000, b"MESSAGE\n" + b"k:v\n" * 1000 + b"\n"])


class Recorder(stomp.ConnectionListener):
    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def on_before_message(self, frame):
        self.calls.append(("before", self.name, frame.headers["n"]))

    def on_message(self, frame):
        self.calls.append(("message", self.name, frame.headers["n"]))


class Bare:
    """A listener with no stomp.py base class and no message methods: skipped, as notify does."""


def test_message_frames_reach_the_listeners_as_stomp_py_notify_sends_them():
    """Every listener's on_before_message, then every on_message, in their names' order; a
    listener set or removed later is seen at the next frame; other frames go through stomp.py."""
    ours_calls, theirs_calls = [], []
    ours = connection._Transport(("127.0.0.1", 1), 1.0, "localhost", False, None, lambda sock: None,
                                 connection._Abort())
    theirs = stomp.transport.Transport([("127.0.0.1", 1)])
    for transport, calls in ((ours, ours_calls), (theirs, theirs_calls)):
        transport.set_listener("b", Recorder("b", calls))
        transport.set_listener("a", Recorder("a", calls))
        transport.set_listener("c", Bare())
        transport.process_frame(stomp.utils.Frame("MESSAGE", {"n": "1"}, b""), b"")
        transport.remove_listener("a")
        transport.set_listener("d", Recorder("d", calls))
        transport.process_frame(stomp.utils.Frame("MESSAGE", {"n": "2"}, b""), b"")
        transport.process_frame(stomp.utils.Frame("RECEIPT", {"receipt-id": "r", "n": "3"}, b""), b"")
    assert ours_calls == theirs_calls
    assert ours_calls[:4] == [("before", "a", "1"), ("before", "b", "1"), ("message", "a", "1"), ("message", "b", "1")]
    assert ours_calls[4:] == [("before", "b", "2"), ("before", "d", "2"), ("message", "b", "2"), ("message", "d", "2")]


def test_the_heart_beat_listener_sees_every_message_frame():
    """stomp.py's heart-beat listener (the protocol object itself) takes a MESSAGE as a sign of
    life: ActiveMQ sends no heart-beat while it sends messages, so a busy subscription would be
    declared dead if the short path to the listeners left it out."""
    transport = connection._Transport(("127.0.0.1", 1), 1.0, "localhost", False, None, lambda sock: None,
                                      connection._Abort())
    protocol = connection._Connection12(transport, (10000, 5000))
    seen = []
    protocol.on_message = lambda frame: seen.append(frame.headers["n"])      # the heart-beat reset
    transport.set_listener("events", connection._Events(threading.Event()))
    transport.process_frame(stomp.utils.Frame("MESSAGE", {"n": "1"}, b""), b"")
    assert seen == ["1"]


class _ShippedReader(stomp.transport.BaseTransport):
    """stomp.py's own BaseTransport.__read, fed from a list of chunks."""

    def __init__(self, chunks):
        super().__init__(auto_decode=False)
        self.chunks, self.running = list(chunks), True
        self.blocking = False           # the end of the chunks ends a read, not the connection

    def receive(self):
        return self.chunks.pop(0) if self.chunks else b""

    def frames(self):
        frames = []
        while self.chunks:
            frames += self._BaseTransport__read()
        return frames


def split_as_the_bridge_does(chunks):
    splitter = connection._FrameSplitter()
    frames = []
    for chunk in chunks:
        splitter.feed(chunk)
        frames += splitter.frames()
    return frames


def random_stream(rng):
    """Frames as a broker sends them (with and without content-length, NULs in bodies that have
    one, EOLs and heart-beats between), cut into chunks of random sizes."""
    parts = []
    for _ in range(rng.randrange(1, 12)):
        body = bytes(rng.choice(b"ab\x00\n\r:") for _ in range(rng.randrange(0, 60)))
        if rng.random() < 0.5:
            head = b"MESSAGE\nmessage-id:%d\ncontent-length:%d\n\n" % (rng.randrange(99), len(body))
        else:
            head, body = b"RECEIPT\nreceipt-id:%d\n\n" % rng.randrange(99), body.replace(b"\x00", b"")
        parts.append(head + body + b"\x00" + rng.choice([b"", b"\n", b"\r\n"]))
    stream = b"".join(parts) + b"\n"        # a byte past the last: both readers wait for one
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randrange(0, 30))))
    return [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]


def test_the_frames_are_cut_from_the_stream_exactly_as_stomp_py_cuts_them():
    """The same frames, parsed (stomp.py leaves an EOL that comes in the next chunk after a
    frame at the front of the next frame, where its parser skips it; the bridge skips it
    first), heart-beats apart."""
    original = stomp_original()
    parsed = lambda frames: [(f.cmd, f.headers, f.body) for f in map(original.parse_frame, frames)
                             if f is not None]
    rng = random.Random(11)
    for _ in range(2000):
        chunks = random_stream(rng)
        ours = [f for f in split_as_the_bridge_does(chunks) if f != b"\n"]
        theirs = [f for f in _ShippedReader(chunks).frames() if f not in (b"\n", b"\r\n")]
        assert parsed(ours) == parsed(theirs), chunks
        assert len(ours) == len(theirs), chunks


def test_two_eols_before_a_frame_do_not_hide_its_content_length():
    """Where the bridge differs from stomp.py: stomp.py takes two EOLs that come in a chunk
    after a frame (heart-beats, or an EOL after a frame and one more) for the end of the next
    frame's headers, misses its content-length and cuts its body at its first NUL."""
    body = b"a\x00b"
    chunks = [b"RECEIPT\nreceipt-id:1\n\n\x00", b"\n\nMESSAGE\ncontent-length:3\n\n" + body + b"\x00\n"]
    frames = [f for f in split_as_the_bridge_does(chunks) if f != b"\n"]
    assert [stomp.utils.parse_frame(f).body for f in frames] == [b"", body]
    theirs = [f for f in _ShippedReader(chunks).frames() if f not in (b"\n", b"\r\n")]
    assert theirs[1:] == [b"\n\nMESSAGE\ncontent-length:3\n\na", b"b"]     # stomp.py's cut, for the record


def test_a_big_message_with_a_nul_in_every_chunk_is_read_in_linear_time():
    """Regression (review 2026-12-04): stomp.py's reader copied and searched its whole buffer
    again for each chunk holding a NUL: 16 MiB in 4 KiB chunks took 2.3 s or more, on the
    thread that reads every message, holding the GIL."""
    body = (b"x" * 999 + b"\x00") * 16384
    frame = b"MESSAGE\ncontent-length:%d\n\n" % len(body) + body + b"\x00\n"
    chunks = [frame[i:i + 4096] for i in range(0, len(frame), 4096)]
    started = time.perf_counter()
    frames = split_as_the_bridge_does(chunks)
    assert time.perf_counter() - started < 1.0
    assert frames[0] == frame[:-2]


def test_the_reading_thread_uses_the_linear_splitter():
    assert "_BaseTransport__read" in vars(connection._Transport)


CONTENT_LENGTH_RE = re.compile(rb"^content-length:\s*([0-9]{1,15})", re.MULTILINE)


def regex_end(buffer, start, nul):
    """Where a frame ends by the two regexes _FrameSplitter._end used before (stomp.py's
    PREAMBLE_END_RE and a MULTILINE ``^content-length:``), kept here as the reference."""
    preamble = stomp.utils.PREAMBLE_END_RE.search(buffer, start, nul)
    if preamble:
        length = CONTENT_LENGTH_RE.search(buffer, start, preamble.start())
        if length:
            return max(nul, preamble.end() + int(length.group(1)))
    return nul


def test_a_frame_ends_where_the_regexes_said():
    """Headers in odd places (the first line, after a blank run, several, none with digits,
    over 15 digits, blanks across lines), CR LF and LF, and frames that start mid-buffer."""
    rng = random.Random(5)
    pieces = [b"content-length:", b"content-length: ", b"content-length:\n", b"\ncontent-length:",
              b"7", b"12", b"1234567890123456789", b"\n", b"\r\n", b"\n\n", b"\r\n\r\n", b"\r",
              b"x", b"MESSAGE", b":", b"\t", b" ", b"\x00", b"content-lengt", b"\x0b"]
    for _ in range(20000):
        buffer = bytearray(b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 14))))
        nuls = [i for i, byte in enumerate(buffer) if byte == 0]
        if not nuls:
            buffer += b"\x00"
            nuls = [len(buffer) - 1]
        start = rng.randrange(0, nuls[0] + 1)
        nul = next(i for i in nuls if i >= start)
        splitter = connection._FrameSplitter()
        splitter.buffer, splitter.start = buffer, start
        assert splitter._end(nul) == regex_end(buffer, start, nul), (bytes(buffer), start)


def test_finding_a_frame_end_is_linear_in_headers_built_to_be_slow():
    """Many ``content-length:`` lines without digits, and long blank runs after each."""
    for head in (b"MESSAGE\n" + b"content-length:" + b" " * 10 + b"\n") * 100000, \
                b"MESSAGE" + b"\ncontent-length:" * 200000:
        buffer = bytearray(head + b"\n\nbody\x00")
        splitter = connection._FrameSplitter()
        splitter.buffer = buffer
        started = time.perf_counter()
        assert splitter._end(len(buffer) - 1) == len(buffer) - 1
        assert time.perf_counter() - started < 1.0
