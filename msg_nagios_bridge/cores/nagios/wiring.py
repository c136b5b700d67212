"""The Nagios side of the bridge: ``define command`` blocks and nagios.cfg lines.

What ``msg-nagios-bridge nagios-config`` prints, derived from the settings so
that the FIFO path, perfdata paths and templates can never drift apart.
"""
from __future__ import annotations

import shlex
from typing import List

from ...config import Settings
from . import ocsp_record, result_line

# The OCSP command puts every macro in single quotes. That is safe only if no
# macro value can contain a single quote: Nagios strips these characters from
# output/perfdata macros (illegal_macro_output_chars) and refuses them in
# object names (illegal_object_name_chars, whose default already has ').
ILLEGAL_MACRO_OUTPUT_CHARS = "`~$&|'\"<>"


def ocsp_command(tag: str, macros, fifo: str, token_file: str) -> str:
    """The OCSP/OCHP command: one framed record (formats/ocsp_record.py) into ``fifo``.

    Still one ``sh`` and no other process: ``read``, ``printf``, ``$((...))`` and ``${#v}``
    are builtins. Every macro goes into a variable so that the record's byte length can be
    counted (``LC_ALL=C``: a bash as /bin/sh would count characters otherwise; dash counts
    bytes anyway). In a Nagios command line ``$$`` is a ``$``, hence the doubled ones; there is
    no ``;`` (it starts a comment in a Nagios object file) and no ``'`` but the quotes.
    A missing token file leaves the token empty: the bridge refuses such records
    (``ocsp-no-token``), it never takes a record it cannot check.
    """
    names = [f"v{index}" for index in range(len(macros))]
    assign = " ".join(f"{name}='{macro}'" for name, macro in zip(names, macros))
    # The result line: the tag, then one tab before each field.
    fixed = len(tag) + len(macros)
    length = "+".join([str(fixed)] + [f"$${{#{name}}}" for name in names])
    fmt = "%s:%s %s\\t" + tag + "".join("\\t%s" for _ in macros) + "\\t%s:%s\\n"
    values = " ".join(f'"$${name}"' for name in names)
    # && and ||, not ';': a ';' starts a comment in a Nagios object file.
    return (f"LC_ALL=C && read -r t < {shlex.quote(token_file)} || t= && {assign} && "
            f"printf '{fmt}' \"$$t\" $$$$ $$(({length})) {values} \"$$t\" $$$$ >> {shlex.quote(fifo)}")


def _define_command(name: str, line: str) -> List[str]:
    return ["define command {", f"    command_name    {name}", f"    command_line    {line}", "}", ""]


def wants_host_results(settings: Settings) -> bool:
    return any(route.host_checks for route in settings.routes)


def object_definitions(settings: Settings) -> str:
    lines: List[str] = []
    hosts = wants_host_results(settings)
    if settings.ocsp_pipe.enabled:
        fifo = settings.ocsp_pipe.path
        token_file = ocsp_record.token_path(settings.ocsp_pipe.path)
        lines += _define_command("msg-bridge-ocsp", ocsp_command(
            result_line.SERVICE_TAG, result_line.SERVICE_MACROS, fifo, token_file))
        if hosts:
            lines += _define_command("msg-bridge-ochp", ocsp_command(
                result_line.HOST_TAG, result_line.HOST_MACROS, fifo, token_file))
    perf = settings.perfdata
    if perf.enabled and perf.rotate_interval:
        for kind, path in (("service", perf.service_file), ("host", perf.host_file)):
            if kind == "host" and not hosts:
                continue
            lines += _define_command(f"msg-bridge-rotate-{kind}-perfdata",
                                     f"/bin/mv -f {shlex.quote(path)} {shlex.quote(path + '.old')}")
    return "\n".join(lines)


def main_config_lines(settings: Settings) -> str:
    lines: List[str] = []
    hosts = wants_host_results(settings)
    if settings.ocsp_pipe.enabled:
        lines += ["obsess_over_services=1", "ocsp_command=msg-bridge-ocsp", "ocsp_timeout=5"]
        if hosts:
            lines += ["obsess_over_hosts=1", "ochp_command=msg-bridge-ochp", "ochp_timeout=5"]
        lines += [f"illegal_macro_output_chars={ILLEGAL_MACRO_OUTPUT_CHARS}"]
    perf = settings.perfdata
    if perf.enabled:
        lines += ["process_performance_data=1"]
        kinds = [("service", perf.service_file, result_line.service_template())]
        if hosts:
            kinds.append(("host", perf.host_file, result_line.host_template()))
        for kind, path, template in kinds:
            lines += [f"{kind}_perfdata_file={path}",
                      f"{kind}_perfdata_file_template={template}",
                      f"{kind}_perfdata_file_mode=a"]
            if perf.rotate_interval:
                lines += [f"{kind}_perfdata_file_processing_interval={perf.rotate_interval}",
                          f"{kind}_perfdata_file_processing_command=msg-bridge-rotate-{kind}-perfdata"]
    return "\n".join(lines)


def inbound_settings_lines(settings: Settings) -> List[str]:
    """The nagios.cfg settings inbound relies on, as this config names them (Debian's defaults
    already have most): shown as comments, for Nagios's own file may differ in its paths."""
    inbound = settings.inbound
    if not inbound.enabled:
        return []
    lines = ["accept_passive_service_checks=1"]
    if any(rule.host_checks for rule in inbound.rules):
        lines.append("accept_passive_host_checks=1")
    if inbound.writer == "command_file":
        lines += ["check_external_commands=1", f"command_file={inbound.command_file}"]
    if inbound.check_result_path:
        lines.append(f"check_result_path={inbound.check_result_path}")
    if inbound.objects_cache:
        lines.append(f"object_cache_file={inbound.objects_cache}")
    if inbound.nagios_lock_file:
        lines.append(f"lock_file={inbound.nagios_lock_file}")
    return lines


def render(settings: Settings) -> str:
    """The full text printed by ``nagios-config``."""
    outbound = main_config_lines(settings)
    inbound = inbound_settings_lines(settings)
    parts = [
        f"# Nagios wiring for msg-nagios-bridge, generated from {settings.file}.",
        "# 1. Put the command definitions in an object file Nagios reads (a cfg_dir),",
        "#    e.g. /etc/nagios4/conf.d/msg-nagios-bridge.cfg (Debian; not /etc/nagios4/objects):",
        "",
        object_definitions(settings) or "#    (none: no outbound source is enabled)\n",
        "# 2. Add these lines to nagios.cfg (and remove other values for the same keys):",
        "",
        outbound or "#    (none: no outbound source is enabled)",
        "",
    ]
    if inbound:
        parts += ["# 2b. Inbound: nagios.cfg must have these settings, with the same paths as the bridge's",
                  "#     config (the bridge writes to the command file, reads objects.cache, ...):",
                  "#"] + [f"#     {line}" for line in inbound] + [""]
    parts += [
        "# 3. Optional, per service or host: custom variables the bridge passes on:",
        "#      _MSG_FLAVOUR  serviceFlavour in the message   _MSG_URI  serviceURI",
        "#      _MSG_PUBLISH  0 = never publish this service's results",
        "#    Their values must not contain a single quote.",
        "# Then check with 'nagios4 -v /etc/nagios4/nagios.cfg' and reload Nagios.",
    ]
    if settings.ocsp_pipe.enabled and settings.perfdata.enabled:
        parts.append("# Warning: both sources are enabled, so every result is published twice (and the two "
                     "copies differ when the OCSP path stripped characters). Enable one source.")
    return "\n".join(parts) + "\n"
