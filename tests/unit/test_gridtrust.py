"""Grid trust as IGTF defines it: a test PKI of two CAs (and a few more for the edge cases) in a
grid-style CA directory, and every rule refused with the CA, the DN and the rule named."""
import datetime
import os
import subprocess
import time

import pytest
from cryptography.hazmat.primitives import serialization

from msg_nagios_bridge.trust import gridtrust
from msg_nagios_bridge.trust.gridtrust import (TrustStore, Untrusted, openssl_dn, parse_namespaces, parse_signing_policy)
from tests.sandbox.pki import GridAuthority, GridCADirectory

CA1, CA2 = "/C=XX/O=CA1/CN=CA1 Root", "/C=YY/O=CA2/CN=CA2"
SITE1_HOST = "/C=XX/O=Site1/CN=host.site1.org"


@pytest.fixture(scope="module")
def cas():
    """CA1 (namespaces), CA2 (signing_policy only), CA1's subordinate CA, a CA without any
    policy file or CRL, and certificates they issued."""
    ca1, ca2 = GridAuthority(CA1), GridAuthority(CA2)
    sub = GridAuthority("/C=XX/O=CA1/CN=CA1 Sub", parent=ca1)
    bare = GridAuthority("/C=ZZ/O=Bare CA")
    certs = {
        "good": ca1.issue(SITE1_HOST)[0],
        "revoked": ca1.issue("/C=XX/O=Site1/CN=stolen.site1.org")[0],
        "denied": ca1.issue("/C=XX/O=Site1/CN=banned.site1.org")[0],
        "outside": ca2.issue(SITE1_HOST)[0],              # CA2 issuing a DN in CA1's namespace
        "ca2-own": ca2.issue("/C=YY/O=CA2/CN=host.ca2.org")[0],
        "expired": ca1.issue("/C=XX/O=Site1/CN=old.site1.org", expired=True)[0],
        "no-digital-signature": ca1.issue("/C=XX/O=Site1/CN=enc.site1.org", usage=("key_encipherment",))[0],
        "client-only": ca1.issue("/C=XX/O=Site1/CN=client.site1.org", eku=("client",))[0],
        "no-extensions": ca1.issue("/C=XX/O=Site1/CN=plain.site1.org", usage=None, eku=None)[0],
        "a-ca": ca1.issue("/C=XX/O=Site1/CN=rogue CA", ca=True)[0],
        "via-sub": sub.issue("/C=XX/O=Site2/CN=host.site2.org")[0],
        "bare-host": bare.issue("/C=ZZ/O=Bare/CN=host")[0],
    }
    return {"ca1": ca1, "ca2": ca2, "sub": sub, "bare": bare, **certs}


def build(directory, cas, ca2_crl_expired=True):
    ca1, ca2, sub, bare = cas["ca1"], cas["ca2"], cas["sub"], cas["bare"]
    grid = GridCADirectory(directory)
    for authority in (ca1, ca2, sub, bare):
        grid.add(authority)
    grid.write_crl(ca1, ca1.crl(revoked=[cas["revoked"]]))
    grid.write_crl(ca2, ca2.crl(expired=ca2_crl_expired))
    grid.write_crl(sub, sub.crl())
    grid.write_namespaces(ca1, f"""##############################
#NAMESPACES-VERSION: 1.0
# CA alias: CA1 Root (a comment "with quotes")
TO Issuer "{CA1}" \\
  PERMIT Subject "/C=XX/O=Site1/*"
TO Issuer SELF PERMIT Subject "/C=XX/O=CA1/CN=CA1 Sub"
to issuer "{CA1}" deny subject "/C=XX/O=Site1/CN=banned*"
""")
    grid.write_namespaces(sub, 'TO Issuer "/C=XX/O=CA1/CN=CA1 Sub" PERMIT Subject "/C=XX/O=Site2/*"\n')
    grid.write_signing_policy(ca2, f"""# EACL - CA2
 access_id_CA      X509         '{CA2}'
 pos_rights        globus        CA:sign
 cond_subjects     globus       '"/C=YY/O=CA2/*" "/C=YY/O=Other/*"'
""")
    return grid


@pytest.fixture
def grid(tmp_path, cas):
    return build(tmp_path / "certificates", cas)


@pytest.fixture
def store(grid):
    return TrustStore(ca_dir=str(grid.path))


