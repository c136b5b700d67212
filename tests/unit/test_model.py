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


# -- SpooledResults: the inbound spool's bodies, and the results the writer reads back undecoded --

def _result(**changes):
    fields = dict(host="ce01.example.org", service="org.sam.CE-JobSubmit", state=1, output="WARNING: slow",
                  long_output="line 1\nline 2", perfdata="t=1.5s;2;5", timestamp=1700000000.25,
                  attributes={"site": "SITE-A", "vo": "ops"})
    fields.update(changes)
    return CheckResult(**fields)


_ODD_VALUES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5)


_NAMES = st.text("abc.-_ é", min_size=1, max_size=20) | st.text(min_size=1, max_size=40)


@given(host=_NAMES, service=st.none() | _NAMES,
       state=st.integers(0, 3), output=st.text(max_size=60), long_output=st.text(max_size=60),
       perfdata=st.text(max_size=40), timestamp=st.integers(0, 2**35 - 1) | st.floats(0, 2**35 - 1, exclude_max=True),
       attempt=st.integers(-2**70, 2**70) | _ODD_VALUES,
       attributes=st.dictionaries(st.text(max_size=10) | _ODD_VALUES, st.text(max_size=20) | _ODD_VALUES, max_size=4))
def test_a_result_is_spooled_as_exactly_the_json_dumps_of_its_dict(host, service, state, output, long_output,
                                                                   perfdata, timestamp, attempt, attributes):
    """result_json makes the spool's text itself: byte for byte json.dumps's, whatever the
    text (non-ASCII, controls, lone surrogates) and whatever odd values the fields hold."""
    import json
    from msg_nagios_bridge.model import result_json, result_to_dict
    try:
        result = CheckResult(host=host, service=service, state=state, output=output, long_output=long_output,
                             perfdata=perfdata, timestamp=timestamp, attempt=attempt, attributes=attributes)
    except InvalidResult:
        return
    assert result_json(result) == json.dumps(result_to_dict(result))


def test_a_result_with_an_int_subclass_state_is_spooled_as_json_dumps_writes_it():
    import enum
    import json
    from msg_nagios_bridge.model import result_json, result_to_dict

    class State(enum.IntEnum):
        WARNING = 1
    result = _result(state=State.WARNING, attributes={"a": "\u00e9\x01\ud800", 3: "x"})
    assert result_json(result) == json.dumps(result_to_dict(result))
    assert result_json(_result(attempt=True)) == json.dumps(result_to_dict(_result(attempt=True)))


@given(host=st.text(min_size=1, max_size=40), service=st.none() | st.text(min_size=1, max_size=40),
       state=st.integers(0, 3), state_type=st.sampled_from(["HARD", "SOFT"]), output=st.text(max_size=60),
       long_output=st.text(max_size=60), perfdata=st.text(max_size=40),
       timestamp=st.integers(0, 2**35 - 1) | st.floats(0, 2**35 - 1, exclude_max=True),
       attempt=st.integers(-2**70, 2**70), attributes=st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4))
def test_a_spooled_result_decodes_to_the_same_result_remembered_or_not(host, service, state, state_type, output,
                                                                      long_output, perfdata, timestamp, attempt, attributes):
    """The writer gets the remembered result only because decoding its body gives the same
    one, to the types of its fields (an int timestamp stays an int): the repr compares them."""
    from msg_nagios_bridge.model import SpooledResults
    try:
        result = CheckResult(host=host, service=service, state=state, state_type=state_type, output=output,
                             long_output=long_output, perfdata=perfdata, timestamp=timestamp, attempt=attempt,
                             attributes=attributes)
    except InvalidResult:
        return
    body = SpooledResults().encode(result)
    assert repr(SpooledResults().decode(body)) == repr(result)
    shared = SpooledResults(keep=8)
    assert shared.encode(result) == body            # the same bytes, remembering or not
    assert shared.decode(body) is result


def test_spooled_results_hand_back_a_remembered_result_once_by_its_exact_body():
    from msg_nagios_bridge.model import SpooledResults
    shared = SpooledResults(keep=8)
    result = _result()
    body = shared.encode(result)
    assert shared.decode(bytes(bytearray(body))) is result     # another bytes object, as SQLite returns
    again = shared.decode(body)                                 # taken: decoded this time
    assert again == result and again is not result
    other = _result(state=2, output="CRITICAL: down")
    shared.encode(other)
    assert shared.decode(SpooledResults().encode(_result(state=0, output="OK"))).state == 0   # not remembered


