"""Inbound decoding: golden messages, mapping rules, round trips with the outbound encoders,
and a hostile corpus where every case is either Refused with a reason or one safe command line."""
import json
import pathlib
import re

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from msg_nagios_bridge.cores.nagios import checkresult_file, nagios_command as nc
from msg_nagios_bridge.formats import decode as inbound, wlcg
from msg_nagios_bridge.formats import json as json_format
from msg_nagios_bridge.formats.decode import Mapping, Refused, decode
from msg_nagios_bridge.model import CheckResult, InvalidResult

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures"
NOW = 1704070800  # 2024-01-01T01:00:00Z
GOLDEN_NOW = 1253568948 + 3600
FIELDS = {"siteName": "CERN-PROD", "gatheredAt": "sam-nagios.cern.ch", "role": "site", "voName": "ops"}
REASONS = {"too-large", "empty", "nul-byte", "not-utf8", "bad-unicode", "bad-json", "json-too-deep", "json-too-complex",
           "json-not-object", "repeated-key", "no-eot", "bad-record", "encrypted", "missing-field", "bad-field",
           "field-too-long", "bad-status", "bad-timestamp", "bad-host-name", "bad-service-name",
           "template-field-missing", "invalid-result"}


def golden(name: str) -> bytes:
    return (FIXTURES / "golden" / name).read_bytes()


def wlcg_body(**changes) -> bytes:
    record = {"serviceURI": "srm://se01.example.org:8443/srm/managerv2", "hostName": "se01.example.org",
              "serviceFlavour": "SRMv2", "siteName": "EXAMPLE-SITE", "metricStatus": "OK",
              "metricName": "org.sam.SRM-Put", "summaryData": "OK: file stored",
              "gatheredAt": "nagios.example.org", "timestamp": "2024-01-01T00:00:00Z"}
    record.update(changes)
    details = record.pop("detailsData", None)
    lines = [f"{key}: {value}" for key, value in record.items() if value is not None]
    if details is not None:
        lines.append("detailsData: " + details)
    return ("\n".join(lines) + "\nEOT\n").encode()


def refused(body, headers=None, mapping=Mapping(), now=NOW) -> str:
    with pytest.raises(Refused) as info:
        decode(headers or {}, body, mapping, now=now)
    return info.value.reason


def assert_safe_or_refused(headers, body, mapping=Mapping(), now=NOW) -> str:
    """The corpus invariant: a known reason, or a result whose command lines are one safe line."""
    try:
        result = decode(headers, body, mapping, now=now)
    except Refused as e:
        assert e.reason in REASONS, e
        assert not re.search(r"[\x00-\x1f\x7f-\x9f]", str(e)), "a refusal message must be one clean line"
        return e.reason
    assert isinstance(result, CheckResult)
    for line in (nc.command_line(result, int(result.timestamp)), nc.truncate_to_fit(result, int(result.timestamp))):
        assert line.count("\n") == 1 and line.endswith("\n")
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]", line)      # TAB is kept
        assert re.match(r"\[\d+\] PROCESS_(SERVICE|HOST)_CHECK_RESULT;", line)
        _, command, fields = nc.parse_command_line(line)
        assert fields[0] == result.host
        assert command == (nc.HOST_COMMAND if result.service is None else nc.SERVICE_COMMAND)
        if result.service is not None:
            assert fields[1] == result.service
        assert re.fullmatch(r"(?:[^\\]|\\\\|\\n)*", fields[-1].rstrip("\n"))
    assert nc.fits_pipe_buf(nc.truncate_to_fit(result, int(result.timestamp)))
    # The other writer takes every decoded result too, and reads back the same names and text.
    [record] = checkresult_file.parse(checkresult_file.render([result], NOW))
    assert (record["host_name"], record.get("service_description")) == (result.host, result.service)
    assert record["output"] == nc.plugin_text(result)
    return "ok"


# -- golden messages ---------------------------------------------------------------

