"""End-to-end signatures with the real programs: a site bridge signs, a central bridge requires a
valid signature from an allowed DN; a tampered copy of a signed message is refused."""
import base64
import time

import pytest

from msg_nagios_bridge.cores.nagios import result_line
from msg_nagios_bridge.model import CheckResult
from tests.sandbox.bridge import inbound_config
from tests.sandbox.nagios import host, passive_service
from tests.sandbox.pki import Authority
from tests.sandbox.stomp_probe import publish

pytestmark = pytest.mark.integration

TOPIC = "/topic/grid.probe.metricOutput.EGEE.site.SITE_A"
DN = "CN=nagios.site-a.org,O=msg-nagios-bridge tests"


def test_signed_results_pass_and_tampered_ones_are_refused(tmp_path, activemq, nagios_factory,
                                                           stomp_probe_factory, bridge_factory):
    authority = Authority(tmp_path / "pki")
    cert, key = authority.issue("site-a", "nagios.site-a.org", client=True)
    nagios = nagios_factory(hosts=[host("ce01.site-a.org")],
                            services=[passive_service("ce01.site-a.org", f"svc{i}") for i in range(3)])
    rules = f"[{{senders: ['{DN}'], hosts: ['*.site-a.org'], services: ['*'], exact_senders: true}}]"
    central = bridge_factory([activemq.stomp_port], name="central", ocsp=False, inbound=inbound_config(
        nagios, TOPIC, rules=rules, durable_name="central") +
        f"  signatures: {{required: true, ca_file: {authority.cert_file}}}\n")
    central.start()
    spy = stomp_probe_factory(activemq, TOPIC)
    site = bridge_factory([activemq.stomp_port], name="site", site="SITE.A", ocsp=False, perfdata=True,
                          destination=TOPIC)
    site.config_path.write_text(site.config_path.read_text().replace(
        'host_checks: true}', 'host_checks: true, sign: true}') + f"signing: {{cert_file: {cert}, key_file: {key}}}\n")
    # A topic keeps nothing for a durable subscription that does not exist yet.
    assert central.wait_state("subscriber", "subscribed").startswith("subscribed"), central.log_text()[-2000:]
    site.start()
    results = [CheckResult(host="ce01.site-a.org", service=f"svc{i}", state=i, output=f"signed {i}",
                           timestamp=int(time.time()) - 5) for i in range(3)]
    (site.workdir / "service-perfdata").write_text("".join(result_line.format_line(r) + "\n" for r in results))
    for result in results:
        assert nagios.wait_for(lambda s, r=result: (s.get((r.host, r.service)) or {}).get("plugin_output") ==
                               r.output or None, timeout=30), central.log_text()[-3000:]
    [original] = [m for m in spy.wait_for_count(3, timeout=10) if m.headers["metric"] == "svc0"]
    assert original.headers["signature"] and original.headers["signer"]
    # A copy of a genuine signed message, its state changed on the way (and a new result_id, or it
    # would simply be dropped as a duplicate): the signature no longer matches.
    # Scheme 2; the stream and its number signed too (the spool signs once it has numbered).
    assert original.headers["signed-headers"] == "result_id,role,site,nagios_host,route,route_seq"
    headers = {k: v for k, v in original.headers.items()
               if k in ("signature", "signer", "signed-headers", "nagios_host", "role", "site", "route",
                        "route_seq")}
    publish(activemq.stomp_address, TOPIC, original.body.replace("metricStatus: OK", "metricStatus: CRITICAL"),
            headers={**headers, "result_id": "f" * 32})
    # The genuine message renumbered on the way (a broker hiding what it dropped, or a replay
    # moving the stream's highest number): refused, and the stream's numbers do not move.
    epoch = original.headers["route_seq"].split(":")[0]
    publish(activemq.stomp_address, TOPIC, original.body,
            headers={**headers, "result_id": original.headers["result_id"], "route_seq": f"{epoch}:{2**63 - 1}"})
    # The same body, unsigned.
    publish(activemq.stomp_address, TOPIC, original.body, headers={"nagios_host": "x", "result_id": "y"})
    # Signed by a "certificate" of the trusted CA with an unknown algorithm: refused, and the
    # subscriber goes on (it used to stop on it, again after every restart).
    publish(activemq.stomp_address, TOPIC, original.body,
            headers={"result_id": "z", "signature": headers["signature"], "signed-headers": "result_id",
                     "signer": base64.b64encode(authority.unknown_algorithm_certificate()).decode()})
    late = CheckResult(host="ce01.site-a.org", service="svc0", state=1, output="after the odd certificate",
                       timestamp=int(time.time()))
    with open(site.workdir / "service-perfdata", "a") as perfdata:
        perfdata.write(result_line.format_line(late) + "\n")
    assert nagios.wait_for(lambda s: (s.get((late.host, late.service)) or {}).get("plugin_output") ==
                           late.output or None, timeout=30), central.log_text()[-3000:]
    assert central.wait_counter("refused", 4, timeout=20) == 4
    # status.json is rewritten every few seconds: Nagios may show the late result before it counts it.
    assert central.wait_counter("injected", 4, timeout=20) == 4
    status = central.status()
    counters = status["counters"]
    assert (counters["refused.bad-signature"], counters["refused.untrusted-signer"],
            counters["refused.unsigned"]) == (2, 1, 1), counters
    [stream] = status["sequences"]["streams"]
    assert (stream["highest"], stream["missing"], stream["received"]) == (4, 0, 4), status["sequences"]
    assert status["sequences"]["counters"]["untrusted"] == 4


