"""TLS to a real ActiveMQ (stomp+ssl) with a test CA made by the test: what connects, what is
refused and why, with the venv's stomp.py and, from the unpacked .deb, with Debian's python3 +
python3-stomp 8.0.0 + python3-openssl (issue 12: set_ssl there has no `verify`, and its expiry
probe connects without the client certificate).

One broker serves the module, with three stomp+ssl connectors (no client certificate asked;
client certificate required; required and TLS 1.2 only); only the expired certificate needs a
broker of its own."""
import datetime
import json
import os
import socket
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from tests.integration.test_package import DEBIAN_PYTHON, debian_env, deb, require_debian_python, root  # noqa: F401
from tests.sandbox.activemq import ActiveMQ
from tests.sandbox.pki import Authority, ssl_broker_xml
from tests.sandbox.ports import free_port, wait_until

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TLS_CLIENT = os.path.join(REPO, "tests", "sandbox", "tls_client.py")
KEY_PASSWORD = "s3cret"


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def tls_broker(activemq_factory, authority, name, hosts=("127.0.0.1",), expired=False):
    authority.issue(name, f"{name}.broker", hosts=hosts, expired=expired)
    port = free_port()
    extra_xml, connector = ssl_broker_xml(authority.keystore(name), authority.truststore(), port)
    broker = activemq_factory(name, extra_xml=extra_xml, extra_connectors=connector)
    assert wait_until(lambda: port_open(port), timeout=30), f"the stomp+ssl connector on {port} never opened"
    return broker, port


class Pki:
    """The test CA, a client certificate with a passphrase, a CA nobody trusts, and the
    broker's certificate (its serial is what the revocation test revokes)."""

    def __init__(self, directory):
        self.authority = Authority(directory / "pki")
        self.stranger = Authority(directory / "other-pki", name="Some Other CA")
        self.broker_cert, _ = self.authority.issue("broker", "broker.test", hosts=("127.0.0.1",))
        self.keystore = self.authority.keystore("broker")
        self.client_cert, self.client_key = self.authority.issue("site-bridge", "site-a.example.org", client=True,
                                                                 key_password=KEY_PASSWORD)
        self.password_file = directory / "key-password"
        self.password_file.write_text(KEY_PASSWORD + "\n")
        self.password_file.chmod(0o600)

    def crl_revoking_the_broker(self, path):
        """A CRL from the test CA that revokes the broker's certificate."""
        now = datetime.datetime.now(datetime.timezone.utc)
        serial = x509.load_pem_x509_certificate(self.broker_cert.read_bytes()).serial_number
        revoked = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        crl = (x509.CertificateRevocationListBuilder().issuer_name(self.authority.cert.subject)
               .last_update(now).next_update(now + datetime.timedelta(days=1)).add_revoked_certificate(revoked)
               .sign(self.authority.key, hashes.SHA256()))
        path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def broker(pki, tmp_path_factory):
    """One ActiveMQ with connectors: .ports["tls"] (no client certificate asked), ["mutual"]
    (needClientAuth) and ["mutual12"] (needClientAuth, TLS 1.2 only)."""
    ports = {"tls": free_port(), "mutual": free_port(), "mutual12": free_port()}
    extra_xml, _ = ssl_broker_xml(pki.keystore, pki.authority.truststore(), 0)
    connectors = (
        f'      <transportConnector name="tls" uri="stomp+ssl://127.0.0.1:{ports["tls"]}"/>\n'
        f'      <transportConnector name="mutual" uri="stomp+ssl://127.0.0.1:{ports["mutual"]}'
        f'?needClientAuth=true"/>\n'
        f'      <transportConnector name="mutual12" uri="stomp+ssl://127.0.0.1:{ports["mutual12"]}'
        f'?needClientAuth=true&amp;transport.enabledProtocols=TLSv1.2"/>\n')
    amq = ActiveMQ(tmp_path_factory.mktemp("activemq-tls"), name="tls", extra_xml=extra_xml,
                   extra_connectors=connectors)
    amq.start()
    try:
        for name, port in ports.items():
            assert wait_until(lambda: port_open(port), timeout=30), f"connector {name} on {port} never opened"
        amq.ports = ports
        yield amq
    finally:
        amq.stop()


