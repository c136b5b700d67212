"""`python -m msg_nagios_bridge` and the installed launcher: the CLI lives in cli/main.py."""
import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