def refused(store, cert, purpose="signer", **kwargs):
    with pytest.raises(Untrusted) as info:
        store.check(cert, purpose, **kwargs)
    return info.value


def test_accepted_certificates_name_subject_and_issuer(store, cas):
    assert store.check(cas["good"], "signer") == gridtrust.Checked(SITE1_HOST, CA1)
    assert store.check(cas["good"], "server").subject == SITE1_HOST
    assert store.check(cas["no-extensions"], "signer").issuer == CA1     # no keyUsage: nothing to refuse
    # Through a subordinate CA of the directory up to its root, each link with its own rules.
    assert store.check(cas["via-sub"], "signer") == gridtrust.Checked("/C=XX/O=Site2/CN=host.site2.org",
                                                                     "/C=XX/O=CA1/CN=CA1 Sub")


def test_a_second_ca_issuing_outside_its_namespace_is_refused(store, cas, grid):
    error = refused(store, cas["outside"])
    assert error.reason == "ca-namespace"
    assert str(error) == (f"ca-namespace: CA '{CA2}' may not issue '{SITE1_HOST}' "
                          f"(signing_policy of {cas['ca2'].hash})")


def test_namespaces_deny_wins_and_subordinates_are_confined(store, cas):
    error = refused(store, cas["denied"])
    assert error.reason == "ca-namespace"
    assert f"CA '{CA1}' may not issue '/C=XX/O=Site1/CN=banned.site1.org' (DENY Subject" in str(error)
    assert f"namespaces of {cas['ca1'].hash}" in str(error)
    rogue = cas["sub"].issue(SITE1_HOST)[0]           # the sub CA may issue Site2 only
    assert "CA '/C=XX/O=CA1/CN=CA1 Sub' may not issue '/C=XX/O=Site1/CN=host.site1.org'" in str(refused(store, rogue))


def test_a_revoked_certificate_is_refused(store, cas):
    error = refused(store, cas["revoked"])
    assert error.reason == "crl-revoked"
    assert (f"CA '{CA1}' revoked '/C=XX/O=Site1/CN=stolen.site1.org' (serial {cas['revoked'].serial_number:X}, "
            f"{cas['ca1'].hash}.r0)") in str(error)


def test_an_expired_crl_refuses_by_default_and_if_present_accepts(grid, cas):
    error = refused(TrustStore(ca_dir=str(grid.path)), cas["ca2-own"])
    assert error.reason == "crl-expired"
    assert f"the CRL of CA '{CA2}' ({cas['ca2'].hash}.r0) expired" in str(error)
    assert "'/C=YY/O=CA2/CN=host.ca2.org'" in str(error) and "crl: require" in str(error)
    assert TrustStore(ca_dir=str(grid.path), crl="if-present").check(cas["ca2-own"], "signer").issuer == CA2


def test_a_revoked_certificate_stays_refused_when_its_crl_has_expired(tmp_path, cas):
    grid = build(tmp_path, cas)
    grid.write_crl(cas["ca1"], cas["ca1"].crl(revoked=[cas["revoked"]], expired=True))
    assert refused(TrustStore(ca_dir=str(grid.path), crl="if-present"), cas["revoked"]).reason == "crl-revoked"


def test_a_missing_crl_and_a_ca_without_namespaces(store, grid, cas):
    error = refused(store, cas["bare-host"])
    assert error.reason == "ca-namespace"
    assert "CA '/C=ZZ/O=Bare CA' may not issue '/C=ZZ/O=Bare/CN=host': no .namespaces or .signing_policy" in str(error)
    error = refused(TrustStore(ca_dir=str(grid.path), namespaces="if-present"), cas["bare-host"])
    assert error.reason == "crl-missing"
    assert f"CA '/C=ZZ/O=Bare CA' has no CRL here ({cas['bare'].hash})" in str(error)
    assert "'/C=ZZ/O=Bare/CN=host'" in str(error)
    lenient = TrustStore(ca_dir=str(grid.path), crl="if-present", namespaces="if-present")
    assert lenient.check(cas["bare-host"], "signer").issuer == "/C=ZZ/O=Bare CA"


