#!/usr/bin/env bash
# Runs the whole test suite: unit tests and integration tests against the real
# ActiveMQ and Nagios 4 (started by the tests on 127.0.0.1 and stopped by PID).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# --durations: the slowest tests in every log (the suite aims at 20 minutes).
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=30 "$@" tests
