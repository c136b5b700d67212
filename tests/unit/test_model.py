"""CheckResult refuses what must never reach Nagios or a message."""
import pytest
from hypothesis import given, strategies as st

from msg_nagios_bridge.model import CheckResult, InvalidResult


@pytest.mark.parametrize("host", ["", " h", "a;b", "a\nb", "a\rb", "a\x00b", "a\x7fb", "a\x85b", "x" * 256])
def test_bad_host_names_are_refused(host):
    with pytest.raises(InvalidResult):
        CheckResult(host=host, service="s", state=0)


@pytest.mark.parametrize("state, service", [(4, "s"), (-1, "s"), (3, None), (True, "s"), ("0", "s")])
def test_states_out_of_range_are_refused(state, service):
    with pytest.raises(InvalidResult):
        CheckResult(host="h", service=service, state=state)


def test_output_is_one_line_and_state_names():
    with pytest.raises(InvalidResult):
        CheckResult(host="h", service="s", state=0, output="a\nb")
    assert CheckResult(host="h", service=None, state=2).state_name == "UNREACHABLE"
    assert CheckResult(host="h", service="s", state=3).state_name == "UNKNOWN"


@given(st.text(min_size=1, max_size=300))
def test_any_accepted_name_is_safe_for_a_command_line(name):
    try:
        result = CheckResult(host=name, service=name, state=0)
    except InvalidResult:
        return
    assert ";" not in result.host and "\n" not in result.host
    assert all(ord(c) >= 32 and not 0x7f <= ord(c) <= 0x9f for c in result.host)


def test_result_dict_round_trip_covers_every_field():
    import dataclasses
    from msg_nagios_bridge.model import result_from_dict, result_to_dict
    result = CheckResult(host="h", service="s", state=2, state_type="SOFT", output="o", long_output="l\nm",
                         perfdata="p=1", timestamp=12.5, attempt=3, attributes={"flavour": "CE"})
    assert result_to_dict(result) == dataclasses.asdict(result)
    assert result_from_dict(result_to_dict(result)) == result
