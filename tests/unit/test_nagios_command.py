"""Command lines for Nagios: exactly one safe line, only two commands, fields round-trip."""
import dataclasses
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from msg_nagios_bridge.cores.nagios import nagios_command as nc
from msg_nagios_bridge.model import CheckResult, InvalidResult

NOW = 1700000000
LINE_START = re.compile(r"\[\d+\] PROCESS_(SERVICE|HOST)_CHECK_RESULT;")
MARKER = re.compile(r" ?\[truncated by msg-nagios-bridge: (\d+) bytes cut\]")

# Characters that have a meaning somewhere on the way into Nagios, plus any character at all
# (surrogates included: a JSON "\ud800" escape can put one into a str).
SPECIAL = st.sampled_from(["\\", "\n", "\r", ";", "[", "]", "|", "n", "\x00", "\t",
                           "\x1b", "\x7f", "\x85", "\x9f", "\u2028", "\ud800", "\udfff", "é", "😀", " "])
ANY_CHAR = st.characters(blacklist_categories=())
# st.text draws much faster than lists of strings; with this small alphabet, pairs such as
# CR LF and backslash-n turn up often.
TEXT = st.text(alphabet=st.one_of(SPECIAL, ANY_CHAR), max_size=40)
NAME = st.one_of(st.text(alphabet=st.one_of(SPECIAL, ANY_CHAR), min_size=1, max_size=12),
                 st.text(alphabet="abcdefgh.-_ []()\\", min_size=1, max_size=20),
                 st.text(alphabet="xé😀", min_size=250, max_size=260))


def expected_text(result: CheckResult) -> str:
    """The documented text policy, written independently of the module."""
    perfdata = result.perfdata.replace("\r", " ").replace("\n", " ")
    text = result.output + ("|" + perfdata if perfdata else "") + ("\n" + result.long_output if result.long_output else "")
    text = text.replace("\r\n", "\n")
    out = []
    for c in text:
        code = ord(c)
        if c in "\n\t":                  # newline is escaped later; TAB is kept
            out.append(c)
        elif code < 0x20 or 0x7f <= code <= 0x9f:
            out.append(" ")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\ufffd")
        else:
            out.append(c)
    return "".join(out)


def assert_one_safe_line(line: str, result: CheckResult) -> str:
    """Check everything a command line must be; return its (escaped) text field."""
    assert line.endswith("\n") and line.count("\n") == 1
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]", line)      # TAB is kept
    assert LINE_START.match(line)
    stamp, command, fields = nc.parse_command_line(line)
    if result.service is None:
        assert command == nc.HOST_COMMAND
        host, code, text = fields
        assert line.split(";", 3)[1:3] == [result.host, str(result.state)]
    else:
        assert command == nc.SERVICE_COMMAND
        host, service, code, text = fields
        assert service == result.service
        assert line.split(";", 4)[1:4] == [result.host, result.service, str(result.state)]
    assert host == result.host and code == str(result.state)
    # Every backslash starts one of the two escapes, so any Nagios unescape reads it the same way.
    assert re.fullmatch(r"(?:[^\\]|\\\\|\\n)*", text.rstrip("\n"))
    return text


def build(host, service, state, output="", long_output="", perfdata=""):
    return CheckResult(host=host, service=service, state=state, output=output,
                       long_output=long_output, perfdata=perfdata, timestamp=NOW)


# -- exact lines ---------------------------------------------------------------

def test_service_line_is_exact():
    result = build("web01", "HTTP", 1, "HTTP WARNING: slow; very", "first\\second\nthird", "time=2.1s;1;5")
    assert nc.command_line(result, NOW) == (
        "[1700000000] PROCESS_SERVICE_CHECK_RESULT;web01;HTTP;1;"
        "HTTP WARNING: slow; very|time=2.1s;1;5\\nfirst\\\\second\\nthird\n")


def test_host_line_is_exact():
    assert nc.command_line(build("web01", None, 2, "PING CRITICAL"), NOW) == (
        "[1700000000] PROCESS_HOST_CHECK_RESULT;web01;2;PING CRITICAL\n")


def test_a_smuggled_command_stays_inside_the_text():
    result = build("h", "s", 0, "ok", "x\n[1] SHUTDOWN_PROGRAM\r\n[2] PROCESS_FILE;/etc/passwd;1")
    line = nc.command_line(result, NOW)
    assert line.count("\n") == 1
    assert "\\n[1] SHUTDOWN_PROGRAM\\n[2] PROCESS_FILE" in line
    assert nc.unescape(nc.parse_command_line(line)[2][3].rstrip("\n")) == "ok\nx\n[1] SHUTDOWN_PROGRAM\n[2] PROCESS_FILE;/etc/passwd;1"


