"""broker/connection.py replaces stomp.utils.parse_headers with one that skips unescaping when
there is nothing to unescape: it must give what stomp.py's own gives, for every input."""
import importlib.util
import random
import time

import stomp.utils

from msg_nagios_bridge.broker import connection


def stomp_original():
    """stomp.py's utils module as shipped, loaded afresh (the package's is patched)."""
    spec = importlib.util.spec_from_file_location("stomp_utils_as_shipped", stomp.utils.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bridge_parses_stomp_headers_with_its_own_function():
    assert stomp.utils.parse_headers is connection._parse_headers


def test_headers_parse_exactly_as_stomp_py_parses_them():
    original = stomp_original()
    fixed = [
        ["MESSAGE", "destination:/queue/a", "message-id:ID:1", "subscription:0"],
        ["MESSAGE", "a\\cb:c\\nd\\\\e", "a:second", "x\\ry:\\c\\c"],            # escapes in keys and values
        ["MESSAGE", "no colon here", ":empty key", "key:", "k:v:w", "dup:1", "dup:2"],
        ["MESSAGE", "bad\\qescape:v\\t", "trailing\\:x\\"],                       # undefined escapes
        ["MESSAGE", "é\u2028:ü\\n", ""],
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


def test_a_huge_header_line_is_parsed_in_linear_time():
    """1 MB without a colon, and 1 MB of escapes: each line is matched once."""
    started = time.monotonic()
    connection._parse_headers(["MESSAGE", "x" * (1 << 20), "k:" + "\\n" * (1 << 19)])
    assert time.monotonic() - started < 5
