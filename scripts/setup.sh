#!/usr/bin/env bash
# Installs what the bridge, its tests and its demo need on Debian/Ubuntu:
# the real ActiveMQ and Nagios 4 (for tests and the demo), and a venv with the
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

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
echo "setup: ready (.venv/bin/msg-nagios-bridge)"