def test_a_refused_forgery_does_not_shadow_the_genuine_result(activemq, nagios_factory, bridge_factory):
    """A forged message carrying the result_id of a result still to come is refused, and the
    genuine one with that id still lands (refusals are not remembered as seen)."""
    from msg_nagios_bridge.formats import wlcg
    nagios = nagios_factory(hosts=[host("ce01.site-a.org")], services=[passive_service("ce01.site-a.org", "svc")])
    rules = "[{senders: ['site-a'], hosts: ['*.site-a.org'], services: ['*']}]"
    central = bridge_factory([activemq.stomp_port], ocsp=False, inbound=inbound_config(nagios, "/queue/in", rules=rules))
    central.start()
    genuine = CheckResult(host="ce01.site-a.org", service="svc", state=1, output="genuine",
                          timestamp=int(time.time()) - 5)
    fields = {"siteName": "A", "gatheredAt": "a", "role": "site"}
    publish(activemq.stomp_address, "/queue/in", wlcg.encode(genuine, fields),
            headers={"nagios_host": "mallory", "result_id": genuine.identity()})
    assert central.wait_counter("refused", 1) == 1
    publish(activemq.stomp_address, "/queue/in", wlcg.encode(genuine, fields),
            headers={"nagios_host": "site-a", "result_id": genuine.identity()})
    assert nagios.wait_for(lambda s: (s.get(("ce01.site-a.org", "svc")) or {}).get("plugin_output") == "genuine"
                           or None, timeout=20), central.log_text()[-2000:]


def test_another_allowed_sender_cannot_pre_empt_a_result_by_its_id(activemq, nagios_factory, bridge_factory):
    """Regression (review): the memory of injected results was keyed by result_id alone, so a
    sender the policy accepts (for its own hosts) could send another site's next result_id
    first and make the genuine result look like a duplicate."""
    from msg_nagios_bridge.formats import wlcg
    nagios = nagios_factory(hosts=[host("ce01.site-a.org"), host("ce01.site-b.org")],
                            services=[passive_service("ce01.site-a.org", "svc"),
                                      passive_service("ce01.site-b.org", "svc")])
    rules = ("[{senders: ['site-a'], hosts: ['*.site-a.org'], services: ['*']},"
             " {senders: ['site-b'], hosts: ['*.site-b.org'], services: ['*']}]")
    central = bridge_factory([activemq.stomp_port], ocsp=False, inbound=inbound_config(nagios, "/queue/in", rules=rules))
    central.start()
    fields = {"siteName": "X", "gatheredAt": "x", "role": "site"}
    genuine = CheckResult(host="ce01.site-a.org", service="svc", state=2, output="genuine",
                          timestamp=int(time.time()) - 5)
    own = CheckResult(host="ce01.site-b.org", service="svc", state=0, output="site b's own",
                      timestamp=int(time.time()) - 5)
    publish(activemq.stomp_address, "/queue/in", wlcg.encode(own, fields),
            headers={"nagios_host": "site-b", "result_id": genuine.identity()})
    assert nagios.wait_for(lambda s: (s.get(("ce01.site-b.org", "svc")) or {}).get("plugin_output") == own.output
                           or None, timeout=20), central.log_text()[-2000:]
    publish(activemq.stomp_address, "/queue/in", wlcg.encode(genuine, fields),
            headers={"nagios_host": "site-a", "result_id": genuine.identity()})
    assert nagios.wait_for(lambda s: (s.get(("ce01.site-a.org", "svc")) or {}).get("plugin_output") == "genuine"
                           or None, timeout=20), central.log_text()[-2000:]


