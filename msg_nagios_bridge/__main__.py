"""Command line: ``msg-nagios-bridge COMMAND -c FILE``."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from . import __version__, config


def _check_config(args) -> int:
    settings = config.load(args.config)
    print(f"{args.config}: OK")
    if args.verbose:
        print(json.dumps(config.as_dict(settings), indent=2, sort_keys=True))
    return 0


def _nagios_config(args) -> int:
    from .nagios_wiring import render
    sys.stdout.write(render(config.load(args.config)))
    return 0


def _run(args) -> int:
    from .service import run
    return run(args.config)


def _status(args) -> int:
    from .service import status_path
    settings = config.load(args.config)
    path = status_path(settings)
    try:
        with open(path, encoding="utf-8") as handle:
            status = json.load(handle)
    except (OSError, ValueError) as exc:
        print(f"no status at {path} ({exc}); is the bridge running?", file=sys.stderr)
        return 3
    age = time.time() - status.get("time", 0)
    print(f"status of pid {status.get('pid')} written {age:.0f} s ago")
    print(json.dumps(status, indent=2, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msg-nagios-bridge",
                                     description="Bridge Nagios check results to and from MSG (ActiveMQ/STOMP).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, func, text):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("-c", "--config", default=config.DEFAULT_PATH,
                         help=f"the YAML configuration file (default {config.DEFAULT_PATH})")
        sub.set_defaults(func=func)
        return sub

    command("run", _run, "run the bridge in the foreground")
    check = command("check-config", _check_config, "validate the configuration file and exit")
    check.add_argument("-v", "--verbose", action="store_true", help="also print the settings (secrets masked)")
    command("nagios-config", _nagios_config, "print the Nagios command definitions and nagios.cfg lines")
    command("status", _status, "show the status a running bridge last wrote")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except config.ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
