"""A test PKI made on the spot: a CA, broker and client certificates, and Java keystores."""
import datetime
from base64 import b64encode
import ipaddress
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

STORE_PASSWORD = "changeit"


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "msg-nagios-bridge tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class Authority:
    """A CA that writes PEM files into ``directory``."""

    def __init__(self, directory, name="Test Grid CA"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(days=1))
                     .not_valid_after(now + datetime.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.cert_file = self.dir / "ca.pem"
        self.cert_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def crl_pem(self, revoked_serials=()) -> bytes:
        """A current CRL of this CA (PEM), listing ``revoked_serials``."""
        return GridAuthority.crl(self, [_Serial(serial) for serial in revoked_serials]).public_bytes(
            serialization.Encoding.PEM)

    def issue(self, name, common_name, hosts=(), client=False, expired=False, key_password=None, key_type="ec"):
        """(cert_file, key_file) for a server (``hosts`` as SANs) or client certificate;
        ``key_type`` "ec" (P-256) or "rsa" (2048 bits, as most grid host certificates)."""
        key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if key_type == "rsa"
               else ec.generate_private_key(ec.SECP256R1()))
        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = ((now - datetime.timedelta(days=10), now - datetime.timedelta(days=1)) if expired
                      else (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)))
        builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(self.cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client
                                                         else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
        if hosts:
            names = [x509.IPAddress(ipaddress.ip_address(h)) if h[0].isdigit() else x509.DNSName(h) for h in hosts]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_file, key_file = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        encryption = (serialization.BestAvailableEncryption(key_password.encode()) if key_password
                      else serialization.NoEncryption())
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               encryption))
        key_file.chmod(0o600)
        self._last = (cert, key)
        return cert_file, key_file

    def unknown_algorithm_certificate(self) -> bytes:
        """DER of a certificate naming this CA as its issuer but signed with an algorithm no
        library knows (the OID of ecdsa-with-SHA256 changed): cryptography raises
        UnsupportedAlgorithm, not ValueError, when asked for its hash."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        der = (x509.CertificateBuilder().subject_name(_name("mallory")).issuer_name(self.cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
               .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
        ecdsa_with_sha256, unknown = bytes.fromhex("06082a8648ce3d040302"), bytes.fromhex("06082a8648ce3d040309")
        assert der.count(ecdsa_with_sha256) == 2            # inside the signed part and around it
        return der.replace(ecdsa_with_sha256, unknown)

    def keystore(self, name):
        """A PKCS12 keystore for ActiveMQ holding the certificate last issued."""
        cert, key = self._last
        path = self.dir / f"{name}.p12"
        path.write_bytes(pkcs12.serialize_key_and_certificates(
            name.encode(), key, cert, [self.cert],
            serialization.BestAvailableEncryption(STORE_PASSWORD.encode())))
        return path

    def truststore(self):
        """A PKCS12 truststore with this CA, made by keytool as Java expects it."""
        path = self.dir / "trust.p12"
        if not path.exists():
            subprocess.run(["keytool", "-importcert", "-noprompt", "-storetype", "PKCS12", "-keystore", str(path),
                            "-storepass", STORE_PASSWORD, "-alias", "ca", "-file", str(self.cert_file)],
                           check=True, capture_output=True)
        return path


def ssl_broker_xml(keystore, truststore, port, need_client_auth=False, want_client_auth=False):
    """(extra_xml, extra_connectors) for tests.sandbox.activemq.ActiveMQ with a stomp+ssl connector.

    ``want_client_auth`` asks for a client certificate without requiring one in the handshake
    (ActiveMQ's JAAS certificate login then decides); ``need_client_auth`` requires one."""
    context = (f'<sslContext><sslContext keyStore="file:{keystore}" keyStorePassword="{STORE_PASSWORD}" '
               f'keyStoreType="PKCS12" trustStore="file:{truststore}" trustStorePassword="{STORE_PASSWORD}" '
               f'trustStoreType="PKCS12"/></sslContext>\n')
    query = "?needClientAuth=true" if need_client_auth else "?wantClientAuth=true" if want_client_auth else ""
    connector = f'      <transportConnector name="stomp+ssl" uri="stomp+ssl://127.0.0.1:{port}{query}"/>\n'
    return context, connector


# --- a grid-style CA directory (IGTF layout, as the ca-policy packages and fetch-crl leave it) ---

def grid_name(one_line):
    """An x509.Name from the OpenSSL one-line form ``/C=XX/O=Org/CN=name`` (tests only: no escapes)."""
    oids = {"C": NameOID.COUNTRY_NAME, "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
            "CN": NameOID.COMMON_NAME, "DC": NameOID.DOMAIN_COMPONENT, "L": NameOID.LOCALITY_NAME}
    pairs = [part.split("=", 1) for part in one_line.split("/")[1:]]
    return x509.Name([x509.NameAttribute(oids[key], value) for key, value in pairs])


def subject_hash(cert):
    """OpenSSL's subject hash of ``cert`` (``openssl x509 -subject_hash``, the name-hash OpenSSL
    1.0+ and ``c_rehash``/``openssl rehash`` use for CA directories; ``-subject_hash_old`` is the
    MD5 one of OpenSSL 0.9.8)."""
    out = subprocess.run(["openssl", "x509", "-noout", "-subject_hash"], input=cert.public_bytes(
        serialization.Encoding.PEM), capture_output=True, check=True).stdout
    return out.decode().strip()


def _key_usage(**chosen):
    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
             "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{name: chosen.get(name, False) for name in names})


class _Serial:
    def __init__(self, serial_number):
        self.serial_number = serial_number


class GridAuthority:
    """A CA with a one-line DN, optionally below ``parent``; issues certificates and CRLs as values."""

    def __init__(self, dn, parent=None, days=365, path_length=None, extensions=()):
        """``extensions``: more (extension, critical) pairs, e.g. NameConstraints."""
        self.dn = dn
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        issuer_name, issuer_key = (parent.cert.subject, parent.key) if parent else (grid_name(dn), self.key)
        builder = (x509.CertificateBuilder().subject_name(grid_name(dn)).issuer_name(issuer_name)
                   .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
                   .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        self.cert = builder.sign(issuer_key, hashes.SHA256())
        self.hash = subject_hash(self.cert)

    def issue(self, dn, usage=("digital_signature", "key_encipherment"), eku=("client", "server"), expired=False,
              ca=False, extensions=(), hash_algorithm=None):
        """(certificate, key) for ``dn``; ``usage`` None: no keyUsage; ``eku`` None: no extendedKeyUsage;
        ``extensions``: more (extension, critical) pairs; ``hash_algorithm``: of the signature (SHA-256)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = ((now - datetime.timedelta(days=10), now - datetime.timedelta(days=1)) if expired
                      else (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)))
        builder = (x509.CertificateBuilder().subject_name(grid_name(dn)).issuer_name(self.cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(end))
        if ca:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        if usage is not None:
            builder = builder.add_extension(_key_usage(**{name: True for name in usage}), critical=True)
        if eku is not None:
            oids = {"client": ExtendedKeyUsageOID.CLIENT_AUTH, "server": ExtendedKeyUsageOID.SERVER_AUTH}
            builder = builder.add_extension(x509.ExtendedKeyUsage([oids[name] for name in eku]), critical=False)
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(self.key, hash_algorithm or hashes.SHA256()), key

    def crl(self, revoked=(), expired=False, signed_by=None, issued_in=None, extensions=()):
        """A CRL listing ``revoked`` (certificates); ``expired``: its nextUpdate is past;
        ``issued_in``: a timedelta from now for its thisUpdate (a week's validity from it);
        ``extensions``: (extension, critical) pairs."""
        now = datetime.datetime.now(datetime.timezone.utc)
        last, following = ((now - datetime.timedelta(days=10), now - datetime.timedelta(days=3)) if expired
                           else (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=7)))
        if issued_in is not None:
            last, following = now + issued_in, now + issued_in + datetime.timedelta(days=7)
        builder = x509.CertificateRevocationListBuilder().issuer_name(self.cert.subject) \
            .last_update(last).next_update(following)
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        for cert in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(last).build())
        return builder.sign(signed_by or self.key, hashes.SHA256())


class GridCADirectory:
    """``/etc/grid-security/certificates`` in small: ``<hash>.0``, ``.r0``, ``.namespaces``,
    ``.signing_policy``; files are replaced by rename, as fetch-crl does."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def _write(self, name, data):
        temporary = self.path / f".{name}.tmp"
        temporary.write_bytes(data if isinstance(data, bytes) else data.encode())
        temporary.rename(self.path / name)
        return self.path / name

    def add(self, authority):
        return self._write(f"{authority.hash}.0", authority.cert.public_bytes(serialization.Encoding.PEM))

    def write_crl(self, authority, crl):
        return self._write(f"{authority.hash}.r0", crl.public_bytes(serialization.Encoding.PEM))

    def write_namespaces(self, authority, text):
        return self._write(f"{authority.hash}.namespaces", text)

    def write_signing_policy(self, authority, text):
        return self._write(f"{authority.hash}.signing_policy", text)

    def remove(self, name):
        (self.path / name).unlink()


def sign_scheme_1(cert_file, key_file, password, result_id, body):
    """The signature headers an older release (signature scheme 1) put on a message: the
    certificate and a signature of CONTEXT + result_id + "\n" + body, made here with
    cryptography alone, apart from the bridge's Signer."""
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from msg_nagios_bridge.trust.signing import CONTEXT
    cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password.encode() or None)
    data = CONTEXT + result_id.encode("utf-8") + b"\n" + body
    signature = (key.sign(data, padding.PKCS1v15(), hashes.SHA256()) if isinstance(key, rsa.RSAPrivateKey)
                 else key.sign(data, ec.ECDSA(hashes.SHA256())))
    return {"signature": b64encode(signature).decode("ascii"),
            "signer": b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")}