def test_a_crl_not_signed_by_its_ca_does_not_count(tmp_path, cas):
    grid = build(tmp_path, cas)
    grid.write_crl(cas["ca1"], cas["ca1"].crl(signed_by=cas["ca2"].key))   # names CA1, signed by CA2
    error = refused(TrustStore(ca_dir=str(grid.path)), cas["good"])
    assert error.reason == "crl-missing" and f"CA '{CA1}' has no CRL" in str(error)


def test_key_usage_per_purpose(store, cas):
    error = refused(store, cas["no-digital-signature"], "signer")
    assert (error.reason, error.message) == (
        "key-usage", f"'/C=XX/O=Site1/CN=enc.site1.org' (CA '{CA1}') may not sign: its keyUsage lacks digitalSignature")
    assert store.check(cas["no-digital-signature"], "server")        # keyEncipherment is a TLS server usage
    error = refused(store, cas["client-only"], "server")
    assert error.reason == "key-usage" and "extendedKeyUsage lacks serverAuth" in str(error)
    assert f"'/C=XX/O=Site1/CN=client.site1.org' (CA '{CA1}')" in str(error)
    assert store.check(cas["client-only"], "signer")
    assert "is a CA certificate" in str(refused(store, cas["a-ca"]))


def test_validity_unknown_ca_and_a_forged_issuer(store, cas):
    error = refused(store, cas["expired"])
    assert error.reason == "cert-validity" and f"'/C=XX/O=Site1/CN=old.site1.org' (CA '{CA1}') is not valid now" in str(error)
    future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=400)
    assert refused(store, cas["good"], now=future).reason == "cert-validity"
    stranger = GridAuthority("/C=QQ/O=Stranger")
    error = refused(store, stranger.issue(SITE1_HOST)[0])
    assert (error.reason, error.message) == (
        "ca-unknown", f"'{SITE1_HOST}' is issued by '/C=QQ/O=Stranger', which is not a trusted CA")
    impostor = GridAuthority(CA1)          # the same name as CA1, another key
    error = refused(store, impostor.issue(SITE1_HOST)[0])
    assert error.reason == "ca-signature" and f"names CA '{CA1}' as its issuer, but that CA's key did not" in str(error)


def test_a_new_crl_takes_effect_without_a_restart(tmp_path, cas):
    grid = build(tmp_path, cas)
    now = [0.0]
    store = TrustStore(ca_dir=str(grid.path), reload_interval=300, clock=lambda: now[0])
    assert store.check(cas["good"], "signer")
    grid.write_crl(cas["ca1"], cas["ca1"].crl(revoked=[cas["revoked"], cas["good"]]))   # as fetch-crl does
    settled(grid)
    now[0] = 299.0
    assert store.check(cas["good"], "signer")              # not looked at yet
    now[0] = 300.0
    assert refused(store, cas["good"]).reason == "crl-revoked"
    assert not store.refresh(force=True)                   # nothing changed since


def settled(grid, age=10.0):
    """The directory's files last changed ``age`` seconds ago (a reload takes only settled files)."""
    when = time.time() - age
    for path in grid.path.iterdir():
        os.utime(path, (when, when))


def test_a_file_is_loaded_once_it_stopped_changing_and_not_while_it_changes(tmp_path, cas, monkeypatch):
    """A CRL or namespaces file written in place was read half written: a revoked certificate
    passed under crl: if-present, a DENY line went missing until the next look (the review's
    race: checks of a revoked certificate accepted during the writes)."""
    grid = build(tmp_path, cas)
    settled(grid)
    store = TrustStore(ca_dir=str(grid.path), reload_interval=300)
    assert store.check(cas["good"], "signer")
    grid.write_crl(cas["ca1"], cas["ca1"].crl(revoked=[cas["revoked"], cas["good"]]))
    assert not store.refresh(force=True)                   # just written: not yet
    assert store.check(cas["good"], "signer")
    settled(grid)
    real_load = store._load

    def load_while_written():
        snapshot = real_load()
        grid.write_crl(cas["ca1"], cas["ca1"].crl(revoked=[cas["revoked"]]))     # changed meanwhile
        return snapshot
    monkeypatch.setattr(store, "_load", load_while_written)
    assert not store.refresh(force=True)                   # read while it changed: not taken
    assert store.check(cas["good"], "signer")
    monkeypatch.setattr(store, "_load", real_load)
    settled(grid)
    assert store.refresh(force=True)
    assert store.check(cas["good"], "signer")              # the last CRL, whole: good is not on it
    assert refused(store, cas["revoked"]).reason == "crl-revoked"


