"""Config: every mistake names file, key and value; the example file is valid."""
import json
import os
import pathlib
import pwd
import re
import shutil
import tempfile

import pytest

from msg_nagios_bridge import config
from msg_nagios_bridge.cli.main import main

EXAMPLE = pathlib.Path(__file__).parent.parent.parent / "etc" / "msg-nagios-bridge.yaml"
MINIMAL = """
site: {name: SITE-A}
brokers: {hosts: ["127.0.0.1:61613"]}
spool: {directory: /tmp/spool}
"""


def test_the_example_config_is_valid_and_complete():
    settings = config.load(str(EXAMPLE))
    assert settings.site.name == "EXAMPLE-SITE"
    assert settings.brokers.hosts == (("127.0.0.1", 61613),)


def test_defaults_from_a_minimal_config():
    settings = config.parse(MINIMAL, "m.yaml")
    assert settings.ocsp_pipe.enabled and not settings.perfdata.enabled
    assert settings.routes[0].destination == "/topic/grid.probe.metricOutput.EGEE.{role}.{site}"
    assert settings.routes[0].hard_only
    assert settings.brokers.max_in_flight == 1000


@pytest.mark.parametrize("text, key, reason", [
    (MINIMAL + "colour: blue\n", "colour", "not a known key"),
    (MINIMAL.replace("name: SITE-A", "nmae: SITE-A"), "site.nmae", "not a known key (did you mean name? known:"),
    (MINIMAL.replace("hosts:", "heartbeat: 5000, hosts:"), "brokers.heartbeat", "did you mean heartbeat_ms?"),
    (MINIMAL.replace("61613", "99999"), "brokers.hosts[0]", "port"),
    (MINIMAL.replace('"127.0.0.1:61613"', "12"), "brokers.hosts[0]", "HOST:PORT"),
    (MINIMAL.replace('"127.0.0.1:61613"', '"stomp+ssl://b.example.org:6162"'), "brokers.hosts[0]",
     "without a scheme such as stomp:// (for stomp+ssl set brokers.tls.enabled: true)"),
    (MINIMAL + "routes: [{name: r, destination: '/topic/x.{planet}'}]\n", "routes[0].destination", "planet"),
    (MINIMAL + "routes: [{name: r, destination: 'topic/x'}]\n", "routes[0].destination", "/topic/"),
    (MINIMAL + "routes: [{name: r, destination: /topic/x, format: xml}]\n", "routes[0].format", "wlcg"),
    (MINIMAL + "routes: [{name: r, destination: /topic/x}, {name: r, destination: /topic/y}]\n",
     "routes[1].name", "another route"),
    (MINIMAL + "routes: [{name: r, destination: /topic/x, hard_only: 'yes'}]\n", "routes[0].hard_only",
     "true or false"),
    (MINIMAL.replace("/tmp/spool", "relative/dir"), "spool.directory", "absolute"),
    (MINIMAL + "sources: {ocsp_pipe: {mode: '0666'}}\n", "sources.ocsp_pipe.mode", "others"),
    (MINIMAL + "brokers2: 1\n", "brokers2", "not a known key"),
    (MINIMAL + "logging: {level: LOUD}\n", "logging.level", "DEBUG"),
    (MINIMAL + "logging: {target: file}\n", "logging.file", "required"),
    (MINIMAL + "logging: {syslog_facility: kernel}\n", "logging.syslog_facility", "facility"),
    (MINIMAL + "metrics: {listen: '0.0.0.0:9100'}\n", "metrics.listen", "loopback"),
    (MINIMAL + "daemon: {status_interval: 0}\n", "daemon.status_interval", "0.1 to 60"),
    (MINIMAL + "daemon: {status_interval: 61}\n", "daemon.status_interval", "0.1 to 60"),
    # Found in review: each of these raised something other than ConfigError, or passed the
    # check and failed at run time (connect_timeout: .inf overflowed the socket timeout).
    (MINIMAL.replace("61613", "6161\u00b9"), "brokers.hosts[0]", "port"),
    (MINIMAL + "metrics: {listen: '127.0.0.1:\u00b2'}\n", "metrics.listen", "port"),
    (MINIMAL.replace("hosts:", "connect_timeout: .inf, hosts:"), "brokers.connect_timeout", "up to 86400"),
    (MINIMAL.replace("hosts:", "backoff_max: 1.0e+300, hosts:"), "brokers.backoff_max", "up to 86400"),
    (MINIMAL.replace("hosts:", "heartbeat_ms: 100000000000000000000, hosts:"), "brokers.heartbeat_ms", "a day"),
    (MINIMAL.replace("/tmp/spool", '"/tmp/x\\0y"'), "spool.directory", "NUL"),
    (MINIMAL.replace("hosts:", 'password_file: "/tmp/a\\0b", hosts:'), "brokers.password_file", "NUL"),
    (MINIMAL + "site: {name: OTHER}\n", "", "found the key 'site' twice"),
    (MINIMAL + "x: " + "[" * 3000 + "]" * 3000 + "\n", "", "too deeply"),
    # Found in review (2026-12-05): SafeLoader raised ValueError, OverflowError or KeyError for
    # these, a traceback (and a reload that ended the running bridge); a long sexagesimal number
    # also took time quadratic in its length.
    (MINIMAL.replace("/tmp/spool", "/tmp/spool, max_dead_letter_megabytes: 99999999999999"),
     "spool.max_dead_letter_megabytes", "from 1 to 1073741824"),
    (MINIMAL.replace("/tmp/spool", "/tmp/spool, max_megabytes: 99999999999999"),
     "spool.max_megabytes", "from 1 to 1073741824"),
    (MINIMAL + "x: 2024-02-30\n", "", "not a valid timestamp (line 5, column 4)"),
    (MINIMAL + "x: !!bool maybe\n", "", "not a valid bool"),
    (MINIMAL.replace("hosts:", "max_in_flight: 1" + "0" * 5000 + ", hosts:"), "", "a number longer than 40"),
    (MINIMAL.replace("hosts:", "connect_timeout: 1:" + "0:" * 300 + "0.5, hosts:"), "", "a number longer than 40"),
    (MINIMAL.replace("hosts:", "max_in_flight: 1:" + "0:" * 300000 + "0, hosts:"), "", "a number longer than 40"),
])
def test_mistakes_name_file_key_value_and_reason(text, key, reason):
    with pytest.raises(config.ConfigError) as caught:
        config.parse(text, "bridge.yaml")
    error = caught.value
    assert error.file == "bridge.yaml"
    assert error.key == key
    assert reason in error.reason
    assert str(error).startswith(f"bridge.yaml: {key} = " if key else "bridge.yaml: ")