def test_grid_trust_in_the_daemon_namespaces_crls_and_a_crl_update(tmp_path, activemq, nagios_factory,
                                                                  bridge_factory):
    """A central bridge trusting a grid CA directory of two CAs: a second CA issuing a DN in the
    first one's namespace, and a revoked signer, are refused although the policy allows their
    DNs; a CRL that fetch-crl replaces takes effect without a restart."""
    from cryptography.hazmat.primitives import serialization
    from msg_nagios_bridge import config
    from msg_nagios_bridge.outbound import routing
    from msg_nagios_bridge.trust.signing import Signer
    from tests.sandbox.pki import GridAuthority, GridCADirectory

    ca1, ca2 = GridAuthority("/C=XX/O=CA1/CN=CA1"), GridAuthority("/C=YY/O=CA2/CN=CA2")
    grid = GridCADirectory(tmp_path / "certificates")
    grid.add(ca1)
    grid.add(ca2)
    grid.write_namespaces(ca1, 'TO Issuer SELF PERMIT Subject "/C=XX/O=Site1/*"\n')
    grid.write_signing_policy(ca2, f"access_id_CA X509 '{ca2.dn}'\npos_rights globus CA:sign\n"
                                   f"cond_subjects globus '\"/C=YY/O=CA2/*\"'\n")

    def signer(authority, dn):
        cert, key = authority.issue(dn)
        name = f"{authority.hash}-{dn.rsplit('=', 1)[1]}"
        (tmp_path / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (tmp_path / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return cert, Signer(str(tmp_path / f"{name}.pem"), str(tmp_path / f"{name}.key"))

    good_cert, good = signer(ca1, "/C=XX/O=Site1/CN=nagios.site1.org")
    _, outside = signer(ca2, "/C=XX/O=Site1/CN=nagios.site1.org")      # CA2 may not issue Site1 DNs
    stolen_cert, stolen = signer(ca1, "/C=XX/O=Site1/CN=stolen.site1.org")
    grid.write_crl(ca1, ca1.crl(revoked=[stolen_cert]))
    grid.write_crl(ca2, ca2.crl())

    nagios = nagios_factory(hosts=[host("ce01.site1.org")],
                            services=[passive_service("ce01.site1.org", f"svc{i}") for i in range(4)])
    rules = ("[{senders: ['CN=nagios.site1.org,O=Site1,C=XX', 'CN=stolen.site1.org,O=Site1,C=XX'], "
             "hosts: ['*.site1.org'], services: ['*'], exact_senders: true}]")
    central = bridge_factory([activemq.stomp_port], ocsp=False, inbound=inbound_config(nagios, "/queue/in", rules=rules)
                             + f"  signatures: {{required: true, ca_dir: {grid.path}, reload_interval: 1}}\n")
    central.start()
    route = config.Route(name="r", destination="/queue/in", sign=True)
    site = config.Site(name="SITE1", role="site", nagios_name="nagios.site1.org")

    def send(signing, service, output):
        result = CheckResult(host="ce01.site1.org", service=service, state=1, output=output,
                             timestamp=int(time.time()) - 5)
        message = routing.build_message(route, site, result, signer=signing)
        publish(activemq.stomp_address, "/queue/in", message.body, headers=dict(message.headers))

    send(good, "svc0", "signed by CA1")
    assert nagios.wait_for(lambda s: (s.get(("ce01.site1.org", "svc0")) or {}).get("plugin_output") ==
                           "signed by CA1" or None, timeout=30), central.log_text()[-3000:]
    send(outside, "svc1", "signed by CA2 for a Site1 DN")
    assert central.wait_counter("refused", 1, timeout=20) == 1
    assert ("ca-namespace: CA '/C=YY/O=CA2/CN=CA2' may not issue '/C=XX/O=Site1/CN=nagios.site1.org' "
            f"(signing_policy of {ca2.hash})") in central.log_text()
    send(stolen, "svc2", "signed with a revoked certificate")
    assert central.wait_counter("refused", 2, timeout=20) == 2
    # fetch-crl replaces CA1's CRL, now revoking the good signer too.
    grid.write_crl(ca1, ca1.crl(revoked=[stolen_cert, good_cert]))
    time.sleep(3.5)         # loaded once unchanged for 2 s (gridtrust.SETTLE_SECONDS), looked at every 1 s
    send(good, "svc3", "signed by a certificate revoked since")
    assert central.wait_counter("refused", 3, timeout=20) == 3
    assert central.wait_counter("injected", 1, timeout=20) == 1
    counters = central.status()["counters"]
    assert counters["refused.untrusted-signer"] == 3, counters
    assert f"reloaded the CAs from {grid.path}" in central.log_text()
    assert (nagios.status().get(("ce01.site1.org", "svc3")) or {}).get("plugin_output") != \
        "signed by a certificate revoked since"
