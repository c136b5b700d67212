"""End-to-end signatures: sign, verify, and every way a signature must fail."""
import base64
import dataclasses
import datetime

import pytest

from msg_nagios_bridge import config, routing
from msg_nagios_bridge.formats.inbound import Refused
from msg_nagios_bridge.model import CheckResult
from msg_nagios_bridge.signing import Signer, Verifier
from tests.sandbox.pki import Authority

RESULT = CheckResult(host="ce01.site-a.org", service="org.sam.CE-JobSubmit", state=2, output="bad",
                     timestamp=1700000000)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    authority = Authority(directory)
    good = authority.issue("site-a", "nagios.site-a.org", client=True, key_password="pw")
    expired = authority.issue("old", "old.site-a.org", client=True, expired=True)
    stranger = Authority(directory / "other", name="Other CA")
    foreign = stranger.issue("foreign", "nagios.site-a.org", client=True)
    return authority, good, expired, foreign


def signed(cert_key, password=""):
    signer = Signer(str(cert_key[0]), str(cert_key[1]), password)
    body = b"metricName: x\nEOT\n"
    headers = {"result_id": "abc", **signer.headers("abc", body)}
    return headers, body


def test_a_signed_message_verifies_and_names_its_signer(pki):
    authority, good, _, _ = pki
    headers, body = signed(good, "pw")
    assert Verifier(str(authority.cert_file)).verify(headers, body) == "CN=nagios.site-a.org,O=msg-nagios-bridge tests"


@pytest.mark.parametrize("change", ["body", "result_id", "signature"])
def test_tampering_is_refused(pki, change):
    authority, good, _, _ = pki
    headers, body = signed(good, "pw")
    if change == "body":
        body = body.replace(b"x", b"y")
    elif change == "result_id":
        headers["result_id"] = "another"
    else:
        headers["signature"] = headers["signature"][:-8] + "AAAAAAA="
    with pytest.raises(Refused, match="bad-signature"):
        Verifier(str(authority.cert_file)).verify(headers, body)


def test_unsigned_expired_and_untrusted_signers_are_refused(pki):
    authority, _, expired, foreign = pki
    verifier = Verifier(str(authority.cert_file))
    with pytest.raises(Refused, match="unsigned"):
        verifier.verify({"result_id": "abc"}, b"x")
    with pytest.raises(Refused, match="not valid now"):
        verifier.verify(*signed(expired))
    with pytest.raises(Refused, match="not issued by a trusted CA"):
        verifier.verify(*signed(foreign))       # same subject name, another CA
    with pytest.raises(Refused, match="unreadable"):
        verifier.verify({"signature": "!!", "signer": "??", "result_id": "abc"}, b"x")
    future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=400)
    with pytest.raises(Refused, match="not valid now"):
        verifier.verify(*signed(pki[1], "pw"), now=future)


def test_a_signing_route_adds_the_headers(pki, tmp_path):
    _, good, _, _ = pki
    password = tmp_path / "pw"
    password.write_text("pw")
    settings = config.parse(f"""
site: {{name: S}}
brokers: {{hosts: ["127.0.0.1:1"]}}
spool: {{directory: /tmp/x}}
signing: {{cert_file: {good[0]}, key_file: {good[1]}, key_password_file: {password}}}
routes: [{{name: signed, destination: /queue/a, sign: true}}, {{name: plain, destination: /queue/b}}]
""", "s.yaml")
    signed_message, plain = routing.Router(settings).messages(RESULT)
    assert "signature" in signed_message.headers and "signer" in signed_message.headers
    assert "signature" not in plain.headers
    with pytest.raises(config.ConfigError, match="signing.cert_file"):
        config.parse(f"""
site: {{name: S}}
brokers: {{hosts: ["127.0.0.1:1"]}}
routes: [{{name: signed, destination: /queue/a, sign: true}}]
""", "s.yaml")
    assert dataclasses.replace(settings.routes[0]).sign



def test_a_certificate_with_an_unknown_signature_algorithm_is_refused_not_a_crash(pki):
    """Regression (review): a signer certificate naming the trusted CA as issuer but with an
    unknown signature OID made cryptography raise UnsupportedAlgorithm, which escaped verify()
    and stopped the subscriber; the broker redelivered the message and it stopped again."""
    authority = pki[0]
    headers = {"result_id": "abc", "signature": "AAAA",
               "signer": base64.b64encode(authority.unknown_algorithm_certificate()).decode()}
    with pytest.raises(Refused, match="bad-signature: the signer certificate cannot be checked"):
        Verifier(str(authority.cert_file)).verify(headers, b"x")
