"""Routing: selection, destination templates, headers, stable ids."""
import dataclasses
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from msg_nagios_bridge import config, spool
from msg_nagios_bridge.outbound import routing
from msg_nagios_bridge.model import CheckResult

SETTINGS = config.parse("""
site: {name: CERN.PROD, role: site, nagios_name: nagios.cern.ch, vo: ops}
brokers: {hosts: ["127.0.0.1:61613"]}
spool: {directory: /tmp/spool}
routes:
  - {name: all, destination: "/topic/grid.probe.metricOutput.EGEE.{role}.{site}"}
  - {name: json-ce, destination: "/queue/ce.{host}.{service}", format: json, services: ["org.sam.CE-*"],
     exclude_hosts: ["test*"], hard_only: false, host_checks: true, ttl: 60}
""", "r.yaml")
ALL, JSON_CE = SETTINGS.routes


def result(**changes):
    base = CheckResult(host="ce01.cern.ch", service="org.sam.CE-JobSubmit", state=0, state_type="HARD",
                       output="OK", timestamp=1700000000)
    return dataclasses.replace(base, **changes)


def test_hard_only_and_patterns():
    assert routing.selects(ALL, result())
    assert not routing.selects(ALL, result(state_type="SOFT"))
    assert routing.selects(JSON_CE, result(state_type="SOFT"))
    assert not routing.selects(JSON_CE, result(service="HTTP"))
    assert not routing.selects(JSON_CE, result(host="test01"))


def test_a_star_among_patterns_matches_every_name_and_excludes_every_name():
    odd = result(host="x.y-z_1", service="a b:c/d*[e]")
    assert routing.selects(dataclasses.replace(JSON_CE, services=("nothing*", "*")), odd)
    assert not routing.selects(dataclasses.replace(ALL, exclude_services=("*",)), odd)
    assert not routing.selects(dataclasses.replace(ALL, exclude_hosts=("other", "*")), odd)
    assert not routing.selects(dataclasses.replace(JSON_CE, services=("nothing*", "*x")), odd)


def test_host_checks_only_where_asked():
    host = result(service=None)
    assert not routing.selects(ALL, host)
    assert routing.selects(JSON_CE, host)


def test_per_service_opt_out_by_custom_variable():
    assert not routing.selects(ALL, result(attributes={"publish": "0"}))
    assert not routing.selects(ALL, result(attributes={"publish": " No "}))
    assert routing.selects(ALL, result(attributes={"publish": "1"}))


def test_destination_makes_dots_and_wildcards_safe():
    assert routing.destination(ALL, SETTINGS.site, result()) == "/topic/grid.probe.metricOutput.EGEE.site.CERN_PROD"
    weird = result(host="a*b>c", service="x y.z")
    assert routing.destination(JSON_CE, SETTINGS.site, weird) == "/queue/ce.a_b_c.x_y_z"


def test_a_destination_of_the_site_fields_only_is_made_once_a_site_and_is_what_filling_it_gives():
    """Templates with only {site}, {role} and {vo} are filled once a site (cached): each site,
    each template, gets what filling all seven fields made safe gives."""
    def filled(template, site, one):
        values = {"site": site.name, "role": site.role, "vo": site.vo or "none", "host": one.host,
                  "service": one.service, "flavour": "unknown", "status": "OK"}
        return template.format(**{key: re.sub(r"[.\s*>,/:;\\\x00-\x1f\x7f]", "_", value) for key, value in values.items()})
    sites = [SETTINGS.site, dataclasses.replace(SETTINGS.site, name="A.B*C", role="r>1", vo=""),
             dataclasses.replace(SETTINGS.site, name="D,E/F", vo="v.o")]
    for template in ("/queue/x", "/topic/a.{site}", "/topic/{role}.{vo}.{site}.{site}", "/queue/{vo}",
                     "/queue/{site}.{host}", "/queue/{service}.{role}"):
        route = dataclasses.replace(ALL, destination=template)
        for site in sites:
            for one in (result(), result(host="h.2", service="s*3")):
                assert routing.destination(route, site, one) == filled(template, site, one), (template, site)


