"""try-message and dead-letters requeue judge with the subscriber's one judgement: same verdicts,
same reasons, whole dead letters that requeue after a fix."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

from msg_nagios_bridge import config
from msg_nagios_bridge.inbound import judgement
from msg_nagios_bridge.cli import tools
from msg_nagios_bridge.model import Refused
from msg_nagios_bridge.paths import inbound_spool_path
from msg_nagios_bridge.inbound.subscriber import dead_letter
from msg_nagios_bridge.spool import Spool
from tests.sandbox.pki import Authority

REPO = Path(__file__).resolve().parents[2]
CONFIG = """
site: {{name: S}}
brokers: {{hosts: ["127.0.0.1:1"]}}
spool: {{directory: {tmp}/spool}}
sources: {{ocsp_pipe: {{enabled: false}}}}
inbound:
  enabled: true
  subscriptions: [{{destination: /queue/q}}]
  command_file: {tmp}/nagios.cmd
  policy: {{rules: [{{senders: [{senders}], hosts: ['*'], services: ['*']}}]}}
{extra}
"""


def write_config(tmp_path, senders="'site-a'", extra=""):
    path = tmp_path / "bridge.yaml"
    path.write_text(CONFIG.format(tmp=tmp_path, senders=senders, extra=extra))
    return path


def body(service="org.sam.SRM-Put", details="", when=None):
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when or time.time() - 30))
    text = (f"hostName: se01.example.org\nmetricName: {service}\nmetricStatus: CRITICAL\n"
            f"summaryData: disk full\ntimestamp: {stamp}\n")
    if details:
        text += f"detailsData: {details}\n"
    return (text + "EOT\n").encode()


def try_message(path, *args, stdin=None):
    return subprocess.run([sys.executable, "-m", "msg_nagios_bridge", "try-message", "-c", str(path), *args],
                          cwd=REPO, input=stdin, capture_output=True, timeout=60)


def test_an_accepted_message_prints_the_exact_command_line(tmp_path):
    (tmp_path / "m").write_bytes(body())
    done = try_message(write_config(tmp_path), "--header", "nagios_host=site-a", str(tmp_path / "m"))
    out = done.stdout.decode()
    assert done.returncode == 0, (out, done.stderr)
    assert "accepted from sender 'site-a'" in out
    assert "PROCESS_SERVICE_CHECK_RESULT;se01.example.org;org.sam.SRM-Put;2;disk full" in out


def test_what_would_be_written_is_shown_with_the_senders_bidi_and_c1_characters_escaped(tmp_path):
    """Regression: the command line keeps a U+202E of the sender's output (plugin text to
    Nagios), and Icinga's JSON a U+009B (a CSI to many terminals): try-message printed both raw
    to the operator's terminal, which display.printable exists to prevent."""
    import io
    settings = config.load(str(write_config(tmp_path)))
    out = io.StringIO()
    message = body(details="x \u202e gnp.exe \x9b2J y")
    assert tools.try_message(settings, {"nagios_host": "site-a"}, message, out) == tools.TRY_ACCEPTED
    shown = out.getvalue()
    assert "\u202e" not in shown and "\x9b" not in shown
    assert "disk full\\nx \\u202e gnp.exe" in shown and shown.endswith("y\n")


def test_a_refused_message_prints_the_reason_the_dead_letter_would_record(tmp_path):
    done = try_message(write_config(tmp_path), "--header", "nagios_host=stranger", "-", stdin=body())
    assert done.returncode == 1
    assert done.stdout.decode().startswith("refused: sender-not-allowed: sender 'stranger' may not send results")


