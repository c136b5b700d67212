"""Inbound policy: refuse by default, explain every refusal, read objects.cache."""
import pytest
from hypothesis import given, settings, strategies as st

from msg_nagios_bridge.model import Refused
from msg_nagios_bridge.model import CheckResult
from msg_nagios_bridge.inbound.policy import (Policy, Rule, check, known_objects_from_objects_cache, parse_objects_cache, sender_of)

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


OBJECTS_CACHE = """\
########################################
#       NAGIOS OBJECT CACHE FILE
#
# THIS FILE IS AUTOMATICALLY GENERATED
# BY NAGIOS.  DO NOT MODIFY THIS FILE!
#
# Created: Mon Jan  1 00:00:00 2024
########################################

define timeperiod {
\ttimeperiod_name\t24x7
\talias\t24 Hours A Day, 7 Days A Week
\tmonday\t00:00-24:00
\t}

define command {
\tcommand_name\tcheck_dummy
\tcommand_line\t/usr/lib/nagios/plugins/check_dummy $ARG1$
\t}

define contact {
\tcontact_name\tadmin
\thost_notifications_enabled\t1
\t}

define host {
\thost_name\tce01.example.org
\talias\tCE 01
\taddress\t192.0.2.1
\tcheck_command\tcheck_dummy!0
\tmax_check_attempts\t3
\t}

define host {
\thost_name\tse01.example.org
\talias\tSE 01; storage
\taddress\t192.0.2.2
\t}

define service {
\thost_name\tce01.example.org
\tservice_description\torg.sam.CE-JobSubmit-site
\tcheck_command\tcheck_dummy!3!"no result yet"
\tactive_checks_enabled\t0
\tpassive_checks_enabled\t1
\t}

define service {
\thost_name\tse01.example.org
\tservice_description\tCurrent Load
\tdisplay_name\tLoad\u2028average
\t}

define servicedependency {
\thost_name\tse01.example.org
\tservice_description\tnot a service
\tdependent_host_name\tce01.example.org
\tdependent_service_description\torg.sam.CE-JobSubmit-site
\t}

define hostgroup {
\thostgroup_name\tall
\tmembers\tce01.example.org,se01.example.org
\t}
"""


def test_objects_cache_gives_hosts_and_services(tmp_path):
    path = tmp_path / "objects.cache"
    path.write_text(OBJECTS_CACHE, encoding="utf-8")
    assert known_objects_from_objects_cache(str(path)) == frozenset({
        ("ce01.example.org", None), ("se01.example.org", None),
        ("ce01.example.org", "org.sam.CE-JobSubmit-site"), ("se01.example.org", "Current Load"),
    })


def test_objects_cache_with_crlf_and_odd_spacing():
    text = "define service{\r\n  host_name   h1  \r\n\tservice_description\tA  B\r\n}\r\ndefine host {\n}\n"
    assert parse_objects_cache(text) == frozenset({("h1", "A  B")})


def test_a_missing_objects_cache_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        known_objects_from_objects_cache(str(tmp_path / "nope"))
