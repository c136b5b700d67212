"""Run the bridge itself as a separate process (as an administrator would), for tests and the demo."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .fifo import write_lines
from .ports import kill_process, stop_process, track, wait_until

REPO = Path(__file__).resolve().parents[2]


def bridge_config(workdir, broker_ports, *, ocsp=True, perfdata=False, destination=None,
                  site="TEST.SITE", extra_routes="", heartbeat_ms=2000, inbound="", connect_timeout=3, spool_options="",
                  status_interval=None, **brokers):
    """YAML text for a bridge writing everything under ``workdir``; ``inbound`` is the YAML of
    an ``inbound:`` section (see ``inbound_config``); ``spool_options`` more keys of ``spool:``
    (e.g. "max_messages: 300"); ``status_interval``: daemon.status_interval (None: the default)."""
    workdir = Path(workdir)
    hosts = ", ".join(f'"127.0.0.1:{port}"' for port in broker_ports)
    broker_extra = "".join(f", {key}: {value}" for key, value in brokers.items())
    destination = destination or "/topic/grid.probe.metricOutput.EGEE.{role}.{site}"
    return f"""
site: {{name: {site}, role: site, nagios_name: test-nagios.example.org}}
brokers: {{hosts: [{hosts}], heartbeat_ms: {heartbeat_ms}, backoff_initial: 0.2, backoff_max: 2,
          connect_timeout: {connect_timeout}, receipt_timeout: 10{broker_extra}}}
spool: {{directory: {workdir}/spool{", " + spool_options if spool_options else ""}}}
sources:
  ocsp_pipe: {{enabled: {str(ocsp).lower()}, path: {workdir}/ocsp.fifo}}
  perfdata: {{enabled: {str(perfdata).lower()}, service_file: {workdir}/service-perfdata,
             host_file: {workdir}/host-perfdata, poll_interval: 0.05, rotate_interval: 0}}
routes:
  - {{name: results, destination: "{destination}", host_checks: true}}
{extra_routes}
{inbound}
logging: {{level: INFO}}
""" + (f"daemon: {{status_interval: {status_interval}}}\n" if status_interval is not None else "")


def inbound_config(nagios, destination, writer="command_file", durable_name="", rules=None,
                   objects_cache=False, mapping="", lock_file=None, sender_header=""):
    """The ``inbound:`` YAML section for injecting into the sandbox ``nagios``; ``destination``
    may be a list (a subscription each).

    The sandbox runs Nagios in the foreground, which writes no lock file (only
    ``-d`` does): pass ``lock_file`` to test that check with a file of your own."""
    rules = rules or "[{senders: ['*'], hosts: ['*'], services: ['*'], host_checks: true}]"
    durable = f", durable_name: {durable_name}" if durable_name else ""
    destinations = [destination] if isinstance(destination, str) else destination
    subscriptions = ", ".join(f'{{destination: "{name}"{durable}}}' for name in destinations)
    policy = [f"rules: {rules}"]
    if objects_cache:
        policy.append(f"objects_cache: {nagios.dir / 'objects.cache'}")
    if sender_header:
        policy.append(f"sender_header: {sender_header}")
    return f"""
inbound:
  enabled: true
  subscriptions: [{subscriptions}]
  policy: {{{", ".join(policy)}}}
  writer: {writer}
  command_file: {nagios.command_file}
  check_result_path: {nagios.check_result_path}
  nagios_lock_file: {lock_file or '""'}
  {mapping}
"""


class Bridge:
    """``msg-nagios-bridge run`` in a child process; its PID is the one we stop."""

    def __init__(self, workdir, config_text, python=None):
        """``python``: the interpreter to run it with (default: this one's)."""
        self.workdir = Path(workdir)
        self.python = python or sys.executable
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "bridge.yaml"
        self.config_path.write_text(config_text)
        self.log_path = self.workdir / "bridge.log"
        self.proc = None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self, wait_for=None, timeout=15.0):
        """Start; if ``wait_for`` is a path (the FIFO), wait until it exists."""
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.python, "-m", "msg_nagios_bridge", "run", "--allow-root", "-c", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO), start_new_session=True)
        log.close()
        track(self)
        deadline = time.monotonic() + timeout
        while wait_for is not None and not os.path.exists(wait_for):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bridge did not come up:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)
        return self

    def stop(self, timeout=30.0):
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return None
        code = stop_process(self.proc, timeout)
        return code

    def kill(self):
        if self.proc is not None:
            kill_process(self.proc)

    def signal(self, signum=signal.SIGHUP):
        self.proc.send_signal(signum)

    def status(self):
        try:
            return json.loads((self.workdir / "spool" / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def counter(self, name):
        return self.status().get("counters", {}).get(name, 0)

    def wait_status(self, predicate, timeout=20.0):
        """Wait until this process has written a status for which ``predicate(status)`` holds;
        return that status, or {} on timeout. status.json is rewritten every 2 s, and until the
        new process writes it, it is the previous process's."""
        def current():
            status = self.status()
            return status if status.get("pid") == self.pid and predicate(status) else None
        return wait_until(current, timeout) or {}

    def wait_counter(self, name, value, timeout=15.0):
        """Wait until counter ``name`` of this process reaches ``value``; return the counter."""
        counter = lambda status: status.get("counters", {}).get(name, 0)
        status = self.wait_status(lambda s: counter(s) >= value, timeout)
        return counter(status or self.status())

    def wait_state(self, part, text, timeout=20.0):
        """Wait until the state of ``part`` (e.g. "subscriber") contains ``text``; return the state."""
        state = lambda status: status.get("states", {}).get(part, "")
        return state(self.wait_status(lambda s: text in state(s), timeout))

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def ocsp_records(fifo, lines):
    """``lines`` (str or bytes) framed as the OCSP command writes them into ``fifo``, the FIFO of
    a sandbox bridge (its token is in the file beside it: formats/ocsp_record.py)."""
    from msg_nagios_bridge.cores.nagios import ocsp_record
    token = Path(ocsp_record.token_path(str(fifo))).read_text().strip()
    return [ocsp_record.frame((line.encode() if isinstance(line, str) else line).rstrip(b"\n"), token, pid)
            for pid, line in enumerate(lines, 2)]


def feed_ocsp(fifo, lines):
    """Write ``lines`` into the OCSP FIFO of a sandbox bridge as its OCSP command would: framed
    (ocsp_records), whole records of at most PIPE_BUF bytes per write(); the open() waits while
    no bridge reads the FIFO, as the shells' do."""
    write_lines(fifo, ocsp_records(fifo, lines))
