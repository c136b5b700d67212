"""Helpers shared by the sandbox: free ports, a raw STOMP check, stopping child processes by PID,
waiting for a condition."""
import atexit
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
import weakref
from pathlib import Path

_lock = threading.Lock()
_handed_out = set()
_running = weakref.WeakSet()


def wait_until(predicate, timeout=15.0, interval=0.2):
    """Call ``predicate`` until it returns something true or ``timeout`` seconds pass; return
    its last value. For state the programs under test reach in their own time: never assert
    on one read after a fixed sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def _below_ephemeral_ports():
    """Ports under the kernel's ephemeral range: an outgoing connection (a bridge reconnecting,
    a client) takes its local port from that range, and could take a port handed out here
    before the server meant for it binds it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(max(1024, low - 12000), low)


def free_port():
    """Return a port on 127.0.0.1 that is free now and not handed out before by this process."""
    ports = _below_ephemeral_ports()
    with _lock:
        for _ in range(200):
            port = random.choice(ports)
            if port in _handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port found on 127.0.0.1")


class LogFiles:
    """A sandbox server's logs: its ``log_file`` and ``console_file`` (``name`` names it, and
    ``what`` the kind of server, in errors)."""
    what = "server"

    def log_text(self):
        return "\n".join(p.read_text(errors="replace") for p in (self.log_file, self.console_file)
                         if p.exists())

    def log_tail(self, lines=40):
        return f"--- {self.name} log tail ---\n" + "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, pattern, timeout=30.0, count=1):
        """Wait until regex ``pattern`` occurs ``count`` times in the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(re.findall(pattern, self.log_text())) >= count:
                return
            time.sleep(0.1)
        raise TimeoutError(f"{pattern!r} not in {self.what} {self.name} log\n{self.log_tail()}")


def wait_stomp_ready(server, what, timeout, **connect):
    """Wait until ``server``'s STOMP port answers a CONNECT (``connect``: stomp_connect_ok's
    login/vhost), then set its ``started_in``; raise with its log tail if it exits or the
    time runs out. ``what`` names it in the error ("broker", "node")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.running():
            raise RuntimeError(f"{what} {server.name} exited with {server.proc and server.proc.returncode}"
                               f"\n{server.log_tail()}")
        if stomp_connect_ok("127.0.0.1", server.stomp_port, timeout=1.0, **connect):
            server.started_in = time.monotonic() - server._t0
            return server
        time.sleep(0.1)
    raise TimeoutError(f"{what} {server.name} STOMP port {server.stomp_port} not ready\n{server.log_tail()}")


def stomp_connect_ok(host, port, timeout=2.0, login=None, vhost="localhost"):
    """True if a raw STOMP 1.2 CONNECT to host:port (as ``login`` = (user, password); with
    ``vhost`` as its host header, which RabbitMQ takes as the vhost) gets CONNECTED back."""
    credentials = b"login:%s\npasscode:%s\n" % tuple(x.encode() for x in login) if login else b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"CONNECT\naccept-version:1.2\nhost:%s\n" % vhost.encode() + credentials + b"\n\x00")
            data = b""
            while b"\x00" not in data and len(data) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            ok = data.lstrip(b"\r\n").startswith(b"CONNECTED")
            if ok:
                try:
                    s.sendall(b"DISCONNECT\n\n\x00")
                except OSError:
                    pass
            return ok
    except OSError:
        return False


def stop_process(proc, timeout=15.0):
    """SIGCONT + SIGTERM the child `proc` (a Popen), wait `timeout`, then SIGKILL. Returns its exit code."""
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    try:
        os.kill(proc.pid, signal.SIGCONT)  # a paused process would never handle SIGTERM
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return kill_process(proc)


def kill_process(proc):
    """SIGKILL the child `proc` (a Popen) and reap it. Returns its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.kill()
    return proc.wait()


def children_of(pid):
    """PIDs whose parent is ``pid``, from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


def descendants_of(pid):
    """PIDs of ``pid``'s children, their children, and so on, from /proc."""
    found, parents = [], [pid]
    while parents:
        children = [child for parent in parents for child in children_of(parent)]
        found += children
        parents = children
    return found


def track(server):
    """Remember `server` so that it is stopped at interpreter exit if nobody else did."""
    _running.add(server)


@atexit.register
def _stop_all():
    for server in list(_running):
        try:
            server.stop()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
