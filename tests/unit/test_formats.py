"""Message formats: golden files pin the exact text; parsers survive odd input."""
import calendar
import dataclasses
import json
import pathlib
import time

import pytest
from hypothesis import example, given, settings, strategies as st

from msg_nagios_bridge.formats import json as json_format
from msg_nagios_bridge.cores.nagios import result_line
from msg_nagios_bridge.formats import wlcg
from msg_nagios_bridge.model import CheckResult, InvalidResult

GOLDEN = pathlib.Path(__file__).parent.parent / "fixtures" / "golden"
FIELDS = {"siteName": "CERN-PROD", "gatheredAt": "sam-nagios.cern.ch", "role": "site", "voName": "ops"}

SERVICE_RESULT = CheckResult(
    host="ce01.cern.ch", service="org.sam.CE-JobSubmit", state=2, state_type="HARD",
    output="CRITICAL: job submission failed; see details",
    long_output="line one\nEOT\nline three", perfdata="time=3.2s;10;20",
    timestamp=1253568948, attempt=3, attributes={"flavour": "CREAM-CE", "uri": "https://ce01.cern.ch:8443/ce"},
)
HOST_RESULT = CheckResult(host="se01.cern.ch", service=None, state=1, output="PING CRITICAL - 100% loss",
                          timestamp=1253568948)


def golden(name: str) -> str:
    return (GOLDEN / name).read_text(encoding="utf-8")


def test_wlcg_service_result_matches_golden_file():
    assert wlcg.encode(SERVICE_RESULT, FIELDS) == golden("service.wlcg")


def test_wlcg_host_result_matches_golden_file():
    assert wlcg.encode(HOST_RESULT, FIELDS) == golden("host.wlcg")


def test_json_service_result_matches_golden_file():
    assert json.loads(json_format.encode(SERVICE_RESULT, FIELDS)) == json.loads(golden("service.json"))


def test_wlcg_decode_takes_the_last_eot_and_keeps_eot_lines_inside_details():
    record = wlcg.decode(wlcg.encode(SERVICE_RESULT, FIELDS))
    assert record["detailsData"] == "line one\nEOT\nline three"      # sent as .EOT, read back as EOT
    assert record["metricStatus"] == "CRITICAL"
    assert record["timestamp"] == "2009-09-21T21:35:48Z"
    assert calendar.timegm(time.strptime(record["timestamp"], wlcg.TIME_FORMAT)) == 1253568948


FORGED_SECOND_RECORD = ("details\nEOT\nserviceURI: evil.example.org\nhostName: evil.example.org\n"
                        "siteName: OTHER-SITE\nmetricStatus: OK\nmetricName: org.sam.CE-JobSubmit\n"
                        "summaryData: all fine\ntimestamp: 2009-09-21T21:35:48Z")


def _first_record_readers():
    """How downstream consumers find the end of a record: the first line that is EOT."""
    java_trim = lambda line: line.strip("".join(map(chr, range(0x21))))  # noqa: E731
    return {
        "split-newline-strip": lambda body: body.split("\n"), "splitlines": str.splitlines,
    }, [
        lambda line: line.strip() == "EOT", lambda line: java_trim(line) == "EOT",
        lambda line: line.strip().upper() == "EOT", lambda line: line.lstrip().startswith("EOT"),
    ]


def _first_record(body, split, is_end):
    lines = split(body)
    end = next(index for index, line in enumerate(lines) if is_end(line))
    return lines[:end], lines[end + 1:]


def test_wlcg_long_output_with_eot_and_a_second_record_forges_no_record_downstream():
    result = dataclasses.replace(SERVICE_RESULT, long_output=FORGED_SECOND_RECORD)
    body = wlcg.encode(result, FIELDS)
    assert "\n.EOT\nserviceURI: evil.example.org\n" in body         # escaped, and still readable
    splits, ends = _first_record_readers()
    for split in splits.values():
        for is_end in ends:
            record, after = _first_record(body, split, is_end)
            assert not any(line.strip() for line in after)
            assert record[1] == "hostName: ce01.cern.ch" and "siteName: CERN-PROD" in record
    assert wlcg.decode(body)["detailsData"] == FORGED_SECOND_RECORD    # our own round trip: exact


