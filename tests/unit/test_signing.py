"""End-to-end signatures: sign, verify, and every way a signature must fail."""
import base64
import dataclasses
import datetime

import pytest
from hypothesis import given, strategies as st

from msg_nagios_bridge import config
from msg_nagios_bridge.outbound import routing
from msg_nagios_bridge.model import Refused
from msg_nagios_bridge.model import CheckResult
from msg_nagios_bridge.spool import Spool
from msg_nagios_bridge.trust.signing import SIGNED_HEADERS, STREAM_HEADERS, Signed, Signer, Verifier, signed_bytes_2
from tests.sandbox.pki import Authority, GridAuthority, GridCADirectory, sign_scheme_1

RESULT = CheckResult(host="ce01.site-a.org", service="org.sam.CE-JobSubmit", state=2, output="bad",
                     timestamp=1700000000)
DN = "CN=nagios.site-a.org,O=msg-nagios-bridge tests"
HEADERS = {"result_id": "abc", "role": "site", "site": "SITE_A", "vo": "ops", "nagios_host": "nagios.site-a.org",
           "route": "central", "route_seq": "e1:7", "host": "ce01.site-a.org"}
BODY = b"serviceURI: ce01.site-a.org\nmetricName: x\nmetricStatus: CRITICAL\nEOT\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    authority = Authority(directory)
    good = authority.issue("site-a", "nagios.site-a.org", client=True, key_password="pw")
    expired = authority.issue("old", "old.site-a.org", client=True, expired=True)
    stranger = Authority(directory / "other", name="Other CA")
    foreign = stranger.issue("foreign", "nagios.site-a.org", client=True)
    return authority, good, expired, foreign


def signed(cert_key, password="", headers=None, body=BODY):
    signer = Signer(str(cert_key[0]), str(cert_key[1]), password)
    headers = dict(HEADERS if headers is None else headers)
    headers.update(signer.sign(headers, body))
    return headers, body


def verifier(pki, **kwargs):
    return Verifier(str(pki[0].cert_file), **kwargs)


def test_a_signed_message_verifies_and_names_its_signer(pki):
    headers, body = signed(pki[1], "pw")
    # What the bridge reads, and what the loss accounting reads (the stream and the number);
    # not the headers only for consumers' selectors (host).
    assert headers["signed-headers"] == "result_id,role,site,vo,nagios_host,route,route_seq"
    verdict = verifier(pki).verify(headers, body)
    assert isinstance(verdict, Signed)
    assert verdict.dn == DN
    assert verdict.signed_headers == frozenset(SIGNED_HEADERS + STREAM_HEADERS)
    assert len(verdict.identity) == 64 and int(verdict.identity, 16) >= 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.dn = "CN=mallory"


def test_only_the_headers_a_message_has_are_signed(pki):
    headers, body = signed(pki[1], "pw", headers={"result_id": "abc", "role": "site"})
    assert headers["signed-headers"] == "result_id,role"
    assert verifier(pki).verify(headers, body).signed_headers == {"result_id", "role"}


@pytest.mark.parametrize("change", ["body", "result_id", "role", "site", "vo", "signature",
                                    "drop vo from signed-headers", "add a header to signed-headers"])
def test_tampering_is_refused(pki, change):
    headers, body = signed(pki[1], "pw")
    if change == "body":
        body = body.replace(b"CRITICAL", b"OK")
    elif change == "signature":
        headers["signature"] = headers["signature"][:-8] + "AAAAAAA="
    elif change == "drop vo from signed-headers":
        headers["signed-headers"] = "result_id,role,site"
    elif change == "add a header to signed-headers":
        headers["signed-headers"] += ",nagios_host"
    else:
        headers[change] = "another"
    with pytest.raises(Refused, match="bad-signature"):
        verifier(pki).verify(headers, body)