def test_control_characters_become_spaces_and_perfdata_stays_one_line():
    result = build("h", "s", 0, "a\x00b\x1bc\td\x85e\x7f", "l1\rl2\x00", "x=1\ny=2\r\nz=3")
    text = nc.parse_command_line(nc.command_line(result, NOW))[2][3].rstrip("\n")
    assert nc.unescape(text) == "a b c\td e |x=1 y=2  z=3\nl1 l2 "


def test_a_literal_backslash_n_is_not_a_newline():
    result = build("h", "s", 0, "C:\\new\\dir \\\\n")
    text = nc.parse_command_line(nc.command_line(result, NOW))[2][3].rstrip("\n")
    assert text == "C:\\\\new\\\\dir \\\\\\\\n"
    assert nc.unescape(text) == "C:\\new\\dir \\\\n"


def test_unescape_matches_nagios_on_other_backslashes():
    assert nc.unescape("a\\tb\\") == "a\\tb\\"
    assert nc.unescape("\\\\n") == "\\n"
    assert nc.unescape("\\n\\\\") == "\n\\"


# -- refusals ------------------------------------------------------------------

def smuggle(result: CheckResult, **fields) -> CheckResult:
    """A CheckResult whose own checks were bypassed: the builder must still refuse it."""
    bad = dataclasses.replace(result)
    for key, value in fields.items():
        object.__setattr__(bad, key, value)
    return bad


@pytest.mark.parametrize("name", ["", " h", "h ", "a;b", "a\nb", "a\rb", "a\x00b", "a\x1bb", "a\x7fb",
                                  "a\x85b", "a\x9fb", "a\ud800b", "x" * 256, 42, None])
@pytest.mark.parametrize("field", ["host", "service"])
def test_bad_names_are_refused_even_when_checkresult_was_bypassed(name, field):
    result = smuggle(build("h", "s", 0, "ok"), **{field: name})
    if field == "service" and name is None:   # None is a host result, which is fine
        assert nc.command_line(result, NOW) == nc.truncate_to_fit(result, NOW) == \
            f"[{NOW}] PROCESS_HOST_CHECK_RESULT;h;0;ok\n"
        return
    with pytest.raises(nc.CommandRefused):
        nc.command_line(result, NOW)
    with pytest.raises(nc.CommandRefused):
        nc.truncate_to_fit(result, NOW)


@pytest.mark.parametrize("state, service", [(4, "s"), (-1, "s"), (3, None), (True, "s"), ("0", "s"), (1.0, "s")])
def test_bad_codes_are_refused(state, service):
    with pytest.raises(nc.CommandRefused):
        nc.command_line(smuggle(build("h", service, 0), state=state), NOW)


@pytest.mark.parametrize("now", [-1, float("nan"), float("inf"), "1", True, 2**40])
def test_bad_command_times_are_refused(now):
    with pytest.raises(nc.CommandRefused):
        nc.command_line(build("h", "s", 0), now)


def test_a_newline_smuggled_into_output_is_flattened():
    line = nc.command_line(smuggle(build("h", "s", 0), output="ok\n[1] SHUTDOWN_PROGRAM"), NOW)
    assert line.endswith(";ok [1] SHUTDOWN_PROGRAM\n") and line.count("\n") == 1


@pytest.mark.parametrize("line", [
    "[1] PROCESS_SERVICE_CHECK_RESULT;h;s;0;ok\n[2] SHUTDOWN_PROGRAM\n",
    "[1] SHUTDOWN_PROGRAM;x\n",
    "[1] PROCESS_SERVICE_CHECK_RESULT;h;s\n",
    "PROCESS_HOST_CHECK_RESULT;h;0;ok\n",
    "[x] PROCESS_HOST_CHECK_RESULT;h;0;ok\n",
])
def test_parse_command_line_refuses_anything_else(line):
    with pytest.raises(ValueError):
        nc.parse_command_line(line)


# -- PIPE_BUF and truncation -----------------------------------------------------

def test_fits_pipe_buf_counts_utf8_bytes():
    prefix = nc.command_line(build("h", "s", 0), NOW)[:-1]
    exact = prefix + "x" * (nc.PIPE_BUF - len(prefix) - 1) + "\n"
    assert len(exact) == nc.PIPE_BUF and nc.fits_pipe_buf(exact)
    assert not nc.fits_pipe_buf(exact[:-2] + "é\n")


def test_truncate_keeps_a_fitting_line_unchanged():
    result = build("h", "s", 0, "ok", "details", "a=1")
    assert nc.truncate_to_fit(result, NOW) == nc.command_line(result, NOW)