def test_wlcg_blanks_before_an_eot_are_every_control_and_what_str_isspace_takes():
    """The EOT escape's blanks are a regex now (the string of them, built by testing every code
    point at import, cost 64 ms at each start): the same set, over all of Unicode."""
    import sys
    blanks = wlcg._LEADING_BLANKS
    assert [c for c in range(sys.maxunicode + 1) if blanks.match(chr(c)).end()] == \
        [c for c in range(sys.maxunicode + 1) if c <= 0x20 or chr(c).isspace()]


def test_wlcg_eot_escape_is_dot_stuffing_and_round_trips():
    for text, sent in [("x\nEOT", "x\n.EOT"), ("x\n  eot x", "x\n  .eot x"), ("x\n..EOT", "x\n...EOT"),
                       ("a\u2028EOT", "a\u2028.EOT"), ("\x1c EOT\r\x00Eot", "\x1c .EOT\r\x00.Eot"),
                       ("no end here", "no end here"), ("x\nxEOT", "x\nxEOT"), (".x", ".x"),
                       ("EOT", "EOT"), ("eotvos.example.org", "eotvos.example.org")]:  # first: after "key: "
        assert wlcg.escape_eot(text) == sent
        assert wlcg.unescape_eot(sent) == text


EOT_PIECES = st.sampled_from(["EOT", "eot", ".", "\n", "\r", "\r\n", " ", "\t", "\x00", "\x1c", "\x85", "\u2028",
                               "\u3000", "siteName: OTHER", "hostName: evil"])


@given(st.text(), st.lists(EOT_PIECES | st.text(max_size=5)).map("".join))
def test_wlcg_any_long_output_makes_exactly_one_record_for_a_first_eot_reader(output_words, details):
    output = output_words.replace("\n", " ").replace("\r", " ")
    result = CheckResult(host="h.example.org", service="s", state=2, output=output, long_output=details)
    body = wlcg.encode(result, FIELDS)
    splits, ends = _first_record_readers()
    for split in splits.values():
        for is_end in ends:
            record, after = _first_record(body, split, is_end)
            assert not any(line.strip() for line in after)
    record = body.split("\n")
    assert record[1] == "hostName: h.example.org" and "siteName: CERN-PROD" in record
    assert "metricStatus: CRITICAL" in record
    decoded = wlcg.decode(body)
    assert decoded["siteName"] == "CERN-PROD" and decoded["hostName"] == "h.example.org"
    if details and "\r" not in details:
        assert decoded["detailsData"] == details


def test_wlcg_decode_keeps_unknown_keys_and_refuses_broken_records():
    assert wlcg.decode("newKey: x\nmetricName: m\nEOT\n") == {"newKey": "x", "metricName": "m"}
    with pytest.raises(wlcg.BadMessage, match="EOT"):
        wlcg.decode("metricName: m\n")
    with pytest.raises(wlcg.BadMessage, match="twice"):
        wlcg.decode("metricName: a\nmetricName: b\nEOT")
    with pytest.raises(wlcg.BadMessage, match="key: value"):
        wlcg.decode("not a pair\nEOT")