def test_scheme_2_framing_cannot_be_shifted(pki):
    """Regression (issue 12): scheme 1 signed result_id + "\\n" + body unframed, so a line could
    move from the body into result_id (changing which field the decoder reads first) and the
    signature still held. Scheme 2 frames every part with its length."""
    body = b"serviceURI: ce01.site-a.org\nmetricName: x\nEOT\n"
    shifted_id, shifted_body = "abc\nserviceURI: ce01.site-a.org", b"metricName: x\nEOT\n"
    old = sign_scheme_1(pki[1][0], pki[1][1], "pw", "abc", body)
    assert verifier(pki, accept_scheme_1=True).verify({**old, "result_id": shifted_id}, shifted_body)  # the old hole
    headers, body = signed(pki[1], "pw", body=body)
    with pytest.raises(Refused, match="bad-signature"):
        verifier(pki).verify({**headers, "result_id": shifted_id}, shifted_body)
    # The same holds between two headers: a value's tail cannot become the next one's head.
    assert (signed_bytes_2([("role", "site"), ("site", "A")], b"") !=
            signed_bytes_2([("role", "sites"), ("site", "")], b""))


@given(st.lists(st.tuples(st.text(max_size=4), st.text(max_size=4)), max_size=3), st.binary(max_size=6),
       st.lists(st.tuples(st.text(max_size=4), st.text(max_size=4)), max_size=3), st.binary(max_size=6))
def test_signed_bytes_2_differ_when_what_is_signed_differs(pairs, body, other_pairs, other_body):
    if sorted(pairs) != sorted(other_pairs) or body != other_body:
        assert signed_bytes_2(pairs, body) != signed_bytes_2(other_pairs, other_body)


def test_scheme_1_is_refused_unless_accepted(pki):
    old = sign_scheme_1(pki[1][0], pki[1][1], "pw", "abc", BODY)
    headers = {**HEADERS, **old}
    with pytest.raises(Refused, match="signature-scheme: signed with the old scheme 1") as info:
        verifier(pki).verify(headers, BODY)
    assert info.value.reason == "signature-scheme"
    verdict = verifier(pki, accept_scheme_1=True).verify(headers, BODY)
    assert verdict.dn == DN and verdict.signed_headers == {"result_id"}    # role, site, vo count as unsigned
    # Stripping signed-headers from a scheme 2 message does not make it a valid scheme 1 one.
    headers, body = signed(pki[1], "pw")
    del headers["signed-headers"]
    with pytest.raises(Refused, match="bad-signature"):
        verifier(pki, accept_scheme_1=True).verify(headers, body)


def test_a_re_encoded_signer_header_keeps_the_identity(pki):
    """Regression (issue 12): the duplicate memory was keyed by the raw signer header, and
    base64 with other padding bits is another text for the same certificate."""
    for attempt in range(50):          # a certificate whose DER length leaves unused bits in base64
        cert_key = pki[0].issue(f"padded{attempt}", "nagios.site-a.org", client=True)
        headers, body = signed(cert_key)
        text = headers["signer"]
        if text.endswith("="):
            break
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    stripped = text.rstrip("=")
    flipped = alphabet[alphabet.index(stripped[-1]) ^ 1]     # the lowest bit is never data here
    re_encoded = stripped[:-1] + flipped + text[len(stripped):]
    assert re_encoded != text and base64.b64decode(re_encoded) == base64.b64decode(text)
    first = verifier(pki).verify(headers, body)
    again = verifier(pki).verify({**headers, "signer": re_encoded}, body)
    assert again.identity == first.identity and again.dn == first.dn
    # A renewed certificate (same CA, same subject) is the same identity; another subject is not.
    renewed = pki[0].issue("site-a-renewed", "nagios.site-a.org", client=True)
    other = pki[0].issue("site-b", "nagios.site-b.org", client=True)
    assert verifier(pki).verify(*signed(renewed)).identity == first.identity
    assert verifier(pki).verify(*signed(other)).identity != first.identity