def test_destination_keeps_control_characters_of_custom_variables_out():
    """Regression (review 2026-12-04): a NUL in the flavour custom variable reached the
    destination, and ended the SEND frame there (stomp.py read two frames)."""
    route = dataclasses.replace(ALL, destination="/queue/q.{flavour}")
    for char in ("\x00", "\x01", "\x1b", "\x7f", "\t"):
        flavoured = result(attributes={"flavour": f"CE{char}BOGUS"})
        assert routing.destination(route, SETTINGS.site, flavoured) == "/queue/q.CE_BOGUS"


def test_headers_carry_what_consumers_filter_on():
    message = routing.build_message(ALL, SETTINGS.site, result(state=2), now_ms=1000)
    headers = message.headers
    assert headers["persistent"] == "true"
    assert headers["site"] == "CERN.PROD" and headers["role"] == "site" and headers["vo"] == "ops"
    assert headers["nagios_host"] == "nagios.cern.ch"
    assert headers["metric"] == "org.sam.CE-JobSubmit" and headers["status"] == "CRITICAL"
    assert headers["result_id"] == result(state=2).identity()
    assert headers["check_time"] == "1700000000"
    assert "expires" not in headers
    assert b"metricStatus: CRITICAL" in message.body
    ttl = routing.build_message(JSON_CE, SETTINGS.site, result(), now_ms=1000)
    assert ttl.headers["expires"] == str(1000 + 60_000)
    assert ttl.headers["content-type"] == "application/json"


def test_ids_are_stable_and_differ_per_route_and_result():
    router = routing.Router(SETTINGS)
    first = router.messages(result())
    again = router.messages(result())
    assert [m.message_id for m in first] == [m.message_id for m in again]
    assert len({m.message_id for m in first}) == 2
    assert router.messages(result(output="other"))[0].message_id != first[0].message_id


def test_echo_guard_suppresses_everything():
    router = routing.Router(SETTINGS, is_echo=lambda r: r.host == "ce01.cern.ch")
    assert router.messages(result()) == []


_NAME_CHARS = st.sampled_from("ab.-_:\\!é{} \u2028")


@settings(max_examples=400, deadline=None)
@given(host=st.text(_NAME_CHARS, min_size=1, max_size=8), service=st.none() | st.text(_NAME_CHARS, min_size=1, max_size=8),
       site_name=st.text(_NAME_CHARS, min_size=1, max_size=6), nagios_name=st.text(_NAME_CHARS, min_size=1, max_size=6),
       vo=st.sampled_from(["", "ops", "o:p", "ö"]), route=st.sampled_from([ALL, JSON_CE, dataclasses.replace(ALL, message_group=False),
                                                                          dataclasses.replace(ALL, name="r:1")]),
       now_ms=st.sampled_from([0, 1000]))
def test_the_header_lines_made_with_a_message_are_what_the_spool_makes_of_its_headers(
        host, service, site_name, nagios_name, vo, route, now_ms):
    """build_message makes the spool's header lines itself (spool.headers_text's text, without
    its look at every name and value); names with a colon, a backslash, a line break or text
    that is not ASCII, in the result or the site, leave them to the spool."""
    try:
        one = result(host=host, service=service)
    except ValueError:          # not a name Nagios can have
        return
    site = dataclasses.replace(SETTINGS.site, name=site_name, nagios_name=nagios_name, vo=vo)
    message = routing.build_message(route, site, one, now_ms)
    made = spool.headers_text(message.headers)
    plain = all(value.isascii() and not re.search(r"[\\\n\r\u2028]", value)
                for value in (host, service or "", site_name, nagios_name, vo))
    if plain and ":" not in host + (service or ""):
        assert message.header_lines == made
    else:
        assert message.header_lines in (None, made)
    assert spool.encode(message)[2] == made


def test_a_signed_message_leaves_its_header_lines_to_the_spool():
    class Signer:
        def sign(self, headers, body):
            return {"signature": "c2ln"}
    signing = dataclasses.replace(ALL, sign=True)
    message = routing.build_message(signing, SETTINGS.site, result(), 0, Signer())
    assert message.headers["signature"] == "c2ln" and message.header_lines is None
    assert routing.build_message(signing, SETTINGS.site, result()).header_lines is not None
