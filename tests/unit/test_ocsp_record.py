"""OCSP records that a split cannot forge (formats/ocsp_record.py) and the command that writes them."""
import os
import subprocess

from hypothesis import given, settings, strategies as st

from msg_nagios_bridge.cores.nagios import ocsp_record, result_line
from msg_nagios_bridge.model import CheckResult
from msg_nagios_bridge.cores.nagios.wiring import ocsp_command

TOKEN = "QwErTyUiOpAsDfGhJkLzXcVbNmQwErTy"
KEY = TOKEN.encode()


def line_for(host, output="ok", long_output="", state=0):
    return result_line.format_line(CheckResult(host=host, service="svc", state=state, output=output,
                                               long_output=long_output, timestamp=1700000000)).encode()


def read_stream(stream):
    """What the reader takes from a FIFO's bytes: the result lines, and the refusal reasons."""
    taken, reasons = [], []
    for line in stream.split(b"\n"):
        if line.strip():
            good, bad = ocsp_record.unwrap(line, KEY)
            taken += good
            reasons += [reason.split(":")[0] for _, reason in bad]
    return taken, reasons


def test_whole_records_are_taken():
    a, b = line_for("a.example.org"), line_for("b.example.org")
    assert read_stream(ocsp_record.frame(a, TOKEN, 10) + ocsp_record.frame(b, TOKEN, 11)) == ([a, b], [])


def test_a_split_tail_that_is_a_whole_result_line_for_another_host_is_refused():
    """Regression (issue 12): the tail after another writer's line began a line of its own and
    parsed as a whole result for a host the plugin named."""
    forged = line_for("victim.example.org", output="all fine")
    a = line_for("a.example.org", long_output="x" * 5000 + "\n" + forged.decode())
    b = line_for("b.example.org")
    # The hole, in the old unframed format: the tail after the cut is a result for the victim.
    assert result_line.parse(a[a.index(forged):].decode()).host == "victim.example.org"
    record_a = ocsp_record.frame(a, TOKEN, 10)
    cut = record_a.index(forged)                         # the plugin aligned the cut before its line
    stream = record_a[:cut] + ocsp_record.frame(b, TOKEN, 11) + record_a[cut:]
    taken, reasons = read_stream(stream)
    assert taken == [b]                                  # the whole record inside is still taken
    assert reasons == ["ocsp-split", "ocsp-split"]
    # The same tail without A's end marker (as the old command wrote it): refused as old format.
    assert read_stream(stream.replace(f"\t{TOKEN}:10\n".encode(), b"\n"))[1] == ["ocsp-split", "ocsp-old-format"]


def test_an_attacker_aligned_tail_with_a_fake_prefix_is_refused():
    """The plugin cannot know the token: a fake frame with the right length is still refused."""
    inner = line_for("victim.example.org", state=0)
    fake = b"x" * 32 + b":1 %d\t" % len(inner) + inner + b"\t" + b"x" * 32 + b":1"
    for fake_prefix in (fake, fake.replace(b"x" * 32, b""), ocsp_record.frame(inner, "Y" * 32, 5).rstrip(b"\n")):
        a = line_for("a.example.org", long_output="y" * 5000 + "\\n" * 0 + fake_prefix.decode("latin-1"))
        record_a = ocsp_record.frame(a, TOKEN, 10)
        cut = record_a.index(fake_prefix)
        stream = record_a[:cut] + ocsp_record.frame(line_for("b.example.org"), TOKEN, 11) + record_a[cut:]
        taken, reasons = read_stream(stream)
        assert taken == [line_for("b.example.org")], reasons
        assert reasons[0] == "ocsp-split" and len(reasons) == 2


def test_a_head_joined_to_another_writers_tail_of_the_right_length_is_refused():
    """A's head + B's tail, B's text padded so that the length adds up: the pids differ."""
    a = line_for("a.example.org", output="A" * 100)
    record_a = ocsp_record.frame(a, TOKEN, 10)
    head = record_a[:60]
    missing = len(record_a) - len(head) - len(f"\t{TOKEN}:11\n")
    tail = b"\tforged\t" + b"B" * (missing - len(b"\tforged\t"))
    b_tail = tail + f"\t{TOKEN}:11\n".encode()
    assert len(head + b_tail) == len(record_a)
    taken, reasons = read_stream(head + b_tail)
    assert taken == [] and reasons == ["ocsp-split"]


def test_foreign_bytes_inside_one_writers_record_are_refused():
    a = line_for("a.example.org", output="A" * 100)
    record_a = ocsp_record.frame(a, TOKEN, 10)
    assert read_stream(record_a[:80] + b"foreign" + record_a[80:]) == ([], ["ocsp-split"])


def test_a_record_whose_newline_was_cut_off_is_taken():
    a, b = line_for("a.example.org"), line_for("b.example.org")
    record_a = ocsp_record.frame(a, TOKEN, 10)
    stream = record_a[:-1] + ocsp_record.frame(b, TOKEN, 11) + b"\n"
    assert read_stream(stream) == ([a, b], [])