def test_unsigned_expired_and_untrusted_signers_are_refused(pki):
    authority, _, expired, foreign = pki
    check = verifier(pki)
    with pytest.raises(Refused, match="unsigned"):
        check.verify({"result_id": "abc"}, b"x")
    with pytest.raises(Refused, match="untrusted-signer: .* cert-validity: .* is not valid now"):
        check.verify(*signed(expired))
    with pytest.raises(Refused, match="untrusted-signer: .* ca-unknown: .*which is not a trusted CA"):
        check.verify(*signed(foreign))       # same subject name, another CA
    with pytest.raises(Refused, match="unreadable"):
        check.verify({"signature": "!!", "signer": "??", "result_id": "abc", "signed-headers": "result_id"}, b"x")
    with pytest.raises(Refused, match="bad-signature: signed header 'vo' is missing"):
        headers, body = signed(pki[1], "pw")
        del headers["vo"]
        check.verify(headers, body)
    with pytest.raises(Refused, match="bad-signature: signed-headers must name result_id"):
        check.verify({**signed(pki[1], "pw")[0], "signed-headers": "role,site"}, BODY)
    future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=400)
    with pytest.raises(Refused, match="not valid now"):
        check.verify(*signed(pki[1], "pw"), now=future)


def test_the_grid_rules_refuse_a_signer_naming_ca_dn_and_rule(tmp_path):
    """A signer from a CA of the grid directory, outside that CA's namespace: untrusted-signer,
    with the rule; one without digitalSignature: the same, with its rule."""
    ca1, ca2 = GridAuthority("/C=XX/O=CA1"), GridAuthority("/C=YY/O=CA2")
    grid = GridCADirectory(tmp_path / "certificates")
    for authority in (ca1, ca2):
        grid.add(authority)
        grid.write_crl(authority, authority.crl())
        grid.write_namespaces(authority, f'TO Issuer SELF PERMIT Subject "{authority.dn}/*"\n')

    def files(authority, dn, **kwargs):
        from cryptography.hazmat.primitives import serialization
        cert, key = authority.issue(dn, **kwargs)
        name = dn.rsplit("=", 1)[1]
        (tmp_path / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (tmp_path / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                                 serialization.PrivateFormat.PKCS8,
                                                                 serialization.NoEncryption()))
        return tmp_path / f"{name}.pem", tmp_path / f"{name}.key"

    check = Verifier(ca_dir=str(grid.path))
    assert check.verify(*signed(files(ca1, "/C=XX/O=CA1/CN=good"))).dn == "CN=good,O=CA1,C=XX"
    with pytest.raises(Refused) as info:
        check.verify(*signed(files(ca2, "/C=XX/O=CA1/CN=intruder")))
    assert info.value.reason == "untrusted-signer"
    assert (f"ca-namespace: CA '/C=YY/O=CA2' may not issue '/C=XX/O=CA1/CN=intruder' (namespaces of {ca2.hash})"
            in info.value.message)
    with pytest.raises(Refused, match="untrusted-signer: .*key-usage: .* may not sign"):
        check.verify(*signed(files(ca1, "/C=XX/O=CA1/CN=encrypter", usage=("key_encipherment",))))


def test_a_signing_route_adds_the_headers_and_they_verify(pki, tmp_path):
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
    # The site has no vo; no route_seq either (given by the spool: next test).
    assert signed_message.headers["signed-headers"] == "result_id,role,site,nagios_host,route"
    verdict = verifier(pki).verify(signed_message.headers, signed_message.body)
    assert verdict.dn == DN and verdict.signed_headers == {"result_id", "role", "site", "nagios_host", "route"}
    assert "signature" not in plain.headers and "signed-headers" not in plain.headers
    with pytest.raises(config.ConfigError, match="signing.cert_file"):
        config.parse(f"""
site: {{name: S}}
brokers: {{hosts: ["127.0.0.1:1"]}}
routes: [{{name: signed, destination: /queue/a, sign: true}}]
""", "s.yaml")
    assert dataclasses.replace(settings.routes[0]).sign


