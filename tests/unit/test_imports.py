"""What a running bridge imports: every module costs RSS for the daemon's whole life (issue 16,
point 4: 50 MB at grid scale), so modules only some configurations use are imported when used."""
import importlib.util
import json
import subprocess
import sys

import pytest

from tests.sandbox.bridge import REPO


def loaded_after(code: str, python: str = sys.executable) -> dict:
    """Run ``code`` in a fresh ``python``; the modules it left loaded, name -> type name."""
    script = code + "\nimport sys, json\nprint(json.dumps({n: type(m).__name__ for n, m in sys.modules.items()}))"
    out = subprocess.run([python, "-c", script], cwd=str(REPO), capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return json.loads(out.splitlines()[-1])


DAEMON = "from msg_nagios_bridge.cli import main\nfrom msg_nagios_bridge.daemon import service\n"


def test_the_daemon_does_not_load_the_http_server_a_bridge_without_the_metrics_endpoint_never_uses():
    loaded = loaded_after(DAEMON)
    assert "msg_nagios_bridge.daemon.metrics" in loaded
    assert not {"http.server", "http.client", "email.message"} & set(loaded)


def test_serving_metrics_still_imports_what_it_needs():
    loaded = loaded_after(DAEMON + "from msg_nagios_bridge.daemon import metrics\n"
                          "server = metrics.serve('127.0.0.1:0', lambda: '')\nserver.shutdown()\n")
    assert "http.server" in loaded


@pytest.mark.skipif(importlib.util.find_spec("websocket") is None,
                    reason="websocket-client is not installed (stomp.py 8 as Debian packages it needs none)")
def test_stomps_websocket_adapter_loads_websocket_client_only_when_used():
    loaded = loaded_after(DAEMON + "import stomp\n")
    assert loaded["websocket"] == "_LoadedOnFirstUse"
    assert not any(name.startswith("websocket.") for name in loaded)
    # The adapter still works: its first use of a name imports the real module.
    used = loaded_after(DAEMON + "import stomp.adapter.ws as ws\n"
                        "assert ws.websocket.ABNF.OPCODE_TEXT == 1\n"
                        "assert issubclass(ws.websocket._exceptions.WebSocketException, Exception)\n")
    assert used["websocket"] == "module" and "websocket._abnf" in used


DEBIAN_PYTHON = "/usr/bin/python3"     # with Debian's python3-stomp 8.0.0 and python3-openssl (scripts/setup.sh)


def test_debians_stomp_loads_pyopenssl_and_cryptography_only_when_used():
    """Debian's stomp.py 8.0.0 imports pyOpenSSL, and with it all of cryptography (10 MB of
    RSS: an idle bridge 34 MB instead of 29), for a check only its own TLS connections make."""
    probe = "import OpenSSL, stomp\nprint(stomp.__version__)"
    found = subprocess.run([DEBIAN_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60)
    if found.returncode != 0 or "(8, 0" not in found.stdout:
        pytest.fail(f"want Debian's python3 with python3-stomp 8.0.0 and python3-openssl (scripts/setup.sh):"
                    f" {found.stdout}{found.stderr[-300:]}", pytrace=False)
    loaded = loaded_after(DAEMON + "import stomp\n", DEBIAN_PYTHON)
    assert loaded["OpenSSL"] == "_LoadedOnFirstUse"
    assert not any(name.startswith(("OpenSSL.", "cryptography")) for name in loaded)
    # stomp.py's use of it still works: its first use of a name imports the real module.
    used = loaded_after(DAEMON + "import stomp.transport as t\n"
                        "assert t.OpenSSL and t.OpenSSL.crypto.FILETYPE_PEM == 1\n", DEBIAN_PYTHON)
    assert used["OpenSSL"] == "module" and "OpenSSL.crypto" in used