def test_golden_wlcg_service_message():
    result = decode({}, golden("service.wlcg"), now=GOLDEN_NOW)
    assert (result.host, result.service, result.state, result.timestamp) == (
        "ce01.cern.ch", "org.sam.CE-JobSubmit", 2, 1253568948)
    assert result.output == "CRITICAL: job submission failed; see details"
    assert result.long_output == "line one\nEOT\nline three"
    assert result.perfdata == "time=3.2s;10;20"
    assert result.attributes == {"site": "CERN-PROD", "role": "site", "vo": "ops", "flavour": "CREAM-CE",
                                 "gathered_at": "sam-nagios.cern.ch", "uri": "https://ce01.cern.ch:8443/ce",
                                 "status_text": "CRITICAL"}


def test_golden_wlcg_host_message():
    result = decode({}, golden("host.wlcg"), now=GOLDEN_NOW)
    assert (result.host, result.service, result.state, result.output) == (
        "se01.cern.ch", None, 1, "PING CRITICAL - 100% loss")


def test_golden_json_message():
    result = decode({}, golden("service.json"), now=GOLDEN_NOW)
    assert (result.host, result.service, result.state, result.state_type, result.attempt) == (
        "ce01.cern.ch", "org.sam.CE-JobSubmit", 2, "HARD", 3)
    assert (result.long_output, result.perfdata, result.timestamp) == (
        "line one\nEOT\nline three", "time=3.2s;10;20", 1253568948)
    assert result.attributes["flavour"] == "CREAM-CE" and result.attributes["site"] == "CERN-PROD"


# -- mapping ---------------------------------------------------------------------------

@pytest.mark.parametrize("uri, host", [
    ("srm://se02.example.org:8443/srm/managerv2?SFN=/x", "se02.example.org"),
    ("gsiftp://user@se02.example.org:2811/", "se02.example.org"),
    ("https://SE02.Example.org", "SE02.Example.org"),  # case kept: Nagios names are case-sensitive
    ("https://[2001:db8::1]:8443/x", "2001:db8::1"),
    ("se02.example.org", "se02.example.org"),
    ("se02.example.org:8443", "se02.example.org"),
    ("file:///var/x", "se01.example.org"),  # no host part: fall back to hostName
])
def test_host_comes_from_the_service_uri_then_host_name(uri, host):
    assert decode({}, wlcg_body(serviceURI=uri), now=NOW).host == host


def test_host_name_mapping_and_service_fallbacks():
    body = wlcg_body(serviceURI="srm://other.example.org/", nagiosName="SRM-Put-local")
    assert decode({}, body, now=NOW).host == "other.example.org"
    assert decode({}, body, Mapping(host_from="hostName"), now=NOW).host == "se01.example.org"
    assert decode({}, body, now=NOW).service == "SRM-Put-local"
    assert decode({}, body, Mapping(service_from="metricName"), now=NOW).service == "org.sam.SRM-Put"
    assert decode({}, wlcg_body(hostName=None), Mapping(host_from="hostName"), now=NOW).host == "se01.example.org"


@pytest.mark.parametrize("hidden", ["\u202e", "\u2066", "\u200f", "\u200b", "\u2060", "\ufeff", "\u2028", "\u2029"])
def test_a_name_with_a_character_that_changes_how_text_is_shown_is_refused(hidden):
    """A right-to-left override, an isolate, a zero-width character or a line separator in a
    sender's host or service name would let its result read as another object's in Nagios's
    log and web pages: refused, with the character named and escaped in the reason."""
    with pytest.raises(Refused) as info:
        decode({}, wlcg_body(serviceURI=None, hostName=f"se01{hidden}gro.elpmaxe"), now=NOW)
    assert info.value.reason == "bad-host-name" and f"U+{ord(hidden):04X}" in str(info.value)
    assert hidden not in str(info.value)
    assert refused(wlcg_body(nagiosName=f"SRM{hidden}-Put")) == "bad-service-name"
    assert refused(wlcg_body(metricName=f"org.sam.SRM{hidden}-Put")) == "bad-service-name"
    # Elsewhere in the result they are text, shown escaped by every display of the bridge.
    assert decode({}, wlcg_body(summaryData=f"OK: {hidden}stored"), now=NOW).output == f"OK: {hidden}stored"


