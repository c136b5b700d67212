"""Run a real Nagios 4 core (Debian `nagios4`) in the foreground from a temp dir."""
import errno
import fcntl
import grp
import os
import pwd
import signal
import stat
import struct
import subprocess
import termios
import time
from pathlib import Path

from .ports import descendants_of, kill_process, stop_process, track

NAGIOS_BIN = "/usr/sbin/nagios4"
PLUGINS = Path("/usr/lib/nagios/plugins")

TEMPLATES = """define timeperiod {
    timeperiod_name 24x7
    alias 24x7
    sunday 00:00-24:00
    monday 00:00-24:00
    tuesday 00:00-24:00
    wednesday 00:00-24:00
    thursday 00:00-24:00
    friday 00:00-24:00
    saturday 00:00-24:00
}

define command {
    command_name check_dummy
    command_line %(plugins)s/check_dummy $ARG1$ '$ARG2$'
}

define command {
    command_name sandbox_host_up
    command_line %(plugins)s/check_dummy 0 "sandbox host up"
}

define command {
    command_name sandbox_notify
    command_line /bin/true
}

define contact {
    contact_name sandbox-admin
    host_notifications_enabled 0
    service_notifications_enabled 0
    host_notification_period 24x7
    service_notification_period 24x7
    host_notification_options n
    service_notification_options n
    host_notification_commands sandbox_notify
    service_notification_commands sandbox_notify
}

define host {
    name sandbox-host
    register 0
    check_command sandbox_host_up
    check_period 24x7
    check_interval 60
    retry_interval 1
    max_check_attempts 1
    active_checks_enabled 1
    passive_checks_enabled 1
    check_freshness 0
    notifications_enabled 0
    notification_period 24x7
    contacts sandbox-admin
    flap_detection_enabled 0
    event_handler_enabled 0
}

define service {
    name sandbox-service
    register 0
    check_command check_dummy!0!OK
    check_period 24x7
    check_interval 1
    retry_interval 1
    max_check_attempts 1
    active_checks_enabled 1
    passive_checks_enabled 1
    check_freshness 0
    notifications_enabled 0
    notification_period 24x7
    contacts sandbox-admin
    flap_detection_enabled 0
    event_handler_enabled 0
}
"""