def test_the_outbound_spool_signs_a_message_once_numbered_so_its_number_is_signed(pki, tmp_path):
    """route_seq is given in the spool's transaction: a signature made before it would leave
    the number free to change on the way (renumbered, a stream's losses hide)."""
    _, good, _, _ = pki
    password = tmp_path / "pw"
    password.write_text("pw")
    password.chmod(0o600)
    settings = config.parse(f"""
site: {{name: S, vo: ops}}
brokers: {{hosts: ["127.0.0.1:1"]}}
spool: {{directory: /tmp/x}}
signing: {{cert_file: {good[0]}, key_file: {good[1]}, key_password_file: {password}}}
routes: [{{name: signed, destination: /queue/a, sign: true}}, {{name: plain, destination: /queue/b}}]
""", "s.yaml")
    router = routing.Router(settings)
    unsigned = router.messages(RESULT, sign=False)
    assert not any("signature" in message.headers for message in unsigned)
    with Spool(str(tmp_path / "spool.sqlite")) as spool:
        spool.put(unsigned, numbered=True, sign=router.signature)
        spool.put(unsigned, numbered=True, sign=router.signature)        # duplicates: no number, no signature
        entries = {entry.message.headers["route"]: entry.message for entry in spool.take(10)}
    assert len(entries) == 2
    signed_message, plain = entries["signed"], entries["plain"]
    assert signed_message.headers["route_seq"].endswith(":1") and plain.headers["route_seq"].endswith(":1")
    assert signed_message.headers["signed-headers"] == "result_id,role,site,vo,nagios_host,route,route_seq"
    assert "signature" not in plain.headers
    check = verifier(pki)
    assert check.verify(signed_message.headers, signed_message.body).signed_headers >= set(STREAM_HEADERS)
    epoch = signed_message.headers["route_seq"].split(":")[0]
    for name, forged in (("route_seq", f"{epoch}:2"), ("route", "plain"), ("nagios_host", "elsewhere")):
        with pytest.raises(Refused, match="does not match"):
            check.verify(dict(signed_message.headers, **{name: forged}), signed_message.body)


def test_a_key_that_cannot_sign_for_the_certificate_is_a_configuration_error(pki, tmp_path):
    """Found when the bridge starts (the spool signs inside its transaction, where a failure
    would hold the sources), naming the key: not the certificate's key, a wrong password."""
    _, good, _, foreign = pki
    password = tmp_path / "pw"
    password.write_text("pw")
    password.chmod(0o600)

    def router(cert, key, password_line=""):
        return routing.Router(config.parse(f"""
site: {{name: S}}
brokers: {{hosts: ["127.0.0.1:1"]}}
signing: {{cert_file: {cert}, key_file: {key}{password_line}}}
routes: [{{name: signed, destination: /queue/a, sign: true}}]
""", "s.yaml"))
    assert router(good[0], good[1], f", key_password_file: {password}").signer is not None
    with pytest.raises(config.ConfigError, match=r"s.yaml: signing.key_file = .*foreign.key.*is not the key of"):
        router(good[0], foreign[1])
    with pytest.raises(config.ConfigError, match=r"signing.key_file = .*cannot sign with it"):
        router(good[0], good[1])                        # its password missing


def test_a_signature_that_fails_in_the_spool_stores_nothing_and_is_an_unavailable_spool(tmp_path):
    """Never stored unsigned: the batch is not written, and the intake waits and retries as
    for any spool failure (its state names the reason)."""
    from msg_nagios_bridge.spool import SpoolUnavailable
    from msg_nagios_bridge.model import Message

    def failing(headers, body):
        raise RuntimeError("the key went away")
    message = Message("m1", "/queue/a", {"route": "signed", "result_id": "r1"}, b"body")
    with Spool(str(tmp_path / "spool.sqlite")) as spool:
        with pytest.raises(SpoolUnavailable, match="cannot sign message m1: RuntimeError: the key went away"):
            spool.put([message], cursor=("source", "7"), numbered=True, sign=failing)
        assert spool.stats().depth == 0 and spool.cursor("source") is None
        assert spool.put([message], numbered=True, sign=lambda headers, body: None) == 1
        [entry] = spool.take(1)
        assert entry.message.headers["route_seq"].endswith(":1"), "the failed put gave no number away"


