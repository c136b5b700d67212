"""Run a real Icinga 2 core (Debian `icinga2-bin`, 2.13) from its own config tree in a temp dir,
with its REST API on 127.0.0.1 and a test CA.

`icinga2 daemon` starts an umbrella process, which forks the worker that loads the config; a
reload (SIGHUP) forks a new worker and ends the old one. Every process is stopped by PID."""
import base64
import grp
import http.client
import json
import os
import pwd
import queue
import secrets
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections import namedtuple
from pathlib import Path

from .pki import Authority
from .ports import descendants_of, free_port, kill_process, track

ICINGA2_BIN = "/usr/sbin/icinga2"
HOST = "127.0.0.1"

TEMPLATES = """template Host "sandbox-host" {
  check_command = "dummy"
  enable_active_checks = false
  max_check_attempts = 1
  // A passive object's result counts as fresh for check_interval; once stale, the checker (if
  // enabled) runs check_command itself. A day keeps that out of a test's way.
  check_interval = 1d
  retry_interval = 1d
  enable_flapping = false
  enable_notifications = false
  enable_event_handler = false
  vars.dummy_state = 0
  vars.dummy_text = "sandbox host up"
}

template Service "sandbox-service" {
  check_command = "dummy"
  enable_active_checks = false
  max_check_attempts = 1
  check_interval = 1d
  retry_interval = 1d
  enable_flapping = false
  enable_notifications = false
  enable_event_handler = false
}
"""

Reply = namedtuple("Reply", "status body headers")
Reply.__doc__ = """An API answer: HTTP status, the body (parsed JSON when it is JSON, else text), headers."""


def check_installed():
    """Raise RuntimeError unless the icinga2 binary and its template library are present."""
    missing = [str(p) for p in (Path(ICINGA2_BIN), Path("/usr/share/icinga2/include/itl")) if not p.exists()]
    if missing:
        raise RuntimeError("Icinga 2 sandbox cannot run, missing: " + ", ".join(missing) +
                           " (apt-get install --no-install-recommends icinga2-bin icinga2-common)")


# -- objects ---------------------------------------------------------------------------------------

def literal(value):
    """``value`` (str, bool, int, float, list, dict, None) written in the Icinga 2 config language."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        if "$" in escaped:  # a macro in a check command's argument; never meant here
            raise ValueError(f"no $ in sandbox strings: {value!r}")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[ " + ", ".join(literal(v) for v in value) + " ]"
    if isinstance(value, dict):
        return "{\n" + "".join(f"    {literal(str(k))} = {literal(v)}\n" for k, v in value.items()) + "  }"
    raise TypeError(f"no Icinga 2 literal for {value!r}")


def host(name, **attributes):
    """A host (passive, always UP) from the sandbox template; ``attributes`` are Host attributes,
    ``vars`` a dict of custom variables."""
    return {"type": "Host", "name": name, "attributes": attributes}


def passive_service(host_name, name, **attributes):
    """A passive-only service: active checks off, results only through the API."""
    return {"type": "Service", "name": name, "host_name": host_name, "attributes": attributes}


def active_service(host_name, name, state=0, output="OK", interval=1, **attributes):
    """A service actively checked every ``interval`` s by the built-in `dummy` check (no plugin
    process): its result is ``state`` and ``output`` as given. Needs the checker, which the
    sandbox enables when an active object exists."""
    attributes = {"enable_active_checks": True, "check_interval": interval, "retry_interval": interval,
                  **attributes}
    attributes["vars"] = {"dummy_state": int(state), "dummy_text": output, **attributes.get("vars", {})}
    return passive_service(host_name, name, **attributes)


def _define(obj):
    lines = [f'object {obj["type"]} {literal(obj["name"])} {{',
             f'  import "sandbox-{obj["type"].lower()}"']
    if obj["type"] == "Service":
        lines.append(f'  host_name = {literal(obj["host_name"])}')
    for key, value in obj["attributes"].items():
        if key == "vars":  # one line a variable: the template's own variables stay
            lines += [f"  vars[{literal(str(k))}] = {literal(v)}" for k, v in value.items()]
        else:
            lines.append(f"  {key} = {literal(value)}")
    return "\n".join(lines) + "\n}\n"


# -- processes -------------------------------------------------------------------------------------

def _start_time(pid):
    """The kernel's start time of ``pid`` (clock ticks since boot), None if it is gone or a
    zombie: with the PID it names one process, even after the PID is reused."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in "ZX" else int(fields[19])