def test_spooled_results_remember_a_bounded_number_of_small_bodies():
    from msg_nagios_bridge.model import SpooledResults
    shared = SpooledResults(keep=4)
    results = [_result(output=f"WARNING: {i}") for i in range(10)]
    bodies = [shared.encode(result) for result in results]
    assert [shared.decode(body) is result for body, result in zip(bodies, results)] == [False] * 6 + [True] * 4
    big = _result(long_output="x" * SpooledResults.MAX_BODY)
    assert shared.decode(shared.encode(big)) is not big                # too big to keep
    assert SpooledResults().decode(SpooledResults().encode(big)) == big
    alone = SpooledResults()                                           # keep 0: remembers nothing
    assert alone.decode(alone.encode(results[0])) is not results[0]


@pytest.mark.parametrize("body, error", [(b"not json", ValueError), (b'{"host": "h"}', TypeError),
                                         (b'{"host": "a;b", "service": "s", "state": 0}', ValueError)])
def test_spooled_results_refuse_a_body_that_holds_no_result(body, error):
    """The writers dead-letter what raises ValueError or TypeError here."""
    from msg_nagios_bridge.model import SpooledResults
    with pytest.raises(error):
        SpooledResults(keep=8).decode(body)


def test_a_name_checked_once_is_remembered_only_if_it_passed_and_only_as_exact_text():
    """check_name remembers the names it passed (2026-12-06): a refused name is refused every
    time, a str subclass that claims to equal a remembered name is checked itself, and the
    memory is bounded."""
    from msg_nagios_bridge import model
    model._PASSED.clear()
    assert model.check_name("host name", "ce01.example.org") == "ce01.example.org"
    assert "ce01.example.org" in model._PASSED
    for _ in range(2):
        with pytest.raises(InvalidResult, match="forbidden"):
            model.check_name("host name", "ce01;example")
    assert "ce01;example" not in model._PASSED

    class ClaimsEquality(str):
        def __eq__(self, other):
            return True

        def __hash__(self):
            return hash("ce01.example.org")

    with pytest.raises(InvalidResult, match="forbidden"):
        model.check_name("host name", ClaimsEquality("ce01;example"))
    class Text(str):
        pass

    model.check_name("host name", Text("fine.example.org"))                # passes, not remembered
    assert all(type(name) is str for name in model._PASSED)
    for n in range(model.PASSED_KEPT + 10):
        model.check_name("service description", f"svc{n}")
    assert 0 < len(model._PASSED) <= model.PASSED_KEPT
    with pytest.raises(InvalidResult):
        CheckResult(host="ce01.example.org", service=" svc", state=0)     # remembered host, bad service


def test_a_results_id_is_the_one_earlier_versions_gave():
    """result_id is what receivers drop duplicates by, also across an upgrade: pinned to the
    ids the code of 2026-12-07 gave (text with a surrogate-escaped byte and non-ASCII, a host
    check with a fractional time)."""
    service = CheckResult(host="ce01.example.org", service="org.sam.CE-JobSubmit", state=2,
                          output="CRITICAL: no \udcff job", long_output="line 1\nline 2 é",
                          perfdata="t=1.5s;2;3", timestamp=1765000000)
    host = CheckResult(host="ce01.example.org", service=None, state=0, output="", timestamp=1765000000.25)
    assert service.identity() == "d724d295b81bae598d625bda904db19a"
    assert host.identity() == "9d8e86512622abc95b1ae291611dcfbe"


def test_a_result_is_frozen_and_keeps_its_own_copy_of_the_attributes():
    """CheckResult's own __init__ (faster than the dataclass's) keeps the dataclass's contract:
    frozen, equal by fields, replace() works, the caller's mapping copied."""
    import dataclasses
    given_attributes = {"flavour": "CE"}
    result = CheckResult("h", "s", 1, "SOFT", "o", "", "p=1", 12.5, 2, given_attributes)
    given_attributes["flavour"] = "changed"
    assert result.attributes == {"flavour": "CE"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.state = 0
    assert result == CheckResult(host="h", service="s", state=1, state_type="SOFT", output="o", perfdata="p=1",
                                 timestamp=12.5, attempt=2, attributes={"flavour": "CE"})
    assert CheckResult("h", None, 0).attributes == {} and CheckResult("h", None, 0).state_type == "HARD"
    with pytest.raises(InvalidResult):
        dataclasses.replace(result, state=7)