def _reference_wlcg_decode(body):
    """wlcg.decode as it was before it was made faster (2026-12-06), line by line: the
    reference the faster one must equal."""
    text = body.replace("\r\n", "\n").rstrip("\n")
    lines = text.split("\n")
    if not lines or lines[-1].strip() != "EOT":
        raise wlcg.BadMessage("record does not end with an EOT line")
    lines.pop()
    unescape = wlcg.unescape_eot if text.lower().count("eot") > 1 else str
    record = {}
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep or not key or " " in key:
            raise wlcg.BadMessage(f"line {index + 1} is not 'key: value': {line[:60]!r}")
        if key in record:
            raise wlcg.BadMessage(f"key {key!r} appears twice")
        if key == "detailsData":
            rest = "\n".join([value[1:] if value.startswith(" ") else value] + lines[index + 1:])
            record[key] = unescape(rest)
            break
        record[key] = unescape(value.strip())
    return record


def _outcome(decode, body):
    try:
        return decode(body)
    except wlcg.BadMessage as exc:
        return ("BadMessage", str(exc))


# Pieces of record lines, chosen to meet every branch: blanks of every kind (str.strip's and
# others), colons, keys with spaces, repeated keys, detailsData anywhere, EOT (escaped or not).
RECORD_PIECES = st.sampled_from(["hostName", "metricName", "detailsData", "x", ":", ": ", " ", "\t",
                                 "\x0b", "\x1c", "\u2028", "\xa0", "\r", "\r\n", "\n", "EOT", ".EOT", "\x0b.EOT",
                                 "eot", "a b", "", "v"])


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.lists(RECORD_PIECES, max_size=6).map("".join), max_size=8).map("\n".join),
       st.sampled_from(["", "\nEOT", "\nEOT\n", "\n EOT \r\n\n", "EOT"]))
@example("hostName: x\x0b.EOT", "\nEOT")                  # an escaped EOT inside a one-line value
@example(" \t\nhostName :\xa0a\xa0\n\x1c\ndetailsData:  d\n.EOT\n", "EOT")
@example("a b: c", "\nEOT")
@example("detailsData: a\n.eot\n..Eot", "\nEOT")               # lowercase and mixed escaped EOTs
def test_wlcg_decode_equals_the_line_by_line_reference(lines, end):
    body = lines + end
    assert _outcome(wlcg.decode, body) == _outcome(_reference_wlcg_decode, body)


# Lines that are nearly always "key: value", so that most records take the usual path and the
# rest leave it at one line: a repeated key, detailsData first or spelt with blanks, a blank line.
RECORD_KEYS = st.sampled_from(["hostName", "metricName", "x", "detailsData", " detailsData", "detailsData ",
                               "a b", "", " ", "\x1c", "k\tk", "hostName "])
RECORD_VALUES = st.one_of(st.sampled_from(["v", " a b ", "x:y"]),
                          st.lists(st.sampled_from(["v", " ", ":", "\xa0", "\x0b", "\n", "\nk: v", "\ndetailsData: d",
                                                    "\n\n", "EOT", "\n.EOT", "\n.eot", "\u2028"]), max_size=4).map("".join))


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.tuples(RECORD_KEYS, st.sampled_from([":", ": ", " : ", ":\xa0"]), RECORD_VALUES)
                .map("".join), max_size=8).map("\n".join),
       st.sampled_from(["\nEOT", "\nEOT\n", "\r\nEOT\r\n"]))
def test_wlcg_decode_of_key_value_lines_equals_the_line_by_line_reference(lines, end):
    body = lines + end
    assert _outcome(wlcg.decode, body) == _outcome(_reference_wlcg_decode, body)


def test_wlcg_decode_of_the_usual_record_takes_no_loop_a_line(monkeypatch):
    """The records bridges send go through the usual path only (a mutation that always falls
    back to the careful parser fails this); a repeated key still reaches the careful one."""
    usual = dataclasses.replace(SERVICE_RESULT, long_output="line one\nline two")     # no EOT inside
    body = wlcg.encode(usual, FIELDS)
    expected = wlcg.decode(body)

    def careful(*args):
        raise AssertionError("the careful parser ran")
    monkeypatch.setattr(wlcg, "_careful_record", careful)
    assert wlcg.decode(body) == expected
    assert list(expected)[-1] == "detailsData" and expected["detailsData"] == "line one\nline two"
    assert expected["metricStatus"] == "CRITICAL" and expected["siteName"] == "CERN-PROD"
    with pytest.raises(AssertionError, match="careful parser ran"):
        wlcg.decode("metricName: a\nmetricName: b\nEOT")


