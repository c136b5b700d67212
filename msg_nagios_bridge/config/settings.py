"""The settings the YAML file becomes: immutable dataclasses, the names of the choices, ConfigError."""
from __future__ import annotations

import dataclasses
from typing import Any, Tuple

from ..formats import decode as inbound_format
from ..inbound import policy as policy_module


DEFAULT_PATH = "/etc/msg-nagios-bridge/bridge.yaml"
MAX_CONFIG_BYTES = 1 << 20
DESTINATION_FIELDS = ("site", "role", "vo", "host", "service", "flavour", "status")
FORMATS = ("wlcg", "json")


class ConfigError(Exception):
    """A bad configuration: file, key, value and reason, in one line."""

    def __init__(self, file: str, key: str, value: Any, reason: str):
        self.file, self.key, self.value, self.reason = file, key, value, reason
        # A secret is never shown, whatever its type (``password: 12345`` is an int).
        shown = "(secret, not shown)" if _is_secret_key(key) and value is not None else repr(_masked(value))
        if len(shown) > 120:
            shown = shown[:117] + "..."
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where} = {shown}: {reason}" if key else f"{where}: {reason}")


def _is_secret_key(key: str) -> bool:
    """``password``, ``key_password`` and any ``*_password`` (not ``*_password_file``, a path)."""
    name = key.rsplit(".", 1)[-1].split("[", 1)[0].strip().lower()
    return name.endswith("password")


def _masked(value: Any) -> Any:
    """``value`` with the values of secret keys inside mappings and lists masked."""
    if isinstance(value, dict):
        return {k: "********" if _is_secret_key(str(k)) else _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(item) for item in value]
    return value


@dataclasses.dataclass(frozen=True)
class Site:
    name: str
    role: str
    nagios_name: str
    vo: str = ""


@dataclasses.dataclass(frozen=True)
class TrustRules:
    """How a CA file or directory is judged beyond the certificates (gridtrust.TrustStore):
    ``crl`` and ``namespaces``: require | if-present; ``crl_file``: CRLs (PEM) for a ca_file;
    ``reload_interval``: seconds between looks for changed files (fetch-crl)."""
    crl: str = "require"
    crl_file: str = ""
    namespaces: str = "require"
    reload_interval: float = 60.0


@dataclasses.dataclass(frozen=True)
class TlsSettings:
    enabled: bool = False
    ca_file: str = ""
    ca_dir: str = ""
    cert_file: str = ""
    key_file: str = ""
    key_password: str = dataclasses.field(default="", repr=False)
    verify: bool = True
    rules: TrustRules = TrustRules()


@dataclasses.dataclass(frozen=True)
class BrokerSettings:
    hosts: Tuple[Tuple[str, int], ...]
    username: str = ""
    password: str = dataclasses.field(default="", repr=False)
    vhost: str = ""
    heartbeat_ms: int = 10_000
    connect_timeout: float = 10.0
    receipt_timeout: float = 30.0
    max_in_flight: int = 1000
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    max_refusals: int = 5
    settle_seconds: float = 0.0     # receipted messages kept this long, resent if the connection goes
    tls: TlsSettings = TlsSettings()
    kind: str = "activemq"          # activemq | rabbitmq: what the bridge says differently (broker/kinds.py)


@dataclasses.dataclass(frozen=True)
class SpoolSettings:
    directory: str
    max_messages: int = 1_000_000
    max_megabytes: int = 1024
    max_dead_letter_megabytes: int = 256


@dataclasses.dataclass(frozen=True)
class OcspPipeSettings:
    enabled: bool
    path: str
    group: str = ""
    mode: int = 0o620
    max_line_bytes: int = 1 << 20


@dataclasses.dataclass(frozen=True)
class PerfdataSettings:
    enabled: bool
    service_file: str
    host_file: str
    poll_interval: float = 0.2
    rotate_interval: int = 3600


@dataclasses.dataclass(frozen=True)
class Route:
    name: str
    destination: str
    format: str = "wlcg"
    hosts: Tuple[str, ...] = ("*",)
    services: Tuple[str, ...] = ("*",)
    exclude_hosts: Tuple[str, ...] = ()
    exclude_services: Tuple[str, ...] = ()
    hard_only: bool = True
    host_checks: bool = False
    ttl: int = 0
    sign: bool = False
    message_group: bool = True


@dataclasses.dataclass(frozen=True)
class SigningSettings:
    cert_file: str = ""
    key_file: str = ""
    key_password: str = dataclasses.field(default="", repr=False)