def test_the_status_interval_is_two_seconds_unless_set():
    assert config.parse(MINIMAL, "bridge.yaml").daemon.status_interval == 2.0
    assert config.parse(MINIMAL + "daemon: {status_interval: 0.25}\n", "bridge.yaml").daemon.status_interval == 0.25


def test_a_missing_required_key_is_named():
    with pytest.raises(config.ConfigError, match=r"m.yaml: site.name = None: is required"):
        config.parse("brokers: {hosts: ['a:1']}", "m.yaml")


def test_yaml_aliases_are_refused_so_anchor_bombs_cannot_expand():
    bomb = MINIMAL + 'a: &a ["x","x"]\nb: &b [*a,*a]\nc: [*b,*b]\n'
    with pytest.raises(config.ConfigError, match="aliases"):
        config.parse(bomb, "bomb.yaml")


def test_invalid_yaml_and_missing_file_are_reported(tmp_path):
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.parse("site: [", "x.yaml")
    with pytest.raises(config.ConfigError, match="cannot be read"):
        config.load(str(tmp_path / "nope.yaml"))


def test_password_from_a_file_and_masked(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    settings = config.parse(MINIMAL.replace('hosts:', f'password_file: {secret}, hosts:'), "p.yaml")
    assert settings.brokers.password == "s3cret"
    assert "s3cret" not in repr(settings)
    assert config.as_dict(settings)["brokers"]["password"] == "********"


def test_check_config_command_prints_the_error_and_exits_non_zero(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL + "routes: [{name: r, destination: '/topic/{nope}'}]\n")
    assert main(["check-config", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: routes[0].destination = '/topic/{{nope}}'" in err
    good = tmp_path / "good.yaml"
    good.write_text(MINIMAL)
    assert main(["check-config", "-c", str(good)]) == 0


def test_the_example_documents_every_key():
    text = EXAMPLE.read_text()
    keys = set(config._ROUTE_KEYS + config._INBOUND_KEYS + config._MAPPING_KEYS) | {
        "name", "role", "nagios_name", "vo", "hosts", "username", "password", "password_file", "vhost",
        "heartbeat_ms", "connect_timeout", "receipt_timeout", "max_in_flight", "backoff_initial",
        "backoff_max", "max_refusals", "settle_seconds", "directory", "max_messages", "max_megabytes", "ocsp_pipe",
        "perfdata", "path", "group", "mode", "max_line_bytes", "service_file", "host_file",
        "poll_interval", "rotate_interval", "level", "target", "file", "syslog_facility", "user",
        "pidfile", "status_interval", "textfile", "listen", "senders", "rules", "sender_header", "exact_senders",
        "objects_cache", "selector", "durable_name", "tls", "ca_file", "ca_dir", "cert_file", "key_file",
        "key_password_file", "verify", "core", "icinga2", "port", "publish", "event_queue", "check_source",
        "objects_refresh", "timeout"}
    missing = sorted(key for key in keys if f"{key}:" not in text)
    assert not missing


def test_an_enabled_inbound_section_from_the_example_validates_once_it_has_a_rule():
    """The example ships no rule: enabling inbound alone must not accept every sender
    (review 2026-12-06: it shipped senders ["*"]); the commented rules work as they are."""
    enabled = EXAMPLE.read_text().replace("inbound:\n  # off by default.\n  enabled: false",
                                          "inbound:\n  # off by default.\n  enabled: true")
    with pytest.raises(config.ConfigError) as caught:
        config.parse(enabled, "example")
    assert caught.value.key == "inbound.policy.rules" and "no rule allows any sender" in str(caught.value)
    commented = re.search(r"^    rules: \[\]\n    # rules:\n((?:    #  .*\n)+)", enabled, re.M)
    settings = config.parse(enabled.replace(commented.group(), "    rules:\n" + re.sub(
        r"^    #", "   ", commented.group(1), flags=re.M)), "example")
    assert [rule.senders for rule in settings.inbound.rules] == [
        ("nagios.site-a.org",), ("CN=nagios.site-a.org, O=Grid, C=XX",)]
    assert settings.inbound.rules[1].exact_senders and settings.inbound.rules[0].hosts == ("*.site-a.org",)
    assert settings.inbound.client_id == "msg-nagios-bridge-nagios.example.org"


def test_a_rule_may_take_its_senders_exactly():
    inbound = ("{subscriptions: [{destination: /topic/x}], policy: {sender_header: JMSXUserID, rules: ["
               "{senders: ['CN=*.site-a.org, O=Grid'], hosts: ['*.site-a.org'], exact_senders: true}]}}")
    settings = config.parse(MINIMAL + f"inbound: {inbound}\n", "i.yaml")
    rule = settings.inbound.rules[0]
    assert rule.exact_senders and rule.senders == ("CN=*.site-a.org, O=Grid",)
    assert settings.inbound.sender_header == "JMSXUserID"
    with pytest.raises(config.ConfigError) as caught:
        config.parse(MINIMAL + "inbound: {policy: {rules: [{senders: [x], exact_senders: maybe}]}}\n", "i.yaml")
    assert caught.value.key.startswith("inbound.policy.rules[0]")


@pytest.mark.parametrize("inbound, key, reason", [
    ("{enabled: true}", "inbound.subscriptions", "subscribes to nothing"),
    ("{enabled: true, subscriptions: [{destination: /topic/x}]}", "inbound.policy.rules", "no rule"),
    ("{subscriptions: [{destination: /queue/x, durable_name: d}]}", "inbound.subscriptions[0].durable_name",
     "only topics"),
    ("{writer: checkresults_dir}", "inbound.check_result_path", "required"),
    ("{error_queue: /topic/e}", "inbound.error_queue", "/queue/"),
    ("{mapping: {host_from: planet}}", "inbound.mapping", "host_from"),
])
def test_inbound_mistakes_are_named(inbound, key, reason):
    with pytest.raises(config.ConfigError) as caught:
        config.parse(MINIMAL + f"inbound: {inbound}\n", "i.yaml")
    assert caught.value.key == key and reason in caught.value.reason


def test_tls_paths_are_checked_when_the_config_is_loaded(tmp_path):
    def tls(text):
        return config.parse(MINIMAL.replace("hosts:", f"tls: {text}, hosts:"), "t.yaml")
    with pytest.raises(config.ConfigError, match=r"brokers.tls.ca_file = '/nonexistent/ca.pem': is not a readable"):
        tls("{enabled: true, ca_file: /nonexistent/ca.pem}")
    empty = tmp_path / "certificates"
    empty.mkdir()
    with pytest.raises(config.ConfigError, match="no PEM certificates"):
        tls(f"{{enabled: true, ca_dir: {empty}}}")
    key = tmp_path / "key.pem"
    key.write_text("x")
    with pytest.raises(config.ConfigError, match="cert_file.*is required with key_file"):
        tls(f"{{enabled: true, key_file: {key}}}")
    password = tmp_path / "pw"
    password.write_text("hunter2\n")
    settings = tls(f"{{enabled: true, key_password_file: {password}}}")
    assert settings.brokers.tls.key_password == "hunter2"
    assert "hunter2" not in repr(settings) and config.as_dict(settings)["brokers"]["tls"]["key_password"] == "********"


def test_run_refuses_root_unless_forced(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(MINIMAL)
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert main(["run", "-c", str(cfg)]) == 2
    assert "refusing to run as root" in capsys.readouterr().err


def test_a_readable_secret_draws_a_warning(tmp_path, caplog):
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(MINIMAL.replace("hosts:", "password: pw, hosts:"))
    cfg.chmod(0o644)
    config.load(str(cfg))
    assert "can be read by every user" in caplog.text
    caplog.clear()
    cfg.chmod(0o640)
    config.load(str(cfg))
    assert "can be read by every user" not in caplog.text


def test_check_config_verbose_shows_the_fifo_mode_as_the_config_writes_it(tmp_path, capsys):
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(MINIMAL + 'sources: {ocsp_pipe: {mode: "0660"}}\n')
    assert main(["check-config", "--syntax-only", "-v", "-c", str(cfg)]) == 0
    shown = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert shown["ocsp_pipe"]["mode"] == "0660"


def test_a_password_from_its_file_draws_no_warning_for_a_readable_config(tmp_path, caplog):
    """Only a secret written in the config makes a readable config a leak (review 2026-12-06:
    the password read from password_file drew the warning too)."""
    secret = tmp_path / "password"
    secret.write_text("pw")
    secret.chmod(0o600)
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(MINIMAL.replace("hosts:", f"password_file: {secret}, hosts:"))
    cfg.chmod(0o644)
    assert config.load(str(cfg)).brokers.password == "pw"
    assert "every user" not in caplog.text


def test_syntax_only_judges_the_files_a_config_names_by_their_paths(tmp_path, capsys):
    """check-config --syntax-only is for a config meant for another machine: the TLS, CA and
    password files it names need not exist here (review 2026-12-06: they had to)."""
    missing = tmp_path / "not-here"
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(MINIMAL.replace("hosts:", f"password_file: {missing}/pw, tls: {{enabled: true,"
                                   f" ca_file: {missing}/ca.pem, cert_file: {missing}/c.pem,"
                                   f" key_file: {missing}/k.pem}}, hosts:"))
    assert main(["check-config", "--syntax-only", "-c", str(cfg)]) == 0
    assert f"{cfg}: OK" in capsys.readouterr().out
    assert main(["check-config", "-c", str(cfg)]) == 2
    assert "password_file" in capsys.readouterr().err
    relative = tmp_path / "relative.yaml"
    relative.write_text(MINIMAL.replace("hosts:", "tls: {enabled: true, ca_file: ca.pem}, hosts:"))
    assert main(["check-config", "--syntax-only", "-c", str(relative)]) == 2
    assert "must be an absolute path" in capsys.readouterr().err


def test_a_password_file_that_is_not_utf8_is_a_clear_error(tmp_path):
    secret = tmp_path / "password"
    secret.write_bytes(b"\xff\xfe\x00pw")
    secret.chmod(0o600)
    with pytest.raises(config.ConfigError, match="password_file .* is not UTF-8 text"):
        config.parse(MINIMAL.replace("hosts:", f"password_file: {secret}, hosts:"), "bridge.yaml")


def test_the_shipped_nagios_snippet_matches_what_nagios_config_prints():
    from msg_nagios_bridge.cores.nagios.wiring import main_config_lines, object_definitions
    settings = config.load(str(EXAMPLE))
    snippet = (EXAMPLE.parent / "nagios" / "msg-nagios-bridge.cfg").read_text()
    assert object_definitions(settings) in snippet
    assert main_config_lines(settings) in snippet
    assert "check_msg_bridge" in snippet


@pytest.mark.parametrize("text", [
    MINIMAL.replace("hosts:", "password: 12345, hosts:"),              # a number: was echoed
    MINIMAL.replace("hosts:", "password: [12345], hosts:"),
    MINIMAL.replace("hosts:", "password: {x: 12345}, hosts:"),
    MINIMAL + "brokers2: {tls: {key_password: 12345}}\n",
    MINIMAL.replace("hosts:", "tls: {key_password: 12345}, hosts:"),
    MINIMAL.replace("hosts:", "tls: {key_password: 12345.5}, hosts:"),
    MINIMAL.replace("hosts:", "tls: [{key_password: '12345'}], hosts:"),
    MINIMAL.replace("/tmp/spool}", "/tmp/spool, db_password: '12345'}"),   # unknown *_password key
    MINIMAL + "brokers:\n  password: '12345\n",                            # YAML error snippets
    MINIMAL.replace("hosts:", "password: 12345: x, hosts:"),
    MINIMAL.replace("hosts:", "password: !!int '12345x', hosts:"),          # Python's own error text
    MINIMAL.replace("hosts:", "password: 12345" + "0" * 40 + ", hosts:"),
])
def test_a_numeric_password_is_not_echoed_by_a_config_error(text):
    with pytest.raises(config.ConfigError) as caught:
        config.parse(text, "bridge.yaml")
    assert "12345" not in str(caught.value)


def test_a_secret_key_still_names_file_and_key():
    with pytest.raises(config.ConfigError) as caught:
        config.parse(MINIMAL.replace("hosts:", "password: 12345, hosts:"), "bridge.yaml")
    assert str(caught.value) == "bridge.yaml: brokers.password = (secret, not shown): must be text"


ICINGA = """
core: icinga2
site: {name: SITE-A}
brokers: {hosts: ["127.0.0.1:61613"]}
spool: {directory: /tmp}
icinga2: {ca_file: CA, user: bridge, password: secret}
"""


def test_core_icinga2_reads_its_api_settings_and_defaults_to_the_api_writer(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    settings = config.parse(ICINGA.replace("CA", str(ca)) + "inbound: {enabled: true, policy: {rules: "
                            "[{senders: ['*']}]}, subscriptions: [{destination: /topic/x}]}\n")
    assert settings.core == "icinga2" and settings.outbound_enabled
    assert settings.icinga2.user == "bridge" and settings.icinga2.port == 5665
    assert settings.icinga2.check_source == f"msg-nagios-bridge@{settings.site.nagios_name}"
    assert settings.inbound.writer == "api"
    assert not settings.ocsp_pipe.enabled


def test_the_example_icinga2_block_uncommented_as_it_is_validates(tmp_path):
    """The example shows user and check_source as "" (their defaults): uncommenting the block
    and filling in the files must not fail on them (review 2026-12-06)."""
    text = EXAMPLE.read_text()
    block = re.search(r"^# icinga2:\n(?:#  .*\n)+", text, re.M).group()
    ca, cert, key = (tmp_path / name for name in ("ca.crt", "client.crt", "client.key"))
    for path in (ca, cert, key):
        path.write_text("x")
    uncommented = re.sub(r"^# ?", "", block, flags=re.M)
    uncommented = (uncommented.replace("/var/lib/icinga2/certs/ca.crt", str(ca))
                   .replace('cert_file: ""', f"cert_file: {cert}").replace('key_file: ""', f"key_file: {key}"))
    assert 'user: ""' in uncommented and 'check_source: ""' in uncommented
    settings = config.parse(ICINGA.split("icinga2:")[0] + uncommented)
    assert settings.icinga2.user == "" and settings.icinga2.cert_file == str(cert)
    assert settings.icinga2.check_source == f"msg-nagios-bridge@{settings.site.nagios_name}"


@pytest.mark.parametrize("change, key, reason", [
    (lambda t: t.replace("core: icinga2", "core: naemon"), "core", "must be one of nagios, icinga2"),
    (lambda t: t.replace("core: icinga2", "core: nagios"), "icinga2", "is read only with core: icinga2"),
    (lambda t: t.replace(", user: bridge, password: secret", ""), "icinga2.user", "client certificate"),
    (lambda t: t.replace(", password: secret", ""), "icinga2.password_file", "is required with user"),
    (lambda t: t + "sources: {ocsp_pipe: {enabled: true}}\n", "sources", "Icinga 2 has no OCSP pipe"),
])
def test_core_icinga2_mistakes_name_the_key(tmp_path, change, key, reason):
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    with pytest.raises(config.ConfigError) as caught:
        config.parse(change(ICINGA.replace("CA", str(ca))))
    assert caught.value.key == key and reason in str(caught.value)


def test_the_api_writer_needs_core_icinga2():
    with pytest.raises(config.ConfigError) as caught:
        config.parse(MINIMAL + "inbound: {enabled: true, writer: api, policy: {rules: [{senders: ['*']}]},"
                               " subscriptions: [{destination: /topic/x}]}\n")
    assert caught.value.key == "inbound.writer"


def test_a_reload_with_a_value_yaml_cannot_convert_keeps_the_running_bridge(tmp_path):
    """Regression: ``x: 2024-02-30`` raised ValueError out of config.load, which a reload did
    not catch: SIGHUP with that typo ended the running bridge (and systemd restarted it into
    the same error)."""
    from types import SimpleNamespace
    from msg_nagios_bridge.daemon.health import Health
    from msg_nagios_bridge.daemon.service import _reload
    path = tmp_path / "bridge.yaml"
    path.write_text(MINIMAL.replace("name: SITE-A", "name: SITE-A, vo: 2024-02-30"))
    running = SimpleNamespace(health=Health())
    assert _reload(running, str(path)) is running
    assert "reload refused" in running.health.snapshot()["errors"][-1][1]


def test_the_largest_spool_limits_the_config_allows_work_in_the_spool(tmp_path):
    """Regression: max_dead_letter_megabytes: 99999999999999 ("unlimited") passed the config;
    the limit in bytes did not fit SQLite's integers, so the first dead letter raised
    OverflowError and ended the part that refused it (after every restart again)."""
    from msg_nagios_bridge.model import Message
    from msg_nagios_bridge.spool import Spool
    most = config.MAX_SPOOL_MEGABYTES
    settings = config.parse(MINIMAL.replace(
        "/tmp/spool", f"{tmp_path}, max_megabytes: {most}, max_dead_letter_megabytes: {most}"), "b.yaml")
    spool = Spool(str(tmp_path / "s.sqlite"), max_bytes=settings.spool.max_megabytes << 20,
                  max_dead_letter_bytes=settings.spool.max_dead_letter_megabytes << 20)
    try:
        assert spool.put([Message(message_id="m1", destination="/topic/x", headers={}, body=b"x")]) == 1
        spool.add_dead_letter(Message(message_id="m2", destination="/topic/x", headers={}, body=b"x"), "why")
        assert spool.stats().dead_letters == 1
    finally:
        spool.close()


def test_check_config_verbose_masks_the_icinga2_api_password(tmp_path, capsys):
    """Regression: `check-config -v` printed icinga2.password (read from its password_file)
    in clear: as_dict masked only the secrets it named, and this one was added later."""
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    secret = tmp_path / "pw"
    secret.write_text("icinga-s3cret\n")
    secret.chmod(0o600)
    path = tmp_path / "bridge.yaml"
    path.write_text(ICINGA.replace("CA", str(ca)).replace("password: secret", f"password_file: {secret}"))
    settings = config.load(str(path))
    assert settings.icinga2.password == "icinga-s3cret"
    # --syntax-only: its spool, /tmp, is no place for a spool on any machine (run refuses it).
    assert main(["check-config", "-v", "--syntax-only", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "icinga-s3cret" not in out and '"password": "********"' in out
    assert "icinga-s3cret" not in repr(settings)


def test_an_unquoted_fifo_mode_says_to_quote_it():
    # YAML reads 0620 unquoted as the octal number 400: "400 must be text" told the admin
    # nothing about the 0620 they wrote (found following the docs, 2026-12-05).
    with pytest.raises(config.ConfigError) as caught:
        config.parse(MINIMAL + "sources: {ocsp_pipe: {mode: 0620}}\n", "bridge.yaml")
    assert caught.value.key == "sources.ocsp_pipe.mode"
    assert "quote it" in caught.value.reason and '"0620"' in caught.value.reason


@pytest.mark.parametrize("text", ["site:\n  name: X\n brokers:\n  hosts: ['a:1']\n", "site:\n\tname: X\n"])
def test_a_yaml_syntax_error_points_at_the_indentation(text):
    # PyYAML's "expected <block end>, but found '<block mapping start>'" alone did not say what to fix.
    with pytest.raises(config.ConfigError, match=r"not valid YAML: .*\(line \d+, column \d+\); check the indentation"):
        config.parse(text, "bridge.yaml")


@pytest.mark.parametrize("names, key", [("user: no-such-user-mnb", "daemon.user"),
                                        ("group: no-such-group-mnb", "daemon.group")])
def test_run_daemon_names_the_daemon_key_of_an_unknown_user_or_group(tmp_path, capsys, names, key):
    # It said "daemon = \"getpwnam(): name not found: ...\"": neither the key nor the value as written.
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(MINIMAL + f"daemon: {{{names}, pidfile: {tmp_path}/pid}}\n")
    assert main(["run", "--daemon", "--allow-root", "-c", str(cfg)]) == 2
    value = names.split(": ")[1]
    assert f"{cfg}: {key} = '{value}': no such" in capsys.readouterr().err


def test_a_config_the_user_may_not_read_says_who_may(tmp_path, monkeypatch):
    # status, check and dead-letters read it too, often by hand as an ordinary user.
    import builtins
    real_open = builtins.open

    def refuse(path, *args, **kwargs):
        if str(path).endswith("bridge.yaml"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", refuse)
    with pytest.raises(config.ConfigError, match=r"bridge.yaml: cannot be read: Permission denied \(run this as root"
                                                 r" or as the bridge's user\)"):
        config.load(str(tmp_path / "bridge.yaml"))


def test_a_log_file_that_cannot_be_opened_is_a_config_error_and_a_reload_keeps_running(tmp_path):
    """It raised PermissionError (or 'Read-only file system' under the unit) as a traceback at
    start, and out of a SIGHUP reload, which ended the running bridge."""
    from types import SimpleNamespace
    from msg_nagios_bridge.daemon import logsetup
    from msg_nagios_bridge.daemon.health import Health
    from msg_nagios_bridge.daemon.service import _reload
    gone = f"{tmp_path}/no-such-dir/bridge.log"
    with pytest.raises(config.ConfigError, match=r"bridge.yaml: logging.file = '.*no-such-dir/bridge.log': cannot be"
                                                 r" opened: No such file or directory .*LogsDirectory="):
        logsetup.configure(config.LoggingSettings(target="file", file=gone), "bridge.yaml")
    path = tmp_path / "bridge.yaml"
    path.write_text(MINIMAL + f"logging: {{target: file, file: {gone}}}\n")
    running = SimpleNamespace(health=Health())
    assert _reload(running, str(path)) is running
    assert "reload refused: " in running.health.snapshot()["errors"][-1][1]



# -- check-config: what run needs of this machine --------------------------------------------------

def check_here(tmp_path, capsys, *options, spool="{dir}/spool", sources="{ocsp_pipe: {path: {dir}/ocsp.fifo}}",
               more=""):
    """check-config of a config under tmp_path (``{dir}`` in the texts): (exit code, stdout, stderr)."""
    path = tmp_path / "bridge.yaml"
    text = (f"site: {{name: SITE-A}}\nbrokers: {{hosts: ['127.0.0.1:61613']}}\nspool: {{directory: {spool}}}\n"
            f"sources: {sources}\n{more}\n")
    path.write_text(text.replace("{dir}", str(tmp_path)))
    code = main(["check-config", *options, "-c", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_config_says_ok_when_this_machine_has_what_run_needs(tmp_path, capsys):
    (tmp_path / "perf").mkdir()
    code, out, err = check_here(tmp_path, capsys, sources="{ocsp_pipe: {path: {dir}/ocsp.fifo}, perfdata: {enabled:"
                                " true, service_file: {dir}/perf/service-perfdata}}",
                                more="logging: {target: file, file: {dir}/bridge.log}")
    assert (code, out, err) == (0, f"{tmp_path}/bridge.yaml: OK\n", "")


def test_check_config_finds_what_run_would_fail_on_here_and_says_all_of_it(tmp_path, capsys):
    """Regression (review 2026-12-05): check-config said OK for a config whose daemon.user did not
    exist, whose spool could not be made, whose log file's directory was missing: run failed."""
    (tmp_path / "a-file").write_text("")
    bad = dict(spool="{dir}/a-file/spool",
               sources="{ocsp_pipe: {path: {dir}/missing/ocsp.fifo}, perfdata: {enabled: true,"
                       " service_file: {dir}/missing/perfdata}}",
               more="daemon: {user: no-such-user-mnb, group: no-such-group-mnb}\n"
                    "logging: {target: file, file: {dir}/missing/bridge.log}")
    code, out, err = check_here(tmp_path, capsys, **bad)
    assert code == 2 and "OK" not in out
    lines = err.splitlines()
    assert all(line.startswith(f"configuration error: {tmp_path}/bridge.yaml: ") for line in lines), err
    for words in ["daemon.user = 'no-such-user-mnb': no such user on this machine",
                  "daemon.group = 'no-such-group-mnb': no such group on this machine",
                  f"spool.directory = '{tmp_path}/a-file/spool': cannot be created: {tmp_path}/a-file is not a"
                  " directory",
                  f"sources.ocsp_pipe.path = '{tmp_path}/missing/ocsp.fifo': its directory {tmp_path}/missing does"
                  " not exist",
                  f"sources.perfdata.service_file = '{tmp_path}/missing/perfdata': its directory {tmp_path}/missing"
                  " does not exist",
                  f"logging.file = '{tmp_path}/missing/bridge.log': its directory {tmp_path}/missing does not exist"]:
        assert any(words in line for line in lines), (words, err)
    assert len(lines) == 6, err
    # A config meant for another machine: its syntax and values only.
    assert check_here(tmp_path, capsys, "--syntax-only", **bad)[:2] == (0, f"{tmp_path}/bridge.yaml: OK\n")


def test_check_config_judges_the_spool_for_daemon_user(tmp_path, capsys):
    """For daemon.user, not for root who runs the check (os.access answers for root)."""
    nobody = "nobody"
    (tmp_path / "spool").mkdir(mode=0o700)                # ours, not nobody's
    code, _, err = check_here(tmp_path, capsys, more=f"daemon: {{user: {nobody}}}")
    assert code == 2 and f"spool.directory = '{tmp_path}/spool': is not writable by nobody (daemon.user)" in err
    (tmp_path / "spool").rmdir()
    code, _, err = check_here(tmp_path, capsys, spool="{dir}/sub/spool", more=f"daemon: {{user: {nobody}}}")
    assert code == 2 and f"does not exist, and nobody (daemon.user) cannot create it: {tmp_path} is not" in err
    (tmp_path / "spool").mkdir(mode=0o777)
    (tmp_path / "spool").chmod(0o777)
    code, _, err = check_here(tmp_path, capsys)
    assert code == 2 and "can be written by other users (mode 777" in err
    (tmp_path / "spool").chmod(0o700)
    if os.geteuid() == 0:
        # Without daemon.user the bridge is the unit's User=: root checking the packaged config
        # must not be told that nagios's spool is "shared".
        os.chown(tmp_path / "spool", pwd.getpwnam(nobody).pw_uid, -1)
        assert check_here(tmp_path, capsys)[:3] == (0, f"{tmp_path}/bridge.yaml: OK\n", "")
        os.chown(tmp_path / "spool", 0, -1)
    (tmp_path / "spool" / "outbound.sqlite").write_text("")
    (tmp_path / "spool" / "outbound.sqlite").chmod(0o400)
    if os.geteuid() != 0:                                 # root may write it all the same
        code, _, err = check_here(tmp_path, capsys)
        assert code == 2 and "outbound.sqlite in it cannot be written by" in err


def test_check_config_warns_of_a_missing_nagios_command_file_and_refuses_a_missing_directory(tmp_path, capsys):
    inbound = ("inbound: {{enabled: true, subscriptions: [{{destination: /queue/q}}], policy: {{rules: [{{senders:"
               " ['*']}}]}}, command_file: {path}}}")
    # Nagios down: it makes its command file when it starts; the bridge waits for it.
    code, out, err = check_here(tmp_path, capsys, more=inbound.format(path="{dir}/nagios.cmd"))
    assert code == 0 and err == "", err
    assert out == (f"warning: {tmp_path}/bridge.yaml: inbound.command_file = '{tmp_path}/nagios.cmd': does not exist"
                   " now: Nagios makes it when it runs (with check_external_commands=1); the bridge waits for it\n"
                   f"{tmp_path}/bridge.yaml: OK\n")
    os.mkfifo(tmp_path / "nagios.cmd")
    assert check_here(tmp_path, capsys, more=inbound.format(path="{dir}/nagios.cmd"))[:3] == (
        0, f"{tmp_path}/bridge.yaml: OK\n", "")
    code, out, err = check_here(tmp_path, capsys, more=inbound.format(path="{dir}/rw/nagios.cmd"))
    assert code == 2 and f"inbound.command_file = '{tmp_path}/rw/nagios.cmd': its directory {tmp_path}/rw does not" \
                         " exist" in err


def test_check_config_refuses_a_shared_newest_file_in_a_missing_directory(tmp_path, capsys):
    """run stops at its start on it (review 2026-12-06: docs/scaling.md named a directory
    nothing makes, and check-config said OK)."""
    os.mkfifo(tmp_path / "nagios.cmd")
    inbound = ("inbound: {{enabled: true, subscriptions: [{{destination: /queue/q}}], policy: {{rules: [{{senders:"
               " ['*']}}]}}, command_file: {{dir}}/nagios.cmd, shared_newest_file: {path}}}")
    code, out, err = check_here(tmp_path, capsys, more=inbound.format(path="{dir}/central/newest.sqlite"))
    assert code == 2 and (f"inbound.shared_newest_file = '{tmp_path}/central/newest.sqlite': its directory"
                          f" {tmp_path}/central does not exist") in err
    (tmp_path / "central").mkdir()
    assert check_here(tmp_path, capsys, more=inbound.format(path="{dir}/central/newest.sqlite"))[:3] == (
        0, f"{tmp_path}/bridge.yaml: OK\n", "")


def test_check_config_warns_of_a_pidfile_or_metrics_textfile_the_bridge_could_not_make(tmp_path, capsys):
    """run survives both (only run --daemon uses the pidfile; the textfile's failure is logged),
    so they are warnings; before, check-config said nothing of them."""
    missing = "daemon: {{pidfile: {dir}/gone/bridge.pid}}\nmetrics: {{textfile: {dir}/gone/bridge.prom}}"
    code, out, err = check_here(tmp_path, capsys, more=missing.replace("{{", "{").replace("}}", "}"))
    assert (code, err) == (0, "")
    assert out == (f"warning: {tmp_path}/bridge.yaml: daemon.pidfile = '{tmp_path}/gone/bridge.pid': its directory"
                   f" {tmp_path}/gone does not exist: run --daemon would stop at once (the systemd unit does not use"
                   " the pidfile)\n"
                   f"warning: {tmp_path}/bridge.yaml: metrics.textfile = '{tmp_path}/gone/bridge.prom': its directory"
                   f" {tmp_path}/gone does not exist: the bridge would log that it cannot write the metrics\n"
                   f"{tmp_path}/bridge.yaml: OK\n")
    (tmp_path / "gone").mkdir(mode=0o755)
    assert check_here(tmp_path, capsys, more=missing.replace("{{", "{").replace("}}", "}"))[:3] == (
        0, f"{tmp_path}/bridge.yaml: OK\n", "")
    if os.geteuid() != 0:
        return              # another user's view needs root to make a spool that user owns
    # As root, for daemon.user nobody: the mode bits of a directory root owns (in /tmp: nobody
    # cannot search pytest's tmp_path).
    top = pathlib.Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        (top / "gone").mkdir(mode=0o755)
        (top / "spool").mkdir(mode=0o700)
        os.chown(top / "spool", pwd.getpwnam("nobody").pw_uid, -1)
        user = ("daemon: {user: nobody, pidfile: {dir}/gone/bridge.pid}\nmetrics: {textfile: {dir}/gone/bridge.prom}"
                .replace("{dir}", str(top)))
        perfdata = (f"{{ocsp_pipe: {{enabled: false}}, perfdata: {{enabled: true, service_file:"
                    f" {top}/service-perfdata}}}}")           # no FIFO to make
        code, out, err = check_here(tmp_path, capsys, spool=f"{top}/spool", sources=perfdata, more=user)
        assert (code, err) == (0, "")
        for key, name in (("daemon.pidfile", "bridge.pid"), ("metrics.textfile", "bridge.prom")):
            assert f"warning: {tmp_path}/bridge.yaml: {key} = '{top}/gone/{name}': its directory {top}/gone is not" \
                   " writable by nobody (daemon.user): " in out, out
        (top / "gone").chmod(0o777)
        assert check_here(tmp_path, capsys, spool=f"{top}/spool", sources=perfdata, more=user)[:3] == (
            0, f"{tmp_path}/bridge.yaml: OK\n", "")
    finally:
        shutil.rmtree(top)


def test_the_machine_check_reads_mode_bits_for_another_user(tmp_path):
    # Root's os.access says yes to everything: for daemon.user the bits decide.
    from msg_nagios_bridge.config.machine import User, _may
    top = tempfile.mkdtemp(dir="/tmp")
    try:
        os.chmod(top, 0o755)
        path = os.path.join(top, "f")
        with open(path, "w"):
            pass
        os.chmod(path, 0o640)
        other = os.getuid() + 4242
        member = User("m", other, frozenset({os.stat(path).st_gid}), "test")
        stranger = User("s", other, frozenset({os.getgid() + 4242}), "test")
        assert _may(path, os.R_OK, member) and not _may(path, os.W_OK, member)
        assert not _may(path, os.R_OK, stranger)
        os.chmod(top, 0o750)                     # no search in the directory above: nothing below
        assert not _may(path, os.R_OK, stranger) and _may(path, os.R_OK, member)
        os.chmod(top, 0o700)
        assert not _may(path, os.R_OK, member)
    finally:
        shutil.rmtree(top)


def test_check_config_does_not_call_missing_what_it_may_not_look_at(tmp_path, capsys, monkeypatch):
    # An ordinary user checking nagios's config cannot search /var/lib/nagios4: os.path.isdir
    # said False, and the check reported the command file's directory as missing.
    from msg_nagios_bridge.config import machine
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "nagios") + "/"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)
    monkeypatch.setattr(machine.os, "stat", stat)
    inbound = ("inbound: {enabled: true, subscriptions: [{destination: /queue/q}], policy: {rules: [{senders:"
               " ['*']}]}, command_file: {dir}/nagios/rw/nagios.cmd}")
    code, out, err = check_here(tmp_path, capsys, more=inbound)
    assert code == 0 and err == "", err
    assert f"warning: {tmp_path}/bridge.yaml: cannot check {tmp_path}/nagios/rw: Permission denied (run" \
           " check-config as root or as the bridge's user)" in out
