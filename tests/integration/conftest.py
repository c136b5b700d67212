"""Fixtures for tests that run the bridge itself as a process."""
import pytest

from tests.sandbox import icinga2 as icinga2_mod
from tests.sandbox.bridge import Bridge, bridge_config
from tests.sandbox.icinga2 import Icinga2


@pytest.fixture
def bridge_factory(tmp_path):
    """make(broker_ports, name="bridge", **bridge_config options) -> Bridge (not started),
    working in tmp_path/name; every one is stopped at teardown. Its status.json is written
    every 0.25 s (tests wait on it; the default 2 s cost the suite minutes)."""
    made = []

    def make(broker_ports, name="bridge", **options):
        options.setdefault("status_interval", 0.25)
        workdir = tmp_path / name
        bridge = Bridge(workdir, bridge_config(workdir, broker_ports, **options))
        made.append(bridge)
        return bridge

    yield make
    for bridge in made:
        bridge.stop()


@pytest.fixture
def icinga2_factory(tmp_path):
    """make(name="icinga2", start=True, **Icinga2 kwargs) -> Icinga2 in tmp_path/<name>; every one
    is stopped (with the processes it started) at teardown."""
    try:
        icinga2_mod.check_installed()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)  # CI installs it (scripts/setup.sh): missing is a failure
    made = []

    def make(name="icinga2", start=True, **kwargs):
        core = Icinga2(tmp_path / name, **kwargs)
        made.append(core)
        if start:
            core.start()
        return core

    yield make
    for core in made:
        core.stop()
