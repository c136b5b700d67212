"""Run a real RabbitMQ node (Debian's rabbitmq-server 3.10, with rabbitmq_stomp) from its own
directory, on 127.0.0.1 only, with its own epmd; every process it starts is stopped by PID.

What runs: ``epmd`` (the Erlang port mapper, a child of ours, on 127.0.0.1 and its own port, so
the node never meets a system epmd) and RabbitMQ's ``rabbitmq-server`` script (a /bin/sh, a child
of ours), which starts ``beam.smp`` (the node) as its child and stops it gracefully on SIGTERM;
beam.smp starts ``erl_child_setup`` and ``inet_gethost``. The node's processes are found by
walking /proc down from the PIDs started here (never by name). Its mnesia (queues, messages),
logs, config, enabled-plugins file, Erlang cookie (HOME) are in ``workdir``; the node listens on
127.0.0.1: AMQP, STOMP and Erlang distribution on ports of its own.

The STOMP plugin is enabled offline: the enabled-plugins file is written before the start, as
``rabbitmq-plugins enable --offline rabbitmq_stomp`` would (without starting an Erlang VM for it).
A STOMP CONNECT without login is the user ``guest`` (``stomp.default_user``), as with the
ActiveMQ sandbox, and on the vhost ``/``. epmd binds 127.0.0.1 and, by its own rule, ::1 too
(loopback both).

Measured start, until STOMP answers a CONNECT (2 shared cores): 3.4 to 6.7 s at load averages up
to 10 (a restart on existing data 3.4 s), 8.6 and 10.6 s at a load average of 20. A clean stop
takes about 1 s.
"""
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .ports import LogFiles, descendants_of, free_port, kill_process, stop_process, track, wait_stomp_ready
from .stomp_probe import StompProbe

RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
HOST = "127.0.0.1"

RABBITMQ_CONF = """# written by tests/sandbox/rabbitmq.py
listeners.tcp.1 = {host}:{amqp}
stomp.listeners.tcp.1 = {host}:{stomp}
stomp.default_user = guest
stomp.default_pass = guest
stomp.default_vhost = /
loopback_users.guest = true
log.file = {log}
log.file.level = info
log.console = false
disk_free_limit.absolute = 50MB
{extra}"""


def check_installed():
    """Raise RuntimeError unless rabbitmq-server and epmd are present."""
    missing = [what for what, ok in ((f"{RABBITMQ_SERVER} (apt-get install rabbitmq-server)",
                                      RABBITMQ_SERVER.exists()),
                                     ("epmd (erlang-base)", shutil.which("epmd"))) if not ok]
    if missing:
        raise RuntimeError("RabbitMQ sandbox cannot run, missing: " + ", ".join(missing))