def test_a_policy_file_naming_no_rule_for_its_own_ca_refuses_it(tmp_path, cas):
    """Spelled otherwise than the bridge spells the CA (an attribute name OpenSSL prints and
    the bridge does not), the CA had no rules: under namespaces: if-present it could issue any DN."""
    grid = build(tmp_path, cas)
    grid.write_namespaces(cas["ca1"], 'TO Issuer "/C=XX/O=CA1/2.5.4.97=VATXX-1/CN=CA1 Root" '
                                      'PERMIT Subject "/C=XX/O=Site1/*"\n')
    store = TrustStore(ca_dir=str(grid.path), namespaces="if-present")
    error = refused(store, cas["good"])
    assert error.reason == "ca-namespace" and "names no rule for its CA" in str(error)


def test_a_reload_that_fails_keeps_the_previous_state(tmp_path, cas):
    grid = build(tmp_path, cas)
    store = TrustStore(ca_dir=str(grid.path), reload_interval=1)
    for name in list(grid.path.iterdir()):
        name.unlink()
    assert not store.refresh(force=True)
    assert store.check(cas["good"], "signer").issuer == CA1
    grid.path.rmdir()
    assert not store.refresh(force=True)
    assert store.check(cas["good"], "signer").issuer == CA1


def test_an_unreadable_policy_file_refuses_its_ca(tmp_path, cas):
    grid = build(tmp_path, cas)
    grid.write_namespaces(cas["ca1"], 'TO Issuer SELF PERMIT "/C=XX/*"\n')
    error = refused(TrustStore(ca_dir=str(grid.path)), cas["good"])
    assert error.reason == "ca-namespace"
    assert f"{cas['ca1'].hash}.namespaces cannot be read: line 1" in str(error)


def test_a_plain_ca_file_has_no_namespaces_and_crls_only_when_given(tmp_path, cas):
    pem = b"".join(cas[name].cert.public_bytes(serialization.Encoding.PEM) for name in ("ca1", "ca2"))
    (tmp_path / "cas.pem").write_bytes(pem)
    store = TrustStore(ca_file=str(tmp_path / "cas.pem"))
    assert store.check(cas["outside"], "signer").issuer == CA2        # no namespaces in a plain file
    assert store.check(cas["revoked"], "signer")                       # and no CRLs unless given
    (tmp_path / "crls.pem").write_bytes(cas["ca1"].crl(revoked=[cas["revoked"]]).public_bytes(serialization.Encoding.PEM))
    with_crls = TrustStore(ca_file=str(tmp_path / "cas.pem"), crl_file=str(tmp_path / "crls.pem"))
    assert refused(with_crls, cas["revoked"]).reason == "crl-revoked"
    assert refused(with_crls, cas["ca2-own"]).reason == "crl-missing"


def test_check_der_chain_for_a_tls_peer(store, cas):
    der = [cas["via-sub"].public_bytes(serialization.Encoding.DER)]
    assert store.check_der_chain(der, "server").subject == "/C=XX/O=Site2/CN=host.site2.org"
    client_only = [cas["client-only"].public_bytes(serialization.Encoding.DER)]
    with pytest.raises(Untrusted, match="key-usage"):
        store.check_der_chain(client_only)
    with pytest.raises(Untrusted, match="bad-certificate"):
        store.check_der_chain([b"\x30\x03junk"])


def test_an_intermediate_sent_by_the_peer_is_checked_like_every_link(tmp_path, cas):
    grid = build(tmp_path, cas)
    grid.remove(f"{cas['sub'].hash}.0")              # the sub CA is not in the directory
    store = TrustStore(ca_dir=str(grid.path))
    leaf = cas["via-sub"].public_bytes(serialization.Encoding.DER)
    sub = cas["sub"].cert.public_bytes(serialization.Encoding.DER)
    with pytest.raises(Untrusted, match="ca-unknown"):
        store.check_der_chain([leaf])
    # Sent by the peer it links the leaf to CA1; the sub CA's CRL and namespaces (still in the
    # directory under its hash) apply.
    assert store.check_der_chain([leaf, sub]).issuer == "/C=XX/O=CA1/CN=CA1 Sub"
    grid.write_crl(cas["ca1"], cas["ca1"].crl(revoked=[cas["sub"].cert]))
    settled(grid)
    store.refresh(force=True)
    error = pytest.raises(Untrusted, store.check_der_chain, [leaf, sub]).value
    assert error.reason == "crl-revoked" and f"CA '{CA1}' revoked '/C=XX/O=CA1/CN=CA1 Sub'" in str(error)


