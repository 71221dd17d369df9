"""The ``spendstream`` command: worker, up, demo, init, check, flags, health, disable,
enable, grant, unblock, audit, estimate, report, sql, ledger, dashboard.

``parser`` builds the command line, ``argtypes`` its argument types, ``commands`` (and
``ledger`` for the ledger's) what each command does.
"""

from __future__ import annotations

import os
import sys

from spendstream.cli.commands import COMMANDS
from spendstream.cli.parser import build_parser
from spendstream.errors import SpendstreamError

__all__ = ["COMMANDS", "main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``spendstream`` console script."""
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 0
    try:
        from spendstream.settings import load_settings

        settings = load_settings(args.settings)
        code = int(COMMANDS[args.command](args, settings) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except SpendstreamError as e:
        print(f"spendstream: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head -1`): stop quietly, as the Python docs advise;
        # stdout goes to devnull so the exit's own flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by it