@pytest.mark.parametrize("brk", list(wlcg._LINE_BREAKS))
def test_wlcg_a_line_break_of_any_readers_kind_in_a_one_line_field_adds_no_key(brk):
    """Regression (review 2026-12-04): only LF and CR were kept out of one-line fields (and
    refused, so a CR in a custom variable dead-lettered the result); a reader that splits lines
    as str.splitlines does, last key winning, read a second metricStatus after a VT or U+2028."""
    forged = f"{brk}metricStatus: OK{brk}siteName: SITE-B"
    output = "CRITICAL: down" + (forged if brk not in "\r\n" else " metricStatus: OK siteName: SITE-B")
    result = CheckResult(host="h", service="s", state=2, output=output, perfdata="t=1" + forged,   # (a CheckResult
                         attributes={"flavour": "CE" + forged, "uri": "h" + forged})    # refuses LF, CR in output)
    body = wlcg.encode(result, FIELDS)
    assert body.splitlines() == body.split("\n")[:-1]                # the bridge's lines are every reader's
    keys = [line.partition(":")[0] for line in body.splitlines()]
    assert keys.count("metricStatus") == 1 and keys.count("siteName") == 1
    record = wlcg.decode(body)
    assert record["metricStatus"] == "CRITICAL" and record["summaryData"] == "CRITICAL: down metricStatus: OK siteName: SITE-B"


# Text with every line break some reader splits on, and EOT, more often than st.text() gives them.
BREAKY_TEXT = st.lists(st.sampled_from(list(wlcg._LINE_BREAKS) + ["EOT", ".eot", "x"]) | st.text(max_size=4),
                       max_size=6).map("".join)
OPTIONAL = st.none() | st.just("") | BREAKY_TEXT


@settings(max_examples=600)
@given(output=BREAKY_TEXT, perfdata=BREAKY_TEXT, long_output=BREAKY_TEXT, flavour=OPTIONAL, uri=OPTIONAL,
       site=BREAKY_TEXT, gathered=BREAKY_TEXT, role=OPTIONAL, vo=OPTIONAL, flavour_field=OPTIONAL,
       is_host=st.booleans())
@example(output="a\x0bb", perfdata="", long_output="", flavour=None, uri=None, site="S", gathered="g",
         role=None, vo=None, flavour_field=None, is_host=False)
def test_wlcg_encode_in_one_format_is_the_record_made_a_field_at_a_time(
        output, perfdata, long_output, flavour, uri, site, gathered, role, vo, flavour_field, is_host):
    """encode's one format (with its count of lines) gives _encode_record's text exactly, for
    fields with and without line breaks of every kind, optional fields set, empty or absent."""
    attributes = {key: value for key, value in (("flavour", flavour), ("uri", uri)) if value is not None}
    try:
        result = CheckResult(host="h1.example.org", service=None if is_host else "svc", state=1,
                             output=output, perfdata=perfdata, long_output=long_output,
                             timestamp=1253568948, attributes=attributes)
    except InvalidResult:       # LF or CR in output: no result to encode
        return
    fields = {"siteName": site, "gatheredAt": gathered}
    fields.update({key: value for key, value in (("role", role), ("voName", vo), ("serviceFlavour", flavour_field))
                   if value is not None})
    assert wlcg.encode(result, fields) == wlcg._encode_record(result, fields)


def test_wlcg_every_line_break_but_lf_is_found_in_ascii_text_and_in_other_text():
    for brk in wlcg._LINE_BREAKS[1:]:
        for text in (f"a{brk}b", f"é{brk}", brk):
            assert wlcg._has_break_but_newline(text), (brk, text)
    for text in ("plain\ntext: with a newline\n", "é\nü", "", "\x1f\x1b\t"):
        assert not wlcg._has_break_but_newline(text), text


