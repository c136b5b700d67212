"""One YAML file -> validated, immutable settings.

Every mistake raises ConfigError, which names the file, the key (as a dotted
path such as ``routes[0].destination``), the offending value and why. Unknown
keys are errors too: a typo must not silently fall back to a default.
The example ``etc/msg-nagios-bridge.yaml`` documents every key.
"""
from __future__ import annotations

import contextvars
import dataclasses
import difflib
import errno
import logging
import logging.handlers
import math
import os
import re
import socket
import string
from typing import Any, Callable, Dict, List, Optional, Tuple

import yaml

from ..broker.kinds import ACTIVEMQ, RABBITMQ, KINDS as BROKER_KINDS, settle_seconds
from ..formats import decode as inbound_format
from ..trust.tlsfiles import ca_bundle_from_dir
from ..inbound import policy as policy_module

from .settings import (
    DEFAULT_PATH, MAX_CONFIG_BYTES, DESTINATION_FIELDS, FORMATS, ConfigError, Site, TrustRules,
    TlsSettings, BrokerSettings, SpoolSettings, OcspPipeSettings, PerfdataSettings, Route,
    SigningSettings, SignatureCheck, Subscription, InboundSettings, LOG_LEVELS, LOG_TARGETS,
    LoggingSettings, DaemonSettings, MetricsSettings, Settings, Icinga2Settings, CORES, PREFETCH, _is_secret_key)


# False while a config meant for another machine is checked (check-config --syntax-only): the
# files it names (TLS files, CA directories, password files) are judged by their paths only,
# as they need not exist here.
_LOCAL_FILES = contextvars.ContextVar("local_files", default=True)


