"""Authenticated senders, with the real programs: publishers log in to ActiveMQ with their client
certificates, the broker stamps each message with the certificate's DN (JMSXUserID), and the
central bridge's policy maps DNs to the hosts they may report. What ActiveMQ 5.17 does here is
described (as measured) in docs/inbound.md, "Authenticated senders"."""
import contextlib
import os
import sqlite3
import time

import pytest
import stomp
from stomp.exception import ConnectFailedException

from msg_nagios_bridge.formats import wlcg
from msg_nagios_bridge.model import CheckResult
from msg_nagios_bridge.spool import headers_dict
from tests.sandbox.bridge import inbound_config
from tests.sandbox.nagios import host, passive_service
from tests.sandbox.pki import Authority, ssl_broker_xml
from tests.sandbox.ports import free_port
from tests.sandbox.procfs import busiest_thread, thread_cpu
from tests.sandbox.stomp_probe import Receipts

pytestmark = pytest.mark.integration

QUEUE = "/queue/grid.probe.metricOutput.EGEE.site"
SERVICE = "org.sam.CE-JobSubmit"
ADMIN = ("admin", "admin-pw")          # password accounts, on the plain STOMP connector
MONITOR = ("monitor", "monitor-pw")

# jaasDualAuthenticationPlugin: SSL connections log in by certificate (dns.properties: user=DN),
# the others by user name and password (users.properties).
LOGIN_CONFIG = """activemq-passwords {
    org.apache.activemq.jaas.PropertiesLoginModule required
        org.apache.activemq.jaas.properties.user="users.properties"
        org.apache.activemq.jaas.properties.group="groups.properties";
};
activemq-certificates {
    org.apache.activemq.jaas.TextFileCertificateLoginModule required
        org.apache.activemq.jaas.textfiledn.user="dns.properties"
        org.apache.activemq.jaas.textfiledn.group="dn-groups.properties";
};
"""
PLUGINS = ('<plugins><jaasDualAuthenticationPlugin configuration="activemq-passwords" '
           'sslConfiguration="activemq-certificates"/></plugins>\n')


def java_dn(common_name):
    """A test certificate's subject as ActiveMQ writes it (Java's getSubjectDN().getName()):
    in RFC 2253 order, ", " between the parts."""
    return f"CN={common_name}, O=msg-nagios-bridge tests"


SITE_A, SITE_B, CENTRAL = "nagios.site-a.org", "nagios.site-b.org", "central-bridge.example.org"
RULES = (f"[{{senders: ['{java_dn(SITE_A)}'], hosts: ['*.site-a.org'], services: ['*'], exact_senders: true}}, "
         f"{{senders: ['{java_dn(SITE_B)}'], hosts: ['*.site-b.org'], services: ['*'], exact_senders: true}}]")


def _refusal(error):
    """The broker's reason in an ERROR frame (a stomp_probe.Message)."""
    return error.headers.get("message", "") or str(error.body)


def publish(address, result, label, cert=None, ca_file=None, login=None, headers=None, timeout=10.0):
    """Send ``result`` (WLCG) to QUEUE over TLS when ``ca_file`` is given (with the client
    certificate ``cert`` = (cert_file, key_file), if any), wait for the receipt.
    Returns None when the broker took it, else the broker's refusal."""
    conn = stomp.Connection12([address], reconnect_attempts_max=1, timeout=timeout)
    if ca_file:
        conn.set_ssl(for_hosts=[address], cert_file=str(cert[0]) if cert else None,
                     key_file=str(cert[1]) if cert else None, ca_certs=str(ca_file))
    replies = Receipts()
    conn.set_listener("replies", replies)
    try:
        conn.connect(*(login or (None, None)), wait=True)
    except ConnectFailedException:
        # stomp.py wakes connect() on an ERROR frame before it hands the frame to the listeners:
        # wait a moment for the refusal's text (failed once in a fresh-clone run: 'CONNECT failed').
        error = replies.wait_error(5.0)
        # stomp.py keeps its reader thread after a refused CONNECT, and over TLS that thread spun
        # on the closed socket for the rest of the session: two of them used 641 and 643 CPU
        # seconds in the first 22 minutes of a CI run, a core between them (py-spy:
        # BaseTransport.__io_loop in SSLSocket.read and select).
        conn.transport.disconnect_socket()
        return _refusal(error) if error else "CONNECT failed"
    try:
        receipt = f"pub-{label}"
        conn.send(QUEUE, wlcg.encode(result, {"siteName": "X", "gatheredAt": "site-nagios", "role": "site"}),
                  headers={"persistent": "true", "result_id": result.identity(), "label": label,
                           **(headers or {}), "receipt": receipt})
        with contextlib.suppress(RuntimeError, TimeoutError):    # an ERROR frame, or no reply
            replies.wait(receipt, timeout)
        if receipt in replies.receipts:
            return None
        return _refusal(replies.errors[-1]) if replies.errors else "no receipt"
    finally:
        conn.disconnect()