# -- the API ---------------------------------------------------------------------------------------

class ApiConnection:
    """One kept-alive HTTPS connection to the API; ``request`` sends one request and reads its
    whole answer. Not thread-safe."""

    def __init__(self, port, context, auth=None, timeout=10.0):
        self.conn = http.client.HTTPSConnection(HOST, port, context=context, timeout=timeout)
        self.headers = {"Accept": "application/json"}
        if auth:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"

    def request(self, method, path, body=None, headers=None):
        """``body``: a dict/list (sent as JSON), bytes or str (sent as they are), or None."""
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        sent = dict(self.headers, **(headers or {}))
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        self.conn.request(method, path, body=data, headers=sent)
        response = self.conn.getresponse()
        raw = response.read()
        text = raw.decode("utf-8", "replace")
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = text
        return Reply(response.status, parsed, dict(response.getheaders()))

    def sock(self):
        """The socket in use (None before the first request or after the server closed it)."""
        return self.conn.sock

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class EventStream:
    """A ``POST /v1/events`` stream read by a thread: each event (a dict) lands in ``events``
    and a queue. ``status`` is the HTTP status of the answer."""

    def __init__(self, port, context, auth, types, queue_name, filter=None, timeout=10.0):
        self.conn = ApiConnection(port, context, auth, timeout)
        body = {"types": list(types), "queue": queue_name}
        if filter:
            body["filter"] = filter
        headers = dict(self.conn.headers, **{"Content-Type": "application/json"})
        self.conn.conn.request("POST", "/v1/events", body=json.dumps(body).encode(), headers=headers)
        self.sock = self.conn.conn.sock  # http.client lets go of it: the stream ends with the connection
        self.response = self.conn.conn.getresponse()
        self.status = self.response.status
        self.events, self._queue = [], queue.Queue()
        self.ended = threading.Event()  # the server ended the stream (or close() was called)
        self.error_body = None
        self.error = None  # what ended the reading, if not the end of the stream
        if self.status != 200:
            self.error_body = self.response.read().decode("utf-8", "replace")
            self.ended.set()
            return
        self.sock.settimeout(None)  # an idle stream is no error
        self._thread = threading.Thread(target=self._read, daemon=True, name="icinga2-events")
        self._thread.start()

    def _read(self):
        try:
            for line in self.response:
                if line.strip():
                    event = json.loads(line)
                    self.events.append(event)
                    self._queue.put(event)
        except (OSError, ValueError, AttributeError, http.client.HTTPException) as e:
            self.error = e  # AttributeError: http.client after close() from another thread
        finally:
            self.ended.set()

    def wait_for(self, predicate=lambda event: True, timeout=10.0):
        """The first event not yet taken for which ``predicate`` is true; TimeoutError if none comes."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no matching event within {timeout}s ({len(self.events)} seen)") from None
            if predicate(event):
                return event

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.response.close()
        self.conn.close()
        self.ended.set()


# -- the core --------------------------------------------------------------------------------------

class Icinga2:
    """A sandbox Icinga 2: config, state, log, run and spool dirs inside ``workdir``; the API on
    127.0.0.1:``api_port`` with a certificate from its own test CA.

    objects: dicts from host() / passive_service() / active_service(); hosts used by services
        are added. Icinga needs no object at all.
    api_users: {name: {"password": ..., "client_cn": ..., "permissions": [...]}} added to the
        default user ``root`` (random password, all permissions).
    checker: run the CheckerComponent (active checks, and freshness checks of passive objects);
        None: only when an object has active checks.
    extra_config: raw config appended (e.g. more CheckCommands).
    """

    def __init__(self, workdir, objects=(), api_users=None, checker=None, extra_config="", api_port=None,
                 node_name="icinga-sandbox", start_timeout=60.0):
        self.dir = Path(workdir).resolve()
        self.objects = [dict(o) for o in objects]
        self.password = secrets.token_urlsafe(16)
        self.user = "root"
        self.api_users = {self.user: {"password": self.password, "permissions": ["*"]}, **(api_users or {})}
        self.checker = checker
        self.extra_config = extra_config
        self.api_port = api_port or free_port()
        self.node_name = node_name
        self.start_timeout = start_timeout
        self.conf_dir = self.dir / "etc"
        self.data_dir = self.dir / "var" / "lib"
        self.log_dir = self.dir / "var" / "log"
        self.cache_dir = self.dir / "var" / "cache"
        self.spool_dir = self.dir / "var" / "spool"
        self.run_dir = self.dir / "run"
        self.conf_file = self.conf_dir / "icinga2.conf"
        self.log_file = self.log_dir / "icinga2.log"
        self.console_file = self.dir / "console.log"
        self.ca = None
        self.proc = None
        self.started_in = None
        self.processes = {}  # pid -> start time: every process of ours seen, for stop()
        self.killed = []     # PIDs stop()/kill() had to SIGKILL

    @property
    def auth(self):
        return (self.user, self.password)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    # -- config ----------------------------------------------------------------------------------
    def defines(self):
        """The -D options that move every path Icinga writes into the sandbox dir."""
        user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
        paths = {"ConfigDir": self.conf_dir, "DataDir": self.data_dir, "LogDir": self.log_dir,
                 "CacheDir": self.cache_dir, "SpoolDir": self.spool_dir, "InitRunDir": self.run_dir}
        return ([f"-D{name}={path}" for name, path in paths.items()] +
                [f"-DRunAsUser={user}", f"-DRunAsGroup={group}"])

    def command(self, *options):
        return [ICINGA2_BIN, "daemon", "-c", str(self.conf_file), *self.defines(), *options]

    def _checker_wanted(self):
        if self.checker is not None:
            return self.checker
        return any(o["attributes"].get("enable_active_checks") for o in self.objects)

    def objects_config(self):
        hosts = {o["name"]: o for o in self.objects if o["type"] == "Host"}
        for o in self.objects:
            if o["type"] == "Service":
                hosts.setdefault(o["host_name"], host(o["host_name"]))
        services = [o for o in self.objects if o["type"] == "Service"]
        return "\n".join([TEMPLATES] + [_define(o) for o in [*hosts.values(), *services]])

    def main_config(self):
        users = "".join(
            f'object ApiUser {literal(name)} {{\n' +
            "".join(f"  {key} = {literal(value)}\n" for key, value in user.items()) + "}\n"
            for name, user in self.api_users.items())
        checker = 'object CheckerComponent "checker" { }\n' if self._checker_wanted() else ""
        return f"""// msg-nagios-bridge test sandbox