class RabbitMQ(LogFiles):
    """One node: STOMP + AMQP + distribution on 127.0.0.1, everything in ``workdir``. The same
    lifecycle as sandbox.activemq.ActiveMQ (start, stop, kill, pause/resume, restart), so that
    tests and the fault suite can use either."""

    what = "node"

    kind = "rabbitmq"
    stomp_vhost = "/"         # the STOMP host header RabbitMQ takes as the vhost (stomp_probe)

    def __init__(self, workdir, name="r1", stomp_port=None, amqp_port=None, dist_port=None,
                 epmd_port=None, start_timeout=60.0, extra_conf=""):
        self.dir = Path(workdir).resolve()
        self.name = name
        self.stomp_port = stomp_port or free_port()
        self.amqp_port = amqp_port or free_port()
        self.dist_port = dist_port or free_port()
        self.epmd_port = epmd_port or free_port()
        self.extra_conf = extra_conf            # more rabbitmq.conf lines
        self.start_timeout = start_timeout
        # Short node names on "localhost": the node and the CLI find each other through our epmd.
        self.node = f"bridge-test-{name}-{self.stomp_port}@localhost"
        self.log_file = self.dir / "log" / "rabbit.log"
        self.console_file = self.dir / "console.log"
        self.conf_file = self.dir / "rabbitmq.conf"
        self.proc = None          # the rabbitmq-server script (sh); beam.smp is its child
        self.epmd = None
        self.started_in = None    # seconds the last start() took until STOMP answered
        self._cookie = secrets.token_hex(16)

    # -- addresses -------------------------------------------------------------------------------
    @property
    def stomp_address(self):
        return (HOST, self.stomp_port)

    @property
    def pid(self):
        """The PID of the node's VM (beam.smp), else of the script that starts it."""
        beam = self._beam_pid()
        return beam or (self.proc.pid if self.proc else None)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def _beam_pid(self):
        if not self.running():
            return None
        children = descendants_of(self.proc.pid)
        return children[0] if children else None

    # -- config ----------------------------------------------------------------------------------
    def write_config(self):
        for d in (self.dir, self.dir / "mnesia", self.dir / "log", self.dir / "home"):
            d.mkdir(parents=True, exist_ok=True)
        self.conf_file.write_text(RABBITMQ_CONF.format(
            host=HOST, amqp=self.amqp_port, stomp=self.stomp_port, log=self.log_file, extra=self.extra_conf))
        (self.dir / "enabled_plugins").write_text("[rabbitmq_stomp].\n")
        cookie = self.dir / "home" / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(self._cookie)
            cookie.chmod(0o400)
        # An empty env file, so that /etc/rabbitmq/rabbitmq-env.conf is not read.
        (self.dir / "rabbitmq-env.conf").write_text("")

    def environment(self):
        """The environment of the node and of rabbitmqctl: everything in our dir, our epmd."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": str(self.dir / "home"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.conf_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.dir / "rabbit.pid"),
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            # Distribution on loopback only (RABBITMQ_DIST_PORT fixes its port).
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_CTL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": HOST,
            "ERL_EPMD_PORT": str(self.epmd_port),
        })
        return env

    # -- lifecycle -------------------------------------------------------------------------------
    def _start_epmd(self):
        if self.epmd is not None and self.epmd.poll() is None:
            return
        with open(self.dir / "epmd.log", "ab") as out:
            # Not -daemon: epmd stays our child, with a PID we know.
            self.epmd = subprocess.Popen(["epmd", "-port", str(self.epmd_port), "-address", HOST],
                                         env=self.environment(), cwd=self.dir, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)

    def start(self, wait=True):
        """Start epmd and the node; with ``wait``, return once STOMP answers a CONNECT."""
        if self.running():
            raise RuntimeError(f"node {self.name} already running (pid {self.pid})")
        check_installed()
        self.write_config()
        self._t0 = time.monotonic()
        track(self)
        self._start_epmd()
        with open(self.console_file, "ab") as out:
            self.proc = subprocess.Popen([str(RABBITMQ_SERVER)], env=self.environment(), cwd=self.dir,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.kill()             # never leave a half-started server behind
                self._stop_epmd()
                raise
        return self

    def wait_ready(self, timeout=None):
        """Wait until the STOMP port answers a CONNECT; raise with the log tail if not."""
        return wait_stomp_ready(self, "node", timeout or self.start_timeout, vhost="/")

    def _node_pids(self):
        """beam.smp and what it started (erl_child_setup, inet_gethost, ...), deepest last."""
        return descendants_of(self.proc.pid) if self.running() else []

    def stop(self, timeout=30.0):
        """A clean shutdown (SIGTERM to the script, which stops the node), then epmd; SIGKILL
        whatever is left after ``timeout``. Returns the script's exit code."""
        pids = self._node_pids()
        for pid in pids:                 # a paused node would never handle the shutdown
            _signal(pid, signal.SIGCONT)
        code = stop_process(self.proc, timeout)
        self._kill_left(pids)
        self._stop_epmd()
        return code

    def kill(self):
        """SIGKILL the node (beam.smp and its helpers): a crash; mnesia recovers on the next
        start. epmd stays, as on a machine whose broker crashed."""
        pids = self._node_pids()
        self._kill_left(pids)
        return kill_process(self.proc)

    def pause(self):
        """SIGSTOP the node's VM: it hangs with its sockets open."""
        _signal(self._beam_pid(), signal.SIGSTOP)

    def resume(self):
        _signal(self._beam_pid(), signal.SIGCONT)

    def restart(self, wait=True):
        """Stop (if running) and start again with the same ports, node name and data."""
        self.stop()
        return self.start(wait=wait)

    def _kill_left(self, pids):
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        # Reaped by their parents (the script, beam.smp); wait until they are gone.
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _stop_epmd(self):
        if self.epmd is not None:
            stop_process(self.epmd, 5.0)

    def declare_queues(self, *destinations, restart=True):
        """Declare each ``/queue/`` destination durable (a STOMP SUBSCRIBE, then gone), then,
        with ``restart``, restart the node cleanly: a queue declared a moment before a SIGKILL
        can be gone after it, with the messages RabbitMQ confirmed into it (docs/rabbitmq.md);
        a clean stop writes the node's schema database, declarations included."""
        for destination in destinations:
            StompProbe(self, destination).start().close()
        return self.restart() if restart else self

    # -- the node's own tool ---------------------------------------------------------------------
    def ctl(self, *args, timeout=60.0):
        """Run ``rabbitmqctl ARGS`` against this node; return its stdout (raise on failure)."""
        done = subprocess.run([str(RABBITMQ_SERVER.parent / "rabbitmqctl"), "-n", self.node, *args],
                              env=self.environment(), cwd=self.dir, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if done.returncode:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.returncode}\n{done.stdout}{done.stderr}")
        return done.stdout

    def queues(self):
        """{queue name: (messages, durable)} of the vhost /, from rabbitmqctl."""
        out = self.ctl("list_queues", "-q", "--no-table-headers", "name", "messages", "durable")
        found = {}
        for line in out.splitlines():
            fields = line.split("\t")
            if len(fields) == 3 and fields[1].isdigit():
                found[fields[0]] = (int(fields[1]), fields[2] == "true")
        return found

    # -- logs (LogFiles: log_text, log_tail, wait_for_log) -------------------------------------

    def __enter__(self):
        return self.start() if not self.running() else self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f"<RabbitMQ {self.name} stomp={self.stomp_port} amqp={self.amqp_port} pid={self.pid}>"


def _signal(pid, signum):
    if pid:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _alive(pid):
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"
