"""Inbound policy: refuse by default, explain every refusal."""
import pytest
from hypothesis import given, settings, strategies as st

from msg_nagios_bridge.model import Refused
from msg_nagios_bridge.model import CheckResult
from msg_nagios_bridge.inbound.policy import Policy, Rule, check, sender_of

SERVICE = CheckResult(host="ce01.example.org", service="org.sam.CE-JobSubmit", state=0)
HOST = CheckResult(host="ce01.example.org", service=None, state=1)
ALLOW_ALL = Rule(senders=("*",), hosts=("*",), services=("*",), host_checks=True)


def reason(policy, result, sender="nagios.remote.org"):
    with pytest.raises(Refused) as info:
        check(policy, result, sender)
    assert "\n" not in str(info.value)
    return info.value.reason


def test_the_default_policy_refuses_everything():
    assert reason(Policy(), SERVICE) == "sender-not-allowed"
    assert reason(Policy(), HOST) == "sender-not-allowed"
    with pytest.raises(Refused, match="no rules"):
        check(Policy(), SERVICE, "nagios.remote.org")


def test_allow_all_is_explicit():
    check(Policy(rules=(ALLOW_ALL,)), SERVICE, "anyone")
    check(Policy(rules=(ALLOW_ALL,)), HOST, "anyone")


def test_a_missing_sender_is_refused_even_by_allow_all():
    assert reason(Policy(rules=(ALLOW_ALL,)), SERVICE, sender="") == "no-sender"
    assert reason(Policy(rules=(ALLOW_ALL,)), SERVICE, sender=None) == "no-sender"


def test_each_refusal_names_the_step_that_failed():
    policy = Policy(rules=(Rule(senders=("nagios.remote.org",), hosts=("ce*.example.org",),
                                services=("org.sam.*",)),))
    check(policy, SERVICE, "nagios.remote.org")
    assert reason(policy, SERVICE, "nagios.other.org") == "sender-not-allowed"
    assert reason(policy, CheckResult(host="se01.example.org", service="org.sam.X", state=0)) == "host-not-allowed"
    assert reason(policy, CheckResult(host="ce01.example.org", service="HTTP", state=0)) == "service-not-allowed"
    assert reason(policy, HOST) == "host-check-not-allowed"


def test_any_one_rule_may_allow():
    policy = Policy(rules=(
        Rule(senders=("a.*",), hosts=("se*",), services=("*",)),
        Rule(senders=("a.*",), hosts=("ce*",), services=(), host_checks=True),
        Rule(senders=("b.*",), hosts=("*",), services=("org.sam.*",)),
    ))
    check(policy, HOST, "a.org")
    assert reason(policy, SERVICE, "a.org") == "service-not-allowed"
    check(policy, SERVICE, "b.org")
    assert reason(policy, HOST, "b.org") == "host-check-not-allowed"


def test_patterns_are_case_sensitive_like_nagios_names():
    policy = Policy(rules=(Rule(senders=("*",), hosts=("CE01.*",), services=("*",)),))
    assert reason(policy, SERVICE) == "host-not-allowed"


def test_known_objects():
    known = frozenset({("ce01.example.org", "org.sam.CE-JobSubmit"), ("se01.example.org", None)})
    policy = Policy(rules=(ALLOW_ALL,), known_objects=known)
    check(policy, SERVICE, "x")
    assert reason(policy, HOST) == "unknown-object"
    check(policy, CheckResult(host="se01.example.org", service=None, state=0), "x")
    assert reason(policy, CheckResult(host="ce01.example.org", service="other", state=0)) == "unknown-object"
    # Nagios would also take a host's address for its name; known_objects lets only real names through.
    assert reason(policy, CheckResult(host="192.0.2.1", service="org.sam.CE-JobSubmit", state=0)) == "unknown-object"


def test_sender_comes_from_the_configured_header():
    assert sender_of(Policy(), {"nagios_host": "n1", "dn": "/CN=x"}) == "n1"
    assert sender_of(Policy(sender_header="dn"), {"nagios_host": "n1", "dn": "/CN=x"}) == "/CN=x"
    assert sender_of(Policy(), {}) == ""
    assert sender_of(Policy(), {"nagios_host": 5}) == ""