@dataclasses.dataclass(frozen=True)
class SignatureCheck:
    required: bool = False
    ca_file: str = ""
    ca_dir: str = ""
    rules: TrustRules = TrustRules()
    accept_scheme_1: bool = False


@dataclasses.dataclass(frozen=True)
class Subscription:
    destination: str
    selector: str = ""
    durable_name: str = ""


# Unacked messages per subscription. 500, not 100: the subscriber stores and acks what has
# arrived in one fsynced commit, and ActiveMQ sends more at half the prefetch acked, so 100
# meant batches of about 40 and a commit's cost spread over few results (issue 16: 112-117
# against 127-144 us of CPU per result in a backlog). It bounds what waits in memory: about
# 1.5 MB of WLCG messages.
PREFETCH = 500
# ack_delay: how long the ACK of a durable batch may wait to go with the next batches' (0: sent
# as soon as the batch is durable). See inbound/subscriber.py and docs/inbound.md.


@dataclasses.dataclass(frozen=True)
class InboundSettings:
    enabled: bool
    subscriptions: Tuple[Subscription, ...] = ()
    client_id: str = ""
    prefetch: int = PREFETCH
    ack_delay: float = 0.0
    mapping: inbound_format.Mapping = inbound_format.Mapping()
    rules: Tuple[policy_module.Rule, ...] = ()
    sender_header: str = "nagios_host"
    objects_cache: str = ""
    writer: str = "command_file"
    command_file: str = "/var/lib/nagios4/rw/nagios.cmd"
    check_result_path: str = ""
    nagios_lock_file: str = ""
    echo_guard_max_objects: int = 1_000_000
    shared_newest_file: str = ""
    error_queue: str = ""
    signatures: SignatureCheck = SignatureCheck()
    max_age: float = 86400.0
    max_clock_skew: float = 300.0
    loss_accounting: bool = True           # track the producers' route_seq (docs/loss-accounting.md)
    gap_warning_seconds: float = 300.0     # check: WARNING for a gap open this long (0: never)
    gap_critical_seconds: float = 0.0      # check: CRITICAL likewise (0: never)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_TARGETS = ("stderr", "syslog", "file")


@dataclasses.dataclass(frozen=True)
class LoggingSettings:
    level: str = "INFO"
    target: str = "stderr"
    file: str = ""
    syslog_facility: str = "daemon"


@dataclasses.dataclass(frozen=True)
class DaemonSettings:
    user: str = ""
    group: str = ""
    pidfile: str = "/run/msg-nagios-bridge/msg-nagios-bridge.pid"
    status_interval: float = 2.0     # s between writes of status.json (and metrics, watchdog)


@dataclasses.dataclass(frozen=True)
class MetricsSettings:
    textfile: str = ""
    listen: str = ""


@dataclasses.dataclass(frozen=True)
class Icinga2Settings:
    """How the bridge reaches an Icinga 2 through its REST API (``core: icinga2``)."""

    host: str = "127.0.0.1"
    port: int = 5665
    ca_file: str = ""            # the Icinga CA that signed the API's certificate
    cert_file: str = ""          # the bridge's client certificate (ApiUser client_cn) ...
    key_file: str = ""
    user: str = ""               # ... or an ApiUser's name and password
    password: str = dataclasses.field(default="", repr=False)
    publish: bool = True         # outbound: publish Icinga's check results (the event stream)
    event_queue: str = "msg-nagios-bridge"   # /v1/events queue name (2.13 requires one)
    check_source: str = ""       # what the bridge's own results carry (echo signal); "" -> msg-nagios-bridge@SITE
    objects_refresh: float = 60.0   # seconds between re-reads of the object list
    timeout: float = 10.0        # connect and answer timeout of one API request
    connections: int = 8         # inbound: parallel lanes (kept-alive connections) to the API


CORES = ("nagios", "icinga2")


@dataclasses.dataclass(frozen=True)
class Settings:
    file: str
    site: Site
    brokers: BrokerSettings
    spool: SpoolSettings
    ocsp_pipe: OcspPipeSettings
    perfdata: PerfdataSettings
    routes: Tuple[Route, ...]
    inbound: InboundSettings = InboundSettings(enabled=False)
    logging: LoggingSettings = LoggingSettings()
    daemon: DaemonSettings = DaemonSettings()
    metrics: MetricsSettings = MetricsSettings()
    signing: SigningSettings = SigningSettings()
    core: str = "nagios"
    icinga2: Icinga2Settings = Icinga2Settings()

    @property
    def outbound_enabled(self) -> bool:
        if self.core == "icinga2":
            return self.icinga2.publish
        return self.ocsp_pipe.enabled or self.perfdata.enabled
