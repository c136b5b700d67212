"""Where the log goes: stderr (journald under systemd), syslog, or a file.

``configure`` replaces the root handler, so calling it again on SIGHUP
re-opens a log file that logrotate moved away.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from typing import Optional

from .config import LoggingSettings

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_handler: Optional[logging.Handler] = None


def configure(settings: LoggingSettings) -> None:
    global _handler
    if settings.target == "syslog":
        address = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
        handler: logging.Handler = logging.handlers.SysLogHandler(
            address=address, facility=logging.handlers.SysLogHandler.facility_names[settings.syslog_facility])
        handler.setFormatter(logging.Formatter("msg-nagios-bridge[%(process)d]: %(levelname)s %(name)s: %(message)s"))
    elif settings.target == "file":
        handler = logging.FileHandler(settings.file, encoding="utf-8")
        handler.setFormatter(logging.Formatter(FORMAT))
    else:
        # Under systemd, journald adds its own time stamp.
        under_journal = "JOURNAL_STREAM" in os.environ
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if under_journal else FORMAT))
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    for old in list(root.handlers):     # the basicConfig handler of the CLI
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level)
    _handler = handler
    # stomp.py logs every connection at INFO; ours say the same in fewer words.
    logging.getLogger("stomp.py").setLevel(max(logging.WARNING, root.level))
