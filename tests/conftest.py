"""Shared pytest fixtures: real ActiveMQ brokers, a real Nagios core and STOMP probes (tests/sandbox)."""
import itertools

import pytest
from hypothesis import settings

from tests.sandbox import activemq as amq_mod
from tests.sandbox import nagios as nagios_mod
from tests.sandbox.activemq import ActiveMQ
from tests.sandbox.nagios import Nagios
from tests.sandbox.stomp_probe import StompProbe

# No per-example deadline: on a loaded CI machine one example can take longer than Hypothesis's
# default 200 ms, which then fails as "unreliable timings" though nothing is wrong.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")

SANDBOX_FIXTURES = {"activemq", "activemq_factory", "nagios_factory", "stomp_probe_factory"}


def pytest_collection_modifyitems(items):
    """Tests using a sandbox fixture are integration tests, wherever they live."""
    for item in items:
        if SANDBOX_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def _require(check):
    """Fail (not skip) when a real program is missing: CI installs them."""
    try:
        check()
        return
    except RuntimeError as e:
        message = str(e)
    pytest.fail(message, pytrace=False)


def _stop_all(things):
    errors = []
    for thing in reversed(things):
        try:
            thing.stop() if hasattr(thing, "stop") else thing.close()
        except Exception as e:  # noqa: BLE001 - keep stopping the others
            errors.append(f"{thing!r}: {e}")
    assert not errors, "teardown failed: " + "; ".join(errors)


@pytest.fixture
def activemq_factory(tmp_path):
    """make(name=None, start=True, **ActiveMQ kwargs) -> ActiveMQ in tmp_path/<name>; all stopped at teardown."""
    _require(amq_mod.check_installed)
    made, counter = [], itertools.count(1)

    def make(name=None, start=True, **kwargs):
        name = name or f"b{next(counter)}"
        broker = ActiveMQ(tmp_path / f"activemq-{name}", name=name, **kwargs)
        made.append(broker)
        if start:
            broker.start()
        return broker

    yield make
    _stop_all(made)


@pytest.fixture
def activemq(activemq_factory):
    """One running broker for this test function."""
    return activemq_factory("b1")


@pytest.fixture
def nagios_factory(tmp_path):
    """make(start=True, **Nagios kwargs) -> Nagios in tmp_path/nagios-N; all stopped at teardown."""
    _require(nagios_mod.check_installed)
    made, counter = [], itertools.count(1)

    def make(start=True, **kwargs):
        instance = Nagios(tmp_path / f"nagios-{next(counter)}", **kwargs)
        made.append(instance)
        if start:
            instance.start()
        return instance

    yield make
    _stop_all(made)


@pytest.fixture
def stomp_probe_factory():
    """make(broker_or_addr, destination, start=True, **StompProbe kwargs) -> StompProbe; closed at teardown."""
    made = []

    def make(addr, destination, start=True, **kwargs):
        probe = StompProbe(addr, destination, **kwargs)
        made.append(probe)
        if start:
            probe.start()
        return probe

    yield make
    _stop_all(made)
