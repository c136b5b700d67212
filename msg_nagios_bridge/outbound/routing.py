"""Outbound routing: which results go where, in which format, with which headers.

Pure functions over values: no sockets, files or clock.
"""
from __future__ import annotations

import fnmatch
import functools
import hashlib
import re
import string
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..config import ConfigError, Route, Settings, Site
from ..formats import json as json_format
from ..formats import wlcg
from ..model import CheckResult, Message

# Characters that would change a destination's meaning (ActiveMQ uses '.' as the
# hierarchy separator, '*' and '>' as wildcards, ',' to list destinations), and control
# characters (a NUL would end the SEND frame).
_UNSAFE_IN_DESTINATION = re.compile(r"[.\s*>,/:;\\\x00-\x1f\x7f]")
_OPT_OUT = ("0", "no", "false", "off")

_ENCODERS = {"wlcg": (wlcg.encode, "text/plain"), "json": (json_format.encode, "application/json")}


def _matches(name: str, patterns: Sequence[str]) -> bool:
    # "*" matches every name (fnmatch's ".*" with DOTALL): the default route's, asked for
    # every result, without a pattern match each; no patterns (the usual exclude lists)
    # without a generator made to look at none.
    if not patterns:
        return False
    return "*" in patterns or any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def selects(route: Route, result: CheckResult) -> bool:
    """True if ``route`` takes ``result``."""
    if route.hard_only and result.state_type != "HARD":
        return False
    publish = result.attributes.get("publish")
    if publish is not None and publish.strip().lower() in _OPT_OUT:
        return False
    if not _matches(result.host, route.hosts) or _matches(result.host, route.exclude_hosts):
        return False
    if result.is_host_check:
        return route.host_checks
    return _matches(result.service, route.services) and not _matches(result.service, route.exclude_services)


# The destination fields that come from the site, the same for every result.
_SITE_FIELDS = frozenset({"site", "role", "vo"})


def destination(route: Route, site: Site, result: CheckResult) -> str:
    """Fill the route's template; every value has dots and wildcards made ``_``."""
    if _SITE_FIELDS.issuperset(_template_fields(route.destination)):
        return _site_destination(route.destination, site)      # the same for every result
    values = dict(_site_values(site), host=result.host, service=result.service or wlcg.HOST_METRIC_NAME,
                  flavour=result.attributes.get("flavour", "unknown"), status=wlcg.metric_status(result))
    return _fill(route.destination, values)


def _site_values(site: Site) -> Dict[str, str]:
    return {"site": site.name, "role": site.role, "vo": site.vo or "none"}


@functools.lru_cache(maxsize=64)
def _site_destination(template: str, site: Site) -> str:
    """A template with only the site's fields, filled: made once, not for every result."""
    return _fill(template, _site_values(site))


def _fill(template: str, values: Mapping[str, str]) -> str:
    safe = {key: _UNSAFE_IN_DESTINATION.sub("_", values[key]) for key in _template_fields(template)}
    return template.format(**safe)


@functools.lru_cache(maxsize=64)
def _template_fields(template: str) -> Tuple[str, ...]:
    """The fields a destination template uses (config/load.py allows only DESTINATION_FIELDS,
    without specs): only those are made safe, not all seven for every message."""
    return tuple({field for _, field, _, _ in string.Formatter().parse(template) if field})


def message_group(result: CheckResult) -> str:
    """The ActiveMQ message group (``JMSXGroupID``) of ``result``: its host and service, so
    that a queue shared by several consumers hands every result of one object to one consumer,
    in order (docs/scaling.md). No site: two sites' results for the same host and service are
    one object in the receiving Nagios, and its order is what the group must keep."""
    return f"{result.host}!{result.service or wlcg.HOST_METRIC_NAME}"


def message_fields(site: Site) -> Dict[str, str]:
    """The record fields that come from the site, not from the result."""
    return {"siteName": site.name, "gatheredAt": site.nagios_name, "role": site.role, "voName": site.vo}


def build_message(route: Route, site: Site, result: CheckResult, now_ms: int = 0, signer=None) -> Message:
    """The message for ``result`` on ``route``; signed when the route says so (``signer``:
    a signing.Signer)."""
    encode, content_type = _ENCODERS[route.format]
    result_id = result.identity()
    headers = {
        "persistent": "true",
        "content-type": content_type,
        "site": site.name,
        "role": site.role,
        "nagios_host": site.nagios_name,
        "host": result.host,
        "metric": result.service or wlcg.HOST_METRIC_NAME,
        "status": wlcg.metric_status(result),
        "state_type": result.state_type,
        "result_id": result_id,
        "check_time": str(int(result.timestamp)),
        "route": route.name,
    }
    if site.vo:
        headers["vo"] = site.vo
    if route.message_group:
        headers["JMSXGroupID"] = message_group(result)
    if route.ttl and now_ms:
        headers["expires"] = str(now_ms + route.ttl * 1000)
    message_id = hashlib.blake2b(f"{result_id}:{route.name}".encode(), digest_size=16).hexdigest()
    body = encode(result, message_fields(site)).encode("utf-8", "surrogateescape")
    if route.sign and signer is not None:
        headers.update(signer.sign(headers, body))
    return Message(message_id=message_id, destination=destination(route, site, result),
                   headers=headers, body=body)


class Router:
    """Turns a result into the messages its routes ask for.

    ``is_echo`` is the echo guard: results the bridge itself injected into
    Nagios are not published again.
    """

    def __init__(self, settings: Settings, is_echo: Optional[Callable[[CheckResult], bool]] = None):
        self.site = settings.site
        self.routes = settings.routes
        self.is_echo = is_echo
        self.signer = None
        self._signing_routes = frozenset(route.name for route in self.routes if route.sign)
        if self._signing_routes:
            from ..trust.signing import Signer
            signing = settings.signing
            try:
                self.signer = Signer(signing.cert_file, signing.key_file, signing.key_password)
            except (OSError, ValueError, TypeError) as exc:
                # cryptography: ValueError (bad data, wrong password), TypeError (a password
                # missing or not needed); Signer: a key that is not the certificate's.
                raise ConfigError(settings.file, "signing.key_file", signing.key_file,
                                  f"cannot sign with it: {exc}") from None

    def messages(self, result: CheckResult, now_ms: int = 0, sign: bool = True) -> List[Message]:
        """The messages of ``result``, one per route that selects it. ``sign=False`` leaves
        them unsigned for the outbound spool, which signs them with ``signature`` once it has
        numbered them (the number is signed too)."""
        if self.is_echo is not None and self.is_echo(result):
            return []
        signer = self.signer if sign else None
        return [build_message(route, self.site, result, now_ms, signer)
                for route in self.routes if selects(route, result)]

    def signature(self, headers: Mapping[str, str], body: bytes) -> Optional[Mapping[str, str]]:
        """The signature headers for a message of a route that signs, else None."""
        if self.signer is None or headers.get("route") not in self._signing_routes:
            return None
        return self.signer.sign(headers, body)
