"""The ActiveMQ message group a site bridge sets (route option message_group, docs/scaling.md)."""
import dataclasses

import pytest

from msg_nagios_bridge import config
from msg_nagios_bridge.model import CheckResult
from msg_nagios_bridge.outbound import routing

CONFIG = """
site: {{name: SITE.A, role: site, nagios_name: nagios.site-a.org}}
brokers: {{hosts: ["127.0.0.1:61613"]}}
spool: {{directory: /tmp/spool}}
routes:
  - {{name: r, destination: "/topic/VirtualTopic.results"{extra}}}
"""


def route(extra=""):
    return config.parse(CONFIG.format(extra=extra), "g.yaml").routes[0]


SITE = config.parse(CONFIG.format(extra=""), "g.yaml").site
RESULT = CheckResult(host="ce01.site-a.org", service="org.sam.CE-JobSubmit", state=0, output="OK",
                     timestamp=1700000000)


def test_on_by_default_keyed_by_host_and_service():
    headers = routing.build_message(route(), SITE, RESULT).headers
    assert headers["JMSXGroupID"] == "ce01.site-a.org!org.sam.CE-JobSubmit"
    host_check = routing.build_message(route(), SITE, dataclasses.replace(RESULT, service=None)).headers
    assert host_check["JMSXGroupID"] == "ce01.site-a.org!HOST"


def test_every_result_of_one_object_has_one_group_and_objects_differ():
    newer = dataclasses.replace(RESULT, state=2, output="CRITICAL", timestamp=1700000300)
    other = dataclasses.replace(RESULT, service="org.sam.CE-Other")
    groups = [routing.build_message(route(), SITE, r).headers["JMSXGroupID"] for r in (RESULT, newer, other)]
    assert groups[0] == groups[1] != groups[2]


def test_no_site_in_the_group_two_sites_share_an_object():
    other_site = dataclasses.replace(SITE, name="SITE.B", nagios_name="nagios.site-b.org")
    assert routing.build_message(route(), SITE, RESULT).headers["JMSXGroupID"] == \
        routing.build_message(route(), other_site, RESULT).headers["JMSXGroupID"]


def test_off_when_the_route_says_so():
    assert route().message_group is True
    assert "JMSXGroupID" not in routing.build_message(route(", message_group: false"), SITE, RESULT).headers


def test_a_bad_value_is_refused_with_its_key():
    with pytest.raises(config.ConfigError, match="message_group"):
        route(", message_group: sometimes")