def send(bridge_factory, port, tls_yaml, name):
    """`msg-nagios-bridge send` of one result, through the CLI and a config file."""
    bridge = bridge_factory([port], name=name, tls=tls_yaml, connect_timeout=10)   # a cold JVM's first handshakes
    result = subprocess.run([sys.executable, "-m", "msg_nagios_bridge", "send", "--host", "h1", "--service", "tls",
                             "--state", "0", "-c", str(bridge.config_path)], capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout + result.stderr


# -- through the CLI, with the venv's stomp.py -----------------------------------------------------

def test_the_right_certificates_connect_by_ca_file_and_by_grid_ca_directory(tmp_path, pki, broker, bridge_factory):
    port = broker.ports["tls"]
    code, output = send(bridge_factory, port, f"{{enabled: true, ca_file: {pki.authority.cert_file}}}", "by-file")
    assert code == 0 and "1 message(s) confirmed" in output, output
    grid = tmp_path / "certificates"           # like /etc/grid-security/certificates
    grid.mkdir()
    subject_hash = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(pki.authority.cert_file)],
                                  capture_output=True, text=True, check=True).stdout.strip()
    (grid / "TestGridCA.pem").write_bytes(pki.authority.cert_file.read_bytes())
    os.symlink("TestGridCA.pem", grid / f"{subject_hash}.0")
    # A grid directory's namespaces say which DNs the CA may issue: first one that excludes the
    # broker (refused, naming the CA, the DN and the rule), then one that includes it.
    (grid / f"{subject_hash}.r0").write_bytes(pki.authority.crl_pem())        # as fetch-crl keeps them
    namespaces = grid / f"{subject_hash}.namespaces"
    namespaces.write_text('TO Issuer "/O=msg-nagios-bridge tests/CN=Test Grid CA" PERMIT Subject "/O=elsewhere/*"\n')
    code, output = send(bridge_factory, port, f"{{enabled: true, ca_dir: {grid}}}", "by-dir-outside")
    assert code == 1 and "ca-namespace: CA '/O=msg-nagios-bridge tests/CN=Test Grid CA' may not issue " \
                         "'/O=msg-nagios-bridge tests/CN=broker.test'" in output, output
    namespaces.write_text('TO Issuer "/O=msg-nagios-bridge tests/CN=Test Grid CA" '
                          'PERMIT Subject "/O=msg-nagios-bridge tests/*"\n')
    code, output = send(bridge_factory, port, f"{{enabled: true, ca_dir: {grid}}}", "by-dir")
    assert code == 0 and "1 message(s) confirmed" in output, output


def test_unknown_ca_and_expired_certificate_are_refused_with_a_clear_reason(tmp_path, pki, broker, activemq_factory,
                                                                            bridge_factory):
    code, output = send(bridge_factory, broker.ports["tls"], f"{{enabled: true, ca_file: {pki.stranger.cert_file}}}",
                        "unknown-ca")
    assert code == 1 and "TLS: the broker's certificate was refused: " in output
    assert "self-signed certificate in certificate chain" in output or "unable to get local issuer" in output
    _, port = tls_broker(activemq_factory, Authority(tmp_path / "pki"), "expired", expired=True)
    code, output = send(bridge_factory, port, f"{{enabled: true, ca_file: {tmp_path / 'pki' / 'ca.pem'}}}", "expired")
    assert code == 1 and "certificate has expired" in output, output


def test_a_broker_requiring_client_certificates(pki, broker, bridge_factory):
    port = broker.ports["mutual"]
    code, output = send(bridge_factory, port, f"{{enabled: true, ca_file: {pki.authority.cert_file}}}", "no-cert")
    assert code == 1 and "refused the bridge's client certificate" in output, output
    tls = f"{{enabled: true, ca_file: {pki.authority.cert_file}, cert_file: {pki.client_cert}, " \
          f"key_file: {pki.client_key}, key_password_file: {pki.password_file}}}"
    code, output = send(bridge_factory, port, tls, "with-cert")
    assert code == 0 and "1 message(s) confirmed" in output, output
    assert KEY_PASSWORD not in output


