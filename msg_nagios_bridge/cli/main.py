"""Command line: ``msg-nagios-bridge COMMAND -c FILE``."""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time

from .. import __version__, config


def _check_config(args) -> int:
    settings = config.load(args.config, local_files=not args.syntax_only)
    if not args.syntax_only:
        from ..config.machine import check_machine
        found = check_machine(settings)
        for warning in found.warnings:
            print(f"warning: {warning}")
        if found.errors:
            for error in found.errors:       # all of them: each is a trip to the machine to fix
                print(f"configuration error: {error}", file=sys.stderr)
            return 2
    print(f"{args.config}: OK")
    if args.verbose:
        print(json.dumps(config.as_dict(settings), indent=2, sort_keys=True))
    return 0


def _nagios_config(args) -> int:
    from ..cores import core_for
    sys.stdout.write(core_for(config.load(args.config)).wiring())
    return 0


def _run(args) -> int:
    from ..daemon import logsetup
    from ..daemon.malloc import keep_large_blocks_mapped, use_one_arena
    from ..daemon.service import install_signal_flags, run
    if not args.daemon:
        install_signal_flags()
    settings = config.load(args.config)
    if os.geteuid() == 0 and not args.allow_root and not (args.daemon and settings.daemon.user):
        print("refusing to run as root: run the bridge as the Nagios user (systemd User=, or --daemon with "
              "daemon.user), or pass --allow-root if you really mean it", file=sys.stderr)
        return 2
    keep_large_blocks_mapped()      # before any thread: see malloc.py
    use_one_arena()
    if args.daemon:
        return _run_detached(settings, args.config)
    logsetup.configure(settings.logging, args.config)
    return run(settings, args.config)


def _run_detached(settings: config.Settings, config_path: str) -> int:
    """The classic way: detach with python-daemon, pidfile, umask, drop to user and group. The
    command waits until the bridge has started or failed, and says why it failed (detach.py)."""
    import dataclasses
    import grp
    import inspect
    import pwd

    import daemon

    from ..daemon.detach import detach
    from ..daemon.pidfile import AlreadyRunning, PidFile

    pidfile = PidFile(settings.daemon.pidfile)
    try:
        pidfile.check()
    except (AlreadyRunning, OSError) as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    uid = gid = None
    # Each name on its own, so the error names the key and the value as written.
    if settings.daemon.user:
        try:
            user = pwd.getpwnam(settings.daemon.user)
        except KeyError:
            raise config.ConfigError(settings.file, "daemon.user", settings.daemon.user,
                                     "no such user on this machine") from None
        uid, gid = user.pw_uid, user.pw_gid
    if settings.daemon.group:
        try:
            gid = grp.getgrnam(settings.daemon.group).gr_gid
        except KeyError:
            raise config.ConfigError(settings.file, "daemon.group", settings.daemon.group,
                                     "no such group on this machine") from None
    log_settings = settings.logging
    if log_settings.target == "stderr":
        # A detached process has no stderr: send the log to syslog instead of nowhere.
        print("note: logging.target is stderr; a detached bridge logs to syslog instead", file=sys.stderr)
        log_settings = dataclasses.replace(log_settings, target="syslog")
    options = dict(working_directory="/", umask=0o027, pidfile=pidfile, uid=uid, gid=gid,
                   signal_map={})   # run() installs its own handlers
    if "initgroups" in inspect.signature(daemon.DaemonContext).parameters:   # python-daemon >= 2.3
        options["initgroups"] = bool(settings.daemon.user)
    return detach(settings, config_path, log_settings, options)


def _read_status(settings: config.Settings):
    """(the status the bridge last wrote or None, why it cannot be read or "")."""
    from ..daemon import status as status_file
    from ..paths import status_path
    try:
        return status_file.read(status_path(settings)), ""
    except status_file.StatusError as exc:
        return None, str(exc)


