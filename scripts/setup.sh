#!/usr/bin/env bash
# Installs what the bridge, its tests and its demo need on Debian/Ubuntu: the real ActiveMQ
# and Nagios 4 (for tests and the demo), Icinga 2 (for its sandbox), and a venv with the
# package and its test extras in ./.venv. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-stomp/-yaml/-daemon: Debian's modules, which the Debian package depends on;
# tests/integration/test_package.py runs the unpacked package on them with /usr/bin/python3.
# python3-openssl (with python3-cryptography): common on grid boxes, and what made Debian's
# stomp.py 8.0.0 probe the broker without the client certificate; test_tls.py runs TLS with it.
packages=(activemq nagios4-core monitoring-plugins-basic python3-venv
          python3-stomp python3-yaml python3-daemon python3-openssl python3-cryptography)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Icinga 2 for tests/sandbox/icinga2.py, which runs `icinga2 daemon` from a temp dir as the
# current user (icinga2-bin + icinga2-common are enough). Its package enables a system icinga2
# and starts it (checks, notifications, log in /var/log/icinga2). On a fresh install, a
# policy-rc.d that refuses every start (unless the machine has its own) covers the install,
# then the service is disabled. An icinga2 installed before is left as it is.
icinga_packages=(icinga2-bin icinga2-common)
icinga_missing=()
for p in "${icinga_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || icinga_missing+=("$p")
done
if [ "${#icinga_missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${icinga_missing[*]} (its system service stays stopped and disabled)"
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# written by msg-nagios-bridge scripts/setup.sh during one install\nexit 101\n' \
      | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    trap '$sudo rm -f "$policy"' EXIT
  fi
  [ "${#missing[@]}" -gt 0 ] || $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${icinga_missing[@]}" >/dev/null
  if [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now icinga2.service >/dev/null 2>&1 || true
  else
    $sudo update-rc.d icinga2 disable >/dev/null 2>&1 || true
    $sudo deb-systemd-helper disable icinga2.service >/dev/null 2>&1 || true
  fi
fi

# RabbitMQ for tests/sandbox/rabbitmq.py, which runs a node (with the rabbitmq_stomp plugin,
# enabled offline into its own plugins file) from a temp dir as the current user, with its own
# epmd. The package starts and enables a system rabbitmq-server (and erlang-base an epmd): as
# for icinga2 above, a policy-rc.d refuses every start during a fresh install, then both are
# disabled. A rabbitmq-server installed before is left as it is.
if ! dpkg-query -W -f='${Status}' rabbitmq-server 2>/dev/null | grep -q "install ok installed"; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing rabbitmq-server (its system service stays stopped and disabled)"
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# written by msg-nagios-bridge scripts/setup.sh during one install\nexit 101\n' \
      | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    trap '$sudo rm -f "$policy"' EXIT
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
  if [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now rabbitmq-server.service epmd.socket epmd.service >/dev/null 2>&1 || true
  else
    $sudo update-rc.d rabbitmq-server disable >/dev/null 2>&1 || true
    # Without a running systemd, systemctl still removes the units' links (deb-systemd-helper
    # refuses to run outside dpkg); erlang-base enables epmd.socket and epmd.service.
    if command -v systemctl >/dev/null; then
      $sudo systemctl disable rabbitmq-server.service epmd.socket epmd.service >/dev/null 2>&1 || true
    fi
  fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
echo "setup: ready (.venv/bin/msg-nagios-bridge)"