def test_role_suffix_comes_from_the_record_then_the_header():
    mapping = Mapping(service_suffix_role=True)
    assert decode({}, wlcg_body(), mapping, now=NOW).service == "org.sam.SRM-Put"
    assert decode({"role": "site"}, wlcg_body(), mapping, now=NOW).service == "org.sam.SRM-Put-site"
    assert decode({"role": "site"}, wlcg_body(role="ngi"), mapping, now=NOW).service == "org.sam.SRM-Put-ngi"
    assert decode({"role": "site"}, wlcg_body(), now=NOW).service == "org.sam.SRM-Put"


def test_templates():
    mapping = Mapping(host_template="{site}.{host}", service_template="{metric}@{vo}")
    result = decode({"vo": "ops"}, wlcg_body(nagiosName="x"), mapping, now=NOW)
    assert (result.host, result.service) == ("EXAMPLE-SITE.se01.example.org", "org.sam.SRM-Put@ops")
    assert refused(wlcg_body(), mapping=mapping) == "template-field-missing"


@pytest.mark.parametrize("kwargs", [
    {"host_from": "uri"}, {"service_from": "name"}, {"host_template": "{host.__class__}"},
    {"host_template": "{0}"}, {"host_template": "{}"}, {"service_template": "{service!r}"},
    {"service_template": "{service:>300}"}, {"service_template": "{nope}"}, {"host_template": "{host"},
    {"service_template": "{service}-{role}", "service_suffix_role": True},
    {"max_body_bytes": 0}, {"max_output_bytes": 10}, {"max_output_bytes": True},
])
def test_bad_mappings_are_refused_at_construction(kwargs):
    with pytest.raises(ValueError):
        Mapping(**kwargs)


# -- states, times, sizes -----------------------------------------------------------------

@pytest.mark.parametrize("status, state", [("OK", 0), ("warning", 1), (" Critical ", 2), ("UNKNOWN", 3)])
def test_service_statuses(status, state):
    assert decode({}, wlcg_body(metricStatus=status), now=NOW).state == state


@pytest.mark.parametrize("status, state", [("UP", 0), ("DOWN", 1), ("UNREACHABLE", 2), ("OK", 0),
                                           ("CRITICAL", 1), ("UNKNOWN", 2), ("missing", 2)])
def test_host_statuses(status, state):
    result = decode({}, wlcg_body(metricName="HOST", metricStatus=status), now=NOW)
    assert (result.service, result.state) == (None, state)


@pytest.mark.parametrize("status", ["MISSING", "DOWNTIME", "downtime"])
def test_missing_and_downtime_are_unknown_and_stay_visible(status):
    result = decode({}, wlcg_body(metricStatus=status), now=NOW)
    assert result.state == 3
    assert result.output == f"{status.upper()}: OK: file stored"
    assert result.attributes["status_text"] == status
    # no second prefix when the summary already starts with the status
    expected = "DOWNTIME until 5pm" if status.upper() == "DOWNTIME" else "MISSING: DOWNTIME until 5pm"
    assert decode({}, wlcg_body(metricStatus=status, summaryData="DOWNTIME until 5pm"), now=NOW).output == expected


@pytest.mark.parametrize("stamp, expected", [
    ("2024-01-01T00:00:00Z", 1704067200), ("2024-01-01T00:00:00", 1704067200),
    ("2024-01-01 00:00:00Z", 1704067200), ("2024-01-01T01:00:00+01:00", 1704067200),
    ("2023-12-31T23:30:00-0030", 1704067200), ("2024-01-01T00:00:00.250Z", 1704067200.25),
    ("1704067200", 1704067200), ("2024-01-02T00:59:59Z", 1704157199),
])
def test_timestamps(stamp, expected):
    assert decode({}, wlcg_body(timestamp=stamp), now=NOW).timestamp == expected


@pytest.mark.parametrize("stamp", ["1999-12-31T23:59:59Z", "2024-01-02T01:00:01Z", "2023-02-29T00:00:00Z",
                                   "2023-11-31T00:00:00Z", "0000-01-01T00:00:00Z", "2023-01-01T24:00:00Z",
                                   "2023-01-01T00:60:00Z", "soon", "", "2023-01-01T00:00:00+2400Z",
                                   "2024-01-02T00:00:00+15:00", "2024-01-01T00:00:00+01:60"])
