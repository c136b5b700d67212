"""One YAML file -> validated, immutable settings: the dataclasses in settings.py, the reading
and checking in load.py. Import from here: ``config.load(path)``, ``config.Settings``.
What ``run`` needs of this machine (users, directories) is machine.py's, for ``check-config``."""
from .settings import *  # noqa: F401,F403
from .load import *  # noqa: F401,F403
from .load import _INBOUND_KEYS, _MAPPING_KEYS, _ROUTE_KEYS  # noqa: F401