const NodeName = {literal(self.node_name)}
const ZoneName = "master"
const TicketSalt = ""

include <itl>

object Endpoint NodeName {{ }}
object Zone ZoneName {{ endpoints = [ NodeName ] }}

object FileLogger "main-log" {{
  severity = "information"
  path = LogDir + "/icinga2.log"
}}

object ApiListener "api" {{
  bind_host = "{HOST}"
  bind_port = "{self.api_port}"
  accept_config = false
  accept_commands = false
}}

{checker}
{users}
include "objects.conf"
{self.extra_config}
"""

    def _make_certificates(self):
        """Test CA, and the API's certificate where 2.13 looks for it: DataDir/certs/NodeName.crt
        (its CN is the API identity and names the Endpoint)."""
        if self.ca is None:
            self.ca = Authority(self.dir / "pki", name="Icinga Sandbox CA")
        certs = self.data_dir / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        cert, key = self.ca.issue("api", self.node_name, hosts=(HOST, "localhost"))
        (certs / f"{self.node_name}.crt").write_bytes(cert.read_bytes())
        (certs / f"{self.node_name}.key").write_bytes(key.read_bytes())
        (certs / f"{self.node_name}.key").chmod(0o600)
        (certs / "ca.crt").write_bytes(self.ca.cert_file.read_bytes())

    @property
    def ca_file(self):
        return self.ca.cert_file

    def client_cert(self, common_name):
        """(cert_file, key_file) of a client certificate with ``common_name``, signed by the
        sandbox CA (for an ApiUser with that ``client_cn``)."""
        return self.ca.issue(f"client-{common_name}", common_name, client=True)

    def write_config(self):
        """(Re)write the config tree and validate it with ``icinga2 daemon -C``."""
        for d in (self.conf_dir, self.data_dir, self.log_dir, self.cache_dir, self.spool_dir, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        if self.ca is None:
            self._make_certificates()
        self.conf_file.write_text(self.main_config())
        (self.conf_dir / "objects.conf").write_text(self.objects_config())
        res = subprocess.run(self.command("-C"), capture_output=True, text=True, env=self._env())
        if res.returncode != 0:
            raise RuntimeError(f"icinga2 daemon -C failed ({res.returncode}):\n{res.stdout}{res.stderr}")
        return res.stdout

    @staticmethod
    def _env():
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)  # Icinga talks sd_notify if it sees one (e.g. a test under systemd)
        return env

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, wait=True):
        """Validate, then run ``icinga2 daemon`` in the foreground; with ``wait``, until the API answers."""
        if self.running():
            raise RuntimeError(f"icinga2 already running (pid {self.pid})")
        check_installed()
        self.write_config()
        self._t0, self.started_in = time.monotonic(), None
        with open(self.console_file, "ab") as out:
            self.proc = subprocess.Popen(self.command(), cwd=self.dir, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, env=self._env())
        self._remember(self.proc.pid)
        track(self)
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.kill()  # never leave a half-started core behind
                raise
        return self

    def _remember(self, *pids):
        for pid in pids:
            started = _start_time(pid)
            if started is not None:
                self.processes.setdefault(pid, started)

    def remember_processes(self):
        """Record the umbrella's current descendants (worker, its helpers, check plugins)."""
        if self.running():
            self._remember(*descendants_of(self.proc.pid))
        return dict(self.processes)

    def api_answers(self):
        try:
            return self.api("GET", "/v1/status/IcingaApplication", timeout=2.0).status == 200
        except (OSError, http.client.HTTPException):
            return False

    def wait_ready(self, timeout=None):
        """Wait until ``GET /v1/status/IcingaApplication`` answers 200 (config loaded, API up)."""
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"icinga2 exited with {self.proc.returncode}\n{self.log_tail()}")
            if self.api_answers():
                if self.started_in is None:   # the first start, not a reload
                    self.started_in = time.monotonic() - self._t0
                self.remember_processes()
                return self
            time.sleep(0.1)
        raise TimeoutError(f"icinga2 API on port {self.api_port} not ready within "
                           f"{timeout or self.start_timeout}s\n{self.log_tail()}")

    def alive_processes(self):
        """The recorded processes still running (same PID and start time, not a zombie)."""
        return [pid for pid, started in self.processes.items() if _start_time(pid) == started]

    def stop(self, timeout=15.0):
        """SIGTERM the umbrella (it forwards it to the worker), wait up to ``timeout``; then
        SIGKILL, by PID, every recorded process of ours still alive. Returns the exit code."""
        if self.running():
            self.remember_processes()
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self._kill_recorded(grace=2.0)
        return self.proc.returncode if self.proc else None

    def kill(self):
        """SIGKILL the umbrella and every recorded process of ours, by PID."""
        if self.running():
            self.remember_processes()
        self._kill_recorded(grace=0)
        kill_process(self.proc)
        return self.proc.returncode if self.proc else None

    def _kill_recorded(self, grace):
        deadline = time.monotonic() + grace
        while self.alive_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in self.alive_processes():
            try:
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)
            except ProcessLookupError:
                pass
        if self.proc is not None and self.proc.poll() is None:
            self.proc.wait(5)
        deadline = time.monotonic() + 5
        while self.alive_processes() and time.monotonic() < deadline:  # reparented ones: init reaps them
            time.sleep(0.05)

    def reload(self, timeout=None):
        """Rewrite + validate the config (callers may change .objects), SIGHUP the umbrella, and
        wait until the new worker has taken over and the API answers."""
        self.write_config()
        self.remember_processes()
        old_workers = set(descendants_of(self.proc.pid))
        before = self.console_text().count("Reload done")
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while self.console_text().count("Reload done") <= before or set(self.children()) & old_workers:
            if time.monotonic() > deadline or not self.running():
                raise TimeoutError(f"icinga2 did not reload\n{self.log_tail()}")
            time.sleep(0.05)
        self.wait_ready(max(1.0, deadline - time.monotonic()))

    def children(self):
        return descendants_of(self.proc.pid) if self.running() else []

    def restart(self, wait=True):
        self.stop()
        return self.start(wait=wait)

    # -- the API ---------------------------------------------------------------------------------
    def ssl_context(self, client_cert=None):
        """Trusts the sandbox CA only; ``client_cert``: (cert_file, key_file) to present."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if client_cert:
            context.load_cert_chain(*map(str, client_cert))
        return context

    _DEFAULT = object()

    def connect(self, auth=_DEFAULT, client_cert=None, timeout=10.0):
        """A kept-alive ApiConnection; ``auth``: (user, password), default the root user, None
        for no Authorization header (e.g. with ``client_cert``)."""
        return ApiConnection(self.api_port, self.ssl_context(client_cert),
                             self.auth if auth is self._DEFAULT else auth, timeout)

    def api(self, method, path, body=None, auth=_DEFAULT, client_cert=None, timeout=10.0):
        """One request on a new connection -> Reply(status, body, headers)."""
        with self.connect(auth, client_cert, timeout) as conn:
            return conn.request(method, path, body)

    def events(self, types=("CheckResult",), queue_name=None, filter=None, auth=_DEFAULT, client_cert=None):
        """An EventStream of ``POST /v1/events``; the queue name is made up if not given."""
        return EventStream(self.api_port, self.ssl_context(client_cert),
                           self.auth if auth is self._DEFAULT else auth, types,
                           queue_name or f"sandbox-{secrets.token_hex(4)}", filter)

    @staticmethod
    def object_name(host_name, service=None):
        return f"{host_name}!{service}" if service is not None else host_name

    def process_check_result(self, host_name, service=None, exit_status=0, plugin_output="", **params):
        """``POST /v1/actions/process-check-result`` for one object (named, no filter);
        ``params``: performance_data, check_source, execution_start, execution_end, ttl, ..."""
        kind = "service" if service is not None else "host"
        path = (f"/v1/actions/process-check-result?{kind}="
                + urllib.parse.quote(self.object_name(host_name, service), safe=""))
        body = {"type": kind.capitalize(), "exit_status": exit_status, "plugin_output": plugin_output, **params}
        return self.api("POST", path, body)

    def object_state(self, host_name, service=None):
        """The object's attributes from ``/v1/objects/services`` (or ``hosts``), among them
        ``last_check_result`` (output, performance_data, exit_status, execution_start,
        check_source, active, ...); None if there is no such object."""
        kind = "service" if service is not None else "host"
        reply = self.api("GET", f"/v1/objects/{kind}s?{kind}="
                         + urllib.parse.quote(self.object_name(host_name, service), safe=""))
        if reply.status == 404:
            return None
        if reply.status != 200:
            raise RuntimeError(f"GET /v1/objects/{kind}s: {reply.status} {reply.body}")
        return reply.body["results"][0]["attrs"]

    def wait_for_result(self, host_name, service=None, predicate=lambda result: True, timeout=10.0):
        """Poll object_state until its last_check_result satisfies ``predicate``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            result = (self.object_state(host_name, service) or {}).get("last_check_result")
            if result and predicate(result):
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"no matching check result for {self.object_name(host_name, service)}: "
                                   f"{result}\n{self.log_tail()}")
            time.sleep(0.1)

    # -- logs ------------------------------------------------------------------------------------
    def console_text(self):
        return self.console_file.read_text(errors="replace") if self.console_file.exists() else ""

    def log_text(self):
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def wait_for_log_count(self, text, count=1, timeout=10.0):
        """Wait until ``text`` occurs ``count`` times in the main log (Icinga writes it a little
        later); return how often it occurs then."""
        deadline = time.monotonic() + timeout
        while self.log_text().count(text) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.log_text().count(text)

    def log_tail(self, lines=40):
        """The last ``lines`` of the console output (umbrella and worker) and the main log."""
        console = "\n".join(self.console_text().splitlines()[-lines:])
        main = "\n".join(self.log_text().splitlines()[-lines:])
        return f"--- icinga2 console tail ---\n{console}\n--- icinga2 log tail ---\n{main}"

    def __enter__(self):
        return self.start() if not self.running() else self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f"<Icinga2 {self.dir} api={HOST}:{self.api_port} pid={self.pid}>"


__all__ = ["Icinga2", "Reply", "host", "passive_service", "active_service", "check_installed", "literal"]