def test_the_one_line_dn_is_openssl_s(cas):
    shown = subprocess.run(["openssl", "x509", "-noout", "-subject", "-nameopt", "compat"],
                           input=cas["good"].public_bytes(serialization.Encoding.PEM), capture_output=True,
                           check=True).stdout.decode().strip()
    assert shown == f"subject={openssl_dn(cas['good'].subject)}"


def test_a_value_cannot_pose_as_more_attributes():
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "XX"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Site1/CN=host\\x"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "caf\u00e9")])
    assert openssl_dn(name) == "/C=XX/O=Site1\\/CN=host\\\\x/CN=caf\\xC3\\xA9"
    assert not gridtrust._Glob("/c=xx/o=site1/*").matches(openssl_dn(name).casefold())


@pytest.mark.parametrize("pattern, text, expected", [
    ("/c=xx/o=site1/*", "/c=xx/o=site1/cn=a", True),
    ("/c=xx/o=site1/*", "/c=xx/o=site10/cn=a", False),
    ("/c=xx/*/cn=h?st", "/c=xx/o=a/ou=b/cn=host", True),
    ("/c=xx/*/cn=h?st", "/c=xx/o=a/cn=hoost", False),
    ("*a*a*", "aa", True), ("*a*a*", "a", False), ("exact", "exact", True), ("exact", "exactly", False),
    ("a*b*c", "abc", True), ("a*b*c", "acb", False), ("*", "", True), ("a*", "", False),
])
def test_glob(pattern, text, expected):
    assert gridtrust._Glob(pattern).matches(text) is expected


def test_matching_a_hostile_dn_is_bounded():
    """A 16 KiB DN against patterns of many stars: no backtracking (well under a second)."""
    text = "/cn=" + "a" * 16000 + "b"
    glob = gridtrust._Glob("/cn=" + "*a" * 50 + "*c")
    started = time.perf_counter()
    assert not glob.matches(text)
    assert time.perf_counter() - started < 1.0


def test_policy_file_parsers():
    assert parse_namespaces('# c\nTO Issuer "/C=A/O=B" \\\n PERMIT Subject "/C=A/*"  # why\n'
                            'To Issuer SELF DENY Subject "/C=A/O=x\\"y"\n') == [
        ("/C=A/O=B", True, "/C=A/*"), (None, False, '/C=A/O=x\\"y')]
    with pytest.raises(ValueError, match="line 2"):
        parse_namespaces('\nTO Issuer "/C=A" ALLOW Subject "/C=A/*"\n')
    assert parse_signing_policy("access_id_CA X509 '/C=A/CN=CA'\npos_rights globus CA:sign\n"
                                "cond_subjects globus '\"/C=A/*\" \"/C=B/*\"'\n") == [
        ("/C=A/CN=CA", "/C=A/*"), ("/C=A/CN=CA", "/C=B/*")]
    assert parse_signing_policy("access_id_CA X509 '/C=A/CN=CA'\npos_rights globus CA:none\n"
                                "cond_subjects globus '\"/C=A/*\"'\n") == []
    with pytest.raises(ValueError):
        parse_signing_policy("access_id_CA X509\n")


