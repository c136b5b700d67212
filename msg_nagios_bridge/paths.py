"""Where the daemon keeps its state, so the CLI tools find it without importing the daemon."""
import os

from .config import Settings


def outbound_spool_path(settings: Settings) -> str:
    return os.path.join(settings.spool.directory, "outbound.sqlite")


def inbound_spool_path(settings: Settings) -> str:
    return os.path.join(settings.spool.directory, "inbound.sqlite")


def status_path(settings: Settings) -> str:
    return os.path.join(settings.spool.directory, "status.json")


def shared_spool_directory(info: os.stat_result, owner: int) -> bool:
    """Whether a spool directory with this stat can be written by users other than ``owner``
    (the bridge's uid) and root: the bridge refuses such a directory, check-config says so."""
    return bool(info.st_mode & 0o002) or info.st_uid not in (owner, 0)
