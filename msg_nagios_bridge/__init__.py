"""msg-nagios-bridge: Nagios <-> MSG (ActiveMQ over STOMP)."""
import importlib
import importlib.util
import sys
import types

__version__ = "0.1.0"


class _LoadedOnFirstUse(types.ModuleType):
    """Stands in for a module until one of its names is used, then imports it."""

    def __getattr__(self, name: str):
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), name)


def _defer(name: str) -> None:
    """Put a stand-in for module ``name`` in sys.modules, if it is installed and not imported yet,
    so that ``import name`` costs nothing until one of its names is used. (importlib's
    LazyLoader does not do here: Python 3.11's import reads the module's __spec__, which loads
    it.) For modules ``import stomp`` imports and the bridge never uses:

    - websocket (websocket-client): stomp.py 9's WebSocket adapter imports it, about 2 MB of RSS
      (it brings http and its cookie parser); the bridge speaks STOMP over TCP, and the adapter
      uses websocket's names only when a WebSocket connection is made.
    - OpenSSL (pyOpenSSL, Debian's python3-openssl, common on grid boxes): Debian's stomp.py
      8.0.0 imports it, and with it the whole of ``cryptography``, about 10 MB of RSS, for
      ``check_ssl_certificate``, which only its ``set_ssl`` connections call; the bridge makes
      its own TLS connections (docs/packaging.md, "TLS").
    """
    if name in sys.modules:
        return
    try:
        if importlib.util.find_spec(name) is None:
            return
    except (ImportError, ValueError):
        return
    sys.modules[name] = _LoadedOnFirstUse(name)


_defer("websocket")
_defer("OpenSSL")
