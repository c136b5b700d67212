"""The command line behaves like a Unix tool, and its man page says what its parser does."""
import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from msg_nagios_bridge.cli.main import EXAMPLES, EXIT_CLOSED_PIPE, build_parser, main

REPO = Path(__file__).resolve().parents[2]
MAN = (REPO / "packaging" / "msg-nagios-bridge.8").read_text()
CONFIG = """site: {name: S}
brokers: {hosts: ["127.0.0.1:1"]}
spool: {directory: /tmp/x}
"""


def subcommands(parser, prefix=""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + name, sub
                yield from subcommands(sub, prefix + name + " ")


def test_every_subcommand_has_help_with_an_example_and_a_man_page_entry():
    names = [name for name, _ in subcommands(build_parser())]
    assert {"run", "check-config", "nagios-config", "status", "check", "dead-letters", "try-message", "send",
            "dead-letters requeue"} <= set(names)
    documented = set(re.findall(r"^\.B ([a-z-]+)", MAN.split(".SH COMMANDS")[1].split(".SH EXIT STATUS")[0], re.M))
    for name, sub in subcommands(build_parser()):
        assert sub.epilog == EXAMPLES[name] and f"msg-nagios-bridge {name}" in sub.epilog, name
        assert name.split()[0] in documented, f"man page lists no {name}"
        if " " in name:
            assert re.search(rf"\b{name.split()[1]}\b", MAN), f"man page names no {name}"
    assert documented <= {name for name in names if " " not in name}, documented


def test_the_man_page_lists_every_exit_code_the_code_uses():
    listed = {int(code) for code in re.findall(r"^\.B (\d+)$", MAN.split(".SH EXIT STATUS")[1].split(".SH")[0], re.M)}
    assert listed == {0, 1, 2, 3, 4, 130, EXIT_CLOSED_PIPE}


def run(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "msg_nagios_bridge", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kwargs)


def test_a_closed_pipe_ends_quietly(tmp_path):
    """Regression: `check-config -v | head` ended in a BrokenPipeError traceback."""
    (tmp_path / "c.yaml").write_text(CONFIG)
    read_end, write_end = os.pipe()
    os.close(read_end)                               # the reader is gone before the first write
    try:
        done = subprocess.run([sys.executable, "-m", "msg_nagios_bridge", "check-config", "-v", "-c",
                               str(tmp_path / "c.yaml")], cwd=REPO, stdout=write_end, stderr=subprocess.PIPE,
                              timeout=30)
    finally:
        os.close(write_end)
    assert done.returncode == EXIT_CLOSED_PIPE and b"Traceback" not in done.stderr, done.stderr
    assert done.stderr == b"", done.stderr


def test_interrupt_and_missing_files_give_one_line_not_a_traceback(tmp_path):
    proc = run("try-message", "-c", str(tmp_path / "missing.yaml"), "-")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and b"Traceback" not in err and err.count(b"\n") == 1, err
    (tmp_path / "c.yaml").write_text(CONFIG + "inbound: {enabled: true, subscriptions: [{destination: /queue/q}],"
                                             " policy: {rules: [{senders: ['*']}]}}\n")
    proc = run("try-message", "-c", str(tmp_path / "c.yaml"), "-", stdin=subprocess.PIPE)
    time.sleep(1.5)                                  # reading the message from stdin
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and b"Traceback" not in err, err


def test_purge_older_than_refuses_a_negative_or_endless_age(capsys):
    # --older-than -3 meant "refused before 3 days from now": every dead letter was deleted.
    parser = build_parser()
    for days in ("-3", "nan", "inf"):
        try:
            parser.parse_args(["dead-letters", "purge", "--older-than", days])
        except SystemExit as exc:
            assert exc.code == 2, days
        else:
            raise AssertionError(f"--older-than {days} was taken")
        assert "--older-than" in capsys.readouterr().err
    assert parser.parse_args(["dead-letters", "purge", "--older-than", "0.5"]).older_than == 0.5


def test_the_nagios_config_example_does_not_put_nagios_cfg_lines_in_an_object_file():
    # Its output holds nagios.cfg lines (obsess_over_services=1 ...), which nagios -v refuses
    # in an object file: the example must not redirect it into conf.d.
    assert "conf.d" not in EXAMPLES["nagios-config"]


def test_check_with_bad_arguments_is_unknown_as_a_nagios_plugin(capsys):
    # argparse exited 2 (CRITICAL to Nagios) with the text on stderr, which Nagios does not show.
    try:
        build_parser().parse_args(["check", "--backlog", "5"])
    except SystemExit as exc:
        assert exc.code == 3
    else:
        raise AssertionError("--backlog 5 was taken")
    out = capsys.readouterr().out
    assert out.startswith("MSG-BRIDGE UNKNOWN - ") and "--backlog" in out and out.count("\n") == 1
    try:
        main(["check", "--bogus"])           # an unknown option is found by the top parser
    except SystemExit as exc:
        assert exc.code == 3
    else:
        raise AssertionError("--bogus was taken")
    assert capsys.readouterr().out.startswith("MSG-BRIDGE UNKNOWN - ")


def test_send_that_no_route_takes_fails(tmp_path, capsys):
    # It printed "no route takes this result" and exited 0, as if the test result had gone out.
    (tmp_path / "c.yaml").write_text(CONFIG)
    assert main(["send", "-c", str(tmp_path / "c.yaml"), "--host", "h", "--state", "0"]) == 1    # a host result
    assert "error: no route takes this result, nothing was sent" in capsys.readouterr().err