def test_a_duplicate_of_what_the_bridge_injected_is_exit_3(tmp_path):
    path = write_config(tmp_path)
    settings = config.load(str(path))
    message = body()
    headers = {"nagios_host": "site-a", "result_id": "r-1"}
    with Spool(inbound_spool_path(settings)) as spool:
        verdict = judgement.judge_batch(judgement.load_rules(settings), [(headers, message)],
                                        judgement.SpoolMemory(spool), time.time())[0]
        spool.put([], newest=judgement.memory_rows([verdict]))
    done = try_message(path, "--header", "nagios_host=site-a", "--header", "result_id=r-1", "-", stdin=message)
    assert done.returncode == 3 and done.stdout.startswith(b"duplicate"), done.stdout


@pytest.mark.parametrize("args, code", [(["/nonexistent/message"], 4), (["--header", "novalue", "-"], 2)])
def test_usage_and_missing_files_are_one_line_errors(tmp_path, args, code):
    done = try_message(write_config(tmp_path), *args, stdin=b"")
    assert done.returncode == code and b"Traceback" not in done.stderr, done.stderr


def _dead_letter(settings, headers, message, exc):
    with Spool(inbound_spool_path(settings)) as spool:
        spool.add_dead_letter(dead_letter(headers, message, exc, settings.inbound.mapping.max_body_bytes), str(exc))
        return spool.dead_letters()[0].dead_id


def test_a_100_kb_message_refused_by_policy_is_kept_whole_and_requeued_after_the_fix(tmp_path):
    """Regression: dead letters kept only 64 KiB of a body, so a valid 100 kB message refused by
    policy was 'still refused: no-eot' after the policy was fixed."""
    message = body(details="x" * 100_000)
    headers = {"nagios_host": "stranger", "destination": "/queue/q"}
    settings = config.load(str(write_config(tmp_path)))
    verdict = judgement.judge_batch(judgement.load_rules(settings), [(headers, message)],
                                    judgement.NoMemory(), time.time())[0]
    assert verdict.refusal.reason == "sender-not-allowed"
    dead_id = _dead_letter(settings, headers, message, verdict.refusal)
    fixed = config.load(str(write_config(tmp_path, senders="'site-a', 'stranger'")))
    with Spool(inbound_spool_path(fixed), exclusive=False) as spool:
        letter = spool.dead_letters()[0]
        assert letter.entry.message.body == message
        out = _Out()
        assert tools.requeue(fixed, "inbound", spool, [dead_id], out) == 1, out.text
        assert spool.dead_letters() == [] and spool.stats().depth == 1


def test_requeue_judges_the_signature_like_the_subscriber(tmp_path):
    """Regression: requeue --inbound judged with its own copy of sender/decode/policy that never
    verified, so a forged message refused as unsigned was accepted on requeue."""
    authority = Authority(tmp_path / "pki")
    extra = f"  signatures: {{required: true, ca_file: {authority.cert_file}}}"
    settings = config.load(str(write_config(tmp_path, senders="'*'", extra=extra)))
    headers = {"nagios_host": "site-a", "destination": "/queue/q"}
    dead_id = _dead_letter(settings, headers, body(), Refused("unsigned", "the message carries no signature"))
    with Spool(inbound_spool_path(settings), exclusive=False) as spool:
        out = _Out()
        assert tools.requeue(settings, "inbound", spool, [dead_id], out) == 0
        assert "still refused: unsigned" in out.text and spool.stats().depth == 0


class _Out:
    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += text


def test_an_unreadable_objects_cache_is_named_by_its_key(tmp_path):
    # It said "cannot judge: [Errno 2] No such file or directory: '...'", not which setting.
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("policy: {rules:", f"policy: {{objects_cache: {tmp_path}/gone.cache, rules:"))
    settings = config.load(str(path))
    with pytest.raises(tools.ToolError, match=r"gone.cache \(inbound.policy.objects_cache\): No such file"):
        tools.try_message(settings, {"nagios_host": "site-a"}, body(), __import__("io").StringIO())
    done = try_message(path, "--header", "nagios_host=site-a", "-", stdin=body())
    assert done.returncode == 4 and b"inbound.policy.objects_cache" in done.stderr, done.stderr
