"""Check results directory files: exact text, refusals, and a render/parse round trip
through a reader that follows Nagios's own line rules."""
import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from msg_nagios_bridge.cores.nagios import checkresult_file as crf
from msg_nagios_bridge.cores.nagios import nagios_command as nc
from msg_nagios_bridge.model import CheckResult, InvalidResult

NOW = 1700000100


def test_service_and_host_results_render_exactly():
    service = CheckResult(host="web01", service="HTTP check", state=1, output="slow; very",
                          long_output="a\\b\nc", perfdata="t=2s", timestamp=1700000000.25)
    host = CheckResult(host="web01", service=None, state=2, output="PING CRITICAL", timestamp=1700000000)
    assert crf.render([service, host], NOW) == (
        "### Passive Check Result File ###\n"
        "file_time=1700000100\n"
        "\n"
        "### Nagios Service Check Result ###\n"
        "host_name=web01\n"
        "service_description=HTTP check\n"
        "check_type=1\n"
        "check_options=0\n"
        "scheduled_check=0\n"
        "reschedule_check=0\n"
        "latency=0.0\n"
        "start_time=1700000000.250000\n"
        "finish_time=1700000000.250000\n"
        "early_timeout=0\n"
        "exited_ok=1\n"
        "return_code=1\n"
        "output=slow; very|t=2s\\na\\\\b\\nc\n"
        "\n"
        "### Nagios Host Check Result ###\n"
        "host_name=web01\n"
        "check_type=1\n"
        "check_options=0\n"
        "scheduled_check=0\n"
        "reschedule_check=0\n"
        "latency=0.0\n"
        "start_time=1700000000.0\n"
        "finish_time=1700000000.0\n"
        "early_timeout=0\n"
        "exited_ok=1\n"
        "return_code=2\n"
        "output=PING CRITICAL\n"
        "\n")


def test_usec_has_no_leading_zeros_because_nagios_reads_it_with_base_0():
    result = CheckResult(host="h", service="s", state=0, timestamp=1700000000.000123)
    assert "start_time=1700000000.123\n" in crf.render_one(result)


@pytest.mark.parametrize("name", ["h\\", "h\\\\", "a;b", "a\nb", "a\x00b", "a\ud800b", ""])
@pytest.mark.parametrize("field", ["host", "service"])
def test_bad_names_are_refused(name, field):
    result = CheckResult(host="h", service="s", state=0)
    object.__setattr__(result, field, name)  # bypass CheckResult's own checks
    with pytest.raises(nc.CommandRefused):
        crf.render([result], NOW)


def test_a_name_ending_in_backslash_would_swallow_the_next_line():
    # Why the rule exists: Nagios's reader joins a line ending in one backslash to the next.
    text = "host_name=h\\\nservice_description=s\noutput=x\n\n"
    assert crf.parse(text) == [{"host_name": "hservice_description=s", "output": "x"}]


def test_output_ending_in_backslashes_reads_back_right():
    for tail in ("\\", "\\\\", "\\\\\\"):
        result = CheckResult(host="h", service="s", state=0, output="x" + tail)
        assert crf.parse(crf.render([result], NOW))[0]["output"] == "x" + tail


def test_bad_times_are_refused():
    result = CheckResult(host="h", service="s", state=0)
    with pytest.raises(nc.CommandRefused):
        crf.render([result], float("nan"))
    object.__setattr__(result, "timestamp", -5)
    with pytest.raises(nc.CommandRefused):
        crf.render_one(result)


def test_parse_skips_comments_and_the_header_and_takes_an_unterminated_last_result():
    text = "# c\nfile_time=1\n\nhost_name=a\noutput=x\\ny\n\nhost_name=b\noutput=z"
    assert crf.parse(text) == [{"host_name": "a", "output": "x\ny"}, {"host_name": "b", "output": "z"}]


SPECIAL = st.sampled_from(["\\", "\n", "\r", "=", "#", ";", "[", "\x00", "\t", "\x85", "\ud800", "é", " "])
TEXT = st.text(alphabet=st.one_of(SPECIAL, st.characters(blacklist_categories=())), max_size=30)
NAME = st.one_of(TEXT, st.text(alphabet="ab=#\\ .-", min_size=1, max_size=10))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(results=st.lists(st.tuples(NAME, st.one_of(st.none(), NAME), st.integers(0, 3), TEXT, TEXT, TEXT,
                                  st.floats(0, 2**34, allow_nan=False)), min_size=1, max_size=3))
def test_render_parse_round_trip_and_every_value_is_one_line(results):
    made = []
    for host, service, state, output, long_output, perfdata, timestamp in results:
        try:
            result = CheckResult(host=host, service=service, state=min(state, 2) if service is None else state,
                                 output=output.replace("\n", "").replace("\r", ""), long_output=long_output,
                                 perfdata=perfdata, timestamp=timestamp)
            crf.render_one(result)
        except (InvalidResult, nc.CommandRefused):
            continue
        made.append(result)
    text = crf.render(made, NOW)
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]", text)      # TAB is kept
    parsed = crf.parse(text)
    assert len(parsed) == len(made)
    for result, record in zip(made, parsed):
        expected_keys = ["host_name"] + (["service_description"] if result.service is not None else []) + [
            "check_type", "check_options", "scheduled_check", "reschedule_check", "latency", "start_time",
            "finish_time", "early_timeout", "exited_ok", "return_code", "output"]
        assert list(record) == expected_keys
        assert record["host_name"] == result.host
        assert record.get("service_description") == result.service
        assert record["return_code"] == str(result.state) and record["check_type"] == "1"
        assert record["output"] == nc.plugin_text(result)
        sec, usec = record["start_time"].split(".")
        assert record["finish_time"] == record["start_time"] and (usec == "0" or not usec.startswith("0"))
        assert abs(int(sec) + int(usec) / 1e6 - result.timestamp) <= 1e-6 * max(1.0, result.timestamp / 1e9)
