"""The core interface (cores.Core) as Nagios implements it, and the core-neutral Intake."""
import dataclasses
import os
import threading
import time

import pytest

from msg_nagios_bridge import config
from msg_nagios_bridge.cores import Core, core_for
from msg_nagios_bridge.cores.nagios import result_line, wiring
from msg_nagios_bridge.cores.nagios.perfdata_file import PerfdataTail
from msg_nagios_bridge.cores.nagios.writer import COMMAND_LINE, CHECK_RESULT_FILE, NagiosWriter
from msg_nagios_bridge.daemon.health import Health
from msg_nagios_bridge.inbound.echo import EchoGuard
from msg_nagios_bridge.model import CheckResult
from msg_nagios_bridge.outbound.intake import Intake
from msg_nagios_bridge.outbound.routing import Router
from msg_nagios_bridge.spool import Spool

RESULT = CheckResult(host="h1", service="s1", state=1, output="warn", timestamp=1700000000)


def settings_for(tmp_path, inbound="", perfdata="false", routes="[{name: r, destination: /queue/q}]", policy=""):
    return config.parse(f"""
site: {{name: S}}
brokers: {{hosts: ["127.0.0.1:1"]}}
spool: {{directory: {tmp_path}/spool}}
sources: {{ocsp_pipe: {{enabled: false}},
          perfdata: {{enabled: {perfdata}, service_file: {tmp_path}/service-perfdata,
                      host_file: {tmp_path}/host-perfdata, poll_interval: 0.05}}}}
routes: {routes}
inbound: {{enabled: true, subscriptions: [{{destination: /queue/q}}], policy: {{rules: [{{senders: ['*']}}]{policy}}},
          command_file: {tmp_path}/nagios.cmd {inbound}}}
""", "core.yaml")


def test_nagios_is_the_core_and_implements_the_interface(tmp_path):
    settings = settings_for(tmp_path)
    core = core_for(settings)
    assert isinstance(core, Core) and core.name == "nagios"
    assert core.wiring() == wiring.render(settings)


def test_the_object_list_is_objects_cache_and_its_version_follows_the_file(tmp_path):
    assert core_for(settings_for(tmp_path)).known_objects() is None, "not configured: no check"
    assert core_for(settings_for(tmp_path)).objects_version() is None
    cache = tmp_path / "objects.cache"
    core = core_for(settings_for(tmp_path, policy=f", objects_cache: {cache}"))
    assert core.objects_source == str(cache)
    with pytest.raises(OSError):
        core.objects_version()
    with pytest.raises(OSError):
        core.known_objects()
    cache.write_text("define host {\n\thost_name\th1\n\t}\n")
    os.utime(cache, (1, 1))
    first = core.objects_version()
    known = core.known_objects()          # compact (inbound/compact.py): membership, no listing
    assert len(known) == 1 and ("h1", None) in known and ("h1", "s1") not in known
    cache.write_text("define service {\n\thost_name\th1\n\tservice_description\ts1\n\t}\n")
    assert core.objects_version() != first, "Nagios rewrote it: the bridge reloads the list"
    known = core.known_objects()
    assert len(known) == 1 and ("h1", "s1") in known and ("h1", None) not in known


def test_the_echo_signal_is_a_passive_check():
    core = core_for(settings_for("/tmp"))
    assert core.may_be_echo(CheckResult(host="h", service="s", state=0, attributes={"check_type": "PASSIVE"}))
    assert not core.may_be_echo(CheckResult(host="h", service="s", state=0, attributes={"check_type": "ACTIVE"}))
    assert not core.may_be_echo(CheckResult(host="h", service="s", state=0))