def _status(args) -> int:
    settings = config.load(args.config)
    status, unreadable = _read_status(settings)
    if unreadable:
        print(f"cannot read the bridge's status: {unreadable}", file=sys.stderr)
        return 3
    if status is None:
        print("no status: the bridge is not running (or has never run with this configuration)", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(status.to_json(), indent=2, sort_keys=True))
        return 0
    from ..display import printable      # states and errors may quote remote text
    now = time.time()
    print(f"msg-nagios-bridge pid {status.pid}, status written {now - status.time:.0f} s ago")
    for part, state in sorted(status.states.items()):
        print(f"  {printable(part):40s} {printable(state)}  (for {now - status.since.get(part, now):.0f} s)")
    for name, spool in status.spools().items():
        oldest = spool.oldest_age
        print(f"  {name:40s} {spool.depth} waiting ({spool.bytes} bytes), oldest "
              f"{'-' if oldest is None else f'{oldest:.0f} s'}, {spool.dead_letters} dead letters")
    for what, when in sorted(status.last.items()):
        print(f"  last {what:35s} {now - when:.0f} s ago")
    for route, value in sorted((status.numbering or {}).items()):
        print(f"  route {printable(route, 40):34s} numbered up to {value['last']} (epoch {value['epoch']})")
    if status.sequences is not None:
        print("  loss accounting (per producer and route):")
        for row in status.streams():
            age = row["oldest_gap_age"]
            print(f"    {printable(row['producer'], 80)} route {printable(row['route'], 40)}: epoch {row['epoch']},"
                  f" highest {row['highest']}, missing {row['missing']}"
                  f" (oldest gap {'-' if age is None else f'{age:.0f} s'}), late {row['late']},"
                  f" lost {row['lost']}, duplicates {row['duplicates']}"
                  + (f", untracked {row['untracked']}" if row["untracked"] else "")
                  + (f", previous epoch {row['previous_epoch']}" if row["previous_epoch"] else ""))
        forgotten = status.forgotten()
        if forgotten.get("streams"):
            print(f"    {forgotten['streams']} streams forgotten (not seen for max_age), in all: received"
                  f" {forgotten['received']}, late {forgotten['late']}, lost {forgotten['lost']},"
                  f" duplicates {forgotten['duplicates']}"
                  + (f", untracked {forgotten['untracked']}" if forgotten["untracked"] else ""))
        left_out = {k: v for k, v in status.sequences.get("counters", {}).items() if v}
        if left_out:
            print("    not accounted: " + ", ".join(f"{k} {v}" for k, v in sorted(left_out.items())))
    counters = status.counters
    print("  counters: " + (", ".join(f"{k} {v}" for k, v in sorted(counters.items())) or "none yet"))
    if status.errors:
        print("  last errors:")
        for when, text in status.errors[-10:]:
            print(f"    {time.strftime('%H:%M:%S', time.localtime(when))}  {printable(text)}")
    return 0


def _pair(text: str):
    warning, _, critical = text.partition(",")
    try:
        return float(warning), float(critical)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WARNING,CRITICAL") from None


