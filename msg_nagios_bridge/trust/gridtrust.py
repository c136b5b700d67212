"""Grid trust as IGTF defines it: which certificates the bridge believes, and if not, why not.

A grid CA directory (``/etc/grid-security/certificates``, kept by the IGTF packages and fetch-crl)
holds, per CA, files named after the OpenSSL subject hash of the CA's name:

* ``<hash>.0`` (``.1`` ... on a hash collision): the CA certificate, PEM;
* ``<hash>.r0``: the CA's CRL, PEM or DER, rewritten by fetch-crl every few hours;
* ``<hash>.namespaces`` (EUGridPMA): which subject DNs the CA may issue, lines such as
  ``TO Issuer "/C=XX/O=CA1" PERMIT Subject "/C=XX/O=Site1/*"`` (``SELF`` for the CA of the file,
  ``DENY`` lines win over ``PERMIT``, a ``\\`` at the end of a line continues it);
* ``<hash>.signing_policy`` (Globus): the older form of the same (``access_id_CA X509 '/DN'``,
  ``pos_rights globus CA:sign``, ``cond_subjects globus '"/C=XX/*"'``), used for an issuer only when
  no namespaces file names that issuer.

A plain ``ca_file`` (a PEM bundle) has no namespaces; its CRLs are checked only when a
``crl_file`` is given.

``TrustStore.check(cert, purpose)`` walks from the presented certificate to a self-signed CA of
the store and checks, for every certificate on the way: validity now; the issuer (name, and the
signature by its key; the issuer must be a CA); the issuer's CRL (revoked: refused; CRL missing or
past its nextUpdate: see ``crl`` below; the CRL's own signature is checked when it is loaded); the
issuer's namespace. For the presented certificate it also checks the key usage its purpose needs:
``signer``: keyUsage digitalSignature (when the certificate has a keyUsage); ``server``:
extendedKeyUsage serverAuth (when it has one) and keyUsage digitalSignature, keyEncipherment or
keyAgreement (when it has one). Neither may be a CA certificate.

Every refusal is an ``Untrusted`` whose ``reason`` is a short code and whose message names the CA,
the DN and the rule, DNs in the OpenSSL one-line form the policy files use
(``/C=XX/O=Site1/CN=host``). A ``/`` or ``\\`` inside a value is written ``\\/`` / ``\\\\`` so that a
value cannot pose as further attributes (``O=Site1/CN=x`` is not ``/O=Site1/CN=x``); characters
outside printable ASCII are written ``\\xHH`` per UTF-8 byte, as OpenSSL does. Matching of DNs
against the policy files ignores case; ``*`` matches any run of characters, ``?`` one.

``crl`` (what a CA without a usable CRL means):

* ``require`` (default): a certificate whose issuer has no CRL, or only one past its nextUpdate, is
  refused (``crl-missing``, ``crl-expired``). This is what OpenSSL and Globus do when CRL checking
  is on. IGTF CRLs are valid for days while fetch-crl refreshes them every few hours, so a refusal
  means fetch-crl has been failing for days; during that time a newly revoked (stolen) key would
  still be accepted, which is the one thing a CRL exists to stop. The refusals are counted and
  name the CA, so the fault is seen.
* ``if-present``: such a certificate is accepted (a warning is logged once per CA and reload).

A certificate on a CRL is refused in both modes, even when that CRL has expired.

``namespaces`` (what an issuer that no namespaces/signing_policy file names means, in a CA
directory): ``require`` (default; such a CA may issue nothing) or ``if-present`` (it may issue any
DN). A policy file that cannot be read refuses every certificate of its CA in both modes.

Reloading: ``check`` looks at the files' names, sizes and mtimes at most every
``reload_interval`` seconds and re-reads everything when they changed (fetch-crl replaces a CRL,
the IGTF package adds a CA); a reload that fails keeps the previous state and logs why.

Bounded work: a certificate path is at most MAX_CHAIN long, every file read is capped in size,
and DN matching is a left-to-right scan per ``*`` segment, not a backtracking regex.

``cryptography`` is imported lazily (only signatures and TLS checks need it) and only what Debian
12's python3-cryptography 38 offers is used (no ``verify_directly_issued_by``, no ``*_utc``
attributes before 42).
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import logging
import os
import re
import threading
import time
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

log = logging.getLogger(__name__)

PURPOSES = ("signer", "server")
CRL_MODES = ("require", "if-present")
NAMESPACE_MODES = ("require", "if-present")
MAX_CHAIN = 8
MAX_PEER_CERTIFICATES = 10
MAX_CERT_FILE = 1 << 20
MAX_POLICY_FILE = 1 << 20
MAX_CRL_FILE = 64 << 20          # some IGTF CRLs list tens of thousands of serials
SETTLE_SECONDS = 2.0             # a changed file is loaded once it has not changed for this long
CRL_CLOCK_SKEW = datetime.timedelta(minutes=5)   # a CRL issued this far in the future still counts
WEAK_HASHES = ("md5", "sha1")     # a certificate signed with one is refused (the root's own aside)

_CA_FILE = re.compile(r"^([0-9a-f]{8})\.[0-9]+$")
_CRL_FILE = re.compile(r"^([0-9a-f]{8})\.r[0-9]+$")
_POLICY_FILE = re.compile(r"^([0-9a-f]{8})\.(namespaces|signing_policy)$")


class Untrusted(Exception):
    """A certificate the store does not believe: ``reason`` is a short code
    (``ca-unknown``, ``ca-signature``, ``ca-constraints``, ``cert-validity``, ``crl-revoked``,
    ``crl-missing``, ``crl-expired``, ``ca-namespace``, ``key-usage``, ``chain-too-long``,
    ``bad-certificate``); ``message`` names the CA, the DN and the rule."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclasses.dataclass(frozen=True)
