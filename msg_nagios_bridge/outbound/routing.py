"""Outbound routing: which results go where, in which format, with which headers.

Pure functions over values: no sockets, files or clock.
"""
from __future__ import annotations

import fnmatch
import functools
import hashlib
import re
import string
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from ..config import ConfigError, Route, Settings, Site
from ..formats import json as json_format
from ..formats import wlcg
from .. import spool
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
    fixed = _shared(route, site).destination      # the same for every result
    if fixed is not None:
        return fixed
    values = dict(_site_values(site), host=result.host, service=result.service or wlcg.HOST_METRIC_NAME,
                  flavour=result.attributes.get("flavour", "unknown"), status=wlcg.metric_status(result))
    return _fill(route.destination, values)


def _site_values(site: Site) -> Dict[str, str]:
    return {"site": site.name, "role": site.role, "vo": site.vo or "none"}


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
    shared = _shared(route, site)
    result_id = result.identity()
    metric = result.service or wlcg.HOST_METRIC_NAME
    status = wlcg.metric_status(result)
    check_time = str(int(result.timestamp))
    headers = {
        "persistent": "true",
        "content-type": content_type,
        "site": site.name,
        "role": site.role,
        "nagios_host": site.nagios_name,
        "host": result.host,
        "metric": metric,
        "status": status,
        "state_type": result.state_type,
        "result_id": result_id,
        "check_time": check_time,
        "route": route.name,
    }
    if site.vo:
        headers["vo"] = site.vo
    group = expires = ""
    if route.message_group:
        group = headers["JMSXGroupID"] = message_group(result)
    if route.ttl and now_ms:
        expires = headers["expires"] = str(now_ms + route.ttl * 1000)
    message_id = hashlib.blake2b(f"{result_id}:{route.name}".encode(), digest_size=16).hexdigest()
    body = encode(result, message_fields(site)).encode("utf-8", "surrogateescape")
    if route.sign and signer is not None:
        headers.update(signer.sign(headers, body))
        lines = None
    else:
        # The spool's header lines made here, where all but the result's names are known to
        # be plain, rather than by spool.headers_text from the dict, which looks at every name
        # and value (docs/performance.md, "a sixth time"). tests/unit/test_routing.py checks
        # that both give one text.
        named = result.host + metric + result.state_type
        lines = None
        if shared.head is not None and named.isascii() and not _NOT_PLAIN.search(named):
            lines = (f"{shared.head}host:{result.host}\nmetric:{metric}\nstatus:{status}\n"
                     f"state_type:{result.state_type}\nresult_id:{result_id}\ncheck_time:{check_time}\n{shared.tail}"
                     + (f"JMSXGroupID:{group}\n" if group else "") + (f"expires:{expires}\n" if expires else ""))
    fixed = shared.destination
    return Message(message_id=message_id, destination=fixed if fixed is not None else destination(route, site, result),
                   headers=headers, body=body, header_lines=lines)


# What keeps a name out of the header lines: the colon headers_text escapes, and what makes it
# store the headers as JSON (besides text that is not ASCII).
_NOT_PLAIN = re.compile(r"[:\\\n\r\x00\x01]")


class _Shared(NamedTuple):
    """What every message of a route from a site shares (_shared)."""
    route: Route            # held: their ids key _SHARED, and stay theirs while they are in it
    site: Site
    head: Optional[str]     # header lines before the result's (None: the spool keeps JSON)
    tail: str               # header lines after them
    destination: Optional[str]  # None: the template has fields of the result


_SHARED: Dict[Tuple[int, int], _Shared] = {}


def _shared(route: Route, site: Site) -> _Shared:
    """Made once for each route and site, and found by their ids: functools.lru_cache would
    hash the frozen dataclasses field by field at every call."""
    shared = _SHARED.get((id(route), id(site)))
    if shared is not None:
        return shared
    head = spool.headers_text({"persistent": "true", "content-type": _ENCODERS[route.format][1],
                               "site": site.name, "role": site.role, "nagios_host": site.nagios_name})
    tail = spool.headers_text(dict({"route": route.name}, **({"vo": site.vo} if site.vo else {})))
    plain = spool.stored_as_lines(head) and spool.stored_as_lines(tail)
    fixed = _SITE_FIELDS.issuperset(_template_fields(route.destination))
    if len(_SHARED) >= 64:      # a router's routes are few; tests make many
        _SHARED.clear()
    shared = _SHARED[id(route), id(site)] = _Shared(
        route, site, head if plain else None, tail, _fill(route.destination, _site_values(site)) if fixed else None)
    return shared


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
