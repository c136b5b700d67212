"""The Debian package, for real as far as one machine allows (docs/packaging.md).

Builds dist-style .deb with packaging/build-deb.sh, checks its metadata and contents
with dpkg-deb, verifies the systemd unit offline with systemd-analyze, then unpacks it
into a throwaway root and runs the unpacked code with Debian's /usr/bin/python3 and
Debian's python3-stomp (8.0.0 on bookworm), python3-yaml and python3-daemon:
--version, check-config of the packaged config, and one result published
by the packaged daemon to a real ActiveMQ, with the systemd notify protocol on the side.
"""
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from msg_nagios_bridge.cores.nagios import result_line
from msg_nagios_bridge.model import CheckResult
from tests.sandbox.bridge import bridge_config
from tests.sandbox.ports import stop_process, track, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEBIAN_PYTHON = "/usr/bin/python3"
DEBIAN_SITE = "/usr/lib/python3/dist-packages"
DEBIAN_DEPENDS = ["python3", "python3-stomp", "python3-yaml", "python3-daemon"]
QUEUE = "/queue/test.package"
CONFIG = "etc/msg-nagios-bridge/bridge.yaml"
UNIT = "lib/systemd/system/msg-nagios-bridge.service"
MAX_EXPOSURE = 1.5          # systemd-analyze security, 0 (best) to 10 (worst)


def project_version():
    text = (REPO / "pyproject.toml").read_text()
    return re.search(r'^version\s*=\s*"([^"]+)"', text, re.M).group(1)