class Checked:
    """What a successful check found: the subject and the CA that issued it (one-line DNs)."""
    subject: str
    issuer: str


_CRYPTO = None


def _crypto():
    global _CRYPTO
    if _CRYPTO is None:
        _CRYPTO = _import_crypto()
    return _CRYPTO


def _import_crypto():
    try:
        from cryptography import x509
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
    except ImportError:   # pragma: no cover - a test extra and a Debian Recommends
        raise RuntimeError("certificate checks need the 'cryptography' package (Debian: python3-cryptography)") from None
    return x509, InvalidSignature, hashes, serialization, ec, ed448, ed25519, padding, rsa


# --- names -------------------------------------------------------------------------------------

_SHORT_NAMES = {
    "2.5.4.6": "C", "2.5.4.8": "ST", "2.5.4.7": "L", "2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.3": "CN",
    "0.9.2342.19200300.100.1.25": "DC", "0.9.2342.19200300.100.1.1": "UID",
    "1.2.840.113549.1.9.1": "emailAddress", "2.5.4.5": "serialNumber", "2.5.4.4": "SN", "2.5.4.42": "GN",
    "2.5.4.12": "title", "2.5.4.9": "street", "2.5.4.17": "postalCode", "2.5.4.41": "name",
    "2.5.4.46": "dnQualifier", "2.5.4.43": "initials", "2.5.4.44": "generationQualifier",
    "2.5.4.65": "pseudonym", "2.5.4.15": "businessCategory",
}
# Other spellings of attribute names found in policy files, folded to the names above.
_ALIASES = re.compile(r"/(email|e|userid)=", re.IGNORECASE)
_ALIAS_TARGET = {"email": "emailAddress", "e": "emailAddress", "userid": "UID"}


def _escape_value(value) -> str:
    if isinstance(value, bytes):          # a BIT STRING attribute (x500UniqueIdentifier)
        return "#" + value.hex()
    out = []
    for char in value:
        if char in "/\\":
            out.append("\\" + char)
        elif " " <= char <= "~":
            out.append(char)
        else:
            out.extend(f"\\x{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
    return "".join(out)


def openssl_dn(name) -> str:
    """``name`` (an x509.Name) in the OpenSSL one-line form, ``/C=XX/O=Org/CN=host``."""
    return "".join(f"/{_SHORT_NAMES.get(attribute.oid.dotted_string, attribute.oid.dotted_string)}="
                   f"{_escape_value(attribute.value)}"
                   for rdn in name.rdns for attribute in rdn)


def _policy_dn(text: str) -> str:
    """A DN (or pattern) from a policy file, folded for comparison."""
    return _ALIASES.sub(lambda m: f"/{_ALIAS_TARGET[m.group(1).lower()]}=", text).casefold()


class _Glob:
    """``*`` and ``?`` matching without backtracking: the star-free parts between stars are
    found left to right (the leftmost place is always right when only stars separate them);
    each part is a regex of literal characters and ``.``, so each search is linear."""

    def __init__(self, pattern: str):
        self.text = pattern
        parts = pattern.split("*")
        self.parts = [re.compile(".".join(re.escape(piece) for piece in part.split("?")), re.DOTALL)
                      for part in parts]
        self.last_length = len(parts[-1])       # '?' and every literal character are one character

    def matches(self, text: str) -> bool:
        if len(self.parts) == 1:
            return self.parts[0].fullmatch(text) is not None
        head = self.parts[0].match(text)
        tail_start = len(text) - self.last_length
        if head is None or tail_start < head.end() or self.parts[-1].fullmatch(text, tail_start) is None:
            return False
        position = head.end()
        for part in self.parts[1:-1]:
            found = part.search(text, position, tail_start)
            if found is None:
                return False
            position = found.end()
        return True


@dataclasses.dataclass(frozen=True)
class _Rule:
    permit: bool
    glob: _Glob
    origin: str            # "namespaces of 1a2b3c4d"


# --- policy files ------------------------------------------------------------------------------

_NS_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')


def _strip_comment(line: str) -> str:
    quoted = escaped = False
    for index, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:index]
    return line


def parse_namespaces(text: str) -> List[Tuple[Optional[str], bool, str]]:
    """(issuer DN or None for SELF, permit, subject pattern) per policy line of a namespaces file;
    ValueError naming the line if one cannot be read."""
    rules, pending, first_line = [], "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw).rstrip()
        if not pending:
            first_line = number
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending += line[:-1] + " "
            continue
        entry, pending = (pending + line).strip(), ""
        if not entry:
            continue
        tokens = [(quoted, bare) for quoted, bare in _NS_TOKEN.findall(entry)]
        words = [bare.upper() if bare else None for _, bare in tokens]
        if (len(tokens) != 6 or words[0] != "TO" or words[1] != "ISSUER" or words[3] not in ("PERMIT", "DENY")
                or words[4] != "SUBJECT" or words[5] is not None or (words[2] is not None and words[2] != "SELF")):
            raise ValueError(f"line {first_line}: expected TO Issuer \"DN\"|SELF PERMIT|DENY Subject \"DN\": "
                             f"{entry[:120]!r}")
        issuer = None if words[2] == "SELF" else tokens[2][0]
        rules.append((issuer, words[3] == "PERMIT", tokens[5][0]))
    return rules


