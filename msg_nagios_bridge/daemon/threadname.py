"""OS-level thread names, so that ``top -H``, ``ps -L`` and /proc/PID/task/*/comm tell the
bridge's threads apart (Python before 3.14 names none: each showed as "python3", and which
thread of a busy bridge was the busiest could not be told: docs/performance.md, the ramp)."""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Callable, Optional

PR_SET_NAME = 15        # from <linux/prctl.h>
NAME_BYTES = 15         # the kernel keeps 16 bytes, the last a NUL

_prctl: Optional[Callable[..., int]] = None
try:
    _prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").prctl
except (OSError, AttributeError):       # not glibc/Linux: threads keep the process's name
    pass


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` (cut to 15 bytes) at the OS level; nothing where that
    cannot be done."""
    if _prctl is not None:
        _prctl(PR_SET_NAME, name.encode("utf-8", "replace")[:NAME_BYTES], 0, 0, 0)


def named_thread_starter(name: str) -> Callable[[Callable[[], None]], threading.Thread]:
    """For stomp.py's ``override_threading`` (and our own helper threads): start ``loop`` in a
    daemon thread named ``name``, in Python and at the OS level. A thread it starts (stomp.py's
    heart-beat thread) inherits the OS name."""
    def start(loop: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            name_os_thread(name)
            loop()
        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        return thread
    return start