def _days(text: str) -> float:
    """--older-than: a number of days from 0; a negative one meant every dead letter."""
    try:
        days = float(text)
    except ValueError:
        days = math.nan
    if not (math.isfinite(days) and days >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days from 0")
    return days


def _check(args) -> int:
    from .selfcheck import UNKNOWN, Thresholds, evaluate
    try:
        settings = config.load(args.config)
    except config.ConfigError as exc:
        print(f"MSG-BRIDGE UNKNOWN - configuration error: {exc}")
        return UNKNOWN
    # The bridge writes its status every daemon.status_interval (up to 60 s): a status is
    # stale only when it missed a few, or a healthy bridge with a long interval is CRITICAL.
    stale = args.stale if args.stale is not None else max(STALE, 3 * settings.daemon.status_interval)
    limits = Thresholds(backlog=args.backlog, oldest=args.oldest, disconnected=args.disconnected,
                        dead_letters=args.dead_letters, stale=stale,
                        gap=(settings.inbound.gap_warning_seconds, settings.inbound.gap_critical_seconds))
    status, unreadable = _read_status(settings)
    code, line = evaluate(status, limits, time.time(), unreadable)
    print(line)
    return code


def _dead_letters(args) -> int:
    from . import tools
    settings = config.load(args.config)
    spool = tools.open_spool(settings, "inbound" if args.inbound else "outbound")
    try:
        if args.action == "list":
            tools.list_dead_letters(spool, sys.stdout)
        elif args.action == "show":
            for dead_id in args.ids:
                tools.show_dead_letter(spool, dead_id, sys.stdout)
        elif args.action == "requeue":
            tools.requeue(settings, "inbound" if args.inbound else "outbound", spool, args.ids, sys.stdout)
        elif args.action == "purge":
            if not args.ids and not args.all and args.older_than is None:
                raise tools.ToolError("say which: dead letter ids, --older-than DAYS, or --all")
            print(f"{tools.purge(spool, args.ids or None, args.older_than)} dead letter(s) deleted")
    finally:
        spool.close()
    return 0


def _send(args) -> int:
    from . import tools
    from ..model import CheckResult
    settings = config.load(args.config)
    result = CheckResult(host=args.host, service=args.service, state=args.state, state_type=args.state_type,
                         output=args.output, long_output=args.long_output.replace("\\n", "\n"),
                         perfdata=args.perfdata, timestamp=time.time())
    tools.send(settings, result, sys.stdout)
    return 0


STALE = 30.0                  # check --stale's default (at least 3 status intervals)
TRY_CANNOT_RUN = 4
EXIT_CLOSED_PIPE = 141        # as a shell reports a command ended by SIGPIPE (128 + 13)
EXIT_INTERRUPTED = 130        # 128 + SIGINT

_C = "-c /etc/msg-nagios-bridge/bridge.yaml"
EXAMPLES = {name: "example:\n  " + text for name, text in {
    "run": f"msg-nagios-bridge run {_C}",
    "check-config": f"msg-nagios-bridge check-config -v {_C} | less",
    # Not redirected into conf.d: the output also holds nagios.cfg lines, which an object file refuses.
    "nagios-config": f"msg-nagios-bridge nagios-config {_C} | less",
    "core-config": f"msg-nagios-bridge core-config {_C} > /etc/icinga2/conf.d/msg-nagios-bridge.conf",
    "status": f"msg-nagios-bridge status {_C}",
    "check": f"msg-nagios-bridge check {_C} --backlog 10000,100000",
    "dead-letters": f"msg-nagios-bridge dead-letters list --inbound {_C}",
    "dead-letters list": f"msg-nagios-bridge dead-letters list --inbound {_C}",
    "dead-letters show": f"msg-nagios-bridge dead-letters show 12 --inbound {_C}",
    "dead-letters requeue": f"msg-nagios-bridge dead-letters requeue 12 13 --inbound {_C}",
    "dead-letters purge": f"msg-nagios-bridge dead-letters purge --older-than 30 {_C}",
    "try-message": f"msg-nagios-bridge try-message {_C} --header nagios_host=nagios.site-a.org message.txt",
    "send": f"msg-nagios-bridge send {_C} --host ce01.example.org --service org.sam.CE-JobSubmit --state 2",
}.items()}


def _try_message(args) -> int:
    from . import tools
    settings = config.load(args.config)
    headers = {}
    for item in args.header:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"error: --header {item!r} is not NAME=VALUE", file=sys.stderr)
            return 2
        headers[name] = value
    try:
        if args.file == "-":
            body = sys.stdin.buffer.read()
        else:
            with open(args.file, "rb") as handle:
                body = handle.read()
        return tools.try_message(settings, headers, body, sys.stdout)
    except (OSError, tools.ToolError, tools.SpoolError) as exc:
        print(f"error: cannot judge: {exc}", file=sys.stderr)
        return TRY_CANNOT_RUN


