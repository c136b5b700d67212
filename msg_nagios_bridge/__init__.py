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


def _defer_websocket() -> None:
    """``import stomp`` imports its WebSocket adapter, which imports websocket-client
    (stomp.py 9; Debian's 8.0 has no such adapter): about 2 MB of RSS (it brings http and
    its cookie parser) for a module the bridge never uses, since it speaks STOMP over TCP.
    The adapter uses websocket's names only when a WebSocket connection is made, so a
    stand-in that imports the module at its first use is enough. (importlib's LazyLoader
    does not do here: Python 3.11's import reads the module's __spec__, which loads it.)"""
    if "websocket" in sys.modules:
        return
    try:
        if importlib.util.find_spec("websocket") is None:
            return
    except (ImportError, ValueError):
        return
    sys.modules["websocket"] = _LoadedOnFirstUse("websocket")


_defer_websocket()
