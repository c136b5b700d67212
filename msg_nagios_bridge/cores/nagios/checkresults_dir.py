"""Write passive check results into Nagios's check results directory.

Nagios reaps files named ``c`` + 6 characters that have a matching ``.ok``
file. The result file is written, fsynced and closed first, then the ``.ok``
file is created, so Nagios never reads half a file. This path has no size
limit per result and no reader problem: files wait until Nagios is back (Nagios
deletes unread files older than ``max_check_result_file_age``, 1 hour by default,
by mtime: the writer keeps touching the file that waits).
"""
from __future__ import annotations

import errno
import os
import secrets
import string
from typing import Sequence

from . import checkresult_file
from ...model import CheckResult
from ...files import fsync_dir
from .command_file import NagiosUnavailable

_NAME_CHARS = string.ascii_letters + string.digits


def write_results(directory: str, results: Sequence[CheckResult]) -> str:
    """Write ``results`` as one check result file (without a file_time: see
    checkresult_file.render); returns its path."""
    text = checkresult_file.render(results).encode("utf-8")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        path = os.path.join(directory, "c" + "".join(secrets.choice(_NAME_CHARS) for _ in range(6)))
        try:
            fd = os.open(path, flags, 0o600)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            reason = "does not exist" if exc.errno == errno.ENOENT else exc.strerror
            raise NagiosUnavailable(f"cannot write into the check results directory {directory}: {reason}") from None
    else:
        raise NagiosUnavailable(f"no free file name in {directory} after 100 tries")
    try:
        try:
            view = memoryview(text)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        ok = os.open(path + ".ok", flags, 0o600)
        os.close(ok)
        fsync_dir(directory)     # the entries leave the spool once Nagios has read the file
    except OSError as exc:
        _remove(path)
        raise NagiosUnavailable(f"cannot write {path}: {exc.strerror}") from None
    return path


def _remove(path: str) -> None:
    for name in (path, path + ".ok"):
        try:
            os.unlink(name)
        except OSError:
            pass