def test_truncate_cuts_the_long_output_first_and_says_so():
    result = build("h", "s", 2, "CRITICAL: big", "é" * 5000, "a=1 b=2")
    line = nc.truncate_to_fit(result, NOW)
    assert len(line.encode()) <= nc.PIPE_BUF and len(line.encode()) > nc.PIPE_BUF - 10
    text = nc.unescape(nc.parse_command_line(line)[2][3].rstrip("\n"))
    head, long_output = text.split("\n", 1)
    assert head == "CRITICAL: big|a=1 b=2"
    kept = MARKER.sub("", long_output)
    assert set(kept) == {"é"}
    assert int(MARKER.search(long_output).group(1)) == 2 * (5000 - len(kept))


def test_truncate_drops_whole_perfdata_items_then_cuts_the_output():
    perfdata = " ".join(f"metric{i}=1;2;3" for i in range(600))
    line = nc.truncate_to_fit(build("h", "s", 0, "OK", "", perfdata), NOW)
    text = nc.unescape(nc.parse_command_line(line)[2][3].rstrip("\n"))
    output, kept = text.split("|", 1)
    assert MARKER.fullmatch(output[2:]) and output.startswith("OK")
    assert perfdata.startswith(kept + " ") and kept.endswith("=1;2;3")

    line = nc.truncate_to_fit(build("h", "s", 0, "\\" * 5000), NOW)
    text = nc.parse_command_line(line)[2][3].rstrip("\n")
    assert re.fullmatch(r"(?:\\\\)+ \[truncated by msg-nagios-bridge: \d+ bytes cut\]", text)


def test_truncating_perfdata_of_many_empty_items_is_linear():
    """Regression (review 2026-12-04): each item was measured with all kept before it, joined
    again: 43 ms for a result whose perfdata is 4,000 blanks, paid by the writer thread for
    every such result (a sender's batch of 500 held every site's results for 40 s)."""
    hostile = build("h", "s", 0, "OK", "", "a" + " " * 4060 + "b")
    started = time.perf_counter()
    for _ in range(50):
        line = nc.truncate_to_fit(hostile, NOW)
    assert time.perf_counter() - started < 1.0
    assert nc.unescape(nc.parse_command_line(line)[2][3]).startswith("OK")


def test_cutting_a_long_text_costs_time_bounded_by_the_budget():
    """The longest prefix within the budget, found in the first budget + 1 characters: each
    costs a byte at least (measuring the whole text first, and halves of it, took 14 ms for
    an 8 MB output on the writer thread)."""
    text = ("a\\\né" * 2_000_000)[:8_000_000]
    started = time.perf_counter()
    for _ in range(200):
        kept = nc._cut(text, 4000)
    assert time.perf_counter() - started < 1.0
    assert nc._cost(kept) <= 4000 < nc._cost(text[:len(kept) + 1])
    short = text[:50]
    for budget in (0, 1, 2, 3, 4, 5, 6, 7, 4095):
        kept = nc._cut(short, budget)
        assert short.startswith(kept) and nc._cost(kept) <= budget
        assert kept == short or nc._cost(short[:len(kept) + 1]) > budget


def test_truncate_refuses_when_names_and_marker_cannot_fit():
    with pytest.raises(nc.CommandRefused):
        nc.truncate_to_fit(build("h" * 255, "s" * 255, 0, "x" * 100), NOW, limit=560)


# -- properties ----------------------------------------------------------------

@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(host=NAME, service=st.one_of(st.none(), NAME), state=st.integers(0, 3),
       output=TEXT, long_output=TEXT, perfdata=TEXT, now=st.integers(0, 2**35 - 1))
def test_any_result_gives_a_refusal_or_one_safe_line(host, service, state, output, long_output, perfdata, now):
    try:
        result = CheckResult(host=host, service=service, state=min(state, 2) if service is None else state,
                             output=output, long_output=long_output, perfdata=perfdata, timestamp=NOW)
    except InvalidResult:
        return
    try:
        line = nc.command_line(result, now)
    except nc.CommandRefused:
        # CheckResult let it through, so the only extra thing refused is a lone surrogate.
        assert re.search(r"[\ud800-\udfff]", host + (service or ""))
        return
    text = assert_one_safe_line(line, result)
    assert line.startswith(f"[{now}] ")
    assert nc.unescape(text.rstrip("\n")) == expected_text(result) == nc.plugin_text(result)
    assert nc.fits_pipe_buf(line) == (len(line.encode("utf-8")) <= nc.PIPE_BUF)