def result(host_name, output):
    return CheckResult(host=host_name, service=SERVICE, state=2, output=output, timestamp=int(time.time()) - 10)


def dead_letters(bridge):
    """{label header: (JMSXUserID header, reason)} of the messages the bridge refused."""
    with sqlite3.connect(f"file:{bridge.workdir / 'spool' / 'inbound.sqlite'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT headers, reason FROM dead_letters").fetchall()
    return {headers.get("label"): (headers.get("JMSXUserID"), reason)
            for headers, reason in ((headers_dict(h), r) for h, r in rows)}


@pytest.fixture(scope="module", autouse=True)
def no_thread_left_spinning():
    """After this module's refused CONNECTs over TLS, no thread of the test process keeps
    using CPU: stomp.py's reader of a refused connection spun on its closed socket for the
    rest of the session (about half a core each) until publish() closed it."""
    yield
    time.sleep(1.0)         # the last connection's threads wind down
    before = thread_cpu(os.getpid())
    time.sleep(2.0)
    used, name = busiest_thread(before, thread_cpu(os.getpid()), 2.0)
    assert used < 25, f"thread {name!r} of the test process used {used:.0f}% of a core after the tests"


def test_the_broker_stamped_certificate_dn_decides_what_a_site_may_report(tmp_path, activemq_factory,
                                                                          nagios_factory, bridge_factory):
    authority = Authority(tmp_path / "pki")
    authority.issue("broker", "broker.example.org", hosts=("127.0.0.1",))
    keystore = authority.keystore("broker")
    site_a = authority.issue("site-a", SITE_A, client=True)
    site_b = authority.issue("site-b", SITE_B, client=True)
    central = authority.issue("central", CENTRAL, client=True)
    stranger = authority.issue("stranger", "stranger.example.org", client=True)   # same CA, not admitted
    port = free_port()
    ssl_context, connector = ssl_broker_xml(keystore, authority.truststore(), port, want_client_auth=True)
    broker = activemq_factory(
        "identities", extra_xml=ssl_context + PLUGINS, extra_connectors=connector, login=ADMIN,
        broker_attributes='populateJMSXUserID="true"',
        conf_files={"login.config": LOGIN_CONFIG,
                    "users.properties": f"{ADMIN[0]}={ADMIN[1]}\n{MONITOR[0]}={MONITOR[1]}\n",
                    "groups.properties": "admins=admin\n",
                    "dns.properties": f"site-a={java_dn(SITE_A)}\nsite-b={java_dn(SITE_B)}\n"
                                      f"central={java_dn(CENTRAL)}\n",
                    "dn-groups.properties": "sites=site-a,site-b\nconsumers=central\n"})
    nagios = nagios_factory(hosts=[host("ce01.site-a.org"), host("ce01.site-b.org")],
                            services=[passive_service("ce01.site-a.org", SERVICE),
                                      passive_service("ce01.site-b.org", SERVICE)])
    tls = (f"{{enabled: true, ca_file: {authority.cert_file}, cert_file: {central[0]}, "
           f"key_file: {central[1]}}}")
    bridge = bridge_factory([port], name="central", ocsp=False, tls=tls,
                            inbound=inbound_config(nagios, QUEUE, rules=RULES, sender_header="JMSXUserID"))
    bridge.start()
    address, ca = ("127.0.0.1", port), authority.cert_file

    # Who may connect at all: only certificates listed in dns.properties, and password accounts.
    assert "without SSL certificate" in publish(address, result("ce01.site-a.org", "no cert"), "no-cert",
                                                ca_file=ca)
    assert f"No user for client certificate: {java_dn('stranger.example.org')}" in publish(
        address, result("ce01.site-a.org", "stranger"), "stranger", cert=stranger, ca_file=ca)
    assert "is invalid" in publish(broker.stomp_address, result("ce01.site-a.org", "anonymous"), "anonymous")

    # Site A, as itself, about a host of site B; then with JMSXUserID (and the STOMP login) set to B's DN.
    assert publish(address, result("ce01.site-b.org", "A posing as B"), "a-for-b", cert=site_a, ca_file=ca) is None
    assert publish(address, result("ce01.site-b.org", "A with a forged JMSXUserID"), "a-forged", cert=site_a,
                   ca_file=ca, login=(java_dn(SITE_B), "x"), headers={"JMSXUserID": java_dn(SITE_B)}) is None
    # A password account (no certificate identity) naming site A's DN itself.
    assert publish(broker.stomp_address, result("ce01.site-a.org", "password user posing as A"), "monitor",
                   login=MONITOR, headers={"JMSXUserID": java_dn(SITE_A)}) is None
    assert bridge.wait_counter("refused", 3, timeout=20) == 3, bridge.log_text()[-3000:]
    counters = bridge.status()["counters"]
    assert counters["refused.host-not-allowed"] == 2 and counters["refused.sender-not-allowed"] == 1, counters
    assert counters.get("injected", 0) == 0, counters
    refused = dead_letters(bridge)
    assert refused["a-for-b"][0] == java_dn(SITE_A)
    assert refused["a-forged"][0] == java_dn(SITE_A)      # the broker's stamp, not the publisher's header
    assert refused["monitor"][0] == "monitor"              # a password login is stamped with the user name
    assert "may not send results for host 'ce01.site-b.org'" in refused["a-forged"][1]

    # Each site, as itself, about its own host: lands.
    own_a, own_b = result("ce01.site-a.org", "site A reports its CE"), result("ce01.site-b.org", "site B reports")
    assert publish(address, own_a, "a-own", cert=site_a, ca_file=ca) is None
    assert publish(address, own_b, "b-own", cert=site_b, ca_file=ca) is None

    def shown(status):
        outputs = [(status.get((r.host, SERVICE)) or {}).get("plugin_output") for r in (own_a, own_b)]
        return outputs if outputs == [own_a.output, own_b.output] else None
    assert nagios.wait_for(shown, timeout=20), (nagios.status(), bridge.log_text()[-3000:])
    assert bridge.wait_counter("injected", 2) == 2
    for refused_output in ("A posing as B", "forged", "posing as A", "no cert", "stranger", "anonymous"):
        assert refused_output not in nagios.log_text()


