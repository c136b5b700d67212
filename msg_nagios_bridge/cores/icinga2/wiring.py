"""What ``msg-nagios-bridge core-config`` prints for Icinga 2: the ApiUser the bridge logs in as,
with the least permissions its settings need (docs/icinga2.md).

Each permission is needed for its own request (docs/icinga2-notes.md): ``events/CheckResult``
for the event stream and ``objects/query/Host`` / ``objects/query/Service`` for the catch-up
(publish), ``actions/process-check-result`` and the two object queries for the writer (inbound).
A missing one does not show as 403: Icinga answers 404, as for an object that does not exist.
"""
from __future__ import annotations

from typing import List

from ...config import Settings

DEFAULT_USER = "msg-nagios-bridge"


def permissions(settings: Settings) -> List[str]:
    wanted: List[str] = []
    if settings.icinga2.publish:
        wanted.append("events/CheckResult")
    if settings.inbound.enabled:
        wanted.append("actions/process-check-result")
    return wanted + ["objects/query/Host", "objects/query/Service"]


def certificate_cn(path: str) -> str:
    """The subject CN of the PEM certificate ``path``; ValueError if there is none, OSError
    if it cannot be read, ImportError without python3-cryptography."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    with open(path, "rb") as handle:
        certificate = x509.load_pem_x509_certificate(handle.read())
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise ValueError(f"{path} has no CN in its subject")
    return str(names[0].value)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(settings: Settings) -> str:
    s = settings.icinga2
    lines = ["// msg-nagios-bridge: the ApiUser it logs in as, with the least permissions it needs.",
             "// Add this to Icinga 2's configuration (e.g. /etc/icinga2/conf.d/api-users.conf on the",
             "// node whose API the bridge uses: its 'api' feature must be enabled), then check it",
             "// with `icinga2 daemon -C` and reload Icinga 2 (systemctl reload icinga2).", ""]
    if s.cert_file:
        try:
            login = f"  client_cn = {_quoted(certificate_cn(s.cert_file))}"
        except (OSError, ValueError, ImportError) as exc:
            login = (f"  client_cn = \"CHANGE-ME\"   // the CN of {s.cert_file}: cannot read it here"
                     f" ({type(exc).__name__}: {exc})")
        comment = f"  // logs in with the client certificate {s.cert_file}, signed by the CA in {s.ca_file}"
    else:
        login = ("  password = \"CHANGE-ME\"    // the password in the bridge's icinga2.password_file"
                 " (or icinga2.password)")
        comment = "  // logs in with HTTP basic authentication over TLS"
    lines += [f"object ApiUser {_quoted(s.user or DEFAULT_USER)} {{", comment, login,
              "  permissions = [ " + ", ".join(_quoted(p) for p in permissions(settings)) + " ]", "}", ""]
    return "\n".join(lines)