def run(cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    """The .deb built by packaging/build-deb.sh (into a temp dir, not ./dist)."""
    if not shutil.which("dpkg-deb"):
        pytest.fail("dpkg-deb missing (apt-get install dpkg)", pytrace=False)
    out = tmp_path_factory.mktemp("dist")
    built = run(["bash", str(REPO / "packaging" / "build-deb.sh"), str(out)], cwd=str(REPO))
    if built.returncode != 0:
        pytest.fail(f"build-deb.sh exited {built.returncode}: {built.stderr}", pytrace=False)
    path = Path(built.stdout.strip().splitlines()[-1])
    assert path.name == f"msg-nagios-bridge_{project_version()}_all.deb"
    return path


@pytest.fixture(scope="module")
def root(deb, tmp_path_factory):
    """The package unpacked (dpkg-deb -x) into a throwaway root."""
    where = tmp_path_factory.mktemp("root")
    unpacked = run(["dpkg-deb", "-x", str(deb), str(where)])
    if unpacked.returncode != 0:
        pytest.fail(f"dpkg-deb -x: {unpacked.stderr}", pytrace=False)
    return where


def debian_env(root):
    """Debian's python3 finding the unpacked package first, then Debian's own modules."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTHON", "VIRTUAL_ENV", "NOTIFY_SOCKET", "WATCHDOG_"))}
    env["PYTHONPATH"] = str(root / DEBIAN_SITE.lstrip("/"))
    env["PYTHONNOUSERSITE"] = "1"
    return env


def require_debian_python():
    missing = []
    if not os.access(DEBIAN_PYTHON, os.X_OK):
        missing.append(DEBIAN_PYTHON)
    else:
        probe = run([DEBIAN_PYTHON, "-c", "import stomp, yaml, daemon"])
        if probe.returncode != 0:
            missing.append("Debian's python3-stomp python3-yaml python3-daemon "
                           f"({probe.stderr.strip().splitlines()[-1]})")
    if missing:
        pytest.fail("missing: " + ", ".join(missing) + " (bash scripts/setup.sh installs them)",
                    pytrace=False)


# -- metadata and contents ----------------------------------------------------------------------

def test_control_fields_name_the_debian_dependencies(deb):
    fields = {}
    for name in ("Package", "Version", "Architecture", "Depends", "Recommends", "Maintainer"):
        fields[name] = run(["dpkg-deb", "-f", str(deb), name]).stdout.strip()
    assert fields["Package"] == "msg-nagios-bridge"
    assert fields["Version"] == project_version()
    assert fields["Architecture"] == "all"
    assert fields["Maintainer"]
    depends = [item.strip() for item in fields["Depends"].split(",")]
    names = {re.split(r"[\s(:]", item)[0] for item in depends}
    for package in DEBIAN_DEPENDS:
        assert package in names, fields["Depends"]
    assert "python3 (>= 3.9)" in depends
    assert fields["Recommends"] == "nagios4-core, python3-cryptography"


def test_the_config_is_the_only_conffile_and_the_maintainer_scripts_parse(deb, tmp_path):
    control = tmp_path / "DEBIAN"
    assert run(["dpkg-deb", "-e", str(deb), str(control)]).returncode == 0
    assert (control / "conffiles").read_text().split() == ["/" + CONFIG]
    for script in ("postinst", "prerm", "postrm"):
        path = control / script
        assert path.stat().st_mode & 0o777 == 0o755, script
        assert path.read_text().startswith("#!/bin/sh\n"), script
        checked = run(["sh", "-n", str(path)])
        assert checked.returncode == 0, (script, checked.stderr)
    # md5sums cover every shipped file except the conffile (dpkg tracks that one itself).
    listed = {line.split("  ", 1)[1] for line in (control / "md5sums").read_text().splitlines()}
    assert "usr/bin/msg-nagios-bridge" in listed and CONFIG not in listed


def test_contents_owners_and_modes(deb):
    listing = run(["dpkg-deb", "-c", str(deb)]).stdout.splitlines()
    entries = {}
    for line in listing:
        mode, owner, _size, _date, _time, name = line.split(None, 5)
        entries[name.rstrip("/").lstrip(".").lstrip("/")] = (mode, owner)
    assert all(owner == "root/root" for _mode, owner in entries.values())
    # 0640 in the package; the postinst gives it to group nagios (dpkg-statoverride).
    assert entries[CONFIG] == ("-rw-r-----", "root/root")
    assert entries["usr/bin/msg-nagios-bridge"][0] == "-rwxr-xr-x"
    assert entries[UNIT][0] == "-rw-r--r--"
    assert entries["usr/lib/tmpfiles.d/msg-nagios-bridge.conf"][0] == "-rw-r--r--"
    for name in ("usr/share/doc/msg-nagios-bridge/copyright", "usr/share/doc/msg-nagios-bridge/changelog.gz",
                 "usr/share/man/man8/msg-nagios-bridge.8.gz"):
        assert name in entries, name
    shipped = {name for name in entries if name.startswith("usr/lib/python3/dist-packages/")
               and name.endswith(".py")}
    wanted = {f"usr/lib/python3/dist-packages/{path.relative_to(REPO)}"
              for path in (REPO / "msg_nagios_bridge").rglob("*.py") if "__pycache__" not in path.parts}
    assert shipped == wanted
    assert not [name for name in entries if "__pycache__" in name or name.endswith(".pyc")]


def test_tmpfiles_entry_creates_the_fifo_dir_and_the_spool(root):
    lines = [line.split() for line in (root / "usr/lib/tmpfiles.d/msg-nagios-bridge.conf").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert ["d", "/run/msg-nagios-bridge", "0750", "nagios", "nagios", "-"] in lines
    assert ["d", "/var/spool/msg-nagios-bridge", "0700", "nagios", "nagios", "-"] in lines


# -- the systemd unit, offline --------------------------------------------------------------------

@pytest.fixture
def unit_for_analyze(root, tmp_path):
    """The packaged unit, with ExecStart pointing at the unpacked launcher (which systemd-analyze
    verify checks exists and is executable); everything else as shipped."""
    if not shutil.which("systemd-analyze"):
        # A failure, not a skip (tests/conftest.py): scripts/setup.sh installs it.
        pytest.fail("systemd-analyze missing (Debian's systemd package, which scripts/setup.sh installs)")
    text = (root / UNIT).read_text()
    assert "ExecStart=/usr/bin/msg-nagios-bridge run -c /etc/msg-nagios-bridge/bridge.yaml\n" in text
    unit = tmp_path / "msg-nagios-bridge.service"
    unit.write_text(text.replace("ExecStart=/usr/bin/msg-nagios-bridge",
                                 f"ExecStart={root}/usr/bin/msg-nagios-bridge"))
    return unit


def test_systemd_analyze_verify_is_clean(unit_for_analyze):
    verified = run(["systemd-analyze", "verify", str(unit_for_analyze)])
    assert verified.returncode == 0 and not (verified.stdout + verified.stderr).strip(), \
        verified.stdout + verified.stderr


def test_the_ocsp_socket_unit_verifies_with_the_service(root, unit_for_analyze):
    socket = unit_for_analyze.parent / "msg-nagios-bridge-ocsp.socket"
    text = (root / "lib/systemd/system/msg-nagios-bridge-ocsp.socket").read_text()
    assert "ListenFIFO=/run/msg-nagios-bridge/ocsp.fifo\n" in text, "must match the example config's path"
    socket.write_text(text)
    verified = run(["systemd-analyze", "verify", str(unit_for_analyze), str(socket)])
    assert verified.returncode == 0 and not (verified.stdout + verified.stderr).strip(), \
        verified.stdout + verified.stderr


def test_systemd_analyze_security_exposure(unit_for_analyze):
    checked = run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit_for_analyze)])
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", checked.stdout)
    assert found, checked.stdout + checked.stderr
    exposure = float(found.group(1))
    print(f"systemd-analyze security --offline=yes: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, checked.stdout


# -- the unpacked package on Debian's python3 and Debian's modules ---------------------------------

def test_unpacked_package_runs_on_debian_python_and_modules(root):
    require_debian_python()
    env = debian_env(root)
    # cwd: the root, so that "-c" (which puts the cwd first on sys.path) cannot find the checkout.
    where = run([DEBIAN_PYTHON, "-c", "import msg_nagios_bridge, stomp, yaml, daemon; "
                 "print(msg_nagios_bridge.__file__); print(stomp.__file__); print(yaml.__file__); "
                 "print(daemon.__file__); print('.'.join(map(str, stomp.__version__)))"],
                env=env, cwd=str(root))
    assert where.returncode == 0, where.stderr
    ours, *debians, stomp_version = where.stdout.split()
    assert ours.startswith(str(root)), ours
    assert all(path.startswith(DEBIAN_SITE + "/") for path in debians), debians
    print(f"Debian's stomp.py {stomp_version}")

    launcher = str(root / "usr/bin/msg-nagios-bridge")
    version = run([launcher, "--version"], env=env, cwd=str(root))
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"msg-nagios-bridge {project_version()}"

    config = str(root / CONFIG)
    checked = run([launcher, "check-config", "-c", config], env=env, cwd=str(root))
    assert checked.returncode == 0, checked.stderr
    *warnings, ok = checked.stdout.strip().splitlines()
    assert ok == f"{config}: OK"
    # Only what this test box lacks of an installed one: the unit's /run/msg-nagios-bridge.
    assert all(line.startswith("warning: ") and "/run/msg-nagios-bridge" in line for line in warnings), warnings
    wiring = run([launcher, "nagios-config", "-c", config], env=env, cwd=str(root))
    assert wiring.returncode == 0 and "ocsp_command=msg-bridge-ocsp" in wiring.stdout, wiring.stderr


class NotifySocket:
    """A stand-in for systemd's $NOTIFY_SOCKET: collects the datagrams the bridge sends, reading
    all the time as systemd does (its queue holds only net.unix.max_dgram_qlen datagrams)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="notify-", dir="/tmp")   # AF_UNIX paths are short
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        with contextlib.suppress(OSError):
            while data := self.sock.recv(4096):       # b"" once shut down
                self.messages.append(data.decode())

    def wait_for(self, line, timeout):
        return wait_until(lambda: any(line in message.split("\n") for message in self.messages),
                          timeout, interval=0.05)

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.reader.join(5)
        shutil.rmtree(self.dir, ignore_errors=True)