AUTHORIZATION = """<authorizationPlugin><map><authorizationMap><authorizationEntries>
  <authorizationEntry queue="site.SITE_A" read="admins" write="site-a-group" admin="admins,sites"/>
  <authorizationEntry queue="site.SITE_B" read="admins" write="site-b-group" admin="admins,sites"/>
  <authorizationEntry topic="ActiveMQ.Advisory.>" read="admins,sites" write="admins,sites" admin="admins,sites"/>
</authorizationEntries></authorizationMap></map></authorizationPlugin>"""


def test_a_site_bridge_logged_in_by_certificate_may_write_only_its_own_destination(
        tmp_path, activemq_factory, stomp_probe_factory, bridge_factory):
    from tests.integration.test_outbound import (dead_letter_as_results_keep_coming, expected_ids, result_lines,
                                                 wait_for_ids)
    authority = Authority(tmp_path / "pki")
    authority.issue("broker", "broker.example.org", hosts=("127.0.0.1",))
    keystore = authority.keystore("broker")
    site_a = authority.issue("site-a", SITE_A, client=True)
    port = free_port()
    ssl_context, connector = ssl_broker_xml(keystore, authority.truststore(), port, want_client_auth=True)
    plugins = PLUGINS.replace("</plugins>", AUTHORIZATION + "</plugins>")
    broker = activemq_factory(
        "authorization", extra_xml=ssl_context + plugins, extra_connectors=connector, login=ADMIN,
        conf_files={"login.config": LOGIN_CONFIG, "users.properties": f"{ADMIN[0]}={ADMIN[1]}\n",
                    "groups.properties": "admins=admin\n", "dns.properties": f"site-a={java_dn(SITE_A)}\n",
                    "dn-groups.properties": "sites=site-a\nsite-a-group=site-a\n"})
    own = stomp_probe_factory(broker, "/queue/site.SITE_A", login=ADMIN)
    tls = f"{{enabled: true, ca_file: {authority.cert_file}, cert_file: {site_a[0]}, key_file: {site_a[1]}}}"
    foreign = '  - {name: foreign, destination: "/queue/site.SITE_B", hard_only: false}\n'
    bridge = bridge_factory([port], name="site-a", ocsp=False, perfdata=True, destination="/queue/site.SITE_A",
                            extra_routes=foreign, tls=tls, max_refusals=3)
    bridge.start()
    lines = result_lines(50)
    (bridge.workdir / "service-perfdata").write_text("".join(lines))
    assert set(wait_for_ids(own, expected_ids(lines), 30)) == expected_ids(lines), bridge.log_text()[-3000:]
    dead, added = dead_letter_as_results_keep_coming(bridge, len(lines))
    assert dead >= len(lines), bridge.log_text()[-3000:]
    assert bridge.counter("broker_errors") <= 3 * (len(lines) + added) + 30, "a retry storm"
    log = bridge.log_text()
    assert "moved to dead letters" in log and "is not authorized to write to: queue://site.SITE_B" in log