def test_preview_is_what_the_writer_would_write(tmp_path):
    core = core_for(settings_for(tmp_path))
    kind, text = core.preview(RESULT)
    assert kind == COMMAND_LINE and text.startswith("[1700000000] PROCESS_SERVICE_CHECK_RESULT;h1;s1;1;warn")
    big = CheckResult(host="h1", service="s1", state=0, output="x" * 5000, timestamp=1)
    with_dir = core_for(settings_for(tmp_path, inbound=f", check_result_path: {tmp_path}"))
    assert with_dir.preview(big)[0] == CHECK_RESULT_FILE, "too big for one line: through the directory"


def test_the_writer_is_the_nagios_writer_on_the_given_spool(tmp_path):
    with Spool(str(tmp_path / "inbound.sqlite")) as spool:
        writer = core_for(settings_for(tmp_path)).writer(spool, Health(), EchoGuard())
        assert isinstance(writer, NagiosWriter) and writer.spool is spool and not writer.is_alive()


def test_start_sources_starts_the_perfdata_tailers_on_intakes_of_the_callers_making(tmp_path):
    settings = settings_for(tmp_path, perfdata="true",
                            routes="[{name: r, destination: /queue/q, host_checks: true}]")
    stopping = threading.Event()
    made = []

    with Spool(str(tmp_path / "outbound.sqlite")) as spool:
        def intake_for(source, parse):
            made.append((source, parse))
            return Intake(source, Router(settings), spool, Health(), stopping, parse)

        sources = core_for(settings).start_sources(intake_for, Health())
        try:
            assert [type(source) for source in sources] == [PerfdataTail, PerfdataTail], "services and hosts"
            assert all(source.is_alive() for source in sources)
            assert made == [("perfdata", result_line.parse)] * 2
        finally:
            stopping.set()
            for source in sources:
                source.join(10)
        assert not any(source.is_alive() for source in sources)
    nothing = settings_for(tmp_path)
    assert core_for(nothing).start_sources(lambda source, parse: pytest.fail("no source"), Health()) == []


def test_the_intake_dead_letters_what_the_cores_parser_refuses_with_its_reason(tmp_path):
    """The intake knows no core's format: the parser it is given decides."""
    def parse(text):
        if text != "good":
            raise ValueError(f"not good: {text}")
        return RESULT

    settings = settings_for(tmp_path)
    with Spool(str(tmp_path / "outbound.sqlite")) as spool:
        intake = Intake("test", Router(settings), spool, Health(), threading.Event(), parse)
        assert intake.spool_lines([b"good", b"bad"])
        assert spool.stats().depth == 1
        [letter] = spool.dead_letters()
        assert letter.reason == "not good: bad"