class _Section:
    """Reads one mapping of the YAML tree, tracking the dotted key path for errors."""

    def __init__(self, file: str, path: str, data: Any, known: Tuple[str, ...]):
        self.file, self.path = file, path
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(file, path, data, "must be a mapping of keys to values")
        self.data = data
        # Unknown keys first: a typo in a required key is a typo, not a missing key.
        for name in data:
            if name not in known:
                close = difflib.get_close_matches(str(name), known, 1)
                guess = f"did you mean {close[0]}? " if close else ""
                raise self.error(str(name), data[name], f"is not a known key ({guess}known: {', '.join(known)})")

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, value: Any, reason: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), value, reason)

    def get(self, name: str, kind: type, default: Any = dataclasses.MISSING,
            check: Optional[Callable[[Any], Optional[str]]] = None) -> Any:
        if name not in self.data or self.data[name] is None:
            if default is dataclasses.MISSING:
                raise self.error(name, None, "is required")
            return default
        value = self.data[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(name, value, f"must be {_KIND_NAMES.get(kind, kind.__name__)}")
        # Every number of seconds here: .inf or 1e300 would pass "> 0" and then overflow
        # (socket timeouts) or mean "never" (backoff) at run time.
        if kind is float and not (math.isfinite(value) and abs(value) <= MAX_SECONDS):
            raise self.error(name, value, f"must be a number of seconds up to {MAX_SECONDS:.0f} (a day)")
        if kind is str and "\0" in value:
            raise self.error(name, value, "must not contain a NUL character")
        problem = check(value) if check else None
        if problem:
            raise self.error(name, value, problem)
        return value

    def section(self, name: str, known: Tuple[str, ...]) -> "_Section":
        return _Section(self.file, self.key(name), self.data.get(name), known)

    def strings(self, name: str, default: Tuple[str, ...]) -> Tuple[str, ...]:
        value = self.get(name, list, list(default))
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise ConfigError(self.file, f"{self.key(name)}[{index}]", item, "must be non-empty text")
        return tuple(value)


MAX_SECONDS = 86400.0
MAX_CONNECTIONS = 32     # icinga2.connections: more lanes than this only load Icinga's API threads

_KIND_NAMES = {str: "text", int: "a whole number", float: "a number", bool: "true or false",
               list: "a list", dict: "a mapping"}


def _positive(value) -> Optional[str]:
    return None if value > 0 else "must be greater than zero"


def _not_negative(value) -> Optional[str]:
    return None if value >= 0 else "must not be negative"


def _absolute_path(value: str) -> Optional[str]:
    return None if os.path.isabs(value) else "must be an absolute path"


def _one_line(value: str) -> Optional[str]:
    if not value.strip() or any(ord(c) < 32 for c in value):
        return "must be non-empty text on one line"
    return None


def check_destination_template(template: str) -> Optional[str]:
    """None if ``template`` is a usable destination template, else why not."""
    if not template.startswith(("/topic/", "/queue/")):
        return "must start with /topic/ or /queue/"
    if any(c.isspace() or ord(c) < 32 for c in template):
        return "must not contain blanks or control characters"
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"is not a valid template ({exc})"
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        if field not in DESTINATION_FIELDS:
            return f"uses unknown field {{{field}}}; known fields: {', '.join(DESTINATION_FIELDS)}"
        if spec or conversion:
            return f"field {{{field}}} must not have a format spec or conversion"
    return None


def _host_port(file: str, key: str, value: Any) -> Tuple[str, int]:
    if isinstance(value, str) and "://" in value:
        # MSG's own tools write brokers as stomp+ssl://host:port; here TLS is a setting.
        tls = " (for stomp+ssl set brokers.tls.enabled: true)" if key.startswith("brokers.") else ""
        raise ConfigError(file, key, value, f"must be HOST:PORT, without a scheme such as stomp://{tls}")
    if not isinstance(value, str) or value.count(":") != 1:
        raise ConfigError(file, key, value, "must be HOST:PORT")
    host, _, port = value.partition(":")
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ConfigError(file, key, value, "must be HOST:PORT with a port from 1 to 65535")
    return host, int(port)


def _secret(section: _Section, name: str) -> str:
    """A secret given inline, or better read from ``<name>_file``."""
    inline = section.get(name, str, "")
    path = section.get(name + "_file", str, "", _optional_absolute)
    if inline and path:
        raise section.error(name + "_file", path, f"give either {name} or {name}_file, not both")
    if inline:
        _warn_if_readable_by_all(section, name)
    if path and not _LOCAL_FILES.get():
        return f"(read from {path} on the machine that runs the bridge)"
    if path:
        try:
            if os.stat(path).st_mode & 0o004:
                logging.getLogger(__name__).warning(
                    "%s (%s) can be read by every user: chmod o-r it", path, section.key(name + "_file"))
            with open(path, encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError as exc:
            raise section.error(name + "_file", path, f"cannot be read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise section.error(name + "_file", path, "is not UTF-8 text") from None
    return inline


def _site(root: _Section) -> Site:
    sec = root.section("site", ("name", "role", "nagios_name", "vo"))
    site = Site(
        name=sec.get("name", str, check=_one_line),
        role=sec.get("role", str, "site", _one_line),
        nagios_name=sec.get("nagios_name", str, socket.getfqdn(), _one_line),
        vo=sec.get("vo", str, ""),
    )
    return site


def _brokers(root: _Section) -> BrokerSettings:
    sec = root.section("brokers", (
        "hosts", "username", "password", "password_file", "vhost", "heartbeat_ms", "connect_timeout",
        "receipt_timeout", "max_in_flight", "backoff_initial", "backoff_max", "max_refusals", "tls", "kind",
        "settle_seconds"))
    kind = sec.get("kind", str, ACTIVEMQ, lambda v: None if v in BROKER_KINDS else
                   f"must be one of {', '.join(BROKER_KINDS)} (the broker the bridge talks to)")
    raw_hosts = sec.get("hosts", list, check=lambda v: None if v else "must list at least one broker")
    hosts = tuple(_host_port(sec.file, f"{sec.key('hosts')}[{i}]", h) for i, h in enumerate(raw_hosts))
    initial = sec.get("backoff_initial", float, 1.0, _positive)
    settings = BrokerSettings(
        hosts=hosts,
        username=sec.get("username", str, ""),
        password=_secret(sec, "password"),
        # RabbitMQ takes the STOMP host header as its vhost: "/" unless given.
        vhost=sec.get("vhost", str, "/" if kind == RABBITMQ else ""),
        heartbeat_ms=sec.get("heartbeat_ms", int, 10_000,
                             lambda v: None if 0 <= v <= MAX_SECONDS * 1000 else "must be from 0 to 86400000 (a day)"),
        connect_timeout=sec.get("connect_timeout", float, 10.0, _positive),
        receipt_timeout=sec.get("receipt_timeout", float, 30.0, _positive),
        max_in_flight=sec.get("max_in_flight", int, 1000,
                              lambda v: None if 1 <= v <= 100_000 else "must be from 1 to 100000"),
        backoff_initial=initial,
        backoff_max=sec.get("backoff_max", float, 60.0,
                            lambda v: None if v >= initial else "must not be below backoff_initial"),
        max_refusals=sec.get("max_refusals", int, 5, _positive),
        settle_seconds=sec.get("settle_seconds", float, settle_seconds(kind),
                               lambda v: None if 0 <= v <= 3600 else "must be from 0 to 3600 seconds"),
        tls=_tls(sec),
        kind=kind,
    )
    return settings


def _readable_file(value: str) -> Optional[str]:
    if not value:
        return None
    if not os.path.isabs(value):
        return "must be an absolute path"
    if not _LOCAL_FILES.get():
        return None
    if not os.path.isfile(value) or not os.access(value, os.R_OK):
        return "is not a readable file"
    return None


def _ca_dir(value: str) -> Optional[str]:
    if not _LOCAL_FILES.get():
        return None if not value or os.path.isabs(value) else "must be an absolute path"
    if value and not (os.path.isdir(value) and os.access(value, os.R_OK | os.X_OK)):
        return "is not a readable directory"
    try:
        if value:
            ca_bundle_from_dir(value)
    except ValueError as exc:
        return str(exc)
    return None


def _tls(brokers: _Section) -> TlsSettings:
    sec = brokers.section("tls", ("enabled", "ca_file", "ca_dir", "cert_file", "key_file", "key_password",
                                  "key_password_file", "verify") + TRUST_RULE_KEYS)
    settings = TlsSettings(
        enabled=sec.get("enabled", bool, False),
        ca_file=sec.get("ca_file", str, "", _readable_file),
        ca_dir=sec.get("ca_dir", str, "", _ca_dir),
        cert_file=sec.get("cert_file", str, "", _readable_file),
        key_file=sec.get("key_file", str, "", _readable_file),
        key_password=_secret(sec, "key_password"),
        verify=sec.get("verify", bool, True),
        rules=trust_rules(sec),
    )
    if settings.key_file and not settings.cert_file:
        raise sec.error("cert_file", "", "is required with key_file")
    if settings.ca_file and settings.ca_dir:
        raise sec.error("ca_dir", settings.ca_dir, "give either ca_file or ca_dir, not both")
    return settings


MAX_SPOOL_MEGABYTES = 1 << 30     # a petabyte: in bytes, well within SQLite's 64-bit integers


def _megabytes(value: int) -> Optional[str]:
    # The limits are compared in SQL as bytes: a value past 2^43 MiB ("unlimited" typed as
    # many nines) would fail at the first dead letter (OverflowError) and end the part.
    return None if 1 <= value <= MAX_SPOOL_MEGABYTES else f"must be from 1 to {MAX_SPOOL_MEGABYTES} (a petabyte)"


def _spool(root: _Section) -> SpoolSettings:
    sec = root.section("spool", ("directory", "max_messages", "max_megabytes", "max_dead_letter_megabytes"))
    settings = SpoolSettings(
        directory=sec.get("directory", str, "/var/spool/msg-nagios-bridge", _absolute_path),
        max_messages=sec.get("max_messages", int, 1_000_000, _positive),
        max_megabytes=sec.get("max_megabytes", int, 1024, _megabytes),
        max_dead_letter_megabytes=sec.get("max_dead_letter_megabytes", int, 256, _megabytes),
    )
    return settings


def _sources(root: _Section, core: str = "nagios") -> Tuple[OcspPipeSettings, PerfdataSettings]:
    sec = root.section("sources", ("ocsp_pipe", "perfdata"))
    pipe_sec = sec.section("ocsp_pipe", ("enabled", "path", "group", "mode", "max_line_bytes"))
    raw_mode = pipe_sec.data.get("mode")
    if isinstance(raw_mode, int) and not isinstance(raw_mode, bool):
        # YAML reads 0620 unquoted as the octal number 400: "400 must be text" puzzled.
        raise pipe_sec.error("mode", raw_mode, 'must be text: quote it, as in mode: "0620" (YAML reads an'
                                               " unquoted 0620 as the number 400)")
    mode_text = pipe_sec.get("mode", str, "0620",
                             lambda v: None if len(v) == 4 and all(c in "01234567" for c in v)
                             else "must be four octal digits such as 0620")
    mode = int(mode_text, 8)
    if mode & 0o007:
        raise pipe_sec.error("mode", mode_text, "must give others no access to the FIFO")
    pipe = OcspPipeSettings(
        enabled=pipe_sec.get("enabled", bool, core == "nagios"),   # Icinga 2 has no OCSP
        path=pipe_sec.get("path", str, "/run/msg-nagios-bridge/ocsp.fifo", _absolute_path),
        group=pipe_sec.get("group", str, ""),
        mode=mode,
        max_line_bytes=pipe_sec.get("max_line_bytes", int, 1 << 20,
                                    lambda v: None if v >= 4096 else "must be at least 4096"),
    )
    perf_sec = sec.section("perfdata", (
        "enabled", "service_file", "host_file", "poll_interval", "rotate_interval"))
    perf = PerfdataSettings(
        enabled=perf_sec.get("enabled", bool, False),
        service_file=perf_sec.get("service_file", str, "/var/lib/nagios4/msg-service-perfdata", _absolute_path),
        host_file=perf_sec.get("host_file", str, "/var/lib/nagios4/msg-host-perfdata", _absolute_path),
        poll_interval=perf_sec.get("poll_interval", float, 0.2,
                                   lambda v: None if 0.01 <= v <= 60 else "must be from 0.01 to 60 seconds"),
        rotate_interval=perf_sec.get("rotate_interval", int, 3600, _not_negative),
    )
    return pipe, perf


_ROUTE_KEYS = ("name", "destination", "format", "hosts", "services", "exclude_hosts", "exclude_services",
               "hard_only", "host_checks", "ttl", "sign", "message_group")


def _routes(root: _Section) -> Tuple[Route, ...]:
    raw = root.data.get("routes")
    if raw is None:
        raw = [{"name": "results", "destination": "/topic/grid.probe.metricOutput.EGEE.{role}.{site}"}]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(root.file, "routes", raw, "must be a non-empty list of routes")
    routes: List[Route] = []
    names = set()
    for index, item in enumerate(raw):
        sec = _Section(root.file, f"routes[{index}]", item, _ROUTE_KEYS)
        name = sec.get("name", str, check=_one_line)
        if name in names:
            raise sec.error("name", name, "is used by another route")
        names.add(name)
        routes.append(Route(
            name=name,
            destination=sec.get("destination", str, check=check_destination_template),
            format=sec.get("format", str, "wlcg",
                           lambda v: None if v in FORMATS else f"must be one of {', '.join(FORMATS)}"),
            hosts=sec.strings("hosts", ("*",)),
            services=sec.strings("services", ("*",)),
            exclude_hosts=sec.strings("exclude_hosts", ()),
            exclude_services=sec.strings("exclude_services", ()),
            hard_only=sec.get("hard_only", bool, True),
            host_checks=sec.get("host_checks", bool, False),
            ttl=sec.get("ttl", int, 0, _not_negative),
            sign=sec.get("sign", bool, False),
            message_group=sec.get("message_group", bool, True),
        ))
    return tuple(routes)


_INBOUND_KEYS = ("enabled", "subscriptions", "client_id", "prefetch", "ack_delay", "mapping", "policy", "writer",
                 "shared_newest_file",
                 "command_file", "check_result_path", "nagios_lock_file", "error_queue", "signatures",
                 "echo_guard_max_objects", "loss_accounting", "gap_warning_seconds", "gap_critical_seconds")
_MAPPING_KEYS = ("host_from", "service_from", "service_suffix_role", "host_template", "service_template",
                 "max_body_bytes", "max_output_bytes")
WRITERS = ("command_file", "checkresults_dir", "api")


def _optional_absolute(value: str) -> Optional[str]:
    return None if not value or os.path.isabs(value) else "must be an absolute path (or empty)"


def _inbound(root: _Section, site: Site, core: str = "nagios") -> InboundSettings:
    sec = root.section("inbound", _INBOUND_KEYS)
    enabled = sec.get("enabled", bool, False)
    raw_subs = sec.get("subscriptions", list, [])
    subs = []
    for index, item in enumerate(raw_subs):
        sub = _Section(sec.file, f"{sec.key('subscriptions')}[{index}]", item,
                       ("destination", "selector", "durable_name"))
        destination = sub.get("destination", str, check=lambda v: None if v.startswith(SUBSCRIPTION_PREFIXES)
                              and _one_line(v) is None else "must be a /topic/... or /queue/... name")
        durable = sub.get("durable_name", str, "", _one_line_or_empty)
        if durable and not destination.startswith("/topic/"):
            raise sub.error("durable_name", durable, "only topics have durable subscriptions")
        subs.append(Subscription(destination, sub.get("selector", str, "", _one_line_or_empty), durable))
    if enabled and not subs:
        raise sec.error("subscriptions", raw_subs, "inbound is enabled but subscribes to nothing")
    map_sec = sec.section("mapping", _MAPPING_KEYS)
    try:
        mapping = inbound_format.Mapping(
            host_from=map_sec.get("host_from", str, "serviceURI"),
            service_from=map_sec.get("service_from", str, "nagiosName"),
            service_suffix_role=map_sec.get("service_suffix_role", bool, False),
            host_template=map_sec.get("host_template", str, None),
            service_template=map_sec.get("service_template", str, None),
            max_body_bytes=map_sec.get("max_body_bytes", int, 1 << 20),
            max_output_bytes=map_sec.get("max_output_bytes", int, 8192),
        )
    except ValueError as exc:
        raise ConfigError(sec.file, map_sec.path, map_sec.data, str(exc)) from None
    pol_sec = sec.section("policy", ("sender_header", "rules", "objects_cache", "max_age", "max_clock_skew"))
    rules = []
    for index, item in enumerate(pol_sec.get("rules", list, [])):
        rule_sec = _Section(sec.file, f"{pol_sec.key('rules')}[{index}]", item,
                            ("senders", "hosts", "services", "host_checks", "exact_senders"))
        try:
            rules.append(policy_module.Rule(
                senders=rule_sec.strings("senders", ()), hosts=rule_sec.strings("hosts", ("*",)),
                services=rule_sec.strings("services", ("*",)),
                host_checks=rule_sec.get("host_checks", bool, False),
                exact_senders=rule_sec.get("exact_senders", bool, False)))
        except ValueError as exc:
            raise ConfigError(sec.file, rule_sec.path, item, str(exc)) from None
    if enabled and not rules:
        raise pol_sec.error("rules", [], "inbound is enabled but no rule allows any sender "
                                         "(add one, e.g. {senders: ['nagios.site-a.org'], hosts: ['*.site-a.org']}:"
                                         " see the example config and docs/inbound.md)")
    writer = sec.get("writer", str, "api" if core == "icinga2" else "command_file",
                     lambda v: None if v in WRITERS else f"must be one of {', '.join(WRITERS)}")
    if writer == "api" and core != "icinga2":
        raise sec.error("writer", writer, "api is Icinga 2's writer: set core: icinga2, or use command_file")
    check_result_path = sec.get("check_result_path", str, "", _optional_absolute)
    if writer == "checkresults_dir" and not check_result_path:
        raise sec.error("check_result_path", "", "is required when writer is checkresults_dir")
    # Loss accounting (docs/loss-accounting.md); 0 turns a threshold off.
    within = lambda v: None if 0 <= v <= 90 * 86400 else "must be from 0 (off) to 7776000 seconds (90 days)"  # noqa: E731
    gap_warning = sec.get("gap_warning_seconds", int, 300, within)
    gap_critical = sec.get("gap_critical_seconds", int, 0, within)
    if gap_critical and gap_warning and gap_critical < gap_warning:
        raise sec.error("gap_critical_seconds", gap_critical,
                        f"must not be below gap_warning_seconds ({gap_warning}), or be 0 (off)")
    return InboundSettings(
        enabled=enabled,
        subscriptions=tuple(subs),
        client_id=sec.get("client_id", str, f"msg-nagios-bridge-{site.nagios_name}", _one_line),
        prefetch=sec.get("prefetch", int, PREFETCH, lambda v: None if 1 <= v <= 10_000 else "must be from 1 to 10000"),
        ack_delay=sec.get("ack_delay", float, 0.0, lambda v: None if 0 <= v <= 10 else "must be from 0 to 10 (seconds)"),
        mapping=mapping,
        rules=tuple(rules),
        sender_header=pol_sec.get("sender_header", str, "nagios_host", _one_line),
        objects_cache=pol_sec.get("objects_cache", str, "", _optional_absolute),
        writer=writer,
        command_file=sec.get("command_file", str, "/var/lib/nagios4/rw/nagios.cmd", _absolute_path),
        check_result_path=check_result_path,
        nagios_lock_file=sec.get("nagios_lock_file", str, "", _optional_absolute),
        echo_guard_max_objects=sec.get("echo_guard_max_objects", int, 1_000_000, _positive),
        shared_newest_file=sec.get("shared_newest_file", str, "", _optional_absolute),
        error_queue=sec.get("error_queue", str, "",
                            lambda v: None if not v or (v.startswith("/queue/") and _one_line(v) is None)
                            else "must be a /queue/... name (or empty)"),
        signatures=_signature_check(sec),
        # An int: a float of seconds is capped at a day here, and a site may need a week.
        max_age=float(pol_sec.get("max_age", int, 86400, lambda v: None if 60 <= v <= 90 * 86400
                                  else "must be from 60 to 7776000 seconds (90 days)")),
        max_clock_skew=pol_sec.get("max_clock_skew", float, 300.0, _not_negative),
        loss_accounting=sec.get("loss_accounting", bool, True),
        gap_warning_seconds=float(gap_warning),
        gap_critical_seconds=float(gap_critical),
    )


# /amq/queue/ and /exchange/ are RabbitMQ's; _check_for_broker refuses them on ActiveMQ.
SUBSCRIPTION_PREFIXES = ("/topic/", "/queue/", "/amq/queue/", "/exchange/")
# An ActiveMQ virtual topic's consumer queue: /queue/Consumer.<group>.<topic>
_VIRTUAL_TOPIC_QUEUE = re.compile(r"^/queue/Consumer\.[^.]+\.")


def _check_for_broker(file: str, kind: str, inbound: InboundSettings) -> None:
    """Refuse subscriptions the broker kind cannot serve, with what to write instead."""
    durable_names = set()
    for index, sub in enumerate(inbound.subscriptions):
        key = f"inbound.subscriptions[{index}]"
        topic = sub.destination.startswith("/topic/")
        if kind == RABBITMQ:
            if sub.selector:
                raise ConfigError(file, f"{key}.selector", sub.selector,
                                  "RabbitMQ's STOMP has no selectors: remove it, and subscribe to a topic whose "
                                  "routing key selects the messages (e.g. /topic/...ngi.* or /topic/...#)")
            if topic and ">" in sub.destination:
                raise ConfigError(file, f"{key}.destination", sub.destination,
                                  "'>' is ActiveMQ's wildcard: on RabbitMQ (brokers.kind) use '#' (zero or more "
                                  "words of the routing key) or '*' (one word)")
            if sub.durable_name in durable_names:
                # On RabbitMQ the name is the queue's (and the subscription id): two would share one.
                raise ConfigError(file, f"{key}.durable_name", sub.durable_name,
                                  "is used by another subscription: on RabbitMQ it names the durable queue")
            if sub.durable_name:
                durable_names.add(sub.durable_name)
            if _VIRTUAL_TOPIC_QUEUE.match(sub.destination):
                raise ConfigError(file, f"{key}.destination", sub.destination,
                                  "an ActiveMQ virtual topic queue (Consumer.<name>.<topic>) means nothing on "
                                  "RabbitMQ: subscribe to the /topic/ with a durable_name (a durable queue of its "
                                  "own), or to a /queue/ or /amq/queue/ bound to the topic")
        else:
            if sub.destination.startswith(("/amq/queue/", "/exchange/")):
                raise ConfigError(file, f"{key}.destination", sub.destination,
                                  "/amq/queue/ and /exchange/ are RabbitMQ destinations: set brokers.kind: rabbitmq,"
                                  " or use /queue/ or /topic/ on ActiveMQ")
            if topic and "#" in sub.destination:
                raise ConfigError(file, f"{key}.destination", sub.destination,
                                  "'#' is RabbitMQ's wildcard: on ActiveMQ (brokers.kind) use '>' (one or more "
                                  "words) or '*' (one word)")


TRUST_RULE_KEYS = ("crl", "crl_file", "namespaces", "reload_interval")
TRUST_MODES = ("require", "if-present")


def trust_rules(sec: _Section) -> TrustRules:
    """The TRUST_RULE_KEYS of a section that also has ca_file / ca_dir (inbound.signatures; the
    same keys can serve brokers.tls)."""
    def mode(value: str) -> Optional[str]:
        return None if value in TRUST_MODES else f"must be one of {', '.join(TRUST_MODES)}"
    # With a ca_file and no crl_file there is no CRL to check: "require" would promise what
    # is not done (review 2026-12-05: revoked certificates were accepted under crl: require).
    # So the default is then if-present, and an explicit require is refused.
    without_crls = bool(sec.data.get("ca_file")) and not sec.data.get("crl_file") and not sec.data.get("ca_dir")
    rules = TrustRules(crl=sec.get("crl", str, "if-present" if without_crls else "require", mode),
                       crl_file=sec.get("crl_file", str, "", _readable_file),
                       namespaces=sec.get("namespaces", str, "require", mode),
                       reload_interval=sec.get("reload_interval", float, 60.0,
                                               lambda v: None if v >= 1 else "must be at least 1 second"))
    if without_crls and rules.crl == "require":
        raise sec.error("crl", "require", "needs the CAs' CRLs: with ca_file, give them in crl_file (fetch-crl can"
                                          " write them), or use a ca_dir; crl: if-present checks no revocation")
    if rules.crl_file and sec.data.get("ca_dir"):
        raise sec.error("crl_file", rules.crl_file, "goes with ca_file: a ca_dir has its CRLs as <hash>.r0 files "
                                                    "(fetch-crl)")
    return rules


def _signature_check(inbound: _Section) -> SignatureCheck:
    sec = inbound.section("signatures", ("required", "ca_file", "ca_dir", "accept_scheme_1") + TRUST_RULE_KEYS)
    check = SignatureCheck(required=sec.get("required", bool, False),
                           ca_file=sec.get("ca_file", str, "", _readable_file),
                           ca_dir=sec.get("ca_dir", str, "", _ca_dir),
                           rules=trust_rules(sec),
                           accept_scheme_1=sec.get("accept_scheme_1", bool, False))
    if check.required and not (check.ca_file or check.ca_dir):
        raise sec.error("ca_file", "", "signatures are required: give the CAs that may sign (ca_file or ca_dir)")
    if check.ca_file and check.ca_dir:
        raise sec.error("ca_dir", check.ca_dir, "give either ca_file or ca_dir, not both")
    return check


def _signing(root: _Section, routes: Tuple[Route, ...]) -> SigningSettings:
    sec = root.section("signing", ("cert_file", "key_file", "key_password", "key_password_file"))
    settings = SigningSettings(cert_file=sec.get("cert_file", str, "", _readable_file),
                               key_file=sec.get("key_file", str, "", _readable_file),
                               key_password=_secret(sec, "key_password"))
    signed = [route.name for route in routes if route.sign]
    if signed and not (settings.cert_file and settings.key_file):
        raise sec.error("cert_file", settings.cert_file, f"route {signed[0]!r} signs: give cert_file and key_file")
    return settings


def _one_line_or_empty(value: str) -> Optional[str]:
    return None if not value else _one_line(value)


def _logging(root: _Section) -> LoggingSettings:
    sec = root.section("logging", ("level", "target", "file", "syslog_facility"))
    target = sec.get("target", str, "stderr",
                     lambda v: None if v in LOG_TARGETS else f"must be one of {', '.join(LOG_TARGETS)}")
    settings = LoggingSettings(
        level=sec.get("level", str, "INFO",
                      lambda v: None if v in LOG_LEVELS else f"must be one of {', '.join(LOG_LEVELS)}"),
        target=target,
        file=sec.get("file", str, "", _optional_absolute),
        syslog_facility=sec.get("syslog_facility", str, "daemon",
                                lambda v: None if v in logging.handlers.SysLogHandler.facility_names
                                else "is not a syslog facility (daemon, local0 ... local7, user)"),
    )
    if target == "file" and not settings.file:
        raise sec.error("file", "", "is required when target is file")
    return settings


def _daemon(root: _Section) -> DaemonSettings:
    sec = root.section("daemon", ("user", "group", "pidfile", "status_interval"))
    return DaemonSettings(
        user=sec.get("user", str, ""),
        group=sec.get("group", str, ""),
        pidfile=sec.get("pidfile", str, DaemonSettings.pidfile, _absolute_path),
        status_interval=sec.get("status_interval", float, DaemonSettings.status_interval,
                                lambda v: None if 0.1 <= v <= 60 else "must be from 0.1 to 60 seconds"),
    )


def _metrics(root: _Section) -> MetricsSettings:
    sec = root.section("metrics", ("textfile", "listen"))
    listen = sec.get("listen", str, "")
    if listen:
        host, port = _host_port(sec.file, sec.key("listen"), listen)
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise sec.error("listen", listen, "must be a loopback address (127.0.0.1:PORT)")
    return MetricsSettings(textfile=sec.get("textfile", str, "", _optional_absolute), listen=listen)


def _icinga2(root: _Section, site: Site, core: str) -> Icinga2Settings:
    sec = root.section("icinga2", ("host", "port", "ca_file", "cert_file", "key_file", "user", "password",
                                   "password_file", "publish", "event_queue", "check_source",
                                   "objects_refresh", "timeout", "connections"))
    if core != "icinga2":
        if sec.data:
            raise root.error("icinga2", sec.data, "is read only with core: icinga2")
        return Icinga2Settings()
    settings = Icinga2Settings(
        host=sec.get("host", str, "127.0.0.1", _one_line),
        port=sec.get("port", int, 5665, lambda v: None if 1 <= v <= 65535 else "must be a port from 1 to 65535"),
        ca_file=sec.get("ca_file", str, dataclasses.MISSING, _readable_file),
        cert_file=sec.get("cert_file", str, "", _readable_file),
        key_file=sec.get("key_file", str, "", _readable_file),
        # "" as the example shows them: no user (a client certificate), the default check_source.
        user=sec.get("user", str, "", _one_line_or_empty),
        password=_secret(sec, "password"),
        publish=sec.get("publish", bool, True),
        event_queue=sec.get("event_queue", str, "msg-nagios-bridge", _one_line),
        check_source=sec.get("check_source", str, "", _one_line_or_empty) or f"msg-nagios-bridge@{site.nagios_name}",
        objects_refresh=sec.get("objects_refresh", float, 60.0, _positive),
        timeout=sec.get("timeout", float, 10.0, _positive),
        connections=sec.get("connections", int, 8, lambda v: None if 1 <= v <= MAX_CONNECTIONS else
                            f"must be a whole number from 1 to {MAX_CONNECTIONS} (1: one connection,"
                            " results sent one after another)"),
    )
    if bool(settings.cert_file) != bool(settings.key_file):
        raise sec.error("key_file" if settings.cert_file else "cert_file", "",
                        "give cert_file and key_file together")
    if not settings.cert_file and not settings.user:
        raise sec.error("user", "", "give a client certificate (cert_file, key_file) or an ApiUser (user, password_file)")
    if settings.user and not settings.password:
        raise sec.error("password_file", "", f"is required with user {settings.user!r}")
    return settings


def parse(text: str, file: str = "<config>", *, local_files: bool = True) -> Settings:
    """Validate YAML text into Settings, or raise ConfigError. Not ``local_files``: the files
    the config names are judged by their paths only (a config meant for another machine)."""
    token = _LOCAL_FILES.set(local_files)
    try:
        return _parse(text, file)
    finally:
        _LOCAL_FILES.reset(token)


def _parse(text: str, file: str) -> Settings:
    try:
        # SafeLoader: no Python objects. Aliases are refused below, which also
        # stops "billion laughs" anchor bombs before they expand.
        data = yaml.load(text, Loader=_NoAliasLoader)
    except yaml.YAMLError as exc:
        # A parser or scanner error is nearly always indentation or an unquoted ':' / '#'.
        hint = ("; check the indentation (spaces, not tabs, as in the example) and the quoting at that line"
                if isinstance(exc, (yaml.scanner.ScannerError, yaml.parser.ParserError)) else "")
        raise ConfigError(file, "", None, f"is not valid YAML: {_yaml_problem(exc)}{hint}") from None
    except RecursionError:
        raise ConfigError(file, "", None, "nests lists or mappings too deeply") from None
    root = _Section(file, "", data, ("site", "brokers", "spool", "sources", "routes", "inbound", "logging",
                                     "daemon", "metrics", "signing", "core", "icinga2"))
    core = root.get("core", str, "nagios", lambda v: None if v in CORES else f"must be one of {', '.join(CORES)}")
    site = _site(root)
    brokers = _brokers(root)
    spool = _spool(root)
    pipe, perf = _sources(root, core)
    routes = _routes(root)
    inbound = _inbound(root, site, core)
    _check_for_broker(file, brokers.kind, inbound)
    icinga2 = _icinga2(root, site, core)
    log_settings = _logging(root)
    daemon = _daemon(root)
    metrics = _metrics(root)
    signing = _signing(root, routes)
    if core == "icinga2" and (pipe.enabled or perf.enabled):
        raise ConfigError(file, "sources", None, "Icinga 2 has no OCSP pipe or perfdata source here: its results"
                                                 " come from its API (icinga2.publish); disable both")
    outbound = icinga2.publish if core == "icinga2" else pipe.enabled or perf.enabled
    if not (outbound or inbound.enabled):
        raise ConfigError(file, "sources", None, "enable a source (ocsp_pipe or perfdata) or inbound")
    return Settings(file=file, site=site, brokers=brokers, spool=spool, ocsp_pipe=pipe,
                    perfdata=perf, routes=routes, inbound=inbound, logging=log_settings,
                    daemon=daemon, metrics=metrics, signing=signing, core=core, icinga2=icinga2)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The YAML error without PyYAML's snippet of the file's text (it can show a password)."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return str(exc).split("\n", 1)[0]
    parts = [f"{text} (line {mark.line + 1}, column {mark.column + 1})" if mark else text
             for text, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark)) if text]
    return "; ".join(parts) or type(exc).__name__


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader without anchors and aliases, and refusing a key given twice in one mapping
    (YAML would keep the last silently: a second ``site:`` must not replace the first)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:        # an unhashable key: SafeLoader's own error says so below
                break
            if duplicate:
                raise yaml.constructor.ConstructorError("while reading a mapping", node.start_mark,
                                                        f"found the key {key!r} twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "anchors and aliases are not allowed",
                                              event.start_mark)
        return super().compose_node(parent, index)

    def construct_object(self, node, deep=False):
        # SafeLoader's constructors raise plain Python errors for some scalars (a date such as
        # 2024-02-30, "!!bool maybe", "!!int x"): a YAML error at the value's line instead, not a
        # traceback (and, on a reload, not the end of the running bridge). Without the value or
        # Python's text, which quotes it: it may be a password.
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, KeyError, AttributeError, TypeError):
            raise yaml.constructor.ConstructorError(
                None, None, f"a value that is not a valid {node.tag.rsplit(':', 1)[-1]}", node.start_mark) from None

    def construct_number(self, node):
        # Every number in this file is a few digits; a longer one is a mistake. Python refuses
        # an int of over 4300 digits, a long sexagesimal float (1:2:3.5) overflows, and a
        # sexagesimal int takes time quadratic in its length.
        if len(self.construct_scalar(node)) > MAX_NUMBER_CHARS:
            raise yaml.constructor.ConstructorError(
                None, None, f"a number longer than {MAX_NUMBER_CHARS} characters", node.start_mark)
        tag = node.tag.rsplit(":", 1)[-1]
        return (yaml.SafeLoader.construct_yaml_int if tag == "int" else yaml.SafeLoader.construct_yaml_float)(self, node)