class UnpackedBridge:
    """`<root>/usr/bin/msg-nagios-bridge run` on Debian's python3; stopped by its PID."""

    def __init__(self, root, workdir, config_text, extra_env):
        self.workdir = workdir
        self.config = workdir / "bridge.yaml"
        self.config.write_text(config_text)
        self.log_path = workdir / "bridge.log"
        env = {**debian_env(root), **extra_env}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(root / "usr/bin/msg-nagios-bridge"), "run", "--allow-root", "-c", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(workdir), start_new_session=True)
        track(self)

    def stop(self, timeout=30.0):
        return stop_process(self.proc, timeout)

    def log_text(self):
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def unpacked_bridge(root, tmp_path):
    made = []

    def make(config_text, extra_env):
        bridge = UnpackedBridge(root, tmp_path / "bridge", config_text, extra_env)
        made.append(bridge)
        return bridge

    (tmp_path / "bridge").mkdir()
    yield make
    for bridge in made:
        bridge.stop()


def test_unpacked_daemon_publishes_through_debian_stomp_and_speaks_sd_notify(
        root, tmp_path, activemq, stomp_probe_factory, unpacked_bridge):
    require_debian_python()
    probe = stomp_probe_factory(activemq, QUEUE)
    workdir = tmp_path / "bridge"
    notify = NotifySocket()
    try:
        bridge = unpacked_bridge(
            bridge_config(workdir, [activemq.stomp_port], ocsp=False, perfdata=True, destination=QUEUE),
            {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
        assert notify.wait_for("READY=1", timeout=30), (notify.messages, bridge.log_text()[-3000:])
        result = CheckResult(host="ce01.example.org", service="org.sam.CE-JobSubmit", state=2,
                             output="job failed", timestamp=int(time.time()), perfdata="time=1.5s")
        line = result_line.format_line(result) + "\n"
        with open(workdir / "service-perfdata", "a") as handle:
            handle.write(line)
        (message,) = probe.wait_for_count(1, timeout=30)
        assert message.headers["result_id"] == result_line.parse(line.rstrip("\n")).identity()
        assert message.headers["metric"] == "org.sam.CE-JobSubmit"
        assert message.headers["status"] == "CRITICAL"
        assert "job failed" in message.body
        # WatchdogSec= in the unit relies on these pings (every WATCHDOG_USEC / 2).
        assert notify.wait_for("WATCHDOG=1", timeout=10), notify.messages
        assert bridge.stop() == 0, bridge.log_text()[-3000:]
        assert notify.wait_for("STOPPING=1", timeout=1), notify.messages
    finally:
        notify.close()


def test_an_idle_connection_on_debian_stomp_stays_up(root, tmp_path, activemq, unpacked_bridge):
    require_debian_python()
    workdir = tmp_path / "bridge"
    bridge = unpacked_bridge(
        bridge_config(workdir, [activemq.stomp_port], ocsp=False, perfdata=True, destination=QUEUE), {})
    status_file = workdir / "spool" / "status.json"

    def status():
        try:
            return json.loads(status_file.read_text())
        except (OSError, ValueError):
            return {}

    deadline = time.monotonic() + 30
    while not status().get("states", {}).get("publisher", "").startswith("connected"):
        if time.monotonic() > deadline or bridge.proc.poll() is not None:
            pytest.fail("the bridge never connected:\n" + bridge.log_text()[-3000:], pytrace=False)
        time.sleep(0.2)
    time.sleep(8)          # more than twice the sandbox's connect_timeout (3 s), with no traffic
    connects = status().get("counters", {}).get("connects", 0)
    assert connects == 1, (connects, bridge.log_text()[-3000:])
