"""TLS to a real ActiveMQ (stomp+ssl) with a test CA made by the test: what connects, what is refused and why."""
import os
import socket
import subprocess
import sys

import pytest

from tests.sandbox.pki import Authority, ssl_broker_xml
from tests.sandbox.ports import free_port, wait_until

pytestmark = pytest.mark.integration


def tls_broker(activemq_factory, authority, name, hosts=("127.0.0.1",), expired=False, need_client_auth=False):
    authority.issue(name, f"{name}.broker", hosts=hosts, expired=expired)
    port = free_port()
    extra_xml, connector = ssl_broker_xml(authority.keystore(name), authority.truststore(), port, need_client_auth)
    broker = activemq_factory(name, extra_xml=extra_xml, extra_connectors=connector)
    assert wait_until(lambda: port_open(port), timeout=30), f"the stomp+ssl connector on {port} never opened"
    return broker, port


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def send(bridge_factory, port, tls_yaml, name):
    bridge = bridge_factory([port], name=name, tls=tls_yaml, connect_timeout=10)   # a cold JVM's first handshakes
    result = subprocess.run([sys.executable, "-m", "msg_nagios_bridge", "send", "--host", "h1", "--service", "tls",
                             "--state", "0", "-c", str(bridge.config_path)], capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout + result.stderr


@pytest.fixture
def authority(tmp_path):
    return Authority(tmp_path / "pki")


def test_the_right_certificates_connect_by_ca_file_and_by_grid_ca_directory(tmp_path, authority, activemq_factory,
                                                                            bridge_factory):
    broker, port = tls_broker(activemq_factory, authority, "good")
    code, output = send(bridge_factory, port, f"{{enabled: true, ca_file: {authority.cert_file}}}", "by-file")
    assert code == 0 and "1 message(s) confirmed" in output, output
    grid = tmp_path / "certificates"           # like /etc/grid-security/certificates
    grid.mkdir()
    subject_hash = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(authority.cert_file)],
                                  capture_output=True, text=True, check=True).stdout.strip()
    (grid / "TestGridCA.pem").write_bytes(authority.cert_file.read_bytes())
    os.symlink("TestGridCA.pem", grid / f"{subject_hash}.0")
    (grid / f"{subject_hash}.signing_policy").write_text("access_id_CA X509 '/O=test'\n")
    code, output = send(bridge_factory, port, f"{{enabled: true, ca_dir: {grid}}}", "by-dir")
    assert code == 0 and "1 message(s) confirmed" in output, output


def test_unknown_ca_expired_certificate_and_wrong_host_are_refused_with_a_clear_reason(
        tmp_path, authority, activemq_factory, bridge_factory):
    stranger = Authority(tmp_path / "other-pki", name="Some Other CA")
    broker, port = tls_broker(activemq_factory, authority, "ok")
    code, output = send(bridge_factory, port, f"{{enabled: true, ca_file: {stranger.cert_file}}}", "unknown-ca")
    assert code == 1 and "TLS: the broker's certificate was refused: " in output
    assert "self-signed certificate in certificate chain" in output or "unable to get local issuer" in output
    broker.stop()
    _, port = tls_broker(activemq_factory, authority, "expired", expired=True)
    code, output = send(bridge_factory, port, f"{{enabled: true, ca_file: {authority.cert_file}}}", "expired")
    assert code == 1 and "certificate has expired" in output, output
    _, port = tls_broker(activemq_factory, authority, "elsewhere", hosts=("broker.example.org",))
    code, output = send(bridge_factory, port, f"{{enabled: true, ca_file: {authority.cert_file}}}", "mismatch")
    assert code == 1 and "mismatch" in output.lower(), output
    code, output = send(bridge_factory, port, f"{{enabled: true, ca_file: {authority.cert_file}, verify: false}}",
                        "unverified")
    assert code == 0, output       # only with the explicit setting, which the bridge logs loudly


def test_a_broker_requiring_client_certificates(tmp_path, authority, activemq_factory, bridge_factory):
    _, port = tls_broker(activemq_factory, authority, "mutual", need_client_auth=True)
    code, output = send(bridge_factory, port, f"{{enabled: true, ca_file: {authority.cert_file}}}", "no-cert")
    assert code == 1 and "refused the bridge's client certificate" in output, output
    password = tmp_path / "key-password"
    password.write_text("s3cret\n")
    password.chmod(0o600)
    cert, key = authority.issue("site-bridge", "site-a.example.org", client=True, key_password="s3cret")
    tls = f"{{enabled: true, ca_file: {authority.cert_file}, cert_file: {cert}, key_file: {key}, " \
          f"key_password_file: {password}}}"
    code, output = send(bridge_factory, port, tls, "with-cert")
    assert code == 0 and "1 message(s) confirmed" in output, output
    assert "s3cret" not in output