def test_a_hostile_certificate_is_judged_in_bounded_time(store, cas):
    """A certificate as large as the signer header allows (16 KiB), with ~740 attributes in
    its subject, issued by a trusted CA (the worst case: every rule runs) and by nobody."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    attributes = [x509.NameAttribute(NameOID.COUNTRY_NAME, "XX"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Site1")]
    attributes += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "a/*?\\") for _ in range(740)]
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)

    def made(signing_key):
        return (x509.CertificateBuilder().subject_name(x509.Name(attributes)).issuer_name(cas["ca1"].cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
                .sign(signing_key, hashes.SHA256()))
    trusted, forged = made(cas["ca1"].key), made(key)
    assert len(trusted.public_bytes(serialization.Encoding.DER)) <= 16 * 1024 * 3 // 4
    for cert, reason in ((trusted, None), (forged, "ca-signature")):
        started = time.perf_counter()
        if reason is None:
            assert store.check(cert, "signer").issuer == CA1      # /C=XX/O=Site1/* permits it
        else:
            assert refused(store, cert).reason == reason
        assert time.perf_counter() - started < 1.0


def test_check_tls_peer_on_a_real_tls_connection(tmp_path, store, cas):
    """The broker side of a loopback TLS handshake presents a certificate of the grid CA
    directory; check_tls_peer judges it as a server (and one without serverAuth is refused)."""
    import socket
    import ssl
    import threading

    def serve(cert):
        cert_pem, key = tmp_path / "server.pem", tmp_path / "server.key"
        cert_pem.write_bytes(cert[0].public_bytes(serialization.Encoding.PEM))
        key.write_bytes(cert[1].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_pem, key)
        listener = socket.create_server(("127.0.0.1", 0))
        thread = threading.Thread(target=lambda: context.wrap_socket(listener.accept()[0], server_side=True).close(),
                                  daemon=True)
        thread.start()
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname, client.verify_mode = False, ssl.CERT_NONE     # only the trust store judges here
        with client.wrap_socket(socket.create_connection(listener.getsockname(), timeout=5)) as connection:
            try:
                return store.check_tls_peer(connection)
            finally:
                thread.join(5)
                listener.close()

    assert serve(cas["ca1"].issue("/C=XX/O=Site1/CN=broker.site1.org")).subject == "/C=XX/O=Site1/CN=broker.site1.org"
    with pytest.raises(Untrusted, match="key-usage: .*lacks serverAuth"):
        serve(cas["ca1"].issue("/C=XX/O=Site1/CN=client.site1.org", eku=("client",)))


def test_a_broken_signing_policy_does_not_matter_beside_a_namespaces_file(tmp_path, cas):
    grid = build(tmp_path, cas)
    grid.write_signing_policy(cas["ca1"], "access_id_CA X509\n")
    assert TrustStore(ca_dir=str(grid.path)).check(cas["good"], "signer").issuer == CA1
    grid.write_signing_policy(cas["ca2"], "access_id_CA X509\n")      # CA2 has only that one
    error = refused(TrustStore(ca_dir=str(grid.path), crl="if-present"), cas["ca2-own"])
    assert error.reason == "ca-namespace" and f"{cas['ca2'].hash}.signing_policy cannot be read" in str(error)


# -- RFC 5280's path and CRL rules (a review of the trust code, 2026-12-05) ------------------------

def pem_store(tmp_path, authorities, crls):
    """A TrustStore of a plain ca_file of ``authorities`` and a crl_file of ``crls``."""
    (tmp_path / "cas.pem").write_bytes(b"".join(a.cert.public_bytes(serialization.Encoding.PEM) for a in authorities))
    (tmp_path / "crls.pem").write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in crls))
    return TrustStore(ca_file=str(tmp_path / "cas.pem"), crl_file=str(tmp_path / "crls.pem"))


@pytest.mark.parametrize("path_length, accepted", [(0, False), (1, True), (None, True)])
def test_a_root_s_path_length_limits_the_cas_below_it(tmp_path, path_length, accepted):
    root = GridAuthority("/C=XX/O=Root/CN=Root", path_length=path_length)
    sub = GridAuthority("/C=XX/O=Root/CN=Sub CA", parent=root)
    leaf = sub.issue("/C=XX/O=Site1/CN=host1.site1.org")[0]
    store = pem_store(tmp_path, [root, sub], [root.crl(), sub.crl()])
    if accepted:
        assert store.check(leaf, "signer").issuer == "/C=XX/O=Root/CN=Sub CA"
    else:
        error = refused(store, leaf)
        assert error.reason == "ca-constraints" and "pathLenConstraint" in str(error)


def test_a_ca_s_name_constraints_confine_what_it_issues(tmp_path):
    from cryptography import x509
    from tests.sandbox.pki import grid_name
    root = GridAuthority("/C=XX/O=Root2/CN=Root2")
    confined = GridAuthority("/C=XX/O=Root2/CN=Site2 CA", parent=root, extensions=[(x509.NameConstraints(
        permitted_subtrees=[x509.DirectoryName(grid_name("/C=XX/O=Site2"))], excluded_subtrees=None), True)])
    store = pem_store(tmp_path, [root, confined], [root.crl(), confined.crl()])
    assert store.check(confined.issue("/C=XX/O=Site2/CN=host.site2.org")[0], "signer")
    error = refused(store, confined.issue("/C=XX/O=Site1/CN=host1.site1.org")[0])
    assert error.reason == "ca-constraints" and "nameConstraints" in str(error)
    by_dns = GridAuthority("/C=XX/O=Root2/CN=DNS CA", parent=root, extensions=[(x509.NameConstraints(
        permitted_subtrees=[x509.DNSName("site2.org")], excluded_subtrees=None), True)])
    store = pem_store(tmp_path, [root, by_dns], [root.crl(), by_dns.crl()])
    error = refused(store, by_dns.issue("/C=XX/O=Site2/CN=host.site2.org")[0])
    assert error.reason == "ca-constraints" and "does not evaluate" in str(error)


def test_an_unknown_critical_extension_and_a_sha1_signature_are_refused(tmp_path):
    from cryptography import x509
    root = GridAuthority("/C=XX/O=Root3/CN=Root3")
    store = pem_store(tmp_path, [root], [root.crl()])
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    error = refused(store, root.issue("/C=XX/O=Site1/CN=a.site1.org", extensions=[(unknown, True)])[0])
    assert error.reason == "bad-certificate" and "1.3.6.1.4.1.99999.1" in str(error)
    assert store.check(root.issue("/C=XX/O=Site1/CN=b.site1.org", extensions=[(unknown, False)])[0], "signer")
    # cryptography no longer signs with SHA-1: the openssl command does, with the root's key.
    (tmp_path / "root.key").write_bytes(root.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "root.pem").write_bytes(root.cert.public_bytes(serialization.Encoding.PEM))
    leaf_key = tmp_path / "leaf.key"
    leaf_key.write_bytes(root.issue("/C=XX/O=Site1/CN=unused")[1].private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    subprocess.run(["openssl", "req", "-new", "-key", str(leaf_key), "-subj", "/C=XX/O=Site1/CN=c.site1.org",
                    "-out", str(tmp_path / "leaf.csr")], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(tmp_path / "leaf.csr"), "-CA", str(tmp_path / "root.pem"),
                    "-CAkey", str(tmp_path / "root.key"), "-set_serial", "4660", "-days", "10", "-sha1",
                    "-out", str(tmp_path / "leaf.pem")], check=True, capture_output=True)
    error = refused(store, x509.load_pem_x509_certificate((tmp_path / "leaf.pem").read_bytes()))
    assert error.reason == "ca-signature" and "SHA1" in str(error)


def test_only_a_complete_current_crl_counts(tmp_path, caplog):
    """A newer empty delta CRL hid the full CRL's revocations; a CRL of a limited scope (only CA
    certificates) was taken as the CA's CRL; one issued in the future counted as current."""
    from cryptography import x509
    root = GridAuthority("/C=XX/O=Root4/CN=Root4")
    stolen = root.issue("/C=XX/O=Site1/CN=stolen.site1.org")[0]
    delta = root.crl(issued_in=datetime.timedelta(minutes=-1), extensions=[
        (x509.DeltaCRLIndicator(1), True), (x509.CRLNumber(2), False)])
    assert refused(pem_store(tmp_path, [root], [root.crl(revoked=[stolen]), delta]), stolen).reason == "crl-revoked"
    assert "a delta CRL: not used" in caplog.text
    scoped = root.crl(extensions=[(x509.IssuingDistributionPoint(
        full_name=None, relative_name=None, only_contains_user_certs=False, only_contains_ca_certs=True,
        only_some_reasons=None, indirect_crl=False, only_contains_attribute_certs=False), True)])
    assert refused(pem_store(tmp_path, [root], [scoped]), stolen).reason == "crl-missing"
    future = pem_store(tmp_path, [root], [root.crl(issued_in=datetime.timedelta(days=5))])
    error = refused(future, stolen)
    assert error.reason == "crl-expired" and "is not valid before" in str(error)
    skewed = pem_store(tmp_path, [root], [root.crl(issued_in=datetime.timedelta(minutes=2))])
    assert skewed.check(stolen, "signer")                   # within the clock skew allowed