def test_absurd_timestamps_are_refused(stamp):
    assert refused(wlcg_body(timestamp=stamp)) in ("bad-timestamp", "missing-field")


def test_timestamps_read_the_same_from_the_cache_and_refusals_are_never_kept():
    """Short texts are remembered (record.parse_timestamp): the second reading gives what the
    first gave, a refused text is refused again, and a text past the cached length is read too."""
    from msg_nagios_bridge.formats.record import MAX_CACHED_TIMESTAMP, parse_timestamp
    for text, epoch in (("2024-01-01T00:00:00Z", 1704067200.0), ("2024-01-01T02:00:00+02:00", 1704067200.0),
                        (" 1704067200 ", 1704067200.0), ("2024-01-01T00:00:00.5Z", 1704067200.5)):
        assert parse_timestamp(text) == parse_timestamp(text) == epoch
    for _ in range(2):
        with pytest.raises(Refused) as caught:
            parse_timestamp("2024-02-30T00:00:00Z")
        assert caught.value.reason == "bad-timestamp"
    padded = " " * MAX_CACHED_TIMESTAMP + "2024-01-01T00:00:00Z"
    assert parse_timestamp(padded) == 1704067200.0


def test_long_output_is_cut_visibly_not_dropped():
    mapping = Mapping(max_output_bytes=1000)
    result = decode({}, wlcg_body(detailsData="é" * 2000), mapping, now=NOW)
    assert len(result.output.encode()) + len(result.long_output.encode()) <= 1000
    assert result.output == "OK: file stored"
    assert re.fullmatch(r"é+ \[truncated by msg-nagios-bridge: \d+ bytes cut\]", result.long_output)
    cut = int(re.search(r"(\d+) bytes cut", result.long_output).group(1))
    assert cut == 4000 + 15 - len(result.output.encode()) - len(result.long_output.split(" [")[0].encode())

    result = decode({}, wlcg_body(summaryData="x" * 5000, detailsData="y"), mapping, now=NOW)
    assert result.long_output == "" and result.output.startswith("xxx") and "5001" not in result.output
    assert len(result.output.encode()) <= 1000 and "bytes cut]" in result.output

    result = decode({}, wlcg_body(performanceData=" ".join(["m=1;2;3"] * 500)), mapping, now=NOW)
    assert len(result.perfdata) <= 1000 and result.perfdata.endswith("m=1;2;3")
    assert "perfdata [truncated by msg-nagios-bridge:" in result.long_output


def test_json_output_with_newlines_moves_the_rest_to_long_output():
    body = json.dumps({"host": "h", "service": "s", "status": "OK", "epoch": NOW, "output": "one\r\ntwo\nthree",
                       "long_output": "four"}).encode()
    result = decode({}, body, now=NOW)
    assert (result.output, result.long_output) == ("one", "two\nthree\nfour")


@pytest.mark.parametrize("fmt", ["wlcg", "json"])
def test_a_tab_in_perfdata_never_reaches_a_perfdata_file_as_a_field_separator(fmt):
    """Regression (review 2026-12-05): a tab in perfdata was written to Nagios as it came, and
    Nagios writes it into its perfdata file, where a tab-separated grapher template (PNP4Nagios:
    KEY::value fields, the last key wins) read "HOSTNAME::other" as the result's host."""
    forged = "a=1\tHOSTNAME::other.example.org\tSERVICEDESC::Other"
    body = (wlcg_body(performanceData=forged) if fmt == "wlcg" else json.dumps(
        {"host": "h", "service": "s", "status": "OK", "epoch": NOW, "output": "OK\ta table", "perfdata": forged}).encode())
    result = decode({}, body, now=NOW)
    assert result.perfdata == "a=1 HOSTNAME::other.example.org SERVICEDESC::Other"
    assert "\t" not in nc.command_line(result, NOW).split("|", 1)[1]
    assert "\t" not in checkresult_file.render_one(result).partition("|")[2]
    if fmt == "json":
        assert result.output == "OK\ta table"      # output keeps its tabs: plugins print tables with them


