"""Output is carried exactly: a site Nagios -> its bridge -> ActiveMQ -> a central bridge -> a central
Nagios shows what the site's Nagios showed (output, long output, perfdata), through both outbound
sources and both message formats. On the OCSP path Nagios itself strips illegal_macro_output_chars
and ASCII control characters (tabs) from the macros the OCSP command gets, and the central
bridge turns a tab in perfdata into a space (a grapher's tab-separated perfdata file would read
what follows as fields of its own); those are the documented differences (docs/formats.md)."""
import pytest

from msg_nagios_bridge.cores.nagios.wiring import ILLEGAL_MACRO_OUTPUT_CHARS
from tests.integration.test_outbound import nagios_wiring
from tests.sandbox.bridge import inbound_config
from tests.sandbox.nagios import active_service, host, passive_service
from tests.sandbox.ports import wait_until

pytestmark = pytest.mark.integration

HOST = "exact.example.org"
# (state, what the plugin prints). Backslashes, "\n" as two characters, a trailing backslash,
# tabs, a '|' in the long output, UTF-8, and the shell's special characters.
CASES = {
    "backslashes": (0, "OK: C:\\new\\temp and \\\\server\\share|size=5B;;;\nliteral \\n two characters\n"
                       "C:\\new\\temp again\nends with a backslash\\"),
    "trailing-backslash": (1, "WARNING: path C:\\"),
    "tabs": (0, "OK: a\ttab|t=1\tu=2\nlong\twith\ttabs\n\tindented"),
    "pipe-in-long": (2, "CRITICAL: first|a=1\nsecond line | b=2\nthird"),
    "utf8": (0, "OK: Grüße ✓ 漢字|'x y'=1;2;3\nlong: ✓✓ ünïcödé\nline 3"),
    "shell": (0, "OK: $HOME `id` $(id) ' \" ; & < > ~ %s %n\nlong ' \" $x"),
}
PLUGIN = "#!/usr/bin/python3\nimport sys\nCASES = {cases!r}\nstate, text = CASES[sys.argv[1]]\n" \
         "sys.stdout.write(text + '\\n')\nsys.exit(state)\n"
FIELDS = ("plugin_output", "long_plugin_output", "performance_data")


def shown(status, service):
    entry = status.get((HOST, service)) or {}
    return tuple(entry.get(field) for field in FIELDS)


def as_ocsp_passes_it(text):
    """What the OCSP command gets of a macro: Nagios strips illegal_macro_output_chars and every
    ASCII control character (0-31 and 127: common/macros.c, init_macros and clean_macro_chars).
    status.dat holds long output escaped, so its newlines are the two characters backslash n."""
    if text is None:
        return None
    return "".join(c for c in text if c not in ILLEGAL_MACRO_OUTPUT_CHARS and ord(c) >= 32 and ord(c) != 127)


@pytest.mark.parametrize("source, fmt", [("perfdata", "wlcg"), ("ocsp_pipe", "json")])
def test_what_the_site_nagios_shows_is_what_the_central_nagios_shows(
        source, fmt, tmp_path, activemq, bridge_factory, nagios_factory):
    # bridge_factory before nagios_factory: fixtures end in reverse order, so the site Nagios
    # stops before the site bridge, and no OCSP command is left blocked on the bridge's FIFO.
    queue = f"/queue/exact.{source}"
    central = nagios_factory(hosts=[host(HOST)], services=[passive_service(HOST, name) for name in CASES],
                             extra_cfg={"log_passive_checks": "1"})
    central_bridge = bridge_factory([activemq.stomp_port], name="central", ocsp=False,
                                    inbound=inbound_config(central, queue))
    central_bridge.start()
    site_bridge = bridge_factory([activemq.stomp_port], name="site", ocsp=source == "ocsp_pipe",
                                 perfdata=source == "perfdata",
                                 destination=queue, extra_routes="", site="SITE")
    if fmt == "json":
        site_bridge.config_path.write_text(site_bridge.config_path.read_text().replace(
            f'destination: "{queue}", host_checks: true', f'destination: "{queue}", host_checks: true, format: json'))
    site_bridge.start(wait_for=site_bridge.workdir / "ocsp.fifo" if source == "ocsp_pipe" else None)
    plugin = tmp_path / "exact.py"
    plugin.write_text(PLUGIN.format(cases=CASES))
    plugin.chmod(0o755)
    extra, objects = nagios_wiring(site_bridge)
    objects += f"\ndefine command {{\n    command_name exact\n    command_line {plugin} $ARG1$\n}}\n"
    site = nagios_factory(hosts=[host(HOST)], extra_cfg=extra, objects=objects, services=[
        {**active_service(HOST, name, max_check_attempts=1), "check_command": f"exact!{name}"}
        for name in CASES])
    assert wait_until(lambda: all(shown(site.status(), name)[0] for name in CASES), timeout=30), site.log_tail()
    expected = {name: shown(site.status(), name) for name in CASES}
    if source == "ocsp_pipe":
        expected = {name: tuple(map(as_ocsp_passes_it, fields)) for name, fields in expected.items()}
    expected = {name: (output, long_output, perfdata.replace("\t", " ") if perfdata else perfdata)
                for name, (output, long_output, perfdata) in expected.items()}
    assert "t=1 u=2" in expected["tabs"][2] or source == "ocsp_pipe", expected["tabs"]
    ok = wait_until(lambda: all(shown(central.status(), name) == expected[name] for name in CASES), timeout=40)
    got = {name: shown(central.status(), name) for name in CASES}
    assert ok, ({name: (expected[name], got[name]) for name in CASES if expected[name] != got[name]},
                site_bridge.log_text()[-1500:], central_bridge.log_text()[-1500:])
    # The site's Nagios escaped what the plugin wrote; the central one holds exactly that text.
    assert "C:\\\\new\\\\temp" in expected["backslashes"][0] + expected["backslashes"][1]