def test_wlcg_encode_of_the_golden_results_takes_the_one_format(monkeypatch):
    """The usual record (no line breaks in its one-line fields) is made by the single format,
    not handed to _encode_record: a mutation that always fell back would pass every other test."""
    calls = []
    original = wlcg._encode_record
    monkeypatch.setattr(wlcg, "_encode_record", lambda *args: calls.append(args) or original(*args))
    assert wlcg.encode(SERVICE_RESULT, FIELDS) == golden("service.wlcg")
    assert wlcg.encode(HOST_RESULT, FIELDS) == golden("host.wlcg")
    assert calls == []
    wlcg.encode(dataclasses.replace(SERVICE_RESULT, output="a\u2028b"), FIELDS)
    assert len(calls) == 1


@given(st.text(), st.text())
def test_wlcg_details_round_trip(output_words, details):
    output = output_words.replace("\n", " ").replace("\r", " ")
    result = CheckResult(host="h", service="s", state=0, output=output, long_output=details.strip("\n"))
    try:
        body = wlcg.encode(result, FIELDS)
    except InvalidResult:
        return
    record = wlcg.decode(body)
    # A one-line field arrives with its line breaks as blanks, stripped as every reader does.
    assert record["summaryData"] == output.translate(wlcg._BREAKS_TO_BLANKS).strip()
    if result.long_output.replace("\r\n", "\n") and "\r" not in result.long_output:
        assert record["detailsData"] == result.long_output


# -- the result line both outbound sources read ---------------------------------

def test_result_line_round_trips_a_service_result():
    line = result_line.format_line(SERVICE_RESULT)
    assert result_line.parse(line) == SERVICE_RESULT


def test_result_line_round_trips_a_host_result():
    assert result_line.parse(result_line.format_line(HOST_RESULT)) == HOST_RESULT


def test_result_line_as_nagios_writes_it():
    line = ("MNB1S\t1700000000\tweb01\tHTTP\t1\tSOFT\t2\tACTIVE\t\t\t\tHTTP WARNING: slow\t"
            "time=2.1s;1;5\tfirst\\nsecond")
    result = result_line.parse(line)
    assert (result.host, result.service, result.state, result.state_type, result.attempt) == (
        "web01", "HTTP", 1, "SOFT", 2)
    assert result.long_output == "first\nsecond"
    assert result.attributes == {"check_type": "ACTIVE"}


def test_result_line_reads_an_undefined_custom_variable_as_not_set():
    # Seen with Nagios 4.4.6: an undefined $_SERVICEMSG_URI$ stays as its own text.
    line = ("MNB1S\t1700000000\tweb01\tHTTP\t0\tHARD\t1\tPASSIVE\t$_SERVICEMSG_FLAVOUR$\thttps://web01/\t"
            "$_SERVICEMSG_PUBLISH$\tOK\t\t")
    assert result_line.parse(line).attributes == {"check_type": "PASSIVE", "uri": "https://web01/"}


@pytest.mark.parametrize("value", ["", "$", "$_", "$$", "$_$", "$_X$", "_X$", "$X$", "$_X", "x$_y$", "ACTIVE", "$_A$B"])
def test_result_line_takes_a_value_as_unset_only_when_it_is_a_whole_custom_macro(value):
    line = "\t".join(["MNB1S", "1700000000", "h", "s", "0", "HARD", "1", value, value, value, value, "o", "", ""])
    kept = bool(value) and not (value.startswith("$_") and value.endswith("$"))
    expected = dict.fromkeys(("check_type", "flavour", "uri", "publish"), value) if kept else {}
    assert result_line.parse(line).attributes == expected