def _plugin_usage_error(parser: argparse.ArgumentParser):
    """``check``'s bad arguments: UNKNOWN (3) with one line on stdout, as a Nagios plugin says it;
    argparse's exit 2 with the text on stderr showed in Nagios as CRITICAL without output."""
    def error(message: str):
        from .selfcheck import UNKNOWN
        parser.print_usage(sys.stderr)
        print(f"MSG-BRIDGE UNKNOWN - {parser.prog}: {message}")
        sys.exit(UNKNOWN)
    return error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msg-nagios-bridge",
                                     description="Bridge Nagios check results to and from MSG (ActiveMQ/STOMP).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, func, text):
        sub = commands.add_parser(name, help=text, description=text, epilog=EXAMPLES[name],
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("-c", "--config", default=config.DEFAULT_PATH,
                         help=f"the YAML configuration file (default {config.DEFAULT_PATH})")
        sub.set_defaults(func=func)
        return sub

    run_command = command("run", _run, "run the bridge (in the foreground, the systemd way)")
    run_command.add_argument("--daemon", action="store_true",
                             help="detach the classic way (pidfile, umask, drop to daemon.user/group)")
    run_command.add_argument("--allow-root", action="store_true",
                             help="run as root although nothing in the bridge needs it")
    check = command("check-config", _check_config, "validate the configuration file, and what run needs of this"
                    " machine (users, directories), and exit")
    check.add_argument("-v", "--verbose", action="store_true", help="also print the settings (secrets masked)")
    check.add_argument("--syntax-only", action="store_true",
                       help="check the syntax and the values only, not what run needs of this machine (users,"
                            " directories, the TLS, CA and password files it names): for a configuration meant"
                            " for another machine")
    command("nagios-config", _nagios_config, "print what to add to the core's configuration: Nagios's command"
            " definitions and nagios.cfg lines, or Icinga 2's ApiUser (core: icinga2)")
    command("core-config", _nagios_config, "the same as nagios-config (a name that fits every core)")
    status = command("status", _status, "show the status a running bridge last wrote")
    status.add_argument("--json", action="store_true", help="print status.json as it is")

    check = command("check", _check, "a Nagios plugin for the bridge itself (exit 0-3, one line, perfdata)")
    check.add_argument("--backlog", type=_pair, default=(10000, 100000), metavar="W,C",
                       help="messages waiting in the spools (default 10000,100000)")
    check.add_argument("--oldest", type=_pair, default=(300, 1800), metavar="W,C",
                       help="age in seconds of the oldest waiting message (default 300,1800)")
    check.add_argument("--disconnected", type=_pair, default=(120, 600), metavar="W,C",
                       help="seconds without a broker or Nagios (default 120,600)")
    check.add_argument("--dead-letters", type=_pair, default=(1, 100), metavar="W,C",
                       help="dead letters kept (default 1,100)")
    check.add_argument("--stale", type=float, default=None, metavar="S",
                       help=f"status older than this means the bridge is not running (default {STALE:.0f},"
                            " or 3 times daemon.status_interval if that is longer)")
    check.error = parser.check_error = _plugin_usage_error(check)

    dead = command("dead-letters", _dead_letters, "list, show, requeue or purge dead letters")
    actions = dead.add_subparsers(dest="action", required=True)
    for action, text in (("list", "one line each: id, time, destination, reason"),
                         ("show", "everything about the given dead letters"),
                         ("requeue", "give them another chance (inbound: decoded and checked again)"),
                         ("purge", "delete them")):
        sub = actions.add_parser(action, help=text, description=text, epilog=EXAMPLES[f"dead-letters {action}"],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        if action != "list":
            sub.add_argument("ids", type=int, nargs="*" if action == "purge" else "+", help="dead letter ids")
        sub.add_argument("--inbound", action="store_true", help="the inbound spool's dead letters (default outbound)")
        sub.add_argument("-c", "--config", default=argparse.SUPPRESS, help="the YAML configuration file")
        if action == "purge":
            sub.add_argument("--all", action="store_true", help="all of them")
            sub.add_argument("--older-than", type=_days, metavar="DAYS", help="those refused this long ago")

    try_command = command(
        "try-message", _try_message,
        "judge one inbound message as the bridge would (signature, sender, decoding, policy, freshness, "
        "duplicates), with no broker and no Nagios, and print the verdict and what would be written. "
        "Exit 0 accepted, 1 refused, 2 usage or configuration error, 3 dropped as a duplicate or stale, "
        "4 cannot judge (unreadable file, objects cache or CA)")
    try_command.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                             help="a STOMP header of the message (repeat for each)")
    try_command.add_argument("file", help="the message body, or - for standard input")

    send = command("send", _send, "publish one test result now, as the daemon would, and wait for the broker")
    send.add_argument("--host", required=True)
    send.add_argument("--service", help="omit for a host result")
    send.add_argument("--state", type=int, required=True, help="0-3 (hosts 0-2)")
    send.add_argument("--state-type", default="HARD", choices=("HARD", "SOFT"))
    send.add_argument("--output", default="test result sent by hand with msg-nagios-bridge send")
    send.add_argument("--long-output", default="", help="\\n for a new line")
    send.add_argument("--perfdata", default="")
    return parser


def main(argv=None) -> int:
    """Exit codes: 0 done, 1 the command could not be done (one line on stderr), 2 usage or
    configuration error, 130 interrupted, 141 output closed (``| head``); ``check`` and
    ``try-message`` have their own (see their --help and the man page)."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as a Unix tool does. Point stdout
        # at /dev/null so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_CLOSED_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:     # reported by the top parser, which knows no plugin: check's own error
        (parser.check_error if args.command == "check" else parser.error)(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except config.ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:   # a tool's or the model's own refusal: say it in one line
        from ..model import InvalidResult
        from ..spool import SpoolError
        from .tools import ToolError
        if isinstance(exc, (ToolError, SpoolError, InvalidResult)):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