def test_a_str_body_is_accepted_and_headers_may_be_none():
    assert decode(None, wlcg_body().decode(), now=NOW).host == "se01.example.org"


def test_now_defaults_to_the_clock():
    assert decode({}, wlcg_body()).timestamp == 1704067200


# -- round trips with the outbound encoders -------------------------------------------------

NAME = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30)
LINE = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), max_size=60)
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\x00"), max_size=200)


BREAKS_TO_BLANKS = str.maketrans(wlcg._LINE_BREAKS, " " * len(wlcg._LINE_BREAKS))


def round_trip_result(host, service, state, output, long_output, perfdata, timestamp, strip):
    """``strip`` (WLCG): its values lose their surrounding blanks, and a one-line field its line
    breaks of any kind (blanks instead: docs/formats.md)."""
    if strip:
        output, perfdata = (text.translate(BREAKS_TO_BLANKS).strip() for text in (output, perfdata))
    perfdata = perfdata.replace("\t", " ")         # a tab in perfdata arrives as a space
    try:
        result = CheckResult(host=host, service=service, state=min(state, 2) if service is None else state,
                             output=output, long_output=long_output.strip("\n"), perfdata=perfdata,
                             timestamp=timestamp)
    except InvalidResult:
        assume(False)
    assume(service != wlcg.HOST_METRIC_NAME)
    assume(not host.endswith("\\") and not (service or "").endswith("\\"))  # refused on purpose
    return result


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(host=NAME, service=st.one_of(st.none(), NAME), state=st.integers(0, 3), output=LINE, long_output=TEXT,
       perfdata=LINE, timestamp=st.integers(946684800, NOW), encoder=st.sampled_from(["wlcg", "json"]))
def test_encode_then_decode_gives_the_result_back(host, service, state, output, long_output, perfdata,
                                                    timestamp, encoder):
    # WLCG trims blanks around values (and its detailsData must not start with one), JSON keeps them.
    long_output = long_output.lstrip() if encoder == "wlcg" else long_output
    result = round_trip_result(host, service, state, output, long_output, perfdata, timestamp, encoder == "wlcg")
    if encoder == "wlcg":
        assume(result.host.strip() == result.host and (service or "x").strip() == (service or "x"))
        body = wlcg.encode(result, FIELDS)
    else:
        body = json_format.encode(result, FIELDS)
    back = decode({}, body.encode(), Mapping(host_from="hostName"), now=NOW)
    assert (back.host, back.service, back.state, back.timestamp) == (
        result.host, result.service, result.state, result.timestamp)
    assert (back.output, back.long_output, back.perfdata) == (result.output, result.long_output, result.perfdata)
    assert back.attributes["site"] == "CERN-PROD" and back.attributes["gathered_at"] == "sam-nagios.cern.ch"


# -- the hostile corpus --------------------------------------------------------------------

def corpus():
    with open(FIXTURES / "hostile" / "cases.jsonl", encoding="utf-8") as handle:
        cases = [json.loads(line) for line in handle if line.strip()]
    return [pytest.param(case, id=case["name"]) for case in cases]


@pytest.mark.parametrize("case", corpus())
def test_hostile_corpus(case):
    body = case["body"].encode("utf-8") if "body" in case else case["body_latin1"].encode("latin-1")
    mapping = Mapping(**case.get("mapping", {}))
    assert assert_safe_or_refused(case.get("headers", {}), body, mapping) == case["expect"]


def test_corpus_covers_every_reason_the_decoder_has():
    names = set()
    expects = set()
    for param in corpus():
        case = param.values[0]
        assert case["name"] not in names, f"duplicate case name {case['name']}"
        names.add(case["name"])
        expects.add(case["expect"])
    assert REASONS - {"too-large", "invalid-result"} <= expects  # too-large is generated below