@pytest.mark.parametrize("line, reason", [
    ("", "unknown tag"),
    ("XYZ\t1", "unknown tag"),
    ("MNB1S\t1\th", "fields"),
    ("MNB1S\tnow\th\ts\t0\tHARD\t1\tACTIVE\t\t\t\to\tp\tl", "time"),
    ("MNB1S\t1\th\ts\t7\tHARD\t1\tACTIVE\t\t\t\to\tp\tl", "state"),
    ("MNB1S\t1\th;x\ts\t0\tHARD\t1\tACTIVE\t\t\t\to\tp\tl", "forbidden"),
    ("MNB1S\t1\th\ts\t0\tHARD\t1\tACTIVE\t\t\t\tbig\tMNB1S\t1\th\ts\t0\tHARD\t1\tACTIVE\t\t\t\to\tp\tl", "interleaved"),
    ("MNB1S\t1\th\ts\t0\tFIRM\t1\tACTIVE\t\t\t\to\tp\tl", "state type"),
])
def test_result_line_refuses_with_a_reason(line, reason):
    with pytest.raises(result_line.BadLine, match=reason):
        result_line.parse(line)


@given(st.text(max_size=300))
def test_result_line_parse_never_crashes(text):
    try:
        result = result_line.parse(text)
    except result_line.BadLine:
        return
    assert isinstance(result, CheckResult)


def test_wlcg_dot_stuffed_eot_from_another_bridge_is_read_back_as_one_record():
    from msg_nagios_bridge.formats import decode as inbound
    result = dataclasses.replace(SERVICE_RESULT, long_output=FORGED_SECOND_RECORD, timestamp=1704067200)
    body = wlcg.encode(result, FIELDS)
    decoded = inbound.decode({}, body.encode(), now=1704070800)
    assert decoded.host == "ce01.cern.ch" and decoded.long_output == FORGED_SECOND_RECORD


def test_wlcg_eot_escape_leaves_the_first_line_of_a_value_alone():
    """It follows "key: " on its line: a host or metric named eot... is sent as it is."""
    result = CheckResult(host="eotvos.example.org", service="EOT-check", state=0, output="EOT", long_output="EOT\nEOT")
    body = wlcg.encode(result, FIELDS)
    assert "hostName: eotvos.example.org\n" in body and "metricName: EOT-check\n" in body
    assert "summaryData: EOT\n" in body and "detailsData: EOT\n.EOT\nEOT\n" in body
    assert wlcg.decode(body)["detailsData"] == "EOT\nEOT"


# -- long output as Nagios escapes it (escape_newlines) ------------------------------------------

def test_long_output_with_backslashes_is_read_back_as_the_plugin_wrote_it():
    """Regression: a plugin's C:\\new\\temp was published as 'C:\\' + a line break + 'ew\\\\temp', and a
    literal backslash-n arrived as a backslash and a real line break."""
    from msg_nagios_bridge.cores.nagios import result_line
    written = "C:\\new\\temp\nliteral \\n stays\ntrailing backslash\\"
    escaped = result_line.nagios_escape(written)
    assert escaped == "C:\\\\new\\\\temp\\nliteral \\\\n stays\\ntrailing backslash\\\\"
    line = "\t".join(["MNB1S", "1704067200", "h", "s", "0", "HARD", "1", "ACTIVE", "$_SERVICEMSG_FLAVOUR$",
                      "$_SERVICEMSG_URI$", "$_SERVICEMSG_PUBLISH$", "OK", "", escaped])
    assert result_line.parse(line).long_output == written


@settings(max_examples=300, deadline=None)
@given(long_output=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\t\r"),
                           max_size=60).map(lambda t: t.strip("\n")))
def test_any_long_output_survives_nagios_escaping_and_the_line_parser(long_output):
    from msg_nagios_bridge.cores.nagios import result_line
    result = CheckResult(host="h", service="s", state=1, output="warn", long_output=long_output, timestamp=1704067200)
    assert result_line.parse(result_line.format_line(result)).long_output == long_output
