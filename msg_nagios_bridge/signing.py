"""End-to-end signatures: results stay verifiable across brokers the site does not control.

A signed message carries two headers beside its unchanged body:

* ``signature``: base64 of the signature, by the publisher's host key, over
  ``b"msg-nagios-bridge-signature-1\\n" + result_id + b"\\n" + body``;
* ``signer``: base64 of the publisher's certificate (DER).

The destination is not signed: brokers may rename it (virtual topics). The
result_id is, so a signature cannot be moved onto another result.

Why not CMS/S-MIME: the ``cryptography`` package can make a CMS signature but
not verify one, and running ``openssl smime`` per message costs a fork each. A
detached signature in headers also leaves the body as consumers already read
it. The chain check is done by hand (issuer, signature, validity), which also
works with Debian 12's python3-cryptography 38.

``cryptography`` is needed only when signing is configured; it is imported
lazily so the rest of the bridge does not depend on it.
"""
from __future__ import annotations

import base64
import binascii
import datetime
from typing import List, Mapping, Optional, Tuple

from .formats.inbound import Refused
from .tlsfiles import ca_bundle_from_dir

CONTEXT = b"msg-nagios-bridge-signature-1\n"
MAX_CERT_HEADER = 16 * 1024


def _crypto():
    try:
        from cryptography import x509
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    except ImportError:   # pragma: no cover - the package is a test extra and a Debian Recommends
        raise RuntimeError("signing needs the 'cryptography' package (Debian: python3-cryptography)") from None
    return x509, InvalidSignature, hashes, serialization, ec, padding, rsa


def _signed_bytes(result_id: str, body: bytes) -> bytes:
    return CONTEXT + result_id.encode("utf-8") + b"\n" + body


def _verify_with(public_key, signature: bytes, data: bytes, hash_algorithm) -> None:
    """Raise InvalidSignature unless ``signature`` is ``public_key``'s over ``data``."""
    _, _, _, _, ec, padding, rsa = _crypto()
    if isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, data, padding.PKCS1v15(), hash_algorithm)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, data, ec.ECDSA(hash_algorithm))
    else:
        raise ValueError(f"unsupported key type {type(public_key).__name__}")


def subject_dn(cert) -> str:
    """The subject as an RFC 4514 string (``CN=...,O=...``), what policy rules name."""
    return cert.subject.rfc4514_string()


class Signer:
    """Signs outbound messages with the host certificate's key."""

    def __init__(self, cert_file: str, key_file: str, key_password: str = ""):
        x509, _, hashes, serialization, ec, padding, rsa = _crypto()
        with open(cert_file, "rb") as handle:
            cert = x509.load_pem_x509_certificate(handle.read())
        with open(key_file, "rb") as handle:
            self.key = serialization.load_pem_private_key(handle.read(), key_password.encode() or None)
        self.cert_header = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")
        self.hash = hashes.SHA256()

    def headers(self, result_id: str, body: bytes) -> Mapping[str, str]:
        _, _, _, _, ec, padding, rsa = _crypto()
        data = _signed_bytes(result_id, body)
        if isinstance(self.key, rsa.RSAPrivateKey):
            signature = self.key.sign(data, padding.PKCS1v15(), self.hash)
        else:
            signature = self.key.sign(data, ec.ECDSA(self.hash))
        return {"signature": base64.b64encode(signature).decode("ascii"), "signer": self.cert_header}


class Verifier:
    """Checks a message's signature and its signer's certificate against trusted CAs."""

    def __init__(self, ca_file: str = "", ca_dir: str = ""):
        x509 = _crypto()[0]
        if ca_dir:
            pem = ca_bundle_from_dir(ca_dir).encode("ascii")
        else:
            with open(ca_file, "rb") as handle:
                pem = handle.read()
        self.authorities: List = _load_pem_certificates(x509, pem)
        if not self.authorities:
            raise ValueError(f"no CA certificates in {ca_file or ca_dir}")

    def verify(self, headers: Mapping[str, str], body: bytes,
               now: Optional[datetime.datetime] = None) -> str:
        """The signer's DN if the message is signed and valid, else raise Refused (only)."""
        try:
            return self._verify(headers, body, now)
        except Refused:
            raise
        except Exception as exc:     # noqa: BLE001
            # The certificate is the sender's input: cryptography raises more than ValueError
            # for odd ones (UnsupportedAlgorithm for an unknown signature OID, ...). Anything
            # escaping here would stop the subscriber on a message the broker redelivers.
            raise Refused("bad-signature", f"the signer certificate cannot be checked:"
                                           f" {type(exc).__name__}: {exc}") from None

    def _verify(self, headers: Mapping[str, str], body: bytes, now: Optional[datetime.datetime]) -> str:
        x509, InvalidSignature, _, _, _, _, _ = _crypto()
        signature_text, cert_text = headers.get("signature", ""), headers.get("signer", "")
        if not signature_text or not cert_text:
            raise Refused("unsigned", "the message carries no signature (signature and signer headers)")
        if len(cert_text) > MAX_CERT_HEADER:
            raise Refused("bad-signature", f"the signer header is {len(cert_text)} characters long")
        try:
            signature = base64.b64decode(signature_text, validate=True)
            cert = x509.load_der_x509_certificate(base64.b64decode(cert_text, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise Refused("bad-signature", f"unreadable signature or signer certificate: {exc}") from None
        dn = subject_dn(cert)
        when = now or datetime.datetime.now(datetime.timezone.utc)
        start, end = _validity(cert)
        if not start <= when <= end:
            raise Refused("bad-signature", f"the signer certificate {dn!r} is not valid now "
                                           f"(valid {start:%Y-%m-%d} to {end:%Y-%m-%d})")
        if not self._issued_by_trusted(cert):
            raise Refused("bad-signature", f"the signer certificate {dn!r} is not issued by a trusted CA")
        try:
            _verify_with(cert.public_key(), signature, _signed_bytes(headers.get("result_id", ""), body),
                         _crypto()[2].SHA256())
        except (InvalidSignature, ValueError, TypeError):
            raise Refused("bad-signature", f"the signature by {dn!r} does not match this message "
                                           f"(changed on the way, or signed for another result)") from None
        return dn

    def _issued_by_trusted(self, cert) -> bool:
        InvalidSignature = _crypto()[1]
        for authority in self.authorities:
            if authority.subject != cert.issuer:
                continue
            try:
                _verify_with(authority.public_key(), cert.signature, cert.tbs_certificate_bytes,
                             cert.signature_hash_algorithm)
                return True
            except (InvalidSignature, ValueError, TypeError):
                continue
        return False


def _validity(cert) -> Tuple[datetime.datetime, datetime.datetime]:
    start = getattr(cert, "not_valid_before_utc", None)
    end = getattr(cert, "not_valid_after_utc", None)
    if start is None:      # cryptography < 42 (Debian 12 has 38): naive UTC datetimes
        start = cert.not_valid_before.replace(tzinfo=datetime.timezone.utc)
        end = cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    return start, end


def _load_pem_certificates(x509, pem: bytes) -> List:
    marker = b"-----BEGIN CERTIFICATE-----"
    certificates = []
    for chunk in pem.split(marker)[1:]:
        try:
            certificates.append(x509.load_pem_x509_certificate(marker + chunk.split(b"-----END CERTIFICATE-----")[0]
                                                               + b"-----END CERTIFICATE-----\n"))
        except ValueError:
            continue
    return certificates