PAYLOADS = [b"\n", b"\r", b"\r\n", b"\n[1704067200] SHUTDOWN_PROGRAM", b";", b"[", b"]", b"|", b"\x00",
            b"\xc0\xaf", b"\xc0\x80", b"\xe0\x80\x8a", b"\xff", b"\xed\xa0\x80", b"\xe2\x80\xa8", b"\xc2\x85",
            b"\x1b[31m", b"\x7f", b"\\n", b"\\", b"EOT", b"\nEOT\n", b"\nEOT", b"\t", b" ", b"{", b"x" * 300,
            b"\xf0\x9f\x98\x80"]
WLCG_KEYS = ["serviceURI", "hostName", "serviceFlavour", "siteName", "metricStatus", "metricName",
             "summaryData", "gatheredAt", "timestamp", "nagiosName", "role", "voName", "performanceData",
             "statusType", "detailsData"]


@pytest.mark.parametrize("payload", PAYLOADS, ids=repr)
def test_every_payload_in_every_wlcg_field(payload):
    seen = set()
    for key in WLCG_KEYS:
        for place in ("before", "after", "alone"):
            base = wlcg_body(**{key: "VALUE"}) if key != "metricStatus" else wlcg_body(metricStatus="VALUE")
            value = {"before": payload + b"OK", "after": b"OK" + payload, "alone": payload}[place]
            body = base.replace(b"VALUE", value)
            for mapping in (Mapping(), Mapping(service_suffix_role=True, host_from="hostName")):
                seen.add(assert_safe_or_refused({"role": "r"}, body, mapping))
    assert seen  # every combination ended in a verdict


JSON_STRING_KEYS = ["host", "service", "status", "output", "long_output", "perfdata", "timestamp", "site", "role",
                    "vo", "gathered_at", "state_type"]


@pytest.mark.parametrize("payload", PAYLOADS, ids=repr)
def test_every_payload_in_every_json_field(payload):
    text = payload.decode("utf-8", "surrogateescape")
    for key in JSON_STRING_KEYS:
        record = {"host": "h", "service": "s", "status": "OK", "state": 0, "epoch": 1704067200,
                  "timestamp": "2024-01-01T00:00:00Z", "output": "o", "attributes": {"uri": "h"}}
        record[key] = "X"
        raw = json.dumps(record).encode()
        # raw bytes inside the JSON string, and the same text as JSON escapes
        assert_safe_or_refused({}, raw.replace(b'"X"', b'"' + payload + b'"'))
        try:
            escaped = json.dumps(text).encode()
        except UnicodeEncodeError:
            continue
        assert_safe_or_refused({}, raw.replace(b'"X"', escaped))
        assert_safe_or_refused({}, raw.replace(b'"X"', escaped), Mapping(host_from="hostName"))


def test_a_10_mb_body_is_refused_before_parsing():
    body = wlcg_body(detailsData="x" * 10_000_000)
    assert refused(body) == "too-large"
    assert refused(b"{" * 10_000_000) == "too-large"


def test_absurd_json_shapes():
    assert refused(b"[" * 100_000 + b"]" * 100_000) == "json-too-complex"
    assert refused(b'{"a":' * 100_000) == "json-too-complex"
    assert refused(b"[" * 5_000 + b"]" * 5_000) == "json-too-deep"       # past the parser's recursion
    assert refused(b'{"a":' * 7 + b"1" + b"}" * 7) == "json-too-deep"     # just past MAX_JSON_DEPTH
    assert refused(b'{"a":' * 6 + b"1" + b"}" * 6) == "missing-field"     # at it: decoded, then incomplete
    huge = json.dumps({"host": "h", "service": "s", "status": "OK", "epoch": NOW, "x": [0] * 300_000})
    assert len(huge) < Mapping().max_body_bytes
    assert decode({}, huge.encode(), now=NOW).service == "s"
    many_keys = json.dumps({f"k{i}": i for i in range(50_000)})
    assert refused(many_keys.encode()) == "missing-field"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_random_bodies_never_crash(body):
    assert_safe_or_refused({}, body)
    assert_safe_or_refused({}, wlcg_body(summaryData="S", detailsData="D").replace(b"D\n", body + b"\n"))


def test_refused_carries_reason_and_message():
    error = Refused("bad-field", "x is wrong")
    assert (error.reason, error.message, str(error)) == ("bad-field", "x is wrong", "bad-field: x is wrong")
    assert isinstance(error, ValueError)