def test_nagios_config_prints_the_cores_wiring(tmp_path, capsys):
    from msg_nagios_bridge.cli.main import main
    from tests.unit.test_config import EXAMPLE
    assert main(["nagios-config", "-c", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out == core_for(config.load(str(EXAMPLE))).wiring()


def one_result_per_line(text):
    return dataclasses.replace(RESULT, timestamp=RESULT.timestamp + len(text))   # another id


def test_an_intake_waiting_for_room_stores_as_soon_as_the_spool_frees_some(tmp_path):
    """No poll: the spool's delete wakes the waiting batch (the old wait was a 1 s step).
    Each line makes one message per route, so the spool is sized to hold exactly one line."""
    settings = settings_for(tmp_path)
    per_line = len(Router(settings).messages(RESULT, 0))
    with Spool(str(tmp_path / "outbound.sqlite"), max_messages=per_line) as spool:
        intake = Intake("test", Router(settings), spool, Health(), threading.Event(), one_result_per_line)
        assert intake.spool_lines([b"first"])
        stored = threading.Event()
        waiting = threading.Thread(target=lambda: intake.spool_lines([b"second"]) and stored.set())
        waiting.start()
        time.sleep(0.3)
        assert not stored.is_set(), "the spool is full: the second line must wait"
        freed = time.monotonic()
        spool.done([entry.entry_id for entry in spool.take(per_line)])
        assert stored.wait(5)
        assert time.monotonic() - freed < 0.5
        waiting.join(5)


def test_a_stop_ends_an_intake_waiting_for_room_at_once(tmp_path):
    settings = settings_for(tmp_path)
    per_line = len(Router(settings).messages(RESULT, 0))
    stopping = threading.Event()
    with Spool(str(tmp_path / "outbound.sqlite"), max_messages=per_line) as spool:
        intake = Intake("test", Router(settings), spool, Health(), stopping, one_result_per_line)
        assert intake.spool_lines([b"first"])
        outcome = []
        waiting = threading.Thread(target=lambda: outcome.append(intake.spool_lines([b"second"])))
        waiting.start()
        time.sleep(0.3)
        asked = time.monotonic()
        stopping.set()
        intake.wake()
        waiting.join(5)
        assert outcome == [False] and time.monotonic() - asked < 0.5


def test_a_long_batch_is_spooled_a_piece_at_a_time_with_the_cursor_last(tmp_path):
    """The publisher can send the first lines of a backlog while later ones are parsed; the
    source's cursor is stored only with the last piece (a crash re-reads, never skips)."""
    from msg_nagios_bridge.outbound import intake as intake_module
    settings = settings_for(tmp_path)
    per_line = len(Router(settings).messages(RESULT, 0))
    lines = [b"line %d" % number for number in range(intake_module.PIECE_LINES * 2 + 1)]
    with Spool(str(tmp_path / "outbound.sqlite")) as spool:
        seen_while_parsing = {}

        def parse(text):
            number = int(text.split()[1])
            seen_while_parsing[number] = (spool.stats().depth, spool.cursor("c"))
            return dataclasses.replace(RESULT, timestamp=RESULT.timestamp + number)

        intake = Intake("test", Router(settings), spool, Health(), threading.Event(), parse)
        assert intake.spool_lines(lines, cursor=("c", "end"))
        piece = intake_module.PIECE_LINES
        assert seen_while_parsing[piece - 1] == (0, None)
        assert seen_while_parsing[piece] == (piece * per_line, None), "the first piece is stored before the second is parsed"
        assert seen_while_parsing[2 * piece] == (2 * piece * per_line, None)
        assert spool.stats().depth == len(lines) * per_line and spool.cursor("c") == "end"


def test_an_empty_batch_still_stores_its_cursor(tmp_path):
    settings = settings_for(tmp_path)
    with Spool(str(tmp_path / "outbound.sqlite")) as spool:
        intake = Intake("test", Router(settings), spool, Health(), threading.Event(), one_result_per_line)
        assert intake.spool_lines([], cursor=("c", "7")) and intake.spool_lines([b"  "], cursor=("d", "8"))
        assert (spool.cursor("c"), spool.cursor("d"), spool.stats().depth) == ("7", "8", 0)


def test_the_wiring_names_an_object_directory_debian_s_nagios_reads(tmp_path):
    # Debian's nagios.cfg reads cfg_dir=/etc/nagios4/conf.d; /etc/nagios4/objects holds only
    # the cfg_file entries it names, so a file put there as suggested was never read.
    text = wiring.render(settings_for(tmp_path, perfdata="true"))
    assert "/etc/nagios4/conf.d/msg-nagios-bridge.cfg" in text
    assert "/etc/nagios4/objects/" not in text


def test_the_wiring_of_an_inbound_bridge_names_the_nagios_cfg_settings_it_relies_on(tmp_path):
    # An inbound-only config printed two empty sections: nothing about the command file.
    settings = settings_for(tmp_path, policy=", objects_cache: /var/lib/nagios4/objects.cache")
    text = wiring.render(settings)
    assert "(none: no outbound source is enabled)" in text
    for line in ("accept_passive_service_checks=1", "check_external_commands=1",
                 f"command_file={tmp_path}/nagios.cmd", "object_cache_file=/var/lib/nagios4/objects.cache"):
        assert f"#     {line}\n" in text, line
    assert "accept_passive_host_checks" not in text
    assert wiring.main_config_lines(settings) == ""      # comments only: nagios.cfg's paths may differ
