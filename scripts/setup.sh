#!/usr/bin/env bash
# Installs what the bridge, its tests and its demo need on Debian/Ubuntu: the real ActiveMQ
# and Nagios 4 (for tests and the demo), Icinga 2 and RabbitMQ (for their sandboxes), and a venv with the
# package and its test extras in ./.venv. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-stomp/-yaml/-daemon: Debian's modules, which the Debian package depends on;
# tests/integration/test_package.py runs the unpacked package on them with /usr/bin/python3.
# python3-openssl (with python3-cryptography): common on grid boxes, and what made Debian's
# stomp.py 8.0.0 probe the broker without the client certificate; test_tls.py runs TLS with it.
# systemd: its systemd-analyze verifies the packaged units (test_package.py), offline.
# valgrind: benchmarks/instructions.py counts the inbound path's instructions with callgrind.
packages=(activemq nagios4-core monitoring-plugins-basic python3-venv
          python3-stomp python3-yaml python3-daemon python3-openssl python3-cryptography systemd
          valgrind)
updated=0
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  updated=1
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Packages whose install starts and enables a system service we do not want running: a
# policy-rc.d that refuses every start (unless the machine has its own) covers the install,
# then the units are disabled. Without a running systemd, systemctl still removes the units'
# links (deb-systemd-helper refuses to run outside dpkg). Packages installed before are left
# as they are.
install_stopped() {   # install_stopped "SYSTEMD UNITS" "SYSV NAMES" PACKAGE...
  local units=$1 sysv=$2 wanted=() p
  shift 2
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || wanted+=("$p")
  done
  [ "${#wanted[@]}" -gt 0 ] || return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${wanted[*]} (its system service stays stopped and disabled)"
  local policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# written by msg-nagios-bridge scripts/setup.sh during one install\nexit 101\n' \
      | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    trap "$sudo rm -f $policy" EXIT
  fi
  [ "$updated" -eq 1 ] || { $sudo apt-get update -qq; updated=1; }
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${wanted[@]}" >/dev/null
  if [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now $units >/dev/null 2>&1 || true
  else
    for p in $sysv; do $sudo update-rc.d "$p" disable >/dev/null 2>&1 || true; done
    if command -v systemctl >/dev/null; then
      $sudo systemctl disable $units >/dev/null 2>&1 || true
    fi
  fi
}

# Icinga 2 for tests/sandbox/icinga2.py, which runs `icinga2 daemon` from a temp dir as the
# current user (icinga2-bin + icinga2-common are enough).
install_stopped "icinga2.service" "icinga2" icinga2-bin icinga2-common

# RabbitMQ for tests/sandbox/rabbitmq.py, which runs a node (with the rabbitmq_stomp plugin,
# enabled offline into its own plugins file) from a temp dir as the current user, with its own
# epmd. erlang-base enables an epmd (socket and service) too.
install_stopped "rabbitmq-server.service epmd.socket epmd.service" "rabbitmq-server" rabbitmq-server

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
echo "setup: ready (.venv/bin/msg-nagios-bridge)"