def test_uri_host_helper_does_not_clean_hostile_values():
    assert inbound.uri_host("srm://se\t01/x") == "se\t01"
    assert inbound.uri_host("srm://a\nb:1/") == "a\nb"


# -- the spellings producers use (issue: "status": 0 and an epoch timestamp were refused) ------

def _json(**fields) -> bytes:
    record = {"host": "se01.example.org", "service": "org.sam.SRM-Put", "output": "fine"}
    record.update(fields)
    return json.dumps({k: v for k, v in record.items() if v is not None}).encode()


@pytest.mark.parametrize("fields, state", [
    ({"status": 2, "epoch": NOW - 60}, 2),
    ({"status": "CRITICAL", "epoch": NOW - 60}, 2),
    ({"state": "critical", "timestamp": "2024-01-01T00:59:00Z"}, 2),
    ({"state": 1, "status": "WARNING", "timestamp": NOW - 60}, 1),
    ({"state": 0, "timestamp": str(NOW - 60)}, 0),
    ({"status": 3, "timestamp": NOW - 60.5}, 3),
])
def test_a_state_as_number_or_name_and_a_time_as_epoch_or_iso_are_accepted(fields, state):
    result = decode({}, _json(**fields), now=NOW)
    assert result.state == state and abs(result.timestamp - (NOW - 60)) <= 0.5


@pytest.mark.parametrize("fields, reason, field", [
    ({"status": 7, "epoch": NOW}, "bad-status", "state 7"),
    ({"status": True, "epoch": NOW}, "bad-field", "status"),
    ({"status": 2, "state": 1, "epoch": NOW}, "bad-status", "disagree"),
    ({"status": "OK", "state": "CRITICAL", "epoch": NOW}, "bad-status", "disagree"),
    ({"status": [0], "epoch": NOW}, "bad-field", "status"),
    ({"status": 0, "timestamp": "yesterday"}, "bad-timestamp", "timestamp"),
    ({"status": 0, "epoch": "soon"}, "bad-timestamp", "epoch"),
    ({"status": 0, "epoch": True}, "bad-field", "epoch"),
    ({"status": 0}, "missing-field", "epoch"),
    ({"epoch": NOW}, "missing-field", "status"),
])
def test_other_spellings_are_refused_with_a_reason_naming_the_field(fields, reason, field):
    with pytest.raises(Refused) as info:
        decode({}, _json(**fields), now=NOW)
    assert info.value.reason == reason and field in info.value.message, info.value


def test_content_type_decides_the_format_when_present():
    wlcg_text = wlcg_body()
    assert decode({"content-type": "text/plain; charset=utf-8"}, wlcg_text, now=NOW).host == "se01.example.org"
    assert refused(b"null", {"content-type": "application/json"}) == "json-not-object"
    assert refused(b"  null", {}) == "no-eot"                           # no content-type: detected as WLCG
    assert refused(_json(status=0, epoch=NOW), {"content-type": "text/plain"}) == "no-eot"
    assert decode({"content-type": "application/vnd.x+json"}, b"\n" + _json(status=0, epoch=NOW - 1),
                  now=NOW).state == 0


@pytest.mark.parametrize("changes, reason", [
    ({"serviceFlavour": "x" * 256}, "field-too-long"),                          # one over the limit
    ({"serviceFlavour": "é" * 256}, "field-too-long"),                          # non-ASCII, over it
    ({"serviceFlavour": "x" * 200, "siteName": "y" * 200, "gatheredAt": "z" * 200}, None),  # each within
    ({"serviceFlavour": "é" * 255}, None),                                      # non-ASCII, within
])
def test_attributes_are_checked_each_on_its_own_against_the_limit(changes, reason):
    """The attributes are checked together when they are short ASCII (nearly always), else one
    by one: the same verdict either way (2026-12-06)."""
    body = wlcg_body(**changes)
    if reason:
        assert refused(body) == reason
    else:
        result = decode({}, body, now=NOW)
        assert result.attributes["flavour"] == changes["serviceFlavour"]

