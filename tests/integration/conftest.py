"""Fixtures for tests that run the bridge itself as a process."""
import pytest

from tests.sandbox.bridge import Bridge, bridge_config


@pytest.fixture
def bridge_factory(tmp_path):
    """make(broker_ports, name="bridge", **bridge_config options) -> Bridge (not started),
    working in tmp_path/name; every one is stopped at teardown."""
    made = []

    def make(broker_ports, name="bridge", **options):
        workdir = tmp_path / name
        bridge = Bridge(workdir, bridge_config(workdir, broker_ports, **options))
        made.append(bridge)
        return bridge

    yield make
    for bridge in made:
        bridge.stop()
