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

from ..config import ConfigError, LoggingSettings
from ..display import printable

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_handler: Optional[logging.Handler] = None


class EscapingFormatter(logging.Formatter):
    """Every log message with its control and bidi characters escaped (display.printable):
    log lines carry remote text (header names, destinations, broker errors), and neither an
    ESC sequence nor a newline that starts a fake log line may reach a terminal or a log file.
    A traceback, added after the message, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        record.message = printable(message)
        try:
            return super().formatMessage(record)
        finally:
            record.message = message


def configure(settings: LoggingSettings, config_file: str = "") -> None:
    """Log as ``settings`` say. ConfigError (naming ``config_file`` and logging.file) when the log
    file cannot be opened; the handler in place is kept then."""
    global _handler
    if settings.target == "syslog":
        address = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
        handler: logging.Handler = logging.handlers.SysLogHandler(
            address=address, facility=logging.handlers.SysLogHandler.facility_names[settings.syslog_facility])
        handler.setFormatter(EscapingFormatter("msg-nagios-bridge[%(process)d]: %(levelname)s %(name)s: %(message)s"))
    elif settings.target == "file":
        try:
            handler = logging.FileHandler(settings.file, encoding="utf-8")
        except OSError as exc:
            # A traceback at start (a restart loop under systemd), and the end of the bridge on
            # a SIGHUP: the unit grants no log directory unless a drop-in does.
            raise ConfigError(config_file or "the configuration", "logging.file", settings.file,
                              f"cannot be opened: {exc.strerror} (the bridge's user must be able to write it;"
                              " under systemd add LogsDirectory= or ReadWritePaths= in a drop-in,"
                              " docs/packaging.md)") from None
        handler.setFormatter(EscapingFormatter(FORMAT))
    else:
        # Under systemd, journald adds its own time stamp.
        under_journal = "JOURNAL_STREAM" in os.environ
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(EscapingFormatter("%(levelname)s %(name)s: %(message)s" if under_journal else FORMAT))
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