def pipe_bytes(fd):
    """Bytes waiting in the pipe or FIFO open as ``fd`` (how full Nagios's command FIFO is)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def check_installed():
    """Raise RuntimeError unless nagios4 and check_dummy are present."""
    missing = [str(p) for p in (Path(NAGIOS_BIN), PLUGINS / "check_dummy") if not p.exists()]
    if missing:
        raise RuntimeError("Nagios sandbox cannot run, missing: " + ", ".join(missing) +
                           " (apt-get install nagios4-core monitoring-plugins-basic)")


def _arg(text):
    """Quote a value for a check_command argument ($ doubled, ; escaped; no ! ' or newline)."""
    text = str(text)
    if any(c in text for c in "!'\n\\"):
        raise ValueError(f"check_dummy output may not contain ! ' \\ or newlines: {text!r}")
    return text.replace("$", "$$").replace(";", "\\;")


def host(name, **directives):
    """A host definition (a dict of directives) using the sandbox template."""
    return {"host_name": name, "use": "sandbox-host", **directives}


def active_service(host_name, description, state=0, output="OK", interval=1, **directives):
    """A service actively checked every `interval` s by check_dummy. The plugin output is
    prefixed by check_dummy (`OK: `, `WARNING: `, ...) and Nagios turns `;` in it into `:`."""
    return {"host_name": host_name, "service_description": description, "use": "sandbox-service",
            "check_command": f"check_dummy!{int(state)}!{_arg(output)}",
            "check_interval": interval, "retry_interval": interval, **directives}


def passive_service(host_name, description, **directives):
    """A passive-only service: active checks off, passive on, no freshness checking."""
    return {"host_name": host_name, "service_description": description, "use": "sandbox-service",
            "active_checks_enabled": 0, "passive_checks_enabled": 1, "check_freshness": 0,
            **directives}


def _define(kind, directives):
    body = "".join(f"    {k} {v}\n" for k, v in directives.items())
    return f"define {kind} {{\n{body}}}\n"


def parse_status(text):
    """status.dat text -> {(host, service or None): {field: value}} for service and host blocks."""
    result, block, kind = {}, None, None
    for line in text.splitlines():
        line = line.strip()
        if line.endswith("{"):
            kind, block = line[:-1].strip(), {}
        elif line == "}" and block is not None:
            if kind == "servicestatus":
                result[(block.get("host_name"), block.get("service_description"))] = block
            elif kind == "hoststatus":
                result[(block.get("host_name"), None)] = block
            block = None
        elif block is not None and "=" in line:
            key, _, value = line.partition("=")
            block[key] = value
    return result


class Nagios:
    """A sandbox Nagios core: config, FIFO, status.dat and log inside `workdir`.

    services: dicts of service directives (see active_service / passive_service).
    hosts: host names or dicts (see host); hosts used by services are added automatically,
        and `localhost` if there would be none. Nagios needs a service too: with no services, a
        passive `sandbox-idle` service is defined on the first host.
    extra_cfg: dict (overrides/extends nagios.cfg keys) or str (raw lines appended).
    objects: raw object definitions appended to the object config (e.g. `define command` blocks).
    """

    def __init__(self, workdir, services=(), hosts=(), extra_cfg=None, objects="", start_timeout=30.0):
        self.dir = Path(workdir).resolve()
        self.services = [dict(s) for s in services]
        self.hosts = [host(h) if isinstance(h, str) else dict(h) for h in hosts]
        self.extra_cfg = extra_cfg or {}
        self.objects = objects
        self.start_timeout = start_timeout
        self.cfg_file = self.dir / "nagios.cfg"
        self.objects_file = self.dir / "objects.cfg"
        self.command_file = self.dir / "rw" / "nagios.cmd"
        self.query_socket = self.dir / "rw" / "nagios.qh"
        self.check_result_path = self.dir / "checkresults"
        self.status_file = self.dir / "status.dat"
        self.log_file = self.dir / "nagios.log"
        self.console_file = self.dir / "console.log"
        self.lock_file = self.dir / "nagios.lock"
        self.proc = None
        self.started_in = None
        self._orphans = []  # PIDs of workers of a stopped/killed core

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    # -- config ----------------------------------------------------------------------------------
    def main_cfg(self):
        d = self.dir
        cfg = {
            "log_file": d / "nagios.log",
            "cfg_file": self.objects_file,
            "object_cache_file": d / "objects.cache",
            "precached_object_file": d / "objects.precache",
            "status_file": self.status_file,
            "state_retention_file": d / "retention.dat",
            "command_file": self.command_file,
            "query_socket": self.query_socket,
            "lock_file": self.lock_file,
            "temp_file": d / "nagios.tmp",
            "temp_path": d / "tmp",
            "check_result_path": self.check_result_path,
            "debug_file": d / "nagios.debug",
            "nagios_user": pwd.getpwuid(os.getuid()).pw_name,
            "nagios_group": grp.getgrgid(os.getgid()).gr_name,
            "check_external_commands": 1,
            "accept_passive_service_checks": 1,
            "accept_passive_host_checks": 1,
            "enable_notifications": 0,
            "enable_flap_detection": 0,
            "interval_length": 1,
            "status_update_interval": 1,
            "check_result_reaper_frequency": 1,
            "max_service_check_spread": 1,
            "max_host_check_spread": 1,
            "retain_state_information": 0,
            "use_retained_program_state": 0,
            "use_syslog": 0,
            "log_rotation_method": "n",
            "log_passive_checks": 1,
            "log_external_commands": 1,
            "illegal_object_name_chars": "`~!$%^&*|'\"<>?,()=",
            "illegal_macro_output_chars": "`~$&|'\"<>",
        }
        extra = ""
        if isinstance(self.extra_cfg, dict):
            cfg.update(self.extra_cfg)
        else:
            extra = str(self.extra_cfg)
        return "".join(f"{k}={v}\n" for k, v in cfg.items()) + extra + "\n"

    def objects_cfg(self):
        hosts = {h["host_name"]: h for h in self.hosts}
        for s in self.services:
            hosts.setdefault(s["host_name"], host(s["host_name"]))
        if not hosts:  # Nagios refuses to run without any host
            hosts["localhost"] = host("localhost", address="127.0.0.1")
        services = self.services or [passive_service(next(iter(hosts)), "sandbox-idle")]
        parts = [TEMPLATES % {"plugins": PLUGINS}]
        parts += [_define("host", h) for h in hosts.values()]
        parts += [_define("service", s) for s in services]
        parts.append(self.objects)
        return "\n".join(parts)

    def write_config(self):
        """(Re)write nagios.cfg and objects.cfg and validate them with `nagios4 -v`."""
        for sub in ("rw", "tmp", "checkresults"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.cfg_file.write_text(self.main_cfg())
        self.objects_file.write_text(self.objects_cfg())
        res = subprocess.run([NAGIOS_BIN, "-v", str(self.cfg_file)], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"nagios4 -v {self.cfg_file} failed:\n{res.stdout}{res.stderr}")
        return res.stdout

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, wait=True):
        """Validate, then run `nagios4 <cfg>` in the foreground; wait for the FIFO and status.dat."""
        if self.running():
            raise RuntimeError(f"nagios already running (pid {self.pid})")
        check_installed()
        self._reap_orphans()
        self.write_config()
        # Leftovers of an earlier run in our own dir: a FIFO with no reader, status, lock.
        for path in (self.command_file, self.status_file, self.lock_file, self.query_socket):
            if path.exists() or path.is_symlink():
                path.unlink()
        self._t0 = time.monotonic()
        with open(self.console_file, "ab") as out:
            self.proc = subprocess.Popen([NAGIOS_BIN, str(self.cfg_file)], cwd=self.dir,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        track(self)
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.kill()  # never leave a half-started server behind
                raise
        return self

    def fifo_has_reader(self):
        """True if the command FIFO exists and someone (Nagios) has it open for reading."""
        try:
            if not stat.S_ISFIFO(os.stat(self.command_file).st_mode):
                return False
            os.close(os.open(self.command_file, os.O_WRONLY | os.O_NONBLOCK))
            return True
        except OSError:
            return False

    def wait_ready(self, timeout=None):
        """Wait until the command FIFO has a reader and status.dat exists."""
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"nagios exited with {self.proc.returncode}\n{self.log_tail()}")
            if self.fifo_has_reader() and self.status_file.exists():
                self.started_in = time.monotonic() - self._t0
                return self
            time.sleep(0.01)
        raise TimeoutError(f"nagios not ready within {timeout or self.start_timeout}s\n{self.log_tail()}")

    def _children(self):
        """PIDs of the core's processes: its workers, the command file worker, and the commands
        the workers run. An OCSP command writing into the bridge's FIFO after the bridge stopped
        blocks for ever opening it; orphaned by the core's stop, it would outlive the test."""
        return descendants_of(self.pid)

    @staticmethod
    def _alive(pid):
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def _reap_orphans(self, grace=2.0):
        """Give the former children `grace` s to exit on their own, then SIGKILL them by PID."""
        deadline = time.monotonic() + grace
        while any(map(self._alive, self._orphans)) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in filter(self._alive, self._orphans):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._orphans = []

    def stop(self, timeout=15.0):
        """SIGTERM, wait, SIGKILL; then make sure its worker processes are gone too."""
        if self.running():
            self._orphans += self._children()
            stop_process(self.proc, timeout)
        self._reap_orphans()
        return self.proc.returncode if self.proc else None

    def kill(self, workers=True):
        """SIGKILL the core. Its workers (and the command file worker, which keeps the FIFO open)
        would outlive it for a few seconds: with `workers`, SIGKILL them too, else leave them
        until the next stop()/start()."""
        if self.running():
            self._orphans += self._children()
            kill_process(self.proc)
        if workers:
            self._reap_orphans(grace=0)
        return self.proc.returncode if self.proc else None

    def reload(self, timeout=None):
        """Rewrite + validate the config (callers may change .services etc.), SIGHUP, wait for it."""
        self.write_config()
        before = self.log_text().count("Caught SIGHUP")
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while self.log_text().count("Caught SIGHUP") <= before:
            if time.monotonic() > deadline or not self.running():
                raise TimeoutError(f"nagios did not reload\n{self.log_tail()}")
            time.sleep(0.05)
        self.status_file.unlink(missing_ok=True)
        self.wait_ready(timeout)

    def restart(self, wait=True):
        self.stop()
        return self.start(wait=wait)

    # -- observing -------------------------------------------------------------------------------
    def status(self):
        """Parsed status.dat: {(host, service_or_None): {field: value}}."""
        try:
            return parse_status(self.status_file.read_text(errors="replace"))
        except FileNotFoundError:
            return {}

    def wait_for(self, predicate, timeout=10.0, interval=0.1):
        """Poll status() until predicate(status) is truthy; return that value."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            value = predicate(st)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"status.dat condition not met within {timeout}s: {st}\n{self.log_tail()}")
            time.sleep(interval)

    def send_command(self, command, timestamp=None):
        """Write `[ts] COMMAND;args` + newline to the command FIFO (non-blocking open)."""
        line = f"[{int(timestamp or time.time())}] {command}\n".encode()
        try:
            fd = os.open(self.command_file, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno in (errno.ENXIO, errno.ENOENT):
                raise RuntimeError(f"nobody reads {self.command_file}: {e}") from e
            raise
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def log_text(self):
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def log_tail(self, lines=30):
        console = self.console_file.read_text(errors="replace") if self.console_file.exists() else ""
        text = "\n".join((console + "\n" + self.log_text()).splitlines()[-lines:])
        return f"--- nagios log tail ---\n{text}"

    def __enter__(self):
        return self.start() if not self.running() else self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f"<Nagios {self.dir} pid={self.pid}>"


__all__ = ["Nagios", "host", "active_service", "passive_service", "parse_status", "check_installed"]
