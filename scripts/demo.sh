#!/usr/bin/env bash
# One command, fresh Debian/Ubuntu machine: install, then run Nagios -> bridge -> ActiveMQ end to end
# (--core icinga2: Icinga 2 at both ends; the other options: .venv/bin/python scripts/demo.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