_SP_TOKEN = re.compile(r"'([^']*)'|(\S+)")


def parse_signing_policy(text: str) -> List[Tuple[str, str]]:
    """(issuer DN, subject pattern) per permitted pattern of a Globus signing_policy file;
    ValueError if one cannot be read."""
    tokens = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            tokens.extend(quoted if quoted or not bare else bare for quoted, bare in _SP_TOKEN.findall(line))
    if len(tokens) % 3:
        raise ValueError("expected lines of three fields (keyword, type, value)")
    issuer, may_sign, permitted = None, False, []
    for index in range(0, len(tokens), 3):
        keyword, kind, value = tokens[index].lower(), tokens[index + 1].lower(), tokens[index + 2]
        if keyword == "access_id_ca":
            if kind != "x509":
                raise ValueError(f"access_id_CA of type {kind!r}, expected X509")
            issuer, may_sign = value, False
        elif keyword == "pos_rights":
            may_sign = may_sign or (kind == "globus" and value.lower() == "ca:sign")
        elif keyword == "cond_subjects":
            if issuer is None:
                raise ValueError("cond_subjects before access_id_CA")
            if may_sign and kind == "globus":
                patterns = re.findall(r'"([^"]*)"', value) or value.split()
                permitted.extend((issuer, pattern) for pattern in patterns)
        else:
            raise ValueError(f"unknown keyword {tokens[index]!r}")
    return permitted


# --- the store ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Authority:
    cert: object
    public_key: object            # loaded once: OpenSSL 3 takes ~1 ms to load an EC key
    dn: str
    hashes: Tuple[str, ...]       # the hash names it was found under ("" for a ca_file)
    label: str                    # where it came from, for messages
    key_id: bytes                 # subject DER + public key DER, to match CRLs
    self_signed: bool


@dataclasses.dataclass(frozen=True)
class _Crl:
    revoked: FrozenSet[int]
    next_update: Optional[datetime.datetime]
    last_update: datetime.datetime
    label: str


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    by_subject: Dict[bytes, Tuple[_Authority, ...]]
    crls: Dict[bytes, _Crl]
    namespaces: Dict[str, Tuple[_Rule, ...]]
    signing_policies: Dict[str, Tuple[_Rule, ...]]
    broken: Dict[str, str]                 # "<hash>.namespaces" -> why it was not read
    orphan_crls: Dict[bytes, Tuple]        # issuer name DER -> CRLs of CAs not here (a peer may send the CA)
    has_crls: bool                         # a CRL source is configured (ca_dir or crl_file)
    has_namespaces: bool                   # namespaces apply (ca_dir)
    count: int
    problems: Tuple[str, ...]


def _read(path: str, limit: int) -> bytes:
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    return data


def _utc(value: Optional[datetime.datetime]) -> Optional[datetime.datetime]:
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value


def validity(cert) -> Tuple[datetime.datetime, datetime.datetime]:
    """(not before, not after) as aware UTC datetimes, with cryptography 38 to current."""
    start = getattr(cert, "not_valid_before_utc", None)
    if start is not None:
        return start, cert.not_valid_after_utc
    return _utc(cert.not_valid_before), _utc(cert.not_valid_after)   # < 42: naive UTC


def _crl_dates(crl) -> Tuple[datetime.datetime, Optional[datetime.datetime]]:
    last = getattr(crl, "last_update_utc", None)
    if last is not None:
        return last, crl.next_update_utc
    return _utc(crl.last_update), _utc(crl.next_update)


def _partial_crl(x509, crl) -> str:
    """Why ``crl`` is not a CA's complete CRL ("" if it is): a delta CRL or one of a limited
    scope (issuingDistributionPoint) lists only some revocations, and taken as the whole CRL
    it hid the base CRL's (review 2026-12-05); an unknown critical extension may change its
    meaning likewise."""
    oid = x509.oid.ExtensionOID
    for extension in crl.extensions:
        if extension.oid == oid.DELTA_CRL_INDICATOR:
            return "a delta CRL"
        if extension.oid == oid.ISSUING_DISTRIBUTION_POINT:
            return "a CRL of a limited scope (issuingDistributionPoint)"
        if extension.critical and extension.oid not in (oid.CRL_NUMBER, oid.AUTHORITY_KEY_IDENTIFIER):
            return f"a CRL with a critical extension the bridge does not process ({extension.oid.dotted_string})"
    return ""


def _split_pem(data: bytes, kind: bytes) -> List[bytes]:
    begin, end = b"-----BEGIN " + kind + b"-----", b"-----END " + kind + b"-----"
    blocks = []
    for chunk in data.split(begin)[1:]:
        if end in chunk:
            blocks.append(begin + chunk.split(end)[0] + end + b"\n")
    return blocks


