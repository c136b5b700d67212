"""What a valid configuration needs of this machine: its users, directories and files.

load.py judges the syntax and the values; this judges what ``run`` would find here, for the
user the bridge runs as (daemon.user if set, else the user running the check). ``check-config``
reports it: an error for what ``run`` cannot survive (or would wait on for ever), a warning for
what it can (a FIFO Nagios makes when it starts).
"""
from __future__ import annotations

import dataclasses
import grp
import os
import pwd
import stat
from typing import FrozenSet, List, Optional

from ..paths import shared_spool_directory
from .settings import ConfigError, Settings


# Made by the systemd unit (RuntimeDirectory=) at each start and by its tmpfiles.d entry at boot.
RUNTIME_DIRECTORY = "/run/msg-nagios-bridge"


@dataclasses.dataclass
class Findings:
    errors: List[ConfigError] = dataclasses.field(default_factory=list)
    warnings: List[ConfigError] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class User:
    name: str
    uid: int
    gids: FrozenSet[int]
    why: str           # how it was chosen, for the messages

    def __str__(self) -> str:
        return f"{self.name} ({self.why})"


def check_machine(settings: Settings) -> Findings:
    """The problems ``run`` would meet on this machine with ``settings`` (see the module doc)."""
    found = Findings()
    file = settings.file

    def error(key: str, value, reason: str) -> None:
        found.errors.append(ConfigError(file, key, value, reason))

    def warning(key: str, value, reason: str) -> None:
        found.warnings.append(ConfigError(file, key, value, reason))

    user = _user(settings, error)
    checks = [lambda: _spool(settings, user, error)]
    if settings.core == "nagios":
        checks.append(lambda: _nagios(settings, user, error, warning))
    if settings.logging.target == "file":
        checks.append(lambda: _writable_file("logging.file", settings.logging.file, user, error))
    # Warnings: run survives both. Only run --daemon uses the pidfile (it says so and stops);
    # a textfile that cannot be written is logged every status interval.
    checks.append(lambda: _made_in_directory(
        "daemon.pidfile", settings.daemon.pidfile, user, warning, "run --daemon would stop at once (the systemd"
        " unit does not use the pidfile)"))
    if settings.metrics.textfile:
        checks.append(lambda: _made_in_directory(
            "metrics.textfile", settings.metrics.textfile, user, warning, "the bridge would log that it cannot"
            " write the metrics"))
    for check in checks:
        try:
            check()
        except OSError as exc:
            # A directory this user may not look into (nagios's, as another user): say so
            # rather than call what is there missing.
            warning("", None, f"cannot check {exc.filename}: {exc.strerror} (run check-config as root or as the"
                              " bridge's user)")
    return found


def _user(settings: Settings, error) -> Optional[User]:
    """The user ``run`` runs as, or None when daemon.user or daemon.group does not exist here
    (then only what needs no user is checked)."""
    daemon = settings.daemon
    group_gid = None
    if daemon.group:
        try:
            group_gid = grp.getgrnam(daemon.group).gr_gid
        except KeyError:
            error("daemon.group", daemon.group, "no such group on this machine")
    if daemon.user:
        try:
            entry = pwd.getpwnam(daemon.user)
        except KeyError:
            error("daemon.user", daemon.user, "no such user on this machine")
            return None
        if daemon.group and group_gid is None:
            return None
        # As run --daemon makes it: the group (daemon.group, else the user's own) and initgroups.
        gid = entry.pw_gid if group_gid is None else group_gid
        return User(daemon.user, entry.pw_uid, frozenset(os.getgrouplist(daemon.user, gid)), "daemon.user")
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid {uid}"
    return User(name, uid, frozenset(os.getgroups()) | {os.getegid()},
                "who runs this check; daemon.user is not set")


def _spool(settings: Settings, user: Optional[User], error) -> None:
    directory = settings.spool.directory
    key = "spool.directory"
    if not _is_dir(directory):
        parent = _nearest_existing(directory)
        if not _is_dir(parent):
            error(key, directory, f"cannot be created: {parent} is not a directory")
        elif user and not _may(parent, os.W_OK | os.X_OK, user):
            error(key, directory, f"does not exist, and {user} cannot create it: {parent} is not writable by it")
        return
    if user is None:
        return
    if not _may(directory, os.W_OK | os.X_OK, user):
        error(key, directory, f"is not writable by {user}: give it to that user, mode 0700")
        return
    info = os.stat(directory)
    # The bridge's own rule. The owner only for daemon.user: without it the bridge runs as the
    # unit's User= (nagios), which root running this check is not.
    if shared_spool_directory(info, user.uid if settings.daemon.user else info.st_uid):
        error(key, directory, f"can be written by other users (mode {info.st_mode & 0o7777:o}, owner uid"
                              f" {info.st_uid}): give it to {user.name}, mode 0700")
        return
    # A spool tool run as root (dead-letters, send) leaves files the bridge's user cannot open.
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.startswith(("outbound.sqlite", "inbound.sqlite", "status.json")) and stat.S_ISREG(_mode(path) or 0) \
                and not _may(path, os.R_OK | os.W_OK, user):
            owner = os.stat(path).st_uid
            error(key, directory, f"{name} in it cannot be written by {user} (owner uid {owner}): chown it to"
                                  f" {user.name}")