# -- one connection through broker.py, with the venv's stomp.py and from the unpacked .deb ------------

@pytest.fixture(params=["venv", "debian"])
def connect(request):
    """connect(port, **options) -> the JSON report of tests/sandbox/tls_client.py, run by the
    venv's python (pip's stomp.py) or by Debian's python3 on the unpacked package."""
    if request.param == "venv":
        command, env = [sys.executable], {**os.environ, "PYTHONPATH": REPO}
    else:
        require_debian_python()
        unpacked = request.getfixturevalue("root")
        command, env = [DEBIAN_PYTHON], debian_env(unpacked)

    def run(port, **options):
        done = subprocess.run([*command, TLS_CLIENT, json.dumps({"port": port, **options})], capture_output=True,
                              text=True, timeout=120, env=env, cwd="/")
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout.splitlines()[-1])
        if request.param == "debian":
            assert report["stomp"] == "8.0.0" and report["openssl"], \
                f"want Debian 12's python3-stomp 8.0.0 with python3-openssl (scripts/setup.sh): {report}"
        return report

    return run


def with_client_cert(pki, **more):
    return {"ca_file": str(pki.authority.cert_file), "cert_file": str(pki.client_cert),
            "key_file": str(pki.client_key), "key_password": KEY_PASSWORD, **more}


@pytest.mark.parametrize("connector", ["mutual", "mutual12"])
def test_client_certificate_one_tls_connection_tls12_or_newer(pki, broker, connect, connector):
    """Regression (issue 12): on Debian 12 set_ssl(verify=) raised TypeError, and with
    python3-openssl stomp.py 8.0.0 first connected without the client certificate."""
    report = connect(broker.ports[connector], **with_client_cert(pki))
    assert report["problem"] is None and report["receipt"], report
    assert report["tls_connections"] == 1, report          # no expiry probe, no second handshake
    assert report["version"] in ("TLSv1.2", "TLSv1.3") and report["minimum_version"] == "TLSv1_2", report
    if connector == "mutual12":
        assert report["version"] == "TLSv1.2", report


def test_without_a_client_certificate_the_refusal_says_so(pki, broker, connect):
    report = connect(broker.ports["mutual"], ca_file=str(pki.authority.cert_file))
    assert "refused the bridge's client certificate" in report["problem"], report
    assert "set brokers.tls.cert_file and key_file" in report["problem"], report


def test_the_broker_host_name_is_verified(pki, broker, connect):
    # The broker's certificate names 127.0.0.1 only; "localhost" reaches the same socket.
    report = connect(broker.ports["mutual"], **with_client_cert(pki, host="localhost"))
    assert report["problem"].startswith("localhost:") and "mismatch" in report["problem"].lower(), report
    assert "TLS: the broker's certificate was refused" in report["problem"], report
    report = connect(broker.ports["mutual"], **with_client_cert(pki, host="localhost", verify=False))
    assert report["problem"] is None and report["receipt"], report   # only when explicitly asked


def test_an_unknown_ca_is_refused(pki, broker, connect):
    report = connect(broker.ports["mutual"], **with_client_cert(pki, ca_file=str(pki.stranger.cert_file)))
    assert "TLS: the broker's certificate was refused: " in report["problem"], report
    assert report["receipt"] is False and report["closed"], report


def test_a_revoked_broker_certificate_is_refused_by_the_grid_trust_check(tmp_path, pki, broker, connect):
    crl = pki.crl_revoking_the_broker(tmp_path / "ca.r0")
    report = connect(broker.ports["mutual"], **with_client_cert(pki, crl_file=str(crl)))
    assert "TLS: the broker's certificate was refused: crl-revoked" in report["problem"], report
    assert "CN=broker.test" in report["problem"], report
    assert report["closed"] and report["tls_connections"] == 1, report