def _key_id(x509_module, serialization, cert) -> bytes:
    public = cert.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(_frame(cert.subject.public_bytes()) + _frame(public)).digest()


def _frame(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


def verify_signed_by(public_key, signature: bytes, data: bytes, hash_algorithm, pss: bool = False) -> None:
    """Raise InvalidSignature (or ValueError/TypeError) unless ``signature`` is ``public_key``'s
    over ``data``; RSA (PKCS#1 v1.5 or PSS), ECDSA, Ed25519 and Ed448 keys."""
    _, _, _, _, ec, ed448, ed25519, padding, rsa = _crypto()
    if isinstance(public_key, rsa.RSAPublicKey):
        scheme = (padding.PSS(mgf=padding.MGF1(hash_algorithm), salt_length=padding.PSS.AUTO) if pss
                  else padding.PKCS1v15())
        public_key.verify(signature, data, scheme, hash_algorithm)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, data, ec.ECDSA(hash_algorithm))
    elif isinstance(public_key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        public_key.verify(signature, data)
    else:
        raise ValueError(f"unsupported key type {type(public_key).__name__}")


_RSASSA_PSS = "1.2.840.113549.1.1.10"


def _issued_by(cert, issuer_key) -> bool:
    """True if ``issuer_key`` made ``cert``'s signature."""
    InvalidSignature = _crypto()[1]
    try:
        verify_signed_by(issuer_key, cert.signature, cert.tbs_certificate_bytes,
                         cert.signature_hash_algorithm, cert.signature_algorithm_oid.dotted_string == _RSASSA_PSS)
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


@functools.lru_cache(maxsize=1)
def _known_critical():
    oid = _crypto()[0].oid.ExtensionOID
    return frozenset((oid.BASIC_CONSTRAINTS, oid.KEY_USAGE, oid.EXTENDED_KEY_USAGE,
                      oid.SUBJECT_ALTERNATIVE_NAME, oid.NAME_CONSTRAINTS))


def _check_link(cert, dn: str) -> None:
    """What RFC 5280 asks of every certificate of a path but the trust anchor: no critical
    extension left unprocessed, and a signature hash that is not broken (review 2026-12-05:
    both were accepted)."""
    known = _known_critical()
    for extension in cert.extensions:
        if extension.critical and extension.oid not in known:
            raise Untrusted("bad-certificate", f"{dn!r} has a critical extension the bridge does not process "
                                               f"({extension.oid.dotted_string})")
    algorithm = cert.signature_hash_algorithm
    if algorithm is not None and algorithm.name in WEAK_HASHES:
        raise Untrusted("ca-signature", f"{dn!r} is signed with {algorithm.name.upper()}, which is broken")


def _check_name_constraints(issuer: "_Authority", below: Sequence) -> None:
    """The issuer's nameConstraints (RFC 5280 4.2.1.10) on the subjects of the certificates
    below it (``below``: x509.Name objects, the end entity first). Only directoryName subtrees
    are evaluated: a CA that constrains other name forms is refused rather than trusted blind."""
    x509 = _crypto()[0]
    constraints = _extension(issuer.cert, x509.NameConstraints)
    if constraints is None:
        return
    permitted = list(constraints.permitted_subtrees or ())
    excluded = list(constraints.excluded_subtrees or ())
    if any(not isinstance(name, x509.DirectoryName) for name in permitted + excluded):
        raise Untrusted("ca-constraints", f"CA {issuer.dn!r} constrains names other than directory names "
                                          f"(nameConstraints), which the bridge does not evaluate")

    def within(subject, subtree) -> bool:
        prefix = list(subtree.value.rdns)
        return list(subject.rdns)[:len(prefix)] == prefix
    for subject in below:
        if any(within(subject, subtree) for subtree in excluded) or (
                permitted and not any(within(subject, subtree) for subtree in permitted)):
            raise Untrusted("ca-constraints", f"CA {issuer.dn!r} may not issue {openssl_dn(subject)!r} "
                                              f"(nameConstraints)")


def _extension(cert, kind):
    x509 = _crypto()[0]
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


class TrustStore:
    """The CAs a bridge believes, with their CRLs and namespaces; reloads itself when the files
    change. Thread-safe: a check reads one immutable snapshot."""

    def __init__(self, ca_dir: str = "", ca_file: str = "", crl_file: str = "", crl: str = "require",
                 namespaces: str = "require", reload_interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        if bool(ca_dir) == bool(ca_file):
            raise ValueError("give either a CA directory or a CA file")
        if crl not in CRL_MODES or namespaces not in NAMESPACE_MODES:
            raise ValueError(f"crl must be one of {CRL_MODES}, namespaces one of {NAMESPACE_MODES}")
        if crl_file and ca_dir:
            raise ValueError("a CA directory has its CRLs as <hash>.r0; crl_file goes with a CA file")
        self.ca_dir, self.ca_file, self.crl_file = ca_dir, ca_file, crl_file
        self.crl_mode, self.namespace_mode = crl, namespaces
        self.reload_interval, self._clock = reload_interval, clock
        self._lock = threading.Lock()
        self._warned: set = set()
        self._stamp = self._file_stamp()
        self._snapshot = self._load()
        self._next_look = clock() + reload_interval

    @classmethod
    def from_settings(cls, ca_file: str, ca_dir: str, rules) -> "TrustStore":
        """From a config.TrustRules and the CA file or directory beside it."""
        return cls(ca_dir=ca_dir, ca_file=ca_file, crl_file=rules.crl_file, crl=rules.crl,
                   namespaces=rules.namespaces, reload_interval=rules.reload_interval)

    # -- loading --

    def _paths(self) -> List[str]:
        if self.ca_file:
            return [path for path in (self.ca_file, self.crl_file) if path]
        return [os.path.join(self.ca_dir, name) for name in sorted(os.listdir(self.ca_dir))
                if _CA_FILE.match(name) or _CRL_FILE.match(name) or _POLICY_FILE.match(name)]

    @staticmethod
    def _settling(stamp: Tuple) -> bool:
        """A file of ``stamp`` changed less than SETTLE_SECONDS ago."""
        recent = (time.time() - SETTLE_SECONDS) * 1e9
        return any(len(item) == 4 and item[3] > recent for item in stamp)

    def _file_stamp(self) -> Tuple:
        try:
            paths = self._paths()
        except OSError as exc:       # the directory is gone or unreadable: keep what we have
            return (("unreadable", str(exc)),)
        stamp = []
        for path in paths:
            try:
                status = os.stat(path)
            except OSError:
                continue
            stamp.append((path, status.st_ino, status.st_size, status.st_mtime_ns))
        return tuple(stamp)

    def _load(self) -> _Snapshot:
        x509, _, _, serialization = _crypto()[:4]
        problems: List[str] = []
        authorities: Dict[bytes, _Authority] = {}      # by DER, so hash links count once
        hashes: Dict[bytes, List[str]] = {}
        crl_blobs: List[Tuple[str, bytes]] = []
        policies: List[Tuple[str, str, str]] = []      # (hash, kind, path)
        if self.ca_file:
            cert_blobs = [(os.path.basename(self.ca_file), "", block)
                          for block in _split_pem(_read(self.ca_file, MAX_CRL_FILE), b"CERTIFICATE")]
            if self.crl_file:
                crl_data = _read(self.crl_file, MAX_CRL_FILE)
                crl_blobs = [(os.path.basename(self.crl_file), block)
                             for block in _split_pem(crl_data, b"X509 CRL")] or [(os.path.basename(self.crl_file), crl_data)]
        else:
            cert_blobs = []
            for path in self._paths():
                name = os.path.basename(path)
                try:
                    if _CA_FILE.match(name):
                        cert_blobs.extend((name, name[:8], block)
                                          for block in _split_pem(_read(path, MAX_CERT_FILE), b"CERTIFICATE")[:1])
                    elif _CRL_FILE.match(name):
                        crl_blobs.append((name, _read(path, MAX_CRL_FILE)))
                    else:
                        match = _POLICY_FILE.match(name)
                        policies.append((match.group(1), match.group(2), path))
                except (OSError, ValueError) as exc:
                    problems.append(f"{name}: {exc}")
        for label, hash_name, block in cert_blobs:
            try:
                cert = x509.load_pem_x509_certificate(block)
                der = cert.public_bytes(serialization.Encoding.DER)
                if der not in authorities:
                    key = cert.public_key()
                    authorities[der] = _Authority(cert, key, openssl_dn(cert.subject), (), label,
                                                  _key_id(x509, serialization, cert),
                                                  cert.issuer == cert.subject and _issued_by(cert, key))
                if hash_name:
                    hashes.setdefault(der, []).append(hash_name)
            except Exception as exc:     # noqa: BLE001 - one bad file must not hide the other CAs
                problems.append(f"{label}: not a usable certificate ({type(exc).__name__}: {exc})")
        if not authorities:
            raise ValueError(f"no CA certificates in {self.ca_file or self.ca_dir}")
        by_subject: Dict[bytes, List[_Authority]] = {}
        by_hash: Dict[str, List[_Authority]] = {}
        for der, authority in authorities.items():
            authority = dataclasses.replace(authority, hashes=tuple(hashes.get(der, ())))
            by_subject.setdefault(authority.cert.subject.public_bytes(), []).append(authority)
            for hash_name in authority.hashes:
                by_hash.setdefault(hash_name, []).append(authority)
        crls, orphans = self._load_crls(x509, crl_blobs, by_subject, problems)
        namespaces, signing_policies, broken = self._load_policies(policies, by_hash, problems)
        for problem in problems:
            log.warning("CA %s: %s", self.ca_dir or self.ca_file, problem)
        return _Snapshot({key: tuple(value) for key, value in by_subject.items()}, crls, namespaces,
                         signing_policies, broken, orphans, bool(self.ca_dir or self.crl_file), bool(self.ca_dir),
                         len(authorities), tuple(problems))

    @staticmethod
    def _load_crls(x509, blobs, by_subject, problems):
        crls: Dict[bytes, _Crl] = {}
        orphans: Dict[bytes, List] = {}
        for label, data in blobs:
            try:
                crl = (x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----BEGIN")
                       else x509.load_der_x509_crl(data))
                scope = _partial_crl(x509, crl)
                if scope:
                    problems.append(f"{label}: {scope}: not used (only complete CRLs are)")
                    continue
                last, following = _crl_dates(crl)
                issuer_name = crl.issuer.public_bytes()
                candidates = by_subject.get(issuer_name, ())
                signers = [a for a in candidates if crl.is_signature_valid(a.public_key)]
                entry = _Crl(frozenset(revoked.serial_number for revoked in crl), following, last, label)
            except Exception as exc:     # noqa: BLE001
                problems.append(f"{label}: not a usable CRL ({type(exc).__name__}: {exc})")
                continue
            if not candidates:           # its CA may come from a peer: checked against it then
                orphans.setdefault(issuer_name, []).append((crl, entry))
            elif not signers:
                problems.append(f"{label}: CRL of {openssl_dn(crl.issuer)!r} is not signed by that CA; ignored")
            for authority in signers:
                known = crls.get(authority.key_id)
                if known is None or known.last_update < entry.last_update:
                    crls[authority.key_id] = entry
        return crls, {key: tuple(value) for key, value in orphans.items()}

    @staticmethod
    def _load_policies(files, by_hash, problems):
        namespaces: Dict[str, List[_Rule]] = {}
        signing: Dict[str, List[_Rule]] = {}
        broken: Dict[str, str] = {}
        for hash_name, kind, path in files:
            origin = f"{kind} of {hash_name}"
            named = set()
            try:
                text = _read(path, MAX_POLICY_FILE).decode("utf-8", "replace")
                if kind == "namespaces":
                    for issuer, permit, pattern in parse_namespaces(text):
                        owners = [a.dn for a in by_hash.get(hash_name, ())] if issuer is None else [issuer]
                        for owner in owners:
                            named.add(_policy_dn(owner))
                            namespaces.setdefault(_policy_dn(owner), []).append(
                                _Rule(permit, _Glob(_policy_dn(pattern)), origin))
                else:
                    for issuer, pattern in parse_signing_policy(text):
                        named.add(_policy_dn(issuer))
                        signing.setdefault(_policy_dn(issuer), []).append(
                            _Rule(True, _Glob(_policy_dn(pattern)), origin))
            except (OSError, ValueError) as exc:
                broken[f"{hash_name}.{kind}"] = f"{os.path.basename(path)} cannot be read: {exc}"
                problems.append(broken[f"{hash_name}.{kind}"])
                continue
            own = {_policy_dn(authority.dn) for authority in by_hash.get(hash_name, ())}
            if own and not own & named:
                # Its own CA spelled another way than openssl_dn spells it: without this the CA
                # had no rules, so under namespaces: if-present it could issue any DN (review
                # 2026-12-05). Refused, as for a file that cannot be read.
                broken[f"{hash_name}.{kind}"] = (f"{os.path.basename(path)} names no rule for its CA as the bridge"
                                                 f" spells it ({sorted(own)[0]!r})")
                problems.append(broken[f"{hash_name}.{kind}"])
        return ({key: tuple(value) for key, value in namespaces.items()},
                {key: tuple(value) for key, value in signing.items()}, broken)

    def refresh(self, force: bool = False) -> bool:
        """Re-read the files if they changed (looked at no more than every reload_interval
        seconds unless ``force``); True if a new state was loaded."""
        if not force and self._clock() < self._next_look:
            return False
        with self._lock:
            self._next_look = self._clock() + self.reload_interval
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return False
            # A file written in place (not by rename, as fetch-crl and the IGTF packages do)
            # may be read half written: a CRL then looked missing, a namespaces file lost its
            # DENY lines (review 2026-12-05). Load only files that have not changed for
            # SETTLE_SECONDS, and only a state whose files did not change while it was read.
            if self._settling(stamp):
                self._next_look = self._clock() + SETTLE_SECONDS
                return False
            self._stamp = stamp         # a broken state is retried when the files change again
            try:
                snapshot = self._load()
            except Exception as exc:     # noqa: BLE001 - keep believing what we believed
                log.error("cannot reload the CAs from %s, keeping the previous ones: %s",
                          self.ca_dir or self.ca_file, exc)
                return False
            if self._file_stamp() != stamp:
                self._stamp, self._next_look = None, self._clock() + SETTLE_SECONDS
                return False
            self._snapshot, self._warned = snapshot, set()
            log.info("reloaded the CAs from %s: %d CAs, %d CRLs", self.ca_dir or self.ca_file,
                     snapshot.count, len(snapshot.crls))
            return True

    # -- checking --

    def check(self, cert, purpose: str, now: Optional[datetime.datetime] = None,
              intermediates: Sequence = ()) -> Checked:
        """Checked if ``cert`` (an x509.Certificate) may act as ``purpose`` ("signer" or
        "server"), else raise Untrusted. ``intermediates``: further certificates the peer sent,
        used only to reach a CA of the store (they are checked like every other link)."""
        if purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {PURPOSES}")
        self.refresh()
        snapshot = self._snapshot
        when = now or datetime.datetime.now(datetime.timezone.utc)
        try:
            self._check_purpose(cert, purpose)
            return Checked(openssl_dn(cert.subject), self._check_path(snapshot, cert, when, intermediates))
        except Untrusted:
            raise
        except Exception as exc:     # noqa: BLE001 - odd certificates make cryptography raise many types
            raise Untrusted("bad-certificate", f"the certificate cannot be checked: {type(exc).__name__}: {exc}") from None

    def check_der_chain(self, der_certs: Sequence[bytes], purpose: str = "server",
                        now: Optional[datetime.datetime] = None) -> Checked:
        """check() for a peer's certificates as DER, its own first (e.g. after a TLS handshake:
        ``[ssl_socket.getpeercert(binary_form=True)]``)."""
        x509 = _crypto()[0]
        if not der_certs:
            raise Untrusted("bad-certificate", "the peer sent no certificate")
        try:
            certs = [x509.load_der_x509_certificate(der) for der in list(der_certs)[:MAX_PEER_CERTIFICATES]]
        except Exception as exc:     # noqa: BLE001
            raise Untrusted("bad-certificate", f"the peer's certificate cannot be read: {exc}") from None
        return self.check(certs[0], purpose, now, certs[1:])

    def check_tls_peer(self, ssl_socket, purpose: str = "server",
                       now: Optional[datetime.datetime] = None) -> Checked:
        """check_der_chain() for the peer of a connected ssl.SSLSocket: the chain it sent where
        Python can tell (3.13+: get_unverified_chain), else its certificate alone (the store
        then has to hold every CA up to the root, as IGTF directories do)."""
        chain = getattr(ssl_socket, "get_unverified_chain", None)
        ders = [bytes(der) for der in (chain() or [])] if chain else []      # DER bytes
        return self.check_der_chain(ders or [ssl_socket.getpeercert(binary_form=True) or b""], purpose, now)

    @staticmethod
    def _check_purpose(cert, purpose: str) -> None:
        x509 = _crypto()[0]
        dn, ca = openssl_dn(cert.subject), openssl_dn(cert.issuer)
        constraints = _extension(cert, x509.BasicConstraints)
        if constraints is not None and constraints.ca:
            raise Untrusted("key-usage", f"{dn!r} (CA {ca!r}) is a CA certificate, not a {purpose}")
        usage = _extension(cert, x509.KeyUsage)
        if purpose == "signer":
            if usage is not None and not usage.digital_signature:
                raise Untrusted("key-usage", f"{dn!r} (CA {ca!r}) may not sign: its keyUsage lacks digitalSignature")
            return
        extended = _extension(cert, x509.ExtendedKeyUsage)
        server_auth = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        if extended is not None and server_auth not in extended:
            raise Untrusted("key-usage", f"{dn!r} (CA {ca!r}) is not a TLS server certificate: "
                                         f"its extendedKeyUsage lacks serverAuth")
        if usage is not None and not (usage.digital_signature or usage.key_encipherment or usage.key_agreement):
            raise Untrusted("key-usage", f"{dn!r} (CA {ca!r}) is not a TLS server certificate: its keyUsage "
                                         f"has none of digitalSignature, keyEncipherment, keyAgreement")

    def _check_path(self, snapshot: _Snapshot, cert, when: datetime.datetime, intermediates: Sequence) -> str:
        """The issuer's DN if every link from ``cert`` to a self-signed CA of the store holds."""
        current, first_issuer, below = cert, None, []
        for depth in range(MAX_CHAIN):
            dn = openssl_dn(current.subject)
            start, end = validity(current)
            if not start <= when <= end:
                raise Untrusted("cert-validity", f"{dn!r} (CA {openssl_dn(current.issuer)!r}) is not valid now "
                                                 f"(valid {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC)")
            _check_link(current, dn)
            below.append(current.subject)
            issuer = self._issuer(snapshot, current, intermediates)
            first_issuer = first_issuer or issuer.dn
            # ``depth``: the CA certificates between this issuer and the end entity.
            self._check_ca(issuer, dn, depth)
            _check_name_constraints(issuer, below)
            if current.issuer != current.subject:
                self._check_namespace(snapshot, issuer, dn)
            self._check_crl(snapshot, issuer, current, dn, when)
            if issuer.self_signed and issuer.label:     # a root of the store: the path ends here
                start, end = validity(issuer.cert)
                if not start <= when <= end:
                    raise Untrusted("cert-validity", f"CA {issuer.dn!r} ({issuer.label}) is not valid now, so "
                                                     f"neither is {openssl_dn(cert.subject)!r}")
                return first_issuer
            current = issuer.cert
        raise Untrusted("chain-too-long", f"no self-signed CA within {MAX_CHAIN} links above "
                                          f"{openssl_dn(cert.subject)!r}")

    @staticmethod
    def _issuer(snapshot: _Snapshot, cert, intermediates: Sequence) -> _Authority:
        name = cert.issuer.public_bytes()
        dn, ca = openssl_dn(cert.subject), openssl_dn(cert.issuer)
        candidates = snapshot.by_subject.get(name, ())
        for authority in candidates:
            if _issued_by(cert, authority.public_key):
                return authority
        x509, _, _, serialization = _crypto()[:4]
        for other in intermediates:      # from the peer: never a root, checked as a link
            if other.subject == cert.issuer and other.subject != other.issuer:
                key = other.public_key()
                if _issued_by(cert, key):
                    return _Authority(other, key, openssl_dn(other.subject), (), "",
                                      _key_id(x509, serialization, other), False)
        if candidates:
            raise Untrusted("ca-signature", f"{dn!r} names CA {ca!r} as its issuer, but that CA's key did not "
                                            f"sign it")
        raise Untrusted("ca-unknown", f"{dn!r} is issued by {ca!r}, which is not a trusted CA")

    @staticmethod
    def _check_ca(issuer: _Authority, dn: str, cas_below: int = 0) -> None:
        x509 = _crypto()[0]
        constraints = _extension(issuer.cert, x509.BasicConstraints)
        usage = _extension(issuer.cert, x509.KeyUsage)
        if (constraints is not None and not constraints.ca) or (usage is not None and not usage.key_cert_sign):
            raise Untrusted("ca-constraints", f"{issuer.dn!r} may not issue certificates (basicConstraints/"
                                              f"keyUsage), so it cannot vouch for {dn!r}")
        if constraints is None and not issuer.self_signed:
            raise Untrusted("ca-constraints", f"{issuer.dn!r} is not marked as a CA (no basicConstraints), so it "
                                              f"cannot vouch for {dn!r}")
        if constraints is not None and constraints.path_length is not None and cas_below > constraints.path_length:
            raise Untrusted("ca-constraints", f"{issuer.dn!r} allows {constraints.path_length} CA(s) below it "
                                              f"(pathLenConstraint), and {cas_below} stand between it and the "
                                              f"certificate")

    def _check_namespace(self, snapshot: _Snapshot, issuer: _Authority, dn: str) -> None:
        if not snapshot.has_namespaces:
            return
        where = "/".join(issuer.hashes) or issuer.label or "peer"
        key = _policy_dn(issuer.dn)
        # A policy file of this CA that cannot be read refuses (it might have said no); a
        # signing_policy counts only where no namespaces file names the CA.
        for kind, table in (("namespaces", snapshot.namespaces), ("signing_policy", snapshot.signing_policies)):
            for hash_name in issuer.hashes:
                problem = snapshot.broken.get(f"{hash_name}.{kind}")
                if problem:
                    raise Untrusted("ca-namespace", f"CA {issuer.dn!r} may not issue {dn!r}: {problem}")
            rules = table.get(key)
            if rules:
                break
        if not rules:
            if self.namespace_mode == "if-present":
                self._warn_once(("namespace", issuer.dn), "CA %r has no .namespaces or .signing_policy: it may "
                                                           "issue any DN (namespaces: if-present)", issuer.dn)
                return
            raise Untrusted("ca-namespace", f"CA {issuer.dn!r} may not issue {dn!r}: no .namespaces or "
                                            f".signing_policy names this CA ({where}; namespaces: require)")
        folded = dn.casefold()
        for rule in rules:
            if not rule.permit and rule.glob.matches(folded):
                raise Untrusted("ca-namespace", f"CA {issuer.dn!r} may not issue {dn!r} (DENY Subject "
                                                f"{rule.glob.text!r}, {rule.origin})")
        if not any(rule.permit and rule.glob.matches(folded) for rule in rules):
            raise Untrusted("ca-namespace", f"CA {issuer.dn!r} may not issue {dn!r} ({rules[0].origin})")

    def _check_crl(self, snapshot: _Snapshot, issuer: _Authority, cert, dn: str, when: datetime.datetime) -> None:
        if not snapshot.has_crls:
            return
        crl = snapshot.crls.get(issuer.key_id)
        if crl is None and not issuer.label:     # a CA the peer sent: its CRL, if here, is checked now
            usable = [entry for candidate, entry in snapshot.orphan_crls.get(issuer.cert.subject.public_bytes(), ())
                      if candidate.is_signature_valid(issuer.public_key)]
            crl = max(usable, key=lambda entry: entry.last_update, default=None)
        if crl is None:
            if self.crl_mode == "require":
                raise Untrusted("crl-missing", f"CA {issuer.dn!r} has no CRL here ({'/'.join(issuer.hashes) or issuer.label or 'sent by the peer'}"
                                               f"), so {dn!r} cannot be checked for revocation (crl: require; "
                                               f"is fetch-crl running?)")
            self._warn_once(("crl-missing", issuer.dn), "CA %r has no CRL: its certificates are accepted "
                                                         "unchecked (crl: if-present)", issuer.dn)
            return
        if cert.serial_number in crl.revoked:
            raise Untrusted("crl-revoked", f"CA {issuer.dn!r} revoked {dn!r} (serial {cert.serial_number:X}, "
                                           f"{crl.label})")
        # Not current: expired, without a nextUpdate (RFC 5280 requires one: such a CRL can
        # never be known current), or issued in the future (a wrong clock on either side).
        if crl.next_update is None:
            stale = "has no nextUpdate"
        elif when > crl.next_update:
            stale = f"expired {crl.next_update:%Y-%m-%d %H:%M} UTC"
        elif crl.last_update > when + CRL_CLOCK_SKEW:
            stale = f"is not valid before {crl.last_update:%Y-%m-%d %H:%M} UTC"
        else:
            return
        if self.crl_mode == "require":
            raise Untrusted("crl-expired", f"the CRL of CA {issuer.dn!r} ({crl.label}) {stale}, so {dn!r} cannot "
                                           f"be checked for revocation (crl: require; is fetch-crl running?)")
        self._warn_once(("crl-expired", issuer.dn), "the CRL of CA %r is not current (%s): accepting its "
                                                     "certificates anyway (crl: if-present)", issuer.dn, stale)

    def _warn_once(self, key, text: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(text, *args)