def _nagios(settings: Settings, user: Optional[User], error, warning) -> None:
    if settings.ocsp_pipe.enabled:
        directory = os.path.dirname(settings.ocsp_pipe.path)
        if not _is_dir(directory) and directory == RUNTIME_DIRECTORY:
            warning("sources.ocsp_pipe.path", settings.ocsp_pipe.path,
                    f"its directory {directory} does not exist now: the systemd unit makes it when it starts the"
                    " bridge (RuntimeDirectory=), and the tmpfiles.d entry at boot; run --daemon needs it first")
        elif not _is_dir(directory):
            error("sources.ocsp_pipe.path", settings.ocsp_pipe.path, f"its directory {directory} does not exist")
        elif user and not _may(directory, os.W_OK | os.X_OK, user):
            error("sources.ocsp_pipe.path", settings.ocsp_pipe.path,
                  f"its directory {directory} is not writable by {user}, who makes the FIFO and its token there")
    if settings.perfdata.enabled:
        from ..cores.nagios.wiring import wants_host_results
        keys = ["service_file"] + (["host_file"] if wants_host_results(settings) else [])
        for name in keys:
            path = getattr(settings.perfdata, name)
            directory = os.path.dirname(path)
            if not _is_dir(directory):
                error(f"sources.perfdata.{name}", path, f"its directory {directory} does not exist: the bridge"
                                                         " would wait for ever for Nagios to write the file")
            elif user and not _may(directory, os.X_OK, user):      # the files are opened by name
                error(f"sources.perfdata.{name}", path, f"its directory {directory} cannot be searched by {user}")
    inbound = settings.inbound
    if not inbound.enabled:
        return
    if inbound.writer == "command_file":
        path = inbound.command_file
        directory = os.path.dirname(path)
        if not _is_dir(directory):
            error("inbound.command_file", path, f"its directory {directory} does not exist: is it nagios.cfg's"
                                                " command_file?")
        elif _mode(path) is None:
            warning("inbound.command_file", path, "does not exist now: Nagios makes it when it runs (with"
                                                  " check_external_commands=1); the bridge waits for it")
        elif not stat.S_ISFIFO(_mode(path)):
            warning("inbound.command_file", path, "is not a FIFO: is it nagios.cfg's command_file?")
        elif user and not _may(path, os.W_OK, user):
            error("inbound.command_file", path, f"cannot be written by {user}: put that user in the group of the"
                                                f" file ({_group_name(os.stat(path).st_gid)})")
    if inbound.shared_newest_file:
        # Made there with its -wal, -shm and lock files: the directory, not only the file.
        path = inbound.shared_newest_file
        directory = os.path.dirname(path)
        if not _is_dir(directory):
            error("inbound.shared_newest_file", path, f"its directory {directory} does not exist")
        elif user and not _may(directory, os.W_OK | os.X_OK, user):
            error("inbound.shared_newest_file", path, f"its directory {directory} is not writable by {user}, who"
                                                      " makes the file there")
    if inbound.check_result_path:
        path = inbound.check_result_path
        if not _is_dir(path):
            error("inbound.check_result_path", path, "is not a directory: is it nagios.cfg's check_result_path?")
        elif user and not _may(path, os.W_OK | os.X_OK, user):
            error("inbound.check_result_path", path, f"is not writable by {user}")


def _writable_file(key: str, path: str, user: Optional[User], error) -> None:
    """A file the bridge appends to, made when missing (logging.file)."""
    if _mode(path) is not None:
        if user and not _may(path, os.W_OK, user):
            error(key, path, f"cannot be written by {user}")
        return
    directory = os.path.dirname(path)
    if not _is_dir(directory):
        error(key, path, f"its directory {directory} does not exist")
    elif user and not _may(directory, os.W_OK | os.X_OK, user):
        error(key, path, f"does not exist, and {user} cannot create it: {directory} is not writable by it")


def _made_in_directory(key: str, path: str, user: Optional[User], warning, consequence: str) -> None:
    """A file made anew in its directory (the pidfile; the textfile, through a temporary file and
    a rename), so the bridge's user must be able to write the directory."""
    directory = os.path.dirname(path)
    if not _is_dir(directory):
        # The runtime directory is made by the unit (RuntimeDirectory=) and by tmpfiles.d at boot.
        if directory != RUNTIME_DIRECTORY:
            warning(key, path, f"its directory {directory} does not exist: {consequence}")
    elif user and not _may(directory, os.W_OK | os.X_OK, user):
        warning(key, path, f"its directory {directory} is not writable by {user}: {consequence}")


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


def _mode(path: str) -> Optional[int]:
    """``path``'s st_mode, None when nothing is there. Unlike os.path.exists, an OSError (no
    search permission above it) when this user cannot tell."""
    try:
        return os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None


def _is_dir(path: str) -> bool:
    mode = _mode(path)
    return mode is not None and stat.S_ISDIR(mode)


def _nearest_existing(path: str) -> str:
    while _mode(path) is None and path != os.path.dirname(path):
        path = os.path.dirname(path)
    return path


def _may(path: str, want: int, user: User) -> bool:
    """Whether ``user`` may ``want`` (os.R_OK | os.W_OK | os.X_OK) ``path``."""
    if user.uid == os.getuid():
        return os.access(path, want)
    # os.access answers for the real user only. For another one this judges the owner, group
    # and mode bits of the path and of every directory above it (search), and read-only
    # mounts; it does not see ACLs, SELinux or AppArmor, nor systemd's ProtectSystem= and
    # ReadWritePaths= (docs/packaging.md).
    if want & os.W_OK and os.statvfs(path).f_flag & os.ST_RDONLY:
        return False
    if user.uid == 0:
        return True
    path = os.path.abspath(path)
    above = os.path.dirname(path)
    while True:
        if not _bits(os.stat(above), os.X_OK, user):
            return False
        if above == os.path.dirname(above):
            break
        above = os.path.dirname(above)
    return _bits(os.stat(path), want, user)


def _bits(info: os.stat_result, want: int, user: User) -> bool:
    if info.st_uid == user.uid:
        shift = 6
    elif info.st_gid in user.gids:
        shift = 3
    else:
        shift = 0
    return (info.st_mode >> shift) & want == want