BIG_TEXT = st.one_of(TEXT, st.builds(lambda c, n: c * n, st.one_of(SPECIAL, ANY_CHAR, st.just("\r\n")),
                                     st.integers(0, 3000)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(host=NAME, service=st.one_of(st.none(), NAME), output=BIG_TEXT, long_output=BIG_TEXT,
       perfdata=st.one_of(BIG_TEXT, st.lists(st.just("m=1;2;3"), max_size=600).map(" ".join)),
       limit=st.one_of(st.just(nc.PIPE_BUF), st.integers(80, 5000)))
def test_truncate_to_fit_always_fits_and_keeps_the_fixed_fields(host, service, output, long_output, perfdata, limit):
    try:
        result = CheckResult(host=host, service=service, state=1, output=output.replace("\n", " ").replace("\r", " "),
                             long_output=long_output, perfdata=perfdata, timestamp=NOW)
        full = nc.command_line(result, NOW)
    except (InvalidResult, nc.CommandRefused):
        return
    try:
        line = nc.truncate_to_fit(result, NOW, limit)
    except nc.CommandRefused:
        prefix = full[:len(full) - len(full.split(";", 4 if service is not None else 3)[-1])]
        worst_marker = nc.marker(len(nc.plugin_text(result).encode()))
        assert limit < len(prefix.encode()) + len(worst_marker.encode()) + 1
        assert limit < nc.PIPE_BUF  # names of at most 255 characters always fit a PIPE_BUF line
        return
    assert len(line.encode("utf-8")) <= limit
    text = nc.unescape(assert_one_safe_line(line, result).rstrip("\n"))
    if len(full.encode("utf-8")) <= limit:
        assert line == full
    else:
        cut = MARKER.search(text)
        assert cut, text
        kept = text[:cut.start()] + text[cut.end():]
        assert len(nc.plugin_text(result).encode()) - len(kept.encode()) == int(cut.group(1))


def test_a_marker_counts_the_bytes_cut_from_the_original_across_both_cuts():
    """Regression: a 1 MiB summary cut to 8 KiB by the decoder and then to one 4096-byte line
    by the command writer said '4238 bytes cut' (only the writer's own cut)."""
    from msg_nagios_bridge.formats.decode import Mapping, decode
    summary = "x" * (1 << 20)
    body = (f"hostName: h\nmetricName: s\nmetricStatus: OK\ntimestamp: 2024-01-01T00:00:00Z\n"
            f"summaryData: {summary}\nEOT\n").encode()
    result = decode({}, body, Mapping(max_body_bytes=2 << 20), now=1704070800)
    line = nc.truncate_to_fit(result, 1704070800)
    kept = len(nc.unescape(line.split(";", 4)[4].rstrip("\n")).split(" [truncated")[0].encode())
    said = int(re.search(r"\[truncated by msg-nagios-bridge: (\d+) bytes cut\]", line).group(1))
    assert said == len(summary) - kept and line.count("[truncated") == 1
    assert len(line.encode()) <= nc.PIPE_BUF


def test_clean_text_takes_its_shortcut_only_where_the_full_steps_change_nothing():
    """clean_text returns printable text as it is: the same as applying every step."""
    import random
    from msg_nagios_bridge.cores.nagios import nagios_command as nc

    def every_step(text):
        text = text.replace("\r\n", "\n")
        return nc._SURROGATE.sub("\ufffd", nc._CONTROL_BUT_NEWLINE.sub(" ", text))

    rng = random.Random(16)
    alphabet = "aZ09 ;|\\\t\n\r\x00\x1b\x7f\x85\x9f\xa0\u2028\u202e\ufeff\ud800\udfffé漢"
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 10)))
        assert nc.clean_text(text) == every_step(text), repr(text)


@pytest.mark.parametrize("line, clean", [
    ("[1] X;a;b\n", True),
    ("[1] X;a\tb\n", True),                 # TAB is kept (not printable: the regex decides)
    ("[1] X;a\u2028b\u200bc\n", True),       # not printable, not a control character either
    ("[1] X;a\x1bb\n", False),
    ("[1] X;a\x85b\n", False),               # C1
    ("[1] X;a\rb\n", False),
    ("[1] X;a\x7f\n", False),
    ("[1] X;a\nb\n", False),
    ("[1] X;a", False),
])
def test_the_last_check_before_the_fifo_passes_only_one_clean_line(line, clean):
    """_assert_one_line, the belt and braces after command_line's cleaning: all printable text
    skips the regex, anything else is searched as before (2026-12-06)."""
    if clean:
        nc._assert_one_line(line)
    else:
        with pytest.raises(nc.CommandRefused, match="internal error"):
            nc._assert_one_line(line)
