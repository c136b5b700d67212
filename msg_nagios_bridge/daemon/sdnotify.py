"""systemd's notify protocol (Type=notify), with the standard library only.

READY=1 once sinks and sources are up, STOPPING=1 on shutdown, WATCHDOG=1
pings from the main loop when the unit sets WatchdogSec. Without
$NOTIFY_SOCKET (not under systemd) every call does nothing.
"""
from __future__ import annotations

import os
import socket
from typing import Optional

SEND_TIMEOUT = 2.0      # seconds a notification may wait for room in systemd's queue


def notify(state: str) -> bool:
    """Send ``state`` (e.g. "READY=1") to systemd. True if it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):          # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            # Bounded: a receiver that stops reading fills its queue (net.unix.max_dgram_qlen),
            # and a blocking send would stop the main loop, and with it the reaction to TERM.
            sock.settimeout(SEND_TIMEOUT)
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
        return True
    except OSError:
        return False


def watchdog_interval() -> Optional[float]:
    """Seconds between watchdog pings (half of WatchdogSec), or None if no watchdog is set."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000