MAX_NUMBER_CHARS = 40
_NoAliasLoader.add_constructor("tag:yaml.org,2002:int", _NoAliasLoader.construct_number)
_NoAliasLoader.add_constructor("tag:yaml.org,2002:float", _NoAliasLoader.construct_number)


def load(path: str = DEFAULT_PATH, *, local_files: bool = True) -> Settings:
    """Read and validate the file at ``path``, or raise ConfigError (``local_files``: as parse)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        # The package makes it root:nagios 0640 (it may hold a password): say who may read it.
        hint = " (run this as root or as the bridge's user)" if exc.errno == errno.EACCES else ""
        raise ConfigError(path, "", None, f"cannot be read: {exc.strerror}{hint}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(path, "", None, f"is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "", None, f"is not UTF-8 text ({exc})") from None
    return parse(text, path, local_files=local_files)


def _warn_if_readable_by_all(section: _Section, name: str) -> None:
    """A password in a config file that others can read is a password for everyone on the box
    (every secret given inline; one read from its ``<name>_file`` is that file's business)."""
    try:
        mode = os.stat(section.file).st_mode
    except OSError:
        return                  # parse() of text, not of a file
    if mode & 0o004:
        logging.getLogger(__name__).warning(
            "%s holds a password (%s) and can be read by every user (mode %o): chmod o-r it, or move"
            " the secret to %s_file, readable only by the bridge", section.file, section.key(name),
            mode & 0o777, name)


def as_dict(settings: Settings) -> Dict[str, Any]:
    """Settings as plain data, secrets masked (for logs and ``check-config``): every key named
    like a secret (``_is_secret_key``) wherever it is, so a section added later (icinga2.password
    was shown) needs no line here."""
    def masked(data: Any) -> Any:
        if isinstance(data, dict):
            return {key: "********" if value and _is_secret_key(str(key)) else masked(value)
                    for key, value in data.items()}
        if isinstance(data, (list, tuple)):
            return [masked(item) for item in data]
        return data
    data = masked(dataclasses.asdict(settings))
    data["ocsp_pipe"]["mode"] = f"{settings.ocsp_pipe.mode:04o}"    # as the config writes it, not 400
    return data
