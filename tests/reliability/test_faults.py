"""Fault injection, short mode: every scenario of faults.py once, with random timing, against
the real ActiveMQ and Nagios; the broker scenarios (kill, stop, restart, hang) also against
real RabbitMQ nodes. Fails on any lost result (and on duplicates where the scenario
allows none). The seed is printed; RELIABILITY_SEED=<n> replays a run's timing.

The long mode (many rounds, longer streams, the table in docs/RELIABILITY.md) is
benchmarks/reliability.py.
"""
import dataclasses
import os
import random

import pytest

from tests.reliability import faults

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("RELIABILITY_SEED") or random.SystemRandom().randrange(1 << 30))
SHORT = faults.Params(duration=6.0, rate=120.0, drain_timeout=90.0, kills=2)


@pytest.mark.parametrize("name, broker", [(name, "activemq") for name in faults.SCENARIOS] +
                         [(name, "rabbitmq") for name in faults.BROKER_SCENARIOS])
def test_no_result_is_lost(name, broker, tmp_path):
    outcome = faults.run(name, tmp_path, SEED, dataclasses.replace(SHORT, broker=broker))
    print(f"\nseed {SEED}, {broker}: {outcome.line()}")
    assert outcome.lost == 0, f"seed {SEED}: {outcome.line()} lost e.g. {outcome.lost_sample}"
    assert outcome.duplicates_allowed or outcome.duplicated == 0, f"seed {SEED}: {outcome.line()}"
    assert not outcome.problems, f"seed {SEED}: {outcome.line()}"
    assert outcome.sent == int(SHORT.rate * SHORT.duration)
