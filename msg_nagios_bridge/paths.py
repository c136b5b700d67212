"""Where the daemon keeps its state, so the CLI tools find it without importing the daemon."""
import os

from .config import Settings


def outbound_spool_path(settings: Settings) -> str:
    return os.path.join(settings.spool.directory, "outbound.sqlite")


def inbound_spool_path(settings: Settings) -> str:
    return os.path.join(settings.spool.directory, "inbound.sqlite")


def status_path(settings: Settings) -> str:
    return os.path.join(settings.spool.directory, "status.json")