def test_old_format_and_missing_token_are_refused_with_reasons_and_the_token_never_shown():
    a = line_for("a.example.org")
    assert read_stream(a + b"\n")[1] == ["ocsp-old-format"]
    assert read_stream(ocsp_record.frame(a, "", 10))[1] == ["ocsp-no-token"]
    assert read_stream(ocsp_record.frame(a, "Z" * 32, 10))[1] == ["ocsp-wrong-token"]
    _, rejected = ocsp_record.unwrap(ocsp_record.frame(a, TOKEN, 10)[:-5], KEY)
    assert rejected and KEY not in rejected[0][0] and rejected[0][0].startswith(b"<token>:10 ")


RECORD_TEXT = st.sampled_from(["ok", "EOT", "\t", TOKEN[:5], ":", " ", "MNB1S\tforged", "é", "1", "\\n"]) | st.text(
    alphabet=st.characters(blacklist_characters="\n\r$'`\"<>|&~", blacklist_categories=("Cs",)), max_size=20)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(RECORD_TEXT, max_size=30).map("".join), min_size=1, max_size=4), st.data())
def test_any_interleaving_of_cut_records_yields_only_genuine_results(outputs, data):
    """Writers' records cut anywhere and interleaved in any order: every result taken is one a
    writer wrote, and every record that arrived in one piece is taken."""
    lines = [line_for(f"h{index}.example.org", output=output.replace("\t", " "), long_output=output)
             for index, output in enumerate(outputs)]
    records = [ocsp_record.frame(line, TOKEN, 100 + index) for index, line in enumerate(lines)]
    pieces = []
    for index, record in enumerate(records):
        cuts = sorted(data.draw(st.lists(st.integers(1, len(record) - 1), max_size=3, unique=True)))
        bounds = [0] + cuts + [len(record)]
        pieces.append([record[start:end] for start, end in zip(bounds, bounds[1:])])
    stream, order = b"", []
    while any(pieces):
        writer = data.draw(st.sampled_from([i for i, left in enumerate(pieces) if left]))
        order.append(writer)
        stream += pieces[writer].pop(0)
    taken, _ = read_stream(stream)
    assert set(taken) <= set(lines)
    whole = {index for index in range(len(records)) if records[index] in stream}
    assert {lines[index] for index in whole} <= set(taken)


def nagios_expand(command, values):
    """Nagios's macro substitution: $NAME$ becomes its value, $$ a $."""
    out, at = [], 0
    while at < len(command):
        if command[at] != "$":
            out.append(command[at])
            at += 1
            continue
        end = command.index("$", at + 1)
        name = command[at + 1:end]
        out.append("$" if not name else values.get(name, f"${name}$"))
        at = end + 1
    return "".join(out)


MACRO_VALUES = {"LASTSERVICECHECK": "1700000000", "HOSTNAME": "ce01.example.org", "SERVICEDESC": "org.sam.CE",
                "SERVICESTATEID": "2", "SERVICESTATETYPE": "HARD", "SERVICEATTEMPT": "1",
                "SERVICECHECKTYPE": "ACTIVE", "SERVICEOUTPUT": "CRITICAL: ünïcode € \ttab",
                "SERVICEPERFDATA": "t=1s", "LONGSERVICEOUTPUT": "line\\n" * 2000 + f"{TOKEN[:8]}:1 9\tMNB1S"}


def test_the_ocsp_command_writes_a_record_the_reader_takes_with_dash_and_bash(tmp_path):
    token_file, out = tmp_path / "ocsp.token", tmp_path / "out"
    token_file.write_text(TOKEN + "\n")
    command = nagios_expand(ocsp_command(result_line.SERVICE_TAG, result_line.SERVICE_MACROS, str(out),
                                         str(token_file)), MACRO_VALUES)
    for shell in ("dash", "bash"):
        subprocess.run([shell, "-c", command], check=True, timeout=10,
                       env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8"})
    taken, reasons = read_stream(out.read_bytes())
    assert reasons == [] and len(taken) == 2
    result = result_line.parse(taken[0].decode())
    assert result.output == "CRITICAL: ünïcode € " and result.host == "ce01.example.org"


def test_the_ocsp_command_without_its_token_file_writes_a_record_that_is_refused(tmp_path):
    out = tmp_path / "out"
    command = nagios_expand(ocsp_command(result_line.SERVICE_TAG, result_line.SERVICE_MACROS, str(out),
                                         str(tmp_path / "missing")), MACRO_VALUES)
    subprocess.run(["dash", "-c", command], timeout=10, stderr=subprocess.DEVNULL)
    assert read_stream(out.read_bytes()) == ([], ["ocsp-no-token"])


def test_the_ocsp_command_survives_a_nagios_object_file():
    """';' starts a comment in a Nagios object file (the first version was cut there)."""
    command = ocsp_command(result_line.SERVICE_TAG, result_line.SERVICE_MACROS, "/run/f", "/var/spool/t")
    assert ";" not in command and "\n" not in command
