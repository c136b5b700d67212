"""Remote text shown to an operator: escaped (display.printable) in the dead-letter tools,
the logs and the status errors."""
import io
import logging

from hypothesis import given, strategies as st

from msg_nagios_bridge import display
from msg_nagios_bridge.daemon import logsetup
from msg_nagios_bridge.cli import tools
from msg_nagios_bridge.daemon.health import Health
from msg_nagios_bridge.model import Message
from msg_nagios_bridge.spool import Spool

ESC = "\x1b]0;owned\x07\x1b[2J"       # set the window title, clear the screen
RLO = "\u202e"                         # right-to-left override: "gnp.exe" reads as "exe.png"


def test_controls_bidi_and_del_are_escaped():
    assert display.printable(ESC) == "\\x1b]0;owned\\x07\\x1b[2J"
    assert display.printable("a" + RLO + "b\x7f\x85\u2066\u200b\ufeff") == \
        "a\\u202eb\\x7f\\x85\\u2066\\u200b\\ufeff"
    assert display.printable("line\nnext\ttab", keep="\n\t") == "line\nnext\ttab"
    assert display.printable("line\nnext") == "line\\nnext"
    assert display.printable("plain text, with a \\ backslash") == "plain text, with a \\ backslash"


def test_bytes_that_are_not_utf8_are_shown_as_escapes():
    assert display.printable(b"ok \xff\x1b") == "ok \\xff\\x1b"


def test_a_cut_is_visible_and_never_splits_an_escape():
    assert display.printable("x" * 100, 10) == "x" * 10 + "...[cut, 100 characters in all]"
    assert display.printable("abcdefghi\x1b", 10) == "abcdefghi...[cut, 10 characters in all]"
    assert display.printable("short", 10) == "short"


@given(st.text())
def test_nothing_unprintable_survives(text):
    shown = display.printable(text, 50)
    assert shown.isprintable()
    assert display.printable(text).isprintable()


def _letter(tmp_path):
    spool = Spool(str(tmp_path / "in.sqlite"))
    hostile = Message(message_id="id" + ESC, destination="/topic/x" + ESC + RLO,
                      headers={"name" + ESC: "value" + RLO, "signer": "ok"}, body=("body" + ESC + "\n").encode())
    spool.add_dead_letter(hostile, "refused: sender " + ESC + RLO)
    return spool


def test_an_esc_sequence_and_u202e_in_a_header_name_value_and_destination_are_escaped(tmp_path):
    spool = _letter(tmp_path)
    listed, shown = io.StringIO(), io.StringIO()
    tools.list_dead_letters(spool, listed)
    tools.show_dead_letter(spool, spool.dead_letters(1)[0].dead_id, shown)
    for text in (listed.getvalue(), shown.getvalue()):
        assert "\x1b" not in text and "\x07" not in text and RLO not in text
        assert "\\x1b]0;owned\\x07" in text and "\\u202e" in text
    shown = shown.getvalue()
    assert "header name\\x1b]0;owned\\x07\\x1b[2J: 'value\\u202e'" in shown
    assert "destination: /topic/x\\x1b]0;owned\\x07\\x1b[2J\\u202e" in shown
    assert "body:\nbody\\x1b]0;owned\\x07\\x1b[2J\n" in shown


def test_log_lines_and_status_errors_escape_remote_text():
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logsetup.EscapingFormatter("%(levelname)s %(message)s"))
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "refused %s", ("dest" + ESC + RLO + "\nFAKE",),
                               None)
    line = handler.format(record)
    assert line == "WARNING refused dest\\x1b]0;owned\\x07\\x1b[2J\\u202e\\nFAKE"
    health = Health()
    health.error("broker refused: " + ESC)
    assert health.snapshot()["errors"][0][1] == "broker refused: \\x1b]0;owned\\x07\\x1b[2J"


def test_a_list_cut_at_its_limit_says_how_many_dead_letters_there_are(tmp_path):
    """Regression: with more dead letters than the list's limit (1,000; the spool keeps up to
    10,000), the list showed the oldest and ended "1000 dead letter(s)", as if that were all."""
    spool = Spool(str(tmp_path / "in.sqlite"))
    for number in range(3):
        spool.add_dead_letter(Message(message_id=f"m{number}", destination="/topic/x", headers={}, body=b"x"),
                              f"reason {number}")
    listed = io.StringIO()
    assert tools.list_dead_letters(spool, listed, limit=2) == 2
    text = listed.getvalue()
    assert "reason 0" in text and "reason 2" not in text
    assert text.endswith("2 of 3 dead letter(s) listed, the oldest: purge or requeue them to list the newer ones\n")
    listed = io.StringIO()
    tools.list_dead_letters(spool, listed)
    assert listed.getvalue().endswith("\n3 dead letter(s)\n")
    spool.close()