def test_the_verifier_from_settings(pki, tmp_path):
    settings = config.parse(f"""
site: {{name: S}}
brokers: {{hosts: ["127.0.0.1:1"]}}
spool: {{directory: /tmp/x}}
inbound:
  enabled: true
  subscriptions: [{{destination: /queue/in}}]
  policy: {{rules: [{{senders: ['*']}}]}}
  signatures: {{required: true, ca_file: {pki[0].cert_file}, accept_scheme_1: true, crl: if-present,
               reload_interval: 5}}
""", "s.yaml")
    check = settings.inbound.signatures
    assert (check.accept_scheme_1, check.rules.crl, check.rules.namespaces, check.rules.reload_interval) == (
        True, "if-present", "require", 5.0)
    made = Verifier.from_settings(check)
    assert made.accept_scheme_1 and made.store.crl_mode == "if-present" and made.store.reload_interval == 5.0
    old = sign_scheme_1(pki[1][0], pki[1][1], "pw", "abc", BODY)
    assert made.verify({**HEADERS, **old}, BODY).dn == DN


def test_a_certificate_with_an_unknown_signature_algorithm_is_refused_not_a_crash(pki):
    """Regression (review): a signer certificate naming the trusted CA as issuer but with an
    unknown signature OID made cryptography raise UnsupportedAlgorithm, which escaped verify()
    and stopped the subscriber; the broker redelivered the message and it stopped again."""
    authority = pki[0]
    headers = {"result_id": "abc", "signature": "AAAA", "signed-headers": "result_id",
               "signer": base64.b64encode(authority.unknown_algorithm_certificate()).decode()}
    with pytest.raises(Refused, match="untrusted-signer: .*bad-certificate: the certificate cannot be checked"):
        verifier(pki).verify(headers, b"x")


@pytest.mark.parametrize("keys, key, reason", [
    ("crl: maybe", "inbound.signatures.crl", "must be one of require, if-present"),
    ("namespaces: never", "inbound.signatures.namespaces", "must be one of require, if-present"),
    ("reload_interval: 0", "inbound.signatures.reload_interval", "at least 1 second"),
    ("accept_scheme_1: 'yes'", "inbound.signatures.accept_scheme_1", "true or false"),
    ("ca_dir: {tmp}, crl_file: {pem}", "inbound.signatures.crl_file", "goes with ca_file"),
    # No CRL to check: "require" was accepted and checked nothing (review 2026-12-05).
    ("ca_file: {pem}, crl: require", "inbound.signatures.crl", "needs the CAs' CRLs"),
])
def test_signature_settings_errors_name_the_key(pki, tmp_path, keys, key, reason):
    (tmp_path / "ca.0").write_bytes(pki[0].cert_file.read_bytes())
    keys = keys.format(tmp=tmp_path, pem=pki[0].cert_file)
    with pytest.raises(config.ConfigError, match=reason) as info:
        config.parse(f"""
site: {{name: S}}
brokers: {{hosts: ["127.0.0.1:1"]}}
spool: {{directory: /tmp/x}}
sources: {{ocsp_pipe: {{enabled: true}}}}
inbound: {{signatures: {{{keys}}}}}
""", "s.yaml")
    assert info.value.key == key


@pytest.mark.parametrize("keys, crl", [
    ("ca_file: {pem}", "if-present"), ("ca_file: {pem}, crl_file: {pem}", "require"),
    ("ca_dir: {tmp}", "require"), ("ca_file: {pem}, crl: if-present", "if-present")])
def test_crl_defaults_to_require_only_where_there_are_crls(pki, tmp_path, keys, crl):
    (tmp_path / "ca.0").write_bytes(pki[0].cert_file.read_bytes())
    keys = keys.format(tmp=tmp_path, pem=pki[0].cert_file)
    settings = config.parse(f"""
site: {{name: S}}
brokers: {{hosts: ["127.0.0.1:1"], tls: {{enabled: true, {keys}}}}}
spool: {{directory: /tmp/x}}
sources: {{ocsp_pipe: {{enabled: true}}}}
inbound: {{signatures: {{{keys}}}}}
""", "s.yaml")
    assert settings.inbound.signatures.rules.crl == crl and settings.brokers.tls.rules.crl == crl
