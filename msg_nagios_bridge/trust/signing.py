"""End-to-end signatures: results stay verifiable across brokers the site does not control.

Scheme 2 (what the bridge sends): a signed message carries, beside its unchanged body,

* ``signed-headers``: the names of the headers the signature covers, comma-separated
  (``result_id,role,site,vo``: result_id and every header the inbound side reads; ``vo`` only
  when the site has one; and the loss accounting's ``nagios_host``, ``route`` and ``route_seq``,
  so that nobody on the way can renumber a stream: the outbound spool signs a message when it
  numbers it);
* ``signature``: base64 of the signature, by the publisher's host key, over ``signed_bytes_2``:
  the scheme tag, the number of signed headers, each (name, value) sorted by name, and the body,
  every part prefixed by its length (8 bytes, big-endian), so no byte can move from one part
  into another and no header can be added, dropped or changed;
* ``signer``: base64 of the publisher's certificate (DER).

Scheme 1 (releases before it) signed ``b"msg-nagios-bridge-signature-1\\n" + result_id + b"\\n" +
body``: no framing (a line could move from the body into result_id) and role, site and vo
unsigned. A verifier refuses it (``signature-scheme``) unless ``accept_scheme_1`` is set; then
only result_id counts as signed.

The destination is not signed: brokers may rename it (virtual topics).

The signer's certificate is judged by gridtrust.TrustStore with purpose "signer" (issuer, CRL,
namespaces, keyUsage); a refusal there is ``untrusted-signer`` with the rule in the message.

Why not CMS/S-MIME: the ``cryptography`` package can make a CMS signature but not verify one, and
running ``openssl smime`` per message costs a fork each. A detached signature in headers also
leaves the body as consumers already read it.

``cryptography`` is needed only when signing is configured; it is imported lazily so the rest of
the bridge does not depend on it.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import functools
import hashlib
from typing import FrozenSet, Mapping, Optional, Sequence, Tuple

from ..formats import sequence
from ..model import Refused
from .gridtrust import TrustStore, Untrusted, verify_signed_by
from .gridtrust import _crypto as _grid_crypto

CONTEXT = b"msg-nagios-bridge-signature-1\n"
SCHEME_2 = b"msg-nagios-bridge-signature-2"
MAX_CERT_HEADER = 16 * 1024
MAX_SIGNED_HEADERS = 32
# result_id and every header the inbound side reads (formats.inbound takes site, role and vo
# from headers when the record lacks them; the role also makes the service-name suffix). A
# message carrying one of them unsigned is refused when signatures are required.
SIGNED_HEADERS = ("result_id", "role", "site", "vo")
# Signed when present (``route_seq`` is added by the outbound spool, which then signs): what
# the loss accounting reads. Not required by a receiver: it leaves a message whose numbers
# are unsigned out of the accounting (inbound/sequence.py), and judges the result as before.
STREAM_HEADERS = tuple(name for name in sequence.STREAM_HEADERS if name not in SIGNED_HEADERS)


@dataclasses.dataclass(frozen=True)
class Signed:
    """A verified message's signer.

    dn: the certificate's subject, RFC 4514 (``CN=...,O=...``), what policy rules name.
    identity: sha256 hex over the issuer's and the subject's DER names, each length-prefixed.
      Both lie inside the part of the certificate its CA signed, so no re-encoding of the
      ``signer`` header (base64 padding bits, another encoding of the signature value, which
      ECDSA allows) changes it; and a renewed certificate keeps it, so duplicates and the
      newest-result memory hold across a renewal.
    signed_headers: the header names the signature covers.
    """
    dn: str
    identity: str
    signed_headers: FrozenSet[str]


def _crypto():
    """The pieces of ``cryptography`` signing uses, imported once and lazily by gridtrust."""
    x509, invalid_signature, hashes, serialization, ec, _, _, padding, rsa = _grid_crypto()
    return x509, invalid_signature, hashes, serialization, ec, padding, rsa


def _signed_bytes(result_id: str, body: bytes) -> bytes:
    """Scheme 1: kept only to verify messages of older releases (tests/sandbox/pki.py makes them)."""
    return CONTEXT + result_id.encode("utf-8") + b"\n" + body


def _frame(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def signed_bytes_2(signed: Sequence[Tuple[str, str]], body: bytes) -> bytes:
    """Scheme 2: what the signature covers. ``signed``: (name, value) of each signed header."""
    parts = [_frame(SCHEME_2), len(signed).to_bytes(8, "big")]
    for name, value in sorted(signed):
        parts += [_frame(_text(name)), _frame(_text(value))]
    parts.append(_frame(body))
    return b"".join(parts)


def subject_dn(cert) -> str:
    """The subject as an RFC 4514 string (``CN=...,O=...``), what policy rules name."""
    return cert.subject.rfc4514_string()


def certificate_identity(cert) -> str:
    """Signed.identity of ``cert`` (see there why issuer and subject)."""
    return hashlib.sha256(_frame(cert.issuer.public_bytes()) + _frame(cert.subject.public_bytes())).hexdigest()


@functools.lru_cache(maxsize=256)
def _signer_certificate(der: bytes):
    """(certificate, public key) of a signer header's DER. Cached: a site signs with one
    certificate for months, and OpenSSL 3 takes about a millisecond to load an EC key. Only the
    parsing is cached; every message's certificate is judged again (CRLs change)."""
    cert = _crypto()[0].load_der_x509_certificate(der)
    return cert, cert.public_key()


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
        # Found here, not at the first message: the outbound spool signs inside its
        # transaction, and a failure there holds the sources.
        if not isinstance(self.key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            raise ValueError(f"{key_file}: a {type(self.key).__name__}; signing needs an RSA or EC key")
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        if (self.key.public_key().public_bytes(serialization.Encoding.DER, public)
                != cert.public_key().public_bytes(serialization.Encoding.DER, public)):
            raise ValueError(f"{key_file} is not the key of {cert_file}: every receiver would refuse"
                             f" the signatures")

    def _sign(self, data: bytes) -> str:
        _, _, _, _, ec, padding, rsa = _crypto()
        if isinstance(self.key, rsa.RSAPrivateKey):
            signature = self.key.sign(data, padding.PKCS1v15(), self.hash)
        else:
            signature = self.key.sign(data, ec.ECDSA(self.hash))
        return base64.b64encode(signature).decode("ascii")

    def sign(self, headers: Mapping[str, str], body: bytes) -> Mapping[str, str]:
        """The headers to add to a message with ``headers`` and ``body`` (scheme 2): it signs
        each of SIGNED_HEADERS and STREAM_HEADERS the message has; result_id it must have."""
        if not headers.get("result_id"):
            raise ValueError("a signed message needs a result_id")
        names = [name for name in SIGNED_HEADERS + STREAM_HEADERS if name in headers]
        data = signed_bytes_2([(name, headers[name]) for name in names], body)
        return {"signed-headers": ",".join(names), "signature": self._sign(data), "signer": self.cert_header}


class Verifier:
    """Checks a message's signature, and its signer's certificate with a gridtrust.TrustStore."""

    def __init__(self, ca_file: str = "", ca_dir: str = "", *, accept_scheme_1: bool = False,
                 store: Optional[TrustStore] = None):
        _crypto()
        self.store = store or TrustStore(ca_dir=ca_dir, ca_file=ca_file)
        self.accept_scheme_1 = accept_scheme_1

    @classmethod
    def from_settings(cls, check) -> "Verifier":
        """From config.SignatureCheck."""
        return cls(accept_scheme_1=check.accept_scheme_1,
                   store=TrustStore.from_settings(check.ca_file, check.ca_dir, check.rules))

    def verify(self, headers: Mapping[str, str], body: bytes,
               now: Optional[datetime.datetime] = None) -> Signed:
        """Who signed the message, if it is signed and valid; else raise Refused (only)."""
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

    def _verify(self, headers: Mapping[str, str], body: bytes, now: Optional[datetime.datetime]) -> Signed:
        x509, InvalidSignature, hashes = _crypto()[:3]
        signature_text, cert_text = headers.get("signature", ""), headers.get("signer", "")
        if not signature_text or not cert_text:
            raise Refused("unsigned", "the message carries no signature (signature and signer headers)")
        if len(cert_text) > MAX_CERT_HEADER:
            raise Refused("bad-signature", f"the signer header is {len(cert_text)} characters long")
        names = self._signed_names(headers)
        try:
            signature = base64.b64decode(signature_text, validate=True)
            cert, public_key = _signer_certificate(base64.b64decode(cert_text, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise Refused("bad-signature", f"unreadable signature or signer certificate: {exc}") from None
        dn = subject_dn(cert)
        try:
            self.store.check(cert, "signer", now)
        except Untrusted as exc:
            raise Refused("untrusted-signer", f"the signer {dn!r} is not trusted: {exc}") from None
        data = (signed_bytes_2([(name, headers[name]) for name in names], body) if names is not None
                else _signed_bytes(headers.get("result_id", ""), body))
        try:
            verify_signed_by(public_key, signature, data, hashes.SHA256())
        except (InvalidSignature, ValueError, TypeError):
            raise Refused("bad-signature", f"the signature by {dn!r} does not match this message "
                                           f"(changed on the way, or signed for another result)") from None
        return Signed(dn=dn, identity=certificate_identity(cert),
                      signed_headers=frozenset(names if names is not None else ("result_id",)))

    def _signed_names(self, headers: Mapping[str, str]) -> Optional[Tuple[str, ...]]:
        """The signed header names (scheme 2), None for scheme 1 (if accepted), or Refused."""
        listed = headers.get("signed-headers")
        if listed is None:
            if not self.accept_scheme_1:
                raise Refused("signature-scheme", "signed with the old scheme 1 (result_id and body only, without "
                                                  "framing; role, site and vo unsigned), which this bridge does not "
                                                  "accept (inbound.signatures.accept_scheme_1: false)")
            return None
        names = tuple(name.strip() for name in listed.split(",", MAX_SIGNED_HEADERS))
        if len(names) > MAX_SIGNED_HEADERS:
            raise Refused("bad-signature", f"signed-headers names more than {MAX_SIGNED_HEADERS} headers")
        if "result_id" not in names or len(set(names)) != len(names) or not all(names):
            raise Refused("bad-signature", f"signed-headers must name result_id and each header once: "
                                           f"{listed[:200]!r}")
        missing = [name for name in names if name not in headers]
        if missing:
            raise Refused("bad-signature", f"signed header {missing[0][:80]!r} is missing from the message")
        return names