def test_exact_senders_take_a_dn_literally():
    wildcard_dn = "CN=*.site-a.org, O=Grid"              # a DN may hold * ? [ ]
    pattern = Policy(rules=(Rule(senders=(wildcard_dn,), hosts=("*",), services=("*",)),))
    exact = Policy(rules=(Rule(senders=(wildcard_dn,), hosts=("*",), services=("*",), exact_senders=True),))
    check(pattern, SERVICE, "CN=evil.site-a.org, O=Grid")          # as a pattern: too wide
    assert reason(exact, SERVICE, "CN=evil.site-a.org, O=Grid") == "sender-not-allowed"
    check(exact, SERVICE, wildcard_dn)
    bracket_dn = "CN=ce[1].site-a.org, O=Grid"
    assert reason(Policy(rules=(Rule(senders=(bracket_dn,), hosts=("*",), services=("*",)),)),
                  SERVICE, bracket_dn) == "sender-not-allowed"  # as a pattern: not even itself
    check(Policy(rules=(Rule(senders=(bracket_dn,), hosts=("*",), services=("*",), exact_senders=True),)),
          SERVICE, bracket_dn)
    assert reason(exact, SERVICE, "CN=*.site-a.org,O=Grid") == "sender-not-allowed"   # exact means exact


@pytest.mark.parametrize("kwargs", [
    {"senders": "*", "hosts": ("*",)},
    {"senders": ("*",), "hosts": ("*",), "exact_senders": "yes"},
    {"senders": ("*",), "hosts": ("",)},
    {"senders": ("*",), "hosts": (3,)},
    {"senders": ("*",), "hosts": ("*",), "host_checks": "yes"},
])
def test_bad_rules_are_refused_at_construction(kwargs):
    with pytest.raises(ValueError):
        Rule(**kwargs)


def test_bad_policies_are_refused_at_construction():
    with pytest.raises(ValueError):
        Policy(rules=("*",))
    assert Policy(rules=[ALLOW_ALL]).rules == (ALLOW_ALL,)


@settings(max_examples=200, deadline=None)
@given(sender=st.text(max_size=20), host=st.sampled_from(["ce01", "se01", "web[1]", "a*b"]),
       patterns=st.lists(st.sampled_from(["*", "ce*", "se0?", "web[[]1]", "a*b", "nomatch"]), max_size=3))
def test_check_either_passes_or_refuses_with_a_known_reason(sender, host, patterns):
    policy = Policy(rules=(Rule(senders=("*",), hosts=tuple(patterns), services=("*",)),))
    try:
        check(policy, CheckResult(host=host, service="s", state=0), sender)
    except Refused as e:
        assert e.reason in ("no-sender", "host-not-allowed")


def _reference_check(policy, result, sender):
    """policy.check's rule steps as they were before it became one loop (2026-12-06): a list
    of the rules that pass each step. The reference the loop must equal."""
    from msg_nagios_bridge.inbound.policy import _matches
    rules = [rule for rule in policy.rules if rule.allows_sender(sender)]
    if not rules:
        return "sender-not-allowed"
    rules = [rule for rule in rules if _matches(result.host, rule.hosts)]
    if not rules:
        return "host-not-allowed"
    if result.service is None:
        return None if any(rule.host_checks for rule in rules) else "host-check-not-allowed"
    return None if any(_matches(result.service, rule.services) for rule in rules) else "service-not-allowed"


PATTERNS = st.lists(st.sampled_from(["*", "a*", "b", "a"]), min_size=1, max_size=2).map(tuple)
RULES = st.builds(Rule, senders=PATTERNS, hosts=PATTERNS, services=PATTERNS, host_checks=st.booleans())


@settings(max_examples=1000, deadline=None)
@given(st.lists(RULES, max_size=4), st.sampled_from(["a", "b", "c"]), st.sampled_from(["a", "ab", "b"]),
       st.sampled_from([None, "a", "b", "c"]))
def test_the_refusal_is_the_furthest_step_any_rule_got_to(rules, sender, host, service):
    result = CheckResult(host=host, service=service, state=0)
    try:
        check(Policy(rules=tuple(rules)), result, sender)
        got = None
    except Refused as exc:
        got = exc.reason
    assert got == _reference_check(Policy(rules=tuple(rules)), result, sender)
